import net, { type AddressInfo } from 'node:net';
import { createWebSocketInspector } from '@statelyai/inspect';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { WebSocketServer, type WebSocket } from 'ws';
import { createActor, createMachine, type AnyStateMachine } from 'xstate';
import { ActorHost } from '../../actors/ActorHost.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import type { TroupeClient } from '../../protocol/client.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { actorKinds } from '../../src/kinds/index.js';
import { statelyConfig } from '../../src/observability/stately.js';
import { StatelyInspector } from '../../src/observability/StatelyInspector.js';
import { freePort } from '../helpers/redis.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

async function get(url: string): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(url);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

/** A transition's guard or action as `{type, params}`, whether written as a name or an object. */
function named(x: unknown): unknown {
  if (typeof x === 'string') return { type: x };
  if (typeof x === 'function') return { type: (x as { type?: string }).type ?? x.name };
  const o = x as { type: string; params?: unknown };
  return o.params === undefined ? { type: o.type } : { type: o.type, params: o.params };
}

/**
 * Everything that makes a machine behave, read from XState's resolved state nodes (not from the
 * config under test): per state its id, type, initial child, history, tags, entry and exit
 * actions, and per event its transitions in order with targets, guard, actions and reentry.
 */
function shape(machine: AnyStateMachine): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  type N = (typeof machine)['root'];
  const walk = (node: N) => {
    out[node.id] = {
      type: node.type,
      initial: node.initial?.target.map((t) => t.id) ?? null,
      history: node.history,
      tags: node.tags,
      entry: node.entry.map(named),
      exit: node.exit.map(named),
      on: Object.fromEntries(
        [...node.transitions].map(([event, ts]) => [
          event,
          ts.map((t) => ({ target: t.target?.map((n) => n.id) ?? null, guard: t.guard === undefined ? null : named(t.guard), actions: t.actions.map(named), reenter: t.reenter })),
        ]),
      ),
      always: node.always?.map((t) => ({ target: t.target?.map((n) => n.id) ?? null, guard: t.guard === undefined ? null : named(t.guard) })) ?? [],
    };
    for (const child of Object.values(node.states)) walk(child as N);
  };
  walk(machine.root);
  return out;
}

interface Ctx {
  ts: TestServer;
}

const test = suite<Ctx>("stately: every machine as a config Stately's editor imports");

test.before(async (ctx) => {
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

test('serves each kind at /machines/<kind> as plain JSON that createMachine rebuilds with the same states and transitions', async (ctx) => {
  assert.ok(actorKinds.length >= 10, 'every kind is checked');
  for (const kind of actorKinds) {
    const r = await get(`${ctx.ts.httpUrl}/machines/${kind.kind}`);
    assert.is(r.status, 200, kind.kind);
    assert.is(r.type, 'application/json');
    const config = JSON.parse(r.text);
    assert.equal(config, statelyConfig(kind.machine), `${kind.kind}: the served config`);
    assert.is(config.id, kind.machine.id);
    assert.type(config.initial, 'string', `${kind.kind}: initial is a state key, as createMachine takes it`);
    // A config, not XState's resolved definition (which the importer does not read).
    assert.not.match(r.text, /"(source|eventType|order|transitions)":/, kind.kind);
    const rebuilt = createMachine(config);
    const want = shape(kind.machine);
    assert.equal(Object.keys(shape(rebuilt)).sort(), Object.keys(want).sort(), `${kind.kind}: the same state ids`);
    for (const [id, node] of Object.entries(shape(rebuilt))) assert.equal(node, want[id], `${kind.kind}: state ${id}`);
  }
});

test('keeps every statechart feature a machine may use: parallel, final and history states, own ids, delays, eventless and reentering transitions, invocations', () => {
  const machine = createMachine({
    id: 'kitchen',
    context: ({ input }: { input?: unknown }) => ({ input }),
    type: 'parallel',
    states: {
      oven: {
        initial: 'off',
        description: 'The oven',
        states: {
          off: { tags: ['cold'], on: { heat: { target: 'on', guard: { type: 'hasPower', params: { watts: 2000 } }, actions: ['log', { type: 'beep', params: { times: 2 } }] } } },
          on: {
            id: 'ovenOn',
            entry: 'light',
            exit: ['unlight'],
            after: { 1000: [{ target: 'off', guard: 'idle' }, { target: 'on', reenter: true }] },
            invoke: { src: 'thermostat', id: 'thermo', onDone: { target: 'off' } },
            on: { tick: { reenter: true, target: 'on' } },
          },
          hist: { type: 'history', history: 'deep' },
        },
      },
      sink: {
        initial: 'dry',
        states: {
          dry: { always: [{ target: 'wet', guard: 'raining' }], on: { fill: ['wet', '#kitchen.oven.off'] as never } },
          wet: { type: 'final', description: 'Full' },
        },
      },
    },
  });
  const config = statelyConfig(machine);
  assert.equal(JSON.parse(JSON.stringify(config)), config, 'plain JSON');
  assert.not.ok('context' in config, 'a context computed from input has no JSON form');
  assert.is(config.states!.oven!.states!.on!.id, 'ovenOn');
  assert.equal(config.states!.oven!.states!.on!.invoke, [{ src: 'thermostat', id: 'thermo' }]);
  const rebuilt = createMachine(config as never);
  assert.equal(shape(rebuilt), shape(machine));
  assert.equal(
    (rebuilt.root.states.oven!.states.on as unknown as { after: { delay: number }[] }).after.map((t) => t.delay),
    [1000, 1000],
  );
});

test("rebuilt with Troupe's own guard and action implementations, the task config replays a real task's events to the same states", async (ctx) => {
  const lead = await ctx.ts.client('replay', 'lead', ['admin']);
  const w1 = await ctx.ts.client('replay', 'w1', ['agent']);
  await w1.call('agent.register', { capabilities: ['go'] });
  const t = await lead.call('task.create', { type: 'review', title: 'replay me', assignTo: 'w1', maxRetries: 1, retryBackoffMs: 3_600_000 });
  await w1.call('task.reject', { taskId: t.id, reason: 'busy' });
  await lead.call('task.assign', { taskId: t.id, agentId: 'w1' });
  await w1.call('task.accept', { taskId: t.id });
  await w1.call('task.start', { taskId: t.id });
  await w1.call('task.requestInput', { taskId: t.id, prompt: 'which branch?' });
  await lead.call('task.provideInput', { taskId: t.id, input: 'main' });
  await w1.call('task.fail', { taskId: t.id, error: 'flaky' });
  await lead.call('task.retry', { taskId: t.id });
  await lead.call('task.assign', { taskId: t.id, agentId: 'w1' });
  await w1.call('task.accept', { taskId: t.id });
  await w1.call('task.start', { taskId: t.id });
  await w1.call('task.complete', { taskId: t.id, result: { ok: true } });

  const events = await ctx.ts.store.readStream(`replay/task/${t.id}`);
  assert.ok(events.length >= 13, `${events.length} events`);
  const task = actorKinds.find((k) => k.kind === 'task')!.machine;
  const rebuilt = createMachine(JSON.parse((await get(`${ctx.ts.httpUrl}/machines/task`)).text)).provide(task.implementations as never);
  const original = createActor(task).start();
  const copy = createActor(rebuilt).start();
  for (const e of events) {
    original.send(e.data as never);
    copy.send(e.data as never);
    assert.equal(copy.getSnapshot().value, original.getSnapshot().value, `after ${e.type}`);
    assert.equal(copy.getSnapshot().context, original.getSnapshot().context, `after ${e.type}`);
  }
  assert.equal(copy.getSnapshot().value, 'completed');
});

test('serves createMachine code for Stately Studio\'s "Import from code" with ?format=stately, one call per machine', async (ctx) => {
  const one = await get(`${ctx.ts.httpUrl}/machines/task?format=stately`);
  assert.is(one.status, 200);
  assert.match(one.type ?? '', /^text\/javascript/);
  assert.match(one.text, /^createMachine\(\{\n/);
  // Run the code with a createMachine that collects its argument: exactly the JSON config.
  const run = (code: string) => {
    const calls: unknown[] = [];
    new Function('createMachine', code)((config: unknown) => calls.push(config));
    return calls;
  };
  assert.equal(run(one.text), [statelyConfig(actorKinds.find((k) => k.kind === 'task')!.machine)]);
  const all = await get(`${ctx.ts.httpUrl}/machines?format=stately`);
  assert.equal(run(all.text), actorKinds.map((k) => statelyConfig(k.machine)));
});

test('keeps /machines as XState definitions by kind, and serves every config by kind with ?format=config', async (ctx) => {
  const defs = JSON.parse((await get(`${ctx.ts.httpUrl}/machines`)).text);
  assert.equal(Object.keys(defs), actorKinds.map((k) => k.kind));
  assert.equal(defs.task, JSON.parse(JSON.stringify(actorKinds[0]!.machine.toJSON())));
  const configs = JSON.parse((await get(`${ctx.ts.httpUrl}/machines?format=config`)).text);
  assert.equal(configs, Object.fromEntries(actorKinds.map((k) => [k.kind, statelyConfig(k.machine)])));
  const def = JSON.parse((await get(`${ctx.ts.httpUrl}/machines/agent?format=definition`)).text);
  assert.equal(def, JSON.parse(JSON.stringify(actorKinds.find((k) => k.kind === 'agent')!.machine.toJSON())));
});

test('refuses unknown kinds and formats and malformed paths with a message naming the choices, and keeps serving', async (ctx) => {
  const unknown = await get(`${ctx.ts.httpUrl}/machines/spaceship`);
  assert.is(unknown.status, 404);
  assert.match(JSON.parse(unknown.text).error, /No machine of kind "spaceship"; kinds: task, agent/);
  const long = await get(`${ctx.ts.httpUrl}/machines/${'x'.repeat(5_000)}`);
  assert.is(long.status, 404);
  assert.ok(long.text.length < 400, 'the answer does not echo a long name back');
  const format = await get(`${ctx.ts.httpUrl}/machines/task?format=scxml`);
  assert.is(format.status, 400);
  assert.match(JSON.parse(format.text).error, /Unknown format "scxml": use one of definition, config, stately/);
  assert.is((await get(`${ctx.ts.httpUrl}/machines?format=`)).status, 400);
  const badEscape = await get(`${ctx.ts.httpUrl}/machines/%E0%A4%A`);
  assert.is(badEscape.status, 400);
  assert.match(JSON.parse(badEscape.text).error, /not valid percent-encoding/);
  assert.is((await get(`${ctx.ts.httpUrl}/machines/task%2F..%2Fagent`)).status, 404);
  assert.is((await get(`${ctx.ts.httpUrl}/machinesx`)).status, 404);
  const post = await fetch(`${ctx.ts.httpUrl}/machines/task`, { method: 'POST', body: '{}' });
  assert.is(post.status, 405);
  assert.is((await get(`${ctx.ts.httpUrl}/machines/task`)).status, 200, 'still serving');
});

test.run();

/** A WebSocket server standing in for a Stately inspector: it keeps every message it receives. */
interface InspectorEndpoint {
  url: string;
  port: number;
  messages: Record<string, any>[];
  connections: WebSocket[];
  close(): Promise<void>;
}

async function inspectorEndpoint(port = 0): Promise<InspectorEndpoint> {
  const wss = new WebSocketServer({ port, host: '127.0.0.1' });
  await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
  const bound = (wss.address() as AddressInfo).port;
  const endpoint: InspectorEndpoint = {
    url: `ws://127.0.0.1:${bound}`,
    port: bound,
    messages: [],
    connections: [],
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close(() => resolve());
      }),
  };
  wss.on('connection', (ws) => {
    endpoint.connections.push(ws);
    ws.on('message', (data) => endpoint.messages.push(JSON.parse(data.toString())));
  });
  return endpoint;
}

/** The inspection messages of one actor, as `[type, event type or snapshot value/status]`. */
function story(messages: Record<string, any>[], sessionId: string): [string, unknown][] {
  return messages
    .filter((m) => m.sessionId === sessionId)
    .map((m): [string, unknown] => {
      if (m.type === '@xstate.event') return [m.type, m.event.type];
      if (m.type === '@xstate.snapshot') return [m.type, m.snapshot.status === 'active' ? m.snapshot.value : m.snapshot.status];
      return [m.type, m.snapshot.value];
    });
}

interface LiveCtx {
  inspector: InspectorEndpoint;
  ts: TestServer;
  lead: TroupeClient;
  w1: TroupeClient;
}

const live = suite<LiveCtx>('stately: live actors streamed to a Stately inspector over a WebSocket');

live.before(async (ctx) => {
  ctx.inspector = await inspectorEndpoint();
  ctx.ts = await startServer({ statelyInspectUrl: ctx.inspector.url });
  ctx.lead = await ctx.ts.client('live', 'lead', ['admin']);
  ctx.w1 = await ctx.ts.client('live', 'w1', ['agent']);
  await ctx.w1.call('agent.register', { capabilities: ['go'] });
  await waitFor(() => ctx.inspector.connections.length === 1);
});

live.after(async (ctx) => {
  await ctx.ts.close();
  await ctx.inspector.close();
});

live("streams a task's activation, each event it accepts and the state after it, in order, and its stop when unloaded", async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'watch me', assignTo: 'w1' });
  await ctx.w1.call('task.accept', { taskId: t.id });
  await ctx.w1.call('task.start', { taskId: t.id });
  await ctx.w1.call('task.complete', { taskId: t.id, result: 'done' });
  const session = `live/task/${t.id}`;
  // A finished task is unloaded at once: its last message is the stopped snapshot.
  await waitFor(() => story(ctx.inspector.messages, session).some(([, v]) => v === 'stopped'));
  assert.equal(story(ctx.inspector.messages, session), [
    ['@xstate.actor', 'draft'],
    ['@xstate.event', 'task.create'],
    ['@xstate.snapshot', { live: 'assigned' }],
    ['@xstate.event', 'task.accept'],
    ['@xstate.snapshot', { live: 'accepted' }],
    ['@xstate.event', 'task.start'],
    ['@xstate.snapshot', { live: 'in_progress' }],
    ['@xstate.event', 'task.complete'],
    ['@xstate.snapshot', 'completed'],
    ['@xstate.snapshot', 'stopped'],
  ]);
  const mine = ctx.inspector.messages.filter((m) => m.sessionId === session);
  const actor = mine[0]!;
  assert.is(actor.name, 'task');
  assert.type(actor._version, 'string');
  assert.equal(JSON.parse(actor.definition), statelyConfig(actorKinds[0]!.machine), 'the definition is the importable config');
  const create = mine[1]!;
  assert.is(create.event.title, 'watch me');
  assert.is(create.event.by, 'lead');
  assert.is(mine[8]!.snapshot.context.task.result, 'done');
  assert.is(mine[8]!.event.type, 'task.complete', 'a snapshot names the event that led to it');
});

live('announces an actor activated from the store with its stored state, without replaying its events', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'reload me', assignTo: 'w1' });
  await ctx.w1.call('task.accept', { taskId: t.id });
  const session = `live/task/${t.id}`;
  assert.is(await ctx.ts.server.host.passivateIdle(Number.POSITIVE_INFINITY) > 0, true);
  await waitFor(() => story(ctx.inspector.messages, session).at(-1)?.[1] === 'stopped');
  const before = story(ctx.inspector.messages, session).length;
  await ctx.w1.call('task.start', { taskId: t.id });
  await waitFor(() => story(ctx.inspector.messages, session).length >= before + 3);
  assert.equal(story(ctx.inspector.messages, session).slice(before), [
    ['@xstate.actor', { live: 'accepted' }],
    ['@xstate.event', 'task.start'],
    ['@xstate.snapshot', { live: 'in_progress' }],
  ]);
});

live("sends what @statelyai/inspect's own WebSocket client sends: the same message types with the same fields", async (ctx) => {
  const machine = createMachine({ id: 'toggle', initial: 'off', states: { off: { on: { flip: 'on' } }, on: { on: { flip: 'off' } } } });
  const count = ctx.inspector.connections.length;
  const client = createWebSocketInspector({ url: ctx.inspector.url });
  const actor = createActor(machine, { inspect: client.inspect }).start();
  actor.send({ type: 'flip' });
  const theirs = () => ctx.inspector.messages.filter((m) => m.sessionId === actor.sessionId);
  await waitFor(() => theirs().length >= 4 && ctx.inspector.connections.length === count + 1);
  client.stop();
  const fields = (ms: Record<string, any>[]) => Object.fromEntries(ms.map((m) => [m.type, Object.keys(m).sort()]));
  const ours = ctx.inspector.messages.filter((m) => typeof m.sessionId === 'string' && m.sessionId.startsWith('live/task/'));
  assert.equal(fields(ours), fields(theirs()));
  // Each actor is the root of its own system, as the library reports a root actor.
  assert.ok(theirs().every((m) => m.rootId === actor.sessionId));
  assert.ok(ours.every((m) => m.rootId === m.sessionId));
  assert.equal(Object.keys(fields(ours)).sort(), ['@xstate.actor', '@xstate.event', '@xstate.snapshot']);
});

live.run();

const away = suite('stately: an inspector that is away costs nothing and is caught up when it comes');

away('serves as usual while the inspector is unreachable, then delivers the events kept meanwhile once it appears', async () => {
  const port = await freePort();
  const ts = await startServer({ statelyInspectUrl: `ws://127.0.0.1:${port}` });
  let endpoint: InspectorEndpoint | null = null;
  try {
    const lead = await ts.client('away', 'lead', ['admin']);
    const t = await lead.call('task.create', { type: 'x', title: 'while away' });
    assert.is(t.status, 'pending');
    endpoint = await inspectorEndpoint(port);
    const session = `away/task/${t.id}`;
    // The inspector reconnects every 2 s; the kept events arrive first, in order.
    await waitFor(() => story(endpoint!.messages, session).length >= 3, { timeoutMs: 10_000 });
    assert.equal(story(endpoint.messages, session).slice(0, 3), [
      ['@xstate.actor', 'draft'],
      ['@xstate.event', 'task.create'],
      ['@xstate.snapshot', { live: 'pending' }],
    ]);
  } finally {
    await ts.close();
    await endpoint?.close();
  }
});

away('stops reconnecting once closed, also while the inspector keeps refusing', async () => {
  // A TCP server that hangs up on every WebSocket handshake, counting them by request path.
  const attempts: Record<string, number> = {};
  const refuser = net.createServer((sock) => {
    sock.once('data', (d) => {
      const path = /^GET (\S+)/.exec(d.toString())?.[1] ?? '?';
      attempts[path] = (attempts[path] ?? 0) + 1;
      sock.destroy();
    });
  });
  await new Promise<void>((resolve) => refuser.listen(0, '127.0.0.1', () => resolve()));
  const { port } = refuser.address() as AddressInfo;
  const closed = new StatelyInspector({ url: `ws://127.0.0.1:${port}/closed`, kinds: actorKinds, reconnectMs: 5 });
  const witness = new StatelyInspector({ url: `ws://127.0.0.1:${port}/witness`, kinds: actorKinds, reconnectMs: 5 });
  try {
    await waitFor(() => (attempts['/closed'] ?? 0) >= 3);
    await closed.close();
    // Time passes by the witness's clock: it keeps trying while the closed one stays quiet
    // (after a handshake that may still have been on its way when the close began).
    const witnessed = () => attempts['/witness'] ?? 0;
    let seen = witnessed();
    await waitFor(() => witnessed() >= seen + 2);
    const after = attempts['/closed'] ?? 0;
    seen = witnessed();
    await waitFor(() => witnessed() >= seen + 5);
    assert.is(attempts['/closed'], after);
    assert.is(closed.connected, false);
  } finally {
    await closed.close();
    await witness.close();
    await new Promise<void>((resolve) => refuser.close(() => resolve()));
  }
});

away('drops the oldest events beyond maxPending while disconnected, counting them', async () => {
  const port = await freePort();
  const inspector = new StatelyInspector({ url: `ws://127.0.0.1:${port}`, kinds: actorKinds, maxPending: 5 });
  try {
    await inspector.ready();
    const machine = actorKinds.find((k) => k.kind === 'agent')!.machine;
    const actor = createActor(machine).start();
    for (let i = 0; i < 8; i++) inspector.inspect({ type: '@xstate.actor', actorRef: actor, rootId: actor.sessionId }, { tenant: 't', kind: 'agent', id: `a${i}` });
    assert.is(inspector.dropped, 3);
    const endpoint = await inspectorEndpoint(port);
    try {
      await waitFor(() => endpoint.messages.length >= 5, { timeoutMs: 10_000 });
      assert.equal(endpoint.messages.map((m) => m.sessionId), ['t/agent/a3', 't/agent/a4', 't/agent/a5', 't/agent/a6', 't/agent/a7']);
    } finally {
      await inspector.close();
      await endpoint.close();
    }
  } finally {
    await inspector.close();
  }
});

away.run();

const hook = suite("stately: the actor host's inspect hook");

hook('passes inspection events with the actor address, and a throwing hook never fails a turn', async () => {
  const store = new MemoryStore();
  const seen: string[] = [];
  const host = new ActorHost({
    store,
    ownership: new LocalOwnership(store),
    kinds: [...actorKinds],
    inspect: (e, address) => {
      seen.push(`${address.id}:${e.type}`);
      throw new Error('inspector bug');
    },
  });
  try {
    const address = { tenant: 'h', kind: 'agent', id: 'a1' };
    const r = await host.send(address, { type: 'agent.register', id: 'a1', tenantId: 'h', name: 'a1', capabilities: [] }, { principal: 'a1' });
    assert.ok(r !== undefined && typeof r === 'object' && r.version === 1, 'the turn committed');
    assert.ok(seen.includes('a1:@xstate.actor') && seen.includes('a1:@xstate.event') && seen.includes('a1:@xstate.snapshot'), seen.join(' '));
    assert.is((await store.readStream('h/agent/a1')).length, 1);
  } finally {
    await host.close();
  }
});

hook.run();

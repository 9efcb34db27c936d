import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { ActorEvent } from '../../protocol/model.js';
import { CuttableProxy, RawSocket, within } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { refusal } from '../helpers/errors.js';

interface Ctx {
  ts: TestServer;
  n: number;
  /** Run after each test, passed or failed, so a failure cannot leave a proxy holding the process. */
  cleanups: (() => Promise<void>)[];
}

async function runCleanups(ctx: { cleanups: (() => Promise<void>)[] }): Promise<void> {
  for (const c of ctx.cleanups.splice(0).reverse()) await c().catch(() => undefined);
}

/** Collects what a subscription handler receives. */
function recorder() {
  const events: ActorEvent[] = [];
  const positions: number[] = [];
  return {
    events,
    positions,
    handler: (e: ActorEvent, position: number) => {
      events.push(e);
      positions.push(position);
    },
  };
}


function strictlyIncreasing(xs: number[]): boolean {
  return xs.every((x, i) => i === 0 || x > xs[i - 1]!);
}

const test = suite<Ctx>('subscriptions: topics, resume from a position, reconnects');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.n = 0;
  ctx.cleanups = [];
});

test.after.each(runCleanups);

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function team(ctx: Ctx) {
  const tenant = `s${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['admin']);
  const w1 = await ctx.ts.client(tenant, 'w1', ['agent']);
  const w2 = await ctx.ts.client(tenant, 'w2', ['agent']);
  const eye = await ctx.ts.client(tenant, 'eye', ['observer']);
  await w1.call('agent.register', {});
  await w2.call('agent.register', {});
  return { tenant, lead, w1, w2, eye };
}

test('delivers task:<id> events of that task only, with positions in order', async (ctx) => {
  const { lead, eye } = await team(ctx);
  const a = await lead.call('task.create', { type: 's', title: 'A' });
  const b = await lead.call('task.create', { type: 's', title: 'B' });
  const rec = recorder();
  const sub = await eye.subscribe(`task:${a.id}`, rec.handler);
  assert.is(sub.topic, `task:${a.id}`);
  await lead.call('task.update', { taskId: b.id, title: 'B2' });
  await lead.call('task.update', { taskId: b.id, title: 'B3' });
  await lead.call('task.update', { taskId: a.id, title: 'A2' });
  await waitFor(() => rec.events.length >= 1);
  // B's changes came first; only A's arrived.
  assert.equal(rec.events.map((e) => [e.actorId, e.type, e.version, e.status]), [[a.id, 'task.update', 2, 'pending']]);
  assert.equal(rec.events[0]!.data, { changes: { title: 'A2' } });
  assert.is(rec.events[0]!.principal, 'lead');
  assert.is(rec.positions[0], rec.events[0]!.position);
  await lead.call('task.cancel', { taskId: a.id });
  await waitFor(() => rec.events.length >= 2);
  assert.ok(strictlyIncreasing(rec.positions));
  assert.is(sub.lastPosition, rec.positions[1]);
});

test('delivers inbox:<agent> events for tasks assigned to it, including the hand-over away', async (ctx) => {
  const { lead, w1, w2 } = await team(ctx);
  const rec = recorder();
  await w1.subscribe('inbox:w1', rec.handler);
  const t = await lead.call('task.create', { type: 's', title: 'for w1', assignTo: 'w1' });
  await lead.call('task.create', { type: 's', title: 'unassigned' });
  await lead.call('task.assign', { taskId: t.id, agentId: 'w2', reason: 'w1 is busy' });
  await w2.call('task.accept', { taskId: t.id });
  const sentinel = await lead.call('task.create', { type: 's', title: 'sentinel', assignTo: 'w1' });
  await waitFor(() => rec.events.some((e) => e.actorId === sentinel.id));
  assert.equal(rec.events.map((e) => [e.actorId, e.type]), [
    [t.id, 'task.create'],
    [t.id, 'task.assign'],
    [sentinel.id, 'task.create'],
  ]);
});

test('delivers agent:<id> events', async (ctx) => {
  const { lead, w1 } = await team(ctx);
  const rec = recorder();
  await lead.subscribe('agent:w1', rec.handler);
  await w1.call('agent.heartbeat', {});
  await w1.call('agent.setStatus', { status: 'busy' });
  await waitFor(() => rec.events.length >= 2);
  assert.equal(rec.events.map((e) => [e.kind, e.actorId, e.type, e.status]), [
    ['agent', 'w1', 'agent.heartbeat', 'online'],
    ['agent', 'w1', 'agent.setStatus', 'busy'],
  ]);
});

test('delivers the tenant feed to admins and observers, not to agents', async (ctx) => {
  const { tenant, lead, w1, eye } = await team(ctx);
  const recEye = recorder();
  const recLead = recorder();
  await eye.subscribe('tenant', recEye.handler);
  await lead.subscribe('tenant', recLead.handler);
  const e = await refusal(w1.call('subscribe', { topic: 'tenant' }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /admins and observers/);
  const t = await lead.call('task.create', { type: 's', title: 'feed' });
  await w1.call('agent.heartbeat', {});
  // A new agent connecting shows up too.
  const w3 = await connect(lead.url, { token: await ctx.ts.key(tenant, 'w3', ['agent']), reconnect: false });
  await w3.call('agent.register', {});
  await waitFor(() => recEye.events.length >= 3 && recLead.events.length >= 3);
  for (const rec of [recEye, recLead]) {
    assert.equal(rec.events.map((e) => [e.actorId, e.type]), [
      [t.id, 'task.create'],
      ['w1', 'agent.heartbeat'],
      ['w3', 'agent.register'],
    ]);
  }
  await w3.close();
  await waitFor(() => recEye.events.some((e) => e.type === 'agent.disconnected'));
});

test('refuses unknown topics with -32602, unknown actors with -32003, and other inboxes with -32002', async (ctx) => {
  const { lead, w1 } = await team(ctx);
  for (const topic of ['foo', 'task', 'task:', 'task:a:b', 'workspace:', 'workspace:a:b', 'inbox:', 'Tenant', 'tenant:x']) {
    const e = await refusal(lead.call('subscribe', { topic }), ErrorCodes.INVALID_PARAMS);
    assert.match(e.message, /Unknown topic/);
  }
  await refusal(lead.call('subscribe', { topic: 'task:no-such-task' }), ErrorCodes.NOT_FOUND);
  await refusal(lead.call('subscribe', { topic: 'agent:no-such-agent' }), ErrorCodes.NOT_FOUND);
  await refusal(w1.call('subscribe', { topic: 'inbox:w2' }), ErrorCodes.FORBIDDEN);
  await refusal(lead.call('subscribe', { topic: 'tenant', fromPosition: -1 }), ErrorCodes.INVALID_PARAMS);
  assert.ok(await w1.subscribe('inbox:w1', () => {}), 'its own inbox is fine');
});

test('resumes from a position with exactly the missed events, in order, then live ones', async (ctx) => {
  const { tenant, lead, w1, eye } = await team(ctx);
  const ref = recorder();
  await eye.subscribe('tenant', ref.handler);
  const reader1 = await connect(lead.url, { token: await ctx.ts.key(tenant, 'reader', ['observer']), reconnect: false });
  const first = recorder();
  await reader1.subscribe('tenant', first.handler);
  const t = await lead.call('task.create', { type: 's', title: 'resume', assignTo: 'w1' });
  for (let i = 0; i < 4; i++) await lead.call('task.update', { taskId: t.id, title: `resume ${i}` });
  await waitFor(() => first.events.length === 5);
  const last = first.positions[first.positions.length - 1]!;
  await reader1.close();

  // Missed while away.
  await w1.call('task.accept', { taskId: t.id });
  await w1.call('task.start', { taskId: t.id });
  for (let i = 0; i < 5; i++) await lead.call('task.create', { type: 's', title: `away ${i}` });
  await waitFor(() => ref.events.length === 12);

  const reader2 = await connect(lead.url, { token: await ctx.ts.key(tenant, 'reader', ['observer']), reconnect: false });
  const second = recorder();
  const sub = await reader2.subscribe('tenant', second.handler, { fromPosition: last });
  await waitFor(() => second.events.length >= 7);
  assert.equal(second.positions, ref.positions.slice(5), 'exactly the missed events');
  assert.equal(second.events.map((e) => e.id), ref.events.slice(5).map((e) => e.id));
  for (let i = 0; i < 3; i++) await w1.call('task.progress', { taskId: t.id, percent: i * 10 });
  await waitFor(() => ref.events.length === 15 && second.events.length >= 10);
  assert.equal(second.positions, ref.positions.slice(5), 'then the live ones, no gap, no repeat');
  assert.is(sub.lastPosition, ref.positions[14]);
  assert.equal([...first.positions, ...second.positions], ref.positions);
  await reader2.close();
});

test('sends the subscribe reply before the catch-up events and returns the last replayed position', async (ctx) => {
  const { tenant, lead } = await team(ctx);
  const t = await lead.call('task.create', { type: 's', title: 'replay' });
  for (let i = 0; i < 5; i++) await lead.call('task.update', { taskId: t.id, title: `r${i}` });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(tenant, 'raw', ['admin']));
  const r = await raw.call('subscribe', { topic: `task:${t.id}`, fromPosition: 0 }, 'sub');
  const replyAt = raw.indexOf((f) => f.msg?.id === 'sub');
  await raw.call('ping', {}, 'sentinel');
  const events = raw.frames.map((f, i) => [f, i] as const).filter(([f]) => f.msg?.method === 'subscription.event');
  assert.is(events.length, 6);
  assert.ok(events.every(([, i]) => i > replyAt), 'the reply comes first');
  const positions = events.map(([f]) => f.msg.params.position as number);
  assert.ok(strictlyIncreasing(positions));
  assert.equal(events.map(([f]) => f.msg.params.event.version), [1, 2, 3, 4, 5, 6]);
  assert.is((r.result as { position: number }).position, positions[positions.length - 1]);
  // Resuming from the middle replays the rest only.
  const mid = positions[2]!;
  const from = raw.frames.length;
  await raw.call('subscribe', { topic: `task:${t.id}`, fromPosition: mid }, 'sub2');
  await raw.call('ping', {}, 'sentinel2');
  const again = raw.frames.slice(from).filter((f) => f.msg?.method === 'subscription.event').map((f) => f.msg.params.position);
  assert.equal(again, positions.slice(3));
  await raw.close();
});

test('the typed client resumes by itself after the connection drops, delivering each event once', async (ctx) => {
  const { tenant, lead, eye } = await team(ctx);
  const port = Number(new URL(ctx.ts.url).port);
  const proxy = await CuttableProxy.start(port);
  ctx.cleanups.push(() => proxy.close());
  const ref = recorder();
  await eye.subscribe('tenant', ref.handler);
  const client = await connect(proxy.url, {
    token: await ctx.ts.key(tenant, 'roamer', ['observer']),
    reconnect: true,
    initialDelayMs: 5,
    maxDelayMs: 20,
  });
  ctx.cleanups.push(() => client.close());
  const rec = recorder();
  await client.subscribe('tenant', rec.handler);
  const t = await lead.call('task.create', { type: 's', title: 'roaming' });
  await lead.call('task.update', { taskId: t.id, title: 'roaming 1' });
  await waitFor(() => rec.events.length === 2);

  let reconnects = 0;
  client.on('reconnect', () => reconnects++);
  const disconnected = new Promise((resolve) => client.once('disconnect', resolve));
  proxy.refusing = true;
  proxy.cutAll();
  await within(disconnected, 5000, 'the disconnect');
  for (let i = 0; i < 5; i++) await lead.call('task.update', { taskId: t.id, title: `while away ${i}` });
  await waitFor(() => ref.events.length === 7);
  // It keeps trying while refused; then it is let back in.
  const attempts = proxy.accepted;
  await waitFor(() => proxy.accepted >= attempts + 2);
  assert.is(reconnects, 0);
  proxy.refusing = false;
  await waitFor(() => reconnects === 1);
  await lead.call('task.update', { taskId: t.id, title: 'back' });
  await waitFor(() => ref.events.length === 8 && rec.events.length >= 8);
  assert.equal(rec.positions, ref.positions, 'every event exactly once, in order');
  assert.equal(rec.events.map((e) => e.id), ref.events.map((e) => e.id));
  // Calls work again on the new connection.
  assert.is((await client.call('task.get', { taskId: t.id })).title, 'back');
  await client.close();
  await proxy.close();
});

test('delivers every event in position order while a batch of its own holds notifications back', async () => {
  // On SQLite the batch and the other creates share group commits, so their events interleave.
  const dir = tempDir();
  const ts = await startServer({ store: sqliteStore(dir.dir) });
  const lead = await ts.client('order', 'lead', ['admin']);
  const w1 = await ts.client('order', 'w1', ['agent']);
  const feed = recorder();
  await lead.subscribe('tenant', feed.handler);
  // The batch's own events wait for its reply; others' events published meanwhile queue behind.
  const batch = lead.call('task.createBatch', { tasks: Array.from({ length: 50 }, (_, i) => ({ type: 'mine', title: `batch ${i}` })) });
  const others = Promise.all(Array.from({ length: 50 }, (_, i) => w1.call('task.create', { type: 'theirs', title: `other ${i}` })));
  await Promise.all([batch, others]);
  try {
    await waitFor(() => feed.events.length >= 100, { timeoutMs: 3000 });
  } finally {
    await ts.close();
    dir.remove();
  }
  assert.is(feed.events.length, 100);
  assert.ok(strictlyIncreasing(feed.positions), 'positions arrive in order');
});

test('the typed client handles subscribes that overlap, each getting its own events', async (ctx) => {
  const { lead } = await team(ctx);
  const [a, b] = await Promise.all([
    lead.call('task.create', { type: 'x', title: 'A' }),
    lead.call('task.create', { type: 'x', title: 'B' }),
  ]);
  const ra = recorder();
  const rb = recorder();
  await within(
    Promise.all([
      lead.subscribe(`task:${a.id}`, ra.handler, { fromPosition: 0 }),
      lead.subscribe(`task:${b.id}`, rb.handler, { fromPosition: 0 }),
    ]),
    5000,
    'both subscribes',
  );
  await lead.call('task.update', { taskId: a.id, title: 'A2' });
  await lead.call('task.update', { taskId: b.id, title: 'B2' });
  await waitFor(() => ra.events.length === 2 && rb.events.length === 2);
  assert.equal(ra.events.map((e) => [e.actorId, e.type]), [[a.id, 'task.create'], [a.id, 'task.update']]);
  assert.equal(rb.events.map((e) => [e.actorId, e.type]), [[b.id, 'task.create'], [b.id, 'task.update']]);
});

test('stops delivery on unsubscribe, and only the owning connection can unsubscribe', async (ctx) => {
  const { tenant, lead } = await team(ctx);
  const a = await lead.call('task.create', { type: 's', title: 'A' });
  const b = await lead.call('task.create', { type: 's', title: 'B' });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(tenant, 'unsub', ['admin']));
  const subA = (await raw.ok<{ subscriptionId: string }>('subscribe', { topic: `task:${a.id}` })).subscriptionId;
  const subB = (await raw.ok<{ subscriptionId: string }>('subscribe', { topic: `task:${b.id}` })).subscriptionId;
  // Another connection cannot end it.
  const intruder = await RawSocket.open(ctx.ts.url, await ctx.ts.key(tenant, 'intruder', ['admin']));
  assert.equal(await intruder.ok('unsubscribe', { subscriptionId: subA }), { unsubscribed: false });
  await lead.call('task.update', { taskId: a.id, title: 'A1' });
  await raw.frame((f) => f.msg?.params?.subscriptionId === subA);

  assert.equal(await raw.ok('unsubscribe', { subscriptionId: subA }), { unsubscribed: true });
  assert.equal(await raw.ok('unsubscribe', { subscriptionId: subA }), { unsubscribed: false });
  const from = raw.frames.length;
  await lead.call('task.update', { taskId: a.id, title: 'A2' });
  await lead.call('task.update', { taskId: b.id, title: 'B1' });
  await raw.frame((f) => f.msg?.params?.subscriptionId === subB, from);
  const after = raw.frames.slice(from).filter((f) => f.msg?.method === 'subscription.event');
  assert.equal(after.map((f) => f.msg.params.subscriptionId), [subB], 'nothing more for the ended subscription');

  // The typed client's unsubscribe too.
  const rec = recorder();
  const sub = await lead.subscribe(`task:${a.id}`, rec.handler);
  const recB = recorder();
  await lead.subscribe(`task:${b.id}`, recB.handler);
  await sub.unsubscribe();
  await lead.call('task.update', { taskId: a.id, title: 'A3' });
  await lead.call('task.update', { taskId: b.id, title: 'B2' });
  await waitFor(() => recB.events.length === 1);
  assert.is(rec.events.length, 0);
  await raw.close();
  await intruder.close();
});

test.run();

// ---------------------------------------------------------------------------------------------

const BUFFER = 256 * 1024;
const BLOB = 'x'.repeat(200_000);

interface OverflowCtx {
  ts: TestServer;
  key: string;
  producer: TroupeClient;
  n: number;
  cleanups: (() => Promise<void>)[];
}

const overflow = suite<OverflowCtx>('subscriptions: a slow subscriber is told and resumes without gaps');

overflow.before(async (ctx) => {
  ctx.ts = await startServer({ maxBufferedBytes: BUFFER });
  ctx.key = await ctx.ts.key('slow', 'lead', ['admin']);
  ctx.producer = await ctx.ts.client('slow', 'producer', ['admin']);
  ctx.n = 0;
  ctx.cleanups = [];
});

overflow.after.each(runCleanups);

overflow.after(async (ctx) => {
  await ctx.ts.close();
});

/** Creates big tasks until the hub has dropped `drops` subscriptions (at most 200 tasks). */
async function floodUntilDropped(ctx: OverflowCtx, before: number): Promise<void> {
  for (let i = 0; i < 200 && ctx.ts.server.app.hub.size >= before; i++) {
    await ctx.producer.call('task.create', { type: 'flood', title: `flood ${ctx.n++}`, parameters: { blob: BLOB } });
  }
  assert.ok(ctx.ts.server.app.hub.size < before, 'the slow subscription was dropped');
}

async function reference(ctx: OverflowCtx): Promise<number[]> {
  return (await ctx.ts.store.readTopic('slow', 'tenant', 0, 1_000_000)).map((e) => e.position);
}

/** Subscribes from `from` again and again, as the overflow message says, until caught up. */
async function catchUp(raw: RawSocket, from: number): Promise<{ positions: number[]; rounds: number }> {
  const positions: number[] = [];
  let position = from;
  for (let rounds = 1; rounds < 100; rounds++) {
    const start = raw.frames.length;
    const r = await raw.call('subscribe', { topic: 'tenant', fromPosition: position });
    const id = (r.result as { subscriptionId: string }).subscriptionId;
    // Everything the catch-up sent (and any overflow) is flushed right behind the reply.
    await raw.call('ping');
    const frames = raw.frames.slice(start).map((f) => f.msg).filter((m) => m?.params?.subscriptionId === id);
    const over = frames.filter((m) => m.method === 'subscription.overflow');
    assert.ok(over.length <= 1, `at most one overflow per subscription, got ${over.length}`);
    const got = frames.filter((m) => m.method === 'subscription.event').map((m) => m.params.position as number);
    positions.push(...got);
    if (over.length === 0) {
      await raw.ok('unsubscribe', { subscriptionId: id });
      return { positions, rounds };
    }
    assert.is(over[0].params.lastPosition, got.length ? got[got.length - 1] : position, 'lastPosition is the last event sent');
    assert.is(frames[frames.length - 1].method, 'subscription.overflow', 'nothing is sent after the overflow');
    position = over[0].params.lastPosition;
  }
  throw new Error('never caught up');
}

overflow('tells a subscriber that stopped reading, with lastPosition, and it resumes from there without gaps', async (ctx) => {
  const raw = await RawSocket.open(ctx.ts.url, ctx.key);
  const start = await raw.ok<{ subscriptionId: string; position: number }>('subscribe', { topic: 'tenant' });
  const socket = (raw.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  socket.pause();
  await floodUntilDropped(ctx, ctx.ts.server.app.hub.size);
  // Events after the drop are not sent to it.
  await ctx.producer.call('task.create', { type: 'flood', title: 'after the drop' });
  socket.resume();
  const over = (await raw.frame((f) => f.msg?.method === 'subscription.overflow')).msg;
  assert.is(over.params.subscriptionId, start.subscriptionId);
  assert.is(over.params.topic, 'tenant');
  assert.match(over.params.message, /fromPosition/);
  await raw.call('ping');
  const received = raw.notifications('subscription.event').map((n) => n.params.position as number);
  const all = (await reference(ctx)).filter((p) => p > start.position);
  assert.is(over.params.lastPosition, received[received.length - 1]);
  assert.equal(received, all.slice(0, received.length), 'everything up to lastPosition, in order');
  assert.ok(received.length < all.length);
  assert.is(raw.notifications('subscription.overflow').length, 1);

  const rest = await catchUp(raw, over.params.lastPosition);
  assert.equal([...received, ...rest.positions], all, 'no gap and no repeat after resuming');
  await raw.close();
});

overflow('bounds a catch-up: a large backlog is sent in rounds, each ending in one overflow', async (ctx) => {
  const all = await reference(ctx);
  assert.ok(all.length * BLOB.length > 8 * BUFFER, 'the backlog is far larger than the buffer');
  const raw = await RawSocket.open(ctx.ts.url, ctx.key);
  const { positions, rounds } = await catchUp(raw, 0);
  assert.equal(positions, all);
  assert.ok(rounds > 2, `several rounds were needed (${rounds})`);
  await raw.close();
});

overflow('sends one overflow, not one per replayed event, when the socket is already full', async (ctx) => {
  const t = await ctx.producer.call('task.create', { type: 'small', title: 'small' });
  for (let i = 0; i < 5; i++) await ctx.producer.call('task.update', { taskId: t.id, title: `small ${i}` });
  const raw = await RawSocket.open(ctx.ts.url, ctx.key);
  await raw.ok('subscribe', { topic: 'tenant' });
  const socket = (raw.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
  socket.pause();
  await floodUntilDropped(ctx, ctx.ts.server.app.hub.size);
  // The socket is backed up: a catch-up on it overflows at once, and only once.
  raw.send({ jsonrpc: '2.0', id: 'late', method: 'subscribe', params: { topic: `task:${t.id}`, fromPosition: 0 } });
  await waitFor(() => ctx.ts.server.app.hub.size === 0);
  socket.resume();
  await raw.response('late');
  await raw.call('ping');
  const overflows = raw.notifications('subscription.overflow').filter((n) => n.params.topic === `task:${t.id}`);
  assert.is(overflows.length, 1);
  assert.is(overflows[0].params.lastPosition, 0);
  const replyAt = raw.indexOf((f) => f.msg?.id === 'late');
  const overAt = raw.indexOf((f) => f.msg?.method === 'subscription.overflow' && f.msg.params.topic === `task:${t.id}`);
  assert.ok(replyAt < overAt, 'the subscription id is known before its overflow');
  await raw.close();
});

overflow('the typed client resumes by itself after an overflow, delivering each event once', async (ctx) => {
  const port = Number(new URL(ctx.ts.url).port);
  const proxy = await CuttableProxy.start(port);
  ctx.cleanups.push(() => proxy.close());
  const client = await connect(proxy.url, { token: ctx.key, reconnect: false });
  ctx.cleanups.push(() => client.close());
  const rec = recorder();
  const sub = await client.subscribe('tenant', rec.handler);
  const from = sub.lastPosition;
  let overflows = 0;
  client.on('notification', (n: { method: string }) => {
    if (n.method === 'subscription.overflow') overflows++;
  });
  proxy.pauseDownstream();
  await floodUntilDropped(ctx, ctx.ts.server.app.hub.size);
  const marker = await ctx.producer.call('task.create', { type: 'flood', title: 'marker' });
  proxy.resumeDownstream();
  await waitFor(() => rec.events.some((e) => e.actorId === marker.id), { timeoutMs: 10_000 });
  assert.ok(overflows >= 1);
  const all = (await reference(ctx)).filter((p) => p > from);
  assert.equal(rec.positions, all, 'every event exactly once, in order');
  await client.close();
  await proxy.close();
});

overflow.run();

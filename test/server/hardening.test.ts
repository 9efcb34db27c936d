import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { ErrorCodes } from '../../protocol/errors.js';
import type { TroupeClient } from '../../protocol/client.js';
import type { Task } from '../../protocol/model.js';
import { loadConfig } from '../../src/config.js';
import { DEFAULT_INPUT_LIMITS, pathText, sanitizeParams } from '../../src/guard/sanitize.js';
import { RawSocket, within, type WireResponse } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  raw: RawSocket;
  other: TroupeClient;
}

const test = suite<Ctx>('hardening: params are bounded and sanitised before validation');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key('acme', 'lead', ['admin']));
  ctx.other = await ctx.ts.client('acme', 'other', ['agent']);
  assert.ok((await ctx.raw.call('session.whoami')).result, 'authenticated');
});

test.after(async (ctx) => {
  await ctx.raw.close();
  await ctx.ts.close();
});

/** `n` objects nested in each other under key `a`: nest(1) is `{}`. */
function nest(n: number): Record<string, unknown> {
  let v: Record<string, unknown> = {};
  for (let i = 1; i < n; i++) v = { a: v };
  return v;
}

function refused(r: WireResponse, path: string, check: string): WireResponse {
  assert.ok(r.error, `expected a refusal, got ${JSON.stringify(r).slice(0, 300)}`);
  assert.is(r.error!.code, ErrorCodes.INVALID_PARAMS, r.error!.message);
  assert.is(r.error!.data?.reason, 'INVALID_PARAMS');
  assert.is(r.error!.data?.path, path, r.error!.message);
  assert.is(r.error!.data?.check, check);
  assert.ok(r.error!.message.includes(path), `the message names the path: ${r.error!.message}`);
  return r;
}

/** Sends a raw text frame (for keys JSON.stringify cannot produce from a literal) and returns the reply. */
async function callText(raw: RawSocket, id: string, method: string, paramsJson: string): Promise<WireResponse> {
  const from = raw.frames.length;
  raw.send(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"method":${JSON.stringify(method)},"params":${paramsJson}}`);
  return raw.response(id, from);
}

/** This connection and another one still work, and nothing was written since `head`. */
async function stillServing(ctx: Ctx, head: number): Promise<void> {
  assert.is(await ctx.ts.store.headPosition(), head, 'nothing was written to the store');
  assert.ok(ctx.raw.open, 'the connection stays open');
  assert.equal((((await ctx.raw.call('ping')).result) as { pong: boolean }).pong, true);
  const task = await ctx.other.call('task.create', { type: 'hardening-check', title: 'still serving' });
  assert.is(task.status, 'pending', 'another client is served');
}

function unpolluted(): void {
  for (const k of ['polluted', 'isAdmin', 'x']) {
    assert.not.ok(Object.prototype.hasOwnProperty.call(Object.prototype, k), `Object.prototype has no "${k}"`);
    assert.is(({} as Record<string, unknown>)[k], undefined);
  }
}

test('refuses params nested deeper than 32 levels, naming the path, and accepts 32', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  // params (1) > parameters (2) > 31 more objects = 33 levels.
  const deep = await ctx.raw.call('task.create', { type: 'hardening', title: 'deep', parameters: nest(32) });
  refused(deep, `params.parameters${'.a'.repeat(31)}`, 'maxDepth');
  assert.is(deep.error!.data?.limit, 32);
  const mixed = await ctx.raw.call('task.create', { type: 'hardening', title: 'deep', parameters: { list: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] } });
  refused(mixed, `params.parameters.list${'[0]'.repeat(30)}`, 'maxDepth');
  // 100,000 levels: parsed, then refused at level 33 without walking further.
  const huge = await callText(ctx.raw, 'huge', 'task.create', `{"type":"hardening","title":"deep","parameters":{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`);
  refused(huge, `params.parameters.x${'[0]'.repeat(30)}`, 'maxDepth');
  await stillServing(ctx, head);
  const ok = await ctx.raw.ok<Task>('task.create', { type: 'hardening', title: 'deep enough', parameters: nest(31) });
  assert.equal(ok.parameters, nest(31));
});

test('refuses a string longer than 1,000,000 characters at the default limits', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const r = await ctx.raw.call('task.create', { type: 'hardening', title: 'long', parameters: { blob: 'x'.repeat(1_000_001) } });
  refused(r, 'params.parameters.blob', 'maxStringLength');
  assert.is(r.error!.data?.limit, 1_000_000);
  await stillServing(ctx, head);
});

test('refuses keys longer than 256 characters, objects with more than 10,000 keys and arrays with more than 10,000 items', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const longKey = 'k'.repeat(257);
  refused(await ctx.raw.call('task.create', { type: 'hardening', title: 'key', parameters: { [longKey]: 1 } }), pathText(['parameters', longKey]), 'maxKeyLength');
  const wide = Object.fromEntries(Array.from({ length: 10_001 }, (_, i) => [`k${i}`, i]));
  refused(await ctx.raw.call('task.create', { type: 'hardening', title: 'wide', parameters: { wide } }), 'params.parameters.wide', 'maxKeys');
  const long = new Array(10_001).fill(0);
  refused(await ctx.raw.call('task.create', { type: 'hardening', title: 'long', parameters: { long } }), 'params.parameters.long', 'maxItems');
  await stillServing(ctx, head);
  const fits = await ctx.raw.ok<Task>('task.create', {
    type: 'hardening',
    title: 'at the limits',
    parameters: { ['k'.repeat(256)]: 1, wide: Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`k${i}`, i])), long: new Array(10_000).fill(0) },
  });
  assert.is(Object.keys((fits.parameters as { wide: object }).wide).length, 10_000);
});

test('refuses __proto__ in task.create parameters: no task is created and Object.prototype stays clean', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const before = (await ctx.other.call('task.stats', { type: 'proto' })).total;
  const cases: [string, string][] = [
    ['{"type":"proto","title":"p","parameters":{"__proto__":{"polluted":"yes","isAdmin":true}}}', 'params.parameters.__proto__'],
    ['{"type":"proto","title":"p","parameters":{"a":{"b":{"__proto__":{"x":1}}}}}', 'params.parameters.a.b.__proto__'],
    ['{"type":"proto","title":"p","parameters":{"list":[1,{"__proto__":{"polluted":1}}]}}', 'params.parameters.list[1].__proto__'],
    ['{"type":"proto","title":"p","parameters":{"constructor":{"prototype":{"polluted":1}}}}', 'params.parameters.constructor'],
    ['{"type":"proto","title":"p","parameters":{"x":{"prototype":{"polluted":1}}}}', 'params.parameters.x.prototype'],
    ['{"__proto__":{"polluted":1},"type":"proto","title":"p"}', 'params.__proto__'],
  ];
  for (const [i, [params, path]] of cases.entries()) {
    refused(await callText(ctx.raw, `proto-${i}`, 'task.create', params), path, 'prototypeKey');
  }
  // Other methods that copy maps key by key are covered the same way.
  refused(await callText(ctx.raw, 'proto-rule', 'rule.evaluate', '{"expression":"true","input":{"task":{"__proto__":{"polluted":1}}}}'), 'params.input.task.__proto__', 'prototypeKey');
  refused(await callText(ctx.raw, 'proto-policy', 'policy.set', '{"taskType":"proto","defaults":{"parameters":{"__proto__":{"polluted":1}}}}'), 'params.defaults.parameters.__proto__', 'prototypeKey');
  // Outside params the envelope's own __proto__ is just an unknown member.
  const env = await ctx.raw.exchange('{"jsonrpc":"2.0","id":"env","method":"ping","__proto__":{"polluted":1}}');
  assert.equal((env.msg as WireResponse).result && ((env.msg as WireResponse).result as { pong: boolean }).pong, true);
  assert.is((await ctx.other.call('task.stats', { type: 'proto' })).total, before, 'no task was created');
  unpolluted();
  await stillServing(ctx, head);
});

test('checks params before authentication too', async (ctx) => {
  const anon = await RawSocket.open(ctx.ts.url);
  refused(await callText(anon, 'auth', 'session.authenticate', '{"token":"x","__proto__":{"polluted":1}}'), 'params.__proto__', 'prototypeKey');
  refused(await anon.call('ping', nest(40)), `params${'.a'.repeat(32)}`, 'maxDepth');
  // Everything else is still refused for want of authentication, before its params are read.
  const task = await callText(anon, 'anon-task', 'task.create', '{"__proto__":{}}');
  assert.is(task.error?.code, ErrorCodes.UNAUTHENTICATED);
  unpolluted();
  await anon.close();
});

test('strips control characters from every string of a created task, keeping tab, newline and carriage return', async (ctx) => {
  const created = await ctx.raw.ok<Task>('task.create', {
    type: 'hardening\u0000',
    title: '\u0001Review\u0000 PR\u0007 7\u007f',
    description: 'line 1\nline 2\tindented\r\n\u001b[31mred\u001b[0m \u0080 kept (C1) \u00e9',
    parameters: { note: 'a\u0001b', list: ['x\u0002', 3, { deep: '\u0008y\u000b\u000c' }], clean: 'nothing to do', nested: { n: null, t: true } },
    requiredCapabilities: ['go\u001f'],
  });
  const expected = {
    type: 'hardening',
    title: 'Review PR 7',
    description: 'line 1\nline 2\tindented\r\n[31mred[0m \u0080 kept (C1) \u00e9',
    parameters: { note: 'ab', list: ['x', 3, { deep: 'y' }], clean: 'nothing to do', nested: { n: null, t: true } },
    requiredCapabilities: ['go'],
  };
  const pick = (t: Task) => ({ type: t.type, title: t.title, description: t.description, parameters: t.parameters, requiredCapabilities: t.requiredCapabilities });
  assert.equal(pick(created), expected, 'the reply');
  assert.equal(pick(await ctx.other.call('task.get', { taskId: created.id })), expected, 'what was stored');
  // A title of nothing but control characters is empty once stripped, and the schema refuses it.
  const empty = await ctx.raw.call('task.create', { type: 'hardening', title: '\u0000\u0001' });
  assert.is(empty.error?.code, ErrorCodes.INVALID_PARAMS);
  assert.equal(empty.error?.data?.issues?.[0]?.path, 'title');
});

test('refuses $-prefixed and dotted keys anywhere in params, and keys with control characters', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const cases: [Record<string, unknown>, string, string][] = [
    [{ $where: 'sleep(1000)' }, 'params.parameters["$where"]', 'operatorKey'],
    [{ filter: { status: { $ne: null } } }, 'params.parameters.filter.status["$ne"]', 'operatorKey'],
    [{ 'a.b': 1 }, 'params.parameters["a.b"]', 'operatorKey'],
    [{ list: [{ 'x.': 1 }] }, 'params.parameters.list[0]["x."]', 'operatorKey'],
    [{ 'a\u0000b': 1 }, 'params.parameters["a\\u0000b"]', 'controlCharacterKey'],
  ];
  for (const [parameters, path, check] of cases) {
    refused(await ctx.raw.call('task.create', { type: 'hardening', title: 'keys', parameters }), path, check);
  }
  await stillServing(ctx, head);
  // Dollars and dots inside values are fine.
  const ok = await ctx.raw.ok<Task>('task.create', { type: 'hardening', title: '$5 for v1.2', parameters: { price: '$5', version: 'v1.2', a_b: 1, 'with space': 2 } });
  assert.equal(ok.parameters, { price: '$5', version: 'v1.2', a_b: 1, 'with space': 2 });
});

test('refuses one entry of a batch and answers the others', async (ctx) => {
  const f = await ctx.raw.exchange(
    `[{"jsonrpc":"2.0","id":"b1","method":"task.create","params":{"type":"hardening","title":"bad","parameters":{"__proto__":{}}}},` +
      `{"jsonrpc":"2.0","id":"b2","method":"task.create","params":{"type":"hardening","title":"good\\u0000"}}]`,
  );
  const replies = f.msg as WireResponse[];
  refused(replies.find((r) => r.id === 'b1')!, 'params.parameters.__proto__', 'prototypeKey');
  assert.is((replies.find((r) => r.id === 'b2')!.result as Task).title, 'good');
});

test('sanitizeParams leaves clean params exactly as they were, and names paths as JavaScript would', () => {
  const frame = JSON.stringify({ type: 'review', title: 'Review PR 7', priority: 'high', parameters: { repo: 'acme/api', pr: 7, files: ['a.ts', 'b.ts'], options: { strict: true, tab: 'a\tb\r\n' } } });
  const params = JSON.parse(frame) as unknown;
  sanitizeParams('task.create', params, DEFAULT_INPUT_LIMITS);
  assert.equal(params, JSON.parse(frame));
  assert.is(pathText(['parameters', 'a', 0, 'b_1']), 'params.parameters.a[0].b_1');
  assert.is(pathText(['parameters', 'a.b', '$x', 'with space', '1']), 'params.parameters["a.b"]["$x"]["with space"]["1"]');
  assert.is(pathText(['k'.repeat(300)]), `params["${'k'.repeat(64)}…"]`);
});

test('loadConfig reads the input limits and the idle timeout, and refuses bad values', () => {
  const c = loadConfig([], { TROUPE_MAX_JSON_DEPTH: '8', TROUPE_MAX_STRING_LENGTH: '4096', TROUPE_IDLE_CONNECTION_MS: '0' });
  assert.equal([c.maxJsonDepth, c.maxStringLength, c.idleConnectionMs], [8, 4096, 0]);
  for (const env of [{ TROUPE_MAX_JSON_DEPTH: '0' }, { TROUPE_MAX_JSON_DEPTH: '1001' }, { TROUPE_MAX_STRING_LENGTH: 'big' }, { TROUPE_IDLE_CONNECTION_MS: '-1' }]) {
    assert.throws(() => loadConfig([], env), new RegExp(Object.keys(env)[0]!));
  }
});

test.run();

// ---------------------------------------------------------------------------------------------

interface IdleCtx {
  ts: TestServer;
}

const IDLE_MS = 400;
const idle = suite<IdleCtx>('hardening: idle connections are closed, live ones kept');

idle.before(async (ctx) => {
  ctx.ts = await startServer({ idleConnectionMs: IDLE_MS, maxJsonDepth: 4, maxStringLength: 100 });
});

idle.after(async (ctx) => {
  await ctx.ts.close();
});

/** A client whose WebSocket does not answer pings, as a hung or paused process would not. */
async function deaf(url: string, token: string): Promise<{ ws: WebSocket; frames: any[]; closed: Promise<{ code: number; reason: string }> }> {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, autoPong: false });
  const frames: any[] = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  return { ws, frames, closed };
}

idle('closes a silent connection that answers no ping with 4009, keeps one that sends frames and one that answers pings', async (ctx) => {
  const listener = await RawSocket.open(ctx.ts.url, await ctx.ts.key('acme', 'listener', ['agent']));
  assert.ok((await listener.call('subscribe', { topic: 'inbox:listener' })).result);
  let pings = 0;
  listener.ws.on('ping', () => pings++);

  const active = await deaf(ctx.ts.url, await ctx.ts.key('acme', 'active', ['agent']));
  const activeSince = Date.now();
  let n = 0;
  const beat = setInterval(() => active.ws.send(JSON.stringify({ jsonrpc: '2.0', id: `beat-${n++}`, method: 'ping' })), IDLE_MS / 8);

  const hung = await deaf(ctx.ts.url, await ctx.ts.key('acme', 'hung', ['agent']));
  hung.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'session.whoami' }));
  await waitFor(() => hung.frames.some((f) => f.id === 1));
  try {
    const { code, reason } = await within(hung.closed, 20 * IDLE_MS, 'the idle connection to close');
    assert.is(code, 4009);
    assert.is(reason, 'idle timeout');
    const closing = hung.frames.filter((f) => f.method === 'session.closing');
    assert.is(closing.length, 1, 'told why before the close');
    assert.match(closing[0].params.reason, new RegExp(`Nothing received for ${IDLE_MS} ms`));

    // The listener sent nothing since it subscribed, for longer than the timeout: pinged twice at least.
    await waitFor(() => pings >= 2, { timeoutMs: 20 * IDLE_MS });
    assert.ok(listener.open, 'a connection that answers pings stays open');
    assert.is(((await listener.call('session.whoami')).result as { principalId: string }).principalId, 'listener');
    assert.is(active.ws.readyState, WebSocket.OPEN, 'a connection that sends frames stays open, without answering pings');
    assert.ok(Date.now() - activeSince > IDLE_MS, 'the active connection has been open longer than the timeout');
    await waitFor(() => ctx.ts.server.connectionCount === 2);
  } finally {
    clearInterval(beat);
    active.ws.close();
    hung.ws.terminate();
    await listener.close();
  }
});

idle('applies configured input limits', async (ctx) => {
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key('acme', 'lead', ['admin']));
  const head = await ctx.ts.store.headPosition();
  refused(await raw.call('task.create', { type: 'limits', title: 'x', parameters: { a: { b: { c: {} } } } }), 'params.parameters.a.b.c', 'maxDepth');
  refused(await raw.call('task.create', { type: 'limits', title: 'x'.repeat(101) }), 'params.title', 'maxStringLength');
  refused(await raw.call('task.create', { type: 'limits', title: 'x', requiredCapabilities: ['go', 'y'.repeat(101)] }), 'params.requiredCapabilities[1]', 'maxStringLength');
  assert.is(await ctx.ts.store.headPosition(), head, 'nothing was written');
  const ok = await raw.ok<Task>('task.create', { type: 'limits', title: 'x'.repeat(100), parameters: { a: { b: {} } } });
  assert.is(ok.title.length, 100);
  await raw.close();
});

idle.run();

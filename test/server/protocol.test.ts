import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ErrorCodes } from '../../protocol/errors.js';
import { MAX_BATCH } from '../../protocol/jsonrpc.js';
import type { TroupeClient } from '../../protocol/client.js';
import type { Task } from '../../protocol/model.js';
import { RawSocket, type WireResponse } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

const MAX_FRAME = 2048;

interface Ctx {
  ts: TestServer;
  key: string;
  raw: RawSocket;
  other: TroupeClient;
}

const test = suite<Ctx>('protocol: bad input gets a clear error and changes nothing');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.key = await ctx.ts.key('acme', 'lead', ['admin']);
  ctx.raw = await RawSocket.open(ctx.ts.url, ctx.key);
  ctx.other = await ctx.ts.client('acme', 'observer', ['observer']);
  // The header authentication has finished once a call answers.
  assert.ok((await ctx.raw.call('session.whoami')).result);
});

test.after(async (ctx) => {
  await ctx.raw.close();
  await ctx.ts.close();
});

/** The same connection and another one still answer, and nothing was written. */
async function stillServing(ctx: Ctx, headBefore: number): Promise<void> {
  assert.ok(ctx.raw.open, 'the connection stays open');
  const pong = await ctx.raw.call('ping');
  assert.equal((pong.result as { pong: boolean }).pong, true);
  const me = await ctx.raw.call('session.whoami');
  assert.equal((me.result as { principalId: string }).principalId, 'lead');
  const other = await ctx.other.call('session.whoami');
  assert.is(other.principalId, 'observer');
  assert.is(await ctx.ts.store.headPosition(), headBefore, 'nothing was written to the store');
}

function expectError(r: unknown, code: number, id: string | number | null): WireResponse {
  const res = r as WireResponse;
  assert.ok(res && typeof res === 'object' && !Array.isArray(res), `expected one response object, got ${JSON.stringify(r)}`);
  assert.is(res.jsonrpc, '2.0');
  assert.is(res.id, id, `id of ${JSON.stringify(res)}`);
  assert.ok(res.error, `expected an error, got ${JSON.stringify(res)}`);
  assert.is(res.error!.code, code, res.error!.message);
  assert.type(res.error!.message, 'string');
  assert.ok(res.error!.message.length > 10, 'the message says what was wrong');
  assert.ok(!('result' in res));
  return res;
}

async function countTasks(ctx: Ctx, type: string): Promise<number> {
  return (await ctx.other.call('task.stats', { type })).total;
}

test('answers malformed JSON with -32700 and id null', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  for (const text of ['{"jsonrpc":"2.0","id":1,"method":"ping"', 'not json', '', '{"a":}']) {
    const f = await ctx.raw.exchange(text);
    const r = expectError(f.msg, ErrorCodes.PARSE_ERROR, null);
    assert.match(r.error!.message, /not valid JSON/);
  }
  await stillServing(ctx, head);
});

test('answers a frame that is not an object with -32600 and id null', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  for (const text of ['42', '"ping"', 'null', 'true']) {
    const f = await ctx.raw.exchange(text);
    expectError(f.msg, ErrorCodes.INVALID_REQUEST, null);
  }
  await stillServing(ctx, head);
});

test('answers a batch of non-objects with one -32600 per entry', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const f = await ctx.raw.exchange('[1, "two", null, [3]]');
  assert.ok(Array.isArray(f.msg), 'a batch gets a batch');
  assert.is(f.msg.length, 4);
  for (const r of f.msg) expectError(r, ErrorCodes.INVALID_REQUEST, null);
  await stillServing(ctx, head);
});

test('answers an empty batch with a single -32600, not an array', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const f = await ctx.raw.exchange('[]');
  const r = expectError(f.msg, ErrorCodes.INVALID_REQUEST, null);
  assert.match(r.error!.message, /empty/);
  await stillServing(ctx, head);
});

test('refuses a batch over 100 entries as a whole and runs none of it', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const type = 'batch-over-limit';
  const entries = Array.from({ length: MAX_BATCH + 1 }, (_, i) => ({
    jsonrpc: '2.0',
    id: i + 1,
    method: 'task.create',
    params: { type, title: `t${i}` },
  }));
  const f = await ctx.raw.exchange(entries);
  const r = expectError(f.msg, ErrorCodes.INVALID_REQUEST, null);
  assert.match(r.error!.message, /at most 100/);
  assert.is(await countTasks(ctx, type), 0);
  await stillServing(ctx, head);
});

test('accepts a batch of exactly 100 entries and answers each', async (ctx) => {
  const entries = Array.from({ length: MAX_BATCH }, (_, i) => ({ jsonrpc: '2.0', id: `p${i}`, method: 'ping' }));
  const f = await ctx.raw.exchange(entries);
  assert.ok(Array.isArray(f.msg));
  assert.is(f.msg.length, MAX_BATCH);
  assert.equal(new Set(f.msg.map((r: WireResponse) => r.id)), new Set(entries.map((e) => e.id)));
});

test('answers a wrong or missing jsonrpc version with -32600 and the request id', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  let r = await ctx.raw.exchange({ jsonrpc: '1.0', id: 71, method: 'ping' });
  expectError(r.msg, ErrorCodes.INVALID_REQUEST, 71);
  assert.match((r.msg as WireResponse).error!.message, /"jsonrpc"/);
  r = await ctx.raw.exchange({ id: 'v', method: 'ping' });
  expectError(r.msg, ErrorCodes.INVALID_REQUEST, 'v');
  r = await ctx.raw.exchange({ jsonrpc: 2, id: 72, method: 'ping' });
  expectError(r.msg, ErrorCodes.INVALID_REQUEST, 72);
  await stillServing(ctx, head);
});

test('answers an id that is not a string or number with -32600 and id null', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const type = 'bad-id';
  for (const id of [{ a: 1 }, [1], true, null, 'x'.repeat(129)]) {
    const r = await ctx.raw.exchange({ jsonrpc: '2.0', id, method: 'task.create', params: { type, title: 'nope' } });
    expectError(r.msg, ErrorCodes.INVALID_REQUEST, null);
  }
  assert.is(await countTasks(ctx, type), 0, 'a request with a bad id is not run');
  await stillServing(ctx, head);
});

test('answers a missing or empty method with -32600', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  for (const method of [undefined, '', 42, 'm'.repeat(129)]) {
    const r = await ctx.raw.exchange({ jsonrpc: '2.0', id: 'm', method });
    expectError(r.msg, ErrorCodes.INVALID_REQUEST, 'm');
  }
  await stillServing(ctx, head);
});

test('answers params that are not an object with -32602', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  for (const params of [['acme'], 'acme', 5, null]) {
    const r = await ctx.raw.exchange({ jsonrpc: '2.0', id: 'p', method: 'task.search', params });
    const res = expectError(r.msg, ErrorCodes.INVALID_PARAMS, 'p');
    assert.match(res.error!.message, /params/);
  }
  await stillServing(ctx, head);
});

test('answers an unknown method with -32601 naming it', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  for (const method of ['task.explode', 'constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    const r = await ctx.raw.call(method, {});
    const res = expectError(r, ErrorCodes.METHOD_NOT_FOUND, r.id);
    assert.is(res.error!.data.method, method);
    assert.ok(res.error!.message.includes(method));
  }
  await stillServing(ctx, head);
});

test('answers wrong param types with -32602 and data.issues naming the field', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const type = 'wrong-types';
  let r = await ctx.raw.call('task.create', { type, title: 42 });
  let res = expectError(r, ErrorCodes.INVALID_PARAMS, r.id);
  assert.ok(Array.isArray(res.error!.data.issues));
  assert.ok(res.error!.data.issues.some((i: { path: string }) => i.path === 'title'), JSON.stringify(res.error!.data.issues));
  assert.match(res.error!.message, /title/);

  r = await ctx.raw.call('task.create', { type, title: 'ok', priority: 'urgent', maxRetries: -1 });
  res = expectError(r, ErrorCodes.INVALID_PARAMS, r.id);
  const paths = res.error!.data.issues.map((i: { path: string }) => i.path);
  assert.ok(paths.includes('priority') && paths.includes('maxRetries'), `every wrong field is listed: ${paths}`);

  r = await ctx.raw.call('task.get', {});
  res = expectError(r, ErrorCodes.INVALID_PARAMS, r.id);
  assert.ok(res.error!.data.issues.some((i: { path: string }) => i.path === 'taskId'));

  r = await ctx.raw.call('task.get', { taskId: 'has/slash' });
  expectError(r, ErrorCodes.INVALID_PARAMS, r.id);
  assert.is(await countTasks(ctx, type), 0);
  await stillServing(ctx, head);
});

test('answers unknown extra params with -32602 naming the key', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const type = 'extra-params';
  const r = await ctx.raw.call('task.create', { type, title: 'x', bogus: 1 });
  const res = expectError(r, ErrorCodes.INVALID_PARAMS, r.id);
  assert.ok(Array.isArray(res.error!.data.issues));
  assert.match(JSON.stringify(res.error!.data.issues), /bogus/);
  assert.match(res.error!.message, /bogus/);
  const ping = await ctx.raw.call('ping', { extra: true });
  expectError(ping, ErrorCodes.INVALID_PARAMS, ping.id);
  assert.is(await countTasks(ctx, type), 0);
  await stillServing(ctx, head);
});

test('answers a binary frame with -32600 and keeps the connection', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const from = ctx.raw.frames.length;
  ctx.raw.ws.send(Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 'bin', method: 'ping' })), { binary: true });
  await ctx.raw.count(from + 1);
  const res = expectError(ctx.raw.frames[from]!.msg, ErrorCodes.INVALID_REQUEST, null);
  assert.match(res.error!.message, /binary/);
  await stillServing(ctx, head);
});

test('answers each request of a mixed batch by id and leaves notifications unanswered', async (ctx) => {
  const type = 'mixed-batch';
  const f = await ctx.raw.exchange([
    { jsonrpc: '2.0', id: 1, method: 'ping' },
    { jsonrpc: '2.0', id: 2, method: 'task.nope' },
    { jsonrpc: '2.0', method: 'task.create', params: { type, title: 'from a notification' } },
    { jsonrpc: '2.0', id: 3, method: 'task.create', params: { type, title: 7 } },
    { jsonrpc: '2.0', id: 4, method: 'task.create', params: { type, title: 'from a request' } },
    { jsonrpc: '2.0', method: 'task.nope' },
    { bogus: true },
    'text',
  ]);
  assert.ok(Array.isArray(f.msg));
  const byId = new Map<unknown, WireResponse[]>();
  for (const r of f.msg as WireResponse[]) byId.set(r.id, [...(byId.get(r.id) ?? []), r]);
  assert.equal([...byId.keys()].sort(), [1, 2, 3, 4, null].sort());
  assert.is(f.msg.length, 6, 'four requests and two invalid entries; the two notifications get nothing');
  assert.equal((byId.get(1)![0]!.result as { pong: boolean }).pong, true);
  expectError(byId.get(2)![0], ErrorCodes.METHOD_NOT_FOUND, 2);
  expectError(byId.get(3)![0], ErrorCodes.INVALID_PARAMS, 3);
  assert.is((byId.get(4)![0]!.result as Task).title, 'from a request');
  for (const r of byId.get(null)!) expectError(r, ErrorCodes.INVALID_REQUEST, null);
  // The valid notification ran (it just gets no answer); the invalid request did not.
  const found = await ctx.other.call('task.search', { type });
  assert.equal(found.items.map((t) => t.title).sort(), ['from a notification', 'from a request']);
});

test('sends nothing at all for a batch made only of notifications', async (ctx) => {
  const from = ctx.raw.frames.length;
  ctx.raw.send([
    { jsonrpc: '2.0', method: 'ping' },
    { jsonrpc: '2.0', method: 'session.whoami' },
    { jsonrpc: '2.0', method: 'no.such.method' },
  ]);
  ctx.raw.send({ jsonrpc: '2.0', id: 'sentinel', method: 'ping' });
  await ctx.raw.response('sentinel', from);
  assert.is(ctx.raw.frames.length - from, 1, `only the sentinel was answered: ${ctx.raw.frames.slice(from).map((f) => f.text)}`);
  assert.is(ctx.raw.frames[from]!.msg.id, 'sentinel');
});

test('refuses an illegal transition with -32010 naming the status and allowed events', async (ctx) => {
  const t = await ctx.raw.ok<Task>('task.create', { type: 'illegal', title: 'not started yet' });
  const head = await ctx.ts.store.headPosition();
  const r = await ctx.raw.call('task.complete', { taskId: t.id, result: { done: true } });
  const res = expectError(r, ErrorCodes.ILLEGAL_TRANSITION, r.id);
  assert.is(res.error!.data.status, 'pending');
  assert.is(res.error!.data.reason, 'ILLEGAL_TRANSITION');
  assert.ok(Array.isArray(res.error!.data.allowed));
  assert.ok(res.error!.data.allowed.includes('task.assign'), JSON.stringify(res.error!.data.allowed));
  assert.not.ok(res.error!.data.allowed.includes('task.complete'));
  assert.match(res.error!.message, /pending/);
  const after = await ctx.other.call('task.get', { taskId: t.id });
  assert.is(after.version, t.version);
  assert.is(after.status, 'pending');
  assert.is(after.result, null);
  await stillServing(ctx, head);
});

test('refuses a stale expectedVersion with -32011 and data.actualVersion', async (ctx) => {
  const t = await ctx.raw.ok<Task>('task.create', { type: 'stale', title: 'v1' });
  const t2 = await ctx.raw.ok<Task>('task.update', { taskId: t.id, title: 'v2', expectedVersion: t.version });
  assert.is(t2.version, t.version + 1);
  const head = await ctx.ts.store.headPosition();
  const r = await ctx.raw.call('task.update', { taskId: t.id, title: 'v3', expectedVersion: t.version });
  const res = expectError(r, ErrorCodes.VERSION_MISMATCH, r.id);
  assert.is(res.error!.data.actualVersion, t2.version);
  assert.is(res.error!.data.expectedVersion, t.version);
  const after = await ctx.other.call('task.get', { taskId: t.id });
  assert.is(after.title, 'v2');
  assert.is(after.version, t2.version);
  await stillServing(ctx, head);
});

test('returns the same task for a replayed idempotency key and refuses a different body with -32012', async (ctx) => {
  const type = 'idempotent';
  const params = { type, title: 'once', idempotencyKey: 'k-1', parameters: { a: 1, b: [1, 2] } };
  const first = await ctx.raw.ok<Task>('task.create', params);
  // Same body with keys in another order is the same request.
  const again = await ctx.raw.ok<Task>('task.create', { parameters: { b: [1, 2], a: 1 }, idempotencyKey: 'k-1', title: 'once', type });
  assert.is(again.id, first.id);
  // Concurrent replays also converge on the one task.
  const many = await Promise.all(Array.from({ length: 5 }, () => ctx.raw.ok<Task>('task.create', params)));
  for (const t of many) assert.is(t.id, first.id);
  assert.is((await ctx.other.call('task.search', { type })).items.length, 1);

  const head = await ctx.ts.store.headPosition();
  const r = await ctx.raw.call('task.create', { ...params, title: 'twice' });
  const res = expectError(r, ErrorCodes.IDEMPOTENCY_MISMATCH, r.id);
  assert.is(res.error!.data.idempotencyKey, 'k-1');
  const found = await ctx.other.call('task.search', { type });
  assert.is(found.items.length, 1, 'no second task');
  assert.is(found.items[0]!.title, 'once');
  await stillServing(ctx, head);
});

test('creates distinct tasks for concurrent first uses of different idempotency keys', async (ctx) => {
  const type = 'idempotent-many';
  const made = await Promise.all(
    Array.from({ length: 10 }, (_, i) => ctx.raw.ok<Task>('task.create', { type, title: 't', idempotencyKey: `many-${i % 5}` })),
  );
  assert.is(new Set(made.map((t) => t.id)).size, 5);
  assert.is(await countTasks(ctx, type), 5);
});

test('a reply is sent before any notification the same request caused', async (ctx) => {
  const worker = await ctx.ts.client('acme', 'worker', ['agent']);
  await worker.call('agent.register', { capabilities: ['review'] });
  const sock = await RawSocket.open(ctx.ts.url, ctx.key);
  const sub = await sock.ok<{ subscriptionId: string }>('subscribe', { topic: 'inbox:worker' });
  const from = sock.frames.length;
  const ids = Array.from({ length: 20 }, (_, i) => `order-${i}`);
  // Many in flight at once, plus a batch, so a reply that lost the race would show.
  for (const id of ids) sock.send({ jsonrpc: '2.0', id, method: 'task.create', params: { type: 'order', title: id, assignTo: 'worker' } });
  sock.send([
    { jsonrpc: '2.0', id: 'b1', method: 'task.create', params: { type: 'order', title: 'b1', assignTo: 'worker' } },
    { jsonrpc: '2.0', id: 'b2', method: 'task.create', params: { type: 'order', title: 'b2', assignTo: 'worker' } },
  ]);
  await sock.frame((f) => Array.isArray(f.msg), from);
  await waitFor(() => sock.notifications('subscription.event').filter((n) => n.params.subscriptionId === sub.subscriptionId).length >= ids.length + 2);

  const frames = sock.frames.slice(from);
  for (const id of ids) {
    const replyAt = frames.findIndex((f) => f.msg?.id === id);
    assert.ok(replyAt >= 0, `reply to ${id}`);
    const taskId = frames[replyAt]!.msg.result.id;
    const eventAt = frames.findIndex((f) => f.msg?.method === 'subscription.event' && f.msg.params.event.actorId === taskId);
    assert.ok(eventAt >= 0, `event of ${id}`);
    assert.ok(replyAt < eventAt, `reply to ${id} (frame ${replyAt}) precedes its notification (frame ${eventAt})`);
  }
  const batchAt = frames.findIndex((f) => Array.isArray(f.msg));
  for (const r of frames[batchAt]!.msg as WireResponse[]) {
    const taskId = (r.result as Task).id;
    const eventAt = frames.findIndex((f) => f.msg?.method === 'subscription.event' && f.msg.params.event.actorId === taskId);
    assert.ok(batchAt < eventAt, `the batch reply precedes the notification of ${r.id}`);
  }
  await sock.close();
});

test.run();

const sizes = suite<Ctx>('protocol: frame size limits');

sizes.before(async (ctx) => {
  ctx.ts = await startServer({ maxFrameBytes: MAX_FRAME });
  ctx.key = await ctx.ts.key('acme', 'lead', ['admin']);
  ctx.raw = await RawSocket.open(ctx.ts.url, ctx.key);
  ctx.other = await ctx.ts.client('acme', 'observer', ['observer']);
  assert.ok((await ctx.raw.call('session.whoami')).result);
});

sizes.after(async (ctx) => {
  await ctx.raw.close();
  await ctx.ts.close();
});

sizes('processes a frame of exactly maxFrameBytes normally', async (ctx) => {
  const base = JSON.stringify({ jsonrpc: '2.0', id: 'edge', method: 'task.create', params: { type: 'edge', title: 'edge', description: '' } });
  const frame = base.replace('"description":""', `"description":"${'d'.repeat(MAX_FRAME - base.length)}"`);
  assert.is(Buffer.byteLength(frame), MAX_FRAME);
  const r = await ctx.raw.exchange(frame);
  assert.is(r.msg.id, 'edge');
  assert.is(r.msg.result.title, 'edge', JSON.stringify(r.msg.error));
});

sizes('answers a frame just over maxFrameBytes with -32020 and keeps the connection', async (ctx) => {
  const head = await ctx.ts.store.headPosition();
  const type = 'too-large';
  const frame = JSON.stringify({
    jsonrpc: '2.0',
    id: 'big',
    method: 'task.create',
    params: { type, title: 'big', description: 'd'.repeat(MAX_FRAME) },
  });
  assert.ok(Buffer.byteLength(frame) > MAX_FRAME && Buffer.byteLength(frame) < 4 * MAX_FRAME);
  const r = await ctx.raw.exchange(frame);
  // The id is read from the start of the frame, so the error names the request.
  const res = expectError(r.msg, ErrorCodes.PAYLOAD_TOO_LARGE, 'big');
  assert.is(res.error!.data.limitBytes, MAX_FRAME);
  assert.is(res.error!.data.sizeBytes, Buffer.byteLength(frame));
  // Multi-byte characters count as bytes, not characters.
  const wide = JSON.stringify({ jsonrpc: '2.0', id: 'wide', method: 'ping', params: { x: 'é'.repeat(MAX_FRAME / 2) } });
  assert.ok(wide.length < MAX_FRAME + 100 && Buffer.byteLength(wide) > MAX_FRAME);
  expectError((await ctx.raw.exchange(wide)).msg, ErrorCodes.PAYLOAD_TOO_LARGE, 'wide');
  assert.is(await countTasks(ctx, type), 0);
  await stillServing(ctx, head);
});

sizes('closes with 1009 on a frame over 4x maxFrameBytes, and the server still serves', async (ctx) => {
  const victim = await RawSocket.open(ctx.ts.url, ctx.key);
  assert.ok((await victim.call('ping')).result);
  const head = await ctx.ts.store.headPosition();
  victim.send(JSON.stringify({ jsonrpc: '2.0', id: 'huge', method: 'ping', params: { x: 'h'.repeat(4 * MAX_FRAME) } }));
  const { code } = await victim.waitClosed();
  assert.is(code, 1009);
  assert.is(victim.indexOf((f) => f.msg?.id === 'huge'), -1, 'the frame was not answered');
  const fresh = await RawSocket.open(ctx.ts.url, ctx.key);
  assert.equal((await fresh.call('ping')).result && true, true);
  await fresh.close();
  await stillServing(ctx, head);
});

sizes.run();

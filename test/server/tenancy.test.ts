import { randomUUID } from 'node:crypto';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import type { ActorEvent, Task } from '../../protocol/model.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { refusal } from '../helpers/errors.js';

interface Ctx {
  ts: TestServer;
  /** Tenant A. */
  aLead: TroupeClient;
  aWorker: TroupeClient;
  /** Tenant B: an admin, an agent and an observer. */
  bLead: TroupeClient;
  bWorker: TroupeClient;
  bEye: TroupeClient;
  task: Task;
}

const test = suite<Ctx>('tenancy: no principal can read, change or detect another tenant’s actors');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.aLead = await ctx.ts.client('tenant-a', 'lead', ['admin']);
  ctx.aWorker = await ctx.ts.client('tenant-a', 'worker', ['agent']);
  // Same principal ids in both tenants: isolation must not rely on distinct names.
  ctx.bLead = await ctx.ts.client('tenant-b', 'lead', ['admin']);
  ctx.bWorker = await ctx.ts.client('tenant-b', 'worker', ['agent']);
  ctx.bEye = await ctx.ts.client('tenant-b', 'eye', ['observer']);
  await ctx.aWorker.call('agent.register', { capabilities: ['secret-capability'], name: 'A worker' });
  ctx.task = await ctx.aLead.call('task.create', {
    type: 'secret-type',
    title: 'Secret plan of tenant A',
    assignTo: 'worker',
    idempotencyKey: 'shared-key',
  });
  for (let i = 0; i < 3; i++) await ctx.aLead.call('task.create', { type: 'secret-type', title: `Secret ${i}` });
});

test.after(async (ctx) => {
  await ctx.ts.close();
});


/** The error with the id replaced, so two refusals can be compared whole. */
function shape(e: ProtocolError, id: string): unknown {
  return JSON.parse(JSON.stringify(e.toJSON()).split(id).join('<id>'));
}

type Probe = [string, (c: TroupeClient, id: string) => Promise<unknown>];

const probes: Probe[] = [
  ['task.get', (c, id) => c.call('task.get', { taskId: id })],
  ['task.accept', (c, id) => c.call('task.accept', { taskId: id })],
  ['task.cancel', (c, id) => c.call('task.cancel', { taskId: id, reason: 'mine now' })],
  ['task.update', (c, id) => c.call('task.update', { taskId: id, title: 'changed' })],
  ['task.update with expectedVersion', (c, id) => c.call('task.update', { taskId: id, title: 'changed', expectedVersion: 1 })],
  ['task.delete', (c, id) => c.call('task.delete', { taskId: id })],
  ['task.start', (c, id) => c.call('task.start', { taskId: id })],
  ['task.complete', (c, id) => c.call('task.complete', { taskId: id, result: 1 })],
  ['task.progress', (c, id) => c.call('task.progress', { taskId: id, percent: 5 })],
  ['task.timeline', (c, id) => c.call('task.timeline', { taskId: id })],
  ['subscribe task:', (c, id) => c.call('subscribe', { topic: `task:${id}` })],
  ['task.create with parentTaskId', (c, id) => c.call('task.create', { type: 'x', title: 'child', parentTaskId: id })],
];

for (const [name, call] of probes) {
  test(`answers ${name} on another tenant’s task exactly as on a task that does not exist`, async (ctx) => {
    for (const client of [ctx.bLead, ctx.bWorker]) {
      const theirs = await refusal(call(client, ctx.task.id));
      const random = randomUUID();
      const none = await refusal(call(client, random));
      assert.is(theirs.code, ErrorCodes.NOT_FOUND, `${name}: ${theirs.message}`);
      assert.equal(shape(theirs, ctx.task.id), shape(none, random), `${name} must not reveal that the id exists elsewhere`);
    }
  });
}

test('answers assign and agent lookups across tenants as for unknown ids', async (ctx) => {
  const b = await ctx.bLead.call('task.create', { type: 'b', title: 'B task' });
  // A's agent id is unknown in B, exactly like a random one.
  const theirs = await refusal(ctx.bLead.call('task.assign', { taskId: b.id, agentId: 'worker' }));
  const random = `agent-${randomUUID()}`;
  const none = await refusal(ctx.bLead.call('task.assign', { taskId: b.id, agentId: random }));
  assert.is(theirs.code, ErrorCodes.NOT_FOUND);
  assert.equal(shape(theirs, 'worker'), shape(none, random));
  for (const call of [
    (id: string) => ctx.bLead.call('agent.get', { agentId: id }),
    (id: string) => ctx.bLead.call('subscribe', { topic: `agent:${id}` }),
  ]) {
    const t = await refusal(call('worker'));
    const n = await refusal(call(random));
    assert.is(t.code, ErrorCodes.NOT_FOUND);
    assert.equal(shape(t, 'worker'), shape(n, random));
  }
  const batch = await ctx.bLead.call('task.getBatch', { taskIds: [ctx.task.id, b.id] });
  assert.equal(batch.missing, [ctx.task.id]);
  assert.equal(batch.items.map((t) => t.id), [b.id]);
});

test('never includes another tenant’s data in search, stats, lists or reports', async (ctx) => {
  const mine = await ctx.bLead.call('task.create', { type: 'b-type', title: 'B visible' });
  await ctx.bWorker.call('agent.register', { capabilities: ['b-capability'] });
  for (const c of [ctx.bLead, ctx.bEye]) {
    assert.is((await c.call('task.search', { query: 'secret' })).items.length, 0);
    assert.is((await c.call('task.search', { type: 'secret-type' })).items.length, 0);
    assert.is((await c.call('task.search', { createdBy: 'lead', archived: 'any', limit: 1000 })).items.every((t) => t.tenantId === 'tenant-b'), true);
    const all = await c.call('task.search', { archived: 'any', limit: 1000 });
    assert.ok(all.items.some((t) => t.id === mine.id));
    assert.ok(all.items.every((t) => t.tenantId === 'tenant-b'));
    const stats = await c.call('task.stats', {});
    assert.is(stats.total, all.items.length);
    assert.is(stats.byType['secret-type'], undefined);
    const list = await c.call('task.listForAgent', { agentId: 'worker' });
    assert.ok(list.items.every((t) => t.tenantId === 'tenant-b'));
    assert.not.ok(list.items.some((t) => t.id === ctx.task.id));
    const agents = await c.call('agent.list', {});
    assert.ok(agents.items.every((a) => a.tenantId === 'tenant-b'), JSON.stringify(agents.items));
    assert.is((await c.call('agent.list', { capability: 'secret-capability' })).items.length, 0);
    const report = await c.call('task.report', { format: 'csv' });
    assert.not.match(report.content, /Secret/);
    assert.not.match((await c.call('task.report', { format: 'json' })).content, /Secret/);
  }
  // The worker of B lists its own (empty) inbox, not A's worker's.
  assert.is((await ctx.bWorker.call('task.listForAgent', {})).items.length, 0);
  // And A still sees only A.
  const a = await ctx.aLead.call('task.search', { archived: 'any', limit: 1000 });
  assert.ok(a.items.every((t) => t.tenantId === 'tenant-a'));
  assert.is(a.items.length, 4);
});

test('keeps idempotency keys apart per tenant', async (ctx) => {
  // A used 'shared-key' as principal "lead"; B's "lead" uses it with another body.
  const b = await ctx.bLead.call('task.create', { type: 'b', title: 'B with the same key', idempotencyKey: 'shared-key' });
  assert.is.not(b.id, ctx.task.id);
  assert.is(b.tenantId, 'tenant-b');
  const again = await ctx.bLead.call('task.create', { type: 'b', title: 'B with the same key', idempotencyKey: 'shared-key' });
  assert.is(again.id, b.id);
});

test('delivers no event of another tenant on any topic', async (ctx) => {
  const seen: ActorEvent[] = [];
  await ctx.bLead.subscribe('tenant', (e) => seen.push(e));
  await ctx.bLead.subscribe('inbox:worker', (e) => seen.push(e));
  await ctx.bEye.subscribe('tenant', (e) => seen.push(e));
  // A's activity on the same topic names…
  await ctx.aLead.call('task.create', { type: 'secret-type', title: 'Secret live', assignTo: 'worker' });
  await ctx.aWorker.call('task.accept', { taskId: ctx.task.id });
  await ctx.aWorker.call('agent.heartbeat', {});
  // …then a sentinel in B; B's subscribers see the sentinel and nothing before it.
  const sentinel = await ctx.bLead.call('task.create', { type: 'b', title: 'sentinel' });
  await waitFor(() => seen.filter((e) => e.actorId === sentinel.id).length === 2);
  assert.ok(seen.every((e) => e.actorId === sentinel.id), JSON.stringify(seen.map((e) => [e.actorId, e.type])));
  // Resuming from 0 replays only B's history.
  const replayed: ActorEvent[] = [];
  const sub = await ctx.bEye.subscribe('tenant', (e) => replayed.push(e), { fromPosition: 0 });
  await waitFor(() => replayed.some((e) => e.actorId === sentinel.id));
  const aEvents = new Set((await ctx.ts.store.readFeed(0, 100_000)).filter((e) => e.tenant === 'tenant-a').map((e) => e.id));
  assert.ok(aEvents.size >= 7 && replayed.length > 0);
  assert.not.ok(replayed.some((e) => aEvents.has(e.id)), 'no event of A is replayed to B');
  await sub.unsubscribe();
});

test('leaves A’s task exactly as it was after B’s attempts', async (ctx) => {
  const now = await ctx.aLead.call('task.get', { taskId: ctx.task.id });
  const timeline = await ctx.aLead.call('task.timeline', { taskId: ctx.task.id });
  // Only A's own accept (from the previous test) happened since creation.
  assert.equal(timeline.items.map((e) => [e.type, e.principal]), [
    ['task.create', 'lead'],
    ['task.accept', 'worker'],
  ]);
  assert.is(now.version, 2);
  assert.is(now.title, 'Secret plan of tenant A');
  assert.is(now.status, 'accepted');
  assert.is(now.tenantId, 'tenant-a');
  assert.is(now.error, null);
});

test.run();

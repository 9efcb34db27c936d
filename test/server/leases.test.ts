import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import { Authenticator } from '../../src/auth/Authenticator.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { refusal } from '../helpers/errors.js';
import { startServerProcess, type ServerProcess } from '../helpers/node.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { eventsOf, offered, registerAgents, taskWhen } from '../helpers/work.js';

/** Clock skew allowed between this process and the server's timestamps (same machine). */
const SLACK_MS = 25;

interface Ctx {
  ts: TestServer;
  n: number;
}

const test = suite<Ctx>('leases: an agent holds accepted work while it is alive, and loses it when it is not');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function tenant(ctx: Ctx): Promise<{ tenant: string; lead: TroupeClient }> {
  const tenant = `ls${++ctx.n}`;
  return { tenant, lead: await ctx.ts.client(tenant, 'lead', ['admin']) };
}

/** An agent on a raw socket, so the test can drop its TCP connection without a close handshake. */
async function rawAgent(ts: TestServer, tenant: string, id: string, profile: Record<string, unknown>): Promise<RawSocket> {
  const raw = await RawSocket.open(ts.url, await ts.key(tenant, id, ['agent']));
  await raw.ok('agent.register', profile);
  return raw;
}

test('renews the lease of a connected agent, so it keeps the task well past leaseSeconds', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const { w } = await registerAgents(ctx.ts, t, { w: {} });
  const x = await lead.call('task.create', { type: 'lease', title: 'long haul', assignTo: 'w', leaseSeconds: 1 });
  assert.equal([x.leaseSeconds, x.leaseExpiresAt, x.onLeaseExpired], [1, null, 'reoffer'], 'no lease before it is accepted');
  const acc = await w!.call('task.accept', { taskId: x.id });
  assert.is(Date.parse(acc.leaseExpiresAt!) - Date.parse(acc.acceptedAt!), 1000);
  const renewed = await taskWhen(lead, x.id, (v) => Date.parse(v.leaseExpiresAt!) >= Date.parse(acc.acceptedAt!) + 2000, 5000);
  assert.equal([renewed.status, renewed.assignedTo, renewed.rejections, renewed.delegations.length], ['accepted', 'w', [], 1]);
  // Progress renews it too, counting from the report.
  await w!.call('task.start', { taskId: x.id });
  const p = await w!.call('task.progress', { taskId: x.id, percent: 10 });
  assert.is(Date.parse(p.leaseExpiresAt!) - Date.parse(p.updatedAt), 1000);
  const done = await w!.call('task.complete', { taskId: x.id, result: 'ok' });
  assert.equal([done.status, done.leaseExpiresAt], ['completed', null]);
});

test('after a killed connection the task returns to pending when its lease runs out and goes to another agent as a failover', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const a = await rawAgent(ctx.ts, t, 'a', { capabilities: ['etl'], maxConcurrentTasks: 5 });
  const x = await lead.call('task.create', { type: 'etl', title: 'load', requiredCapabilities: ['etl'], autoAssign: true, leaseSeconds: 1 });
  assert.is((await offered(lead, x.id)).assignedTo, 'a');
  await a.ok('task.accept', { taskId: x.id });
  await a.ok('task.start', { taskId: x.id });
  const { b } = await registerAgents(ctx.ts, t, { b: { capabilities: ['etl'] }, nope: { capabilities: ['py'] } });
  const killedAt = Date.now();
  await a.terminate();
  const still = await lead.call('task.get', { taskId: x.id });
  assert.equal([still.status, still.assignedTo], ['in_progress', 'a'], 'the lease has not run out yet');

  const moved = await taskWhen(lead, x.id, (v) => v.assignedTo === 'b', 5000);
  assert.is(moved.status, 'assigned');
  const link = moved.delegations.at(-1)!;
  assert.equal([link.from, link.to, link.kind], ['a', 'b', 'failover']);
  assert.ok(Date.parse(link.at) >= killedAt + 1000 - SLACK_MS, `failover ${Date.parse(link.at) - killedAt} ms after the kill, before the lease ran out`);
  assert.equal(moved.rejections.map((r) => [r.by, r.reason]), [['a', 'lease of 1 s expired without renewal']]);
  const tl = (await lead.call('task.timeline', { taskId: x.id })).items;
  const lapse = tl.find((e) => e.type === 'timer.fired' && e.data.name === 'lease');
  assert.ok(lapse, 'the lease timer fired');
  assert.equal([lapse.status, lapse.principal], ['pending', 'system']);
  const assign = (await eventsOf(lead, x.id, 'task.assign')).at(-1)!;
  assert.equal([assign.data.agentId, assign.data.kind], ['b', 'failover']);
  // The lost lease counts against a.
  const perf = await lead.call('agent.performance', { agentId: 'a' });
  assert.equal([perf.failed, perf.completed, perf.currentLoad], [1, 0, 0]);
  await b!.call('task.accept', { taskId: x.id });
  await b!.call('task.start', { taskId: x.id });
  assert.is((await b!.call('task.complete', { taskId: x.id, result: { rows: 3 } })).status, 'completed');
});

test('with onLeaseExpired fail, a lost lease fails the task instead of re-offering it', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const a = await rawAgent(ctx.ts, t, 'a', {});
  await registerAgents(ctx.ts, t, { spare: {} });
  const x = await lead.call('task.create', { type: 'strict', title: 'all or nothing', assignTo: 'a', leaseSeconds: 1, onLeaseExpired: 'fail' });
  assert.is(x.onLeaseExpired, 'fail');
  await a.ok('task.accept', { taskId: x.id });
  const killedAt = Date.now();
  await a.terminate();
  const failed = await taskWhen(lead, x.id, (v) => v.status === 'failed', 5000);
  assert.match(failed.error!, /The agent a stopped renewing its lease of 1 s/);
  assert.equal([failed.retryAt, failed.leaseExpiresAt], [null, null]);
  assert.ok(Date.parse(failed.completedAt!) >= killedAt + 1000 - SLACK_MS);
  assert.equal(failed.delegations.map((d) => d.to), ['a'], 'nobody else was offered it');
});

test('a task assigned by hand goes back to pending without an agent when the lease runs out, and anyone eligible may claim it', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const a = await rawAgent(ctx.ts, t, 'a', {});
  const { c } = await registerAgents(ctx.ts, t, { c: {} });
  const x = await lead.call('task.create', { type: 'manual', title: 'by hand', assignTo: 'a', leaseSeconds: 1 });
  await a.ok('task.accept', { taskId: x.id });
  await a.close();
  const back = await taskWhen(lead, x.id, (v) => v.status === 'pending', 5000);
  assert.equal([back.assignedTo, back.waitingForAgent, back.autoAssign], [null, null, false]);
  assert.equal(back.releasedBy, { agentId: 'a', why: 'lease_expired' });
  assert.ok((await c!.call('task.available', {})).items.some((v) => v.id === x.id));
  const claimed = await c!.call('task.claim', { taskId: x.id });
  assert.equal([claimed.assignedTo, claimed.delegations.at(-1)!.from], ['c', 'a']);
});

test('an agent that reconnects before its lease runs out keeps the task', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const key = await ctx.ts.key(t, 'a', ['agent']);
  const a = await RawSocket.open(ctx.ts.url, key);
  await a.ok('agent.register', { capabilities: ['etl'] });
  await registerAgents(ctx.ts, t, { b: { capabilities: ['etl'] } });
  const x = await lead.call('task.create', { type: 'etl', title: 'sticky', assignTo: 'a', leaseSeconds: 2 });
  const acc = await a.ok<Task>('task.accept', { taskId: x.id });
  await a.terminate();
  const again = await RawSocket.open(ctx.ts.url, key);
  const kept = await taskWhen(lead, x.id, (v) => Date.parse(v.leaseExpiresAt!) >= Date.parse(acc.acceptedAt!) + 4000, 6000);
  assert.equal([kept.status, kept.assignedTo, kept.rejections], ['accepted', 'a', []]);
  assert.is((await again.ok<Task>('task.start', { taskId: x.id })).status, 'in_progress');
  await again.close();
});

test('heartbeats for an agent without a connection keep its lease; when they stop, the lease runs out', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const a = await rawAgent(ctx.ts, t, 'a', {});
  await registerAgents(ctx.ts, t, { b: {} });
  const x = await lead.call('task.create', { type: 'hb', title: 'kept alive', assignTo: 'a', leaseSeconds: 1 });
  await a.ok('task.accept', { taskId: x.id });
  const killedAt = Date.now();
  await a.terminate();
  // An admin (say, a supervisor that still hears from the agent) reports it alive.
  const kept = await waitFor(
    async () => {
      await lead.call('agent.heartbeat', { agentId: 'a' });
      const v = await lead.call('task.get', { taskId: x.id });
      assert.equal([v.status, v.assignedTo], ['accepted', 'a'], 'kept while heartbeats arrive');
      return Date.parse(v.leaseExpiresAt!) >= killedAt + 2500 ? v : null;
    },
    { timeoutMs: 6000, intervalMs: 200 },
  );
  const lastBeat = Date.parse((await lead.call('agent.get', { agentId: 'a' })).lastSeenAt!);
  const back = await taskWhen(lead, x.id, (v) => v.status === 'pending', 5000);
  assert.equal(back.releasedBy, { agentId: 'a', why: 'lease_expired' });
  assert.ok(Date.parse(back.updatedAt) >= lastBeat + 1000 - SLACK_MS, 'a lease after the last heartbeat');
  assert.ok(Date.parse(kept.leaseExpiresAt!) > killedAt + 1000);
});

test('the lease fields are validated, and an observer cannot renew anything by heartbeats', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const eye = await ctx.ts.client(t, 'eye', ['observer']);
  for (const params of [
    { type: 'x', title: 'x', leaseSeconds: 0 },
    { type: 'x', title: 'x', leaseSeconds: 1.5 },
    { type: 'x', title: 'x', leaseSeconds: '10' },
    { type: 'x', title: 'x', onLeaseExpired: 'explode' },
    { type: 'x', title: 'x', offerTimeoutSeconds: 0 },
  ]) {
    await refusal(lead.call('task.create', params as never), ErrorCodes.INVALID_PARAMS);
  }
  await refusal(eye.call('agent.heartbeat', {}), ErrorCodes.FORBIDDEN);
  assert.is((await lead.call('task.stats', {})).total, 0);
});

test.run();

// ---------------------------------------------------------------------------------------------

interface RestartCtx {
  dir: string;
  remove: () => void;
}

const restart = suite<RestartCtx>('leases: a restart keeps leases, counting them from the restart');

restart.before.each((ctx) => {
  const t = tempDir('troupe-lease-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
});

restart.after.each((ctx) => {
  ctx.remove();
});

/** A leased task accepted by `a`, with `b` registered and able to take it; then the server stops. */
async function leasedThenStopped(dir: string, leaseSeconds: number): Promise<{ keys: Record<string, string>; task: Task }> {
  const one = await startServer({ store: sqliteStore(dir) });
  const keys = {
    lead: await one.key('acme', 'lead', ['admin']),
    a: await one.key('acme', 'a', ['agent']),
    b: await one.key('acme', 'b', ['agent']),
  };
  const lead = await connect(one.url, { token: keys.lead, reconnect: false });
  const a = await connect(one.url, { token: keys.a, reconnect: false });
  await a.call('agent.register', { capabilities: ['etl'] });
  const x = await lead.call('task.create', { type: 'etl', title: 'nightly', requiredCapabilities: ['etl'], autoAssign: true, leaseSeconds });
  assert.is((await offered(lead, x.id)).assignedTo, 'a');
  const task = await a.call('task.accept', { taskId: x.id });
  const b = await connect(one.url, { token: keys.b, reconnect: false });
  await b.call('agent.register', { capabilities: ['etl'] });
  await Promise.all([lead.close(), a.close(), b.close()]);
  await one.close();
  // The server stays down longer than the lease: only counting from the restart keeps it.
  const stoppedAt = Date.now();
  await waitFor(() => Date.now() >= stoppedAt + leaseSeconds * 1000 + 250, { timeoutMs: leaseSeconds * 1000 + 1000 });
  return { keys, task };
}

restart('a task whose agent does not come back after a restart is re-offered to another agent one lease after the restart', async (ctx) => {
  const { keys, task } = await leasedThenStopped(ctx.dir, 1);
  const restartedAt = Date.now();
  const two = await startServer({ store: sqliteStore(ctx.dir) });
  try {
    const lead = await connect(two.url, { token: keys.lead, reconnect: false });
    const b = await connect(two.url, { token: keys.b, reconnect: false });
    const held = await lead.call('task.get', { taskId: task.id });
    assert.equal([held.status, held.assignedTo], ['accepted', 'a'], 'the restart alone takes nothing away');
    const moved = await taskWhen(lead, task.id, (v) => v.assignedTo === 'b', 6000);
    const link = moved.delegations.at(-1)!;
    assert.equal([link.from, link.to, link.kind], ['a', 'b', 'failover']);
    assert.ok(Date.parse(link.at) >= restartedAt + 1000 - SLACK_MS, `re-offered ${Date.parse(link.at) - restartedAt} ms after the restart`);
    assert.is((await b.call('task.accept', { taskId: task.id })).status, 'accepted');
    await Promise.all([lead.close(), b.close()]);
  } finally {
    await two.close();
  }
});

restart('an agent that reconnects after a restart before its lease runs out keeps the task', async (ctx) => {
  const { keys, task } = await leasedThenStopped(ctx.dir, 2);
  const restartedAt = Date.now();
  const two = await startServer({ store: sqliteStore(ctx.dir) });
  try {
    const a = await connect(two.url, { token: keys.a, reconnect: false });
    const b = await connect(two.url, { token: keys.b, reconnect: false });
    const lead = await connect(two.url, { token: keys.lead, reconnect: false });
    const kept = await taskWhen(lead, task.id, (v) => Date.parse(v.leaseExpiresAt!) >= restartedAt + 4000, 6000);
    assert.equal([kept.status, kept.assignedTo, kept.delegations.length], ['accepted', 'a', 1]);
    await a.call('task.start', { taskId: task.id });
    assert.is((await a.call('task.complete', { taskId: task.id })).status, 'completed');
    await Promise.all([lead.close(), a.close(), b.close()]);
  } finally {
    await two.close();
  }
});

restart.run();

interface CrashCtx {
  dir: string;
  remove: () => void;
  nodes: ServerProcess[];
}

const crash = suite<CrashCtx>('leases: a SIGKILLed server re-offers leased work of agents that do not come back');

crash.before((ctx) => {
  const t = tempDir('troupe-lease-crash-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
  ctx.nodes = [];
});

crash.after(async (ctx) => {
  await Promise.all(ctx.nodes.map((n) => n.kill()));
  ctx.remove();
});

crash('after SIGKILL and a restart, the lease of an agent that stays away runs out and another agent gets the task', async (ctx) => {
  const first = await startServerProcess(ctx.dir);
  ctx.nodes.push(first);
  const adminKey = fs.readFileSync(path.join(ctx.dir, 'admin.key'), 'utf8').trim();
  const side = new SqliteStore({ path: path.join(ctx.dir, 'troupe.db') });
  const auth = new Authenticator({ store: side });
  const aKey = (await auth.createKey({ tenant: 'default', principal: 'a', roles: ['agent'] })).key;
  const bKey = (await auth.createKey({ tenant: 'default', principal: 'b', roles: ['agent'] })).key;
  await side.close();

  const admin = await connect(first.url, { token: adminKey, reconnect: false });
  const a = await connect(first.url, { token: aKey, reconnect: false });
  await a.call('agent.register', { capabilities: ['etl'] });
  const x = await admin.call('task.create', { type: 'etl', title: 'survives a crash', requiredCapabilities: ['etl'], autoAssign: true, leaseSeconds: 3 });
  assert.is((await offered(admin, x.id)).assignedTo, 'a');
  await a.call('task.accept', { taskId: x.id });
  await a.call('task.start', { taskId: x.id });
  const b = await connect(first.url, { token: bKey, reconnect: false });
  await b.call('agent.register', { capabilities: ['etl'] });
  first.child.kill('SIGKILL');
  assert.is((await first.exited).signal, 'SIGKILL');
  await Promise.all([admin.close(), a.close(), b.close()]);
  const killedAt = Date.now();
  // Longer than the lease before the crash: only the grace counted from the restart keeps it.
  await waitFor(() => Date.now() >= killedAt + 3250, { timeoutMs: 4000 });

  const restartedAt = Date.now();
  const second = await startServerProcess(ctx.dir);
  ctx.nodes.push(second);
  const admin2 = await connect(second.url, { token: adminKey, reconnect: false });
  const b2 = await connect(second.url, { token: bKey, reconnect: false });
  const held = await admin2.call('task.get', { taskId: x.id });
  assert.equal([held.status, held.assignedTo], ['in_progress', 'a']);
  const moved = await taskWhen(admin2, x.id, (v) => v.assignedTo === 'b', 12_000);
  const link = moved.delegations.at(-1)!;
  assert.equal([link.from, link.to, link.kind], ['a', 'b', 'failover']);
  assert.ok(Date.parse(link.at) >= restartedAt + 3000 - SLACK_MS);
  await b2.call('task.accept', { taskId: x.id });
  await b2.call('task.start', { taskId: x.id });
  assert.is((await b2.call('task.complete', { taskId: x.id, result: 'late but done' })).status, 'completed');
  await waitFor(async () => (await admin2.call('agent.get', { agentId: 'a' })).status === 'offline');
  await Promise.all([admin2.close(), b2.close()]);
});

crash.run();

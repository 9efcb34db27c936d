import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import { startCluster, whenAvailable, type InProcessCluster } from '../helpers/cluster.js';
import { refusal } from '../helpers/errors.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  c: InProcessCluster;
  n: number;
}

const LEASE_MS = 2_000;

const test = suite<Ctx>('cluster fencing: a node that lost an actor cannot write it, and gives it up');

test.before(async (ctx) => {
  // Three lock instances: redis[0] is also the shared Redis, redis[1] and redis[2] are a majority of the locks alone.
  ctx.c = await startCluster(2, { locks: 3, cluster: { leaseMs: LEASE_MS } });
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.c.close();
});

/** A task created through node 1, which therefore holds it. */
async function heldTask(ctx: Ctx): Promise<{ tenant: string; t: Task; stream: string }> {
  const tenant = `f${++ctx.n}`;
  const lead = await ctx.c.client(0, tenant, 'lead', ['admin']);
  const t = await lead.call('task.create', { type: 'x', title: 'original' });
  const stream = `${tenant}/task/${t.id}`;
  assert.equal(ctx.c.holders(stream), [0]);
  return { tenant, t, stream };
}

/** Node `i`'s count of stale task writes, as `/metrics` shows it. */
async function staleMetric(c: InProcessCluster, i: number): Promise<number> {
  const text = await (await fetch(`${c.nodes[i]!.httpUrl}/metrics`)).text();
  const m = /^troupe_stale_writes_rejected_total\{kind="task"\} (\d+)$/m.exec(text);
  return m ? Number(m[1]) : 0;
}

async function counters(c: InProcessCluster, i: number) {
  return (await c.nodes[i]!.server.cluster!.view()).counters;
}

/** The task's stored events as [version, type, title changed to]. */
async function stored(c: InProcessCluster, stream: string): Promise<[number, string, unknown][]> {
  return (await c.nodes[1]!.store.readStream(stream, 0)).map((e) => [e.version, e.type, (e.data.changes as { title?: string } | undefined)?.title ?? e.data.title]);
}

/**
 * Node 2 takes over a task node 1 holds, as after node 1 was paused past its lease: the lease
 * keys expire (deleted here), node 2 takes the lease with the next fencing epoch. Node 1 does not
 * know yet: it learns at its next renewal, or when the store refuses its next write.
 */
async function takeover(c: InProcessCluster, tenant: string, t: Task, stream: string): Promise<number> {
  for (const r of c.redis) await r.command(`DEL ${c.prefix}:lease:${stream}`);
  await c.redis[0]!.command(`DEL ${c.prefix}:owner:${stream}`);
  const lease = await c.nodes[1]!.server.cluster!.ownership.acquire(stream, { tenant, kind: 'task', id: t.id });
  assert.is((await c.nodes[1]!.store.streamInfo(stream)).epoch, lease.epoch);
  assert.ok(lease.epoch > 1);
  return lease.epoch;
}

/** The node noted in the shared Redis as the actor's owner (routing), or null. */
async function ownerNote(c: InProcessCluster, stream: string): Promise<string | null> {
  const reply = await c.redis[0]!.command(`GET ${c.prefix}:owner:${stream}`);
  return reply.startsWith('$-1') ? null : reply.split('\r\n')[1]!;
}

test('node 2 takes the lease and a new epoch: node 1\'s next write is refused by the store, counted, and forwarded to node 2, where it is stored once', async (ctx) => {
  const { c } = ctx;
  // Node 1 renews its leases every third of a lease: should it renew between the takeover and
  // the write, it learns of the takeover that way and never writes stale. Then try again.
  for (let attempt = 1; ; attempt++) {
    const { tenant, t, stream } = await heldTask(ctx);
    const lead = await c.client(0, tenant, 'lead', ['admin']);
    const [metric, a, b] = [await staleMetric(c, 0), await counters(c, 0), await counters(c, 1)];
    const epoch = await takeover(c, tenant, t, stream);
    const updated = await lead.call('task.update', { taskId: t.id, title: 'after takeover' }).catch((e: Error) => e);
    const [metric2, a2, b2] = [await staleMetric(c, 0), await counters(c, 0), await counters(c, 1)];
    if (a2.leasesLost !== a.leasesLost && attempt < 3) continue;
    assert.is(a2.leasesLost, a.leasesLost, 'node 1 wrote before it renewed (three attempts)');

    assert.not.instance(updated, Error, `node 1's call went through node 2: ${(updated as Error).message}`);
    assert.equal([(updated as Task).title, (updated as Task).version], ['after takeover', 2]);
    assert.is(a2.staleWritesRejected - a.staleWritesRejected, 1, 'node 1 wrote once with its old epoch and was refused');
    assert.is(metric2 - metric, 1, 'troupe_stale_writes_rejected_total{kind="task"} counts it');
    assert.ok(a2.forwarded > a.forwarded && b2.served > b.served, 'the call went on to node 2');
    assert.equal(c.holders(stream), [1], 'node 1 dropped the task; node 2 holds it');
    assert.equal(await stored(c, stream), [
      [1, 'task.create', 'original'],
      [2, 'task.update', 'after takeover'],
    ]);
    assert.is((await c.nodes[0]!.store.streamInfo(stream)).epoch, epoch, 'the write was stored under node 2\'s epoch');
    return;
  }
});

test('node 1, finding at its renewal that node 2 took its lease, leaves the owner note to node 2: calls through node 1 reach node 2 at once', async (ctx) => {
  const { c } = ctx;
  const { tenant, t, stream } = await heldTask(ctx);
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const lost = (await counters(c, 0)).leasesLost;
  await takeover(c, tenant, t, stream);
  assert.is(await ownerNote(c, stream), 'n2');
  await waitFor(async () => (await counters(c, 0)).leasesLost > lost, { timeoutMs: 2 * LEASE_MS });
  assert.not.ok(c.nodes[0]!.server.host.isActive(stream), 'node 1 dropped the task');
  const note = await ownerNote(c, stream);
  const updated = await lead.call('task.update', { taskId: t.id, title: 'routed' }).catch((e: Error) => e);
  assert.not.instance(updated, Error, `the call through node 1 did not reach node 2 (owner note: ${note}): ${(updated as Error).message}`);
  assert.equal([(updated as Task).title, (updated as Task).version], ['routed', 2]);
  assert.is(note, 'n2', 'the owner note names the node that holds the lease');
  assert.equal(c.holders(stream), [1]);
});

test('an epoch claimed in the store behind node 1\'s back fences its next write: refused by the store and counted, nothing of it stored, and the write then goes through once under a newer epoch', async (ctx) => {
  const { c } = ctx;
  const { tenant, t, stream } = await heldTask(ctx);
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const eye = await c.client(1, tenant, 'eye', ['observer']);
  const claimed = await c.nodes[1]!.store.claimEpoch(stream, tenant, 'task', t.id);
  assert.ok(claimed > 1);

  const [metric, a] = [await staleMetric(c, 0), await counters(c, 0)];
  let first: Task | null = null;
  try {
    first = await lead.call('task.update', { taskId: t.id, title: 'fenced write' });
  } catch (e) {
    const err = await refusal(Promise.reject(e), ErrorCodes.UNAVAILABLE);
    assert.ok(typeof err.data.retryAfterMs === 'number' && err.data.retryAfterMs > 0, `a retry hint: ${JSON.stringify(err.data)}`);
  }
  const [metric2, a2] = [await staleMetric(c, 0), await counters(c, 0)];
  assert.ok(a2.staleWritesRejected > a.staleWritesRejected, 'node 1\'s write under the old epoch was refused and counted');
  assert.is(metric2 - metric, a2.staleWritesRejected - a.staleWritesRejected, 'the metric counts each refused write');
  if (first) {
    // Node 1 gave up the epoch the store refused, took the lease again with a newer one, and wrote once.
    assert.equal([first.title, first.version], ['fenced write', 2]);
    assert.is(a2.staleWritesRejected - a.staleWritesRejected, 1, 'one write under the old epoch');
    assert.equal(await stored(c, stream), [[1, 'task.create', 'original'], [2, 'task.update', 'fenced write']]);
    assert.ok((await c.nodes[0]!.store.streamInfo(stream)).epoch > claimed, 'stored under an epoch above the one claimed');
    assert.equal(c.holders(stream), [0]);
  } else {
    assert.equal(await stored(c, stream), [[1, 'task.create', 'original']], 'nothing of the refused write was stored');
    assert.equal(await eye.call('task.get', { taskId: t.id }), t, 'the task is unchanged');
    // The refusal says to retry: a retry within a lease must go through (under an epoch the store accepts).
    const retried = await whenAvailable(() => lead.call('task.update', { taskId: t.id, title: 'fenced write' }), LEASE_MS).catch(async (e: Error) => {
      const fenced = (await counters(c, 0)).staleWritesRejected - a.staleWritesRejected;
      throw new Error(`every retry on node 1 was fenced again (${fenced} stale writes): it keeps writing with the epoch the store refused; last error: ${e.message}`);
    });
    assert.equal([retried.value.title, retried.value.version], ['fenced write', 2]);
    assert.equal(await stored(c, stream), [[1, 'task.create', 'original'], [2, 'task.update', 'fenced write']]);
  }
  assert.ok((await c.nodes[0]!.store.streamInfo(stream)).epoch >= claimed);
});

test('with a majority of the lock instances gone, node 1 cannot renew and drops the actor; once they are back the next calls work', async (ctx) => {
  const { c } = ctx;
  const { tenant, t, stream } = await heldTask(ctx);
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const lost = (await counters(c, 0)).leasesLost;
  await c.redis[1]!.stop();
  await c.redis[2]!.stop();
  try {
    await waitFor(() => !c.nodes[0]!.server.host.isActive(stream), { timeoutMs: 2 * LEASE_MS });
    assert.ok((await counters(c, 0)).leasesLost > lost, 'counted as a lost lease');
    const e = await refusal(lead.call('task.update', { taskId: t.id, title: 'no lease' }), ErrorCodes.UNAVAILABLE);
    assert.ok(typeof e.data.retryAfterMs === 'number', 'with a retry hint');
  } finally {
    await c.redis[1]!.restart();
    await c.redis[2]!.restart();
  }
  const r = await whenAvailable(() => lead.call('task.update', { taskId: t.id, title: 'back' }), 3 * LEASE_MS);
  assert.equal([r.value.title, r.value.version], ['back', 2]);
  assert.equal(c.holders(stream), [0]);
});

test('with a majority of the lock instances paused (no answers, connections open), node 1 drops the actor within its lease; after they resume calls work again', async (ctx) => {
  const { c } = ctx;
  const { tenant, t, stream } = await heldTask(ctx);
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  c.redis[1]!.pause();
  c.redis[2]!.pause();
  try {
    await waitFor(() => !c.nodes[0]!.server.host.isActive(stream), { timeoutMs: 2 * LEASE_MS }).catch(() => {
      throw new Error(`node 1 still holds ${stream} ${2 * LEASE_MS} ms after its lease could last be renewed (lease ${LEASE_MS} ms)`);
    });
    // Nobody can take the lease now: the call is refused with a hint rather than left hanging.
    const patient = await connect(c.nodes[0]!.url, { token: await c.key(tenant, 'lead', ['admin']), reconnect: false, callTimeoutMs: 3 * LEASE_MS });
    try {
      const e = await refusal(patient.call('task.update', { taskId: t.id, title: 'no lease' }));
      assert.is(e.reason, 'UNAVAILABLE', `refused at once, not left waiting: ${e.message}`);
    } finally {
      await patient.close();
    }
  } finally {
    c.redis[1]!.resume();
    c.redis[2]!.resume();
  }
  // The lost lease's keys may outlive the pause by up to a lease: until then calls are refused with a hint.
  const after = await whenAvailable(() => lead.call('task.update', { taskId: t.id, title: 'back' }), 2 * LEASE_MS);
  assert.equal([after.value.title, after.value.version], ['back', 2]);
  assert.equal(c.holders(stream), [0]);
});

test.run();

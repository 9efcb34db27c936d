import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ErrorCodes } from '../../protocol/errors.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ c: InProcessCluster }>('cluster: quotas and rate limits hold across nodes');

test.before(async (ctx) => {
  // Rate limits count in the shared Redis (the same one the cluster uses).
  ctx.c = await startCluster(2);
});

test.after(async (ctx) => {
  await ctx.c.close();
});

test('concurrent creates on two nodes together stay within the tenant task quota', async ({ c }) => {
  const admin = await c.client(0, 'q1', 'boss', ['admin']);
  await admin.call('quota.set', { limits: { tasks: 10 } });
  const a = await c.client(0, 'q1', 'a', ['admin']);
  const b = await c.client(1, 'q1', 'b', ['admin']);
  // Both nodes know the limit before the race starts.
  await waitFor(async () => ((await b.call('quota.get', {})) as { limits: { tasks: number | null } }).limits.tasks === 10);
  const attempts = [...Array.from({ length: 12 }, (_, i) => a.call('task.create', { type: 'q', title: `a${i}` })), ...Array.from({ length: 12 }, (_, i) => b.call('task.create', { type: 'q', title: `b${i}` }))];
  const results = await Promise.allSettled(attempts);
  const created = results.filter((r) => r.status === 'fulfilled').length;
  const refused = results.filter((r) => r.status === 'rejected');
  for (const r of refused) assert.is(((r as PromiseRejectedResult).reason as { code: number }).code, ErrorCodes.QUOTA_EXCEEDED);
  assert.is(created, 10, 'exactly the limit was created across both nodes');
  const stats = (await admin.call('task.stats', {})) as { total: number };
  assert.is(stats.total, 10, 'the store holds exactly the limit');
});

test('a rate limit set for a principal counts its calls on every node together', async ({ c }) => {
  const admin = await c.client(0, 'r1', 'boss', ['admin']);
  await admin.call('ratelimit.set', { class: 'task:create', scope: 'principal', points: 4, durationSeconds: 60 });
  const on0 = await c.client(0, 'r1', 'lead', ['admin']);
  const on1 = await c.client(1, 'r1', 'lead', ['admin']);
  await waitFor(async () => {
    const s = (await on1.call('ratelimit.status', {})) as { classes?: unknown };
    return JSON.stringify(s).includes('task:create');
  });
  const results = await Promise.allSettled([0, 1, 2, 3, 4, 5].map((i) => (i % 2 ? on1 : on0).call('task.create', { type: 'r', title: `t${i}` })));
  const ok = results.filter((r) => r.status === 'fulfilled').length;
  assert.is(ok, 4, 'four calls in the window across both nodes');
  for (const r of results.filter((x) => x.status === 'rejected')) assert.is(((r as PromiseRejectedResult).reason as { code: number }).code, ErrorCodes.RATE_LIMITED);
});

test.run();

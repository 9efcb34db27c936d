import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import type { Task } from '../../protocol/model.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ c: InProcessCluster; n: number }>('cluster: assignment decided on several nodes at once');

test.before(async (ctx) => {
  ctx.c = await startCluster(2);
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.c.close();
});

/** A tenant with one agent (connected to node 2) and a lead on each node. */
async function tenantWith(ctx: { c: InProcessCluster; n: number }, maxConcurrentTasks: number) {
  const tenant = `slots${++ctx.n}`;
  const agent = await ctx.c.client(1, tenant, 'solo', ['agent']);
  await agent.call('agent.register', { capabilities: ['go'], maxConcurrentTasks });
  const leads = [await ctx.c.client(0, tenant, 'lead', ['admin']), await ctx.c.client(1, tenant, 'lead', ['admin'])] as const;
  return { agent, leads };
}

/** Creates auto-assigned tasks through both nodes at once. */
function createMany(leads: readonly TroupeClient[], n: number): Promise<Task[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => leads[i % leads.length]!.call('task.create', { type: 'go', title: `t${i}`, autoAssign: true, requiredCapabilities: ['go'] })));
}

test('tasks created on two nodes at the same moment never offer an agent more than its limit', async (ctx) => {
  for (const max of [1, 2]) {
    for (let round = 0; round < 3; round++) {
      const { leads } = await tenantWith(ctx, max);
      const created = await createMany(leads, 10);
      // Each create assigns in its own turn: once every task is either offered or waiting, the
      // decisions are all made.
      const tasks = await waitFor(async () => {
        const now = await Promise.all(created.map((t) => leads[0].call('task.get', { taskId: t.id })));
        return now.filter((t) => t.status === 'assigned').length === max && now.filter((t) => t.status === 'pending' && t.waitingForAgent).length === 10 - max ? now : null;
      }, { timeoutMs: 15_000 }).catch(async () => Promise.all(created.map((t) => leads[0].call('task.get', { taskId: t.id }))));
      const offered = tasks.filter((t) => t.assignedTo === 'solo');
      assert.is(offered.length, max, `limit ${max}, round ${round}: ${offered.length} offered (${tasks.map((t) => t.status).join(', ')})`);
    }
  }
});

test('a slot freed by finishing a task is offered again at once, through either node', async (ctx) => {
  const { agent, leads } = await tenantWith(ctx, 1);
  const created = await createMany(leads, 6);
  const done: string[] = [];
  // The agent works through everything offered to it, one task at a time.
  for (let i = 0; i < created.length; i++) {
    const next = await waitFor(async () => (await agent.call('task.search', { assignedTo: 'solo', status: ['assigned'] })).items[0] ?? null);
    await agent.call('task.accept', { taskId: next.id });
    await agent.call('task.start', { taskId: next.id });
    await agent.call('task.complete', { taskId: next.id, result: { i } });
    done.push(next.id);
  }
  assert.equal([...done].sort(), created.map((t) => t.id).sort(), 'every task was offered, one after another');
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Task } from '../../protocol/model.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';

const test = suite<{ c: InProcessCluster }>('cluster routing: one system across nodes');

test.before(async (ctx) => {
  ctx.c = await startCluster(2);
});

test.after(async (ctx) => {
  await ctx.c.close();
});

test('a task created on one node is read and moved through its lifecycle from another', async ({ c }) => {
  const lead = await c.client(0, 'acme', 'lead', ['admin']);
  const w1 = await c.client(1, 'acme', 'w1', ['agent']);
  await w1.call('agent.register', { capabilities: ['review'] });
  const t = (await lead.call('task.create', { type: 'review', title: 'Review PR 7', assignTo: 'w1' })) as Task;
  const seen = (await w1.call('task.get', { taskId: t.id })) as Task;
  assert.is(seen.id, t.id);
  await w1.call('task.accept', { taskId: t.id });
  await w1.call('task.start', { taskId: t.id });
  const done = (await w1.call('task.complete', { taskId: t.id, result: { ok: true } })) as Task;
  assert.is(done.status, 'completed');
  const owner = c.nodes.filter((n) => n.server.host.isActive(`acme/task/${t.id}`));
  assert.ok(owner.length <= 1, 'at most one node holds the task');
  const view = c.nodes[0]!.server.cluster!;
  const counters = (await view.view()).counters;
  const other = (await c.nodes[1]!.server.cluster!.view()).counters;
  assert.ok(counters.forwarded + other.forwarded > 0, 'some calls were forwarded');
});

test.run();

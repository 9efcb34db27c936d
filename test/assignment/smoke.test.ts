import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ ts: TestServer }>('smoke: assignment');
test.before(async (ctx) => {
  ctx.ts = await startServer({});
});
test.after(async (ctx) => ctx.ts.close());

test('auto-assign, lease failover, distributed', async (ctx) => {
  const lead = await ctx.ts.client('s', 'lead', ['admin']);
  const a = await ctx.ts.client('s', 'a1', ['agent']);
  const b = await ctx.ts.client('s', 'a2', ['agent']);
  await a.call('agent.register', { capabilities: ['go'], maxConcurrentTasks: 2 });
  await b.call('agent.register', { capabilities: ['go', 'py'], maxConcurrentTasks: 2 });
  const t = await lead.call('task.create', { type: 'x', title: 'py job', requiredCapabilities: ['py'], autoAssign: true, leaseSeconds: 1 });
  const assigned = await waitFor(async () => {
    const x = await lead.call('task.get', { taskId: t.id });
    return x.assignedTo ? x : null;
  });
  console.log('assigned', assigned.assignedTo, assigned.delegations.at(-1));
  const tl = await lead.call('task.timeline', { taskId: t.id });
  console.log(tl.items.map((e) => `${e.type} ${e.status} ${JSON.stringify(e.data.reason ?? '')}`));
  const d = await lead.call('task.createDistributed', {
    type: 'vote', title: 'vote', coordination: 'parallel', completion: { mode: 'majority' }, aggregation: 'majority_vote',
    subtasks: [{ title: 's1' }, { title: 's2' }, { title: 's3' }],
  });
  console.log('dist', d.task.status, d.subtasks.map((s) => s.status));
  const subs = await waitFor(async () => {
    const tree = await lead.call('task.tree', { taskId: d.task.id });
    const kids = tree.children.map((c) => c.task as { id: string; assignedTo?: string | null; status: string });
    return kids.every((k) => k.assignedTo) ? kids : null;
  });
  console.log(subs.map((s) => `${s.id} ${s.status} ${s.assignedTo}`));
  for (const s of subs.slice(0, 2)) {
    const who = s.assignedTo === 'a1' ? a : b;
    await who.call('task.submitSubtaskResult', { parentTaskId: d.task.id, subtaskId: s.id, result: { answer: 42 } });
  }
  const parent = await waitFor(async () => {
    const x = await lead.call('task.get', { taskId: d.task.id });
    return x.status === 'completed' ? x : null;
  });
  console.log('parent', parent.status, JSON.stringify(parent.result));
  await waitFor(async () => (await lead.call('task.get', { taskId: subs[2]!.id })).status === 'cancelled');
  const c = await ctx.ts.client('s', 'a3', ['agent']);
  await c.call('agent.register', { capabilities: ['py'] });
  await b.call('task.accept', { taskId: t.id });
  const t0 = Date.now();
  await b.close();
  const moved = await waitFor(async () => {
    const x = await lead.call('task.get', { taskId: t.id });
    return x.assignedTo === 'a3' ? x : null;
  }, { timeoutMs: 8000 });
  console.log('failover after', Date.now() - t0, moved.delegations.at(-1), moved.rejections);
  assert.ok(true);
});
test.run();

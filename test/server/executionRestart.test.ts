import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type TroupeClient } from '../../protocol/client.js';
import type { Task } from '../../protocol/model.js';
import type { Execution } from '../../protocol/workflows.js';
import { Authenticator } from '../../src/auth/Authenticator.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { doWork, executionSettled, executionWhen, failWork, startWork, stepTask } from '../helpers/executions.js';
import { startServerProcess, type ServerProcess } from '../helpers/node.js';
import { tempDir } from '../helpers/server.js';
import { offered, taskWhen } from '../helpers/work.js';

interface Ctx {
  dir: string;
  remove: () => void;
  nodes: ServerProcess[];
  clients: TroupeClient[];
}

/** Server timestamps and this process's clock come from the same machine. */
const SLACK_MS = 25;

const test = suite<Ctx>('execution restart: a run goes on after the server restarts, its timers still fire, and nothing acknowledged runs twice');

test.before.each((ctx) => {
  const t = tempDir('troupe-exec-restart-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
  ctx.nodes = [];
  ctx.clients = [];
});

test.after.each(async (ctx) => {
  await Promise.all(ctx.clients.map((c) => c.close()));
  await Promise.all(ctx.nodes.map((n) => n.kill()));
  ctx.remove();
});

/** The bootstrap admin's key and a key for agent `w` of tenant `default`, written into the store beside the server. */
async function keys(dir: string): Promise<{ admin: string; w: string }> {
  const admin = fs.readFileSync(path.join(dir, 'admin.key'), 'utf8').trim();
  const side = new SqliteStore({ path: path.join(dir, 'troupe.db') });
  const w = (await new Authenticator({ store: side }).createKey({ tenant: 'default', principal: 'w', roles: ['agent'] })).key;
  await side.close();
  return { admin, w };
}

async function clientsOn(ctx: Ctx, node: ServerProcess, k: { admin: string; w: string }): Promise<{ admin: TroupeClient; agents: Record<string, TroupeClient> }> {
  const admin = await connect(node.url, { token: k.admin, reconnect: false });
  const w = await connect(node.url, { token: k.w, reconnect: false });
  ctx.clients.push(admin, w);
  await w.call('agent.register', { maxConcurrentTasks: 10 });
  return { admin, agents: { w } };
}

/** Every task of the tenant, by id. */
async function taskIds(c: TroupeClient): Promise<string[]> {
  return (await c.call('task.search', { archived: 'any', limit: 1000 })).items.map((t: Task) => t.id).sort();
}

/** How often each step attempt was started, according to the trace. */
function startsOf(x: Execution): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of x.trace) if (e.event === 'step.started') out[`${e.stepId}.${e.attempt}`] = (out[`${e.stepId}.${e.attempt}`] ?? 0) + 1;
  return out;
}

const stepOf = (x: Execution, id: string) => x.steps.find((s) => s.id === id)!;

test('after a graceful restart the run continues, the retry timer set before it fires after it, and completed steps are not offered again', async (ctx) => {
  const first = await startServerProcess(ctx.dir);
  ctx.nodes.push(first);
  const k = await keys(ctx.dir);
  const one = await clientsOn(ctx, first, k);
  const wf = await one.admin.call('workflow.create', {
    name: 'nightly',
    type: 'sequential',
    steps: [
      { id: 'extract', action: 'extract', agent: 'w' },
      { id: 'load', action: 'load', agent: 'w', retryPolicy: { maxAttempts: 2, backoff: 'linear', initialWaitMs: 3_000 } },
      { id: 'report', action: 'report', agent: 'w', input: { rows: '${steps.load.output.rows}', from: '${steps.extract.output}' } },
    ],
  });
  const x = await one.admin.call('workflow.execute', { workflowId: wf.id, input: { day: '2025-01-01' } });
  const extract = await doWork(one.admin, one.agents, stepTask(x.id, 'extract'), 'file-1');
  await failWork(one.admin, one.agents, stepTask(x.id, 'load', 1), 'database busy');
  const retrying = await executionWhen(one.admin, x.id, (v) => stepOf(v, 'load').status === 'retrying');
  const dueAt = Date.parse(stepOf(retrying, 'load').dueAt!);

  first.child.kill('SIGTERM');
  assert.is((await first.exited).code, 0, 'a graceful stop');
  await Promise.all(ctx.clients.splice(0).map((c) => c.close()));

  const second = await startServerProcess(ctx.dir);
  ctx.nodes.push(second);
  const restartedAt = Date.now();
  const two = await clientsOn(ctx, second, k);
  const after = await two.admin.call('execution.get', { executionId: x.id });
  assert.equal([after.status, stepOf(after, 'extract').status, stepOf(after, 'extract').output], ['running', 'completed', 'file-1']);
  assert.ok(['retrying', 'queued', 'running'].includes(stepOf(after, 'load').status), stepOf(after, 'load').status);
  if (Date.now() + SLACK_MS < dueAt) {
    // Still waiting: the retry has not run early.
    assert.is(stepOf(after, 'load').status, 'retrying');
  }

  const load2 = await offered(two.admin, stepTask(x.id, 'load', 2), 10_000);
  assert.ok(Date.parse(load2.createdAt) >= dueAt - SLACK_MS, `the retry ran ${dueAt - Date.parse(load2.createdAt)} ms early`);
  assert.ok(Date.parse(load2.createdAt) >= restartedAt - 5_000, 'created by the second server');
  await two.agents.w!.call('task.accept', { taskId: load2.id });
  await two.agents.w!.call('task.start', { taskId: load2.id });
  await two.agents.w!.call('task.complete', { taskId: load2.id, result: { rows: 1200 } });
  const report = await doWork(two.admin, two.agents, stepTask(x.id, 'report'), 'mailed');
  assert.equal(report.parameters, { rows: 1200, from: 'file-1' });

  const done = await executionSettled(two.admin, x.id);
  assert.equal([done.status, done.output], ['completed', { extract: 'file-1', load: { rows: 1200 }, report: 'mailed' }]);
  assert.equal(startsOf(done), { 'extract.1': 1, 'load.1': 1, 'load.2': 1, 'report.1': 1 });
  assert.equal(await taskIds(two.admin), [stepTask(x.id, 'extract'), stepTask(x.id, 'load', 1), stepTask(x.id, 'load', 2), stepTask(x.id, 'report')].sort());
  const extractNow = await two.admin.call('task.get', { taskId: extract.id });
  assert.equal([extractNow.status, extractNow.delegations.length, extractNow.result], ['completed', 1, 'file-1'], 'never offered again');
});

test('after SIGKILL the run continues: a step in progress finishes, a pending retry fires, a dispatch cut short is made once, and no task runs twice', async (ctx) => {
  const first = await startServerProcess(ctx.dir);
  ctx.nodes.push(first);
  const k = await keys(ctx.dir);
  const one = await clientsOn(ctx, first, k);
  const wf = await one.admin.call('workflow.create', {
    name: 'fanout',
    type: 'parallel',
    steps: [
      { id: 'flaky', action: 'flaky', agent: 'w', retryPolicy: { maxAttempts: 2, initialWaitMs: 2_500 } },
      { id: 'long', action: 'long', agent: 'w' },
      { id: 'quick', action: 'quick', agent: 'w' },
      { id: 'next', action: 'next', agent: 'w', dependsOn: ['quick'], input: { q: '${steps.quick.output}' } },
      { id: 'join', action: 'join', agent: 'w', dependsOn: ['flaky', 'long', 'next'] },
    ],
  });
  const x = await one.admin.call('workflow.execute', { workflowId: wf.id });
  await failWork(one.admin, one.agents, stepTask(x.id, 'flaky', 1), 'flaked');
  await startWork(one.admin, one.agents, stepTask(x.id, 'long'));
  const { agent } = await startWork(one.admin, one.agents, stepTask(x.id, 'quick'));
  await executionWhen(one.admin, x.id, (v) => stepOf(v, 'flaky').status === 'retrying' && stepOf(v, 'long').status === 'running');
  // The last acknowledged change queues `next`; the process dies before or while it is dispatched.
  const acked = await agent.call('task.complete', { taskId: stepTask(x.id, 'quick'), result: 'Q' });
  assert.is(acked.status, 'completed');
  first.child.kill('SIGKILL');
  assert.is((await first.exited).signal, 'SIGKILL');
  await Promise.all(ctx.clients.splice(0).map((c) => c.close()));

  const second = await startServerProcess(ctx.dir);
  ctx.nodes.push(second);
  const two = await clientsOn(ctx, second, k);
  const w = two.agents.w!;
  // The acknowledged completion is there, and `next` is offered exactly once.
  const quick = await two.admin.call('task.get', { taskId: stepTask(x.id, 'quick') });
  assert.equal([quick.status, quick.result], ['completed', 'Q']);
  const next = await doWork(two.admin, two.agents, stepTask(x.id, 'next'), 'N', 10_000);
  assert.equal(next.parameters, { q: 'Q' });
  // The step in progress is still held by w, who finishes it.
  const long = await taskWhen(two.admin, stepTask(x.id, 'long'), (v) => v.status === 'in_progress' && v.assignedTo === 'w');
  await w.call('task.complete', { taskId: long.id, result: 'L' });
  // The retry fires after the restart.
  const flaky2 = await offered(two.admin, stepTask(x.id, 'flaky', 2), 10_000);
  await w.call('task.accept', { taskId: flaky2.id });
  await w.call('task.start', { taskId: flaky2.id });
  await w.call('task.complete', { taskId: flaky2.id, result: 'F' });
  await doWork(two.admin, two.agents, stepTask(x.id, 'join'), 'J', 10_000);

  const done = await executionSettled(two.admin, x.id);
  assert.equal([done.status, done.output], ['completed', { flaky: 'F', long: 'L', quick: 'Q', next: 'N', join: 'J' }]);
  assert.equal(startsOf(done), { 'flaky.1': 1, 'flaky.2': 1, 'long.1': 1, 'quick.1': 1, 'next.1': 1, 'join.1': 1 });
  assert.equal(
    await taskIds(two.admin),
    [stepTask(x.id, 'flaky', 1), stepTask(x.id, 'flaky', 2), stepTask(x.id, 'long'), stepTask(x.id, 'quick'), stepTask(x.id, 'next'), stepTask(x.id, 'join')].sort(),
  );
  assert.equal(done.steps.map((s) => [s.id, s.attempt]), [['flaky', 2], ['long', 1], ['quick', 1], ['next', 1], ['join', 1]]);
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { ParamsOf } from '../../protocol/methods.js';
import type { Execution, Workflow } from '../../protocol/workflows.js';
import { refusal } from '../helpers/errors.js';
import { compensationTask, doWork, executionSettled, executionWhen, failWork, startWork, stepTask } from '../helpers/executions.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { offered, registerAgents, taskWhen } from '../helpers/work.js';

interface Ctx {
  ts: TestServer;
  n: number;
}

interface Team {
  tenant: string;
  /** Admin; creates the workflows and runs them. */
  lead: TroupeClient;
  /** Observer: reads only. */
  eye: TroupeClient;
  /** Agents w1, w2, w3 (room for ten tasks each). */
  ag: Record<string, TroupeClient>;
}

type Definition = ParamsOf<'workflow.create'>;

const test = suite<Ctx>('executions: workflows run over real connections, step by step, as tasks of real agents');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function team(ctx: Ctx): Promise<Team> {
  const tenant = `ex${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['admin']);
  const eye = await ctx.ts.client(tenant, 'eye', ['observer']);
  const ag = await registerAgents(ctx.ts, tenant, { w1: { maxConcurrentTasks: 10 }, w2: { maxConcurrentTasks: 10 }, w3: { maxConcurrentTasks: 10 } });
  return { tenant, lead, eye, ag };
}

async function run(t: Team, def: Definition, input: Record<string, unknown> = {}): Promise<{ wf: Workflow; x: Execution }> {
  const wf = await t.lead.call('workflow.create', def);
  const x = await t.lead.call('workflow.execute', { workflowId: wf.id, input });
  return { wf, x };
}

const status = (x: Execution) => Object.fromEntries(x.steps.map((s) => [s.id, s.status]));
const stepOf = (x: Execution, id: string) => x.steps.find((s) => s.id === id)!;
const traceLines = (x: Execution) => x.trace.map((e) => [e.event, e.stepId ?? '-', e.attempt ?? '-'].join(' '));

/** A task does not exist (yet): task.get answers NOT_FOUND. */
async function absent(c: TroupeClient, taskId: string): Promise<void> {
  await refusal(c.call('task.get', { taskId }), ErrorCodes.NOT_FOUND);
}

test('a sequential run: each step is a task for its agent, outputs flow into later inputs, and the execution completes with every output', async (ctx) => {
  const t = await team(ctx);
  const { wf, x } = await run(
    t,
    {
      name: 'ship',
      type: 'sequential',
      steps: [
        { id: 'fetch', name: 'Fetch sources', action: 'git.fetch', agent: 'w1', input: { repo: '${input.repo}', depth: 1 } },
        { id: 'build', action: 'build', agent: 'w2', input: { commit: '${steps.fetch.output.commit}', tag: '${"v-" + steps.fetch.output.commit}' } },
        { id: 'publish', action: 'publish', agent: 'w3', input: { artifact: '${steps.build.output.artifact}', meta: { from: '${steps.fetch.agent}' } } },
      ],
    },
    { repo: 'github.com/acme/api' },
  );
  assert.equal([x.status, x.workflowId, x.workflowVersion, x.workflowName, x.createdBy, x.input], ['running', wf.id, 1, 'ship', 'lead', { repo: 'github.com/acme/api' }]);
  assert.equal(status(x), { fetch: 'queued', build: 'pending', publish: 'pending' });

  const fetch = await doWork(t.lead, t.ag, stepTask(x.id, 'fetch'), { commit: 'abc123' });
  assert.equal([fetch.type, fetch.title, fetch.assignedTo, fetch.parameters, fetch.createdBy], ['git.fetch', 'ship: Fetch sources', 'w1', { repo: 'github.com/acme/api', depth: 1 }, 'lead']);
  assert.equal(fetch.origin, { executionId: x.id, stepId: 'fetch', attempt: 1, role: 'step' });
  await absent(t.lead, stepTask(x.id, 'publish'));

  const build = await doWork(t.lead, t.ag, stepTask(x.id, 'build'), { artifact: 'api-abc123.tgz' });
  assert.equal([build.type, build.title, build.assignedTo, build.parameters], ['build', 'ship: build', 'w2', { commit: 'abc123', tag: 'v-abc123' }]);
  const publish = await doWork(t.lead, t.ag, stepTask(x.id, 'publish'), { url: 'https://cdn/api-abc123.tgz' });
  assert.equal([publish.assignedTo, publish.parameters], ['w3', { artifact: 'api-abc123.tgz', meta: { from: 'w1' } }]);

  const done = await executionSettled(t.lead, x.id);
  assert.is(done.status, 'completed');
  assert.equal(done.output, { fetch: { commit: 'abc123' }, build: { artifact: 'api-abc123.tgz' }, publish: { url: 'https://cdn/api-abc123.tgz' } });
  assert.equal(done.completionOrder, ['fetch', 'build', 'publish']);
  assert.equal(done.steps.map((s) => [s.id, s.status, s.attempt, s.taskId, s.agent]), [
    ['fetch', 'completed', 1, stepTask(x.id, 'fetch'), 'w1'],
    ['build', 'completed', 1, stepTask(x.id, 'build'), 'w2'],
    ['publish', 'completed', 1, stepTask(x.id, 'publish'), 'w3'],
  ]);
  assert.equal(stepOf(done, 'build').input, { commit: 'abc123', tag: 'v-abc123' });
  assert.ok(done.completedAt);
  assert.equal(traceLines(done), [
    'execution.started - -',
    'step.started fetch 1',
    'step.completed fetch 1',
    'step.started build 1',
    'step.completed build 1',
    'step.started publish 1',
    'step.completed publish 1',
    'execution.completed - -',
  ]);
  // Observers read; the trace method gives the same lines.
  assert.equal((await t.eye.call('execution.trace', { executionId: x.id })).items, done.trace);
  assert.equal(await t.eye.call('execution.get', { executionId: x.id }), done);
});

test('a workflow that asks for a shared workspace gets one per execution: the executor owns it, named agents edit it, step tasks know it', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'together',
    type: 'sequential',
    config: { workspace: true },
    steps: [
      { id: 'draft', action: 'draft', agent: 'w1', input: { topic: '${input.topic}' } },
      { id: 'review', action: 'review', agent: 'w2' },
    ],
  }, { topic: 'launch' });
  assert.ok(x.workspaceId, 'the execution names its workspace');
  const ws = await t.lead.call('workspace.get', { workspaceId: x.workspaceId! });
  assert.equal([ws.type, ws.visibility, ws.settings], ['execution', 'team', { executionId: x.id }]);
  const members = (await t.lead.call('workspace.listMembers', { workspaceId: x.workspaceId! })).items.map((m: { principalId: string; role: string }) => `${m.principalId}:${m.role}`).sort();
  assert.equal(members, ['lead:owner', 'w1:editor', 'w2:editor']);
  const draft = await doWork(t.lead, t.ag, stepTask(x.id, 'draft'), { text: 'v1' });
  assert.equal(draft.parameters, { topic: 'launch', workspaceId: x.workspaceId });
  // The step's agent may write to it.
  await t.ag.w1!.call('workspace.updateState', { workspaceId: x.workspaceId!, ops: [{ op: 'set', path: '/draft', value: 'v1' }] });
  const state = await t.lead.call('workspace.getState', { workspaceId: x.workspaceId! });
  assert.equal(state.state, { draft: 'v1' });
  // Without config.workspace there is none.
  const plain = await run(t, { name: 'alone', type: 'sequential', steps: [{ id: 'a', action: 'a', agent: 'w1' }] });
  assert.is(plain.x.workspaceId, null);
});

test('a parallel diamond: both middle steps are offered at once, and the last only after both completed', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'diamond',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'prep', agent: 'w1' },
      { id: 'b', action: 'left', agent: 'w2', dependsOn: ['a'], input: { from: '${steps.a.output}' } },
      { id: 'c', action: 'right', agent: 'w3', dependsOn: ['a'], input: { from: '${steps.a.output}' } },
      { id: 'd', action: 'join', agent: 'w1', dependsOn: ['b', 'c'], input: { l: '${steps.b.output}', r: '${steps.c.output}' } },
    ],
  });
  assert.equal(status(x), { a: 'queued', b: 'pending', c: 'pending', d: 'pending' });
  await doWork(t.lead, t.ag, stepTask(x.id, 'a'), 'A');
  // Both offered before either is done.
  const [b, c] = await Promise.all([offered(t.lead, stepTask(x.id, 'b')), offered(t.lead, stepTask(x.id, 'c'))]);
  assert.equal([b.assignedTo, b.parameters, c.assignedTo, c.parameters], ['w2', { from: 'A' }, 'w3', { from: 'A' }]);
  const both = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'b').status === 'running' && stepOf(v, 'c').status === 'running');
  const started = both.trace.filter((e) => e.event === 'step.started' && (e.stepId === 'b' || e.stepId === 'c'));
  assert.is(started.length, 2);
  assert.is(started[0]!.at, started[1]!.at, 'one dispatch started both');

  await t.ag.w3!.call('task.accept', { taskId: c.id });
  await t.ag.w3!.call('task.start', { taskId: c.id });
  await t.ag.w3!.call('task.complete', { taskId: c.id, result: 'C' });
  const half = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'c').status === 'completed');
  assert.equal(status(half), { a: 'completed', b: 'running', c: 'completed', d: 'pending' });
  await absent(t.lead, stepTask(x.id, 'd'));

  await t.ag.w2!.call('task.accept', { taskId: b.id });
  await t.ag.w2!.call('task.start', { taskId: b.id });
  await t.ag.w2!.call('task.complete', { taskId: b.id, result: 'B' });
  const d = await doWork(t.lead, t.ag, stepTask(x.id, 'd'), 'D');
  assert.equal(d.parameters, { l: 'B', r: 'C' });
  const done = await executionSettled(t.lead, x.id);
  assert.is(done.status, 'completed');
  assert.equal(done.completionOrder, ['a', 'c', 'b', 'd']);
});

test('a conditional branch: a step whose condition is false is skipped, one whose condition is true runs, and their join still runs', async (ctx) => {
  const t = await team(ctx);
  const def: Definition = {
    name: 'triage',
    type: 'conditional',
    steps: [
      { id: 'check', action: 'check', agent: 'w1' },
      { id: 'fix', action: 'fix', agent: 'w2', dependsOn: ['check'], when: 'steps.check.output.broken' },
      { id: 'notify', action: 'notify', agent: 'w3', dependsOn: ['check'], when: '!steps.check.output.broken && input.env == "prod"' },
      { id: 'report', action: 'report', agent: 'w1', dependsOn: ['fix', 'notify'], input: { fixed: '${steps.fix.status}', notified: '${steps.notify.status}' } },
    ],
  };
  const { wf, x } = await run(t, def, { env: 'prod' });
  await doWork(t.lead, t.ag, stepTask(x.id, 'check'), { broken: true });
  await doWork(t.lead, t.ag, stepTask(x.id, 'fix'), 'patched');
  const report = await doWork(t.lead, t.ag, stepTask(x.id, 'report'), 'sent');
  assert.equal(report.parameters, { fixed: 'completed', notified: 'skipped' });
  const done = await executionSettled(t.lead, x.id);
  assert.equal([done.status, status(done)], ['completed', { check: 'completed', fix: 'completed', notify: 'skipped', report: 'completed' }]);
  const skip = done.trace.find((e) => e.event === 'step.skipped')!;
  assert.equal([skip.stepId, skip.detail], ['notify', 'its condition `!steps.check.output.broken && input.env == "prod"` is false']);
  await absent(t.lead, stepTask(x.id, 'notify'));
  assert.equal(Object.keys(done.output!), ['check', 'fix', 'report']);

  // The other way round.
  const y = await t.lead.call('workflow.execute', { workflowId: wf.id, input: { env: 'prod' } });
  await doWork(t.lead, t.ag, stepTask(y.id, 'check'), { broken: false });
  await doWork(t.lead, t.ag, stepTask(y.id, 'notify'), 'told');
  const report2 = await doWork(t.lead, t.ag, stepTask(y.id, 'report'), 'sent');
  assert.equal(report2.parameters, { fixed: 'skipped', notified: 'completed' });
  const done2 = await executionSettled(t.lead, y.id);
  assert.equal(status(done2), { check: 'completed', fix: 'skipped', notify: 'completed', report: 'completed' });
});

test('a step failing after its retries compensates the three steps before it in reverse order, one at a time, and the execution fails', async (ctx) => {
  const t = await team(ctx);
  const undo = (id: string) => ({ action: `undo-${id}`, agent: 'w3', input: { undo: '${step.output}', was: '${steps.' + id + '.status}' } });
  const { x } = await run(t, {
    name: 'order',
    type: 'sequential',
    steps: [
      { id: 'reserve', action: 'reserve', agent: 'w1', compensate: undo('reserve') },
      { id: 'charge', action: 'charge', agent: 'w1', compensate: undo('charge') },
      { id: 'pack', action: 'pack', agent: 'w1', compensate: undo('pack') },
      { id: 'ship', action: 'ship', agent: 'w2', onFailure: 'compensate', retryPolicy: { maxAttempts: 2, initialWaitMs: 50 } },
    ],
  });
  for (const id of ['reserve', 'charge', 'pack']) await doWork(t.lead, t.ag, stepTask(x.id, id), `${id}-done`);
  await failWork(t.lead, t.ag, stepTask(x.id, 'ship', 1), 'truck broke down');
  const retrying = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'ship').status === 'retrying' || stepOf(v, 'ship').attempt === 2);
  assert.equal(stepOf(retrying, 'ship').error, 'truck broke down');
  await failWork(t.lead, t.ag, stepTask(x.id, 'ship', 2), 'truck broke down again');

  // One compensation at a time, latest first.
  const order: string[] = [];
  for (const id of ['pack', 'charge', 'reserve']) {
    const ct = await offered(t.lead, compensationTask(x.id, id));
    for (const later of ['pack', 'charge', 'reserve'].filter((o) => o !== id && !order.includes(o))) await absent(t.lead, compensationTask(x.id, later));
    assert.equal([ct.type, ct.title, ct.assignedTo, ct.parameters], [`undo-${id}`, `order: undo ${id}`, 'w3', { undo: `${id}-done`, was: 'compensating' }]);
    assert.equal(ct.origin, { executionId: x.id, stepId: id, attempt: 1, role: 'compensation' });
    await t.ag.w3!.call('task.accept', { taskId: ct.id });
    await t.ag.w3!.call('task.start', { taskId: ct.id });
    await t.ag.w3!.call('task.complete', { taskId: ct.id, result: 'undone' });
    order.push(id);
  }
  const done = await executionSettled(t.lead, x.id);
  assert.is(done.status, 'failed');
  assert.is(done.error, 'Step ship failed: truck broke down again');
  assert.equal(status(done), { reserve: 'compensated', charge: 'compensated', pack: 'compensated', ship: 'failed' });
  assert.equal(done.steps.map((s) => s.compensation?.status ?? null), ['completed', 'completed', 'completed', null]);
  assert.equal(traceLines(done).slice(7), [
    'step.started ship 1',
    'step.retrying ship 1',
    'step.started ship 2',
    'step.failed ship 2',
    'execution.compensating - -',
    'compensation.started pack 1',
    'compensation.completed pack 1',
    'compensation.started charge 1',
    'compensation.completed charge 1',
    'compensation.started reserve 1',
    'compensation.completed reserve 1',
    'execution.failed - -',
  ]);
  const undoTasks = await Promise.all(['pack', 'charge', 'reserve'].map((id) => t.lead.call('task.get', { taskId: compensationTask(x.id, id) })));
  const created = undoTasks.map((u) => Date.parse(u.createdAt));
  assert.ok(created[0]! <= created[1]! && created[1]! <= created[2]!, `compensation tasks created in reverse order: ${created}`);
  assert.ok(Date.parse(undoTasks[1]!.createdAt) >= Date.parse(undoTasks[0]!.completedAt!), 'charge undone only after pack was');
  assert.is((await t.lead.call('execution.get', { executionId: x.id })).status, 'failed');
});

test('a compensation that fails for good ends in compensation_failed, and the error names the step', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'pay',
    type: 'sequential',
    steps: [
      { id: 'hold', action: 'hold', agent: 'w1', compensate: { action: 'release', agent: 'w1' } },
      { id: 'charge', action: 'charge', agent: 'w1', compensate: { action: 'refund', agent: 'w2', retryPolicy: { maxAttempts: 2, initialWaitMs: 30 } } },
      { id: 'confirm', action: 'confirm', agent: 'w1', onFailure: 'compensate' },
    ],
  });
  await doWork(t.lead, t.ag, stepTask(x.id, 'hold'), 'held');
  await doWork(t.lead, t.ag, stepTask(x.id, 'charge'), 'charged');
  await failWork(t.lead, t.ag, stepTask(x.id, 'confirm'), 'card declined');
  await failWork(t.lead, t.ag, compensationTask(x.id, 'charge', 1), 'bank offline');
  await failWork(t.lead, t.ag, compensationTask(x.id, 'charge', 2), 'bank still offline');
  await doWork(t.lead, t.ag, compensationTask(x.id, 'hold'), 'released');
  const done = await executionSettled(t.lead, x.id);
  assert.is(done.status, 'compensation_failed');
  assert.is(done.error, 'Step confirm failed: card declined; compensation failed for charge (bank still offline): those effects were not undone and need attention.');
  assert.equal(stepOf(done, 'charge').compensation, { status: 'failed', attempt: 2, taskId: compensationTask(x.id, 'charge', 2), error: 'bank still offline' });
  assert.equal(stepOf(done, 'hold').status, 'compensated');
  assert.equal(traceLines(done).slice(-2), ['compensation.completed hold 1', 'execution.compensation_failed - -']);
  assert.equal((await t.lead.call('execution.list', { status: ['compensation_failed'] })).items.map((e) => e.id), [x.id]);
});

test('pause: no new step is offered while paused, the running one still finishes; resume goes on', async (ctx) => {
  const t = await team(ctx);
  const { wf, x } = await run(t, {
    name: 'slow',
    type: 'sequential',
    steps: [
      { id: 'one', action: 'one', agent: 'w1' },
      { id: 'two', action: 'two', agent: 'w1' },
    ],
  });
  const { agent } = await startWork(t.lead, t.ag, stepTask(x.id, 'one'));
  const paused = await t.lead.call('execution.pause', { executionId: x.id });
  assert.equal([paused.status, paused.version > x.version], ['paused', true]);
  await refusal(t.lead.call('execution.pause', { executionId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
  await agent.call('task.complete', { taskId: stepTask(x.id, 'one'), result: 1 });
  const after = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'one').status === 'completed');
  assert.equal([after.status, status(after)], ['paused', { one: 'completed', two: 'queued' }]);
  // A run started later gets its first step offered; the paused one still has nothing new.
  const probe = await t.lead.call('workflow.execute', { workflowId: wf.id });
  await offered(t.lead, stepTask(probe.id, 'one'));
  await absent(t.lead, stepTask(x.id, 'two'));
  assert.equal(status(await t.lead.call('execution.get', { executionId: x.id })), { one: 'completed', two: 'queued' });

  const resumed = await t.lead.call('execution.resume', { executionId: x.id });
  assert.is(resumed.status, 'running');
  await doWork(t.lead, t.ag, stepTask(x.id, 'two'), 2);
  const done = await executionSettled(t.lead, x.id);
  assert.is(done.status, 'completed');
  assert.equal(traceLines(done).filter((l) => /paused|resumed/.test(l)), ['execution.paused - -', 'execution.resumed - -']);
});

test('cancel while steps run: their tasks are cancelled and the execution is cancelled with the reason', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'fan',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'a', agent: 'w1' },
      { id: 'b', action: 'b', agent: 'w2' },
      { id: 'c', action: 'c', agent: 'w3', dependsOn: ['a', 'b'] },
    ],
  });
  await startWork(t.lead, t.ag, stepTask(x.id, 'a'));
  await offered(t.lead, stepTask(x.id, 'b'));
  await executionWhen(t.lead, x.id, (v) => stepOf(v, 'a').status === 'running' && stepOf(v, 'b').status === 'running');
  const cancelled = await t.lead.call('execution.cancel', { executionId: x.id, reason: 'release postponed' });
  assert.equal([cancelled.status, cancelled.cancelReason, status(cancelled)], ['cancelled', 'release postponed', { a: 'cancelled', b: 'cancelled', c: 'cancelled' }]);
  const [ta, tb] = await Promise.all([
    taskWhen(t.lead, stepTask(x.id, 'a'), (v) => v.status === 'cancelled'),
    taskWhen(t.lead, stepTask(x.id, 'b'), (v) => v.status === 'cancelled'),
  ]);
  assert.match(ta.error ?? '', /release postponed/);
  assert.match(tb.error ?? '', /release postponed/);
  await refusal(t.ag.w1!.call('task.complete', { taskId: ta.id, result: 'too late' }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.cancel', { executionId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
  const still = await t.lead.call('execution.get', { executionId: x.id });
  assert.equal([still.status, still.version], ['cancelled', cancelled.version]);
});

test('execution.retry from a step runs that step and the ones after it again with new attempts, and keeps what completed', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'flaky',
    type: 'sequential',
    steps: [
      { id: 'prepare', action: 'prepare', agent: 'w1' },
      { id: 'migrate', action: 'migrate', agent: 'w2', input: { plan: '${steps.prepare.output}' } },
      { id: 'verify', action: 'verify', agent: 'w3' },
    ],
  });
  await doWork(t.lead, t.ag, stepTask(x.id, 'prepare'), 'plan-7');
  await failWork(t.lead, t.ag, stepTask(x.id, 'migrate'), 'lock timeout');
  const failed = await executionSettled(t.lead, x.id);
  assert.equal([failed.status, failed.error], ['failed', 'Step migrate failed: lock timeout']);
  await refusal(t.lead.call('execution.retry', { executionId: x.id, fromStep: 'verify', expectedVersion: failed.version - 1 }), ErrorCodes.VERSION_MISMATCH);

  const retried = await t.lead.call('execution.retry', { executionId: x.id, fromStep: 'migrate', expectedVersion: failed.version });
  assert.equal([retried.status, retried.error, status(retried)], ['running', null, { prepare: 'completed', migrate: 'queued', verify: 'pending' }]);
  await refusal(t.lead.call('execution.retry', { executionId: x.id, fromStep: 'migrate' }), ErrorCodes.ILLEGAL_TRANSITION);
  const again = await doWork(t.lead, t.ag, stepTask(x.id, 'migrate', 2), 'migrated');
  assert.equal([again.parameters, again.origin!.attempt], [{ plan: 'plan-7' }, 2]);
  await doWork(t.lead, t.ag, stepTask(x.id, 'verify'), 'ok');
  const done = await executionSettled(t.lead, x.id);
  assert.equal([done.status, done.output], ['completed', { prepare: 'plan-7', migrate: 'migrated', verify: 'ok' }]);
  assert.equal(done.steps.map((s) => [s.id, s.attempt]), [['prepare', 1], ['migrate', 2], ['verify', 1]]);
  await absent(t.lead, stepTask(x.id, 'prepare', 2));
  assert.ok(traceLines(done).includes('execution.retried migrate -'));
});

/** Build, a vote of ann, bob and cy (agents), then deploy. */
async function voteFlow(ctx: Ctx, approval: Record<string, unknown> = {}, onFailure?: 'continue') {
  const t = await team(ctx);
  const voters = await registerAgents(ctx.ts, t.tenant, { ann: {}, bob: {}, cy: {} });
  const { x } = await run(t, {
    name: 'release',
    type: 'sequential',
    steps: [
      { id: 'build', action: 'build', agent: 'w1' },
      { id: 'approve', approval: { approvers: ['ann', 'bob', 'cy'], mode: 'majority', deadlineSeconds: 3_600, ...approval }, ...(onFailure ? { onFailure } : {}) },
      { id: 'deploy', action: 'deploy', agent: 'w2' },
    ],
  });
  await doWork(t.lead, t.ag, stepTask(x.id, 'build'), 'built');
  await executionWhen(t.lead, x.id, (v) => stepOf(v, 'approve').status === 'awaiting_approval');
  return { t, x, voters };
}

test('a vote that passes: approvers vote, a non-approver is FORBIDDEN, a second vote ALREADY_EXISTS, and the majority moves on', async (ctx) => {
  const { t, x, voters } = await voteFlow(ctx);
  const waiting = await t.lead.call('execution.stepStatus', { executionId: x.id, stepId: 'approve' });
  assert.equal([waiting.status, waiting.taskId, waiting.votes], ['awaiting_approval', null, []]);
  assert.ok(waiting.dueAt);
  await absent(t.lead, stepTask(x.id, 'approve'));

  const v1 = await voters.ann!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true, comment: 'tests green' });
  assert.equal(stepOf(v1, 'approve').votes.map((v) => [v.by, v.approve, v.comment]), [['ann', true, 'tests green']]);
  const e1 = await refusal(t.ag.w1!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true }), ErrorCodes.FORBIDDEN);
  assert.match(e1.message, /Only ann, bob, cy may vote/);
  await refusal(t.lead.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true }), ErrorCodes.FORBIDDEN);
  await refusal(voters.ann!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: false }), ErrorCodes.ALREADY_EXISTS);
  await refusal(voters.bob!.call('execution.approve', { executionId: x.id, stepId: 'build', approve: true }), ErrorCodes.INVALID_PARAMS);
  const unchanged = await t.lead.call('execution.get', { executionId: x.id });
  assert.equal([unchanged.version, stepOf(unchanged, 'approve').votes.length], [v1.version, 1]);

  const v2 = await voters.bob!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true });
  const s = stepOf(v2, 'approve');
  assert.equal([s.status, (s.output as { approved: boolean }).approved, s.votes.map((v) => v.by)], ['completed', true, ['ann', 'bob']]);
  await doWork(t.lead, t.ag, stepTask(x.id, 'deploy'), 'deployed');
  assert.is((await executionSettled(t.lead, x.id)).status, 'completed');
  // Too late to vote.
  await refusal(voters.cy!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: false }), ErrorCodes.ILLEGAL_TRANSITION);
});

test('a vote that fails: a majority against fails the step and the execution; deploy never runs', async (ctx) => {
  const { t, x, voters } = await voteFlow(ctx);
  await voters.ann!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: false, comment: 'no' });
  const end = await voters.cy!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: false });
  assert.equal([end.status, end.error], ['failed', 'Step approve failed: not approved (majority): ann, cy rejected']);
  assert.equal(status(end), { build: 'completed', approve: 'failed', deploy: 'cancelled' });
  await absent(t.lead, stepTask(x.id, 'deploy'));
});

test('the approval deadline times the step out; with onFailure continue the run goes on', async (ctx) => {
  const { t, x, voters } = await voteFlow(ctx, { deadlineSeconds: 1 }, 'continue');
  await voters.bob!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true });
  const timedOut = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'approve').status === 'timed_out', 5_000);
  assert.is(stepOf(timedOut, 'approve').error, 'no decision by the approval deadline (1 of 3 voted)');
  await refusal(voters.ann!.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: true }), ErrorCodes.ILLEGAL_TRANSITION);
  await doWork(t.lead, t.ag, stepTask(x.id, 'deploy'), 'deployed anyway');
  const done = await executionSettled(t.lead, x.id);
  assert.equal([done.status, Object.keys(done.output!)], ['completed', ['build', 'deploy']]);
});

test('an observer listed among the approvers still cannot vote: observers only read', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'watch',
    type: 'sequential',
    steps: [{ id: 'approve', approval: { approvers: ['eye', 'lead'], mode: 'unanimous', deadlineSeconds: 3_600 } }],
  });
  const waiting = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'approve').status === 'awaiting_approval');
  await refusal(t.eye.call('execution.approve', { executionId: x.id, stepId: 'approve', approve: false }), ErrorCodes.FORBIDDEN);
  const after = await t.lead.call('execution.get', { executionId: x.id });
  assert.equal([after.status, after.version, stepOf(after, 'approve').votes], ['running', waiting.version, []]);
});

test('execution.completeStep and execution.failStep decide a step by hand; the step task is cancelled', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'manual',
    type: 'sequential',
    steps: [
      { id: 'a', action: 'a', agent: 'w1' },
      { id: 'b', action: 'b', agent: 'w2', retryPolicy: { maxAttempts: 5 }, onFailure: 'continue' },
      { id: 'c', action: 'c', agent: 'w3', input: { a: '${steps.a.output}', b: '${steps.b.status}' } },
    ],
  });
  await startWork(t.lead, t.ag, stepTask(x.id, 'a'));
  const r1 = await t.lead.call('execution.completeStep', { executionId: x.id, stepId: 'a', output: { decided: 'by hand' } });
  assert.equal([stepOf(r1, 'a').status, stepOf(r1, 'a').output], ['completed', { decided: 'by hand' }]);
  await taskWhen(t.lead, stepTask(x.id, 'a'), (v) => v.status === 'cancelled');
  await offered(t.lead, stepTask(x.id, 'b'));
  const r2 = await t.lead.call('execution.failStep', { executionId: x.id, stepId: 'b', error: 'not needed this time' });
  assert.equal([stepOf(r2, 'b').status, stepOf(r2, 'b').error], ['failed', 'not needed this time (failed by lead)']);
  await taskWhen(t.lead, stepTask(x.id, 'b'), (v) => v.status === 'cancelled');
  await absent(t.lead, stepTask(x.id, 'b', 2));
  const c = await doWork(t.lead, t.ag, stepTask(x.id, 'c'), 'C');
  assert.equal(c.parameters, { a: { decided: 'by hand' }, b: 'failed' });
  assert.is((await executionSettled(t.lead, x.id)).status, 'completed');
  await refusal(t.lead.call('execution.completeStep', { executionId: x.id, stepId: 'c' }), ErrorCodes.ILLEGAL_TRANSITION);
});

test('the agent holding a step task may complete or fail the step by hand; another agent may not', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'own',
    type: 'sequential',
    steps: [{ id: 'a', action: 'a', agent: 'w1' }, { id: 'b', action: 'b', agent: 'w1' }],
  });
  await startWork(t.lead, t.ag, stepTask(x.id, 'a'));
  await refusal(t.ag.w2!.call('execution.completeStep', { executionId: x.id, stepId: 'a' }), ErrorCodes.FORBIDDEN);
  const r = await t.ag.w1!.call('execution.completeStep', { executionId: x.id, stepId: 'a', output: 'mine' });
  assert.is(stepOf(r, 'a').status, 'completed');
});

test('nextSteps, stepStatus, trace and list show what runs next, each step, the history and the executions by filter', async (ctx) => {
  const t = await team(ctx);
  const def: Definition = {
    name: 'graph',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'a', agent: 'w1' },
      { id: 'b', action: 'b', agent: 'w2', dependsOn: ['a'] },
      { id: 'c', action: 'c', agent: 'w3', dependsOn: ['a'] },
      { id: 'd', action: 'd', agent: 'w1', dependsOn: ['b', 'c'] },
    ],
  };
  const { wf, x } = await run(t, def);
  await executionWhen(t.lead, x.id, (v) => stepOf(v, 'a').status === 'running');
  const next0 = await t.eye.call('execution.nextSteps', { executionId: x.id });
  assert.equal(next0.items, [
    { stepId: 'b', status: 'pending', waitingFor: ['a'] },
    { stepId: 'c', status: 'pending', waitingFor: ['a'] },
    { stepId: 'd', status: 'pending', waitingFor: ['b', 'c'] },
  ]);
  await doWork(t.lead, t.ag, stepTask(x.id, 'a'), 'A');
  await doWork(t.lead, t.ag, stepTask(x.id, 'b'), 'B');
  await executionWhen(t.lead, x.id, (v) => stepOf(v, 'b').status === 'completed');
  const next1 = await t.eye.call('execution.nextSteps', { executionId: x.id });
  assert.equal(next1.items, [{ stepId: 'd', status: 'pending', waitingFor: ['c'] }]);

  const b = await t.eye.call('execution.stepStatus', { executionId: x.id, stepId: 'b' });
  assert.equal([b.id, b.status, b.attempt, b.taskId, b.output, b.agent], ['b', 'completed', 1, stepTask(x.id, 'b'), 'B', 'w2']);
  assert.ok(b.startedAt && b.completedAt);

  const trace = await t.eye.call('execution.trace', { executionId: x.id });
  assert.equal(trace.items.slice(0, 3).map((e) => [e.event, e.stepId]), [['execution.started', null], ['step.started', 'a'], ['step.completed', 'a']]);
  for (let i = 1; i < trace.items.length; i++) assert.ok(trace.items[i - 1]!.at <= trace.items[i]!.at, 'in time order');

  // list: by workflow, by status, by time.
  const other = await t.lead.call('workflow.create', { name: 'other', type: 'sequential', steps: [{ id: 'z', action: 'z', agent: 'w3' }] });
  const y = await t.lead.call('workflow.execute', { workflowId: other.id });
  const x2 = await t.lead.call('workflow.execute', { workflowId: wf.id });
  await t.lead.call('execution.cancel', { executionId: x2.id });
  const ofWf = await t.eye.call('execution.list', { workflowId: wf.id });
  assert.equal(ofWf.items.map((e) => e.id), [x2.id, x.id], 'newest first');
  assert.equal((await t.eye.call('execution.list', { workflowId: other.id })).items.map((e) => e.id), [y.id]);
  assert.equal((await t.eye.call('execution.list', { status: ['cancelled'] })).items.map((e) => e.id), [x2.id]);
  assert.equal((await t.eye.call('execution.list', { status: ['running', 'paused'] })).items.map((e) => e.id).sort(), [x.id, y.id].sort());
  assert.equal((await t.eye.call('execution.list', { createdAfter: x.createdAt })).items.map((e) => e.id).sort(), [y.id, x2.id].sort());
  assert.equal((await t.eye.call('execution.list', { createdBefore: y.createdAt })).items.map((e) => e.id), [x.id]);
  const page1 = await t.eye.call('execution.list', { limit: 2 });
  assert.is(page1.items.length, 2);
  assert.ok(page1.nextCursor);
  const page2 = await t.eye.call('execution.list', { limit: 2, cursor: page1.nextCursor! });
  assert.equal([...page1.items, ...page2.items].map((e) => e.id), [x2.id, y.id, x.id]);
  // Another tenant sees none of them.
  const stranger = await ctx.ts.client(`${t.tenant}-other`, 'lead', ['admin']);
  assert.equal((await stranger.call('execution.list', {})).items, []);
});

test('nextSteps does not list a step as waiting for a dependency that failed with onFailure continue', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, {
    name: 'tolerant',
    type: 'sequential',
    steps: [{ id: 'lint', action: 'lint', agent: 'w1', onFailure: 'continue' }, { id: 'test', action: 'test', agent: 'w1' }],
  });
  await startWork(t.lead, t.ag, stepTask(x.id, 'lint'));
  await t.lead.call('execution.pause', { executionId: x.id });
  await t.ag.w1!.call('task.fail', { taskId: stepTask(x.id, 'lint'), error: 'style' });
  const paused = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'lint').status === 'failed');
  assert.equal(status(paused), { lint: 'failed', test: 'queued' }, 'test may run: lint failing does not stop it');
  const next = await t.lead.call('execution.nextSteps', { executionId: x.id });
  assert.equal(next.items, [{ stepId: 'test', status: 'queued', waitingFor: [] }]);
});

test('a running execution keeps the workflow version it started with after workflow.update', async (ctx) => {
  const t = await team(ctx);
  const { wf, x } = await run(t, { name: 'v', type: 'sequential', steps: [{ id: 'a', action: 'a', agent: 'w1' }, { id: 'b', action: 'b', agent: 'w1' }] });
  const v2 = await t.lead.call('workflow.update', {
    workflowId: wf.id,
    definition: { name: 'v', type: 'sequential', steps: [{ id: 'a', action: 'a2', agent: 'w2' }, { id: 'c', action: 'c', agent: 'w2' }] },
    changes: 'replace b by c',
  });
  assert.is(v2.version, 2);
  const a = await doWork(t.lead, t.ag, stepTask(x.id, 'a'), 1);
  assert.equal([a.type, a.assignedTo], ['a', 'w1'], 'version 1 of step a');
  await doWork(t.lead, t.ag, stepTask(x.id, 'b'), 2);
  const done = await executionSettled(t.lead, x.id);
  assert.equal([done.status, done.workflowVersion, done.steps.map((s) => s.id)], ['completed', 1, ['a', 'b']]);

  const y = await t.lead.call('workflow.execute', { workflowId: wf.id });
  assert.equal([y.workflowVersion, y.steps.map((s) => s.id)], [2, ['a', 'c']]);
  const old = await t.lead.call('workflow.execute', { workflowId: wf.id, version: 1 });
  assert.equal([old.workflowVersion, old.steps.map((s) => s.id)], [1, ['a', 'b']]);
  await refusal(t.lead.call('workflow.execute', { workflowId: wf.id, version: 3 }), ErrorCodes.NOT_FOUND);
});

test('workflow.execute with an idempotencyKey starts one execution, and the same key with other input is refused', async (ctx) => {
  const t = await team(ctx);
  const wf = await t.lead.call('workflow.create', { name: 'once', type: 'sequential', steps: [{ id: 'a', action: 'a', agent: 'w1' }] });
  const [x1, x2] = await Promise.all([
    t.lead.call('workflow.execute', { workflowId: wf.id, input: { n: 1 }, idempotencyKey: 'deploy-42' }),
    t.lead.call('workflow.execute', { workflowId: wf.id, input: { n: 1 }, idempotencyKey: 'deploy-42' }),
  ]);
  assert.is(x1.id, x2.id);
  const x3 = await t.lead.call('workflow.execute', { workflowId: wf.id, input: { n: 1 }, idempotencyKey: 'deploy-42' });
  assert.is(x3.id, x1.id);
  await refusal(t.lead.call('workflow.execute', { workflowId: wf.id, input: { n: 2 }, idempotencyKey: 'deploy-42' }), ErrorCodes.IDEMPOTENCY_MISMATCH);
  assert.equal((await t.lead.call('execution.list', { workflowId: wf.id })).items.map((e) => e.id), [x1.id]);
  // Another principal's key is its own.
  const other = await t.ag.w2!.call('workflow.execute', { workflowId: wf.id, input: { n: 1 }, idempotencyKey: 'deploy-42' });
  assert.is.not(other.id, x1.id);
});

test('bad input and auth are refused with a precise error and change nothing', async (ctx) => {
  const t = await team(ctx);
  const { wf, x } = await run(t, { name: 'guarded', type: 'sequential', steps: [{ id: 'a', action: 'a', agent: 'w1' }, { id: 'b', action: 'b', agent: 'w1' }] });
  const before = await executionWhen(t.lead, x.id, (v) => stepOf(v, 'a').status === 'running');
  const same = async () => {
    const now = await t.lead.call('execution.get', { executionId: x.id });
    assert.equal([now.status, now.version], [before.status, before.version]);
  };

  // Observers read but cannot control.
  assert.is((await t.eye.call('execution.get', { executionId: x.id })).id, x.id);
  await refusal(t.eye.call('workflow.execute', { workflowId: wf.id }), ErrorCodes.FORBIDDEN);
  await refusal(t.eye.call('execution.pause', { executionId: x.id }), ErrorCodes.FORBIDDEN);
  await refusal(t.eye.call('execution.cancel', { executionId: x.id }), ErrorCodes.FORBIDDEN);
  await refusal(t.eye.call('execution.completeStep', { executionId: x.id, stepId: 'a' }), ErrorCodes.FORBIDDEN);
  await refusal(t.eye.call('execution.failStep', { executionId: x.id, stepId: 'a', error: 'x' }), ErrorCodes.FORBIDDEN);
  // An agent that did not start it cannot steer it either.
  const e = await refusal(t.ag.w2!.call('execution.pause', { executionId: x.id }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /Only the execution's creator \(lead\) or an admin may pause/);
  await same();

  // Other tenants' ids do not exist for them.
  const stranger = await ctx.ts.client(`${t.tenant}-x`, 'lead', ['admin']);
  for (const call of [
    stranger.call('execution.get', { executionId: x.id }),
    stranger.call('execution.pause', { executionId: x.id }),
    stranger.call('execution.cancel', { executionId: x.id }),
    stranger.call('execution.trace', { executionId: x.id }),
    stranger.call('execution.nextSteps', { executionId: x.id }),
    stranger.call('execution.stepStatus', { executionId: x.id, stepId: 'a' }),
    stranger.call('execution.approve', { executionId: x.id, stepId: 'a', approve: true }),
    stranger.call('workflow.execute', { workflowId: wf.id }),
  ]) {
    await refusal(call, ErrorCodes.NOT_FOUND);
  }
  await same();

  // Unknown steps.
  await refusal(t.lead.call('execution.stepStatus', { executionId: x.id, stepId: 'nope' }), ErrorCodes.NOT_FOUND);
  await refusal(t.lead.call('execution.completeStep', { executionId: x.id, stepId: 'nope' }), ErrorCodes.NOT_FOUND);
  await refusal(t.lead.call('execution.failStep', { executionId: x.id, stepId: 'nope', error: 'x' }), ErrorCodes.NOT_FOUND);
  await refusal(t.lead.call('execution.approve', { executionId: x.id, stepId: 'nope', approve: true }), ErrorCodes.NOT_FOUND);
  // Malformed params.
  await refusal(t.lead.call('execution.get', {} as never), ErrorCodes.INVALID_PARAMS);
  await refusal(t.lead.call('execution.retry', { executionId: x.id, fromStep: 'no spaces allowed' }), ErrorCodes.INVALID_PARAMS);
  await refusal(t.lead.call('execution.approve', { executionId: x.id, stepId: 'a', approve: 'yes' } as never), ErrorCodes.INVALID_PARAMS);
  await refusal(t.lead.call('workflow.execute', { workflowId: wf.id, input: [1, 2] } as never), ErrorCodes.INVALID_PARAMS);
  await refusal(t.lead.call('execution.get', { executionId: 'no-such-execution' }), ErrorCodes.NOT_FOUND);
  await same();

  // Controls in the wrong state.
  await refusal(t.lead.call('execution.resume', { executionId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.retry', { executionId: x.id, fromStep: 'a' }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.completeStep', { executionId: x.id, stepId: 'b' }), ErrorCodes.ILLEGAL_TRANSITION);
  await same();
  await refusal(t.lead.call('execution.pause', { executionId: x.id, expectedVersion: before.version + 5 }), ErrorCodes.VERSION_MISMATCH);
  await same();

  // Finished: nothing but retry.
  await t.lead.call('execution.cancel', { executionId: x.id });
  const done = await t.lead.call('execution.get', { executionId: x.id });
  await refusal(t.lead.call('execution.pause', { executionId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.resume', { executionId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.failStep', { executionId: x.id, stepId: 'a', error: 'x' }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(t.lead.call('execution.retry', { executionId: x.id, fromStep: 'nope' }), ErrorCodes.INVALID_PARAMS);
  const after = await t.lead.call('execution.get', { executionId: x.id });
  assert.equal([after.status, after.version], ['cancelled', done.version]);
  // Inactive or unknown workflows do not run.
  const off = await t.lead.call('workflow.create', { name: 'off', type: 'sequential', active: false, steps: [{ id: 'a', action: 'a' }] });
  await refusal(t.lead.call('workflow.execute', { workflowId: off.id }), ErrorCodes.INVALID_PARAMS);
  await refusal(t.lead.call('workflow.execute', { workflowId: 'no-such-workflow' }), ErrorCodes.NOT_FOUND);
  // The connection still works.
  assert.is((await t.lead.call('execution.get', { executionId: x.id })).id, x.id);
});

test('a step whose agent is not registered fails at dispatch with a clear error', async (ctx) => {
  const t = await team(ctx);
  const { x } = await run(t, { name: 'ghost', type: 'sequential', steps: [{ id: 'a', action: 'a', agent: 'ghost' }] });
  const done = await executionSettled(t.lead, x.id);
  assert.equal([done.status, done.error], ['failed', 'Step a failed: its agent ghost is not registered']);
  assert.equal([stepOf(done, 'a').status, stepOf(done, 'a').attempt], ['failed', 1]);
});

test.run();

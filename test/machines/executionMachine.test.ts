import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso, type Effect } from '../../machines/effects.js';
import { executionResource, retryDelay, stepTaskId, type ExecutionEvent } from '../../machines/execution.js';
import { executionMachine } from '../../machines/executionMachine.js';
import type { StepRun, WorkflowDefinition } from '../../protocol/workflows.js';
import { T0 } from '../helpers/clock.js';

type ExecutionSnapshot = SnapshotFrom<typeof executionMachine>;
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** An execution event as the runtime receives it, before it stamps `at` and `by`. */
type Body = DistributiveOmit<ExecutionEvent, 'at' | 'by'>;
type Settle = Extract<Body, { type: 'execution.stepSettled' }>;

const X = 'e1';
/** The task id of a step's attempt. */
const tid = (stepId: string, attempt: number) => stepTaskId(X, stepId, attempt, 'step');
/** The task id of a compensation's attempt. */
const cid = (stepId: string, attempt: number) => stepTaskId(X, stepId, attempt, 'compensation');

/** A value as a store keeps it (JSON drops `undefined` members). */
function json<T>(value: T): T {
  return JSON.parse(JSON.stringify(value));
}

/** The effects a pure transition emitted, in order. */
function emitted(actions: { type: string; params?: unknown }[]): Effect[] {
  return actions.filter((a) => a.type === 'xstate.emit').map((a) => (a.params as { event: Effect }).event);
}

const schedule = (name: string, fireAt: number): Effect => ({ type: 'fx.timer.schedule', name, fireAt });
const cancelTimers = (...names: string[]): Effect => ({ type: 'fx.timer.cancel', names });
const cancelTask = (id: string, reason: string): Effect => ({ type: 'fx.send', kind: 'task', id, event: { type: 'task.cancel', reason } });

/**
 * An execution driven by pure `transition` calls on a simulated clock: each event is stamped
 * 1 s after the one before unless given, and timers fire exactly when due.
 */
class Sim {
  snapshot: ExecutionSnapshot;
  at = T0 - 1_000;
  /** Effects of the last accepted event. */
  effects: Effect[] = [];
  /** Every accepted event, as stamped. */
  events: ExecutionEvent[] = [];

  constructor(def?: WorkflowDefinition, input: Record<string, unknown> = {}) {
    [this.snapshot] = initialTransition(executionMachine);
    if (def) this.send({ type: 'execution.start', id: X, tenantId: 'acme', workflowId: 'wf1', workflowVersion: 1, definition: def, input }, { at: T0 });
  }

  get phase(): string {
    return String(this.snapshot.value);
  }

  get x() {
    return this.snapshot.context.execution;
  }

  get timers(): Record<string, number> {
    return this.snapshot.context.timers;
  }

  step(id: string): StepRun {
    const s = this.x.steps.find((r) => r.id === id);
    assert.ok(s, `no step ${id}`);
    return s;
  }

  /** Each step's status, by id. */
  get statuses(): Record<string, string> {
    return Object.fromEntries(this.x.steps.map((s) => [s.id, s.status]));
  }

  event(body: Body, opts: { at?: number; by?: string } = {}): ExecutionEvent {
    return { ...body, at: opts.at ?? this.at + 1_000, by: opts.by ?? 'lead' } as ExecutionEvent;
  }

  /** Sends an event that must be accepted; returns its effects. */
  send(body: Body, opts: { at?: number; by?: string } = {}): Effect[] {
    const event = this.event(body, opts);
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted while ${this.phase}: ${JSON.stringify(body)}`);
    const [next, actions] = transition(executionMachine, this.snapshot, event);
    this.snapshot = next;
    this.at = event.at;
    this.effects = emitted(actions);
    this.events.push(event);
    return this.effects;
  }

  /** Sends an event that must be refused and asserts that nothing changed and nothing was asked. */
  refuse(body: Body, opts: { at?: number; by?: string } = {}): void {
    const event = this.event(body, opts);
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused while ${this.phase}: ${JSON.stringify(body)}`);
    const before = json(executionMachine.getPersistedSnapshot(this.snapshot));
    const [next, actions] = transition(executionMachine, this.snapshot, event);
    assert.equal(json(executionMachine.getPersistedSnapshot(next)), before, `${body.type} changed the execution while ${this.phase}`);
    assert.equal(emitted(actions), [], `${body.type} emitted effects while ${this.phase}`);
  }

  /** Fires the durable timer `name` exactly when due. */
  fire(name: string): Effect[] {
    const fireAt = this.timers[name];
    assert.type(fireAt, 'number', `no ${name} timer while ${this.phase}; timers: ${JSON.stringify(this.timers)}`);
    return this.send({ type: 'timer.fired', name, fireAt: fireAt! }, { at: Math.max(this.at, fireAt!), by: 'system' });
  }

  /** The dispatcher started these queued steps with their next attempt (approval steps without a task). */
  start(...ids: string[]): Effect[] {
    return this.send(
      {
        type: 'execution.dispatched',
        started: ids.map((id) => {
          const attempt = this.step(id).attempt + 1;
          const approval = this.snapshot.context.definition.steps.find((s) => s.id === id)!.approval;
          return { stepId: id, attempt, taskId: approval ? null : tid(id, attempt), input: { step: id } };
        }),
      },
      { by: 'system' },
    );
  }

  /** The dispatcher started the compensation of `id`. */
  startCompensation(id: string): Effect[] {
    const attempt = this.step(id).compensation!.attempt + 1;
    return this.send({ type: 'execution.dispatched', compensations: [{ stepId: id, attempt, taskId: cid(id, attempt), input: {} }] }, { by: 'system' });
  }

  /** The report of the step's current task. */
  report(id: string, status: Settle['status'], extra: Partial<Settle> = {}): Settle {
    const s = this.step(id);
    return { type: 'execution.stepSettled', stepId: id, attempt: s.attempt, role: 'step', taskId: s.taskId!, status, agent: 'ann', ...extra };
  }

  /** The report of the compensation's current task. */
  compensationReport(id: string, status: Settle['status'], extra: Partial<Settle> = {}): Settle {
    const c = this.step(id).compensation!;
    return { type: 'execution.stepSettled', stepId: id, attempt: c.attempt, role: 'compensation', taskId: c.taskId!, status, agent: 'ann', ...extra };
  }

  complete(id: string, result: unknown = { from: id }): Effect[] {
    return this.send(this.report(id, 'completed', { result }), { by: 'system' });
  }

  fail(id: string, error = 'boom'): Effect[] {
    return this.send(this.report(id, 'failed', { error }), { by: 'system' });
  }

  /** The trace as `event stepId attempt` lines (detail left out). */
  get traceLines(): string[] {
    return this.x.trace.map((t) => [t.event, t.stepId ?? '-', t.attempt ?? '-'].join(' '));
  }
}

/** Every event type, and one plausible event of each (accepted or not depends on the state). */
function candidates(sim: Sim): Body[] {
  const anyStep = sim.x.steps[0]?.id ?? 'a';
  return [
    { type: 'execution.start', id: X, tenantId: 'acme', workflowId: 'wf1', workflowVersion: 1, definition: seq(), input: {} },
    { type: 'execution.dispatched', started: [] },
    { type: 'execution.stepSettled', stepId: anyStep, attempt: 1, role: 'step', taskId: tid(anyStep, 1), status: 'completed' },
    { type: 'execution.vote', stepId: anyStep, approve: true },
    { type: 'execution.pause' },
    { type: 'execution.resume' },
    { type: 'execution.cancel' },
    { type: 'execution.retry', fromStep: anyStep },
    { type: 'execution.completeStep', stepId: anyStep },
    { type: 'execution.failStep', stepId: anyStep, error: 'x' },
    ...Object.entries(sim.timers).map(([name, fireAt]): Body => ({ type: 'timer.fired', name, fireAt })),
  ];
}

/** A sequential workflow of the given step ids. */
function seq(...ids: string[]): WorkflowDefinition {
  const list = ids.length ? ids : ['a', 'b', 'c'];
  return { name: 'seq', type: 'sequential', steps: list.map((id) => ({ id, action: `do-${id}` })) };
}

const test = suite('executionMachine');

// ---------------------------------------------------------------------------------------------
// Starting and the step graph

test('start records the execution, queues the root steps and asks for a dispatch at the start time', () => {
  const sim = new Sim();
  assert.is(sim.phase, 'new');
  const def: WorkflowDefinition = {
    name: 'ship',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'build' },
      { id: 'b', action: 'lint' },
      { id: 'c', action: 'deploy', dependsOn: ['a', 'b'] },
    ],
    config: { timeoutSeconds: 60 },
  };
  const fx = sim.send({ type: 'execution.start', id: X, tenantId: 'acme', workflowId: 'wf1', workflowVersion: 3, definition: def, input: { repo: 'r1' } }, { at: T0, by: 'lead' });
  assert.is(sim.phase, 'running');
  assert.equal(fx, [schedule('timeout', T0 + 60_000), schedule('dispatch', T0)]);
  assert.equal(sim.timers, { timeout: T0 + 60_000, dispatch: T0 });
  assert.equal(sim.statuses, { a: 'queued', b: 'queued', c: 'pending' });
  const blank = { attempt: 0, taskId: null, input: null, output: null, error: null, agent: null, startedAt: null, completedAt: null, dueAt: null, votes: [], compensation: null };
  assert.equal(sim.x.steps, [
    { id: 'a', status: 'queued', ...blank },
    { id: 'b', status: 'queued', ...blank },
    { id: 'c', status: 'pending', ...blank },
  ]);
  const { steps: _s, trace, ...rest } = sim.x;
  assert.equal(rest, {
    id: X,
    tenantId: 'acme',
    workflowId: 'wf1',
    workflowVersion: 3,
    workflowName: 'ship',
    input: { repo: 'r1' },
    output: null,
    error: null,
    completionOrder: [],
    createdBy: 'lead',
    createdAt: iso(T0),
    updatedAt: iso(T0),
    completedAt: null,
    cancelReason: null,
    workspaceId: null,
  });
  assert.equal(trace, [{ at: iso(T0), event: 'execution.started', stepId: null, attempt: null, detail: 'workflow ship version 3' }]);
  assert.equal(sim.snapshot.context.definition, def);
  const res = executionResource(sim.snapshot.context, 1);
  assert.equal([res.status, res.version, res.id], ['running', 1, X]);
  sim.refuse({ type: 'execution.start', id: X, tenantId: 'acme', workflowId: 'wf1', workflowVersion: 3, definition: def, input: {} });
});

test('the new state accepts only start: controls and reports before it are refused', () => {
  const sim = new Sim();
  sim.refuse({ type: 'execution.pause' });
  sim.refuse({ type: 'execution.cancel' });
  sim.refuse({ type: 'execution.dispatched', started: [] });
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'step', taskId: tid('a', 1), status: 'completed' });
  assert.is(sim.phase, 'new');
});

test('a sequential workflow runs each step after the one before it, and completes with every output', () => {
  const sim = new Sim(seq('a', 'b', 'c'));
  assert.equal(sim.statuses, { a: 'queued', b: 'pending', c: 'pending' });
  assert.equal(sim.start('a'), [], 'the dispatch consumed its timer without a cancel');
  assert.equal(sim.timers, {});
  const a = sim.step('a');
  assert.equal([a.status, a.attempt, a.taskId, a.input, a.startedAt], ['running', 1, `${X}.a.1`, { step: 'a' }, iso(T0 + 1_000)]);
  assert.equal(sim.complete('a', { n: 1 }), [schedule('dispatch', T0 + 2_000)]);
  assert.equal(sim.statuses, { a: 'completed', b: 'queued', c: 'pending' });
  assert.equal([sim.step('a').output, sim.step('a').agent, sim.step('a').completedAt], [{ n: 1 }, 'ann', iso(T0 + 2_000)]);
  sim.start('b');
  sim.complete('b', { n: 2 });
  assert.equal(sim.statuses, { a: 'completed', b: 'completed', c: 'queued' });
  sim.start('c');
  assert.equal(sim.complete('c', { n: 3 }), []);
  assert.is(sim.phase, 'completed');
  assert.equal(sim.x.output, { a: { n: 1 }, b: { n: 2 }, c: { n: 3 } });
  assert.equal(sim.x.completionOrder, ['a', 'b', 'c']);
  assert.is(sim.x.completedAt, iso(T0 + 6_000));
  assert.equal(sim.traceLines, [
    'execution.started - -',
    'step.started a 1',
    'step.completed a 1',
    'step.started b 1',
    'step.completed b 1',
    'step.started c 1',
    'step.completed c 1',
    'execution.completed - -',
  ]);
  assert.is(sim.x.trace.at(-1)!.detail, '3 of 3 steps completed');
  assert.is(executionResource(sim.snapshot.context, 9).status, 'completed');
});

test('in a sequential workflow an explicit dependsOn replaces the implicit dependency on the step before', () => {
  const def = seq('a', 'b', 'c');
  def.steps[2]!.dependsOn = [];
  const sim = new Sim(def);
  assert.equal(sim.statuses, { a: 'queued', b: 'pending', c: 'queued' });
});

test('a parallel diamond queues both middle steps together and the last only after both completed', () => {
  const sim = new Sim({
    name: 'diamond',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x' },
      { id: 'b', action: 'x', dependsOn: ['a'] },
      { id: 'c', action: 'x', dependsOn: ['a'] },
      { id: 'd', action: 'x', dependsOn: ['b', 'c'] },
    ],
  });
  assert.equal(sim.statuses, { a: 'queued', b: 'pending', c: 'pending', d: 'pending' });
  sim.start('a');
  assert.equal(sim.complete('a'), [schedule('dispatch', T0 + 2_000)], 'one dispatch covers both');
  assert.equal(sim.statuses, { a: 'completed', b: 'queued', c: 'queued', d: 'pending' });
  sim.start('b', 'c');
  assert.equal(sim.statuses, { a: 'completed', b: 'running', c: 'running', d: 'pending' });
  assert.equal(sim.complete('c'), []);
  assert.equal(sim.statuses, { a: 'completed', b: 'running', c: 'completed', d: 'pending' });
  assert.equal(sim.complete('b'), [schedule('dispatch', T0 + 5_000)]);
  assert.equal(sim.statuses, { a: 'completed', b: 'completed', c: 'completed', d: 'queued' });
  sim.start('d');
  sim.complete('d');
  assert.is(sim.phase, 'completed');
  assert.equal(sim.x.completionOrder, ['a', 'c', 'b', 'd']);
});

test('a dispatch records started, skipped and failed steps, and ignores a start for an attempt other than the next', () => {
  const sim = new Sim({
    name: 'mix',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x' },
      { id: 'b', action: 'x', when: 'input.go' },
      { id: 'c', action: 'x', agent: 'ghost', onFailure: 'continue' },
      { id: 'd', action: 'x' },
      { id: 'e', action: 'x', dependsOn: ['b'] },
    ],
  });
  assert.equal(sim.statuses, { a: 'queued', b: 'queued', c: 'queued', d: 'queued', e: 'pending' });
  const at = T0 + 1_000;
  const fx = sim.send(
    {
      type: 'execution.dispatched',
      started: [
        { stepId: 'a', attempt: 1, taskId: tid('a', 1), input: { n: 1 } },
        { stepId: 'd', attempt: 2, taskId: tid('d', 2), input: {} },
      ],
      skipped: [{ stepId: 'b', reason: 'its condition `input.go` is false' }],
      failed: [{ stepId: 'c', error: 'its agent ghost is not registered' }],
    },
    { at, by: 'system' },
  );
  assert.equal(sim.statuses, { a: 'running', b: 'skipped', c: 'failed', d: 'queued', e: 'queued' });
  assert.equal(fx, [schedule('dispatch', at)], 'd and e still wait for a dispatch');
  assert.equal([sim.step('a').taskId, sim.step('a').input, sim.step('a').attempt], [tid('a', 1), { n: 1 }, 1]);
  assert.equal([sim.step('b').attempt, sim.step('b').completedAt], [0, iso(at)]);
  assert.equal([sim.step('c').attempt, sim.step('c').error, sim.step('c').completedAt], [1, 'its agent ghost is not registered', iso(at)]);
  assert.equal([sim.step('d').attempt, sim.step('d').taskId], [0, null]);
  assert.equal(sim.x.trace.slice(1), [
    { at: iso(at), event: 'step.started', stepId: 'a', attempt: 1, detail: `task ${tid('a', 1)}` },
    { at: iso(at), event: 'step.skipped', stepId: 'b', attempt: null, detail: 'its condition `input.go` is false' },
    { at: iso(at), event: 'step.failed', stepId: 'c', attempt: 1, detail: 'its agent ghost is not registered' },
  ]);
});

test('a step that cannot be started fails the execution when its onFailure is fail_workflow, cancelling the tasks already running', () => {
  const sim = new Sim({ name: 'p', type: 'parallel', steps: [{ id: 'a', action: 'x' }, { id: 'b', action: 'x' }] });
  const fx = sim.send(
    { type: 'execution.dispatched', started: [{ stepId: 'a', attempt: 1, taskId: tid('a', 1), input: {} }], failed: [{ stepId: 'b', error: 'steps.b.input: no such key: y' }] },
    { by: 'system' },
  );
  assert.is(sim.phase, 'failed');
  assert.equal(sim.statuses, { a: 'cancelled', b: 'failed' });
  const msg = 'Step b failed: steps.b.input: no such key: y';
  assert.equal(fx, [cancelTask(tid('a', 1), `the execution failed: ${msg}`)]);
  assert.is(sim.x.error, msg);
});

test('a skipped step unblocks its dependents, and a step skipped by its condition does not keep the execution from completing', () => {
  const sim = new Sim({
    name: 'cond',
    type: 'conditional',
    steps: [
      { id: 'check', action: 'x' },
      { id: 'fix', action: 'x', dependsOn: ['check'], when: 'steps.check.output.broken' },
      { id: 'report', action: 'x', dependsOn: ['fix'] },
    ],
  });
  sim.start('check');
  sim.complete('check', { broken: false });
  assert.equal(sim.statuses, { check: 'completed', fix: 'queued', report: 'pending' });
  const fx = sim.send({ type: 'execution.dispatched', skipped: [{ stepId: 'fix', reason: 'its condition `steps.check.output.broken` is false' }] }, { by: 'system' });
  assert.equal(fx, [schedule('dispatch', sim.at)]);
  assert.equal(sim.statuses, { check: 'completed', fix: 'skipped', report: 'queued' });
  sim.start('report');
  sim.complete('report', 'all good');
  assert.is(sim.phase, 'completed');
  assert.equal(sim.x.output, { check: { broken: false }, report: 'all good' }, 'a skipped step has no output');
  assert.is(sim.x.trace.at(-1)!.detail, '2 of 3 steps completed');
});

// ---------------------------------------------------------------------------------------------
// Retries

test('retryDelay waits initialWaitMs times the retry number (linear) or doubling (exponential), capped by maxWaitMs', () => {
  const linear = { maxAttempts: 9, backoff: 'linear' as const, initialWaitMs: 100 };
  assert.equal([2, 3, 4, 5].map((n) => retryDelay(linear, n)), [100, 200, 300, 400]);
  const exp = { maxAttempts: 9, backoff: 'exponential' as const, initialWaitMs: 100 };
  assert.equal([2, 3, 4, 5].map((n) => retryDelay(exp, n)), [100, 200, 400, 800]);
  assert.equal([2, 3, 4, 5].map((n) => retryDelay({ ...exp, maxWaitMs: 300 }, n)), [100, 200, 300, 300]);
  assert.equal([2, 5].map((n) => retryDelay({ ...linear, maxWaitMs: 250 }, n)), [100, 250]);
  // Defaults: exponential from 1 s, at most a minute.
  assert.equal([2, 3, 4, 8].map((n) => retryDelay(undefined, n)), [1_000, 2_000, 4_000, 60_000]);
  assert.equal(retryDelay({ maxAttempts: 3, initialWaitMs: 10 }, 4), 40, 'exponential unless told');
});

test('a failed attempt is retried after a linear back-off until maxAttempts, then the step fails', () => {
  const def = seq('a', 'b');
  def.steps[0]!.retryPolicy = { maxAttempts: 3, backoff: 'linear', initialWaitMs: 500 };
  const sim = new Sim(def);
  sim.start('a');
  let at = sim.at + 1_000;
  assert.equal(sim.send(sim.report('a', 'failed', { error: 'flaky 1', agent: 'bob' }), { at }), [schedule('retry:a', at + 500)]);
  let a = sim.step('a');
  assert.equal([a.status, a.attempt, a.error, a.agent, a.dueAt], ['retrying', 1, 'flaky 1', 'bob', iso(at + 500)]);
  assert.equal(sim.x.trace.at(-1), { at: iso(at), event: 'step.retrying', stepId: 'a', attempt: 1, detail: `flaky 1; attempt 2 at ${iso(at + 500)}` });
  assert.equal(sim.fire('retry:a'), [schedule('dispatch', at + 500)]);
  assert.equal([sim.step('a').status, sim.step('a').dueAt], ['queued', null]);
  sim.start('a');
  assert.equal([sim.step('a').attempt, sim.step('a').taskId, sim.step('a').error], [2, tid('a', 2), null]);
  at = sim.at + 1_000;
  assert.equal(sim.send(sim.report('a', 'failed', { error: 'flaky 2' }), { at }), [schedule('retry:a', at + 1_000)], 'the second wait is twice the first');
  sim.fire('retry:a');
  sim.start('a');
  assert.is(sim.step('a').taskId, tid('a', 3));
  sim.fail('a', 'flaky 3');
  a = sim.step('a');
  assert.equal([a.status, a.attempt, a.error], ['failed', 3, 'flaky 3']);
  assert.is(sim.phase, 'failed');
  assert.is(sim.x.error, 'Step a failed: flaky 3');
  assert.equal(sim.statuses, { a: 'failed', b: 'cancelled' });
});

test('exponential back-off doubles the wait, and a later attempt may still complete the step', () => {
  const def = seq('a');
  def.steps[0]!.retryPolicy = { maxAttempts: 4, initialWaitMs: 200 };
  const sim = new Sim(def);
  const waits: number[] = [];
  for (let i = 1; i <= 3; i++) {
    sim.start('a');
    sim.fail('a', `no ${i}`);
    waits.push(sim.timers['retry:a']! - sim.at);
    sim.fire('retry:a');
  }
  assert.equal(waits, [200, 400, 800]);
  sim.start('a');
  sim.complete('a', 'finally');
  assert.equal([sim.step('a').status, sim.step('a').attempt, sim.step('a').taskId], ['completed', 4, tid('a', 4)]);
  assert.is(sim.phase, 'completed');
});

test('a task that timed out or was cancelled counts as a failed attempt; with no retries left a timeout leaves the step timed_out', () => {
  const def = seq('a');
  def.steps[0]!.retryPolicy = { maxAttempts: 2, initialWaitMs: 10 };
  const sim = new Sim(def);
  sim.start('a');
  sim.send(sim.report('a', 'cancelled', { error: null }));
  assert.equal([sim.step('a').status, sim.step('a').error], ['retrying', 'the task was cancelled']);
  sim.fire('retry:a');
  sim.start('a');
  sim.send(sim.report('a', 'timed_out', { error: null }));
  assert.equal([sim.step('a').status, sim.step('a').error], ['timed_out', 'the task was timed out']);
  assert.is(sim.phase, 'failed');
  assert.is(sim.x.error, 'Step a timed out: the task was timed out');
  assert.equal(sim.traceLines.slice(-2), ['step.timed_out a 2', 'execution.failed - -']);
});

// ---------------------------------------------------------------------------------------------
// onFailure

test('fail_workflow: the execution fails, running tasks are cancelled, waiting steps are cancelled and every timer is cancelled', () => {
  const sim = new Sim({
    name: 'ff',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x', retryPolicy: { maxAttempts: 3, initialWaitMs: 5_000 } },
      { id: 'b', action: 'x' },
      { id: 'c', approval: { approvers: ['ann'], mode: 'majority', deadlineSeconds: 600 } },
      { id: 'd', action: 'x', dependsOn: ['a'] },
      { id: 'e', action: 'x' },
    ],
    config: { timeoutSeconds: 3_600 },
  });
  sim.start('a', 'b', 'c', 'e');
  sim.fail('a', 'flaky');
  assert.equal(Object.keys(sim.timers), ['timeout', 'approval:c', 'retry:a']);
  const at = sim.at + 1_000;
  const fx = sim.send(sim.report('b', 'failed', { error: 'boom' }), { at });
  const msg = 'Step b failed: boom';
  assert.equal(fx, [cancelTask(tid('e', 1), `the execution failed: ${msg}`), cancelTimers('approval:c', 'retry:a'), cancelTimers('timeout')]);
  assert.is(sim.phase, 'failed');
  assert.equal(sim.statuses, { a: 'cancelled', b: 'failed', c: 'cancelled', d: 'cancelled', e: 'cancelled' });
  assert.equal([sim.step('a').dueAt, sim.step('c').dueAt, sim.step('e').completedAt], [null, null, iso(at)]);
  assert.equal(sim.timers, {});
  assert.equal([sim.x.error, sim.x.completedAt, sim.x.output], [msg, iso(at), null]);
  assert.equal(sim.x.trace.slice(-2), [
    { at: iso(at), event: 'step.failed', stepId: 'b', attempt: 1, detail: 'boom' },
    { at: iso(at), event: 'execution.failed', stepId: null, attempt: null, detail: msg },
  ]);
  // The cancelled task reports back: too late, and refused.
  sim.refuse({ type: 'execution.stepSettled', stepId: 'e', attempt: 1, role: 'step', taskId: tid('e', 1), status: 'cancelled' });
});

test('continue: the failure is recorded, the dependents run and the execution completes without the failed step in its output', () => {
  const def = seq('a', 'b', 'c');
  def.steps[1]!.onFailure = 'continue';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a', 1);
  sim.start('b');
  assert.equal(sim.fail('b', 'lint errors'), [schedule('dispatch', sim.at)]);
  assert.equal(sim.statuses, { a: 'completed', b: 'failed', c: 'queued' });
  assert.is(sim.phase, 'running');
  assert.is(sim.x.error, null);
  sim.start('c');
  sim.complete('c', 3);
  assert.is(sim.phase, 'completed');
  assert.equal(sim.x.output, { a: 1, c: 3 });
  assert.is(sim.x.trace.at(-1)!.detail, '2 of 3 steps completed');
});

test('compensate: completed steps are undone in reverse completion order, one at a time, each compensation retried per its policy', () => {
  const sim = new Sim({
    name: 'saga',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x', compensate: { action: 'undo-a', retryPolicy: { maxAttempts: 2, backoff: 'linear', initialWaitMs: 100 } } },
      { id: 'b', action: 'x', compensate: { action: 'undo-b' } },
      { id: 'n', action: 'x' },
      { id: 'c', action: 'x', dependsOn: ['a'], compensate: { action: 'undo-c' } },
      { id: 'd', action: 'x', dependsOn: ['b', 'c'], onFailure: 'compensate' },
    ],
  });
  sim.start('a', 'b', 'n');
  sim.complete('b');
  sim.complete('n');
  sim.complete('a');
  sim.start('c');
  sim.complete('c');
  sim.start('d');
  assert.equal(sim.x.completionOrder, ['b', 'n', 'a', 'c']);
  const at = sim.at + 1_000;
  assert.equal(sim.send(sim.report('d', 'failed', { error: 'boom' }), { at }), [schedule('dispatch', at)]);
  assert.is(sim.phase, 'compensating');
  assert.equal(sim.statuses, { a: 'compensating', b: 'compensating', n: 'completed', c: 'compensating', d: 'failed' });
  for (const id of ['a', 'b', 'c']) assert.equal(sim.step(id).compensation, { status: 'queued', attempt: 0, taskId: null, error: null });
  assert.is(sim.step('n').compensation, null, 'a step without a compensation is left as it is');
  assert.equal(sim.x.trace.at(-1), {
    at: iso(at),
    event: 'execution.compensating',
    stepId: null,
    attempt: null,
    detail: 'Step d failed: boom; compensating c, a, b in reverse order',
  });

  // c first; nothing else starts while it runs.
  assert.equal(sim.startCompensation('c'), []);
  assert.equal(sim.step('c').compensation, { status: 'running', attempt: 1, taskId: cid('c', 1), error: null });
  assert.equal(sim.timers, {}, 'no dispatch while a compensation runs');
  assert.equal(sim.send(sim.compensationReport('c', 'completed')), [schedule('dispatch', sim.at)]);
  assert.equal([sim.step('c').status, sim.step('c').compensation!.status], ['compensated', 'completed']);

  // a fails once and is retried after its back-off.
  sim.startCompensation('a');
  const failedAt = sim.at + 1_000;
  assert.equal(sim.send(sim.compensationReport('a', 'failed', { error: 'locked' }), { at: failedAt }), [schedule('cretry:a', failedAt + 100)]);
  assert.equal(sim.step('a').compensation, { status: 'retrying', attempt: 1, taskId: cid('a', 1), error: 'locked' });
  assert.equal(sim.x.trace.at(-1)!.detail, `locked; attempt 2 at ${iso(failedAt + 100)}`);
  assert.equal(sim.fire('cretry:a'), [schedule('dispatch', failedAt + 100)]);
  assert.is(sim.step('a').compensation!.status, 'queued');
  sim.startCompensation('a');
  assert.equal(sim.step('a').compensation!.taskId, cid('a', 2));
  // A late report of the first attempt is refused.
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'compensation', taskId: cid('a', 1), status: 'completed' });
  sim.send(sim.compensationReport('a', 'completed'));
  assert.is(sim.step('a').status, 'compensated');

  sim.startCompensation('b');
  const end = sim.at + 1_000;
  assert.equal(sim.send(sim.compensationReport('b', 'completed'), { at: end }), []);
  assert.is(sim.phase, 'failed');
  assert.equal(sim.statuses, { a: 'compensated', b: 'compensated', n: 'completed', c: 'compensated', d: 'failed' });
  assert.equal([sim.x.error, sim.x.completedAt], ['Step d failed: boom', iso(end)]);
  assert.equal(sim.x.trace.at(-1), {
    at: iso(end),
    event: 'execution.failed',
    stepId: null,
    attempt: null,
    detail: 'Step d failed: boom; every completed step was compensated',
  });
  assert.equal(
    sim.traceLines.filter((l) => l.startsWith('compensation.')),
    [
      'compensation.started c 1',
      'compensation.completed c 1',
      'compensation.started a 1',
      'compensation.retrying a 1',
      'compensation.started a 2',
      'compensation.completed a 2',
      'compensation.started b 1',
      'compensation.completed b 1',
    ],
  );
});

test('a compensation that fails for good ends the saga in compensation_failed, and the error names the step', () => {
  const def = seq('a', 'b', 'c');
  def.steps[0]!.compensate = { action: 'undo-a' };
  def.steps[1]!.compensate = { action: 'undo-b', retryPolicy: { maxAttempts: 2, initialWaitMs: 50 } };
  def.steps[2]!.onFailure = 'compensate';
  const sim = new Sim(def);
  for (const id of ['a', 'b']) {
    sim.start(id);
    sim.complete(id);
  }
  sim.start('c');
  sim.fail('c', 'boom');
  sim.startCompensation('b');
  sim.send(sim.compensationReport('b', 'failed', { error: 'undo b broke' }));
  assert.equal(sim.timers['cretry:b'], sim.at + 50);
  sim.fire('cretry:b');
  sim.startCompensation('b');
  const fx = sim.send(sim.compensationReport('b', 'failed', { error: 'undo b broke again' }));
  assert.equal(fx, [schedule('dispatch', sim.at)], 'the saga goes on with the next compensation');
  assert.equal(sim.step('b').compensation, { status: 'failed', attempt: 2, taskId: cid('b', 2), error: 'undo b broke again' });
  assert.is(sim.phase, 'compensating');
  sim.startCompensation('a');
  sim.send(sim.compensationReport('a', 'completed'));
  assert.is(sim.phase, 'compensation_failed');
  const msg = 'Step c failed: boom; compensation failed for b (undo b broke again): those effects were not undone and need attention.';
  assert.is(sim.x.error, msg);
  assert.is(sim.step('a').status, 'compensated');
  assert.equal(sim.x.trace.at(-1), { at: iso(sim.at), event: 'execution.compensation_failed', stepId: null, attempt: null, detail: msg });
  assert.equal(sim.x.completedAt, iso(sim.at));
});

test('a compensation the dispatcher cannot start fails at once and the saga ends in compensation_failed', () => {
  const def = seq('a', 'b');
  def.steps[0]!.compensate = { action: 'undo-a', agent: 'ghost' };
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  sim.fail('b', 'boom');
  sim.send({ type: 'execution.dispatched', compensationsFailed: [{ stepId: 'a', error: 'its agent ghost is not registered' }] }, { by: 'system' });
  assert.is(sim.phase, 'compensation_failed');
  assert.equal(sim.step('a').compensation, { status: 'failed', attempt: 0, taskId: null, error: 'its agent ghost is not registered' });
  assert.match(sim.x.error!, /compensation failed for a \(its agent ghost is not registered\)/);
});

test('a saga with nothing to undo ends failed at once', () => {
  const def = seq('a', 'b');
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  assert.equal(sim.fail('b', 'boom'), []);
  assert.is(sim.phase, 'failed');
  assert.equal(sim.traceLines.slice(-2), ['step.failed b 1', 'execution.failed - -']);
  assert.match(sim.x.trace.at(-1)!.detail, /Step b failed: boom; no completed step has a compensation, so there is nothing to undo/);
  assert.is(sim.x.error, 'Step b failed: boom');
});

// ---------------------------------------------------------------------------------------------
// Controls

test('pause removes the dispatch timer; results still count while paused; resume asks for a dispatch again', () => {
  const sim = new Sim(seq('a', 'b', 'c'));
  assert.equal(sim.send({ type: 'execution.pause' }, { by: 'lead' }), [cancelTimers('dispatch')]);
  assert.is(sim.phase, 'paused');
  assert.equal(sim.timers, {});
  assert.equal(sim.x.trace.at(-1)!.event, 'execution.paused');
  assert.is(sim.x.trace.at(-1)!.detail, 'by lead');
  sim.refuse({ type: 'execution.pause' });
  // The dispatch that raced the pause reports what it started.
  sim.start('a');
  assert.is(sim.step('a').status, 'running');
  assert.equal(sim.complete('a', 'done while paused'), [], 'no dispatch while paused');
  assert.equal(sim.statuses, { a: 'completed', b: 'queued', c: 'pending' });
  assert.equal(sim.timers, {});
  assert.equal(sim.send({ type: 'execution.resume' }), [schedule('dispatch', sim.at)]);
  assert.is(sim.phase, 'running');
  assert.equal(sim.traceLines.slice(-1), ['execution.resumed - -']);
  sim.refuse({ type: 'execution.resume' });
  sim.start('b');
  sim.complete('b');
  sim.start('c');
  sim.complete('c');
  assert.is(sim.phase, 'completed');
});

test('a retry timer that fires while paused queues the step without a dispatch', () => {
  const def = seq('a');
  def.steps[0]!.retryPolicy = { maxAttempts: 2, initialWaitMs: 100 };
  const sim = new Sim(def);
  sim.start('a');
  sim.fail('a');
  sim.send({ type: 'execution.pause' });
  assert.equal(sim.fire('retry:a'), []);
  assert.is(sim.step('a').status, 'queued');
  assert.equal(sim.send({ type: 'execution.resume' }), [schedule('dispatch', sim.at)]);
});

test('cancel cancels the tasks of running steps, every waiting step and every timer, and keeps the reason', () => {
  const sim = new Sim({
    name: 'c',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x' },
      { id: 'b', action: 'x', retryPolicy: { maxAttempts: 2, initialWaitMs: 1_000 } },
      { id: 'c', approval: { approvers: ['ann'], mode: 'unanimous', deadlineSeconds: 60 } },
      { id: 'd', action: 'x', dependsOn: ['a'] },
      { id: 'e', action: 'x' },
    ],
  });
  sim.start('a', 'b', 'c', 'e');
  sim.complete('e');
  sim.fail('b');
  const at = sim.at + 1_000;
  const fx = sim.send({ type: 'execution.cancel', reason: 'not needed' }, { at, by: 'lead' });
  assert.equal(fx, [cancelTask(tid('a', 1), 'the execution was cancelled: not needed'), cancelTimers('approval:c', 'retry:b')]);
  assert.is(sim.phase, 'cancelled');
  assert.equal(sim.statuses, { a: 'cancelled', b: 'cancelled', c: 'cancelled', d: 'cancelled', e: 'completed' });
  assert.equal([sim.x.cancelReason, sim.x.error, sim.x.completedAt], ['not needed', null, iso(at)]);
  assert.equal(sim.x.trace.at(-1), { at: iso(at), event: 'execution.cancelled', stepId: null, attempt: null, detail: 'not needed (by lead)' });
  sim.refuse({ type: 'execution.cancel' });
  sim.refuse({ type: 'execution.pause' });
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'step', taskId: tid('a', 1), status: 'cancelled' });
});

test('cancel during a saga cancels the running compensation task', () => {
  const def = seq('a', 'b');
  def.steps[0]!.compensate = { action: 'undo-a' };
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  sim.fail('b');
  sim.startCompensation('a');
  sim.refuse({ type: 'execution.pause' });
  const fx = sim.send({ type: 'execution.cancel' });
  assert.equal(fx, [cancelTask(cid('a', 1), 'the execution was cancelled: cancelled')]);
  assert.is(sim.phase, 'cancelled');
  assert.is(sim.x.cancelReason, 'cancelled');
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'compensation', taskId: cid('a', 1), status: 'cancelled' });
});

test('retry from a step resets it, its dependents and every step that did not complete; attempts keep counting and maxAttempts counts again', () => {
  const sim = new Sim({
    name: 'r',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x' },
      { id: 'b', action: 'x', dependsOn: ['a'] },
      { id: 'c', action: 'x', dependsOn: ['b'], retryPolicy: { maxAttempts: 2, initialWaitMs: 100 } },
      { id: 'x', action: 'x' },
      { id: 'y', action: 'x', dependsOn: ['x'] },
    ],
  });
  sim.start('a', 'x');
  sim.complete('a');
  sim.complete('x');
  sim.start('b', 'y');
  sim.complete('b');
  sim.refuse({ type: 'execution.retry', fromStep: 'b' });
  sim.start('c');
  sim.fail('c', 'one');
  sim.fire('retry:c');
  sim.start('c');
  sim.fail('c', 'two');
  assert.is(sim.phase, 'failed');
  assert.equal(sim.statuses, { a: 'completed', b: 'completed', c: 'failed', x: 'completed', y: 'cancelled' });
  assert.equal(sim.x.completionOrder, ['a', 'x', 'b']);

  sim.refuse({ type: 'execution.retry', fromStep: 'nope' });
  const at = sim.at + 1_000;
  assert.equal(sim.send({ type: 'execution.retry', fromStep: 'b' }, { at, by: 'lead' }), [schedule('dispatch', at)]);
  assert.is(sim.phase, 'running');
  assert.equal(sim.statuses, { a: 'completed', b: 'queued', c: 'pending', x: 'completed', y: 'queued' });
  assert.equal(sim.x.completionOrder, ['a', 'x']);
  assert.equal([sim.x.error, sim.x.output, sim.x.completedAt], [null, null, null]);
  const b = sim.step('b');
  assert.equal([b.attempt, b.taskId, b.output, b.startedAt, b.completedAt], [1, null, null, null, null], 'the attempt number is kept');
  assert.equal(sim.step('a').output, { from: 'a' }, 'completed steps outside the retry keep their output');
  assert.equal(sim.x.trace.at(-1), { at: iso(at), event: 'execution.retried', stepId: 'b', attempt: null, detail: 'from step b (by lead)' });

  sim.start('b', 'y');
  assert.equal([sim.step('b').taskId, sim.step('y').taskId], [tid('b', 2), tid('y', 2)], 'task ids never repeat');
  sim.complete('b');
  sim.complete('y');
  sim.start('c');
  assert.is(sim.step('c').taskId, tid('c', 3));
  sim.fail('c', 'three');
  assert.is(sim.step('c').status, 'retrying', 'maxAttempts counts from the retry: attempt 3 is the first of 2 more');
  sim.fire('retry:c');
  sim.start('c');
  assert.is(sim.step('c').taskId, tid('c', 4));
  sim.fail('c', 'four');
  assert.is(sim.phase, 'failed');
  assert.equal([sim.step('c').status, sim.step('c').attempt], ['failed', 4]);

  sim.send({ type: 'execution.retry', fromStep: 'c' });
  sim.start('c');
  assert.is(sim.step('c').taskId, tid('c', 5));
  sim.complete('c', 'fixed');
  assert.is(sim.phase, 'completed');
  assert.equal(Object.keys(sim.x.output!), ['a', 'b', 'c', 'x', 'y']);
});

test('retry after a saga runs the compensated steps again; a completed execution cannot be retried', () => {
  const def = seq('a', 'b');
  def.steps[0]!.compensate = { action: 'undo-a' };
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  sim.fail('b');
  sim.startCompensation('a');
  sim.send(sim.compensationReport('a', 'completed'));
  assert.is(sim.phase, 'failed');
  sim.send({ type: 'execution.retry', fromStep: 'b' });
  assert.equal(sim.statuses, { a: 'queued', b: 'pending' }, 'a was compensated, so it runs again');
  assert.equal(sim.step('a').compensation, null);
  sim.start('a');
  assert.is(sim.step('a').taskId, tid('a', 2));
  sim.complete('a');
  sim.start('b');
  sim.complete('b');
  assert.is(sim.phase, 'completed');
  sim.refuse({ type: 'execution.retry', fromStep: 'a' });
});

test('completeStep by hand cancels the running task, or the retry or approval timer, and the dependents go on', () => {
  const sim = new Sim({
    name: 'h',
    type: 'sequential',
    steps: [
      { id: 'a', action: 'x', retryPolicy: { maxAttempts: 3, initialWaitMs: 1_000 } },
      { id: 'b', action: 'x', retryPolicy: { maxAttempts: 3, initialWaitMs: 1_000 } },
      { id: 'c', approval: { approvers: ['ann', 'bob'], mode: 'unanimous', deadlineSeconds: 60 } },
      { id: 'd', action: 'x' },
      { id: 'e', action: 'x' },
    ],
  });
  sim.start('a');
  const at = sim.at + 1_000;
  assert.equal(sim.send({ type: 'execution.completeStep', stepId: 'a', output: { by: 'hand' } }, { at, by: 'lead' }), [
    cancelTask(tid('a', 1), 'step a was completed by lead'),
    schedule('dispatch', at),
  ]);
  assert.equal([sim.step('a').status, sim.step('a').output, sim.step('a').attempt], ['completed', { by: 'hand' }, 1]);
  assert.equal(sim.x.trace.at(-1), { at: iso(at), event: 'step.completed', stepId: 'a', attempt: 1, detail: 'completed by lead' });
  // Its task reports back after being cancelled: refused.
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'step', taskId: tid('a', 1), status: 'cancelled' });
  sim.start('b');
  sim.fail('b');
  assert.equal(sim.send({ type: 'execution.completeStep', stepId: 'b' }), [cancelTimers('retry:b'), schedule('dispatch', sim.at)]);
  assert.equal([sim.step('b').status, sim.step('b').output], ['completed', null]);
  sim.start('c');
  assert.equal(sim.send({ type: 'execution.completeStep', stepId: 'c', output: 'waived' }), [cancelTimers('approval:c'), schedule('dispatch', sim.at)]);
  // A queued step completed before it was ever started counts as attempt 1.
  assert.is(sim.step('d').status, 'queued');
  assert.equal(sim.send({ type: 'execution.completeStep', stepId: 'd' }), [], 'the dispatch already asked for covers e');
  assert.equal([sim.step('d').status, sim.step('d').attempt, sim.step('d').taskId], ['completed', 1, null]);
  assert.is(sim.step('e').status, 'queued');
  sim.refuse({ type: 'execution.completeStep', stepId: 'd' });
  sim.refuse({ type: 'execution.completeStep', stepId: 'nope' });
  sim.start('e');
  sim.complete('e');
  assert.is(sim.phase, 'completed');
  sim.refuse({ type: 'execution.completeStep', stepId: 'e' });
});

test('failStep by hand fails the step without retries, and its onFailure decides', () => {
  const def = seq('a', 'b');
  def.steps[0]!.retryPolicy = { maxAttempts: 5 };
  def.steps[0]!.onFailure = 'continue';
  const sim = new Sim(def);
  sim.refuse({ type: 'execution.failStep', stepId: 'b', error: 'not yet' });
  sim.start('a');
  const fx = sim.send({ type: 'execution.failStep', stepId: 'a', error: 'wrong data' }, { by: 'lead' });
  assert.equal(fx, [cancelTask(tid('a', 1), 'step a was failed by lead'), schedule('dispatch', sim.at)]);
  assert.equal([sim.step('a').status, sim.step('a').error, sim.step('a').attempt], ['failed', 'wrong data (failed by lead)', 1]);
  assert.is(sim.step('b').status, 'queued');
  sim.start('b');
  sim.send({ type: 'execution.failStep', stepId: 'b', error: 'no' });
  assert.is(sim.phase, 'failed');
  assert.is(sim.x.error, 'Step b failed: no (failed by lead)');
  sim.refuse({ type: 'execution.failStep', stepId: 'b', error: 'again' });
});

// ---------------------------------------------------------------------------------------------
// Approvals

/** Build, then an approval step with the given votes rule, then deploy. */
function approvalFlow(approval: NonNullable<WorkflowDefinition['steps'][number]['approval']>, onFailure?: 'continue'): Sim {
  const sim = new Sim({
    name: 'release',
    type: 'sequential',
    steps: [{ id: 'build', action: 'x' }, { id: 'approve', approval, ...(onFailure ? { onFailure } : {}) }, { id: 'deploy', action: 'x' }],
  });
  sim.start('build');
  sim.complete('build');
  return sim;
}

const vote = (approve: boolean, comment?: string): Body => ({ type: 'execution.vote', stepId: 'approve', approve, ...(comment ? { comment } : {}) });

test('an approval step waits for votes until its deadline; a majority of approvers passes it', () => {
  const sim = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'majority', deadlineSeconds: 3_600 });
  sim.refuse(vote(true), { by: 'ann' });
  const at = sim.at + 1_000;
  assert.equal(sim.send({ type: 'execution.dispatched', started: [{ stepId: 'approve', attempt: 1, taskId: null, input: null }] }, { at, by: 'system' }), [
    schedule('approval:approve', at + 3_600_000),
  ]);
  const s = sim.step('approve');
  assert.equal([s.status, s.attempt, s.taskId, s.dueAt, s.votes], ['awaiting_approval', 1, null, iso(at + 3_600_000), []]);
  assert.equal(sim.x.trace.at(-1)!.detail, `majority vote of ann, bob, cy until ${iso(at + 3_600_000)}`);

  sim.refuse(vote(true), { by: 'dan' });
  assert.equal(sim.send(vote(true), { by: 'ann' }), []);
  sim.refuse(vote(false), { by: 'ann' });
  assert.equal(sim.send(vote(false, 'not on a Friday'), { by: 'bob' }), [], 'one for, one against: undecided');
  assert.is(sim.step('approve').status, 'awaiting_approval');
  const passAt = sim.at + 1_000;
  assert.equal(sim.send(vote(true, 'ship it'), { at: passAt, by: 'cy' }), [cancelTimers('approval:approve'), schedule('dispatch', passAt)]);
  const done = sim.step('approve');
  const votes = [
    { by: 'ann', approve: true, comment: '', at: iso(at + 1_000) },
    { by: 'bob', approve: false, comment: 'not on a Friday', at: iso(at + 2_000) },
    { by: 'cy', approve: true, comment: 'ship it', at: iso(passAt) },
  ];
  assert.equal([done.status, done.output, done.votes, done.dueAt], ['completed', { approved: true, votes }, votes, null]);
  assert.equal(sim.x.trace.slice(-2).map((t) => t.detail), ['cy approves: ship it', 'approved (majority)']);
  assert.is(sim.step('deploy').status, 'queued');
  sim.refuse(vote(true), { by: 'dan' });
});

test('a majority against fails the approval step, and its onFailure fails the execution', () => {
  const sim = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'majority', deadlineSeconds: 60 });
  sim.start('approve');
  sim.send(vote(false), { by: 'ann' });
  assert.is(sim.step('approve').status, 'awaiting_approval');
  sim.send(vote(false), { by: 'cy' });
  assert.equal([sim.step('approve').status, sim.step('approve').error], ['failed', 'not approved (majority): ann, cy rejected']);
  assert.is(sim.phase, 'failed');
  assert.is(sim.x.error, 'Step approve failed: not approved (majority): ann, cy rejected');
  assert.equal(sim.statuses, { build: 'completed', approve: 'failed', deploy: 'cancelled' });
});

test('with an even number of approvers a tie is not a majority', () => {
  const sim = approvalFlow({ approvers: ['ann', 'bob'], mode: 'majority', deadlineSeconds: 60 });
  sim.start('approve');
  sim.send(vote(true), { by: 'ann' });
  assert.is(sim.step('approve').status, 'awaiting_approval');
  sim.send(vote(false), { by: 'bob' });
  assert.is(sim.step('approve').status, 'failed');
});

test('a unanimous vote fails at the first rejection and passes only when everyone approved', () => {
  const no = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'unanimous', deadlineSeconds: 60 });
  no.start('approve');
  no.send(vote(true), { by: 'ann' });
  no.send(vote(false), { by: 'bob' });
  assert.equal([no.step('approve').status, no.step('approve').error], ['failed', 'not approved (unanimous): bob rejected']);

  const yes = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'unanimous', deadlineSeconds: 60 });
  yes.start('approve');
  yes.send(vote(true), { by: 'ann' });
  yes.send(vote(true), { by: 'cy' });
  assert.is(yes.step('approve').status, 'awaiting_approval');
  yes.send(vote(true), { by: 'bob' });
  assert.is(yes.step('approve').status, 'completed');
  assert.is(yes.step('deploy').status, 'queued');
});

test('a weighted vote passes once the approving weight exceeds the threshold share and fails once it no longer can', () => {
  // Total weight 5; a share of 0.7 means more than 3.5 must approve.
  const approval = { approvers: ['ann', 'bob', 'cy'], mode: 'weighted' as const, weights: { ann: 3, bob: 1, cy: 1 }, threshold: 0.7, deadlineSeconds: 60 };
  const pass = approvalFlow(approval);
  pass.start('approve');
  pass.send(vote(true), { by: 'ann' });
  assert.is(pass.step('approve').status, 'awaiting_approval', '3 of 5 is not more than 3.5');
  pass.send(vote(false), { by: 'bob' });
  assert.is(pass.step('approve').status, 'awaiting_approval', '4 could still approve');
  pass.send(vote(true), { by: 'cy' });
  assert.is(pass.step('approve').status, 'completed', '4 of 5 is more than 3.5');

  const fail = approvalFlow(approval);
  fail.start('approve');
  fail.send(vote(true), { by: 'ann' });
  fail.send(vote(false), { by: 'bob' });
  fail.send(vote(false), { by: 'cy' });
  assert.equal([fail.step('approve').status, fail.step('approve').error], ['failed', 'not approved (weighted): bob, cy rejected']);

  // Default threshold (more than half) and default weight 1: ann's 3 of 5 pass alone.
  const heavy = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'weighted', weights: { ann: 3 }, deadlineSeconds: 60 });
  heavy.start('approve');
  heavy.send(vote(true), { by: 'ann' });
  assert.is(heavy.step('approve').status, 'completed');
  // bob and cy together (2 of 5) cannot.
  const light = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'weighted', weights: { ann: 3 }, deadlineSeconds: 60 });
  light.start('approve');
  light.send(vote(true), { by: 'bob' });
  light.send(vote(true), { by: 'cy' });
  assert.is(light.step('approve').status, 'awaiting_approval');
  light.send(vote(false), { by: 'ann' });
  assert.is(light.step('approve').status, 'failed');
});

test('a weighted vote with threshold 1 passes when every approver approves, and an approving vote never fails it', () => {
  const sim = approvalFlow({ approvers: ['ann', 'bob'], mode: 'weighted', weights: { ann: 2, bob: 1 }, threshold: 1, deadlineSeconds: 60 });
  sim.start('approve');
  sim.send(vote(true), { by: 'ann' });
  assert.is(sim.step('approve').status, 'awaiting_approval', `after one approving vote: ${sim.step('approve').error}`);
  sim.send(vote(true), { by: 'bob' });
  assert.is(sim.step('approve').status, 'completed');
});

test('the approval deadline times the step out, and its onFailure decides what follows', () => {
  const fails = approvalFlow({ approvers: ['ann', 'bob', 'cy'], mode: 'majority', deadlineSeconds: 30 });
  fails.start('approve');
  const due = fails.at + 30_000;
  fails.send(vote(true), { by: 'ann' });
  assert.equal(fails.timers, { 'approval:approve': due });
  fails.refuse({ type: 'timer.fired', name: 'approval:approve', fireAt: due - 1 }, { at: due, by: 'system' });
  fails.fire('approval:approve');
  assert.equal([fails.step('approve').status, fails.step('approve').error], ['timed_out', 'no decision by the approval deadline (1 of 3 voted)']);
  assert.is(fails.phase, 'failed');
  assert.is(fails.x.error, 'Step approve timed out: no decision by the approval deadline (1 of 3 voted)');

  const goesOn = approvalFlow({ approvers: ['ann'], mode: 'majority', deadlineSeconds: 30 }, 'continue');
  goesOn.start('approve');
  assert.equal(goesOn.fire('approval:approve'), [schedule('dispatch', goesOn.at)]);
  assert.equal(goesOn.statuses, { build: 'completed', approve: 'timed_out', deploy: 'queued' });
  goesOn.refuse(vote(true), { by: 'ann' });
});

// ---------------------------------------------------------------------------------------------
// Time

test('the execution timeout stops everything: running tasks cancelled, waiting steps cancelled, status timed_out', () => {
  const def = seq('a', 'b');
  def.config = { timeoutSeconds: 30 };
  const sim = new Sim(def);
  sim.start('a');
  sim.refuse({ type: 'timer.fired', name: 'timeout', fireAt: T0 + 29_000 }, { at: T0 + 30_000, by: 'system' });
  const fx = sim.fire('timeout');
  const msg = 'The execution did not finish within 30 s.';
  assert.equal(fx, [cancelTask(tid('a', 1), msg)]);
  assert.is(sim.phase, 'timed_out');
  assert.equal(sim.statuses, { a: 'cancelled', b: 'cancelled' });
  assert.equal([sim.x.error, sim.x.completedAt], [msg, iso(T0 + 30_000)]);
  assert.equal(sim.traceLines.at(-1), 'execution.timed_out - -');
  assert.equal(sim.timers, {});
  // A retry starts the clock again.
  const at = sim.at + 1_000;
  assert.equal(sim.send({ type: 'execution.retry', fromStep: 'a' }, { at }), [schedule('timeout', at + 30_000), schedule('dispatch', at)]);
  sim.start('a');
  assert.is(sim.step('a').taskId, tid('a', 2));
});

test('the execution timeout also applies while paused', () => {
  const def = seq('a');
  def.config = { timeoutSeconds: 5 };
  const sim = new Sim(def);
  sim.send({ type: 'execution.pause' });
  sim.fire('timeout');
  assert.equal([sim.phase, sim.step('a').status], ['timed_out', 'cancelled']);
});

test('the execution timeout during a saga cancels the running compensation task', () => {
  const def = seq('a', 'b');
  def.config = { timeoutSeconds: 60 };
  def.steps[0]!.compensate = { action: 'undo-a' };
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  sim.fail('b');
  sim.startCompensation('a');
  const fx = sim.fire('timeout');
  assert.is(sim.phase, 'timed_out');
  assert.equal(fx, [cancelTask(cid('a', 1), 'The execution did not finish within 60 s.')], 'the compensation task is cancelled as with execution.cancel');
});

// ---------------------------------------------------------------------------------------------
// Reports

test('a report from a stale attempt or another task is refused and changes nothing', () => {
  const def = seq('a', 'b');
  def.steps[0]!.retryPolicy = { maxAttempts: 3, initialWaitMs: 10 };
  const sim = new Sim(def);
  sim.start('a');
  const first = sim.report('a', 'failed', { error: 'x' });
  sim.send(first);
  sim.refuse(first, { by: 'system' });
  sim.fire('retry:a');
  sim.start('a');
  sim.refuse({ ...first, status: 'completed', result: 'late' });
  sim.refuse({ ...sim.report('a', 'completed'), taskId: 'someone-else.a.2' });
  sim.refuse({ ...sim.report('a', 'completed'), attempt: 1, taskId: tid('a', 1) });
  sim.refuse({ ...sim.report('a', 'completed'), role: 'compensation' });
  sim.refuse({ ...sim.report('a', 'completed'), stepId: 'nope' });
  sim.refuse({ type: 'execution.stepSettled', stepId: 'b', attempt: 2, role: 'step', taskId: tid('b', 2), status: 'completed' });
  sim.complete('a');
  sim.refuse(sim.report('a', 'completed'));
});

test('a report for the next attempt of a queued step counts as its start when the dispatch raced', () => {
  const sim = new Sim(seq('a', 'b'));
  assert.is(sim.step('a').status, 'queued');
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 2, role: 'step', taskId: tid('a', 2), status: 'completed' });
  sim.refuse({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'step', taskId: 'other', status: 'completed' });
  sim.send({ type: 'execution.pause' });
  const at = sim.at + 1_000;
  sim.send({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'step', taskId: tid('a', 1), status: 'completed', result: 'early', agent: 'ann' }, { at, by: 'system' });
  const a = sim.step('a');
  assert.equal([a.status, a.attempt, a.taskId, a.startedAt, a.output, a.agent], ['completed', 1, tid('a', 1), iso(at), 'early', 'ann']);
  assert.equal(sim.traceLines.slice(-2), ['step.started a 1', 'step.completed a 1']);
  // The dispatch that created the task reports it afterwards: nothing to start any more.
  const before = sim.x.steps;
  sim.send({ type: 'execution.dispatched', started: [{ stepId: 'a', attempt: 1, taskId: tid('a', 1), input: {} }] }, { by: 'system' });
  assert.equal(sim.x.steps, before);
});

test('a compensation report for the next attempt of a queued compensation counts as its start', () => {
  const def = seq('a', 'b');
  def.steps[0]!.compensate = { action: 'undo-a' };
  def.steps[1]!.onFailure = 'compensate';
  const sim = new Sim(def);
  sim.start('a');
  sim.complete('a');
  sim.start('b');
  sim.fail('b');
  sim.send({ type: 'execution.stepSettled', stepId: 'a', attempt: 1, role: 'compensation', taskId: cid('a', 1), status: 'completed' }, { by: 'system' });
  assert.equal([sim.phase, sim.step('a').status, sim.step('a').compensation!.taskId], ['failed', 'compensated', cid('a', 1)]);
});

// ---------------------------------------------------------------------------------------------
// The machine

const ACCEPTS: Record<string, string[]> = {
  new: ['execution.start'],
  running: ['execution.dispatched', 'execution.stepSettled', 'execution.vote', 'execution.pause', 'execution.cancel', 'execution.completeStep', 'execution.failStep', 'timer.fired'],
  paused: ['execution.dispatched', 'execution.stepSettled', 'execution.vote', 'execution.resume', 'execution.cancel', 'execution.completeStep', 'execution.failStep', 'timer.fired'],
  compensating: ['execution.dispatched', 'execution.stepSettled', 'execution.cancel', 'timer.fired'],
  completed: [],
  failed: ['execution.retry'],
  compensation_failed: ['execution.retry'],
  cancelled: ['execution.retry'],
  timed_out: ['execution.retry'],
};

/** A fresh execution brought to each state. */
function reachAll(): Record<string, Sim> {
  const out: Record<string, Sim> = { new: new Sim() };
  const saga = (): Sim => {
    const def = seq('a', 'b');
    def.config = { timeoutSeconds: 600 };
    def.steps[0]!.compensate = { action: 'undo-a' };
    def.steps[1]!.onFailure = 'compensate';
    const sim = new Sim(def);
    sim.start('a');
    sim.complete('a');
    sim.start('b');
    sim.fail('b');
    return sim;
  };
  out.running = new Sim(seq('a', 'b'));
  out.paused = new Sim(seq('a', 'b'));
  out.paused.send({ type: 'execution.pause' });
  out.compensating = saga();
  out.completed = new Sim(seq('a'));
  out.completed.start('a');
  out.completed.complete('a');
  out.failed = new Sim(seq('a'));
  out.failed.start('a');
  out.failed.fail('a');
  out.compensation_failed = saga();
  out.compensation_failed.startCompensation('a');
  out.compensation_failed.send(out.compensation_failed.compensationReport('a', 'failed'));
  out.cancelled = new Sim(seq('a'));
  out.cancelled.send({ type: 'execution.cancel' });
  const def = seq('a');
  def.config = { timeoutSeconds: 1 };
  out.timed_out = new Sim(def);
  out.timed_out.fire('timeout');
  return out;
}

test('each state lists exactly the events it accepts, and refuses every other event without a change', () => {
  const sims = reachAll();
  for (const [state, sim] of Object.entries(sims)) {
    assert.is(sim.phase, state);
    const node = (executionMachine.states as Record<string, { ownEvents: string[] }>)[state]!;
    assert.equal([...node.ownEvents].sort(), [...ACCEPTS[state]!].sort(), `events of ${state}`);
    for (const body of candidates(sim)) {
      if (!ACCEPTS[state]!.includes(body.type)) sim.refuse(body);
    }
  }
  // Finished executions keep no timers.
  for (const state of ['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out']) assert.equal(sims[state]!.timers, {}, state);
});

test('a persisted snapshot survives JSON and accepts the same next events with the same results', () => {
  const sim = new Sim({
    name: 'p',
    type: 'parallel',
    steps: [
      { id: 'a', action: 'x', retryPolicy: { maxAttempts: 2, initialWaitMs: 100 }, compensate: { action: 'undo' } },
      { id: 'v', approval: { approvers: ['ann', 'bob'], mode: 'majority', deadlineSeconds: 60 } },
      { id: 'z', action: 'x', dependsOn: ['a', 'v'], onFailure: 'compensate' },
    ],
    config: { timeoutSeconds: 600 },
  });
  sim.start('a', 'v');
  sim.fail('a');
  sim.send({ type: 'execution.vote', stepId: 'v', approve: true, comment: 'ok' }, { by: 'ann' });
  const persisted = JSON.parse(JSON.stringify(executionMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(executionMachine, { snapshot: persisted }).start();
  const rest: ExecutionEvent[] = [];
  const next = (body: Body, by = 'system') => {
    const e = sim.event(body, { by });
    rest.push(e);
    sim.send(body, { at: e.at, by });
    actor.send(e);
  };
  next({ type: 'timer.fired', name: 'retry:a', fireAt: sim.timers['retry:a']! });
  next({ type: 'execution.dispatched', started: [{ stepId: 'a', attempt: 2, taskId: tid('a', 2), input: {} }] });
  next({ type: 'execution.vote', stepId: 'v', approve: true }, 'bob');
  next({ type: 'execution.stepSettled', stepId: 'a', attempt: 2, role: 'step', taskId: tid('a', 2), status: 'completed', result: 1 });
  next({ type: 'execution.dispatched', started: [{ stepId: 'z', attempt: 1, taskId: tid('z', 1), input: {} }] });
  next({ type: 'execution.stepSettled', stepId: 'z', attempt: 1, role: 'step', taskId: tid('z', 1), status: 'failed', error: 'no' });
  assert.is(sim.phase, 'compensating');
  assert.equal(json(actor.getPersistedSnapshot()), json(executionMachine.getPersistedSnapshot(sim.snapshot)));
  actor.stop();
});

test('replaying the stored events reproduces the live state exactly', () => {
  const sims = reachAll();
  for (const [state, sim] of Object.entries(sims)) {
    const stored = sim.events.map((e) => ({ data: json(e) as unknown as Record<string, unknown> }));
    assert.equal(json(replayPersisted(executionMachine, stored)), json(executionMachine.getPersistedSnapshot(sim.snapshot)), state);
  }
});

test.run();

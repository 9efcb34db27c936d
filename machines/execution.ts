import type {
  Execution,
  ExecutionStatus,
  RetryPolicy,
  Step,
  StepRun,
  StepStatus,
  WorkflowDefinition,
} from '../protocol/workflows.js';
import { dependencies, dependents } from './workflowGraph.js';
import { iso, type Effect } from './effects.js';

/**
 * The reducer behind the execution machine: what each event does to a workflow execution.
 * Pure: time arrives in events, task ids are derived from the execution id, step and attempt.
 */

/** The execution record an execution actor holds; `status` and `version` come from the actor. */
export type ExecutionData = Omit<Execution, 'status' | 'version'>;

/** Machine context. */
export interface ExecutionContext {
  execution: ExecutionData;
  definition: WorkflowDefinition;
  phase: ExecutionStatus | 'new';
  /** Per step: the attempt number before the current run of it (a retry from a step starts counting again). */
  floors: Record<string, number>;
  /** Durable timers the execution expects, by name. */
  timers: Record<string, number>;
}

/** A step started (or an approval opened) by the dispatcher. */
export interface Started {
  stepId: string;
  attempt: number;
  taskId: string | null;
  input: unknown;
}

/** Every event the execution machine accepts (all stamped with `at` and `by`). */
export type ExecutionEvent = { at: number; by: string } & (
  | {
      type: 'execution.start';
      id: string;
      tenantId: string;
      workflowId: string;
      workflowVersion: number;
      definition: WorkflowDefinition;
      input: Record<string, unknown>;
      workspaceId?: string;
    }
  | {
      type: 'execution.dispatched';
      started?: Started[];
      skipped?: { stepId: string; reason: string }[];
      failed?: { stepId: string; error: string }[];
      compensations?: Started[];
      compensationsFailed?: { stepId: string; error: string }[];
    }
  | {
      type: 'execution.stepSettled';
      stepId: string;
      attempt: number;
      role: 'step' | 'compensation';
      taskId: string;
      status: 'completed' | 'failed' | 'cancelled' | 'timed_out';
      result?: unknown;
      error?: string | null;
      agent?: string | null;
    }
  | { type: 'execution.vote'; stepId: string; approve: boolean; comment?: string }
  | { type: 'execution.pause' }
  | { type: 'execution.resume' }
  | { type: 'execution.cancel'; reason?: string }
  | { type: 'execution.retry'; fromStep: string }
  | { type: 'execution.completeStep'; stepId: string; output?: unknown }
  | { type: 'execution.failStep'; stepId: string; error: string }
  | { type: 'timer.fired'; name: string; fireAt: number }
);

/** The task id of a step's attempt (or its compensation's): derived, so a repeated dispatch finds the same task. */
export function stepTaskId(executionId: string, stepId: string, attempt: number, role: 'step' | 'compensation'): string {
  return `${executionId}.${stepId}.${role === 'step' ? '' : 'c'}${attempt}`;
}

/** The wait before attempt `next` (2 = the first retry). */
export function retryDelay(policy: RetryPolicy | undefined, next: number): number {
  const initial = policy?.initialWaitMs ?? 1000;
  const max = policy?.maxWaitMs ?? 60_000;
  const n = next - 1;
  const wait = (policy?.backoff ?? 'exponential') === 'linear' ? initial * n : initial * 2 ** (n - 1);
  return Math.min(wait, max);
}

const DONE_STEP: ReadonlySet<StepStatus> = new Set(['completed', 'skipped']);
const FINISHED_STEP: ReadonlySet<StepStatus> = new Set(['completed', 'skipped', 'failed', 'cancelled', 'timed_out', 'compensated']);
const ACTIVE_PHASES: ReadonlySet<string> = new Set(['running', 'paused']);
const RETRYABLE_PHASES: ReadonlySet<string> = new Set(['failed', 'compensation_failed', 'cancelled', 'timed_out']);

/** The outcome of one event: the new context and the effects, or null when the event is refused. */
export interface Reduction {
  context: ExecutionContext;
  effects: Effect[];
}

/** A mutable copy of the context that an event works on. */
class Draft {
  readonly x: ExecutionContext;
  readonly effects: Effect[] = [];
  readonly at: number;
  readonly by: string;
  #deps: Map<string, string[]> | null = null;

  constructor(ctx: ExecutionContext, at: number, by: string) {
    this.x = structuredClone(ctx);
    this.at = at;
    this.by = by;
  }

  get e(): ExecutionData {
    return this.x.execution;
  }

  get deps(): Map<string, string[]> {
    this.#deps ??= dependencies(this.x.definition);
    return this.#deps;
  }

  step(id: string): StepRun | undefined {
    return this.e.steps.find((s) => s.id === id);
  }

  def(id: string): Step {
    return this.x.definition.steps.find((s) => s.id === id)!;
  }

  trace(event: string, stepId: string | null, attempt: number | null, detail: string): void {
    this.e.trace.push({ at: iso(this.at), event, stepId, attempt, detail });
  }

  schedule(name: string, fireAt: number): void {
    this.x.timers[name] = fireAt;
    this.effects.push({ type: 'fx.timer.schedule', name, fireAt });
  }

  cancelTimers(names: string[]): void {
    const present = names.filter((n) => n in this.x.timers);
    for (const n of present) delete this.x.timers[n];
    if (present.length) this.effects.push({ type: 'fx.timer.cancel', names: present });
  }

  /** A timer that fired is consumed by its firing: forget it without cancelling. */
  consumed(name: string): void {
    delete this.x.timers[name];
  }

  cancelTask(taskId: string | null, reason: string): void {
    if (taskId) this.effects.push({ type: 'fx.send', kind: 'task', id: taskId, event: { type: 'task.cancel', reason } });
  }

  finish(phase: ExecutionStatus, error: string | null): void {
    this.x.phase = phase;
    this.e.completedAt = iso(this.at);
    if (error !== null) this.e.error = error;
    this.cancelTimers(Object.keys(this.x.timers));
  }

  /** Asks the dispatcher to look at queued work now (one timer covers every queued step). */
  dispatchSoon(): void {
    if (this.x.timers.dispatch === undefined) this.schedule('dispatch', this.at);
  }
}

/** Dependencies of a step that are satisfied: done, or failed with `onFailure: continue`. */
function satisfied(d: Draft, id: string): boolean {
  const s = d.step(id);
  if (!s) return true;
  if (DONE_STEP.has(s.status)) return true;
  return (s.status === 'failed' || s.status === 'timed_out') && d.def(id).onFailure === 'continue';
}

/** Queues steps whose dependencies are met; completes the execution when nothing is left. */
function advance(d: Draft): void {
  if (d.x.phase !== 'running' && d.x.phase !== 'paused') return;
  for (const s of d.e.steps) {
    if (s.status !== 'pending') continue;
    if ((d.deps.get(s.id) ?? []).every((dep) => satisfied(d, dep))) s.status = 'queued';
  }
  if (d.x.phase === 'running' && d.e.steps.some((s) => s.status === 'queued' || s.compensation?.status === 'queued')) d.dispatchSoon();
  const open = d.e.steps.some((s) => !FINISHED_STEP.has(s.status) || (s.status === 'failed' && d.def(s.id).onFailure !== 'continue'));
  if (!open) {
    const output: Record<string, unknown> = {};
    for (const s of d.e.steps) if (s.status === 'completed') Object.defineProperty(output, s.id, { value: s.output, enumerable: true, writable: true, configurable: true });
    d.e.output = output;
    d.trace('execution.completed', null, null, `${d.e.steps.filter((s) => s.status === 'completed').length} of ${d.e.steps.length} steps completed`);
    d.finish('completed', null);
  }
}

/** Stops the work in flight: running steps' tasks are cancelled, waiting steps cancelled. */
function stopWork(d: Draft, reason: string, except?: string): void {
  for (const s of d.e.steps) {
    if (s.id === except) continue;
    if (s.status === 'running') d.cancelTask(s.taskId, reason);
    if (!FINISHED_STEP.has(s.status)) {
      s.status = 'cancelled';
      s.completedAt = iso(d.at);
      s.dueAt = null;
    }
  }
  d.cancelTimers(Object.keys(d.x.timers).filter((n) => n !== 'timeout'));
}

/** Ends a saga early (cancel, timeout): running compensations are cancelled, the others will not run. */
function stopCompensations(d: Draft, reason: string): void {
  for (const s of d.e.steps) {
    const c = s.compensation;
    if (!c || c.status === 'completed' || c.status === 'failed') continue;
    if (c.status === 'running') d.cancelTask(c.taskId, reason);
    s.compensation = { ...c, status: 'failed', error: `not finished: ${reason}` };
  }
}

/** A step failed for good: its `onFailure` decides what happens to the execution. */
function stepFailed(d: Draft, s: StepRun, status: 'failed' | 'timed_out' | 'cancelled', error: string): void {
  s.status = status === 'cancelled' ? 'failed' : status;
  s.error = error;
  s.completedAt = iso(d.at);
  s.dueAt = null;
  d.trace(`step.${s.status}`, s.id, s.attempt, error);
  const policy = d.def(s.id).onFailure ?? 'fail_workflow';
  if (policy === 'continue') return advance(d);
  const message = `Step ${s.id} ${s.status === 'timed_out' ? 'timed out' : 'failed'}: ${error}`;
  if (policy === 'fail_workflow') {
    stopWork(d, `the execution failed: ${message}`);
    d.trace('execution.failed', null, null, message);
    return d.finish('failed', message);
  }
  startCompensation(d, message);
}

/** The saga unwinds: every completed step with a compensation, in reverse completion order, one at a time. */
function startCompensation(d: Draft, message: string): void {
  stopWork(d, `the execution is compensating: ${message}`);
  d.e.error = message;
  const toUndo = [...d.e.completionOrder].reverse().filter((id) => d.step(id)?.status === 'completed' && d.def(id).compensate);
  if (toUndo.length === 0) {
    d.trace('execution.failed', null, null, `${message}; no completed step has a compensation, so there is nothing to undo`);
    return d.finish('failed', message);
  }
  d.trace('execution.compensating', null, null, `${message}; compensating ${toUndo.join(', ')} in reverse order`);
  for (const id of toUndo) {
    const s = d.step(id)!;
    s.status = 'compensating';
    s.compensation = { status: 'queued', attempt: 0, taskId: null, error: null };
  }
  d.x.phase = 'compensating';
  nextCompensation(d);
}

/** Starts the next compensation, or ends the saga. */
function nextCompensation(d: Draft): void {
  if (d.e.steps.some((s) => s.compensation && (s.compensation.status === 'running' || s.compensation.status === 'retrying'))) return;
  const order = [...d.e.completionOrder].reverse();
  const next = order.map((id) => d.step(id)!).find((s) => s.compensation?.status === 'queued');
  if (next) {
    d.dispatchSoon();
    return;
  }
  const failed = d.e.steps.filter((s) => s.compensation?.status === 'failed');
  if (failed.length) {
    const detail = failed.map((s) => `${s.id} (${s.compensation!.error})`).join('; ');
    const message = `${d.e.error ?? 'The execution failed'}; compensation failed for ${detail}: those effects were not undone and need attention.`;
    d.trace('execution.compensation_failed', null, null, message);
    d.finish('compensation_failed', message);
  } else {
    d.trace('execution.failed', null, null, `${d.e.error ?? 'failed'}; every completed step was compensated`);
    d.finish('failed', null);
  }
}

/** The compensation the saga is waiting on (the first queued one in reverse completion order). */
export function pendingCompensation(ctx: ExecutionContext): StepRun | undefined {
  const steps = ctx.execution.steps;
  return [...ctx.execution.completionOrder]
    .reverse()
    .map((id) => steps.find((s) => s.id === id)!)
    .find((s) => s.compensation?.status === 'queued');
}

function approvalOutcome(d: Draft, s: StepRun): 'pass' | 'fail' | null {
  const a = d.def(s.id).approval!;
  const n = a.approvers.length;
  const yes = s.votes.filter((v) => v.approve);
  const no = s.votes.filter((v) => !v.approve);
  switch (a.mode) {
    case 'majority':
      if (yes.length * 2 > n) return 'pass';
      return (n - no.length) * 2 <= n ? 'fail' : null;
    case 'unanimous':
      if (no.length > 0) return 'fail';
      return yes.length === n ? 'pass' : null;
    case 'weighted': {
      const w = (id: string) => a.weights?.[id] ?? 1;
      const total = a.approvers.reduce((sum, id) => sum + w(id), 0);
      const need = (a.threshold ?? 0.5) * total;
      const yesW = yes.reduce((sum, v) => sum + w(v.by), 0);
      const noW = no.reduce((sum, v) => sum + w(v.by), 0);
      // More than the threshold's share of the weight passes, and so does all of it (threshold 1).
      const passes = (weight: number) => weight > need || weight === total;
      if (passes(yesW)) return 'pass';
      return passes(total - noW) ? null : 'fail';
    }
  }
}

function completeStep(d: Draft, s: StepRun, output: unknown, agent: string | null, how: string): void {
  s.status = 'completed';
  s.output = output ?? null;
  s.error = null;
  s.agent = agent ?? s.agent;
  s.completedAt = iso(d.at);
  s.dueAt = null;
  d.e.completionOrder = [...d.e.completionOrder.filter((id) => id !== s.id), s.id];
  d.trace('step.completed', s.id, s.attempt, how);
  advance(d);
}

/** Reduces one event; null when the execution does not accept it now. */
export function reduce(ctx: ExecutionContext, event: ExecutionEvent): Reduction | null {
  const phase = ctx.phase;
  const d = new Draft(ctx, event.at, event.by);
  const e = d.e;
  switch (event.type) {
    case 'execution.start': {
      if (phase !== 'new') return null;
      const def = event.definition;
      d.x.definition = def;
      d.x.execution = {
        id: event.id,
        tenantId: event.tenantId,
        workflowId: event.workflowId,
        workflowVersion: event.workflowVersion,
        workflowName: def.name,
        workspaceId: event.workspaceId ?? null,
        input: event.input,
        output: null,
        error: null,
        steps: def.steps.map((s) => ({
          id: s.id,
          status: 'pending',
          attempt: 0,
          taskId: null,
          input: null,
          output: null,
          error: null,
          agent: null,
          startedAt: null,
          completedAt: null,
          dueAt: null,
          votes: [],
          compensation: null,
        })),
        completionOrder: [],
        trace: [],
        createdBy: event.by,
        createdAt: iso(event.at),
        updatedAt: iso(event.at),
        completedAt: null,
        cancelReason: null,
      };
      d.x.phase = 'running';
      d.x.floors = {};
      d.trace('execution.started', null, null, `workflow ${def.name} version ${event.workflowVersion}`);
      if (def.config?.timeoutSeconds) d.schedule('timeout', event.at + def.config.timeoutSeconds * 1000);
      advance(d);
      break;
    }

    case 'execution.dispatched': {
      if (phase === 'new' || !(ACTIVE_PHASES.has(phase) || phase === 'compensating')) return null;
      d.consumed('dispatch');
      for (const st of event.started ?? []) {
        const s = d.step(st.stepId);
        if (!s || s.status !== 'queued' || st.attempt !== s.attempt + 1) continue;
        s.attempt = st.attempt;
        s.taskId = st.taskId;
        s.input = st.input ?? null;
        s.startedAt = iso(d.at);
        s.error = null;
        const approval = d.def(s.id).approval;
        if (approval && st.taskId === null) {
          s.status = 'awaiting_approval';
          s.votes = [];
          const due = d.at + approval.deadlineSeconds * 1000;
          s.dueAt = iso(due);
          d.schedule(`approval:${s.id}`, due);
          d.trace('step.awaiting_approval', s.id, s.attempt, `${approval.mode} vote of ${approval.approvers.join(', ')} until ${iso(due)}`);
        } else {
          s.status = 'running';
          d.trace('step.started', s.id, s.attempt, `task ${st.taskId}`);
        }
      }
      for (const sk of event.skipped ?? []) {
        const s = d.step(sk.stepId);
        if (!s || s.status !== 'queued') continue;
        s.status = 'skipped';
        s.completedAt = iso(d.at);
        d.trace('step.skipped', s.id, null, sk.reason);
      }
      for (const f of event.failed ?? []) {
        const s = d.step(f.stepId);
        if (!s || s.status !== 'queued') continue;
        s.attempt++;
        stepFailed(d, s, 'failed', f.error);
        if (d.x.phase !== 'running' && d.x.phase !== 'paused') break;
      }
      for (const c of event.compensations ?? []) {
        const s = d.step(c.stepId);
        if (!s?.compensation || s.compensation.status !== 'queued' || c.attempt !== s.compensation.attempt + 1) continue;
        s.compensation = { status: 'running', attempt: c.attempt, taskId: c.taskId, error: null };
        d.trace('compensation.started', s.id, c.attempt, `task ${c.taskId}`);
      }
      for (const c of event.compensationsFailed ?? []) {
        const s = d.step(c.stepId);
        if (!s?.compensation || s.compensation.status !== 'queued') continue;
        s.compensation = { ...s.compensation, status: 'failed', error: c.error };
        s.status = 'completed';
        d.trace('compensation.failed', s.id, s.compensation.attempt, c.error);
      }
      if (d.x.phase === 'compensating') nextCompensation(d);
      else advance(d);
      break;
    }

    case 'execution.stepSettled': {
      const s = d.step(event.stepId);
      if (!s) return null;
      // A task may settle before its start is recorded (its dispatch raced a pause, say): the
      // report of the attempt the execution was about to start counts as its start too.
      const expectedTask = (attempt: number) => stepTaskId(e.id, s.id, attempt, event.role);
      if (event.role === 'step' && s.status === 'queued' && event.attempt === s.attempt + 1 && event.taskId === expectedTask(event.attempt)) {
        Object.assign(s, { status: 'running', attempt: event.attempt, taskId: event.taskId, startedAt: iso(d.at) });
        d.trace('step.started', s.id, s.attempt, `task ${event.taskId}`);
      }
      const c0 = s.compensation;
      if (event.role === 'compensation' && c0?.status === 'queued' && event.attempt === c0.attempt + 1 && event.taskId === expectedTask(event.attempt)) {
        s.compensation = { status: 'running', attempt: event.attempt, taskId: event.taskId, error: null };
        d.trace('compensation.started', s.id, event.attempt, `task ${event.taskId}`);
      }
      if (event.role === 'compensation') {
        const c = s.compensation;
        if (phase !== 'compensating' || !c || c.status !== 'running' || c.taskId !== event.taskId) return null;
        if (event.status === 'completed') {
          s.compensation = { ...c, status: 'completed', error: null };
          s.status = 'compensated';
          d.trace('compensation.completed', s.id, c.attempt, `task ${event.taskId}`);
        } else {
          const policy = d.def(s.id).compensate!.retryPolicy;
          const error = event.error ?? event.status;
          if (c.attempt < (policy?.maxAttempts ?? 1)) {
            const due = d.at + retryDelay(policy, c.attempt + 1);
            s.compensation = { ...c, status: 'retrying', error };
            d.schedule(`cretry:${s.id}`, due);
            d.trace('compensation.retrying', s.id, c.attempt, `${error}; attempt ${c.attempt + 1} at ${iso(due)}`);
          } else {
            // The step's effects are still in place: it stays completed, with its failed undo.
            s.compensation = { ...c, status: 'failed', error };
            s.status = 'completed';
            d.trace('compensation.failed', s.id, c.attempt, error);
          }
        }
        nextCompensation(d);
        break;
      }
      if (!ACTIVE_PHASES.has(phase) || s.status !== 'running' || s.taskId !== event.taskId) return null;
      if (event.status === 'completed') {
        completeStep(d, s, event.result, event.agent ?? null, `task ${event.taskId} completed`);
        break;
      }
      s.agent = event.agent ?? s.agent;
      const error = event.error ?? `the task was ${event.status.replace('_', ' ')}`;
      const policy = d.def(s.id).retryPolicy;
      const used = s.attempt - (d.x.floors[s.id] ?? 0);
      if (used < (policy?.maxAttempts ?? 1)) {
        const due = d.at + retryDelay(policy, used + 1);
        s.status = 'retrying';
        s.error = error;
        s.dueAt = iso(due);
        d.schedule(`retry:${s.id}`, due);
        d.trace('step.retrying', s.id, s.attempt, `${error}; attempt ${s.attempt + 1} at ${iso(due)}`);
        break;
      }
      stepFailed(d, s, event.status === 'timed_out' ? 'timed_out' : 'failed', error);
      break;
    }

    case 'execution.vote': {
      if (!ACTIVE_PHASES.has(phase)) return null;
      const s = d.step(event.stepId);
      const a = s ? d.def(s.id).approval : undefined;
      if (!s || !a || s.status !== 'awaiting_approval' || !a.approvers.includes(event.by) || s.votes.some((v) => v.by === event.by)) return null;
      s.votes.push({ by: event.by, approve: event.approve, comment: event.comment ?? '', at: iso(d.at) });
      d.trace('step.vote', s.id, s.attempt, `${event.by} ${event.approve ? 'approves' : 'rejects'}${event.comment ? `: ${event.comment}` : ''}`);
      const outcome = approvalOutcome(d, s);
      if (outcome) d.cancelTimers([`approval:${s.id}`]);
      if (outcome === 'pass') completeStep(d, s, { approved: true, votes: s.votes }, null, `approved (${a.mode})`);
      else if (outcome === 'fail') stepFailed(d, s, 'failed', `not approved (${a.mode}): ${s.votes.filter((v) => !v.approve).map((v) => v.by).join(', ')} rejected`);
      break;
    }

    case 'execution.pause': {
      if (phase !== 'running') return null;
      d.x.phase = 'paused';
      d.cancelTimers(['dispatch']);
      d.trace('execution.paused', null, null, `by ${event.by}`);
      break;
    }

    case 'execution.resume': {
      if (phase !== 'paused') return null;
      d.x.phase = 'running';
      d.trace('execution.resumed', null, null, `by ${event.by}`);
      advance(d);
      break;
    }

    case 'execution.cancel': {
      if (!ACTIVE_PHASES.has(phase) && phase !== 'compensating') return null;
      const reason = event.reason ?? 'cancelled';
      stopCompensations(d, `the execution was cancelled: ${reason}`);
      stopWork(d, `the execution was cancelled: ${reason}`);
      e.cancelReason = reason;
      d.trace('execution.cancelled', null, null, `${reason} (by ${event.by})`);
      d.finish('cancelled', null);
      break;
    }

    case 'execution.retry': {
      if (!RETRYABLE_PHASES.has(phase)) return null;
      const from = d.step(event.fromStep);
      if (!from) return null;
      const again = new Set([from.id, ...dependents(d.deps, from.id)]);
      for (const s of e.steps) {
        if (!again.has(s.id) && s.status === 'completed') continue;
        if (!again.has(s.id) && s.status === 'skipped') continue;
        d.x.floors[s.id] = s.attempt;
        Object.assign(s, { status: 'pending', taskId: null, input: null, output: null, error: null, startedAt: null, completedAt: null, dueAt: null, votes: [], compensation: null });
      }
      e.completionOrder = e.completionOrder.filter((id) => d.step(id)!.status === 'completed');
      e.error = null;
      e.output = null;
      e.completedAt = null;
      e.cancelReason = null;
      d.x.phase = 'running';
      d.trace('execution.retried', event.fromStep, null, `from step ${event.fromStep} (by ${event.by})`);
      if (d.x.definition.config?.timeoutSeconds) d.schedule('timeout', event.at + d.x.definition.config.timeoutSeconds * 1000);
      advance(d);
      break;
    }

    case 'execution.completeStep': {
      if (!ACTIVE_PHASES.has(phase)) return null;
      const s = d.step(event.stepId);
      if (!s || !['queued', 'running', 'awaiting_approval', 'retrying'].includes(s.status)) return null;
      if (s.status === 'running') d.cancelTask(s.taskId, `step ${s.id} was completed by ${event.by}`);
      d.cancelTimers([`retry:${s.id}`, `approval:${s.id}`]);
      if (s.attempt === 0) s.attempt = 1;
      completeStep(d, s, event.output ?? null, null, `completed by ${event.by}`);
      break;
    }

    case 'execution.failStep': {
      if (!ACTIVE_PHASES.has(phase)) return null;
      const s = d.step(event.stepId);
      if (!s || !['queued', 'running', 'awaiting_approval', 'retrying'].includes(s.status)) return null;
      if (s.status === 'running') d.cancelTask(s.taskId, `step ${s.id} was failed by ${event.by}`);
      d.cancelTimers([`retry:${s.id}`, `approval:${s.id}`]);
      if (s.attempt === 0) s.attempt = 1;
      stepFailed(d, s, 'failed', `${event.error} (failed by ${event.by})`);
      break;
    }

    case 'timer.fired': {
      if (ctx.timers[event.name] !== event.fireAt) return null;
      d.consumed(event.name);
      const [kind, stepId] = event.name.split(':') as [string, string | undefined];
      if (kind === 'dispatch') break;
      if (kind === 'timeout') {
        if (!ACTIVE_PHASES.has(phase) && phase !== 'compensating') return null;
        const message = `The execution did not finish within ${d.x.definition.config?.timeoutSeconds} s.`;
        stopCompensations(d, message);
        stopWork(d, message);
        d.trace('execution.timed_out', null, null, message);
        d.finish('timed_out', message);
        break;
      }
      const s = stepId ? d.step(stepId) : undefined;
      if (!s) return null;
      if (kind === 'retry' && s.status === 'retrying') {
        s.status = 'queued';
        s.dueAt = null;
        advance(d);
      } else if (kind === 'cretry' && s.compensation?.status === 'retrying') {
        s.compensation = { ...s.compensation, status: 'queued' };
        nextCompensation(d);
      } else if (kind === 'approval' && s.status === 'awaiting_approval') {
        stepFailed(d, s, 'timed_out', `no decision by the approval deadline (${s.votes.length} of ${d.def(s.id).approval!.approvers.length} voted)`);
      } else return null;
      break;
    }
  }
  d.e.updatedAt = iso(d.at);
  return { context: d.x, effects: d.effects };
}

/** The execution as clients see it. */
export function executionResource(ctx: ExecutionContext, version: number): Execution {
  return { ...ctx.execution, status: ctx.phase === 'new' ? 'running' : ctx.phase, version };
}

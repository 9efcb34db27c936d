import { assign, emit, enqueueActions, setup } from 'xstate';
import type { AssignmentStrategy, Delegation, DelegationKind, Distribution, LeaseExpiry, Task, TaskOrigin, TaskPriority } from '../protocol/model.js';
import { initialActivations, markActive, settle, type SubtaskOutcome } from './distribution.js';
import { iso, type Effect, type Stamp, type TimerFired } from './effects.js';

/** The task record a task actor holds; `status` and `version` come from the actor itself. */
export type TaskData = Omit<Task, 'status' | 'a2aState' | 'version'>;

/** Machine context: the task plus the `fireAt` of each durable timer it expects. */
export interface TaskContext {
  task: TaskData;
  timers: Record<string, number>;
  /** While staged: the agent the task goes to when activated. */
  stagedAssignee?: string | null;
}

/** Fields a task is created with (already validated and defaulted by the caller). */
export interface TaskCreateFields {
  id: string;
  tenantId: string;
  /** The task's type (`type` itself names the event). */
  taskType: string;
  title: string;
  description?: string;
  priority?: TaskPriority;
  parameters?: Record<string, unknown>;
  requiredCapabilities?: string[];
  assignTo?: string;
  parentTaskId?: string;
  maxRetries?: number;
  retryBackoffMs?: number;
  timeoutSeconds?: number;
  /** ISO 8601. */
  deadline?: string;
  autoAssign?: boolean;
  assignmentStrategy?: AssignmentStrategy;
  offerTimeoutSeconds?: number;
  leaseSeconds?: number;
  onLeaseExpired?: LeaseExpiry;
  /** Makes the task the parent of a distributed task. */
  distribution?: Distribution;
  /** Created invisible, to be activated (or deleted) later: how task trees appear all at once. */
  staged?: boolean;
  /** The workflow execution step this task runs, if any: it is told when the task settles. */
  origin?: TaskOrigin;
}

/** Fields `task.update` may change. */
export interface TaskChanges {
  title?: string;
  description?: string;
  priority?: TaskPriority;
  parameters?: Record<string, unknown>;
  requiredCapabilities?: string[];
  maxRetries?: number;
  retryBackoffMs?: number;
  timeoutSeconds?: number;
  deadline?: string | null;
}

/** Every event a task machine accepts. All are stamped with `at` and `by`. */
export type TaskEvent = Stamp &
  (
    | ({ type: 'task.create' } & TaskCreateFields)
    | { type: 'task.update'; changes: TaskChanges }
    | { type: 'task.assign'; agentId: string; reason?: string; kind?: DelegationKind; strategy?: string }
    | { type: 'task.delegate'; agentId: string; reason?: string; kind?: DelegationKind }
    | { type: 'task.activate'; input?: unknown }
    | { type: 'task.awaitAgent'; reason: string; retryAt: number }
    | { type: 'task.renewLease'; until: number }
    | ({ type: 'task.subtaskSettled' } & SubtaskOutcome)
    | { type: 'task.accept' }
    | { type: 'task.reject'; reason?: string }
    | { type: 'task.start' }
    | { type: 'task.progress'; percent?: number; message?: string }
    | { type: 'task.requestInput'; prompt: string; schema?: unknown }
    | { type: 'task.provideInput'; input: unknown }
    | { type: 'task.complete'; result?: unknown }
    | { type: 'task.fail'; error: string; retryable?: boolean }
    | { type: 'task.retry' }
    | { type: 'task.cancel'; reason?: string }
    | { type: 'task.archive' }
    | { type: 'task.delete' }
    | Omit<TimerFired, keyof Stamp>
  );

/** The default base back-off before an automatic retry (doubled per attempt). */
export const DEFAULT_RETRY_BACKOFF_MS = 1000;
/** The longest an automatic retry waits, whatever the attempt. */
export const MAX_RETRY_BACKOFF_MS = 3_600_000;

const emptyTask: TaskData = {
  id: '',
  tenantId: '',
  type: '',
  title: '',
  description: '',
  priority: 'normal',
  parameters: {},
  requiredCapabilities: [],
  createdBy: '',
  assignedTo: null,
  parentTaskId: null,
  origin: null,
  progress: null,
  inputRequest: null,
  inputs: [],
  result: null,
  error: null,
  maxRetries: 0,
  retryCount: 0,
  retryBackoffMs: DEFAULT_RETRY_BACKOFF_MS,
  retryAt: null,
  timeoutSeconds: null,
  deadline: null,
  delegations: [],
  rejections: [],
  autoAssign: false,
  assignmentStrategy: null,
  assignmentRound: 0,
  waitingForAgent: null,
  offerTimeoutSeconds: null,
  offerExpiresAt: null,
  leaseSeconds: null,
  leaseExpiresAt: null,
  onLeaseExpired: 'reoffer',
  releasedBy: null,
  distribution: null,
  archived: false,
  createdAt: '',
  updatedAt: '',
  assignedAt: null,
  acceptedAt: null,
  startedAt: null,
  completedAt: null,
};

type E<T extends TaskEvent['type']> = Extract<TaskEvent, { type: T }>;

/** The back-off before automatic retry number `attempt` (0-based): base × 2^attempt, capped. */
export function retryDelayMs(baseMs: number, attempt: number): number {
  return Math.min(baseMs * 2 ** attempt, MAX_RETRY_BACKOFF_MS);
}

const touch = (task: TaskData, at: number, patch: Partial<TaskData>): TaskData => ({ ...task, ...patch, updatedAt: iso(at) });

/** The statuses a subtask reports to its parent when it settles. */
type Settled = 'completed' | 'failed' | 'cancelled' | 'timed_out';

/** What an operation changes besides the task: timers to (re)arm or cancel, messages to send. */
interface Change {
  task?: TaskData;
  schedule?: Record<string, number>;
  cancel?: string[];
  send?: { kind: string; id: string; event: { type: string } & Record<string, unknown> }[];
  /** Forget every timer (the task is finished). */
  clearTimers?: boolean;
}

/** Applies a {@link Change}: effects are emitted and the timer memory follows them. */
function applyChange(ctx: TaskContext, c: Change): { context: Pick<TaskContext, 'task' | 'timers'>; effects: Effect[] } {
  const effects: Effect[] = [];
  let timers = { ...ctx.timers };
  const cancel = c.clearTimers ? Object.keys(timers) : (c.cancel ?? []).filter((n) => n in timers && !(c.schedule && n in c.schedule));
  if (cancel.length > 0) effects.push({ type: 'fx.timer.cancel', names: cancel });
  if (c.clearTimers) timers = {};
  else for (const n of cancel) delete timers[n];
  for (const [name, fireAt] of Object.entries(c.schedule ?? {})) {
    effects.push({ type: 'fx.timer.schedule', name, fireAt });
    timers[name] = fireAt;
  }
  for (const m of c.send ?? []) effects.push({ type: 'fx.send', kind: m.kind, id: m.id, event: m.event });
  return { context: { task: c.task ?? ctx.task, timers }, effects };
}

/**
 * The messages a task sends when it settles: to its parent (a subtask of a distributed task) and
 * to the workflow execution whose step it runs.
 */
function parentNotice(task: TaskData, status: Settled): NonNullable<Change['send']> {
  const out: NonNullable<Change['send']> = [];
  const outcome = { status, result: task.result, error: task.error, agent: task.assignedTo };
  if (task.parentTaskId) {
    out.push({ kind: 'task', id: task.parentTaskId, event: { type: 'task.subtaskSettled', subtaskId: task.id, ...outcome } });
  }
  if (task.origin) {
    const o = task.origin;
    out.push({
      kind: 'execution',
      id: o.executionId,
      event: { type: 'execution.stepSettled', stepId: o.stepId, attempt: o.attempt, role: o.role, taskId: task.id, ...outcome },
    });
  }
  return out;
}

/** Cancels a parent's unsettled subtasks. */
function cancelSubtasks(task: TaskData, ids: string[] | null, reason: string): NonNullable<Change['send']> {
  const d = task.distribution;
  if (!d) return [];
  const targets = ids ?? d.subtasks.filter((s) => s.status === 'waiting' || s.status === 'active').map((s) => s.id);
  return targets.map((id) => ({ kind: 'task', id, event: { type: 'task.cancel', reason } }));
}

/** Offers to an auto-assigned task that just became pending: the assignment timer fires at once. */
function assignNow(task: TaskData, at: number): Record<string, number> {
  return task.autoAssign ? { assign: at } : {};
}

/** Timers of an offer: its expiry, if the task has an offer timeout. */
function offerTimers(task: TaskData, at: number): Record<string, number> {
  return task.offerTimeoutSeconds !== null ? { offer: at + task.offerTimeoutSeconds * 1000 } : {};
}

function leaseUntil(task: TaskData, at: number): number | null {
  return task.leaseSeconds !== null ? at + task.leaseSeconds * 1000 : null;
}

/** A task handed to `to`: the chain of custody grows by one link. */
function handOver(task: TaskData, at: number, to: string, reason: string, kind: DelegationKind): TaskData {
  const link: Delegation = { from: task.assignedTo ?? task.releasedBy?.agentId ?? null, to, reason, kind, at: iso(at) };
  const offerUntil = task.offerTimeoutSeconds !== null ? iso(at + task.offerTimeoutSeconds * 1000) : null;
  return touch(task, at, {
    assignedTo: to,
    assignedAt: iso(at),
    acceptedAt: null,
    startedAt: null,
    leaseExpiresAt: null,
    offerExpiresAt: offerUntil,
    waitingForAgent: null,
    releasedBy: null,
    // A question the previous holder asked is theirs; the new holder starts without it.
    inputRequest: null,
    delegations: [...task.delegations, link],
  });
}

/** The agent gives the task back (declined, let the offer lapse, or lost its lease). */
function release(task: TaskData, at: number, why: 'rejected' | 'offer_expired' | 'lease_expired', reason: string, by: string): TaskData {
  const holder = task.assignedTo ?? by;
  return touch(task, at, {
    assignedTo: null,
    assignedAt: null,
    acceptedAt: null,
    startedAt: null,
    offerExpiresAt: null,
    leaseExpiresAt: null,
    inputRequest: null,
    releasedBy: { agentId: holder, why },
    rejections: [...task.rejections, { by: holder, reason, at: iso(at), round: task.assignmentRound }],
  });
}

/** How an attempt that was failed (by the agent, its timeout or a lost lease) ends. */
function failAttempt(ctx: TaskContext, at: number, error: string, retryable: boolean, final: Settled): Change {
  const t = ctx.task;
  const retry = retryable && t.retryCount < t.maxRetries;
  const base = touch(t, at, { error, completedAt: iso(at), inputRequest: null, leaseExpiresAt: null, offerExpiresAt: null });
  if (retry) {
    const fireAt = at + retryDelayMs(t.retryBackoffMs, t.retryCount);
    return { task: { ...base, retryAt: iso(fireAt) }, cancel: ['timeout', 'lease', 'offer'], schedule: { retry: fireAt } };
  }
  return { task: base, clearTimers: true, send: parentNotice(base, final) };
}

/**
 * What a running attempt (in progress or waiting for input) shares: hand-over, lease renewal and
 * lapse, failure, and the attempt timeout (retried while attempts remain).
 */
const running = {
  'task.delegate': { target: 'assigned', actions: 'assignTo' },
  'task.renewLease': { actions: 'renewLease' },
  'task.fail': { target: '#task.failed', actions: 'failAttempt' },
  'timer.fired': [
    { guard: 'leaseLapsedToReoffer', target: 'pending', actions: 'leaseLapsed' },
    { guard: { type: 'isTimer', params: { name: 'lease' } }, target: '#task.failed', actions: 'failAttempt' },
    { guard: 'attemptTimerWithRetriesLeft', target: '#task.failed', actions: 'failAttempt' },
    { guard: { type: 'isTimer', params: { name: 'timeout' } }, target: '#task.timed_out', actions: 'failAttempt' },
  ],
} as const;

/** A finished task (completed, cancelled, timed out) can only be archived or deleted. */
const finished = {
  on: {
    'task.archive': { guard: 'notArchived', actions: 'archive' },
    'task.delete': 'deleted',
  },
} as const;

/**
 * The lifecycle of one task (DESIGN §2): `pending → assigned → accepted → in_progress →
 * completed`, with rejection back to pending, input requests, failures that retry with durable
 * back-off while attempts remain, per-attempt timeouts, an absolute deadline, cancellation,
 * archiving and deletion. An agent holding a task does so under a lease; an offer may expire;
 * auto-assigned tasks ask the server for an agent through a durable `assign` timer whenever they
 * are pending. A parent of a distributed task coordinates its subtasks (see `distribution.ts`),
 * and every subtask reports to its parent when it settles. Pure: time and ids arrive inside
 * events; timers and messages are effects.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(taskMachine);
 * const [next] = transition(taskMachine, s, { type: 'task.create', id: 't1', tenantId: 'acme',
 *   taskType: 'review', title: 'Review PR 7', at: Date.now(), by: 'lead' });
 * next.value; // 'pending'
 * ```
 */
export const taskMachine = setup({
  types: {
    context: {} as TaskContext,
    events: {} as TaskEvent,
    emitted: {} as Effect,
  },
  guards: {
    staged: ({ event }) => (event as E<'task.create'>).staged === true,
    hasAssignee: ({ event }) => typeof (event as E<'task.create'>).assignTo === 'string',
    stagedWithAssignee: ({ context }) => typeof context.stagedAssignee === 'string',
    isParent: ({ context }) => context.task.distribution !== null,
    isTimer: ({ context, event }, params: { name: string }) => {
      const e = event as E<'timer.fired'>;
      return e.name === params.name && context.timers[params.name] === e.fireAt;
    },
    notArchived: ({ context }) => !context.task.archived,
    archivableAfterFailure: ({ context }) => context.task.retryAt === null && !context.task.archived,
    leaseLapsedToReoffer: ({ context, event }) => {
      const e = event as E<'timer.fired'>;
      return e.name === 'lease' && context.timers.lease === e.fireAt && context.task.onLeaseExpired === 'reoffer';
    },
    attemptTimerWithRetriesLeft: ({ context, event }) => {
      const e = event as E<'timer.fired'>;
      return e.name === 'timeout' && context.timers.timeout === e.fireAt && context.task.retryCount < context.task.maxRetries;
    },
    /** A report about a subtask this parent still waits for; anything else is refused (and dropped by the outbox). */
    relevantReport: ({ context, event }) => {
      const d = context.task.distribution;
      const slot = d?.subtasks.find((x) => x.id === (event as E<'task.subtaskSettled'>).subtaskId);
      return slot !== undefined && (slot.status === 'waiting' || slot.status === 'active');
    },
    notParent: ({ context }) => context.task.distribution === null,
    parentDecides: ({ context, event }, params: { verdict: 'complete' | 'fail' }) =>
      context.task.distribution !== null && settle(context.task.distribution, event as E<'task.subtaskSettled'>).verdict === params.verdict,
  },
  actions: {
    create: assign(({ event }) => {
      const e = event as E<'task.create'>;
      const at = iso(e.at);
      return {
        task: {
          ...emptyTask,
          id: e.id,
          tenantId: e.tenantId,
          type: e.taskType,
          title: e.title,
          description: e.description ?? '',
          priority: e.priority ?? 'normal',
          parameters: e.parameters ?? {},
          requiredCapabilities: e.requiredCapabilities ?? [],
          createdBy: e.by,
          parentTaskId: e.parentTaskId ?? null,
          origin: e.origin ?? null,
          maxRetries: e.maxRetries ?? 0,
          retryBackoffMs: e.retryBackoffMs ?? DEFAULT_RETRY_BACKOFF_MS,
          timeoutSeconds: e.timeoutSeconds ?? null,
          deadline: e.deadline ?? null,
          autoAssign: e.autoAssign ?? false,
          assignmentStrategy: e.assignmentStrategy ?? null,
          offerTimeoutSeconds: e.offerTimeoutSeconds ?? null,
          leaseSeconds: e.leaseSeconds ?? null,
          onLeaseExpired: e.onLeaseExpired ?? 'reoffer',
          distribution: e.distribution ?? null,
          createdAt: at,
          updatedAt: at,
        },
        timers: {},
        ...(e.staged ? { stagedAssignee: e.assignTo ?? null } : {}),
      };
    }),
    /** Entering pending: auto-assigned tasks ask for an agent at once. */
    armAssign: enqueueActions(({ context, event, enqueue }) => {
      const r = applyChange(context, { schedule: assignNow(context.task, event.at) });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    /** Activation of a staged task; pipelines and reducers receive their input as `parameters.input`. */
    activate: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.activate'>;
      const t = context.task;
      let task = touch(t, e.at, e.input === undefined ? {} : { parameters: { ...t.parameters, input: e.input } });
      const change: Change = {};
      if (task.distribution) {
        const ids = initialActivations(task.distribution);
        task = { ...task, distribution: markActive(task.distribution, ids), startedAt: iso(e.at) };
        change.send = ids.map((id) => ({ kind: 'task', id, event: { type: 'task.activate' } }));
      } else if (context.stagedAssignee) {
        task = handOver(task, e.at, context.stagedAssignee, 'assigned at creation', 'manual');
        change.schedule = offerTimers(task, e.at);
      } else {
        change.schedule = assignNow(task, e.at);
      }
      change.task = task;
      const r = applyChange(context, change);
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign({ ...r.context, stagedAssignee: null });
    }),
    assignTo: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.assign'> | E<'task.create'> | E<'task.delegate'>;
      const to = e.type === 'task.create' ? e.assignTo! : e.agentId;
      const reason =
        e.type === 'task.create' ? 'assigned at creation' : e.reason || (e.type === 'task.delegate' ? 'delegated' : 'assigned');
      const kind = (e.type !== 'task.create' && e.kind) || 'manual';
      const task = handOver(context.task, e.at, to, reason, kind);
      const r = applyChange(context, { task, cancel: ['assign', 'offer', 'lease', 'timeout'], schedule: offerTimers(task, e.at) });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    awaitAgent: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.awaitAgent'>;
      const t = context.task;
      const task = touch(t, e.at, {
        assignmentRound: t.assignmentRound + 1,
        waitingForAgent: { reason: e.reason, since: t.waitingForAgent?.since ?? iso(e.at), retryAt: iso(Math.max(e.retryAt, e.at)) },
      });
      const r = applyChange(context, { task, schedule: { assign: Math.max(e.retryAt, e.at) } });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    update: assign(({ context, event }) => {
      const e = event as E<'task.update'>;
      const { deadline, ...rest } = e.changes;
      const patch: Partial<TaskData> = { ...rest };
      if (deadline !== undefined) patch.deadline = deadline;
      return { task: touch(context.task, e.at, patch) };
    }),
    accept: enqueueActions(({ context, event, enqueue }) => {
      const until = leaseUntil(context.task, event.at);
      const task = touch(context.task, event.at, { acceptedAt: iso(event.at), offerExpiresAt: null, leaseExpiresAt: until === null ? null : iso(until) });
      const r = applyChange(context, { task, cancel: ['offer'], schedule: until === null ? {} : { lease: until } });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    reject: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.reject'>;
      const task = release(context.task, e.at, 'rejected', e.reason ?? '', e.by);
      const r = applyChange(context, { task, cancel: ['offer', 'lease'], schedule: assignNow(task, e.at) });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    offerLapsed: enqueueActions(({ context, event, enqueue }) => {
      const task = release(context.task, event.at, 'offer_expired', `did not accept within ${context.task.offerTimeoutSeconds} s`, 'system');
      const { offer: _o, ...timers } = context.timers;
      const r = applyChange({ ...context, timers }, { task, schedule: assignNow(task, event.at) });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    leaseLapsed: enqueueActions(({ context, event, enqueue }) => {
      const holder = context.task.assignedTo;
      const task = release(context.task, event.at, 'lease_expired', `lease of ${context.task.leaseSeconds} s expired without renewal`, 'system');
      const { lease: _l, ...timers } = context.timers;
      const r = applyChange({ ...context, timers }, { task: { ...task, releasedBy: { agentId: holder ?? 'unknown', why: 'lease_expired' } }, cancel: ['timeout'], schedule: assignNow(task, event.at) });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    renewLease: enqueueActions(({ context, event, enqueue }) => {
      const until = (event as E<'task.renewLease'>).until;
      if (context.task.leaseSeconds === null) return;
      const r = applyChange(context, { task: touch(context.task, event.at, { leaseExpiresAt: iso(until) }), schedule: { lease: until } });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    start: enqueueActions(({ context, event, enqueue }) => {
      const task = touch(context.task, event.at, { startedAt: iso(event.at), error: null });
      const schedule: Record<string, number> = {};
      if (task.timeoutSeconds !== null) schedule.timeout = event.at + task.timeoutSeconds * 1000;
      const r = applyChange(context, { task, schedule });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    progress: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.progress'>;
      const prev = context.task.progress ?? { percent: 0, message: '' };
      // Progress proves the agent is alive: it renews the lease too.
      const until = leaseUntil(context.task, e.at);
      const task = touch(context.task, e.at, {
        progress: { percent: e.percent ?? prev.percent, message: e.message ?? prev.message },
        ...(until !== null && 'lease' in context.timers ? { leaseExpiresAt: iso(until) } : {}),
      });
      const r = applyChange(context, { task, schedule: until !== null && 'lease' in context.timers ? { lease: until } : {} });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    requestInput: assign(({ context, event }) => {
      const e = event as E<'task.requestInput'>;
      return { task: touch(context.task, e.at, { inputRequest: { prompt: e.prompt, schema: e.schema ?? null } }) };
    }),
    provideInput: assign(({ context, event }) => {
      const e = event as E<'task.provideInput'>;
      const prompt = context.task.inputRequest?.prompt ?? '';
      return {
        task: touch(context.task, e.at, {
          inputRequest: null,
          inputs: [...context.task.inputs, { prompt, input: e.input, by: e.by, at: iso(e.at) }],
        }),
      };
    }),
    complete: enqueueActions(({ context, event, enqueue }) => {
      const e = event as E<'task.complete'>;
      const task = touch(context.task, e.at, { result: e.result ?? null, completedAt: iso(e.at), inputRequest: null, leaseExpiresAt: null });
      const r = applyChange(context, { task, clearTimers: true, send: [...parentNotice(task, 'completed'), ...cancelSubtasks(task, null, 'the parent task was completed')] });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    /** A failure reported by the agent, a lapsed attempt timeout or a lost lease under the `fail` policy. */
    failAttempt: enqueueActions(({ context, event, enqueue }) => {
      let error: string;
      let retryable = true;
      let final: Settled = 'failed';
      if (event.type === 'task.fail') {
        error = event.error;
        retryable = event.retryable !== false;
      } else if ((event as E<'timer.fired'>).name === 'lease') {
        error = `The agent ${context.task.assignedTo} stopped renewing its lease of ${context.task.leaseSeconds} s.`;
      } else {
        error = `The attempt did not finish within ${context.task.timeoutSeconds} s.`;
        final = 'timed_out';
      }
      // A fired timer is consumed by its own firing: it is forgotten, not cancelled.
      const timers = { ...context.timers };
      if (event.type === 'timer.fired') delete timers[event.name];
      const r = applyChange({ ...context, timers }, failAttempt({ ...context, timers }, event.at, error, retryable, final));
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    reopen: enqueueActions(({ context, event, enqueue }) => {
      const t = context.task;
      const task = touch(t, event.at, {
        retryCount: t.retryCount + 1,
        retryAt: null,
        assignedTo: null,
        assignedAt: null,
        acceptedAt: null,
        startedAt: null,
        completedAt: null,
        progress: null,
        assignmentRound: t.assignmentRound + 1,
        waitingForAgent: null,
        releasedBy: null,
      });
      // The retry timer is consumed by its own firing; a manual retry cancels it.
      const manual = event.type === 'task.retry';
      const { retry: _r, ...rest } = context.timers;
      const schedule = assignNow(task, event.at);
      // A task that failed for good forgot its timers: a manual retry arms the deadline again.
      if (task.deadline && !('deadline' in rest)) schedule.deadline = Date.parse(task.deadline);
      const r = applyChange(manual ? context : { ...context, timers: rest }, { task, cancel: manual ? ['retry'] : [], schedule });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    syncDeadline: emit(({ context }) =>
      context.task.deadline
        ? { type: 'fx.timer.schedule' as const, name: 'deadline', fireAt: Date.parse(context.task.deadline) }
        : { type: 'fx.timer.cancel' as const, names: ['deadline'] },
    ),
    rememberDeadline: assign(({ context }) => {
      const { deadline: _d, ...timers } = context.timers;
      return { timers: context.task.deadline ? { ...timers, deadline: Date.parse(context.task.deadline) } : timers };
    }),
    /** The task ends for good (cancelled, timed out, deleted): timers go, the parent hears, subtasks stop. */
    end: enqueueActions(({ context, event, enqueue }, params: { status: 'cancelled' | 'timed_out' | 'deleted' }) => {
      const t = context.task;
      let task = t;
      if (params.status === 'cancelled') {
        task = touch(t, event.at, {
          error: event.type === 'task.cancel' ? (event.reason ?? 'cancelled') : t.error,
          completedAt: t.completedAt ?? iso(event.at),
          retryAt: null,
          inputRequest: null,
          leaseExpiresAt: null,
          offerExpiresAt: null,
        });
      } else if (params.status === 'timed_out') {
        task = touch(t, event.at, {
          error: `The deadline ${t.deadline} passed.`,
          completedAt: iso(event.at),
          retryAt: null,
          inputRequest: null,
          leaseExpiresAt: null,
          offerExpiresAt: null,
        });
      }
      const why = params.status === 'timed_out' ? 'the parent task timed out' : 'the parent task was cancelled';
      const r = applyChange(context, {
        task,
        clearTimers: true,
        send: [...parentNotice(task, params.status === 'timed_out' ? 'timed_out' : 'cancelled'), ...cancelSubtasks(task, null, why)],
      });
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    /** A subtask settled: record it, start what comes next, or decide the parent. */
    settleSubtask: enqueueActions(({ context, event, enqueue }) => {
      const t = context.task;
      if (!t.distribution) return;
      const e = event as E<'task.subtaskSettled'>;
      const step = settle(t.distribution, e);
      let task = touch(t, e.at, { distribution: step.distribution });
      const change: Change = {
        send: step.activate.map((a) => ({
          kind: 'task',
          id: a.id,
          event: a.input === undefined ? { type: 'task.activate' } : { type: 'task.activate', input: a.input },
        })),
      };
      if (step.verdict === 'complete') {
        task = touch(task, e.at, { result: step.result ?? null, error: null, completedAt: iso(e.at) });
        Object.assign(change, { clearTimers: true });
        change.send!.push(...parentNotice(task, 'completed'), ...cancelSubtasks(task, step.cancel, 'the parent task was completed'));
      } else if (step.verdict === 'fail') {
        task = touch(task, e.at, { error: step.error ?? 'subtasks failed', completedAt: iso(e.at) });
        Object.assign(change, { clearTimers: true });
        change.send!.push(...parentNotice(task, 'failed'), ...cancelSubtasks(task, step.cancel, 'the parent task failed'));
      } else {
        change.send!.push(...cancelSubtasks(task, step.cancel, 'no longer needed'));
      }
      change.task = task;
      const r = applyChange(context, change);
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
    archive: assign(({ context, event }) => ({ task: touch(context.task, event.at, { archived: true }) })),
  },
}).createMachine({
  id: 'task',
  initial: 'draft',
  context: { task: emptyTask, timers: {} },
  states: {
    draft: {
      on: {
        'task.create': [
          { guard: 'staged', target: 'staged', actions: 'create' },
          { guard: 'hasAssignee', target: 'live.assigned', actions: ['create', 'assignTo', 'syncDeadline', 'rememberDeadline'] },
          { target: 'live.pending', actions: ['create', 'armAssign', 'syncDeadline', 'rememberDeadline'] },
        ],
      },
    },
    /** Created but not visible yet: a part of a task tree that is still being built, or waiting for its turn. */
    staged: {
      on: {
        'task.activate': [
          { guard: 'isParent', target: 'live.in_progress', actions: ['activate', 'syncDeadline', 'rememberDeadline'] },
          { guard: 'stagedWithAssignee', target: 'live.assigned', actions: ['activate', 'syncDeadline', 'rememberDeadline'] },
          { target: 'live.pending', actions: ['activate', 'syncDeadline', 'rememberDeadline'] },
        ],
        'task.cancel': { target: 'cancelled', actions: { type: 'end', params: { status: 'cancelled' } } },
        'task.delete': { target: 'deleted', actions: { type: 'end', params: { status: 'deleted' } } },
      },
    },
    live: {
      initial: 'pending',
      on: {
        'task.update': { actions: ['update', 'syncDeadline', 'rememberDeadline'] },
        'task.cancel': { target: 'cancelled', actions: { type: 'end', params: { status: 'cancelled' } } },
        'timer.fired': {
          guard: { type: 'isTimer', params: { name: 'deadline' } },
          target: 'timed_out',
          actions: { type: 'end', params: { status: 'timed_out' } },
        },
        'task.delete': { target: 'deleted', actions: { type: 'end', params: { status: 'deleted' } } },
        'task.subtaskSettled': [
          { guard: { type: 'parentDecides', params: { verdict: 'complete' } }, target: 'completed', actions: 'settleSubtask' },
          { guard: { type: 'parentDecides', params: { verdict: 'fail' } }, target: 'failed', actions: 'settleSubtask' },
          { guard: 'relevantReport', actions: 'settleSubtask' },
        ],
      },
      states: {
        pending: {
          on: {
            'task.assign': { target: 'assigned', actions: 'assignTo' },
            'task.awaitAgent': { actions: 'awaitAgent' },
          },
        },
        assigned: {
          on: {
            'task.assign': { target: 'assigned', actions: 'assignTo' },
            'task.delegate': { target: 'assigned', actions: 'assignTo' },
            'task.accept': { target: 'accepted', actions: 'accept' },
            'task.reject': { target: 'pending', actions: 'reject' },
            'timer.fired': { guard: { type: 'isTimer', params: { name: 'offer' } }, target: 'pending', actions: 'offerLapsed' },
          },
        },
        accepted: {
          on: {
            'task.start': { target: 'in_progress', actions: 'start' },
            'task.reject': { target: 'pending', actions: 'reject' },
            'task.delegate': { target: 'assigned', actions: 'assignTo' },
            'task.renewLease': { actions: 'renewLease' },
            'task.fail': { target: '#task.failed', actions: 'failAttempt' },
            'timer.fired': [
              { guard: 'leaseLapsedToReoffer', target: 'pending', actions: 'leaseLapsed' },
              { guard: { type: 'isTimer', params: { name: 'lease' } }, target: '#task.failed', actions: 'failAttempt' },
            ],
          },
        },
        in_progress: {
          on: {
            'task.progress': { actions: 'progress' },
            'task.requestInput': { target: 'input_required', actions: 'requestInput' },
            'task.complete': { target: '#task.completed', actions: 'complete' },
            ...running,
          },
        },
        input_required: {
          on: {
            'task.provideInput': { target: 'in_progress', actions: 'provideInput' },
            'task.progress': { actions: 'progress' },
            ...running,
          },
        },
      },
    },
    failed: {
      on: {
        // A parent is decided by its subtasks: it cannot be reopened on its own.
        'task.retry': { guard: 'notParent', target: 'live.pending', actions: 'reopen' },
        'timer.fired': [
          { guard: { type: 'isTimer', params: { name: 'retry' } }, target: 'live.pending', actions: 'reopen' },
          {
            guard: { type: 'isTimer', params: { name: 'deadline' } },
            target: 'timed_out',
            actions: { type: 'end', params: { status: 'timed_out' } },
          },
        ],
        'task.cancel': { target: 'cancelled', actions: { type: 'end', params: { status: 'cancelled' } } },
        // A task waiting for its automatic retry is not finished yet.
        'task.archive': { guard: 'archivableAfterFailure', actions: 'archive' },
        'task.delete': { target: 'deleted', actions: { type: 'end', params: { status: 'deleted' } } },
      },
    },
    completed: finished,
    cancelled: finished,
    timed_out: finished,
    deleted: { type: 'final' },
  },
});

import { assign, emit, setup } from 'xstate';
import type { Delegation, DelegationKind, Task, TaskPriority } from '../protocol/model.js';
import { iso, type Effect, type Stamp, type TimerFired } from './effects.js';

/** The task record a task actor holds; `status` and `version` come from the actor itself. */
export type TaskData = Omit<Task, 'status' | 'a2aState' | 'version'>;

/** Machine context: the task plus the `fireAt` of each durable timer it expects. */
export interface TaskContext {
  task: TaskData;
  timers: Record<string, number>;
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
    | { type: 'task.assign'; agentId: string; reason?: string; kind?: DelegationKind }
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

/**
 * How a running attempt (in progress or waiting for input) ends badly: a failure, or its timeout.
 * Either is retried after a durable back-off while attempts remain.
 */
const attemptEndings = {
  'task.fail': [
    {
      guard: 'retriesLeft',
      target: '#task.failed',
      actions: ['fail', 'cancelAttemptTimeout', 'clearAttemptTimeout', 'scheduleRetry', 'rememberRetry'],
    },
    { target: '#task.failed', actions: ['fail', 'cancelAllTimers', 'forgetTimers'] },
  ],
  'timer.fired': [
    {
      guard: 'attemptTimerWithRetriesLeft',
      target: '#task.failed',
      actions: ['failByTimeout', 'clearAttemptTimeout', 'scheduleRetry', 'rememberRetry'],
    },
    {
      guard: { type: 'isTimer', params: { name: 'timeout' } },
      target: '#task.timed_out',
      actions: ['failByTimeout', 'cancelAllTimers', 'forgetTimers'],
    },
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
 * archiving and deletion. Pure: time and ids arrive inside events; timers are effects.
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
    hasAssignee: ({ event }) => typeof (event as E<'task.create'>).assignTo === 'string',
    retriesLeft: ({ context, event }) =>
      (event as E<'task.fail'>).retryable !== false && context.task.retryCount < context.task.maxRetries,
    isTimer: ({ context, event }, params: { name: string }) => {
      const e = event as E<'timer.fired'>;
      return e.name === params.name && context.timers[params.name] === e.fireAt;
    },
    notArchived: ({ context }) => !context.task.archived,
    archivableAfterFailure: ({ context }) => context.task.retryAt === null && !context.task.archived,
    attemptTimerWithRetriesLeft: ({ context, event }) => {
      const e = event as E<'timer.fired'>;
      return e.name === 'timeout' && context.timers.timeout === e.fireAt && context.task.retryCount < context.task.maxRetries;
    },
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
          maxRetries: e.maxRetries ?? 0,
          retryBackoffMs: e.retryBackoffMs ?? DEFAULT_RETRY_BACKOFF_MS,
          timeoutSeconds: e.timeoutSeconds ?? null,
          deadline: e.deadline ?? null,
          createdAt: at,
          updatedAt: at,
        },
        timers: {},
      };
    }),
    assignTo: assign(({ context, event }) => {
      const e = event as E<'task.assign'> | E<'task.create'>;
      const to = e.type === 'task.create' ? e.assignTo! : e.agentId;
      const link: Delegation = {
        from: context.task.assignedTo,
        to,
        reason: (e.type === 'task.assign' && e.reason) || (e.type === 'task.create' ? 'assigned at creation' : 'assigned'),
        kind: (e.type === 'task.assign' && e.kind) || 'manual',
        at: iso(e.at),
      };
      return {
        task: touch(context.task, e.at, {
          assignedTo: to,
          assignedAt: iso(e.at),
          delegations: [...context.task.delegations, link],
        }),
      };
    }),
    update: assign(({ context, event }) => {
      const e = event as E<'task.update'>;
      const { deadline, ...rest } = e.changes;
      const patch: Partial<TaskData> = { ...rest };
      if (deadline !== undefined) patch.deadline = deadline;
      return { task: touch(context.task, e.at, patch) };
    }),
    accept: assign(({ context, event }) => ({ task: touch(context.task, event.at, { acceptedAt: iso(event.at) }) })),
    reject: assign(({ context, event }) => {
      const e = event as E<'task.reject'>;
      return {
        task: touch(context.task, e.at, {
          assignedTo: null,
          assignedAt: null,
          acceptedAt: null,
          rejections: [...context.task.rejections, { by: e.by, reason: e.reason ?? '', at: iso(e.at) }],
        }),
      };
    }),
    start: assign(({ context, event }) => ({
      task: touch(context.task, event.at, { startedAt: iso(event.at), error: null }),
    })),
    progress: assign(({ context, event }) => {
      const e = event as E<'task.progress'>;
      const prev = context.task.progress ?? { percent: 0, message: '' };
      return {
        task: touch(context.task, e.at, {
          progress: { percent: e.percent ?? prev.percent, message: e.message ?? prev.message },
        }),
      };
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
    complete: assign(({ context, event }) => {
      const e = event as E<'task.complete'>;
      return {
        task: touch(context.task, e.at, { result: e.result ?? null, completedAt: iso(e.at), inputRequest: null }),
      };
    }),
    fail: assign(({ context, event }) => {
      const e = event as E<'task.fail'>;
      return { task: touch(context.task, e.at, { error: e.error, completedAt: iso(e.at), inputRequest: null }) };
    }),
    failByTimeout: assign(({ context, event }) => ({
      task: touch(context.task, event.at, {
        error: `The attempt did not finish within ${context.task.timeoutSeconds} s.`,
        completedAt: iso(event.at),
        inputRequest: null,
      }),
    })),
    scheduleRetry: emit(({ context, event }) => ({
      type: 'fx.timer.schedule' as const,
      name: 'retry',
      fireAt: event.at + retryDelayMs(context.task.retryBackoffMs, context.task.retryCount),
    })),
    rememberRetry: assign(({ context, event }) => {
      const fireAt = event.at + retryDelayMs(context.task.retryBackoffMs, context.task.retryCount);
      return {
        task: { ...context.task, retryAt: iso(fireAt) },
        timers: { ...context.timers, retry: fireAt },
      };
    }),
    reopen: assign(({ context, event }) => {
      const { retry: _r, ...timers } = context.timers;
      return {
        task: touch(context.task, event.at, {
          retryCount: context.task.retryCount + 1,
          retryAt: null,
          assignedTo: null,
          assignedAt: null,
          acceptedAt: null,
          startedAt: null,
          completedAt: null,
          progress: null,
        }),
        timers,
      };
    }),
    cancelRetryTimer: emit({ type: 'fx.timer.cancel' as const, names: ['retry'] }),
    scheduleAttemptTimeout: emit(({ context, event }) => ({
      type: 'fx.timer.schedule' as const,
      name: 'timeout',
      fireAt: event.at + (context.task.timeoutSeconds ?? 0) * 1000,
    })),
    rememberAttemptTimeout: assign(({ context, event }) => ({
      timers: { ...context.timers, timeout: event.at + (context.task.timeoutSeconds ?? 0) * 1000 },
    })),
    clearAttemptTimeout: assign(({ context }) => {
      const { timeout: _t, ...timers } = context.timers;
      return { timers };
    }),
    cancelAttemptTimeout: emit({ type: 'fx.timer.cancel' as const, names: ['timeout'] }),
    syncDeadline: emit(({ context }) =>
      context.task.deadline
        ? { type: 'fx.timer.schedule' as const, name: 'deadline', fireAt: Date.parse(context.task.deadline) }
        : { type: 'fx.timer.cancel' as const, names: ['deadline'] },
    ),
    rememberDeadline: assign(({ context }) => {
      const { deadline: _d, ...timers } = context.timers;
      return { timers: context.task.deadline ? { ...timers, deadline: Date.parse(context.task.deadline) } : timers };
    }),
    cancelAllTimers: emit(({ context }) => ({ type: 'fx.timer.cancel' as const, names: Object.keys(context.timers) })),
    forgetTimers: assign({ timers: {} }),
    finish: assign(({ context, event }) => ({
      task: touch(context.task, event.at, {
        error: event.type === 'task.cancel' ? (event.reason ?? 'cancelled') : context.task.error,
        completedAt: context.task.completedAt ?? iso(event.at),
        retryAt: null,
        inputRequest: null,
      }),
    })),
    timeOutByDeadline: assign(({ context, event }) => ({
      task: touch(context.task, event.at, {
        error: `The deadline ${context.task.deadline} passed.`,
        completedAt: iso(event.at),
        retryAt: null,
        inputRequest: null,
      }),
    })),
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
          { guard: 'hasAssignee', target: 'live.assigned', actions: ['create', 'assignTo', 'syncDeadline', 'rememberDeadline'] },
          { target: 'live.pending', actions: ['create', 'syncDeadline', 'rememberDeadline'] },
        ],
      },
    },
    live: {
      initial: 'pending',
      on: {
        'task.update': { actions: ['update', 'syncDeadline', 'rememberDeadline'] },
        'task.cancel': { target: 'cancelled', actions: ['finish', 'cancelAllTimers', 'forgetTimers'] },
        'timer.fired': {
          guard: { type: 'isTimer', params: { name: 'deadline' } },
          target: 'timed_out',
          actions: ['timeOutByDeadline', 'cancelAllTimers', 'forgetTimers'],
        },
        'task.delete': { target: 'deleted', actions: ['cancelAllTimers', 'forgetTimers'] },
      },
      states: {
        pending: { on: { 'task.assign': { target: 'assigned', actions: 'assignTo' } } },
        assigned: {
          on: {
            'task.assign': { target: 'assigned', actions: 'assignTo' },
            'task.accept': { target: 'accepted', actions: 'accept' },
            'task.reject': { target: 'pending', actions: 'reject' },
          },
        },
        accepted: {
          on: {
            'task.start': [
              {
                guard: ({ context }) => context.task.timeoutSeconds !== null,
                target: 'in_progress',
                actions: ['start', 'scheduleAttemptTimeout', 'rememberAttemptTimeout'],
              },
              { target: 'in_progress', actions: 'start' },
            ],
            'task.reject': { target: 'pending', actions: 'reject' },
            'task.fail': [
              { guard: 'retriesLeft', target: '#task.failed', actions: ['fail', 'scheduleRetry', 'rememberRetry'] },
              { target: '#task.failed', actions: ['fail', 'cancelAllTimers', 'forgetTimers'] },
            ],
          },
        },
        in_progress: {
          on: {
            'task.progress': { actions: 'progress' },
            'task.requestInput': { target: 'input_required', actions: 'requestInput' },
            'task.complete': { target: '#task.completed', actions: ['complete', 'cancelAllTimers', 'forgetTimers'] },
            ...attemptEndings,
          },
        },
        input_required: {
          on: {
            'task.provideInput': { target: 'in_progress', actions: 'provideInput' },
            'task.progress': { actions: 'progress' },
            ...attemptEndings,
          },
        },
      },
    },
    failed: {
      on: {
        // A task that failed for good forgot its timers: a manual retry arms the deadline again.
        'task.retry': { target: 'live.pending', actions: ['cancelRetryTimer', 'reopen', 'syncDeadline', 'rememberDeadline'] },
        'timer.fired': [
          { guard: { type: 'isTimer', params: { name: 'retry' } }, target: 'live.pending', actions: 'reopen' },
          {
            guard: { type: 'isTimer', params: { name: 'deadline' } },
            target: 'timed_out',
            actions: ['timeOutByDeadline', 'cancelAllTimers', 'forgetTimers'],
          },
        ],
        'task.cancel': { target: 'cancelled', actions: ['finish', 'cancelAllTimers', 'forgetTimers'] },
        // A task waiting for its automatic retry is not finished yet.
        'task.archive': { guard: 'archivableAfterFailure', actions: 'archive' },
        'task.delete': { target: 'deleted', actions: ['cancelAllTimers', 'forgetTimers'] },
      },
    },
    completed: finished,
    cancelled: finished,
    timed_out: finished,
    deleted: { type: 'final' },
  },
});

import { enqueueActions, setup } from 'xstate';
import { ExecutionStatuses, type ExecutionStatus } from '../protocol/workflows.js';
import type { Effect } from './effects.js';
import { reduce, type ExecutionContext, type ExecutionEvent, type Reduction } from './execution.js';

/**
 * A reduction is computed once per event and context: the guards that pick the target state and
 * the action that applies it share it.
 */
const memo = new WeakMap<object, { context: ExecutionContext; r: Reduction | null }>();

function reduced(context: ExecutionContext, event: ExecutionEvent): Reduction | null {
  const hit = memo.get(event);
  if (hit && hit.context === context) return hit.r;
  const r = reduce(context, event);
  memo.set(event, { context, r });
  return r;
}

type EventType = ExecutionEvent['type'];

/** The events each state accepts (whether a given one is accepted also depends on its content). */
const ACCEPTS: Record<ExecutionStatus, EventType[]> = {
  running: ['execution.dispatched', 'execution.stepSettled', 'execution.vote', 'execution.pause', 'execution.cancel', 'execution.completeStep', 'execution.failStep', 'timer.fired'],
  paused: ['execution.dispatched', 'execution.stepSettled', 'execution.vote', 'execution.resume', 'execution.cancel', 'execution.completeStep', 'execution.failStep', 'timer.fired'],
  compensating: ['execution.dispatched', 'execution.stepSettled', 'execution.cancel', 'timer.fired'],
  completed: [],
  failed: ['execution.retry'],
  compensation_failed: ['execution.retry'],
  cancelled: ['execution.retry'],
  timed_out: ['execution.retry'],
};

/** For an event: one transition per state it may lead to, each guarded by the reduction's outcome. */
function to(type: EventType) {
  return [type, ExecutionStatuses.map((phase) => ({ guard: { type: 'leadsTo' as const, params: { phase } }, target: `#execution.${phase}`, actions: 'apply' as const }))] as const;
}

const states = Object.fromEntries(
  ExecutionStatuses.map((phase) => [phase, { on: Object.fromEntries(ACCEPTS[phase].map(to)) }]),
) as Record<ExecutionStatus, { on: Record<string, unknown> }>;

/**
 * A workflow execution (DESIGN §2): `running ⇄ paused → completed | failed | cancelled |
 * timed_out`, with `compensating` before `failed` (or `compensation_failed`) when a saga unwinds.
 * Steps become tasks through a `dispatch` timer the server handles (it evaluates conditions and
 * inputs and creates the tasks); tasks report back with `execution.stepSettled`. The rules are in
 * `execution.ts`; this machine names the states and applies the reductions. Pure.
 */
export const executionMachine = setup({
  types: {
    context: {} as ExecutionContext,
    events: {} as ExecutionEvent,
    emitted: {} as Effect,
  },
  guards: {
    leadsTo: ({ context, event }, params: { phase: ExecutionStatus }) => reduced(context, event)?.context.phase === params.phase,
  },
  actions: {
    apply: enqueueActions(({ context, event, enqueue }) => {
      const r = reduced(context, event);
      if (!r) return;
      for (const fx of r.effects) enqueue.emit(fx);
      enqueue.assign(r.context);
    }),
  },
}).createMachine({
  id: 'execution',
  initial: 'new',
  context: {
    execution: {
      id: '',
      tenantId: '',
      workflowId: '',
      workflowVersion: 0,
      workflowName: '',
      workspaceId: null,
      input: {},
      output: null,
      error: null,
      steps: [],
      completionOrder: [],
      trace: [],
      createdBy: '',
      createdAt: '',
      updatedAt: '',
      completedAt: null,
      cancelReason: null,
    },
    definition: { name: '', type: 'sequential', steps: [] },
    phase: 'new',
    floors: {},
    timers: {},
  },
  states: {
    new: { on: { 'execution.start': { guard: { type: 'leadsTo', params: { phase: 'running' } }, target: 'running', actions: 'apply' } } },
    // Generated above; typed loosely because XState cannot infer a computed state map.
    ...(states as unknown as Record<ExecutionStatus, Record<string, never>>),
  },
});

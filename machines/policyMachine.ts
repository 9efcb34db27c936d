import { assign, setup } from 'xstate';
import type { Policy, PolicyAssignment, PolicyDefaults } from '../protocol/rules.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The policy record a policy actor holds. */
export type PolicyData = Omit<Policy, 'version'>;

/** Every event a policy machine accepts. */
export type PolicyEvent = Stamp & {
  type: 'policy.set';
  taskType: string;
  /** Replaces the stored defaults when given. */
  defaults?: PolicyDefaults;
  /** Replaces the stored assignment settings when given. */
  assignment?: PolicyAssignment;
};

const emptyPolicy: PolicyData = { taskType: '', defaults: {}, assignment: {}, updatedBy: '', updatedAt: '' };

/**
 * The policy of one task type (`*`: the tenant default). `policy.set` creates it or replaces the
 * parts it names (`defaults`, `assignment`); a part left out is kept. Policies are never deleted:
 * setting empty parts clears them and keeps the record.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(policyMachine);
 * const [next] = transition(policyMachine, s, {
 *   type: 'policy.set', taskType: 'review', defaults: { maxRetries: 2 }, at: 0, by: 'lead',
 * });
 * ```
 */
export const policyMachine = setup({
  types: {
    /** `createdAt` (ISO 8601) is kept beside the wire record for the read model's ordering. */
    context: {} as { policy: PolicyData; createdAt: string },
    events: {} as PolicyEvent,
    emitted: {} as Effect,
  },
  actions: {
    set: assign(({ context, event }) => ({
      createdAt: context.createdAt || iso(event.at),
      policy: {
        taskType: event.taskType,
        defaults: event.defaults ?? context.policy.defaults,
        assignment: event.assignment ?? context.policy.assignment,
        updatedBy: event.by,
        updatedAt: iso(event.at),
      },
    })),
  },
}).createMachine({
  id: 'policy',
  initial: 'unset',
  context: { policy: emptyPolicy, createdAt: '' },
  states: {
    unset: {
      on: { 'policy.set': { target: 'set', actions: 'set' } },
    },
    set: {
      on: { 'policy.set': { actions: 'set' } },
    },
  },
});

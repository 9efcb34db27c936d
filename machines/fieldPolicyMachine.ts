import { assign, setup } from 'xstate';
import type { FieldPolicy, FieldRule } from '../protocol/fieldPolicy.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The policy record a field policy actor holds. */
export type FieldPolicyData = Omit<FieldPolicy, 'version'>;

/** Every event a field policy machine accepts. */
export type FieldPolicyEvent = Stamp & {
  type: 'fieldPolicy.set';
  tenantId: string;
  /** Replaces every rule; an empty list leaves the tenant without field rules. */
  rules: FieldRule[];
};

const emptyPolicy: FieldPolicyData = { id: 'tenant', tenantId: '', rules: [], updatedBy: null, updatedAt: null };

/**
 * A tenant's field policy (one actor per tenant, id `tenant`). `fieldPolicy.set` replaces the
 * whole rule list; the record is never deleted, an empty list simply holds no rules. Pure.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(fieldPolicyMachine);
 * const [next] = transition(fieldPolicyMachine, s, {
 *   type: 'fieldPolicy.set', tenantId: 'acme', at: 0, by: 'lead',
 *   rules: [{ kind: 'task', path: 'parameters.secrets', read: ['creator'], write: ['creator'] }],
 * });
 * ```
 */
export const fieldPolicyMachine = setup({
  types: {
    /** `createdAt` (ISO 8601) is kept beside the wire record for the read model's ordering. */
    context: {} as { policy: FieldPolicyData; createdAt: string },
    events: {} as FieldPolicyEvent,
    emitted: {} as Effect,
  },
  actions: {
    set: assign(({ context, event }) => ({
      createdAt: context.createdAt || iso(event.at),
      policy: { id: 'tenant' as const, tenantId: event.tenantId, rules: event.rules, updatedBy: event.by, updatedAt: iso(event.at) },
    })),
  },
}).createMachine({
  id: 'fieldpolicy',
  initial: 'unset',
  context: { policy: emptyPolicy, createdAt: '' },
  states: {
    unset: {
      on: { 'fieldPolicy.set': { target: 'set', actions: 'set' } },
    },
    set: {
      on: { 'fieldPolicy.set': { actions: 'set' } },
    },
  },
});

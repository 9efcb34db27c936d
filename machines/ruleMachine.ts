import { assign, setup } from 'xstate';
import type { Rule, RuleCategory } from '../protocol/rules.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** The rule record a rule actor holds. */
export type RuleData = Omit<Rule, 'version'>;

/** Registration fields (validated and compiled by the caller). */
export interface RuleRegistration {
  name: string;
  tenantId: string;
  category: RuleCategory;
  expression: string;
  priority?: number;
  enabled?: boolean;
  message?: string;
  description?: string;
}

/** Fields `rule.update` may change; the category and the name never change. */
export type RuleChanges = Partial<Pick<Rule, 'expression' | 'priority' | 'enabled' | 'message' | 'description'>>;

/** Every event a rule machine accepts. */
export type RuleEvent = Stamp &
  (
    | ({ type: 'rule.register' } & RuleRegistration)
    | { type: 'rule.update'; changes: RuleChanges }
    | { type: 'rule.delete' }
  );

type E<T extends RuleEvent['type']> = Extract<RuleEvent, { type: T }>;

const emptyRule: RuleData = {
  id: '',
  tenantId: '',
  name: '',
  description: '',
  category: 'task.validation',
  expression: '',
  priority: 0,
  enabled: true,
  message: '',
  createdBy: '',
  createdAt: '',
  updatedAt: '',
};

/** The reason reported for a rule registered without a message. */
export function defaultRuleMessage(name: string): string {
  return `Refused by rule ${name}.`;
}

/**
 * A tenant rule: registered once, changed by updates, deleted for good. A deleted rule's name
 * stays bound to its history (the audit trail), so it is never registered again.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(ruleMachine);
 * const [next] = transition(ruleMachine, s, {
 *   type: 'rule.register', name: 'no-low', tenantId: 'acme', category: 'task.validation',
 *   expression: "task.priority != 'low'", at: 0, by: 'lead',
 * });
 * ```
 */
export const ruleMachine = setup({
  types: {
    context: {} as { rule: RuleData },
    events: {} as RuleEvent,
    emitted: {} as Effect,
  },
  actions: {
    register: assign(({ event }) => {
      const e = event as E<'rule.register'>;
      return {
        rule: {
          id: e.name,
          tenantId: e.tenantId,
          name: e.name,
          description: e.description ?? '',
          category: e.category,
          expression: e.expression,
          priority: e.priority ?? 0,
          enabled: e.enabled ?? true,
          message: e.message ?? defaultRuleMessage(e.name),
          createdBy: e.by,
          createdAt: iso(e.at),
          updatedAt: iso(e.at),
        },
      };
    }),
    update: assign(({ context, event }) => {
      const c = (event as E<'rule.update'>).changes;
      const r = context.rule;
      return {
        rule: {
          ...r,
          expression: c.expression ?? r.expression,
          priority: c.priority ?? r.priority,
          enabled: c.enabled ?? r.enabled,
          message: c.message ?? r.message,
          description: c.description ?? r.description,
          updatedAt: iso(event.at),
        },
      };
    }),
    stampDeleted: assign(({ context, event }) => ({ rule: { ...context.rule, updatedAt: iso(event.at) } })),
  },
}).createMachine({
  id: 'rule',
  initial: 'unregistered',
  context: { rule: emptyRule },
  states: {
    unregistered: {
      on: { 'rule.register': { target: 'active', actions: 'register' } },
    },
    active: {
      on: {
        'rule.update': { actions: 'update' },
        'rule.delete': { target: 'deleted', actions: 'stampDeleted' },
      },
    },
    deleted: { type: 'final' },
  },
});

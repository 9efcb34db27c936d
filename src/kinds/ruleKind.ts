import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { ruleMachine, type RuleData } from '../../machines/ruleMachine.js';
import type { Rule } from '../../protocol/rules.js';

type RuleSnapshot = SnapshotFrom<typeof ruleMachine>;

/** The wire form of a rule actor's state. */
export function ruleResource(data: RuleData, version: number): Rule {
  return { ...data, version };
}

/**
 * How the runtime hosts rules. The read model row's `type` is the category and its `status`
 * `enabled` or `disabled`, so the rule engine loads a tenant's rules with one query.
 */
export const ruleKind: ActorKind<typeof ruleMachine> = {
  kind: 'rule',
  machine: ruleMachine,
  status: (s: RuleSnapshot) => (s.value === 'active' ? (s.context.rule.enabled ? 'enabled' : 'disabled') : String(s.value)),
  exists: (s: RuleSnapshot) => s.value === 'active',
  view(s: RuleSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'active') return null;
    const r = s.context.rule;
    return {
      tenant: address.tenant,
      kind: 'rule',
      id: address.id,
      version,
      status: r.enabled ? 'enabled' : 'disabled',
      owner: null,
      type: r.category,
      // The row's priority column holds task priority names; a rule's number lives in `doc`.
      priority: null,
      parentId: null,
      createdBy: r.createdBy,
      createdAt: Date.parse(r.createdAt),
      updatedAt: Date.parse(r.updatedAt),
      text: `${r.name}\n${r.expression}`.toLowerCase(),
      archived: false,
      doc: ruleResource(r, version) as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`rule:${event.actorId}`, 'tenant'],
  snapshotEvery: 100,
};

import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { settingsView } from './settingsView.js';
import { fieldPolicyMachine, type FieldPolicyData } from '../../machines/fieldPolicyMachine.js';
import type { FieldPolicy } from '../../protocol/fieldPolicy.js';

type FieldPolicySnapshot = SnapshotFrom<typeof fieldPolicyMachine>;

/** The id of the one field policy actor of a tenant. */
export const FIELD_POLICY_ID = 'tenant';

/** The wire form of a field policy actor's state. */
export function fieldPolicyResource(data: FieldPolicyData, version: number): FieldPolicy {
  return { ...data, version };
}

/**
 * How the runtime hosts field policies: one actor per tenant, kind `fieldpolicy`, id `tenant`.
 * Its read model row's `doc` is the {@link FieldPolicy}, so the guard loads it with one read.
 */
export const fieldPolicyKind: ActorKind<typeof fieldPolicyMachine> = {
  kind: 'fieldpolicy',
  machine: fieldPolicyMachine,
  status: (s: FieldPolicySnapshot) => String(s.value),
  exists: (s: FieldPolicySnapshot) => s.value === 'set',
  view(s: FieldPolicySnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'set') return null;
    const p = s.context.policy;
    const updatedAt = Date.parse(p.updatedAt ?? s.context.createdAt);
    return settingsView(address, version, 'set', Date.parse(s.context.createdAt), updatedAt, fieldPolicyResource(p, version));
  },
  topics: () => ['tenant'],
  snapshotEvery: 100,
};

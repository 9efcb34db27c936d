import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { policyMachine, type PolicyData } from '../../machines/policyMachine.js';
import type { Policy } from '../../protocol/rules.js';

type PolicySnapshot = SnapshotFrom<typeof policyMachine>;

/** The wire form of a policy actor's state. */
export function policyResource(data: PolicyData, version: number): Policy {
  return { ...data, version };
}

/** How the runtime hosts policies: one actor per task type, id `*` for the tenant default. */
export const policyKind: ActorKind<typeof policyMachine> = {
  kind: 'policy',
  machine: policyMachine,
  status: (s: PolicySnapshot) => String(s.value),
  exists: (s: PolicySnapshot) => s.value === 'set',
  view(s: PolicySnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'set') return null;
    const p = s.context.policy;
    return {
      tenant: address.tenant,
      kind: 'policy',
      id: address.id,
      version,
      status: 'set',
      owner: null,
      type: p.taskType,
      priority: null,
      parentId: null,
      createdBy: null,
      createdAt: Date.parse(s.context.createdAt),
      updatedAt: Date.parse(p.updatedAt),
      text: p.taskType.toLowerCase(),
      archived: false,
      doc: policyResource(p, version) as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`policy:${event.actorId}`, 'tenant'],
  snapshotEvery: 100,
};

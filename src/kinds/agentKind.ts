import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { agentMachine, agentStatus, type AgentData } from '../../machines/agentMachine.js';
import type { Agent } from '../../protocol/model.js';

type AgentSnapshot = SnapshotFrom<typeof agentMachine>;

/** The wire form of an agent actor's state. */
export function agentResource(data: AgentData, version: number): Agent {
  const { requestedStatus: _r, ...rest } = data;
  return { ...rest, status: agentStatus(data), version };
}

/** How the runtime hosts agents. */
export const agentKind: ActorKind<typeof agentMachine> = {
  kind: 'agent',
  machine: agentMachine,
  status: (s: AgentSnapshot) => (s.value === 'registered' ? agentStatus(s.context.agent) : String(s.value)),
  exists: (s: AgentSnapshot) => s.value === 'registered',
  view(s: AgentSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'registered') return null;
    const a = s.context.agent;
    return {
      tenant: address.tenant,
      kind: 'agent',
      id: address.id,
      version,
      status: agentStatus(a),
      owner: null,
      type: a.kind,
      priority: null,
      parentId: null,
      createdBy: null,
      createdAt: Date.parse(a.registeredAt),
      updatedAt: a.lastSeenAt ? Date.parse(a.lastSeenAt) : Date.parse(a.registeredAt),
      // Capabilities are searchable as whole words: " go review ".
      text: ` ${a.capabilities.map((c) => c.toLowerCase()).join(' ')} \n${a.name.toLowerCase()}`,
      archived: false,
      doc: agentResource(a, version) as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`agent:${event.actorId}`, 'tenant'],
  snapshotEvery: 100,
};

import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { executionResource } from '../../machines/execution.js';
import { executionMachine } from '../../machines/executionMachine.js';

type ExecutionSnapshot = SnapshotFrom<typeof executionMachine>;

const FINISHED = new Set(['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out']);

/** How the runtime hosts workflow executions. Read-model rows: `type` is the workflow id. */
export const executionKind: ActorKind<typeof executionMachine> = {
  kind: 'execution',
  machine: executionMachine,
  status: (s: ExecutionSnapshot) => String(s.value),
  exists: (s: ExecutionSnapshot) => s.value !== 'new',
  view(s: ExecutionSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value === 'new') return null;
    const x = s.context.execution;
    return {
      tenant: address.tenant,
      kind: 'execution',
      id: address.id,
      version,
      status: String(s.value),
      owner: null,
      type: x.workflowId,
      priority: null,
      parentId: null,
      createdBy: x.createdBy,
      createdAt: Date.parse(x.createdAt),
      updatedAt: Date.parse(x.updatedAt),
      text: x.workflowName.toLowerCase(),
      archived: false,
      doc: executionResource(s.context, version) as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`execution:${event.actorId}`, 'tenant'],
  internalEvents: ['execution.start', 'execution.dispatched', 'execution.stepSettled'],
  settled: (s: ExecutionSnapshot) => FINISHED.has(String(s.value)),
  snapshotEvery: 25,
};

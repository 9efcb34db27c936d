import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { workflowMachine } from '../../machines/workflowMachine.js';
import type { Workflow } from '../../protocol/workflows.js';

type WorkflowSnapshot = SnapshotFrom<typeof workflowMachine>;

/** `active` or `inactive` (the definition's `active` flag, true unless set false). */
function activity(w: Workflow): 'active' | 'inactive' {
  return w.active === false ? 'inactive' : 'active';
}

/**
 * How the runtime hosts workflows. The read model row's `type` is the workflow type, its
 * `status` `active` or `inactive`, its text the name, description and tags, and its `doc` the
 * {@link Workflow} at its current definition.
 *
 * A workflow has two version numbers: the definition version (`Workflow.version`, 1 for a new
 * workflow, one more for each new version) and the actor's stream version (one more for every
 * event, the deletion included). Clients only ever see the definition version, and the
 * `expectedVersion` of `workflow.update`, `workflow.createVersion` and `workflow.delete` refers to
 * it; the row's `version` column keeps the stream version, as for every kind.
 */
export const workflowKind: ActorKind<typeof workflowMachine> = {
  kind: 'workflow',
  machine: workflowMachine,
  status: (s: WorkflowSnapshot) => (s.value === 'active' ? activity(s.context.workflow) : String(s.value)),
  exists: (s: WorkflowSnapshot) => s.value === 'active',
  view(s: WorkflowSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'active') return null;
    const w = s.context.workflow;
    return {
      tenant: address.tenant,
      kind: 'workflow',
      id: address.id,
      version,
      status: activity(w),
      owner: null,
      type: w.type,
      priority: null,
      parentId: null,
      createdBy: w.createdBy,
      createdAt: Date.parse(w.createdAt),
      updatedAt: Date.parse(w.updatedAt),
      text: `${w.name}\n${w.description ?? ''}\n${(w.tags ?? []).join('\n')}`.toLowerCase(),
      archived: false,
      doc: w as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`workflow:${event.actorId}`, 'tenant'],
  snapshotEvery: 50,
};

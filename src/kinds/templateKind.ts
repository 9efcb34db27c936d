import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { templateMachine, type TemplateData } from '../../machines/templateMachine.js';
import type { WorkflowTemplate } from '../../protocol/workflows.js';

type TemplateSnapshot = SnapshotFrom<typeof templateMachine>;

/** The wire form of a template actor's state. */
export function templateResource(data: TemplateData, version: number): WorkflowTemplate {
  return { ...data, version };
}

/** How the runtime hosts workflow templates. The read model row's `type` is the category. */
export const templateKind: ActorKind<typeof templateMachine> = {
  kind: 'template',
  machine: templateMachine,
  status: (s: TemplateSnapshot) => String(s.value),
  exists: (s: TemplateSnapshot) => s.value === 'active',
  view(s: TemplateSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'active') return null;
    const t = s.context.template;
    return {
      tenant: address.tenant,
      kind: 'template',
      id: address.id,
      version,
      status: 'active',
      owner: null,
      type: t.category,
      priority: null,
      parentId: null,
      createdBy: t.createdBy,
      createdAt: Date.parse(t.createdAt),
      updatedAt: Date.parse(t.createdAt),
      text: `${t.name}\n${t.description}\n${t.category}`.toLowerCase(),
      archived: false,
      doc: templateResource(t, version) as unknown as Record<string, unknown>,
    };
  },
  topics: (event) => [`template:${event.actorId}`, 'tenant'],
  snapshotEvery: 100,
};

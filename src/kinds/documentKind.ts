import type { SnapshotFrom } from 'xstate';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import type { ViewRecord } from '../../actors/Store.js';
import { documentMachine, type DocumentData } from '../../machines/documentMachine.js';
import type { DocumentSummary } from '../../protocol/documents.js';

type DocumentSnapshot = SnapshotFrom<typeof documentMachine>;

/** The actor id of a workspace document: `<workspaceId>:<documentId>` (document ids have no `:`). */
export function documentActorId(workspaceId: string, documentId: string): string {
  return `${workspaceId}:${documentId}`;
}

/** The subscription topic of one document's changes. */
export function documentTopic(workspaceId: string, documentId: string): string {
  return `document:${documentActorId(workspaceId, documentId)}`;
}

/** The wire form of a document's metadata. */
export function documentSummary(d: DocumentData, version: number): DocumentSummary {
  return {
    id: d.documentId,
    workspaceId: d.workspaceId,
    title: d.title,
    kind: d.kind,
    heads: d.heads,
    version,
    size: d.size,
    changeCount: d.changeCount,
    createdBy: d.createdBy,
    createdAt: d.createdAt,
    updatedBy: d.updatedBy,
    updatedAt: d.updatedAt,
  };
}

/**
 * How the runtime hosts workspace documents. The read model row's `parentId` is the workspace,
 * its `type` `state` or `document`, its text the title and its `doc` a {@link DocumentSummary}.
 * Content events go to `document:<workspaceId>:<documentId>` (subscribers get each change as a
 * JSON Patch with the new heads), to `workspace:<workspaceId>` (every change lands in the
 * workspace's event stream) and to `tenant`; compactions go nowhere.
 */
export const documentKind: ActorKind<typeof documentMachine> = {
  kind: 'document',
  machine: documentMachine,
  status: (s: DocumentSnapshot) => String(s.value),
  exists: (s: DocumentSnapshot) => s.value === 'active',
  view(s: DocumentSnapshot, address: ActorAddress, version: number): ViewRecord | null {
    if (s.value !== 'active') return null;
    const d = s.context.doc;
    return {
      tenant: address.tenant,
      kind: 'document',
      id: address.id,
      version,
      status: 'active',
      owner: null,
      type: d.kind,
      priority: null,
      parentId: d.workspaceId,
      createdBy: d.createdBy,
      createdAt: Date.parse(d.createdAt),
      updatedAt: Date.parse(d.updatedAt),
      text: d.title.toLowerCase(),
      archived: false,
      doc: documentSummary(d, version) as unknown as Record<string, unknown>,
    };
  },
  topics(event, _before, after) {
    if (event.type === 'document.compact') return [];
    return [`document:${event.actorId}`, `workspace:${after.context.doc.workspaceId}`, 'tenant'];
  },
  internalEvents: ['document.compact'],
  snapshotEvery: 100,
};

import { randomUUID } from 'node:crypto';
import * as Automerge from '@automerge/automerge';
import { STATE_DOCUMENT_ID, type DocumentSummary, type SharedDocument, type WorkspaceState } from '../../protocol/documents.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type { DocumentEdit } from '../documents/edits.js';
import type { DocumentRead, DocumentRef, DocumentService } from '../documents/DocumentService.js';
import { queryPage, type App, type AuthedContext, type Handlers } from '../server/App.js';
import type { WorkspaceAccess } from '../workspaces/access.js';
import { automergeUrlOf } from '../sync/automergeUrl.js';

/** The title and kind a workspace's state document is created with by its first change. */
const STATE = { title: 'Workspace state', kind: 'state' } as const;

/** The edit a call carries (the schema admits exactly one form). */
function editOf(p: { ops?: unknown; patch?: unknown; splices?: unknown }): DocumentEdit {
  if (p.ops !== undefined) return { ops: p.ops } as DocumentEdit;
  if (p.patch !== undefined) return { patch: p.patch } as DocumentEdit;
  return { splices: p.splices } as DocumentEdit;
}

function sharedDocument(r: DocumentRead): SharedDocument {
  return { ...r.summary, content: r.content, automergeUrl: automergeUrlOf(r.summary.workspaceId, r.summary.id), ...(r.automerge !== undefined ? { automerge: r.automerge } : {}) };
}

/**
 * The workspace state and shared document methods. Reads need `workspace:read`, state writes
 * `state:write`, document creation `doc:create` and document edits `doc:write` in the workspace
 * (the workspace service decides, also refusing writes to archived workspaces); the document
 * service applies and stores the changes.
 */
export function documentHandlers(app: App): Handlers {
  const services = (): { docs: DocumentService; access: WorkspaceAccess } => {
    if (!app.documents || !app.workspaces) throw new ProtocolError('UNAVAILABLE', 'Workspace documents are not available on this server.', { retryAfterMs: 1000 });
    return { docs: app.documents, access: app.workspaces };
  };
  const ref = (p: Principal, workspaceId: string, documentId: string): DocumentRef => ({ tenant: p.tenantId, workspaceId, documentId });
  const writer = (ctx: AuthedContext) => ({ principal: ctx.principal.principalId, correlationId: ctx.correlationId });

  return {
    'workspace.getState': async (ctx, { workspaceId, includeAutomerge }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'workspace:read');
      const r = await docs.get(ref(ctx.principal, workspaceId, STATE_DOCUMENT_ID), { includeAutomerge });
      const state: WorkspaceState = r
        ? { workspaceId, state: r.content, heads: r.summary.heads, version: r.summary.version, size: r.summary.size, updatedAt: r.summary.updatedAt, automergeUrl: automergeUrlOf(workspaceId, STATE_DOCUMENT_ID) }
        : { workspaceId, state: {}, heads: [], version: 0, size: 0, updatedAt: null, automergeUrl: automergeUrlOf(workspaceId, STATE_DOCUMENT_ID) };
      if (includeAutomerge) state.automerge = r?.automerge ?? Buffer.from(Automerge.save(Automerge.init())).toString('base64');
      return state;
    },

    'workspace.updateState': async (ctx, { workspaceId, expectedHeads, ...edit }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'state:write');
      return docs.edit(ref(ctx.principal, workspaceId, STATE_DOCUMENT_ID), writer(ctx), editOf(edit), { expectedHeads, create: STATE });
    },

    'workspace.mergeState': async (ctx, { workspaceId, changes }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'state:write');
      return docs.merge(ref(ctx.principal, workspaceId, STATE_DOCUMENT_ID), writer(ctx), changes, { create: STATE });
    },

    'workspace.stateHistory': async (ctx, { workspaceId, limit, cursor }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'workspace:read');
      return docs.history(ref(ctx.principal, workspaceId, STATE_DOCUMENT_ID), { limit, cursor });
    },

    'workspace.restoreState': async (ctx, { workspaceId, heads }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'state:write');
      return docs.restore(ref(ctx.principal, workspaceId, STATE_DOCUMENT_ID), writer(ctx), heads);
    },

    'document.create': async (ctx, { workspaceId, documentId, title, content }) => {
      const { docs, access } = services();
      if (documentId === STATE_DOCUMENT_ID) {
        throw new ProtocolError('INVALID_PARAMS', `The document id "${STATE_DOCUMENT_ID}" is the workspace state's; edit it with workspace.updateState, or choose another id.`, {
          field: 'documentId',
        });
      }
      await access.require(ctx.principal, workspaceId, 'doc:create');
      const r = await docs.create(ref(ctx.principal, workspaceId, documentId ?? randomUUID()), writer(ctx), { title, content });
      return sharedDocument(r);
    },

    'document.get': async (ctx, { workspaceId, documentId, includeAutomerge }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, 'workspace:read');
      const r = await docs.get(ref(ctx.principal, workspaceId, documentId), { includeAutomerge });
      if (!r) throw new ProtocolError('NOT_FOUND', `Document ${documentId} does not exist in workspace ${workspaceId}.`, { kind: 'document', id: documentId });
      return sharedDocument(r);
    },

    'document.update': async (ctx, { workspaceId, documentId, expectedHeads, ...edit }) => {
      const { docs, access } = services();
      await access.require(ctx.principal, workspaceId, documentId === STATE_DOCUMENT_ID ? 'state:write' : 'doc:write');
      return docs.edit(ref(ctx.principal, workspaceId, documentId), writer(ctx), editOf(edit), { expectedHeads });
    },

    'document.list': async (ctx, { workspaceId, limit, cursor }) => {
      const { access } = services();
      await access.require(ctx.principal, workspaceId, 'workspace:read');
      return queryPage<DocumentSummary>(app.store, ctx.principal.tenantId, 'document', { parentId: workspaceId, type: 'document', limit, cursor });
    },
  };
}

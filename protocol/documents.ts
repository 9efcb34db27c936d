import { z } from 'zod';
import { Id } from './ids.js';
import type { Page } from './model.js';

/**
 * Workspace state and shared documents: CRDT documents (Automerge) that JSON clients edit with
 * operations, JSON Patch or text splices, and that Automerge clients merge changes into. Their
 * wire shapes and method schemas; merged into the catalogue by `methods.ts`.
 *
 * Every workspace has one state document (document id `state`, created by its first change) and
 * any number of shared documents. Paths are JSON Pointers (RFC 6901): `""` is the whole document,
 * `/a/b/0` the first element of the list at `b` in the map at `a`.
 */

/** The document id of a workspace's state document. */
export const STATE_DOCUMENT_ID = 'state';

/** How a change came about. */
export const DocumentChangeSources = ['create', 'update', 'merge', 'restore'] as const;
export type DocumentChangeSource = (typeof DocumentChangeSources)[number];

/** One JSON Patch (RFC 6902) operation. */
export type JsonPatchOperation =
  | { op: 'add'; path: string; value: unknown }
  | { op: 'remove'; path: string }
  | { op: 'replace'; path: string; value: unknown }
  | { op: 'move'; from: string; path: string }
  | { op: 'copy'; from: string; path: string }
  | { op: 'test'; path: string; value: unknown };

/**
 * A JSON client's edit operation. `set` creates missing parent maps and keeps a counter a counter
 * (setting a number on it adds the difference) and text text (setting a string on it splices in
 * the difference, so concurrent edits of other parts survive); `increment` works on Automerge
 * counters (created by the first increment); `addToSet` and `removeFromSet` treat a list as a set
 * (deep equality; a missing list is created); `delete` of a missing path does nothing.
 */
export type DocumentOperation =
  | { op: 'set'; path: string; value: unknown }
  | { op: 'increment'; path: string; by?: number }
  | { op: 'addToSet'; path: string; value: unknown }
  | { op: 'removeFromSet'; path: string; value: unknown }
  | { op: 'delete'; path: string };

/** A text edit: at `index` (UTF-16 code units) of the text at `path`, delete `deleteCount` characters and insert `insert`. */
export interface TextSplice {
  path: string;
  index: number;
  deleteCount?: number;
  insert?: string;
}

/**
 * What a change did, as returned to the writer and published to subscribers of
 * `document:<workspaceId>:<documentId>`: the JSON Patch that turns the previous content into the
 * new one, the paths it touched and the new heads.
 */
export interface DocumentChangeResult {
  workspaceId: string;
  documentId: string;
  /** False when the edit changed nothing (no event was stored). */
  changed: boolean;
  /** The document's version (its event count) after the change. */
  version: number;
  /** Automerge heads (hex change hashes) after the change. */
  heads: string[];
  /** JSON Patch from the previous content to the new one (text edits appear as `replace` of the whole string). */
  patch: JsonPatchOperation[];
  /** The paths the change touched: the deepest map paths above each changed value (list indexes are cut off). */
  paths: string[];
  /** Bytes the document takes in the store (its last compacted save plus the changes since). */
  size: number;
}

/** A document's description without its content. Times are ISO 8601. */
export interface DocumentSummary {
  /** The document id. */
  id: string;
  workspaceId: string;
  title: string;
  /** `state` for the workspace state document, else `document`. */
  kind: 'state' | 'document';
  heads: string[];
  version: number;
  size: number;
  /** Automerge changes in the document. */
  changeCount: number;
  createdBy: string;
  createdAt: string;
  updatedBy: string;
  updatedAt: string;
}

/** A document with its content (plain JSON: counters as numbers, dates as ISO strings, bytes as base64). */
export interface SharedDocument extends DocumentSummary {
  content: Record<string, unknown>;
  /** The document's automerge-repo URL (`automerge:…`), for clients that sync it over `/sync`. */
  automergeUrl: string;
  /** The whole document as `Automerge.save()` output in base64, when asked for with `includeAutomerge`. */
  automerge?: string;
}

/** The result of `workspace.getState`. */
export interface WorkspaceState {
  workspaceId: string;
  state: Record<string, unknown>;
  heads: string[];
  /** 0 while the state document has never been changed. */
  version: number;
  size: number;
  updatedAt: string | null;
  automerge?: string;
  /** The state document's automerge-repo URL (`automerge:…`), for clients that sync it over `/sync`. */
  automergeUrl: string;
}

/** One entry of a document's history: a version that can be restored. */
export interface DocumentHistoryEntry {
  version: number;
  /** The heads after this change: pass them to `workspace.restoreState`. */
  heads: string[];
  /** The authenticated principal that made the change (not the Automerge actor id). */
  by: string;
  at: string;
  source: DocumentChangeSource;
  /** Automerge changes it added. */
  changes: number;
  paths: string[];
  /** For restores: the heads that were restored. */
  restoredFrom?: string[];
}

/**
 * The data of a document event as subscribers receive it (`event.data` of a `subscription.event`
 * whose event type is `document.create` or `document.change`). `changes` are the Automerge
 * changes in base64, for clients that keep an Automerge copy; JSON clients apply `patch`.
 */
export interface DocumentEventData {
  workspaceId: string;
  documentId: string;
  source: DocumentChangeSource;
  heads: string[];
  patch: JsonPatchOperation[];
  paths: string[];
  changes: string[];
  bytes: number;
  restoredFrom?: string[];
}

/** Largest number of edit entries or changes in one call the schema admits (the server's limit may be lower). */
export const MAX_DOCUMENT_OPS = 10_000;

/** A JSON Pointer (RFC 6901). */
const Pointer = z.string().max(2048).regex(/^(\/.*)?$/s, 'must be a JSON Pointer: empty or starting with "/"');
/** Any JSON value, required. */
const Value = z.unknown().refine((v) => v !== undefined, { message: 'is required' });
/** A document id: no `:` (it joins the workspace id in the actor id). */
export const DocumentId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/, 'must be 1-64 characters of A-Z a-z 0-9 . _ @ - and start with a letter or digit');
const Head = z.string().regex(/^[0-9a-f]{64}$/, 'must be an Automerge change hash: 64 lower-case hex digits');
const Heads = z.array(Head).max(1000);
const Base64 = z.string().min(1).regex(/^[A-Za-z0-9+/]+={0,2}$/, 'must be base64');
const Limit = z.number().int().min(1).max(1000).optional();
const Cursor = z.string().max(512).optional();

const OperationSchema = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('set'), path: Pointer, value: Value }),
  z.strictObject({ op: z.literal('increment'), path: Pointer, by: z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).optional() }),
  z.strictObject({ op: z.literal('addToSet'), path: Pointer, value: Value }),
  z.strictObject({ op: z.literal('removeFromSet'), path: Pointer, value: Value }),
  z.strictObject({ op: z.literal('delete'), path: Pointer }),
]);

const PatchSchema = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('add'), path: Pointer, value: Value }),
  z.strictObject({ op: z.literal('remove'), path: Pointer }),
  z.strictObject({ op: z.literal('replace'), path: Pointer, value: Value }),
  z.strictObject({ op: z.literal('move'), from: Pointer, path: Pointer }),
  z.strictObject({ op: z.literal('copy'), from: Pointer, path: Pointer }),
  z.strictObject({ op: z.literal('test'), path: Pointer, value: Value }),
]);

const SpliceSchema = z.strictObject({
  path: Pointer,
  index: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  deleteCount: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).optional(),
  insert: z.string().optional(),
});

/** The edit of `workspace.updateState` and `document.update`: exactly one of ops, patch or splices. */
const EditFields = {
  ops: z.array(OperationSchema).min(1).max(MAX_DOCUMENT_OPS).optional(),
  patch: z.array(PatchSchema).min(1).max(MAX_DOCUMENT_OPS).optional(),
  splices: z.array(SpliceSchema).min(1).max(MAX_DOCUMENT_OPS).optional(),
  /**
   * The heads the edit was made against. The edit is applied to the document as it was then and
   * merged with what happened since (Automerge `changeAt`): paths, list indexes, splice indexes
   * and `test` values refer to that version.
   */
  expectedHeads: Heads.optional(),
};
const oneEdit = (p: { ops?: unknown; patch?: unknown; splices?: unknown }) => [p.ops, p.patch, p.splices].filter((v) => v !== undefined).length === 1;
const oneEditMessage = { message: 'give exactly one of ops, patch or splices' };

const ws = { workspaceId: Id };
const doc = { workspaceId: Id, documentId: DocumentId };

/** Params schema of the state and document methods. */
export const DocumentMethodSchemas = {
  'workspace.getState': z.strictObject({ ...ws, includeAutomerge: z.boolean().optional() }),
  'workspace.updateState': z.strictObject({ ...ws, ...EditFields }).refine(oneEdit, oneEditMessage),
  'workspace.mergeState': z.strictObject({ ...ws, changes: z.array(Base64).min(1).max(MAX_DOCUMENT_OPS) }),
  'workspace.stateHistory': z.strictObject({ ...ws, limit: Limit, cursor: Cursor }),
  'workspace.restoreState': z.strictObject({ ...ws, heads: Heads.min(1) }),
  'document.create': z.strictObject({
    ...ws,
    documentId: DocumentId.optional(),
    title: z.string().min(1).max(256),
    content: z.record(z.string(), z.unknown()).optional(),
  }),
  'document.get': z.strictObject({ ...doc, includeAutomerge: z.boolean().optional() }),
  'document.update': z.strictObject({ ...doc, ...EditFields }).refine(oneEdit, oneEditMessage),
  'document.list': z.strictObject({ ...ws, limit: Limit, cursor: Cursor }),
} as const;

/** Result types of the state and document methods. */
export interface DocumentMethodResults {
  'workspace.getState': WorkspaceState;
  'workspace.updateState': DocumentChangeResult;
  'workspace.mergeState': DocumentChangeResult & { applied: number; duplicates: number };
  'workspace.stateHistory': Page<DocumentHistoryEntry>;
  'workspace.restoreState': DocumentChangeResult & { restoredFrom: string[] };
  'document.create': SharedDocument;
  'document.get': SharedDocument;
  'document.update': DocumentChangeResult;
  'document.list': Page<DocumentSummary>;
}

/** Descriptions of the state and document methods. */
export const DocumentMethodDescriptions: Record<keyof typeof DocumentMethodSchemas, string> = {
  'workspace.getState': 'The workspace state (JSON) and its Automerge heads; includeAutomerge adds the whole Automerge document (base64).',
  'workspace.updateState':
    'Edit the workspace state (state:write) with ops (set, increment, addToSet, removeFromSet, delete), a JSON Patch (a failed test refuses it all) or text splices; optionally against expectedHeads.',
  'workspace.mergeState': 'Merge Automerge changes (base64) made offline into the workspace state (state:write); attributed to the caller.',
  'workspace.stateHistory': 'Versions of the workspace state, newest first: heads, author and time of each change.',
  'workspace.restoreState': 'Restore the state as it was at the given heads, as a new change (state:write); history is kept.',
  'document.create': 'Create a shared document in a workspace (doc:create) with a title and optional JSON content.',
  'document.get': 'A shared document with its content and heads.',
  'document.update': 'Edit a shared document (doc:write) with ops, a JSON Patch or text splices, like workspace.updateState.',
  'document.list': 'The shared documents of a workspace, newest first, without their content.',
};

import { assign, setup } from 'xstate';
import type { DocumentChangeSource, JsonPatchOperation } from '../protocol/documents.js';
import { iso, type Effect, type Stamp } from './effects.js';

/** Changes kept in a document's context for quick reads; the whole history is its event stream. */
export const RECENT_HISTORY = 20;

/** One accepted change, as the context keeps it. Times are ISO 8601. */
export interface DocumentHistoryItem {
  /** The document's version (event count) after the change. */
  version: number;
  heads: string[];
  by: string;
  at: string;
  source: DocumentChangeSource;
  /** Automerge changes the event carried. */
  changes: number;
}

/** Where the latest compacted save is: the event at `version` carries it. */
export interface DocumentSaveRef {
  version: number;
  heads: string[];
  /** Bytes of the save (decoded). */
  bytes: number;
}

/**
 * Everything a document actor knows about its document, without the content: the content lives
 * in the Automerge changes its events carry, and in memory in the document service.
 */
export interface DocumentData {
  workspaceId: string;
  documentId: string;
  title: string;
  kind: 'state' | 'document';
  createdBy: string;
  createdAt: string;
  updatedBy: string;
  updatedAt: string;
  heads: string[];
  /** Events applied so far: the stream's version. */
  events: number;
  /** Automerge changes in the document. */
  changeCount: number;
  /** Bytes in the store: the last save plus the changes stored since. */
  size: number;
  save: DocumentSaveRef | null;
  /** Automerge changes and their bytes stored after the last save (all of them while there is none). */
  sinceSave: { changes: number; bytes: number };
  /** The last {@link RECENT_HISTORY} changes, newest last. */
  recent: DocumentHistoryItem[];
}

/** What every content event carries: Automerge changes and what they did. */
export interface DocumentChangeFields {
  workspaceId: string;
  documentId: string;
  /** Automerge changes, base64. */
  changes: string[];
  /** Bytes of the changes (decoded). */
  bytes: number;
  /** Heads after the changes. */
  heads: string[];
  /** JSON Patch from the previous content to the new one. */
  patch: JsonPatchOperation[];
  /** Paths touched (see `DocumentChangeResult.paths`). */
  paths: string[];
}

/** Every event a document machine accepts. */
export type DocumentEvent = Stamp &
  (
    | ({ type: 'document.create'; title: string; kind: 'state' | 'document'; source: 'create' } & DocumentChangeFields)
    | ({ type: 'document.change'; source: Exclude<DocumentChangeSource, 'create'>; restoredFrom?: string[] } & DocumentChangeFields)
    | { type: 'document.compact'; save: string; heads: string[]; bytes: number }
  );

type E<T extends DocumentEvent['type']> = Extract<DocumentEvent, { type: T }>;

const emptyDocument: DocumentData = {
  workspaceId: '',
  documentId: '',
  title: '',
  kind: 'document',
  createdBy: '',
  createdAt: '',
  updatedBy: '',
  updatedAt: '',
  heads: [],
  events: 0,
  changeCount: 0,
  size: 0,
  save: null,
  sinceSave: { changes: 0, bytes: 0 },
  recent: [],
};

/** True when two head lists name the same changes (heads are a set). */
export function sameHeads(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((h) => set.has(h));
}

/**
 * Whether the document should get a new compacted save now. Loading reads the last save and
 * applies the changes stored after it in one call, so their number bounds load time; every save
 * is stored too, so a save is only worth writing once the changes since the last one amount to
 * a tenth of its size, or once there are ten times `every` of them, whichever comes first.
 */
export function compactionDue(d: DocumentData, every: number): boolean {
  const { changes, bytes } = d.sinceSave;
  if (changes < every) return false;
  return changes >= every * 10 || bytes * 10 >= (d.save?.bytes ?? 0);
}

function applyChange(d: DocumentData, e: DocumentChangeFields & Stamp & { source: DocumentChangeSource }): DocumentData {
  const events = d.events + 1;
  const at = iso(e.at);
  const item: DocumentHistoryItem = { version: events, heads: e.heads, by: e.by, at, source: e.source, changes: e.changes.length };
  return {
    ...d,
    updatedBy: e.by,
    updatedAt: at,
    heads: e.heads,
    events,
    changeCount: d.changeCount + e.changes.length,
    size: d.size + e.bytes,
    sinceSave: { changes: d.sinceSave.changes + e.changes.length, bytes: d.sinceSave.bytes + e.bytes },
    recent: [...d.recent, item].slice(-RECENT_HISTORY),
  };
}

/**
 * A CRDT document of a workspace (its state document or a shared document). Pure: it never
 * touches Automerge. Content events (`document.create`, `document.change`) carry the Automerge
 * changes in base64 with their heads, size, JSON Patch and paths, stamped with the authenticated
 * principal; the machine keeps the metadata. `document.compact` carries an `Automerge.save()` of
 * the whole document, so that loading starts from it and applies only the changes stored after
 * it; it is accepted only for the current heads.
 *
 * @example
 * ```ts
 * const [s] = initialTransition(documentMachine);
 * const [next] = transition(documentMachine, s, {
 *   type: 'document.create', workspaceId: 'w1', documentId: 'notes', title: 'Notes', kind: 'document',
 *   source: 'create', changes: [], bytes: 0, heads: [], patch: [], paths: [], at: 0, by: 'ada',
 * });
 * ```
 */
export const documentMachine = setup({
  types: {
    context: {} as { doc: DocumentData },
    events: {} as DocumentEvent,
    emitted: {} as Effect,
  },
  guards: {
    hasChanges: ({ event }) => (event as E<'document.change'>).changes.length > 0,
    currentHeads: ({ context, event }) => sameHeads(context.doc.heads, (event as E<'document.compact'>).heads),
  },
  actions: {
    create: assign(({ event }) => {
      const e = event as E<'document.create'>;
      const at = iso(e.at);
      const base: DocumentData = {
        ...emptyDocument,
        workspaceId: e.workspaceId,
        documentId: e.documentId,
        title: e.title,
        kind: e.kind,
        createdBy: e.by,
        createdAt: at,
      };
      return { doc: applyChange(base, e) };
    }),
    change: assign(({ context, event }) => ({ doc: applyChange(context.doc, event as E<'document.change'>) })),
    compact: assign(({ context, event }) => {
      const e = event as E<'document.compact'>;
      const d = context.doc;
      const version = d.events + 1;
      return {
        doc: { ...d, events: version, size: e.bytes, save: { version, heads: e.heads, bytes: e.bytes }, sinceSave: { changes: 0, bytes: 0 } },
      };
    }),
  },
}).createMachine({
  id: 'document',
  initial: 'absent',
  context: { doc: emptyDocument },
  states: {
    absent: {
      on: { 'document.create': { target: 'active', actions: 'create' } },
    },
    active: {
      on: {
        'document.change': { guard: 'hasChanges', actions: 'change' },
        'document.compact': { guard: 'currentHeads', actions: 'compact' },
      },
    },
  },
});

import * as Automerge from '@automerge/automerge';
import { DUPLICATE, type ActorHost, type TurnResult } from '../../actors/ActorHost.js';
import { streamOf, type ActorAddress } from '../../actors/ActorKind.js';
import type { Store, StoredEvent } from '../../actors/Store.js';
import { compactionDue, sameHeads, type DocumentData, type DocumentEvent, documentMachine } from '../../machines/documentMachine.js';
import {
  STATE_DOCUMENT_ID,
  type DocumentChangeResult,
  type DocumentChangeSource,
  type DocumentHistoryEntry,
  type DocumentSummary,
} from '../../protocol/documents.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Page } from '../../protocol/model.js';
import { documentActorId, documentSummary } from '../kinds/documentKind.js';
import type { Logger } from '../logger.js';
import { DocumentEditor, checkEdit, editSize, type DocumentEdit } from './edits.js';
import { MirrorMismatch, toJsonPatch } from './jsonPatchDiff.js';
import { checkJson, jsonEqual, toPlain } from './values.js';

/** Limits of workspace documents. Sizes in bytes. */
export interface DocumentLimits {
  /** Largest document: its last compacted save plus the changes stored since (`TROUPE_DOC_MAX_BYTES`). Default 5 MiB. */
  maxBytes: number;
  /** Changes one document accepts per second, in bursts of up to as many (`TROUPE_DOC_MAX_CHANGES_PER_SECOND`). Default 200. */
  maxChangesPerSecond: number;
  /** Entries of one call: ops, patch operations, splices or Automerge changes (`TROUPE_DOC_MAX_OPS`). Default 1 000. */
  maxOpsPerCall: number;
  /** Automerge changes after which a compacted save is stored (`TROUPE_DOC_COMPACT_EVERY`; see `compactionDue`). Default 500. */
  compactEvery: number;
  /** Documents kept loaded in memory; beyond it the least recently used idle ones are dropped (`TROUPE_DOC_CACHE`). Default 500. */
  maxLoaded: number;
}

/** The defaults of {@link DocumentLimits}. */
export const DEFAULT_DOCUMENT_LIMITS: DocumentLimits = {
  maxBytes: 5 * 1024 * 1024,
  maxChangesPerSecond: 200,
  maxOpsPerCall: 1_000,
  compactEvery: 500,
  maxLoaded: 500,
};

/** Jobs waiting for one document; beyond it calls get BUSY. */
const MAX_QUEUED = 1_000;

/** Options of {@link DocumentService}. */
export interface DocumentServiceOptions {
  host: ActorHost;
  store: Store;
  now?: () => number;
  limits?: Partial<DocumentLimits>;
  log?: Logger;
  /** After every change, check that the JSON content kept in memory equals the document's (tests). */
  verifyMirror?: boolean;
  /**
   * Before answering from memory, check the document's version in the store (a cluster: another
   * node may have written it, and the news of it may not have arrived yet). Default false.
   */
  checkStoreVersion?: boolean;
  /** Set in a cluster: writes go to the node that owns the document, which applies them. */
  owners?: DocumentOwners;
}

/** The writes of {@link DocumentService} that run on a document's owner in a cluster. */
export type DocumentWrite = 'create' | 'edit' | 'merge' | 'restore';

/**
 * Where a cluster's documents are written: each write runs on the node that owns the document's
 * actor, so concurrent writers from several nodes queue there instead of racing each other.
 */
export interface DocumentOwners {
  /** The live node other than this one that owns the actor, or null (this node may write). */
  ownerOf(stream: string): Promise<string | null>;
  /** Runs a write on that node's document service and returns its result. */
  call(node: string, write: DocumentWrite, args: unknown[]): Promise<unknown>;
}

/** Which document. */
export interface DocumentRef {
  tenant: string;
  workspaceId: string;
  documentId: string;
}

/** Who writes, for the event's stamp. */
export interface WriteContext {
  principal: string;
  correlationId?: string;
}

/** A document as read: metadata, content and heads. */
export interface DocumentRead {
  summary: DocumentSummary;
  content: Record<string, unknown>;
  automerge?: string;
}

/** How the last load of a document went (for tests and the benchmark). */
export interface DocumentLoad {
  documentId: string;
  /** Whether it started from a compacted save. */
  fromSave: boolean;
  /** Automerge changes applied after the save (in one call). */
  changesApplied: number;
  /** Events read from the store. */
  eventsRead: number;
  ms: number;
}

/** A document loaded in memory: the Automerge document and its content as plain JSON. */
interface Live {
  doc: Automerge.Doc<unknown>;
  /** The content as JSON clients see it, kept in step with `doc` by the JSON Patch of each change. */
  mirror: Record<string, unknown>;
  /** The stream version `doc` reflects (0: the document does not exist yet). */
  version: number;
  data: DocumentData | null;
}

interface Slot {
  ref: DocumentRef;
  address: ActorAddress;
  tail: Promise<void>;
  queued: number;
  live: Live | null;
  tokens: number;
  refilledAt: number;
  /** The version this service is writing now (its own commit is not news). */
  writing: number | null;
  /** The newest version written by someone else (another node) while the document was busy. */
  newer: number;
}

/** What a change needs besides the new document. */
interface Pending {
  source: DocumentChangeSource;
  restoredFrom?: string[];
  create?: { title: string; kind: 'state' | 'document' };
}

const b64 = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const unb64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

function changeSources(e: StoredEvent): string[] {
  return e.type === 'document.create' || e.type === 'document.change' ? ((e.data.changes as string[] | undefined) ?? []) : [];
}

/**
 * The live Automerge documents of workspaces (state and shared documents), in front of their
 * `document` actors. JSON clients' edits and Automerge clients' changes are applied here, one at
 * a time per document; each resulting change is stored as an event of the document's actor
 * (with its Automerge changes, heads, JSON Patch and paths, stamped with the authenticated
 * principal) before the call is answered, and the event's commit fans the JSON Patch out to
 * subscribers. Documents stay in memory (at most `maxLoaded`, least recently used dropped first);
 * a document is rebuilt from its last compacted save plus the changes after it, applied in one
 * call. When a write fails the document is dropped from memory and rebuilt from the store on its
 * next use, so memory never runs ahead of what was acknowledged.
 *
 * @example
 * ```ts
 * const docs = new DocumentService({ host, store });
 * await docs.edit({ tenant: 'acme', workspaceId: 'w1', documentId: 'state' }, { principal: 'ada' },
 *   { ops: [{ op: 'increment', path: '/visits' }] }, { create: { title: 'State', kind: 'state' } });
 * ```
 */
export class DocumentService {
  readonly limits: DocumentLimits;
  #host: ActorHost;
  #store: Store;
  #now: () => number;
  #log: Logger | undefined;
  #verify: boolean;
  #checkStoreVersion: boolean;
  #owners: DocumentOwners | undefined;
  #slots = new Map<string, Slot>();
  #loaded = 0;
  #loads = 0;
  #lastLoad: DocumentLoad | null = null;

  constructor(opts: DocumentServiceOptions) {
    this.#host = opts.host;
    this.#store = opts.store;
    this.#now = opts.now ?? Date.now;
    this.#log = opts.log;
    this.#verify = opts.verifyMirror ?? false;
    this.#checkStoreVersion = opts.checkStoreVersion ?? false;
    this.#owners = opts.owners;
    this.limits = { ...DEFAULT_DOCUMENT_LIMITS, ...opts.limits };
    // In a cluster another node may write a document this node holds in memory: its copy is
    // then out of date and is rebuilt from the store on its next use.
    opts.host.onCommit((events) => {
      for (const e of events) {
        if (e.kind !== 'document') continue;
        const slot = this.#slots.get(e.stream);
        if (!slot?.live || e.version <= slot.live.version || e.version === slot.writing) continue;
        if (slot.queued === 0) this.#discard(slot);
        else slot.newer = Math.max(slot.newer, e.version);
      }
    });
  }

  /** Documents in memory now, loads so far, and how the last load went. */
  stats(): { loaded: number; loads: number; lastLoad: DocumentLoad | null } {
    return { loaded: this.#loaded, loads: this.#loads, lastLoad: this.#lastLoad };
  }

  /** Drops every document from memory (they are rebuilt from the store on their next use). */
  unloadAll(): void {
    for (const slot of this.#slots.values()) if (slot.queued === 0) this.#discard(slot);
  }

  // ---- reads ----------------------------------------------------------------------------------

  /** A document with its content, or null when it does not exist. */
  async get(ref: DocumentRef, opts: { includeAutomerge?: boolean } = {}): Promise<DocumentRead | null> {
    return this.#run(ref, async (slot) => {
      const live = await this.#live(slot);
      if (!live.data) return null;
      const read: DocumentRead = { summary: documentSummary(live.data, live.version), content: structuredClone(live.mirror) };
      if (opts.includeAutomerge) read.automerge = b64(Automerge.save(live.doc));
      return read;
    });
  }

  /** The versions of a document, newest first; `cursor` is the version to continue below. */
  async history(ref: DocumentRef, opts: { limit?: number; cursor?: string } = {}): Promise<Page<DocumentHistoryEntry>> {
    const limit = opts.limit ?? 50;
    const stream = streamOf(this.#address(ref));
    let before: number;
    if (opts.cursor !== undefined) {
      if (!/^[1-9][0-9]{0,15}$/.test(opts.cursor)) {
        throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
      }
      before = Number(opts.cursor);
    } else {
      before = (await this.#store.streamInfo(stream)).version + 1;
    }
    const items: DocumentHistoryEntry[] = [];
    let hi = before - 1;
    // Compactions are skipped, so a page may need more than one read.
    while (items.length < limit && hi > 0) {
      const lo = Math.max(0, hi - (limit - items.length));
      const events = await this.#store.readStream(stream, lo, hi - lo);
      for (const e of events.reverse()) {
        if (e.type !== 'document.create' && e.type !== 'document.change') continue;
        const d = e.data as unknown as Extract<DocumentEvent, { type: 'document.change' }>;
        const entry: DocumentHistoryEntry = {
          version: e.version,
          heads: d.heads,
          by: e.meta.principal,
          at: new Date(e.meta.at).toISOString(),
          source: d.source,
          changes: d.changes.length,
          paths: d.paths,
        };
        if (d.restoredFrom) entry.restoredFrom = d.restoredFrom;
        items.push(entry);
      }
      hi = lo;
    }
    return { items, nextCursor: hi > 0 ? String(hi + 1) : null };
  }

  // ---- writes ---------------------------------------------------------------------------------

  /** Creates a shared document with optional content; ALREADY_EXISTS if it exists. */
  create(ref: DocumentRef, ctx: WriteContext, opts: { title: string; content?: Record<string, unknown> }): Promise<DocumentRead> {
    return this.#routed(ref, 'create', [ref, ctx, opts], () => this.#create(ref, ctx, opts));
  }

  async #create(ref: DocumentRef, ctx: WriteContext, opts: { title: string; content?: Record<string, unknown> }): Promise<DocumentRead> {
    if (opts.content !== undefined) checkJson(opts.content, 'content');
    this.#admit(this.#slot(ref));
    return this.#run(ref, async (slot) => {
      const live = await this.#live(slot);
      if (live.data) {
        throw new ProtocolError('ALREADY_EXISTS', `Document ${ref.documentId} already exists in workspace ${ref.workspaceId}; choose another id or edit it with document.update.`, {
          kind: 'document',
          id: ref.documentId,
        });
      }
      const content = opts.content ?? {};
      const pending: Pending = { source: 'create', create: { title: opts.title, kind: ref.documentId === STATE_DOCUMENT_ID ? 'state' : 'document' } };
      if (Object.keys(content).length === 0) {
        await this.#commit(slot, live, ctx, pending, live.doc, [], []);
      } else {
        const edit: DocumentEdit = { ops: [{ op: 'set', path: '', value: content }] };
        const { doc, patches, changes } = this.#change(slot, live, ctx, (d) => new DocumentEditor(d).apply(edit));
        await this.#commit(slot, live, ctx, pending, doc, patches, changes);
      }
      return { summary: documentSummary(slot.live!.data!, slot.live!.version), content: structuredClone(slot.live!.mirror) };
    });
  }

  /**
   * Applies a JSON client's edit. `expectedHeads`: the edit was made against that version; it is
   * applied there and merged with what happened since. `create`: create the document with this
   * title when it does not exist yet (the workspace state); otherwise NOT_FOUND.
   */
  edit(
    ref: DocumentRef,
    ctx: WriteContext,
    edit: DocumentEdit,
    opts: { expectedHeads?: string[]; create?: { title: string; kind: 'state' | 'document' } } = {},
  ): Promise<DocumentChangeResult> {
    return this.#routed(ref, 'edit', [ref, ctx, edit, opts], () => this.#edit(ref, ctx, edit, opts));
  }

  async #edit(
    ref: DocumentRef,
    ctx: WriteContext,
    edit: DocumentEdit,
    opts: { expectedHeads?: string[]; create?: { title: string; kind: 'state' | 'document' } },
  ): Promise<DocumentChangeResult> {
    this.#checkCount(editSize(edit), 'The edit');
    checkEdit(edit);
    this.#admit(this.#slot(ref));
    return this.#run(ref, async (slot) => {
      const live = await this.#live(slot);
      this.#requireExists(live, ref, opts.create);
      const expected = opts.expectedHeads;
      let at: string[] | undefined;
      if (expected && !sameHeads(expected, Automerge.getHeads(live.doc))) {
        if (!Automerge.hasHeads(live.doc, expected)) throw this.#unknownHeads(ref, expected, 'expectedHeads');
        at = expected;
      }
      const { doc, patches, changes } = this.#change(slot, live, ctx, (d) => new DocumentEditor(d).apply(edit), at);
      const created = live.data ? undefined : opts.create;
      return this.#commit(slot, live, ctx, { source: created ? 'create' : 'update', create: created }, doc, patches, changes);
    });
  }

  /**
   * Merges Automerge changes made elsewhere (an offline client's), attributed to the caller.
   * Changes the document has are counted as duplicates; a change whose dependencies are neither
   * in the document nor among the changes sent is refused, with nothing merged.
   */
  merge(
    ref: DocumentRef,
    ctx: WriteContext,
    encoded: string[],
    opts: { create?: { title: string; kind: 'state' | 'document' } } = {},
  ): Promise<DocumentChangeResult & { applied: number; duplicates: number }> {
    return this.#routed(ref, 'merge', [ref, ctx, encoded, opts], () => this.#merge(ref, ctx, encoded, opts));
  }

  async #merge(
    ref: DocumentRef,
    ctx: WriteContext,
    encoded: string[],
    opts: { create?: { title: string; kind: 'state' | 'document' } },
  ): Promise<DocumentChangeResult & { applied: number; duplicates: number }> {
    this.#checkCount(encoded.length, 'The merge');
    const decoded = encoded.map((s, i) => {
      const bytes = unb64(s);
      let change: Automerge.DecodedChange;
      try {
        change = Automerge.decodeChange(bytes);
      } catch (e) {
        throw new ProtocolError('INVALID_PARAMS', `changes[${i}] is not an Automerge change (${(e as Error).message}); send the bytes of Automerge.getChanges() in base64.`, {
          field: `changes[${i}]`,
        });
      }
      return { bytes, hash: change.hash!, deps: change.deps };
    });
    this.#admit(this.#slot(ref));
    return this.#run(ref, async (slot) => {
      const live = await this.#live(slot);
      this.#requireExists(live, ref, opts.create);
      const sent = new Set(decoded.map((c) => c.hash));
      const fresh = new Map<string, (typeof decoded)[number]>();
      for (const c of decoded) if (!fresh.has(c.hash) && !Automerge.hasHeads(live.doc, [c.hash])) fresh.set(c.hash, c);
      const duplicates = decoded.length - fresh.size;
      for (const c of fresh.values()) {
        const missing = c.deps.find((d) => !sent.has(d) && !Automerge.hasHeads(live.doc, [d]));
        if (missing) {
          throw new ProtocolError(
            'INVALID_PARAMS',
            `Change ${c.hash} depends on change ${missing}, which this document does not have; send every change made since the heads you last had. Nothing was merged.`,
            { field: 'changes', missing },
          );
        }
      }
      const base = this.#result(ref, live, false);
      if (fresh.size === 0) return { ...base, applied: 0, duplicates };
      const changes = [...fresh.values()].map((c) => c.bytes);
      this.#checkSize(ref, live, changes);
      const patches: Automerge.Patch[] = [];
      let doc: Automerge.Doc<unknown>;
      try {
        [doc] = Automerge.applyChanges(live.doc, changes, { patchCallback: (p) => patches.push(...p) });
      } catch (e) {
        this.#discard(slot);
        throw new ProtocolError('INVALID_PARAMS', `Automerge refused the changes (${(e as Error).message}); nothing was merged.`, { field: 'changes' });
      }
      if (Automerge.getMissingDeps(doc, []).length > 0) {
        this.#discard(slot);
        throw new ProtocolError('INVALID_PARAMS', 'Some changes could not be applied for want of changes they depend on; nothing was merged.', { field: 'changes' });
      }
      const created = live.data ? undefined : opts.create;
      const r = await this.#commit(slot, live, ctx, { source: created ? 'create' : 'merge', create: created }, doc, patches, changes);
      return { ...r, applied: changes.length, duplicates };
    });
  }

  /** Makes the content what it was at `heads`, as a new change; history is kept. */
  restore(ref: DocumentRef, ctx: WriteContext, heads: string[]): Promise<DocumentChangeResult & { restoredFrom: string[] }> {
    return this.#routed(ref, 'restore', [ref, ctx, heads], () => this.#restore(ref, ctx, heads));
  }

  async #restore(ref: DocumentRef, ctx: WriteContext, heads: string[]): Promise<DocumentChangeResult & { restoredFrom: string[] }> {
    this.#admit(this.#slot(ref));
    return this.#run(ref, async (slot) => {
      const live = await this.#live(slot);
      this.#requireExists(live, ref);
      if (!Automerge.hasHeads(live.doc, heads)) throw this.#unknownHeads(ref, heads, 'heads');
      const target = Automerge.view(live.doc, heads);
      const { doc, patches, changes } = this.#change(slot, live, ctx, (d) => new DocumentEditor(d).restore(target));
      const r = await this.#commit(slot, live, ctx, { source: 'restore', restoredFrom: heads }, doc, patches, changes);
      return { ...r, restoredFrom: heads };
    });
  }

  // ---- internals ------------------------------------------------------------------------------

  /**
   * Runs a write that another node sent here because this node owns the document: applied here,
   * never sent on (should the document have moved meanwhile, its actor still refuses a stale write).
   */
  applyForwarded(write: DocumentWrite, args: unknown[]): Promise<unknown> {
    switch (write) {
      case 'create':
        return this.#create(...(args as Parameters<DocumentService['create']>));
      case 'edit': {
        const [ref, ctx, edit, opts] = args as Parameters<DocumentService['edit']>;
        return this.#edit(ref, ctx, edit, opts ?? {});
      }
      case 'merge': {
        const [ref, ctx, encoded, opts] = args as Parameters<DocumentService['merge']>;
        return this.#merge(ref, ctx, encoded, opts ?? {});
      }
      case 'restore':
        return this.#restore(...(args as Parameters<DocumentService['restore']>));
    }
  }

  /** Runs a write here, or on the other node that owns the document. */
  async #routed<T>(ref: DocumentRef, write: DocumentWrite, args: unknown[], here: () => Promise<T>): Promise<T> {
    // Not knowing the owner (Redis away) is no reason to refuse: the actor host still routes the
    // commit, and a stale copy is refused by version.
    const stream = streamOf(this.#address(ref));
    const node = this.#owners && !this.#host.isActive(stream) ? await this.#owners.ownerOf(stream).catch(() => null) : null;
    return node ? ((await this.#owners!.call(node, write, args)) as T) : here();
  }

  #address(ref: DocumentRef): ActorAddress {
    return { tenant: ref.tenant, kind: 'document', id: documentActorId(ref.workspaceId, ref.documentId) };
  }

  #slot(ref: DocumentRef): Slot {
    const key = streamOf(this.#address(ref));
    let slot = this.#slots.get(key);
    if (slot) {
      // Map order is use order: the first entries are the least recently used.
      this.#slots.delete(key);
    } else {
      const now = this.#now();
      slot = { ref, address: this.#address(ref), tail: Promise.resolve(), queued: 0, live: null, tokens: this.limits.maxChangesPerSecond, refilledAt: now, writing: null, newer: 0 };
    }
    this.#slots.set(key, slot);
    return slot;
  }

  /** Runs `fn` after every job queued for the document so far. */
  #run<T>(ref: DocumentRef, fn: (slot: Slot) => Promise<T>): Promise<T> {
    const slot = this.#slot(ref);
    if (slot.queued >= MAX_QUEUED) {
      return Promise.reject(
        new ProtocolError('BUSY', `Document ${ref.documentId} has ${slot.queued} calls waiting, the most it queues; retry after 100 ms.`, {
          retryAfterMs: 100,
          limit: MAX_QUEUED,
        }),
      );
    }
    slot.queued++;
    const result = slot.tail.then(() => fn(slot));
    slot.tail = result.then(
      () => this.#settle(slot),
      () => this.#settle(slot),
    );
    return result;
  }

  #settle(slot: Slot): void {
    slot.queued--;
    if (slot.queued === 0 && !slot.live) this.#slots.delete(streamOf(slot.address));
    this.#trim();
  }

  /** Drops least recently used idle documents while more than `maxLoaded` are in memory. */
  #trim(): void {
    if (this.#loaded <= this.limits.maxLoaded) return;
    for (const slot of this.#slots.values()) {
      if (this.#loaded <= this.limits.maxLoaded) break;
      if (slot.queued > 0 || !slot.live) continue;
      this.#discard(slot);
      this.#slots.delete(streamOf(slot.address));
    }
  }

  /** Forgets the document in memory: the next use rebuilds it from the store. */
  #discard(slot: Slot): void {
    if (!slot.live) return;
    const doc = slot.live.doc;
    slot.live = null;
    this.#loaded--;
    try {
      Automerge.free(doc);
    } catch {
      /* already freed with a document derived from it */
    }
  }

  /** Token bucket per document: `maxChangesPerSecond` per second, bursts of as many. */
  #admit(slot: Slot): void {
    const rate = this.limits.maxChangesPerSecond;
    const now = this.#now();
    slot.tokens = Math.min(rate, slot.tokens + ((now - slot.refilledAt) / 1000) * rate);
    slot.refilledAt = now;
    if (slot.tokens < 1) {
      const retryAfterMs = Math.max(1, Math.ceil(((1 - slot.tokens) / rate) * 1000));
      const { documentId, workspaceId } = slot.ref;
      throw new ProtocolError('RATE_LIMITED', `Document ${documentId} of workspace ${workspaceId} accepts at most ${rate} changes per second; retry after ${retryAfterMs} ms.`, {
        retryAfterMs,
        limit: rate,
        workspaceId,
        documentId,
      });
    }
    slot.tokens -= 1;
  }

  #checkCount(n: number, what: string): void {
    const max = this.limits.maxOpsPerCall;
    if (n > max) {
      throw new ProtocolError('INVALID_PARAMS', `${what} has ${n} entries; at most ${max} are accepted per call. Split it into several calls.`, {
        check: 'count',
        limit: max,
        count: n,
      });
    }
  }

  #checkSize(ref: DocumentRef, live: Live, changes: Uint8Array[]): void {
    const bytes = changes.reduce((n, c) => n + c.byteLength, 0);
    const size = live.data?.size ?? 0;
    if (size + bytes > this.limits.maxBytes) {
      throw new ProtocolError(
        'QUOTA_EXCEEDED',
        `Document ${ref.documentId} of workspace ${ref.workspaceId} would grow to ${size + bytes} bytes, beyond the limit of ${this.limits.maxBytes}; nothing was changed. Keep documents small: put new content in another document.`,
        { limitBytes: this.limits.maxBytes, sizeBytes: size, changeBytes: bytes, workspaceId: ref.workspaceId, documentId: ref.documentId },
      );
    }
  }

  #requireExists(live: Live, ref: DocumentRef, create?: unknown): void {
    if (!live.data && !create) {
      throw new ProtocolError('NOT_FOUND', `Document ${ref.documentId} does not exist in workspace ${ref.workspaceId}.`, { kind: 'document', id: ref.documentId });
    }
  }

  #unknownHeads(ref: DocumentRef, heads: string[], field: string): ProtocolError {
    return new ProtocolError('INVALID_PARAMS', `${field} name changes that document ${ref.documentId} does not have; use heads this server returned.`, {
      field,
      heads,
    });
  }

  /** The loaded document, loading it from the store when needed. */
  async #live(slot: Slot): Promise<Live> {
    if (slot.live && slot.newer > slot.live.version) this.#discard(slot);
    // Another node's acknowledged change may not have reached this node yet: the store knows.
    // (While this node holds the actor, every write to it commits here and is heard at once.)
    const stream = streamOf(slot.address);
    if (slot.live && this.#checkStoreVersion && !this.#host.isActive(stream) && (await this.#store.streamInfo(stream)).version > slot.live.version) {
      this.#discard(slot);
    }
    if (slot.live) return slot.live;
    const started = performance.now();
    const { snapshot, version } = await this.#host.read<typeof documentMachine>(slot.address);
    let live: Live;
    let load: Omit<DocumentLoad, 'ms'> = { documentId: slot.ref.documentId, fromSave: false, changesApplied: 0, eventsRead: 0 };
    if (snapshot.value !== 'active') {
      live = { doc: Automerge.init(), mirror: {}, version, data: null };
    } else {
      const data = snapshot.context.doc;
      const save = data.save;
      const events = (await this.#store.readStream(streamOf(slot.address), save ? save.version - 1 : 0)).filter((e) => e.version <= version);
      let doc: Automerge.Doc<unknown>;
      let rest = events;
      if (save) {
        const first = events[0];
        if (first?.type !== 'document.compact' || first.version !== save.version) throw this.#corrupt(slot, `its save (version ${save.version}) is missing`);
        doc = Automerge.load(unb64(first.data.save as string));
        rest = events.slice(1);
      } else {
        doc = Automerge.init();
      }
      const changes = rest.flatMap(changeSources).map(unb64);
      if (changes.length > 0) [doc] = Automerge.applyChanges(doc, changes);
      if (!sameHeads(Automerge.getHeads(doc), data.heads)) throw this.#corrupt(slot, 'its changes do not lead to its recorded heads');
      live = { doc, mirror: toPlain(doc) as Record<string, unknown>, version, data };
      load = { documentId: slot.ref.documentId, fromSave: save !== null, changesApplied: changes.length, eventsRead: events.length };
    }
    this.#loads++;
    this.#lastLoad = { ...load, ms: performance.now() - started };
    slot.live = live;
    this.#loaded++;
    return live;
  }

  #corrupt(slot: Slot, why: string): ProtocolError {
    this.#log?.error({ document: streamOf(slot.address) }, `document cannot be rebuilt: ${why}`);
    return new ProtocolError('INTERNAL', `Document ${slot.ref.documentId} could not be rebuilt from the store: ${why}.`);
  }

  /**
   * Runs an edit in an Automerge change (at `at`, the heads the client edited, when given). A
   * ProtocolError thrown by the edit rolls the change back and leaves the document usable;
   * anything Automerge itself throws may not, so the document is dropped from memory.
   */
  #change(
    slot: Slot,
    live: Live,
    ctx: WriteContext,
    fn: (d: unknown) => void,
    at?: string[],
  ): { doc: Automerge.Doc<unknown>; patches: Automerge.Patch[]; changes: Uint8Array[] } {
    const patches: Automerge.Patch[] = [];
    const before = Automerge.getHeads(live.doc);
    const options: Automerge.ChangeOptions<unknown> = {
      // Automerge clients see who made the change; the event records it authoritatively.
      message: ctx.principal,
      time: Math.floor(this.#now() / 1000),
      patchCallback: (p) => patches.push(...p),
    };
    try {
      // One call makes at most one change, found directly: getChangesSince would walk the whole
      // history, and getLastLocalChange does not see a change made by changeAt.
      if (at) {
        const { newDoc, newHeads } = Automerge.changeAt(live.doc, at, options, fn);
        const change = newHeads?.[0] ? Automerge.getBackend(newDoc).getChangeByHash(newHeads[0]) : null;
        return { doc: newDoc, patches, changes: change ? [change] : [] };
      }
      const doc = Automerge.change(live.doc, options, fn);
      const changed = doc !== live.doc && !sameHeads(Automerge.getHeads(doc), before);
      const last = changed ? Automerge.getLastLocalChange(doc) : undefined;
      return { doc, patches, changes: last ? [last] : [] };
    } catch (e) {
      if (isProtocolError(e)) {
        // Automerge rolls a failed changeAt back but leaves the document isolated at `at`.
        if (at) Automerge.getBackend(live.doc).integrate();
        throw e;
      }
      this.#discard(slot);
      throw new ProtocolError('INVALID_PARAMS', `Automerge refused the edit (${(e as Error).message}); nothing was changed.`, {});
    }
  }

  #result(ref: DocumentRef, live: Live, changed: boolean, diff = { patch: [] as DocumentChangeResult['patch'], paths: [] as string[] }): DocumentChangeResult {
    return {
      workspaceId: ref.workspaceId,
      documentId: ref.documentId,
      changed,
      version: live.version,
      heads: Automerge.getHeads(live.doc),
      patch: diff.patch,
      paths: diff.paths,
      size: live.data?.size ?? 0,
    };
  }

  /**
   * Stores a change: translates its patches to JSON Patch (updating the mirror), checks the
   * size, and sends the event to the document's actor, expecting the version `live` reflects.
   * Answers once the event is committed. Any failure drops the document from memory.
   */
  async #commit(
    slot: Slot,
    live: Live,
    ctx: WriteContext,
    pending: Pending,
    doc: Automerge.Doc<unknown>,
    patches: Automerge.Patch[],
    changes: Uint8Array[],
  ): Promise<DocumentChangeResult> {
    const ref = slot.ref;
    if (changes.length === 0 && !pending.create) {
      live.doc = doc;
      return this.#result(ref, live, false);
    }
    let result: TurnResult<typeof documentMachine>;
    let diff;
    try {
      this.#checkSize(ref, live, changes);
      diff = toJsonPatch(patches, live.mirror);
      live.doc = doc;
      const fields = {
        workspaceId: ref.workspaceId,
        documentId: ref.documentId,
        changes: changes.map(b64),
        bytes: changes.reduce((n, c) => n + c.byteLength, 0),
        heads: Automerge.getHeads(doc),
        patch: diff.patch,
        paths: diff.paths,
      };
      const event = pending.create
        ? { type: 'document.create', title: pending.create.title, kind: pending.create.kind, source: 'create', ...fields }
        : { type: 'document.change', source: pending.source, ...fields, ...(pending.restoredFrom ? { restoredFrom: pending.restoredFrom } : {}) };
      slot.writing = live.version + 1;
      const r = await this.#host.send<typeof documentMachine>(slot.address, event, {
        principal: ctx.principal,
        correlationId: ctx.correlationId,
        expectedVersion: live.version,
      });
      if (r === DUPLICATE) throw new ProtocolError('INTERNAL', 'Unexpected duplicate event.');
      result = r;
    } catch (e) {
      slot.writing = null;
      this.#discard(slot);
      if (e instanceof MirrorMismatch) {
        this.#log?.error({ err: e, document: streamOf(slot.address) }, 'JSON mirror out of step with the document');
        throw new ProtocolError('INTERNAL', `The server failed while applying the change to document ${ref.documentId}; nothing was changed.`);
      }
      // Only this service writes documents: another version means another node wrote it.
      if (isProtocolError(e, 'VERSION_MISMATCH')) {
        throw new ProtocolError('UNAVAILABLE', `Document ${ref.documentId} was changed elsewhere; nothing was written, retry.`, { retryAfterMs: 50, outcome: 'not_applied' });
      }
      throw e;
    }
    slot.writing = null;
    live.version = result.version;
    live.data = result.snapshot.context.doc;
    if (this.#verify) this.#verifyMirror(slot, live);
    if (compactionDue(live.data, this.limits.compactEvery)) void this.#compact(slot.ref);
    return this.#result(ref, live, true, diff);
  }

  #verifyMirror(slot: Slot, live: Live): void {
    // A fresh view: after changeAt the document object itself may show stale content.
    if (!jsonEqual(live.mirror, toPlain(Automerge.view(live.doc, Automerge.getHeads(live.doc))))) {
      this.#discard(slot);
      throw new ProtocolError('INTERNAL', `The JSON content of document ${slot.ref.documentId} is out of step with the Automerge document.`);
    }
  }

  /** Stores a compacted save of the document, behind the jobs queued so far. */
  #compact(ref: DocumentRef): Promise<void> {
    return this.#run(ref, async (slot) => {
      const live = slot.live;
      if (!live?.data || !compactionDue(live.data, this.limits.compactEvery)) return;
      const save = Automerge.save(live.doc);
      slot.writing = live.version + 1;
      try {
        const r = await this.#host.send<typeof documentMachine>(
          slot.address,
          { type: 'document.compact', save: b64(save), heads: Automerge.getHeads(live.doc), bytes: save.byteLength },
          { principal: 'system', expectedVersion: live.version },
        );
        if (r === DUPLICATE) throw new Error('unexpected duplicate event');
        live.version = r.version;
        live.data = r.snapshot.context.doc;
      } catch (e) {
        this.#discard(slot);
        throw e;
      } finally {
        slot.writing = null;
      }
    }).catch((e: unknown) => {
      this.#log?.warn({ err: e, document: streamOf(this.#address(ref)) }, 'document compaction failed; it is tried again after the next change');
    });
  }
}

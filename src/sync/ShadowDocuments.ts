import * as Automerge from '@automerge/automerge';
import type { ActorHost } from '../../actors/ActorHost.js';
import { streamOf } from '../../actors/ActorKind.js';
import type { StoredEvent } from '../../actors/Store.js';
import { sameHeads } from '../../machines/documentMachine.js';
import type { DocumentRef, DocumentService } from '../documents/DocumentService.js';
import { documentActorId } from '../kinds/documentKind.js';
import type { Logger } from '../logger.js';

/**
 * The committed state of one workspace document, as `/sync` peers are served it. Only changes
 * whose events are stored ever enter it, so a peer is never sent a change the server could still
 * lose.
 */
export interface Shadow {
  readonly key: string;
  readonly ref: DocumentRef;
  /**
   * The document. Its Automerge backend is kept current; its JavaScript view is not (nothing
   * reads it), so use it only with functions that work on the backend (sync, heads, changes).
   * `Automerge.receiveSyncMessage` returns a new object for the same backend: store it here.
   */
  doc: Automerge.Doc<unknown>;
  /** False while the document has never been created (a workspace state before its first change). */
  exists: boolean;
  /** Called after each committed change, synchronously inside the commit. */
  readonly listeners: Set<() => void>;
}

interface Entry {
  shadow: Shadow | null;
  ref: DocumentRef;
  loading: Promise<Shadow>;
  /** Changes committed while loading, applied once loaded (Automerge ignores the ones it has). */
  buffered: Uint8Array[][];
  created: boolean;
  users: number;
}

const unb64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

/**
 * Copies of the workspace documents that `/sync` peers have open, one per document however many
 * peers have it open, loaded from the document service and then kept current from the commits
 * of the documents' actors (the Automerge changes each event carries are applied to the copy).
 * The copy lives while a peer uses it and is freed after the last one lets go.
 *
 * Why a copy rather than the document service's own document: the service's document runs ahead
 * of the store while a change is being committed, and is dropped when a commit fails; the copy
 * only ever holds what the store holds.
 *
 * @example
 * ```ts
 * const shadows = new ShadowDocuments({ host, docs });
 * const s = await shadows.acquire({ tenant: 'acme', workspaceId: 'w1', documentId: 'state' });
 * s.listeners.add(() => console.log(Automerge.getHeads(s.doc)));
 * shadows.release(s);
 * ```
 */
export class ShadowDocuments {
  #docs: DocumentService;
  #log: Logger | undefined;
  #entries = new Map<string, Entry>();

  constructor(opts: { host: ActorHost; docs: DocumentService; log?: Logger }) {
    this.#docs = opts.docs;
    this.#log = opts.log;
    opts.host.onCommit((events) => {
      for (const e of events) this.#committed(e);
    });
  }

  /** Documents held now. */
  get size(): number {
    return this.#entries.size;
  }

  /** The document's copy, loading it on first use; pair every successful call with {@link release}. */
  async acquire(ref: DocumentRef): Promise<Shadow> {
    const key = streamOf({ tenant: ref.tenant, kind: 'document', id: documentActorId(ref.workspaceId, ref.documentId) });
    let entry = this.#entries.get(key);
    if (!entry) {
      const e: Entry = { shadow: null, ref, loading: null as unknown as Promise<Shadow>, buffered: [], created: false, users: 0 };
      e.loading = this.#load(key, e);
      this.#entries.set(key, e);
      entry = e;
    }
    entry.users++;
    try {
      return await entry.loading;
    } catch (err) {
      entry.users--;
      throw err;
    }
  }

  /** Lets go of a copy; the last user's release frees it. */
  release(shadow: Shadow): void {
    const entry = this.#entries.get(shadow.key);
    if (!entry || entry.shadow !== shadow) return;
    if (--entry.users > 0) return;
    this.#entries.delete(shadow.key);
    shadow.listeners.clear();
    Automerge.free(shadow.doc);
  }

  async #load(key: string, entry: Entry): Promise<Shadow> {
    try {
      const read = await this.#docs.get(entry.ref, { includeAutomerge: true });
      const doc = read?.automerge ? Automerge.load<unknown>(unb64(read.automerge)) : Automerge.init<unknown>();
      const shadow: Shadow = { key, ref: entry.ref, doc, exists: read !== null || entry.created, listeners: new Set() };
      for (const changes of entry.buffered) this.#apply(shadow, changes);
      entry.buffered = [];
      entry.shadow = shadow;
      return shadow;
    } catch (e) {
      this.#entries.delete(key);
      throw e;
    }
  }

  #apply(shadow: Shadow, changes: Uint8Array[]): void {
    const backend = Automerge.getBackend(shadow.doc);
    backend.applyChanges(changes);
    // Nothing reads the JavaScript view: without this, the next receiveSyncMessage would bring it
    // up to date, turning every change since the load into patches.
    backend.updateDiffCursor();
  }

  #committed(e: StoredEvent): void {
    if (e.kind !== 'document' || (e.type !== 'document.create' && e.type !== 'document.change')) return;
    const entry = this.#entries.get(e.stream);
    if (!entry) return;
    const changes = ((e.data.changes as string[] | undefined) ?? []).map(unb64);
    const shadow = entry.shadow;
    if (!shadow) {
      if (e.type === 'document.create') entry.created = true;
      entry.buffered.push(changes);
      return;
    }
    if (e.type === 'document.create') shadow.exists = true;
    try {
      this.#apply(shadow, changes);
    } catch (err) {
      this.#log?.error({ err, document: shadow.key }, 'a committed change could not be applied to the /sync copy');
    }
    const heads = e.data.heads as string[] | undefined;
    if (heads && !sameHeads(Automerge.getHeads(shadow.doc), heads)) {
      // Not expected: every commit of the document passes here, in order.
      this.#log?.error({ document: shadow.key, version: e.version }, 'the /sync copy of a document is out of step with its events');
    }
    for (const l of [...shadow.listeners]) {
      try {
        l();
      } catch (err) {
        this.#log?.warn({ err, document: shadow.key }, '/sync listener failed');
      }
    }
  }
}

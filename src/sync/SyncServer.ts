import { randomUUID } from 'node:crypto';
import type http from 'node:http';
import type { Duplex } from 'node:stream';
import * as Automerge from '@automerge/automerge';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { STATE_DOCUMENT_ID } from '../../protocol/documents.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type { WorkspacePermission } from '../../protocol/workspaces.js';
import type { Credential } from '../auth/Authenticator.js';
import type { DocumentRef, DocumentService } from '../documents/DocumentService.js';
import { documentActorId } from '../kinds/documentKind.js';
import type { App } from '../server/App.js';
import { CloseCodes } from '../server/Connection.js';
import type { WorkspaceService } from '../workspaces/WorkspaceService.js';
import { syncDocumentOf } from './automergeUrl.js';
import { changesOf } from './changeChunks.js';
import { PROTOCOL_VERSION, SyncMessageTypes, encodeMessage, parseClientMessage, type DocSyncMessage, type EphemeralMessage, type JoinMessage } from './messages.js';
import { ShadowDocuments, type Shadow } from './ShadowDocuments.js';

/** Options of {@link SyncServer}; sizes in bytes, durations in milliseconds. */
export interface SyncServerOptions {
  app: App;
  /** Largest frame a peer may send; larger ones close the socket with 1009 (default: the document size limit plus 64 KiB). */
  maxMessageBytes?: number;
  /** Unsent bytes after which a peer that does not keep up is closed with 4008 (default 8 MiB). */
  maxBufferedBytes?: number;
  /** How often peers' API keys and JWTs are checked again; revoked or expired ones are closed with 4003 (default 30 000). */
  credentialCheckMs?: number;
  /** Peers are pinged this often; one that has not answered by the next ping is dropped (default 30 000; 0: no pings). */
  keepAliveMs?: number;
  /** Documents one connection may have open at once; beyond it the answer is `doc-unavailable` (default 1 000). */
  maxDocumentsPerPeer?: number;
}

/** Close codes of `/sync` besides {@link CloseCodes}. */
export const SyncCloseCodes = {
  /** A frame that is not a valid automerge-repo message, or messages out of order. */
  PROTOCOL_ERROR: 1002,
} as const;

/** Messages waiting for one document of one peer; beyond it the peer is closed. */
const MAX_QUEUED = 256;
/** Changes of one peer and document waiting for changes they depend on, or refused; beyond it the peer is closed. */
const MAX_PENDING = 10_000;
/** Largest ephemeral message relayed (as for `workspace.broadcast`). */
const MAX_EPHEMERAL_BYTES = 64 * 1024;

/** How the first change of a workspace's state creates it (as `workspace.updateState` does). */
const STATE_CREATE = { title: 'Workspace state', kind: 'state' } as const;

/**
 * A change without operations, the same bytes wherever it is made (fixed actor, time 0). An
 * automerge-repo client can only open a document that has at least one change, so a writer who
 * opens an empty one (a workspace state before its first change, a document created without
 * content) adds this one first; two writers doing so at once add the same change.
 */
const EMPTY_CHANGE = Buffer.from(
  Automerge.getLastLocalChange(Automerge.emptyChange(Automerge.init({ actor: '74726f757065000000000000000000ff' }), { time: 0 }))!,
).toString('base64');

type Level = 'none' | 'read' | 'write';

interface Access {
  level: Level;
  permissions: ReadonlySet<WorkspacePermission>;
}

/** A change received from a peer, waiting to be merged. */
interface PendingChange {
  hash: string;
  bytes: Uint8Array;
  deps: string[];
}

/** One document a peer has open. */
interface Session {
  peer: Peer;
  /** The automerge-repo DocumentId. */
  documentId: string;
  ref: DocumentRef;
  shadow: Shadow;
  syncState: Automerge.SyncState;
  writable: boolean;
  /** Set while a revocation is being looked at, and for good once ended: nothing is sent or merged. */
  suspended: boolean;
  ended: boolean;
  pending: Map<string, PendingChange>;
  /** Changes the server refused; changes depending on them are refused too. */
  refused: Set<string>;
  retry: NodeJS.Timeout | null;
  /** The dependencies last asked for, so each commit does not ask again. */
  asked: string;
  listener: () => void;
}

/** One `/sync` connection. */
class Peer {
  readonly id = randomUUID();
  principal: Principal | null = null;
  credential: Credential | null = null;
  /** The client's automerge-repo PeerId, from its `join`. */
  peerId: string | null = null;
  readonly sessions = new Map<string, Session>();
  readonly queues = new Map<string, { tail: Promise<void>; depth: number }>();
  alive = true;
  closed = false;
  constructor(readonly ws: WebSocket) {}
}

const bearer = (header: string | undefined) => (header ? /^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim() : undefined);

/**
 * The `/sync` WebSocket endpoint: automerge-repo's network protocol, so that clients using
 * `@automerge/automerge-repo` with its WebSocket adapter open and edit workspace documents
 * directly (`repo.find('automerge:…')`; the URLs come from `automergeUrlOf`).
 *
 * There is no automerge-repo `Repo` on the server: each (peer, document) pair has an Automerge
 * `SyncState`, and sync messages are generated and received against a copy of the document that
 * holds only committed changes ({@link ShadowDocuments}). Changes a peer sends are not applied by
 * the sync protocol; they are merged through the document service like `workspace.mergeState`,
 * so they are checked, stored as events of the document's actor attributed to the authenticated
 * principal, and fanned out to JSON subscribers; every commit of the document, whoever made it,
 * then produces a sync message for each peer that has it open.
 *
 * Access: peers authenticate like `/v1` (API key or JWT, `Authorization: Bearer` or `?token=`).
 * Only members of a workspace (and tenant admins) sync its documents; for anything else (unknown
 * ids, other tenants', workspaces the principal is not in) the answer is `doc-unavailable`, so a
 * non-member cannot tell a document exists. Peers without write permission sync read-only: their
 * sync state is read-only (Automerge 3.5 peers then send no changes) and any changes they send
 * anyway are dropped and recorded as refused. Losing access (removed, role lowered, workspace
 * deleted) ends or downgrades the peer's documents of that workspace at once.
 *
 * @example
 * ```ts
 * const sync = new SyncServer({ app });
 * httpServer.on('upgrade', (req, socket, head) => sync.handleUpgrade(req, socket, head));
 * ```
 */
export class SyncServer {
  /** The server's automerge-repo PeerId (one per process, so clients never mix up two nodes). */
  readonly peerId = `troupe-${randomUUID()}`;
  #app: App;
  #docs: DocumentService | undefined;
  #workspaces: WorkspaceService | undefined;
  #shadows: ShadowDocuments | null;
  #wss: WebSocketServer;
  #peers = new Set<Peer>();
  /** Sessions by shadow key: who has each document open. */
  #sessionsOf = new Map<string, Set<Session>>();
  #maxBuffered: number;
  #maxDocs: number;
  #timers: NodeJS.Timeout[] = [];
  #closing = false;
  /** Sessions with something to send, sent once per turn of the event loop. */
  #dirty = new Set<Session>();
  #pushing: NodeJS.Immediate | null = null;

  constructor(opts: SyncServerOptions) {
    this.#app = opts.app;
    this.#docs = opts.app.documents;
    this.#workspaces = opts.app.workspaces;
    this.#shadows = this.#docs ? new ShadowDocuments({ host: opts.app.host, docs: this.#docs, log: opts.app.log }) : null;
    this.#maxBuffered = opts.maxBufferedBytes ?? 8 * 1024 * 1024;
    this.#maxDocs = opts.maxDocumentsPerPeer ?? 1_000;
    const maxPayload = opts.maxMessageBytes ?? (this.#docs?.limits.maxBytes ?? 5 * 1024 * 1024) + 64 * 1024;
    this.#wss = new WebSocketServer({ noServer: true, maxPayload });
    this.#workspaces?.onRevoked((tenant, workspaceId, principalId) => this.#revoked(tenant, workspaceId, principalId));
    const check = setInterval(() => void this.checkCredentials(), opts.credentialCheckMs ?? 30_000);
    check.unref();
    this.#timers.push(check);
    const keepAliveMs = opts.keepAliveMs ?? 30_000;
    if (keepAliveMs > 0) {
      const ping = setInterval(() => this.#ping(), keepAliveMs);
      ping.unref();
      this.#timers.push(ping);
    }
  }

  /** Open `/sync` connections. */
  get connectionCount(): number {
    return this.#peers.size;
  }

  /** Documents open by some peer now. */
  get openDocuments(): number {
    return this.#sessionsOf.size;
  }

  /** Takes over an HTTP upgrade request for `/sync`. */
  handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    if (this.#closing) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n');
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, req));
  }

  /**
   * Closes (code 4003) every connection whose API key was revoked or whose JWT expired since it
   * authenticated. Runs every `credentialCheckMs`; returns how many were closed.
   */
  async checkCredentials(): Promise<number> {
    let closed = 0;
    const now = this.#app.now();
    for (const peer of [...this.#peers]) {
      if (!peer.credential || peer.closed) continue;
      const reason = await this.#app.auth.revoked(peer.credential, now).catch(() => null);
      if (!reason) continue;
      this.#fail(peer, CloseCodes.CREDENTIAL_REVOKED, reason);
      closed++;
    }
    return closed;
  }

  /** Closes every connection (1001) and stops accepting new ones. Safe to call twice. */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    for (const t of this.#timers) clearInterval(t);
    if (this.#pushing) clearImmediate(this.#pushing);
    for (const peer of [...this.#peers]) this.#fail(peer, CloseCodes.GOING_AWAY, 'The server is shutting down.');
    this.#wss.close();
  }

  // ---- connections ----------------------------------------------------------------------------

  #accept(ws: WebSocket, req: http.IncomingMessage): void {
    const peer = new Peer(ws);
    this.#peers.add(peer);
    ws.on('close', () => this.#disconnected(peer));
    ws.on('error', (e) => this.#app.log.debug({ err: e, conn: peer.id }, '/sync socket error'));
    ws.on('pong', () => {
      peer.alive = true;
    });
    // Browsers cannot set headers, hence the query parameter.
    const token = bearer(req.headers.authorization) ?? new URL(req.url ?? '/', 'http://x').searchParams.get('token') ?? undefined;
    const gate = (token ? this.#app.auth.verify(token) : Promise.reject(new ProtocolError('UNAUTHENTICATED', 'No credential.')))
      .then((v) => {
        peer.principal = v.principal;
        peer.credential = v.credential;
      })
      .catch((e: unknown) => {
        const why = e instanceof ProtocolError ? e.message : 'authentication failed';
        this.#fail(peer, CloseCodes.UNAUTHENTICATED, `${why} Connect to /sync with "Authorization: Bearer <token>" or /sync?token=<token> (an API key or JWT, as for /v1).`);
      });
    ws.on('message', (data: RawData, isBinary: boolean) => {
      void gate.then(() => this.#frame(peer, data, isBinary)).catch((e: unknown) => {
        this.#app.log.error({ err: e, conn: peer.id }, '/sync message handling failed');
      });
    });
  }

  #disconnected(peer: Peer): void {
    peer.closed = true;
    this.#peers.delete(peer);
    for (const s of [...peer.sessions.values()]) this.#end(s, false);
  }

  /** Sends an `error` message (automerge-repo logs it) and closes the socket. */
  #fail(peer: Peer, code: number, message: string): void {
    if (peer.closed) return;
    this.#send(peer, { type: SyncMessageTypes.ERROR, senderId: this.peerId, targetId: peer.peerId ?? '', message });
    peer.closed = true;
    // Close reasons are limited to 123 bytes.
    peer.ws.close(code, Buffer.from(message).subarray(0, 120).toString());
    for (const s of [...peer.sessions.values()]) this.#end(s, false);
  }

  #send(peer: Peer, message: Record<string, unknown>): void {
    if (peer.closed || peer.ws.readyState !== peer.ws.OPEN) return;
    if (peer.ws.bufferedAmount > this.#maxBuffered) {
      this.#fail(peer, CloseCodes.TOO_SLOW, 'The connection does not keep up with the changes sent to it; reconnect.');
      return;
    }
    peer.ws.send(encodeMessage(message));
  }

  #ping(): void {
    for (const peer of this.#peers) {
      if (!peer.alive) {
        peer.ws.terminate();
        continue;
      }
      peer.alive = false;
      peer.ws.ping();
    }
  }

  #frame(peer: Peer, data: RawData, isBinary: boolean): void {
    if (peer.closed || !peer.principal) return;
    peer.alive = true;
    if (!isBinary) return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, 'Frames must be binary CBOR (automerge-repo network messages).');
    const bytes = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : new Uint8Array(data);
    const m = parseClientMessage(bytes);
    if ('invalid' in m) return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, `Invalid message: ${m.invalid}.`);
    if (m.type === 'join') return this.#join(peer, m);
    if (!peer.peerId) return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, 'Send "join" first.');
    if (m.type === 'sync' || m.type === 'request') return this.#enqueue(peer, m.documentId, () => this.#sync(peer, m));
    if (m.type === 'ephemeral') {
      this.#ephemeral(peer, m).catch((e: unknown) => this.#app.log.error({ err: e, conn: peer.id }, '/sync ephemeral message failed'));
    }
    // doc-unavailable from a client, remote-heads gossip and the like: nothing to do.
  }

  #join(peer: Peer, m: JoinMessage): void {
    if (peer.peerId && peer.peerId !== m.senderId) return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, 'This connection already joined as another peer.');
    if (m.supportedProtocolVersions && !m.supportedProtocolVersions.includes(PROTOCOL_VERSION)) {
      peer.peerId = m.senderId;
      return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, `unsupported protocol version: this server speaks version ${PROTOCOL_VERSION}`);
    }
    peer.peerId = m.senderId;
    // Ephemeral: clients keep no sync state for this server across connections.
    this.#send(peer, {
      type: SyncMessageTypes.PEER,
      senderId: this.peerId,
      peerMetadata: { isEphemeral: true },
      selectedProtocolVersion: PROTOCOL_VERSION,
      targetId: m.senderId,
    });
  }

  /** Runs jobs for one document of one peer in order, one at a time. */
  #enqueue(peer: Peer, documentId: string, job: () => Promise<void>): void {
    let q = peer.queues.get(documentId);
    if (!q) peer.queues.set(documentId, (q = { tail: Promise.resolve(), depth: 0 }));
    if (q.depth >= MAX_QUEUED) return this.#fail(peer, CloseCodes.TOO_SLOW, `More than ${MAX_QUEUED} messages for one document are waiting; send fewer.`);
    q.depth++;
    const queue = q;
    queue.tail = queue.tail
      .then(() => (peer.closed ? undefined : job()))
      .catch((e: unknown) => this.#app.log.error({ err: e, conn: peer.id, documentId }, '/sync message failed'))
      .finally(() => {
        if (--queue.depth === 0 && peer.queues.get(documentId) === queue) peer.queues.delete(documentId);
      });
  }

  // ---- access ---------------------------------------------------------------------------------

  /** What the principal may do with a document: sync it only as a member (or tenant admin), write it with the write permission. */
  async #access(p: Principal, ref: DocumentRef): Promise<Access> {
    const none: Access = { level: 'none', permissions: new Set() };
    const workspaces = this.#workspaces;
    if (!workspaces || p.tenantId !== ref.tenant) return none;
    let entry;
    try {
      entry = await workspaces.requireMember(p, ref.workspaceId);
    } catch {
      return none;
    }
    const permissions = workspaces.permissions(p, entry);
    if (!permissions.has('workspace:read')) return none;
    const write = ref.documentId === STATE_DOCUMENT_ID ? 'state:write' : 'doc:write';
    return { level: permissions.has(write) && entry.doc.status !== 'archived' ? 'write' : 'read', permissions };
  }

  #unavailable(peer: Peer, documentId: string): void {
    this.#send(peer, { type: SyncMessageTypes.DOC_UNAVAILABLE, senderId: this.peerId, targetId: peer.peerId, documentId });
  }

  #revoked(tenant: string, workspaceId: string, principalId: string): void {
    for (const peer of this.#peers) {
      const p = peer.principal;
      if (!p || p.tenantId !== tenant || p.principalId !== principalId) continue;
      for (const s of peer.sessions.values()) {
        if (s.ref.workspaceId !== workspaceId) continue;
        // At once: nothing more is sent or merged until the new access is known.
        s.suspended = true;
        void this.#reconsider(s);
      }
    }
  }

  async #reconsider(s: Session): Promise<void> {
    const access = await this.#access(s.peer.principal!, s.ref);
    if (s.ended) return;
    if (access.level === 'none') return this.#end(s, true);
    this.#setWritable(s, access.level === 'write');
    s.suspended = false;
    this.#schedulePush(s);
  }

  /** A change of write permission starts a new sync state, read-only or not. */
  #setWritable(s: Session, writable: boolean): void {
    if (s.writable === writable) return;
    s.writable = writable;
    s.syncState = Automerge.initSyncState({ readOnly: !writable });
    if (!writable) s.pending.clear();
  }

  // ---- documents ------------------------------------------------------------------------------

  async #open(peer: Peer, documentId: string): Promise<Session | null> {
    const p = peer.principal!;
    const id = syncDocumentOf(documentId);
    if (!id || !this.#shadows || peer.sessions.size >= this.#maxDocs) {
      this.#unavailable(peer, documentId);
      return null;
    }
    const ref: DocumentRef = { tenant: p.tenantId, ...id };
    if ((await this.#access(p, ref)).level === 'none') {
      this.#unavailable(peer, documentId);
      return null;
    }
    let shadow: Shadow;
    try {
      shadow = await this.#shadows.acquire(ref);
    } catch (e) {
      this.#app.log.warn({ err: e, conn: peer.id, document: documentActorId(ref.workspaceId, ref.documentId) }, '/sync could not load a document');
      this.#unavailable(peer, documentId);
      return null;
    }
    // Access may have changed while the document loaded.
    const access = await this.#access(p, ref);
    const known = shadow.exists || ref.documentId === STATE_DOCUMENT_ID;
    if (peer.closed || access.level === 'none' || !known) {
      this.#shadows.release(shadow);
      this.#unavailable(peer, documentId);
      return null;
    }
    const writable = access.level === 'write';
    const session: Session = {
      peer,
      documentId,
      ref,
      shadow,
      syncState: Automerge.initSyncState({ readOnly: !writable }),
      writable,
      suspended: false,
      ended: false,
      pending: new Map(),
      refused: new Set(),
      retry: null,
      asked: '',
      listener: () => this.#schedulePush(session),
    };
    peer.sessions.set(documentId, session);
    shadow.listeners.add(session.listener);
    let open = this.#sessionsOf.get(shadow.key);
    if (!open) this.#sessionsOf.set(shadow.key, (open = new Set()));
    open.add(session);
    if (Automerge.getHeads(shadow.doc).length === 0) {
      if (writable && (await this.#createEmpty(session))) return session;
      // Nothing to sync yet: the peer hears of the document with its first change.
      if (!session.ended) this.#unavailable(peer, documentId);
    }
    return session;
  }

  /** Gives an empty document its first (empty) change, so that the writer's client can open it. */
  async #createEmpty(s: Session): Promise<boolean> {
    try {
      await this.#docs!.merge(s.ref, this.#writer(s), [EMPTY_CHANGE], s.ref.documentId === STATE_DOCUMENT_ID ? { create: STATE_CREATE } : {});
      return Automerge.getHeads(s.shadow.doc).length > 0;
    } catch (e) {
      this.#app.log.warn({ err: e, conn: s.peer.id }, '/sync could not start an empty document');
      return false;
    }
  }

  #end(s: Session, tell: boolean): void {
    if (s.ended) return;
    s.ended = true;
    s.suspended = true;
    if (s.retry) clearTimeout(s.retry);
    s.pending.clear();
    this.#dirty.delete(s);
    s.shadow.listeners.delete(s.listener);
    const open = this.#sessionsOf.get(s.shadow.key);
    open?.delete(s);
    if (open?.size === 0) this.#sessionsOf.delete(s.shadow.key);
    if (s.peer.sessions.get(s.documentId) === s) s.peer.sessions.delete(s.documentId);
    this.#shadows?.release(s.shadow);
    if (tell) this.#unavailable(s.peer, s.documentId);
  }

  #writer(s: Session) {
    return { principal: s.peer.principal!.principalId, correlationId: `sync:${s.peer.id}` };
  }

  /** A `sync` or `request` message: learn what the peer has, merge what it sent, answer. */
  async #sync(peer: Peer, m: DocSyncMessage): Promise<void> {
    const s = peer.sessions.get(m.documentId) ?? (await this.#open(peer, m.documentId));
    if (!s || s.ended || s.suspended) return;
    const access = await this.#access(peer.principal!, s.ref);
    if (s.ended || s.suspended) return;
    if (access.level === 'none') return this.#end(s, true);
    this.#setWritable(s, access.level === 'write');
    let decoded: Automerge.DecodedSyncMessage;
    try {
      decoded = Automerge.decodeSyncMessage(m.data);
    } catch {
      return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, `The data of a ${m.type} message is not an Automerge sync message.`);
    }
    let changes: Uint8Array[] = [];
    // A read-only peer's changes are dropped unread.
    try {
      if (s.writable) changes = changesOf(decoded.changes);
    } catch (e) {
      return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, `The changes of a ${m.type} message are not Automerge changes (${(e as Error).message}).`);
    }
    // The sync protocol never applies changes here: they are merged through the document service,
    // and come back into the copy once committed.
    const data = decoded.changes.length > 0 ? Automerge.encodeSyncMessage({ ...decoded, changes: [] }) : m.data;
    try {
      [s.shadow.doc, s.syncState] = Automerge.receiveSyncMessage(s.shadow.doc, s.syncState, data);
    } catch (e) {
      return this.#fail(peer, SyncCloseCodes.PROTOCOL_ERROR, `The ${m.type} message was refused by Automerge: ${(e as Error).message}`);
    }
    if (!s.writable && decoded.changes.length > 0) this.#refuse(s, decoded.changes.length);
    else if (changes.length > 0) {
      if (!this.#stage(s, changes)) return;
      await this.#flush(s);
    }
    this.#schedulePush(s);
  }

  /** Notes a read-only peer's changes as refused (they are dropped). */
  #refuse(s: Session, count: number): void {
    const p = s.peer.principal!;
    const error = new ProtocolError(
      'FORBIDDEN',
      `You (${p.principalId}) may not change document ${s.ref.documentId} of workspace ${s.ref.workspaceId}; the Automerge changes sent over /sync (${count} chunk(s)) were dropped.`,
      { kind: 'workspace', id: s.ref.workspaceId, permission: s.ref.documentId === STATE_DOCUMENT_ID ? 'state:write' : 'doc:write' },
    );
    this.#app.audit?.refused(p, 'document.sync', { documentId: documentActorId(s.ref.workspaceId, s.ref.documentId) }, error, `sync:${s.peer.id}`);
    this.#app.log.warn({ conn: s.peer.id, principal: p.principalId, document: s.shadow.key, changes: count }, 'refused: Automerge changes from a read-only /sync peer');
  }

  /** Adds a peer's changes to those waiting to be merged. False when the peer was closed. */
  #stage(s: Session, changes: Uint8Array[]): boolean {
    for (const bytes of changes) {
      let c: Automerge.DecodedChange;
      try {
        c = Automerge.decodeChange(bytes);
      } catch {
        this.#fail(s.peer, SyncCloseCodes.PROTOCOL_ERROR, 'A sync message carried something that is not an Automerge change.');
        return false;
      }
      const hash = c.hash!;
      if (s.pending.has(hash) || s.refused.has(hash) || Automerge.hasHeads(s.shadow.doc, [hash])) continue;
      if (c.deps.some((d) => s.refused.has(d))) {
        s.refused.add(hash);
        continue;
      }
      s.pending.set(hash, { hash, bytes, deps: c.deps });
    }
    if (s.pending.size + s.refused.size > MAX_PENDING) {
      this.#fail(s.peer, SyncCloseCodes.PROTOCOL_ERROR, `More than ${MAX_PENDING} changes are waiting for changes they depend on or were refused; send the missing changes, or reconnect.`);
      return false;
    }
    return true;
  }

  /** The waiting changes whose dependencies are all there (or among them), in an order that applies. */
  #mergeable(s: Session): PendingChange[] {
    const ready: PendingChange[] = [];
    const taken = new Set<string>();
    const have = (h: string) => taken.has(h) || Automerge.hasHeads(s.shadow.doc, [h]);
    for (let progress = true; progress; ) {
      progress = false;
      for (const c of s.pending.values()) {
        if (taken.has(c.hash) || !c.deps.every(have)) continue;
        taken.add(c.hash);
        ready.push(c);
        progress = true;
      }
    }
    return ready;
  }

  /**
   * Merges the waiting changes that can be applied, attributed to the peer's principal, in calls
   * of at most `maxOpsPerCall` changes. Refusals that pass (rate limit, busy, unavailable) are
   * retried after the time they name; others drop the changes (and those that depend on them).
   */
  async #flush(s: Session): Promise<void> {
    const docs = this.#docs!;
    const ready = this.#mergeable(s);
    const max = docs.limits.maxOpsPerCall;
    for (let i = 0; i < ready.length && !s.ended && !s.suspended; i += max) {
      const chunk = ready.slice(i, i + max);
      try {
        await docs.merge(
          s.ref,
          this.#writer(s),
          chunk.map((c) => Buffer.from(c.bytes).toString('base64')),
          s.ref.documentId === STATE_DOCUMENT_ID ? { create: STATE_CREATE } : {},
        );
        for (const c of chunk) s.pending.delete(c.hash);
      } catch (e) {
        if (isProtocolError(e, 'RATE_LIMITED') || isProtocolError(e, 'BUSY') || isProtocolError(e, 'UNAVAILABLE')) {
          const ms = Math.min(5_000, Math.max(10, Number((e as ProtocolError).data.retryAfterMs) || 100));
          this.#retryLater(s, ms);
          return;
        }
        for (const c of chunk) {
          s.pending.delete(c.hash);
          s.refused.add(c.hash);
        }
        this.#app.log.warn({ err: e, conn: s.peer.id, document: s.shadow.key, changes: chunk.length }, 'refused: Automerge changes from a /sync peer');
        if (isProtocolError(e)) this.#app.audit?.refused(s.peer.principal, 'document.sync', { documentId: documentActorId(s.ref.workspaceId, s.ref.documentId) }, e, `sync:${s.peer.id}`);
        // Whatever depended on them cannot be merged either.
        for (const c of [...s.pending.values()]) {
          if (c.deps.some((d) => s.refused.has(d))) {
            s.pending.delete(c.hash);
            s.refused.add(c.hash);
          }
        }
        return;
      }
    }
  }

  #retryLater(s: Session, ms: number): void {
    if (s.retry || s.ended) return;
    s.retry = setTimeout(() => {
      s.retry = null;
      if (s.ended) return;
      this.#enqueue(s.peer, s.documentId, async () => {
        if (s.ended || s.suspended) return;
        await this.#flush(s);
        this.#schedulePush(s);
      });
    }, ms);
    s.retry.unref();
  }

  /** Dependencies of waiting changes that neither the document nor the waiting changes have. */
  #missing(s: Session): string[] {
    const missing = new Set<string>();
    for (const c of s.pending.values()) {
      for (const d of c.deps) if (!s.pending.has(d) && !Automerge.hasHeads(s.shadow.doc, [d])) missing.add(d);
    }
    return [...missing].sort();
  }

  /**
   * Pushes to the session after the current turn: commits only mark sessions, so neither the
   * commit (and the JSON subscribers' fan-out behind it) waits for sync messages to be generated,
   * nor does a burst of commits generate one message per commit per peer.
   */
  #schedulePush(s: Session): void {
    this.#dirty.add(s);
    this.#pushing ??= setImmediate(() => {
      this.#pushing = null;
      const batch = [...this.#dirty];
      this.#dirty.clear();
      for (const x of batch) this.#push(x);
    });
  }

  /** Sends the peer what it lacks of the document, if anything, and asks for what the server lacks. */
  #push(s: Session): void {
    const peer = s.peer;
    if (s.ended || s.suspended || peer.closed || !peer.peerId) return;
    const doc = s.shadow.doc;
    if (Automerge.getHeads(doc).length === 0) return;
    let message: Uint8Array | null;
    [s.syncState, message] = Automerge.generateSyncMessage(doc, s.syncState);
    // A change the peer sent whose dependency it believes the server has (a Bloom filter false
    // positive) waits here, outside the document, where Automerge cannot see what it needs.
    const missing = s.pending.size > 0 ? this.#missing(s) : [];
    const ask = missing.join();
    if (missing.length > 0 && (message || ask !== s.asked)) {
      const d = message ? Automerge.decodeSyncMessage(message) : { heads: Automerge.getHeads(doc), need: [], have: [], changes: [] };
      d.need = [...new Set([...d.need, ...missing])];
      message = Automerge.encodeSyncMessage(d);
    }
    s.asked = ask;
    if (!message) return;
    this.#send(peer, { type: SyncMessageTypes.SYNC, senderId: this.peerId, targetId: peer.peerId, documentId: s.documentId, data: message });
  }

  /** Relays an ephemeral message to the other peers that have the document open. */
  async #ephemeral(peer: Peer, m: EphemeralMessage): Promise<void> {
    const s = peer.sessions.get(m.documentId);
    if (!s || s.suspended || m.data.byteLength > MAX_EPHEMERAL_BYTES) return;
    const access = await this.#access(peer.principal!, s.ref);
    if (s.suspended || !access.permissions.has('message:send')) return;
    for (const other of this.#sessionsOf.get(s.shadow.key) ?? []) {
      if (other === s || other.suspended || !other.peer.peerId) continue;
      this.#send(other.peer, {
        type: SyncMessageTypes.EPHEMERAL,
        senderId: peer.peerId,
        targetId: other.peer.peerId,
        documentId: other.documentId,
        data: m.data,
        count: m.count,
        sessionId: m.sessionId,
      });
    }
  }
}

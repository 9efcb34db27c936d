import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type {
  ApiKeyRecord,
  CommitItem,
  CommitOutcome,
  EventPage,
  EventQuery,
  IdempotencyRecord,
  OutboxRecord,
  RefusalRecord,
  Store,
  StoredEvent,
  TenantRecord,
  TimerRecord,
  ViewPage,
  ViewQuery,
  ViewRecord,
  ViewStats,
} from '../../actors/Store.js';
import { decodeCursor, encodeCursor } from './cursor.js';
import {
  auditKey,
  checkRefusal,
  compareAuditKeys,
  decodeEventCursor,
  encodeEventCursor,
  eventPageLimit,
  eventPrincipal,
  eventTime,
  type AuditKey,
} from './eventQuery.js';

/** Options of {@link SqliteStore}. */
export interface SqliteStoreOptions {
  /** Database file; created with its schema if missing. `':memory:'` works for throwaway stores. */
  path: string;
  /**
   * SQLite `synchronous` level. `'FULL'` (default) fsyncs the WAL on every commit, so an
   * acknowledged commit survives a power loss; `'NORMAL'` is faster and survives process crashes
   * only.
   */
  synchronous?: 'FULL' | 'NORMAL';
  /** How many snapshots to keep per stream, newest first; an integer >= 1, default 1. */
  snapshotsKeep?: number;
  /**
   * Where commits are written. `'inline'` (default): on the calling thread. `'worker'`: on a
   * dedicated worker thread with its own connection, so the event loop keeps serving while SQLite
   * writes and fsyncs; reads stay on the calling thread and see every acknowledged commit.
   */
  writer?: 'inline' | 'worker';
}

/** The schema version this code writes; a file with a higher one is refused. */
const SCHEMA_VERSION = 3;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
  stream TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, actor_id TEXT NOT NULL,
  version INTEGER NOT NULL, epoch INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS streams_kind ON streams (kind, stream);
CREATE TABLE IF NOT EXISTS events (
  position INTEGER PRIMARY KEY AUTOINCREMENT, tenant_position INTEGER NOT NULL, id TEXT NOT NULL UNIQUE,
  stream TEXT NOT NULL, version INTEGER NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
  actor_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL, meta TEXT NOT NULL, at INTEGER NOT NULL,
  principal TEXT NOT NULL, UNIQUE (stream, version));
CREATE TABLE IF NOT EXISTS tenant_positions (tenant TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS event_topics (
  tenant TEXT NOT NULL, topic TEXT NOT NULL, position INTEGER NOT NULL, feed_position INTEGER NOT NULL,
  PRIMARY KEY (tenant, topic, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
  stream TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (stream, version));
CREATE TABLE IF NOT EXISTS views (
  tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
  status TEXT NOT NULL, owner TEXT, type TEXT, priority TEXT, parent_id TEXT, created_by TEXT,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, text TEXT NOT NULL,
  archived INTEGER NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (tenant, kind, id));
CREATE INDEX IF NOT EXISTS views_created ON views (tenant, kind, created_at, id);
CREATE INDEX IF NOT EXISTS views_owner ON views (tenant, kind, owner, status);
CREATE INDEX IF NOT EXISTS views_status ON views (tenant, kind, status);
CREATE TABLE IF NOT EXISTS timers (
  stream TEXT NOT NULL, name TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
  actor_id TEXT NOT NULL, fire_at INTEGER NOT NULL, event TEXT NOT NULL, PRIMARY KEY (stream, name));
CREATE INDEX IF NOT EXISTS timers_fire_at ON timers (fire_at);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
  tenant TEXT NOT NULL, target_kind TEXT NOT NULL, target_id TEXT NOT NULL, event TEXT NOT NULL,
  created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
  tenant TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, result TEXT,
  created_at INTEGER NOT NULL, PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, principal TEXT NOT NULL, roles TEXT NOT NULL,
  secret_hash TEXT NOT NULL, label TEXT NOT NULL, created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS refusals (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, at INTEGER NOT NULL, last_at INTEGER NOT NULL, principal TEXT NOT NULL,
  method TEXT NOT NULL, code TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, actor_kind TEXT,
  actor_id TEXT, correlation_id TEXT);
CREATE INDEX IF NOT EXISTS refusals_at ON refusals (tenant, at, id);
CREATE INDEX IF NOT EXISTS refusals_principal ON refusals (tenant, principal, at, id);
`;

/**
 * Indexes on columns that migrations add, so created after them. The audit trail reads a
 * tenant's events newest first, optionally of one principal (`Store.queryEvents`).
 */
const INDEXES = `
CREATE INDEX IF NOT EXISTS events_tenant_at ON events (tenant, at, tenant_position);
CREATE INDEX IF NOT EXISTS events_tenant_principal ON events (tenant, principal, at, tenant_position);
`;

const VIEW_COLUMNS = `tenant, kind, id, version, status, owner, type, priority, parent_id, created_by,
  created_at, updated_at, text, archived, doc`;
const EVENT_COLUMNS = 'position, tenant_position, id, stream, version, tenant, kind, actor_id, type, data, meta';
const REFUSAL_COLUMNS = 'id, tenant, at, last_at, principal, method, code, reason, count, actor_kind, actor_id, correlation_id';

type Row = Record<string, unknown>;
type Stmt = Database.Statement<unknown[], Row>;

/** A commit item with its JSON already serialised, so bad input fails its own call early. */
export interface PreparedItem {
  stream: string;
  tenant: string;
  kind: string;
  actorId: string;
  expectedVersion: number;
  epoch: number;
  events: { id: string; type: string; data: string; meta: string; at: number; principal: string; topics: string[] }[];
  /** `undefined`: keep the current snapshot. */
  snapshot: string | undefined;
  /** `undefined`: leave the view; `null`: delete it. */
  view: unknown[] | null | undefined;
  scheduleTimers: unknown[][];
  cancelTimers: string[];
  firedTimers: { name: string; fireAt: number }[];
  outbox: unknown[][];
  outboxDone: string[];
  idempotency: { tenant: string; key: string; row: unknown[] } | undefined;
}

/** Refusal records as rows, written by the writer like a commit call. */
export interface PreparedRefusals {
  refusals: unknown[][];
}

/** A claim of a stream's next fencing epoch, written by the writer like a commit call. */
export interface PreparedClaim {
  claim: { stream: string; tenant: string; kind: string; actorId: string };
}

/** What one call hands the writer: a commit's items, refusal records, or an epoch claim. */
export type PreparedCall = PreparedItem[] | PreparedRefusals | PreparedClaim;

/** What the writer answers for one call: a commit's outcomes (none for refusals), or the claimed epoch. */
export type WriterResult = CommitOutcome[] | { epoch: number };

interface PendingCall {
  /**
   * Inline writer: the prepared call. Writer thread: the call as one JSON text (cheaper to post):
   * the commit's items, `{ refusals }` or `{ claim }`.
   */
  items: PreparedCall | string;
  resolve: (result: WriterResult) => void;
  reject: (err: unknown) => void;
}

/**
 * The embedded {@link Store}: one SQLite file in WAL mode through better-sqlite3.
 *
 * Commits are group-committed: every {@link SqliteStore.commit} call made before the next
 * `setImmediate` turn is written in one transaction (one fsync), each call inside its own
 * savepoint. An item refused for a {@link CommitOutcome} reason writes nothing; a call that
 * fails for any other reason (a duplicate outbox id, say) rejects with none of its items written,
 * and the calls around it still land. If the transaction itself fails (a disk error), every call
 * of that flush rejects. Promises resolve only after the transaction is durable. Refusal records
 * and fencing epoch claims ({@link SqliteStore.claimEpoch}) go through the same writer, in call
 * order with the commits.
 *
 * Several stores, in one process or several, may share a file: the writer's transactions are
 * IMMEDIATE (they take the write lock first and wait up to `busy_timeout` for it) and the other
 * writes are single statements, so no store's checks and writes interleave with another's.
 *
 * @example
 * ```ts
 * const store = new SqliteStore({ path: './data/troupe.db' });
 * const [outcome] = await store.commit([item]);
 * await store.close();
 * ```
 */
export class SqliteStore implements Store {
  #db: Database.Database;
  #s: Statements;
  /** View queries are built per filter combination; each shape is prepared once. */
  #queryCache = new Map<string, Stmt>();
  #queue: PendingCall[] = [];
  #flushTimer: NodeJS.Immediate | undefined;
  #closed = false;
  #closing: Promise<void> | null = null;
  #writer: SqliteWriter | null = null;
  #worker: Worker | null = null;
  /** Calls posted to the worker and not answered yet, by message id. */
  #inFlight = new Map<number, PendingCall[]>();
  #nextMessage = 1;
  #workerFailure: Error | null = null;

  constructor(options: SqliteStoreOptions) {
    const synchronous = options.synchronous ?? 'FULL';
    if (synchronous !== 'FULL' && synchronous !== 'NORMAL') {
      throw new TypeError(`synchronous must be 'FULL' or 'NORMAL', got ${String(synchronous)}`);
    }
    const keep = options.snapshotsKeep ?? 1;
    if (!Number.isInteger(keep) || keep < 1) {
      throw new TypeError(`snapshotsKeep must be an integer >= 1, got ${String(keep)}`);
    }
    const db = openDatabase(options.path, synchronous);
    try {
      migrate(db);
    } catch (err) {
      db.close();
      throw err;
    }
    this.#db = db;
    this.#s = prepareStatements(db);
    if (options.writer === 'worker') this.#startWorker(options.path, synchronous, keep);
    else this.#writer = new SqliteWriter(db, keep);
  }

  #startWorker(path: string, synchronous: string, snapshotsKeep: number): void {
    const worker = new Worker(new URL('./sqliteWriterWorker.mjs', import.meta.url), {
      workerData: { path, synchronous, snapshotsKeep },
    });
    worker.unref();
    worker.on('message', (m: { id: number; results?: (WriterResult | { error: string })[]; error?: string }) => {
      const calls = this.#inFlight.get(m.id);
      this.#inFlight.delete(m.id);
      if (!calls) return;
      calls.forEach((call, i) => {
        const r = m.results?.[i];
        if (m.error !== undefined || r === undefined) call.reject(new Error(m.error ?? 'the SQLite writer gave no result'));
        else if ('error' in r) call.reject(new Error(r.error));
        else call.resolve(r);
      });
      // Everything queued while this batch was being written goes out as the next batch.
      if (this.#queue.length > 0 && this.#inFlight.size === 0) this.#flush();
      // An idle writer must not keep the process alive; a busy one must.
      if (this.#inFlight.size === 0) this.#worker?.unref();
    });
    const fail = (err: Error) => {
      this.#workerFailure ??= err;
      for (const calls of this.#inFlight.values()) for (const call of calls) call.reject(err);
      this.#inFlight.clear();
      for (const call of this.#queue.splice(0)) call.reject(err);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (!this.#closed) fail(new Error(`the SQLite writer thread stopped (exit code ${code})`));
    });
    this.#worker = worker;
  }

  commit(items: CommitItem[]): Promise<CommitOutcome[]> {
    if (items.length === 0 && !this.#closed && !this.#workerFailure) return Promise.resolve([]);
    return this.#enqueue<CommitOutcome[]>(() => (this.#worker ? JSON.stringify(items) : items.map(prepareItem)), 'commit');
  }

  /**
   * Queues refusal records for the next group commit, so that they share its transaction and
   * fsync and, in worker mode, never take the write lock on the event loop's thread.
   */
  async appendRefusals(records: RefusalRecord[]): Promise<void> {
    if (records.length === 0) return this.#assertOpen();
    await this.#enqueue(() => {
      for (const r of records) checkRefusal(r);
      return this.#worker ? JSON.stringify({ refusals: records }) : prepareRefusals(records);
    }, 'appendRefusals');
  }

  /**
   * Takes the stream's next fencing epoch through the writer, like a commit: it is ordered with
   * the commits of this process, shares their transaction and fsync, and other processes on the
   * file wait for the write lock (IMMEDIATE transactions) instead of interleaving.
   */
  async claimEpoch(stream: string, tenant: string, kind: string, actorId: string): Promise<number> {
    const { epoch } = await this.#enqueue<{ epoch: number }>(() => {
      const claim = checkClaim({ stream, tenant, kind, actorId });
      return this.#worker ? JSON.stringify({ claim }) : { claim };
    }, 'claimEpoch');
    return epoch;
  }

  /**
   * Queues one writer call; `prepare` runs now, so later changes by the caller cannot reach the
   * store. `R` is the writer's answer to that kind of call.
   */
  #enqueue<R extends WriterResult>(prepare: () => PreparedCall | string, what: string): Promise<R> {
    if (this.#closed) return Promise.reject(new Error(`SqliteStore is closed: ${what} refused`));
    if (this.#workerFailure) return Promise.reject(this.#workerFailure);
    let prepared: PreparedCall | string;
    try {
      prepared = prepare();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ items: prepared, resolve: resolve as (result: WriterResult) => void, reject });
      // With a worker, one batch is in flight at a time; the next one waits for its answer.
      if (this.#inFlight.size === 0) this.#flushTimer ??= setImmediate(() => this.#flush());
    });
  }

  /** Writes every queued call in one transaction and settles their promises. */
  #flush(): void {
    this.#flushTimer = undefined;
    const batch = this.#queue;
    if (batch.length === 0) return;
    this.#queue = [];
    if (this.#worker) {
      const id = this.#nextMessage++;
      this.#inFlight.set(id, batch);
      this.#worker.ref();
      this.#worker.postMessage({ id, calls: batch.map((c) => c.items) });
      return;
    }
    let results: (WriterResult | Error)[];
    try {
      results = this.#writer!.write(batch.map((c) => c.items as PreparedCall));
    } catch (err) {
      for (const call of batch) call.reject(err);
      return;
    }
    batch.forEach((call, i) => {
      const result = results[i]!;
      if (result instanceof Error) call.reject(result);
      else call.resolve(result);
    });
  }

  async readStream(stream: string, afterVersion = 0, limit = Infinity): Promise<StoredEvent[]> {
    this.#assertOpen();
    return this.#s.readStream.all(stream, afterVersion, sqlLimit(limit)).map(toEvent);
  }

  async streamInfo(stream: string): Promise<{ version: number; epoch: number }> {
    this.#assertOpen();
    const row = this.#s.getStream.get(stream) as { version: number; epoch: number } | undefined;
    return { version: row?.version ?? 0, epoch: row?.epoch ?? 0 };
  }

  async loadSnapshot(stream: string): Promise<{ version: number; state: unknown } | undefined> {
    this.#assertOpen();
    const row = this.#s.getSnapshot.get(stream);
    return row && { version: row.version as number, state: JSON.parse(row.state as string) };
  }

  async readTopic(tenant: string, topic: string, afterPosition: number, limit: number): Promise<StoredEvent[]> {
    this.#assertOpen();
    return this.#s.readTopic.all(tenant, topic, afterPosition, sqlLimit(limit)).map(toEvent);
  }

  async readFeed(afterFeedPosition: number, limit: number): Promise<StoredEvent[]> {
    this.#assertOpen();
    return this.#s.readFeed.all(afterFeedPosition, sqlLimit(limit)).map(toEvent);
  }

  async headPosition(tenant?: string): Promise<number> {
    this.#assertOpen();
    if (tenant !== undefined) return this.#s.tenantHeadPosition.get(tenant)!.head as number;
    return this.#s.headPosition.get()!.head as number;
  }

  async listStreams(kind?: string): Promise<string[]> {
    this.#assertOpen();
    const rows = kind === undefined ? this.#s.listStreams.all() : this.#s.listStreamsOfKind.all(kind);
    return rows.map((r) => r.stream as string);
  }

  async getView(tenant: string, kind: string, id: string): Promise<ViewRecord | undefined> {
    this.#assertOpen();
    const row = this.#s.getView.get(tenant, kind, id);
    return row && toView(row);
  }

  async getViews(tenant: string, kind: string, ids: string[]): Promise<ViewRecord[]> {
    this.#assertOpen();
    const found = new Map<string, ViewRecord>();
    for (const row of this.#s.getViews.all(tenant, kind, JSON.stringify(ids))) {
      found.set(row.id as string, toView(row));
    }
    return ids.flatMap((id) => {
      const view = found.get(id);
      return view ? [structuredClone(view)] : [];
    });
  }

  async queryViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewPage> {
    this.#assertOpen();
    const limit = pageLimit(query.limit);
    const where = viewFilter(tenant, kind, query);
    if (query.cursor !== undefined) {
      const [createdAt, id] = decodeCursor(query.cursor);
      // The first conjunct lets SQLite range-scan views_created; the second breaks the tie.
      where.sql.push('created_at <= ? AND (created_at < ? OR id < ?)');
      where.params.push(createdAt, createdAt, id);
    }
    const sql = `SELECT ${VIEW_COLUMNS} FROM views WHERE ${where.sql.join(' AND ')}
      ORDER BY created_at DESC, id DESC LIMIT ?`;
    const rows = this.#query(sql).all(...where.params, limit + 1);
    const items = rows.slice(0, limit).map(toView);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.createdAt, last.id) : null };
  }

  async statsViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewStats> {
    this.#assertOpen();
    const where = viewFilter(tenant, kind, query);
    const sql = `SELECT status, priority, type, COUNT(*) AS n FROM views WHERE ${where.sql.join(' AND ')}
      GROUP BY status, priority, type`;
    const stats: ViewStats = { total: 0, byStatus: {}, byPriority: {}, byType: {} };
    for (const row of this.#query(sql).all(...where.params)) {
      const n = row.n as number;
      stats.total += n;
      bump(stats.byStatus, row.status as string, n);
      bump(stats.byPriority, row.priority as string | null, n);
      bump(stats.byType, row.type as string | null, n);
    }
    return stats;
  }

  #query(sql: string): Stmt {
    let stmt = this.#queryCache.get(sql);
    if (!stmt) {
      stmt = this.#db.prepare<unknown[], Row>(sql);
      this.#queryCache.set(sql, stmt);
    }
    return stmt;
  }

  async dueTimers(now: number, limit: number): Promise<TimerRecord[]> {
    this.#assertOpen();
    return this.#s.dueTimers.all(now, sqlLimit(limit)).map(toTimer);
  }

  async nextTimerAt(): Promise<number | undefined> {
    this.#assertOpen();
    const at = this.#s.nextTimerAt.get()!.at;
    return at === null ? undefined : (at as number);
  }

  async pendingOutbox(limit: number): Promise<OutboxRecord[]> {
    this.#assertOpen();
    return this.#s.pendingOutbox.all(sqlLimit(limit)).map(toOutbox);
  }

  async ackOutbox(ids: string[]): Promise<void> {
    this.#assertOpen();
    this.#s.deleteOutboxMany.run(JSON.stringify(ids));
  }

  async getIdempotency(tenant: string, key: string): Promise<IdempotencyRecord | undefined> {
    this.#assertOpen();
    const row = this.#s.getIdempotency.get(tenant, key);
    return (
      row && {
        tenant: row.tenant as string,
        key: row.key as string,
        requestHash: row.request_hash as string,
        result: row.result === null ? undefined : JSON.parse(row.result as string),
        createdAt: row.created_at as number,
      }
    );
  }

  async queryEvents(tenant: string, q: EventQuery): Promise<EventPage> {
    this.#assertOpen();
    const limit = eventPageLimit(q.limit);
    const after = q.cursor === undefined ? undefined : decodeEventCursor(q.cursor);
    // Each side reads at most one row past the page through its own index; the merge is in JS.
    const events = q.outcome === 'refused' ? [] : this.#eventSide(tenant, q, after, limit + 1);
    const refusals = q.outcome === 'accepted' ? [] : this.#refusalSide(tenant, q, after, limit + 1);
    const found: EventPage['items'] = [
      ...events.map((row) => ({ outcome: 'accepted' as const, event: toEvent(row) })),
      ...refusals.map((row) => ({ outcome: 'refused' as const, refusal: toRefusal(row) })),
    ];
    found.sort((a, b) => compareAuditKeys(auditKey(a), auditKey(b)));
    const items = found.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: found.length > limit && last ? encodeEventCursor(auditKey(last)) : null };
  }

  /** A tenant's events matching `q` after the cursor, newest first (events_tenant_at or events_tenant_principal). */
  #eventSide(tenant: string, q: EventQuery, after: AuditKey | undefined, limit: number): Row[] {
    const where = auditFilter(tenant, q, { kind: 'kind', actorId: 'actor_id', type: 'type' });
    if (after?.rank === 1) where.add('at <= ? AND (at < ? OR tenant_position < ?)', after.at, after.at, after.position);
    // Refusals sort after the events of their millisecond.
    else if (after) where.add('at < ?', after.at);
    // Without statistics SQLite may prefer a time range to the principal; one principal's events are fewer.
    const index = q.principal === undefined ? '' : 'INDEXED BY events_tenant_principal';
    const sql = `SELECT ${EVENT_COLUMNS} FROM events ${index} WHERE ${where.sql.join(' AND ')}
      ORDER BY at DESC, tenant_position DESC LIMIT ?`;
    return this.#query(sql).all(...where.params, limit);
  }

  /** A tenant's refusal records matching `q` after the cursor, newest first (refusals_at or refusals_principal). */
  #refusalSide(tenant: string, q: EventQuery, after: AuditKey | undefined, limit: number): Row[] {
    const where = auditFilter(tenant, q, { kind: 'actor_kind', actorId: 'actor_id', type: 'method' });
    if (after?.rank === 0) where.add('at <= ? AND (at < ? OR id < ?)', after.at, after.at, after.id);
    else if (after) where.add('at <= ?', after.at);
    const index = q.principal === undefined ? '' : 'INDEXED BY refusals_principal';
    const sql = `SELECT ${REFUSAL_COLUMNS} FROM refusals ${index} WHERE ${where.sql.join(' AND ')}
      ORDER BY at DESC, id DESC LIMIT ?`;
    return this.#query(sql).all(...where.params, limit);
  }

  async putTenant(tenant: TenantRecord): Promise<void> {
    this.#assertOpen();
    this.#s.putTenant.run(tenant.id, tenant.name, tenant.createdAt);
  }

  async getTenant(id: string): Promise<TenantRecord | undefined> {
    this.#assertOpen();
    const row = this.#s.getTenant.get(id);
    return row && toTenant(row);
  }

  async listTenants(): Promise<TenantRecord[]> {
    this.#assertOpen();
    return this.#s.listTenants.all().map(toTenant);
  }

  async putApiKey(key: ApiKeyRecord): Promise<void> {
    this.#assertOpen();
    this.#s.putApiKey.run(
      key.id, key.tenant, key.principal, JSON.stringify(key.roles), key.secretHash, key.label,
      key.createdAt, key.revokedAt,
    );
  }

  async getApiKey(id: string): Promise<ApiKeyRecord | undefined> {
    this.#assertOpen();
    const row = this.#s.getApiKey.get(id);
    return row && toApiKey(row);
  }

  async listApiKeys(tenant?: string): Promise<ApiKeyRecord[]> {
    this.#assertOpen();
    const rows = tenant === undefined ? this.#s.listApiKeys.all() : this.#s.listApiKeysOfTenant.all(tenant);
    return rows.map(toApiKey);
  }

  async revokeApiKey(id: string, at: number): Promise<boolean> {
    this.#assertOpen();
    return this.#s.revokeApiKey.run(at, id).changes > 0;
  }

  async nextCounter(name: string): Promise<number> {
    this.#assertOpen();
    return this.#s.nextCounter.get(name)!.value as number;
  }

  async ping(): Promise<void> {
    this.#assertOpen();
    // Reads would still work, but a store that cannot write is not ready.
    if (this.#workerFailure) throw this.#workerFailure;
    this.#s.ping.get();
  }

  async close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      if (this.#flushTimer) clearImmediate(this.#flushTimer);
      this.#flushTimer = undefined;
      if (this.#worker) {
        // Let the batch in flight and everything queued behind it land before stopping.
        while (this.#inFlight.size > 0 || this.#queue.length > 0) {
          if (this.#inFlight.size === 0) this.#flush();
          await Promise.all([...this.#inFlight.values()].flat().map((c) => new Promise<void>((r) => {
            const { resolve, reject } = c;
            c.resolve = (v) => (resolve(v), r());
            c.reject = (e) => (reject(e), r());
          })));
        }
        this.#closed = true;
        const worker = this.#worker;
        // A writer that already died will not exit again.
        if (!this.#workerFailure) {
          await new Promise<void>((resolve) => {
            worker.once('exit', () => resolve());
            worker.ref();
            worker.postMessage({ close: true });
          });
        }
      } else {
        this.#flush();
        this.#closed = true;
      }
      this.#db.close();
    })();
    return this.#closing;
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('SqliteStore is closed');
  }
}

/**
 * The write side of the SQLite store: checks and writes commit calls in one transaction. Used
 * on the calling thread (inline writer) or inside the writer worker thread.
 */
export class SqliteWriter {
  #s: Statements;
  #snapshotsKeep: number;
  #fast: Database.Transaction<(calls: PreparedCall[]) => WriterResult[]>;
  #safe: Database.Transaction<(calls: PreparedCall[]) => (WriterResult | Error)[]>;

  constructor(db: Database.Database, snapshotsKeep: number) {
    this.#s = prepareStatements(db);
    this.#snapshotsKeep = snapshotsKeep;
    const writeCall = db.transaction((call: PreparedCall) => this.#writeCall(call));
    // Refusals are decided before an item writes anything, so the common case needs no
    // savepoints; only an unexpected error makes the batch run again with one per call.
    this.#fast = db.transaction((calls: PreparedCall[]) => calls.map((call) => this.#writeCall(call)));
    this.#safe = db.transaction((calls: PreparedCall[]) =>
      calls.map((call) => {
        try {
          // A nested transaction is a savepoint: a failing call rolls back alone.
          return writeCall(call);
        } catch (err) {
          // Some errors (disk full, I/O) make SQLite abort the whole transaction; then give up.
          if (!db.inTransaction) throw err;
          return err instanceof Error ? err : new Error(String(err));
        }
      }),
    );
  }

  /**
   * Writes the calls in one transaction. Returns each call's outcomes, or the error that made
   * that call (alone) roll back. Throws if the transaction as a whole failed.
   */
  write(calls: PreparedCall[]): (WriterResult | Error)[] {
    try {
      // IMMEDIATE takes the write lock up front, so another process sharing the file makes us
      // wait (busy_timeout) instead of failing on a lock upgrade half way.
      return this.#fast.immediate(calls);
    } catch {
      return this.#safe.immediate(calls);
    }
  }

  /** Writes one call: a commit's items, refusal records (which have no outcomes), or an epoch claim. */
  #writeCall(call: PreparedCall): WriterResult {
    if (Array.isArray(call)) return call.map((item) => this.#writeItem(item));
    if ('claim' in call) {
      const { stream, tenant, kind, actorId } = call.claim;
      return { epoch: this.#s.claimEpoch.get(stream, tenant, kind, actorId)!.epoch as number };
    }
    for (const row of call.refusals) this.#s.upsertRefusal.run(...row);
    return [];
  }

  /** Checks and writes one item. Every refusal is decided before the first write, so a refused
   * item needs no savepoint of its own; the call's savepoint covers unexpected errors. */
  #writeItem(item: PreparedItem): CommitOutcome {
    const s = this.#s;
    const stream = s.getStream.get(item.stream) as { version: number; epoch: number } | undefined;
    const version = stream?.version ?? 0;
    const epoch = stream?.epoch ?? 0;
    if (item.epoch < epoch) return { ok: false, reason: 'stale_epoch', currentEpoch: epoch };
    if (item.expectedVersion !== version) {
      return { ok: false, reason: 'version_conflict', actualVersion: version };
    }
    const seen = new Set<string>();
    for (const event of item.events) {
      if (seen.has(event.id) || s.eventExists.get(event.id)) {
        return { ok: false, reason: 'duplicate_event', eventId: event.id };
      }
      seen.add(event.id);
    }
    const idem = item.idempotency;
    if (idem && s.idempotencyExists.get(idem.tenant, idem.key)) {
      return { ok: false, reason: 'idempotency_conflict', key: idem.key };
    }

    const positions: number[] = [];
    const feedPositions: number[] = [];
    if (item.events.length > 0) {
      // One counter row per tenant: its positions have no gaps and say nothing of other tenants.
      const last = s.bumpTenantPosition.get(item.tenant, item.events.length)!.value as number;
      item.events.forEach((event, i) => {
        const position = last - item.events.length + i + 1;
        const { lastInsertRowid } = s.insertEvent.run(
          position, event.id, item.stream, version + i + 1, item.tenant, item.kind, item.actorId,
          event.type, event.data, event.meta, event.at, event.principal,
        );
        const feedPosition = Number(lastInsertRowid);
        for (const topic of event.topics) s.insertTopic.run(item.tenant, topic, position, feedPosition);
        positions.push(position);
        feedPositions.push(feedPosition);
      });
    }
    const newVersion = version + item.events.length;
    s.upsertStream.run(item.stream, item.tenant, item.kind, item.actorId, newVersion, item.epoch);
    if (item.snapshot !== undefined) {
      s.putSnapshot.run(item.stream, newVersion, item.snapshot);
      s.pruneSnapshots.run(item.stream, item.stream, this.#snapshotsKeep);
    }
    if (item.view === null) s.deleteView.run(item.tenant, item.kind, item.actorId);
    else if (item.view !== undefined) s.putView.run(...item.view);
    // Deletes before inserts, so a turn may cancel or fire a timer and schedule it again.
    for (const f of item.firedTimers) s.deleteFiredTimer.run(item.stream, f.name, f.fireAt);
    for (const name of item.cancelTimers) s.deleteTimer.run(item.stream, name);
    for (const t of item.scheduleTimers) s.putTimer.run(...t);
    for (const id of item.outboxDone) s.deleteOutbox.run(id);
    for (const o of item.outbox) s.insertOutbox.run(...o);
    if (idem) s.insertIdempotency.run(...idem.row);
    return { ok: true, positions, feedPositions };
  }

}

/** Opens a connection with the settings every connection of the store uses (WAL, durability, locking). */
export function openDatabase(path: string, synchronous: string): Database.Database {
  const db = new Database(path);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${synchronous}`);
    db.pragma('busy_timeout = 5000');
    // A commit that falls back to savepoints keeps their sub-journals in memory instead of a temp
    // file (a pwrite per touched page). Durability is unaffected.
    db.pragma('temp_store = MEMORY');
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/** Creates or checks the schema; safe on every open. */
export function migrate(db: Database.Database): void {
  db.transaction(() => {
    db.exec(SCHEMA);
    const row = db.prepare<[], { value: string }>("SELECT value FROM meta WHERE key = 'schema_version'").get();
    if (!row) {
      db.prepare("INSERT INTO meta (key, value) VALUES ('schema_version', ?)").run(String(SCHEMA_VERSION));
    } else if (Number(row.value) > SCHEMA_VERSION) {
      throw new Error(
        `database schema_version ${row.value} is newer than this code's ${SCHEMA_VERSION}; upgrade Troupe`,
      );
    } else if (Number(row.value) < SCHEMA_VERSION) {
      // Each step takes the file one version up; all of them run in this one transaction.
      if (Number(row.value) < 2) db.exec(MIGRATE_1_TO_2);
      db.exec(MIGRATE_2_TO_3);
      db.prepare("UPDATE meta SET value = ? WHERE key = 'schema_version'").run(String(SCHEMA_VERSION));
    }
    db.exec(INDEXES);
  }).immediate();
}

/**
 * Version 3 files each event under its time and principal as columns (copied out of `meta`), so
 * that the audit trail can use indexes; the indexes themselves are {@link INDEXES}. The
 * `refusals` table is new and created by the schema.
 */
const MIGRATE_2_TO_3 = `
ALTER TABLE events ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN principal TEXT NOT NULL DEFAULT '';
UPDATE events SET
  at = CASE WHEN json_type(meta, '$.at') IN ('integer', 'real') THEN json_extract(meta, '$.at') ELSE 0 END,
  principal = CASE WHEN json_type(meta, '$.principal') = 'text' THEN json_extract(meta, '$.principal') ELSE '' END;
`;

/** Version 2 numbers events per tenant (positions used to be store-wide). */
const MIGRATE_1_TO_2 = `
ALTER TABLE events ADD COLUMN tenant_position INTEGER NOT NULL DEFAULT 0;
UPDATE events SET tenant_position = (
  SELECT n FROM (SELECT position AS p, ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY position) AS n FROM events)
  WHERE p = events.position);
INSERT OR REPLACE INTO tenant_positions (tenant, value) SELECT tenant, MAX(tenant_position) FROM events GROUP BY tenant;
CREATE TABLE event_topics_v2 (
  tenant TEXT NOT NULL, topic TEXT NOT NULL, position INTEGER NOT NULL, feed_position INTEGER NOT NULL,
  PRIMARY KEY (tenant, topic, position)) WITHOUT ROWID;
INSERT INTO event_topics_v2 (tenant, topic, position, feed_position)
  SELECT t.tenant, t.topic, e.tenant_position, t.position FROM event_topics t JOIN events e ON e.position = t.position;
DROP TABLE event_topics;
ALTER TABLE event_topics_v2 RENAME TO event_topics;
`;

const SQL = {
  getStream: 'SELECT version, epoch FROM streams WHERE stream = ?',
  eventExists: 'SELECT 1 FROM events WHERE id = ?',
  idempotencyExists: 'SELECT 1 FROM idempotency WHERE tenant = ? AND key = ?',
  insertEvent: `INSERT INTO events (tenant_position, id, stream, version, tenant, kind, actor_id, type, data, meta, at, principal)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  bumpTenantPosition: `INSERT INTO tenant_positions (tenant, value) VALUES (?, ?)
    ON CONFLICT (tenant) DO UPDATE SET value = value + excluded.value RETURNING value`,
  insertTopic: 'INSERT OR IGNORE INTO event_topics (tenant, topic, position, feed_position) VALUES (?, ?, ?, ?)',
  upsertStream: `INSERT INTO streams (stream, tenant, kind, actor_id, version, epoch) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (stream) DO UPDATE SET version = excluded.version, epoch = max(epoch, excluded.epoch)`,
  putSnapshot: 'INSERT OR REPLACE INTO snapshots (stream, version, state) VALUES (?, ?, ?)',
  pruneSnapshots: `DELETE FROM snapshots WHERE stream = ? AND version NOT IN
    (SELECT version FROM snapshots WHERE stream = ? ORDER BY version DESC LIMIT ?)`,
  getSnapshot: 'SELECT version, state FROM snapshots WHERE stream = ? ORDER BY version DESC LIMIT 1',
  // An upsert, not INSERT OR REPLACE: only the indexes whose columns changed are touched.
  putView: `INSERT INTO views (${VIEW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (tenant, kind, id) DO UPDATE SET version = excluded.version, status = excluded.status,
    owner = excluded.owner, type = excluded.type, priority = excluded.priority, parent_id = excluded.parent_id,
    created_by = excluded.created_by, created_at = excluded.created_at, updated_at = excluded.updated_at,
    text = excluded.text, archived = excluded.archived, doc = excluded.doc`,
  deleteView: 'DELETE FROM views WHERE tenant = ? AND kind = ? AND id = ?',
  getView: `SELECT ${VIEW_COLUMNS} FROM views WHERE tenant = ? AND kind = ? AND id = ?`,
  getViews: `SELECT ${VIEW_COLUMNS} FROM views
    WHERE tenant = ? AND kind = ? AND id IN (SELECT value FROM json_each(?))`,
  putTimer: `INSERT OR REPLACE INTO timers (stream, name, tenant, kind, actor_id, fire_at, event)
    VALUES (?, ?, ?, ?, ?, ?, ?)`,
  deleteTimer: 'DELETE FROM timers WHERE stream = ? AND name = ?',
  deleteFiredTimer: 'DELETE FROM timers WHERE stream = ? AND name = ? AND fire_at = ?',
  dueTimers: `SELECT stream, name, tenant, kind, actor_id, fire_at, event FROM timers
    WHERE fire_at <= ? ORDER BY fire_at, stream, name LIMIT ?`,
  nextTimerAt: 'SELECT MIN(fire_at) AS at FROM timers',
  insertOutbox: `INSERT INTO outbox (id, source, tenant, target_kind, target_id, event, created_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)`,
  deleteOutbox: 'DELETE FROM outbox WHERE id = ?',
  deleteOutboxMany: 'DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))',
  pendingOutbox: `SELECT id, source, tenant, target_kind, target_id, event, created_at FROM outbox
    ORDER BY seq LIMIT ?`,
  insertIdempotency: `INSERT INTO idempotency (tenant, key, request_hash, result, created_at)
    VALUES (?, ?, ?, ?, ?)`,
  getIdempotency: 'SELECT tenant, key, request_hash, result, created_at FROM idempotency WHERE tenant = ? AND key = ?',
  readStream: `SELECT ${EVENT_COLUMNS} FROM events WHERE stream = ? AND version > ? ORDER BY version LIMIT ?`,
  readTopic: `SELECT e.position, e.tenant_position, e.id, e.stream, e.version, e.tenant, e.kind, e.actor_id, e.type,
    e.data, e.meta FROM event_topics t JOIN events e ON e.position = t.feed_position
    WHERE t.tenant = ? AND t.topic = ? AND t.position > ? ORDER BY t.position LIMIT ?`,
  readFeed: `SELECT ${EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?`,
  headPosition: 'SELECT COALESCE(MAX(position), 0) AS head FROM events',
  tenantHeadPosition: 'SELECT COALESCE(MAX(value), 0) AS head FROM tenant_positions WHERE tenant = ?',
  listStreams: 'SELECT stream FROM streams WHERE version > 0 ORDER BY stream',
  listStreamsOfKind: 'SELECT stream FROM streams WHERE kind = ? AND version > 0 ORDER BY stream',
  putTenant: 'INSERT OR REPLACE INTO tenants (id, name, created_at) VALUES (?, ?, ?)',
  getTenant: 'SELECT id, name, created_at FROM tenants WHERE id = ?',
  listTenants: 'SELECT id, name, created_at FROM tenants ORDER BY id',
  putApiKey: `INSERT OR REPLACE INTO api_keys
    (id, tenant, principal, roles, secret_hash, label, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  getApiKey: 'SELECT * FROM api_keys WHERE id = ?',
  listApiKeys: 'SELECT * FROM api_keys ORDER BY id',
  listApiKeysOfTenant: 'SELECT * FROM api_keys WHERE tenant = ? ORDER BY id',
  // The first revocation time is the one that counts; revoking again changes nothing.
  revokeApiKey: 'UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?',
  // A claimed stream without events stays at version 0: listStreams skips it, commits see its epoch.
  claimEpoch: `INSERT INTO streams (stream, tenant, kind, actor_id, version, epoch) VALUES (?, ?, ?, ?, 0, 1)
    ON CONFLICT (stream) DO UPDATE SET epoch = epoch + 1 RETURNING epoch`,
  nextCounter: `INSERT INTO counters (name, value) VALUES (?, 1)
    ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value`,
  ping: 'SELECT 1',
  // SET expressions read the row as it was before the update.
  upsertRefusal: `INSERT INTO refusals (${REFUSAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET count = count + excluded.count, last_at = max(last_at, excluded.last_at),
    actor_kind = CASE WHEN actor_kind IS excluded.actor_kind AND actor_id IS excluded.actor_id THEN actor_kind END,
    actor_id = CASE WHEN actor_kind IS excluded.actor_kind AND actor_id IS excluded.actor_id THEN actor_id END`,
};

type Statements = Record<keyof typeof SQL, Stmt>;

function prepareStatements(db: Database.Database): Statements {
  const entries = Object.entries(SQL).map(([name, text]) => [name, db.prepare<unknown[], Row>(text)]);
  return Object.fromEntries(entries) as Statements;
}

/** JSON text of a value; refuses values JSON cannot represent instead of storing nothing. */
function json(value: unknown, what: string): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${what} is not JSON-serialisable`);
  return text;
}

export function prepareItem(item: CommitItem): PreparedItem {
  const v = item.view;
  const idem = item.idempotency;
  return {
    stream: item.stream,
    tenant: item.tenant,
    kind: item.kind,
    actorId: item.actorId,
    expectedVersion: item.expectedVersion,
    epoch: item.epoch,
    events: item.events.map((e, i) => ({
      id: e.id,
      type: e.type,
      data: json(e.data, `event ${e.id} data`),
      meta: json(e.meta, `event ${e.id} meta`),
      at: eventTime(e),
      principal: eventPrincipal(e),
      topics: [...new Set(item.topics[i] ?? [])],
    })),
    snapshot: item.snapshot === undefined ? undefined : json(item.snapshot, `snapshot of ${item.stream}`),
    view:
      v == null
        ? v
        : [
            v.tenant, v.kind, v.id, v.version, v.status, v.owner, v.type, v.priority, v.parentId,
            v.createdBy, v.createdAt, v.updatedAt, v.text, v.archived ? 1 : 0, json(v.doc, `view ${v.id} doc`),
          ],
    scheduleTimers: (item.scheduleTimers ?? []).map((t) => [
      t.stream, t.name, t.tenant, t.kind, t.actorId, t.fireAt, json(t.event, `timer ${t.name} event`),
    ]),
    cancelTimers: [...(item.cancelTimers ?? [])],
    firedTimers: (item.firedTimers ?? []).map((f) => ({ name: f.name, fireAt: f.fireAt })),
    outbox: (item.outbox ?? []).map((o) => [
      o.id, o.source, o.tenant, o.targetKind, o.targetId, json(o.event, `outbox ${o.id} event`), o.createdAt,
    ]),
    outboxDone: [...(item.outboxDone ?? [])],
    idempotency: idem && {
      tenant: idem.tenant,
      key: idem.key,
      row: [
        idem.tenant, idem.key, idem.requestHash,
        idem.result === undefined ? null : json(idem.result, `idempotency ${idem.key} result`), idem.createdAt,
      ],
    },
  };
}

/** Refusal records as rows of the `refusals` table; throws a TypeError for a malformed record. */
export function prepareRefusals(records: RefusalRecord[]): PreparedRefusals {
  for (const r of records) checkRefusal(r);
  return {
    refusals: records.map((r) => [
      r.id, r.tenant, r.at, r.lastAt, r.principal, r.method, r.code, r.reason, r.count, r.actorKind, r.actorId,
      r.correlationId,
    ]),
  };
}

/** Throws a TypeError naming the first argument of an epoch claim that is not a string. */
export function checkClaim(claim: PreparedClaim['claim']): PreparedClaim['claim'] {
  for (const field of ['stream', 'tenant', 'kind', 'actorId'] as const) {
    if (typeof claim[field] !== 'string') throw new TypeError(`claimEpoch: ${field} must be a string`);
  }
  return { stream: claim.stream, tenant: claim.tenant, kind: claim.kind, actorId: claim.actorId };
}

/**
 * A writer call from its JSON form (posted to the writer thread): commit items, `{ refusals }`
 * or `{ claim }`.
 */
export function prepareCall(value: unknown): PreparedCall {
  if (Array.isArray(value)) return (value as CommitItem[]).map(prepareItem);
  const call = value as { refusals?: unknown; claim?: unknown } | null;
  if (call?.claim !== undefined) return { claim: checkClaim(call.claim as PreparedClaim['claim']) };
  if (!Array.isArray(call?.refusals)) throw new TypeError('a writer call is commit items, { refusals } or { claim }');
  return prepareRefusals(call.refusals as RefusalRecord[]);
}

function toRefusal(row: Row): RefusalRecord {
  return {
    id: row.id as string,
    tenant: row.tenant as string,
    at: row.at as number,
    lastAt: row.last_at as number,
    principal: row.principal as string,
    method: row.method as string,
    code: row.code as string,
    reason: row.reason as string,
    count: row.count as number,
    actorKind: row.actor_kind as string | null,
    actorId: row.actor_id as string | null,
    correlationId: row.correlation_id as string | null,
  };
}

function toEvent(row: Row): StoredEvent {
  return {
    id: row.id as string,
    type: row.type as string,
    data: JSON.parse(row.data as string),
    meta: JSON.parse(row.meta as string),
    position: row.tenant_position as number,
    feedPosition: row.position as number,
    stream: row.stream as string,
    tenant: row.tenant as string,
    kind: row.kind as string,
    actorId: row.actor_id as string,
    version: row.version as number,
  };
}

function toView(row: Row): ViewRecord {
  return {
    tenant: row.tenant as string,
    kind: row.kind as string,
    id: row.id as string,
    version: row.version as number,
    status: row.status as string,
    owner: row.owner as string | null,
    type: row.type as string | null,
    priority: row.priority as string | null,
    parentId: row.parent_id as string | null,
    createdBy: row.created_by as string | null,
    createdAt: row.created_at as number,
    updatedAt: row.updated_at as number,
    text: row.text as string,
    archived: row.archived === 1,
    doc: JSON.parse(row.doc as string),
  };
}

function toTimer(row: Row): TimerRecord {
  return {
    stream: row.stream as string,
    tenant: row.tenant as string,
    kind: row.kind as string,
    actorId: row.actor_id as string,
    name: row.name as string,
    fireAt: row.fire_at as number,
    event: JSON.parse(row.event as string),
  };
}

function toOutbox(row: Row): OutboxRecord {
  return {
    id: row.id as string,
    source: row.source as string,
    tenant: row.tenant as string,
    targetKind: row.target_kind as string,
    targetId: row.target_id as string,
    event: JSON.parse(row.event as string),
    createdAt: row.created_at as number,
  };
}

function toTenant(row: Row): TenantRecord {
  return { id: row.id as string, name: row.name as string, createdAt: row.created_at as number };
}

function toApiKey(row: Row): ApiKeyRecord {
  return {
    id: row.id as string,
    tenant: row.tenant as string,
    principal: row.principal as string,
    roles: JSON.parse(row.roles as string),
    secretHash: row.secret_hash as string,
    label: row.label as string,
    createdAt: row.created_at as number,
    revokedAt: row.revoked_at as number | null,
  };
}

/** WHERE clauses and parameters for every filter of a view query except the cursor. */
function viewFilter(tenant: string, kind: string, q: ViewQuery): { sql: string[]; params: unknown[] } {
  const sql = ['tenant = ?', 'kind = ?'];
  const params: unknown[] = [tenant, kind];
  const add = (clause: string, ...values: unknown[]): void => {
    sql.push(clause);
    params.push(...values);
  };
  const archived = q.archived ?? false;
  if (archived !== 'any') add('archived = ?', archived ? 1 : 0);
  // json_each keeps one statement shape whatever the list length.
  if (q.status !== undefined) add('status IN (SELECT value FROM json_each(?))', JSON.stringify(q.status));
  if (q.owner !== undefined) add('owner = ?', q.owner);
  if (q.type !== undefined) add('type = ?', q.type);
  if (q.priority !== undefined) add('priority IN (SELECT value FROM json_each(?))', JSON.stringify(q.priority));
  if (q.parentId !== undefined) add('parent_id = ?', q.parentId);
  if (q.createdBy !== undefined) add('created_by = ?', q.createdBy);
  if (q.text !== undefined) add("text LIKE ? ESCAPE '\\'", `%${escapeLike(q.text.toLowerCase())}%`);
  if (q.createdAfter !== undefined) add('created_at > ?', q.createdAfter);
  if (q.createdBefore !== undefined) add('created_at < ?', q.createdBefore);
  if (q.updatedBefore !== undefined) add('updated_at < ?', q.updatedBefore);
  return { sql, params };
}

/** WHERE clauses shared by both sides of the audit trail; `columns` names each side's columns. */
function auditFilter(
  tenant: string,
  q: EventQuery,
  columns: { kind: string; actorId: string; type: string },
): { sql: string[]; params: unknown[]; add: (clause: string, ...values: unknown[]) => void } {
  const sql = ['tenant = ?'];
  const params: unknown[] = [tenant];
  const add = (clause: string, ...values: unknown[]): void => {
    sql.push(clause);
    params.push(...values);
  };
  if (q.principal !== undefined) add('principal = ?', q.principal);
  if (q.kind !== undefined) add(`${columns.kind} = ?`, q.kind);
  if (q.actorId !== undefined) add(`${columns.actorId} = ?`, q.actorId);
  if (q.type !== undefined) add(`${columns.type} = ?`, q.type);
  if (q.from !== undefined) add('at >= ?', q.from);
  if (q.to !== undefined) add('at < ?', q.to);
  return { sql, params, add };
}

function escapeLike(s: string): string {
  return s.replace(/[\\%_]/g, (c) => `\\${c}`);
}

/** SQLite's LIMIT for a count: -1 means no limit. */
function sqlLimit(limit: number): number {
  if (limit === Infinity) return -1;
  return Number.isFinite(limit) && limit > 0 ? Math.floor(limit) : 0;
}

function pageLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return 50;
  return Math.min(1000, Math.max(1, Math.floor(limit)));
}

function bump(counts: Record<string, number>, key: string | null, n: number): void {
  if (key !== null) counts[key] = (counts[key] ?? 0) + n;
}


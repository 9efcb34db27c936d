import {
  MongoClient,
  MongoError,
  MongoNetworkError,
  MongoNotConnectedError,
  MongoOperationTimeoutError,
  MongoServerError,
  MongoServerSelectionError,
  MongoTopologyClosedError,
  type ClientSession,
  type Collection,
  type Db,
  type Filter,
  type IndexDescription,
  type MongoClientOptions,
  type TransactionOptions,
} from 'mongodb';
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
  mergeRefusal,
  type AuditKey,
} from './eventQuery.js';

/** The database a connection string without one names. */
export const DEFAULT_MONGO_DATABASE = 'troupe';

/** The layout version this code writes; a database with a higher one is refused. */
const SCHEMA_VERSION = 1;

/** Most commit calls written in one transaction; more wait for the next one. Keeps transactions short. */
const MAX_BATCH_CALLS = 256;

/** Options of {@link MongoStore}. */
export interface MongoStoreOptions {
  /**
   * A `mongodb://` or `mongodb+srv://` connection string of a replica set or sharded cluster
   * (commits are transactions; a single-node replica set is enough).
   */
  url: string;
  /** The database; default: the connection string's path, else {@link DEFAULT_MONGO_DATABASE}. */
  dbName?: string;
  /** Passed to the driver's `MongoClient` (pool size, timeouts, TLS, ...). */
  clientOptions?: MongoClientOptions;
}

/**
 * The database a connection string names in its path (`mongodb://host/NAME?...`), or
 * {@link DEFAULT_MONGO_DATABASE} when it names none. Throws a TypeError for a string that is not a
 * MongoDB connection string (without echoing it: it may hold a password).
 */
export function mongoDatabaseName(url: string): string {
  const match = /^mongodb(?:\+srv)?:\/\/[^/?#]*(?:\/([^?#]*))?/.exec(url);
  if (!match) {
    throw new TypeError('a MongoDB connection string starts with mongodb:// or mongodb+srv://');
  }
  const name = decodeURIComponent(match[1] ?? '');
  return name === '' ? DEFAULT_MONGO_DATABASE : name;
}

// Documents as stored. Payloads the store never filters on (event data, snapshots, view docs,
// timer events, idempotency results) are JSON text, exactly as the SQLite store keeps them, so
// both adapters give back the same values (JSON drops `undefined`, BSON would not) and user keys
// such as `$set` or `a.b` need no care.

interface EventDoc {
  /** The store-wide feed position. */
  _id: number;
  /** The tenant position. */
  pos: number;
  eventId: string;
  stream: string;
  version: number;
  tenant: string;
  kind: string;
  actorId: string;
  type: string;
  data: string;
  meta: string;
  /** `meta.at` (0 without one) and `meta.principal` (`''`), for the audit trail's indexes. */
  at: number;
  principal: string;
  topics: string[];
}

interface StreamDoc {
  _id: string;
  tenant: string;
  kind: string;
  actorId: string;
  version: number;
  epoch: number;
}

/** A counter: a tenant's last position, the feed's, the outbox sequence, a named counter. */
interface CounterDoc {
  _id: string;
  value: number;
}

interface SnapshotDoc {
  _id: string;
  version: number;
  state: string;
}

/** A read-model row as stored: the document as JSON text, plus the text as queries search it. */
interface ViewDoc extends Omit<ViewRecord, 'doc'> {
  /** `text` with ASCII letters lower-cased: what `text` queries search, as SQLite's LIKE folds. */
  textFold: string;
  doc: string;
}

interface TimerDoc {
  stream: string;
  name: string;
  tenant: string;
  kind: string;
  actorId: string;
  fireAt: number;
  event: string;
}

interface OutboxDoc {
  _id: string;
  /** Insertion order: pendingOutbox is oldest first. */
  seq: number;
  source: string;
  tenant: string;
  targetKind: string;
  targetId: string;
  event: string;
  createdAt: number;
}

interface IdempotencyDoc {
  tenant: string;
  key: string;
  requestHash: string;
  result: string | null;
  createdAt: number;
}

interface TenantDoc {
  _id: string;
  name: string;
  createdAt: number;
}

interface ApiKeyDoc {
  _id: string;
  tenant: string;
  principal: string;
  roles: string[];
  secretHash: string;
  label: string;
  createdAt: number;
  revokedAt: number | null;
}

/** A refusal record as stored: its id is the document's `_id`. */
type RefusalDoc = Omit<RefusalRecord, 'id'> & { _id: string };

interface MetaDoc {
  _id: string;
  value: number;
}

interface Collections {
  meta: Collection<MetaDoc>;
  events: Collection<EventDoc>;
  streams: Collection<StreamDoc>;
  /** `feed` (the last feed position) and `outbox` (the last outbox sequence number). */
  sequences: Collection<CounterDoc>;
  /** One document per tenant: the last position of its feed. */
  tenantPositions: Collection<CounterDoc>;
  counters: Collection<CounterDoc>;
  snapshots: Collection<SnapshotDoc>;
  views: Collection<ViewDoc>;
  timers: Collection<TimerDoc>;
  outbox: Collection<OutboxDoc>;
  idempotency: Collection<IdempotencyDoc>;
  tenants: Collection<TenantDoc>;
  apiKeys: Collection<ApiKeyDoc>;
  refusals: Collection<RefusalDoc>;
}

/** The indexes each collection needs, created on first use (creating an existing one is a no-op). */
const INDEXES: { [K in keyof Collections]?: IndexDescription[] } = {
  events: [
    { key: { eventId: 1 }, name: 'event_id', unique: true },
    { key: { stream: 1, version: 1 }, name: 'stream_version', unique: true },
    { key: { tenant: 1, topics: 1, pos: 1 }, name: 'tenant_topic_pos' },
    { key: { tenant: 1, at: 1, pos: 1 }, name: 'tenant_at' },
    { key: { tenant: 1, principal: 1, at: 1, pos: 1 }, name: 'tenant_principal_at' },
  ],
  streams: [{ key: { kind: 1, _id: 1 }, name: 'kind' }],
  views: [
    { key: { tenant: 1, kind: 1, id: 1 }, name: 'view_id', unique: true },
    { key: { tenant: 1, kind: 1, createdAt: 1, id: 1 }, name: 'created' },
    { key: { tenant: 1, kind: 1, status: 1, createdAt: 1, id: 1 }, name: 'status' },
    { key: { tenant: 1, kind: 1, owner: 1, status: 1, createdAt: 1, id: 1 }, name: 'owner' },
    { key: { tenant: 1, kind: 1, type: 1, createdAt: 1, id: 1 }, name: 'type' },
    { key: { tenant: 1, kind: 1, parentId: 1, createdAt: 1, id: 1 }, name: 'parent' },
    { key: { tenant: 1, kind: 1, createdBy: 1, createdAt: 1, id: 1 }, name: 'created_by' },
  ],
  timers: [
    { key: { stream: 1, name: 1 }, name: 'stream_name', unique: true },
    { key: { fireAt: 1, stream: 1, name: 1 }, name: 'fire_at' },
  ],
  outbox: [{ key: { seq: 1 }, name: 'seq' }],
  idempotency: [{ key: { tenant: 1, key: 1 }, name: 'tenant_key', unique: true }],
  apiKeys: [{ key: { tenant: 1, _id: 1 }, name: 'tenant' }],
  refusals: [
    { key: { tenant: 1, at: 1, _id: 1 }, name: 'tenant_at' },
    { key: { tenant: 1, principal: 1, at: 1, _id: 1 }, name: 'tenant_principal_at' },
  ],
};

/**
 * Every commit is a snapshot-isolated transaction acknowledged by a majority, so what it wrote
 * survives a failover; its reads and writes of one stream document make concurrent commits to
 * the same stream (from any node) conflict, and the driver retries the loser, which then sees
 * the winner's version.
 */
const TRANSACTION: TransactionOptions = {
  readConcern: { level: 'snapshot' },
  writeConcern: { w: 'majority' },
  readPreference: 'primary',
};

/** A commit item with its JSON already serialised, so bad input fails its own call early. */
interface PreparedItem {
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
  view: ViewDoc | null | undefined;
  scheduleTimers: TimerDoc[];
  cancelTimers: string[];
  firedTimers: { name: string; fireAt: number }[];
  outbox: Omit<OutboxDoc, 'seq'>[];
  outboxDone: string[];
  idempotency: IdempotencyDoc | undefined;
}

interface PendingCommit {
  items: PreparedItem[];
  resolve: (outcomes: CommitOutcome[]) => void;
  reject: (err: unknown) => void;
}

/**
 * The {@link Store} for clusters: MongoDB through the official driver. Several Troupe nodes share
 * one database; fencing epochs, versions and positions stay consistent across them.
 *
 * - Each commit item is checked and written inside a transaction (a replica set is required; a
 *   single-node one will do). Commit calls made before the next `setImmediate` turn go in one
 *   transaction (up to 256 of them), in call order; if one call breaks an invariant (a duplicate outbox id), the
 *   calls are written again one per transaction, so only that call rejects.
 * - Positions are gap-free: per-tenant counter documents and one feed counter are raised inside
 *   the commit's transaction, so they are taken in commit order.
 * - Writes are acknowledged by a majority; reads go to the primary, so a writer reads its own write.
 * - The constructor does not connect: the first call connects, checks the deployment and creates
 *   the indexes. A call that cannot reach the server rejects, and the next call tries again.
 *
 * @example
 * ```ts
 * const store = new MongoStore({ url: 'mongodb://localhost:27017/troupe?replicaSet=rs0' });
 * const [outcome] = await store.commit([item]);
 * await store.close();
 * ```
 */
export class MongoStore implements Store {
  #client: MongoClient;
  #db: Db;
  #c: Collections;
  #init: Promise<void> | undefined;
  #queue: PendingCommit[] = [];
  #flushTimer: NodeJS.Immediate | undefined;
  /** The batch being written, if any; one at a time, so commits land in call order. */
  #writing: Promise<void> | null = null;
  #closed = false;
  #closing: Promise<void> | null = null;

  constructor(options: MongoStoreOptions) {
    const dbName = options.dbName ?? mongoDatabaseName(options.url);
    // MongoClient parses the string now (a malformed one throws here) but connects on first use.
    this.#client = new MongoClient(options.url, {
      writeConcern: { w: 'majority' },
      ...options.clientOptions,
    });
    this.#db = this.#client.db(dbName);
    const db = this.#db;
    this.#c = {
      meta: db.collection('meta'),
      events: db.collection('events'),
      streams: db.collection('streams'),
      sequences: db.collection('sequences'),
      tenantPositions: db.collection('tenant_positions'),
      counters: db.collection('counters'),
      snapshots: db.collection('snapshots'),
      views: db.collection('views'),
      timers: db.collection('timers'),
      outbox: db.collection('outbox'),
      idempotency: db.collection('idempotency'),
      tenants: db.collection('tenants'),
      apiKeys: db.collection('api_keys'),
      refusals: db.collection('refusals'),
    };
  }

  /** The collections, once the store is open and initialised; rejects when closed. */
  async #open(what: string): Promise<Collections> {
    if (this.#closed) throw new Error(`MongoStore is closed: ${what} refused`);
    await this.#initialised();
    return this.#c;
  }

  /** Connects and initialises once; after a failure the next call tries again (the server may be back). */
  #initialised(): Promise<void> {
    this.#init ??= this.#initialise().catch((err: unknown) => {
      this.#init = undefined;
      throw err;
    });
    return this.#init;
  }

  async #initialise(): Promise<void> {
    // Explicitly: after a failed connect the driver's implicit one refuses every later operation
    // ("Topology is closed"), while connect() tries again.
    await this.#client.connect();
    const hello = await this.#db.command({ hello: 1 });
    if (typeof hello.setName !== 'string' && hello.msg !== 'isdbgrid') {
      throw new Error(
        'MongoStore commits in transactions, which need a replica set or a sharded cluster, but the server is a ' +
          'standalone mongod: start it with --replSet rs0 and run rs.initiate() once (a single-node replica set ' +
          'is enough), and add ?replicaSet=rs0 to the connection string',
      );
    }
    // Nodes starting together may race to create it.
    const meta = await retryDuplicate(() =>
      this.#c.meta.findOneAndUpdate(
        { _id: 'schema_version' },
        { $setOnInsert: { value: SCHEMA_VERSION } },
        { upsert: true, returnDocument: 'after' },
      ),
    );
    if (meta && meta.value > SCHEMA_VERSION) {
      throw new Error(
        `database ${this.#db.databaseName} has schema_version ${meta.value}, newer than this code's ${SCHEMA_VERSION}; upgrade Troupe`,
      );
    }
    // Every collection exists before the first transaction: creating one inside a transaction has
    // restrictions (read concern, sharding) that commits should not depend on.
    const existing = new Set((await this.#db.listCollections({}, { nameOnly: true }).toArray()).map((info) => info.name));
    for (const collection of Object.values(this.#c)) {
      if (existing.has(collection.collectionName)) continue;
      try {
        await this.#db.createCollection(collection.collectionName);
      } catch (err) {
        // NamespaceExists: another node created it meanwhile.
        if (!(err instanceof MongoServerError && err.code === 48)) throw err;
      }
    }
    for (const [name, indexes] of Object.entries(INDEXES) as [keyof Collections, IndexDescription[]][]) {
      await this.#db.collection(this.#c[name].collectionName).createIndexes(indexes);
    }
  }

  commit(items: CommitItem[]): Promise<CommitOutcome[]> {
    if (this.#closed) return Promise.reject(new Error('MongoStore is closed: commit refused'));
    if (items.length === 0) return Promise.resolve([]);
    let prepared: PreparedItem[];
    try {
      // Now, so later changes by the caller cannot reach the store.
      prepared = items.map(prepareItem);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      this.#queue.push({ items: prepared, resolve, reject });
      if (!this.#writing) this.#flushTimer ??= setImmediate(() => this.#startFlush());
    });
  }

  #startFlush(): void {
    this.#flushTimer = undefined;
    this.#writing = this.#flush().finally(() => {
      this.#writing = null;
      // Everything queued while this batch was being written goes out as the next batch.
      if (this.#queue.length > 0 && !this.#closed) this.#flushTimer ??= setImmediate(() => this.#startFlush());
    });
  }

  /** Writes every queued call and settles their promises; never rejects. */
  async #flush(): Promise<void> {
    const batch = this.#queue.splice(0, MAX_BATCH_CALLS);
    if (batch.length === 0) return;
    let results: (CommitOutcome[] | Error)[];
    try {
      // Not #open: calls queued before close() still land while it waits for them.
      await this.#initialised();
      results = await this.#writeCalls(batch.map((call) => call.items));
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

  /**
   * Writes the calls in one transaction; if one of them breaks an invariant, writes them again
   * one transaction each. Returns each call's outcomes or its own error; throws when the store
   * itself fails (then every call fails alike).
   */
  async #writeCalls(calls: PreparedItem[][]): Promise<(CommitOutcome[] | Error)[]> {
    if (calls.length > 1) {
      try {
        return await this.#transaction(async (session) => {
          const results: CommitOutcome[][] = [];
          for (const call of calls) results.push(await this.#writeCall(call, session));
          return results;
        });
      } catch (err) {
        if (!isCallError(err)) throw err;
      }
    }
    const results: (CommitOutcome[] | Error)[] = [];
    for (const [i, call] of calls.entries()) {
      try {
        results.push(await this.#writeCallAlone(call));
      } catch (err) {
        if (!isCallError(err)) {
          // The store failed: the calls not written yet fail with it.
          for (let j = i; j < calls.length; j++) results.push(toError(err));
          return results;
        }
        results.push(toError(err));
      }
    }
    return results;
  }

  /**
   * One call in its own transaction. A duplicate key can come from a write of another node that
   * this transaction's snapshot did not see; a second try sees it and answers with the refusal.
   */
  async #writeCallAlone(call: PreparedItem[]): Promise<CommitOutcome[]> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#transaction((session) => this.#writeCall(call, session));
      } catch (err) {
        if (attempt >= 2 || !isDuplicateKey(err)) throw err;
      }
    }
  }

  /** Runs `work` in a transaction; the driver retries it on transient errors (write conflicts). */
  async #transaction<T>(work: (session: ClientSession) => Promise<T>): Promise<T> {
    const session = this.#client.startSession();
    try {
      return await session.withTransaction(() => work(session), TRANSACTION);
    } finally {
      await session.endSession();
    }
  }

  async #writeCall(items: PreparedItem[], session: ClientSession): Promise<CommitOutcome[]> {
    const outcomes: CommitOutcome[] = [];
    for (const item of items) outcomes.push(await this.#writeItem(item, session));
    return outcomes;
  }

  /**
   * Checks and writes one item. Every refusal is decided before the first write, so a refused
   * item writes nothing and the transaction goes on with the next one.
   */
  async #writeItem(item: PreparedItem, session: ClientSession): Promise<CommitOutcome> {
    const c = this.#c;
    const stream = await c.streams.findOne({ _id: item.stream }, { session });
    const version = stream?.version ?? 0;
    const epoch = stream?.epoch ?? 0;
    if (item.epoch < epoch) return { ok: false, reason: 'stale_epoch', currentEpoch: epoch };
    if (item.expectedVersion !== version) return { ok: false, reason: 'version_conflict', actualVersion: version };
    if (item.events.length > 0) {
      const ids = item.events.map((e) => e.id);
      const found = await c.events.find({ eventId: { $in: ids } }, { session, projection: { eventId: 1 } }).toArray();
      const existing = new Set(found.map((d) => d.eventId));
      const seen = new Set<string>();
      for (const id of ids) {
        if (seen.has(id) || existing.has(id)) return { ok: false, reason: 'duplicate_event', eventId: id };
        seen.add(id);
      }
    }
    const idem = item.idempotency;
    if (idem && (await c.idempotency.findOne({ tenant: idem.tenant, key: idem.key }, { session, projection: { _id: 1 } }))) {
      return { ok: false, reason: 'idempotency_conflict', key: idem.key };
    }

    const positions: number[] = [];
    const feedPositions: number[] = [];
    const n = item.events.length;
    if (n > 0) {
      // One counter per tenant: its positions have no gaps and say nothing of other tenants.
      const lastPosition = await raise(c.tenantPositions, item.tenant, n, session);
      const lastFeedPosition = await raise(c.sequences, 'feed', n, session);
      const docs = item.events.map((e, i): EventDoc => {
        positions.push(lastPosition - n + i + 1);
        feedPositions.push(lastFeedPosition - n + i + 1);
        return {
          _id: lastFeedPosition - n + i + 1,
          pos: lastPosition - n + i + 1,
          eventId: e.id,
          stream: item.stream,
          version: version + i + 1,
          tenant: item.tenant,
          kind: item.kind,
          actorId: item.actorId,
          type: e.type,
          data: e.data,
          meta: e.meta,
          at: e.at,
          principal: e.principal,
          topics: e.topics,
        };
      });
      await c.events.insertMany(docs, { session });
    }
    const newVersion = version + n;
    // Written by every item, events or not: two commits to one stream always conflict.
    await c.streams.updateOne(
      { _id: item.stream },
      {
        $set: { version: newVersion },
        $max: { epoch: item.epoch },
        $setOnInsert: { tenant: item.tenant, kind: item.kind, actorId: item.actorId },
      },
      { upsert: true, session },
    );
    if (item.snapshot !== undefined) {
      await c.snapshots.replaceOne(
        { _id: item.stream },
        { version: newVersion, state: item.snapshot },
        { upsert: true, session },
      );
    }
    if (item.view === null) {
      await c.views.deleteOne({ tenant: item.tenant, kind: item.kind, id: item.actorId }, { session });
    } else if (item.view !== undefined) {
      const v = item.view;
      await c.views.replaceOne({ tenant: v.tenant, kind: v.kind, id: v.id }, v, { upsert: true, session });
    }
    // Deletes before inserts, so a turn may cancel or fire a timer and schedule it again.
    for (const f of item.firedTimers) {
      await c.timers.deleteOne({ stream: item.stream, name: f.name, fireAt: f.fireAt }, { session });
    }
    if (item.cancelTimers.length > 0) {
      await c.timers.deleteMany({ stream: item.stream, name: { $in: item.cancelTimers } }, { session });
    }
    for (const t of item.scheduleTimers) {
      await c.timers.replaceOne({ stream: t.stream, name: t.name }, t, { upsert: true, session });
    }
    if (item.outboxDone.length > 0) await c.outbox.deleteMany({ _id: { $in: item.outboxDone } }, { session });
    if (item.outbox.length > 0) {
      const last = await raise(c.sequences, 'outbox', item.outbox.length, session);
      const docs = item.outbox.map((o, i): OutboxDoc => ({ ...o, seq: last - item.outbox.length + i + 1 }));
      // A duplicate id fails the insert (unique _id): the call rejects with nothing written.
      await c.outbox.insertMany(docs, { session });
    }
    if (idem) await c.idempotency.insertOne({ ...idem }, { session });
    return { ok: true, positions, feedPositions };
  }

  async readStream(stream: string, afterVersion = 0, limit = Infinity): Promise<StoredEvent[]> {
    const c = await this.#open('readStream');
    const n = countLimit(limit);
    if (n === 0) return [];
    const cursor = c.events.find({ stream, version: { $gt: afterVersion } }).sort({ version: 1 });
    return (await (n === undefined ? cursor : cursor.limit(n)).toArray()).map(toEvent);
  }

  async streamInfo(stream: string): Promise<{ version: number; epoch: number }> {
    const c = await this.#open('streamInfo');
    const doc = await c.streams.findOne({ _id: stream });
    return { version: doc?.version ?? 0, epoch: doc?.epoch ?? 0 };
  }

  async loadSnapshot(stream: string): Promise<{ version: number; state: unknown } | undefined> {
    const c = await this.#open('loadSnapshot');
    const doc = await c.snapshots.findOne({ _id: stream });
    return doc ? { version: doc.version, state: JSON.parse(doc.state) } : undefined;
  }

  async readTopic(tenant: string, topic: string, afterPosition: number, limit: number): Promise<StoredEvent[]> {
    const c = await this.#open('readTopic');
    const n = countLimit(limit);
    if (n === 0) return [];
    const cursor = c.events.find({ tenant, topics: topic, pos: { $gt: afterPosition } }).sort({ pos: 1 });
    return (await (n === undefined ? cursor : cursor.limit(n)).toArray()).map(toEvent);
  }

  async readFeed(afterFeedPosition: number, limit: number): Promise<StoredEvent[]> {
    const c = await this.#open('readFeed');
    const n = countLimit(limit);
    if (n === 0) return [];
    const cursor = c.events.find({ _id: { $gt: afterFeedPosition } }).sort({ _id: 1 });
    return (await (n === undefined ? cursor : cursor.limit(n)).toArray()).map(toEvent);
  }

  async headPosition(tenant?: string): Promise<number> {
    const c = await this.#open('headPosition');
    if (tenant !== undefined) return (await c.tenantPositions.findOne({ _id: tenant }))?.value ?? 0;
    const [last] = await c.events.find({}, { projection: { _id: 1 } }).sort({ _id: -1 }).limit(1).toArray();
    return last?._id ?? 0;
  }

  async listStreams(kind?: string): Promise<string[]> {
    const c = await this.#open('listStreams');
    // Claimed or event-less streams stay at version 0 and are not listed.
    const filter: Filter<StreamDoc> = kind === undefined ? { version: { $gt: 0 } } : { kind, version: { $gt: 0 } };
    const docs = await c.streams.find(filter, { projection: { _id: 1 } }).sort({ _id: 1 }).toArray();
    return docs.map((d) => d._id);
  }

  async getView(tenant: string, kind: string, id: string): Promise<ViewRecord | undefined> {
    const c = await this.#open('getView');
    const doc = await c.views.findOne({ tenant, kind, id });
    return doc ? toView(doc) : undefined;
  }

  async getViews(tenant: string, kind: string, ids: string[]): Promise<ViewRecord[]> {
    const c = await this.#open('getViews');
    if (ids.length === 0) return [];
    const found = new Map<string, ViewDoc>();
    for (const doc of await c.views.find({ tenant, kind, id: { $in: ids } }).toArray()) found.set(doc.id, doc);
    return ids.flatMap((id) => {
      const doc = found.get(id);
      return doc ? [toView(doc)] : [];
    });
  }

  async queryViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewPage> {
    const limit = pageLimit(query.limit);
    const filter = viewFilter(tenant, kind, query);
    if (query.cursor !== undefined) {
      const [createdAt, id] = decodeCursor(query.cursor);
      filter.$and = [
        ...(filter.$and ?? []),
        { $or: [{ createdAt: { $lt: createdAt } }, { createdAt, id: { $lt: id } }] },
      ];
    }
    const c = await this.#open('queryViews');
    const docs = await c.views.find(filter).sort({ createdAt: -1, id: -1 }).limit(limit + 1).toArray();
    const items = docs.slice(0, limit).map(toView);
    const last = items[items.length - 1];
    return { items, nextCursor: docs.length > limit && last ? encodeCursor(last.createdAt, last.id) : null };
  }

  async statsViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewStats> {
    const c = await this.#open('statsViews');
    type Group = { _id: { status: string; priority: string | null; type: string | null }; n: number };
    const groups = await c.views
      .aggregate<Group>([
        { $match: viewFilter(tenant, kind, query) },
        { $group: { _id: { status: '$status', priority: '$priority', type: '$type' }, n: { $sum: 1 } } },
      ])
      .toArray();
    const stats: ViewStats = { total: 0, byStatus: {}, byPriority: {}, byType: {} };
    for (const { _id: key, n } of groups) {
      stats.total += n;
      bump(stats.byStatus, key.status ?? null, n);
      bump(stats.byPriority, key.priority ?? null, n);
      bump(stats.byType, key.type ?? null, n);
    }
    return stats;
  }

  async dueTimers(now: number, limit: number): Promise<TimerRecord[]> {
    const c = await this.#open('dueTimers');
    const n = countLimit(limit);
    if (n === 0) return [];
    const cursor = c.timers.find({ fireAt: { $lte: now } }).sort({ fireAt: 1, stream: 1, name: 1 });
    return (await (n === undefined ? cursor : cursor.limit(n)).toArray()).map(toTimer);
  }

  async nextTimerAt(): Promise<number | undefined> {
    const c = await this.#open('nextTimerAt');
    const [first] = await c.timers.find({}, { projection: { fireAt: 1 } }).sort({ fireAt: 1 }).limit(1).toArray();
    return first?.fireAt;
  }

  async pendingOutbox(limit: number): Promise<OutboxRecord[]> {
    const c = await this.#open('pendingOutbox');
    const n = countLimit(limit);
    if (n === 0) return [];
    const cursor = c.outbox.find({}).sort({ seq: 1 });
    return (await (n === undefined ? cursor : cursor.limit(n)).toArray()).map(toOutbox);
  }

  async ackOutbox(ids: string[]): Promise<void> {
    const c = await this.#open('ackOutbox');
    if (ids.length > 0) await c.outbox.deleteMany({ _id: { $in: [...ids] } });
  }

  async getIdempotency(tenant: string, key: string): Promise<IdempotencyRecord | undefined> {
    const c = await this.#open('getIdempotency');
    const doc = await c.idempotency.findOne({ tenant, key });
    if (!doc) return undefined;
    return {
      tenant: doc.tenant,
      key: doc.key,
      requestHash: doc.requestHash,
      result: doc.result === null ? undefined : JSON.parse(doc.result),
      createdAt: doc.createdAt,
    };
  }

  async queryEvents(tenant: string, q: EventQuery): Promise<EventPage> {
    const limit = eventPageLimit(q.limit);
    const after = q.cursor === undefined ? undefined : decodeEventCursor(q.cursor);
    const c = await this.#open('queryEvents');
    // Each side reads at most one row past the page through its own index; the merge is in JS.
    const events = q.outcome === 'refused' ? [] : await this.#eventSide(c, tenant, q, after, limit + 1);
    const refusals = q.outcome === 'accepted' ? [] : await this.#refusalSide(c, tenant, q, after, limit + 1);
    const found: EventPage['items'] = [
      ...events.map((doc) => ({ outcome: 'accepted' as const, event: toEvent(doc) })),
      ...refusals.map((doc) => ({ outcome: 'refused' as const, refusal: toRefusal(doc) })),
    ];
    found.sort((a, b) => compareAuditKeys(auditKey(a), auditKey(b)));
    const items = found.slice(0, limit);
    const last = items[items.length - 1];
    return { items, nextCursor: found.length > limit && last ? encodeEventCursor(auditKey(last)) : null };
  }

  /** A tenant's events matching `q` after the cursor, newest first (index tenant_at or tenant_principal_at). */
  #eventSide(c: Collections, tenant: string, q: EventQuery, after: AuditKey | undefined, limit: number): Promise<EventDoc[]> {
    const filter: Filter<EventDoc> = { tenant };
    if (q.principal !== undefined) filter.principal = q.principal;
    if (q.kind !== undefined) filter.kind = q.kind;
    if (q.actorId !== undefined) filter.actorId = q.actorId;
    if (q.type !== undefined) filter.type = q.type;
    const and: Filter<EventDoc>[] = timeRange(q);
    if (after?.rank === 1) {
      and.push({ at: { $lte: after.at } }, { $or: [{ at: { $lt: after.at } }, { at: after.at, pos: { $lt: after.position } }] });
    } else if (after) {
      // Refusals sort after the events of their millisecond.
      and.push({ at: { $lt: after.at } });
    }
    if (and.length > 0) filter.$and = and;
    return c.events.find(filter).sort({ at: -1, pos: -1 }).limit(limit).toArray();
  }

  /** A tenant's refusal records matching `q` after the cursor, newest first (index tenant_at or tenant_principal_at). */
  #refusalSide(c: Collections, tenant: string, q: EventQuery, after: AuditKey | undefined, limit: number): Promise<RefusalDoc[]> {
    const filter: Filter<RefusalDoc> = { tenant };
    if (q.principal !== undefined) filter.principal = q.principal;
    if (q.kind !== undefined) filter.actorKind = q.kind;
    if (q.actorId !== undefined) filter.actorId = q.actorId;
    if (q.type !== undefined) filter.method = q.type;
    const and: Filter<RefusalDoc>[] = timeRange(q);
    if (after?.rank === 0) {
      and.push({ at: { $lte: after.at } }, { $or: [{ at: { $lt: after.at } }, { at: after.at, _id: { $lt: after.id } }] });
    } else if (after) {
      and.push({ at: { $lte: after.at } });
    }
    if (and.length > 0) filter.$and = and;
    return c.refusals.find(filter).sort({ at: -1, _id: -1 }).limit(limit).toArray();
  }

  /**
   * Stores refusal records in one transaction, all or none; a record whose id is stored already
   * is merged into it (read, merged and written inside the transaction, so concurrent merges
   * from other nodes conflict and are retried rather than lost).
   */
  async appendRefusals(records: RefusalRecord[]): Promise<void> {
    for (const r of records) checkRefusal(r);
    // Copied now, so later changes by the caller cannot reach the store.
    const copies = records.map((r): RefusalRecord => ({ ...r }));
    const c = await this.#open('appendRefusals');
    if (copies.length === 0) return;
    await this.#transaction(async (session) => {
      for (const r of copies) {
        const stored = await c.refusals.findOne({ _id: r.id }, { session });
        const next = stored ? mergeRefusal(toRefusal(stored), r) : r;
        const { id, ...rest } = next;
        await c.refusals.replaceOne({ _id: id }, rest, { upsert: true, session });
      }
    });
  }

  async putTenant(tenant: TenantRecord): Promise<void> {
    const doc = { name: tenant.name, createdAt: tenant.createdAt };
    const c = await this.#open('putTenant');
    await retryDuplicate(() => c.tenants.replaceOne({ _id: tenant.id }, doc, { upsert: true }));
  }

  async getTenant(id: string): Promise<TenantRecord | undefined> {
    const c = await this.#open('getTenant');
    const doc = await c.tenants.findOne({ _id: id });
    return doc ? toTenant(doc) : undefined;
  }

  async listTenants(): Promise<TenantRecord[]> {
    const c = await this.#open('listTenants');
    return (await c.tenants.find({}).sort({ _id: 1 }).toArray()).map(toTenant);
  }

  async putApiKey(key: ApiKeyRecord): Promise<void> {
    const { id, ...rest } = key;
    const doc = { ...rest, roles: [...key.roles] };
    const c = await this.#open('putApiKey');
    await retryDuplicate(() => c.apiKeys.replaceOne({ _id: id }, doc, { upsert: true }));
  }

  async getApiKey(id: string): Promise<ApiKeyRecord | undefined> {
    const c = await this.#open('getApiKey');
    const doc = await c.apiKeys.findOne({ _id: id });
    return doc ? toApiKey(doc) : undefined;
  }

  async listApiKeys(tenant?: string): Promise<ApiKeyRecord[]> {
    const c = await this.#open('listApiKeys');
    const filter: Filter<ApiKeyDoc> = tenant === undefined ? {} : { tenant };
    return (await c.apiKeys.find(filter).sort({ _id: 1 }).toArray()).map(toApiKey);
  }

  async revokeApiKey(id: string, at: number): Promise<boolean> {
    const c = await this.#open('revokeApiKey');
    // The first revocation time is the one that counts; revoking again changes nothing.
    const result = await c.apiKeys.updateOne({ _id: id }, [
      { $set: { revokedAt: { $ifNull: ['$revokedAt', { $literal: at }] } } },
    ]);
    return result.matchedCount > 0;
  }

  /**
   * Raises the stream's epoch in one atomic update (creating the stream document at version 0
   * if needed). A commit transaction that read the old epoch conflicts with it when it writes
   * the stream document, and its retry sees the new epoch.
   */
  async claimEpoch(stream: string, tenant: string, kind: string, actorId: string): Promise<number> {
    const c = await this.#open('claimEpoch');
    const doc = await retryDuplicate(() =>
      c.streams.findOneAndUpdate(
        { _id: stream },
        { $inc: { epoch: 1 }, $setOnInsert: { tenant, kind, actorId, version: 0 } },
        { upsert: true, returnDocument: 'after' },
      ),
    );
    return doc!.epoch;
  }

  async nextCounter(name: string): Promise<number> {
    const c = await this.#open('nextCounter');
    return retryDuplicate(() => raise(c.counters, name, 1));
  }

  async ping(): Promise<void> {
    await this.#open('ping');
    await this.#db.command({ ping: 1 });
  }

  async close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.#closing = (async () => {
      // Calls queued before close() still land.
      while (this.#writing || this.#queue.length > 0) {
        if (this.#flushTimer) clearImmediate(this.#flushTimer);
        this.#flushTimer = undefined;
        if (!this.#writing) this.#startFlush();
        await this.#writing;
      }
      await this.#client.close();
    })();
    return this.#closing;
  }
}

/** JSON text of a value; refuses values JSON cannot represent instead of storing nothing. */
function json(value: unknown, what: string): string {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${what} is not JSON-serialisable`);
  return text;
}

function prepareItem(item: CommitItem): PreparedItem {
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
        : {
            tenant: v.tenant,
            kind: v.kind,
            id: v.id,
            version: v.version,
            status: v.status,
            owner: v.owner,
            type: v.type,
            priority: v.priority,
            parentId: v.parentId,
            createdBy: v.createdBy,
            createdAt: v.createdAt,
            updatedAt: v.updatedAt,
            text: v.text,
            textFold: asciiLower(v.text),
            archived: Boolean(v.archived),
            doc: json(v.doc, `view ${v.id} doc`),
          },
    scheduleTimers: (item.scheduleTimers ?? []).map((t) => ({
      stream: t.stream,
      name: t.name,
      tenant: t.tenant,
      kind: t.kind,
      actorId: t.actorId,
      fireAt: t.fireAt,
      event: json(t.event, `timer ${t.name} event`),
    })),
    cancelTimers: [...(item.cancelTimers ?? [])],
    firedTimers: (item.firedTimers ?? []).map((f) => ({ name: f.name, fireAt: f.fireAt })),
    outbox: (item.outbox ?? []).map((o) => ({
      _id: o.id,
      source: o.source,
      tenant: o.tenant,
      targetKind: o.targetKind,
      targetId: o.targetId,
      event: json(o.event, `outbox ${o.id} event`),
      createdAt: o.createdAt,
    })),
    outboxDone: [...(item.outboxDone ?? [])],
    idempotency: idem && {
      tenant: idem.tenant,
      key: idem.key,
      requestHash: idem.requestHash,
      result: idem.result === undefined ? null : json(idem.result, `idempotency ${idem.key} result`),
      createdAt: idem.createdAt,
    },
  };
}

/** Adds `by` to a counter document (created at 0) and returns its new value. */
async function raise(counters: Collection<CounterDoc>, id: string, by: number, session?: ClientSession): Promise<number> {
  const doc = await counters.findOneAndUpdate(
    { _id: id },
    { $inc: { value: by } },
    { upsert: true, returnDocument: 'after', ...(session ? { session } : {}) },
  );
  return doc!.value;
}

/**
 * Runs an upsert again when it lost a race to insert the same `_id` (the server usually retries
 * such upserts itself; this covers the cases where it does not).
 */
async function retryDuplicate<T>(upsert: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await upsert();
    } catch (err) {
      if (attempt >= 3 || !isDuplicateKey(err)) throw err;
    }
  }
}

function isDuplicateKey(err: unknown): boolean {
  return err instanceof MongoServerError && err.code === 11000;
}

/**
 * True when an error belongs to the call that was being written (its data broke a unique index
 * or a size limit), false when the store failed (unreachable, no primary, timed out, a
 * transaction that kept conflicting or whose commit is in doubt): then writing the other calls
 * on their own would only fail again, slowly.
 */
function isCallError(err: unknown): boolean {
  if (
    err instanceof MongoNetworkError ||
    err instanceof MongoServerSelectionError ||
    err instanceof MongoNotConnectedError ||
    err instanceof MongoTopologyClosedError ||
    err instanceof MongoOperationTimeoutError
  ) {
    return false;
  }
  if (err instanceof MongoError) {
    return !['TransientTransactionError', 'UnknownTransactionCommitResult', 'RetryableWriteError'].some((label) =>
      err.hasErrorLabel(label),
    );
  }
  return true;
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Conditions on `at` for an audit query's time range (`from` inclusive, `to` exclusive). */
function timeRange<T extends { at: number }>(q: EventQuery): Filter<T>[] {
  const and: Filter<T>[] = [];
  if (q.from !== undefined) and.push({ at: { $gte: q.from } } as Filter<T>);
  if (q.to !== undefined) and.push({ at: { $lt: q.to } } as Filter<T>);
  return and;
}

/** The filter of every field of a view query except the cursor. */
function viewFilter(tenant: string, kind: string, q: ViewQuery): Filter<ViewDoc> {
  const filter: Filter<ViewDoc> = { tenant, kind };
  const archived = q.archived ?? false;
  if (archived !== 'any') filter.archived = archived;
  if (q.status !== undefined) filter.status = { $in: [...q.status] };
  if (q.owner !== undefined) filter.owner = q.owner;
  if (q.type !== undefined) filter.type = q.type;
  if (q.priority !== undefined) filter.priority = { $in: [...q.priority] };
  if (q.parentId !== undefined) filter.parentId = q.parentId;
  if (q.createdBy !== undefined) filter.createdBy = q.createdBy;
  const createdAt: { $gt?: number; $lt?: number } = {};
  if (q.createdAfter !== undefined) createdAt.$gt = q.createdAfter;
  if (q.createdBefore !== undefined) createdAt.$lt = q.createdBefore;
  if (Object.keys(createdAt).length > 0) filter.createdAt = createdAt;
  if (q.updatedBefore !== undefined) filter.updatedAt = { $lt: q.updatedBefore };
  // An empty text matches every row, as SQLite's LIKE '%%' does.
  if (q.text !== undefined && q.text !== '') {
    // A plain substring test, so nothing in the query is a pattern; $literal keeps a leading `$`
    // from naming a field.
    filter.$and = [{ $expr: { $gte: [{ $indexOfCP: ['$textFold', { $literal: q.text.toLowerCase() }] }, 0] } }];
  }
  return filter;
}

function toEvent(doc: EventDoc): StoredEvent {
  return {
    id: doc.eventId,
    type: doc.type,
    data: JSON.parse(doc.data),
    meta: JSON.parse(doc.meta),
    position: doc.pos,
    feedPosition: doc._id,
    stream: doc.stream,
    tenant: doc.tenant,
    kind: doc.kind,
    actorId: doc.actorId,
    version: doc.version,
  };
}

function toView(doc: ViewDoc): ViewRecord {
  return {
    tenant: doc.tenant,
    kind: doc.kind,
    id: doc.id,
    version: doc.version,
    status: doc.status,
    owner: doc.owner,
    type: doc.type,
    priority: doc.priority,
    parentId: doc.parentId,
    createdBy: doc.createdBy,
    createdAt: doc.createdAt,
    updatedAt: doc.updatedAt,
    text: doc.text,
    archived: doc.archived,
    doc: JSON.parse(doc.doc),
  };
}

function toTimer(doc: TimerDoc): TimerRecord {
  return {
    stream: doc.stream,
    tenant: doc.tenant,
    kind: doc.kind,
    actorId: doc.actorId,
    name: doc.name,
    fireAt: doc.fireAt,
    event: JSON.parse(doc.event),
  };
}

function toOutbox(doc: OutboxDoc): OutboxRecord {
  return {
    id: doc._id,
    source: doc.source,
    tenant: doc.tenant,
    targetKind: doc.targetKind,
    targetId: doc.targetId,
    event: JSON.parse(doc.event),
    createdAt: doc.createdAt,
  };
}

function toRefusal(doc: RefusalDoc): RefusalRecord {
  const { _id, ...rest } = doc;
  return { id: _id, ...rest };
}

function toTenant(doc: TenantDoc): TenantRecord {
  return { id: doc._id, name: doc.name, createdAt: doc.createdAt };
}

function toApiKey(doc: ApiKeyDoc): ApiKeyRecord {
  return {
    id: doc._id,
    tenant: doc.tenant,
    principal: doc.principal,
    roles: doc.roles,
    secretHash: doc.secretHash,
    label: doc.label,
    createdAt: doc.createdAt,
    revokedAt: doc.revokedAt,
  };
}

/** A count limit for the driver: `undefined` for none (`Infinity`), 0 for nothing (anything not positive). */
function countLimit(limit: number): number | undefined {
  if (limit === Infinity) return undefined;
  return Number.isFinite(limit) && limit > 0 ? Math.floor(limit) : 0;
}

function pageLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return 50;
  return Math.min(1000, Math.max(1, Math.floor(limit)));
}

function bump(counts: Record<string, number>, key: string | null, n: number): void {
  if (key !== null) counts[key] = (counts[key] ?? 0) + n;
}

function asciiLower(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

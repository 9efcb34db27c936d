/**
 * The storage port of the actor runtime. Every adapter (memory, SQLite, MongoDB) implements
 * {@link Store} and passes the same contract suite (`test/contracts/storeContract.ts`).
 *
 * One {@link CommitItem} is the unit of atomicity: an actor's new events, its snapshot, its read
 * model row, its timers, its outbox entries and an idempotency key are written together or not at
 * all. Several items may be written in one physical transaction (group commit), but each succeeds
 * or fails on its own.
 */

/** Who caused an event, and when. Times are milliseconds since the epoch. */
export interface EventMeta {
  /** Milliseconds since the Unix epoch, stamped by the runtime. */
  at: number;
  /** The principal that caused the event (`system` for timers and internal messages). */
  principal: string;
  /** Correlates everything one client request caused. */
  correlationId?: string;
  /** The id of the event or outbox message that caused this one. */
  causationId?: string;
  /** The actor's status after this event (for timelines and notifications). */
  status?: string;
}

/** An event to append. */
export interface NewEvent {
  /** Unique across the whole store; a second append of the same id is refused. */
  id: string;
  type: string;
  /** The event exactly as the machine received it (includes `type`). */
  data: Record<string, unknown>;
  meta: EventMeta;
}

/** An event as stored. */
export interface StoredEvent extends NewEvent {
  /**
   * Position in its tenant's feed: strictly increasing per tenant in commit order, starting at 1,
   * without gaps. Clients see it and resume subscriptions from it; because it counts only the
   * tenant's own events, it reveals nothing about other tenants' activity.
   */
  position: number;
  /** Position in the store-wide feed across all tenants. Internal: never shown to clients. */
  feedPosition: number;
  stream: string;
  tenant: string;
  kind: string;
  actorId: string;
  /** Version within the stream, starting at 1. */
  version: number;
}

/** A durable timer. At most one timer per `(stream, name)`: scheduling again replaces it. */
export interface TimerRecord {
  stream: string;
  tenant: string;
  kind: string;
  actorId: string;
  name: string;
  /** Milliseconds since the epoch. */
  fireAt: number;
  /** The event delivered to the actor when the timer fires. */
  event: Record<string, unknown>;
}

/** A message to another actor, stored with the event that emitted it and delivered after commit. */
export interface OutboxRecord {
  /** Unique id; receivers use it to drop duplicates. */
  id: string;
  /** The stream whose commit emitted the message. */
  source: string;
  tenant: string;
  targetKind: string;
  targetId: string;
  event: Record<string, unknown>;
  createdAt: number;
}

/** The queryable read model row of one actor, kept in step with its stream. */
export interface ViewRecord {
  tenant: string;
  kind: string;
  id: string;
  /** The stream's version this row reflects. */
  version: number;
  status: string;
  /** The agent the actor is assigned to, if any. */
  owner: string | null;
  type: string | null;
  priority: string | null;
  parentId: string | null;
  createdBy: string | null;
  /** Milliseconds since the epoch. */
  createdAt: number;
  updatedAt: number;
  /** Lower-cased free text that `text` queries search as a substring. */
  text: string;
  archived: boolean;
  /** The full resource as returned to clients. */
  doc: Record<string, unknown>;
}

/** Filters for {@link Store.queryViews}; every given filter must hold. */
export interface ViewQuery {
  status?: string[];
  owner?: string;
  type?: string;
  priority?: string[];
  parentId?: string;
  createdBy?: string;
  /** Case-insensitive substring of {@link ViewRecord.text}. */
  text?: string;
  /** `false` (default): only rows not archived; `true`: only archived rows; `'any'`: both. */
  archived?: boolean | 'any';
  createdAfter?: number;
  createdBefore?: number;
  updatedBefore?: number;
  /** Page size, 1..1000. */
  limit?: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

/** A page of rows, newest first (by `createdAt`, then `id`, both descending). */
export interface ViewPage {
  items: ViewRecord[];
  nextCursor: string | null;
}

/** Counts over the rows matching a query (its `limit` and `cursor` are ignored). */
export interface ViewStats {
  total: number;
  byStatus: Record<string, number>;
  byPriority: Record<string, number>;
  byType: Record<string, number>;
}

/**
 * Refused calls of one principal, method and error code, aggregated over a short window (the
 * audit trail's record of attempts that changed nothing). Times are milliseconds since the epoch.
 */
export interface RefusalRecord {
  /** Unique in the store; appending a record whose id is stored already merges into it. */
  id: string;
  tenant: string;
  /** The first attempt. */
  at: number;
  /** The last attempt (`>= at`). */
  lastAt: number;
  principal: string;
  /** The method called. */
  method: string;
  /** The error's stable name, e.g. `FORBIDDEN`. */
  code: string;
  /** The error message of the first attempt. */
  reason: string;
  /** How many attempts the record stands for (an integer >= 1). */
  count: number;
  /** The actor the attempts named, when every one of them named the same one; else null. */
  actorKind: string | null;
  actorId: string | null;
  /** The correlation id of the first attempt. */
  correlationId: string | null;
}

/** Filters for {@link Store.queryEvents}; every given filter must hold. */
export interface EventQuery {
  /** Only accepted events (of actors' streams) or only refusal records. Both by default. */
  outcome?: 'accepted' | 'refused';
  /** The actor kind of an event, or the kind a refused call named. */
  kind?: string;
  /** The actor id of an event, or the actor a refused call named. */
  actorId?: string;
  principal?: string;
  /** The event type of an accepted event, or the method of a refused call. */
  type?: string;
  /** Inclusive lower bound of `meta.at` (events) or `at` (refusals). */
  from?: number;
  /** Exclusive upper bound. */
  to?: number;
  /** Page size, 1..1000 (default 50). */
  limit?: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

/** One entry of the audit trail: an accepted (stored) event or a refusal record. */
export type AuditItem = { outcome: 'accepted'; event: StoredEvent } | { outcome: 'refused'; refusal: RefusalRecord };

/**
 * A page of the audit trail, newest first: by time (`meta.at` or `at`) descending; at the same
 * millisecond accepted events before refusals, events by tenant position descending and
 * refusals by id descending.
 */
export interface EventPage {
  items: AuditItem[];
  nextCursor: string | null;
}

/** An idempotency record: the hash of the first request and the result it produced. */
export interface IdempotencyRecord {
  tenant: string;
  key: string;
  requestHash: string;
  result: unknown;
  createdAt: number;
}

/** Everything one actor turn writes. */
export interface CommitItem {
  stream: string;
  tenant: string;
  kind: string;
  actorId: string;
  /** The stream's version before these events (0 for a new stream). */
  expectedVersion: number;
  /** The writer's fencing epoch; refused if lower than the highest epoch the stream has seen. */
  epoch: number;
  /** Events to append; may be empty when only timers or outbox entries change. */
  events: NewEvent[];
  /** Topics of each event, parallel to `events`. Topic names are unique within a tenant. */
  topics: string[][];
  /** The actor's persisted state after these events, at version `expectedVersion + events.length`. */
  snapshot?: unknown;
  /** The read model row after these events; `null` deletes it. */
  view?: ViewRecord | null;
  /** Timers to create or replace. */
  scheduleTimers?: TimerRecord[];
  /** Timers of this stream to delete, by name. */
  cancelTimers?: string[];
  /** Timers of this stream to delete only if still due at the given time (a fired timer). */
  firedTimers?: { name: string; fireAt: number }[];
  /** Messages to other actors. */
  outbox?: OutboxRecord[];
  /** Outbox entries (of any stream) that this commit consumed, deleted with it. */
  outboxDone?: string[];
  /** Claim an idempotency key; the item fails with `idempotency_conflict` if it exists. */
  idempotency?: IdempotencyRecord;
}

/** Why an item was refused. */
export type CommitFailure =
  | { ok: false; reason: 'version_conflict'; actualVersion: number }
  | { ok: false; reason: 'stale_epoch'; currentEpoch: number }
  | { ok: false; reason: 'duplicate_event'; eventId: string }
  | { ok: false; reason: 'idempotency_conflict'; key: string };

/** The result of one item: the positions given to its events (tenant and store-wide), or why it was refused. */
export type CommitOutcome = { ok: true; positions: number[]; feedPositions: number[] } | CommitFailure;

/** A tenant. */
export interface TenantRecord {
  id: string;
  name: string;
  createdAt: number;
}

/** An API key; only the hash of its secret is stored. */
export interface ApiKeyRecord {
  id: string;
  tenant: string;
  principal: string;
  roles: string[];
  /** Hex SHA-256 of the secret part of the key. */
  secretHash: string;
  label: string;
  createdAt: number;
  revokedAt: number | null;
}

/**
 * The storage port. Methods are async so that networked adapters fit; the embedded adapter may
 * batch concurrent {@link Store.commit} calls into one transaction.
 */
export interface Store {
  /** Writes each item atomically; items succeed or fail independently. Resolves once durable. */
  commit(items: CommitItem[]): Promise<CommitOutcome[]>;
  /** Events of a stream with `version > afterVersion`, in order, at most `limit`. */
  readStream(stream: string, afterVersion?: number, limit?: number): Promise<StoredEvent[]>;
  /** The stream's current version and highest epoch seen (both 0 for an unknown stream). */
  streamInfo(stream: string): Promise<{ version: number; epoch: number }>;
  /** The latest snapshot of a stream, if any. */
  loadSnapshot(stream: string): Promise<{ version: number; state: unknown } | undefined>;
  /** Events of a tenant's topic with (tenant) `position > afterPosition`, in position order. */
  readTopic(tenant: string, topic: string, afterPosition: number, limit: number): Promise<StoredEvent[]>;
  /** All events of all tenants with `feedPosition > afterFeedPosition`, in feed order. */
  readFeed(afterFeedPosition: number, limit: number): Promise<StoredEvent[]>;
  /** The highest position of a tenant's feed, or with no tenant of the store-wide feed (0 when empty). */
  headPosition(tenant?: string): Promise<number>;
  /** Every stream name with at least one event, optionally of one kind. */
  listStreams(kind?: string): Promise<string[]>;

  getView(tenant: string, kind: string, id: string): Promise<ViewRecord | undefined>;
  getViews(tenant: string, kind: string, ids: string[]): Promise<ViewRecord[]>;
  queryViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewPage>;
  statsViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewStats>;

  /** Timers with `fireAt <= now`, earliest first. */
  dueTimers(now: number, limit: number): Promise<TimerRecord[]>;
  /** The earliest `fireAt` of any timer, if any. */
  nextTimerAt(): Promise<number | undefined>;
  /** Outbox entries not yet consumed, oldest first. */
  pendingOutbox(limit: number): Promise<OutboxRecord[]>;
  /** Deletes outbox entries (delivered or dropped as duplicates). */
  ackOutbox(ids: string[]): Promise<void>;

  getIdempotency(tenant: string, key: string): Promise<IdempotencyRecord | undefined>;

  /**
   * The audit trail of a tenant: its stored events and refusal records matching `query`, newest
   * first (see {@link EventPage}). Rejects with an Error whose message starts with
   * `invalid cursor` for a cursor it did not issue.
   */
  queryEvents(tenant: string, query: EventQuery): Promise<EventPage>;
  /**
   * Stores refusal records, all or none; resolves once durable. A record whose id is stored
   * already is merged into it: counts add up, `lastAt` becomes the later one, the actor stays
   * only if both name the same one, and the other fields keep their first values.
   */
  appendRefusals(records: RefusalRecord[]): Promise<void>;

  putTenant(tenant: TenantRecord): Promise<void>;
  getTenant(id: string): Promise<TenantRecord | undefined>;
  listTenants(): Promise<TenantRecord[]>;
  putApiKey(key: ApiKeyRecord): Promise<void>;
  getApiKey(id: string): Promise<ApiKeyRecord | undefined>;
  listApiKeys(tenant?: string): Promise<ApiKeyRecord[]>;
  revokeApiKey(id: string, at: number): Promise<boolean>;

  /**
   * Takes the next fencing epoch of a stream: atomically raises the stream's highest seen epoch
   * by one (from 0 for a stream never seen, so the first claim returns 1) and returns it. From
   * then on every commit to the stream with a lower epoch is refused with `stale_epoch`, also
   * before the new owner has written anything. A claim on a stream without events does not make
   * it appear in {@link Store.listStreams}, and its version stays 0.
   */
  claimEpoch(stream: string, tenant: string, kind: string, actorId: string): Promise<number>;
  /** Increments and returns a named durable counter (starts at 1). Used for fencing epochs. */
  nextCounter(name: string): Promise<number>;
  /** Resolves when the store answers; rejects otherwise. */
  ping(): Promise<void>;
  /** Flushes pending commits and closes; safe to call twice. */
  close(): Promise<void>;
}

/**
 * The Store methods that only read. Retrying them is safe (the resilient store does), and tracing
 * wraps them in spans; the background polls among them are listed in {@link STORE_POLLS}.
 */
export const STORE_READS = [
  'readStream',
  'streamInfo',
  'loadSnapshot',
  'readTopic',
  'readFeed',
  'headPosition',
  'listStreams',
  'getView',
  'getViews',
  'queryViews',
  'statsViews',
  'dueTimers',
  'nextTimerAt',
  'pendingOutbox',
  'getIdempotency',
  'getTenant',
  'listTenants',
  'getApiKey',
  'listApiKeys',
  'queryEvents',
] as const satisfies readonly (keyof Store)[];

/** Reads the server makes on its own schedule (due timers, the outbox), not for a request. */
export const STORE_POLLS: readonly (typeof STORE_READS)[number][] = ['dueTimers', 'nextTimerAt', 'pendingOutbox'];

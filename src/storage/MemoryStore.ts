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
  compareCodePoints,
  decodeEventCursor,
  encodeEventCursor,
  eventPageLimit,
  eventPrincipal,
  eventTime,
  mergeRefusal,
  type AuditKey,
} from './eventQuery.js';

interface StreamState {
  tenant: string;
  kind: string;
  actorId: string;
  version: number;
  epoch: number;
  /** Positions of the stream's events; index `version - 1`. */
  positions: number[];
}

/** An outbox entry with its insertion sequence, so a rolled-back delete keeps its place. */
interface OutboxEntry {
  seq: number;
  record: OutboxRecord;
}

/** Thrown by {@link MemoryStore} when a call breaks an invariant that no refusal reason covers. */
class InvariantError extends Error {}

/**
 * An in-process {@link Store} for unit tests. Everything lives in maps; data is deep-copied
 * (`structuredClone`) on the way in and out, so callers cannot mutate stored state.
 *
 * Semantics match the SQLite adapter (`SqliteStore`): each item of a commit is checked and
 * written on its own (refusals leave no trace), and a call that breaks an invariant (a duplicate
 * outbox id) rejects with nothing of that call written.
 *
 * @example
 * ```ts
 * const store = new MemoryStore();
 * const [outcome] = await store.commit([item]);
 * ```
 */
export class MemoryStore implements Store {
  #closed = false;
  /** Index `position - 1`. */
  #events: StoredEvent[] = [];
  #eventIds = new Set<string>();
  #streams = new Map<string, StreamState>();
  /** Key: tenant NUL topic; positions ascending. */
  #topics = new Map<string, number[]>();
  /** The last position of each tenant's feed. */
  #tenantHeads = new Map<string, number>();
  /** Store-wide positions of each tenant's events, ascending: the audit trail scans only its tenant. */
  #tenantEvents = new Map<string, number[]>();
  #refusals = new Map<string, RefusalRecord>();
  #snapshots = new Map<string, { version: number; state: unknown }>();
  /** Key: tenant NUL kind NUL id. */
  #views = new Map<string, ViewRecord>();
  /** Key: stream NUL name. */
  #timers = new Map<string, TimerRecord>();
  #outbox = new Map<string, OutboxEntry>();
  #outboxSeq = 0;
  /** Key: tenant NUL key. */
  #idempotency = new Map<string, IdempotencyRecord>();
  #tenants = new Map<string, TenantRecord>();
  #apiKeys = new Map<string, ApiKeyRecord>();
  #counters = new Map<string, number>();

  async commit(items: CommitItem[]): Promise<CommitOutcome[]> {
    this.#assertOpen();
    const copy = structuredClone(items);
    // Undo steps of this call, run in reverse if it breaks an invariant half way.
    const undo: (() => void)[] = [];
    try {
      return copy.map((item) => this.#commitItem(item, undo));
    } catch (err) {
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
      throw err;
    }
  }

  #commitItem(item: CommitItem, undo: (() => void)[]): CommitOutcome {
    const stream = this.#streams.get(item.stream);
    const version = stream?.version ?? 0;
    const epoch = stream?.epoch ?? 0;
    if (item.epoch < epoch) return { ok: false, reason: 'stale_epoch', currentEpoch: epoch };
    if (item.expectedVersion !== version) {
      return { ok: false, reason: 'version_conflict', actualVersion: version };
    }
    const seen = new Set<string>();
    for (const event of item.events) {
      if (this.#eventIds.has(event.id) || seen.has(event.id)) {
        return { ok: false, reason: 'duplicate_event', eventId: event.id };
      }
      seen.add(event.id);
    }
    const idem = item.idempotency;
    if (idem && this.#idempotency.has(pair(idem.tenant, idem.key))) {
      return { ok: false, reason: 'idempotency_conflict', key: idem.key };
    }
    // Invariants without a refusal reason are checked before anything is written for this item.
    const outboxIds = new Set<string>();
    for (const o of item.outbox ?? []) {
      const taken = this.#outbox.has(o.id) && !(item.outboxDone ?? []).includes(o.id);
      if (taken || outboxIds.has(o.id)) throw new InvariantError(`duplicate outbox id ${o.id}`);
      outboxIds.add(o.id);
    }

    const state: StreamState = stream ?? {
      tenant: item.tenant,
      kind: item.kind,
      actorId: item.actorId,
      version: 0,
      epoch: 0,
      positions: [],
    };
    if (!stream) {
      this.#streams.set(item.stream, state);
      undo.push(() => this.#streams.delete(item.stream));
    }
    const before = { version: state.version, epoch: state.epoch };
    undo.push(() => {
      state.version = before.version;
      state.epoch = before.epoch;
      state.positions.length = before.version;
    });

    const positions: number[] = [];
    const feedPositions: number[] = [];
    const tenantHead = this.#tenantHeads.get(item.tenant) ?? 0;
    const tenantEvents = this.#tenantEvents.get(item.tenant) ?? [];
    if (item.events.length > 0) {
      this.#tenantHeads.set(item.tenant, tenantHead + item.events.length);
      this.#tenantEvents.set(item.tenant, tenantEvents);
      const length = tenantEvents.length;
      undo.push(() => {
        this.#tenantHeads.set(item.tenant, tenantHead);
        tenantEvents.length = length;
      });
    }
    item.events.forEach((event, i) => {
      // Topic lists and streams index the store-wide feed; clients see the tenant position.
      const position = this.#events.length + 1;
      this.#events.push({
        ...event,
        position: tenantHead + i + 1,
        feedPosition: position,
        stream: item.stream,
        tenant: item.tenant,
        kind: item.kind,
        actorId: item.actorId,
        version: version + i + 1,
      });
      this.#eventIds.add(event.id);
      tenantEvents.push(position);
      undo.push(() => {
        this.#events.pop();
        this.#eventIds.delete(event.id);
      });
      for (const topic of new Set(item.topics[i] ?? [])) {
        const key = pair(item.tenant, topic);
        const list = this.#topics.get(key) ?? [];
        if (list.length === 0) this.#topics.set(key, list);
        list.push(position);
        undo.push(() => list.pop());
      }
      state.positions.push(position);
      positions.push(tenantHead + i + 1);
      feedPositions.push(position);
    });
    state.version = version + item.events.length;
    state.epoch = Math.max(epoch, item.epoch);

    if (item.snapshot !== undefined) {
      this.#put(this.#snapshots, item.stream, { version: state.version, state: item.snapshot }, undo);
    }
    if (item.view === null) {
      this.#remove(this.#views, triple(item.tenant, item.kind, item.actorId), undo);
    } else if (item.view !== undefined) {
      const v = item.view;
      this.#put(this.#views, triple(v.tenant, v.kind, v.id), v, undo);
    }
    // Deletes before inserts, so a turn may cancel or fire a timer and schedule it again.
    for (const f of item.firedTimers ?? []) {
      const key = pair(item.stream, f.name);
      if (this.#timers.get(key)?.fireAt === f.fireAt) this.#remove(this.#timers, key, undo);
    }
    for (const name of item.cancelTimers ?? []) this.#remove(this.#timers, pair(item.stream, name), undo);
    for (const t of item.scheduleTimers ?? []) this.#put(this.#timers, pair(t.stream, t.name), t, undo);
    for (const id of item.outboxDone ?? []) this.#remove(this.#outbox, id, undo);
    for (const o of item.outbox ?? []) {
      this.#put(this.#outbox, o.id, { seq: ++this.#outboxSeq, record: o }, undo);
    }
    if (idem) this.#put(this.#idempotency, pair(idem.tenant, idem.key), idem, undo);
    return { ok: true, positions, feedPositions };
  }

  /** Sets a map entry and records how to restore the previous one. */
  #put<V>(map: Map<string, V>, key: string, value: V, undo: (() => void)[]): void {
    const had = map.has(key);
    const old = map.get(key);
    map.set(key, value);
    undo.push(() => (had ? map.set(key, old as V) : map.delete(key)));
  }

  #remove<V>(map: Map<string, V>, key: string, undo: (() => void)[]): void {
    if (!map.has(key)) return;
    const old = map.get(key) as V;
    map.delete(key);
    undo.push(() => map.set(key, old));
  }

  async readStream(stream: string, afterVersion = 0, limit = Infinity): Promise<StoredEvent[]> {
    this.#assertOpen();
    const positions = this.#streams.get(stream)?.positions ?? [];
    const start = Math.max(0, Math.floor(afterVersion));
    return take(positions.slice(start), limit).map((p) => clone(this.#events[p - 1]!));
  }

  async streamInfo(stream: string): Promise<{ version: number; epoch: number }> {
    this.#assertOpen();
    const s = this.#streams.get(stream);
    return { version: s?.version ?? 0, epoch: s?.epoch ?? 0 };
  }

  async loadSnapshot(stream: string): Promise<{ version: number; state: unknown } | undefined> {
    this.#assertOpen();
    return clone(this.#snapshots.get(stream));
  }

  async readTopic(tenant: string, topic: string, afterPosition: number, limit: number): Promise<StoredEvent[]> {
    this.#assertOpen();
    const positions = (this.#topics.get(pair(tenant, topic)) ?? []).filter((p) => this.#events[p - 1]!.position > afterPosition);
    return take(positions, limit).map((p) => clone(this.#events[p - 1]!));
  }

  async readFeed(afterPosition: number, limit: number): Promise<StoredEvent[]> {
    this.#assertOpen();
    const start = Math.max(0, Math.floor(afterPosition));
    return take(this.#events.slice(start), limit).map(clone);
  }

  async headPosition(tenant?: string): Promise<number> {
    if (tenant !== undefined) {
      this.#assertOpen();
      return this.#tenantHeads.get(tenant) ?? 0;
    }
    this.#assertOpen();
    return this.#events.length;
  }

  async listStreams(kind?: string): Promise<string[]> {
    this.#assertOpen();
    return [...this.#streams]
      .filter(([, s]) => s.version > 0 && (kind === undefined || s.kind === kind))
      .map(([name]) => name)
      .sort(compareCodePoints);
  }

  async getView(tenant: string, kind: string, id: string): Promise<ViewRecord | undefined> {
    this.#assertOpen();
    return clone(this.#views.get(triple(tenant, kind, id)));
  }

  async getViews(tenant: string, kind: string, ids: string[]): Promise<ViewRecord[]> {
    this.#assertOpen();
    return ids.flatMap((id) => {
      const v = this.#views.get(triple(tenant, kind, id));
      return v ? [clone(v)] : [];
    });
  }

  async queryViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewPage> {
    this.#assertOpen();
    const limit = pageLimit(query.limit);
    let rows = this.#matching(tenant, kind, query);
    if (query.cursor !== undefined) {
      const [createdAt, id] = decodeCursor(query.cursor);
      rows = rows.filter(
        (v) => v.createdAt < createdAt || (v.createdAt === createdAt && compareCodePoints(v.id, id) < 0),
      );
    }
    rows.sort((a, b) => b.createdAt - a.createdAt || compareCodePoints(b.id, a.id));
    const items = rows.slice(0, limit).map(clone);
    const last = items[items.length - 1];
    return { items, nextCursor: rows.length > limit && last ? encodeCursor(last.createdAt, last.id) : null };
  }

  async statsViews(tenant: string, kind: string, query: ViewQuery): Promise<ViewStats> {
    this.#assertOpen();
    const stats: ViewStats = { total: 0, byStatus: {}, byPriority: {}, byType: {} };
    for (const v of this.#matching(tenant, kind, query)) {
      stats.total++;
      bump(stats.byStatus, v.status);
      bump(stats.byPriority, v.priority);
      bump(stats.byType, v.type);
    }
    return stats;
  }

  /** Rows of a tenant and kind that pass every filter of `q` (cursor and limit aside). */
  #matching(tenant: string, kind: string, q: ViewQuery): ViewRecord[] {
    const archived = q.archived ?? false;
    // SQLite's LIKE folds ASCII letters only; fold the same way so both adapters agree.
    const text = q.text === undefined ? undefined : q.text.toLowerCase();
    return [...this.#views.values()].filter(
      (v) =>
        v.tenant === tenant &&
        v.kind === kind &&
        (archived === 'any' || v.archived === archived) &&
        (q.status === undefined || q.status.includes(v.status)) &&
        (q.owner === undefined || v.owner === q.owner) &&
        (q.type === undefined || v.type === q.type) &&
        (q.priority === undefined || (v.priority !== null && q.priority.includes(v.priority))) &&
        (q.parentId === undefined || v.parentId === q.parentId) &&
        (q.createdBy === undefined || v.createdBy === q.createdBy) &&
        (text === undefined || asciiLower(v.text).includes(text)) &&
        (q.createdAfter === undefined || v.createdAt > q.createdAfter) &&
        (q.createdBefore === undefined || v.createdAt < q.createdBefore) &&
        (q.updatedBefore === undefined || v.updatedAt < q.updatedBefore),
    );
  }

  async dueTimers(now: number, limit: number): Promise<TimerRecord[]> {
    this.#assertOpen();
    const due = [...this.#timers.values()]
      .filter((t) => t.fireAt <= now)
      .sort(
        (a, b) => a.fireAt - b.fireAt || compareCodePoints(a.stream, b.stream) || compareCodePoints(a.name, b.name),
      );
    return take(due, limit).map(clone);
  }

  async nextTimerAt(): Promise<number | undefined> {
    this.#assertOpen();
    let next: number | undefined;
    for (const t of this.#timers.values()) if (next === undefined || t.fireAt < next) next = t.fireAt;
    return next;
  }

  async pendingOutbox(limit: number): Promise<OutboxRecord[]> {
    this.#assertOpen();
    const entries = [...this.#outbox.values()].sort((a, b) => a.seq - b.seq);
    return take(entries, limit).map((e) => clone(e.record));
  }

  async ackOutbox(ids: string[]): Promise<void> {
    this.#assertOpen();
    for (const id of ids) this.#outbox.delete(id);
  }

  async getIdempotency(tenant: string, key: string): Promise<IdempotencyRecord | undefined> {
    this.#assertOpen();
    return clone(this.#idempotency.get(pair(tenant, key)));
  }

  async queryEvents(tenant: string, q: EventQuery): Promise<EventPage> {
    this.#assertOpen();
    const limit = eventPageLimit(q.limit);
    const after = q.cursor === undefined ? undefined : decodeEventCursor(q.cursor);
    const inTime = (at: number) => (q.from === undefined || at >= q.from) && (q.to === undefined || at < q.to);
    const found: { key: AuditKey; item: () => EventPage['items'][number] }[] = [];
    const keep = (key: AuditKey, item: () => EventPage['items'][number]) => {
      if (after === undefined || compareAuditKeys(key, after) > 0) found.push({ key, item });
    };
    if (q.outcome !== 'refused') {
      for (const p of this.#tenantEvents.get(tenant) ?? []) {
        const e = this.#events[p - 1]!;
        if (q.kind !== undefined && e.kind !== q.kind) continue;
        if (q.actorId !== undefined && e.actorId !== q.actorId) continue;
        if (q.principal !== undefined && eventPrincipal(e) !== q.principal) continue;
        if (q.type !== undefined && e.type !== q.type) continue;
        if (!inTime(eventTime(e))) continue;
        keep({ at: eventTime(e), rank: 1, position: e.position }, () => ({ outcome: 'accepted', event: clone(e) }));
      }
    }
    if (q.outcome !== 'accepted') {
      for (const r of this.#refusals.values()) {
        if (r.tenant !== tenant) continue;
        if (q.kind !== undefined && r.actorKind !== q.kind) continue;
        if (q.actorId !== undefined && r.actorId !== q.actorId) continue;
        if (q.principal !== undefined && r.principal !== q.principal) continue;
        if (q.type !== undefined && r.method !== q.type) continue;
        if (!inTime(r.at)) continue;
        keep({ at: r.at, rank: 0, id: r.id }, () => ({ outcome: 'refused', refusal: clone(r) }));
      }
    }
    found.sort((a, b) => compareAuditKeys(a.key, b.key));
    const items = found.slice(0, limit).map((f) => f.item());
    const last = items[items.length - 1];
    return { items, nextCursor: found.length > limit && last ? encodeEventCursor(auditKey(last)) : null };
  }

  async appendRefusals(records: RefusalRecord[]): Promise<void> {
    this.#assertOpen();
    // Every record is checked before any is stored: all or none.
    for (const r of records) checkRefusal(r);
    for (const r of clone(records)) {
      const stored = this.#refusals.get(r.id);
      this.#refusals.set(r.id, stored ? mergeRefusal(stored, r) : r);
    }
  }

  async putTenant(tenant: TenantRecord): Promise<void> {
    this.#assertOpen();
    this.#tenants.set(tenant.id, clone(tenant));
  }

  async getTenant(id: string): Promise<TenantRecord | undefined> {
    this.#assertOpen();
    return clone(this.#tenants.get(id));
  }

  async listTenants(): Promise<TenantRecord[]> {
    this.#assertOpen();
    return [...this.#tenants.values()].sort((a, b) => compareCodePoints(a.id, b.id)).map(clone);
  }

  async putApiKey(key: ApiKeyRecord): Promise<void> {
    this.#assertOpen();
    this.#apiKeys.set(key.id, clone(key));
  }

  async getApiKey(id: string): Promise<ApiKeyRecord | undefined> {
    this.#assertOpen();
    return clone(this.#apiKeys.get(id));
  }

  async listApiKeys(tenant?: string): Promise<ApiKeyRecord[]> {
    this.#assertOpen();
    return [...this.#apiKeys.values()]
      .filter((k) => tenant === undefined || k.tenant === tenant)
      .sort((a, b) => compareCodePoints(a.id, b.id))
      .map(clone);
  }

  async revokeApiKey(id: string, at: number): Promise<boolean> {
    this.#assertOpen();
    const key = this.#apiKeys.get(id);
    if (!key) return false;
    // The first revocation time is the one that counts; revoking again changes nothing.
    key.revokedAt ??= at;
    return true;
  }

  async claimEpoch(stream: string, tenant: string, kind: string, actorId: string): Promise<number> {
    this.#assertOpen();
    const state = this.#streams.get(stream);
    if (state) return ++state.epoch;
    // A claimed stream exists at version 0, so listStreams (version > 0) leaves it out.
    this.#streams.set(stream, { tenant, kind, actorId, version: 0, epoch: 1, positions: [] });
    return 1;
  }

  async nextCounter(name: string): Promise<number> {
    this.#assertOpen();
    const value = (this.#counters.get(name) ?? 0) + 1;
    this.#counters.set(name, value);
    return value;
  }

  async ping(): Promise<void> {
    this.#assertOpen();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('MemoryStore is closed');
  }
}

function pair(a: string, b: string): string {
  return `${a}\u0000${b}`;
}

function triple(a: string, b: string, c: string): string {
  return `${a}\u0000${b}\u0000${c}`;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

/** The first `limit` elements; `Infinity` means all, anything not positive means none. */
function take<T>(list: T[], limit: number): T[] {
  if (limit === Infinity) return list;
  return Number.isFinite(limit) && limit > 0 ? list.slice(0, Math.floor(limit)) : [];
}

function bump(counts: Record<string, number>, key: string | null): void {
  if (key !== null) counts[key] = (counts[key] ?? 0) + 1;
}

function asciiLower(s: string): string {
  return s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
}

function pageLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return 50;
  return Math.min(1000, Math.max(1, Math.floor(limit)));
}


import type { AuditItem, RefusalRecord, StoredEvent } from '../../actors/Store.js';
import { decodeCursor, encodeCursor } from './cursor.js';

/**
 * What every store adapter shares to answer `Store.queryEvents` the same way: the order of the
 * audit trail, its cursors, and the checks on refusal records.
 */

/**
 * Where an audit item sorts: newest first by time; at the same millisecond accepted events
 * (rank 1) before refusals (rank 0); events by tenant position, refusals by id, both descending.
 */
export type AuditKey = { at: number; rank: 1; position: number } | { at: number; rank: 0; id: string };

/** The time an event is filed under: `meta.at`, or 0 when a stored event has none. */
export function eventTime(e: Pick<StoredEvent, 'meta'>): number {
  return Number.isFinite(e.meta.at) ? e.meta.at : 0;
}

/** The principal an event is filed under (`''` when a stored event has none). */
export function eventPrincipal(e: Pick<StoredEvent, 'meta'>): string {
  return typeof e.meta.principal === 'string' ? e.meta.principal : '';
}

/** The sort key of an item. */
export function auditKey(item: AuditItem): AuditKey {
  return item.outcome === 'accepted'
    ? { at: eventTime(item.event), rank: 1, position: item.event.position }
    : { at: item.refusal.at, rank: 0, id: item.refusal.id };
}

/** Negative when `a` comes before `b` in the audit trail (is newer). */
export function compareAuditKeys(a: AuditKey, b: AuditKey): number {
  if (a.at !== b.at) return b.at - a.at;
  if (a.rank !== b.rank) return b.rank - a.rank;
  if (a.rank === 1) return (b as typeof a).position - a.position;
  return compareCodePoints((b as typeof a).id, a.id);
}

/** An opaque cursor pointing just after `key`. */
export function encodeEventCursor(key: AuditKey): string {
  return encodeCursor(key.at, key.rank === 1 ? `a${key.position}` : `r${key.id}`);
}

/** Decodes a cursor of {@link encodeEventCursor}; throws an Error starting with `invalid cursor` otherwise. */
export function decodeEventCursor(cursor: string): AuditKey {
  const [at, tail] = decodeCursor(cursor);
  const accepted = /^a(\d{1,15})$/.exec(tail);
  if (accepted) return { at, rank: 1, position: Number(accepted[1]) };
  if (tail.length > 1 && tail.startsWith('r')) return { at, rank: 0, id: tail.slice(1) };
  throw new Error('invalid cursor: not an audit trail cursor');
}

/** Page size of an event query: 1..1000, default 50. */
export function eventPageLimit(limit: number | undefined): number {
  if (limit === undefined || !Number.isFinite(limit)) return 50;
  return Math.min(1000, Math.max(1, Math.floor(limit)));
}

/**
 * Throws a TypeError naming the first field of a record that is missing or of the wrong type;
 * adapters call it on every record before writing any.
 */
export function checkRefusal(r: RefusalRecord): void {
  const fail = (field: string, what: string): never => {
    throw new TypeError(`refusal record ${typeof r?.id === 'string' ? r.id : '?'}: ${field} must be ${what}`);
  };
  if (typeof r !== 'object' || r === null) fail('the record', 'an object');
  for (const field of ['id', 'tenant', 'principal', 'method', 'code', 'reason'] as const) {
    if (typeof r[field] !== 'string') fail(field, 'a string');
  }
  if (r.id.length === 0) fail('id', 'non-empty');
  if (!Number.isFinite(r.at)) fail('at', 'a finite number');
  if (!Number.isFinite(r.lastAt) || r.lastAt < r.at) fail('lastAt', 'a finite number >= at');
  if (!Number.isInteger(r.count) || r.count < 1) fail('count', 'an integer >= 1');
  for (const field of ['actorKind', 'actorId', 'correlationId'] as const) {
    if (r[field] !== null && typeof r[field] !== 'string') fail(field, 'a string or null');
  }
}

/**
 * Merges a record into the stored one with the same id (see `Store.appendRefusals`): counts add
 * up, `lastAt` is the later one, the actor stays only if both name the same one.
 */
export function mergeRefusal(stored: RefusalRecord, next: RefusalRecord): RefusalRecord {
  const same = stored.actorKind === next.actorKind && stored.actorId === next.actorId;
  return {
    ...stored,
    count: stored.count + next.count,
    lastAt: Math.max(stored.lastAt, next.lastAt),
    actorKind: same ? stored.actorKind : null,
    actorId: same ? stored.actorId : null,
  };
}

/**
 * Orders strings by code point, which is the byte order of their UTF-8 form and so the order
 * SQLite's BINARY collation gives; plain `<` compares UTF-16 units and differs above U+FFFF.
 */
export function compareCodePoints(a: string, b: string): number {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return lift(x) - lift(y);
  }
  return a.length - b.length;
}

/** Moves surrogates (code points above U+FFFF) after the rest of the BMP. */
function lift(unit: number): number {
  if (unit >= 0xe000) return unit - 0x800;
  if (unit >= 0xd800) return unit + 0x2000;
  return unit;
}

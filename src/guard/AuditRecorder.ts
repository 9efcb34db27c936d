import { createHash } from 'node:crypto';
import type { RefusalRecord, Store } from '../../actors/Store.js';
import { AuditedRefusals } from '../../protocol/audit.js';
import type { ErrorReason, ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type { Logger } from '../logger.js';

/** Options of {@link AuditRecorder}; durations in milliseconds. */
export interface AuditRecorderOptions {
  store: Store;
  /** The clock that stamps attempts and cuts windows (default `Date.now`). */
  now?: () => number;
  log?: Logger;
  /** Attempts of one principal, method and error reason within one window share a record (default 1000). */
  windowMs?: number;
  /** How soon a new record is written, and how often open windows are looked at (default 100). */
  flushMs?: number;
  /** Records held in memory at most; attempts that would need another are counted as dropped (default 10 000). */
  maxPending?: number;
}

/** A record being aggregated. */
interface Pending {
  key: string;
  record: RefusalRecord;
  /** The actor the first attempt named (`kind/id`, or `''`): later attempts naming another clear it. */
  target: string;
  windowEnd: number;
  /** Attempts not written yet. */
  unwritten: number;
  /** Whether a part of the record is in the store (later parts merge into it). */
  stored: boolean;
  failures: number;
}

/** Written parts are retried this many times before the attempts are given up. */
const MAX_FAILURES = 3;
const AUDITED = new Set<ErrorReason>(AuditedRefusals);
const KIND = /^[a-z][a-z0-9_-]{0,31}$/;
const ACTOR_ID = /^[^\u0000-\u001f/]{1,128}$/;

/**
 * Records refused calls (forbidden, denied by a rule, over a rate limit, quota or in-flight
 * limit) of authenticated principals in the tenant's audit trail, where `audit.query` lists them
 * next to the accepted commands.
 *
 * A flood must not turn into a flood of writes: attempts of one principal, method and error
 * reason within one `windowMs` window share one record (with a count), whose id is derived from
 * that key, so a record is written at most twice (when it appears, and with the rest of its
 * count when its window closes) and nodes sharing a store merge into the same record. Recording
 * never delays or fails the call: {@link AuditRecorder.refused} only updates a bounded map, and
 * writes happen later through `Store.appendRefusals`; when the store fails the attempts are
 * retried a few times, then dropped and logged.
 *
 * @example
 * ```ts
 * const audit = new AuditRecorder({ store });
 * audit.refused(principal, 'task.create', params, new ProtocolError('FORBIDDEN', 'no'), 'c-1');
 * await audit.flush();
 * ```
 */
export class AuditRecorder {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #log: Logger | undefined;
  readonly #windowMs: number;
  readonly #flushMs: number;
  readonly #maxPending: number;
  #pending = new Map<string, Pending>();
  #timer: NodeJS.Timeout | null = null;
  #writing: Promise<void> | null = null;
  #dropped = 0;
  #droppedUnlogged = 0;
  #written = 0;

  constructor(opts: AuditRecorderOptions) {
    this.#store = opts.store;
    this.#now = opts.now ?? Date.now;
    this.#log = opts.log;
    this.#windowMs = positive(opts.windowMs ?? 1000, 'windowMs');
    this.#flushMs = positive(opts.flushMs ?? 100, 'flushMs');
    this.#maxPending = positive(opts.maxPending ?? 10_000, 'maxPending');
  }

  /**
   * Notes a refused call. Only authenticated principals and the reasons in `AuditedRefusals`
   * are recorded; anything else is ignored. Never throws.
   */
  refused(principal: Principal | null, method: string, params: unknown, error: ProtocolError, correlationId?: string): void {
    try {
      if (!principal || !AUDITED.has(error.reason)) return;
      const now = this.#now();
      const windowStart = Math.floor(now / this.#windowMs) * this.#windowMs;
      const name = method.slice(0, 128);
      const key = [principal.tenantId, principal.principalId, name, error.reason, windowStart].join('\u0000');
      const target = targetOf(method, params);
      const targetKey = target ? `${target.kind}/${target.id}` : '';
      const p = this.#pending.get(key);
      if (p) {
        p.unwritten++;
        p.record.lastAt = Math.max(p.record.lastAt, now);
        if (targetKey !== p.target) p.record.actorKind = p.record.actorId = null;
      } else {
        if (this.#pending.size >= this.#maxPending) this.#forgetWritten(now);
        if (this.#pending.size >= this.#maxPending) {
          this.#dropped++;
          this.#droppedUnlogged++;
          this.#schedule();
          return;
        }
        this.#pending.set(key, {
          key,
          record: {
            id: createHash('sha256').update(key).digest('base64url').slice(0, 22),
            tenant: principal.tenantId,
            at: now,
            lastAt: now,
            principal: principal.principalId,
            method: name,
            code: error.reason,
            reason: error.message.slice(0, 1000),
            count: 1,
            actorKind: target?.kind ?? null,
            actorId: target?.id ?? null,
            correlationId: correlationId?.slice(0, 256) ?? null,
          },
          target: targetKey,
          windowEnd: windowStart + this.#windowMs,
          unwritten: 1,
          stored: false,
          failures: 0,
        });
      }
      this.#schedule();
    } catch (e) {
      this.#log?.warn({ err: e }, 'a refused call was not recorded in the audit trail');
    }
  }

  /** Writes every attempt noted so far, open windows included; resolves when they are stored (or given up). */
  async flush(): Promise<void> {
    while (this.#writing) await this.#writing;
    await this.#write(true);
  }

  /** Counters: records waiting in memory, attempts dropped (buffer full or store failing), records written. */
  stats(): { pending: number; dropped: number; written: number } {
    return { pending: this.#pending.size, dropped: this.#dropped, written: this.#written };
  }

  #schedule(): void {
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.#write(false).finally(() => {
        // Records fully written wait for the next pass to be forgotten; no need to wake up for them.
        for (const p of this.#pending.values()) {
          if (p.unwritten > 0) return this.#schedule();
        }
      });
    }, this.#flushMs);
    // Audit writes must not keep a stopping process alive.
    this.#timer.unref();
  }

  /**
   * Writes new records, and the rest of the count of records whose window closed (all of them
   * when `all`); one write at a time.
   */
  #write(all: boolean): Promise<void> {
    if (this.#writing) return this.#writing;
    if (this.#droppedUnlogged > 0) {
      this.#log?.warn({ dropped: this.#droppedUnlogged }, 'refused calls not recorded in the audit trail: too many records waiting');
      this.#droppedUnlogged = 0;
    }
    const now = this.#now();
    const batch: { p: Pending; n: number }[] = [];
    for (const p of this.#pending.values()) {
      const closed = now >= p.windowEnd;
      if (p.unwritten > 0 && (!p.stored || closed || all)) batch.push({ p, n: p.unwritten });
      else if (p.unwritten === 0 && closed) this.#pending.delete(p.key);
    }
    if (batch.length === 0) return Promise.resolve();
    const records = batch.map(({ p, n }) => ({ ...p.record, count: n }));
    for (const b of batch) b.p.unwritten -= b.n;
    this.#writing = this.#store
      .appendRefusals(records)
      .then(
        () => {
          this.#written += records.length;
          for (const { p } of batch) {
            p.stored = true;
            p.failures = 0;
            if (p.unwritten === 0 && this.#now() >= p.windowEnd) this.#pending.delete(p.key);
          }
        },
        (e: unknown) => this.#failed(batch, e),
      )
      .finally(() => {
        this.#writing = null;
      });
    return this.#writing;
  }

  /** Drops records whose window closed and whose count is all written. */
  #forgetWritten(now: number): void {
    for (const p of this.#pending.values()) {
      if (p.unwritten === 0 && p.stored && now >= p.windowEnd) this.#pending.delete(p.key);
    }
  }

  /** Puts a failed batch back for another try, or gives it up. */
  #failed(batch: { p: Pending; n: number }[], e: unknown): void {
    // A closed store will not come back; the server is shutting down.
    const closed = /closed/.test((e as Error)?.message ?? '');
    let lost = 0;
    for (const { p, n } of batch) {
      p.unwritten += n;
      p.failures++;
      if (closed || p.failures >= MAX_FAILURES) {
        lost += p.unwritten;
        this.#pending.delete(p.key);
      }
    }
    this.#dropped += lost;
    if (closed) this.#log?.debug({ err: e, lost }, 'audit records not written: the store is closed');
    else this.#log?.warn({ err: e, records: batch.length, lost }, 'audit records not written; will retry');
  }
}

/** The actor a call names, read from its raw params: `<noun>Id` for `<noun>.*` methods, with a few exceptions. */
function targetOf(method: string, params: unknown): { kind: string; id: string } | null {
  if (typeof params !== 'object' || params === null || Array.isArray(params)) return null;
  const p = params as Record<string, unknown>;
  const noun = method.slice(0, Math.max(0, method.indexOf('.')));
  let kind: unknown = noun;
  let id: unknown;
  if (noun === 'events') [kind, id] = [p.kind, p.actorId];
  else if (noun === 'policy') id = p.taskType;
  else if (method === 'agent.register') id = p.id;
  else if (Object.hasOwn(p, `${noun}Id`)) id = p[`${noun}Id`];
  if (typeof kind !== 'string' || !KIND.test(kind) || typeof id !== 'string' || !ACTOR_ID.test(id)) return null;
  return { kind, id };
}

function positive(n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new TypeError(`${name} must be a positive number, got ${String(n)}`);
  return n;
}

import type { SharedReservations } from './SharedReservations.js';
import { setImmediate as yieldToCommits } from 'node:timers/promises';
import type { ActorHost } from '../../actors/ActorHost.js';
import type { StoredEvent, ViewRecord } from '../../actors/Store.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import {
  EnforcedQuotaResources,
  QUOTA_REARM_RATIO,
  QUOTA_WARN_RATIO,
  QuotaResources,
  type QuotaExceededData,
  type QuotaLimit,
  type QuotaLimits,
  type QuotaResource,
  type QuotaUsage,
} from '../../protocol/quotas.js';
import { QUOTA_ACTOR_ID, type QuotaDoc } from '../kinds/quotaKind.js';
import type { Logger } from '../logger.js';

/** Options of {@link Quotas}. */
export interface QuotasOptions {
  host: ActorHost;
  log: Logger;
  /** The clock; tests may replace it. */
  now?: () => number;
  /** Server-wide limits for tenants that set none (`TROUPE_QUOTA_<RESOURCE>`); left out or null: unlimited. */
  defaults?: Partial<Record<QuotaResource, QuotaLimit>>;
  /**
   * Attempts at a consistent first count of a tenant's tasks while other task changes commit
   * (default 10). After them the count is taken as it is and taken again at the next use.
   */
  seedAttempts?: number;
  /** Set in a cluster: creates in flight on every node count against the limits. */
  shared?: SharedReservations;
}

/** What a create is about to use. Ids let the service tell its own commit from others'. */
export interface QuotaAsk {
  /** Tasks about to be created (visible or staged). */
  tasks?: string[];
  /** Tasks about to become unfinished (created live, or activated by this call). */
  activeTasks?: string[];
  /** Workflow executions about to be created. */
  executions?: string[];
  /** Refuse while the tenant's stored events are at their byte limit. */
  storage?: boolean;
}

/**
 * Use held for a create in flight. Call `release` when the call ends, successfully or not
 * (twice is harmless); pass the error of a failed call, so a write whose outcome is unknown makes
 * the service count again.
 */
export interface QuotaReservation {
  release(error?: unknown): void;
}

const NO_RESERVATION: QuotaReservation = { release() {} };

const DAY_MS = 86_400_000;
/** Statuses of unfinished tasks (`failed` counts only with a retry pending). */
const LIVE = new Set(['pending', 'assigned', 'accepted', 'in_progress', 'input_required']);
/** Task events that can change how many tasks exist, visible or staged. */
const COUNT_EVENTS = new Set(['task.create', 'task.delete', 'task.activate', 'task.cancel', 'task.subtaskSettled']);

const LABEL: Record<QuotaResource, string> = {
  tasks: 'tasks',
  active_tasks: 'unfinished tasks',
  workflow_executions_per_day: 'workflow executions started in 24 hours',
  stored_bytes: 'bytes of stored events',
  workspaces: 'workspaces',
  members_per_workspace: 'members per workspace',
};

const HINT: Record<QuotaResource, string> = {
  tasks: 'delete tasks that are no longer needed, or ask an admin to raise the limit with quota.set',
  active_tasks: 'finish or cancel unfinished tasks, or ask an admin to raise the limit with quota.set',
  workflow_executions_per_day: 'retry after data.retryAfterMs, when the oldest execution leaves the 24-hour window, or ask an admin to raise the limit with quota.set',
  stored_bytes: 'ask an admin to raise the limit with quota.set',
  workspaces: 'ask an admin to raise the limit with quota.set',
  members_per_workspace: 'ask an admin to raise the limit with quota.set',
};

/** True when a task read-model row is an unfinished task. */
function unfinished(view: ViewRecord | null | undefined): boolean {
  if (!view) return false;
  return LIVE.has(view.status) || (view.status === 'failed' && (view.doc as unknown as Task).retryAt !== null);
}

/** Approximate stored size of an event: the UTF-8 length of its JSON. */
function sizeOf(e: Pick<StoredEvent, 'type' | 'data' | 'meta'>): number {
  return Buffer.byteLength(e.type) + Buffer.byteLength(JSON.stringify(e.data)) + Buffer.byteLength(JSON.stringify(e.meta));
}

interface Buffered {
  event: StoredEvent;
  view: ViewRecord | null | undefined;
  tenantTopic: boolean;
}

/** Common state of a lazily seeded counter: seeded once, events arriving meanwhile buffered. */
interface Seeded {
  ready: boolean;
  /** Set when the count may be off; the next use counts again. */
  dirty: boolean;
  /**
   * After a count that could not be made consistent (a tenant that never stops changing), a
   * dirty count is used as it is until this `performance.now()` time, so not every call counts.
   */
  settleAt: number;
  seeding: Promise<void> | null;
  /** Events committed while seeding, handled when the seed is in. */
  buffer: Buffered[] | null;
}

/** Tasks that exist and unfinished tasks, kept from commits after a first count from the read model. */
interface TaskCounts extends Seeded {
  total: number;
  active: Set<string>;
  /** The seed reflects every event at or before `from` and none after `to`. */
  from: number;
  to: number;
}

/** Executions started in the last 24 hours, by id (ids make counting idempotent). */
interface ExecutionCounts extends Seeded {
  started: Map<string, number>;
  /** The earliest start in `started`, so forgetting old ones costs nothing until one is due. */
  oldest: number;
}

/** Bytes of the tenant's events on its feed up to and after position `through`. */
interface ByteCounts extends Seeded {
  bytes: number;
  through: number;
}

interface TenantQuota {
  tenant: string;
  doc: QuotaDoc | null;
  loading: Promise<void> | null;
  tasks: TaskCounts;
  executions: ExecutionCounts;
  bytes: ByteCounts;
  reserved: { tasks: Set<string>; active: Set<string>; executions: Set<string> };
  /** Warnings (or re-arms) sent and not committed yet. */
  signalling: Set<QuotaResource>;
}

/** True when a count can be used without counting again. */
function usable(c: Seeded): boolean {
  return c.ready && (!c.dirty || performance.now() < c.settleAt);
}

function seeded<T extends object>(extra: T): T & Seeded {
  return { ready: false, dirty: false, settleAt: 0, seeding: null, buffer: null, ...extra };
}

/**
 * Per-tenant quotas: limits from the tenant's quota actor over the server's defaults; use
 * counted in memory, seeded from the store on first use and kept current from every commit;
 * reservations for creates in flight; and the 80% warning.
 *
 * Use never drifts: a create reserves its ids before it writes, and the reservation turns into
 * counted use in the same synchronous step in which the commit listener counts the create, so a
 * create is counted exactly once and a failed one not at all. The check and the reservation run
 * without an `await` between them, so concurrent creates at a limit end exactly at it. All of
 * this is per node: a cluster would need the counts and reservations in a shared store.
 *
 * @example
 * ```ts
 * const quotas = new Quotas({ host, log, defaults: { active_tasks: 1000 } });
 * const hold = await quotas.reserve('acme', { tasks: [id], activeTasks: [id] });
 * try { await host.send(...); } catch (e) { hold.release(e); throw e; } finally { hold.release(); }
 * ```
 */
export class Quotas {
  #host: ActorHost;
  #log: Logger;
  #now: () => number;
  #defaults: Record<QuotaResource, QuotaLimit>;
  #attempts: number;
  #tenants = new Map<string, TenantQuota>();
  #shared: SharedReservations | undefined;

  constructor(opts: QuotasOptions) {
    this.#host = opts.host;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#attempts = opts.seedAttempts ?? 10;
    this.#shared = opts.shared;
    this.#defaults = Object.fromEntries(QuotaResources.map((r) => [r, opts.defaults?.[r] ?? null])) as Record<QuotaResource, QuotaLimit>;
    opts.host.onCommit((events, topics, view) => {
      for (let i = 0; i < events.length; i++) this.#committed(events[i]!, topics[i] ?? [], view);
    });
  }

  /** The tenant's limits: in force, set by the tenant, and the server's defaults. */
  async limits(tenant: string): Promise<QuotaLimits> {
    const t = this.#tenant(tenant);
    await this.#loadLimits(t);
    return this.#limitsOf(t);
  }

  /** Limits, use, reservations and what remains, for the given resources (default: all). */
  async status(tenant: string, resources: readonly QuotaResource[] = QuotaResources): Promise<QuotaUsage[]> {
    const t = this.#tenant(tenant);
    await this.#loadLimits(t);
    await this.#track(t, resources);
    return resources.map((r) => {
      const limit = this.#limit(t, r);
      const used = this.#used(t, r);
      const reserved = this.#reserved(t, r);
      const counted = used !== null && limit !== null;
      return {
        resource: r,
        limit,
        used,
        reserved,
        remaining: counted ? Math.max(0, limit - used - reserved) : null,
        percent: counted ? (limit === 0 ? (used > 0 ? 100 : 0) : Math.floor((used / limit) * 100)) : null,
        enforced: EnforcedQuotaResources.includes(r),
        warned: t.doc?.warned[r] !== undefined,
      };
    });
  }

  /**
   * Call after the tenant's limits changed: counts the resources that are limited now and sends
   * warnings for those already at 80% or more of their new limit.
   */
  async limitsChanged(tenant: string): Promise<void> {
    const t = this.#tenant(tenant);
    await this.#loadLimits(t);
    const limited = EnforcedQuotaResources.filter((r) => this.#limit(t, r) !== null);
    await this.#track(t, limited);
    for (const r of limited) this.#evaluate(t, r);
  }

  /**
   * Checks a create against the tenant's limits and holds what it will use until `release`.
   * Throws QUOTA_EXCEEDED (data: resource, limit, used, requested) if it does not fit. Free when
   * none of the resources it touches is limited.
   */
  async reserve(tenant: string, ask: QuotaAsk): Promise<QuotaReservation> {
    const t = this.#tenant(tenant);
    await this.#loadLimits(t);
    const needs: [QuotaResource, number][] = [];
    if (ask.tasks?.length) needs.push(['tasks', ask.tasks.length]);
    if (ask.activeTasks?.length) needs.push(['active_tasks', ask.activeTasks.length]);
    if (ask.executions?.length) needs.push(['workflow_executions_per_day', ask.executions.length]);
    if (ask.storage) needs.push(['stored_bytes', 0]);
    for (let round = 0; ; round++) {
      // Limits may change while we wait: decide only when everything limited is counted (a
      // count marked for a new seed is seeded once), then check and reserve with no await in
      // between.
      const limited = needs.filter(([r]) => this.#limit(t, r) !== null);
      if (limited.length === 0) return NO_RESERVATION;
      const pending = limited.map(([r]) => r).filter((r) => (round === 0 ? !this.#current(t, r) : !this.#seeded(t, r)));
      if (pending.length > 0) {
        await this.#track(t, pending);
        continue;
      }
      for (const [r, n] of limited) {
        const limit = this.#limit(t, r)!;
        const held = this.#used(t, r)! + this.#reserved(t, r);
        if (r === 'stored_bytes' ? held >= limit : held + n > limit) throw this.#exceeded(t, r, limit, held, n);
      }
      const hold = this.#hold(t, ask, new Set(limited.map(([r]) => r)));
      if (this.#shared) await this.#holdShared(t, limited, ask, hold);
      return hold;
    }
  }

  /** Holds the reservation in the cluster too; refuses (and releases everything) when other nodes' holds leave no room. */
  async #holdShared(t: TenantQuota, limited: [QuotaResource, number][], ask: QuotaAsk, hold: QuotaReservation): Promise<void> {
    const shared = this.#shared!;
    const idsOf: Partial<Record<QuotaResource, string[]>> = { tasks: ask.tasks, active_tasks: ask.activeTasks, workflow_executions_per_day: ask.executions };
    const taken: [QuotaResource, string[]][] = [];
    const releaseAll = () => {
      for (const [r, ids] of taken) shared.release(t.tenant, r, ids);
    };
    for (const [r, n] of limited) {
      const ids = idsOf[r];
      if (!ids?.length) continue;
      const limit = this.#limit(t, r)!;
      const out = await shared.reserve(t.tenant, r, ids, this.#used(t, r) ?? 0, limit);
      if (!out.ok) {
        releaseAll();
        hold.release();
        throw this.#exceeded(t, r, limit, out.held, n);
      }
      taken.push([r, ids]);
    }
    const release = hold.release;
    hold.release = (error?: unknown) => {
      releaseAll();
      release(error);
    };
  }

  #hold(t: TenantQuota, ask: QuotaAsk, limited: Set<QuotaResource>): QuotaReservation {
    const held: [Set<string>, string][] = [];
    const add = (set: Set<string>, ids: string[] | undefined) => {
      for (const id of ids ?? []) {
        // Only ids this reservation added are its to release.
        if (set.has(id)) continue;
        set.add(id);
        held.push([set, id]);
      }
    };
    if (limited.has('tasks')) add(t.reserved.tasks, ask.tasks);
    if (limited.has('active_tasks')) add(t.reserved.active, ask.activeTasks);
    if (limited.has('workflow_executions_per_day')) add(t.reserved.executions, ask.executions);
    let released = false;
    return {
      release: (error?: unknown) => {
        if (released) return;
        released = true;
        for (const [set, id] of held) set.delete(id);
        // The store may have written it without telling: count again rather than guess.
        if (isProtocolError(error, 'UNAVAILABLE') && error.data.outcome === 'unknown') {
          t.tasks.dirty = true;
          t.executions.dirty = true;
          t.bytes.dirty = true;
        }
      },
    };
  }

  #exceeded(t: TenantQuota, r: QuotaResource, limit: number, held: number, requested: number): ProtocolError {
    const reserved = this.#reserved(t, r);
    const data: QuotaExceededData = { resource: r, limit, used: held, requested };
    if (r === 'workflow_executions_per_day') {
      const oldest = t.executions.oldest;
      if (Number.isFinite(oldest)) data.retryAfterMs = Math.max(0, oldest + DAY_MS - this.#now());
    }
    const inFlight = reserved > 0 ? ` (${reserved} of them still being created)` : '';
    const needs = requested > 1 ? ` and this call needs ${requested} more` : '';
    return new ProtocolError(
      'QUOTA_EXCEEDED',
      `Quota exceeded: the tenant may have at most ${limit} ${LABEL[r]}, has ${held}${inFlight}${needs}; ${HINT[r]}.`,
      data as unknown as Record<string, unknown>,
    );
  }

  #tenant(tenant: string): TenantQuota {
    let t = this.#tenants.get(tenant);
    if (!t) {
      t = {
        tenant,
        doc: null,
        loading: null,
        tasks: seeded({ total: 0, active: new Set<string>(), from: 0, to: 0 }),
        executions: seeded({ started: new Map<string, number>(), oldest: Number.POSITIVE_INFINITY }),
        bytes: seeded({ bytes: 0, through: 0 }),
        reserved: { tasks: new Set(), active: new Set(), executions: new Set() },
        signalling: new Set(),
      };
      this.#tenants.set(tenant, t);
    }
    return t;
  }

  async #loadLimits(t: TenantQuota): Promise<void> {
    t.loading ??= this.#host.store.getView(t.tenant, 'quota', QUOTA_ACTOR_ID).then(
      (v) => {
        // A commit seen meanwhile may be newer than what was read.
        if (v && v.version > (t.doc?.version ?? 0)) t.doc = v.doc as unknown as QuotaDoc;
      },
      (e: unknown) => {
        t.loading = null;
        throw e;
      },
    );
    await t.loading;
  }

  #limitsOf(t: TenantQuota): QuotaLimits {
    const doc = t.doc;
    return {
      limits: Object.fromEntries(QuotaResources.map((r) => [r, this.#limit(t, r)])) as Record<QuotaResource, QuotaLimit>,
      overrides: { ...doc?.overrides },
      defaults: { ...this.#defaults },
      enforced: [...EnforcedQuotaResources],
      version: doc?.version ?? 0,
      updatedBy: doc?.updatedBy || null,
      updatedAt: doc?.updatedAt || null,
    };
  }

  #limit(t: TenantQuota, r: QuotaResource): QuotaLimit {
    const o = t.doc?.overrides;
    return o && r in o ? (o[r] ?? null) : this.#defaults[r];
  }

  /** The counter behind a resource, if it has one. */
  #counter(t: TenantQuota, r: QuotaResource): Seeded | null {
    switch (r) {
      case 'tasks':
      case 'active_tasks':
        return t.tasks;
      case 'workflow_executions_per_day':
        return t.executions;
      case 'stored_bytes':
        return t.bytes;
      default:
        return null;
    }
  }

  /** True when the resource's count can be used as it is. */
  #current(t: TenantQuota, r: QuotaResource): boolean {
    const c = this.#counter(t, r);
    return c === null || usable(c);
  }

  /** True when the resource's count was seeded at least once (or it has none). */
  #seeded(t: TenantQuota, r: QuotaResource): boolean {
    const c = this.#counter(t, r);
    return c === null || c.ready;
  }

  /** Committed use; null for resources not counted. */
  #used(t: TenantQuota, r: QuotaResource): number | null {
    switch (r) {
      case 'tasks':
        return t.tasks.ready ? t.tasks.total : null;
      case 'active_tasks':
        return t.tasks.ready ? t.tasks.active.size : null;
      case 'workflow_executions_per_day':
        return t.executions.ready ? this.#recentExecutions(t) : null;
      case 'stored_bytes':
        return t.bytes.ready ? t.bytes.bytes : null;
      default:
        return null;
    }
  }

  #reserved(t: TenantQuota, r: QuotaResource): number {
    if (r === 'tasks') return t.reserved.tasks.size;
    if (r === 'active_tasks') return t.reserved.active.size;
    if (r === 'workflow_executions_per_day') return t.reserved.executions.size;
    return 0;
  }

  /** Executions started in the last 24 hours; forgets older ones. */
  #recentExecutions(t: TenantQuota): number {
    const c = t.executions;
    const since = this.#now() - DAY_MS;
    if (c.oldest <= since) {
      c.oldest = Number.POSITIVE_INFINITY;
      for (const [id, at] of c.started) {
        if (at <= since) c.started.delete(id);
        else c.oldest = Math.min(c.oldest, at);
      }
    }
    return c.started.size;
  }

  #started(c: Pick<ExecutionCounts, 'started' | 'oldest'>, id: string, at: number): void {
    c.started.set(id, at);
    c.oldest = Math.min(c.oldest, at);
  }

  /** Seeds (or seeds again) the counters behind the resources. */
  async #track(t: TenantQuota, resources: readonly QuotaResource[]): Promise<void> {
    const jobs: Promise<void>[] = [];
    const want = new Set(resources.map((r) => this.#counter(t, r)).filter((c): c is Seeded => c !== null));
    for (const c of want) {
      if (usable(c)) continue;
      c.seeding ??= (c === t.tasks ? this.#seedTasks(t) : c === t.executions ? this.#seedExecutions(t) : this.#seedBytes(t))
        .catch((e: unknown) => {
          // The store failed mid-count: stop buffering, and count again at the next use.
          c.buffer = null;
          c.dirty = true;
          throw e;
        })
        .finally(() => {
          c.seeding = null;
        });
      jobs.push(c.seeding);
    }
    await Promise.all(jobs);
  }

  /**
   * Counts tasks from the read model: rows (visible tasks) plus subtasks still staged under live
   * parents, and the unfinished ones by id. Task changes committed while reading may or may not
   * be in what was read; a read between two equal-enough head positions (no change that moves a
   * task in or out of the count between them) is exact, so it is tried until one is.
   */
  async #seedTasks(t: TenantQuota): Promise<void> {
    const c = t.tasks;
    const store = this.#host.store;
    c.dirty = false;
    for (let attempt = 1; ; attempt++) {
      c.buffer = [];
      const from = await store.headPosition(t.tenant);
      const stats = await store.statsViews(t.tenant, 'task', { archived: 'any' });
      const seen = new Map<string, { version: number; active: boolean }>();
      let staged = 0;
      const launched: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await store.queryViews(t.tenant, 'task', { status: [...LIVE, 'failed'], limit: 1000, cursor });
        for (const v of page.items) {
          seen.set(v.id, { version: v.version, active: unfinished(v) });
          const slots = LIVE.has(v.status) ? (v.doc as unknown as Task).distribution?.subtasks : undefined;
          for (const s of slots ?? []) {
            if (s.status === 'waiting') staged++;
            // Started by the parent, but the activation may still be on its way to the subtask.
            else if (s.status === 'active') launched.push(s.id);
          }
        }
        cursor = page.nextCursor ?? undefined;
      } while (cursor);
      for (let i = 0; i < launched.length; i += 500) {
        const ids = launched.slice(i, i + 500);
        staged += ids.length - (await store.getViews(t.tenant, 'task', ids)).length;
      }
      const to = await store.headPosition(t.tenant);
      // Commits at or before `to` whose listeners have not run yet get to run now.
      await yieldToCommits();
      const buffer = c.buffer;
      const unsure = buffer.some((b) => b.event.position > from && b.event.position <= to && this.#movesCount(b));
      if (unsure && attempt < this.#attempts) continue;
      if (unsure) {
        this.#log.warn({ tenant: t.tenant, attempts: attempt }, 'quota: tasks kept changing while counted; the count is taken again in a second');
        c.dirty = true;
        c.settleAt = performance.now() + 1000;
      }
      c.buffer = null;
      c.total = stats.total + staged;
      c.active = new Set([...seen].filter(([, s]) => s.active).map(([id]) => id));
      c.from = from;
      c.to = to;
      for (const b of buffer) {
        const e = b.event;
        if (e.position <= from) continue;
        if (e.position > to) {
          this.#countTask(c, b);
          continue;
        }
        // Committed while reading: newer than the row read, if any, decides.
        const s = seen.get(e.actorId);
        if (!s || e.version > s.version) {
          if (unfinished(b.view)) c.active.add(e.actorId);
          else c.active.delete(e.actorId);
        }
      }
      c.ready = true;
      return;
    }
  }

  /** True if a task event can move a task into or out of the total as the seed reads it. */
  #movesCount(b: Buffered): boolean {
    if (b.event.kind !== 'task') return false;
    return COUNT_EVENTS.has(b.event.type) || !b.view || (b.view.doc as unknown as Task).distribution !== null;
  }

  /** Applies a task commit newer than the seed. */
  #countTask(c: TaskCounts, b: Buffered): void {
    const e = b.event;
    if (e.type === 'task.create') c.total++;
    else if (e.type === 'task.delete') c.total--;
    if (unfinished(b.view)) c.active.add(e.actorId);
    else c.active.delete(e.actorId);
  }

  async #seedExecutions(t: TenantQuota): Promise<void> {
    const c = t.executions;
    const store = this.#host.store;
    c.dirty = false;
    c.buffer = [];
    // Built aside: the counts in use stay as they are until the new ones are complete.
    const next: Pick<ExecutionCounts, 'started' | 'oldest'> = { started: new Map(), oldest: Number.POSITIVE_INFINITY };
    let cursor: string | undefined;
    do {
      const page = await store.queryViews(t.tenant, 'execution', { createdAfter: this.#now() - DAY_MS - 1, limit: 1000, cursor });
      for (const v of page.items) this.#started(next, v.id, v.createdAt);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    // Keyed by id, so an execution both read and buffered counts once.
    for (const b of c.buffer) if (b.event.kind === 'execution' && b.event.type === 'execution.start') this.#started(next, b.event.actorId, b.event.meta.at);
    c.buffer = null;
    c.started = next.started;
    c.oldest = next.oldest;
    c.ready = true;
  }

  /** Sums the tenant's feed (the `tenant` topic) once; later events are added as they commit. */
  async #seedBytes(t: TenantQuota): Promise<void> {
    const c = t.bytes;
    const store = this.#host.store;
    c.dirty = false;
    c.buffer = [];
    let bytes = 0;
    let through = 0;
    for (;;) {
      const page = await store.readTopic(t.tenant, 'tenant', through, 1000);
      for (const e of page) bytes += sizeOf(e);
      if (page.length > 0) through = page[page.length - 1]!.position;
      if (page.length < 1000) break;
    }
    for (const b of c.buffer) if (b.tenantTopic && b.event.position > through) bytes += sizeOf(b.event);
    c.buffer = null;
    c.bytes = bytes;
    c.through = through;
    c.ready = true;
  }

  /** The commit listener: converts reservations into use, keeps the counts, warns. */
  #committed(e: StoredEvent, topics: string[], view: ViewRecord | null | undefined): void {
    let t = this.#tenants.get(e.tenant);
    const changed: QuotaResource[] = [];
    if (e.kind === 'quota') {
      t ??= this.#tenant(e.tenant);
      if (view && view.version > (t.doc?.version ?? 0)) t.doc = view.doc as unknown as QuotaDoc;
      // A limit may have changed: every counted resource is looked at again.
      changed.push(...EnforcedQuotaResources.filter((r) => this.#current(t!, r)));
    }
    if (!t) return;
    const b: Buffered = { event: e, view, tenantTopic: topics.includes('tenant') };

    if (e.kind === 'task') {
      if (e.type === 'task.create') t.reserved.tasks.delete(e.actorId);
      if (unfinished(view)) t.reserved.active.delete(e.actorId);
      const c = t.tasks;
      if (c.buffer) c.buffer.push(b);
      else if (c.ready) {
        if (e.position <= c.from) {
          // Already in the seed.
        } else if (e.position <= c.to) {
          // Committed while the seed was read, but heard of only now: it may or may not be in it.
          c.dirty = true;
        } else {
          this.#countTask(c, b);
          changed.push('tasks', 'active_tasks');
        }
      }
    } else if (e.kind === 'execution' && e.type === 'execution.start') {
      t.reserved.executions.delete(e.actorId);
      const c = t.executions;
      if (c.buffer) c.buffer.push(b);
      else if (c.ready) {
        this.#started(c, e.actorId, e.meta.at);
        changed.push('workflow_executions_per_day');
      }
    }

    if (b.tenantTopic) {
      const c = t.bytes;
      if (c.buffer) c.buffer.push(b);
      else if (c.ready && e.position > c.through) {
        c.bytes += sizeOf(e);
        changed.push('stored_bytes');
      }
    }
    for (const r of new Set(changed)) this.#evaluate(t, r);
  }

  /**
   * Sends the 80% warning when use is at or above 80% of the limit and no warning is standing,
   * and re-arms it once use is below 75%. The quota actor accepts one warning per resource until
   * it is re-armed, so a race cannot warn twice.
   */
  #evaluate(t: TenantQuota, r: QuotaResource): void {
    if (t.signalling.has(r)) return;
    const limit = this.#limit(t, r);
    const used = this.#used(t, r);
    if (limit === null || used === null) return;
    const warned = t.doc?.warned[r] !== undefined;
    let event: Record<string, unknown> & { type: string };
    if (!warned && used > 0 && used >= limit * QUOTA_WARN_RATIO) {
      event = { type: 'quota.warning', resource: r, limit, used, percent: limit === 0 ? 100 : Math.floor((used / limit) * 100) };
    } else if (warned && used < limit * QUOTA_REARM_RATIO) {
      event = { type: 'quota.rearmed', resource: r, limit, used };
    } else {
      return;
    }
    t.signalling.add(r);
    this.#host
      .send({ tenant: t.tenant, kind: 'quota', id: QUOTA_ACTOR_ID }, event, { principal: 'system' })
      .then(
        () => {
          t.signalling.delete(r);
          // Use may have moved while the event was written.
          this.#evaluate(t, r);
        },
        (err: unknown) => {
          t.signalling.delete(r);
          if (!isProtocolError(err, 'ILLEGAL_TRANSITION')) this.#log.warn({ err, tenant: t.tenant, resource: r }, `quota: ${event.type} not recorded`);
        },
      );
  }
}

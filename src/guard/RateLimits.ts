import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { MethodName } from '../../protocol/methods.js';
import {
  RateLimitClasses,
  RateLimitScopes,
  type EffectiveRateLimit,
  type RateLimit,
  type RateLimitBudget,
  type RateLimitClass,
  type RateLimitOverrides,
  type RateLimitScope,
  type RateLimitSettings,
  type RateLimitStatus,
  type RateLimitTable,
} from '../../protocol/ratelimits.js';
import { RATE_LIMIT_ACTOR_ID, type RateLimitDoc } from '../kinds/rateLimitKind.js';
import type { Logger } from '../logger.js';
import type { AuthedContext, CallGuard } from '../server/App.js';
import { MemoryRateLimitBackend, RateLimiterRes, RedisRateLimitBackend, type Limiter, type RateLimitBackend } from './ratelimitBackends.js';
import { METHOD_CLASSES, callCost, methodsByClass } from './ratelimitClasses.js';

/** Budgets by class and scope. */
export type RateLimitDefaults = Record<RateLimitClass, Record<RateLimitScope, RateLimit>>;

function perSecond(tenant: number, principal: number, connection: number): Record<RateLimitScope, RateLimit> {
  return {
    tenant: { points: tenant, durationSeconds: 1 },
    principal: { points: principal, durationSeconds: 1 },
    connection: { points: connection, durationSeconds: 1 },
  };
}

/**
 * The built-in budgets, per second. They stop runaway loops without touching honest load: a
 * 2-core node serves about 10k calls/s in all (`npm run bench`: 100 agents of one tenant, ~2k
 * `task.create`/s from a single agent), so a tenant's defaults sit at 2-5x what one node can
 * serve, and one principal's at about what one agent can drive. Tenants tighten them with
 * `ratelimit.set`.
 */
export const DEFAULT_RATE_LIMITS: Readonly<RateLimitDefaults> = Object.freeze({
  'task:create': perSecond(20_000, 5_000, 5_000),
  'task:write': perSecond(50_000, 10_000, 10_000),
  'workflow:execute': perSecond(5_000, 1_000, 1_000),
  'workflow:write': perSecond(10_000, 2_000, 2_000),
  'rule:write': perSecond(1_000, 200, 200),
  'agent:write': perSecond(20_000, 2_000, 2_000),
  subscribe: perSecond(10_000, 1_000, 1_000),
  read: perSecond(50_000, 10_000, 10_000),
  write: perSecond(20_000, 5_000, 5_000),
  'limits:write': perSecond(100, 20, 20),
});

/** Options of {@link RateLimits}; durations in milliseconds. */
export interface RateLimitOptions {
  /** Budgets that replace the built-in {@link DEFAULT_RATE_LIMITS}, by class and scope. */
  defaults?: Partial<Record<RateLimitClass, Partial<Record<RateLimitScope, RateLimit>>>>;
  /** Count in this Redis, shared by every node that uses it; unset: in this process. */
  redisUrl?: string;
  /** A Redis command not answered within this long falls back to memory (default 250). */
  redisTimeoutMs?: number;
  /** After a Redis failure, calls count in memory for this long before Redis is tried again (default 1 000). */
  redisRetryAfterMs?: number;
  /**
   * A tenant's overrides are read again after this long, so changes made on another node apply
   * (default 5 000 with Redis; without Redis there is no other node, and this node's own changes
   * apply at once).
   */
  overridesTtlMs?: number;
  /** Tenants whose overrides are kept in memory; the least recently loaded go first (default 10 000). */
  maxTenants?: number;
}

/** A budget in effect and its counters. */
interface Budget {
  limit: EffectiveRateLimit;
  limiter: Limiter;
}

type Table = Record<RateLimitClass, Record<RateLimitScope, Budget>>;

interface TableEntry {
  table: Table | null;
  pending: Promise<Table> | null;
  expiresAt: number;
}

/** Narrowest first: a call refused for its connection or principal uses none of the tenant's points. */
const CHECK_ORDER = ['connection', 'principal', 'tenant'] as const satisfies readonly RateLimitScope[];

function keyOf(scope: RateLimitScope, ctx: AuthedContext): string {
  const p = ctx.principal;
  if (scope === 'connection') return ctx.conn.id;
  if (scope === 'principal') return `${p.tenantId}/${p.principalId}`;
  return p.tenantId;
}

function whose(scope: RateLimitScope, ctx: AuthedContext): string {
  if (scope === 'connection') return 'this connection';
  if (scope === 'principal') return `principal ${ctx.principal.principalId}`;
  return `tenant ${ctx.principal.tenantId}`;
}

/**
 * Rate limits per tenant, per principal and per connection, per method class (see
 * `protocol/ratelimits.ts`), as a {@link CallGuard}: `beforeCall` takes the call's points from
 * the connection's, the principal's and the tenant's budget of its class, narrowest first, and
 * refuses the call with `RATE_LIMITED` (nothing of it happens) when one has too few left; every
 * point the refused call took is given back, so a principal that floods spends only its own
 * budget, never its tenant's.
 *
 * Budgets are fixed windows counted by `rate-limiter-flexible`: in memory on a single node, in
 * Redis when `redisUrl` is set (shared by every node; per-node memory while Redis is unreachable,
 * see {@link RedisRateLimitBackend}). Connection budgets are always counted in memory: a
 * connection lives on one node, and this saves a Redis round trip per call. A tenant's overrides
 * live in its `ratelimit` actor (id `tenant`); they are cached, and dropped when this node
 * commits a change to them.
 *
 * @example
 * ```ts
 * const limits = new RateLimits({ store, host, log });
 * server.use(limits);
 * ```
 */
export class RateLimits implements CallGuard {
  readonly #store: Store;
  readonly #log: Logger;
  readonly #backend: RateLimitBackend;
  /** Connection budgets: a connection lives on one node, so they never need Redis. */
  readonly #local = new MemoryRateLimitBackend();
  readonly #defaults: RateLimitDefaults;
  readonly #ttlMs: number;
  readonly #maxTenants: number;
  /** Counters by budget id; a tenant override equal to a default shares its counters. */
  readonly #limiters = new Map<string, Limiter>();
  readonly #defaultTable: Table;
  /** Tenants' tables; Map order is load order (oldest first). */
  readonly #tables = new Map<string, TableEntry>();

  constructor(opts: RateLimitOptions & { store: Store; host: ActorHost; log: Logger }) {
    this.#store = opts.store;
    this.#log = opts.log;
    this.#backend = opts.redisUrl
      ? new RedisRateLimitBackend({ url: opts.redisUrl, log: opts.log, timeoutMs: opts.redisTimeoutMs, retryAfterMs: opts.redisRetryAfterMs })
      : new MemoryRateLimitBackend();
    this.#ttlMs = opts.overridesTtlMs ?? (opts.redisUrl ? 5_000 : Infinity);
    this.#maxTenants = opts.maxTenants ?? 10_000;
    this.#defaults = Object.fromEntries(
      RateLimitClasses.map((c) => [c, { ...DEFAULT_RATE_LIMITS[c], ...opts.defaults?.[c] }]),
    ) as RateLimitDefaults;
    this.#defaultTable = this.#table({});
    opts.host.onCommit((events) => {
      for (const e of events) if (e.kind === 'ratelimit') this.#tables.delete(e.tenant);
    });
  }

  /** Where budgets are counted now. */
  get backend(): RateLimitStatus['backend'] {
    return this.#backend.state;
  }

  /** Takes the call's points, or refuses it with RATE_LIMITED. */
  beforeCall(ctx: AuthedContext, method: MethodName, params: Record<string, unknown>): Promise<void> | void {
    const cls = METHOD_CLASSES[method];
    if (!cls) return;
    const table = this.#tableOf(ctx.principal.tenantId);
    const cost = callCost(method, params);
    if (table instanceof Promise) return table.then((t) => this.#take(t[cls], cls, ctx, cost, method));
    return this.#take(table[cls], cls, ctx, cost, method);
  }

  /** The caller's budgets by class (or one class) and scope; this call's own point included. */
  async status(ctx: AuthedContext, only?: RateLimitClass): Promise<RateLimitStatus> {
    const table = await this.#tableOf(ctx.principal.tenantId);
    const classes: RateLimitStatus['classes'] = {};
    await Promise.all(
      (only ? [only] : RateLimitClasses).map(async (cls) => {
        const row = {} as Record<RateLimitScope, RateLimitBudget>;
        await Promise.all(
          RateLimitScopes.map(async (scope) => {
            const { limit, limiter } = table[cls][scope];
            const res = await limiter.get(keyOf(scope, ctx));
            const open = res !== null && res.msBeforeNext > 0;
            const used = open ? res.consumedPoints : 0;
            row[scope] = {
              points: limit.points,
              durationSeconds: limit.durationSeconds,
              used,
              remaining: Math.max(limit.points - used, 0),
              resetMs: open ? res.msBeforeNext : 0,
              source: limit.source,
            };
          }),
        );
        classes[cls] = row;
      }),
    );
    return { backend: this.#backend.state, classes };
  }

  /** A tenant's budgets and overrides, read from the store (not the cache). */
  async settings(tenant: string): Promise<RateLimitSettings> {
    const v = await this.#store.getView(tenant, 'ratelimit', RATE_LIMIT_ACTOR_ID);
    return this.settingsOf(v ? (v.doc as unknown as RateLimitDoc) : null);
  }

  /** The wire form of a tenant's overrides (null: never set). */
  settingsOf(doc: RateLimitDoc | null): RateLimitSettings {
    const overrides = doc?.overrides ?? {};
    const table = this.#table(overrides);
    const limits = Object.fromEntries(
      RateLimitClasses.map((c) => [c, Object.fromEntries(RateLimitScopes.map((s) => [s, table[c][s].limit]))]),
    ) as RateLimitTable;
    return {
      limits,
      overrides,
      methods: methodsByClass(),
      version: doc?.version ?? 0,
      updatedBy: doc?.updatedBy || null,
      updatedAt: doc?.updatedAt || null,
    };
  }

  /** Drops cached overrides of a tenant (or of all), for changes another node committed. */
  invalidate(tenant?: string): void {
    if (tenant === undefined) this.#tables.clear();
    else this.#tables.delete(tenant);
  }

  /** Closes the Redis connection, if any; safe to call twice. */
  close(): Promise<void> {
    return this.#backend.close();
  }

  /**
   * Takes `cost` points at every scope, narrowest first. When a scope refuses, every point the
   * call took is given back, the refusing scope's included, so budgets count served calls only.
   */
  async #take(row: Record<RateLimitScope, Budget>, cls: RateLimitClass, ctx: AuthedContext, cost: number, method: MethodName): Promise<void> {
    let taken = 0;
    try {
      for (; taken < CHECK_ORDER.length; taken++) {
        const scope = CHECK_ORDER[taken]!;
        const budget = row[scope];
        if (cost > budget.limit.points) throw this.#tooBig(budget.limit, cls, scope, ctx, cost, method);
        try {
          await budget.limiter.consume(keyOf(scope, ctx), cost);
        } catch (e) {
          if (!(e instanceof RateLimiterRes)) throw e;
          // The counter took the refused points too, unless the refusal came from the local
          // block of a key already over its limit (Redis), which counts nothing.
          if (e.consumedPoints > 0) taken++;
          throw this.#limited(budget.limit, cls, scope, ctx, e.msBeforeNext, method);
        }
      }
    } catch (e) {
      for (let i = 0; i < taken; i++) {
        const scope = CHECK_ORDER[i]!;
        void row[scope].limiter.reward(keyOf(scope, ctx), cost).catch(() => {});
      }
      throw e;
    }
  }

  #limited(limit: EffectiveRateLimit, cls: RateLimitClass, scope: RateLimitScope, ctx: AuthedContext, msBeforeNext: number, method: MethodName): ProtocolError {
    const retryAfterMs = Math.max(1, Math.ceil(msBeforeNext));
    const by = limit.source === 'tenant' ? ' (set by the tenant)' : '';
    return new ProtocolError(
      'RATE_LIMITED',
      `Too many ${cls} calls for ${whose(scope, ctx)}: the limit is ${limit.points} per ${limit.durationSeconds} s${by}. Retry after ${retryAfterMs} ms, or slow down.`,
      { retryAfterMs, class: cls, scope, limit: limit.points, durationSeconds: limit.durationSeconds, method },
    );
  }

  #tooBig(limit: EffectiveRateLimit, cls: RateLimitClass, scope: RateLimitScope, ctx: AuthedContext, cost: number, method: MethodName): ProtocolError {
    return new ProtocolError(
      'RATE_LIMITED',
      `This ${method} call costs ${cost} points of ${cls}, more than the whole budget of ${whose(scope, ctx)} (${limit.points} per ${limit.durationSeconds} s); split it into smaller calls.`,
      { class: cls, scope, limit: limit.points, durationSeconds: limit.durationSeconds, cost, method, retryable: false },
    );
  }

  /** The tenant's table: at once when cached, else once its overrides are loaded. */
  #tableOf(tenant: string): Table | Promise<Table> {
    const e = this.#tables.get(tenant);
    if (e && (this.#ttlMs === Infinity || e.expiresAt > Date.now())) return e.table ?? e.pending!;
    return this.#load(tenant);
  }

  #load(tenant: string): Promise<Table> {
    const entry: TableEntry = { table: null, pending: null, expiresAt: Date.now() + this.#ttlMs };
    entry.pending = this.#store.getView(tenant, 'ratelimit', RATE_LIMIT_ACTOR_ID).then(
      (v) => {
        const doc = v ? (v.doc as unknown as RateLimitDoc) : null;
        entry.table = doc ? this.#table(doc.overrides) : this.#defaultTable;
        entry.pending = null;
        return entry.table;
      },
      (err: unknown) => {
        // Limits must not be what fails: use the defaults and try again on the next call.
        if (this.#tables.get(tenant) === entry) this.#tables.delete(tenant);
        this.#log.warn({ err, tenant }, 'rate limit overrides could not be read; using the defaults');
        return this.#defaultTable;
      },
    );
    this.#tables.set(tenant, entry);
    if (this.#tables.size > this.#maxTenants) this.#tables.delete(this.#tables.keys().next().value!);
    return entry.pending;
  }

  #table(overrides: RateLimitOverrides): Table {
    const table = {} as Table;
    for (const cls of RateLimitClasses) {
      const row = {} as Record<RateLimitScope, Budget>;
      for (const scope of RateLimitScopes) {
        const own = cls === 'limits:write' ? undefined : overrides[cls]?.[scope];
        const base = own ?? this.#defaults[cls][scope];
        row[scope] = {
          limit: { points: base.points, durationSeconds: base.durationSeconds, source: own ? 'tenant' : 'default' },
          limiter: this.#limiter(cls, scope, base),
        };
      }
      table[cls] = row;
    }
    return table;
  }

  #limiter(cls: RateLimitClass, scope: RateLimitScope, limit: RateLimit): Limiter {
    const id = `${scope}/${cls}/${limit.points}/${limit.durationSeconds}`;
    let l = this.#limiters.get(id);
    if (!l) {
      l = (scope === 'connection' ? this.#local : this.#backend).limiter(id, limit);
      this.#limiters.set(id, l);
    }
    return l;
  }
}

import type { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/** Milliseconds a reservation is held in Redis at most: a node that dies mid-create does not hold it longer. */
const HOLD_MS = 30_000;

// Drops expired holds, then reserves `ids` unless `used` (committed, as the caller counts it)
// plus everything held by any node plus the new ones would pass `limit`. Returns -1 when
// reserved, else how much is held.
const RESERVE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local fresh = 0
for i = 6, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then fresh = fresh + 1 end
end
local held = tonumber(ARGV[3]) + redis.call('ZCARD', KEYS[1])
if held + fresh > tonumber(ARGV[4]) then return held end
for i = 6, #ARGV do redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return -1
`;

/**
 * Milliseconds an offer's slot is held in Redis at most: long enough for every node to learn the
 * assignment from its commit (then their own count has it), short enough that a node dying
 * between its choice and its commit does not keep the agent's slot.
 */
const SLOT_HOLD_MS = 3_000;

// Drops expired holds, then counts what the agent holds: the tasks the calling node knows it
// holds (ARGV[5..]) plus every other node's holds not among them. Holds the slot for ARGV[4]
// and returns -1 when that stays below the limit ARGV[3], else returns the count.
const HOLD_SLOT = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local known = {}
for i = 5, #ARGV do known[ARGV[i]] = true end
local n = #ARGV - 4
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not known[id] and id ~= ARGV[4] then n = n + 1 end
end
if n >= tonumber(ARGV[3]) then return n end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ${SLOT_HOLD_MS})
return -1
`;

/** The outcome of {@link SharedReservations.reserve}. */
export type SharedOutcome = { ok: true } | { ok: false; held: number };

/**
 * Reservations every node of a cluster sees, in the shared Redis:
 *
 * - quota reservations: a create in flight on one node counts against the limit on all of them,
 *   so concurrent creates on different nodes cannot together pass it (one sorted set per tenant
 *   and resource holds the ids being created, each with an expiry);
 * - agents' concurrency slots: a node choosing an agent for a task holds one of its slots until
 *   the assignment is committed and known everywhere, so choices made at the same moment on
 *   different nodes cannot together offer an agent more than its `maxConcurrentTasks` (one sorted
 *   set per tenant and agent holds the task ids, each with an expiry).
 */
export class SharedReservations {
  #redis: Redis;
  #prefix: string;
  #log: Logger | undefined;
  #now: () => number;

  constructor(opts: { redis: Redis; prefix?: string; log?: Logger; now?: () => number }) {
    this.#redis = opts.redis;
    this.#prefix = opts.prefix ?? 'troupe';
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
  }

  #key(tenant: string, resource: string): string {
    return `${this.#prefix}:quota:${tenant}:${resource}`;
  }

  /**
   * Reserves `ids` of a resource unless `used` plus every node's holds plus the new ids pass
   * `limit`. When Redis does not answer, the node's own count decides (logged): limits then hold
   * per node only, as on a single node.
   */
  async reserve(tenant: string, resource: string, ids: string[], used: number, limit: number): Promise<SharedOutcome> {
    const now = this.#now();
    try {
      const r = (await this.#redis.eval(RESERVE, 1, this.#key(tenant, resource), now, now + HOLD_MS, used, limit, HOLD_MS, ...ids)) as number;
      return r === -1 ? { ok: true } : { ok: false, held: r };
    } catch (e) {
      this.#log?.warn({ err: e, tenant, resource }, 'shared quota reservation failed; this node counts alone');
      return { ok: true };
    }
  }

  /** Ends holds (the create was written, or failed). */
  release(tenant: string, resource: string, ids: string[]): void {
    if (ids.length === 0) return;
    this.#redis.zrem(this.#key(tenant, resource), ...ids).catch(() => {});
  }

  #slotKey(tenant: string, agent: string): string {
    return `${this.#prefix}:slots:${tenant}:${agent}`;
  }

  /**
   * Holds a slot of `agent` for `taskId` unless the tasks this node knows the agent holds
   * (`held`, without `taskId`) plus other nodes' holds reach `max`. When Redis does not answer,
   * this node's own count decides (logged), as on a single node.
   */
  async holdSlot(tenant: string, agent: string, taskId: string, max: number, held: Iterable<string>): Promise<boolean> {
    const now = this.#now();
    const known = [...held].filter((id) => id !== taskId);
    try {
      return (await this.#redis.eval(HOLD_SLOT, 1, this.#slotKey(tenant, agent), now, now + SLOT_HOLD_MS, max, taskId, ...known)) === -1;
    } catch (e) {
      this.#log?.warn({ err: e, tenant, agent }, 'shared agent slot reservation failed; this node counts alone');
      return true;
    }
  }

  /** Gives a slot back (the offer was not written, or the agent no longer holds the task). */
  releaseSlot(tenant: string, agent: string, taskId: string): void {
    this.#redis.zrem(this.#slotKey(tenant, agent), taskId).catch(() => {});
  }
}

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

/** The outcome of {@link SharedReservations.reserve}. */
export type SharedOutcome = { ok: true } | { ok: false; held: number };

/**
 * Quota reservations every node of a cluster sees: a create in flight on one node counts against
 * the limit on all of them, so concurrent creates on different nodes cannot together pass it.
 * One sorted set per tenant and resource in the shared Redis holds the ids being created, each
 * with an expiry.
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
}

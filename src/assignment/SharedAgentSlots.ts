import type { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/**
 * Milliseconds an offer's slot is held in Redis at most: long enough for every node to learn the
 * assignment from its commit (then their own count has it), short enough that a node dying
 * between its choice and its commit does not keep the agent's slot.
 */
const HOLD_MS = 3_000;

// Drops expired holds, then counts what the agent holds: the tasks the calling node knows it
// holds (ARGV[5..]) plus every other node's holds not among them. Holds the slot for ARGV[4]
// and returns -1 when that stays below the limit ARGV[3], else returns the count.
const RESERVE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local known = {}
for i = 5, #ARGV do known[ARGV[i]] = true end
local n = #ARGV - 4
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not known[id] and id ~= ARGV[4] then n = n + 1 end
end
if n >= tonumber(ARGV[3]) then return n end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ${HOLD_MS})
return -1
`;

/**
 * Agents' concurrency slots every node of a cluster sees. A node choosing an agent for a task
 * holds one of the agent's slots in the shared Redis until the assignment is committed and known
 * everywhere, so choices made at the same moment on different nodes cannot together offer an
 * agent more tasks than its `maxConcurrentTasks`. One sorted set per tenant and agent holds the
 * task ids, each with an expiry.
 */
export class SharedAgentSlots {
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

  #key(tenant: string, agent: string): string {
    return `${this.#prefix}:slots:${tenant}:${agent}`;
  }

  /**
   * Holds a slot of `agent` for `taskId` unless the tasks this node knows the agent holds
   * (`held`, without `taskId`) plus other nodes' holds reach `max`. When Redis does not answer,
   * this node's own count decides (logged), as on a single node.
   */
  async reserve(tenant: string, agent: string, taskId: string, max: number, held: Iterable<string>): Promise<boolean> {
    const now = this.#now();
    const known = [...held].filter((id) => id !== taskId);
    try {
      return (await this.#redis.eval(RESERVE, 1, this.#key(tenant, agent), now, now + HOLD_MS, max, taskId, ...known)) === -1;
    } catch (e) {
      this.#log?.warn({ err: e, tenant, agent }, 'shared agent slot reservation failed; this node counts alone');
      return true;
    }
  }

  /** Gives a slot back (the offer was not written, or the agent no longer holds the task). */
  release(tenant: string, agent: string, taskId: string): void {
    this.#redis.zrem(this.#key(tenant, agent), taskId).catch(() => {});
  }
}

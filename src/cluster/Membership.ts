import type { Redis } from 'ioredis';
import type { Logger } from '../logger.js';

/** A node as the cluster sees it. */
export interface NodeInfo {
  id: string;
  /** Where clients (and operators) reach it, e.g. `ws://10.0.0.5:7420/v1`. */
  address: string;
  /** Milliseconds since the epoch. */
  startedAt: number;
  /** Its last heartbeat, milliseconds since the epoch. */
  heartbeatAt: number;
  /** Actors in its memory (the ones it owns), by kind. */
  actors: Record<string, number>;
}

/** Options of {@link Membership}; durations in milliseconds. */
export interface MembershipOptions {
  redis: Redis;
  nodeId: string;
  address: string;
  prefix?: string;
  /** How often the node says it is alive (default 1 000). A node silent for 3 heartbeats is gone. */
  heartbeatMs?: number;
  /** What the node reports of its actors at each heartbeat. */
  actors: () => Record<string, number>;
  log?: Logger;
  now?: () => number;
}

/**
 * Cluster membership in Redis: each node keeps a key with its info that expires after three
 * missed heartbeats, listed in a set of known nodes. A node whose key expired is gone: it is
 * dropped from the set by the next node that lists the members.
 */
export class Membership {
  #o: MembershipOptions;
  #prefix: string;
  #heartbeatMs: number;
  #startedAt: number;
  #timer: NodeJS.Timeout | null = null;
  #alive: string[] = [];
  #now: () => number;
  /** Where clients reach this node; set before {@link Membership.start}. */
  address: string;
  /** Called with the nodes that were alive at the previous heartbeat and are gone now. */
  onGone: (nodes: string[]) => void = () => {};
  /**
   * Called with the nodes alive now that were not at the previous heartbeat (new ones, or ones
   * back from a pause); not for those found at this node's first heartbeat.
   */
  onJoined: (nodes: string[]) => void = () => {};
  #beats = 0;

  constructor(opts: MembershipOptions) {
    this.#o = opts;
    this.#prefix = opts.prefix ?? 'troupe';
    this.#heartbeatMs = opts.heartbeatMs ?? 1_000;
    this.#now = opts.now ?? Date.now;
    this.#startedAt = this.#now();
    this.#alive = [opts.nodeId];
    this.address = opts.address;
  }

  /** Registers the node and starts heartbeating. */
  async start(): Promise<void> {
    await this.#beat();
    this.#timer = setInterval(() => void this.#beat().catch((e: unknown) => this.#o.log?.warn({ err: e }, 'cluster heartbeat failed')), this.#heartbeatMs);
    this.#timer.unref();
  }

  /** Ids of the live nodes as of the last heartbeat, sorted (always including this node). */
  get alive(): readonly string[] {
    return this.#alive;
  }

  /** True if the node heartbeated recently (as of this node's last heartbeat). */
  isAlive(node: string): boolean {
    return this.#alive.includes(node);
  }

  async #beat(): Promise<void> {
    const { redis, nodeId } = this.#o;
    const info: NodeInfo = { id: nodeId, address: this.address, startedAt: this.#startedAt, heartbeatAt: this.#now(), actors: this.#o.actors() };
    await redis
      .multi()
      .set(`${this.#prefix}:member:${nodeId}`, JSON.stringify(info), 'PX', this.#heartbeatMs * 3)
      .sadd(`${this.#prefix}:members`, nodeId)
      .exec();
    const nodes = await this.nodes();
    const before = this.#alive;
    this.#alive = nodes.map((n) => n.id).sort();
    if (!this.#alive.includes(nodeId)) this.#alive = [...this.#alive, nodeId].sort();
    const gone = before.filter((n) => !this.#alive.includes(n));
    if (gone.length > 0) this.onGone(gone);
    const joined = this.#alive.filter((n) => !before.includes(n));
    if (this.#beats++ > 0 && joined.length > 0) this.onJoined(joined);
  }

  /** Every live node with its info, sorted by id; forgets nodes whose heartbeat expired. */
  async nodes(): Promise<NodeInfo[]> {
    const { redis } = this.#o;
    const ids = await redis.smembers(`${this.#prefix}:members`);
    if (ids.length === 0) return [];
    const raw = await redis.mget(ids.map((id) => `${this.#prefix}:member:${id}`));
    const gone = ids.filter((_, i) => raw[i] === null);
    if (gone.length > 0) await redis.srem(`${this.#prefix}:members`, ...gone);
    return raw
      .filter((r): r is string => r !== null)
      .map((r) => JSON.parse(r) as NodeInfo)
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Stops heartbeating and leaves the cluster at once (a graceful shutdown). */
  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    const { redis, nodeId } = this.#o;
    await redis
      .multi()
      .del(`${this.#prefix}:member:${nodeId}`)
      .srem(`${this.#prefix}:members`, nodeId)
      .exec()
      .catch(() => {});
  }
}

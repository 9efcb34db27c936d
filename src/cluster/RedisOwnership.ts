import { Redlock, type Lock } from '@sesamecare-oss/redlock';
import type { Redis } from 'ioredis';
import type { ActorAddress } from '../../actors/ActorKind.js';
import type { Lease, Ownership } from '../../actors/Ownership.js';
import { OwnedElsewhere, ownerMoving } from '../../actors/Remote.js';
import type { Store } from '../../actors/Store.js';
import type { Logger } from '../logger.js';

/** Options of {@link RedisOwnership}; durations in milliseconds. */
export interface RedisOwnershipOptions {
  nodeId: string;
  /** Independent Redis instances the leases are taken on (Redlock: a majority must agree). */
  lockClients: Redis[];
  /** The shared Redis where each actor's current owner is noted, for routing. */
  redis: Redis;
  /** The store whose per-stream fence gives each new lease its epoch. */
  store: Store;
  /** True if a node heartbeated recently (a lease noted for a gone node is not routed to). */
  isAlive: (node: string) => boolean;
  /** How long a lease lasts without renewal (default 10 000). Renewed every third of it. */
  leaseMs?: number;
  prefix?: string;
  log?: Logger;
  /** Called for each lease that could not be renewed in time (the actor must leave memory). */
  onLost?: (stream: string) => void;
}

interface Held {
  lock: Lock;
  epoch: number;
}

/**
 * Actor ownership for a cluster: a Redlock lease per actor over one or more Redis instances,
 * renewed while the actor is in memory and released when it leaves. Each new lease takes the
 * next fencing epoch from the store (`claimEpoch`), which from then on refuses the previous
 * owner's writes, even if that owner was paused and still believes it holds the lease.
 */
export class RedisOwnership implements Ownership {
  #o: RedisOwnershipOptions;
  #redlock: Redlock;
  #held = new Map<string, Held>();
  #leaseMs: number;
  #prefix: string;
  #renewal: NodeJS.Timeout;
  #renewing = false;
  #closed = false;
  #lost: (stream: string) => void;
  /** Leases given up because they could not be renewed (for metrics). */
  lostCount = 0;

  constructor(opts: RedisOwnershipOptions) {
    this.#o = opts;
    this.#leaseMs = opts.leaseMs ?? 10_000;
    this.#prefix = opts.prefix ?? 'troupe';
    this.#lost = opts.onLost ?? (() => {});
    // One attempt: a node that cannot take a lease routes the message to the holder instead of waiting.
    this.#redlock = new Redlock(opts.lockClients, { retryCount: 0, driftFactor: 0.01 });
    this.#redlock.on('error', () => {});
    this.#renewal = setInterval(() => void this.#renew(), Math.max(50, Math.floor(this.#leaseMs / 3)));
    this.#renewal.unref();
  }

  /** Sets who hears of lost leases (the actor host). */
  onLost(listener: (stream: string) => void): void {
    this.#lost = listener;
  }

  /** How many leases this node holds. */
  get heldCount(): number {
    return this.#held.size;
  }

  #ownerKey(stream: string): string {
    return `${this.#prefix}:owner:${stream}`;
  }

  /** The live node other than this one that owns the actor now, or null (nobody, or this node). */
  owner(stream: string): Promise<string | null> {
    return this.#otherOwner(stream);
  }

  /** The node noted as the actor's owner, if it is alive and not this node. */
  async #otherOwner(stream: string): Promise<string | null> {
    const owner = await this.#o.redis.get(this.#ownerKey(stream));
    return owner !== null && owner !== this.#o.nodeId && this.#o.isAlive(owner) ? owner : null;
  }

  async acquire(stream: string, address: ActorAddress, fresh = false): Promise<Lease> {
    if (this.#closed) throw ownerMoving(address.kind, 1000, 'this node is shutting down');
    const held = this.#held.get(stream);
    if (held) {
      // Reloading an actor this node owns: confirm the lease is still ours.
      try {
        held.lock = await held.lock.extend(this.#leaseMs);
        if (held.lock.expiration > Date.now()) return { stream, epoch: held.epoch };
        this.#held.delete(stream);
      } catch {
        this.#held.delete(stream);
      }
    }
    // An id this node has just made up has no owner to look up.
    const other = fresh ? null : await this.#otherOwner(stream);
    if (other) throw new OwnedElsewhere(stream, other);
    let lock: Lock;
    try {
      lock = await this.#redlock.acquire([`${this.#prefix}:lease:${stream}`], this.#leaseMs);
    } catch {
      const owner = await this.#otherOwner(stream);
      if (owner) throw new OwnedElsewhere(stream, owner);
      throw ownerMoving(address.kind, Math.min(1000, this.#leaseMs), 'its lease is held by a node that is not answering');
    }
    try {
      // A node paused while taking the lease may hold it only in its memory by now.
      const left = lock.expiration - Date.now();
      if (left <= 0) throw ownerMoving(address.kind, 100, 'its lease ran out while it was being taken');
      // The note never outlives the lease it reports.
      await this.#o.redis.set(this.#ownerKey(stream), this.#o.nodeId, 'PX', left);
      // A stream this node has just named cannot have been written by anyone: epoch 1 fences
      // nothing and every later owner claims a higher one.
      const epoch = fresh ? 1 : await this.#o.store.claimEpoch(stream, address.tenant, address.kind, address.id);
      this.#held.set(stream, { lock, epoch });
      return { stream, epoch };
    } catch (e) {
      await lock.release().catch(() => {});
      throw e;
    }
  }

  async release(stream: string): Promise<void> {
    const held = this.#held.get(stream);
    if (!held) return;
    this.#held.delete(stream);
    await Promise.allSettled([held.lock.release(), this.#deleteOwner(stream)]);
  }

  /** Deletes the owner note only if it still names this node. */
  async #deleteOwner(stream: string): Promise<void> {
    await this.#o.redis.eval(
      "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
      1,
      this.#ownerKey(stream),
      this.#o.nodeId,
    );
  }

  async #renew(): Promise<void> {
    if (this.#renewing || this.#closed || this.#held.size === 0) return;
    this.#renewing = true;
    try {
      const entries = [...this.#held];
      const renewed: string[] = [];
      await Promise.all(
        entries.map(async ([stream, held]) => {
          try {
            held.lock = await held.lock.extend(this.#leaseMs);
            // An answer that arrives after the lease ran out (the node was paused meanwhile) is no renewal.
            if (held.lock.expiration <= Date.now()) throw new Error('the lease ran out before its renewal was confirmed');
            renewed.push(stream);
          } catch (e) {
            if (this.#held.get(stream) !== held) return;
            this.#held.delete(stream);
            // Free what is left of it on the instances that still have it (only our own value is
            // deleted), so the actor can be taken again at once rather than when the keys expire.
            void held.lock.release().catch(() => {});
            this.lostCount++;
            this.#o.log?.warn({ stream, err: e }, 'actor lease lost: the actor leaves this node');
            this.#lost(stream);
          }
        }),
      );
      // Only leases still ours are noted: a lease another node took keeps that node's note.
      const now = Date.now();
      const noted = renewed.flatMap((stream) => {
        const left = (this.#held.get(stream)?.lock.expiration ?? 0) - now;
        return left > 0 ? [[stream, left] as const] : [];
      });
      if (noted.length > 0) {
        const owners = this.#o.redis.pipeline();
        for (const [stream, left] of noted) owners.set(this.#ownerKey(stream), this.#o.nodeId, 'PX', left);
        await owners.exec().catch(() => {});
      }
    } finally {
      this.#renewing = false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#renewal);
    await Promise.allSettled([...this.#held.keys()].map((s) => this.release(s)));
  }
}

import type { ActorAddress } from './ActorKind.js';
import type { Store } from './Store.js';

/** The right to write one actor's stream, with the fencing epoch every append must carry. */
export interface Lease {
  stream: string;
  epoch: number;
}

/**
 * Decides which node owns (may write) an actor. The store enforces the decision: every append
 * carries the lease's epoch and an older epoch than the stream has seen is refused.
 */
export interface Ownership {
  /**
   * Takes ownership of a stream (or confirms this node still holds it). Rejects with
   * `OwnedElsewhere` when another live node holds it, or with UNAVAILABLE when it cannot tell.
   * `fresh`: the caller has just generated the actor's id, so no other node can have written it.
   */
  acquire(stream: string, address: ActorAddress, fresh?: boolean): Promise<Lease>;
  /** Gives ownership up (on passivation or shutdown). */
  release(stream: string): Promise<void>;
  /** Stops renewing and releases every lease; safe to call twice. */
  close(): Promise<void>;
}

/**
 * Ownership for a single node: it owns every actor. Its epoch is a durable counter bumped at each
 * start, so a previous incarnation of the node (still running by mistake on the same store) is
 * fenced out by the store.
 */
export class LocalOwnership implements Ownership {
  #epoch: Promise<number>;

  constructor(store: Store) {
    this.#epoch = store.nextCounter('local-ownership-epoch');
  }

  async acquire(stream: string): Promise<Lease> {
    return { stream, epoch: await this.#epoch };
  }

  async release(): Promise<void> {}

  async close(): Promise<void> {}
}

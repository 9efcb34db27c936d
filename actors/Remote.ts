import { ProtocolError } from '../protocol/errors.js';
import type { ActorAddress } from './ActorKind.js';
import type { OutboxRecord, StoredEvent, TimerRecord } from './Store.js';

/**
 * Thrown by {@link Ownership.acquire} when another live node holds the actor's lease: the
 * message goes to that node instead.
 */
export class OwnedElsewhere extends Error {
  constructor(
    readonly stream: string,
    readonly node: string,
  ) {
    super(`${stream} is owned by node ${node}`);
  }
}

/**
 * Refuses a message when its actor cannot be run here and the owner cannot be reached (the lease
 * is being moved, or the owner stopped and its lease has not expired yet).
 */
export function ownerMoving(what: string, retryAfterMs: number, detail?: string): ProtocolError {
  return new ProtocolError(
    'UNAVAILABLE',
    `The ${what} is moving between nodes${detail ? ` (${detail})` : ''}; retry after ${retryAfterMs} ms.`,
    { retryAfterMs, ownerMoving: true },
  );
}

/** The options of a turn as they travel to another node (no functions). */
export interface WireTurnOptions {
  principal: string;
  correlationId?: string;
  causationId?: string;
  eventId?: string;
  expectedVersion?: number;
  idempotency?: { tenant: string; key: string; requestHash: string; createdAt: number; result: unknown };
  outboxDone?: string[];
  firedTimer?: { name: string; fireAt: number };
  /**
   * When the actor is no longer at `expectedVersion`, answer with it as it is now
   * ({@link WireChanged}) instead of refusing: the caller pinned that version only to judge its
   * check on it, and judges again on the answer without another read.
   */
  answerChanged?: true;
}

/** An accepted turn as it comes back from the owner: the persisted snapshot, restored by the caller. */
export interface WireTurn {
  snapshot: unknown;
  version: number;
  event: StoredEvent;
}

/** An actor's committed state as read on its owner. */
export interface WireRead {
  snapshot: unknown;
  version: number;
}

/** The owner's answer to a turn sent with `answerChanged` whose actor had moved past its version. */
export interface WireChanged {
  changed: WireRead;
}

/**
 * The other nodes' actor hosts, as one node's host reaches them. Every method rejects with the
 * owner's ProtocolError when it refuses, and with UNAVAILABLE (and a retry hint) when it does not
 * answer in time.
 */
export interface RemoteActors {
  send(node: string, address: ActorAddress, event: { type: string } & Record<string, unknown>, opts: WireTurnOptions): Promise<WireTurn | WireChanged | 'duplicate'>;
  read(node: string, address: ActorAddress): Promise<WireRead>;
  fireTimer(node: string, timer: TimerRecord): Promise<void>;
  deliver(node: string, record: OutboxRecord): Promise<void>;
}

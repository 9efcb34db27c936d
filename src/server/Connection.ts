import type { WebSocket } from 'ws';
import type { RpcId, RpcNotification, RpcResponse } from '../../protocol/jsonrpc.js';
import type { Principal } from '../../protocol/model.js';
import type { Credential } from '../auth/Authenticator.js';

/** Named WebSocket close codes (4000–4999 are ours). */
export const CloseCodes = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  UNAUTHENTICATED: 4001,
  CREDENTIAL_REVOKED: 4003,
  TOO_SLOW: 4008,
  /** No frame and no answer to a ping for `idleConnectionMs`. */
  IDLE_TIMEOUT: 4009,
} as const;

/**
 * One client connection. Replies go out at once; a notification caused by a request whose reply
 * has not been sent yet waits for that reply (DESIGN §2: a reply precedes the notifications its
 * request caused on the same connection).
 */
export class Connection {
  readonly id: string;
  readonly ws: WebSocket;
  principal: Principal | null = null;
  /** What the principal authenticated with; re-checked periodically. */
  credential: Credential | null = null;
  /** Subscription ids of this connection. */
  readonly subscriptions = new Set<string>();
  /** Correlation ids of requests whose reply has not been sent yet. */
  #pending = new Map<string, number>();
  /** Requests in progress (a client may reuse an id while an earlier request with it still runs). */
  #inFlight = 0;
  /**
   * Notifications waiting to go out, in the order they were published. The head waits while
   * the request that caused it has no reply yet; everything behind it waits too, so a
   * subscriber always receives events in position order.
   */
  #queue: { frame: string; causedBy: string | undefined }[] = [];
  /** Bytes of the frames in `#queue`: they are unsent output too. */
  #heldBytes = 0;
  #closed = false;
  /** Requests in progress beyond which the server stops reading this connection's frames. */
  #maxInFlight: number;
  /** Until when reading is paused after a rate-limit refusal (ms since epoch), or 0. */
  #throttledUntil = 0;
  #throttle: NodeJS.Timeout | null = null;

  /**
   * @param maxInFlight Requests in progress at which reading pauses (it resumes at half). A
   * flooding client's frames then wait in its own TCP buffers instead of in the server's event
   * loop, so they cannot delay other clients' calls.
   */
  constructor(id: string, ws: WebSocket, maxInFlight = 64) {
    this.id = id;
    this.ws = ws;
    this.#maxInFlight = maxInFlight;
  }

  /**
   * Stops reading this connection's frames for `ms` (a client that was just refused for going
   * too fast would only be refused again): what it sends meanwhile waits in its socket.
   */
  throttle(ms: number, now = Date.now()): void {
    if (ms <= 0 || this.#closed) return;
    this.#throttledUntil = Math.max(this.#throttledUntil, now + ms);
    if (this.#throttle) clearTimeout(this.#throttle);
    this.#throttle = setTimeout(() => {
      this.#throttle = null;
      this.#throttledUntil = 0;
      this.#flow();
    }, this.#throttledUntil - now);
    this.#throttle.unref();
    this.#flow();
  }

  /** Pauses or resumes reading by the requests in progress and any throttle. */
  #flow(): void {
    if (this.#closed || this.ws.readyState !== this.ws.OPEN) return;
    const stop = this.#throttledUntil > 0 || this.#inFlight >= this.#maxInFlight;
    if (stop && !this.ws.isPaused) this.ws.pause();
    else if (!stop && this.ws.isPaused && this.#inFlight <= this.#maxInFlight / 2) this.ws.resume();
  }

  /** The correlation id of a request on this connection. */
  correlationOf(id: RpcId | undefined): string {
    return `${this.id}:${id === undefined ? '-' : String(id)}`;
  }

  /** Marks a request as in progress so notifications it causes are held until its reply. */
  begin(correlationId: string): void {
    this.#pending.set(correlationId, (this.#pending.get(correlationId) ?? 0) + 1);
    if (++this.#inFlight >= this.#maxInFlight) this.#flow();
  }

  /** Sends the reply(ies) of a request, then the notifications that were waiting for it. */
  reply(correlationIds: string[], response: RpcResponse | RpcResponse[] | null): void {
    if (response !== null) this.#write(JSON.stringify(response));
    for (const c of correlationIds) {
      const n = this.#pending.get(c);
      if (n === undefined) continue;
      this.#inFlight--;
      if (n > 1) this.#pending.set(c, n - 1);
      else this.#pending.delete(c);
    }
    this.#drain();
    if (this.ws.isPaused) this.#flow();
  }

  /** Sends a server push, or queues it behind the reply of the request that caused it. */
  notify(n: RpcNotification, causedBy?: string): void {
    this.notifyFrame(JSON.stringify(n), causedBy);
  }

  /** Like {@link notify}, for a notification already serialised (fan-out encodes an event once). */
  notifyFrame(frame: string, causedBy?: string): void {
    if (this.#queue.length === 0 && (causedBy === undefined || !this.#pending.has(causedBy))) {
      this.#write(frame);
      return;
    }
    this.#queue.push({ frame, causedBy });
    this.#heldBytes += frame.length;
  }

  #drain(): void {
    while (this.#queue.length > 0) {
      const head = this.#queue[0]!;
      if (head.causedBy !== undefined && this.#pending.has(head.causedBy)) return;
      this.#queue.shift();
      this.#heldBytes -= head.frame.length;
      this.#write(head.frame);
    }
  }

  /** Bytes not yet sent: queued in the socket, or held back behind a reply (a catch-up, say). */
  get bufferedAmount(): number {
    return this.ws.bufferedAmount + this.#heldBytes;
  }

  get closed(): boolean {
    return this.#closed || this.ws.readyState !== this.ws.OPEN;
  }

  /** Closes once with a code and a reason; safe to call twice. */
  close(code: number, reason: string): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#throttle) clearTimeout(this.#throttle);
    try {
      this.ws.close(code, reason.slice(0, 120));
    } catch {
      this.ws.terminate();
    }
  }

  #write(frame: string): void {
    if (this.ws.readyState === this.ws.OPEN) this.ws.send(frame);
  }
}

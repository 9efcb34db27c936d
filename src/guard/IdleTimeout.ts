import { SESSION_CLOSING } from '../../protocol/jsonrpc.js';
import { CloseCodes, type Connection } from '../server/Connection.js';

/**
 * Closes a connection that shows no sign of life for `idleMs`: it sent no frame and answered no
 * WebSocket ping. After half of that silence the server pings; a client whose WebSocket library
 * answers pings (browsers and `ws` do it on their own) stays connected however long it only
 * listens, as an agent waiting on its inbox subscription does. What gets closed is a peer that
 * is gone (half-open TCP, a paused or hung process) and still holds its subscriptions,
 * presence and buffers. Closing sends `session.closing`, then close code 4009.
 *
 * The per-frame cost is one clock read: the timer is not reset on each frame but re-armed from
 * the last activity when it fires.
 *
 * @example
 * ```ts
 * const idle = new IdleTimeout(conn, 600_000);
 * idle.start();
 * ```
 */
export class IdleTimeout {
  readonly #conn: Connection;
  readonly #idleMs: number;
  #last = Date.now();
  #pinged = false;
  #timer: NodeJS.Timeout | null = null;
  readonly #touch = () => {
    this.#last = Date.now();
    this.#pinged = false;
  };

  constructor(conn: Connection, idleMs: number) {
    this.#conn = conn;
    this.#idleMs = idleMs;
  }

  /** Starts watching: frames, pings and pongs from the client count as activity. */
  start(): void {
    const ws = this.#conn.ws;
    this.#touch();
    ws.on('message', this.#touch);
    ws.on('ping', this.#touch);
    ws.on('pong', this.#touch);
    ws.once('close', () => this.stop());
    this.#arm(this.#idleMs / 2);
  }

  /** Stops watching; safe to call twice. */
  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const ws = this.#conn.ws;
    ws.off('message', this.#touch);
    ws.off('ping', this.#touch);
    ws.off('pong', this.#touch);
  }

  #arm(delayMs: number): void {
    this.#timer = setTimeout(() => this.#check(), Math.max(1, delayMs));
    this.#timer.unref();
  }

  #check(): void {
    this.#timer = null;
    if (this.#conn.closed) return;
    const silentMs = Date.now() - this.#last;
    if (silentMs >= this.#idleMs) {
      const reason = `Nothing received for ${this.#idleMs} ms (no frame, no answer to a ping); reconnect, and let your WebSocket library answer pings to stay connected.`;
      this.#conn.notify({ jsonrpc: '2.0', method: SESSION_CLOSING, params: { reason } });
      this.#conn.close(CloseCodes.IDLE_TIMEOUT, 'idle timeout');
      this.stop();
      return;
    }
    if (silentMs >= this.#idleMs / 2 && !this.#pinged) {
      this.#pinged = true;
      this.#conn.ws.ping();
    }
    this.#arm((this.#pinged ? this.#idleMs : this.#idleMs / 2) - silentMs);
  }
}

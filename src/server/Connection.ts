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
  /** Correlation ids of requests in progress, with notifications held back for each. */
  #held = new Map<string, string[]>();
  /** Bytes of the frames in `#held`: they are unsent output too. */
  #heldBytes = 0;
  #closed = false;

  constructor(id: string, ws: WebSocket) {
    this.id = id;
    this.ws = ws;
  }

  /** The correlation id of a request on this connection. */
  correlationOf(id: RpcId | undefined): string {
    return `${this.id}:${id === undefined ? '-' : String(id)}`;
  }

  /** Marks a request as in progress so notifications it causes are held until its reply. */
  begin(correlationId: string): void {
    if (!this.#held.has(correlationId)) this.#held.set(correlationId, []);
  }

  /** Sends the reply(ies) of a request, then whatever it held back. */
  reply(correlationIds: string[], response: RpcResponse | RpcResponse[] | null): void {
    if (response !== null) this.#write(JSON.stringify(response));
    for (const c of correlationIds) {
      const held = this.#held.get(c);
      this.#held.delete(c);
      if (!held) continue;
      for (const frame of held) {
        this.#heldBytes -= frame.length;
        this.#write(frame);
      }
    }
  }

  /** Sends a server push, or holds it behind the reply of the request that caused it. */
  notify(n: RpcNotification, causedBy?: string): void {
    const frame = JSON.stringify(n);
    const held = causedBy !== undefined ? this.#held.get(causedBy) : undefined;
    if (held) {
      held.push(frame);
      this.#heldBytes += frame.length;
    } else this.#write(frame);
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

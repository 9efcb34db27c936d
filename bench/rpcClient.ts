import WebSocket from 'ws';

/** A decoded JSON-RPC response (only the parts the bench looks at). */
export interface RpcReply {
  id: number;
  result?: Record<string, unknown>;
  error?: { code: number; message: string; data?: unknown };
}

/**
 * The load generator's connection: the thinnest JSON-RPC 2.0 client over `ws` (one pending map,
 * no timers per call, no reconnects; notifications go to `onNotification` if set, else are ignored). The raw-`ws` baseline and the Troupe
 * runs use this same class, so the client side costs the same on both sides of each ratio.
 */
export class RpcConn {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, (reply: RpcReply) => void>();
  #closedError: Error | null = null;
  /** Requests sent on this connection, by method (compared with the server's /metrics). */
  readonly sent = new Map<string, number>();
  /** Called with every notification (a message without a numeric id), already parsed. */
  onNotification: ((msg: { method?: string; params?: Record<string, unknown> }) => void) | undefined;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.on('message', (data) => this.#onMessage(data.toString()));
    ws.on('close', (code, reason) => {
      this.#closedError = new Error(`connection closed (${code} ${reason.toString()})`);
      for (const [id, resolve] of this.#pending) {
        resolve({ id, error: { code: -1, message: this.#closedError.message } });
      }
      this.#pending.clear();
    });
  }

  /** Opens a connection, with `Authorization: Bearer <token>` when a token is given. */
  static open(url: string, token?: string): Promise<RpcConn> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      const ws = new WebSocket(url, { headers, perMessageDeflate: false });
      ws.once('open', () => resolve(new RpcConn(ws)));
      ws.once('error', reject);
    });
  }

  /** Sends a request; resolves with the response (errors are resolved, not thrown). */
  call(method: string, params: Record<string, unknown>): Promise<RpcReply> {
    if (this.#closedError) return Promise.resolve({ id: 0, error: { code: -1, message: this.#closedError.message } });
    const id = this.#next++;
    this.sent.set(method, (this.sent.get(method) ?? 0) + 1);
    return new Promise((resolve) => {
      this.#pending.set(id, resolve);
      this.#ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  /** Closes the socket and waits for the close handshake (bounded). */
  close(): Promise<void> {
    if (this.#ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#ws.terminate();
        resolve();
      }, 2000);
      this.#ws.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      this.#ws.close(1000);
    });
  }

  #onMessage(text: string): void {
    const msg = JSON.parse(text) as RpcReply & { method?: string };
    if (typeof msg.id !== 'number') {
      this.onNotification?.(msg as { method?: string; params?: Record<string, unknown> });
      return;
    }
    const resolve = this.#pending.get(msg.id);
    if (!resolve) return;
    this.#pending.delete(msg.id);
    resolve(msg);
  }
}

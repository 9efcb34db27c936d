// A small JSON-RPC 2.0 client over the browser's WebSocket, for the visualiser. Browsers cannot
// set headers on a WebSocket, so it authenticates with `session.authenticate` after connecting.

/** An error answer of the server: `code`, `data.reason` and a message saying what to fix. */
export class RpcError extends Error {
  /**
   * @param {{ code: number, message: string, data?: any }} error
   */
  constructor(error) {
    super(error.message);
    this.code = error.code;
    this.data = error.data ?? null;
    this.reason = error.data?.reason ?? null;
  }
}

/** Close codes after which reconnecting with the same key cannot help. */
export const FINAL_CLOSE_CODES = new Set([4001, 4003]);

/**
 * One authenticated connection to `/v1`. Notifications go to `onNotification`; `onClose` hears
 * the close code and the reason the server gave (its `session.closing` notification).
 */
export class RpcConnection {
  /** @type {WebSocket} */
  #ws;
  #nextId = 1;
  /** @type {Map<number, { resolve: (v: any) => void, reject: (e: Error) => void, timer: any }>} */
  #pending = new Map();
  #closingReason = null;
  /** @type {(method: string, params: any) => void} */
  onNotification = () => {};
  /** @type {(code: number, reason: string) => void} */
  onClose = () => {};
  /** The principal the key stands for, once authenticated. */
  principal = null;

  /**
   * Connects and authenticates; rejects with the server's error when the key is refused.
   *
   * @param {string} url `ws://host/v1`
   * @param {string} key an API key or JWT
   * @param {{ timeoutMs?: number }} [options]
   */
  static async open(url, key, options = {}) {
    const c = new RpcConnection(url, options.timeoutMs ?? 15000);
    await c.#opened();
    try {
      c.principal = await c.call('session.authenticate', { token: key });
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  constructor(url, timeoutMs) {
    this.timeoutMs = timeoutMs;
    this.#ws = new WebSocket(url);
    this.#ws.addEventListener('message', (m) => this.#receive(m.data));
    this.#ws.addEventListener('close', (e) => {
      for (const p of this.#pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error('The connection closed before the server answered.'));
      }
      this.#pending.clear();
      this.onClose(e.code, this.#closingReason ?? e.reason ?? '');
    });
  }

  #opened() {
    return new Promise((resolve, reject) => {
      this.#ws.addEventListener('open', () => resolve(undefined), { once: true });
      this.#ws.addEventListener('close', () => reject(new Error('Could not connect to the server.')), { once: true });
    });
  }

  get open() {
    return this.#ws.readyState === WebSocket.OPEN;
  }

  /**
   * Calls a method; resolves with its result or rejects with an {@link RpcError}.
   *
   * @param {string} method
   * @param {object} [params]
   */
  call(method, params = {}) {
    if (!this.open) return Promise.reject(new Error('Not connected.'));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${method} got no answer within ${this.timeoutMs} ms.`));
      }, this.timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  close() {
    this.#ws.close(1000, 'closed by the visualiser');
  }

  #receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (m && m.id !== undefined && m.id !== null && this.#pending.has(m.id)) {
        const p = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        clearTimeout(p.timer);
        if (m.error) p.reject(new RpcError(m.error));
        else p.resolve(m.result);
      } else if (m && typeof m.method === 'string') {
        if (m.method === 'session.closing') this.#closingReason = m.params?.reason ?? null;
        this.onNotification(m.method, m.params ?? {});
      }
    }
  }
}

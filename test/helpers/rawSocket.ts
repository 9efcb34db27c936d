import net from 'node:net';
import WebSocket from 'ws';
import { waitFor } from './waitFor.js';

/** One frame as the client received it, in arrival order. */
export interface Frame {
  text: string;
  msg: any;
}

/** A JSON-RPC error object as received. */
export interface WireError {
  code: number;
  message: string;
  data?: any;
}

/** A response as received. */
export interface WireResponse {
  jsonrpc: '2.0';
  id: string | number | null;
  result?: unknown;
  error?: WireError;
}

/**
 * A WebSocket that records every frame it receives, for tests that need exact bytes, raw
 * frame order, or answers to malformed input (the typed client cannot send those).
 */
export class RawSocket {
  readonly ws: WebSocket;
  readonly frames: Frame[] = [];
  /** Resolves with the close code and reason once the socket is closed. */
  readonly closed: Promise<{ code: number; reason: string }>;
  closeInfo: { code: number; reason: string } | null = null;
  #nextId = 1_000_000;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
    ws.on('message', (data) => {
      const text = data.toString();
      let msg: unknown;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = undefined;
      }
      this.frames.push({ text, msg });
    });
    ws.on('error', () => {});
  }

  /** Opens a socket, with `Authorization: Bearer <token>` when a token is given. */
  static open(url: string, token?: string): Promise<RawSocket> {
    const ws = new WebSocket(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
    const raw = new RawSocket(ws);
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(raw));
      ws.once('error', reject);
    });
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends a string as is, or anything else as JSON. */
  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Index of the first frame at or after `from` that satisfies `pred`, or -1. */
  indexOf(pred: (f: Frame) => boolean, from = 0): number {
    for (let i = from; i < this.frames.length; i++) if (pred(this.frames[i]!)) return i;
    return -1;
  }

  /** Waits for the frame at index `i` (or the first at or after `from` satisfying `pred`). */
  async frame(pred: (f: Frame) => boolean, from = 0, timeoutMs = 5000): Promise<Frame> {
    const i = await waitFor(() => {
      const j = this.indexOf(pred, from);
      return j >= 0 ? j + 1 : 0;
    }, { timeoutMs });
    return this.frames[i - 1]!;
  }

  /** Waits until at least `n` frames have arrived. */
  async count(n: number, timeoutMs = 5000): Promise<void> {
    await waitFor(() => this.frames.length >= n, { timeoutMs });
  }

  /** Waits for the (non-batch) response with this id. */
  async response(id: string | number, from = 0): Promise<WireResponse> {
    const f = await this.frame((f) => isObj(f.msg) && f.msg.id === id && ('result' in f.msg || 'error' in f.msg), from);
    return f.msg as WireResponse;
  }

  /** Sends a request and waits for its response. */
  async call(method: string, params: unknown = {}, id: string | number = this.#nextId++): Promise<WireResponse> {
    const from = this.frames.length;
    this.send({ jsonrpc: '2.0', id, method, params });
    return this.response(id, from);
  }

  /** Calls a method and returns its result, or throws with the error. */
  async ok<T = any>(method: string, params: unknown = {}): Promise<T> {
    const r = await this.call(method, params);
    if (r.error) throw new Error(`${method} failed: ${r.error.code} ${r.error.message}`);
    return r.result as T;
  }

  /** Sends a frame and returns the next frame that arrives (use when the answer has no id). */
  async exchange(frame: unknown): Promise<Frame> {
    const from = this.frames.length;
    this.send(frame);
    await this.count(from + 1);
    return this.frames[from]!;
  }

  /** Notifications (server pushes) received so far, optionally of one method. */
  notifications(method?: string): any[] {
    return this.frames
      .map((f) => f.msg)
      .filter((m) => isObj(m) && typeof m.method === 'string' && !('id' in m) && (method === undefined || m.method === method));
  }

  /** Waits for the socket to be closed (by either side), failing after `timeoutMs`. */
  waitClosed(timeoutMs = 5000): Promise<{ code: number; reason: string }> {
    return within(this.closed, timeoutMs, 'the socket to close');
  }

  /** Closes and waits for the close. */
  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    this.ws.close(1000);
    await this.closed;
  }

  /** Drops the TCP connection without a closing handshake. */
  async terminate(): Promise<void> {
    this.ws.terminate();
    await this.closed;
  }
}

/** Resolves like `p`, or rejects once `timeoutMs` have passed without it settling. */
export function within<T>(p: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function isObj(v: unknown): v is Record<string, any> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * A TCP proxy in front of a server, so a test can cut connections as a network would (the typed
 * client keeps its socket private) and refuse reconnects for a while.
 */
export class CuttableProxy {
  readonly server: net.Server;
  #sockets = new Set<net.Socket>();
  #upstreams = new Set<net.Socket>();
  #target: number;
  /** While true, new connections are accepted and dropped at once. */
  refusing = false;
  /** Connections accepted (including refused ones). */
  accepted = 0;

  private constructor(targetPort: number) {
    this.#target = targetPort;
    this.server = net.createServer((client) => {
      this.accepted++;
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(this.#target, '127.0.0.1');
      this.#sockets.add(client);
      this.#sockets.add(upstream);
      this.#upstreams.add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.#sockets.delete(client);
        this.#sockets.delete(upstream);
        this.#upstreams.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  /** Starts a proxy on a free port forwarding to `targetPort` on 127.0.0.1. */
  static async start(targetPort: number): Promise<CuttableProxy> {
    const p = new CuttableProxy(targetPort);
    await new Promise<void>((resolve) => p.server.listen(0, '127.0.0.1', () => resolve()));
    return p;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** The WebSocket URL through the proxy. */
  get url(): string {
    return `ws://127.0.0.1:${this.port}/v1`;
  }

  /** Cuts every open connection (both directions, no closing handshake). */
  cutAll(): void {
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    this.#upstreams.clear();
  }

  /** Stops reading from the server, so its socket buffers fill as with a slow client. */
  pauseDownstream(): void {
    for (const s of this.#upstreams) s.pause();
  }

  /** Reads from the server again. */
  resumeDownstream(): void {
    for (const s of this.#upstreams) s.resume();
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

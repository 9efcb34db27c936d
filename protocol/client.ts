import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { ProtocolError, type RpcErrorObject } from './errors.js';
import { SUBSCRIPTION_EVENT, SUBSCRIPTION_OVERFLOW, type RpcNotification } from './jsonrpc.js';
import type { MethodName, MethodResults, ParamsOf } from './methods.js';
import type { ActorEvent } from './model.js';

/** Options of {@link connect}; durations in milliseconds. */
export interface ClientOptions {
  /** An API key or JWT, sent as `Authorization: Bearer` on every (re)connect. */
  token?: string;
  /** Reconnect after an unexpected close (default true). */
  reconnect?: boolean;
  /** First reconnect delay (default 100); doubles up to `maxDelayMs`, with jitter. */
  initialDelayMs?: number;
  /** Longest reconnect delay (default 5 000). */
  maxDelayMs?: number;
  /** Calls without an answer after this long reject with TIMEOUT (default 30 000). */
  callTimeoutMs?: number;
}

/** Called with each event of a subscription, in position order, without gaps or repeats. */
export type EventHandler = (event: ActorEvent, position: number) => void;

/** A live subscription. It survives reconnects: the client resumes it from its last position. */
export interface Subscription {
  readonly topic: string;
  /** The server's id for it (changes after a reconnect). */
  readonly id: string;
  /** The position of the last event delivered. */
  readonly lastPosition: number;
  unsubscribe(): Promise<void>;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

class ClientSubscription implements Subscription {
  id = '';
  lastPosition: number;
  constructor(
    readonly topic: string,
    readonly handler: EventHandler,
    readonly client: TroupeClient,
    from: number,
  ) {
    this.lastPosition = from;
  }
  unsubscribe(): Promise<void> {
    return this.client.unsubscribe(this);
  }
}

/**
 * A typed Troupe client for agents. Events: `notification` (every server push), `reconnect`,
 * `disconnect`, `close`.
 *
 * @example
 * ```ts
 * const client = await connect('ws://127.0.0.1:7420/v1', { token: process.env.TROUPE_KEY });
 * const task = await client.call('task.create', { type: 'review', title: 'Review PR 7' });
 * await client.subscribe(`task:${task.id}`, (e) => console.log(e.type, e.status));
 * ```
 */
export class TroupeClient extends EventEmitter {
  readonly url: string;
  #opts: ClientOptions;
  #ws: WebSocket | null = null;
  #nextId = 1;
  #pending = new Map<number, Pending>();
  #subs = new Set<ClientSubscription>();
  #byServerId = new Map<string, ClientSubscription>();
  #closed = false;
  #attempt = 0;

  constructor(url: string, opts: ClientOptions = {}) {
    super();
    this.url = url;
    this.#opts = opts;
  }

  /** Opens the connection (the header carries the token). Rejects if the first attempt fails. */
  async open(): Promise<this> {
    await this.#connect();
    return this;
  }

  /** True while the socket is open. */
  get connected(): boolean {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /** Calls a method and resolves with its result, or rejects with a {@link ProtocolError}. */
  call<M extends MethodName>(method: M, params?: ParamsOf<M>): Promise<MethodResults[M]> {
    return this.#request(method, params ?? {}) as Promise<MethodResults[M]>;
  }

  /** Sends a raw text frame (for tools and tests that need exact bytes). */
  sendRaw(frame: string): void {
    if (!this.connected) throw new ProtocolError('UNAVAILABLE', 'Not connected.');
    this.#ws!.send(frame);
  }

  /**
   * Subscribes to a topic. With `fromPosition`, events after that position are replayed first.
   * After a reconnect the client resubscribes from the last position it delivered.
   */
  async subscribe(topic: string, handler: EventHandler, opts: { fromPosition?: number } = {}): Promise<Subscription> {
    const sub = new ClientSubscription(topic, handler, this, opts.fromPosition ?? 0);
    this.#subs.add(sub);
    try {
      await this.#resubscribe(sub, opts.fromPosition);
    } catch (e) {
      this.#subs.delete(sub);
      throw e;
    }
    return sub;
  }

  /** Ends a subscription. */
  async unsubscribe(sub: Subscription): Promise<void> {
    const s = sub as ClientSubscription;
    this.#subs.delete(s);
    this.#byServerId.delete(s.id);
    if (this.connected) await this.call('unsubscribe', { subscriptionId: s.id }).catch(() => undefined);
  }

  /** Closes for good; pending calls reject. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const ws = this.#ws;
    this.#failPending(new ProtocolError('UNAVAILABLE', 'The client was closed.'));
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.close(1000);
      });
    }
    this.emit('close');
  }

  async #resubscribe(sub: ClientSubscription, fromPosition: number | undefined): Promise<void> {
    const params: ParamsOf<'subscribe'> = { topic: sub.topic };
    if (fromPosition !== undefined) params.fromPosition = fromPosition;
    // Events may arrive before the reply names the subscription; keep them until it does.
    const early: RpcNotification[] = [];
    const collect = (n: RpcNotification) => early.push(n);
    this.on('unrouted', collect);
    let r: MethodResults['subscribe'];
    try {
      r = await this.call('subscribe', params);
    } finally {
      this.off('unrouted', collect);
    }
    this.#byServerId.delete(sub.id);
    sub.id = r.subscriptionId;
    this.#byServerId.set(sub.id, sub);
    if (fromPosition === undefined) sub.lastPosition = r.position;
    // Only this subscription's early events: others belong to subscribes still waiting, which
    // collected them too.
    for (const n of early) if ((n.params as { subscriptionId?: string }).subscriptionId === sub.id) this.#route(n);
  }

  #request(method: string, params: unknown): Promise<unknown> {
    if (!this.connected) return Promise.reject(new ProtocolError('UNAVAILABLE', 'Not connected; the client reconnects by itself.', { retryAfterMs: 200 }));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new ProtocolError('TIMEOUT', `No answer to ${method} within ${this.#opts.callTimeoutMs ?? 30_000} ms.`));
      }, this.#opts.callTimeoutMs ?? 30_000);
      timer.unref();
      this.#pending.set(id, { resolve, reject, timer });
      this.#ws!.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
  }

  #connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string> = {};
      if (this.#opts.token) headers.authorization = `Bearer ${this.#opts.token}`;
      const ws = new WebSocket(this.url, { headers });
      this.#ws = ws;
      let opened = false;
      ws.on('open', () => {
        opened = true;
        this.#attempt = 0;
        resolve();
      });
      ws.on('message', (data) => this.#onMessage(data.toString()));
      ws.on('error', (e) => {
        if (!opened) reject(e);
      });
      ws.on('close', (code, reason) => {
        this.#failPending(new ProtocolError('UNAVAILABLE', `The connection closed (${code} ${reason.toString()}); the call may or may not have been applied.`));
        if (!opened) return;
        this.emit('disconnect', { code, reason: reason.toString() });
        // 4001: the server refused the credential; reconnecting would not help.
        if (!this.#closed && this.#opts.reconnect !== false && code !== 4001) this.#scheduleReconnect();
      });
    });
  }

  #scheduleReconnect(): void {
    const base = Math.min((this.#opts.initialDelayMs ?? 100) * 2 ** this.#attempt, this.#opts.maxDelayMs ?? 5000);
    const delay = base / 2 + Math.random() * (base / 2);
    this.#attempt++;
    setTimeout(() => {
      if (this.#closed) return;
      this.#connect().then(
        async () => {
          for (const s of this.#subs) await this.#resubscribe(s, s.lastPosition).catch(() => undefined);
          this.emit('reconnect');
        },
        () => this.#scheduleReconnect(),
      );
    }, delay).unref();
  }

  #failPending(e: Error): void {
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.#pending.delete(id);
    }
  }

  #onMessage(text: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    for (const m of Array.isArray(msg) ? msg : [msg]) {
      if (m && typeof m === 'object' && 'id' in m && m.id !== null && ('result' in m || 'error' in m)) {
        const p = this.#pending.get(m.id as number);
        if (!p) continue;
        this.#pending.delete(m.id as number);
        clearTimeout(p.timer);
        if ('error' in m) p.reject(ProtocolError.fromObject(m.error as RpcErrorObject));
        else p.resolve(m.result);
      } else if (m && typeof m === 'object' && 'method' in m) {
        this.emit('notification', m);
        this.#route(m as RpcNotification);
      } else if (m && typeof m === 'object' && 'error' in m) {
        this.emit('notification', m);
      }
    }
  }

  #route(n: RpcNotification): void {
    const p = n.params as { subscriptionId?: string; position?: number; event?: ActorEvent; lastPosition?: number };
    if (n.method !== SUBSCRIPTION_EVENT && n.method !== SUBSCRIPTION_OVERFLOW) return;
    const sub = p.subscriptionId ? this.#byServerId.get(p.subscriptionId) : undefined;
    if (!sub) {
      this.emit('unrouted', n);
      return;
    }
    if (n.method === SUBSCRIPTION_OVERFLOW) {
      // The server dropped us for being slow: resume from what we have.
      this.#byServerId.delete(sub.id);
      void this.#resubscribe(sub, sub.lastPosition).catch(() => undefined);
      return;
    }
    if (p.position === undefined || !p.event || p.position <= sub.lastPosition) return;
    sub.lastPosition = p.position;
    sub.handler(p.event, p.position);
  }
}

/** Connects to a Troupe server and resolves with an open client. */
export function connect(url: string, opts: ClientOptions = {}): Promise<TroupeClient> {
  return new TroupeClient(url, opts).open();
}

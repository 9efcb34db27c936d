import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Logger } from '../logger.js';

/** Options of {@link Bus}. */
export interface BusOptions {
  /** The Redis every node of the cluster shares for messages. */
  url: string;
  /** This node's id: requests for it arrive on its own channel. */
  nodeId: string;
  /** Prefix of every channel (one per cluster, default `troupe`). */
  prefix?: string;
  /** How long a request waits for its reply before UNAVAILABLE (default 5 000 ms). */
  requestTimeoutMs?: number;
  log?: Logger;
}

interface Envelope {
  /** Request id; replies carry it as `re`. */
  id?: string;
  re?: string;
  from: string;
  type?: string;
  payload?: unknown;
  ok?: boolean;
  error?: { reason: string; message: string; data?: Record<string, unknown> };
}

/** Answers one request from another node. */
export type RequestHandler = (payload: unknown, from: string) => Promise<unknown>;

/**
 * Messages between the nodes of a cluster over Redis pub/sub: broadcasts on named channels and
 * request/reply to one node (its own channel). Every message is published from one connection
 * and received on one, so a node sees another node's messages in the order they were sent — a
 * forwarded call's reply never overtakes the commit it caused.
 */
export class Bus {
  readonly nodeId: string;
  #pub: Redis;
  #sub: Redis;
  #prefix: string;
  #timeoutMs: number;
  #log: Logger | undefined;
  #pending = new Map<string, { node: string; resolve: (v: unknown) => void; reject: (e: unknown) => void; timer: NodeJS.Timeout }>();
  #handlers = new Map<string, RequestHandler>();
  #listeners = new Map<string, (payload: unknown, from: string) => void>();
  #closed = false;
  #ready: Promise<void>;
  /** Called when the subscriber connection is back after a loss: broadcasts sent meanwhile are gone. */
  onReconnect: () => void = () => {};

  constructor(opts: BusOptions) {
    this.nodeId = opts.nodeId;
    this.#prefix = opts.prefix ?? 'troupe';
    this.#timeoutMs = opts.requestTimeoutMs ?? 5_000;
    this.#log = opts.log;
    const redisOpts = { maxRetriesPerRequest: 2, enableOfflineQueue: true, lazyConnect: false };
    // A Redis that stops answering fails commands after a while instead of stalling every caller.
    this.#pub = new Redis(opts.url, { ...redisOpts, commandTimeout: Math.min(2_000, this.#timeoutMs) });
    this.#sub = new Redis(opts.url, redisOpts);
    for (const c of [this.#pub, this.#sub]) c.on('error', (e) => this.#log?.debug({ err: e }, 'cluster bus connection error'));
    this.#sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.#onMessage(channel.toString(), message));
    this.#ready = this.#sub.subscribe(this.#channel(`node:${this.nodeId}`)).then(() => undefined);
    let connected = false;
    this.#sub.on('ready', () => {
      if (connected && !this.#closed) this.onReconnect();
      connected = true;
    });
  }

  /** Resolves once this node receives requests. */
  ready(): Promise<void> {
    return this.#ready;
  }

  /** The Redis connection used for publishing (also for plain commands of other cluster parts). */
  get redis(): Redis {
    return this.#pub;
  }

  #channel(name: string): string {
    return `${this.#prefix}:${name}`;
  }

  /** Answers requests of a type from other nodes; a thrown ProtocolError travels back as it is. */
  handle(type: string, handler: RequestHandler): void {
    this.#handlers.set(type, handler);
  }

  /** The handler answering a request type, if any (to wrap it). */
  handler(type: string): RequestHandler | undefined {
    return this.#handlers.get(type);
  }

  /** Listens to a broadcast channel (messages this node published itself are not delivered). */
  async listen(name: string, listener: (payload: unknown, from: string) => void): Promise<void> {
    this.#listeners.set(this.#channel(name), listener);
    await this.#sub.subscribe(this.#channel(name));
  }

  /** Publishes to every node listening on a channel. */
  broadcast(name: string, payload: unknown): void {
    if (this.#closed) return;
    const env: Envelope = { from: this.nodeId, payload };
    this.#pub.publish(this.#channel(name), JSON.stringify(env)).catch((e: unknown) => this.#log?.warn({ err: e, channel: name }, 'cluster broadcast failed'));
  }

  /**
   * Sends a request to one node and resolves with its reply. Rejects with the node's
   * ProtocolError, or with UNAVAILABLE when it does not answer within the timeout.
   */
  request<T>(node: string, type: string, payload: unknown, timeoutMs = this.#timeoutMs): Promise<T> {
    if (this.#closed) return Promise.reject(new ProtocolError('UNAVAILABLE', 'This node is shutting down; retry on another connection.', { retryAfterMs: 1000 }));
    const id = randomUUID();
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        // The node got the request and may have applied it: the caller must not assume either way.
        reject(
          new ProtocolError(
            'UNAVAILABLE',
            `Node ${node} did not answer within ${timeoutMs} ms; the call may or may not have been applied, so read the state before retrying (a node that stopped hands its actors over once its leases expire).`,
            { retryAfterMs: 500, outcome: 'unknown' },
          ),
        );
      }, timeoutMs);
      this.#pending.set(id, { node, resolve: resolve as (v: unknown) => void, reject, timer });
      const env: Envelope = { id, from: this.nodeId, type, payload };
      this.#pub.publish(this.#channel(`node:${node}`), JSON.stringify(env)).then(
        (receivers) => {
          // Nobody listens on that node's channel: it is gone, no need to wait for the timeout.
          if (receivers === 0 && this.#pending.delete(id)) {
            clearTimeout(timer);
            reject(new ProtocolError('UNAVAILABLE', `Node ${node} is not reachable; its actors move once its leases expire; retry.`, { retryAfterMs: 500, ownerMoving: true }));
          }
        },
        (e: unknown) => {
          if (!this.#pending.delete(id)) return;
          clearTimeout(timer);
          reject(new ProtocolError('UNAVAILABLE', `The cluster's Redis did not take the message (${(e as Error).message}); retry.`, { retryAfterMs: 500 }));
        },
      );
    });
  }

  #onMessage(channel: string, raw: Buffer): void {
    let env: Envelope;
    try {
      env = JSON.parse(raw.toString('utf8')) as Envelope;
    } catch (e) {
      this.#log?.warn({ err: e, channel }, 'unreadable cluster message dropped');
      return;
    }
    if (env.from === this.nodeId && env.re === undefined && env.id === undefined) return;
    if (env.re !== undefined) return this.#onReply(env);
    if (env.id !== undefined) return void this.#onRequest(env);
    this.#listeners.get(channel)?.(env.payload, env.from);
  }

  #onReply(env: Envelope): void {
    const p = this.#pending.get(env.re!);
    if (!p) return;
    this.#pending.delete(env.re!);
    clearTimeout(p.timer);
    if (env.ok) p.resolve(env.payload);
    else {
      const err = env.error!;
      p.reject(new ProtocolError(err.reason as never, err.message, err.data ?? {}));
    }
  }

  async #onRequest(env: Envelope): Promise<void> {
    const handler = this.#handlers.get(env.type ?? '');
    let reply: Envelope;
    try {
      if (!handler) throw new ProtocolError('INTERNAL', `Node ${this.nodeId} does not handle ${env.type}.`);
      reply = { re: env.id, from: this.nodeId, ok: true, payload: await handler(env.payload, env.from) };
    } catch (e) {
      const pe = isProtocolError(e) ? e : new ProtocolError('INTERNAL', `Node ${this.nodeId} failed on ${env.type}: ${(e as Error).message}`);
      if (!isProtocolError(e)) this.#log?.error({ err: e, type: env.type }, 'cluster request failed');
      reply = { re: env.id, from: this.nodeId, ok: false, error: { reason: pe.reason, message: pe.message, data: pe.data } };
    }
    if (this.#closed) return;
    await this.#pub.publish(this.#channel(`node:${env.from}`), JSON.stringify(reply)).catch((e: unknown) => this.#log?.warn({ err: e }, 'cluster reply failed'));
  }

  /**
   * Fails at once the requests waiting for a node that left the cluster (it stopped
   * heartbeating), instead of letting each wait for its timeout.
   */
  failPending(node: string): void {
    for (const [id, p] of this.#pending) {
      if (p.node !== node) continue;
      this.#pending.delete(id);
      clearTimeout(p.timer);
      p.reject(
        new ProtocolError('UNAVAILABLE', `Node ${node} left the cluster before answering; the call may or may not have been applied, so read the state before retrying.`, {
          retryAfterMs: 500,
          outcome: 'unknown',
        }),
      );
    }
  }

  /** Fails pending requests and closes both connections; safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      p.reject(new ProtocolError('UNAVAILABLE', 'This node is shutting down; retry on another connection.', { retryAfterMs: 1000 }));
      this.#pending.delete(id);
    }
    this.#sub.disconnect();
    await this.#pub.quit().catch(() => this.#pub.disconnect());
  }
}

import type { InspectionEvent, Snapshot } from 'xstate';
import { WebSocket } from 'ws';
import type { ActorAddress, ActorKind } from '../../actors/ActorKind.js';
import { streamOf } from '../../actors/ActorKind.js';
import type { Logger } from '../logger.js';
import { statelyConfig } from './stately.js';

/** Options of {@link StatelyInspector}; durations in milliseconds, sizes in bytes. */
export interface StatelyInspectorOptions {
  /** WebSocket URL of the inspector endpoint, e.g. `ws://127.0.0.1:8080` (`@statelyai/inspect/server`). */
  url: string;
  /** The kinds of actor the server hosts: their machines are sent as each actor's definition. */
  kinds: readonly ActorKind[];
  log?: Logger;
  /** Wait before connecting again after the connection failed or closed (default 2 000). */
  reconnectMs?: number;
  /** Unsent bytes on the socket beyond which events are dropped instead of queued (default 4 MiB). */
  maxBufferedBytes?: number;
  /** Events kept while the inspector is not connected; the oldest are dropped beyond it (default 1 000). */
  maxPending?: number;
}

/** The formatting half of `@statelyai/inspect`'s inspector: what {@link StatelyInspector} calls. */
interface StatelyFormatter {
  actor(actor: ActorRef, snapshot?: InspectedSnapshot): void;
  event(actor: ActorRef, event: { type: string }): void;
  snapshot(actor: ActorRef, snapshot: InspectedSnapshot, info?: { event?: { type: string } }): void;
}

/** What `@statelyai/inspect` reads of an actor: its session id and, for its definition, `logic.config`. */
interface ActorRef {
  sessionId: string;
  id: string;
  logic: { config: unknown };
  send(): void;
  getSnapshot(): undefined;
}

/** A snapshot as the inspector shows it: JSON, without XState's machine and children references. */
interface InspectedSnapshot {
  status?: Snapshot<unknown>['status'];
  value?: unknown;
  context?: unknown;
  output?: unknown;
}

type Pending = [method: 'actor' | 'event' | 'snapshot', address: ActorAddress, payload: InspectedSnapshot | { type: string }, info?: { event?: { type: string } }];

function inspected(s: Snapshot<unknown>): InspectedSnapshot {
  const m = s as Snapshot<unknown> & { value?: unknown; context?: unknown };
  return { status: m.status, value: m.value, context: m.context, ...(m.status === 'done' ? { output: m.output } : {}) };
}

/**
 * Streams Troupe's live actors to a Stately inspector over a WebSocket: each actor appears when it
 * is activated (with its current state and its machine), then every event it accepts and the
 * snapshot after it, and a `stopped` snapshot when it is passivated. Each actor's session id is
 * its stream, `tenant/kind/id`, so an actor keeps its identity across activations.
 *
 * Messages are the events of `@statelyai/inspect`'s own inspector (`createInspector`, loaded only
 * when an inspector is configured), one JSON text frame each: what `createWebSocketInspector`
 * sends and `@statelyai/inspect/server` relays to the inspector page. The socket itself is
 * Troupe's: the library's WebSocket client schedules reconnections that `stop()` cannot cancel
 * (a closed server would keep reconnecting) and never bounds its send buffer. Here a closed
 * inspector costs nothing: reconnection timers do not hold the process, and events that would
 * queue beyond `maxBufferedBytes`, or arrive while disconnected beyond `maxPending`, are dropped
 * and counted. A debugging aid: the inspector receives event payloads and contexts in full.
 *
 * @example
 * ```ts
 * const inspector = new StatelyInspector({ url: 'ws://127.0.0.1:8080', kinds: actorKinds });
 * const host = new ActorHost({ ...opts, inspect: inspector.inspect });
 * await inspector.close();
 * ```
 */
export class StatelyInspector {
  #opts: StatelyInspectorOptions;
  #log: Logger | undefined;
  #configs = new Map<string, unknown>();
  #formatter: StatelyFormatter | null = null;
  #loading: Promise<void>;
  /** Calls made before the library was loaded, replayed in order once it is. */
  #early: Pending[] = [];
  #ws: WebSocket | null = null;
  #pending: string[] = [];
  #retry: NodeJS.Timeout | null = null;
  #closed = false;
  #dropped = 0;
  #connectedOnce = false;
  #warned = false;

  constructor(opts: StatelyInspectorOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#connect();
    this.#loading = import('@statelyai/inspect').then(
      ({ createInspector }) => {
        this.#formatter = createInspector({ send: (e) => this.#send(e) }) as unknown as StatelyFormatter;
        const early = this.#early;
        this.#early = [];
        for (const call of early) this.#call(...call);
      },
      (e: unknown) => {
        this.#log?.error({ err: e }, 'could not load @statelyai/inspect: live inspection is off');
        void this.close();
      },
    );
  }

  /** Resolves once `@statelyai/inspect` is loaded (events before are queued, not lost). */
  ready(): Promise<void> {
    return this.#loading;
  }

  /** Events dropped so far: the inspector was away too long, or could not keep up. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Whether the socket to the inspector is open now. */
  get connected(): boolean {
    return this.#ws?.readyState === WebSocket.OPEN;
  }

  /** The hook for {@link ActorHost}'s `inspect` option. */
  readonly inspect = (event: InspectionEvent, address: ActorAddress): void => {
    if (this.#closed) return;
    try {
      switch (event.type) {
        case '@xstate.actor':
          return this.#call('actor', address, inspected(event.actorRef.getSnapshot() as Snapshot<unknown>));
        case '@xstate.event':
          return this.#call('event', address, event.event);
        case '@xstate.snapshot':
          return this.#call('snapshot', address, inspected(event.snapshot), { event: event.event });
      }
    } catch (e) {
      // Called inside an actor's turn: a fault here costs the inspector an event, never the turn.
      this.#dropped++;
      this.#log?.debug({ err: e }, 'stately inspector could not send an event');
    }
  };

  /** Stops sending and closes the socket; safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = null;
    const ws = this.#ws;
    this.#ws = null;
    this.#pending = [];
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      ws.once('close', () => resolve());
      // Closing a socket that is still connecting is an error for `ws`; it is expected here.
      ws.on('error', () => {});
      if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
      else ws.close(1001, 'troupe shutting down');
    });
  }

  #call(...[method, address, payload, info]: Pending): void {
    const f = this.#formatter;
    if (!f) {
      this.#early.push([method, address, payload, info]);
      if (this.#early.length > (this.#opts.maxPending ?? 1_000)) {
        this.#early.shift();
        this.#dropped++;
      }
      return;
    }
    const ref = this.#ref(address);
    if (method === 'actor') f.actor(ref, payload as InspectedSnapshot);
    else if (method === 'event') f.event(ref, payload as { type: string });
    else f.snapshot(ref, payload as InspectedSnapshot, info);
  }

  #ref(address: ActorAddress): ActorRef {
    let config = this.#configs.get(address.kind);
    if (config === undefined) {
      const kind = this.#opts.kinds.find((k) => k.kind === address.kind);
      config = kind ? statelyConfig(kind.machine) : { id: address.kind };
      this.#configs.set(address.kind, config);
    }
    const stream = streamOf(address);
    return { sessionId: stream, id: stream, logic: { config }, send() {}, getSnapshot: () => undefined };
  }

  #send(event: { sessionId: string; rootId?: string }): void {
    // Every Troupe actor is the root of its own XState system, as the library's client reports
    // a root actor; its explicit-call API would say `anonymous` or nothing.
    event.rootId = event.sessionId;
    let text: string;
    try {
      text = JSON.stringify(event);
    } catch {
      this.#dropped++;
      return;
    }
    const ws = this.#ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      if (ws.bufferedAmount > (this.#opts.maxBufferedBytes ?? 4 * 1024 * 1024)) this.#dropped++;
      else ws.send(text);
      return;
    }
    this.#pending.push(text);
    if (this.#pending.length > (this.#opts.maxPending ?? 1_000)) {
      this.#pending.shift();
      this.#dropped++;
    }
  }

  #connect(): void {
    if (this.#closed) return;
    const ws = new WebSocket(this.#opts.url);
    this.#ws = ws;
    ws.on('open', () => {
      this.#connectedOnce = true;
      this.#warned = false;
      this.#log?.info({ url: this.#opts.url }, 'stately inspector connected');
      const pending = this.#pending;
      this.#pending = [];
      for (const text of pending) ws.send(text);
    });
    // Nothing is expected from the inspector; a 'close' always follows an 'error'.
    ws.on('error', (e) => {
      if (!this.#warned) this.#log?.warn({ url: this.#opts.url, err: e }, `stately inspector unreachable; retrying every ${this.#opts.reconnectMs ?? 2_000} ms`);
      this.#warned = true;
    });
    ws.on('close', () => {
      if (this.#ws !== ws || this.#closed) return;
      if (this.#connectedOnce && !this.#warned) this.#log?.warn({ url: this.#opts.url }, 'stately inspector disconnected');
      this.#warned = true;
      this.#retry = setTimeout(() => {
        this.#retry = null;
        this.#connect();
      }, this.#opts.reconnectMs ?? 2_000);
      this.#retry.unref();
    });
  }
}

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { isMethodName } from '../../protocol/methods.js';

/** What the metrics read at scrape time instead of being told on every change. */
export interface MetricsSources {
  /** Open WebSocket connections. */
  connections: () => number;
  /** Actors in memory, by kind. */
  activeActors: () => Iterable<[kind: string, count: number]>;
  /** Jobs queued in actor mailboxes (not counting the ones running). */
  mailboxDepth: () => number;
  /** Circuit breaker state per outbound dependency: 0 closed, 1 open, 2 half-open. */
  breakers?: () => Iterable<[dependency: string, state: number]>;
}

/** Which bound refused a call with BUSY. */
export type BusyLimit = 'mailbox' | 'tenant';

/** Options of {@link Metrics}. */
export interface MetricsOptions {
  /** Also collect prom-client's default Node process metrics (default false). */
  defaultMetrics?: boolean;
}

/** The method label for a request: only catalogue names, so clients cannot mint label values. */
export function methodLabel(method: string): string {
  return isMethodName(method) ? method : 'unknown';
}

/** Per-method children, cached so the hot path does not hash label sets on every message. */
interface MethodMetrics {
  messages: Counter.Internal;
  duration: Histogram.Internal<'method'>;
}

/**
 * The Prometheus metrics of one server, in a registry of its own (not prom-client's global one)
 * so several servers in one process do not clash. Every name starts with `troupe_`.
 *
 * @example
 * ```ts
 * const metrics = new Metrics({ connections: () => n, activeActors: () => [], mailboxDepth: () => 0 });
 * metrics.message('task.create', 0.0012);
 * const text = await metrics.registry.metrics();
 * ```
 */
export class Metrics {
  /** The registry to scrape: `await registry.metrics()`, with `registry.contentType`. */
  readonly registry = new Registry();
  #messages: Counter<'method'>;
  #errors: Counter<'method' | 'code'>;
  #duration: Histogram<'method'>;
  #passivated: Counter<'kind'>;
  #storeCommit: Histogram;
  #timerLag: Histogram;
  #overflows: Counter;
  #fenced: Counter;
  #busy: Counter<'limit'>;
  #byMethod = new Map<string, MethodMetrics>();

  constructor(sources: MetricsSources, opts: MetricsOptions = {}) {
    const registers = [this.registry];
    if (opts.defaultMetrics ?? false) collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'troupe_connections',
      help: 'Open WebSocket connections.',
      registers,
      collect() {
        this.set(sources.connections());
      },
    });
    this.#messages = new Counter({
      name: 'troupe_messages_total',
      help: 'JSON-RPC requests and notifications handled, by method ("unknown" for names not in the catalogue).',
      labelNames: ['method'],
      registers,
    });
    this.#errors = new Counter({
      name: 'troupe_errors_total',
      help: 'Error responses, by method and error reason.',
      labelNames: ['method', 'code'],
      registers,
    });
    this.#duration = new Histogram({
      name: 'troupe_handler_duration_seconds',
      help: 'Time from a request being decoded to its answer being ready, by method.',
      labelNames: ['method'],
      // 0.1 ms to 1 s: a turn is well under a millisecond in memory, a group commit a few.
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    new Gauge({
      name: 'troupe_actors_active',
      help: 'Actors in memory, by kind.',
      labelNames: ['kind'],
      registers,
      collect() {
        // Reset first, so a kind with no actors left reads 0 rather than its last value.
        this.reset();
        for (const [kind, n] of sources.activeActors()) this.set({ kind }, n);
      },
    });
    this.#passivated = new Counter({
      name: 'troupe_actors_passivated_total',
      help: 'Actors removed from memory (idle, over the limit, settled or never created), by kind.',
      labelNames: ['kind'],
      registers,
    });
    new Gauge({
      name: 'troupe_mailbox_depth',
      help: 'Jobs waiting in actor mailboxes, summed over all actors.',
      registers,
      collect() {
        this.set(sources.mailboxDepth());
      },
    });
    this.#storeCommit = new Histogram({
      name: 'troupe_store_commit_duration_seconds',
      help: 'Time from an actor handing its commit to the store until the store confirms it.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
    this.#timerLag = new Histogram({
      name: 'troupe_timer_lag_seconds',
      help: 'How late durable timers fired after their due time.',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.#overflows = new Counter({
      name: 'troupe_subscription_overflows_total',
      help: 'Subscriptions dropped because their connection could not keep up.',
      registers,
    });
    this.#fenced = new Counter({
      name: 'troupe_stale_writes_rejected_total',
      help: 'Commits the store refused because another node had taken the actor over (fencing epoch), by actor kind.',
      labelNames: ['kind'],
      registers,
    });
    new Gauge({
      name: 'troupe_breaker_state',
      help: 'Circuit breaker state per outbound dependency: 0 closed, 1 open, 2 half-open.',
      labelNames: ['dependency'],
      registers,
      collect() {
        for (const [dependency, state] of sources.breakers?.() ?? []) this.set({ dependency }, state);
      },
    });
    this.#busy = new Counter({
      name: 'troupe_busy_total',
      help: 'Calls refused with BUSY, by the bound that was full: an actor mailbox or a tenant bulkhead.',
      labelNames: ['limit'],
      registers,
    });
    // Both series exist from the start, so a rate() over them is defined before the first refusal.
    for (const limit of ['mailbox', 'tenant'] as const) this.#busy.inc({ limit }, 0);
  }

  /** Counts one handled message and the time it took. `method` may be any client-sent string. */
  message(method: string, seconds: number): void {
    const m = this.#method(method);
    m.messages.inc();
    m.duration.observe(seconds);
  }

  /** Counts one message refused before it reached a handler (no latency to report). */
  refused(method: string, code: string): void {
    this.#method(method).messages.inc();
    this.error(method, code);
  }

  /** Counts one error response; `code` is the error's reason name, e.g. `NOT_FOUND`. */
  error(method: string, code: string): void {
    this.#errors.inc({ method: methodLabel(method), code });
  }

  /** Counts an actor of this kind leaving memory. */
  passivated(kind: string): void {
    this.#passivated.inc({ kind });
  }

  /** Records how long a store commit took. */
  storeCommit(seconds: number): void {
    this.#storeCommit.observe(seconds);
  }

  /** Records how late a timer fired. */
  timerLag(seconds: number): void {
    this.#timerLag.observe(Math.max(0, seconds));
  }

  /** Counts a subscription dropped for overflow. */
  overflow(): void {
    this.#overflows.inc();
  }

  /** Counts a commit refused by the fencing epoch (this node's write was stale). */
  fenced(kind: string): void {
    this.#fenced.inc({ kind });
  }

  /** Counts a call refused with BUSY because `limit` was full. */
  busy(limit: BusyLimit): void {
    this.#busy.inc({ limit });
  }

  #method(method: string): MethodMetrics {
    const label = methodLabel(method);
    let m = this.#byMethod.get(label);
    if (!m) {
      m = { messages: this.#messages.labels(label), duration: this.#duration.labels(label) };
      this.#byMethod.set(label, m);
    }
    return m;
  }
}

import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  TaskCancelledError,
  circuitBreaker,
  handleWhen,
  retry,
  wrap,
  type CircuitBreakerPolicy,
  type IPolicy,
} from 'cockatiel';
import { STORE_READS, type Store } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';

/** The state of a circuit breaker, as `/readyz` and logs name it. */
export type CircuitStateName = 'closed' | 'open' | 'half-open';

/** What the breaker of a dependency looks like now. */
export interface CircuitSnapshot {
  state: CircuitStateName;
  /** While open: milliseconds until a trial call is let through. */
  retryAfterMs?: number;
  /** While open: the failure that opened it. */
  lastFailure?: string;
}

/** Options of {@link ResilientStore}; durations in milliseconds. */
export interface ResilientStoreOptions {
  /** Longest wait for a read or a ping (default 5 000). */
  readTimeoutMs?: number;
  /** Longest wait for a commit or any other write, whose outcome is then unknown (default 10 000). */
  writeTimeoutMs?: number;
  /** Retries of a read that failed quickly; a read that timed out is not retried (default 2). */
  readRetries?: number;
  /** Consecutive failures that open the breaker (default 5). */
  breakerFailures?: number;
  /** How long the breaker stays open before one trial call is let through (default 2 000). */
  halfOpenAfterMs?: number;
  /**
   * True when an error means the store is failing (it counts toward the breaker and reads are
   * retried), false when it refuses the input. Default: everything except ProtocolErrors and
   * malformed cursors.
   */
  isFault?: (error: unknown) => boolean;
  /** Called when the breaker changes state. */
  onStateChange?: (snapshot: CircuitSnapshot) => void;
}

/**
 * Store methods that only read, so retrying them is safe. Everything else (commits, other
 * writes, and methods this list does not know yet) is never retried: after a failure its outcome
 * is unknown.
 */
const READS = new Set<string>(STORE_READS);

/** Methods passed straight through: closing must flush, not be cut short or refused. */
const DIRECT = new Set<string>(['close']);

/** Retry hint of a call that timed out. */
const TIMEOUT_RETRY_AFTER_MS = 500;

/** The default {@link ResilientStoreOptions.isFault}. */
export function isStoreFault(error: unknown): boolean {
  if (error instanceof ProtocolError) return false;
  if (error instanceof Error && error.message.startsWith('invalid cursor')) return false;
  return true;
}

const stateNames: Record<CircuitState, CircuitStateName> = {
  [CircuitState.Closed]: 'closed',
  [CircuitState.Open]: 'open',
  [CircuitState.HalfOpen]: 'half-open',
  [CircuitState.Isolated]: 'open',
};

// Declaration merging: instances answer every Store method, through the Proxy the constructor
// returns, without this class listing them (see the class comment).
export interface ResilientStore extends Store {}

/**
 * A {@link Store} guarded by cockatiel's retry and circuit-breaker policies and a timeout per
 * call, so a failing or hanging store makes calls fail fast with a clear error instead of piling
 * up:
 *
 * - every call has a timeout (reads and pings `readTimeoutMs`, commits and other writes
 *   `writeTimeoutMs`); a timed-out call rejects with UNAVAILABLE;
 * - reads that fail are retried with jittered exponential back-off; commits and other writes are
 *   never retried, because after a failure their outcome is unknown;
 * - one circuit breaker for the whole store opens after `breakerFailures` consecutive failures;
 *   while open every call rejects at once with UNAVAILABLE, `data.retryAfterMs` and
 *   `data.circuit: 'open'` (nothing was attempted); after `halfOpenAfterMs` one trial call is let
 *   through and its success closes the breaker.
 *
 * Every method is delegated generically through a Proxy rather than written out, so methods
 * added to the Store port later keep working unchanged: they get the write treatment (timeout
 * and breaker, no retry) until {@link READS} lists them. All Store methods are async, as the
 * port requires.
 *
 * @example
 * ```ts
 * const store = new ResilientStore(new SqliteStore({ path }), { breakerFailures: 5 });
 * await store.getView('acme', 'task', 't1'); // timed out, retried, behind the breaker
 * store.circuit; // { state: 'closed' }
 * ```
 */
export class ResilientStore {
  /** The store being guarded. */
  readonly inner: Store;
  #breaker: CircuitBreakerPolicy;
  #read: IPolicy;
  #readTimeoutMs: number;
  #writeTimeoutMs: number;
  #halfOpenAfterMs: number;
  #openedAt = 0;
  #lastFailure: string | undefined;
  #threshold: number;
  #methods = new Map<PropertyKey, unknown>();

  constructor(inner: Store, opts: ResilientStoreOptions = {}) {
    this.inner = inner;
    this.#readTimeoutMs = opts.readTimeoutMs ?? 5_000;
    this.#writeTimeoutMs = opts.writeTimeoutMs ?? 10_000;
    this.#halfOpenAfterMs = opts.halfOpenAfterMs ?? 2_000;
    this.#threshold = opts.breakerFailures ?? 5;
    const isFault = opts.isFault ?? isStoreFault;
    this.#breaker = circuitBreaker(
      handleWhen((e) => isFault(e)),
      { breaker: new ConsecutiveBreaker(this.#threshold), halfOpenAfter: this.#halfOpenAfterMs },
    );
    this.#breaker.onBreak((reason) => {
      this.#openedAt = Date.now();
      this.#lastFailure = 'error' in reason ? describe(reason.error) : 'held open';
    });
    this.#breaker.onStateChange(() => opts.onStateChange?.(this.circuit));
    // A timed-out read already cost the caller the whole timeout; an open breaker is final.
    const retryable = handleWhen((e) => isFault(e) && !(e instanceof TaskCancelledError) && !(e instanceof BrokenCircuitError));
    const readRetry = retry(retryable, {
      maxAttempts: opts.readRetries ?? 2,
      backoff: new ExponentialBackoff({ initialDelay: 20, maxDelay: 500 }),
    });
    this.#read = wrap(readRetry, this.#breaker);

    // The instance itself answers its own members; every other property is the inner store's,
    // its methods wrapped once and cached.
    return new Proxy(this, {
      get: (target, prop) => {
        const method = this.#methods.get(prop);
        if (method) return method;
        if (prop in target) {
          const own = Reflect.get(target, prop, target);
          return typeof own === 'function' ? own.bind(target) : own;
        }
        return this.#member(prop);
      },
      has: (target, prop) => prop in target || prop in inner,
    });
  }

  /** The breaker's state now. */
  get circuit(): CircuitSnapshot {
    const state = stateNames[this.#breaker.state];
    if (state !== 'open') return { state };
    return {
      state,
      retryAfterMs: this.#retryAfterMs(),
      ...(this.#lastFailure === undefined ? {} : { lastFailure: this.#lastFailure }),
    };
  }

  /** The breaker's state as a number for a gauge: 0 closed, 1 open, 2 half-open. */
  get circuitGauge(): number {
    const state = this.#breaker.state;
    return state === CircuitState.Isolated ? CircuitState.Open : state;
  }

  #member(prop: PropertyKey): unknown {
    const inner = this.inner as unknown as Record<PropertyKey, unknown>;
    const value = inner[prop];
    if (typeof value !== 'function') return value;
    let method = this.#methods.get(prop);
    if (method) return method;
    const fn = value as (...args: unknown[]) => Promise<unknown>;
    const name = String(prop);
    if (typeof prop === 'symbol' || DIRECT.has(name)) {
      method = fn.bind(this.inner);
    } else {
      // A ping is not retried: readiness reports what the store does now.
      const policy = READS.has(name) ? this.#read : this.#breaker;
      const timeoutMs = READS.has(name) || name === 'ping' ? this.#readTimeoutMs : this.#writeTimeoutMs;
      method = (...args: unknown[]) =>
        policy.execute(() => withTimeout(fn.apply(this.inner, args), timeoutMs)).catch((e: unknown) => {
          throw this.#translate(e, name, timeoutMs);
        });
    }
    this.#methods.set(prop, method);
    return method;
  }

  /** Turns cockatiel's refusals into protocol errors; the store's own errors pass unchanged. */
  #translate(e: unknown, method: string, timeoutMs: number): unknown {
    if (e instanceof BrokenCircuitError) {
      const retryAfterMs = this.#retryAfterMs();
      return new ProtocolError(
        'UNAVAILABLE',
        `The store is unavailable: ${this.#threshold} calls in a row failed (last: ${this.#lastFailure ?? 'unknown'}), so calls are refused for now; retry in ${retryAfterMs} ms.`,
        { retryAfterMs, dependency: 'store', circuit: 'open' },
      );
    }
    if (e instanceof TaskCancelledError) {
      // A write that timed out may still land: say so, so nobody retries it blindly.
      const read = READS.has(method);
      return new ProtocolError(
        'UNAVAILABLE',
        read
          ? `The store did not answer ${method} within ${timeoutMs} ms; retry shortly.`
          : `The store did not answer ${method} within ${timeoutMs} ms; it may or may not have been applied, so check before retrying.`,
        { retryAfterMs: TIMEOUT_RETRY_AFTER_MS, dependency: 'store', timeoutMs, ...(read ? {} : { outcome: 'unknown' }) },
      );
    }
    return e;
  }

  #retryAfterMs(): number {
    return Math.max(1, this.#openedAt + this.#halfOpenAfterMs - Date.now());
  }
}

/**
 * Rejects with cockatiel's TaskCancelledError if `work` takes longer than `ms`; the late answer is
 * dropped (the Store port takes no abort signal). Not cockatiel's `timeout` policy: it builds an
 * AbortController and signal listeners per call, about 6-10 µs where this costs well under 1 µs,
 * more than a SQLite read itself.
 */
function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TaskCancelledError(`Operation timed out after ${ms}ms`)), ms);
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

function describe(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  // Quoted in client-facing messages: keep it short.
  return message.length > 200 ? `${message.slice(0, 200)}…` : message;
}

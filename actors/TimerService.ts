import type { ActorHost } from './ActorHost.js';
import type { OutboxRecord, TimerRecord } from './Store.js';

/** Identifies one scheduling of a timer. */
function timerKey(t: TimerRecord): string {
  return `${t.stream}#${t.name}#${t.fireAt}`;
}

/** setTimeout cannot wait longer than this. */
const MAX_DELAY_MS = 2_147_483_647;

/** Options of {@link TimerService}; durations in milliseconds. */
export interface TimerServiceOptions {
  host: ActorHost;
  /** Timers fetched per wake (default 256). */
  batch?: number;
  /** Re-check the store at least this often, for timers written by other processes (default 30 000). */
  pollMs?: number;
  now?: () => number;
  /** Called with how late each timer fired (for metrics). */
  onFired?: (lagMs: number) => void;
  /**
   * Delivers a due timer (default: to its actor, `host.fireTimer`). A server routes some timers
   * through services that decide what the actor is told (assignment, lease renewal); whatever it
   * does must consume the timer or throw, in which case the timer is tried again later (after a
   * growing pause, or after the error's own numeric `retryAfterMs`, which is not counted as a
   * failure: another node of a cluster fires it).
   */
  deliver?: (timer: TimerRecord) => Promise<void>;
}

/**
 * Fires durable timers: they live in the store, so a timer scheduled before a crash fires after
 * the restart. One in-memory wake-up is armed for the earliest timer; scheduling an earlier one
 * re-arms it.
 */
export class TimerService {
  #host: ActorHost;
  #batch: number;
  #pollMs: number;
  #now: () => number;
  #handle: NodeJS.Timeout | null = null;
  #wakeAt = Number.POSITIVE_INFINITY;
  #inFlight = new Set<string>();
  /** Timers whose delivery failed: how often, and when to try again (exponential back-off). */
  #backoff = new Map<string, { failures: number; retryAt: number }>();
  #running = false;
  #closed = false;
  #opts: TimerServiceOptions;

  constructor(opts: TimerServiceOptions) {
    this.#opts = opts;
    this.#host = opts.host;
    this.#batch = opts.batch ?? 256;
    this.#pollMs = opts.pollMs ?? 30_000;
    this.#now = opts.now ?? Date.now;
  }

  /** Arms the first wake-up from the store. */
  async start(): Promise<void> {
    await this.#rearm();
  }

  /** Tells the service a timer was scheduled for `fireAt`, so it can wake earlier. */
  scheduled(fireAt: number): void {
    if (fireAt < this.#wakeAt) this.#arm(fireAt);
  }

  /** Stops; safe to call twice. */
  close(): void {
    this.#closed = true;
    if (this.#handle) clearTimeout(this.#handle);
    this.#handle = null;
  }

  #arm(at: number): void {
    if (this.#closed) return;
    if (this.#handle) clearTimeout(this.#handle);
    const next = Math.min(at, this.#now() + this.#pollMs);
    this.#wakeAt = next;
    // A store that fails while timers are read must not crash the process: try again shortly.
    this.#handle = setTimeout(
      () => void this.#fire().catch(() => this.#arm(this.#now() + 1000)),
      Math.min(Math.max(0, next - this.#now()), MAX_DELAY_MS),
    );
    this.#handle.unref();
  }

  async #rearm(): Promise<void> {
    if (this.#closed) return;
    let next = (await this.#host.store.nextTimerAt()) ?? Number.POSITIVE_INFINITY;
    // A due timer that is backing off must not make the service spin: wait for its retry time.
    if (next <= this.#now() && this.#backoff.size > 0) {
      next = Math.max(next, Math.min(...[...this.#backoff.values()].map((b) => b.retryAt)));
    }
    // A timer scheduled while the store was read armed an earlier wake-up that `next` may not
    // know of: keep it.
    this.#arm(Math.min(next, this.#wakeAt));
  }

  async #fire(): Promise<void> {
    this.#handle = null;
    this.#wakeAt = Number.POSITIVE_INFINITY;
    if (this.#running || this.#closed) return;
    this.#running = true;
    try {
      for (;;) {
        const now = this.#now();
        const rows = await this.#host.store.dueTimers(now, this.#batch);
        if (rows.length < this.#batch) {
          // A complete answer: back-off entries of timers no longer due were consumed or cancelled.
          const present = new Set(rows.map(timerKey));
          for (const [key, b] of this.#backoff) if (b.retryAt <= now && !present.has(key)) this.#backoff.delete(key);
        }
        const due = rows.filter((t) => {
          const key = timerKey(t);
          return !this.#inFlight.has(key) && (this.#backoff.get(key)?.retryAt ?? 0) <= now;
        });
        await Promise.all(
          due.map(async (t) => {
            const key = timerKey(t);
            this.#inFlight.add(key);
            try {
              await (this.#opts.deliver ? this.#opts.deliver(t) : this.#host.fireTimer(t));
              this.#backoff.delete(key);
              this.#opts.onFired?.(this.#now() - t.fireAt);
            } catch (e) {
              // A delivery that says when to look again (another node fires it) is not a failure.
              const hint = (e as { retryAfterMs?: unknown }).retryAfterMs;
              if (typeof hint === 'number') {
                this.#backoff.set(key, { failures: 0, retryAt: this.#now() + hint });
                return;
              }
              // Left in the store; tried again after a growing pause (100 ms doubling to 30 s).
              const failures = (this.#backoff.get(key)?.failures ?? 0) + 1;
              this.#backoff.set(key, { failures, retryAt: this.#now() + Math.min(100 * 2 ** (failures - 1), 30_000) });
            } finally {
              this.#inFlight.delete(key);
            }
          }),
        );
        // Another page may be due; a page with nothing deliverable ends the wake (no spinning).
        if (rows.length < this.#batch || due.length === 0 || this.#closed) break;
      }
    } finally {
      this.#running = false;
    }
    await this.#rearm().catch(() => this.#arm(this.#now() + 1000));
  }
}

/**
 * Delivers outbox messages after their commit, and on start delivers what a crash left behind.
 * Delivery is at least once; the receiving actor drops duplicates by message id.
 */
export class OutboxDispatcher {
  #host: ActorHost;
  #retry: NodeJS.Timeout | null = null;
  #closed = false;

  constructor(host: ActorHost) {
    this.#host = host;
  }

  /** Delivers everything pending in the store. */
  async start(): Promise<void> {
    await this.#drainStore();
  }

  /** Delivers freshly committed records now. */
  dispatch(records: OutboxRecord[]): void {
    for (const r of records) {
      this.#host.deliver(r).catch(() => this.#later());
    }
  }

  /** Stops retrying; safe to call twice. */
  close(): void {
    this.#closed = true;
    if (this.#retry) clearTimeout(this.#retry);
  }

  #later(): void {
    if (this.#retry || this.#closed) return;
    this.#retry = setTimeout(() => {
      this.#retry = null;
      // A store that is still failing must not crash the process: try again later.
      this.#drainStore().catch(() => this.#later());
    }, 1000);
    this.#retry.unref();
  }

  async #drainStore(): Promise<void> {
    const pending = await this.#host.store.pendingOutbox(1000);
    this.dispatch(pending);
  }
}

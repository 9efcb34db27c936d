import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhen, type CircuitBreakerPolicy } from 'cockatiel';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { RateLimit, RateLimitStatus } from '../../protocol/ratelimits.js';
import type { Logger } from '../logger.js';

export { RateLimiterRes };

/**
 * One budget's counters: one fixed window of `points` per `durationSeconds` per key.
 * `consume` resolves when the points were granted and rejects with a {@link RateLimiterRes}
 * (never an Error) when the budget has too few left; `reward` gives points back; `get` reads the
 * key's counter without changing it (null: no window open).
 */
export interface Limiter {
  consume(key: string, points: number): Promise<RateLimiterRes>;
  reward(key: string, points: number): Promise<unknown>;
  get(key: string): Promise<RateLimiterRes | null>;
}

/** Where budgets are counted: the port behind {@link RateLimits}. */
export interface RateLimitBackend {
  /** What counts right now (see {@link RateLimitStatus.backend}). */
  readonly state: RateLimitStatus['backend'];
  /** The counters of one budget; `id` names it (class, scope and numbers) and prefixes its keys. */
  limiter(id: string, limit: RateLimit): Limiter;
  /** Releases connections; safe to call twice. */
  close(): Promise<void>;
}

/** Counts in this process: `rate-limiter-flexible`'s RateLimiterMemory (a Map lookup per call). */
export class MemoryRateLimitBackend implements RateLimitBackend {
  readonly state = 'memory' as const;

  limiter(id: string, limit: RateLimit): Limiter {
    return new RateLimiterMemory({ keyPrefix: id, points: limit.points, duration: limit.durationSeconds });
  }

  async close(): Promise<void> {}
}

/** Options of {@link RedisRateLimitBackend}; durations in milliseconds. */
export interface RedisRateLimitBackendOptions {
  /** `redis://[user:password@]host:port[/db]`. */
  url: string;
  log: Logger;
  /** A Redis command not answered within this long counts as a failure (default 250). */
  timeoutMs?: number;
  /** After a failure, Redis is left alone for this long before one call tries it again (default 1 000). */
  retryAfterMs?: number;
  /** Prefix of every key (default `troupe:rl:`). */
  keyPrefix?: string;
}

/**
 * Counts in Redis (`rate-limiter-flexible`'s RateLimiterRedis over ioredis), so every node that
 * shares the Redis shares the budgets.
 *
 * Redis being unreachable does not stop calls (fail open, to per-node limits): while the client
 * is not connected, and for `retryAfterMs` after a command failed or timed out (a circuit
 * breaker), each budget is counted in this process's memory instead, with the same limits. Calls
 * never wait for Redis longer than `timeoutMs`. Keys over their limit are also refused from
 * memory until their window ends, so a flood does not reach Redis.
 */
export class RedisRateLimitBackend implements RateLimitBackend {
  readonly #client: Redis;
  readonly #breaker: CircuitBreakerPolicy;
  readonly #prefix: string;
  readonly #log: Logger;
  #closed: Promise<void> | null = null;
  /** Whether the last report said Redis was in use, so each change is logged once. */
  #reportedUp: boolean | null = null;

  constructor(opts: RedisRateLimitBackendOptions) {
    this.#log = opts.log;
    this.#prefix = opts.keyPrefix ?? 'troupe:rl:';
    const timeoutMs = opts.timeoutMs ?? 250;
    this.#client = new Redis(opts.url, {
      // Fail at once while disconnected instead of queueing: the memory fallback answers.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      commandTimeout: timeoutMs,
      connectTimeout: Math.max(timeoutMs, 1_000),
      retryStrategy: (times) => Math.min(50 * times, 1_000),
    });
    this.#client.on('ready', () => this.#report(true));
    this.#client.on('close', () => this.#report(false));
    // Without a listener ioredis prints every connection error; the fallback is the handling.
    this.#client.on('error', (e: Error) => this.#log.debug({ err: e }, 'rate limit redis error'));
    this.#breaker = circuitBreaker(
      handleWhen((e) => !(e instanceof RateLimiterRes)),
      { halfOpenAfter: opts.retryAfterMs ?? 1_000, breaker: new ConsecutiveBreaker(1) },
    );
    this.#breaker.onBreak(() => this.#report(false));
    this.#breaker.onReset(() => this.#report(this.#client.status === 'ready'));
  }

  get state(): RateLimitStatus['backend'] {
    return this.#client.status === 'ready' && this.#breaker.state === CircuitState.Closed ? 'redis' : 'memory-fallback';
  }

  /** Resolves once the client is connected (for callers that want to start shared). */
  async ready(): Promise<void> {
    if (this.#client.status === 'ready') return;
    await new Promise<void>((resolve) => this.#client.once('ready', () => resolve()));
  }

  limiter(id: string, limit: RateLimit): Limiter {
    const redis = new RateLimiterRedis({
      storeClient: this.#client,
      keyPrefix: this.#prefix + id,
      points: limit.points,
      duration: limit.durationSeconds,
      rejectIfRedisNotReady: true,
      inMemoryBlockOnConsumed: limit.points + 1,
    });
    const memory = new RateLimiterMemory({ keyPrefix: id, points: limit.points, duration: limit.durationSeconds });
    return {
      consume: (key, points) => this.#run(() => redis.consume(key, points), () => memory.consume(key, points)),
      reward: (key, points) => this.#run(() => redis.reward(key, points), () => memory.reward(key, points)),
      get: (key) => this.#run(() => redis.get(key), () => memory.get(key)),
    };
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#client.removeAllListeners('ready');
      this.#client.removeAllListeners('close');
      this.#client.disconnect();
    })();
    return this.#closed;
  }

  /**
   * Runs `remote` through the breaker, or `local` when Redis is not connected or fails. While
   * the breaker is open it refuses at once; the first call after `retryAfterMs` tries Redis
   * again (calls arriving during that try wait for it, at most `timeoutMs`).
   */
  async #run<T>(remote: () => Promise<T>, local: () => Promise<T>): Promise<T> {
    if (this.#client.status !== 'ready') return local();
    try {
      return await this.#breaker.execute(remote);
    } catch (e) {
      if (e instanceof RateLimiterRes) throw e;
      if (!(e instanceof BrokenCircuitError)) this.#log.debug({ err: e }, 'rate limit redis command failed; counting in memory');
      return local();
    }
  }

  #report(up: boolean): void {
    if (this.#reportedUp === up || this.#closed) return;
    // The first report is only worth a line when it is bad news.
    if (up && this.#reportedUp !== null) this.#log.info('rate limits are shared through Redis again');
    if (!up) this.#log.warn('Redis is unreachable: rate limits are counted on each node alone until it is back');
    this.#reportedUp = up;
  }
}

import { BulkheadRejectedError, bulkhead, type BulkheadPolicy } from 'cockatiel';
import { ProtocolError } from '../../protocol/errors.js';
import type { AuthedContext, CallGuard } from '../server/App.js';

/** Options of {@link Bulkhead}. */
export interface BulkheadOptions {
  /** Calls of one tenant handled at once (default 256). */
  limit?: number;
  /** Calls of one tenant waiting for a slot; beyond it calls are refused (default 1 024). */
  queue?: number;
  /** The retry hint sent with BUSY, in milliseconds (default 100). */
  retryAfterMs?: number;
  /** Called for each refused call, with its tenant (for metrics). */
  onRefused?: (tenant: string) => void;
}

/** One tenant's share: its cockatiel bulkhead and how many calls hold or wait for a slot. */
interface Compartment {
  policy: BulkheadPolicy;
  users: number;
}

/**
 * A bulkhead per tenant, as a {@link CallGuard}: at most `limit` calls of one tenant run at once
 * and `queue` more wait for a slot in order; beyond that a call is refused at once with BUSY and
 * `data.retryAfterMs`. One tenant flooding the server therefore fills only its own compartment
 * and cannot starve the others. Compartments exist only while a tenant has calls in progress.
 *
 * @example
 * ```ts
 * server.use(new Bulkhead({ limit: 256, queue: 1024 }));
 * ```
 */
export class Bulkhead implements CallGuard {
  #limit: number;
  #queue: number;
  #retryAfterMs: number;
  #onRefused: ((tenant: string) => void) | undefined;
  #compartments = new Map<string, Compartment>();

  constructor(opts: BulkheadOptions = {}) {
    this.#limit = opts.limit ?? 256;
    this.#queue = opts.queue ?? 1024;
    this.#retryAfterMs = opts.retryAfterMs ?? 100;
    this.#onRefused = opts.onRefused;
    if (!Number.isInteger(this.#limit) || this.#limit < 1) throw new RangeError(`limit must be an integer of at least 1, got ${this.#limit}`);
    if (!Number.isInteger(this.#queue) || this.#queue < 0) throw new RangeError(`queue must be an integer of at least 0, got ${this.#queue}`);
  }

  /** Tenants with calls running or waiting now. */
  get activeTenants(): number {
    return this.#compartments.size;
  }

  beforeCall(ctx: AuthedContext): Promise<() => void> {
    return this.acquire(ctx.principal.tenantId);
  }

  /**
   * Resolves with a release function once the tenant has a slot (at once while it has spare
   * ones); rejects with BUSY when its slots and queue are full. Call the release exactly when
   * the work ends; calling it again does nothing.
   */
  acquire(tenant: string): Promise<() => void> {
    let compartment = this.#compartments.get(tenant);
    if (!compartment) {
      compartment = { policy: bulkhead(this.#limit, this.#queue), users: 0 };
      this.#compartments.set(tenant, compartment);
    }
    const c = compartment;
    c.users++;
    return new Promise<() => void>((resolve, reject) => {
      // The slot is held for as long as the executed promise is pending: until release().
      c.policy
        .execute(
          () =>
            new Promise<void>((done) => {
              let released = false;
              resolve(() => {
                if (released) return;
                released = true;
                done();
              });
            }),
        )
        .then(
          () => this.#leave(tenant, c),
          (e: unknown) => {
            this.#leave(tenant, c);
            reject(e instanceof BulkheadRejectedError ? this.#busy(tenant) : e);
          },
        );
    });
  }

  #leave(tenant: string, c: Compartment): void {
    if (--c.users === 0 && this.#compartments.get(tenant) === c) this.#compartments.delete(tenant);
  }

  #busy(tenant: string): ProtocolError {
    this.#onRefused?.(tenant);
    return new ProtocolError(
      'BUSY',
      `Your tenant already has ${this.#limit} calls running and ${this.#queue} waiting, the most this server takes from one tenant; retry after ${this.#retryAfterMs} ms.`,
      { retryAfterMs: this.#retryAfterMs, limit: this.#limit, queue: this.#queue },
    );
  }
}

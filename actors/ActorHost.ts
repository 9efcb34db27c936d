import { SpanStatusCode, trace, type Tracer } from '@opentelemetry/api';
import { createActor, getNextTransitions, type Actor, type AnyStateMachine, type InspectionEvent, type SnapshotFrom } from 'xstate';
import { ProtocolError, isProtocolError } from '../protocol/errors.js';
import type { Effect } from '../machines/effects.js';
import { uuidv7 } from './uuidv7.js';
import { streamOf, type ActorAddress, type ActorKind } from './ActorKind.js';
import type { Ownership } from './Ownership.js';
import { OwnedElsewhere, ownerMoving, type RemoteActors, type WireTurnOptions } from './Remote.js';
import type { CommitItem, EventMeta, IdempotencyRecord, OutboxRecord, Store, StoredEvent, TimerRecord, ViewRecord } from './Store.js';

/** What one turn needs besides the event. */
export interface TurnOptions<M extends AnyStateMachine = AnyStateMachine> {
  /** Principal id stamped on the event as `by` and in its metadata. */
  principal: string;
  correlationId?: string;
  causationId?: string;
  /** Use this event id (outbox deliveries use the message id, so duplicates are refused). */
  eventId?: string;
  /** Refuse with VERSION_MISMATCH unless the actor is at this version. */
  expectedVersion?: number;
  /** Runs inside the mailbox before the transition; throw a ProtocolError to refuse. */
  check?: (snapshot: SnapshotFrom<M>, version: number) => void;
  /** Claimed in the same commit (with the result a retry of the request gets); a key claimed first makes the turn fail with {@link IdempotencyConflict}. */
  idempotency?: IdempotencyRecord;
  /** Mark an outbox entry consumed in the same commit. */
  outboxDone?: string[];
  /** Delete this fired timer in the same commit. */
  firedTimer?: { name: string; fireAt: number };
  /**
   * The caller has just generated this actor's id (a random UUID), so its stream is empty:
   * activation skips reading it. Should the stream exist after all, the commit (expected
   * version 0) is refused, nothing is written and the actor is reloaded before the next message.
   */
  fresh?: boolean;
}

/** The outcome of an accepted turn. */
export interface TurnResult<M extends AnyStateMachine = AnyStateMachine> {
  snapshot: SnapshotFrom<M>;
  version: number;
  event: StoredEvent;
}

/**
 * Listener for committed events: called after every successful commit, in commit order, with
 * the actor's read model row after the events (`null`: removed; `undefined`: not kept).
 */
export type CommitListener = (events: StoredEvent[], topics: string[][], view: ViewRecord | null | undefined, remote: boolean) => void;

/** Options of {@link ActorHost}; durations in milliseconds. */
export interface ActorHostOptions {
  store: Store;
  ownership: Ownership;
  kinds: ActorKind[];
  /** Passivate actors idle for this long (default 60 000). */
  idleMs?: number;
  /**
   * The most actors kept in memory (default 10 000). Beyond it the least recently used idle
   * actors are passivated at once, so memory stays bounded under any load.
   */
  maxActive?: number;
  /** How often to look for idle actors (default 10 000). */
  sweepMs?: number;
  /**
   * The most messages waiting in one actor's mailbox (default 1 000). Beyond it a message is
   * refused at once with BUSY and `data.retryAfterMs`, so one hot actor cannot hold unbounded
   * memory or make its callers wait without limit. Timers and outbox messages refused this way
   * stay in the store and are delivered again by their services.
   */
  maxMailbox?: number;
  /** Called when a message is refused because its actor's mailbox is full, with the actor's kind. */
  onBusy?: (kind: string) => void;
  /** The clock; tests may replace it. */
  now?: () => number;
  /** Called when a durable timer is scheduled, so the timer service can wake earlier. */
  onTimerScheduled?: (fireAt: number) => void;
  /** Called after a commit that wrote outbox entries. */
  onOutbox?: (records: OutboxRecord[]) => void;
  /** Called when an actor leaves memory, with its kind (for metrics). */
  onPassivated?: (kind: string) => void;
  /** Called with how long each store commit took to resolve or fail, in seconds (for metrics). */
  onStoreCommit?: (seconds: number) => void;
  /**
   * Called with XState's inspection events of every actor and the actor's address: an
   * `@xstate.actor` once the actor is activated (after the replay of its stored events, which is
   * not reported), then `@xstate.event`, `@xstate.microstep`, `@xstate.action` and
   * `@xstate.snapshot` as it handles each accepted event (before the commit; a refused commit
   * reloads the actor, reported as a new activation), and a `stopped` snapshot when it leaves
   * memory. Unset (default): actors are created without inspection and nothing is paid.
   */
  inspect?: (event: InspectionEvent, address: ActorAddress) => void;
  /**
   * The other nodes of a cluster. When ownership says another node holds an actor, messages for
   * it go there and its reply comes back; unset (one node): every actor is local.
   */
  remote?: RemoteActors;
  /** Called when a commit was refused because another node took the actor over (a stale write). */
  onFenced?: (kind: string) => void;
}

/** Thrown (internally) when a turn's idempotency key was claimed first by another turn. */
export class IdempotencyConflict extends Error {
  constructor(readonly key: string) {
    super(`idempotency key ${key} already used`);
  }
}

/**
 * The id of the `n`th message (0-based) an event sends. A caller that delivers such a message
 * itself, ahead of the outbox, uses this id as the event id so the outbox's copy is a duplicate.
 */
export function outboxId(eventId: string, n: number): string {
  return `${eventId}:${n}`;
}

/** Retry hint of a message refused because its actor's mailbox is full. */
const MAILBOX_RETRY_AFTER_MS = 100;

/** Snapshots of actors owned elsewhere kept for judging forwarded calls. */
const REMOTE_SNAPSHOTS = 10_000;

/** How often a forwarded call with a check is judged again when the actor changed meanwhile. */
const FORWARD_CHECK_ATTEMPTS = 8;

/** Marks turn options of a message another node forwarded here. */
const FORWARDED = Symbol('forwarded');

function isForwarded(opts: object): boolean {
  return (opts as { [FORWARDED]?: boolean })[FORWARDED] === true;
}

/** Returned instead of a result when an event id was already stored (a duplicate delivery). */
export const DUPLICATE = Symbol('duplicate');

interface Job {
  /** Runs the job on the local actor; resolves `true` when its commit was fenced off and nothing was written. */
  run: (cell: Cell) => Promise<boolean | void>;
  /** Sends the job to the node that owns the actor; absent for jobs that came from another node. */
  forward?: (node: string) => Promise<void>;
  fail: (error: unknown) => void;
}

/** A commit refused because another node took the actor over; nothing was written. */
class Fenced extends ProtocolError {
  constructor(kind: string) {
    super('UNAVAILABLE', `Ownership of this ${kind} moved to another node; retry.`, { retryAfterMs: 100, ownerMoving: true });
  }
}

interface Cell {
  address: ActorAddress;
  stream: string;
  kind: ActorKind;
  actor: Actor<AnyStateMachine> | null;
  version: number;
  epoch: number;
  queue: Job[];
  running: boolean;
  lastUsed: number;
  /** Effects emitted by the machine during the current transition. */
  captured: Effect[] | null;
  /** Set when memory may be ahead of the store; the next job reloads the actor. */
  stale: boolean;
  /** The first activation may skip the store: see {@link TurnOptions.fresh}. */
  fresh: boolean;
}

/**
 * Hosts virtual actors: activates them on demand from snapshot + events, runs one message at a
 * time per actor, commits each accepted event with its effects before answering, and passivates
 * idle actors.
 *
 * @example
 * ```ts
 * const host = new ActorHost({ store, ownership, kinds: [taskKind] });
 * const { version } = await host.send({ tenant: 'acme', kind: 'task', id: 't1' },
 *   { type: 'task.create', ... }, { principal: 'lead' });
 * ```
 */
export class ActorHost {
  readonly store: Store;
  #ownership: Ownership;
  #kinds = new Map<string, ActorKind>();
  #cells = new Map<string, Cell>();
  #listeners = new Set<CommitListener>();
  #now: () => number;
  #idleMs: number;
  #maxActive: number;
  #maxMailbox: number;
  #sweep: NodeJS.Timeout;
  #closed = false;
  #closing: Promise<void> | null = null;
  #opts: ActorHostOptions;
  #tracer: Tracer;
  #remote: RemoteActors | undefined;
  /**
   * The last snapshot seen of actors other nodes own: a checked call is judged on it and sent
   * pinned to its version, saving a read when nobody wrote since (else the owner refuses and a
   * fresh read follows).
   */
  #remoteSnapshots = new Map<string, { snapshot: unknown; version: number }>();

  constructor(opts: ActorHostOptions) {
    this.#opts = opts;
    // Taken per host, not per module: a tracer provider registered later still applies to new hosts.
    this.#tracer = trace.getTracer('troupe');
    this.store = opts.store;
    this.#ownership = opts.ownership;
    this.#remote = opts.remote;
    for (const k of opts.kinds) this.#kinds.set(k.kind, k);
    this.#now = opts.now ?? Date.now;
    this.#idleMs = opts.idleMs ?? 60_000;
    this.#maxActive = opts.maxActive ?? 10_000;
    this.#maxMailbox = opts.maxMailbox ?? 1_000;
    this.#sweep = setInterval(() => void this.passivateIdle(), opts.sweepMs ?? 10_000);
    this.#sweep.unref();
  }

  /** The kind definition, or throws for an unknown kind. */
  kind(kind: string): ActorKind {
    const k = this.#kinds.get(kind);
    if (!k) throw new Error(`unknown actor kind ${kind}`);
    return k;
  }

  /** Registers a listener for committed events. Returns a function that removes it. */
  onCommit(listener: CommitListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** How many actors are in memory now. */
  get activeCount(): number {
    return this.#cells.size;
  }

  /** How many actors are in memory now, by kind (every hosted kind is listed, also at 0). */
  activeByKind(): Map<string, number> {
    const counts = new Map<string, number>([...this.#kinds.keys()].map((k) => [k, 0]));
    for (const cell of this.#cells.values()) counts.set(cell.kind.kind, (counts.get(cell.kind.kind) ?? 0) + 1);
    return counts;
  }

  /** Jobs waiting in mailboxes, summed over all actors in memory (running jobs not counted). */
  get mailboxDepth(): number {
    let n = 0;
    for (const cell of this.#cells.values()) n += cell.queue.length;
    return n;
  }

  /**
   * Delivers one event to an actor and resolves once the resulting event is durably stored.
   * Rejects with ILLEGAL_TRANSITION (naming the state and the events it accepts) if the machine
   * does not accept it, with BUSY at once when the actor's mailbox is full, or with whatever
   * `check` throws. Resolves to {@link DUPLICATE} when `eventId` was already stored.
   */
  send<M extends AnyStateMachine>(
    address: ActorAddress,
    event: { type: string } & Record<string, unknown>,
    opts: TurnOptions<M>,
  ): Promise<TurnResult<M> | typeof DUPLICATE> {
    const forward = this.#remote && !isForwarded(opts) ? (node: string) => this.#forwardSend(node, address, event, opts as TurnOptions) : undefined;
    return this.#enqueue(address, (cell) => this.#turn(cell, event, opts as TurnOptions), opts.fresh === true, forward);
  }

  /**
   * Runs a turn that another node forwarded here: never forwarded again (if this node no longer
   * owns the actor the caller gets UNAVAILABLE with a retry hint).
   */
  sendForwarded(address: ActorAddress, event: { type: string } & Record<string, unknown>, opts: WireTurnOptions): Promise<TurnResult | typeof DUPLICATE> {
    return this.send(address, event, { ...opts, [FORWARDED]: true } as TurnOptions);
  }

  /** {@link ActorHost.read} for another node: never forwarded again. */
  readForwarded<M extends AnyStateMachine>(address: ActorAddress): Promise<{ snapshot: SnapshotFrom<M>; version: number }> {
    return this.#enqueue(address, async (cell) => ({ snapshot: cell.actor!.getSnapshot() as SnapshotFrom<M>, version: cell.version }));
  }

  /** {@link ActorHost.fireTimer} for another node: never forwarded again. */
  async fireTimerForwarded(timer: TimerRecord): Promise<void> {
    await this.#fireTimer(timer, false);
  }

  /** {@link ActorHost.deliver} for another node: never forwarded again. */
  async deliverForwarded(record: OutboxRecord): Promise<void> {
    await this.#deliver(record, false);
  }

  /** A persisted snapshot (from another node or the store) as a live snapshot of the kind's machine. */
  restore<M extends AnyStateMachine>(kind: string, persisted: unknown): SnapshotFrom<M> {
    // Restoring runs no actions: the actor is only created to hold the snapshot, never started.
    return createActor(this.kind(kind).machine, { snapshot: persisted as never }).getSnapshot() as SnapshotFrom<M>;
  }

  /** A live snapshot of a kind's actor as the JSON its machine persists (to send to another node). */
  persisted(kind: string, snapshot: SnapshotFrom<AnyStateMachine>): unknown {
    return this.kind(kind).machine.getPersistedSnapshot(snapshot);
  }

  async #forwardSend(node: string, address: ActorAddress, event: { type: string } & Record<string, unknown>, opts: TurnOptions): Promise<TurnResult | typeof DUPLICATE> {
    const remote = this.#remote!;
    const wire: WireTurnOptions = {
      principal: opts.principal,
      ...(opts.correlationId !== undefined ? { correlationId: opts.correlationId } : {}),
      ...(opts.causationId !== undefined ? { causationId: opts.causationId } : {}),
      ...(opts.eventId !== undefined ? { eventId: opts.eventId } : {}),
      ...(opts.expectedVersion !== undefined ? { expectedVersion: opts.expectedVersion } : {}),
      ...(opts.idempotency ? { idempotency: opts.idempotency } : {}),
      ...(opts.outboxDone ? { outboxDone: opts.outboxDone } : {}),
      ...(opts.firedTimer ? { firedTimer: opts.firedTimer } : {}),
    };
    // A check needs the snapshot it judges: judge here a snapshot of the owner's (the last one
    // seen, else one read from it), and send on condition that the actor is still at that
    // version. If others wrote in between, the owner answers with the actor as it is now and the
    // call is judged again on that, without another read.
    const stream = streamOf(address);
    for (let attempt = 0; ; attempt++) {
      let pinned = false;
      if (opts.check) {
        const seen = this.#remoteSnapshots.get(stream);
        const usable = seen && (opts.expectedVersion === undefined || opts.expectedVersion === seen.version);
        let judged = false;
        if (usable) {
          try {
            opts.check(this.restore(address.kind, seen.snapshot), seen.version);
            wire.expectedVersion = opts.expectedVersion ?? seen.version;
            judged = true;
          } catch {
            // A refusal must come from the actor as it is now, not as it was last seen.
          }
        }
        if (!judged) {
          const read = await remote.read(node, address);
          this.#seeRemote(stream, read);
          opts.check(this.restore(address.kind, read.snapshot), read.version);
          if (opts.expectedVersion === undefined) wire.expectedVersion = read.version;
        }
        pinned = opts.expectedVersion === undefined;
        if (pinned) wire.answerChanged = true;
      }
      let r: Awaited<ReturnType<RemoteActors['send']>> | null;
      try {
        r = await remote.send(node, address, event, wire);
      } catch (e) {
        if (!isProtocolError(e, 'VERSION_MISMATCH')) throw e;
        this.#remoteSnapshots.delete(stream);
        // An owner that does not answer with the actor as it is now (an older node during a
        // rolling upgrade) refuses instead: judged again on a fresh read, unless the caller
        // named the version itself.
        if (!pinned) throw e;
        r = null;
      }
      if (r === 'duplicate') return DUPLICATE;
      if (r && !('changed' in r)) {
        this.#seeRemote(stream, r);
        return { snapshot: this.restore(address.kind, r.snapshot), version: r.version, event: r.event };
      }
      // The version was ours, not the caller's: others wrote in between.
      if (r) this.#seeRemote(stream, r.changed);
      if (attempt >= FORWARD_CHECK_ATTEMPTS - 1) {
        throw new ProtocolError(
          'UNAVAILABLE',
          `The ${address.kind} ${address.id} changed ${FORWARD_CHECK_ATTEMPTS} times while this call was checked on another node; nothing was written, retry.`,
          { retryAfterMs: 100, outcome: 'not_applied' },
        );
      }
      // Back off with jitter, so writers through several nodes do not stay in step.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(100, 5 * 2 ** attempt)));
    }
  }

  /** Remembers the newest snapshot seen of an actor another node owns (bounded, oldest dropped first). */
  #seeRemote(stream: string, seen: { snapshot: unknown; version: number }): void {
    const had = this.#remoteSnapshots.get(stream);
    if (had && had.version > seen.version) return;
    this.#remoteSnapshots.delete(stream);
    this.#remoteSnapshots.set(stream, { snapshot: seen.snapshot, version: seen.version });
    if (this.#remoteSnapshots.size > REMOTE_SNAPSHOTS) this.#remoteSnapshots.delete(this.#remoteSnapshots.keys().next().value!);
  }

  /** The committed snapshot and version of an actor (activating it if needed), read in its mailbox. */
  read<M extends AnyStateMachine>(address: ActorAddress): Promise<{ snapshot: SnapshotFrom<M>; version: number }> {
    const remote = this.#remote;
    const forward = remote
      ? async (node: string) => {
          const r = await remote.read(node, address);
          return { snapshot: this.restore<M>(address.kind, r.snapshot), version: r.version };
        }
      : undefined;
    return this.#enqueue(address, async (cell) => ({ snapshot: cell.actor!.getSnapshot() as SnapshotFrom<M>, version: cell.version }), false, forward);
  }

  /** Delivers a due timer. Consumes the timer even when the machine no longer expects it. */
  async fireTimer(timer: TimerRecord): Promise<void> {
    await this.#fireTimer(timer, true);
  }

  async #fireTimer(timer: TimerRecord, forwardable: boolean): Promise<void> {
    const address = { tenant: timer.tenant, kind: timer.kind, id: timer.actorId };
    const fired = { name: timer.name, fireAt: timer.fireAt };
    const event = { ...timer.event, type: 'timer.fired', name: timer.name, fireAt: timer.fireAt };
    const remote = this.#remote;
    await this.#enqueue(
      address,
      (cell) => this.#turnOrConsume(cell, event, { principal: 'system', firedTimer: fired }, { firedTimers: [fired] }),
      false,
      remote && forwardable ? (node) => remote.fireTimer(node, timer).then(() => undefined) : undefined,
    );
  }

  /** Delivers an outbox message to its target; consumes it also when refused or a duplicate. */
  async deliver(record: OutboxRecord): Promise<void> {
    await this.#deliver(record, true);
  }

  async #deliver(record: OutboxRecord, forwardable: boolean): Promise<void> {
    const address = { tenant: record.tenant, kind: record.targetKind, id: record.targetId };
    const event = record.event as { type: string } & Record<string, unknown>;
    const opts = { principal: 'system', eventId: record.id, causationId: record.id, outboxDone: [record.id] };
    const remote = this.#remote;
    const r = await this.#enqueue(
      address,
      (cell) => this.#turnOrConsume(cell, event, opts, { outboxDone: [record.id] }),
      false,
      remote && forwardable ? (node) => remote.deliver(node, record).then(() => undefined) : undefined,
    );
    if (r === DUPLICATE) await this.store.ackOutbox([record.id]);
  }

  /**
   * Commits another node made (received from the cluster's fan-out): an actor held here that
   * was written elsewhere is reloaded before its next message, and the commit listeners hear
   * of the events as remote.
   */
  applyRemoteCommit(events: StoredEvent[], topics: string[][], view: ViewRecord | null | undefined): void {
    for (const e of events) {
      const cell = this.#cells.get(e.stream);
      if (cell && e.version > cell.version) cell.stale = true;
      const seen = this.#remoteSnapshots.get(e.stream);
      if (seen && e.version > seen.version) this.#remoteSnapshots.delete(e.stream);
    }
    this.#notify(events, topics, view, true);
  }

  /**
   * This node lost the lease of an actor (it could not renew it in time): the actor leaves
   * memory at once, or as soon as its running message ends, and is loaded again (or reached on
   * its new owner) for the next one.
   */
  leaseLost(stream: string): void {
    const cell = this.#cells.get(stream);
    if (!cell) return;
    cell.stale = true;
    if (!cell.running && cell.queue.length === 0) {
      this.#cells.delete(stream);
      cell.actor?.stop();
      this.#opts.onPassivated?.(cell.kind.kind);
    }
  }

  /** True while the actor is in memory here and in step with the store (this node owns it). */
  isActive(stream: string): boolean {
    const cell = this.#cells.get(stream);
    return cell !== undefined && cell.actor !== null && !cell.stale;
  }

  #notify(events: StoredEvent[], topics: string[][], view: ViewRecord | null | undefined, remote: boolean): void {
    for (const l of this.#listeners) {
      // The event is stored: a failing listener must not turn the acknowledgement into an error.
      try {
        l(events, topics, view, remote);
      } catch {
        /* listeners report their own failures */
      }
    }
  }

  /** Passivates least recently used idle actors while more than `maxActive` are in memory. */
  #trim(): void {
    if (this.#cells.size <= this.#maxActive) return;
    for (const cell of this.#cells.values()) {
      if (this.#cells.size <= this.#maxActive) break;
      if (cell.running || cell.queue.length > 0) continue;
      this.#unload(cell);
    }
  }

  /** Removes an idle actor from memory and gives up its ownership (safe while iterating `#cells`). */
  #unload(cell: Cell): void {
    this.#cells.delete(cell.stream);
    // A cell that only forwarded messages to another node never held the actor.
    if (cell.actor) this.#opts.onPassivated?.(cell.kind.kind);
    cell.actor?.stop();
    // Nothing waits for the release; a failed one just lets the lease expire.
    void this.#ownership.release(cell.stream).catch(() => {});
  }

  /** Passivates actors idle longer than `idleMs`. Returns how many were passivated. */
  async passivateIdle(now = this.#now()): Promise<number> {
    let n = 0;
    for (const cell of this.#cells.values()) {
      if (!cell.running && cell.queue.length === 0 && now - cell.lastUsed >= this.#idleMs) {
        this.#unload(cell);
        n++;
      }
    }
    return n;
  }

  /** Waits for running turns, passivates everything and stops; safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      clearInterval(this.#sweep);
      const busy = [...this.#cells.values()].filter((c) => c.running || c.queue.length > 0);
      // Not through #enqueue: it refuses new work once closed, and would not wait.
      await Promise.all(busy.map((c) => this.#drained(c)));
      await this.passivateIdle(Number.POSITIVE_INFINITY);
    })();
    return this.#closing;
  }

  /** Resolves once every job queued for the cell so far has run or failed. */
  #drained(cell: Cell): Promise<void> {
    return new Promise<void>((resolve) => {
      cell.queue.push({ run: async () => resolve(), fail: () => resolve() });
      if (!cell.running) void this.#drain(cell);
    });
  }

  #enqueue<T>(address: ActorAddress, fn: (cell: Cell) => Promise<T>, fresh = false, forward?: (node: string) => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new ProtocolError('UNAVAILABLE', 'The server is shutting down; retry on another connection.', { retryAfterMs: 1000 }));
    const kind = this.kind(address.kind);
    const stream = streamOf(address);
    let cell = this.#cells.get(stream);
    if (cell && cell.queue.length >= this.#maxMailbox) {
      this.#opts.onBusy?.(kind.kind);
      return Promise.reject(
        new ProtocolError('BUSY', `The ${kind.kind} ${address.id} has ${cell.queue.length} messages waiting, the most it queues; retry after ${MAILBOX_RETRY_AFTER_MS} ms.`, {
          retryAfterMs: MAILBOX_RETRY_AFTER_MS,
          kind: kind.kind,
          id: address.id,
          limit: this.#maxMailbox,
        }),
      );
    }
    if (cell) {
      // Map order is use order: the first entries are the least recently used.
      this.#cells.delete(stream);
      this.#cells.set(stream, cell);
    } else {
      cell = {
        address,
        stream,
        kind,
        actor: null,
        version: 0,
        epoch: 0,
        queue: [],
        running: false,
        lastUsed: this.#now(),
        captured: null,
        stale: true,
        fresh,
      };
      this.#cells.set(stream, cell);
    }
    return new Promise<T>((resolve, reject) => {
      let retried = false;
      cell.queue.push({
        run: (c) =>
          fn(c).then(resolve, (e: unknown) => {
            // Fenced off before anything was written: the caller's message may run again, on the new owner.
            if (e instanceof Fenced && forward && !retried) {
              retried = true;
              return true;
            }
            reject(e);
          }),
        ...(forward ? { forward: (node: string) => forward(node).then(resolve, reject) } : {}),
        fail: reject,
      });
      if (!cell.running) void this.#drain(cell);
    });
  }

  async #drain(cell: Cell): Promise<void> {
    cell.running = true;
    try {
      while (cell.queue.length > 0) {
        const job = cell.queue.shift()!;
        for (;;) {
          try {
            if (cell.stale) await this.#activate(cell);
          } catch (e) {
            if (e instanceof OwnedElsewhere) {
              // Another node owns the actor: the message goes there, in mailbox order.
              if (job.forward) await job.forward(e.node);
              else job.fail(ownerMoving(cell.kind.kind, 200, `node ${e.node} holds it`));
              break;
            }
            // Activation failed: refuse this job; the cell stays stale and the next job tries again.
            // An unavailable store already says why and when to retry.
            if (isProtocolError(e, 'UNAVAILABLE')) job.fail(e);
            else job.fail(new ProtocolError('UNAVAILABLE', `The ${cell.kind.kind} could not be loaded (${(e as Error).message}); retry shortly.`, { retryAfterMs: 500 }));
            break;
          }
          cell.lastUsed = this.#now();
          if ((await job.run(cell)) !== true) break;
          // The store refused a stale write: give the actor (and a lease that is no longer worth
          // anything) up, and run the message where the actor lives now.
          cell.stale = true;
          cell.actor?.stop();
          cell.actor = null;
          await this.#ownership.release(cell.stream).catch(() => {});
        }
      }
    } finally {
      cell.running = false;
    }
    // Messages to actors that do not exist must not pin memory until the next sweep, and
    // settled actors (finished tasks) are unlikely to be needed again soon.
    const settled = cell.actor !== null && !cell.stale && cell.kind.settled?.(cell.actor.getSnapshot()) === true;
    if ((cell.version === 0 || settled || cell.actor === null) && cell.queue.length === 0 && this.#cells.get(cell.stream) === cell) this.#unload(cell);
    this.#trim();
  }

  async #activate(cell: Cell): Promise<void> {
    cell.actor?.stop();
    cell.actor = null;
    const lease = await this.#ownership.acquire(cell.stream, cell.address, cell.fresh);
    const fresh = cell.fresh;
    cell.fresh = false;
    const { snap, events } = fresh ? { snap: undefined, events: [] } : await this.#read(cell.stream);
    const machine = cell.kind.machine;
    const inspect = this.#opts.inspect;
    let replayed = false;
    // XState calls inspectors inside the transition: a failing one must not fail the turn.
    const observe = (e: InspectionEvent) => {
      try {
        if (replayed) inspect!(e, cell.address);
      } catch {
        /* the inspector reports its own failures */
      }
    };
    const actor = createActor(machine, { ...(snap ? { snapshot: snap.state as never } : {}), ...(inspect ? { inspect: observe } : {}) });
    actor.on('*', (fx: Effect) => cell.captured?.push(fx));
    actor.start();
    for (const e of events) actor.send(e.data as never);
    replayed = true;
    if (inspect) observe({ type: '@xstate.actor', actorRef: actor, rootId: actor.sessionId });
    cell.actor = actor;
    cell.version = events.length > 0 ? events[events.length - 1]!.version : (snap?.version ?? 0);
    cell.epoch = lease.epoch;
    cell.stale = false;
  }

  async #turn(cell: Cell, event: { type: string } & Record<string, unknown>, opts: TurnOptions): Promise<TurnResult | typeof DUPLICATE> {
    const actor = cell.actor!;
    const before = actor.getSnapshot();
    const at = this.#now();
    const machineEvent = { ...event, at, by: opts.principal };
    const possible = before.can(machineEvent);
    if (!possible && !cell.kind.exists(before)) throw this.#illegal(cell, before, event.type);
    opts.check?.(before, cell.version);
    if (opts.expectedVersion !== undefined && opts.expectedVersion !== cell.version) {
      throw new ProtocolError('VERSION_MISMATCH', `Expected version ${opts.expectedVersion} but the ${cell.kind.kind} is at version ${cell.version}; read it again and retry.`, {
        expectedVersion: opts.expectedVersion,
        actualVersion: cell.version,
      });
    }
    if (!possible) throw this.#illegal(cell, before, event.type);

    // Memory may run ahead of the store until the commit lands: if anything below throws or
    // the store refuses, the next job reloads the actor.
    cell.stale = true;
    cell.captured = [];
    actor.send(machineEvent as never);
    const effects = cell.captured;
    cell.captured = null;
    const after = actor.getSnapshot();
    if (after.status === 'error') {
      throw new ProtocolError('INTERNAL', `The ${cell.kind.kind} machine failed on ${event.type}.`);
    }

    const version = cell.version + 1;
    const meta: EventMeta = { at, principal: opts.principal, status: cell.kind.status(after) };
    if (opts.correlationId) meta.correlationId = opts.correlationId;
    if (opts.causationId) meta.causationId = opts.causationId;
    const newEvent = { id: opts.eventId ?? uuidv7(at), type: event.type, data: machineEvent, meta };
    const topics = cell.kind.topics({ type: event.type, data: machineEvent, actorId: cell.address.id }, before, after);
    const item: CommitItem = {
      ...itemFor(cell),
      events: [newEvent],
      topics: [topics],
      view: cell.kind.view(after, cell.address, version),
    };
    if (version % (cell.kind.snapshotEvery ?? 50) === 0) item.snapshot = actor.getPersistedSnapshot();
    this.#applyEffects(cell, item, effects, at, newEvent.id);
    if (opts.firedTimer) item.firedTimers = [opts.firedTimer];
    if (opts.outboxDone) item.outboxDone = opts.outboxDone;
    if (opts.idempotency) item.idempotency = opts.idempotency;

    const [outcome] = await this.#commit(item).catch((e: unknown) => {
      // An open circuit breaker refused the commit without attempting it: nothing was written.
      if (isProtocolError(e, 'UNAVAILABLE') && e.data.circuit === 'open') throw e;
      // The store may have failed before or after its commit: the outcome is unknown.
      throw new ProtocolError(
        'UNAVAILABLE',
        `The store did not confirm the write (${(e as Error).message}); it may or may not have been applied, so read the ${cell.kind.kind} before retrying.`,
        { retryAfterMs: 500, outcome: 'unknown' },
      );
    });
    if (!outcome!.ok) {
      // Memory ran ahead of the store: it stays stale, so the next message reloads it.
      switch (outcome!.reason) {
        case 'duplicate_event':
          return DUPLICATE;
        case 'idempotency_conflict':
          throw new IdempotencyConflict(outcome!.key);
        case 'stale_epoch':
          this.#opts.onFenced?.(cell.kind.kind);
          throw new Fenced(cell.kind.kind);
        case 'version_conflict':
          throw new ProtocolError('UNAVAILABLE', `The ${cell.kind.kind} was changed by another writer; retry.`, { retryAfterMs: 100 });
      }
    }
    cell.version = version;
    cell.stale = false;
    const stored: StoredEvent = {
      ...newEvent,
      position: outcome!.positions[0]!,
      feedPosition: outcome!.feedPositions[0]!,
      stream: cell.stream,
      tenant: cell.address.tenant,
      kind: cell.address.kind,
      actorId: cell.address.id,
      version,
    };
    this.#notify([stored], [topics], item.view, false);
    for (const t of item.scheduleTimers ?? []) this.#opts.onTimerScheduled?.(t.fireAt);
    if (item.outbox?.length) this.#opts.onOutbox?.(item.outbox);
    return { snapshot: after, version, event: stored };
  }

  #applyEffects(cell: Cell, item: CommitItem, effects: Effect[], at: number, eventId: string): void {
    let n = 0;
    for (const fx of effects) {
      switch (fx.type) {
        case 'fx.timer.schedule':
          item.cancelTimers = item.cancelTimers?.filter((x) => x !== fx.name);
          (item.scheduleTimers ??= []).push({
            stream: cell.stream,
            tenant: cell.address.tenant,
            kind: cell.address.kind,
            actorId: cell.address.id,
            name: fx.name,
            fireAt: fx.fireAt,
            event: {},
          });
          break;
        case 'fx.timer.cancel':
          item.scheduleTimers = item.scheduleTimers?.filter((t) => !fx.names.includes(t.name));
          (item.cancelTimers ??= []).push(...fx.names);
          break;
        case 'fx.send':
          (item.outbox ??= []).push({
            // Deterministic per emitting event, so a re-run of the same turn cannot double-send.
            id: outboxId(eventId, n++),
            source: cell.stream,
            tenant: cell.address.tenant,
            targetKind: fx.kind,
            targetId: fx.id,
            event: fx.event,
            createdAt: at,
          });
          break;
      }
    }
  }

  /**
   * Runs a system event (a timer, an outbox message) if the machine accepts it now; otherwise
   * commits only `consumed`, so the timer or message is not delivered again.
   */
  async #turnOrConsume(
    cell: Cell,
    event: { type: string } & Record<string, unknown>,
    opts: TurnOptions,
    consumed: Pick<CommitItem, 'firedTimers' | 'outboxDone'>,
  ): Promise<TurnResult | typeof DUPLICATE | undefined> {
    if (cell.actor!.getSnapshot().can({ ...event, at: this.#now(), by: opts.principal })) return this.#turn(cell, event, opts);
    await this.#commitBare(cell, consumed);
    return undefined;
  }

  async #commitBare(cell: Cell, patch: Pick<CommitItem, 'firedTimers' | 'outboxDone'>): Promise<void> {
    const [outcome] = await this.#commit({
      ...itemFor(cell),
      events: [],
      topics: [],
      ...patch,
    });
    if (!outcome!.ok) cell.stale = true;
  }

  /** An actor's latest snapshot and the events after it, inside a `store.read` span. */
  #read(stream: string): Promise<{ snap: Awaited<ReturnType<Store['loadSnapshot']>>; events: StoredEvent[] }> {
    return this.#tracer.startActiveSpan('store.read', { attributes: { stream } }, async (span) => {
      try {
        const snap = await this.store.loadSnapshot(stream);
        const events = await this.store.readStream(stream, snap?.version ?? 0);
        span.setAttributes({ snapshotVersion: snap?.version ?? 0, events: events.length });
        return { snap, events };
      } catch (e) {
        span.recordException(e as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
        throw e;
      } finally {
        span.end();
      }
    });
  }

  /** Commits one item, timed and inside a `store.commit` span. */
  #commit(item: CommitItem): ReturnType<Store['commit']> {
    return this.#tracer.startActiveSpan('store.commit', { attributes: { stream: item.stream, events: item.events.length } }, async (span) => {
      const started = performance.now();
      try {
        const outcomes = await this.store.commit([item]);
        const first = outcomes[0];
        if (first && !first.ok) span.setAttribute('outcome', first.reason);
        return outcomes;
      } catch (e) {
        span.recordException(e as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
        throw e;
      } finally {
        this.#opts.onStoreCommit?.((performance.now() - started) / 1000);
        span.end();
      }
    });
  }

  #illegal(cell: Cell, snapshot: SnapshotFrom<AnyStateMachine>, type: string): ProtocolError {
    const kind = cell.kind;
    if (!kind.exists(snapshot)) {
      return new ProtocolError('NOT_FOUND', `${capitalize(kind.kind)} ${cell.address.id} does not exist.`, { kind: kind.kind, id: cell.address.id });
    }
    const status = kind.status(snapshot);
    const internal = new Set(kind.internalEvents ?? []);
    const allowed = acceptedEvents(snapshot, this.#now()).filter((t) => !internal.has(t));
    return new ProtocolError(
      'ILLEGAL_TRANSITION',
      `${capitalize(kind.kind)} ${cell.address.id} is ${status}; ${type} is not allowed now. Allowed now: ${allowed.join(', ') || 'nothing'}.`,
      { kind: kind.kind, id: cell.address.id, status, event: type, allowed },
    );
  }
}

/** The part of a commit item that says whose stream it is, at which version, under which epoch. */
function itemFor(cell: Cell): Pick<CommitItem, 'stream' | 'tenant' | 'kind' | 'actorId' | 'expectedVersion' | 'epoch'> {
  return {
    stream: cell.stream,
    tenant: cell.address.tenant,
    kind: cell.address.kind,
    actorId: cell.address.id,
    expectedVersion: cell.version,
    epoch: cell.epoch,
  };
}

function capitalize(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/**
 * The client-facing event types a snapshot accepts now. Guards are evaluated against a bare event
 * of each type, so a transition that only a particular payload enables may still be listed.
 */
export function acceptedEvents(snapshot: SnapshotFrom<AnyStateMachine>, at = 0): string[] {
  const types = new Set<string>();
  for (const t of getNextTransitions(snapshot)) {
    const type = t.eventType;
    if (!type || type.startsWith('timer.') || type.startsWith('xstate.') || types.has(type)) continue;
    if (snapshot.can({ type, at, by: 'system' })) types.add(type);
  }
  return [...types];
}

import { createHash, randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { DUPLICATE, IdempotencyConflict, type ActorHost } from '../../actors/ActorHost.js';
import type { ActorAddress } from '../../actors/ActorKind.js';
import type { RemoteActors, WireChanged, WireRead, WireTurn, WireTurnOptions } from '../../actors/Remote.js';
import type { OutboxRecord, Store, StoredEvent, TimerRecord, ViewRecord } from '../../actors/Store.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Logger } from '../logger.js';
import { Bus } from './Bus.js';
import { Membership, type NodeInfo } from './Membership.js';
import { RedisOwnership } from './RedisOwnership.js';

/** How a node joins a cluster; durations in milliseconds. */
export interface ClusterOptions {
  /** This node's id, unique in the cluster (default: a random one per start). */
  nodeId?: string;
  /** The Redis all nodes share for membership, routing and events (`TROUPE_REDIS_URL`). */
  redisUrl: string;
  /**
   * Independent Redis instances for the actor leases (Redlock; a majority must agree). Default:
   * the shared Redis alone.
   */
  lockUrls?: string[];
  /** How long an actor's lease lasts without renewal (default 10 000): the failover time after a crash. */
  leaseMs?: number;
  /** Membership heartbeat (default 1 000); a node silent for three is gone. */
  heartbeatMs?: number;
  /** How long a forwarded message waits for the owner (default 5 000). */
  requestTimeoutMs?: number;
  /** Names this cluster's keys and channels, so clusters can share a Redis (default `troupe`). */
  prefix?: string;
  /** Where clients reach this node, as shown in `GET /cluster` (default: the URL it listens on). */
  advertiseUrl?: string;
}

interface CommitMessage {
  events: StoredEvent[];
  topics: string[][];
  view: ViewRecord | null | undefined;
}

/** What `GET /cluster` shows. */
export interface ClusterView {
  self: string;
  leaseMs: number;
  nodes: (NodeInfo & { self: boolean })[];
  /** Counters of this node since it started. */
  counters: { forwarded: number; served: number; remoteCommits: number; leasesLost: number; staleWritesRejected: number };
}

/**
 * One node's part in a cluster: membership, actor leases with fencing, routing of messages to the
 * owner of their actor, and the fan-out of commits (subscriptions, caches) to every node.
 *
 * Created before the actor host, whose ownership and remote port it provides, then attached to it.
 */
export class ClusterNode implements RemoteActors {
  readonly nodeId: string;
  readonly ownership: RedisOwnership;
  readonly membership: Membership;
  readonly bus: Bus;
  #lockClients: Redis[];
  #o: ClusterOptions;
  #host: ActorHost | null = null;
  #log: Logger | undefined;
  #counters = { forwarded: 0, served: 0, remoteCommits: 0, staleWritesRejected: 0 };
  #closed = false;

  constructor(opts: ClusterOptions & { store: Store; log?: Logger }) {
    this.#o = opts;
    this.#log = opts.log;
    this.nodeId = opts.nodeId ?? `node-${randomUUID().slice(0, 8)}`;
    const prefix = opts.prefix ?? 'troupe';
    this.bus = new Bus({ url: opts.redisUrl, nodeId: this.nodeId, prefix, requestTimeoutMs: opts.requestTimeoutMs, log: opts.log });
    const lockUrls = opts.lockUrls && opts.lockUrls.length > 0 ? opts.lockUrls : [opts.redisUrl];
    // A lock instance that is down must fail fast, so the majority decides without waiting.
    this.#lockClients = lockUrls.map((url) => {
      // An instance that stops answering (paused, partitioned) must not stall renewals: its
      // commands time out and count as votes against.
      const timeout = Math.max(100, Math.min(1000, Math.floor((opts.leaseMs ?? 10_000) / 4)));
      const c = new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 1000, commandTimeout: timeout });
      c.on('error', (e) => this.#log?.debug({ err: e, url }, 'lock instance connection error'));
      return c;
    });
    this.membership = new Membership({
      redis: this.bus.redis,
      nodeId: this.nodeId,
      address: '',
      prefix,
      heartbeatMs: opts.heartbeatMs,
      actors: () => Object.fromEntries(this.#host?.activeByKind() ?? []),
      log: opts.log,
    });
    this.ownership = new RedisOwnership({
      nodeId: this.nodeId,
      lockClients: this.#lockClients,
      redis: this.bus.redis,
      store: opts.store,
      isAlive: (n) => this.membership.isAlive(n),
      leaseMs: opts.leaseMs,
      prefix,
      log: opts.log,
    });
  }

  /** Names this cluster's Redis keys and channels. */
  get prefix(): string {
    return this.#o.prefix ?? 'troupe';
  }

  /** Lease duration in milliseconds. */
  get leaseMs(): number {
    return this.#o.leaseMs ?? 10_000;
  }

  /** Counts a commit the store refused as stale (the actor host reports them). */
  fenced(): void {
    this.#counters.staleWritesRejected++;
  }

  /**
   * Wires the node to its actor host: answers other nodes' forwarded messages, fans commits out
   * and takes others' in, and drops actors whose lease is lost.
   */
  async attach(host: ActorHost): Promise<void> {
    this.#host = host;
    this.ownership.onLost((stream) => host.leaseLost(stream));
    const served = <T>(fn: () => Promise<T>): Promise<T> => {
      this.#counters.served++;
      return fn();
    };
    this.bus.handle('actor.send', (p) =>
      served(async () => {
        const { address, event, opts } = p as { address: ActorAddress; event: { type: string } & Record<string, unknown>; opts: WireTurnOptions };
        try {
          const r = await host.sendForwarded(address, event, opts);
          if (r === DUPLICATE) return 'duplicate';
          return { snapshot: host.persisted(address.kind, r.snapshot), version: r.version, event: r.event } satisfies WireTurn;
        } catch (e) {
          if (e instanceof IdempotencyConflict) throw new ProtocolError('ALREADY_EXISTS', e.message, { idempotencyConflict: e.key });
          if (opts.answerChanged && isProtocolError(e, 'VERSION_MISMATCH')) {
            const now = await host.readForwarded(address);
            return { changed: { snapshot: host.persisted(address.kind, now.snapshot), version: now.version } } satisfies WireChanged;
          }
          throw e;
        }
      }),
    );
    this.bus.handle('actor.read', (p) =>
      served(async () => {
        const { address } = p as { address: ActorAddress };
        const r = await host.readForwarded(address);
        return { snapshot: host.persisted(address.kind, r.snapshot), version: r.version } satisfies WireRead;
      }),
    );
    this.bus.handle('actor.timer', (p) => served(() => host.fireTimerForwarded(p as TimerRecord)));
    this.bus.handle('actor.deliver', (p) => served(() => host.deliverForwarded(p as OutboxRecord)));
    host.onCommit((events, topics, view, remote) => {
      if (!remote) this.bus.broadcast('commits', { events, topics, view } satisfies CommitMessage);
    });
    // Connections a previous run of this node left counted are gone with it.
    void this.#forgetConnections(this.nodeId).catch((e: unknown) => this.#log?.warn({ err: e }, 'could not release the connections of the previous run'));
    await this.bus.listen('commits', (p) => {
      const m = p as CommitMessage;
      this.#counters.remoteCommits += m.events.length;
      host.applyRemoteCommit(m.events, m.topics, m.view);
    });
    await this.bus.ready();
  }

  #goneListeners: ((nodes: string[]) => void)[] = [];
  #joinedListeners: ((nodes: string[]) => void)[] = [];

  /** Calls `fn` with the nodes found gone (heartbeat expired) at each of this node's heartbeats. */
  onNodesGone(fn: (nodes: string[]) => void): void {
    this.#goneListeners.push(fn);
  }

  /** Calls `fn` with the nodes that appeared (new, or back from a pause) since the previous heartbeat. */
  onNodesJoined(fn: (nodes: string[]) => void): void {
    this.#joinedListeners.push(fn);
  }

  /**
   * Claims the first start of the cluster (creating the first admin key) for this node; true for
   * one of the nodes asking within a minute of each other.
   */
  async claimBootstrap(): Promise<boolean> {
    return (await this.bus.redis.set(`${this.prefix}:bootstrap`, this.nodeId, 'PX', 60_000, 'NX')) === 'OK';
  }

  /** Joins the cluster (after the node listens), advertising where clients reach it. */
  async join(address: string): Promise<void> {
    this.membership.address = address;
    this.membership.onJoined = (nodes) => {
      for (const fn of this.#joinedListeners) fn(nodes);
    };
    this.membership.onGone = (nodes) => {
      for (const fn of this.#goneListeners) fn(nodes);
      for (const node of nodes) {
        this.bus.failPending(node);
        // One node (rendezvous) closes the books of a node that vanished without saying goodbye.
        if (preferred(`gone\n${node}`, this.membership.alive) === this.nodeId) {
          void this.#forgetConnections(node).catch((e: unknown) => this.#log?.warn({ err: e, node }, 'could not release the connections of a gone node'));
        }
      }
    };
    await this.membership.start();
  }

  #connKey(node: string): string {
    return `${this.#o.prefix ?? 'troupe'}:conns:${node}`;
  }

  /**
   * Notes a principal's connection to this node (and its end), so that when this node dies
   * another one can tell the principal's agent actor its connections are gone.
   */
  connection(tenant: string, principal: string, delta: 1 | -1): void {
    void this.bus.redis.hincrby(this.#connKey(this.nodeId), `${tenant}\n${principal}`, delta).catch(() => {});
  }

  /**
   * Tells the agents connected through a gone node (or this node's previous run) that they are
   * disconnected. The node's record is first renamed away (atomically), so connections made
   * meanwhile (this run's) are not taken with it; an agent whose actor is still leased to the
   * dead node is told once that lease expires.
   */
  async #forgetConnections(node: string): Promise<void> {
    const host = this.#host;
    if (!host) return;
    const taken = `${this.#connKey(node)}:gone:${randomUUID()}`;
    try {
      await this.bus.redis.rename(this.#connKey(node), taken);
    } catch {
      return; // No record: nobody was connected through it.
    }
    // Should this node stop before it is done, the record does not stay for ever.
    await this.bus.redis.pexpire(taken, 3_600_000);
    const entries = await this.bus.redis.hgetall(taken);
    const deadline = Date.now() + this.leaseMs * 3 + 5_000;
    for (const [field, count] of Object.entries(entries)) {
      const [tenant = '', principal = ''] = field.split('\n');
      for (let i = 0; i < Number(count); i++) {
        for (;;) {
          try {
            await host.send({ tenant, kind: 'agent', id: principal }, { type: 'agent.disconnected' }, { principal: 'system' });
            break;
          } catch (e) {
            // Not an agent, or no connection counted any more: nothing to tell.
            if (!isProtocolError(e, 'UNAVAILABLE') || Date.now() > deadline || this.#closed) return;
            await new Promise((resolve) => setTimeout(resolve, Math.max(50, Number(e.data.retryAfterMs ?? 200))).unref());
          }
        }
      }
    }
    await this.bus.redis.del(taken);
  }

  // RemoteActors: the actor host calls these for actors another node owns.

  async send(node: string, address: ActorAddress, event: { type: string } & Record<string, unknown>, opts: WireTurnOptions): Promise<WireTurn | WireChanged | 'duplicate'> {
    this.#counters.forwarded++;
    try {
      return await this.bus.request<WireTurn | WireChanged | 'duplicate'>(node, 'actor.send', { address, event, opts });
    } catch (e) {
      const key = isProtocolError(e, 'ALREADY_EXISTS') ? e.data.idempotencyConflict : undefined;
      if (typeof key === 'string') throw new IdempotencyConflict(key);
      throw e;
    }
  }

  async read(node: string, address: ActorAddress): Promise<WireRead> {
    this.#counters.forwarded++;
    try {
      return await this.bus.request<WireRead>(node, 'actor.read', { address });
    } catch (e) {
      // A read changes nothing: whatever happened on the way, retrying it is safe.
      if (isProtocolError(e, 'UNAVAILABLE') && e.data.outcome === 'unknown') {
        throw new ProtocolError('UNAVAILABLE', `Node ${node}, which holds the ${address.kind}, did not answer in time; retry.`, { retryAfterMs: 500, ownerMoving: true });
      }
      throw e;
    }
  }

  async fireTimer(node: string, timer: TimerRecord): Promise<void> {
    this.#counters.forwarded++;
    await this.bus.request(node, 'actor.timer', timer);
  }

  async deliver(node: string, record: OutboxRecord): Promise<void> {
    this.#counters.forwarded++;
    await this.bus.request(node, 'actor.deliver', record);
  }

  /**
   * True if this node should fire a stored timer for an actor: it holds the actor, or nobody
   * holds it and rendezvous hashing over the live nodes picks this node. Others leave it, so a
   * timer is not delivered once per node.
   */
  async takes(stream: string): Promise<boolean> {
    if (this.#host?.isActive(stream)) return true;
    if (preferred(stream, this.membership.alive) !== this.nodeId) return false;
    // Not knowing the owner (Redis away) is no reason to leave a due timer unfired.
    return (await this.ownership.owner(stream).catch(() => null)) === null;
  }

  /** Nodes and this node's counters, for `GET /cluster`. */
  async view(): Promise<ClusterView> {
    const nodes = await this.membership.nodes();
    return {
      self: this.nodeId,
      leaseMs: this.leaseMs,
      nodes: nodes.map((n) => ({ ...n, self: n.id === this.nodeId })),
      counters: { ...this.#counters, leasesLost: this.ownership.lostCount },
    };
  }

  /** True when the shared Redis answers. */
  async ping(): Promise<boolean> {
    try {
      await this.bus.redis.ping();
      return true;
    } catch {
      return false;
    }
  }

  /** Leaves the cluster: stops heartbeating, releases every lease, closes connections. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.membership.stop();
    await this.ownership.close();
    await this.bus.close();
    for (const c of this.#lockClients) c.disconnect();
  }
}

/** The node rendezvous (highest random weight) hashing prefers for a key, among `nodes`. */
export function preferred(key: string, nodes: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = -1n;
  for (const n of nodes) {
    const score = createHash('sha1').update(`${n}\n${key}`).digest().readBigUInt64BE(0);
    if (score > bestScore) {
      bestScore = score;
      best = n;
    }
  }
  return best;
}

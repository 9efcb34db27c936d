import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { connect, type TroupeClient } from '../../protocol/client.js';
import { isProtocolError } from '../../protocol/errors.js';
import type { MethodName, MethodResults, ParamsOf } from '../../protocol/methods.js';
import type { Role } from '../../protocol/model.js';
import { Authenticator } from '../../src/auth/Authenticator.js';
import type { ClusterView } from '../../src/cluster/ClusterNode.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { startServerProcess, type ServerProcess } from './node.js';
import { startRedis, type RedisProcess } from './redis.js';
import { tempDir } from './server.js';
import { waitFor } from './waitFor.js';

/** What `GET /cluster` answers on a node of a cluster. */
export type ClusterReport = ClusterView & { mode: 'cluster' };

/** Options of {@link startProcessCluster}; durations in milliseconds. */
export interface ProcessClusterOptions {
  /** Nodes (default 3), with ids `n1`, `n2`, ... */
  nodes?: number;
  /** Redis instances for the leases (default 3); the first one is also the shared Redis. */
  locks?: number;
  leaseMs?: number;
  heartbeatMs?: number;
  /**
   * The nodes' log level (default `TROUPE_TEST_LOG_LEVEL` of this process, else `warn`). Their
   * output is kept and shown by {@link ProcessCluster.logs}; with `TROUPE_TEST_LOG_DIR` set it is
   * also written there, one file per node, with a copy of the store, when the cluster closes.
   */
  logLevel?: string;
}

/** Troupe nodes running as child processes over one SQLite file and real Redis servers. */
export interface ProcessCluster {
  dir: string;
  /** The lock instances; `redis[0]` is also the Redis the nodes share (membership, routing, events). */
  redis: RedisProcess[];
  /** Node ids, by index. */
  ids: string[];
  /** The process of each node as last started (an exited one stays until it is started again). */
  nodes: ServerProcess[];
  leaseMs: number;
  /** The bootstrap admin key of tenant `default` (written by the first node). */
  adminKey: string;
  /** Indexes of the nodes that run and are not stopped (SIGSTOP) or killed. */
  live(): number[];
  /** A new API key of tenant `default`, written into the shared store. */
  key(principal: string, roles: Role[]): Promise<string>;
  /** Connects to node `i` (without reconnecting by itself). */
  connect(i: number, token: string): Promise<TroupeClient>;
  /** `GET /cluster` of node `i` with the admin key. */
  report(i: number): Promise<ClusterReport>;
  /** `GET /metrics` of node `i`. */
  metrics(i: number): Promise<string>;
  /** The node noted as the owner of an actor's stream in the shared Redis, or null. */
  owner(stream: string): Promise<string | null>;
  /** SIGKILLs node `i` and waits for its exit. */
  kill(i: number): Promise<void>;
  /**
   * SIGSTOPs node `i`: its sockets stay open and the kernel buffers what arrives. A process stopped
   * inside a SQLite write transaction would keep the shared file's write lock and stall every other
   * node, which the cluster's real store (MongoDB) does not do; so the node is stopped only at a
   * moment it holds no write lock (stopped, checked, let go a moment and stopped again if it did).
   * Resolves with the number of stops it took.
   */
  pause(i: number): Promise<number>;
  /** SIGCONTs a paused node. */
  resume(i: number): void;
  /** SIGTERMs node `i` and resolves with its exit code (a graceful stop exits with 0). */
  terminate(i: number): Promise<number | null>;
  /** Starts nodes again (same ids, store and Redis), side by side, and waits until every live node sees them. */
  start(...indexes: number[]): Promise<void>;
  /** Resolves once each live node's `GET /cluster` lists exactly the live nodes. */
  settled(timeoutMs?: number): Promise<void>;
  /** The output of node `i` since it was started first, for failure messages. */
  logs(i: number): string;
  /** Kills every node and Redis and removes the data; safe to call twice, also after failures. */
  close(): Promise<void>;
}

const HTTP = (url: string) => url.replace(/^ws:/, 'http:').replace(/\/v1$/, '');

/**
 * Starts Redis servers and cluster nodes (`src/main.ts` with `TROUPE_CLUSTER=true`) on one data
 * directory, the first alone so only it bootstraps the admin key, and waits until every node
 * sees all the others.
 *
 * @example
 * ```ts
 * const c = await startProcessCluster({ nodes: 3, locks: 3 });
 * const admin = await c.connect(0, c.adminKey);
 * await c.kill(0);
 * await c.close();
 * ```
 */
export async function startProcessCluster(opts: ProcessClusterOptions = {}): Promise<ProcessCluster> {
  const n = opts.nodes ?? 3;
  const leaseMs = opts.leaseMs ?? 2_000;
  const tmp = tempDir('troupe-failover-');
  const redis: RedisProcess[] = [];
  const nodes: ServerProcess[] = [];
  const down = new Set<number>();
  const output: string[] = Array.from({ length: n }, () => '');
  const ids = Array.from({ length: n }, (_, i) => `n${i + 1}`);
  let closed = false;
  const env = {
    TROUPE_CLUSTER: 'true',
    TROUPE_CLUSTER_LEASE_MS: String(leaseMs),
    TROUPE_CLUSTER_HEARTBEAT_MS: String(opts.heartbeatMs ?? 200),
    TROUPE_STORE: `sqlite:${path.join(tmp.dir, 'troupe.db')}`,
    TROUPE_LOG_LEVEL: opts.logLevel ?? process.env.TROUPE_TEST_LOG_LEVEL ?? 'warn',
  };

  const close = async () => {
    if (closed) return;
    closed = true;
    // SIGKILL also ends a stopped process; nothing here may be left running after a failure.
    await Promise.all(nodes.map((p) => p.kill()));
    await Promise.all(redis.map((r) => r.stop()));
    const keep = process.env.TROUPE_TEST_LOG_DIR;
    if (keep) {
      fs.mkdirSync(keep, { recursive: true });
      ids.forEach((id, i) => fs.writeFileSync(path.join(keep, `${id}.log`), output[i]!));
      for (const f of fs.readdirSync(tmp.dir)) if (f.startsWith('troupe.db')) fs.copyFileSync(path.join(tmp.dir, f), path.join(keep, f));
    }
    tmp.remove();
  };

  const launch = async (i: number) => {
    const p = await startServerProcess(tmp.dir, {
      ...env,
      TROUPE_NODE_ID: ids[i]!,
      TROUPE_REDIS_URL: redis[0]!.url,
      TROUPE_REDLOCK_URLS: redis.map((r) => r.url).join(','),
    });
    output[i] += `--- ${ids[i]} started (pid ${p.child.pid})\n`;
    p.child.stdout!.on('data', (d: Buffer) => (output[i] += d.toString()));
    p.child.stderr!.on('data', (d: Buffer) => (output[i] += d.toString()));
    nodes[i] = p;
    down.delete(i);
  };

  const report = async (i: number): Promise<ClusterReport> => {
    const res = await fetch(`${HTTP(nodes[i]!.url)}/cluster`, { headers: { authorization: `Bearer ${adminKey}` }, signal: AbortSignal.timeout(2_000) });
    if (res.status !== 200) throw new Error(`GET /cluster on ${ids[i]} answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as ClusterReport;
  };

  const live = () => ids.map((_, i) => i).filter((i) => !down.has(i) && nodes[i]!.child.exitCode === null && nodes[i]!.child.signalCode === null);

  const settled = async (timeoutMs = 10_000) => {
    const want = live()
      .map((i) => ids[i]!)
      .sort()
      .join(',');
    await waitFor(
      async () => {
        for (const i of live()) {
          const seen = (await report(i)).nodes.map((x) => x.id).sort().join(',');
          if (seen !== want) throw new Error(`${ids[i]} sees nodes [${seen}], expected [${want}]`);
        }
        return true;
      },
      { timeoutMs, intervalMs: 50 },
    );
  };

  let adminKey = '';
  try {
    for (let i = 0; i < (opts.locks ?? 3); i++) redis.push(await startRedis());
    // The first node bootstraps alone; the others find the key in the store and leave it be.
    await launch(0);
    adminKey = fs.readFileSync(path.join(tmp.dir, 'admin.key'), 'utf8').trim();
    await Promise.all(ids.slice(1).map((_, i) => launch(i + 1)));
    await settled();
  } catch (e) {
    await close();
    throw e;
  }

  return {
    dir: tmp.dir,
    redis,
    ids,
    nodes,
    leaseMs,
    adminKey,
    live,
    async key(principal, roles) {
      // SQLite lets this process write the live store beside the nodes.
      const side = new SqliteStore({ path: path.join(tmp.dir, 'troupe.db') });
      try {
        return (await new Authenticator({ store: side }).createKey({ tenant: 'default', principal, roles })).key;
      } finally {
        await side.close();
      }
    },
    connect: (i, token) => connect(nodes[i]!.url, { token, reconnect: false, callTimeoutMs: 15_000 }),
    report,
    async metrics(i) {
      const res = await fetch(`${HTTP(nodes[i]!.url)}/metrics`, { signal: AbortSignal.timeout(2_000) });
      return res.text();
    },
    async owner(stream) {
      const reply = await redis[0]!.command(`GET troupe:owner:${stream}`);
      const m = /^\$\d+\r\n(.*)\r\n/.exec(reply);
      return m ? m[1]! : null;
    },
    async kill(i) {
      down.add(i);
      await nodes[i]!.kill();
    },
    async pause(i) {
      down.add(i);
      const child = nodes[i]!.child;
      for (let stops = 1; ; stops++) {
        child.kill('SIGSTOP');
        if (writeLockFree(path.join(tmp.dir, 'troupe.db'))) return stops;
        if (stops === 50) throw new Error(`node ${ids[i]} held the store's write lock at each of 50 stops`);
        child.kill('SIGCONT');
        await delay(2);
      }
    },
    resume(i) {
      nodes[i]!.child.kill('SIGCONT');
      down.delete(i);
    },
    async terminate(i) {
      down.add(i);
      const p = nodes[i]!;
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
      return (await p.exited).code;
    },
    async start(...indexes) {
      await Promise.all(indexes.map((i) => launch(i)));
      await settled();
    },
    settled,
    logs: (i) => output[i]!,
    close,
  };
}

/**
 * A principal's connection to the cluster that moves to another live node when its node goes
 * away, the way an agent with a list of node addresses would. Calls refused with UNAVAILABLE
 * that say nothing was written (`data.ownerMoving`, an open circuit), BUSY or RATE_LIMITED are
 * retried after `data.retryAfterMs`; other failures (a dropped connection, an unconfirmed write,
 * no answer) reject with {@link OutcomeUnknown}, since the change may or may not have been made.
 *
 * @example
 * ```ts
 * const lead = new ClusterClient(cluster, cluster.adminKey, 0);
 * const t = await lead.call('task.create', { type: 'review', title: 'PR 7' });
 * ```
 */
export class ClusterClient {
  #c: ProcessCluster;
  #token: string;
  #client: TroupeClient | null = null;
  #node = -1;
  #onConnect: (c: TroupeClient) => Promise<unknown>;
  #connecting: Promise<TroupeClient> | null = null;
  /** Refusals retried after their hint. */
  retried = 0;
  /** Times this client connected to a node after the first. */
  reconnects = 0;

  constructor(
    cluster: ProcessCluster,
    token: string,
    readonly preferred: number,
    onConnect: (c: TroupeClient) => Promise<unknown> = async () => undefined,
  ) {
    this.#c = cluster;
    this.#token = token;
    this.#onConnect = onConnect;
  }

  /** The index of the node this client is connected to (-1 before the first call). */
  get node(): number {
    return this.#node;
  }

  /** The open connection, made (or remade on another live node) when needed. */
  async client(): Promise<TroupeClient> {
    if (this.#client?.connected && this.#c.live().includes(this.#node)) return this.#client;
    this.#connecting ??= this.#reconnect().finally(() => (this.#connecting = null));
    return this.#connecting;
  }

  async #reconnect(): Promise<TroupeClient> {
    const old = this.#client;
    this.#client = null;
    if (old) {
      this.reconnects++;
      void old.close();
    }
    return waitFor(
      async () => {
        const live = this.#c.live();
        if (live.length === 0) throw new Error('no live node to connect to');
        const i = live.includes(this.preferred) ? this.preferred : live[(this.preferred + 1) % live.length]!;
        const c = await this.#c.connect(i, this.#token);
        try {
          await retrying(() => this.#onConnect(c), this);
        } catch (e) {
          void c.close();
          throw e;
        }
        this.#node = i;
        this.#client = c;
        return c;
      },
      { timeoutMs: 20_000, intervalMs: 100 },
    );
  }

  /** Calls a method on the current node, retrying refusals that wrote nothing. */
  async call<M extends MethodName>(method: M, params: ParamsOf<M>): Promise<MethodResults[M]> {
    for (;;) {
      const c = await this.client();
      try {
        return await retrying(() => c.call(method, params), this);
      } catch (e) {
        // A connection that closed before the call was sent wrote nothing: go to another node.
        if (isProtocolError(e, 'UNAVAILABLE') && e.message.startsWith('Not connected')) continue;
        if (isProtocolError(e, 'UNAVAILABLE') || isProtocolError(e, 'TIMEOUT')) throw new OutcomeUnknown(method, e);
        throw e;
      }
    }
  }

  async close(): Promise<void> {
    await this.#client?.close();
  }
}

/** A call whose change may or may not have been made (its connection dropped, or the store did not confirm it). */
export class OutcomeUnknown extends Error {
  constructor(
    readonly method: string,
    override readonly cause: Error,
  ) {
    super(`${method}: outcome unknown (${cause.message})`);
  }
}

/** True for refusals after which nothing was written and the same call may be sent again. */
function retryable(e: unknown): e is { data: { retryAfterMs: number } } {
  if (isProtocolError(e, 'BUSY') || isProtocolError(e, 'RATE_LIMITED')) return typeof e.data.retryAfterMs === 'number';
  if (!isProtocolError(e, 'UNAVAILABLE') || typeof e.data.retryAfterMs !== 'number') return false;
  return e.data.ownerMoving === true || e.data.circuit === 'open';
}

/** Runs `fn`, again after each retryable refusal's `retryAfterMs`, for up to 20 s. */
async function retrying<T>(fn: () => Promise<T>, stats: { retried: number }): Promise<T> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (!retryable(e) || Date.now() > deadline) throw e;
      stats.retried++;
      // The server's own hint of when the owner will have moved: a wait it asks for, not a guess.
      await new Promise((r) => setTimeout(r, e.data.retryAfterMs));
    }
  }
}

/** Whether SQLite's write lock on the file at `file` can be taken now (taken and let go at once). */
function writeLockFree(file: string): boolean {
  const db = new Database(file, { timeout: 0 });
  try {
    db.exec('BEGIN IMMEDIATE');
    db.exec('ROLLBACK');
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === 'SQLITE_BUSY') return false;
    throw err;
  } finally {
    db.close();
  }
}

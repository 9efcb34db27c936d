import path from 'node:path';
import type { Role } from '../../protocol/model.js';
import { connect, type ClientOptions, type TroupeClient } from '../../protocol/client.js';
import { isProtocolError } from '../../protocol/errors.js';
import type { ClusterOptions } from '../../src/cluster/ClusterNode.js';
import type { TroupeServerOptions } from '../../src/server/TroupeServer.js';
import { sqliteStore, startServer, tempDir, type TestServer } from './server.js';
import { startRedis, type RedisProcess } from './redis.js';

/** Nodes of one cluster running in this process, over one SQLite file and real Redis servers. */
export interface InProcessCluster {
  nodes: TestServer[];
  /** The shared Redis first, then the other lock instances (`redis[0]` is also the first lock). */
  redis: RedisProcess[];
  /** The prefix of this cluster's Redis keys and channels (`<prefix>:lease:<stream>`...). */
  prefix: string;
  /** The SQLite file every node's store opens. */
  dbPath: string;
  /** Indexes of the nodes that hold the actor in memory now (at most one, if ownership works). */
  holders(stream: string): number[];
  /** A key valid on every node (they share the store). */
  key(tenant: string, principal: string, roles: Role[]): Promise<string>;
  /** Connects a client to node `i`. */
  client(i: number, tenant: string, principal: string, roles: Role[], opts?: ClientOptions): Promise<TroupeClient>;
  close(): Promise<void>;
}

/**
 * Starts `n` nodes in this process, each with its own SqliteStore on one shared file (as
 * separate processes would have), a shared Redis and `locks` Redis instances for the leases.
 */
export async function startCluster(
  n: number,
  opts: { locks?: number; cluster?: Partial<ClusterOptions>; server?: Partial<TroupeServerOptions> } = {},
): Promise<InProcessCluster> {
  const tmp = tempDir('troupe-cluster-');
  const redis = await Promise.all(Array.from({ length: Math.max(1, opts.locks ?? 1) }, () => startRedis()));
  const prefix = `t${Math.random().toString(36).slice(2, 8)}`;
  const nodes: TestServer[] = [];
  const clients: TroupeClient[] = [];
  for (let i = 0; i < n; i++) {
    nodes.push(
      await startServer({
        store: sqliteStore(tmp.dir),
        cluster: {
          nodeId: `n${i + 1}`,
          redisUrl: redis[0]!.url,
          lockUrls: redis.map((r) => r.url),
          leaseMs: 2_000,
          heartbeatMs: 200,
          requestTimeoutMs: 2_000,
          prefix,
          ...opts.cluster,
        },
        ...opts.server,
      }),
    );
  }
  // Every node sees every other as alive before the test starts routing.
  for (const node of nodes) {
    const m = node.server.cluster!.membership;
    const deadline = Date.now() + 10_000;
    while (m.alive.length < n) {
      if (Date.now() > deadline) throw new Error(`node sees ${m.alive.length} of ${n} nodes`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const key = (tenant: string, principal: string, roles: Role[]) => nodes[0]!.key(tenant, principal, roles);
  return {
    nodes,
    redis,
    prefix,
    dbPath: path.join(tmp.dir, 'troupe.db'),
    holders: (stream) => nodes.flatMap((n, i) => (n.server.host.isActive(stream) ? [i] : [])),
    key,
    async client(i, tenant, principal, roles, copts = {}) {
      const c = await connect(nodes[i]!.url, { token: await key(tenant, principal, roles), reconnect: false, ...copts });
      clients.push(c);
      return c;
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
      await Promise.all(nodes.map((s) => s.close()));
      await Promise.all(redis.map((r) => r.stop()));
      tmp.remove();
    },
  };
}

/**
 * Runs a call until it is not refused with UNAVAILABLE, waiting the `data.retryAfterMs` each
 * refusal asks for (an ownership move in progress, a write lost to another node's), at most
 * `timeoutMs` in all. A refusal whose outcome is unknown is not retried. Resolves with the
 * result and how many refusals came first; other errors reject at once.
 */
export async function whenAvailable<T>(call: () => Promise<T>, timeoutMs = 5_000): Promise<{ value: T; refusals: number }> {
  const deadline = Date.now() + timeoutMs;
  for (let refusals = 0; ; refusals++) {
    try {
      return { value: await call(), refusals };
    } catch (e) {
      // A write whose outcome is unknown may have been applied: the caller cannot count it.
      if (!isProtocolError(e, 'UNAVAILABLE') || e.data.outcome === 'unknown' || Date.now() > deadline) throw e;
      const wait = e.data.retryAfterMs;
      if (typeof wait !== 'number') throw new Error(`UNAVAILABLE without data.retryAfterMs: ${e.message}`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

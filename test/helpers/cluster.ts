import type { Role } from '../../protocol/model.js';
import { connect, type ClientOptions, type TroupeClient } from '../../protocol/client.js';
import type { ClusterOptions } from '../../src/cluster/ClusterNode.js';
import type { TroupeServerOptions } from '../../src/server/TroupeServer.js';
import { sqliteStore, startServer, tempDir, type TestServer } from './server.js';
import { startRedis, type RedisProcess } from './redis.js';

/** Nodes of one cluster running in this process, over one SQLite file and real Redis servers. */
export interface InProcessCluster {
  nodes: TestServer[];
  redis: RedisProcess[];
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

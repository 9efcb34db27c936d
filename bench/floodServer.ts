import path from 'node:path';
import { SqliteStore } from '../src/storage/SqliteStore.js';
import { TroupeServer } from '../src/server/TroupeServer.js';
import { send, serveControl } from './childControl.js';

/**
 * The Troupe node of the flood scenario (bench/flood.ts), in its own process: like
 * bench/serverProcess.ts (embedded SQLite store with the production defaults: WAL,
 * synchronous=FULL, group commit, writer thread; a fresh file in BENCH_DIR; port 0 on 127.0.0.1;
 * silent logging; every limit as shipped), but with keys in two tenants:
 *
 * - tenant `flood-b`: BENCH_FLOOD_B_AGENTS (default 10) well-behaved agents, principals
 *   `agent-<i>`, role agent;
 * - tenant `flood-a`: the flooder (principal `flooder`, role agent) and an admin (principal
 *   `a-admin`), who tightens the flooder's budgets with a tenant override (`ratelimit.set`).
 *
 * Prints `{"port", "bKeys", "flooderKey", "aAdminKey", "store", "pid"}` as one JSON line.
 */
const TENANT_A = 'flood-a';
const TENANT_B = 'flood-b';

async function main(): Promise<void> {
  const dir = process.env.BENCH_DIR;
  if (!dir) throw new Error('BENCH_DIR is required');
  const agents = Number(process.env.BENCH_FLOOD_B_AGENTS ?? '10');
  const store = new SqliteStore({ path: path.join(dir, 'troupe.db'), synchronous: 'FULL', writer: 'worker' });
  const server = new TroupeServer({ store, port: 0, host: '127.0.0.1' });
  const { port } = await server.start();
  const bKeys: string[] = [];
  for (let i = 0; i < agents; i++) {
    bKeys.push((await server.app.auth.createKey({ tenant: TENANT_B, principal: `agent-${i}`, roles: ['agent'] })).key);
  }
  const flooderKey = (await server.app.auth.createKey({ tenant: TENANT_A, principal: 'flooder', roles: ['agent'] })).key;
  const aAdminKey = (await server.app.auth.createKey({ tenant: TENANT_A, principal: 'a-admin', roles: ['admin'] })).key;
  serveControl(() => server.close(), () => ({ activeActors: server.host.activeCount }));
  send({ port, bKeys, flooderKey, aAdminKey, store: 'sqlite WAL synchronous=FULL, group commit, worker writer', pid: process.pid });
}

main().catch((e: unknown) => {
  process.stderr.write(`flood server failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Store } from '../../actors/Store.js';
import { connect, type ClientOptions, type TroupeClient } from '../../protocol/client.js';
import type { Role } from '../../protocol/model.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { TroupeServer, type TroupeServerOptions } from '../../src/server/TroupeServer.js';

/** A running test server on a free port. */
export interface TestServer {
  server: TroupeServer;
  store: Store;
  url: string;
  httpUrl: string;
  /** Creates an API key (and the tenant) and returns it. */
  key(tenant: string, principal: string, roles: Role[]): Promise<string>;
  /** Creates a key and connects a client with it. */
  client(tenant: string, principal: string, roles: Role[], opts?: ClientOptions): Promise<TroupeClient>;
  /** Closes every client it made, then the server. */
  close(): Promise<void>;
}

/** A fresh temporary directory, removed by the returned function. */
export function tempDir(prefix = 'troupe-test-'): { dir: string; remove: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Opens a SQLite store in a directory. */
export function sqliteStore(dir: string): SqliteStore {
  // The writer thread, as the server runs in production.
  return new SqliteStore({ path: path.join(dir, 'troupe.db'), synchronous: 'NORMAL', writer: 'worker' });
}

/** Starts a server on port 0 over the given store (memory by default). */
export async function startServer(opts: Partial<TroupeServerOptions> = {}): Promise<TestServer> {
  const store = opts.store ?? new MemoryStore();
  const server = new TroupeServer({ ...opts, store, port: 0 });
  const { url, httpUrl } = await server.start();
  const clients: TroupeClient[] = [];
  const key = async (tenant: string, principal: string, roles: Role[]) =>
    (await server.app.auth.createKey({ tenant, principal, roles })).key;
  return {
    server,
    store,
    url,
    httpUrl,
    key,
    async client(tenant, principal, roles, copts = {}) {
      const c = await connect(url, { token: await key(tenant, principal, roles), reconnect: false, ...copts });
      clients.push(c);
      return c;
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
      await server.close();
    },
  };
}

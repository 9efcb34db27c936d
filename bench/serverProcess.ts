import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { SqliteStore } from '../src/storage/SqliteStore.js';
import { TroupeServer } from '../src/server/TroupeServer.js';
import { send, serveControl } from './childControl.js';

/**
 * A Troupe node for the bench, in its own process: the embedded SQLite store with the production
 * defaults (WAL, synchronous=FULL, group commit, writer thread, as `openStore` opens it; override
 * with BENCH_SYNC=NORMAL or BENCH_WRITER=inline), a fresh file in BENCH_DIR, port 0 on 127.0.0.1,
 * silent logging. Creates BENCH_AGENTS API keys (tenant `bench`, principals `agent-<i>`, role
 * agent) and, with BENCH_ADMIN=1, one admin key (principal `bench-admin`), and prints
 * `{"port", "keys", "adminKey"?, "store"}` as one JSON line.
 */
async function main(): Promise<void> {
  const dir = process.env.BENCH_DIR;
  if (!dir) throw new Error('BENCH_DIR is required');
  const agents = Number(process.env.BENCH_AGENTS ?? '100');
  const synchronous = process.env.BENCH_SYNC === 'NORMAL' ? ('NORMAL' as const) : ('FULL' as const);
  const writer = process.env.BENCH_WRITER === 'inline' ? 'inline' : 'worker';
  const store = new SqliteStore({ path: path.join(dir, 'troupe.db'), synchronous, writer });

  // Count commit calls and group-commit transactions without changing the store. Inline writer:
  // the store arms one setImmediate when a call finds its queue empty (a new batch), so spying on
  // setImmediate during the call tells exactly when a transaction begins. Worker writer: each batch
  // is one postMessage to the writer thread, carrying its calls.
  let commits = 0;
  let flushes = 0;
  const commit = store.commit.bind(store);
  const realSetImmediate = globalThis.setImmediate;
  store.commit = (items) => {
    let armed = false;
    if (writer === 'inline') {
      globalThis.setImmediate = ((...args: Parameters<typeof setImmediate>) => {
        armed = true;
        return realSetImmediate(...args);
      }) as typeof setImmediate;
    }
    try {
      return commit(items);
    } finally {
      globalThis.setImmediate = realSetImmediate;
      commits++;
      if (armed) flushes++;
    }
  };
  if (writer === 'worker') {
    const post = Worker.prototype.postMessage;
    Worker.prototype.postMessage = function (this: Worker, message: unknown, transfer?: readonly Transferable[]) {
      if (message && typeof message === 'object' && Array.isArray((message as { calls?: unknown }).calls)) flushes++;
      return post.call(this, message, transfer as never);
    };
  }

  const maxActiveActors = process.env.BENCH_MAX_ACTIVE ? Number(process.env.BENCH_MAX_ACTIVE) : undefined;
  const server = new TroupeServer({ store, port: 0, host: '127.0.0.1', maxActiveActors });
  const { port, url } = await server.start();
  const keys: string[] = [];
  for (let i = 0; i < agents; i++) {
    keys.push((await server.app.auth.createKey({ tenant: 'bench', principal: `agent-${i}`, roles: ['agent'] })).key);
  }
  const adminKey =
    process.env.BENCH_ADMIN === '1' ? (await server.app.auth.createKey({ tenant: 'bench', principal: 'bench-admin', roles: ['admin'] })).key : undefined;
  serveControl(() => server.close(), () => ({ commits, flushes, activeActors: server.host.activeCount }));
  send({ port, url, keys, adminKey, store: `sqlite WAL synchronous=${synchronous}, group commit, ${writer} writer`, pid: process.pid });
}

main().catch((e: unknown) => {
  process.stderr.write(`bench server failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});

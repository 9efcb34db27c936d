import { parentPort, workerData } from 'node:worker_threads';
import { SqliteWriter, openDatabase, prepareCall } from './SqliteStore.js';

/**
 * The writer thread of a `SqliteStore` in worker mode (started through sqliteWriterWorker.mjs):
 * it writes every commit, every batch of refusal records and every fencing epoch claim, each batch
 * it receives in one transaction, and answers with the outcomes once they are durable. (The main thread's
 * connection only makes rare writes: keys, tenants, counters, outbox acknowledgements.)
 */
const { path, synchronous, snapshotsKeep } = workerData as { path: string; synchronous: string; snapshotsKeep: number };
const db = openDatabase(path, synchronous);
const writer = new SqliteWriter(db, snapshotsKeep);

parentPort!.on('message', (m: { id: number; calls: string[] } | { close: true }) => {
  if ('close' in m) {
    db.close();
    process.exit(0);
  }
  try {
    const calls = m.calls.map((json) => prepareCall(JSON.parse(json)));
    const results = writer.write(calls).map((r) => (r instanceof Error ? { error: r.message } : r));
    parentPort!.postMessage({ id: m.id, results });
  } catch (e) {
    parentPort!.postMessage({ id: m.id, error: (e as Error).message });
  }
});

import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import type { CommitItem } from '../../actors/Store.js';
import { SqliteWriter, prepareItem } from './SqliteStore.js';

/**
 * The writer thread of a `SqliteStore` in worker mode (started through sqliteWriterWorker.mjs): it owns the only write connection, writes
 * each batch it receives in one transaction, and answers with the outcomes once it is durable.
 */
const { path, synchronous, snapshotsKeep } = workerData as { path: string; synchronous: string; snapshotsKeep: number };
const db = new Database(path);
db.pragma('journal_mode = WAL');
db.pragma(`synchronous = ${synchronous}`);
db.pragma('busy_timeout = 5000');
db.pragma('temp_store = MEMORY');
const writer = new SqliteWriter(db, snapshotsKeep);

parentPort!.on('message', (m: { id: number; calls: string[] } | { close: true }) => {
  if ('close' in m) {
    db.close();
    process.exit(0);
  }
  try {
    const calls = m.calls.map((json) => (JSON.parse(json) as CommitItem[]).map(prepareItem));
    const results = writer.write(calls).map((r) => (r instanceof Error ? { error: r.message } : r));
    parentPort!.postMessage({ id: m.id, results });
  } catch (e) {
    parentPort!.postMessage({ id: m.id, error: (e as Error).message });
  }
});

import fs from 'node:fs';
import path from 'node:path';
import type { Store } from '../../actors/Store.js';
import { MemoryStore } from './MemoryStore.js';
import { MongoStore } from './MongoStore.js';
import { SqliteStore } from './SqliteStore.js';

/**
 * Opens the store a URL names: `sqlite:<file>` (the embedded default; the directory is created),
 * `mongodb://…` or `mongodb+srv://…` (MongoDB for clusters; a replica set; the database is the
 * URL's path, `troupe` when it names none; connects on first use) or `memory:` (nothing survives
 * a restart).
 *
 * @example
 * ```ts
 * const store = openStore('mongodb://localhost:27017/troupe?replicaSet=rs0');
 * ```
 */
export function openStore(url: string, opts: { sqliteSync?: 'FULL' | 'NORMAL'; writer?: 'inline' | 'worker' } = {}): Store {
  if (url === 'memory:' || url === 'memory') return new MemoryStore();
  if (url.startsWith('sqlite:')) {
    const file = path.resolve(url.slice('sqlite:'.length));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    return new SqliteStore({ path: file, synchronous: opts.sqliteSync ?? 'FULL', writer: opts.writer ?? 'worker' });
  }
  if (url.startsWith('mongodb://') || url.startsWith('mongodb+srv://')) return new MongoStore({ url });
  // Of a URL with an authority only the scheme: the rest may hold a password.
  const shown = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(url) ? `${url.slice(0, url.indexOf('//') + 2)}…` : url;
  throw new Error(
    `Unsupported store URL "${shown}": use sqlite:<file>, mongodb://<host>/<database>?replicaSet=<name>, mongodb+srv://<host>/<database> or memory:`,
  );
}

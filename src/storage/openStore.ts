import fs from 'node:fs';
import path from 'node:path';
import type { Store } from '../../actors/Store.js';
import { MemoryStore } from './MemoryStore.js';
import { SqliteStore } from './SqliteStore.js';

/**
 * Opens the store a URL names: `sqlite:<file>` (the embedded default; the directory is created)
 * or `memory:` (nothing survives a restart).
 */
export function openStore(url: string, opts: { sqliteSync?: 'FULL' | 'NORMAL'; writer?: 'inline' | 'worker' } = {}): Store {
  if (url === 'memory:' || url === 'memory') return new MemoryStore();
  if (url.startsWith('sqlite:')) {
    const file = path.resolve(url.slice('sqlite:'.length));
    fs.mkdirSync(path.dirname(file), { recursive: true });
    return new SqliteStore({ path: file, synchronous: opts.sqliteSync ?? 'FULL', writer: opts.writer ?? 'worker' });
  }
  throw new Error(`Unsupported store URL "${url}": use sqlite:<file> or memory:`);
}

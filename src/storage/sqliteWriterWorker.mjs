// Entry of the SQLite writer thread. Worker threads do not inherit the TypeScript loader, so
// register tsx here before loading the TypeScript implementation (when running from sources).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const source = new URL('./sqliteWriterThread.ts', import.meta.url);
if (existsSync(fileURLToPath(source))) {
  const { register } = await import('tsx/esm/api');
  register();
  await import(source.href);
} else {
  await import(new URL('./sqliteWriterThread.js', import.meta.url).href);
}

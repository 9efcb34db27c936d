import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './waitFor.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A Troupe server running as a child process (`src/main.ts`), for tests that kill it. */
export interface ServerProcess {
  child: ChildProcess;
  url: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILLs the process if it still runs and waits for its exit. */
  kill(): Promise<void>;
}

/**
 * Starts `src/main.ts` on a data directory (embedded SQLite, bootstrap admin key in
 * `<dir>/admin.key`) on a free port; resolves once it listens. `env` adds variables.
 */
export async function startServerProcess(dir: string, env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--port', '0', '--host', '127.0.0.1'], {
    cwd: ROOT,
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TROUPE_'))),
      TROUPE_DATA_DIR: dir,
      TROUPE_LOG_LEVEL: 'silent',
      TROUPE_BOOTSTRAP: 'true',
      TROUPE_SQLITE_SYNC: 'FULL',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const url = await Promise.race([
    waitFor(() => /listening on (ws:\/\/\S+\/v1)/.exec(out)?.[1], { timeoutMs: 30_000 }),
    exited.then(({ code }) => {
      throw new Error(`troupe exited with ${code} before listening: ${err}`);
    }),
  ]);
  return {
    child,
    url,
    exited,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

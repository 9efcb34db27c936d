import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

/** CPU time and memory a child reported. */
export interface Usage {
  userUs: number;
  systemUs: number;
  rssBytes: number;
  /** Troupe node only: store commit calls and group-commit flushes so far. */
  commits?: number;
  flushes?: number;
  /** Troupe node only: actors in memory. */
  activeActors?: number;
}

/** A control message, or undefined for other output (e.g. `--trace-gc`), which goes to stderr. */
function control(line: string): Record<string, unknown> | undefined {
  if (line.startsWith('{')) {
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch {
      // not ours
    }
  }
  process.stderr.write(`[child] ${line}\n`);
  return undefined;
}

/**
 * A bench child process (the Troupe node or the echo server) run with `node --import tsx`,
 * talking JSON lines over stdin/stdout (see childControl.ts).
 */
export class Child {
  readonly proc: ChildProcess;
  readonly hello: Record<string, unknown>;
  #waiters: ((msg: Record<string, unknown>) => void)[] = [];
  #exited: Promise<number | null>;

  private constructor(proc: ChildProcess, hello: Record<string, unknown>, lines: readline.Interface, exited: Promise<number | null>) {
    this.proc = proc;
    this.hello = hello;
    this.#exited = exited;
    lines.on('line', (line) => {
      const msg = control(line);
      if (!msg) return;
      const w = this.#waiters.shift();
      if (w) w(msg);
    });
  }

  /** Starts `bench/<file>` with extra node flags and environment; resolves on its first line. */
  static async start(file: string, opts: { nodeArgs?: string[]; env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Child> {
    const script = fileURLToPath(new URL(file, import.meta.url));
    const proc = spawn(process.execPath, ['--import', 'tsx', ...(opts.nodeArgs ?? []), script], {
      env: { ...process.env, ...opts.env },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    const lines = readline.createInterface({ input: proc.stdout! });
    const hello = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${file} did not start within ${opts.timeoutMs ?? 30_000} ms`)), opts.timeoutMs ?? 30_000);
      const first = (line: string) => {
        const msg = control(line);
        if (!msg) return;
        clearTimeout(timer);
        lines.off('line', first);
        resolve(msg);
      };
      lines.on('line', first);
      void exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`${file} exited with ${code} before reporting its port`));
      });
    });
    return new Child(proc, hello, lines, exited);
  }

  /** The child's CPU time and RSS now. */
  usage(): Promise<Usage> {
    return new Promise((resolve) => {
      this.#waiters.push((m) => resolve(m.usage as Usage));
      this.proc.stdin!.write('usage\n');
    });
  }

  /** Asks the child to shut down and waits (kills it after `timeoutMs`). */
  async stop(timeoutMs = 15_000): Promise<number | null> {
    this.proc.stdin!.write('stop\n');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), timeoutMs);
    const code = await this.#exited;
    clearTimeout(timer);
    return code;
  }
}

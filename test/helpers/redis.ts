import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { waitFor } from './waitFor.js';

/** A real `redis-server` started by a test on a free port, with no persistence. */
export interface RedisProcess {
  port: number;
  /** `redis://127.0.0.1:<port>`. */
  url: string;
  /** SIGSTOPs the server: connections stay open but nothing is answered. */
  pause(): void;
  /** SIGCONTs a paused server. */
  resume(): void;
  /** Kills the server (SIGKILL) and waits for its exit; safe to call twice. */
  stop(): Promise<void>;
  /** Starts a fresh (empty) server on the same port after `stop`, and waits until it answers. */
  restart(): Promise<void>;
  /** One command over a raw socket (inline form, e.g. `KEYS *`); resolves with the raw reply. */
  command(line: string): Promise<string>;
  /** The process id of the server running now (after `restart`, the new one's). */
  pid(): number;
}

/** A port that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Sends one inline command and resolves with the first reply chunk. */
function rawCommand(port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.setTimeout(1_000, () => sock.destroy(new Error('redis did not answer')));
    sock.once('error', reject);
    sock.once('connect', () => sock.write(`${line}\r\n`));
    sock.once('data', (d) => {
      sock.end();
      resolve(d.toString());
    });
  });
}

/**
 * Starts `redis-server --port <free> --save '' --appendonly no` and resolves once it answers
 * PING with PONG. Call `stop()` when done.
 *
 * @example
 * ```ts
 * const redis = await startRedis();
 * const ts = await startServer({ redisUrl: redis.url });
 * await redis.stop();
 * ```
 */
export async function startRedis(): Promise<RedisProcess> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();

  const launch = async () => {
    const c = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child = c;
    exited = new Promise((resolve) => c.once('exit', () => resolve()));
    await waitFor(
      async () => {
        if (c.exitCode !== null) throw new Error(`redis-server exited with ${c.exitCode}: ${err}`);
        return (await rawCommand(port, 'PING').catch(() => '')).startsWith('+PONG');
      },
      { timeoutMs: 10_000 },
    );
  };
  await launch();

  const stop = async () => {
    const c = child;
    // SIGKILL works whatever the state, also on a paused process.
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await exited;
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pause: () => void child?.kill('SIGSTOP'),
    resume: () => void child?.kill('SIGCONT'),
    stop,
    async restart() {
      await stop();
      await launch();
    },
    command: (line) => rawCommand(port, line),
    pid: () => child!.pid!,
  };
}

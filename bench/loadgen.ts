import { performance } from 'node:perf_hooks';

/** Records one finished call: its method, how long it took (ms) and whether it succeeded. */
export type Recorder = (method: string, ms: number, ok: boolean, error?: string) => void;

/**
 * One unit of work of a worker (a single call, or a 4-call lifecycle). Resolves true when the
 * unit completed (counted as one `unit`, e.g. one lifecycle), false when it was abandoned after
 * an error.
 */
export type Work = (worker: number, rec: Recorder) => Promise<boolean>;

/** Options of {@link closedLoop}; durations in milliseconds. */
export interface LoopOptions {
  /** Workers, each with one unit in flight at a time. */
  workers: number;
  warmupMs: number;
  measureMs: number;
  /** Upper bound on units per worker, whatever the clock says. */
  maxUnitsPerWorker?: number;
  /** Give up after this many failed calls (a broken server must not spin the bench). */
  maxErrors?: number;
  /** Called when the measured window opens and closes (to sample CPU time). */
  onWindow?: (edge: 'start' | 'end') => void;
  work: Work;
}

/** What a closed-loop run measured inside its window. */
export interface LoopResult {
  windowMs: number;
  calls: number;
  units: number;
  errors: number;
  firstError?: string;
  /** Latency samples (ms) of calls that finished inside the window, per method. */
  byMethod: Map<string, number[]>;
  all: number[];
  /** Client process CPU time (user+system, µs) spent inside the window. */
  clientCpuUs: number;
}

/**
 * A closed-loop load run: every worker starts its next unit as soon as the previous one ends.
 * A warm-up period runs first and is not recorded; then calls and units that finish inside the
 * measured window are counted. Bounded by time, units and errors.
 */
export async function closedLoop(opts: LoopOptions): Promise<LoopResult> {
  let phase: 0 | 1 | 2 = 0;
  let start = 0;
  let end = 0;
  let cpuStart = process.cpuUsage();
  let cpuUs = 0;
  const res: LoopResult = { windowMs: 0, calls: 0, units: 0, errors: 0, byMethod: new Map(), all: [], clientCpuUs: 0 };
  const maxErrors = opts.maxErrors ?? 1000;
  const rec: Recorder = (method, ms, ok, error) => {
    if (!ok) {
      res.errors++;
      res.firstError ??= `${method}: ${error}`;
      if (res.errors >= maxErrors) phase = 2;
      return;
    }
    if (phase !== 1) return;
    res.calls++;
    res.all.push(ms);
    let list = res.byMethod.get(method);
    if (!list) res.byMethod.set(method, (list = []));
    list.push(ms);
  };
  const warm = setTimeout(() => {
    if (phase !== 0) return;
    phase = 1;
    start = performance.now();
    cpuStart = process.cpuUsage();
    opts.onWindow?.('start');
  }, opts.warmupMs);
  const stop = setTimeout(() => {
    if (phase === 1) {
      end = performance.now();
      const d = process.cpuUsage(cpuStart);
      cpuUs = d.user + d.system;
      opts.onWindow?.('end');
    }
    phase = 2;
  }, opts.warmupMs + opts.measureMs);
  const maxUnits = opts.maxUnitsPerWorker ?? 1_000_000;
  const worker = async (w: number) => {
    for (let n = 0; phase !== 2 && n < maxUnits; n++) {
      const done = await opts.work(w, rec);
      if (done && phase === 1) res.units++;
    }
  };
  await Promise.all(Array.from({ length: opts.workers }, (_, w) => worker(w)));
  clearTimeout(warm);
  clearTimeout(stop);
  if (end === 0 && start !== 0) {
    // Stopped early (units or errors bound): the window ends now.
    end = performance.now();
    const d = process.cpuUsage(cpuStart);
    cpuUs = d.user + d.system;
    opts.onWindow?.('end');
  }
  res.windowMs = end - start;
  res.clientCpuUs = cpuUs;
  return res;
}

/** Times one call and records it; resolves with its result, or undefined after an error. */
export async function timed<T extends { result?: unknown; error?: { message: string } }>(
  rec: Recorder,
  method: string,
  call: () => Promise<T>,
): Promise<T['result'] | undefined> {
  const t0 = performance.now();
  const reply = await call();
  const ms = performance.now() - t0;
  if (reply.error) {
    rec(method, ms, false, reply.error.message);
    return undefined;
  }
  rec(method, ms, true);
  return reply.result;
}

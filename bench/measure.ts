import fs from 'node:fs';
import os from 'node:os';
import type { Child, Usage } from './child.js';
import { closedLoop, type LoopResult, type Work } from './loadgen.js';
import { RpcConn } from './rpcClient.js';
import { summarize, type Latency } from './stats.js';

/** One measured row of the bench (raw baseline, Troupe task path, assignment scenarios). */
export interface Row {
  /** The server's /metrics request counts against what the bench sent (Troupe task rows). */
  metricsCheck?: { agree: boolean; byMethod: Record<string, { sent: number; counted: number }> };
  name: string;
  clients: number;
  inFlightPerClient: number;
  windowMs: number;
  calls: number;
  callsPerSec: number;
  units?: number;
  unitsPerSec?: number;
  errors: number;
  firstError?: string;
  /** What `latencyMs` measures when not every call: a method or an end-to-end span (see byMethodMs). */
  latencyOf?: string;
  latencyMs: Latency;
  byMethodMs?: Record<string, Latency>;
  serverCpuPct?: number;
  serverCpuUsPerCall?: number;
  /** Server CPU per completed unit of work (e.g. per create + autoAssign pair). */
  serverCpuUsPerUnit?: number;
  clientCpuPct: number;
  /** CPU used by everything else on the machine during the window (100% = one core); a noise flag. */
  otherCpuPct?: number;
  commitsPerFlush?: number;
  /** Troupe rows: the server's RSS and actors in memory at the end of the row. */
  serverRssBytes?: number;
  liveActors?: number;
}

/** Busy and total jiffies of all CPUs from /proc/stat (Linux), or undefined elsewhere. */
export function machineCpu(): { busy: number; total: number } | undefined {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const [, ...f] = line.trim().split(/\s+/).map(Number);
    const [user, nice, system, idle, iowait, irq, softirq, steal] = f as number[];
    const busy = user! + nice! + system! + irq! + softirq! + steal!;
    return { busy, total: busy + idle! + iowait! };
  } catch {
    return undefined;
  }
}

export const fmt = (n: number, d = 0) =>
  Number.isFinite(n) ? n.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : '-';
export const ms = (n: number) => (Number.isFinite(n) ? n.toFixed(2) : '-');
export const pad = (s: string, n: number) => s.padStart(n);
export const padEnd = (s: string, n: number) => s.padEnd(n);

/** Options of {@link measure}. */
export interface MeasureOptions {
  warmupMs: number;
  measureMs: number;
  /** Summarise only this method's (or span's) samples as the row's latency; the rest go to byMethodMs. */
  latencyOf?: string;
  /** Stop a worker after this many units (e.g. to bound the state a row leaves behind). */
  maxUnitsPerWorker?: number;
}

/** Runs a closed loop while sampling the server's CPU time at the window's edges; prints one line. */
export async function measure(
  name: string,
  server: Child,
  clients: number,
  inFlight: number,
  work: Work,
  opts: MeasureOptions,
): Promise<Row> {
  const usages: Promise<Usage>[] = [];
  const machine: (ReturnType<typeof machineCpu>)[] = [];
  const r: LoopResult = await closedLoop({
    workers: clients * inFlight,
    warmupMs: opts.warmupMs,
    measureMs: opts.measureMs,
    maxUnitsPerWorker: opts.maxUnitsPerWorker,
    work,
    onWindow: () => {
      usages.push(server.usage());
      machine.push(machineCpu());
    },
  });
  const [u0, u1] = await Promise.all(usages);
  const samples = opts.latencyOf !== undefined ? (r.byMethod.get(opts.latencyOf) ?? []) : r.all;
  const row: Row = {
    name,
    clients,
    inFlightPerClient: inFlight,
    windowMs: r.windowMs,
    calls: r.calls,
    callsPerSec: (r.calls / r.windowMs) * 1000,
    errors: r.errors,
    latencyMs: summarize(samples),
    clientCpuPct: (r.clientCpuUs / 1000 / r.windowMs) * 100,
  };
  if (opts.latencyOf !== undefined) row.latencyOf = opts.latencyOf;
  if (r.firstError) row.firstError = r.firstError;
  if (r.byMethod.size > 1 || opts.latencyOf !== undefined) {
    row.byMethodMs = Object.fromEntries([...r.byMethod].map(([m, s]) => [m, summarize(s)]));
    row.units = r.units;
    row.unitsPerSec = (r.units / r.windowMs) * 1000;
  }
  const [m0, m1] = machine;
  if (m0 && m1 && m1.total > m0.total) {
    const busyPct = ((m1.busy - m0.busy) / (m1.total - m0.total)) * os.cpus().length * 100;
    row.otherCpuPct = Math.max(0, busyPct - row.clientCpuPct - (u0 && u1 ? ((u1.userUs + u1.systemUs - u0.userUs - u0.systemUs) / 1000 / r.windowMs) * 100 : 0));
  }
  if (u0 && u1) {
    const cpuUs = u1.userUs + u1.systemUs - (u0.userUs + u0.systemUs);
    row.serverCpuPct = (cpuUs / 1000 / r.windowMs) * 100;
    row.serverCpuUsPerCall = r.calls > 0 ? cpuUs / r.calls : NaN;
    if (row.units !== undefined) row.serverCpuUsPerUnit = row.units > 0 ? cpuUs / row.units : NaN;
    if (u1.commits !== undefined && u0.commits !== undefined) {
      const flushes = u1.flushes! - u0.flushes!;
      row.commitsPerFlush = flushes > 0 ? (u1.commits - u0.commits) / flushes : NaN;
    }
  }
  const l = row.latencyMs;
  const other = opts.latencyOf !== undefined ? Object.entries(row.byMethodMs ?? {}).filter(([m]) => m !== opts.latencyOf) : [];
  process.stdout.write(
    `  ${padEnd(name, 26)} ${pad(`${clients}×${inFlight}`, 6)}  ${pad(fmt(row.callsPerSec), 7)} calls/s` +
      (row.unitsPerSec !== undefined ? `  ${pad(fmt(row.unitsPerSec), 6)} ${opts.latencyOf !== undefined ? 'ops' : 'lifecycles'}/s` : '') +
      `  p50 ${ms(l.p50)}  p90 ${ms(l.p90)}  p99 ${ms(l.p99)} ms` +
      other.map(([m, s]) => `  (${m}: p50 ${ms(s.p50)} p99 ${ms(s.p99)})`).join('') +
      (row.errors ? `  ERRORS ${row.errors} (${row.firstError})` : '') +
      '\n',
  );
  return row;
}

/** Opens `n` connections a few at a time (with `tokens[i]` as the i-th one's bearer token). */
export async function openConns(url: string, n: number, tokens?: string[]): Promise<RpcConn[]> {
  const conns: RpcConn[] = [];
  // A few at a time, so the server's accept path is not the thing being measured.
  for (let i = 0; i < n; i += 10) {
    const batch = await Promise.all(Array.from({ length: Math.min(10, n - i) }, (_, j) => RpcConn.open(url, tokens?.[i + j])));
    conns.push(...batch);
  }
  return conns;
}

export const closeAll = (conns: RpcConn[]) => Promise.all(conns.map((c) => c.close()));

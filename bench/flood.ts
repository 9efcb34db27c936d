import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Child, type Usage } from './child.js';
import { closedLoop, timed, type Work } from './loadgen.js';
import { closeAll, fmt, machineCpu, ms, openConns, pad, padEnd, type MeasureOptions, type Row } from './measure.js';
import { printProfile, summarizeProfile } from './profile.js';
import type { RpcConn, RpcReply } from './rpcClient.js';
import { summarize } from './stats.js';

/**
 * The flood scenario of `npm run bench`: one misbehaving agent sending as fast as it can is
 * slowed with clear errors while the well-behaved agents of another tenant keep their latency.
 *
 * One fresh node (bench/floodServer.ts: the production store, every server default as shipped)
 * with two tenants:
 *
 * - tenant `flood-b`: FLOOD_B_AGENTS agents in this process, each on its own connection with one
 *   call in flight, each looping over the task lifecycle (create with assignTo self → accept →
 *   start → complete);
 * - tenant `flood-a`: one agent, `flooder`, in its own process (bench/flooder.ts), with
 *   BENCH_FLOOD_CONNS (4) connections × BENCH_FLOOD_IN_FLIGHT (64) `task.create` calls in flight,
 *   each sent as soon as the previous reply arrived, whatever it said. Before anything runs, an
 *   admin of `flood-a` tightens the tenant's own budget (`ratelimit.set`, not the server's
 *   defaults): `task:create` per principal, BENCH_FLOOD_LIMIT (200) per second.
 *
 * Phases: B alone (idle server), then B while the flooder floods; each a warm-up and a window
 * (BENCH_FLOOD_WARMUP_MS, BENCH_FLOOD_MEASURE_MS). Reported: B's per-call latency in both and
 * the ratio (target: p99 under the flood ≤ 2× idle), the flooder's calls/s sent and accepted and
 * its RATE_LIMITED / BUSY counts with a sample error, and the CPU of the server, the flooder, this
 * process and everything else.
 *
 * Alone: `npx tsx bench/flood.ts [--quick] [--profile]` (`--profile` runs the node under
 * `--cpu-prof`, flood phase only, and prints where its threads' time goes).
 */

export const FLOOD_B_AGENTS = 10;
const FLOOD_CONNS = Number(process.env.BENCH_FLOOD_CONNS ?? '4');
const FLOOD_IN_FLIGHT = Number(process.env.BENCH_FLOOD_IN_FLIGHT ?? '64');
const FLOOD_LIMIT = Number(process.env.BENCH_FLOOD_LIMIT ?? '200');
/** The target: B's p99 under the flood at most this many times its p99 on the idle server. */
export const FLOOD_MAX_RATIO = 2;

/** Warm-up and window of each phase. */
export function floodWindows(quick: boolean): MeasureOptions {
  return {
    warmupMs: Number(process.env.BENCH_FLOOD_WARMUP_MS ?? (quick ? 500 : 1500)),
    measureMs: Number(process.env.BENCH_FLOOD_MEASURE_MS ?? (quick ? 3000 : 8000)),
  };
}

type RpcError = NonNullable<RpcReply['error']>;

/** The flooder's counters (bench/flooder.ts). */
interface FlooderCounters {
  sent: number;
  replies: number;
  accepted: number;
  rateLimited: number;
  busy: number;
  otherErrors: number;
  sampleRateLimited: RpcError | null;
  sampleBusy: RpcError | null;
  sampleOther: RpcError | null;
}

/** What the flooder did inside the flood phase's window. */
export interface FlooderWindow {
  connections: number;
  inFlightPerConnection: number;
  windowMs: number;
  sent: number;
  sentPerSec: number;
  accepted: number;
  acceptedPerSec: number;
  rateLimited: number;
  busy: number;
  otherErrors: number;
  sampleRateLimited: RpcError | null;
  sampleBusy: RpcError | null;
  sampleOther: RpcError | null;
  /** The flooder process's CPU over the window (100% = one core). */
  cpuPct: number;
}

/** The flood scenario's results. */
export interface FloodResult {
  /** B's lifecycle calls on the otherwise idle server, and while the flooder floods. */
  idle: Row;
  flood: Row;
  flooder: FlooderWindow;
  /** The override tenant A's admin set for the flooder's tenant. */
  override: { class: string; scope: string; points: number; durationSeconds: number };
  store: string;
}

/** B's unit of work: one lifecycle on its own connection, one call in flight. */
function lifecycle(conns: RpcConn[]): Work {
  let seq = 0;
  return async (w, rec) => {
    const conn = conns[w]!;
    const t = await timed(rec, 'task.create', () =>
      conn.call('task.create', { type: 'bench', title: `Benchmark task ${seq++}`, assignTo: `agent-${w}` }),
    );
    if (!t) return false;
    const taskId = t.id as string;
    if (!(await timed(rec, 'task.accept', () => conn.call('task.accept', { taskId })))) return false;
    if (!(await timed(rec, 'task.start', () => conn.call('task.start', { taskId })))) return false;
    return (await timed(rec, 'task.complete', () => conn.call('task.complete', { taskId, result: { ok: true } }))) !== undefined;
  };
}

const cpuUsOf = (u: Usage) => u.userUs + u.systemUs;
const countersOf = (u: Usage) => (u as Usage & { flood: FlooderCounters }).flood;

/**
 * One phase: B's closed loop (warm-up, then the window), with the server's (and the flooder's)
 * CPU time and counters sampled at the window's edges.
 */
async function phase(
  name: string,
  server: Child,
  conns: RpcConn[],
  windows: MeasureOptions,
  flooder?: Child,
): Promise<{ row: Row; flooder?: FlooderWindow }> {
  const edges: Promise<[Usage, Usage | undefined, ReturnType<typeof machineCpu>]>[] = [];
  const r = await closedLoop({
    workers: conns.length,
    warmupMs: windows.warmupMs,
    measureMs: windows.measureMs,
    work: lifecycle(conns),
    onWindow: () => {
      const machine = machineCpu();
      edges.push(Promise.all([server.usage(), flooder?.usage(), Promise.resolve(machine)]));
    },
  });
  const [[s0, f0, m0], [s1, f1, m1]] = (await Promise.all(edges)) as [
    [Usage, Usage | undefined, ReturnType<typeof machineCpu>],
    [Usage, Usage | undefined, ReturnType<typeof machineCpu>],
  ];
  const pct = (us: number) => (us / 1000 / r.windowMs) * 100;
  const serverCpuUs = cpuUsOf(s1) - cpuUsOf(s0);
  const row: Row = {
    name,
    clients: conns.length,
    inFlightPerClient: 1,
    windowMs: r.windowMs,
    calls: r.calls,
    callsPerSec: (r.calls / r.windowMs) * 1000,
    units: r.units,
    unitsPerSec: (r.units / r.windowMs) * 1000,
    errors: r.errors,
    latencyMs: summarize(r.all),
    byMethodMs: Object.fromEntries([...r.byMethod].map(([m, s]) => [m, summarize(s)])),
    serverCpuPct: pct(serverCpuUs),
    serverCpuUsPerCall: r.calls > 0 ? serverCpuUs / r.calls : NaN,
    clientCpuPct: pct(r.clientCpuUs),
    serverRssBytes: s1.rssBytes,
    liveActors: s1.activeActors,
  };
  if (r.firstError) row.firstError = r.firstError;
  let fw: FlooderWindow | undefined;
  if (f0 && f1) {
    const c0 = countersOf(f0);
    const c1 = countersOf(f1);
    const perSec = (n: number) => (n / r.windowMs) * 1000;
    fw = {
      connections: FLOOD_CONNS,
      inFlightPerConnection: FLOOD_IN_FLIGHT,
      windowMs: r.windowMs,
      sent: c1.sent - c0.sent,
      sentPerSec: perSec(c1.sent - c0.sent),
      accepted: c1.accepted - c0.accepted,
      acceptedPerSec: perSec(c1.accepted - c0.accepted),
      rateLimited: c1.rateLimited - c0.rateLimited,
      busy: c1.busy - c0.busy,
      otherErrors: c1.otherErrors - c0.otherErrors,
      sampleRateLimited: c1.sampleRateLimited,
      sampleBusy: c1.sampleBusy,
      sampleOther: c1.sampleOther,
      cpuPct: pct(cpuUsOf(f1) - cpuUsOf(f0)),
    };
  }
  if (m0 && m1 && m1.total > m0.total) {
    const busyPct = ((m1.busy - m0.busy) / (m1.total - m0.total)) * os.cpus().length * 100;
    row.otherCpuPct = Math.max(0, busyPct - row.clientCpuPct - row.serverCpuPct! - (fw?.cpuPct ?? 0));
  }
  const l = row.latencyMs;
  process.stdout.write(
    `  ${padEnd(name, 26)} ${pad(`${conns.length}×1`, 6)}  ${pad(fmt(row.callsPerSec), 7)} calls/s  ${pad(fmt(row.unitsPerSec!), 6)} lifecycles/s` +
      `  p50 ${ms(l.p50)}  p90 ${ms(l.p90)}  p99 ${ms(l.p99)} ms  srv CPU ${fmt(row.serverCpuPct!)}%` +
      (fw ? `  │ flooder: ${fmt(fw.sentPerSec)} calls/s sent, ${fmt(fw.acceptedPerSec)}/s accepted, ${fmt(fw.rateLimited)} RATE_LIMITED, ${fmt(fw.busy)} BUSY` : '') +
      (row.errors ? `  ERRORS ${row.errors} (${row.firstError})` : '') +
      '\n',
  );
  return fw ? { row, flooder: fw } : { row };
}

const errorText = (r: RpcReply) => `${r.error!.message}${r.error!.data ? ` ${JSON.stringify(r.error!.data)}` : ''}`;
function must(r: RpcReply, what: string): Record<string, unknown> {
  if (r.error) throw new Error(`${what} failed: ${errorText(r)}`);
  return r.result!;
}

/**
 * Runs the flood scenario on a fresh node; with `profileDir`, the node runs under `--cpu-prof`
 * (the profile then covers setup and both phases: give the idle phase short `idleWindows`).
 */
export async function floodRows(opts: {
  windows: MeasureOptions;
  /** The idle phase's windows, when not `windows` (shorter when profiling the flood). */
  idleWindows?: MeasureOptions;
  nodeArgs?: string[];
  profileDir?: string;
}): Promise<FloodResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-flood-'));
  const nodeArgs = [
    ...(opts.nodeArgs ?? []),
    ...(opts.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`, '--cpu-prof-interval=250'] : []),
  ];
  const server = await Child.start('./floodServer.ts', { nodeArgs, env: { BENCH_DIR: dir, BENCH_FLOOD_B_AGENTS: String(FLOOD_B_AGENTS) } });
  const url = `ws://127.0.0.1:${server.hello.port as number}/v1`;
  const conns: RpcConn[] = [];
  let flooder: Child | undefined;
  try {
    const b = await openConns(url, FLOOD_B_AGENTS, server.hello.bKeys as string[]);
    conns.push(...b);
    const admin = (await openConns(url, 1, [server.hello.aAdminKey as string]))[0]!;
    conns.push(admin);
    await Promise.all(b.map(async (c, i) => must(await c.call('agent.register', { id: `agent-${i}`, capabilities: ['bench'] }), `agent.register agent-${i}`)));
    const override = { class: 'task:create', scope: 'principal', points: FLOOD_LIMIT, durationSeconds: 1 };
    const set = must(await admin.call('ratelimit.set', override), 'ratelimit.set');
    const inForce = (set.limits as Record<string, Record<string, { points: number; source: string }>>)['task:create']!.principal!;
    if (inForce.points !== FLOOD_LIMIT || inForce.source !== 'tenant') throw new Error(`ratelimit.set did not take: ${JSON.stringify(inForce)}`);

    const idle = await phase('B lifecycle, idle server', server, b, opts.idleWindows ?? opts.windows);
    flooder = await Child.start('./flooder.ts', {
      env: {
        BENCH_FLOOD_URL: url,
        BENCH_FLOOD_KEY: server.hello.flooderKey as string,
        BENCH_FLOOD_CONNS: String(FLOOD_CONNS),
        BENCH_FLOOD_IN_FLIGHT: String(FLOOD_IN_FLIGHT),
      },
    });
    const flood = await phase('B lifecycle, A flooding', server, b, opts.windows, flooder);
    return { idle: idle.row, flood: flood.row, flooder: flood.flooder!, override, store: server.hello.store as string };
  } finally {
    await flooder?.stop();
    await closeAll(conns);
    await server.stop(30_000);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const sample = (e: RpcError | null) => (e ? `${e.message}${e.data ? ` ${JSON.stringify(e.data)}` : ''}` : '-');

/** The flood scenario's summary block. */
export function printFlood(r: FloodResult): void {
  const f = r.flooder;
  const out: string[] = [];
  out.push('');
  out.push(
    `Flood: ${r.idle.clients} well-behaved agents of tenant B (lifecycle, 1 call in flight each) vs one agent of tenant A sending task.create ` +
      `as fast as it can (${f.connections} connections × ${f.inFlightPerConnection} in flight, own process); A's override: ${r.override.class} ` +
      `${r.override.scope} ${r.override.points} per ${r.override.durationSeconds} s; every server default as shipped`,
  );
  out.push(
    `  ${padEnd('B', 24)} ${pad('calls/s', 8)} ${pad('lc/s', 6)} ${pad('p50', 6)} ${pad('p90', 6)} ${pad('p99', 6)} ${pad('max', 7)} │ ${pad('srv CPU', 7)} ${pad('µs/B call', 9)} ${pad('flooder', 7)} ${pad('bench', 6)} ${pad('other', 6)}`,
  );
  for (const [label, row, fcpu] of [
    ['idle server', r.idle, NaN],
    ['while A floods', r.flood, f.cpuPct],
  ] as const) {
    const l = row.latencyMs;
    out.push(
      `  ${padEnd(label, 24)} ${pad(fmt(row.callsPerSec), 8)} ${pad(fmt(row.unitsPerSec ?? NaN), 6)} ${pad(ms(l.p50), 6)} ${pad(ms(l.p90), 6)} ${pad(ms(l.p99), 6)} ${pad(ms(l.max), 7)} │ ` +
        `${pad(fmt(row.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(row.serverCpuUsPerCall ?? NaN), 9)} ${pad(Number.isFinite(fcpu) ? fmt(fcpu) + '%' : '-', 7)} ${pad(fmt(row.clientCpuPct) + '%', 6)} ${pad(fmt(row.otherCpuPct ?? NaN) + '%', 6)}` +
        (row.errors ? `  ERRORS ${row.errors}: ${row.firstError}` : ''),
    );
  }
  out.push(
    `  ratio under flood ÷ idle: p50 ${fmt(r.flood.latencyMs.p50 / r.idle.latencyMs.p50, 2)}×, p99 ${fmt(r.flood.latencyMs.p99 / r.idle.latencyMs.p99, 2)}× (target ≤ ${FLOOD_MAX_RATIO}×); ` +
      `B's throughput ${fmt((r.flood.callsPerSec / r.idle.callsPerSec) * 100)}% of idle`,
  );
  out.push(
    `  flooder (tenant A): ${fmt(f.sentPerSec)} calls/s sent, ${fmt(f.acceptedPerSec)} calls/s accepted; in ${fmt(f.windowMs / 1000, 1)} s ` +
      `${fmt(f.rateLimited)} RATE_LIMITED, ${fmt(f.busy)} BUSY, ${fmt(f.otherErrors)} other errors`,
  );
  out.push(`    RATE_LIMITED: ${sample(f.sampleRateLimited)}`);
  if (f.sampleBusy) out.push(`    BUSY: ${sample(f.sampleBusy)}`);
  if (f.sampleOther) out.push(`    other: ${sample(f.sampleOther)}`);
  out.push('  (latencies in ms over every B call of the window; srv CPU = server process, 100% = one core; µs/B call = server CPU per');
  out.push('   B call, flood included; flooder, bench = the flooder process and this one (B\'s clients); other = the rest of the machine)');
  const noisy = [r.idle, r.flood].filter((row) => (row.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} phase(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  process.stdout.write(out.join('\n') + '\n');
}

/** The flood scenario's targets. */
export function floodChecks(r: FloodResult): { target: string; pass: boolean; detail: string }[] {
  const ratio = r.flood.latencyMs.p99 / r.idle.latencyMs.p99;
  const f = r.flooder;
  const limited = f.rateLimited + f.busy;
  const retry = (f.sampleRateLimited?.data ?? f.sampleBusy?.data) as { retryAfterMs?: number } | undefined;
  // A fixed window may straddle one more window's budget than its length in seconds.
  const maxAccepted = r.override.points * (Math.ceil(f.windowMs / 1000 / r.override.durationSeconds) + 1);
  return [
    {
      target: `well-behaved tenant p99 under a flood within ${FLOOD_MAX_RATIO}× of idle (${r.idle.clients} agents of B; one agent of A flooding task.create)`,
      pass: ratio <= FLOOD_MAX_RATIO && r.idle.errors === 0 && r.flood.errors === 0,
      detail:
        `p99 ${ms(r.idle.latencyMs.p99)} → ${ms(r.flood.latencyMs.p99)} ms = ${fmt(ratio, 2)}×; p50 ${ms(r.idle.latencyMs.p50)} → ${ms(r.flood.latencyMs.p50)} ms` +
        (r.idle.errors + r.flood.errors > 0 ? `; B errors ${r.idle.errors + r.flood.errors} (${r.flood.firstError ?? r.idle.firstError})` : ''),
    },
    {
      target: 'the flooder is slowed with clear errors (RATE_LIMITED or BUSY with retryAfterMs; accepted within its budget)',
      pass: limited > 0 && typeof retry?.retryAfterMs === 'number' && f.accepted <= maxAccepted,
      detail: `${fmt(f.sentPerSec)} calls/s sent, ${fmt(f.acceptedPerSec)}/s accepted (budget ${r.override.points}/${r.override.durationSeconds} s), ${fmt(limited)} refused`,
    },
  ];
}

/** Standalone: `npx tsx bench/flood.ts [--quick] [--profile]`. */
async function standalone(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean' }, profile: { type: 'boolean' } }, strict: true });
  const here = path.dirname(fileURLToPath(import.meta.url));
  const profDir = path.join(here, 'results', 'profile-flood');
  if (values.profile) {
    fs.rmSync(profDir, { recursive: true, force: true });
    fs.mkdirSync(profDir, { recursive: true });
  }
  const windows = floodWindows(!!values.quick);
  process.stdout.write(`Flood scenario (warm-up ${windows.warmupMs} ms + window ${windows.measureMs} ms per phase)\n`);
  const started = performance.now();
  const r = await floodRows({
    windows,
    nodeArgs: (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean),
    // Profiling is about the flood: the idle phase only gives the ratio its reference.
    ...(values.profile ? { profileDir: profDir, idleWindows: { warmupMs: 200, measureMs: 1000 } } : {}),
  });
  printFlood(r);
  process.stdout.write('\nTargets\n');
  for (const c of floodChecks(r)) process.stdout.write(`  [${c.pass ? 'PASS' : 'MISS'}] ${c.target}: ${c.detail}\n`);
  if (values.profile) {
    const summaries = fs
      .readdirSync(profDir)
      .filter((f) => f.endsWith('.cpuprofile'))
      .map((file) => ({ file, s: summarizeProfile(path.join(profDir, file)) }));
    const busiest = Math.max(...summaries.map((p) => p.s.totalMs));
    // Skip threads that hardly ran (tsx's loader-hook threads).
    for (const p of summaries.filter((p) => p.s.totalMs >= busiest * 0.05)) {
      process.stdout.write(`\n=== ${path.relative(process.cwd(), path.join(profDir, p.file))}\n`);
      printProfile(p.s);
    }
  }
  process.stdout.write(`\n(${((performance.now() - started) / 1000).toFixed(0)} s)\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  standalone().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`flood bench failed: ${(e as Error).stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
}

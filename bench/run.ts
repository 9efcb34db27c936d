import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { ASSIGN_AGENTS, assignmentRows, E2E, FANNED_OUT, RULE_EXPRESSION, type AssignmentSetup } from './assignment.js';
import { Child } from './child.js';
import { CLUSTER_AGENTS, clusterChecks, clusterRows, printCluster } from './cluster.js';
import { ALL_DELIVERED, documentRows, FANOUT_LEVELS } from './documents.js';
import { floodChecks, floodRows, floodWindows, printFlood } from './flood.js';
import { timed, type Work } from './loadgen.js';
import { closeAll, fmt, measure, ms, openConns, pad, padEnd, type Row } from './measure.js';
import { summarizeProfile, printProfile } from './profile.js';
import type { RpcConn } from './rpcClient.js';
import { benchRules } from './rules.js';
import { CALLS_PER_EXECUTION, FIRST_OFFER, WF_AGENTS, workflowRows } from './workflows.js';

/**
 * `npm run bench`: Troupe's task path against a raw `ws` JSON round trip on the same machine.
 *
 * - Baseline: a raw `ws` JSON-RPC echo server (bench/echoServer.ts) in its own process, at
 *   1×1, 10×1, 100×1 clients×in-flight and 1×64.
 * - Troupe: a node (bench/serverProcess.ts) in its own process on the embedded SQLite store with
 *   the production durability (WAL, synchronous=FULL, group commit, fsync per batch), fresh file.
 *   `task.create` latency and the full lifecycle (create with assignTo self → accept → start →
 *   complete, 4 calls) at 1, 10 and 100 agents, each agent its own connection with 1 call in
 *   flight.
 * - Rules: the CEL rule micro-benchmark (bench/rules.ts), in this process: µs per evaluation.
 * - Assignment (bench/assignment.ts): one more node with 1,000 online agents (1,000 connections
 *   from this process): `task.autoAssign` per strategy, `task.create {autoAssign}` until the
 *   agent's inbox notification, `task.createDistributed` with 10 subtasks (the call, and until all
 *   10 are assigned), and `task.autoAssign` with a `task.assignment` CEL rule over 1,000 candidates.
 *   One driver, one operation in flight; shorter windows (BENCH_ASSIGN_WARMUP_MS,
 *   BENCH_ASSIGN_MEASURE_MS); BENCH_ASSIGN_ROWS=<part of a row name> runs only matching rows.
 * - Workflows (bench/workflows.ts): a fresh node per level with 4 instant agents (they accept,
 *   start and complete every task offered at once) and a 3-step sequential workflow, 1, 10 and 50
 *   executions in flight: `workflow.execute` until the first step's inbox notification, and until
 *   the execution's completed notification; executions/s. Windows BENCH_WF_WARMUP_MS,
 *   BENCH_WF_MEASURE_MS.
 * - Flood (bench/flood.ts, not with `--only`): tenant B's 10 lifecycle agents on an idle node, then
 *   while one agent of tenant A floods `task.create` under a tenant rate-limit override.
 * - Documents (bench/documents.ts): the workspace state document. A fresh node per row, one writer
 *   connection (1 call in flight) and 10 or 100 member connections subscribed to
 *   `document:<id>:state`: `workspace.updateState` (a `set` and an `increment`, applied to the
 *   Automerge document) at 10 and 100 subscribers and `workspace.mergeState` (an Automerge change
 *   made on the writer's own copy) at 100, from just before the call until each subscriber's
 *   notification; then, in this process, loading a state document of 10,000 changes from the
 *   store. Windows BENCH_DOC_WARMUP_MS, BENCH_DOC_MEASURE_MS.
 * - Cluster (bench/cluster.ts): src/main.ts nodes as child processes over one SQLite file and three
 *   redis-servers: the lifecycle at 100 agents on a plain node, a cluster of 1 and a cluster of 3
 *   (agents spread; then 3 of 4 calls via another node), a forwarded vs a local `task.progress`,
 *   and the time from SIGKILL of an actor's owner to the next successful write (lease 2 s).
 *   BENCH_CLUSTER_SYNC (default NORMAL), BENCH_CLUSTER_AGENTS, BENCH_CLUSTER_FAILOVERS; windows
 *   BENCH_CLUSTER_WARMUP_MS, BENCH_CLUSTER_MEASURE_MS.
 * - Every row: warm-up, then a fixed window; closed loop; exact percentiles from all samples.
 *
 * Flags: `--quick` (short windows), `--only assignment` (rules, baseline and the assignment
 * scenarios, without the task-path rows), `--only workflows` (baseline and the workflow rows),
 * `--only cluster` (baseline and the cluster section),
 * `--profile` (only the lifecycle at 100 agents, or with
 * `--only assignment` the assignment scenarios, with the server under `--cpu-prof`; prints where
 * each thread's time goes). Env: BENCH_WARMUP_MS, BENCH_MEASURE_MS; BENCH_WRITER=inline|worker (default worker, as `openStore` uses) and
 * BENCH_SYNC=FULL|NORMAL (default FULL) and BENCH_MAX_ACTIVE (actors kept in memory) reach the server
 * process; BENCH_NODE_ARGS adds node flags to it.
 * Traffic goes to 127.0.0.1 only. Results: bench/results/latest.json (with `--only assignment`:
 * latest-assignment.json; with `--only workflows`: latest-workflows.json; with `--only cluster`:
 * latest-cluster.json; with `--profile`:
 * profile-summary.json).
 */

const { values: flags } = parseArgs({
  options: { quick: { type: 'boolean' }, profile: { type: 'boolean' }, only: { type: 'string' } },
  strict: true,
});
if (flags.only !== undefined && flags.only !== 'assignment' && flags.only !== 'workflows' && flags.only !== 'cluster') {
  throw new Error(`--only ${flags.only}: the sections that can run alone are "assignment", "workflows" and "cluster"`);
}
if (flags.profile && (flags.only === 'workflows' || flags.only === 'cluster')) {
  throw new Error(`--profile profiles the lifecycle, or with --only assignment the assignment scenarios; not --only ${flags.only}`);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const resultsDir = path.join(here, 'results');
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? (flags.quick ? 500 : 1500));
const MEASURE_MS = Number(process.env.BENCH_MEASURE_MS ?? (flags.quick ? 1500 : 4000));
const windows = { warmupMs: WARMUP_MS, measureMs: MEASURE_MS };
/** The assignment rows are latency rows with one operation in flight: shorter windows suffice. */
const assignWindows = {
  warmupMs: Number(process.env.BENCH_ASSIGN_WARMUP_MS ?? (flags.quick ? 200 : 500)),
  measureMs: Number(process.env.BENCH_ASSIGN_MEASURE_MS ?? (flags.quick ? 800 : 2500)),
};
/** The workflow rows: closed loops of whole executions. */
const wfWindows = {
  warmupMs: Number(process.env.BENCH_WF_WARMUP_MS ?? (flags.quick ? 500 : 1000)),
  measureMs: Number(process.env.BENCH_WF_MEASURE_MS ?? (flags.quick ? 1500 : 3500)),
};
/** The document fan-out rows: one update in flight, each delivered to 10 or 100 subscribers. */
const docWindows = {
  warmupMs: Number(process.env.BENCH_DOC_WARMUP_MS ?? (flags.quick ? 500 : 1000)),
  measureMs: Number(process.env.BENCH_DOC_MEASURE_MS ?? (flags.quick ? 1500 : 3000)),
};
/** The cluster rows: every start of nodes costs seconds, so the windows are shorter than the task rows'. */
const clusterWindows = {
  warmupMs: Number(process.env.BENCH_CLUSTER_WARMUP_MS ?? (flags.quick ? 300 : 1000)),
  measureMs: Number(process.env.BENCH_CLUSTER_MEASURE_MS ?? (flags.quick ? 1000 : 3000)),
};
const nodeArgsFromEnv = () => (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
const AGENTS = 100;
const LEVELS = [1, 10, 100];
/** Hard stop for the whole run, whatever happens. */
const DEADLINE_MS = 360_000;

/** The raw `ws` baseline rows. */
async function baseline(): Promise<Row[]> {
  const echo = await Child.start('./echoServer.ts');
  const url = `ws://127.0.0.1:${echo.hello.port as number}/`;
  const conns = await openConns(url, AGENTS);
  const rows: Row[] = [];
  let seq = 0;
  try {
    for (const [clients, inFlight] of [
      [1, 1],
      [10, 1],
      [100, 1],
      [1, 64],
    ] as const) {
      rows.push(
        await measure(
          'raw ws round trip',
          echo,
          clients,
          inFlight,
          async (w, rec) => {
            const conn = conns[w % clients]!;
            const r = await timed(rec, 'echo', () => conn.call('task.create', { type: 'bench', title: `Benchmark task ${seq++}` }));
            return r !== undefined;
          },
          windows,
        ),
      );
    }
  } finally {
    await closeAll(conns);
    await echo.stop();
  }
  return rows;
}

type Scenario = 'task.create' | 'lifecycle (4 calls)';

/**
 * One Troupe row on a fresh node and a fresh database, so rows do not depend on what ran before
 * (tasks created by earlier rows would otherwise still be live actors and rows in the store).
 */
async function troupeRow(
  scenario: Scenario,
  agents: number,
  profileDir?: string,
): Promise<{ row: Row; store: string; sizes: Record<string, number> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-'));
  const nodeArgs = [...nodeArgsFromEnv(), ...(profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, '--cpu-prof-interval=250'] : [])];
  const server = await Child.start('./serverProcess.ts', { nodeArgs, env: { BENCH_DIR: dir, BENCH_AGENTS: String(agents) } });
  const url = `ws://127.0.0.1:${server.hello.port as number}/v1`;
  const conns = await openConns(url, agents, server.hello.keys as string[]);
  const sizes: Record<string, number> = {};
  let seq = 0;
  try {
    // Every agent registers itself once (not measured).
    await Promise.all(
      conns.map(async (c, i) => {
        const r = await c.call('agent.register', { id: `agent-${i}`, capabilities: ['bench'] });
        if (r.error) throw new Error(`agent.register failed: ${r.error.message}`);
      }),
    );
    // Message sizes of one create, for comparison with the baseline's.
    const req = { type: 'bench', title: `Benchmark task ${seq++}`, assignTo: 'agent-0' };
    const probe = await conns[0]!.call('task.create', req);
    if (probe.error) throw new Error(`task.create failed: ${probe.error.message}`);
    sizes.createRequestBytes = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'task.create', params: req }).length;
    sizes.createReplyBytes = JSON.stringify({ jsonrpc: '2.0', id: 1, result: probe.result }).length;

    const createWork: Work = async (w, rec) => {
      const conn = conns[w]!;
      const r = await timed(rec, 'task.create', () => conn.call('task.create', { type: 'bench', title: `Benchmark task ${seq++}` }));
      return r !== undefined;
    };
    const lifecycleWork: Work = async (w, rec) => {
      const conn = conns[w]!;
      const agent = `agent-${w}`;
      const t = await timed(rec, 'task.create', () =>
        conn.call('task.create', { type: 'bench', title: `Benchmark task ${seq++}`, assignTo: agent }),
      );
      if (!t) return false;
      const taskId = t.id as string;
      if (!(await timed(rec, 'task.accept', () => conn.call('task.accept', { taskId })))) return false;
      if (!(await timed(rec, 'task.start', () => conn.call('task.start', { taskId })))) return false;
      return (await timed(rec, 'task.complete', () => conn.call('task.complete', { taskId, result: { ok: true } }))) !== undefined;
    };
    const row = await measure(scenario, server, agents, 1, scenario === 'task.create' ? createWork : lifecycleWork, windows);
    const u = await server.usage();
    row.serverRssBytes = u.rssBytes;
    row.liveActors = u.activeActors;
    row.metricsCheck = await metricsAgree(`http://127.0.0.1:${server.hello.port as number}/metrics`, conns);
    return { row, store: server.hello.store as string, sizes };
  } finally {
    await closeAll(conns);
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The server's `/metrics` request counts next to what this benchmark sent, per method: they must
 * be equal once every call has been answered (and they are, since the loop waits for replies).
 */
async function metricsAgree(url: string, conns: RpcConn[]): Promise<{ agree: boolean; byMethod: Record<string, { sent: number; counted: number }> }> {
  const sent = new Map<string, number>();
  for (const c of conns) for (const [m, n] of c.sent) sent.set(m, (sent.get(m) ?? 0) + n);
  const text = await (await fetch(url)).text();
  const counted = new Map<string, number>();
  for (const m of text.matchAll(/^troupe_messages_total\{([^}]*)\} (\d+)/gm)) {
    const method = /method="([^"]*)"/.exec(m[1]!)?.[1];
    if (method) counted.set(method, (counted.get(method) ?? 0) + Number(m[2]));
  }
  const byMethod = Object.fromEntries([...sent].map(([m, n]) => [m, { sent: n, counted: counted.get(m) ?? 0 }]));
  return { agree: Object.values(byMethod).every((x) => x.sent === x.counted), byMethod };
}

/** The thread id in a `--cpu-prof` file name. */
function threadOf(file: string): number {
  return Number(/\.(\d+)\.\d+\.cpuprofile$/.exec(file)?.[1] ?? -1);
}

/** An empty bench/results/profile directory. */
function freshProfileDir(): string {
  const profDir = path.join(resultsDir, 'profile');
  fs.rmSync(profDir, { recursive: true, force: true });
  fs.mkdirSync(profDir, { recursive: true });
  return profDir;
}

/**
 * The profiles written to `profDir`: CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile, one per
 * thread: 0 is the main thread; the others are tsx's loader-hook threads and, with the worker
 * writer, the SQLite writer thread.
 */
function profileFiles(profDir: string): string[] {
  return fs
    .readdirSync(profDir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .map((f) => path.join(profDir, f))
    .sort((a, b) => threadOf(a) - threadOf(b));
}

/** Troupe's rows; with `profileOnly`, just the lifecycle at 100 agents under `--cpu-prof`. */
async function troupe(profileOnly: boolean): Promise<{ rows: Row[]; store: string; sizes: Record<string, number>; profiles?: string[] }> {
  if (profileOnly) {
    const profDir = freshProfileDir();
    const r = await troupeRow('lifecycle (4 calls)', 100, profDir);
    return { rows: [r.row], store: r.store, sizes: r.sizes, profiles: profileFiles(profDir) };
  }
  const rows: Row[] = [];
  let last: Awaited<ReturnType<typeof troupeRow>> | undefined;
  for (const scenario of ['task.create', 'lifecycle (4 calls)'] as const) {
    for (const n of LEVELS) {
      last = await troupeRow(scenario, n);
      rows.push(last.row);
    }
  }
  return { rows, store: last!.store, sizes: last!.sizes };
}

function env(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    loadavg: os.loadavg().map((x) => Number(x.toFixed(2))),
    warmupMs: WARMUP_MS,
    measureMs: MEASURE_MS,
  };
}

function printTable(raw: Row[], tr: Row[]): void {
  const rawAt = (clients: number) => raw.find((r) => r.clients === clients && r.inFlightPerClient === 1)!;
  const out: string[] = [];
  out.push('');
  out.push('Raw ws baseline (separate echo process; same client code; JSON-RPC request ~100 B, task-sized reply ~1 KB)');
  out.push(`  ${padEnd('clients×in flight', 18)} ${pad('rt/s', 8)} ${pad('p50', 7)} ${pad('p90', 7)} ${pad('p99', 7)} ms   ${pad('srv CPU', 7)} ${pad('cli CPU', 7)} ${pad('other', 6)}`);
  for (const r of raw) {
    out.push(
      `  ${padEnd(`${r.clients}×${r.inFlightPerClient}`, 18)} ${pad(fmt(r.callsPerSec), 8)} ${pad(ms(r.latencyMs.p50), 7)} ${pad(ms(r.latencyMs.p90), 7)} ${pad(ms(r.latencyMs.p99), 7)}      ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(r.clientCpuPct) + '%', 7)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}`,
    );
  }
  if (tr.length === 0) {
    process.stdout.write(out.join('\n') + '\n');
    return;
  }
  out.push('');
  out.push('Troupe vs raw ws at the same concurrency (agents = connections, 1 call in flight each)');
  out.push(
    `  ${padEnd('scenario', 20)} ${pad('agents', 6)} ${pad('calls/s', 8)} ${pad('lc/s', 6)} ${pad('p50', 6)} ${pad('p90', 6)} ${pad('p99', 6)} │ ${pad('raw rt/s', 8)} ${pad('raw p99', 7)} │ ${pad('calls÷raw', 9)} ${pad('p99÷raw', 7)} │ ${pad('srv CPU', 7)} ${pad('µs/call', 7)} ${pad('calls/fsync', 11)} ${pad('RSS MiB', 7)} ${pad('other', 6)}`,
  );
  for (const r of tr) {
    const b = rawAt(r.clients);
    out.push(
      `  ${padEnd(r.name, 20)} ${pad(String(r.clients), 6)} ${pad(fmt(r.callsPerSec), 8)} ${pad(r.unitsPerSec !== undefined ? fmt(r.unitsPerSec) : '', 6)} ${pad(ms(r.latencyMs.p50), 6)} ${pad(ms(r.latencyMs.p90), 6)} ${pad(ms(r.latencyMs.p99), 6)} │ ${pad(fmt(b.callsPerSec), 8)} ${pad(ms(b.latencyMs.p99), 7)} │ ${pad(fmt((r.callsPerSec / b.callsPerSec) * 100, 1) + '%', 9)} ${pad(fmt(r.latencyMs.p99 / b.latencyMs.p99, 1) + '×', 7)} │ ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(r.serverCpuUsPerCall ?? NaN), 7)} ${pad(fmt(r.commitsPerFlush ?? NaN, 1), 11)} ${pad(fmt((r.serverRssBytes ?? NaN) / 2 ** 20), 7)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}` +
        (r.errors ? `  ERRORS ${r.errors}: ${r.firstError}` : ''),
    );
  }
  out.push('  (latencies in ms; lc/s = lifecycles/s; srv CPU = server process CPU over the window, 100% = one core;');
  out.push('   µs/call = server CPU per call; calls/fsync = store commits per group-commit transaction;');
  out.push('   RSS = server memory at the end of the row; every row starts a fresh node on a fresh database;');
  out.push('   other = CPU used by other processes on the machine during the window: above ~15% the row is noisy)');
  const noisy = [...raw, ...tr].filter((r) => (r.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} row(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  const lcs = tr.filter((r) => r.byMethodMs);
  if (lcs.length > 0) {
    out.push('');
    out.push('Lifecycle latency per method (ms, p50 / p99)');
    const order = ['task.create', 'task.accept', 'task.start', 'task.complete'];
    const methods = Object.keys(lcs[0]!.byMethodMs!).sort((a, b) => order.indexOf(a) - order.indexOf(b));
    out.push(`  ${padEnd('agents', 8)}` + methods.map((m) => pad(m, 20)).join(''));
    for (const r of lcs) {
      out.push(`  ${padEnd(String(r.clients), 8)}` + methods.map((m) => pad(`${ms(r.byMethodMs![m]!.p50)} / ${ms(r.byMethodMs![m]!.p99)}`, 20)).join(''));
    }
  }
  process.stdout.write(out.join('\n') + '\n');
}

type RuleRow = Awaited<ReturnType<typeof benchRules>>[number];

function printRules(rules: RuleRow[]): void {
  const out = ['', 'Rule evaluation (bench/rules.ts, in this process; CEL, compiled once; µs per evaluation, mean over 100,000)'];
  for (const r of rules) out.push(`  ${padEnd(r.name, 52)} ${pad(r.perEvalMicros.toFixed(3), 8)} µs`);
  process.stdout.write(out.join('\n') + '\n');
}

/** The assignment rows; next to the raw ws round trip at 1 client × 1 in flight. */
function printAssignment(raw: Row[], rows: Row[], setup: AssignmentSetup): void {
  const b = raw.find((r) => r.clients === 1 && r.inFlightPerClient === 1)!;
  const out: string[] = [];
  out.push('');
  out.push(`Assignment among ${fmt(setup.agents)} online agents (one node; 1 driver, 1 operation in flight; each agent its own connection, subscribed to its inbox)`);
  out.push(
    `  ${padEnd('scenario', 48)} ${pad('n', 5)} ${pad('ops/s', 6)} ${pad('p50', 6)} ${pad('p90', 6)} ${pad('p99', 6)} ${pad('max', 6)} │ ${pad('raw p50', 7)} ${pad('raw p99', 7)} │ ${pad('srv CPU', 7)} ${pad('µs/op', 6)} ${pad('RSS MiB', 7)} ${pad('other', 6)}`,
  );
  const line = (label: string, l: Row['latencyMs'], r?: Row) =>
    `  ${padEnd(label, 48)} ${pad(String(l.count), 5)} ${pad(r ? fmt(r.unitsPerSec ?? NaN) : '', 6)} ${pad(ms(l.p50), 6)} ${pad(ms(l.p90), 6)} ${pad(ms(l.p99), 6)} ${pad(ms(l.max), 6)} │ ` +
    (r
      ? `${pad(ms(b.latencyMs.p50), 7)} ${pad(ms(b.latencyMs.p99), 7)} │ ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(r.serverCpuUsPerUnit ?? NaN), 6)} ${pad(fmt((r.serverRssBytes ?? NaN) / 2 ** 20), 7)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}` +
        (r.errors ? `  ERRORS ${r.errors}: ${r.firstError}` : '')
      : `${pad('', 7)} ${pad('', 7)} │`);
  for (const r of rows) {
    const label =
      r.latencyOf === 'task.autoAssign'
        ? `task.autoAssign ${r.name.replace(/^autoAssign /, '').replace('ll + CEL rule', 'least_loaded + CEL rule')}`
        : r.latencyOf === E2E
          ? `task.create autoAssign → agent's inbox notified`
          : r.latencyOf === 'task.createDistributed'
            ? 'task.createDistributed, 10 subtasks: the call'
            : r.name;
    out.push(line(label, r.latencyMs, r));
    const fanned = r.byMethodMs?.[FANNED_OUT];
    if (fanned) out.push(line('  … until all 10 subtasks assigned (inboxes)', fanned));
    const create = r.latencyOf === E2E ? r.byMethodMs?.['task.create'] : undefined;
    if (create) out.push(line('  … the task.create call itself', create));
  }
  out.push(`  (latencies in ms over n samples; ops/s = operations per second at 1 in flight; µs/op = server CPU per operation, including the`);
  out.push(`   untimed task.create before each task.autoAssign; the CEL rule is \`${RULE_EXPRESSION}\`, evaluated for each of the 1,000 candidates;`);
  out.push(`   raw = the raw ws round trip at 1×1 above; setup ${((setup.serverStartMs + setup.connectMs + setup.registerMs + setup.subscribeMs) / 1000).toFixed(1)} s, RSS after setup ${fmt(setup.serverRssBytesAfterSetup / 2 ** 20)} MiB)`);
  const noisy = rows.filter((r) => (r.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} row(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  process.stdout.write(out.join('\n') + '\n');
}

/** The raw ws row a workflow row is set next to: the same number of calls in flight, on as few connections as the baseline has. */
function rawFor(raw: Row[], inFlight: number): Row {
  const exact = raw.find((r) => r.clients * r.inFlightPerClient === inFlight && r.inFlightPerClient === 1);
  return exact ?? raw.find((r) => r.clients === 1 && r.inFlightPerClient === 64)!;
}

/** The workflow rows: executions/s and latencies, next to the raw ws round trip. */
function printWorkflows(raw: Row[], rows: Row[]): void {
  const out: string[] = [];
  out.push('');
  out.push(`Workflows: a 3-step sequential workflow, ${WF_AGENTS} instant agents (accept → start → complete at once); one driver connection with N executions in flight`);
  out.push(
    `  ${padEnd('in flight', 9)} ${pad('exec/s', 7)} ${pad('calls/s', 8)} │ ${pad('done p50', 8)} ${pad('p90', 6)} ${pad('p99', 6)} │ ${pad('1st offer p50', 13)} ${pad('p99', 6)} │ ${pad('execute p50', 11)} ${pad('p99', 6)} │ ${padEnd('raw', 5)} ${pad('rt/s', 7)} ${pad('p99', 6)} ${pad('calls÷raw', 9)} │ ${pad('srv CPU', 7)} ${pad('µs/exec', 7)} ${pad('RSS MiB', 7)} ${pad('other', 6)}`,
  );
  for (const r of rows) {
    const b = rawFor(raw, r.inFlightPerClient);
    const offer = r.byMethodMs?.[FIRST_OFFER];
    const exec = r.byMethodMs?.['workflow.execute'];
    const eps = r.unitsPerSec ?? NaN;
    out.push(
      `  ${padEnd(String(r.inFlightPerClient), 9)} ${pad(fmt(eps), 7)} ${pad(fmt(eps * CALLS_PER_EXECUTION), 8)} │ ${pad(ms(r.latencyMs.p50), 8)} ${pad(ms(r.latencyMs.p90), 6)} ${pad(ms(r.latencyMs.p99), 6)} │ ${pad(ms(offer?.p50 ?? NaN), 13)} ${pad(ms(offer?.p99 ?? NaN), 6)} │ ${pad(ms(exec?.p50 ?? NaN), 11)} ${pad(ms(exec?.p99 ?? NaN), 6)} │ ${padEnd(`${b.clients}×${b.inFlightPerClient}`, 5)} ${pad(fmt(b.callsPerSec), 7)} ${pad(ms(b.latencyMs.p99), 6)} ${pad(fmt(((eps * CALLS_PER_EXECUTION) / b.callsPerSec) * 100, 1) + '%', 9)} │ ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(r.serverCpuUsPerUnit ?? NaN), 7)} ${pad(fmt((r.serverRssBytes ?? NaN) / 2 ** 20), 7)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}` +
        (r.errors ? `  ERRORS ${r.errors}: ${r.firstError}` : ''),
    );
  }
  out.push(`  (latencies in ms from just before the workflow.execute call; done = until the execution's completed notification on the driver's`);
  out.push(`   execution:<id> subscription; 1st offer = until the inbox notification of the first step's task on the chosen agent's connection;`);
  out.push(`   calls/s = exec/s × ${CALLS_PER_EXECUTION} client calls per execution (execute, subscribe, unsubscribe; accept, start, complete per step);`);
  out.push(`   raw = the raw ws round trip with as many calls in flight (1×64 for 50); µs/exec = server CPU per execution; a fresh node per row)`);
  const noisy = rows.filter((r) => (r.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} row(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  process.stdout.write(out.join('\n') + '\n');
}

function workflowChecks(rows: Row[]): Check[] {
  const result: Check[] = [];
  const one = rows.find((r) => r.inFlightPerClient === 1);
  const offer1 = one?.byMethodMs?.[FIRST_OFFER];
  if (one && offer1) {
    result.push({
      target: 'workflow.execute → first step offered to an agent (inbox notification) p99 < 100 ms, 1 execution in flight',
      pass: offer1.p99 < 100 && one.errors === 0,
      detail: `p50 ${ms(offer1.p50)} ms, p99 ${ms(offer1.p99)} ms`,
    });
  }
  const busiest = rows[rows.length - 1];
  const offerN = busiest?.byMethodMs?.[FIRST_OFFER];
  if (busiest && offerN && busiest !== one) {
    result.push({
      target: `first step offered p99 < 100 ms with ${busiest.inFlightPerClient} executions in flight (informational)`,
      pass: offerN.p99 < 100 && busiest.errors === 0,
      detail: `p50 ${ms(offerN.p50)} ms, p99 ${ms(offerN.p99)} ms; ${fmt(busiest.unitsPerSec ?? NaN)} executions/s`,
    });
  }
  const failed = rows.filter((r) => r.errors > 0);
  result.push({
    target: 'every workflow execution completed',
    pass: failed.length === 0 && rows.length > 0,
    detail:
      failed.length === 0
        ? `${rows.reduce((n, r) => n + (r.units ?? 0), 0)} executions in the windows`
        : failed.map((r) => `${r.inFlightPerClient} in flight: ${r.errors} (${r.firstError})`).join('; '),
  });
  return result;
}

type DocumentResult = Awaited<ReturnType<typeof documentRows>>;

/** Subscribers of a document fan-out row (its name ends in "→ N subs"), and the method it calls. */
function docRowInfo(r: Row): { subscribers: number; method: string } {
  return {
    subscribers: Number(/→ (\d+) subs$/.exec(r.name)?.[1] ?? NaN),
    method: r.name.startsWith('mergeState') ? 'workspace.mergeState' : 'workspace.updateState',
  };
}

/** The document rows: send → delivery to each subscriber next to the raw ws round trip; and loading a document of 10,000 changes. */
function printDocuments(raw: Row[], d: DocumentResult): void {
  const b1 = raw.find((r) => r.clients === 1 && r.inFlightPerClient === 1)!;
  const out: string[] = [];
  out.push('');
  out.push(
    `Workspace state document: one writer (1 call in flight) changes it; ${FANOUT_LEVELS.join(' or ')} member connections subscribed to document:<id>:state receive each change (a fresh node per row)`,
  );
  out.push(
    `  ${padEnd('scenario', 32)} ${pad('subs', 4)} ${pad('upd/s', 6)} │ ${pad('delivered p50', 13)} ${pad('p90', 6)} ${pad('p99', 6)} ${pad('max', 6)} │ ${pad('last sub p50', 12)} ${pad('p99', 6)} │ ${pad('call p50', 8)} ${pad('p99', 6)} │ ${pad('raw 1×1 p50', 11)} ${pad('p99', 5)} ${pad('raw N×1 p99', 11)} │ ${pad('srv CPU', 7)} ${pad('µs/upd', 6)} ${pad('RSS MiB', 7)} ${pad('other', 6)}`,
  );
  for (const r of d.rows) {
    const { subscribers, method } = docRowInfo(r);
    const bN = raw.find((x) => x.clients === subscribers && x.inFlightPerClient === 1);
    const all = r.byMethodMs?.[ALL_DELIVERED];
    const call = r.byMethodMs?.[method];
    const l = r.latencyMs;
    const label = method === 'workspace.mergeState' ? 'mergeState (an Automerge change)' : 'updateState (set + increment)';
    out.push(
      `  ${padEnd(label, 32)} ${pad(String(subscribers), 4)} ${pad(fmt(r.unitsPerSec ?? NaN), 6)} │ ${pad(ms(l.p50), 13)} ${pad(ms(l.p90), 6)} ${pad(ms(l.p99), 6)} ${pad(ms(l.max), 6)} │ ${pad(ms(all?.p50 ?? NaN), 12)} ${pad(ms(all?.p99 ?? NaN), 6)} │ ${pad(ms(call?.p50 ?? NaN), 8)} ${pad(ms(call?.p99 ?? NaN), 6)} │ ${pad(ms(b1.latencyMs.p50), 11)} ${pad(ms(b1.latencyMs.p99), 5)} ${pad(ms(bN?.latencyMs.p99 ?? NaN), 11)} │ ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 7)} ${pad(fmt(r.serverCpuUsPerUnit ?? NaN), 6)} ${pad(fmt((r.serverRssBytes ?? NaN) / 2 ** 20), 7)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}` +
        (r.errors ? `  ERRORS ${r.errors}: ${r.firstError}` : ''),
    );
  }
  out.push('  (latencies in ms from just before the call is sent; delivered = until each subscriber\'s subscription.event (one sample per');
  out.push('   subscriber and update); last sub = until the last subscriber\'s; call = until the writer\'s reply; upd/s = updates per second,');
  out.push('   each stored (synchronous=FULL) and delivered to every subscriber before the next; raw 1×1 = the raw ws round trip at 1 client ×');
  out.push('   1 in flight, raw N×1 = at as many clients as subscribers; µs/upd = server CPU per update; state compacted every 500 changes)');
  const noisy = d.rows.filter((r) => (r.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} row(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  const ld = d.load;
  out.push('');
  out.push(
    `Loading a state document of ${fmt(ld.changes)} changes from the store (SQLite, ${fmt(ld.storeBytes / 2 ** 20, 1)} MiB; a fresh actor host and document service per load; built in ${fmt(ld.buildSeconds, 1)} s)`,
  );
  out.push(
    `  ${padEnd('right after a compacted save', 62)} p50 ${pad(ms(ld.loadMs.p50), 7)}  p99 ${pad(ms(ld.loadMs.p99), 7)} ms  (${ld.loadMs.count} loads, first ${ms(ld.firstLoadMs)} ms; ${ld.changesAppliedAfterSave} changes applied after the save, ${ld.eventsRead} events read)`,
  );
  out.push(
    `  ${padEnd(`${fmt(ld.worstCase.changes)} changes, ${ld.worstCase.changesAppliedAfterSave} after the save (worst case between saves)`, 62)} p50 ${pad(ms(ld.worstCase.loadMs.p50), 7)}  p99 ${pad(ms(ld.worstCase.loadMs.p99), 7)} ms`,
  );
  out.push(`  ${padEnd(`without compaction: all ${fmt(ld.changes)} changes in one applyChanges`, 62)} p50 ${pad(ms(ld.replayAllMs.p50), 7)}  p99 ${pad(ms(ld.replayAllMs.p99), 7)} ms  (Automerge alone, no store)`);
  process.stdout.write(out.join('\n') + '\n');
}

function documentChecks(d: DocumentResult): Check[] {
  const at100 = d.rows.filter((r) => docRowInfo(r).subscribers === 100);
  const detail =
    at100.map((r) => `${docRowInfo(r).method} p50 ${ms(r.latencyMs.p50)} ms, p99 ${ms(r.latencyMs.p99)} ms` + (r.errors ? `, ${r.errors} errors (${r.firstError})` : '')).join('; ') ||
    'no row with 100 subscribers';
  const span = 'send → each subscriber\'s notification';
  return ([
    [20, 'seed'],
    [10, 'aim'],
  ] as const).map(([limit, kind]) => ({
    target: `state update fanned out to 100 subscribers p99 < ${limit} ms (${kind})`,
    pass: at100.length > 0 && at100.every((r) => r.latencyMs.p99 < limit && r.errors === 0),
    detail: `${span}: ${detail}`,
  }));
}

interface Check {
  target: string;
  pass: boolean;
  detail: string;
}

function assignmentChecks(rules: RuleRow[], rows: Row[]): Check[] {
  const result: Check[] = [];
  const evals = rules.filter((r) => r.name.startsWith('rule eval'));
  const worst = Math.max(...evals.map((r) => r.perEvalMicros));
  result.push({
    target: 'rule evaluation < 5 ms per rule',
    pass: worst < 5000,
    detail: `slowest ${worst.toFixed(3)} µs per evaluation (${evals.length} ways of evaluating)`,
  });
  const d = rows.find((r) => r.latencyOf === 'task.createDistributed');
  const fanned = d?.byMethodMs?.[FANNED_OUT];
  if (d && fanned) {
    result.push({
      target: 'task.createDistributed with 10 subtasks p99 < 200 ms',
      pass: d.latencyMs.p99 < 200 && d.errors === 0,
      detail: `call p99 ${ms(d.latencyMs.p99)} ms`,
    });
    result.push({
      target: 'distributed task fanned out (all 10 subtasks assigned among 1,000 agents) p99 < 200 ms',
      pass: fanned.p99 < 200 && d.errors === 0,
      detail: `p99 ${ms(fanned.p99)} ms`,
    });
    result.push({
      target: 'distributed task fanned out p99 < 20 ms on the embedded store (informational)',
      pass: fanned.p99 < 20 && d.errors === 0,
      detail: `p99 ${ms(fanned.p99)} ms`,
    });
  }
  const failed = rows.filter((r) => r.errors > 0);
  result.push({
    target: `every assignment operation among ${ASSIGN_AGENTS} agents succeeded`,
    pass: failed.length === 0,
    detail: failed.length === 0 ? `${rows.reduce((n, r) => n + (r.units ?? 0), 0)} operations in the windows` : failed.map((r) => `${r.name}: ${r.errors} (${r.firstError})`).join('; '),
  });
  return result;
}

function checks(raw: Row[], tr: Row[]): Check[] {
  const rawAt = (clients: number) => raw.find((r) => r.clients === clients && r.inFlightPerClient === 1)!;
  const create10 = tr.find((r) => r.name === 'task.create' && r.clients === 10);
  const result: Check[] = [];
  const scraped = tr.filter((r) => r.metricsCheck);
  if (scraped.length) {
    const off = scraped.flatMap((r) => Object.entries(r.metricsCheck!.byMethod).filter(([, x]) => x.sent !== x.counted).map(([m, x]) => `${r.name}@${r.clients}: ${m} sent ${x.sent}, counted ${x.counted}`));
    const total = scraped.reduce((n, r) => n + Object.values(r.metricsCheck!.byMethod).reduce((k, x) => k + x.sent, 0), 0);
    result.push({
      target: '/metrics (troupe_messages_total by method) counts exactly the requests the benchmark sent',
      pass: off.length === 0,
      detail: off.length === 0 ? `${fmt(total)} requests in ${scraped.length} rows agree` : off.join('; '),
    });
  }
  if (create10) {
    result.push({
      target: 'task.create p99 < 5 ms at 10 concurrent agents',
      pass: create10.latencyMs.p99 < 5 && create10.errors === 0,
      detail: `p99 ${ms(create10.latencyMs.p99)} ms`,
    });
  }
  for (const n of [100, 10, 1]) {
    const lc = tr.find((r) => r.name.startsWith('lifecycle') && r.clients === n);
    if (!lc) continue;
    const b = rawAt(n);
    const ratio = lc.callsPerSec / b.callsPerSec;
    result.push({
      target:
        `lifecycle calls/s ≥ 30% of raw ws round trips/s, both at ${n} client${n > 1 ? 's' : ''} × 1 in flight` +
        (n === 100 ? ' (the comparison the target is judged on: DESIGN §12 measures raw ws at 100×1)' : ' (informational)'),
      pass: ratio >= 0.3 && lc.errors === 0,
      detail: `${fmt(lc.callsPerSec)} ÷ ${fmt(b.callsPerSec)} = ${fmt(ratio * 100, 1)}%`,
    });
  }
  return result;
}

async function main(): Promise<void> {
  const started = performance.now();
  const hardStop = setTimeout(() => {
    process.stderr.write(`bench: exceeded ${DEADLINE_MS / 1000} s, aborting\n`);
    process.exit(2);
  }, DEADLINE_MS);
  hardStop.unref();
  fs.mkdirSync(resultsDir, { recursive: true });
  const e = env();
  process.stdout.write(
    `Troupe bench — node ${e.node}, ${e.cpus} CPUs (${e.cpuModel}), ${e.platform}, load avg ${(e.loadavg as number[]).join(' ')}\n` +
      `warm-up ${WARMUP_MS} ms + window ${MEASURE_MS} ms per row; closed loop; server and echo server each in their own process\n`,
  );

  const assignmentOnly = flags.only === 'assignment';
  const workflowsOnly = flags.only === 'workflows';
  const clusterOnly = flags.only === 'cluster';
  if (flags.profile) {
    let profiles: string[];
    let profiledRows: Row[];
    if (assignmentOnly) {
      process.stdout.write(`\nProfiling the Troupe server under the assignment scenarios with ${ASSIGN_AGENTS} agents\n`);
      const profDir = freshProfileDir();
      const a = await assignmentRows({ windows: assignWindows, nodeArgs: nodeArgsFromEnv(), only: process.env.BENCH_ASSIGN_ROWS, profileDir: profDir });
      process.stdout.write(`store: ${a.setup.store}\n`);
      profiles = profileFiles(profDir);
      profiledRows = a.rows;
    } else {
      process.stdout.write('\nProfiling the Troupe server under the lifecycle load at 100 agents\n');
      const t = await troupe(true);
      process.stdout.write(`store: ${t.store}\n`);
      profiles = t.profiles ?? [];
      profiledRows = t.rows;
    }
    if (profiles.length === 0) throw new Error('no .cpuprofile was written');
    const summaries = profiles.map((file) => ({ file, thread: threadOf(file), summary: summarizeProfile(file) }));
    const main = summaries.find((p) => p.thread === 0) ?? summaries[0]!;
    for (const p of summaries) {
      // Skip threads that hardly ran (tsx's loader-hook threads).
      if (p !== main && p.summary.totalMs < main.summary.totalMs * 0.05) continue;
      process.stdout.write(`\n=== thread ${p.thread}${p.thread === 0 ? ' (main: event loop)' : ''} — ${path.relative(process.cwd(), p.file)}\n`);
      printProfile(p.summary);
    }
    fs.writeFileSync(path.join(resultsDir, 'profile-summary.json'), JSON.stringify({ env: e, rows: profiledRows, profiles: summaries }, null, 2));
    process.stdout.write('\nopen a .cpuprofile in Chrome DevTools (Performance) or speedscope for the call tree\n');
    return;
  }

  let rules: RuleRow[] = [];
  if (!workflowsOnly && !clusterOnly) {
    process.stdout.write('\nRule evaluation (in process)\n');
    rules = await benchRules();
    for (const r of rules) process.stdout.write(`  ${padEnd(r.name, 52)} ${pad(r.perEvalMicros.toFixed(3), 8)} µs\n`);
  }
  process.stdout.write('\nRaw ws baseline\n');
  const raw = await baseline();
  let t: Awaited<ReturnType<typeof troupe>> | undefined;
  if (!assignmentOnly && !workflowsOnly && !clusterOnly) {
    process.stdout.write('\nTroupe\n');
    t = await troupe(false);
    process.stdout.write(`store: ${t.store}, a fresh node and database per row; create request ${t.sizes.createRequestBytes} B, reply ${t.sizes.createReplyBytes} B\n`);
  }
  let a: Awaited<ReturnType<typeof assignmentRows>> | undefined;
  if (!workflowsOnly && !clusterOnly) {
    process.stdout.write(`\nTroupe: assignment among ${ASSIGN_AGENTS} agents (warm-up ${assignWindows.warmupMs} ms + window ${assignWindows.measureMs} ms per row)\n`);
    a = await assignmentRows({ windows: assignWindows, nodeArgs: nodeArgsFromEnv(), only: process.env.BENCH_ASSIGN_ROWS });
  }
  let w: Awaited<ReturnType<typeof workflowRows>> | undefined;
  if (!assignmentOnly && !clusterOnly) {
    process.stdout.write(`\nTroupe: workflows, ${WF_AGENTS} instant agents (warm-up ${wfWindows.warmupMs} ms + window ${wfWindows.measureMs} ms per row, a fresh node per row)\n`);
    w = await workflowRows({ windows: wfWindows, nodeArgs: nodeArgsFromEnv() });
  }
  let fl: Awaited<ReturnType<typeof floodRows>> | undefined;
  if (!assignmentOnly && !workflowsOnly && !clusterOnly) {
    process.stdout.write(`\nTroupe: flood, tenant B's agents idle vs while one agent of tenant A floods (bench/flood.ts)\n`);
    fl = await floodRows({ windows: floodWindows(!!flags.quick), nodeArgs: nodeArgsFromEnv() });
  }
  let docs: DocumentResult | undefined;
  if (!assignmentOnly && !workflowsOnly && !clusterOnly) {
    process.stdout.write(
      `\nTroupe: workspace state document fanned out to ${FANOUT_LEVELS.join(' and ')} subscribers (warm-up ${docWindows.warmupMs} ms + window ${docWindows.measureMs} ms per row, a fresh node per row), and loading a document of 10,000 changes (bench/documents.ts)\n`,
    );
    docs = await documentRows({ windows: docWindows, nodeArgs: nodeArgsFromEnv() });
  }
  let cl: Awaited<ReturnType<typeof clusterRows>> | undefined;
  if (!assignmentOnly && !workflowsOnly) {
    process.stdout.write(
      `\nTroupe: cluster, src/main.ts nodes over one SQLite file and 3 redis-servers; ${CLUSTER_AGENTS} agents, plain node vs cluster of 1 vs cluster of 3; forwarding; failover (warm-up ${clusterWindows.warmupMs} ms + window ${clusterWindows.measureMs} ms per row; bench/cluster.ts)\n`,
    );
    cl = await clusterRows({ windows: clusterWindows, quick: !!flags.quick });
  }
  printTable(raw, t?.rows ?? []);
  if (rules.length > 0) printRules(rules);
  if (a) printAssignment(raw, a.rows, a.setup);
  if (w) printWorkflows(raw, w.rows);
  if (fl) printFlood(fl);
  if (docs) printDocuments(raw, docs);
  if (cl) printCluster(raw, cl);
  const cs = [
    ...checks(raw, t?.rows ?? []),
    ...(a ? assignmentChecks(rules, a.rows) : []),
    ...(w ? workflowChecks(w.rows) : []),
    ...(fl ? floodChecks(fl) : []),
    ...(docs ? documentChecks(docs) : []),
    ...(cl ? clusterChecks(cl) : []),
  ];
  process.stdout.write('\nTargets\n');
  for (const c of cs) process.stdout.write(`  [${c.pass ? 'PASS' : 'MISS'}] ${c.target}: ${c.detail}\n`);
  const file = path.join(resultsDir, assignmentOnly ? 'latest-assignment.json' : workflowsOnly ? 'latest-workflows.json' : clusterOnly ? 'latest-cluster.json' : 'latest.json');
  fs.writeFileSync(
    file,
    JSON.stringify(
      {
        at: new Date().toISOString(),
        env: {
          ...e,
          store: a?.setup.store ?? w?.store,
          ...t?.sizes,
          assignWarmupMs: assignWindows.warmupMs,
          assignMeasureMs: assignWindows.measureMs,
          workflowWarmupMs: wfWindows.warmupMs,
          workflowMeasureMs: wfWindows.measureMs,
          documentWarmupMs: docWindows.warmupMs,
          documentMeasureMs: docWindows.measureMs,
          clusterWarmupMs: clusterWindows.warmupMs,
          clusterMeasureMs: clusterWindows.measureMs,
        },
        baseline: raw,
        troupe: t?.rows ?? [],
        rules,
        assignmentSetup: a?.setup ?? null,
        assignment: a?.rows ?? [],
        workflows: w?.rows ?? [],
        flood: fl ?? null,
        documents: docs ?? null,
        cluster: cl ?? null,
        checks: cs,
      },
      null,
      2,
    ) + '\n',
  );
  process.stdout.write(`\nresults: ${path.relative(process.cwd(), file)} (${((performance.now() - started) / 1000).toFixed(0)} s; load avg now ${os.loadavg().map((x) => x.toFixed(2)).join(' ')})\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);

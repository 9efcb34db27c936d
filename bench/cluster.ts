import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Authenticator } from '../src/auth/Authenticator.js';
import { SqliteStore } from '../src/storage/SqliteStore.js';
import { startRedis, type RedisProcess } from '../test/helpers/redis.js';
import { waitFor } from '../test/helpers/waitFor.js';
import { closedLoop, timed, type Work } from './loadgen.js';
import { closeAll, fmt, machineCpu, ms, pad, padEnd, type MeasureOptions, type Row } from './measure.js';
import { RpcConn, type RpcReply } from './rpcClient.js';
import { summarize, type Latency } from './stats.js';

/**
 * The cluster section of `npm run bench`: Troupe nodes as separate `src/main.ts` processes over
 * one shared SQLite file, with three real `redis-server` processes as the Redlock instances (the
 * first one also the shared Redis of membership, routing, commit fan-out and rate limits).
 *
 * - Throughput: CLUSTER_AGENTS agents (1 call in flight each, each on its own connection) loop over
 *   the task lifecycle (create with assignTo self → accept → start → complete) on a plain single
 *   node (no cluster, no Redis, a store of its own), then on a cluster of one node, which then grows
 *   to three with other agents spread over the nodes: once with every call sent to the agent's home
 *   node (the task is created there, so it is owned there), once with accept, start and complete
 *   sent through a second connection of the same agent on the next node (3 of 4 calls forwarded).
 * - Forwarding: one task in progress, created (so owned) on node A; one client alternates
 *   `task.progress` (an actor turn) and `task.get` (a store read) on A and on B.
 * - Failover: the owner of a task that two writers keep busy (one on the owner, one forwarding
 *   from node B) is SIGKILLed; reported is the time from the kill to the first successful
 *   `task.progress` sent after it by the writer on B (a call of its was in flight at the kill) and
 *   by a new writer on node C that starts once the killed process has exited; both wait
 *   `data.retryAfterMs` after each UNAVAILABLE. A fresh node replaces the killed one before the
 *   next trial (BENCH_CLUSTER_FAILOVERS trials, default 2, 1 with --quick).
 *
 * Every node: TROUPE_SQLITE_SYNC from BENCH_CLUSTER_SYNC (default NORMAL), lease CLUSTER_LEASE_MS,
 * default heartbeat, silent logs, keys made in this process before the nodes start (no bootstrap).
 * Nodes and redis-servers are killed when the section ends, also when it fails, and when this
 * process exits or gets SIGINT/SIGTERM while the section runs.
 */

/** Agents of the throughput rows (the same level as the main table's top row and raw ws 100×1). */
export const CLUSTER_AGENTS = Number(process.env.BENCH_CLUSTER_AGENTS ?? '100');
/** The lease every cluster node runs with (TROUPE_CLUSTER_LEASE_MS). */
export const CLUSTER_LEASE_MS = 2000;
/** The nodes' membership heartbeat (the default of TROUPE_CLUSTER_HEARTBEAT_MS); gone after three missed. */
export const CLUSTER_HEARTBEAT_MS = 1000;
/** How long a forwarded call waits for its owner: the default of TROUPE_CLUSTER_REQUEST_TIMEOUT_MS, which the nodes keep. */
export const FORWARD_TIMEOUT_MS = 5000;
const CLUSTER_SIZE = 3;
const LOCK_INSTANCES = 3;
/** Give up on a failover trial after this long. */
const FAILOVER_LIMIT_MS = 30_000;
const SYNC = process.env.BENCH_CLUSTER_SYNC === 'FULL' ? 'FULL' : 'NORMAL';

/** A throughput row, with the CPU of every node and of the redis-servers. */
export interface ClusterRow extends Row {
  deployment: string;
  nodes: number;
  cluster: boolean;
  /** The redis-servers' CPU over the window, 100% = one core (all nodes' is serverCpuPct). */
  redisCpuPct?: number;
  /** Forwarded requests (GET /cluster, summed over the nodes) per lifecycle, warm-up included. */
  forwardedPerUnit?: number;
}

/** One SIGKILL failover trial. */
export interface FailoverTrial {
  killed: string;
  /** Kill → this process saw the owner's exit (when the new writer starts). */
  exitedMs: number;
  /** Kill → first success of the writer that had a forwarded call in flight (its node not the owner). */
  busyWriterMs: number | null;
  /** How the busy writer's call in flight at the kill ended, and after how long. */
  inFlightAtKill: { ms: number; outcome: string } | null;
  /** Kill → first success of a writer on a third node that starts once the owner has exited. */
  newWriterMs: number | null;
  /** Replies refused with UNAVAILABLE (both writers) before their first success. */
  unavailable: number;
  /** The retryAfterMs values those replies carried. */
  retryAfterMs: number[];
  /** Any other error, by message. */
  otherErrors: Record<string, number>;
  /** The owner's last acknowledged write before the kill, ms before it. */
  lastOwnerWriteMsBeforeKill: number | null;
  /**
   * Writes before the kill: the owner's own, the busy writer's forwarded ones, and the forwarded
   * ones refused as not applied (the forwarding node lost the race with the owner's writes on
   * every one of its checks).
   */
  beforeKill: { ownerWrites: number; forwardedWrites: number; forwardedVersionConflicts: number };
}

/** The cluster section's results. */
export interface ClusterResult {
  /** `startups`: how long each start of nodes took, until they routed to each other. */
  setup: { sync: string; leaseMs: number; heartbeatMs: number; lockInstances: number; agents: number; startups: { what: string; ms: number }[] };
  rows: ClusterRow[];
  forwarding: { row: Row; forwardedPerProgress: number; counters: Record<string, number> };
  /** task.progress and task.get on the single node without cluster, for reference. */
  single: Row;
  failover: FailoverTrial[];
}

/** A child process this section started: tracked from its spawn, so it is killed whatever happens. */
interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<void>;
  /** SIGKILLs it if it still runs and waits for its exit. */
  kill(): Promise<void>;
}

/** A Troupe node process of a deployment. */
interface Node {
  id: string;
  proc: Proc;
  /** Its WebSocket URL (ws://…/v1) and HTTP base URL (GET /cluster). */
  url: string;
  http: string;
}

/** One or more nodes over one store, with the keys of this bench. */
interface Deployment {
  cluster: boolean;
  dir: string;
  env: Record<string, string>;
  nodes: Node[];
  keys: string[];
  adminKey: string;
  nextId: number;
}

// Everything this section started, killed (and removed) on the way out whatever happens.
const livePids = new Set<number>();
const liveDirs = new Set<string>();
const killAll = () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  livePids.clear();
  for (const dir of liveDirs) fs.rmSync(dir, { recursive: true, force: true });
  liveDirs.clear();
};
const onSignal = () => process.exit(130);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Tracks a spawned child (see {@link killAll}); rejects if it could not be spawned at all. */
function track(child: ChildProcess, what: string): Promise<Proc> {
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`could not start ${what}: ${e.message}`)));
    child.once('spawn', () => {
      const pid = child.pid!;
      livePids.add(pid);
      const exited = new Promise<void>((done) =>
        child.once('exit', () => {
          livePids.delete(pid);
          done();
        }),
      );
      const kill = async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await exited;
      };
      resolve({ child, pid, exited, kill });
    });
  });
}

/** Resolves with the first match of `re` in what the child writes to stdout, or rejects when it exits first or after `timeoutMs`. */
function awaitOutput(p: Proc, re: RegExp, timeoutMs: number, stderr: () => string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new Error(`no "${re.source}" on stdout within ${timeoutMs} ms: ${stderr()}`))), timeoutMs);
    // The pipe is read to its end, so the child never blocks on a full one.
    p.child.stdout!.on('data', (d: Buffer) => {
      if (done) return;
      out += d.toString();
      const m = re.exec(out);
      if (m) finish(() => resolve(m[1]!));
    });
    void p.exited.then(() => finish(() => reject(new Error(`exited with ${p.child.exitCode ?? p.child.signalCode}: ${stderr()}`))));
  });
}

/** Starts `src/main.ts` with `env` (and no other TROUPE_ variable of this process) on a free port; resolves once it listens. */
async function startTroupe(env: Record<string, string>): Promise<{ proc: Proc; url: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--port', '0', '--host', '127.0.0.1'], {
    cwd: ROOT,
    env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TROUPE_'))), TROUPE_LOG_LEVEL: 'silent', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const proc = await track(child, 'a Troupe node');
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  try {
    const url = await awaitOutput(proc, /listening on (ws:\/\/\S+\/v1)/, 30_000, () => err);
    return { proc, url };
  } catch (e) {
    await proc.kill();
    throw new Error(`a Troupe node (${env.TROUPE_NODE_ID ?? 'single'}) did not start: ${(e as Error).message}`);
  }
}

/** CPU time (user + system, µs) of a process from /proc (Linux; USER_HZ is 100 there), or NaN. */
function procCpuUs(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10_000;
  } catch {
    return NaN;
  }
}

const errorOf = (r: RpcReply) => (r.error ? `${r.error.message}` : '');
const reasonOf = (r: RpcReply) => String((r.error?.data as { reason?: unknown } | undefined)?.reason ?? r.error?.code ?? '');
/** A refusal that says nothing was written (safe to send again). */
const notApplied = (r: RpcReply) => reasonOf(r) === 'UNAVAILABLE' && (r.error?.data as { outcome?: unknown } | undefined)?.outcome === 'not_applied';
const retryAfter = (r: RpcReply) => {
  const d = r.error?.data as { retryAfterMs?: unknown } | undefined;
  return typeof d?.retryAfterMs === 'number' ? d.retryAfterMs : undefined;
};

function must(r: RpcReply, what: string): Record<string, unknown> {
  if (r.error) throw new Error(`${what} failed: ${errorOf(r)}`);
  return r.result!;
}

/** Creates the tenant's keys in the store file before any node opens it (so no node bootstraps). */
async function makeKeys(db: string, agents: number): Promise<{ keys: string[]; adminKey: string }> {
  const store = new SqliteStore({ path: db, synchronous: SYNC, writer: 'inline' });
  try {
    const auth = new Authenticator({ store });
    const keys: string[] = [];
    for (let i = 0; i < agents; i++) keys.push((await auth.createKey({ tenant: 'bench', principal: `agent-${i}`, roles: ['agent'] })).key);
    const adminKey = (await auth.createKey({ tenant: 'bench', principal: 'bench-admin', roles: ['admin'] })).key;
    return { keys, adminKey };
  } finally {
    await store.close();
  }
}

async function startNode(d: Deployment): Promise<Node> {
  const id = `n${d.nextId++}`;
  const { proc, url } = await startTroupe({ ...d.env, ...(d.cluster ? { TROUPE_NODE_ID: id } : {}) });
  return { id, proc, url, http: url.replace(/^ws:/, 'http:').replace(/\/v1$/, '') };
}

interface ClusterView {
  nodes: { id: string; actors: Record<string, number> }[];
  counters: Record<string, number>;
}

async function clusterView(d: Deployment, n: Node): Promise<ClusterView> {
  const res = await fetch(`${n.http}/cluster`, { headers: { authorization: `Bearer ${d.adminKey}` } });
  if (res.status !== 200) throw new Error(`GET /cluster on ${n.id}: ${res.status} ${await res.text()}`);
  return (await res.json()) as ClusterView;
}

/** Routing counters summed over the live nodes. */
async function counters(d: Deployment): Promise<Record<string, number>> {
  const sum: Record<string, number> = {};
  if (!d.cluster) return sum;
  for (const n of d.nodes) for (const [k, v] of Object.entries((await clusterView(d, n)).counters)) sum[k] = (sum[k] ?? 0) + v;
  return sum;
}

/**
 * Waits until every node lists all of them in GET /cluster, and then until a call sent to each
 * node reaches an actor every other node owns (each node's view of the live nodes is refreshed
 * at its own heartbeat, after the listing shows them).
 */
async function clusterReady(d: Deployment): Promise<void> {
  const ids = d.nodes.map((n) => n.id).sort();
  for (const n of d.nodes) {
    await waitFor(async () => (await clusterView(d, n)).nodes.map((x) => x.id).sort().join() === ids.join(), { timeoutMs: 15_000, intervalMs: 50 });
  }
  if (d.nodes.length < 2) return;
  const admins = await Promise.all(d.nodes.map((n) => RpcConn.open(n.url, d.adminKey)));
  try {
    for (let i = 0; i < d.nodes.length; i++) {
      const taskId = must(await admins[i]!.call('task.create', { type: 'probe', title: `routing probe ${i}` }), 'task.create (routing probe)').id as string;
      for (let j = 0; j < d.nodes.length; j++) {
        if (j === i) continue;
        let last = '';
        await waitFor(
          async () => {
            const r = await admins[j]!.call('task.update', { taskId, title: `routed ${i}→${j}` });
            last = errorOf(r);
            return !r.error;
          },
          { timeoutMs: 10_000, intervalMs: 50 },
        ).catch(() => {
          throw new Error(`node ${d.nodes[j]!.id} could not reach a task owned by ${d.nodes[i]!.id}: ${last}`);
        });
      }
    }
  } finally {
    await closeAll(admins);
  }
}

/** A fresh store with `agents` agent keys and `n` nodes (started together: nobody bootstraps), ready to route. */
async function deploy(n: number, cluster: boolean, redis: RedisProcess[], agents: number): Promise<Deployment> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-cluster-'));
  liveDirs.add(dir);
  const db = path.join(dir, 'troupe.db');
  const { keys, adminKey } = await makeKeys(db, agents);
  if (cluster) await Promise.all(redis.map((r) => r.command('FLUSHALL')));
  const env: Record<string, string> = {
    TROUPE_DATA_DIR: dir,
    TROUPE_STORE: `sqlite:${db}`,
    TROUPE_SQLITE_SYNC: SYNC,
    TROUPE_BOOTSTRAP: 'false',
    ...(cluster
      ? {
          TROUPE_CLUSTER: 'true',
          TROUPE_REDIS_URL: redis[0]!.url,
          TROUPE_REDLOCK_URLS: redis.map((r) => r.url).join(','),
          TROUPE_CLUSTER_LEASE_MS: String(CLUSTER_LEASE_MS),
          TROUPE_CLUSTER_HEARTBEAT_MS: String(CLUSTER_HEARTBEAT_MS),
        }
      : {}),
  };
  const d: Deployment = { cluster, dir, env, nodes: [], keys, adminKey, nextId: 1 };
  try {
    await grow(d, n);
  } catch (e) {
    await teardown(d);
    throw e;
  }
  return d;
}

/** Starts nodes (together) until the deployment has `n`, and waits until they route to each other. */
async function grow(d: Deployment, n: number): Promise<void> {
  const started = await Promise.allSettled(Array.from({ length: n - d.nodes.length }, () => startNode(d)));
  for (const s of started) if (s.status === 'fulfilled') d.nodes.push(s.value);
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  d.nodes.sort((a, b) => Number(a.id.slice(1)) - Number(b.id.slice(1)));
  if (d.cluster) await clusterReady(d);
}

async function teardown(d: Deployment): Promise<void> {
  await Promise.all(d.nodes.map((n) => n.proc.kill()));
  fs.rmSync(d.dir, { recursive: true, force: true });
  liveDirs.delete(d.dir);
}

/**
 * Connections of agents `first` … `first + count - 1`: the i-th of them connects to node i mod n
 * (its home); `shift` moves every agent to the next node.
 */
async function agentConns(d: Deployment, first: number, count: number, shift = 0): Promise<RpcConn[]> {
  const conns: RpcConn[] = [];
  for (let i = 0; i < count; i += 25) {
    const batch = Array.from({ length: Math.min(25, count - i) }, (_, j) => {
      const a = i + j;
      return RpcConn.open(d.nodes[(a + shift) % d.nodes.length]!.url, d.keys[first + a]);
    });
    conns.push(...(await Promise.all(batch)));
  }
  return conns;
}

/** The lifecycle of agent `first + w` (create with assignTo self on `home`; accept, start, complete on `away`). */
function lifecycle(first: number, home: RpcConn[], away: RpcConn[]): Work {
  let seq = 0;
  return async (w, rec) => {
    const create = home[w]!;
    const conn = away[w]!;
    const t = await timed(rec, 'task.create', () => create.call('task.create', { type: 'bench', title: `Benchmark task ${seq++}`, assignTo: `agent-${first + w}` }));
    if (!t) return false;
    const taskId = t.id as string;
    if (!(await timed(rec, 'task.accept', () => conn.call('task.accept', { taskId })))) return false;
    if (!(await timed(rec, 'task.start', () => conn.call('task.start', { taskId })))) return false;
    return (await timed(rec, 'task.complete', () => conn.call('task.complete', { taskId, result: { ok: true } }))) !== undefined;
  };
}

interface CpuSample {
  nodesUs: number;
  redisUs: number;
  machine: ReturnType<typeof machineCpu>;
}

function sampleCpu(d: Deployment, redisPids: number[]): CpuSample {
  return {
    nodesUs: d.nodes.reduce((s, n) => s + procCpuUs(n.proc.pid), 0),
    redisUs: d.cluster ? redisPids.reduce((s, p) => s + procCpuUs(p), 0) : 0,
    machine: machineCpu(),
  };
}

/** One closed-loop row with the CPU of the nodes and the redis-servers at the window's edges. */
async function clusterRow(
  deployment: string,
  d: Deployment,
  redisPids: number[],
  workers: number,
  work: Work,
  windows: MeasureOptions,
): Promise<ClusterRow> {
  const before = await counters(d);
  const cpu: CpuSample[] = [];
  // Lifecycles over warm-up and window alike, as the routing counters count them.
  let lifecycles = 0;
  const counted: Work = async (w, rec) => {
    const done = await work(w, rec);
    if (done) lifecycles++;
    return done;
  };
  const r = await closedLoop({ workers, warmupMs: windows.warmupMs, measureMs: windows.measureMs, work: counted, onWindow: () => cpu.push(sampleCpu(d, redisPids)) });
  const after = await counters(d);
  const row: ClusterRow = {
    name: deployment,
    deployment,
    nodes: d.nodes.length,
    cluster: d.cluster,
    clients: workers,
    inFlightPerClient: 1,
    windowMs: r.windowMs,
    calls: r.calls,
    callsPerSec: (r.calls / r.windowMs) * 1000,
    errors: r.errors,
    latencyMs: summarize(r.all),
    byMethodMs: Object.fromEntries([...r.byMethod].map(([m, s]) => [m, summarize(s)])),
    units: r.units,
    unitsPerSec: (r.units / r.windowMs) * 1000,
    clientCpuPct: (r.clientCpuUs / 1000 / r.windowMs) * 100,
  };
  if (r.firstError) row.firstError = r.firstError;
  const [c0, c1] = cpu;
  if (c0 && c1) {
    const nodesUs = c1.nodesUs - c0.nodesUs;
    row.serverCpuPct = (nodesUs / 1000 / r.windowMs) * 100;
    row.serverCpuUsPerCall = r.calls > 0 ? nodesUs / r.calls : NaN;
    row.serverCpuUsPerUnit = r.units > 0 ? nodesUs / r.units : NaN;
    row.redisCpuPct = ((c1.redisUs - c0.redisUs) / 1000 / r.windowMs) * 100;
    if (c0.machine && c1.machine && c1.machine.total > c0.machine.total) {
      const busyPct = ((c1.machine.busy - c0.machine.busy) / (c1.machine.total - c0.machine.total)) * os.cpus().length * 100;
      row.otherCpuPct = Math.max(0, busyPct - row.clientCpuPct - row.serverCpuPct - row.redisCpuPct);
    }
  }
  if (d.cluster) row.forwardedPerUnit = lifecycles > 0 ? ((after.forwarded ?? NaN) - (before.forwarded ?? NaN)) / lifecycles : NaN;
  const l = row.latencyMs;
  process.stdout.write(
    `  ${padEnd(deployment, 42)} ${pad(`${workers}×1`, 6)}  ${pad(fmt(row.callsPerSec), 7)} calls/s  ${pad(fmt(row.unitsPerSec ?? NaN), 6)} lifecycles/s  p50 ${ms(l.p50)}  p90 ${ms(l.p90)}  p99 ${ms(l.p99)} ms` +
      `  nodes CPU ${fmt(row.serverCpuPct ?? NaN)}%  redis CPU ${fmt(row.redisCpuPct ?? NaN)}%` +
      (row.errors ? `  ERRORS ${row.errors} (${row.firstError})` : '') +
      '\n',
  );
  return row;
}

/**
 * Lifecycle rows of agents `first` … `first + agents - 1`, registered on their home nodes:
 * every call to the home node, and (with more than one node) 3 of 4 calls through another node.
 */
async function throughputRows(
  label: string,
  d: Deployment,
  redisPids: number[],
  first: number,
  agents: number,
  windows: MeasureOptions,
  crossNode: boolean,
): Promise<ClusterRow[]> {
  const home = await agentConns(d, first, agents);
  const conns = [...home];
  try {
    await Promise.all(
      home.map(async (c, i) => must(await c.call('agent.register', { id: `agent-${first + i}`, capabilities: ['bench'] }), `agent.register agent-${first + i}`)),
    );
    const rows = [await clusterRow(label, d, redisPids, agents, lifecycle(first, home, home), windows)];
    if (crossNode) {
      const away = await agentConns(d, first, agents, 1);
      conns.push(...away);
      rows.push(await clusterRow(`${label.replace(/,.*$/, '')}, 3 of 4 calls via another node`, d, redisPids, agents, lifecycle(first, home, away), windows));
    }
    return rows;
  } finally {
    await closeAll(conns);
  }
}

/** Labels of the latency rows' samples. */
export const FWD = {
  progressOwner: 'task.progress on the owner',
  progressOther: 'task.progress via another node',
  getOwner: 'task.get on the owner',
  getOther: 'task.get on another node',
  progressSingle: 'task.progress, single node without cluster',
  getSingle: 'task.get, single node without cluster',
} as const;

/** One call of a latency row: a label, the node it is sent to, and which call. */
interface LatencyCall {
  label: string;
  node: number;
  method: 'task.progress' | 'task.get';
}

/**
 * One task in progress created (so owned) by agent-0 on node 0; one client sends `calls` in turn,
 * each on agent-0's connection to its node, 1 call in flight. Returns the row, the routing
 * counters' change and how many calls of each label were sent (warm-up included).
 */
async function latencyRow(d: Deployment, windows: MeasureOptions, calls: LatencyCall[]): Promise<{ row: Row; counters: Record<string, number>; sent: Record<string, number> }> {
  const nodes = [...new Set(calls.map((c) => c.node))];
  const conns = new Map<number, RpcConn>();
  try {
    for (const n of nodes) conns.set(n, await RpcConn.open(d.nodes[n]!.url, d.keys[0]));
    const onOwner = conns.get(0)!;
    const taskId = must(await onOwner.call('task.create', { type: 'bench', title: 'forwarded vs local', assignTo: 'agent-0' }), 'task.create').id as string;
    must(await onOwner.call('task.accept', { taskId }), 'task.accept');
    must(await onOwner.call('task.start', { taskId }), 'task.start');
    let pct = 0;
    const sent: Record<string, number> = {};
    const work: Work = async (_w, rec) => {
      for (const c of calls) {
        const conn = conns.get(c.node)!;
        sent[c.label] = (sent[c.label] ?? 0) + 1;
        const params = c.method === 'task.progress' ? { taskId, percent: (pct = (pct + 1) % 100) } : { taskId };
        if ((await timed(rec, c.label, () => conn.call(c.method, params))) === undefined) return false;
      }
      return true;
    };
    const before = await counters(d);
    const r = await closedLoop({ workers: 1, warmupMs: windows.warmupMs, measureMs: windows.measureMs, work });
    const after = await counters(d);
    const byMethodMs = Object.fromEntries([...r.byMethod].map(([m, s]) => [m, summarize(s)]));
    const row: Row = {
      name: calls.map((c) => c.label).join(' / '),
      clients: 1,
      inFlightPerClient: 1,
      windowMs: r.windowMs,
      calls: r.calls,
      callsPerSec: (r.calls / r.windowMs) * 1000,
      errors: r.errors,
      latencyOf: calls[0]!.label,
      latencyMs: byMethodMs[calls[0]!.label] ?? summarize([]),
      byMethodMs,
      units: r.units,
      unitsPerSec: (r.units / r.windowMs) * 1000,
      clientCpuPct: (r.clientCpuUs / 1000 / r.windowMs) * 100,
    };
    if (r.firstError) row.firstError = r.firstError;
    for (const c of calls) {
      const l = byMethodMs[c.label];
      if (l) process.stdout.write(`  ${padEnd(c.label, 44)} ${pad(String(l.count), 6)}  p50 ${ms(l.p50)}  p90 ${ms(l.p90)}  p99 ${ms(l.p99)}  max ${ms(l.max)} ms\n`);
    }
    if (row.errors) process.stdout.write(`  ERRORS ${row.errors} (${row.firstError})\n`);
    return { row, counters: Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)])), sent };
  } finally {
    await closeAll([...conns.values()]);
  }
}

/** task.progress and task.get on the owner of a task and on another node, interleaved. */
async function forwardingRow(d: Deployment, windows: MeasureOptions): Promise<ClusterResult['forwarding']> {
  const { row, counters: delta, sent } = await latencyRow(d, windows, [
    { label: FWD.progressOwner, node: 0, method: 'task.progress' },
    { label: FWD.progressOther, node: 1, method: 'task.progress' },
    { label: FWD.getOwner, node: 0, method: 'task.get' },
    { label: FWD.getOther, node: 1, method: 'task.get' },
  ]);
  // Only the progress calls via node 1 are forwarded: counted over warm-up and window.
  const viaOther = sent[FWD.progressOther] ?? 0;
  const forwardedPerProgress = viaOther > 0 ? (delta.forwarded ?? 0) / viaOther : NaN;
  process.stdout.write(`  (${fmt(forwardedPerProgress, 2)} forwarded requests per task.progress via the other node)\n`);
  return { row, forwardedPerProgress, counters: delta };
}

/** What a writer loop saw after the kill. */
interface WriterLog {
  firstSuccessMs: number | null;
  unavailable: number;
  retryAfterMs: Set<number>;
  otherErrors: Map<string, number>;
}

/**
 * Sends task.progress until one succeeds after `t0`, waiting `data.retryAfterMs` after each
 * UNAVAILABLE (50 ms after anything else); `stop` ends it early.
 */
async function writeUntilSuccess(conn: RpcConn, taskId: string, t0: number, log: WriterLog, stop: { done: boolean }): Promise<void> {
  while (!stop.done && performance.now() - t0 < FAILOVER_LIMIT_MS) {
    const sentAt = performance.now();
    const r = await conn.call('task.progress', { taskId, message: 'failover' });
    if (!r.error) {
      if (sentAt >= t0) {
        log.firstSuccessMs = performance.now() - t0;
        return;
      }
      continue;
    }
    const after = retryAfter(r);
    if (reasonOf(r) === 'UNAVAILABLE') {
      log.unavailable++;
      if (after !== undefined) log.retryAfterMs.add(after);
    } else {
      log.otherErrors.set(r.error.message, (log.otherErrors.get(r.error.message) ?? 0) + 1);
    }
    await sleep(after ?? 50);
  }
}

/**
 * Kills node 0 (the owner of a task that a writer on node 0 and a writer on node 1 keep busy),
 * then measures until a write succeeds through node 1 (the busy writer) and node 2 (a new one).
 */
async function failoverTrial(d: Deployment): Promise<FailoverTrial> {
  const [owner, other, third] = d.nodes as [Node, Node, Node];
  const [onOwner, busy, fresh] = await Promise.all([owner, other, third].map((n) => RpcConn.open(n.url, d.keys[0])));
  try {
    const taskId = must(await onOwner!.call('task.create', { type: 'bench', title: 'failover', assignTo: 'agent-0' }), 'task.create').id as string;
    must(await onOwner!.call('task.accept', { taskId }), 'task.accept');
    must(await onOwner!.call('task.start', { taskId }), 'task.start');
    let lastOwnerWrite: number | null = null;
    let killAt = Infinity;
    let ownerWrites = 0;
    let busyWrites = 0;
    let versionConflicts = 0;
    // Neither loop rejects: a failure before the kill is kept here and ends the trial.
    let failure: Error | null = null;
    const ownerLoop = (async () => {
      for (;;) {
        const r = await onOwner!.call('task.progress', { taskId, message: 'owner' });
        const now = performance.now();
        if (r.error) {
          if (now < killAt) failure ??= new Error(`the writer on the owner failed before the kill: ${errorOf(r)}`);
          return;
        }
        if (now < killAt) lastOwnerWrite = now;
        ownerWrites++;
      }
    })();
    // The busy writer: forwarded writes back to back, until the kill. A forwarded turn checks the
    // owner's snapshot and is sent pinned to its version, so racing the owner's own writes it can
    // lose (UNAVAILABLE, outcome not_applied, after the forwarding node's checks): counted, and written again.
    let inFlightAtKill: FailoverTrial['inFlightAtKill'] = null;
    const busyLoop = (async (): Promise<{ reply: RpcReply; sentAt: number; at: number } | null> => {
      for (;;) {
        const sentAt = performance.now();
        const reply = await busy!.call('task.progress', { taskId, message: 'busy' });
        const at = performance.now();
        if (at >= killAt) {
          if (sentAt < killAt) inFlightAtKill = { ms: at - killAt, outcome: reply.error ? `${reasonOf(reply)}: ${reply.error.message}` : 'succeeded' };
          return { reply, sentAt, at };
        }
        if (reply.error && !notApplied(reply)) {
          failure ??= new Error(`the busy writer failed before the kill: ${errorOf(reply)}`);
          return null;
        }
        if (reply.error) versionConflicts++;
        else busyWrites++;
      }
    })();
    await waitFor(() => failure !== null || (ownerWrites >= 20 && busyWrites >= 20), { timeoutMs: 10_000 });
    if (failure) throw failure;
    killAt = performance.now();
    owner.proc.child.kill('SIGKILL');
    const busyLog: WriterLog = { firstSuccessMs: null, unavailable: 0, retryAfterMs: new Set(), otherErrors: new Map() };
    const freshLog: WriterLog = { firstSuccessMs: null, unavailable: 0, retryAfterMs: new Set(), otherErrors: new Map() };
    const stop = { done: false };
    // The new writer's first call goes out once this process has seen the owner exit: a call sent
    // in the moment the owner dies can still be published to its channel and wait the full
    // forwarding timeout, which is the busy writer's case.
    let exitedMs = NaN;
    const freshRun = owner.proc.exited.then(() => {
      exitedMs = performance.now() - killAt;
      return writeUntilSuccess(fresh!, taskId, killAt, freshLog, stop);
    });
    const busyRun = busyLoop.then(async (last) => {
      if (!last) return;
      const { reply: r, sentAt, at } = last;
      if (!r.error && sentAt >= killAt) {
        busyLog.firstSuccessMs = at - killAt;
        return;
      }
      if (r.error) {
        const after = retryAfter(r);
        if (reasonOf(r) === 'UNAVAILABLE') {
          busyLog.unavailable++;
          if (after !== undefined) busyLog.retryAfterMs.add(after);
        } else busyLog.otherErrors.set(r.error.message, (busyLog.otherErrors.get(r.error.message) ?? 0) + 1);
        await sleep(after ?? 50);
      }
      await writeUntilSuccess(busy!, taskId, killAt, busyLog, stop);
    });
    await Promise.all([freshRun, busyRun, ownerLoop]);
    stop.done = true;
    d.nodes = d.nodes.filter((n) => n !== owner);
    const otherErrors: Record<string, number> = {};
    for (const log of [busyLog, freshLog]) for (const [m, n] of log.otherErrors) otherErrors[m] = (otherErrors[m] ?? 0) + n;
    const trial: FailoverTrial = {
      killed: owner.id,
      exitedMs,
      busyWriterMs: busyLog.firstSuccessMs,
      inFlightAtKill,
      newWriterMs: freshLog.firstSuccessMs,
      unavailable: busyLog.unavailable + freshLog.unavailable,
      retryAfterMs: [...new Set([...busyLog.retryAfterMs, ...freshLog.retryAfterMs])].sort((a, b) => a - b),
      otherErrors,
      lastOwnerWriteMsBeforeKill: lastOwnerWrite === null ? null : killAt - lastOwnerWrite,
      beforeKill: { ownerWrites, forwardedWrites: busyWrites, forwardedVersionConflicts: versionConflicts },
    };
    const inflight = trial.inFlightAtKill as FailoverTrial['inFlightAtKill'];
    process.stdout.write(
      `  killed ${trial.killed} (exited after ${fmt(exitedMs)} ms): new writer's first write after ${trial.newWriterMs === null ? 'never' : `${fmt(trial.newWriterMs)} ms`}, ` +
        `busy writer's after ${trial.busyWriterMs === null ? 'never' : `${fmt(trial.busyWriterMs)} ms`}` +
        (inflight ? ` (its call in flight at the kill: ${inflight.outcome.slice(0, 80)} after ${fmt(inflight.ms)} ms)` : '') +
        `; ${trial.unavailable} UNAVAILABLE (retryAfterMs ${trial.retryAfterMs.join('/') || '-'})` +
        `; before the kill ${ownerWrites} owner writes, ${busyWrites} forwarded, ${versionConflicts} forwarded refused as not applied` +
        (Object.keys(otherErrors).length ? `; other errors: ${JSON.stringify(otherErrors)}` : '') +
        '\n',
    );
    return trial;
  } finally {
    await closeAll([onOwner!, busy!, fresh!]);
  }
}

/** The cluster section: throughput on 1 plain node, a cluster of 1 and of 3; forwarding; failover. */
export async function clusterRows(opts: { windows: MeasureOptions; quick: boolean }): Promise<ClusterResult> {
  const agents = CLUSTER_AGENTS;
  const trials = Number(process.env.BENCH_CLUSTER_FAILOVERS ?? (opts.quick ? 1 : 2));
  process.once('exit', killAll);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const redis: RedisProcess[] = [];
  let d: Deployment | undefined;
  try {
    redis.push(...(await Promise.all(Array.from({ length: LOCK_INSTANCES }, () => startRedis()))));
    const redisPids = redis.map((r) => r.pid());
    // Killed with everything else if the run is interrupted.
    for (const pid of redisPids) livePids.add(pid);
    const startups: { what: string; ms: number }[] = [];
    const timedStart = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      const v = await fn();
      startups.push({ what, ms: performance.now() - t0 });
      process.stdout.write(`  (${what} after ${fmt((performance.now() - t0) / 1000, 1)} s)\n`);
      return v;
    };
    const rows: ClusterRow[] = [];

    // The single node and the cluster's first node start together; the latter idles (heartbeats)
    // while the single node is measured.
    let clusterOf1: Deployment | undefined;
    d = await timedStart('the single node and the cluster of 1 up', async () => {
      const [single, one] = await Promise.allSettled([deploy(1, false, redis, agents), deploy(1, true, redis, 2 * agents)]);
      if (one.status === 'fulfilled') clusterOf1 = one.value;
      if (single.status === 'rejected') {
        if (clusterOf1) await teardown(clusterOf1);
        throw single.reason;
      }
      if (one.status === 'rejected') {
        await teardown(single.value);
        throw one.reason;
      }
      return single.value;
    });
    rows.push(...(await throughputRows('single node, no cluster', d, redisPids, 0, agents, opts.windows, false)));
    // A reference for the forwarding rows: the same calls on a node without cluster machinery.
    const half = { warmupMs: opts.windows.warmupMs / 2, measureMs: opts.windows.measureMs / 2 };
    const single = (
      await latencyRow(d, half, [
        { label: FWD.progressSingle, node: 0, method: 'task.progress' },
        { label: FWD.getSingle, node: 0, method: 'task.get' },
      ])
    ).row;
    await teardown(d);

    // The cluster of 1 grows into the cluster of 3; its rows use other agents, registered on
    // their home nodes (the first ones' actors stay where the cluster of 1 left them).
    d = clusterOf1!;
    rows.push(...(await throughputRows('cluster of 1', d, redisPids, 0, agents, opts.windows, false)));
    const grown = d;
    await timedStart(`${CLUSTER_SIZE - 1} more nodes up and routing`, () => grow(grown, CLUSTER_SIZE));
    rows.push(...(await throughputRows(`cluster of ${CLUSTER_SIZE}, all calls to the home node`, d, redisPids, agents, agents, opts.windows, true)));

    process.stdout.write(`\n  forwarded vs local (cluster of ${CLUSTER_SIZE}; one task owned by ${d.nodes[0]!.id}; one client, calls interleaved):\n`);
    const forwarding = await forwardingRow(d, opts.windows);

    process.stdout.write(`\n  failover after SIGKILL of the owner (lease ${CLUSTER_LEASE_MS} ms, heartbeat ${CLUSTER_HEARTBEAT_MS} ms):\n`);
    const failover: FailoverTrial[] = [];
    for (let t = 0; t < trials; t++) {
      if (t > 0) await timedStart('a fresh node replaced the killed one', () => grow(grown, CLUSTER_SIZE));
      failover.push(await failoverTrial(d));
    }
    return { setup: { sync: SYNC, leaseMs: CLUSTER_LEASE_MS, heartbeatMs: CLUSTER_HEARTBEAT_MS, lockInstances: LOCK_INSTANCES, agents, startups }, rows, forwarding, single, failover };
  } finally {
    if (d) await teardown(d).catch(() => {});
    await Promise.all(
      redis.map(async (r) => {
        const pid = r.pid();
        await r.stop();
        livePids.delete(pid);
      }),
    );
    killAll();
    process.off('exit', killAll);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The cluster tables, next to the raw ws round trip measured in the same run. */
export function printCluster(raw: Row[], c: ClusterResult): void {
  const rawAt = (clients: number) => raw.find((r) => r.clients === clients && r.inFlightPerClient === 1);
  const b1 = rawAt(1);
  const plain = c.rows.find((r) => !r.cluster);
  const out: string[] = [];
  out.push('');
  out.push(
    `Cluster: nodes as separate src/main.ts processes over one SQLite file (synchronous=${c.setup.sync}); ${c.setup.lockInstances} redis-servers for the leases (the first also the shared Redis); lease ${c.setup.leaseMs} ms`,
  );
  out.push(`  ${c.setup.agents} agents (connections) × 1 call in flight looping over the lifecycle (create assignTo self → accept → start → complete); agent i's home is node i mod n`);
  out.push(
    `  ${padEnd('deployment', 52)} ${pad('calls/s', 8)} ${pad('lc/s', 6)} ${pad('p50', 6)} ${pad('p90', 6)} ${pad('p99', 6)} │ ${pad('raw rt/s', 8)} ${pad('raw p99', 7)} │ ${pad('calls÷raw', 9)} ${pad('p99÷raw', 7)} ${pad('÷single', 7)} │ ${pad('nodes CPU', 9)} ${pad('redis', 6)} ${pad('µs/call', 7)} ${pad('fwd/lc', 6)} ${pad('other', 6)}`,
  );
  for (const r of c.rows) {
    const b = rawAt(r.clients);
    out.push(
      `  ${padEnd(r.deployment, 52)} ${pad(fmt(r.callsPerSec), 8)} ${pad(fmt(r.unitsPerSec ?? NaN), 6)} ${pad(ms(r.latencyMs.p50), 6)} ${pad(ms(r.latencyMs.p90), 6)} ${pad(ms(r.latencyMs.p99), 6)} │ ${pad(fmt(b?.callsPerSec ?? NaN), 8)} ${pad(ms(b?.latencyMs.p99 ?? NaN), 7)} │ ${pad(fmt((r.callsPerSec / (b?.callsPerSec ?? NaN)) * 100, 1) + '%', 9)} ${pad(fmt(r.latencyMs.p99 / (b?.latencyMs.p99 ?? NaN), 1) + '×', 7)} ${pad(fmt((r.callsPerSec / (plain?.callsPerSec ?? NaN)) * 100) + '%', 7)} │ ${pad(fmt(r.serverCpuPct ?? NaN) + '%', 9)} ${pad(r.cluster ? fmt(r.redisCpuPct ?? NaN) + '%' : '-', 6)} ${pad(fmt(r.serverCpuUsPerCall ?? NaN), 7)} ${pad(r.forwardedPerUnit !== undefined ? fmt(r.forwardedPerUnit, 1) : '-', 6)} ${pad(fmt(r.otherCpuPct ?? NaN) + '%', 6)}` +
        (r.errors ? `  ERRORS ${r.errors}: ${r.firstError}` : ''),
    );
  }
  out.push('  (latencies in ms over every call; lc/s = lifecycles/s; raw = raw ws round trip at as many clients × 1; ÷single = calls/s of the single node without');
  out.push('   cluster; nodes CPU = all Troupe node processes, 100% = one core; redis = the redis-servers; µs/call = nodes CPU per call; fwd/lc = forwarded');
  out.push(`   requests (actor reads and turns over Redis) per lifecycle, from GET /cluster; ${os.cpus().length} cores: every node, redis-server and this client share them)`);
  const lcs = c.rows.filter((r) => r.byMethodMs);
  if (lcs.length > 0) {
    const order = ['task.create', 'task.accept', 'task.start', 'task.complete'];
    out.push(`  per method p50 / p99 ms: ${padEnd('', 26)}` + order.map((m) => pad(m, 18)).join(''));
    for (const r of lcs) out.push(`  ${padEnd(r.deployment, 52)}` + order.map((m) => pad(`${ms(r.byMethodMs![m]?.p50 ?? NaN)} / ${ms(r.byMethodMs![m]?.p99 ?? NaN)}`, 18)).join(''));
  }
  const f = c.forwarding;
  out.push('');
  out.push(`Forwarded vs local call: one task in progress, created on node A (so A owns it); one client, 1 call in flight, the four calls interleaved (and the same calls on the single node without cluster)`);
  out.push(`  ${padEnd('call', 48)} ${pad('n', 6)} ${pad('p50', 6)} ${pad('p90', 6)} ${pad('p99', 6)} ${pad('max', 6)} │ ${pad('raw 1×1 p50', 11)} ${pad('p99', 5)} │ ${pad('p50÷raw', 7)} ${pad('p99÷raw', 7)}`);
  for (const m of Object.values(FWD)) {
    const l: Latency | undefined = f.row.byMethodMs?.[m] ?? c.single.byMethodMs?.[m];
    if (!l) continue;
    out.push(
      `  ${padEnd(m, 48)} ${pad(String(l.count), 6)} ${pad(ms(l.p50), 6)} ${pad(ms(l.p90), 6)} ${pad(ms(l.p99), 6)} ${pad(ms(l.max), 6)} │ ${pad(ms(b1?.latencyMs.p50 ?? NaN), 11)} ${pad(ms(b1?.latencyMs.p99 ?? NaN), 5)} │ ${pad(fmt(l.p50 / (b1?.latencyMs.p50 ?? NaN), 1) + '×', 7)} ${pad(fmt(l.p99 / (b1?.latencyMs.p99 ?? NaN), 1) + '×', 7)}`,
    );
  }
  const po = f.row.byMethodMs?.[FWD.progressOwner];
  const pf = f.row.byMethodMs?.[FWD.progressOther];
  if (po && pf) out.push(`  forwarding adds ${ms(pf.p50 - po.p50)} ms at p50, ${ms(pf.p99 - po.p99)} ms at p99 to task.progress (${fmt(f.forwardedPerProgress, 2)} forwarded requests per call: the owner's snapshot to check against, then the turn)`);
  out.push('  (task.get reads the shared store on whichever node receives it: it is never forwarded; the single-node lines are measured on the');
  out.push('   single node of the first row, in a window half as long)');
  if (f.row.errors) out.push(`  ERRORS ${f.row.errors}: ${f.row.firstError}`);
  out.push('');
  out.push(
    `Failover after SIGKILL of the owner of a busy task (lease ${c.setup.leaseMs} ms; heartbeat ${c.setup.heartbeatMs} ms: a node is gone after 3 missed; a forwarded call times out after ${FORWARD_TIMEOUT_MS} ms, the default)`,
  );
  out.push(
    `  ${padEnd('killed', 7)} ${pad('new writer', 10)} ${pad('busy writer', 11)} ${pad('UNAVAILABLE', 11)} ${pad('retryAfterMs', 12)} │ ${pad('before: owner', 13)} ${pad('fwd', 5)} ${pad('fwd refused', 11)} │ busy writer's call in flight at the kill`,
  );
  for (const t of c.failover) {
    const inflight = t.inFlightAtKill;
    out.push(
      `  ${padEnd(t.killed, 7)} ${pad(t.newWriterMs === null ? 'never' : fmt(t.newWriterMs) + ' ms', 10)} ${pad(t.busyWriterMs === null ? 'never' : fmt(t.busyWriterMs) + ' ms', 11)} ${pad(String(t.unavailable), 11)} ${pad(t.retryAfterMs.join('/') || '-', 12)} │ ${pad(String(t.beforeKill.ownerWrites), 13)} ${pad(String(t.beforeKill.forwardedWrites), 5)} ${pad(String(t.beforeKill.forwardedVersionConflicts), 11)} │ ` +
        (inflight ? `${fmt(inflight.ms)} ms after the kill: ${inflight.outcome.slice(0, 90)}` : 'none (answered before the kill)') +
        (Object.keys(t.otherErrors).length ? `  other errors: ${JSON.stringify(t.otherErrors)}` : ''),
    );
  }
  out.push('  (times from the SIGKILL to the first successful task.progress sent after it; new writer = a client on a third node that starts writing once');
  out.push('   the killed process has exited; busy writer = a client on another node that was writing back to back, each write forwarded to the owner, so');
  out.push('   one of its calls is in flight at the kill; both wait data.retryAfterMs after each UNAVAILABLE; before = writes acknowledged before the');
  out.push("   kill: the owner's own, the forwarded ones, and forwarded ones refused as not applied (they lost every check against the owner's writes);");
  out.push('   a fresh node replaces the killed one before the next trial)');
  const noisy = c.rows.filter((r) => (r.otherCpuPct ?? 0) > 15);
  if (noisy.length > 0) out.push(`  WARNING: ${noisy.length} row(s) ran while other processes used more than 15% CPU; rerun on a quiet machine.`);
  process.stdout.write(out.join('\n') + '\n');
}

/** Targets of the cluster section (none is a DESIGN target; they say whether the numbers mean anything). */
export function clusterChecks(c: ClusterResult): { target: string; pass: boolean; detail: string }[] {
  const failed = [...c.rows, c.forwarding.row, c.single].filter((r) => r.errors > 0);
  const worstNew = Math.max(...c.failover.map((t) => t.newWriterMs ?? Infinity));
  const worstBusy = Math.max(...c.failover.map((t) => t.busyWriterMs ?? Infinity));
  return [
    {
      target: 'every cluster throughput and forwarding call succeeded',
      pass: failed.length === 0,
      detail: failed.length === 0 ? `${fmt([...c.rows, c.forwarding.row, c.single].reduce((n, r) => n + r.calls, 0))} calls in the windows` : failed.map((r) => `${r.name}: ${r.errors} (${r.firstError})`).join('; '),
    },
    {
      target: `after SIGKILL of an actor's owner, a new caller on another node writes again within lease + 1 s (${c.setup.leaseMs + 1000} ms; informational)`,
      pass: c.failover.length > 0 && worstNew <= c.setup.leaseMs + 1000,
      detail: c.failover.map((t) => (t.newWriterMs === null ? 'never' : `${fmt(t.newWriterMs)} ms`)).join(', '),
    },
    {
      target: `a caller whose forwarded call was in flight at the kill writes again within lease + 1 s (informational)`,
      pass: c.failover.length > 0 && worstBusy <= c.setup.leaseMs + 1000,
      detail: c.failover.map((t) => (t.busyWriterMs === null ? 'never' : `${fmt(t.busyWriterMs)} ms`)).join(', '),
    },
  ];
}

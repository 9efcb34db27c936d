import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import * as Automerge from '@automerge/automerge';
import { ActorHost } from '../actors/ActorHost.js';
import { LocalOwnership } from '../actors/Ownership.js';
import { DocumentService, type DocumentRef } from '../src/documents/DocumentService.js';
import { actorKinds } from '../src/kinds/index.js';
import { TroupeServer } from '../src/server/TroupeServer.js';
import { SqliteStore } from '../src/storage/SqliteStore.js';
import { Child } from './child.js';
import { send, serveControl } from './childControl.js';
import type { Work } from './loadgen.js';
import { closeAll, fmt, measure, ms, openConns, type MeasureOptions, type Row } from './measure.js';
import type { RpcConn } from './rpcClient.js';
import { summarize, type Latency } from './stats.js';

/**
 * The workspace document scenarios of the bench: `documentRows()` runs both parts below and
 * returns their results; `npx tsx bench/documents.ts [--quick]` runs it alone and writes
 * bench/results/latest-documents.json.
 *
 * 1. Fan-out (`documentFanoutRows`): a fresh Troupe node per row in its own process (this file
 *    in server mode: the embedded SQLite store with production durability, WAL,
 *    synchronous=FULL, group commit, writer thread; the per-document change rate limit lifted so
 *    the loop measures latency, not the limiter), one workspace whose state document the writer
 *    changes in a closed loop with one call in flight, and 10 or 100 member connections
 *    subscribed to `document:<workspaceId>:state`. Each unit: `workspace.updateState` (a `set`
 *    of one of 100 keys of a nested map and an `increment` of a counter, applied to the
 *    Automerge document, stored, answered) or, in the merge row, `workspace.mergeState` of one
 *    Automerge change the writer made on its own copy (the CRDT merge path); then wait until
 *    every subscriber received that change's notification (JSON Patch + heads). Latency:
 *    DELIVERED, from just before the call is sent until each subscriber's notification arrived
 *    (one sample per subscriber and update); also ALL_DELIVERED (the last subscriber) and the
 *    call itself. The state document is compacted every 500 changes during the run, as in
 *    production.
 * 2. Load (`documentLoadBench`): in this process, a SQLite file (synchronous=NORMAL, inline
 *    writer, only to build it quickly) with one state document of 10,000 changes made through
 *    the document service (each a separate `updateState`-sized change and event; compacted
 *    saves every 500 changes, the default), then the time to load it from the store with a
 *    fresh actor host and document service each time: actor activation (snapshot + events),
 *    reading the last save and the events after it, `Automerge.load` + one `applyChanges`, and
 *    the JSON content. For comparison, the time to rebuild it from all 10,000 changes in one
 *    `applyChanges` call, which is what loading would cost without compaction.
 */

/** The span from sending an update until one subscriber's notification of it arrived. */
export const DELIVERED = 'send → delivered (each subscriber)';
/** The span from sending an update until the last subscriber's notification arrived. */
export const ALL_DELIVERED = 'send → delivered (all subscribers)';
/** Subscriber counts of the fan-out rows. */
export const FANOUT_LEVELS = [10, 100] as const;
/** Changes in the document the load bench builds. */
export const LOAD_CHANGES = 10_000;

const WAIT_MS = 10_000;
const SERVER_MODE = 'BENCH_DOCUMENTS_SERVER';

/** The load bench's result. Times in milliseconds. */
export interface DocumentLoadResult {
  changes: number;
  storeBytes: number;
  buildSeconds: number;
  /** Loads with a fresh host and service each time (the first one included), right after a compaction. */
  loadMs: Latency;
  firstLoadMs: number;
  /** Changes applied after the save, and events read, in the last load. */
  changesAppliedAfterSave: number;
  eventsRead: number;
  /** The worst case between two saves: `compactEvery - 1` (499) more changes, all applied after the save. */
  worstCase: { changes: number; changesAppliedAfterSave: number; loadMs: Latency };
  /** Rebuilding from all changes in one applyChanges call (no compaction). */
  replayAllMs: Latency;
}

// ---- server mode ---------------------------------------------------------------------------------

/** This file as a bench child: a Troupe node with keys for one writer and the subscribers. */
async function serve(): Promise<void> {
  const dir = process.env.BENCH_DIR;
  if (!dir) throw new Error('BENCH_DIR is required');
  const subscribers = Number(process.env.BENCH_SUBSCRIBERS ?? '100');
  const store = new SqliteStore({ path: path.join(dir, 'troupe.db'), synchronous: 'FULL', writer: 'worker' });
  const server = new TroupeServer({ store, port: 0, host: '127.0.0.1', documents: { maxChangesPerSecond: 1_000_000 } });
  const { port } = await server.start();
  const key = async (principal: string) => (await server.app.auth.createKey({ tenant: 'bench', principal, roles: ['agent'] })).key;
  const writerKey = await key('writer');
  const keys: string[] = [];
  for (let i = 0; i < subscribers; i++) keys.push(await key(`sub-${i}`));
  serveControl(() => server.close(), () => ({ activeActors: server.host.activeCount, documents: server.app.documents?.stats().loaded }));
  send({ port, writerKey, keys, store: 'sqlite WAL synchronous=FULL, group commit, worker writer', pid: process.pid });
}

// ---- fan-out ---------------------------------------------------------------------------------------

async function ok(conn: RpcConn, method: string, params: Record<string, unknown>): Promise<Record<string, unknown>> {
  const r = await conn.call(method, params);
  if (r.error) throw new Error(`${method} failed: ${r.error.message}`);
  return r.result!;
}

/** One fan-out row on a fresh node. */
async function fanoutRow(subscribers: number, mode: 'update' | 'merge', windows: MeasureOptions, nodeArgs: string[]): Promise<Row> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-docs-'));
  const server = await Child.start('./documents.ts', { nodeArgs, env: { BENCH_DIR: dir, BENCH_SUBSCRIBERS: String(subscribers), [SERVER_MODE]: '1' } });
  const url = `ws://127.0.0.1:${server.hello.port as number}/v1`;
  const [writer] = await openConns(url, 1, [server.hello.writerKey as string]);
  const subs = await openConns(url, subscribers, server.hello.keys as string[]);
  try {
    const w = await ok(writer!, 'workspace.create', { name: 'Bench', visibility: 'private', maxMembers: subscribers + 1 });
    const workspaceId = w.id as string;
    for (let i = 0; i < subscribers; i++) await ok(writer!, 'workspace.addMember', { workspaceId, principalId: `sub-${i}`, role: 'viewer' });
    await ok(writer!, 'workspace.updateState', { workspaceId, ops: [{ op: 'set', path: '/items', value: {} }, { op: 'increment', path: '/updates' }] });

    // Arrival times of each version's notification, and the one waiter of the closed loop.
    const arrivals = new Map<number, number[]>();
    let waiting: { version: number; resolve: () => void } | null = null;
    for (const s of subs) {
      s.onNotification = (msg) => {
        if (msg.method !== 'subscription.event') return;
        const at = performance.now();
        const version = (msg.params!.event as { version: number }).version;
        let list = arrivals.get(version);
        if (!list) arrivals.set(version, (list = []));
        list.push(at);
        if (waiting && waiting.version === version && list.length >= subscribers) waiting.resolve();
      };
    }
    await Promise.all(subs.map((s) => ok(s, 'subscribe', { topic: `document:${workspaceId}:state` })));

    // The merge row's writer keeps its own Automerge copy and sends only its new change.
    let mine: Automerge.Doc<{ items: Record<string, unknown> }> | null = null;
    if (mode === 'merge') {
      const got = await ok(writer!, 'workspace.getState', { workspaceId, includeAutomerge: true });
      mine = Automerge.load(new Uint8Array(Buffer.from(got.automerge as string, 'base64')));
    }
    let seq = 0;
    const method = mode === 'update' ? 'workspace.updateState' : 'workspace.mergeState';
    const work: Work = async (_w, rec) => {
      const n = seq++;
      let params: Record<string, unknown>;
      if (mode === 'update') {
        params = { workspaceId, ops: [{ op: 'set', path: `/items/k${n % 100}`, value: { n, by: 'writer' } }, { op: 'increment', path: '/updates' }] };
      } else {
        const heads = Automerge.getHeads(mine!);
        mine = Automerge.change(mine!, (d) => {
          d.items[`k${n % 100}`] = { n, by: 'writer' };
        });
        params = { workspaceId, changes: Automerge.getChangesSince(mine, heads).map((c) => Buffer.from(c).toString('base64')) };
      }
      const t0 = performance.now();
      const r = await writer!.call(method, params);
      rec(method, performance.now() - t0, !r.error, r.error?.message);
      if (r.error) return false;
      const version = r.result!.version as number;
      const all = new Promise<boolean>((resolve) => {
        if ((arrivals.get(version)?.length ?? 0) >= subscribers) return resolve(true);
        const timer = setTimeout(() => resolve(false), WAIT_MS);
        waiting = {
          version,
          resolve: () => {
            clearTimeout(timer);
            resolve(true);
          },
        };
      });
      const delivered = await all;
      waiting = null;
      const times = arrivals.get(version) ?? [];
      arrivals.delete(version);
      if (!delivered) {
        rec(ALL_DELIVERED, WAIT_MS, false, `${times.length} of ${subscribers} subscribers got version ${version} within ${WAIT_MS} ms`);
        return false;
      }
      for (const t of times) rec(DELIVERED, t - t0, true);
      rec(ALL_DELIVERED, Math.max(...times) - t0, true);
      return true;
    };
    const name = `${mode === 'update' ? 'updateState' : 'mergeState'} → ${subscribers} subs`;
    const row = await measure(name, server, 1, 1, work, { ...windows, latencyOf: DELIVERED });
    // The loop counts every delivery sample as a call: count the calls made.
    row.calls = row.byMethodMs?.[method]?.count ?? row.calls;
    row.callsPerSec = (row.calls / row.windowMs) * 1000;
    process.stdout.write(`    (calls/s above counts each delivery; ${fmt(row.callsPerSec)} ${method} calls/s)\n`);
    const u = await server.usage();
    row.serverRssBytes = u.rssBytes;
    row.liveActors = u.activeActors;
    return row;
  } finally {
    await closeAll([writer!, ...subs]);
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Fan-out rows: `workspace.updateState` with 10 and 100 subscribers, and `workspace.mergeState`
 * (an Automerge change merged) with 100; each on a fresh node. Latency is DELIVERED.
 */
export async function documentFanoutRows(opts: { windows: MeasureOptions; nodeArgs?: string[] }): Promise<Row[]> {
  const rows: Row[] = [];
  for (const n of FANOUT_LEVELS) rows.push(await fanoutRow(n, 'update', opts.windows, opts.nodeArgs ?? []));
  rows.push(await fanoutRow(100, 'merge', opts.windows, opts.nodeArgs ?? []));
  return rows;
}

// ---- load ----------------------------------------------------------------------------------------

/** Builds a document of `changes` changes in a fresh SQLite file and times loading it (see the file's TSDoc). */
export async function documentLoadBench(opts: { changes?: number; loads?: number } = {}): Promise<DocumentLoadResult> {
  const changes = opts.changes ?? LOAD_CHANGES;
  const loads = opts.loads ?? 20;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-docload-'));
  const file = path.join(dir, 'troupe.db');
  const ref: DocumentRef = { tenant: 'bench', workspaceId: 'w1', documentId: 'state' };
  const open = (store: SqliteStore) => {
    const host = new ActorHost({ store, ownership: new LocalOwnership(store), kinds: [...actorKinds] });
    return { host, docs: new DocumentService({ host, store, limits: { maxChangesPerSecond: 1_000_000 } }) };
  };
  try {
    const store = new SqliteStore({ path: file, synchronous: 'NORMAL', writer: 'inline' });
    const built = performance.now();
    {
      const { host, docs } = open(store);
      const create = { create: { title: 'State', kind: 'state' as const } };
      for (let i = 0; i < changes; i++) {
        await docs.edit(ref, { principal: `agent-${i % 20}` }, { ops: [{ op: 'set', path: `/items/k${i % 100}`, value: { n: i } }, { op: 'increment', path: '/updates' }] }, create);
      }
      // Waits for a compaction still queued behind the last change.
      await docs.get(ref);
      await host.close();
    }
    const buildSeconds = (performance.now() - built) / 1000;

    const timeLoads = async (expected: number) => {
      const times: number[] = [];
      let last = null as ReturnType<DocumentService['stats']>['lastLoad'];
      for (let i = 0; i < loads; i++) {
        const { host, docs } = open(store);
        const t0 = performance.now();
        const r = await docs.get(ref);
        times.push(performance.now() - t0);
        if (!r || (r.content as { updates: number }).updates !== expected) throw new Error('the loaded document is not the one built');
        last = docs.stats().lastLoad;
        await host.close();
      }
      return { times, last };
    };
    const { times, last } = await timeLoads(changes);

    // Without compaction a load would apply every change: read them all and apply them in one call.
    const events = await store.readStream('bench/document/w1:state');
    const all = events.flatMap((e) => ((e.data.changes as string[] | undefined) ?? []).map((c) => new Uint8Array(Buffer.from(c, 'base64'))));
    const replay: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      Automerge.applyChanges(Automerge.init(), all);
      replay.push(performance.now() - t0);
    }

    const more = 499;
    {
      const { host, docs } = open(store);
      for (let i = changes; i < changes + more; i++) {
        await docs.edit(ref, { principal: `agent-${i % 20}` }, { ops: [{ op: 'set', path: `/items/k${i % 100}`, value: { n: i } }, { op: 'increment', path: '/updates' }] });
      }
      await host.close();
    }
    const worst = await timeLoads(changes + more);
    await store.close();
    const storeBytes = fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
    return {
      changes,
      storeBytes,
      buildSeconds,
      loadMs: summarize(times),
      firstLoadMs: times[0]!,
      changesAppliedAfterSave: last?.changesApplied ?? 0,
      eventsRead: last?.eventsRead ?? 0,
      replayAllMs: summarize(replay),
      worstCase: { changes: changes + more, changesAppliedAfterSave: worst.last?.changesApplied ?? 0, loadMs: summarize(worst.times) },
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Every document scenario: the fan-out rows and the load bench. */
export async function documentRows(opts: { windows: MeasureOptions; nodeArgs?: string[] }): Promise<{ rows: Row[]; load: DocumentLoadResult }> {
  const rows = await documentFanoutRows(opts);
  const load = await documentLoadBench();
  process.stdout.write(
    `  load ${fmt(load.changes)} changes        p50 ${ms(load.loadMs.p50)}  p99 ${ms(load.loadMs.p99)} ms (first ${ms(load.firstLoadMs)}; ` +
      `${load.changesAppliedAfterSave} changes after the save)  vs all changes in one applyChanges: p50 ${ms(load.replayAllMs.p50)} ms\n` +
      `  load ${fmt(load.worstCase.changes)} changes        p50 ${ms(load.worstCase.loadMs.p50)}  p99 ${ms(load.worstCase.loadMs.p99)} ms ` +
      `(${load.worstCase.changesAppliedAfterSave} changes after the save: the worst case between saves)\n`,
  );
  return { rows, load };
}

// ---- entry points ----------------------------------------------------------------------------------

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const windows = { warmupMs: Number(process.env.BENCH_WARMUP_MS ?? (quick ? 500 : 1500)), measureMs: Number(process.env.BENCH_MEASURE_MS ?? (quick ? 1500 : 4000)) };
  process.stdout.write(`workspace documents (${os.cpus().length} cpus)\n`);
  const result = await documentRows({ windows, nodeArgs: (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean) });
  const out = path.join(path.dirname(new URL(import.meta.url).pathname), 'results', 'latest-documents.json');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify({ at: new Date().toISOString(), windows, ...result }, null, 2));
  process.stdout.write(`results: ${path.relative(process.cwd(), out)}\n`);
}

const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (process.env[SERVER_MODE] === '1' && isMain) {
  serve().catch((e: unknown) => {
    process.stderr.write(`bench document server failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else if (isMain) {
  main().catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}

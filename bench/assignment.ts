import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Child } from './child.js';
import type { Recorder, Work } from './loadgen.js';
import { closeAll, measure, openConns, type MeasureOptions, type Row } from './measure.js';
import type { RpcConn, RpcReply } from './rpcClient.js';

/**
 * The assignment scenarios of `npm run bench`, on one fresh Troupe node (bench/serverProcess.ts)
 * with 1,000 online agents:
 *
 * - Setup (not measured): 1,000 API keys (role agent) and one admin key; this process opens 1,000
 *   WebSocket connections, one per agent (an agent is online only while it has a connection),
 *   registers each agent over its own connection with varied capabilities and costs and a
 *   concurrency limit that is never reached, and subscribes each to `inbox:<agent>`, as a real
 *   agent waiting for work would. The driver is one admin connection.
 * - `task.autoAssign` per strategy: create a pending task (no autoAssign; requires `bench`, which
 *   all 1,000 agents have), then time the `task.autoAssign` call.
 * - End to end: `task.create {autoAssign: true}` until the chosen agent's inbox notification
 *   (`status: assigned`) arrives on that agent's connection.
 * - `task.createDistributed` with 10 parallel subtasks (each needs one of 4 languages: 250 of the
 *   agents qualify for each): the call, and until all 10 subtasks' inbox notifications arrived.
 * - `task.autoAssign` again with a `task.assignment` CEL rule registered, evaluated once per
 *   candidate (1,000 per decision).
 *
 * Each scenario is a closed loop with one driver and one operation in flight, so latencies are
 * those of an idle server; assigned tasks stay assigned (agents never accept), so agent loads
 * grow during the run (by a few per agent; cost_optimized piles work on the cheapest agents).
 */

export const ASSIGN_AGENTS = 1000;
export const STRATEGIES = ['least_loaded', 'capability_match', 'performance_based', 'cost_optimized', 'round_robin'] as const;
const LANGS = ['python', 'go', 'rust', 'typescript'];
const SUBTASKS = 10;
/** How long an operation may wait for its assignment notifications before it counts as an error. */
const WAIT_MS = 10_000;
/** Offers never expire during the run, so no re-offers add background work. */
const OFFER_SECONDS = 86_400;
export const RULE_EXPRESSION = 'agent.costPerTask < 1000.0';

/** The span names the rows report (besides method names). */
export const E2E = 'create → assigned (inbox)';
export const FANNED_OUT = 'all 10 subtasks assigned (inboxes)';

/** Agent i: everyone has `bench`, one of 4 languages; every 3rd `gpu`; every 7th also `sql`, `web`. */
function capabilitiesOf(i: number): string[] {
  return ['bench', LANGS[i % LANGS.length]!, ...(i % 3 === 0 ? ['gpu'] : []), ...(i % 7 === 0 ? ['sql', 'web'] : [])];
}

/**
 * Assignment notifications seen on the agents' connections: a task id resolves its waiter with the
 * time the notification arrived. Notifications that arrive before anybody waits (the reply to the
 * create and the agent's notification travel on different connections) are kept while `early` is on.
 */
class AssignmentWatch {
  #waiters = new Map<string, (at: number) => void>();
  #early = new Map<string, number>();
  early = false;

  onNotification(msg: { method?: string; params?: Record<string, unknown> }): void {
    if (msg.method !== 'subscription.event') return;
    const e = msg.params?.event as { kind?: string; status?: string; actorId?: string } | undefined;
    if (!e || e.kind !== 'task' || e.status !== 'assigned' || !e.actorId) return;
    const at = performance.now();
    const w = this.#waiters.get(e.actorId);
    if (w) {
      this.#waiters.delete(e.actorId);
      w(at);
    } else if (this.early) this.#early.set(e.actorId, at);
  }

  /** When the task's assignment notification arrived, or undefined after `timeoutMs`. */
  wait(taskId: string, timeoutMs: number): Promise<number | undefined> {
    const at = this.#early.get(taskId);
    if (at !== undefined) {
      this.#early.delete(taskId);
      return Promise.resolve(at);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(taskId);
        resolve(undefined);
      }, timeoutMs);
      this.#waiters.set(taskId, (t) => {
        clearTimeout(timer);
        resolve(t);
      });
    });
  }

  /** Forgets early notifications nobody waited for (tasks already counted as assigned by their reply). */
  reset(): void {
    this.#early.clear();
    this.early = false;
  }
}

const errorOf = (r: RpcReply) => `${r.error!.message}${r.error!.data ? ` ${JSON.stringify(r.error!.data)}` : ''}`;

/** Fails the setup with the server's answer. */
function must(r: RpcReply, what: string): Record<string, unknown> {
  if (r.error) throw new Error(`${what} failed: ${errorOf(r)}`);
  return r.result!;
}

/** Runs `fn` over `items` with at most `n` in flight. */
async function chunked<T>(items: T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += n) await Promise.all(items.slice(i, i + n).map((x, j) => fn(x, i + j)));
}

/** What setting up the 1,000 agents took, and the node's state after it. */
export interface AssignmentSetup {
  agents: number;
  online: number;
  serverStartMs: number;
  connectMs: number;
  registerMs: number;
  subscribeMs: number;
  serverRssBytesAfterSetup: number;
  store: string;
}

/** Runs the assignment scenarios on a fresh node; with `profileDir`, the node runs under `--cpu-prof`. */
export async function assignmentRows(opts: {
  windows: MeasureOptions;
  nodeArgs?: string[];
  profileDir?: string;
  /** Run only the rows whose name contains this (e.g. for profiling one scenario). */
  only?: string;
}): Promise<{ rows: Row[]; setup: AssignmentSetup }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-assign-'));
  const nodeArgs = [
    ...(opts.nodeArgs ?? []),
    ...(opts.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`, '--cpu-prof-interval=250'] : []),
  ];
  let t = performance.now();
  const server = await Child.start('./serverProcess.ts', {
    nodeArgs,
    env: { BENCH_DIR: dir, BENCH_AGENTS: String(ASSIGN_AGENTS), BENCH_ADMIN: '1' },
    timeoutMs: 120_000,
  });
  const serverStartMs = performance.now() - t;
  const url = `ws://127.0.0.1:${server.hello.port as number}/v1`;
  const watch = new AssignmentWatch();
  const conns: RpcConn[] = [];
  try {
    t = performance.now();
    conns.push(...(await openConns(url, ASSIGN_AGENTS, server.hello.keys as string[])));
    const admin = (await openConns(url, 1, [server.hello.adminKey as string]))[0]!;
    conns.push(admin);
    const connectMs = performance.now() - t;

    t = performance.now();
    const agents = conns.slice(0, ASSIGN_AGENTS);
    await chunked(agents, 100, async (c, i) => {
      must(
        await c.call('agent.register', {
          id: `agent-${i}`,
          capabilities: capabilitiesOf(i),
          maxConcurrentTasks: 10_000,
          costPerTask: 0.5 + (i % 20) * 0.5,
        }),
        `agent.register agent-${i}`,
      );
    });
    const registerMs = performance.now() - t;

    t = performance.now();
    await chunked(agents, 100, async (c, i) => {
      c.onNotification = (m) => watch.onNotification(m);
      must(await c.call('subscribe', { topic: `inbox:agent-${i}` }), `subscribe inbox:agent-${i}`);
    });
    const subscribeMs = performance.now() - t;

    const available = must(await admin.call('agent.available', { capabilities: ['bench'], limit: 1000 }), 'agent.available');
    const online = (available.items as unknown[]).length;
    if (online !== ASSIGN_AGENTS) throw new Error(`only ${online} of ${ASSIGN_AGENTS} agents are online and available after setup`);
    const setup: AssignmentSetup = {
      agents: ASSIGN_AGENTS,
      online,
      serverStartMs,
      connectMs,
      registerMs,
      subscribeMs,
      serverRssBytesAfterSetup: (await server.usage()).rssBytes,
      store: server.hello.store as string,
    };
    process.stdout.write(
      `  setup: node with ${ASSIGN_AGENTS} keys ${(serverStartMs / 1000).toFixed(1)} s, ${ASSIGN_AGENTS} connections ${(connectMs / 1000).toFixed(1)} s, ` +
        `register ${(registerMs / 1000).toFixed(1)} s, inbox subscriptions ${(subscribeMs / 1000).toFixed(1)} s; ${online} agents online\n`,
    );

    let seq = 0;
    const rows: Row[] = [];
    const run = async (name: string, work: Work, latencyOf: string) => {
      if (opts.only !== undefined && !name.includes(opts.only)) return;
      const row = await measure(name, server, 1, 1, work, { ...opts.windows, latencyOf });
      const u = await server.usage();
      row.serverRssBytes = u.rssBytes;
      row.liveActors = u.activeActors;
      rows.push(row);
      watch.reset();
    };

    /** A pending task, then the timed `task.autoAssign` call. */
    const autoAssign =
      (strategy: string): Work =>
      async (_w, rec: Recorder) => {
        let t0 = performance.now();
        const c = await admin.call('task.create', { type: 'bench', title: `Assign me ${seq++}`, requiredCapabilities: ['bench'] });
        if (c.error) {
          rec('task.create (pending)', performance.now() - t0, false, errorOf(c));
          return false;
        }
        rec('task.create (pending)', performance.now() - t0, true);
        t0 = performance.now();
        const r = await admin.call('task.autoAssign', { taskId: c.result!.id as string, strategy });
        const dt = performance.now() - t0;
        if (r.error) rec('task.autoAssign', dt, false, errorOf(r));
        else if (r.result!.assigned !== true) rec('task.autoAssign', dt, false, `not assigned: ${String(r.result!.reason)}`);
        else if (r.result!.strategy !== strategy) rec('task.autoAssign', dt, false, `assigned by ${String(r.result!.strategy)}, not ${strategy}`);
        else {
          rec('task.autoAssign', dt, true);
          return true;
        }
        return false;
      };

    for (const s of STRATEGIES) await run(`autoAssign ${s}`, autoAssign(s), 'task.autoAssign');

    // End to end: create with autoAssign until the chosen agent hears of it.
    watch.early = true;
    await run(
      'create autoAssign → inbox',
      async (_w, rec) => {
        const t0 = performance.now();
        const c = await admin.call('task.create', {
          type: 'bench',
          title: `Auto ${seq++}`,
          requiredCapabilities: ['bench'],
          autoAssign: true,
          offerTimeoutSeconds: OFFER_SECONDS,
        });
        const t1 = performance.now();
        if (c.error) {
          rec('task.create', t1 - t0, false, errorOf(c));
          return false;
        }
        rec('task.create', t1 - t0, true);
        const id = c.result!.id as string;
        const at = c.result!.status === 'assigned' ? t1 : await watch.wait(id, WAIT_MS);
        if (at === undefined) {
          rec(E2E, WAIT_MS, false, `task ${id} was not assigned within ${WAIT_MS} ms (no inbox notification)`);
          return false;
        }
        rec(E2E, at - t0, true);
        return true;
      },
      E2E,
    );

    watch.early = true;
    const subtasks = Array.from({ length: SUBTASKS }, (_, k) => ({
      title: `Part ${k + 1}`,
      requiredCapabilities: [LANGS[k % LANGS.length]!],
      offerTimeoutSeconds: OFFER_SECONDS,
    }));
    await run(
      'createDistributed ×10',
      async (_w, rec) => {
        const t0 = performance.now();
        const r = await admin.call('task.createDistributed', {
          type: 'bench',
          title: `Fan out ${seq++}`,
          coordination: 'parallel',
          completion: { mode: 'all' },
          subtasks,
        });
        const t1 = performance.now();
        if (r.error) {
          rec('task.createDistributed', t1 - t0, false, errorOf(r));
          return false;
        }
        rec('task.createDistributed', t1 - t0, true);
        const subs = r.result!.subtasks as { id: string; status: string }[];
        if (subs.length !== SUBTASKS) {
          rec(FANNED_OUT, t1 - t0, false, `the reply lists ${subs.length} subtasks, not ${SUBTASKS}`);
          return false;
        }
        const ats = await Promise.all(subs.map((s) => (s.status === 'assigned' ? t1 : watch.wait(s.id, WAIT_MS))));
        const missing = ats.filter((a) => a === undefined).length;
        if (missing > 0) {
          rec(FANNED_OUT, WAIT_MS, false, `${missing} of ${SUBTASKS} subtasks of ${r.result!.task ? (r.result!.task as { id: string }).id : '?'} were not assigned within ${WAIT_MS} ms`);
          return false;
        }
        rec(FANNED_OUT, Math.max(...(ats as number[])) - t0, true);
        return true;
      },
      'task.createDistributed',
    );

    // Last, because the rule stays: every later decision in the tenant would evaluate it.
    must(
      await admin.call('rule.register', {
        name: 'cost-cap',
        category: 'task.assignment',
        expression: RULE_EXPRESSION,
        message: 'The agent is too expensive.',
      }),
      'rule.register',
    );
    await run('autoAssign ll + CEL rule', autoAssign('least_loaded'), 'task.autoAssign');
    return { rows, setup };
  } finally {
    await closeAll(conns);
    await server.stop(30_000);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

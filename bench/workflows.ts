import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Child } from './child.js';
import type { Recorder, Work } from './loadgen.js';
import { closeAll, measure, openConns, type MeasureOptions, type Row } from './measure.js';
import type { RpcConn, RpcReply } from './rpcClient.js';

/**
 * The workflow scenarios of `npm run bench`. For each level of executions in flight (1, 10, 50),
 * a fresh Troupe node (bench/serverProcess.ts, fresh database) with:
 *
 * - WF_AGENTS "instant" agents, each on its own connection, registered with capability `wf` and
 *   a concurrency limit nobody reaches, subscribed to `inbox:<agent>`: on every inbox notification
 *   that a task was offered to them (`status: assigned`) they call task.accept, task.start and
 *   task.complete (echoing the task's `n` parameter as the result) at once.
 * - One admin connection that drives: a closed loop with N executions in flight of a 3-step
 *   sequential workflow (a → b → c, each step a task auto-assigned among agents with `wf`; b and c
 *   take their input from the step before through `${steps.<id>.output.n}`). Each unit:
 *   `workflow.execute`, then `subscribe execution:<id>` from position 0 (so no event can be missed),
 *   until the execution's `status: completed` notification; then unsubscribe (not awaited).
 *
 * Spans per execution, from just before the `workflow.execute` call:
 * - FIRST_OFFER: until the inbox notification that the first step's task (`<execId>.a.1`) was
 *   offered to an agent arrived on that agent's connection;
 * - EXEC_DONE: until the execution's completed notification arrived on the driver's connection.
 *
 * Per execution the clients make 12 calls: 3 by the driver (execute, subscribe, unsubscribe), 3 per
 * step by the agents.
 */

export const WF_AGENTS = 4;
export const WF_LEVELS = [1, 10, 50] as const;
export const FIRST_OFFER = 'execute → first step offered (inbox)';
export const EXEC_DONE = 'execute → completed (execution topic)';
export const CALLS_PER_EXECUTION = 12;
const FIRST_TASK_SUFFIX = '.a.1';
/** How long an execution may take before it counts as an error. */
const WAIT_MS = 10_000;
const FINISHED = new Set(['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out']);

export const BENCH_WORKFLOW = {
  name: 'bench-3-steps',
  type: 'sequential',
  steps: [
    { id: 'a', action: 'wf.a', requiredCapabilities: ['wf'], input: { n: '${input.n}' } },
    { id: 'b', action: 'wf.b', requiredCapabilities: ['wf'], input: { n: '${steps.a.output.n}' } },
    { id: 'c', action: 'wf.c', requiredCapabilities: ['wf'], input: { n: '${steps.b.output.n}' } },
  ],
};

type Notification = { method?: string; params?: Record<string, unknown> };
type EventLike = { kind?: string; status?: string; actorId?: string };

/**
 * Arrival times of notifications, by key: a waiter is resolved at once if its key already
 * arrived (notifications may come before the reply that names what to wait for).
 */
class Arrivals<T> {
  #waiters = new Map<string, (v: { at: number; value: T }) => void>();
  #early = new Map<string, { at: number; value: T }>();

  arrived(key: string, value: T): void {
    if (this.#early.has(key)) return;
    const v = { at: performance.now(), value };
    const w = this.#waiters.get(key);
    if (w) {
      this.#waiters.delete(key);
      w(v);
    } else this.#early.set(key, v);
  }

  wait(key: string, timeoutMs: number): Promise<{ at: number; value: T } | undefined> {
    const hit = this.#early.get(key);
    if (hit) {
      this.#early.delete(key);
      return Promise.resolve(hit);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(key);
        resolve(undefined);
      }, timeoutMs);
      this.#waiters.set(key, (v) => {
        clearTimeout(timer);
        resolve(v);
      });
    });
  }
}

const eventOf = (m: Notification): EventLike | undefined =>
  m.method === 'subscription.event' ? (m.params?.event as EventLike | undefined) : undefined;

const errorOf = (r: RpcReply) => `${r.error!.message}${r.error!.data ? ` ${JSON.stringify(r.error!.data)}` : ''}`;

function must(r: RpcReply, what: string): Record<string, unknown> {
  if (r.error) throw new Error(`${what} failed: ${errorOf(r)}`);
  return r.result!;
}

/** One workflow row: N executions in flight on a fresh node. */
async function workflowRow(inFlight: number, windows: MeasureOptions, nodeArgs: string[]): Promise<{ row: Row; store: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-bench-wf-'));
  const server = await Child.start('./serverProcess.ts', {
    nodeArgs,
    env: { BENCH_DIR: dir, BENCH_AGENTS: String(WF_AGENTS), BENCH_ADMIN: '1' },
  });
  const url = `ws://127.0.0.1:${server.hello.port as number}/v1`;
  const conns: RpcConn[] = [];
  const offers = new Arrivals<null>();
  const finished = new Arrivals<string>();
  const agentErrors = { count: 0, first: '' };
  try {
    conns.push(...(await openConns(url, WF_AGENTS, server.hello.keys as string[])));
    const driver = (await openConns(url, 1, [server.hello.adminKey as string]))[0]!;
    conns.push(driver);
    const agents = conns.slice(0, WF_AGENTS);

    /** An instant agent: accept, start and complete every task offered to it. */
    const handled = new Set<string>();
    const workTask = async (c: RpcConn, taskId: string) => {
      const accepted = await c.call('task.accept', { taskId });
      if (accepted.error) throw new Error(`task.accept ${taskId}: ${errorOf(accepted)}`);
      const n = (accepted.result!.parameters as { n?: unknown } | undefined)?.n ?? null;
      const started = await c.call('task.start', { taskId });
      if (started.error) throw new Error(`task.start ${taskId}: ${errorOf(started)}`);
      const done = await c.call('task.complete', { taskId, result: { n } });
      if (done.error) throw new Error(`task.complete ${taskId}: ${errorOf(done)}`);
    };
    await Promise.all(
      agents.map(async (c, i) => {
        must(await c.call('agent.register', { id: `agent-${i}`, capabilities: ['wf'], maxConcurrentTasks: 10_000 }), `agent.register agent-${i}`);
        c.onNotification = (m) => {
          const e = eventOf(m);
          if (!e || e.kind !== 'task' || e.status !== 'assigned' || !e.actorId || handled.has(e.actorId)) return;
          const taskId = e.actorId;
          handled.add(taskId);
          if (taskId.endsWith(FIRST_TASK_SUFFIX)) offers.arrived(taskId, null);
          workTask(c, taskId).then(
            () => handled.delete(taskId),
            (err: unknown) => {
              handled.delete(taskId);
              agentErrors.count++;
              agentErrors.first ||= (err as Error).message;
            },
          );
        };
        must(await c.call('subscribe', { topic: `inbox:agent-${i}` }), `subscribe inbox:agent-${i}`);
      }),
    );
    driver.onNotification = (m) => {
      const e = eventOf(m);
      if (e?.kind === 'execution' && e.actorId && e.status && FINISHED.has(e.status)) finished.arrived(e.actorId, e.status);
    };
    const workflowId = must(await driver.call('workflow.create', BENCH_WORKFLOW), 'workflow.create').id as string;

    let seq = 0;
    const work: Work = async (_w, rec: Recorder) => {
      const t0 = performance.now();
      const x = await driver.call('workflow.execute', { workflowId, input: { n: seq++ } });
      const t1 = performance.now();
      if (x.error) {
        rec('workflow.execute', t1 - t0, false, errorOf(x));
        return false;
      }
      rec('workflow.execute', t1 - t0, true);
      const id = x.result!.id as string;
      const offered = offers.wait(`${id}${FIRST_TASK_SUFFIX}`, WAIT_MS);
      const ended = finished.wait(id, WAIT_MS);
      const sub = await driver.call('subscribe', { topic: `execution:${id}`, fromPosition: 0 });
      if (sub.error) {
        rec(EXEC_DONE, performance.now() - t0, false, `subscribe: ${errorOf(sub)}`);
        return false;
      }
      const [o, d] = await Promise.all([offered, ended]);
      void driver.call('unsubscribe', { subscriptionId: sub.result!.subscriptionId as string });
      if (o) rec(FIRST_OFFER, o.at - t0, true);
      else rec(FIRST_OFFER, WAIT_MS, false, `no inbox notification for ${id}${FIRST_TASK_SUFFIX} within ${WAIT_MS} ms`);
      if (!d) {
        rec(EXEC_DONE, WAIT_MS, false, `execution ${id} did not finish within ${WAIT_MS} ms${agentErrors.first ? ` (agent error: ${agentErrors.first})` : ''}`);
        return false;
      }
      if (d.value !== 'completed') {
        rec(EXEC_DONE, d.at - t0, false, `execution ${id} ended ${d.value}`);
        return false;
      }
      rec(EXEC_DONE, d.at - t0, true);
      return o !== undefined;
    };
    const row = await measure(`workflow ×${inFlight} in flight`, server, 1, inFlight, work, { ...windows, latencyOf: EXEC_DONE });
    const u = await server.usage();
    row.serverRssBytes = u.rssBytes;
    row.liveActors = u.activeActors;
    if (agentErrors.count > 0) {
      row.errors += agentErrors.count;
      row.firstError ??= `agent: ${agentErrors.first}`;
    }
    return { row, store: server.hello.store as string };
  } finally {
    await closeAll(conns);
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The workflow rows, one fresh node per level of executions in flight. */
export async function workflowRows(opts: { windows: MeasureOptions; nodeArgs?: string[] }): Promise<{ rows: Row[]; store: string }> {
  const rows: Row[] = [];
  let store = '';
  for (const n of WF_LEVELS) {
    const r = await workflowRow(n, opts.windows, opts.nodeArgs ?? []);
    rows.push(r.row);
    store = r.store;
  }
  return { rows, store };
}

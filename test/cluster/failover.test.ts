import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { isProtocolError } from '../../protocol/errors.js';
import type { ActorEvent, Task } from '../../protocol/model.js';
import type { Execution } from '../../protocol/workflows.js';
import { ClusterClient, OutcomeUnknown, startProcessCluster, type ProcessCluster } from '../helpers/clusterProcess.js';
import { stepTask } from '../helpers/executions.js';
import { waitFor } from '../helpers/waitFor.js';

const LEASE_MS = 2_000;
const HEARTBEAT_MS = 200;
/** How long past the lease a takeover may take: missed heartbeats, retry hints, reconnects. */
const FAILOVER_MARGIN_MS = 2_500;
const STEPS = ['s1', 's2', 's3', 's4'];
/** Length of the text in (b) that makes an edit against old heads a few hundred ms of work. */
const LONG_TEXT_CHARS = 100_000;

/** An acknowledged change of one actor, as the call that made it answered. */
interface Ack {
  stream: string;
  version: number;
  type: string;
  /** What identifies the change in the stored event (a progress message, a title). */
  mark?: string;
  at: number;
}

interface Ledger {
  acks: Ack[];
  /** Task ids of every task a loop created, with the progress messages whose outcome is unknown. */
  tasks: Map<string, { unknown: Set<string> }>;
  /** Per workspace: the marks whose increment was acknowledged, and those whose outcome is unknown. */
  marks: Map<string, { acked: Set<string>; unknown: Set<string> }>;
  executions: string[];
}

interface Ctx {
  c: ProcessCluster;
  clients: ClusterClient[];
  extra: TroupeClient[];
  ledger: Ledger;
  /** Tasks and workspaces written in (b) and (c), checked again after the restart in (d). */
  moreTasks: string[];
  moreWorkspaces: string[];
}

const test = suite<Ctx>('cluster failover: nodes killed, paused and restarted lose nothing acknowledged and write nothing stale');

test.before(async (ctx) => {
  ctx.clients = [];
  ctx.extra = [];
  ctx.moreTasks = [];
  ctx.moreWorkspaces = [];
  ctx.ledger = { acks: [], tasks: new Map(), marks: new Map(), executions: [] };
  ctx.c = await startProcessCluster({ nodes: 3, locks: 3, leaseMs: LEASE_MS, heartbeatMs: HEARTBEAT_MS });
});

test.after(async (ctx) => {
  await Promise.all([...ctx.clients, ...ctx.extra].map((c) => c.close().catch(() => undefined)));
  await ctx.c?.close();
});

const taskStream = (id: string) => `default/task/${id}`;
const stateStream = (workspaceId: string) => `default/document/${workspaceId}:state`;
const executionStream = (id: string) => `default/execution/${id}`;

/** Calls that may run twice (reads, creates with an idempotency key) are sent again when their outcome is unknown. */
async function resend<T>(fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return await fn();
    } catch (e) {
      if (!(e instanceof OutcomeUnknown) || Date.now() > deadline) throw e;
    }
  }
}

/** Appends the nodes' last log lines to a failure (without the expected NOT_FOUND refusals of polling). */
async function withLogs(c: ProcessCluster, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const tail = (i: number) =>
      c
        .logs(i)
        .split('\n')
        .filter((l) => l !== '' && !l.includes('"reason":"NOT_FOUND"'))
        .slice(-8)
        .map((l) => l.slice(0, 600))
        .join('\n');
    (e as Error).message += `\nlast node output:\n${c.ids.map((id, i) => `----- ${id}\n${tail(i)}`).join('\n')}`;
    throw e;
  }
}

/**
 * Moves a task one step (accept, start, complete) as its agent. When the outcome is unknown the
 * task is read: if the step shows, it was made (but not acknowledged); otherwise it is sent again.
 */
async function transition(
  ledger: Ledger,
  agent: ClusterClient,
  method: 'task.accept' | 'task.start' | 'task.complete',
  taskId: string,
  done: Task['status'][],
): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const t = method === 'task.complete' ? await agent.call(method, { taskId, result: { by: 'failover' } }) : await agent.call(method, { taskId });
      ledger.acks.push({ stream: taskStream(taskId), version: t.version, type: method, at: Date.now() });
      return;
    } catch (e) {
      if (!(e instanceof OutcomeUnknown) || Date.now() > deadline) throw e;
      const now = await resend(() => agent.call('task.get', { taskId }));
      if (done.includes(now.status)) return;
    }
  }
}

/** A task assigned to the loop's agent, moved through its whole lifecycle with three progress reports. */
async function oneTask(ledger: Ledger, lead: ClusterClient, agent: ClusterClient, agentId: string, name: string): Promise<void> {
  // The idempotency key makes a create sent again after an unknown outcome the same create.
  const t = await resend(() => lead.call('task.create', { type: 'failover', title: name, assignTo: agentId, idempotencyKey: name }));
  ledger.tasks.set(t.id, { unknown: new Set() });
  ledger.acks.push({ stream: taskStream(t.id), version: t.version, type: 'task.create', at: Date.now() });
  await transition(ledger, agent, 'task.accept', t.id, ['accepted', 'in_progress', 'completed']);
  await transition(ledger, agent, 'task.start', t.id, ['in_progress', 'completed']);
  for (let p = 1; p <= 3; p++) {
    const message = `${name}/p${p}`;
    try {
      const r = await agent.call('task.progress', { taskId: t.id, percent: p * 25, message });
      ledger.acks.push({ stream: taskStream(t.id), version: r.version, type: 'task.progress', mark: message, at: Date.now() });
    } catch (e) {
      if (!(e instanceof OutcomeUnknown)) throw e;
      ledger.tasks.get(t.id)!.unknown.add(message);
    }
  }
  await transition(ledger, agent, 'task.complete', t.id, ['completed']);
}

/** One increment of the workspace's counter, marked so that each one can be found again. */
async function increment(ledger: Ledger, lead: ClusterClient, workspaceId: string, mark: string): Promise<void> {
  const m = ledger.marks.get(workspaceId)!;
  try {
    const r = await lead.call('workspace.updateState', {
      workspaceId,
      ops: [
        { op: 'increment', path: '/n' },
        { op: 'set', path: `/marks/${mark}`, value: true },
      ],
    });
    m.acked.add(mark);
    ledger.acks.push({ stream: stateStream(workspaceId), version: r.version, type: 'document.change', mark, at: Date.now() });
  } catch (e) {
    if (!(e instanceof OutcomeUnknown)) throw e;
    m.unknown.add(mark);
  }
}

/** Runs the steps of an execution as the agent they are assigned to: waits for each to be offered, then does it. */
async function runSteps(ledger: Ledger, lead: ClusterClient, agent: ClusterClient, executionId: string, steps: string[]): Promise<void> {
  for (const s of steps) {
    const taskId = stepTask(executionId, s);
    await waitFor(
      async () => {
        try {
          return (await resend(() => lead.call('task.get', { taskId }))).status !== 'pending';
        } catch (e) {
          if (isProtocolError(e, 'NOT_FOUND')) return false;
          throw e;
        }
      },
      { timeoutMs: 20_000, intervalMs: 20 },
    );
    ledger.tasks.set(taskId, { unknown: new Set() });
    await transition(ledger, agent, 'task.accept', taskId, ['accepted', 'in_progress', 'completed']);
    await transition(ledger, agent, 'task.start', taskId, ['in_progress', 'completed']);
    await transition(ledger, agent, 'task.complete', taskId, ['completed']);
  }
}

/**
 * Sends to an actor from another node until the actor answers, and resolves with the time it did:
 * tasks get an update (a refusal from the task itself, such as a finished task refusing it, is an
 * answer too); documents are read, which loads them from their actor on a node that never had them.
 */
async function probe(client: ClusterClient, stream: string): Promise<number> {
  const [, kind, id] = stream.split('/') as [string, string, string];
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if (kind === 'task') await client.call('task.update', { taskId: id, description: 'reached after the kill' });
      else await client.call('workspace.getState', { workspaceId: id.split(':')[0]! });
      return Date.now();
    } catch (e) {
      if (e instanceof OutcomeUnknown && Date.now() < deadline) continue;
      if (isProtocolError(e) && !isProtocolError(e, 'UNAVAILABLE')) return Date.now();
      throw e;
    }
  }
}

/** How a call ended, kept instead of thrown so several can be awaited later. */
type Outcome = { ok: true; version: number } | { ok: false; error: Error };

function settle(p: Promise<{ version: number }>): Promise<Outcome> {
  return p.then(
    (r) => ({ ok: true as const, version: r.version }),
    (error: Error) => ({ ok: false as const, error }),
  );
}

/** Every stored event of an actor, oldest first. */
async function eventsOf(c: ClusterClient, kind: string, actorId: string): Promise<ActorEvent[]> {
  const out: ActorEvent[] = [];
  for (;;) {
    const page = await resend(() => c.call('events.read', { kind, actorId, afterVersion: out.length, limit: 1000 }));
    out.push(...page.items);
    if (page.items.length === 0 || out.length >= page.headVersion) return out;
  }
}

/** Asserts that an actor's versions run 1, 2, 3, ... with no gap and no version twice. */
function assertContiguous(events: ActorEvent[], what: string): void {
  assert.equal(
    events.map((e) => e.version),
    events.map((_, i) => i + 1),
    `${what}: versions are 1..${events.length} without gaps or duplicates`,
  );
}

/** What the load of (a) has done so far, per node its clients started on. */
interface Progress {
  tasks: number[];
  tasksAfterKill: number[];
  increments: number[];
  incrementsAfterKill: number[];
  /** Executions whose first half of the steps is done (the rest waits for the kill). */
  halfway: boolean[];
  executions: boolean[];
}

/**
 * The load of (a): on each node a loop of tasks through their lifecycle, a loop of workspace
 * increments, and an execution whose second half of steps runs after the kill.
 */
function startLoad(ledger: Ledger, leads: ClusterClient[], agents: ClusterClient[], workspaces: string[]) {
  let stopped = false;
  let killedAt = Number.POSITIVE_INFINITY;
  let markKilled!: () => void;
  const killed = new Promise<void>((r) => (markKilled = r));
  const done: Progress = { tasks: [0, 0, 0], tasksAfterKill: [0, 0, 0], increments: [0, 0, 0], incrementsAfterKill: [0, 0, 0], halfway: [false, false, false], executions: [false, false, false] };
  const loops = [0, 1, 2].flatMap((k) => [
    (async () => {
      for (let seq = 0; !stopped; seq++) {
        await oneTask(ledger, leads[k]!, agents[k]!, `w${k + 1}`, `t${k + 1}-${seq}`);
        done.tasks[k]!++;
        if (Date.now() > killedAt) done.tasksAfterKill[k]!++;
      }
    })(),
    (async () => {
      for (let seq = 0; !stopped; seq++) {
        await increment(ledger, leads[k]!, workspaces[k]!, `m${k + 1}-${seq}`);
        done.increments[k]!++;
        if (Date.now() > killedAt) done.incrementsAfterKill[k]!++;
      }
    })(),
    (async () => {
      const x = ledger.executions[k]!;
      await runSteps(ledger, leads[k]!, agents[k]!, x, STEPS.slice(0, 2));
      done.halfway[k] = true;
      await killed;
      if (stopped) return;
      await runSteps(ledger, leads[k]!, agents[k]!, x, STEPS.slice(2));
      done.executions[k] = true;
    })(),
  ]);
  const failed = Promise.all(loops).then(
    () => null,
    (e: unknown) => e as Error,
  );
  return {
    done,
    get killedAt() {
      return killedAt;
    },
    killed() {
      killedAt = Date.now();
      markKilled();
    },
    /** Waits until `cond` holds; rejects at once when a loop failed. */
    async until(cond: (d: Progress) => boolean, what: string): Promise<void> {
      await waitFor(
        async () => {
          const e = await Promise.race([failed, Promise.resolve(undefined)]);
          if (e) throw e;
          return cond(done);
        },
        { timeoutMs: 30_000, intervalMs: 20 },
      ).catch((e: Error) => {
        throw new Error(`${what}: ${e.message} (progress ${JSON.stringify(done)})`);
      });
    },
    /** Ends the loops after their current round; resolves with the first failure, if any. */
    async stop(): Promise<Error | null> {
      stopped = true;
      markKilled();
      return failed;
    },
  };
}

test('(a) SIGKILL of the node with the most actors: its actors come back elsewhere within the lease and every acknowledged change is there', async (ctx) => {
  const { c, ledger } = ctx;
  await withLogs(c, async () => {
    const agentKeys = await Promise.all([0, 1, 2].map((k) => c.key(`w${k + 1}`, ['agent'])));
    const leads = [0, 1, 2].map((k) => new ClusterClient(c, c.adminKey, k));
    // Agents register on every connection, as agents do after a reconnect.
    const agents = [0, 1, 2].map(
      (k) =>
        new ClusterClient(c, agentKeys[k]!, k, async (cl) => {
          const a = await cl.call('agent.register', { capabilities: ['failover'], maxConcurrentTasks: 50 });
          ledger.acks.push({ stream: `default/agent/w${k + 1}`, version: a.version, type: 'agent.register', at: Date.now() });
        }),
    );
    ctx.clients.push(...leads, ...agents);
    const workspaces: string[] = [];
    for (const k of [0, 1, 2]) {
      await agents[k]!.client();
      const ws = await leads[k]!.call('workspace.create', { name: `failover ${k + 1}`, visibility: 'team' });
      await leads[k]!.call('workspace.updateState', { workspaceId: ws.id, ops: [{ op: 'set', path: '/marks', value: {} }] });
      ledger.marks.set(ws.id, { acked: new Set(), unknown: new Set() });
      workspaces.push(ws.id);
      const wf = await leads[k]!.call('workflow.create', {
        name: `pipeline ${k + 1}`,
        type: 'sequential',
        steps: STEPS.map((id) => ({ id, action: 'work', agent: `w${k + 1}` })),
      });
      ledger.executions.push((await leads[k]!.call('workflow.execute', { workflowId: wf.id, input: {} })).id);
    }

    const load = startLoad(ledger, leads, agents, workspaces);
    let victim = -1;
    let victimId = '';
    let actorsBefore = 0;
    let held: string[] = [];
    let probes: Promise<readonly [string, number]>[] = [];
    try {
      await load.until((d) => d.tasks.every((n) => n >= 3) && d.increments.every((n) => n >= 10) && d.halfway.every(Boolean), 'the load before the kill');
      // The victim: the node holding the most actors, as the cluster reports them; and which of
      // the actors the load uses it owns, as the shared Redis notes them.
      const report = await c.report(0);
      const total = (a: Record<string, number>) => Object.values(a).reduce((sum, n) => sum + n, 0);
      victimId = [...report.nodes].sort((a, b) => total(b.actors) - total(a.actors))[0]!.id;
      victim = c.ids.indexOf(victimId);
      actorsBefore = total(report.nodes.find((x) => x.id === victimId)!.actors);
      const streams = [...new Set([...ledger.acks.map((a) => a.stream), ...ledger.executions.map(executionStream), ...[1, 2, 3].map((k) => `default/agent/w${k}`)])];
      const owners = await Promise.all(streams.map((s) => c.owner(s)));
      held = streams.filter((_, i) => owners[i] === victimId);
      await c.kill(victim);
      load.killed();
      // Probes measure when each task and document the victim held answers again, from the
      // survivor its clients do not move to: there no call in flight to the victim holds up the
      // actor's queue, and the victim's documents were never loaded.
      const survivors = c.live();
      const movedTo = survivors[(victim + 1) % survivors.length]!;
      const prober = new ClusterClient(c, c.adminKey, survivors.find((i) => i !== movedTo)!);
      ctx.clients.push(prober);
      probes = held.filter((s) => /^default\/(task|document)\//.test(s)).map(async (s) => [s, (await probe(prober, s)) - load.killedAt] as const);
      // Awaited below; a failure before that must not surface as an unhandled rejection.
      for (const p of probes) p.catch(() => undefined);
      await load.until(
        (d) => d.tasksAfterKill.every((n) => n >= 2) && d.incrementsAfterKill.every((n) => n >= 5) && d.executions.every(Boolean),
        'the load after the kill',
      );
    } finally {
      // Also on failure: the loops end instead of running on against a cluster being torn down.
      const err = await load.stop();
      if (err) throw err;
    }

    // Failover: from the kill to the first answer of each actor the victim held. The load's own
    // calls may have waited longer (a call in flight to the victim waits for the forwarding timeout).
    const killedAt = load.killedAt;
    const back = new Map(await Promise.all(probes));
    const failoverMs = Math.max(...back.values());
    const slowest = [...back].sort((x, y) => y[1] - x[1])[0]!;
    const stalls = new Map<string, number>();
    for (const a of ledger.acks) if (a.at > killedAt && held.includes(a.stream) && !stalls.has(a.stream)) stalls.set(a.stream, a.at - killedAt);
    const stallMs = Math.max(0, ...stalls.values());
    const moved = new Set([...back.keys(), ...stalls.keys()]).size;
    assert.ok(back.has(stateStream(workspaces[victim]!)), `the workspace state the victim held was reached after the kill (held: ${held.join(', ')})`);
    assert.ok(
      failoverMs <= c.leaseMs + FAILOVER_MARGIN_MS,
      `actors came back within ${c.leaseMs} + ${FAILOVER_MARGIN_MS} ms; ${slowest[0]} took ${failoverMs} ms (all: ${JSON.stringify([...back])})`,
    );
    assert.ok(stalls.has(stateStream(workspaces[victim]!)), 'the load wrote the workspace state the victim held after the kill');
    await c.settled();
    const survivors = c.live().map((i) => c.ids[i]!);
    for (const s of back.keys()) {
      const now = await c.owner(s);
      // Finished tasks and executions leave memory (no owner); everything else lives on a survivor.
      if (now !== null || s.includes('/document/')) assert.ok(now !== null && survivors.includes(now), `${s} is owned by a survivor, not ${now}`);
    }

    // Every acknowledged change is stored, at the version it was acknowledged with.
    const reader = leads[(victim + 1) % 3]!;
    let checked = 0;
    const stored = new Map<string, ActorEvent[]>();
    for (const [taskId, { unknown }] of ledger.tasks) {
      const events = await eventsOf(reader, 'task', taskId);
      stored.set(taskStream(taskId), events);
      assertContiguous(events, `task ${taskId}`);
      assert.is(events.at(-1)!.status, 'completed', `task ${taskId} was completed`);
      const messages = events.filter((e) => e.type === 'task.progress').map((e) => String(e.data.message));
      assert.is(new Set(messages).size, messages.length, `task ${taskId}: no progress report stored twice`);
      for (const m of messages) assert.ok(ledger.acks.some((a) => a.mark === m) || unknown.has(m), `task ${taskId}: progress ${m} was sent`);
    }
    for (const a of ledger.acks) {
      if (!a.stream.startsWith('default/task/')) continue;
      const e = stored.get(a.stream)?.[a.version - 1];
      assert.is(e?.type, a.type, `${a.stream} v${a.version} is the acknowledged ${a.type}`);
      if (a.mark) assert.is(e!.data.message, a.mark);
      checked++;
    }
    for (const [workspaceId, m] of ledger.marks) {
      const { state } = await resend(() => reader.call('workspace.getState', { workspaceId }));
      const marks = Object.keys(state.marks as Record<string, boolean>);
      assert.is(state.n, marks.length, `workspace ${workspaceId}: one increment per stored mark`);
      for (const mark of m.acked) assert.ok(marks.includes(mark), `workspace ${workspaceId}: acknowledged increment ${mark} is stored`);
      for (const mark of marks) assert.ok(m.acked.has(mark) || m.unknown.has(mark), `workspace ${workspaceId}: stored mark ${mark} was sent`);
      checked += m.acked.size;
    }
    for (const x of ledger.executions) {
      const e = await resend(() => reader.call('execution.get', { executionId: x }));
      assert.is(e.status, 'completed', `execution ${x} completed`);
      const starts = e.trace.filter((t) => t.event === 'step.started').map((t) => `${t.stepId}.${t.attempt}`);
      assert.equal(starts, STEPS.map((s) => `${s}.1`), `execution ${x}: each step started once, in order`);
      checked++;
    }
    const retried = ctx.clients.reduce((n, cl) => n + cl.retried, 0);
    const reconnects = ctx.clients.reduce((n, cl) => n + cl.reconnects, 0);
    const unknown = [...ledger.tasks.values()].reduce((n, t) => n + t.unknown.size, 0) + [...ledger.marks.values()].reduce((n, m) => n + m.unknown.size, 0);
    console.log(
      `cluster (a): killed ${victimId} holding ${actorsBefore} actors; ${moved} of the ${held.length} the load used moved, failover ${(failoverMs / 1000).toFixed(1)} s ` +
        `(lease ${c.leaseMs / 1000} s, slowest a ${slowest[0].split('/')[1]}), longest stall of the load ${(stallMs / 1000).toFixed(1)} s; ` +
        `${checked} acknowledged changes checked, ${unknown} of unknown outcome; ${retried} retries, ${reconnects} reconnects`,
    );
  });
});

test('(b) a node paused past its lease: another takes over, the paused node\'s writes are fenced off or forwarded, and it gives the actors up', async (ctx) => {
  const { c } = ctx;
  await withLogs(c, async () => {
    // Two nodes the kill in (a) left running.
    const [S, O] = c.live() as [number, number];
    const onS = await c.connect(S, c.adminKey);
    ctx.extra.push(onS);
    const onO = new ClusterClient(c, c.adminKey, O);
    ctx.clients.push(onO);

    // Actors the node to be paused owns: two tasks and a workspace state.
    const tasks = [await onS.call('task.create', { type: 'paused', title: 'b-1' }), await onS.call('task.create', { type: 'paused', title: 'b-2' })].map((t) => t.id);
    for (const id of tasks) await onS.call('task.update', { taskId: id, title: 's-1' });
    const ws = await onS.call('workspace.create', { name: 'paused', visibility: 'team' });
    // A long text makes each edit against its first heads cost the node a few hundred ms of
    // Automerge work (it rebuilds the document as it was) while the change it stores stays small.
    const base = (await onS.call('workspace.updateState', { workspaceId: ws.id, ops: [{ op: 'set', path: '/text', value: 'y'.repeat(LONG_TEXT_CHARS) }] })).heads;
    await onS.call('workspace.updateState', { workspaceId: ws.id, ops: [{ op: 'set', path: '/s', value: 1 }] });
    ctx.moreTasks.push(...tasks);
    ctx.moreWorkspaces.push(ws.id);
    const doc = `${ws.id}:state`;
    const streams = [...tasks.map(taskStream), stateStream(ws.id)];
    for (const stream of streams) assert.is(await c.owner(stream), c.ids[S], `the node to be paused owns ${stream}`);
    const before = (await c.report(S)).nodes.find((n) => n.self)!.actors;
    const lostBefore = (await c.report(S)).counters.leasesLost;

    // Slow edits in a row keep the node computing, so the pause lands inside one: after it found
    // the actor in memory and before its commit, as a long GC pause would.
    const slow = [0, 1, 2, 3].map((i) => settle(onS.call('workspace.updateState', { workspaceId: ws.id, expectedHeads: base, ops: [{ op: 'set', path: `/late${i}`, value: i }] })));
    const first = await slow[0]!;
    const stops = await c.pause(S);
    const stoppedAt = Date.now();
    let tookOverMs = 0;
    let staleTasks: Promise<Outcome>[] = [];
    /** Versions the new owner's writes were acknowledged with, per task id or document. */
    const ownerWrites = new Map<string, number[]>([...tasks, doc].map((k) => [k, []]));
    try {
      assert.ok(first.ok, 'the first slow edit was acknowledged before the pause');
      // Sent to the stopped node: the kernel keeps them until it runs again.
      staleTasks = tasks.map((id) => settle(onS.call('task.update', { taskId: id, title: 'stale' })));
      // The other node sees it gone (and heartbeats once more, so its own view is current), then
      // writes as soon as the lease has run out.
      const goneAt = await waitFor(async () => (!(await c.report(O)).nodes.some((n) => n.id === c.ids[S]) ? Date.now() : null), { timeoutMs: 5_000, intervalMs: 20 });
      await waitFor(async () => (await c.report(O)).nodes.find((n) => n.self)!.heartbeatAt > goneAt + HEARTBEAT_MS, { timeoutMs: 5_000, intervalMs: 20 });
      for (const id of tasks) {
        for (const title of ['o-1', 'o-2', 'o-3']) ownerWrites.get(id)!.push((await onO.call('task.update', { taskId: id, title })).version);
      }
      for (const k of [1, 2, 3]) {
        ownerWrites.get(doc)!.push((await onO.call('workspace.updateState', { workspaceId: ws.id, ops: [{ op: 'set', path: `/o${k}`, value: k }] })).version);
      }
      for (const stream of streams) assert.is(await c.owner(stream), c.ids[O], `the other node took ${stream} over`);
      tookOverMs = Date.now() - stoppedAt;
      // Kept stopped past its lease: a wait for time itself, and the writes above already succeeded elsewhere.
      await waitFor(() => Date.now() >= stoppedAt + c.leaseMs + 500, { timeoutMs: c.leaseMs + 5_000 });
    } finally {
      c.resume(S);
    }

    // Until the writes in flight are answered and the woken node has given its leases up, the
    // owner notes are watched: they must keep naming the new owner.
    const inFlight = [...slow.slice(1).map((p, i) => ({ p, stream: doc, label: `/late${i + 1}` })), ...staleTasks.map((p, i) => ({ p, stream: tasks[i]!, label: 'stale' }))];
    const answered = Promise.all(inFlight.map(async (w) => ({ ...w, o: await w.p })));
    let outcomes: Awaited<typeof answered> | null = null;
    void answered.then((o) => (outcomes = o));
    const notedStale = new Set<string>();
    await waitFor(
      async () => {
        for (const stream of streams) if ((await c.owner(stream)) === c.ids[S]) notedStale.add(stream);
        return outcomes !== null && (await c.report(S)).counters.leasesLost >= lostBefore + streams.length;
      },
      { timeoutMs: 20_000, intervalMs: 10 },
    );

    // Each write sent to the paused node was stored before the takeover (it ran before the pause
    // took effect), failed with UNAVAILABLE, or was forwarded and stored after the new owner's writes.
    const count = { before: 0, refused: 0, unknown: 0, forwarded: 0 };
    const problems: string[] = [];
    for (const { stream, label, o } of outcomes!) {
      const versions = ownerWrites.get(stream)!;
      const [firstO, lastO] = [Math.min(...versions), Math.max(...versions)];
      if (o.ok && o.version < firstO) count.before++;
      else if (o.ok && o.version > lastO) count.forwarded++;
      else if (o.ok) problems.push(`${stream} ${label}: the paused node's write is at v${o.version}, among the new owner's v${firstO}..v${lastO}`);
      else if (!isProtocolError(o.error, 'UNAVAILABLE')) problems.push(`${stream} ${label}: the paused node's write failed with ${o.error.message}, not UNAVAILABLE`);
      else if (o.error.data.outcome === 'unknown') count.unknown++;
      else count.refused++;
    }
    /** What a stream must hold: the writes before, the paused node's early ones, the new owner's, the forwarded ones. */
    const expected = (stream: string, earlier: string[], owner: string[]) => {
      const [firstO, lastO] = [Math.min(...ownerWrites.get(stream)!), Math.max(...ownerWrites.get(stream)!)];
      const stored = outcomes!.flatMap((w) => (w.stream === stream && w.o.ok ? [{ label: w.label, version: w.o.version }] : [])).sort((x, y) => x.version - y.version);
      return [...earlier, ...stored.filter((w) => w.version < firstO).map((w) => w.label), ...owner, ...stored.filter((w) => w.version > lastO).map((w) => w.label)];
    };
    /** Writes whose outcome is unknown may or may not be there: left out of the comparison. */
    const known = (stream: string, labels: string[]) => {
      const unsure = new Set(outcomes!.filter((w) => w.stream === stream && !w.o.ok && isProtocolError(w.o.error) && w.o.error.data.outcome === 'unknown').map((w) => w.label));
      return labels.filter((l) => !unsure.has(l));
    };
    const orders: [string, string[], string[]][] = [];
    for (const id of tasks) {
      const events = await eventsOf(onO, 'task', id);
      assertContiguous(events, `task ${id}`);
      const titles = events.filter((e) => e.type === 'task.update').map((e) => (e.data.changes as { title: string }).title);
      orders.push([`task ${id}`, known(id, titles), expected(id, ['s-1'], ['o-1', 'o-2', 'o-3'])]);
    }
    const docEvents = await eventsOf(onO, 'document', doc);
    assertContiguous(docEvents, `document ${doc}`);
    // An edit against old heads also lists the paths changed since them: each change is known by
    // the path that appears first in it.
    const seen = new Set<string>();
    const labels = docEvents.flatMap((e) => {
      const fresh = ((e.data.paths as string[] | undefined) ?? []).filter((p) => !seen.has(p));
      for (const p of fresh) seen.add(p);
      return fresh.filter((p) => /^\/(late|o)\d$/.test(p));
    });
    orders.push([`document ${doc}`, known(doc, labels), expected(doc, ['/late0'], ['/o1', '/o2', '/o3'])]);

    const counters = (await c.report(S)).counters;
    const metric = [...(await c.metrics(S)).matchAll(/^troupe_stale_writes_rejected_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
    const after = await waitFor(
      async () => {
        const a = (await c.report(S)).nodes.find((x) => x.self)!.actors;
        return (a.task ?? 0) <= (before.task ?? 0) - tasks.length && (a.document ?? 0) < (before.document ?? 0) ? a : null;
      },
      { timeoutMs: 5_000, intervalMs: 50 },
    ).catch(async () => (await c.report(S)).nodes.find((x) => x.self)!.actors);
    console.log(
      `cluster (b): ${c.ids[S]} paused ${((Date.now() - stoppedAt) / 1000).toFixed(1)} s (stopped outside a store write${stops > 1 ? `, after ${stops} stops` : ''}), ${c.ids[O]} took over after ${(tookOverMs / 1000).toFixed(1)} s; ` +
        `${inFlight.length} writes in flight to the paused node: ${count.before} stored before the takeover, ${count.refused} refused (UNAVAILABLE), ` +
        `${count.unknown} of unknown outcome, ${count.forwarded} forwarded and stored after the new owner's; ` +
        `stale writes rejected by the store fence: ${counters.staleWritesRejected} (metric ${metric}), leases lost ${counters.leasesLost - lostBefore}; ` +
        `held by ${c.ids[S]}: ${before.task ?? 0} tasks and ${before.document ?? 0} documents before, ${after.task ?? 0} and ${after.document ?? 0} after; ` +
        `owner notes naming the woken node: ${notedStale.size}`,
    );
    assert.equal(problems, [], 'every write of the paused node failed with UNAVAILABLE or was stored outside the new owner\'s writes');
    for (const [what, stored, want] of orders) assert.equal(stored, want, `${what}: the writes in order, none of the paused node's among the new owner's`);
    assert.ok(counters.staleWritesRejected > 0, `the store refused a stale write of the paused node (counters ${JSON.stringify(counters)})`);
    assert.ok(metric > 0, 'troupe_stale_writes_rejected_total counts it on /metrics');
    assert.ok((after.task ?? 0) <= (before.task ?? 0) - tasks.length, 'the paused node no longer holds the tasks');
    assert.ok((after.document ?? 0) < (before.document ?? 0), 'the paused node no longer holds the workspace state');
    assert.equal([...notedStale], [], 'the woken node did not note itself as the owner of actors whose lease it lost');
    for (const stream of streams) assert.is(await waitFor(async () => ((await c.owner(stream)) === c.ids[O] ? c.ids[O] : null), { timeoutMs: c.leaseMs }), c.ids[O], `the new owner keeps ${stream}`);
  });
});

test('(c) with one of three lock instances down, actors are still created, reached and moved on the majority', async (ctx) => {
  const { c } = ctx;
  await withLogs(c, async () => {
    await c.redis[2]!.stop();
    const nodes = c.live();
    assert.ok(nodes.length >= 2, `two nodes run (${nodes.map((i) => c.ids[i]).join(', ')})`);
    const leads = new Map(nodes.map((k) => [k, new ClusterClient(c, c.adminKey, k)]));
    ctx.clients.push(...leads.values());
    let ok = 0;
    let attempted = 0;
    const op = async <T>(fn: () => Promise<T>): Promise<T> => {
      attempted++;
      const r = await fn();
      ok++;
      return r;
    };
    const created: { id: string; node: number }[] = [];
    for (const k of nodes) {
      for (let i = 0; i < 4; i++) {
        const t = await op(() => leads.get(k)!.call('task.create', { type: 'majority', title: `c-${k}-${i}` }));
        created.push({ id: t.id, node: k });
        assert.is(await c.owner(taskStream(t.id)), c.ids[k], 'the node that created it owns it');
      }
    }
    // The leases are on the two lock instances that run.
    const lease = `troupe:lease:${taskStream(created[0]!.id)}`;
    for (const r of c.redis.slice(0, 2)) assert.is(await r.command(`EXISTS ${lease}`), ':1\r\n', `the lease is on ${r.url}`);
    const other = (k: number) => nodes[(nodes.indexOf(k) + 1) % nodes.length]!;
    for (const t of created) await op(() => leads.get(other(t.node))!.call('task.update', { taskId: t.id, title: `forwarded ${t.id}` }));

    // A graceful stop releases its leases; the next message activates the actors elsewhere.
    const stopped = nodes.at(-1)!;
    assert.is(await c.terminate(stopped), 0, 'a graceful stop');
    const running = c.live().map((i) => c.ids[i]!);
    const moved = created.filter((t) => t.node === stopped);
    for (const t of moved) {
      const r = await op(() => leads.get(nodes[0]!)!.call('task.update', { taskId: t.id, title: `moved ${t.id}` }));
      assert.is(r.version, 3);
      const owner = await c.owner(taskStream(t.id));
      assert.ok(owner !== null && running.includes(owner), `it lives on a running node now, not ${owner}`);
    }
    ctx.moreTasks.push(...created.map((t) => t.id));
    assert.is(ok, attempted);
    console.log(
      `cluster (c): lock instance 3 of 3 stopped; ${created.length} actors created on ${nodes.length} nodes, ${created.length} forwarded writes, ` +
        `${moved.length} actors moved off the stopped ${c.ids[stopped]}; ${ok} of ${attempted} operations succeeded`,
    );
  });
});

test('(d) every node restarted on the same store: tasks, workspace states and executions are all back', async (ctx) => {
  const { c, ledger } = ctx;
  await withLogs(c, async () => {
    const before = new ClusterClient(c, c.adminKey, c.live()[0]!);
    ctx.clients.push(before);
    const taskIds = [...ledger.tasks.keys(), ...ctx.moreTasks];
    assert.ok(taskIds.length > 0);
    const snapshot = async (cl: ClusterClient) => {
      const tasks: Task[] = [];
      for (let i = 0; i < taskIds.length; i += 100) {
        const got = await resend(() => cl.call('task.getBatch', { taskIds: taskIds.slice(i, i + 100) }));
        assert.equal(got.missing, []);
        tasks.push(...got.items);
      }
      const states = await Promise.all([...ledger.marks.keys(), ...ctx.moreWorkspaces].map((workspaceId) => resend(() => cl.call('workspace.getState', { workspaceId }))));
      const executions: Execution[] = await Promise.all(ledger.executions.map((executionId) => resend(() => cl.call('execution.get', { executionId }))));
      return { tasks, states: states.map((s) => [s.workspaceId, s.state, s.version, s.heads]), executions };
    };
    const was = await snapshot(before);

    for (const i of c.live()) assert.is(await c.terminate(i), 0, `${c.ids[i]} stops gracefully`);
    await c.start(0, 1, 2);
    const after = new ClusterClient(c, c.adminKey, 2);
    ctx.clients.push(after);
    const now = await snapshot(after);
    assert.equal(now.tasks, was.tasks, 'every task as it was');
    assert.equal(now.states, was.states, 'every workspace state as it was');
    assert.equal(now.executions, was.executions, 'every execution as it was');
    assert.ok(now.executions.every((x) => x.status === 'completed'));
    // And the cluster works on.
    const t = await after.call('task.update', { taskId: ctx.moreTasks[0]!, title: 'after the restart' });
    assert.is(t.title, 'after the restart');
    console.log(`cluster (d): 3 nodes restarted; ${now.tasks.length} tasks, ${now.states.length} workspace states, ${now.executions.length} executions back as they were`);
  });
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { Agent, Task } from '../../protocol/model.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { eventsOf, offered, registerAgents, taskWhen } from '../helpers/work.js';

interface Ctx {
  ts: TestServer;
  n: number;
}

const test = suite<Ctx>('assignment: agents, strategies, policies and rules choose who gets the work');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

/** A fresh tenant with an admin and an observer, so every count is exact. */
async function tenant(ctx: Ctx): Promise<{ tenant: string; lead: TroupeClient; eye: TroupeClient }> {
  const tenant = `as${++ctx.n}`;
  return { tenant, lead: await ctx.ts.client(tenant, 'lead', ['admin']), eye: await ctx.ts.client(tenant, 'eye', ['observer']) };
}

const agentOf = (c: TroupeClient, id: string) => c.call('agent.get', { agentId: id });

/** The last `task.assign` event of a task: who chose, by which strategy and why. */
async function lastAssign(c: TroupeClient, taskId: string): Promise<{ agentId: string; strategy: string; reason: string; kind: string }> {
  const e = (await eventsOf(c, taskId, 'task.assign')).at(-1);
  assert.ok(e, `task ${taskId} has no task.assign event`);
  return e.data as { agentId: string; strategy: string; reason: string; kind: string };
}

/** Gives an agent `n` offered tasks (assigned, not accepted), so its load is `n`. */
async function load(lead: TroupeClient, agentId: string, n: number): Promise<Task[]> {
  const out: Task[] = [];
  for (let i = 0; i < n; i++) out.push(await lead.call('task.create', { type: 'filler', title: `filler ${i} for ${agentId}`, assignTo: agentId }));
  return out;
}

// --- agents ------------------------------------------------------------------------------------

test('reports load as the tasks an agent holds, busy at its limit, draining when set, offline without a connection', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const { w } = await registerAgents(ctx.ts, t, { w: { capabilities: ['go'], maxConcurrentTasks: 4, costPerTask: 2.5 } });
  const fresh = await agentOf(lead, 'w');
  assert.equal([fresh.status, fresh.load, fresh.maxConcurrentTasks, fresh.costPerTask, fresh.capabilities], ['online', 0, 4, 2.5, ['go']]);

  // One task in each held state, plus one pending and one finished, which do not count.
  const [assigned, accepted, running, waiting] = await load(lead, 'w', 4);
  await w!.call('task.accept', { taskId: accepted!.id });
  await w!.call('task.accept', { taskId: running!.id });
  await w!.call('task.start', { taskId: running!.id });
  await w!.call('task.accept', { taskId: waiting!.id });
  await w!.call('task.start', { taskId: waiting!.id });
  await w!.call('task.requestInput', { taskId: waiting!.id, prompt: 'which branch?' });
  await lead.call('task.create', { type: 'filler', title: 'nobody holds me' });
  const full = await agentOf(lead, 'w');
  assert.equal([full.status, full.load], ['busy', 4], 'assigned, accepted, in_progress and input_required count; at the limit it is busy');
  assert.equal((await lead.call('agent.list', {})).items.map((a) => [a.id, a.status, a.load]), [['w', 'busy', 4]]);

  await w!.call('task.complete', { taskId: running!.id, result: 'ok' });
  assert.equal([(await agentOf(lead, 'w')).status, (await agentOf(lead, 'w')).load], ['online', 3], 'a completed task frees a slot');
  await w!.call('task.reject', { taskId: assigned!.id, reason: 'no' });
  assert.is((await agentOf(lead, 'w')).load, 2, 'a rejected task is no longer held');

  assert.is((await w!.call('agent.setStatus', { status: 'draining' })).status, 'draining');
  assert.equal([(await agentOf(lead, 'w')).status, (await agentOf(lead, 'w')).load], ['draining', 2], 'draining keeps what it holds');
  assert.is((await w!.call('agent.setStatus', { status: 'busy' })).status, 'busy');
  assert.is((await w!.call('agent.setStatus', { status: 'online' })).status, 'online');
  await w!.close();
  const gone = await waitFor(async () => {
    const a = await agentOf(lead, 'w');
    return a.connections === 0 ? a : null;
  });
  assert.equal([gone.status, gone.load], ['offline', 2], 'offline without a connection, still holding its tasks');
});

test('agent.list filters by status and capability and pages with a cursor; a bad cursor is INVALID_PARAMS', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, {
    a1: { capabilities: ['go', 'Rust'] },
    a2: { capabilities: ['py'] },
    a3: { capabilities: ['go'], maxConcurrentTasks: 1 },
    a4: { capabilities: ['go'] },
    a5: { capabilities: [] },
  });
  await load(lead, 'a3', 1);
  await c.a4!.call('agent.setStatus', { status: 'draining' });
  await c.a5!.close();
  await waitFor(async () => (await agentOf(lead, 'a5')).status === 'offline');
  const ids = (p: { items: Agent[] }) => p.items.map((a) => a.id);

  assert.equal(ids(await eye.call('agent.list', { status: ['online'] })), ['a1', 'a2']);
  assert.equal(ids(await eye.call('agent.list', { status: ['busy'] })), ['a3'], 'busy because it is at its limit');
  assert.equal(ids(await eye.call('agent.list', { status: ['draining', 'offline'] })), ['a4', 'a5']);
  assert.equal(ids(await eye.call('agent.list', { capability: 'go' })), ['a1', 'a3', 'a4']);
  assert.equal(ids(await eye.call('agent.list', { capability: 'go', status: ['online'] })), ['a1']);
  assert.equal(ids(await eye.call('agent.list', { capability: 'gpu' })), []);
  assert.is((await eye.call('agent.list', {})).items.find((a) => a.id === 'a3')!.load, 1, 'list items carry load');

  const seen: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await eye.call('agent.list', { limit: 2, cursor });
    assert.ok(page.items.length <= 2);
    seen.push(...ids(page));
    cursor = page.nextCursor ?? undefined;
    pages++;
  } while (cursor);
  assert.equal(seen, ['a1', 'a2', 'a3', 'a4', 'a5'], 'every agent once, in id order');
  assert.is(pages, 3);

  const bad = await refusal(eye.call('agent.list', { cursor: 'not-a-cursor!' }), ErrorCodes.INVALID_PARAMS);
  assert.match(bad.message, /cursor/);
  await refusal(eye.call('agent.list', { cursor: Buffer.from('a1', 'utf8').toString('base64') + '=' }), ErrorCodes.INVALID_PARAMS);
  await refusal(eye.call('agent.list', { status: ['sleeping'] } as never), ErrorCodes.INVALID_PARAMS);
});

test('agent.available lists online agents below their limit with every capability asked for, least loaded first', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, {
    full: { capabilities: ['go', 'py'], maxConcurrentTasks: 1 },
    half: { capabilities: ['go', 'py'], maxConcurrentTasks: 4 },
    idle: { capabilities: ['go'], maxConcurrentTasks: 4 },
    quarter: { capabilities: ['go', 'py'], maxConcurrentTasks: 4 },
    draining: { capabilities: ['go', 'py'] },
    gone: { capabilities: ['go', 'py'] },
  });
  await load(lead, 'full', 1);
  await load(lead, 'half', 2);
  await load(lead, 'quarter', 1);
  await c.draining!.call('agent.setStatus', { status: 'draining' });
  await c.gone!.close();
  await waitFor(async () => (await agentOf(lead, 'gone')).status === 'offline');

  const all = await eye.call('agent.available', {});
  assert.equal(all.items.map((a) => [a.id, a.load]), [['idle', 0], ['quarter', 1], ['half', 2]]);
  const py = await eye.call('agent.available', { capabilities: ['py'] });
  assert.equal(py.items.map((a) => a.id), ['quarter', 'half']);
  assert.equal((await eye.call('agent.available', { capabilities: ['go', 'py'], limit: 1 })).items.map((a) => a.id), ['quarter']);
  assert.equal((await eye.call('agent.available', { capabilities: ['gpu'] })).items, []);
});

test('agent.setCapabilities changes the caller or, for an admin, anyone; another agent is FORBIDDEN and nothing changes', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { a: { capabilities: ['go'] }, b: { capabilities: ['py'] } });
  const own = await c.a!.call('agent.setCapabilities', { capabilities: ['go', 'rust'] });
  assert.equal(own.capabilities, ['go', 'rust']);
  assert.equal((await agentOf(lead, 'a')).capabilities, ['go', 'rust']);
  assert.equal((await lead.call('agent.setCapabilities', { agentId: 'b', capabilities: ['py', 'gpu'] })).capabilities, ['py', 'gpu']);
  const before = await agentOf(lead, 'b');
  const head = await ctx.ts.store.headPosition(t);
  const e = await refusal(c.a!.call('agent.setCapabilities', { agentId: 'b', capabilities: [] }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /Only admins/);
  assert.equal(await agentOf(lead, 'b'), before);
  assert.is(await ctx.ts.store.headPosition(t), head, 'nothing was written');
  // New capabilities count for assignment at once.
  const task = await lead.call('task.create', { type: 'x', title: 'needs rust', requiredCapabilities: ['rust'], autoAssign: true });
  assert.is((await offered(lead, task.id)).assignedTo, 'a');
});

test('agent.deregister removes the agent: NOT_FOUND afterwards, no work for it, and registering again brings it back', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { solo: { capabilities: ['gpu'] }, other: { capabilities: ['cpu'] } });
  const r = await c.solo!.call('agent.deregister', { reason: 'maintenance' });
  assert.equal([r.id, r.deregistered], ['solo', true]);
  assert.type(r.version, 'number');
  const nf = await refusal(eye.call('agent.get', { agentId: 'solo' }), ErrorCodes.NOT_FOUND);
  assert.match(nf.message, /solo/);
  assert.equal((await eye.call('agent.list', {})).items.map((a) => a.id), ['other']);
  assert.equal((await eye.call('agent.available', { capabilities: ['gpu'] })).items, []);
  await refusal(lead.call('task.create', { type: 'x', title: 'to solo', assignTo: 'solo' }), ErrorCodes.NOT_FOUND);
  await refusal(c.solo!.call('agent.deregister', {}), ErrorCodes.NOT_FOUND);

  const task = await lead.call('task.create', { type: 'x', title: 'needs gpu', requiredCapabilities: ['gpu'], autoAssign: true });
  const waiting = await taskWhen(lead, task.id, (x) => x.waitingForAgent !== null);
  assert.is(waiting.assignedTo, null, 'a deregistered agent gets no work');

  const back = await c.solo!.call('agent.register', {});
  assert.equal([back.id, back.status, back.capabilities], ['solo', 'online', ['gpu']], 'it comes back with its profile');
  assert.is((await offered(lead, task.id)).assignedTo, 'solo', 'and the waiting task goes to it');
});

test('agent.performance reports success rate, mean and p90 start-to-complete time, failures and current load', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const { p } = await registerAgents(ctx.ts, t, { p: { maxConcurrentTasks: 20 } });
  const done: Task[] = [];
  for (let i = 0; i < 5; i++) {
    const x = await lead.call('task.create', { type: 'perf', title: `ok ${i}`, assignTo: 'p' });
    await p!.call('task.accept', { taskId: x.id });
    await p!.call('task.start', { taskId: x.id });
    // Some work in between, so the durations differ.
    for (let k = 0; k < i * 3; k++) await p!.call('task.progress', { taskId: x.id, percent: k });
    done.push(await p!.call('task.complete', { taskId: x.id, result: i }));
  }
  for (let i = 0; i < 2; i++) {
    const x = await lead.call('task.create', { type: 'perf', title: `bad ${i}`, assignTo: 'p' });
    await p!.call('task.accept', { taskId: x.id });
    await p!.call('task.start', { taskId: x.id });
    await p!.call('task.fail', { taskId: x.id, error: 'broke' });
  }
  await lead.call('task.create', { type: 'perf', title: 'held', assignTo: 'p' });
  // Work done by someone else on a task p once held does not count for p.
  const perf = await eye.call('agent.performance', { agentId: 'p' });
  const durations = done.map((x) => Date.parse(x.completedAt!) - Date.parse(x.startedAt!)).sort((a, b) => a - b);
  const mean = durations.reduce((a, b) => a + b, 0) / durations.length;
  assert.equal([perf.agentId, perf.completed, perf.failed, perf.currentLoad, perf.maxConcurrentTasks], ['p', 5, 2, 1, 20]);
  assert.ok(Math.abs(perf.successRate! - 5 / 7) < 1e-9, `successRate ${perf.successRate}`);
  assert.ok(Math.abs(perf.meanCompletionMs! - mean) <= 5, `mean ${perf.meanCompletionMs} vs ${mean}`);
  // Nearest rank: the 90th percentile of 5 values is the 5th.
  assert.ok(Math.abs(perf.p90CompletionMs! - durations[4]!) <= 5, `p90 ${perf.p90CompletionMs} vs ${durations[4]}`);
  assert.ok(perf.eventsScanned > 0);
  assert.is(perf.truncated, false);
  assert.ok(Date.parse(perf.to) - Date.parse(perf.from) === 86_400_000, 'the default period is a day');

  const { q } = await registerAgents(ctx.ts, t, { q: {} });
  const none = await q!.call('agent.performance', { agentId: 'q' });
  assert.equal([none.completed, none.failed, none.successRate, none.meanCompletionMs, none.p90CompletionMs, none.currentLoad], [0, 0, null, null, null, 0]);
  await refusal(q!.call('agent.performance', { agentId: 'p' }), ErrorCodes.FORBIDDEN);
});

// --- auto-assignment -----------------------------------------------------------------------------

test('ten agents with different capabilities: every task goes only to an agent that has all it requires', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const caps = ['go', 'py', 'rust', 'js', 'gpu', 'sql', 'k8s', 'ml', 'ios', 'docs'];
  // Agent i can do capability i and i+1: each capability has exactly two agents, each pair one.
  const profiles = Object.fromEntries(caps.map((cap, i) => [`ag${i}`, { capabilities: [cap, caps[(i + 1) % 10]!], maxConcurrentTasks: 50 }]));
  await registerAgents(ctx.ts, t, profiles);
  const capable = (need: string[]) => Object.entries(profiles).filter(([, p]) => need.every((c) => p.capabilities.includes(c))).map(([id]) => id);
  const tasks: { id: string; need: string[] }[] = [];
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 10; i++) {
      const need = round === 2 ? [caps[i]!, caps[(i + 1) % 10]!] : [caps[i]!];
      const x = await lead.call('task.create', { type: 'work', title: `needs ${need.join('+')} #${round}`, requiredCapabilities: need, autoAssign: true });
      assert.is(x.autoAssign, true);
      tasks.push({ id: x.id, need });
    }
  }
  const perAgent = new Map<string, number>();
  for (const { id, need } of tasks) {
    const x = await offered(lead, id);
    assert.ok(capable(need).includes(x.assignedTo!), `${need.join('+')} went to ${x.assignedTo}, which lacks it`);
    perAgent.set(x.assignedTo!, (perAgent.get(x.assignedTo!) ?? 0) + 1);
    const link = x.delegations.at(-1)!;
    assert.equal([link.from, link.to, link.kind], [null, x.assignedTo, 'automatic']);
    const ev = await lastAssign(lead, id);
    assert.equal([ev.agentId, ev.strategy, ev.kind], [x.assignedTo, 'least_loaded', 'automatic']);
    assert.match(ev.reason, /^least_loaded: /);
  }
  for (let i = 0; i < 10; i++) {
    const need = [caps[i]!, caps[(i + 1) % 10]!];
    assert.equal(capable(need), [`ag${i}`]);
  }
  assert.is(perAgent.size, 10);
});

test('round_robin cycles through the eligible agents in id order, whatever their load', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, { rc: { maxConcurrentTasks: 9 }, ra: { maxConcurrentTasks: 9 }, rb: { maxConcurrentTasks: 9 } });
  await load(lead, 'ra', 3);
  const order: string[] = [];
  for (let i = 0; i < 5; i++) {
    const x = await lead.call('task.create', { type: 'rr', title: `rr ${i}`, autoAssign: true, assignmentStrategy: 'round_robin' });
    assert.is(x.assignmentStrategy, 'round_robin');
    const got = await offered(lead, x.id);
    order.push(got.assignedTo!);
    const ev = await lastAssign(lead, x.id);
    assert.is(ev.strategy, 'round_robin');
    assert.match(ev.reason, /^round_robin/);
  }
  assert.equal(order, ['ra', 'rb', 'rc', 'ra', 'rb']);
});

test('capability_match prefers the agent with the fewest capabilities beyond those required, even when busier', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, {
    generalist: { capabilities: ['py', 'go', 'rust', 'js'], maxConcurrentTasks: 10 },
    pair: { capabilities: ['py', 'go'], maxConcurrentTasks: 10 },
    specialist: { capabilities: ['py'], maxConcurrentTasks: 10 },
  });
  await load(lead, 'specialist', 2);
  await load(lead, 'pair', 1);
  const py = await lead.call('task.create', { type: 'cm', title: 'py', requiredCapabilities: ['py'], autoAssign: true, assignmentStrategy: 'capability_match' });
  assert.is((await offered(lead, py.id)).assignedTo, 'specialist');
  const ev = await lastAssign(lead, py.id);
  assert.is(ev.strategy, 'capability_match');
  assert.match(ev.reason, /capability_match/);
  const pygo = await lead.call('task.create', { type: 'cm', title: 'py+go', requiredCapabilities: ['py', 'go'], autoAssign: true, assignmentStrategy: 'capability_match' });
  assert.is((await offered(lead, pygo.id)).assignedTo, 'pair');
  // The same situation under least_loaded picks the idle generalist: the strategy decided.
  const ll = await lead.call('task.create', { type: 'cm', title: 'py again', requiredCapabilities: ['py'], autoAssign: true, assignmentStrategy: 'least_loaded' });
  assert.is((await offered(lead, ll.id)).assignedTo, 'generalist');
});

test('cost_optimized picks the cheapest eligible agent', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, {
    dear: { costPerTask: 9, maxConcurrentTasks: 10 },
    cheap: { costPerTask: 1.5, maxConcurrentTasks: 10 },
    mid: { costPerTask: 4, maxConcurrentTasks: 10 },
    cheapest: { costPerTask: 0.5, capabilities: ['other'], maxConcurrentTasks: 10 },
  });
  await load(lead, 'cheap', 3);
  const x = await lead.call('task.create', { type: 'co', title: 'cheap please', autoAssign: true, assignmentStrategy: 'cost_optimized', requiredCapabilities: [] });
  assert.is((await offered(lead, x.id)).assignedTo, 'cheapest');
  const y = await lead.call('task.create', { type: 'co', title: 'not for cheapest', autoAssign: true, assignmentStrategy: 'cost_optimized', requiredCapabilities: [] });
  await offered(lead, y.id);
  const z = await lead.call('task.create', { type: 'co2', title: 'needs nothing', autoAssign: true, assignmentStrategy: 'cost_optimized' });
  assert.ok(['cheapest', 'cheap'].includes((await offered(lead, z.id)).assignedTo!));
  const ev = await lastAssign(lead, x.id);
  assert.equal([ev.strategy], ['cost_optimized']);
  assert.match(ev.reason, /cost_optimized: cost 0.5/);
});

test('performance_based prefers the agent that has completed its work over the one that failed it', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { good: { maxConcurrentTasks: 4 }, flaky: { maxConcurrentTasks: 4 } });
  for (const [who, ok] of [['good', true], ['good', true], ['flaky', false], ['flaky', false]] as const) {
    const x = await lead.call('task.create', { type: 'hist', title: `${who}`, assignTo: who });
    await c[who]!.call('task.accept', { taskId: x.id });
    await c[who]!.call('task.start', { taskId: x.id });
    if (ok) await c[who]!.call('task.complete', { taskId: x.id });
    else await c[who]!.call('task.fail', { taskId: x.id, error: 'oops' });
  }
  await load(lead, 'good', 1);
  const pb = await lead.call('task.create', { type: 'pb', title: 'important', autoAssign: true, assignmentStrategy: 'performance_based' });
  assert.is((await offered(lead, pb.id)).assignedTo, 'good');
  const ev = await lastAssign(lead, pb.id);
  assert.is(ev.strategy, 'performance_based');
  assert.match(ev.reason, /performance_based: score [\d.]+ \(success 100% over 2/);
  // With the same loads, least_loaded would have picked flaky.
  const ll = await lead.call('task.create', { type: 'pb', title: 'any', autoAssign: true, assignmentStrategy: 'least_loaded' });
  assert.is((await offered(lead, ll.id)).assignedTo, 'flaky');
});

test('the strategy comes from the request, else the task, else its type policy, else the tenant default; policy changes apply to the next decision', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, {
    a: { costPerTask: 5, capabilities: ['x'], maxConcurrentTasks: 20 },
    b: { costPerTask: 1, capabilities: ['x', 'y', 'z'], maxConcurrentTasks: 20 },
  });
  await load(lead, 'b', 1);

  // Per request.
  const manual = await lead.call('task.create', { type: 'plain', title: 'by request' });
  assert.equal([manual.status, manual.autoAssign], ['pending', false]);
  const r = await lead.call('task.autoAssign', { taskId: manual.id, strategy: 'cost_optimized' });
  assert.equal([r.assigned, r.strategy, r.task.assignedTo, r.task.status], [true, 'cost_optimized', 'b', 'assigned']);
  assert.match(r.reason, /^cost_optimized/);
  assert.is((await lastAssign(lead, manual.id)).strategy, 'cost_optimized');
  // Without a strategy: the server default, least_loaded.
  const plain = await lead.call('task.create', { type: 'plain', title: 'default' });
  const d = await lead.call('task.autoAssign', { taskId: plain.id });
  assert.equal([d.strategy, d.task.assignedTo], ['least_loaded', 'a']);

  // Per type: new tasks of the type are auto-assigned by its strategy.
  await lead.call('policy.set', { taskType: 'render', assignment: { strategy: 'cost_optimized', auto: true } });
  const r1 = await lead.call('task.create', { type: 'render', title: 'render 1' });
  assert.is(r1.autoAssign, true, 'the policy turns auto-assignment on');
  assert.is((await offered(lead, r1.id)).assignedTo, 'b');
  assert.is((await lastAssign(lead, r1.id)).strategy, 'cost_optimized');
  // The task's own strategy beats its type's.
  const r2 = await lead.call('task.create', { type: 'render', title: 'render 2', assignmentStrategy: 'least_loaded' });
  assert.is((await offered(lead, r2.id)).assignedTo, 'a');
  assert.is((await lastAssign(lead, r2.id)).strategy, 'least_loaded');

  // Tenant default for types without a policy of their own.
  await lead.call('policy.set', { taskType: '*', assignment: { strategy: 'capability_match' } });
  const o = await lead.call('task.create', { type: 'other', title: 'tenant default', autoAssign: true });
  assert.is((await offered(lead, o.id)).assignedTo, 'a', 'capability_match: a has fewer capabilities');
  assert.is((await lastAssign(lead, o.id)).strategy, 'capability_match');
  const r3 = await lead.call('task.create', { type: 'render', title: 'render 3' });
  assert.is((await lastAssign(lead, (await offered(lead, r3.id)).id)).strategy, 'cost_optimized', 'the type policy beats the tenant default');

  // A policy change takes effect on the next decision.
  await lead.call('policy.set', { taskType: 'render', assignment: { strategy: 'round_robin', auto: true } });
  const r4 = await lead.call('task.create', { type: 'render', title: 'render 4' });
  await offered(lead, r4.id);
  assert.is((await lastAssign(lead, r4.id)).strategy, 'round_robin');
});

test('a task that follows its type policy uses the policy in force when it is decided, not when it was created', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await lead.call('policy.set', { taskType: 'late', assignment: { strategy: 'cost_optimized', auto: true } });
  const x = await lead.call('task.create', { type: 'late', title: 'waits for gpu', requiredCapabilities: ['gpu'] });
  await taskWhen(lead, x.id, (v) => v.waitingForAgent !== null);
  await lead.call('policy.set', { taskType: 'late', assignment: { strategy: 'least_loaded', auto: true } });
  await registerAgents(ctx.ts, t, { g1: { capabilities: ['gpu'], costPerTask: 1 }, g2: { capabilities: ['gpu'], costPerTask: 2 } });
  await offered(lead, x.id);
  assert.is((await lastAssign(lead, x.id)).strategy, 'least_loaded', 'the policy in force at the decision');
  assert.is(x.assignmentStrategy, null, 'the task names no strategy of its own: it follows the policy');
});

test('a task nobody can take waits, saying why, and goes to a capable agent as soon as one registers or comes online', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, { cpu1: { capabilities: ['cpu'] }, cpu2: { capabilities: ['cpu'] } });
  const x = await lead.call('task.create', { type: 'train', title: 'train', requiredCapabilities: ['gpu'], autoAssign: true });
  // Wait for a later round, so its next retry is seconds away and only the wake-up can explain a quick assignment.
  const waiting = await taskWhen(lead, x.id, (v) => v.waitingForAgent !== null && v.assignmentRound >= 2, 6000);
  assert.equal([waiting.status, waiting.assignedTo], ['pending', null]);
  assert.match(waiting.waitingForAgent!.reason, /No eligible agent: 2 registered, 2 lack gpu/);
  assert.ok(Date.parse(waiting.waitingForAgent!.retryAt) > Date.parse(waiting.waitingForAgent!.since));
  await registerAgents(ctx.ts, t, { gpu: { capabilities: ['gpu'] } });
  const got = await offered(lead, x.id);
  assert.is(got.assignedTo, 'gpu');
  assert.is(got.waitingForAgent, null);
  assert.ok(Date.parse(got.assignedAt!) < Date.parse(waiting.waitingForAgent!.retryAt), `assigned at ${got.assignedAt}, before the retry at ${waiting.waitingForAgent!.retryAt}`);

  // An agent that comes back online wakes waiting tasks too.
  const key = await ctx.ts.key(t, 'tpu', ['agent']);
  const raw = await RawSocket.open(ctx.ts.url, key);
  await raw.ok('agent.register', { capabilities: ['tpu'] });
  await raw.close();
  await waitFor(async () => (await agentOf(lead, 'tpu')).status === 'offline');
  const y = await lead.call('task.create', { type: 'train', title: 'tpu job', requiredCapabilities: ['tpu'], autoAssign: true });
  const w2 = await taskWhen(lead, y.id, (v) => v.waitingForAgent !== null && v.assignmentRound >= 2, 6000);
  assert.match(w2.waitingForAgent!.reason, /1 offline/);
  const back = await RawSocket.open(ctx.ts.url, key);
  const got2 = await offered(lead, y.id);
  assert.is(got2.assignedTo, 'tpu');
  assert.ok(Date.parse(got2.assignedAt!) < Date.parse(w2.waitingForAgent!.retryAt));
  await back.close();
});

test('a task waiting for capacity goes to the agent as soon as it finishes a task', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const { one } = await registerAgents(ctx.ts, t, { one: { maxConcurrentTasks: 1 } });
  const [held] = await load(lead, 'one', 1);
  const x = await lead.call('task.create', { type: 'q', title: 'queued', autoAssign: true });
  const waiting = await taskWhen(lead, x.id, (v) => v.waitingForAgent !== null && v.assignmentRound >= 2, 6000);
  assert.match(waiting.waitingForAgent!.reason, /1 at their concurrency limit/);
  await one!.call('task.accept', { taskId: held!.id });
  await one!.call('task.start', { taskId: held!.id });
  await one!.call('task.complete', { taskId: held!.id });
  const got = await offered(lead, x.id);
  assert.is(got.assignedTo, 'one');
  assert.ok(Date.parse(got.assignedAt!) < Date.parse(waiting.waitingForAgent!.retryAt));
});

test('a rejected task goes to the next eligible agent, never back to one that declined it this round', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { r1: { capabilities: ['go'] }, r2: { capabilities: ['go'] }, r3: { capabilities: ['go'] }, nogo: {} });
  const x = await lead.call('task.create', { type: 'rej', title: 'hot potato', requiredCapabilities: ['go'], autoAssign: true });
  let cur = await offered(lead, x.id);
  const order = [cur.assignedTo!];
  for (let i = 0; i < 2; i++) {
    const rejected = await c[cur.assignedTo!]!.call('task.reject', { taskId: x.id, reason: `not me ${i}` });
    assert.is(rejected.status, 'pending');
    cur = await taskWhen(lead, x.id, (v) => v.status === 'assigned' && v.version > rejected.version);
    order.push(cur.assignedTo!);
  }
  assert.equal([...order].sort(), ['r1', 'r2', 'r3'], `each of the three once: ${order.join(', ')}`);
  assert.equal(cur.rejections.map((r) => [r.by, r.round]), [[order[0], 0], [order[1], 0]]);
  assert.equal(cur.delegations.map((d) => [d.from, d.to, d.kind]), [
    [null, order[0], 'automatic'],
    [order[0], order[1], 'automatic'],
    [order[1], order[2], 'automatic'],
  ]);
  // The last one declines too: nobody is left in this round.
  await c[cur.assignedTo!]!.call('task.reject', { taskId: x.id, reason: 'no' });
  const waiting = await taskWhen(lead, x.id, (v) => v.waitingForAgent !== null);
  assert.is(waiting.assignedTo, null);
  assert.match(waiting.waitingForAgent!.reason, /3 declined it this round/);
  assert.match(waiting.waitingForAgent!.reason, /1 lack go/);
});

test('an offer not accepted within offerTimeoutSeconds goes to another agent', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { slow: { maxConcurrentTasks: 5 }, swift: { maxConcurrentTasks: 5 } });
  await load(lead, 'swift', 1);
  const x = await lead.call('task.create', { type: 'offer', title: 'quick', autoAssign: true, offerTimeoutSeconds: 1 });
  const first = await offered(lead, x.id);
  assert.is(first.assignedTo, 'slow');
  assert.ok(first.offerExpiresAt);
  assert.ok(Math.abs(Date.parse(first.offerExpiresAt!) - Date.parse(first.assignedAt!) - 1000) <= 5);
  const second = await taskWhen(lead, x.id, (v) => v.assignedTo === 'swift', 5000);
  assert.equal(second.rejections.map((r) => [r.by, r.reason]), [['slow', 'did not accept within 1 s']]);
  assert.ok(Date.parse(second.assignedAt!) - Date.parse(first.assignedAt!) >= 990, 'not before the offer ran out');
  const link = second.delegations.at(-1)!;
  assert.equal([link.from, link.to, link.kind], ['slow', 'swift', 'automatic']);
  await refusal(c.slow!.call('task.accept', { taskId: x.id }), ErrorCodes.FORBIDDEN);
  const acc = await c.swift!.call('task.accept', { taskId: x.id });
  assert.equal([acc.status, acc.offerExpiresAt], ['accepted', null]);
});

test('draining agents get no new work but keep and finish what they hold', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { d: { capabilities: ['go'], maxConcurrentTasks: 10 }, e: { capabilities: ['go'], maxConcurrentTasks: 10 } });
  const [held, offer] = await load(lead, 'd', 2);
  await c.d!.call('task.accept', { taskId: held!.id });
  await load(lead, 'e', 3);
  await c.d!.call('agent.setStatus', { status: 'draining' });
  for (let i = 0; i < 3; i++) {
    const x = await lead.call('task.create', { type: 'dr', title: `new ${i}`, requiredCapabilities: ['go'], autoAssign: true });
    assert.is((await offered(lead, x.id)).assignedTo, 'e', 'the busier but available agent gets it');
  }
  assert.is((await lead.call('task.get', { taskId: held!.id })).assignedTo, 'd');
  assert.is((await lead.call('task.get', { taskId: offer!.id })).assignedTo, 'd');
  await c.d!.call('task.start', { taskId: held!.id });
  assert.is((await c.d!.call('task.complete', { taskId: held!.id, result: 'done' })).status, 'completed');
  assert.is((await c.d!.call('task.accept', { taskId: offer!.id })).status, 'accepted');
  // With the capable agents draining or busy by choice, the task waits and says so.
  await c.e!.call('agent.setStatus', { status: 'busy' });
  const y = await lead.call('task.create', { type: 'dr', title: 'nobody', requiredCapabilities: ['go'], autoAssign: true });
  const w = await taskWhen(lead, y.id, (v) => v.waitingForAgent !== null);
  assert.match(w.waitingForAgent!.reason, /2 busy or draining/);
});

test('task.available lists pending tasks the agent has the capabilities for, and task.claim takes one', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { py: { capabilities: ['py'], maxConcurrentTasks: 5 }, go: { capabilities: ['go'], maxConcurrentTasks: 5 } });
  const forPy = await lead.call('task.create', { type: 'av', title: 'py task', requiredCapabilities: ['py'] });
  const forGo = await lead.call('task.create', { type: 'av', title: 'go task', requiredCapabilities: ['go'] });
  const forAny = await lead.call('task.create', { type: 'av', title: 'any task' });
  const forBoth = await lead.call('task.create', { type: 'av', title: 'both', requiredCapabilities: ['py', 'go'] });
  await lead.call('task.create', { type: 'av', title: 'already offered', assignTo: 'py' });
  const ids = (p: { items: Task[] }) => p.items.map((x) => x.id).sort();
  assert.equal(ids(await c.py!.call('task.available', {})), [forPy.id, forAny.id].sort());
  assert.equal(ids(await c.go!.call('task.available', {})), [forGo.id, forAny.id].sort());
  assert.equal(ids(await eye.call('task.available', { agentId: 'go' })), [forGo.id, forAny.id].sort(), 'observers may look for anyone');
  await refusal(c.go!.call('task.available', { agentId: 'py' }), ErrorCodes.FORBIDDEN);

  const before = await lead.call('task.get', { taskId: forGo.id });
  const e = await refusal(c.py!.call('task.claim', { taskId: forGo.id }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /needs go/);
  await refusal(c.py!.call('task.claim', { taskId: forBoth.id }), ErrorCodes.FORBIDDEN);
  assert.equal(await lead.call('task.get', { taskId: forGo.id }), before, 'a refused claim changes nothing');

  const claimed = await c.py!.call('task.claim', { taskId: forPy.id });
  assert.equal([claimed.status, claimed.assignedTo], ['assigned', 'py']);
  assert.equal([claimed.delegations.at(-1)!.to, claimed.delegations.at(-1)!.reason], ['py', 'claimed by the agent']);
  assert.equal(ids(await c.py!.call('task.available', {})), [forAny.id]);
  assert.equal(ids(await c.go!.call('task.available', {})), [forGo.id, forAny.id].sort());
  assert.is((await c.py!.call('task.accept', { taskId: forPy.id })).status, 'accepted');

  // A task declined by an agent is not available to it in that round.
  const x = await c.go!.call('task.claim', { taskId: forAny.id });
  await c.go!.call('task.reject', { taskId: x.id, reason: 'changed my mind' });
  assert.equal(ids(await c.go!.call('task.available', {})), [forGo.id]);
  assert.equal(ids(await c.py!.call('task.available', {})), [forAny.id]);
});

test('task.claim takes only pending tasks: one already offered to another agent is not taken from it', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { holder: {}, grabber: {} });
  const x = await lead.call('task.create', { type: 'cl', title: 'offered to holder', assignTo: 'holder' });
  const head = await ctx.ts.store.headPosition(t);
  await refusal(c.grabber!.call('task.claim', { taskId: x.id }));
  assert.equal(await lead.call('task.get', { taskId: x.id }), x, 'still offered to holder');
  assert.is(await ctx.ts.store.headPosition(t), head);
  await c.holder!.call('task.accept', { taskId: x.id });
  await refusal(c.grabber!.call('task.claim', { taskId: x.id }), ErrorCodes.ILLEGAL_TRANSITION);
});

test('task.claim is refused for draining agents, observers and admins without the agent role', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { dr: {} });
  const x = await lead.call('task.create', { type: 'cl', title: 'open' });
  await c.dr!.call('agent.setStatus', { status: 'draining' });
  const e = await refusal(c.dr!.call('task.claim', { taskId: x.id }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /draining/);
  await refusal(eye.call('task.claim', { taskId: x.id }), ErrorCodes.FORBIDDEN);
  assert.equal(await lead.call('task.get', { taskId: x.id }), x);
});

test('task.rebalance moves offered tasks away from draining and offline agents with a load_balance link; dryRun only reports', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { old: { capabilities: ['go'], maxConcurrentTasks: 5 }, fresh: { capabilities: ['go'], maxConcurrentTasks: 5 } });
  const [o1, o2, acc] = await load(lead, 'old', 3);
  await c.old!.call('task.accept', { taskId: acc!.id });
  await c.old!.call('agent.setStatus', { status: 'draining' });
  await refusal(c.fresh!.call('task.rebalance', {}), ErrorCodes.FORBIDDEN);
  await refusal(eye.call('task.rebalance', {}), ErrorCodes.FORBIDDEN);

  const head = await ctx.ts.store.headPosition(t);
  const dry = await lead.call('task.rebalance', { dryRun: true });
  assert.is(dry.examined, 2, 'only offers, not accepted work');
  assert.equal(dry.moved.map((m) => [m.taskId, m.from, m.to, m.kind]).sort(), [
    [o1!.id, 'old', 'fresh', 'load_balance'],
    [o2!.id, 'old', 'fresh', 'load_balance'],
  ].sort());
  assert.equal(dry.stuck, []);
  assert.is(await ctx.ts.store.headPosition(t), head, 'a dry run writes nothing');
  assert.is((await lead.call('task.get', { taskId: o1!.id })).assignedTo, 'old');
  assert.equal([(await agentOf(lead, 'old')).load, (await agentOf(lead, 'fresh')).load], [3, 0], 'and leaves the loads as they were');

  const real = await lead.call('task.rebalance', {});
  assert.equal(real.moved.map((m) => m.taskId).sort(), [o1!.id, o2!.id].sort());
  for (const id of [o1!.id, o2!.id]) {
    const x = await lead.call('task.get', { taskId: id });
    assert.equal([x.status, x.assignedTo], ['assigned', 'fresh']);
    const link = x.delegations.at(-1)!;
    assert.equal([link.from, link.to, link.kind], ['old', 'fresh', 'load_balance']);
    assert.match(link.reason, /old is draining/);
  }
  assert.equal([(await lead.call('task.get', { taskId: acc!.id })).assignedTo], ['old'], 'accepted work stays');
  assert.equal([(await agentOf(lead, 'old')).load, (await agentOf(lead, 'fresh')).load], [1, 2]);

  // Offline agents' offers move too; with nobody to take them they are reported stuck.
  const [o3] = await load(lead, 'fresh', 1);
  await c.fresh!.close();
  await waitFor(async () => (await agentOf(lead, 'fresh')).status === 'offline');
  const none = await lead.call('task.rebalance', {});
  assert.equal(none.moved, []);
  assert.ok(none.stuck.some((s) => s.taskId === o3!.id && s.from === 'fresh' && /No eligible agent/.test(s.reason)));
  const { spare } = await registerAgents(ctx.ts, t, { spare: { capabilities: ['go'], maxConcurrentTasks: 5 } });
  const again = await lead.call('task.rebalance', { strategy: 'cost_optimized' });
  assert.equal(again.moved.map((m) => [m.taskId, m.from, m.to]).sort(), [o1!.id, o2!.id, o3!.id].map((id) => [id, 'fresh', 'spare']).sort());
  assert.equal(again.stuck, []);
  assert.is((await spare!.call('task.accept', { taskId: o3!.id })).status, 'accepted');
});

// --- rules and policies ------------------------------------------------------------------------

test('a task.assignment rule narrows who is eligible; a task only the refused agents could take waits, naming the rule', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, {
    cheap: { costPerTask: 3, maxConcurrentTasks: 2 },
    pricey: { costPerTask: 8, maxConcurrentTasks: 10 },
  });
  await lead.call('rule.register', { name: 'budget', category: 'task.assignment', expression: 'agent.costPerTask < 5.0', message: 'too expensive' });
  const got: string[] = [];
  for (let i = 0; i < 2; i++) {
    const x = await lead.call('task.create', { type: 'rb', title: `job ${i}`, autoAssign: true });
    got.push((await offered(lead, x.id)).assignedTo!);
  }
  assert.equal(got, ['cheap', 'cheap'], 'least_loaded would have chosen pricey for the second');
  const x = await lead.call('task.create', { type: 'rb', title: 'overflow', autoAssign: true });
  const w = await taskWhen(lead, x.id, (v) => v.waitingForAgent !== null);
  assert.match(w.waitingForAgent!.reason, /1 refused by assignment rules \(pricey: budget \(too expensive\)\)/);
  const e = await refusal(c.pricey!.call('task.claim', { taskId: x.id }), ErrorCodes.POLICY_DENIED);
  assert.is(e.data.rule, 'budget');
  assert.match(e.message, /budget/);
  // Lifting the rule lets the waiting task through at its next try.
  await lead.call('rule.update', { ruleId: 'budget', enabled: false });
  assert.is((await offered(lead, x.id, 6000)).assignedTo, 'pricey');
});

test('a task.validation rule refuses creation with POLICY_DENIED naming the rule, and nothing is created', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  await lead.call('rule.register', { name: 'no-low', category: 'task.validation', expression: "task.priority != 'low'", message: 'Low priority work is not accepted.' });
  const head = await ctx.ts.store.headPosition(t);
  const e = await refusal(lead.call('task.create', { type: 'v', title: 'meh', priority: 'low', autoAssign: true }), ErrorCodes.POLICY_DENIED);
  assert.equal([e.data.rule, e.data.category], ['no-low', 'task.validation']);
  assert.match(e.message, /no-low/);
  assert.match(e.message, /Low priority work is not accepted\./);
  assert.is(await ctx.ts.store.headPosition(t), head);
  assert.is((await eye.call('task.stats', {})).total, 0);
  // A policy default that makes the task low is refused too: rules see the completed task.
  await lead.call('policy.set', { taskType: 'chores', defaults: { priority: 'low' } });
  await refusal(lead.call('task.create', { type: 'chores', title: 'dishes' }), ErrorCodes.POLICY_DENIED);
  assert.is((await lead.call('task.create', { type: 'chores', title: 'urgent dishes', priority: 'high' })).priority, 'high');
});

test('task.defaults rules and policy defaults fill the fields a request leaves out, and never override it', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await registerAgents(ctx.ts, t, { w: {} });
  await lead.call('rule.register', {
    name: 'urgent-defaults',
    category: 'task.defaults',
    expression: 'task.type == "urgent" ? {"priority": "high", "maxRetries": 2} : {}',
  });
  await lead.call('policy.set', { taskType: 'urgent', defaults: { priority: 'low', maxRetries: 7, leaseSeconds: 45, parameters: { region: 'eu' } } });
  await lead.call('policy.set', { taskType: '*', defaults: { timeoutSeconds: 600, offerTimeoutSeconds: 30 } });

  const u = await lead.call('task.create', { type: 'urgent', title: 'fire' });
  assert.equal(
    [u.priority, u.maxRetries, u.leaseSeconds, u.parameters, u.timeoutSeconds, u.offerTimeoutSeconds],
    ['high', 2, 45, { region: 'eu' }, 600, 30],
    'the rule beats the type policy, which beats the tenant default',
  );
  const own = await lead.call('task.create', {
    type: 'urgent', title: 'mine', priority: 'low', maxRetries: 0, leaseSeconds: 5, timeoutSeconds: 9, parameters: { region: 'us', x: 1 },
  });
  assert.equal([own.priority, own.maxRetries, own.leaseSeconds, own.timeoutSeconds, own.parameters], ['low', 0, 5, 9, { region: 'us', x: 1 }]);
  const other = await lead.call('task.create', { type: 'calm', title: 'calm' });
  assert.equal([other.priority, other.maxRetries, other.timeoutSeconds], ['normal', 0, 600]);
  assert.is(other.leaseSeconds, 60, 'the server default lease');
});

// --- bad input -----------------------------------------------------------------------------------

test('refuses bad input to every agent and assignment method and changes nothing; the server keeps serving', async (ctx) => {
  const { tenant: t, lead, eye } = await tenant(ctx);
  const c = await registerAgents(ctx.ts, t, { w: { capabilities: ['go'] } });
  const pending = await lead.call('task.create', { type: 'bad', title: 'pending' });
  const other = await ctx.ts.client(`${t}-other`, 'boss', ['admin']);
  await registerAgents(ctx.ts, `${t}-other`, { ow: {} });
  const foreign = await other.call('task.create', { type: 'bad', title: 'theirs' });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(t, 'lead', ['admin']));
  const before = { agents: await lead.call('agent.list', {}), task: await lead.call('task.get', { taskId: pending.id }) };
  const head = await ctx.ts.store.headPosition(t);
  const invalid: [string, unknown][] = [
    ['agent.available', { capabilities: 'go' }],
    ['agent.available', { limit: 0 }],
    ['agent.available', { extra: true }],
    ['agent.setCapabilities', {}],
    ['agent.setCapabilities', { capabilities: [''] }],
    ['agent.setCapabilities', { capabilities: ['go'], agentId: 7 }],
    ['agent.setCapabilities', { capabilities: ['go'], colour: 'red' }],
    ['agent.deregister', { agentId: 'w', reason: 42 }],
    ['agent.deregister', { agentId: 'w', force: true }],
    ['agent.performance', {}],
    ['agent.performance', { agentId: 'w', periodSeconds: 0 }],
    ['agent.performance', { agentId: 'w', periodSeconds: 'day' }],
    ['task.autoAssign', { taskId: pending.id, strategy: 'random' }],
    ['task.autoAssign', { taskId: 5 }],
    ['task.autoAssign', { taskId: pending.id, now: true }],
    ['task.available', { limit: 'ten' }],
    ['task.available', { agentId: 'w', cursor: 'garbage!' }],
    ['task.claim', {}],
    ['task.claim', { taskId: pending.id, expectedVersion: -1 }],
    ['task.rebalance', { strategy: 'fair' }],
    ['task.rebalance', { dryRun: 'yes' }],
    ['task.rebalance', { everything: true }],
  ];
  for (const [method, params] of invalid) {
    const r = await raw.call(method, params);
    assert.is(r.error?.code, ErrorCodes.INVALID_PARAMS, `${method} ${JSON.stringify(params)}: ${JSON.stringify(r)}`);
    assert.is(r.error?.data?.reason, 'INVALID_PARAMS');
  }
  // Unknown ids, and other tenants' ids, look the same: NOT_FOUND.
  for (const [client, method, params] of [
    [lead, 'agent.setCapabilities', { agentId: 'ghost', capabilities: ['x'] }],
    [lead, 'agent.setCapabilities', { agentId: 'ow', capabilities: ['x'] }],
    [lead, 'agent.deregister', { agentId: 'ghost' }],
    [lead, 'agent.deregister', { agentId: 'ow' }],
    [lead, 'agent.performance', { agentId: 'ghost' }],
    [lead, 'agent.performance', { agentId: 'ow' }],
    [lead, 'task.autoAssign', { taskId: '01900000-0000-7000-8000-000000000000' }],
    [lead, 'task.autoAssign', { taskId: foreign.id }],
    [lead, 'task.available', { agentId: 'ghost' }],
    [lead, 'task.available', { agentId: 'ow' }],
    [c.w!, 'task.claim', { taskId: '01900000-0000-7000-8000-000000000000' }],
    [c.w!, 'task.claim', { taskId: foreign.id }],
  ] as [TroupeClient, 'agent.deregister', Record<string, unknown>][]) {
    const e = await refusal(client.call(method, params as never), ErrorCodes.NOT_FOUND);
    assert.not.match(e.message, /theirs|-other/, 'nothing about the other tenant leaks');
  }
  for (const id of ['ghost', 'ow']) await refusal(eye.call('agent.get', { agentId: id }), ErrorCodes.NOT_FOUND);
  assert.equal((await eye.call('agent.list', {})).items.map((a) => a.id), ['w'], 'other tenants\' agents are not listed');
  // Observers cannot write.
  for (const [method, params] of [
    ['agent.setCapabilities', { capabilities: ['x'] }],
    ['agent.setCapabilities', { agentId: 'w', capabilities: ['x'] }],
    ['agent.deregister', { agentId: 'w' }],
    ['task.autoAssign', { taskId: pending.id }],
    ['task.claim', { taskId: pending.id }],
    ['task.rebalance', {}],
  ] as ['agent.deregister', Record<string, unknown>][]) {
    await refusal(eye.call(method, params as never), ErrorCodes.FORBIDDEN);
  }
  // Agents may not act for others, nor auto-assign what they did not create.
  await refusal(c.w!.call('agent.deregister', { agentId: 'lead' }), ErrorCodes.FORBIDDEN);
  await refusal(c.w!.call('task.autoAssign', { taskId: pending.id }), ErrorCodes.FORBIDDEN);
  // Only pending tasks can be auto-assigned.
  const offeredTask = await lead.call('task.create', { type: 'bad', title: 'offered', assignTo: 'w' });
  const head2 = await ctx.ts.store.headPosition(t);
  await refusal(lead.call('task.autoAssign', { taskId: offeredTask.id }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.is(await ctx.ts.store.headPosition(t), head2);

  assert.ok(head2 > head);
  await lead.call('task.delete', { taskId: offeredTask.id });
  assert.equal(await lead.call('agent.list', {}), before.agents);
  assert.equal(await lead.call('task.get', { taskId: pending.id }), before.task);
  assert.equal((await other.call('task.get', { taskId: foreign.id })).status, 'pending');
  assert.equal((await other.call('agent.get', { agentId: 'ow' })).capabilities, []);
  assert.ok(raw.open, 'the connection survived');
  assert.equal((await raw.call('ping', {})).result && true, true);
  await raw.close();
});

test('refuses malformed rule and policy calls with INVALID_PARAMS and changes nothing', async (ctx) => {
  const { tenant: t, lead } = await tenant(ctx);
  await lead.call('rule.register', { name: 'keep', category: 'task.validation', expression: 'true' });
  await lead.call('policy.set', { taskType: 'kept', defaults: { maxRetries: 1 } });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(t, 'lead', ['admin']));
  const head = await ctx.ts.store.headPosition(t);
  for (const [method, params] of [
    ['rule.register', { name: 'r', category: 'task.everything', expression: 'true' }],
    ['rule.register', { name: 'r', category: 'task.validation', expression: 5 }],
    ['rule.register', { name: 'r', category: 'task.validation', expression: 'true', colour: 'red' }],
    ['rule.register', { name: 'r', category: 'task.validation', expression: '' }],
    ['rule.update', { ruleId: 'keep', enabled: 'yes' }],
    ['rule.update', { ruleId: 'keep', expression: 'false', category: 'task.defaults' }],
    ['rule.get', {}],
    ['rule.list', { enabled: 1 }],
    ['rule.delete', { ruleId: 'keep', expectedVersion: 'one' }],
    ['rule.evaluate', { expression: 'true' }],
    ['policy.get', { taskType: 'a/b' }],
    ['policy.set', { taskType: 'kept', defaults: { maxRetries: -1 } }],
    ['policy.set', { taskType: 'kept', defaults: { leaseSeconds: 0 } }],
    ['policy.set', { taskType: 'kept', assignment: { strategy: 'coin_flip' } }],
    ['policy.set', { taskType: 'kept', assignment: { auto: 'always' } }],
    ['policy.set', { taskType: 'kept', defaults: { colour: 'red' } }],
    ['policy.list', { taskType: 'kept' }],
  ] as const) {
    const r = await raw.call(method, params);
    assert.is(r.error?.code, ErrorCodes.INVALID_PARAMS, `${method} ${JSON.stringify(params)}: ${JSON.stringify(r)}`);
  }
  assert.is(await ctx.ts.store.headPosition(t), head);
  assert.equal((await lead.call('policy.get', { taskType: 'kept' })).effective.defaults, { maxRetries: 1 });
  assert.is((await lead.call('rule.get', { ruleId: 'keep' })).version, 1);
  assert.ok(raw.open);
  await raw.close();
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { ParamsOf } from '../../protocol/methods.js';
import type { ActorEvent, Task, TaskTree } from '../../protocol/model.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { offered, registerAgents, taskWhen } from '../helpers/work.js';

interface Team {
  tenant: string;
  lead: TroupeClient;
  eye: TroupeClient;
  /** Agents w1, w2, w3, w4, w5 (no capabilities, room for plenty of work). */
  ag: Record<string, TroupeClient>;
}

interface Ctx {
  ts: TestServer;
  n: number;
}

type Spec = ParamsOf<'task.createDistributed'>;
type Sub = Spec['subtasks'][number];

const test = suite<Ctx>('distributed tasks: a parent coordinates its subtasks and decides by its rules');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function team(ctx: Ctx): Promise<Team> {
  const tenant = `ds${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['admin']);
  const eye = await ctx.ts.client(tenant, 'eye', ['observer']);
  const ag = await registerAgents(
    ctx.ts,
    tenant,
    Object.fromEntries(['w1', 'w2', 'w3', 'w4', 'w5'].map((id) => [id, { maxConcurrentTasks: 50 }])),
  );
  return { tenant, lead, eye, ag };
}

/** Subtasks offered to w1, w2, ... in order. */
const subs = (n: number, extra: (i: number) => Partial<Sub> = () => ({})): Sub[] =>
  Array.from({ length: n }, (_, i) => ({ title: `part ${i + 1}`, assignTo: `w${i + 1}`, ...extra(i) }));

/** The holder of a subtask submits its result. */
async function submit(t: Team, parent: string, sub: Task | string, result: unknown): Promise<Task> {
  const s = typeof sub === 'string' ? await t.lead.call('task.get', { taskId: sub }) : sub;
  const holder = t.ag[s.assignedTo!]!;
  return holder.call('task.submitSubtaskResult', { parentTaskId: parent, subtaskId: s.id, result });
}

const settledParent = (c: TroupeClient, id: string) => taskWhen(c, id, (v) => ['completed', 'failed', 'cancelled', 'timed_out'].includes(v.status));
const statusOf = async (c: TroupeClient, id: string) => (await c.call('task.get', { taskId: id })).status;
const nodeStatus = (n: TaskTree) => n.task.status;

test('parallel with completion all: the parent runs with its distribution, every subtask starts, and combine_results gathers all results', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'survey',
    title: 'Ask three',
    description: 'fan out',
    priority: 'high',
    parameters: { q: 'why?' },
    coordination: 'parallel',
    completion: { mode: 'all' },
    subtasks: subs(3, (i) => ({ parameters: { i } })),
  });
  const p = r.task;
  assert.equal([p.status, p.type, p.title, p.priority, p.autoAssign, p.assignedTo], ['in_progress', 'survey', 'Ask three', 'high', false, null]);
  assert.ok(p.distribution);
  assert.equal([p.distribution.coordination, p.distribution.completion, p.distribution.aggregation], ['parallel', { mode: 'all', threshold: null }, 'combine_results']);
  assert.equal(p.distribution.subtasks.map((s) => s.status), ['active', 'active', 'active']);
  assert.equal(r.subtasks.map((s) => s.id), p.distribution.subtasks.map((s) => s.id), 'subtasks in order');
  for (const [i, s] of r.subtasks.entries()) {
    assert.equal([s.parentTaskId, s.type, s.title, s.status, s.assignedTo, s.parameters], [p.id, 'survey', `part ${i + 1}`, 'assigned', `w${i + 1}`, { i }]);
  }
  assert.equal((await t.eye.call('task.search', { parentTaskId: p.id })).items.map((s) => s.id).sort(), r.subtasks.map((s) => s.id).sort());

  await submit(t, p.id, r.subtasks[1]!, { vote: 'b' });
  await submit(t, p.id, r.subtasks[0]!, { vote: 'a' });
  assert.is(await statusOf(t.lead, p.id), 'in_progress', 'all three must finish');
  await submit(t, p.id, r.subtasks[2]!, { vote: 'c' });
  const done = await settledParent(t.lead, p.id);
  assert.is(done.status, 'completed');
  assert.equal(done.result, r.subtasks.map((s, i) => ({ subtaskId: s.id, agent: `w${i + 1}`, result: { vote: 'abc'[i] } })));
  assert.equal(done.distribution!.subtasks.map((s) => [s.status, s.settledOrder, s.agent]), [
    ['completed', 2, 'w1'],
    ['completed', 1, 'w2'],
    ['completed', 3, 'w3'],
  ]);
});

test('subtasks without assignTo are auto-assigned, each to an agent with its required capabilities', async (ctx) => {
  const t = await team(ctx);
  await registerAgents(ctx.ts, t.tenant, { gpu: { capabilities: ['gpu'], maxConcurrentTasks: 5 }, tpu: { capabilities: ['tpu'], maxConcurrentTasks: 5 } });
  const r = await t.lead.call('task.createDistributed', {
    type: 'train',
    title: 'train twice',
    coordination: 'parallel',
    completion: { mode: 'all' },
    subtasks: [
      { title: 'on gpu', requiredCapabilities: ['gpu'] },
      { title: 'on tpu', requiredCapabilities: ['tpu'] },
      { title: 'on gpu too', requiredCapabilities: ['gpu'], assignmentStrategy: 'cost_optimized' },
    ],
  });
  const got = await Promise.all(r.subtasks.map((s) => offered(t.lead, s.id)));
  assert.equal(got.map((s) => s.assignedTo), ['gpu', 'tpu', 'gpu']);
  assert.equal(got.map((s) => s.autoAssign), [true, true, true]);
  assert.equal(got.map((s) => s.delegations[0]!.kind), ['automatic', 'automatic', 'automatic']);
});

test('sequential: the next subtask starts only after the previous settles', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'steps',
    title: 'one after another',
    coordination: 'sequential',
    completion: { mode: 'all' },
    subtasks: subs(3),
  });
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  assert.equal(r.task.distribution!.subtasks.map((s) => s.status), ['active', 'waiting', 'waiting']);
  assert.equal([r.subtasks[0]!.id, r.subtasks[0]!.status], [ids[0], 'assigned']);
  assert.is((await t.ag.w2!.call('task.listForAgent', {})).items.length, 0, 'w2 has nothing yet');
  assert.is((await t.lead.call('agent.get', { agentId: 'w2' })).load, 0);

  await submit(t, r.task.id, ids[0]!, 'first');
  const second = await offered(t.lead, ids[1]!);
  assert.is(second.assignedTo, 'w2');
  const parent = await t.lead.call('task.get', { taskId: r.task.id });
  assert.equal(parent.distribution!.subtasks.map((s) => s.status), ['completed', 'active', 'waiting']);
  assert.is((await t.ag.w3!.call('task.listForAgent', {})).items.length, 0, 'w3 still has nothing');
  await submit(t, r.task.id, second, 'second');
  await submit(t, r.task.id, await offered(t.lead, ids[2]!), 'third');
  const done = await settledParent(t.lead, r.task.id);
  assert.is(done.status, 'completed');
  assert.equal((done.result as { result: unknown }[]).map((x) => x.result), ['first', 'second', 'third']);
});

test('subtasks not started yet are invisible: only task.tree shows them, as waiting', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'hidden',
    title: 'one after another',
    coordination: 'sequential',
    completion: { mode: 'all' },
    subtasks: subs(3),
  });
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  const tree = await t.eye.call('task.tree', { taskId: r.task.id });
  assert.is(tree.task.id, r.task.id);
  assert.equal(tree.children.map((c) => [c.task.id, nodeStatus(c)]), [[ids[0], 'assigned'], [ids[1], 'waiting'], [ids[2], 'waiting']]);
  assert.equal(tree.children[1]!.task, { id: ids[1], status: 'waiting', parentTaskId: r.task.id });
  assert.equal(r.subtasks.map((s) => [s.id, s.status]), [[ids[0], 'assigned']], 'createDistributed returns the started subtasks');
  await refusal(t.eye.call('task.get', { taskId: ids[1]! }), ErrorCodes.NOT_FOUND);
  assert.equal((await t.eye.call('task.search', { type: 'hidden' })).items.map((x) => x.id).sort(), [r.task.id, ids[0]!].sort());
  const stats = await t.eye.call('task.stats', { type: 'hidden' });
  assert.equal([stats.total, stats.byStatus], [2, { in_progress: 1, assigned: 1 }]);
});

test('pipeline: each subtask receives the previous result as parameters.input', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'etl',
    title: 'extract, transform, load',
    coordination: 'pipeline',
    completion: { mode: 'all' },
    subtasks: subs(3, (i) => ({ parameters: { stage: i } })),
  });
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  assert.equal(r.subtasks[0]!.parameters, { stage: 0 }, 'the first stage gets no input');
  await submit(t, r.task.id, ids[0]!, { rows: [1, 2, 3] });
  const s2 = await offered(t.lead, ids[1]!);
  assert.equal(s2.parameters, { stage: 1, input: { rows: [1, 2, 3] } });
  await submit(t, r.task.id, s2, { rows: [2, 4, 6] });
  const s3 = await offered(t.lead, ids[2]!);
  assert.equal(s3.parameters, { stage: 2, input: { rows: [2, 4, 6] } });
  await submit(t, r.task.id, s3, { loaded: 3 });
  const done = await settledParent(t.lead, r.task.id);
  assert.is(done.status, 'completed');
});

test('map_reduce: the mappers run in parallel, then the reducer gets their results as parameters.input and decides the parent', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'count',
    title: 'word count',
    coordination: 'map_reduce',
    completion: { mode: 'all' },
    subtasks: [...subs(3, (i) => ({ title: `map ${i}` })), { title: 'reduce', assignTo: 'w4', parameters: { op: 'sum' } }],
  });
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  assert.equal(r.task.distribution!.subtasks.map((s) => s.status), ['active', 'active', 'active', 'waiting']);
  await submit(t, r.task.id, ids[2]!, { words: 30 });
  await submit(t, r.task.id, ids[0]!, { words: 10 });
  assert.equal((await t.lead.call('task.get', { taskId: r.task.id })).distribution!.subtasks.map((x) => x.status), ['completed', 'active', 'completed', 'waiting'], 'not before every mapper is done');
  assert.is((await t.ag.w4!.call('task.listForAgent', {})).items.length, 0);
  await submit(t, r.task.id, ids[1]!, { words: 20 });
  const reducer = await offered(t.lead, ids[3]!);
  assert.equal(reducer.parameters, {
    op: 'sum',
    input: [
      { subtaskId: ids[0], result: { words: 10 } },
      { subtaskId: ids[1], result: { words: 20 } },
      { subtaskId: ids[2], result: { words: 30 } },
    ],
  });
  await submit(t, r.task.id, reducer, { words: 60 });
  const done = await settledParent(t.lead, r.task.id);
  assert.equal([done.status, done.result], ['completed', { words: 60 }]);
});

test('completion any with first_complete: the first result wins and the other subtasks are cancelled', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'race',
    title: 'fastest wins',
    coordination: 'parallel',
    completion: { mode: 'any' },
    aggregation: 'first_complete',
    subtasks: subs(3),
  });
  await t.ag.w1!.call('task.accept', { taskId: r.subtasks[0]!.id });
  await t.ag.w1!.call('task.start', { taskId: r.subtasks[0]!.id });
  await submit(t, r.task.id, r.subtasks[2]!, 'w3 was quick');
  const done = await settledParent(t.lead, r.task.id);
  assert.equal([done.status, done.result], ['completed', { subtaskId: r.subtasks[2]!.id, agent: 'w3', result: 'w3 was quick' }]);
  for (const s of r.subtasks.slice(0, 2)) {
    const x = await taskWhen(t.lead, s.id, (v) => v.status === 'cancelled');
    assert.match(x.error!, /the parent task was completed/);
  }
  await refusal(submit(t, r.task.id, r.subtasks[0]!.id, 'too late'), ErrorCodes.ILLEGAL_TRANSITION);
  assert.equal((await t.lead.call('task.get', { taskId: r.task.id })).result, done.result, 'a late result changes nothing');
});

test('completion majority with majority_vote: decided once a majority succeeded, by the most common result', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'vote',
    title: 'five judges',
    coordination: 'parallel',
    completion: { mode: 'majority' },
    aggregation: 'majority_vote',
    subtasks: subs(5),
  });
  await submit(t, r.task.id, r.subtasks[0]!, { answer: 42, note: 'x' });
  await submit(t, r.task.id, r.subtasks[1]!, { answer: 41 });
  assert.is(await statusOf(t.lead, r.task.id), 'in_progress', 'two of five is no majority');
  await submit(t, r.task.id, r.subtasks[3]!, { note: 'x', answer: 42 });
  const done = await settledParent(t.lead, r.task.id);
  assert.is(done.status, 'completed');
  assert.equal(done.result, { value: { answer: 42, note: 'x' }, votes: 2, of: 3 }, 'key order does not split the vote');
  for (const i of [2, 4]) assert.is((await taskWhen(t.lead, r.subtasks[i]!.id, (v) => v.status === 'cancelled')).status, 'cancelled');
});

test('completion threshold: decided after k successes; it fails as soon as k can no longer be reached', async (ctx) => {
  const t = await team(ctx);
  const ok = await t.lead.call('task.createDistributed', {
    type: 'th',
    title: 'two of four',
    coordination: 'parallel',
    completion: { mode: 'threshold', threshold: 2 },
    subtasks: subs(4),
  });
  assert.equal(ok.task.distribution!.completion, { mode: 'threshold', threshold: 2 });
  await submit(t, ok.task.id, ok.subtasks[3]!, 'd');
  assert.is(await statusOf(t.lead, ok.task.id), 'in_progress');
  await submit(t, ok.task.id, ok.subtasks[1]!, 'b');
  const done = await settledParent(t.lead, ok.task.id);
  assert.is(done.status, 'completed');
  assert.equal((done.result as { result: unknown }[]).map((x) => x.result), ['b', 'd']);

  const bad = await t.lead.call('task.createDistributed', {
    type: 'th',
    title: 'two of three, two fail',
    coordination: 'parallel',
    completion: { mode: 'threshold', threshold: 2 },
    subtasks: subs(3),
  });
  await t.ag.w1!.call('task.fail', { taskId: bad.subtasks[0]!.id, error: 'disk full' }).catch(async () => {
    await t.ag.w1!.call('task.accept', { taskId: bad.subtasks[0]!.id });
    await t.ag.w1!.call('task.fail', { taskId: bad.subtasks[0]!.id, error: 'disk full' });
  });
  assert.is(await statusOf(t.lead, bad.task.id), 'in_progress', 'two may still succeed');
  await t.ag.w2!.call('task.accept', { taskId: bad.subtasks[1]!.id });
  await t.ag.w2!.call('task.fail', { taskId: bad.subtasks[1]!.id, error: 'out of memory' });
  const failed = await settledParent(t.lead, bad.task.id);
  assert.is(failed.status, 'failed');
  assert.match(failed.error!, /0 of 3 subtasks succeeded but 2 must/);
  assert.match(failed.error!, /disk full/);
  assert.is((await taskWhen(t.lead, bad.subtasks[2]!.id, (v) => v.status === 'cancelled')).status, 'cancelled');
});

test('completion best_of: waits for every subtask and picks the highest numeric score', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'best',
    title: 'best draft',
    coordination: 'parallel',
    completion: { mode: 'best_of' },
    subtasks: subs(4),
  });
  await submit(t, r.task.id, r.subtasks[0]!, { draft: 'a', score: 0.2 });
  await submit(t, r.task.id, r.subtasks[1]!, { draft: 'b', score: 0.9 });
  await submit(t, r.task.id, r.subtasks[2]!, { draft: 'c', score: 'high' });
  assert.is(await statusOf(t.lead, r.task.id), 'in_progress', 'a better one may still come');
  await submit(t, r.task.id, r.subtasks[3]!, { draft: 'd', score: 0.5 });
  const done = await settledParent(t.lead, r.task.id);
  assert.equal([done.status, done.result], ['completed', { subtaskId: r.subtasks[1]!.id, agent: 'w2', result: { draft: 'b', score: 0.9 }, score: 0.9 }]);
});

test('completion all fails the parent when a subtask fails for good, and cancels the rest', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'strict',
    title: 'every part',
    coordination: 'parallel',
    completion: { mode: 'all' },
    subtasks: subs(3, (i) => (i === 1 ? { maxRetries: 1, retryBackoffMs: 60_000 } : {})),
  });
  await submit(t, r.task.id, r.subtasks[0]!, 'ok');
  await t.ag.w2!.call('task.accept', { taskId: r.subtasks[1]!.id });
  const retrying = await t.ag.w2!.call('task.fail', { taskId: r.subtasks[1]!.id, error: 'flaky' });
  assert.ok(retrying.retryAt, 'it will be retried');
  assert.is(await statusOf(t.lead, r.task.id), 'in_progress', 'a failure that will be retried decides nothing');
  await t.ag.w3!.call('task.accept', { taskId: r.subtasks[2]!.id });
  await t.ag.w3!.call('task.fail', { taskId: r.subtasks[2]!.id, error: 'broken for good', retryable: false });
  const failed = await settledParent(t.lead, r.task.id);
  assert.is(failed.status, 'failed');
  assert.match(failed.error!, /broken for good/);
  assert.is((await taskWhen(t.lead, r.subtasks[1]!.id, (v) => v.status === 'cancelled')).retryAt, null);
  assert.is(await statusOf(t.lead, r.subtasks[0]!.id), 'completed', 'finished work stays finished');
});

test('a parent timeout times the parent out and cancels its unfinished subtasks', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'slow',
    title: 'one second only',
    coordination: 'sequential',
    completion: { mode: 'all' },
    timeoutSeconds: 1,
    subtasks: subs(3),
  });
  assert.ok(r.task.deadline);
  await submit(t, r.task.id, r.subtasks[0]!, 'quick');
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  await offered(t.lead, ids[1]!);
  const out = await taskWhen(t.lead, r.task.id, (v) => v.status === 'timed_out', 4000);
  // Not before its deadline (set a second after the call was accepted).
  assert.ok(Date.parse(out.completedAt!) >= Date.parse(r.task.deadline!));
  assert.ok(Date.parse(r.task.deadline!) >= Date.parse(r.task.createdAt) + 1000 - 50);
  const second = await taskWhen(t.lead, ids[1]!, (v) => v.status === 'cancelled');
  assert.match(second.error!, /the parent task timed out/);
  assert.is(await statusOf(t.lead, ids[0]!), 'completed');
  // The never-started subtask is cancelled by the parent's message, which may land a moment later.
  const statuses = await waitFor(async () => {
    const tree = await t.lead.call('task.tree', { taskId: r.task.id });
    const st = tree.children.map(nodeStatus);
    return st[2] === 'waiting' ? null : st;
  });
  assert.equal(statuses, ['completed', 'cancelled', 'cancelled'], 'the one never started is cancelled too');
});

test('task.submitSubtaskResult: the holder completes its subtask from assigned; others are refused and nothing changes', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'sub',
    title: 'submit rules',
    coordination: 'parallel',
    completion: { mode: 'all' },
    subtasks: subs(2),
  });
  const other = await t.lead.call('task.createDistributed', { type: 'sub', title: 'another', coordination: 'parallel', completion: { mode: 'all' }, subtasks: subs(1) });
  const s1 = r.subtasks[0]!;
  const head = await ctx.ts.store.headPosition(t.tenant);
  const e = await refusal(t.ag.w2!.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: s1.id, result: 'not mine' }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /w1/);
  await refusal(t.eye.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: s1.id }), ErrorCodes.FORBIDDEN);
  await refusal(t.ag.w1!.call('task.submitSubtaskResult', { parentTaskId: other.task.id, subtaskId: s1.id }), ErrorCodes.NOT_FOUND);
  await refusal(t.ag.w1!.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: '01900000-0000-7000-8000-000000000000' }), ErrorCodes.NOT_FOUND);
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'nothing was written');

  const done = await t.ag.w1!.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: s1.id, result: { ok: 1 } });
  assert.equal([done.status, done.result, done.assignedTo], ['completed', { ok: 1 }, 'w1']);
  assert.ok(done.acceptedAt && done.startedAt && done.completedAt, 'accepted and started on the way');
  const types = (await t.lead.call('task.timeline', { taskId: s1.id })).items.map((x) => x.type);
  assert.equal(types.slice(-3), ['task.accept', 'task.start', 'task.complete']);
  await refusal(t.ag.w1!.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: s1.id, result: 'again' }), ErrorCodes.ILLEGAL_TRANSITION);
  // An admin may submit for an agent; from in_progress too.
  await t.ag.w2!.call('task.accept', { taskId: r.subtasks[1]!.id });
  await t.ag.w2!.call('task.start', { taskId: r.subtasks[1]!.id });
  await t.lead.call('task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: r.subtasks[1]!.id, result: { ok: 2 } });
  assert.is((await settledParent(t.lead, r.task.id)).status, 'completed');
});

test('task.tree nests subtasks to the requested depth, and task.cancelTree cancels everything unfinished below a task', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', {
    type: 'tree',
    title: 'root',
    coordination: 'sequential',
    completion: { mode: 'all' },
    subtasks: subs(3),
  });
  const ids = r.task.distribution!.subtasks.map((s) => s.id);
  const grandchild = await t.ag.w1!.call('task.create', { type: 'tree', title: 'helper', parentTaskId: ids[0]! });
  const deep = await t.eye.call('task.tree', { taskId: r.task.id });
  assert.equal(deep.children[0]!.children.map((c) => c.task.id), [grandchild.id]);
  const shallow = await t.eye.call('task.tree', { taskId: r.task.id, depth: 1 });
  assert.equal([shallow.children.length, shallow.children[0]!.children.length], [3, 0]);

  await refusal(t.ag.w2!.call('task.cancelTree', { taskId: r.task.id }), ErrorCodes.FORBIDDEN);
  await refusal(t.eye.call('task.cancelTree', { taskId: r.task.id }), ErrorCodes.FORBIDDEN);
  assert.is(await statusOf(t.lead, r.task.id), 'in_progress');
  const c = await t.lead.call('task.cancelTree', { taskId: r.task.id, reason: 'plans changed' });
  assert.is(c.task.status, 'cancelled');
  assert.ok(c.cancelled >= 1);
  for (const id of [r.task.id, ids[0]!, grandchild.id]) assert.is(await statusOf(t.lead, id), 'cancelled');
  // Those never started end cancelled too (and so become visible as cancelled tasks).
  await waitFor(async () => {
    const tree = await t.eye.call('task.tree', { taskId: r.task.id });
    assert.equal(tree.children.map(nodeStatus), ['cancelled', 'cancelled', 'cancelled']);
    return true;
  });
  assert.equal((await t.lead.call('task.cancelTree', { taskId: r.task.id })).cancelled, 0, 'a second call finds nothing to cancel');
  assert.is((await t.lead.call('agent.get', { agentId: 'w1' })).load, 0);
});

test('all or nothing: a subtask refused by a validation rule refuses the whole tree, and nothing of it is ever visible', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('rule.register', { name: 'no-poison', category: 'task.validation', expression: "task.title != 'poison'", message: 'Poison is not a task.' });
  const head = await ctx.ts.store.headPosition(t.tenant);
  const e = await refusal(
    t.lead.call('task.createDistributed', {
      type: 'tainted',
      title: 'root',
      coordination: 'parallel',
      completion: { mode: 'all' },
      subtasks: [{ title: 'fine', assignTo: 'w1' }, { title: 'poison', assignTo: 'w2' }, { title: 'fine too', assignTo: 'w3' }],
    }),
    ErrorCodes.POLICY_DENIED,
  );
  assert.equal([e.data.subtaskIndex, e.data.rule], [1, 'no-poison']);
  assert.match(e.message, /Subtask 2 \("poison"\)/);
  assert.match(e.message, /no-poison/);
  assert.match(e.message, /Poison is not a task\./);

  assert.equal((await t.eye.call('task.search', { type: 'tainted', archived: 'any' })).items, []);
  assert.is((await t.eye.call('task.stats', {})).total, 0);
  for (const w of ['w1', 'w2', 'w3']) {
    assert.equal((await t.ag[w]!.call('task.listForAgent', {})).items, []);
    assert.is((await t.lead.call('agent.get', { agentId: w })).load, 0);
  }
  // Nothing of the tree was published; the store holds the staged parts and their removal, and
  // none of them can be read.
  const published = await ctx.ts.store.readTopic(t.tenant, 'tenant', head, 1000);
  assert.equal(published.filter((x) => x.kind === 'task'), [], 'no event of the refused tree reached the tenant topic');
  const stored = (await ctx.ts.store.readFeed(0, 100_000)).filter((x) => x.tenant === t.tenant && x.kind === 'task');
  const touched = new Set(stored.map((x) => x.actorId));
  assert.ok(touched.size >= 2, 'the parent and the first subtask were staged before the refusal');
  for (const id of touched) {
    await refusal(t.lead.call('task.get', { taskId: id }), ErrorCodes.NOT_FOUND);
    await refusal(t.lead.call('task.tree', { taskId: id }), ErrorCodes.NOT_FOUND);
  }

  // A subtask offered to an unknown agent is refused the same way, naming its index.
  const nf = await refusal(
    t.lead.call('task.createDistributed', {
      type: 'tainted',
      title: 'root 2',
      coordination: 'parallel',
      completion: { mode: 'all' },
      subtasks: [{ title: 'a', assignTo: 'w1' }, { title: 'b', assignTo: 'w2' }, { title: 'c', assignTo: 'ghost' }],
    }),
    ErrorCodes.NOT_FOUND,
  );
  assert.is(nf.data.subtaskIndex, 2);
  assert.match(nf.message, /ghost/);
  assert.equal((await t.eye.call('task.search', { type: 'tainted', archived: 'any' })).items, []);
  // The parent itself refused: nothing written at all.
  const h2 = await ctx.ts.store.headPosition(t.tenant);
  const root = await refusal(
    t.lead.call('task.createDistributed', { type: 'tainted', title: 'poison', coordination: 'parallel', completion: { mode: 'all' }, subtasks: [{ title: 'ok' }] }),
    ErrorCodes.POLICY_DENIED,
  );
  assert.is(root.data.subtaskIndex, undefined);
  assert.is(await ctx.ts.store.headPosition(t.tenant), h2);
});

test('a subscriber to the tenant feed sees no event of a tree that was refused', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('rule.register', { name: 'no-poison', category: 'task.validation', expression: "task.title != 'poison'" });
  const feed: ActorEvent[] = [];
  await t.eye.subscribe('tenant', (e) => feed.push(e));
  await refusal(
    t.lead.call('task.createDistributed', {
      type: 'tainted',
      title: 'root',
      coordination: 'parallel',
      completion: { mode: 'all' },
      subtasks: [{ title: 'fine', assignTo: 'w1' }, { title: 'poison', assignTo: 'w2' }],
    }),
    ErrorCodes.POLICY_DENIED,
  );
  const marker = await t.lead.call('task.create', { type: 'marker', title: 'after' });
  await waitFor(() => feed.some((x) => x.actorId === marker.id));
  assert.equal(feed.filter((x) => x.actorId !== marker.id).map((x) => `${x.type} ${x.actorId}`), [], 'the tenant feed showed nothing of the tree');
  const replayed: ActorEvent[] = [];
  await t.eye.subscribe('tenant', (e) => replayed.push(e), { fromPosition: 0 });
  await waitFor(() => replayed.some((x) => x.actorId === marker.id));
  assert.equal(replayed.filter((x) => x.kind === 'task' && x.actorId !== marker.id).map((x) => x.type), [], 'nor does a replay of the feed');
});

test('refuses impossible shapes with INVALID_PARAMS before writing anything', async (ctx) => {
  const t = await team(ctx);
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(t.tenant, 'lead', ['admin']));
  const base = { type: 'shape', title: 'shape', coordination: 'parallel', completion: { mode: 'all' }, subtasks: [{ title: 'a' }, { title: 'b' }] };
  const head = await ctx.ts.store.headPosition(t.tenant);
  const cases: [string, Record<string, unknown>, RegExp | null][] = [
    ['map_reduce with one subtask', { ...base, coordination: 'map_reduce', subtasks: [{ title: 'only' }] }, /at least two subtasks/],
    ['threshold without a threshold', { ...base, completion: { mode: 'threshold' } }, /needs completion.threshold/],
    ['threshold above the subtask count', { ...base, completion: { mode: 'threshold', threshold: 3 } }, /more than the 2 subtasks/],
    ['threshold above the mappers of a map_reduce', { ...base, coordination: 'map_reduce', completion: { mode: 'threshold', threshold: 2 } }, /more than the 1 subtasks/],
    ['a threshold with another mode', { ...base, completion: { mode: 'all', threshold: 1 } }, /only to completion mode threshold/],
    ['threshold zero', { ...base, completion: { mode: 'threshold', threshold: 0 } }, null],
    ['no subtasks', { ...base, subtasks: [] }, null],
    ['101 subtasks', { ...base, subtasks: Array.from({ length: 101 }, (_, i) => ({ title: `s${i}` })) }, null],
    ['an unknown coordination', { ...base, coordination: 'chaos' }, null],
    ['an unknown completion mode', { ...base, completion: { mode: 'most' } }, null],
    ['an unknown aggregation', { ...base, aggregation: 'average' }, null],
    ['an unknown field', { ...base, colour: 'red' }, null],
    ['an unknown subtask field', { ...base, subtasks: [{ title: 'a', parentTaskId: 'x' }] }, null],
    ['a subtask without a title', { ...base, subtasks: [{ type: 'x' }] }, null],
    ['a wrong type', { ...base, timeoutSeconds: '10' }, null],
    ['subtasks not an array', { ...base, subtasks: { title: 'a' } }, null],
    ['a bad subtask strategy', { ...base, subtasks: [{ title: 'a', assignmentStrategy: 'luck' }] }, null],
  ];
  for (const [what, params, message] of cases) {
    const r = await raw.call('task.createDistributed', params);
    assert.is(r.error?.code, ErrorCodes.INVALID_PARAMS, `${what}: ${JSON.stringify(r).slice(0, 300)}`);
    if (message) assert.match(r.error!.message, message, what);
  }
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'nothing was written');
  assert.ok(raw.open);
  await raw.close();
});

test('an idempotency key returns the same tree for the same params and refuses different params', async (ctx) => {
  const t = await team(ctx);
  const spec: Spec = { type: 'idem', title: 'once', coordination: 'parallel', completion: { mode: 'all' }, subtasks: subs(2), idempotencyKey: 'tree-1' };
  const first = await t.lead.call('task.createDistributed', spec);
  await submit(t, first.task.id, first.subtasks[0]!, 'done');
  const again = await t.lead.call('task.createDistributed', { ...spec, subtasks: subs(2).map((s) => ({ assignTo: s.assignTo, title: s.title })) });
  assert.is(again.task.id, first.task.id);
  assert.equal(again.subtasks.map((s) => s.id), first.subtasks.map((s) => s.id));
  assert.is(again.subtasks[0]!.status, 'completed', 'the tree as it is now');
  assert.is((await t.eye.call('task.stats', {})).total, 3, 'one parent, two subtasks');
  const head = await ctx.ts.store.headPosition(t.tenant);
  const e = await refusal(t.lead.call('task.createDistributed', { ...spec, title: 'twice?' }), ErrorCodes.IDEMPOTENCY_MISMATCH);
  assert.is(e.data.idempotencyKey, 'tree-1');
  assert.is(await ctx.ts.store.headPosition(t.tenant), head);
  // Keys belong to their principal.
  const mine = await t.ag.w5!.call('task.createDistributed', spec);
  assert.is.not(mine.task.id, first.task.id);
  // Concurrent first uses of one key still make one tree.
  const both = await Promise.all([1, 2].map(() => t.lead.call('task.createDistributed', { ...spec, idempotencyKey: 'tree-2' })));
  assert.is(both[0].task.id, both[1].task.id);
  assert.is((await t.eye.call('task.search', { type: 'idem', limit: 100 })).items.filter((x) => x.distribution !== null).length, 3);
});

test('refuses other bad input to the tree methods with a clear error; other tenants\' trees look nonexistent', async (ctx) => {
  const t = await team(ctx);
  const r = await t.lead.call('task.createDistributed', { type: 'b', title: 'mine', coordination: 'parallel', completion: { mode: 'all' }, subtasks: subs(1) });
  const other = await ctx.ts.client(`${t.tenant}-x`, 'boss', ['admin']);
  await registerAgents(ctx.ts, `${t.tenant}-x`, { w1: {} });
  const theirs = await other.call('task.createDistributed', { type: 'b', title: 'theirs', coordination: 'parallel', completion: { mode: 'all' }, subtasks: subs(1) });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(t.tenant, 'lead', ['admin']));
  const head = await ctx.ts.store.headPosition(t.tenant);
  for (const [method, params] of [
    ['task.tree', { taskId: r.task.id, depth: 0 }],
    ['task.tree', { taskId: r.task.id, depth: 6 }],
    ['task.tree', { taskId: r.task.id, all: true }],
    ['task.tree', {}],
    ['task.cancelTree', { taskId: r.task.id, reason: 5 }],
    ['task.cancelTree', { taskId: 5 }],
    ['task.submitSubtaskResult', { subtaskId: r.subtasks[0]!.id }],
    ['task.submitSubtaskResult', { parentTaskId: r.task.id, subtaskId: r.subtasks[0]!.id, score: 1 }],
  ] as const) {
    const res = await raw.call(method, params);
    assert.is(res.error?.code, ErrorCodes.INVALID_PARAMS, `${method} ${JSON.stringify(params)}: ${JSON.stringify(res)}`);
  }
  const nobody = '01900000-0000-7000-8000-000000000000';
  for (const id of [nobody, theirs.task.id]) {
    await refusal(t.lead.call('task.tree', { taskId: id }), ErrorCodes.NOT_FOUND);
    await refusal(t.lead.call('task.cancelTree', { taskId: id }), ErrorCodes.NOT_FOUND);
  }
  await refusal(t.lead.call('task.submitSubtaskResult', { parentTaskId: theirs.task.id, subtaskId: theirs.subtasks[0]!.id }), ErrorCodes.NOT_FOUND);
  await refusal(t.eye.call('task.createDistributed', { type: 'b', title: 'x', coordination: 'parallel', completion: { mode: 'all' }, subtasks: [{ title: 'y' }] }), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'nothing was written');
  assert.is(await statusOf(other, theirs.task.id), 'in_progress');
  assert.equal((await other.call('task.get', { taskId: theirs.subtasks[0]!.id })).status, 'assigned');
  assert.ok(raw.open);
  assert.is((await raw.ok<TaskTree>('task.tree', { taskId: r.task.id })).children.length, 1);
  await raw.close();
});

test.run();

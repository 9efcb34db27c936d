import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { streamOf } from '../../actors/ActorKind.js';
import { replay } from '../../actors/replay.js';
import { taskMachine } from '../../machines/taskMachine.js';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import { INSPECT_MAX_EVENTS } from '../../protocol/inspect.js';
import { waitFor } from '../helpers/waitFor.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
  n: number;
}

/** One tenant's people: an admin, an agent that works tasks, and an observer. */
interface Team {
  tenant: string;
  lead: TroupeClient;
  worker: TroupeClient;
  eye: TroupeClient;
}

const test = suite<Ctx>('actor.inspect: an actor at any version, replayed from its stored events');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.dir = tempDir();
  ctx.ts = await startServer({ store: sqliteStore(ctx.dir.dir) });
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

async function team(ctx: Ctx): Promise<Team> {
  const tenant = `in${++ctx.n}`;
  const t: Team = {
    tenant,
    lead: await ctx.ts.client(tenant, 'lead', ['admin']),
    worker: await ctx.ts.client(tenant, 'worker', ['agent']),
    eye: await ctx.ts.client(tenant, 'eye', ['observer']),
  };
  await t.worker.call('agent.register', { capabilities: ['review'], maxConcurrentTasks: 10 });
  return t;
}

/** A task driven through its whole lifecycle; returns its id. */
async function lifecycle(t: Team): Promise<string> {
  const task = await t.lead.call('task.create', { type: 'review', title: 'Review PR 7' });
  await t.lead.call('task.assign', { taskId: task.id, agentId: 'worker' });
  await t.worker.call('task.accept', { taskId: task.id });
  await t.worker.call('task.start', { taskId: task.id });
  await t.worker.call('task.complete', { taskId: task.id, result: { approved: true } });
  return task.id;
}

test('shows the state after each event of a task, as replaying its stream does', async (ctx) => {
  const t = await team(ctx);
  const id = await lifecycle(t);
  const expected = [
    ['task.create', { live: 'pending' }, 'pending'],
    ['task.assign', { live: 'assigned' }, 'assigned'],
    ['task.accept', { live: 'accepted' }, 'accepted'],
    ['task.start', { live: 'in_progress' }, 'in_progress'],
    ['task.complete', 'completed', 'completed'],
  ] as const;
  const stored = await ctx.ts.store.readStream(streamOf({ tenant: t.tenant, kind: 'task', id }));
  assert.is(stored.length, expected.length);
  let previous: unknown = 'draft';
  for (let v = 1; v <= expected.length; v++) {
    const [type, value, status] = expected[v - 1]!;
    const r = await t.eye.call('actor.inspect', { kind: 'task', id, version: v });
    assert.equal([r.kind, r.id, r.version, r.headVersion], ['task', id, v, expected.length]);
    assert.equal([r.stateValue, r.status, r.exists], [value, status, true], `after ${type}`);
    assert.equal(r.previousStateValue, previous, `before ${type}`);
    assert.equal(r.stateValue, replay(taskMachine, stored.slice(0, v)).value);
    assert.equal(r.events.map((e) => e.type), expected.slice(0, v).map((x) => x[0]));
    assert.equal(r.events.map((e) => e.version), expected.slice(0, v).map((_, i) => i + 1));
    const last = r.events[v - 1]!;
    assert.equal([last.kind, last.actorId, last.status, last.principal], ['task', id, status, v <= 2 ? 'lead' : 'worker']);
    assert.equal([r.resource?.status, r.resource?.version], [status, v]);
    assert.is(r.truncated, false);
    assert.is(r.definition, null);
    previous = value;
  }
  const head = await t.eye.call('actor.inspect', { kind: 'task', id });
  assert.is(head.version, expected.length);
  assert.equal(head.resource, await t.eye.call('task.get', { taskId: id }));
  assert.equal((head.resource as { result: unknown }).result, { approved: true });
  assert.equal(head.events, (await t.eye.call('task.timeline', { taskId: id })).items);
});

test('any principal of the tenant may inspect the kinds all of them may read: agents and observers too', async (ctx) => {
  const t = await team(ctx);
  const id = await lifecycle(t);
  const rule = await t.lead.call('rule.register', { name: 'small', category: 'task.validation', expression: 'size(task.title) < 100' });
  for (const c of [t.lead, t.worker, t.eye]) {
    assert.is((await c.call('actor.inspect', { kind: 'task', id })).status, 'completed');
    const agent = await c.call('actor.inspect', { kind: 'agent', id: 'worker' });
    assert.equal([agent.stateValue, agent.resource?.id], ['registered', 'worker']);
    const r = await c.call('actor.inspect', { kind: 'rule', id: rule.id });
    assert.equal([r.status, r.resource], ['enabled', await c.call('rule.get', { ruleId: rule.id })]);
  }
});

test('workspaces and documents, whose reads depend on membership, are for admins only, existing or not', async (ctx) => {
  const t = await team(ctx);
  const ws = await t.lead.call('workspace.create', { name: 'war room', visibility: 'private' });
  const admin = await t.lead.call('actor.inspect', { kind: 'workspace', id: ws.id });
  assert.equal([admin.exists, admin.resource?.id], [true, ws.id]);
  for (const c of [t.worker, t.eye]) {
    const real = await refusal(c.call('actor.inspect', { kind: 'workspace', id: ws.id }), ErrorCodes.FORBIDDEN);
    const made = await refusal(c.call('actor.inspect', { kind: 'workspace', id: 'no-such-room' }), ErrorCodes.FORBIDDEN);
    assert.is(real.message, made.message);
    await refusal(c.call('actor.inspect', { kind: 'document', id: 'notes' }), ErrorCodes.FORBIDDEN);
  }
});

test('an execution comes with the definition it runs and its steps at each version', async (ctx) => {
  const t = await team(ctx);
  const wf = await t.lead.call('workflow.create', {
    name: 'ship',
    type: 'sequential',
    steps: [
      { id: 'fetch', action: 'git.fetch', agent: 'worker' },
      { id: 'build', action: 'build', agent: 'worker' },
    ],
  });
  const x = await t.lead.call('workflow.execute', { workflowId: wf.id, input: {} });
  await t.lead.call('execution.completeStep', { executionId: x.id, stepId: 'fetch', output: { commit: 'abc' } });
  // The next step starts on its own after the reply: compare once the execution stands still.
  await waitFor(async () => (await t.eye.call('execution.get', { executionId: x.id })).steps[1]?.status === 'running');
  const r = await t.eye.call('actor.inspect', { kind: 'execution', id: x.id });
  assert.equal(r.resource, await t.eye.call('execution.get', { executionId: x.id }));
  assert.equal(r.definition?.steps.map((s) => s.id), ['fetch', 'build']);
  assert.equal([r.definition?.type, r.definition?.name, r.definition?.tenantId, r.definition?.createdBy], ['sequential', 'ship', t.tenant, 'lead']);
  const steps = (v: { resource: Record<string, unknown> | null }) => (v.resource!.steps as { id: string; status: string }[]).map((s) => `${s.id}:${s.status}`);
  assert.equal(steps(r).slice(0, 1), ['fetch:completed']);
  const first = await t.eye.call('actor.inspect', { kind: 'execution', id: x.id, version: 1 });
  assert.equal([first.status, steps(first)], ['running', ['fetch:queued', 'build:pending']]);
  const workflow = await t.eye.call('actor.inspect', { kind: 'workflow', id: wf.id });
  assert.equal([workflow.definition, (workflow.resource as { steps: unknown[] }).steps.length], [null, 2]);
});

test("other tenants' actors are not found, exactly like ids that never existed and deleted actors", async (ctx) => {
  const a = await team(ctx);
  const b = await team(ctx);
  const id = await lifecycle(a);
  const foreign = await refusal(b.lead.call('actor.inspect', { kind: 'task', id }), ErrorCodes.NOT_FOUND);
  const missing = await refusal(b.lead.call('actor.inspect', { kind: 'task', id: 'no-such-task' }), ErrorCodes.NOT_FOUND);
  assert.equal(foreign.message.replace(id, 'X'), missing.message.replace('no-such-task', 'X'));
  assert.equal(Object.keys(foreign.data as object).sort(), Object.keys(missing.data as object).sort());
  await refusal(b.eye.call('actor.inspect', { kind: 'task', id, version: 1 }), ErrorCodes.NOT_FOUND);
  await refusal(a.eye.call('actor.inspect', { kind: 'execution', id }), ErrorCodes.NOT_FOUND);
  const gone = await a.lead.call('task.create', { type: 'review', title: 'Delete me' });
  await a.lead.call('task.delete', { taskId: gone.id });
  await refusal(a.eye.call('actor.inspect', { kind: 'task', id: gone.id }), ErrorCodes.NOT_FOUND);
});

test('refuses malformed, wrongly typed and out-of-range params with INVALID_PARAMS, and changes nothing', async (ctx) => {
  const t = await team(ctx);
  const id = await lifecycle(t);
  const stream = streamOf({ tenant: t.tenant, kind: 'task', id });
  const before = [await ctx.ts.store.streamInfo(stream), await t.lead.call('task.get', { taskId: id })];
  const bad: unknown[] = [
    {},
    { kind: 'task' },
    { id },
    { kind: 'task', id, version: 0 },
    { kind: 'task', id, version: -1 },
    { kind: 'task', id, version: 1.5 },
    { kind: 'task', id, version: '2' },
    { kind: 'task', id, version: 6 },
    { kind: 'task', id, extra: true },
    { kind: 'Task', id },
    { kind: 'spaceship', id },
    { kind: 'task', id: `${id}/x` },
    { kind: 'task', id: '' },
    { kind: 'task', id: 'x'.repeat(129) },
    { kind: 7, id },
    { kind: 'task', id: { $ne: null } },
    [],
  ];
  for (const params of bad) {
    const e = await refusal(t.lead.call('actor.inspect', params as never), ErrorCodes.INVALID_PARAMS);
    assert.ok(e.message.length > 10, e.message);
  }
  const unknownKind = await refusal(t.lead.call('actor.inspect', { kind: 'spaceship', id }), ErrorCodes.INVALID_PARAMS);
  assert.ok((unknownKind.data as { kinds: string[] }).kinds.includes('execution'));
  const tooFar = await refusal(t.lead.call('actor.inspect', { kind: 'task', id, version: 6 }), ErrorCodes.INVALID_PARAMS);
  assert.equal((tooFar.data as { headVersion: number }).headVersion, 5);
  assert.equal([await ctx.ts.store.streamInfo(stream), await t.lead.call('task.get', { taskId: id })], before);
});

test('an unauthenticated connection cannot inspect', async (ctx) => {
  const t = await team(ctx);
  const id = await lifecycle(t);
  const raw = await RawSocket.open(ctx.ts.url);
  try {
    const r = await raw.call('actor.inspect', { kind: 'task', id });
    assert.is(r.error?.code, ErrorCodes.UNAUTHENTICATED);
  } finally {
    await raw.close();
  }
});

test(`returns at most the last ${INSPECT_MAX_EVENTS} events and says so, still replaying them all`, async (ctx) => {
  const t = await team(ctx);
  const task = await t.lead.call('task.create', { type: 'review', title: 'Long one', assignTo: 'worker' });
  await t.worker.call('task.accept', { taskId: task.id });
  await t.worker.call('task.start', { taskId: task.id });
  for (let i = 0; i < INSPECT_MAX_EVENTS; i += 50) {
    await Promise.all(Array.from({ length: 50 }, (_, k) => t.worker.call('task.progress', { taskId: task.id, percent: ((i + k) % 100) + 1 })));
  }
  await t.worker.call('task.complete', { taskId: task.id, result: 'done' });
  const head = INSPECT_MAX_EVENTS + 4;
  const r = await t.eye.call('actor.inspect', { kind: 'task', id: task.id });
  assert.equal([r.version, r.headVersion, r.status, r.truncated, r.events.length], [head, head, 'completed', true, INSPECT_MAX_EVENTS]);
  assert.equal([r.events[0]!.version, r.events.at(-1)!.version], [head - INSPECT_MAX_EVENTS + 1, head]);
  const early = await t.eye.call('actor.inspect', { kind: 'task', id: task.id, version: 2 });
  assert.equal([early.status, early.truncated, early.events.length], ['accepted', false, 2]);
});

test("the tenant's field policy hides fields from inspections as from reads", async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', {
    rules: [
      { kind: 'task', path: 'result', read: ['creator'], write: ['assignee'] },
      { kind: 'workflow', path: 'steps', read: ['admin'], write: ['admin'] },
    ],
  });
  const id = await lifecycle(t);
  const seen = await t.eye.call('actor.inspect', { kind: 'task', id });
  assert.ok(!('result' in (seen.resource as object)), 'the resource hides result');
  const complete = seen.events.find((e) => e.type === 'task.complete')!;
  assert.ok(!('result' in complete.data), 'the event hides result');
  assert.equal(seen.resource, await t.eye.call('task.get', { taskId: id }));
  const own = await t.lead.call('actor.inspect', { kind: 'task', id });
  assert.equal((own.resource as { result: unknown }).result, { approved: true });

  const wf = await t.lead.call('workflow.create', { name: 'ship', type: 'sequential', steps: [{ id: 'fetch', action: 'git.fetch', agent: 'worker' }] });
  const x = await t.lead.call('workflow.execute', { workflowId: wf.id, input: {} });
  const hidden = await t.eye.call('actor.inspect', { kind: 'execution', id: x.id });
  assert.ok(hidden.definition !== null && !('steps' in hidden.definition), 'the definition hides steps');
  assert.equal((await t.lead.call('actor.inspect', { kind: 'execution', id: x.id })).definition?.steps.length, 1);
});

test.run();

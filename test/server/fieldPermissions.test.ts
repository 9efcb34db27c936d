import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { FieldRule } from '../../protocol/fieldPolicy.js';
import type { ActorEvent, Task } from '../../protocol/model.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
  n: number;
}

/** One tenant's people: an admin, a task's author, the agent that works it, a bystander agent and an observer. */
interface Team {
  tenant: string;
  lead: TroupeClient;
  author: TroupeClient;
  worker: TroupeClient;
  other: TroupeClient;
  eye: TroupeClient;
}

const SECRETS: FieldRule = { kind: 'task', path: 'parameters.secrets', read: ['creator'], write: ['creator'] };
const RESULT: FieldRule = { kind: 'task', path: 'result', read: ['creator', 'assignee'], write: ['assignee'] };

const test = suite<Ctx>('field permissions over WebSocket');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.dir = tempDir();
  ctx.ts = await startServer({ store: sqliteStore(ctx.dir.dir) });
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

/** A fresh tenant per test, so policies and counts do not leak between tests. */
async function team(ctx: Ctx): Promise<Team> {
  const tenant = `fp${++ctx.n}`;
  const t: Team = {
    tenant,
    lead: await ctx.ts.client(tenant, 'lead', ['admin']),
    author: await ctx.ts.client(tenant, 'author', ['agent']),
    worker: await ctx.ts.client(tenant, 'worker', ['agent']),
    other: await ctx.ts.client(tenant, 'other', ['agent']),
    eye: await ctx.ts.client(tenant, 'eye', ['observer']),
  };
  await t.worker.call('agent.register', { capabilities: ['review'] });
  return t;
}

/** A task by the author, assigned to the worker, with a secret among its parameters. */
async function secretTask(t: Team): Promise<Task> {
  return t.author.call('task.create', {
    type: 'review',
    title: 'Review the vault',
    parameters: { repo: 'vault', secrets: { token: 's3cr3t' } },
    assignTo: 'worker',
  });
}

function collect(into: ActorEvent[]) {
  return (e: ActorEvent) => {
    into.push(e);
  };
}

test('fieldPolicy.set refuses bad input and non-admins, and changes nothing', async (ctx) => {
  const t = await team(ctx);
  const head = await ctx.ts.store.headPosition(t.tenant);
  const bad: [unknown, RegExp][] = [
    [[{ kind: 'agent', path: 'metadata', read: [], write: [] }], /rules\.0\.kind/],
    [[{ kind: 'task', path: 'parameters..secrets', read: [], write: [] }], /rules\.0\.path must be 1-8 keys/],
    [[{ kind: 'task', path: '1parameters', read: [], write: [] }], /rules\.0\.path must be 1-8 keys/],
    [[{ kind: 'task', path: 'parameters.', read: [], write: [] }], /rules\.0\.path must be 1-8 keys/],
    [[{ kind: 'task', path: 'a.b.c.d.e.f.g.h.i', read: [], write: [] }], /rules\.0\.path must be 1-8 keys/],
    [[{ kind: 'task', path: 'createdBy', read: [], write: [] }], /not a field a task policy can cover/],
    [[{ kind: 'task', path: 'nonsense.x', read: [], write: [] }], /not a field a task policy can cover/],
    [[{ kind: 'task', path: 'result', read: ['boss'], write: [] }], /rules\.0\.read/],
    [[{ kind: 'task', path: 'result', read: ['agent', 'agent'], write: [] }], /lists a role twice/],
    [[{ kind: 'task', path: 'result', read: [] }], /rules\.0\.write/],
    [[{ kind: 'task', path: 'result', read: [], write: [], extra: 1 }], /rules\.0/],
    [[{ kind: 'workflow', path: 'steps.input', read: ['assignee'], write: [] }], /workflows have no assignee/],
    [[SECRETS, { ...SECRETS, read: [] }], /repeats task parameters\.secrets/],
    ['all of them', /rules/],
    [Array.from({ length: 201 }, (_, i) => ({ kind: 'task', path: `parameters.p${i}`, read: [], write: [] })), /rules/],
  ];
  for (const [rules, message] of bad) {
    const e = await refusal(t.lead.call('fieldPolicy.set', { rules } as never), ErrorCodes.INVALID_PARAMS);
    assert.match(e.message, message, JSON.stringify(rules).slice(0, 120));
  }
  for (const c of [t.author, t.eye]) {
    const e = await refusal(c.call('fieldPolicy.set', { rules: [SECRETS] }), ErrorCodes.FORBIDDEN);
    assert.match(e.message, /Only admin principals may set the field policy/);
  }
  await refusal(t.lead.call('fieldPolicy.set', { rules: [SECRETS], expectedVersion: 3 }), ErrorCodes.VERSION_MISMATCH);
  assert.equal(await t.eye.call('fieldPolicy.get', {}), { id: 'tenant', tenantId: t.tenant, rules: [], version: 0, updatedBy: null, updatedAt: null });
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'no event was stored');
  // With no policy every field is visible to everyone.
  const task = await secretTask(t);
  assert.equal((await t.eye.call('task.get', { taskId: task.id })).parameters, task.parameters);
});

test('an admin sets the policy and every principal of the tenant can read it', async (ctx) => {
  const t = await team(ctx);
  const p = await t.lead.call('fieldPolicy.set', { rules: [SECRETS, RESULT] });
  assert.is(p.id, 'tenant');
  assert.is(p.tenantId, t.tenant);
  assert.is(p.version, 1);
  assert.is(p.updatedBy, 'lead');
  assert.equal(p.rules, [SECRETS, RESULT]);
  for (const c of [t.author, t.eye, t.lead]) assert.equal(await c.call('fieldPolicy.get', {}), p);
  const p2 = await t.lead.call('fieldPolicy.set', { rules: [SECRETS], expectedVersion: 1 });
  assert.is(p2.version, 2);
  assert.equal(p2.rules, [SECRETS]);
});

test('hidden fields are omitted from every task read of an observer or another agent; the creator and the admin see them', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [SECRETS] });
  const task = await secretTask(t);
  assert.equal(task.parameters, { repo: 'vault', secrets: { token: 's3cr3t' } }, 'the creator sees its own write');
  const [second] = (await t.author.call('task.createBatch', { tasks: [{ type: 'review', title: 'Another', parameters: { secrets: 'x', keep: 1 } }] })).items;
  assert.ok(second?.ok);

  for (const c of [t.eye, t.other, t.worker]) {
    const got = await c.call('task.get', { taskId: task.id });
    assert.equal(got.parameters, { repo: 'vault' }, 'task.get');
    assert.is(got.title, 'Review the vault', 'other fields stay');
    assert.is(got.version, task.version);
    const batch = await c.call('task.getBatch', { taskIds: [task.id] });
    assert.equal(batch.items[0]!.parameters, { repo: 'vault' }, 'task.getBatch');
    const found = await c.call('task.search', { query: 'vault' });
    assert.equal(found.items.map((x) => x.parameters), [{ repo: 'vault' }], 'task.search');
    const all = await c.call('task.search', {});
    assert.not.ok(JSON.stringify(all).includes('s3cr3t'), 'task.search without filters');
    assert.not.ok(JSON.stringify(all).includes('"secrets"'));
    const timeline = await c.call('task.timeline', { taskId: task.id });
    const created = timeline.items.find((e) => e.type === 'task.create')!;
    assert.equal(created.data.parameters, { repo: 'vault' }, 'task.timeline');
    for (const format of ['json', 'csv'] as const) {
      const report = await c.call('task.report', { format });
      assert.not.ok(report.content.includes('s3cr3t'), `task.report ${format}`);
      assert.is(report.rows, 2);
    }
    const json = JSON.parse((await c.call('task.report', { format: 'json' })).content) as Task[];
    assert.equal(json.map((x) => x.parameters).sort((a, b) => Object.keys(a).length - Object.keys(b).length), [{ keep: 1 }, { repo: 'vault' }]);
  }
  const listed = await t.worker.call('task.listForAgent', {});
  assert.equal(listed.items.map((x) => x.parameters), [{ repo: 'vault' }], 'task.listForAgent');
  const accepted = await t.worker.call('task.accept', { taskId: task.id });
  assert.equal(accepted.parameters, { repo: 'vault' }, 'replies of writes are redacted too');

  for (const c of [t.author, t.lead]) {
    assert.equal((await c.call('task.get', { taskId: task.id })).parameters, task.parameters);
    const timeline = await c.call('task.timeline', { taskId: task.id });
    assert.equal(timeline.items.find((e) => e.type === 'task.create')!.data.parameters, task.parameters);
    assert.ok((await c.call('task.report', { format: 'json' })).content.includes('s3cr3t'));
    assert.ok(JSON.stringify(await c.call('task.search', {})).includes('s3cr3t'));
  }
});

test('subscription events omit hidden fields per subscriber, live and when catching up', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [SECRETS, RESULT] });
  const seen = { eye: [] as ActorEvent[], lead: [] as ActorEvent[], worker: [] as ActorEvent[], other: [] as ActorEvent[] };
  await t.eye.subscribe('tenant', collect(seen.eye));
  await t.lead.subscribe('tenant', collect(seen.lead));
  await t.worker.subscribe('inbox:worker', collect(seen.worker));
  const task = await secretTask(t);
  await t.other.subscribe(`task:${task.id}`, collect(seen.other));
  await t.worker.call('task.accept', { taskId: task.id });
  await t.worker.call('task.start', { taskId: task.id });
  await t.worker.call('task.complete', { taskId: task.id, result: { verdict: 'approve', note: 'the vault is fine' } });

  const created = (events: ActorEvent[]) => events.find((e) => e.type === 'task.create' && e.actorId === task.id);
  const completed = (events: ActorEvent[]) => events.find((e) => e.type === 'task.complete' && e.actorId === task.id);
  await waitFor(() => completed(seen.eye) && completed(seen.lead) && completed(seen.worker) && completed(seen.other));

  assert.equal(created(seen.lead)!.data.parameters, task.parameters, 'the admin sees everything');
  assert.equal(completed(seen.lead)!.data.result, { verdict: 'approve', note: 'the vault is fine' });
  assert.equal(created(seen.eye)!.data.parameters, { repo: 'vault' }, 'the observer does not see the secret');
  assert.not.ok('result' in completed(seen.eye)!.data, 'nor the result');
  assert.is(completed(seen.eye)!.status, 'completed', 'the rest of the event is intact');
  assert.equal(created(seen.worker)!.data.parameters, { repo: 'vault' }, 'the assignee does not see the secret');
  assert.equal(completed(seen.worker)!.data.result, { verdict: 'approve', note: 'the vault is fine' }, 'but sees the result it may read');
  assert.not.ok('result' in completed(seen.other)!.data, 'another agent sees no result');
  for (const events of [seen.eye, seen.worker, seen.other]) assert.not.ok(JSON.stringify(events).includes('s3cr3t'));
  assert.equal((await t.worker.call('task.get', { taskId: task.id })).result, { verdict: 'approve', note: 'the vault is fine' }, 'the assignee reads the result');
  assert.not.ok('result' in (await t.other.call('task.get', { taskId: task.id })), 'another agent does not');

  // Catching up from position 0 reads the events back from the store: redacted the same way.
  const replayed: ActorEvent[] = [];
  await t.eye.subscribe('tenant', collect(replayed), { fromPosition: 0 });
  await waitFor(() => completed(replayed));
  assert.equal(created(replayed)!.data.parameters, { repo: 'vault' });
  assert.not.ok('result' in completed(replayed)!.data);
  const adminReplay: ActorEvent[] = [];
  await t.lead.subscribe(`task:${task.id}`, collect(adminReplay), { fromPosition: 0 });
  await waitFor(() => completed(adminReplay));
  assert.equal(created(adminReplay)!.data.parameters, task.parameters);
});

test('writes of fields the caller may not write are refused with FORBIDDEN naming the field, and nothing changes', async (ctx) => {
  const t = await team(ctx);
  const DESCRIPTION: FieldRule = { kind: 'task', path: 'description', read: ['admin', 'agent', 'observer'], write: [] };
  const TOKEN: FieldRule = { kind: 'task', path: 'parameters.token', read: ['agent', 'observer'], write: [] };
  await t.lead.call('fieldPolicy.set', { rules: [SECRETS, DESCRIPTION, TOKEN] });
  const task = await t.author.call('task.create', { type: 'review', title: 'Mine', parameters: { a: 1 } });
  await t.lead.call('task.update', { taskId: task.id, parameters: { a: 1, token: 'T' } });
  const before = await t.lead.call('task.get', { taskId: task.id });
  const head = await ctx.ts.store.headPosition(t.tenant);

  const created = await refusal(t.author.call('task.create', { type: 'review', title: 'x', description: 'mine' }), ErrorCodes.FORBIDDEN);
  assert.match(created.message, /only admin write task field description/);
  assert.is(created.data.field, 'description');
  assert.is(created.data.kind, 'task');
  const notCreator = await refusal(
    t.other.call('task.createBatch', { tasks: [{ type: 'review', title: 'fine' }, { type: 'review', title: 'no', parameters: { token: 'x' } }] }),
    ErrorCodes.FORBIDDEN,
  );
  assert.is(notCreator.data.field, 'parameters.token');
  assert.is(notCreator.data.index, 1, 'the batch item is named');
  const updated = await refusal(t.author.call('task.update', { taskId: task.id, description: 'changed' }), ErrorCodes.FORBIDDEN);
  assert.is(updated.data.field, 'description');
  // task.update replaces parameters: leaving the token out would erase it.
  const erased = await refusal(t.author.call('task.update', { taskId: task.id, parameters: { a: 2 } }), ErrorCodes.FORBIDDEN);
  assert.is(erased.data.field, 'parameters.token');
  const distributed = await refusal(
    t.author.call('task.createDistributed', {
      type: 'map',
      title: 'split',
      coordination: 'parallel',
      completion: { mode: 'all' },
      subtasks: [{ title: 'part', description: 'sneaky' }],
    }),
    ErrorCodes.FORBIDDEN,
  );
  assert.is(distributed.data.field, 'description');
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'no event was stored');
  assert.equal(await t.lead.call('task.get', { taskId: task.id }), before, 'the task is unchanged');

  // Writes that leave the protected fields as they are pass.
  const kept = await t.author.call('task.update', { taskId: task.id, parameters: { a: 2, token: 'T' }, title: 'Mine, renamed' });
  assert.equal(kept.parameters, { a: 2, token: 'T' });
  assert.is(kept.title, 'Mine, renamed');
  const own = await t.author.call('task.create', { type: 'review', title: 'with secret', parameters: { secrets: 'ok' } });
  assert.equal(own.parameters, { secrets: 'ok' }, 'the creator may write what the policy lets creators write');
  const admin = await t.lead.call('task.create', { type: 'review', title: 'admin', description: 'admins write everything', parameters: { token: 'A' } });
  assert.is(admin.description, 'admins write everything');
});

test('a result the assignee may not write is refused on completion, and the task stays in progress', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [{ kind: 'task', path: 'result', read: ['creator', 'assignee'], write: ['creator'] }] });
  const task = await secretTask(t);
  await t.worker.call('task.accept', { taskId: task.id });
  const running = await t.worker.call('task.start', { taskId: task.id });
  const e = await refusal(t.worker.call('task.complete', { taskId: task.id, result: { verdict: 'approve' } }), ErrorCodes.FORBIDDEN);
  assert.is(e.data.field, 'result');
  assert.equal(e.data.allowedRoles, ['creator']);
  assert.match(e.message, /only creator and admin write task field result/);
  const now = await t.author.call('task.get', { taskId: task.id });
  assert.is(now.status, 'in_progress');
  assert.is(now.version, running.version);
  assert.is(now.result, null);
  const done = await t.worker.call('task.complete', { taskId: task.id });
  assert.is(done.status, 'completed', 'completing without a result is allowed');
});

test('a policy change takes effect on the next call and the next event', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [SECRETS] });
  const task = await secretTask(t);
  assert.equal((await t.eye.call('task.get', { taskId: task.id })).parameters, { repo: 'vault' });
  const events: ActorEvent[] = [];
  await t.eye.subscribe(`task:${task.id}`, collect(events));

  await t.lead.call('fieldPolicy.set', { rules: [{ ...SECRETS, read: ['creator', 'observer'] }] });
  assert.equal((await t.eye.call('task.get', { taskId: task.id })).parameters, task.parameters, 'the observer may read it now');
  await t.author.call('task.update', { taskId: task.id, parameters: { repo: 'vault', secrets: { token: 'next' } } });
  await waitFor(() => events.find((e) => e.type === 'task.update'));
  assert.equal(events.find((e) => e.type === 'task.update')!.data.changes, { parameters: { repo: 'vault', secrets: { token: 'next' } } });

  await t.lead.call('fieldPolicy.set', { rules: [{ ...SECRETS, read: [] }] });
  assert.equal((await t.author.call('task.get', { taskId: task.id })).parameters, { repo: 'vault' }, 'now even the creator may not');
  await t.author.call('task.update', { taskId: task.id, title: 'renamed', parameters: { repo: 'vault', secrets: { token: 'next' } } });
  await waitFor(() => events.filter((e) => e.type === 'task.update').length === 2);
  assert.equal(events.filter((e) => e.type === 'task.update')[1]!.data.changes, { title: 'renamed', parameters: { repo: 'vault' } });

  await t.lead.call('fieldPolicy.set', { rules: [] });
  assert.equal((await t.other.call('task.get', { taskId: task.id })).parameters, { repo: 'vault', secrets: { token: 'next' } }, 'an empty policy hides nothing');
});

test('roles come from each connection\'s credential', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [{ kind: 'task', path: 'parameters.secrets', read: ['agent'], write: ['agent'] }] });
  const task = await secretTask(t);
  const asObserver = await ctx.ts.client(t.tenant, 'dual', ['observer']);
  const asAgent = await ctx.ts.client(t.tenant, 'dual', ['agent']);
  assert.equal((await asObserver.call('task.get', { taskId: task.id })).parameters, { repo: 'vault' });
  assert.equal((await asAgent.call('task.get', { taskId: task.id })).parameters, task.parameters);
  assert.equal((await asObserver.call('task.get', { taskId: task.id })).parameters, { repo: 'vault' }, 'still hidden on the observer connection');
});

test('another tenant is unaffected by a tenant\'s field policy', async (ctx) => {
  const t = await team(ctx);
  const u = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [SECRETS, { kind: 'task', path: 'description', read: [], write: [] }] });
  const theirs = await secretTask(u);
  assert.equal((await u.eye.call('task.get', { taskId: theirs.id })).parameters, theirs.parameters);
  const described = await u.author.call('task.create', { type: 'review', title: 'd', description: 'free to write' });
  assert.is(described.description, 'free to write');
  assert.is((await u.eye.call('fieldPolicy.get', {})).version, 0);
  await refusal(u.eye.call('task.get', { taskId: (await secretTask(t)).id }), ErrorCodes.NOT_FOUND);
});

test('text filters that could probe a hidden title or description are refused; CSV reports empty hidden columns', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [{ kind: 'task', path: 'title', read: ['creator', 'agent'], write: ['creator', 'agent'] }] });
  await secretTask(t);
  const e = await refusal(t.eye.call('task.search', { query: 'vault' }), ErrorCodes.FORBIDDEN);
  assert.is(e.data.field, 'title');
  await refusal(t.eye.call('task.stats', { query: 'vault' }), ErrorCodes.FORBIDDEN);
  assert.is((await t.eye.call('task.stats', {})).total, 1, 'without the text filter it works');
  const csv = (await t.eye.call('task.report', { format: 'csv' })).content.split('\r\n');
  const header = csv[0]!.split(',');
  const row = csv[1]!.split(',');
  assert.is(row[header.indexOf('title')], '', 'the title cell is empty');
  assert.is(row[header.indexOf('createdBy')], 'author');
  assert.is((await t.worker.call('task.report', { format: 'csv' })).content.split('\r\n')[1]!.split(',')[header.indexOf('title')], 'Review the vault');
  assert.is((await t.worker.call('task.search', { query: 'vault' })).items.length, 1);
});

test('workflow and execution fields are hidden and guarded the same way', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', {
    rules: [
      { kind: 'workflow', path: 'steps.input', read: ['creator'], write: ['admin', 'agent'] },
      { kind: 'execution', path: 'input.apiKey', read: ['creator'], write: ['admin'] },
    ],
  });
  const wf = await t.author.call('workflow.create', {
    name: 'deploy',
    type: 'sequential',
    steps: [{ id: 'ship', action: 'ship', agent: 'worker', input: { target: 'prod' } }],
  });
  assert.equal(wf.steps[0]!.input, { target: 'prod' });
  const seen = await t.eye.call('workflow.get', { workflowId: wf.id });
  assert.is(seen.steps[0]!.id, 'ship');
  assert.not.ok('input' in seen.steps[0]!, 'workflow.get');
  assert.not.ok('input' in (await t.eye.call('workflow.list', {})).items[0]!.steps[0]!, 'workflow.list');
  assert.not.ok('input' in (await t.eye.call('workflow.getVersion', { workflowId: wf.id, version: 1 })).definition.steps[0]!, 'workflow.getVersion');

  const refused = await refusal(t.author.call('workflow.execute', { workflowId: wf.id, input: { apiKey: 'k', region: 'eu' } }), ErrorCodes.FORBIDDEN);
  assert.is(refused.data.field, 'input.apiKey');
  assert.is((await t.lead.call('execution.list', {})).items.length, 0, 'no execution started');
  const run = await t.lead.call('workflow.execute', { workflowId: wf.id, input: { apiKey: 'k', region: 'eu' } });
  assert.equal(run.input, { apiKey: 'k', region: 'eu' });
  for (const c of [t.eye, t.author]) {
    assert.equal((await c.call('execution.get', { executionId: run.id })).input, { region: 'eu' }, 'execution.get');
    assert.equal((await c.call('execution.list', {})).items[0]!.input, { region: 'eu' }, 'execution.list');
  }

  // execution.start carries the workflow's definition too: the workflow's rules apply to it.
  const events: ActorEvent[] = [];
  await t.eye.subscribe(`execution:${run.id}`, collect(events), { fromPosition: 0 });
  const start = await waitFor(() => events.find((e) => e.type === 'execution.start'));
  assert.equal(start.data.input, { region: 'eu' });
  const definition = start.data.definition as { steps: Record<string, unknown>[] };
  assert.is(definition.steps[0]!.id, 'ship');
  assert.not.ok('input' in definition.steps[0]!);
  assert.not.ok(JSON.stringify(start).includes('prod'));
  const adminEvents: ActorEvent[] = [];
  await t.lead.subscribe(`execution:${run.id}`, collect(adminEvents), { fromPosition: 0 });
  const adminStart = await waitFor(() => adminEvents.find((e) => e.type === 'execution.start'));
  assert.equal(adminStart.data.input, { apiKey: 'k', region: 'eu' });
});

test('the policy survives a restart of the server', async () => {
  const tmp = tempDir();
  try {
    let ts = await startServer({ store: sqliteStore(tmp.dir) });
    const lead = await ts.client('acme', 'lead', ['admin']);
    await lead.call('fieldPolicy.set', { rules: [SECRETS] });
    const task = await lead.call('task.create', { type: 'review', title: 't', parameters: { secrets: 1, open: 2 } });
    await ts.close();
    ts = await startServer({ store: sqliteStore(tmp.dir) });
    try {
      const eye = await ts.client('acme', 'eye', ['observer']);
      assert.equal((await eye.call('task.get', { taskId: task.id })).parameters, { open: 2 });
      assert.is((await eye.call('fieldPolicy.get', {})).version, 1);
    } finally {
      await ts.close();
    }
  } finally {
    tmp.remove();
  }
});

test('a workflow made from a template is checked against what the template writes', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('fieldPolicy.set', { rules: [{ kind: 'workflow', path: 'steps.input', read: ['admin', 'agent', 'observer'], write: ['admin'] }] });
  const withInput = await t.lead.call('template.create', {
    name: 'ship',
    category: 'ops',
    parameters: [{ name: 'env', required: true }],
    definition: { name: 'ship {{env}}', type: 'sequential', steps: [{ id: 'ship', action: 'ship', input: { env: '{{env}}' } }] },
  });
  const plain = await t.lead.call('template.create', {
    name: 'plain',
    category: 'ops',
    definition: { name: 'plain', type: 'sequential', steps: [{ id: 'noop', action: 'noop' }] },
  });
  const e = await refusal(t.author.call('workflow.createFromTemplate', { templateId: withInput.id, parameters: { env: 'prod' } }), ErrorCodes.FORBIDDEN);
  assert.is(e.data.field, 'steps.input');
  assert.is(e.data.source, 'template');
  assert.is((await t.lead.call('workflow.list', {})).items.length, 0, 'no workflow was created');
  const ok = await t.author.call('workflow.createFromTemplate', { templateId: plain.id });
  assert.is(ok.createdBy, 'author');
  const byAdmin = await t.lead.call('workflow.createFromTemplate', { templateId: withInput.id, parameters: { env: 'prod' } });
  assert.equal(byAdmin.steps[0]!.input, { env: 'prod' });
});

test.run();

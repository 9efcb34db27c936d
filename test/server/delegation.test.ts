import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { eventsOf, registerAgents } from '../helpers/work.js';

interface Team {
  tenant: string;
  lead: TroupeClient;
  eye: TroupeClient;
  /** Agents by id: `a` (holds the work), `b`, `c`, `intern`, and `creator`, which creates tasks as an agent. */
  ag: Record<string, TroupeClient>;
}

interface Ctx {
  ts: TestServer;
  n: number;
}

const test = suite<Ctx>('delegation: a task changes hands along a chain of custody, as the rules allow');

test.before(async (ctx) => {
  ctx.n = 0;
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function team(ctx: Ctx): Promise<Team> {
  const tenant = `dl${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['admin']);
  const eye = await ctx.ts.client(tenant, 'eye', ['observer']);
  const ag = await registerAgents(ctx.ts, tenant, {
    a: { capabilities: ['review', 'go'], maxConcurrentTasks: 50 },
    b: { capabilities: ['review'], maxConcurrentTasks: 50 },
    c: { capabilities: ['go'], maxConcurrentTasks: 50 },
    intern: { capabilities: ['review'], maxConcurrentTasks: 50 },
    creator: { maxConcurrentTasks: 50 },
  });
  return { tenant, lead, eye, ag };
}

/** A task created by `by`, offered to `a` and accepted by it. */
async function heldByA(t: Team, by: TroupeClient = t.lead, type = 'review'): Promise<Task> {
  const x = await by.call('task.create', { type, title: `${type} work`, assignTo: 'a' });
  return t.ag.a!.call('task.accept', { taskId: x.id });
}

test('the holder delegates: the task is offered to the new agent and the chain of custody gains a manual link', async (ctx) => {
  const t = await team(ctx);
  const x = await heldByA(t);
  await t.ag.a!.call('task.start', { taskId: x.id });
  await t.ag.a!.call('task.progress', { taskId: x.id, percent: 40, message: 'half way' });
  const d = await t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'b', reason: 'b knows this code' });
  assert.equal([d.status, d.assignedTo, d.acceptedAt, d.startedAt, d.leaseExpiresAt], ['assigned', 'b', null, null, null]);
  assert.is(d.delegations.length, 2);
  const link = d.delegations[1]!;
  assert.equal([link.from, link.to, link.reason, link.kind], ['a', 'b', 'b knows this code', 'manual']);
  assert.match(link.at, /^\d{4}-\d\d-\d\dT/);
  const ev = (await eventsOf(t.lead, x.id, 'task.delegate')).at(-1)!;
  assert.equal([ev.principal, ev.status, ev.data.agentId], ['a', 'assigned', 'b']);

  // The old holder lost it; the new one works it.
  await refusal(t.ag.a!.call('task.progress', { taskId: x.id, percent: 50 }), ErrorCodes.FORBIDDEN);
  await refusal(t.ag.a!.call('task.accept', { taskId: x.id }), ErrorCodes.FORBIDDEN);
  assert.equal((await t.ag.a!.call('task.listForAgent', {})).items.map((v) => v.id), []);
  assert.equal((await t.ag.b!.call('task.listForAgent', {})).items.map((v) => v.id), [x.id]);
  await t.ag.b!.call('task.accept', { taskId: x.id });
  await t.ag.b!.call('task.start', { taskId: x.id });
  // And may pass it on again.
  const again = await t.ag.b!.call('task.delegate', { taskId: x.id, toAgentId: 'a' });
  assert.equal(again.delegations.map((l) => [l.from, l.to, l.kind]), [
    [null, 'a', 'manual'],
    ['a', 'b', 'manual'],
    ['b', 'a', 'manual'],
  ]);
  assert.is(again.delegations[2]!.reason, 'delegated', 'the reason when none is given');
  assert.equal([(await t.lead.call('agent.get', { agentId: 'a' })).load, (await t.lead.call('agent.get', { agentId: 'b' })).load], [1, 0]);
});

test('its creator and admins may delegate an offered task; other agents are FORBIDDEN and nothing changes', async (ctx) => {
  const t = await team(ctx);
  const mine = await t.ag.creator!.call('task.create', { type: 'review', title: 'creator owns it', assignTo: 'a' });
  const byCreator = await t.ag.creator!.call('task.delegate', { taskId: mine.id, toAgentId: 'b', reason: 'a is away' });
  assert.equal([byCreator.assignedTo, byCreator.delegations.at(-1)!.from], ['b', 'a']);
  const byAdmin = await t.lead.call('task.delegate', { taskId: mine.id, toAgentId: 'intern', reason: 'training' });
  assert.equal([byAdmin.assignedTo, byAdmin.delegations.length], ['intern', 3]);

  const head = await ctx.ts.store.headPosition(t.tenant);
  for (const who of ['a', 'b', 'c']) {
    const e = await refusal(t.ag[who]!.call('task.delegate', { taskId: mine.id, toAgentId: 'c' }), ErrorCodes.FORBIDDEN);
    assert.match(e.message, /Only the agent holding task/);
  }
  await refusal(t.eye.call('task.delegate', { taskId: mine.id, toAgentId: 'c' }), ErrorCodes.FORBIDDEN);
  assert.equal(await t.lead.call('task.get', { taskId: mine.id }), byAdmin);
  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'nothing was written');
});

test('a task.delegation rule denies with POLICY_DENIED naming the rule and its message, and the task stays as it was', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('rule.register', {
    name: 'no-interns',
    category: 'task.delegation',
    expression: "delegation.to != 'intern'",
    message: 'Interns do not take delegated work.',
  });
  const x = await heldByA(t);
  const head = await ctx.ts.store.headPosition(t.tenant);
  for (const who of [t.ag.a!, t.lead]) {
    const e = await refusal(who.call('task.delegate', { taskId: x.id, toAgentId: 'intern', reason: 'cheap labour' }), ErrorCodes.POLICY_DENIED);
    assert.equal([e.data.rule, e.data.category, e.data.ruleReason], ['no-interns', 'task.delegation', 'Interns do not take delegated work.']);
    assert.match(e.message, /no-interns/);
    assert.match(e.message, /Interns do not take delegated work\./);
  }
  assert.equal(await t.lead.call('task.get', { taskId: x.id }), x, 'still accepted by a, same version');
  assert.is(await ctx.ts.store.headPosition(t.tenant), head);
  // Anyone else is fine.
  assert.is((await t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'b' })).assignedTo, 'b');
});

test('a rule over the receiving agent: only agents with a capability named like the task type may receive it', async (ctx) => {
  const t = await team(ctx);
  await t.lead.call('rule.register', {
    name: 'capable-receiver',
    category: 'task.delegation',
    expression: 'agent.capabilities.exists(c, c == task.type)',
    message: 'The receiving agent must have the task type as a capability.',
  });
  const review = await heldByA(t, t.lead, 'review');
  const e = await refusal(t.ag.a!.call('task.delegate', { taskId: review.id, toAgentId: 'c' }), ErrorCodes.POLICY_DENIED);
  assert.is(e.data.rule, 'capable-receiver');
  assert.match(e.message, /capable-receiver/);
  assert.match(e.message, /must have the task type/);
  assert.equal(await t.lead.call('task.get', { taskId: review.id }), review);
  assert.is((await t.ag.a!.call('task.delegate', { taskId: review.id, toAgentId: 'b' })).assignedTo, 'b');
  const go = await heldByA(t, t.lead, 'go');
  await refusal(t.ag.a!.call('task.delegate', { taskId: go.id, toAgentId: 'b' }), ErrorCodes.POLICY_DENIED);
  assert.is((await t.ag.a!.call('task.delegate', { taskId: go.id, toAgentId: 'c' })).assignedTo, 'c');
  // A disabled rule no longer decides.
  await t.lead.call('rule.update', { ruleId: 'capable-receiver', enabled: false });
  const other = await heldByA(t, t.lead, 'docs');
  assert.is((await t.ag.a!.call('task.delegate', { taskId: other.id, toAgentId: 'c' })).assignedTo, 'c');
});

test('two concurrent delegations of one task: exactly one succeeds and the chain gains exactly one link', async (ctx) => {
  const t = await team(ctx);
  // The holder on two connections, so both requests are in flight at once.
  const a2 = await ctx.ts.client(t.tenant, 'a', ['agent']);
  for (let round = 0; round < 12; round++) {
    const x = await heldByA(t);
    const [first, second] = round % 2 === 0 ? [t.ag.a!, a2] : [a2, t.ag.a!];
    const results = await Promise.allSettled([
      first.call('task.delegate', { taskId: x.id, toAgentId: 'b', reason: 'to b' }),
      second.call('task.delegate', { taskId: x.id, toAgentId: 'c', reason: 'to c' }),
    ]);
    const ok = results.filter((r): r is PromiseFulfilledResult<Task> => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.is(ok.length, 1, `round ${round}: ${JSON.stringify(results.map((r) => r.status))}`);
    const e = refused[0]!.reason as ProtocolError;
    assert.ok(e instanceof ProtocolError);
    assert.ok(['VERSION_MISMATCH', 'FORBIDDEN'].includes(e.reason), `refused with ${e.reason}: ${e.message}`);
    const now = await t.lead.call('task.get', { taskId: x.id });
    assert.is(now.delegations.length, 2, 'one new link');
    assert.equal([now.assignedTo, now.delegations[1]!.to, now.version], [ok[0]!.value.assignedTo, ok[0]!.value.assignedTo, x.version + 1]);
    assert.equal(now, ok[0]!.value, 'the state is the winner\'s');
  }
});

test('a stale expectedVersion is refused with VERSION_MISMATCH and changes nothing', async (ctx) => {
  const t = await team(ctx);
  const x = await heldByA(t);
  const e = await refusal(t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'b', expectedVersion: x.version - 1 }), ErrorCodes.VERSION_MISMATCH);
  assert.is(e.data.actualVersion, x.version);
  assert.equal(await t.lead.call('task.get', { taskId: x.id }), x);
  assert.is((await t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'b', expectedVersion: x.version })).version, x.version + 1);
});

test('refuses bad delegations with a clear error and changes nothing; the server keeps serving', async (ctx) => {
  const t = await team(ctx);
  const x = await heldByA(t);
  const pending = await t.lead.call('task.create', { type: 'review', title: 'nobody has it' });
  const done = await heldByA(t);
  await t.ag.a!.call('task.start', { taskId: done.id });
  const finished = await t.ag.a!.call('task.complete', { taskId: done.id });
  const other = await ctx.ts.client(`${t.tenant}-x`, 'boss', ['admin']);
  await registerAgents(ctx.ts, `${t.tenant}-x`, { outsider: {} });
  const foreign = await other.call('task.create', { type: 'review', title: 'theirs', assignTo: 'outsider' });
  const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key(t.tenant, 'a', ['agent']));
  const head = await ctx.ts.store.headPosition(t.tenant);

  for (const params of [
    {},
    { taskId: x.id },
    { taskId: x.id, toAgentId: 5 },
    { taskId: 7, toAgentId: 'b' },
    { taskId: x.id, toAgentId: 'b', reason: 12 },
    { taskId: x.id, toAgentId: 'b', reason: 'x'.repeat(1025) },
    { taskId: x.id, toAgentId: 'b', expectedVersion: 'one' },
    { taskId: x.id, toAgentId: 'b', kind: 'failover' },
    { taskId: x.id, toAgentId: '' },
  ]) {
    const r = await raw.call('task.delegate', params);
    assert.is(r.error?.code, ErrorCodes.INVALID_PARAMS, `${JSON.stringify(params)}: ${JSON.stringify(r)}`);
  }
  const self = await refusal(t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'a' }), ErrorCodes.INVALID_PARAMS);
  assert.match(self.message, /already held by a/);
  const ghost = await refusal(t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'ghost' }), ErrorCodes.NOT_FOUND);
  assert.match(ghost.message, /ghost/);
  await refusal(t.ag.a!.call('task.delegate', { taskId: x.id, toAgentId: 'outsider' }), ErrorCodes.NOT_FOUND);
  await refusal(t.lead.call('task.delegate', { taskId: '01900000-0000-7000-8000-000000000000', toAgentId: 'b' }), ErrorCodes.NOT_FOUND);
  const cross = await refusal(t.lead.call('task.delegate', { taskId: foreign.id, toAgentId: 'b' }), ErrorCodes.NOT_FOUND);
  assert.not.match(cross.message, /outsider|theirs/);
  // Only held work can be delegated.
  const p = await refusal(t.lead.call('task.delegate', { taskId: pending.id, toAgentId: 'b' }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.is(p.data.status ?? p.data.state, 'pending');
  await refusal(t.ag.a!.call('task.delegate', { taskId: finished.id, toAgentId: 'b' }), ErrorCodes.ILLEGAL_TRANSITION);

  assert.is(await ctx.ts.store.headPosition(t.tenant), head, 'nothing was written');
  assert.equal(await t.lead.call('task.get', { taskId: x.id }), x);
  assert.equal(await t.lead.call('task.get', { taskId: pending.id }), pending);
  assert.equal(await other.call('task.get', { taskId: foreign.id }), foreign);
  assert.ok(raw.open);
  assert.is((await raw.ok<Task>('task.delegate', { taskId: x.id, toAgentId: 'b' })).assignedTo, 'b');
  await raw.close();
});

test.run();

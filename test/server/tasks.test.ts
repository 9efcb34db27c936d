import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { refusal } from '../helpers/errors.js';

interface Team {
  tenant: string;
  lead: TroupeClient;
  w1: TroupeClient;
  w2: TroupeClient;
  /** An observer on its own connection: reads what the others wrote. */
  eye: TroupeClient;
}

interface Ctx {
  ts: TestServer;
  cleanup: () => void;
  n: number;
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;


function tasksSuite(storeName: 'memory' | 'sqlite'): void {
  const test = suite<Ctx>(`tasks (${storeName} store): every task method end to end through the typed client`);

  test.before(async (ctx) => {
    ctx.n = 0;
    if (storeName === 'sqlite') {
      const tmp = tempDir();
      ctx.cleanup = tmp.remove;
      ctx.ts = await startServer({ store: sqliteStore(tmp.dir) });
    } else {
      ctx.cleanup = () => {};
      ctx.ts = await startServer();
    }
  });

  test.after(async (ctx) => {
    await ctx.ts.close();
    ctx.cleanup();
  });

  /** A fresh tenant per test, so counts are exact. */
  async function team(ctx: Ctx): Promise<Team> {
    const tenant = `t${++ctx.n}`;
    const t: Team = {
      tenant,
      lead: await ctx.ts.client(tenant, 'lead', ['admin']),
      w1: await ctx.ts.client(tenant, 'w1', ['agent']),
      w2: await ctx.ts.client(tenant, 'w2', ['agent']),
      eye: await ctx.ts.client(tenant, 'eye', ['observer']),
    };
    await t.w1.call('agent.register', { capabilities: ['go', 'review'] });
    await t.w2.call('agent.register', { capabilities: ['python'] });
    return t;
  }

  test('creates a task with documented defaults', async (ctx) => {
    const { lead, tenant, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'review', title: 'Review PR 7' });
    assert.type(t.id, 'string');
    assert.equal(
      {
        tenantId: t.tenantId, type: t.type, title: t.title, description: t.description, priority: t.priority,
        parameters: t.parameters, requiredCapabilities: t.requiredCapabilities, createdBy: t.createdBy,
        assignedTo: t.assignedTo, parentTaskId: t.parentTaskId, status: t.status, a2aState: t.a2aState,
        progress: t.progress, inputRequest: t.inputRequest, inputs: t.inputs, result: t.result, error: t.error,
        maxRetries: t.maxRetries, retryCount: t.retryCount, retryAt: t.retryAt, timeoutSeconds: t.timeoutSeconds,
        deadline: t.deadline, delegations: t.delegations, rejections: t.rejections, archived: t.archived,
        version: t.version, assignedAt: t.assignedAt, completedAt: t.completedAt,
      },
      {
        tenantId: tenant, type: 'review', title: 'Review PR 7', description: '', priority: 'normal',
        parameters: {}, requiredCapabilities: [], createdBy: 'lead',
        assignedTo: null, parentTaskId: null, status: 'pending', a2aState: 'submitted',
        progress: null, inputRequest: null, inputs: [], result: null, error: null,
        maxRetries: 0, retryCount: 0, retryAt: null, timeoutSeconds: null,
        deadline: null, delegations: [], rejections: [], archived: false,
        version: 1, assignedAt: null, completedAt: null,
      },
    );
    assert.match(t.createdAt, ISO);
    assert.is(t.updatedAt, t.createdAt);
    assert.equal(await eye.call('task.get', { taskId: t.id }), t, 'task.get returns what create returned');
    const child = await lead.call('task.create', {
      type: 'review', title: 'child', priority: 'critical', parentTaskId: t.id, parameters: { pr: 7 },
      requiredCapabilities: ['go'], description: 'desc',
    });
    assert.equal([child.parentTaskId, child.priority, child.parameters, child.requiredCapabilities, child.description], [t.id, 'critical', { pr: 7 }, ['go'], 'desc']);
    assert.equal((await eye.call('task.search', { parentTaskId: t.id })).items.map((x) => x.id), [child.id]);
  });

  test('requires assignTo to name a registered agent', async (ctx) => {
    const { lead, eye } = await team(ctx);
    const e = await refusal(lead.call('task.create', { type: 'review', title: 'to nobody', assignTo: 'ghost' }), ErrorCodes.NOT_FOUND);
    assert.match(e.message, /ghost/);
    assert.equal([e.data.kind, e.data.id], ['agent', 'ghost']);
    assert.is((await eye.call('task.stats', {})).total, 0, 'no task was created');
    const t = await lead.call('task.create', { type: 'review', title: 'to w1', assignTo: 'w1' });
    assert.is(t.status, 'assigned');
    assert.is(t.assignedTo, 'w1');
    assert.match(t.assignedAt!, ISO);
    assert.is(t.delegations.length, 1);
    assert.equal([t.delegations[0]!.from, t.delegations[0]!.to, t.delegations[0]!.kind], [null, 'w1', 'manual']);
  });

  test('creates a batch where each item succeeds or fails on its own', async (ctx) => {
    const { lead, eye } = await team(ctx);
    const r = await lead.call('task.createBatch', {
      tasks: [
        { type: 'b', title: 'one' },
        { type: 'b', title: 'two', assignTo: 'ghost' },
        { type: 'b', title: 'three', assignTo: 'w2', idempotencyKey: 'b3' },
        { type: 'b', title: 'past', deadline: new Date(Date.now() - 1000).toISOString() },
      ],
    });
    assert.is(r.items.length, 4);
    const [one, two, three, past] = r.items;
    assert.ok(one!.ok && one.value.title === 'one');
    assert.ok(!two!.ok && two.error.code === ErrorCodes.NOT_FOUND, JSON.stringify(two));
    assert.ok(three!.ok && three.value.status === 'assigned');
    assert.ok(!past!.ok && past.error.code === ErrorCodes.INVALID_PARAMS, JSON.stringify(past));
    assert.equal((await eye.call('task.search', { type: 'b' })).items.map((t) => t.title).sort(), ['one', 'three']);
    await refusal(lead.call('task.createBatch', { tasks: [] }), ErrorCodes.INVALID_PARAMS);
  });

  test('gets one task or a batch, listing the missing ids in order', async (ctx) => {
    const { lead, eye } = await team(ctx);
    const a = await lead.call('task.create', { type: 'g', title: 'a' });
    const b = await lead.call('task.create', { type: 'g', title: 'b' });
    const r = await eye.call('task.getBatch', { taskIds: [b.id, 'nope-1', a.id, 'nope-2'] });
    assert.equal(r.items.map((t) => t.id), [b.id, a.id]);
    assert.equal(r.missing, ['nope-1', 'nope-2']);
    const e = await refusal(eye.call('task.get', { taskId: 'nope-1' }), ErrorCodes.NOT_FOUND);
    assert.match(e.message, /nope-1/);
  });

  test('updates a live task, guarded by expectedVersion', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await w1.call('task.create', { type: 'u', title: 'before' });
    const u = await w1.call('task.update', {
      taskId: t.id, expectedVersion: 1, title: 'after', priority: 'high', parameters: { x: 1 }, maxRetries: 3, description: 'd',
    });
    assert.equal([u.title, u.priority, u.parameters, u.maxRetries, u.description, u.version], ['after', 'high', { x: 1 }, 3, 'd', 2]);
    assert.ok(u.updatedAt >= t.updatedAt);
    const e = await refusal(lead.call('task.update', { taskId: t.id, expectedVersion: 1, title: 'lost update' }), ErrorCodes.VERSION_MISMATCH);
    assert.is(e.data.actualVersion, 2);
    await refusal(lead.call('task.update', { taskId: t.id }), ErrorCodes.INVALID_PARAMS);
    const deadline = new Date(Date.now() + 3_600_000).toISOString();
    const withDeadline = await lead.call('task.update', { taskId: t.id, deadline });
    assert.is(withDeadline.deadline, deadline);
    assert.is((await lead.call('task.update', { taskId: t.id, deadline: null })).deadline, null);
    assert.is((await eye.call('task.get', { taskId: t.id })).version, 4);
  });

  test('deletes a task so that it is gone everywhere', async (ctx) => {
    const { lead, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'd', title: 'doomed' });
    await refusal(lead.call('task.delete', { taskId: t.id, expectedVersion: 7 }), ErrorCodes.VERSION_MISMATCH);
    const d = await lead.call('task.delete', { taskId: t.id, expectedVersion: 1 });
    assert.equal(d, { id: t.id, deleted: true, version: 2 });
    await refusal(eye.call('task.get', { taskId: t.id }), ErrorCodes.NOT_FOUND);
    await refusal(eye.call('task.timeline', { taskId: t.id }), ErrorCodes.NOT_FOUND);
    await refusal(lead.call('task.delete', { taskId: t.id }), ErrorCodes.NOT_FOUND);
    await refusal(lead.call('task.update', { taskId: t.id, title: 'zombie' }), ErrorCodes.NOT_FOUND);
    assert.equal((await eye.call('task.getBatch', { taskIds: [t.id] })).missing, [t.id]);
    assert.is((await eye.call('task.search', { archived: 'any' })).items.length, 0);
    assert.is((await eye.call('task.stats', {})).total, 0);
  });

  test('drives a task through assign, accept, start, progress, input and complete', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'life', title: 'the whole life' });
    const steps: [string, () => Promise<Task>, Partial<Task>][] = [
      ['assign', () => lead.call('task.assign', { taskId: t.id, agentId: 'w1', reason: 'best fit', expectedVersion: 1 }), { status: 'assigned', assignedTo: 'w1', a2aState: 'submitted' }],
      ['accept', () => w1.call('task.accept', { taskId: t.id, expectedVersion: 2 }), { status: 'accepted' }],
      ['start', () => w1.call('task.start', { taskId: t.id }), { status: 'in_progress', a2aState: 'working' }],
      ['progress', () => w1.call('task.progress', { taskId: t.id, percent: 40, message: 'halfway-ish' }), { status: 'in_progress', progress: { percent: 40, message: 'halfway-ish' } }],
      ['progress', () => w1.call('task.progress', { taskId: t.id, percent: 60 }), { progress: { percent: 60, message: 'halfway-ish' } }],
      ['requestInput', () => w1.call('task.requestInput', { taskId: t.id, prompt: 'Which branch?', schema: { type: 'string' } }), { status: 'input_required', a2aState: 'input-required', inputRequest: { prompt: 'Which branch?', schema: { type: 'string' } } }],
      ['provideInput', () => lead.call('task.provideInput', { taskId: t.id, input: 'main' }), { status: 'in_progress', inputRequest: null }],
      ['complete', () => w1.call('task.complete', { taskId: t.id, result: { merged: true } }), { status: 'completed', a2aState: 'completed', result: { merged: true } }],
    ];
    let version = 1;
    for (const [name, step, expected] of steps) {
      const r = await step();
      version++;
      assert.is(r.version, version, `${name} bumps the version by one`);
      for (const [k, v] of Object.entries(expected)) assert.equal((r as unknown as Record<string, unknown>)[k], v, `${name}: ${k}`);
      // Read-your-writes from another connection.
      assert.equal(await eye.call('task.get', { taskId: t.id }), r, `${name} is visible at once elsewhere`);
    }
    const done = await eye.call('task.get', { taskId: t.id });
    assert.equal(done.inputs.map((i) => [i.prompt, i.input, i.by]), [['Which branch?', 'main', 'lead']]);
    assert.equal(done.delegations.map((d) => [d.to, d.reason]), [['w1', 'best fit']]);
    for (const k of ['assignedAt', 'acceptedAt', 'startedAt', 'completedAt'] as const) assert.match(done[k]!, ISO, k);
    await refusal(w1.call('task.complete', { taskId: t.id }), ErrorCodes.ILLEGAL_TRANSITION);
    await refusal(lead.call('task.cancel', { taskId: t.id }), ErrorCodes.ILLEGAL_TRANSITION);
  });

  test('returns a rejected task to pending with the rejection recorded', async (ctx) => {
    const { lead, w1, w2 } = await team(ctx);
    const t = await lead.call('task.create', { type: 'rej', title: 'not for me', assignTo: 'w1' });
    const r = await w1.call('task.reject', { taskId: t.id, reason: 'no capacity' });
    assert.equal([r.status, r.assignedTo, r.rejections.map((x) => [x.by, x.reason])], ['pending', null, [['w1', 'no capacity']]]);
    const again = await lead.call('task.assign', { taskId: t.id, agentId: 'w2' });
    assert.is(again.status, 'assigned');
    const accepted = await w2.call('task.accept', { taskId: t.id });
    const back = await w2.call('task.reject', { taskId: accepted.id });
    assert.is(back.status, 'pending', 'an accepted task can still be handed back');
    await refusal(lead.call('task.assign', { taskId: t.id, agentId: 'ghost' }), ErrorCodes.NOT_FOUND);
  });

  test('fails a task without retries left, and retries it by hand', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'f', title: 'flaky', assignTo: 'w1' });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    const failed = await w1.call('task.fail', { taskId: t.id, error: 'disk full' });
    assert.equal([failed.status, failed.error, failed.retryAt, failed.a2aState], ['failed', 'disk full', null, 'failed']);
    await refusal(w1.call('task.retry', { taskId: t.id }), ErrorCodes.FORBIDDEN);
    const retried = await lead.call('task.retry', { taskId: t.id });
    assert.equal([retried.status, retried.retryCount, retried.assignedTo, retried.startedAt], ['pending', 1, null, null]);
    assert.equal(await eye.call('task.get', { taskId: t.id }), retried);
    await refusal(lead.call('task.retry', { taskId: t.id }), ErrorCodes.ILLEGAL_TRANSITION);
  });

  test('retries a failed task automatically after its back-off', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'auto', title: 'retry me', assignTo: 'w1', maxRetries: 1, retryBackoffMs: 50 });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    const failed = await w1.call('task.fail', { taskId: t.id, error: 'transient' });
    assert.is(failed.status, 'failed');
    assert.ok(failed.retryAt !== null && Date.parse(failed.retryAt) >= Date.parse(failed.updatedAt) + 50, String(failed.retryAt));
    const reopened = await waitFor(async () => {
      const now = await eye.call('task.get', { taskId: t.id });
      return now.status === 'pending' ? now : null;
    });
    assert.equal([reopened.retryCount, reopened.retryAt, reopened.assignedTo], [1, null, null]);
    const timeline = await eye.call('task.timeline', { taskId: t.id });
    const last = timeline.items[timeline.items.length - 1]!;
    assert.equal([last.type, last.principal, last.status], ['timer.fired', 'system', 'pending']);

    // The last attempt fails for good: no retry is scheduled.
    await lead.call('task.assign', { taskId: t.id, agentId: 'w1' });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    const final = await w1.call('task.fail', { taskId: t.id, error: 'still broken' });
    assert.equal([final.status, final.retryAt, final.retryCount], ['failed', null, 1]);
    // A non-retryable failure is final even with attempts left.
    const u = await lead.call('task.create', { type: 'auto', title: 'fatal', assignTo: 'w1', maxRetries: 5, retryBackoffMs: 1 });
    await w1.call('task.accept', { taskId: u.id });
    const fatal = await w1.call('task.fail', { taskId: u.id, error: 'bad input', retryable: false });
    assert.equal([fatal.status, fatal.retryAt], ['failed', null]);
  });

  test('times out an attempt and a deadline, visibly', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    // timeoutSeconds is whole seconds: one second is the shortest attempt.
    const noRetry = await lead.call('task.create', { type: 'slow', title: 'no retry', assignTo: 'w1', timeoutSeconds: 1 });
    const withRetry = await lead.call('task.create', { type: 'slow', title: 'retry', assignTo: 'w1', timeoutSeconds: 1, maxRetries: 1, retryBackoffMs: 1 });
    const deadline = await lead.call('task.create', { type: 'slow', title: 'deadline', deadline: new Date(Date.now() + 300).toISOString() });
    for (const t of [noRetry, withRetry]) {
      await w1.call('task.accept', { taskId: t.id });
      await w1.call('task.start', { taskId: t.id });
    }
    const status = async (id: string) => (await eye.call('task.get', { taskId: id })).status;
    await waitFor(async () => (await status(deadline.id)) === 'timed_out');
    await waitFor(async () => (await status(noRetry.id)) === 'timed_out');
    await waitFor(async () => (await status(withRetry.id)) === 'pending');
    const d = await eye.call('task.get', { taskId: deadline.id });
    assert.match(d.error!, /deadline .* passed/);
    assert.is(d.a2aState, 'failed');
    const n = await eye.call('task.get', { taskId: noRetry.id });
    assert.match(n.error!, /within 1 s/);
    const r = await eye.call('task.get', { taskId: withRetry.id });
    assert.is(r.retryCount, 1);
    assert.ok((await eye.call('task.timeline', { taskId: withRetry.id })).items.some((e) => e.status === 'failed' && e.type === 'timer.fired'));
    assert.equal((await eye.call('task.search', { type: 'slow', status: ['timed_out'] })).items.map((t) => t.id).sort(), [deadline.id, noRetry.id].sort());
    await refusal(w1.call('task.complete', { taskId: noRetry.id }), ErrorCodes.ILLEGAL_TRANSITION);
    await refusal(lead.call('task.create', { type: 'slow', title: 'past', deadline: new Date(Date.now() - 1).toISOString() }), ErrorCodes.INVALID_PARAMS);
  });

  test('cancels a live task with a reason', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'c', title: 'cancel me', assignTo: 'w1' });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    const c = await lead.call('task.cancel', { taskId: t.id, reason: 'priorities changed' });
    assert.equal([c.status, c.error, c.a2aState], ['cancelled', 'priorities changed', 'canceled']);
    assert.match(c.completedAt!, ISO);
    assert.equal(await eye.call('task.get', { taskId: t.id }), c);
    const e = await refusal(lead.call('task.cancel', { taskId: t.id }), ErrorCodes.ILLEGAL_TRANSITION);
    assert.is(e.data.status, 'cancelled');
  });

  test('returns the timeline oldest first, with afterVersion and limit', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const t = await lead.call('task.create', { type: 'tl', title: 'history', assignTo: 'w1' });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    await w1.call('task.complete', { taskId: t.id, result: 42 });
    const all = await eye.call('task.timeline', { taskId: t.id });
    assert.equal(all.items.map((e) => [e.version, e.type, e.status, e.principal]), [
      [1, 'task.create', 'assigned', 'lead'],
      [2, 'task.accept', 'accepted', 'w1'],
      [3, 'task.start', 'in_progress', 'w1'],
      [4, 'task.complete', 'completed', 'w1'],
    ]);
    for (const e of all.items) {
      assert.equal([e.kind, e.actorId], ['task', t.id]);
      assert.match(e.at, ISO);
      assert.ok(e.position > 0);
      assert.type(e.correlationId, 'string');
    }
    assert.ok(all.items.every((e, i) => i === 0 || e.position > all.items[i - 1]!.position));
    assert.equal(all.items[3]!.data, { result: 42 });
    assert.equal((await eye.call('task.timeline', { taskId: t.id, afterVersion: 2 })).items.map((e) => e.version), [3, 4]);
    assert.equal((await eye.call('task.timeline', { taskId: t.id, afterVersion: 1, limit: 2 })).items.map((e) => e.version), [2, 3]);
  });

  test('lists an agent’s tasks by status', async (ctx) => {
    const { lead, w1, w2, eye } = await team(ctx);
    const a = await lead.call('task.create', { type: 'l', title: 'a', assignTo: 'w1' });
    const b = await lead.call('task.create', { type: 'l', title: 'b', assignTo: 'w1' });
    await lead.call('task.create', { type: 'l', title: 'c', assignTo: 'w2' });
    await lead.call('task.create', { type: 'l', title: 'unassigned' });
    await w1.call('task.accept', { taskId: b.id });
    assert.equal((await w1.call('task.listForAgent', {})).items.map((t) => t.title).sort(), ['a', 'b']);
    assert.equal((await w1.call('task.listForAgent', { status: ['accepted'] })).items.map((t) => t.id), [b.id]);
    assert.equal((await eye.call('task.listForAgent', { agentId: 'w1', status: ['assigned'] })).items.map((t) => t.id), [a.id]);
    assert.equal((await w2.call('task.listForAgent', {})).items.map((t) => t.title), ['c']);
    const p1 = await lead.call('task.listForAgent', { agentId: 'w1', limit: 1 });
    const p2 = await lead.call('task.listForAgent', { agentId: 'w1', limit: 1, cursor: p1.nextCursor! });
    assert.equal([...p1.items, ...p2.items].map((t) => t.id).sort(), [a.id, b.id].sort());
    assert.is(p2.nextCursor, null);
    await refusal(w2.call('task.listForAgent', { agentId: 'w1' }), ErrorCodes.FORBIDDEN);
  });

  test('searches by text and filters with cursor pagination that sees every task once', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const made: Task[] = [];
    for (let i = 0; i < 25; i++) {
      made.push(await lead.call('task.create', {
        type: i % 2 ? 'odd' : 'even',
        title: `Alpha ${i}`,
        priority: i % 5 === 0 ? 'high' : 'normal',
        assignTo: i < 3 ? 'w1' : undefined,
      }));
    }
    await w1.call('task.create', { type: 'other', title: 'Beta 100%_done' });
    const seen: Task[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await eye.call('task.search', { query: 'alpha', limit: 10, cursor });
      pages++;
      seen.push(...page.items);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    assert.is(pages, 3);
    assert.is(seen.length, 25);
    assert.equal(new Set(seen.map((t) => t.id)), new Set(made.map((t) => t.id)), 'every task exactly once');
    for (let i = 1; i < seen.length; i++) {
      const [p, q] = [seen[i - 1]!, seen[i]!];
      assert.ok(p.createdAt > q.createdAt || (p.createdAt === q.createdAt && p.id > q.id), 'newest first');
    }
    const titles = async (params: Parameters<TroupeClient['call']>[1]) =>
      (await eye.call('task.search', params as never)).items.map((t) => t.title).sort();
    assert.equal(await titles({ query: 'ALPHA 2', limit: 100 }), ['Alpha 2', 'Alpha 20', 'Alpha 21', 'Alpha 22', 'Alpha 23', 'Alpha 24']);
    assert.equal(await titles({ query: 'alpha 2', type: 'odd', limit: 100 }), ['Alpha 21', 'Alpha 23']);
    assert.equal(await titles({ priority: ['high'], limit: 100 }), ['Alpha 0', 'Alpha 10', 'Alpha 15', 'Alpha 20', 'Alpha 5']);
    assert.equal(await titles({ assignedTo: 'w1', limit: 100 }), ['Alpha 0', 'Alpha 1', 'Alpha 2']);
    assert.equal(await titles({ status: ['assigned'], limit: 100 }), ['Alpha 0', 'Alpha 1', 'Alpha 2']);
    assert.equal(await titles({ createdBy: 'w1' }), ['Beta 100%_done']);
    // LIKE wildcards in the query are literal characters.
    assert.equal(await titles({ query: '100%_' }), ['Beta 100%_done']);
    assert.equal(await titles({ query: '%' }), ['Beta 100%_done']);
    assert.equal(await titles({ query: 'alpha_1' }), []);
    const mid = made[12]!.createdAt;
    const after = await eye.call('task.search', { query: 'alpha', createdAfter: mid, limit: 100 });
    assert.ok(after.items.every((t) => t.createdAt > mid));
    await refusal(eye.call('task.search', { cursor: 'garbage' }), ErrorCodes.INVALID_PARAMS);
  });

  test('counts tasks by status, priority and type', async (ctx) => {
    const { lead, eye } = await team(ctx);
    await lead.call('task.create', { type: 'x', title: 'one', priority: 'low' });
    await lead.call('task.create', { type: 'x', title: 'two', priority: 'high', assignTo: 'w1' });
    const c = await lead.call('task.create', { type: 'y', title: 'three' });
    await lead.call('task.cancel', { taskId: c.id });
    assert.equal(await eye.call('task.stats', {}), {
      total: 3,
      byStatus: { pending: 1, assigned: 1, cancelled: 1 },
      byPriority: { low: 1, high: 1, normal: 1 },
      byType: { x: 2, y: 1 },
    });
    assert.equal((await eye.call('task.stats', { type: 'x', query: 'two' })).total, 1);
  });

  test('reports tasks as JSON and as CSV with escaping and formula neutralisation', async (ctx) => {
    const { lead, eye } = await team(ctx);
    const tricky = await lead.call('task.create', { type: 'rep', title: 'Fix "parser", now' });
    const formula = await lead.call('task.create', { type: 'rep', title: '=HYPERLINK("http://evil","x")' });
    const plus = await lead.call('task.create', { type: 'rep', title: '+1-2' });
    const at = await lead.call('task.create', { type: 'rep', title: '@SUM(A1)' });
    const lines = await lead.call('task.create', { type: 'rep', title: 'two\nlines' });
    const json = await eye.call('task.report', { format: 'json', type: 'rep' });
    assert.equal([json.format, json.contentType, json.rows], ['json', 'application/json', 5]);
    const parsed = JSON.parse(json.content) as Task[];
    assert.equal(new Set(parsed.map((t) => t.id)), new Set([tricky.id, formula.id, plus.id, at.id, lines.id]));

    const csv = await eye.call('task.report', { format: 'csv', type: 'rep' });
    assert.equal([csv.format, csv.contentType, csv.rows], ['csv', 'text/csv', 5]);
    assert.ok(csv.content.endsWith('\r\n'));
    const rows = parseCsv(csv.content);
    assert.equal(rows[0], ['id', 'type', 'title', 'status', 'priority', 'assignedTo', 'createdBy', 'retryCount', 'createdAt', 'updatedAt', 'completedAt']);
    assert.is(rows.length, 6);
    const title = (id: string) => rows.find((r) => r[0] === id)![2];
    assert.is(title(tricky.id), 'Fix "parser", now');
    assert.is(title(formula.id), `'=HYPERLINK("http://evil","x")`);
    assert.is(title(plus.id), `'+1-2`);
    assert.is(title(at.id), `'@SUM(A1)`);
    assert.is(title(lines.id), 'two\nlines');
    assert.ok(csv.content.includes('"Fix ""parser"", now"'), 'quotes are doubled inside a quoted field');
    for (const r of rows) assert.is(r.length, 11);
    const limited = await eye.call('task.report', { format: 'csv', type: 'rep', limit: 2 });
    assert.is(limited.rows, 2);
  });

  test('archives finished tasks (admins only) and hides them from the default search', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    const done = await lead.call('task.create', { type: 'arch', title: 'done', assignTo: 'w1' });
    await w1.call('task.accept', { taskId: done.id });
    await w1.call('task.start', { taskId: done.id });
    await w1.call('task.complete', { taskId: done.id });
    const cancelled = await lead.call('task.create', { type: 'arch', title: 'cancelled' });
    await lead.call('task.cancel', { taskId: cancelled.id });
    // A live task is never archived.
    await lead.call('task.create', { type: 'arch', title: 'live' });
    const retrying = await lead.call('task.create', { type: 'arch', title: 'retrying', assignTo: 'w1', maxRetries: 1, retryBackoffMs: 3_600_000 });
    await w1.call('task.accept', { taskId: retrying.id });
    await w1.call('task.fail', { taskId: retrying.id, error: 'later' });
    const before = new Date(Date.now() + 60_000).toISOString();

    await refusal(w1.call('task.archive', { before }), ErrorCodes.FORBIDDEN);
    await refusal(eye.call('task.archive', { before }), ErrorCodes.FORBIDDEN);
    assert.is((await eye.call('task.search', { type: 'arch' })).items.length, 4);

    assert.equal(await lead.call('task.archive', { before: '2000-01-01T00:00:00Z' }), { archived: 0 });
    assert.equal(await lead.call('task.archive', { before }), { archived: 2 });
    const titles = async (archived?: boolean | 'any') =>
      (await eye.call('task.search', archived === undefined ? { type: 'arch' } : { type: 'arch', archived })).items.map((t) => t.title).sort();
    assert.equal(await titles(), ['live', 'retrying']);
    assert.equal(await titles(true), ['cancelled', 'done']);
    assert.equal(await titles('any'), ['cancelled', 'done', 'live', 'retrying']);
    const got = await eye.call('task.get', { taskId: done.id });
    assert.equal([got.archived, got.status], [true, 'completed']);
    assert.equal(await lead.call('task.archive', { before }), { archived: 0 }, 'archiving twice archives nothing more');
    assert.is((await eye.call('task.stats', {})).total, 2, 'stats count unarchived tasks by default');
  });

  test('shows every acknowledged change at once on another connection', async (ctx) => {
    const { lead, w1, eye } = await team(ctx);
    for (let i = 0; i < 10; i++) {
      const t = await lead.call('task.create', { type: 'ryw', title: `ryw ${i}`, assignTo: 'w1' });
      const got = await eye.call('task.get', { taskId: t.id });
      assert.is(got.version, t.version);
      const found = await eye.call('task.search', { type: 'ryw', limit: 100 });
      assert.ok(found.items.some((x) => x.id === t.id && x.version === t.version), `search sees create ${i}`);
      const a = await w1.call('task.accept', { taskId: t.id });
      assert.is((await eye.call('task.search', { type: 'ryw', status: ['accepted'], limit: 100 })).items.filter((x) => x.id === t.id).length, 1);
      assert.is((await lead.call('task.get', { taskId: t.id })).version, a.version);
      assert.is((await eye.call('task.listForAgent', { agentId: 'w1', status: ['accepted'], limit: 100 })).items.length, i + 1);
    }
  });

  test.run();
}

/** A small RFC 4180 parser for checking the report. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"' && cell === '') quoted = true;
    else if (ch === ',') {
      row.push(cell);
      cell = '';
    } else if (ch === '\r' && text[i + 1] === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
      i++;
    } else cell += ch;
  }
  return rows;
}

tasksSuite('memory');
tasksSuite('sqlite');

const retried = suite('task.create retried with its idempotency key');

retried('answers with the task it created, even once the deadline it asked for has passed', async () => {
  let now = Date.now();
  const ts = await startServer({ now: () => now });
  try {
    const lead = await ts.client('idem', 'lead', ['admin']);
    const params = { type: 'x', title: 'due soon', deadline: new Date(now + 60_000).toISOString(), idempotencyKey: 'k-1' };
    const first = await lead.call('task.create', params);
    now += 120_000;
    const again = await lead.call('task.create', params);
    assert.is(again.id, first.id);
    // Without the key the same params are refused: the deadline is in the past now.
    const { idempotencyKey: _k, ...fresh } = params;
    await refusal(lead.call('task.create', fresh), ErrorCodes.INVALID_PARAMS);
    assert.is((await lead.call('task.search', { type: 'x' })).items.length, 1);
  } finally {
    await ts.close();
  }
});

retried.run();

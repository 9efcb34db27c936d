import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { RefusalRecord, Store } from '../../actors/Store.js';
import type { AuditEntry, RefusedAuditEntry } from '../../protocol/audit.js';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import { AuditRecorder } from '../../src/guard/AuditRecorder.js';
import { pino } from 'pino';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { fakeClock } from '../helpers/clock.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { interceptStore } from '../helpers/stores.js';
import { waitFor } from '../helpers/waitFor.js';

/** Every entry of the trail for a query, page by page. */
async function everything(c: TroupeClient, query: Record<string, unknown>, limit: number): Promise<AuditEntry[]> {
  const all: AuditEntry[] = [];
  let cursor: string | undefined;
  for (let i = 0; i < 1000; i++) {
    const page = await c.call('audit.query', { ...query, limit, cursor });
    assert.ok(page.items.length <= limit);
    all.push(...page.items);
    if (!page.nextCursor) return all;
    cursor = page.nextCursor;
  }
  throw new Error('pagination did not end');
}

const refused = (items: AuditEntry[]): RefusedAuditEntry[] => items.filter((e): e is RefusedAuditEntry => e.outcome === 'refused');

// ---------------------------------------------------------------------------------------------

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
  /** Refusal records handed to the store, call by call. */
  appended: RefusalRecord[][];
  lead: TroupeClient;
  w1: TroupeClient;
  eye: TroupeClient;
  boss: TroupeClient;
}

const test = suite<Ctx>('audit trail over WebSocket');

test.before(async (ctx) => {
  ctx.dir = tempDir();
  ctx.appended = [];
  const store = interceptStore(sqliteStore(ctx.dir.dir), {
    appendRefusals: (inner, records) => {
      ctx.appended.push(structuredClone(records));
      return inner(records);
    },
  });
  ctx.ts = await startServer({ store });
  ctx.lead = await ctx.ts.client('acme', 'lead', ['admin']);
  ctx.w1 = await ctx.ts.client('acme', 'w1', ['agent']);
  ctx.eye = await ctx.ts.client('acme', 'eye', ['observer']);
  ctx.boss = await ctx.ts.client('globex', 'boss', ['admin']);
  await ctx.w1.call('agent.register', { id: 'w1', capabilities: ['review'] });
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

test('lists accepted commands newest first, each with its principal, event type and actor', async (ctx) => {
  const before = Date.now();
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'Review PR 7' });
  await ctx.lead.call('task.assign', { taskId: t.id, agentId: 'w1' });
  await ctx.w1.call('task.accept', { taskId: t.id });
  const page = await ctx.eye.call('audit.query', { actorKind: 'task', actorId: t.id });
  assert.equal(
    page.items.map((e) => [e.outcome, e.principal, e.method, e.actorKind, e.actorId]),
    [
      ['accepted', 'w1', 'task.accept', 'task', t.id],
      ['accepted', 'lead', 'task.assign', 'task', t.id],
      ['accepted', 'lead', 'task.create', 'task', t.id],
    ],
  );
  const [accept] = page.items;
  assert.ok(accept?.outcome === 'accepted');
  assert.equal([accept.version, accept.status], [3, 'accepted']);
  assert.ok(Date.parse(accept.at) >= before && Date.parse(accept.at) <= Date.now());
  assert.type(accept.correlationId, 'string');
  assert.not.ok('data' in accept, 'event data is left to events.read');
  assert.is(page.nextCursor, null);
  // The agent's own registration is in the trail too.
  const mine = await ctx.lead.call('audit.query', { principal: 'w1', method: 'agent.register' });
  assert.equal(mine.items.map((e) => [e.actorKind, e.actorId]), [['agent', 'w1']]);
});

test('records a FORBIDDEN attempt as refused with its principal, method, code, reason and time, and changes nothing', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'guarded' });
  const head = await ctx.ts.store.headPosition('acme');
  const before = Date.now();
  const create = await refusal(ctx.eye.call('task.create', { type: 'review', title: 'sneaky' }), ErrorCodes.FORBIDDEN);
  const cancel = await refusal(ctx.eye.call('task.cancel', { taskId: t.id, reason: 'mine now' }), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'no event was written');
  assert.is((await ctx.lead.call('task.get', { taskId: t.id })).status, 'pending');
  // Records are written shortly after the refusal, never on the call's path.
  const entries = await waitFor(async () => {
    const page = await ctx.lead.call('audit.query', { principal: 'eye', outcome: 'refused' });
    return page.items.length === 2 ? refused(page.items) : null;
  });
  const [c, k] = [entries.find((e) => e.method === 'task.create')!, entries.find((e) => e.method === 'task.cancel')!];
  assert.equal(
    { ...c, id: '', at: '', lastAt: '', correlationId: '' },
    {
      outcome: 'refused', id: '', at: '', lastAt: '', correlationId: '', principal: 'eye', method: 'task.create',
      actorKind: null, actorId: null, code: 'FORBIDDEN', errorCode: ErrorCodes.FORBIDDEN, reason: create.message, count: 1,
    },
  );
  assert.ok(Date.parse(c.at) >= before && Date.parse(c.at) <= Date.now());
  assert.is(c.lastAt, c.at);
  assert.equal([k.reason, k.actorKind, k.actorId], [cancel.message, 'task', t.id], 'the refused call names the task it aimed at');
  // The task's own history shows the attempt next to its events.
  const history = await ctx.lead.call('audit.query', { actorId: t.id });
  assert.equal(history.items.map((e) => [e.outcome, e.method]), [['refused', 'task.cancel'], ['accepted', 'task.create']]);
});

test('records a POLICY_DENIED attempt with the rule\'s reason', async (ctx) => {
  await ctx.lead.call('rule.register', {
    name: 'no-drafts', category: 'task.validation', expression: "task.type != 'draft'", message: 'Drafts are not tasks.',
  });
  const e = await refusal(ctx.w1.call('task.create', { type: 'draft', title: 'half an idea' }), ErrorCodes.POLICY_DENIED);
  await ctx.ts.server.app.audit!.flush();
  const [entry] = refused((await ctx.eye.call('audit.query', { principal: 'w1', outcome: 'refused', method: 'task.create' })).items);
  assert.equal([entry?.code, entry?.errorCode, entry?.reason, entry?.count], ['POLICY_DENIED', ErrorCodes.POLICY_DENIED, e.message, 1]);
  assert.match(entry!.reason, /Drafts are not tasks/);
});

test('does not record unauthenticated calls, bad input or missing resources', async (ctx) => {
  const raw = await RawSocket.open(ctx.ts.url);
  const reply = await raw.call('task.create', { type: 'x', title: 'y' });
  assert.is(reply.error?.code, ErrorCodes.UNAUTHENTICATED);
  await raw.close();
  await refusal(ctx.w1.call('task.get', { taskId: 'nope' }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.w1.call('task.create', { type: 'x' } as never), ErrorCodes.INVALID_PARAMS);
  await ctx.ts.server.app.audit!.flush();
  const methods = refused((await ctx.lead.call('audit.query', { outcome: 'refused', limit: 1000 })).items).map((e) => `${e.principal} ${e.method} ${e.code}`);
  assert.not.ok(methods.some((m) => m.startsWith('w1 task.get') || m.includes('INVALID') || m.includes('UNAUTHENTICATED')), methods.join('\n'));
});

test('filters by principal, method, outcome and time, and pages through every entry exactly once', async (ctx) => {
  const from = new Date().toISOString();
  const tasks = [];
  for (let i = 0; i < 7; i++) tasks.push(await ctx.lead.call('task.create', { type: 'paged', title: `t${i}` }));
  for (const t of tasks.slice(0, 3)) await ctx.lead.call('task.update', { taskId: t.id, title: 'renamed' });
  // Four attempts by one principal at one method within a second make one record.
  for (let i = 0; i < 4; i++) await refusal(ctx.eye.call('task.delete', { taskId: tasks[i]!.id }), ErrorCodes.FORBIDDEN);
  await ctx.ts.server.app.audit!.flush();
  const to = new Date(Date.now() + 1).toISOString();

  const window = { from, to };
  const whole = (await ctx.lead.call('audit.query', { ...window, limit: 1000 })).items;
  assert.equal(
    whole.map((e) => `${e.outcome} ${e.method}`).sort(),
    [...Array(7).fill('accepted task.create'), ...Array(3).fill('accepted task.update')].concat(whole.filter((e) => e.outcome === 'refused').map(() => 'refused task.delete')).sort(),
  );
  const times = whole.map((e) => Date.parse(e.at));
  assert.equal(times, [...times].sort((a, b) => b - a), 'newest first');
  for (const size of [1, 3, 4]) {
    assert.equal((await everything(ctx.eye, window, size)).map((e) => e.id), whole.map((e) => e.id), `pages of ${size}`);
  }
  const creates = await everything(ctx.eye, { ...window, method: 'task.create', principal: 'lead' }, 2);
  assert.is(creates.length, 7);
  assert.ok(creates.every((e) => e.outcome === 'accepted' && e.method === 'task.create' && e.principal === 'lead'));
  const deletes = refused(await everything(ctx.eye, { ...window, outcome: 'refused', method: 'task.delete' }, 2));
  assert.is(deletes.reduce((n, e) => n + e.count, 0), 4, 'every attempt is counted');
  assert.ok(deletes.every((e) => e.principal === 'eye' && e.code === 'FORBIDDEN'));
  assert.equal(await everything(ctx.eye, { ...window, outcome: 'accepted', principal: 'eye' }, 5), []);
  const earlier = (await ctx.lead.call('audit.query', { to: from, limit: 1000 })).items;
  assert.ok(earlier.every((e) => Date.parse(e.at) < Date.parse(from)));
  assert.not.ok(earlier.some((e) => whole.some((w) => w.id === e.id)), 'the ranges do not overlap');
});

test('only admins and observers read the trail, and only admins read and replay streams', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'private history' });
  const head = await ctx.ts.store.headPosition('acme');
  const e = await refusal(ctx.w1.call('audit.query', {}), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /Only admin or observer principals may read the audit trail/);
  for (const c of [ctx.w1, ctx.eye]) {
    await refusal(c.call('events.read', { kind: 'task', actorId: t.id }), ErrorCodes.FORBIDDEN);
    await refusal(c.call('events.replay', { kind: 'task', actorId: t.id }), ErrorCodes.FORBIDDEN);
  }
  assert.is(await ctx.ts.store.headPosition('acme'), head);
  await ctx.ts.server.app.audit!.flush();
  const attempts = refused((await ctx.lead.call('audit.query', { outcome: 'refused', limit: 1000 })).items);
  assert.ok(attempts.some((a) => a.principal === 'w1' && a.method === 'audit.query'), 'reading the trail without the right is itself recorded');
  assert.ok(attempts.some((a) => a.principal === 'eye' && a.method === 'events.replay' && a.actorId === t.id));
});

test('keeps tenants apart: no entries, streams or replays of another tenant', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'acme only' });
  await refusal(ctx.eye.call('task.create', { type: 'review', title: 'no' }), ErrorCodes.FORBIDDEN);
  await ctx.ts.server.app.audit!.flush();
  const theirs = await ctx.boss.call('audit.query', { limit: 1000 });
  assert.not.ok(theirs.items.some((e) => e.principal !== 'boss'), JSON.stringify(theirs.items.slice(0, 3)));
  assert.equal((await ctx.boss.call('audit.query', { actorId: t.id })).items, []);
  assert.equal((await ctx.boss.call('audit.query', { principal: 'eye' })).items, []);
  const read = await refusal(ctx.boss.call('events.read', { kind: 'task', actorId: t.id }), ErrorCodes.NOT_FOUND);
  const replay = await refusal(ctx.boss.call('events.replay', { kind: 'task', actorId: t.id }), ErrorCodes.NOT_FOUND);
  const missing = await refusal(ctx.boss.call('events.read', { kind: 'task', actorId: 'never-was' }), ErrorCodes.NOT_FOUND);
  assert.is(read.message.replace(t.id, 'X'), missing.message.replace('never-was', 'X'), 'another tenant\'s actor looks like no actor');
  assert.is(replay.reason, 'NOT_FOUND');
  // A cursor from one tenant's trail shows nothing of another's.
  const acmePage = await ctx.lead.call('audit.query', { limit: 1 });
  const across = await ctx.boss.call('audit.query', { cursor: acmePage.nextCursor!, limit: 1000 });
  assert.not.ok(across.items.some((e) => e.principal !== 'boss'));
});

test('events.read and events.replay show each state a task went through', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'lifecycle' });
  const seen = [t];
  seen.push(await ctx.lead.call('task.assign', { taskId: t.id, agentId: 'w1' }));
  seen.push(await ctx.w1.call('task.accept', { taskId: t.id }));
  seen.push(await ctx.w1.call('task.start', { taskId: t.id }));
  seen.push(await ctx.w1.call('task.progress', { taskId: t.id, percent: 50, message: 'half' }));
  seen.push(await ctx.w1.call('task.complete', { taskId: t.id, result: { ok: true } }));

  const read = await ctx.lead.call('events.read', { kind: 'task', actorId: t.id });
  assert.is(read.headVersion, 6);
  assert.equal(read.items.map((e) => [e.version, e.type, e.principal, e.status]), [
    [1, 'task.create', 'lead', 'pending'],
    [2, 'task.assign', 'lead', 'assigned'],
    [3, 'task.accept', 'w1', 'accepted'],
    [4, 'task.start', 'w1', 'in_progress'],
    [5, 'task.progress', 'w1', 'in_progress'],
    [6, 'task.complete', 'w1', 'completed'],
  ]);
  assert.equal(read.items[5]!.data.result, { ok: true }, 'admins see the event data');
  const tail = await ctx.lead.call('events.read', { kind: 'task', actorId: t.id, afterVersion: 4, limit: 1 });
  assert.equal(tail.items.map((e) => e.version), [5]);

  const replay = await ctx.lead.call('events.replay', { kind: 'task', actorId: t.id });
  assert.equal([replay.version, replay.headVersion, replay.status, replay.truncated, replay.matchesCurrent], [6, 6, 'completed', false, true]);
  assert.equal(replay.steps.map((s) => [s.version, s.type, s.principal, s.status, s.exists]), read.items.map((e) => [e.version, e.type, e.principal, e.status, true]));
  // Each replayed state is the resource the call that made it returned.
  replay.steps.forEach((s, i) => assert.equal(s.resource, seen[i], `state after event ${s.version}`));
  assert.equal(replay.resource, await ctx.lead.call('task.get', { taskId: t.id }));

  const at3 = await ctx.lead.call('events.replay', { kind: 'task', actorId: t.id, toVersion: 3, limit: 2 });
  assert.equal([at3.version, at3.status, at3.truncated, at3.matchesCurrent], [3, 'accepted', true, null]);
  assert.equal(at3.steps.map((s) => s.version), [2, 3]);
  assert.equal(at3.resource, seen[2]);
});

test('refuses malformed, wrongly typed and out-of-range params with INVALID_PARAMS and changes nothing', async (ctx) => {
  const t = await ctx.lead.call('task.create', { type: 'review', title: 'target' });
  const head = await ctx.ts.store.headPosition('acme');
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['audit.query', { cursor: 'not-a-cursor' }, /cursor/],
    ['audit.query', { cursor: Buffer.from('[1,"x"]').toString('base64url') }, /cursor/],
    ['audit.query', { from: '2025-01-02T00:00:00Z', to: '2025-01-01T00:00:00Z' }, /from must be before to/],
    ['audit.query', { from: 'yesterday' }, /from/],
    ['audit.query', { outcome: 'maybe' }, /outcome/],
    ['audit.query', { limit: 0 }, /limit/],
    ['audit.query', { limit: 'ten' }, /limit/],
    ['audit.query', { method: 'x'.repeat(129) }, /method/],
    ['audit.query', { actorId: 'a/b' }, /actorId/],
    ['audit.query', { actorKind: 'Task' }, /actorKind/],
    ['audit.query', { tenant: 'globex' }, /tenant|Unrecognized/i],
    ['events.read', { kind: 'task' }, /actorId/],
    ['events.read', { kind: 'task', actorId: t.id, afterVersion: -1 }, /afterVersion/],
    ['events.replay', { kind: 'nothing', actorId: t.id }, /cannot be replayed/],
    ['events.replay', { kind: 'task', actorId: t.id, toVersion: 2 }, /has 1 events; toVersion must be at most 1/],
    ['events.replay', { kind: 'task', actorId: t.id, toVersion: 0 }, /toVersion/],
  ];
  for (const [method, params, pattern] of bad) {
    const e = await refusal(ctx.lead.call(method as 'audit.query', params as never), ErrorCodes.INVALID_PARAMS);
    assert.match(e.message, pattern, `${method} ${JSON.stringify(params)}: ${e.message}`);
  }
  assert.is(await ctx.ts.store.headPosition('acme'), head);
  assert.is((await ctx.lead.call('events.read', { kind: 'task', actorId: t.id })).headVersion, 1);
});

test('a flood of 1 000 refused calls writes a bounded number of records and counts every attempt', async (ctx) => {
  const flooder = await ctx.ts.client('acme', 'flooder', ['observer']);
  const appendedBefore = ctx.appended.length;
  const started = Date.now();
  const results = await Promise.allSettled(Array.from({ length: 1000 }, (_, i) => flooder.call('task.create', { type: 'spam', title: `#${i}` })));
  const seconds = (Date.now() - started) / 1000;
  assert.ok(results.every((r) => r.status === 'rejected' && (r.reason as ProtocolError).code === ErrorCodes.FORBIDDEN), 'every call got its answer');
  await ctx.ts.server.app.audit!.flush();
  const records = refused((await ctx.lead.call('audit.query', { principal: 'flooder', limit: 1000 })).items);
  assert.is(records.reduce((n, r) => n + r.count, 0), 1000);
  // One record per principal, method and reason per second of flood, give or take a window edge.
  assert.ok(records.length <= Math.ceil(seconds) + 1, `${records.length} records for ${seconds} s`);
  const parts = ctx.appended.slice(appendedBefore).flat().filter((r) => r.principal === 'flooder');
  assert.ok(parts.length <= 2 * records.length, `${parts.length} record writes for ${records.length} records`);
  assert.is(ctx.ts.server.app.audit!.stats().dropped, 0);
});

test.run();

// ---------------------------------------------------------------------------------------------

interface LimitCtx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
}

const limits = suite<LimitCtx>('refusals at the limits are audited');

limits.before(async (ctx) => {
  ctx.dir = tempDir();
  ctx.ts = await startServer({
    store: sqliteStore(ctx.dir.dir),
    rateLimits: { defaults: { subscribe: { principal: { points: 1, durationSeconds: 3600 } } } },
    quotaLimits: { tasks: 1 },
  });
});

limits.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

limits('a RATE_LIMITED and a QUOTA_EXCEEDED call appear as refused with their reason', async (ctx) => {
  const lead = await ctx.ts.client('acme', 'lead', ['admin']);
  const w1 = await ctx.ts.client('acme', 'w1', ['agent']);
  await w1.call('subscribe', { topic: 'inbox:w1' });
  const limited = await refusal(w1.call('subscribe', { topic: 'inbox:w1' }), ErrorCodes.RATE_LIMITED);
  await lead.call('task.create', { type: 'only', title: 'the one' });
  const over = await refusal(lead.call('task.create', { type: 'only', title: 'one too many' }), ErrorCodes.QUOTA_EXCEEDED);
  await ctx.ts.server.app.audit!.flush();
  const entries = refused((await lead.call('audit.query', { outcome: 'refused' })).items);
  const byCode = new Map(entries.map((e) => [e.code, e]));
  assert.equal([byCode.get('RATE_LIMITED')?.principal, byCode.get('RATE_LIMITED')?.method, byCode.get('RATE_LIMITED')?.reason], ['w1', 'subscribe', limited.message]);
  assert.equal([byCode.get('QUOTA_EXCEEDED')?.principal, byCode.get('QUOTA_EXCEEDED')?.method, byCode.get('QUOTA_EXCEEDED')?.reason], ['lead', 'task.create', over.message]);
  assert.is(byCode.get('QUOTA_EXCEEDED')?.errorCode, ErrorCodes.QUOTA_EXCEEDED);
});

limits('a BUSY refusal noted by the server\'s recorder lands in the store and the trail', async (ctx) => {
  const lead = await ctx.ts.client('acme', 'lead', ['admin']);
  const p: Principal = { tenantId: 'acme', principalId: 'bot', roles: ['agent'] };
  const busy = new ProtocolError('BUSY', 'Task t9 has too many calls waiting; retry after 50 ms.', { retryAfterMs: 50 });
  ctx.ts.server.app.audit!.refused(p, 'task.progress', { taskId: 't9', percent: 5 }, busy, 'c-busy');
  await ctx.ts.server.app.audit!.flush();
  const [entry] = refused((await lead.call('audit.query', { principal: 'bot' })).items);
  assert.equal(
    [entry?.code, entry?.errorCode, entry?.method, entry?.actorKind, entry?.actorId, entry?.correlationId, entry?.reason],
    ['BUSY', ErrorCodes.BUSY, 'task.progress', 'task', 't9', 'c-busy', busy.message],
  );
});

limits.run();

// ---------------------------------------------------------------------------------------------

const recorder = suite('AuditRecorder');
const ann: Principal = { tenantId: 'acme', principalId: 'ann', roles: ['agent'] };
const forbidden = new ProtocolError('FORBIDDEN', 'Only admins may do that.');

recorder('aggregates by principal, method and reason per window, writing a record at most twice', async () => {
  const clock = fakeClock();
  const calls: RefusalRecord[][] = [];
  const store = interceptStore(new MemoryStore(), {
    appendRefusals: (inner, records) => (calls.push(structuredClone(records)), inner(records)),
  });
  const audit = new AuditRecorder({ store, now: clock.now, flushMs: 1 });
  for (let i = 0; i < 3; i++) audit.refused(ann, 'task.cancel', { taskId: 't1' }, forbidden);
  audit.refused(ann, 'task.cancel', { taskId: 't1' }, new ProtocolError('RATE_LIMITED', 'slow down'));
  audit.refused({ ...ann, principalId: 'bob' }, 'task.cancel', { taskId: 't1' }, forbidden);
  // The timer writes new records soon; the rest of a count waits for its window to close.
  await waitFor(() => calls.length === 1);
  audit.refused(ann, 'task.cancel', { taskId: 't2' }, forbidden);
  clock.advance(1000);
  audit.refused(ann, 'task.cancel', { taskId: 't1' }, forbidden);
  // The closed window's remainder and the new window's record go out together.
  await waitFor(() => audit.stats().pending === 1 && calls.length === 2);
  await audit.flush();
  const page = await store.queryEvents('acme', { limit: 100 });
  const records = page.items.map((i) => (i.outcome === 'refused' ? i.refusal : null)!);
  const rows = records.map((r) => JSON.stringify([r.principal, r.code, r.count, r.actorId])).sort();
  assert.equal(rows, [
    JSON.stringify(['ann', 'FORBIDDEN', 1, 't1']),
    JSON.stringify(['ann', 'FORBIDDEN', 4, null]),
    JSON.stringify(['ann', 'RATE_LIMITED', 1, 't1']),
    JSON.stringify(['bob', 'FORBIDDEN', 1, 't1']),
  ]);
  const writes = new Map<string, number>();
  for (const r of calls.flat()) writes.set(r.id, (writes.get(r.id) ?? 0) + 1);
  assert.ok([...writes.values()].every((n) => n <= 2), JSON.stringify([...writes]));
  assert.equal(audit.stats(), { pending: 1, dropped: 0, written: calls.flat().length });
  // Once its window closes, the next pass forgets it.
  clock.advance(1000);
  await audit.flush();
  assert.is(audit.stats().pending, 0);
  assert.is(calls.length, 2, 'a record with nothing left to count is not written again');
});

recorder('ignores other errors and principals it cannot name, and never throws', async () => {
  const store = new MemoryStore();
  const audit = new AuditRecorder({ store, flushMs: 1 });
  audit.refused(null, 'task.create', {}, forbidden);
  audit.refused(ann, 'task.get', {}, new ProtocolError('NOT_FOUND', 'gone'));
  audit.refused(ann, 'task.create', {}, new ProtocolError('UNAUTHENTICATED', 'who?'));
  audit.refused(ann, 'task.create', { taskId: 'x/../y' }, forbidden);
  audit.refused(ann, 'task.create', Object.create(null), forbidden);
  audit.refused(ann, 'x'.repeat(10_000), [1, 2], forbidden);
  audit.refused(ann, 'task.delete', null, { reason: 'FORBIDDEN', message: undefined } as unknown as ProtocolError);
  await audit.flush();
  const items = (await store.queryEvents('acme', {})).items.map((i) => (i.outcome === 'refused' ? i.refusal : null)!);
  assert.equal(items.map((r) => [r.method.length, r.actorId]).sort(), [[11, null], [128, null]]);
});

recorder('holds a bounded number of records and counts the attempts it had to drop', async () => {
  const store = new MemoryStore();
  const clock = fakeClock();
  const audit = new AuditRecorder({ store, now: clock.now, maxPending: 10, flushMs: 60_000 });
  for (let i = 0; i < 50; i++) audit.refused({ ...ann, principalId: `p${i}` }, 'task.create', {}, forbidden);
  assert.equal(audit.stats(), { pending: 10, dropped: 40, written: 0 });
  await audit.flush();
  assert.is((await store.queryEvents('acme', {})).items.length, 10);
  // Written records of closed windows make room for new ones.
  clock.advance(1000);
  audit.refused({ ...ann, principalId: 'late' }, 'task.create', {}, forbidden);
  assert.equal(audit.stats(), { pending: 1, dropped: 40, written: 10 });
});

recorder('a failing store neither fails nor delays the refused call; attempts are retried, then dropped and logged', async () => {
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  let failing = true;
  const store: Store = interceptStore(new MemoryStore(), {
    appendRefusals: (inner, records) => (failing ? Promise.reject(new Error('disk I/O error')) : inner(records)),
  });
  const audit = new AuditRecorder({ store, flushMs: 1, log });
  audit.refused(ann, 'task.create', {}, forbidden);
  await waitFor(() => audit.stats().pending === 0);
  assert.is(audit.stats().dropped, 1);
  assert.ok(lines.length >= 3 && lines.every((l) => l.level === 40), JSON.stringify(lines));
  failing = false;
  audit.refused(ann, 'task.create', {}, forbidden);
  await audit.flush();
  assert.is((await store.queryEvents('acme', {})).items.length, 1, 'it recovers once the store does');
});

recorder.run();

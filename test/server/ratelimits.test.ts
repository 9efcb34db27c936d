import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import { MethodSchemas, type MethodName } from '../../protocol/methods.js';
import { RateLimitClasses, RateLimitScopes } from '../../protocol/ratelimits.js';
import { DEFAULT_RATE_LIMITS } from '../../src/guard/RateLimits.js';
import { METHOD_CLASSES, callCost } from '../../src/guard/ratelimitClasses.js';
import { refusal } from '../helpers/errors.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { connect } from '../../protocol/client.js';
import { waitFor } from '../helpers/waitFor.js';

/** Sends `n` calls at once; resolves with how many were served and the refusals. */
async function flood(c: TroupeClient, n: number, method: MethodName = 'session.whoami', params: (i: number) => object = () => ({})) {
  const settled = await Promise.allSettled(Array.from({ length: n }, (_, i) => c.call(method, params(i) as never)));
  const refused = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected').map((s) => s.reason as ProtocolError);
  return { served: settled.length - refused.length, refused };
}

function assertLimited(e: ProtocolError, expected: { class: string; scope: string; limit: number; durationSeconds?: number }): void {
  assert.ok(e instanceof ProtocolError, String(e));
  assert.is(e.code, ErrorCodes.RATE_LIMITED, e.message);
  assert.is(e.reason, 'RATE_LIMITED');
  assert.is(e.data.class, expected.class);
  assert.is(e.data.scope, expected.scope);
  assert.is(e.data.limit, expected.limit);
  if (expected.durationSeconds !== undefined) assert.is(e.data.durationSeconds, expected.durationSeconds);
  assert.type(e.data.retryAfterMs, 'number');
  assert.ok((e.data.retryAfterMs as number) > 0 && (e.data.retryAfterMs as number) <= (expected.durationSeconds ?? 1) * 1000, `retryAfterMs ${e.data.retryAfterMs}`);
}

// ---------------------------------------------------------------------------------------------

const classes = suite('rate limit classes');

classes('every method of the catalogue has a class; only ping and session.authenticate are never limited', () => {
  for (const m of Object.keys(MethodSchemas) as MethodName[]) {
    const c = METHOD_CLASSES[m];
    if (m === 'ping' || m === 'session.authenticate') assert.is(c, null, m);
    else assert.ok(c !== null && (RateLimitClasses as readonly string[]).includes(c), `${m}: ${c}`);
  }
});

classes('methods fall into the classes their names promise', () => {
  const expected: Partial<Record<MethodName, string>> = {
    'task.create': 'task:create',
    'task.createBatch': 'task:create',
    'task.createDistributed': 'task:create',
    'task.accept': 'task:write',
    'task.complete': 'task:write',
    'task.cancelTree': 'task:write',
    'task.archive': 'task:write',
    'task.get': 'read',
    'task.search': 'read',
    'task.report': 'read',
    'task.available': 'read',
    'workflow.execute': 'workflow:execute',
    'execution.retry': 'workflow:execute',
    'workflow.create': 'workflow:write',
    'template.create': 'workflow:write',
    'execution.pause': 'workflow:write',
    'execution.trace': 'read',
    'rule.register': 'rule:write',
    'policy.set': 'rule:write',
    'rule.evaluate': 'read',
    'agent.register': 'agent:write',
    'agent.heartbeat': 'agent:write',
    'agent.performance': 'read',
    subscribe: 'subscribe',
    unsubscribe: 'read',
    'session.whoami': 'read',
    'ratelimit.get': 'read',
    'ratelimit.status': 'read',
    'ratelimit.set': 'limits:write',
    'ratelimit.unset': 'limits:write',
  };
  for (const [m, c] of Object.entries(expected)) assert.is(METHOD_CLASSES[m as MethodName], c, m);
});

classes('batch creations cost one point per task', () => {
  assert.is(callCost('task.create', { type: 't', title: 'x' }), 1);
  assert.is(callCost('task.createBatch', { tasks: [{}, {}, {}] }), 3);
  assert.is(callCost('task.createDistributed', { subtasks: [{}, {}] }), 3, 'two subtasks and the parent');
});

classes.run();

// ---------------------------------------------------------------------------------------------

interface Ctx {
  ts: TestServer;
}

const test = suite<Ctx>('rate limits over WebSocket');

test.before(async (ctx) => {
  ctx.ts = await startServer();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

test('a flood from one principal is refused with RATE_LIMITED while others of the tenant and of another tenant are served', async (ctx) => {
  const admin = await ctx.ts.client('flood', 'lead', ['admin']);
  const noisy = await ctx.ts.client('flood', 'noisy', ['agent']);
  const quiet = await ctx.ts.client('flood', 'quiet', ['agent']);
  const stranger = await ctx.ts.client('other', 'noisy', ['agent']);
  await admin.call('ratelimit.set', { class: 'task:create', scope: 'principal', points: 3, durationSeconds: 60 });
  const head = await ctx.ts.store.headPosition('flood');

  const r = await flood(noisy, 12, 'task.create', (i) => ({ type: 'spam', title: `spam ${i}` }));
  assert.is(r.served, 3);
  assert.is(r.refused.length, 9);
  for (const e of r.refused) assertLimited(e, { class: 'task:create', scope: 'principal', limit: 3, durationSeconds: 60 });
  assert.match(r.refused[0]!.message, /Too many task:create calls for principal noisy: the limit is 3 per 60 s \(set by the tenant\)\. Retry after \d+ ms/);
  assert.is(r.refused[0]!.data.method, 'task.create');
  const created = await admin.call('task.search', { type: 'spam' });
  assert.is(created.items.length, 3, 'refused calls created nothing');
  assert.is(await ctx.ts.store.headPosition('flood'), head + 3, 'only the served calls were written');

  const q = await flood(quiet, 3, 'task.create', (i) => ({ type: 'work', title: `work ${i}` }));
  assert.is(q.served, 3, 'another principal of the tenant has its own budget');
  const s = await flood(stranger, 10, 'task.create', (i) => ({ type: 'spam', title: `elsewhere ${i}` }));
  assert.is(s.served, 10, 'the same principal name in another tenant is not limited');
  const again = await refusal(noisy.call('task.create', { type: 'spam', title: 'still?' }), ErrorCodes.RATE_LIMITED);
  assertLimited(again, { class: 'task:create', scope: 'principal', limit: 3, durationSeconds: 60 });
  assert.ok(await noisy.call('task.search', { type: 'spam' }), 'other classes of the limited principal are still served');
});

test('a connection budget limits each connection of a principal on its own', async (ctx) => {
  const admin = await ctx.ts.client('conns', 'lead', ['admin']);
  await admin.call('ratelimit.set', { class: 'read', scope: 'connection', points: 4, durationSeconds: 60 });
  const one = await ctx.ts.client('conns', 'worker', ['agent']);
  const two = await ctx.ts.client('conns', 'worker', ['agent']);
  const r1 = await flood(one, 6);
  assert.is(r1.served, 4);
  for (const e of r1.refused) assertLimited(e, { class: 'read', scope: 'connection', limit: 4, durationSeconds: 60 });
  assert.match(r1.refused[0]!.message, /for this connection/);
  const r2 = await flood(two, 4);
  assert.is(r2.served, 4, 'the second connection of the same principal has its own budget');
  await refusal(two.call('session.whoami', {}), ErrorCodes.RATE_LIMITED);
});

test('a refusal at a wider scope gives the points taken at narrower scopes back', async (ctx) => {
  const admin = await ctx.ts.client('wide', 'lead', ['admin']);
  await admin.call('ratelimit.set', { class: 'agent:write', scope: 'tenant', points: 3, durationSeconds: 60 });
  await admin.call('ratelimit.set', { class: 'agent:write', scope: 'principal', points: 5, durationSeconds: 60 });
  const a = await ctx.ts.client('wide', 'a', ['agent']);
  const b = await ctx.ts.client('wide', 'b', ['agent']);
  await a.call('agent.register', { capabilities: ['x'] });
  await a.call('agent.heartbeat', {});
  await b.call('agent.register', { capabilities: ['y'] });
  const e = await refusal(b.call('agent.heartbeat', {}), ErrorCodes.RATE_LIMITED);
  assertLimited(e, { class: 'agent:write', scope: 'tenant', limit: 3, durationSeconds: 60 });
  assert.match(e.message, /for tenant wide/);
  const st = await b.call('ratelimit.status', { class: 'agent:write' });
  assert.is(st.classes['agent:write']!.principal.used, 1, 'the refused heartbeat took nothing from b');
  // The connection's one-second window may have rolled over while the refused connection was
  // not read (see the next test); either way the refusal took nothing from it.
  assert.ok(st.classes['agent:write']!.connection.used <= 1);
  assert.is(st.classes['agent:write']!.tenant.used, 3);
});

test('a connection that was refused for going too fast is not read until it may send again (at most a second)', async (ctx) => {
  const admin = await ctx.ts.client('calm', 'lead', ['admin']);
  await admin.call('ratelimit.set', { class: 'read', scope: 'principal', points: 1, durationSeconds: 60 });
  const fast = await ctx.ts.client('calm', 'fast', ['agent']);
  await fast.call('session.whoami', {});
  const e = await refusal(fast.call('session.whoami', {}), ErrorCodes.RATE_LIMITED);
  assert.ok((e.data.retryAfterMs as number) > 1000);
  const sent = Date.now();
  // Still refused (the budget is spent for a minute), but only after the connection's pause.
  await refusal(fast.call('session.whoami', {}), ErrorCodes.RATE_LIMITED);
  assert.ok(Date.now() - sent >= 900, `answered after ${Date.now() - sent} ms`);
  // Other connections of the tenant are read as usual meanwhile.
  const other = await ctx.ts.client('calm', 'other', ['agent']);
  const t0 = Date.now();
  await other.call('session.whoami', {});
  assert.ok(Date.now() - t0 < 900);
});

test('overrides set by a tenant admin apply from the next call, and unset restores the default', async (ctx) => {
  const admin = await ctx.ts.client('tune', 'lead', ['admin']);
  const agent = await ctx.ts.client('tune', 'worker', ['agent']);
  assert.is((await flood(agent, 5)).served, 5, 'the defaults are generous');
  const before = await admin.call('ratelimit.get', {});
  assert.equal(before.limits.read.principal, { ...DEFAULT_RATE_LIMITS.read.principal, source: 'default' });
  assert.equal([before.version, before.updatedBy, before.updatedAt, before.overrides], [0, null, null, {}]);

  const set = await admin.call('ratelimit.set', { class: 'read', scope: 'principal', points: 2, durationSeconds: 30 });
  assert.equal(set.limits.read.principal, { points: 2, durationSeconds: 30, source: 'tenant' });
  assert.equal(set.overrides, { read: { principal: { points: 2, durationSeconds: 30 } } });
  assert.is(set.version, 1);
  assert.is(set.updatedBy, 'lead');
  assert.ok(set.methods.read.includes('task.get'));
  assert.ok(set.methods['task:create'].includes('task.createBatch'));

  // The new budget counts from the change: two more calls, then refused.
  assert.equal(await agent.call('ratelimit.get', {}), set, 'any principal of the tenant reads the limits');
  const r = await flood(agent, 4);
  assert.is(r.served, 1);
  assertLimited(r.refused[0]!, { class: 'read', scope: 'principal', limit: 2, durationSeconds: 30 });

  const tighter = await admin.call('ratelimit.set', { class: 'read', scope: 'principal', points: 1, durationSeconds: 600, expectedVersion: 1 });
  assert.is(tighter.version, 2);
  const r2 = await flood(agent, 3);
  assert.is(r2.served, 1);
  assertLimited(r2.refused[0]!, { class: 'read', scope: 'principal', limit: 1, durationSeconds: 600 });

  const unset = await admin.call('ratelimit.unset', { class: 'read', scope: 'principal' });
  assert.equal(unset.overrides, {});
  assert.equal(unset.limits.read.principal.source, 'default');
  assert.is(unset.version, 3);
  assert.is((await flood(agent, 5)).served, 5, 'the default applies again at once');
});

test('refuses ratelimit.set and ratelimit.unset from non-admins with FORBIDDEN and changes nothing', async (ctx) => {
  const admin = await ctx.ts.client('guarded', 'lead', ['admin']);
  const agent = await ctx.ts.client('guarded', 'worker', ['agent']);
  const observer = await ctx.ts.client('guarded', 'watcher', ['observer']);
  await admin.call('ratelimit.set', { class: 'subscribe', scope: 'tenant', points: 50, durationSeconds: 10 });
  const before = await admin.call('ratelimit.get', {});
  const head = await ctx.ts.store.headPosition('guarded');
  for (const c of [agent, observer]) {
    const e = await refusal(c.call('ratelimit.set', { class: 'read', scope: 'tenant', points: 1_000_000, durationSeconds: 1 }), ErrorCodes.FORBIDDEN);
    assert.match(e.message, /Only admin principals may change rate limits/);
    await refusal(c.call('ratelimit.unset', { class: 'subscribe', scope: 'tenant' }), ErrorCodes.FORBIDDEN);
  }
  assert.is(await ctx.ts.store.headPosition('guarded'), head, 'nothing was written');
  assert.equal(await admin.call('ratelimit.get', {}), before);
  const other = await ctx.ts.client('elsewhere', 'boss', ['admin']);
  assert.equal((await other.call('ratelimit.get', {})).overrides, {}, 'an admin changes only its own tenant');
});

test('ratelimit.unset of a budget that has no override writes nothing; a stale expectedVersion is refused', async (ctx) => {
  const admin = await ctx.ts.client('noop', 'lead', ['admin']);
  const head = await ctx.ts.store.headPosition('noop');
  const r = await admin.call('ratelimit.unset', { class: 'read', scope: 'tenant' });
  assert.is(r.version, 0);
  assert.is(await ctx.ts.store.headPosition('noop'), head);
  await admin.call('ratelimit.set', { class: 'read', scope: 'tenant', points: 100, durationSeconds: 1 });
  const stale = await refusal(admin.call('ratelimit.set', { class: 'read', scope: 'tenant', points: 5, durationSeconds: 1, expectedVersion: 0 }), ErrorCodes.VERSION_MISMATCH);
  assert.is(stale.data.actualVersion, 1);
  await refusal(admin.call('ratelimit.unset', { class: 'read', scope: 'tenant', expectedVersion: 7 }), ErrorCodes.VERSION_MISMATCH);
  assert.equal((await admin.call('ratelimit.get', {})).overrides, { read: { tenant: { points: 100, durationSeconds: 1 } } });
});

test('ratelimit.status shows the caller what is left of each budget', async (ctx) => {
  const admin = await ctx.ts.client('budget', 'lead', ['admin']);
  await admin.call('ratelimit.set', { class: 'task:create', scope: 'tenant', points: 100, durationSeconds: 60 });
  await admin.call('ratelimit.set', { class: 'task:create', scope: 'principal', points: 10, durationSeconds: 60 });
  await admin.call('ratelimit.set', { class: 'task:create', scope: 'connection', points: 8, durationSeconds: 60 });
  await admin.call('ratelimit.set', { class: 'read', scope: 'principal', points: 50, durationSeconds: 60 });
  const agent = await ctx.ts.client('budget', 'worker', ['agent']);
  await agent.call('task.createBatch', { tasks: [{ type: 'b', title: '1' }, { type: 'b', title: '2' }, { type: 'b', title: '3' }] });
  await agent.call('task.create', { type: 'b', title: '4' });

  const st = await agent.call('ratelimit.status', { class: 'task:create' });
  assert.is(st.backend, 'memory');
  assert.equal(Object.keys(st.classes), ['task:create']);
  const row = st.classes['task:create']!;
  assert.equal([row.tenant.used, row.tenant.remaining, row.tenant.points, row.tenant.source], [4, 96, 100, 'tenant']);
  assert.equal([row.principal.used, row.principal.remaining, row.principal.points], [4, 6, 10]);
  assert.equal([row.connection.used, row.connection.remaining, row.connection.points], [4, 4, 8]);
  for (const scope of RateLimitScopes) {
    assert.is(row[scope].durationSeconds, 60);
    assert.ok(row[scope].resetMs > 0 && row[scope].resetMs <= 60_000, `${scope} resetMs ${row[scope].resetMs}`);
  }

  // A call that costs more than a whole budget is refused without taking anything.
  const big = await refusal(agent.call('task.createBatch', { tasks: Array.from({ length: 9 }, (_, i) => ({ type: 'b', title: `big ${i}` })) }), ErrorCodes.RATE_LIMITED);
  assert.equal([big.data.class, big.data.scope, big.data.limit, big.data.cost, big.data.retryable], ['task:create', 'connection', 8, 9, false]);
  assert.match(big.message, /costs 9 points of task:create, more than the whole budget of this connection \(8 per 60 s\); split it/);
  const over = await refusal(agent.call('task.createDistributed', {
    type: 'd', title: 'tree', coordination: 'parallel', completion: { mode: 'all' },
    subtasks: [{ title: 'a' }, { title: 'b' }, { title: 'c' }, { title: 'd' }, { title: 'e' }],
  }), ErrorCodes.RATE_LIMITED);
  assert.is(over.data.scope, 'connection', 'five subtasks and the parent: 6 points, more than the 4 the connection has left');
  assert.match(over.message, /Too many task:create calls for this connection: the limit is 8 per 60 s/);
  assert.equal((await agent.call('task.search', { type: 'b' })).items.length, 4, 'no refused task was created');

  const all = await agent.call('ratelimit.status', {});
  assert.equal(Object.keys(all.classes).sort(), [...RateLimitClasses].sort());
  assert.equal(all.classes['task:create']!.principal.used, 4, 'refused calls gave their points back');
  // Reads so far: two statuses and one search (this status included).
  assert.equal([all.classes.read!.principal.used, all.classes.read!.principal.remaining, all.classes.read!.principal.source], [3, 47, 'tenant']);
  assert.equal([all.classes.read!.tenant.points, all.classes.read!.tenant.durationSeconds, all.classes.read!.tenant.source], [DEFAULT_RATE_LIMITS.read.tenant.points, 1, 'default']);
  assert.equal(all.classes['limits:write']!.principal.used, 0);
});

test('overrides survive a restart on the same store', async () => {
  const { dir, remove } = tempDir('troupe-ratelimit-');
  try {
    const one = await startServer({ store: sqliteStore(dir) });
    const adminKey = await one.key('kept', 'lead', ['admin']);
    const agentKey = await one.key('kept', 'worker', ['agent']);
    const admin = await connect(one.url, { token: adminKey, reconnect: false });
    await admin.call('ratelimit.set', { class: 'workflow:execute', scope: 'principal', points: 2, durationSeconds: 60 });
    await admin.close();
    await one.close();

    const two = await startServer({ store: sqliteStore(dir) });
    try {
      const agent = await connect(two.url, { token: agentKey, reconnect: false });
      const st = await agent.call('ratelimit.status', { class: 'workflow:execute' });
      assert.equal([st.classes['workflow:execute']!.principal.points, st.classes['workflow:execute']!.principal.source], [2, 'tenant']);
      const settings = await agent.call('ratelimit.get', {});
      assert.equal([settings.version, settings.updatedBy], [1, 'lead']);
      await agent.close();
    } finally {
      await two.close();
    }
  } finally {
    remove();
  }
});

test('refuses bad input to the rate limit methods with INVALID_PARAMS and changes nothing', async (ctx) => {
  const admin = await ctx.ts.client('badinput', 'lead', ['admin']);
  await admin.call('ratelimit.set', { class: 'read', scope: 'tenant', points: 1000, durationSeconds: 1 });
  const before = await admin.call('ratelimit.get', {});
  const head = await ctx.ts.store.headPosition('badinput');
  const ok = { class: 'read', scope: 'principal', points: 10, durationSeconds: 60 };
  const bad: [MethodName, unknown, RegExp][] = [
    ['ratelimit.set', { ...ok, class: 'everything' }, /class/],
    ['ratelimit.set', { ...ok, class: 'limits:write' }, /class/],
    ['ratelimit.set', { ...ok, class: 7 }, /class/],
    ['ratelimit.set', { ...ok, scope: 'node' }, /scope/],
    ['ratelimit.set', { ...ok, points: 0 }, /points/],
    ['ratelimit.set', { ...ok, points: -5 }, /points/],
    ['ratelimit.set', { ...ok, points: 1.5 }, /points/],
    ['ratelimit.set', { ...ok, points: '10' }, /points/],
    ['ratelimit.set', { ...ok, points: 1e12 }, /points/],
    ['ratelimit.set', { ...ok, durationSeconds: 0 }, /durationSeconds/],
    ['ratelimit.set', { ...ok, durationSeconds: 86_401 }, /durationSeconds/],
    ['ratelimit.set', { ...ok, durationSeconds: null }, /durationSeconds/],
    ['ratelimit.set', { class: 'read', scope: 'tenant' }, /points/],
    ['ratelimit.set', { ...ok, tenant: 'other' }, /Unrecognized key/i],
    ['ratelimit.set', { ...ok, expectedVersion: -1 }, /expectedVersion/],
    ['ratelimit.set', [ok], /params/],
    ['ratelimit.unset', { class: 'read' }, /scope/],
    ['ratelimit.unset', { class: 'read', scope: 'tenant', points: 1 }, /Unrecognized key/i],
    ['ratelimit.status', { class: 'writes' }, /class/],
    ['ratelimit.status', { scope: 'tenant' }, /Unrecognized key/i],
    ['ratelimit.get', { tenant: 'other' }, /Unrecognized key/i],
  ];
  for (const [method, params, why] of bad) {
    const e = await refusal(admin.call(method, params as never), ErrorCodes.INVALID_PARAMS);
    assert.match(e.message, why, `${method} ${JSON.stringify(params)}: ${e.message}`);
  }
  assert.is(await ctx.ts.store.headPosition('badinput'), head, 'nothing was written');
  assert.equal(await admin.call('ratelimit.get', {}), before);
});

test.run();

// ---------------------------------------------------------------------------------------------

interface RedisCtx {
  redis: RedisProcess;
  a: TestServer;
  b: TestServer;
}

const shared = suite<RedisCtx>('rate limits shared through Redis');

/** Small read budgets per principal, the same on both nodes (each node has its own store). */
const readPerPrincipal = { read: { principal: { points: 6, durationSeconds: 60 }, tenant: { points: 1000, durationSeconds: 60 } } };

shared.before(async (ctx) => {
  ctx.redis = await startRedis();
  const opts = { redisUrl: ctx.redis.url, rateLimits: { defaults: readPerPrincipal, redisTimeoutMs: 200, redisRetryAfterMs: 300 } };
  ctx.a = await startServer(opts);
  ctx.b = await startServer(opts);
  await waitFor(() => ctx.a.server.app.rateLimits!.backend === 'redis' && ctx.b.server.app.rateLimits!.backend === 'redis');
});

shared.after(async (ctx) => {
  await ctx.a?.close();
  await ctx.b?.close();
  await ctx.redis?.stop();
});

shared('two nodes share one budget through Redis', async (ctx) => {
  const onA = await ctx.a.client('acme', 'worker', ['agent']);
  const onB = await ctx.b.client('acme', 'worker', ['agent']);
  assert.is((await flood(onA, 4)).served, 4);
  const r = await flood(onB, 4);
  assert.is(r.served, 2, 'node b sees the 4 calls made on node a');
  assertLimited(r.refused[0]!, { class: 'read', scope: 'principal', limit: 6, durationSeconds: 60 });
  await refusal(onA.call('session.whoami', {}), ErrorCodes.RATE_LIMITED);
  const st = await ctx.b.client('acme', 'other', ['agent']).then((c) => c.call('ratelimit.status', { class: 'read' }));
  assert.is(st.backend, 'redis');
  assert.is(st.classes.read!.tenant.used, 7, 'the tenant budget counts the calls both nodes served, this one included');
  assert.ok((await ctx.redis.command('KEYS troupe:rl:*')).includes('principal/read/6/60'), 'the counters are in Redis');
});

shared('when Redis stops, calls are still answered and limited on each node alone; they are shared again once it is back', async (ctx) => {
  const onA = await ctx.a.client('stop', 'worker', ['agent']);
  const onB = await ctx.b.client('stop', 'worker', ['agent']);
  assert.is((await flood(onA, 3)).served, 3);
  await ctx.redis.stop();
  await waitFor(() => ctx.a.server.app.rateLimits!.backend === 'memory-fallback' && ctx.b.server.app.rateLimits!.backend === 'memory-fallback');
  // Fail open to per-node memory: each node counts from zero with the same limits.
  const ra = await flood(onA, 8);
  assert.is(ra.served, 6);
  assertLimited(ra.refused[0]!, { class: 'read', scope: 'principal', limit: 6, durationSeconds: 60 });
  assert.is((await flood(onB, 8)).served, 6, 'node b counts on its own');

  await ctx.redis.restart();
  await waitFor(() => ctx.a.server.app.rateLimits!.backend === 'redis' && ctx.b.server.app.rateLimits!.backend === 'redis', { timeoutMs: 10_000 });
  const fresh = await ctx.a.client('stop', 'fresh', ['agent']);
  assert.is((await flood(fresh, 4)).served, 4);
  const onB2 = await ctx.b.client('stop', 'fresh', ['agent']);
  assert.is((await flood(onB2, 4)).served, 2, 'shared again');
});

shared('a paused Redis does not hang calls: they fall back to memory within the timeout, and go back to Redis after it resumes', async (ctx) => {
  const onA = await ctx.a.client('pause', 'worker', ['agent']);
  assert.is((await flood(onA, 1)).served, 1);
  ctx.redis.pause();
  try {
    const r = await flood(onA, 3);
    assert.is(r.served + r.refused.length, 3, 'every call was answered');
    assert.is(r.served, 3, 'served from the memory fallback');
    assert.is(ctx.a.server.app.rateLimits!.backend, 'memory-fallback', 'the breaker opened');
  } finally {
    ctx.redis.resume();
  }
  // The first call after the breaker's pause tries Redis again.
  await waitFor(async () => {
    await onA.call('session.whoami', {}).catch(() => {});
    return ctx.a.server.app.rateLimits!.backend === 'redis';
  }, { timeoutMs: 10_000 });
  const other = await ctx.a.client('pause', 'other', ['agent']);
  const st = await other.call('ratelimit.status', { class: 'read' });
  assert.is(st.backend, 'redis');
  assert.is(st.classes.read!.principal.used, 1);
});

shared.run();

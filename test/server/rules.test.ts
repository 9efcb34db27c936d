import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
  admin: TroupeClient;
  agent: TroupeClient;
  observer: TroupeClient;
}

const test = suite<Ctx>('rules and policies over WebSocket');

test.before(async (ctx) => {
  ctx.dir = tempDir();
  ctx.ts = await startServer({ store: sqliteStore(ctx.dir.dir) });
  ctx.admin = await ctx.ts.client('acme', 'lead', ['admin']);
  ctx.agent = await ctx.ts.client('acme', 'worker', ['agent']);
  ctx.observer = await ctx.ts.client('acme', 'watcher', ['observer']);
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

test('an admin registers a rule, and anyone in the tenant can read it', async (ctx) => {
  const r = await ctx.admin.call('rule.register', {
    name: 'no-low',
    category: 'task.validation',
    expression: "task.priority != 'low'",
    priority: 5,
    message: 'Low priority work is not accepted.',
  });
  assert.is(r.id, 'no-low');
  assert.is(r.tenantId, 'acme');
  assert.is(r.enabled, true);
  assert.is(r.priority, 5);
  assert.is(r.version, 1);
  assert.is(r.createdBy, 'lead');
  assert.equal(await ctx.agent.call('rule.get', { ruleId: 'no-low' }), r);
  assert.equal(await ctx.observer.call('rule.get', { ruleId: 'no-low' }), r);
  const verdict = await ctx.ts.server.rules.check('acme', 'task.validation', { task: { priority: 'low' } });
  assert.equal(verdict, { allowed: false, rule: { id: 'no-low', name: 'no-low' }, reason: 'Low priority work is not accepted.' }, 'the engine sees it at once');
});

test('refuses rule and policy changes and dry runs from non-admins with FORBIDDEN and changes nothing', async (ctx) => {
  await ctx.admin.call('rule.register', { name: 'guarded', category: 'task.delegation', expression: 'true' });
  const before = await ctx.admin.call('rule.get', { ruleId: 'guarded' });
  const head = await ctx.ts.store.headPosition('acme');
  for (const c of [ctx.agent, ctx.observer]) {
    const e = await refusal(c.call('rule.register', { name: 'sneaky', category: 'task.validation', expression: 'false' }), ErrorCodes.FORBIDDEN);
    assert.match(e.message, /Only admin principals may register rules/);
    await refusal(c.call('rule.update', { ruleId: 'guarded', expression: 'false' }), ErrorCodes.FORBIDDEN);
    await refusal(c.call('rule.delete', { ruleId: 'guarded' }), ErrorCodes.FORBIDDEN);
    await refusal(c.call('rule.evaluate', { ruleId: 'guarded', input: {} }), ErrorCodes.FORBIDDEN);
    await refusal(c.call('policy.set', { taskType: '*', defaults: { maxRetries: 9 } }), ErrorCodes.FORBIDDEN);
  }
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'nothing was written');
  assert.equal(await ctx.admin.call('rule.get', { ruleId: 'guarded' }), before);
  await refusal(ctx.admin.call('rule.get', { ruleId: 'sneaky' }), ErrorCodes.NOT_FOUND);
});

test('refuses an expression that does not compile with the compiler message and its position', async (ctx) => {
  const head = await ctx.ts.store.headPosition('acme');
  const e = await refusal(
    ctx.admin.call('rule.register', { name: 'broken', category: 'task.validation', expression: "task.priority == 'high' &&\n  agent.cost <" }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.match(e.message, /does not compile: Unexpected token: EOF \(line 2, column 15\)/);
  assert.is(e.data.field, 'expression');
  assert.equal(e.data.position, { line: 2, column: 15, offset: 41 });
  const unknown = await refusal(ctx.admin.call('rule.register', { name: 'typo', category: 'task.validation', expression: 'taks.priority == "x"' }), ErrorCodes.INVALID_PARAMS);
  assert.match(unknown.message, /Unknown variable: taks/);
  const wrongType = await refusal(ctx.admin.call('rule.register', { name: 'count', category: 'task.assignment', expression: 'size(agent.capabilities)' }), ErrorCodes.INVALID_PARAMS);
  assert.match(wrongType.message, /must yield a bool/);
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'nothing was written');
  await refusal(ctx.admin.call('rule.get', { ruleId: 'broken' }), ErrorCodes.NOT_FOUND);
});

test('refuses a second registration of a name with ALREADY_EXISTS, also after a delete', async (ctx) => {
  await ctx.admin.call('rule.register', { name: 'once', category: 'task.validation', expression: 'true' });
  const again = await refusal(ctx.admin.call('rule.register', { name: 'once', category: 'task.validation', expression: 'false' }), ErrorCodes.ALREADY_EXISTS);
  assert.match(again.message, /Rule once already exists; change it with rule.update/);
  assert.is((await ctx.admin.call('rule.get', { ruleId: 'once' })).expression, 'true');
  const deleted = await ctx.admin.call('rule.delete', { ruleId: 'once', expectedVersion: 1 });
  assert.equal(deleted, { id: 'once', deleted: true, version: 2 });
  await refusal(ctx.admin.call('rule.get', { ruleId: 'once' }), ErrorCodes.NOT_FOUND);
  const reused = await refusal(ctx.admin.call('rule.register', { name: 'once', category: 'task.validation', expression: 'true' }), ErrorCodes.ALREADY_EXISTS);
  assert.match(reused.message, /was deleted/);
  await refusal(ctx.admin.call('rule.update', { ruleId: 'once', priority: 1 }), ErrorCodes.NOT_FOUND);
});

test('an update with a stale expectedVersion is refused with VERSION_MISMATCH and changes nothing', async (ctx) => {
  await ctx.admin.call('rule.register', { name: 'versioned', category: 'task.validation', expression: 'true' });
  const v2 = await ctx.admin.call('rule.update', { ruleId: 'versioned', expectedVersion: 1, priority: 3, enabled: false });
  assert.is(v2.version, 2);
  assert.is(v2.enabled, false);
  const e = await refusal(ctx.admin.call('rule.update', { ruleId: 'versioned', expectedVersion: 1, expression: 'false' }), ErrorCodes.VERSION_MISMATCH);
  assert.is(e.data.actualVersion, 2);
  assert.equal(await ctx.admin.call('rule.get', { ruleId: 'versioned' }), v2);
  const bad = await refusal(ctx.admin.call('rule.update', { ruleId: 'versioned', expression: 'task.x +' }), ErrorCodes.INVALID_PARAMS);
  assert.match(bad.message, /does not compile/);
  await refusal(ctx.admin.call('rule.update', { ruleId: 'versioned' }), ErrorCodes.INVALID_PARAMS);
  assert.is((await ctx.admin.call('rule.get', { ruleId: 'versioned' })).version, 2);
});

test('lists rules filtered by category and enabled flag', async (ctx) => {
  await ctx.admin.call('rule.register', { name: 'pick-gpu', category: 'task.assignment', expression: "'gpu' in agent.capabilities" });
  await ctx.admin.call('rule.register', { name: 'pick-cheap', category: 'task.assignment', expression: 'agent.costPerTask < 5.0', enabled: false });
  const all = await ctx.agent.call('rule.list', { category: 'task.assignment' });
  assert.equal(all.items.map((r) => r.id).sort(), ['pick-cheap', 'pick-gpu']);
  const enabled = await ctx.agent.call('rule.list', { category: 'task.assignment', enabled: true });
  assert.equal(enabled.items.map((r) => r.id), ['pick-gpu']);
  const disabled = await ctx.observer.call('rule.list', { enabled: false, category: 'task.assignment' });
  assert.equal(disabled.items.map((r) => r.id), ['pick-cheap']);
});

test('rule.evaluate dry-runs a category, one rule or an expression, and changes nothing', async (ctx) => {
  await ctx.admin.call('rule.register', { name: 'budget', category: 'task.delegation', expression: 'task.parameters.budget >= 10.5', priority: 2, message: 'too cheap to delegate' });
  await ctx.admin.call('rule.register', { name: 'not-self', category: 'task.delegation', expression: 'delegation.to != principal.id', priority: 1 });
  const head = await ctx.ts.store.headPosition('acme');
  const input = { task: { parameters: { budget: 10 } }, delegation: { to: 'lead' } };
  const r = await ctx.admin.call('rule.evaluate', { category: 'task.delegation', input });
  assert.equal(r.results, [
    { rule: 'budget', value: false, allowed: false },
    { rule: 'not-self', value: false, allowed: false },
    { rule: 'guarded', value: true, allowed: true },
  ], 'highest priority first; the caller is the principal unless the input names one');
  assert.equal(r.verdict, { allowed: false, rule: { id: 'budget', name: 'budget' }, reason: 'too cheap to delegate' });

  const one = await ctx.admin.call('rule.evaluate', { ruleId: 'not-self', input: { ...input, principal: { id: 'someone' } } });
  assert.equal(one.verdict, { allowed: true });

  const failing = await ctx.admin.call('rule.evaluate', { ruleId: 'budget', input: {} });
  assert.is(failing.verdict?.allowed, false);
  assert.match(failing.results[0]!.error ?? '', /No such key: parameters/);

  const expr = await ctx.admin.call('rule.evaluate', { expression: '{"retries": task.maxRetries + 1, "ratio": task.maxRetries / 2}', input: { task: { maxRetries: 3 } } });
  assert.equal(expr.results, [{ rule: null, value: { retries: 4, ratio: 1.5 }, allowed: false }]);
  assert.is(expr.verdict, null);

  const compileError = await refusal(ctx.admin.call('rule.evaluate', { expression: 'task.(', input: {} }), ErrorCodes.INVALID_PARAMS);
  assert.is(compileError.data.field, 'expression');
  const ambiguous = await refusal(ctx.admin.call('rule.evaluate', { ruleId: 'budget', expression: 'true', input: {} }), ErrorCodes.INVALID_PARAMS);
  assert.match(ambiguous.message, /exactly one of ruleId, category or expression/);
  await refusal(ctx.admin.call('rule.evaluate', { ruleId: 'nobody', input: {} }), ErrorCodes.NOT_FOUND);
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'a dry run writes nothing');
});

test('policy.set then policy.get returns the type policy merged over the tenant default', async (ctx) => {
  const star = await ctx.admin.call('policy.set', {
    taskType: '*',
    defaults: { priority: 'low', maxRetries: 1, parameters: { region: 'eu', tier: 'free' } },
    assignment: { strategy: 'round_robin', auto: true },
  });
  assert.is(star.version, 1);
  assert.is(star.updatedBy, 'lead');
  const review = await ctx.admin.call('policy.set', { taskType: 'review', defaults: { maxRetries: 3, parameters: { tier: 'pro' } }, assignment: { strategy: 'least_loaded' } });
  const got = await ctx.agent.call('policy.get', { taskType: 'review' });
  assert.equal(got.effective, {
    taskType: 'review',
    defaults: { priority: 'low', maxRetries: 3, parameters: { region: 'eu', tier: 'pro' } },
    assignment: { strategy: 'least_loaded', auto: true },
  });
  assert.equal(got.policy, review);
  const unknown = await ctx.observer.call('policy.get', { taskType: 'build' });
  assert.is(unknown.policy, null);
  assert.equal(unknown.effective.defaults, star.defaults, 'a type without a policy gets the tenant default');

  await refusal(ctx.admin.call('policy.set', { taskType: 'review', expectedVersion: 0, assignment: { auto: false } }), ErrorCodes.VERSION_MISMATCH);
  const changed = await ctx.admin.call('policy.set', { taskType: 'review', expectedVersion: 1, assignment: { auto: false } });
  assert.equal(changed.defaults, review.defaults, 'defaults were not named, so they are kept');
  assert.equal((await ctx.admin.call('policy.get', { taskType: 'review' })).effective.assignment, { strategy: 'round_robin', auto: false });

  const list = await ctx.agent.call('policy.list', {});
  assert.equal(list.items.map((p) => p.taskType), ['*', 'review']);
  await refusal(ctx.admin.call('policy.set', { taskType: 'review' }), ErrorCodes.INVALID_PARAMS);
  await refusal(ctx.admin.call('policy.set', { taskType: 'a/b', defaults: {} }), ErrorCodes.INVALID_PARAMS);
});

test('another tenant sees none of these rules and policies', async (ctx) => {
  const other = await ctx.ts.client('globex', 'boss', ['admin']);
  await refusal(other.call('rule.get', { ruleId: 'no-low' }), ErrorCodes.NOT_FOUND);
  assert.equal((await other.call('rule.list', {})).items, []);
  assert.equal((await other.call('policy.list', {})).items, []);
  assert.is((await other.call('policy.get', { taskType: 'review' })).policy, null);
  const r = await other.call('rule.register', { name: 'no-low', category: 'task.validation', expression: 'true' });
  assert.is(r.tenantId, 'globex', 'the same name is free in another tenant');
});

test.run();

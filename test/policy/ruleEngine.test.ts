import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ActorHost } from '../../actors/ActorHost.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import type { Store } from '../../actors/Store.js';
import type { RuleCategory } from '../../protocol/rules.js';
import { ErrorCodes } from '../../protocol/errors.js';
import { policyKind } from '../../src/kinds/policyKind.js';
import { ruleKind } from '../../src/kinds/ruleKind.js';
import { RuleEngine, effectivePolicy, toJson } from '../../src/policy/RuleEngine.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { fakeClock } from '../helpers/clock.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, tempDir } from '../helpers/server.js';
import { interceptStore } from '../helpers/stores.js';

interface Ctx {
  store: Store;
  host: ActorHost;
  rules: RuleEngine;
  /** How often the engine queried the rule read model. */
  ruleQueries: number;
  teardown: () => Promise<void>;
}

type Extra = { priority?: number; enabled?: boolean; message?: string };

/** Registers a rule through the actor runtime, as `rule.register` does. */
async function addRule(ctx: Ctx, name: string, category: RuleCategory, expression: string, extra: Extra = {}, tenant = 'acme'): Promise<void> {
  await ctx.host.send({ tenant, kind: 'rule', id: name }, { type: 'rule.register', name, tenantId: tenant, category, expression, ...extra }, { principal: 'lead' });
}

async function updateRule(ctx: Ctx, name: string, changes: Record<string, unknown>): Promise<void> {
  await ctx.host.send({ tenant: 'acme', kind: 'rule', id: name }, { type: 'rule.update', changes }, { principal: 'lead' });
}

async function setPolicy(ctx: Ctx, taskType: string, body: Record<string, unknown>, tenant = 'acme'): Promise<void> {
  await ctx.host.send({ tenant, kind: 'policy', id: taskType }, { type: 'policy.set', taskType, ...body }, { principal: 'lead' });
}

const task = (extra: Record<string, unknown> = {}) => ({
  id: 't1',
  type: 'render',
  title: 'Render the trailer',
  priority: 'normal',
  maxRetries: 3,
  parameters: { budget: 10.5, frames: 3 },
  requiredCapabilities: ['gpu'],
  ...extra,
});

function engineSuite(label: string, open: () => { store: Store; remove: () => void }): void {
  const test = suite<Ctx>(`RuleEngine (${label})`);

  test.before.each((ctx) => {
    const { store: inner, remove } = open();
    ctx.ruleQueries = 0;
    const store = interceptStore(inner, {
      queryViews: (q, tenant, kind, query) => {
        if (kind === 'rule') ctx.ruleQueries++;
        return q(tenant, kind, query);
      },
    });
    const clock = fakeClock();
    ctx.store = store;
    ctx.host = new ActorHost({ store, ownership: new LocalOwnership(store), kinds: [ruleKind, policyKind], now: () => clock.advance(1_000) });
    ctx.rules = new RuleEngine({ store });
    ctx.rules.attach(ctx.host);
    ctx.teardown = async () => {
      await ctx.host.close();
      await inner.close();
      remove();
    };
  });

  test.after.each(async (ctx) => {
    await ctx.teardown();
  });

  test('refuses an expression that does not parse, with the compiler message, line and column', (ctx) => {
    let caught: unknown;
    try {
      ctx.rules.compile("task.priority == 'critical' ||\n  (agent.costPerTask <");
    } catch (e) {
      caught = e;
    }
    const e = caught as { code: number; message: string; data: { field: string; position: { line: number; column: number; offset: number } } };
    assert.is(e.code, ErrorCodes.INVALID_PARAMS);
    assert.match(e.message, /Unexpected token/);
    assert.match(e.message, /line 2, column 23/);
    assert.is(e.data.field, 'expression');
    assert.equal(e.data.position, { line: 2, column: 23, offset: 53 });
  });

  test('refuses unknown variables and functions, and result types that do not fit the category', (ctx) => {
    const message = (expr: string, category?: RuleCategory) => {
      try {
        ctx.rules.compile(expr, category);
      } catch (e) {
        return (e as Error).message;
      }
      return 'compiled';
    };
    assert.match(message('tsk.priority == "high"'), /Unknown variable: tsk \(line 1, column 1\)/);
    assert.match(message('nope(task)'), /no matching overload/);
    assert.match(message('1 + "a"'), /no such overload/);
    assert.match(message('size(task.title)', 'task.validation'), /must yield a bool, but this expression yields int/);
    assert.match(message('true', 'task.defaults'), /must yield a map/);
    assert.is(message('{"priority": "high", "maxRetries": 2}', 'task.defaults'), 'compiled');
    assert.is(message('task.type == "x" ? {"priority": "high"} : {}', 'task.defaults'), 'compiled');
    assert.is(message('task.flag', 'task.validation'), 'compiled', 'dyn may be a bool');
  });

  test('allows everything while the tenant has no rules, and has no assignment predicate', async (ctx) => {
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
    assert.is(await ctx.rules.eligibility('acme', { task: task() }), null);
    assert.equal(await ctx.rules.defaults('acme', { task: task() }), { values: {}, errors: [] });
  });

  test('runs rules highest priority first and names the first that denies, with its message', async (ctx) => {
    await addRule(ctx, 'b-low', 'task.validation', 'false', { priority: 1, message: 'low says no' });
    await addRule(ctx, 'high', 'task.validation', 'task.priority != "normal"', { priority: 10, message: 'normal work is closed' });
    await addRule(ctx, 'a-low', 'task.validation', 'false', { priority: 1, message: 'a says no' });
    const v = await ctx.rules.check('acme', 'task.validation', { task: task() });
    assert.equal(v, { allowed: false, rule: { id: 'high', name: 'high' }, reason: 'normal work is closed' });
    const next = await ctx.rules.check('acme', 'task.validation', { task: task({ priority: 'high' }) });
    assert.equal(next, { allowed: false, rule: { id: 'a-low', name: 'a-low' }, reason: 'a says no' }, 'equal priorities run by name');
    assert.equal(await ctx.rules.check('acme', 'task.delegation', { task: task() }), { allowed: true }, 'other categories are not involved');
  });

  test('fails closed: a run-time error or a non-boolean result denies, naming the rule', async (ctx) => {
    await addRule(ctx, 'budget', 'task.validation', 'task.parameters.limit > 10', { message: 'over budget' });
    const v = await ctx.rules.check('acme', 'task.validation', { task: task() });
    assert.is(v.allowed, false);
    if (v.allowed) return;
    assert.equal(v.rule, { id: 'budget', name: 'budget' });
    assert.match(v.reason, /Rule budget could not be evaluated: No such key: limit/);

    await updateRule(ctx, 'budget', { expression: 'task.title' });
    const w = await ctx.rules.check('acme', 'task.validation', { task: task() });
    assert.is(w.allowed, false);
    if (!w.allowed) assert.match(w.reason, /yielded string "Render the trailer" instead of true or false/);

    await updateRule(ctx, 'budget', { expression: 'task.parameters.budget > 10' });
    const wrongType = await ctx.rules.check('acme', 'task.validation', { task: 'not a map' });
    assert.is(wrongType.allowed, false, 'a variable of the wrong type is an error, not a crash');
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
  });

  test('compares and computes with integer and fractional JSON numbers naturally', async (ctx) => {
    const cases: [string, Record<string, unknown>, boolean][] = [
      ['task.maxRetries > 2', { task: task({ maxRetries: 3 }) }, true],
      ['task.maxRetries > 2', { task: task({ maxRetries: 2 }) }, false],
      ['task.maxRetries == 3', { task: task({ maxRetries: 3 }) }, true],
      ['task.parameters.budget >= 10.5', { task: task() }, true],
      ['task.parameters.budget >= 10.5', { task: task({ parameters: { budget: 10.4 } }) }, false],
      ['task.parameters.budget > 10', { task: task() }, true],
      ['agent.costPerTask < 3', { agent: { costPerTask: 2.5 } }, true],
      ['agent.costPerTask < 3', { agent: { costPerTask: 3 } }, false],
      ['agent.costPerTask < 5.0', { agent: { costPerTask: 3 } }, true],
      ['task.maxRetries + 1 == 4', { task: task({ maxRetries: 3 }) }, true],
      ['task.maxRetries * 1.5 > 4.0', { task: task({ maxRetries: 3 }) }, true],
      ['task.parameters.frames / 2 == 1.5', { task: task() }, true],
      ['2 * task.parameters.frames - 1 == 5', { task: task() }, true],
      ['size(task.requiredCapabilities) <= task.maxRetries', { task: task() }, true],
    ];
    for (const [expression, vars, expected] of cases) {
      const r = await ctx.rules.evaluate('acme', { expression }, vars);
      assert.is(r.results[0]!.error, undefined, `${expression}: ${r.results[0]!.error}`);
      assert.is(r.results[0]!.value, expected, expression);
    }
    const sum = await ctx.rules.evaluate('acme', { expression: '[1, 2, 3].map(x, x * 2)' }, {});
    assert.equal(sum.results[0]!.value, [2, 4, 6], 'CEL ints come back as JSON numbers');
    assert.equal(toJson({ n: 5n, l: [1n, 2.5], s: 'x' }), { n: 5, l: [1, 2.5], s: 'x' });
  });

  test('a committed update is seen by the very next decision; rules are loaded once until then', async (ctx) => {
    await addRule(ctx, 'gate', 'task.validation', 'task.priority == "normal"', { message: 'only normal' });
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
    assert.is(ctx.ruleQueries, 1, 'the second decision used the cache');

    await updateRule(ctx, 'gate', { expression: 'task.priority == "high"' });
    const v = await ctx.rules.check('acme', 'task.validation', { task: task() });
    assert.is(v.allowed, false, 'no waiting: the commit dropped the cache');
    assert.is(ctx.ruleQueries, 2);

    await updateRule(ctx, 'gate', { enabled: false });
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true }, 'a disabled rule is not run');
    await ctx.host.send({ tenant: 'acme', kind: 'rule', id: 'gate' }, { type: 'rule.delete' }, { principal: 'lead' });
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
  });

  test('keeps tenants apart', async (ctx) => {
    await addRule(ctx, 'closed', 'task.validation', 'false', {}, 'other');
    assert.equal(await ctx.rules.check('acme', 'task.validation', { task: task() }), { allowed: true });
    assert.is((await ctx.rules.check('other', 'task.validation', { task: task() })).allowed, false);
  });

  test('builds a synchronous eligibility predicate evaluated per agent', async (ctx) => {
    await addRule(ctx, 'gpu-or-critical', 'task.assignment', "task.priority == 'critical' || ('gpu' in agent.capabilities && agent.costPerTask < 5.0)", {
      message: 'needs a cheap GPU agent',
    });
    const eligible = await ctx.rules.eligibility('acme', { task: task() });
    assert.ok(eligible);
    assert.equal(eligible({ id: 'a', capabilities: ['gpu'], costPerTask: 2 }), { allowed: true });
    assert.equal(eligible({ id: 'b', capabilities: ['go'], costPerTask: 1 }), {
      allowed: false,
      rule: { id: 'gpu-or-critical', name: 'gpu-or-critical' },
      reason: 'needs a cheap GPU agent',
    });
    assert.is(eligible({ id: 'c', capabilities: ['gpu'], costPerTask: 7.5 }).allowed, false);
    assert.is(eligible({ id: 'd' }).allowed, false, 'a missing field fails closed');
    const critical = await ctx.rules.eligibility('acme', { task: task({ priority: 'critical' }) });
    assert.equal(critical!({ id: 'b', capabilities: [] }), { allowed: true });
  });

  test('merges defaults maps with the higher priority winning and reports rules that fail', async (ctx) => {
    await addRule(ctx, 'base', 'task.defaults', '{"priority": "low", "maxRetries": 1, "timeoutSeconds": 60}', { priority: 1 });
    await addRule(ctx, 'renders', 'task.defaults', 'task.type == "render" ? {"priority": "high", "maxRetries": task.maxRetries + 2} : {}', { priority: 5 });
    await addRule(ctx, 'broken', 'task.defaults', '{"x": task.parameters.missing}', { priority: 9 });
    await addRule(ctx, 'skipped', 'task.defaults', 'task.type == "build" ? {"priority": "critical"} : {}', { priority: 7 });
    const { values, errors } = await ctx.rules.defaults('acme', { task: task() });
    assert.equal(values, { priority: 'high', maxRetries: 5, timeoutSeconds: 60 });
    assert.equal(errors, [{ rule: 'broken', message: 'No such key: missing' }]);
  });

  test('merges a task type policy over the tenant default, field by field and parameters shallowly', async (ctx) => {
    await setPolicy(ctx, '*', {
      defaults: { priority: 'low', maxRetries: 1, parameters: { region: 'eu', tier: 'free' } },
      assignment: { strategy: 'round_robin', auto: true },
    });
    await setPolicy(ctx, 'review', { defaults: { maxRetries: 3, parameters: { tier: 'pro' } }, assignment: { strategy: 'least_loaded' } });
    assert.equal(await ctx.rules.policy('acme', 'review'), {
      taskType: 'review',
      defaults: { priority: 'low', maxRetries: 3, parameters: { region: 'eu', tier: 'pro' } },
      assignment: { strategy: 'least_loaded', auto: true },
    });
    assert.equal(await ctx.rules.policy('acme', 'build'), {
      taskType: 'build',
      defaults: { priority: 'low', maxRetries: 1, parameters: { region: 'eu', tier: 'free' } },
      assignment: { strategy: 'round_robin', auto: true },
    });
    await setPolicy(ctx, '*', { defaults: { timeoutSeconds: 30 } });
    assert.equal((await ctx.rules.policy('acme', 'review')).defaults, { timeoutSeconds: 30, maxRetries: 3, parameters: { tier: 'pro' } }, 'the next call sees the change');
    assert.equal(await ctx.rules.policy('other', 'review'), { taskType: 'review', defaults: {}, assignment: {} });
  });

  test('a dry run reports every rule of a category and the verdict the server would reach', async (ctx) => {
    await addRule(ctx, 'first', 'task.delegation', 'delegation.to != principal.id', { priority: 2, message: 'no self-delegation' });
    await addRule(ctx, 'second', 'task.delegation', 'delegation.reason', { priority: 1 });
    await addRule(ctx, 'off', 'task.delegation', 'false', { enabled: false });
    const r = await ctx.rules.evaluate('acme', { category: 'task.delegation' }, { delegation: { to: 'me', reason: 'x' }, principal: { id: 'me' } });
    assert.equal(r.results, [
      { rule: 'first', value: false, allowed: false },
      { rule: 'second', value: 'x', allowed: false },
    ]);
    assert.equal(r.verdict, { allowed: false, rule: { id: 'first', name: 'first' }, reason: 'no self-delegation' });
    const off = await ctx.rules.evaluate('acme', { ruleId: 'off' }, {});
    assert.equal(off.results, [{ rule: 'off', value: false, allowed: false }], 'a disabled rule can still be tried');
    const missing = await refusal(ctx.rules.evaluate('acme', { ruleId: 'nope' }, {}), ErrorCodes.NOT_FOUND);
    assert.match(missing.message, /Rule nope does not exist/);
  });

  test('effectivePolicy of the default itself is the default', () => {
    const star = { taskType: '*', defaults: { maxRetries: 2 }, assignment: { auto: false }, version: 1, updatedBy: 'lead', updatedAt: '2025-01-01T00:00:00.000Z' };
    assert.equal(effectivePolicy('*', star, star), { taskType: '*', defaults: { maxRetries: 2 }, assignment: { auto: false } });
  });

  test.run();
}

engineSuite('memory', () => ({ store: new MemoryStore(), remove: () => {} }));
engineSuite('sqlite', () => {
  const dir = tempDir();
  return { store: sqliteStore(dir.dir), remove: dir.remove };
});

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { WorkflowDefinition } from '../../protocol/workflows.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
  admin: TroupeClient;
  agent: TroupeClient;
  other: TroupeClient;
  observer: TroupeClient;
  stranger: TroupeClient;
}

const test = suite<Ctx>('workflows and templates over WebSocket');

const ci: WorkflowDefinition = {
  name: 'CI pipeline',
  description: 'Build and test every push',
  type: 'sequential',
  steps: [
    { id: 'build', action: 'build', input: { repo: '${input.repo}' } },
    { id: 'test', action: 'test', input: { artifact: '${steps.build.output.artifact}' } },
  ],
  tags: ['ci', 'nightly'],
};

const withDeploy: WorkflowDefinition = { ...ci, steps: [...ci.steps, { id: 'deploy', action: 'deploy', retryPolicy: { maxAttempts: 3 } }] };

test.before(async (ctx) => {
  ctx.dir = tempDir();
  ctx.ts = await startServer({ store: sqliteStore(ctx.dir.dir) });
  ctx.admin = await ctx.ts.client('acme', 'lead', ['admin']);
  ctx.agent = await ctx.ts.client('acme', 'builder', ['agent']);
  ctx.other = await ctx.ts.client('acme', 'tester', ['agent']);
  ctx.observer = await ctx.ts.client('acme', 'watcher', ['observer']);
  ctx.stranger = await ctx.ts.client('globex', 'boss', ['admin']);
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

test('an agent creates a workflow at version 1, active by default, and anyone in the tenant reads it', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  assert.ok(w.id);
  assert.is(w.tenantId, 'acme');
  assert.is(w.version, 1);
  assert.is(w.active, true);
  assert.is(w.createdBy, 'builder');
  assert.is(w.name, 'CI pipeline');
  assert.equal(w.steps, ci.steps);
  assert.equal(await ctx.observer.call('workflow.get', { workflowId: w.id }), w);
  assert.equal(await ctx.admin.call('workflow.get', { workflowId: w.id, version: 1 }), w);
});

test('updates make new versions; old versions stay readable, listed oldest first', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  const v2 = await ctx.agent.call('workflow.update', { workflowId: w.id, expectedVersion: 1, definition: withDeploy, changes: 'deploy after tests' });
  assert.is(v2.version, 2);
  assert.equal(v2.steps.map((s) => s.id), ['build', 'test', 'deploy']);
  assert.is(v2.createdAt, w.createdAt);
  assert.equal(await ctx.observer.call('workflow.get', { workflowId: w.id }), v2);

  const old = await ctx.observer.call('workflow.get', { workflowId: w.id, version: 1 });
  assert.is(old.version, 1);
  assert.equal(old.steps.map((s) => s.id), ['build', 'test']);

  const v1 = await ctx.observer.call('workflow.getVersion', { workflowId: w.id, version: 1 });
  assert.equal(v1, { workflowId: w.id, version: 1, definition: { ...ci, active: true }, changes: 'Created.', createdBy: 'builder', createdAt: w.createdAt });

  const v3 = await ctx.admin.call('workflow.createVersion', { workflowId: w.id, expectedVersion: 2, changes: 'a copy to pin' });
  assert.is(v3.version, 3);
  assert.equal(v3.steps, v2.steps, 'a version without a definition copies the current one');
  const v4 = await ctx.agent.call('workflow.createVersion', { workflowId: w.id, definition: { ...ci, active: false }, changes: 'back to two steps, paused' });
  assert.is(v4.version, 4);
  assert.is(v4.active, false);

  const list = await ctx.observer.call('workflow.listVersions', { workflowId: w.id });
  assert.equal(
    list.items.map((v) => [v.version, v.changes, v.createdBy]),
    [
      [1, 'Created.', 'builder'],
      [2, 'deploy after tests', 'builder'],
      [3, 'a copy to pin', 'lead'],
      [4, 'back to two steps, paused', 'builder'],
    ],
  );
  assert.not.ok('definition' in list.items[0]!, 'the list leaves definitions out');

  const missing = await refusal(ctx.observer.call('workflow.getVersion', { workflowId: w.id, version: 9 }), ErrorCodes.NOT_FOUND);
  assert.match(missing.message, /has no version 9; its versions are 1 to 4/);
  await refusal(ctx.observer.call('workflow.get', { workflowId: w.id, version: 5 }), ErrorCodes.NOT_FOUND);
});

test('a stale expectedVersion is refused with VERSION_MISMATCH naming the current version, and changes nothing', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  await ctx.agent.call('workflow.update', { workflowId: w.id, definition: withDeploy });
  const head = await ctx.ts.store.headPosition('acme');
  const e = await refusal(ctx.agent.call('workflow.update', { workflowId: w.id, expectedVersion: 1, definition: ci }), ErrorCodes.VERSION_MISMATCH);
  assert.is(e.data.actualVersion, 2);
  await refusal(ctx.agent.call('workflow.createVersion', { workflowId: w.id, expectedVersion: 3, changes: 'x' }), ErrorCodes.VERSION_MISMATCH);
  await refusal(ctx.agent.call('workflow.delete', { workflowId: w.id, expectedVersion: 1 }), ErrorCodes.VERSION_MISMATCH);
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'nothing was written');
  assert.is((await ctx.agent.call('workflow.get', { workflowId: w.id })).version, 2);
});

test('a deleted workflow is gone: not found, not listed, not changeable', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', { ...ci, name: 'Short-lived' });
  await ctx.agent.call('workflow.update', { workflowId: w.id, definition: withDeploy });
  assert.equal(await ctx.agent.call('workflow.delete', { workflowId: w.id, expectedVersion: 2 }), { id: w.id, deleted: true, version: 2 });
  await refusal(ctx.observer.call('workflow.get', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.observer.call('workflow.getVersion', { workflowId: w.id, version: 1 }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.observer.call('workflow.listVersions', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.agent.call('workflow.update', { workflowId: w.id, definition: ci }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.agent.call('workflow.delete', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  const listed = await ctx.observer.call('workflow.list', { query: 'short-lived' });
  assert.equal(listed.items, []);
});

test('only the creator or an admin changes a workflow; observers are refused with FORBIDDEN; nothing is written', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  const head = await ctx.ts.store.headPosition('acme');
  const o = await refusal(ctx.observer.call('workflow.create', ci), ErrorCodes.FORBIDDEN);
  assert.match(o.message, /Only admin or agent principals may create workflows/);
  await refusal(ctx.observer.call('workflow.update', { workflowId: w.id, definition: withDeploy }), ErrorCodes.FORBIDDEN);
  await refusal(ctx.observer.call('workflow.delete', { workflowId: w.id }), ErrorCodes.FORBIDDEN);
  await refusal(ctx.observer.call('template.create', { name: 't', category: 'c', definition: ci }), ErrorCodes.FORBIDDEN);
  const e = await refusal(ctx.other.call('workflow.update', { workflowId: w.id, definition: withDeploy }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /Only its creator \(builder\) or an admin may change workflow/);
  await refusal(ctx.other.call('workflow.createVersion', { workflowId: w.id, changes: 'mine now' }), ErrorCodes.FORBIDDEN);
  await refusal(ctx.other.call('workflow.delete', { workflowId: w.id }), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'nothing was written');
  const byAdmin = await ctx.admin.call('workflow.update', { workflowId: w.id, definition: withDeploy, changes: 'admin fix' });
  assert.is(byAdmin.version, 2);
  assert.is(byAdmin.createdBy, 'builder');
});

test("other tenants' workflows and templates are NOT_FOUND for every method", async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  const t = await ctx.agent.call('template.create', { name: 'tpl', category: 'ops', definition: ci });
  const s = ctx.stranger;
  await refusal(s.call('workflow.get', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.get', { workflowId: w.id, version: 1 }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.getVersion', { workflowId: w.id, version: 1 }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.listVersions', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.update', { workflowId: w.id, definition: withDeploy }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.createVersion', { workflowId: w.id, changes: 'x' }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.delete', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.metrics', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.insights', { workflowId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('template.get', { templateId: t.id }), ErrorCodes.NOT_FOUND);
  await refusal(s.call('workflow.createFromTemplate', { templateId: t.id }), ErrorCodes.NOT_FOUND);
  assert.equal((await s.call('workflow.list', {})).items, []);
  assert.equal((await s.call('template.list', {})).items, []);
  assert.is((await ctx.agent.call('workflow.get', { workflowId: w.id })).version, 1);
});

test('lists workflows filtered by type, tag, active flag and text, page by page with a cursor', async (ctx) => {
  const c = await ctx.ts.client('listco', 'lead', ['admin']);
  const steps = [ci.steps[0]!, { ...ci.steps[1]!, dependsOn: ['build'] }];
  const mk = (name: string, extra: Partial<WorkflowDefinition> = {}) => c.call('workflow.create', { ...ci, steps, name, tags: [], ...extra });
  const a = await mk('Alpha release', { type: 'parallel', tags: ['release'] });
  const b = await mk('Beta release', { tags: ['release', 'beta'] });
  const g = await mk('Gamma cleanup', { tags: ['cleanup'], active: false });
  const d = await mk('Delta release', { type: 'parallel', tags: ['release'], description: 'ships the DELTA build' });
  const e = await mk('Epsilon', { tags: ['releases'] });

  const ids = (p: { items: { id: string }[] }) => p.items.map((x) => x.id);
  assert.equal(ids(await c.call('workflow.list', {})), [e.id, d.id, g.id, b.id, a.id], 'newest first');
  assert.equal(ids(await c.call('workflow.list', { type: 'parallel' })), [d.id, a.id]);
  assert.equal(ids(await c.call('workflow.list', { active: false })), [g.id]);
  assert.equal(ids(await c.call('workflow.list', { active: true, type: 'sequential' })), [e.id, b.id]);
  assert.equal(ids(await c.call('workflow.list', { query: 'Delta BUILD' })), [d.id], 'text covers the description, case-insensitively');
  assert.equal(ids(await c.call('workflow.list', { query: 'cleanup' })), [g.id]);
  assert.equal(ids(await c.call('workflow.list', { tag: 'release' })), [d.id, b.id, a.id], 'tags match exactly');
  assert.equal(ids(await c.call('workflow.list', { tag: 'release', query: 'beta' })), [b.id]);

  const seen: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await c.call('workflow.list', { limit: 2, cursor });
    assert.ok(page.items.length <= 2);
    seen.push(...ids(page));
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
  assert.equal(seen, [e.id, d.id, g.id, b.id, a.id]);

  const p1 = await c.call('workflow.list', { tag: 'release', limit: 2 });
  assert.equal(ids(p1), [d.id, b.id]);
  assert.ok(p1.nextCursor);
  const p2 = await c.call('workflow.list', { tag: 'release', limit: 2, cursor: p1.nextCursor! });
  assert.equal(ids(p2), [a.id]);
  assert.is(p2.nextCursor, null);
  const exact = await c.call('workflow.list', { tag: 'release', limit: 3 });
  assert.is(exact.nextCursor, null, 'no cursor when nothing more matches');

  const bad = await refusal(c.call('workflow.list', { cursor: 'not a cursor' }), ErrorCodes.INVALID_PARAMS);
  assert.is(bad.data.field, 'cursor');
});

test('a create with an idempotency key answers the same workflow when retried, and refuses the key for a different definition', async (ctx) => {
  const first = await ctx.agent.call('workflow.create', { ...ci, idempotencyKey: 'ci-1' });
  const again = await ctx.agent.call('workflow.create', { ...ci, idempotencyKey: 'ci-1' });
  assert.equal(again, first);
  const e = await refusal(ctx.agent.call('workflow.create', { ...withDeploy, idempotencyKey: 'ci-1' }), ErrorCodes.IDEMPOTENCY_MISMATCH);
  assert.match(e.message, /already used with a different definition/);
  const mine = await ctx.other.call('workflow.create', { ...ci, idempotencyKey: 'ci-1' });
  assert.is.not(mine.id, first.id, 'keys belong to the principal');
  const task = await ctx.agent.call('task.create', { type: 'review', title: 'same key, other method', idempotencyKey: 'ci-1' });
  assert.ok(task.id, 'a task may reuse the key');
});

test('broken definitions are refused with precise errors and nothing is written', async (ctx) => {
  const head = await ctx.ts.store.headPosition('acme');
  const unknown = await refusal(
    ctx.agent.call('workflow.create', { name: 'bad', type: 'parallel', steps: [{ id: 'a', action: 'x' }, { id: 'b', action: 'y', dependsOn: ['nope'] }] }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.is(unknown.message, "steps[1].dependsOn names unknown step 'nope'.");
  assert.is(unknown.data.field, 'steps[1].dependsOn');

  const cycle = await refusal(
    ctx.agent.call('workflow.create', { name: 'bad', type: 'parallel', steps: [{ id: 'a', action: 'x', dependsOn: ['b'] }, { id: 'b', action: 'y', dependsOn: ['a'] }] }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.match(cycle.message, /dependency cycle: a → b → a/);

  const when = await refusal(ctx.agent.call('workflow.create', { name: 'bad', type: 'sequential', steps: [{ id: 'a', action: 'x', when: 'input.x ==' }] }), ErrorCodes.INVALID_PARAMS);
  assert.is(when.data.field, 'steps[0].when');
  assert.equal(when.data.position, { line: 1, column: 11, offset: 10 });

  const later = await refusal(
    ctx.agent.call('workflow.create', { name: 'bad', type: 'sequential', steps: [{ id: 'build', action: 'x', input: { sha: '${steps.deploy.output.sha}' } }, { id: 'deploy', action: 'y' }] }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.is(later.message, "steps[0].input.sha refers to step 'deploy', which does not run before 'build'.");

  const schema = await refusal(ctx.agent.call('workflow.create', { name: 'bad', type: 'sequential', steps: [] }), ErrorCodes.INVALID_PARAMS);
  assert.match(schema.message, /steps/);

  const w = await ctx.agent.call('workflow.create', ci);
  const afterCreate = await ctx.ts.store.headPosition('acme');
  assert.is(afterCreate, head + 1, 'only the good workflow was written');
  const upd = await refusal(
    ctx.agent.call('workflow.update', { workflowId: w.id, definition: { ...ci, steps: [{ id: 'a', approval: { approvers: ['ann'], mode: 'weighted', weights: { bob: 1 }, deadlineSeconds: 60 } }] } }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.is(upd.message, "definition.steps[0].approval.weights names 'bob', who is not among the approvers of 'a'.");
  assert.is(upd.data.field, 'definition.steps[0].approval.weights');
  const comp = await refusal(
    ctx.agent.call('workflow.createVersion', { workflowId: w.id, changes: 'x', definition: { ...ci, steps: [{ id: 'a', action: 'x', onFailure: 'compensate' }] } }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.is(comp.data.field, 'definition.steps[0].onFailure');
  assert.is(await ctx.ts.store.headPosition('acme'), afterCreate, 'nothing more was written');
  assert.is((await ctx.agent.call('workflow.get', { workflowId: w.id })).version, 1);
});

test('templates are created, read and listed by category, and make workflows from parameters', async (ctx) => {
  const t = await ctx.agent.call('template.create', {
    name: 'Deploy a service',
    category: 'deploy',
    description: 'build, then roll out',
    parameters: [
      { name: 'service', required: true, description: 'what to deploy' },
      { name: 'replicas', default: 2 },
    ],
    definition: {
      name: 'Deploy {{service}}',
      type: 'sequential',
      tags: ['deploy', '{{service}}'],
      steps: [
        { id: 'build', action: 'build-{{service}}' },
        { id: 'rollout', action: 'rollout', input: { replicas: '{{replicas}}', sha: '${steps.build.output.sha}' }, when: "input.env == '{{service}}-prod'" },
      ],
    },
  });
  assert.is(t.version, 1);
  assert.is(t.category, 'deploy');
  assert.is(t.createdBy, 'builder');
  assert.equal(await ctx.observer.call('template.get', { templateId: t.id }), t);
  await ctx.agent.call('template.create', { name: 'Other', category: 'misc', definition: ci });
  const byCategory = await ctx.observer.call('template.list', { category: 'deploy' });
  assert.equal(byCategory.items.map((x) => x.id), [t.id]);

  const w = await ctx.other.call('workflow.createFromTemplate', { templateId: t.id, parameters: { service: 'api', replicas: 5 } });
  assert.is(w.name, 'Deploy api');
  assert.is(w.version, 1);
  assert.is(w.createdBy, 'tester');
  assert.equal(w.tags, ['deploy', 'api']);
  assert.is(w.steps[0]!.action, 'build-api');
  assert.equal(w.steps[1]!.input, { replicas: 5, sha: '${steps.build.output.sha}' });
  assert.is(w.steps[1]!.when, "input.env == 'api-prod'");
  const v1 = await ctx.other.call('workflow.getVersion', { workflowId: w.id, version: 1 });
  assert.is(v1.changes, `Created from template Deploy a service (${t.id}).`);
  const named = await ctx.other.call('workflow.createFromTemplate', { templateId: t.id, parameters: { service: 'web' }, name: 'Web deploy' });
  assert.is(named.name, 'Web deploy');
  assert.is(named.steps[1]!.input!.replicas, 2, 'defaults apply');

  const head = await ctx.ts.store.headPosition('acme');
  const missing = await refusal(ctx.other.call('workflow.createFromTemplate', { templateId: t.id, parameters: { replicas: 1 } }), ErrorCodes.INVALID_PARAMS);
  assert.is(missing.message, `Template ${t.id} needs the parameter 'service' (what to deploy).`);
  assert.is(missing.data.field, 'parameters.service');
  const extra = await refusal(ctx.other.call('workflow.createFromTemplate', { templateId: t.id, parameters: { service: 'x', zone: 'eu' } }), ErrorCodes.INVALID_PARAMS);
  assert.is(extra.data.field, 'parameters.zone');
  await refusal(ctx.other.call('workflow.createFromTemplate', { templateId: 'no-such-template' }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.observer.call('workflow.createFromTemplate', { templateId: t.id, parameters: { service: 'x' } }), ErrorCodes.FORBIDDEN);
  const undeclared = await refusal(
    ctx.agent.call('template.create', { name: 'bad', category: 'deploy', definition: { ...ci, description: 'for {{team}}' } }),
    ErrorCodes.INVALID_PARAMS,
  );
  assert.is(undeclared.data.field, 'definition.description');
  assert.is(await ctx.ts.store.headPosition('acme'), head, 'nothing was written');
});

test('metrics and insights of a workflow with no runs answer zeros and no observations', async (ctx) => {
  const w = await ctx.agent.call('workflow.create', ci);
  const m = await ctx.observer.call('workflow.metrics', { workflowId: w.id, periodSeconds: 3600 });
  assert.is(m.workflowId, w.id);
  assert.is(m.runs, 0);
  assert.ok(Object.values(m.byStatus).every((n) => n === 0));
  assert.is(m.successRate, null);
  assert.equal(m.durationMs, { p50: null, p90: null, p99: null, mean: null });
  assert.equal(m.slowestSteps, []);
  assert.is(Date.parse(m.to) - Date.parse(m.from), 3_600_000);
  const week = await ctx.observer.call('workflow.metrics', { workflowId: w.id });
  assert.is(Date.parse(week.to) - Date.parse(week.from), 7 * 86_400_000, 'the period is a week by default');
  const i = await ctx.observer.call('workflow.insights', { workflowId: w.id });
  assert.equal(i.insights, []);
  assert.is(i.metrics.runs, 0);
  await refusal(ctx.observer.call('workflow.metrics', { workflowId: 'nope' }), ErrorCodes.NOT_FOUND);
});

test.run();

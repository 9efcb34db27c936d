import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ProtocolError } from '../../protocol/errors.js';
import type { Step, WorkflowDefinition } from '../../protocol/workflows.js';
import { instantiateTemplate, normalizeDefinition, validateDefinition, validateTemplate } from '../../src/workflows/validate.js';

/** The INVALID_PARAMS error a check throws; fails the test if it passes. */
function refused(fn: () => void): ProtocolError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ProtocolError, String(e));
    assert.is((e as ProtocolError).reason, 'INVALID_PARAMS');
    return e as ProtocolError;
  }
  throw new Error('the definition should have been refused, but it passed');
}

const wf = (type: WorkflowDefinition['type'], steps: Step[]): WorkflowDefinition => ({ name: 'wf', type, steps });

const test = suite('validateDefinition');

test('accepts a diamond DAG whose steps read only their ancestors', () => {
  validateDefinition(
    wf('parallel', [
      { id: 'fetch', action: 'git.fetch', input: { repo: '${input.repo}' } },
      { id: 'lint', action: 'lint', dependsOn: ['fetch'], input: { sha: '${steps.fetch.output.sha}' } },
      { id: 'test', action: 'test', dependsOn: ['fetch'], input: { sha: '${steps["fetch"].output.sha}', shards: [1, '${input.shards}'] } },
      {
        id: 'merge',
        action: 'merge',
        dependsOn: ['lint', 'test'],
        input: { ok: '${steps.lint.status == "completed" && steps.test.status == "completed"}', sha: '${steps.fetch.output.sha}' },
        compensate: { action: 'revert', input: { sha: '${step.output.merged}', again: '${steps.merge.output.merged}', base: '${steps.fetch.output.sha}' } },
        onFailure: 'compensate',
      },
    ]),
  );
});

test('accepts a conditional workflow with when conditions over earlier steps and the input', () => {
  validateDefinition(
    wf('conditional', [
      { id: 'classify', action: 'classify' },
      { id: 'small', action: 'fix', dependsOn: ['classify'], when: "steps.classify.output.size == 'small'" },
      { id: 'big', action: 'plan', dependsOn: ['classify'], when: "steps.classify.output.size != 'small' && input.allowBig" },
    ]),
  );
});

test('accepts a sequential workflow where each step reads the steps listed before it', () => {
  validateDefinition(
    wf('sequential', [
      { id: 'build', action: 'build' },
      { id: 'test', action: 'test', input: { artifact: '${steps.build.output.artifact}' } },
      { id: 'deploy', action: 'deploy', input: { artifact: '${steps.build.output.artifact}', passed: '${steps.test.output.passed}' } },
    ]),
  );
});

test('accepts a collaborative workflow with no approval step, and an approval step with weights of its approvers', () => {
  validateDefinition(wf('collaborative', [{ id: 'draft', action: 'write' }, { id: 'edit', action: 'edit' }]));
  validateDefinition(
    wf('sequential', [
      { id: 'draft', action: 'write' },
      { id: 'signoff', approval: { approvers: ['ann', 'bob'], mode: 'weighted', weights: { ann: 2, bob: 1 }, threshold: 0.6, deadlineSeconds: 3600 } },
    ]),
  );
});

test('refuses a duplicate step id naming both places', () => {
  const e = refused(() => validateDefinition(wf('parallel', [{ id: 'a', action: 'x' }, { id: 'b', action: 'x' }, { id: 'a', action: 'y' }])));
  assert.is(e.message, "steps[2].id repeats the step id 'a' of steps[0]; step ids must be unique.");
  assert.is(e.data.field, 'steps[2].id');
});

test('refuses dependsOn naming an unknown step', () => {
  const e = refused(() => validateDefinition(wf('parallel', [{ id: 'a', action: 'x' }, { id: 'b', action: 'x' }, { id: 'c', action: 'x', dependsOn: ['a', 'x'] }])));
  assert.is(e.message, "steps[2].dependsOn names unknown step 'x'.");
  assert.is(e.data.field, 'steps[2].dependsOn');
  assert.is(e.data.unknown, 'x');
});

test('refuses a dependency cycle and shows its path', () => {
  const e = refused(() =>
    validateDefinition(
      wf('parallel', [
        { id: 'start', action: 'x' },
        { id: 'a', action: 'x', dependsOn: ['start', 'b'] },
        { id: 'b', action: 'x', dependsOn: ['a'] },
      ]),
    ),
  );
  assert.match(e.message, /^steps\[1\]\.dependsOn closes a dependency cycle: a → b → a /);
  assert.equal(e.data.cycle, ['a', 'b', 'a']);
  assert.is(e.data.field, 'steps[1].dependsOn');
  const self = refused(() => validateDefinition(wf('parallel', [{ id: 'loop', action: 'x', dependsOn: ['loop'] }])));
  assert.match(self.message, /cycle: loop → loop/);
});

test('refuses a when that does not compile with the compiler message, field and position', () => {
  const e = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x' }, { id: 'b', action: 'x', when: 'input.env ==' }])));
  assert.is(e.message, 'steps[1].when: The expression does not compile: Unexpected token: EOF (line 1, column 13).');
  assert.is(e.data.field, 'steps[1].when');
  assert.equal(e.data.position, { line: 1, column: 13, offset: 12 });
  const unknown = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x', when: 'inptu.x' }])));
  assert.match(unknown.message, /^steps\[0\]\.when: .*Unknown variable: inptu/);
});

test('refuses an input or compensation expression that does not compile, naming its key', () => {
  const e = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x', input: { n: 1, nested: { list: ['ok', '${input.x +}'] } } }])));
  assert.match(e.message, /^steps\[0\]\.input\.nested\.list\[1\]: The expression does not compile/);
  assert.is(e.data.field, 'steps[0].input.nested.list[1]');
  const c = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x', compensate: { action: 'undo', input: { id: '${step.output.(}' } } }])));
  assert.is(c.data.field, 'steps[0].compensate.input.id');
});

test('refuses an input reference to a step that does not run before, or does not exist', () => {
  const steps: Step[] = [
    { id: 'checkout', action: 'x' },
    { id: 'deploy', action: 'x', dependsOn: ['checkout'] },
    { id: 'other', action: 'x', dependsOn: ['checkout'] },
    { id: 'build', action: 'x', dependsOn: ['checkout'], input: { sha: '${steps.deploy.output.sha}' } },
  ];
  const e = refused(() => validateDefinition(wf('parallel', steps)));
  assert.is(e.message, "steps[3].input.sha refers to step 'deploy', which does not run before 'build'.");
  assert.is(e.data.field, 'steps[3].input.sha');
  assert.is(e.data.reference, 'deploy');

  const self = refused(() => validateDefinition(wf('parallel', [{ id: 'a', action: 'x', input: { me: '${steps.a.output}' } }])));
  assert.is(self.message, "steps[0].input.me refers to step 'a', which does not run before 'a'.");

  const missing = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x', input: { v: '${steps.ghost.output}' } }])));
  assert.is(missing.message, "steps[0].input.v refers to step 'ghost', which does not exist.");

  const later = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x', when: "steps.b.status == 'completed'" }, { id: 'b', action: 'y' }])));
  assert.is(later.message, "steps[0].when refers to step 'b', which does not run before 'a'.");
  assert.is(later.data.field, 'steps[0].when');
});

test('lets a compensation read its own step and its ancestors, but not later steps', () => {
  const e = refused(() =>
    validateDefinition(
      wf('sequential', [
        { id: 'a', action: 'x', compensate: { action: 'undo', input: { own: '${step.output}', self: '${steps.a.output}', next: '${steps.b.output}' } } },
        { id: 'b', action: 'y' },
      ]),
    ),
  );
  assert.is(e.message, "steps[0].compensate.input.next refers to step 'b', which does not run before 'a'.");
});

test('refuses a step with neither an action nor an approval', () => {
  const e = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x' }, { id: 'empty', name: 'nothing' }])));
  assert.is(e.message, "steps[1] ('empty') has neither an action nor an approval; give it one of them.");
  assert.is(e.data.field, 'steps[1]');
});

test('refuses approval weights naming non-approvers, and repeated approvers', () => {
  const e = refused(() =>
    validateDefinition(wf('sequential', [{ id: 'ok', approval: { approvers: ['ann', 'bob'], mode: 'weighted', weights: { ann: 1, eve: 3 }, deadlineSeconds: 60 } }])),
  );
  assert.is(e.message, "steps[0].approval.weights names 'eve', who is not among the approvers of 'ok'.");
  assert.is(e.data.field, 'steps[0].approval.weights');
  const twice = refused(() => validateDefinition(wf('sequential', [{ id: 'ok', approval: { approvers: ['ann', 'ann'], mode: 'majority', deadlineSeconds: 60 } }])));
  assert.is(twice.message, "steps[0].approval.approvers lists 'ann' more than once.");
});

test("refuses onFailure 'compensate' in a workflow where no step can be compensated", () => {
  const e = refused(() => validateDefinition(wf('sequential', [{ id: 'a', action: 'x' }, { id: 'b', action: 'y', onFailure: 'compensate' }])));
  assert.match(e.message, /^steps\[1\]\.onFailure is 'compensate', but no step of the workflow has a compensate action/);
  assert.is(e.data.field, 'steps[1].onFailure');
});

test('prefixes fields and messages with where the definition sits in the params', () => {
  const e = refused(() => validateDefinition(wf('parallel', [{ id: 'a', action: 'x', dependsOn: ['zz'] }]), { field: 'definition' }));
  assert.is(e.message, "definition.steps[0].dependsOn names unknown step 'zz'.");
  assert.is(e.data.field, 'definition.steps[0].dependsOn');
  const c = refused(() => validateDefinition(wf('parallel', [{ id: 'a', action: 'x', when: '1 +' }]), { field: 'definition' }));
  assert.is(c.data.field, 'definition.steps[0].when');
});

test('normalizeDefinition copies, drops undefined members and makes a workflow active by default', () => {
  const def = { ...wf('sequential', [{ id: 'a', action: 'x', input: { k: undefined } }]), description: undefined };
  const n = normalizeDefinition(def);
  assert.equal(n, { name: 'wf', type: 'sequential', steps: [{ id: 'a', action: 'x', input: {} }], active: true });
  assert.is.not(n.steps, def.steps);
  assert.is(normalizeDefinition({ ...def, active: false }).active, false);
});

const tpl = suite('templates');

const template = {
  id: 'tpl1',
  parameters: [
    { name: 'service', required: true },
    { name: 'replicas', default: 2 },
    { name: 'canary', default: false },
    { name: 'note' },
  ],
  definition: {
    name: 'Deploy {{service}}',
    type: 'sequential' as const,
    tags: ['{{service}}', 'deploy'],
    steps: [
      { id: 'build', action: 'build-{{service}}', input: { replicas: '{{replicas}}', canary: '{{ canary }}', label: '{{service}} x{{replicas}}', note: '{{note}}' } },
      { id: 'ship', action: 'ship', when: "input.target == '{{service}}'" },
    ],
  },
};

tpl('a template with declared placeholders and a when that compiles only once substituted passes', () => {
  validateTemplate(template.parameters, template.definition);
});

tpl('refuses a placeholder that is not a parameter, and repeated parameter names', () => {
  const e = refused(() => validateTemplate([{ name: 'service' }], { name: 'Deploy {{service}}', description: 'for {{team}}', type: 'sequential', steps: [{ id: 's', action: 'x' }] }));
  assert.is(e.message, 'definition.description uses {{team}}, which is not a parameter of the template (its parameters: service).');
  assert.is(e.data.field, 'definition.description');
  const twice = refused(() => validateTemplate([{ name: 'a' }, { name: 'a' }], { name: 'x', type: 'sequential', steps: [{ id: 's', action: 'x' }] }));
  assert.is(twice.message, "parameters[1].name repeats the parameter 'a' of parameters[0].");
});

tpl('refuses a template whose graph is broken, with fields under definition', () => {
  const e = refused(() => validateTemplate([], { name: 'x', type: 'parallel', steps: [{ id: 's', action: 'x', dependsOn: ['t'] }] }));
  assert.is(e.message, "definition.steps[0].dependsOn names unknown step 't'.");
});

tpl('substitutes values, defaults and types, and makes a valid workflow', () => {
  const def = instantiateTemplate(template, { service: 'api', canary: true });
  assert.is(def.name, 'Deploy api');
  assert.equal(def.tags, ['api', 'deploy']);
  assert.is(def.steps[0]!.action, 'build-api');
  assert.equal(def.steps[0]!.input, { replicas: 2, canary: true, label: 'api x2', note: '' }, 'a whole placeholder keeps the value type');
  assert.is(def.steps[1]!.when, "input.target == 'api'");
  assert.is(def.active, true);
  assert.is(instantiateTemplate(template, { service: 'web' }, 'Custom').name, 'Custom');
});

tpl('refuses a missing required parameter and an unknown one, naming it', () => {
  const e = refused(() => instantiateTemplate(template, { replicas: 3 }));
  assert.is(e.message, "Template tpl1 needs the parameter 'service'.");
  assert.is(e.data.field, 'parameters.service');
  const u = refused(() => instantiateTemplate(template, { service: 'api', region: 'eu' }));
  assert.is(u.message, "Template tpl1 has no parameter 'region' (its parameters: service, replicas, canary, note).");
  assert.is(u.data.field, 'parameters.region');
});

tpl('refuses values that make the definition invalid', () => {
  const e = refused(() => instantiateTemplate({ ...template, definition: { ...template.definition, steps: [{ id: 'a', action: '{{service}}' }] } }, { service: 7 }));
  assert.match(e.message, /^With these parameters the template does not make a valid workflow: steps\.0\.action /);
  const when = refused(() => instantiateTemplate({ id: 't', parameters: [{ name: 'cond' }], definition: { name: 'x', type: 'sequential', steps: [{ id: 'a', action: 'x', when: '{{cond}}' }] } }, { cond: 'input.x ==' }));
  assert.match(when.message, /^With these parameters the template does not make a valid workflow: steps\[0\]\.when: The expression does not compile/);
  assert.is(when.data.field, 'steps[0].when');
});

test.run();
tpl.run();

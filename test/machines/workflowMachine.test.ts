import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { templateMachine } from '../../machines/templateMachine.js';
import { workflowMachine, type WorkflowEvent } from '../../machines/workflowMachine.js';
import type { WorkflowDefinition } from '../../protocol/workflows.js';
import { T0 } from '../helpers/clock.js';

type WorkflowSnapshot = SnapshotFrom<typeof workflowMachine>;
type Body = WorkflowEvent extends infer E ? (E extends WorkflowEvent ? Omit<E, 'at' | 'by'> : never) : never;

/** A workflow driven by pure transitions on a simulated clock (1 s per event unless given). */
class Sim {
  snapshot: WorkflowSnapshot;
  at = T0 - 1_000;
  events: WorkflowEvent[] = [];

  constructor() {
    [this.snapshot] = initialTransition(workflowMachine);
  }

  get ctx() {
    return this.snapshot.context;
  }

  send(body: Body, by = 'lead', at = this.at + 1_000): void {
    const event = { ...body, at, by } as WorkflowEvent;
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted in ${String(this.snapshot.value)}`);
    const [next, actions] = transition(workflowMachine, this.snapshot, event);
    assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'workflows emit no effects');
    this.snapshot = next;
    this.at = at;
    this.events.push(event);
  }

  refuse(body: Body): void {
    const event = { ...body, at: this.at + 1_000, by: 'lead' } as WorkflowEvent;
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused in ${String(this.snapshot.value)}`);
    const [next] = transition(workflowMachine, this.snapshot, event);
    assert.equal(workflowMachine.getPersistedSnapshot(next), workflowMachine.getPersistedSnapshot(this.snapshot));
  }
}

const v1: WorkflowDefinition = { name: 'ci', description: 'build it', type: 'sequential', steps: [{ id: 'build', action: 'build' }], tags: ['ci'], active: true };
const v2: WorkflowDefinition = { ...v1, steps: [...v1.steps, { id: 'test', action: 'test' }] };

function created(): Sim {
  const sim = new Sim();
  sim.send({ type: 'workflow.create', id: 'wf1', tenantId: 'acme', definition: v1 }, 'lead', T0);
  return sim;
}

const test = suite('workflowMachine');

test('refuses new versions and deletion before creation and leaves the workflow unchanged', () => {
  const sim = new Sim();
  assert.is(sim.snapshot.value, 'unregistered');
  sim.refuse({ type: 'workflow.newVersion', definition: v2, changes: 'x' });
  sim.refuse({ type: 'workflow.delete' });
  assert.equal(sim.ctx.versions, []);
});

test('creation makes version 1 from the definition, stamped by its author', () => {
  const sim = created();
  const w = sim.ctx.workflow;
  assert.is(sim.snapshot.value, 'active');
  assert.equal(w, { ...v1, id: 'wf1', tenantId: 'acme', version: 1, createdBy: 'lead', createdAt: iso(T0), updatedAt: iso(T0) });
  assert.equal(sim.ctx.versions, [{ workflowId: 'wf1', version: 1, definition: v1, changes: 'Created.', createdBy: 'lead', createdAt: iso(T0) }]);
});

test('a second creation is refused', () => {
  created().refuse({ type: 'workflow.create', id: 'wf1', tenantId: 'acme', definition: v2 });
});

test('a new version becomes current and keeps every earlier version with its author and note', () => {
  const sim = created();
  sim.send({ type: 'workflow.newVersion', definition: v2, changes: 'add tests' }, 'dev', T0 + 60_000);
  const w = sim.ctx.workflow;
  assert.is(w.version, 2);
  assert.equal(w.steps.map((s) => s.id), ['build', 'test']);
  assert.is(w.createdBy, 'lead', 'the creator stays');
  assert.is(w.createdAt, iso(T0));
  assert.is(w.updatedAt, iso(T0 + 60_000));
  assert.equal(sim.ctx.versions.map((v) => [v.version, v.changes, v.createdBy, v.definition.steps.length]), [
    [1, 'Created.', 'lead', 1],
    [2, 'add tests', 'dev', 2],
  ]);
});

test('a new version without a definition copies the current one', () => {
  const sim = created();
  sim.send({ type: 'workflow.newVersion', definition: v2, changes: 'add tests' });
  sim.send({ type: 'workflow.newVersion', changes: 'same again, for the record' });
  assert.is(sim.ctx.workflow.version, 3);
  assert.equal(sim.ctx.versions[2]!.definition, v2);
  assert.equal(sim.ctx.versions[2]!.changes, 'same again, for the record');
});

test('a deleted workflow is final: it accepts nothing and keeps its versions', () => {
  const sim = created();
  sim.send({ type: 'workflow.newVersion', definition: v2, changes: 'v2' });
  sim.send({ type: 'workflow.delete' });
  assert.is(sim.snapshot.value, 'deleted');
  assert.is(sim.snapshot.status, 'done');
  assert.is(sim.ctx.workflow.version, 2);
  assert.is(sim.ctx.versions.length, 2);
  sim.refuse({ type: 'workflow.newVersion', changes: 'x' });
  sim.refuse({ type: 'workflow.delete' });
});

test('a persisted snapshot survives JSON and goes on accepting versions', () => {
  const sim = created();
  const persisted = JSON.parse(JSON.stringify(workflowMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(workflowMachine, { snapshot: persisted }).start();
  actor.send({ type: 'workflow.newVersion', definition: v2, changes: 'v2', at: T0 + 5_000, by: 'lead' });
  assert.is(actor.getSnapshot().context.workflow.version, 2);
  assert.is(actor.getSnapshot().context.versions[0]!.definition.name, 'ci');
  actor.stop();
});

test('replaying the events reproduces the live state exactly', () => {
  const sim = created();
  sim.send({ type: 'workflow.newVersion', definition: v2, changes: 'v2' });
  sim.send({ type: 'workflow.newVersion', changes: 'copy' });
  sim.send({ type: 'workflow.newVersion', definition: { ...v1, active: false }, changes: 'off' });
  sim.send({ type: 'workflow.delete' });
  const stored = sim.events.map((e) => ({ data: JSON.parse(JSON.stringify(e)) as Record<string, unknown> }));
  assert.equal(
    JSON.parse(JSON.stringify(replayPersisted(workflowMachine, stored))),
    JSON.parse(JSON.stringify(workflowMachine.getPersistedSnapshot(sim.snapshot))),
  );
});

const tpl = suite('templateMachine');

tpl('creates a template once with defaults for its optional fields, and refuses a second creation', () => {
  const [s0] = initialTransition(templateMachine);
  const create = {
    type: 'template.create' as const,
    id: 't1',
    tenantId: 'acme',
    name: 'deploy',
    category: 'ops',
    definition: { name: 'Deploy {{service}}', type: 'sequential' as const, steps: [{ id: 'go', action: 'deploy' }] },
    at: T0,
    by: 'lead',
  };
  const [s1] = transition(templateMachine, s0, create);
  assert.is(s1.value, 'active');
  assert.equal(s1.context.template, {
    id: 't1',
    tenantId: 'acme',
    name: 'deploy',
    category: 'ops',
    description: '',
    parameters: [],
    definition: create.definition,
    createdBy: 'lead',
    createdAt: iso(T0),
  });
  assert.not.ok(s1.can({ ...create, at: T0 + 1 }));
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(templateMachine, [{ data: create }]))), JSON.parse(JSON.stringify(templateMachine.getPersistedSnapshot(s1))));
});

test.run();
tpl.run();

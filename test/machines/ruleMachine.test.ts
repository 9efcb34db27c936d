import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { defaultRuleMessage, ruleMachine, type RuleEvent } from '../../machines/ruleMachine.js';
import { T0 } from '../helpers/clock.js';

type RuleSnapshot = SnapshotFrom<typeof ruleMachine>;
type Body = RuleEvent extends infer E ? (E extends RuleEvent ? Omit<E, 'at' | 'by'> : never) : never;

/** A rule driven by pure transitions on a simulated clock (1 s per event unless given). */
class Sim {
  snapshot: RuleSnapshot;
  at = T0 - 1_000;
  events: RuleEvent[] = [];

  constructor() {
    [this.snapshot] = initialTransition(ruleMachine);
  }

  get rule() {
    return this.snapshot.context.rule;
  }

  send(body: Body, at = this.at + 1_000): void {
    const event = { ...body, at, by: 'lead' } as RuleEvent;
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted in ${String(this.snapshot.value)}`);
    const [next, actions] = transition(ruleMachine, this.snapshot, event);
    assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'rules emit no effects');
    this.snapshot = next;
    this.at = at;
    this.events.push(event);
  }

  refuse(body: Body): void {
    const event = { ...body, at: this.at + 1_000, by: 'lead' } as RuleEvent;
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused in ${String(this.snapshot.value)}`);
    const [next] = transition(ruleMachine, this.snapshot, event);
    assert.equal(ruleMachine.getPersistedSnapshot(next), ruleMachine.getPersistedSnapshot(this.snapshot));
  }
}

const register: Body = {
  type: 'rule.register',
  name: 'no-low',
  tenantId: 'acme',
  category: 'task.validation',
  expression: "task.priority != 'low'",
};

function registered(extra: Partial<Extract<Body, { type: 'rule.register' }>> = {}): Sim {
  const sim = new Sim();
  sim.send({ ...register, ...extra } as Body, T0);
  return sim;
}

const test = suite('ruleMachine');

test('refuses update and delete before registration and leaves the rule unchanged', () => {
  const sim = new Sim();
  assert.is(sim.snapshot.value, 'unregistered');
  sim.refuse({ type: 'rule.update', changes: { priority: 3 } });
  sim.refuse({ type: 'rule.delete' });
  assert.is(sim.rule.id, '');
});

test('registers with defaults: priority 0, enabled, a message naming the rule, stamped by its author', () => {
  const r = registered().rule;
  assert.is(r.id, 'no-low', 'the id is the name');
  assert.is(r.name, 'no-low');
  assert.is(r.tenantId, 'acme');
  assert.is(r.category, 'task.validation');
  assert.is(r.expression, "task.priority != 'low'");
  assert.is(r.priority, 0);
  assert.is(r.enabled, true);
  assert.is(r.message, defaultRuleMessage('no-low'));
  assert.is(r.description, '');
  assert.is(r.createdBy, 'lead');
  assert.is(r.createdAt, iso(T0));
  assert.is(r.updatedAt, iso(T0));
});

test('a second registration of the same rule is refused', () => {
  const sim = registered();
  sim.refuse(register);
});

test('an update changes only the fields it names, keeps the category and moves updatedAt', () => {
  const sim = registered({ priority: 5, message: 'Low priority work is not accepted.', description: 'keep the queue clean' });
  sim.send({ type: 'rule.update', changes: { expression: "task.priority == 'high'", enabled: false } }, T0 + 60_000);
  const r = sim.rule;
  assert.is(r.expression, "task.priority == 'high'");
  assert.is(r.enabled, false);
  assert.is(r.priority, 5);
  assert.is(r.message, 'Low priority work is not accepted.');
  assert.is(r.description, 'keep the queue clean');
  assert.is(r.category, 'task.validation');
  assert.is(r.createdAt, iso(T0));
  assert.is(r.updatedAt, iso(T0 + 60_000));
});

test('a deleted rule is final: it accepts nothing, not even a new registration', () => {
  const sim = registered();
  sim.send({ type: 'rule.delete' });
  assert.is(sim.snapshot.value, 'deleted');
  assert.is(sim.snapshot.status, 'done');
  sim.refuse({ type: 'rule.update', changes: { priority: 1 } });
  sim.refuse({ type: 'rule.delete' });
  sim.refuse(register);
});

test('a persisted snapshot survives JSON and goes on accepting updates', () => {
  const sim = registered();
  const persisted = JSON.parse(JSON.stringify(ruleMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(ruleMachine, { snapshot: persisted }).start();
  actor.send({ type: 'rule.update', changes: { priority: 9 }, at: T0 + 5_000, by: 'lead' });
  assert.is(actor.getSnapshot().context.rule.priority, 9);
  assert.is(actor.getSnapshot().context.rule.expression, "task.priority != 'low'");
  actor.stop();
});

test('replaying the events reproduces the live state exactly', () => {
  const sim = registered();
  sim.send({ type: 'rule.update', changes: { enabled: false } });
  sim.send({ type: 'rule.update', changes: { enabled: true, message: 'no' } });
  sim.send({ type: 'rule.delete' });
  const stored = sim.events.map((e) => ({ data: JSON.parse(JSON.stringify(e)) as Record<string, unknown> }));
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(ruleMachine, stored))), JSON.parse(JSON.stringify(ruleMachine.getPersistedSnapshot(sim.snapshot))));
});

test.run();

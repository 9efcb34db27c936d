import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { fieldPolicyMachine, type FieldPolicyEvent } from '../../machines/fieldPolicyMachine.js';
import type { FieldRule } from '../../protocol/fieldPolicy.js';
import { T0 } from '../helpers/clock.js';

type FieldPolicySnapshot = SnapshotFrom<typeof fieldPolicyMachine>;

const SECRETS: FieldRule = { kind: 'task', path: 'parameters.secrets', read: ['creator'], write: ['creator'] };
const INPUT: FieldRule = { kind: 'execution', path: 'input.apiKey', read: ['creator'], write: ['admin'] };

function set(s: FieldPolicySnapshot, rules: FieldRule[], at: number, by = 'lead'): FieldPolicySnapshot {
  const event: FieldPolicyEvent = { type: 'fieldPolicy.set', tenantId: 'acme', rules, at, by };
  assert.ok(s.can(event));
  const [next, actions] = transition(fieldPolicyMachine, s, event);
  assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'field policies emit no effects');
  return next;
}

const test = suite('fieldPolicyMachine');

test('starts unset and the first fieldPolicy.set creates the policy', () => {
  const [s0] = initialTransition(fieldPolicyMachine);
  assert.is(s0.value, 'unset');
  const s1 = set(s0, [SECRETS], T0);
  assert.is(s1.value, 'set');
  assert.equal(s1.context.policy, { id: 'tenant', tenantId: 'acme', rules: [SECRETS], updatedBy: 'lead', updatedAt: iso(T0) });
  assert.is(s1.context.createdAt, iso(T0));
});

test('a later fieldPolicy.set replaces every rule and keeps createdAt; an empty list keeps the record', () => {
  const [s0] = initialTransition(fieldPolicyMachine);
  const s1 = set(s0, [SECRETS], T0);
  const s2 = set(s1, [INPUT], T0 + 1_000, 'ops');
  assert.equal(s2.context.policy.rules, [INPUT]);
  assert.is(s2.context.policy.updatedBy, 'ops');
  assert.is(s2.context.createdAt, iso(T0));
  const s3 = set(s2, [], T0 + 2_000);
  assert.equal(s3.context.policy.rules, []);
  assert.is(s3.value, 'set');
});

test('a persisted snapshot survives JSON, and replay reproduces the live state', () => {
  const [s0] = initialTransition(fieldPolicyMachine);
  const events: FieldPolicyEvent[] = [
    { type: 'fieldPolicy.set', tenantId: 'acme', rules: [SECRETS], at: T0, by: 'lead' },
    { type: 'fieldPolicy.set', tenantId: 'acme', rules: [SECRETS, INPUT], at: T0 + 1, by: 'lead' },
  ];
  let s = s0;
  for (const e of events) [s] = transition(fieldPolicyMachine, s, e);
  const persisted = JSON.parse(JSON.stringify(fieldPolicyMachine.getPersistedSnapshot(s)));
  const actor = createActor(fieldPolicyMachine, { snapshot: persisted }).start();
  assert.equal(actor.getSnapshot().context, s.context);
  actor.stop();
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(fieldPolicyMachine, events.map((data) => ({ data: { ...data } }))))), persisted);
});

test.run();

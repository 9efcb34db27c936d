import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { policyMachine, type PolicyEvent } from '../../machines/policyMachine.js';
import { T0 } from '../helpers/clock.js';

type PolicySnapshot = SnapshotFrom<typeof policyMachine>;

function set(s: PolicySnapshot, body: Omit<PolicyEvent, 'type' | 'at' | 'by'>, at: number, by = 'lead'): PolicySnapshot {
  const event: PolicyEvent = { type: 'policy.set', ...body, at, by };
  assert.ok(s.can(event));
  const [next, actions] = transition(policyMachine, s, event);
  assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'policies emit no effects');
  return next;
}

const test = suite('policyMachine');

test('starts unset and the first policy.set creates the policy', () => {
  const [s0] = initialTransition(policyMachine);
  assert.is(s0.value, 'unset');
  const s1 = set(s0, { taskType: 'review', defaults: { maxRetries: 2 } }, T0);
  assert.is(s1.value, 'set');
  assert.equal(s1.context.policy, { taskType: 'review', defaults: { maxRetries: 2 }, assignment: {}, updatedBy: 'lead', updatedAt: iso(T0) });
  assert.is(s1.context.createdAt, iso(T0));
});

test('a later policy.set replaces the parts it names, keeps the others and keeps createdAt', () => {
  const [s0] = initialTransition(policyMachine);
  const s1 = set(s0, { taskType: '*', defaults: { priority: 'high', maxRetries: 2 }, assignment: { strategy: 'least_loaded' } }, T0);
  const s2 = set(s1, { taskType: '*', defaults: { timeoutSeconds: 60 } }, T0 + 1_000, 'ops');
  assert.equal(s2.context.policy.defaults, { timeoutSeconds: 60 }, 'defaults are replaced as a whole');
  assert.equal(s2.context.policy.assignment, { strategy: 'least_loaded' }, 'assignment was not named, so it is kept');
  assert.is(s2.context.policy.updatedBy, 'ops');
  assert.is(s2.context.policy.updatedAt, iso(T0 + 1_000));
  assert.is(s2.context.createdAt, iso(T0));
  const s3 = set(s2, { taskType: '*', defaults: {}, assignment: {} }, T0 + 2_000);
  assert.equal([s3.context.policy.defaults, s3.context.policy.assignment], [{}, {}], 'empty parts clear, the record stays');
  assert.is(s3.value, 'set');
});

test('a persisted snapshot survives JSON, and replay reproduces the live state', () => {
  const [s0] = initialTransition(policyMachine);
  const events: PolicyEvent[] = [
    { type: 'policy.set', taskType: 'build', defaults: { parameters: { lang: 'go' } }, at: T0, by: 'lead' },
    { type: 'policy.set', taskType: 'build', assignment: { auto: true }, at: T0 + 1, by: 'lead' },
  ];
  let s = s0;
  for (const e of events) [s] = transition(policyMachine, s, e);
  const persisted = JSON.parse(JSON.stringify(policyMachine.getPersistedSnapshot(s)));
  const actor = createActor(policyMachine, { snapshot: persisted }).start();
  assert.equal(actor.getSnapshot().context, s.context);
  actor.stop();
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(policyMachine, events.map((data) => ({ data: { ...data } }))))), persisted);
});

test.run();

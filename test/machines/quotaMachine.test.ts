import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { quotaMachine, type QuotaEvent } from '../../machines/quotaMachine.js';
import { T0 } from '../helpers/clock.js';

type QuotaSnapshot = SnapshotFrom<typeof quotaMachine>;

function send(s: QuotaSnapshot, event: QuotaEvent): QuotaSnapshot {
  assert.ok(s.can(event), `${event.type} is accepted`);
  const [next, actions] = transition(quotaMachine, s, event);
  assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'quotas emit no effects');
  return next;
}

const warning = (at: number, used = 8): QuotaEvent => ({ type: 'quota.warning', resource: 'tasks', limit: 10, used, percent: used * 10, at, by: 'system' });

const test = suite('quotaMachine');

test('starts new; quota.set stores the limits it names, null as unlimited, and "default" removes one', () => {
  const [s0] = initialTransition(quotaMachine);
  assert.is(s0.value, 'new');
  const s1 = send(s0, { type: 'quota.set', limits: { tasks: 10, active_tasks: null }, at: T0, by: 'lead' });
  assert.is(s1.value, 'active');
  assert.equal(s1.context, { overrides: { tasks: 10, active_tasks: null }, warned: {}, updatedBy: 'lead', updatedAt: iso(T0), createdAt: iso(T0) });
  const s2 = send(s1, { type: 'quota.set', limits: { active_tasks: 'default', stored_bytes: 1024 }, at: T0 + 1, by: 'ops' });
  assert.equal(s2.context.overrides, { tasks: 10, stored_bytes: 1024 });
  assert.equal([s2.context.updatedBy, s2.context.updatedAt, s2.context.createdAt], ['ops', iso(T0 + 1), iso(T0)]);
});

test('a warning is accepted once per resource until it is re-armed', () => {
  const [s0] = initialTransition(quotaMachine);
  const s1 = send(s0, warning(T0));
  assert.is(s1.value, 'active', 'a warning on server defaults alone creates the record');
  assert.equal(s1.context.warned, { tasks: { limit: 10, used: 8, at: iso(T0) } });
  assert.equal([s1.context.updatedBy, s1.context.updatedAt], ['', ''], 'a warning is not a change of limits');
  assert.not.ok(s1.can(warning(T0 + 1, 9)), 'a second warning is refused');
  assert.not.ok(s1.can({ type: 'quota.rearmed', resource: 'active_tasks', limit: 10, used: 1, at: T0, by: 'system' }), 'nothing to re-arm there');
  const s2 = send(s1, { type: 'quota.rearmed', resource: 'tasks', limit: 10, used: 7, at: T0 + 2, by: 'system' });
  assert.equal(s2.context.warned, {});
  assert.ok(s2.can(warning(T0 + 3)), 'warns again after re-arming');
});

test('changing a limit re-arms its warning; setting the same limit again does not', () => {
  const [s0] = initialTransition(quotaMachine);
  const s1 = send(send(s0, { type: 'quota.set', limits: { tasks: 10 }, at: T0, by: 'lead' }), warning(T0 + 1));
  const same = send(s1, { type: 'quota.set', limits: { tasks: 10, workspaces: 2 }, at: T0 + 2, by: 'lead' });
  assert.ok(same.context.warned.tasks, 'the same limit keeps the warning standing');
  const changed = send(same, { type: 'quota.set', limits: { tasks: 20 }, at: T0 + 3, by: 'lead' });
  assert.equal(changed.context.warned, {});
});

test('a persisted snapshot survives JSON, and replay reproduces the live state', () => {
  const [s0] = initialTransition(quotaMachine);
  const events: QuotaEvent[] = [
    { type: 'quota.set', limits: { tasks: 10 }, at: T0, by: 'lead' },
    warning(T0 + 1),
    { type: 'quota.rearmed', resource: 'tasks', limit: 10, used: 2, at: T0 + 2, by: 'system' },
    { type: 'quota.set', limits: { tasks: 'default', members_per_workspace: 5 }, at: T0 + 3, by: 'lead' },
  ];
  let s = s0;
  for (const e of events) s = send(s, e);
  const persisted = JSON.parse(JSON.stringify(quotaMachine.getPersistedSnapshot(s)));
  const actor = createActor(quotaMachine, { snapshot: persisted }).start();
  assert.equal(actor.getSnapshot().context, s.context);
  actor.stop();
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(quotaMachine, events.map((data) => ({ data: { ...data } }))))), persisted);
});

test.run();

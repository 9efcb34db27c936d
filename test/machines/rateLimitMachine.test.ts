import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { rateLimitMachine, type RateLimitEvent } from '../../machines/rateLimitMachine.js';
import { T0 } from '../helpers/clock.js';

type RateLimitSnapshot = SnapshotFrom<typeof rateLimitMachine>;

function send(s: RateLimitSnapshot, event: RateLimitEvent): RateLimitSnapshot {
  assert.ok(s.can(event), `${event.type} accepted in ${String(s.value)}`);
  const [next, actions] = transition(rateLimitMachine, s, event);
  assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'rate limits emit no effects');
  return next;
}

const test = suite('rateLimitMachine');

test('starts unset; the first ratelimit.set creates the overrides, and unset is not accepted before it', () => {
  const [s0] = initialTransition(rateLimitMachine);
  assert.is(s0.value, 'unset');
  assert.not.ok(s0.can({ type: 'ratelimit.unset', class: 'read', scope: 'tenant', at: T0, by: 'lead' }));
  const s1 = send(s0, { type: 'ratelimit.set', class: 'task:create', scope: 'principal', points: 100, durationSeconds: 60, at: T0, by: 'lead' });
  assert.is(s1.value, 'set');
  assert.equal(s1.context, {
    overrides: { 'task:create': { principal: { points: 100, durationSeconds: 60 } } },
    updatedBy: 'lead',
    updatedAt: iso(T0),
    createdAt: iso(T0),
  });
});

test('set replaces one class and scope and keeps the others; unset removes one and drops an emptied class', () => {
  const [s0] = initialTransition(rateLimitMachine);
  let s = send(s0, { type: 'ratelimit.set', class: 'read', scope: 'tenant', points: 1000, durationSeconds: 1, at: T0, by: 'lead' });
  s = send(s, { type: 'ratelimit.set', class: 'read', scope: 'principal', points: 10, durationSeconds: 1, at: T0 + 1, by: 'lead' });
  s = send(s, { type: 'ratelimit.set', class: 'read', scope: 'tenant', points: 500, durationSeconds: 10, at: T0 + 2, by: 'ops' });
  s = send(s, { type: 'ratelimit.set', class: 'subscribe', scope: 'connection', points: 5, durationSeconds: 60, at: T0 + 3, by: 'ops' });
  assert.equal(s.context.overrides, {
    read: { tenant: { points: 500, durationSeconds: 10 }, principal: { points: 10, durationSeconds: 1 } },
    subscribe: { connection: { points: 5, durationSeconds: 60 } },
  });
  s = send(s, { type: 'ratelimit.unset', class: 'subscribe', scope: 'connection', at: T0 + 4, by: 'lead' });
  s = send(s, { type: 'ratelimit.unset', class: 'read', scope: 'tenant', at: T0 + 5, by: 'lead' });
  assert.equal(s.context.overrides, { read: { principal: { points: 10, durationSeconds: 1 } } });
  s = send(s, { type: 'ratelimit.unset', class: 'read', scope: 'tenant', at: T0 + 6, by: 'lead' });
  assert.equal(s.context.overrides, { read: { principal: { points: 10, durationSeconds: 1 } } }, 'removing a missing override changes nothing');
  assert.equal([s.context.updatedBy, s.context.updatedAt, s.context.createdAt], ['lead', iso(T0 + 6), iso(T0)]);
  assert.is(s.value, 'set', 'the record stays when every override is gone');
});

test('a persisted snapshot survives JSON, and replay reproduces the live state', () => {
  const [s0] = initialTransition(rateLimitMachine);
  const events: RateLimitEvent[] = [
    { type: 'ratelimit.set', class: 'workflow:execute', scope: 'tenant', points: 50, durationSeconds: 60, at: T0, by: 'lead' },
    { type: 'ratelimit.set', class: 'agent:write', scope: 'principal', points: 5, durationSeconds: 1, at: T0 + 1, by: 'lead' },
    { type: 'ratelimit.unset', class: 'workflow:execute', scope: 'tenant', at: T0 + 2, by: 'lead' },
  ];
  let s = s0;
  for (const e of events) s = send(s, e);
  const persisted = JSON.parse(JSON.stringify(rateLimitMachine.getPersistedSnapshot(s)));
  const actor = createActor(rateLimitMachine, { snapshot: persisted }).start();
  assert.equal(actor.getSnapshot().context, s.context);
  actor.stop();
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(rateLimitMachine, events.map((data) => ({ data: { ...data } }))))), persisted);
});

test.run();

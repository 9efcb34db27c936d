import fc from 'fast-check';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replay, replayPersisted } from '../../actors/replay.js';
import { iso, type Effect } from '../../machines/effects.js';
import {
  DEFAULT_RETRY_BACKOFF_MS,
  MAX_RETRY_BACKOFF_MS,
  retryDelayMs,
  taskMachine,
  type TaskCreateFields,
  type TaskEvent,
} from '../../machines/taskMachine.js';
import type { Aggregation, CompletionMode, Coordination, Distribution, SubtaskSlot } from '../../protocol/model.js';
import { leafState } from '../../src/kinds/stateName.js';
import { T0 } from '../helpers/clock.js';
import { seeded } from '../helpers/prng.js';
import { pickTaskEvent, type TaskEventBody } from '../helpers/workload.js';

type TaskSnapshot = SnapshotFrom<typeof taskMachine>;

const HOUR = 3_600_000;

/** A value as a store keeps it (JSON drops `undefined` members). */
function json<T>(value: T): T {
  return JSON.parse(JSON.stringify(value));
}

/** The effects a pure transition emitted, in order. */
function emitted(actions: { type: string; params?: unknown }[]): Effect[] {
  return actions.filter((a) => a.type === 'xstate.emit').map((a) => (a.params as { event: Effect }).event);
}

/**
 * A task driven by pure `transition` calls on a simulated clock: every event carries `at`, which
 * moves forward by `step` ms per event unless given.
 */
class Sim {
  snapshot: TaskSnapshot;
  at = T0;
  /** Effects of the last accepted event. */
  effects: Effect[] = [];

  constructor() {
    [this.snapshot] = initialTransition(taskMachine);
  }

  get status(): string {
    return leafState(this.snapshot.value);
  }

  get task() {
    return this.snapshot.context.task;
  }

  get timers(): Record<string, number> {
    return this.snapshot.context.timers;
  }

  event(body: TaskEventBody, opts: { at?: number; by?: string } = {}): TaskEvent {
    return { ...body, at: opts.at ?? this.at + 1_000, by: opts.by ?? 'lead' } as TaskEvent;
  }

  /** Sends an event that must be accepted; returns its effects. */
  send(body: TaskEventBody, opts: { at?: number; by?: string } = {}): Effect[] {
    const event = this.event(body, opts);
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted while ${this.status}`);
    const [next, actions] = transition(taskMachine, this.snapshot, event);
    this.snapshot = next;
    this.at = event.at;
    this.effects = emitted(actions);
    return this.effects;
  }

  /** Sends an event that must be refused and asserts that nothing changed. */
  refuse(body: TaskEventBody, opts: { at?: number; by?: string } = {}): void {
    const event = this.event(body, opts);
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused while ${this.status}`);
    const before = taskMachine.getPersistedSnapshot(this.snapshot);
    const [next, actions] = transition(taskMachine, this.snapshot, event);
    assert.equal(taskMachine.getPersistedSnapshot(next), before, `${body.type} changed the task while ${this.status}`);
    assert.equal(emitted(actions), [], `${body.type} emitted effects while ${this.status}`);
  }

  /** Fires the durable timer `name` exactly when due, with the `fireAt` the task expects. */
  fire(name: string): Effect[] {
    const fireAt = this.timers[name];
    assert.type(fireAt, 'number', `no ${name} timer while ${this.status}`);
    return this.send({ type: 'timer.fired', name, fireAt: fireAt! }, { at: Math.max(this.at, fireAt!), by: 'system' });
  }
}

function create(fields: Partial<Omit<TaskCreateFields, 'id' | 'tenantId'>> = {}): TaskEventBody {
  return { type: 'task.create', id: 't1', tenantId: 'acme', taskType: 'review', title: 'Review PR 7', ...fields };
}

/** The states a test can ask {@link reach} for. */
type Reachable =
  | 'pending'
  | 'assigned'
  | 'accepted'
  | 'in_progress'
  | 'input_required'
  | 'failed (retry pending)'
  | 'failed (final)'
  | 'completed'
  | 'cancelled'
  | 'timed_out'
  | 'deleted';

const LIVE: Reachable[] = ['pending', 'assigned', 'accepted', 'in_progress', 'input_required'];

/** A fresh task brought to `state`, with a deadline an hour out and a 60 s attempt timeout. */
function reach(state: Reachable, fields: Partial<Omit<TaskCreateFields, 'id' | 'tenantId'>> = {}): Sim {
  const sim = new Sim();
  const retries = state === 'failed (final)' ? 0 : 2;
  sim.send(create({ deadline: iso(T0 + HOUR), timeoutSeconds: 60, maxRetries: retries, retryBackoffMs: 100, ...fields }));
  if (state === 'pending') return sim;
  if (state === 'deleted') return sim.send({ type: 'task.delete' }), sim;
  if (state === 'cancelled') return sim.send({ type: 'task.cancel', reason: 'stop' }), sim;
  if (state === 'timed_out') return sim.fire('deadline'), sim;
  sim.send({ type: 'task.assign', agentId: 'ann' });
  if (state === 'assigned') return sim;
  sim.send({ type: 'task.accept' }, { by: 'ann' });
  if (state === 'accepted') return sim;
  sim.send({ type: 'task.start' }, { by: 'ann' });
  if (state === 'in_progress') return sim;
  if (state === 'input_required') return sim.send({ type: 'task.requestInput', prompt: 'Which branch?' }, { by: 'ann' }), sim;
  if (state === 'completed') return sim.send({ type: 'task.complete', result: { ok: true } }, { by: 'ann' }), sim;
  sim.send({ type: 'task.fail', error: 'crashed' }, { by: 'ann' });
  return sim;
}

const ALL_EVENTS: TaskEventBody[] = [
  create(),
  { type: 'task.update', changes: { title: 'New title' } },
  { type: 'task.assign', agentId: 'bob' },
  { type: 'task.accept' },
  { type: 'task.reject', reason: 'busy' },
  { type: 'task.start' },
  { type: 'task.progress', percent: 50 },
  { type: 'task.requestInput', prompt: 'Which branch?' },
  { type: 'task.provideInput', input: 'main' },
  { type: 'task.complete', result: 1 },
  { type: 'task.fail', error: 'boom' },
  { type: 'task.retry' },
  { type: 'task.cancel' },
  { type: 'task.archive' },
  { type: 'task.delete' },
];

const test = suite('taskMachine');

test('starts as a draft that accepts nothing but task.create', () => {
  const sim = new Sim();
  assert.is(sim.status, 'draft');
  for (const body of ALL_EVENTS.slice(1)) sim.refuse(body);
  sim.refuse({ type: 'timer.fired', name: 'deadline', fireAt: T0 });
});

test('creates a pending task with defaults, stamped with the creator and time', () => {
  const sim = new Sim();
  const effects = sim.send(create(), { at: T0, by: 'lead' });
  assert.is(sim.status, 'pending');
  const t = sim.task;
  assert.is(t.id, 't1');
  assert.is(t.tenantId, 'acme');
  assert.is(t.type, 'review');
  assert.is(t.title, 'Review PR 7');
  assert.is(t.priority, 'normal');
  assert.is(t.createdBy, 'lead');
  assert.is(t.createdAt, iso(T0));
  assert.is(t.updatedAt, iso(T0));
  assert.is(t.assignedTo, null);
  assert.is(t.maxRetries, 0);
  assert.is(t.retryCount, 0);
  assert.is(t.retryBackoffMs, DEFAULT_RETRY_BACKOFF_MS);
  assert.is(t.deadline, null);
  assert.equal(sim.timers, {});
  // Without a deadline, creation makes sure no deadline timer is left.
  assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['deadline'] }]);
});

test('creates an assigned task when task.create names an assignee, starting the chain of custody', () => {
  const sim = new Sim();
  sim.send(create({ assignTo: 'ann' }), { at: T0 });
  assert.is(sim.status, 'assigned');
  assert.is(sim.task.assignedTo, 'ann');
  assert.is(sim.task.assignedAt, iso(T0));
  assert.equal(sim.task.delegations, [{ from: null, to: 'ann', reason: 'assigned at creation', kind: 'manual', at: iso(T0) }]);
});

test('schedules a durable deadline timer at creation and remembers its fireAt', () => {
  const sim = new Sim();
  const deadline = T0 + HOUR;
  const effects = sim.send(create({ deadline: iso(deadline) }), { at: T0 });
  assert.equal(effects, [{ type: 'fx.timer.schedule', name: 'deadline', fireAt: deadline }]);
  assert.equal(sim.timers, { deadline });
});

test('walks pending → assigned → accepted → in_progress → completed, stamping each step', () => {
  const sim = new Sim();
  sim.send(create(), { at: T0 });
  sim.send({ type: 'task.assign', agentId: 'ann', reason: 'best fit', kind: 'automatic' }, { at: T0 + 1 });
  assert.is(sim.status, 'assigned');
  assert.equal(sim.task.delegations, [{ from: null, to: 'ann', reason: 'best fit', kind: 'automatic', at: iso(T0 + 1) }]);
  sim.send({ type: 'task.accept' }, { at: T0 + 2, by: 'ann' });
  assert.is(sim.status, 'accepted');
  assert.is(sim.task.acceptedAt, iso(T0 + 2));
  sim.send({ type: 'task.start' }, { at: T0 + 3, by: 'ann' });
  assert.is(sim.status, 'in_progress');
  assert.is(sim.task.startedAt, iso(T0 + 3));
  sim.send({ type: 'task.progress', percent: 40, message: 'halfway' }, { at: T0 + 4, by: 'ann' });
  assert.equal(sim.task.progress, { percent: 40, message: 'halfway' });
  sim.send({ type: 'task.progress', percent: 60 }, { at: T0 + 5, by: 'ann' });
  assert.equal(sim.task.progress, { percent: 60, message: 'halfway' }, 'progress keeps the message it was not given');
  sim.send({ type: 'task.complete', result: { merged: true } }, { at: T0 + 6, by: 'ann' });
  assert.is(sim.status, 'completed');
  assert.equal(sim.task.result, { merged: true });
  assert.is(sim.task.completedAt, iso(T0 + 6));
  assert.is(sim.task.updatedAt, iso(T0 + 6));
  assert.is(sim.snapshot.status, 'active', 'completed is not final: it can still be archived or deleted');
});

test('reassigning an assigned task appends to the chain of custody', () => {
  const sim = reach('assigned');
  sim.send({ type: 'task.assign', agentId: 'bob', reason: 'ann is away', kind: 'failover' });
  assert.is(sim.status, 'assigned');
  assert.is(sim.task.assignedTo, 'bob');
  assert.equal(
    sim.task.delegations.map((d) => [d.from, d.to, d.kind]),
    [
      [null, 'ann', 'manual'],
      ['ann', 'bob', 'failover'],
    ],
  );
});

test('reject returns an assigned or accepted task to pending, clears the assignee and records why', () => {
  for (const from of ['assigned', 'accepted'] as const) {
    const sim = reach(from);
    sim.send({ type: 'task.reject', reason: 'not my area' }, { by: 'ann' });
    assert.is(sim.status, 'pending', from);
    assert.is(sim.task.assignedTo, null);
    assert.is(sim.task.assignedAt, null);
    assert.is(sim.task.acceptedAt, null);
    assert.equal(sim.task.rejections, [{ by: 'ann', reason: 'not my area', at: iso(sim.at), round: 0 }]);
    assert.equal(sim.effects, []);
    // It can be offered again.
    sim.send({ type: 'task.assign', agentId: 'bob' });
    assert.is(sim.status, 'assigned');
  }
});

test('an input request goes to input_required and the answer returns to in_progress with the input recorded', () => {
  const sim = reach('in_progress');
  sim.send({ type: 'task.requestInput', prompt: 'Which branch?', schema: { type: 'string' } }, { by: 'ann' });
  assert.is(sim.status, 'input_required');
  assert.equal(sim.task.inputRequest, { prompt: 'Which branch?', schema: { type: 'string' } });
  sim.send({ type: 'task.progress', message: 'waiting' }, { by: 'ann' });
  assert.equal(sim.task.progress, { percent: 0, message: 'waiting' });
  sim.send({ type: 'task.provideInput', input: 'main' }, { by: 'lead' });
  assert.is(sim.status, 'in_progress');
  assert.is(sim.task.inputRequest, null);
  assert.equal(sim.task.inputs, [{ prompt: 'Which branch?', input: 'main', by: 'lead', at: iso(sim.at) }]);
  assert.equal(sim.effects, []);
  sim.send({ type: 'task.complete' }, { by: 'ann' });
  assert.is(sim.status, 'completed');
  assert.is(sim.task.result, null);
});

test('starting an attempt with a timeout schedules the attempt timer; without one it schedules nothing', () => {
  const sim = reach('accepted', { timeoutSeconds: 30 });
  const effects = sim.send({ type: 'task.start' }, { by: 'ann' });
  assert.equal(effects, [{ type: 'fx.timer.schedule', name: 'timeout', fireAt: sim.at + 30_000 }]);
  assert.is(sim.timers.timeout, sim.at + 30_000);

  const plain = new Sim();
  plain.send(create({ assignTo: 'ann' }));
  plain.send({ type: 'task.accept' });
  assert.equal(plain.send({ type: 'task.start' }), []);
  assert.equal(plain.timers, {});
});

test('retry back-off doubles per attempt from the base and is capped', () => {
  assert.is(retryDelayMs(100, 0), 100);
  assert.is(retryDelayMs(100, 1), 200);
  assert.is(retryDelayMs(100, 2), 400);
  assert.is(retryDelayMs(1000, 5), 32_000);
  assert.is(retryDelayMs(1000, 40), MAX_RETRY_BACKOFF_MS);
});

test('fail with retries left goes to failed and schedules the retry with exponential back-off', () => {
  const sim = new Sim();
  sim.send(create({ maxRetries: 3, retryBackoffMs: 100 }), { at: T0 });
  const delays: number[] = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    sim.send({ type: 'task.assign', agentId: 'ann' });
    sim.send({ type: 'task.accept' }, { by: 'ann' });
    sim.send({ type: 'task.start' }, { by: 'ann' });
    const effects = sim.send({ type: 'task.fail', error: `attempt ${attempt} crashed` }, { by: 'ann' });
    assert.is(sim.status, 'failed');
    assert.is(sim.task.error, `attempt ${attempt} crashed`);
    assert.is(sim.task.retryCount, attempt);
    const schedule = effects.find((e) => e.type === 'fx.timer.schedule');
    assert.ok(schedule && schedule.type === 'fx.timer.schedule' && schedule.name === 'retry', 'a retry timer is scheduled');
    assert.is(schedule.fireAt, sim.at + retryDelayMs(100, attempt));
    assert.is(sim.timers.retry, schedule.fireAt);
    assert.is(sim.task.retryAt, iso(schedule.fireAt));
    delays.push(schedule.fireAt - sim.at);
    sim.fire('retry');
    assert.is(sim.status, 'pending');
  }
  assert.equal(delays, [100, 200, 400]);
  assert.is(sim.task.retryCount, 3);
});

test('failing in accepted with retries left also schedules a retry', () => {
  const sim = reach('accepted');
  const effects = sim.send({ type: 'task.fail', error: 'cannot start' }, { by: 'ann' });
  assert.is(sim.status, 'failed');
  assert.equal(effects, [{ type: 'fx.timer.schedule', name: 'retry', fireAt: sim.at + 100 }]);
  assert.is(sim.timers.retry, sim.at + 100);
});

test('failing an attempt cancels its timeout timer but keeps the deadline', () => {
  const sim = reach('in_progress');
  const effects = sim.send({ type: 'task.fail', error: 'crashed' }, { by: 'ann' });
  assert.equal(effects, [
    { type: 'fx.timer.cancel', names: ['timeout'] },
    { type: 'fx.timer.schedule', name: 'retry', fireAt: sim.at + 100 },
  ]);
  assert.equal(Object.keys(sim.timers).sort(), ['deadline', 'retry']);
});

test('the retry timer with the expected fireAt reopens the task as pending with retryCount + 1 and no assignee', () => {
  const sim = reach('failed (retry pending)');
  const effects = sim.fire('retry');
  assert.is(sim.status, 'pending');
  assert.equal(effects, []);
  const t = sim.task;
  assert.is(t.retryCount, 1);
  assert.is(t.retryAt, null);
  assert.is(t.assignedTo, null);
  assert.is(t.assignedAt, null);
  assert.is(t.acceptedAt, null);
  assert.is(t.startedAt, null);
  assert.is(t.completedAt, null);
  assert.is(t.progress, null);
  assert.equal(Object.keys(sim.timers), ['deadline'], 'the retry timer is forgotten, the deadline is kept');
});

test('a stale retry timer (another fireAt) is refused and leaves the task unchanged', () => {
  const sim = reach('failed (retry pending)');
  const fireAt = sim.timers.retry!;
  sim.refuse({ type: 'timer.fired', name: 'retry', fireAt: fireAt - 1 }, { at: fireAt, by: 'system' });
  sim.refuse({ type: 'timer.fired', name: 'retry', fireAt: fireAt + 1 }, { at: fireAt + 1, by: 'system' });
  sim.refuse({ type: 'timer.fired', name: 'timeout', fireAt }, { at: fireAt, by: 'system' });
  // After the retry fired once, the same timer event is stale too.
  sim.fire('retry');
  sim.refuse({ type: 'timer.fired', name: 'retry', fireAt }, { at: fireAt + 10, by: 'system' });
});

test('a manual retry of a failed task cancels the pending retry timer and reopens it', () => {
  const sim = reach('failed (retry pending)');
  assert.equal(sim.timers, { deadline: T0 + HOUR, retry: sim.at + 100 });
  const effects = sim.send({ type: 'task.retry' });
  assert.is(sim.status, 'pending');
  // The deadline timer is still armed: it is kept, not scheduled again.
  assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['retry'] }]);
  assert.is(sim.task.retryCount, 1);
  assert.is(sim.task.retryAt, null);
  assert.equal(sim.timers, { deadline: T0 + HOUR });

  const noDeadline = reach('failed (retry pending)', { deadline: undefined });
  assert.equal(noDeadline.timers, { retry: noDeadline.at + 100 });
  assert.equal(noDeadline.send({ type: 'task.retry' }), [{ type: 'fx.timer.cancel', names: ['retry'] }]);
  assert.is(noDeadline.status, 'pending');
  assert.equal(noDeadline.timers, {});
});

test('retries exhausted: fail goes to failed for good with no timer scheduled and every timer cancelled', () => {
  for (const from of ['accepted', 'in_progress', 'input_required'] as const) {
    const sim = reach(from, { maxRetries: 0 });
    const effects = sim.send({ type: 'task.fail', error: 'gave up' }, { by: 'ann' });
    assert.is(sim.status, 'failed', from);
    assert.is(sim.task.retryAt, null, from);
    assert.not.ok(
      effects.some((e) => e.type === 'fx.timer.schedule'),
      `no timer is scheduled failing from ${from}`,
    );
    assert.equal(sim.timers, {}, `no timer is expected after failing from ${from}`);
    const cancelled = effects.flatMap((e) => (e.type === 'fx.timer.cancel' ? e.names : [])).sort();
    assert.ok(cancelled.includes('deadline'), `the deadline timer is cancelled failing from ${from}`);
    // The old deadline no longer applies to a task that failed for good.
    sim.refuse({ type: 'timer.fired', name: 'deadline', fireAt: T0 + HOUR }, { at: T0 + HOUR, by: 'system' });
  }
});

test('a failure marked not retryable does not retry even with attempts left', () => {
  const sim = reach('in_progress', { maxRetries: 5 });
  const effects = sim.send({ type: 'task.fail', error: 'bad input', retryable: false }, { by: 'ann' });
  assert.is(sim.status, 'failed');
  assert.not.ok(effects.some((e) => e.type === 'fx.timer.schedule'));
  assert.equal(sim.timers, {});
});

test('the last allowed failure is final: retryCount reaching maxRetries stops retrying', () => {
  const sim = reach('failed (retry pending)', { maxRetries: 1 });
  sim.fire('retry');
  sim.send({ type: 'task.assign', agentId: 'ann' });
  sim.send({ type: 'task.accept' });
  sim.send({ type: 'task.start' });
  const effects = sim.send({ type: 'task.fail', error: 'again' });
  assert.is(sim.status, 'failed');
  assert.is(sim.task.retryCount, 1);
  assert.not.ok(effects.some((e) => e.type === 'fx.timer.schedule'));
});

test('the attempt timeout with retries left fails the attempt and schedules a retry', () => {
  for (const from of ['in_progress', 'input_required'] as const) {
    const sim = reach(from, { timeoutSeconds: 5 });
    const startedAt = Date.parse(sim.task.startedAt!);
    assert.is(sim.timers.timeout, startedAt + 5_000);
    const effects = sim.fire('timeout');
    assert.is(sim.status, 'failed', from);
    assert.is(sim.task.error, 'The attempt did not finish within 5 s.');
    assert.is(sim.task.inputRequest, null);
    assert.equal(effects, [{ type: 'fx.timer.schedule', name: 'retry', fireAt: sim.at + 100 }]);
    assert.equal(Object.keys(sim.timers).sort(), ['deadline', 'retry']);
    sim.fire('retry');
    assert.is(sim.status, 'pending');
    assert.is(sim.task.retryCount, 1);
  }
});

test('the attempt timeout with no retries left times the task out and cancels every timer', () => {
  for (const from of ['in_progress', 'input_required'] as const) {
    const sim = reach(from, { timeoutSeconds: 5, maxRetries: 0 });
    const effects = sim.fire('timeout');
    assert.is(sim.status, 'timed_out', from);
    // The timeout timer is consumed by its own firing: only the deadline is left to cancel.
    assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['deadline'] }]);
    assert.equal(sim.timers, {});
  }
});

test('a stale attempt timeout from an earlier attempt is refused', () => {
  const sim = reach('in_progress', { timeoutSeconds: 5 });
  const first = sim.timers.timeout!;
  sim.send({ type: 'task.fail', error: 'crashed' });
  sim.fire('retry');
  sim.send({ type: 'task.assign', agentId: 'ann' });
  sim.send({ type: 'task.accept' });
  sim.send({ type: 'task.start' });
  assert.is.not(sim.timers.timeout, first);
  sim.refuse({ type: 'timer.fired', name: 'timeout', fireAt: first }, { at: sim.at + 1, by: 'system' });
  assert.is(sim.status, 'in_progress');
});

test('the deadline times the task out from every live state and cancels every timer', () => {
  for (const from of LIVE) {
    const sim = reach(from);
    const expected = Object.keys(sim.timers);
    const effects = sim.fire('deadline');
    assert.is(sim.status, 'timed_out', from);
    assert.is(sim.task.error, `The deadline ${iso(T0 + HOUR)} passed.`);
    assert.is(sim.task.completedAt, iso(T0 + HOUR));
    assert.equal(effects, [{ type: 'fx.timer.cancel', names: expected }], from);
    assert.equal(sim.timers, {});
  }
});

test('the deadline times out a failed task that still waits for its retry', () => {
  const sim = reach('failed (retry pending)', { retryBackoffMs: 2 * HOUR });
  const effects = sim.fire('deadline');
  assert.is(sim.status, 'timed_out');
  assert.is(sim.task.retryAt, null);
  assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['deadline', 'retry'] }]);
  sim.refuse({ type: 'timer.fired', name: 'retry', fireAt: sim.at + 2 * HOUR }, { at: sim.at + 2 * HOUR, by: 'system' });
});

test('the deadline still applies after a task that failed for good is retried by hand', () => {
  const sim = reach('failed (final)');
  sim.send({ type: 'task.retry' });
  assert.is(sim.status, 'pending');
  assert.is(sim.timers.deadline, T0 + HOUR, 'the reopened task expects its deadline timer again');
  assert.ok(
    sim.effects.some((e) => e.type === 'fx.timer.schedule' && e.name === 'deadline' && e.fireAt === T0 + HOUR),
    'the deadline timer is scheduled again',
  );
  sim.fire('deadline');
  assert.is(sim.status, 'timed_out');
});

test('a deadline timer for an old deadline is refused after the deadline moved', () => {
  const sim = reach('in_progress');
  const later = T0 + 2 * HOUR;
  const effects = sim.send({ type: 'task.update', changes: { deadline: iso(later) } });
  assert.equal(effects, [{ type: 'fx.timer.schedule', name: 'deadline', fireAt: later }]);
  sim.refuse({ type: 'timer.fired', name: 'deadline', fireAt: T0 + HOUR }, { at: T0 + HOUR, by: 'system' });
  sim.fire('deadline');
  assert.is(sim.status, 'timed_out');
});

test('update changes fields in every live state; clearing the deadline cancels its timer', () => {
  for (const from of LIVE) {
    const sim = reach(from);
    const status = sim.status;
    sim.send({ type: 'task.update', changes: { title: 'Better title', priority: 'high', parameters: { pr: 7 }, maxRetries: 4 } });
    assert.is(sim.status, status, 'update does not change the state');
    assert.is(sim.task.title, 'Better title');
    assert.is(sim.task.priority, 'high');
    assert.equal(sim.task.parameters, { pr: 7 });
    assert.is(sim.task.maxRetries, 4);
    assert.is(sim.task.description, '', 'fields not named are kept');
    assert.is(sim.task.updatedAt, iso(sim.at));
    const effects = sim.send({ type: 'task.update', changes: { deadline: null } });
    assert.is(sim.task.deadline, null);
    assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['deadline'] }]);
    assert.not.ok('deadline' in sim.timers);
  }
});

test('cancel works from every live state and from failed, and cancels every timer', () => {
  for (const from of [...LIVE, 'failed (retry pending)', 'failed (final)'] as Reachable[]) {
    const sim = reach(from);
    const expected = Object.keys(sim.timers);
    const effects = sim.send({ type: 'task.cancel', reason: 'not needed' });
    assert.is(sim.status, 'cancelled', from);
    assert.is(sim.task.error, 'not needed');
    assert.is(sim.task.retryAt, null);
    assert.ok(sim.task.completedAt !== null);
    // A task without timers (failed for good) has nothing to cancel.
    assert.equal(effects, expected.length > 0 ? [{ type: 'fx.timer.cancel', names: expected }] : [], from);
    assert.equal(sim.timers, {});
  }
  assert.equal(reach('failed (final)').send({ type: 'task.cancel' }), []);
  const sim = reach('pending');
  sim.send({ type: 'task.cancel' });
  assert.is(sim.task.error, 'cancelled', 'a cancel without a reason says so');
});

test('archive is allowed once, only when the task is finished', () => {
  for (const from of LIVE) reach(from).refuse({ type: 'task.archive' });
  reach('failed (retry pending)').refuse({ type: 'task.archive' });
  for (const from of ['completed', 'cancelled', 'timed_out', 'failed (final)'] as Reachable[]) {
    const sim = reach(from);
    const status = sim.status;
    sim.send({ type: 'task.archive' });
    assert.is(sim.status, status, `archiving keeps the state (${from})`);
    assert.is(sim.task.archived, true);
    sim.refuse({ type: 'task.archive' });
  }
});

test('delete ends the task from every state but draft and deleted, cancelling its timers', () => {
  for (const from of [...LIVE, 'failed (retry pending)', 'failed (final)', 'completed', 'cancelled', 'timed_out'] as Reachable[]) {
    const sim = reach(from);
    const expected = Object.keys(sim.timers);
    const effects = sim.send({ type: 'task.delete' });
    assert.is(sim.status, 'deleted', from);
    assert.is(sim.snapshot.status, 'done', 'deleted is final');
    if (expected.length > 0) assert.equal(effects, [{ type: 'fx.timer.cancel', names: expected }], from);
    for (const body of ALL_EVENTS) sim.refuse(body);
  }
});

test('refuses illegal events and leaves the task unchanged', () => {
  const illegal: [Reachable, TaskEventBody['type'][]][] = [
    ['pending', ['task.create', 'task.accept', 'task.reject', 'task.start', 'task.progress', 'task.requestInput', 'task.provideInput', 'task.complete', 'task.fail', 'task.retry', 'task.archive']],
    ['assigned', ['task.create', 'task.start', 'task.progress', 'task.requestInput', 'task.provideInput', 'task.complete', 'task.fail', 'task.retry', 'task.archive']],
    ['accepted', ['task.create', 'task.assign', 'task.accept', 'task.progress', 'task.requestInput', 'task.provideInput', 'task.complete', 'task.retry', 'task.archive']],
    ['in_progress', ['task.create', 'task.assign', 'task.accept', 'task.reject', 'task.start', 'task.provideInput', 'task.retry', 'task.archive']],
    ['input_required', ['task.create', 'task.assign', 'task.accept', 'task.reject', 'task.start', 'task.requestInput', 'task.complete', 'task.retry', 'task.archive']],
    ['failed (retry pending)', ['task.create', 'task.update', 'task.assign', 'task.accept', 'task.reject', 'task.start', 'task.progress', 'task.complete', 'task.fail', 'task.archive']],
    ['failed (final)', ['task.create', 'task.update', 'task.assign', 'task.accept', 'task.start', 'task.complete', 'task.fail']],
    ['completed', ['task.create', 'task.update', 'task.assign', 'task.accept', 'task.reject', 'task.start', 'task.progress', 'task.complete', 'task.fail', 'task.retry', 'task.cancel']],
    ['cancelled', ['task.create', 'task.update', 'task.assign', 'task.accept', 'task.start', 'task.complete', 'task.fail', 'task.retry', 'task.cancel']],
    ['timed_out', ['task.create', 'task.update', 'task.assign', 'task.accept', 'task.start', 'task.complete', 'task.fail', 'task.retry', 'task.cancel']],
  ];
  let checked = 0;
  for (const [state, types] of illegal) {
    const sim = reach(state);
    for (const type of types) {
      sim.refuse(ALL_EVENTS.find((e) => e.type === type)!);
      checked++;
    }
    // Timers the task does not expect are refused everywhere.
    sim.refuse({ type: 'timer.fired', name: 'nonsense', fireAt: T0 }, { by: 'system' });
  }
  assert.ok(checked > 80);
});

test('rejects complete while pending and leaves the task unchanged', () => {
  const sim = reach('pending');
  sim.refuse({ type: 'task.complete', result: 'done' }, { by: 'ann' });
  assert.is(sim.status, 'pending');
  assert.is(sim.task.result, null);
});

test('emits the same effects through a live actor as through pure transitions', () => {
  const actor = createActor(taskMachine);
  const seen: Effect[] = [];
  actor.on('*', (e) => seen.push(e as Effect));
  actor.start();
  const at = T0;
  const events: TaskEvent[] = [
    { ...create({ deadline: iso(T0 + HOUR), timeoutSeconds: 10, maxRetries: 1, retryBackoffMs: 50, assignTo: 'ann' }), at, by: 'lead' } as TaskEvent,
    { type: 'task.accept', at: at + 1, by: 'ann' },
    { type: 'task.start', at: at + 2, by: 'ann' },
    { type: 'task.fail', error: 'x', at: at + 3, by: 'ann' },
    { type: 'timer.fired', name: 'retry', fireAt: at + 53, at: at + 53, by: 'system' },
    { type: 'task.cancel', at: at + 60, by: 'lead' },
  ];
  const pure: Effect[] = [];
  let [s] = initialTransition(taskMachine);
  for (const e of events) {
    actor.send(e);
    const [next, actions] = transition(taskMachine, s, e);
    s = next;
    pure.push(...emitted(actions));
  }
  assert.is(leafState(actor.getSnapshot().value), 'cancelled');
  assert.equal(seen, pure);
  assert.equal(seen, [
    { type: 'fx.timer.schedule', name: 'deadline', fireAt: T0 + HOUR },
    { type: 'fx.timer.schedule', name: 'timeout', fireAt: at + 2 + 10_000 },
    { type: 'fx.timer.cancel', names: ['timeout'] },
    { type: 'fx.timer.schedule', name: 'retry', fireAt: at + 53 },
    { type: 'fx.timer.cancel', names: ['deadline'] },
  ]);
  actor.stop();
});

test('a persisted snapshot survives JSON and accepts the same next events with the same results', () => {
  const states: Reachable[] = [...LIVE, 'failed (retry pending)', 'failed (final)', 'completed', 'cancelled', 'timed_out', 'deleted'];
  for (const state of states) {
    const sim = reach(state);
    const persisted = JSON.parse(JSON.stringify(taskMachine.getPersistedSnapshot(sim.snapshot)));
    const restored = createActor(taskMachine, { snapshot: persisted });
    const effects: Effect[] = [];
    restored.on('*', (e) => effects.push(e as Effect));
    restored.start();
    const snap = restored.getSnapshot();
    assert.equal(snap.value, sim.snapshot.value, state);
    assert.equal(snap.context, sim.snapshot.context, state);
    assert.is(snap.status, sim.snapshot.status, state);

    const nexts: TaskEventBody[] = [...ALL_EVENTS, ...Object.entries(sim.timers).map(([name, fireAt]) => ({ type: 'timer.fired' as const, name, fireAt }))];
    for (const body of nexts) {
      const event = { ...body, at: T0 + 2 * HOUR, by: 'lead' } as TaskEvent;
      assert.is(snap.can(event), sim.snapshot.can(event), `${state}: can(${body.type})`);
      if (!sim.snapshot.can(event)) continue;
      const [expected, actions] = transition(taskMachine, sim.snapshot, event);
      const [got, gotActions] = transition(taskMachine, snap, event);
      assert.equal(taskMachine.getPersistedSnapshot(got), taskMachine.getPersistedSnapshot(expected), `${state} then ${body.type}`);
      assert.equal(emitted(gotActions), emitted(actions), `${state} then ${body.type}: effects`);
    }
    restored.stop();
  }
});

test('replaying the accepted events of 200 random (seeded) histories reproduces the live state exactly', () => {
  const finals = new Map<string, number>();
  let retried = 0;
  let restores = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const rng = seeded(seed);
    let live = createActor(taskMachine).start();
    let at = T0;
    const stored: { data: Record<string, unknown> }[] = [];
    const length = rng.between(1, 40);
    for (let i = 0; i < length; i++) {
      // Finished tasks accept only archive and delete; most histories stop there.
      const now = live.getSnapshot();
      const finished = ['completed', 'cancelled', 'timed_out'].includes(leafState(now.value)) || (now.value === 'failed' && !now.context.timers.retry);
      if (finished && rng.chance(0.8)) break;
      at += rng.between(0, 5_000);
      const pick = pickTaskEvent(rng, live.getSnapshot(), { id: `t${seed}`, tenantId: 'acme', at, by: 'lead', timers: true });
      if (!pick) break;
      at = pick.at;
      const event = { ...pick.body, at, by: pick.body.type === 'timer.fired' ? 'system' : 'lead' } as TaskEvent;
      live.send(event);
      assert.is(live.getSnapshot().status === 'error', false, `seed ${seed}: the machine failed on ${event.type}`);
      // Stores keep events as JSON.
      stored.push({ data: JSON.parse(JSON.stringify(event)) });
      if (rng.chance(0.15)) {
        // What the runtime does on reactivation: restore from a persisted snapshot.
        const persisted = JSON.parse(JSON.stringify(live.getPersistedSnapshot()));
        live.stop();
        live = createActor(taskMachine, { snapshot: persisted }).start();
        restores++;
      }
    }
    const expected = json(live.getPersistedSnapshot());
    assert.equal(json(replayPersisted(taskMachine, stored)), expected, `seed ${seed}: replayPersisted`);
    const replayed = replay(taskMachine, stored);
    assert.equal(replayed.value, live.getSnapshot().value, `seed ${seed}: replay value`);
    // Pure transitions fold to the same state too.
    let [s] = initialTransition(taskMachine);
    for (const e of stored) [s] = transition(taskMachine, s, e.data as unknown as TaskEvent);
    assert.equal(json(taskMachine.getPersistedSnapshot(s)), expected, `seed ${seed}: transition fold`);

    const status = leafState(live.getSnapshot().value);
    finals.set(status, (finals.get(status) ?? 0) + 1);
    if (live.getSnapshot().context.task.retryCount > 0) retried++;
    live.stop();
  }
  // The generator must reach the interesting parts of the machine, or this test proves little.
  for (const status of ['pending', 'assigned', 'in_progress', 'completed', 'failed', 'cancelled', 'timed_out', 'deleted']) {
    assert.ok(finals.has(status), `no history ended ${status}: ${JSON.stringify([...finals])}`);
  }
  assert.ok(retried >= 10, `only ${retried} histories retried`);
  assert.ok(restores >= 50, `only ${restores} snapshot restores`);
});

// ══════════════════════════════════════════════════════════════════════════
// Leases, offers, auto-assignment, delegation, staged tasks, distributed parents
// ══════════════════════════════════════════════════════════════════════════

const sched = (name: string, fireAt: number): Effect => ({ type: 'fx.timer.schedule', name, fireAt });
const cancel = (...names: string[]): Effect => ({ type: 'fx.timer.cancel', names });
const toTask = (id: string, event: { type: string } & Record<string, unknown>): Effect => ({ type: 'fx.send', kind: 'task', id, event });
const activateFx = (id: string, ...input: [unknown?]): Effect => toTask(id, input.length === 0 ? { type: 'task.activate' } : { type: 'task.activate', input: input[0] });
const cancelFx = (id: string, reason: string): Effect => toTask(id, { type: 'task.cancel', reason });
/** The report a task sends its parent `parent` when it settles. */
const notice = (
  parent: string,
  n: { subtaskId?: string; status: 'completed' | 'failed' | 'cancelled' | 'timed_out'; result?: unknown; error?: string | null; agent?: string | null },
): Effect =>
  toTask(parent, { type: 'task.subtaskSettled', subtaskId: n.subtaskId ?? 't1', status: n.status, result: n.result ?? null, error: n.error ?? null, agent: n.agent ?? null });
const sends = (effects: Effect[]) => effects.filter((e) => e.type === 'fx.send');
const lastLink = (sim: Sim) => sim.task.delegations[sim.task.delegations.length - 1];

/** A fresh task created at T0 with these fields. */
function fresh(fields: Partial<Omit<TaskCreateFields, 'id' | 'tenantId'>> = {}): Sim {
  const sim = new Sim();
  sim.send(create(fields), { at: T0 });
  return sim;
}

const HOLDING = ['accepted', 'in_progress', 'input_required'] as const;

// ── Leases ────────────────────────────────────────────────────────────────

test('accepting a task with a lease schedules the lease timer at accept + leaseSeconds and records the expiry', () => {
  const sim = fresh({ leaseSeconds: 30 });
  assert.equal(sim.send({ type: 'task.assign', agentId: 'ann' }, { at: T0 + 1_000 }), []);
  assert.is(sim.task.leaseExpiresAt, null, 'an offer holds no lease');
  const effects = sim.send({ type: 'task.accept' }, { at: T0 + 2_000, by: 'ann' });
  assert.equal(effects, [sched('lease', T0 + 32_000)]);
  assert.is(sim.task.leaseExpiresAt, iso(T0 + 32_000));
  assert.equal(sim.timers, { lease: T0 + 32_000 });
  assert.is(sim.task.leaseSeconds, 30);
  assert.is(sim.task.onLeaseExpired, 'reoffer', 'reoffer is the default');
});

test('a task without leaseSeconds never schedules a lease: not at accept, not on progress, not on renewLease', () => {
  const sim = reach('accepted');
  assert.equal(sim.effects, [], 'accept scheduled nothing');
  assert.is(sim.task.leaseExpiresAt, null);
  const before = sim.task;
  assert.equal(sim.send({ type: 'task.renewLease', until: sim.at + 60_000 }, { by: 'ann' }), []);
  assert.equal(sim.task, before, 'renewing a lease the task does not have changes nothing');
  sim.send({ type: 'task.start' }, { by: 'ann' });
  assert.equal(sim.send({ type: 'task.progress', percent: 10 }, { by: 'ann' }), []);
  assert.is(sim.task.leaseExpiresAt, null);
  assert.not.ok('lease' in sim.timers);
});

test('progress renews the lease in progress and while waiting for input', () => {
  const sim = reach('in_progress', { leaseSeconds: 30 });
  assert.is(sim.timers.lease, Date.parse(sim.task.acceptedAt!) + 30_000);
  const t1 = sim.at + 10_000;
  assert.equal(sim.send({ type: 'task.progress', percent: 20 }, { at: t1, by: 'ann' }), [sched('lease', t1 + 30_000)]);
  assert.is(sim.task.leaseExpiresAt, iso(t1 + 30_000));
  assert.is(sim.timers.lease, t1 + 30_000);
  assert.equal(sim.send({ type: 'task.requestInput', prompt: 'Which branch?' }, { at: t1 + 1_000, by: 'ann' }), [], 'asking for input leaves the lease alone');
  const t2 = t1 + 5_000;
  assert.equal(sim.send({ type: 'task.progress', message: 'waiting' }, { at: t2, by: 'ann' }), [sched('lease', t2 + 30_000)]);
  assert.is(sim.status, 'input_required');
  assert.is(sim.task.leaseExpiresAt, iso(t2 + 30_000));
  assert.is(sim.timers.lease, t2 + 30_000);
  // The lease the renewal replaced is stale now.
  sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: t1 + 30_000 }, { at: t1 + 30_000, by: 'system' });
});

test('task.renewLease moves the lease timer to `until` while the agent holds the task', () => {
  for (const from of HOLDING) {
    const sim = reach(from, { leaseSeconds: 30 });
    const old = sim.timers.lease!;
    const until = sim.at + 45_000;
    assert.equal(sim.send({ type: 'task.renewLease', until }, { by: 'ann' }), [sched('lease', until)], from);
    assert.is(sim.status, from);
    assert.is(sim.task.leaseExpiresAt, iso(until));
    assert.is(sim.timers.lease, until);
    sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: old }, { at: old, by: 'system' });
  }
  reach('pending', { leaseSeconds: 30 }).refuse({ type: 'task.renewLease', until: T0 + HOUR });
  reach('assigned', { leaseSeconds: 30 }).refuse({ type: 'task.renewLease', until: T0 + HOUR });
  reach('completed', { leaseSeconds: 30 }).refuse({ type: 'task.renewLease', until: T0 + HOUR });
});

test('a lapsed lease (reoffer) returns the task to pending, records the holder as declining and cancels the attempt timeout', () => {
  for (const from of HOLDING) {
    const sim = reach(from, { leaseSeconds: 30 });
    const fireAt = sim.timers.lease!;
    const effects = sim.fire('lease');
    assert.is(sim.status, 'pending', from);
    // The lease timer is consumed by its own firing; only the attempt timeout (if running) is cancelled.
    assert.equal(effects, from === 'accepted' ? [] : [cancel('timeout')], from);
    assert.equal(sim.timers, { deadline: T0 + HOUR }, from);
    const t = sim.task;
    assert.is(t.assignedTo, null);
    assert.is(t.assignedAt, null);
    assert.is(t.acceptedAt, null);
    assert.is(t.startedAt, null);
    assert.is(t.leaseExpiresAt, null);
    assert.is(t.offerExpiresAt, null);
    assert.equal(t.releasedBy, { agentId: 'ann', why: 'lease_expired' });
    assert.equal(t.rejections, [{ by: 'ann', reason: 'lease of 30 s expired without renewal', at: iso(fireAt), round: 0 }]);
    assert.is(t.updatedAt, iso(fireAt));
    sim.refuse({ type: 'timer.fired', name: 'lease', fireAt }, { at: fireAt + 1, by: 'system' });
  }
});

test('with autoAssign, a lapsed lease asks for the next agent at the firing time; the rejection counts in the current round', () => {
  const sim = fresh({ autoAssign: true, leaseSeconds: 30 });
  sim.send({ type: 'task.awaitAgent', reason: 'no agent online', retryAt: T0 + 10_000 }, { at: T0 + 1_000, by: 'system' });
  sim.send({ type: 'task.assign', agentId: 'ann', kind: 'automatic' }, { at: T0 + 10_000, by: 'system' });
  sim.send({ type: 'task.accept' }, { at: T0 + 11_000, by: 'ann' });
  sim.send({ type: 'task.start' }, { at: T0 + 12_000, by: 'ann' });
  assert.is(sim.timers.lease, T0 + 41_000);
  const effects = sim.fire('lease');
  assert.is(sim.status, 'pending');
  assert.equal(effects, [sched('assign', T0 + 41_000)]);
  assert.equal(sim.timers, { assign: T0 + 41_000 });
  assert.equal(sim.task.rejections, [{ by: 'ann', reason: 'lease of 30 s expired without renewal', at: iso(T0 + 41_000), round: 1 }]);
  // The next holder's link names the agent that lost the lease.
  assert.equal(sim.send({ type: 'task.assign', agentId: 'bob', reason: 'next in line', kind: 'failover' }, { at: T0 + 42_000, by: 'system' }), [cancel('assign')]);
  assert.equal(lastLink(sim), { from: 'ann', to: 'bob', reason: 'next in line', kind: 'failover', at: iso(T0 + 42_000) });
});

test('a lapsed lease under onLeaseExpired fail fails the attempt and schedules the retry while retries remain', () => {
  for (const from of HOLDING) {
    const sim = reach(from, { leaseSeconds: 30, onLeaseExpired: 'fail' });
    const fireAt = sim.timers.lease!;
    const effects = sim.fire('lease');
    assert.is(sim.status, 'failed', from);
    assert.is(sim.task.error, 'The agent ann stopped renewing its lease of 30 s.');
    assert.equal(effects, [...(from === 'accepted' ? [] : [cancel('timeout')]), sched('retry', fireAt + 100)], from);
    assert.equal(sim.timers, { deadline: T0 + HOUR, retry: fireAt + 100 });
    assert.is(sim.task.retryAt, iso(fireAt + 100));
    assert.is(sim.task.leaseExpiresAt, null);
    assert.is(sim.task.completedAt, iso(fireAt));
    assert.is(sim.task.inputRequest, null);
  }
});

test('a lapsed lease under onLeaseExpired fail with no retries left fails for good and cancels every timer', () => {
  for (const from of HOLDING) {
    const sim = reach(from, { leaseSeconds: 30, onLeaseExpired: 'fail', maxRetries: 0 });
    const effects = sim.fire('lease');
    assert.is(sim.status, 'failed', from);
    assert.equal(effects, [from === 'accepted' ? cancel('deadline') : cancel('deadline', 'timeout')], from);
    assert.equal(sim.timers, {});
    assert.is(sim.task.retryAt, null);
    sim.send({ type: 'task.archive' });
    assert.is(sim.task.archived, true, 'it is finished for good');
  }
});

test('a stale lease timer (another fireAt) changes nothing', () => {
  for (const policy of ['reoffer', 'fail'] as const) {
    const sim = reach('in_progress', { leaseSeconds: 30, onLeaseExpired: policy });
    const fireAt = sim.timers.lease!;
    sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: fireAt - 1 }, { at: fireAt, by: 'system' });
    sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: fireAt + 1 }, { at: fireAt + 1, by: 'system' });
  }
  // The lease of the previous holder is stale once the task was delegated and accepted again.
  const sim = reach('in_progress', { leaseSeconds: 30 });
  const old = sim.timers.lease!;
  sim.send({ type: 'task.delegate', agentId: 'bob' });
  sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: old }, { at: old, by: 'system' });
  sim.send({ type: 'task.accept' }, { by: 'bob' });
  assert.is.not(sim.timers.lease, old);
  sim.refuse({ type: 'timer.fired', name: 'lease', fireAt: old }, { at: old, by: 'system' });
});

// ── Offers ────────────────────────────────────────────────────────────────

test('an assignment with an offer timeout schedules the offer timer; accepting cancels it', () => {
  const sim = fresh({ offerTimeoutSeconds: 20, leaseSeconds: 30 });
  assert.equal(sim.send({ type: 'task.assign', agentId: 'ann' }, { at: T0 + 1_000 }), [sched('offer', T0 + 21_000)]);
  assert.is(sim.task.offerExpiresAt, iso(T0 + 21_000));
  assert.equal(sim.timers, { offer: T0 + 21_000 });
  assert.equal(sim.send({ type: 'task.accept' }, { at: T0 + 5_000, by: 'ann' }), [cancel('offer'), sched('lease', T0 + 35_000)]);
  assert.is(sim.task.offerExpiresAt, null);
  assert.equal(sim.timers, { lease: T0 + 35_000 });
  sim.refuse({ type: 'timer.fired', name: 'offer', fireAt: T0 + 21_000 }, { at: T0 + 21_000, by: 'system' });
});

test('an offer timeout arms the offer for an assignee named at creation', () => {
  const sim = new Sim();
  assert.equal(sim.send(create({ assignTo: 'ann', offerTimeoutSeconds: 20 }), { at: T0 }), [sched('offer', T0 + 20_000), cancel('deadline')]);
  assert.is(sim.task.offerExpiresAt, iso(T0 + 20_000));
  assert.equal(sim.timers, { offer: T0 + 20_000 });
});

test('an offer not accepted in time returns the task to pending with the agent recorded as declining', () => {
  const sim = fresh({ offerTimeoutSeconds: 20 });
  sim.send({ type: 'task.assign', agentId: 'ann' }, { at: T0 + 1_000 });
  const effects = sim.fire('offer');
  assert.is(sim.status, 'pending');
  assert.equal(effects, []);
  assert.equal(sim.timers, {});
  assert.is(sim.task.assignedTo, null);
  assert.is(sim.task.assignedAt, null);
  assert.is(sim.task.offerExpiresAt, null);
  assert.equal(sim.task.releasedBy, { agentId: 'ann', why: 'offer_expired' });
  assert.equal(sim.task.rejections, [{ by: 'ann', reason: 'did not accept within 20 s', at: iso(T0 + 21_000), round: 0 }]);
  // Assigning again re-arms the offer; the link names the agent that let the offer lapse.
  assert.equal(sim.send({ type: 'task.assign', agentId: 'bob' }, { at: T0 + 22_000 }), [sched('offer', T0 + 42_000)]);
  assert.is(sim.task.offerExpiresAt, iso(T0 + 42_000));
  assert.equal(lastLink(sim), { from: 'ann', to: 'bob', reason: 'assigned', kind: 'manual', at: iso(T0 + 22_000) });
});

test('with autoAssign, a lapsed offer asks for the next agent at the firing time', () => {
  const sim = new Sim();
  assert.equal(sim.send(create({ autoAssign: true, offerTimeoutSeconds: 20 }), { at: T0 }), [sched('assign', T0), cancel('deadline')]);
  assert.equal(sim.send({ type: 'task.assign', agentId: 'ann', kind: 'automatic' }, { at: T0 + 1_000, by: 'system' }), [cancel('assign'), sched('offer', T0 + 21_000)]);
  assert.equal(sim.fire('offer'), [sched('assign', T0 + 21_000)]);
  assert.equal(sim.timers, { assign: T0 + 21_000 });
  assert.equal(sim.task.releasedBy, { agentId: 'ann', why: 'offer_expired' });
});

test('reassigning an offered task re-arms the offer and makes the old offer timer stale; rejecting cancels it', () => {
  const sim = fresh({ offerTimeoutSeconds: 20 });
  sim.send({ type: 'task.assign', agentId: 'ann' }, { at: T0 + 1_000 });
  assert.equal(sim.send({ type: 'task.assign', agentId: 'bob', reason: 'ann is away' }, { at: T0 + 5_000 }), [sched('offer', T0 + 25_000)]);
  assert.is(sim.task.offerExpiresAt, iso(T0 + 25_000));
  assert.equal(sim.timers, { offer: T0 + 25_000 });
  sim.refuse({ type: 'timer.fired', name: 'offer', fireAt: T0 + 21_000 }, { at: T0 + 21_000, by: 'system' });
  assert.equal(sim.send({ type: 'task.reject', reason: 'busy' }, { at: T0 + 6_000, by: 'bob' }), [cancel('offer')]);
  assert.is(sim.status, 'pending');
  assert.is(sim.task.offerExpiresAt, null);
  assert.equal(sim.timers, {});
  assert.equal(sim.task.rejections, [{ by: 'bob', reason: 'busy', at: iso(T0 + 6_000), round: 0 }]);
  assert.equal(sim.task.releasedBy, { agentId: 'bob', why: 'rejected' });
});

// ── Auto-assignment ───────────────────────────────────────────────────────

test('an auto-assigned task asks for an agent (assign timer at the event time) when created pending', () => {
  const sim = new Sim();
  assert.equal(sim.send(create({ autoAssign: true, assignmentStrategy: 'least_loaded' }), { at: T0 }), [sched('assign', T0), cancel('deadline')]);
  assert.equal(sim.timers, { assign: T0 });
  assert.is(sim.task.autoAssign, true);
  assert.is(sim.task.assignmentStrategy, 'least_loaded');
  assert.is(sim.task.assignmentRound, 0);
  assert.is(sim.task.waitingForAgent, null);
  const withDeadline = new Sim();
  assert.equal(withDeadline.send(create({ autoAssign: true, deadline: iso(T0 + HOUR) }), { at: T0 }), [sched('assign', T0), sched('deadline', T0 + HOUR)]);
  assert.equal(withDeadline.timers, { assign: T0, deadline: T0 + HOUR });
  // Created with an assignee, it needs no assignment; without autoAssign it never asks.
  assert.equal(new Sim().send(create({ autoAssign: true, assignTo: 'ann' }), { at: T0 }), [cancel('deadline')]);
  assert.equal(new Sim().send(create(), { at: T0 }), [cancel('deadline')]);
});

test('task.assign cancels a pending assign timer and takes its reason and kind from the event', () => {
  const sim = fresh({ autoAssign: true });
  assert.equal(sim.send({ type: 'task.assign', agentId: 'ann', reason: 'round robin', kind: 'automatic' }, { at: T0 + 5, by: 'system' }), [cancel('assign')]);
  assert.equal(sim.timers, {});
  assert.equal(sim.task.delegations, [{ from: null, to: 'ann', reason: 'round robin', kind: 'automatic', at: iso(T0 + 5) }]);
});

test('with autoAssign, a rejection asks for the next agent at once', () => {
  for (const from of ['assigned', 'accepted'] as const) {
    const sim = reach(from, { autoAssign: true, leaseSeconds: 30 });
    const at = sim.at + 1_000;
    const effects = sim.send({ type: 'task.reject', reason: 'busy' }, { at, by: 'ann' });
    assert.equal(effects, from === 'accepted' ? [cancel('lease'), sched('assign', at)] : [sched('assign', at)], from);
    assert.equal(sim.timers, { deadline: T0 + HOUR, assign: at });
    assert.equal(sim.task.releasedBy, { agentId: 'ann', why: 'rejected' });
    assert.is(sim.task.leaseExpiresAt, null);
  }
});

test('with autoAssign, a retry reopening the task asks for an agent at once', () => {
  const sim = reach('failed (retry pending)', { autoAssign: true });
  const fireAt = sim.timers.retry!;
  assert.equal(sim.fire('retry'), [sched('assign', fireAt)]);
  assert.equal(sim.timers, { deadline: T0 + HOUR, assign: fireAt });
  assert.is(sim.task.assignmentRound, 1);
  assert.is(sim.task.waitingForAgent, null);

  const manual = reach('failed (retry pending)', { autoAssign: true });
  const at = manual.at + 1_000;
  assert.equal(manual.send({ type: 'task.retry' }, { at }), [cancel('retry'), sched('assign', at)]);
  assert.equal(manual.timers, { deadline: T0 + HOUR, assign: at });

  // A task that failed for good forgot its timers: the deadline comes back with the assignment.
  const final = reach('failed (final)', { autoAssign: true });
  const at2 = final.at + 1_000;
  assert.equal(final.send({ type: 'task.retry' }, { at: at2 }), [sched('assign', at2), sched('deadline', T0 + HOUR)]);
});

test('task.awaitAgent starts a new assignment round, records the wait (since kept) and retries at retryAt', () => {
  const sim = fresh({ autoAssign: true });
  const effects = sim.send({ type: 'task.awaitAgent', reason: 'no agent online', retryAt: T0 + 30_000 }, { at: T0 + 1_000, by: 'system' });
  assert.is(sim.status, 'pending');
  assert.equal(effects, [sched('assign', T0 + 30_000)]);
  assert.equal(sim.timers, { assign: T0 + 30_000 });
  assert.is(sim.task.assignmentRound, 1);
  assert.equal(sim.task.waitingForAgent, { reason: 'no agent online', since: iso(T0 + 1_000), retryAt: iso(T0 + 30_000) });

  sim.send({ type: 'task.awaitAgent', reason: 'every agent is busy', retryAt: T0 + 90_000 }, { at: T0 + 30_000, by: 'system' });
  assert.equal(sim.effects, [sched('assign', T0 + 90_000)]);
  assert.is(sim.task.assignmentRound, 2);
  assert.equal(sim.task.waitingForAgent, { reason: 'every agent is busy', since: iso(T0 + 1_000), retryAt: iso(T0 + 90_000) });

  // An assignment ends the wait; the round stays.
  assert.equal(sim.send({ type: 'task.assign', agentId: 'ann', reason: 'least loaded', kind: 'automatic' }, { at: T0 + 90_000, by: 'system' }), [cancel('assign')]);
  assert.is(sim.task.waitingForAgent, null);
  assert.is(sim.task.assignmentRound, 2);
  assert.equal(sim.task.delegations, [{ from: null, to: 'ann', reason: 'least loaded', kind: 'automatic', at: iso(T0 + 90_000) }]);
  sim.refuse({ type: 'task.awaitAgent', reason: 'x', retryAt: T0 + HOUR }, { by: 'system' });
});

test('rejections carry the assignment round they happened in, and the next link starts from the agent that released the task', () => {
  const sim = fresh({ autoAssign: true });
  sim.send({ type: 'task.assign', agentId: 'ann', kind: 'automatic' }, { at: T0 + 1_000, by: 'system' });
  assert.equal(sim.send({ type: 'task.reject', reason: 'busy' }, { at: T0 + 2_000, by: 'ann' }), [sched('assign', T0 + 2_000)]);
  sim.send({ type: 'task.awaitAgent', reason: 'only ann is online', retryAt: T0 + 3_500 }, { at: T0 + 3_000, by: 'system' });
  sim.send({ type: 'task.assign', agentId: 'bob', reason: 'came online', kind: 'load_balance' }, { at: T0 + 4_000, by: 'system' });
  sim.send({ type: 'task.reject', reason: 'no time' }, { at: T0 + 5_000, by: 'bob' });
  assert.equal(sim.task.rejections, [
    { by: 'ann', reason: 'busy', at: iso(T0 + 2_000), round: 0 },
    { by: 'bob', reason: 'no time', at: iso(T0 + 5_000), round: 1 },
  ]);
  assert.equal(sim.task.delegations, [
    { from: null, to: 'ann', reason: 'assigned', kind: 'automatic', at: iso(T0 + 1_000) },
    { from: 'ann', to: 'bob', reason: 'came online', kind: 'load_balance', at: iso(T0 + 4_000) },
  ]);
});

test('after a retry reopens a task, the next link does not name an agent that released it before the failed attempt', () => {
  // The same history with and without an early rejection by ann: in both, bob held the task
  // last and failed; the link to cy must not claim the task came from ann.
  const history = (rejectFirst: boolean): Sim => {
    const sim = fresh({ maxRetries: 1, retryBackoffMs: 100 });
    if (rejectFirst) {
      sim.send({ type: 'task.assign', agentId: 'ann' });
      sim.send({ type: 'task.reject', reason: 'busy' }, { by: 'ann' });
    }
    sim.send({ type: 'task.assign', agentId: 'bob' });
    sim.send({ type: 'task.accept' }, { by: 'bob' });
    sim.send({ type: 'task.start' }, { by: 'bob' });
    sim.send({ type: 'task.fail', error: 'crashed' }, { by: 'bob' });
    sim.fire('retry');
    sim.send({ type: 'task.assign', agentId: 'cy' });
    return sim;
  };
  assert.is(lastLink(history(false))!.from, null);
  assert.is(lastLink(history(true))!.from, null, 'the link after the retry names ann, who gave the task up before bob held it');
});

// ── Delegation ────────────────────────────────────────────────────────────

test('task.delegate hands the task to a new agent from assigned, accepted, in_progress and input_required', () => {
  for (const from of ['assigned', ...HOLDING] as const) {
    const sim = reach(from, { leaseSeconds: 30, offerTimeoutSeconds: 20 });
    const before = Object.keys(sim.timers);
    const at = sim.at + 1_000;
    const effects = sim.send({ type: 'task.delegate', agentId: 'bob', reason: 'ann is overloaded', kind: 'load_balance' }, { at });
    assert.is(sim.status, 'assigned', from);
    // Lease and attempt timeout go; the offer is armed anew for bob.
    const cancelled = ['lease', 'timeout'].filter((n) => before.includes(n));
    assert.equal(effects, [...(cancelled.length > 0 ? [cancel(...cancelled)] : []), sched('offer', at + 20_000)], from);
    assert.equal(sim.timers, { deadline: T0 + HOUR, offer: at + 20_000 }, from);
    const t = sim.task;
    assert.is(t.assignedTo, 'bob');
    assert.is(t.assignedAt, iso(at));
    assert.is(t.acceptedAt, null);
    assert.is(t.startedAt, null);
    assert.is(t.leaseExpiresAt, null);
    assert.is(t.offerExpiresAt, iso(at + 20_000));
    assert.equal(t.delegations, [
      { from: null, to: 'ann', reason: 'assigned', kind: 'manual', at: t.delegations[0]!.at },
      { from: 'ann', to: 'bob', reason: 'ann is overloaded', kind: 'load_balance', at: iso(at) },
    ]);
  }
});

test('task.delegate without an offer timeout arms nothing, and defaults to reason delegated and kind manual', () => {
  for (const from of HOLDING) {
    const sim = reach(from, { leaseSeconds: 30 });
    const effects = sim.send({ type: 'task.delegate', agentId: 'cy' });
    assert.equal(effects, [from === 'accepted' ? cancel('lease') : cancel('lease', 'timeout')], from);
    assert.equal(sim.timers, { deadline: T0 + HOUR });
    assert.is(sim.task.offerExpiresAt, null);
    assert.equal(lastLink(sim), { from: 'ann', to: 'cy', reason: 'delegated', kind: 'manual', at: iso(sim.at) });
    // cy is now offered the task like any assignee.
    sim.send({ type: 'task.accept' }, { by: 'cy' });
    assert.is(sim.timers.lease, sim.at + 30_000);
  }
});

test('task.delegate is refused while pending, failed or finished', () => {
  const body: TaskEventBody = { type: 'task.delegate', agentId: 'bob', reason: 'x', kind: 'manual' };
  for (const from of ['pending', 'failed (retry pending)', 'failed (final)', 'completed', 'cancelled', 'timed_out'] as Reachable[]) {
    reach(from).refuse(body);
  }
});

// ── Staged tasks ──────────────────────────────────────────────────────────

test('a staged task rests in staged with no effects and accepts only activate, cancel and delete', () => {
  const sim = new Sim();
  const effects = sim.send(create({ staged: true, autoAssign: true, deadline: iso(T0 + HOUR) }), { at: T0 });
  assert.is(sim.status, 'staged');
  assert.equal(effects, []);
  assert.equal(sim.timers, {});
  assert.is(sim.snapshot.context.stagedAssignee, null);
  for (const body of ALL_EVENTS) if (body.type !== 'task.cancel' && body.type !== 'task.delete') sim.refuse(body);
  sim.refuse({ type: 'task.awaitAgent', reason: 'x', retryAt: T0 });
  sim.refuse({ type: 'task.delegate', agentId: 'bob' });
});

test('activating a staged task makes it pending, asking for an agent when auto-assigned, and arms its deadline', () => {
  const plain = new Sim();
  plain.send(create({ staged: true }), { at: T0 });
  assert.equal(plain.send({ type: 'task.activate' }, { at: T0 + 1_000 }), [cancel('deadline')]);
  assert.is(plain.status, 'pending');
  assert.is(plain.task.updatedAt, iso(T0 + 1_000));

  const auto = new Sim();
  auto.send(create({ staged: true, autoAssign: true, deadline: iso(T0 + HOUR) }), { at: T0 });
  assert.equal(auto.send({ type: 'task.activate' }, { at: T0 + 1_000 }), [sched('assign', T0 + 1_000), sched('deadline', T0 + HOUR)]);
  assert.is(auto.status, 'pending');
  assert.equal(auto.timers, { assign: T0 + 1_000, deadline: T0 + HOUR });
});

test('activating a staged task created with assignTo assigns it at activation', () => {
  const sim = new Sim();
  sim.send(create({ staged: true, assignTo: 'ann', offerTimeoutSeconds: 20 }), { at: T0 });
  assert.is(sim.status, 'staged');
  assert.is(sim.task.assignedTo, null, 'not assigned while staged');
  assert.is(sim.snapshot.context.stagedAssignee, 'ann');
  assert.equal(sim.send({ type: 'task.activate' }, { at: T0 + 1_000 }), [sched('offer', T0 + 21_000), cancel('deadline')]);
  assert.is(sim.status, 'assigned');
  assert.is(sim.task.assignedTo, 'ann');
  assert.is(sim.task.assignedAt, iso(T0 + 1_000));
  assert.equal(sim.task.delegations, [{ from: null, to: 'ann', reason: 'assigned at creation', kind: 'manual', at: iso(T0 + 1_000) }]);
});

test('activation forgets the staged assignee, as the activate action means to', () => {
  for (const assignTo of ['ann', undefined]) {
    const sim = new Sim();
    sim.send(create({ staged: true, ...(assignTo ? { assignTo } : {}) }), { at: T0 });
    sim.send({ type: 'task.activate' }, { at: T0 + 1_000 });
    assert.is(sim.snapshot.context.stagedAssignee, null, `stagedAssignee is still ${JSON.stringify(sim.snapshot.context.stagedAssignee)} after activation`);
  }
});

test('task.activate with an input puts it in parameters.input, keeping the other parameters', () => {
  const sim = new Sim();
  sim.send(create({ staged: true, parameters: { lang: 'en' } }), { at: T0 });
  sim.send({ type: 'task.activate', input: [{ subtaskId: 'm1', result: 1 }] }, { at: T0 + 1_000 });
  assert.equal(sim.task.parameters, { lang: 'en', input: [{ subtaskId: 'm1', result: 1 }] });
  const nullInput = new Sim();
  nullInput.send(create({ staged: true, parameters: { lang: 'en' } }), { at: T0 });
  nullInput.send({ type: 'task.activate', input: null }, { at: T0 + 1_000 });
  assert.equal(nullInput.task.parameters, { lang: 'en', input: null }, 'a null input is an input');
});

test('a staged task can be cancelled or deleted', () => {
  const sim = new Sim();
  sim.send(create({ staged: true }), { at: T0 });
  assert.equal(sim.send({ type: 'task.cancel', reason: 'plan changed' }, { at: T0 + 1_000 }), []);
  assert.is(sim.status, 'cancelled');
  assert.is(sim.task.error, 'plan changed');
  assert.is(sim.task.completedAt, iso(T0 + 1_000));

  const gone = new Sim();
  gone.send(create({ staged: true }), { at: T0 });
  assert.equal(gone.send({ type: 'task.delete' }, { at: T0 + 1_000 }), []);
  assert.is(gone.status, 'deleted');
  assert.is(gone.snapshot.status, 'done');
});

// ── Distributed parents ───────────────────────────────────────────────────

function slot(id: string): SubtaskSlot {
  return { id, status: 'waiting', result: null, error: null, agent: null, settledOrder: null };
}

function dist(coordination: Coordination, mode: CompletionMode, ids: string[], opts: { threshold?: number | null; aggregation?: Aggregation } = {}): Distribution {
  return { coordination, completion: { mode, threshold: opts.threshold ?? null }, aggregation: opts.aggregation ?? 'combine_results', subtasks: ids.map(slot) };
}

const ABC = ['a', 'b', 'c'];

/** A staged parent (itself a subtask of `root`) with a deadline, created at T0. */
function stagedParent(d: Distribution): Sim {
  const sim = new Sim();
  sim.send(create({ staged: true, distribution: d, parentTaskId: 'root', deadline: iso(T0 + HOUR) }), { at: T0 });
  return sim;
}

/** A parent activated at T0 + 1 s; the clock then moves 1 s per event. */
function runningParent(d: Distribution): Sim {
  const sim = stagedParent(d);
  sim.send({ type: 'task.activate' }, { at: T0 + 1_000 });
  return sim;
}

type Outcome = 'completed' | 'failed' | 'cancelled' | 'timed_out';
const done = (subtaskId: string, result: unknown, agent: string | null = null): TaskEventBody => ({ type: 'task.subtaskSettled', subtaskId, status: 'completed', result, error: null, agent });
const broke = (subtaskId: string, status: Outcome = 'failed', error: string | null = null): TaskEventBody => ({ type: 'task.subtaskSettled', subtaskId, status, result: null, error, agent: null });

test('activating a staged distributed parent starts it (in_progress) and activates its first subtasks', () => {
  const cases: [Coordination, string[]][] = [
    ['parallel', ['a', 'b', 'c']],
    ['map_reduce', ['a', 'b']],
    ['sequential', ['a']],
    ['pipeline', ['a']],
  ];
  for (const [coordination, first] of cases) {
    const sim = stagedParent(dist(coordination, 'all', ABC));
    assert.is(sim.status, 'staged');
    assert.equal(sim.effects, []);
    const effects = sim.send({ type: 'task.activate' }, { at: T0 + 1_000 });
    assert.is(sim.status, 'in_progress', coordination);
    assert.equal(effects, [...first.map((id) => activateFx(id)), sched('deadline', T0 + HOUR)], coordination);
    assert.is(sim.task.startedAt, iso(T0 + 1_000));
    assert.equal(
      sim.task.distribution!.subtasks,
      ABC.map((id) => ({ ...slot(id), status: first.includes(id) ? 'active' : 'waiting' })),
      coordination,
    );
    assert.equal(sim.timers, { deadline: T0 + HOUR });
  }
});

test('completion all: the parent completes when every subtask succeeded, combining results in subtask order', () => {
  const sim = runningParent(dist('parallel', 'all', ABC));
  assert.equal(sim.send(done('b', { n: 2 }, 'bob')), []);
  assert.is(sim.status, 'in_progress');
  assert.equal(sim.task.distribution!.subtasks[1], { id: 'b', status: 'completed', result: { n: 2 }, error: null, agent: 'bob', settledOrder: 1 });
  assert.equal(sim.send(done('c', { n: 3 }, 'cy')), []);
  const effects = sim.send(done('a', { n: 1 }, 'ann'));
  assert.is(sim.status, 'completed');
  const result = [
    { subtaskId: 'a', agent: 'ann', result: { n: 1 } },
    { subtaskId: 'b', agent: 'bob', result: { n: 2 } },
    { subtaskId: 'c', agent: 'cy', result: { n: 3 } },
  ];
  assert.equal(sim.task.result, result);
  assert.is(sim.task.error, null);
  assert.is(sim.task.completedAt, iso(sim.at));
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result })]);
  assert.equal(sim.timers, {});
});

test('completion all: the first failure fails the parent and cancels the unsettled subtasks; late reports are ignored', () => {
  const sim = runningParent(dist('parallel', 'all', ABC));
  sim.send(done('a', 1));
  const effects = sim.send(broke('b', 'failed', 'boom'));
  assert.is(sim.status, 'failed');
  const error = '1 of 3 subtasks succeeded but 3 must (completion: all); b failed (boom).';
  assert.is(sim.task.error, error);
  assert.is(sim.task.retryAt, null);
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'failed', error }), cancelFx('c', 'the parent task failed')]);
  sim.refuse(broke('c', 'cancelled', 'the parent task failed'));
  sim.refuse(done('c', 3));
});

test('completion any with first_complete: the first success completes the parent with that result', () => {
  const sim = runningParent(dist('parallel', 'any', ABC, { aggregation: 'first_complete' }));
  assert.equal(sim.send(broke('a', 'timed_out')), []);
  const effects = sim.send(done('c', 'C', 'cy'));
  assert.is(sim.status, 'completed');
  const result = { subtaskId: 'c', agent: 'cy', result: 'C' };
  assert.equal(sim.task.result, result);
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result }), cancelFx('b', 'the parent task was completed')]);
  sim.refuse(done('b', 'B', 'bob'));
});

test('completion majority: two of three complete the parent; two failures of three fail it', () => {
  const win = runningParent(dist('parallel', 'majority', ABC));
  assert.equal(win.send(done('a', 1)), []);
  const effects = win.send(done('b', 2));
  assert.is(win.status, 'completed');
  const result = [
    { subtaskId: 'a', agent: null, result: 1 },
    { subtaskId: 'b', agent: null, result: 2 },
  ];
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result }), cancelFx('c', 'the parent task was completed')]);

  const lose = runningParent(dist('parallel', 'majority', ['a', 'b', 'c', 'd']));
  lose.send(done('a', 1));
  assert.equal(lose.send(broke('b')), [], 'three of four can still succeed');
  const lost = lose.send(broke('c', 'cancelled'));
  assert.is(lose.status, 'failed');
  const error = '1 of 4 subtasks succeeded but 3 must (completion: majority); b failed; c cancelled.';
  assert.equal(lost, [cancel('deadline'), notice('root', { status: 'failed', error }), cancelFx('d', 'the parent task failed')]);
});

test('completion threshold: the parent completes at the threshold and fails once it is out of reach', () => {
  const sim = runningParent(dist('parallel', 'threshold', ['a', 'b', 'c', 'd'], { threshold: 2 }));
  assert.equal(sim.send(broke('a')), []);
  assert.equal(sim.send(broke('b')), [], 'two of the remaining two can still succeed');
  assert.equal(sim.send(done('c', 'C')), []);
  const effects = sim.send(done('d', 'D'));
  assert.is(sim.status, 'completed');
  const result = [
    { subtaskId: 'c', agent: null, result: 'C' },
    { subtaskId: 'd', agent: null, result: 'D' },
  ];
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result })]);

  const three = runningParent(dist('parallel', 'threshold', ['a', 'b', 'c', 'd'], { threshold: 3 }));
  three.send(broke('a'));
  const effects2 = three.send(broke('b', 'timed_out'));
  assert.is(three.status, 'failed');
  const error = '0 of 4 subtasks succeeded but 3 must (completion: threshold); a failed; b timed_out.';
  assert.equal(effects2, [
    cancel('deadline'),
    notice('root', { status: 'failed', error }),
    cancelFx('c', 'the parent task failed'),
    cancelFx('d', 'the parent task failed'),
  ]);
});

test('completion best_of: the parent waits for every subtask and picks the highest numeric score', () => {
  const sim = runningParent(dist('parallel', 'best_of', ABC));
  assert.equal(sim.send(done('a', { score: 0.2, text: 'A' }, 'ann')), []);
  assert.equal(sim.send(done('b', { score: 0.7, text: 'B' }, 'bob')), [], 'best_of waits for everyone');
  assert.is(sim.status, 'in_progress');
  const effects = sim.send(broke('c'));
  assert.is(sim.status, 'completed');
  const result = { subtaskId: 'b', agent: 'bob', result: { score: 0.7, text: 'B' }, score: 0.7 };
  assert.equal(sim.task.result, result);
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result })]);
});

test('majority_vote aggregation: equal results (whatever their key order) vote together', () => {
  const sim = runningParent(dist('parallel', 'all', ABC, { aggregation: 'majority_vote' }));
  sim.send(done('a', { answer: 'yes', n: 1 }));
  sim.send(done('b', { answer: 'no' }));
  sim.send(done('c', { n: 1, answer: 'yes' }));
  assert.is(sim.status, 'completed');
  assert.equal(sim.task.result, { value: { answer: 'yes', n: 1 }, votes: 2, of: 3 });

  const tie = runningParent(dist('parallel', 'all', ['a', 'b'], { aggregation: 'majority_vote' }));
  tie.send(done('b', 'B'));
  tie.send(done('a', 'A'));
  assert.equal(tie.task.result, { value: 'B', votes: 1, of: 2 }, 'a tie goes to the value that arrived first');
});

test('sequential: each success activates the next subtask, without input', () => {
  const sim = runningParent(dist('sequential', 'all', ABC));
  assert.equal(sim.send(done('a', 1)), [activateFx('b')]);
  assert.equal(sim.task.distribution!.subtasks.map((s) => s.status), ['completed', 'active', 'waiting']);
  assert.equal(sim.send(done('b', 2)), [activateFx('c')]);
  sim.send(done('c', 3));
  assert.is(sim.status, 'completed');
});

test('pipeline: each stage is activated with the previous stage result as input; a failure stops it', () => {
  const sim = runningParent(dist('pipeline', 'all', ABC));
  assert.equal(sim.send(done('a', { text: 'draft' }, 'ann')), [activateFx('b', { text: 'draft' })]);
  assert.equal(sim.send(done('b', { text: 'edited' }, 'bob')), [activateFx('c', { text: 'edited' })]);
  const effects = sim.send(done('c', { text: 'final' }, 'cy'));
  assert.is(sim.status, 'completed');
  const result = [
    { subtaskId: 'a', agent: 'ann', result: { text: 'draft' } },
    { subtaskId: 'b', agent: 'bob', result: { text: 'edited' } },
    { subtaskId: 'c', agent: 'cy', result: { text: 'final' } },
  ];
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'completed', result })]);

  const broken = runningParent(dist('pipeline', 'all', ABC));
  broken.send(done('a', 'A'));
  const failed = broken.send(broke('b', 'failed', 'bad input'));
  assert.is(broken.status, 'failed');
  const error = '1 of 3 subtasks succeeded but 3 must (completion: all); b failed (bad input).';
  assert.equal(failed, [cancel('deadline'), notice('root', { status: 'failed', error }), cancelFx('c', 'the parent task failed')]);
});

test('map_reduce: the reducer starts with the successful mapper results once the mappers satisfy the rule, and decides the parent', () => {
  const sim = runningParent(dist('map_reduce', 'majority', ['m1', 'm2', 'm3', 'r']));
  assert.equal(sim.send(done('m2', 'two')), []);
  const effects = sim.send(done('m1', 'one'));
  assert.is(sim.status, 'in_progress');
  assert.equal(effects, [
    activateFx('r', [
      { subtaskId: 'm1', result: 'one' },
      { subtaskId: 'm2', result: 'two' },
    ]),
    cancelFx('m3', 'no longer needed'),
  ]);
  assert.equal(sim.task.distribution!.subtasks.map((s) => s.status), ['completed', 'completed', 'active', 'active']);
  assert.equal(sim.send(broke('m3', 'cancelled', 'no longer needed')), [], 'the cancelled mapper reports back; nothing follows');
  const final = sim.send(done('r', { total: 2 }, 'ann'));
  assert.is(sim.status, 'completed');
  assert.equal(sim.task.result, { total: 2 });
  assert.equal(final, [cancel('deadline'), notice('root', { status: 'completed', result: { total: 2 } })]);
});

test('map_reduce: a failing reducer fails the parent; mappers that cannot satisfy the rule fail it and cancel the reducer', () => {
  const sim = runningParent(dist('map_reduce', 'all', ['m1', 'm2', 'r']));
  sim.send(done('m1', 1));
  assert.equal(sim.send(done('m2', 2)), [
    activateFx('r', [
      { subtaskId: 'm1', result: 1 },
      { subtaskId: 'm2', result: 2 },
    ]),
  ]);
  const effects = sim.send(broke('r', 'failed', 'oom'));
  assert.is(sim.status, 'failed');
  assert.equal(effects, [cancel('deadline'), notice('root', { status: 'failed', error: 'The reduce subtask r failed: oom.' })]);

  const early = runningParent(dist('map_reduce', 'all', ['m1', 'm2', 'r']));
  const failed = early.send(broke('m2', 'timed_out'));
  assert.is(early.status, 'failed');
  const error = '0 of 2 subtasks succeeded but 2 must (completion: all); m2 timed_out.';
  assert.equal(failed, [
    cancel('deadline'),
    notice('root', { status: 'failed', error }),
    cancelFx('m1', 'the parent task failed'),
    cancelFx('r', 'the parent task failed'),
  ]);
});

test('duplicate and unknown subtask reports are refused (the runtime consumes them) and leave the parent untouched', () => {
  const sim = runningParent(dist('parallel', 'all', ABC));
  sim.send(done('a', 1, 'ann'));
  const d = sim.task.distribution;
  const updatedAt = sim.task.updatedAt;
  sim.refuse(done('a', 99, 'bob'));
  sim.refuse(broke('a', 'failed', 'late'));
  sim.refuse(done('zz', 1));
  assert.is(sim.status, 'in_progress');
  assert.equal(sim.task.distribution, d);
  assert.is(sim.task.updatedAt, updatedAt);
});

test('a parent that decided ignores late reports: no transition (the runtime consumes the message), no change, no effect', () => {
  const completed = runningParent(dist('parallel', 'any', ABC));
  completed.send(done('a', 1));
  assert.is(completed.status, 'completed');
  completed.refuse(broke('b', 'cancelled'));
  completed.refuse(done('c', 3));
  const failed = runningParent(dist('parallel', 'all', ABC));
  failed.send(broke('a'));
  assert.is(failed.status, 'failed');
  failed.refuse(done('b', 2));
  const cancelled = runningParent(dist('parallel', 'all', ABC));
  cancelled.send({ type: 'task.cancel' });
  cancelled.refuse(broke('a', 'cancelled'));
  const timedOut = runningParent(dist('parallel', 'all', ABC));
  timedOut.fire('deadline');
  timedOut.refuse(broke('a', 'cancelled'));
  const archived = runningParent(dist('parallel', 'any', ABC));
  archived.send(done('a', 1));
  archived.send({ type: 'task.archive' });
  archived.refuse(done('b', 2));
});

test('cancelling a parent cancels its unsettled subtasks (waiting ones too) and tells its own parent', () => {
  const sim = runningParent(dist('parallel', 'all', ABC));
  sim.send(done('a', 1));
  const effects = sim.send({ type: 'task.cancel', reason: 'stop' });
  assert.is(sim.status, 'cancelled');
  assert.equal(effects, [
    cancel('deadline'),
    notice('root', { status: 'cancelled', error: 'stop' }),
    cancelFx('b', 'the parent task was cancelled'),
    cancelFx('c', 'the parent task was cancelled'),
  ]);

  const seq = runningParent(dist('sequential', 'all', ABC));
  assert.equal(sends(seq.send({ type: 'task.cancel', reason: 'stop' })), [
    notice('root', { status: 'cancelled', error: 'stop' }),
    cancelFx('a', 'the parent task was cancelled'),
    cancelFx('b', 'the parent task was cancelled'),
    cancelFx('c', 'the parent task was cancelled'),
  ]);

  const staged = stagedParent(dist('parallel', 'all', ['a', 'b']));
  assert.equal(staged.send({ type: 'task.cancel', reason: 'never mind' }), [
    notice('root', { status: 'cancelled', error: 'never mind' }),
    cancelFx('a', 'the parent task was cancelled'),
    cancelFx('b', 'the parent task was cancelled'),
  ]);
});

test('deleting a parent cancels its unsettled subtasks', () => {
  const sim = runningParent(dist('parallel', 'all', ABC));
  sim.send(done('b', 2));
  const effects = sim.send({ type: 'task.delete' });
  assert.is(sim.status, 'deleted');
  assert.equal(effects, [
    cancel('deadline'),
    notice('root', { status: 'cancelled' }),
    cancelFx('a', 'the parent task was cancelled'),
    cancelFx('c', 'the parent task was cancelled'),
  ]);
});

test('a parent whose deadline passes times out and cancels its unsettled subtasks', () => {
  const sim = runningParent(dist('pipeline', 'all', ABC));
  sim.send(done('a', 'A'));
  const effects = sim.fire('deadline');
  assert.is(sim.status, 'timed_out');
  const error = `The deadline ${iso(T0 + HOUR)} passed.`;
  assert.is(sim.task.error, error);
  assert.equal(sends(effects), [
    notice('root', { status: 'timed_out', error }),
    cancelFx('b', 'the parent task timed out'),
    cancelFx('c', 'the parent task timed out'),
  ]);
  assert.equal(sim.timers, {});
});

// ── Subtask → parent ──────────────────────────────────────────────────────

/** Ways a task settles, each with its timer effects and the report its parent gets (null: no report). */
const SETTLINGS: { name: string; run: (parent?: string) => Sim; timers: (sim: Sim) => Effect[]; report: Parameters<typeof notice>[1] | null }[] = [
  {
    name: 'completes',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.complete', result: { ok: true } }, { by: 'ann' });
      return sim;
    },
    report: { status: 'completed', result: { ok: true }, agent: 'ann' },
  },
  {
    name: 'fails for good',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', { maxRetries: 0, ...(p ? { parentTaskId: p } : {}) });
      sim.send({ type: 'task.fail', error: 'gave up' }, { by: 'ann' });
      return sim;
    },
    report: { status: 'failed', error: 'gave up', agent: 'ann' },
  },
  {
    name: 'fails, not retryable',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.fail', error: 'bad input', retryable: false }, { by: 'ann' });
      return sim;
    },
    report: { status: 'failed', error: 'bad input', agent: 'ann' },
  },
  {
    name: 'fails with a retry pending',
    timers: (sim) => [cancel('timeout'), sched('retry', sim.at + 100)],
    run: (p) => {
      const sim = reach('in_progress', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.fail', error: 'crashed' }, { by: 'ann' });
      return sim;
    },
    report: null,
  },
  {
    name: 'loses its lease for good',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', { maxRetries: 0, leaseSeconds: 30, onLeaseExpired: 'fail', ...(p ? { parentTaskId: p } : {}) });
      sim.fire('lease');
      return sim;
    },
    report: { status: 'failed', error: 'The agent ann stopped renewing its lease of 30 s.', agent: 'ann' },
  },
  {
    name: 'loses its lease (reoffer)',
    timers: () => [cancel('timeout')],
    run: (p) => {
      const sim = reach('in_progress', { leaseSeconds: 30, ...(p ? { parentTaskId: p } : {}) });
      sim.fire('lease');
      return sim;
    },
    report: null,
  },
  {
    name: 'is cancelled while pending',
    timers: () => [cancel('deadline')],
    run: (p) => {
      const sim = reach('pending', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.cancel', reason: 'stop' });
      return sim;
    },
    report: { status: 'cancelled', error: 'stop' },
  },
  {
    name: 'is cancelled while waiting for a retry',
    timers: () => [cancel('deadline', 'retry')],
    run: (p) => {
      const sim = reach('failed (retry pending)', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.cancel', reason: 'stop' });
      return sim;
    },
    report: { status: 'cancelled', error: 'stop', agent: 'ann' },
  },
  {
    name: 'is cancelled while staged',
    timers: () => [],
    run: (p) => {
      const sim = new Sim();
      sim.send(create({ staged: true, ...(p ? { parentTaskId: p } : {}) }), { at: T0 });
      sim.send({ type: 'task.cancel', reason: 'parent cancelled' });
      return sim;
    },
    report: { status: 'cancelled', error: 'parent cancelled' },
  },
  {
    name: 'passes its deadline',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', p ? { parentTaskId: p } : {});
      sim.fire('deadline');
      return sim;
    },
    report: { status: 'timed_out', error: `The deadline ${iso(T0 + HOUR)} passed.`, agent: 'ann' },
  },
  {
    name: 'runs out of time on its last attempt',
    timers: () => [cancel('deadline')],
    run: (p) => {
      const sim = reach('in_progress', { maxRetries: 0, ...(p ? { parentTaskId: p } : {}) });
      sim.fire('timeout');
      return sim;
    },
    report: { status: 'timed_out', error: 'The attempt did not finish within 60 s.', agent: 'ann' },
  },
  {
    name: 'is deleted while in progress',
    timers: () => [cancel('deadline', 'timeout')],
    run: (p) => {
      const sim = reach('in_progress', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.delete' });
      return sim;
    },
    report: { status: 'cancelled', agent: 'ann' },
  },
  {
    name: 'is deleted while waiting for a retry',
    timers: () => [cancel('deadline', 'retry')],
    run: (p) => {
      const sim = reach('failed (retry pending)', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.delete' });
      return sim;
    },
    report: { status: 'cancelled', error: 'crashed', agent: 'ann' },
  },
  {
    name: 'is rejected',
    timers: () => [],
    run: (p) => {
      const sim = reach('accepted', p ? { parentTaskId: p } : {});
      sim.send({ type: 'task.reject', reason: 'busy' }, { by: 'ann' });
      return sim;
    },
    report: null,
  },
];

test('a subtask reports to its parent when it completes, fails for good, is cancelled, times out or is deleted', () => {
  for (const s of SETTLINGS) {
    const sim = s.run('p');
    // The report comes last, after the timer effects.
    assert.equal(sim.effects, s.report ? [...s.timers(sim), notice('p', s.report)] : s.timers(sim), s.name);
  }
});

test('a task without a parent sends nothing when it settles', () => {
  for (const s of SETTLINGS) {
    const sim = s.run();
    assert.equal(sim.effects, s.timers(sim), s.name);
  }
});

test('a staged subtask that is deleted reports to its parent as cancelled, like a live one', () => {
  const sim = new Sim();
  sim.send(create({ staged: true, parentTaskId: 'p' }), { at: T0 });
  const effects = sim.send({ type: 'task.delete' });
  assert.is(sim.status, 'deleted');
  assert.equal(effects, [notice('p', { status: 'cancelled' })]);
});

test('a sequential parent never runs two subtasks at once, even when a waiting subtask is cancelled on its own', () => {
  // b (still staged) is cancelled directly and reports to the parent while a is running.
  const sim = runningParent(dist('sequential', 'majority', ABC));
  assert.equal(sim.send(broke('b', 'cancelled', 'not needed')), [], 'a is still running: nothing new starts');
  assert.equal(sim.task.distribution!.subtasks.map((s) => s.status), ['active', 'cancelled', 'waiting']);
});

// ── Property: interleavings of subtask outcomes ───────────────────────────

test('property: any interleaving of subtask reports decides at most once, activates no subtask twice and always decides in the end', () => {
  const coordinations: Coordination[] = ['parallel', 'sequential', 'pipeline', 'map_reduce'];
  const modes: CompletionMode[] = ['all', 'any', 'majority', 'threshold', 'best_of'];
  const aggregations: Aggregation[] = ['combine_results', 'first_complete', 'majority_vote'];
  const outcomes: Outcome[] = ['completed', 'failed', 'cancelled', 'timed_out'];
  const seed = Number(process.env.FC_SEED ?? 20250101);
  fc.assert(
    fc.property(
      fc.record({
        coordination: fc.constantFrom(...coordinations),
        mode: fc.constantFrom(...modes),
        threshold: fc.option(fc.integer({ min: -1, max: 7 }), { nil: null }),
        aggregation: fc.constantFrom(...aggregations),
        n: fc.integer({ min: 2, max: 6 }),
        // kind 0-5: a started (or cancelled) subtask reports; 6: a duplicate report; 7: an unknown
        // subtask reports; 8-9: a subtask not started yet is cancelled on its own and reports.
        steps: fc.array(fc.record({ kind: fc.nat(9), pick: fc.nat(), status: fc.constantFrom(...outcomes), value: fc.nat(3) }), { maxLength: 30 }),
        drain: fc.constantFrom(...outcomes),
      }),
      (p) => {
        const ids = Array.from({ length: p.n }, (_, i) => `s${i}`);
        const sim = stagedParent(dist(p.coordination, p.mode, ids, { threshold: p.threshold, aggregation: p.aggregation }));
        const activated = new Set<string>();
        const cancelled = new Set<string>();
        const reported = new Set<string>();
        let decisions = 0;
        const observe = (effects: Effect[]) => {
          const out = sends(effects) as Extract<Effect, { type: 'fx.send' }>[];
          for (const e of out) {
            if (e.event.type === 'task.activate') {
              assert.not.ok(activated.has(e.id), `${e.id} activated twice`);
              assert.not.ok(reported.has(e.id), `${e.id} activated after it settled`);
              activated.add(e.id);
            } else if (e.event.type === 'task.cancel') cancelled.add(e.id);
          }
          if (out.some((e) => e.id === 'root')) {
            decisions++;
            assert.ok(['completed', 'failed'].includes(sim.status), `reported to root while ${sim.status}`);
            // Nothing is left running once the parent decided.
            for (const id of ids) if (!reported.has(id)) assert.ok(cancelled.has(id), `${id} left running after the decision`);
          }
          assert.ok(decisions <= 1, 'the parent decided more than once');
        };
        /** Delivers a report as the runtime does: taken if the machine accepts it, else consumed (and it must change nothing). */
        const deliver = (body: TaskEventBody) => {
          if (sim.snapshot.can(sim.event(body))) observe(sim.send(body));
          else sim.refuse(body);
        };
        const report = (id: string, status: Outcome, value: number) => {
          const before = sim.task.distribution!.subtasks.find((s) => s.id === id);
          const again = reported.has(id);
          reported.add(id);
          deliver({
            type: 'task.subtaskSettled',
            subtaskId: id,
            status,
            result: status === 'completed' ? { score: value, v: value % 2 } : null,
            error: status === 'completed' ? null : `${id} ${status}`,
            agent: `agent-${id}`,
          });
          if (again) assert.equal(sim.task.distribution!.subtasks.find((s) => s.id === id), before, `a second report of ${id} changed it`);
        };
        observe(sim.send({ type: 'task.activate' }, { at: T0 + 1_000 }));
        const outstanding = () => ids.filter((id) => (activated.has(id) || cancelled.has(id)) && !reported.has(id));
        for (const step of p.steps) {
          if (step.kind <= 5) {
            const open = outstanding();
            if (open.length === 0) continue;
            const id = open[step.pick % open.length]!;
            // A subtask the parent cancelled usually reports cancelled, but may have settled first.
            report(id, cancelled.has(id) && step.pick % 2 === 1 ? 'cancelled' : step.status, step.value);
          } else if (step.kind === 6) {
            const seen = [...reported];
            if (seen.length > 0) report(seen[step.pick % seen.length]!, step.status, step.value);
          } else if (step.kind === 7) {
            deliver({ type: 'task.subtaskSettled', subtaskId: 'nobody', status: step.status, result: null, error: null, agent: null });
          } else {
            const waiting = ids.filter((id) => !activated.has(id) && !cancelled.has(id) && !reported.has(id));
            if (waiting.length > 0) report(waiting[step.pick % waiting.length]!, 'cancelled', 0);
          }
        }
        // Every started or cancelled subtask eventually reports: by then the parent has decided.
        for (let open = outstanding(); open.length > 0; open = outstanding()) for (const id of open) report(id, cancelled.has(id) ? 'cancelled' : p.drain, 1);
        assert.is(decisions, 1, `the parent never decided: ${JSON.stringify(sim.task.distribution)}`);
      },
    ),
    { seed, numRuns: 500 },
  );
});

test.run();

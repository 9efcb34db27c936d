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
    assert.equal(sim.task.rejections, [{ by: 'ann', reason: 'not my area', at: iso(sim.at) }]);
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
  const effects = sim.send({ type: 'task.retry' });
  assert.is(sim.status, 'pending');
  assert.equal(effects, [
    { type: 'fx.timer.cancel', names: ['retry'] },
    { type: 'fx.timer.schedule', name: 'deadline', fireAt: T0 + HOUR },
  ]);
  assert.is(sim.task.retryCount, 1);
  assert.equal(sim.timers, { deadline: T0 + HOUR });

  const noDeadline = reach('failed (retry pending)', { deadline: undefined });
  assert.equal(noDeadline.send({ type: 'task.retry' }), [
    { type: 'fx.timer.cancel', names: ['retry'] },
    { type: 'fx.timer.cancel', names: ['deadline'] },
  ]);
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
    assert.equal(effects, [{ type: 'fx.timer.cancel', names: ['deadline', 'timeout'] }]);
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
    assert.equal(effects, [{ type: 'fx.timer.cancel', names: expected }], from);
    assert.equal(sim.timers, {});
  }
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

test.run();

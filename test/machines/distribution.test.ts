import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  aggregate,
  canonical,
  initialActivations,
  markActive,
  required,
  settle,
  type Distribution,
  type SubtaskOutcome,
  type SubtaskSlot,
} from '../../machines/distribution.js';
import type { Aggregation, CompletionMode, Coordination } from '../../protocol/model.js';

/** A subtask slot as a parent is created with it. */
function slot(id: string): SubtaskSlot {
  return { id, status: 'waiting', result: null, error: null, agent: null, settledOrder: null };
}

/** A distribution over subtasks `ids` (all waiting). */
function dist(
  coordination: Coordination,
  mode: CompletionMode,
  ids: string[],
  opts: { threshold?: number | null; aggregation?: Aggregation } = {},
): Distribution {
  return {
    coordination,
    completion: { mode, threshold: opts.threshold ?? null },
    aggregation: opts.aggregation ?? 'combine_results',
    subtasks: ids.map(slot),
  };
}

/** `d` with `ids` started, as the parent holds it after activation. */
function started(d: Distribution, ids = initialActivations(d)): Distribution {
  return markActive(d, ids);
}

const ok = (subtaskId: string, result: unknown, agent: string | null = null): SubtaskOutcome => ({ subtaskId, status: 'completed', result, error: null, agent });
const bad = (subtaskId: string, status: SubtaskOutcome['status'] = 'failed', error: string | null = null): SubtaskOutcome => ({ subtaskId, status, result: null, error, agent: null });

/** Settles outcomes in order; returns every step. */
function run(d: Distribution, outcomes: SubtaskOutcome[]): ReturnType<typeof settle>[] {
  const steps: ReturnType<typeof settle>[] = [];
  let cur = d;
  for (const o of outcomes) {
    const s = settle(cur, o);
    steps.push(s);
    cur = s.distribution;
  }
  return steps;
}

/** A settled slot, as `settle` records it. */
function settledSlot(id: string, status: SubtaskSlot['status'], order: number, result: unknown = null, agent: string | null = null, error: string | null = null): SubtaskSlot {
  return { id, status, result, error, agent, settledOrder: order };
}

const ABC = ['a', 'b', 'c'];

const test = suite('distribution');

// ── required ──────────────────────────────────────────────────────────────

test('required: all needs every subtask, any and best_of need one', () => {
  assert.is(required(dist('parallel', 'all', ABC)), 3);
  assert.is(required(dist('parallel', 'any', ABC)), 1);
  assert.is(required(dist('parallel', 'best_of', ABC)), 1);
});

test('required: majority is more than half, so an even split is not enough', () => {
  const ids = (n: number) => Array.from({ length: n }, (_, i) => `s${i}`);
  assert.equal(
    [1, 2, 3, 4, 5, 6].map((n) => required(dist('parallel', 'majority', ids(n)))),
    [1, 2, 2, 3, 3, 4],
  );
});

test('required: threshold is clamped between 1 and the number of subtasks; null means all', () => {
  const t = (threshold: number | null) => required(dist('parallel', 'threshold', ['a', 'b', 'c', 'd'], { threshold }));
  assert.is(t(2), 2);
  assert.is(t(4), 4);
  assert.is(t(9), 4);
  assert.is(t(0), 1);
  assert.is(t(-3), 1);
  assert.is(t(null), 4);
});

test('required: in map_reduce the reducer does not count', () => {
  const ids = ['m1', 'm2', 'm3', 'm4', 'r'];
  assert.is(required(dist('map_reduce', 'all', ids)), 4);
  assert.is(required(dist('map_reduce', 'majority', ids)), 3);
  assert.is(required(dist('map_reduce', 'threshold', ids, { threshold: 10 })), 4);
  assert.is(required(dist('map_reduce', 'any', ids)), 1);
});

// ── initialActivations / markActive ───────────────────────────────────────

test('initialActivations: parallel starts all, map_reduce all but the reducer, sequential and pipeline the first', () => {
  assert.equal(initialActivations(dist('parallel', 'all', ABC)), ['a', 'b', 'c']);
  assert.equal(initialActivations(dist('map_reduce', 'all', ['m1', 'm2', 'r'])), ['m1', 'm2']);
  assert.equal(initialActivations(dist('sequential', 'all', ABC)), ['a']);
  assert.equal(initialActivations(dist('pipeline', 'all', ABC)), ['a']);
  assert.equal(initialActivations(dist('sequential', 'all', [])), []);
  assert.equal(initialActivations(dist('pipeline', 'all', [])), []);
});

test('markActive starts waiting subtasks only and leaves the input untouched', () => {
  const d = dist('parallel', 'all', ABC);
  const a = markActive(d, ['a', 'c', 'zz']);
  assert.equal(
    a.subtasks.map((s) => s.status),
    ['active', 'waiting', 'active'],
  );
  assert.equal(d.subtasks.map((s) => s.status), ['waiting', 'waiting', 'waiting']);
  const settledA = settle(a, ok('a', 1)).distribution;
  assert.is(markActive(settledA, ['a']).subtasks[0]!.status, 'completed', 'a settled subtask is not restarted');
});

// ── settle: bookkeeping ───────────────────────────────────────────────────

test('settle records the outcome with its settle order and keeps the known agent when none is reported', () => {
  const d = started(dist('parallel', 'all', ABC));
  d.subtasks[1] = { ...d.subtasks[1]!, agent: 'bob' };
  const [s1, s2] = run(d, [ok('c', { n: 3 }, 'cy'), { subtaskId: 'b', status: 'completed' }]);
  assert.equal(s1!.distribution.subtasks, [
    { id: 'a', status: 'active', result: null, error: null, agent: null, settledOrder: null },
    { id: 'b', status: 'active', result: null, error: null, agent: 'bob', settledOrder: null },
    settledSlot('c', 'completed', 1, { n: 3 }, 'cy'),
  ]);
  assert.equal(s1!.verdict, 'continue');
  assert.equal(s1!.activate, []);
  assert.equal(s1!.cancel, []);
  assert.equal(s2!.distribution.subtasks[1], settledSlot('b', 'completed', 2, null, 'bob'));
  assert.equal(d.subtasks[2]!.status, 'active', 'settle is pure: the input is not changed');
});

test('settle ignores unknown subtasks and subtasks that already settled', () => {
  const d = started(dist('parallel', 'all', ABC));
  assert.equal(settle(d, ok('zz', 1)), { distribution: d, verdict: 'continue', activate: [], cancel: [] });
  const after = settle(d, bad('a')).distribution;
  // 'all' already failed on a; a second report of a changes nothing.
  assert.equal(settle(after, ok('a', 1)), { distribution: after, verdict: 'continue', activate: [], cancel: [] });
  assert.equal(settle(after, bad('a', 'cancelled')), { distribution: after, verdict: 'continue', activate: [], cancel: [] });
});

// ── settle: completion modes ──────────────────────────────────────────────

test('settle all: completes when every subtask succeeded, with results in subtask order', () => {
  const d = started(dist('parallel', 'all', ABC));
  const steps = run(d, [ok('b', 2, 'bob'), ok('c', 3, 'cy'), ok('a', 1, 'ann')]);
  assert.equal(steps.map((s) => s.verdict), ['continue', 'continue', 'complete']);
  const last = steps[2]!;
  assert.equal(last.result, [
    { subtaskId: 'a', agent: 'ann', result: 1 },
    { subtaskId: 'b', agent: 'bob', result: 2 },
    { subtaskId: 'c', agent: 'cy', result: 3 },
  ]);
  assert.equal(last.cancel, []);
  assert.equal(last.activate, []);
  assert.is(last.error, undefined);
});

test('settle all: fails on the first failure and cancels the unsettled subtasks', () => {
  const d = started(dist('parallel', 'all', ABC));
  const [s1, s2] = run(d, [ok('a', 1), bad('b', 'failed', 'boom')]);
  assert.is(s1!.verdict, 'continue');
  assert.is(s2!.verdict, 'fail');
  assert.is(s2!.error, '1 of 3 subtasks succeeded but 3 must (completion: all); b failed (boom).');
  assert.equal(s2!.cancel, ['c']);
  assert.is(s2!.result, undefined);
});

test('settle any: completes on the first success; fails only when every subtask failed', () => {
  const d = started(dist('parallel', 'any', ABC));
  const steps = run(d, [bad('a', 'timed_out'), ok('c', 'yes', 'cy')]);
  assert.equal(steps.map((s) => s.verdict), ['continue', 'complete']);
  assert.equal(steps[1]!.result, [{ subtaskId: 'c', agent: 'cy', result: 'yes' }]);
  assert.equal(steps[1]!.cancel, ['b']);

  const failing = run(d, [bad('a'), bad('b', 'cancelled'), bad('c', 'timed_out', 'slow')]);
  assert.equal(failing.map((s) => s.verdict), ['continue', 'continue', 'fail']);
  assert.is(failing[2]!.error, '0 of 3 subtasks succeeded but 1 must (completion: any); a failed; b cancelled; c timed_out (slow).');
  assert.equal(failing[2]!.cancel, []);
});

test('settle majority (odd n): two of three decide either way', () => {
  const d = started(dist('parallel', 'majority', ABC));
  const win = run(d, [ok('a', 1), bad('b'), ok('c', 3)]);
  assert.equal(win.map((s) => s.verdict), ['continue', 'continue', 'complete']);
  const early = run(d, [ok('a', 1), ok('b', 2)]);
  assert.equal(early.map((s) => s.verdict), ['continue', 'complete']);
  assert.equal(early[1]!.cancel, ['c']);
  const lose = run(d, [bad('a'), bad('b')]);
  assert.equal(lose.map((s) => s.verdict), ['continue', 'fail']);
  assert.equal(lose[1]!.cancel, ['c']);
  assert.is(lose[1]!.error, '0 of 3 subtasks succeeded but 2 must (completion: majority); a failed; b failed.');
});

test('settle majority (even n): half is not a majority, and two failures of four make it impossible', () => {
  const d = started(dist('parallel', 'majority', ['a', 'b', 'c', 'd']));
  const half = run(d, [ok('a', 1), ok('b', 2)]);
  assert.equal(half.map((s) => s.verdict), ['continue', 'continue'], 'two of four is not a majority yet');
  const three = run(d, [ok('a', 1), ok('b', 2), ok('c', 3)]);
  assert.is(three[2]!.verdict, 'complete');
  assert.equal(three[2]!.cancel, ['d']);
  const impossible = run(d, [ok('a', 1), bad('b'), bad('c', 'failed', 'x')]);
  assert.equal(impossible.map((s) => s.verdict), ['continue', 'continue', 'fail']);
  assert.is(impossible[2]!.error, '1 of 4 subtasks succeeded but 3 must (completion: majority); b failed; c failed (x).');
  assert.equal(impossible[2]!.cancel, ['d']);
});

test('settle threshold: completes at the threshold and fails as soon as it cannot be reached', () => {
  const ids = ['a', 'b', 'c', 'd'];
  const two = started(dist('parallel', 'threshold', ids, { threshold: 2 }));
  const reached = run(two, [ok('a', 1), bad('b'), ok('c', 3)]);
  assert.equal(reached.map((s) => s.verdict), ['continue', 'continue', 'complete']);
  assert.equal(reached[2]!.cancel, ['d']);
  assert.equal(reached[2]!.result, [
    { subtaskId: 'a', agent: null, result: 1 },
    { subtaskId: 'c', agent: null, result: 3 },
  ]);

  const three = started(dist('parallel', 'threshold', ids, { threshold: 3 }));
  const lost = run(three, [bad('a'), bad('b')]);
  assert.equal(lost.map((s) => s.verdict), ['continue', 'fail']);
  assert.is(lost[1]!.error, '0 of 4 subtasks succeeded but 3 must (completion: threshold); a failed; b failed.');
  assert.equal(lost[1]!.cancel, ['c', 'd']);
});

test('settle threshold: an out-of-range threshold is clamped (above n means all, 0 means one)', () => {
  const high = started(dist('parallel', 'threshold', ['a', 'b'], { threshold: 5 }));
  assert.equal(run(high, [ok('a', 1), ok('b', 2)]).map((s) => s.verdict), ['continue', 'complete']);
  assert.equal(run(high, [bad('a')]).map((s) => s.verdict), ['fail'], 'with the threshold clamped to 2, one failure is fatal');
  const zero = started(dist('parallel', 'threshold', ['a', 'b'], { threshold: 0 }));
  assert.equal(run(zero, [ok('b', 2)]).map((s) => s.verdict), ['complete']);
  assert.equal(run(zero, [bad('a'), bad('b')]).map((s) => s.verdict), ['continue', 'fail']);
});

test('settle best_of: waits for every subtask, then picks the highest numeric score', () => {
  const d = started(dist('parallel', 'best_of', ABC));
  const steps = run(d, [ok('a', { score: 0.4 }, 'ann'), ok('b', { score: 0.9, text: 'B' }, 'bob'), bad('c')]);
  assert.equal(steps.map((s) => s.verdict), ['continue', 'continue', 'complete']);
  assert.equal(steps[2]!.result, { subtaskId: 'b', agent: 'bob', result: { score: 0.9, text: 'B' }, score: 0.9 });
  const none = run(d, [bad('a'), bad('b'), bad('c', 'timed_out')]);
  assert.equal(none.map((s) => s.verdict), ['continue', 'continue', 'fail']);
});

// ── settle: coordinations ─────────────────────────────────────────────────

test('settle sequential: each success starts the next subtask without input; the last decides', () => {
  const d = started(dist('sequential', 'all', ABC));
  const steps = run(d, [ok('a', 1), ok('b', 2), ok('c', 3)]);
  assert.equal(steps.map((s) => s.activate), [[{ id: 'b' }], [{ id: 'c' }], []]);
  assert.equal(steps.map((s) => s.verdict), ['continue', 'continue', 'complete']);
  assert.equal(steps[0]!.distribution.subtasks.map((s) => s.status), ['completed', 'active', 'waiting']);
});

test('settle pipeline: the next stage gets the latest successful result as input (null when none)', () => {
  const d = started(dist('pipeline', 'all', ABC));
  const steps = run(d, [ok('a', { text: 'draft' }), ok('b', { text: 'edited' })]);
  assert.equal(steps.map((s) => s.activate), [[{ id: 'b', input: { text: 'draft' } }], [{ id: 'c', input: { text: 'edited' } }]]);

  const lenient = started(dist('pipeline', 'threshold', ABC, { threshold: 1 }));
  const [first, second] = run(lenient, [bad('a'), bad('b')]);
  assert.equal(first!.activate, [{ id: 'b', input: null }]);
  assert.equal(second!.activate, [{ id: 'c', input: null }]);

  const mixed = run(lenient, [ok('a', 'A'), bad('b')]);
  assert.is(mixed[0]!.verdict, 'complete', 'threshold 1: the first success completes the pipeline');
  assert.equal(mixed[0]!.cancel, ['b', 'c']);
});

test('settle map_reduce: mappers that satisfy the rule start the reducer with their results; the reducer decides', () => {
  const d = started(dist('map_reduce', 'majority', ['m1', 'm2', 'm3', 'r']));
  const [s1, s2] = run(d, [ok('m2', 'two'), ok('m1', 'one')]);
  assert.is(s1!.verdict, 'continue');
  assert.equal(s1!.activate, []);
  assert.equal(s2!.verdict, 'continue');
  assert.equal(s2!.activate, [{ id: 'r', input: [{ subtaskId: 'm1', result: 'one' }, { subtaskId: 'm2', result: 'two' }] }]);
  assert.equal(s2!.cancel, ['m3']);
  assert.equal(s2!.distribution.subtasks.map((s) => s.status), ['completed', 'completed', 'active', 'active']);

  // A late mapper outcome after the reducer started decides nothing.
  const late = settle(s2!.distribution, bad('m3', 'cancelled'));
  assert.equal(late.verdict, 'continue');
  assert.equal(late.activate, []);
  assert.equal(late.cancel, []);
  assert.is(late.distribution.subtasks[2]!.status, 'cancelled');

  const done = settle(late.distribution, ok('r', { total: 2 }));
  assert.is(done.verdict, 'complete');
  assert.equal(done.result, { total: 2 });
  assert.equal(done.cancel, []);

  const reducerFailed = settle(late.distribution, bad('r', 'failed', 'oom'));
  assert.is(reducerFailed.verdict, 'fail');
  assert.is(reducerFailed.error, 'The reduce subtask r failed: oom.');
  const reducerTimedOut = settle(late.distribution, bad('r', 'timed_out'));
  assert.is(reducerTimedOut.error, 'The reduce subtask r timed_out.');
});

test('settle map_reduce: mappers that cannot satisfy the rule fail the parent and cancel the reducer', () => {
  const d = started(dist('map_reduce', 'all', ['m1', 'm2', 'r']));
  const step = settle(d, bad('m2', 'failed', 'crash'));
  assert.is(step.verdict, 'fail');
  assert.is(step.error, '0 of 2 subtasks succeeded but 2 must (completion: all); m2 failed (crash).');
  assert.equal(step.cancel, ['m1', 'r']);
});

// ── aggregate ─────────────────────────────────────────────────────────────

/** A distribution whose subtasks settled in `order` with these outcomes. */
function settledDist(aggregation: Aggregation, mode: CompletionMode, outcomes: [string, SubtaskOutcome][], coordination: Coordination = 'parallel'): Distribution {
  let d = started(dist(coordination, mode, outcomes.map(([id]) => id), { aggregation }));
  for (const [, o] of outcomes) d = settle(d, o).distribution;
  return d;
}

test('aggregate combine_results lists successful workers in subtask order', () => {
  let d = started(dist('parallel', 'all', ABC));
  for (const o of [ok('c', 3, 'cy'), bad('b'), ok('a', 1, 'ann')]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), [
    { subtaskId: 'a', agent: 'ann', result: 1 },
    { subtaskId: 'c', agent: 'cy', result: 3 },
  ]);
  assert.equal(aggregate(started(dist('parallel', 'all', ABC))), []);
});

test('aggregate first_complete picks the success that settled first, whatever its position', () => {
  let d = started(dist('parallel', 'all', ABC, { aggregation: 'first_complete' }));
  for (const o of [bad('a'), ok('c', 'C', 'cy'), ok('b', 'B', 'bob')]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), { subtaskId: 'c', agent: 'cy', result: 'C' });
  assert.is(aggregate(started(dist('parallel', 'all', ABC, { aggregation: 'first_complete' }))), null);
});

test('aggregate majority_vote counts equal results whatever their key order', () => {
  let d = started(dist('parallel', 'all', ABC, { aggregation: 'majority_vote' }));
  for (const o of [ok('a', { answer: 'yes', n: 1 }), ok('b', { answer: 'no' }), ok('c', { n: 1, answer: 'yes' })]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), { value: { answer: 'yes', n: 1 }, votes: 2, of: 3 });
});

test('aggregate majority_vote breaks a tie in favour of the value that arrived first', () => {
  let d = started(dist('parallel', 'all', ['a', 'b'], { aggregation: 'majority_vote' }));
  for (const o of [ok('b', 'B'), ok('a', 'A')]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), { value: 'B', votes: 1, of: 2 });
  assert.is(aggregate(started(dist('parallel', 'all', ['a'], { aggregation: 'majority_vote' }))), null);
});

test('aggregate majority_vote: a tie goes to the value first reported, even when a later copy of it sits earlier in subtask order', () => {
  // Settle order: d = X (1st), b = Y (2nd), a = X (3rd), c = Y (4th). X and Y have two votes each;
  // X arrived first (from d), so X wins.
  let d = started(dist('parallel', 'all', ['a', 'b', 'c', 'd'], { aggregation: 'majority_vote' }));
  for (const o of [ok('d', 'X'), ok('b', 'Y'), ok('a', 'X'), ok('c', 'Y')]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), { value: 'X', votes: 2, of: 4 });
});

test('aggregate best_of ignores non-numeric scores and keeps the first of equal scores', () => {
  const d = settledDist('combine_results', 'best_of', [
    ['a', ok('a', { score: 'high' })],
    ['b', ok('b', { score: 2 }, 'bob')],
    ['c', ok('c', { score: 2 }, 'cy')],
    ['d', ok('d', null)],
  ]);
  assert.equal(aggregate(d), { subtaskId: 'b', agent: 'bob', result: { score: 2 }, score: 2 });
  const unscored = settledDist('combine_results', 'best_of', [
    ['a', ok('a', 'plain', 'ann')],
    ['b', ok('b', { score: Number.NaN })],
  ]);
  assert.equal(aggregate(unscored), { subtaskId: 'a', agent: 'ann', result: 'plain', score: null });
  assert.is(aggregate(settledDist('combine_results', 'best_of', [['a', bad('a')]])), null);
});

test('aggregate in map_reduce ignores the reducer', () => {
  let d = started(dist('map_reduce', 'all', ['m1', 'm2', 'r']));
  for (const o of [ok('m1', 1), ok('m2', 2), ok('r', 'reduced')]) d = settle(d, o).distribution;
  assert.equal(aggregate(d), [
    { subtaskId: 'm1', agent: null, result: 1 },
    { subtaskId: 'm2', agent: null, result: 2 },
  ]);
});

// ── canonical ─────────────────────────────────────────────────────────────

test('canonical: key order is irrelevant at every depth; array order is not', () => {
  assert.is(canonical({ b: 1, a: { y: [1, { q: 1, p: 2 }], x: null } }), canonical({ a: { x: null, y: [1, { p: 2, q: 1 }] }, b: 1 }));
  assert.is(canonical({ b: 1, a: 2 }), '{"a":2,"b":1}');
  assert.is.not(canonical([1, 2]), canonical([2, 1]));
  assert.is.not(canonical({ a: 1 }), canonical({ a: '1' }));
});

test('canonical: primitives are JSON, undefined members are dropped, undefined itself is null', () => {
  assert.is(canonical('x'), '"x"');
  assert.is(canonical(3), '3');
  assert.is(canonical(null), 'null');
  assert.is(canonical(true), 'true');
  assert.is(canonical(undefined), 'null');
  assert.is(canonical({ a: 1, b: undefined }), canonical({ a: 1 }));
  assert.is(canonical([]), '[]');
  assert.is(canonical({}), '{}');
});

test.run();

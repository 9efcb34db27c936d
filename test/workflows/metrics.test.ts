import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Execution, ExecutionStatus, StepRun, StepStatus } from '../../protocol/workflows.js';
import { computeInsights, computeMetrics, formatDuration, percentile } from '../../src/workflows/metrics.js';
import { T0 } from '../helpers/clock.js';

const MIN = 60_000;
const HOUR = 60 * MIN;
const FROM = T0;
const TO = T0 + 10 * HOUR;

const iso = (ms: number) => new Date(ms).toISOString();

interface StepSpec {
  status: StepStatus;
  /** Minutes after the execution was created. */
  start?: number;
  end?: number;
  attempt?: number;
  votes?: number;
}

/** An execution created `created` ms after T0, finished `done` minutes later (null: not finished). */
function exec(id: string, created: number, status: ExecutionStatus, done: number | null, steps: Record<string, StepSpec>): Execution {
  const c = T0 + created;
  const runs: StepRun[] = Object.entries(steps).map(([sid, s]) => ({
    id: sid,
    status: s.status,
    attempt: s.attempt ?? (s.start === undefined ? 0 : 1),
    taskId: null,
    input: {},
    output: null,
    error: null,
    agent: null,
    startedAt: s.start === undefined ? null : iso(c + s.start * MIN),
    completedAt: s.end === undefined ? null : iso(c + s.end * MIN),
    dueAt: null,
    votes: Array.from({ length: s.votes ?? 0 }, () => ({ by: 'ann', approve: true, comment: '', at: iso(c) })),
    compensation: null,
  }));
  return {
    id,
    tenantId: 'acme',
    workflowId: 'wf1',
    workspaceId: null,
    workflowVersion: 1,
    workflowName: 'ci',
    status,
    input: {},
    output: null,
    error: null,
    steps: runs,
    completionOrder: [],
    trace: [],
    createdBy: 'lead',
    createdAt: iso(c),
    updatedAt: iso(c),
    completedAt: done === null ? null : iso(c + done * MIN),
    cancelReason: null,
    version: 1,
  };
}

/**
 * Six runs in the period, two outside it. By hand:
 * finished x1 x2 x3 x5 x6 (durations 10, 5, 20, 1, 30 min), completed x1 x3 x6;
 * build ran 6× (completed 2, 1, 3, 2, 2 min); test ran 5× (completed 6, 12, 8 min; failed once;
 * attempts > 1 twice, up to 3); deploy ran 3× (completed 2, 5, 20 min).
 */
const runs: Execution[] = [
  exec('x1', 0, 'completed', 10, {
    build: { status: 'completed', start: 0, end: 2 },
    test: { status: 'completed', start: 2, end: 8, attempt: 2 },
    deploy: { status: 'completed', start: 8, end: 10 },
  }),
  exec('x2', 60 * MIN, 'failed', 5, {
    build: { status: 'completed', start: 0, end: 1 },
    test: { status: 'failed', start: 1, end: 5, attempt: 3 },
    deploy: { status: 'pending' },
  }),
  exec('x3', 120 * MIN, 'completed', 20, {
    build: { status: 'completed', start: 0, end: 3 },
    test: { status: 'completed', start: 3, end: 15 },
    deploy: { status: 'completed', start: 15, end: 20 },
  }),
  exec('x4', 6 * HOUR, 'running', null, {
    build: { status: 'completed', start: 0, end: 2 },
    test: { status: 'running', start: 2 },
    deploy: { status: 'pending' },
  }),
  exec('x5', 7 * HOUR, 'cancelled', 1, {
    build: { status: 'cancelled', start: 0 },
    test: { status: 'pending' },
    deploy: { status: 'pending' },
  }),
  exec('x6', 8 * HOUR, 'completed', 30, {
    build: { status: 'completed', start: 0, end: 2 },
    test: { status: 'completed', start: 2, end: 10 },
    deploy: { status: 'completed', start: 10, end: 30 },
  }),
  exec('before', -1, 'failed', 1, { build: { status: 'failed', start: 0, end: 1 } }),
  exec('after', 10 * HOUR + 1, 'failed', 1, { build: { status: 'failed', start: 0, end: 1 } }),
];

const test = suite('computeMetrics');

test('percentiles are nearest-rank', () => {
  assert.is(percentile([], 50), null);
  assert.is(percentile([7], 99), 7);
  assert.is(percentile([1, 2, 3, 4], 50), 2);
  assert.is(percentile([1, 2, 3, 4, 5], 50), 3);
  assert.is(percentile([1, 2, 3, 4, 5], 90), 5);
  assert.is(percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 90), 90);
});

test('a workflow with no runs has zero runs, zero counts and no rates or durations', () => {
  const m = computeMetrics([], FROM, TO, 'wf1');
  assert.equal(m, {
    workflowId: 'wf1',
    from: iso(FROM),
    to: iso(TO),
    runs: 0,
    byStatus: { running: 0, paused: 0, compensating: 0, completed: 0, failed: 0, compensation_failed: 0, cancelled: 0, timed_out: 0 },
    successRate: null,
    durationMs: { p50: null, p90: null, p99: null, mean: null },
    slowestSteps: [],
  });
});

test('counts runs in the period by status, with success over finished runs', () => {
  const m = computeMetrics(runs, FROM, TO);
  assert.is(m.workflowId, 'wf1');
  assert.is(m.runs, 6);
  assert.equal(m.byStatus, { running: 1, paused: 0, compensating: 0, completed: 3, failed: 1, compensation_failed: 0, cancelled: 1, timed_out: 0 });
  assert.is(m.successRate, 3 / 5);
});

test('run durations are percentiles and mean of finished runs from creation to completion', () => {
  const m = computeMetrics(runs, FROM, TO);
  // sorted: 1, 5, 10, 20, 30 minutes; mean 66 / 5 = 13.2 min
  assert.equal(m.durationMs, { p50: 10 * MIN, p90: 30 * MIN, p99: 30 * MIN, mean: 792_000 });
});

test('steps are listed slowest first by mean of completed runs, with runs, p90 and failures', () => {
  const m = computeMetrics(runs, FROM, TO);
  assert.equal(m.slowestSteps, [
    { stepId: 'deploy', runs: 3, meanMs: 9 * MIN, p90Ms: 20 * MIN, failures: 0 },
    { stepId: 'test', runs: 5, meanMs: 520_000, p90Ms: 12 * MIN, failures: 1 },
    { stepId: 'build', runs: 6, meanMs: 2 * MIN, p90Ms: 3 * MIN, failures: 0 },
  ]);
});

const ins = suite('computeInsights');

test('formatDuration reads well from milliseconds to days', () => {
  assert.is(formatDuration(850), '850 ms');
  assert.is(formatDuration(12_500), '12.5 s');
  assert.is(formatDuration(4 * MIN), '4 min');
  assert.is(formatDuration(2.5 * HOUR), '2.5 h');
  assert.is(formatDuration(72 * HOUR), '3 d');
});

ins('reports failure hot spots, retries and a falling success rate in sentences, with the metrics', () => {
  const r = computeInsights(runs, FROM, TO, 'wf1');
  assert.equal(r.metrics, computeMetrics(runs, FROM, TO, 'wf1'));
  assert.equal(r.insights, [
    { kind: 'failure_hotspot', stepId: 'test', message: "Step 'test' failed in 1 of 5 runs (20%)." },
    { kind: 'retries', stepId: 'test', message: "Step 'test' needed more than one attempt in 2 of 5 runs (40%), up to 3 attempts." },
    { kind: 'trend', stepId: null, message: 'Success rate fell from 67% (2 of 3) in the first half of the period to 50% (1 of 2) in the second.' },
  ]);
});

ins('reports a step slower than twice the median step, leaving approval steps out', () => {
  const xs = [0, 1, 2].map((i) =>
    exec(`s${i}`, i * HOUR, 'completed', 200, {
      a: { status: 'completed', start: 0, end: 1 },
      b: { status: 'completed', start: 1, end: 3 },
      c: { status: 'completed', start: 3, end: 13 },
      signoff: { status: 'completed', start: 13, end: 200, votes: 1 },
    }),
  );
  const r = computeInsights(xs, FROM, TO, 'wf1');
  // means 1, 2, 10 min (signoff left out): median 2 min, c is 5×
  const slow = r.insights.filter((i) => i.kind === 'slow_step');
  assert.equal(slow, [{ kind: 'slow_step', stepId: 'c', message: "Step 'c' takes 10 min on average, 5.0× the median step (2 min)." }]);
});

ins('reports how long approval steps waited and how many still wait', () => {
  const xs = [
    exec('a1', 0, 'completed', 130, { signoff: { status: 'completed', start: 0, end: 120, votes: 2 } }),
    exec('a2', HOUR, 'failed', 250, { signoff: { status: 'failed', start: 0, end: 240, votes: 1 } }),
    exec('a3', 7 * HOUR, 'running', null, { signoff: { status: 'awaiting_approval', start: 0 } }),
    exec('a4', 9 * HOUR, 'running', null, { gate: { status: 'awaiting_approval', start: 30 } }),
  ];
  const r = computeInsights(xs, FROM, TO, 'wf1', { approvalSteps: ['signoff', 'unused'] });
  assert.equal(
    r.insights.filter((i) => i.kind === 'approval_wait'),
    [
      { kind: 'approval_wait', stepId: 'gate', message: "Approval step 'gate' has no decision yet in the period; 1 still waiting, the oldest for 30 min." },
      { kind: 'approval_wait', stepId: 'signoff', message: "Approval step 'signoff' waited 3 h on average over 2 decisions (longest 4 h); 1 still waiting, the oldest for 3 h." },
    ],
  );
});

ins('reports a rising or steady success rate only when both halves have finished runs', () => {
  const ok = (id: string, at: number) => exec(id, at, 'completed', 1, {});
  const bad = (id: string, at: number) => exec(id, at, 'failed', 1, {});
  const trend = (xs: Execution[]) => computeInsights(xs, FROM, TO, 'wf1').insights.filter((i) => i.kind === 'trend').map((i) => i.message);
  assert.equal(trend([bad('1', 0), ok('2', HOUR), ok('3', 6 * HOUR)]), ['Success rate rose from 50% (1 of 2) in the first half of the period to 100% (1 of 1) in the second.']);
  assert.equal(trend([ok('1', 0), bad('2', HOUR), ok('3', 6 * HOUR), exec('4', 7 * HOUR, 'timed_out', 1, {})]), [
    'Success rate held steady: 50% (1 of 2) in the first half of the period, 50% (1 of 2) in the second.',
  ]);
  assert.equal(trend([ok('1', 0), ok('2', HOUR)]), []);
  assert.equal(computeInsights([], FROM, TO, 'wf1').insights, []);
});

test.run();
ins.run();

import { ExecutionStatuses, type Execution, type StepRun, type WorkflowInsights, type WorkflowMetrics } from '../../protocol/workflows.js';

/**
 * Metrics and insights of a workflow's executions over a period, as pure functions of the
 * executions (the handler reads them from the read model).
 *
 * Definitions:
 * - an execution belongs to the period when `from <= createdAt <= to`;
 * - finished: `completed`, `failed`, `compensation_failed`, `cancelled` or `timed_out`;
 *   `successRate` = completed / finished (null when nothing finished);
 * - a run's duration is `createdAt → completedAt` of a finished run; percentiles are
 *   nearest-rank (the value at rank ⌈p/100 · n⌉ of the sorted durations), means are rounded to
 *   whole milliseconds;
 * - a step *ran* in an execution when it has a `startedAt` or ended `completed`, `failed` or
 *   `timed_out`; its `runs` counts those executions, its `failures` the ones where it ended
 *   `failed` or `timed_out`, and its durations (`startedAt → completedAt`) come from the runs
 *   where it ended `completed`. Steps are listed slowest first (by mean, then by id); a step that
 *   never completed has mean and p90 0.
 */

const FINISHED = new Set<string>(['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out']);
const STEP_FAILED = new Set<string>(['failed', 'timed_out']);
const STEP_ENDED = new Set<string>(['completed', 'failed', 'timed_out']);

/** Share of a step's runs that must fail (or need retries) to be reported. */
export const HOTSPOT_SHARE = 0.2;
/** A step is slow when its mean is more than this many times the median step's. */
export const SLOW_FACTOR = 2;
/** A change of success rate between the halves of the period smaller than this is "steady". */
export const TREND_DELTA = 0.1;

/** The value at nearest rank ⌈p/100 · n⌉ of ascending `sorted`, or null when empty. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

function mean(xs: readonly number[]): number | null {
  return xs.length === 0 ? null : Math.round(xs.reduce((a, b) => a + b, 0) / xs.length);
}

function ms(iso: string | null): number | null {
  if (iso === null) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

function span(from: string | null, to: string | null): number | null {
  const a = ms(from);
  const b = ms(to);
  return a === null || b === null ? null : Math.max(0, b - a);
}

/** What one step did across the executions. */
interface StepStats {
  stepId: string;
  runs: number;
  failures: number;
  /** Runs that needed more than one attempt. */
  retried: number;
  maxAttempt: number;
  /** Sorted ascending. */
  durations: number[];
  meanMs: number;
}

function ran(s: StepRun): boolean {
  return s.startedAt !== null || STEP_ENDED.has(s.status);
}

function stepStats(executions: readonly Execution[]): StepStats[] {
  const byId = new Map<string, StepStats>();
  for (const x of executions) {
    for (const s of x.steps) {
      if (!ran(s)) continue;
      let st = byId.get(s.id);
      if (!st) byId.set(s.id, (st = { stepId: s.id, runs: 0, failures: 0, retried: 0, maxAttempt: 0, durations: [], meanMs: 0 }));
      st.runs++;
      if (STEP_FAILED.has(s.status)) st.failures++;
      if (s.attempt > 1) st.retried++;
      st.maxAttempt = Math.max(st.maxAttempt, s.attempt);
      const d = s.status === 'completed' ? span(s.startedAt, s.completedAt) : null;
      if (d !== null) st.durations.push(d);
    }
  }
  const out = [...byId.values()];
  for (const st of out) {
    st.durations.sort((a, b) => a - b);
    st.meanMs = mean(st.durations) ?? 0;
  }
  return out.sort((a, b) => b.meanMs - a.meanMs || (a.stepId < b.stepId ? -1 : a.stepId > b.stepId ? 1 : 0));
}

/** The executions created within `[from, to]`. */
function inPeriod(executions: readonly Execution[], from: number, to: number): Execution[] {
  return executions.filter((x) => {
    const t = ms(x.createdAt);
    return t !== null && t >= from && t <= to;
  });
}

function metricsOf(executions: readonly Execution[], steps: StepStats[], from: number, to: number, workflowId: string): WorkflowMetrics {
  const byStatus: Record<string, number> = Object.fromEntries(ExecutionStatuses.map((s) => [s, 0]));
  const durations: number[] = [];
  let finished = 0;
  let completed = 0;
  for (const x of executions) {
    byStatus[x.status] = (byStatus[x.status] ?? 0) + 1;
    if (!FINISHED.has(x.status)) continue;
    finished++;
    if (x.status === 'completed') completed++;
    const d = span(x.createdAt, x.completedAt);
    if (d !== null) durations.push(d);
  }
  durations.sort((a, b) => a - b);
  return {
    workflowId,
    from: new Date(from).toISOString(),
    to: new Date(to).toISOString(),
    runs: executions.length,
    byStatus,
    successRate: finished === 0 ? null : completed / finished,
    durationMs: { p50: percentile(durations, 50), p90: percentile(durations, 90), p99: percentile(durations, 99), mean: mean(durations) },
    slowestSteps: steps.map((s) => ({ stepId: s.stepId, runs: s.runs, meanMs: s.meanMs, p90Ms: percentile(s.durations, 90) ?? 0, failures: s.failures })),
  };
}

/**
 * Runs, outcomes, run durations and step durations of a workflow's executions created within
 * `[from, to]` (milliseconds since the epoch); executions outside the period are ignored.
 *
 * @example
 * ```ts
 * const m = computeMetrics(executions, Date.now() - 7 * 86_400_000, Date.now(), 'wf1');
 * m.successRate; // 0.9
 * ```
 */
export function computeMetrics(executions: readonly Execution[], from: number, to: number, workflowId = executions[0]?.workflowId ?? ''): WorkflowMetrics {
  const xs = inPeriod(executions, from, to);
  return metricsOf(xs, stepStats(xs), from, to, workflowId);
}

/** A duration in words: `850 ms`, `12.5 s`, `4 min`, `2.5 h`, `3 d`. */
export function formatDuration(durationMs: number): string {
  const one = (x: number) => String(Number(x.toFixed(1)));
  if (durationMs < 1000) return `${Math.round(durationMs)} ms`;
  const s = durationMs / 1000;
  if (s < 60) return `${one(s)} s`;
  const m = s / 60;
  if (m < 60) return `${one(m)} min`;
  const h = m / 60;
  if (h < 48) return `${one(h)} h`;
  return `${one(h / 24)} d`;
}

const pct = (x: number) => `${Math.round(x * 100)}%`;

/** Options of {@link computeInsights}. */
export interface InsightOptions {
  /** Ids of the workflow's approval steps (steps with votes or awaiting approval count anyway). */
  approvalSteps?: Iterable<string>;
}

/**
 * Observations over the period, in sentences, with the metrics they come from:
 * - `failure_hotspot`: a step that failed in at least 20% of its runs;
 * - `slow_step`: a step whose mean duration is more than twice the median of the steps' means
 *   (nearest rank), approval steps left out of both;
 * - `retries`: a step that needed more than one attempt in at least 20% of its runs;
 * - `approval_wait`: how long each approval step waited for its decision (`startedAt →
 *   completedAt` of decided runs) and how many still wait;
 * - `trend`: the success rate of runs created in the second half of the period against the
 *   first half (rose / fell by 10 points or more, otherwise held steady), when both halves
 *   have finished runs.
 *
 * @example
 * ```ts
 * const { insights } = computeInsights(executions, from, to, 'wf1', { approvalSteps: ['signoff'] });
 * insights[0].message; // "Step 'deploy' failed in 3 of 10 runs (30%)."
 * ```
 */
export function computeInsights(
  executions: readonly Execution[],
  from: number,
  to: number,
  workflowId = executions[0]?.workflowId ?? '',
  opts: InsightOptions = {},
): WorkflowInsights {
  const xs = inPeriod(executions, from, to);
  const steps = stepStats(xs);
  const metrics = metricsOf(xs, steps, from, to, workflowId);
  const insights: WorkflowInsights['insights'] = [];

  const hot = steps.filter((s) => s.failures > 0 && s.failures / s.runs >= HOTSPOT_SHARE);
  hot.sort((a, b) => b.failures / b.runs - a.failures / a.runs || b.failures - a.failures);
  for (const s of hot) {
    insights.push({ kind: 'failure_hotspot', stepId: s.stepId, message: `Step '${s.stepId}' failed in ${s.failures} of ${s.runs} runs (${pct(s.failures / s.runs)}).` });
  }

  // Approval steps wait for people; their waits are reported apart, not as slow steps.
  const approvals = approvalIds(xs, opts.approvalSteps);
  const timed = steps.filter((s) => s.durations.length > 0 && !approvals.has(s.stepId));
  const median = percentile(
    timed.map((s) => s.meanMs).sort((a, b) => a - b),
    50,
  );
  if (median !== null && median > 0) {
    for (const s of timed) {
      if (s.meanMs > SLOW_FACTOR * median) {
        insights.push({
          kind: 'slow_step',
          stepId: s.stepId,
          message: `Step '${s.stepId}' takes ${formatDuration(s.meanMs)} on average, ${(s.meanMs / median).toFixed(1)}× the median step (${formatDuration(median)}).`,
        });
      }
    }
  }

  for (const s of steps) {
    if (s.retried > 0 && s.retried / s.runs >= HOTSPOT_SHARE) {
      insights.push({
        kind: 'retries',
        stepId: s.stepId,
        message: `Step '${s.stepId}' needed more than one attempt in ${s.retried} of ${s.runs} runs (${pct(s.retried / s.runs)}), up to ${s.maxAttempt} attempts.`,
      });
    }
  }

  insights.push(...approvalWaits(xs, to, approvals));

  const mid = from + (to - from) / 2;
  const halves = [xs.filter((x) => ms(x.createdAt)! < mid), xs.filter((x) => ms(x.createdAt)! >= mid)].map((h) => {
    const done = h.filter((x) => FINISHED.has(x.status));
    return { finished: done.length, completed: done.filter((x) => x.status === 'completed').length };
  });
  const [a, b] = halves as [{ finished: number; completed: number }, { finished: number; completed: number }];
  if (a.finished > 0 && b.finished > 0) {
    const r1 = a.completed / a.finished;
    const r2 = b.completed / b.finished;
    const first = `${pct(r1)} (${a.completed} of ${a.finished})`;
    const second = `${pct(r2)} (${b.completed} of ${b.finished})`;
    const message =
      r2 - r1 >= TREND_DELTA
        ? `Success rate rose from ${first} in the first half of the period to ${second} in the second.`
        : r1 - r2 >= TREND_DELTA
          ? `Success rate fell from ${first} in the first half of the period to ${second} in the second.`
          : `Success rate held steady: ${first} in the first half of the period, ${second} in the second.`;
    insights.push({ kind: 'trend', stepId: null, message });
  }

  return { workflowId, metrics, insights };
}

/** The declared approval steps and every step that got votes or awaits approval. */
function approvalIds(xs: readonly Execution[], declared: Iterable<string> = []): Set<string> {
  const ids = new Set(declared);
  for (const x of xs) for (const s of x.steps) if (s.votes.length > 0 || s.status === 'awaiting_approval') ids.add(s.id);
  return ids;
}

function approvalWaits(xs: readonly Execution[], to: number, ids: ReadonlySet<string>): WorkflowInsights['insights'] {
  const out: WorkflowInsights['insights'] = [];
  for (const id of [...ids].sort()) {
    const waits: number[] = [];
    const waiting: number[] = [];
    for (const x of xs) {
      const s = x.steps.find((r) => r.id === id);
      if (!s) continue;
      if (s.status === 'awaiting_approval') {
        const since = ms(s.startedAt);
        waiting.push(since === null ? 0 : Math.max(0, to - since));
        continue;
      }
      const d = STEP_ENDED.has(s.status) ? span(s.startedAt, s.completedAt) : null;
      if (d !== null) waits.push(d);
    }
    if (waits.length === 0 && waiting.length === 0) continue;
    const parts: string[] = [];
    if (waits.length > 0) {
      parts.push(
        `Approval step '${id}' waited ${formatDuration(mean(waits)!)} on average over ${waits.length} decision${waits.length === 1 ? '' : 's'} (longest ${formatDuration(Math.max(...waits))})`,
      );
    } else {
      parts.push(`Approval step '${id}' has no decision yet in the period`);
    }
    if (waiting.length > 0) parts.push(`${waiting.length} still waiting, the oldest for ${formatDuration(Math.max(...waiting))}`);
    out.push({ kind: 'approval_wait', stepId: id, message: `${parts.join('; ')}.` });
  }
  return out;
}

/**
 * How a distributed task (a parent with subtasks) decides, from its subtasks' outcomes, when it
 * is done and with what result. Pure functions over the parent's {@link Distribution}; the task
 * machine calls them when a subtask reports that it settled.
 */

import type { Distribution, SubtaskSlot } from '../protocol/model.js';

export type { Distribution, SubtaskSlot } from '../protocol/model.js';

/** A subtask's report to its parent. */
export interface SubtaskOutcome {
  subtaskId: string;
  status: 'completed' | 'failed' | 'cancelled' | 'timed_out';
  result?: unknown;
  error?: string | null;
  agent?: string | null;
}

/** What the parent does after a subtask settled. */
export interface Step {
  distribution: Distribution;
  verdict: 'continue' | 'complete' | 'fail';
  result?: unknown;
  error?: string;
  /** Subtasks to start now, with an input for pipelines and reducers. */
  activate: { id: string; input?: unknown }[];
  /** Unsettled subtasks to cancel because the parent has decided. */
  cancel: string[];
}

const settled = (s: SubtaskSlot) => s.status !== 'waiting' && s.status !== 'active';

/** The subtasks whose outcomes count toward completion (in map_reduce, all but the reducer). */
function workers(d: Distribution): SubtaskSlot[] {
  return d.coordination === 'map_reduce' ? d.subtasks.slice(0, -1) : d.subtasks;
}

/** How many workers must succeed for the parent to succeed. */
export function required(d: Distribution): number {
  const n = workers(d).length;
  switch (d.completion.mode) {
    case 'all':
      return n;
    case 'any':
    case 'best_of':
      return 1;
    case 'majority':
      return Math.floor(n / 2) + 1;
    case 'threshold':
      return Math.min(n, Math.max(1, d.completion.threshold ?? n));
  }
}

/** The subtasks to start when the parent starts. */
export function initialActivations(d: Distribution): string[] {
  switch (d.coordination) {
    case 'parallel':
      return d.subtasks.map((s) => s.id);
    case 'map_reduce':
      return workers(d).map((s) => s.id);
    case 'sequential':
    case 'pipeline':
      return d.subtasks.length > 0 ? [d.subtasks[0]!.id] : [];
  }
}

/** Marks subtasks as started. */
export function markActive(d: Distribution, ids: string[]): Distribution {
  const set = new Set(ids);
  return { ...d, subtasks: d.subtasks.map((s) => (set.has(s.id) && s.status === 'waiting' ? { ...s, status: 'active' as const } : s)) };
}

/** JSON with sorted keys, so equal results vote together whatever their key order. */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** A subtask result's `score`, when it carries a numeric one. */
function scoreOf(result: unknown): number | null {
  const s = result && typeof result === 'object' ? (result as Record<string, unknown>).score : undefined;
  return typeof s === 'number' && Number.isFinite(s) ? s : null;
}

/** The parent's result from its successful workers. */
export function aggregate(d: Distribution): unknown {
  const ok = workers(d).filter((s) => s.status === 'completed');
  if (d.completion.mode === 'best_of') {
    let best: SubtaskSlot | null = null;
    for (const s of ok) if (best === null || (scoreOf(s.result) ?? -Infinity) > (scoreOf(best.result) ?? -Infinity)) best = s;
    return best ? { subtaskId: best.id, agent: best.agent, result: best.result, score: scoreOf(best.result) } : null;
  }
  switch (d.aggregation) {
    case 'combine_results':
      return ok.map((s) => ({ subtaskId: s.id, agent: s.agent, result: s.result }));
    case 'first_complete': {
      const first = [...ok].sort((a, b) => a.settledOrder! - b.settledOrder!)[0];
      return first ? { subtaskId: first.id, agent: first.agent, result: first.result } : null;
    }
    case 'majority_vote': {
      const votes = new Map<string, { value: unknown; votes: number; first: number }>();
      for (const s of ok) {
        const key = canonical(s.result);
        const v = votes.get(key);
        if (v) {
          v.votes++;
          v.first = Math.min(v.first, s.settledOrder!);
        } else votes.set(key, { value: s.result, votes: 1, first: s.settledOrder! });
      }
      // Ties go to the value that arrived first: deterministic and explainable.
      const winner = [...votes.values()].sort((a, b) => b.votes - a.votes || a.first - b.first)[0];
      return winner ? { value: winner.value, votes: winner.votes, of: ok.length } : null;
    }
  }
}

/** What the parent does after `outcome`. Unknown or already settled subtasks change nothing. */
export function settle(d: Distribution, outcome: SubtaskOutcome): Step {
  const idx = d.subtasks.findIndex((s) => s.id === outcome.subtaskId);
  const none: Step = { distribution: d, verdict: 'continue', activate: [], cancel: [] };
  if (idx < 0 || settled(d.subtasks[idx]!)) return none;
  const order = d.subtasks.filter(settled).length + 1;
  const subtasks = d.subtasks.map((s, i) =>
    i === idx
      ? { ...s, status: outcome.status, result: outcome.result ?? null, error: outcome.error ?? null, agent: outcome.agent ?? s.agent, settledOrder: order }
      : s,
  );
  let next: Distribution = { ...d, subtasks };
  const unsettled = () => next.subtasks.filter((s) => !settled(s)).map((s) => s.id);
  const decide = (verdict: 'complete' | 'fail', extra: Partial<Step>): Step => ({
    distribution: next,
    verdict,
    activate: [],
    cancel: unsettled(),
    ...extra,
  });

  const isReducer = d.coordination === 'map_reduce' && idx === d.subtasks.length - 1;
  if (isReducer) {
    const r = next.subtasks[idx]!;
    return r.status === 'completed'
      ? decide('complete', { result: r.result })
      : decide('fail', { error: `The reduce subtask ${r.id} ${r.status}${r.error ? `: ${r.error}` : ''}.` });
  }

  // Once the reducer has started, late mapper outcomes are recorded but decide nothing.
  if (d.coordination === 'map_reduce' && d.subtasks[d.subtasks.length - 1]!.status !== 'waiting') {
    return { distribution: next, verdict: 'continue', activate: [], cancel: [] };
  }
  const ws = workers(next);
  const ok = ws.filter((s) => s.status === 'completed').length;
  const bad = ws.filter((s) => settled(s) && s.status !== 'completed').length;
  const need = required(next);
  const allSettled = ws.every(settled);

  if (ws.length - bad < need) {
    const reasons = ws.filter((s) => settled(s) && s.status !== 'completed').map((s) => `${s.id} ${s.status}${s.error ? ` (${s.error})` : ''}`);
    return decide('fail', {
      error: `${ok} of ${ws.length} subtasks succeeded but ${need} must (completion: ${d.completion.mode}); ${reasons.join('; ')}.`,
    });
  }
  const enough = d.completion.mode === 'best_of' ? allSettled && ok >= need : ok >= need;
  if (enough) {
    if (d.coordination === 'map_reduce') {
      const reducer = next.subtasks[next.subtasks.length - 1]!;
      const inputs = ws.filter((s) => s.status === 'completed').map((s) => ({ subtaskId: s.id, result: s.result }));
      next = markActive(next, [reducer.id]);
      return {
        distribution: next,
        verdict: 'continue',
        activate: [{ id: reducer.id, input: inputs }],
        cancel: ws.filter((s) => !settled(s)).map((s) => s.id),
      };
    }
    return decide('complete', { result: aggregate(next) });
  }

  // One stage at a time: the next starts only when nothing is running (a stage may settle
  // out of turn, e.g. a waiting one cancelled by hand).
  if ((d.coordination === 'sequential' || d.coordination === 'pipeline') && !next.subtasks.some((s) => s.status === 'active')) {
    const waiting = next.subtasks.find((s) => s.status === 'waiting');
    if (waiting) {
      next = markActive(next, [waiting.id]);
      // A pipeline passes the latest successful result on; a failed stage passes nothing new.
      const last = [...next.subtasks].filter((s) => s.status === 'completed').sort((a, b) => b.settledOrder! - a.settledOrder!)[0];
      const input = d.coordination === 'pipeline' ? (last ? last.result : null) : undefined;
      return { distribution: next, verdict: 'continue', activate: [input === undefined ? { id: waiting.id } : { id: waiting.id, input }], cancel: [] };
    }
  }
  return { distribution: next, verdict: 'continue', activate: [], cancel: [] };
}

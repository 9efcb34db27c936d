import type { Agent, AssignmentStrategy } from '../../protocol/model.js';
import type { AgentStats } from './AgentDirectory.js';

/** An eligible agent with what strategies weigh. */
export interface Candidate {
  agent: Agent;
  load: number;
  stats: AgentStats;
}

/** The chosen agent and a sentence saying why, for the task's timeline. */
export interface Choice {
  agent: Agent;
  reason: string;
}

const loadFactor = (c: Candidate) => c.load / Math.max(1, c.agent.maxConcurrentTasks);
const byId = (a: Candidate, b: Candidate) => (a.agent.id < b.agent.id ? -1 : a.agent.id > b.agent.id ? 1 : 0);
const byLoad = (a: Candidate, b: Candidate) => loadFactor(a) - loadFactor(b) || a.load - b.load || byId(a, b);
const describeLoad = (c: Candidate) => `load ${c.load}/${c.agent.maxConcurrentTasks}`;

/** The best candidate by descending score, ties broken by load, then id. */
function best(cands: Candidate[], score: (c: Candidate) => number): { c: Candidate; score: number } {
  let top = cands[0]!;
  let topScore = score(top);
  for (const c of cands.slice(1)) {
    const s = score(c);
    if (s > topScore || (s === topScore && byLoad(c, top) < 0)) {
      top = c;
      topScore = s;
    }
  }
  return { c: top, score: topScore };
}

/** Neutral values for agents without history, so newcomers get a fair chance. */
const PRIOR_SUCCESS = 0.5;

/**
 * Picks one of the eligible `candidates` (non-empty) for a task by `strategy`. Deterministic:
 * the same inputs give the same choice. `lastRoundRobin` is the id chosen last by round robin.
 */
export function choose(
  strategy: AssignmentStrategy,
  required: readonly string[],
  candidates: Candidate[],
  lastRoundRobin: string | null,
): Choice {
  const of = `${candidates.length} eligible`;
  switch (strategy) {
    case 'round_robin': {
      const sorted = [...candidates].sort(byId);
      const next = sorted.find((c) => lastRoundRobin === null || c.agent.id > lastRoundRobin) ?? sorted[0]!;
      return { agent: next.agent, reason: `round_robin: next after ${lastRoundRobin ?? 'the start'} of ${of}` };
    }
    case 'least_loaded': {
      const c = [...candidates].sort(byLoad)[0]!;
      return { agent: c.agent, reason: `least_loaded: ${describeLoad(c)}, the lowest of ${of}` };
    }
    case 'capability_match': {
      // Every candidate has the required capabilities; prefer specialists, whose other
      // capabilities are then left free for work only they can do.
      const { c } = best(candidates, (x) => (required.length === 0 ? 1 : required.length / Math.max(1, x.agent.capabilities.length)));
      return {
        agent: c.agent,
        reason: `capability_match: has all ${required.length} required of its ${c.agent.capabilities.length} capabilities (${describeLoad(c)}), the closest match of ${of}`,
      };
    }
    case 'performance_based': {
      const means = candidates.map((x) => x.stats.meanCompletionMs).filter((m): m is number => m !== null && m > 0);
      const fastest = means.length ? Math.min(...means) : null;
      const speed = (x: Candidate) => (fastest === null || x.stats.meanCompletionMs === null ? 0.5 : fastest / Math.max(1, x.stats.meanCompletionMs));
      const score = (x: Candidate) => 0.4 * (x.stats.successRate ?? PRIOR_SUCCESS) + 0.3 * (1 - loadFactor(x)) + 0.3 * speed(x);
      const { c, score: s } = best(candidates, score);
      const sr = c.stats.successRate === null ? 'no history' : `success ${(c.stats.successRate * 100).toFixed(0)}% over ${c.stats.samples}`;
      return { agent: c.agent, reason: `performance_based: score ${s.toFixed(3)} (${sr}, ${describeLoad(c)}), the best of ${of}` };
    }
    case 'cost_optimized': {
      const c = [...candidates].sort((a, b) => a.agent.costPerTask - b.agent.costPerTask || byLoad(a, b))[0]!;
      return { agent: c.agent, reason: `cost_optimized: cost ${c.agent.costPerTask} per task (${describeLoad(c)}), the cheapest of ${of}` };
    }
  }
}

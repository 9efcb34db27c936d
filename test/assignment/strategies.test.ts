import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Agent } from '../../protocol/model.js';
import { choose, type Candidate } from '../../src/assignment/strategies.js';

const test = suite('assignment strategies');

function cand(id: string, o: { caps?: string[]; load?: number; max?: number; cost?: number; success?: number | null; meanMs?: number | null } = {}): Candidate {
  const agent = {
    id,
    tenantId: 't',
    name: id,
    kind: 'agent',
    capabilities: o.caps ?? [],
    maxConcurrentTasks: o.max ?? 4,
    costPerTask: o.cost ?? 0,
    metadata: {},
    status: 'online',
    connections: 1,
    lastSeenAt: null,
    registeredAt: '2026-01-01T00:00:00.000Z',
    version: 1,
  } satisfies Agent;
  return {
    agent,
    load: o.load ?? 0,
    stats: { successRate: o.success ?? null, meanCompletionMs: o.meanMs ?? null, samples: o.success === undefined ? 0 : 10 },
  };
}

const ids = (c: Candidate[], strategy: Parameters<typeof choose>[0], required: string[] = [], last: string | null = null) =>
  choose(strategy, required, c, last).agent.id;

test('least_loaded picks the lowest load relative to the limit, then the lower load, then the smaller id', () => {
  // 1/4 = 0.25 beats 1/2 = 0.5 and 2/4 = 0.5.
  assert.is(ids([cand('a', { load: 1, max: 2 }), cand('b', { load: 2, max: 4 }), cand('c', { load: 1, max: 4 })], 'least_loaded'), 'c');
  assert.is(ids([cand('b', { load: 1, max: 4 }), cand('a', { load: 1, max: 4 })], 'least_loaded'), 'a');
  assert.match(choose('least_loaded', [], [cand('x', { load: 1, max: 3 })], null).reason, /least_loaded: load 1\/3, the lowest of 1 eligible/);
});

test('round_robin walks the agents in id order and wraps around', () => {
  const c = [cand('c'), cand('a'), cand('b')];
  assert.is(ids(c, 'round_robin', [], null), 'a');
  assert.is(ids(c, 'round_robin', [], 'a'), 'b');
  assert.is(ids(c, 'round_robin', [], 'b'), 'c');
  assert.is(ids(c, 'round_robin', [], 'c'), 'a');
  assert.is(ids(c, 'round_robin', [], 'bb'), 'c', 'a departed agent id still moves the cursor forward');
});

test('capability_match prefers the specialist: required over own capabilities, ties by load', () => {
  const c = [cand('generalist', { caps: ['go', 'py', 'sql', 'ml'] }), cand('specialist', { caps: ['go', 'py'] }), cand('other', { caps: ['go', 'py', 'sql'] })];
  assert.is(ids(c, 'capability_match', ['go', 'py']), 'specialist');
  const tie = [cand('a', { caps: ['go'], load: 2 }), cand('b', { caps: ['py'], load: 1 })];
  assert.is(ids(tie, 'capability_match', []), 'b', 'without requirements every agent scores the same; the less loaded wins');
});

test('cost_optimized picks the cheapest, ties by load', () => {
  assert.is(ids([cand('a', { cost: 3 }), cand('b', { cost: 1.5 }), cand('c', { cost: 2 })], 'cost_optimized'), 'b');
  assert.is(ids([cand('a', { cost: 1, load: 3 }), cand('b', { cost: 1, load: 0 })], 'cost_optimized'), 'b');
  assert.match(choose('cost_optimized', [], [cand('z', { cost: 0.5 })], null).reason, /cost 0\.5 per task/);
});

test('performance_based weighs success 0.4, spare capacity 0.3 and speed 0.3', () => {
  // fast: 0.4*0.9 + 0.3*(1-0) + 0.3*(1000/1000) = 0.96
  // slow: 0.4*1.0 + 0.3*(1-0) + 0.3*(1000/4000) = 0.775
  // busy: 0.4*1.0 + 0.3*(1-0.75) + 0.3*1 = 0.775
  const c = [cand('slow', { success: 1, meanMs: 4000 }), cand('fast', { success: 0.9, meanMs: 1000 }), cand('busy', { success: 1, meanMs: 1000, load: 3 })];
  const r = choose('performance_based', [], c, null);
  assert.is(r.agent.id, 'fast');
  assert.match(r.reason, /score 0\.960 \(success 90% over 10/);
  // Without history an agent counts as 50% successful and average speed: 0.2 + 0.3 + 0.15 = 0.65.
  const fresh = [cand('new'), cand('poor', { success: 0.2, meanMs: 1000 })];
  // poor: 0.08 + 0.3 + 0.3 = 0.68 > 0.65
  assert.is(ids(fresh, 'performance_based'), 'poor');
});

test('every strategy is deterministic for the same input', () => {
  const c = [cand('a', { load: 1, cost: 2, caps: ['x'] }), cand('b', { load: 0, cost: 2, caps: ['x', 'y'] }), cand('c', { load: 0, cost: 1, caps: ['x'] })];
  for (const s of ['round_robin', 'least_loaded', 'capability_match', 'performance_based', 'cost_optimized'] as const) {
    assert.is(ids(c, s, ['x'], 'a'), ids([...c].reverse(), s, ['x'], 'a'), s);
  }
});

test.run();

// The step graph of a workflow definition as an ELK graph. Pure: no DOM.

import { FONTS } from './statechart.js';

/**
 * The steps each step waits for, as `machines/workflowGraph.ts` `dependencies()` computes them:
 * its `dependsOn`, or in a `sequential` workflow (without `dependsOn`) the step listed before it.
 *
 * @param {{ type: string, steps: { id: string, dependsOn?: string[] }[] }} def
 * @returns {Map<string, string[]>}
 */
export function stepDependencies(def) {
  const deps = new Map();
  def.steps.forEach((s, i) => {
    if (s.dependsOn) deps.set(s.id, [...s.dependsOn]);
    else deps.set(s.id, def.type === 'sequential' && i > 0 ? [def.steps[i - 1].id] : []);
  });
  return deps;
}

/** Colours of step statuses: waiting greys, running blues, approvals amber, done greens, failures reds. */
export const STEP_COLOURS = {
  pending: '#e5e7eb',
  queued: '#cbd5e1',
  running: '#93c5fd',
  awaiting_approval: '#fcd34d',
  retrying: '#fdba74',
  completed: '#86efac',
  failed: '#fca5a5',
  skipped: '#f3f4f6',
  compensating: '#c4b5fd',
  compensated: '#ddd6fe',
  cancelled: '#d6d3d1',
  timed_out: '#f9a8d4',
};

/**
 * The ELK graph of a definition's steps: one node per step (its id, name and action), one edge
 * per dependency, pointing from the step waited for to the step waiting.
 *
 * @param {{ type: string, steps: { id: string, name?: string, action?: string, dependsOn?: string[], approval?: unknown, when?: string }[] }} def
 * @param {(text: string, font: string) => number} measure
 */
export function dagGraph(def, measure) {
  const deps = stepDependencies(def);
  const ids = new Set(def.steps.map((s) => s.id));
  const steps = new Map();
  const children = def.steps.map((s) => {
    const lines = [s.name && s.name !== s.id ? s.name : null, s.approval ? 'approval' : s.action ?? null, s.when ? `when ${s.when}` : null]
      .filter((l) => l !== null)
      .map((l) => (l.length > 40 ? `${l.slice(0, 39)}…` : l));
    steps.set(s.id, { id: s.id, lines });
    const width = Math.ceil(Math.max(measure(s.id, FONTS.state) + 24, ...lines.map((l) => measure(l, FONTS.small) + 20), 120));
    return { id: `step:${s.id}`, width, height: 44 + lines.length * 14 };
  });
  const edges = [];
  for (const [id, ds] of deps) {
    for (const d of ds) if (ids.has(d)) edges.push({ id: `dep:${d}->${id}`, sources: [`step:${d}`], targets: [`step:${id}`] });
  }
  const graph = {
    id: '::root',
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.direction': 'RIGHT',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.layered.spacing.nodeNodeBetweenLayers': '48',
      'elk.spacing.nodeNode': '24',
      'elk.layered.considerModelOrder.strategy': 'NODES_AND_EDGES',
      'elk.padding': '[top=12,left=12,bottom=12,right=12]',
    },
    children,
    edges,
  };
  return { graph, steps, deps };
}

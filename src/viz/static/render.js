// Draws laid-out ELK graphs as SVG: statecharts (states, transitions, the active configuration)
// and workflow step graphs (steps coloured by status).

import { FONTS } from './statechart.js';
import { STEP_COLOURS } from './dag.js';

const NS = 'http://www.w3.org/2000/svg';

/**
 * An SVG element with attributes (and text).
 *
 * @param {string} tag
 * @param {Record<string, string | number>} [attrs]
 * @param {string} [text]
 */
function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

let canvas = null;

/** Width of a text in pixels, as the page's fonts draw it. */
export function measureText(text, font) {
  canvas ??= document.createElement('canvas').getContext('2d');
  canvas.font = font;
  return canvas.measureText(text).width;
}

/** An arrow head, defined once per SVG. */
function defs(svg, id) {
  const d = el('defs');
  const m = el('marker', { id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: 'userSpaceOnUse', orient: 'auto-start-reverse' });
  m.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow-head' }));
  d.append(m);
  svg.append(d);
}

/** The path of an ELK edge's sections (absolute coordinates). */
function edgePath(edge) {
  return (edge.sections ?? [])
    .map((s) => {
      const pts = [s.startPoint, ...(s.bendPoints ?? []), s.endPoint];
      return pts.map((p, i) => `${i === 0 ? 'M' : 'L'} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(' ');
    })
    .join(' ');
}

/** Every node of a laid-out ELK graph, parents before children. */
function flatten(node, out = []) {
  for (const c of node.children ?? []) {
    out.push(c);
    flatten(c, out);
  }
  return out;
}

/** Every edge of a laid-out ELK graph, wherever ELK put it in the hierarchy. */
function allEdges(node, out = []) {
  out.push(...(node.edges ?? []));
  for (const c of node.children ?? []) allEdges(c, out);
  return out;
}

/**
 * Draws a laid-out statechart. States are `g.state[data-state-id]`, transitions
 * `g.transition[data-source][data-target][data-events]`.
 *
 * @param {any} layout the ELK output of `statechartGraph(...).graph` (root coordinates)
 * @param {ReturnType<import('./statechart.js').statechartGraph>} chart
 * @returns {SVGSVGElement}
 */
export function drawStatechart(layout, chart) {
  const svg = el('svg', { class: 'statechart', viewBox: `0 0 ${Math.ceil(layout.width)} ${Math.ceil(layout.height)}`, role: 'img' });
  svg.dataset.machine = chart.machineId;
  svg.dataset.width = String(Math.ceil(layout.width));
  svg.dataset.height = String(Math.ceil(layout.height));
  svg.append(el('title', {}, `State machine ${chart.machineId}`));
  const marker = `arrow-${chart.machineId}`;
  defs(svg, marker);
  const compounds = el('g', { class: 'layer-compound' });
  const edgesLayer = el('g', { class: 'layer-edges' });
  const atoms = el('g', { class: 'layer-states' });
  const labels = el('g', { class: 'layer-labels' });
  svg.append(compounds, edgesLayer, atoms, labels);

  for (const n of flatten(layout)) {
    const info = chart.nodes.get(n.id);
    if (!info) continue;
    if (info.initialMarker) {
      atoms.append(el('circle', { class: 'initial', cx: n.x + n.width / 2, cy: n.y + n.height / 2, r: 5 }));
      continue;
    }
    const g = el('g', { class: `state ${info.compound ? 'compound' : 'atomic'} type-${info.type}` });
    g.dataset.stateId = info.id;
    g.dataset.path = info.path;
    const title = info.path || chart.machineId;
    const notes = [title];
    if (info.internal.length) notes.push(`↻ stays on: ${info.internal.join(', ')}`);
    if (info.decided.length) notes.push(`⇉ the outcome picks the next state (one of the arrows): ${info.decided.join(', ')}`);
    g.append(el('title', {}, notes.join('\n')));
    g.append(el('rect', { class: 'box', x: n.x, y: n.y, width: n.width, height: n.height, rx: info.compound ? 10 : 8 }));
    if (info.type === 'final') g.append(el('rect', { class: 'final-ring', x: n.x + 3, y: n.y + 3, width: n.width - 6, height: n.height - 6, rx: 6 }));
    g.append(el('text', { class: 'state-name', x: n.x + 10, y: n.y + 18 }, info.key));
    info.internalLines.forEach((line, i) => g.append(el('text', { class: 'internal', x: n.x + 10, y: n.y + 34 + i * 14 }, line)));
    (info.compound ? compounds : atoms).append(g);
  }

  for (const e of allEdges(layout)) {
    const info = chart.edges.get(e.id);
    if (!info) continue;
    const g = el('g', { class: `transition${info.initial ? ' initial-edge' : ''}` });
    g.dataset.source = info.source;
    g.dataset.target = info.target;
    g.dataset.events = info.events.map((x) => x.event).join(' ');
    if (!info.initial) g.append(el('title', {}, info.events.map((x) => x.event + (x.guard ? ` [${x.guard}]` : '') + (x.decided ? ' (if its outcome is this state)' : '')).join('\n')));
    g.append(el('path', { d: edgePath(e), 'marker-end': `url(#${marker})` }));
    edgesLayer.append(g);
    for (const l of e.labels ?? []) {
      const lg = el('g', { class: 'edge-label' });
      lg.dataset.edge = info.id;
      lg.append(el('rect', { x: l.x, y: l.y, width: l.width, height: l.height, rx: 3 }));
      info.lines.forEach((line, i) => lg.append(el('text', { x: l.x + 4, y: l.y + 12 + i * 13 }, line)));
      labels.append(lg);
    }
  }
  return svg;
}

/**
 * Marks the active states: `data-active="current"` on the innermost ones, `"ancestor"` on the
 * compound states around them; and `data-taken` on the transitions the last event took: from a
 * state active before it to one active after it, naming it.
 *
 * @param {SVGSVGElement} svg
 * @param {string[]} active ids, outermost first
 * @param {{ event: string, before: string[] } | null} last the event that led here and the states active before it
 */
export function markActive(svg, active, last) {
  const set = new Set(active);
  const leaves = new Set(active.filter((id) => !active.some((o) => o !== id && o.startsWith(`${id}.`))));
  for (const g of svg.querySelectorAll('g.state')) {
    const id = g.dataset.stateId;
    // The machine itself is always active: tinting its box would tint the whole chart.
    if (g.dataset.path === '') continue;
    if (leaves.has(id)) g.dataset.active = 'current';
    else if (set.has(id)) g.dataset.active = 'ancestor';
    else delete g.dataset.active;
  }
  const before = new Set(last?.before ?? []);
  const takenEdges = new Set();
  for (const g of svg.querySelectorAll('g.transition')) {
    const taken = last !== null && before.has(g.dataset.source) && set.has(g.dataset.target) && g.dataset.events.split(' ').includes(last.event);
    if (taken) {
      g.dataset.taken = 'true';
      takenEdges.add(`${g.dataset.source}->${g.dataset.target}`);
    } else delete g.dataset.taken;
  }
  for (const g of svg.querySelectorAll('g.edge-label')) g.classList.toggle('taken', takenEdges.has(g.dataset.edge));
}

/**
 * Draws a laid-out step graph; steps are `g.step[data-step-id][data-status]`.
 *
 * @param {any} layout ELK output of `dagGraph(...).graph`
 * @param {ReturnType<import('./dag.js').dagGraph>} dag
 */
export function drawDag(layout, dag) {
  const svg = el('svg', { class: 'dag', viewBox: `0 0 ${Math.ceil(layout.width)} ${Math.ceil(layout.height)}`, role: 'img' });
  svg.dataset.width = String(Math.ceil(layout.width));
  svg.dataset.height = String(Math.ceil(layout.height));
  svg.append(el('title', {}, 'Workflow steps'));
  defs(svg, 'arrow-dag');
  const edges = el('g', { class: 'layer-edges' });
  const nodes = el('g', { class: 'layer-steps' });
  svg.append(edges, nodes);
  for (const e of layout.edges ?? []) {
    const g = el('g', { class: 'dependency' });
    g.append(el('path', { d: edgePath(e), 'marker-end': 'url(#arrow-dag)' }));
    edges.append(g);
  }
  for (const n of layout.children ?? []) {
    const id = n.id.slice('step:'.length);
    const info = dag.steps.get(id);
    const g = el('g', { class: 'step' });
    g.dataset.stepId = id;
    g.append(el('title', {}, id));
    g.append(el('rect', { class: 'box', x: n.x, y: n.y, width: n.width, height: n.height, rx: 8 }));
    g.append(el('text', { class: 'step-name', x: n.x + 10, y: n.y + 18 }, id));
    info.lines.forEach((line, i) => g.append(el('text', { class: 'step-line', x: n.x + 10, y: n.y + 33 + i * 14 }, line)));
    g.append(el('text', { class: 'step-status', x: n.x + 10, y: n.y + n.height - 8 }, ''));
    nodes.append(g);
  }
  return svg;
}

/**
 * Colours each step by its status (`data-status`, and the fill of its box).
 *
 * @param {SVGSVGElement} svg
 * @param {Map<string, { status: string, attempt?: number }>} runs by step id
 */
export function markSteps(svg, runs) {
  for (const g of svg.querySelectorAll('g.step')) {
    const run = runs.get(g.dataset.stepId);
    const status = run?.status ?? 'unknown';
    g.dataset.status = status;
    g.querySelector('rect.box').style.fill = STEP_COLOURS[status] ?? '#ffffff';
    g.querySelector('text.step-status').textContent = run ? `${status.replace(/_/g, ' ')}${run.attempt > 1 ? ` · attempt ${run.attempt}` : ''}` : '';
  }
}

export { FONTS };

// Turns XState machine JSON (`machine.toJSON()`, as GET /machines serves it) into an ELK graph,
// and tells which of its states a state value makes active. Pure: no DOM, text widths come from
// the `measure` function the caller passes, so it runs in the page and in Node alike.

/** Fonts the renderer draws with; sizes are computed with the same ones. */
export const FONTS = {
  state: '600 13px system-ui, sans-serif',
  small: '11px system-ui, sans-serif',
  label: '11px system-ui, sans-serif',
};

const LINE = 14;
const HEADER = 26;
const LABEL_WRAP = 38;

/**
 * True when a guard only says "the outcome is this target": its single parameter names the
 * target state, as the execution machine's `leadsTo(phase)` does (one transition per possible
 * target). The arrow already says that much.
 *
 * @param {unknown} guard
 * @param {string} targetKey
 */
export function guardNamesTarget(guard, targetKey) {
  if (!guard || typeof guard !== 'object' || typeof guard.type !== 'string') return false;
  const values = guard.params && typeof guard.params === 'object' ? Object.values(guard.params) : [];
  return values.length === 1 && values[0] === targetKey;
}

/**
 * The text of a guard as an edge shows it (`name` or `name(param)`), or '' when there is none or
 * the arrow already says it (see {@link guardNamesTarget}).
 *
 * @param {unknown} guard
 * @param {string} targetKey
 */
export function guardText(guard, targetKey) {
  if (guard === undefined || guard === null) return '';
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'object' && typeof guard.type === 'string') {
    if (guardNamesTarget(guard, targetKey)) return '';
    const values = guard.params && typeof guard.params === 'object' ? Object.values(guard.params) : [];
    if (values.length === 0) return guard.type;
    return `${guard.type}(${values.map((v) => (typeof v === 'string' ? v : JSON.stringify(v))).join(', ')})`;
  }
  return 'guard';
}

/**
 * Entries wrapped into lines, the first marked with `mark`, the others indented under it.
 *
 * @param {string} mark
 * @param {string[]} entries
 */
function marked(mark, entries) {
  return wrap(entries, 42).map((line, i) => (i === 0 ? `${mark} ${line}` : `   ${line}`));
}

/** An event whose transitions name this many targets by guard is one whose outcome picks the state. */
const FAN_OUT = 3;

/**
 * An event name without the machine's own prefix (`task.accept` → `accept` in the task machine).
 *
 * @param {string} machineId
 * @param {string} event
 */
export function shortEvent(machineId, event) {
  return event.startsWith(`${machineId}.`) ? event.slice(machineId.length + 1) : event;
}

/**
 * Entries joined with commas into lines of about `width` characters.
 *
 * @param {string[]} entries
 */
function wrap(entries, width = LABEL_WRAP) {
  const lines = [];
  let line = '';
  for (const e of entries) {
    if (line && line.length + e.length + 2 > width) {
      lines.push(`${line},`);
      line = e;
    } else line = line ? `${line}, ${e}` : e;
  }
  if (line) lines.push(line);
  return lines;
}

/**
 * The ELK graph of a machine, and what the renderer needs to draw it.
 *
 * States become nodes (compound states contain their children), each initial state gets a dot
 * pointing at it, and transitions become edges. Transitions that stay in their state (no target,
 * or the state itself) are listed inside the state (↻) instead of looping around it; transitions
 * between the same two states are merged into one edge listing every event (with its guard).
 * An event with a transition to each of several states, guarded by a guard that names the target
 * (the execution machine's `leadsTo(phase)`), is listed once inside its source state (⇉): its
 * outcome decides which of the arrows it takes.
 *
 * @param {any} machine machine JSON
 * @param {(text: string, font: string) => number} measure width of a text in pixels
 * @param {{ direction?: 'DOWN' | 'RIGHT' }} [options]
 */
export function statechartGraph(machine, measure, options = {}) {
  const machineId = machine.id;
  /** @type {Map<string, any>} state id → drawing info */
  const nodes = new Map();
  /** @type {Map<string, string>} key path (`live.assigned`) → state id */
  const byPath = new Map();
  /** @type {Map<string, { id: string, source: string, target: string, events: { event: string, guard: string }[], lines: string[] }>} */
  const edges = new Map();
  const textWidth = (lines, font) => Math.max(0, ...lines.map((l) => measure(l, font)));
  const layoutOptions = {
    'elk.algorithm': 'layered',
    'elk.direction': options.direction ?? 'DOWN',
    'elk.hierarchyHandling': 'INCLUDE_CHILDREN',
    'elk.edgeRouting': 'ORTHOGONAL',
    // Depth first keeps the states in the order a run visits them (pending, assigned, accepted...).
    'elk.layered.cycleBreaking.strategy': 'DEPTH_FIRST',
    'elk.layered.spacing.nodeNodeBetweenLayers': '36',
    'elk.layered.spacing.edgeNodeBetweenLayers': '18',
    'elk.spacing.nodeNode': '28',
    'elk.spacing.edgeEdge': '10',
    'elk.spacing.edgeNode': '14',
    'elk.spacing.edgeLabel': '3',
    'elk.layered.nodePlacement.strategy': 'NETWORK_SIMPLEX',
    'elk.json.edgeCoords': 'ROOT',
    'elk.json.shapeCoords': 'ROOT',
  };

  /** Every state by id, to resolve targets (`#task.live.assigned`). */
  const all = new Map();
  const index = (n) => {
    all.set(n.id, n);
    for (const c of Object.values(n.states ?? {})) index(c);
  };
  index(machine);

  // Served JSON names targets `#<id>`; an in-memory `toJSON()` may still hold the state nodes.
  const targetId = (t) => (typeof t === 'string' ? (t.startsWith('#') ? t.slice(1) : t) : t?.id);

  function build(state, path) {
    const children = Object.values(state.states ?? {});
    const internal = [];
    const moves = [];
    /** Per event, how many of its transitions have a guard that just names the target. */
    const fans = new Map();
    for (const t of state.transitions ?? []) {
      const targets = (t.target ?? []).map(targetId);
      const targetKey = targets.length === 1 ? (all.get(targets[0])?.key ?? '') : '';
      const guard = guardText(t.guard, targetKey);
      if (guardNamesTarget(t.guard, targetKey)) fans.set(t.eventType, (fans.get(t.eventType) ?? 0) + 1);
      if (targets.length === 0 || (targets.length === 1 && targets[0] === state.id)) {
        const text = shortEvent(machineId, t.eventType) + (guard ? ` [${guard}]` : '');
        internal.push({ event: t.eventType, text });
      } else moves.push({ event: t.eventType, guard, targets });
    }
    // Events whose outcome picks among many states are listed once in the state (⇉) and leave
    // their arrows unlabelled: labelling every arrow with the same events only hides the chart.
    const decided = [...fans].filter(([, n]) => n >= FAN_OUT).map(([event]) => event);
    for (const m of moves) {
      for (const target of m.targets) {
        const id = `${state.id}->${target}`;
        let e = edges.get(id);
        if (!e) edges.set(id, (e = { id, source: state.id, target, events: [], lines: [] }));
        if (!e.events.some((x) => x.event === m.event && x.guard === m.guard)) {
          e.events.push({ event: m.event, guard: m.guard, decided: decided.includes(m.event) });
        }
      }
    }
    const stays = [...new Set(internal.filter((i) => !decided.includes(i.event)).map((i) => i.text))];
    const internalLines = [...marked('↻', stays), ...marked('⇉', decided.map((e) => shortEvent(machineId, e)))];
    const info = {
      id: state.id,
      key: state.key,
      path,
      type: state.type,
      compound: children.length > 0,
      internal: stays,
      decided,
      internalLines,
      depth: path ? path.split('.').length : 0,
    };
    nodes.set(state.id, info);
    byPath.set(path, state.id);
    const headerHeight = HEADER + internalLines.length * LINE;
    const width = Math.ceil(Math.max(textWidth([state.key], FONTS.state) + 28, textWidth(internalLines, FONTS.small) + 20, 84));
    const node = {
      id: state.id,
      labels: [],
      layoutOptions: {},
    };
    if (children.length > 0) {
      node.children = children.map((c) => build(c, path ? `${path}.${c.key}` : c.key));
      // With INCLUDE_CHILDREN the layered phases read their settings from each compound node.
      Object.assign(node.layoutOptions, layoutOptions);
      node.layoutOptions['elk.padding'] = `[top=${headerHeight + 8},left=14,bottom=14,right=14]`;
      node.layoutOptions['elk.nodeSize.minimum'] = `(${width}, ${headerHeight + 20})`;
      node.layoutOptions['elk.nodeSize.constraints'] = 'MINIMUM_SIZE';
      info.headerHeight = headerHeight;
      const initial = (state.initial?.target ?? []).map(targetId)[0];
      if (initial) {
        const dot = `${state.id}::initial`;
        node.children.unshift({ id: dot, width: 12, height: 12 });
        nodes.set(dot, { id: dot, initialMarker: true, depth: info.depth + 1 });
        edges.set(`${dot}->${initial}`, { id: `${dot}->${initial}`, source: dot, target: initial, events: [], lines: [], initial: true });
      }
    } else {
      node.width = width;
      node.height = headerHeight + (internalLines.length ? 6 : 0);
    }
    return node;
  }

  const root = build(machine, '');
  const elkEdges = [];
  for (const e of edges.values()) {
    e.lines = e.initial ? [] : wrap(e.events.filter((x) => !x.decided).map((x) => shortEvent(machineId, x.event) + (x.guard ? ` [${x.guard}]` : '')));
    const edge = { id: e.id, sources: [e.source], targets: [e.target] };
    if (e.lines.length) {
      edge.labels = [{ id: `${e.id}::label`, layoutOptions: { 'elk.edgeLabels.inline': 'true' }, text: e.lines.join('\n'), width: Math.ceil(textWidth(e.lines, FONTS.label) + 8), height: e.lines.length * 13 + 4 }];
    }
    elkEdges.push(edge);
  }
  const graph = {
    id: '::root',
    layoutOptions: { ...layoutOptions, 'elk.padding': '[top=8,left=8,bottom=8,right=8]' },
    children: [root],
    edges: elkEdges,
  };
  return { graph, nodes, edges, byPath, machineId };
}

/**
 * The ids of the states a state value makes active, outermost first (the machine itself too).
 *
 * @param {{ byPath: Map<string, string> }} chart from {@link statechartGraph}
 * @param {unknown} value an XState state value: `'pending'` or `{ live: 'assigned' }`
 * @returns {string[]}
 */
export function activeStates(chart, value) {
  const out = [];
  const add = (path) => {
    const id = chart.byPath.get(path);
    if (id) out.push(id);
  };
  add('');
  const walk = (prefix, v) => {
    if (typeof v === 'string') add(prefix ? `${prefix}.${v}` : v);
    else if (v && typeof v === 'object') {
      for (const [k, child] of Object.entries(v)) {
        const p = prefix ? `${prefix}.${k}` : k;
        add(p);
        walk(p, child);
      }
    }
  };
  walk('', value);
  return out;
}

// The visualiser page: draws every machine kind, lets the user pick an actor of their tenant,
// highlights its state, follows it live and steps back through its timeline. Everything it
// knows about actors comes from `/v1` (JSON-RPC) with the user's key; the machines from
// GET /machines.

import { dagGraph, STEP_COLOURS } from './dag.js';
import { layout, warmUp } from './layout.js';
import { drawDag, drawStatechart, markActive, markSteps, measureText } from './render.js';
import { FINAL_CLOSE_CODES, RpcConnection } from './rpc.js';
import { activeStates, statechartGraph } from './statechart.js';
import { VirtualList } from './virtualList.js';

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));
const KEY_STORAGE = 'troupe.viz.key';
const PAGE = 100;
/** Kinds of which each tenant has one actor, named `tenant`. */
const SINGLETONS = new Set(['fieldpolicy', 'quota', 'ratelimit']);

/** How the picker lists each kind: the method, whether it searches, and a row per item. */
const PICKERS = {
  task: { method: 'task.search', search: 'query', row: (t) => ({ id: t.id, title: t.title, status: t.status }) },
  execution: { method: 'execution.list', row: (x) => ({ id: x.id, title: x.workflowName, status: x.status }) },
  agent: { method: 'agent.list', row: (a) => ({ id: a.id, title: a.name || a.id, status: a.status }) },
  workflow: { method: 'workflow.list', search: 'query', row: (w) => ({ id: w.id, title: w.name, status: `v${w.version}` }) },
  rule: { method: 'rule.list', row: (r) => ({ id: r.id, title: r.name, status: r.enabled ? 'enabled' : 'disabled' }) },
  template: { method: 'template.list', row: (t) => ({ id: t.id, title: t.name, status: t.category }) },
  policy: { method: 'policy.list', paged: false, row: (p) => ({ id: p.taskType, title: p.taskType === '*' ? 'tenant default (*)' : p.taskType, status: `v${p.version}` }) },
};

const state = {
  /** @type {RpcConnection | null} */
  conn: null,
  key: null,
  principal: null,
  signingOut: false,
  reconnectMs: 500,
  /** Machine JSON by kind. */
  machines: {},
  /** @type {Map<string, Promise<{ chart: any, layout: any }>>} */
  charts: new Map(),
  /** The kind whose chart is drawn, and its SVG. */
  shownKind: null,
  svg: null,
  /** null: readable (fit unless that shrinks text much); 'fit': the whole chart; else a scale. */
  zoom: null,
  /** The actor shown (see openActor). */
  actor: null,
  openSeq: 0,
  viewSeq: 0,
  picker: { kind: 'task', cursor: null, done: false, loading: false, seq: 0 },
  dagKey: null,
};

// ------------------------------------------------------------------------------------------
// Status and messages

function setStatus(kind, text) {
  const s = $('conn-status');
  s.dataset.state = kind;
  s.textContent = text;
}

function showMessage(text) {
  const m = $('message');
  m.textContent = text ?? '';
  m.hidden = !text;
}

// ------------------------------------------------------------------------------------------
// Connection

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1`;
}

function signedOutView(reason) {
  $('picker-count').textContent = 'Enter a key of your tenant to list its actors.';
  $('key-form').hidden = false;
  $('sign-out').hidden = true;
  $('whoami').textContent = '';
  setStatus('signed-out', reason || 'not signed in');
}

async function connect(key) {
  state.key = key;
  setStatus('connecting', 'connecting…');
  let conn;
  try {
    conn = await RpcConnection.open(wsUrl(), key);
  } catch (e) {
    // A refused key is final; anything else (server away, store unavailable) is worth a retry.
    if (e?.reason === 'UNAUTHENTICATED' || e?.reason === 'FORBIDDEN') {
      sessionStorage.removeItem(KEY_STORAGE);
      state.key = null;
      signedOutView(`refused: ${e.message}`);
    } else retryLater();
    return;
  }
  state.conn = conn;
  state.reconnectMs = 500;
  state.principal = conn.principal;
  sessionStorage.setItem(KEY_STORAGE, key);
  conn.onNotification = onNotification;
  conn.onClose = (code, reason) => {
    if (state.conn !== conn) return;
    state.conn = null;
    if (state.actor) state.actor.subscriptionId = null;
    if (state.signingOut) return;
    if (FINAL_CLOSE_CODES.has(code)) {
      sessionStorage.removeItem(KEY_STORAGE);
      signedOutView(`disconnected: ${reason || code}`);
    } else retryLater(reason);
  };
  const p = conn.principal;
  $('whoami').textContent = `${p.principalId} · ${p.tenantId} · ${p.roles.join(', ')}`;
  $('key-form').hidden = true;
  $('sign-out').hidden = false;
  setStatus('connected', 'live');
  reloadPicker();
  if (state.actor) void openActor(state.actor.kind, state.actor.id, state.actor.following ? null : state.actor.shown?.version ?? null);
  else route();
}

function retryLater(reason) {
  const delay = state.reconnectMs;
  state.reconnectMs = Math.min(10_000, delay * 2);
  setStatus('reconnecting', `reconnecting${reason ? ` (${reason})` : ''}…`);
  setTimeout(() => {
    if (state.key && !state.conn && !state.signingOut) void connect(state.key);
  }, delay);
}

function call(method, params) {
  if (!state.conn) return Promise.reject(new Error('Not connected; enter a key first.'));
  return state.conn.call(method, params);
}

function canReadTenant() {
  return state.principal?.roles.some((r) => r === 'admin' || r === 'observer') ?? false;
}

// ------------------------------------------------------------------------------------------
// Machines and charts

async function loadMachines() {
  const res = await fetch('/machines');
  state.machines = await res.json();
  const list = $('machine-list');
  const openKind = /** @type {HTMLSelectElement} */ ($('open-kind'));
  list.replaceChildren();
  openKind.replaceChildren();
  for (const kind of Object.keys(state.machines)) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = kind;
    b.dataset.kind = kind;
    b.addEventListener('click', () => {
      closeActor();
      history.replaceState(null, '', `#/machine/${kind}`);
      void showMachine(kind);
    });
    li.append(b);
    list.append(li);
    const o = document.createElement('option');
    o.value = kind;
    o.textContent = kind;
    openKind.append(o);
  }
}

/** The laid-out chart of a kind, computed once. */
function chartOf(kind) {
  let p = state.charts.get(kind);
  if (!p) {
    const chart = statechartGraph(state.machines[kind], measureText);
    p = layout(chart.graph).then((l) => ({ chart, layout: l }));
    state.charts.set(kind, p);
    // A failed layout is tried again next time.
    p.catch(() => state.charts.delete(kind));
  }
  return p;
}

async function showMachine(kind) {
  if (!state.machines[kind]) {
    showMessage(`There is no machine of kind ${kind}.`);
    return null;
  }
  for (const b of document.querySelectorAll('#machine-list button')) b.setAttribute('aria-current', String(b.dataset.kind === kind));
  if (state.shownKind === kind && state.svg) return chartOf(kind);
  state.shownKind = kind;
  let c;
  try {
    c = await chartOf(kind);
  } catch (e) {
    if (state.shownKind === kind) state.shownKind = null;
    showMessage(e.message);
    return null;
  }
  if (state.shownKind !== kind) return c;
  state.svg = drawStatechart(c.layout, c.chart);
  $('chart').replaceChildren(state.svg);
  $('chart').dataset.kind = kind;
  applyZoom();
  if (!state.actor) {
    $('actor-title').textContent = `Machine ${kind}`;
    $('actor-status').hidden = true;
    $('actor-version').textContent = '';
  }
  return c;
}

function applyZoom() {
  for (const [box, svg] of [[$('chart'), state.svg], [$('dag'), $('dag').querySelector('svg')]]) {
    if (!svg) continue;
    const w = Number(svg.dataset.width);
    const h = Number(svg.dataset.height);
    const fit = Math.max(0.2, Math.min(1, (box.clientWidth - 8) / w, box === $('chart') ? (box.clientHeight - 8) / h : 1));
    // Until the user zooms, a large chart stays readable (scrolling) rather than shrinking to fit.
    const scale = box !== $('chart') ? Math.max(fit, 0.6) : state.zoom === 'fit' ? fit : (state.zoom ?? Math.max(fit, 0.8));
    svg.style.width = `${Math.round(w * scale)}px`;
    svg.style.height = `${Math.round(h * scale)}px`;
  }
}

/** Scrolls the chart so that a state is well inside the view (centred when it was not). */
function reveal(g) {
  if (!g) return;
  const box = $('chart');
  const view = box.getBoundingClientRect();
  const r = g.getBoundingClientRect();
  const margin = 40;
  if (r.left >= view.left + margin && r.right <= view.right - margin && r.top >= view.top + margin && r.bottom <= view.bottom - margin) return;
  box.scrollBy({ left: r.left + r.width / 2 - (view.left + view.width / 2), top: r.top + r.height / 2 - (view.top + view.height / 2) });
}

function zoomBy(factor) {
  const svg = state.svg;
  if (!svg) return;
  const current = parseFloat(svg.style.width) / Number(svg.dataset.width);
  state.zoom = Math.max(0.2, Math.min(3, current * factor));
  applyZoom();
}

// ------------------------------------------------------------------------------------------
// The picker

const pickerList = new VirtualList($('picker-list'), {
  rowHeight: 44,
  key: (r) => r.id,
  render(r) {
    const row = document.createElement('div');
    row.className = 'pick-row';
    row.dataset.id = r.id;
    const title = document.createElement('div');
    title.className = 'pick-title';
    title.textContent = r.title;
    const meta = document.createElement('div');
    meta.className = 'pick-meta';
    const pill = document.createElement('span');
    pill.className = 'pill';
    pill.dataset.status = r.status;
    pill.textContent = r.status;
    const id = document.createElement('span');
    id.className = 'mono muted';
    id.textContent = r.id;
    meta.append(pill, id);
    row.append(title, meta);
    row.title = `${r.title}\n${r.id}`;
    return row;
  },
  onEnd: () => void loadPage(),
  onPick: (r) => void openActor(state.picker.kind, r.id),
});

function reloadPicker() {
  const kind = /** @type {HTMLSelectElement} */ ($('picker-kind')).value;
  const p = state.picker;
  p.kind = kind;
  p.cursor = null;
  p.done = false;
  p.loading = false;
  p.seq++;
  const search = /** @type {HTMLInputElement} */ ($('picker-search'));
  search.disabled = !PICKERS[kind].search;
  pickerList.setItems([]);
  $('picker-count').textContent = '';
  void loadPage();
}

async function loadPage() {
  const p = state.picker;
  if (p.loading || p.done || !state.conn) return;
  const spec = PICKERS[p.kind];
  const seq = p.seq;
  p.loading = true;
  const params = spec.paged === false ? {} : { limit: PAGE, ...(p.cursor ? { cursor: p.cursor } : {}) };
  const q = /** @type {HTMLInputElement} */ ($('picker-search')).value.trim();
  if (spec.search && q) params[spec.search] = q;
  try {
    const r = await call(spec.method, params);
    if (seq !== p.seq) return;
    pickerList.append(r.items.map(spec.row));
    p.cursor = r.nextCursor ?? null;
    p.done = !p.cursor;
    const n = pickerList.items.length;
    const noun = n === 1 ? p.kind : p.kind === 'policy' ? 'policies' : `${p.kind}s`;
    $('picker-count').textContent = `${n}${p.done ? '' : '+'} ${noun}`;
    if (state.actor?.kind === p.kind) pickerList.select(state.actor.id);
  } catch (e) {
    if (seq === p.seq) $('picker-count').textContent = e.message;
  } finally {
    if (seq === p.seq) p.loading = false;
  }
}

// ------------------------------------------------------------------------------------------
// The actor shown

const timeline = new VirtualList($('timeline'), {
  rowHeight: 40,
  key: (e) => String(e.version),
  render(e) {
    const row = document.createElement('div');
    row.className = 'event-row';
    row.dataset.version = String(e.version);
    row.dataset.type = e.type;
    const top = document.createElement('div');
    const v = document.createElement('span');
    v.className = 'mono muted';
    v.textContent = `v${e.version} `;
    const t = document.createElement('span');
    t.className = 'event-type';
    t.textContent = e.type;
    top.append(v, t);
    const bottom = document.createElement('div');
    bottom.className = 'muted small';
    bottom.textContent = `→ ${e.status ?? '?'} · ${e.principal} · ${new Date(e.at).toLocaleTimeString()}`;
    row.append(top, bottom);
    return row;
  },
  onPick: (e) => void stepTo(e.version),
});

function closeActor() {
  const a = state.actor;
  state.openSeq++;
  state.actor = null;
  if (a?.subscriptionId && state.conn) void call('unsubscribe', { subscriptionId: a.subscriptionId }).catch(() => undefined);
  timeline.setItems([]);
  $('event-data').textContent = '';
  $('resource').textContent = '';
  $('resource-note').textContent = '';
  $('timeline-note').textContent = '';
  $('follow').hidden = true;
  $('dag-section').hidden = true;
  state.dagKey = null;
  showMessage(null);
  if (state.svg) markActive(state.svg, [], null);
}

/**
 * Shows an actor: its state now (or at `version`), its timeline, and from then on every event
 * it gets. The subscription resumes from the last event the inspection returned, so nothing
 * that happens in between is missed.
 */
async function openActor(kind, id, version = null) {
  closeActor();
  const seq = state.openSeq;
  const a = {
    kind,
    id,
    events: [],
    head: 0,
    lastPosition: 0,
    topic: null,
    subscriptionId: null,
    following: version === null,
    shown: null,
    truncated: false,
    liveNote: '',
    refreshing: false,
    dirty: false,
  };
  state.actor = a;
  history.replaceState(null, '', `#/${kind}/${encodeURIComponent(id)}`);
  $('actor-title').textContent = `${kind} ${id}`;
  $('actor-status').hidden = true;
  $('actor-version').textContent = 'loading…';
  if (state.picker.kind === kind) pickerList.select(id);
  await showMachine(kind);
  let r;
  try {
    r = await call('actor.inspect', { kind, id });
  } catch (e) {
    if (seq !== state.openSeq) return;
    state.actor = null;
    $('actor-version').textContent = '';
    showMessage(`Could not open ${kind} ${id}: ${e.message}`);
    return;
  }
  if (seq !== state.openSeq) return;
  takeEvents(a, r);
  if (version === null || version >= r.headVersion) display(r);
  else void stepTo(version);
  await subscribe(a, seq);
}

async function subscribe(a, seq) {
  // The actor's own topic where the server has one (tasks, agents, executions...); else the
  // tenant feed, which only admins and observers may follow.
  const topics = [`${a.kind}:${a.id}`, ...(canReadTenant() ? ['tenant'] : [])];
  for (const topic of topics) {
    try {
      const r = await call('subscribe', { topic, ...(a.lastPosition > 0 ? { fromPosition: a.lastPosition } : {}) });
      if (seq !== state.openSeq) {
        void call('unsubscribe', { subscriptionId: r.subscriptionId }).catch(() => undefined);
        return;
      }
      a.topic = topic;
      a.subscriptionId = r.subscriptionId;
      a.liveNote = topic === 'tenant' ? 'live from the tenant feed' : '';
      renderTimeline();
      showVersion(a);
      return;
    } catch (e) {
      if (seq !== state.openSeq) return;
      if (e.reason !== 'INVALID_PARAMS') {
        a.liveNote = `not live: ${e.message}`;
        renderTimeline();
        return;
      }
    }
  }
  a.liveNote = 'not live for this kind: reopen it to refresh';
  renderTimeline();
}

/** Takes the events of a head inspection as the timeline. */
function takeEvents(a, r) {
  if (r.headVersion < a.head) return;
  a.events = r.events.slice();
  a.head = r.headVersion;
  a.truncated = r.truncated;
  const last = r.events[r.events.length - 1];
  if (last) a.lastPosition = Math.max(a.lastPosition, last.position);
  renderTimeline();
}

function renderTimeline() {
  const a = state.actor;
  if (!a) return;
  timeline.setItems(a.events);
  const first = a.events[0]?.version ?? 1;
  const count = a.truncated ? `the last ${a.events.length} events, from v${first}` : `${a.events.length} events`;
  $('timeline-note').textContent = `(${count}${a.liveNote ? `; ${a.liveNote}` : ''})`;
}

function onNotification(method, params) {
  const a = state.actor;
  if (!a) return;
  if (method === 'subscription.overflow' && params.subscriptionId === a.subscriptionId) {
    // Dropped for falling behind: resume where the last event we saw left off.
    a.subscriptionId = null;
    a.lastPosition = Math.max(a.lastPosition, params.lastPosition ?? 0);
    void subscribe(a, state.openSeq);
    return;
  }
  if (method !== 'subscription.event' || params.topic !== a.topic) return;
  a.lastPosition = Math.max(a.lastPosition, params.position ?? 0);
  const e = params.event;
  if (!e || e.kind !== a.kind || e.actorId !== a.id || e.version <= a.head) return;
  a.events.push(e);
  if (a.events.length > 1000) {
    a.events.shift();
    a.truncated = true;
  }
  a.head = e.version;
  renderTimeline();
  if (a.following) refresh(a);
  else showVersion(a);
}

/** Re-reads the actor at its head; calls made while one runs are merged into one more. */
function refresh(a) {
  if (a.refreshing) {
    a.dirty = true;
    return;
  }
  a.refreshing = true;
  void (async () => {
    try {
      do {
        a.dirty = false;
        const seq = ++state.viewSeq;
        const r = await call('actor.inspect', { kind: a.kind, id: a.id });
        if (state.actor !== a || seq !== state.viewSeq || !a.following) continue;
        takeEvents(a, r);
        display(r);
      } while (a.dirty && state.actor === a);
    } catch (e) {
      if (state.actor === a) showMessage(e.message);
    } finally {
      a.refreshing = false;
    }
  })();
}

/** Shows the state after event `version` (the head follows new events live). */
async function stepTo(version) {
  const a = state.actor;
  if (!a || a.head === 0) return;
  const v = Math.max(1, Math.min(a.head, version));
  a.following = v === a.head;
  const seq = ++state.viewSeq;
  try {
    const r = await call('actor.inspect', a.following ? { kind: a.kind, id: a.id } : { kind: a.kind, id: a.id, version: v });
    if (state.actor !== a || seq !== state.viewSeq) return;
    if (a.following) takeEvents(a, r);
    display(r);
  } catch (e) {
    if (state.actor === a) showMessage(e.message);
  }
}

function showVersion(a) {
  const r = a.shown;
  if (!r) return;
  $('actor-version').textContent = a.following ? `v${r.version} · ${a.subscriptionId ? 'live' : 'latest'}` : `v${r.version} of ${a.head}`;
  $('actor-version').dataset.version = String(r.version);
  $('follow').hidden = a.following;
}

/** Draws one inspection: the active states, the resource, the event that led there, the steps. */
function display(r) {
  const a = state.actor;
  if (!a) return;
  a.shown = r;
  showMessage(null);
  const status = $('actor-status');
  status.hidden = false;
  status.textContent = r.exists ? r.status : `${r.status} (not visible)`;
  status.dataset.status = r.status;
  showVersion(a);
  // The events returned end with the one at the version shown.
  const event = r.events[r.events.length - 1] ?? null;
  void chartOf(a.kind).then(({ chart }) => {
    if (state.actor !== a || a.shown !== r || state.shownKind !== a.kind || !state.svg) return;
    const last = event?.version === r.version ? { event: event.type, before: activeStates(chart, r.previousStateValue) } : null;
    markActive(state.svg, activeStates(chart, r.stateValue), last);
    reveal(state.svg.querySelector('g.state[data-active="current"]'));
  });
  // The picker is not live; its row of the actor shown is.
  if (a.following && r.resource && state.picker.kind === a.kind) {
    const row = PICKERS[a.kind].row(r.resource);
    pickerList.update(a.id, () => row);
  }
  timeline.select(String(r.version), true);
  $('event-data').textContent = event
    ? JSON.stringify({ type: event.type, version: event.version, at: event.at, principal: event.principal, status: event.status, data: event.data }, null, 2)
    : '';
  $('resource').textContent = r.resource ? JSON.stringify(r.resource, null, 2) : '(none at this version)';
  $('resource-note').textContent = `at v${r.version}`;
  drawSteps(a, r);
}

/** The step graph of an execution (coloured by step status), a workflow or a template. */
function drawSteps(a, r) {
  const def = a.kind === 'execution' ? r.definition : a.kind === 'workflow' ? r.resource : a.kind === 'template' ? r.resource?.definition : null;
  const section = $('dag-section');
  if (!def || !Array.isArray(def.steps) || def.steps.length === 0) {
    section.hidden = true;
    state.dagKey = null;
    return;
  }
  section.hidden = false;
  const runs = new Map((a.kind === 'execution' && Array.isArray(r.resource?.steps) ? r.resource.steps : []).map((s) => [s.id, s]));
  const key = `${a.kind}/${a.id}/${JSON.stringify(def.steps)}/${def.type}`;
  const mark = () => {
    const svg = $('dag').querySelector('svg');
    if (svg) markSteps(svg, runs);
  };
  $('dag-note').textContent = a.kind === 'execution' ? `(${def.type}, coloured by status at v${r.version})` : `(${def.type})`;
  if (state.dagKey === key) {
    mark();
    return;
  }
  state.dagKey = key;
  const dag = dagGraph(def, measureText);
  layout(dag.graph).then(
    (l) => {
      if (state.dagKey !== key) return;
      $('dag').replaceChildren(drawDag(l, dag));
      applyZoom();
      mark();
    },
    (e) => showMessage(e.message),
  );
}

function legend() {
  const box = $('dag-legend');
  for (const [status, colour] of Object.entries(STEP_COLOURS)) {
    const item = document.createElement('span');
    item.className = 'legend-item';
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = colour;
    item.append(sw, document.createTextNode(status.replace(/_/g, ' ')));
    box.append(item);
  }
}

// ------------------------------------------------------------------------------------------
// Routing and controls

function route() {
  const m = /^#\/([a-z][a-z0-9_-]*)\/(.+)$/.exec(location.hash);
  if (!m) {
    void showMachine(Object.keys(state.machines)[0] ?? 'task');
    return;
  }
  const [, kind, rest] = m;
  if (kind === 'machine') {
    closeActor();
    void showMachine(decodeURIComponent(rest));
  } else if (state.conn) void openActor(kind, decodeURIComponent(rest));
  else void showMachine(kind);
}

function wire() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = /** @type {HTMLInputElement} */ ($('key-input')).value.trim();
    if (!key) return;
    /** @type {HTMLInputElement} */ ($('key-input')).value = '';
    state.signingOut = false;
    void connect(key);
  });
  $('sign-out').addEventListener('click', () => {
    state.signingOut = true;
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    closeActor();
    state.conn?.close();
    state.conn = null;
    pickerList.setItems([]);
    signedOutView('signed out');
  });
  $('picker-kind').addEventListener('change', () => reloadPicker());
  $('picker-reload').addEventListener('click', () => reloadPicker());
  let debounce = 0;
  $('picker-search').addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => reloadPicker(), 250);
  });
  $('open-kind').addEventListener('change', () => {
    const kind = /** @type {HTMLSelectElement} */ ($('open-kind')).value;
    /** @type {HTMLInputElement} */ ($('open-id')).placeholder = SINGLETONS.has(kind) ? 'tenant' : 'actor id';
  });
  $('open-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const kind = /** @type {HTMLSelectElement} */ ($('open-kind')).value;
    const input = /** @type {HTMLInputElement} */ ($('open-id'));
    const id = input.value.trim() || (SINGLETONS.has(kind) ? 'tenant' : '');
    if (id) void openActor(kind, id);
  });
  $('follow').addEventListener('click', () => {
    if (state.actor) void stepTo(state.actor.head);
  });
  const step = (delta) => {
    const a = state.actor;
    if (a?.shown) void stepTo(a.shown.version + delta);
  };
  $('step-back').addEventListener('click', () => step(-1));
  $('step-forward').addEventListener('click', () => step(1));
  $('step-first').addEventListener('click', () => void stepTo(state.actor?.events[0]?.version ?? 1));
  $('step-last').addEventListener('click', () => void stepTo(state.actor?.head ?? 1));
  document.addEventListener('keydown', (e) => {
    const t = /** @type {HTMLElement} */ (e.target);
    if (t.closest('input, select, textarea, .vlist')) return;
    if (e.key === 'ArrowLeft') step(-1);
    else if (e.key === 'ArrowRight') step(1);
  });
  $('zoom-in').addEventListener('click', () => zoomBy(1.25));
  $('zoom-out').addEventListener('click', () => zoomBy(0.8));
  $('zoom-fit').addEventListener('click', () => {
    state.zoom = 'fit';
    applyZoom();
  });
  new ResizeObserver(() => applyZoom()).observe($('chart'));
  window.addEventListener('hashchange', () => route());
}

async function main() {
  warmUp();
  wire();
  legend();
  // A key in the URL is taken once and removed, so it stays out of the history and of copied links.
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get('key');
  if (fromUrl) {
    url.searchParams.delete('key');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }
  try {
    await loadMachines();
  } catch (e) {
    showMessage(`Could not load /machines: ${e.message}`);
  }
  const key = fromUrl || sessionStorage.getItem(KEY_STORAGE);
  if (key) await connect(key);
  else {
    signedOutView();
    route();
  }
}

void main();

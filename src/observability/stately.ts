import type { ServerResponse } from 'node:http';
import type { AnyStateMachine } from 'xstate';
import type { ActorKind } from '../../actors/ActorKind.js';

/**
 * Machine definitions in the form Stately's tools import: the *config* an XState v5
 * `createMachine({...})` call takes (string state keys, `initial` as a key, `on` maps of
 * transitions with `target`, `guard` and `actions` named by strings), as plain JSON. XState's own
 * `machine.toJSON()` (what `GET /machines` serves) is the resolved *definition* instead: `initial`
 * is an object, transitions carry `source`/`eventType`, and `createMachine` does not accept it.
 *
 * The config is built from the machine's resolved state nodes, not copied from the source, so it
 * holds exactly what XState runs: shared transition objects are expanded, targets are absolute
 * (`#task.failed`), and any inline function (there are none in Troupe's machines, which name every
 * guard and action through `setup`) becomes its name.
 */

/** An action as Stately's editor shows it: a name, or a name with JSON params. */
export type StatelyAction = string | { type: string; params?: unknown };

/** A guard: a name, or a name with JSON params (`{type: 'isTimer', params: {name: 'lease'}}`). */
export type StatelyGuard = string | { type: string; params?: unknown };

/** One transition of an event. Without `target` it is targetless (actions only). */
export interface StatelyTransition {
  /** Absolute state ids: `#task.live.pending`. */
  target?: string | string[];
  guard?: StatelyGuard;
  actions?: StatelyAction[];
  /** Only present when true (XState v5's default is false). */
  reenter?: true;
  description?: string;
}

/** A state node of a config; every field is optional, as in `createMachine`. */
export interface StatelyStateConfig {
  /** Only on the root, or where a state sets its own id. */
  id?: string;
  description?: string;
  /** `atomic` and `compound` are implied and left out. */
  type?: 'parallel' | 'final' | 'history';
  history?: 'shallow' | 'deep';
  /** The key of the initial child state (a path below it when the initial target is deeper). */
  initial?: string;
  tags?: string[];
  meta?: unknown;
  entry?: StatelyAction[];
  exit?: StatelyAction[];
  invoke?: { src: string; id: string }[];
  /** One transition object per event, or an array when several are tried in order. */
  on?: Record<string, StatelyTransition | StatelyTransition[]>;
  after?: Record<string, StatelyTransition | StatelyTransition[]>;
  always?: StatelyTransition | StatelyTransition[];
  states?: Record<string, StatelyStateConfig>;
}

/** A whole machine config: the root state node plus its `id` and initial `context`. */
export interface StatelyMachineConfig extends StatelyStateConfig {
  id: string;
  context?: unknown;
}

/** A state node as XState resolves it; only what this module reads. */
interface Node {
  id: string;
  key: string;
  path: string[];
  type: 'atomic' | 'compound' | 'parallel' | 'final' | 'history';
  history: false | 'shallow' | 'deep';
  description?: string;
  tags: string[];
  meta?: unknown;
  entry: unknown[];
  exit: unknown[];
  initial?: { target: Node[] };
  states: Record<string, Node>;
  transitions: Map<string, Transition[]>;
  always?: Transition[];
  after: (Transition & { delay: number | string })[];
  invoke: { src: string | unknown; id: string }[];
}

/** A resolved transition; only what this module reads. */
interface Transition {
  target?: Node[] | undefined;
  guard?: unknown;
  actions: unknown[];
  reenter?: boolean;
  description?: string;
  eventType: string;
}

/** JSON values only: functions, undefined and symbols are dropped, as `JSON.stringify` does. */
function json(value: unknown): unknown {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value) ?? 'null');
}

/** A function's name: XState's built-in actions carry a `type` (`xstate.assign`), others their name. */
function nameOf(fn: unknown): string {
  const f = fn as { type?: unknown; name?: string };
  return typeof f.type === 'string' ? f.type : f.name || 'inline';
}

function named(x: unknown): StatelyAction {
  if (typeof x === 'string') return x;
  if (typeof x === 'function') return nameOf(x);
  const o = x as { type?: unknown; params?: unknown };
  const type = typeof o?.type === 'string' ? o.type : nameOf(o?.type);
  // Params computed by a function at run time cannot be shown; the name still is.
  return o?.params === undefined || typeof o.params === 'function' ? type : { type, params: json(o.params) };
}

function transition(t: Transition): StatelyTransition {
  const out: StatelyTransition = {};
  if (t.target && t.target.length > 0) {
    const ids = t.target.map((n) => `#${n.id}`);
    out.target = ids.length === 1 ? ids[0]! : ids;
  }
  if (t.guard !== undefined) out.guard = named(t.guard);
  if (t.actions.length > 0) out.actions = t.actions.map(named);
  if (t.reenter) out.reenter = true;
  if (t.description) out.description = t.description;
  return out;
}

function transitions(ts: Transition[]): StatelyTransition | StatelyTransition[] {
  return ts.length === 1 ? transition(ts[0]!) : ts.map(transition);
}

function stateConfig(node: Node, parentId: string | null): StatelyStateConfig {
  const out: StatelyStateConfig = {};
  // A state's id is `<parent id>.<key>` unless it sets its own.
  if (parentId === null || node.id !== `${parentId}.${node.key}`) out.id = node.id;
  if (node.description) out.description = node.description;
  if (node.type === 'parallel' || node.type === 'final' || node.type === 'history') out.type = node.type;
  if (node.type === 'history' && node.history) out.history = node.history;
  if (node.type === 'compound' && node.initial) {
    out.initial = node.initial.target[0]!.path.slice(node.path.length).join('.');
  }
  if (node.tags.length > 0) out.tags = [...node.tags];
  if (node.meta !== undefined) out.meta = json(node.meta);
  // XState schedules `after` transitions with a raise on entry and a cancel on exit that it adds
  // itself; `createMachine` adds them again from `after`, so they are left out here.
  const afterTypes = new Set(node.after.map((t) => t.eventType));
  const own = (a: unknown) => {
    const f = a as { type?: unknown; id?: unknown; sendId?: unknown };
    return !(f.type === 'xstate.raise' && afterTypes.has(f.id as string)) && !(f.type === 'xstate.cancel' && afterTypes.has(f.sendId as string));
  };
  const entry = node.entry.filter(own);
  const exit = node.exit.filter(own);
  if (entry.length > 0) out.entry = entry.map(named);
  if (exit.length > 0) out.exit = exit.map(named);
  if (node.invoke.length > 0) out.invoke = node.invoke.map((i) => ({ src: typeof i.src === 'string' ? i.src : nameOf(i.src), id: i.id }));
  const on: Record<string, StatelyTransition | StatelyTransition[]> = {};
  for (const [event, ts] of node.transitions) if (!afterTypes.has(event)) on[event] = transitions(ts);
  if (Object.keys(on).length > 0) out.on = on;
  if (node.after.length > 0) {
    const byDelay = new Map<string, Transition[]>();
    for (const t of node.after) byDelay.set(String(t.delay), [...(byDelay.get(String(t.delay)) ?? []), t]);
    out.after = Object.fromEntries([...byDelay].map(([delay, ts]) => [delay, transitions(ts)]));
  }
  if (node.always && node.always.length > 0) out.always = transitions(node.always);
  const children = Object.entries(node.states);
  if (children.length > 0) out.states = Object.fromEntries(children.map(([key, child]) => [key, stateConfig(child, node.id)]));
  return out;
}

/**
 * The importable config of a machine: what `createMachine(config)` takes and Stately Studio's
 * "Import from code" reads (see {@link statelyCode}). Plain JSON: no functions, no cycles.
 *
 * @example
 * ```ts
 * const config = statelyConfig(taskMachine);
 * createMachine(config); // the same states and transitions, guards and actions by name
 * ```
 */
export function statelyConfig(machine: AnyStateMachine): StatelyMachineConfig {
  // The root's id is the machine's, so `stateConfig` puts it first.
  const out = stateConfig(machine.root as unknown as Node, null) as StatelyMachineConfig;
  const context = (machine.config as { context?: unknown }).context;
  // A context computed from input at run time has no JSON form; the editor then starts without one.
  if (context !== undefined && typeof context !== 'function') out.context = json(context);
  return out;
}

/**
 * JavaScript that Stately Studio's "Import from code" accepts: one `createMachine({...})` call per
 * machine (the importer looks for `createMachine` calls and reads their config; JSON is a valid
 * object literal). Paste it into Studio's import dialog.
 */
export function statelyCode(machines: readonly AnyStateMachine[]): string {
  return machines.map((m) => `createMachine(${JSON.stringify(statelyConfig(m), null, 2)});\n`).join('\n');
}

/** Formats `GET /machines` and `GET /machines/<kind>` serve; `definition` is XState's `toJSON()`. */
export const MachineFormats = ['definition', 'config', 'stately'] as const;
/** One of {@link MachineFormats}. */
export type MachineFormat = (typeof MachineFormats)[number];

/** An HTTP answer, ready to write. */
export interface HttpAnswer {
  status: number;
  contentType: string;
  body: string;
}

const jsonAnswer = (status: number, body: unknown): HttpAnswer => ({ status, contentType: 'application/json', body: JSON.stringify(body) });

/**
 * Answers `GET /machines[/<kind>][?format=definition|config|stately]`:
 *
 * - `/machines` — every machine's XState definition (`toJSON()`) by kind (unchanged; `format`
 *   picks another form for all of them);
 * - `/machines/<kind>` — one machine's importable config (JSON);
 * - `?format=stately` — JavaScript with `createMachine(...)` calls, to paste into Stately Studio.
 */
export function machinesAnswer(pathname: string, search: URLSearchParams, kinds: readonly ActorKind[]): HttpAnswer {
  const rest = pathname.slice('/machines'.length);
  let one: string | null = null;
  try {
    one = rest.length > 1 ? decodeURIComponent(rest.slice(1)) : null;
  } catch {
    return jsonAnswer(400, { error: `The machine kind in ${pathname.slice(0, 80)} is not valid percent-encoding.` });
  }
  const format = search.get('format') ?? (one === null ? 'definition' : 'config');
  if (!(MachineFormats as readonly string[]).includes(format)) {
    return jsonAnswer(400, { error: `Unknown format "${format.slice(0, 64)}": use one of ${MachineFormats.join(', ')}.` });
  }
  let selected = kinds;
  if (one !== null) {
    const kind = kinds.find((k) => k.kind === one);
    if (!kind) return jsonAnswer(404, { error: `No machine of kind "${one.slice(0, 64)}"; kinds: ${kinds.map((k) => k.kind).join(', ')}.` });
    selected = [kind];
  }
  if (format === 'stately') return { status: 200, contentType: 'text/javascript; charset=utf-8', body: statelyCode(selected.map((k) => k.machine)) };
  const render = (m: AnyStateMachine) => (format === 'config' ? statelyConfig(m) : m.toJSON());
  if (one !== null) return jsonAnswer(200, render(selected[0]!.machine));
  return jsonAnswer(200, Object.fromEntries(selected.map((k) => [k.kind, render(k.machine)])));
}

/** Writes {@link machinesAnswer} for a request to `/machines` or `/machines/<kind>`. */
export function serveMachines(res: ServerResponse, url: URL, kinds: readonly ActorKind[]): void {
  const answer = machinesAnswer(url.pathname, url.searchParams, kinds);
  res.writeHead(answer.status, { 'content-type': answer.contentType });
  res.end(answer.body);
}

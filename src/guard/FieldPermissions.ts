import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store, StoredEvent, ViewRecord } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import { FieldPolicyFields, type FieldPolicy, type FieldPolicyKind, type FieldRole, type FieldRule } from '../../protocol/fieldPolicy.js';
import type { MethodName } from '../../protocol/methods.js';
import type { ActorEvent, Principal } from '../../protocol/model.js';
import { canonicalJson } from '../handlers/tasks.js';
import { FIELD_POLICY_ID } from '../kinds/fieldPolicyKind.js';
import type { AuthedContext, CallGuard } from '../server/App.js';
import { toActorEvent, type EventRedactor, type EventView } from '../server/SubscriptionHub.js';

/** A field path split into keys. */
type Path = readonly string[];

interface CompiledRule {
  kind: FieldPolicyKind;
  path: Path;
  text: string;
  read: readonly FieldRole[];
  write: readonly FieldRole[];
}

/**
 * What a field policy means for one set of tenant roles and one kind. Indexes are relation bits:
 * 0 no relation, 1 creator, 2 assignee, 3 both.
 */
interface KindPlan {
  /** Paths hidden from the principal. Equal lists are the same array, so encodings can be shared by identity. */
  hidden: Path[][];
  /** Rules whose field the principal may not write. */
  unwritable: CompiledRule[][];
  /** False when the relation changes nothing: then the resource need not be looked at. */
  relational: boolean;
}

/** Per kind; a kind without rules that affect the principal is absent. */
type Plan = Partial<Record<FieldPolicyKind, KindPlan>>;

interface CompiledPolicy {
  byKind: Map<FieldPolicyKind, CompiledRule[]>;
  /** Kinds with a rule that names `creator` or `assignee`. */
  relationalKinds: Set<FieldPolicyKind>;
  /** Plans by sorted tenant roles; `null`: nothing hidden or refused for those roles. */
  plans: Map<string, Plan | null>;
}

/** A tenant's policy as cached: `policy` null when it has no rules (the fast path). */
interface TenantEntry {
  version: number;
  policy: CompiledPolicy | null;
}

/** Who a resource belongs to, as far as relation roles go. */
interface Owners {
  createdBy: string | null;
  assignees: readonly string[];
}

const NO_OWNERS: Owners = { createdBy: null, assignees: [] };

/** How the params of a writing method map onto the fields of the resource it writes. */
interface WriteMap {
  /** Where the value sits in the params. */
  from: Path;
  /** The field of the resource it becomes. */
  to: Path;
  /**
   * Absent: the method sets what it names (present means written). A number: the method replaces
   * the field `from` + that many more keys wholesale whenever the params contain it, so a field
   * below it changes unless the new value equals the stored one.
   */
  replace?: number;
}

interface WriteSpec {
  kind: FieldPolicyKind;
  /** The param naming the resource written; absent for creations (the caller is the creator). */
  target?: string;
  maps: WriteMap[];
  /** For creations: each element of this array param is a resource created too. */
  items?: string;
  /** For creations: the param naming the new resource's assignee. */
  assignTo?: string;
  /**
   * For creations from a stored resource: the values written are that resource's field `at`
   * (read from the read model of `kind` with the id in `param`), not the params.
   */
  source?: { kind: string; param: string; at: Path };
}

const p = (s: string): Path => (s === '' ? [] : s.split('.'));
const ROOT: WriteMap[] = [{ from: [], to: [] }];
const one = (from: string, to: string): WriteMap => ({ from: p(from), to: p(to) });

/** What each writing method writes. Methods not listed write no field a policy can cover. */
const WRITES: Partial<Record<MethodName, WriteSpec>> = {
  'task.create': { kind: 'task', maps: ROOT, assignTo: 'assignTo' },
  'task.createBatch': { kind: 'task', maps: [], items: 'tasks', assignTo: 'assignTo' },
  'task.createDistributed': { kind: 'task', maps: ROOT, items: 'subtasks', assignTo: 'assignTo' },
  'task.update': { kind: 'task', target: 'taskId', maps: [{ from: [], to: [], replace: 1 }] },
  'task.complete': { kind: 'task', target: 'taskId', maps: [one('result', 'result')] },
  'task.submitSubtaskResult': { kind: 'task', target: 'subtaskId', maps: [one('result', 'result')] },
  'task.fail': { kind: 'task', target: 'taskId', maps: [one('error', 'error')] },
  'task.progress': { kind: 'task', target: 'taskId', maps: [one('percent', 'progress.percent'), one('message', 'progress.message')] },
  'task.requestInput': { kind: 'task', target: 'taskId', maps: [one('prompt', 'inputRequest.prompt'), one('schema', 'inputRequest.schema')] },
  'task.provideInput': { kind: 'task', target: 'taskId', maps: [one('input', 'inputs.input')] },
  'task.reject': { kind: 'task', target: 'taskId', maps: [one('reason', 'rejections.reason')] },
  'task.assign': { kind: 'task', target: 'taskId', maps: [one('reason', 'delegations.reason')] },
  'task.delegate': { kind: 'task', target: 'taskId', maps: [one('reason', 'delegations.reason')] },
  'workflow.create': { kind: 'workflow', maps: ROOT },
  'workflow.createFromTemplate': { kind: 'workflow', maps: ROOT, source: { kind: 'template', param: 'templateId', at: ['definition'] } },
  'workflow.update': { kind: 'workflow', target: 'workflowId', maps: [{ from: ['definition'], to: [], replace: 0 }] },
  'workflow.createVersion': { kind: 'workflow', target: 'workflowId', maps: [{ from: ['definition'], to: [], replace: 0 }] },
  'workflow.execute': { kind: 'execution', maps: [one('input', 'input')] },
  'execution.completeStep': { kind: 'execution', target: 'executionId', maps: [one('output', 'steps.output')] },
  'execution.failStep': { kind: 'execution', target: 'executionId', maps: [one('error', 'steps.error')] },
  'execution.approve': { kind: 'execution', target: 'executionId', maps: [one('comment', 'steps.votes.comment')] },
};

/**
 * Filters that match against fields a policy may hide: a principal who cannot read such a field
 * of every resource could otherwise probe it by filtering.
 */
const FILTERS: Partial<Record<MethodName, { kind: FieldPolicyKind; params: Record<string, string[]> }>> = {
  'task.search': { kind: 'task', params: { query: ['title', 'description'] } },
  'task.stats': { kind: 'task', params: { query: ['title', 'description'] } },
  'task.report': { kind: 'task', params: { query: ['title', 'description'] } },
  'workflow.list': { kind: 'workflow', params: { query: ['description', 'tags'], tag: ['tags'] } },
};

/**
 * Where the fields of a resource appear in the data of its events, by kind and event type (`*`:
 * every event). `[from, to]`: the event's `data` at `from` holds the resource's field `to`.
 */
const EVENT_MAPS: Record<FieldPolicyKind, Record<string, [Path, Path][]>> = {
  task: {
    '*': [[[], []], [['changes'], []]],
    'task.provideInput': [[['input'], p('inputs.input')]],
    'task.activate': [[['input'], p('parameters.input')]],
    'task.progress': [[['percent'], p('progress.percent')], [['message'], p('progress.message')]],
    'task.requestInput': [[['prompt'], p('inputRequest.prompt')], [['schema'], p('inputRequest.schema')]],
    'task.subtaskSettled': [[['result'], p('distribution.subtasks.result')], [['error'], p('distribution.subtasks.error')]],
    'task.reject': [[['reason'], p('rejections.reason')]],
    'task.assign': [[['reason'], p('delegations.reason')]],
    'task.delegate': [[['reason'], p('delegations.reason')]],
  },
  workflow: {
    '*': [[[], []], [['definition'], []]],
  },
  execution: {
    '*': [[[], []]],
    'execution.dispatched': [
      [p('started.input'), p('steps.input')],
      [p('compensations.input'), p('steps.input')],
      [p('failed.error'), p('steps.error')],
      [p('compensationsFailed.error'), p('steps.error')],
    ],
    'execution.stepSettled': [[['result'], p('steps.output')], [['error'], p('steps.error')]],
    'execution.completeStep': [[['output'], p('steps.output')]],
    'execution.failStep': [[['error'], p('steps.error')]],
    'execution.vote': [[['comment'], p('steps.votes.comment')]],
  },
};

/** Methods whose results carry no field a policy covers: returned as they are, without a look. */
const PLAIN = new Set<string>([
  'session.whoami', 'subscribe', 'unsubscribe', 'ping',
  'agent.register', 'agent.get', 'agent.list', 'agent.heartbeat', 'agent.available', 'agent.setCapabilities', 'agent.deregister',
  'agent.performance', 'agent.setStatus',
  'task.delete', 'task.stats', 'task.archive', 'task.rebalance',
  'rule.register', 'rule.update', 'rule.get', 'rule.list', 'rule.delete', 'rule.evaluate', 'policy.get', 'policy.set', 'policy.list',
  'workflow.delete', 'workflow.listVersions', 'workflow.metrics', 'workflow.insights',
  'template.create', 'template.get', 'template.list', 'execution.nextSteps',
  'fieldPolicy.get', 'fieldPolicy.set',
]);

const hasOwn = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const startsWith = (a: Path, prefix: Path) => prefix.length <= a.length && prefix.every((k, i) => a[i] === k);

/**
 * `value` without the field at `path`; an array met on the way applies the rest of the path to
 * each element. Nothing is mutated: objects on the path are copied, and a value without the field
 * is returned as it is.
 */
function omitPath(value: unknown, path: Path, i = 0): unknown {
  if (Array.isArray(value)) {
    let out: unknown[] | null = null;
    for (let k = 0; k < value.length; k++) {
      const v = omitPath(value[k], path, i);
      if (v !== value[k]) (out ??= value.slice())[k] = v;
    }
    return out ?? value;
  }
  if (!isObject(value) || i >= path.length) return value;
  const key = path[i]!;
  if (!hasOwn(value, key)) return value;
  if (i === path.length - 1) {
    const { [key]: _gone, ...rest } = value;
    return rest;
  }
  const inner = omitPath(value[key], path, i + 1);
  return inner === value[key] ? value : { ...value, [key]: inner };
}

/** The values at `path`, in order; arrays met on the way contribute each element's. */
function valuesAt(value: unknown, path: Path, i = 0, out: unknown[] = []): unknown[] {
  if (i === path.length) {
    if (value !== undefined) out.push(value);
    return out;
  }
  if (Array.isArray(value)) {
    for (const v of value) valuesAt(v, path, i, out);
    return out;
  }
  if (isObject(value) && hasOwn(value, path[i]!)) valuesAt(value[path[i]!], path, i + 1, out);
  return out;
}

function ownersOf(kind: FieldPolicyKind, r: Record<string, unknown>): Owners {
  const createdBy = typeof r.createdBy === 'string' ? r.createdBy : null;
  if (kind === 'task') return { createdBy, assignees: typeof r.assignedTo === 'string' ? [r.assignedTo] : [] };
  if (kind === 'execution' && Array.isArray(r.steps)) {
    return { createdBy, assignees: r.steps.flatMap((s) => (isObject(s) && typeof s.agent === 'string' ? [s.agent] : [])) };
  }
  return { createdBy, assignees: [] };
}

function ownersOfView(kind: string, v: ViewRecord | null | undefined): Owners {
  if (!v) return NO_OWNERS;
  if (kind === 'task') return { createdBy: v.createdBy, assignees: v.owner ? [v.owner] : [] };
  if (kind === 'execution' || kind === 'workflow') return ownersOf(kind, v.doc);
  return NO_OWNERS;
}

function relationBits(o: Owners, me: string): number {
  return (o.createdBy === me ? 1 : 0) | (o.assignees.includes(me) ? 2 : 0);
}

function sameRules<T>(a: readonly T[], b: readonly T[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Which kind of resource (or an event) an object of a result is, from its shape. */
function shapeOf(o: Record<string, unknown>): FieldPolicyKind | 'event' | null {
  if (typeof o.actorId === 'string' && typeof o.kind === 'string' && typeof o.type === 'string' && typeof o.position === 'number' && isObject(o.data)) {
    return 'event';
  }
  if (typeof o.a2aState === 'string' && typeof o.createdBy === 'string') return 'task';
  if (typeof o.workflowId === 'string' && Array.isArray(o.steps) && Array.isArray(o.trace)) return 'execution';
  if (Array.isArray(o.steps) && typeof o.name === 'string' && typeof o.createdBy === 'string' && typeof o.tenantId === 'string') return 'workflow';
  return null;
}

/**
 * Events that carry another kind's resource: `execution.start` holds the definition of the
 * workflow it runs, so the workflow's rules apply to it (without a relation to the workflow).
 */
const EMBEDDED: Record<string, { kind: FieldPolicyKind; at: Path }> = {
  'execution.start': { kind: 'workflow', at: ['definition'] },
};

const NOTHING: Path[] = [];

/** The hidden paths of the resource an event embeds, for a plan. */
function embeddedHidden(plan: Plan, type: string): Path[] {
  const emb = EMBEDDED[type];
  return emb ? (plan[emb.kind]?.hidden[0] ?? NOTHING) : NOTHING;
}

/**
 * The data of an event of `kind` without the hidden fields of its resource (`hidden`) and of the
 * resource it embeds (`embedded`).
 */
function redactEventData(kind: FieldPolicyKind, type: string, data: Record<string, unknown>, hidden: Path[], embedded: Path[]): Record<string, unknown> {
  const maps = EVENT_MAPS[kind];
  const all = maps[type] ? [...maps['*']!, ...maps[type]!] : maps['*']!;
  let out: unknown = data;
  for (const h of hidden) {
    for (const [from, to] of all) {
      if (startsWith(h, to)) out = omitPath(out, [...from, ...h.slice(to.length)]);
      else if (startsWith(to, h) && from.length > 0) out = omitPath(out, from);
    }
  }
  const at = EMBEDDED[type]?.at;
  if (at) for (const h of embedded) out = omitPath(out, [...at, ...h]);
  return out as Record<string, unknown>;
}

/** Splits CSV text into records of raw cells (quotes kept), per RFC 4180. */
function csvRecords(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') i++;
        else quoted = false;
      }
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(text.slice(start, i));
      start = i + 1;
    } else if (c === '\r' && text[i + 1] === '\n') {
      row.push(text.slice(start, i));
      rows.push(row);
      row = [];
      start = i + 2;
      i++;
    }
  }
  if (start < text.length) {
    row.push(text.slice(start));
    rows.push(row);
  }
  return rows;
}

function csvValue(raw: string): string {
  return raw.startsWith('"') ? raw.slice(1, -1).replace(/""/g, '"') : raw;
}

/** Options of {@link FieldPermissions}. */
export interface FieldPermissionsOptions {
  store: Store;
}

/**
 * Field-level permissions (a tenant's field policy): a {@link CallGuard} that refuses writes of
 * fields the caller may not write (`beforeCall`) and removes fields the caller may not read from
 * results (`afterCall`), and an {@link EventRedactor} that does the same to subscription events.
 *
 * Decisions are compiled once per tenant policy version and set of tenant roles; the relation
 * roles (`creator`, `assignee`) are then a comparison per resource. A policy change committed on
 * this node replaces the cached policy synchronously, so the very next call and event obey it.
 * A tenant without field rules costs a map look-up per call and per published event.
 *
 * Admins always read and write everything.
 *
 * @example
 * ```ts
 * const fields = new FieldPermissions({ store });
 * fields.attach(host);
 * hub.setRedactor(fields);
 * server.use(fields);
 * ```
 */
export class FieldPermissions implements CallGuard, EventRedactor {
  #store: Store;
  #tenants = new Map<string, TenantEntry>();
  #loading = new Map<string, Promise<TenantEntry>>();
  /** Params of calls whose results do not name their resource, kept for `afterCall`. */
  #params = new WeakMap<AuthedContext, Record<string, unknown>>();

  constructor(opts: FieldPermissionsOptions) {
    this.#store = opts.store;
  }

  /** Follows committed field policy changes, so each takes effect before the next call or event. */
  attach(host: ActorHost): void {
    host.onCommit((events, _topics, view) => {
      const e = events[events.length - 1];
      if (e?.kind !== 'fieldpolicy' || !view) return;
      this.#install(e.tenant, view);
    });
  }

  /**
   * Reloads a tenant's policy from the store (for changes another node committed). The cached one
   * stays in force until the reload arrives.
   */
  invalidate(tenant: string): Promise<void> {
    return this.#load(tenant, true).then(() => undefined);
  }

  #install(tenant: string, v: ViewRecord | undefined): TenantEntry {
    const doc = v?.doc as unknown as FieldPolicy | undefined;
    const version = doc?.version ?? 0;
    const current = this.#tenants.get(tenant);
    // A load that raced with a commit must not put an older policy back.
    if (current && current.version > version) return current;
    const entry: TenantEntry = { version, policy: doc && doc.rules.length > 0 ? compile(doc.rules) : null };
    this.#tenants.set(tenant, entry);
    return entry;
  }

  #load(tenant: string, force = false): Promise<TenantEntry> {
    const known = this.#tenants.get(tenant);
    if (known && !force) return Promise.resolve(known);
    let loading = this.#loading.get(tenant);
    if (!loading) {
      loading = this.#store
        .getView(tenant, 'fieldpolicy', FIELD_POLICY_ID)
        .then((v) => this.#install(tenant, v))
        .finally(() => this.#loading.delete(tenant));
      this.#loading.set(tenant, loading);
    }
    return loading;
  }

  /** The plan for a principal; null when nothing is hidden from or refused to it. */
  #plan(policy: CompiledPolicy, principal: Principal): Plan | null {
    if (principal.roles.includes('admin')) return null;
    const key = principal.roles.length === 1 ? principal.roles[0]! : [...principal.roles].sort().join(',');
    let plan = policy.plans.get(key);
    if (plan === undefined) {
      plan = planFor(policy, principal.roles);
      policy.plans.set(key, plan);
    }
    return plan;
  }

  beforeCall(ctx: AuthedContext, method: MethodName, params: Record<string, unknown>): Promise<void> | void {
    if (method === 'execution.stepStatus' || method === 'execution.trace') this.#params.set(ctx, params);
    const entry = this.#tenants.get(ctx.principal.tenantId);
    if (entry === undefined) return this.#load(ctx.principal.tenantId).then((e) => this.#checkCall(e, ctx.principal, method, params));
    if (entry.policy === null) return;
    return this.#checkCall(entry, ctx.principal, method, params);
  }

  afterCall(ctx: AuthedContext, method: MethodName, result: unknown): unknown {
    const entry = this.#tenants.get(ctx.principal.tenantId);
    if (!entry?.policy || PLAIN.has(method)) return result;
    const plan = this.#plan(entry.policy, ctx.principal);
    if (!plan) return result;
    return this.#redactResult(plan, ctx.principal, method, result, this.#params.get(ctx));
  }

  #checkCall(entry: TenantEntry, principal: Principal, method: MethodName, params: Record<string, unknown>): Promise<void> | void {
    if (!entry.policy) return;
    const filters = FILTERS[method];
    const spec = WRITES[method];
    if (!filters && !spec) return;
    const plan = this.#plan(entry.policy, principal);
    if (!plan) return;
    if (filters) {
      const hidden = plan[filters.kind]?.hidden[0] ?? [];
      for (const [param, fields] of Object.entries(filters.params)) {
        if (params[param] === undefined || params[param] === '') continue;
        const h = hidden.find((path) => fields.includes(path[0]!));
        if (h) {
          throw new ProtocolError(
            'FORBIDDEN',
            `The ${param} filter matches ${fields.join(' and ')}, and the tenant's field policy hides ${h.join('.')} of some ${filters.kind}s from you; filter without ${param}.`,
            { kind: filters.kind, field: h.join('.'), param },
          );
        }
      }
    }
    if (spec) return this.#checkWrite(plan, principal, spec, params);
  }

  async #checkWrite(plan: Plan, principal: Principal, spec: WriteSpec, params: Record<string, unknown>): Promise<void> {
    const kp = plan[spec.kind];
    if (!kp) return;
    const me = principal.principalId;
    const creation = (item: Record<string, unknown>) => 1 | (spec.assignTo && item[spec.assignTo] === me ? 2 : 0);
    if (spec.items) {
      const items = params[spec.items];
      if (Array.isArray(items)) {
        items.forEach((item, index) => {
          if (!isObject(item)) return;
          const denied = touched(kp.unwritable[creation(item)]!, ROOT, item, undefined);
          if (denied) throw refusal(principal, denied, { index, param: spec.items });
        });
      }
    }
    if (spec.maps.length === 0) return;
    if (spec.source) {
      const id = params[spec.source.param];
      const v = typeof id === 'string' ? await this.#store.getView(principal.tenantId, spec.source.kind, id) : undefined;
      const written = v ? valuesAt(v.doc, spec.source.at)[0] : undefined;
      const denied = written === undefined ? undefined : touched(kp.unwritable[1]!, spec.maps, written, undefined);
      if (denied) throw refusal(principal, denied, { source: spec.source.kind });
      return;
    }
    if (spec.target === undefined) {
      const denied = touched(kp.unwritable[creation(params)]!, spec.maps, params, undefined);
      if (denied) throw refusal(principal, denied);
      return;
    }
    // The fewest roles refuse the most: when even they touch nothing, the resource need not be read.
    const needsResource = spec.maps.some((m) => m.replace !== undefined);
    if (!needsResource) {
      const denied = touched(kp.unwritable[0]!, spec.maps, params, undefined);
      if (!denied) return;
      if (!kp.relational) throw refusal(principal, denied);
    }
    if (needsResource && !mayTouch(kp.unwritable[0]!, spec.maps, params)) return;
    const id = params[spec.target];
    if (typeof id !== 'string') return;
    const view = await this.#store.getView(principal.tenantId, spec.kind, id);
    // Nothing to write to: the handler reports that.
    if (!view) return;
    const denied = touched(kp.unwritable[relationBits(ownersOfView(spec.kind, view), me)]!, spec.maps, params, view.doc);
    if (denied) throw refusal(principal, denied);
  }

  #redactResult(plan: Plan, principal: Principal, method: MethodName, result: unknown, params: Record<string, unknown> | undefined): unknown {
    const me = principal.principalId;
    const tenant = principal.tenantId;
    switch (method) {
      case 'task.report': {
        const r = result as { format: string; content: string };
        if (r.format === 'json') {
          const rows = JSON.parse(r.content) as unknown;
          return Promise.resolve(this.#redactDeep(plan, tenant, me, rows)).then((out) => (out === rows ? r : { ...r, content: JSON.stringify(out) }));
        }
        const kp = plan.task;
        return kp ? { ...r, content: redactCsv(kp, me, r.content) } : r;
      }
      case 'workflow.getVersion': {
        const r = result as { workflowId: string; definition: unknown };
        const kp = plan.workflow;
        if (!kp) return r;
        if (!kp.relational) return { ...r, definition: hide(r.definition, kp.hidden[0]!) };
        // A version names who made it, not who owns the workflow: the relation is the workflow's.
        return this.#store.getView(tenant, 'workflow', r.workflowId).then((v) => ({
          ...r,
          definition: hide(r.definition, kp.hidden[relationBits(ownersOfView('workflow', v), me)]!),
        }));
      }
      case 'execution.stepStatus':
      case 'execution.trace': {
        const kp = plan.execution;
        if (!kp) return result;
        // Neither result names its execution: the params of the call do.
        return this.#executionPart(kp, tenant, me, method === 'execution.stepStatus', result, params?.executionId);
      }
      default:
        return this.#redactDeep(plan, tenant, me, result);
    }
  }

  /**
   * A step or the trace of an execution, redacted as the part of the execution it is (a hidden
   * `steps` leaves a step's id and status; a hidden `trace` leaves no entries).
   */
  async #executionPart(kp: KindPlan, tenant: string, me: string, step: boolean, result: unknown, executionId: unknown): Promise<unknown> {
    const key = step ? 'steps' : 'trace';
    const wrapped = { [key]: step ? [result] : (result as { items: unknown[] }).items };
    let bits = 0;
    if (kp.relational && typeof executionId === 'string') {
      bits = relationBits(ownersOfView('execution', await this.#store.getView(tenant, 'execution', executionId)), me);
    }
    const out = hide(wrapped, kp.hidden[bits]!) as Record<string, unknown[] | undefined>;
    if (out === wrapped) return result;
    const part = out[key];
    if (!step) return { ...(result as object), items: part ?? [] };
    const r = result as { id: string; status: string };
    return part?.[0] ?? { id: r.id, status: r.status };
  }

  /**
   * Walks a result and redacts every task, workflow, execution and event in it, recognised by
   * shape; it does not descend into the resources it recognised.
   */
  #redactDeep(plan: Plan, tenant: string, me: string, value: unknown): unknown {
    const events: ActorEvent[] = [];
    scanEvents(value, events, 0);
    const owners = new Map<string, Owners>();
    const lookups = new Map<string, Set<string>>();
    for (const e of events) {
      const kp = plan[e.kind as FieldPolicyKind];
      if (!kp?.relational) continue;
      let ids = lookups.get(e.kind);
      if (!ids) lookups.set(e.kind, (ids = new Set()));
      ids.add(e.actorId);
    }
    // Synchronous unless events need their resources' owners: most results are redacted in place.
    if (lookups.size === 0) return redactWalk(plan, me, value, owners, 0);
    return Promise.all(
      [...lookups].map(async ([kind, ids]) => {
        for (const v of await this.#store.getViews(tenant, kind, [...ids])) owners.set(`${kind}/${v.id}`, ownersOfView(kind, v));
      }),
    ).then(() => redactWalk(plan, me, value, owners, 0));
  }

  prepare(e: StoredEvent, view: ViewRecord | null | undefined): EventView | null {
    const entry = this.#tenants.get(e.tenant);
    if (entry === undefined) return this.#unknownTenant(e);
    const policy = entry.policy;
    if (policy === null) return null;
    const kind = e.kind as FieldPolicyKind;
    const emb = EMBEDDED[e.type];
    if (!policy.byKind.has(kind) && !(emb && policy.byKind.has(emb.kind))) return null;
    const owners = policy.relationalKinds.has(kind) ? ownersOfView(kind, view) : NO_OWNERS;
    let wire: ActorEvent | undefined;
    // Subscribers that may see the same fields share one encoding.
    const encoded = new Map<Path[], string | undefined>();
    return (principal) => {
      if (!principal) return undefined;
      const plan = this.#plan(policy, principal);
      if (!plan) return undefined;
      const hidden = plan[kind]?.hidden[relationBits(owners, principal.principalId)] ?? NOTHING;
      const embedded = embeddedHidden(plan, e.type);
      if (hidden.length === 0 && embedded.length === 0) return undefined;
      const shared = embedded.length === 0;
      if (shared && encoded.has(hidden)) return encoded.get(hidden);
      wire ??= toActorEvent(e);
      const data = redactEventData(kind, e.type, wire.data, hidden, embedded);
      const json = data === wire.data ? undefined : JSON.stringify({ ...wire, data });
      if (shared) encoded.set(hidden, json);
      return json;
    };
  }

  async prepareStored(tenant: string, events: StoredEvent[]): Promise<(e: StoredEvent) => EventView | null> {
    const entry = await this.#load(tenant);
    const policy = entry.policy;
    if (!policy) return () => null;
    const views = new Map<string, ViewRecord>();
    const ids = new Map<string, Set<string>>();
    for (const e of events) {
      if (!policy.relationalKinds.has(e.kind as FieldPolicyKind)) continue;
      let set = ids.get(e.kind);
      if (!set) ids.set(e.kind, (set = new Set()));
      set.add(e.actorId);
    }
    await Promise.all(
      [...ids].map(async ([kind, set]) => {
        for (const v of await this.#store.getViews(tenant, kind, [...set])) views.set(`${kind}/${v.id}`, v);
      }),
    );
    return (e) => this.prepare(e, views.get(`${e.kind}/${e.actorId}`));
  }

  /**
   * An event of a tenant whose policy is not loaded (no call of the tenant came through this
   * guard yet, which a subscription needs): fail closed, hiding every field a policy could cover
   * from non-admins, and load the policy for the next events.
   */
  #unknownTenant(e: StoredEvent): EventView | null {
    if (!hasOwn(FieldPolicyFields, e.kind)) return null;
    void this.#load(e.tenant).catch(() => undefined);
    const kind = e.kind as FieldPolicyKind;
    const everything = (k: FieldPolicyKind) => FieldPolicyFields[k].map((f) => [f]);
    const emb = EMBEDDED[e.type];
    return (principal) => {
      if (!principal || principal.roles.includes('admin')) return undefined;
      const wire = toActorEvent(e);
      return JSON.stringify({ ...wire, data: redactEventData(kind, e.type, wire.data, everything(kind), emb ? everything(emb.kind) : NOTHING) });
    };
  }
}

function compile(rules: FieldRule[]): CompiledPolicy {
  const byKind = new Map<FieldPolicyKind, CompiledRule[]>();
  const relationalKinds = new Set<FieldPolicyKind>();
  for (const r of rules) {
    const c: CompiledRule = { kind: r.kind, path: p(r.path), text: r.path, read: r.read, write: r.write };
    let list = byKind.get(r.kind);
    if (!list) byKind.set(r.kind, (list = []));
    list.push(c);
    if ([...r.read, ...r.write].some((x) => x === 'creator' || x === 'assignee')) relationalKinds.add(r.kind);
  }
  return { byKind, relationalKinds, plans: new Map() };
}

function planFor(policy: CompiledPolicy, roles: readonly string[]): Plan | null {
  const plan: Plan = {};
  let any = false;
  for (const [kind, rules] of policy.byKind) {
    const hidden: Path[][] = [];
    const unwritable: CompiledRule[][] = [];
    for (let bits = 0; bits < 4; bits++) {
      const has = (r: FieldRole) => roles.includes(r) || (r === 'creator' && (bits & 1) !== 0) || (r === 'assignee' && (bits & 2) !== 0);
      const hiddenRules = rules.filter((r) => !r.read.some(has));
      const h = hiddenRules.map((r) => r.path);
      const prev = hidden.find((x) => sameRules(x, h));
      hidden.push(prev ?? h);
      const w = rules.filter((r) => !r.write.some(has));
      unwritable.push(unwritable.find((x) => sameRules(x, w)) ?? w);
    }
    if (hidden.every((h) => h.length === 0) && unwritable.every((w) => w.length === 0)) continue;
    const relational = hidden.some((h) => h !== hidden[0]) || unwritable.some((w) => w !== unwritable[0]);
    plan[kind] = { hidden, unwritable, relational };
    any = true;
  }
  return any ? plan : null;
}

function hide(value: unknown, hidden: Path[]): unknown {
  let out = value;
  for (const h of hidden) out = omitPath(out, h);
  return out;
}

/**
 * The first rule among `rules` whose field the params write: set (present) for plain maps,
 * changed from `current` for replacing maps.
 */
function touched(rules: CompiledRule[], maps: WriteMap[], params: unknown, current: Record<string, unknown> | undefined): CompiledRule | undefined {
  for (const r of rules) {
    for (const m of maps) {
      if (startsWith(r.path, m.to)) {
        const rest = r.path.slice(m.to.length);
        const at = [...m.from, ...rest];
        if (m.replace === undefined) {
          if (valuesAt(params, at).length > 0) return r;
        } else if (valuesAt(params, [...m.from, ...rest.slice(0, m.replace)]).length > 0) {
          if (canonicalJson(valuesAt(params, at)) !== canonicalJson(valuesAt(current, r.path))) return r;
        }
      } else if (startsWith(m.to, r.path)) {
        const written = valuesAt(params, m.from);
        if (written.length === 0) continue;
        if (m.replace === undefined || canonicalJson(written) !== canonicalJson(valuesAt(current, m.to))) return r;
      }
    }
  }
  return undefined;
}

/** Whether a replacing write could touch any of the rules (before the resource is read). */
function mayTouch(rules: CompiledRule[], maps: WriteMap[], params: unknown): boolean {
  for (const r of rules) {
    for (const m of maps) {
      if (startsWith(r.path, m.to)) {
        const rest = r.path.slice(m.to.length);
        const container = m.replace === undefined ? [...m.from, ...rest] : [...m.from, ...rest.slice(0, m.replace)];
        if (valuesAt(params, container).length > 0) return true;
      } else if (startsWith(m.to, r.path) && valuesAt(params, m.from).length > 0) return true;
    }
  }
  return false;
}

function refusal(principal: Principal, rule: CompiledRule, extra: Record<string, unknown> = {}): ProtocolError {
  const who = rule.write.length > 0 ? `${rule.write.join(', ')} and admin` : 'admin';
  const where = typeof extra.index === 'number' ? ` (${String(extra.param)}[${extra.index}])` : '';
  return new ProtocolError(
    'FORBIDDEN',
    `The tenant's field policy lets only ${who} write ${rule.kind} field ${rule.text}${where}; you are ${principal.principalId} (${principal.roles.join(', ')}). Leave ${rule.text} out.`,
    { kind: rule.kind, field: rule.text, allowedRoles: rule.write, ...extra },
  );
}

const MAX_DEPTH = 16;

function scanEvents(value: unknown, out: ActorEvent[], depth: number): void {
  if (depth > MAX_DEPTH) return;
  if (Array.isArray(value)) {
    for (const v of value) scanEvents(v, out, depth + 1);
    return;
  }
  if (!isObject(value)) return;
  const shape = shapeOf(value);
  if (shape === 'event') out.push(value as unknown as ActorEvent);
  else if (shape === null) for (const k in value) scanEvents(value[k], out, depth + 1);
}

function redactWalk(plan: Plan, me: string, value: unknown, owners: Map<string, Owners>, depth: number): unknown {
  if (depth > MAX_DEPTH) return value;
  if (Array.isArray(value)) {
    let out: unknown[] | null = null;
    for (let i = 0; i < value.length; i++) {
      const v = redactWalk(plan, me, value[i], owners, depth + 1);
      if (v !== value[i]) (out ??= value.slice())[i] = v;
    }
    return out ?? value;
  }
  if (!isObject(value)) return value;
  const shape = shapeOf(value);
  if (shape === 'event') {
    const kind = value.kind as FieldPolicyKind;
    if (!hasOwn(EVENT_MAPS, kind)) return value;
    const kp = plan[kind];
    const o = kp?.relational ? (owners.get(`${kind}/${value.actorId as string}`) ?? NO_OWNERS) : NO_OWNERS;
    const hidden = kp?.hidden[relationBits(o, me)] ?? NOTHING;
    const embedded = embeddedHidden(plan, value.type as string);
    if (hidden.length === 0 && embedded.length === 0) return value;
    const data = redactEventData(kind, value.type as string, value.data as Record<string, unknown>, hidden, embedded);
    return data === value.data ? value : { ...value, data };
  }
  if (shape !== null) {
    const kp = plan[shape];
    if (!kp) return value;
    return hide(value, kp.hidden[kp.relational ? relationBits(ownersOf(shape, value), me) : 0]!);
  }
  let out: Record<string, unknown> | null = null;
  for (const k in value) {
    const v = redactWalk(plan, me, value[k], owners, depth + 1);
    if (v !== value[k]) (out ??= { ...value })[k] = v;
  }
  return out ?? value;
}

/** A task report in CSV with the cells of hidden top-level fields emptied. */
function redactCsv(kp: KindPlan, me: string, csv: string): string {
  const rows = csvRecords(csv);
  const header = rows[0];
  if (!header) return csv;
  const columns = (h: Path[]) => h.filter((path) => path.length === 1 && header.includes(path[0]!)).map((path) => header.indexOf(path[0]!));
  if (kp.hidden.every((h) => columns(h).length === 0)) return csv;
  const createdBy = header.indexOf('createdBy');
  const assignedTo = header.indexOf('assignedTo');
  for (const row of rows.slice(1)) {
    const assignee = assignedTo >= 0 ? csvValue(row[assignedTo] ?? '') : '';
    const owners: Owners = { createdBy: createdBy >= 0 ? csvValue(row[createdBy] ?? '') : null, assignees: assignee ? [assignee] : [] };
    for (const c of columns(kp.hidden[kp.relational ? relationBits(owners, me) : 0]!)) row[c] = '';
  }
  return rows.map((r) => r.join(',')).join('\r\n') + '\r\n';
}

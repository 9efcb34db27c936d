import type { Environment } from '@marcbachmann/cel-js';
import { compileError, createEnvironment, setOwn, summaryOf, toJson } from './cel.js';
import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store, ViewRecord } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type {
  EffectivePolicy,
  Policy,
  Rule,
  RuleCategory,
  RuleEvaluation,
  RuleResult,
  RuleVerdict,
} from '../../protocol/rules.js';

export type { EffectivePolicy, RuleVerdict } from '../../protocol/rules.js';
export { toJson, type SourcePosition } from './cel.js';

/**
 * The variables a rule sees. Each is a map; one the caller leaves out is an empty map, so
 * `has(delegation.to)` is false rather than an error.
 */
export const RuleVariables = ['task', 'agent', 'principal', 'delegation', 'workspace', 'input'] as const;
/** The name of one rule variable. */
export type RuleVariable = (typeof RuleVariables)[number];

/** Variables as the caller gives them (JSON values); anything beyond {@link RuleVariables} is ignored. */
export type RuleVars = Partial<Record<RuleVariable, unknown>> & Record<string, unknown>;

/** Variables as the compiled expression receives them: all present. */
type CelVars = Record<RuleVariable, unknown>;

/** An expression compiled (parsed and type checked) once, evaluated many times. */
export interface CompiledRule {
  readonly expression: string;
  /** The result type the checker inferred: `bool`, `dyn`, `map<string, dyn>`, ... */
  readonly type: string;
  /**
   * Evaluates the expression and returns its value as JSON (CEL ints become numbers). Throws
   * the library's EvaluationError on a run-time error (a missing key, no such overload, ...).
   */
  run(vars: RuleVars): unknown;
}


/** Options of {@link RuleEngine}. */
export interface RuleEngineOptions {
  store: Store;
  /** Tenants whose rules and policies are kept in memory; the least recently used go first (default 1 000). */
  maxTenants?: number;
  /** Compiled expressions kept, keyed by tenant, rule and version (default 10 000). */
  maxCompiled?: number;
}

const EMPTY: Readonly<Record<string, never>> = Object.freeze({});
const ALLOWED: RuleVerdict = Object.freeze({ allowed: true });

/** A compiled expression as the library gives it: returns raw CEL values. */
type Exec = (vars: CelVars) => unknown;

/** A stored rule with its compiled expression, or why it does not compile. */
interface LoadedRule {
  rule: Rule;
  exec: Exec | null;
  compileError: string | null;
}

/** What running one rule gave: a raw CEL value, or the run-time error's summary. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: string };

/** A tenant's enabled rules by category, highest priority first. */
type RuleSet = Map<RuleCategory, LoadedRule[]>;

/**
 * Tenant rules (CEL) and per-task-type policies: the service handlers call to validate,
 * delegate, assign and default tasks.
 *
 * Numbers: JSON numbers are CEL `double`s, as in CEL's own JSON mapping; integer literals in an
 * expression are `int`s. CEL compares ints with doubles as numbers (`task.maxRetries > 2`,
 * `agent.costPerTask < 3`), and the engine adds the mixed arithmetic CEL leaves out (`int + double`
 * and so on yield a double), so `task.maxRetries + 1 > 3` works whatever the stored value. Results
 * go back as JSON: ints become numbers.
 *
 * Decisions fail closed: a rule that errors at run time, yields something other than a bool,
 * or no longer compiles denies.
 *
 * @example
 * ```ts
 * const rules = new RuleEngine({ store });
 * rules.attach(host);
 * const verdict = await rules.check('acme', 'task.validation', { task, principal: principalVars(p) });
 * if (!verdict.allowed) throw new ProtocolError('POLICY_DENIED', verdict.reason, { rule: verdict.rule.id });
 * ```
 */
export class RuleEngine {
  #store: Store;
  #env: Environment;
  #maxTenants: number;
  #maxCompiled: number;
  /** Rule sets and policies per tenant; Map order is use order (least recent first). */
  #rules = new Map<string, Promise<RuleSet>>();
  #policies = new Map<string, Promise<Map<string, Policy>>>();
  /** `tenant \0 rule id \0 version` → compiled expression or compile error. */
  #compiled = new Map<string, { exec: Exec | null; error: string | null }>();

  constructor(opts: RuleEngineOptions) {
    this.#store = opts.store;
    this.#maxTenants = opts.maxTenants ?? 1_000;
    this.#maxCompiled = opts.maxCompiled ?? 10_000;
    this.#env = createEnvironment(RuleVariables);
  }

  /**
   * Subscribes to the host's commits; any committed rule or policy event of a tenant drops that
   * tenant's cached rules or policies synchronously, so the very next decision sees the change.
   */
  attach(host: ActorHost): void {
    host.onCommit((events) => {
      for (const e of events) {
        if (e.kind === 'rule') this.#rules.delete(e.tenant);
        else if (e.kind === 'policy') this.#policies.delete(e.tenant);
      }
    });
  }

  /**
   * Drops cached rules and policies of a tenant (or of all). For changes this node did not
   * commit itself, such as another node's in a cluster.
   */
  invalidate(tenant?: string): void {
    if (tenant === undefined) {
      this.#rules.clear();
      this.#policies.clear();
    } else {
      this.#rules.delete(tenant);
      this.#policies.delete(tenant);
    }
  }

  /**
   * `task.validation` / `task.delegation`: every enabled rule of the category, highest priority
   * first, must yield `true`. The first that yields false denies with its message; one that
   * errors at run time or yields a non-boolean denies with a message built from that.
   */
  async check(tenant: string, category: 'task.validation' | 'task.delegation', vars: RuleVars): Promise<RuleVerdict> {
    const rules = (await this.#ruleSet(tenant)).get(category);
    if (!rules) return ALLOWED;
    const cel = celVars(vars);
    for (const r of rules) {
      const v = verdictOf(r, outcomeOf(r, cel));
      if (!v.allowed) return v;
    }
    return ALLOWED;
  }

  /**
   * `task.assignment`: loads the tenant's enabled assignment rules once and returns a synchronous
   * predicate evaluated per candidate agent with the variables `{...base, agent}`; null when the
   * tenant has no assignment rules (every agent is eligible).
   */
  async eligibility(tenant: string, base: RuleVars): Promise<((agent: Record<string, unknown>) => RuleVerdict) | null> {
    const rules = (await this.#ruleSet(tenant)).get('task.assignment');
    if (!rules) return null;
    const cel = celVars(base);
    return (agent) => {
      const vars: CelVars = { ...cel, agent: agent ?? EMPTY };
      for (const r of rules) {
        const v = verdictOf(r, outcomeOf(r, vars));
        if (!v.allowed) return v;
      }
      return ALLOWED;
    };
  }

  /**
   * `task.defaults`: each enabled rule yields a map (or null for "nothing"); the maps merge with
   * the higher priority winning. A rule that errors or yields something else is skipped and
   * reported in `errors`.
   */
  async defaults(tenant: string, vars: RuleVars): Promise<{ values: Record<string, unknown>; errors: { rule: string; message: string }[] }> {
    const rules = (await this.#ruleSet(tenant)).get('task.defaults');
    const values: Record<string, unknown> = {};
    const errors: { rule: string; message: string }[] = [];
    if (!rules) return { values, errors };
    const cel = celVars(vars);
    // Lowest priority first, so that higher priorities overwrite.
    for (let i = rules.length - 1; i >= 0; i--) {
      const r = rules[i]!;
      const d = defaultsFrom(outcomeOf(r, cel));
      if ('error' in d) errors.push({ rule: r.rule.name, message: d.error });
      else if (d.values) mergeInto(values, d.values);
    }
    return { values, errors };
  }

  /** The effective policy of a task type: its own policy merged over the tenant default (`*`). */
  async policy(tenant: string, taskType: string): Promise<EffectivePolicy> {
    const policies = await this.#policySet(tenant);
    return effectivePolicy(taskType, policies.get(taskType) ?? null, policies.get('*') ?? null);
  }

  /** Every policy of a tenant, ordered by task type (`*` first). */
  async policies(tenant: string): Promise<Policy[]> {
    return [...(await this.#policySet(tenant)).values()].sort((a, b) => (a.taskType < b.taskType ? -1 : a.taskType > b.taskType ? 1 : 0));
  }

  /**
   * Parses and type checks an expression. With a category, also checks that the result type fits
   * it (a bool for decisions, a map for defaults). Throws INVALID_PARAMS with the compiler's message
   * and `data: { field: 'expression', position: { line, column, offset }, code }`.
   */
  compile(expression: string, category?: RuleCategory): CompiledRule {
    const { exec, type } = this.#compileExec(expression, category);
    return { expression, type, run: (vars) => toJson(exec(celVars(vars))) };
  }

  /**
   * Dry run for `rule.evaluate`: one stored rule (also when disabled), every enabled rule of a
   * category (all evaluated, in the order the server runs them), or an ad-hoc expression.
   * Nothing is cached or changed. Throws NOT_FOUND for an unknown rule and INVALID_PARAMS for an
   * expression that does not compile.
   */
  async evaluate(
    tenant: string,
    target: { ruleId: string } | { category: RuleCategory } | { expression: string },
    vars: RuleVars,
  ): Promise<RuleEvaluation> {
    const cel = celVars(vars);
    if ('expression' in target) {
      const { exec } = this.#compileExec(target.expression);
      const out = runRule(exec, cel);
      const result: RuleResult = out.ok
        ? { rule: null, value: toJson(out.value), allowed: out.value === true }
        : { rule: null, value: null, allowed: false, error: out.error };
      return { results: [result], verdict: null };
    }
    let rules: LoadedRule[];
    let category: RuleCategory;
    if ('ruleId' in target) {
      const view = await this.#store.getView(tenant, 'rule', target.ruleId);
      if (!view) throw new ProtocolError('NOT_FOUND', `Rule ${target.ruleId} does not exist.`, { kind: 'rule', id: target.ruleId });
      const loaded = this.#load(tenant, view);
      rules = [loaded];
      category = loaded.rule.category;
    } else {
      category = target.category;
      rules = (await this.#ruleSet(tenant)).get(category) ?? [];
    }
    const outcomes = rules.map((r) => [r, outcomeOf(r, cel)] as const);
    if (category === 'task.defaults') {
      const results = outcomes.map(([r, out]): RuleResult => {
        const d = defaultsFrom(out);
        const value = out.ok ? toJson(out.value) : null;
        return 'error' in d ? { rule: r.rule.name, value, allowed: false, error: d.error } : { rule: r.rule.name, value, allowed: true };
      });
      const values: Record<string, unknown> = {};
      // Lowest priority first, so that higher priorities overwrite.
      for (let i = outcomes.length - 1; i >= 0; i--) {
        const d = defaultsFrom(outcomes[i]![1]);
        if ('values' in d && d.values) mergeInto(values, d.values);
      }
      return { results, verdict: null, values };
    }
    let verdict: RuleVerdict = ALLOWED;
    const results = outcomes.map(([r, out]): RuleResult => {
      const v = verdictOf(r, out);
      if (verdict.allowed && !v.allowed) verdict = v;
      return out.ok ? { rule: r.rule.name, value: toJson(out.value), allowed: v.allowed } : { rule: r.rule.name, value: null, allowed: false, error: out.error };
    });
    return { results, verdict };
  }

  #compileExec(expression: string, category?: RuleCategory): { exec: Exec; type: string } {
    let parsed: ReturnType<Environment['parse']>;
    let type: string;
    try {
      parsed = this.#env.parse(expression);
      const checked = parsed.check();
      if (!checked.valid) throw checked.error;
      type = checked.type ?? 'dyn';
    } catch (e) {
      throw compileError(expression, e);
    }
    if (category && !fitsCategory(category, type)) {
      const want = category === 'task.defaults' ? 'a map of task fields' : 'a bool';
      throw new ProtocolError('INVALID_PARAMS', `A ${category} rule must yield ${want}, but this expression yields ${type}.`, {
        field: 'expression',
        position: { line: 1, column: 1, offset: 0 },
        code: 'wrong_result_type',
        resultType: type,
      });
    }
    return { exec: parsed as Exec, type };
  }

  /** The tenant's enabled rules by category, loaded from the read model on first use. */
  #ruleSet(tenant: string): Promise<RuleSet> {
    return this.#cached(this.#rules, tenant, () => this.#loadRules(tenant));
  }

  #policySet(tenant: string): Promise<Map<string, Policy>> {
    return this.#cached(this.#policies, tenant, async () => {
      const views = await allViews(this.#store, tenant, 'policy');
      return new Map(views.map((v) => [v.id, v.doc as unknown as Policy]));
    });
  }

  #cached<T>(cache: Map<string, Promise<T>>, tenant: string, load: () => Promise<T>): Promise<T> {
    const hit = cache.get(tenant);
    if (hit) {
      // Map order is use order.
      cache.delete(tenant);
      cache.set(tenant, hit);
      return hit;
    }
    const p = load();
    cache.set(tenant, p);
    // A failed load is not cached: the next call tries again.
    p.catch(() => {
      if (cache.get(tenant) === p) cache.delete(tenant);
    });
    while (cache.size > this.#maxTenants) cache.delete(cache.keys().next().value!);
    return p;
  }

  async #loadRules(tenant: string): Promise<RuleSet> {
    const views = await allViews(this.#store, tenant, 'rule', ['enabled']);
    const set: RuleSet = new Map();
    for (const v of views) {
      const r = this.#load(tenant, v);
      let list = set.get(r.rule.category);
      if (!list) set.set(r.rule.category, (list = []));
      list.push(r);
    }
    for (const list of set.values()) list.sort(byPriority);
    return set;
  }

  /** A stored rule with its compiled expression, compiled once per (tenant, rule, version). */
  #load(tenant: string, view: ViewRecord): LoadedRule {
    const rule = view.doc as unknown as Rule;
    const key = `${tenant}\u0000${rule.id}\u0000${view.version}`;
    let entry = this.#compiled.get(key);
    if (entry) {
      this.#compiled.delete(key);
    } else {
      try {
        entry = { exec: this.#compileExec(rule.expression, rule.category).exec, error: null };
      } catch (e) {
        // Rules are compiled when registered; this only happens if the language changed since.
        entry = { exec: null, error: (e as Error).message };
      }
    }
    this.#compiled.set(key, entry);
    while (this.#compiled.size > this.#maxCompiled) this.#compiled.delete(this.#compiled.keys().next().value!);
    return { rule, exec: entry.exec, compileError: entry.error };
  }
}

/** The `principal` variable for a connection's principal: `{ id, tenantId, roles }`. */
export function principalVars(p: Principal): Record<string, unknown> {
  return { id: p.principalId, tenantId: p.tenantId, roles: [...p.roles] };
}

/**
 * A task type's policy merged over the tenant default: field by field, `parameters` shallowly.
 * Pure; exported for tests and for callers that hold both policies already.
 */
export function effectivePolicy(taskType: string, own: Policy | null, fallback: Policy | null): EffectivePolicy {
  const base = fallback && fallback !== own ? fallback : null;
  const defaults = { ...base?.defaults, ...own?.defaults };
  if (base?.defaults.parameters && own?.defaults.parameters) {
    defaults.parameters = { ...base.defaults.parameters, ...own.defaults.parameters };
  }
  return { taskType, defaults, assignment: { ...base?.assignment, ...own?.assignment } };
}



/** Every read-model row of a kind in a tenant (all pages). */
async function allViews(store: Store, tenant: string, kind: string, status?: string[]): Promise<ViewRecord[]> {
  const out: ViewRecord[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.queryViews(tenant, kind, { status, limit: 1000, cursor });
    out.push(...page.items);
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
  return out;
}

function celVars(v: RuleVars): CelVars {
  return {
    task: v.task ?? EMPTY,
    agent: v.agent ?? EMPTY,
    principal: v.principal ?? EMPTY,
    delegation: v.delegation ?? EMPTY,
    workspace: v.workspace ?? EMPTY,
    input: v.input ?? EMPTY,
  };
}

/** Highest priority first; equal priorities by name, so the order never depends on storage. */
function byPriority(a: LoadedRule, b: LoadedRule): number {
  return b.rule.priority - a.rule.priority || (a.rule.name < b.rule.name ? -1 : a.rule.name > b.rule.name ? 1 : 0);
}

function deny(r: LoadedRule, reason: string): RuleVerdict {
  return { allowed: false, rule: { id: r.rule.id, name: r.rule.name }, reason };
}

/** Runs a compiled expression, catching whatever it throws. */
function runRule(exec: Exec, vars: CelVars): Outcome {
  try {
    return { ok: true, value: exec(vars) };
  } catch (e) {
    return { ok: false, error: summaryOf(e) };
  }
}

/** Runs a stored rule; one that no longer compiles is an error. */
function outcomeOf(r: LoadedRule, vars: CelVars): Outcome {
  return r.exec ? runRule(r.exec, vars) : { ok: false, error: r.compileError ?? 'it does not compile' };
}

/** A decision rule's verdict; fails closed on anything but `true`. */
function verdictOf(r: LoadedRule, out: Outcome): RuleVerdict {
  if (!out.ok) return deny(r, `Rule ${r.rule.name} could not be evaluated: ${out.error}.`);
  if (out.value === true) return ALLOWED;
  if (out.value === false) return deny(r, r.rule.message);
  return deny(r, `Rule ${r.rule.name} yielded ${describe(toJson(out.value))} instead of true or false.`);
}

/** A defaults rule's map as JSON, nothing (null), or why it is skipped. */
function defaultsFrom(out: Outcome): { values: Record<string, unknown> | null } | { error: string } {
  if (!out.ok) return { error: out.error };
  if (out.value === null) return { values: null };
  const json = toJson(out.value);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return { error: `yielded ${describe(json)}, not a map` };
  return { values: json as Record<string, unknown> };
}

/** Whether a result type can serve a category: a bool for decisions, a map for defaults. */
function fitsCategory(category: RuleCategory, type: string): boolean {
  if (type === 'dyn') return true;
  return category === 'task.defaults' ? type.startsWith('map') || type === 'null_type' || type === 'null' : type === 'bool';
}

function mergeInto(target: Record<string, unknown>, source: Record<string, unknown>): void {
  for (const k of Object.keys(source)) setOwn(target, k, source[k]);
}


function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  const s = JSON.stringify(v);
  return `${typeof v} ${s.length > 40 ? `${s.slice(0, 40)}…` : s}`;
}




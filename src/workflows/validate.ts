import { ancestors, dependencies, findCycle } from '../../machines/workflowGraph.js';
import { ProtocolError } from '../../protocol/errors.js';
import { WorkflowDefinitionSchema, type WorkflowDefinition, type WorkflowTemplate } from '../../protocol/workflows.js';
import { compileExpression, expressionsIn, stepReferences } from './expressions.js';

/** Options of {@link validateDefinition}. */
export interface ValidateOptions {
  /**
   * Where the definition sits in the params, prefixed to every field and message
   * (`definition` for `workflow.update`); empty when its fields are the params themselves.
   */
  field?: string;
  /**
   * The definition is a template's: expressions holding a `{{parameter}}` placeholder are not
   * compiled (they only become CEL once the parameters are substituted), though their step
   * references are still checked.
   */
  template?: boolean;
}

/** A `{{parameter}}` placeholder. */
const PLACEHOLDER = /\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}/;

/**
 * Checks what the schema cannot: that a workflow definition is a runnable graph whose
 * expressions compile and only read steps that have run by then. Throws INVALID_PARAMS with a
 * message naming the field (`steps[2].dependsOn names unknown step 'x'.`) and `data.field`;
 * returns nothing when the definition is sound.
 *
 * Checks, in order: duplicate step ids; steps with neither an action nor an approval; approvals
 * with repeated approvers or weights for non-approvers; `dependsOn` naming unknown steps; a
 * dependency cycle; `onFailure: 'compensate'` in a workflow where nothing can be compensated;
 * `when`, `input` and `compensate.input` expressions that do not compile or refer to steps that
 * have not run before the step (a compensation may also read its own step, as `step.output` or
 * `steps.<itself>`).
 *
 * @example
 * ```ts
 * validateDefinition({ name: 'ci', type: 'sequential', steps: [{ id: 'build', action: 'build' }] });
 * ```
 */
export function validateDefinition(def: WorkflowDefinition, opts: ValidateOptions = {}): void {
  const at = (f: string) => (opts.field ? `${opts.field}.${f}` : f);
  const refuse = (f: string, message: string, data: Record<string, unknown> = {}): never => {
    throw new ProtocolError('INVALID_PARAMS', `${at(f)} ${message}`, { field: at(f), ...data });
  };

  const index = new Map<string, number>();
  def.steps.forEach((s, i) => {
    const first = index.get(s.id);
    if (first !== undefined) refuse(`steps[${i}].id`, `repeats the step id '${s.id}' of steps[${first}]; step ids must be unique.`, { stepId: s.id });
    index.set(s.id, i);
  });

  def.steps.forEach((s, i) => {
    if (s.action === undefined && s.approval === undefined) {
      refuse(`steps[${i}]`, `('${s.id}') has neither an action nor an approval; give it one of them.`, { stepId: s.id });
    }
    if (s.action !== undefined && s.approval !== undefined) {
      refuse(`steps[${i}]`, `('${s.id}') has both an action and an approval; a step is one or the other, so put the approval in a step of its own that depends on this one.`, { stepId: s.id });
    }
    if (s.approval) {
      const seen = new Set<string>();
      for (const a of s.approval.approvers) {
        if (seen.has(a)) refuse(`steps[${i}].approval.approvers`, `lists '${a}' more than once.`, { stepId: s.id, approver: a });
        seen.add(a);
      }
      for (const w of Object.keys(s.approval.weights ?? {})) {
        if (!seen.has(w)) refuse(`steps[${i}].approval.weights`, `names '${w}', who is not among the approvers of '${s.id}'.`, { stepId: s.id, approver: w });
      }
    }
    for (const d of s.dependsOn ?? []) {
      if (!index.has(d)) refuse(`steps[${i}].dependsOn`, `names unknown step '${d}'.`, { stepId: s.id, unknown: d });
    }
  });

  const deps = dependencies(def);
  const cycle = findCycle(deps);
  if (cycle) {
    refuse(`steps[${index.get(cycle[0]!)!}].dependsOn`, `closes a dependency cycle: ${cycle.join(' → ')} (each step waits for the next), so none of them could ever start.`, {
      cycle,
    });
  }

  const compensable = def.steps.some((s) => s.compensate !== undefined);
  def.steps.forEach((s, i) => {
    if (s.onFailure === 'compensate' && !compensable) {
      refuse(`steps[${i}].onFailure`, `is 'compensate', but no step of the workflow has a compensate action, so there is nothing to undo; add compensate actions or choose 'fail_workflow'.`, {
        stepId: s.id,
      });
    }
  });

  def.steps.forEach((s, i) => {
    const before = ancestors(deps, s.id);
    const check = (expression: string, field: string, readable: Set<string>) => {
      if (!(opts.template && PLACEHOLDER.test(expression))) compileExpression(expression, at(field));
      for (const ref of stepReferences(expression)) {
        if (!index.has(ref)) refuse(field, `refers to step '${ref}', which does not exist.`, { stepId: s.id, reference: ref });
        if (!readable.has(ref)) refuse(field, `refers to step '${ref}', which does not run before '${s.id}'.`, { stepId: s.id, reference: ref });
      }
    };
    if (s.when !== undefined) check(s.when, `steps[${i}].when`, before);
    for (const e of expressionsIn(s.input ?? {}, `steps[${i}].input`)) check(e.expression, e.field, before);
    if (s.compensate) {
      // A compensation runs after its step completed: it may read the step itself.
      const readable = new Set([...before, s.id]);
      for (const e of expressionsIn(s.compensate.input ?? {}, `steps[${i}].compensate.input`)) check(e.expression, e.field, readable);
    }
  });
}

/**
 * A definition as stored: a deep copy without `undefined` members, with `active` defaulting to
 * true.
 */
export function normalizeDefinition(def: WorkflowDefinition): WorkflowDefinition {
  const copy = JSON.parse(JSON.stringify(def)) as WorkflowDefinition;
  return { ...copy, active: copy.active ?? true };
}

/** A template parameter as declared. */
export type TemplateParameter = WorkflowTemplate['parameters'][number];

/** A parameter value. */
export type TemplateValue = string | number | boolean;

const PLACEHOLDERS = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
const WHOLE_PLACEHOLDER = /^\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$/;

/** Every `{{name}}` in the strings (object keys included) of a value, with where it is. */
export function placeholdersIn(value: unknown, field: string): { name: string; field: string }[] {
  if (typeof value === 'string') return [...value.matchAll(PLACEHOLDERS)].map((m) => ({ name: m[1]!, field }));
  if (Array.isArray(value)) return value.flatMap((v, i) => placeholdersIn(v, `${field}[${i}]`));
  if (value && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => [
      ...placeholdersIn(k, field),
      ...placeholdersIn(v, `${field}.${k}`),
    ]);
  }
  return [];
}

/**
 * Checks a template before it is stored: parameter names are unique, every `{{name}}` in the
 * definition is a declared parameter, and the definition is sound apart from expressions that
 * only compile once parameters are substituted. Fields are named as in `template.create`'s params.
 */
export function validateTemplate(parameters: readonly TemplateParameter[], definition: WorkflowDefinition): void {
  const declared = new Map<string, number>();
  parameters.forEach((p, i) => {
    if (declared.has(p.name)) {
      throw new ProtocolError('INVALID_PARAMS', `parameters[${i}].name repeats the parameter '${p.name}' of parameters[${declared.get(p.name)}].`, {
        field: `parameters[${i}].name`,
      });
    }
    declared.set(p.name, i);
  });
  for (const u of placeholdersIn(definition, 'definition')) {
    if (!declared.has(u.name)) {
      const known = [...declared.keys()].join(', ') || 'none';
      throw new ProtocolError('INVALID_PARAMS', `${u.field} uses {{${u.name}}}, which is not a parameter of the template (its parameters: ${known}).`, {
        field: u.field,
        parameter: u.name,
      });
    }
  }
  validateDefinition(definition, { field: 'definition', template: true });
}

function substitute(value: unknown, values: ReadonlyMap<string, TemplateValue>): unknown {
  if (typeof value === 'string') {
    const whole = WHOLE_PLACEHOLDER.exec(value);
    if (whole) return values.get(whole[1]!) ?? '';
    return value.replace(PLACEHOLDERS, (_m, name: string) => String(values.get(name) ?? ''));
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, values));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      Object.defineProperty(out, substitute(k, values) as string, { value: substitute(v, values), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

/**
 * The workflow definition a template makes with the given parameter values: every `{{name}}` in
 * its strings replaced by the value (or the parameter's default; an optional parameter without
 * either becomes the empty string), a string that is exactly `{{name}}` taking the value with
 * its type. The result must be a valid workflow. Throws INVALID_PARAMS for an unknown or
 * missing required parameter (`field: parameters.<name>`) and for a definition the values
 * break.
 *
 * @example
 * ```ts
 * const def = instantiateTemplate(template, { service: 'api', replicas: 3 });
 * ```
 */
export function instantiateTemplate(
  template: Pick<WorkflowTemplate, 'id' | 'parameters' | 'definition'>,
  given: Readonly<Record<string, TemplateValue>> = {},
  name?: string,
): WorkflowDefinition {
  const declared = new Map(template.parameters.map((p) => [p.name, p]));
  for (const k of Object.keys(given)) {
    if (!declared.has(k)) {
      const known = [...declared.keys()].join(', ') || 'none';
      throw new ProtocolError('INVALID_PARAMS', `Template ${template.id} has no parameter '${k}' (its parameters: ${known}).`, { field: `parameters.${k}`, parameter: k });
    }
  }
  const values = new Map<string, TemplateValue>();
  for (const p of template.parameters) {
    const v = Object.hasOwn(given, p.name) ? given[p.name] : p.default;
    if (v === undefined) {
      if (p.required) {
        throw new ProtocolError('INVALID_PARAMS', `Template ${template.id} needs the parameter '${p.name}'${p.description ? ` (${p.description})` : ''}.`, {
          field: `parameters.${p.name}`,
          parameter: p.name,
        });
      }
      continue;
    }
    values.set(p.name, v);
  }
  const raw = substitute(template.definition, values) as Record<string, unknown>;
  if (name !== undefined) raw.name = name;
  const parsed = WorkflowDefinitionSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
    const first = issues[0]!;
    throw new ProtocolError('INVALID_PARAMS', `With these parameters the template does not make a valid workflow: ${first.path || '(definition)'} ${first.message}.`, {
      field: 'parameters',
      issues,
    });
  }
  const def = normalizeDefinition(parsed.data);
  try {
    validateDefinition(def);
  } catch (e) {
    if (e instanceof ProtocolError) throw new ProtocolError(e.reason, `With these parameters the template does not make a valid workflow: ${e.message}`, e.data);
    throw e;
  }
  return def;
}

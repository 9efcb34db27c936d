import type { Environment } from '@marcbachmann/cel-js';
import { ProtocolError } from '../../protocol/errors.js';
import { compileError, createEnvironment, summaryOf, toJson } from '../policy/cel.js';

/** Variables of workflow expressions: the execution's `input`, earlier `steps` and the `step` being undone. */
export const WorkflowVariables = ['input', 'steps', 'step'] as const;

/** Values of the variables; missing ones are empty maps. */
export type WorkflowVars = Partial<Record<(typeof WorkflowVariables)[number], unknown>>;

type Exec = (vars: Record<string, unknown>) => unknown;

let env: Environment | null = null;
const compiled = new Map<string, Exec>();
const MAX_COMPILED = 10_000;

/** A string that is one whole `${expression}`. */
const TEMPLATE = /^\$\{([\s\S]+)\}$/;

/**
 * Compiles a workflow expression (cached), or throws INVALID_PARAMS with the compiler's message
 * and position; `field` names where it came from (`steps[2].when`).
 */
export function compileExpression(expression: string, field: string): Exec {
  const hit = compiled.get(expression);
  if (hit) return hit;
  env ??= createEnvironment(WorkflowVariables);
  let exec: Exec;
  try {
    const parsed = env.parse(expression);
    const checked = parsed.check();
    if (!checked.valid) throw checked.error;
    exec = parsed as unknown as Exec;
  } catch (e) {
    const err = compileError(expression, e);
    throw new ProtocolError('INVALID_PARAMS', `${field}: ${err.message}`, { ...err.data, field });
  }
  if (compiled.size >= MAX_COMPILED) compiled.delete(compiled.keys().next().value!);
  compiled.set(expression, exec);
  return exec;
}

/** Evaluates an expression to JSON; throws an Error naming the field when it fails at run time. */
export function evaluate(expression: string, vars: WorkflowVars, field: string): unknown {
  const exec = compileExpression(expression, field);
  try {
    return toJson(exec({ input: vars.input ?? {}, steps: vars.steps ?? {}, step: vars.step ?? {} }));
  } catch (e) {
    throw new Error(`${field}: ${summaryOf(e)}`);
  }
}

/** Every `${expression}` inside a value (strings anywhere in objects and arrays), with where it is. */
export function expressionsIn(value: unknown, field: string): { expression: string; field: string }[] {
  if (typeof value === 'string') {
    const m = TEMPLATE.exec(value);
    return m ? [{ expression: m[1]!, field }] : [];
  }
  if (Array.isArray(value)) return value.flatMap((v, i) => expressionsIn(v, `${field}[${i}]`));
  if (value && typeof value === 'object') {
    return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => expressionsIn(v, `${field}.${k}`));
  }
  return [];
}

/** Replaces every `${expression}` inside a value by its result; other values stay as they are. */
export function resolve(value: unknown, vars: WorkflowVars, field: string): unknown {
  if (typeof value === 'string') {
    const m = TEMPLATE.exec(value);
    return m ? evaluate(m[1]!, vars, field) : value;
  }
  if (Array.isArray(value)) return value.map((v, i) => resolve(v, vars, `${field}[${i}]`));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      Object.defineProperty(out, k, { value: resolve(v, vars, `${field}.${k}`), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  return value;
}

/** Step ids an expression refers to as `steps.<id>` or `steps["<id>"]`. */
export function stepReferences(expression: string): string[] {
  const ids = new Set<string>();
  for (const m of expression.matchAll(/\bsteps\s*(?:\.\s*([A-Za-z][A-Za-z0-9_-]*)|\[\s*["']([^"']+)["']\s*\])/g)) ids.add((m[1] ?? m[2])!);
  return [...ids];
}

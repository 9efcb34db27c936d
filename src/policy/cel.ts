import { Environment } from '@marcbachmann/cel-js';
import { ProtocolError } from '../../protocol/errors.js';

/**
 * The CEL set-up shared by tenant rules and workflow expressions: one environment per set of
 * variable names, the mixed int/double arithmetic CEL leaves out, JSON conversion of results and
 * compile errors with line and column.
 */

/** Where a compile error is: 1-based line and column, and the 0-based character offset. */
export interface SourcePosition {
  line: number;
  column: number;
  offset: number;
}

/**
 * A CEL value as JSON: ints (bigint) become numbers, bytes base64, timestamps ISO strings,
 * durations and types their CEL text; non-finite doubles become null.
 */
export function toJson(v: unknown): unknown {
  switch (typeof v) {
    case 'boolean':
    case 'string':
      return v;
    case 'number':
      return Number.isFinite(v) ? v : null;
    case 'bigint':
      return Number(v);
    case 'object': {
      if (v === null) return null;
      if (Array.isArray(v)) return v.map(toJson);
      if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
      if (v instanceof Date) return v.toISOString();
      if (v instanceof Map) {
        const out: Record<string, unknown> = {};
        for (const [k, x] of v) setOwn(out, String(k), toJson(x));
        return out;
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto === Object.prototype || proto === null) {
        const out: Record<string, unknown> = {};
        for (const k of Object.keys(v)) setOwn(out, k, toJson((v as Record<string, unknown>)[k]));
        return out;
      }
      // Library wrappers: uint (valueOf is a bigint), durations, types.
      const prim = (v as { valueOf(): unknown }).valueOf();
      return typeof prim === 'bigint' ? Number(prim) : String(v);
    }
    default:
      return null;
  }
}

/** An environment with the given variables (each a map) and mixed arithmetic. */
export function createEnvironment(variables: readonly string[]): Environment {
  const env = new Environment({
    unlistedVariablesAreDyn: false,
    // Defaults rules yield maps of mixed value types: {"priority": "high", "maxRetries": 3}.
    homogeneousAggregateLiterals: false,
    limits: { maxAstNodes: 2048, maxDepth: 64, maxListElements: 256, maxMapEntries: 256, maxCallArguments: 16 },
  });
  for (const v of variables) env.registerVariable(v, 'map');
  // JSON numbers arrive as doubles while literals are ints; CEL compares the two but has no
  // mixed arithmetic, which would make `task.maxRetries + 1` an error.
  const ops: Record<string, (a: number, b: number) => number> = {
    '+': (a, b) => a + b,
    '-': (a, b) => a - b,
    '*': (a, b) => a * b,
    '/': (a, b) => a / b,
  };
  for (const [op, f] of Object.entries(ops)) {
    // The explicit result type matters: without it the library types `int * double` as int.
    env.registerOperator(`double ${op} int: double`, (a: number, b: bigint) => f(a, Number(b)));
    env.registerOperator(`int ${op} double: double`, (a: bigint, b: number) => f(Number(a), b));
  }
  return env;
}

/** The library's one-line summary of an error (its `message` adds a source excerpt). */
export function summaryOf(e: unknown): string {
  const s = (e as { summary?: unknown }).summary;
  return typeof s === 'string' && s ? s : String((e as Error).message ?? e).split('\n')[0]!;
}

/** A library parse or type error as INVALID_PARAMS with line, column and offset. */
export function compileError(source: string, e: unknown): ProtocolError {
  const err = e as { range?: { start: number }; node?: { pos?: number }; code?: string; message?: string };
  const offset = Math.max(0, Math.min(source.length, err.range?.start ?? err.node?.pos ?? 0));
  const position = positionOf(source, offset);
  const summary = summaryOf(e);
  return new ProtocolError('INVALID_PARAMS', `The expression does not compile: ${summary} (line ${position.line}, column ${position.column}).`, {
    field: 'expression',
    position,
    code: err.code ?? 'compile_error',
    detail: err.message ?? summary,
  });
}

/** 1-based line and column of a character offset. */
export function positionOf(source: string, offset: number): SourcePosition {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset; i++) {
    if (source.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1, offset };
}

/** Assigns a key as an own property, also `__proto__`, which plain assignment would not. */
export function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  if (k === '__proto__') Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  else o[k] = v;
}

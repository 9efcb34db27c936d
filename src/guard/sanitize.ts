import { ProtocolError } from '../../protocol/errors.js';
import type { CallGuard } from '../server/App.js';

/**
 * Bounds on the shape of a call's params, checked before the method's schema sees them. The
 * frame size limit bounds the bytes; these bound what those bytes may build: deep nesting
 * (recursive code further on), huge strings and wide objects or arrays.
 */
export interface InputLimits {
  /** Deepest nesting of objects and arrays, counting params itself as 1 (`TROUPE_MAX_JSON_DEPTH`). */
  maxDepth: number;
  /** Longest string value, in UTF-16 code units (`TROUPE_MAX_STRING_LENGTH`). */
  maxStringLength: number;
  /** Longest object key. */
  maxKeyLength: number;
  /** Most keys of one object. */
  maxKeys: number;
  /** Most items of one array. */
  maxItems: number;
}

/** The limits used unless the server is configured otherwise. */
export const DEFAULT_INPUT_LIMITS: Readonly<InputLimits> = {
  maxDepth: 32,
  maxStringLength: 1_000_000,
  maxKeyLength: 256,
  maxKeys: 10_000,
  maxItems: 10_000,
};

/**
 * Keys that reach an object's prototype when code assigns them (`o[k] = v`, `Object.assign`,
 * naive deep merges). JSON.parse makes `__proto__` an ordinary own property, so the danger only
 * starts when such an object is copied key by key; refusing these keys up front makes every
 * later copy safe.
 */
const PROTOTYPE_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** C0 control characters except tab, newline and carriage return, and DEL. */
const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/;
const CONTROL_ALL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g;

/** Which check refused the params: `data.check` of the INVALID_PARAMS error. */
export type InputCheck =
  | 'maxDepth'
  | 'maxStringLength'
  | 'maxKeyLength'
  | 'maxKeys'
  | 'maxItems'
  | 'prototypeKey'
  | 'operatorKey'
  | 'controlCharacterKey';

type Segment = string | number;

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * A path as JavaScript would write it: `params.parameters.a.b`, `params.tasks[0].title`,
 * `params.parameters["a.b"]`. Keys beyond 64 characters are shortened for the message.
 */
export function pathText(path: readonly Segment[]): string {
  let out = 'params';
  for (const s of path) {
    if (typeof s === 'number') out += `[${s}]`;
    else if (s.length <= 64 && IDENTIFIER.test(s)) out += `.${s}`;
    else out += `[${JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s)}]`;
  }
  return out;
}

class Refusal {
  constructor(
    readonly check: InputCheck,
    readonly path: Segment[],
    readonly message: (where: string) => string,
    readonly limit?: number,
  ) {}
}

/**
 * Walks params once: refuses what exceeds the limits or carries dangerous keys, and strips
 * control characters from every string in place (so neither the schema, the handlers nor the
 * store ever see them). Throws INVALID_PARAMS naming the first offending path, e.g.
 * `params.parameters.a.b`, with `data.path`, `data.check` and `data.limit`.
 *
 * Keys starting with `$` or containing `.` are refused because document stores read them as
 * query and update operators or as field paths (MongoDB `$where`, `$set`, `"a.b"`): a task's
 * `parameters` stored as a document and later matched or patched could otherwise be turned into
 * an operator by its author. Refusing them on the wire keeps every store adapter safe without
 * escaping, and the error tells the client to rename the key.
 *
 * @example
 * ```ts
 * const params = JSON.parse('{"title":"a\\u0000b"}');
 * sanitizeParams('task.create', params);
 * params.title; // 'ab'
 * ```
 */
export function sanitizeParams(method: string, params: unknown, limits: Readonly<InputLimits> = DEFAULT_INPUT_LIMITS): void {
  if (typeof params !== 'object' || params === null) return;
  const path: Segment[] = [];
  const refusal = walk(params as Record<string, unknown> | unknown[], 1, path, limits);
  if (!refusal) return;
  const where = pathText(refusal.path);
  const data: Record<string, unknown> = { method, path: where, check: refusal.check };
  if (refusal.limit !== undefined) data.limit = refusal.limit;
  throw new ProtocolError('INVALID_PARAMS', `Invalid params for ${method}: ${refusal.message(where)}`, data);
}

function walk(node: Record<string, unknown> | unknown[], depth: number, path: Segment[], limits: Readonly<InputLimits>): Refusal | null {
  if (depth > limits.maxDepth) {
    return new Refusal('maxDepth', [...path], (w) => `${w} is nested ${depth} levels deep; at most ${limits.maxDepth} are allowed. Flatten the structure.`, limits.maxDepth);
  }
  if (Array.isArray(node)) {
    if (node.length > limits.maxItems) {
      return new Refusal('maxItems', [...path], (w) => `${w} has ${node.length} items; at most ${limits.maxItems} are allowed. Split the request.`, limits.maxItems);
    }
    for (let i = 0; i < node.length; i++) {
      const v = node[i];
      if (typeof v === 'string') {
        if (v.length > limits.maxStringLength) return tooLong([...path, i], v.length, limits);
        if (CONTROL.test(v)) node[i] = v.replace(CONTROL_ALL, '');
      } else if (typeof v === 'object' && v !== null) {
        path.push(i);
        const r = walk(v as Record<string, unknown>, depth + 1, path, limits);
        if (r) return r;
        path.pop();
      }
    }
    return null;
  }
  const keys = Object.keys(node);
  if (keys.length > limits.maxKeys) {
    return new Refusal('maxKeys', [...path], (w) => `${w} has ${keys.length} keys; at most ${limits.maxKeys} are allowed. Split the request.`, limits.maxKeys);
  }
  for (const k of keys) {
    const bad = badKey(k, path, limits);
    if (bad) return bad;
    const v = node[k];
    if (typeof v === 'string') {
      if (v.length > limits.maxStringLength) return tooLong([...path, k], v.length, limits);
      if (CONTROL.test(v)) node[k] = v.replace(CONTROL_ALL, '');
    } else if (typeof v === 'object' && v !== null) {
      path.push(k);
      const r = walk(v as Record<string, unknown>, depth + 1, path, limits);
      if (r) return r;
      path.pop();
    }
  }
  return null;
}

function tooLong(path: Segment[], length: number, limits: Readonly<InputLimits>): Refusal {
  return new Refusal(
    'maxStringLength',
    path,
    (w) => `${w} is ${length} characters long; at most ${limits.maxStringLength} are allowed. Store large content elsewhere and pass a reference.`,
    limits.maxStringLength,
  );
}

/** The refusal for a key, or null; checked in the order that gives the most useful message. */
function badKey(k: string, path: Segment[], limits: Readonly<InputLimits>): Refusal | null {
  if (k.length > limits.maxKeyLength) {
    return new Refusal('maxKeyLength', [...path, k], (w) => `the key at ${w} is ${k.length} characters long; at most ${limits.maxKeyLength} are allowed.`, limits.maxKeyLength);
  }
  if (PROTOTYPE_KEYS.has(k)) {
    return new Refusal('prototypeKey', [...path, k], (w) => `the key "${k}" at ${w} is not allowed (__proto__, constructor and prototype are refused everywhere); rename it.`);
  }
  const first = k.charCodeAt(0);
  if (first === 36 /* $ */ || k.includes('.')) {
    return new Refusal('operatorKey', [...path, k], (w) => `the key at ${w} ${first === 36 ? 'starts with "$"' : 'contains "."'}, which stores read as an operator or a field path; rename it.`);
  }
  if (CONTROL.test(k)) {
    return new Refusal('controlCharacterKey', [...path, k], (w) => `the key at ${w} contains control characters; remove them.`);
  }
  return null;
}

/**
 * A {@link CallGuard} that applies {@link sanitizeParams} to every call's raw params, also to
 * calls made before authentication.
 *
 * @example
 * ```ts
 * server.use(inputGuard({ maxDepth: 16 }));
 * ```
 */
export function inputGuard(limits: Partial<InputLimits> = {}): CallGuard {
  const effective: InputLimits = { ...DEFAULT_INPUT_LIMITS };
  for (const [k, v] of Object.entries(limits) as [keyof InputLimits, number | undefined][]) if (v !== undefined) effective[k] = v;
  return {
    checkParams(method, params) {
      sanitizeParams(method, params, effective);
    },
  };
}

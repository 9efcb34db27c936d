import type { Json } from './fixture.js';

/**
 * Matching of received messages against fixture patterns, and substitution of captured values
 * into messages to send.
 *
 * In a pattern, objects match on the keys given (other keys of the message are ignored), arrays
 * element by element with the same length, and other values by equality. Strings starting with
 * `$` are matchers:
 *
 * | pattern | matches |
 * |---|---|
 * | `"$any"` | any value, `null` included (the key must be present) |
 * | `"$string"`, `"$number"` | any string / any number |
 * | `"$uuid"` | a UUID string (any version) |
 * | `"$timestamp"` | an ISO 8601 date-time string, e.g. `2025-01-31T12:00:00.000Z` |
 * | `"$capture:NAME"` | any value, stored as NAME when the whole message matches |
 * | `"$ref:NAME"` | a value equal to the one stored as NAME |
 * | `"$$text"` | the literal string `"$text"` |
 *
 * In `send`, a string value that is exactly `"$ref:NAME"` is replaced by the stored value (of
 * any JSON type); `$ref` inside a longer string is not substituted. `"$now"` and `"$now+MS"` /
 * `"$now-MS"` become the ISO 8601 time of sending, shifted by MS milliseconds, and `"$$text"`
 * becomes `"$text"`.
 */

/** Values stored by `$capture:NAME`, by name. */
export type Captures = ReadonlyMap<string, unknown>;

/** One place where a message differs from a pattern. */
export interface Mismatch {
  /** JSONPath-like location, e.g. `$.result.status` or `$[1].error.code`. */
  path: string;
  /** What the pattern wanted, in words. */
  expected: string;
  /** What the message had there, in words. */
  actual: string;
}

/** The outcome of matching one message against a pattern. */
export interface MatchResult {
  ok: boolean;
  /** Values captured by the pattern (only meaningful when `ok`). */
  captured: Map<string, unknown>;
  /** Every difference found; empty when `ok`. */
  mismatches: Mismatch[];
  /** How many parts of the pattern matched; ranks near misses when reporting a failure. */
  score: number;
}

const NAME = '[A-Za-z0-9_.-]+';
const CAPTURE = new RegExp(`^\\$capture:(${NAME})$`);
const REF = new RegExp(`^\\$ref:(${NAME})$`);
const NOW = /^\$now(?:([+-])(\d{1,12}))?$/;
const SIMPLE = ['$any', '$string', '$number', '$uuid', '$timestamp'] as const;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$/;

/** True for a UUID string (8-4-4-4-12 hex digits). */
export function isUuid(v: unknown): v is string {
  return typeof v === 'string' && UUID.test(v);
}

/** True for an ISO 8601 date-time string with a zone (`Z` or an offset) that denotes a real time. */
export function isTimestamp(v: unknown): v is string {
  return typeof v === 'string' && ISO_TIME.test(v) && !Number.isNaN(Date.parse(v));
}

/** Structural equality of JSON values. */
export function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a);
    return ka.length === Object.keys(b).length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && jsonEqual(a[k], b[k]));
  }
  return false;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A short, one-line rendering of a value for messages. */
export function show(v: unknown, max = 80): string {
  if (v === undefined) return 'nothing (the key is missing)';
  const s = JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

function child(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

function kindOf(v: unknown): string {
  if (v === undefined) return 'nothing (the key is missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  return typeof v === 'object' ? 'an object' : `${typeof v} ${show(v)}`;
}

/**
 * Matches a message against a pattern. Captures are only returned, never stored here: the
 * caller keeps them when it consumes the message.
 *
 * @example
 * ```ts
 * const r = match({ id: 1, result: { id: '$capture:task', status: 'assigned' } }, message, new Map());
 * if (r.ok) captures.set('task', r.captured.get('task'));
 * ```
 */
export function match(pattern: Json, actual: unknown, captures: Captures): MatchResult {
  const captured = new Map<string, unknown>();
  const mismatches: Mismatch[] = [];
  let score = 0;
  const miss = (path: string, expected: string, got: unknown) => mismatches.push({ path, expected, actual: kindOf(got) });

  const walk = (p: Json, a: unknown, path: string): void => {
    if (typeof p === 'string' && p.startsWith('$')) {
      if (p.startsWith('$$')) {
        if (a === p.slice(1)) score++;
        else miss(path, show(p.slice(1)), a);
        return;
      }
      const ok = (cond: boolean, expected: string) => (cond ? score++ : miss(path, expected, a));
      switch (p) {
        case '$any':
          return void ok(a !== undefined, 'any value');
        case '$string':
          return void ok(typeof a === 'string', 'a string');
        case '$number':
          return void ok(typeof a === 'number', 'a number');
        case '$uuid':
          return void ok(isUuid(a), 'a UUID');
        case '$timestamp':
          return void ok(isTimestamp(a), 'an ISO 8601 timestamp');
      }
      const cap = CAPTURE.exec(p);
      if (cap) {
        if (a === undefined) return void miss(path, `a value to capture as ${cap[1]}`, a);
        const earlier = captured.get(cap[1]!);
        if (captured.has(cap[1]!) && !jsonEqual(earlier, a)) return void miss(path, `${show(earlier)} (captured as ${cap[1]} earlier in this pattern)`, a);
        captured.set(cap[1]!, a);
        return void score++;
      }
      const ref = REF.exec(p);
      if (ref) {
        const name = ref[1]!;
        const has = captured.has(name) || captures.has(name);
        if (!has) return void miss(path, `the value captured as ${name}, but nothing was captured under that name`, a);
        const want = captured.has(name) ? captured.get(name) : captures.get(name);
        return void ok(jsonEqual(want, a), `${show(want)} ($ref:${name})`);
      }
      return void miss(path, `a known matcher, but ${show(p)} is not one (write "$${p}" for the literal string)`, a);
    }
    if (Array.isArray(p)) {
      if (!Array.isArray(a)) return void miss(path, `an array of ${p.length}`, a);
      if (a.length !== p.length) miss(path, `an array of ${p.length}`, a);
      else score++;
      p.forEach((x, i) => walk(x, a[i], child(path, i)));
      return;
    }
    if (isObject(p)) {
      if (!isObject(a)) return void miss(path, 'an object', a);
      score++;
      for (const [k, v] of Object.entries(p)) walk(v as Json, a[k], child(path, k));
      return;
    }
    if (jsonEqual(p, a)) score++;
    else miss(path, show(p), a);
  };

  walk(pattern, actual, '$');
  return { ok: mismatches.length === 0, captured, mismatches, score };
}

/**
 * Replaces `"$ref:NAME"`, `"$now"`, `"$now±MS"` and `"$$text"` string values in a message to send.
 *
 * @param now the sending time in ms since the epoch
 * @throws Error naming the path when a `$ref` has nothing captured
 */
export function substitute(value: Json, captures: Captures, now: number, path = '$'): Json {
  if (typeof value === 'string') {
    if (value.startsWith('$$')) return value.slice(1);
    const ref = REF.exec(value);
    if (ref) {
      if (!captures.has(ref[1]!)) throw new Error(`${path}: nothing was captured as "${ref[1]}"`);
      return captures.get(ref[1]!) as Json;
    }
    const t = NOW.exec(value);
    if (t) return new Date(now + (t[1] === '-' ? -1 : 1) * Number(t[2] ?? 0)).toISOString();
    return value;
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, captures, now, child(path, i)));
  if (isObject(value)) {
    const out: { [k: string]: Json } = {};
    for (const [k, v] of Object.entries(value)) out[k] = substitute(v as Json, captures, now, child(path, k));
    return out;
  }
  return value;
}

function walkStrings(value: Json, path: string, fn: (s: string, path: string) => void): void {
  if (typeof value === 'string') fn(value, path);
  else if (Array.isArray(value)) value.forEach((v, i) => walkStrings(v, child(path, i), fn));
  else if (isObject(value)) for (const [k, v] of Object.entries(value)) walkStrings(v as Json, child(path, k), fn);
}

/** Problems with the matchers of a pattern (unknown `$` words), each prefixed with `base` and a path. */
export function checkPattern(pattern: Json, base: string): string[] {
  const issues: string[] = [];
  walkStrings(pattern, '', (s, path) => {
    if (!s.startsWith('$') || s.startsWith('$$')) return;
    if ((SIMPLE as readonly string[]).includes(s) || CAPTURE.test(s) || REF.test(s)) return;
    issues.push(`${base}${path}: unknown matcher ${show(s)}; use ${SIMPLE.join(', ')}, $capture:NAME or $ref:NAME, or "$${s}" for the literal string`);
  });
  return issues;
}

/** Problems with the placeholders of a message to send, each prefixed with `base` and a path. */
export function checkSendValue(value: Json, base: string): string[] {
  const issues: string[] = [];
  walkStrings(value, '', (s, path) => {
    if (!s.startsWith('$') || s.startsWith('$$') || REF.test(s) || NOW.test(s)) return;
    issues.push(`${base}${path}: ${show(s)} is not a placeholder; in send use $ref:NAME, $now, $now+MS or $now-MS, or "$${s}" for the literal string`);
  });
  return issues;
}

/** Every `$ref:NAME` in a value, with its path. */
export function collectRefs(value: Json): { name: string; path: string }[] {
  const refs: { name: string; path: string }[] = [];
  walkStrings(value, '', (s, path) => {
    const m = REF.exec(s);
    if (m) refs.push({ name: m[1]!, path });
  });
  return refs;
}

/** Every name a pattern captures. */
export function collectCaptures(value: Json): string[] {
  const names: string[] = [];
  walkStrings(value, '', (s) => {
    const m = CAPTURE.exec(s);
    if (m) names.push(m[1]!);
  });
  return names;
}

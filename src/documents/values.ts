import { Counter, ImmutableString } from '@automerge/automerge';
import jsonpatch from 'fast-json-patch';
import { ProtocolError } from '../../protocol/errors.js';
import { clip } from './pointer.js';

/** What a value inside an Automerge document (or a view or proxy of one) is. */
export type ValueKind = 'map' | 'list' | 'text' | 'counter' | 'scalar' | 'missing';

/** The kind of a value read from an Automerge document, view or change proxy. */
export function kindOf(v: unknown): ValueKind {
  if (v === undefined) return 'missing';
  if (typeof v === 'string') return 'text';
  if (v === null || typeof v !== 'object') return 'scalar';
  if (Array.isArray(v)) return 'list';
  if (v instanceof Counter) return 'counter';
  if (v instanceof Date || v instanceof Uint8Array || v instanceof ImmutableString) return 'scalar';
  return 'map';
}

/** Sets a property, also one named `__proto__` (which plain assignment would take as the prototype). */
export function setOwn(target: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  else target[key] = value;
}

/**
 * The plain JSON form of a document value: counters become numbers, dates ISO strings, byte
 * arrays base64 and immutable strings strings. This is the content JSON clients see.
 */
export function toPlain(v: unknown): unknown {
  switch (kindOf(v)) {
    case 'missing':
      return null;
    case 'text':
      return v;
    case 'list':
      return (v as unknown[]).map(toPlain);
    case 'counter':
      return (v as Counter).value;
    case 'map': {
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(v as object)) setOwn(out, k, toPlain((v as Record<string, unknown>)[k]));
      return out;
    }
    case 'scalar':
      if (v instanceof Date) return Number.isNaN(v.getTime()) ? null : v.toISOString();
      if (v instanceof Uint8Array) return Buffer.from(v).toString('base64');
      if (v instanceof ImmutableString) return v.toString();
      if (typeof v === 'number' && !Number.isFinite(v)) return null;
      if (typeof v === 'bigint') return Number(v);
      return v;
  }
}

/**
 * A fresh copy of a document value that can be written elsewhere in a document (a value read
 * from a document cannot be assigned again: Automerge refuses references to its own objects).
 * Counters, dates, bytes and immutable strings keep their types.
 */
export function copyValue(v: unknown): unknown {
  switch (kindOf(v)) {
    case 'list':
      return (v as unknown[]).map(copyValue);
    case 'counter':
      return new Counter((v as Counter).value);
    case 'map': {
      const out: Record<string, unknown> = {};
      for (const k of Object.keys(v as object)) setOwn(out, k, copyValue((v as Record<string, unknown>)[k]));
      return out;
    }
    case 'scalar':
      if (v instanceof Date) return new Date(v.getTime());
      if (v instanceof Uint8Array) return v.slice();
      if (v instanceof ImmutableString) return new ImmutableString(v.toString());
      return v;
    default:
      return v;
  }
}

/** Deep equality of plain JSON values, as JSON Patch's `test` defines it (key order does not matter). */
export function jsonEqual(a: unknown, b: unknown): boolean {
  return jsonpatch._areEquals(a, b);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Throws INVALID_PARAMS unless `s` is well-formed UTF-16 (Automerge would replace lone surrogates). */
export function checkText(s: string, where: string): void {
  if (LONE_SURROGATE.test(s)) {
    throw new ProtocolError('INVALID_PARAMS', `${where} contains a lone UTF-16 surrogate; send well-formed Unicode text.`, { field: where });
  }
}

/**
 * Throws INVALID_PARAMS unless `v` is JSON that a document can hold exactly: integers within
 * ±(2^53−1) (larger ones cannot be stored as integers), finite numbers, well-formed strings,
 * and no `__proto__` keys.
 */
export function checkJson(v: unknown, where: string): void {
  if (v === null || typeof v === 'boolean') return;
  if (typeof v === 'string') return checkText(v, where);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new ProtocolError('INVALID_PARAMS', `${where} is not a finite number.`, { field: where });
    if (Number.isInteger(v) && !Number.isSafeInteger(v)) {
      throw new ProtocolError('INVALID_PARAMS', `${where} is the integer ${v}, beyond ±(2^53−1); send it as a string.`, { field: where });
    }
    return;
  }
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) checkJson(v[i], `${where}[${i}]`);
    return;
  }
  if (typeof v === 'object') {
    for (const k of Object.keys(v)) {
      if (k === '__proto__') throw new ProtocolError('INVALID_PARAMS', `${where} has a key "__proto__", which documents cannot hold.`, { field: where });
      checkText(k, `${where} key "${clip(k, 40)}"`);
      checkJson((v as Record<string, unknown>)[k], `${where}.${clip(k, 40)}`);
    }
    return;
  }
  throw new ProtocolError('INVALID_PARAMS', `${where} is not JSON.`, { field: where });
}

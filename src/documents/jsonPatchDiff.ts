import type { Patch } from '@automerge/automerge';
import type { JsonPatchOperation } from '../../protocol/documents.js';
import { formatPointer, type Prop } from './pointer.js';
import { setOwn, toPlain } from './values.js';

/** The most paths one change reports; beyond it the list ends with the document itself (`""`). */
export const MAX_CHANGED_PATHS = 100;

/** A change as JSON clients see it. */
export interface JsonDiff {
  patch: JsonPatchOperation[];
  paths: string[];
}

/** Thrown when a patch does not fit the mirror: the mirror no longer matches the document. */
export class MirrorMismatch extends Error {}

type Json = Record<string, unknown> | unknown[];

function child(container: unknown, prop: Prop): unknown {
  if (Array.isArray(container)) return typeof prop === 'number' ? container[prop] : undefined;
  if (container !== null && typeof container === 'object' && Object.prototype.hasOwnProperty.call(container, prop)) {
    return (container as Record<string, unknown>)[prop as string];
  }
  return undefined;
}

/** The container at `path[0 .. end)`. */
function containerAt(root: Json, path: readonly Prop[], end: number): Json {
  let cur: unknown = root;
  for (let i = 0; i < end; i++) {
    cur = child(cur, path[i]!);
    if (cur === null || typeof cur !== 'object') throw new MirrorMismatch(`no container at ${formatPointer(path.slice(0, i + 1))}`);
  }
  return cur as Json;
}

/** A value for the mirror and an equal one for the patch: they must never share objects. */
function twoCopies(v: unknown): [unknown, unknown] {
  const a = toPlain(v);
  return [a, a !== null && typeof a === 'object' ? toPlain(v) : a];
}

/**
 * Turns the Automerge patches of one change (or merge) into a JSON Patch (RFC 6902) and applies
 * it to `mirror`, the document's content as plain JSON, in place. Automerge patches are applied
 * in order, each to the state the previous ones left, which is also how JSON Patch applies, so
 * the translation walks the mirror as it goes: to know whether a `put` replaces a list element or
 * sets a map key, and what a text becomes after a splice (text edits become a `replace` of the
 * whole string; consecutive ones are merged into one).
 *
 * `paths` lists what changed for the audit trail: each operation's path cut before its first
 * list index, keeping only the outermost of nested ones.
 */
export function toJsonPatch(patches: readonly Patch[], mirror: Record<string, unknown>): JsonDiff {
  const out: JsonPatchOperation[] = [];
  const touched: Prop[][] = [];

  const text = (textPath: Prop[], next: string) => {
    const container = containerAt(mirror, textPath, textPath.length - 1);
    const key = textPath[textPath.length - 1]!;
    if (Array.isArray(container)) container[key as number] = next;
    else setOwn(container, key as string, next);
    const pointer = formatPointer(textPath);
    const last = out[out.length - 1];
    if (last && (last.op === 'replace' || last.op === 'add') && last.path === pointer && typeof last.value === 'string') last.value = next;
    else out.push({ op: 'replace', path: pointer, value: next });
    touched.push(textPath);
  };
  const textAt = (textPath: Prop[]): string => {
    const s = child(containerAt(mirror, textPath, textPath.length - 1), textPath[textPath.length - 1]!);
    if (typeof s !== 'string') throw new MirrorMismatch(`no text at ${formatPointer(textPath)}`);
    return s;
  };

  for (const p of patches) {
    const path = p.path as Prop[];
    const key = path[path.length - 1]!;
    switch (p.action) {
      case 'put': {
        const parent = containerAt(mirror, path, path.length - 1);
        const [forMirror, forPatch] = twoCopies(p.value);
        if (Array.isArray(parent)) {
          if (typeof key !== 'number' || key >= parent.length) throw new MirrorMismatch(`no element ${formatPointer(path)}`);
          parent[key] = forMirror;
          out.push({ op: 'replace', path: formatPointer(path), value: forPatch });
        } else {
          setOwn(parent, key as string, forMirror);
          out.push({ op: 'add', path: formatPointer(path), value: forPatch });
        }
        touched.push(path);
        break;
      }
      case 'del': {
        const n = p.length ?? 1;
        const holder = path.length >= 2 ? child(containerAt(mirror, path, path.length - 2), path[path.length - 2]!) : undefined;
        if (typeof holder === 'string') {
          const i = key as number;
          text(path.slice(0, -1), holder.slice(0, i) + holder.slice(i + n));
          break;
        }
        const container = containerAt(mirror, path, path.length - 1);
        const pointer = formatPointer(path);
        if (Array.isArray(container)) {
          if (typeof key !== 'number' || key + n > container.length) throw new MirrorMismatch(`no elements at ${pointer}`);
          container.splice(key, n);
          for (let i = 0; i < n; i++) out.push({ op: 'remove', path: pointer });
        } else {
          if (!Object.prototype.hasOwnProperty.call(container, key)) throw new MirrorMismatch(`no member ${pointer}`);
          delete container[key as string];
          out.push({ op: 'remove', path: pointer });
        }
        touched.push(path);
        break;
      }
      case 'insert': {
        const list = containerAt(mirror, path, path.length - 1);
        const at = key as number;
        if (!Array.isArray(list) || at > list.length) throw new MirrorMismatch(`no list position ${formatPointer(path)}`);
        const listPath = path.slice(0, -1);
        p.values.forEach((v, i) => {
          const [forMirror, forPatch] = twoCopies(v);
          list.splice(at + i, 0, forMirror);
          out.push({ op: 'add', path: formatPointer([...listPath, at + i]), value: forPatch });
        });
        touched.push(path);
        break;
      }
      case 'splice': {
        const textPath = path.slice(0, -1);
        const s = textAt(textPath);
        const i = key as number;
        text(textPath, s.slice(0, i) + p.value + s.slice(i));
        break;
      }
      case 'inc': {
        const parent = containerAt(mirror, path, path.length - 1);
        const current = child(parent, key);
        if (typeof current !== 'number') throw new MirrorMismatch(`no counter at ${formatPointer(path)}`);
        const next = current + p.value;
        if (Array.isArray(parent)) parent[key as number] = next;
        else setOwn(parent, key as string, next);
        out.push({ op: 'replace', path: formatPointer(path), value: next });
        touched.push(path);
        break;
      }
      default:
        // conflict, mark and unmark patches do not change the JSON content.
        break;
    }
  }
  return { patch: out, paths: changedPaths(touched) };
}

/** Each path cut before its first list index; nested ones dropped under their outermost. */
export function changedPaths(touched: readonly Prop[][]): string[] {
  const cut = new Set<string>();
  for (const path of touched) {
    const end = path.findIndex((p) => typeof p === 'number');
    cut.add(formatPointer(end === -1 ? path : path.slice(0, end)));
  }
  const sorted = [...cut].sort((a, b) => a.length - b.length || (a < b ? -1 : 1));
  const kept: string[] = [];
  for (const p of sorted) {
    if (kept.some((k) => k === '' || p.startsWith(`${k}/`))) continue;
    kept.push(p);
  }
  if (kept.length > MAX_CHANGED_PATHS) return [...kept.slice(0, MAX_CHANGED_PATHS - 1), ''];
  return kept.sort();
}

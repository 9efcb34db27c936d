import * as Automerge from '@automerge/automerge';
import type { DocumentOperation, JsonPatchOperation, TextSplice } from '../../protocol/documents.js';
import { ProtocolError } from '../../protocol/errors.js';
import { clip, formatPointer, parsePointer, type Prop } from './pointer.js';
import { checkJson, checkText, copyValue, jsonEqual, kindOf, toPlain } from './values.js';

/** An edit of a document by a JSON client: exactly one of the three forms. */
export type DocumentEdit = { ops: DocumentOperation[] } | { patch: JsonPatchOperation[] } | { splices: TextSplice[] };

/** How many entries an edit has (ops, patch operations or splices). */
export function editSize(edit: DocumentEdit): number {
  return 'ops' in edit ? edit.ops.length : 'patch' in edit ? edit.patch.length : edit.splices.length;
}

/**
 * Checks what can be checked before touching the document: values are JSON a document holds
 * exactly, pointers parse, texts are well-formed. Throws INVALID_PARAMS naming the entry.
 */
export function checkEdit(edit: DocumentEdit): void {
  if ('ops' in edit) {
    edit.ops.forEach((op, i) => {
      parsePointer(op.path, `ops[${i}].path`);
      if ('value' in op) checkJson(op.value, `ops[${i}].value`);
    });
  } else if ('patch' in edit) {
    edit.patch.forEach((op, i) => {
      parsePointer(op.path, `patch[${i}].path`);
      if ('from' in op) parsePointer(op.from, `patch[${i}].from`);
      if ('value' in op) checkJson(op.value, `patch[${i}].value`);
    });
  } else {
    edit.splices.forEach((s, i) => {
      parsePointer(s.path, `splices[${i}].path`);
      if (s.insert !== undefined) checkText(s.insert, `splices[${i}].insert`);
    });
  }
}

type Container = Record<string, unknown> | unknown[];

/** Where a path ends: its parent container, the last token, and the Automerge path of the parent. */
interface Location {
  parent: Container;
  isList: boolean;
  token: string;
  props: Prop[];
}

function invalid(message: string, where: string, data: Record<string, unknown> = {}): ProtocolError {
  return new ProtocolError('INVALID_PARAMS', message, { field: where, ...data });
}

/** A list index token: `0`, `1`, ... without leading zeros; null otherwise. */
function indexOf(token: string): number | null {
  return /^(0|[1-9][0-9]{0,15})$/.test(token) ? Number(token) : null;
}

function describe(v: unknown): string {
  switch (kindOf(v)) {
    case 'map':
      return 'an object';
    case 'list':
      return 'a list';
    case 'text':
      return 'a string';
    case 'counter':
      return 'a counter';
    case 'missing':
      return 'missing';
    default:
      return v === null ? 'null' : `a ${typeof v}`;
  }
}

/**
 * Applies JSON clients' edits to an Automerge document inside `Automerge.change` (or
 * `changeAt`), through the change's proxy. Everything it throws is a ProtocolError thrown before
 * Automerge is asked to do anything it could refuse, so a refused edit rolls the whole change
 * back and leaves the document usable.
 *
 * @example
 * ```ts
 * doc = Automerge.change(doc, (d) => new DocumentEditor(d).apply({ ops: [{ op: 'increment', path: '/visits' }] }));
 * ```
 */
export class DocumentEditor {
  readonly #root: Record<string, unknown>;

  constructor(root: unknown) {
    this.#root = root as Record<string, unknown>;
  }

  /** Applies one edit of any form. */
  apply(edit: DocumentEdit): void {
    if ('ops' in edit) edit.ops.forEach((op, i) => this.#op(op, `ops[${i}]`));
    else if ('patch' in edit) edit.patch.forEach((op, i) => this.#patch(op, i));
    else edit.splices.forEach((s, i) => this.#splice(s, `splices[${i}]`));
  }

  /** Makes the document's content equal to `target` (a view of an earlier version), changing only what differs. */
  restore(target: unknown): void {
    this.#reconcileMap(target as Record<string, unknown>, this.#root, []);
  }

  // ---- paths ----------------------------------------------------------------------------------

  /**
   * The parent of the path's last token. `create`: missing parents become maps; otherwise a
   * missing parent yields null. A parent that exists but is not a map or list is an error.
   */
  #locate(tokens: string[], where: string, create: boolean): Location | null {
    let cur: unknown = this.#root;
    const props: Prop[] = [];
    for (let i = 0; i < tokens.length - 1; i++) {
      const token = tokens[i]!;
      let next: unknown;
      let prop: Prop;
      if (Array.isArray(cur)) {
        const idx = indexOf(token);
        if (idx === null) throw invalid(`${where}: "${clip(token, 40)}" is not an index of the list at ${pointerOf(props)}.`, where);
        if (idx >= cur.length) {
          if (create) throw invalid(`${where}: index ${idx} is beyond the end of the list at ${pointerOf(props)} (length ${cur.length}).`, where);
          return null;
        }
        next = cur[idx];
        prop = idx;
      } else {
        const map = cur as Record<string, unknown>;
        next = map[token];
        prop = token;
        if (next === undefined) {
          if (!create) return null;
          map[token] = {};
          next = map[token];
        }
      }
      props.push(prop);
      const k = kindOf(next);
      if (k !== 'map' && k !== 'list') {
        throw invalid(`${where}: ${pointerOf(props)} is ${describe(next)}, not an object or a list, so it has no members.`, where);
      }
      cur = next;
    }
    return { parent: cur as Container, isList: Array.isArray(cur), token: tokens[tokens.length - 1]!, props };
  }

  /** The value at a path, or undefined when any part of it is missing. */
  #get(tokens: string[]): unknown {
    let cur: unknown = this.#root;
    for (const token of tokens) {
      const k = kindOf(cur);
      if (k === 'list') {
        const idx = indexOf(token);
        if (idx === null) return undefined;
        cur = (cur as unknown[])[idx];
      } else if (k === 'map') {
        if (!Object.prototype.hasOwnProperty.call(cur, token)) return undefined;
        cur = (cur as Record<string, unknown>)[token];
      } else {
        return undefined;
      }
    }
    return cur;
  }

  /** The list index a token names in `loc`: an existing element, or (`allowEnd`) the end too (`-` or the length). */
  #index(loc: Location, where: string, allowEnd: boolean): number {
    const list = loc.parent as unknown[];
    if (allowEnd && loc.token === '-') return list.length;
    const idx = indexOf(loc.token);
    if (idx === null) throw invalid(`${where}: "${clip(loc.token, 40)}" is not an index of the list at ${pointerOf(loc.props)}${allowEnd ? ' (use "-" to append)' : ''}.`, where);
    const max = allowEnd ? list.length : list.length - 1;
    if (idx > max) throw invalid(`${where}: index ${idx} is beyond the end of the list at ${pointerOf(loc.props)} (length ${list.length}).`, where);
    return idx;
  }

  // ---- writing values -------------------------------------------------------------------------

  /**
   * Writes a value over an existing member or a new map key. Text stays text (the difference is
   * spliced in) and a counter stays a counter (the difference is added), so concurrent edits of
   * the rest of them survive.
   */
  #write(container: Container, prop: Prop, props: Prop[], value: unknown): void {
    const existing = (container as Record<Prop, unknown>)[prop];
    const kind = kindOf(existing);
    if (kind === 'text' && typeof value === 'string') {
      if (existing !== value) Automerge.updateText(this.#root as never, [...props, prop], value);
      return;
    }
    if (kind === 'counter' && typeof value === 'number' && Number.isInteger(value)) {
      const counter = existing as Automerge.Counter;
      if (counter.value !== value) counter.increment(value - counter.value);
      return;
    }
    (container as Record<Prop, unknown>)[prop] = value;
  }

  /** Replaces the whole document's content with `value`, which must be an object. */
  #replaceRoot(value: unknown, where: string): void {
    if (kindOf(value) !== 'map') throw invalid(`${where}: the whole document must be an object; ${describe(value)} cannot replace it.`, where);
    const target = value as Record<string, unknown>;
    for (const k of Object.keys(this.#root)) if (!Object.prototype.hasOwnProperty.call(target, k)) delete this.#root[k];
    for (const k of Object.keys(target)) this.#write(this.#root, k, [], target[k]);
  }

  /** JSON Patch `add`: a new member, a replaced member, or an element inserted into a list. */
  #add(tokens: string[], value: unknown, where: string): void {
    if (tokens.length === 0) return this.#replaceRoot(value, where);
    const loc = this.#locate(tokens, where, false);
    if (!loc) throw invalid(`${where}: the parent of ${pointerOf(tokens)} does not exist.`, where, { check: 'path' });
    if (loc.isList) Automerge.insertAt(loc.parent as unknown[], this.#index(loc, where, true), value);
    else this.#write(loc.parent, loc.token, loc.props, value);
  }

  /** JSON Patch `remove` (the member must exist). */
  #remove(tokens: string[], where: string): void {
    if (tokens.length === 0) throw invalid(`${where}: the whole document cannot be removed; remove its members.`, where);
    const loc = this.#locate(tokens, where, false);
    if (!loc || this.#get(tokens) === undefined) throw invalid(`${where}: ${pointerOf(tokens)} does not exist.`, where, { check: 'path' });
    if (loc.isList) Automerge.deleteAt(loc.parent as unknown[], this.#index(loc, where, false));
    else delete (loc.parent as Record<string, unknown>)[loc.token];
  }

  // ---- JSON Patch -----------------------------------------------------------------------------

  #patch(op: JsonPatchOperation, i: number): void {
    const where = `patch[${i}]`;
    const tokens = parsePointer(op.path, `${where}.path`);
    switch (op.op) {
      case 'add':
        return this.#add(tokens, op.value, where);
      case 'remove':
        return this.#remove(tokens, where);
      case 'replace': {
        if (tokens.length === 0) return this.#replaceRoot(op.value, where);
        const loc = this.#locate(tokens, where, false);
        if (!loc || this.#get(tokens) === undefined) throw invalid(`${where}: ${pointerOf(tokens)} does not exist; use add.`, where, { check: 'path' });
        if (loc.isList) this.#write(loc.parent, this.#index(loc, where, false), loc.props, op.value);
        else this.#write(loc.parent, loc.token, loc.props, op.value);
        return;
      }
      case 'move':
      case 'copy': {
        const from = parsePointer(op.from, `${where}.from`);
        const value = this.#get(from);
        if (value === undefined) throw invalid(`${where}: from ${pointerOf(from)} does not exist.`, where, { check: 'from' });
        if (op.op === 'move') {
          if (op.path === op.from) return;
          if (op.path.startsWith(`${op.from}/`)) throw invalid(`${where}: cannot move ${op.from} into its own member ${op.path}.`, where);
          const copy = copyValue(value);
          this.#remove(from, where);
          return this.#add(tokens, copy, where);
        }
        return this.#add(tokens, copyValue(value), where);
      }
      case 'test': {
        const actual = this.#get(tokens);
        if (actual === undefined || !jsonEqual(toPlain(actual), op.value)) {
          const shown = actual === undefined ? 'missing' : clip(JSON.stringify(toPlain(actual)) ?? '');
          throw new ProtocolError(
            'VERSION_MISMATCH',
            `${where} test failed: ${op.path || '(the document)'} is ${shown}, not ${clip(JSON.stringify(op.value) ?? '')}. Nothing was changed; read the document again and retry.`,
            { check: 'test', index: i, path: op.path },
          );
        }
        return;
      }
    }
  }

  // ---- operations -----------------------------------------------------------------------------

  #op(op: DocumentOperation, where: string): void {
    const tokens = parsePointer(op.path, `${where}.path`);
    if (tokens.length === 0) {
      if (op.op === 'set') return this.#replaceRoot(op.value, where);
      throw invalid(`${where}: ${op.op} needs a path inside the document, not the whole document.`, where);
    }
    switch (op.op) {
      case 'set': {
        const loc = this.#locate(tokens, where, true)!;
        if (loc.isList) {
          const idx = this.#index(loc, where, true);
          const list = loc.parent as unknown[];
          if (idx === list.length) Automerge.insertAt(list, idx, op.value);
          else this.#write(list, idx, loc.props, op.value);
        } else {
          this.#write(loc.parent, loc.token, loc.props, op.value);
        }
        return;
      }
      case 'increment': {
        const by = op.by ?? 1;
        const loc = this.#locate(tokens, where, true)!;
        const prop: Prop = loc.isList ? this.#index(loc, where, true) : loc.token;
        const current = (loc.parent as Record<Prop, unknown>)[prop];
        if (current === undefined) {
          if (loc.isList) Automerge.insertAt(loc.parent as unknown[], prop as number, new Automerge.Counter(by));
          else (loc.parent as Record<string, unknown>)[loc.token] = new Automerge.Counter(by);
        } else if (kindOf(current) === 'counter') {
          if (by !== 0) (current as Automerge.Counter).increment(by);
        } else {
          throw invalid(`${where}: ${op.path} is ${describe(current)}, not a counter; counters are created by increment (delete the value first to make one).`, where, {
            check: 'type',
          });
        }
        return;
      }
      case 'addToSet': {
        const loc = this.#locate(tokens, where, true)!;
        const prop: Prop = loc.isList ? this.#index(loc, where, true) : loc.token;
        const current = (loc.parent as Record<Prop, unknown>)[prop];
        if (current === undefined) {
          if (loc.isList) Automerge.insertAt(loc.parent as unknown[], prop as number, [op.value]);
          else (loc.parent as Record<string, unknown>)[loc.token] = [op.value];
          return;
        }
        if (kindOf(current) !== 'list') throw invalid(`${where}: ${op.path} is ${describe(current)}, not a list used as a set.`, where, { check: 'type' });
        const list = current as unknown[];
        if (!list.some((v) => jsonEqual(toPlain(v), op.value))) Automerge.insertAt(list, list.length, op.value);
        return;
      }
      case 'removeFromSet': {
        const current = this.#get(tokens);
        if (current === undefined) return;
        if (kindOf(current) !== 'list') throw invalid(`${where}: ${op.path} is ${describe(current)}, not a list used as a set.`, where, { check: 'type' });
        const list = current as unknown[];
        for (let i = list.length - 1; i >= 0; i--) if (jsonEqual(toPlain(list[i]), op.value)) Automerge.deleteAt(list, i);
        return;
      }
      case 'delete': {
        const loc = this.#locate(tokens, where, false);
        if (!loc || this.#get(tokens) === undefined) return;
        if (loc.isList) Automerge.deleteAt(loc.parent as unknown[], this.#index(loc, where, false));
        else delete (loc.parent as Record<string, unknown>)[loc.token];
        return;
      }
    }
  }

  // ---- text -----------------------------------------------------------------------------------

  #splice(s: TextSplice, where: string): void {
    const tokens = parsePointer(s.path, `${where}.path`);
    const text = this.#get(tokens);
    if (typeof text !== 'string') {
      throw invalid(`${where}: ${s.path || '(the document)'} is ${describe(text)}, not a text; create it with set first.`, where, { check: 'type' });
    }
    const del = s.deleteCount ?? 0;
    if (s.index > text.length || s.index + del > text.length) {
      throw invalid(`${where}: index ${s.index} with deleteCount ${del} goes beyond the end of the text at ${s.path} (length ${text.length} UTF-16 code units).`, where, {
        check: 'range',
        length: text.length,
      });
    }
    if (splitsPair(text, s.index) || splitsPair(text, s.index + del)) {
      throw invalid(`${where}: index ${s.index} with deleteCount ${del} would split a surrogate pair of the text at ${s.path}.`, where, { check: 'range' });
    }
    if (del === 0 && !s.insert) return;
    const loc = this.#locate(tokens, where, false)!;
    const prop: Prop = loc.isList ? Number(loc.token) : loc.token;
    Automerge.splice(this.#root as never, [...loc.props, prop], s.index, del, s.insert ?? '');
  }

  // ---- restore --------------------------------------------------------------------------------

  #reconcileMap(target: Record<string, unknown>, current: Record<string, unknown>, props: Prop[]): void {
    for (const k of Object.keys(current)) if (!Object.prototype.hasOwnProperty.call(target, k)) delete current[k];
    for (const k of Object.keys(target)) this.#reconcile(current, k, target[k], [...props, k]);
  }

  #reconcile(container: Container, prop: Prop, target: unknown, path: Prop[]): void {
    const current = (container as Record<Prop, unknown>)[prop];
    const kt = kindOf(target);
    const kc = kindOf(current);
    if (kt === 'map' && kc === 'map') return this.#reconcileMap(target as Record<string, unknown>, current as Record<string, unknown>, path);
    if (kt === 'list' && kc === 'list') {
      const t = target as unknown[];
      const c = current as unknown[];
      const common = Math.min(t.length, c.length);
      for (let i = 0; i < common; i++) this.#reconcile(c, i, t[i], [...path, i]);
      if (c.length > t.length) Automerge.deleteAt(c, t.length, c.length - t.length);
      for (let i = common; i < t.length; i++) Automerge.insertAt(c, i, copyValue(t[i]));
      return;
    }
    if (kt === 'text' && kc === 'text') {
      if (current !== target) Automerge.updateText(this.#root as never, path, target as string);
      return;
    }
    if (kt === 'counter' && kc === 'counter') {
      const delta = (target as Automerge.Counter).value - (current as Automerge.Counter).value;
      if (delta !== 0) (current as Automerge.Counter).increment(delta);
      return;
    }
    if (kt === 'scalar' && kc === 'scalar' && sameScalar(current, target)) return;
    (container as Record<Prop, unknown>)[prop] = copyValue(target);
  }
}

function sameScalar(a: unknown, b: unknown): boolean {
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  if (a instanceof Uint8Array && b instanceof Uint8Array) return Buffer.from(a).equals(Buffer.from(b));
  if (a instanceof Automerge.ImmutableString && b instanceof Automerge.ImmutableString) return a.toString() === b.toString();
  return a === b;
}

function splitsPair(text: string, index: number): boolean {
  if (index <= 0 || index >= text.length) return false;
  const before = text.charCodeAt(index - 1);
  const after = text.charCodeAt(index);
  return before >= 0xd800 && before <= 0xdbff && after >= 0xdc00 && after <= 0xdfff;
}

function pointerOf(path: readonly Prop[]): string {
  return path.length === 0 ? '(the document)' : formatPointer(path);
}

import { ProtocolError } from '../../protocol/errors.js';

/** A path as Automerge takes it: map keys and list indexes. */
export type Prop = string | number;

/**
 * The reference tokens of a JSON Pointer (RFC 6901), unescaped; `""` is the whole document.
 * Throws INVALID_PARAMS, naming `where`, for anything that is not a pointer.
 *
 * @example
 * ```ts
 * parsePointer('/a~1b/0', 'ops[0].path'); // ['a/b', '0']
 * ```
 */
export function parsePointer(pointer: string, where: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) {
    throw new ProtocolError('INVALID_PARAMS', `${where} "${clip(pointer)}" is not a JSON Pointer: it must be empty (the whole document) or start with "/".`, {
      field: where,
    });
  }
  return pointer
    .slice(1)
    .split('/')
    .map((token) => {
      if (/~(?![01])/.test(token)) {
        throw new ProtocolError('INVALID_PARAMS', `${where} "${clip(pointer)}" has a "~" not followed by 0 or 1; write "~0" for "~" and "~1" for "/".`, {
          field: where,
        });
      }
      return token.replace(/~1/g, '/').replace(/~0/g, '~');
    });
}

/** The JSON Pointer of a path. */
export function formatPointer(path: readonly Prop[]): string {
  let s = '';
  for (const p of path) s += '/' + (typeof p === 'number' ? String(p) : p.replace(/~/g, '~0').replace(/\//g, '~1'));
  return s;
}

/** A string cut to a length fit for an error message. */
export function clip(s: string, max = 80): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

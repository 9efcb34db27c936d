import type { StateValue } from 'xstate';

/** The innermost state name of a (possibly nested) state value: `{ live: 'pending' }` → `pending`. */
export function leafState(value: StateValue): string {
  let v: StateValue = value;
  while (typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 0) return '';
    v = v[keys[0]!]!;
  }
  return v;
}

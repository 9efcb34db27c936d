/**
 * Keyset pagination cursors for view queries: an opaque base64url encoding of the last row's
 * `(createdAt, id)`. Shared by every store adapter so cursors mean the same everywhere.
 */
export function encodeCursor(createdAt: number, id: string): string {
  return Buffer.from(JSON.stringify([createdAt, id])).toString('base64url');
}

/** Decodes a cursor; throws an Error whose message starts with `invalid cursor` otherwise. */
export function decodeCursor(cursor: string): [number, string] {
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new Error('invalid cursor: not base64url');
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw new Error('invalid cursor: not JSON');
  }
  if (!Array.isArray(value) || value.length !== 2 || !Number.isFinite(value[0]) || typeof value[1] !== 'string') {
    throw new Error('invalid cursor: unexpected shape');
  }
  return [value[0] as number, value[1]];
}

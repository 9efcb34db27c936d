import * as Automerge from '@automerge/automerge';

/**
 * Reads the Automerge changes out of the `changes` of a sync message. Automerge 3 peers send
 * them as Automerge storage chunks, several of them concatenated in one entry: single changes
 * (what `Automerge.getChanges()` returns), compressed changes, bundles (a run of changes that may
 * depend on changes outside it) or whole documents (when a peer sends everything since the
 * start). The document service merges single changes, so every form is turned into those.
 *
 * Chunk layout: the magic bytes `85 6f 4a 83`, a 4-byte checksum, a type byte, the length of
 * the contents (unsigned LEB128), then the contents.
 */

/** Storage chunk types. */
export const ChunkTypes = { DOCUMENT: 0, CHANGE: 1, COMPRESSED_CHANGE: 2, BUNDLE: 3 } as const;

const MAGIC = [0x85, 0x6f, 0x4a, 0x83] as const;
const HEADER = 9;

/** One chunk of a byte string. */
export interface Chunk {
  type: number;
  bytes: Uint8Array;
}

/** Splits concatenated storage chunks; throws when the bytes are not a sequence of whole chunks. */
export function splitChunks(data: Uint8Array): Chunk[] {
  const chunks: Chunk[] = [];
  let at = 0;
  while (at < data.length) {
    if (data.length - at < HEADER + 1 || MAGIC.some((b, i) => data[at + i] !== b)) throw new Error('not an Automerge chunk');
    let length = 0;
    let p = at + HEADER;
    for (let shift = 0; ; shift += 7) {
      if (p >= data.length || shift > 28) throw new Error('truncated chunk header');
      const b = data[p++]!;
      length += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) break;
    }
    if (p + length > data.length) throw new Error('truncated chunk');
    chunks.push({ type: data[at + 8]!, bytes: data.subarray(at, p + length) });
    at = p + length;
  }
  return chunks;
}

/**
 * The single changes in the `changes` of a decoded sync message, each as
 * `Automerge.getChanges()` would give it. Throws when something is not an Automerge change,
 * bundle or document. The input is untrusted.
 */
export function changesOf(entries: readonly Uint8Array[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const entry of entries) {
    for (const chunk of splitChunks(entry)) {
      switch (chunk.type) {
        case ChunkTypes.CHANGE:
        case ChunkTypes.COMPRESSED_CHANGE:
          Automerge.decodeChange(chunk.bytes);
          out.push(chunk.bytes);
          break;
        case ChunkTypes.BUNDLE:
          for (const c of Automerge.readBundle(chunk.bytes).changes) {
            const bytes = Automerge.encodeChange(c);
            // Re-encoding must give the very change: its hash is its identity.
            if (Automerge.decodeChange(bytes).hash !== c.hash) throw new Error('a bundled change does not re-encode to itself');
            out.push(bytes);
          }
          break;
        case ChunkTypes.DOCUMENT: {
          const doc = Automerge.load<unknown>(chunk.bytes, { allowMissingChanges: true });
          try {
            out.push(...Automerge.getBackend(doc).getChanges([]));
          } finally {
            Automerge.free(doc);
          }
          break;
        }
        default:
          throw new Error(`unknown chunk type ${chunk.type}`);
      }
    }
  }
  return out;
}

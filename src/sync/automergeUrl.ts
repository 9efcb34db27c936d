import { documentIdToBinary, stringifyAutomergeUrl, type DocumentId } from '@automerge/automerge-repo/slim';
import { STATE_DOCUMENT_ID } from '../../protocol/documents.js';

/**
 * How a Troupe workspace document is named for automerge-repo clients. automerge-repo names a
 * document by a base58check-encoded byte string (its `DocumentId`; the URL is
 * `automerge:<DocumentId>`). Troupe's id is that string for bytes that spell the workspace and
 * document ids, so the mapping needs no lookup table and works the same on every node:
 *
 * | first byte | then | used when |
 * |---|---|---|
 * | `0x01` | the workspace UUID (16 bytes) | the workspace's state document |
 * | `0x02` | the workspace UUID, the document UUID (16 + 16 bytes) | a shared document whose id is a UUID |
 * | `0x03` | UTF-8 of `<workspaceId>:<documentId>` | any other ids |
 *
 * UUIDs are the lower-case canonical form; each document has exactly one id (the shortest form
 * that fits), and anything else does not decode. The tenant is not part of the id: a peer's ids
 * are always resolved in its own tenant, so the same id names nothing in another tenant.
 */

/** A workspace document as a `/sync` peer names it. */
export interface SyncDocumentRef {
  workspaceId: string;
  documentId: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** The `Id` schema of the protocol (1–128 characters); document ids have no `:` besides. */
const ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

const Form = { STATE: 0x01, UUIDS: 0x02, TEXT: 0x03 } as const;

function uuidBytes(uuid: string): Buffer {
  return Buffer.from(uuid.replaceAll('-', ''), 'hex');
}

function uuidString(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function bytesOf(workspaceId: string, documentId: string): Uint8Array {
  if (UUID.test(workspaceId)) {
    if (documentId === STATE_DOCUMENT_ID) return Buffer.concat([Buffer.of(Form.STATE), uuidBytes(workspaceId)]);
    if (UUID.test(documentId)) return Buffer.concat([Buffer.of(Form.UUIDS), uuidBytes(workspaceId), uuidBytes(documentId)]);
  }
  return Buffer.concat([Buffer.of(Form.TEXT), Buffer.from(`${workspaceId}:${documentId}`, 'utf8')]);
}

/**
 * The automerge-repo `DocumentId` of a workspace document.
 *
 * @example
 * ```ts
 * automergeDocumentId('0f6c…', 'state'); // '2Wq…' (base58check)
 * ```
 */
export function automergeDocumentId(workspaceId: string, documentId: string): string {
  return automergeUrlOf(workspaceId, documentId).slice('automerge:'.length);
}

/** The `automerge:` URL automerge-repo clients pass to `repo.find()` for a workspace document. */
export function automergeUrlOf(workspaceId: string, documentId: string): string {
  return stringifyAutomergeUrl(bytesOf(workspaceId, documentId) as Parameters<typeof stringifyAutomergeUrl>[0]);
}

/**
 * The workspace document an automerge-repo `DocumentId` names, or null when it names none
 * (not base58check, an unknown form, ids the protocol would refuse, or a non-canonical spelling).
 * The input is untrusted.
 */
export function syncDocumentOf(id: unknown): SyncDocumentRef | null {
  if (typeof id !== 'string' || id.length === 0 || id.length > 400) return null;
  let bytes: Uint8Array | undefined;
  try {
    bytes = documentIdToBinary(id as DocumentId);
  } catch {
    return null;
  }
  if (!bytes || bytes.length < 2) return null;
  let ref: SyncDocumentRef;
  const body = bytes.subarray(1);
  switch (bytes[0]) {
    case Form.STATE:
      if (body.length !== 16) return null;
      ref = { workspaceId: uuidString(body), documentId: STATE_DOCUMENT_ID };
      break;
    case Form.UUIDS:
      if (body.length !== 32) return null;
      ref = { workspaceId: uuidString(body.subarray(0, 16)), documentId: uuidString(body.subarray(16)) };
      break;
    case Form.TEXT: {
      const text = Buffer.from(body).toString('utf8');
      const sep = text.lastIndexOf(':');
      if (sep <= 0) return null;
      ref = { workspaceId: text.slice(0, sep), documentId: text.slice(sep + 1) };
      if (!ID.test(ref.workspaceId) || !ID.test(ref.documentId)) return null;
      break;
    }
    default:
      return null;
  }
  // One spelling per document: an id that another form should have written names nothing.
  return Buffer.from(bytesOf(ref.workspaceId, ref.documentId)).equals(Buffer.from(bytes)) ? ref : null;
}

import { cbor } from '@automerge/automerge-repo/slim';

/**
 * The wire format of automerge-repo's WebSocket network adapter (protocol version "1"), as the
 * `/sync` endpoint speaks it: every frame is one binary CBOR map with a literal `type`. A client
 * opens with `join`, the server answers `peer`; after that both sides exchange `sync` (and the
 * client `request`, a `sync` for a document it does not have yet), the server answers
 * `doc-unavailable` for documents it will not sync, and `ephemeral` messages are relayed to the
 * other peers of a document. `error` precedes a close. Other types (`remote-subscription-change`,
 * `remote-heads-changed`) are ignored.
 */

/** The protocol version the endpoint speaks. */
export const PROTOCOL_VERSION = '1';

/** Message types, as automerge-repo spells them. */
export const SyncMessageTypes = {
  JOIN: 'join',
  PEER: 'peer',
  ERROR: 'error',
  SYNC: 'sync',
  REQUEST: 'request',
  DOC_UNAVAILABLE: 'doc-unavailable',
  EPHEMERAL: 'ephemeral',
} as const;

/** The client's opening message. */
export interface JoinMessage {
  type: 'join';
  senderId: string;
  supportedProtocolVersions: string[] | undefined;
}

/** An Automerge sync message for one document; `request` when the client does not have it yet. */
export interface DocSyncMessage {
  type: 'sync' | 'request';
  documentId: string;
  data: Uint8Array;
}

/** An application message about a document, relayed to the other peers that have it open. */
export interface EphemeralMessage {
  type: 'ephemeral';
  documentId: string;
  data: Uint8Array;
  count: number;
  sessionId: string;
}

/** Messages the server acts on; anything else a client may send is `ignored`. */
export type ClientMessage = JoinMessage | DocSyncMessage | EphemeralMessage | { type: 'ignored'; name: string };

/** Peer and session ids: what automerge-repo generates, with room to spare. */
const PEER_ID = /^[\x21-\x7e]{1,256}$/;
const DOCUMENT_ID = /^[1-9A-HJ-NP-Za-km-z]{1,400}$/;

function bytes(v: unknown): Uint8Array | null {
  return v instanceof Uint8Array && v.byteLength > 0 ? v : null;
}

/**
 * Decodes and checks one frame from a client. Returns the message, or a description of what is
 * wrong with it; a decoded message is still untrusted (documents, sizes and permissions are
 * checked by the caller).
 */
export function parseClientMessage(frame: Uint8Array): ClientMessage | { invalid: string } {
  let m: unknown;
  try {
    m = cbor.decode(frame);
  } catch {
    return { invalid: 'the frame is not CBOR' };
  }
  if (typeof m !== 'object' || m === null || Array.isArray(m) || m instanceof Uint8Array) return { invalid: 'the message is not a CBOR map' };
  const o = m as Record<string, unknown>;
  if (typeof o.type !== 'string') return { invalid: 'the message has no type' };
  switch (o.type) {
    case SyncMessageTypes.JOIN: {
      if (typeof o.senderId !== 'string' || !PEER_ID.test(o.senderId)) return { invalid: 'join needs a senderId (the peer id)' };
      const versions = o.supportedProtocolVersions;
      if (versions !== undefined && !(Array.isArray(versions) && versions.length <= 16 && versions.every((v) => typeof v === 'string'))) {
        return { invalid: 'supportedProtocolVersions must be a list of strings' };
      }
      return { type: 'join', senderId: o.senderId, supportedProtocolVersions: versions as string[] | undefined };
    }
    case SyncMessageTypes.SYNC:
    case SyncMessageTypes.REQUEST: {
      const data = bytes(o.data);
      if (typeof o.documentId !== 'string' || !DOCUMENT_ID.test(o.documentId)) return { invalid: `${o.type} needs a documentId (base58)` };
      if (!data) return { invalid: `${o.type} needs data (an Automerge sync message)` };
      return { type: o.type, documentId: o.documentId, data };
    }
    case SyncMessageTypes.EPHEMERAL: {
      const data = bytes(o.data);
      if (typeof o.documentId !== 'string' || !DOCUMENT_ID.test(o.documentId)) return { invalid: 'ephemeral needs a documentId (base58)' };
      if (!data) return { invalid: 'ephemeral needs data' };
      if (typeof o.count !== 'number' || !Number.isSafeInteger(o.count) || o.count < 0) return { invalid: 'ephemeral needs a count' };
      if (typeof o.sessionId !== 'string' || !PEER_ID.test(o.sessionId)) return { invalid: 'ephemeral needs a sessionId' };
      return { type: 'ephemeral', documentId: o.documentId, data, count: o.count, sessionId: o.sessionId };
    }
    default:
      return { type: 'ignored', name: o.type.slice(0, 64) };
  }
}

/** Encodes a message for a client, as automerge-repo does (plain CBOR, no records or tags). */
export function encodeMessage(message: Record<string, unknown>): Uint8Array {
  return cbor.encode(message);
}

import { ProtocolError, type RpcErrorObject } from './errors.js';

/** A JSON-RPC request id. */
export type RpcId = string | number;

/** A request (with `id`) or a client notification (without). */
export interface RpcRequest {
  jsonrpc: '2.0';
  id?: RpcId;
  method: string;
  params?: unknown;
}

/** A response to a request. */
export type RpcResponse =
  | { jsonrpc: '2.0'; id: RpcId | null; result: unknown }
  | { jsonrpc: '2.0'; id: RpcId | null; error: RpcErrorObject };

/** A server push. */
export interface RpcNotification {
  jsonrpc: '2.0';
  method: string;
  params: Record<string, unknown>;
}

/** The method of the notification that carries subscription events. */
export const SUBSCRIPTION_EVENT = 'subscription.event';
/** Sent when a subscription was dropped because the client could not keep up. */
export const SUBSCRIPTION_OVERFLOW = 'subscription.overflow';
/** Sent once before the server closes a connection, with the reason. */
export const SESSION_CLOSING = 'session.closing';

/** A decoded frame: one message or a batch. Each entry is still untrusted beyond its envelope. */
export type DecodedFrame =
  | { batch: false; entries: [DecodedEntry] }
  | { batch: true; entries: DecodedEntry[] };

/** One entry of a frame: a well-formed request, or the error to answer it with. */
export type DecodedEntry = { ok: true; request: RpcRequest } | { ok: false; id: RpcId | null; error: ProtocolError };

/** The most entries a batch may hold. */
export const MAX_BATCH = 100;

/**
 * Decodes one text frame into requests. Never throws: malformed input becomes error entries.
 * A parse error or an empty batch yields a single entry with `id: null`, as JSON-RPC 2.0 requires.
 */
export function decodeFrame(text: string): DecodedFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return single(null, new ProtocolError('PARSE_ERROR', `The frame is not valid JSON: ${(e as Error).message}`));
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return single(null, new ProtocolError('INVALID_REQUEST', 'A batch must not be empty.'));
    if (value.length > MAX_BATCH) {
      return single(null, new ProtocolError('INVALID_REQUEST', `A batch may hold at most ${MAX_BATCH} requests; this one has ${value.length}.`));
    }
    return { batch: true, entries: value.map(decodeEntry) };
  }
  return { batch: false, entries: [decodeEntry(value)] };
}

function single(id: RpcId | null, error: ProtocolError): DecodedFrame {
  return { batch: false, entries: [{ ok: false, id, error }] };
}

function decodeEntry(value: unknown): DecodedEntry {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { ok: false, id: null, error: new ProtocolError('INVALID_REQUEST', 'A request must be a JSON object.') };
  }
  const v = value as Record<string, unknown>;
  const id = v.id;
  const idOk = id === undefined || typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id));
  const replyId = idOk && id !== undefined ? (id as RpcId) : null;
  if (!idOk) return { ok: false, id: null, error: new ProtocolError('INVALID_REQUEST', 'The request id must be a string or a number.') };
  if (typeof id === 'string' && id.length > 128) {
    return { ok: false, id: null, error: new ProtocolError('INVALID_REQUEST', 'The request id must be at most 128 characters.') };
  }
  if (v.jsonrpc !== '2.0') {
    return { ok: false, id: replyId, error: new ProtocolError('INVALID_REQUEST', 'The member "jsonrpc" must be exactly "2.0".') };
  }
  if (typeof v.method !== 'string' || v.method.length === 0 || v.method.length > 128) {
    return { ok: false, id: replyId, error: new ProtocolError('INVALID_REQUEST', 'The member "method" must be a non-empty string of at most 128 characters.') };
  }
  if (v.params !== undefined && (typeof v.params !== 'object' || v.params === null || Array.isArray(v.params))) {
    return { ok: false, id: replyId, error: new ProtocolError('INVALID_PARAMS', 'The member "params" must be an object with named parameters.') };
  }
  return { ok: true, request: { jsonrpc: '2.0', id: id as RpcId | undefined, method: v.method, params: v.params } };
}

/** A success response. */
export function resultResponse(id: RpcId | null, result: unknown): RpcResponse {
  return { jsonrpc: '2.0', id, result };
}

/** An error response. */
export function errorResponse(id: RpcId | null, error: ProtocolError): RpcResponse {
  return { jsonrpc: '2.0', id, error: error.toJSON() };
}

/**
 * The one catalogue of error codes Troupe returns. Codes are stable: clients may switch on
 * `error.code` (a number) or on `error.data.reason` (a string). Grouped by area, as fastify does.
 *
 * @example
 * ```ts
 * throw new ProtocolError('NOT_FOUND', 'task 42 does not exist');
 * ```
 */
export const ErrorCodes = {
  // JSON-RPC 2.0
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL: -32603,
  // session
  UNAUTHENTICATED: -32001,
  FORBIDDEN: -32002,
  // resources
  NOT_FOUND: -32003,
  ALREADY_EXISTS: -32004,
  // state
  ILLEGAL_TRANSITION: -32010,
  VERSION_MISMATCH: -32011,
  IDEMPOTENCY_MISMATCH: -32012,
  /** A tenant rule (CEL) refused the request; `data.rule` names it. */
  POLICY_DENIED: -32013,
  // limits
  PAYLOAD_TOO_LARGE: -32020,
  RATE_LIMITED: -32021,
  QUOTA_EXCEEDED: -32022,
  /** Too much work in flight (an actor's mailbox or a tenant's share of the server is full); retry after `data.retryAfterMs`. */
  BUSY: -32023,
  // availability
  UNAVAILABLE: -32030,
  TIMEOUT: -32031,
} as const;

/** The stable name of an error, e.g. `'NOT_FOUND'`. */
export type ErrorReason = keyof typeof ErrorCodes;

/** The `error` member of a JSON-RPC response. `data.reason` repeats the stable name. */
export interface RpcErrorObject {
  code: number;
  message: string;
  data?: { reason: ErrorReason } & Record<string, unknown>;
}

/** An error that maps one-to-one to a JSON-RPC error object. */
export class ProtocolError extends Error {
  readonly reason: ErrorReason;
  readonly code: number;
  readonly data: Record<string, unknown>;

  constructor(reason: ErrorReason, message: string, data: Record<string, unknown> = {}) {
    super(message);
    this.name = 'ProtocolError';
    this.reason = reason;
    this.code = ErrorCodes[reason];
    this.data = data;
  }

  /** The wire form. */
  toJSON(): RpcErrorObject {
    return { code: this.code, message: this.message, data: { reason: this.reason, ...this.data } };
  }

  /** Rebuilds an error received from the wire (used by the client). */
  static fromObject(e: RpcErrorObject): ProtocolError {
    const reason = (e.data?.reason ?? reasonOf(e.code) ?? 'INTERNAL') as ErrorReason;
    const { reason: _r, ...rest } = e.data ?? { reason };
    return new ProtocolError(reason, e.message, rest);
  }
}

const byCode = new Map<number, ErrorReason>(
  (Object.entries(ErrorCodes) as [ErrorReason, number][]).map(([k, v]) => [v, k]),
);

/** The stable name for a numeric code, if it is one of ours. */
export function reasonOf(code: number): ErrorReason | undefined {
  return byCode.get(code);
}

/** True when `e` is a {@link ProtocolError} with the given reason. */
export function isProtocolError(e: unknown, reason?: ErrorReason): e is ProtocolError {
  return e instanceof ProtocolError && (reason === undefined || e.reason === reason);
}

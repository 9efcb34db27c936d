import { z } from 'zod';
import type { ErrorReason } from './errors.js';
import { Id } from './ids.js';
import type { ActorEvent, Page } from './model.js';

/**
 * The audit trail (accepted commands and refused attempts of a tenant) and the reading and
 * replaying of actors' event streams: wire shapes and method schemas, merged into the catalogue
 * by `methods.ts`.
 */

/** Whether an audit entry is a stored event or a refused attempt. */
export const AuditOutcomes = ['accepted', 'refused'] as const;
export type AuditOutcome = (typeof AuditOutcomes)[number];

/** The error reasons whose refusals the audit trail records. */
export const AuditedRefusals = ['FORBIDDEN', 'POLICY_DENIED', 'RATE_LIMITED', 'QUOTA_EXCEEDED', 'BUSY'] as const satisfies readonly ErrorReason[];

/** What every audit entry has. Times are ISO 8601. */
interface AuditEntryBase {
  /** The event id, or the id of the refusal record. */
  id: string;
  /** When it happened; for a refusal record, its first attempt. */
  at: string;
  principal: string;
  /** The event type (for example `task.create`), or the method a refused call named. */
  method: string;
  /** The actor; for a refusal, the one its calls named (null when none or not the same one). */
  actorKind: string | null;
  actorId: string | null;
  correlationId: string | null;
}

/**
 * A command the server accepted: one stored event. Its data is left out (field permissions apply
 * to it); `events.read` returns it to admins.
 */
export interface AcceptedAuditEntry extends AuditEntryBase {
  outcome: 'accepted';
  /** The actor's stream version after the event. */
  version: number;
  /** Position in the tenant's feed. */
  position: number;
  /** The actor's status after the event. */
  status: string | null;
}

/**
 * Refused attempts: the calls one principal made to one method that failed with one error
 * reason within about a second, aggregated into one record (`count` of them).
 */
export interface RefusedAuditEntry extends AuditEntryBase {
  outcome: 'refused';
  /** The stable error reason, e.g. `FORBIDDEN`. */
  code: ErrorReason;
  /** The numeric JSON-RPC error code. */
  errorCode: number | null;
  /** The error message of the first attempt. */
  reason: string;
  /** How many attempts this record stands for. */
  count: number;
  /** The last attempt. */
  lastAt: string;
}

/** One entry of the audit trail. */
export type AuditEntry = AcceptedAuditEntry | RefusedAuditEntry;

/** The state of an actor after one event, as `events.replay` rebuilt it. */
export interface ReplayStep {
  version: number;
  eventId: string;
  type: string;
  /** ISO 8601. */
  at: string;
  principal: string;
  /** The status name of the replayed state. */
  status: string;
  /** False while the actor is not created yet, or after it was deleted. */
  exists: boolean;
  /** The resource as reads show it (null when it does not exist). */
  resource: Record<string, unknown> | null;
}

/** The result of `events.replay`. */
export interface ReplayResult {
  kind: string;
  actorId: string;
  /** The version replayed to. */
  version: number;
  /** The stream's current version. */
  headVersion: number;
  /** The replayed state at `version`. */
  status: string;
  exists: boolean;
  resource: Record<string, unknown> | null;
  /** The state after each event up to `version`, oldest first: the last `limit` of them. */
  steps: ReplayStep[];
  /** True when earlier steps were left out (they were still replayed). */
  truncated: boolean;
  /**
   * At the head: whether the replayed resource equals what the server serves now (it should;
   * false points at a bug). Null when replaying to an earlier version.
   */
  matchesCurrent: boolean | null;
}

const IsoTime = z.iso.datetime({ offset: true });
const Limit = z.number().int().min(1).max(1000).optional();
const Cursor = z.string().max(512).optional();
/** Actor kinds are lower-case names such as `task` or `agent`. */
const Kind = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'must be an actor kind such as task, agent or execution');

/** Params schema of the audit and event methods. */
export const AuditMethodSchemas = {
  'audit.query': z.strictObject({
    actorKind: Kind.optional(),
    actorId: Id.optional(),
    principal: Id.optional(),
    method: z.string().min(1).max(128).optional(),
    from: IsoTime.optional(),
    to: IsoTime.optional(),
    outcome: z.enum(AuditOutcomes).optional(),
    limit: Limit,
    cursor: Cursor,
  }),
  'events.read': z.strictObject({
    kind: Kind,
    actorId: Id,
    afterVersion: z.number().int().min(0).optional(),
    limit: Limit,
  }),
  'events.replay': z.strictObject({
    kind: Kind,
    actorId: Id,
    toVersion: z.number().int().min(1).optional(),
    limit: Limit,
  }),
} as const;

/** Result types of the audit and event methods. */
export interface AuditMethodResults {
  'audit.query': Page<AuditEntry>;
  'events.read': { items: ActorEvent[]; headVersion: number };
  'events.replay': ReplayResult;
}

/** Descriptions of the audit and event methods. */
export const AuditMethodDescriptions: Record<keyof typeof AuditMethodSchemas, string> = {
  'audit.query':
    "The tenant's audit trail, newest first: accepted commands (stored events) and refused attempts (forbidden, denied by a rule, over a limit), filtered by actor, principal, method, time and outcome. Admins and observers.",
  'events.read': "An actor's stored events, oldest first, after a version (default 100, at most 1000). Admins.",
  'events.replay':
    "Replays an actor's events through its machine and returns its state after each event up to toVersion (the last `limit`, default 100) and at toVersion (default: the head). Admins.",
};

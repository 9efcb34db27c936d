import type { z } from 'zod';
import type { AnyStateMachine } from 'xstate';
import { DUPLICATE, type ActorHost, type TurnResult } from '../../actors/ActorHost.js';
import type { Store, ViewQuery } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { MethodName, MethodResults, MethodSchemas } from '../../protocol/methods.js';
import type { Page, Principal, Role } from '../../protocol/model.js';
import type { Authenticator } from '../auth/Authenticator.js';
import type { AuditRecorder } from '../guard/AuditRecorder.js';
import type { AgentDirectory } from '../assignment/AgentDirectory.js';
import type { Assigner } from '../assignment/Assigner.js';
import type { RuleEngine } from '../policy/RuleEngine.js';
import type { RateLimits } from '../guard/RateLimits.js';
import type { Quotas } from '../guard/Quotas.js';
import type { Logger } from '../logger.js';
import type { Connection } from './Connection.js';
import type { Presence } from './Presence.js';
import type { SubscriptionHub } from './SubscriptionHub.js';
import type { WorkspaceService } from '../workspaces/WorkspaceService.js';
import type { DocumentService } from '../documents/DocumentService.js';

/** The services handlers use. */
export interface App {
  host: ActorHost;
  store: Store;
  hub: SubscriptionHub;
  auth: Authenticator;
  presence: Presence;
  log: Logger;
  now: () => number;
  rules: RuleEngine;
  directory: AgentDirectory;
  assigner: Assigner;
  /** Default lease of a held task, in seconds. */
  leaseSeconds: number;
  /** Rate limits per tenant, principal and connection (the guard, and `ratelimit.*` methods). */
  rateLimits?: RateLimits;
  /** Tenant quotas: creates reserve through it; `quota.*` methods read and set it. */
  quotas?: Quotas;
  /** Records refused calls (forbidden, denied, over a limit) in the tenant's audit trail. */
  audit?: AuditRecorder;
  /** Workspace access (the `WorkspaceAccess` port), presence and messaging. */
  workspaces?: WorkspaceService;
  /** Live Automerge documents of workspaces (state and shared documents). */
  documents?: DocumentService;
}

/** What a handler knows about the call. */
export interface CallContext {
  /** Null only for methods allowed before authentication. */
  principal: Principal | null;
  conn: Connection;
  correlationId: string;
}

/** An authenticated call. */
export interface AuthedContext extends CallContext {
  principal: Principal;
}

/** A method implementation; params are already validated against the method's schema. */
export type Handler<M extends MethodName> = (
  ctx: AuthedContext,
  params: z.output<(typeof MethodSchemas)[M]>,
) => Promise<MethodResults[M]>;

/**
 * A check around every call. `checkParams` sees the raw params before they are validated (and
 * also for unauthenticated calls); `beforeCall` runs after authentication and validation and may
 * refuse the call by throwing a ProtocolError, or return a function that runs when the call ends
 * (to release what it reserved); `afterCall` may rewrite the result (for example to hide fields).
 */
export interface CallGuard {
  checkParams?(method: string, params: unknown, principal: Principal | null): void;
  beforeCall?(ctx: AuthedContext, method: MethodName, params: Record<string, unknown>): Promise<(() => void) | void> | (() => void) | void;
  afterCall?(ctx: AuthedContext, method: MethodName, result: unknown): unknown | Promise<unknown>;
}

/** Implementations of some methods. */
export type Handlers = { [M in MethodName]?: Handler<M> };

/**
 * A page of read-model documents. A cursor the store cannot decode is the client's mistake, so
 * it becomes INVALID_PARAMS rather than a server error.
 */
export async function queryPage<T>(store: Store, tenant: string, kind: string, query: ViewQuery): Promise<Page<T>> {
  try {
    const res = await store.queryViews(tenant, kind, query);
    return { items: res.items.map((v) => v.doc as unknown as T), nextCursor: res.nextCursor };
  } catch (e) {
    if ((e as Error).message.startsWith('invalid cursor')) {
      throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
    }
    throw e;
  }
}

/**
 * The result of a turn sent without an event id. DUPLICATE only answers sends that reuse an
 * event id (outbox deliveries), so here it would be a server fault.
 */
export function applied<M extends AnyStateMachine>(r: TurnResult<M> | typeof DUPLICATE): TurnResult<M> {
  if (r === DUPLICATE) throw new ProtocolError('INTERNAL', 'Unexpected duplicate event.');
  return r;
}

/** True if the principal has any of the roles. */
export function hasRole(p: Principal, ...roles: Role[]): boolean {
  return p.roles.some((r) => roles.includes(r));
}

/** Throws FORBIDDEN unless the principal has one of the roles. */
export function requireRole(p: Principal, action: string, ...roles: Role[]): void {
  if (!hasRole(p, ...roles)) {
    throw new ProtocolError('FORBIDDEN', `Only ${roles.join(' or ')} principals may ${action}; you are ${p.roles.join(', ')}.`, {
      requiredRoles: roles,
    });
  }
}

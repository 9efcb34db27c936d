import type { z } from 'zod';
import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store } from '../../actors/Store.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { MethodName, MethodResults, MethodSchemas } from '../../protocol/methods.js';
import type { Principal, Role } from '../../protocol/model.js';
import type { Authenticator } from '../auth/Authenticator.js';
import type { Logger } from '../logger.js';
import type { Connection } from './Connection.js';
import type { Presence } from './Presence.js';
import type { SubscriptionHub } from './SubscriptionHub.js';

/** The services handlers use. */
export interface App {
  host: ActorHost;
  store: Store;
  hub: SubscriptionHub;
  auth: Authenticator;
  presence: Presence;
  log: Logger;
  now: () => number;
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

/** Implementations of some methods. */
export type Handlers = { [M in MethodName]?: Handler<M> };

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

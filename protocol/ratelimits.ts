import { z } from 'zod';

/**
 * Rate limits: their wire shapes and method schemas, merged into the catalogue by `methods.ts`.
 *
 * Every method of the catalogue belongs to one class; each class has a budget of points per
 * window at three scopes (the whole tenant, each principal, each connection). A call costs one
 * point of its class at every scope (`task.createBatch` one per task, `task.createDistributed`
 * one per subtask plus one), and is refused with `RATE_LIMITED` when any scope has no points left.
 */

/**
 * The classes of methods, each with its own budgets:
 *
 * - `task:create` — `task.create`, `task.createBatch` (one point per task), `task.createDistributed`
 *   (one per subtask, plus one).
 * - `task:write` — every other change to tasks.
 * - `workflow:execute` — `workflow.execute` and `execution.retry`.
 * - `workflow:write` — changes to workflows, templates and executions.
 * - `rule:write` — changes to rules and policies.
 * - `agent:write` — agent registration, heartbeats, status and capabilities.
 * - `subscribe` — `subscribe`.
 * - `read` — every method that changes nothing, and `unsubscribe`.
 * - `write` — every other change.
 * - `limits:write` — `ratelimit.set` and `ratelimit.unset` (and other limit settings). Its budgets
 *   cannot be overridden, so an admin can always undo an override.
 */
export const RateLimitClasses = [
  'task:create',
  'task:write',
  'workflow:execute',
  'workflow:write',
  'rule:write',
  'agent:write',
  'subscribe',
  'read',
  'write',
  'limits:write',
] as const;
/** One class of methods. */
export type RateLimitClass = (typeof RateLimitClasses)[number];

/** The classes whose budgets a tenant admin may override: all but `limits:write`. */
export const OverridableRateLimitClasses = RateLimitClasses.filter(
  (c): c is Exclude<RateLimitClass, 'limits:write'> => c !== 'limits:write',
);
/** A class whose budgets a tenant admin may override. */
export type OverridableRateLimitClass = Exclude<RateLimitClass, 'limits:write'>;

/**
 * Who shares a budget: `tenant` — every call of the tenant; `principal` — each principal's calls
 * on all its connections (and, with Redis, on every node); `connection` — each connection's calls.
 */
export const RateLimitScopes = ['tenant', 'principal', 'connection'] as const;
/** One scope of a budget. */
export type RateLimitScope = (typeof RateLimitScopes)[number];

/** A budget: `points` per window of `durationSeconds` (fixed windows). */
export interface RateLimit {
  points: number;
  durationSeconds: number;
}

/** A budget in effect, and whether it is the server's default or the tenant's override. */
export interface EffectiveRateLimit extends RateLimit {
  source: 'default' | 'tenant';
}

/** The budgets of a tenant, by class and scope. */
export type RateLimitTable = Record<RateLimitClass, Record<RateLimitScope, EffectiveRateLimit>>;

/** A tenant's overrides, by class and scope. */
export type RateLimitOverrides = Partial<Record<OverridableRateLimitClass, Partial<Record<RateLimitScope, RateLimit>>>>;

/** The result of `ratelimit.get`, `ratelimit.set` and `ratelimit.unset`. */
export interface RateLimitSettings {
  /** The budgets in effect for the tenant. */
  limits: RateLimitTable;
  /** The tenant's overrides alone. */
  overrides: RateLimitOverrides;
  /** The methods of each class (methods that are never limited are not listed). */
  methods: Record<RateLimitClass, string[]>;
  /** Version of the tenant's overrides; 0 while it has never set one. */
  version: number;
  /** Who last changed the overrides, and when (ISO 8601); null while never set. */
  updatedBy: string | null;
  updatedAt: string | null;
}

/** What is left of one budget for the caller. */
export interface RateLimitBudget extends RateLimit {
  /** Points used in the current window. */
  used: number;
  remaining: number;
  /** Milliseconds until the current window ends (0 when no window is open). */
  resetMs: number;
  source: 'default' | 'tenant';
}

/** The result of `ratelimit.status`. */
export interface RateLimitStatus {
  /**
   * Where the budgets are counted: `redis` (shared by every node), `memory` (this node alone:
   * no Redis configured), or `memory-fallback` (Redis is configured but unreachable; each node
   * counts on its own until it is back).
   */
  backend: 'redis' | 'memory' | 'memory-fallback';
  /** The caller's budgets, by class and scope. */
  classes: Partial<Record<RateLimitClass, Record<RateLimitScope, RateLimitBudget>>>;
}

const Class = z.enum(OverridableRateLimitClasses as [OverridableRateLimitClass, ...OverridableRateLimitClass[]]);
const Scope = z.enum(RateLimitScopes);
const expected = { expectedVersion: z.number().int().min(0).optional() };

/** Params schema of the rate limit methods. */
export const RateLimitMethodSchemas = {
  'ratelimit.get': z.strictObject({}),
  'ratelimit.set': z.strictObject({
    class: Class,
    scope: Scope,
    points: z.number().int().min(1).max(1_000_000_000),
    durationSeconds: z.number().int().min(1).max(86_400),
    ...expected,
  }),
  'ratelimit.unset': z.strictObject({ class: Class, scope: Scope, ...expected }),
  'ratelimit.status': z.strictObject({ class: z.enum(RateLimitClasses).optional() }),
} as const;

/** Result types of the rate limit methods. */
export interface RateLimitMethodResults {
  'ratelimit.get': RateLimitSettings;
  'ratelimit.set': RateLimitSettings;
  'ratelimit.unset': RateLimitSettings;
  'ratelimit.status': RateLimitStatus;
}

/** Descriptions of the rate limit methods. */
export const RateLimitMethodDescriptions: Record<keyof typeof RateLimitMethodSchemas, string> = {
  'ratelimit.get': 'The tenant\'s rate limits by method class and scope (defaults and overrides), and the methods of each class.',
  'ratelimit.set': 'Override the budget of a method class at one scope for the tenant (admin): points per durationSeconds; applies from the next call.',
  'ratelimit.unset': 'Remove a tenant override (admin); the default budget applies again from the next call.',
  'ratelimit.status': 'What is left of the caller\'s budgets, by class (or one class) and scope, and where they are counted.',
};

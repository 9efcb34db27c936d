import { z } from 'zod';

/**
 * Tenant quotas: limits on what a tenant may hold, their wire shapes and method schemas. Merged
 * into the catalogue by `methods.ts`.
 */

/**
 * What a quota limits:
 * - `tasks`: tasks that exist and are not deleted (archived ones and subtasks still waiting their
 *   turn included);
 * - `active_tasks`: tasks not finished (pending, assigned, accepted, in progress, input required,
 *   or failed with a retry pending);
 * - `workflow_executions_per_day`: workflow executions started in the last 24 hours (sliding);
 * - `stored_bytes`: approximate size of the tenant's stored events (their JSON);
 * - `workspaces`, `members_per_workspace`: declared for workspaces; accepted and stored, not
 *   enforced yet.
 */
export const QuotaResources = ['tasks', 'active_tasks', 'workflow_executions_per_day', 'stored_bytes', 'workspaces', 'members_per_workspace'] as const;
export type QuotaResource = (typeof QuotaResources)[number];

/** The resources the server counts and enforces today. */
export const EnforcedQuotaResources: readonly QuotaResource[] = ['tasks', 'active_tasks', 'workflow_executions_per_day', 'stored_bytes', 'workspaces', 'members_per_workspace'];

/** Use at or above this share of a limit warns the tenant's admins (once per crossing). */
export const QUOTA_WARN_RATIO = 0.8;
/** The warning re-arms once use falls below this share of the limit. */
export const QUOTA_REARM_RATIO = 0.75;

/** A limit: a count (bytes for `stored_bytes`), or null for no limit. */
export type QuotaLimit = number | null;

/** A tenant's stored limits: a resource left out follows the server's default. */
export type QuotaOverrides = Partial<Record<QuotaResource, QuotaLimit>>;

/** A warning that was sent and has not re-armed yet. */
export interface QuotaWarning {
  limit: number;
  used: number;
  /** ISO 8601. */
  at: string;
}

/** The result of `quota.get` and `quota.set`. */
export interface QuotaLimits {
  /** The limit in force for each resource (null: unlimited). */
  limits: Record<QuotaResource, QuotaLimit>;
  /** What the tenant set; resources left out follow `defaults`. */
  overrides: QuotaOverrides;
  /** The server's defaults (`TROUPE_QUOTA_<RESOURCE>`). */
  defaults: Record<QuotaResource, QuotaLimit>;
  /** Resources the server enforces now; the others are stored but not checked yet. */
  enforced: QuotaResource[];
  /** The quota actor's version (0 when the tenant never set anything); guard `quota.set` with it. */
  version: number;
  updatedBy: string | null;
  /** ISO 8601. */
  updatedAt: string | null;
}

/** One resource in `quota.status`. */
export interface QuotaUsage {
  resource: QuotaResource;
  limit: QuotaLimit;
  /** Current use; null for resources not counted yet (workspaces). */
  used: number | null;
  /** Held by creates in flight, not yet stored. */
  reserved: number;
  /** `limit - used - reserved` (at least 0); null when unlimited or not counted. */
  remaining: number | null;
  /** `used` as a whole percentage of the limit; null when unlimited or not counted. */
  percent: number | null;
  enforced: boolean;
  /** True while the 80% warning for this resource has been sent and has not re-armed. */
  warned: boolean;
}

/** The `data` of a QUOTA_EXCEEDED error. */
export interface QuotaExceededData {
  resource: QuotaResource;
  limit: number;
  /** Use counted against the limit, creates in flight included. */
  used: number;
  /** How much the refused call needed. */
  requested: number;
  /** For `workflow_executions_per_day`: when the oldest execution of the window leaves it. */
  retryAfterMs?: number;
}

/** The data of a `quota.warning` event (on the quota actor, published on the `tenant` topic). */
export interface QuotaWarningEvent {
  resource: QuotaResource;
  limit: number;
  used: number;
  /** `used` as a whole percentage of `limit`. */
  percent: number;
}

/** A limit as `quota.set` takes it: a count, null (unlimited), or `default` (follow the server). */
const LimitInput = z.union([z.number().int().min(0).max(Number.MAX_SAFE_INTEGER), z.null(), z.literal('default')]);

const LimitsInput = z
  .strictObject(Object.fromEntries(QuotaResources.map((r) => [r, LimitInput.optional()])) as Record<QuotaResource, z.ZodOptional<typeof LimitInput>>)
  .refine((l) => Object.values(l).some((v) => v !== undefined), { message: 'name at least one resource' });

/** Params schema of the quota methods. */
export const QuotaMethodSchemas = {
  'quota.get': z.strictObject({}),
  'quota.set': z.strictObject({
    limits: LimitsInput,
    expectedVersion: z.number().int().min(0).optional(),
  }),
  'quota.status': z.strictObject({
    resources: z.array(z.enum(QuotaResources)).min(1).max(QuotaResources.length).optional(),
  }),
} as const;

/** Result types of the quota methods. */
export interface QuotaMethodResults {
  'quota.get': QuotaLimits;
  'quota.set': QuotaLimits;
  'quota.status': { items: QuotaUsage[] };
}

/** Descriptions of the quota methods. */
export const QuotaMethodDescriptions: Record<keyof typeof QuotaMethodSchemas, string> = {
  'quota.get': "The tenant's limits in force, what it set and the server's defaults.",
  'quota.set':
    'Set limits (admin): a count, null for unlimited, or "default" to follow the server\'s default; resources left out are kept. Guard with expectedVersion.',
  'quota.status': 'Limits, current use, use held by creates in flight, and what remains, per resource.',
};

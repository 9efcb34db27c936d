import { z } from 'zod';

/**
 * Field-level permissions: a tenant's field policy says which roles may read or write which fields
 * of its tasks, workflows and executions. Wire shapes and method schemas, merged into the
 * catalogue by `methods.ts`.
 */

/** Resource kinds a field policy covers. */
export const FieldPolicyKinds = ['task', 'workflow', 'execution'] as const;
export type FieldPolicyKind = (typeof FieldPolicyKinds)[number];

/**
 * Roles a field rule names: the tenant roles, plus two relations to the resource. `creator` is
 * the principal in its `createdBy`; `assignee` is the agent a task is assigned to, or an agent
 * that ran a step of an execution (workflows have no assignee).
 */
export const FieldRoles = ['admin', 'agent', 'observer', 'creator', 'assignee'] as const;
export type FieldRole = (typeof FieldRoles)[number];

/**
 * The top-level fields of each kind a rule may start its path with. Identity and lifecycle
 * fields (`id`, `status`, `version`, `createdBy`, `assignedTo`, ...) cannot be hidden: clients
 * and the relation roles need them.
 */
export const FieldPolicyFields: Record<FieldPolicyKind, readonly string[]> = {
  task: ['title', 'description', 'parameters', 'result', 'error', 'progress', 'inputRequest', 'inputs', 'distribution', 'delegations', 'rejections'],
  workflow: ['description', 'steps', 'config', 'tags'],
  execution: ['input', 'output', 'error', 'steps', 'trace', 'cancelReason'],
};

/**
 * One rule: who may read and who may write the field at `path` (dot-separated keys of the
 * resource as methods return it; a key that meets an array applies to each of its elements, so
 * `steps.input` is the input of every step). Admins always read and write everything.
 */
export interface FieldRule {
  kind: FieldPolicyKind;
  path: string;
  read: FieldRole[];
  write: FieldRole[];
}

/** A tenant's field policy; `version` 0 and no rules when none was ever set. */
export interface FieldPolicy {
  /** Always `tenant`: one policy per tenant. */
  id: 'tenant';
  tenantId: string;
  rules: FieldRule[];
  version: number;
  updatedBy: string | null;
  /** ISO 8601. */
  updatedAt: string | null;
}

const Segment = '[A-Za-z_][A-Za-z0-9_-]{0,63}';
const PATH = new RegExp(`^${Segment}(\\.${Segment}){0,7}$`);

/** A field path: 1–8 keys joined by dots, each a letter or `_` followed by up to 63 letters, digits, `_` or `-`. */
export const FieldPath = z
  .string()
  .min(1)
  .max(256)
  .regex(PATH, 'must be 1-8 keys joined by dots (for example parameters.secrets), each a letter or _ followed by up to 63 letters, digits, _ or -');

const RoleList = z
  .array(z.enum(FieldRoles))
  .max(FieldRoles.length)
  .refine((roles) => new Set(roles).size === roles.length, { message: 'lists a role twice' });

/** Params schema of one rule. */
export const FieldRuleSchema = z.strictObject({
  kind: z.enum(FieldPolicyKinds),
  path: FieldPath,
  read: RoleList,
  write: RoleList,
});

/** Params schema of the methods. */
export const FieldPolicyMethodSchemas = {
  'fieldPolicy.set': z
    .strictObject({
      rules: z.array(FieldRuleSchema).max(200),
      expectedVersion: z.number().int().min(0).optional(),
    })
    .superRefine(({ rules }, ctx) => {
      const seen = new Set<string>();
      rules.forEach((r, i) => {
        const first = r.path.split('.')[0]!;
        const fields = FieldPolicyFields[r.kind];
        if (!fields.includes(first)) {
          ctx.addIssue({
            code: 'custom',
            path: ['rules', i, 'path'],
            message: `starts with "${first}", which is not a field a ${r.kind} policy can cover; use one of ${fields.join(', ')}`,
          });
        }
        if (r.kind === 'workflow' && (r.read.includes('assignee') || r.write.includes('assignee'))) {
          ctx.addIssue({ code: 'custom', path: ['rules', i], message: 'names the role assignee, but workflows have no assignee' });
        }
        const key = `${r.kind} ${r.path}`;
        if (seen.has(key)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'path'], message: `repeats ${r.kind} ${r.path}; give each path one rule` });
        seen.add(key);
      });
    }),
  'fieldPolicy.get': z.strictObject({}),
} as const;

/** Result types of the methods. */
export interface FieldPolicyMethodResults {
  'fieldPolicy.set': FieldPolicy;
  'fieldPolicy.get': FieldPolicy;
}

/** Descriptions of the methods. */
export const FieldPolicyMethodDescriptions: Record<keyof typeof FieldPolicyMethodSchemas, string> = {
  'fieldPolicy.set':
    'Replace the tenant\'s field policy (admin): which roles may read and write which fields of tasks, workflows and executions; an empty list removes it.',
  'fieldPolicy.get': 'The tenant\'s field policy.',
};

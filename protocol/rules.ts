import { z } from 'zod';
import { Id } from './ids.js';
import { AssignmentStrategies, TaskPriorities, type AssignmentStrategy, type Page, type TaskPriority } from './model.js';

/**
 * Rules (CEL expressions) and per-task-type policies: their wire shapes and method schemas.
 * Merged into the catalogue by `methods.ts`.
 */

/**
 * What a rule decides. `task.validation` and `task.delegation` rules must all yield `true` for a
 * request to pass; `task.assignment` rules decide which agents are eligible for a task;
 * `task.defaults` rules yield a map of task fields to fill in.
 */
export const RuleCategories = ['task.validation', 'task.assignment', 'task.delegation', 'task.defaults'] as const;
export type RuleCategory = (typeof RuleCategories)[number];

/** A tenant rule. Times are ISO 8601 strings. */
export interface Rule {
  /** The rule's id: its name. */
  id: string;
  tenantId: string;
  name: string;
  description: string;
  category: RuleCategory;
  /** A CEL expression over `task`, `agent`, `principal`, `delegation`, `workspace` and `input`. */
  expression: string;
  /** Higher runs first. */
  priority: number;
  /** Disabled rules are kept but never evaluated, except by an explicit `rule.evaluate`. */
  enabled: boolean;
  /** The reason reported when the rule denies. */
  message: string;
  version: number;
  createdBy: string;
  createdAt: string;
  updatedAt: string;
}

/** Task fields a policy fills in when a task of its type does not give them. */
export interface PolicyDefaults {
  priority?: TaskPriority;
  maxRetries?: number;
  timeoutSeconds?: number;
  retryBackoffMs?: number;
  /** How long an agent holds an accepted task without reporting before it is re-offered. */
  leaseSeconds?: number;
  /** How long an offer waits for the agent to accept before it goes to another agent. */
  offerTimeoutSeconds?: number;
  /** Merged shallowly under the task's own parameters. */
  parameters?: Record<string, unknown>;
  requiredCapabilities?: string[];
}

/** How tasks of a type are assigned. */
export interface PolicyAssignment {
  strategy?: AssignmentStrategy;
  /** Assign new tasks of this type automatically. */
  auto?: boolean;
}

/** The policy of one task type; task type `*` is the tenant default. */
export interface Policy {
  taskType: string;
  defaults: PolicyDefaults;
  assignment: PolicyAssignment;
  version: number;
  updatedBy: string;
  /** ISO 8601. */
  updatedAt: string;
}

/** A task type's policy merged field by field over the tenant default (`*`). */
export interface EffectivePolicy {
  taskType: string;
  defaults: PolicyDefaults;
  assignment: PolicyAssignment;
}

/** A decision: allowed, or denied by a named rule with a reason. */
export type RuleVerdict = { allowed: true } | { allowed: false; rule: { id: string; name: string }; reason: string };

/** One rule's outcome in a dry run. */
export interface RuleResult {
  /** The rule's name; null for an ad-hoc expression. */
  rule: string | null;
  /** What the expression yielded, as JSON (null when it failed). */
  value: unknown;
  /** True when a decision rule yielded `true`, or a defaults rule yielded a map. */
  allowed: boolean;
  /** The run-time error, when the expression failed. */
  error?: string;
}

/** The result of `rule.evaluate`. */
export interface RuleEvaluation {
  /** Every rule evaluated, in the order the server runs them (highest priority first). */
  results: RuleResult[];
  /**
   * The decision the server would make: for a decision category, or a single rule of one.
   * Null for an ad-hoc expression and for `task.defaults`.
   */
  verdict: RuleVerdict | null;
  /** For `task.defaults`: the merged values (higher priority wins). */
  values?: Record<string, unknown>;
}

const Json = z.record(z.string(), z.unknown());
const Expression = z.string().min(1).max(4096);
const Priority = z.number().int().min(-1_000_000).max(1_000_000);
const Message = z.string().min(1).max(1024);
const Description = z.string().max(4096);
const Category = z.enum(RuleCategories);
const expected = { expectedVersion: z.number().int().min(0).optional() };

/** A task type, or `*` for the tenant default. Task types become actor ids, so no `/`. */
const TaskType = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[^/\u0000-\u001f]+$/, 'must be 1-128 characters without / or control characters (* is the tenant default)');

const PolicyDefaultsSchema = z.strictObject({
  priority: z.enum(TaskPriorities).optional(),
  maxRetries: z.number().int().min(0).max(100).optional(),
  timeoutSeconds: z.number().int().min(1).max(31_536_000).optional(),
  retryBackoffMs: z.number().int().min(0).max(86_400_000).optional(),
  leaseSeconds: z.number().int().min(1).max(86_400).optional(),
  offerTimeoutSeconds: z.number().int().min(1).max(86_400).optional(),
  parameters: Json.optional(),
  requiredCapabilities: z.array(z.string().min(1).max(64)).max(64).optional(),
});

const PolicyAssignmentSchema = z.strictObject({
  strategy: z.enum(AssignmentStrategies).optional(),
  auto: z.boolean().optional(),
});

/** Params schema of the rule and policy methods. */
export const RuleMethodSchemas = {
  'rule.register': z.strictObject({
    name: Id,
    category: Category,
    expression: Expression,
    priority: Priority.optional(),
    enabled: z.boolean().optional(),
    message: Message.optional(),
    description: Description.optional(),
  }),
  'rule.update': z.strictObject({
    ruleId: Id,
    ...expected,
    expression: Expression.optional(),
    priority: Priority.optional(),
    enabled: z.boolean().optional(),
    message: Message.optional(),
    description: Description.optional(),
  }),
  'rule.get': z.strictObject({ ruleId: Id }),
  'rule.list': z.strictObject({
    category: Category.optional(),
    enabled: z.boolean().optional(),
    limit: z.number().int().min(1).max(1000).optional(),
    cursor: z.string().max(512).optional(),
  }),
  'rule.delete': z.strictObject({ ruleId: Id, ...expected }),
  'rule.evaluate': z
    .strictObject({
      ruleId: Id.optional(),
      category: Category.optional(),
      expression: Expression.optional(),
      input: Json,
    })
    .refine((p) => [p.ruleId, p.category, p.expression].filter((v) => v !== undefined).length === 1, {
      message: 'give exactly one of ruleId, category or expression',
    }),
  'policy.get': z.strictObject({ taskType: TaskType }),
  'policy.set': z.strictObject({
    taskType: TaskType,
    defaults: PolicyDefaultsSchema.optional(),
    assignment: PolicyAssignmentSchema.optional(),
    ...expected,
  }),
  'policy.list': z.strictObject({}),
} as const;

/** Result types of the rule and policy methods. */
export interface RuleMethodResults {
  'rule.register': Rule;
  'rule.update': Rule;
  'rule.get': Rule;
  'rule.list': Page<Rule>;
  'rule.delete': { id: string; deleted: true; version: number };
  'rule.evaluate': RuleEvaluation;
  'policy.get': { taskType: string; effective: EffectivePolicy; policy: Policy | null };
  'policy.set': Policy;
  'policy.list': { items: Policy[] };
}

/** Descriptions of the rule and policy methods. */
export const RuleMethodDescriptions: Record<keyof typeof RuleMethodSchemas, string> = {
  'rule.register': 'Register a CEL rule of a category (admin); refused if the expression does not compile.',
  'rule.update': 'Change a rule\'s expression, priority, message, description or enabled flag (admin); guard with expectedVersion.',
  'rule.get': 'One rule.',
  'rule.list': 'Rules of the tenant, filtered by category and enabled flag.',
  'rule.delete': 'Delete a rule (admin); its name cannot be reused.',
  'rule.evaluate': 'Dry run (admin): evaluate one rule, a category or an ad-hoc expression against the given variables.',
  'policy.get': 'The policy of a task type merged over the tenant default (*), and the stored one.',
  'policy.set': 'Create or replace parts of the policy of a task type, or of * (admin); guard with expectedVersion.',
  'policy.list': 'Every policy of the tenant.',
};

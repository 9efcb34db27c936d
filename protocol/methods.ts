import { z } from 'zod';
import { Aggregations, AgentStatuses, AssignmentStrategies, CompletionModes, Coordinations, TaskPriorities, TaskStatuses } from './model.js';
import type { Agent, ActorEvent, AgentPerformance, AssignmentStrategy, DelegationKind, Page, Principal, Task, TaskTree } from './model.js';
import { RuleMethodDescriptions, RuleMethodSchemas, type RuleMethodResults } from './rules.js';
import { DocumentMethodDescriptions, DocumentMethodSchemas, type DocumentMethodResults } from './documents.js';
import { RateLimitMethodDescriptions, RateLimitMethodSchemas, type RateLimitMethodResults } from './ratelimits.js';
import { QuotaMethodDescriptions, QuotaMethodSchemas, type QuotaMethodResults } from './quotas.js';
import { AuditMethodDescriptions, AuditMethodSchemas, type AuditMethodResults } from './audit.js';
import { FieldPolicyMethodDescriptions, FieldPolicyMethodSchemas, type FieldPolicyMethodResults } from './fieldPolicy.js';
import { WorkflowMethodDescriptions, WorkflowMethodSchemas, type WorkflowMethodResults } from './workflows.js';
import { WorkspaceMethodDescriptions, WorkspaceMethodSchemas, type WorkspaceMethodResults } from './workspaces.js';
import { InspectMethodDescriptions, InspectMethodSchemas, type InspectMethodResults } from './inspect.js';
import { Id } from './ids.js';

/**
 * The method catalogue: every method's params schema (zod), a one-line description and the
 * result type (for the typed client). `protocolJsonSchema()` exports it as JSON Schema.
 */

/** Ids of actors and principals (defined in `ids.ts`, re-exported for existing importers). */
export { Id };

/** Tenant ids: lower-case, 1–64 characters. */
export const TenantId = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/, 'must be 1-64 characters of a-z 0-9 _ - and start with a letter or digit');

const IsoTime = z.iso.datetime({ offset: true });
const Limit = z.number().int().min(1).max(1000).optional();
const Cursor = z.string().max(512).optional();
const Json = z.record(z.string(), z.unknown());
const Capabilities = z.array(z.string().min(1).max(64)).max(64);
const Text = (max: number) => z.string().max(max);

const TaskFields = {
  type: z.string().min(1).max(128),
  title: z.string().min(1).max(512),
  description: Text(16384).optional(),
  priority: z.enum(TaskPriorities).optional(),
  parameters: Json.optional(),
  requiredCapabilities: Capabilities.optional(),
  maxRetries: z.number().int().min(0).max(100).optional(),
  retryBackoffMs: z.number().int().min(0).max(86_400_000).optional(),
  timeoutSeconds: z.number().int().min(1).max(31_536_000).optional(),
  deadline: IsoTime.optional(),
};

const Strategy = z.enum(AssignmentStrategies);

/** How the server finds, offers and leases work. */
const AssignmentFields = {
  autoAssign: z.boolean().optional(),
  assignmentStrategy: Strategy.optional(),
  offerTimeoutSeconds: z.number().int().min(1).max(86_400).optional(),
  leaseSeconds: z.number().int().min(1).max(86_400).optional(),
  onLeaseExpired: z.enum(['reoffer', 'fail']).optional(),
};

const TaskCreate = z.strictObject({
  ...TaskFields,
  ...AssignmentFields,
  assignTo: Id.optional(),
  parentTaskId: Id.optional(),
  idempotencyKey: z.string().min(1).max(256).optional(),
});

const TaskFilters = {
  status: z.array(z.enum(TaskStatuses)).max(16).optional(),
  type: z.string().max(128).optional(),
  priority: z.array(z.enum(TaskPriorities)).max(4).optional(),
  assignedTo: Id.optional(),
  createdBy: Id.optional(),
  parentTaskId: Id.optional(),
  archived: z.union([z.boolean(), z.literal('any')]).optional(),
  createdAfter: IsoTime.optional(),
  createdBefore: IsoTime.optional(),
};

const taskRef = { taskId: Id };
const expected = { expectedVersion: z.number().int().min(0).optional() };

/** Params schema of every method. */
export const MethodSchemas = {
  'session.authenticate': z.strictObject({ token: z.string().min(1).max(8192) }),
  'session.whoami': z.strictObject({}),
  ping: z.strictObject({}),
  subscribe: z.strictObject({
    topic: z.string().min(1).max(200),
    fromPosition: z.number().int().min(0).optional(),
  }),
  unsubscribe: z.strictObject({ subscriptionId: z.string().min(1).max(64) }),

  'agent.register': z.strictObject({
    id: Id.optional(),
    name: z.string().min(1).max(256).optional(),
    kind: z.string().min(1).max(64).optional(),
    capabilities: Capabilities.optional(),
    maxConcurrentTasks: z.number().int().min(1).max(10_000).optional(),
    costPerTask: z.number().min(0).max(1e9).optional(),
    metadata: Json.optional(),
  }),
  'agent.get': z.strictObject({ agentId: Id }),
  'agent.list': z.strictObject({
    status: z.array(z.enum(AgentStatuses)).max(4).optional(),
    capability: z.string().max(64).optional(),
    limit: Limit,
    cursor: Cursor,
  }),
  'agent.heartbeat': z.strictObject({ agentId: Id.optional() }),
  'agent.available': z.strictObject({ capabilities: Capabilities.optional(), limit: Limit }),
  'agent.setCapabilities': z.strictObject({ agentId: Id.optional(), capabilities: Capabilities }),
  'agent.deregister': z.strictObject({ agentId: Id.optional(), reason: Text(1024).optional() }),
  'agent.performance': z.strictObject({ agentId: Id, periodSeconds: z.number().int().min(1).max(7_776_000).optional() }),
  'agent.setStatus': z.strictObject({ agentId: Id.optional(), status: z.enum(AgentStatuses) }),

  'task.create': TaskCreate,
  'task.createBatch': z.strictObject({ tasks: z.array(TaskCreate).min(1).max(100) }),
  'task.get': z.strictObject(taskRef),
  'task.getBatch': z.strictObject({ taskIds: z.array(Id).min(1).max(100) }),
  'task.update': z.strictObject({
    ...taskRef,
    ...expected,
    title: TaskFields.title.optional(),
    description: TaskFields.description,
    priority: TaskFields.priority,
    parameters: TaskFields.parameters,
    requiredCapabilities: TaskFields.requiredCapabilities,
    maxRetries: TaskFields.maxRetries,
    retryBackoffMs: TaskFields.retryBackoffMs,
    timeoutSeconds: TaskFields.timeoutSeconds,
    deadline: IsoTime.nullable().optional(),
  }),
  'task.delete': z.strictObject({ ...taskRef, ...expected }),
  'task.assign': z.strictObject({ ...taskRef, ...expected, agentId: Id, reason: Text(1024).optional() }),
  'task.accept': z.strictObject({ ...taskRef, ...expected }),
  'task.reject': z.strictObject({ ...taskRef, ...expected, reason: Text(1024).optional() }),
  'task.start': z.strictObject({ ...taskRef, ...expected }),
  'task.progress': z.strictObject({
    ...taskRef,
    percent: z.number().min(0).max(100).optional(),
    message: Text(4096).optional(),
  }),
  'task.requestInput': z.strictObject({ ...taskRef, prompt: z.string().min(1).max(16384), schema: z.unknown().optional() }),
  'task.provideInput': z.strictObject({ ...taskRef, input: z.unknown() }),
  'task.complete': z.strictObject({ ...taskRef, ...expected, result: z.unknown().optional() }),
  'task.fail': z.strictObject({ ...taskRef, ...expected, error: z.string().min(1).max(16384), retryable: z.boolean().optional() }),
  'task.retry': z.strictObject({ ...taskRef, ...expected }),
  'task.cancel': z.strictObject({ ...taskRef, ...expected, reason: Text(1024).optional() }),
  'task.timeline': z.strictObject({ ...taskRef, afterVersion: z.number().int().min(0).optional(), limit: Limit }),
  'task.listForAgent': z.strictObject({
    agentId: Id.optional(),
    status: TaskFilters.status,
    limit: Limit,
    cursor: Cursor,
  }),
  'task.search': z.strictObject({ query: z.string().max(256).optional(), ...TaskFilters, limit: Limit, cursor: Cursor }),
  'task.stats': z.strictObject({ query: z.string().max(256).optional(), ...TaskFilters }),
  'task.report': z.strictObject({
    format: z.enum(['json', 'csv']),
    query: z.string().max(256).optional(),
    ...TaskFilters,
    limit: z.number().int().min(1).max(10_000).optional(),
  }),
  'task.autoAssign': z.strictObject({ ...taskRef, strategy: Strategy.optional() }),
  'task.available': z.strictObject({ agentId: Id.optional(), limit: Limit, cursor: Cursor }),
  'task.claim': z.strictObject({ ...taskRef, ...expected }),
  'task.rebalance': z.strictObject({ strategy: Strategy.optional(), dryRun: z.boolean().optional() }),
  'task.delegate': z.strictObject({ ...taskRef, ...expected, toAgentId: Id, reason: Text(1024).optional() }),
  'task.createDistributed': z.strictObject({
    type: TaskFields.type,
    title: TaskFields.title,
    description: TaskFields.description,
    priority: TaskFields.priority,
    parameters: TaskFields.parameters,
    coordination: z.enum(Coordinations),
    completion: z.strictObject({ mode: z.enum(CompletionModes), threshold: z.number().int().min(1).max(100).optional() }),
    aggregation: z.enum(Aggregations).optional(),
    timeoutSeconds: TaskFields.timeoutSeconds,
    subtasks: z
      .array(
        z.strictObject({
          type: TaskFields.type.optional(),
          title: TaskFields.title,
          description: TaskFields.description,
          priority: TaskFields.priority,
          parameters: TaskFields.parameters,
          requiredCapabilities: TaskFields.requiredCapabilities,
          assignTo: Id.optional(),
          maxRetries: TaskFields.maxRetries,
          retryBackoffMs: TaskFields.retryBackoffMs,
          timeoutSeconds: TaskFields.timeoutSeconds,
          ...AssignmentFields,
        }),
      )
      .min(1)
      .max(100),
    idempotencyKey: z.string().min(1).max(256).optional(),
  }),
  'task.submitSubtaskResult': z.strictObject({ parentTaskId: Id, subtaskId: Id, result: z.unknown().optional() }),
  'task.tree': z.strictObject({ ...taskRef, depth: z.number().int().min(1).max(5).optional() }),
  'task.cancelTree': z.strictObject({ ...taskRef, reason: Text(1024).optional() }),
  'task.archive': z.strictObject({
    before: IsoTime,
    status: z.array(z.enum(['completed', 'failed', 'cancelled', 'timed_out'])).max(4).optional(),
  }),

  ...RuleMethodSchemas,
  ...DocumentMethodSchemas,
  ...WorkflowMethodSchemas,
  ...RateLimitMethodSchemas,
  ...QuotaMethodSchemas,
  ...AuditMethodSchemas,
  ...FieldPolicyMethodSchemas,
  ...WorkspaceMethodSchemas,
  ...InspectMethodSchemas,
} as const;

/** Every method name. */
export type MethodName = keyof typeof MethodSchemas;

/** A method's params as the client sends them. */
export type ParamsOf<M extends MethodName> = z.input<(typeof MethodSchemas)[M]>;

/** One item of `task.createBatch`'s result. */
export type BatchItem<T> = { ok: true; value: T } | { ok: false; error: { code: number; message: string; data?: unknown } };

/** Result type of every method (for the typed client). */
export interface MethodResults
  extends RuleMethodResults,
    DocumentMethodResults,
    WorkflowMethodResults,
    RateLimitMethodResults,
    QuotaMethodResults,
    AuditMethodResults,
    FieldPolicyMethodResults,
    WorkspaceMethodResults,
    InspectMethodResults {
  'session.authenticate': Principal;
  'session.whoami': Principal & { connectionId: string };
  ping: { pong: true; time: string };
  subscribe: { subscriptionId: string; topic: string; position: number };
  unsubscribe: { unsubscribed: boolean };
  'agent.register': Agent;
  'agent.get': Agent;
  'agent.list': Page<Agent>;
  'agent.heartbeat': Agent;
  'agent.available': { items: Agent[] };
  'agent.setCapabilities': Agent;
  'agent.deregister': { id: string; deregistered: true; version: number };
  'agent.performance': AgentPerformance;
  'agent.setStatus': Agent;
  'task.create': Task;
  'task.createBatch': { items: BatchItem<Task>[] };
  'task.get': Task;
  'task.getBatch': { items: Task[]; missing: string[] };
  'task.update': Task;
  'task.delete': { id: string; deleted: true; version: number };
  'task.assign': Task;
  'task.accept': Task;
  'task.reject': Task;
  'task.start': Task;
  'task.progress': Task;
  'task.requestInput': Task;
  'task.provideInput': Task;
  'task.complete': Task;
  'task.fail': Task;
  'task.retry': Task;
  'task.cancel': Task;
  'task.timeline': { items: ActorEvent[] };
  'task.listForAgent': Page<Task>;
  'task.search': Page<Task>;
  'task.stats': {
    total: number;
    byStatus: Record<string, number>;
    byPriority: Record<string, number>;
    byType: Record<string, number>;
  };
  'task.report': { format: 'json' | 'csv'; contentType: string; rows: number; content: string };
  'task.archive': { archived: number };
  'task.autoAssign': { task: Task; assigned: boolean; strategy: AssignmentStrategy | null; reason: string };
  'task.available': Page<Task>;
  'task.claim': Task;
  'task.rebalance': { examined: number; moved: { taskId: string; from: string; to: string; kind: DelegationKind; reason: string }[]; stuck: { taskId: string; from: string; reason: string }[] };
  'task.delegate': Task;
  'task.createDistributed': { task: Task; subtasks: Task[] };
  'task.submitSubtaskResult': Task;
  'task.tree': TaskTree;
  'task.cancelTree': { task: Task; cancelled: number };
}

/** Short descriptions, exported with the JSON Schema. */
export const MethodDescriptions: Record<MethodName, string> = {
  'session.authenticate': 'Authenticate the connection with an API key or JWT (for clients that cannot set headers).',
  'session.whoami': 'The principal of this connection.',
  ping: 'Liveness check; works before authentication.',
  subscribe: 'Subscribe to a topic (task:<id>, inbox:<agentId>, tenant), optionally resuming after a position.',
  unsubscribe: 'Stop a subscription.',
  'agent.register': 'Register (or re-register) an agent with capabilities and limits.',
  'agent.get': 'One agent.',
  'agent.list': 'Agents of the tenant, filtered by status or capability.',
  'agent.heartbeat': 'Mark the agent as seen now (this also keeps the leases on its tasks).',
  'agent.available': 'Online agents with spare capacity, optionally with all the given capabilities.',
  'agent.setCapabilities': 'Replace an agent\'s capabilities.',
  'agent.deregister': 'Remove an agent from the directory; it gets no new work.',
  'agent.performance': 'Success rate, mean and p90 completion time and current load over a period, from events.',
  'agent.setStatus': 'Set the agent online, busy, draining or offline.',
  'task.create': 'Create a task, optionally assigned to an agent; idempotent with idempotencyKey.',
  'task.createBatch': 'Create up to 100 tasks; each succeeds or fails on its own.',
  'task.get': 'One task.',
  'task.getBatch': 'Up to 100 tasks by id.',
  'task.update': 'Change a live task\'s fields; guard with expectedVersion.',
  'task.delete': 'Delete a task.',
  'task.assign': 'Offer a task to an agent.',
  'task.accept': 'The assigned agent accepts the task.',
  'task.reject': 'The assigned agent declines the task; it returns to pending.',
  'task.start': 'The agent starts working.',
  'task.progress': 'Report progress (percent, message).',
  'task.requestInput': 'The agent needs input to continue.',
  'task.provideInput': 'Answer an input request; the task resumes.',
  'task.complete': 'Finish the task with a result.',
  'task.fail': 'Fail the task; it is retried automatically while attempts remain.',
  'task.retry': 'Send a failed task back to pending now.',
  'task.cancel': 'Cancel a live task.',
  'task.timeline': 'The task\'s events, oldest first.',
  'task.listForAgent': 'Tasks assigned to an agent.',
  'task.search': 'Search tasks by text and filters, newest first, with cursor pagination.',
  'task.stats': 'Counts of tasks by status, priority and type.',
  'task.report': 'A report of matching tasks as JSON or CSV.',
  'task.archive': 'Archive finished tasks last changed before a time.',
  'task.autoAssign': 'Assign a pending task to an agent chosen by a strategy (the request\'s, the policy\'s or the default).',
  'task.available': 'Pending tasks an agent may pick up (it has their capabilities and did not decline them).',
  'task.claim': 'The calling agent takes a pending task it is eligible for.',
  'task.rebalance': 'Move offered but not yet accepted tasks away from draining, offline or overloaded agents (admin).',
  'task.delegate': 'Hand a task over to another agent, if the tenant\'s delegation rules allow it.',
  'task.createDistributed': 'Create a parent task with subtasks, coordination, completion and aggregation rules, all or nothing.',
  'task.submitSubtaskResult': 'The subtask\'s agent submits its result; the parent aggregates.',
  'task.tree': 'A task with its subtasks, recursively.',
  'task.cancelTree': 'Cancel a task and every unfinished task below it.',
  ...RuleMethodDescriptions,
  ...DocumentMethodDescriptions,
  ...WorkflowMethodDescriptions,
  ...RateLimitMethodDescriptions,
  ...QuotaMethodDescriptions,
  ...AuditMethodDescriptions,
  ...FieldPolicyMethodDescriptions,
  ...WorkspaceMethodDescriptions,
  ...InspectMethodDescriptions,
};

/** True if `name` is a method of the catalogue. */
export function isMethodName(name: string): name is MethodName {
  return Object.prototype.hasOwnProperty.call(MethodSchemas, name);
}

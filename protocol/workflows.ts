import { z } from 'zod';
import { Id } from './ids.js';
import type { Page } from './model.js';

/**
 * Workflows (definitions with versions), templates and executions: their wire shapes and method
 * schemas. Merged into the catalogue by `methods.ts`.
 */

/** Workflow kinds. The kind sets defaults: in a `sequential` workflow a step without `dependsOn` follows the step before it. */
export const WorkflowTypes = ['sequential', 'parallel', 'conditional', 'collaborative'] as const;
export type WorkflowType = (typeof WorkflowTypes)[number];

/** What a step's ultimate failure does to its execution. */
export const OnFailures = ['fail_workflow', 'continue', 'compensate'] as const;
export type OnFailure = (typeof OnFailures)[number];

/** How approvers' votes decide an approval step. */
export const VoteModes = ['majority', 'unanimous', 'weighted'] as const;
export type VoteMode = (typeof VoteModes)[number];

/** Execution states. `compensation_failed`: the saga could not undo everything; someone must look. */
export const ExecutionStatuses = ['running', 'paused', 'compensating', 'completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out'] as const;
export type ExecutionStatus = (typeof ExecutionStatuses)[number];

/** Step states. */
export const StepStatuses = [
  'pending',
  'queued',
  'running',
  'awaiting_approval',
  'retrying',
  'completed',
  'failed',
  'skipped',
  'compensating',
  'compensated',
  'cancelled',
  'timed_out',
] as const;
export type StepStatus = (typeof StepStatuses)[number];

const StepId = z.string().regex(/^[A-Za-z][A-Za-z0-9_-]{0,63}$/, 'must be 1-64 characters of A-Z a-z 0-9 _ - and start with a letter');
const Expression = z.string().min(1).max(4096);
const Json = z.record(z.string(), z.unknown());
const Capabilities = z.array(z.string().min(1).max(64)).max(64);

/** Retries of a step (or compensation): attempts in all, and the wait between them. */
export const RetryPolicySchema = z.strictObject({
  maxAttempts: z.number().int().min(1).max(100),
  backoff: z.enum(['linear', 'exponential']).optional(),
  initialWaitMs: z.number().int().min(0).max(86_400_000).optional(),
  maxWaitMs: z.number().int().min(0).max(86_400_000).optional(),
});
export type RetryPolicy = z.infer<typeof RetryPolicySchema>;

/**
 * What a step does: a task of type `action` for `agent`, or for an agent with the capabilities.
 * `input` values that are strings of the form `${expr}` are CEL expressions over `input` (the
 * execution's input) and `steps` (`steps.<id>.output`, `steps.<id>.status`); other values are literal.
 */
const StepActionFields = {
  action: z.string().min(1).max(128),
  title: z.string().min(1).max(512).optional(),
  agent: Id.optional(),
  requiredCapabilities: Capabilities.optional(),
  input: Json.optional(),
  timeoutSeconds: z.number().int().min(1).max(31_536_000).optional(),
  retryPolicy: RetryPolicySchema.optional(),
};

export const StepActionSchema = z.strictObject(StepActionFields);
export type StepAction = z.infer<typeof StepActionSchema>;

/** Votes that decide an approval step; it waits in `awaiting_approval` until decided or its deadline. */
export const ApprovalSchema = z.strictObject({
  approvers: z.array(Id).min(1).max(100),
  mode: z.enum(VoteModes),
  /** For `weighted`: each approver's weight (default 1). */
  weights: z.record(z.string(), z.number().min(0).max(1e6)).optional(),
  /** For `weighted`: the share of the total weight that must approve (default 0.5: more than half). */
  threshold: z.number().min(0).max(1).optional(),
  deadlineSeconds: z.number().int().min(1).max(31_536_000),
});
export type Approval = z.infer<typeof ApprovalSchema>;

export const StepSchema = z.strictObject({
  id: StepId,
  name: z.string().min(1).max(256).optional(),
  ...StepActionFields,
  /** Approval steps need no action. */
  action: z.string().min(1).max(128).optional(),
  when: Expression.optional(),
  dependsOn: z.array(StepId).max(64).optional(),
  onFailure: z.enum(OnFailures).optional(),
  compensate: StepActionSchema.optional(),
  approval: ApprovalSchema.optional(),
});
export type Step = z.infer<typeof StepSchema>;

export const WorkflowDefinitionSchema = z.strictObject({
  name: z.string().min(1).max(256),
  description: z.string().max(16384).optional(),
  type: z.enum(WorkflowTypes),
  steps: z.array(StepSchema).min(1).max(200),
  config: z
    .strictObject({
      /** The whole execution's limit. */
      timeoutSeconds: z.number().int().min(1).max(31_536_000).optional(),
      /** Lease of every step task (seconds). */
      leaseSeconds: z.number().int().min(1).max(86_400).optional(),
      /**
       * Give each execution a shared workspace (team visibility; the executor owns it, the agents
       * and approvers the definition names are editors); its id is `workspaceId` on the
       * execution and in every step task's parameters.
       */
      workspace: z.boolean().optional(),
    })
    .optional(),
  tags: z.array(z.string().min(1).max(64)).max(32).optional(),
  active: z.boolean().optional(),
});
export type WorkflowDefinition = z.infer<typeof WorkflowDefinitionSchema>;

/** A workflow as returned by workflow methods: its current definition and version. */
export interface Workflow extends WorkflowDefinition {
  id: string;
  tenantId: string;
  /** The current version (1 for a new workflow). */
  version: number;
  createdBy: string;
  createdAt: string;
  updatedAt: string;
}

/** One version of a workflow. */
export interface WorkflowVersion {
  workflowId: string;
  version: number;
  definition: WorkflowDefinition;
  changes: string;
  createdBy: string;
  createdAt: string;
}

/** A template parameter; `{{name}}` in the template's strings is replaced by its value. */
export const TemplateParameterSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,63}$/),
  description: z.string().max(1024).optional(),
  required: z.boolean().optional(),
  default: z.union([z.string(), z.number(), z.boolean()]).optional(),
});

/** A reusable workflow shape with parameters. */
export interface WorkflowTemplate {
  id: string;
  tenantId: string;
  name: string;
  category: string;
  description: string;
  parameters: z.infer<typeof TemplateParameterSchema>[];
  definition: WorkflowDefinition;
  version: number;
  createdBy: string;
  createdAt: string;
}

/** One vote on an approval step. */
export interface Vote {
  by: string;
  approve: boolean;
  comment: string;
  at: string;
}

/** A step's compensation as it runs. */
export interface CompensationRun {
  status: 'queued' | 'running' | 'retrying' | 'completed' | 'failed';
  attempt: number;
  taskId: string | null;
  error: string | null;
}

/** A step of an execution. */
export interface StepRun {
  id: string;
  status: StepStatus;
  /** Attempts started so far (1 for the first). */
  attempt: number;
  taskId: string | null;
  input: unknown;
  output: unknown;
  error: string | null;
  agent: string | null;
  startedAt: string | null;
  completedAt: string | null;
  /** When a retry or an approval deadline is due. */
  dueAt: string | null;
  votes: Vote[];
  compensation: CompensationRun | null;
}

/** One line of an execution's trace. */
export interface TraceEntry {
  at: string;
  /** `execution.started`, `step.started`, `step.completed`, `compensation.failed`, ... */
  event: string;
  stepId: string | null;
  attempt: number | null;
  detail: string;
}

/** A workflow execution. */
export interface Execution {
  id: string;
  tenantId: string;
  workflowId: string;
  workflowVersion: number;
  workflowName: string;
  status: ExecutionStatus;
  /** The execution's shared workspace, when its workflow asks for one (`config.workspace`). */
  workspaceId: string | null;
  input: Record<string, unknown>;
  output: Record<string, unknown> | null;
  error: string | null;
  steps: StepRun[];
  /** Ids of steps in the order they completed (compensation runs in reverse). */
  completionOrder: string[];
  trace: TraceEntry[];
  createdBy: string;
  createdAt: string;
  updatedAt: string;
  completedAt: string | null;
  cancelReason: string | null;
  version: number;
}

/** Runs, success and durations of a workflow's executions. */
export interface WorkflowMetrics {
  workflowId: string;
  from: string;
  to: string;
  runs: number;
  byStatus: Record<string, number>;
  successRate: number | null;
  durationMs: { p50: number | null; p90: number | null; p99: number | null; mean: number | null };
  /** Steps by mean duration, slowest first. */
  slowestSteps: { stepId: string; runs: number; meanMs: number; p90Ms: number; failures: number }[];
}

/** Observations over a period, in sentences, with the metrics they come from. */
export interface WorkflowInsights {
  workflowId: string;
  metrics: WorkflowMetrics;
  insights: { kind: 'failure_hotspot' | 'slow_step' | 'retries' | 'approval_wait' | 'trend'; stepId: string | null; message: string }[];
}

const wfRef = { workflowId: Id };
const exRef = { executionId: Id };
const expected = { expectedVersion: z.number().int().min(0).optional() };
const Limit = z.number().int().min(1).max(1000).optional();
const Cursor = z.string().max(512).optional();
const Period = z.number().int().min(1).max(31_536_000).optional();

/** Params schema of the workflow, template and execution methods. */
export const WorkflowMethodSchemas = {
  'workflow.create': z.strictObject({ ...WorkflowDefinitionSchema.shape, idempotencyKey: z.string().min(1).max(256).optional() }),
  'workflow.get': z.strictObject({ ...wfRef, version: z.number().int().min(1).optional() }),
  'workflow.update': z.strictObject({
    ...wfRef,
    ...expected,
    definition: WorkflowDefinitionSchema,
    changes: z.string().max(4096).optional(),
  }),
  'workflow.delete': z.strictObject({ ...wfRef, ...expected }),
  'workflow.list': z.strictObject({
    type: z.enum(WorkflowTypes).optional(),
    tag: z.string().max(64).optional(),
    active: z.boolean().optional(),
    query: z.string().max(256).optional(),
    limit: Limit,
    cursor: Cursor,
  }),
  'workflow.createVersion': z.strictObject({
    ...wfRef,
    ...expected,
    definition: WorkflowDefinitionSchema.optional(),
    changes: z.string().min(1).max(4096),
  }),
  'workflow.getVersion': z.strictObject({ ...wfRef, version: z.number().int().min(1) }),
  'workflow.listVersions': z.strictObject(wfRef),
  'workflow.execute': z.strictObject({
    ...wfRef,
    version: z.number().int().min(1).optional(),
    input: Json.optional(),
    idempotencyKey: z.string().min(1).max(256).optional(),
  }),
  'workflow.metrics': z.strictObject({ ...wfRef, periodSeconds: Period }),
  'workflow.insights': z.strictObject({ ...wfRef, periodSeconds: Period }),
  'template.create': z.strictObject({
    name: z.string().min(1).max(256),
    category: z.string().min(1).max(64),
    description: z.string().max(16384).optional(),
    parameters: z.array(TemplateParameterSchema).max(64).optional(),
    definition: WorkflowDefinitionSchema,
  }),
  'template.get': z.strictObject({ templateId: Id }),
  'template.list': z.strictObject({ category: z.string().max(64).optional(), limit: Limit, cursor: Cursor }),
  'workflow.createFromTemplate': z.strictObject({
    templateId: Id,
    parameters: z.record(z.string(), z.union([z.string(), z.number(), z.boolean()])).optional(),
    name: z.string().min(1).max(256).optional(),
  }),
  'execution.get': z.strictObject(exRef),
  'execution.list': z.strictObject({
    workflowId: Id.optional(),
    status: z.array(z.enum(ExecutionStatuses)).max(8).optional(),
    createdAfter: z.iso.datetime({ offset: true }).optional(),
    createdBefore: z.iso.datetime({ offset: true }).optional(),
    limit: Limit,
    cursor: Cursor,
  }),
  'execution.pause': z.strictObject({ ...exRef, ...expected }),
  'execution.resume': z.strictObject({ ...exRef, ...expected }),
  'execution.cancel': z.strictObject({ ...exRef, ...expected, reason: z.string().max(1024).optional() }),
  'execution.retry': z.strictObject({ ...exRef, ...expected, fromStep: StepId }),
  'execution.completeStep': z.strictObject({ ...exRef, stepId: StepId, output: z.unknown().optional() }),
  'execution.failStep': z.strictObject({ ...exRef, stepId: StepId, error: z.string().min(1).max(16384) }),
  'execution.approve': z.strictObject({ ...exRef, stepId: StepId, approve: z.boolean(), comment: z.string().max(4096).optional() }),
  'execution.nextSteps': z.strictObject(exRef),
  'execution.stepStatus': z.strictObject({ ...exRef, stepId: StepId }),
  'execution.trace': z.strictObject(exRef),
} as const;

/** Result types of the workflow, template and execution methods. */
export interface WorkflowMethodResults {
  'workflow.create': Workflow;
  'workflow.get': Workflow;
  'workflow.update': Workflow;
  'workflow.delete': { id: string; deleted: true; version: number };
  'workflow.list': Page<Workflow>;
  'workflow.createVersion': Workflow;
  'workflow.getVersion': WorkflowVersion;
  'workflow.listVersions': { items: Omit<WorkflowVersion, 'definition'>[] };
  'workflow.execute': Execution;
  'workflow.metrics': WorkflowMetrics;
  'workflow.insights': WorkflowInsights;
  'template.create': WorkflowTemplate;
  'template.get': WorkflowTemplate;
  'template.list': Page<WorkflowTemplate>;
  'workflow.createFromTemplate': Workflow;
  'execution.get': Execution;
  'execution.list': Page<Execution>;
  'execution.pause': Execution;
  'execution.resume': Execution;
  'execution.cancel': Execution;
  'execution.retry': Execution;
  'execution.completeStep': Execution;
  'execution.failStep': Execution;
  'execution.approve': Execution;
  'execution.nextSteps': { items: { stepId: string; status: StepStatus; waitingFor: string[] }[] };
  'execution.stepStatus': StepRun;
  'execution.trace': { items: TraceEntry[] };
}

/** Descriptions of the workflow, template and execution methods. */
export const WorkflowMethodDescriptions: Record<keyof typeof WorkflowMethodSchemas, string> = {
  'workflow.create': 'Define a workflow (steps, dependencies, conditions, retries, compensations, approvals); refused with a precise error if broken.',
  'workflow.get': 'A workflow, at its current or a given version.',
  'workflow.update': 'Replace a workflow\'s definition; this makes a new version (running executions keep theirs).',
  'workflow.delete': 'Delete a workflow; running executions finish.',
  'workflow.list': 'Workflows of the tenant, filtered by type, tag, active flag or text.',
  'workflow.createVersion': 'Make a new version, from a new definition or the current one, with a note of the changes.',
  'workflow.getVersion': 'One version of a workflow.',
  'workflow.listVersions': 'Every version of a workflow, oldest first.',
  'workflow.execute': 'Start an execution with an input; returns at once.',
  'workflow.metrics': 'Runs, success rate, duration percentiles and slowest steps over a period.',
  'workflow.insights': 'Failure hot spots, slow steps, retries and approval waits over a period, in sentences.',
  'template.create': 'A workflow template with parameters ({{name}} placeholders).',
  'template.get': 'One template.',
  'template.list': 'Templates, by category.',
  'workflow.createFromTemplate': 'Create a workflow from a template and parameter values.',
  'execution.get': 'One execution with its steps.',
  'execution.list': 'Executions, filtered by workflow, status and time, newest first.',
  'execution.pause': 'No new steps start; running ones finish.',
  'execution.resume': 'Continue a paused execution.',
  'execution.cancel': 'Cancel an execution and the tasks of its running steps.',
  'execution.retry': 'Run a failed or cancelled execution again from a step (that step, the steps after it, and any that did not complete).',
  'execution.completeStep': 'Complete a running or waiting step by hand with an output.',
  'execution.failStep': 'Fail a step by hand (no retries).',
  'execution.approve': 'Vote on a step awaiting approval.',
  'execution.nextSteps': 'Steps that run next and what they wait for.',
  'execution.stepStatus': 'One step of an execution.',
  'execution.trace': 'Everything that happened in an execution, in order.',
};

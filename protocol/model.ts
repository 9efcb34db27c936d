/**
 * Resource shapes as they travel on the wire, and the domain vocabulary shared by the machines,
 * the server and clients.
 */

/** Task priorities, lowest first. */
export const TaskPriorities = ['low', 'normal', 'high', 'critical'] as const;
export type TaskPriority = (typeof TaskPriorities)[number];

/** Every state a task can rest in. `draft` and `deleted` are never visible to clients. */
export const TaskStatuses = [
  'pending',
  'assigned',
  'accepted',
  'in_progress',
  'input_required',
  'completed',
  'failed',
  'cancelled',
  'timed_out',
] as const;
export type TaskStatus = (typeof TaskStatuses)[number];

/** States a task never leaves (except `failed`, which a retry reopens). */
export const TerminalTaskStatuses: readonly TaskStatus[] = ['completed', 'failed', 'cancelled', 'timed_out'];

/**
 * Task states in the A2A protocol's vocabulary, so agents that speak A2A feel at home.
 * @see https://a2a-protocol.org — TaskState
 */
export const A2AStates: Record<TaskStatus, string> = {
  pending: 'submitted',
  assigned: 'submitted',
  accepted: 'submitted',
  in_progress: 'working',
  input_required: 'input-required',
  completed: 'completed',
  failed: 'failed',
  cancelled: 'canceled',
  timed_out: 'failed',
};

/** How a task changed hands. */
export type DelegationKind = 'manual' | 'automatic' | 'failover' | 'load_balance';

/** One link of a task's chain of custody. */
export interface Delegation {
  from: string | null;
  to: string;
  reason: string;
  kind: DelegationKind;
  /** ISO 8601. */
  at: string;
}

/** How the subtasks of a distributed task are started. */
export const Coordinations = ['parallel', 'sequential', 'pipeline', 'map_reduce'] as const;
export type Coordination = (typeof Coordinations)[number];

/** How many subtasks of a distributed task must succeed. */
export const CompletionModes = ['all', 'any', 'majority', 'threshold', 'best_of'] as const;
export type CompletionMode = (typeof CompletionModes)[number];

/** How successful subtask results become the parent's result. */
export const Aggregations = ['combine_results', 'first_complete', 'majority_vote'] as const;
export type Aggregation = (typeof Aggregations)[number];

/** What became of a subtask, as far as its parent knows (`waiting`: not started yet). */
export type SlotStatus = 'waiting' | 'active' | 'completed' | 'failed' | 'cancelled' | 'timed_out';

/** One subtask of a distributed task. */
export interface SubtaskSlot {
  id: string;
  status: SlotStatus;
  result: unknown;
  error: string | null;
  agent: string | null;
  /** Order in which subtasks settled (1 = first), null while unsettled. */
  settledOrder: number | null;
}

/** The coordination state of a distributed (parent) task. */
export interface Distribution {
  coordination: Coordination;
  completion: { mode: CompletionMode; threshold: number | null };
  aggregation: Aggregation;
  subtasks: SubtaskSlot[];
}

/** The workflow execution step a task runs (`role`: the step itself or its compensation). */
export interface TaskOrigin {
  executionId: string;
  stepId: string;
  attempt: number;
  role: 'step' | 'compensation';
}

/** What happens when an agent stops renewing the lease on a task it holds. */
export type LeaseExpiry = 'reoffer' | 'fail';

/** A task as returned by every task method. Times are ISO 8601 strings. */
export interface Task {
  id: string;
  tenantId: string;
  type: string;
  title: string;
  description: string;
  priority: TaskPriority;
  parameters: Record<string, unknown>;
  requiredCapabilities: string[];
  createdBy: string;
  assignedTo: string | null;
  parentTaskId: string | null;
  /** Set on tasks that run a workflow step. */
  origin: TaskOrigin | null;
  status: TaskStatus;
  /** The A2A name of `status`. */
  a2aState: string;
  progress: { percent: number; message: string } | null;
  inputRequest: { prompt: string; schema: unknown } | null;
  /** Answers given to input requests, oldest first. */
  inputs: { prompt: string; input: unknown; by: string; at: string }[];
  result: unknown;
  error: string | null;
  maxRetries: number;
  retryCount: number;
  /** Base back-off before an automatic retry; doubles with each attempt. */
  retryBackoffMs: number;
  /** When a retry is scheduled, the time it fires. */
  retryAt: string | null;
  timeoutSeconds: number | null;
  deadline: string | null;
  delegations: Delegation[];
  /** Declined offers; `round` counts assignment rounds, and agents that declined this round are not offered the task again in it. */
  rejections: { by: string; reason: string; at: string; round: number }[];
  /** Assigned by the server (policy strategy) whenever the task is pending. */
  autoAssign: boolean;
  /** The strategy auto-assignment uses; null: the policy's or the tenant's default. */
  assignmentStrategy: AssignmentStrategy | null;
  /** Incremented each time the task waits for an agent; rejections count per round. */
  assignmentRound: number;
  /** Why an auto-assigned task has no agent yet, and when it is tried again. */
  waitingForAgent: { reason: string; since: string; retryAt: string } | null;
  /** An offer not accepted within this many seconds goes to the next agent. */
  offerTimeoutSeconds: number | null;
  offerExpiresAt: string | null;
  /** While accepted or running, the agent holds a lease it renews by staying connected, heartbeats or progress. */
  leaseSeconds: number | null;
  leaseExpiresAt: string | null;
  onLeaseExpired: LeaseExpiry;
  /** The agent that last gave the task up, and why. */
  releasedBy: { agentId: string; why: 'rejected' | 'offer_expired' | 'lease_expired' } | null;
  /** Set on the parent of a distributed task. */
  distribution: Distribution | null;
  archived: boolean;
  version: number;
  createdAt: string;
  updatedAt: string;
  assignedAt: string | null;
  acceptedAt: string | null;
  startedAt: string | null;
  completedAt: string | null;
}

/** How an agent is chosen for a task. */
export const AssignmentStrategies = ['round_robin', 'least_loaded', 'capability_match', 'performance_based', 'cost_optimized'] as const;
export type AssignmentStrategy = (typeof AssignmentStrategies)[number];

/** Agent availability. */
export const AgentStatuses = ['offline', 'online', 'busy', 'draining'] as const;
export type AgentStatus = (typeof AgentStatuses)[number];

/** An agent as returned by agent methods. */
export interface Agent {
  id: string;
  tenantId: string;
  name: string;
  kind: string;
  capabilities: string[];
  maxConcurrentTasks: number;
  costPerTask: number;
  metadata: Record<string, unknown>;
  status: AgentStatus;
  /** Tasks the agent holds now (offered, accepted, running or waiting for input); absent where not known. */
  load?: number;
  /** How many connections this agent has open now. */
  connections: number;
  lastSeenAt: string | null;
  registeredAt: string;
  version: number;
}

/** An agent's record over a period, computed from the events of its tasks. */
export interface AgentPerformance {
  agentId: string;
  from: string;
  to: string;
  completed: number;
  /** Failed attempts, including lost leases and attempt timeouts. */
  failed: number;
  successRate: number | null;
  meanCompletionMs: number | null;
  p90CompletionMs: number | null;
  currentLoad: number;
  maxConcurrentTasks: number;
  /** How many events were read; `truncated` when the scan stopped at its limit. */
  eventsScanned: number;
  truncated: boolean;
}

/** A task with its subtasks. Subtasks that have not started yet appear with status `waiting`. */
export interface TaskTree {
  task: Task | { id: string; status: 'waiting'; parentTaskId: string };
  children: TaskTree[];
}

/** Tenant roles. */
export const Roles = ['admin', 'agent', 'observer'] as const;
export type Role = (typeof Roles)[number];

/** Who a connection is. */
export interface Principal {
  tenantId: string;
  principalId: string;
  roles: Role[];
}

/** One event of an actor's stream, as clients see it (timelines, subscriptions). */
export interface ActorEvent {
  id: string;
  /** Position in the tenant's feed; resume subscriptions from it. */
  position: number;
  kind: string;
  actorId: string;
  version: number;
  type: string;
  /** ISO 8601. */
  at: string;
  principal: string;
  /** The actor's status after this event. */
  status: string | null;
  data: Record<string, unknown>;
  correlationId: string | null;
}

/** A page of a list method. */
export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

import type { SnapshotFrom } from 'xstate';
import { DUPLICATE, type ActorHost } from '../../actors/ActorHost.js';
import type { TimerRecord } from '../../actors/Store.js';
import type { taskMachine } from '../../machines/taskMachine.js';
import { isProtocolError, ProtocolError } from '../../protocol/errors.js';
import type { AssignmentStrategy, DelegationKind, Task, TaskStatus } from '../../protocol/model.js';
import { taskFromTurn, taskResource } from '../kinds/taskKind.js';
import { leafState } from '../kinds/stateName.js';
import type { Logger } from '../logger.js';
import type { RuleEngine } from '../policy/RuleEngine.js';
import type { SharedReservations } from '../guard/SharedReservations.js';
import type { Presence } from '../server/Presence.js';
import type { AgentDirectory, TenantAgents } from './AgentDirectory.js';
import { choose, type Candidate } from './strategies.js';

type TaskSnapshot = SnapshotFrom<typeof taskMachine>;

/** Where a choice came from, recorded with the assignment. */
export type Decision =
  | { ok: true; agentId: string; strategy: AssignmentStrategy; reason: string; kind: DelegationKind }
  | { ok: false; reason: string };

/** The longest an auto-assigned task waits before it asks again (capacity changes also wake it). */
const MAX_WAIT_MS = 60_000;
const NO_STATS = { successRate: null, meanCompletionMs: null, samples: 0 };

/** How many waiting tasks one capacity change tries to place. */
const KICK_BATCH = 64;

/** Options of {@link Assigner}. */
export interface AssignerOptions {
  host: ActorHost;
  directory: AgentDirectory;
  rules: RuleEngine;
  presence: Presence;
  now: () => number;
  log: Logger;
  /** The strategy when neither the request, the task nor a policy names one. */
  defaultStrategy?: AssignmentStrategy;
  /** Set in a cluster: agents' slots held by every node's choices in flight. */
  slots?: SharedReservations;
}

/**
 * Chooses agents for tasks and looks after the timers that need a decision rather than a plain
 * delivery: `assign` (an auto-assigned task is pending) and `lease` (an agent's hold on a task
 * is up for renewal). Agents are eligible when they are online, below their concurrency limit,
 * have every required capability, did not decline the task in this round, and pass the tenant's
 * `task.assignment` rules; a strategy picks one of them.
 */
export class Assigner {
  #o: AssignerOptions;
  #startedAt: number;
  #kicking = new Set<string>();

  constructor(opts: AssignerOptions) {
    this.#o = opts;
    this.#startedAt = opts.now();
  }

  /** The strategy for a task: the request's, the task's, its type's policy, the tenant's, the server's. */
  async strategyFor(tenant: string, task: Task, requested?: AssignmentStrategy): Promise<AssignmentStrategy> {
    if (requested) return requested;
    if (task.assignmentStrategy) return task.assignmentStrategy;
    const policy = await this.#o.rules.policy(tenant, task.type);
    return policy.assignment?.strategy ?? this.#o.defaultStrategy ?? 'least_loaded';
  }

  /** Chooses an agent for `task`, or says why none is eligible. Reserves the agent's capacity on success. */
  async decide(tenant: string, task: Task, requested?: AssignmentStrategy, kind?: DelegationKind): Promise<Decision> {
    const dir = await this.#o.directory.tenant(tenant);
    const strategy = await this.strategyFor(tenant, task, requested);
    const rule = await this.#o.rules.eligibility(tenant, { task });
    const declined = new Set(task.rejections.filter((r) => r.round === task.assignmentRound).map((r) => r.by));
    const required = task.requiredCapabilities;
    const counts = { offline: 0, unavailable: 0, full: 0, capability: 0, declined: 0, rule: 0 };
    const refusals: string[] = [];
    const cands: Candidate[] = [];
    // Hot with a thousand agents: records are passed as they are, not copied, and statistics
    // are only worked out for the strategy that weighs them.
    const needStats = strategy === 'performance_based';
    for (const e of dir.agents.values()) {
      const a = e.agent;
      if (a.status === 'offline') counts.offline++;
      else if (a.status !== 'online') counts.unavailable++;
      else if (e.load >= a.maxConcurrentTasks) counts.full++;
      else if (!required.every((c) => a.capabilities.includes(c))) counts.capability++;
      else if (declined.has(a.id)) counts.declined++;
      else {
        const verdict = rule ? rule(dir.resource(e) as unknown as Record<string, unknown>) : null;
        if (verdict && !verdict.allowed) {
          counts.rule++;
          if (refusals.length < 3) refusals.push(`${a.id}: ${verdict.rule.name} (${verdict.reason})`);
        } else cands.push({ agent: a, load: e.load, stats: needStats ? dir.stats(e) : NO_STATS });
      }
    }
    let choice = cands.length > 0 ? choose(strategy, required, cands, dir.lastRoundRobin) : null;
    // In a cluster another node may be offering the same agent work right now: the agent's
    // shared slots decide, and an agent found full there is passed over like one full here.
    while (choice && this.#o.slots && !(await this.#o.slots.holdSlot(tenant, choice.agent.id, task.id, choice.agent.maxConcurrentTasks, dir.heldBy(choice.agent.id)))) {
      counts.full++;
      const full = choice.agent.id;
      cands.splice(cands.findIndex((c) => c.agent.id === full), 1);
      choice = cands.length > 0 ? choose(strategy, required, cands, dir.lastRoundRobin) : null;
    }
    if (!choice) {
      const parts = [
        `${dir.agents.size} registered`,
        counts.offline && `${counts.offline} offline`,
        counts.unavailable && `${counts.unavailable} busy or draining`,
        counts.full && `${counts.full} at their concurrency limit`,
        counts.capability && `${counts.capability} lack ${required.join(', ')}`,
        counts.declined && `${counts.declined} declined it this round`,
        counts.rule && `${counts.rule} refused by assignment rules${refusals.length ? ` (${refusals.join('; ')})` : ''}`,
      ].filter(Boolean);
      return { ok: false, reason: `No eligible agent: ${parts.join(', ')}.` };
    }
    if (strategy === 'round_robin') dir.lastRoundRobin = choice.agent.id;
    dir.reserve(task.id, choice.agent.id);
    const failover = task.releasedBy?.why === 'lease_expired' && task.assignedTo === null;
    return { ok: true, agentId: choice.agent.id, strategy, reason: choice.reason, kind: kind ?? (failover ? 'failover' : 'automatic') };
  }

  /**
   * Assigns a pending task now. With `fired`, the `assign` timer that asked is consumed in the same
   * commit, and a task nobody can take records why and when it asks again.
   */
  async assign(
    tenant: string,
    taskId: string,
    opts: { strategy?: AssignmentStrategy; fired?: TimerRecord; principal?: string; correlationId?: string; kind?: DelegationKind } = {},
  ): Promise<{ task: Task; decision: Decision }> {
    const address = { tenant, kind: 'task', id: taskId };
    for (let attempt = 0; ; attempt++) {
      const { snapshot, version } = await this.#o.host.read<typeof taskMachine>(address);
      const status = leafState(snapshot.value);
      const task = taskResource(snapshot.context.task, status as TaskStatus, version);
      if (status !== 'pending') {
        throw new ProtocolError('ILLEGAL_TRANSITION', `Task ${taskId} is ${status}; only pending tasks can be assigned automatically.`, {
          state: status,
        });
      }
      const decision = await this.decide(tenant, task, opts.strategy, opts.kind);
      const turn = {
        principal: opts.principal ?? 'system',
        correlationId: opts.correlationId,
        expectedVersion: version,
        firedTimer: opts.fired ? { name: opts.fired.name, fireAt: opts.fired.fireAt } : undefined,
      };
      let event: { type: string } & Record<string, unknown>;
      if (decision.ok) {
        event = { type: 'task.assign', agentId: decision.agentId, reason: decision.reason, kind: decision.kind, strategy: decision.strategy };
      } else if (opts.fired) {
        const wait = Math.min(MAX_WAIT_MS, 1000 * 2 ** Math.min(task.assignmentRound, 6));
        event = { type: 'task.awaitAgent', reason: decision.reason, retryAt: this.#o.now() + wait };
      } else {
        return { task, decision };
      }
      try {
        const r = await this.#o.host.send<typeof taskMachine>(address, event, turn);
        if (r === DUPLICATE) throw new ProtocolError('INTERNAL', 'Unexpected duplicate assignment.');
        return { task: taskFromTurn(r), decision };
      } catch (e) {
        if (decision.ok) await this.undo(tenant, taskId, decision.agentId);
        // Changed between the read and the write: decide again on the new state.
        if (isProtocolError(e, 'VERSION_MISMATCH') && attempt < 3) continue;
        throw e;
      }
    }
  }

  /** Gives back the capacity a {@link Assigner.decide} reserved, when its assignment is not written. */
  async undo(tenant: string, taskId: string, agentId: string): Promise<void> {
    (await this.#o.directory.tenant(tenant)).unreserve(taskId, agentId);
    this.#o.slots?.releaseSlot(tenant, agentId, taskId);
  }

  /** Delivers a due timer, deciding for `assign` and `lease` timers of tasks. */
  async deliverTimer(t: TimerRecord): Promise<void> {
    if (t.kind === 'task' && t.name === 'assign') return this.#assignTimer(t);
    if (t.kind === 'task' && t.name === 'lease') return this.#leaseTimer(t);
    return this.#o.host.fireTimer(t);
  }

  /** Reads a task and tells whether the timer is the one it expects. */
  async #expected(t: TimerRecord): Promise<{ snapshot: TaskSnapshot; version: number } | null> {
    const r = await this.#o.host.read<typeof taskMachine>({ tenant: t.tenant, kind: 'task', id: t.actorId });
    return r.snapshot.context.timers[t.name] === t.fireAt ? r : null;
  }

  async #assignTimer(t: TimerRecord): Promise<void> {
    const current = await this.#expected(t);
    if (!current || leafState(current.snapshot.value) !== 'pending') return this.#o.host.fireTimer(t);
    try {
      await this.assign(t.tenant, t.actorId, { fired: t });
    } catch (e) {
      // The task moved on (assigned by hand, cancelled): the timer is no longer wanted.
      if (isProtocolError(e, 'ILLEGAL_TRANSITION')) return this.#o.host.fireTimer(t);
      throw e;
    }
  }

  /**
   * A lease is up: renew it while its agent is connected, or was seen within one lease period
   * (counting from this server's start, so a restart gives agents time to reconnect); otherwise
   * deliver the timer, and the task is re-offered or failed by its policy.
   */
  async #leaseTimer(t: TimerRecord): Promise<void> {
    const current = await this.#expected(t);
    const task = current?.snapshot.context.task;
    if (!current || !task || !task.assignedTo || task.leaseSeconds === null) return this.#o.host.fireTimer(t);
    const now = this.#o.now();
    const leaseMs = task.leaseSeconds * 1000;
    let until: number | null = null;
    const dir = await this.#o.directory.tenant(t.tenant);
    const agent = dir.agents.get(task.assignedTo)?.agent;
    // Connected here, or (in a cluster) through another node as its agent actor counts.
    if (this.#o.presence.count(t.tenant, task.assignedTo) > 0 || (agent?.connections ?? 0) > 0) until = now + leaseMs;
    else {
      const seen = agent?.lastSeenAt;
      const last = Math.max(seen ? Date.parse(seen) : 0, this.#startedAt);
      if (last + leaseMs > now) until = last + leaseMs;
    }
    if (until === null) return this.#o.host.fireTimer(t);
    try {
      await this.#o.host.send(
        { tenant: t.tenant, kind: 'task', id: t.actorId },
        { type: 'task.renewLease', until },
        { principal: 'system', expectedVersion: current.version, firedTimer: { name: t.name, fireAt: t.fireAt } },
      );
    } catch (e) {
      // The task finished meanwhile: the timer is no longer wanted. Any other failure (the task
      // changed under us) leaves the timer for the timer service to try again shortly.
      if (isProtocolError(e, 'ILLEGAL_TRANSITION')) return this.#o.host.fireTimer(t);
      throw e;
    }
  }

  /**
   * Capacity appeared in a tenant (an agent came online or gave a task up): place tasks that are
   * waiting for an agent now instead of at their next retry. One pass at a time per tenant.
   */
  kick(tenant: string): void {
    if (this.#kicking.has(tenant)) return;
    this.#kicking.add(tenant);
    setImmediate(() => {
      void this.#kick(tenant)
        .catch((e: unknown) => this.#o.log.warn({ err: e, tenant }, 'placing waiting tasks failed'))
        .finally(() => this.#kicking.delete(tenant));
    });
  }

  async #kick(tenant: string): Promise<void> {
    const dir: TenantAgents = await this.#o.directory.tenant(tenant);
    for (const id of [...dir.waiting].slice(0, KICK_BATCH)) {
      try {
        const { decision } = await this.assign(tenant, id);
        if (!decision.ok) break;
      } catch (e) {
        if (!isProtocolError(e, 'ILLEGAL_TRANSITION')) throw e;
      }
    }
  }
}

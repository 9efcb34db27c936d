import type { ActorHost } from '../../actors/ActorHost.js';
import type { Store, ViewQuery, ViewRecord } from '../../actors/Store.js';
import type { Agent, AgentStatus, Task } from '../../protocol/model.js';

/** Task statuses in which an agent holds a task (it counts toward the agent's load). */
export const HeldStatuses = ['assigned', 'accepted', 'in_progress', 'input_required'] as const;
const held = new Set<string>(HeldStatuses);

/** Outcomes kept per agent for performance-based assignment. */
const PERF_WINDOW = 200;

/** An agent's recent record, as the directory saw it since the process started. */
export interface AgentStats {
  /** Completed attempts over completed + failed (failures include lost leases and timeouts); null without data. */
  successRate: number | null;
  /** Mean milliseconds from start to completion of completed attempts; null without data. */
  meanCompletionMs: number | null;
  samples: number;
}

interface Outcome {
  ok: boolean;
  ms: number | null;
}

/** One agent as the directory knows it. */
export interface AgentEntry {
  agent: Agent;
  /** Tasks the agent holds now (assigned, accepted, in progress or waiting for input). */
  load: number;
  outcomes: Outcome[];
}

interface HeldTask {
  agent: string;
  status: string;
  startedAt: string | null;
}

/** The directory's view of one tenant. */
export class TenantAgents {
  readonly agents = new Map<string, AgentEntry>();
  /** Live tasks held by an agent: who holds them. */
  readonly holders = new Map<string, HeldTask>();
  /** The same, by agent: the ids of the tasks each agent holds. */
  readonly #byAgent = new Map<string, Set<string>>();
  /** Auto-assigned tasks that are pending and have already waited for an agent. */
  readonly waiting = new Set<string>();
  /** Versions already applied per actor, so a late initial load cannot undo a newer commit. */
  readonly seen = new Map<string, number>();
  /** Round-robin position: the id of the agent chosen last. */
  lastRoundRobin: string | null = null;
  loaded: Promise<void> | null = null;

  /** The status the agent has now: offline without a connection, busy at capacity. */
  status(e: AgentEntry): AgentStatus {
    const s = e.agent.status;
    if (s === 'online' && e.load >= e.agent.maxConcurrentTasks) return 'busy';
    return s;
  }

  /** The agent as clients see it: its record with its load and status now. */
  resource(e: AgentEntry): Agent & { load: number } {
    return { ...e.agent, status: this.status(e), load: e.load };
  }

  /** Performance over the outcomes the directory has seen. */
  stats(e: AgentEntry): AgentStats {
    const n = e.outcomes.length;
    if (n === 0) return { successRate: null, meanCompletionMs: null, samples: 0 };
    const ok = e.outcomes.filter((o) => o.ok);
    const times = ok.map((o) => o.ms).filter((m): m is number => m !== null);
    return {
      successRate: ok.length / n,
      meanCompletionMs: times.length ? times.reduce((a, b) => a + b, 0) / times.length : null,
      samples: n,
    };
  }

  /** Counts a task for `agent` before its assignment is committed, so concurrent choices spread out. */
  reserve(taskId: string, agent: string): void {
    this.#hold(taskId, { agent, status: 'assigned', startedAt: null });
  }

  /** Undoes {@link reserve} after the assignment was refused. */
  unreserve(taskId: string, agent: string): void {
    if (this.holders.get(taskId)?.agent === agent) this.#release(taskId);
  }

  /** The ids of the tasks an agent holds, as this node knows them. */
  heldBy(agent: string): ReadonlySet<string> {
    return this.#byAgent.get(agent) ?? new Set();
  }

  #hold(taskId: string, h: HeldTask): void {
    const prev = this.holders.get(taskId);
    if (prev && prev.agent !== h.agent) this.#release(taskId);
    if (!this.holders.has(taskId)) {
      const e = this.agents.get(h.agent);
      if (e) e.load++;
      let ids = this.#byAgent.get(h.agent);
      if (!ids) this.#byAgent.set(h.agent, (ids = new Set()));
      ids.add(taskId);
    }
    this.holders.set(taskId, h);
  }

  #release(taskId: string): HeldTask | undefined {
    const prev = this.holders.get(taskId);
    if (!prev) return undefined;
    this.holders.delete(taskId);
    const ids = this.#byAgent.get(prev.agent);
    ids?.delete(taskId);
    if (ids?.size === 0) this.#byAgent.delete(prev.agent);
    const e = this.agents.get(prev.agent);
    if (e) e.load = Math.max(0, e.load - 1);
    return prev;
  }

  #record(agent: string, o: Outcome): void {
    const e = this.agents.get(agent);
    if (!e) return;
    e.outcomes.push(o);
    if (e.outcomes.length > PERF_WINDOW) e.outcomes.shift();
  }

  /** Applies an agent's read model row (null: deregistered). Returns true if it may now take work. */
  applyAgent(id: string, view: ViewRecord | null): boolean {
    if (!view) {
      this.agents.delete(id);
      return false;
    }
    const agent = view.doc as unknown as Agent;
    const e = this.agents.get(id);
    if (e) e.agent = agent;
    else this.agents.set(id, { agent, load: [...this.holders.values()].filter((h) => h.agent === id).length, outcomes: [] });
    return agent.status === 'online';
  }

  /**
   * Applies a task's read model row (null: deleted). Returns true when capacity was freed (an
   * agent gave a task up), so waiting tasks may be tried again.
   */
  applyTask(id: string, view: ViewRecord | null): boolean {
    const task = view ? (view.doc as unknown as Task) : null;
    const status = view?.status ?? 'deleted';
    if (task && status === 'pending' && task.autoAssign && task.waitingForAgent) this.waiting.add(id);
    else this.waiting.delete(id);

    const prev = this.holders.get(id);
    if (task && held.has(status) && task.assignedTo) {
      this.#hold(id, { agent: task.assignedTo, status, startedAt: task.startedAt });
      return prev !== undefined && prev.agent !== task.assignedTo;
    }
    const gone = this.#release(id);
    if (!gone || !task) return gone !== undefined;
    // The attempt ended: count it for the agent that held it.
    const since = gone.startedAt ? Date.parse(gone.startedAt) : null;
    const end = task.completedAt ? Date.parse(task.completedAt) : view!.updatedAt;
    if (status === 'completed') this.#record(gone.agent, { ok: true, ms: since === null ? null : end - since });
    else if (status === 'failed' || status === 'timed_out') this.#record(gone.agent, { ok: false, ms: null });
    else if (status === 'pending' && task.releasedBy?.why === 'lease_expired') this.#record(gone.agent, { ok: false, ms: null });
    return true;
  }
}

/**
 * Every tenant's agents with their current load, kept in memory and in step with commits, so that
 * choosing among a thousand agents takes microseconds instead of a query per agent. A tenant is
 * loaded from the read model on first use; from then on each committed agent or task row updates
 * it. Capacity changes are reported through `onCapacity`.
 */
export class AgentDirectory {
  #store: Store;
  #tenants = new Map<string, TenantAgents>();
  #onCapacity: (tenant: string) => void;
  #onRelease: ((tenant: string, agent: string, taskId: string) => void) | undefined;

  /**
   * `onCapacity` hears of capacity freed by this node's commits; `onRelease` of each task an
   * agent stopped holding through a commit of this node.
   */
  constructor(opts: { store: Store; onCapacity?: (tenant: string) => void; onRelease?: (tenant: string, agent: string, taskId: string) => void }) {
    this.#store = opts.store;
    this.#onCapacity = opts.onCapacity ?? (() => {});
    this.#onRelease = opts.onRelease;
  }

  /** Follows the host's commits. */
  attach(host: ActorHost): void {
    host.onCommit((events, _topics, view, remote) => {
      const e = events[events.length - 1];
      if (!e || view === undefined || (e.kind !== 'agent' && e.kind !== 'task')) return;
      const t = this.#tenants.get(e.tenant);
      if (!t) return;
      if ((t.seen.get(`${e.kind}/${e.actorId}`) ?? 0) >= e.version) return;
      t.seen.set(`${e.kind}/${e.actorId}`, e.version);
      const holder = e.kind === 'task' ? t.holders.get(e.actorId)?.agent : undefined;
      const freed = e.kind === 'agent' ? t.applyAgent(e.actorId, view) : t.applyTask(e.actorId, view);
      // The node that committed a task's release (or its move to another agent) reports it.
      if (holder !== undefined && !remote && t.holders.get(e.actorId)?.agent !== holder) this.#onRelease?.(e.tenant, holder, e.actorId);
      // In a cluster the node that committed the change places waiting work, not every node.
      if (freed && !remote) this.#onCapacity(e.tenant);
    });
  }

  /** The tenant's directory, loaded from the read model on first use. */
  async tenant(tenant: string): Promise<TenantAgents> {
    let t = this.#tenants.get(tenant);
    if (!t) {
      t = new TenantAgents();
      this.#tenants.set(tenant, t);
    }
    t.loaded ??= this.#load(tenant, t).catch((e: unknown) => {
      // A failed load is tried again by the next caller.
      t.loaded = null;
      throw e;
    });
    await t.loaded;
    return t;
  }

  async #load(tenant: string, t: TenantAgents): Promise<void> {
    const apply = (kind: string, v: ViewRecord) => {
      const key = `${kind}/${v.id}`;
      if ((t.seen.get(key) ?? 0) >= v.version) return;
      t.seen.set(key, v.version);
      if (kind === 'agent') t.applyAgent(v.id, v);
      else t.applyTask(v.id, v);
    };
    await this.#scan(tenant, 'agent', {}, (v) => apply('agent', v));
    await this.#scan(tenant, 'task', { status: [...HeldStatuses, 'pending'] }, (v) => apply('task', v));
  }

  async #scan(tenant: string, kind: string, q: ViewQuery, fn: (v: ViewRecord) => void): Promise<void> {
    let cursor: string | undefined;
    do {
      const page = await this.#store.queryViews(tenant, kind, { ...q, archived: 'any', limit: 1000, cursor });
      for (const v of page.items) fn(v);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
  }
}

import type { taskMachine } from '../../machines/taskMachine.js';
import { isProtocolError, ProtocolError } from '../../protocol/errors.js';
import type { Principal, Task } from '../../protocol/model.js';
import { taskFromTurn } from '../kinds/taskKind.js';
import { applied, hasRole, queryPage, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';
import { registeredAgent } from './agents.js';
import { principalVar } from './taskPrep.js';

const fromTurn = taskFromTurn;

/** The task as stored, or NOT_FOUND. */
export async function taskView(app: App, p: Principal, taskId: string): Promise<Task> {
  const v = await app.store.getView(p.tenantId, 'task', taskId);
  if (!v) throw new ProtocolError('NOT_FOUND', `Task ${taskId} does not exist.`, { kind: 'task', id: taskId });
  return v.doc as unknown as Task;
}

/** Agents that declined the task in its current assignment round. */
const declinedNow = (t: Task) => new Set(t.rejections.filter((r) => r.round === t.assignmentRound).map((r) => r.by));

/** Methods that choose, hand over and rebalance work. */
export function assignmentHandlers(app: App): Handlers {
  const { host, assigner } = app;
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'task', id });

  function mayManage(p: Principal, t: Task, action: string): void {
    if (hasRole(p, 'admin') || t.createdBy === p.principalId) return;
    throw new ProtocolError('FORBIDDEN', `Only its creator (${t.createdBy}) or an admin may ${action} task ${t.id}; you are ${p.principalId}.`);
  }

  async function send(ctx: AuthedContext, taskId: string, event: { type: string } & Record<string, unknown>, expectedVersion?: number): Promise<Task> {
    const r = await host.send<typeof taskMachine>(address(ctx.principal, taskId), event, {
      principal: ctx.principal.principalId,
      correlationId: ctx.correlationId,
      expectedVersion,
    });
    return fromTurn(applied(r));
  }

  return {
    'task.autoAssign': async (ctx, { taskId, strategy }) => {
      const p = ctx.principal;
      requireRole(p, 'assign tasks', 'admin', 'agent');
      mayManage(p, await taskView(app, p, taskId), 'assign');
      const { task, decision } = await assigner.assign(p.tenantId, taskId, {
        strategy,
        principal: p.principalId,
        correlationId: ctx.correlationId,
      });
      return decision.ok
        ? { task, assigned: true, strategy: decision.strategy, reason: decision.reason }
        : { task, assigned: false, strategy: null, reason: decision.reason };
    },

    'task.available': async (ctx, { agentId, limit, cursor }) => {
      const p = ctx.principal;
      const id = agentId ?? p.principalId;
      if (id !== p.principalId && !hasRole(p, 'admin', 'observer')) {
        throw new ProtocolError('FORBIDDEN', `Only admins and observers may list work for another agent; you are ${p.principalId}.`);
      }
      const agent = (await registeredAgent(app, p, id)).agent;
      const page = await queryPage<Task>(app.store, p.tenantId, 'task', { status: ['pending'], limit: limit ?? 100, cursor });
      return {
        items: page.items.filter((t) => t.requiredCapabilities.every((c) => agent.capabilities.includes(c)) && !declinedNow(t).has(id)),
        nextCursor: page.nextCursor,
      };
    },

    'task.claim': async (ctx, { taskId, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'claim tasks', 'agent');
      const dir = await app.directory.tenant(p.tenantId);
      const me = await registeredAgent(app, p, p.principalId);
      const t = await taskView(app, p, taskId);
      if (t.status !== 'pending') {
        throw new ProtocolError('ILLEGAL_TRANSITION', `Task ${taskId} is ${t.status}; only pending tasks can be claimed.`, { state: t.status });
      }
      const missing = t.requiredCapabilities.filter((c) => !me.agent.capabilities.includes(c));
      if (missing.length) {
        throw new ProtocolError('FORBIDDEN', `Task ${taskId} needs ${missing.join(', ')}, which you (${p.principalId}) do not have.`, { missing });
      }
      if (dir.status(me) !== 'online') {
        throw new ProtocolError('FORBIDDEN', `You (${p.principalId}) are ${dir.status(me)}; only online agents below their limit may claim work.`);
      }
      const rule = await app.rules.eligibility(p.tenantId, { task: t, principal: principalVar(p) });
      const verdict = rule?.({ ...dir.resource(me) });
      if (verdict && !verdict.allowed) {
        throw new ProtocolError('POLICY_DENIED', `Rule ${verdict.rule.name} does not let you take task ${taskId}: ${verdict.reason}`, {
          rule: verdict.rule.name,
          category: 'task.assignment',
          ruleReason: verdict.reason,
        });
      }
      return send(ctx, taskId, { type: 'task.assign', agentId: p.principalId, reason: 'claimed by the agent', kind: 'manual' }, expectedVersion ?? t.version);
    },

    'task.delegate': async (ctx, { taskId, toAgentId, reason, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'delegate tasks', 'admin', 'agent');
      const t = await taskView(app, p, taskId);
      if (!hasRole(p, 'admin') && t.assignedTo !== p.principalId && t.createdBy !== p.principalId) {
        throw new ProtocolError('FORBIDDEN', `Only the agent holding task ${taskId} (${t.assignedTo ?? 'nobody'}), its creator or an admin may delegate it; you are ${p.principalId}.`);
      }
      if (t.assignedTo === toAgentId) {
        throw new ProtocolError('INVALID_PARAMS', `Task ${taskId} is already held by ${toAgentId}.`, { field: 'toAgentId' });
      }
      const dir = await app.directory.tenant(p.tenantId);
      const to = await registeredAgent(app, p, toAgentId);
      const delegation = { from: t.assignedTo, to: toAgentId, reason: reason ?? '', by: p.principalId };
      const verdict = await app.rules.check(p.tenantId, 'task.delegation', {
        task: t,
        delegation,
        agent: dir.resource(to),
        principal: principalVar(p),
      });
      if (!verdict.allowed) {
        throw new ProtocolError('POLICY_DENIED', `Delegation of task ${taskId} to ${toAgentId} was denied by rule ${verdict.rule.name}: ${verdict.reason}`, {
          rule: verdict.rule.name,
          category: 'task.delegation',
          ruleReason: verdict.reason,
        });
      }
      // The rules judged this version of the task: a concurrent change (another delegation) wins
      // and this one gets VERSION_MISMATCH instead of overwriting it.
      return send(ctx, taskId, { type: 'task.delegate', agentId: toAgentId, reason, kind: 'manual' }, expectedVersion ?? t.version);
    },

    'task.rebalance': async (ctx, { strategy, dryRun }) => {
      const p = ctx.principal;
      requireRole(p, 'rebalance tasks', 'admin');
      const dir = await app.directory.tenant(p.tenantId);
      // Offered but not accepted: work that can move without interrupting anyone.
      const offered = [...dir.holders.entries()].filter(([, h]) => h.status === 'assigned');
      const moved: { taskId: string; from: string; to: string; kind: 'load_balance'; reason: string }[] = [];
      const stuck: { taskId: string; from: string; reason: string }[] = [];
      for (const [taskId, h] of offered) {
        const e = dir.agents.get(h.agent);
        const over = e ? e.load > e.agent.maxConcurrentTasks : false;
        const status = e ? dir.status(e) : 'deregistered';
        if (!(status === 'draining' || status === 'offline' || status === 'deregistered' || over)) continue;
        const why = over ? `over its limit (${e!.load}/${e!.agent.maxConcurrentTasks})` : status;
        let t: Task;
        try {
          t = await taskView(app, p, taskId);
        } catch {
          continue;
        }
        if (t.status !== 'assigned' || t.assignedTo !== h.agent) continue;
        const decision = await assigner.decide(p.tenantId, { ...t, assignedTo: null }, strategy, 'load_balance');
        if (!decision.ok) {
          stuck.push({ taskId, from: h.agent, reason: decision.reason });
          continue;
        }
        const reason = `rebalanced: ${h.agent} is ${why}; ${decision.reason}`;
        if (dryRun) {
          await assigner.undo(p.tenantId, taskId, decision.agentId);
          dir.reserve(taskId, h.agent);
          moved.push({ taskId, from: h.agent, to: decision.agentId, kind: 'load_balance', reason });
          continue;
        }
        try {
          await send(ctx, taskId, { type: 'task.assign', agentId: decision.agentId, reason, kind: 'load_balance', strategy: decision.strategy }, t.version);
          moved.push({ taskId, from: h.agent, to: decision.agentId, kind: 'load_balance', reason });
        } catch (err) {
          await assigner.undo(p.tenantId, taskId, decision.agentId);
          dir.reserve(taskId, h.agent);
          // Accepted or changed meanwhile: it stays where it is.
          if (!isProtocolError(err, 'VERSION_MISMATCH') && !isProtocolError(err, 'ILLEGAL_TRANSITION')) throw err;
          stuck.push({ taskId, from: h.agent, reason: (err as Error).message });
        }
      }
      return { examined: offered.length, moved, stuck };
    },
  };
}

import type { SnapshotFrom } from 'xstate';
import { agentMachine } from '../../machines/agentMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Agent, AgentPerformance, Page, Principal } from '../../protocol/model.js';
import type { AgentEntry, TenantAgents } from '../assignment/AgentDirectory.js';
import { agentResource } from '../kinds/agentKind.js';
import { applied, hasRole, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';

type AgentSnapshot = SnapshotFrom<typeof agentMachine>;

/** Events read at most per `agent.performance` call; the answer says when it stopped there. */
const PERFORMANCE_SCAN_LIMIT = 100_000;

/** The registered agent `agentId` of the caller's tenant, or NOT_FOUND. */
export async function registeredAgent(app: App, p: Principal, agentId: string): Promise<AgentEntry> {
  const e = (await app.directory.tenant(p.tenantId)).agents.get(agentId);
  if (!e) {
    throw new ProtocolError('NOT_FOUND', `Agent ${agentId} is not registered in this tenant; register it with agent.register first.`, {
      kind: 'agent',
      id: agentId,
    });
  }
  return e;
}

const encodeCursor = (id: string) => Buffer.from(id, 'utf8').toString('base64url');

function decodeCursor(cursor: string): string {
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!id || encodeCursor(id) !== cursor) {
    throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
  }
  return id;
}

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** The agent methods. */
export function agentHandlers(app: App): Handlers {
  const { host, store } = app;

  /** The agent a call is about: the caller itself unless an admin names another. */
  function target(p: Principal, agentId: string | undefined, action: string): string {
    const id = agentId ?? p.principalId;
    if (id !== p.principalId && !hasRole(p, 'admin')) {
      throw new ProtocolError('FORBIDDEN', `Only admins may ${action} another agent; you are ${p.principalId}.`);
    }
    return id;
  }

  async function send(ctx: AuthedContext, id: string, event: { type: string } & Record<string, unknown>): Promise<Agent> {
    const r = await host.send<typeof agentMachine>({ tenant: ctx.principal.tenantId, kind: 'agent', id }, event, {
      principal: ctx.principal.principalId,
      correlationId: ctx.correlationId,
    });
    const { snapshot, version } = applied(r);
    const agent = agentResource((snapshot as AgentSnapshot).context.agent, version);
    const dir = await app.directory.tenant(ctx.principal.tenantId);
    const e = dir.agents.get(id);
    return e ? dir.resource(e) : agent;
  }

  const sorted = (dir: TenantAgents) => [...dir.agents.values()].sort((a, b) => (a.agent.id < b.agent.id ? -1 : a.agent.id > b.agent.id ? 1 : 0));

  return {
    'agent.register': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'register agents', 'admin', 'agent');
      const id = target(p, params.id, 'register');
      return send(ctx, id, {
        ...params,
        type: 'agent.register',
        id,
        tenantId: p.tenantId,
        connections: app.presence.count(p.tenantId, id),
      });
    },

    'agent.get': async (ctx, { agentId }) => {
      const dir = await app.directory.tenant(ctx.principal.tenantId);
      return dir.resource(await registeredAgent(app, ctx.principal, agentId));
    },

    'agent.list': async (ctx, { status, capability, limit, cursor }): Promise<Page<Agent>> => {
      const dir = await app.directory.tenant(ctx.principal.tenantId);
      const after = cursor ? decodeCursor(cursor) : null;
      const max = limit ?? 100;
      const cap = capability?.toLowerCase();
      const items: Agent[] = [];
      let more = false;
      for (const e of sorted(dir)) {
        if (after !== null && e.agent.id <= after) continue;
        if (status && !status.includes(dir.status(e))) continue;
        if (cap && !e.agent.capabilities.some((c) => c.toLowerCase() === cap)) continue;
        if (items.length === max) {
          more = true;
          break;
        }
        items.push(dir.resource(e));
      }
      return { items, nextCursor: more ? encodeCursor(items[items.length - 1]!.id) : null };
    },

    'agent.available': async (ctx, { capabilities, limit }) => {
      const dir = await app.directory.tenant(ctx.principal.tenantId);
      const need = capabilities ?? [];
      const items = [...dir.agents.values()]
        .filter((e) => dir.status(e) === 'online' && need.every((c) => e.agent.capabilities.includes(c)))
        .sort((a, b) => a.load / a.agent.maxConcurrentTasks - b.load / b.agent.maxConcurrentTasks || (a.agent.id < b.agent.id ? -1 : 1))
        .slice(0, limit ?? 100)
        .map((e) => dir.resource(e));
      return { items };
    },

    'agent.heartbeat': async (ctx, { agentId }) => {
      requireRole(ctx.principal, 'send heartbeats', 'admin', 'agent');
      return send(ctx, target(ctx.principal, agentId, 'send heartbeats for'), { type: 'agent.heartbeat' });
    },

    'agent.setStatus': async (ctx, { agentId, status }) => {
      requireRole(ctx.principal, 'set agent status', 'admin', 'agent');
      return send(ctx, target(ctx.principal, agentId, 'set the status of'), { type: 'agent.setStatus', status });
    },

    'agent.setCapabilities': async (ctx, { agentId, capabilities }) => {
      requireRole(ctx.principal, 'set agent capabilities', 'admin', 'agent');
      return send(ctx, target(ctx.principal, agentId, 'set the capabilities of'), { type: 'agent.setCapabilities', capabilities });
    },

    'agent.deregister': async (ctx, { agentId, reason }) => {
      requireRole(ctx.principal, 'deregister agents', 'admin', 'agent');
      const id = target(ctx.principal, agentId, 'deregister');
      await registeredAgent(app, ctx.principal, id);
      const r = applied(
        await host.send({ tenant: ctx.principal.tenantId, kind: 'agent', id }, { type: 'agent.deregister', reason }, {
          principal: ctx.principal.principalId,
          correlationId: ctx.correlationId,
        }),
      );
      return { id, deregistered: true as const, version: r.version };
    },

    /**
     * Reads the events of the agent's inbox topic (every event of every task while it was
     * assigned to the agent) and pairs each attempt's start with its end.
     */
    'agent.performance': async (ctx, { agentId, periodSeconds }): Promise<AgentPerformance> => {
      const p = ctx.principal;
      if (agentId !== p.principalId && !hasRole(p, 'admin', 'observer')) {
        throw new ProtocolError('FORBIDDEN', `Only admins and observers may read another agent's performance; you are ${p.principalId}.`);
      }
      const dir = await app.directory.tenant(p.tenantId);
      const entry = await registeredAgent(app, p, agentId);
      const to = app.now();
      const from = to - (periodSeconds ?? 86_400) * 1000;
      const started = new Map<string, number>();
      const durations: number[] = [];
      let completed = 0;
      let failed = 0;
      let scanned = 0;
      let after = 0;
      for (;;) {
        const page = await store.readTopic(p.tenantId, `inbox:${agentId}`, after, 1000);
        for (const e of page) {
          scanned++;
          after = e.position;
          if (e.kind !== 'task' || e.meta.at < from || e.meta.at > to) continue;
          const status = e.meta.status;
          if (e.type === 'task.start' && e.meta.principal === agentId) started.set(e.actorId, e.meta.at);
          else if (e.type === 'task.complete' && e.meta.principal === agentId) {
            completed++;
            const s = started.get(e.actorId);
            if (s !== undefined) durations.push(e.meta.at - s);
            started.delete(e.actorId);
          } else if (
            (e.type === 'task.fail' && e.meta.principal === agentId) ||
            (e.type === 'timer.fired' && ['lease', 'timeout'].includes(String(e.data.name)) && (status === 'failed' || status === 'timed_out' || status === 'pending'))
          ) {
            failed++;
            started.delete(e.actorId);
          }
        }
        if (page.length < 1000 || scanned >= PERFORMANCE_SCAN_LIMIT) break;
      }
      durations.sort((a, b) => a - b);
      const total = completed + failed;
      return {
        agentId,
        from: new Date(from).toISOString(),
        to: new Date(to).toISOString(),
        completed,
        failed,
        successRate: total ? completed / total : null,
        meanCompletionMs: durations.length ? durations.reduce((a, b) => a + b, 0) / durations.length : null,
        p90CompletionMs: percentile(durations, 90),
        currentLoad: entry.load,
        maxConcurrentTasks: dir.resource(entry).maxConcurrentTasks,
        eventsScanned: scanned,
        truncated: scanned >= PERFORMANCE_SCAN_LIMIT,
      };
    },
  };
}

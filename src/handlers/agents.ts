import type { SnapshotFrom } from 'xstate';
import type { ViewQuery } from '../../actors/Store.js';
import { agentMachine } from '../../machines/agentMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Agent, Principal } from '../../protocol/model.js';
import { agentResource } from '../kinds/agentKind.js';
import { applied, hasRole, queryPage, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';

type AgentSnapshot = SnapshotFrom<typeof agentMachine>;

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
    return agentResource((snapshot as AgentSnapshot).context.agent, version);
  }

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
      const v = await store.getView(ctx.principal.tenantId, 'agent', agentId);
      if (!v) throw new ProtocolError('NOT_FOUND', `Agent ${agentId} is not registered.`, { kind: 'agent', id: agentId });
      return v.doc as unknown as Agent;
    },

    'agent.list': async (ctx, { status, capability, limit, cursor }) => {
      const q: ViewQuery = { limit, cursor };
      if (status) q.status = status;
      if (capability) q.text = ` ${capability.toLowerCase()} `;
      return queryPage<Agent>(store, ctx.principal.tenantId, 'agent', q);
    },

    'agent.heartbeat': async (ctx, { agentId }) => {
      requireRole(ctx.principal, 'send heartbeats', 'admin', 'agent');
      return send(ctx, target(ctx.principal, agentId, 'send heartbeats for'), { type: 'agent.heartbeat' });
    },

    'agent.setStatus': async (ctx, { agentId, status }) => {
      requireRole(ctx.principal, 'set agent status', 'admin', 'agent');
      return send(ctx, target(ctx.principal, agentId, 'set the status of'), { type: 'agent.setStatus', status });
    },
  };
}

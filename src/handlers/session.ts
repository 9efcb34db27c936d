import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import { hasRole, type App, type Handlers } from '../server/App.js';

/** Topics of one actor, `<kind>:<id>`, by kind (with the kind's name for messages). */
const TOPIC_KINDS: Record<string, string> = { task: 'Task', agent: 'Agent', execution: 'Execution' };

/** Checks that a principal may subscribe to a topic, and that the topic exists. */
async function authorizeTopic(app: App, p: Principal, topic: string): Promise<void> {
  const [kind, id, ...rest] = topic.split(':');
  const reader = hasRole(p, 'admin', 'observer');
  if (topic === 'tenant') {
    if (!reader) throw new ProtocolError('FORBIDDEN', 'Only admins and observers may subscribe to the tenant feed.');
    return;
  }
  if (rest.length === 0 && id) {
    if (kind === 'inbox') {
      if (id !== p.principalId && !reader) throw new ProtocolError('FORBIDDEN', `Only agent ${id}, admins and observers may read its inbox.`);
      return;
    }
    const named = TOPIC_KINDS[kind!];
    if (named) {
      if (!(await app.store.getView(p.tenantId, kind!, id))) {
        throw new ProtocolError('NOT_FOUND', `${named} ${id} does not exist.`, { kind, id });
      }
      return;
    }
  }
  throw new ProtocolError('INVALID_PARAMS', `Unknown topic "${topic}"; use task:<taskId>, agent:<agentId>, execution:<executionId>, inbox:<agentId> or tenant.`, {
    field: 'topic',
  });
}

/** Session methods that need authentication (authenticate and ping are handled by the gateway). */
export function sessionHandlers(app: App): Handlers {
  return {
    'session.whoami': async (ctx) => ({ ...ctx.principal, connectionId: ctx.conn.id }),
    subscribe: async (ctx, { topic, fromPosition }) => {
      await authorizeTopic(app, ctx.principal, topic);
      const r = await app.hub.subscribe(ctx.conn, ctx.principal.tenantId, topic, fromPosition, ctx.correlationId);
      return { ...r, topic };
    },
    unsubscribe: async (ctx, { subscriptionId }) => ({ unsubscribed: app.hub.unsubscribe(subscriptionId, ctx.conn) }),
  };
}

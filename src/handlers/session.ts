import { STATE_DOCUMENT_ID } from '../../protocol/documents.js';
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
  // document:<workspaceId>:<documentId>, members only (document ids have no ":").
  if (kind === 'document' && id && rest.length > 0 && app.workspaces) {
    const documentId = rest[rest.length - 1]!;
    const workspaceId = [id, ...rest.slice(0, -1)].join(':');
    await app.workspaces.requireMember(p, workspaceId);
    // The state document exists from its first change on; it may be followed before that.
    if (documentId !== STATE_DOCUMENT_ID && !(await app.store.getView(p.tenantId, 'document', `${workspaceId}:${documentId}`))) {
      throw new ProtocolError('NOT_FOUND', `Document ${documentId} does not exist in workspace ${workspaceId}.`, { kind: 'document', id: documentId });
    }
    return;
  }
  if (rest.length === 0 && id) {
    if (kind === 'inbox') {
      if (id !== p.principalId && !reader) throw new ProtocolError('FORBIDDEN', `Only agent ${id}, admins and observers may read its inbox.`);
      return;
    }
    // Members only: others get NOT_FOUND (private workspaces) or FORBIDDEN.
    if (kind === 'workspace' && app.workspaces) {
      await app.workspaces.requireMember(p, id);
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
  throw new ProtocolError('INVALID_PARAMS', `Unknown topic "${topic}"; use task:<taskId>, agent:<agentId>, execution:<executionId>, inbox:<agentId>, workspace:<workspaceId>, document:<workspaceId>:<documentId> or tenant.`, {
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
      // A member following a workspace is present in it.
      if (topic.startsWith('workspace:')) app.workspaces?.subscribed(ctx.conn, ctx.principal, topic.slice('workspace:'.length), r.subscriptionId, ctx.correlationId);
      // Membership may have been revoked before the subscription existed to be ended with it.
      if (topic.startsWith('document:')) {
        try {
          await authorizeTopic(app, ctx.principal, topic);
        } catch (e) {
          app.hub.unsubscribe(r.subscriptionId);
          throw e;
        }
      }
      return { ...r, topic };
    },
    unsubscribe: async (ctx, { subscriptionId }) => {
      const unsubscribed = app.hub.unsubscribe(subscriptionId, ctx.conn);
      if (unsubscribed) app.workspaces?.unsubscribed(ctx.conn, subscriptionId, ctx.correlationId);
      return { unsubscribed };
    },
  };
}

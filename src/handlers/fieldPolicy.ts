import type { fieldPolicyMachine } from '../../machines/fieldPolicyMachine.js';
import type { FieldPolicy } from '../../protocol/fieldPolicy.js';
import { FIELD_POLICY_ID, fieldPolicyResource } from '../kinds/fieldPolicyKind.js';
import { applied, requireRole, type App, type Handlers } from '../server/App.js';

/**
 * The field policy methods. Setting needs `admin`; every principal of the tenant may read the
 * policy (an agent may want to know why a field is missing or a write was refused).
 */
export function fieldPolicyHandlers(app: App): Handlers {
  const { host, store } = app;
  return {
    'fieldPolicy.set': async (ctx, { rules, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'set the field policy', 'admin');
      const r = await host.send<typeof fieldPolicyMachine>(
        { tenant: p.tenantId, kind: 'fieldpolicy', id: FIELD_POLICY_ID },
        { type: 'fieldPolicy.set', tenantId: p.tenantId, rules },
        { principal: p.principalId, correlationId: ctx.correlationId, expectedVersion },
      );
      const { snapshot, version } = applied(r);
      return fieldPolicyResource(snapshot.context.policy, version);
    },

    'fieldPolicy.get': async (ctx) => {
      const tenant = ctx.principal.tenantId;
      const v = await store.getView(tenant, 'fieldpolicy', FIELD_POLICY_ID);
      if (v) return v.doc as unknown as FieldPolicy;
      return { id: FIELD_POLICY_ID, tenantId: tenant, rules: [], version: 0, updatedBy: null, updatedAt: null };
    },
  };
}

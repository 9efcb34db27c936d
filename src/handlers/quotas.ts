import type { quotaMachine } from '../../machines/quotaMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Quotas } from '../guard/Quotas.js';
import { QUOTA_ACTOR_ID } from '../kinds/quotaKind.js';
import { applied, requireRole, type App, type Handlers } from '../server/App.js';

/** The quota methods: read limits and use (anyone in the tenant), set limits (admins). */
export function quotaHandlers(app: App): Handlers {
  const service = (): Quotas => {
    if (!app.quotas) throw new ProtocolError('UNAVAILABLE', 'Quotas are not enabled on this server.');
    return app.quotas;
  };

  return {
    'quota.get': async (ctx) => service().limits(ctx.principal.tenantId),

    'quota.set': async (ctx, { limits, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'set quotas', 'admin');
      const quotas = service();
      applied(
        await app.host.send<typeof quotaMachine>(
          { tenant: p.tenantId, kind: 'quota', id: QUOTA_ACTOR_ID },
          { type: 'quota.set', limits },
          { principal: p.principalId, correlationId: ctx.correlationId, expectedVersion },
        ),
      );
      const result = await quotas.limits(p.tenantId);
      // Count what is limited now, and warn if a new limit is already 80% used. The limits are
      // stored either way: a count that fails now is taken at the next create.
      await quotas.limitsChanged(p.tenantId).catch((e: unknown) => app.log.warn({ err: e, tenant: p.tenantId }, 'quota: counting after quota.set failed'));
      return result;
    },

    'quota.status': async (ctx, { resources }) => ({ items: await service().status(ctx.principal.tenantId, resources) }),
  };
}

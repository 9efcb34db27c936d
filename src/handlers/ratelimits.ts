import type { rateLimitMachine } from '../../machines/rateLimitMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { RateLimitDoc } from '../kinds/rateLimitKind.js';
import { RATE_LIMIT_ACTOR_ID } from '../kinds/rateLimitKind.js';
import type { RateLimits } from '../guard/RateLimits.js';
import { applied, requireRole, type App, type Handlers } from '../server/App.js';

/**
 * The rate limit methods. Any principal may read the tenant's limits and its own budgets;
 * overrides need `admin`.
 */
export function rateLimitHandlers(app: App): Handlers {
  const { host } = app;
  const limits = (): RateLimits => {
    if (!app.rateLimits) throw new ProtocolError('UNAVAILABLE', 'Rate limits are not enabled on this server.');
    return app.rateLimits;
  };
  const address = (tenant: string) => ({ tenant, kind: 'ratelimit', id: RATE_LIMIT_ACTOR_ID });

  return {
    'ratelimit.get': async (ctx) => limits().settings(ctx.principal.tenantId),

    'ratelimit.set': async (ctx, { class: cls, scope, points, durationSeconds, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'change rate limits', 'admin');
      const r = applied(
        await host.send<typeof rateLimitMachine>(
          address(p.tenantId),
          { type: 'ratelimit.set', class: cls, scope, points, durationSeconds },
          { principal: p.principalId, correlationId: ctx.correlationId, expectedVersion },
        ),
      );
      return limits().settingsOf({ ...r.snapshot.context, version: r.version });
    },

    'ratelimit.unset': async (ctx, { class: cls, scope, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'change rate limits', 'admin');
      const current = await limits().settings(p.tenantId);
      if (expectedVersion !== undefined && expectedVersion !== current.version) {
        throw new ProtocolError('VERSION_MISMATCH', `Expected version ${expectedVersion} but the rate limits are at version ${current.version}; read them again and retry.`, {
          expectedVersion,
          actualVersion: current.version,
        });
      }
      // Nothing to remove: the default applies already, and nothing is written.
      if (!current.overrides[cls]?.[scope]) return current;
      const r = applied(
        await host.send<typeof rateLimitMachine>(
          address(p.tenantId),
          { type: 'ratelimit.unset', class: cls, scope },
          { principal: p.principalId, correlationId: ctx.correlationId, expectedVersion },
        ),
      );
      const doc: RateLimitDoc = { ...r.snapshot.context, version: r.version };
      return limits().settingsOf(doc);
    },

    'ratelimit.status': async (ctx, params) => limits().status(ctx, params.class),
  };
}

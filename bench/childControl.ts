import readline from 'node:readline';

/**
 * The child side of the bench's control channel: one JSON object per line on stdout; commands
 * one per line on stdin (`usage`: report CPU time and memory; `stop`: shut down). The child also
 * shuts down when stdin closes, so it never outlives the bench.
 */
export function serveControl(stop: () => Promise<void>, stats: () => Record<string, unknown> = () => ({})): void {
  let stopping = false;
  const shutdown = () => {
    if (stopping) return;
    stopping = true;
    // process.exit (not a signal) so that --cpu-prof writes its profile.
    stop().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`shutdown failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const cmd = line.trim();
    if (cmd === 'usage') {
      const cpu = process.cpuUsage();
      send({ usage: { userUs: cpu.user, systemUs: cpu.system, rssBytes: process.memoryUsage().rss, ...stats() } });
    } else if (cmd === 'stop') {
      shutdown();
    }
  });
  rl.on('close', shutdown);
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

/** Writes one control message. */
export function send(msg: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(msg) + '\n');
}

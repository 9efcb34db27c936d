import { send, serveControl } from './childControl.js';
import { RpcConn, type RpcReply } from './rpcClient.js';

/**
 * The misbehaving agent of the flood scenario (bench/flood.ts), in its own process so that its
 * client-side work does not delay the timing of the well-behaved agents in the bench process.
 * Opens BENCH_FLOOD_CONNS connections to BENCH_FLOOD_URL with BENCH_FLOOD_KEY (one principal) and
 * keeps BENCH_FLOOD_IN_FLIGHT `task.create` calls in flight on each, as fast as it can: the next
 * call goes out as soon as a reply arrives, whatever it says (errors and `retryAfterMs` are
 * ignored). Prints `{"ready": true, "conns", "inFlight"}` once connected and starts at once; its
 * counters come with every `usage` reply (see childControl.ts).
 */

const url = process.env.BENCH_FLOOD_URL;
const key = process.env.BENCH_FLOOD_KEY;
if (!url || !key) throw new Error('BENCH_FLOOD_URL and BENCH_FLOOD_KEY are required');
const connCount = Number(process.env.BENCH_FLOOD_CONNS ?? '4');
const inFlight = Number(process.env.BENCH_FLOOD_IN_FLIGHT ?? '64');

/** What the flooder saw so far (cumulative; the bench takes differences over its window). */
const stats = {
  sent: 0,
  replies: 0,
  accepted: 0,
  rateLimited: 0,
  busy: 0,
  otherErrors: 0,
  sampleRateLimited: null as RpcReply['error'] | null,
  sampleBusy: null as RpcReply['error'] | null,
  sampleOther: null as RpcReply['error'] | null,
};

const reasonOf = (e: NonNullable<RpcReply['error']>) => (e.data as { reason?: string } | undefined)?.reason;

function count(r: RpcReply): void {
  stats.replies++;
  const e = r.error;
  if (!e) {
    stats.accepted++;
    return;
  }
  const reason = reasonOf(e);
  if (e.code === -32021 || reason === 'RATE_LIMITED') {
    stats.rateLimited++;
    stats.sampleRateLimited ??= e;
  } else if (e.code === -32023 || reason === 'BUSY') {
    stats.busy++;
    stats.sampleBusy ??= e;
  } else {
    stats.otherErrors++;
    stats.sampleOther ??= e;
  }
}

async function main(): Promise<void> {
  const conns = await Promise.all(Array.from({ length: connCount }, () => RpcConn.open(url!, key)));
  let running = true;
  let seq = 0;
  const slot = async (conn: RpcConn) => {
    while (running) {
      stats.sent++;
      const r = await conn.call('task.create', { type: 'flood', title: `Flood ${seq++}` });
      if (running) count(r);
    }
  };
  serveControl(
    async () => {
      running = false;
      await Promise.all(conns.map((c) => c.close()));
    },
    () => ({ flood: { ...stats } }),
  );
  send({ ready: true, conns: connCount, inFlight, pid: process.pid });
  for (const c of conns) for (let i = 0; i < inFlight; i++) void slot(c);
}

main().catch((e: unknown) => {
  process.stderr.write(`flooder failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});

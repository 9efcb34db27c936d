import { Writable } from 'node:stream';
import { pino } from 'pino';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Subscription, TroupeClient } from '../../protocol/client.js';
import { SUBSCRIPTION_EVENT, type RpcNotification } from '../../protocol/jsonrpc.js';
import type { ActorEvent, Task } from '../../protocol/model.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  c: InProcessCluster;
  n: number;
  /** Messages of the warnings the nodes logged. */
  warnings: string[];
}

const test = suite<Ctx>('cluster subscriptions: events written on any node reach subscribers on every node, in order, once');

test.before(async (ctx) => {
  ctx.warnings = [];
  const logger = pino(
    { level: 'warn' },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        ctx.warnings.push((JSON.parse(chunk.toString()) as { msg: string }).msg);
        done();
      },
    }),
  );
  // Three lock instances, so the leases outlive an outage of the shared Redis (redis[0]).
  ctx.c = await startCluster(3, { locks: 3, server: { logger } });
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.c.close();
});

/** What one subscription delivered to its handler. */
interface Received {
  sub: Subscription;
  events: ActorEvent[];
  positions: number[];
}

async function record(client: TroupeClient, topic: string, fromPosition?: number): Promise<Received> {
  const r = { events: [] as ActorEvent[], positions: [] as number[] } as Received;
  r.sub = await client.subscribe(
    topic,
    (e, position) => {
      r.events.push(e);
      r.positions.push(position);
    },
    fromPosition === undefined ? {} : { fromPosition },
  );
  return r;
}

/**
 * Every event frame the server sent on a connection, by subscription id, before the client
 * filters anything (the client drops frames at or below the last position it delivered, so a
 * repeat or a reordering by the server would otherwise go unseen).
 */
function wire(client: TroupeClient): Map<string, number[]> {
  const frames = new Map<string, number[]>();
  client.on('notification', (n: RpcNotification) => {
    if (n.method !== SUBSCRIPTION_EVENT) return;
    const p = n.params as { subscriptionId: string; position: number };
    frames.set(p.subscriptionId, [...(frames.get(p.subscriptionId) ?? []), p.position]);
  });
  return frames;
}

const keyOf = (e: ActorEvent) => `${e.actorId}#${e.version}`;
const versions = (id: string, from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => `${id}#${from + i}`);

function contiguous(xs: number[]): boolean {
  return xs.every((x, i) => i === 0 || x === xs[i - 1]! + 1);
}

/** Updates each task `times` times from each writer, the writers running at once. */
async function updates(writers: TroupeClient[], taskIds: string[], times: number, label: string): Promise<void> {
  await Promise.all(
    writers.map(async (w, wi) => {
      for (let i = 0; i < times; i++) for (const taskId of taskIds) await w.call('task.update', { taskId, description: `${label} ${wi}.${i}` });
    }),
  );
}

test('a subscriber on node 2 gets every event written on nodes 1 and 3 exactly once, in position order, and resumes on node 3 with exactly the missed ones', async (ctx) => {
  const { c } = ctx;
  const tenant = `s${++ctx.n}`;
  const lead1 = await c.client(0, tenant, 'lead', ['admin']);
  const lead3 = await c.client(2, tenant, 'lead', ['admin']);
  const eye = await c.client(1, tenant, 'eye', ['observer']);
  const frames = wire(eye);

  const feed = await record(eye, 'tenant');
  // Each task is held by the node that created it; the other writer's calls to it are forwarded.
  const a = await lead1.call('task.create', { type: 's', title: 'A' });
  const b = await lead3.call('task.create', { type: 's', title: 'B' });
  assert.equal([c.holders(`${tenant}/task/${a.id}`), c.holders(`${tenant}/task/${b.id}`)], [[0], [2]]);
  const onA = await record(eye, `task:${a.id}`, 0);

  await updates([lead1, lead3], [a.id, b.id], 5, 'first');
  const expectedFeed = [...versions(a.id, 1, 11), ...versions(b.id, 1, 11)].sort();
  await waitFor(() => feed.events.length >= 22 && onA.events.length >= 11);
  assert.equal(feed.events.map(keyOf).sort(), expectedFeed, 'the feed has every event of both tasks');
  assert.ok(contiguous(feed.positions), `the feed's positions have no gaps: ${feed.positions.join(' ')}`);
  assert.equal(feed.events.map((e) => e.position), feed.positions);
  for (const id of [a.id, b.id]) {
    assert.equal(feed.events.filter((e) => e.actorId === id).map((e) => e.version), Array.from({ length: 11 }, (_, i) => i + 1), 'each task\'s events in version order');
  }
  assert.equal(onA.events.map(keyOf), versions(a.id, 1, 11), 'task:A has A\'s events only, in order');

  // A write after all others arrives last: nothing repeated or out of order was sent before it.
  await lead3.call('task.update', { taskId: a.id, description: 'sentinel' });
  await waitFor(() => feed.events.length === 23 && onA.events.length === 12);
  for (const r of [feed, onA]) assert.equal(frames.get(r.sub.id), r.positions, 'the server sent each event once, in position order');

  // Away: nothing is delivered while unsubscribed; resumed on another node from the last position.
  const feedLast = feed.sub.lastPosition;
  const aLast = onA.sub.lastPosition;
  await feed.sub.unsubscribe();
  await onA.sub.unsubscribe();
  await updates([lead3, lead1], [a.id, b.id], 3, 'missed');
  const eye3 = await c.client(2, tenant, 'eye', ['observer']);
  const frames3 = wire(eye3);
  const resumed = await record(eye3, 'tenant', feedLast);
  const resumedA = await record(eye3, `task:${a.id}`, aLast);
  await waitFor(() => resumed.events.length >= 12 && resumedA.events.length >= 6);
  assert.equal(resumed.events.map(keyOf).sort(), [...versions(a.id, 13, 18), ...versions(b.id, 12, 17)].sort(), 'exactly the missed events');
  assert.is(resumed.positions[0], feedLast + 1, 'resumed right after the last position delivered');
  assert.ok(contiguous(resumed.positions));
  assert.equal(resumedA.events.map(keyOf), versions(a.id, 13, 18));
  assert.is(feed.events.length, 23, 'the first subscription got nothing after it ended');

  // And it goes on live, with writes from every node.
  await lead1.call('task.update', { taskId: b.id, description: 'live 1' });
  await lead3.call('task.update', { taskId: a.id, description: 'live 3' });
  await (await c.client(1, tenant, 'lead', ['admin'])).call('task.update', { taskId: a.id, description: 'live 2' });
  await waitFor(() => resumed.events.length === 15 && resumedA.events.length === 8);
  assert.equal(resumed.events.slice(12).map(keyOf), [`${b.id}#18`, `${a.id}#19`, `${a.id}#20`]);
  assert.ok(contiguous(resumed.positions));
  for (const r of [resumed, resumedA]) assert.equal(frames3.get(r.sub.id), r.positions, 'the server sent each event once, in position order');
});

test('subscribers on every node see the same events in the same order while all three nodes write at once', async (ctx) => {
  const { c } = ctx;
  const tenant = `s${++ctx.n}`;
  const leads = [await c.client(0, tenant, 'lead', ['admin']), await c.client(1, tenant, 'lead', ['admin']), await c.client(2, tenant, 'lead', ['admin'])];
  const eyes = [await c.client(0, tenant, 'eye', ['observer']), await c.client(1, tenant, 'eye', ['observer']), await c.client(2, tenant, 'eye', ['observer'])];
  const feeds = await Promise.all(eyes.map((e) => record(e, 'tenant')));
  const tasks = await Promise.all(leads.map((l, i) => l.call('task.create', { type: 's', title: `T${i}` })));
  await updates(leads, tasks.map((t) => t.id), 4, 'all');
  // 3 creates + 3 writers x 3 tasks x 4 updates.
  await waitFor(() => feeds.every((f) => f.events.length >= 39));
  const expected = tasks.flatMap((t) => versions(t.id, 1, 13)).sort();
  for (const f of feeds) {
    assert.equal(f.events.map(keyOf).sort(), expected);
    assert.ok(contiguous(f.positions));
  }
  assert.equal(feeds[1]!.events, feeds[0]!.events, 'node 2 delivered what node 1 did, in the same order');
  assert.equal(feeds[2]!.events, feeds[0]!.events, 'node 3 delivered what node 1 did, in the same order');
});

test('an event committed while the shared Redis restarts still reaches a subscriber on another node once it is back', async (ctx) => {
  const { c } = ctx;
  const tenant = `s${++ctx.n}`;
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const eye = await c.client(1, tenant, 'eye', ['observer']);
  const t = await lead.call('task.create', { type: 's', title: 'A' });
  const onT = await record(eye, `task:${t.id}`, 0);
  await waitFor(() => onT.events.length === 1);
  // Node 1 holds the task and a majority of the locks is up: it commits without the shared Redis.
  await c.redis[0]!.stop();
  let during: Task;
  try {
    const failed = ctx.warnings.filter((m) => m === 'cluster broadcast failed').length;
    during = await lead.call('task.update', { taskId: t.id, description: 'while the bus is down' });
    // Node 1's Redis client gives the commit's fan-out message up after a few reconnect attempts
    // (a node that keeps it until Redis is back never logs this: then the wait just ends).
    await waitFor(() => ctx.warnings.filter((m) => m === 'cluster broadcast failed').length > failed, { timeoutMs: 3000 }).catch(() => undefined);
  } finally {
    await c.redis[0]!.restart();
  }
  assert.is(during.version, 2);
  await waitFor(() => onT.events.length === 2, { timeoutMs: 4000 }).catch(() => {
    throw new Error(`the subscriber on node 2 never got version 2, committed on node 1 while the shared Redis was down (it has ${onT.events.map(keyOf).join(', ')})`);
  });
  assert.equal(onT.events.map(keyOf), versions(t.id, 1, 2));
});

test.run();

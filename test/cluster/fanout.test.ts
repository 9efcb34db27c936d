import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ c: InProcessCluster }>('cluster: many subscribers of one topic on a node that does not write it');

test.before(async (ctx) => {
  ctx.c = await startCluster(2);
});

test.after(async (ctx) => {
  await ctx.c.close();
});

test('subscribers that joined at different positions each get every later event once, in order', async ({ c }) => {
  const lead = await c.client(0, 'fan', 'lead', ['admin']);
  const t = await lead.call('task.create', { type: 'watch', title: 'watched' });
  const topic = `task:${t.id}`;
  const watchers: { client: TroupeClient; positions: number[]; from: number }[] = [];
  const update = (i: number) => lead.call('task.update', { taskId: t.id, title: `title ${i}` });
  // Ten watchers on node 2, subscribing between writes made on node 1, half resuming from the start.
  for (let i = 0; i < 10; i++) {
    await update(i);
    const client = await c.client(1, 'fan', `eye${i}`, ['observer']);
    const w = { client, positions: [] as number[], from: 0 };
    const sub = await client.subscribe(topic, (_e, position) => void w.positions.push(position), i % 2 === 0 ? { fromPosition: 0 } : {});
    w.from = i % 2 === 0 ? 0 : sub.lastPosition;
    watchers.push(w);
  }
  for (let i = 10; i < 30; i++) await update(i);
  const all = (await lead.call('events.read', { kind: 'task', actorId: t.id, limit: 1000 })) as { items: { position: number }[] };
  const stored = all.items.map((e) => e.position);
  for (const [i, w] of watchers.entries()) {
    const expected = stored.filter((p) => p > w.from);
    await waitFor(() => w.positions.length >= expected.length, { timeoutMs: 5_000 });
    assert.equal(w.positions, expected, `watcher ${i} (from ${w.from}) got every event after its position once, in order`);
  }
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import type { DocumentChangeResult, SharedDocument } from '../../protocol/documents.js';
import type { ProtocolError } from '../../protocol/errors.js';
import type { Workspace } from '../../protocol/workspaces.js';
import { startCluster, whenAvailable, type InProcessCluster } from '../helpers/cluster.js';

interface Ctx {
  c: InProcessCluster;
  n: number;
}

const test = suite<Ctx>('cluster documents: workspace state and shared documents edited and read on any node');

test.before(async (ctx) => {
  // Three lock instances, so the leases outlive an outage of the shared Redis (redis[0]).
  ctx.c = await startCluster(3, { locks: 3, server: { documents: { maxChangesPerSecond: 100_000 } } });
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.c.close();
});

/** A tenant with a private workspace created on node 1 and editors `members` (principal → node index). */
async function workspace(ctx: Ctx, members: [string, number][]): Promise<{ tenant: string; lead: TroupeClient; w: Workspace; editors: Record<string, TroupeClient> }> {
  const tenant = `d${++ctx.n}`;
  const lead = await ctx.c.client(0, tenant, 'lead', ['agent']);
  const w = await lead.call('workspace.create', { name: 'Shared', visibility: 'private' });
  const editors: Record<string, TroupeClient> = {};
  const added = new Set<string>();
  for (const [id, node] of members) {
    if (!added.has(id)) await lead.call('workspace.addMember', { workspaceId: w.id, principalId: id, role: 'editor' });
    added.add(id);
    editors[`${id}@${node}`] = await ctx.c.client(node, tenant, id, ['agent']);
  }
  return { tenant, lead, w, editors };
}

test('concurrent increments from editors on nodes 2 and 3 all count: every node reads the same state, heads and version', async (ctx) => {
  const { c } = ctx;
  const { tenant, w, editors } = await workspace(ctx, [
    ['ann', 1],
    ['bob', 2],
    ['cat', 2],
  ]);
  const acks: DocumentChangeResult[] = [];
  const acked: Record<string, number> = {};
  let refusals = 0;
  await Promise.all(
    Object.entries(editors).map(async ([who, client]) => {
      const me = who.split('@')[0]!;
      for (let i = 0; i < 20; i++) {
        // Writers on other nodes than the document's owner lose races and retry; give them time.
        const r = await whenAvailable(() =>
          client.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/count' }, { op: 'increment', path: `/by/${me}` }] }),
          15_000,
        );
        refusals += r.refusals;
        acks.push(r.value);
        acked[me] = (acked[me] ?? 0) + 1;
      }
    }),
  );
  assert.equal(acked, { ann: 20, bob: 20, cat: 20 });
  const last = acks.reduce((a, b) => (b.version > a.version ? b : a));
  assert.is(last.version, 60, `every acknowledged change is one version (${refusals} calls were refused first and retried)`);
  assert.equal(new Set(acks.map((a) => a.version)).size, 60, 'no two acknowledged changes share a version');

  const reads = await Promise.all([0, 1, 2].map(async (i) => (await c.client(i, tenant, 'lead', ['agent'])).call('workspace.getState', { workspaceId: w.id })));
  for (const [i, r] of reads.entries()) {
    assert.equal(r.state, { count: 60, by: { ann: 20, bob: 20, cat: 20 } }, `node ${i + 1} counts every acknowledged increment`);
    assert.equal([r.version, r.heads], [60, last.heads], `node ${i + 1} has the heads of the last change`);
  }
  // The editors' nodes had the document in memory while the others wrote: their copies too.
  for (const [who, client] of Object.entries(editors)) {
    const r = await client.call('workspace.getState', { workspaceId: w.id });
    assert.equal([r.state, r.version, r.heads], [reads[0]!.state, 60, last.heads], `${who} reads the final state`);
  }
});

test('a document created and changed on one node is read with its new content on the others, which had it in memory', async (ctx) => {
  const { w, editors } = await workspace(ctx, [
    ['ann', 0],
    ['ann', 1],
    ['ann', 2],
  ]);
  const on = [editors['ann@0']!, editors['ann@1']!, editors['ann@2']!];
  const created = await on[0]!.call('document.create', { workspaceId: w.id, documentId: 'notes', title: 'Notes', content: { text: 'v0' } });
  assert.equal(created.content, { text: 'v0' });
  for (const i of [1, 2]) {
    const got = await on[i]!.call('document.get', { workspaceId: w.id, documentId: 'notes' });
    assert.equal([got.content, got.version, got.heads], [{ text: 'v0' }, created.version, created.heads], `node ${i + 1} reads the new document`);
  }
  // Each node has it in memory now. Changes on one node are read on the others at once.
  for (let round = 1; round <= 6; round++) {
    const writer = round % 3;
    const changed = await whenAvailable(() => on[writer]!.call('document.update', { workspaceId: w.id, documentId: 'notes', ops: [{ op: 'set', path: '/text', value: `v${round}` }] }));
    for (const i of [0, 1, 2]) {
      const got = await on[i]!.call('document.get', { workspaceId: w.id, documentId: 'notes' });
      assert.equal(
        [got.content, got.version, got.heads],
        [{ text: `v${round}` }, changed.value.version, changed.value.heads],
        `round ${round}: node ${i + 1} reads the change made on node ${writer + 1}`,
      );
    }
  }
});

test('a node with a document in memory never answers it older than a change another node acknowledged, even when the news of it is late', async (ctx) => {
  const { c } = ctx;
  const { w, editors } = await workspace(ctx, [
    ['ann', 0],
    ['ann', 1],
  ]);
  const [owner, reader] = [editors['ann@0']!, editors['ann@1']!];
  await owner.call('document.create', { workspaceId: w.id, documentId: 'plan', title: 'Plan', content: { step: 'draft' } });
  const loaded = await reader.call('document.get', { workspaceId: w.id, documentId: 'plan' });
  assert.equal(loaded.content, { step: 'draft' });
  // The shared Redis goes down: node 1 still commits to the store and answers its client, but
  // node 2 does not hear of the commit (its news is lost with the outage).
  await c.redis[0]!.stop();
  let read: SharedDocument | Error;
  let changed: DocumentChangeResult;
  try {
    changed = await owner.call('document.update', { workspaceId: w.id, documentId: 'plan', ops: [{ op: 'set', path: '/step', value: 'final' }] });
    read = await reader.call('document.get', { workspaceId: w.id, documentId: 'plan' }).catch((e: Error) => e);
  } finally {
    await c.redis[0]!.restart();
  }
  if (read instanceof Error) {
    assert.is((read as ProtocolError).reason, 'UNAVAILABLE', `refused, if not answered: ${read.message}`);
  } else {
    assert.equal([read.content, read.version], [{ step: 'final' }, changed.version], 'node 2 answered with the document as it was before the acknowledged change');
  }
  // Once Redis is back (and node 1 has noted itself as the owner again), node 2 reads it too.
  const after = await whenAvailable(() => reader.call('document.get', { workspaceId: w.id, documentId: 'plan' }));
  assert.equal([after.value.content, after.value.version, after.value.heads], [{ step: 'final' }, changed.version, changed.heads]);
});

test.run();

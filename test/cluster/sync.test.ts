import * as Automerge from '@automerge/automerge';
import { Repo, type AutomergeUrl, type DocHandle } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { automergeUrlOf } from '../../src/sync/automergeUrl.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ c: InProcessCluster; repos: Repo[] }>('cluster: automerge-repo and JSON clients on different nodes converge');

test.before(async (ctx) => {
  ctx.c = await startCluster(2, { server: { documents: { maxChangesPerSecond: 100_000 } } });
  ctx.repos = [];
});

test.after(async (ctx) => {
  await Promise.all(ctx.repos.map((r) => r.shutdown().catch(() => {})));
  await ctx.c.close();
});

type State = { title?: string; builds?: Automerge.Counter; notes?: string[] };

const plain = (h: DocHandle<unknown>) => JSON.parse(JSON.stringify(h.doc())) as Record<string, unknown>;

test('a repo client on one node and JSON clients on another edit the same state and see the same content', async (ctx) => {
  const { c } = ctx;
  const lead = await c.client(0, 'sync', 'lead', ['agent']);
  const w = (await lead.call('workspace.create', { name: 'Across nodes', visibility: 'private' })) as { id: string };
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'ed', role: 'editor' });
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/title', value: 'Ship' }, { op: 'increment', path: '/builds' }] });
  // The repo client syncs through node 2, which does not own the workspace's state document.
  const token = await c.key('sync', 'ed', ['agent']);
  const syncUrl = c.nodes[1]!.url.replace(/\/v1$/, '/sync');
  const repo = new Repo({ network: [new WebSocketClientAdapter(`${syncUrl}?token=${encodeURIComponent(token)}`, 100)] });
  ctx.repos.push(repo);
  const h = await repo.find<State>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
  await waitFor(() => plain(h).title === 'Ship');
  h.change((d) => {
    d.builds!.increment(2);
    d.notes = ['from the repo client'];
  });
  // A JSON client on node 1 sees the repo client's change...
  await waitFor(async () => {
    const s = (await lead.call('workspace.getState', { workspaceId: w.id })) as { state: Record<string, unknown> };
    return (s.state.builds as number) === 3;
  });
  // ...and a JSON edit through node 2 reaches the repo client.
  const ed = await c.client(1, 'sync', 'ed', ['agent']);
  await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/title', value: 'Shipped' }] });
  await waitFor(() => plain(h).title === 'Shipped');
  const fromNode1 = (await lead.call('workspace.getState', { workspaceId: w.id })) as { state: Record<string, unknown>; heads: string[] };
  const fromNode2 = (await ed.call('workspace.getState', { workspaceId: w.id })) as { state: Record<string, unknown>; heads: string[] };
  assert.equal(fromNode1.state, { title: 'Shipped', builds: 3, notes: ['from the repo client'] });
  assert.equal(fromNode2.state, fromNode1.state, 'both nodes serve the same content');
  assert.equal(fromNode2.heads, fromNode1.heads, 'and the same heads');
  await waitFor(() => JSON.stringify(Automerge.getHeads(h.doc()).sort()) === JSON.stringify([...fromNode1.heads].sort()));
  assert.equal(plain(h), fromNode1.state, 'the repo client converged on the same content');
});

test.run();

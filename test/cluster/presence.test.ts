import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import type { RpcNotification } from '../../protocol/jsonrpc.js';
import { WORKSPACE_MESSAGE, WORKSPACE_PRESENCE, type Workspace } from '../../protocol/workspaces.js';
import { startProcessCluster, type ProcessCluster } from '../helpers/clusterProcess.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  c: ProcessCluster;
  lead: TroupeClient;
  w: Workspace;
  /** What lead (on node 1) was told: `change:principal` per presence notification. */
  told: string[];
}

const HEARTBEAT_MS = 200;

const test = suite<Ctx>('cluster: workspace presence and messages across nodes, and nodes that vanish');

test.before(async (ctx) => {
  ctx.c = await startProcessCluster({ nodes: 2, locks: 1, leaseMs: 2000, heartbeatMs: HEARTBEAT_MS });
  ctx.lead = await ctx.c.connect(0, await ctx.c.key('lead', ['agent']));
  ctx.w = await ctx.lead.call('workspace.create', { name: 'Across', visibility: 'private' });
  await ctx.lead.call('workspace.addMember', { workspaceId: ctx.w.id, principalId: 'bob', role: 'editor' });
  ctx.told = [];
  ctx.lead.on('notification', (n: RpcNotification) => {
    if (n.method === WORKSPACE_PRESENCE) ctx.told.push(`${n.params.change}:${n.params.principalId}`);
  });
  await ctx.lead.subscribe(`workspace:${ctx.w.id}`, () => {});
});

test.after(async (ctx) => {
  await ctx.c.close();
});

/** Connects bob to node 2 and makes him present in the workspace. */
async function bobOnNode2(ctx: Ctx): Promise<TroupeClient> {
  const bob = await ctx.c.connect(1, await ctx.c.key('bob', ['agent']));
  await bob.subscribe(`workspace:${ctx.w.id}`, () => {});
  return bob;
}

const present = async (client: TroupeClient, workspaceId: string) => (await client.call('workspace.presence', { workspaceId })).items.map((m) => m.principalId);
const count = (told: string[], what: string) => told.filter((x) => x === what).length;

test('members on different nodes see each other join, update and leave, and messages reach them', async (ctx) => {
  const { lead, w, told } = ctx;
  const bob = await bobOnNode2(ctx);
  const bobMessages: unknown[] = [];
  bob.on('notification', (n: RpcNotification) => {
    if (n.method === WORKSPACE_MESSAGE) bobMessages.push(n.params.message);
  });
  await waitFor(() => told.includes('joined:bob'));
  await waitFor(async () => (await present(bob, w.id)).join() === 'bob,lead');
  assert.equal(await present(lead, w.id), ['bob', 'lead'], 'node 1 lists the member present through node 2');

  await bob.call('workspace.setPresence', { workspaceId: w.id, status: 'busy', focus: { file: 'a.ts' } });
  await waitFor(() => told.includes('updated:bob'));
  const seen = (await lead.call('workspace.presence', { workspaceId: w.id })).items.find((m) => m.principalId === 'bob')!;
  assert.is(seen.status, 'busy');
  assert.equal(seen.focus, { file: 'a.ts' });

  const sent = await lead.call('workspace.broadcast', { workspaceId: w.id, message: { hello: 'all' }, excludeSelf: true });
  assert.is(sent.delivered, 1, 'the broadcast counts the connection on the other node');
  const direct = await lead.call('workspace.sendToMember', { workspaceId: w.id, principalId: 'bob', message: { hello: 'bob' } });
  assert.equal([direct.present, direct.delivered], [true, 1]);
  await waitFor(() => bobMessages.length === 2);
  assert.equal(bobMessages, [{ hello: 'all' }, { hello: 'bob' }]);
  // Both nodes count the messages sent through either.
  await bob.call('workspace.broadcast', { workspaceId: w.id, message: { from: 'bob' }, excludeSelf: true });
  for (const client of [lead, bob]) {
    await waitFor(async () => (await client.call('workspace.stats', { workspaceId: w.id })).messages === 3);
    const m = await client.call('workspace.collaborationMetrics', { workspaceId: w.id, periodSeconds: 3600 });
    assert.equal([m.messages, m.messagesPerMember], [3, { lead: 2, bob: 1 }], 'the metrics of either node count the messages of both');
  }

  await bob.close();
  await waitFor(() => told.includes('left:bob'));
  assert.equal(await present(lead, w.id), ['lead']);
});

test('a paused node\'s members leave once it is seen gone, and join again when it runs again', async (ctx) => {
  const { c, lead, w, told } = ctx;
  const bob = await bobOnNode2(ctx);
  await waitFor(() => count(told, 'joined:bob') === 2);
  await c.pause(1);
  try {
    await waitFor(() => count(told, 'left:bob') === 2, { timeoutMs: 50 * HEARTBEAT_MS });
    assert.equal(await present(lead, w.id), ['lead'], 'a member of a node that is gone is not listed');
  } finally {
    c.resume(1);
  }
  // Its socket stayed open through the pause: bob is still there, and everyone is told so.
  await waitFor(() => count(told, 'joined:bob') === 3, { timeoutMs: 50 * HEARTBEAT_MS });
  assert.equal(await present(lead, w.id), ['bob', 'lead']);
  await bob.close();
  await waitFor(() => count(told, 'left:bob') === 3);
});

test('a SIGKILLed node\'s members leave for everyone else, and are not listed again when it restarts', async (ctx) => {
  const { c, lead, w, told } = ctx;
  await bobOnNode2(ctx);
  await waitFor(() => count(told, 'joined:bob') === 4);
  await c.kill(1);
  await waitFor(() => count(told, 'left:bob') === 4, { timeoutMs: 50 * HEARTBEAT_MS });
  await c.start(1);
  await waitFor(async () => (await c.report(0)).nodes.length === 2);
  assert.equal(await present(lead, w.id), ['lead'], 'the restarted node has none of its previous run\'s members');
  const bob = await bobOnNode2(ctx);
  await waitFor(() => count(told, 'joined:bob') === 5);
  assert.equal(await present(lead, w.id), ['bob', 'lead']);
  await bob.close();
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { RpcNotification } from '../../protocol/jsonrpc.js';
import { MAX_PRESENCE_PAYLOAD_BYTES, WORKSPACE_MESSAGE, WORKSPACE_PRESENCE, type Workspace } from '../../protocol/workspaces.js';
import { refusal } from '../helpers/errors.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  n: number;
}

const test = suite<Ctx>('workspace presence and messages over WebSocket');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

/** Every notification a client receives, by method. */
function inbox(client: TroupeClient) {
  const notes: RpcNotification[] = [];
  client.on('notification', (n: RpcNotification) => notes.push(n));
  return {
    notes,
    presence: () => notes.filter((n) => n.method === WORKSPACE_PRESENCE).map((n) => `${n.params.change}:${n.params.principalId}`),
    messages: () => notes.filter((n) => n.method === WORKSPACE_MESSAGE).map((n) => n.params),
  };
}

/** A tenant with a private workspace of lead's, bob (editor) and cat (viewer) its members, and dan outside. */
async function room(ctx: Ctx) {
  const tenant = `p${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['agent']);
  const bob = await ctx.ts.client(tenant, 'bob', ['agent']);
  const cat = await ctx.ts.client(tenant, 'cat', ['agent']);
  const dan = await ctx.ts.client(tenant, 'dan', ['agent']);
  const w: Workspace = await lead.call('workspace.create', { name: 'Room', visibility: 'private' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'editor' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'viewer' });
  return { tenant, w, lead, bob, cat, dan };
}

test('members join when they subscribe and leave when they unsubscribe or disconnect; everyone present is told', async (ctx) => {
  const { tenant, w, lead, bob } = await room(ctx);
  const l = inbox(lead);
  const b = inbox(bob);
  const topic = `workspace:${w.id}`;
  await lead.subscribe(topic, () => {});
  await waitFor(() => l.presence().includes('joined:lead'));
  const sub = await bob.subscribe(topic, () => {});
  await waitFor(() => l.presence().includes('joined:bob') && b.presence().includes('joined:bob'));
  const p = await lead.call('workspace.presence', { workspaceId: w.id });
  assert.equal(
    p.items.map((x) => [x.principalId, x.role, x.status, x.connections]),
    [
      ['bob', 'editor', 'active', 1],
      ['lead', 'owner', 'active', 1],
    ],
  );
  // A second connection of bob's does not join again; its loss does not make bob leave.
  const bob2 = await ctx.ts.client(tenant, 'bob', ['agent']);
  await bob2.subscribe(topic, () => {});
  await waitFor(async () => (await lead.call('workspace.presence', { workspaceId: w.id })).items.find((x) => x.principalId === 'bob')?.connections === 2);
  await bob2.close();
  await waitFor(async () => (await lead.call('workspace.presence', { workspaceId: w.id })).items.find((x) => x.principalId === 'bob')?.connections === 1);
  assert.equal(l.presence().filter((x) => x.endsWith(':bob')), ['joined:bob']);

  await sub.unsubscribe();
  await waitFor(() => l.presence().includes('left:bob'));
  assert.equal((await lead.call('workspace.presence', { workspaceId: w.id })).items.map((x) => x.principalId), ['lead']);
  await bob.subscribe(topic, () => {});
  await waitFor(() => l.presence().filter((x) => x === 'joined:bob').length === 2);
  await bob.close();
  await waitFor(() => l.presence().filter((x) => x === 'left:bob').length === 2);
  const left = l.notes.filter((n) => n.method === WORKSPACE_PRESENCE && n.params.change === 'left').at(-1)!;
  assert.is(left.params.presence, null);
  assert.is(left.params.workspaceId, w.id);
});

test('setPresence sets status, cursor and focus (joining if needed), bounded in size, and stores nothing', async (ctx) => {
  const { tenant, w, lead, bob, dan } = await room(ctx);
  const l = inbox(lead);
  await lead.subscribe(`workspace:${w.id}`, () => {});
  const head = await ctx.ts.store.headPosition(tenant);
  const me = await bob.call('workspace.setPresence', { workspaceId: w.id, status: 'busy', cursor: { line: 3, col: 7 }, focus: 'docs/readme' });
  assert.equal(
    { ws: me.workspaceId, who: me.principalId, role: me.role, status: me.status, cursor: me.cursor, focus: me.focus },
    { ws: w.id, who: 'bob', role: 'editor', status: 'busy', cursor: { line: 3, col: 7 }, focus: 'docs/readme' },
  );
  await waitFor(() => l.presence().includes('joined:bob') && l.presence().includes('updated:bob'));
  const updated = l.notes.find((n) => n.method === WORKSPACE_PRESENCE && n.params.change === 'updated')!;
  assert.equal((updated.params.presence as { cursor: unknown }).cursor, { line: 3, col: 7 });
  // Only what is given changes.
  const again = await bob.call('workspace.setPresence', { workspaceId: w.id, status: 'idle' });
  assert.equal([again.status, again.cursor, again.focus], ['idle', { line: 3, col: 7 }, 'docs/readme']);

  const big = 'x'.repeat(MAX_PRESENCE_PAYLOAD_BYTES);
  const e = await refusal(bob.call('workspace.setPresence', { workspaceId: w.id, status: 'active', cursor: big }), ErrorCodes.INVALID_PARAMS);
  assert.match(e.message, /cursor must be at most 2048 bytes of JSON; it has 2050/);
  await refusal(bob.call('workspace.setPresence', { workspaceId: w.id, status: 'active', focus: { deep: [big] } }), ErrorCodes.INVALID_PARAMS);
  await refusal(bob.call('workspace.setPresence', { workspaceId: w.id, status: 'asleep' } as never), ErrorCodes.INVALID_PARAMS);
  await refusal(bob.call('workspace.setPresence', { workspaceId: w.id, status: 'active', mood: 'good' } as never), ErrorCodes.INVALID_PARAMS);
  const now = (await lead.call('workspace.presence', { workspaceId: w.id })).items.find((x) => x.principalId === 'bob')!;
  assert.equal([now.status, now.cursor], ['idle', { line: 3, col: 7 }], 'refused updates changed nothing');
  // A payload right at the limit is fine.
  await bob.call('workspace.setPresence', { workspaceId: w.id, status: 'active', cursor: 'y'.repeat(MAX_PRESENCE_PAYLOAD_BYTES - 2) });

  await refusal(dan.call('workspace.setPresence', { workspaceId: w.id, status: 'active' }), ErrorCodes.NOT_FOUND);
  assert.is(await ctx.ts.store.headPosition(tenant), head, 'presence is not history');
  // Present through setPresence until the connection closes.
  await bob.close();
  await waitFor(() => l.presence().includes('left:bob'));
});

test('broadcast reaches every present member, optionally not the sender; sendToMember reaches one member', async (ctx) => {
  const { tenant, w, lead, bob, cat, dan } = await room(ctx);
  const l = inbox(lead);
  const b = inbox(bob);
  const c = inbox(cat);
  for (const x of [lead, bob, cat]) await x.subscribe(`workspace:${w.id}`, () => {});
  const head = await ctx.ts.store.headPosition(tenant);

  const r = await bob.call('workspace.broadcast', { workspaceId: w.id, message: { text: 'build is green' } });
  assert.is(r.delivered, 3);
  await waitFor(() => l.messages().length === 1 && b.messages().length === 1 && c.messages().length === 1);
  assert.equal(
    { from: l.messages()[0]!.from, kind: l.messages()[0]!.kind, message: l.messages()[0]!.message, id: l.messages()[0]!.messageId },
    { from: 'bob', kind: 'broadcast', message: { text: 'build is green' }, id: r.messageId },
  );

  const r2 = await bob.call('workspace.broadcast', { workspaceId: w.id, message: 'quiet', excludeSelf: true });
  assert.is(r2.delivered, 2);
  await waitFor(() => l.messages().length === 2 && c.messages().length === 2);
  await bob.call('ping');
  assert.is(b.messages().length, 1, 'the sender did not get its own message');

  const d = await bob.call('workspace.sendToMember', { workspaceId: w.id, principalId: 'cat', message: 'psst' });
  assert.equal({ delivered: d.delivered, present: d.present }, { delivered: 1, present: true });
  await waitFor(() => c.messages().length === 3);
  assert.equal({ ...c.messages()[2], at: undefined, messageId: undefined }, { workspaceId: w.id, from: 'bob', kind: 'direct', to: 'cat', message: 'psst', at: undefined, messageId: undefined });
  await lead.call('ping');
  assert.is(l.messages().length, 2, 'nobody else got it');

  // A member who is not present gets nothing; a non-member cannot be addressed.
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'eve', role: 'viewer' });
  assert.equal(await bob.call('workspace.sendToMember', { workspaceId: w.id, principalId: 'eve', message: 'hi' }).then((x) => [x.delivered, x.present]), [0, false]);
  await refusal(bob.call('workspace.sendToMember', { workspaceId: w.id, principalId: 'dan', message: 'hi' }), ErrorCodes.NOT_FOUND);
  // Viewers may not talk; strangers may not know.
  await refusal(cat.call('workspace.broadcast', { workspaceId: w.id, message: 'me too' }), ErrorCodes.FORBIDDEN);
  await refusal(dan.call('workspace.broadcast', { workspaceId: w.id, message: 'hello?' }), ErrorCodes.NOT_FOUND);
  // Bounded, and required.
  const big = await refusal(bob.call('workspace.broadcast', { workspaceId: w.id, message: 'z'.repeat(70_000) }), ErrorCodes.INVALID_PARAMS);
  assert.match(big.message, /message must be at most 65536 bytes/);
  await refusal(bob.call('workspace.broadcast', { workspaceId: w.id } as never), ErrorCodes.INVALID_PARAMS);

  assert.is(await ctx.ts.store.headPosition(tenant), head + 1, 'only the member added was stored: messages are not');
  const m = await lead.call('workspace.collaborationMetrics', { workspaceId: w.id });
  assert.equal([m.messages, m.messagesPerMember], [4, { bob: 4 }]);
  assert.is((await lead.call('workspace.stats', { workspaceId: w.id })).messages, 4);
});

test('a member removed while present leaves at once: the others see it leave, and it gets no more messages', async (ctx) => {
  const { w, lead, bob, cat } = await room(ctx);
  const l = inbox(lead);
  const c = inbox(cat);
  await lead.subscribe(`workspace:${w.id}`, () => {});
  await cat.subscribe(`workspace:${w.id}`, () => {});
  await cat.call('workspace.setPresence', { workspaceId: w.id, status: 'active' });
  await waitFor(() => l.presence().includes('joined:cat'));
  await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'cat' });
  await waitFor(() => l.presence().includes('left:cat'));
  assert.equal((await lead.call('workspace.presence', { workspaceId: w.id })).items.map((x) => x.principalId), ['lead']);
  const r = await bob.call('workspace.broadcast', { workspaceId: w.id, message: 'after' });
  assert.is(r.delivered, 1);
  await cat.call('ping');
  assert.equal(c.messages(), []);
  await refusal(cat.call('workspace.setPresence', { workspaceId: w.id, status: 'active' }), ErrorCodes.NOT_FOUND);
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { streamOf } from '../../actors/ActorKind.js';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { RpcNotification } from '../../protocol/jsonrpc.js';
import type { ActorEvent, Principal } from '../../protocol/model.js';
import type { Connection } from '../../src/server/Connection.js';
import { SUBSCRIPTION_REVOKED, type Workspace } from '../../protocol/workspaces.js';
import { refusal } from '../helpers/errors.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  n: number;
}

interface Team {
  tenant: string;
  /** A tenant admin: acts as owner of every workspace. */
  boss: TroupeClient;
  lead: TroupeClient;
  bob: TroupeClient;
  cat: TroupeClient;
  dan: TroupeClient;
  /** A tenant observer. */
  eye: TroupeClient;
}

const test = suite<Ctx>('workspaces over WebSocket: lifecycle, members, permissions, discovery');

test.before(async (ctx) => {
  ctx.ts = await startServer();
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

/** A fresh tenant with a few principals, so tests do not see each other's workspaces. */
async function team(ctx: Ctx): Promise<Team> {
  const tenant = `ws${++ctx.n}`;
  const c = (id: string, roles: Principal['roles']) => ctx.ts.client(tenant, id, roles);
  return {
    tenant,
    boss: await c('boss', ['admin']),
    lead: await c('lead', ['agent']),
    bob: await c('bob', ['agent']),
    cat: await c('cat', ['agent']),
    dan: await c('dan', ['agent']),
    eye: await c('eye', ['observer']),
  };
}

function principal(tenant: string, id: string, roles: Principal['roles'] = ['agent']): Principal {
  return { tenantId: tenant, principalId: id, roles };
}

/** Collects events of a subscription and every notification of a client. */
function recorder(client: TroupeClient) {
  const events: ActorEvent[] = [];
  const notes: RpcNotification[] = [];
  client.on('notification', (n: RpcNotification) => notes.push(n));
  return { events, notes, handler: (e: ActorEvent) => events.push(e) };
}

async function workspace(client: TroupeClient, extra: Record<string, unknown> = {}): Promise<Workspace> {
  return client.call('workspace.create', { name: 'Release 7', visibility: 'private', ...extra } as never);
}

test('creates a workspace whose creator is its owner, reads, updates with expectedVersion, archives and deletes it', async (ctx) => {
  const { lead, bob } = await team(ctx);
  const w = await workspace(lead, { type: 'release', description: 'Ship 7', visibility: 'team', maxMembers: 5, settings: { repo: 'x' }, tags: ['go'] });
  assert.equal(
    { name: w.name, type: w.type, description: w.description, visibility: w.visibility, status: w.status, maxMembers: w.maxMembers, memberCount: w.memberCount, version: w.version, createdBy: w.createdBy },
    { name: 'Release 7', type: 'release', description: 'Ship 7', visibility: 'team', status: 'active', maxMembers: 5, memberCount: 1, version: 1, createdBy: 'lead' },
  );
  assert.equal(w.settings, { repo: 'x' });
  assert.equal(await lead.call('workspace.get', { workspaceId: w.id }), { ...w, role: 'owner' });
  assert.equal((await bob.call('workspace.get', { workspaceId: w.id })).role, null, 'a team workspace is readable by the tenant');

  const u = await lead.call('workspace.update', { workspaceId: w.id, expectedVersion: 1, name: 'Release 7.1', tags: ['go', 'ci'] });
  assert.is(u.name, 'Release 7.1');
  assert.equal(u.tags, ['go', 'ci']);
  assert.is(u.description, 'Ship 7', 'fields not named stay');
  assert.is(u.version, 2);
  const stale = await refusal(lead.call('workspace.update', { workspaceId: w.id, expectedVersion: 1, name: 'lost' }), ErrorCodes.VERSION_MISMATCH);
  assert.is(stale.data.actualVersion, 2);
  await refusal(lead.call('workspace.update', { workspaceId: w.id }), ErrorCodes.INVALID_PARAMS);

  const a = await lead.call('workspace.archive', { workspaceId: w.id });
  assert.is(a.status, 'archived');
  assert.type(a.archivedAt, 'string');
  const ro = await refusal(lead.call('workspace.update', { workspaceId: w.id, name: 'after' }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.match(ro.message, /archived and read-only/);
  assert.is(ro.data.status, 'archived');
  await refusal(lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer' }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(lead.call('workspace.broadcast', { workspaceId: w.id, message: 'hi' }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.is((await lead.call('workspace.get', { workspaceId: w.id })).name, 'Release 7.1', 'reads still work');

  await refusal(bob.call('workspace.delete', { workspaceId: w.id }), ErrorCodes.FORBIDDEN);
  const d = await lead.call('workspace.delete', { workspaceId: w.id });
  assert.equal(d, { id: w.id, deleted: true, version: 4 });
  await refusal(lead.call('workspace.get', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(lead.call('workspace.delete', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
});

test('idempotent create: the same key and params give the same workspace, other params are refused', async (ctx) => {
  const { lead } = await team(ctx);
  const a = await workspace(lead, { idempotencyKey: 'k1' });
  const b = await workspace(lead, { idempotencyKey: 'k1' });
  assert.is(b.id, a.id);
  await refusal(workspace(lead, { idempotencyKey: 'k1', name: 'Other' }), ErrorCodes.IDEMPOTENCY_MISMATCH);
});

test('only admins and agents create workspaces', async (ctx) => {
  const { eye, boss, tenant } = await team(ctx);
  const head = await ctx.ts.store.headPosition(tenant);
  await refusal(workspace(eye), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition(tenant), head);
  assert.is((await workspace(boss)).createdBy, 'boss');
});

test('permissions matrix: viewer, commenter, editor, admin, owner, extra permissions, tenant admins and observers', async (ctx) => {
  const { tenant, lead, bob, cat, dan, boss } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'commenter' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'dan', role: 'editor' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'ann', role: 'admin' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'eye', role: 'editor' });
  const access = ctx.ts.server.app.workspaces!;
  const expected: Record<string, string[]> = {
    lead: ['workspace:read', 'workspace:write', 'member:manage', 'state:write', 'doc:create', 'doc:write', 'message:send'],
    ann: ['workspace:read', 'workspace:write', 'member:manage', 'state:write', 'doc:create', 'doc:write', 'message:send'],
    dan: ['workspace:read', 'state:write', 'doc:create', 'doc:write', 'message:send'],
    cat: ['workspace:read', 'message:send'],
    bob: ['workspace:read'],
  };
  const all = ['workspace:read', 'workspace:write', 'member:manage', 'state:write', 'doc:create', 'doc:write', 'message:send'] as const;
  for (const [who, allowed] of Object.entries(expected)) {
    for (const perm of all) {
      const p = access.require(principal(tenant, who), w.id, perm);
      if (allowed.includes(perm)) await p;
      else assert.is((await refusal(p, ErrorCodes.FORBIDDEN)).data.permission, perm, `${who} ${perm}`);
    }
  }
  // An observer member only reads, whatever its role; a tenant admin does everything.
  await access.require(principal(tenant, 'eye', ['observer']), w.id, 'workspace:read');
  await refusal(access.require(principal(tenant, 'eye', ['observer']), w.id, 'doc:write'), ErrorCodes.FORBIDDEN);
  for (const perm of all) await access.require(principal(tenant, 'boss', ['admin']), w.id, perm);
  assert.is(await access.roleOf(principal(tenant, 'boss', ['admin']), w.id), 'owner');
  assert.is(await access.roleOf(principal(tenant, 'dan'), w.id), 'editor');
  assert.is(await access.roleOf(principal(tenant, 'zed'), w.id), null);

  // Over the wire: the viewer's write is refused and nothing changes.
  const before = await lead.call('workspace.get', { workspaceId: w.id });
  const head = await ctx.ts.store.headPosition(tenant);
  const e = await refusal(bob.call('workspace.update', { workspaceId: w.id, name: 'hijack' }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /lack workspace:write/);
  await refusal(bob.call('workspace.addMember', { workspaceId: w.id, principalId: 'zed', role: 'viewer' }), ErrorCodes.FORBIDDEN);
  await refusal(bob.call('workspace.broadcast', { workspaceId: w.id, message: 'hi' }), ErrorCodes.FORBIDDEN);
  await refusal(cat.call('workspace.update', { workspaceId: w.id, name: 'hijack' }), ErrorCodes.FORBIDDEN);
  await refusal(dan.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'bob', role: 'editor' }), ErrorCodes.FORBIDDEN);
  await refusal(dan.call('workspace.archive', { workspaceId: w.id }), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition(tenant), head, 'nothing was written');
  assert.equal(await lead.call('workspace.get', { workspaceId: w.id }), before);
  // The commenter and the editor may talk.
  assert.is((await cat.call('workspace.broadcast', { workspaceId: w.id, message: 'note' })).delivered, 0);
  await dan.call('workspace.broadcast', { workspaceId: w.id, message: 'note' });

  // An extra permission: the viewer may now manage members, but not owners.
  const m = await lead.call('workspace.setMemberPermissions', { workspaceId: w.id, principalId: 'bob', permissions: ['member:manage'] });
  assert.equal(m.permissions, ['member:manage']);
  assert.equal(m.effectivePermissions.sort(), ['member:manage', 'workspace:read']);
  await bob.call('workspace.addMember', { workspaceId: w.id, principalId: 'zed', role: 'viewer' });
  await refusal(bob.call('workspace.addMember', { workspaceId: w.id, principalId: 'yan', role: 'owner' }), ErrorCodes.FORBIDDEN);
  await refusal(bob.call('workspace.removeMember', { workspaceId: w.id, principalId: 'lead' }), ErrorCodes.FORBIDDEN);
  await refusal(bob.call('workspace.update', { workspaceId: w.id, name: 'still no' }), ErrorCodes.FORBIDDEN);
  // The tenant admin acts as an owner without being a member.
  await boss.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'dan', role: 'owner' });
  assert.is((await boss.call('workspace.get', { workspaceId: w.id })).role, 'owner');
});

test('owners are protected: only owners change owners, and the last owner stays', async (ctx) => {
  const { lead, bob, tenant } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'admin' });
  await refusal(bob.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'lead', role: 'viewer' }), ErrorCodes.FORBIDDEN);
  await refusal(bob.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'bob', role: 'owner' }), ErrorCodes.FORBIDDEN);
  const head = await ctx.ts.store.headPosition(tenant);
  const last = await refusal(lead.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'lead', role: 'editor' }), ErrorCodes.FORBIDDEN);
  assert.match(last.message, /last owner/);
  await refusal(lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'lead' }), ErrorCodes.FORBIDDEN);
  assert.is(await ctx.ts.store.headPosition(tenant), head);
  await refusal(lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'nobody' }), ErrorCodes.NOT_FOUND);
  await refusal(lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer' }), ErrorCodes.ALREADY_EXISTS);
  // A member may leave on its own.
  await bob.call('workspace.removeMember', { workspaceId: w.id, principalId: 'bob' });
  assert.equal((await lead.call('workspace.listMembers', { workspaceId: w.id })).items.map((m) => m.principalId), ['lead']);
});

test('a private workspace does not exist for non-members: NOT_FOUND everywhere, absent from search; other tenants never see it', async (ctx) => {
  const { lead, bob, eye, boss } = await team(ctx);
  const w = await workspace(lead, { name: 'Secret plan' });
  const tenant = (await lead.call('session.whoami')).tenantId;
  const head = await ctx.ts.store.headPosition(tenant);
  for (const c of [bob, eye]) {
    const e = await refusal(c.call('workspace.get', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    assert.is(e.message, `Workspace ${w.id} does not exist.`, 'the same words as for a workspace that does not exist');
    await refusal(c.call('workspace.listMembers', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.presence', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.stats', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.memberActivity', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.update', { workspaceId: w.id, name: 'x' }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'owner' }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.setPresence', { workspaceId: w.id, status: 'active' }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('workspace.broadcast', { workspaceId: w.id, message: 'x' }), ErrorCodes.NOT_FOUND);
    await refusal(c.call('subscribe', { topic: `workspace:${w.id}` }), ErrorCodes.NOT_FOUND);
    assert.equal((await c.call('workspace.search', { query: 'secret' })).items, []);
    assert.equal((await c.call('workspace.listForAgent', { agentId: 'lead' })).items, []);
  }
  assert.is(await ctx.ts.store.headPosition(tenant), head);
  assert.equal((await boss.call('workspace.search', { query: 'secret' })).items.map((x) => x.id), [w.id], 'tenant admins see everything');
  const stranger = await ctx.ts.client('elsewhere', 'lead', ['admin']);
  await refusal(stranger.call('workspace.get', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
  assert.equal((await stranger.call('workspace.search', {})).items, []);
  // A team workspace is readable, but only members follow it.
  const team_ = await workspace(lead, { visibility: 'team' });
  await bob.call('workspace.get', { workspaceId: team_.id });
  await refusal(bob.call('subscribe', { topic: `workspace:${team_.id}` }), ErrorCodes.FORBIDDEN);
});

test('maxMembers is enforced with QUOTA_EXCEEDED and nothing added', async (ctx) => {
  const { lead, tenant } = await team(ctx);
  const w = await workspace(lead, { maxMembers: 2 });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'editor' });
  const head = await ctx.ts.store.headPosition(tenant);
  const e = await refusal(lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'viewer' }), ErrorCodes.QUOTA_EXCEEDED);
  assert.match(e.message, /has 2 members, its maxMembers/);
  assert.equal({ limit: e.data.limit, used: e.data.used }, { limit: 2, used: 2 });
  await refusal(lead.call('workspace.update', { workspaceId: w.id, maxMembers: 1 }), ErrorCodes.INVALID_PARAMS);
  assert.is(await ctx.ts.store.headPosition(tenant), head);
  await lead.call('workspace.update', { workspaceId: w.id, maxMembers: 3 });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'viewer' });
  assert.is((await lead.call('workspace.get', { workspaceId: w.id })).memberCount, 3);
});

test('a member removed mid-session is cut off at once: its subscription ends and its next call is refused', async (ctx) => {
  const { lead, bob, tenant } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'editor' });
  const revoked: string[] = [];
  ctx.ts.server.app.workspaces!.onRevoked((t, id, who) => {
    if (t === tenant && id === w.id) revoked.push(who);
  });
  const mine = recorder(lead);
  const his = recorder(bob);
  await lead.subscribe(`workspace:${w.id}`, mine.handler);
  await bob.subscribe(`workspace:${w.id}`, his.handler);
  // A document topic of the workspace (subscribed on the hub directly), which must end too.
  const hub = ctx.ts.server.app.hub;
  await hub.subscribe(await connOf(ctx, bob), tenant, `document:${w.id}:notes`);
  await lead.call('workspace.update', { workspaceId: w.id, name: 'one' });
  await waitFor(() => his.events.some((e) => e.type === 'workspace.update'));

  await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'bob' });
  assert.equal(revoked, ['bob'], 'the listeners heard of it within the commit');
  await waitFor(() => his.notes.some((n) => n.method === SUBSCRIPTION_REVOKED));
  const ends = his.notes.filter((n) => n.method === SUBSCRIPTION_REVOKED).map((n) => n.params.topic).sort();
  assert.equal(ends, [`document:${w.id}:notes`, `workspace:${w.id}`].sort());
  assert.is(hub.endSubscriptions(tenant, () => true, (p) => p?.principalId === 'bob').length, 0, 'nothing of bob is left on the workspace topics');

  await lead.call('workspace.update', { workspaceId: w.id, name: 'two' });
  await waitFor(() => mine.events.some((e) => e.type === 'workspace.update' && (e.data.changes as { name?: string }).name === 'two'));
  await bob.call('ping');
  assert.not.ok(his.events.some((e) => (e.data.changes as { name?: string } | undefined)?.name === 'two'), 'the removed member got nothing after its removal');
  await refusal(bob.call('workspace.get', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(bob.call('workspace.broadcast', { workspaceId: w.id, message: 'x' }), ErrorCodes.NOT_FOUND);
  await refusal(bob.call('subscribe', { topic: `workspace:${w.id}` }), ErrorCodes.NOT_FOUND);
  await refusal(ctx.ts.server.app.workspaces!.require(principal(tenant, 'bob'), w.id, 'doc:write'), ErrorCodes.NOT_FOUND);
});

test('a role lowered mid-session applies to the very next call; the member keeps following the workspace', async (ctx) => {
  const { lead, dan, tenant } = await team(ctx);
  const w = await workspace(lead, { visibility: 'team' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'dan', role: 'editor' });
  const revoked: string[] = [];
  ctx.ts.server.app.workspaces!.onRevoked((t, id, who) => {
    if (t === tenant && id === w.id) revoked.push(who);
  });
  const his = recorder(dan);
  await dan.subscribe(`workspace:${w.id}`, his.handler);
  await dan.call('workspace.broadcast', { workspaceId: w.id, message: 'before' });
  await ctx.ts.server.app.workspaces!.require(principal(tenant, 'dan'), w.id, 'doc:write');

  await lead.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'dan', role: 'viewer' });
  assert.equal(revoked, ['dan']);
  await refusal(dan.call('workspace.broadcast', { workspaceId: w.id, message: 'after' }), ErrorCodes.FORBIDDEN);
  await refusal(ctx.ts.server.app.workspaces!.require(principal(tenant, 'dan'), w.id, 'doc:write'), ErrorCodes.FORBIDDEN);
  await lead.call('workspace.update', { workspaceId: w.id, name: 'still followed' });
  await waitFor(() => his.events.some((e) => e.type === 'workspace.update'));
  assert.not.ok(his.notes.some((n) => n.method === SUBSCRIPTION_REVOKED));
  // Extra permissions taken away count as a loss too.
  await lead.call('workspace.setMemberPermissions', { workspaceId: w.id, principalId: 'dan', permissions: ['message:send'] });
  await dan.call('workspace.broadcast', { workspaceId: w.id, message: 'granted' });
  await lead.call('workspace.setMemberPermissions', { workspaceId: w.id, principalId: 'dan', permissions: [] });
  assert.equal(revoked, ['dan', 'dan']);
});

test('removing one member leaves others alone, also readers of a team workspace who follow its documents', async (ctx) => {
  const { lead, bob, cat, tenant } = await team(ctx);
  const w = await workspace(lead, { visibility: 'team' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'editor' });
  const hub = ctx.ts.server.app.hub;
  // cat is no member: a reader through visibility, following a document topic.
  await hub.subscribe(await connOf(ctx, cat), tenant, `document:${w.id}:notes`);
  await hub.subscribe(await connOf(ctx, bob), tenant, `document:${w.id}:notes`);
  await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'bob' });
  assert.is(hub.endSubscriptions(tenant, () => true, (p) => p?.principalId === 'bob').length, 0, 'bob lost his');
  assert.is(hub.endSubscriptions(tenant, () => true, (p) => p?.principalId === 'cat').length, 1, 'cat kept hers');
  // A removed member of a team workspace may still read it, but no longer follow it.
  await bob.call('workspace.get', { workspaceId: w.id });
  await refusal(bob.call('subscribe', { topic: `workspace:${w.id}` }), ErrorCodes.FORBIDDEN);
});

test('a member leaving on its own gets its reply before its subscription is revoked', async (ctx) => {
  const { lead, tenant } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer' });
  const bob = await RawSocket.open(ctx.ts.url, await ctx.ts.key(tenant, 'bob', ['agent']));
  try {
    await bob.ok('subscribe', { topic: `workspace:${w.id}` });
    const from = bob.frames.length;
    const reply = await bob.call('workspace.removeMember', { workspaceId: w.id, principalId: 'bob' }, 'leave');
    assert.ok(reply.result);
    await bob.frame((f) => f.msg?.method === SUBSCRIPTION_REVOKED, from);
    const order = bob.frames.slice(from).map((f) => (f.msg.id === 'leave' ? 'reply' : f.msg.method)).filter((m) => m !== 'workspace.presence');
    assert.equal(order, ['reply', 'subscription.event', SUBSCRIPTION_REVOKED]);
  } finally {
    await bob.close();
  }
});

test('deleting a workspace ends every subscription to it', async (ctx) => {
  const { lead, bob } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer' });
  const mine = recorder(lead);
  const his = recorder(bob);
  await lead.subscribe(`workspace:${w.id}`, mine.handler);
  await bob.subscribe(`workspace:${w.id}`, his.handler);
  await lead.call('workspace.delete', { workspaceId: w.id });
  for (const r of [mine, his]) {
    await waitFor(() => r.notes.some((n) => n.method === SUBSCRIPTION_REVOKED && /was deleted/.test(String(n.params.reason))));
    assert.ok(r.events.some((e) => e.type === 'workspace.delete'), 'the deletion itself is delivered first');
  }
});

test('listForAgent, search, stats and recommended', async (ctx) => {
  const { lead, bob, cat, boss, tenant } = await team(ctx);
  const a = await workspace(lead, { name: 'Go backend', visibility: 'team', tags: ['go'], type: 'code' });
  const b = await workspace(lead, { name: 'Docs', visibility: 'public', settings: { capabilities: ['writing'] } });
  const c = await workspace(bob, { name: 'Bob private', visibility: 'private' });
  const d = await workspace(cat, { name: 'Cat team', visibility: 'team', tags: ['rust'] });
  await lead.call('workspace.addMember', { workspaceId: a.id, principalId: 'bob', role: 'editor' });
  await cat.call('workspace.addMember', { workspaceId: d.id, principalId: 'lead', role: 'viewer' });

  const leads = await lead.call('workspace.listForAgent', {});
  assert.equal(leads.items.map((x) => [x.id, x.role]), [[d.id, 'viewer'], [b.id, 'owner'], [a.id, 'owner']], 'newest first');
  assert.equal((await lead.call('workspace.listForAgent', { role: 'viewer' })).items.map((x) => x.id), [d.id]);
  // Another agent's workspaces: only those the caller may see.
  assert.equal((await lead.call('workspace.listForAgent', { agentId: 'bob' })).items.map((x) => x.id), [a.id]);
  assert.equal((await boss.call('workspace.listForAgent', { agentId: 'bob' })).items.map((x) => x.id), [c.id, a.id]);
  const page1 = await lead.call('workspace.listForAgent', { limit: 2 });
  assert.is(page1.items.length, 2);
  const page2 = await lead.call('workspace.listForAgent', { limit: 2, cursor: page1.nextCursor! });
  assert.equal(page2.items.map((x) => x.id), [a.id]);
  assert.is(page2.nextCursor, null);
  await refusal(lead.call('workspace.listForAgent', { cursor: 'nonsense' }), ErrorCodes.INVALID_PARAMS);

  assert.equal((await lead.call('workspace.search', { query: 'GO' })).items.map((x) => x.id), [a.id]);
  assert.equal((await lead.call('workspace.search', { type: 'code' })).items.map((x) => x.id), [a.id]);
  assert.equal((await lead.call('workspace.search', { visibility: 'public' })).items.map((x) => x.id), [b.id]);
  assert.equal((await lead.call('workspace.search', { tag: 'rust' })).items.map((x) => x.id), [d.id]);
  assert.equal((await lead.call('workspace.search', {})).items.map((x) => x.id), [d.id, b.id, a.id], 'never the private workspace of another');
  await lead.call('workspace.archive', { workspaceId: b.id });
  assert.equal((await lead.call('workspace.search', { status: 'archived' })).items.map((x) => x.id), [b.id]);

  const s = await lead.call('workspace.stats', { workspaceId: a.id });
  assert.equal(
    { members: s.members, byRole: s.membersByRole, present: s.present, documents: s.documents, status: s.status, version: s.version },
    { members: 2, byRole: { owner: 1, admin: 0, editor: 1, commenter: 0, viewer: 0 }, present: 0, documents: 0, status: 'active', version: 2 },
  );

  // Dan shares a workspace with bob, and has the rust capability.
  const dan = await ctx.ts.client(tenant, 'dan', ['agent']);
  await dan.call('agent.register', { capabilities: ['Rust', 'writing'] });
  await lead.call('workspace.addMember', { workspaceId: a.id, principalId: 'dan', role: 'viewer' });
  const rec = await dan.call('workspace.recommended', {});
  assert.is(rec.agentId, 'dan');
  assert.match(rec.scoring, /3 × shared members/);
  const byId = new Map(rec.items.map((r) => [r.workspace.id, r]));
  assert.not.ok(byId.has(a.id), 'not where it is a member already');
  assert.not.ok(byId.has(b.id), 'not archived ones');
  assert.not.ok(byId.has(c.id), 'never private ones');
  const cd = byId.get(d.id)!;
  assert.equal(cd.reasons.sharedMembers, ['lead'], 'lead is in a workspace with dan');
  assert.equal(cd.reasons.matchedCapabilities, ['rust']);
  assert.ok(cd.reasons.recentActivity > 0.99);
  assert.is(cd.score, Math.round((3 + 2 + cd.reasons.recentActivity) * 1000) / 1000);
  await refusal(dan.call('workspace.recommended', { agentId: 'lead' }), ErrorCodes.FORBIDDEN);
  assert.is((await boss.call('workspace.recommended', { agentId: 'dan' })).agentId, 'dan');
});

test('memberActivity and collaborationMetrics count changes per member and per path, documents included', async (ctx) => {
  const { lead, bob, tenant } = await team(ctx);
  const w = await workspace(lead);
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'admin' });
  await bob.call('workspace.update', { workspaceId: w.id, name: 'n1', description: 'd' });
  await bob.call('workspace.update', { workspaceId: w.id, name: 'n2' });
  await bob.call('workspace.broadcast', { workspaceId: w.id, message: 'hello' });
  // A document of the workspace, as the document actors store them (`data.paths` of what changed).
  const now = Date.now();
  const stream = streamOf({ tenant, kind: 'document', id: `${w.id}:notes` });
  const doc = (n: number, paths: unknown, by: string) => ({
    id: `doc-${tenant}-${n}`,
    type: 'document.update',
    data: { type: 'document.update', paths },
    meta: { at: now, principal: by },
  });
  const [out] = await ctx.ts.store.commit([
    {
      stream,
      tenant,
      kind: 'document',
      actorId: `${w.id}:notes`,
      expectedVersion: 0,
      epoch: 0,
      events: [doc(1, ['/title', ['body', 0]], 'bob'), doc(2, ['/title'], 'lead')],
      topics: [[], []],
    },
  ]);
  assert.ok(out!.ok);

  const act = await lead.call('workspace.memberActivity', { workspaceId: w.id });
  const bobs = act.members.find((m) => m.principalId === 'bob')!;
  assert.equal({ changes: bobs.changes, ws: bobs.workspaceChanges, docs: bobs.documentChanges }, { changes: 3, ws: 2, docs: 1 });
  assert.equal(bobs.paths, [
    { path: '/workspace/name', changes: 2 },
    { path: '/documents/notes/body/0', changes: 1 },
    { path: '/documents/notes/title', changes: 1 },
    { path: '/workspace/description', changes: 1 },
  ]);
  const leads = act.members.find((m) => m.principalId === 'lead')!;
  assert.equal(leads.paths.map((p) => p.path).sort(), ['/documents/notes/title', '/workspace', '/workspace/members/bob']);
  assert.is(act.truncated, false);
  assert.equal((await lead.call('workspace.memberActivity', { workspaceId: w.id, principalId: 'lead' })).members.map((m) => m.principalId), ['lead']);

  const m = await lead.call('workspace.collaborationMetrics', { workspaceId: w.id, periodSeconds: 3600 });
  assert.equal(
    { members: m.members, active: m.membersActive, changes: m.changes, messages: m.messages, cpm: m.changesPerMember, mpm: m.messagesPerMember },
    { members: 2, active: 2, changes: 6, messages: 1, cpm: { lead: 3, bob: 3 }, mpm: { bob: 1 } },
  );
  assert.is((await lead.call('workspace.stats', { workspaceId: w.id })).documents, 1);
});

test('bad input gets INVALID_PARAMS naming the field and changes nothing', async (ctx) => {
  const { lead, tenant } = await team(ctx);
  const w = await workspace(lead);
  const head = await ctx.ts.store.headPosition(tenant);
  const cases: [string, Record<string, unknown>, string][] = [
    ['workspace.create', { name: 'x' }, 'visibility'],
    ['workspace.create', { name: 'x', visibility: 'secret' }, 'visibility'],
    ['workspace.create', { name: '', visibility: 'team' }, 'name'],
    ['workspace.create', { name: 'x', visibility: 'team', maxMembers: 0 }, 'maxMembers'],
    ['workspace.create', { name: 'x', visibility: 'team', maxMembers: 1.5 }, 'maxMembers'],
    ['workspace.create', { name: 'x', visibility: 'team', settings: { big: 'y'.repeat(20_000) } }, 'settings'],
    ['workspace.create', { name: 'x', visibility: 'team', settings: [] }, 'settings'],
    ['workspace.create', { name: 'x', visibility: 'team', owner: 'me' }, ''],
    ['workspace.update', { workspaceId: w.id, visibility: 'everyone' }, 'visibility'],
    ['workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'god' }, 'role'],
    ['workspace.addMember', { workspaceId: w.id, principalId: 'bad id', role: 'viewer' }, 'principalId'],
    ['workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'viewer', permissions: ['root'] }, 'permissions.0'],
    ['workspace.setMemberPermissions', { workspaceId: w.id, principalId: 'bob' }, 'permissions'],
    ['workspace.get', { workspaceId: 42 }, 'workspaceId'],
    ['workspace.get', {}, 'workspaceId'],
    ['workspace.search', { query: 'q'.repeat(300) }, 'query'],
    ['workspace.memberActivity', { workspaceId: w.id, periodSeconds: -1 }, 'periodSeconds'],
  ];
  for (const [method, params, path] of cases) {
    const e = await refusal(lead.call(method as 'workspace.get', params as never), ErrorCodes.INVALID_PARAMS);
    const issues = e.data.issues as { path: string }[];
    assert.ok(issues.some((i) => i.path === path), `${method} ${JSON.stringify(params).slice(0, 80)}: ${e.message}`);
  }
  const big = await refusal(lead.call('workspace.create', { name: 'x', visibility: 'team', settings: { big: 'y'.repeat(20_000) } }), ErrorCodes.INVALID_PARAMS);
  assert.match(big.message, /settings must be at most 16384 bytes of JSON; it has 200\d\d/);
  await refusal(lead.call('workspace.get', { workspaceId: 'no-such-workspace' }), ErrorCodes.NOT_FOUND);
  assert.is(await ctx.ts.store.headPosition(tenant), head);
  assert.is((await lead.call('workspace.get', { workspaceId: w.id })).version, 1);
});

test('restart keeps workspaces and members, and access decisions follow them (SQLite)', async () => {
  const dir = tempDir('troupe-ws-');
  try {
    let ts = await startServer({ store: sqliteStore(dir.dir) });
    const lead = await ts.client('acme', 'lead', ['agent']);
    const w = await workspace(lead, { name: 'Durable' });
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'bob', role: 'editor', permissions: ['member:manage'] });
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'viewer' });
    await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'cat' });
    const members = await lead.call('workspace.listMembers', { workspaceId: w.id });
    await ts.close();

    ts = await startServer({ store: sqliteStore(dir.dir) });
    const bob = await ts.client('acme', 'bob', ['agent']);
    const cat = await ts.client('acme', 'cat', ['agent']);
    assert.equal(await bob.call('workspace.listMembers', { workspaceId: w.id }), members);
    assert.is((await bob.call('workspace.get', { workspaceId: w.id })).role, 'editor');
    await refusal(cat.call('workspace.get', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
    await bob.call('workspace.addMember', { workspaceId: w.id, principalId: 'cat', role: 'viewer' });
    assert.is((await cat.call('workspace.get', { workspaceId: w.id })).role, 'viewer');
    await ts.close();
  } finally {
    dir.remove();
  }
});

/** The server-side connection of a client, caught by a guard as it makes a call. */
async function connOf(ctx: Ctx, client: TroupeClient): Promise<Connection> {
  let conn: Connection | undefined;
  const me = await client.call('session.whoami');
  ctx.ts.server.use({
    beforeCall(c) {
      if (c.conn.id === me.connectionId) conn = c.conn;
    },
  });
  await client.call('ping');
  await client.call('session.whoami');
  if (!conn) throw new Error(`connection ${me.connectionId} not found`);
  return conn;
}

test.run();

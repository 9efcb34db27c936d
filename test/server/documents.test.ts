import * as Automerge from '@automerge/automerge';
import jsonpatch from 'fast-json-patch';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import type { DocumentEventData } from '../../protocol/documents.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { RpcNotification } from '../../protocol/jsonrpc.js';
import type { ActorEvent, Principal } from '../../protocol/model.js';
import type { Workspace } from '../../protocol/workspaces.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  n: number;
}

interface Team {
  tenant: string;
  lead: TroupeClient;
  ed: TroupeClient;
  viewer: TroupeClient;
  outsider: TroupeClient;
  w: Workspace;
}

const test = suite<Ctx>('workspace state and documents over WebSocket');

test.before(async (ctx) => {
  ctx.ts = await startServer({ documents: { maxChangesPerSecond: 100_000 } });
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

/** A fresh tenant with a private workspace: lead (owner), ed (editor), viewer, and an outsider. */
async function team(ts: TestServer, n: number): Promise<Team> {
  const tenant = `docs${n}`;
  const c = (id: string, roles: Principal['roles'] = ['agent']) => ts.client(tenant, id, roles);
  const lead = await c('lead');
  const w = await lead.call('workspace.create', { name: 'Docs', visibility: 'private' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'ed', role: 'editor' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'viewer', role: 'viewer' });
  return { tenant, lead, ed: await c('ed'), viewer: await c('viewer'), outsider: await c('outsider'), w };
}

/** A subscriber that keeps its own JSON copy from the diffs alone (from the topic's first event). */
async function follower(client: TroupeClient, topic: string, fromPosition = 0) {
  const state = { json: {} as Record<string, unknown>, heads: [] as string[], events: [] as ActorEvent[] };
  await client.subscribe(topic, (e) => {
    if (e.type !== 'document.create' && e.type !== 'document.change') return;
    const d = e.data as unknown as DocumentEventData;
    state.json = jsonpatch.applyPatch(state.json, d.patch as jsonpatch.Operation[], true, false).newDocument;
    state.heads = d.heads;
    state.events.push(e);
  }, { fromPosition });
  return state;
}

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');

test('editors change the state with ops, JSON Patch and splices; subscribers get each change as a JSON Patch with the new heads', async (ctx) => {
  const { lead, ed, viewer, w } = await team(ctx.ts, ++ctx.n);
  const sub = await follower(viewer, `document:${w.id}:state`);
  const empty = await viewer.call('workspace.getState', { workspaceId: w.id });
  assert.equal(empty, { workspaceId: w.id, state: {}, heads: [], version: 0, size: 0, updatedAt: null, automergeUrl: empty.automergeUrl });
  const r1 = await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/plan', value: { title: 'Ship 7', steps: ['build'] } }, { op: 'increment', path: '/builds' }] });
  assert.equal([r1.changed, r1.version, r1.paths], [true, 1, ['/builds', '/plan']]);
  await lead.call('workspace.updateState', { workspaceId: w.id, patch: [{ op: 'add', path: '/plan/steps/-', value: 'test' }, { op: 'replace', path: '/plan/title', value: 'Ship 7.1' }] });
  await ed.call('workspace.updateState', { workspaceId: w.id, splices: [{ path: '/plan/title', index: 0, deleteCount: 4, insert: 'Release' }] });
  await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/builds', by: 4 }, { op: 'addToSet', path: '/labels', value: 'go' }, { op: 'addToSet', path: '/labels', value: 'go' }] });
  const last = await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'removeFromSet', path: '/plan/steps', value: 'build' }] });
  const state = await viewer.call('workspace.getState', { workspaceId: w.id });
  assert.equal(state.state, { plan: { title: 'Release 7.1', steps: ['test'] }, builds: 5, labels: ['go'] });
  assert.equal(state.heads, last.heads);
  await waitFor(() => sub.events.length === 5);
  assert.equal(sub.json, state.state, 'the diffs alone rebuild the state');
  assert.equal(sub.heads, last.heads);
  assert.equal(
    sub.events.map((e) => [e.type, e.principal]),
    [
      ['document.create', 'ed'],
      ['document.change', 'lead'],
      ['document.change', 'ed'],
      ['document.change', 'ed'],
      ['document.change', 'lead'],
    ],
  );
});

test('concurrent edits to the same path from two clients converge: both see identical final state', async (ctx) => {
  const { lead, ed, viewer, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/doc', value: { text: 'shared', owner: 'none' } }] });
  const subL = await follower(lead, `document:${w.id}:state`);
  const subE = await follower(ed, `document:${w.id}:state`);
  const base = (await viewer.call('workspace.getState', { workspaceId: w.id })).heads;
  const calls: Promise<unknown>[] = [];
  for (let i = 0; i < 20; i++) {
    calls.push(lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/doc/owner', value: `lead-${i}` }, { op: 'increment', path: '/count' }] }));
    calls.push(ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/doc/owner', value: `ed-${i}` }, { op: 'increment', path: '/count' }] }));
  }
  // Both also splice the same text against the same base version: both insertions survive.
  calls.push(lead.call('workspace.updateState', { workspaceId: w.id, expectedHeads: base, splices: [{ path: '/doc/text', index: 0, insert: 'L>' }] }));
  calls.push(ed.call('workspace.updateState', { workspaceId: w.id, expectedHeads: base, splices: [{ path: '/doc/text', index: 6, insert: '<E' }] }));
  await Promise.all(calls);
  const [a, b] = await Promise.all([lead.call('workspace.getState', { workspaceId: w.id }), ed.call('workspace.getState', { workspaceId: w.id })]);
  assert.equal(a, b);
  assert.is((a.state as { count: number }).count, 40, 'every increment counted');
  assert.is((a.state as { doc: { text: string } }).doc.text, 'L>shared<E');
  await waitFor(() => subL.events.length === 43 && subE.events.length === 43);
  assert.equal(subL.json, a.state);
  assert.equal(subE.json, a.state);
  // An Automerge view of the whole document agrees with the JSON.
  const full = await viewer.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true });
  assert.equal(JSON.parse(JSON.stringify(Automerge.load(new Uint8Array(Buffer.from(full.automerge!, 'base64'))))), a.state);
});

test('an offline client\'s Automerge changes, made from a fork of the state, merge on return and reach subscribers', async (ctx) => {
  const { lead, ed, viewer, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/notes', value: 'offline edits' }, { op: 'set', path: '/todo', value: ['a'] }] });
  const sub = await follower(viewer, `document:${w.id}:state`);
  const got = await ed.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true });
  let fork = Automerge.load<{ notes: string; todo: string[]; seen?: number }>(new Uint8Array(Buffer.from(got.automerge!, 'base64')));
  fork = Automerge.change(fork, (d) => {
    Automerge.splice(d, ['notes'], 0, 0, 'my ');
    d.todo.push('b');
    d.seen = 1;
  });
  // Meanwhile the state moves on.
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'addToSet', path: '/todo', value: 'c' }] });
  const changes = Automerge.getChangesSince(fork, got.heads).map(b64);
  const r = await ed.call('workspace.mergeState', { workspaceId: w.id, changes });
  assert.equal([r.changed, r.applied, r.duplicates], [true, 1, 0]);
  const state = (await lead.call('workspace.getState', { workspaceId: w.id })).state as { notes: string; todo: string[]; seen: number };
  assert.is(state.notes, 'my offline edits');
  assert.equal(state.todo.slice().sort(), ['a', 'b', 'c']);
  assert.is(state.seen, 1);
  await waitFor(() => sub.events.length === 3);
  assert.is(sub.events[2]!.principal, 'ed', 'the merge is attributed to the caller');
  // The fork, brought up to date with the server's changes, has the same content.
  const server = await lead.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true });
  const [synced] = Automerge.applyChanges(fork, Automerge.getChangesSince(Automerge.load(new Uint8Array(Buffer.from(server.automerge!, 'base64'))), Automerge.getHeads(fork)));
  assert.equal(JSON.parse(JSON.stringify(synced)), server.state);
  assert.equal(sub.json, server.state);
});

test('a JSON Patch whose test fails is refused with VERSION_MISMATCH and the state is unchanged', async (ctx) => {
  const { lead, ed, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/owner', value: 'lead' }] });
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  const e = await refusal(
    ed.call('workspace.updateState', { workspaceId: w.id, patch: [{ op: 'add', path: '/taken', value: true }, { op: 'test', path: '/owner', value: 'nobody' }, { op: 'replace', path: '/owner', value: 'ed' }] }),
    ErrorCodes.VERSION_MISMATCH,
  );
  assert.equal([e.data.check, e.data.index, e.data.path], ['test', 1, '/owner']);
  assert.equal(await lead.call('workspace.getState', { workspaceId: w.id }), before);
});

test('a viewer\'s and an outsider\'s writes are refused with the state unchanged; outsiders cannot read or follow it', async (ctx) => {
  const { lead, viewer, outsider, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/a', value: 1 }] });
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  const e = await refusal(viewer.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/a', value: 2 }] }), ErrorCodes.FORBIDDEN);
  assert.match(e.message, /state:write/);
  await refusal(viewer.call('workspace.mergeState', { workspaceId: w.id, changes: ['AAAA'] }), ErrorCodes.FORBIDDEN);
  await refusal(viewer.call('workspace.restoreState', { workspaceId: w.id, heads: before.heads }), ErrorCodes.FORBIDDEN);
  await refusal(viewer.call('document.create', { workspaceId: w.id, title: 'Mine' }), ErrorCodes.FORBIDDEN);
  await refusal(outsider.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/a', value: 3 }] }), ErrorCodes.NOT_FOUND);
  await refusal(outsider.call('workspace.getState', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(outsider.subscribe(`document:${w.id}:state`, () => {}), ErrorCodes.NOT_FOUND);
  assert.equal(await lead.call('workspace.getState', { workspaceId: w.id }), before);
  assert.equal(await viewer.call('workspace.getState', { workspaceId: w.id }), before, 'a viewer reads');
});

test('history lists each change with its author; restoring an old version is a new change and keeps history', async (ctx) => {
  const { lead, ed, viewer, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/v', value: 'one' }] });
  await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/v', value: 'two' }, { op: 'set', path: '/extra', value: [1] }] });
  await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/n' }] });
  const h = await viewer.call('workspace.stateHistory', { workspaceId: w.id, limit: 2 });
  assert.equal(
    h.items.map((i) => [i.version, i.by, i.source]),
    [
      [3, 'ed', 'update'],
      [2, 'ed', 'update'],
    ],
  );
  const rest = await viewer.call('workspace.stateHistory', { workspaceId: w.id, cursor: h.nextCursor! });
  assert.equal(
    rest.items.map((i) => [i.version, i.by, i.source]),
    [[1, 'lead', 'create']],
  );
  const r = await lead.call('workspace.restoreState', { workspaceId: w.id, heads: rest.items[0]!.heads });
  assert.equal(r.restoredFrom, rest.items[0]!.heads);
  assert.equal((await viewer.call('workspace.getState', { workspaceId: w.id })).state, { v: 'one' });
  const all = await viewer.call('workspace.stateHistory', { workspaceId: w.id });
  assert.equal(
    all.items.map((i) => [i.version, i.by, i.source]),
    [
      [4, 'lead', 'restore'],
      [3, 'ed', 'update'],
      [2, 'ed', 'update'],
      [1, 'lead', 'create'],
    ],
  );
  await refusal(lead.call('workspace.restoreState', { workspaceId: w.id, heads: ['ab'.repeat(32)] }), ErrorCodes.INVALID_PARAMS);
});

test('shared documents: created, read, listed and edited by members; followed by members only', async (ctx) => {
  const { lead, ed, viewer, outsider, w } = await team(ctx.ts, ++ctx.n);
  const d = await ed.call('document.create', { workspaceId: w.id, documentId: 'spec', title: 'Spec', content: { body: 'Draft', sections: [] } });
  assert.equal([d.id, d.workspaceId, d.title, d.kind, d.createdBy, d.version, d.content], ['spec', w.id, 'Spec', 'document', 'ed', 1, { body: 'Draft', sections: [] }]);
  const generated = await lead.call('document.create', { workspaceId: w.id, title: 'Untitled' });
  assert.match(generated.id, /^[0-9a-f-]{36}$/);
  await refusal(lead.call('document.create', { workspaceId: w.id, documentId: 'spec', title: 'Again' }), ErrorCodes.ALREADY_EXISTS);
  await refusal(lead.call('document.create', { workspaceId: w.id, documentId: 'state', title: 'State' }), ErrorCodes.INVALID_PARAMS);
  const sub = await follower(viewer, `document:${w.id}:spec`);
  await lead.call('document.update', { workspaceId: w.id, documentId: 'spec', splices: [{ path: '/body', index: 5, insert: ' 2' }] });
  await ed.call('document.update', { workspaceId: w.id, documentId: 'spec', patch: [{ op: 'add', path: '/sections/-', value: { title: 'Intro' } }] });
  await refusal(viewer.call('document.update', { workspaceId: w.id, documentId: 'spec', ops: [{ op: 'delete', path: '/body' }] }), ErrorCodes.FORBIDDEN);
  await refusal(ed.call('document.update', { workspaceId: w.id, documentId: 'nope', ops: [{ op: 'delete', path: '/body' }] }), ErrorCodes.NOT_FOUND);
  const got = await viewer.call('document.get', { workspaceId: w.id, documentId: 'spec' });
  assert.equal(got.content, { body: 'Draft 2', sections: [{ title: 'Intro' }] });
  await waitFor(() => sub.events.length === 3);
  assert.equal(sub.json, got.content, 'a follower from position 0 rebuilds the document from its events');
  const list = await viewer.call('document.list', { workspaceId: w.id });
  assert.equal(list.items.map((i) => i.id).sort(), [generated.id, 'spec'].sort(), 'the state document is not listed');
  assert.is((list.items.find((i) => i.id === 'spec') as unknown as { content?: unknown }).content, undefined, 'listed without content');
  await refusal(outsider.call('document.get', { workspaceId: w.id, documentId: 'spec' }), ErrorCodes.NOT_FOUND);
  await refusal(outsider.call('document.list', { workspaceId: w.id }), ErrorCodes.NOT_FOUND);
  await refusal(viewer.subscribe(`document:${w.id}:missing`, () => {}), ErrorCodes.NOT_FOUND);
  await refusal(viewer.call('document.get', { workspaceId: w.id, documentId: 'missing' }), ErrorCodes.NOT_FOUND);
});

test('a removed member stops receiving document changes and cannot write; an archived workspace refuses writes but is read', async (ctx) => {
  const { lead, ed, w } = await team(ctx.ts, ++ctx.n);
  await ed.call('document.create', { workspaceId: w.id, documentId: 'log', title: 'Log' });
  const notes: RpcNotification[] = [];
  ed.on('notification', (n: RpcNotification) => notes.push(n));
  const sub = await follower(ed, `document:${w.id}:log`);
  await lead.call('document.update', { workspaceId: w.id, documentId: 'log', ops: [{ op: 'set', path: '/a', value: 1 }] });
  await waitFor(() => sub.events.length === 2);
  await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'ed' });
  await waitFor(() => notes.some((n) => n.method === 'subscription.revoked'));
  await lead.call('document.update', { workspaceId: w.id, documentId: 'log', ops: [{ op: 'set', path: '/b', value: 2 }] });
  await refusal(ed.call('document.update', { workspaceId: w.id, documentId: 'log', ops: [{ op: 'set', path: '/c', value: 3 }] }), ErrorCodes.NOT_FOUND);
  await lead.call('workspace.get', { workspaceId: w.id });
  assert.is(sub.events.length, 2, 'no change reached the removed member');

  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/x', value: 1 }] });
  await lead.call('workspace.archive', { workspaceId: w.id });
  const e = await refusal(lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/x', value: 2 }] }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.match(e.message, /archived/);
  await refusal(lead.call('document.update', { workspaceId: w.id, documentId: 'log', ops: [{ op: 'set', path: '/x', value: 2 }] }), ErrorCodes.ILLEGAL_TRANSITION);
  await refusal(lead.call('document.create', { workspaceId: w.id, title: 'New' }), ErrorCodes.ILLEGAL_TRANSITION);
  assert.equal((await lead.call('workspace.getState', { workspaceId: w.id })).state, { x: 1 });
});

test('bad input is refused with INVALID_PARAMS and changes nothing: paths, types, forms, heads, changes, sizes', async (ctx) => {
  const { lead, w } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }, { op: 'set', path: '/s', value: 'text' }, { op: 'set', path: '/l', value: [1] }] });
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  const bad: [string, Record<string, unknown>][] = [
    ['no edit', {}],
    ['two forms', { ops: [{ op: 'delete', path: '/n' }], patch: [{ op: 'remove', path: '/n' }] }],
    ['not a pointer', { ops: [{ op: 'set', path: 'n', value: 2 }] }],
    ['bad escape', { ops: [{ op: 'set', path: '/a~2', value: 2 }] }],
    ['unknown op', { ops: [{ op: 'push', path: '/l', value: 2 }] }],
    ['set without value', { ops: [{ op: 'set', path: '/n' }] }],
    ['fractional increment', { ops: [{ op: 'increment', path: '/c', by: 0.5 }] }],
    ['increment of a plain number', { ops: [{ op: 'increment', path: '/n' }] }],
    ['member of a number', { ops: [{ op: 'set', path: '/n/x', value: 1 }] }],
    ['member of a string', { patch: [{ op: 'add', path: '/s/x', value: 1 }] }],
    ['list index beyond the end', { patch: [{ op: 'add', path: '/l/7', value: 1 }] }],
    ['remove of a missing member', { patch: [{ op: 'remove', path: '/missing' }] }],
    ['splice into a number', { splices: [{ path: '/n', index: 0, insert: 'x' }] }],
    ['splice beyond the text', { splices: [{ path: '/s', index: 99, insert: 'x' }] }],
    ['negative index', { splices: [{ path: '/s', index: -1, insert: 'x' }] }],
    ['huge integer', { ops: [{ op: 'set', path: '/n', value: 2 ** 60 }] }],
    ['unknown heads', { ops: [{ op: 'set', path: '/n', value: 2 }], expectedHeads: ['ff'.repeat(32)] }],
    ['malformed heads', { ops: [{ op: 'set', path: '/n', value: 2 }], expectedHeads: ['xyz'] }],
    ['unknown field', { ops: [{ op: 'set', path: '/n', value: 2 }], extra: 1 }],
  ];
  for (const [why, params] of bad) {
    const e = await refusal(lead.call('workspace.updateState', { workspaceId: w.id, ...params } as never));
    assert.is(e.code, ErrorCodes.INVALID_PARAMS, `${why}: ${e.message}`);
  }
  await refusal(lead.call('workspace.mergeState', { workspaceId: w.id, changes: ['bm90IGEgY2hhbmdl'] }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('workspace.mergeState', { workspaceId: w.id, changes: ['***'] }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('workspace.mergeState', { workspaceId: w.id, changes: [] }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('workspace.stateHistory', { workspaceId: w.id, cursor: 'abc' }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('document.create', { workspaceId: w.id, documentId: 'has:colon', title: 'x' }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('document.create', { workspaceId: w.id, title: '' }), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/big', value: 'x'.repeat(2 * 1024 * 1024) }] }), ErrorCodes.PAYLOAD_TOO_LARGE);
  assert.equal(await lead.call('workspace.getState', { workspaceId: w.id }), before);
});

test('subscribing to document topics needs a well-formed topic of an existing workspace', async (ctx) => {
  const { lead, w } = await team(ctx.ts, ++ctx.n);
  await refusal(lead.subscribe(`document:${w.id}`, () => {}), ErrorCodes.INVALID_PARAMS);
  await refusal(lead.subscribe('document:nope:state', () => {}), ErrorCodes.NOT_FOUND);
  const sub = await lead.subscribe(`document:${w.id}:state`, () => {});
  assert.type(sub.id, 'string');
});

test('twenty agents edit the state at once, with JSON Patch and Automerge changes mixed: all end with identical content and no acknowledged change is missing', async (ctx) => {
  const tenant = `docs${++ctx.n}`;
  const lead = await ctx.ts.client(tenant, 'lead', ['agent']);
  const w = await lead.call('workspace.create', { name: 'Busy', visibility: 'private' });
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/cards', value: {} }, { op: 'set', path: '/log', value: '' }] });
  const agents: TroupeClient[] = [];
  for (let i = 0; i < 20; i++) {
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: `a${i}`, role: 'editor' });
    agents.push(await ctx.ts.client(tenant, `a${i}`, ['agent']));
  }
  const followers = await Promise.all(agents.map((a) => follower(a, `document:${w.id}:state`)));
  const ROUNDS = 10;
  await Promise.all(
    agents.map(async (a, i) => {
      // Automerge-native agents keep their own copy and send only their changes.
      let mine: Automerge.Doc<{ cards: Record<string, unknown>; log: string }> | null = null;
      for (let r = 0; r < ROUNDS; r++) {
        const card = `a${i}-${r}`;
        if (i % 2 === 0) {
          await a.call('workspace.updateState', { workspaceId: w.id, patch: [{ op: 'add', path: `/cards/${card}`, value: { by: i, round: r } }] });
          continue;
        }
        const got = await a.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true });
        const server = Automerge.load<{ cards: Record<string, unknown>; log: string }>(new Uint8Array(Buffer.from(got.automerge!, 'base64')));
        mine = mine ? Automerge.merge(mine, server) : server;
        const heads = Automerge.getHeads(mine);
        mine = Automerge.change(mine, (d) => {
          d.cards[card] = { by: i, round: r };
          Automerge.splice(d, ['log'], 0, 0, `${card};`);
        });
        const r2 = await a.call('workspace.mergeState', { workspaceId: w.id, changes: Automerge.getChangesSince(mine, heads).map(b64) });
        assert.is(r2.applied, 1);
      }
    }),
  );
  const final = await lead.call('workspace.getState', { workspaceId: w.id });
  const state = final.state as { cards: Record<string, unknown>; log: string };
  assert.is(Object.keys(state.cards).length, 20 * ROUNDS, 'every acknowledged card is there');
  assert.is(state.log.split(';').filter(Boolean).length, 10 * ROUNDS, 'every acknowledged text insertion is there');
  await waitFor(() => followers.every((f) => f.heads.join() === final.heads.join()));
  for (const f of followers) assert.equal(f.json, final.state);
});

test('limits over the wire: a document beyond its size and changes beyond its rate are refused with clear errors and nothing changes', async () => {
  const ts = await startServer({ documents: { maxBytes: 4096, maxChangesPerSecond: 5, maxOpsPerCall: 10 } });
  try {
    const lead = await ts.client('lim', 'lead', ['agent']);
    const w = await lead.call('workspace.create', { name: 'Limits', visibility: 'private' });
    await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/a', value: 1 }] });
    const big = await refusal(lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/big', value: 'x'.repeat(10_000) }] }), ErrorCodes.QUOTA_EXCEEDED);
    assert.match(big.message, /beyond the limit of 4096/);
    assert.is(big.data.limitBytes, 4096);
    const many = await refusal(
      lead.call('workspace.updateState', { workspaceId: w.id, ops: Array.from({ length: 11 }, (_, i) => ({ op: 'set' as const, path: `/k${i}`, value: i })) }),
      ErrorCodes.INVALID_PARAMS,
    );
    assert.match(many.message, /at most 10/);
    let limited = null;
    for (let i = 0; i < 10 && !limited; i++) {
      limited = await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/n' }] }).then(
        () => null,
        (e: unknown) => e,
      );
    }
    assert.ok(limited, 'the rate limit was reached');
    assert.is((limited as { code: number }).code, ErrorCodes.RATE_LIMITED);
    assert.type((limited as { data: { retryAfterMs: number } }).data.retryAfterMs, 'number');
    const state = (await lead.call('workspace.getState', { workspaceId: w.id })).state as Record<string, unknown>;
    assert.equal(Object.keys(state).sort(), ['a', 'n']);
  } finally {
    await ts.close();
  }
});

test('a restart (SQLite) loses no acknowledged change, and the state loads from its compacted save', async () => {
  const { dir, remove } = tempDir();
  try {
    const opts = { documents: { compactEvery: 20, maxChangesPerSecond: 100_000 } };
    let ts = await startServer({ ...opts, store: sqliteStore(dir) });
    const key = await ts.key('rs', 'lead', ['agent']);
    let lead = await ts.client('rs', 'lead', ['agent']);
    const w = await lead.call('workspace.create', { name: 'Durable', visibility: 'private' });
    let acked: { heads: string[] } | null = null;
    for (let i = 0; i < 50; i++) acked = await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/n' }, { op: 'set', path: `/k${i % 7}`, value: i }] });
    await lead.call('document.create', { workspaceId: w.id, documentId: 'notes', title: 'Notes', content: { t: 'kept' } });
    const before = await lead.call('workspace.getState', { workspaceId: w.id });
    assert.equal(before.heads, acked!.heads);
    await ts.close();
    ts = await startServer({ ...opts, store: sqliteStore(dir) });
    void key;
    lead = await ts.client('rs', 'lead', ['agent']);
    const after = await lead.call('workspace.getState', { workspaceId: w.id });
    assert.equal(after, before);
    assert.is((after.state as { n: number }).n, 50);
    const load = ts.server.app.documents!.stats().lastLoad!;
    assert.is(load.fromSave, true, 'started from a compacted save');
    assert.ok(load.changesApplied < 20, `applied ${load.changesApplied} changes after the save`);
    assert.equal((await lead.call('document.get', { workspaceId: w.id, documentId: 'notes' })).content, { t: 'kept' });
    await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'increment', path: '/n' }] });
    assert.is(((await lead.call('workspace.getState', { workspaceId: w.id })).state as { n: number }).n, 51);
    await ts.close();
  } finally {
    remove();
  }
});

test.run();

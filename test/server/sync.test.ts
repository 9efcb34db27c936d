import * as Automerge from '@automerge/automerge';
import { Repo, cbor, type AutomergeUrl, type DocHandle } from '@automerge/automerge-repo';
import { WebSocketClientAdapter } from '@automerge/automerge-repo-network-websocket';
import jsonpatch from 'fast-json-patch';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { connect, type TroupeClient } from '../../protocol/client.js';
import type { DocumentEventData } from '../../protocol/documents.js';
import { ErrorCodes } from '../../protocol/errors.js';
import type { ActorEvent, Principal } from '../../protocol/model.js';
import type { Workspace } from '../../protocol/workspaces.js';
import { createLogger } from '../../src/logger.js';
import { TroupeServer } from '../../src/server/TroupeServer.js';
import { automergeDocumentId, automergeUrlOf, syncDocumentOf } from '../../src/sync/automergeUrl.js';
import { changesOf } from '../../src/sync/changeChunks.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  n: number;
  repos: Repo[];
  raws: RawPeer[];
}

interface Team {
  tenant: string;
  lead: TroupeClient;
  ed: TroupeClient;
  viewer: TroupeClient;
  w: Workspace;
  key(principal: string, roles?: Principal['roles']): Promise<string>;
}

const test = suite<Ctx>('automerge-repo clients over /sync');

test.before(async (ctx) => {
  ctx.ts = await startServer({ documents: { maxChangesPerSecond: 100_000 }, logger: createLogger(process.env.TROUPE_TEST_LOG ?? 'silent') });
  ctx.n = 0;
  ctx.repos = [];
  ctx.raws = [];
});

test.after.each(async (ctx) => {
  await Promise.all(ctx.repos.splice(0).map((r) => r.shutdown().catch(() => {})));
  for (const r of ctx.raws.splice(0)) r.ws.terminate();
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

const syncUrl = (wsUrl: string) => wsUrl.replace(/\/v1$/, '/sync');

/** A private workspace of a fresh tenant: lead (owner), ed (editor) and viewer over JSON-RPC. */
async function team(ts: TestServer, n: number): Promise<Team> {
  const tenant = `sync${n}`;
  const key = (principal: string, roles: Principal['roles'] = ['agent']) => ts.key(tenant, principal, roles);
  const lead = await ts.client(tenant, 'lead', ['agent']);
  const w = await lead.call('workspace.create', { name: 'Sync', visibility: 'private' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'ed', role: 'editor' });
  await lead.call('workspace.addMember', { workspaceId: w.id, principalId: 'viewer', role: 'viewer' });
  return { tenant, lead, ed: await ts.client(tenant, 'ed', ['agent']), viewer: await ts.client(tenant, 'viewer', ['agent']), w, key };
}

/** An automerge-repo client (no storage) connected to /sync with a token in the query. */
function repo(ctx: Ctx, token: string, wsUrl = ctx.ts.url): Repo {
  const r = new Repo({ network: [new WebSocketClientAdapter(`${syncUrl(wsUrl)}?token=${encodeURIComponent(token)}`, 100)] });
  ctx.repos.push(r);
  return r;
}

/** The document's content as plain JSON (counters as numbers). */
const plain = (h: DocHandle<unknown>) => JSON.parse(JSON.stringify(h.doc())) as Record<string, unknown>;

/** A subscriber that keeps its own JSON copy from the diffs alone. */
async function follower(client: TroupeClient, topic: string) {
  const state = { json: {} as Record<string, unknown>, heads: [] as string[], events: [] as ActorEvent[] };
  await client.subscribe(topic, (e) => {
    if (e.type !== 'document.create' && e.type !== 'document.change') return;
    const d = e.data as unknown as DocumentEventData;
    state.json = jsonpatch.applyPatch(state.json, d.patch as jsonpatch.Operation[], true, false).newDocument;
    state.heads = d.heads;
    state.events.push(e);
  }, { fromPosition: 0 });
  return state;
}

type Message = Record<string, unknown> & { type: string };

/** A /sync peer speaking the wire protocol by hand, for exact answers and for malformed input. */
class RawPeer {
  readonly messages: Message[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  closeInfo: { code: number; reason: string } | null = null;
  #seen = 0;

  private constructor(readonly ws: WebSocket) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString() };
        resolve(this.closeInfo);
      });
    });
    ws.on('message', (data: Buffer) => this.messages.push(cbor.decode(new Uint8Array(data)) as Message));
  }

  static async open(ctx: Ctx, url: string, headers: Record<string, string> = {}): Promise<RawPeer> {
    const ws = new WebSocket(url, { headers });
    const peer = new RawPeer(ws);
    ctx.raws.push(peer);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return peer;
  }

  send(message: Record<string, unknown>): void {
    this.ws.send(cbor.encode(message));
  }

  /** The next message (after those already taken) that fits. */
  async next(fits: (m: Message) => boolean = () => true, timeoutMs = 5000): Promise<Message> {
    return waitFor(() => {
      const i = this.messages.findIndex((m, j) => j >= this.#seen && fits(m));
      if (i < 0) return null;
      this.#seen = i + 1;
      return this.messages[i]!;
    }, { timeoutMs });
  }

  async join(peerId = 'raw-peer'): Promise<Message> {
    this.send({ type: 'join', senderId: peerId, peerMetadata: {}, supportedProtocolVersions: ['1'] });
    return this.next((m) => m.type === 'peer');
  }

  /** Asks for a document the way automerge-repo does when it has none of it. */
  request(documentId: string, peerId = 'raw-peer'): void {
    const [, data] = Automerge.generateSyncMessage(Automerge.init(), Automerge.initSyncState());
    this.send({ type: 'request', senderId: peerId, targetId: 'server', documentId, data });
  }
}

const rawUrl = (ctx: Ctx, token: string) => `${syncUrl(ctx.ts.url)}?token=${encodeURIComponent(token)}`;

test('Troupe documents have one stable automerge-repo id each, and ids that name nothing are recognised', () => {
  const w = '01a21f0e-722f-73c2-a93c-019496df53b3';
  const d = '6f1c0b9e-8a7d-4c1e-9f2a-3b4c5d6e7f80';
  for (const [ws, doc] of [[w, 'state'], [w, d], [w, 'spec'], ['plain-ws', 'notes.v2'], ['a:b', 'c']] as const) {
    const id = automergeDocumentId(ws, doc);
    assert.is(automergeUrlOf(ws, doc), `automerge:${id}`);
    assert.equal(syncDocumentOf(id), { workspaceId: ws, documentId: doc });
  }
  assert.ok(automergeDocumentId(w, 'state').length < 30, 'the state document of a UUID workspace has a short id');
  assert.is.not(automergeDocumentId(w, 'state'), automergeDocumentId(w, 'State'));
  // A random automerge-repo id, garbage, and the upper-case spelling of a UUID workspace name nothing.
  const upper = automergeDocumentId(w.toUpperCase(), 'state');
  for (const id of ['4NMNnkMhL8jXrdJ9jamS58PAVdXu', 'not-base58!', '', 'x'.repeat(500), 42, null, upper.replace(/.$/, '1')]) {
    assert.is(syncDocumentOf(id), null, String(id));
  }
  assert.equal(syncDocumentOf(upper), { workspaceId: w.toUpperCase(), documentId: 'state' }, 'non-UUID spellings use the text form');
});

test('sync messages carry changes as single changes, bundles or whole documents, and all become single changes', () => {
  let doc = Automerge.from<{ n: number; s?: string }>({ n: 1 });
  const base = Automerge.getHeads(doc);
  doc = Automerge.change(doc, (d) => {
    d.n = 2;
  });
  doc = Automerge.change(doc, (d) => {
    d.s = 'x'.repeat(3000);
  });
  const all = Automerge.getAllChanges(doc);
  const hashes = all.map((c) => Automerge.decodeChange(c).hash);
  const since = Automerge.getChanges(Automerge.view(doc, base), doc).map((c) => Automerge.decodeChange(c).hash);
  const hashesOf = (cs: Uint8Array[]) => cs.map((c) => Automerge.decodeChange(c).hash);
  assert.equal(hashesOf(changesOf([Buffer.concat(all)])), hashes, 'concatenated changes');
  assert.equal(hashesOf(changesOf([Automerge.save(doc)])), hashes, 'a whole document');
  assert.equal(hashesOf(changesOf([Automerge.saveBundle(doc, since)])), since, 'a bundle with outside dependencies');
  for (const bad of [new Uint8Array([1, 2, 3]), all[0]!.subarray(0, 20), Buffer.concat([all[0]!, Buffer.from([0x85])])]) {
    assert.throws(() => changesOf([bad]));
  }
});

test('an automerge-repo client finds the workspace state by its URL and sees what workspace.getState shows', async (ctx) => {
  const { ed, w, key } = await team(ctx.ts, ++ctx.n);
  await ed.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/plan', value: { title: 'Ship 7', steps: ['build'] } }, { op: 'increment', path: '/builds', by: 2 }] });
  const state = await ed.call('workspace.getState', { workspaceId: w.id });
  assert.is(state.automergeUrl, automergeUrlOf(w.id, 'state'));
  const h = await repo(ctx, await key('ed')).find<Record<string, unknown>>(state.automergeUrl as AutomergeUrl);
  assert.equal(plain(h), state.state);
  assert.equal(Automerge.getHeads(h.doc()).sort(), [...state.heads].sort());
  assert.ok(Automerge.isCounter((h.doc() as { builds: unknown }).builds), 'counters stay counters');
});

test("a repo client's change reaches JSON subscribers as a JSON Patch and is stored as an event by its principal", async (ctx) => {
  const { lead, ed, viewer, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/plan/title', value: 'Ship 7' }, { op: 'increment', path: '/builds' }] });
  const sub = await follower(viewer, `document:${w.id}:state`);
  await waitFor(() => sub.events.length === 1);
  const h = await repo(ctx, await key('ed')).find<{ plan: { title: string; done?: boolean }; builds: Automerge.Counter }>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
  h.change((d) => {
    d.plan.done = true;
    d.builds.increment(2);
    Automerge.splice(d, ['plan', 'title'], 0, 0, 'We ');
  });
  await waitFor(() => sub.events.length === 2);
  const e = sub.events[1]!;
  assert.is(e.type, 'document.change');
  assert.is(e.principal, 'ed', 'attributed to the authenticated principal, not the Automerge actor');
  const data = e.data as unknown as DocumentEventData;
  assert.is(data.source, 'merge');
  assert.equal(data.heads, Automerge.getHeads(h.doc()));
  assert.ok(data.patch.length > 0);
  const got = await ed.call('workspace.getState', { workspaceId: w.id });
  assert.equal(got.state, { plan: { title: 'We Ship 7', done: true }, builds: 3 });
  assert.equal(sub.json, got.state, 'the JSON Patches rebuild the same content');
  assert.equal(plain(h), got.state);
  const history = await ed.call('workspace.stateHistory', { workspaceId: w.id });
  assert.equal([history.items[0]!.by, history.items[0]!.source], ['ed', 'merge']);
  const activity = await lead.call('workspace.memberActivity', { workspaceId: w.id, principalId: 'ed' });
  assert.ok(JSON.stringify(activity).includes('/documents/state'), 'member activity counts the change for ed');
});

test("a JSON client's change reaches the repo client, and shared documents sync both ways too", async (ctx) => {
  const { lead, ed, w, key } = await team(ctx.ts, ++ctx.n);
  const d = await lead.call('document.create', { workspaceId: w.id, documentId: 'spec', title: 'Spec', content: { body: 'Draft', sections: [] } });
  assert.is(d.automergeUrl, automergeUrlOf(w.id, 'spec'));
  assert.is((await ed.call('document.get', { workspaceId: w.id, documentId: 'spec' })).automergeUrl, d.automergeUrl);
  const h = await repo(ctx, await key('ed')).find<{ body: string; sections: { title: string }[] }>(d.automergeUrl as AutomergeUrl);
  assert.equal(plain(h), { body: 'Draft', sections: [] });
  await ed.call('document.update', { workspaceId: w.id, documentId: 'spec', patch: [{ op: 'add', path: '/sections/-', value: { title: 'Intro' } }] });
  await lead.call('document.update', { workspaceId: w.id, documentId: 'spec', splices: [{ path: '/body', index: 5, insert: ' 2' }] });
  await waitFor(() => plain(h).body === 'Draft 2' && (plain(h).sections as unknown[]).length === 1);
  assert.equal(plain(h), (await ed.call('document.get', { workspaceId: w.id, documentId: 'spec' })).content);
  h.change((x) => {
    x.sections.push({ title: 'Usage' });
  });
  await waitFor(async () => ((await lead.call('document.get', { workspaceId: w.id, documentId: 'spec' })).content.sections as unknown[]).length === 2);
  const got = await lead.call('document.get', { workspaceId: w.id, documentId: 'spec' });
  assert.equal(got.content, plain(h));
  assert.is(got.updatedBy, 'ed');
});

test('a writer opening a document with no change yet starts it; a reader hears of it with its first change', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  const url = automergeUrlOf(w.id, 'state');
  // The viewer asks first: nothing to sync yet, so doc-unavailable, but it stays subscribed.
  const raw = await RawPeer.open(ctx, rawUrl(ctx, await key('viewer')));
  await raw.join();
  raw.request(automergeDocumentId(w.id, 'state'));
  assert.is((await raw.next()).type, 'doc-unavailable');
  assert.is((await lead.call('workspace.getState', { workspaceId: w.id })).version, 0, 'a reader does not create the state');
  const h = await repo(ctx, await key('ed')).find<Record<string, unknown>>(url as AutomergeUrl);
  assert.equal(plain(h), {});
  const created = await lead.call('workspace.getState', { workspaceId: w.id });
  assert.equal([created.version, created.heads], [1, Automerge.getHeads(h.doc())]);
  const history = await lead.call('workspace.stateHistory', { workspaceId: w.id });
  assert.equal([history.items[0]!.by, history.items[0]!.source], ['ed', 'create']);
  h.change((d) => {
    d.hello = 'world';
  });
  const pushed = await raw.next((m) => m.type === 'sync');
  assert.is(pushed.documentId, automergeDocumentId(w.id, 'state'));
  assert.ok(Automerge.decodeSyncMessage(pushed.data as Uint8Array).heads.length > 0, 'the reader is sent the document once it has content');
  // A shared document created without content opens the same way.
  await lead.call('document.create', { workspaceId: w.id, documentId: 'blank', title: 'Blank' });
  const b = await repo(ctx, await key('ed')).find<Record<string, unknown>>(automergeUrlOf(w.id, 'blank') as AutomergeUrl);
  b.change((d) => {
    d.x = 1;
  });
  await waitFor(async () => (await lead.call('document.get', { workspaceId: w.id, documentId: 'blank' })).content.x === 1);
});

test('ten JSON clients and ten automerge-repo clients editing the same state at once end with identical content and every change', async (ctx) => {
  const { lead, w, key, tenant } = await team(ctx.ts, ++ctx.n);
  const N = 10;
  const K = 20;
  await lead.call('workspace.updateState', {
    workspaceId: w.id,
    ops: [{ op: 'increment', path: '/count' }, { op: 'set', path: '/text', value: '|' }, { op: 'set', path: '/json', value: {} }, { op: 'set', path: '/am', value: {} }],
  });
  for (let i = 0; i < N; i++) {
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: `j${i}`, role: 'editor' });
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: `a${i}`, role: 'editor' });
  }
  const json = await Promise.all(Array.from({ length: N }, (_, i) => ctx.ts.client(tenant, `j${i}`, ['agent'])));
  const followers = await Promise.all(json.map((c) => follower(c, `document:${w.id}:state`)));
  type State = { count: Automerge.Counter; text: string; json: Record<string, number>; am: Record<string, number> };
  const handles = await Promise.all(Array.from({ length: N }, async (_, i) => repo(ctx, await key(`a${i}`)).find<State>(automergeUrlOf(w.id, 'state') as AutomergeUrl)));
  const jsonEdits = json.map(async (c, i) => {
    for (let k = 0; k < K; k++) {
      await c.call('workspace.updateState', {
        workspaceId: w.id,
        ops: [{ op: 'increment', path: '/count' }, { op: 'set', path: `/json/j${i}`, value: k }],
      });
      if (k % 4 === 0) await c.call('workspace.updateState', { workspaceId: w.id, splices: [{ path: '/text', index: 0, insert: 'j' }] });
    }
  });
  const repoEdits = handles.map(async (h, i) => {
    for (let k = 0; k < K; k++) {
      h.change((d) => {
        d.count.increment(1);
        d.am[`a${i}`] = k;
        if (k % 4 === 0) Automerge.splice(d, ['text'], 0, 0, 'a');
      });
      await new Promise((r) => setImmediate(r));
    }
  });
  await Promise.all([...jsonEdits, ...repoEdits]);
  const total = 1 + 2 * N * K;
  const textLength = 1 + 2 * N * (K / 4);
  const server = await waitFor(async () => {
    const s = await lead.call('workspace.getState', { workspaceId: w.id });
    const st = s.state as { count: number; text: string };
    return st.count === total && st.text.length === textLength ? s : null;
  }, { timeoutMs: 60_000 });
  const expected = server.state as { count: number; json: Record<string, number>; am: Record<string, number> };
  for (let i = 0; i < N; i++) {
    assert.is(expected.json[`j${i}`], K - 1);
    assert.is(expected.am[`a${i}`], K - 1, 'no acknowledged automerge change is missing');
  }
  await waitFor(() => handles.every((h) => Automerge.getHeads(h.doc()).sort().join() === [...server.heads].sort().join()), { timeoutMs: 60_000 });
  await waitFor(() => followers.every((f) => f.heads.slice().sort().join() === [...server.heads].sort().join()), { timeoutMs: 60_000 });
  for (const h of handles) assert.equal(plain(h), server.state, 'every repo client has the same content');
  for (const f of followers) assert.equal(f.json, server.state, 'every JSON client has the same content');
  const events = followers[0]!.events.filter((e) => (e.data as unknown as DocumentEventData).source === 'merge');
  assert.ok(events.length > 0 && events.every((e) => /^a\d$/.test(e.principal)), 'automerge changes are attributed to their principals');
});

test('a change that arrives before the one it depends on waits, and the server asks for the missing one', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }] });
  const id = automergeDocumentId(w.id, 'state');
  const raw = await RawPeer.open(ctx, rawUrl(ctx, await key('ed')));
  await raw.join();
  raw.request(id);
  let doc = Automerge.init<{ n: number; a?: number; b?: number }>();
  let st = Automerge.initSyncState();
  [doc, st] = Automerge.receiveSyncMessage(doc, st, (await raw.next((m) => m.type === 'sync')).data as Uint8Array);
  doc = Automerge.change(doc, (d) => {
    d.a = 1;
  });
  const first = Automerge.getLastLocalChange(doc)!;
  doc = Automerge.change(doc, (d) => {
    d.b = 2;
  });
  const second = Automerge.getLastLocalChange(doc)!;
  const send = (changes: Uint8Array[]) => {
    const [, m] = Automerge.generateSyncMessage(doc, Automerge.initSyncState());
    raw.send({ type: 'sync', senderId: 'raw-peer', targetId: 's', documentId: id, data: Automerge.encodeSyncMessage({ ...Automerge.decodeSyncMessage(m!), changes }) });
  };
  send([second]);
  const ask = await raw.next((m) => m.type === 'sync' && Automerge.decodeSyncMessage(m.data as Uint8Array).need.length > 0);
  assert.ok(Automerge.decodeSyncMessage(ask.data as Uint8Array).need.includes(Automerge.decodeChange(first).hash!), 'the missing dependency is asked for');
  assert.equal((await lead.call('workspace.getState', { workspaceId: w.id })).state, { n: 1 }, 'nothing merged without its dependency');
  send([first]);
  await waitFor(async () => (await lead.call('workspace.getState', { workspaceId: w.id })).state.b === 2);
  assert.equal((await lead.call('workspace.getState', { workspaceId: w.id })).state, { n: 1, a: 1, b: 2 });
});

test('a non-member gets doc-unavailable for a document exactly as for one that does not exist', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/secret', value: 'plans' }] });
  await lead.call('document.create', { workspaceId: w.id, documentId: 'spec', title: 'Spec', content: { a: 1 } });
  const team2 = await lead.call('workspace.create', { name: 'Open', visibility: 'team' });
  await lead.call('workspace.updateState', { workspaceId: team2.id, ops: [{ op: 'set', path: '/x', value: 1 }] });
  const other = await ctx.ts.client(`other${ctx.n}`, 'boss', ['admin']);
  const foreign = await other.call('workspace.create', { name: 'Foreign', visibility: 'private' });
  await other.call('workspace.updateState', { workspaceId: foreign.id, ops: [{ op: 'set', path: '/x', value: 1 }] });
  const outsider = await RawPeer.open(ctx, rawUrl(ctx, await key('outsider')));
  await outsider.join('outsider-peer');
  const ids = [
    automergeDocumentId(w.id, 'state'),
    automergeDocumentId(w.id, 'spec'),
    automergeDocumentId(team2.id, 'state'), // readable by the tenant over JSON, but syncing is for members
    automergeDocumentId(foreign.id, 'state'), // another tenant's
    automergeDocumentId(w.id, 'missing'),
    automergeDocumentId('01a21f0e-722f-73c2-a93c-019496df53b3', 'state'),
    '4NMNnkMhL8jXrdJ9jamS58PAVdXu',
  ];
  for (const id of ids) {
    outsider.request(id, 'outsider-peer');
    const answer = await outsider.next();
    assert.equal(Object.keys(answer).sort(), ['documentId', 'senderId', 'targetId', 'type'], id);
    assert.equal([answer.type, answer.documentId, answer.targetId], ['doc-unavailable', id, 'outsider-peer']);
  }
  // Pushing changes for a document it may not see changes nothing and tells nothing either.
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  let fork = Automerge.load<Record<string, unknown>>(new Uint8Array(Buffer.from((await lead.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true })).automerge!, 'base64')));
  fork = Automerge.change(fork, (d) => {
    d.secret = 'stolen';
  });
  const [, push] = Automerge.generateSyncMessage(fork, Automerge.initSyncState());
  outsider.send({ type: 'sync', senderId: 'outsider-peer', targetId: 'x', documentId: ids[0], data: push });
  assert.equal((await outsider.next()).type, 'doc-unavailable');
  assert.equal(await lead.call('workspace.getState', { workspaceId: w.id }), before);
  // An automerge-repo client just finds it unavailable.
  const found = await repo(ctx, await key('outsider')).find(automergeUrlOf(w.id, 'state') as AutomergeUrl).then(() => 'found', (e: Error) => e.message);
  assert.match(found, /unavailable/);
});

test("a viewer syncs read-only: its changes are dropped, recorded as refused, and the document is unchanged", async (ctx) => {
  const { lead, w, key, tenant } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/title', value: 'Ship 7' }] });
  const url = automergeUrlOf(w.id, 'state') as AutomergeUrl;
  const h = await repo(ctx, await key('viewer')).find<{ title: string; mine?: boolean; more?: number }>(url);
  assert.equal(plain(h), { title: 'Ship 7' });
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  h.change((d) => {
    d.mine = true;
  });
  // The viewer still receives what others write.
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/more', value: 1 }] });
  await waitFor(() => plain(h).more === 1);
  // A peer that sends changes anyway (an older Automerge ignores read-only sync states) is refused.
  const raw = await RawPeer.open(ctx, rawUrl(ctx, await key('viewer')));
  await raw.join();
  raw.request(automergeDocumentId(w.id, 'state'));
  const first = await raw.next((m) => m.type === 'sync');
  let mine = Automerge.init<Record<string, unknown>>();
  let st = Automerge.initSyncState();
  [mine, st] = Automerge.receiveSyncMessage(mine, st, first.data as Uint8Array);
  mine = Automerge.change(mine, (d) => {
    d.title = 'Hijacked';
  });
  const change = Automerge.getLastLocalChange(mine)!;
  const [, m] = Automerge.generateSyncMessage(mine, st);
  const decoded = Automerge.decodeSyncMessage(m!);
  raw.send({ type: 'sync', senderId: 'raw-peer', targetId: 's', documentId: automergeDocumentId(w.id, 'state'), data: Automerge.encodeSyncMessage({ ...decoded, changes: [change] }) });
  // The editor's change after it is the next event: the viewer's never made it.
  const sub = await follower(lead, `document:${w.id}:state`);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/after', value: true }] });
  await waitFor(() => sub.events.length === 3);
  const got = await lead.call('workspace.getState', { workspaceId: w.id });
  assert.equal(got.state, { title: 'Ship 7', more: 1, after: true });
  assert.equal(sub.events.map((e) => e.principal), ['lead', 'lead', 'lead']);
  assert.is(before.version + 2, got.version);
  const admin = await ctx.ts.client(tenant, 'auditor', ['admin']);
  await ctx.ts.server.app.audit!.flush();
  const refused = await admin.call('audit.query', { principal: 'viewer', outcome: 'refused' });
  assert.ok(refused.items.some((i) => (i as unknown as { method: string }).method === 'document.sync'), JSON.stringify(refused.items));
});

test('a removed member is cut off mid-session: told the document is unavailable, sent nothing more, its changes refused', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }] });
  const id = automergeDocumentId(w.id, 'state');
  const raw = await RawPeer.open(ctx, rawUrl(ctx, await key('ed')));
  await raw.join();
  raw.request(id);
  const first = await raw.next((m) => m.type === 'sync');
  let doc = Automerge.init<Record<string, unknown>>();
  let st = Automerge.initSyncState();
  [doc, st] = Automerge.receiveSyncMessage(doc, st, first.data as Uint8Array);
  const h = await repo(ctx, await key('ed')).find<{ n: number; late?: boolean; mine?: boolean }>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
  await lead.call('workspace.removeMember', { workspaceId: w.id, principalId: 'ed' });
  const cut = await raw.next((m) => m.type === 'doc-unavailable');
  assert.is(cut.documentId, id);
  const keeps = await repo(ctx, await key('viewer')).find<{ n: number; late?: boolean }>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/late', value: true }] });
  await waitFor(() => plain(keeps).late === true);
  h.change((d) => {
    d.mine = true;
  });
  doc = Automerge.change(doc, (d) => {
    d.n = 99;
  });
  const [, m] = Automerge.generateSyncMessage(doc, st);
  raw.send({ type: 'sync', senderId: 'raw-peer', targetId: 's', documentId: id, data: m });
  assert.is((await raw.next()).type, 'doc-unavailable', 'a removed member cannot write');
  assert.is(raw.messages.filter((x) => x.type === 'sync').length, 1, 'nothing was sent after the removal');
  assert.is(plain(h).late, undefined, 'the repo client got nothing after the removal');
  const sub = await follower(lead, `document:${w.id}:state`);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/last', value: 1 }] });
  await waitFor(() => sub.events.length === 3);
  assert.equal((await lead.call('workspace.getState', { workspaceId: w.id })).state, { n: 1, late: true, last: 1 });
});

test('a role lowered to viewer turns the session read-only at once', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }] });
  const h = await repo(ctx, await key('ed')).find<{ n: number; by?: string }>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
  h.change((d) => {
    d.by = 'ed';
  });
  await waitFor(async () => (await lead.call('workspace.getState', { workspaceId: w.id })).state.by === 'ed');
  await lead.call('workspace.setMemberRole', { workspaceId: w.id, principalId: 'ed', role: 'viewer' });
  h.change((d) => {
    d.n = 2;
  });
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/after', value: 1 }] });
  await waitFor(() => (plain(h) as { after?: number }).after === 1);
  assert.equal((await lead.call('workspace.getState', { workspaceId: w.id })).state, { n: 1, by: 'ed', after: 1 });
});

test('bad credentials, text frames, garbage and messages out of order are refused with a reason and change nothing', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }] });
  const before = await lead.call('workspace.getState', { workspaceId: w.id });
  const url = syncUrl(ctx.ts.url);
  for (const [u, headers] of [[url, {}], [`${url}?token=trp_nope`, {}], [url, { authorization: 'Basic abc' }]] as const) {
    const p = await RawPeer.open(ctx, u, headers);
    p.send({ type: 'join', senderId: 'x', supportedProtocolVersions: ['1'] });
    const closed = await p.closed;
    assert.is(closed.code, 4001, u);
    const error = await p.next();
    assert.is(error.type, 'error');
    assert.match(String(error.message), /token/);
    assert.ok(!p.messages.some((m) => m.type === 'peer'));
  }
  const token = await key('ed');
  // The header works as well as the query.
  const viaHeader = await RawPeer.open(ctx, url, { authorization: `Bearer ${token}` });
  assert.is((await viaHeader.join()).type, 'peer');
  const cases: [string, (p: RawPeer) => void, RegExp][] = [
    ['text frame', (p) => p.ws.send('{"type":"join"}'), /binary CBOR/],
    ['not CBOR', (p) => p.ws.send(Buffer.from([0xff, 0xfe, 0x00])), /./],
    ['no type', (p) => p.send({ senderId: 'x' }), /no type/],
    ['sync before join', (p) => p.send({ type: 'sync', senderId: 'x', documentId: automergeDocumentId(w.id, 'state'), data: new Uint8Array([1]) }), /join/],
    ['bad protocol version', (p) => p.send({ type: 'join', senderId: 'x', supportedProtocolVersions: ['99'] }), /protocol version/],
  ];
  for (const [name, act, why] of cases) {
    const p = await RawPeer.open(ctx, rawUrl(ctx, token));
    act(p);
    assert.is((await p.closed).code, 1002, name);
    assert.match(String((await p.next((m) => m.type === 'error')).message), why, name);
  }
  const joined: [string, (p: RawPeer) => void][] = [
    ['data that is not a sync message', (p) => p.send({ type: 'sync', senderId: 'raw-peer', documentId: automergeDocumentId(w.id, 'state'), data: new Uint8Array([1, 2, 3]) })],
    ['a documentId that is not base58', (p) => p.send({ type: 'request', senderId: 'raw-peer', documentId: 'not base58!', data: new Uint8Array([1]) })],
    ['wrongly typed fields', (p) => p.send({ type: 'sync', senderId: 'raw-peer', documentId: 42, data: 'text' })],
    ['changes that are not changes', (p) => {
      const msg = Automerge.encodeSyncMessage({ heads: [], need: [], have: [], changes: [new Uint8Array([0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 5, 1])] });
      p.send({ type: 'sync', senderId: 'raw-peer', documentId: automergeDocumentId(w.id, 'state'), data: msg });
    }],
  ];
  for (const [name, act] of joined) {
    const p = await RawPeer.open(ctx, rawUrl(ctx, token));
    await p.join();
    p.request(automergeDocumentId(w.id, 'state'));
    await p.next((m) => m.type === 'sync');
    act(p);
    assert.is((await p.closed).code, 1002, name);
  }
  // A frame beyond the largest document closes the socket at once.
  const big = await RawPeer.open(ctx, rawUrl(ctx, token));
  await big.join();
  big.ws.send(Buffer.alloc(5 * 1024 * 1024 + 65 * 1024));
  assert.is((await big.closed).code, 1009);
  // Unknown message types are ignored; the connection goes on.
  const ok = await RawPeer.open(ctx, rawUrl(ctx, token));
  await ok.join();
  ok.send({ type: 'remote-subscription-change', senderId: 'raw-peer', targetId: 's', add: [] });
  ok.request(automergeDocumentId(w.id, 'state'));
  assert.is((await ok.next()).type, 'sync');
  assert.equal(await lead.call('workspace.getState', { workspaceId: w.id }), before);
});

test('ephemeral messages reach the other members that have the document open', async (ctx) => {
  const { lead, w, key } = await team(ctx.ts, ++ctx.n);
  await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/n', value: 1 }] });
  const url = automergeUrlOf(w.id, 'state') as AutomergeUrl;
  const a = await repo(ctx, await key('lead')).find(url);
  const b = await repo(ctx, await key('ed')).find(url);
  const heard: unknown[] = [];
  b.on('ephemeral-message', ({ message }) => heard.push(message));
  a.broadcast({ cursor: 7 });
  await waitFor(() => heard.length === 1);
  assert.equal(heard, [{ cursor: 7 }]);
});

test('changes held back by the document change rate are merged once it allows, not lost', async (ctx) => {
  const ts = await startServer({ documents: { maxChangesPerSecond: 2 } });
  try {
    const key = await ts.key('slow', 'lead', ['agent']);
    const lead = await connect(ts.url, { token: key, reconnect: false });
    const w = await lead.call('workspace.create', { name: 'Slow', visibility: 'private' });
    const h = await repo(ctx, key, ts.url).find<Record<string, unknown>>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
    await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/json', value: 1 }] }).catch(() => undefined);
    await refusal(lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/json', value: 2 }] }), ErrorCodes.RATE_LIMITED);
    h.change((d) => {
      d.repo = 1;
    });
    await waitFor(async () => (await lead.call('workspace.getState', { workspaceId: w.id })).state.repo === 1);
    await waitFor(() => plain(h).json === 1);
    assert.equal(plain(h), (await lead.call('workspace.getState', { workspaceId: w.id })).state);
    await lead.close();
  } finally {
    await Promise.all(ctx.repos.splice(0).map((x) => x.shutdown().catch(() => {})));
    await ts.close();
  }
});

test('a /sync connection whose key is revoked is closed with 4003', async (ctx) => {
  const ts = await startServer({ credentialCheckMs: 20 });
  try {
    const key = await ts.key('acme', 'ed', ['agent']);
    const p = await RawPeer.open(ctx, `${syncUrl(ts.url)}?token=${key}`);
    assert.is((await p.join()).type, 'peer');
    assert.ok(await ts.store.revokeApiKey(/^trp_([A-Za-z0-9]{12})_/.exec(key)![1]!, Date.now()));
    assert.is((await p.closed).code, 4003);
    assert.match(String((await p.next((m) => m.type === 'error')).message), /revoked/);
  } finally {
    await ts.close();
  }
});

test('after a restart on SQLite the repo client syncs again and no acknowledged change is lost', async (ctx) => {
  const { dir, remove } = tempDir();
  let server = new TroupeServer({ store: sqliteStore(dir), port: 0 });
  const { port, url } = await server.start();
  try {
    const mk = async (principal: string) => (await server.app.auth.createKey({ tenant: 'acme', principal, roles: ['agent'] })).key;
    const leadKey = await mk('lead');
    let lead = await connect(url, { token: leadKey, reconnect: false });
    const w = await lead.call('workspace.create', { name: 'Durable', visibility: 'private' });
    await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/before', value: 1 }] });
    const r = repo(ctx, leadKey, url);
    const h = await r.find<Record<string, unknown>>(automergeUrlOf(w.id, 'state') as AutomergeUrl);
    h.change((d) => {
      d.synced = true;
    });
    await waitFor(async () => (await lead.call('workspace.getState', { workspaceId: w.id })).state.synced === true);
    await lead.close();
    await server.close();
    // Edited while the server is down; sent when the client reconnects.
    h.change((d) => {
      d.offline = true;
    });
    server = new TroupeServer({ store: sqliteStore(dir), port });
    await server.start();
    lead = await connect(url, { token: leadKey, reconnect: false });
    const state = await waitFor(async () => {
      const s = await lead.call('workspace.getState', { workspaceId: w.id });
      return s.state.offline === true ? s : null;
    }, { timeoutMs: 15_000 });
    assert.equal(state.state, { before: 1, synced: true, offline: true });
    await lead.call('workspace.updateState', { workspaceId: w.id, ops: [{ op: 'set', path: '/after', value: 1 }] });
    await waitFor(() => plain(h).after === 1);
    assert.equal(plain(h), (await lead.call('workspace.getState', { workspaceId: w.id })).state);
    const history = await lead.call('workspace.stateHistory', { workspaceId: w.id });
    assert.equal(history.items.map((i) => i.by), ['lead', 'lead', 'lead', 'lead']);
    await lead.close();
  } finally {
    await Promise.all(ctx.repos.splice(0).map((x) => x.shutdown().catch(() => {})));
    await server.close();
    remove();
  }
});

test.run();

import * as Automerge from '@automerge/automerge';
import fc from 'fast-check';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ActorHost } from '../../actors/ActorHost.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import { replay } from '../../actors/replay.js';
import type { Store } from '../../actors/Store.js';
import { documentMachine } from '../../machines/documentMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import { DocumentService, type DocumentLimits, type DocumentRef } from '../../src/documents/DocumentService.js';
import { DocumentEditor, type DocumentEdit } from '../../src/documents/edits.js';
import { documentKind } from '../../src/kinds/documentKind.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { fakeClock, type FakeClock } from '../helpers/clock.js';
import { interceptStore } from '../helpers/stores.js';

interface Setup {
  store: Store;
  host: ActorHost;
  docs: DocumentService;
  clock: FakeClock;
}

function setup(limits: Partial<DocumentLimits> = {}, store: Store = new MemoryStore()): Setup {
  const clock = fakeClock();
  const host = new ActorHost({ store, ownership: new LocalOwnership(store), kinds: [documentKind as never], now: clock.now });
  const docs = new DocumentService({ host, store, now: clock.now, limits, verifyMirror: true });
  return { store, host, docs, clock };
}

const STATE: DocumentRef = { tenant: 'acme', workspaceId: 'w1', documentId: 'state' };
const NOTES: DocumentRef = { tenant: 'acme', workspaceId: 'w1', documentId: 'notes' };
const create = { create: { title: 'State', kind: 'state' as const } };
const ada = { principal: 'ada', correlationId: 'c1' };
const bob = { principal: 'bob' };

async function refusal(p: Promise<unknown>, reason: string): Promise<ProtocolError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ProtocolError, String(e));
    assert.is((e as ProtocolError).reason, reason, (e as ProtocolError).message);
    return e as ProtocolError;
  }
  throw new Error(`expected ${reason}, but the call succeeded`);
}

async function content(s: Setup, ref = STATE): Promise<unknown> {
  return (await s.docs.get(ref))?.content;
}

/** The content rebuilt from the store alone: every stored change applied to an empty document. */
async function fromStore(store: Store, ref = STATE): Promise<unknown> {
  const events = await store.readStream(`${ref.tenant}/document/${ref.workspaceId}:${ref.documentId}`);
  const changes = events.flatMap((e) => ((e.data.changes as string[] | undefined) ?? []).map((c) => new Uint8Array(Buffer.from(c, 'base64'))));
  const [doc] = Automerge.applyChanges(Automerge.init<Record<string, unknown>>(), changes);
  return JSON.parse(JSON.stringify(doc));
}

const test = suite('DocumentService');

test('the first edit of the state creates it, stamped with the principal, the paths and the JSON Patch', async () => {
  const s = setup();
  assert.is(await s.docs.get(STATE), null);
  const r = await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/plan/title', value: 'Ship' }, { op: 'increment', path: '/visits' }] }, create);
  assert.is(r.changed, true);
  assert.is(r.version, 1);
  assert.equal(r.paths, ['/plan', '/visits']);
  assert.is(r.heads.length, 1);
  const [e] = await s.store.readStream('acme/document/w1:state');
  assert.is(e!.type, 'document.create');
  assert.is(e!.meta.principal, 'ada');
  assert.is(e!.meta.correlationId, 'c1');
  assert.equal(e!.data.paths, ['/plan', '/visits']);
  assert.equal(e!.data.heads, r.heads);
  assert.equal(e!.data.patch, r.patch);
  assert.equal(await content(s), { plan: { title: 'Ship' }, visits: 1 });
  await s.host.close();
});

test('an edit of a document that does not exist (and is not the state) is refused with NOT_FOUND', async () => {
  const s = setup();
  await refusal(s.docs.edit(NOTES, ada, { ops: [{ op: 'set', path: '/a', value: 1 }] }), 'NOT_FOUND');
  assert.equal(await s.store.readStream('acme/document/w1:notes'), []);
  await s.host.close();
});

test('an edit that changes nothing stores nothing and says so', async () => {
  const s = setup();
  const first = await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/a', value: 1 }] }, create);
  const r = await s.docs.edit(STATE, bob, { ops: [{ op: 'delete', path: '/missing' }, { op: 'removeFromSet', path: '/none', value: 1 }] });
  assert.is(r.changed, false);
  assert.is(r.version, 1);
  assert.equal(r.heads, first.heads);
  assert.is((await s.store.readStream('acme/document/w1:state')).length, 1);
  await s.host.close();
});

test('concurrent edits of the same path from two clients are applied one after the other and both are kept', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/text', value: 'base' }] }, create);
  const base = (await s.docs.get(STATE))!.summary.heads;
  const results = await Promise.all([
    s.docs.edit(STATE, ada, { splices: [{ path: '/text', index: 0, insert: 'A-' }] }, { expectedHeads: base }),
    s.docs.edit(STATE, bob, { splices: [{ path: '/text', index: 4, insert: '-B' }] }, { expectedHeads: base }),
    s.docs.edit(STATE, ada, { ops: [{ op: 'increment', path: '/n' }] }),
    s.docs.edit(STATE, bob, { ops: [{ op: 'increment', path: '/n', by: 2 }] }),
  ]);
  assert.equal(
    results.map((r) => r.version),
    [2, 3, 4, 5],
  );
  assert.equal(await content(s), { text: 'A-base-B', n: 3 });
  assert.equal(await fromStore(s.store), await content(s), 'the store holds exactly what was acknowledged');
  await s.host.close();
});

test('a failed JSON Patch test refuses the change and leaves state and store unchanged', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/status', value: 'open' }] }, create);
  const e = await refusal(s.docs.edit(STATE, bob, { patch: [{ op: 'replace', path: '/status', value: 'closed' }, { op: 'test', path: '/status', value: 'open' }] }), 'VERSION_MISMATCH');
  assert.is(e.data.index, 1);
  assert.equal(await content(s), { status: 'open' });
  assert.is((await s.store.readStream('acme/document/w1:state')).length, 1);
  // With the test at the start it passes.
  await s.docs.edit(STATE, bob, { patch: [{ op: 'test', path: '/status', value: 'open' }, { op: 'replace', path: '/status', value: 'closed' }] });
  assert.equal(await content(s), { status: 'closed' });
  await s.host.close();
});

test('a refused edit at older heads leaves the document usable and unchanged', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/a', value: 1 }] }, create);
  const base = (await s.docs.get(STATE))!.summary.heads;
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/b', value: 2 }] });
  await refusal(s.docs.edit(STATE, bob, { splices: [{ path: '/b', index: 0, insert: 'x' }] }, { expectedHeads: base }), 'INVALID_PARAMS');
  assert.equal(await content(s), { a: 1, b: 2 });
  await s.docs.edit(STATE, bob, { ops: [{ op: 'set', path: '/c', value: 3 }] }, { expectedHeads: base });
  assert.equal(await content(s), { a: 1, b: 2, c: 3 });
  assert.equal(await fromStore(s.store), { a: 1, b: 2, c: 3 });
  await refusal(s.docs.edit(STATE, bob, { ops: [{ op: 'set', path: '/d', value: 1 }] }, { expectedHeads: ['ab'.repeat(32)] }), 'INVALID_PARAMS');
  await s.host.close();
});

test('an offline Automerge client\'s changes merge on return, attributed to the caller; duplicates are counted', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/todo', value: ['a'] }, { op: 'set', path: '/title', value: 'Plan' }] }, create);
  const saved = await s.docs.get(STATE, { includeAutomerge: true });
  // The client forks the document and edits offline while the server moves on.
  let offline = Automerge.load<{ todo: string[]; title: string; offline?: boolean }>(new Uint8Array(Buffer.from(saved!.automerge!, 'base64')));
  const forkHeads = Automerge.getHeads(offline);
  offline = Automerge.change(offline, (d) => {
    d.todo.push('from offline');
    Automerge.splice(d, ['title'], 4, 0, ' B');
    d.offline = true;
  });
  await s.docs.edit(STATE, ada, { ops: [{ op: 'addToSet', path: '/todo', value: 'online' }] });
  const changes = Automerge.getChangesSince(offline, forkHeads).map((c) => Buffer.from(c).toString('base64'));
  const r = await s.docs.merge(STATE, bob, changes);
  assert.is(r.applied, 1);
  assert.is(r.duplicates, 0);
  const now = (await content(s)) as { todo: string[]; title: string; offline: boolean };
  assert.equal(now.todo.slice().sort(), ['a', 'from offline', 'online']);
  assert.is(now.title, 'Plan B');
  assert.is(now.offline, true);
  const events = await s.store.readStream('acme/document/w1:state');
  assert.is(events.at(-1)!.meta.principal, 'bob', 'attributed to the authenticated caller, not the Automerge actor');
  assert.is(events.at(-1)!.data.source, 'merge');
  const again = await s.docs.merge(STATE, bob, changes);
  assert.equal([again.changed, again.applied, again.duplicates], [false, 0, 1]);
  await s.host.close();
});

test('a merge missing the changes it depends on, or of bytes that are no change, is refused with nothing merged', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/a', value: 1 }] }, create);
  let other = Automerge.from<Record<string, unknown>>({ x: 1 });
  const h = Automerge.getHeads(other);
  other = Automerge.change(other, (d) => {
    d.y = 2;
  });
  const second = Automerge.getChangesSince(other, h).map((c) => Buffer.from(c).toString('base64'));
  const e = await refusal(s.docs.merge(STATE, bob, second), 'INVALID_PARAMS');
  assert.match(e.message, /depends on change/);
  await refusal(s.docs.merge(STATE, bob, [Buffer.from('not a change').toString('base64')]), 'INVALID_PARAMS');
  assert.equal(await content(s), { a: 1 });
  assert.is((await s.store.readStream('acme/document/w1:state')).length, 1);
  await s.host.close();
});

test('history lists versions newest first with heads, author and time, page by page; restore makes an old version current as a new change', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/v', value: 1 }] }, create);
  s.clock.advance(1000);
  await s.docs.edit(STATE, bob, { ops: [{ op: 'set', path: '/v', value: 2 }, { op: 'set', path: '/extra', value: true }] });
  s.clock.advance(1000);
  await s.docs.edit(STATE, ada, { ops: [{ op: 'increment', path: '/n' }] });
  const page1 = await s.docs.history(STATE, { limit: 2 });
  assert.equal(
    page1.items.map((i) => [i.version, i.by, i.source]),
    [
      [3, 'ada', 'update'],
      [2, 'bob', 'update'],
    ],
  );
  assert.ok(page1.nextCursor);
  const page2 = await s.docs.history(STATE, { limit: 2, cursor: page1.nextCursor! });
  assert.equal(
    page2.items.map((i) => [i.version, i.by, i.source]),
    [[1, 'ada', 'create']],
  );
  assert.is(page2.nextCursor, null);
  const r = await s.docs.restore(STATE, { principal: 'cy' }, page2.items[0]!.heads);
  assert.is(r.version, 4);
  assert.equal(await content(s), { v: 1 });
  const after = await s.docs.history(STATE, { limit: 10 });
  assert.is(after.items.length, 4, 'history is kept');
  assert.equal([after.items[0]!.by, after.items[0]!.source, after.items[0]!.restoredFrom], ['cy', 'restore', page2.items[0]!.heads]);
  await refusal(s.docs.history(STATE, { cursor: 'x' }), 'INVALID_PARAMS');
  await refusal(s.docs.restore(STATE, ada, ['00'.repeat(32)]), 'INVALID_PARAMS');
  await s.host.close();
});

test('after enough changes a compacted save is stored, and loading starts from it', async () => {
  const s = setup({ compactEvery: 10 });
  for (let i = 0; i < 25; i++) await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: `/k${i % 5}`, value: i }] }, create);
  // The compaction runs behind the last change: one more read waits for it.
  await s.docs.get(STATE);
  const events = await s.store.readStream('acme/document/w1:state');
  assert.ok(events.some((e) => e.type === 'document.compact'), 'a save was stored');
  s.docs.unloadAll();
  const before = await content(s);
  const load = s.docs.stats().lastLoad!;
  assert.is(load.fromSave, true);
  assert.ok(load.changesApplied < 10, `applied ${load.changesApplied} changes after the save`);
  assert.equal(before, { k0: 20, k1: 21, k2: 22, k3: 23, k4: 24 });
  const snapshot = replay(documentMachine, events);
  assert.is(snapshot.context.doc.changeCount, 25, 'replaying the stream gives the same document metadata');
  await s.host.close();
});

test('a change beyond the size limit is refused with QUOTA_EXCEEDED and nothing changes', async () => {
  const s = setup({ maxBytes: 2048 });
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/small', value: 'x' }] }, create);
  const e = await refusal(s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/big', value: 'y'.repeat(5000) }] }), 'QUOTA_EXCEEDED');
  assert.equal([e.data.limitBytes, typeof e.data.sizeBytes], [2048, 'number']);
  assert.equal(await content(s), { small: 'x' });
  assert.is((await s.store.readStream('acme/document/w1:state')).length, 1);
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/small', value: 'z' }] });
  assert.equal(await content(s), { small: 'z' });
  await s.host.close();
});

test('changes beyond the rate of a document are refused with RATE_LIMITED and a retry hint; after it they pass', async () => {
  const s = setup({ maxChangesPerSecond: 3 });
  for (let i = 0; i < 3; i++) await s.docs.edit(STATE, ada, { ops: [{ op: 'increment', path: '/n' }] }, create);
  const e = await refusal(s.docs.edit(STATE, ada, { ops: [{ op: 'increment', path: '/n' }] }), 'RATE_LIMITED');
  assert.ok((e.data.retryAfterMs as number) > 0 && (e.data.retryAfterMs as number) <= 334, String(e.data.retryAfterMs));
  // Another document has its own budget.
  await s.docs.create(NOTES, ada, { title: 'Notes' });
  s.clock.advance(e.data.retryAfterMs as number);
  await s.docs.edit(STATE, ada, { ops: [{ op: 'increment', path: '/n' }] });
  assert.equal(await content(s), { n: 4 });
  await s.host.close();
});

test('more entries in one call than allowed are refused before anything is done', async () => {
  const s = setup({ maxOpsPerCall: 3 });
  const ops = Array.from({ length: 4 }, (_, i) => ({ op: 'set' as const, path: `/k${i}`, value: i }));
  const e = await refusal(s.docs.edit(STATE, ada, { ops }, create), 'INVALID_PARAMS');
  assert.equal([e.data.limit, e.data.count], [3, 4]);
  await refusal(s.docs.merge(STATE, ada, ['AAAA', 'AAAA', 'AAAA', 'AAAA']), 'INVALID_PARAMS');
  assert.is(await s.docs.get(STATE), null);
  await s.host.close();
});

test('when a commit fails the document in memory is dropped and rebuilt from the store, so nothing unacknowledged shows', async () => {
  let fail = false;
  const store = interceptStore(new MemoryStore(), {
    commit: async (inner, items) => {
      if (fail) throw new Error('disk on fire');
      return inner(items);
    },
  });
  const s = setup({}, store);
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/kept', value: 1 }] }, create);
  fail = true;
  await refusal(s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/lost', value: 2 }] }), 'UNAVAILABLE');
  fail = false;
  const loads = s.docs.stats().loads;
  assert.equal(await content(s), { kept: 1 });
  assert.is(s.docs.stats().loads, loads + 1, 'rebuilt from the store');
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/after', value: 3 }] });
  assert.equal(await content(s), { kept: 1, after: 3 });
  assert.equal(await fromStore(store), { kept: 1, after: 3 });
  await s.host.close();
});

test('documents are created once, with content, and listed in memory at most maxLoaded at a time', async () => {
  const s = setup({ maxLoaded: 2 });
  const r = await s.docs.create(NOTES, ada, { title: 'Notes', content: { body: 'hi', tags: ['x'] } });
  assert.equal(r.content, { body: 'hi', tags: ['x'] });
  assert.equal([r.summary.kind, r.summary.title, r.summary.createdBy, r.summary.version], ['document', 'Notes', 'ada', 1]);
  await refusal(s.docs.create(NOTES, bob, { title: 'Again' }), 'ALREADY_EXISTS');
  for (const id of ['d1', 'd2', 'd3']) await s.docs.create({ ...NOTES, documentId: id }, ada, { title: id });
  assert.ok(s.docs.stats().loaded <= 2, `loaded ${s.docs.stats().loaded}`);
  assert.equal((await s.docs.get(NOTES))!.content, { body: 'hi', tags: ['x'] });
  const empty = await s.docs.create({ ...NOTES, documentId: 'empty' }, ada, { title: 'Empty' });
  assert.equal([empty.content, empty.summary.heads], [{}, []]);
  await s.host.close();
});

test('every change is in the audit trail with its principal and paths, per member', async () => {
  const s = setup();
  await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/a/x', value: 1 }] }, create);
  await s.docs.edit(STATE, bob, { ops: [{ op: 'set', path: '/b', value: 1 }] });
  await s.docs.edit(STATE, bob, { patch: [{ op: 'add', path: '/a/y', value: 2 }] });
  const page = await s.store.queryEvents('acme', { kind: 'document', principal: 'bob' });
  const bobs = page.items.flatMap((i) => (i.outcome === 'accepted' ? [i.event.data.paths] : []));
  assert.equal(bobs, [['/a/y'], ['/b']]);
  await s.host.close();
});

test('random edits, edits at older heads and merges: memory, a reload and the stored changes always agree', async () => {
  const keys = ['a', 'b', 't', 'l'];
  const path = fc.constantFrom(...keys.map((k) => `/${k}`), '/l/0', '/l/-', '/m/x');
  const edit = fc.oneof(
    fc.record({ ops: fc.array(fc.oneof(
      fc.record({ op: fc.constant('set' as const), path, value: fc.oneof(fc.integer({ min: -9, max: 9 }), fc.string({ maxLength: 5 }), fc.constant([1, 2])) }),
      fc.record({ op: fc.constant('increment' as const), path, by: fc.integer({ min: -3, max: 3 }) }),
      fc.record({ op: fc.constant('addToSet' as const), path, value: fc.integer({ min: 0, max: 3 }) }),
      fc.record({ op: fc.constant('delete' as const), path }),
    ), { minLength: 1, maxLength: 3 }) }),
    fc.record({ splices: fc.array(fc.record({ path, index: fc.integer({ min: 0, max: 4 }), deleteCount: fc.integer({ min: 0, max: 2 }), insert: fc.string({ maxLength: 3 }) }), { minLength: 1, maxLength: 2 }) }),
  );
  const step = fc.record({ edit, atOlder: fc.boolean(), merge: fc.boolean() });
  await fc.assert(
    fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 15 }), async (steps) => {
      const s = setup();
      try {
        await s.docs.edit(STATE, ada, { ops: [{ op: 'set', path: '/t', value: 'text' }, { op: 'set', path: '/l', value: [0] }] }, create);
        const seen: string[][] = [];
        for (const { edit: e, atOlder, merge } of steps) {
          const current = (await s.docs.get(STATE, { includeAutomerge: merge }))!;
          seen.push(current.summary.heads);
          const at = atOlder ? seen[Math.floor(seen.length / 2)] : undefined;
          if (merge) {
            // An Automerge client edits its own copy and merges the change.
            const mine = Automerge.load<unknown>(new Uint8Array(Buffer.from(current.automerge!, 'base64')));
            let next: Automerge.Doc<unknown>;
            try {
              next = Automerge.change(mine, (d) => new DocumentEditor(d).apply(e as DocumentEdit));
            } catch (err) {
              if (err instanceof ProtocolError) continue;
              throw err;
            }
            const changes = Automerge.getChangesSince(next, current.summary.heads).map((c) => Buffer.from(c).toString('base64'));
            if (changes.length > 0) await s.docs.merge(STATE, bob, changes);
            continue;
          }
          await s.docs.edit(STATE, ada, e as DocumentEdit, { expectedHeads: at }).catch((err: unknown) => {
            if (!(err instanceof ProtocolError) || err.reason !== 'INVALID_PARAMS') throw err;
          });
        }
        const live = await content(s);
        assert.equal(await fromStore(s.store), live, 'the store has exactly the changes acknowledged');
        s.docs.unloadAll();
        assert.equal(await content(s), live, 'a reload gives the same content');
      } finally {
        await s.host.close();
      }
    }),
    { numRuns: 40 },
  );
});

test.run();

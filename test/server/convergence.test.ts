import * as Automerge from '@automerge/automerge';
import jsonpatch from 'fast-json-patch';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import type { DocumentChangeResult, DocumentEventData } from '../../protocol/documents.js';
import type { ActorEvent } from '../../protocol/model.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

/**
 * Twenty JSON clients, members with the editor role, edit one workspace state document at the same
 * time with every kind of edit the server takes — `set` on a shared path and on a path of their
 * own, `increment` of shared and own counters, `addToSet`, JSON Patch `add`/`replace`, text
 * splices (some against stale `expectedHeads`, so merged with Automerge `changeAt`), through
 * `workspace.updateState` and `document.update` — and each also edits an Automerge fork of the
 * document "offline" and sends its changes back with `workspace.mergeState` while the others go
 * on. Every call is awaited before the client's next one, so each client knows exactly which of
 * its changes were acknowledged. At the end:
 *
 * - every client reads identical content and heads (`workspace.getState`, `document.get`), equal to
 *   what each client's subscription rebuilt from the JSON Patches alone, and to the Automerge view;
 * - every acknowledged change is there: own keys hold their last acknowledged value, counters the
 *   number of acknowledged increments, sets every added value once, every card, every text insert;
 * - the document's event stream has one event per acknowledged change, attributed to the principal
 *   that made it (never to the Automerge actor id the offline client chose) with its source.
 *
 * No sleeps: the clients run at full speed and the test waits for conditions.
 */

const CLIENTS = 20;
const ROUNDS = 12;
/** Offline batches per client (each merged with one `workspace.mergeState`), and changes per batch. */
const OFFLINE_AT_ROUNDS = [5, 11];
const OFFLINE_CHANGES = 3;

interface State {
  shared: { title: string; owner: string };
  own: Record<string, { round: number; note: string }>;
  status: Record<string, string>;
  counters: Record<string, number>;
  tags: string[];
  cards: Record<string, { by: number; round?: number; batch?: number; offline?: boolean }>;
  offline: Record<string, { batch: number; change: number }>;
  log: string;
}

/** The Automerge shape of the same document (counters are Counters, in the fork). */
interface Fork {
  counters: Record<string, Automerge.Counter>;
  cards: Record<string, unknown>;
  offline: Record<string, unknown>;
  log: string;
}

/** What one client knows it did: only changes the server acknowledged. */
interface Ledger {
  principal: string;
  own: { round: number; note: string } | null;
  status: string | null;
  /** Acknowledged increments of /counters/total by this client; each also incremented /counters/<principal>. */
  increments: number;
  tags: Set<string>;
  owners: string[];
  cards: string[];
  markers: string[];
  offline: { batch: number; change: number } | null;
  /** Every acknowledged change: the version and heads it produced, and how it was made. */
  acks: { version: number; heads: string[]; source: 'update' | 'merge'; changes?: string[] }[];
  lastHeads: string[];
}

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const fromB64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));
const count = (text: string, part: string) => text.split(part).length - 1;

/** A subscriber that keeps its own JSON copy from the diffs alone, and every document event. */
async function follower(client: TroupeClient, topic: string) {
  const state = { json: {} as Record<string, unknown>, heads: [] as string[], events: [] as ActorEvent[] };
  await client.subscribe(
    topic,
    (e) => {
      if (e.type !== 'document.create' && e.type !== 'document.change') return;
      const d = e.data as unknown as DocumentEventData;
      state.json = jsonpatch.applyPatch(state.json, d.patch as jsonpatch.Operation[], true, false).newDocument;
      state.heads = d.heads;
      state.events.push(e);
    },
    { fromPosition: 0 },
  );
  return state;
}

const test = suite<{ ts: TestServer }>('twenty clients converge on one workspace document');

test.before(async (ctx) => {
  // The per-document change rate limit is lifted: this is about convergence, not the limiter.
  ctx.ts = await startServer({ documents: { maxChangesPerSecond: 1_000_000 } });
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

test('twenty editors with ops, JSON Patch, splices and offline Automerge merges at once: identical reads, every acknowledged change present and attributed', async (ctx) => {
  const tenant = 'converge';
  const lead = await ctx.ts.client(tenant, 'lead', ['agent']);
  const w = await lead.call('workspace.create', { name: 'Busy room', visibility: 'private' });
  const names = Array.from({ length: CLIENTS }, (_, i) => `c${i}`);
  // Every container exists before anyone forks: maps or counters created concurrently at the same
  // key by two forks would be two different objects, and only one of them would win.
  await lead.call('workspace.updateState', {
    workspaceId: w.id,
    ops: [
      { op: 'set', path: '/shared', value: { title: 'Plan', owner: 'nobody' } },
      { op: 'set', path: '/own', value: {} },
      { op: 'set', path: '/status', value: Object.fromEntries(names.map((n) => [n, 'new'])) },
      { op: 'set', path: '/tags', value: [] },
      { op: 'set', path: '/cards', value: {} },
      { op: 'set', path: '/offline', value: {} },
      { op: 'set', path: '/log', value: 'start' },
      { op: 'increment', path: '/counters/total', by: 0 },
      ...names.map((n) => ({ op: 'increment' as const, path: `/counters/${n}`, by: 0 })),
    ],
  });
  const clients: TroupeClient[] = [];
  for (const n of names) {
    await lead.call('workspace.addMember', { workspaceId: w.id, principalId: n, role: 'editor' });
    clients.push(await ctx.ts.client(tenant, n, ['agent']));
  }
  const topic = `document:${w.id}:state`;
  const followers = await Promise.all(clients.map((c) => follower(c, topic)));
  const stream = await follower(lead, topic);

  const ledgers: Ledger[] = names.map((principal) => ({
    principal,
    own: null,
    status: null,
    increments: 0,
    tags: new Set(),
    owners: [],
    cards: [],
    markers: [],
    offline: null,
    acks: [],
    lastHeads: [],
  }));

  /** Records an acknowledged change. */
  const ack = (l: Ledger, r: DocumentChangeResult, source: 'update' | 'merge', changes?: string[]) => {
    assert.ok(r.changed, `${l.principal}: every edit of this test changes something`);
    l.acks.push({ version: r.version, heads: r.heads, source, ...(changes ? { changes } : {}) });
    l.lastHeads = r.heads;
  };

  await Promise.all(
    clients.map(async (c, i) => {
      const me = names[i]!;
      const l = ledgers[i]!;
      const ws = { workspaceId: w.id };
      // The offline copy: the actor id is the client's choice (here one that names somebody
      // else); the server must attribute the merged changes to the caller all the same.
      const got = await c.call('workspace.getState', { ...ws, includeAutomerge: true });
      let fork = Automerge.load<Fork>(fromB64(got.automerge!), { actor: Buffer.from(`lead-spoof-${i}`).toString('hex') });
      l.lastHeads = got.heads;

      for (let r = 0; r < ROUNDS; r++) {
        switch ((i + r) % 5) {
          case 0: {
            // set on the client's own path, increments of the shared and the own counter; through
            // workspace.updateState or document.update on the state document.
            const own = { round: r, note: `${me} round ${r}` };
            const edit = { ops: [{ op: 'set' as const, path: `/own/${me}`, value: own }, { op: 'increment' as const, path: '/counters/total' }, { op: 'increment' as const, path: `/counters/${me}` }] };
            const res = r % 2 === 0 ? await c.call('workspace.updateState', { ...ws, ...edit }) : await c.call('document.update', { ...ws, documentId: 'state', ...edit });
            ack(l, res, 'update');
            l.own = own;
            l.increments++;
            break;
          }
          case 1: {
            // set on a path everybody sets, and addToSet of a value of its own and one shared.
            const owner = `${me}-r${r}`;
            const res = await c.call('workspace.updateState', {
              ...ws,
              ops: [{ op: 'set', path: '/shared/owner', value: owner }, { op: 'addToSet', path: '/tags', value: me }, { op: 'addToSet', path: '/tags', value: `t${r % 3}` }],
            });
            ack(l, res, 'update');
            l.owners.push(owner);
            l.tags.add(me).add(`t${r % 3}`);
            break;
          }
          case 2: {
            // JSON Patch: add a card, replace the client's status.
            const card = `${me}-r${r}`;
            const res = await c.call('workspace.updateState', {
              ...ws,
              patch: [{ op: 'add', path: `/cards/${card}`, value: { by: i, round: r } }, { op: 'replace', path: `/status/${me}`, value: `r${r}` }],
            });
            ack(l, res, 'update');
            l.cards.push(card);
            l.status = `r${r}`;
            break;
          }
          case 3: {
            // A text splice against the heads the client last saw, which others have moved past.
            const marker = `[${me}r${r}]`;
            const res = await c.call('document.update', { ...ws, documentId: 'state', expectedHeads: l.lastHeads, splices: [{ path: '/log', index: 0, insert: marker }] });
            ack(l, res, 'update');
            l.markers.push(marker);
            break;
          }
          default: {
            // Ops against stale heads too: increments and the own path, merged with what happened since.
            const own = { round: r, note: `${me} round ${r} (stale heads)` };
            const res = await c.call('workspace.updateState', {
              ...ws,
              expectedHeads: l.lastHeads,
              ops: [{ op: 'increment', path: '/counters/total' }, { op: 'increment', path: `/counters/${me}` }, { op: 'set', path: `/own/${me}`, value: own }],
            });
            ack(l, res, 'update');
            l.own = own;
            l.increments++;
          }
        }

        const batch = OFFLINE_AT_ROUNDS.indexOf(r);
        if (batch >= 0) {
          // Offline edits made since the fork (everything the others did meanwhile is concurrent
          // with them), sent back as Automerge changes.
          const base = Automerge.getHeads(fork);
          const markers: string[] = [];
          const cards: string[] = [];
          for (let k = 0; k < OFFLINE_CHANGES; k++) {
            const marker = `{${me}b${batch}e${k}}`;
            const card = `${me}-b${batch}e${k}`;
            fork = Automerge.change(fork, { message: 'made by lead' }, (d) => {
              d.offline[me] = { batch, change: k };
              d.counters.total!.increment(1);
              d.counters[me]!.increment(1);
              d.cards[card] = { by: i, batch, offline: true };
              Automerge.splice(d, ['log'], 0, 0, marker);
            });
            markers.push(marker);
            cards.push(card);
          }
          const changes = Automerge.getChangesSince(fork, base).map(b64);
          assert.is(changes.length, OFFLINE_CHANGES);
          const res = await c.call('workspace.mergeState', { ...ws, changes });
          assert.equal([res.applied, res.duplicates], [OFFLINE_CHANGES, 0]);
          ack(l, res, 'merge', changes);
          l.offline = { batch, change: OFFLINE_CHANGES - 1 };
          l.increments += OFFLINE_CHANGES;
          l.markers.push(...markers);
          l.cards.push(...cards);
          // Back online: bring the fork up to date for the next batch.
          const now = await c.call('workspace.getState', { ...ws, includeAutomerge: true });
          fork = Automerge.merge(fork, Automerge.load<Fork>(fromB64(now.automerge!)));
          assert.equal(Automerge.getHeads(fork).slice().sort(), now.heads.slice().sort(), `${me}: the fork caught up`);
        }
      }
    }),
  );

  // 1. Every client reads the same document, both ways.
  const reads = await Promise.all(clients.map(async (c) => ({ state: await c.call('workspace.getState', { workspaceId: w.id }), doc: await c.call('document.get', { workspaceId: w.id, documentId: 'state' }) })));
  const final = reads[0]!.state;
  for (const [i, r] of reads.entries()) {
    assert.equal(r.state, final, `${names[i]}: workspace.getState is identical`);
    assert.equal(r.doc, reads[0]!.doc, `${names[i]}: document.get is identical`);
    assert.equal(r.doc.content, final.state, `${names[i]}: document.get content is the state`);
    assert.equal(r.doc.heads, final.heads);
  }
  const totalAcks = ledgers.reduce((n, l) => n + l.acks.length, 0);
  assert.is(final.version, 1 + totalAcks, 'one version per acknowledged change, after the first');
  // ... and the Automerge document agrees with the JSON.
  const full = await lead.call('workspace.getState', { workspaceId: w.id, includeAutomerge: true });
  assert.equal(JSON.parse(JSON.stringify(Automerge.load(fromB64(full.automerge!)))), final.state);
  // Every subscriber rebuilt the same content from the JSON Patches alone.
  await waitFor(() => [...followers, stream].every((f) => f.heads.join() === final.heads.join()));
  for (const [i, f] of followers.entries()) assert.equal(f.json, final.state, `${names[i]}'s subscription rebuilt the state`);

  // 2. Every acknowledged change is present.
  const state = final.state as unknown as State;
  for (const l of ledgers) {
    const me = l.principal;
    assert.equal(state.own[me], l.own ?? undefined, `${me}: its own key has its last acknowledged value`);
    assert.is(state.status[me], l.status ?? 'new', `${me}: its status has its last acknowledged value`);
    assert.is(state.counters[me], l.increments, `${me}: its counter counts its acknowledged increments`);
    assert.equal(state.offline[me], l.offline ?? undefined, `${me}: its offline key has its last merged value`);
    for (const card of l.cards) assert.ok(state.cards[card], `${me}: card ${card} is there`);
    for (const m of l.markers) assert.is(count(state.log, m), 1, `${me}: text insert ${m} is there once`);
  }
  assert.is(state.counters.total, ledgers.reduce((n, l) => n + l.increments, 0), 'the shared counter counts every acknowledged increment');
  const tags = new Set(ledgers.flatMap((l) => [...l.tags]));
  assert.equal(state.tags.slice().sort(), [...tags].sort(), 'the set has every added value, once');
  assert.equal(Object.keys(state.cards).sort(), ledgers.flatMap((l) => l.cards).sort(), 'exactly the acknowledged cards');
  const markers = ledgers.flatMap((l) => l.markers);
  assert.is(state.log.length, 'start'.length + markers.reduce((n, m) => n + m.length, 0), 'the text is the inserts and the start, nothing else');
  assert.ok(state.log.endsWith('start'));
  // Sets of /shared/owner were applied one after another: the last one applied wins whole.
  assert.ok(ledgers.some((l) => l.owners.includes(state.shared.owner)), `the shared owner ${state.shared.owner} is one acknowledged value`);
  assert.is(state.shared.title, 'Plan');

  // 3. The event stream attributes each change to the principal that made it.
  const events = stream.events;
  assert.is(events.length, 1 + totalAcks, 'one event per acknowledged change, after the first');
  assert.equal([events[0]!.type, events[0]!.principal, (events[0]!.data as unknown as DocumentEventData).source], ['document.create', 'lead', 'create']);
  const byVersion = new Map(events.map((e) => [e.version, e]));
  assert.is(byVersion.size, events.length, 'versions are distinct');
  for (const l of ledgers) {
    for (const a of l.acks) {
      const e = byVersion.get(a.version);
      assert.ok(e, `${l.principal}: the event of version ${a.version} is in the stream`);
      const d = e.data as unknown as DocumentEventData;
      assert.equal([e.type, e.principal, d.source, d.heads], ['document.change', l.principal, a.source, a.heads], `${l.principal}: version ${a.version} is attributed to it`);
      if (a.changes) assert.equal(d.changes, a.changes, `${l.principal}: the merged Automerge changes are in its event`);
    }
    assert.is(events.filter((e) => e.principal === l.principal).length, l.acks.length, `${l.principal}: no change of somebody else's is attributed to it`);
  }
  // Every subscriber got the same events, in the same order.
  for (const f of followers) assert.equal(f.events.map((e) => e.version), events.map((e) => e.version));
});

test.run();

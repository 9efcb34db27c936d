import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { RECENT_HISTORY, compactionDue, documentMachine, sameHeads, type DocumentEvent } from '../../machines/documentMachine.js';
import { T0 } from '../helpers/clock.js';

type DocumentSnapshot = SnapshotFrom<typeof documentMachine>;
type Body = DocumentEvent extends infer E ? (E extends DocumentEvent ? Omit<E, 'at' | 'by'> : never) : never;

const H = (n: number) => n.toString(16).padStart(64, '0');

/** A document driven by pure transitions on a simulated clock (1 s per event unless given). */
class Sim {
  snapshot: DocumentSnapshot;
  at = T0 - 1_000;
  events: DocumentEvent[] = [];

  constructor() {
    [this.snapshot] = initialTransition(documentMachine);
  }

  get doc() {
    return this.snapshot.context.doc;
  }

  send(body: Body, by = 'ada', at = this.at + 1_000): void {
    const event = { ...body, at, by } as DocumentEvent;
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted in ${String(this.snapshot.value)}`);
    const [next, actions] = transition(documentMachine, this.snapshot, event);
    assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'documents emit no effects');
    this.snapshot = next;
    this.at = at;
    this.events.push(event);
  }

  refuse(body: Body): void {
    const event = { ...body, at: this.at + 1_000, by: 'ada' } as DocumentEvent;
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused in ${String(this.snapshot.value)}`);
    const [next] = transition(documentMachine, this.snapshot, event);
    assert.equal(documentMachine.getPersistedSnapshot(next), documentMachine.getPersistedSnapshot(this.snapshot));
  }
}

const fields = (n: number, bytes = 100) => ({
  workspaceId: 'w1',
  documentId: 'notes',
  changes: Array.from({ length: n }, (_, i) => `c${i}`),
  bytes,
  heads: [H(n)],
  patch: [],
  paths: ['/a'],
});
const create: Body = { type: 'document.create', title: 'Notes', kind: 'document', source: 'create', ...fields(1) };
const change = (n = 1, bytes = 100): Body => ({ type: 'document.change', source: 'update', ...fields(n, bytes), heads: [H(1000 + Math.random() * 1e6)] });

function created(): Sim {
  const sim = new Sim();
  sim.send(create, 'ada', T0);
  return sim;
}

const test = suite('documentMachine');

test('refuses changes and compactions before creation and stays absent', () => {
  const sim = new Sim();
  assert.is(sim.snapshot.value, 'absent');
  sim.refuse(change());
  sim.refuse({ type: 'document.compact', save: 'AA==', heads: [], bytes: 1 });
});

test('creation records the author, the title, the heads and the size of the first change', () => {
  const d = created().doc;
  assert.is(d.title, 'Notes');
  assert.is(d.kind, 'document');
  assert.is(d.createdBy, 'ada');
  assert.is(d.createdAt, iso(T0));
  assert.is(d.updatedBy, 'ada');
  assert.equal(d.heads, [H(1)]);
  assert.is(d.events, 1);
  assert.is(d.changeCount, 1);
  assert.is(d.size, 100);
  assert.equal(d.sinceSave, { changes: 1, bytes: 100 });
  assert.equal(d.recent, [{ version: 1, heads: [H(1)], by: 'ada', at: iso(T0), source: 'create', changes: 1 }]);
});

test('a document may be created empty (no changes, no heads)', () => {
  const sim = new Sim();
  sim.send({ ...create, ...fields(0, 0), heads: [] });
  assert.is(sim.doc.changeCount, 0);
  assert.equal(sim.doc.heads, []);
});

test('a second creation is refused', () => {
  created().refuse(create);
});

test('changes add up: count, size, heads, updatedBy, and the author of each is kept in recent history', () => {
  const sim = created();
  sim.send(change(3, 250), 'bob', T0 + 60_000);
  const d = sim.doc;
  assert.is(d.changeCount, 4);
  assert.is(d.size, 350);
  assert.is(d.events, 2);
  assert.is(d.updatedBy, 'bob');
  assert.is(d.updatedAt, iso(T0 + 60_000));
  assert.equal(d.sinceSave, { changes: 4, bytes: 350 });
  assert.is(d.recent[1]!.by, 'bob');
  assert.is(d.recent[1]!.changes, 3);
  assert.is(d.recent[1]!.version, 2);
});

test('a change without Automerge changes is refused', () => {
  created().refuse(change(0));
});

test('recent history keeps only the last entries', () => {
  const sim = created();
  for (let i = 0; i < RECENT_HISTORY + 5; i++) sim.send(change());
  assert.is(sim.doc.recent.length, RECENT_HISTORY);
  assert.is(sim.doc.recent.at(-1)!.version, RECENT_HISTORY + 6);
});

test('a compaction for the current heads records where the save is and resets the size to it', () => {
  const sim = created();
  sim.send(change(2, 300));
  const heads = sim.doc.heads;
  sim.send({ type: 'document.compact', save: 'AAAA', heads, bytes: 120 }, 'system');
  const d = sim.doc;
  assert.equal(d.save, { version: 3, heads, bytes: 120 });
  assert.is(d.size, 120);
  assert.equal(d.sinceSave, { changes: 0, bytes: 0 });
  assert.is(d.events, 3);
  assert.is(d.changeCount, 3, 'a compaction adds no change');
  assert.is(d.updatedBy, 'ada', 'a compaction is not an edit');
  sim.send(change(1, 10));
  assert.is(sim.doc.size, 130);
});

test('a compaction for other heads (a stale save) is refused', () => {
  const sim = created();
  sim.refuse({ type: 'document.compact', save: 'AAAA', heads: [H(999)], bytes: 1 });
});

test('sameHeads compares heads as sets', () => {
  assert.ok(sameHeads([H(1), H(2)], [H(2), H(1)]));
  assert.not.ok(sameHeads([H(1)], [H(1), H(2)]));
  assert.not.ok(sameHeads([H(1), H(1)], [H(1), H(2)]));
  assert.ok(sameHeads([], []));
});

test('compaction is due after `every` changes once their bytes reach a tenth of the last save, and always after ten times `every`', () => {
  const sim = created();
  for (let i = 0; i < 8; i++) sim.send(change(1, 10));
  assert.not.ok(compactionDue(sim.doc, 10), '9 changes');
  sim.send(change(1, 10));
  assert.ok(compactionDue(sim.doc, 10), '10 changes, no save yet');
  sim.send({ type: 'document.compact', save: 'AAAA', heads: sim.doc.heads, bytes: 2_000 }, 'system');
  for (let i = 0; i < 10; i++) sim.send(change(1, 10));
  assert.not.ok(compactionDue(sim.doc, 10), '100 bytes since a save of 2000: not yet');
  for (let i = 0; i < 10; i++) sim.send(change(1, 10));
  assert.ok(compactionDue(sim.doc, 10), '200 bytes: a tenth of the save');
  sim.send({ type: 'document.compact', save: 'AAAA', heads: sim.doc.heads, bytes: 1_000_000 }, 'system');
  for (let i = 0; i < 99; i++) sim.send(change(1, 1));
  assert.not.ok(compactionDue(sim.doc, 10), '99 changes, few bytes');
  sim.send(change(1, 1));
  assert.ok(compactionDue(sim.doc, 10), 'ten times `every` changes: always');
});

test('a persisted snapshot survives JSON and goes on accepting changes', () => {
  const sim = created();
  const persisted = JSON.parse(JSON.stringify(documentMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(documentMachine, { snapshot: persisted }).start();
  actor.send({ ...change(2, 5), at: T0 + 5_000, by: 'bob' } as DocumentEvent);
  assert.is(actor.getSnapshot().context.doc.changeCount, 3);
  assert.is(actor.getSnapshot().context.doc.updatedBy, 'bob');
  actor.stop();
});

test('replaying the events reproduces the live state exactly', () => {
  const sim = created();
  sim.send(change(2), 'bob');
  sim.send({ type: 'document.compact', save: 'AAAA', heads: sim.doc.heads, bytes: 50 }, 'system');
  sim.send({ type: 'document.change', source: 'restore', restoredFrom: [H(1)], ...fields(1) }, 'cy');
  const stored = sim.events.map((e) => ({ data: JSON.parse(JSON.stringify(e)) as Record<string, unknown> }));
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(documentMachine, stored))), JSON.parse(JSON.stringify(documentMachine.getPersistedSnapshot(sim.snapshot))));
});

test.run();

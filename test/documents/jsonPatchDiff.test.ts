import * as Automerge from '@automerge/automerge';
import fc from 'fast-check';
import jsonpatch from 'fast-json-patch';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { DocumentOperation, JsonPatchOperation } from '../../protocol/documents.js';
import { ProtocolError } from '../../protocol/errors.js';
import { DocumentEditor, type DocumentEdit } from '../../src/documents/edits.js';
import { changedPaths, toJsonPatch } from '../../src/documents/jsonPatchDiff.js';
import { toPlain } from '../../src/documents/values.js';

type Doc = Automerge.Doc<unknown>;

/** A document with the JSON mirror the server keeps, and a subscriber's copy built only from the diffs. */
class Replica {
  doc: Doc = Automerge.init();
  mirror: Record<string, unknown> = {};
  subscriber: Record<string, unknown> = {};
  diffs: JsonPatchOperation[][] = [];

  #record(patches: Automerge.Patch[]): void {
    const diff = toJsonPatch(patches, this.mirror);
    this.diffs.push(diff.patch);
    this.subscriber = jsonpatch.applyPatch(this.subscriber, diff.patch as jsonpatch.Operation[], true, false).newDocument;
  }

  /** Applies an edit (at `at` when given); a refused edit changes nothing. */
  edit(e: DocumentEdit, at?: Automerge.Heads): void {
    const patches: Automerge.Patch[] = [];
    const opts = { patchCallback: (p: Automerge.Patch[]) => patches.push(...p) };
    try {
      this.doc = at ? Automerge.changeAt(this.doc, at, opts, (d) => new DocumentEditor(d).apply(e)).newDoc : Automerge.change(this.doc, opts, (d) => new DocumentEditor(d).apply(e));
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      // A changeAt that throws leaves the document isolated at its heads: end the isolation.
      if (at) Automerge.getBackend(this.doc).integrate();
      return;
    }
    this.#record(patches);
  }

  merge(changes: Uint8Array[]): void {
    const patches: Automerge.Patch[] = [];
    [this.doc] = Automerge.applyChanges(this.doc, changes, { patchCallback: (p) => patches.push(...p) });
    this.#record(patches);
  }

  check(): void {
    // A fresh view: the document object changeAt returns may itself show stale content.
    const truth = toPlain(Automerge.view(this.doc, Automerge.getHeads(this.doc)));
    assert.equal(this.mirror, truth, 'the mirror equals the document');
    assert.equal(this.subscriber, truth, 'a subscriber applying the diffs has the document');
  }
}

const KEYS = ['a', 'b', 'c', 't', 'n', 'l'];
const pathArb = fc.array(fc.oneof(fc.constantFrom(...KEYS), fc.constantFrom('0', '1', '-')), { minLength: 1, maxLength: 3 }).map((p) => `/${p.join('/')}`);
const valueArb = fc.oneof(
  fc.integer({ min: -5, max: 5 }),
  fc.string({ maxLength: 6 }),
  fc.constant(null),
  fc.boolean(),
  fc.constant({}),
  fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 3 }),
  fc.dictionary(fc.constantFrom(...KEYS), fc.oneof(fc.integer({ min: 0, max: 9 }), fc.string({ maxLength: 4 })), { maxKeys: 3 }),
  // Values as they arrive on the wire: parsed JSON (plain objects).
).map((v) => JSON.parse(JSON.stringify(v)) as unknown);
const opArb: fc.Arbitrary<DocumentOperation> = fc.oneof(
  pathArb.chain((path) => valueArb.map((value) => ({ op: 'set' as const, path, value }))),
  pathArb.chain((path) => fc.integer({ min: -3, max: 3 }).map((by) => ({ op: 'increment' as const, path, by }))),
  pathArb.chain((path) => valueArb.map((value) => ({ op: 'addToSet' as const, path, value }))),
  pathArb.chain((path) => valueArb.map((value) => ({ op: 'removeFromSet' as const, path, value }))),
  pathArb.map((path) => ({ op: 'delete' as const, path })),
);
const spliceArb = fc.record({ path: pathArb, index: fc.integer({ min: 0, max: 6 }), deleteCount: fc.integer({ min: 0, max: 3 }), insert: fc.string({ maxLength: 4 }) });
const editArb: fc.Arbitrary<DocumentEdit> = fc.oneof(
  fc.array(opArb, { minLength: 1, maxLength: 4 }).map((ops) => ({ ops })),
  fc.array(spliceArb, { minLength: 1, maxLength: 3 }).map((splices) => ({ splices })),
);

const test = suite('Automerge patches as JSON Patch');

test('random edits: the mirror and a subscriber applying only the diffs always equal the document', () => {
  fc.assert(
    fc.property(fc.array(editArb, { minLength: 1, maxLength: 25 }), (edits) => {
      const r = new Replica();
      r.edit({ ops: [{ op: 'set', path: '/t', value: 'hello' }, { op: 'set', path: '/l', value: [1, 'two', { three: 3 }] }] });
      for (const e of edits) {
        r.edit(e);
        r.check();
      }
    }),
    { numRuns: 150 },
  );
});

test('random concurrent edits merged in, and edits made at older heads: the diffs still reproduce the document', () => {
  fc.assert(
    fc.property(fc.array(editArb, { maxLength: 8 }), fc.array(editArb, { maxLength: 8 }), fc.array(editArb, { maxLength: 4 }), (mine, theirs, late) => {
      const r = new Replica();
      r.edit({ ops: [{ op: 'set', path: '/t', value: 'shared text' }, { op: 'increment', path: '/n' }, { op: 'set', path: '/l', value: ['x', 'y'] }] });
      const base = Automerge.getHeads(r.doc);
      let fork = Automerge.clone(r.doc);
      for (const e of theirs) {
        try {
          fork = Automerge.change(fork, (d) => new DocumentEditor(d).apply(e));
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
        }
      }
      for (const e of mine) r.edit(e);
      r.merge(Automerge.getChanges(Automerge.view(fork, base), fork));
      r.check();
      for (const e of late) r.edit(e, base);
      r.check();
    }),
    { numRuns: 100 },
  );
});

test('text edits become one replace of the whole string', () => {
  const r = new Replica();
  r.edit({ ops: [{ op: 'set', path: '/doc', value: { body: 'abc' } }] });
  r.edit({ splices: [{ path: '/doc/body', index: 1, deleteCount: 1, insert: 'XY' }, { path: '/doc/body', index: 0, insert: '>' }] });
  assert.equal(r.diffs.at(-1), [{ op: 'replace', path: '/doc/body', value: '>aXYc' }]);
  r.check();
});

test('changed paths stop at list indexes and keep only the outermost', () => {
  assert.equal(changedPaths([['a', 'b'], ['a'], ['l', 3, 'x'], ['m', 'k'], ['m', 'k', 'z'], ['x~', 'y/z']]), ['/a', '/l', '/m/k', '/x~0/y~1z']);
});

test.run();

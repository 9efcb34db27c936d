import * as Automerge from '@automerge/automerge';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ProtocolError } from '../../protocol/errors.js';
import { DocumentEditor, checkEdit, type DocumentEdit } from '../../src/documents/edits.js';
import { formatPointer, parsePointer } from '../../src/documents/pointer.js';
import { checkJson, toPlain } from '../../src/documents/values.js';

type Doc = Automerge.Doc<unknown>;

function docOf(content: Record<string, unknown>): Doc {
  return Automerge.change(Automerge.init<unknown>(), (d) => new DocumentEditor(d).apply({ ops: [{ op: 'set', path: '', value: content }] }));
}

function edit(doc: Doc, e: DocumentEdit): Doc {
  checkEdit(e);
  return Automerge.change(doc, (d) => new DocumentEditor(d).apply(e));
}

const json = (doc: Doc) => toPlain(doc);

/** Applies an edit that must be refused: returns the error and checks the document is unchanged and still usable. */
function refused(doc: Doc, e: DocumentEdit, reason = 'INVALID_PARAMS'): ProtocolError {
  const before = json(doc);
  const heads = Automerge.getHeads(doc);
  let error: unknown;
  try {
    edit(doc, e);
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof ProtocolError, `expected a ProtocolError, got ${String(error)}`);
  assert.is((error as ProtocolError).reason, reason, (error as ProtocolError).message);
  assert.equal(json(doc), before, 'content unchanged');
  assert.equal(Automerge.getHeads(doc), heads, 'no change made');
  // Still usable: a trial change runs (an outdated document would refuse it) and is rolled back.
  const sentinel = new Error('rolled back');
  try {
    Automerge.change(doc, (d) => {
      (d as Record<string, unknown>).usable = true;
      throw sentinel;
    });
  } catch (e) {
    assert.is(e, sentinel, 'the document is still usable');
  }
  return error as ProtocolError;
}

const test = suite('document edits');

test('set creates missing parent maps, replaces values and appends to lists', () => {
  let d = docOf({ list: [1, 2] });
  d = edit(d, {
    ops: [
      { op: 'set', path: '/a/b/c', value: { deep: true } },
      { op: 'set', path: '/list/0', value: 'x' },
      { op: 'set', path: '/list/-', value: 3 },
      { op: 'set', path: '/list/3', value: 4 },
    ],
  });
  assert.equal(json(d), { a: { b: { c: { deep: true } } }, list: ['x', 2, 3, 4] });
});

test('set on text splices in the difference, so a concurrent edit of another part survives', () => {
  const base = docOf({ title: 'The quick fox' });
  const fork = Automerge.clone(base);
  const a = edit(base, { ops: [{ op: 'set', path: '/title', value: 'The quick brown fox' }] });
  const b = edit(fork, { splices: [{ path: '/title', index: 13, insert: ' jumps' }] });
  const merged = Automerge.merge(a, b);
  assert.is((json(merged) as { title: string }).title, 'The quick brown fox jumps');
});

test('increment creates a counter, adds to it, and concurrent increments all count', () => {
  const base = edit(docOf({}), { ops: [{ op: 'increment', path: '/stats/visits' }] });
  assert.equal(json(base), { stats: { visits: 1 } });
  const a = edit(Automerge.clone(base), { ops: [{ op: 'increment', path: '/stats/visits', by: 5 }] });
  const b = edit(Automerge.clone(base), { ops: [{ op: 'increment', path: '/stats/visits', by: -2 }] });
  assert.equal(json(Automerge.merge(a, b)), { stats: { visits: 4 } });
});

test('setting a number on a counter keeps it a counter (the difference is added)', () => {
  let d = edit(docOf({}), { ops: [{ op: 'increment', path: '/n', by: 3 }] });
  d = edit(d, { ops: [{ op: 'set', path: '/n', value: 10 }] });
  d = edit(d, { ops: [{ op: 'increment', path: '/n' }] });
  assert.equal(json(d), { n: 11 });
  assert.ok((d as { n: unknown }).n instanceof Automerge.Counter);
});

test('increment of a plain number or a string is refused and changes nothing', () => {
  const d = docOf({ n: 1, s: 'x' });
  const e = refused(d, { ops: [{ op: 'increment', path: '/n' }] });
  assert.match(e.message, /not a counter/);
  refused(d, { ops: [{ op: 'increment', path: '/s' }] });
});

test('addToSet adds a value once (deep equality), removeFromSet removes every equal one', () => {
  let d = docOf({});
  d = edit(d, {
    ops: [
      { op: 'addToSet', path: '/tags', value: 'a' },
      { op: 'addToSet', path: '/tags', value: 'b' },
      { op: 'addToSet', path: '/tags', value: 'a' },
      { op: 'addToSet', path: '/objs', value: { k: 1, j: [2] } },
      { op: 'addToSet', path: '/objs', value: { j: [2], k: 1 } },
    ],
  });
  assert.equal(json(d), { tags: ['a', 'b'], objs: [{ k: 1, j: [2] }] });
  d = edit(d, { ops: [{ op: 'removeFromSet', path: '/tags', value: 'a' }, { op: 'removeFromSet', path: '/nothing', value: 1 }, { op: 'removeFromSet', path: '/objs', value: { k: 1, j: [2] } }] });
  assert.equal(json(d), { tags: ['b'], objs: [] });
});

test('set operations on something that is not a list are refused', () => {
  const d = docOf({ m: { x: 1 } });
  refused(d, { ops: [{ op: 'addToSet', path: '/m', value: 1 }] });
  refused(d, { ops: [{ op: 'removeFromSet', path: '/m', value: 1 }] });
});

test('delete removes map members and list elements; a missing path is no error', () => {
  let d = docOf({ a: 1, l: [1, 2, 3] });
  d = edit(d, { ops: [{ op: 'delete', path: '/a' }, { op: 'delete', path: '/l/1' }, { op: 'delete', path: '/zz/y' }, { op: 'delete', path: '/l/9' }] });
  assert.equal(json(d), { l: [1, 3] });
});

test('a later entry that fails refuses the whole edit', () => {
  const d = docOf({ a: 1 });
  refused(d, { ops: [{ op: 'set', path: '/b', value: 2 }, { op: 'increment', path: '/a' }] });
});

test('JSON Patch add, remove, replace, move, copy and test follow RFC 6902', () => {
  let d = docOf({ foo: ['bar', 'baz'], obj: { x: 1 }, n: 1 });
  d = edit(d, {
    patch: [
      { op: 'test', path: '/n', value: 1 },
      { op: 'add', path: '/foo/1', value: 'qux' },
      { op: 'add', path: '/foo/-', value: 'end' },
      { op: 'remove', path: '/foo/0' },
      { op: 'replace', path: '/obj/x', value: { y: [true, null] } },
      { op: 'copy', from: '/obj', path: '/copy' },
      { op: 'move', from: '/foo', path: '/obj/moved' },
      { op: 'add', path: '/n', value: 2 },
      { op: 'test', path: '/copy', value: { x: { y: [true, null] } } },
    ],
  });
  assert.equal(json(d), { obj: { x: { y: [true, null] }, moved: ['qux', 'baz', 'end'] }, copy: { x: { y: [true, null] } }, n: 2 });
});

test('JSON Patch on the whole document replaces its members; removing it is refused', () => {
  let d = docOf({ a: 1, b: 2 });
  d = edit(d, { patch: [{ op: 'replace', path: '', value: { b: 3, c: 4 } }] });
  assert.equal(json(d), { b: 3, c: 4 });
  refused(d, { patch: [{ op: 'remove', path: '' }] });
  refused(d, { patch: [{ op: 'add', path: '', value: [1] }] });
});

test('a failed test refuses the whole patch with VERSION_MISMATCH, naming the operation, and changes nothing', () => {
  const d = docOf({ n: 1, list: [1] });
  const e = refused(d, { patch: [{ op: 'add', path: '/list/-', value: 2 }, { op: 'test', path: '/n', value: 2 }] }, 'VERSION_MISMATCH');
  assert.equal(e.data, { check: 'test', index: 1, path: '/n' });
  assert.match(e.message, /patch\[1\] test failed: \/n is 1, not 2/);
  refused(d, { patch: [{ op: 'test', path: '/missing', value: null }] }, 'VERSION_MISMATCH');
});

test('JSON Patch paths that do not exist, bad list indexes and moves into oneself are refused', () => {
  const d = docOf({ a: { b: 1 }, l: [1], s: 'text' });
  refused(d, { patch: [{ op: 'add', path: '/x/y', value: 1 }] });
  refused(d, { patch: [{ op: 'remove', path: '/a/zz' }] });
  refused(d, { patch: [{ op: 'replace', path: '/zz', value: 1 }] });
  refused(d, { patch: [{ op: 'add', path: '/l/5', value: 1 }] });
  refused(d, { patch: [{ op: 'add', path: '/l/01', value: 1 }] });
  refused(d, { patch: [{ op: 'add', path: '/l/x', value: 1 }] });
  refused(d, { patch: [{ op: 'move', from: '/a', path: '/a/b/c' }] });
  refused(d, { patch: [{ op: 'copy', from: '/nothing', path: '/c' }] });
  refused(d, { patch: [{ op: 'add', path: '/s/0', value: 'x' }] });
  refused(d, { patch: [{ op: 'add', path: '/a/b/c', value: 1 }] });
});

test('text splices insert and delete at UTF-16 indexes', () => {
  let d = docOf({ doc: { body: 'Hello world' } });
  d = edit(d, {
    splices: [
      { path: '/doc/body', index: 5, deleteCount: 0, insert: ',' },
      { path: '/doc/body', index: 7, deleteCount: 5, insert: 'Automerge 🎉' },
      { path: '/doc/body', index: 0, deleteCount: 1, insert: 'h' },
    ],
  });
  assert.is((json(d) as { doc: { body: string } }).doc.body, 'hello, Automerge 🎉');
});

test('concurrent splices into the same text both survive a merge', () => {
  const base = docOf({ t: 'abc' });
  const a = edit(Automerge.clone(base), { splices: [{ path: '/t', index: 0, insert: 'X' }] });
  const b = edit(Automerge.clone(base), { splices: [{ path: '/t', index: 3, insert: 'Y' }] });
  assert.is((json(Automerge.merge(a, b)) as { t: string }).t, 'XabcY');
});

test('splices outside the text, into a surrogate pair or into something that is not text are refused', () => {
  const d = docOf({ t: 'a🎉b', n: 1 });
  refused(d, { splices: [{ path: '/t', index: 5, insert: 'x' }] });
  refused(d, { splices: [{ path: '/t', index: 3, deleteCount: 2 }] });
  refused(d, { splices: [{ path: '/t', index: 2, insert: 'x' }] });
  refused(d, { splices: [{ path: '/n', index: 0, insert: 'x' }] });
  refused(d, { splices: [{ path: '/missing', index: 0, insert: 'x' }] });
});

test('restore makes the content equal to an earlier view, keeping counters and text as they are', () => {
  let d = docOf({ title: 'v1', list: [1, 2, 3], m: { a: 1 } });
  d = edit(d, { ops: [{ op: 'increment', path: '/c', by: 2 }] });
  const v1 = Automerge.getHeads(d);
  d = edit(d, { ops: [{ op: 'set', path: '/title', value: 'v2 title' }, { op: 'delete', path: '/m' }, { op: 'set', path: '/list', value: [9] }, { op: 'increment', path: '/c', by: 5 }, { op: 'set', path: '/new', value: true }] });
  const restored = Automerge.change(d, (x) => new DocumentEditor(x).restore(Automerge.view(d, v1)));
  assert.equal(json(restored), json(Automerge.view(d, v1)));
  assert.ok((restored as { c: unknown }).c instanceof Automerge.Counter, 'the counter is still a counter');
  assert.equal(json(restored), { title: 'v1', list: [1, 2, 3], m: { a: 1 }, c: 2 });
});

test('values a document cannot hold exactly are refused before anything is applied', () => {
  const bad: [unknown, RegExp][] = [
    [2 ** 60, /beyond/],
    [{ ['__proto__']: 1 }, /__proto__/],
    ['lone \ud800 surrogate', /surrogate/],
    [{ k: [1, { deep: 1e300 }] }, /beyond/],
  ];
  for (const [value, message] of bad) {
    let error: unknown;
    try {
      checkJson(JSON.parse(JSON.stringify(value)) ?? value, 'value');
      if (typeof value === 'string') checkJson(value, 'value');
    } catch (e) {
      error = e;
    }
    assert.ok(error instanceof ProtocolError, `refuses ${String(value)}`);
    assert.match((error as ProtocolError).message, message);
  }
  assert.throws(() => checkEdit({ ops: [{ op: 'set', path: '/a', value: 2 ** 60 }] }), /ops\[0\]\.value/);
  assert.throws(() => checkEdit({ ops: [{ op: 'set', path: 'a', value: 1 }] }), /not a JSON Pointer/);
  assert.throws(() => checkEdit({ patch: [{ op: 'move', from: '/a~2', path: '/b' }] }), /~0/);
});

test('JSON Pointers parse and format with ~0 and ~1 escapes', () => {
  assert.equal(parsePointer('', 'p'), []);
  assert.equal(parsePointer('/a~1b/~0c/0/', 'p'), ['a/b', '~c', '0', '']);
  assert.is(formatPointer(['a/b', '~c', 0, '']), '/a~1b/~0c/0/');
});

test.run();

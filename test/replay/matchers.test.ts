import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import {
  checkPattern,
  checkSendValue,
  collectCaptures,
  collectRefs,
  isTimestamp,
  isUuid,
  match,
  substitute,
} from '../../src/replay/matchers.js';

const none = new Map<string, unknown>();
const uuid = '3f2b8c1e-9a4d-4e6f-8b7a-1c2d3e4f5a6b';

const matching = suite('match');

matching('matches an object on the keys given and ignores the others', () => {
  assert.ok(match({ id: 1 }, { jsonrpc: '2.0', id: 1, result: {} }, none).ok);
  assert.ok(match({}, { anything: true }, none).ok);
  assert.not.ok(match({ id: 1 }, { id: 2 }, none).ok);
  assert.not.ok(match({ id: 1 }, [1], none).ok);
});

matching('matches arrays element by element and only with the same length', () => {
  assert.ok(match([1, { a: 2 }], [1, { a: 2, b: 3 }], none).ok);
  assert.not.ok(match([1, 2], [1, 2, 3], none).ok);
  assert.not.ok(match([2, 1], [1, 2], none).ok);
  assert.not.ok(match([], {}, none).ok);
});

matching('compares other values exactly', () => {
  assert.ok(match(null, null, none).ok);
  assert.not.ok(match(null, undefined, none).ok);
  assert.not.ok(match(1, '1', none).ok);
  assert.not.ok(match({ a: null }, {}, none).ok);
  assert.ok(match({ a: { b: [true] } }, { a: { b: [true] } }, none).ok);
});

matching('$any matches every present value, null included, but not a missing key', () => {
  for (const v of [null, 0, '', false, [], {}]) assert.ok(match({ a: '$any' }, { a: v }, none).ok);
  assert.not.ok(match({ a: '$any' }, {}, none).ok);
});

matching('$string, $number, $uuid and $timestamp check the kind of value', () => {
  assert.ok(match('$string', '', none).ok);
  assert.not.ok(match('$string', 1, none).ok);
  assert.ok(match('$number', 0, none).ok);
  assert.not.ok(match('$number', '0', none).ok);
  assert.ok(match('$uuid', uuid, none).ok);
  assert.ok(match('$uuid', uuid.toUpperCase(), none).ok);
  assert.not.ok(match('$uuid', 'task-1', none).ok);
  assert.ok(match('$timestamp', '2025-01-31T12:00:00.000Z', none).ok);
  assert.ok(match('$timestamp', '2025-01-31T12:00:00+02:00', none).ok);
  assert.not.ok(match('$timestamp', '2025-01-31', none).ok);
  assert.not.ok(match('$timestamp', '2025-13-45T99:00:00Z', none).ok);
  assert.not.ok(match('$timestamp', 1738324800000, none).ok);
});

matching('$capture returns the value without storing it, and $ref compares with stored values', () => {
  const r = match({ id: '$capture:task', owner: { name: '$capture:who' } }, { id: uuid, owner: { name: 'ana' } }, none);
  assert.ok(r.ok);
  assert.equal(Object.fromEntries(r.captured), { task: uuid, who: 'ana' });
  const stored = new Map<string, unknown>([['task', uuid], ['obj', { a: [1] }]]);
  assert.ok(match({ taskId: '$ref:task' }, { taskId: uuid }, stored).ok);
  assert.not.ok(match({ taskId: '$ref:task' }, { taskId: 'other' }, stored).ok);
  assert.ok(match('$ref:obj', { a: [1] }, stored).ok);
  assert.not.ok(match('$ref:obj', { a: [1], b: 2 }, stored).ok);
});

matching('a capture can be referred to later in the same pattern and must then agree', () => {
  assert.ok(match({ a: '$capture:x', b: '$ref:x' }, { a: 5, b: 5 }, none).ok);
  assert.not.ok(match({ a: '$capture:x', b: '$ref:x' }, { a: 5, b: 6 }, none).ok);
  assert.not.ok(match({ a: '$capture:x', b: '$capture:x' }, { a: 5, b: 6 }, none).ok);
});

matching('a $ref to a name never captured does not match and says so', () => {
  const r = match('$ref:ghost', 1, none);
  assert.not.ok(r.ok);
  assert.match(r.mismatches[0]!.expected, 'nothing was captured');
});

matching('$$ escapes a literal string that starts with $', () => {
  assert.ok(match('$$any', '$any', none).ok);
  assert.not.ok(match('$$any', 'x', none).ok);
});

matching('an unknown matcher never matches and suggests the escape', () => {
  const r = match('$uuids', uuid, none);
  assert.not.ok(r.ok);
  assert.match(r.mismatches[0]!.expected, '"$$uuids"');
});

matching('reports every mismatch with its path and ranks near misses higher', () => {
  const pattern = { id: 2, result: { status: 'accepted', tags: ['a', 'b'] } };
  const near = match(pattern, { id: 2, result: { status: 'assigned', tags: ['a', 'c'] } }, none);
  const far = match(pattern, { method: 'subscription.event', params: {} }, none);
  assert.equal(
    near.mismatches.map((m) => `${m.path}: ${m.expected} / ${m.actual}`),
    ['$.result.status: "accepted" / string "assigned"', '$.result.tags[1]: "b" / string "c"'],
  );
  assert.equal(far.mismatches[0]!.path, '$.id');
  assert.equal(far.mismatches[0]!.actual, 'nothing (the key is missing)');
  assert.ok(near.score > far.score);
});

matching('quotes keys that are not identifiers in paths', () => {
  const r = match({ 'a-b': { 'c d': 1 } }, { 'a-b': { 'c d': 2 } }, none);
  assert.equal(r.mismatches[0]!.path, '$["a-b"]["c d"]');
});

matching.run();

const sending = suite('substitute');

sending('replaces whole-string $ref values with the stored value of any type', () => {
  const stored = new Map<string, unknown>([['task', uuid], ['pos', 17], ['token.lead', 'trp_x']]);
  assert.equal(substitute({ taskId: '$ref:task', fromPosition: '$ref:pos', list: ['$ref:token.lead'] }, stored, 0), {
    taskId: uuid,
    fromPosition: 17,
    list: ['trp_x'],
  });
});

sending('leaves $ref inside a longer string alone', () => {
  const stored = new Map<string, unknown>([['task', uuid]]);
  assert.equal(substitute({ topic: 'task:$ref:task' }, stored, 0), { topic: 'task:$ref:task' });
});

sending('turns $now and $now±MS into ISO timestamps relative to the sending time', () => {
  const now = Date.parse('2025-01-31T12:00:00.000Z');
  assert.equal(substitute(['$now', '$now+1500', '$now-60000'], none, now), [
    '2025-01-31T12:00:00.000Z',
    '2025-01-31T12:00:01.500Z',
    '2025-01-31T11:59:00.000Z',
  ]);
});

sending('unescapes $$ and keeps other values', () => {
  assert.equal(substitute({ price: '$$5', n: 1, b: null, s: 'plain' }, none, 0), { price: '$5', n: 1, b: null, s: 'plain' });
});

sending('throws with the path when nothing was captured under a name', () => {
  assert.throws(() => substitute({ params: { taskId: '$ref:task' } }, none, 0), /\$\.params\.taskId: nothing was captured as "task"/);
});

sending.run();

const checks = suite('pattern checks');

checks('accepts known matchers and escapes, and names unknown ones with their path', () => {
  assert.equal(checkPattern({ a: ['$any', '$string', '$number', '$uuid', '$timestamp', '$capture:x', '$ref:y', '$$lit'] }, 'steps[1].expect'), []);
  const issues = checkPattern({ result: { id: '$uuids' } }, 'steps[1].expect');
  assert.equal(issues.length, 1);
  assert.match(issues[0]!, /^steps\[1\]\.expect\.result\.id: unknown matcher "\$uuids"/);
});

checks('allows only $ref, $now and escapes in messages to send', () => {
  assert.equal(checkSendValue({ a: '$ref:x', b: '$now', c: '$now+5', d: '$$x', e: 'x$' }, 'steps[0].send'), []);
  const issues = checkSendValue({ params: { price: '$5' } }, 'steps[0].send');
  assert.match(issues[0]!, /^steps\[0\]\.send\.params\.price: "\$5" is not a placeholder/);
  assert.equal(checkSendValue({ a: '$any' }, 's').length, 1);
});

checks('collects refs with their paths and captured names', () => {
  assert.equal(collectRefs({ a: '$ref:x', b: ['$ref:y'], c: 'task:$ref:z' }), [
    { name: 'x', path: '.a' },
    { name: 'y', path: '.b[0]' },
  ]);
  assert.equal(collectCaptures({ a: '$capture:x', b: [{ c: '$capture:y' }] }), ['x', 'y']);
});

checks('recognises UUIDs and timestamps', () => {
  assert.ok(isUuid(uuid));
  assert.not.ok(isUuid(`${uuid}0`));
  assert.ok(isTimestamp('2025-01-31T12:00Z'));
  assert.not.ok(isTimestamp('yesterday'));
});

checks.run();

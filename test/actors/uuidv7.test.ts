import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { uuidv7 } from '../../actors/uuidv7.js';

const test = suite('uuidv7');

test('has the RFC 9562 layout: version 7, variant 10, the time in the first 48 bits', () => {
  // Later than any id made before in this process: ids never go back in time.
  const at = Date.now() + 86_400_000;
  const id = uuidv7(at);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.is(parseInt(id.slice(0, 8) + id.slice(9, 13), 16), at);
});

test('sorts by creation time and never repeats', () => {
  const base = Date.now() + 2 * 86_400_000;
  const ids = Array.from({ length: 2000 }, (_, i) => uuidv7(base + i));
  assert.equal([...ids].sort(), ids);
  assert.is(new Set(Array.from({ length: 10_000 }, () => uuidv7(5))).size, 10_000);
});

test('ids made in the same millisecond, or after the clock stepped back, still strictly increase', () => {
  const at = Date.now() + 3 * 86_400_000;
  const ids = [...Array.from({ length: 5000 }, () => uuidv7(at)), uuidv7(at - 1000), uuidv7(at + 1)];
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i - 1]! < ids[i]!, `${ids[i - 1]} < ${ids[i]}`);
  // Within the millisecond the time part stays that millisecond.
  assert.is(parseInt(ids[4999]!.slice(0, 8) + ids[4999]!.slice(9, 13), 16), at);
});

test.run();

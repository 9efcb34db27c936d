import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { ResilientStore } from '../../src/storage/ResilientStore.js';
import { interceptStore } from '../helpers/stores.js';

const test = suite('ResilientStore');

test('passes claimEpoch through to the store and, being a write, never retries it', async () => {
  const inner = new MemoryStore();
  let attempts = 0;
  let failing = false;
  const store = new ResilientStore(
    interceptStore(inner, {
      claimEpoch: async (claim, ...args) => {
        attempts++;
        if (failing) throw new Error('connection reset (injected)');
        return claim(...args);
      },
    }),
    { readRetries: 2, breakerFailures: 100 },
  );
  assert.is(await store.claimEpoch('task/t1', 'acme', 'task', 't1'), 1);
  assert.is(await store.claimEpoch('task/t1', 'acme', 'task', 't1'), 2);
  assert.equal(await inner.streamInfo('task/t1'), { version: 0, epoch: 2 });

  failing = true;
  attempts = 0;
  const err = await store.claimEpoch('task/t1', 'acme', 'task', 't1').then(() => null, (e: unknown) => e);
  assert.match((err as Error).message, /connection reset/);
  assert.is(attempts, 1, 'tried once: a retried claim could take two epochs');
});

test.run();

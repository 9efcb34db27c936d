import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { MongoStore, mongoDatabaseName } from '../../src/storage/MongoStore.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { openStore } from '../../src/storage/openStore.js';

const test = suite('openStore');

test('opens the store each URL scheme names', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-open-'));
  try {
    const memory = openStore('memory:');
    assert.instance(memory, MemoryStore);
    const sqlite = openStore(`sqlite:${path.join(dir, 'nested', 'store.db')}`, { writer: 'inline' });
    assert.instance(sqlite, SqliteStore);
    assert.ok(fs.existsSync(path.join(dir, 'nested', 'store.db')));
    // Built without connecting: nothing listens on these hosts.
    const mongo = openStore('mongodb://127.0.0.1:1/troupe?replicaSet=rs0');
    assert.instance(mongo, MongoStore);
    const srv = openStore('mongodb+srv://user:pw@cluster0.invalid/app');
    assert.instance(srv, MongoStore);
    for (const store of [memory, sqlite, mongo, srv]) await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('takes the MongoDB database from the URL path, troupe when it names none', () => {
  assert.is(mongoDatabaseName('mongodb://localhost:27017'), 'troupe');
  assert.is(mongoDatabaseName('mongodb://localhost:27017/?replicaSet=rs0'), 'troupe');
  assert.is(mongoDatabaseName('mongodb://u:p@h1:27017,h2:27017/my%20app?replicaSet=rs0'), 'my app');
  assert.is(mongoDatabaseName('mongodb+srv://cluster0.example.net/prod?retryWrites=true'), 'prod');
  assert.throws(() => mongoDatabaseName('postgres://h/db'), /mongodb:\/\/ or mongodb\+srv:\/\//);
});

test('refuses other URLs naming the supported schemes, without echoing credentials', () => {
  const err = (() => {
    try {
      openStore('postgres://admin:s3cret@db.internal/troupe');
    } catch (e) {
      return e;
    }
    return null;
  })();
  assert.instance(err, Error);
  const message = (err as Error).message;
  assert.match(message, /^Unsupported store URL "postgres:\/\/…"/);
  assert.match(message, /sqlite:<file>/);
  assert.match(message, /mongodb:\/\//);
  assert.match(message, /mongodb\+srv:\/\//);
  assert.match(message, /memory:/);
  assert.not.match(message, /s3cret/);
  assert.throws(() => openStore('data/troupe.db'), /Unsupported store URL "data\/troupe.db"/);
});

test.run();

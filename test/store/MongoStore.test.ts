import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { MongoClient, MongoServerSelectionError } from 'mongodb';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { CommitOutcome } from '../../actors/Store.js';
import { MongoStore } from '../../src/storage/MongoStore.js';
import { runStoreContract } from '../contracts/storeContract.js';
import { commitItem } from '../helpers/stores.js';

/** A replica set (transactions), e.g. `mongodb://localhost:27017/?replicaSet=rs0` from docker-compose. */
const url = process.env.MONGODB_URL;

/** A database name no other test run uses. */
const freshDatabase = (): string => `troupe_test_${randomBytes(6).toString('hex')}`;

/** Drops a test database through a client of its own (the store under test may be closed). */
async function dropDatabase(mongoUrl: string, dbName: string): Promise<void> {
  const client = new MongoClient(mongoUrl);
  try {
    await client.db(dbName).dropDatabase();
  } finally {
    await client.close();
  }
}

if (url) {
  runStoreContract('MongoStore', async () => {
    const dbName = freshDatabase();
    const store = new MongoStore({ url, dbName });
    return {
      store,
      teardown: async () => {
        await store.close();
        await dropDatabase(url, dbName);
      },
    };
  });

  const shared = suite('MongoStore instances sharing one database');
  let dbName = '';
  let stores: MongoStore[] = [];
  shared.before.each(() => {
    dbName = freshDatabase();
    stores = [new MongoStore({ url, dbName }), new MongoStore({ url, dbName })];
  });
  shared.after.each(async () => {
    for (const store of stores) await store.close();
    await dropDatabase(url, dbName);
  });

  shared('concurrent claims from two stores get distinct epochs, increasing for each store', async () => {
    const claims = async (store: MongoStore): Promise<number[]> => {
      const epochs: number[] = [];
      for (let i = 0; i < 20; i++) epochs.push(await store.claimEpoch('task/t1', 'acme', 'task', 't1'));
      return epochs;
    };
    const [a, b] = await Promise.all(stores.map(claims));
    for (const epochs of [a!, b!]) {
      for (let i = 1; i < epochs.length; i++) assert.ok(epochs[i]! > epochs[i - 1]!, `increasing: ${epochs}`);
    }
    assert.equal([...a!, ...b!].sort((x, y) => x - y), Array.from({ length: 40 }, (_, i) => i + 1));
    assert.equal(await stores[1]!.streamInfo('task/t1'), { version: 0, epoch: 40 });
  });

  shared('a claim through one store fences the commits of the other', async () => {
    const [a, b] = stores as [MongoStore, MongoStore];
    assert.equal(await a.commit([commitItem('task/t1', 0, ['e1'], { epoch: 1 })]), [{ ok: true, positions: [1], feedPositions: [1] }]);
    assert.is(await b.claimEpoch('task/t1', 'acme', 'task', 't1'), 2);
    assert.equal(await a.commit([commitItem('task/t1', 1, ['e2'], { epoch: 1 })]), [{ ok: false, reason: 'stale_epoch', currentEpoch: 2 }]);
    assert.equal(await b.commit([commitItem('task/t1', 1, ['e3'], { epoch: 2 })]), [{ ok: true, positions: [2], feedPositions: [2] }]);
  });

  shared('two stores committing to one stream at once: exactly one wins each version', async () => {
    const [a, b] = stores as [MongoStore, MongoStore];
    const outcomes = await Promise.all([a.commit([commitItem('task/t1', 0, ['a1'])]), b.commit([commitItem('task/t1', 0, ['b1'])])]);
    const flat: CommitOutcome[] = outcomes.flat();
    assert.is(flat.filter((o) => o.ok).length, 1);
    assert.equal(flat.find((o) => !o.ok), { ok: false, reason: 'version_conflict', actualVersion: 1 });
    assert.is((await a.readStream('task/t1')).length, 1);
  });

  shared('positions stay gap-free and in commit order when two stores commit at once', async () => {
    const [a, b] = stores as [MongoStore, MongoStore];
    const commits = Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).commit([commitItem(`task/t${i}`, 0, [`e${i}`])]));
    const outcomes = (await Promise.all(commits)).flat();
    for (const o of outcomes) assert.ok(o.ok, JSON.stringify(o));
    const feed = await a.readFeed(0, 100);
    assert.equal(feed.map((e) => e.feedPosition), Array.from({ length: 30 }, (_, i) => i + 1));
    assert.equal(feed.map((e) => e.position), Array.from({ length: 30 }, (_, i) => i + 1));
    assert.is(await b.headPosition('acme'), 30);
    assert.equal((await b.readTopic('acme', 'all', 0, 100)).map((e) => e.id), feed.map((e) => e.id));
  });

  shared.run();
} else {
  console.log(
    'MongoStore store contract SKIPPED: set MONGODB_URL to a MongoDB replica set (e.g. mongodb://localhost:27017/?replicaSet=rs0) to run it',
  );
  const skipped = suite('MongoStore store contract — SKIPPED: set MONGODB_URL to run it against MongoDB');
  skipped('MONGODB_URL is not set, so the contract did not run', () => {
    assert.not.ok(process.env.MONGODB_URL);
  });
  skipped.run();
}

const offline = suite('MongoStore without a reachable server');

/** A local port that refuses connections: taken from the OS, then released. */
async function refusedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

offline('is built without connecting, and each call tries to connect again and rejects with the driver error', async () => {
  const port = await refusedPort();
  const store = new MongoStore({ url: `mongodb://127.0.0.1:${port}/troupe`, clientOptions: { serverSelectionTimeoutMS: 200 } });
  // A failed first connection must not leave the client refusing everything ("Topology is closed").
  for (let i = 0; i < 2; i++) {
    const err = await store.ping().then(() => null, (e: unknown) => e);
    assert.instance(err, MongoServerSelectionError);
  }
  const err = await store.commit([commitItem('task/t1', 0, ['e1'])]).then(() => null, (e: unknown) => e);
  assert.instance(err, MongoServerSelectionError);
  await store.close();
  await store.close();
  const closed = await store.claimEpoch('task/t1', 'acme', 'task', 't1').then(() => null, (e: unknown) => e);
  assert.match((closed as Error).message, /MongoStore is closed/);
});

offline('refuses a malformed audit cursor and an unserialisable commit before reaching the server', async () => {
  const port = await refusedPort();
  const store = new MongoStore({ url: `mongodb://127.0.0.1:${port}/troupe`, clientOptions: { serverSelectionTimeoutMS: 200 } });
  const cursor = await store.queryEvents('acme', { cursor: 'not a cursor!' }).then(() => null, (e: unknown) => e);
  assert.match((cursor as Error).message, /^invalid cursor/);
  const bad = commitItem('task/t1', 0, ['e1']);
  bad.events[0]!.data = { big: 1n } as unknown as Record<string, unknown>;
  const commit = await store.commit([bad]).then(() => null, (e: unknown) => e);
  assert.instance(commit, TypeError);
  await store.close();
});

offline.run();

import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { startServerProcess, type ServerProcess } from '../helpers/node.js';
import { startRedis, type RedisProcess } from '../helpers/redis.js';
import { tempDir } from '../helpers/server.js';

const test = suite('cluster: the first start');

test('three nodes started together on an empty store create one admin key between them', async () => {
  const tmp = tempDir('troupe-boot-');
  let redis: RedisProcess | undefined;
  const nodes: ServerProcess[] = [];
  try {
    redis = await startRedis();
    const env = (id: string) => ({
      TROUPE_CLUSTER: 'true',
      TROUPE_NODE_ID: id,
      TROUPE_REDIS_URL: redis!.url,
      TROUPE_STORE: `sqlite:${path.join(tmp.dir, 'troupe.db')}`,
      TROUPE_CLUSTER_HEARTBEAT_MS: '200',
    });
    nodes.push(...(await Promise.all(['n1', 'n2', 'n3'].map((id) => startServerProcess(path.join(tmp.dir, id), env(id))))));
    const store = new SqliteStore({ path: path.join(tmp.dir, 'troupe.db') });
    try {
      const keys = await store.listApiKeys();
      assert.equal(keys.map((k) => [k.tenant, k.principal, k.label]), [['default', 'admin', 'bootstrap']], 'one bootstrap key');
    } finally {
      await store.close();
    }
  } finally {
    await Promise.all(nodes.map((n) => n.kill()));
    await redis?.stop();
    tmp.remove();
  }
});

test.run();

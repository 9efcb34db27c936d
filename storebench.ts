import { SqliteStore } from './src/storage/SqliteStore.js';
import fs from 'node:fs';
fs.rmSync('/tmp/sb', { recursive: true, force: true }); fs.mkdirSync('/tmp/sb');
const store = new SqliteStore({ path: '/tmp/sb/t.db', synchronous: 'FULL', writer: process.env.W ? 'worker' : 'inline' });
const doc = JSON.parse(fs.readFileSync('/dev/stdin', 'utf8') || '{}');
let n = 0;
function item(i: number, v: number) {
  const id = `task-${i}`;
  return {
    stream: `acme/task/${id}`, tenant: 'acme', kind: 'task', actorId: id, expectedVersion: v, epoch: 1,
    events: [{ id: `${id}-${v}`, type: 'task.accept', data: { type: 'task.accept', at: Date.now(), by: 'w1', taskId: id }, meta: { at: Date.now(), principal: 'w1', status: 'accepted', correlationId: 'c:1' } }],
    topics: [[`task:${id}`, 'tenant', 'inbox:w1']],
    view: { tenant: 'acme', kind: 'task', id, version: v + 1, status: 'accepted', owner: 'w1', type: 'review', priority: 'normal', parentId: null, createdBy: 'lead', createdAt: 1, updatedAt: Date.now(), text: 'review pr 7', archived: false, doc: { ...doc, id } },
  };
}
const CLIENTS = 100; const versions = new Array(CLIENTS).fill(0);
const t0 = performance.now(); const end = t0 + 3000;
await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
  let i = c * 1e6;
  while (performance.now() < end) {
    const [o] = await store.commit([item(i, versions[c])]);
    if (!o.ok) throw new Error(JSON.stringify(o));
    versions[c]++; n++;
    if (versions[c] >= 4) { versions[c] = 0; i++; }
  }
}));
console.log('items/s', Math.round(n / ((performance.now() - t0) / 1000)));
await store.close();

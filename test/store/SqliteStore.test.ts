import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { CommitItem, CommitOutcome, Store } from '../../actors/Store.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { runStoreContract } from '../contracts/storeContract.js';
import { commitItem } from '../helpers/stores.js';
import { waitFor } from '../helpers/waitFor.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-sqlite-'));
}

for (const writer of ['inline', 'worker'] as const) {
  runStoreContract(writer === 'inline' ? 'SqliteStore' : 'SqliteStore (writer thread)', async () => {
    const dir = tempDir();
    const store = new SqliteStore({ path: path.join(dir, 'store.db'), writer });
    return {
      store,
      teardown: async () => {
        await store.close();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  });
}

/** Asserts that every item of a commit succeeded. */
function ok(outcomes: CommitOutcome[]): void {
  for (const o of outcomes) if (!o.ok) throw new Error(`commit refused: ${JSON.stringify(o)}`);
}

async function commitOk(store: Store, items: CommitItem[]): Promise<number[]> {
  const outcomes = await store.commit(items);
  return outcomes.flatMap((o) => {
    if (!o.ok) throw new Error(`commit refused: ${JSON.stringify(o)}`);
    return o.positions;
  });
}

const durability = suite('SqliteStore durability');
let dir = '';
let file = '';
const open: SqliteStore[] = [];
const openStore = (options: Partial<ConstructorParameters<typeof SqliteStore>[0]> = {}): SqliteStore => {
  const store = new SqliteStore({ path: file, ...options });
  open.push(store);
  return store;
};

durability.before.each(() => {
  dir = tempDir();
  file = path.join(dir, 'store.db');
});
durability.after.each(async () => {
  for (const store of open.splice(0)) await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

durability('keeps everything across close and reopen, and positions keep increasing', async () => {
  const first = openStore();
  const view = {
    tenant: 'acme', kind: 'task', id: 't1', version: 2, status: 'open', owner: 'ann', type: 'bug', priority: 'high',
    parentId: null, createdBy: 'bob', createdAt: 5, updatedAt: 6, text: 'fix it', archived: false, doc: { id: 't1' },
  };
  const timer = {
    stream: 'task/t1', tenant: 'acme', kind: 'task', actorId: 't1', name: 'due', fireAt: 50, event: { type: 'due' },
  };
  const message = {
    id: 'o1', source: 'task/t1', tenant: 'acme', targetKind: 'agent', targetId: 'ann', event: { type: 'x' }, createdAt: 5,
  };
  const claim = { tenant: 'acme', key: 'req', requestHash: 'h', result: { ok: 1 }, createdAt: 5 };
  const before = await commitOk(first, [
    commitItem('task/t1', 0, ['e1', 'e2'], {
      epoch: 3, snapshot: { s: 2 }, view, scheduleTimers: [timer], outbox: [message], idempotency: claim,
    }),
  ]);
  await first.putTenant({ id: 'acme', name: 'Acme', createdAt: 1 });
  const key = {
    id: 'k1', tenant: 'acme', principal: 'ann', roles: ['agent'], secretHash: 'ff', label: 'l', createdAt: 1,
    revokedAt: null,
  };
  await first.putApiKey(key);
  assert.is(await first.nextCounter('epoch'), 1);
  await first.close();

  const second = openStore();
  assert.equal((await second.readStream('task/t1')).map((e) => e.position), before);
  assert.equal(await second.streamInfo('task/t1'), { version: 2, epoch: 3 });
  assert.equal(await second.loadSnapshot('task/t1'), { version: 2, state: { s: 2 } });
  assert.equal(await second.getView('acme', 'task', 't1'), view);
  assert.equal(await second.dueTimers(100, 10), [timer]);
  assert.equal(await second.pendingOutbox(10), [message]);
  assert.equal(await second.getIdempotency('acme', 'req'), claim);
  assert.equal(await second.listTenants(), [{ id: 'acme', name: 'Acme', createdAt: 1 }]);
  assert.equal(await second.getApiKey('k1'), key);
  assert.equal((await second.readTopic('acme', 'all', 0, 10)).map((e) => e.id), ['e1', 'e2']);
  assert.is(await second.nextCounter('epoch'), 2);
  const after = await commitOk(second, [commitItem('task/t2', 0, ['e3'])]);
  assert.ok(after[0]! > before[before.length - 1]!);
  assert.is(await second.headPosition(), after[0]);
});

durability('close flushes commits that are still queued', async () => {
  const store = openStore();
  const pending = store.commit([commitItem('task/t1', 0, ['e1'])]);
  await store.close();
  assert.equal(await pending, [{ ok: true, positions: [1], feedPositions: [1] }]);
  const reopened = openStore();
  assert.is((await reopened.readStream('task/t1')).length, 1);
});

durability("synchronous: 'NORMAL' stores and reads like the default", async () => {
  const store = openStore({ synchronous: 'NORMAL' });
  await commitOk(store, [commitItem('task/t1', 0, ['e1'])]);
  await store.close();
  assert.equal((await openStore().readStream('task/t1')).map((e) => e.id), ['e1']);
});

durability('snapshotsKeep keeps older snapshots while loadSnapshot returns the latest', async () => {
  const store = openStore({ snapshotsKeep: 2 });
  for (let v = 0; v < 4; v++) await commitOk(store, [commitItem('task/t1', v, [`e${v}`], { snapshot: { v: v + 1 } })]);
  assert.equal(await store.loadSnapshot('task/t1'), { version: 4, state: { v: 4 } });
  await store.close();
  const raw = new Database(file, { readonly: true });
  const versions = raw.prepare('SELECT version FROM snapshots ORDER BY version').pluck().all();
  raw.close();
  assert.equal(versions, [3, 4]);
});

durability('two stores on one file share concurrency control', async () => {
  const a = openStore();
  const b = openStore();
  await commitOk(a, [commitItem('task/t1', 0, ['e1'], { epoch: 2 })]);
  assert.equal(await b.commit([commitItem('task/t1', 0, ['e2'], { epoch: 2 })]), [
    { ok: false, reason: 'version_conflict', actualVersion: 1 },
  ]);
  assert.equal(await b.commit([commitItem('task/t1', 1, ['e2'], { epoch: 1 })]), [
    { ok: false, reason: 'stale_epoch', currentEpoch: 2 },
  ]);
  assert.equal(await b.commit([commitItem('task/t1', 1, ['e2'], { epoch: 2 })]), [{ ok: true, positions: [2], feedPositions: [2] }]);
});

/**
 * Opens a SqliteStore on `file` in a child process; once it is open, `start()` makes it claim the
 * epoch of `stream` `count` times, one after another, and `done` resolves with the epochs it got.
 */
async function claimsInChildProcess(file: string, stream: string, count: number): Promise<{ start(): void; done: Promise<number[]> }> {
  const [kind = '', actorId = ''] = stream.split('/');
  const module = pathToFileURL(path.join(ROOT, 'src/storage/SqliteStore.ts')).href;
  const script = `
    const { SqliteStore } = await import(${JSON.stringify(module)});
    const store = new SqliteStore({ path: ${JSON.stringify(file)} });
    process.stdout.write('ready\\n');
    await new Promise((resolve) => process.stdin.once('data', resolve));
    const epochs = [];
    for (let i = 0; i < ${count}; i++) {
      epochs.push(await store.claimEpoch(${JSON.stringify(stream)}, 'acme', ${JSON.stringify(kind)}, ${JSON.stringify(actorId)}));
    }
    await store.close();
    process.stdout.write(JSON.stringify(epochs) + '\\n');
    process.exit(0);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await Promise.race([
    waitFor(() => out.startsWith('ready\n'), { timeoutMs: 30_000 }),
    exited.then((code) => {
      throw new Error(`the claiming process exited with ${code} before opening the store: ${err}`);
    }),
  ]);
  const done = exited.then((code) => {
    if (code !== 0) throw new Error(`the claiming process exited with ${code}: ${err}`);
    return JSON.parse(out.slice('ready\n'.length)) as number[];
  });
  return { start: () => child.stdin.end('go\n'), done };
}

durability('concurrent claims from two stores and another process on one file get distinct, increasing epochs', async () => {
  const inline = openStore();
  const worker = openStore({ writer: 'worker' });
  const other = await claimsInChildProcess(file, 'task/t1', 30);
  const claims = async (store: Store, n: number): Promise<number[]> => {
    const epochs: number[] = [];
    for (let i = 0; i < n; i++) epochs.push(await store.claimEpoch('task/t1', 'acme', 'task', 't1'));
    return epochs;
  };
  other.start();
  const [fromInline, fromWorker, fromOther] = await Promise.all([claims(inline, 30), claims(worker, 30), other.done]);
  for (const [name, epochs] of Object.entries({ fromInline, fromWorker, fromOther })) {
    assert.is(epochs.length, 30, name);
    for (let i = 1; i < epochs.length; i++) assert.ok(epochs[i]! > epochs[i - 1]!, `${name} increases: ${epochs}`);
  }
  const all = [...fromInline, ...fromWorker, ...fromOther].sort((a, b) => a - b);
  assert.equal(all, Array.from({ length: 90 }, (_, i) => i + 1));
  assert.equal(await inline.streamInfo('task/t1'), { version: 0, epoch: 90 });
  assert.equal(await worker.listStreams(), []);
  // Every store on the file sees the fence.
  assert.equal(await worker.commit([commitItem('task/t1', 0, ['e1'], { epoch: 89 })]), [
    { ok: false, reason: 'stale_epoch', currentEpoch: 90 },
  ]);
  assert.equal(await inline.commit([commitItem('task/t1', 0, ['e1'], { epoch: 90 })]), [
    { ok: true, positions: [1], feedPositions: [1] },
  ]);
  assert.equal(await worker.listStreams(), ['task/t1']);
});

durability('a claimed epoch survives close and reopen', async () => {
  const first = openStore({ writer: 'worker' });
  assert.is(await first.claimEpoch('task/t1', 'acme', 'task', 't1'), 1);
  assert.is(await first.claimEpoch('task/t1', 'acme', 'task', 't1'), 2);
  await first.close();
  const second = openStore();
  assert.equal(await second.streamInfo('task/t1'), { version: 0, epoch: 2 });
  assert.is(await second.claimEpoch('task/t1', 'acme', 'task', 't1'), 3);
});

durability('claimEpoch refuses arguments that are not strings before writing', async () => {
  for (const writer of ['inline', 'worker'] as const) {
    const store = openStore({ writer });
    const err = await store.claimEpoch('task/t1', 'acme', 'task', 7 as unknown as string).then(() => null, (e: unknown) => e);
    assert.instance(err, TypeError);
    assert.match((err as Error).message, /claimEpoch: actorId must be a string/);
    assert.equal(await store.streamInfo('task/t1'), { version: 0, epoch: 0 });
  }
});

durability('refuses a file written by a newer schema version', async () => {
  await openStore().close();
  const raw = new Database(file);
  raw.prepare("UPDATE meta SET value = '99' WHERE key = 'schema_version'").run();
  raw.close();
  assert.throws(() => openStore(), /schema_version 99/);
});

durability('upgrades a version 1 file, numbering its events per tenant', async () => {
  // The version 1 layout: store-wide positions only.
  const raw = new Database(file);
  raw.exec(`
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('schema_version', '1');
    CREATE TABLE events (
      position INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, stream TEXT NOT NULL,
      version INTEGER NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL, actor_id TEXT NOT NULL,
      type TEXT NOT NULL, data TEXT NOT NULL, meta TEXT NOT NULL, UNIQUE (stream, version));
    CREATE TABLE event_topics (
      tenant TEXT NOT NULL, topic TEXT NOT NULL, position INTEGER NOT NULL,
      PRIMARY KEY (tenant, topic, position)) WITHOUT ROWID;`);
  const insert = raw.prepare(`INSERT INTO events (id, stream, version, tenant, kind, actor_id, type, data, meta)
    VALUES (?, ?, ?, ?, 'task', ?, 'x', '{"type":"x"}', '{"at":1,"principal":"p"}')`);
  const rows: [string, string, number, string][] = [
    ['a1', 'acme/task/t1', 1, 'acme'],
    ['g1', 'globex/task/g', 1, 'globex'],
    ['a2', 'acme/task/t1', 2, 'acme'],
  ];
  rows.forEach(([id, stream, version, tenant], i) => {
    insert.run(id, stream, version, tenant, stream.split('/')[2]);
    raw.prepare('INSERT INTO event_topics VALUES (?, ?, ?)').run(tenant, 'all', i + 1);
  });
  raw.close();

  const store = openStore();
  assert.equal((await store.readFeed(0, 10)).map((e) => [e.id, e.position, e.feedPosition]), [
    ['a1', 1, 1],
    ['g1', 1, 2],
    ['a2', 2, 3],
  ]);
  assert.equal((await store.readTopic('acme', 'all', 1, 10)).map((e) => e.id), ['a2']);
  assert.is(await store.headPosition('acme'), 2);
  // New events continue each tenant's numbering.
  const [outcome] = await store.commit([commitItem('task/t9', 0, ['a3'])]);
  assert.equal(outcome, { ok: true, positions: [3], feedPositions: [4] });
  await store.close();
});

durability('upgrades a version 2 file: its events are filed by time and principal for the audit trail', async () => {
  // The version 2 layout of the events table: time and principal only inside meta.
  const raw = new Database(file);
  raw.exec(`
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('schema_version', '2');
    CREATE TABLE events (
      position INTEGER PRIMARY KEY AUTOINCREMENT, tenant_position INTEGER NOT NULL, id TEXT NOT NULL UNIQUE,
      stream TEXT NOT NULL, version INTEGER NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
      actor_id TEXT NOT NULL, type TEXT NOT NULL, data TEXT NOT NULL, meta TEXT NOT NULL, UNIQUE (stream, version));
    CREATE TABLE tenant_positions (tenant TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE streams (
      stream TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, actor_id TEXT NOT NULL,
      version INTEGER NOT NULL, epoch INTEGER NOT NULL);`);
  const insert = raw.prepare(`INSERT INTO events (tenant_position, id, stream, version, tenant, kind, actor_id, type, data, meta)
    VALUES (?, ?, ?, ?, ?, 'task', ?, 'task.create', '{"type":"task.create"}', ?)`);
  insert.run(1, 'a1', 'task/t1', 1, 'acme', 't1', '{"at":1000,"principal":"ann"}');
  insert.run(1, 'g1', 'task/g1', 1, 'globex', 'g1', '{"at":1500,"principal":"ann"}');
  insert.run(2, 'a2', 'task/t1', 2, 'acme', 't1', '{"at":2000,"principal":"bob"}');
  insert.run(3, 'a3', 'task/t1', 3, 'acme', 't1', '{"principal":7}');
  raw.exec(`INSERT INTO tenant_positions VALUES ('acme', 3), ('globex', 1);
    INSERT INTO streams VALUES ('task/t1', 'acme', 'task', 't1', 3, 1), ('task/g1', 'globex', 'task', 'g1', 1, 1);`);
  raw.close();

  const store = openStore();
  const trail = async (q: Parameters<Store['queryEvents']>[1]) =>
    (await store.queryEvents('acme', q)).items.map((i) => (i.outcome === 'accepted' ? i.event.id : i.refusal.id));
  assert.equal(await trail({}), ['a2', 'a1', 'a3'], 'newest first; an event without a time is filed at 0');
  assert.equal(await trail({ principal: 'ann' }), ['a1']);
  assert.equal(await trail({ principal: 'bob', from: 2000 }), ['a2']);
  // New events and refusal records land in the upgraded file.
  ok(await store.commit([commitItem('task/t1', 3, ['a4'])]));
  await store.appendRefusals([{
    id: 'r1', tenant: 'acme', at: 5, lastAt: 5, principal: 'eve', method: 'task.create', code: 'FORBIDDEN', reason: 'no',
    count: 2, actorKind: null, actorId: null, correlationId: null,
  }]);
  assert.equal(await trail({ principal: 'ann' }), ['a1', 'a4']);
  assert.equal(await trail({ outcome: 'refused' }), ['r1']);
  await store.close();

  const check = new Database(file, { readonly: true });
  assert.is(check.prepare("SELECT value FROM meta WHERE key = 'schema_version'").pluck().get(), '3');
  const indexes = check.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name").pluck().all();
  for (const name of ['events_tenant_at', 'events_tenant_principal', 'refusals_at', 'refusals_principal']) {
    assert.ok(indexes.includes(name), `index ${name} exists`);
  }
  check.close();
  // Opening again changes nothing.
  const again = openStore();
  assert.is((await again.queryEvents('acme', {})).items.length, 5);
});

durability('the audit trail reads through the tenant+time and tenant+principal indexes without sorting', async () => {
  const store = openStore();
  // better-sqlite3 has no hook for the statements a store runs: read SQLite's plan of each shape.
  const raw = new Database(file, { readonly: true });
  const plan = (sql: string, n: number) =>
    raw.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...Array.from({ length: n }, () => 1)).map((r) => (r as { detail: string }).detail).join('; ');
  const byTime = plan(`SELECT * FROM events WHERE tenant = ? AND at >= ? AND at <= ? AND (at < ? OR tenant_position < ?)
    ORDER BY at DESC, tenant_position DESC LIMIT 5`, 5);
  assert.match(byTime, /SEARCH events USING INDEX events_tenant_at/);
  const byPrincipal = plan(`SELECT * FROM events INDEXED BY events_tenant_principal WHERE tenant = ? AND principal = ?
    AND at >= ? AND at < ? ORDER BY at DESC, tenant_position DESC LIMIT 5`, 4);
  assert.match(byPrincipal, /SEARCH events USING INDEX events_tenant_principal/);
  const refusals = plan(`SELECT * FROM refusals WHERE tenant = ? AND at <= ? AND (at < ? OR id < ?) ORDER BY at DESC, id DESC LIMIT 5`, 4);
  assert.match(refusals, /SEARCH refusals USING INDEX refusals_at/);
  for (const p of [byTime, byPrincipal, refusals]) assert.not.match(p, /TEMP B-TREE/);
  raw.close();
  // The store runs these shapes: a filter by principal and time answers through it.
  assert.equal((await store.queryEvents('acme', { principal: 'ann', from: 1, to: 2 })).items, []);
});

durability('refuses invalid options with a precise error', () => {
  assert.throws(() => openStore({ synchronous: 'OFF' as 'FULL' }), /synchronous/);
  assert.throws(() => openStore({ snapshotsKeep: 0 }), /snapshotsKeep/);
});

durability.run();

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { replay, replayPersisted } from '../../actors/replay.js';
import { taskMachine } from '../../machines/taskMachine.js';
import { connect, type TroupeClient } from '../../protocol/client.js';
import type { ActorEvent, Task, TaskStatus } from '../../protocol/model.js';
import { Authenticator } from '../../src/auth/Authenticator.js';
import { runCli } from '../../src/cli.js';
import { taskResource } from '../../src/kinds/taskKind.js';
import { leafState } from '../../src/kinds/stateName.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { startServerProcess, type ServerProcess } from '../helpers/node.js';


interface Ctx {
  dir: string;
  remove: () => void;
}

const test = suite<Ctx>('restart: acknowledged changes and durable timers survive a restart');

test.before.each((ctx) => {
  const t = tempDir('troupe-restart-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
});

test.after.each((ctx) => {
  ctx.remove();
});

async function serverOn(dir: string): Promise<TestServer> {
  return startServer({ store: sqliteStore(dir) });
}

async function all(c: TroupeClient): Promise<Task[]> {
  return (await c.call('task.search', { archived: 'any', limit: 1000 })).items;
}

test('keeps every acknowledged change across close and a new server on the same file', async (ctx) => {
  const one = await serverOn(ctx.dir);
  const leadKey = await one.key('acme', 'lead', ['admin']);
  const w1Key = await one.key('acme', 'w1', ['agent']);
  const lead = await connect(one.url, { token: leadKey, reconnect: false });
  const w1 = await connect(one.url, { token: w1Key, reconnect: false });
  await w1.call('agent.register', { capabilities: ['go'] });
  const a = await lead.call('task.create', { type: 'r', title: 'pending', idempotencyKey: 'once', parameters: { n: 1 } });
  const b = await lead.call('task.create', { type: 'r', title: 'completed', assignTo: 'w1' });
  await w1.call('task.accept', { taskId: b.id });
  await w1.call('task.start', { taskId: b.id });
  await w1.call('task.complete', { taskId: b.id, result: { ok: true } });
  const c = await lead.call('task.create', { type: 'r', title: 'deleted' });
  await lead.call('task.delete', { taskId: c.id });
  const d = await lead.call('task.create', { type: 'r', title: 'updated' });
  await lead.call('task.update', { taskId: d.id, title: 'updated twice', priority: 'high' });
  const beforeTasks = await all(lead);
  const beforeTimelines = await Promise.all(beforeTasks.map((t) => lead.call('task.timeline', { taskId: t.id })));
  const beforeStats = await lead.call('task.stats', {});
  const feed: ActorEvent[] = [];
  await lead.subscribe('tenant', (e) => feed.push(e), { fromPosition: 0 });
  await waitFor(() => feed.length > 0 && feed[feed.length - 1]!.actorId === d.id);
  await lead.close();
  await w1.close();
  await one.close();

  const two = await serverOn(ctx.dir);
  try {
    // The keys are in the same file.
    const lead2 = await connect(two.url, { token: leadKey, reconnect: false });
    assert.equal(await all(lead2), beforeTasks);
    assert.equal(await Promise.all(beforeTasks.map((t) => lead2.call('task.timeline', { taskId: t.id }))), beforeTimelines);
    assert.equal(await lead2.call('task.stats', {}), beforeStats);
    assert.is((await lead2.call('task.getBatch', { taskIds: [c.id] })).missing[0], c.id);
    const again = await lead2.call('task.create', { type: 'r', title: 'pending', idempotencyKey: 'once', parameters: { n: 1 } });
    assert.is(again.id, a.id, 'idempotency keys survive');
    const replayed: ActorEvent[] = [];
    await lead2.subscribe('tenant', (e) => replayed.push(e), { fromPosition: 0 });
    await waitFor(() => replayed.length >= feed.length);
    assert.equal(replayed.slice(0, feed.length).map((e) => [e.position, e.id, e.type]), feed.map((e) => [e.position, e.id, e.type]));
    // New positions continue after the old ones.
    const e = await lead2.call('task.update', { taskId: a.id, title: 'after restart' });
    const tl = await lead2.call('task.timeline', { taskId: a.id });
    assert.is(e.version, 2);
    assert.ok(tl.items[1]!.position > feed[feed.length - 1]!.position);
    await lead2.close();
  } finally {
    await two.close();
  }
});

test('reports agents offline with no connections after a restart, also when their disconnects were never recorded', async (ctx) => {
  const one = await serverOn(ctx.dir);
  const leadKey = await one.key('acme', 'lead', ['admin']);
  const w1 = await one.client('acme', 'w1', ['agent']);
  const w2 = await one.client('acme', 'w2', ['agent']);
  await w1.call('agent.register', {});
  await w2.call('agent.register', {});
  await w2.call('agent.setStatus', { status: 'busy' });
  const lead = await connect(one.url, { token: leadKey, reconnect: false });
  assert.equal((await lead.call('agent.list', {})).items.map((a) => [a.id, a.status, a.connections]).sort(), [
    ['w1', 'online', 1],
    ['w2', 'busy', 1],
  ]);
  await lead.close();

  // As after a crash: the new server starts while the store still says both agents are connected.
  const store = sqliteStore(ctx.dir);
  assert.is((await store.getView('acme', 'agent', 'w1'))!.status, 'online');
  const two = await startServer({ store });
  try {
    const lead2 = await connect(two.url, { token: leadKey, reconnect: false });
    const agents = (await lead2.call('agent.list', {})).items;
    assert.equal(agents.map((a) => [a.id, a.status, a.connections]).sort(), [['w1', 'offline', 0], ['w2', 'offline', 0]]);
    assert.equal((await lead2.call('agent.list', { status: ['online', 'busy'] })).items, []);
    // The old incarnation going away later changes nothing.
    await one.close();
    assert.equal(pick(await lead2.call('agent.get', { agentId: 'w1' })), ['offline', 0]);
    await lead2.close();
  } finally {
    await one.close();
    await two.close();
  }
});

test('fires durable retry and deadline timers after a restart', async (ctx) => {
  const one = await serverOn(ctx.dir);
  const leadKey = await one.key('acme', 'lead', ['admin']);
  const lead = await connect(one.url, { token: leadKey, reconnect: false });
  const w1 = await one.client('acme', 'w1', ['agent']);
  await w1.call('agent.register', {});
  const retry = await lead.call('task.create', { type: 'timer', title: 'retry', assignTo: 'w1', maxRetries: 1, retryBackoffMs: 700 });
  await w1.call('task.accept', { taskId: retry.id });
  const failed = await w1.call('task.fail', { taskId: retry.id, error: 'try later' });
  const deadline = await lead.call('task.create', { type: 'timer', title: 'deadline', deadline: new Date(Date.now() + 700).toISOString() });
  assert.ok(failed.retryAt);
  await lead.close();
  await one.close();

  const store = sqliteStore(ctx.dir);
  // The premise: neither timer fired before the first server stopped.
  assert.is((await store.getView('acme', 'task', retry.id))!.status, 'failed');
  assert.is((await store.getView('acme', 'task', deadline.id))!.status, 'pending');
  assert.is((await store.nextTimerAt()) !== undefined, true, 'the timers are in the store');
  const two = await startServer({ store });
  try {
    const lead2 = await connect(two.url, { token: leadKey, reconnect: false });
    const get = (id: string) => lead2.call('task.get', { taskId: id });
    const reopened = await waitFor(async () => ((await get(retry.id)).status === 'pending' ? get(retry.id) : null));
    assert.equal([reopened.retryCount, reopened.retryAt], [1, null]);
    const timedOut = await waitFor(async () => ((await get(deadline.id)).status === 'timed_out' ? get(deadline.id) : null));
    assert.match(timedOut.error!, /deadline/);
    for (const id of [retry.id, deadline.id]) {
      const tl = (await lead2.call('task.timeline', { taskId: id })).items;
      assert.equal([tl[tl.length - 1]!.type, tl[tl.length - 1]!.principal], ['timer.fired', 'system']);
    }
    assert.is(await store.nextTimerAt(), undefined, 'fired timers are consumed');
    await lead2.close();
  } finally {
    await two.close();
  }
});

test('restores a stream longer than 50 events from its snapshot, equal to a full replay', async (ctx) => {
  const one = await serverOn(ctx.dir);
  const leadKey = await one.key('acme', 'lead', ['admin']);
  const lead = await connect(one.url, { token: leadKey, reconnect: false });
  await lead.call('agent.register', {});
  const t = await lead.call('task.create', { type: 'long', title: 'long', assignTo: 'lead' });
  await lead.call('task.accept', { taskId: t.id });
  await lead.call('task.start', { taskId: t.id });
  for (let i = 1; i <= 120; i++) await lead.call('task.progress', { taskId: t.id, percent: i % 100, message: `step ${i}` });
  const before = await lead.call('task.get', { taskId: t.id });
  assert.is(before.version, 123);
  await lead.close();
  await one.close();

  const store = new SqliteStore({ path: path.join(ctx.dir, 'troupe.db') });
  const stream = `acme/task/${t.id}`;
  const snap = (await store.loadSnapshot(stream))!;
  assert.is(snap.version, 100, 'a snapshot every 50 events, the latest kept');
  const events = await store.readStream(stream);
  assert.is(events.length, 123);
  assert.equal(JSON.parse(JSON.stringify(replayPersisted(taskMachine, events.slice(0, snap.version)))), snap.state, 'the snapshot equals a replay to its version');
  const full = replay(taskMachine, events);
  assert.equal(taskResource(full.context.task, leafState(full.value) as TaskStatus, events.length), before, 'a full replay equals the live state');
  await store.close();

  const two = await serverOn(ctx.dir);
  try {
    const lead2 = await connect(two.url, { token: leadKey, reconnect: false });
    assert.equal(await lead2.call('task.get', { taskId: t.id }), before);
    // The actor comes back from snapshot + 23 events and keeps working.
    const done = await lead2.call('task.complete', { taskId: t.id, result: 'done', expectedVersion: 123 });
    assert.equal([done.status, done.version, done.progress], ['completed', 124, before.progress]);
    await lead2.close();
  } finally {
    await two.close();
  }
});

test.run();

interface CrashCtx {
  dir: string;
  remove: () => void;
  nodes: ServerProcess[];
}

const crash = suite<CrashCtx>('restart: a crash in the middle of the load loses nothing acknowledged');

crash.before((ctx) => {
  const t = tempDir('troupe-crash-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
  ctx.nodes = [];
});

crash.after(async (ctx) => {
  for (const n of ctx.nodes) if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill('SIGKILL');
  await Promise.all(ctx.nodes.map((n) => n.exited));
  ctx.remove();
});

crash('keeps every acknowledged task through SIGKILL, resets agents, and replays to the stored snapshots', async (ctx) => {
  const first = await startServerProcess(ctx.dir);
  ctx.nodes.push(first);
  const adminKey = fs.readFileSync(path.join(ctx.dir, 'admin.key'), 'utf8').trim();
  assert.match(adminKey, /^trp_/);
  // A second key, written into the live store from this process (SQLite allows it).
  const side = new SqliteStore({ path: path.join(ctx.dir, 'troupe.db') });
  const w1Key = (await new Authenticator({ store: side }).createKey({ tenant: 'default', principal: 'w1', roles: ['agent'] })).key;
  await side.close();

  const admin = await connect(first.url, { token: adminKey, reconnect: false });
  const w1 = await connect(first.url, { token: w1Key, reconnect: false });
  await w1.call('agent.register', { capabilities: ['crash'] });
  assert.equal(pick(await admin.call('agent.get', { agentId: 'w1' })), ['online', 1]);

  // One long stream, past two snapshots.
  const long = await admin.call('task.create', { type: 'long', title: 'long', assignTo: 'w1' });
  await w1.call('task.accept', { taskId: long.id });
  await w1.call('task.start', { taskId: long.id });
  for (let i = 0; i < 110; i++) await w1.call('task.progress', { taskId: long.id, percent: i % 100 });

  // The load: several clients, several calls in flight each, and the long stream still growing.
  const clients = [admin, ...(await Promise.all([1, 2, 3].map(() => connect(first.url, { token: adminKey, reconnect: false }))))];
  const acked: Task[] = [];
  let lastProgress = 0;
  let stop = false;
  const workers = clients.flatMap((c, ci) =>
    Array.from({ length: 6 }, async (_, wi) => {
      for (let seq = 0; !stop; seq++) {
        try {
          acked.push(await c.call('task.create', {
            type: 'crash',
            title: `c${ci}-w${wi}-${seq}, "quoted"`,
            priority: (['low', 'normal', 'high', 'critical'] as const)[seq % 4],
            parameters: { ci, wi, seq },
          }));
        } catch {
          return;
        }
      }
    }),
  );
  const progress = (async () => {
    for (let i = 0; !stop; i++) {
      try {
        lastProgress = (await w1.call('task.progress', { taskId: long.id, percent: i % 100, message: `under load ${i}` })).version;
      } catch {
        return;
      }
    }
  })();
  await waitFor(() => acked.length >= 400 && lastProgress > 0, { timeoutMs: 30_000 });
  first.child.kill('SIGKILL');
  const { signal } = await first.exited;
  stop = true;
  assert.is(signal, 'SIGKILL');
  await Promise.all([...workers, progress]);
  await Promise.all([...clients, w1].map((c) => c.close()));
  const ackedCount = acked.length;

  const second = await startServerProcess(ctx.dir);
  ctx.nodes.push(second);
  assert.is(fs.readFileSync(path.join(ctx.dir, 'admin.key'), 'utf8').trim(), adminKey, 'no second bootstrap');
  const admin2 = await connect(second.url, { token: adminKey, reconnect: false });
  for (let i = 0; i < acked.length; i += 100) {
    const chunk = acked.slice(i, i + 100);
    const got = await admin2.call('task.getBatch', { taskIds: chunk.map((t) => t.id) });
    assert.equal(got.missing, [], 'every acknowledged task exists');
    assert.equal(got.items, chunk, 'with exactly the acknowledged fields');
  }
  assert.ok((await admin2.call('task.stats', { type: 'crash' })).total >= ackedCount);
  const longNow = await admin2.call('task.get', { taskId: long.id });
  assert.ok(longNow.version >= lastProgress, `the long stream kept its acknowledged progress (${longNow.version} >= ${lastProgress})`);
  // The agent was online when the process died; nobody is connected now.
  assert.equal(pick(await admin2.call('agent.get', { agentId: 'w1' })), ['offline', 0]);
  // It serves new work.
  assert.is((await admin2.call('task.create', { type: 'after', title: 'after the crash' })).version, 1);
  await admin2.close();

  second.child.kill('SIGTERM');
  assert.is((await second.exited).code, 0, 'a graceful stop');

  // `troupe verify` replays every stream that has a snapshot.
  let out = '';
  assert.is(await runCli(['verify', '--data-dir', ctx.dir], (s) => (out += s)), 0, out);
  const m = /(\d+) snapshots\)?, 0 mismatches/.exec(out);
  assert.ok(m && Number(m[1]) >= 1, out);

  // And every stream replayed in full equals its read model.
  const store = new SqliteStore({ path: path.join(ctx.dir, 'troupe.db') });
  const streams = await store.listStreams('task');
  assert.ok(streams.length >= ackedCount + 2);
  let compared = 0;
  for (const stream of streams) {
    const events = await store.readStream(stream);
    const s = replay(taskMachine, events);
    const view = await store.getView('default', 'task', stream.split('/')[2]!);
    const status = leafState(s.value);
    if (status === 'draft' || status === 'deleted') continue;
    assert.equal(taskResource(s.context.task, status as TaskStatus, events.length), view!.doc, `replay of ${stream}`);
    compared++;
  }
  assert.ok(compared >= ackedCount + 2);
  const snap = (await store.loadSnapshot(`default/task/${long.id}`))!;
  assert.ok(snap.version >= 100 && snap.version % 50 === 0);
  await store.close();

  // The verifier itself catches a snapshot that does not match its events.
  const db = new Database(path.join(ctx.dir, 'troupe.db'));
  db.prepare("UPDATE snapshots SET state = json_set(state, '$.context.task.title', 'tampered') WHERE stream = ?").run(`default/task/${long.id}`);
  db.close();
  out = '';
  assert.is(await runCli(['verify', '--data-dir', ctx.dir], (s) => (out += s)), 1);
  assert.ok(out.includes(`MISMATCH default/task/${long.id}`), out);
});

function pick(a: { status: string; connections: number }): [string, number] {
  return [a.status, a.connections];
}

crash.run();

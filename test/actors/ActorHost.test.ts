import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { SnapshotFrom } from 'xstate';
import { ActorHost, DUPLICATE, IdempotencyConflict, type ActorHostOptions, type TurnResult } from '../../actors/ActorHost.js';
import type { ActorKind } from '../../actors/ActorKind.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import { replayPersisted } from '../../actors/replay.js';
import type { CommitOutcome, OutboxRecord, Store, StoredEvent } from '../../actors/Store.js';
import { OutboxDispatcher } from '../../actors/TimerService.js';
import { iso } from '../../machines/effects.js';
import { taskMachine } from '../../machines/taskMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import { agentKind } from '../../src/kinds/agentKind.js';
import { taskKind } from '../../src/kinds/taskKind.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { counterKind, createTask, FixedEpochOwnership, pingerKind, rejection, taskAt } from '../helpers/actors.js';
import { fakeClock, T0, type FakeClock } from '../helpers/clock.js';
import { gatedStore, interceptStore } from '../helpers/stores.js';
import { waitFor } from '../helpers/waitFor.js';

type TaskSnapshot = SnapshotFrom<typeof taskMachine>;

/** A host over `store` (a fresh MemoryStore by default) with a clock the test moves. */
function hostOver(store: Store = new MemoryStore(), opts: Partial<ActorHostOptions> = {}): { host: ActorHost; store: Store; clock: FakeClock } {
  const clock = fakeClock();
  const host = new ActorHost({
    store,
    ownership: new LocalOwnership(store),
    kinds: [taskKind, agentKind, pingerKind, counterKind],
    now: clock.now,
    ...opts,
  });
  return { host, store, clock };
}

async function sendTask(host: ActorHost, id: string, event: { type: string } & Record<string, unknown>, principal = 'lead') {
  const r = await host.send<typeof taskMachine>(taskAt(id), event, { principal });
  assert.ok(r !== DUPLICATE);
  return r as TurnResult<typeof taskMachine>;
}

async function statusOf(host: ActorHost, id: string): Promise<{ status: string; version: number; snapshot: TaskSnapshot }> {
  const { snapshot, version } = await host.read<typeof taskMachine>(taskAt(id));
  return { status: taskKind.status(snapshot), version, snapshot };
}

function protocolError(e: unknown, reason: string): ProtocolError {
  assert.instance(e, ProtocolError);
  assert.is((e as ProtocolError).reason, reason, (e as Error).message);
  return e as ProtocolError;
}

const test = suite('ActorHost');

test('activates an actor on demand from its latest snapshot plus the events after it', async () => {
  const reads: number[] = [];
  const store = interceptStore(new MemoryStore(), {
    readStream: (inner, stream, after, limit) => {
      reads.push(after ?? 0);
      return inner(stream, after, limit);
    },
  });
  const kind: ActorKind = { ...taskKind, snapshotEvery: 5 };
  const { host } = hostOver(store, { kinds: [kind] });
  await sendTask(host, 't1', createTask('t1', { assignTo: 'ann' }));
  await sendTask(host, 't1', { type: 'task.accept' }, 'ann');
  await sendTask(host, 't1', { type: 'task.start' }, 'ann');
  for (let i = 1; i <= 9; i++) await sendTask(host, 't1', { type: 'task.progress', percent: i * 10 }, 'ann');
  const live = await statusOf(host, 't1');
  assert.is(live.version, 12);

  const snap = await store.loadSnapshot('acme/task/t1');
  assert.is(snap?.version, 10, 'a snapshot is written every 5 events');
  assert.equal(snap!.state, replayPersisted(taskMachine, (await store.readStream('acme/task/t1')).slice(0, 10)));

  assert.is(await host.passivateIdle(Number.POSITIVE_INFINITY), 1);
  assert.is(host.activeCount, 0);
  reads.length = 0;
  const again = await statusOf(host, 't1');
  assert.equal(reads, [10], 'only the events after the snapshot are read');
  assert.is(again.version, 12);
  assert.equal(taskMachine.getPersistedSnapshot(again.snapshot), taskMachine.getPersistedSnapshot(live.snapshot));
  assert.equal(again.snapshot.context.task.progress, { percent: 90, message: '' });

  // A new process over the same store sees the same actor and goes on from there.
  const other = hostOver(store, { kinds: [kind] }).host;
  const r = await sendTask(other, 't1', { type: 'task.complete', result: 'ok' }, 'ann');
  assert.is(r.version, 13);
  assert.is(taskKind.status(r.snapshot), 'completed');
  await host.close();
  await other.close();
});

test('runs one message at a time per actor: concurrent sends get versions 2..N+1 without conflict', async () => {
  const gate = gatedStore(new MemoryStore());
  const { host } = hostOver(gate.store);
  const created = sendTask(host, 't1', createTask('t1'));
  await waitFor(() => gate.held.length === 1);
  gate.releaseAll();
  await created;

  const sends = Array.from({ length: 10 }, (_, i) => sendTask(host, 't1', { type: 'task.update', changes: { title: `v${i}` } }));
  for (let i = 0; i < 10; i++) {
    await waitFor(() => gate.held.length > 0);
    assert.is(gate.held.length, 1, 'the next message waits until the current one is committed');
    gate.held.shift()!.release();
  }
  const results = await Promise.all(sends);
  assert.equal(
    results.map((r) => r.version),
    [2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
  );
  assert.is(gate.maxInFlight.get('acme/task/t1'), 1);
  assert.is((await statusOf(host, 't1')).snapshot.context.task.title, 'v9', 'messages run in the order sent');
  assert.equal(
    (await gate.store.readStream('acme/task/t1')).map((e) => e.version),
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
  );
  await host.close();
});

test('runs different actors concurrently', async () => {
  const gate = gatedStore(new MemoryStore());
  const { host } = hostOver(gate.store);
  const a = sendTask(host, 'a', createTask('a'));
  const b = sendTask(host, 'b', createTask('b'));
  // Both turns reach the store while neither is committed.
  await waitFor(() => gate.held.length === 2);
  assert.equal(gate.held.map((h) => h.items[0]!.stream).sort(), ['acme/task/a', 'acme/task/b']);
  gate.releaseAll();
  assert.is((await a).version, 1);
  assert.is((await b).version, 1);
  await host.close();
});

test('refuses an event the state does not accept with ILLEGAL_TRANSITION naming the state and the allowed events', async () => {
  const { host, store } = hostOver();
  await sendTask(host, 't1', createTask('t1'));
  const e = protocolError(await rejection(sendTask(host, 't1', { type: 'task.complete', result: 1 })), 'ILLEGAL_TRANSITION');
  assert.is(e.data.status, 'pending');
  assert.is(e.data.event, 'task.complete');
  assert.equal((e.data.allowed as string[]).slice().sort(), ['task.assign', 'task.cancel', 'task.delete', 'task.update']);
  assert.match(e.message, /is pending; task\.complete is not allowed now/);
  assert.match(e.message, /task\.assign/);
  const after = await statusOf(host, 't1');
  assert.is(after.status, 'pending');
  assert.is(after.version, 1);
  assert.is((await store.streamInfo('acme/task/t1')).version, 1);
  await host.close();
});

test('answers NOT_FOUND for an actor that was never created or was deleted, writing nothing', async () => {
  const { host, store } = hostOver();
  const e = protocolError(await rejection(sendTask(host, 'ghost', { type: 'task.accept' })), 'NOT_FOUND');
  assert.equal(e.data, { kind: 'task', id: 'ghost' });
  assert.equal(await store.listStreams(), []);
  assert.is(await store.headPosition(), 0);

  await sendTask(host, 't1', createTask('t1'));
  await sendTask(host, 't1', { type: 'task.delete' });
  protocolError(await rejection(sendTask(host, 't1', { type: 'task.update', changes: { title: 'x' } })), 'NOT_FOUND');
  assert.is((await store.streamInfo('acme/task/t1')).version, 2);
  assert.is(await store.getView('acme', 'task', 't1'), undefined, 'a deleted task has no view row');
  await host.close();
});

test('a check that throws refuses the message and leaves state and version unchanged', async () => {
  const { host, store } = hostOver();
  await sendTask(host, 't1', createTask('t1'));
  const seen: [string, number][] = [];
  const forbidden = new ProtocolError('FORBIDDEN', 'not yours');
  const e = await rejection(
    host.send<typeof taskMachine>(taskAt('t1'), { type: 'task.assign', agentId: 'ann' }, {
      principal: 'mallory',
      check: (s, v) => {
        seen.push([taskKind.status(s), v]);
        throw forbidden;
      },
    }),
  );
  assert.is(e, forbidden);
  assert.equal(seen, [['pending', 1]]);
  const after = await statusOf(host, 't1');
  assert.is(after.status, 'pending');
  assert.is(after.version, 1);
  assert.is(after.snapshot.context.task.assignedTo, null);
  assert.is((await store.streamInfo('acme/task/t1')).version, 1);
  const ok = await sendTask(host, 't1', { type: 'task.assign', agentId: 'ann' });
  assert.is(ok.version, 2);
  await host.close();
});

test('refuses a stale expectedVersion with VERSION_MISMATCH and accepts the current one', async () => {
  const { host } = hostOver();
  await sendTask(host, 't1', createTask('t1', { assignTo: 'ann' }));
  await sendTask(host, 't1', { type: 'task.update', changes: { title: 'v2' } });
  const e = protocolError(
    await rejection(host.send(taskAt('t1'), { type: 'task.accept' }, { principal: 'ann', expectedVersion: 1 })),
    'VERSION_MISMATCH',
  );
  assert.equal(e.data, { expectedVersion: 1, actualVersion: 2 });
  assert.is((await statusOf(host, 't1')).status, 'assigned');
  const r = await host.send<typeof taskMachine>(taskAt('t1'), { type: 'task.accept' }, { principal: 'ann', expectedVersion: 2 });
  assert.ok(r !== DUPLICATE && r.version === 3);
  await host.close();
});

test('stamps each event with time, principal, correlation and status, and stores its view row', async () => {
  const { host, store, clock } = hostOver();
  clock.set(T0 + 5_000);
  const r = await host.send<typeof taskMachine>(taskAt('t1'), createTask('t1'), { principal: 'lead', correlationId: 'c-1' });
  assert.ok(r !== DUPLICATE);
  const [stored] = await store.readStream('acme/task/t1');
  assert.equal(stored, r.event);
  assert.equal(stored!.meta, { at: T0 + 5_000, principal: 'lead', status: 'pending', correlationId: 'c-1' });
  assert.is(stored!.data.at, T0 + 5_000);
  assert.is(stored!.data.by, 'lead');
  const view = await store.getView('acme', 'task', 't1');
  assert.equal(view, taskKind.view(r.snapshot, taskAt('t1'), 1));
  assert.is(view!.createdAt, T0 + 5_000);
  await host.close();
});

test('passivateIdle evicts only actors idle for idleMs and releases their ownership', async () => {
  const ownership = new FixedEpochOwnership(1);
  const gate = gatedStore(new MemoryStore());
  const { host, clock } = hostOver(gate.store, { ownership, idleMs: 1_000 });
  const created = Promise.all([sendTask(host, 'a', createTask('a')), sendTask(host, 'b', createTask('b'))]);
  await waitFor(() => gate.held.length === 2);
  gate.releaseAll();
  await created;
  clock.advance(600);
  await statusOf(host, 'b');
  clock.advance(500);
  assert.is(await host.passivateIdle(), 1);
  assert.is(host.activeCount, 1);
  assert.equal(ownership.released, ['acme/task/a']);

  // A busy actor stays, however long it was idle before.
  const busy = sendTask(host, 'b', { type: 'task.update', changes: { title: 'busy' } });
  await waitFor(() => gate.held.length === 1);
  assert.is(await host.passivateIdle(Number.POSITIVE_INFINITY), 0);
  assert.is(host.activeCount, 1);
  gate.releaseAll();
  assert.is((await busy).version, 2);
  assert.is(await host.passivateIdle(Number.POSITIVE_INFINITY), 1);
  assert.is(host.activeCount, 0);
  assert.equal(ownership.released, ['acme/task/a', 'acme/task/b']);
  await host.close();
});

test('keeps at most maxActive actors in memory, passivating the least recently used idle ones', async () => {
  const ownership = new FixedEpochOwnership(1);
  const { host } = hostOver(new MemoryStore(), { ownership, maxActive: 3 });
  for (const id of ['a', 'b', 'c']) await sendTask(host, id, createTask(id));
  assert.is(host.activeCount, 3);
  // Touch a: b is now the least recently used.
  await statusOf(host, 'a');
  await sendTask(host, 'd', createTask('d'));
  assert.is(host.activeCount, 3);
  assert.equal(ownership.released, ['acme/task/b']);
  // A passivated actor comes back from the store with its state.
  const b = await statusOf(host, 'b');
  assert.equal([b.status, b.version], ['pending', 1]);
  assert.is(host.activeCount, 3);
  assert.equal(ownership.released, ['acme/task/b', 'acme/task/c']);
  await host.close();
});

test('unloads a task as soon as it is finished, and reloads it from the store on demand', async () => {
  const ownership = new FixedEpochOwnership(1);
  const { host } = hostOver(new MemoryStore(), { ownership });
  await sendTask(host, 'done', createTask('done', { assignTo: 'w1' }));
  for (const type of ['task.accept', 'task.start']) await sendTask(host, 'done', { type }, 'w1');
  assert.is(host.activeCount, 1);
  assert.equal(ownership.released, []);
  await sendTask(host, 'done', { type: 'task.complete', result: 42 }, 'w1');
  assert.is(host.activeCount, 0);
  assert.equal(ownership.released, ['acme/task/done']);
  const back = await statusOf(host, 'done');
  assert.equal([back.status, back.version, back.snapshot.context.task.result], ['completed', 4, 42]);
  await host.close();
});

test('a commit the store refuses or fails rejects the turn, reloads the actor from the store, and the next message works', async () => {
  const faults: Record<string, () => Promise<CommitOutcome[]>> = {
    'a version conflict': async () => [{ ok: false, reason: 'version_conflict', actualVersion: 1 }],
    'a stale epoch': async () => [{ ok: false, reason: 'stale_epoch', currentEpoch: 99 }],
    'a thrown error': async () => {
      throw new Error('disk I/O error');
    },
  };
  for (const [name, fault] of Object.entries(faults)) {
    let failNext = false;
    const store = interceptStore(new MemoryStore(), {
      commit: (inner, items) => {
        if (!failNext) return inner(items);
        failNext = false;
        return fault();
      },
    });
    const { host } = hostOver(store);
    await sendTask(host, 't1', createTask('t1'));
    failNext = true;
    const e = protocolError(await rejection(sendTask(host, 't1', { type: 'task.assign', agentId: 'ann' })), 'UNAVAILABLE');
    assert.type(e.data.retryAfterMs, 'number', name);
    if (name === 'a thrown error') assert.match(e.message, /disk I\/O error/);
    const after = await statusOf(host, 't1');
    assert.is(after.status, 'pending', `${name}: memory is not ahead of the store`);
    assert.is(after.snapshot.context.task.assignedTo, null, name);
    assert.is(after.version, 1, name);
    assert.is((await store.streamInfo('acme/task/t1')).version, 1, name);
    const r = await sendTask(host, 't1', { type: 'task.assign', agentId: 'ann' });
    assert.is(r.version, 2, name);
    assert.is(taskKind.status(r.snapshot), 'assigned', name);
    await host.close();
  }
});

test('a turn that fails after the transition but before the commit leaves memory as the store has it', async () => {
  let failCommits = 0;
  const { host, store } = hostOver(
    interceptStore(new MemoryStore(), {
      commit: (inner, items) => {
        if (failCommits-- > 0) throw new Error('result failed');
        return inner(items);
      },
    }),
  );
  await sendTask(host, 't1', createTask('t1'));
  failCommits = 1;
  const e = await rejection(host.send(taskAt('t1'), { type: 'task.assign', agentId: 'ann' }, { principal: 'lead' }));
  assert.match((e as Error).message, /result failed/);
  const after = await statusOf(host, 't1');
  assert.is(after.status, 'pending');
  assert.is(after.version, 1);
  // Had memory run ahead, this accept would have been written after a create: an unreplayable stream.
  protocolError(await rejection(sendTask(host, 't1', { type: 'task.accept' }, 'ann')), 'ILLEGAL_TRANSITION');
  assert.is((await store.streamInfo('acme/task/t1')).version, 1);
  await host.close();
});

test('a store failure while activating refuses the message with UNAVAILABLE and the next one activates', async () => {
  let failLoads = 1;
  const store = interceptStore(new MemoryStore(), {
    loadSnapshot: (inner, stream) => {
      if (failLoads-- > 0) return Promise.reject(new Error('store offline'));
      return inner(stream);
    },
  });
  const { host } = hostOver(store);
  const e = protocolError(await rejection(sendTask(host, 't1', createTask('t1'))), 'UNAVAILABLE');
  assert.match(e.message, /store offline/);
  assert.is((await sendTask(host, 't1', createTask('t1'))).version, 1);
  await host.close();
});

test('a stale owner is fenced: after a higher epoch wrote, the lower epoch host is refused and the stream is unchanged', async () => {
  const store = new MemoryStore();
  const old = hostOver(store, { ownership: new FixedEpochOwnership(1) }).host;
  const current = hostOver(store, { ownership: new FixedEpochOwnership(2) }).host;
  await sendTask(old, 't1', createTask('t1'));
  assert.equal(await store.streamInfo('acme/task/t1'), { version: 1, epoch: 1 });
  await sendTask(current, 't1', { type: 'task.assign', agentId: 'ann' });
  assert.equal(await store.streamInfo('acme/task/t1'), { version: 2, epoch: 2 });
  const before = await store.readStream('acme/task/t1');

  // The old owner still believes it is at version 1.
  let e = protocolError(await rejection(sendTask(old, 't1', { type: 'task.update', changes: { title: 'stale' } })), 'UNAVAILABLE');
  assert.match(e.message, /moved to another node/);
  // Reloaded, it is at the right version, but its epoch is still too old.
  assert.is((await statusOf(old, 't1')).version, 2);
  e = protocolError(await rejection(sendTask(old, 't1', { type: 'task.update', changes: { title: 'stale' } })), 'UNAVAILABLE');
  assert.match(e.message, /moved to another node/);

  assert.equal(await store.readStream('acme/task/t1'), before);
  assert.equal(await store.streamInfo('acme/task/t1'), { version: 2, epoch: 2 });
  assert.is((await store.getView('acme', 'task', 't1'))!.status, 'assigned');
  assert.is((await sendTask(current, 't1', { type: 'task.accept' }, 'ann')).version, 3);
  await old.close();
  await current.close();
});

test('an event id already stored resolves to DUPLICATE and changes nothing', async () => {
  const { host, store } = hostOver();
  await sendTask(host, 't1', createTask('t1'));
  const first = await host.send(taskAt('t1'), { type: 'task.update', changes: { title: 'once' } }, { principal: 'lead', eventId: 'e-1' });
  assert.ok(first !== DUPLICATE && first.version === 2);
  const again = await host.send(taskAt('t1'), { type: 'task.update', changes: { title: 'twice' } }, { principal: 'lead', eventId: 'e-1' });
  assert.is(again, DUPLICATE);
  const after = await statusOf(host, 't1');
  assert.is(after.version, 2);
  assert.is(after.snapshot.context.task.title, 'once');
  assert.is((await store.streamInfo('acme/task/t1')).version, 2);
  await host.close();
});

test('fx.send is stored in the outbox with its event and delivered after commit exactly once, even when delivered twice', async () => {
  const outbox: OutboxRecord[] = [];
  const { host, store } = hostOver(new MemoryStore(), { onOutbox: (records) => outbox.push(...records) });
  const r = await host.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c1' }, { principal: 'lead' });
  assert.ok(r !== DUPLICATE);
  assert.equal(outbox, [
    {
      id: `${r.event.id}:0`,
      source: 'acme/pinger/p1',
      tenant: 'acme',
      targetKind: 'counter',
      targetId: 'c1',
      event: { type: 'counter.inc', from: 'pinger' },
      createdAt: T0,
    },
  ]);
  assert.equal(await store.pendingOutbox(10), outbox, 'the message is stored in the same commit as the event');
  assert.is((await store.streamInfo('acme/counter/c1')).version, 0, 'nothing is delivered before the runtime dispatches');

  const record = outbox[0]!;
  await host.deliver(record);
  assert.equal(await store.pendingOutbox(10), [], 'delivery consumes the outbox entry');
  await host.deliver(record);
  await Promise.all([host.deliver(record), host.deliver(record)]);
  const counter = await host.read<typeof counterKind.machine>({ tenant: 'acme', kind: 'counter', id: 'c1' });
  assert.is(counter.snapshot.context.count, 1);
  assert.is(counter.version, 1);
  const [delivered] = await store.readStream('acme/counter/c1');
  assert.is(delivered!.id, record.id, 'the delivered event carries the message id');
  assert.is(delivered!.meta.causationId, record.id);
  assert.is(delivered!.meta.principal, 'system');

  // A second message is a different event.
  const r2 = await host.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c1' }, { principal: 'lead' });
  assert.ok(r2 !== DUPLICATE);
  await Promise.all([host.deliver(outbox[1]!), host.deliver(outbox[1]!)]);
  assert.is((await store.streamInfo('acme/counter/c1')).version, 2);
  await host.close();
});

test('a message the target no longer accepts is consumed without an event', async () => {
  const { host, store } = hostOver();
  const record: OutboxRecord = {
    id: 'm-1',
    source: 'acme/pinger/p1',
    tenant: 'acme',
    targetKind: 'task',
    targetId: 'nobody',
    event: { type: 'task.accept' },
    createdAt: T0,
  };
  await store.commit([
    { stream: 'acme/pinger/p1', tenant: 'acme', kind: 'pinger', actorId: 'p1', expectedVersion: 0, epoch: 1, events: [], topics: [], outbox: [record] },
  ]);
  assert.is((await store.pendingOutbox(10)).length, 1);
  await host.deliver(record);
  assert.equal(await store.pendingOutbox(10), []);
  assert.is(await store.headPosition(), 0);
  await host.close();
});

test('OutboxDispatcher.start delivers messages that a crash left in the store', async () => {
  const store = new MemoryStore();
  // The first process commits the message and dies before dispatching it.
  const crashed = hostOver(store).host;
  await crashed.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c1' }, { principal: 'lead' });
  await crashed.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c2' }, { principal: 'lead' });
  await crashed.close();
  assert.is((await store.pendingOutbox(10)).length, 2);

  let dispatcher!: OutboxDispatcher;
  const { host } = hostOver(store, { onOutbox: (records) => dispatcher.dispatch(records) });
  dispatcher = new OutboxDispatcher(host);
  await dispatcher.start();
  await waitFor(async () => (await store.pendingOutbox(10)).length === 0);
  assert.is((await store.streamInfo('acme/counter/c1')).version, 1);
  assert.is((await store.streamInfo('acme/counter/c2')).version, 1);

  // Freshly committed messages are dispatched right after their commit.
  await host.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c1' }, { principal: 'lead' });
  await waitFor(async () => (await store.streamInfo('acme/counter/c1')).version === 2);
  // Starting again (another restart) delivers nothing twice.
  await dispatcher.start();
  assert.is((await host.read<typeof counterKind.machine>({ tenant: 'acme', kind: 'counter', id: 'c1' })).snapshot.context.count, 2);
  dispatcher.close();
  await host.close();
});

test('an idempotency key claimed first by another turn surfaces as IdempotencyConflict and writes nothing', async () => {
  const { host, store } = hostOver();
  const idem = (taskId: string) => ({
    tenant: 'acme',
    key: 'lead\nk1',
    requestHash: 'h1',
    createdAt: T0,
    result: { taskId },
  });
  await host.send<typeof taskMachine>(taskAt('t1'), createTask('t1'), { principal: 'lead', idempotency: idem('t1') });
  assert.equal((await store.getIdempotency('acme', 'lead\nk1'))?.result, { taskId: 't1' });

  const e = await rejection(host.send<typeof taskMachine>(taskAt('t2'), createTask('t2'), { principal: 'lead', idempotency: idem('t2') }));
  assert.instance(e, IdempotencyConflict);
  assert.is((e as IdempotencyConflict).key, 'lead\nk1');
  assert.is((await store.streamInfo('acme/task/t2')).version, 0);
  assert.equal((await store.getIdempotency('acme', 'lead\nk1'))?.result, { taskId: 't1' });
  // Memory was reloaded: t2 still does not exist and can be created without the key.
  assert.is((await statusOf(host, 't2')).status, 'draft');
  assert.is((await sendTask(host, 't2', createTask('t2'))).version, 1);
  await host.close();
});

test('commit listeners receive committed events in order with their topics, and never refused ones', async () => {
  const { host, store } = hostOver();
  const seen: { event: StoredEvent; topics: string[] }[] = [];
  const off = host.onCommit((events, topics) => events.forEach((event, i) => seen.push({ event, topics: topics[i]! })));
  await sendTask(host, 't1', createTask('t1'));
  await sendTask(host, 't2', createTask('t2', { assignTo: 'ann' }));
  await sendTask(host, 't1', { type: 'task.assign', agentId: 'ann' });
  await sendTask(host, 't1', { type: 'task.assign', agentId: 'bob' });
  await rejection(sendTask(host, 't2', { type: 'task.complete' }));
  await Promise.all(['a', 'b', 'c', 'd'].map((id) => sendTask(host, id, createTask(id))));
  off();
  await sendTask(host, 't1', { type: 'task.accept' }, 'bob');

  const feed = await store.readFeed(0, 100);
  assert.equal(
    seen.map((s) => s.event),
    feed.slice(0, seen.length),
    'listeners see exactly the stored events, in position order',
  );
  assert.is(seen.length, 8);
  assert.is(feed.length, 9, 'a removed listener hears nothing more');
  assert.equal(seen.slice(0, 4).map((s) => s.topics), [
    ['task:t1', 'tenant'],
    ['task:t2', 'tenant', 'inbox:ann'],
    ['task:t1', 'tenant', 'inbox:ann'],
    ['task:t1', 'tenant', 'inbox:ann', 'inbox:bob'],
  ]);
  const positions = seen.map((s) => s.event.position);
  assert.equal(positions, [...positions].sort((x, y) => x - y));
  assert.equal(await store.readTopic('acme', 'inbox:ann', 0, 10).then((es) => es.map((e) => [e.actorId, e.version])), [
    ['t2', 1],
    ['t1', 2],
    ['t1', 3],
  ]);
  await host.close();
});

test('timer effects become durable timers in the same commit, and a fired timer is consumed with its event', async () => {
  const scheduled: number[] = [];
  const { host, store, clock } = hostOver(new MemoryStore(), { onTimerScheduled: (at) => scheduled.push(at) });
  const deadline = T0 + 60_000;
  await sendTask(host, 't1', createTask('t1', { deadline: iso(deadline), assignTo: 'ann' }));
  assert.equal(scheduled, [deadline]);
  const [timer] = await store.dueTimers(Number.POSITIVE_INFINITY, 10);
  assert.equal(timer, { stream: 'acme/task/t1', tenant: 'acme', kind: 'task', actorId: 't1', name: 'deadline', fireAt: deadline, event: {} });

  // Not due yet: nothing to fire.
  assert.equal(await store.dueTimers(clock.now(), 10), []);
  clock.set(deadline);
  await host.fireTimer(timer!);
  const after = await statusOf(host, 't1');
  assert.is(after.status, 'timed_out');
  assert.is(after.version, 2);
  assert.equal(await store.dueTimers(Number.POSITIVE_INFINITY, 10), []);
  const [, fired] = await store.readStream('acme/task/t1');
  assert.equal(fired!.data, { type: 'timer.fired', name: 'deadline', fireAt: deadline, at: deadline, by: 'system' });

  // Firing the same timer again is refused by the machine and writes nothing.
  await host.fireTimer(timer!);
  assert.is((await store.streamInfo('acme/task/t1')).version, 2);
  await host.close();
});

test('close waits for running turns, is safe to call twice, and then refuses messages with UNAVAILABLE', async () => {
  const gate = gatedStore(new MemoryStore());
  const { host } = hostOver(gate.store);
  const running = sendTask(host, 't1', createTask('t1'));
  await waitFor(() => gate.held.length === 1);
  let closed = false;
  const closing = host.close().then(() => (closed = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.is(closed, false, 'close waits for the running turn');
  gate.releaseAll();
  assert.is((await running).version, 1);
  await closing;
  await host.close();
  assert.is(host.activeCount, 0);
  protocolError(await rejection(sendTask(host, 't1', { type: 'task.cancel' })), 'UNAVAILABLE');
});

test.run();

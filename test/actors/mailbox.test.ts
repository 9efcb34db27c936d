import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ActorHost, type ActorHostOptions } from '../../actors/ActorHost.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import type { CommitItem, Store } from '../../actors/Store.js';
import { OutboxDispatcher, TimerService } from '../../actors/TimerService.js';
import { iso } from '../../machines/effects.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import { taskKind } from '../../src/kinds/taskKind.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { counterKind, counterMachine, createTask, pingerKind, taskAt } from '../helpers/actors.js';
import { interceptStore } from '../helpers/stores.js';
import { waitFor } from '../helpers/waitFor.js';

/**
 * A store whose commits of the given streams wait while the gate is closed, so a test can keep
 * an actor busy with one turn while more messages arrive.
 */
function gateStreams(inner: Store, streams: string[]): { store: Store; close(): void; open(): void; waiting(): number } {
  let gate: Promise<void> | null = null;
  let release: () => void = () => {};
  let waiting = 0;
  const store = interceptStore(inner, {
    async commit(commit, items: CommitItem[]) {
      if (gate && items.some((i) => streams.includes(i.stream))) {
        waiting++;
        await gate;
        waiting--;
      }
      return commit(items);
    },
  });
  return {
    store,
    close() {
      gate = new Promise<void>((r) => (release = r));
    },
    open() {
      gate = null;
      release();
    },
    waiting: () => waiting,
  };
}

function hostOver(store: Store, opts: Partial<ActorHostOptions> = {}): ActorHost {
  return new ActorHost({ store, ownership: new LocalOwnership(store), kinds: [taskKind, pingerKind, counterKind], ...opts });
}

const counter = (id: string) => ({ tenant: 'acme', kind: 'counter', id });

const test = suite('ActorHost: bounded mailboxes');

test('refuses messages beyond the bound at once with BUSY naming the actor, and commits every accepted one in order', async () => {
  const busy: string[] = [];
  const store = new MemoryStore();
  const host = hostOver(store, { maxMailbox: 10, onBusy: (kind) => busy.push(kind) });
  const sends = Array.from({ length: 50 }, (_, i) => host.send(counter('c1'), { type: 'counter.inc', from: String(i) }, { principal: 'flood' }));
  const results = await Promise.allSettled(sends);

  const accepted = results.flatMap((r, i) => (r.status === 'fulfilled' ? [String(i)] : []));
  const refused = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as ProtocolError] : []));
  // The message being handled plus ten waiting; sends are queued in call order.
  assert.equal(accepted, Array.from({ length: 11 }, (_, i) => String(i)));
  assert.is(refused.length, 39);
  for (const e of refused) {
    assert.instance(e, ProtocolError);
    assert.is(e.code, ErrorCodes.BUSY);
    assert.match(e.message, /counter c1 has 10 messages waiting/);
    assert.equal(e.data, { retryAfterMs: 100, kind: 'counter', id: 'c1', limit: 10 });
  }
  assert.is(busy.length, 39);
  assert.ok(busy.every((k) => k === 'counter'));

  const events = await store.readStream('acme/counter/c1');
  assert.equal(events.map((e) => e.data.from), accepted, 'every accepted message is stored, in the order it was sent');
  assert.equal(events.map((e) => e.version), accepted.map((_, i) => i + 1));
  const { snapshot, version } = await host.read<typeof counterMachine>(counter('c1'));
  assert.is(snapshot.context.count, 11, 'the state counts exactly the accepted messages');
  assert.is(version, 11);
  assert.is(host.mailboxDepth, 0);

  // Once drained, the actor takes messages again.
  await host.send(counter('c1'), { type: 'counter.inc', from: 'later' }, { principal: 'flood' });
  assert.is((await host.read<typeof counterMachine>(counter('c1'))).snapshot.context.count, 12);
  await host.close();
});

test('bounds each actor on its own: a full mailbox does not refuse messages to other actors', async () => {
  const gate = gateStreams(new MemoryStore(), ['acme/counter/hot']);
  const host = hostOver(gate.store, { maxMailbox: 2 });
  await host.send(counter('hot'), { type: 'counter.inc' }, { principal: 'p' });
  gate.close();
  const held = [host.send(counter('hot'), { type: 'counter.inc' }, { principal: 'p' })];
  await waitFor(() => gate.waiting() === 1);
  // One turn is running (held at its commit); two more may wait.
  held.push(host.send(counter('hot'), { type: 'counter.inc' }, { principal: 'p' }));
  held.push(host.send(counter('hot'), { type: 'counter.inc' }, { principal: 'p' }));
  assert.is(host.mailboxDepth, 2);
  const refused = await host.send(counter('hot'), { type: 'counter.inc' }, { principal: 'p' }).then(
    () => null,
    (e: unknown) => e,
  );
  assert.ok(refused instanceof ProtocolError && refused.reason === 'BUSY', String(refused));

  // Another actor is not affected, also for reads.
  await host.send(counter('cold'), { type: 'counter.inc' }, { principal: 'p' });
  assert.is((await host.read<typeof counterMachine>(counter('cold'))).snapshot.context.count, 1);

  gate.open();
  await Promise.all(held);
  assert.is((await host.read<typeof counterMachine>(counter('hot'))).snapshot.context.count, 1 + held.length);
  await host.close();
});

test('an outbox message refused by a full mailbox stays in the store and is delivered later', async () => {
  const gate = gateStreams(new MemoryStore(), ['acme/counter/c1']);
  const busy: string[] = [];
  let outbox!: OutboxDispatcher;
  const host = hostOver(gate.store, { maxMailbox: 1, onBusy: (k) => busy.push(k), onOutbox: (records) => outbox.dispatch(records) });
  outbox = new OutboxDispatcher(host);
  await outbox.start();

  gate.close();
  const held = [host.send(counter('c1'), { type: 'counter.inc' }, { principal: 'p' }), host.send(counter('c1'), { type: 'counter.inc' }, { principal: 'p' })];
  await waitFor(() => gate.waiting() === 1);
  // The pinger's commit is not held; its message to c1 finds the mailbox full.
  await host.send({ tenant: 'acme', kind: 'pinger', id: 'p1' }, { type: 'ping.send', to: 'c1' }, { principal: 'p' });
  await waitFor(() => busy.length >= 1);
  assert.equal(busy, ['counter']);
  assert.is((await gate.store.pendingOutbox(10)).length, 1, 'the refused message is still in the outbox');

  gate.open();
  await Promise.all(held);
  await waitFor(async () => (await gate.store.pendingOutbox(10)).length === 0);
  const events = await gate.store.readStream('acme/counter/c1');
  assert.equal(events.map((e) => e.data.from ?? null), [null, null, 'pinger'], 'delivered once, after the mailbox drained');
  outbox.close();
  await host.close();
});

test('a due timer refused by a full mailbox stays in the store and fires later', async () => {
  const gate = gateStreams(new MemoryStore(), ['acme/task/t1']);
  const busy: string[] = [];
  let timers!: TimerService;
  const host = hostOver(gate.store, { maxMailbox: 1, onBusy: (k) => busy.push(k), onTimerScheduled: (at) => timers.scheduled(at) });
  timers = new TimerService({ host });
  await timers.start();

  const deadline = Date.now() + 100;
  await host.send(taskAt('t1'), createTask('t1', { deadline: iso(deadline) }), { principal: 'lead' });
  gate.close();
  // One turn held at its commit, one read waiting: the mailbox is full when the deadline comes.
  const held = host.send(taskAt('t1'), { type: 'task.update', changes: { title: 'Renamed' } }, { principal: 'lead' });
  await waitFor(() => gate.waiting() === 1);
  const read = host.read(taskAt('t1'));
  await waitFor(() => busy.length >= 1);
  assert.is((await gate.store.dueTimers(Date.now(), 10)).length, 1, 'the refused timer is still in the store');

  gate.open();
  await held;
  await read;
  await waitFor(async () => taskKind.status((await host.read(taskAt('t1'))).snapshot) === 'timed_out');
  assert.is(await gate.store.nextTimerAt(), undefined, 'the timer was consumed');
  const types = (await gate.store.readStream('acme/task/t1')).map((e) => e.type);
  assert.equal(types, ['task.create', 'task.update', 'timer.fired']);
  timers.close();
  await host.close();
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ActorHost, DUPLICATE } from '../../actors/ActorHost.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import type { Store, TimerRecord } from '../../actors/Store.js';
import { TimerService } from '../../actors/TimerService.js';
import { iso } from '../../machines/effects.js';
import type { taskMachine } from '../../machines/taskMachine.js';
import { agentKind } from '../../src/kinds/agentKind.js';
import { taskKind } from '../../src/kinds/taskKind.js';
import { createTask, taskAt } from '../helpers/actors.js';
import { sqliteStore, tempDir } from '../helpers/server.js';
import { interceptStore } from '../helpers/stores.js';
import { waitFor } from '../helpers/waitFor.js';

/** One Troupe process as far as timers go: a SQLite store, a host and its timer service. */
interface Node {
  store: Store;
  host: ActorHost;
  timers: TimerService;
  /** Every timer the service handed to the host, in order. */
  fired: TimerRecord[];
  send(id: string, event: { type: string } & Record<string, unknown>, principal?: string): Promise<number>;
  status(id: string): Promise<string | undefined>;
  stop(): Promise<void>;
}

function startNode(dir: string, wrap: (store: Store) => Store = (s) => s): Node {
  const store = wrap(sqliteStore(dir));
  let timers: TimerService | undefined;
  const host = new ActorHost({
    store,
    ownership: new LocalOwnership(store),
    kinds: [taskKind, agentKind],
    onTimerScheduled: (at) => timers?.scheduled(at),
  });
  timers = new TimerService({ host });
  const fired: TimerRecord[] = [];
  const fireTimer = host.fireTimer.bind(host);
  host.fireTimer = (t) => {
    fired.push(t);
    return fireTimer(t);
  };
  return {
    store,
    host,
    timers,
    fired,
    async send(id, event, principal = 'lead') {
      const r = await host.send<typeof taskMachine>(taskAt(id), event, { principal });
      assert.ok(r !== DUPLICATE);
      return r.version;
    },
    async status(id) {
      return (await store.getView('acme', 'task', id))?.status;
    },
    async stop() {
      timers!.close();
      await host.close();
      await store.close();
    },
  };
}

const test = suite('TimerService');

let dir: { dir: string; remove: () => void };
test.before.each(() => {
  dir = tempDir();
});
test.after.each(() => {
  dir.remove();
});

test('fires a due retry timer and the failed task goes back to pending', async () => {
  const node = startNode(dir.dir);
  await node.timers.start();
  await node.send('t1', createTask('t1', { assignTo: 'ann', maxRetries: 1, retryBackoffMs: 20 }));
  await node.send('t1', { type: 'task.accept' }, 'ann');
  await node.send('t1', { type: 'task.start' }, 'ann');
  await node.send('t1', { type: 'task.fail', error: 'flaky' }, 'ann');
  assert.is(await node.status('t1'), 'failed');
  assert.type(await node.store.nextTimerAt(), 'number');

  await waitFor(async () => (await node.status('t1')) === 'pending');
  const view = await node.store.getView('acme', 'task', 't1');
  assert.is(view!.doc.retryCount, 1);
  assert.is(view!.owner, null);
  assert.equal(node.fired.map((t) => t.name), ['retry']);
  assert.is(await node.store.nextTimerAt(), undefined, 'the fired timer is gone');
  await node.stop();
});

test('fires a deadline and times the task out', async () => {
  const node = startNode(dir.dir);
  await node.timers.start();
  await node.send('t1', createTask('t1', { deadline: iso(Date.now() + 50) }));
  await waitFor(async () => (await node.status('t1')) === 'timed_out');
  assert.is(await node.store.nextTimerAt(), undefined);
  await node.stop();
});

test('a timer scheduled before a crash fires after the restart', async () => {
  const first = startNode(dir.dir);
  await first.timers.start();
  const deadline = Date.now() + 200;
  await first.send('t1', createTask('t1', { deadline: iso(deadline) }));
  // The process dies right after the commit was acknowledged.
  await first.stop();

  const second = startNode(dir.dir);
  assert.is(await second.status('t1'), 'pending', 'the timer had not fired before the crash');
  assert.is(await second.store.nextTimerAt(), deadline, 'the timer is in the store');
  await second.timers.start();
  await waitFor(async () => (await second.status('t1')) === 'timed_out');
  assert.ok(Date.now() >= deadline, 'it did not fire early');
  assert.equal(second.fired.map((t) => [t.actorId, t.name, t.fireAt]), [['t1', 'deadline', deadline]]);
  assert.equal(await second.store.streamInfo('acme/task/t1'), { version: 2, epoch: 2 }, 'the restarted process wrote it');
  await second.stop();
});

test('a cancelled timer does not fire', async () => {
  const node = startNode(dir.dir);
  await node.timers.start();
  const now = Date.now();
  // A wide margin: the update must land before the early deadline even on a loaded machine.
  await node.send('early', createTask('early', { deadline: iso(now + 1000) }));
  await node.send('late', createTask('late', { deadline: iso(now + 1100) }));
  // Clearing the deadline cancels its timer.
  await node.send('early', { type: 'task.update', changes: { deadline: null } });
  assert.is(await node.store.nextTimerAt(), now + 1100);

  // Timers fire in fireAt order: once the later one has fired, the earlier one would have too.
  await waitFor(async () => (await node.status('late')) === 'timed_out');
  assert.equal(node.fired.map((t) => t.actorId), ['late']);
  assert.is(await node.status('early'), 'pending');
  assert.is((await node.store.streamInfo('acme/task/early')).version, 2);
  await node.stop();
});

test('a timer whose event the machine no longer accepts is consumed without an event', async () => {
  const node = startNode(dir.dir);
  await node.timers.start();
  await node.send('t1', createTask('t1'));
  const { version, epoch } = await node.store.streamInfo('acme/task/t1');
  // A timer the task does not expect (it has no deadline), as a crash between commits might leave.
  const fireAt = Date.now() + 20;
  const [outcome] = await node.store.commit([
    {
      stream: 'acme/task/t1',
      tenant: 'acme',
      kind: 'task',
      actorId: 't1',
      expectedVersion: version,
      epoch,
      events: [],
      topics: [],
      scheduleTimers: [{ stream: 'acme/task/t1', tenant: 'acme', kind: 'task', actorId: 't1', name: 'deadline', fireAt, event: {} }],
    },
  ]);
  assert.ok(outcome!.ok);
  node.timers.scheduled(fireAt);

  await waitFor(async () => (await node.store.nextTimerAt()) === undefined);
  assert.equal(node.fired.map((t) => t.name), ['deadline']);
  assert.is(await node.status('t1'), 'pending');
  assert.is((await node.store.streamInfo('acme/task/t1')).version, 1, 'no event was written');
  await node.stop();
});

test('a timer scheduled while the service re-reads the store after a fire is not lost', async () => {
  // Holds the service's first read that finds no timer left (the one after `first` fired), as a
  // slow store would.
  let holdNext = false;
  let release: (() => void) | undefined;
  const node = startNode(dir.dir, (store) =>
    interceptStore(store, {
      nextTimerAt: async (inner) => {
        const at = await inner();
        if (holdNext && at === undefined) {
          holdNext = false;
          await new Promise<void>((resolve) => (release = resolve));
        }
        return at;
      },
    }),
  );
  await node.timers.start();
  holdNext = true;
  await node.send('first', createTask('first', { deadline: iso(Date.now() + 20) }));
  await waitFor(async () => (await node.status('first')) === 'timed_out');
  // The service has fired `first` and is now reading the store for the next timer.
  await waitFor(() => release !== undefined);
  await node.send('second', createTask('second', { deadline: iso(Date.now() + 20) }));
  release!();
  await waitFor(async () => (await node.status('second')) === 'timed_out', { timeoutMs: 3_000 });
  await node.stop();
});

test.run();

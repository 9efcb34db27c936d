import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { AnyStateMachine } from 'xstate';
import { ActorHost, DUPLICATE } from '../../actors/ActorHost.js';
import { addressOf, type ActorKind } from '../../actors/ActorKind.js';
import { LocalOwnership } from '../../actors/Ownership.js';
import { replay, replayPersisted } from '../../actors/replay.js';
import type { Store } from '../../actors/Store.js';
import type { agentMachine } from '../../machines/agentMachine.js';
import type { taskMachine } from '../../machines/taskMachine.js';
import { agentKind } from '../../src/kinds/agentKind.js';
import { taskKind } from '../../src/kinds/taskKind.js';
import { fakeClock, type FakeClock } from '../helpers/clock.js';
import { seeded, type Rng } from '../helpers/prng.js';
import { sqliteStore, tempDir } from '../helpers/server.js';
import { AGENT_IDS, pickAgentEvent, pickTaskEvent } from '../helpers/workload.js';

/** A value as a store keeps it (JSON drops `undefined` members). */
function json<T>(value: T): T {
  return JSON.parse(JSON.stringify(value));
}

// Small snapshot intervals, so that many streams have a snapshot and activation uses it.
const kinds: Record<string, ActorKind> = {
  task: { ...taskKind, snapshotEvery: 7 } as ActorKind,
  agent: { ...agentKind, snapshotEvery: 5 } as ActorKind,
};

function newHost(store: Store, clock: FakeClock): ActorHost {
  return new ActorHost({ store, ownership: new LocalOwnership(store), kinds: Object.values(kinds), now: clock.now });
}

/**
 * Drives many tasks and agents through random lifecycles (with retries, attempt timeouts and
 * deadlines fired as durable timers on a simulated clock), concurrently, with passivation and a
 * restart half way. Returns the host still running.
 */
async function workload(store: Store, clock: FakeClock, rng: Rng, opts: { tasks: number; rounds: number }): Promise<ActorHost> {
  let host = newHost(store, clock);
  const taskIds = Array.from({ length: opts.tasks }, (_, i) => `t${i}`);
  const fireDue = async () => {
    const due = await store.dueTimers(clock.now(), 10_000);
    await Promise.all(due.map((t) => host.fireTimer(t)));
  };
  for (let round = 0; round < opts.rounds; round++) {
    clock.advance(rng.between(0, 2_500));
    await fireDue();
    const turns: Promise<unknown>[] = [];
    for (const id of taskIds) {
      if (!rng.chance(0.7)) continue;
      const { snapshot } = await host.read<typeof taskMachine>({ tenant: 'acme', kind: 'task', id });
      // Finished tasks accept only archive and delete; most are left alone.
      const finished = ['completed', 'cancelled', 'timed_out', 'failed'].includes(taskKind.status(snapshot)) && !snapshot.context.timers.retry;
      if (finished && rng.chance(0.97)) continue;
      const by = rng.pick(['lead', ...AGENT_IDS]);
      const pick = pickTaskEvent(rng, snapshot, { id, tenantId: 'acme', at: clock.now(), by, timers: false });
      if (pick) turns.push(host.send({ tenant: 'acme', kind: 'task', id }, pick.body, { principal: by }));
    }
    for (const id of AGENT_IDS) {
      const { snapshot } = await host.read<typeof agentMachine>({ tenant: 'acme', kind: 'agent', id });
      const body = pickAgentEvent(rng, snapshot, { id, tenantId: 'acme', at: clock.now(), by: id });
      if (body) turns.push(host.send({ tenant: 'acme', kind: 'agent', id }, body, { principal: id }));
    }
    // Concurrent turns of different actors: the store group-commits them.
    for (const r of await Promise.all(turns)) assert.ok(r !== DUPLICATE);
    if (round % 10 === 9) await host.passivateIdle(Number.POSITIVE_INFINITY);
    if (round === Math.floor(opts.rounds / 2)) {
      await host.close();
      host = newHost(store, clock);
    }
  }
  // Let every pending retry, timeout and deadline come due.
  for (let i = 0; i < 5; i++) {
    clock.advance(3_600_000);
    await fireDue();
  }
  return host;
}

const test = suite('replay');

test('every stream of a realistic workload replays to its stored snapshot, its view row and its live state', async () => {
  const dir = tempDir();
  const store = sqliteStore(dir.dir);
  const clock = fakeClock();
  const host = await workload(store, clock, seeded(20250101), { tasks: 60, rounds: 40 });

  const streams = await store.listStreams();
  let snapshots = 0;
  let retried = 0;
  const types = new Map<string, number>();
  const statuses = new Set<string>();
  for (const stream of streams) {
    const address = addressOf(stream);
    const kind = kinds[address.kind]!;
    const machine = kind.machine as AnyStateMachine;
    const events = await store.readStream(stream);
    assert.equal(
      events.map((e) => e.version),
      events.map((_, i) => i + 1),
      `${stream}: versions are 1..n`,
    );
    for (const e of events) types.set(e.type, (types.get(e.type) ?? 0) + 1);
    const version = events.length;
    assert.is((await store.streamInfo(stream)).version, version);

    // DESIGN §1.3: the stored snapshot is the stream folded through the machine up to its version.
    const snap = await store.loadSnapshot(stream);
    if (snap) {
      snapshots++;
      assert.ok(snap.version <= version && snap.version % (kind.snapshotEvery ?? 50) === 0, stream);
      assert.equal(json(replayPersisted(machine, events.slice(0, snap.version))), snap.state, `${stream}: snapshot at ${snap.version}`);
    }

    // The read model row is the view of the replayed state.
    const replayed = replay(machine, events);
    const expectedView = kind.view(replayed as never, address, version);
    const view = await store.getView(address.tenant, address.kind, address.id);
    assert.equal(view ?? null, json(expectedView), `${stream}: view`);
    if (view) {
      statuses.add(`${address.kind}:${view.status}`);
      if (address.kind === 'task' && (view.doc.retryCount as number) > 0) retried++;
    }

    // The state in memory (after all that activity) and a fresh activation agree with replay.
    const live = await host.read(address);
    assert.is(live.version, version, stream);
    assert.equal(json(machine.getPersistedSnapshot(live.snapshot)), json(replayPersisted(machine, events)), `${stream}: live state`);
  }
  await host.close();

  const fresh = newHost(store, clock);
  for (const stream of streams) {
    const address = addressOf(stream);
    const machine = kinds[address.kind]!.machine as AnyStateMachine;
    const { snapshot } = await fresh.read(address);
    assert.equal(json(machine.getPersistedSnapshot(snapshot)), json(replayPersisted(machine, await store.readStream(stream))), `${stream}: reactivated`);
  }
  await fresh.close();
  await store.close();
  dir.remove();

  // The workload must have exercised what it claims to, or the checks above prove little.
  assert.ok(streams.length >= 60, `${streams.length} streams`);
  assert.ok(snapshots >= 20, `only ${snapshots} streams have a snapshot`);
  assert.ok(retried >= 5, `only ${retried} tasks retried`);
  assert.ok((types.get('timer.fired') ?? 0) >= 20, `only ${types.get('timer.fired') ?? 0} timers fired`);
  for (const s of ['task:completed', 'task:failed', 'task:cancelled', 'task:timed_out', 'task:pending']) {
    assert.ok(statuses.has(s), `no stream ended ${s}: ${[...statuses].join(', ')}`);
  }
  assert.is([...statuses].filter((s) => s.startsWith('agent:')).length > 0, true, 'agents were registered');
});

test.run();

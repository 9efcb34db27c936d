import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type {
  CommitItem,
  CommitOutcome,
  EventPage,
  NewEvent,
  OutboxRecord,
  RefusalRecord,
  Store,
  StoredEvent,
  TimerRecord,
  ViewRecord,
} from '../../actors/Store.js';

/** What a contract run needs per test: a fresh, empty store and a way to dispose of it. */
export interface StoreFixture {
  store: Store;
  teardown: () => Promise<void>;
}

const T = 'acme';

/** An event with distinct data, so mix-ups show. */
function ev(id: string, type = 'task.updated', at = 1_000): NewEvent {
  return {
    id,
    type,
    data: { type, id, nested: { list: [1, 'two'] } },
    meta: { at, principal: 'ann', correlationId: `c-${id}` },
  };
}

/** An item for stream `kind/actorId` of tenant `acme`, with one event per id. */
function item(
  stream: string,
  expectedVersion: number,
  eventIds: string[],
  extra: Partial<CommitItem> = {},
): CommitItem {
  const [kind = '', actorId = ''] = stream.split('/');
  return {
    stream,
    tenant: T,
    kind,
    actorId,
    expectedVersion,
    epoch: 1,
    events: eventIds.map((id) => ev(id)),
    topics: eventIds.map(() => []),
    ...extra,
  };
}

function view(id: string, extra: Partial<ViewRecord> = {}): ViewRecord {
  return {
    tenant: T,
    kind: 'task',
    id,
    version: 1,
    status: 'open',
    owner: null,
    type: null,
    priority: null,
    parentId: null,
    createdBy: null,
    createdAt: 1_000,
    updatedAt: 1_000,
    text: id,
    archived: false,
    doc: { id, title: `Task ${id}` },
    ...extra,
  };
}

function timer(stream: string, name: string, fireAt: number): TimerRecord {
  const [kind = '', actorId = ''] = stream.split('/');
  return { stream, tenant: T, kind, actorId, name, fireAt, event: { type: 'timer.fired', name } };
}

function outbox(id: string, source: string, createdAt = 1_000): OutboxRecord {
  const event = { type: 'task.offered', id };
  return { id, source, tenant: T, targetKind: 'agent', targetId: 'bot', event, createdAt };
}

/** Asserts success and returns the positions. */
function ok(outcome: CommitOutcome | undefined): number[] {
  assert.ok(outcome?.ok, `expected ok, got ${JSON.stringify(outcome)}`);
  return (outcome as { positions: number[] }).positions;
}

async function rejects(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  try {
    await promise;
  } catch (err) {
    assert.instance(err, Error);
    assert.match((err as Error).message, pattern);
    return;
  }
  assert.unreachable('expected a rejection');
}

/** Stores each view through its own event-less item, as an actor turn would. */
async function seedViews(store: Store, views: ViewRecord[]): Promise<void> {
  const outcomes = await store.commit(
    views.map((v) => ({ ...item(`${v.kind}/${v.id}`, 0, []), tenant: v.tenant, view: v })),
  );
  outcomes.forEach(ok);
}

const ids = (views: { id: string }[]): string[] => views.map((v) => v.id);

/** An event of `principal` at time `at`. */
function act(id: string, type: string, at: number, principal: string): NewEvent {
  return { id, type, data: { type, id }, meta: { at, principal, status: 'open' } };
}

function refusal(id: string, extra: Partial<RefusalRecord> = {}): RefusalRecord {
  return {
    id,
    tenant: T,
    at: 1_000,
    lastAt: extra.at ?? 1_000,
    principal: 'eve',
    method: 'task.create',
    code: 'FORBIDDEN',
    reason: 'Only admin principals may create tasks.',
    count: 1,
    actorKind: null,
    actorId: null,
    correlationId: null,
    ...extra,
  };
}

/** The ids of a page of the audit trail, refusals marked with `!`. */
const trail = (page: EventPage): string[] =>
  page.items.map((i) => (i.outcome === 'accepted' ? i.event.id : `!${i.refusal.id}`));

/** Every entry of the audit trail for `query`, read `pageSize` at a time. */
async function allPages(store: Store, tenant: string, query: Parameters<Store['queryEvents']>[1], pageSize: number): Promise<string[]> {
  const seen: string[] = [];
  let cursor: string | undefined;
  for (let i = 0; i < 100; i++) {
    const page = await store.queryEvents(tenant, { ...query, limit: pageSize, cursor });
    assert.ok(page.items.length <= pageSize);
    seen.push(...trail(page));
    if (page.nextCursor === null) return seen;
    cursor = page.nextCursor;
  }
  throw new Error('pagination did not end');
}

/**
 * Builds and runs the uvu suite every {@link Store} adapter must pass. `setup` is called before
 * each test and must return an empty store; `teardown` is called after it.
 *
 * @example
 * ```ts
 * runStoreContract('MemoryStore', async () => ({ store: new MemoryStore(), teardown: async () => {} }));
 * ```
 */
export function runStoreContract(name: string, setup: () => Promise<StoreFixture>): void {
  const test = suite(`${name} store contract`);
  let fixture: StoreFixture | undefined;
  let store: Store;

  test.before.each(async () => {
    fixture = await setup();
    store = fixture.store;
  });
  test.after.each(async () => {
    await fixture?.teardown();
    fixture = undefined;
  });

  // Events and streams

  test('appends events to a new stream and reads them back with positions starting at 1', async () => {
    const [outcome] = await store.commit([item('task/t1', 0, ['e1', 'e2'])]);
    assert.equal(outcome, { ok: true, positions: [1, 2], feedPositions: [1, 2] });
    const expected: StoredEvent[] = ['e1', 'e2'].map((id, i) => ({
      ...ev(id),
      position: i + 1,
      feedPosition: i + 1,
      stream: 'task/t1',
      tenant: T,
      kind: 'task',
      actorId: 't1',
      version: i + 1,
    }));
    assert.equal(await store.readStream('task/t1'), expected);
    assert.equal(await store.streamInfo('task/t1'), { version: 2, epoch: 1 });
    assert.is(await store.headPosition(), 2);
  });

  test('readStream honours afterVersion and limit and knows no unknown stream', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1', 'e2', 'e3'])]))[0]);
    assert.equal(ids(await store.readStream('task/t1', 1)), ['e2', 'e3']);
    assert.equal(ids(await store.readStream('task/t1', 0, 2)), ['e1', 'e2']);
    assert.equal(ids(await store.readStream('task/t1', 1, 1)), ['e2']);
    assert.equal(await store.readStream('task/t1', 3), []);
    assert.equal(await store.readStream('task/none'), []);
    assert.equal(await store.streamInfo('task/none'), { version: 0, epoch: 0 });
  });

  test('commit of no items resolves to no outcomes', async () => {
    assert.equal(await store.commit([]), []);
    assert.is(await store.headPosition(), 0);
  });

  test('items of one call apply in order, so a later item builds on an earlier one', async () => {
    const outcomes = await store.commit([item('task/t1', 0, ['e1']), item('task/t1', 1, ['e2'])]);
    assert.equal(outcomes, [
      { ok: true, positions: [1], feedPositions: [1] },
      { ok: true, positions: [2], feedPositions: [2] },
    ]);
    assert.equal(await store.streamInfo('task/t1'), { version: 2, epoch: 1 });
  });

  test('refuses an expectedVersion that is behind or ahead with version_conflict and the actual version', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'])]))[0]);
    assert.equal(await store.commit([item('task/t1', 0, ['e2'])]), [
      { ok: false, reason: 'version_conflict', actualVersion: 1 },
    ]);
    assert.equal(await store.commit([item('task/t1', 5, ['e3'])]), [
      { ok: false, reason: 'version_conflict', actualVersion: 1 },
    ]);
    assert.equal(ids(await store.readStream('task/t1')), ['e1']);
  });

  test('two commits with the same expectedVersion to one stream: exactly one wins', async () => {
    const [a, b] = await Promise.all([
      store.commit([item('task/t1', 0, ['a1'])]),
      store.commit([item('task/t1', 0, ['b1'])]),
    ]);
    const outcomes = [a![0]!, b![0]!];
    assert.is(outcomes.filter((o) => o.ok).length, 1);
    assert.equal(
      outcomes.find((o) => !o.ok),
      { ok: false, reason: 'version_conflict', actualVersion: 1 },
    );
    assert.is((await store.readStream('task/t1')).length, 1);
  });

  test('concurrent commits from many callers in the same tick all succeed with increasing positions', async () => {
    const calls = Array.from({ length: 50 }, (_, i) => store.commit([item(`task/c${i}`, 0, [`e${i}`])]));
    const positions = (await Promise.all(calls)).map((outcomes) => ok(outcomes[0])[0]!);
    for (let i = 1; i < positions.length; i++) assert.ok(positions[i]! > positions[i - 1]!, 'in call order');
    assert.is(await store.headPosition(), positions[positions.length - 1]);
    assert.is(await store.headPosition(T), positions[positions.length - 1]);
    assert.equal(
      (await store.readFeed(0, 100)).map((e) => e.position),
      positions,
    );
  });

  test('refuses a stale epoch with the current epoch, accepts a higher one and raises the stream epoch', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'], { epoch: 3 })]))[0]);
    assert.equal(await store.streamInfo('task/t1'), { version: 1, epoch: 3 });
    assert.equal(await store.commit([item('task/t1', 1, ['e2'], { epoch: 2 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 3 },
    ]);
    ok((await store.commit([item('task/t1', 1, ['e2'], { epoch: 7 })]))[0]);
    assert.equal(await store.streamInfo('task/t1'), { version: 2, epoch: 7 });
    assert.equal(await store.commit([item('task/t1', 2, ['e3'], { epoch: 3 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 7 },
    ]);
    ok((await store.commit([item('task/t1', 2, ['e3'], { epoch: 7 })]))[0]);
    assert.equal(ids(await store.readStream('task/t1')), ['e1', 'e2', 'e3']);
  });

  test('the epoch is checked before the version', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'], { epoch: 3 })]))[0]);
    assert.equal(await store.commit([item('task/t1', 0, ['e2'], { epoch: 1 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 3 },
    ]);
  });

  test('an item without events checks epoch and version, raises the epoch and keeps the version', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'], { epoch: 3 })]))[0]);
    const withTimer = (epoch: number, expectedVersion = 1): CommitItem =>
      item('task/t1', expectedVersion, [], { epoch, scheduleTimers: [timer('task/t1', 'remind', 500)] });
    assert.equal(await store.commit([withTimer(2)]), [{ ok: false, reason: 'stale_epoch', currentEpoch: 3 }]);
    assert.equal(await store.commit([withTimer(4, 0)]), [
      { ok: false, reason: 'version_conflict', actualVersion: 1 },
    ]);
    assert.equal(await store.dueTimers(1_000, 10), []);
    assert.equal(await store.commit([withTimer(4)]), [{ ok: true, positions: [], feedPositions: [] }]);
    assert.equal(await store.streamInfo('task/t1'), { version: 1, epoch: 4 });
    assert.equal((await store.dueTimers(1_000, 10)).map((t) => t.name), ['remind']);
    assert.is(await store.headPosition(), 1);
  });

  test('an event-less item on an unknown stream fences it without listing it', async () => {
    assert.equal(await store.commit([item('task/t1', 0, [], { epoch: 5 })]), [{ ok: true, positions: [], feedPositions: [] }]);
    assert.equal(await store.streamInfo('task/t1'), { version: 0, epoch: 5 });
    assert.equal(await store.listStreams(), []);
    assert.equal(await store.commit([item('task/t1', 0, ['e1'], { epoch: 4 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 5 },
    ]);
  });

  // Fencing epoch claims

  const claim = (stream: string, tenant = T): Promise<number> => {
    const [kind = '', actorId = ''] = stream.split('/');
    return store.claimEpoch(stream, tenant, kind, actorId);
  };

  test('claimEpoch returns 1 for a stream never seen and one more on each claim, per stream', async () => {
    assert.is(await claim('task/t1'), 1);
    assert.is(await claim('task/t1'), 2);
    assert.is(await claim('task/t2'), 1);
    assert.is(await claim('task/t1'), 3);
    assert.equal(await store.streamInfo('task/t1'), { version: 0, epoch: 3 });
    assert.equal(await store.streamInfo('task/t2'), { version: 0, epoch: 1 });
  });

  test('concurrent claims of one stream each get a distinct epoch', async () => {
    const epochs = await Promise.all(Array.from({ length: 20 }, () => claim('task/t1')));
    assert.equal([...epochs].sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.equal(await store.streamInfo('task/t1'), { version: 0, epoch: 20 });
  });

  test('a claim fences a stream without events: an older epoch is refused, the claimed one commits', async () => {
    await claim('task/t1');
    assert.is(await claim('task/t1'), 2);
    assert.equal(await store.commit([item('task/t1', 0, ['e1'], { epoch: 1 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 2 },
    ]);
    assert.equal(await store.readStream('task/t1'), []);
    assert.equal(await store.commit([item('task/t1', 0, ['e2'], { epoch: 2 })]), [
      { ok: true, positions: [1], feedPositions: [1] },
    ]);
    assert.equal(await store.streamInfo('task/t1'), { version: 1, epoch: 2 });
    assert.equal(ids(await store.readStream('task/t1')), ['e2']);
    assert.equal(await store.listStreams(), ['task/t1']);
  });

  test('a claim on a stream with events refuses the previous owner\'s next commit and keeps the version', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'], { epoch: 1 })]))[0]);
    assert.is(await claim('task/t1'), 2);
    assert.equal(await store.streamInfo('task/t1'), { version: 1, epoch: 2 });
    assert.equal(await store.commit([item('task/t1', 1, ['e2'], { epoch: 1 })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 2 },
    ]);
    assert.equal(await store.commit([item('task/t1', 1, [], { epoch: 1, scheduleTimers: [timer('task/t1', 'x', 1)] })]), [
      { ok: false, reason: 'stale_epoch', currentEpoch: 2 },
    ]);
    assert.equal(await store.dueTimers(10, 10), []);
    ok((await store.commit([item('task/t1', 1, ['e3'], { epoch: 2 })]))[0]);
    assert.equal(ids(await store.readStream('task/t1')), ['e1', 'e3']);
  });

  test('claims only grow: a claim after a commit with a higher epoch returns one more than it', async () => {
    assert.is(await claim('task/t1'), 1);
    ok((await store.commit([item('task/t1', 0, ['e1'], { epoch: 7 })]))[0]);
    assert.is(await claim('task/t1'), 8);
    ok((await store.commit([item('task/t1', 1, [], { epoch: 8 })]))[0]);
    assert.equal(await store.streamInfo('task/t1'), { version: 1, epoch: 8 });
    assert.is(await claim('task/t1'), 9);
  });

  test('a claimed stream without events is not listed and has no events, snapshot or positions', async () => {
    await claim('task/empty');
    await claim('agent/a1', 'globex');
    ok((await store.commit([item('task/t1', 0, ['e1'])]))[0]);
    assert.equal(await store.listStreams(), ['task/t1']);
    assert.equal(await store.listStreams('task'), ['task/t1']);
    assert.equal(await store.listStreams('agent'), []);
    assert.equal(await store.streamInfo('task/empty'), { version: 0, epoch: 1 });
    assert.equal(await store.readStream('task/empty'), []);
    assert.is(await store.loadSnapshot('task/empty'), undefined);
    assert.is(await store.headPosition(), 1);
    assert.is(await store.headPosition('globex'), 0);
    assert.equal(ids(await store.readFeed(0, 10)), ['e1']);
  });

  test('refuses an event id that exists anywhere in the store with duplicate_event', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'])]))[0]);
    assert.equal(await store.commit([item('task/t2', 0, ['e2', 'e1'])]), [
      { ok: false, reason: 'duplicate_event', eventId: 'e1' },
    ]);
    assert.equal(await store.readStream('task/t2'), []);
    assert.equal(ids(await store.readFeed(0, 10)), ['e1']);
  });

  test('refuses an item that repeats an event id within itself or within its call', async () => {
    assert.equal(await store.commit([item('task/t1', 0, ['e1', 'e1'])]), [
      { ok: false, reason: 'duplicate_event', eventId: 'e1' },
    ]);
    const outcomes = await store.commit([item('task/t1', 0, ['e2']), item('task/t2', 0, ['e2'])]);
    ok(outcomes[0]);
    assert.equal(outcomes[1], { ok: false, reason: 'duplicate_event', eventId: 'e2' });
    assert.is(await store.headPosition(), 1);
  });

  test('claims an idempotency key once and refuses it afterwards with idempotency_conflict', async () => {
    const claim = { tenant: T, key: 'req-1', requestHash: 'h1', result: { taskId: 't1', list: [1] }, createdAt: 1_000 };
    ok((await store.commit([item('task/t1', 0, ['e1'], { idempotency: claim })]))[0]);
    assert.equal(await store.getIdempotency(T, 'req-1'), claim);
    const again = { ...claim, requestHash: 'h2', result: 'other' };
    assert.equal(await store.commit([item('task/t2', 0, ['e2'], { idempotency: again })]), [
      { ok: false, reason: 'idempotency_conflict', key: 'req-1' },
    ]);
    assert.equal(await store.getIdempotency(T, 'req-1'), claim);
    assert.equal(await store.readStream('task/t2'), []);
    const otherTenant = { ...claim, tenant: 'globex' };
    ok((await store.commit([item('task/t3', 0, ['e3'], { tenant: 'globex', idempotency: otherTenant })]))[0]);
    assert.is(await store.getIdempotency(T, 'req-2'), undefined);
  });

  const failures = {
    version_conflict: { expectedVersion: 0 },
    stale_epoch: { epoch: 4 },
    duplicate_event: { events: [ev('bad-1'), ev('x1')], topics: [['bad-topic'], ['bad-topic']] },
    idempotency_conflict: { idempotency: { tenant: T, key: 'k-old', requestHash: 'h', result: null, createdAt: 2 } },
  } satisfies Record<string, Partial<CommitItem>>;

  for (const [reason, variant] of Object.entries(failures)) {
    test(`a ${reason} item leaves no trace while the other items of its batch land`, async () => {
      // Existing state the bad item would touch: a stream, its snapshot, view, timer, an outbox
      // entry of another stream and an idempotency key.
      (
        await store.commit([
          item('task/x', 0, ['x1'], {
            epoch: 5,
            snapshot: { v: 1 },
            view: view('x'),
            scheduleTimers: [timer('task/x', 'old', 500)],
            idempotency: { tenant: T, key: 'k-old', requestHash: 'h', result: 1, createdAt: 1 },
          }),
          item('task/y', 0, ['y1'], { outbox: [outbox('o-old', 'task/y')] }),
        ])
      ).forEach(ok);
      const bad: CommitItem = {
        ...item('task/x', 1, ['bad-1'], { epoch: 5 }),
        topics: [['bad-topic']],
        snapshot: { v: 'bad' },
        view: view('x', { status: 'bad', version: 2 }),
        scheduleTimers: [timer('task/x', 'bad-timer', 100)],
        cancelTimers: ['old'],
        firedTimers: [{ name: 'old', fireAt: 500 }],
        outbox: [outbox('o-bad', 'task/x')],
        outboxDone: ['o-old'],
        idempotency: { tenant: T, key: 'k-bad', requestHash: 'h', result: null, createdAt: 2 },
        ...variant,
      };
      const good = (id: string): CommitItem =>
        item(`task/${id}`, 0, [`${id}1`], {
          topics: [['bad-topic']],
          view: view(id),
          scheduleTimers: [timer(`task/${id}`, 'good', 700)],
          outbox: [outbox(`o-${id}`, `task/${id}`)],
          idempotency: { tenant: T, key: `k-${id}`, requestHash: 'h', result: id, createdAt: 3 },
        });
      const outcomes = await store.commit([good('a'), bad, good('b')]);
      assert.is(outcomes[1]!.ok ? 'ok' : outcomes[1]!.reason, reason);
      ok(outcomes[0]);
      ok(outcomes[2]);

      assert.equal(ids(await store.readStream('task/x')), ['x1']);
      assert.equal(await store.streamInfo('task/x'), { version: 1, epoch: 5 });
      assert.equal(await store.loadSnapshot('task/x'), { version: 1, state: { v: 1 } });
      assert.equal(await store.getView(T, 'task', 'x'), view('x'));
      assert.equal(ids(await store.readTopic(T, 'bad-topic', 0, 10)), ['a1', 'b1']);
      assert.equal(ids(await store.readFeed(0, 10)), ['x1', 'y1', 'a1', 'b1']);
      const timers = await store.dueTimers(10_000, 10);
      assert.equal(timers.map((t) => `${t.stream}:${t.name}`), ['task/x:old', 'task/a:good', 'task/b:good']);
      assert.equal(ids(await store.pendingOutbox(10)), ['o-old', 'o-a', 'o-b']);
      assert.is(await store.getIdempotency(T, 'k-bad'), undefined);
      assert.equal((await store.getIdempotency(T, 'k-old'))?.result, 1);
      assert.equal((await store.getIdempotency(T, 'k-b'))?.result, 'b');
      assert.equal(ids(await store.getViews(T, 'task', ['a', 'b'])), ['a', 'b']);
    });
  }

  test('a call breaking an invariant (a duplicate outbox id) rejects, writes nothing, spares other calls', async () => {
    ok((await store.commit([item('task/y', 0, ['y1'], { outbox: [outbox('o1', 'task/y')] })]))[0]);
    const [first, broken, last] = await Promise.allSettled([
      store.commit([item('task/a', 0, ['a1'])]),
      store.commit([
        item('task/b', 0, ['b1'], { view: view('b'), outbox: [outbox('o2', 'task/b')] }),
        item('task/c', 0, ['c1'], { outbox: [outbox('o1', 'task/c')] }),
      ]),
      store.commit([item('task/d', 0, ['d1'])]),
    ]);
    assert.is(first!.status, 'fulfilled');
    assert.is(broken!.status, 'rejected');
    assert.is(last!.status, 'fulfilled');
    assert.equal(ids(await store.readFeed(0, 10)), ['y1', 'a1', 'd1']);
    assert.equal(await store.streamInfo('task/b'), { version: 0, epoch: 0 });
    assert.is(await store.getView(T, 'task', 'b'), undefined);
    assert.equal(ids(await store.pendingOutbox(10)), ['o1']);
    assert.equal((await store.pendingOutbox(10))[0]!.source, 'task/y');
  });

  // Snapshots

  test('keeps the latest snapshot at the version after the item', async () => {
    assert.is(await store.loadSnapshot('task/t1'), undefined);
    ok((await store.commit([item('task/t1', 0, ['e1', 'e2'], { snapshot: { state: 'a', n: [1] } })]))[0]);
    assert.equal(await store.loadSnapshot('task/t1'), { version: 2, state: { state: 'a', n: [1] } });
    ok((await store.commit([item('task/t1', 2, ['e3'], { snapshot: { state: 'b' } })]))[0]);
    assert.equal(await store.loadSnapshot('task/t1'), { version: 3, state: { state: 'b' } });
    ok((await store.commit([item('task/t1', 3, ['e4'])]))[0]);
    assert.equal(await store.loadSnapshot('task/t1'), { version: 3, state: { state: 'b' } });
  });

  // Topics and the feed

  test('readTopic returns full events of one tenant topic in position order', async () => {
    await store.commit([
      item('task/t1', 0, ['e1', 'e2', 'e3'], { topics: [['task:t1', 'all'], ['all'], ['task:t1']] }),
      item('task/g1', 0, ['g1'], { tenant: 'globex', topics: [['all']] }),
      item('task/t2', 0, ['e4'], { topics: [['all', 'all']] }),
    ]);
    const all = await store.readTopic(T, 'all', 0, 10);
    assert.equal(ids(all), ['e1', 'e2', 'e4']);
    assert.equal(all[0], (await store.readStream('task/t1'))[0]);
    assert.equal(ids(await store.readTopic(T, 'all', all[0]!.position, 10)), ['e2', 'e4']);
    assert.equal(ids(await store.readTopic(T, 'all', 0, 2)), ['e1', 'e2']);
    assert.equal(ids(await store.readTopic(T, 'task:t1', 0, 10)), ['e1', 'e3']);
    assert.equal(ids(await store.readTopic('globex', 'all', 0, 10)), ['g1']);
    assert.equal(await store.readTopic(T, 'nothing', 0, 10), []);
  });

  test('readFeed and headPosition cover every tenant in position order', async () => {
    assert.is(await store.headPosition(), 0);
    assert.equal(await store.readFeed(0, 10), []);
    await store.commit([item('task/t1', 0, ['e1', 'e2']), item('task/g1', 0, ['g1'], { tenant: 'globex' })]);
    await store.commit([item('task/t1', 2, ['e3'])]);
    const feed = await store.readFeed(0, 10);
    assert.equal(ids(feed), ['e1', 'e2', 'g1', 'e3']);
    assert.equal(feed.map((e) => e.feedPosition), [1, 2, 3, 4]);
    assert.is(feed[2]!.tenant, 'globex');
    assert.equal(ids(await store.readFeed(2, 1)), ['g1']);
    assert.is(await store.headPosition(), 4);
  });

  test('positions count per tenant: another tenant\'s commits leave no gaps and no trace in them', async () => {
    const outcomes = await store.commit([
      item('task/t1', 0, ['e1']),
      item('task/g1', 0, ['g1', 'g2'], { tenant: 'globex', topics: [['all'], ['all']] }),
      item('task/t2', 0, ['e2'], { topics: [['all']] }),
    ]);
    assert.equal(outcomes, [
      { ok: true, positions: [1], feedPositions: [1] },
      { ok: true, positions: [1, 2], feedPositions: [2, 3] },
      { ok: true, positions: [2], feedPositions: [4] },
    ]);
    assert.equal((await store.readStream('task/t2')).map((e) => [e.position, e.feedPosition]), [[2, 4]]);
    assert.equal((await store.readTopic(T, 'all', 1, 10)).map((e) => [e.id, e.position]), [['e2', 2]]);
    assert.equal((await store.readTopic('globex', 'all', 1, 10)).map((e) => [e.id, e.position]), [['g2', 2]]);
    assert.is(await store.headPosition(T), 2);
    assert.is(await store.headPosition('globex'), 2);
    assert.is(await store.headPosition('nobody'), 0);
    assert.is(await store.headPosition(), 4);
  });

  test('listStreams lists streams with events, optionally of one kind', async () => {
    await store.commit([
      item('task/b', 0, ['e1']),
      item('agent/z', 0, ['e2']),
      item('task/a', 0, ['e3']),
      item('task/empty', 0, [], { view: view('empty') }),
    ]);
    assert.equal(await store.listStreams(), ['agent/z', 'task/a', 'task/b']);
    assert.equal(await store.listStreams('task'), ['task/a', 'task/b']);
    assert.equal(await store.listStreams('none'), []);
  });

  // Views

  test('stores, replaces and deletes a view; an item without a view leaves it', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'], { view: view('t1', { owner: 'ann', archived: true }) })]))[0]);
    assert.equal(await store.getView(T, 'task', 't1'), view('t1', { owner: 'ann', archived: true }));
    ok((await store.commit([item('task/t1', 1, ['e2'])]))[0]);
    assert.equal((await store.getView(T, 'task', 't1'))?.owner, 'ann');
    ok((await store.commit([item('task/t1', 2, ['e3'], { view: view('t1', { version: 3, status: 'done' }) })]))[0]);
    assert.equal(await store.getView(T, 'task', 't1'), view('t1', { version: 3, status: 'done' }));
    assert.is(await store.getView('globex', 'task', 't1'), undefined);
    assert.is(await store.getView(T, 'agent', 't1'), undefined);
    ok((await store.commit([item('task/t1', 3, ['e4'], { view: null })]))[0]);
    assert.is(await store.getView(T, 'task', 't1'), undefined);
  });

  test('getViews returns the found rows in the order of the given ids', async () => {
    await seedViews(store, [view('a'), view('b'), view('c'), view('d', { tenant: 'globex' })]);
    assert.equal(ids(await store.getViews(T, 'task', ['c', 'missing', 'a', 'd'])), ['c', 'a']);
    assert.equal(await store.getViews(T, 'task', []), []);
  });

  const fixtureViews = (): ViewRecord[] => [
    view('v1', {
      owner: 'ann', type: 'bug', priority: 'high', parentId: 'p1', createdBy: 'bob', createdAt: 100, updatedAt: 500,
    }),
    view('v2', {
      status: 'done', owner: 'ann', type: 'feature', priority: 'low', createdBy: 'cy', createdAt: 200, updatedAt: 300,
    }),
    view('v3', { createdBy: 'bob', createdAt: 300, updatedAt: 400 }),
    view('v4', { owner: 'ann', type: 'bug', priority: 'high', archived: true, createdAt: 400 }),
    view('v5', { tenant: 'globex', owner: 'ann', createdAt: 500 }),
    view('v6', { kind: 'agent', owner: 'ann', createdAt: 600 }),
  ];

  test('queryViews filters by every given field, newest first, archived rows excluded by default', async () => {
    await seedViews(store, fixtureViews());
    const q = async (query: Parameters<Store['queryViews']>[2]): Promise<string[]> =>
      ids((await store.queryViews(T, 'task', query)).items);
    assert.equal(await q({}), ['v3', 'v2', 'v1']);
    assert.equal(await q({ status: ['open'] }), ['v3', 'v1']);
    assert.equal(await q({ status: ['open', 'done'] }), ['v3', 'v2', 'v1']);
    assert.equal(await q({ status: [] }), []);
    assert.equal(await q({ owner: 'ann' }), ['v2', 'v1']);
    assert.equal(await q({ type: 'bug' }), ['v1']);
    assert.equal(await q({ priority: ['high', 'low'] }), ['v2', 'v1']);
    assert.equal(await q({ parentId: 'p1' }), ['v1']);
    assert.equal(await q({ createdBy: 'bob' }), ['v3', 'v1']);
    assert.equal(await q({ owner: 'ann', status: ['open'], type: 'bug' }), ['v1']);
    assert.equal(await q({ archived: true }), ['v4']);
    assert.equal(await q({ archived: 'any' }), ['v4', 'v3', 'v2', 'v1']);
    assert.equal(await q({ archived: 'any', owner: 'ann', priority: ['high'] }), ['v4', 'v1']);
  });

  test('created and updated bounds are exclusive', async () => {
    await seedViews(store, fixtureViews());
    const q = async (query: Parameters<Store['queryViews']>[2]): Promise<string[]> =>
      ids((await store.queryViews(T, 'task', query)).items);
    assert.equal(await q({ createdAfter: 100 }), ['v3', 'v2']);
    assert.equal(await q({ createdBefore: 300 }), ['v2', 'v1']);
    assert.equal(await q({ createdAfter: 100, createdBefore: 300 }), ['v2']);
    assert.equal(await q({ updatedBefore: 400 }), ['v2']);
    assert.equal(await q({ updatedBefore: 401 }), ['v3', 'v2']);
  });

  test('text search is a case-insensitive substring that takes % and _ literally', async () => {
    await seedViews(store, [
      view('pct', { text: 'fix 100% of bugs', createdAt: 1 }),
      view('num', { text: 'fix 1000 of bugs', createdAt: 2 }),
      view('snake', { text: 'rename snake_case', createdAt: 3 }),
      view('camel', { text: 'rename snakexcase', createdAt: 4 }),
      view('slash', { text: 'a back\\slash', createdAt: 5 }),
    ]);
    const q = async (text: string): Promise<string[]> => ids((await store.queryViews(T, 'task', { text })).items);
    assert.equal(await q('100%'), ['pct']);
    assert.equal(await q('fix 100'), ['num', 'pct']);
    assert.equal(await q('e_c'), ['snake']);
    assert.equal(await q('SNAKE_CASE'), ['snake']);
    assert.equal(await q('SNAKE'), ['camel', 'snake']);
    assert.equal(await q('\\'), ['slash']);
    assert.equal(await q('%'), ['pct']);
    assert.equal(await q('nothing'), []);
    assert.equal((await q('')).length, 5);
  });

  test('paginates across several pages returning every row exactly once in order', async () => {
    // Ties on createdAt make the id the deciding key.
    const rows = Array.from({ length: 23 }, (_, i) =>
      view(`v${String(i).padStart(2, '0')}`, { createdAt: 1_000 + Math.floor(i / 3), status: i % 2 ? 'odd' : 'even' }),
    );
    await seedViews(store, rows);
    const expected = [...rows]
      .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1))
      .map((v) => v.id);
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await store.queryViews(T, 'task', { limit: 5, ...(cursor ? { cursor } : {}) });
      seen.push(...ids(page.items));
      pages++;
      cursor = page.nextCursor ?? undefined;
      if (cursor) assert.is(page.items.length, 5);
    } while (cursor);
    assert.is(pages, 5);
    assert.equal(seen, expected);

    const odd: string[] = [];
    cursor = undefined;
    do {
      const page = await store.queryViews(T, 'task', { status: ['odd'], limit: 4, ...(cursor ? { cursor } : {}) });
      odd.push(...ids(page.items));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    assert.equal(odd, expected.filter((id) => Number(id.slice(1)) % 2 === 1));
  });

  test('the last full page has no nextCursor', async () => {
    await seedViews(store, Array.from({ length: 6 }, (_, i) => view(`v${i}`, { createdAt: i })));
    const first = await store.queryViews(T, 'task', { limit: 3 });
    assert.ok(first.nextCursor);
    assert.type(first.nextCursor, 'string');
    const second = await store.queryViews(T, 'task', { limit: 3, cursor: first.nextCursor! });
    assert.equal(ids(second.items), ['v2', 'v1', 'v0']);
    assert.is(second.nextCursor, null);
  });

  test('limit defaults to 50 and is clamped to 1..1000', async () => {
    await seedViews(store, Array.from({ length: 1_001 }, (_, i) => view(`v${i}`, { createdAt: i })));
    const page = async (limit?: number) => store.queryViews(T, 'task', limit === undefined ? {} : { limit });
    assert.is((await page()).items.length, 50);
    assert.is((await page(0)).items.length, 1);
    assert.is((await page(-5)).items.length, 1);
    assert.is((await page(2.7)).items.length, 2);
    const max = await page(5_000);
    assert.is(max.items.length, 1_000);
    assert.ok(max.nextCursor);
  });

  test('a cursor that does not decode throws invalid cursor', async () => {
    await seedViews(store, [view('a')]);
    const query = (cursor: string) => store.queryViews(T, 'task', { cursor });
    await rejects(query('not a cursor!'), /^invalid cursor/);
    await rejects(query('abc'), /^invalid cursor/);
    await rejects(query(Buffer.from('{"a":1}').toString('base64url')), /^invalid cursor/);
    await rejects(query(Buffer.from('["x","a"]').toString('base64url')), /^invalid cursor/);
  });

  test('statsViews counts matching rows, ignores limit and cursor and skips null keys', async () => {
    await seedViews(store, fixtureViews());
    assert.equal(await store.statsViews(T, 'task', { limit: 1 }), {
      total: 3,
      byStatus: { open: 2, done: 1 },
      byPriority: { high: 1, low: 1 },
      byType: { bug: 1, feature: 1 },
    });
    assert.equal(await store.statsViews(T, 'task', { archived: 'any', owner: 'ann' }), {
      total: 3,
      byStatus: { open: 2, done: 1 },
      byPriority: { high: 2, low: 1 },
      byType: { bug: 2, feature: 1 },
    });
    assert.equal(await store.statsViews('nobody', 'task', {}), { total: 0, byStatus: {}, byPriority: {}, byType: {} });
  });

  // Timers

  /** Every timer as `name@fireAt`, earliest first. */
  const due = async (): Promise<string[]> => (await store.dueTimers(Infinity, 100)).map((t) => `${t.name}@${t.fireAt}`);

  test('schedules timers, replaces one by name and lists due ones earliest first', async () => {
    assert.is(await store.nextTimerAt(), undefined);
    await store.commit([
      item('task/a', 0, ['e1'], { scheduleTimers: [timer('task/a', 'late', 300), timer('task/a', 'early', 100)] }),
      item('task/b', 0, ['e2'], { scheduleTimers: [timer('task/b', 'mid', 200)] }),
    ]);
    assert.equal(await store.dueTimers(250, 10), [timer('task/a', 'early', 100), timer('task/b', 'mid', 200)]);
    assert.equal((await store.dueTimers(1_000, 2)).map((t) => t.name), ['early', 'mid']);
    assert.equal(await store.dueTimers(99, 10), []);
    assert.is(await store.nextTimerAt(), 100);
    await store.commit([item('task/a', 1, [], { scheduleTimers: [timer('task/a', 'early', 400)] })]);
    assert.equal(await due(), ['mid@200', 'late@300', 'early@400']);
    assert.is(await store.nextTimerAt(), 200);
  });

  test('cancels timers by name within the item stream only', async () => {
    await store.commit([
      item('task/a', 0, ['e1'], { scheduleTimers: [timer('task/a', 'x', 100), timer('task/a', 'y', 200)] }),
      item('task/b', 0, ['e2'], { scheduleTimers: [timer('task/b', 'x', 300)] }),
    ]);
    ok((await store.commit([item('task/a', 1, [], { cancelTimers: ['x', 'never'] })]))[0]);
    assert.equal((await store.dueTimers(1_000, 10)).map((t) => `${t.stream}:${t.name}`), ['task/a:y', 'task/b:x']);
  });

  test('deletes a fired timer only if its fireAt is unchanged, and a turn may schedule it again', async () => {
    const both = [timer('task/a', 'x', 100), timer('task/a', 'y', 200)];
    await store.commit([item('task/a', 0, [], { scheduleTimers: both })]);
    await store.commit([item('task/a', 0, [], { scheduleTimers: [timer('task/a', 'x', 150)] })]);
    // The runtime fired x@100, but x was rescheduled meanwhile: it must survive.
    ok((await store.commit([item('task/a', 0, [], { firedTimers: [{ name: 'x', fireAt: 100 }] })]))[0]);
    assert.equal(await due(), ['x@150', 'y@200']);
    ok((await store.commit([item('task/a', 0, [], { firedTimers: [{ name: 'x', fireAt: 150 }] })]))[0]);
    assert.equal(await due(), ['y@200']);
    ok(
      (
        await store.commit([
          item('task/a', 0, [], {
            firedTimers: [{ name: 'y', fireAt: 200 }],
            cancelTimers: ['z'],
            scheduleTimers: [timer('task/a', 'y', 900), timer('task/a', 'z', 950)],
          }),
        ])
      )[0],
    );
    assert.equal(await due(), ['y@900', 'z@950']);
  });

  // Outbox

  test('keeps outbox entries oldest first until consumed by a commit or acknowledged', async () => {
    await store.commit([item('task/a', 0, ['e1'], { outbox: [outbox('o1', 'task/a', 5), outbox('o2', 'task/a', 1)] })]);
    await store.commit([item('task/b', 0, ['e2'], { outbox: [outbox('o3', 'task/b')] })]);
    assert.equal(await store.pendingOutbox(10), [
      outbox('o1', 'task/a', 5),
      outbox('o2', 'task/a', 1),
      outbox('o3', 'task/b'),
    ]);
    assert.equal(ids(await store.pendingOutbox(2)), ['o1', 'o2']);
    ok((await store.commit([item('agent/bot', 0, ['e3'], { outboxDone: ['o1'] })]))[0]);
    assert.equal(ids(await store.pendingOutbox(10)), ['o2', 'o3']);
    await store.ackOutbox(['o2', 'unknown']);
    assert.equal(ids(await store.pendingOutbox(10)), ['o3']);
    await store.ackOutbox([]);
    assert.equal(ids(await store.pendingOutbox(10)), ['o3']);
  });

  // Counters, tenants, API keys

  test('nextCounter starts at 1 and increments atomically per name', async () => {
    assert.is(await store.nextCounter('epoch'), 1);
    assert.is(await store.nextCounter('epoch'), 2);
    assert.is(await store.nextCounter('other'), 1);
    const values = await Promise.all(Array.from({ length: 20 }, () => store.nextCounter('epoch')));
    assert.equal([...values].sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 3));
  });

  test('stores, replaces and lists tenants by id', async () => {
    assert.is(await store.getTenant('acme'), undefined);
    await store.putTenant({ id: 'globex', name: 'Globex', createdAt: 2 });
    await store.putTenant({ id: 'acme', name: 'Acme', createdAt: 1 });
    await store.putTenant({ id: 'acme', name: 'Acme Corp', createdAt: 1 });
    assert.equal(await store.getTenant('acme'), { id: 'acme', name: 'Acme Corp', createdAt: 1 });
    assert.equal(await store.listTenants(), [
      { id: 'acme', name: 'Acme Corp', createdAt: 1 },
      { id: 'globex', name: 'Globex', createdAt: 2 },
    ]);
  });

  test('stores, lists and revokes API keys, keeping the first revocation time', async () => {
    const key = (id: string, tenant: string) => ({
      id, tenant, principal: `p-${id}`, roles: ['agent', 'admin'], secretHash: 'ab'.repeat(32), label: `key ${id}`,
      createdAt: 10, revokedAt: null,
    });
    await store.putApiKey(key('k2', T));
    await store.putApiKey(key('k1', T));
    await store.putApiKey(key('k3', 'globex'));
    assert.equal(await store.getApiKey('k1'), key('k1', T));
    assert.is(await store.getApiKey('nope'), undefined);
    assert.equal(ids(await store.listApiKeys()), ['k1', 'k2', 'k3']);
    assert.equal(ids(await store.listApiKeys(T)), ['k1', 'k2']);
    assert.equal(await store.listApiKeys('nobody'), []);
    assert.is(await store.revokeApiKey('nope', 5), false);
    assert.is(await store.revokeApiKey('k1', 500), true);
    assert.is(await store.revokeApiKey('k1', 900), true);
    assert.equal(await store.getApiKey('k1'), { ...key('k1', T), revokedAt: 500 });
  });

  // The audit trail

  /** Events of tenant acme (and one of globex) by two principals at chosen times. */
  const seedTrail = async (): Promise<void> => {
    const outcomes = await store.commit([
      item('task/t1', 0, [], { events: [act('e1', 'task.create', 1_000, 'ann'), act('e2', 'task.assign', 3_000, 'bob')], topics: [[], []] }),
      item('task/t2', 0, [], { events: [act('e3', 'task.create', 2_000, 'ann')], topics: [[]] }),
      item('agent/a1', 0, [], { events: [act('e4', 'agent.register', 3_000, 'ann')], topics: [[]] }),
      item('task/g1', 0, [], { tenant: 'globex', events: [act('g1', 'task.create', 5_000, 'ann')], topics: [[]] }),
    ]);
    outcomes.forEach(ok);
  };

  test('queryEvents lists a tenant\'s events newest first, by time and then position, as stored', async () => {
    await seedTrail();
    const page = await store.queryEvents(T, {});
    assert.equal(trail(page), ['e4', 'e2', 'e3', 'e1'], 'e4 and e2 share a millisecond: the later position first');
    assert.is(page.nextCursor, null);
    const stored = [...(await store.readStream('task/t1')), ...(await store.readStream('task/t2')), ...(await store.readStream('agent/a1'))];
    for (const entry of page.items) {
      assert.is(entry.outcome, 'accepted');
      if (entry.outcome === 'accepted') assert.equal(entry.event, stored.find((e) => e.id === entry.event.id));
    }
    assert.equal(trail(await store.queryEvents('globex', {})), ['g1']);
    assert.equal(trail(await store.queryEvents('nobody', {})), []);
  });

  test('queryEvents filters by kind, actor, principal, type and a time range that includes from and excludes to', async () => {
    await seedTrail();
    const q = async (query: Parameters<Store['queryEvents']>[1]) => trail(await store.queryEvents(T, query));
    assert.equal(await q({ kind: 'task' }), ['e2', 'e3', 'e1']);
    assert.equal(await q({ kind: 'task', actorId: 't1' }), ['e2', 'e1']);
    assert.equal(await q({ actorId: 'a1' }), ['e4']);
    assert.equal(await q({ principal: 'ann' }), ['e4', 'e3', 'e1']);
    assert.equal(await q({ principal: 'bob' }), ['e2']);
    assert.equal(await q({ type: 'task.create' }), ['e3', 'e1']);
    assert.equal(await q({ principal: 'ann', type: 'task.create', kind: 'task' }), ['e3', 'e1']);
    assert.equal(await q({ from: 2_000 }), ['e4', 'e2', 'e3']);
    assert.equal(await q({ to: 2_000 }), ['e1']);
    assert.equal(await q({ from: 2_000, to: 3_000 }), ['e3']);
    assert.equal(await q({ from: 3_000, to: 3_000 }), []);
    assert.equal(await q({ principal: 'nobody' }), []);
    assert.equal(await q({ outcome: 'accepted' }), ['e4', 'e2', 'e3', 'e1']);
    assert.equal(await q({ outcome: 'refused' }), []);
  });

  test('stores refusal records and lists them as refused among the events, events first within a millisecond', async () => {
    await seedTrail();
    const r1 = refusal('r1', { at: 3_000, lastAt: 3_400, count: 7, actorKind: 'task', actorId: 't1', correlationId: 'c1' });
    const r2 = refusal('r2', { at: 1_500, principal: 'bob', method: 'task.cancel', code: 'RATE_LIMITED', reason: 'slow down' });
    const g = refusal('g', { tenant: 'globex', at: 9_000 });
    await store.appendRefusals([r1, r2, g]);
    const page = await store.queryEvents(T, {});
    assert.equal(trail(page), ['e4', 'e2', '!r1', 'e3', '!r2', 'e1']);
    assert.equal(page.items[2], { outcome: 'refused', refusal: r1 });
    assert.equal(trail(await store.queryEvents(T, { outcome: 'refused' })), ['!r1', '!r2']);
    assert.equal(trail(await store.queryEvents(T, { outcome: 'accepted' })), ['e4', 'e2', 'e3', 'e1']);
    assert.equal(trail(await store.queryEvents('globex', { outcome: 'refused' })), ['!g']);
    const q = async (query: Parameters<Store['queryEvents']>[1]) => trail(await store.queryEvents(T, { outcome: 'refused', ...query }));
    assert.equal(await q({ kind: 'task' }), ['!r1']);
    assert.equal(await q({ actorId: 't1' }), ['!r1']);
    assert.equal(await q({ principal: 'bob' }), ['!r2']);
    assert.equal(await q({ type: 'task.cancel' }), ['!r2']);
    assert.equal(await q({ from: 1_500, to: 3_000 }), ['!r2']);
    assert.equal(await q({ from: 3_000 }), ['!r1']);
    assert.equal(await q({ principal: 'ann' }), []);
    assert.equal(trail(await store.queryEvents(T, { principal: 'bob' })), ['e2', '!r2']);
  });

  test('a refusal record with a stored id merges into it: counts add, lastAt is the later, a different actor is dropped', async () => {
    const first = refusal('r1', { at: 1_000, lastAt: 1_200, count: 3, actorKind: 'task', actorId: 't1', correlationId: 'c1' });
    await store.appendRefusals([first]);
    await store.appendRefusals([refusal('r1', { at: 1_100, lastAt: 1_100, count: 2, actorKind: 'task', actorId: 't1', reason: 'later', correlationId: 'c2' })]);
    const one = async () => (await store.queryEvents(T, {})).items.map((i) => (i.outcome === 'refused' ? i.refusal : null));
    assert.equal(await one(), [{ ...first, count: 5 }], 'the first reason, time and correlation id stay');
    await store.appendRefusals([refusal('r1', { at: 1_300, lastAt: 1_900, count: 1, actorKind: 'task', actorId: 't2' })]);
    assert.equal(await one(), [{ ...first, count: 6, lastAt: 1_900, actorKind: null, actorId: null }]);
    await store.appendRefusals([refusal('r1', { lastAt: 1_000, actorKind: 'task', actorId: 't1' }), refusal('r1', { lastAt: 1_000 })]);
    assert.equal(await one(), [{ ...first, count: 8, lastAt: 1_900, actorKind: null, actorId: null }], 'an actor once dropped stays dropped');
  });

  test('appendRefusals refuses a malformed record and stores none of its call', async () => {
    const bad: [Partial<RefusalRecord>, RegExp][] = [
      [{ count: 0 }, /count/],
      [{ count: 1.5 }, /count/],
      [{ lastAt: 999 }, /lastAt/],
      [{ at: Number.NaN }, /at must/],
      [{ principal: 7 as unknown as string }, /principal/],
      [{ actorId: 3 as unknown as string }, /actorId/],
      [{ id: '' }, /id/],
    ];
    for (const [extra, pattern] of bad) {
      await rejects(store.appendRefusals([refusal('good'), refusal('bad', extra)]), pattern);
    }
    assert.equal(trail(await store.queryEvents(T, {})), []);
    await store.appendRefusals([]);
    assert.equal(trail(await store.queryEvents(T, {})), []);
  });

  test('paginates the audit trail returning every entry exactly once in order, ties included', async () => {
    const events = Array.from({ length: 9 }, (_, i) => act(`e${i}`, i % 2 ? 'task.update' : 'task.create', 1_000 + Math.floor(i / 3) * 100, i % 3 ? 'ann' : 'bob'));
    ok((await store.commit([item('task/t1', 0, [], { events, topics: events.map(() => []) })]))[0]);
    await store.appendRefusals(
      Array.from({ length: 7 }, (_, i) => refusal(`r${i}`, { at: 1_000 + (i % 4) * 100, lastAt: 2_000, principal: i % 2 ? 'ann' : 'bob' })),
    );
    for (const query of [{}, { principal: 'ann' }, { outcome: 'refused' as const }, { outcome: 'accepted' as const }, { from: 1_100, to: 1_300 }]) {
      const whole = trail(await store.queryEvents(T, { ...query, limit: 1000 }));
      for (const size of [1, 2, 3, 5]) assert.equal(await allPages(store, T, query, size), whole, `pages of ${size} of ${JSON.stringify(query)}`);
    }
    const whole = trail(await store.queryEvents(T, { limit: 1000 }));
    assert.is(whole.length, 16);
    assert.equal(whole.slice(0, 7), ['!r3', 'e8', 'e7', 'e6', '!r6', '!r2', 'e5'], 'at 1200: events by position, then refusals by id');
    const full = await store.queryEvents(T, { limit: 16 });
    assert.is(full.nextCursor, null, 'the last full page has no nextCursor');
  });

  test('queryEvents pages default to 50, clamp to 1..1000, and refuse a cursor they did not issue', async () => {
    const events = Array.from({ length: 60 }, (_, i) => act(`e${i}`, 'task.update', 1_000 + i, 'ann'));
    ok((await store.commit([item('task/t1', 0, [], { events, topics: events.map(() => []) })]))[0]);
    assert.is((await store.queryEvents(T, {})).items.length, 50);
    assert.is((await store.queryEvents(T, { limit: 0 })).items.length, 1);
    assert.is((await store.queryEvents(T, { limit: 5_000 })).items.length, 60);
    for (const cursor of ['not a cursor!', 'eyJ4IjoxfQ', Buffer.from(JSON.stringify([1, 'zzz'])).toString('base64url')]) {
      await rejects(store.queryEvents(T, { cursor }), /invalid cursor/);
    }
  });

  // Isolation and lifecycle

  test('callers cannot change stored state through inputs or results', async () => {
    const it = item('task/t1', 0, ['e1'], { view: view('t1'), scheduleTimers: [timer('task/t1', 'x', 1)] });
    const pending = store.commit([it]);
    it.events[0]!.data.mutated = true;
    (it.view as ViewRecord).doc.mutated = true;
    it.scheduleTimers![0]!.event.mutated = true;
    ok((await pending)[0]);
    const [read] = await store.readStream('task/t1');
    assert.equal(read!.data, ev('e1').data);
    read!.data.mutated = true;
    assert.equal((await store.readStream('task/t1'))[0]!.data, ev('e1').data);
    const v = (await store.getView(T, 'task', 't1'))!;
    assert.equal(v.doc, view('t1').doc);
    v.doc.mutated = true;
    assert.equal((await store.getView(T, 'task', 't1'))!.doc, view('t1').doc);
    assert.equal((await store.dueTimers(10, 1))[0]!.event, timer('task/t1', 'x', 1).event);
    const r = refusal('r1');
    const appended = store.appendRefusals([r]);
    r.count = 99;
    await appended;
    const [entry] = (await store.queryEvents(T, { outcome: 'refused' })).items;
    assert.equal(entry, { outcome: 'refused', refusal: refusal('r1') });
    if (entry?.outcome === 'refused') entry.refusal.count = 42;
    assert.equal((await store.queryEvents(T, { outcome: 'refused' })).items[0], { outcome: 'refused', refusal: refusal('r1') });
  });

  test('ping resolves while open', async () => {
    await store.ping();
  });

  test('close is safe to call twice and a commit after it rejects', async () => {
    ok((await store.commit([item('task/t1', 0, ['e1'])]))[0]);
    await store.close();
    await store.close();
    await rejects(store.commit([item('task/t1', 1, ['e2'])]), /closed/);
    await rejects(store.ping(), /closed/);
    await rejects(store.appendRefusals([refusal('r1')]), /closed/);
    await rejects(store.queryEvents(T, {}), /closed/);
    await rejects(store.claimEpoch('task/t1', T, 'task', 't1'), /closed/);
  });

  test.run();
}

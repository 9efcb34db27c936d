import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { CommitItem, Store } from '../../actors/Store.js';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import type { Task } from '../../protocol/model.js';
import { Bulkhead } from '../../src/guard/Bulkhead.js';
import type { AuthedContext } from '../../src/server/App.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { ResilientStore } from '../../src/storage/ResilientStore.js';
import { refusal } from '../helpers/errors.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

/**
 * Fault injection around a real store: every call reaches `inner` unless `mode` says the store
 * fails (rejects like a broken disk) or hangs (never answers until `release`). Commits of the
 * tenant in `holdTenant` wait until `releaseHeld`. `calls` counts the calls that reached the
 * store (succeeding, failing or hanging).
 */
class Faults {
  mode: 'ok' | 'fail' | 'hang' = 'ok';
  calls = 0;
  hanging: (() => void)[] = [];
  holdTenant: string | null = null;
  held: (() => void)[] = [];

  /** Ends every hanging call (with an error) and lets held commits through. */
  release(): void {
    for (const r of this.hanging.splice(0)) r();
    this.releaseHeld();
  }

  releaseHeld(): void {
    this.holdTenant = null;
    for (const r of this.held.splice(0)) r();
  }
}

function faultyStore(inner: Store): { store: Store; faults: Faults } {
  const faults = new Faults();
  const store = new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function' || prop === 'close') return typeof value === 'function' ? value.bind(target) : value;
      return async (...args: unknown[]) => {
        faults.calls++;
        if (faults.mode === 'fail') throw new Error('SQLITE_IOERR: disk I/O error (injected)');
        if (faults.mode === 'hang') {
          await new Promise<void>((_, reject) => faults.hanging.push(() => reject(new Error('released after hanging'))));
        }
        if (prop === 'commit' && faults.holdTenant && (args[0] as CommitItem[]).some((i) => i.tenant === faults.holdTenant)) {
          await new Promise<void>((resolve) => faults.held.push(resolve));
        }
        return value.apply(target, args);
      };
    },
  });
  return { store, faults };
}

async function get(url: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.json() };
}

async function metric(ts: TestServer, name: string, labels = ''): Promise<number | undefined> {
  const text = await (await fetch(`${ts.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

/** Follows concurrent calls: which were refused so far, and a promise of all outcomes. */
function track<T>(calls: Promise<T>[]): { refused: () => ProtocolError[]; settled: Promise<PromiseSettledResult<T>[]> } {
  const refused: ProtocolError[] = [];
  for (const c of calls) c.catch((e: unknown) => refused.push(e as ProtocolError));
  return { refused: () => refused, settled: Promise.allSettled(calls) };
}

/** Calls until a refusal comes from the open breaker; every call on the way must be refused too. */
async function untilOpen(call: () => Promise<unknown>, max = 20): Promise<ProtocolError[]> {
  const seen: ProtocolError[] = [];
  while (seen.length < max) {
    const e = await refusal(call());
    seen.push(e);
    if (e.data.circuit === 'open') return seen;
  }
  throw new Error(`the breaker did not open after ${max} failing calls: ${seen.map((e) => e.reason).join(', ')}`);
}

// ---------------------------------------------------------------------------------------------

const unit = suite('ResilientStore: timeouts, read retries and a circuit breaker around the store');

unit('retries a read that failed, but never a commit or another write, whose outcome is unknown', async () => {
  const { store: inner, faults } = faultyStore(new MemoryStore());
  const store = new ResilientStore(inner, { breakerFailures: 100 });
  await store.putTenant({ id: 'acme', name: 'Acme', createdAt: 1 });

  // Fails once, then answers: the read succeeds on its retry.
  let failuresLeft = 1;
  const flaky = new ResilientStore(
    new Proxy(inner, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver);
        if (prop !== 'getTenant' && prop !== 'nextCounter') return typeof value === 'function' ? value.bind(target) : value;
        return async (...args: unknown[]) => {
          if (failuresLeft-- > 0) throw new Error('connection reset (injected)');
          return value.apply(target, args);
        };
      },
    }),
    { breakerFailures: 100 },
  );
  assert.equal(await flaky.getTenant('acme'), { id: 'acme', name: 'Acme', createdAt: 1 });

  faults.mode = 'fail';
  const before = faults.calls;
  await store.getTenant('acme').catch(() => {});
  const readAttempts = faults.calls - before;
  assert.is(readAttempts, 3, 'a failing read is tried three times in all');

  const commitBefore = faults.calls;
  const item: CommitItem = { stream: 'acme/task/t1', tenant: 'acme', kind: 'task', actorId: 't1', expectedVersion: 0, epoch: 1, events: [], topics: [] };
  const commitError = await store.commit([item]).then(() => null, (e: unknown) => e as Error);
  assert.match(String(commitError?.message), /injected/, 'the store error itself is passed on');
  assert.is(faults.calls - commitBefore, 1, 'a commit is tried once');
  const counterBefore = faults.calls;
  await store.nextCounter('epoch').catch(() => {});
  assert.is(faults.calls - counterBefore, 1, 'other writes are tried once');

  failuresLeft = 1;
  await flaky.nextCounter('x').then(
    () => assert.unreachable('a failed write is not retried'),
    (e: Error) => assert.match(e.message, /connection reset/),
  );
});

unit('forwards methods the port gains later, behind the breaker and the timeout but without retries', async () => {
  class ExtendedStore extends MemoryStore {
    archived: string[] = [];
    failNext = false;
    async archiveStream(stream: string): Promise<number> {
      if (this.failNext) {
        this.failNext = false;
        throw new Error('archive failed (injected)');
      }
      this.archived.push(stream);
      return this.archived.length;
    }
    async hangs(): Promise<void> {
      await new Promise(() => {});
    }
  }
  const inner = new ExtendedStore();
  const store = new ResilientStore(inner, { writeTimeoutMs: 50 }) as unknown as ResilientStore & ExtendedStore;
  assert.is(await store.archiveStream('acme/task/t1'), 1);
  assert.equal(inner.archived, ['acme/task/t1'], 'called on the inner store, with its own `this`');
  inner.failNext = true;
  await store.archiveStream('acme/task/t2').then(
    () => assert.unreachable('not retried'),
    (e: Error) => assert.match(e.message, /archive failed/),
  );
  assert.equal(inner.archived, ['acme/task/t1']);
  const timedOut = await refusal(store.hangs(), ErrorCodes.UNAVAILABLE);
  assert.is(timedOut.data.timeoutMs, 50);
  assert.match(timedOut.message, /did not answer hangs within 50 ms/);
  // Plain properties and the guard's own members both read through.
  assert.ok('archiveStream' in store && 'circuit' in store);
  assert.equal(store.circuit, { state: 'closed' });
  assert.ok(store instanceof ResilientStore);
});

unit('an open breaker refuses every call at once without reaching the store, and a successful trial call closes it', async () => {
  const { store: inner, faults } = faultyStore(new MemoryStore());
  const changes: string[] = [];
  const store = new ResilientStore(inner, { breakerFailures: 3, halfOpenAfterMs: 100, readRetries: 0, onStateChange: (c) => changes.push(c.state) });
  faults.mode = 'fail';
  for (let i = 0; i < 3; i++) await store.getTenant('acme').catch(() => {});
  assert.is(store.circuit.state, 'open');
  assert.match(String(store.circuit.lastFailure), /injected/);
  assert.is(store.circuitGauge, 1);

  const reached = faults.calls;
  for (const call of [() => store.getView('acme', 'task', 't1'), () => store.commit([]), () => store.ping()]) {
    const e = await refusal(call(), ErrorCodes.UNAVAILABLE);
    assert.is(e.data.circuit, 'open');
    const retryAfterMs = e.data.retryAfterMs as number;
    assert.ok(retryAfterMs > 0 && retryAfterMs <= 100, `retryAfterMs ${retryAfterMs}`);
    assert.match(e.message, /The store is unavailable: 3 calls in a row failed \(last: SQLITE_IOERR: disk I\/O error \(injected\)\)/);
  }
  assert.is(faults.calls, reached, 'nothing reached the store while the breaker was open');

  faults.mode = 'ok';
  await waitFor(async () => (await store.ping().then(() => true, () => false)));
  assert.equal(store.circuit, { state: 'closed' });
  assert.is(store.circuitGauge, 0);
  assert.equal(changes, ['open', 'half-open', 'closed']);
});

unit('errors about the input, such as a cursor it did not issue, do not count as store failures', async () => {
  const store = new ResilientStore(new MemoryStore(), { breakerFailures: 2 });
  for (let i = 0; i < 5; i++) {
    await store.queryViews('acme', 'task', { cursor: 'AAAA' }).then(
      () => assert.unreachable('a bad cursor is refused'),
      (e: Error) => assert.match(e.message, /^invalid cursor/),
    );
  }
  assert.equal(store.circuit, { state: 'closed' });
});

unit.run();

// ---------------------------------------------------------------------------------------------

interface ServerCtx {
  ts: TestServer;
  faults: Faults;
  dir: { dir: string; remove: () => void };
  lead: TroupeClient;
}

const server = suite<ServerCtx>('resilience: a failing store opens the breaker, and the server recovers with it');

server.before.each(async (ctx) => {
  ctx.dir = tempDir();
  const { store, faults } = faultyStore(sqliteStore(ctx.dir.dir));
  ctx.faults = faults;
  ctx.ts = await startServer({ store, storeBreakerFailures: 3, storeBreakerHalfOpenMs: 1000, storeTimeoutMs: 200 });
  ctx.lead = await ctx.ts.client('acme', 'lead', ['admin']);
});

server.after.each(async (ctx) => {
  ctx.faults.mode = 'ok';
  ctx.faults.release();
  await ctx.ts.close();
  ctx.dir.remove();
});

server('calls fail fast with UNAVAILABLE while the store fails, /readyz says 503 with the breaker, and all works again once it recovers', async (ctx) => {
  const { lead, faults, ts } = ctx;
  const before = await lead.call('task.create', { type: 'review', title: 'Before' });
  assert.is(await metric(ts, 'troupe_breaker_state', 'dependency="store"'), 0);

  faults.mode = 'fail';
  const onTheWay = await untilOpen(() => lead.call('task.create', { type: 'review', title: 'During' }));
  for (const e of onTheWay.slice(0, -1)) {
    assert.ok(e.reason === 'INTERNAL' || e.reason === 'UNAVAILABLE', `${e.reason}: ${e.message}`);
    // A commit that reached the failing store may or may not have been applied, and says so.
    if (e.reason === 'UNAVAILABLE') assert.is(e.data.outcome, 'unknown', e.message);
  }

  // Open: refused at once, with a retry hint, and the store is not asked.
  const reached = faults.calls;
  for (const call of [
    () => lead.call('task.create', { type: 'review', title: 'During' }),
    () => lead.call('task.search', {}),
    () => lead.call('task.update', { taskId: before.id, title: 'Renamed' }),
  ]) {
    const e = await refusal(call(), ErrorCodes.UNAVAILABLE);
    assert.is(e.data.circuit, 'open', e.message);
    assert.is(e.data.outcome, undefined, 'a refused commit was not attempted, so its outcome is known');
    const retryAfterMs = e.data.retryAfterMs as number;
    assert.ok(retryAfterMs > 0 && retryAfterMs <= 1000, `retryAfterMs ${retryAfterMs}`);
    assert.match(e.message, /store is unavailable/);
  }
  const ready = await get(`${ts.httpUrl}/readyz`);
  assert.is(ready.status, 503);
  assert.is(ready.body.status, 'unavailable');
  assert.match(ready.body.store, /store is unavailable/);
  assert.is(ready.body.breaker.state, 'open');
  assert.type(ready.body.breaker.retryAfterMs, 'number');
  assert.match(ready.body.breaker.lastFailure, /injected/);
  assert.is(faults.calls, reached, 'no call reached the store while the breaker was open');
  assert.is(await metric(ts, 'troupe_breaker_state', 'dependency="store"'), 1);
  assert.is((await get(`${ts.httpUrl}/healthz`)).status, 200, 'the process is alive all along');

  // The store recovers: the next trial call (a readiness probe will do) closes the breaker.
  faults.mode = 'ok';
  await waitFor(async () => (await get(`${ts.httpUrl}/readyz`)).status === 200, { timeoutMs: 5000, intervalMs: 50 });
  assert.equal((await get(`${ts.httpUrl}/readyz`)).body, { status: 'ready', store: 'ok' });
  assert.is(await metric(ts, 'troupe_breaker_state', 'dependency="store"'), 0);
  const after = await lead.call('task.create', { type: 'review', title: 'After' });
  const renamed = await lead.call('task.update', { taskId: before.id, title: 'Renamed' });
  assert.is(renamed.version, before.version + 1, 'no refused update was applied');
  const titles = (await lead.call('task.search', {})).items.map((t) => t.title).sort();
  assert.equal(titles, ['After', 'Renamed'], 'nothing written while the store failed');
  assert.is((await lead.call('task.get', { taskId: after.id })).title, 'After');
});

server('a store that hangs: calls end with UNAVAILABLE at the timeout instead of waiting, and the breaker opens', async (ctx) => {
  const { lead, faults, ts } = ctx;
  const created = await lead.call('task.create', { type: 'review', title: 'Before' });
  faults.mode = 'hang';
  const first = await refusal(lead.call('task.search', {}), ErrorCodes.UNAVAILABLE);
  assert.is(first.data.timeoutMs, 200);
  assert.match(first.message, /did not answer \w+ within 200 ms/);
  assert.ok(faults.hanging.length > 0, 'answered while the store call is still hanging');

  await untilOpen(() => lead.call('task.search', {}));
  const hung = faults.hanging.length;
  const e = await refusal(lead.call('task.update', { taskId: created.id, title: 'Renamed' }), ErrorCodes.UNAVAILABLE);
  assert.is(e.data.circuit, 'open');
  assert.is(faults.hanging.length, hung, 'an open breaker does not add to the hanging calls');
  assert.is((await get(`${ts.httpUrl}/readyz`)).status, 503);

  faults.mode = 'ok';
  faults.release();
  await waitFor(async () => (await get(`${ts.httpUrl}/readyz`)).status === 200, { timeoutMs: 5000, intervalMs: 50 });
  const renamed = await lead.call('task.update', { taskId: created.id, title: 'Renamed' });
  assert.is(renamed.version, created.version + 1);
});

server('bounds one actor\'s mailbox over the wire: a flood of updates to one task gets BUSY, and every accepted update is applied in order', async (ctx) => {
  await ctx.ts.close();
  const { store, faults } = faultyStore(sqliteStore(ctx.dir.dir));
  ctx.faults = faults;
  ctx.ts = await startServer({ store, maxMailbox: 3 });
  const lead = await ctx.ts.client('acme', 'lead', ['admin']);
  const task = await lead.call('task.create', { type: 'review', title: 'Title 0' });

  faults.holdTenant = 'acme';
  const calls = track(Array.from({ length: 12 }, (_, i) => lead.call('task.update', { taskId: task.id, title: `Title ${i + 1}` })));
  // One update is held at its commit and three wait; the rest are refused while it is held.
  await waitFor(() => faults.held.length === 1 && calls.refused().length === 8);
  assert.is(faults.held.length, 1);
  for (const e of calls.refused()) {
    assert.is(e.code, ErrorCodes.BUSY);
    assert.is(e.data.kind, 'task');
    assert.is(e.data.id, task.id);
    assert.type(e.data.retryAfterMs, 'number');
    assert.match(e.message, new RegExp(`task ${task.id} has 3 messages waiting`));
  }
  faults.releaseHeld();

  const results = await calls.settled;
  const accepted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value as Task] : []));
  assert.is(accepted.length, 4);
  assert.equal(accepted.map((t) => t.version).sort(), [2, 3, 4, 5]);
  const timeline = await lead.call('task.timeline', { taskId: task.id });
  const updates = timeline.items.filter((e) => e.type === 'task.update');
  assert.equal(
    updates.map((e) => e.version),
    [2, 3, 4, 5],
  );
  // Each accepted update is stored at the version its answer gave, and the last one wins.
  const byVersion = new Map(accepted.map((t) => [t.version, t.title]));
  for (const e of updates) assert.is((e.data as { changes: { title: string } }).changes.title, byVersion.get(e.version));
  const now = await lead.call('task.get', { taskId: task.id });
  assert.equal([now.version, now.title], [5, byVersion.get(5)]);
  assert.is(await metric(ctx.ts, 'troupe_busy_total', 'limit="mailbox"'), 8);
});

server.run();

// ---------------------------------------------------------------------------------------------

const bulkheadUnit = suite('Bulkhead: a compartment per tenant');

function ctxOf(tenant: string): AuthedContext {
  return { principal: { tenantId: tenant, principalId: 'p', roles: ['admin'] } } as unknown as AuthedContext;
}

bulkheadUnit('admits `limit` calls at once, queues `queue` more in order, and refuses the rest with BUSY', async () => {
  const refusedFor: string[] = [];
  const b = new Bulkhead({ limit: 2, queue: 2, retryAfterMs: 50, onRefused: (t) => refusedFor.push(t) });
  const running = [await b.beforeCall(ctxOf('a')), await b.beforeCall(ctxOf('a'))];
  const order: number[] = [];
  const queued = [b.beforeCall(ctxOf('a')).then((r) => (order.push(1), r)), b.beforeCall(ctxOf('a')).then((r) => (order.push(2), r))];
  const e = await refusal(b.beforeCall(ctxOf('a')), ErrorCodes.BUSY);
  assert.equal(e.data, { retryAfterMs: 50, limit: 2, queue: 2 });
  assert.match(e.message, /already has 2 calls running and 2 waiting/);
  assert.equal(refusedFor, ['a']);

  // Another tenant has its own compartment.
  const other = await b.beforeCall(ctxOf('b'));
  assert.is(b.activeTenants, 2);
  other();
  other();

  running[0]!();
  running[0]!(); // a second release does nothing
  const first = await queued[0]!;
  assert.equal(order, [1], 'one slot freed, one waiting call admitted');
  running[1]!();
  const second = await queued[1]!;
  assert.equal(order, [1, 2]);
  first();
  second();
  await waitFor(() => b.activeTenants === 0);
});

bulkheadUnit.run();

const isolation = suite<ServerCtx>('resilience: one tenant flooding the server cannot make another tenant\'s calls fail');

isolation.before(async (ctx) => {
  ctx.dir = tempDir();
  const { store, faults } = faultyStore(sqliteStore(ctx.dir.dir));
  ctx.faults = faults;
  ctx.ts = await startServer({ store, tenantConcurrency: 2, tenantQueue: 2 });
});

isolation.after(async (ctx) => {
  ctx.faults.release();
  await ctx.ts.close();
  ctx.dir.remove();
});

isolation('a flooding tenant fills only its own compartment and gets BUSY; the other tenant is served meanwhile', async (ctx) => {
  const { ts, faults } = ctx;
  const flooder = await ts.client('flood', 'lead', ['admin']);
  const quiet = await ts.client('quiet', 'lead', ['admin']);
  faults.holdTenant = 'flood';
  const flood = track(Array.from({ length: 20 }, (_, i) => flooder.call('task.create', { type: 'review', title: `Flood ${i}` })));
  // Two of its calls are held at their commits, two wait for a slot, sixteen are refused.
  await waitFor(() => faults.held.length === 2 && flood.refused().length === 16);
  for (const e of flood.refused()) {
    assert.is(e.code, ErrorCodes.BUSY);
    assert.type(e.data.retryAfterMs, 'number');
  }

  // Meanwhile the other tenant works normally, within its own share, concurrently too.
  for (let i = 0; i < 5; i++) await quiet.call('task.create', { type: 'review', title: `Quiet ${i}` });
  await Promise.all([quiet.call('task.search', {}), quiet.call('task.create', { type: 'review', title: 'Quiet 5' })]);
  assert.is((await quiet.call('task.search', {})).items.length, 6);

  faults.releaseHeld();
  const results = await flood.settled;
  const created = results.filter((r) => r.status === 'fulfilled').length;
  assert.is(created, 4, 'the calls it had running or waiting completed');
  assert.is((await flooder.call('task.search', {})).items.length, 4, 'refused calls created nothing');
  assert.is(await metric(ts, 'troupe_busy_total', 'limit="tenant"'), 16);
  // Its compartment is free again.
  await flooder.call('task.create', { type: 'review', title: 'After the flood' });
});

isolation.run();

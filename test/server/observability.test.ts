import { AsyncLocalStorage } from 'node:async_hooks';
import {
  ROOT_CONTEXT,
  context,
  trace,
  type Context,
  type ContextManager,
  type Span,
  type SpanOptions,
  type Tracer,
  type TracerProvider,
} from '@opentelemetry/api';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { loadConfig } from '../../src/config.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { TRACED_STORE_READS, traceStoreReads, tracingRegistered } from '../../src/observability/spans.js';
import { startRedis } from '../helpers/redis.js';
import { startServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

/** A finished or running span as the test's tracer provider records it. */
class RecordedSpan {
  attributes: Record<string, unknown>;
  status: { code: number; message?: string } | null = null;
  ended = false;
  exceptions: unknown[] = [];
  constructor(
    readonly name: string,
    opts: SpanOptions,
    readonly parent: RecordedSpan | undefined,
  ) {
    this.attributes = { ...opts.attributes };
  }
  spanContext() {
    return { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: 1 };
  }
  setAttribute(key: string, value: unknown): this {
    this.attributes[key] = value;
    return this;
  }
  setAttributes(attrs: Record<string, unknown>): this {
    Object.assign(this.attributes, attrs);
    return this;
  }
  setStatus(status: { code: number; message?: string }): this {
    this.status = status;
    return this;
  }
  recordException(e: unknown): void {
    this.exceptions.push(e);
  }
  end(): void {
    this.ended = true;
  }
  isRecording(): boolean {
    return !this.ended;
  }
}

/**
 * A tracer provider implementing the OpenTelemetry API (the SDK's packages declare a peer range of
 * the API that excludes the 1.10 this project uses), recording spans with their parents.
 */
function recordingProvider(spans: RecordedSpan[]): TracerProvider {
  const tracer = {
    startSpan(name: string, opts: SpanOptions = {}, ctx: Context = context.active()): Span {
      const span = new RecordedSpan(name, opts, trace.getSpan(ctx) as unknown as RecordedSpan | undefined);
      spans.push(span);
      return span as unknown as Span;
    },
    startActiveSpan(name: string, ...args: unknown[]): unknown {
      const fn = args[args.length - 1] as (span: Span) => unknown;
      const opts = (args.length > 1 ? args[0] : {}) as SpanOptions;
      const span = tracer.startSpan(name, opts);
      return context.with(trace.setSpan(context.active(), span), fn, undefined, span);
    },
  };
  return { getTracer: () => tracer as unknown as Tracer };
}

/** The context manager the Node SDK registers, in a few lines: the active context follows async calls. */
class AsyncContextManager implements ContextManager {
  #storage = new AsyncLocalStorage<Context>();
  active(): Context {
    return this.#storage.getStore() ?? ROOT_CONTEXT;
  }
  with<A extends unknown[], F extends (...args: A) => ReturnType<F>>(ctx: Context, fn: F, thisArg?: ThisParameterType<F>, ...args: A): ReturnType<F> {
    return this.#storage.run(ctx, () => fn.call(thisArg, ...args));
  }
  bind<T>(ctx: Context, target: T): T {
    if (typeof target !== 'function') return target;
    const run = (...args: unknown[]) => this.with(ctx, target as (...a: unknown[]) => unknown, undefined, ...args);
    return run as T;
  }
  enable(): this {
    return this;
  }
  disable(): this {
    this.#storage.disable();
    return this;
  }
}

const spans = suite('observability: spans around store reads, no-ops without a tracer provider');

spans('wraps nothing and costs nothing when no tracer provider is registered', () => {
  assert.is(tracingRegistered(), false);
  const store = new MemoryStore();
  assert.is(traceStoreReads(store), store, 'the very same store');
});

spans('records a store.read span per actor activation and a store.<method> span per read, each under the call that caused it', async () => {
  const recorded: RecordedSpan[] = [];
  assert.ok(trace.setGlobalTracerProvider(recordingProvider(recorded)), 'no other provider is registered');
  assert.ok(context.setGlobalContextManager(new AsyncContextManager()), 'no other context manager is registered');
  try {
    assert.is(tracingRegistered(), true);
    let taskId = '';
    const ts = await startServer();
    try {
      const lead = await ts.client('sp', 'lead', ['admin']);
      const t = await lead.call('task.create', { type: 'traced', title: 'read me back' });
      taskId = t.id;
      await lead.call('task.get', { taskId: t.id });
      await lead.call('task.search', { status: ['pending'] });
      await ts.server.host.passivateIdle(Number.POSITIVE_INFINITY);
      await lead.call('task.cancel', { taskId: t.id, reason: 'done reading' });
    } finally {
      await ts.close();
    }
    const rpc = (method: string) => recorded.find((s) => s.name === `rpc ${method}`)!;
    const under = (parent: RecordedSpan) => recorded.filter((s) => s.parent === parent).map((s) => s.name);
    assert.ok(recorded.every((s) => s.ended), 'every span ended');

    assert.ok(under(rpc('task.get')).includes('store.getView'), `task.get: ${under(rpc('task.get'))}`);
    const getView = recorded.find((s) => s.name === 'store.getView' && s.parent === rpc('task.get'))!;
    assert.equal(getView.attributes, { method: 'getView', tenant: 'sp', kind: 'task' });
    assert.ok(under(rpc('task.search')).includes('store.queryViews'), `task.search: ${under(rpc('task.search'))}`);

    // The task was unloaded, so cancelling it read it back from the store first.
    const read = recorded.find((s) => s.name === 'store.read' && s.parent === rpc('task.cancel'));
    assert.ok(read, `task.cancel: ${under(rpc('task.cancel'))}`);
    assert.is(read!.attributes.stream, `sp/task/${taskId}`);
    assert.equal({ snapshotVersion: read!.attributes.snapshotVersion, events: read!.attributes.events }, { snapshotVersion: 0, events: 1 });
    assert.equal(under(read!), ['store.loadSnapshot', 'store.readStream']);
    assert.ok(under(rpc('task.cancel')).includes('store.commit'));
    // A freshly created task is not read: its id is new, so the store holds nothing of it.
    assert.not.ok(under(rpc('task.create')).includes('store.read'));
    // Background polls (timers, outbox) make no spans.
    assert.not.ok(recorded.some((s) => s.name === 'store.dueTimers' || s.name === 'store.pendingOutbox'));
  } finally {
    trace.disable();
    context.disable();
  }
});

spans('marks a failed read as an error with the exception, and passes the failure on', async () => {
  const recorded: RecordedSpan[] = [];
  trace.setGlobalTracerProvider(recordingProvider(recorded));
  try {
    const store = new MemoryStore();
    const traced = traceStoreReads(store);
    assert.is.not(traced, store);
    const failed = await traced.queryEvents('t', { cursor: 'not-a-cursor' }).then(() => null, (e: Error) => e);
    assert.match(String(failed?.message), /invalid cursor/);
    const [span] = recorded;
    assert.is(span!.name, 'store.queryEvents');
    assert.is(span!.status?.code, 2);
    assert.is(span!.exceptions.length, 1);
    assert.ok(span!.ended);
    // Writes and polls pass through untouched; other members still work on the proxy.
    await traced.putTenant({ id: 't', name: 't', createdAt: 0 });
    assert.is((await traced.getTenant('t'))?.id, 't');
    assert.equal(
      recorded.map((s) => s.name),
      ['store.queryEvents', 'store.getTenant'],
    );
    assert.ok(TRACED_STORE_READS.every((m) => typeof (traced as unknown as Record<string, unknown>)[m] === 'function'));
  } finally {
    trace.disable();
  }
});

spans.run();

const ready = suite('observability: /readyz reports Redis when rate limits use it');

async function readyz(httpUrl: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${httpUrl}/readyz`);
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

ready('says redis ok, then stays ready (200) but degraded while Redis is down, and ok again once it is back', async () => {
  const redis = await startRedis();
  const ts = await startServer({ redisUrl: redis.url });
  try {
    const up = await waitFor(async () => {
      const r = await readyz(ts.httpUrl);
      return r.body.redis === 'ok' ? r : null;
    });
    assert.equal(up, { status: 200, body: { status: 'ready', store: 'ok', redis: 'ok' } });
    await redis.stop();
    const down = await waitFor(async () => {
      const r = await readyz(ts.httpUrl);
      return r.body.redis === 'unavailable' ? r : null;
    });
    assert.equal(down, { status: 200, body: { status: 'degraded', store: 'ok', redis: 'unavailable', rateLimits: 'memory-fallback' } });
    // Calls are still served (rate limits fall back to this node's memory).
    const lead = await ts.client('rz', 'lead', ['admin']);
    assert.is((await lead.call('task.create', { type: 'x', title: 'still served' })).status, 'pending');
    await redis.restart();
    await waitFor(async () => (await readyz(ts.httpUrl)).body.status === 'ready', { timeoutMs: 10_000 });
    assert.equal(await readyz(ts.httpUrl), { status: 200, body: { status: 'ready', store: 'ok', redis: 'ok' } });
  } finally {
    await ts.close();
    await redis.stop();
  }
});

ready('says nothing of Redis when none is configured', async () => {
  const ts = await startServer();
  try {
    assert.equal(await readyz(ts.httpUrl), { status: 200, body: { status: 'ready', store: 'ok' } });
  } finally {
    await ts.close();
  }
});

ready('reports Redis next to a failing store, which alone makes the node unready', async () => {
  const redis = await startRedis();
  const store = new (class extends MemoryStore {
    down = false;
    override async ping(): Promise<void> {
      if (this.down) throw new Error('disk on fire');
    }
  })();
  const ts = await startServer({ store, redisUrl: redis.url, storeBreakerFailures: 100 });
  try {
    await waitFor(async () => (await readyz(ts.httpUrl)).body.redis === 'ok');
    store.down = true;
    assert.equal(await readyz(ts.httpUrl), { status: 503, body: { status: 'unavailable', store: 'disk on fire', redis: 'ok' } });
  } finally {
    store.down = false;
    await ts.close();
    await redis.stop();
  }
});

ready.run();

const config = suite('observability: TROUPE_STATELY_INSPECT_URL');

config('is read as a ws:// or wss:// URL, and anything else is refused with the variable named', () => {
  assert.is(loadConfig([], { TROUPE_STATELY_INSPECT_URL: 'ws://127.0.0.1:8080' }).statelyInspectUrl, 'ws://127.0.0.1:8080');
  assert.is(loadConfig([], { TROUPE_STATELY_INSPECT_URL: 'wss://inspect.example.com/x' }).statelyInspectUrl, 'wss://inspect.example.com/x');
  assert.is(loadConfig([], { TROUPE_STATELY_INSPECT_URL: '' }).statelyInspectUrl, undefined);
  for (const bad of ['http://127.0.0.1:8080', '127.0.0.1:8080', 'ws://', 'ws://a b', 'ws://[::1', `ws://${'x'.repeat(10)}\n`]) {
    assert.throws(() => loadConfig([], { TROUPE_STATELY_INSPECT_URL: bad }), /TROUPE_STATELY_INSPECT_URL must be a ws:\/\/ or wss:\/\/ URL/, bad);
  }
});

config.run();

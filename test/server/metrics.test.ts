import { trace, type Span, type SpanOptions, type Tracer, type TracerProvider } from '@opentelemetry/api';
import { pino } from 'pino';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';
import { refusal } from '../helpers/errors.js';

async function scrape(ts: TestServer): Promise<{ text: string; contentType: string }> {
  const res = await fetch(`${ts.httpUrl}/metrics`);
  assert.is(res.status, 200);
  return { text: await res.text(), contentType: res.headers.get('content-type') ?? '' };
}

/** The value of one sample, `name{labels} value`, or undefined when it is absent. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const head = labels ? `${name}{${labels}} ` : `${name} `;
  const line = text.split('\n').find((l) => l.startsWith(head));
  return line === undefined ? undefined : Number(line.slice(head.length));
}

async function metric(ts: TestServer, name: string, labels = ''): Promise<number | undefined> {
  return sample((await scrape(ts)).text, name, labels);
}


const test = suite('metrics: /metrics counts messages, errors, actors, commits, timers and overflows');

test('counts messages, errors and latency by catalogue method, never by client-sent names', async () => {
  const ts = await startServer();
  try {
    const lead = await ts.client('m', 'lead', ['admin']);
    for (let i = 0; i < 3; i++) await lead.call('task.create', { type: 'metered', title: `task ${i}` });
    const refused = await refusal(lead.call('task.get', { taskId: '00000000-0000-4000-8000-000000000000' }));

    const raw = await RawSocket.open(ts.url, await ts.key('m', 'raw', ['admin']));
    const bogus = Array.from({ length: 50 }, (_, i) => `bogus.zz${i}q${Math.random().toString(36).slice(2, 8)}`);
    for (const name of bogus) {
      const r = await raw.call(name);
      assert.is(r.error?.data?.reason, 'METHOD_NOT_FOUND');
    }

    const { text, contentType } = await scrape(ts);
    assert.match(contentType, /^text\/plain/);
    assert.is(sample(text, 'troupe_messages_total', 'method="task.create"'), 3);
    assert.is(sample(text, 'troupe_handler_duration_seconds_count', 'method="task.create"'), 3);
    assert.is(sample(text, 'troupe_messages_total', 'method="task.get"'), 1);
    assert.is(sample(text, 'troupe_errors_total', `method="task.get",code="${refused.reason}"`), 1);
    assert.is(sample(text, 'troupe_errors_total', 'method="task.create",code="NOT_FOUND"'), undefined);
    assert.is(sample(text, 'troupe_messages_total', 'method="unknown"'), 50);
    assert.is(sample(text, 'troupe_errors_total', 'method="unknown",code="METHOD_NOT_FOUND"'), 50);
    for (const name of bogus) assert.not.ok(text.includes(name), `${name} must not become a label value`);
    assert.not.ok(text.includes('bogus'));

    assert.is(sample(text, 'troupe_connections'), 2);
    assert.ok((sample(text, 'troupe_actors_active', 'kind="task"') ?? 0) > 0, 'tasks are in memory');
    assert.ok((sample(text, 'troupe_store_commit_duration_seconds_count') ?? 0) > 0, 'commits are timed');
    assert.is(sample(text, 'troupe_mailbox_depth'), 0);
    assert.not.ok(text.includes('process_cpu_user_seconds_total'), 'Node process metrics are off by default');

    await raw.close();
    await waitFor(async () => (await metric(ts, 'troupe_connections')) === 1);
  } finally {
    await ts.close();
  }
});

test('two servers in one process keep separate registries, process metrics only where asked for', async () => {
  const a = await startServer({ processMetrics: true });
  const b = await startServer();
  try {
    const c = await a.client('x', 'lead', ['admin']);
    await c.call('task.create', { type: 'x', title: 'only on a' });
    assert.is(await metric(a, 'troupe_messages_total', 'method="task.create"'), 1);
    assert.is(await metric(b, 'troupe_messages_total', 'method="task.create"'), undefined);
    const text = async (s: typeof a) => (await fetch(`${s.httpUrl}/metrics`)).text();
    assert.ok((await text(a)).includes('process_cpu_user_seconds_total'));
    assert.not.ok((await text(b)).includes('process_cpu_user_seconds_total'));
  } finally {
    await a.close();
    await b.close();
  }
});

test('observes timer lag when a retry timer fires', async () => {
  const ts = await startServer();
  try {
    const lead = await ts.client('tl', 'lead', ['admin']);
    const w1 = await ts.client('tl', 'w1', ['agent']);
    await w1.call('agent.register', { capabilities: ['go'] });
    assert.is(await metric(ts, 'troupe_timer_lag_seconds_count'), 0);
    const t = await lead.call('task.create', { type: 'auto', title: 'retry me', assignTo: 'w1', maxRetries: 1, retryBackoffMs: 20 });
    await w1.call('task.accept', { taskId: t.id });
    await w1.call('task.start', { taskId: t.id });
    await w1.call('task.fail', { taskId: t.id, error: 'transient' });
    await waitFor(async () => (await lead.call('task.get', { taskId: t.id })).status === 'pending');
    await waitFor(async () => ((await metric(ts, 'troupe_timer_lag_seconds_count')) ?? 0) >= 1);
  } finally {
    await ts.close();
  }
});

test('counts a subscription dropped for overflow', async () => {
  const ts = await startServer({ maxBufferedBytes: 64 * 1024 });
  try {
    const producer = await ts.client('slow', 'producer', ['admin']);
    const raw = await RawSocket.open(ts.url, await ts.key('slow', 'reader', ['admin']));
    await raw.ok('subscribe', { topic: 'tenant' });
    assert.is(await metric(ts, 'troupe_subscription_overflows_total'), 0);
    // Stop reading: the server's send buffer for this socket fills up.
    const socket = (raw.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    socket.pause();
    const blob = 'x'.repeat(100_000);
    for (let i = 0; i < 200 && ts.server.app.hub.size > 0; i++) {
      await producer.call('task.create', { type: 'flood', title: `flood ${i}`, parameters: { blob } });
    }
    assert.is(ts.server.app.hub.size, 0, 'the slow subscription was dropped');
    assert.is(await metric(ts, 'troupe_subscription_overflows_total'), 1);
    socket.resume();
    await raw.close();
  } finally {
    await ts.close();
  }
});

test('/ lists /metrics', async () => {
  const ts = await startServer();
  try {
    const body = (await (await fetch(`${ts.httpUrl}/`)).json()) as { endpoints: string[] };
    assert.ok(body.endpoints.includes('/metrics'));
  } finally {
    await ts.close();
  }
});

test.run();

/** A recorded span: just what the server uses of the OpenTelemetry span API. */
class RecordedSpan {
  attributes: Record<string, unknown>;
  status: { code: number; message?: string } | null = null;
  ended = false;
  constructor(
    readonly name: string,
    opts: SpanOptions,
  ) {
    this.attributes = { ...opts.attributes };
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
  recordException(): void {}
  end(): void {
    this.ended = true;
  }
  isRecording(): boolean {
    return !this.ended;
  }
}

/** An in-memory tracer provider, enough to see which spans the server makes. */
function memoryProvider(spans: RecordedSpan[]): TracerProvider {
  const tracer = {
    startSpan(name: string, opts: SpanOptions = {}): Span {
      const span = new RecordedSpan(name, opts);
      spans.push(span);
      return span as unknown as Span;
    },
    startActiveSpan(name: string, ...args: unknown[]): unknown {
      const fn = args[args.length - 1] as (span: Span) => unknown;
      const opts = (args.length > 1 ? args[0] : {}) as SpanOptions;
      return fn(tracer.startSpan(name, opts));
    },
  };
  return { getTracer: () => tracer as unknown as Tracer };
}

const tracing = suite('metrics: an OpenTelemetry span per message and per store commit');

tracing('records rpc spans with method, tenant, principal and outcome, and store.commit spans', async () => {
  const spans: RecordedSpan[] = [];
  assert.ok(trace.setGlobalTracerProvider(memoryProvider(spans)), 'no other provider is registered');
  try {
    const ts = await startServer();
    try {
      const lead = await ts.client('tr', 'lead', ['admin']);
      await lead.call('task.create', { type: 'traced', title: 'traced' });
      await refusal(lead.call('task.get', { taskId: '00000000-0000-4000-8000-000000000000' }));
      const raw = await RawSocket.open(ts.url, await ts.key('tr', 'raw', ['admin']));
      await raw.call('no.such.method');
      await raw.close();
    } finally {
      await ts.close();
    }
    const rpc = spans.filter((s) => s.name.startsWith('rpc '));
    assert.equal(
      rpc.map((s) => s.name),
      ['rpc task.create', 'rpc task.get', 'rpc unknown'],
    );
    assert.ok(rpc.every((s) => s.ended));
    assert.equal(rpc[0]!.attributes, { method: 'task.create', outcome: 'ok', tenant: 'tr', principal: 'lead' });
    assert.is(rpc[1]!.attributes.outcome, 'NOT_FOUND');
    assert.is(rpc[1]!.status?.code, 2, 'a refusal marks the span as an error');
    assert.equal(rpc[2]!.attributes, { method: 'unknown', outcome: 'METHOD_NOT_FOUND', tenant: 'tr', principal: 'raw' });
    const commits = spans.filter((s) => s.name === 'store.commit');
    assert.ok(commits.length >= 1, 'the task creation was committed inside a span');
    assert.ok(commits.every((s) => s.ended));
  } finally {
    trace.disable();
  }
});

tracing.run();

const logging = suite('metrics: per-message logs carry the connection, method and correlation id');

logging('logs handling at debug and refusals at warn, with the same bindings', async () => {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const ts = await startServer({ logger });
  try {
    const raw = await RawSocket.open(ts.url, await ts.key('lg', 'lead', ['admin']));
    await raw.call('task.get', { taskId: '00000000-0000-4000-8000-000000000000' }, 'req-7');
    await raw.close();
  } finally {
    await ts.close();
  }
  const mine = lines.filter((l) => l.method === 'task.get');
  assert.equal(
    mine.map((l) => [l.level, l.msg]),
    [
      [20, 'handling'],
      [40, mine[1]?.msg],
    ],
  );
  assert.match(String(mine[1]!.msg), /^refused: /);
  assert.is(mine[1]!.reason, 'NOT_FOUND');
  for (const l of mine) {
    assert.type(l.conn, 'string');
    assert.type(l.correlationId, 'string');
    assert.ok(String(l.correlationId).includes('req-7'), String(l.correlationId));
  }
  assert.not.ok(lines.some((l) => l.level === 30 && l.method !== undefined), 'nothing per message at info');
});

logging.run();

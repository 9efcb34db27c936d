import http from 'node:http';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { ErrorCodes } from '../../protocol/errors.js';
import { MethodSchemas } from '../../protocol/methods.js';
import { TaskStatuses } from '../../protocol/model.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

/** A store whose ping can be made to fail or to wait. */
class ProbeStore extends MemoryStore {
  failWith: string | null = null;
  hold: Promise<void> | null = null;
  pings = 0;
  override async ping(): Promise<void> {
    this.pings++;
    if (this.hold) await this.hold;
    if (this.failWith) throw new Error(this.failWith);
    return super.ping();
  }
}

interface Ctx {
  ts: TestServer;
  store: ProbeStore;
}

const test = suite<Ctx>('http: health, readiness, machines, protocol and refusals');

test.before(async (ctx) => {
  ctx.store = new ProbeStore();
  ctx.ts = await startServer({ store: ctx.store });
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

async function get(url: string, init: RequestInit = {}): Promise<{ status: number; type: string | null; body: any }> {
  const res = await fetch(url, init);
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type'), body: text ? JSON.parse(text) : null };
}

test('answers /healthz with 200', async (ctx) => {
  const r = await get(`${ctx.ts.httpUrl}/healthz`);
  assert.equal([r.status, r.type, r.body], [200, 'application/json', { status: 'ok' }]);
});

test('answers /readyz with 200 while the store answers, and 503 saying why when it does not', async (ctx) => {
  const ok = await get(`${ctx.ts.httpUrl}/readyz`);
  assert.equal([ok.status, ok.body], [200, { status: 'ready', store: 'ok' }]);
  const pings = ctx.store.pings;
  ctx.store.failWith = 'disk on fire';
  try {
    const bad = await get(`${ctx.ts.httpUrl}/readyz`);
    assert.is(bad.status, 503);
    assert.equal(bad.body, { status: 'unavailable', store: 'disk on fire' });
    assert.ok(ctx.store.pings > pings, 'readiness asks the store each time');
    // Liveness does not depend on the store.
    assert.is((await get(`${ctx.ts.httpUrl}/healthz`)).status, 200);
  } finally {
    ctx.store.failWith = null;
  }
  assert.is((await get(`${ctx.ts.httpUrl}/readyz`)).status, 200, 'ready again once the store answers');
});

test('never reports ready once close has started', async () => {
  const store = new ProbeStore();
  const ts = await startServer({ store });
  let release!: () => void;
  store.hold = new Promise<void>((r) => (release = r));
  // A probe already inside the handler when the close starts…
  const inFlight = get(`${ts.httpUrl}/readyz`).then((r) => r.status, () => 'connection closed');
  await waitFor(() => store.pings > 0);
  const closing = ts.server.close();
  release();
  const status = await inFlight;
  assert.ok(status === 503 || status === 'connection closed', `got ${status}`);
  // …and new probes are refused outright.
  const after = await get(`${ts.httpUrl}/readyz`).then((r) => r.status, () => 'refused');
  assert.is(after, 'refused');
  await closing;
});

test('serves every machine definition with its states at /machines', async (ctx) => {
  const r = await get(`${ctx.ts.httpUrl}/machines`);
  assert.is(r.status, 200);
  assert.ok(r.body.task && r.body.agent, `task and agent machines: ${Object.keys(r.body)}`);
  for (const [kind, m] of Object.entries<any>(r.body)) assert.is(m.id, kind, `${kind} is a machine definition`);
  const states = (node: any): string[] =>
    Object.entries(node.states ?? {}).flatMap(([k, v]) => [k, ...states(v)]);
  const task = states(r.body.task);
  for (const s of TaskStatuses) assert.ok(task.includes(s), `task state ${s}`);
  assert.is(r.body.task.id, 'task');
  assert.ok(r.body.task.states.live.states.pending.on['task.assign'], 'transitions are included');
  assert.equal(states(r.body.agent).sort(), ['deregistered', 'registered', 'unregistered']);
});

test('serves the protocol at /protocol.json with a params schema for every method and the error codes', async (ctx) => {
  const r = await get(`${ctx.ts.httpUrl}/protocol.json`);
  assert.is(r.status, 200);
  assert.equal(Object.keys(r.body.methods).sort(), Object.keys(MethodSchemas).sort());
  for (const [name, m] of Object.entries<any>(r.body.methods)) {
    assert.type(m.description, 'string', name);
    assert.ok(m.description.length > 0, name);
    assert.is(m.params.type, 'object', `${name} params is an object schema`);
    assert.is(m.params.additionalProperties, false, `${name} refuses unknown params`);
  }
  assert.equal(r.body.methods['task.create'].params.required.sort(), ['title', 'type']);
  assert.equal(r.body.errors, ErrorCodes);
  assert.type(r.body.version, 'string');
  assert.ok(r.body.notifications['subscription.event']);
  assert.is(r.body.transport.websocket, '/v1');
});

test('answers unknown paths with 404 and other methods with 405', async (ctx) => {
  const missing = await get(`${ctx.ts.httpUrl}/nope`);
  assert.is(missing.status, 404);
  assert.match(missing.body.error, /\/nope/);
  assert.is((await get(`${ctx.ts.httpUrl}/v1`)).status, 404, 'a plain GET of /v1 is not an upgrade');
  for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
    const r = await get(`${ctx.ts.httpUrl}/healthz`, { method, body: method === 'DELETE' ? undefined : '{}' });
    assert.is(r.status, 405, method);
    assert.match(r.body.error, /GET/);
  }
  const head = await fetch(`${ctx.ts.httpUrl}/healthz`, { method: 'HEAD' });
  assert.is(head.status, 200);
  const root = await get(`${ctx.ts.httpUrl}/`);
  assert.is(root.body.websocket, '/v1');
});

test('refuses a WebSocket upgrade on any path but /v1 and /sync', async (ctx) => {
  const key = await ctx.ts.key('acme', 'lead', ['admin']);
  const base = ctx.ts.url.replace(/\/v1$/, '');
  for (const p of ['/', '/v2', '/v1/extra', '/V1', '/healthz']) {
    const status = await new Promise<number | string>((resolve) => {
      const ws = new WebSocket(`${base}${p}`, { headers: { authorization: `Bearer ${key}` } });
      ws.on('unexpected-response', (_req, res: http.IncomingMessage) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on('open', () => {
        resolve('open');
        ws.close();
      });
      ws.on('error', (e) => resolve(`error: ${e.message}`));
    });
    assert.is(status, 404, `upgrade on ${p}`);
  }
  // A query string is fine; the path is what counts.
  const ok = await RawSocket.open(`${ctx.ts.url}?client=test`, key);
  assert.ok((await ok.call('ping')).result);
  await ok.close();
  await waitFor(() => ctx.ts.server.connectionCount === 0);
});

test.run();

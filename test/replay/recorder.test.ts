import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import WebSocket from 'ws';
import { connect } from '../../protocol/client.js';
import { isProtocolError } from '../../protocol/errors.js';
import type { ActorEvent } from '../../protocol/model.js';
import { recordCommand } from '../../src/replay/cli.js';
import { parseFixture, type Json } from '../../src/replay/fixture.js';
import { match } from '../../src/replay/matchers.js';
import { fixtureFromTranscript, recordSession, type TranscriptEntry } from '../../src/replay/recorder.js';
import { runFixture } from '../../src/replay/runner.js';
import { startServer, tempDir } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

const recorder = suite('recorder');

recorder('records a live task lifecycle as a fixture that passes against a fresh server', async () => {
  const upstream = await startServer();
  try {
    const key = await upstream.key('acme', 'lead', ['admin']);
    const rec = await recordSession({ url: upstream.url, key, name: 'a recorded lifecycle' });
    assert.equal(rec.principal, { tenantId: 'acme', principalId: 'lead', roles: ['admin'] });

    const client = await connect(rec.proxyUrl, { reconnect: false });
    const events: { event: ActorEvent; position: number }[] = [];
    await client.call('agent.register', { capabilities: ['review'] });
    await client.subscribe('inbox:lead', (event, position) => events.push({ event, position }));
    const task = await client.call('task.create', { type: 'review', title: 'Review PR 7', assignTo: 'lead', idempotencyKey: 'pr-7' });
    await client.call('task.accept', { taskId: task.id, expectedVersion: 1 });
    await client.call('task.start', { taskId: task.id });
    await client.call('task.progress', { taskId: task.id, percent: 40, message: '$ signs are escaped' });
    await client.call('task.complete', { taskId: task.id, result: { approved: true } });
    const refused = await client.call('task.cancel', { taskId: task.id }).catch((e: unknown) => e);
    assert.ok(isProtocolError(refused, 'ILLEGAL_TRANSITION'));
    await waitFor(() => events.length === 5);
    // Resuming from a recorded position: the position must become a capture and a ref.
    const replayed: number[] = [];
    await client.subscribe('inbox:lead', (e) => replayed.push(e.version), { fromPosition: events[2]!.position });
    await waitFor(() => replayed.length === 2);
    await client.call('task.get', { taskId: task.id });
    await client.close();
    await rec.finished;

    const fixture = await rec.stop();
    const json = JSON.stringify(fixture);
    assert.not.match(json, key);
    assert.not.match(json, task.id);
    assert.match(json, '"$capture:task"');
    assert.match(json, '"$ref:task"');
    assert.match(json, '"$timestamp"');
    assert.match(json, '"$capture:position"');
    assert.match(json, '"fromPosition":"$ref:position"');
    assert.match(json, '"message":"$$ signs are escaped"');
    assert.equal(fixture.clients, { client: { tenant: 'acme', principal: 'lead', roles: ['admin'] } });
    assert.is(fixture.name, 'a recorded lifecycle');

    const checked = parseFixture(JSON.parse(json), 'recorded');
    const result = await runFixture(checked);
    assert.is(result.steps, fixture.steps.length);
  } finally {
    await upstream.close();
  }
});

recorder('refuses a key the server does not accept', async () => {
  const upstream = await startServer();
  try {
    const err = await recordSession({ url: upstream.url, key: 'trp_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB' }).catch((e: Error) => e);
    assert.instance(err, Error);
    assert.match((err as Error).message, upstream.url);
  } finally {
    await upstream.close();
  }
});

recorder('troupe record writes the fixture when the client disconnects', async () => {
  const upstream = await startServer();
  const { dir, remove } = tempDir('troupe-record-');
  try {
    const key = await upstream.key('acme', 'bot', ['agent']);
    const file = path.join(dir, 'ping.json');
    let out = '';
    let proxyUrl: (url: string) => void;
    const announced = new Promise<string>((resolve) => (proxyUrl = resolve));
    const done = recordCommand(['--url', upstream.url, '--key', key, '--out', file, '--name', 'ping through the recorder'], (s) => {
      out += s;
      const m = /connect your client to (ws:\/\/\S+)/.exec(s);
      if (m) proxyUrl(m[1]!);
    });
    const ws = new WebSocket(await announced);
    const replies: string[] = [];
    ws.on('message', (d) => replies.push(d.toString()));
    await new Promise((resolve) => ws.once('open', resolve));
    ws.send('{"jsonrpc":"2.0","id":1,"method":"ping"}');
    ws.send('not json');
    await waitFor(() => replies.length === 2);
    ws.close();
    assert.is(await done, 0);
    assert.match(out, 'recording as bot@acme (agent)');
    assert.match(out, `wrote ${file}: 1 client(s), 4 steps`);
    const fixture = parseFixture(JSON.parse(fs.readFileSync(file, 'utf8')));
    assert.equal(fixture.steps.slice(0, 2), [
      { client: 'client', send: { jsonrpc: '2.0', id: 1, method: 'ping' } },
      { client: 'client', sendRaw: 'not json' },
    ]);
    // Pipelined requests are answered as they finish, in either order.
    const expects = fixture.steps.slice(2);
    assert.is(expects.length, 2);
    const has = (pattern: Json) => expects.some((s) => match(pattern, s, new Map()).ok);
    assert.ok(has({ client: 'client', expect: { jsonrpc: '2.0', id: 1, result: { pong: true, time: '$$timestamp' } } }));
    assert.ok(has({ client: 'client', expect: { jsonrpc: '2.0', id: null, error: { code: -32700, message: '$string', data: { reason: 'PARSE_ERROR' } } } }));
    await runFixture(fixture);
  } finally {
    remove();
    await upstream.close();
  }
});

recorder.run();

const generalise = suite('fixtureFromTranscript');

const principal = { tenantId: 'acme', principalId: 'lead', roles: ['admin' as const] };
const id = '0b7e6a52-4f0e-4a4b-9d43-5e0f7c1d2a3b';
const at = '2025-01-31T12:00:00.000Z';

generalise('captures a generated id where it first arrives and refers to it where it is sent back', () => {
  const t: TranscriptEntry[] = [
    { type: 'connect', client: 'client', at: 0 },
    { type: 'send', client: 'client', at: 1, data: { jsonrpc: '2.0', id: 1, method: 'task.create', params: { title: 'x' } }, raw: '' },
    { type: 'receive', client: 'client', at: 2, data: { jsonrpc: '2.0', id: 1, result: { id, createdAt: at, title: 'x' } } },
    { type: 'send', client: 'client', at: 3, data: { jsonrpc: '2.0', id: 2, method: 'task.get', params: { taskId: id } }, raw: '' },
    { type: 'receive', client: 'client', at: 4, data: { jsonrpc: '2.0', id: 2, result: { id, note: `task ${id} at ${at}` } } },
    { type: 'disconnect', client: 'client', at: 5 },
  ];
  const f = fixtureFromTranscript(t, principal, { name: 'n' });
  assert.equal(f.steps, [
    { client: 'client', send: { jsonrpc: '2.0', id: 1, method: 'task.create', params: { title: 'x' } } },
    { client: 'client', expect: { jsonrpc: '2.0', id: 1, result: { id: '$capture:task', createdAt: '$timestamp', title: 'x' } } },
    { client: 'client', send: { jsonrpc: '2.0', id: 2, method: 'task.get', params: { taskId: '$ref:task' } } },
    { client: 'client', expect: { jsonrpc: '2.0', id: 2, result: { id: '$ref:task', note: '$string' } } },
  ]);
});

generalise('keeps values the client chose itself, hides the token and escapes $ strings', () => {
  const t: TranscriptEntry[] = [
    { type: 'connect', client: 'client', at: 0 },
    { type: 'send', client: 'client', at: 1, data: { jsonrpc: '2.0', id: 1, method: 'session.authenticate', params: { token: 'trp_secret' } }, raw: '' },
    { type: 'send', client: 'client', at: 2, data: { jsonrpc: '2.0', id: 2, method: 'x', params: { key: id, price: '$5' } }, raw: '' },
    { type: 'receive', client: 'client', at: 3, data: { jsonrpc: '2.0', id: 2, result: { key: id, price: '$5' } } },
  ];
  const f = fixtureFromTranscript(t, principal, { key: 'trp_secret' });
  assert.equal(f.steps, [
    { client: 'client', send: { jsonrpc: '2.0', id: 1, method: 'session.authenticate', params: { token: '$ref:token.client' } } },
    { client: 'client', send: { jsonrpc: '2.0', id: 2, method: 'x', params: { key: id, price: '$$5' } } },
    { client: 'client', expect: { jsonrpc: '2.0', id: 2, result: { key: id, price: '$$5' } } },
  ]);
});

generalise('declares later connections as clients that connect in a step, and gives slow replies a timeout', () => {
  const t: TranscriptEntry[] = [
    { type: 'connect', client: 'client', at: 0 },
    { type: 'connect', client: 'client2', at: 1 },
    { type: 'send', client: 'client2', at: 2, data: { jsonrpc: '2.0', id: 1, method: 'ping' }, raw: '' },
    { type: 'receive', client: 'client2', at: 9002, data: { jsonrpc: '2.0', id: 1, result: { pong: true } } },
    { type: 'disconnect', client: 'client2', at: 9003 },
    { type: 'closed', client: 'client', at: 9004, code: 4001 },
  ];
  const f = fixtureFromTranscript(t, principal);
  assert.equal(f.clients.client2, { tenant: 'acme', principal: 'lead', roles: ['admin'], connect: false });
  assert.equal(f.steps, [
    { client: 'client2', connect: true },
    { client: 'client2', send: { jsonrpc: '2.0', id: 1, method: 'ping' } },
    { client: 'client2', expect: { jsonrpc: '2.0', id: 1, result: { pong: true } }, timeoutMs: 18000 },
    { client: 'client2', disconnect: true },
    { client: 'client', expectClose: { code: 4001 } },
  ]);
});

generalise.run();

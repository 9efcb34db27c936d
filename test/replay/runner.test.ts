import fs from 'node:fs';
import path from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runCli } from '../../src/cli.js';
import { replayCommand } from '../../src/replay/cli.js';
import { FixtureError, parseFixture, type Fixture } from '../../src/replay/fixture.js';
import { ReplayFailure, runFixture } from '../../src/replay/runner.js';
import { tempDir } from '../helpers/server.js';

const lead = { tenant: 'acme', principal: 'lead', roles: ['admin'] };

function fixture(steps: unknown[], extra: Record<string, unknown> = {}): Fixture {
  return parseFixture({ name: 'a deliberately wrong fixture', clients: { lead }, steps, ...extra });
}

async function failure(f: Fixture): Promise<ReplayFailure> {
  try {
    await runFixture(f);
  } catch (e) {
    assert.instance(e, ReplayFailure);
    return e as ReplayFailure;
  }
  assert.unreachable('the fixture passed');
  throw new Error('unreachable');
}

const failing = suite('a failing fixture');

failing('names the step, the expected pattern, every unmatched message and where the closest one differs', async () => {
  const e = await failure(
    fixture([
      { client: 'lead', send: { jsonrpc: '2.0', id: 1, method: 'task.create', params: { type: 'review', title: 'Review PR 7' } } },
      { client: 'lead', send: { jsonrpc: '2.0', id: 2, method: 'ping' } },
      { client: 'lead', expect: { id: 1, result: { status: 'assigned', title: 'Review PR 7' } }, timeoutMs: 200 },
    ]),
  );
  assert.is(e.stepIndex, 2);
  assert.equal(e.step, { client: 'lead', expect: { id: 1, result: { status: 'assigned', title: 'Review PR 7' } }, timeoutMs: 200 });
  const m = e.message;
  assert.match(m, 'steps[2] failed: no matching message for lead within 200 ms');
  assert.match(m, 'step: {"client":"lead","expect":{"id":1,"result":{"status":"assigned","title":"Review PR 7"}},"timeoutMs":200}');
  assert.match(m, 'expected:\n    {\n      "id": 1,');
  assert.match(m, 'received by lead and not matched (2):');
  assert.match(m, '"status": "pending"');
  assert.match(m, '"pong": true');
  assert.match(m, /closest is \[\d\]; it differs at:\n {4}\$\.result\.status: expected "assigned", got string "pending"/);
});

failing('says when nothing at all was received', async () => {
  const e = await failure(fixture([{ client: 'lead', expect: { id: 1 }, timeoutMs: 50 }]));
  assert.is(e.stepIndex, 0);
  assert.match(e.message, 'received by lead and not matched: nothing');
});

failing('fails at once when the connection is closed and no message can arrive', async () => {
  const started = Date.now();
  const e = await failure(fixture([{ client: 'lead', disconnect: true }, { client: 'lead', expect: { id: 1 }, timeoutMs: 60_000 }]));
  assert.ok(Date.now() - started < 10_000);
  assert.match(e.message, 'none can arrive: the connection was closed with 1000');
});

failing('an expectNone that sees a matching message shows it', async () => {
  const e = await failure(
    fixture([
      { client: 'lead', send: { jsonrpc: '2.0', id: 7, method: 'ping' } },
      { client: 'lead', expectNone: { id: 7 }, withinMs: 2000 },
    ]),
  );
  assert.is(e.stepIndex, 1);
  assert.match(e.message, 'a message matching the pattern reached lead within 2000 ms');
  assert.match(e.message, '"pong": true');
});

failing('an expectClose with another code reports the real one', async () => {
  const e = await failure(fixture([{ client: 'lead', disconnect: true }, { client: 'lead', expectClose: { code: 4001 } }]));
  assert.match(e.message, 'closed with code 1000');
});

failing('sending on a closed connection says how to reconnect', async () => {
  const e = await failure(fixture([{ client: 'lead', disconnect: true }, { client: 'lead', send: { jsonrpc: '2.0', id: 1, method: 'ping' } }]));
  assert.match(e.message, 'client lead is not connected');
  assert.match(e.message, '{ "client": "lead", "connect": true }');
});

failing.run();

const validation = suite('fixture validation');

validation('a malformed fixture is refused with the path of every problem', () => {
  try {
    parseFixture(
      {
        name: '',
        clients: { lead, bad: { tenant: 'ACME', principal: 'x', roles: ['root'] } },
        steps: [{ client: 'lead', sned: {} }],
      },
      'broken.json',
    );
  } catch (e) {
    assert.instance(e, FixtureError);
    // Shape errors are reported first; fix those and the step errors follow.
    assert.match((e as Error).message, 'broken.json is not a valid replay fixture:');
    assert.match((e as Error).message, '- name: ');
    assert.match((e as Error).message, '- clients.bad.tenant: must be 1-64 characters');
    assert.match((e as Error).message, '- clients.bad.roles[0]: ');
    return;
  }
  assert.unreachable('the fixture was accepted');
});

validation('step problems name the step index and what is wrong', () => {
  try {
    parseFixture({
      name: 'steps',
      clients: { lead },
      steps: [
        { client: 'lead', sned: {} },
        { client: 'ghost', send: { jsonrpc: '2.0', id: 1, method: 'ping' } },
        { client: 'lead', send: { jsonrpc: '2.0', id: 1, method: 'ping' }, expect: {} },
        { client: 'lead', expect: { result: { id: '$uuids' } } },
        { client: 'lead', send: { params: { taskId: '$ref:task' } } },
        { client: 'lead', expectNone: {} },
        { restart: 'yes' },
        { client: 'lead', expect: { id: '$capture:task' } },
        { client: 'lead', send: { params: { taskId: '$ref:task', token: '$ref:token.lead' } } },
      ],
    });
  } catch (e) {
    const issues = (e as FixtureError).issues;
    assert.equal(issues.length, 7, issues.join('\n'));
    assert.match(issues[0]!, /^steps\[0\]: unknown step; a step has exactly one of send, sendRaw/);
    assert.match(issues[1]!, /^steps\[1\]\.client: "ghost" is not declared in "clients" \(declared: lead\)/);
    assert.match(issues[2]!, /^steps\[2\]: a step has exactly one of .*, this one has send and expect/);
    assert.match(issues[3]!, /^steps\[3\]\.expect\.result\.id: unknown matcher "\$uuids"/);
    assert.match(issues[4]!, /^steps\[4\]\.send\.params\.taskId: "\$ref:task" is not captured by an earlier expect step/);
    assert.match(issues[5]!, /^steps\[5\]\.withinMs: /);
    assert.match(issues[6]!, /^steps\[6\]\.restart: /);
    return;
  }
  assert.unreachable('the fixture was accepted');
});

validation('accepts every step kind and the server block', () => {
  const f = parseFixture({
    name: 'all steps',
    description: 'every kind once',
    server: { maxFrameBytes: 4096, authGraceMs: 1000 },
    clients: { lead: { ...lead, connect: false, auth: 'message' } },
    steps: [
      { client: 'lead', connect: true, comment: 'first' },
      { client: 'lead', send: [{ jsonrpc: '2.0', id: 1, method: 'ping' }] },
      { client: 'lead', sendRaw: '{' },
      { client: 'lead', expect: { id: '$capture:x' }, timeoutMs: 10 },
      { client: 'lead', expectNone: { id: '$ref:x' }, withinMs: 10 },
      { sleep: 1 },
      { restart: true },
      { client: 'lead', disconnect: true },
      { client: 'lead', expectClose: { code: 1000, reason: '$string' }, timeoutMs: 10 },
    ],
  });
  assert.is(f.steps.length, 9);
});

validation.run();

const cli = suite('troupe replay');

cli('prints ok and FAIL lines and a summary, and exits 1 on any failure', async () => {
  const { dir, remove } = tempDir('troupe-replay-cli-');
  try {
    const pass = { name: 'ping answers', clients: { lead }, steps: [{ client: 'lead', send: { jsonrpc: '2.0', id: 1, method: 'ping' } }, { client: 'lead', expect: { id: 1, result: { pong: true } } }] };
    const fail = { ...pass, name: 'ping answers false', steps: [pass.steps[0], { client: 'lead', expect: { id: 1, result: { pong: false } }, timeoutMs: 50 }] };
    fs.writeFileSync(path.join(dir, 'a-pass.json'), JSON.stringify(pass));
    fs.writeFileSync(path.join(dir, 'b-fail.json'), JSON.stringify(fail));
    fs.writeFileSync(path.join(dir, 'c-broken.json'), '{ "name": ');
    let out = '';
    const code = await replayCommand([dir], (s) => (out += s));
    assert.is(code, 1);
    const lines = out.split('\n');
    assert.is(lines[0], 'ok  ping answers');
    assert.is(lines[1], 'FAIL ping answers false');
    assert.match(out, `  ${path.join(dir, 'b-fail.json')}: steps[1] failed`);
    assert.match(out, `FAIL ${path.join(dir, 'c-broken.json')}\n  ${path.join(dir, 'c-broken.json')} is not a valid replay fixture:\n    - the file is not valid JSON`);
    assert.is(lines.at(-2), '1 passed, 2 failed');

    out = '';
    assert.is(await runCli(['replay', path.join(dir, 'a-pass.json'), '--timeout', '1000'], (s) => (out += s)), 0);
    assert.is(out, 'ok  ping answers\n1 passed, 0 failed\n');
  } finally {
    remove();
  }
});

cli('exits 2 on a usage error', async () => {
  let out = '';
  assert.is(await replayCommand([], (s) => (out += s)), 2);
  assert.match(out, 'name at least one fixture file');
  assert.is(await replayCommand(['--timeout', 'soon', 'x.json'], (s) => (out += s)), 2);
  assert.is(await replayCommand(['--frobnicate'], (s) => (out += s)), 2);
});

cli.run();

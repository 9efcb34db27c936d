import { SignJWT, UnsecuredJWT } from 'jose';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import { MAX_BATCH } from '../../protocol/jsonrpc.js';
import { MethodSchemas, type MethodName } from '../../protocol/methods.js';
import type { Task } from '../../protocol/model.js';
import { RawSocket, within, type WireResponse } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';

const SECRET = 'test-secret-that-is-long-enough-for-hs256';
const GRACE_MS = 200;

/** Valid params for the methods, so an unauthenticated call cannot fail for another reason. */
const VALID_PARAMS: Partial<Record<MethodName, Record<string, unknown>>> = {
  'session.whoami': {},
  subscribe: { topic: 'tenant' },
  unsubscribe: { subscriptionId: 'sub-1' },
  'agent.register': { id: 'w1', capabilities: ['go'] },
  'agent.get': { agentId: 'w1' },
  'agent.list': {},
  'agent.heartbeat': {},
  'agent.setStatus': { status: 'busy' },
  'task.create': { type: 'review', title: 'Review PR 7' },
  'task.createBatch': { tasks: [{ type: 'review', title: 'Review PR 8' }] },
  'task.get': { taskId: 't1' },
  'task.getBatch': { taskIds: ['t1'] },
  'task.update': { taskId: 't1', title: 'x' },
  'task.delete': { taskId: 't1' },
  'task.assign': { taskId: 't1', agentId: 'w1' },
  'task.accept': { taskId: 't1' },
  'task.reject': { taskId: 't1' },
  'task.start': { taskId: 't1' },
  'task.progress': { taskId: 't1', percent: 10 },
  'task.requestInput': { taskId: 't1', prompt: 'which branch?' },
  'task.provideInput': { taskId: 't1', input: 'main' },
  'task.complete': { taskId: 't1' },
  'task.fail': { taskId: 't1', error: 'boom' },
  'task.retry': { taskId: 't1' },
  'task.cancel': { taskId: 't1' },
  'task.timeline': { taskId: 't1' },
  'task.listForAgent': {},
  'task.search': {},
  'task.stats': {},
  'task.report': { format: 'csv' },
  'task.archive': { before: new Date().toISOString() },
  'rule.register': { name: 'r1', category: 'task.validation', expression: 'true' },
  'rule.update': { ruleId: 'r1', priority: 1 },
  'rule.get': { ruleId: 'r1' },
  'rule.list': {},
  'rule.delete': { ruleId: 'r1' },
  'rule.evaluate': { expression: 'true', input: {} },
  'policy.get': { taskType: '*' },
  'policy.set': { taskType: '*', defaults: { maxRetries: 1 } },
  'policy.list': {},
};

interface Ctx {
  ts: TestServer;
}

const test = suite<Ctx>('auth: every connection is a principal of one tenant');

test.before(async (ctx) => {
  ctx.ts = await startServer({ authGraceMs: GRACE_MS, jwtSecret: SECRET });
});

test.after(async (ctx) => {
  await ctx.ts.close();
});

function expectUnauthenticated(r: WireResponse | undefined, what: string): void {
  assert.ok(r, `an answer to ${what}`);
  assert.ok(r!.error, `${what} must fail, got ${JSON.stringify(r)}`);
  assert.is(r!.error!.code, ErrorCodes.UNAUTHENTICATED, `${what}: ${r!.error!.message}`);
  assert.is(r!.error!.data.reason, 'UNAUTHENTICATED');
}

function jwt(claims: Record<string, unknown>, opts: { secret?: string; sub?: string | null; exp?: string | number | null } = {}) {
  const s = new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuedAt();
  if (opts.sub !== null) s.setSubject(opts.sub ?? 'w1');
  if (opts.exp !== null) s.setExpirationTime(opts.exp ?? '5m');
  return s.sign(new TextEncoder().encode(opts.secret ?? SECRET));
}

test('refuses every method but ping and session.authenticate without a credential', async (ctx) => {
  const names = Object.keys(MethodSchemas).filter((m) => m !== 'ping' && m !== 'session.authenticate');
  for (const m of Object.keys(VALID_PARAMS)) assert.ok(names.includes(m), `${m} is a method`);
  assert.ok(Object.keys(VALID_PARAMS).length >= 30);
  const head = await ctx.ts.store.headPosition();
  const requests = names.flatMap((m, i) => [
    { jsonrpc: '2.0', id: `valid-${i}`, method: m, params: VALID_PARAMS[m as MethodName] ?? {} },
    { jsonrpc: '2.0', id: `empty-${i}`, method: m, params: {} },
  ]);
  const byId = new Map<unknown, WireResponse>();
  // The catalogue outgrows one batch: each connection gets one batch (with a ping), so no grace
  // period can end half way through one.
  for (let at = 0; at < requests.length; at += MAX_BATCH - 1) {
    const raw = await RawSocket.open(ctx.ts.url);
    const batch = [...requests.slice(at, at + MAX_BATCH - 1), { jsonrpc: '2.0', id: 'ping', method: 'ping', params: {} }];
    const f = await raw.exchange(batch);
    assert.ok(Array.isArray(f.msg), f.text);
    for (const r of f.msg as WireResponse[]) byId.set(r.id, r);
    await raw.close();
  }
  names.forEach((m, i) => {
    expectUnauthenticated(byId.get(`valid-${i}`), `${m} with valid params`);
    expectUnauthenticated(byId.get(`empty-${i}`), `${m} with empty params`);
  });
  assert.equal((byId.get('ping')!.result as { pong: boolean }).pong, true, 'ping works before authentication');
  assert.is(await ctx.ts.store.headPosition(), head, 'nothing was written');
});

test('closes an unauthenticated connection with 4001 after the grace period', async (ctx) => {
  const raw = await RawSocket.open(ctx.ts.url);
  assert.ok((await raw.call('ping')).result, 'ping works while waiting');
  const { code, reason } = await raw.waitClosed();
  assert.is(code, 4001);
  assert.match(reason, /authentication/);
  const closing = raw.notifications('session.closing');
  assert.is(closing.length, 1, 'told why before the close');
  assert.match(closing[0].params.reason, /session\.authenticate/);
});

test('keeps a connection that authenticated with session.authenticate past the grace period', async (ctx) => {
  const key = await ctx.ts.key('acme', 'lead', ['admin']);
  const raw = await RawSocket.open(ctx.ts.url);
  const auth = await raw.call('session.authenticate', { token: key });
  assert.equal(auth.result, { tenantId: 'acme', principalId: 'lead', roles: ['admin'] });
  // A sentinel opened later is closed after its grace period, so ours has passed too.
  const sentinel = await RawSocket.open(ctx.ts.url);
  assert.is((await sentinel.waitClosed()).code, 4001);
  assert.ok(raw.open, 'the authenticated connection stays open');
  const me = await raw.call('session.whoami');
  assert.is((me.result as { principalId: string }).principalId, 'lead');
  const created = await raw.call('task.create', { type: 'auth', title: 'after authenticate' });
  assert.is((created.result as Task).createdBy, 'lead');
  await raw.close();
});

test('refuses a bad, unknown, malformed or revoked key with -32001 saying why', async (ctx) => {
  const key = await ctx.ts.key('acme', 'revokee', ['agent']);
  const id = key.split('_')[1]!;
  const raw = await RawSocket.open(ctx.ts.url);
  const cases: [string, RegExp][] = [
    [`trp_${id}_${'x'.repeat(40)}`, /not valid/],
    [`trp_ABCDEFGHIJKL_${'y'.repeat(40)}`, /not valid/],
    ['hello', /neither an API key/],
  ];
  for (const [token, why] of cases) {
    const r = await raw.call('session.authenticate', { token });
    expectUnauthenticated(r, token);
    assert.match(r.error!.message, why);
  }
  assert.ok((await raw.call('session.authenticate', { token: key })).result, 'the real key works');
  await raw.close();

  assert.ok(await ctx.ts.store.revokeApiKey(id, Date.now()));
  const again = await RawSocket.open(ctx.ts.url);
  const r = await again.call('session.authenticate', { token: key });
  expectUnauthenticated(r, 'revoked key');
  assert.match(r.error!.message, /revoked/);
  expectUnauthenticated(await again.call('session.whoami'), 'whoami after a failed authenticate');
  await again.close();
});

test('refuses to switch an authenticated connection to another principal', async (ctx) => {
  const a = await ctx.ts.key('acme', 'first', ['agent']);
  const b = await ctx.ts.key('acme', 'second', ['admin']);
  const raw = await RawSocket.open(ctx.ts.url, a);
  const r = await raw.call('session.authenticate', { token: b });
  assert.is(r.error?.code, ErrorCodes.FORBIDDEN);
  const me = await raw.call('session.whoami');
  assert.is((me.result as { principalId: string }).principalId, 'first');
  assert.equal((me.result as { roles: string[] }).roles, ['agent']);
  await raw.close();
});

test('closes a connection whose header carries a bad or revoked key with 4001', async (ctx) => {
  for (const token of [`trp_ABCDEFGHIJKL_${'z'.repeat(40)}`, 'not-a-token']) {
    const raw = await RawSocket.open(ctx.ts.url, token);
    // A request sent at once is not run: the connection closes instead.
    raw.send({ jsonrpc: '2.0', id: 1, method: 'task.create', params: { type: 'header', title: 'nope' } });
    const { code } = await raw.waitClosed();
    assert.is(code, 4001);
    assert.is(raw.indexOf((f) => f.msg?.id === 1), -1);
    assert.match(raw.notifications('session.closing')[0].params.reason, /API key|neither/);
  }
  const key = await ctx.ts.key('acme', 'gone', ['agent']);
  await ctx.ts.store.revokeApiKey(key.split('_')[1]!, Date.now());
  const raw = await RawSocket.open(ctx.ts.url, key);
  assert.is((await raw.waitClosed()).code, 4001);
  assert.match(raw.notifications('session.closing')[0].params.reason, /revoked/);

  // The typed client does not retry a refused credential.
  const client = await connect(ctx.ts.url, { token: key, reconnect: true, initialDelayMs: 1 });
  const disconnected = await within(new Promise<{ code: number }>((resolve) => client.once('disconnect', resolve)), 5000, 'the disconnect');
  assert.is(disconnected.code, 4001);
  let reconnected = false;
  client.once('reconnect', () => (reconnected = true));
  // The sentinel: another full connection round trip later, no reconnect has happened.
  const probe = await RawSocket.open(ctx.ts.url, await ctx.ts.key('acme', 'probe', ['agent']));
  await probe.call('ping');
  await probe.close();
  assert.not.ok(client.connected || reconnected);
  await client.close();
});

test('accepts a JWT with tid, sub and roles, in the header or through session.authenticate', async (ctx) => {
  const token = await jwt({ tid: 'jwt-co', roles: ['agent'] }, { sub: 'w1' });
  const raw = await RawSocket.open(ctx.ts.url);
  const r = await raw.call('session.authenticate', { token });
  assert.equal(r.result, { tenantId: 'jwt-co', principalId: 'w1', roles: ['agent'] });
  const created = await raw.call('task.create', { type: 'jwt', title: 'from a JWT' });
  assert.is((created.result as Task).tenantId, 'jwt-co');
  await raw.close();

  const client = await connect(ctx.ts.url, { token: await jwt({ tenant: 'jwt-co', roles: ['observer', 'observer'] }, { sub: 'eye' }), reconnect: false });
  const me = await client.call('session.whoami');
  assert.equal([me.tenantId, me.principalId, me.roles], ['jwt-co', 'eye', ['observer']]);
  assert.is((await client.call('task.search', { type: 'jwt' })).items.length, 1);
  await client.close();
});

test('refuses a JWT with a wrong secret, expired, unsigned or missing claims, saying what is wrong', async (ctx) => {
  const cases: [string, Promise<string> | string, RegExp][] = [
    ['wrong secret', jwt({ tid: 'jwt-co', roles: ['agent'] }, { secret: 'another-secret-of-sufficient-length!!' }), /signature/],
    ['expired', jwt({ tid: 'jwt-co', roles: ['agent'] }, { exp: Math.floor(Date.now() / 1000) - 60 }), /exp/],
    ['no tid', jwt({ roles: ['agent'] }), /"tid"/],
    ['bad tid', jwt({ tid: 'Not A Tenant!', roles: ['agent'] }), /"tid"/],
    ['no sub', jwt({ tid: 'jwt-co', roles: ['agent'] }, { sub: null }), /"sub"/],
    ['no expiry', jwt({ tid: 'jwt-co', roles: ['agent'] }, { exp: null }), /"exp"/],
    ['no roles', jwt({ tid: 'jwt-co' }), /roles/],
    ['unknown role', jwt({ tid: 'jwt-co', roles: ['root'] }), /roles/],
    ['unsigned', new UnsecuredJWT({ tid: 'jwt-co', roles: ['admin'] }).setSubject('w1').encode(), /JWT is not valid/],
  ];
  const raw = await RawSocket.open(ctx.ts.url);
  for (const [what, token, why] of cases) {
    const r = await raw.call('session.authenticate', { token: await token });
    expectUnauthenticated(r, what);
    assert.match(r.error!.message, why, `${what}: ${r.error!.message}`);
  }
  expectUnauthenticated(await raw.call('task.search'), 'search after refused JWTs');
  await raw.close();
});

test('closes an open connection with 4003 once its key is revoked, and keeps the others', async (ctx) => {
  const key = await ctx.ts.key('acme', 'soon-revoked', ['agent']);
  const doomed = await RawSocket.open(ctx.ts.url, key);
  const other = await RawSocket.open(ctx.ts.url, await ctx.ts.key('acme', 'stays', ['agent']));
  assert.ok((await doomed.call('session.whoami')).result);
  assert.is(await ctx.ts.server.checkCredentials(), 0, 'nothing is closed while every key is valid');
  await ctx.ts.store.revokeApiKey(key.split('_')[1]!, Date.now());
  assert.is(await ctx.ts.server.checkCredentials(), 1);
  assert.is((await doomed.waitClosed()).code, 4003);
  assert.match(doomed.notifications('session.closing')[0].params.reason, /revoked/);
  assert.ok((await other.call('session.whoami')).result, 'another principal is not affected');
  await other.close();
});

test('closes a JWT connection with 4003 when the token expires', async () => {
  let now = Date.now();
  const ts = await startServer({ jwtSecret: SECRET, now: () => now });
  try {
    const raw = await RawSocket.open(ts.url, await jwt({ tid: 'jwt-co', roles: ['agent'] }, { exp: '2m' }));
    assert.ok((await raw.call('session.whoami')).result);
    assert.is(await ts.server.checkCredentials(), 0);
    now += 3 * 60_000;
    assert.is(await ts.server.checkCredentials(), 1);
    assert.is((await raw.waitClosed()).code, 4003);
    assert.match(raw.notifications('session.closing')[0].params.reason, /expired/);
  } finally {
    await ts.close();
  }
});

test('refuses JWTs on a server without a JWT secret', async () => {
  const plain = await startServer();
  try {
    const raw = await RawSocket.open(plain.url);
    const r = await raw.call('session.authenticate', { token: await jwt({ tid: 'jwt-co', roles: ['admin'] }) });
    expectUnauthenticated(r, 'JWT without secret');
    assert.match(r.error!.message, /does not accept JWTs/);
    await raw.close();
  } finally {
    await plain.close();
  }
});

async function forbidden(p: Promise<unknown>, what: string): Promise<ProtocolError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ProtocolError, String(e));
    assert.is((e as ProtocolError).code, ErrorCodes.FORBIDDEN, `${what}: ${(e as ProtocolError).message}`);
    return e as ProtocolError;
  }
  assert.unreachable(`${what} should be forbidden`);
  throw new Error('unreachable');
}

test('lets observers read but not create', async (ctx) => {
  const eye = await ctx.ts.client('roles', 'eye', ['observer']);
  const e = await forbidden(eye.call('task.create', { type: 'roles', title: 'nope' }), 'observer create');
  assert.match(e.message, /admin or agent/);
  await forbidden(eye.call('task.createBatch', { tasks: [{ type: 'roles', title: 'nope' }] }), 'observer createBatch');
  await forbidden(eye.call('agent.register', {}), 'observer register');
  assert.is((await eye.call('task.search', { type: 'roles' })).items.length, 0);
  assert.is((await eye.call('task.stats', {})).total, 0);
});

test('lets only the assigned agent (or an admin) accept a task', async (ctx) => {
  const lead = await ctx.ts.client('roles', 'lead', ['admin']);
  const w1 = await ctx.ts.client('roles', 'w1', ['agent']);
  const w2 = await ctx.ts.client('roles', 'w2', ['agent']);
  await w1.call('agent.register', {});
  await w2.call('agent.register', {});
  const t = await lead.call('task.create', { type: 'roles', title: 'for w1', assignTo: 'w1' });
  const e = await forbidden(w2.call('task.accept', { taskId: t.id }), 'w2 accepts w1 task');
  assert.match(e.message, /w1/);
  await forbidden(w2.call('task.reject', { taskId: t.id }), 'w2 rejects w1 task');
  const same = await lead.call('task.get', { taskId: t.id });
  assert.is(same.version, t.version);
  assert.is(same.status, 'assigned');
  const accepted = await w1.call('task.accept', { taskId: t.id });
  assert.is(accepted.status, 'accepted');
  await forbidden(w2.call('task.start', { taskId: t.id }), 'w2 starts w1 task');
  await forbidden(w2.call('task.complete', { taskId: t.id }), 'w2 completes w1 task');
});

test('lets the creator or an admin cancel, not another agent or an observer', async (ctx) => {
  const lead = await ctx.ts.client('roles', 'lead2', ['admin']);
  const creator = await ctx.ts.client('roles', 'creator', ['agent']);
  const other = await ctx.ts.client('roles', 'other', ['agent']);
  const eye = await ctx.ts.client('roles', 'eye2', ['observer']);
  const a = await creator.call('task.create', { type: 'roles', title: 'mine' });
  await forbidden(other.call('task.cancel', { taskId: a.id }), 'other agent cancels');
  await forbidden(other.call('task.update', { taskId: a.id, title: 'hijacked' }), 'other agent updates');
  await forbidden(eye.call('task.cancel', { taskId: a.id }), 'observer cancels');
  const unchanged = await lead.call('task.get', { taskId: a.id });
  assert.is(unchanged.version, a.version);
  assert.is(unchanged.title, 'mine');
  assert.is((await creator.call('task.cancel', { taskId: a.id, reason: 'not needed' })).status, 'cancelled');

  const b = await creator.call('task.create', { type: 'roles', title: 'also mine' });
  const cancelled = await lead.call('task.cancel', { taskId: b.id });
  assert.is(cancelled.status, 'cancelled');
  await forbidden(creator.call('task.archive', { before: new Date(Date.now() + 60_000).toISOString() }), 'agent archives');
});

test('lets an agent act only for itself unless it is an admin', async (ctx) => {
  const w = await ctx.ts.client('roles', 'self', ['agent']);
  await forbidden(w.call('agent.register', { id: 'someone-else' }), 'register another');
  await forbidden(w.call('agent.setStatus', { agentId: 'w1', status: 'draining' }), 'set status of another');
  await forbidden(w.call('task.listForAgent', { agentId: 'w1' }), 'list tasks of another');
  await forbidden(w.call('subscribe', { topic: 'inbox:w1' }), 'read inbox of another');
  await forbidden(w.call('subscribe', { topic: 'tenant' }), 'read the tenant feed');
});

test.run();

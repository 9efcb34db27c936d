import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect } from '../../protocol/client.js';
import { ErrorCodes, ProtocolError } from '../../protocol/errors.js';
import { MethodSchemas } from '../../protocol/methods.js';
import { Authenticator } from '../../src/auth/Authenticator.js';
import { bootstrap } from '../../src/bootstrap.js';
import { runCli } from '../../src/cli.js';
import { loadConfig } from '../../src/config.js';
import { MemoryStore } from '../../src/storage/MemoryStore.js';
import { SqliteStore } from '../../src/storage/SqliteStore.js';
import { startServer, tempDir, type TestServer } from '../helpers/server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Runs the CLI in this process, capturing what it prints to stdout and stderr. */
async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((s: string | Uint8Array) => {
    err += s.toString();
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await runCli(argv, (s) => (out += s));
    return { code, out, err };
  } finally {
    process.stderr.write = write;
  }
}

/** Runs the installed `troupe` entry point as a separate process. */
function troupe(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TROUPE_')));
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: ROOT, env: { ...clean, ...env }, timeout: 30_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

interface Ctx {
  dir: string;
  remove: () => void;
  ts: TestServer;
}

const test = suite<Ctx>('cli: keys, tenants, protocol schema, bootstrap and configuration');

test.before(async (ctx) => {
  const t = tempDir('troupe-cli-');
  ctx.dir = t.dir;
  ctx.remove = t.remove;
  // A server running on the same SQLite file the CLI writes to.
  ctx.ts = await startServer({ store: new SqliteStore({ path: path.join(ctx.dir, 'troupe.db'), synchronous: 'NORMAL' }) });
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.remove();
});

test('creates a key that authenticates against a server on the same file, lists it, and revokes it', async (ctx) => {
  const created = await cli('keys', 'create', '--tenant', 'acme', '--principal', 'w1', '--roles', 'agent, observer', '--label', 'ci bot', '--data-dir', ctx.dir);
  assert.is(created.code, 0, created.err);
  const key = created.out.trim();
  assert.match(key, /^trp_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{32,64}$/);
  assert.match(created.err, /shown only once/);
  const id = key.split('_')[1]!;

  const client = await connect(ctx.ts.url, { token: key, reconnect: false });
  assert.equal(await client.call('session.whoami').then(({ tenantId, principalId, roles }) => ({ tenantId, principalId, roles })), {
    tenantId: 'acme',
    principalId: 'w1',
    roles: ['agent', 'observer'],
  });
  await client.close();

  const listed = await cli('keys', 'list', '--data-dir', ctx.dir);
  assert.is(listed.code, 0);
  const line = listed.out.split('\n').find((l) => l.startsWith(id));
  assert.equal(line?.split('\t'), [id, 'acme', 'w1', 'agent,observer', 'active', 'ci bot']);
  assert.ok(!listed.out.includes(key.split('_')[2]!), 'the secret is never listed');
  await cli('keys', 'create', '--tenant', 'other', '--principal', 'x', '--roles', 'admin', '--data-dir', ctx.dir);
  const filtered = await cli('keys', 'list', '--tenant', 'other', '--data-dir', ctx.dir);
  assert.ok(filtered.out.trim().split('\n').every((l) => l.split('\t')[1] === 'other'), filtered.out);
  assert.not.ok(filtered.out.includes(id));

  const revoked = await cli('keys', 'revoke', id, '--data-dir', ctx.dir);
  assert.equal([revoked.code, revoked.out], [0, `revoked ${id}\n`]);
  assert.match((await cli('keys', 'list', '--data-dir', ctx.dir)).out, new RegExp(`${id}\\tacme\\tw1\\tagent,observer\\trevoked`));
  // The running server refuses it from now on.
  const raw = await connect(ctx.ts.url, { reconnect: false });
  const e = await raw.call('session.authenticate', { token: key }).then(
    () => null,
    (err: unknown) => err as ProtocolError,
  );
  assert.ok(e);
  assert.is(e!.code, ErrorCodes.UNAUTHENTICATED);
  assert.match(e!.message, /revoked/);
  await raw.close();
});

test('creates and lists tenants', async (ctx) => {
  const r = await cli('tenants', 'create', 'globex', '--name', 'Globex Corp', '--data-dir', ctx.dir);
  assert.equal([r.code, r.out], [0, 'created tenant globex\n']);
  await cli('tenants', 'create', 'initech', '--data-dir', ctx.dir);
  const list = await cli('tenants', 'list', '--data-dir', ctx.dir);
  assert.is(list.code, 0);
  const rows = list.out.trim().split('\n').map((l) => l.split('\t'));
  assert.ok(rows.some(([id, name]) => id === 'globex' && name === 'Globex Corp'), list.out);
  assert.ok(rows.some(([id, name]) => id === 'initech' && name === 'initech'), list.out);
  assert.ok(await ctx.ts.store.getTenant('globex'), 'the server sees it');
});

test('writes the protocol schema as valid JSON, to a file or to stdout', async (ctx) => {
  const file = path.join(ctx.dir, 'protocol.json');
  const r = await cli('protocol-schema', '--out', file);
  assert.equal([r.code, r.out], [0, '']);
  const schema = JSON.parse(fs.readFileSync(file, 'utf8'));
  assert.equal(Object.keys(schema.methods).sort(), Object.keys(MethodSchemas).sort());
  assert.is(schema.errors.NOT_FOUND, ErrorCodes.NOT_FOUND);
  const printed = await cli('protocol-schema');
  assert.equal(JSON.parse(printed.out), schema);
  const help = await cli('help');
  assert.match(help.out, /troupe keys create/);
});

test('refuses an unknown option or a missing argument in process, with exit code 2 and a message', async () => {
  const unknown = await cli('keys', 'list', '--bogus');
  assert.is(unknown.code, 2);
  assert.match(unknown.err, /bogus/);
  const missing = await cli('keys', 'create', '--tenant', 'acme');
  assert.is(missing.code, 2);
  assert.match(missing.err, /--principal/);
});

test('exits non-zero with a message on bad arguments', async (ctx) => {
  const dataDir = path.join(ctx.dir, 'bad-args');
  const bin = path.join(ROOT, 'bin', 'troupe.js');
  const cases: [string[], RegExp][] = [
    [['keys', 'create', '--tenant', 'acme', '--data-dir', dataDir], /needs --tenant, --principal and --roles/],
    [['keys', 'create', '--tenant', 'acme', '--principal', 'p', '--roles', 'root', '--data-dir', dataDir], /unknown role\(s\) root/],
    [['keys', 'revoke', 'nosuchkey', '--data-dir', dataDir], /no key nosuchkey/],
    [['tenants', 'create', 'Not Valid!', '--data-dir', dataDir], /tenant ids/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['keys', 'list', '--bogus', '--data-dir', dataDir], /bogus/],
  ];
  const results = await Promise.all(cases.map(([args]) => troupe([bin, ...args])));
  results.forEach((r, i) => {
    const [args, why] = cases[i]!;
    assert.ok(r.code !== 0, `troupe ${args.join(' ')} exits non-zero`);
    assert.match(r.stderr, why, `troupe ${args.join(' ')}: ${r.stderr}`);
    assert.is(r.stdout, '');
  });
});

test('bootstrap creates one admin key on an empty store and none on the second call', async (ctx) => {
  const store = new MemoryStore();
  const auth = new Authenticator({ store });
  const dir = path.join(ctx.dir, 'boot');
  const first = await bootstrap(store, auth, dir);
  assert.is(first.tenant, 'default');
  assert.is(first.file, path.join(dir, 'admin.key'));
  assert.match(first.key!, /^trp_/);
  assert.is(fs.readFileSync(first.file, 'utf8'), `${first.key}\n`);
  assert.is(fs.statSync(first.file).mode & 0o777, 0o600, 'only the owner can read the key');
  assert.equal(await auth.authenticate(first.key!), { tenantId: 'default', principalId: 'admin', roles: ['admin'] });

  const second = await bootstrap(store, auth, dir);
  assert.is(second.key, null);
  assert.is(second.file, first.file);
  assert.is((await store.listApiKeys()).length, 1);
  assert.is(fs.readFileSync(first.file, 'utf8'), `${first.key}\n`, 'the file is left alone');

  // A store that already has some key is not bootstrapped either.
  const other = new MemoryStore();
  const otherAuth = new Authenticator({ store: other });
  await otherAuth.createKey({ tenant: 'acme', principal: 'lead', roles: ['admin'] });
  assert.is((await bootstrap(other, otherAuth, path.join(ctx.dir, 'boot2'))).key, null);
  assert.not.ok(fs.existsSync(path.join(ctx.dir, 'boot2', 'admin.key')));
});

test('loadConfig has documented defaults', () => {
  const c = loadConfig([], {});
  assert.equal(c, {
    port: 7420,
    host: '127.0.0.1',
    dataDir: path.resolve('./data'),
    store: `sqlite:${path.join(path.resolve('./data'), 'troupe.db')}`,
    sqliteSync: 'FULL',
    maxFrameBytes: 1024 * 1024,
    authGraceMs: 10_000,
    idleMs: 60_000,
    maxActiveActors: 10_000,
    credentialCheckMs: 30_000,
    processMetrics: false,
    maxBufferedBytes: 8 * 1024 * 1024,
    jwtSecret: undefined,
    jwtIssuer: undefined,
    jwtAudience: undefined,
    logLevel: 'info',
    bootstrap: true,
    leaseSeconds: 60,
    defaultStrategy: 'least_loaded',
    redisUrl: undefined,
    cluster: undefined,
    maxJsonDepth: 32,
    maxStringLength: 1_000_000,
    idleConnectionMs: 600_000,
    maxMailbox: 1_000,
    tenantConcurrency: 256,
    tenantQueue: 1_024,
    storeTimeoutMs: 5_000,
    storeCommitTimeoutMs: 10_000,
    storeBreakerFailures: 5,
    storeBreakerHalfOpenMs: 2_000,
    quotaLimits: { tasks: null, active_tasks: null, workflow_executions_per_day: null, stored_bytes: null, workspaces: null, members_per_workspace: null },
    documents: { maxBytes: 5 * 1024 * 1024, maxChangesPerSecond: 200, maxOpsPerCall: 1_000, compactEvery: 500, maxLoaded: 500 },
    statelyInspectUrl: undefined,
  });
});

test('loadConfig reads the environment, and flags win over it', () => {
  const env = {
    TROUPE_PORT: '8000',
    TROUPE_HOST: '0.0.0.0',
    TROUPE_DATA_DIR: '/tmp/troupe-env',
    TROUPE_SQLITE_SYNC: 'normal',
    TROUPE_MAX_FRAME_BYTES: '4096',
    TROUPE_AUTH_GRACE_MS: '250',
    TROUPE_IDLE_MS: '1000',
    TROUPE_MAX_BUFFERED_BYTES: '65536',
    TROUPE_JWT_SECRET: 's3cret',
    TROUPE_JWT_ISSUER: 'iss',
    TROUPE_JWT_AUDIENCE: 'aud',
    TROUPE_LOG_LEVEL: 'warn',
    TROUPE_BOOTSTRAP: 'false',
    TROUPE_LEASE_SECONDS: '15',
    TROUPE_DEFAULT_STRATEGY: 'cost_optimized',
  };
  const c = loadConfig([], env);
  assert.equal([c.leaseSeconds, c.defaultStrategy], [15, 'cost_optimized']);
  assert.equal([loadConfig([], {}).leaseSeconds, loadConfig([], {}).defaultStrategy], [60, 'least_loaded']);
  assert.equal(
    [c.port, c.host, c.dataDir, c.store, c.sqliteSync, c.maxFrameBytes, c.authGraceMs, c.idleMs, c.maxBufferedBytes, c.jwtSecret, c.jwtIssuer, c.jwtAudience, c.logLevel, c.bootstrap],
    [8000, '0.0.0.0', '/tmp/troupe-env', 'sqlite:/tmp/troupe-env/troupe.db', 'NORMAL', 4096, 250, 1000, 65536, 's3cret', 'iss', 'aud', 'warn', false],
  );
  const f = loadConfig(['--port', '9000', '--host', '::1', '--data-dir', '/tmp/troupe-flag', '--log-level', 'error'], env);
  assert.equal([f.port, f.host, f.dataDir, f.store, f.logLevel], [9000, '::1', '/tmp/troupe-flag', 'sqlite:/tmp/troupe-flag/troupe.db', 'error']);
  assert.is(loadConfig(['--store', 'memory:'], { ...env, TROUPE_STORE: 'sqlite:/x.db' }).store, 'memory:');
  assert.is(loadConfig([], { TROUPE_STORE: 'sqlite:/x.db' }).store, 'sqlite:/x.db');
  assert.is(loadConfig(['--port=0'], {}).port, 0, 'port 0 picks a free port');
  assert.is(loadConfig([], { TROUPE_BOOTSTRAP: 'true' }).bootstrap, true);
  assert.is(loadConfig([], { TROUPE_REDIS_URL: 'redis://10.0.0.5:6379/2' }).redisUrl, 'redis://10.0.0.5:6379/2');
});

test('loadConfig reads the cluster settings only when cluster mode is on', () => {
  const redis = 'redis://10.0.0.5:6379';
  assert.is(loadConfig([], { TROUPE_REDIS_URL: redis }).cluster, undefined, 'Redis alone does not make a cluster');
  assert.equal(loadConfig([], { TROUPE_CLUSTER: 'true', TROUPE_REDIS_URL: redis }).cluster, { redisUrl: redis, leaseMs: 10_000, heartbeatMs: 1_000, requestTimeoutMs: 5_000 });
  assert.equal(
    loadConfig([], {
      TROUPE_CLUSTER: 'TRUE',
      TROUPE_REDIS_URL: redis,
      TROUPE_NODE_ID: 'node-2',
      TROUPE_REDLOCK_URLS: 'redis://a:1, redis://b:2,redis://c:3',
      TROUPE_CLUSTER_LEASE_MS: '3000',
      TROUPE_CLUSTER_HEARTBEAT_MS: '250',
      TROUPE_CLUSTER_REQUEST_TIMEOUT_MS: '1500',
      TROUPE_ADVERTISE_URL: 'ws://node-2:7420/v1',
    }).cluster,
    {
      redisUrl: redis,
      nodeId: 'node-2',
      lockUrls: ['redis://a:1', 'redis://b:2', 'redis://c:3'],
      leaseMs: 3000,
      heartbeatMs: 250,
      requestTimeoutMs: 1500,
      advertiseUrl: 'ws://node-2:7420/v1',
    },
  );
});

test('loadConfig refuses bad numbers and bad settings, naming them', () => {
  const bad: [string[], Record<string, string>, RegExp][] = [
    [['--port', 'abc'], {}, /port/],
    [['--port=-1'], {}, /port/],
    [['--port', '1.5'], {}, /port/],
    [['--port', '70000'], {}, /port/],
    [[], { TROUPE_PORT: '65536' }, /port/],
    [[], { TROUPE_PORT: 'http' }, /port/],
    [[], { TROUPE_MAX_FRAME_BYTES: '1MB' }, /TROUPE_MAX_FRAME_BYTES/],
    [[], { TROUPE_LEASE_SECONDS: '0' }, /TROUPE_LEASE_SECONDS/],
    [[], { TROUPE_DEFAULT_STRATEGY: 'random' }, /TROUPE_DEFAULT_STRATEGY must be one of round_robin/],
    [[], { TROUPE_AUTH_GRACE_MS: '-5' }, /TROUPE_AUTH_GRACE_MS/],
    [[], { TROUPE_IDLE_MS: 'soon' }, /TROUPE_IDLE_MS/],
    [[], { TROUPE_MAX_BUFFERED_BYTES: '1.5' }, /TROUPE_MAX_BUFFERED_BYTES/],
    [[], { TROUPE_SQLITE_SYNC: 'OFF' }, /TROUPE_SQLITE_SYNC/],
    [[], { TROUPE_REDIS_URL: 'localhost:6379' }, /TROUPE_REDIS_URL must be a redis:\/\/ or rediss:\/\/ URL/],
    [[], { TROUPE_CLUSTER: 'yes' }, /TROUPE_CLUSTER must be true or false/],
    [[], { TROUPE_CLUSTER: 'true' }, /TROUPE_CLUSTER=true needs TROUPE_REDIS_URL/],
    [[], { TROUPE_CLUSTER: 'true', TROUPE_REDIS_URL: 'redis://r:1', TROUPE_REDLOCK_URLS: 'r:2' }, /TROUPE_REDLOCK_URLS must list redis/],
    [[], { TROUPE_CLUSTER: 'true', TROUPE_REDIS_URL: 'redis://r:1', TROUPE_NODE_ID: 'a b' }, /TROUPE_NODE_ID must be/],
    [[], { TROUPE_CLUSTER: 'true', TROUPE_REDIS_URL: 'redis://r:1', TROUPE_CLUSTER_LEASE_MS: '100' }, /TROUPE_CLUSTER_LEASE_MS/],
  ];
  for (const [argv, env, why] of bad) {
    assert.throws(() => loadConfig(argv, env), why, `${argv.join(' ')} ${JSON.stringify(env)}`);
  }
});

test('the server refuses to start on bad configuration, saying why', async () => {
  const r = await troupe(['--import', 'tsx', 'src/main.ts'], { TROUPE_PORT: 'lots', TROUPE_LOG_LEVEL: 'silent', TROUPE_STORE: 'memory:' });
  assert.is(r.code, 1);
  assert.match(r.stderr, /port must be an integer of at least 0/);
});

test.run();

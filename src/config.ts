import type { ClusterOptions } from './cluster/ClusterNode.js';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { AssignmentStrategies, type AssignmentStrategy } from '../protocol/model.js';
import { QuotaResources, type QuotaResource } from '../protocol/quotas.js';

/** Server configuration. Every field has a documented default and an environment variable. */
export interface Config {
  /** TCP port (`TROUPE_PORT`, `--port`); 0 picks a free one. Default 7420. */
  port: number;
  /** Interface to listen on (`TROUPE_HOST`, `--host`). Default 127.0.0.1. */
  host: string;
  /** Directory for the embedded store and the bootstrap key (`TROUPE_DATA_DIR`, `--data-dir`). Default ./data. */
  dataDir: string;
  /**
   * Store URL (`TROUPE_STORE`, `--store`): `sqlite:<file>` (default `sqlite:<dataDir>/troupe.db`)
   * or `memory:` (nothing survives a restart).
   */
  store: string;
  /** SQLite durability (`TROUPE_SQLITE_SYNC`): FULL survives power loss (default), NORMAL only process crashes. */
  sqliteSync: 'FULL' | 'NORMAL';
  /** Largest frame answered with an error instead of a close (`TROUPE_MAX_FRAME_BYTES`). Default 1 MiB. */
  maxFrameBytes: number;
  /** Unauthenticated connections are closed after this long (`TROUPE_AUTH_GRACE_MS`). Default 10 000. */
  authGraceMs: number;
  /** Actors idle this long are passivated (`TROUPE_IDLE_MS`). Default 60 000. */
  idleMs: number;
  /** The most actors kept in memory (`TROUPE_MAX_ACTIVE_ACTORS`). Default 10 000. */
  maxActiveActors: number;
  /** Open connections' credentials are re-checked this often (`TROUPE_CREDENTIAL_CHECK_MS`). Default 30 000. */
  credentialCheckMs: number;
  /** A subscriber with more unsent bytes than this is dropped (`TROUPE_MAX_BUFFERED_BYTES`). Default 8 MiB. */
  maxBufferedBytes: number;
  /** HS256 secret that enables JWT bearer tokens (`TROUPE_JWT_SECRET`). Unset: API keys only. */
  jwtSecret?: string;
  /** Required `iss` of JWTs (`TROUPE_JWT_ISSUER`). */
  jwtIssuer?: string;
  /** Required `aud` of JWTs (`TROUPE_JWT_AUDIENCE`). */
  jwtAudience?: string;
  /** Export Node process metrics at /metrics (`TROUPE_PROCESS_METRICS`): costs ~10% throughput. Default false. */
  processMetrics: boolean;
  /** pino level (`TROUPE_LOG_LEVEL`): trace, debug, info, warn, error, silent. Default info. */
  logLevel: string;
  /** Create a tenant and an admin key on first start when none exists (`TROUPE_BOOTSTRAP`). Default true. */
  bootstrap: boolean;
  /** Lease of a task an agent holds, unless the task or its policy sets one (`TROUPE_LEASE_SECONDS`). Default 60. */
  leaseSeconds: number;
  /** Auto-assignment strategy unless the request, task or a policy names one (`TROUPE_DEFAULT_STRATEGY`). Default least_loaded. */
  defaultStrategy: AssignmentStrategy;
  /**
   * Redis shared by the nodes of a cluster (`TROUPE_REDIS_URL`, `redis://` or `rediss://`): rate limits
   * are counted there. Unset (default): everything stays in this process.
   */
  redisUrl?: string;
  /**
   * Cluster mode (`TROUPE_CLUSTER=true`, needs `TROUPE_REDIS_URL`): actors are leased through
   * Redis and messages routed to their owner. Its settings: `TROUPE_NODE_ID` (default random),
   * `TROUPE_REDLOCK_URLS` (comma-separated independent Redis instances for the leases; default
   * the shared Redis), `TROUPE_CLUSTER_LEASE_MS` (default 10 000), `TROUPE_CLUSTER_HEARTBEAT_MS`
   * (default 1 000), `TROUPE_CLUSTER_REQUEST_TIMEOUT_MS` (how long a forwarded call waits for the
   * owner; default 5 000), `TROUPE_ADVERTISE_URL` (the WebSocket URL other people reach this node at).
   */
  cluster?: ClusterOptions;
  /** Deepest nesting of objects and arrays in a call's params, params itself counting 1 (`TROUPE_MAX_JSON_DEPTH`). Default 32. */
  maxJsonDepth: number;
  /** Longest string anywhere in a call's params, in UTF-16 code units (`TROUPE_MAX_STRING_LENGTH`). Default 1 000 000. */
  maxStringLength: number;
  /**
   * An authenticated connection that sends no frame and answers no ping for this long is closed
   * with 4009 (`TROUPE_IDLE_CONNECTION_MS`). Default 600 000; 0 disables.
   */
  idleConnectionMs: number;
  /** The most messages waiting in one actor's mailbox; beyond it calls get BUSY (`TROUPE_MAX_MAILBOX`). Default 1 000. */
  maxMailbox: number;
  /** Calls of one tenant handled at once (`TROUPE_TENANT_CONCURRENCY`). Default 256. */
  tenantConcurrency: number;
  /** Calls of one tenant waiting for a slot; beyond it calls get BUSY (`TROUPE_TENANT_QUEUE`). Default 1 024. */
  tenantQueue: number;
  /** Longest wait for a store read before UNAVAILABLE (`TROUPE_STORE_TIMEOUT_MS`). Default 5 000. */
  storeTimeoutMs: number;
  /** Longest wait for a store commit or other write; its outcome is then unknown (`TROUPE_STORE_COMMIT_TIMEOUT_MS`). Default 10 000. */
  storeCommitTimeoutMs: number;
  /** Consecutive store failures that open its circuit breaker (`TROUPE_STORE_BREAKER_FAILURES`). Default 5. */
  storeBreakerFailures: number;
  /** How long the store's open breaker refuses calls before one trial call (`TROUPE_STORE_BREAKER_HALF_OPEN_MS`). Default 2 000. */
  storeBreakerHalfOpenMs: number;
  /**
   * Quota limits of every tenant that sets none, by resource: `TROUPE_QUOTA_TASKS`,
   * `TROUPE_QUOTA_ACTIVE_TASKS`, `TROUPE_QUOTA_WORKFLOW_EXECUTIONS_PER_DAY`,
   * `TROUPE_QUOTA_STORED_BYTES`, `TROUPE_QUOTA_WORKSPACES`, `TROUPE_QUOTA_MEMBERS_PER_WORKSPACE`.
   * Default: unset, which is null (unlimited).
   */
  quotaLimits: Record<QuotaResource, number | null>;
  /**
   * Limits of workspace documents (state and shared documents): `maxBytes` (`TROUPE_DOC_MAX_BYTES`,
   * default 5 MiB: its last compacted save plus the changes since), `maxChangesPerSecond`
   * (`TROUPE_DOC_MAX_CHANGES_PER_SECOND`, default 200 per document), `maxOpsPerCall`
   * (`TROUPE_DOC_MAX_OPS`, default 1 000 ops, patch operations, splices or changes per call),
   * `compactEvery` (`TROUPE_DOC_COMPACT_EVERY`, default 500 Automerge changes between compacted
   * saves) and `maxLoaded` (`TROUPE_DOC_CACHE`, default 500 documents kept in memory).
   */
  documents: { maxBytes: number; maxChangesPerSecond: number; maxOpsPerCall: number; compactEvery: number; maxLoaded: number };
  /**
   * WebSocket URL (`ws://` or `wss://`) of a Stately inspector to stream live actors to
   * (`TROUPE_STATELY_INSPECT_URL`), e.g. the relay of `@statelyai/inspect/server`. Unset (default): off.
   */
  statelyInspectUrl?: string;
}

function int(v: string | undefined, fallback: number, name: string, max = Number.MAX_SAFE_INTEGER, min = 0): number {
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer of at least ${min}, got "${v}"`);
  if (n > max) throw new Error(`${name} must be at most ${max}, got "${v}"`);
  return n;
}

/** `TROUPE_QUOTA_<RESOURCE>` for every quota resource: a count of at least 0, or unset (null: unlimited). */
function quotaLimits(env: NodeJS.ProcessEnv): Record<QuotaResource, number | null> {
  const limit = (r: QuotaResource): number | null => {
    const name = `TROUPE_QUOTA_${r.toUpperCase()}`;
    const v = env[name];
    return v === undefined || v === '' ? null : int(v, 0, name);
  };
  return Object.fromEntries(QuotaResources.map((r) => [r, limit(r)])) as Record<QuotaResource, number | null>;
}

function redisUrl(v: string | undefined): string | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^rediss?:\/\/[^\s]+$/.test(v)) throw new Error(`TROUPE_REDIS_URL must be a redis:// or rediss:// URL, got "${v}"`);
  return v;
}

function clusterOptions(env: NodeJS.ProcessEnv, shared: string | undefined): ClusterOptions | undefined {
  const on = (env.TROUPE_CLUSTER ?? 'false').toLowerCase();
  if (on !== 'true' && on !== 'false') throw new Error(`TROUPE_CLUSTER must be true or false, got "${env.TROUPE_CLUSTER}"`);
  if (on === 'false') return undefined;
  if (!shared) throw new Error('TROUPE_CLUSTER=true needs TROUPE_REDIS_URL: the Redis the nodes share.');
  const lockUrls = (env.TROUPE_REDLOCK_URLS ?? '')
    .split(',')
    .map((u) => u.trim())
    .filter((u) => u !== '');
  for (const u of lockUrls) if (!/^rediss?:\/\/[^\s]+$/.test(u)) throw new Error(`TROUPE_REDLOCK_URLS must list redis:// or rediss:// URLs, got "${u}"`);
  const nodeId = env.TROUPE_NODE_ID || undefined;
  if (nodeId !== undefined && !/^[A-Za-z0-9_.-]{1,64}$/.test(nodeId)) throw new Error(`TROUPE_NODE_ID must be 1-64 letters, digits, '_', '.' or '-', got "${nodeId}"`);
  return {
    redisUrl: shared,
    ...(nodeId ? { nodeId } : {}),
    ...(lockUrls.length > 0 ? { lockUrls } : {}),
    leaseMs: int(env.TROUPE_CLUSTER_LEASE_MS, 10_000, 'TROUPE_CLUSTER_LEASE_MS', 600_000, 500),
    heartbeatMs: int(env.TROUPE_CLUSTER_HEARTBEAT_MS, 1_000, 'TROUPE_CLUSTER_HEARTBEAT_MS', 60_000, 100),
    requestTimeoutMs: int(env.TROUPE_CLUSTER_REQUEST_TIMEOUT_MS, 5_000, 'TROUPE_CLUSTER_REQUEST_TIMEOUT_MS', 600_000, 100),
    ...(env.TROUPE_ADVERTISE_URL ? { advertiseUrl: env.TROUPE_ADVERTISE_URL } : {}),
  };
}

function statelyInspectUrl(v: string | undefined): string | undefined {
  if (v === undefined || v === '') return undefined;
  if (!/^wss?:\/\/[^\s]+$/.test(v) || !URL.canParse(v)) throw new Error(`TROUPE_STATELY_INSPECT_URL must be a ws:// or wss:// URL, got "${v}"`);
  return v;
}

/** Reads the configuration from flags (first) and environment variables. */
export function loadConfig(argv: string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): Config {
  const { values } = parseArgs({
    args: argv,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'data-dir': { type: 'string' },
      store: { type: 'string' },
      'log-level': { type: 'string' },
    },
    strict: false,
    allowPositionals: true,
  });
  const str = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  const dataDir = path.resolve(str('data-dir') ?? env.TROUPE_DATA_DIR ?? './data');
  const sync = (env.TROUPE_SQLITE_SYNC ?? 'FULL').toUpperCase();
  if (sync !== 'FULL' && sync !== 'NORMAL') throw new Error(`TROUPE_SQLITE_SYNC must be FULL or NORMAL, got "${sync}"`);
  const strategy = env.TROUPE_DEFAULT_STRATEGY || 'least_loaded';
  if (!(AssignmentStrategies as readonly string[]).includes(strategy)) {
    throw new Error(`TROUPE_DEFAULT_STRATEGY must be one of ${AssignmentStrategies.join(', ')}, got "${strategy}"`);
  }
  return {
    port: int(str('port') ?? env.TROUPE_PORT, 7420, 'port', 65_535),
    host: str('host') ?? env.TROUPE_HOST ?? '127.0.0.1',
    dataDir,
    store: str('store') ?? env.TROUPE_STORE ?? `sqlite:${path.join(dataDir, 'troupe.db')}`,
    sqliteSync: sync,
    maxFrameBytes: int(env.TROUPE_MAX_FRAME_BYTES, 1024 * 1024, 'TROUPE_MAX_FRAME_BYTES', 64 * 1024 * 1024, 1024),
    authGraceMs: int(env.TROUPE_AUTH_GRACE_MS, 10_000, 'TROUPE_AUTH_GRACE_MS'),
    idleMs: int(env.TROUPE_IDLE_MS, 60_000, 'TROUPE_IDLE_MS'),
    maxActiveActors: int(env.TROUPE_MAX_ACTIVE_ACTORS, 10_000, 'TROUPE_MAX_ACTIVE_ACTORS', Number.MAX_SAFE_INTEGER, 1),
    credentialCheckMs: int(env.TROUPE_CREDENTIAL_CHECK_MS, 30_000, 'TROUPE_CREDENTIAL_CHECK_MS', Number.MAX_SAFE_INTEGER, 100),
    maxBufferedBytes: int(env.TROUPE_MAX_BUFFERED_BYTES, 8 * 1024 * 1024, 'TROUPE_MAX_BUFFERED_BYTES'),
    jwtSecret: env.TROUPE_JWT_SECRET || undefined,
    jwtIssuer: env.TROUPE_JWT_ISSUER || undefined,
    jwtAudience: env.TROUPE_JWT_AUDIENCE || undefined,
    logLevel: str('log-level') ?? env.TROUPE_LOG_LEVEL ?? 'info',
    bootstrap: (env.TROUPE_BOOTSTRAP ?? 'true') !== 'false',
    processMetrics: env.TROUPE_PROCESS_METRICS === 'true',
    leaseSeconds: int(env.TROUPE_LEASE_SECONDS, 60, 'TROUPE_LEASE_SECONDS', 86_400, 1),
    defaultStrategy: strategy as AssignmentStrategy,
    redisUrl: redisUrl(env.TROUPE_REDIS_URL),
    cluster: clusterOptions(env, redisUrl(env.TROUPE_REDIS_URL)),
    maxJsonDepth: int(env.TROUPE_MAX_JSON_DEPTH, 32, 'TROUPE_MAX_JSON_DEPTH', 1000, 1),
    maxStringLength: int(env.TROUPE_MAX_STRING_LENGTH, 1_000_000, 'TROUPE_MAX_STRING_LENGTH', Number.MAX_SAFE_INTEGER, 1),
    idleConnectionMs: int(env.TROUPE_IDLE_CONNECTION_MS, 600_000, 'TROUPE_IDLE_CONNECTION_MS', 2_147_483_647),
    maxMailbox: int(env.TROUPE_MAX_MAILBOX, 1_000, 'TROUPE_MAX_MAILBOX', Number.MAX_SAFE_INTEGER, 1),
    tenantConcurrency: int(env.TROUPE_TENANT_CONCURRENCY, 256, 'TROUPE_TENANT_CONCURRENCY', Number.MAX_SAFE_INTEGER, 1),
    tenantQueue: int(env.TROUPE_TENANT_QUEUE, 1_024, 'TROUPE_TENANT_QUEUE'),
    storeTimeoutMs: int(env.TROUPE_STORE_TIMEOUT_MS, 5_000, 'TROUPE_STORE_TIMEOUT_MS', 2_147_483_647, 1),
    storeCommitTimeoutMs: int(env.TROUPE_STORE_COMMIT_TIMEOUT_MS, 10_000, 'TROUPE_STORE_COMMIT_TIMEOUT_MS', 2_147_483_647, 1),
    storeBreakerFailures: int(env.TROUPE_STORE_BREAKER_FAILURES, 5, 'TROUPE_STORE_BREAKER_FAILURES', 1_000_000, 1),
    storeBreakerHalfOpenMs: int(env.TROUPE_STORE_BREAKER_HALF_OPEN_MS, 2_000, 'TROUPE_STORE_BREAKER_HALF_OPEN_MS', 2_147_483_647, 1),
    quotaLimits: quotaLimits(env),
    documents: {
      maxBytes: int(env.TROUPE_DOC_MAX_BYTES, 5 * 1024 * 1024, 'TROUPE_DOC_MAX_BYTES', Number.MAX_SAFE_INTEGER, 1024),
      maxChangesPerSecond: int(env.TROUPE_DOC_MAX_CHANGES_PER_SECOND, 200, 'TROUPE_DOC_MAX_CHANGES_PER_SECOND', 1_000_000, 1),
      maxOpsPerCall: int(env.TROUPE_DOC_MAX_OPS, 1_000, 'TROUPE_DOC_MAX_OPS', 10_000, 1),
      compactEvery: int(env.TROUPE_DOC_COMPACT_EVERY, 500, 'TROUPE_DOC_COMPACT_EVERY', 1_000_000, 1),
      maxLoaded: int(env.TROUPE_DOC_CACHE, 500, 'TROUPE_DOC_CACHE', Number.MAX_SAFE_INTEGER, 1),
    },
    statelyInspectUrl: statelyInspectUrl(env.TROUPE_STATELY_INSPECT_URL),
  };
}

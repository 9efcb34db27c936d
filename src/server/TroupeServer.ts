import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { ActorHost } from '../../actors/ActorHost.js';
import { addressOf } from '../../actors/ActorKind.js';
import { LocalOwnership, type Ownership } from '../../actors/Ownership.js';
import type { Store } from '../../actors/Store.js';
import { OutboxDispatcher, TimerService } from '../../actors/TimerService.js';
import { ResilientStore } from '../storage/ResilientStore.js';
import { ProtocolError } from '../../protocol/errors.js';
import {
  SESSION_CLOSING,
  decodeFrame,
  errorResponse,
  resultResponse,
  type RpcRequest,
  type RpcResponse,
} from '../../protocol/jsonrpc.js';
import { MethodSchemas, isMethodName, type MethodName } from '../../protocol/methods.js';
import { protocolJsonSchema } from '../../protocol/schema.js';
import type { Principal } from '../../protocol/model.js';
import { Authenticator, type Credential } from '../auth/Authenticator.js';
import { agentHandlers } from '../handlers/agents.js';
import { auditHandlers } from '../handlers/audit.js';
import { AuditRecorder } from '../guard/AuditRecorder.js';
import { ruleHandlers } from '../handlers/rules.js';
import { rateLimitHandlers } from '../handlers/ratelimits.js';
import { RateLimits, type RateLimitOptions } from '../guard/RateLimits.js';
import { assignmentHandlers } from '../handlers/assignment.js';
import { distributedHandlers } from '../handlers/distributed.js';
import { executionHandlers } from '../handlers/executions.js';
import { fieldPolicyHandlers } from '../handlers/fieldPolicy.js';
import { inspectHandlers } from '../handlers/inspect.js';
import { serveViz } from '../viz/serveViz.js';
import { quotaHandlers } from '../handlers/quotas.js';
import { Quotas, type QuotasOptions } from '../guard/Quotas.js';
import { SharedReservations } from '../guard/SharedReservations.js';
import { Dispatcher } from '../workflows/Dispatcher.js';
import { installGuards } from './guards.js';
import { IdleTimeout } from '../guard/IdleTimeout.js';
import { sessionHandlers } from '../handlers/session.js';
import { taskHandlers } from '../handlers/tasks.js';
import { workflowHandlers } from '../handlers/workflows.js';
import { workspaceHandlers } from '../handlers/workspaces.js';
import { WorkspaceService } from '../workspaces/WorkspaceService.js';
import type { PresenceRelayMessage } from '../workspaces/WorkspacePresence.js';
import { documentHandlers } from '../handlers/documents.js';
import { DocumentService, type DocumentLimits, type DocumentWrite } from '../documents/DocumentService.js';
import { SyncServer } from '../sync/SyncServer.js';
import { actorKinds } from '../kinds/index.js';
import { createLogger, type Logger } from '../logger.js';
import { Metrics, methodLabel } from '../observability/Metrics.js';
import { traceStoreReads } from '../observability/spans.js';
import { serveMachines } from '../observability/stately.js';
import { StatelyInspector } from '../observability/StatelyInspector.js';
import { RuleEngine } from '../policy/RuleEngine.js';
import { AgentDirectory } from '../assignment/AgentDirectory.js';
import { Assigner } from '../assignment/Assigner.js';
import type { AssignmentStrategy } from '../../protocol/model.js';
import type { App, AuthedContext, CallGuard, Handler, Handlers } from './App.js';
import { CloseCodes, Connection } from './Connection.js';
import { Presence } from './Presence.js';
import { SubscriptionHub } from './SubscriptionHub.js';
import { ClusterNode, type ClusterOptions } from '../cluster/ClusterNode.js';

/** Options of {@link TroupeServer}; durations in milliseconds, sizes in bytes. */
export interface TroupeServerOptions {
  store: Store;
  /** Default 0 (a free port). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Frames up to this size are processed; larger ones get PAYLOAD_TOO_LARGE (default 1 MiB). */
  maxFrameBytes?: number;
  /** Unauthenticated connections are closed after this long (default 10 000). */
  authGraceMs?: number;
  /** Idle actors are passivated after this long (default 60 000). */
  idleMs?: number;
  /** The most actors kept in memory; the least recently used idle ones are passivated (default 10 000). */
  maxActiveActors?: number;
  /** Open connections' credentials are re-checked this often; revoked or expired ones are closed (default 30 000). */
  credentialCheckMs?: number;
  /** A subscriber with more unsent bytes is dropped (default 8 MiB). */
  maxBufferedBytes?: number;
  jwtSecret?: string;
  jwtIssuer?: string;
  jwtAudience?: string;
  /** Replaces local single-node ownership (tests play several nodes with it). */
  ownership?: Ownership;
  /**
   * Runs this server as one node of a cluster: actors are leased through Redis (Redlock plus a
   * fencing epoch), messages for actors other nodes own are forwarded to them, and commits fan
   * out to every node. Unset (default): a single node that owns every actor.
   */
  cluster?: ClusterOptions;
  logger?: Logger;
  /**
   * Also export prom-client's default Node process metrics (CPU, memory, event-loop lag, GC) at
   * `/metrics` (default false: their GC and event-loop observers cost about 10% throughput).
   */
  processMetrics?: boolean;
  /** The clock; tests may replace it. */
  now?: () => number;
  /** Lease of a task held by an agent, when neither the task nor its policy sets one (default 60 s). */
  leaseSeconds?: number;
  /** Strategy of auto-assignment when neither the request, the task nor a policy names one (default least_loaded). */
  defaultStrategy?: AssignmentStrategy;
  /** Redis shared by the nodes of a cluster (rate limits count there); unset: a single node. */
  redisUrl?: string;
  /** Rate limit settings: default budgets, Redis timeouts (see {@link RateLimitOptions}). */
  rateLimits?: RateLimitOptions;
  /** Default quota limits of every tenant that sets none (null or left out: unlimited). */
  quotaLimits?: QuotasOptions['defaults'];
  /** Limits of workspace documents: size, change rate, entries per call, compaction, documents in memory (see {@link DocumentLimits}). */
  documents?: Partial<DocumentLimits>;
  /** Deepest nesting of objects and arrays in params, params itself counting 1 (default 32). */
  maxJsonDepth?: number;
  /** Longest string anywhere in params, in UTF-16 code units (default 1 000 000). */
  maxStringLength?: number;
  /** An authenticated connection that sends nothing and answers no ping this long is closed with 4009 (default 600 000; 0 disables). */
  idleConnectionMs?: number;
  /** The most messages waiting in one actor's mailbox; beyond it calls get BUSY (default 1 000). */
  maxMailbox?: number;
  /** Calls of one tenant handled at once (default 256). */
  tenantConcurrency?: number;
  /** Calls of one tenant waiting for a slot; beyond it calls get BUSY (default 1 024). */
  tenantQueue?: number;
  /** Longest wait for a store read (default 5 000). */
  storeTimeoutMs?: number;
  /** Longest wait for a store commit or other write, whose outcome is then unknown (default 10 000). */
  storeCommitTimeoutMs?: number;
  /** Consecutive store failures that open its circuit breaker (default 5). */
  storeBreakerFailures?: number;
  /** How long the store's breaker stays open before a trial call (default 2 000). */
  storeBreakerHalfOpenMs?: number;
  /** WebSocket URL of a Stately inspector that live actors are streamed to (unset: none, at no cost). */
  statelyInspectUrl?: string;
}

/**
 * The id of an oversized request, if it appears near the start of the frame, so the error can
 * name it without parsing megabytes of JSON.
 */
function requestIdHint(data: RawData): string | number | null {
  const head = (Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer)).subarray(0, 256).toString();
  const m = /^\s*\{[^{}[\]]*?"id"\s*:\s*("(?:[^"\\]{0,128})"|-?\d{1,15})\s*[,}]/.exec(head);
  if (!m) return null;
  return m[1]!.startsWith('"') ? m[1]!.slice(1, -1) : Number(m[1]);
}

/** Frames larger than this many times the processing limit close the connection outright. */
const HARD_FRAME_FACTOR = 4;

/**
 * The Troupe server: HTTP endpoints (`/healthz`, `/readyz`, `/machines`, `/protocol.json`) and
 * the JSON-RPC 2.0 WebSocket endpoint `/v1`, around the actor runtime.
 *
 * @example
 * ```ts
 * const server = new TroupeServer({ store: new SqliteStore({ path: 'data/troupe.db' }) });
 * const { url } = await server.start();
 * ```
 */
export class TroupeServer {
  readonly app: App;
  readonly host: ActorHost;
  /** Tenant rules and policies; handlers ask it for validation, delegation, assignment and defaults. */
  readonly rules: RuleEngine;
  #opts: TroupeServerOptions;
  #http: http.Server;
  #wss: WebSocketServer;
  #timers: TimerService;
  #outbox: OutboxDispatcher;
  #handlers: Handlers;
  #guards: CallGuard[] = [];
  #conns = new Set<Connection>();
  #closing: Promise<void> | null = null;
  /** The store as every part of the server uses it: behind timeouts, retries and a circuit breaker. */
  #store: ResilientStore;
  #log: Logger;
  #maxFrame: number;
  #credentialCheck: NodeJS.Timeout | null = null;
  #tracer: Tracer;
  /** Read per message: creating child loggers only pays off when debug lines are written. */
  #debug: boolean;
  #inspector: StatelyInspector | null;
  /** The automerge-repo endpoint `/sync`. */
  #sync: SyncServer;

  /** This server's Prometheus metrics, served at `/metrics`. */
  readonly metrics: Metrics;
  /** This node's part in a cluster, or null on a single node. */
  readonly cluster: ClusterNode | null;

  constructor(opts: TroupeServerOptions) {
    this.#opts = opts;
    this.#log = opts.logger ?? createLogger('silent');
    this.#debug = this.#log.isLevelEnabled('debug');
    this.#tracer = trace.getTracer('troupe');
    this.metrics = new Metrics(
      {
        connections: () => this.#conns.size,
        activeActors: () => this.host.activeByKind(),
        mailboxDepth: () => this.host.mailboxDepth,
        breakers: () => [['store', this.#store.circuitGauge]],
      },
      { defaultMetrics: opts.processMetrics ?? false },
    );
    const metrics = this.metrics;
    this.#maxFrame = opts.maxFrameBytes ?? 1024 * 1024;
    const now = opts.now ?? Date.now;
    const store = (this.#store = new ResilientStore(traceStoreReads(opts.store), {
      readTimeoutMs: opts.storeTimeoutMs,
      writeTimeoutMs: opts.storeCommitTimeoutMs,
      breakerFailures: opts.storeBreakerFailures,
      halfOpenAfterMs: opts.storeBreakerHalfOpenMs,
      onStateChange: (circuit) =>
        this.#log[circuit.state === 'closed' ? 'info' : 'warn']({ dependency: 'store', ...circuit }, `store circuit breaker ${circuit.state}`),
    }));
    const cluster = (this.cluster = opts.cluster ? new ClusterNode({ ...opts.cluster, store, log: this.#log }) : null);
    // In a cluster, events of one tenant are committed on several nodes: subscribers read them
    // back from the store in position order instead of in the order they arrive.
    const hub = new SubscriptionHub({ store, maxBufferedBytes: opts.maxBufferedBytes, onOverflow: () => metrics.overflow(), ordered: cluster !== null });
    this.#inspector = opts.statelyInspectUrl ? new StatelyInspector({ url: opts.statelyInspectUrl, kinds: actorKinds, log: this.#log }) : null;
    this.host = new ActorHost({
      store,
      ownership: opts.ownership ?? cluster?.ownership ?? new LocalOwnership(store),
      ...(cluster ? { remote: cluster } : {}),
      onFenced: (kind) => {
        metrics.fenced(kind);
        cluster?.fenced();
      },
      kinds: [...actorKinds],
      idleMs: opts.idleMs,
      maxActive: opts.maxActiveActors,
      maxMailbox: opts.maxMailbox,
      onBusy: () => metrics.busy('mailbox'),
      now,
      onTimerScheduled: (at) => this.#timers.scheduled(at),
      onOutbox: (records) => this.#outbox.dispatch(records),
      onPassivated: (kind) => metrics.passivated(kind),
      onStoreCommit: (seconds) => metrics.storeCommit(seconds),
      inspect: this.#inspector?.inspect,
    });
    this.host.onCommit((events, topics, view) => hub.publish(events, topics, view));
    this.rules = new RuleEngine({ store });
    this.rules.attach(this.host);
    const presence = new Presence();
    // In a cluster, quota reservations and agents' slots are held where every node sees them.
    const shared = cluster ? new SharedReservations({ redis: cluster.bus.redis, prefix: cluster.prefix, log: this.#log }) : undefined;
    const directory = new AgentDirectory({
      store,
      onCapacity: (tenant) => assigner.kick(tenant),
      ...(shared ? { onRelease: (tenant: string, agent: string, taskId: string) => shared.releaseSlot(tenant, agent, taskId) } : {}),
    });
    directory.attach(this.host);
    const assigner = new Assigner({ host: this.host, directory, rules: this.rules, presence, now, log: this.#log, defaultStrategy: opts.defaultStrategy, ...(shared ? { slots: shared } : {}) });
    this.#timers = new TimerService({
      host: this.host,
      now,
      onFired: (lagMs) => metrics.timerLag(lagMs / 1000),
      // In a cluster each node also sees timers written by the others: look often, fire only our share.
      ...(cluster ? { pollMs: 1000 } : {}),
      // Timers that need a decision go to the service that makes it; the rest to their actors.
      deliver: async (t) => {
        if (cluster && !(await cluster.takes(t.stream))) throw new NotOurs();
        return t.kind === 'execution' && t.name === 'dispatch' ? dispatcher.deliver(t) : assigner.deliverTimer(t);
      },
    });
    this.#outbox = new OutboxDispatcher(this.host);
    this.app = {
      host: this.host,
      store,
      hub,
      auth: new Authenticator({ store, jwtSecret: opts.jwtSecret, jwtIssuer: opts.jwtIssuer, jwtAudience: opts.jwtAudience }),
      presence,
      log: this.#log,
      now,
      rules: this.rules,
      directory,
      assigner,
      leaseSeconds: opts.leaseSeconds ?? 60,
      rateLimits: new RateLimits({ redisUrl: opts.redisUrl ?? opts.cluster?.redisUrl, ...opts.rateLimits, store, host: this.host, log: this.#log }),
      quotas: new Quotas({
        host: this.host,
        log: this.#log,
        now,
        defaults: opts.quotaLimits,
        ...(shared ? { shared } : {}),
      }),
      audit: new AuditRecorder({ store, now, log: this.#log }),
      workspaces: new WorkspaceService({
        host: this.host,
        store,
        hub,
        now,
        log: this.#log,
        ...(cluster ? { presenceRelay: { publish: (m) => cluster.bus.broadcast('presence', m), alive: () => cluster.membership.alive, self: cluster.nodeId } } : {}),
      }),
      documents: new DocumentService({
        host: this.host,
        store,
        now,
        log: this.#log,
        limits: opts.documents,
        checkStoreVersion: cluster !== null,
        ...(cluster
          ? {
              owners: {
                ownerOf: (stream) => cluster.ownership.owner(stream),
                call: (node, write, args) => cluster.bus.request(node, 'document.write', { write, args }),
              },
            }
          : {}),
      }),
    };
    const dispatcher = new Dispatcher(this.app);
    this.#handlers = {
      ...sessionHandlers(this.app),
      ...agentHandlers(this.app),
      ...taskHandlers(this.app),
      ...assignmentHandlers(this.app),
      ...distributedHandlers(this.app),
      ...ruleHandlers(this.app, this.rules),
      ...workflowHandlers(this.app),
      ...workspaceHandlers(this.app),
      ...documentHandlers(this.app),
      ...executionHandlers(this.app),
      ...auditHandlers(this.app),
      ...fieldPolicyHandlers(this.app),
      ...rateLimitHandlers(this.app),
      ...quotaHandlers(this.app),
      ...inspectHandlers(this.app),
    };
    installGuards(this, this.app, opts);
    this.#sync = new SyncServer({ app: this.app, credentialCheckMs: opts.credentialCheckMs, maxBufferedBytes: opts.maxBufferedBytes });
    this.#http = http.createServer((req, res) => void this.#http_(req, res));
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: this.#maxFrame * HARD_FRAME_FACTOR });
    this.#http.on('upgrade', (req, socket, head) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/sync') return this.#sync.handleUpgrade(req, socket, head);
      if (url.pathname !== '/v1') {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
        return;
      }
      this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws, req));
    });
  }

  /** Starts listening; resolves with the bound port and the WebSocket URL. */
  async start(): Promise<{ port: number; url: string; httpUrl: string }> {
    if (this.cluster) {
      await this.cluster.attach(this.host);
      this.cluster.bus.onReconnect = () => {
        this.#log.warn('cluster bus reconnected: subscribers re-read their topics from the store');
        this.app.hub.refresh();
      };
      const documents = this.app.documents!;
      this.cluster.bus.handle('document.write', (p) => {
        const { write, args } = p as { write: DocumentWrite; args: unknown[] };
        return documents.applyForwarded(write, args);
      });
      const presence = this.app.workspaces!.presence;
      await this.cluster.bus.listen('presence', (m, from) => presence.receive(from, m as PresenceRelayMessage));
      this.cluster.bus.broadcast('presence', { t: 'hello' } satisfies PresenceRelayMessage);
      // Members present through a node that vanished leave; a node back from a pause tells its
      // members again (the others forgot them when it was gone).
      this.cluster.onNodesGone((nodes) => presence.nodesGone(nodes));
      this.cluster.onNodesJoined((nodes) => this.cluster!.bus.broadcast('presence', { t: 'sync', nodes } satisfies PresenceRelayMessage));
    }
    // Other nodes hold connections of their own: only a single node may assume none are left.
    else await this.#resetAgentConnections();
    // A cluster node fires timers only once it knows the other nodes (it fires its share).
    if (!this.cluster) await this.#startDeliveries();
    await new Promise<void>((resolve, reject) => {
      this.#http.once('error', reject);
      this.#http.listen(this.#opts.port ?? 0, this.#opts.host ?? '127.0.0.1', () => resolve());
    });
    this.#credentialCheck = setInterval(() => void this.checkCredentials(), this.#opts.credentialCheckMs ?? 30_000);
    this.#credentialCheck.unref();
    const { port } = this.#http.address() as AddressInfo;
    const host = this.#opts.host ?? '127.0.0.1';
    const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
    const url = `ws://${shown}:${port}/v1`;
    if (this.cluster) {
      await this.cluster.join(this.#opts.cluster?.advertiseUrl ?? url);
      await this.#startDeliveries();
    }
    return { port, url, httpUrl: `http://${shown}:${port}` };
  }

  /** Starts firing durable timers and delivering what the outbox holds. */
  async #startDeliveries(): Promise<void> {
    await this.#timers.start();
    await this.#outbox.start();
  }

  /** Open WebSocket connections. */
  get connectionCount(): number {
    return this.#conns.size;
  }

  /**
   * Stops accepting, tells clients, closes connections, lets running turns finish, and closes
   * the store. Safe to call twice.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#credentialCheck) clearInterval(this.#credentialCheck);
      this.#timers.close();
      this.#outbox.close();
      for (const c of this.#conns) {
        c.notify({ jsonrpc: '2.0', method: SESSION_CLOSING, params: { reason: 'The server is shutting down.' } });
        c.close(CloseCodes.GOING_AWAY, 'server shutting down');
      }
      this.#wss.close();
      this.#sync.close();
      await new Promise<void>((resolve) => {
        this.#http.close(() => resolve());
        this.#http.closeAllConnections();
      });
      await this.host.close();
      await this.cluster?.close();
      await this.#inspector?.close();
      // Refusals of the last moments are written before the store closes.
      await this.app.audit?.flush();
      await this.app.rateLimits?.close();
      await this.app.store.close();
    })();
    return this.#closing;
  }

  /**
   * Closes (code 4003) every connection whose API key was revoked or whose JWT expired since it
   * authenticated. Runs every `credentialCheckMs`; returns how many were closed.
   */
  async checkCredentials(): Promise<number> {
    let closed = 0;
    const now = this.app.now();
    for (const conn of [...this.#conns]) {
      if (!conn.credential || conn.closed) continue;
      const reason = await this.app.auth.revoked(conn.credential, now).catch(() => null);
      if (!reason) continue;
      conn.notify({ jsonrpc: '2.0', method: SESSION_CLOSING, params: { reason } });
      conn.close(CloseCodes.CREDENTIAL_REVOKED, reason);
      closed++;
    }
    return closed;
  }

  /** After a restart no connection is open: agents recorded as connected are reset. */
  async #resetAgentConnections(): Promise<void> {
    // Tenants known from agent streams, not the tenants table: JWT tenants are never listed there.
    const tenants = new Set((await this.app.store.listStreams('agent')).map((s) => addressOf(s).tenant));
    for (const tenant of tenants) {
      let cursor: string | undefined;
      do {
        const page = await this.app.store.queryViews(tenant, 'agent', { status: ['online', 'busy', 'draining'], limit: 500, cursor });
        for (const v of page.items) {
          await this.host.send({ tenant, kind: 'agent', id: v.id }, { type: 'agent.connectionsReset' }, { principal: 'system' });
        }
        cursor = page.nextCursor ?? undefined;
      } while (cursor);
    }
  }

  async #http_(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: 'Only GET is supported here.' });
    if (url.pathname === '/viz' || url.pathname.startsWith('/viz/')) return serveViz(req, res, url.pathname);
    if (url.pathname === '/machines' || url.pathname.startsWith('/machines/')) return serveMachines(res, url, actorKinds);
    switch (url.pathname) {
      case '/healthz':
        return json(200, { status: 'ok' });
      case '/readyz':
        try {
          await this.app.store.ping();
          // Rate limits count in each node's memory while Redis is away: degraded, still ready.
          const redis = this.#redisReadiness();
          const status = this.#closing ? 'closing' : redis.redis === 'unavailable' ? 'degraded' : 'ready';
          return json(this.#closing ? 503 : 200, { status, store: 'ok', ...redis });
        } catch (e) {
          // An open breaker refuses the ping at once, and is reported with when it tries again.
          const circuit = this.#store.circuit;
          return json(503, { status: 'unavailable', store: (e as Error).message, ...(circuit.state === 'closed' ? {} : { breaker: circuit }), ...this.#redisReadiness() });
        }
      case '/metrics': {
        const registry = this.metrics.registry;
        const text = await registry.metrics();
        res.writeHead(200, { 'content-type': registry.contentType });
        res.end(text);
        return;
      }
      case '/cluster':
        return this.#clusterEndpoint(req, json);
      case '/protocol.json':
        return json(200, protocolJsonSchema());
      case '/':
        return json(200, { name: 'troupe', websocket: '/v1', endpoints: ['/healthz', '/readyz', '/metrics', '/machines', '/protocol.json', '/viz', '/cluster'] });
      default:
        return json(404, { error: `No such endpoint: ${url.pathname}` });
    }
  }

  /**
   * `GET /cluster` for admins (`Authorization: Bearer <admin key or JWT>`): the live nodes, the
   * actors each holds by kind, and this node's routing counters.
   */
  async #clusterEndpoint(req: http.IncomingMessage, json: (status: number, body: unknown) => void): Promise<void> {
    const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
    if (!m) return json(401, { error: 'Send "Authorization: Bearer <token>" of an admin principal.' });
    let principal: Principal;
    try {
      principal = (await this.app.auth.verify(m[1]!.trim())).principal;
    } catch (e) {
      return json(401, { error: e instanceof ProtocolError ? e.message : 'authentication failed' });
    }
    if (!principal.roles.includes('admin')) return json(403, { error: `Only admin principals may see the cluster; you are ${principal.roles.join(', ')}.` });
    if (!this.cluster) return json(200, { mode: 'single', nodes: [{ id: 'local', self: true, actors: Object.fromEntries(this.host.activeByKind()) }] });
    return json(200, { mode: 'cluster', ...(await this.cluster.view()) });
  }

  /** What `/readyz` says of Redis: nothing without `redisUrl`, else whether rate limits count there. */
  #redisReadiness(): { redis?: 'ok' | 'unavailable'; rateLimits?: string; cluster?: { node: string; nodesAlive: number; leasesHeld: number } } {
    if (!this.#opts.redisUrl && !this.cluster) return {};
    const backend = this.app.rateLimits?.backend;
    const cluster = this.cluster
      ? { cluster: { node: this.cluster.nodeId, nodesAlive: this.cluster.membership.alive.length, leasesHeld: this.cluster.ownership.heldCount } }
      : {};
    return backend === 'redis' ? { redis: 'ok', ...cluster } : { redis: 'unavailable', rateLimits: backend ?? 'memory-fallback', ...cluster };
  }

  #accept(ws: WebSocket, req: http.IncomingMessage): void {
    const conn = new Connection(randomUUID(), ws);
    this.#conns.add(conn);
    const grace = setTimeout(() => {
      if (!conn.principal) {
        conn.notify({ jsonrpc: '2.0', method: SESSION_CLOSING, params: { reason: 'Not authenticated in time; call session.authenticate first.' } });
        conn.close(CloseCodes.UNAUTHENTICATED, 'authentication required');
      }
    }, this.#opts.authGraceMs ?? 10_000);
    grace.unref();

    // Frames that arrive while the header credential is being checked wait for it, in order;
    // after that each frame is handled as it arrives, so pipelined requests run concurrently.
    let gate: Promise<void> | null = null;
    const header = req.headers.authorization;
    if (header) {
      const m = /^Bearer\s+(.+)$/i.exec(header);
      gate = (m ? this.app.auth.verify(m[1]!.trim()) : Promise.reject(new ProtocolError('UNAUTHENTICATED', 'Use "Authorization: Bearer <token>".')))
        .then((v) => this.#authenticated(conn, v.principal, v.credential))
        .catch((e: unknown) => {
          const reason = e instanceof ProtocolError ? e.message : 'authentication failed';
          conn.notify({ jsonrpc: '2.0', method: SESSION_CLOSING, params: { reason } });
          conn.close(CloseCodes.UNAUTHENTICATED, reason);
        })
        .finally(() => {
          gate = null;
        });
    }

    ws.on('message', (data: RawData, isBinary: boolean) => {
      const size = (data as Buffer).length ?? 0;
      const handle = () =>
        this.#onFrame(conn, data, isBinary, size).catch((e: unknown) => {
          this.#log.error({ err: e, conn: conn.id }, 'frame handling failed');
        });
      if (gate) void gate.then(handle);
      else void handle();
    });
    ws.on('close', () => {
      clearTimeout(grace);
      this.#conns.delete(conn);
      this.app.hub.drop(conn);
      void this.#disconnected(conn);
    });
    ws.on('error', (e) => this.#log.debug({ err: e, conn: conn.id }, 'socket error'));
  }

  async #authenticated(conn: Connection, p: Principal, credential: Credential): Promise<void> {
    // The socket may have closed while the credential was checked: its close handler has run
    // already, so nothing recorded now would ever be undone.
    if (conn.closed) return;
    if (conn.principal) {
      if (conn.principal.tenantId !== p.tenantId || conn.principal.principalId !== p.principalId) {
        throw new ProtocolError('FORBIDDEN', 'This connection is already authenticated as another principal; open a new connection.');
      }
      return;
    }
    conn.principal = p;
    conn.credential = credential;
    if (this.#opts.idleConnectionMs !== 0) new IdleTimeout(conn, this.#opts.idleConnectionMs ?? 600_000).start();
    this.app.presence.add(p.tenantId, p.principalId);
    this.cluster?.connection(p.tenantId, p.principalId, 1);
    await this.#agentEvent(p, 'agent.connected');
  }

  async #disconnected(conn: Connection): Promise<void> {
    const p = conn.principal;
    if (!p) return;
    this.app.workspaces?.disconnected(conn);
    this.app.presence.remove(p.tenantId, p.principalId);
    this.cluster?.connection(p.tenantId, p.principalId, -1);
    await this.#agentEvent(p, 'agent.disconnected').catch(() => {});
  }

  /**
   * Tells the principal's agent actor about a connection change. It goes through the actor's
   * mailbox even when no agent is registered yet, so it is ordered after a registration that is
   * still being written; principals that are not agents just get NOT_FOUND, which is ignored.
   */
  async #agentEvent(p: Principal, type: 'agent.connected' | 'agent.disconnected'): Promise<void> {
    await this.host
      .send({ tenant: p.tenantId, kind: 'agent', id: p.principalId }, { type }, { principal: p.principalId })
      .catch((e: unknown) => {
        if (!(e instanceof ProtocolError && e.reason === 'NOT_FOUND')) this.#log.warn({ err: e }, `${type} not recorded`);
      });
  }

  async #onFrame(conn: Connection, data: RawData, isBinary: boolean, size: number): Promise<void> {
    if (conn.closed) return;
    if (isBinary) {
      this.metrics.refused('', 'INVALID_REQUEST');
      conn.reply([], errorResponse(null, new ProtocolError('INVALID_REQUEST', 'Frames must be UTF-8 text containing JSON, not binary.')));
      return;
    }
    if (size > this.#maxFrame) {
      this.metrics.refused('', 'PAYLOAD_TOO_LARGE');
      conn.reply(
        [],
        errorResponse(
          requestIdHint(data),
          new ProtocolError('PAYLOAD_TOO_LARGE', `The frame has ${size} bytes; the limit is ${this.#maxFrame}. Split the request.`, {
            limitBytes: this.#maxFrame,
            sizeBytes: size,
          }),
        ),
      );
      return;
    }
    const frame = decodeFrame(data.toString());
    const ids: string[] = [];
    const run = async (entry: (typeof frame.entries)[number]): Promise<RpcResponse | null> => {
      if (!entry.ok) {
        this.metrics.refused('', entry.error.reason);
        return errorResponse(entry.id, entry.error);
      }
      const req = entry.request;
      const correlationId = conn.correlationOf(req.id ?? randomUUID());
      ids.push(correlationId);
      conn.begin(correlationId);
      return this.#handle(conn, req, correlationId);
    };
    // Whatever happens, every request begun here gets its reply slot released, so notifications
    // held behind it (and the connection's flow control) never wait forever.
    let response: RpcResponse | RpcResponse[] | null = null;
    try {
      if (!frame.batch) {
        response = await run(frame.entries[0]);
        return;
      }
      const responses = (await Promise.all(frame.entries.map(run))).filter((r): r is RpcResponse => r !== null);
      response = responses.length > 0 ? responses : null;
    } finally {
      conn.reply(ids, response);
    }
  }

  /**
   * Handles one request inside an `rpc <method>` span, counting and timing it; refusals are
   * logged at warn, server failures at error, each with the connection, method and correlation id.
   */
  #handle(conn: Connection, req: RpcRequest, correlationId: string): Promise<RpcResponse | null> {
    const method = methodLabel(req.method);
    const started = performance.now();
    return this.#tracer.startActiveSpan(`rpc ${method}`, { kind: SpanKind.SERVER, attributes: { method } }, async (span: Span) => {
      let log: Logger | null = null;
      const messageLog = () => (log ??= this.#log.child({ conn: conn.id, method, correlationId }));
      if (this.#debug) messageLog().debug('handling');
      try {
        const result = await this.#call(conn, req, correlationId);
        span.setAttribute('outcome', 'ok');
        return req.id === undefined ? null : resultResponse(req.id, result);
      } catch (e) {
        const error = this.#toProtocolError(e, req.method, messageLog());
        this.metrics.error(method, error.reason);
        this.app.audit?.refused(conn.principal, req.method, req.params, error, correlationId);
        // A client going too fast stops being read until it may send again (at most a second),
        // so its next frames cost nothing instead of being refused one by one.
        if (error.reason === 'RATE_LIMITED' && typeof error.data.retryAfterMs === 'number') conn.throttle(Math.min(error.data.retryAfterMs, 1000));
        span.setAttribute('outcome', error.reason);
        span.setStatus({ code: SpanStatusCode.ERROR, message: error.reason });
        return req.id === undefined ? null : errorResponse(req.id, error);
      } finally {
        // Read at the end: session.authenticate sets the principal while it runs.
        if (conn.principal) span.setAttributes({ tenant: conn.principal.tenantId, principal: conn.principal.principalId });
        this.metrics.message(method, (performance.now() - started) / 1000);
        span.end();
      }
    });
  }

  async #call(conn: Connection, req: RpcRequest, correlationId: string): Promise<unknown> {
    const method = req.method;
    if (!isMethodName(method)) {
      throw new ProtocolError('METHOD_NOT_FOUND', `There is no method "${method}". GET /protocol.json lists them all.`, { method });
    }
    // An unauthenticated connection can do nothing else, not even have its params checked.
    const principal = conn.principal;
    if (!principal && method !== 'ping' && method !== 'session.authenticate') {
      throw new ProtocolError('UNAUTHENTICATED', 'Authenticate first: send an Authorization header on connect or call session.authenticate.');
    }
    for (const g of this.#guards) g.checkParams?.(method, req.params, principal);
    const parsed = MethodSchemas[method].safeParse(req.params ?? {});
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
      const first = issues[0]!;
      throw new ProtocolError('INVALID_PARAMS', `Invalid params for ${method}: ${first.path || '(params)'} ${first.message}.`, { method, issues });
    }
    const params = parsed.data as Record<string, unknown>;
    if (method === 'ping') return { pong: true, time: new Date(this.app.now()).toISOString() };
    if (method === 'session.authenticate') {
      const v = await this.app.auth.verify(params.token as string);
      await this.#authenticated(conn, v.principal, v.credential);
      // Re-authenticating as the same principal keeps the connection's first credential.
      return conn.principal ?? v.principal;
    }
    const handler = this.#handlers[method] as Handler<MethodName> | undefined;
    if (!handler) throw new ProtocolError('METHOD_NOT_FOUND', `The method "${method}" is not available on this server.`, { method });
    // Every method left needs the principal checked above.
    const ctx: AuthedContext = { principal: principal!, conn, correlationId };
    const releases: (() => void)[] = [];
    try {
      for (const g of this.#guards) {
        const release = await g.beforeCall?.(ctx, method, params);
        if (release) releases.push(release);
      }
      let result = await handler(ctx, params as never);
      for (const g of this.#guards) if (g.afterCall) result = (await g.afterCall(ctx, method, result)) as never;
      return result;
    } finally {
      for (const r of releases.reverse()) r();
    }
  }

  /**
   * Adds a guard to every call (rate limits, quotas, bulkheads, input checks, field
   * permissions...). Guards run in the order they were added.
   */
  use(guard: CallGuard): void {
    this.#guards.push(guard);
  }

  #toProtocolError(e: unknown, method: string, log: Logger): ProtocolError {
    if (e instanceof ProtocolError) {
      if (e.reason === 'INTERNAL') log.error({ err: e }, 'handler failed');
      // The message may quote client input (an unknown method name): keep the line bounded.
      else log.warn({ reason: e.reason, code: e.code }, `refused: ${e.message.slice(0, 300)}`);
      return e;
    }
    // pino's err serializer keeps the stack.
    log.error({ err: e }, 'handler failed');
    return new ProtocolError('INTERNAL', `The server failed while handling ${method}; read the resource to see whether it changed before retrying.`);
  }
}

/** A timer another node of the cluster fires: left for it, and looked at again later. */
class NotOurs extends Error {
  readonly retryAfterMs = 1000;
  constructor() {
    super('another node fires this timer');
  }
}

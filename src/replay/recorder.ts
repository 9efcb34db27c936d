import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { connect } from '../../protocol/client.js';
import type { Principal } from '../../protocol/model.js';
import type { ClientSpec, Fixture, Json, SendStep, Step } from './fixture.js';
import { isTimestamp, isUuid } from './matchers.js';

/**
 * The recorder: a WebSocket proxy in front of a Troupe server that turns the conversation of the
 * clients connected through it into a replay fixture. Generated values are generalised: UUIDs
 * become `"$uuid"`, timestamps `"$timestamp"`, and a generated value that is used again — sent
 * back by the client (a task id, a subscription position, a cursor), or a UUID that appears in a
 * later message — becomes `"$capture:NAME"` where it first arrives and `"$ref:NAME"` afterwards.
 */

/** Options of {@link recordSession}. */
export interface RecordOptions {
  /** The server's WebSocket URL, e.g. `ws://127.0.0.1:7420/v1`. */
  url: string;
  /** The API key (or JWT) the proxy authenticates with; clients connect to the proxy without one. */
  key: string;
  /** The fixture's name (default: "recorded session <time>"). */
  name?: string;
  /** The proxy's port (default 0, a free one). */
  port?: number;
  /** The proxy's interface (default 127.0.0.1). */
  host?: string;
}

/** A recording in progress. */
export interface Recording {
  /** Where clients connect instead of the server. */
  readonly proxyUrl: string;
  /** The principal the key stands for; the fixture declares its clients with it. */
  readonly principal: Principal;
  /** Resolves once every client that connected has disconnected again. */
  readonly finished: Promise<void>;
  /** Stops the proxy, closing open connections, and returns the fixture. Safe to call twice. */
  stop(): Promise<Fixture>;
}

/** One thing that happened on the proxy, in order. */
export type TranscriptEntry =
  | { type: 'connect'; client: string; at: number }
  | { type: 'send'; client: string; at: number; data: unknown; raw: string }
  | { type: 'receive'; client: string; at: number; data: unknown }
  | { type: 'disconnect'; client: string; at: number }
  | { type: 'closed'; client: string; at: number; code: number };

/** An expect that waited longer than this since the previous step gets its own timeout. */
const SLOW_MS = 4000;

/**
 * Starts a recording proxy. Connect clients to `proxyUrl` (without credentials: the proxy adds
 * `Authorization: Bearer <key>` upstream), then call `stop()` — or wait for `finished` — to get
 * the fixture.
 *
 * @example
 * ```ts
 * const rec = await recordSession({ url: 'ws://127.0.0.1:7420/v1', key });
 * const client = await connect(rec.proxyUrl);
 * await client.call('ping');
 * await client.close();
 * await rec.finished;
 * fs.writeFileSync('ping.json', JSON.stringify(await rec.stop(), null, 2));
 * ```
 */
export async function recordSession(opts: RecordOptions): Promise<Recording> {
  const principal = await whoami(opts.url, opts.key);
  const transcript: TranscriptEntry[] = [];
  const sockets = new Set<WebSocket>();
  let connections = 0;
  let open = 0;
  let stopping = false;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));

  const wss = new WebSocketServer({ port: opts.port ?? 0, host: opts.host ?? '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    wss.once('listening', () => resolve());
    wss.once('error', reject);
  });

  wss.on('connection', (down) => {
    if (stopping) return down.close(1001, 'recorder stopping');
    const client = connections === 0 ? 'client' : `client${connections + 1}`;
    connections++;
    open++;
    const record = (e: TranscriptEntry) => {
      if (!stopping) transcript.push(e);
    };
    record({ type: 'connect', client, at: Date.now() });
    const up = new WebSocket(opts.url, { headers: { authorization: `Bearer ${opts.key}` } });
    sockets.add(down).add(up);
    const early: string[] = [];
    let upClosedFirst = false;

    down.on('message', (data) => {
      const raw = data.toString();
      let parsed: unknown = undefined;
      try {
        parsed = JSON.parse(raw);
      } catch {
        // Recorded as sendRaw.
      }
      record({ type: 'send', client, at: Date.now(), data: parsed, raw });
      if (up.readyState === WebSocket.OPEN) up.send(raw);
      else early.push(raw);
    });
    up.on('open', () => {
      for (const raw of early.splice(0)) up.send(raw);
    });
    up.on('message', (data) => {
      const raw = data.toString();
      let parsed: unknown = raw;
      try {
        parsed = JSON.parse(raw);
      } catch {
        // Kept as text.
      }
      record({ type: 'receive', client, at: Date.now(), data: parsed });
      if (down.readyState === WebSocket.OPEN) down.send(raw);
    });
    up.on('close', (code, reason) => {
      sockets.delete(up);
      if (down.readyState !== WebSocket.OPEN) return;
      upClosedFirst = true;
      record({ type: 'closed', client, at: Date.now(), code });
      down.close(sendableCode(code), reason.toString());
    });
    up.on('error', () => {
      if (down.readyState === WebSocket.OPEN) down.close(1011, 'upstream unavailable');
    });
    down.on('error', () => down.terminate());
    down.on('close', () => {
      sockets.delete(down);
      if (!upClosedFirst) record({ type: 'disconnect', client, at: Date.now() });
      if (up.readyState === WebSocket.OPEN || up.readyState === WebSocket.CONNECTING) up.close(1000);
      open--;
      if (open === 0) finish();
    });
  });

  const { port } = wss.address() as AddressInfo;
  const host = opts.host ?? '127.0.0.1';
  let stopped: Promise<Fixture> | null = null;
  return {
    proxyUrl: `ws://${host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host}:${port}/v1`,
    principal,
    finished,
    stop() {
      stopped ??= (async () => {
        stopping = true;
        for (const s of sockets) s.close(1001, 'recorder stopping');
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        return fixtureFromTranscript(transcript, principal, { name: opts.name, key: opts.key, source: opts.url });
      })();
      return stopped;
    },
  };
}

async function whoami(url: string, key: string): Promise<Principal> {
  let client;
  try {
    client = await connect(url, { token: key, reconnect: false, callTimeoutMs: 10_000 });
  } catch (e) {
    throw new Error(`cannot connect to ${url}: ${(e as Error).message}`);
  }
  try {
    const me = await client.call('session.whoami');
    return { tenantId: me.tenantId, principalId: me.principalId, roles: me.roles };
  } catch (e) {
    throw new Error(`the key was not accepted by ${url}: ${(e as Error).message}`);
  } finally {
    await client.close();
  }
}

/** Close codes a server may not send (1005, 1006, 1015 are reserved for "no code" and TLS). */
function sendableCode(code: number): number {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999) ? code : 1011;
}

const UUID_INSIDE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i;
const TIME_INSIDE = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/;
/** Numbers under these keys are feed positions, which depend on what the store held before. */
const POSITION_KEYS = new Set(['position', 'lastPosition']);
/** Strings under these keys are opaque tokens minted by the server. */
const TOKEN_KEYS = new Set(['nextCursor']);

type Generated = 'uuid' | 'timestamp' | 'string' | 'number';

/** Whether a received value is minted by the server (and how to generalise it), or null. */
function generated(v: unknown, key: string | number | null): Generated | null {
  if (typeof v === 'number') return typeof key === 'string' && POSITION_KEYS.has(key) ? 'number' : null;
  if (typeof v !== 'string') return null;
  if (isUuid(v)) return 'uuid';
  if (isTimestamp(v)) return 'timestamp';
  if (UUID_INSIDE.test(v) || TIME_INSIDE.test(v) || (typeof key === 'string' && TOKEN_KEYS.has(key))) return 'string';
  return null;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function escapeDollar(s: string): string {
  return s.startsWith('$') ? `$${s}` : s;
}

/**
 * A capture name from where a value was first seen: `taskId` → `task`, `event.id` → `event`,
 * `result.id` (or `result.items[0].id`) of `task.create` → `task`.
 */
function nameFor(key: string | number | null, parent: string | number | null, method: string | undefined): string {
  let base = typeof key === 'string' ? key : 'value';
  if (base === 'id') {
    if (typeof parent === 'string' && parent !== 'result' && parent !== 'params') base = parent;
    else if (method) base = method === 'subscribe' ? 'subscription' : method.split('.')[0]!;
  } else if (base.endsWith('Id') && base.length > 2) base = base.slice(0, -2);
  base = base.replace(/[^A-Za-z0-9_.-]/g, '_');
  return base === 'token' ? 'token_' : base;
}

/**
 * Turns a proxy transcript into a fixture for one principal (pure; {@link recordSession} uses it).
 * Every connection becomes a client with the principal's identity.
 */
export function fixtureFromTranscript(
  transcript: readonly TranscriptEntry[],
  principal: Principal,
  opts: { name?: string; key?: string; source?: string } = {},
): Fixture {
  const clients: Record<string, ClientSpec> = {};
  const steps: Step[] = [];
  /** Captured value (as JSON) → name. */
  const captured = new Map<string, string>();
  const used = new Set<string>();
  /** Values the client sent before the server did: the client's own, so deterministic. */
  const clientOwned = new Set<string>();
  /** Request id → method, per client, to name captures. */
  const methods = new Map<string, string>();

  /**
   * Where each value is last used: strings and resume positions the client sends, and UUIDs in
   * any message (the same UUID twice is the same thing, so the fixture checks that it is).
   */
  const lastUse = new Map<string, number>();
  transcript.forEach((e, i) => {
    if (e.type === 'send' && e.data !== undefined) {
      walkValues(e.data, null, (v, key) => {
        if (typeof v === 'string' || key === 'fromPosition') lastUse.set(JSON.stringify(v), i);
      });
    }
    if (e.type === 'receive') walkValues(e.data, null, (v) => isUuid(v) && lastUse.set(JSON.stringify(v), i));
  });

  const generaliseReceived = (value: unknown, index: number, method: string | undefined): Json => {
    // `parent` is the nearest enclosing object key, skipping array indexes.
    const go = (v: unknown, key: string | number | null, parent: string | number | null): Json => {
      if (Array.isArray(v)) return v.map((x, i) => go(x, i, key));
      if (isRecord(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, go(x, k, typeof key === 'number' ? parent : key)]));
      const g = generated(v, key);
      const json = JSON.stringify(v);
      if (g && !clientOwned.has(json)) {
        const name = captured.get(json);
        if (name) return `$ref:${name}`;
        if ((lastUse.get(json) ?? -1) > index) {
          const base = nameFor(key, parent, method);
          let n = base;
          for (let i = 2; used.has(n); i++) n = `${base}${i}`;
          used.add(n);
          captured.set(json, n);
          return `$capture:${n}`;
        }
        return g === 'uuid' ? '$uuid' : g === 'timestamp' ? '$timestamp' : g === 'number' ? '$number' : '$string';
      }
      return typeof v === 'string' ? escapeDollar(v) : (v as Json);
    };
    return go(value, null, null);
  };

  const generaliseSent = (value: unknown, client: string): Json => {
    const go = (v: unknown, key: string | number | null, parent: Record<string, unknown> | null): Json => {
      if (Array.isArray(v)) return v.map((x, i) => go(x, i, null));
      if (isRecord(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, go(x, k, v)]));
      if (opts.key !== undefined && v === opts.key) return `$ref:token.${client}`;
      if (key === 'token' && parent && typeof v === 'string') return `$ref:token.${client}`;
      const json = JSON.stringify(v);
      const name = captured.get(json);
      if (name && (typeof v === 'string' || key === 'fromPosition')) return `$ref:${name}`;
      if (typeof v === 'string') {
        if (generated(v, key)) clientOwned.add(json);
        return escapeDollar(v);
      }
      return v as Json;
    };
    return go(value, null, null);
  };

  let previousAt = transcript[0]?.at ?? 0;
  transcript.forEach((e, index) => {
    const gap = e.at - previousAt;
    previousAt = e.at;
    switch (e.type) {
      case 'connect':
        clients[e.client] = { tenant: principal.tenantId, principal: principal.principalId, roles: principal.roles };
        if (index > 0) {
          clients[e.client]!.connect = false;
          steps.push({ client: e.client, connect: true });
        }
        return;
      case 'send':
        for (const m of Array.isArray(e.data) ? e.data : [e.data]) {
          if (isRecord(m) && m.id !== undefined && typeof m.method === 'string') methods.set(`${e.client}\n${JSON.stringify(m.id)}`, m.method);
        }
        if (e.data !== undefined && (isRecord(e.data) || Array.isArray(e.data))) {
          steps.push({ client: e.client, send: generaliseSent(e.data, e.client) as SendStep['send'] });
        } else {
          steps.push({ client: e.client, sendRaw: e.raw });
        }
        return;
      case 'receive': {
        const first = Array.isArray(e.data) ? e.data[0] : e.data;
        const method = isRecord(first)
          ? first.id !== undefined && first.id !== null
            ? methods.get(`${e.client}\n${JSON.stringify(first.id)}`)
            : typeof first.method === 'string'
              ? first.method
              : undefined
          : undefined;
        const step: Step = { client: e.client, expect: generaliseReceived(e.data, index, method) };
        if (gap > SLOW_MS) step.timeoutMs = Math.ceil((gap * 2) / 1000) * 1000;
        steps.push(step);
        return;
      }
      case 'closed':
        steps.push({ client: e.client, expectClose: { code: e.code } });
        return;
      case 'disconnect':
        // The last disconnects end the recording; earlier ones are part of the conversation.
        if (transcript.slice(index + 1).some((x) => x.type !== 'disconnect')) steps.push({ client: e.client, disconnect: true });
        return;
    }
  });

  return {
    name: opts.name ?? `recorded session ${new Date(transcript[0]?.at ?? Date.now()).toISOString()}`,
    description: `Recorded${opts.source ? ` from ${opts.source}` : ''} as ${principal.principalId}@${principal.tenantId}.`,
    clients,
    steps,
  };
}

function walkValues(v: unknown, key: string | number | null, fn: (v: unknown, key: string | number | null) => void): void {
  if (Array.isArray(v)) v.forEach((x, i) => walkValues(x, i, fn));
  else if (isRecord(v)) for (const [k, x] of Object.entries(v)) walkValues(x, k, fn);
  else fn(v, key);
}

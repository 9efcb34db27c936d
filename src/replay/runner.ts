import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { SqliteStore } from '../storage/SqliteStore.js';
import { TroupeServer } from '../server/TroupeServer.js';
import type { ClientSpec, ExpectCloseStep, ExpectNoneStep, ExpectStep, Fixture, Json, ServerSpec, Step } from './fixture.js';
import { stepKind } from './fixture.js';
import { match, show, substitute, type MatchResult } from './matchers.js';

/** Options of {@link runFixture}; durations in milliseconds. */
export interface RunOptions {
  /** Timeout of `expect` and `expectClose` steps that give none (default 5000). */
  defaultTimeoutMs?: number;
  /** Called with every frame sent (`→`) or received (`←`) and every step, for `--verbose`. */
  trace?: (line: string) => void;
}

/** What a passing fixture did. */
export interface RunResult {
  name: string;
  steps: number;
  durationMs: number;
}

/** The default wait of `expect` and `expectClose`. */
export const DEFAULT_TIMEOUT_MS = 5000;

/**
 * A fixture that failed: says which step, what it expected and what the client received.
 * `message` is the full human-readable report.
 */
export class ReplayFailure extends Error {
  readonly fixture: string;
  /** Index into `steps`, or -1 when the failure happened before the first step. */
  readonly stepIndex: number;
  readonly step: Step | null;
  constructor(fixture: string, stepIndex: number, step: Step | null, detail: string) {
    const where = step ? `steps[${stepIndex}] failed: ` : '';
    const stepLine = step ? `\n  step: ${JSON.stringify(step)}` : '';
    super(`${where}${detail.split('\n')[0]}${stepLine}${indentRest(detail)}`);
    this.name = 'ReplayFailure';
    this.fixture = fixture;
    this.stepIndex = stepIndex;
    this.step = step;
  }
}

function indentRest(detail: string): string {
  const rest = detail.split('\n').slice(1);
  return rest.length ? `\n${rest.map((l) => (l ? `  ${l}` : l)).join('\n')}` : '';
}

/** Thrown inside a step; becomes a {@link ReplayFailure} with the step attached. */
class StepFailed extends Error {}

function pretty(v: unknown, indent: string): string {
  return (typeof v === 'string' ? v : JSON.stringify(v, null, 2)).split('\n').map((l) => indent + l).join('\n');
}

interface Received {
  /** The parsed frame, or the text when it is not JSON. */
  data: unknown;
}

/** One fixture client: an API key, at most one live WebSocket, and the queue of unconsumed messages. */
class ReplayClient {
  readonly name: string;
  readonly spec: ClientSpec;
  readonly key: string;
  #ws: WebSocket | null = null;
  #queue: Received[] = [];
  #closed: { code: number; reason: string } | null = null;
  #wakers = new Set<() => void>();
  #trace: ((line: string) => void) | undefined;

  constructor(name: string, spec: ClientSpec, key: string, trace?: (line: string) => void) {
    this.name = name;
    this.spec = spec;
    this.key = key;
    this.#trace = trace;
  }

  get connected(): boolean {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  /** How the last connection ended, while no connection is open. */
  get closeInfo(): { code: number; reason: string } | null {
    return this.#closed;
  }

  get queue(): readonly Received[] {
    return this.#queue;
  }

  /** Opens a connection, authenticating by header unless the client says otherwise. */
  async connect(url: string): Promise<void> {
    const headers: Record<string, string> = {};
    if ((this.spec.auth ?? 'header') === 'header') headers.authorization = `Bearer ${this.key}`;
    const ws = new WebSocket(url, { headers });
    this.#ws = ws;
    this.#closed = null;
    ws.on('message', (data) => {
      const text = data.toString();
      this.#trace?.(`${this.name} ← ${text}`);
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Kept as text: a fixture can match it with a string pattern.
      }
      this.#queue.push({ data: parsed });
      this.#wake();
    });
    ws.on('close', (code, reason) => {
      if (this.#ws !== ws) return;
      this.#closed = { code, reason: reason.toString() };
      this.#trace?.(`${this.name} closed ${code} ${reason.toString()}`);
      this.#wake();
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      // After the open, socket errors end in a close event, which is what steps look at.
      ws.on('error', (e) => reject(new StepFailed(`client ${this.name} could not connect to ${url}: ${e.message}`)));
    });
  }

  send(text: string): void {
    if (!this.connected) {
      const closed = this.#closed ? ` (${this.#closeText()})` : '';
      throw new StepFailed(`client ${this.name} is not connected${closed}; add a { "client": "${this.name}", "connect": true } step first`);
    }
    this.#trace?.(`${this.name} → ${text}`);
    this.#ws!.send(text);
  }

  /** Closes the connection normally and waits for the close handshake. */
  async disconnect(): Promise<void> {
    const ws = this.#ws;
    if (!ws || ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      ws.once('close', () => resolve());
      if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
      else ws.close(1000, 'fixture disconnect');
    });
  }

  /** Resolves when the server has closed the connection (or after `ms`). */
  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.#ws && this.#ws.readyState !== WebSocket.CLOSED && Date.now() < deadline) await this.changed(deadline);
    return !this.#ws || this.#ws.readyState === WebSocket.CLOSED;
  }

  /** Removes and returns the first queued message that matches, with its captures. */
  take(pattern: Json, captures: Map<string, unknown>): Received | undefined {
    for (let i = 0; i < this.#queue.length; i++) {
      const r = match(pattern, this.#queue[i]!.data, captures);
      if (r.ok) {
        for (const [k, v] of r.captured) captures.set(k, v);
        return this.#queue.splice(i, 1)[0];
      }
    }
    return undefined;
  }

  /** The first queued message that matches, left in place. */
  peek(pattern: Json, captures: Map<string, unknown>): Received | undefined {
    return this.#queue.find((m) => match(pattern, m.data, captures).ok);
  }

  clearQueue(): void {
    this.#queue = [];
  }

  /** Resolves at the next message or close, or at `deadline` (ms since the epoch). */
  changed(deadline: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wakers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
      this.#wakers.add(done);
    });
  }

  #wake(): void {
    for (const w of [...this.#wakers]) w();
  }

  #closeText(): string {
    const c = this.#closed!;
    return `the connection was closed with ${c.code}${c.reason ? ` "${c.reason}"` : ''}`;
  }

  /** Why no more messages can arrive, or null while the connection is open. */
  get deadReason(): string | null {
    if (this.connected) return null;
    return this.#closed ? this.#closeText() : 'the client is not connected';
  }
}

/** The in-process server a fixture runs against: a temporary SQLite store that outlives restarts. */
class ReplayServer {
  #dir: string;
  #spec: ServerSpec;
  #server: TroupeServer | null = null;
  #url = '';

  private constructor(dir: string, spec: ServerSpec) {
    this.#dir = dir;
    this.#spec = spec;
  }

  /** The WebSocket URL of the running server; changes with each restart. */
  get url(): string {
    return this.#url;
  }

  static async start(spec: ServerSpec = {}): Promise<ReplayServer> {
    const s = new ReplayServer(fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-replay-')), spec);
    try {
      await s.#open();
    } catch (e) {
      await s.close();
      throw e;
    }
    return s;
  }

  async createKey(spec: ClientSpec): Promise<string> {
    return (await this.#server!.app.auth.createKey({ tenant: spec.tenant, principal: spec.principal, roles: spec.roles, label: 'replay' })).key;
  }

  async restart(): Promise<void> {
    await this.#server?.close();
    this.#server = null;
    await this.#open();
  }

  async close(): Promise<void> {
    await this.#server?.close();
    this.#server = null;
    fs.rmSync(this.#dir, { recursive: true, force: true });
  }

  async #open(): Promise<void> {
    // NORMAL survives process crashes, which is all a restart step simulates, and is faster.
    const store = new SqliteStore({ path: path.join(this.#dir, 'troupe.db'), synchronous: 'NORMAL' });
    const server = new TroupeServer({ store, port: 0, maxFrameBytes: this.#spec.maxFrameBytes, authGraceMs: this.#spec.authGraceMs });
    this.#server = server;
    this.#url = (await server.start()).url;
  }
}

/**
 * Runs a fixture against a fresh in-process Troupe server (a temporary SQLite store, so a
 * `restart` step keeps the data) and resolves when every step passed.
 *
 * @throws {@link ReplayFailure} naming the failed step, the expected pattern and the messages
 *   the client received but did not match
 * @example
 * ```ts
 * await runFixture(loadFixture('test/replay/task-lifecycle.json'));
 * ```
 */
export async function runFixture(fixture: Fixture, opts: RunOptions = {}): Promise<RunResult> {
  const started = Date.now();
  const trace = opts.trace;
  const server = await ReplayServer.start(fixture.server);
  const clients = new Map<string, ReplayClient>();
  const captures = new Map<string, unknown>();
  let index = -1;
  try {
    for (const [name, spec] of Object.entries(fixture.clients)) {
      const key = await server.createKey(spec);
      captures.set(`token.${name}`, key);
      clients.set(name, new ReplayClient(name, spec, key, trace));
    }
    for (const c of clients.values()) if (c.spec.connect !== false) await c.connect(server.url);
    for (index = 0; index < fixture.steps.length; index++) {
      const step = fixture.steps[index]!;
      trace?.(`steps[${index}] ${JSON.stringify(step)}`);
      await runStep(step, { server, clients, captures, defaultTimeoutMs: opts.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS });
    }
  } catch (e) {
    if (e instanceof ReplayFailure) throw e;
    const step = index >= 0 ? (fixture.steps[index] ?? null) : null;
    const detail = e instanceof StepFailed ? e.message : `unexpected error: ${(e as Error).stack ?? String(e)}`;
    throw new ReplayFailure(fixture.name, index, step, detail);
  } finally {
    await Promise.all([...clients.values()].map((c) => c.disconnect()));
    await server.close();
  }
  return { name: fixture.name, steps: fixture.steps.length, durationMs: Date.now() - started };
}

interface StepContext {
  server: ReplayServer;
  clients: Map<string, ReplayClient>;
  captures: Map<string, unknown>;
  defaultTimeoutMs: number;
}

async function runStep(step: Step, ctx: StepContext): Promise<void> {
  const client = 'client' in step ? ctx.clients.get(step.client) : undefined;
  if ('client' in step && !client) throw new StepFailed(`client "${step.client}" is not declared in "clients"`);
  switch (stepKind(step)) {
    case 'send': {
      let value: Json;
      try {
        value = substitute((step as { send: Json }).send, ctx.captures, Date.now());
      } catch (e) {
        throw new StepFailed(`cannot build the message: ${(e as Error).message}`);
      }
      client!.send(JSON.stringify(value));
      return;
    }
    case 'sendRaw':
      client!.send((step as { sendRaw: string }).sendRaw);
      return;
    case 'expect':
      return expect(client!, step as ExpectStep, ctx);
    case 'expectNone':
      return expectNone(client!, step as ExpectNoneStep, ctx);
    case 'expectClose':
      return expectClose(client!, step as ExpectCloseStep, ctx);
    case 'restart': {
      const reconnect = [...ctx.clients.values()].filter((c) => c.connected);
      await ctx.server.restart();
      // The old server closed every connection; wait until each client has seen it.
      await Promise.all([...ctx.clients.values()].map((c) => c.closedWithin(ctx.defaultTimeoutMs)));
      for (const c of ctx.clients.values()) c.clearQueue();
      for (const c of reconnect) await c.connect(ctx.server.url);
      return;
    }
    case 'sleep':
      await new Promise((r) => setTimeout(r, (step as { sleep: number }).sleep));
      return;
    case 'connect':
      if (client!.connected) throw new StepFailed(`client ${client!.name} is already connected`);
      await client!.connect(ctx.server.url);
      return;
    case 'disconnect':
      if (!client!.connected) throw new StepFailed(`client ${client!.name} is not connected`);
      await client!.disconnect();
      return;
  }
}

async function expect(client: ReplayClient, step: ExpectStep, ctx: StepContext): Promise<void> {
  const timeoutMs = step.timeoutMs ?? ctx.defaultTimeoutMs;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (client.take(step.expect, ctx.captures)) return;
    const dead = client.deadReason;
    if (dead || Date.now() >= deadline) {
      const why = dead ? `no matching message, and none can arrive: ${dead}` : `no matching message for ${client.name} within ${timeoutMs} ms`;
      throw new StepFailed(`${why}\n${report(step.expect, client, ctx.captures)}`);
    }
    await client.changed(deadline);
  }
}

async function expectNone(client: ReplayClient, step: ExpectNoneStep, ctx: StepContext): Promise<void> {
  const deadline = Date.now() + step.withinMs;
  for (;;) {
    const hit = client.peek(step.expectNone, ctx.captures);
    if (hit) {
      throw new StepFailed(
        `a message matching the pattern reached ${client.name} within ${step.withinMs} ms\npattern:\n${pretty(step.expectNone, '  ')}\nreceived:\n${pretty(hit.data, '  ')}`,
      );
    }
    if (Date.now() >= deadline || client.deadReason) return;
    await client.changed(deadline);
  }
}

async function expectClose(client: ReplayClient, step: ExpectCloseStep, ctx: StepContext): Promise<void> {
  const timeoutMs = step.timeoutMs ?? ctx.defaultTimeoutMs;
  if (!(await client.closedWithin(timeoutMs))) throw new StepFailed(`the connection of ${client.name} was still open after ${timeoutMs} ms`);
  const info = client.closeInfo ?? { code: 1006, reason: '' };
  const { code, reason } = step.expectClose;
  if (code !== undefined && info.code !== code) {
    throw new StepFailed(`the connection of ${client.name} closed with code ${info.code} ${show(info.reason)}, not ${code}`);
  }
  if (reason !== undefined) {
    const r = match(reason, info.reason, ctx.captures);
    if (!r.ok) throw new StepFailed(`the connection of ${client.name} closed with reason ${show(info.reason)}, which does not match ${show(reason)}`);
  }
}

/** The failure report of an `expect`: the pattern, every unmatched message, and the closest miss. */
function report(pattern: Json, client: ReplayClient, captures: Map<string, unknown>): string {
  const lines = ['expected:', pretty(pattern, '  ')];
  const queue = client.queue;
  if (queue.length === 0) {
    lines.push(`received by ${client.name} and not matched: nothing`);
    return lines.join('\n');
  }
  lines.push(`received by ${client.name} and not matched (${queue.length}):`);
  let best: { i: number; r: MatchResult } | null = null;
  queue.forEach((m, i) => {
    lines.push(`  [${i + 1}]`, pretty(m.data, '    '));
    const r = match(pattern, m.data, captures);
    if (!best || r.score > best.r.score || (r.score === best.r.score && r.mismatches.length < best.r.mismatches.length)) best = { i, r };
  });
  const closest = best as { i: number; r: MatchResult } | null;
  if (closest) {
    lines.push(`closest is [${closest.i + 1}]; it differs at:`);
    for (const m of closest.r.mismatches.slice(0, 8)) lines.push(`  ${m.path}: expected ${m.expected}, got ${m.actual}`);
    if (closest.r.mismatches.length > 8) lines.push(`  … and ${closest.r.mismatches.length - 8} more`);
  }
  return lines.join('\n');
}

/**
 * Property-based fuzzing of the WebSocket endpoint with fast-check.
 *
 * Thousands of random and mutated frames go to one server: arbitrary text, arbitrary JSON,
 * envelopes naming catalogue methods with random params, mutations of valid requests, batches
 * and frames around the size limit. Every frame is followed by a sentinel `ping`; the replies
 * that arrive are compared with what JSON-RPC 2.0 and the method catalogue say they must be.
 *
 * The fuzzing principals cannot legitimately change anything (an observer; an agent restricted
 * to reads and to writes that must fail), so the store's head position and the known tasks
 * must be exactly as they were afterwards.
 *
 * Reproduce a run with FUZZ_SEED=<seed>; set FUZZ_SHRINK=1 to let fast-check shrink a failure,
 * FUZZ_FRAMES=<n> to send more (or fewer) frames, FUZZ_STATS=1 to print outcomes by method.
 */
import { SignJWT } from 'jose';
import fc from 'fast-check';
import { pino } from 'pino';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { ErrorCodes, reasonOf } from '../../protocol/errors.js';
import { MAX_BATCH } from '../../protocol/jsonrpc.js';
import { MethodSchemas, isMethodName, type MethodName } from '../../protocol/methods.js';
import { AgentStatuses, TaskPriorities, TaskStatuses, type Role } from '../../protocol/model.js';
import { RawSocket } from '../helpers/rawSocket.js';
import { startServer, type TestServer } from '../helpers/server.js';

const MAX_FRAME = 4096;
const TENANT = 'fuzz';
const JWT_SECRET = 'fuzz-secret-0123456789abcdef0123456789';
const DEFAULT_SEED = 20_240_611;
const SEED = seedFromEnv(process.env.FUZZ_SEED);
const SHRINK = process.env.FUZZ_SHRINK === '1';
/** Frames in all (FUZZ_FRAMES overrides): four fifths as the observer, the rest as the agent. */
const TOTAL_FRAMES = Number(process.env.FUZZ_FRAMES ?? 3000);
const OBSERVER_RUNS = Math.round(TOTAL_FRAMES * 0.8);
const AGENT_RUNS = TOTAL_FRAMES - OBSERVER_RUNS;
/** How long one frame may take to be answered before the run fails. */
const REPLY_TIMEOUT_MS = 3000;
/** Stands for a fresh unique numeric request id; replaced when the frame is rendered. */
const ID = '\u0000<fresh-id>\u0000';
/** The same, in frames written as text. */
const ID_TEXT = '@ID@';

function seedFromEnv(v: string | undefined): number {
  if (v === undefined || v.trim() === '') return DEFAULT_SEED;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`FUZZ_SEED must be an integer, got ${JSON.stringify(v)}`);
  return n | 0;
}

// ---------------------------------------------------------------------------------------------
// The catalogue, split by what a call may do

const ALL_METHODS = Object.keys(MethodSchemas) as MethodName[];
/** Methods that never change the store. */
const READ_METHODS: MethodName[] = [
  'ping',
  'session.whoami',
  'subscribe',
  'unsubscribe',
  'agent.get',
  'agent.list',
  'agent.available',
  'agent.performance',
  'task.get',
  'task.getBatch',
  'task.timeline',
  'task.listForAgent',
  'task.search',
  'task.stats',
  'task.report',
  'task.available',
  'task.tree',
  'rule.get',
  'rule.list',
  'policy.get',
  'policy.list',
  'workflow.get',
  'workflow.list',
  'workflow.getVersion',
  'workflow.listVersions',
  'workflow.metrics',
  'workflow.insights',
  'template.get',
  'template.list',
  'execution.get',
  'execution.list',
  'execution.nextSteps',
  'execution.stepStatus',
  'execution.trace',
  'fieldPolicy.get',
  'ratelimit.get',
  'ratelimit.status',
  'quota.get',
  'quota.status',
  'audit.query',
  'events.read',
  'events.replay',
  'workspace.getState',
  'workspace.stateHistory',
  'document.get',
  'document.list',
  'actor.inspect',
  'workspace.get',
  'workspace.listMembers',
  'workspace.memberActivity',
  'workspace.presence',
  'workspace.listForAgent',
  'workspace.search',
  'workspace.recommended',
  'workspace.stats',
  'workspace.collaborationMetrics',
];
const WRITE_METHODS = ALL_METHODS.filter((m) => !READ_METHODS.includes(m) && m !== 'session.authenticate');
/** The param naming the actor a write acts on (writes without one create something new). */
const WRITE_TARGET: Partial<Record<MethodName, string>> = {
  'agent.register': 'id',
  'agent.heartbeat': 'agentId',
  'agent.setStatus': 'agentId',
  'agent.setCapabilities': 'agentId',
  'agent.deregister': 'agentId',
  'task.submitSubtaskResult': 'subtaskId',
};
for (const m of WRITE_METHODS) if (m.startsWith('task.') && 'taskId' in MethodSchemas[m].shape) WRITE_TARGET[m] = 'taskId';
const SHAPE_KEYS = [...new Set(ALL_METHODS.flatMap((m) => Object.keys(MethodSchemas[m].shape)))];
const ALLOWED_CODES = new Set<number>([...Object.values(ErrorCodes), -32700, -32600, -32601, -32602, -32603]);
const DANGEROUS_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'valueOf', 'hasOwnProperty', '__defineGetter__', 'toJSON', 'then'];

// ---------------------------------------------------------------------------------------------
// Small helpers

type Json = Record<string, unknown>;
type RpcId = string | number;

function isObj(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function own(o: Json, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}

/** Sets an own enumerable property, even one named `__proto__`. */
function defineOwn<T extends object>(o: T, k: string, v: unknown): T {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
  return o;
}

function short(s: string, max = 3000): string {
  const j = JSON.stringify(s);
  return j.length <= max ? j : `${j.slice(0, max)}… (${j.length} chars in all)`;
}

// ---------------------------------------------------------------------------------------------
// Frames as data (printable by fast-check), rendered when sent

/** A character-level edit of a frame's text; `at` is a fraction of its length. */
interface TextMut {
  op: 'del' | 'ins' | 'rep' | 'trunc' | 'dup';
  at: number;
  s: string;
}

/** A signed (or forged) JWT, made when the frame is rendered. */
interface JwtSpec {
  claims: Json;
  secret: 'right' | 'wrong' | 'none';
  alg: 'HS256' | 'HS512';
}

type Spec =
  /** Sent exactly as is. */
  | { t: 'text'; text: string }
  /** Text in which each `@ID@` becomes a fresh id. */
  | { t: 'tpl'; text: string }
  /** JSON.stringify of the value (fresh ids filled in). */
  | { t: 'value'; value: unknown }
  /** The value's JSON, then edited character by character. */
  | { t: 'textMut'; value: unknown; muts: TextMut[] }
  /** The value padded with a top-level `pad` member to exactly `bytes` UTF-8 bytes. */
  | { t: 'sized'; value: Json; bytes: number; wide: 1 | 2 | 3 | 4; front: boolean }
  /** The value's JSON sent as a binary frame. */
  | { t: 'binary'; value: unknown };

interface Rendered {
  text: string;
  binary: boolean;
  /** The fresh ids given out, in order. */
  ids: number[];
}

interface Counter {
  next: number;
}

/** Marks a value to be expanded into deep nesting when rendered. */
const DEEP = '$deep';

interface DeepSpec {
  depth: number;
  how: 'array' | 'object' | 'mixed';
  leaf: unknown;
}

/** Copies a value, expanding deep-nesting markers (own keys kept, `__proto__` included). */
function expand(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(expand);
  if (!isObj(v)) return v;
  if (own(v, DEEP) && Object.keys(v).length === 1) {
    const d = v[DEEP] as DeepSpec;
    let out: unknown = expand(d.leaf);
    for (let i = 0; i < d.depth; i++) out = d.how === 'array' || (d.how === 'mixed' && i % 2) ? [out] : { a: out };
    return out;
  }
  const out: Json = {};
  for (const k of Object.keys(v)) defineOwn(out, k, expand(v[k]));
  return out;
}

/** Gives each top-level entry (or batch entry) holding the placeholder a fresh id; signs JWT specs. */
async function prepare(value: unknown, counter: Counter, ids: number[]): Promise<unknown> {
  const fix = async (e: unknown): Promise<unknown> => {
    if (!isObj(e)) return e;
    let out: Json = e;
    if (own(e, 'id') && e.id === ID) {
      const id = counter.next++;
      ids.push(id);
      out = { ...out, id };
    }
    const params = out.params;
    if (isObj(params) && own(params, 'token') && isObj(params.token) && own(params.token, '$jwt')) {
      out = { ...out, params: { ...params, token: await signJwt(params.token.$jwt as JwtSpec) } };
    }
    return out;
  };
  const v = expand(value);
  return Array.isArray(v) ? Promise.all(v.map(fix)) : fix(v);
}

async function signJwt(spec: JwtSpec): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const claims: Json = { ...spec.claims };
  if (claims.exp === 'future') claims.exp = now + 3600;
  if (claims.exp === 'past') claims.exp = now - 60;
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v) ?? 'null').toString('base64url');
  if (spec.secret === 'none') return `${b64({ alg: 'none', typ: 'JWT' })}.${b64(claims)}.`;
  try {
    const key = new TextEncoder().encode(spec.secret === 'right' ? JWT_SECRET : `${JWT_SECRET}-wrong`);
    return await new SignJWT(claims as never).setProtectedHeader({ alg: spec.alg }).sign(key);
  } catch {
    // Claims jose will not sign: send them unsigned.
    return `${b64({ alg: spec.alg })}.${b64(claims)}.c2lnbmF0dXJl`;
  }
}

function stringify(v: unknown): string {
  return JSON.stringify(v) ?? '';
}

function applyTextMut(text: string, m: TextMut): string {
  const i = Math.min(text.length, Math.floor(m.at * (text.length + 1)));
  switch (m.op) {
    case 'del':
      return text.slice(0, i) + text.slice(i + 1);
    case 'ins':
      return text.slice(0, i) + m.s + text.slice(i);
    case 'rep':
      return text.slice(0, i) + m.s + text.slice(i + Math.max(1, m.s.length));
    case 'trunc':
      return text.slice(0, i);
    case 'dup':
      return text.slice(0, i) + text.slice(i, i + 1 + m.s.length * 3) + text.slice(i);
  }
}

const WIDE = { 1: 'x', 2: 'é', 3: '€', 4: '😀' } as const;

async function render(spec: Spec, counter: Counter): Promise<Rendered> {
  const ids: number[] = [];
  switch (spec.t) {
    case 'text':
      return { text: spec.text, binary: false, ids };
    case 'tpl':
      return {
        text: spec.text.replaceAll(ID_TEXT, () => {
          const id = counter.next++;
          ids.push(id);
          return String(id);
        }),
        binary: false,
        ids,
      };
    case 'value':
      return { text: stringify(await prepare(spec.value, counter, ids)), binary: false, ids };
    case 'binary':
      return { text: stringify(await prepare(spec.value, counter, ids)), binary: true, ids };
    case 'textMut': {
      let text = stringify(await prepare(spec.value, counter, ids));
      for (const m of spec.muts) text = applyTextMut(text, m);
      return { text, binary: false, ids };
    }
    case 'sized': {
      const value: Json = { ...((await prepare(spec.value, counter, ids)) as Json) };
      delete value.pad;
      const withPad = (pad: string) => (spec.front ? { pad, ...value } : { ...value, pad });
      const base = stringify(withPad(''));
      const need = spec.bytes - Buffer.byteLength(base);
      if (need <= 0) return { text: base, binary: false, ids };
      const w = WIDE[spec.wide];
      const wb = Buffer.byteLength(w);
      const pad = w.repeat(Math.floor(need / wb)) + 'x'.repeat(need % wb);
      const text = stringify(withPad(pad));
      if (Buffer.byteLength(text) !== spec.bytes) throw new Error(`sized frame has ${Buffer.byteLength(text)} bytes, not ${spec.bytes}`);
      return { text, binary: false, ids };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The oracle: which replies a frame must get, from JSON-RPC 2.0 and the method catalogue

interface ExpectedReply {
  /** Acceptable ids of the reply. */
  ids: (RpcId | null)[];
  /** The error code the reply must carry, when it is fixed. */
  code?: number;
  /** The method of a well-formed request (its reply may be a result or an error). */
  method?: MethodName;
}

type Expected = { kind: 'none' } | { kind: 'single'; reply: ExpectedReply } | { kind: 'batch'; replies: ExpectedReply[] };

function single(reply: ExpectedReply): Expected {
  return { kind: 'single', reply };
}

function expectedFor(r: Rendered): Expected {
  if (r.binary) return single({ ids: [null], code: ErrorCodes.INVALID_REQUEST });
  const bytes = Buffer.from(r.text, 'utf8');
  // What the server reads: lone surrogates have become U+FFFD on the wire.
  const text = bytes.toString('utf8');
  let value: unknown;
  let parsed = true;
  try {
    value = JSON.parse(text);
  } catch {
    parsed = false;
  }
  if (bytes.length > MAX_FRAME) {
    // Oversized frames are not parsed: the reply names the request if its id is found near the
    // start (documented), else null. A frame that starts with an object may name that object's id
    // even when the rest of the frame is not JSON.
    const ids: (RpcId | null)[] = [null, ...r.ids, ...leadingIds(text)];
    if (parsed && isObj(value) && validId(value.id)) ids.push(value.id as RpcId);
    return single({ ids, code: ErrorCodes.PAYLOAD_TOO_LARGE });
  }
  if (!parsed) return single({ ids: [null], code: ErrorCodes.PARSE_ERROR });
  if (Array.isArray(value)) {
    if (value.length === 0 || value.length > MAX_BATCH) return single({ ids: [null], code: ErrorCodes.INVALID_REQUEST });
    const replies = value.map(expectedEntry).filter((e): e is ExpectedReply => e !== null);
    return replies.length === 0 ? { kind: 'none' } : { kind: 'batch', replies };
  }
  const e = expectedEntry(value);
  return e === null ? { kind: 'none' } : single(e);
}

/**
 * Values of the `"id"` members at the top level of the object a frame starts with, also when
 * the frame is cut off or goes on with something that is not JSON.
 */
function leadingIds(text: string): RpcId[] {
  const out: RpcId[] = [];
  let i = text.search(/\S/);
  if (i < 0 || text[i] !== '{') return out;
  const stringEnd = (start: number) => {
    for (let k = start + 1; k < text.length; k++) {
      if (text[k] === '\\') k++;
      else if (text[k] === '"') return k;
    }
    return -1;
  };
  const json = (s: string): unknown => {
    try {
      return JSON.parse(s);
    } catch {
      return undefined;
    }
  };
  let depth = 0;
  for (; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      const end = stringEnd(i);
      if (end < 0) break;
      if (depth === 1 && json(text.slice(i, end + 1)) === 'id') {
        const m = /^\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(text.slice(end + 1));
        const v = m ? json(m[1]!) : undefined;
        if (validId(v)) out.push(v as RpcId);
      }
      i = end;
    } else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      if (--depth === 0) break;
    }
  }
  return out;
}

function validId(id: unknown): boolean {
  return (typeof id === 'string' && id.length <= 128) || (typeof id === 'number' && Number.isFinite(id));
}

/** The reply one entry must get, or null for a notification (which gets none). */
function expectedEntry(e: unknown): ExpectedReply | null {
  const invalid = (ids: (RpcId | null)[], code: number = ErrorCodes.INVALID_REQUEST): ExpectedReply => ({ ids, code });
  if (!isObj(e)) return invalid([null]);
  const hasId = own(e, 'id');
  const id = e.id;
  if (hasId && !(typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id)))) return invalid([null]);
  if (typeof id === 'string' && id.length > 128) return invalid([null]);
  const rid = hasId ? (id as RpcId) : null;
  if (!own(e, 'jsonrpc') || e.jsonrpc !== '2.0') return invalid([rid]);
  const method = own(e, 'method') ? e.method : undefined;
  if (typeof method !== 'string' || method.length === 0 || method.length > 128) return invalid([rid]);
  const params = own(e, 'params') ? e.params : undefined;
  if (params !== undefined && !isObj(params)) return invalid([rid], ErrorCodes.INVALID_PARAMS);
  if (!hasId) return null;
  if (!isMethodName(method)) return invalid([rid], ErrorCodes.METHOD_NOT_FOUND);
  // The input guard strips control characters before validation (and its refusals are INVALID_PARAMS too).
  const ok = MethodSchemas[method].safeParse(withoutControls(params ?? {})).success;
  return ok ? { ids: [rid], method } : { ids: [rid], code: ErrorCodes.INVALID_PARAMS, method };
}

/** A copy with C0 control characters (but tab, newline, carriage return) and DEL removed from every string. */
function withoutControls(v: unknown): unknown {
  if (typeof v === 'string') return v.replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/g, '');
  if (Array.isArray(v)) return v.map(withoutControls);
  if (!isObj(v)) return v;
  const out: Json = {};
  for (const k of Object.keys(v)) defineOwn(out, k, withoutControls(v[k]));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Checking what arrived

/** Problems with one reply's shape (JSON-RPC 2.0 and the error catalogue). */
function malformed(r: unknown): string[] {
  if (!isObj(r)) return [`a reply is not an object: ${short(JSON.stringify(r) ?? String(r), 300)}`];
  const p: string[] = [];
  for (const k of Object.keys(r)) if (!['jsonrpc', 'id', 'result', 'error'].includes(k)) p.push(`unexpected member "${k}"`);
  if (r.jsonrpc !== '2.0') p.push(`jsonrpc is ${JSON.stringify(r.jsonrpc)}`);
  if (!own(r, 'id')) p.push('no id member');
  else if (!(r.id === null || typeof r.id === 'string' || (typeof r.id === 'number' && Number.isFinite(r.id)))) p.push(`bad id ${JSON.stringify(r.id)}`);
  if (own(r, 'result') === own(r, 'error')) p.push('not exactly one of result and error');
  if (own(r, 'error')) {
    const e = r.error;
    if (!isObj(e)) p.push('error is not an object');
    else {
      for (const k of Object.keys(e)) if (!['code', 'message', 'data'].includes(k)) p.push(`unexpected error member "${k}"`);
      if (typeof e.code !== 'number' || !Number.isInteger(e.code) || !ALLOWED_CODES.has(e.code)) p.push(`error code ${JSON.stringify(e.code)} is not a catalogued code`);
      if (typeof e.message !== 'string' || e.message.trim().length === 0) p.push(`error message ${JSON.stringify(e.message)} is empty or not a string`);
      if (own(e, 'data')) {
        if (!isObj(e.data)) p.push('error data is not an object');
        else if (own(e.data, 'reason') && typeof e.code === 'number' && e.data.reason !== reasonOf(e.code)) {
          p.push(`error data.reason ${JSON.stringify(e.data.reason)} does not name code ${e.code}`);
        }
      }
    }
  }
  return p;
}

/** A server push: `{jsonrpc, method, params}` without an id. */
function isPush(m: unknown): boolean {
  return isObj(m) && typeof m.method === 'string' && !own(m, 'id') && !own(m, 'result') && !own(m, 'error');
}

function badPush(m: Json): string[] {
  const p: string[] = [];
  if (m.jsonrpc !== '2.0') p.push(`notification jsonrpc is ${JSON.stringify(m.jsonrpc)}`);
  if (!isObj(m.params)) p.push('notification params is not an object');
  if (m.method !== 'subscription.event') p.push(`unexpected notification ${JSON.stringify(m.method)} (${short(JSON.stringify(m), 400)})`);
  for (const k of Object.keys(m)) if (!['jsonrpc', 'method', 'params'].includes(k)) p.push(`unexpected notification member "${k}"`);
  return p;
}

interface Principal {
  tenantId: string;
  principalId: string;
  roles: Role[];
}

/** One fuzzing connection and what its principal may never achieve. */
interface Session {
  name: string;
  raw: RawSocket;
  tap: Tap;
  principal: Principal;
  /** Frames before this index have been checked. */
  checked: number;
  sentinels: number;
  frames: number;
  replies: number;
  codes: Map<number, number>;
  /** Outcomes of well-formed calls, by method: `ok` or the error reason. */
  outcomes: Map<string, number>;
}

/** Problems with a reply given what it answers. */
function wrongReply(r: Json, exp: ExpectedReply, s: Session): string[] {
  const p: string[] = [];
  const err = isObj(r.error) ? r.error : null;
  if (exp.method) {
    const k = `${exp.method} ${err ? (reasonOf(err.code as number) ?? err.code) : 'ok'}`;
    s.outcomes.set(k, (s.outcomes.get(k) ?? 0) + 1);
  }
  if (!exp.ids.some((id) => id === r.id)) p.push(`id ${JSON.stringify(r.id)} is not one of ${JSON.stringify(exp.ids)}`);
  if (err?.code === ErrorCodes.INTERNAL) p.push('INTERNAL error (-32603)');
  if (exp.code !== undefined && err?.code !== exp.code) p.push(`expected error ${exp.code} (${reasonOf(exp.code)}), got ${err ? err.code : 'a result'}`);
  if (exp.method && exp.code === undefined) {
    if (WRITE_METHODS.includes(exp.method) && !err) p.push(`${exp.method} succeeded for ${s.name}, which may not change anything`);
    if (!err && exp.method === 'ping' && !(isObj(r.result) && r.result.pong === true)) p.push('ping did not pong');
    if (!err && exp.method === 'session.whoami') {
      const me = r.result as Json;
      if (me.tenantId !== s.principal.tenantId || me.principalId !== s.principal.principalId || JSON.stringify(me.roles) !== JSON.stringify(s.principal.roles)) {
        p.push(`whoami says ${JSON.stringify(me)}, not ${JSON.stringify(s.principal)}`);
      }
    }
  }
  return p;
}

/** Pairs replies with expectations (fixed codes first), reporting the missing and the extra. */
function matchReplies(replies: Json[], expected: ExpectedReply[], s: Session): string[] {
  const p: string[] = [];
  const left = [...replies];
  const order = [...expected].sort((a, b) => Number(a.code === undefined) - Number(b.code === undefined));
  for (const exp of order) {
    const i = left.findIndex(
      (r) => exp.ids.some((id) => id === r.id) && (exp.code === undefined || (isObj(r.error) && r.error.code === exp.code)),
    );
    const j = i >= 0 ? i : left.findIndex((r) => exp.ids.some((id) => id === r.id));
    if (j < 0) {
      p.push(`no reply for an entry expecting id ${JSON.stringify(exp.ids)}${exp.code !== undefined ? ` and error ${exp.code}` : ''}`);
      continue;
    }
    const [r] = left.splice(j, 1);
    for (const q of wrongReply(r!, exp, s)) p.push(`reply ${short(JSON.stringify(r), 600)}: ${q}`);
  }
  for (const r of left) p.push(`unexpected reply ${short(JSON.stringify(r), 600)}`);
  return p;
}

/** Wakes waiters on every frame and on close (RawSocket itself only polls). */
class Tap {
  #waiters = new Set<() => void>();

  constructor(readonly raw: RawSocket) {
    // Registered after RawSocket's own listener, so the frame is recorded when this runs.
    raw.ws.on('message', () => this.#wake());
    raw.ws.on('close', () => this.#wake());
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  until(pred: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      const check = () => {
        if (pred()) {
          done();
          resolve();
        } else if (!this.raw.open) {
          done();
          reject(new Error(`the connection closed (${JSON.stringify(this.raw.closeInfo)}) while waiting for ${what}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Arbitraries

interface Known {
  taskIds: string[];
  agentId: string;
  cursor: string;
  /** Real API keys: other principals, and the fuzzing principals with more roles. */
  tokens: string[];
}

interface Arbs {
  frame: fc.Arbitrary<Spec>;
}

/**
 * Frame arbitraries over a set of methods. With `constrain`, every write is made one that must
 * fail (an unknown target, or an unknown param), so a legitimate agent cannot change anything.
 */
function arbitraries(known: Known, methods: MethodName[], constrain: boolean): Arbs {
  const weirdStrings = [
    '', ' ', 'NaN', 'Infinity', '-Infinity', '-0', '1e309', '0x1F', 'null', 'undefined', 'true', '{}', '[]', '"', '\\',
    '\u0000', '\uFEFF', '\u202E', '\uD800', '\uDFFF', 'é', '𝕏', '💥', '👨‍👩‍👧', 'a'.repeat(129), 'b'.repeat(300),
    '../../etc/passwd', "'; DROP TABLE events; --", '%s%n', '<script>', 'task:', 'inbox:', ':', '/', '2.0', 'ping',
    ...DANGEROUS_KEYS,
  ];
  const hugeNumbers = [
    1e308, -1e308, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 2, -Number.MAX_SAFE_INTEGER - 2, 2 ** 31, 2 ** 32,
    2 ** 53, 2 ** 64, 5e-324, -5e-324, 0.1, 1.5, -1, 0, -0, 1e21, 100.0001, 10_000, 10_001, 86_400_001, 31_536_001,
  ];
  const scalar: fc.Arbitrary<unknown> = fc.oneof(
    fc.constantFrom(...weirdStrings),
    fc.constantFrom(...hugeNumbers),
    fc.boolean(),
    fc.constant(null),
    fc.integer(),
    fc.double(),
    fc.string({ maxLength: 40 }),
    fc.string({ unit: 'binary', maxLength: 40 }),
    fc.string({ unit: 'grapheme', maxLength: 12 }),
  );
  // Built when rendered: fast-check's reports cannot print values thousands of levels deep.
  const deep = fc
    .record({ depth: fc.integer({ min: 8, max: 1500 }), how: fc.constantFrom('array', 'object', 'mixed'), leaf: scalar })
    .map((d): unknown => ({ [DEEP]: d }));
  const dangerous = fc
    .tuple(fc.constantFrom(...DANGEROUS_KEYS), fc.oneof(scalar, fc.jsonValue({ maxDepth: 1 })))
    .map(([k, v]) => defineOwn({}, k, v));
  const anyJson: fc.Arbitrary<unknown> = fc.oneof(
    { weight: 5, arbitrary: scalar },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
    { weight: 1, arbitrary: fc.anything({ maxDepth: 2, maxKeys: 4 }) },
    { weight: 1, arbitrary: fc.object({ maxDepth: 2, maxKeys: 4 }) },
    { weight: 1, arbitrary: deep },
    { weight: 1, arbitrary: dangerous },
  );

  const idLike: fc.Arbitrary<unknown> = fc.oneof(
    { weight: 3, arbitrary: fc.constantFrom(...known.taskIds, known.agentId, 'watcher', 'boss') },
    {
      weight: 2,
      arbitrary: fc.constantFrom('nobody', 'constructor', '__proto__', 'prototype', 'toString', 'hasOwnProperty', 'a/b', 'a b', '', '-x', 'x'.repeat(128), 'x'.repeat(129), '💥', '\uD800'),
    },
    { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._:@-]{0,30}$/) },
    { weight: 1, arbitrary: fc.string({ maxLength: 20 }) },
    { weight: 1, arbitrary: anyJson },
  );
  /** Ids no actor has: writes to them must fail with NOT_FOUND or FORBIDDEN. */
  const freshId = fc.stringMatching(/^[a-z0-9]{4,16}$/).map((s) => `nx-${s}`);
  const iso = fc.oneof(
    fc.date({ min: new Date(0), max: new Date(4_102_444_800_000), noInvalidDate: true }).map((d) => d.toISOString()),
    fc.constantFrom(
      '2020-02-30T00:00:00Z', '2020-13-01T00:00:00Z', '9999-12-31T23:59:59.999+14:00', '0000-01-01T00:00:00Z', '2024-01-01T00:00:00',
      '2024-01-01', 'yesterday', '2024-01-01T24:00:00Z', '+275760-09-13T00:00:00Z', '1970-01-01T00:00:00.0000000001Z', '2099-01-01T00:00:00-23:59',
    ),
    anyJson,
  );
  const b64 = (v: unknown) => Buffer.from(stringify(v)).toString('base64url');
  const cursor = fc.oneof(
    fc.constant(known.cursor),
    fc.string({ maxLength: 30 }),
    fc.jsonValue({ maxDepth: 2 }).map(b64),
    fc.tuple(fc.oneof(fc.double(), fc.integer(), scalar), fc.oneof(fc.string(), scalar)).map(b64),
    fc.constantFrom('x'.repeat(513), 'A'.repeat(512), '====', '-_-_', b64([1e308, '']), b64([-1, '\uD800']), b64(['1', 'a']), b64([1, 'a', 3])),
  );
  const topic = fc.oneof(
    fc.constantFrom(
      'tenant', 'inbox:worker', 'inbox:boss', 'inbox:watcher', 'agent:worker', 'agent:nobody', 'task:', 'task:a:b', ':', 'inbox:', 'tenant:x',
      'TENANT', 'task:constructor', 'task:__proto__', 'agent:__proto__', 'inbox:__proto__', ...known.taskIds.map((t) => `task:${t}`),
    ),
    fc.string({ maxLength: 30 }),
    fc.tuple(fc.constantFrom('task', 'agent', 'inbox', 'tenant', ''), fc.oneof(idLike, fc.string())).map(([k, id]) => `${k}:${typeof id === 'string' ? id : stringify(id)}`),
  );
  const jwt = fc
    .record({
      claims: fc.record(
        {
          tid: fc.oneof(fc.constantFrom(TENANT, 'other', 'FUZZ'), anyJson),
          tenant: fc.oneof(fc.constant(TENANT), anyJson),
          sub: fc.oneof(fc.constantFrom('watcher', 'worker', 'boss'), idLike),
          roles: fc.oneof(fc.constantFrom(['admin'], ['observer'], ['agent'], ['admin', 'agent'], [], ['root'], 'admin'), anyJson),
          exp: fc.oneof(fc.constantFrom('future', 'past'), anyJson),
          iss: anyJson,
          aud: anyJson,
        },
        { requiredKeys: [] },
      ),
      secret: fc.constantFrom('right', 'right', 'wrong', 'none'),
      alg: fc.constantFrom('HS256', 'HS512'),
    })
    .map((j) => ({ $jwt: j }));
  /** JWTs the server accepts, for principals of this tenant with any roles. */
  const goodJwt = fc
    .record({
      claims: fc.record({
        tid: fc.constant(TENANT),
        sub: fc.constantFrom('watcher', 'worker', 'boss', 'nobody'),
        roles: fc.subarray(['admin', 'agent', 'observer'], { minLength: 1 }),
        exp: fc.constant('future'),
      }),
      secret: fc.constant('right' as const),
      alg: fc.constantFrom('HS256' as const, 'HS512' as const),
    })
    .map((j) => ({ $jwt: j }));
  const token = fc.oneof(
    fc.string({ maxLength: 80 }),
    fc.tuple(fc.stringMatching(/^[A-Za-z0-9]{12}$/), fc.stringMatching(/^[A-Za-z0-9_-]{32,64}$/)).map(([a, b]) => `trp_${a}_${b}`),
    fc.tuple(fc.string(), fc.string(), fc.string()).map((parts) => parts.join('.')),
    fc.constantFrom('a.b.c', '..', 'trp_', 'Bearer x', 'x'.repeat(8193), ...known.tokens),
    fc.constantFrom(...known.tokens).map((t) => t.slice(0, -1)),
    jwt,
    goodJwt,
    anyJson,
  );
  const taskCreateLike = fc.record(
    {
      type: fc.oneof(fc.string({ maxLength: 10 }), anyJson),
      title: fc.oneof(fc.string({ maxLength: 10 }), anyJson),
      assignTo: idLike,
      parentTaskId: idLike,
      idempotencyKey: fc.oneof(fc.string({ maxLength: 10 }), anyJson),
      parameters: anyJson,
    },
    { requiredKeys: [] },
  );

  function plausible(key: string): fc.Arbitrary<unknown> {
    switch (key) {
      case 'taskId':
      case 'agentId':
      case 'id':
      case 'assignTo':
      case 'parentTaskId':
      case 'assignedTo':
      case 'createdBy':
        return idLike;
      case 'taskIds':
        return fc.oneof(fc.array(idLike, { maxLength: 6 }), fc.constant(Array.from({ length: 101 }, (_, i) => `t${i}`)));
      case 'status':
        return fc.oneof(
          fc.subarray([...TaskStatuses]),
          fc.subarray([...AgentStatuses]),
          fc.constantFrom(...AgentStatuses, ...TaskStatuses),
          fc.array(fc.string({ maxLength: 8 }), { maxLength: 3 }),
        );
      case 'priority':
        return fc.oneof(fc.constantFrom(...TaskPriorities), fc.subarray([...TaskPriorities]), fc.constant(['urgent']));
      case 'limit':
        return fc.oneof(fc.integer({ min: -2, max: 1002 }), fc.constantFrom(0, 1, 1000, 1001, 10_000, 10_001, 1.5, 1e308));
      case 'cursor':
        return cursor;
      case 'topic':
        return topic;
      case 'fromPosition':
      case 'afterVersion':
      case 'expectedVersion':
        return fc.oneof(fc.integer({ min: -1, max: 40 }), fc.constantFrom(1e15, 2 ** 53, 1.5, -0));
      case 'subscriptionId':
        return fc.oneof(fc.uuid(), fc.string({ maxLength: 70 }));
      case 'token':
        return token;
      case 'deadline':
      case 'createdAfter':
      case 'createdBefore':
      case 'before':
        return fc.oneof(iso, fc.constant(null));
      case 'format':
        return fc.constantFrom('json', 'csv', 'xml', '', 'JSON');
      case 'archived':
        return fc.constantFrom(true, false, 'any', 'all', 0);
      case 'percent':
        return fc.oneof(fc.double({ min: -1, max: 101 }), fc.constantFrom(0, 100, 100.0001, -0));
      case 'tasks':
        return fc.oneof(fc.array(taskCreateLike, { maxLength: 3 }), fc.constant(Array.from({ length: 101 }, () => ({}))));
      case 'capabilities':
      case 'requiredCapabilities':
        return fc.array(fc.oneof(fc.string({ maxLength: 70 }), scalar), { maxLength: 4 });
      case 'query':
      case 'capability':
      case 'type':
        return fc.oneof(fc.string({ maxLength: 20 }), fc.constantFrom('%', '_', '\\', "'", 'fuzz', 'FUZZ', 'known', 'a'.repeat(257)));
      default:
        return fc.oneof(fc.string({ maxLength: 30 }), scalar);
    }
  }

  /** Values the method's schema accepts (so the call reaches its handler). */
  const text = (min: number, max: number) => fc.string({ minLength: min, maxLength: max });
  const validIso = fc.date({ min: new Date(0), max: new Date(4_102_444_800_000), noInvalidDate: true }).map((d) => d.toISOString());
  const futureIso = fc.date({ min: new Date(4_102_444_800_000), max: new Date(7_258_118_400_000), noInvalidDate: true }).map((d) => d.toISOString());
  const validId = fc.oneof(fc.constantFrom(...known.taskIds, known.agentId, 'watcher', 'boss', 'constructor', 'toString'), freshId);
  const validCursor = fc.oneof(
    fc.constant(known.cursor),
    fc.tuple(fc.double({ noNaN: true, noDefaultInfinity: true }), fc.oneof(validId, fc.string())).map(b64),
  );
  function valid(m: MethodName, key: string): fc.Arbitrary<unknown> {
    switch (key) {
      case 'taskId':
        return fc.oneof(fc.constantFrom(...known.taskIds), freshId);
      case 'parentTaskId':
        return fc.oneof(fc.constantFrom(...known.taskIds), freshId);
      case 'agentId':
      case 'id':
      case 'assignTo':
      case 'assignedTo':
      case 'createdBy':
        return validId;
      case 'taskIds':
        return fc.array(validId, { minLength: 1, maxLength: 6 });
      case 'status':
        if (m === 'agent.setStatus') return fc.constantFrom(...AgentStatuses);
        if (m === 'agent.list') return fc.subarray([...AgentStatuses]);
        if (m === 'task.archive') return fc.subarray(['completed', 'failed', 'cancelled', 'timed_out']);
        return fc.subarray([...TaskStatuses]);
      case 'priority':
        return m === 'task.create' || m === 'task.update' ? fc.constantFrom(...TaskPriorities) : fc.subarray([...TaskPriorities]);
      case 'limit':
        return fc.integer({ min: 1, max: 1000 });
      case 'cursor':
        return validCursor;
      case 'topic':
        return fc.constantFrom('tenant', 'inbox:worker', 'inbox:watcher', 'agent:worker', ...known.taskIds.map((t) => `task:${t}`));
      case 'fromPosition':
      case 'afterVersion':
      case 'expectedVersion':
        return fc.nat(30);
      case 'subscriptionId':
        return fc.uuid();
      case 'token':
        return fc.oneof(goodJwt, fc.constantFrom(...known.tokens));
      case 'deadline':
        return futureIso;
      case 'createdAfter':
      case 'createdBefore':
      case 'before':
        return validIso;
      case 'format':
        return fc.constantFrom('json', 'csv');
      case 'archived':
        return fc.constantFrom(true, false, 'any');
      case 'percent':
        return fc.double({ min: 0, max: 100, noNaN: true });
      case 'query':
        return fc.oneof(text(0, 8), fc.constantFrom('known', 'KNOWN', '%', '_', "'", '"'));
      case 'type':
        return fc.oneof(text(1, 8), fc.constant('fuzz'));
      case 'capability':
        return fc.oneof(text(0, 8), fc.constant('fuzz'));
      case 'capabilities':
      case 'requiredCapabilities':
        return fc.array(text(1, 10), { maxLength: 3 });
      case 'parameters':
      case 'metadata':
        return fc.dictionary(text(0, 8), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 });
      case 'input':
      case 'result':
      case 'schema':
        return fc.jsonValue({ maxDepth: 2 });
      case 'maxRetries':
        return fc.integer({ min: 0, max: 100 });
      case 'retryBackoffMs':
        return fc.integer({ min: 0, max: 86_400_000 });
      case 'timeoutSeconds':
        return fc.integer({ min: 1, max: 31_536_000 });
      case 'maxConcurrentTasks':
        return fc.integer({ min: 1, max: 10_000 });
      case 'costPerTask':
        return fc.double({ min: 0, max: 1e9, noNaN: true });
      case 'retryable':
        return fc.boolean();
      case 'tasks':
        return fc.array(fc.record({ type: text(1, 8), title: text(1, 8) }), { minLength: 1, maxLength: 3 });
      default:
        // title, name, kind, description, message, prompt, reason, error, idempotencyKey
        return text(1, 12);
    }
  }
  const optional = (m: MethodName, k: string) =>
    (MethodSchemas[m].shape as Record<string, { safeParse(v: unknown): { success: boolean } }>)[k]!.safeParse(undefined).success;

  const paramsFor = (m: MethodName): fc.Arbitrary<unknown> => {
    const keys = Object.keys(MethodSchemas[m].shape);
    const fields = Object.fromEntries(keys.map((k) => [k, fc.oneof({ weight: 4, arbitrary: plausible(k) }, { weight: 1, arbitrary: anyJson })]));
    const validFields = Object.fromEntries(keys.map((k) => [k, valid(m, k)]));
    return fc.oneof(
      { weight: 6, arbitrary: fc.record(validFields, { requiredKeys: keys.filter((k) => !optional(m, k)) }) },
      { weight: 5, arbitrary: fc.record(fields, { requiredKeys: [] }) },
      { weight: 1, arbitrary: fc.constant({}) },
      { weight: 1, arbitrary: fc.object({ maxDepth: 2, maxKeys: 4 }) },
    );
  };
  const call = fc.oneof(...methods.map((m) => paramsFor(m).map((params) => ({ method: m, params }))));
  const request = call.map(({ method, params }) => ({ jsonrpc: '2.0', id: ID, method, params }) as Json);
  const notification = call.map(({ method, params }) => ({ jsonrpc: '2.0', method, params }) as Json);

  const methodMutant = fc.oneof(
    fc.constantFrom(...methods).chain((m) =>
      fc.constantFrom(m.toUpperCase(), `${m} `, ` ${m}`, `${m}.x`, m.replace('.', '/'), m.replace('.', ''), `${m}\u0000`, m.slice(0, -1)),
    ),
    fc.constantFrom('', 'x'.repeat(128), 'x'.repeat(129), 'rpc.discover', 'system.listMethods', 'task', 'task.', '.', ...DANGEROUS_KEYS),
    fc.string({ maxLength: 30 }),
    anyJson,
  );
  const idMutant = fc.oneof(
    fc.constant(ID),
    scalar,
    anyJson,
    fc.constantFrom(null, true, false, {}, [], [1], 1.5, -0, 1e308, -1, 'x'.repeat(128), 'y'.repeat(129), ''),
  );
  const topKey = fc.oneof(
    fc.constantFrom('jsonrpc', 'id', 'method', 'params'),
    fc.constantFrom('result', 'error', 'Method', 'ID', 'JSONRPC', 'params ', ...DANGEROUS_KEYS),
    fc.string({ maxLength: 10 }),
  );
  const paramKey = fc.oneof(fc.constantFrom(...SHAPE_KEYS), fc.constantFrom(...DANGEROUS_KEYS), fc.string({ maxLength: 12 }));
  type Mut =
    | { op: 'dropTop'; key: string }
    | { op: 'setTop'; key: string; value: unknown }
    | { op: 'dropParam'; index: number }
    | { op: 'setParam'; key: string; value: unknown };
  const mutation: fc.Arbitrary<Mut> = fc.oneof(
    fc.constantFrom('jsonrpc', 'id', 'method', 'params').map((key) => ({ op: 'dropTop' as const, key })),
    fc.record({
      op: fc.constant('setTop' as const),
      key: fc.constant('jsonrpc'),
      value: fc.oneof(fc.constantFrom('2.0 ', '2', '2.00', 2, 2.0, '1.0', '', null, ['2.0'], '２.０', '2.0\u0000'), scalar),
    }),
    fc.record({ op: fc.constant('setTop' as const), key: fc.constant('id'), value: idMutant }),
    fc.record({ op: fc.constant('setTop' as const), key: fc.constant('method'), value: methodMutant }),
    fc.record({
      op: fc.constant('setTop' as const),
      key: fc.constant('params'),
      value: fc.oneof(anyJson, fc.constantFrom([], [1], 'x', 0, null, true, [{}])),
    }),
    fc.record({ op: fc.constant('setTop' as const), key: topKey, value: anyJson }),
    fc.nat(20).map((index) => ({ op: 'dropParam' as const, index })),
    fc.record({
      op: fc.constant('setParam' as const),
      key: paramKey,
      value: fc.oneof(anyJson, fc.constantFrom(...SHAPE_KEYS).chain(plausible)),
    }),
  );
  const applyMut = (env: Json, m: Mut): Json => {
    const e: Json = { ...env };
    switch (m.op) {
      case 'dropTop':
        delete e[m.key];
        break;
      case 'setTop':
        defineOwn(e, m.key, m.value);
        break;
      case 'dropParam':
        if (isObj(e.params)) {
          const p: Json = { ...e.params };
          const keys = Object.keys(p);
          if (keys.length > 0) delete p[keys[m.index % keys.length]!];
          defineOwn(e, 'params', p);
        }
        break;
      case 'setParam':
        if (e.params === undefined || isObj(e.params)) defineOwn(e, 'params', defineOwn({ ...((e.params as Json | undefined) ?? {}) }, m.key, m.value));
        break;
    }
    return e;
  };
  const mutated = fc
    .tuple(fc.oneof({ weight: 4, arbitrary: request }, { weight: 1, arbitrary: notification }), fc.array(mutation, { minLength: 1, maxLength: 3 }))
    .map(([env, muts]) => muts.reduce(applyMut, env));

  /** Makes a write entry one that must fail: an unknown target, or an unknown param. */
  const guard = (e: unknown, fresh: string, useFresh: boolean): unknown => {
    if (!constrain || !isObj(e) || !own(e, 'method') || typeof e.method !== 'string') return e;
    const method = e.method;
    if (!(WRITE_METHODS as string[]).includes(method) || method === 'task.archive') return e;
    const params = own(e, 'params') ? e.params : undefined;
    if (params !== undefined && !isObj(params)) return e;
    const target = WRITE_TARGET[method as MethodName];
    const p: Json = { ...(params ?? {}) };
    if (useFresh && target) defineOwn(p, target, fresh);
    else defineOwn(p, 'unknownFuzzParam', fresh);
    return defineOwn({ ...e }, 'params', p);
  };
  const guarded = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<unknown> =>
    constrain
      ? fc.tuple(arb, freshId, fc.boolean()).map(([v, fresh, useFresh]) =>
          Array.isArray(v) ? v.map((e) => guard(e, fresh, useFresh)) : guard(v, fresh, useFresh),
        )
      : arb;

  const entry = fc.oneof(
    { weight: 4, arbitrary: request },
    { weight: 1, arbitrary: notification },
    { weight: 4, arbitrary: mutated },
    { weight: 2, arbitrary: anyJson },
  );
  const smallEntry = fc.constantFrom<unknown>(1, {}, null, { jsonrpc: '2.0', id: ID, method: 'ping' }, { jsonrpc: '2.0', method: 'ping' });
  const batch = fc.oneof(
    { weight: 8, arbitrary: fc.array(entry, { minLength: 1, maxLength: 6 }) },
    { weight: 1, arbitrary: fc.constant([]) },
    { weight: 1, arbitrary: fc.array(smallEntry, { minLength: MAX_BATCH - 1, maxLength: MAX_BATCH + 3 }) },
    { weight: 1, arbitrary: fc.array(fc.array(entry, { maxLength: 2 }), { minLength: 1, maxLength: 3 }) },
  );

  const rawText = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.string({ unit: 'binary', maxLength: 200 }),
    fc.string({ unit: 'grapheme', maxLength: 60 }),
    fc.constantFrom('', ' ', '\n', '[]', '[[]]', '{}', '[{}]', 'null', '"x"', '1e400', '-', '[', '{', ']', '}', '{"', '\uFEFF', '\u0000'),
  );
  const numTexts = ['1e400', '-1e400', '1E+2', '-0', '0.0', '1.0', '00', '01', '+1', '.5', '5.', '0x10', 'NaN', 'Infinity', '123456789012345678901234567890', '1e-400', '9007199254740993'];
  const freeMethods = constrain ? READ_METHODS : methods;
  const readKeys = [...new Set(freeMethods.flatMap((m) => Object.keys(MethodSchemas[m].shape)))];
  const env = (m: string, rest = '') => `{"jsonrpc":"2.0","id":${ID_TEXT},"method":${JSON.stringify(m)}${rest}}`;
  const tpl = fc.oneof(
    fc.constantFrom(
      env('ping'),
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"ping","id":${ID_TEXT}}`,
      `{"jsonrpc":"2.0","jsonrpc":"1.0","id":${ID_TEXT},"method":"ping"}`,
      `{"jsonrpc":"1.0","jsonrpc":"2.0","id":${ID_TEXT},"method":"session.whoami"}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"task.get","params":{"taskId":"nobody","taskId":${JSON.stringify(known.taskIds[0])}}}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"task.get","params":{"taskId":${JSON.stringify(known.taskIds[1])},"__proto__":{"taskId":"x"}}}`,
      `{"__proto__":{"jsonrpc":"2.0","method":"ping"},"id":${ID_TEXT}}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"task.search","params":{"__proto__":null}}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"task.search","params":{"constructor":{"prototype":{"polluted":true}}}}`,
      `\uFEFF${env('ping')}`,
      ` \n\t${env('ping')}\n `,
      `${env('ping')} x`,
      `${env('ping')}{}`,
      `${env('ping')}${env('ping')}`,
      `// c\n${env('ping')}`,
      `{'jsonrpc':'2.0','id':${ID_TEXT},'method':'ping'}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"ping",}`,
      `[${env('ping')},]`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"p\\u0069ng"}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"ping\\u0000"}`,
      `{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"task.get","params":{"taskId":"\\ud800"}}`,
      `{"jsonrpc":"2.0","id":${ID_TEXT},"method":"ping","params":[]}`,
      `{"jsonrpc":"2.0","id":1e400,"method":"ping"}`,
      `{"jsonrpc":"2.0","method":"ping","id":null}`,
      `[${env('ping')},${env('nope')},{"jsonrpc":"2.0","method":"ping"},1]`,
    ),
    fc.tuple(fc.constantFrom(...numTexts), fc.constantFrom(...freeMethods)).map(([n, m]) => `{"jsonrpc":"2.0","id":${n},"method":"${m}"}`),
    fc
      .tuple(fc.constantFrom(...numTexts), fc.constantFrom(...freeMethods), fc.constantFrom(...readKeys))
      .map(([n, m, k]) => env(m, `,"params":{${JSON.stringify(k)}:${n}}`)),
    fc.tuple(fc.integer({ min: 1, max: 2100 }), fc.constantFrom('[', '{"a":')).map(([n, open]) => {
      const close = open === '[' ? ']' : '}';
      return `${open.repeat(n)}1${close.repeat(n)}`;
    }),
    fc.integer({ min: 1, max: 1800 }).map((n) => env('task.search', `,"params":{"query":${'['.repeat(n)}${']'.repeat(n)}}`)),
  );
  const textMut = fc.record({
    op: fc.constantFrom('del', 'ins', 'rep', 'trunc', 'dup'),
    at: fc.double({ min: 0, max: 1, noNaN: true }),
    s: fc.oneof(fc.string({ minLength: 1, maxLength: 3 }), fc.constantFrom('"', '{', '}', '[', ']', ',', ':', '\\', '\u0000', '\uD800', 'é')),
  });
  const sized = fc.record({
    value: fc.oneof({ weight: 3, arbitrary: request }, { weight: 1, arbitrary: mutated }, { weight: 1, arbitrary: notification }),
    bytes: fc.oneof(
      fc.integer({ min: MAX_FRAME - 3, max: MAX_FRAME + 3 }),
      fc.integer({ min: MAX_FRAME + 1, max: MAX_FRAME + 600 }),
      fc.integer({ min: MAX_FRAME + 1, max: 4 * MAX_FRAME }),
      fc.constant(4 * MAX_FRAME),
    ),
    wide: fc.constantFrom(1 as const, 2 as const, 3 as const, 4 as const),
    front: fc.boolean(),
  });

  const value = (arb: fc.Arbitrary<unknown>) => guarded(arb).map((v): Spec => ({ t: 'value', value: v }));
  const frame: fc.Arbitrary<Spec> = fc.oneof(
    { weight: 3, arbitrary: rawText.map((text): Spec => ({ t: 'text', text })) },
    { weight: 3, arbitrary: tpl.map((text): Spec => ({ t: 'tpl', text })) },
    { weight: 3, arbitrary: value(anyJson) },
    { weight: 10, arbitrary: value(request) },
    { weight: 10, arbitrary: value(mutated) },
    { weight: 2, arbitrary: value(notification) },
    { weight: 5, arbitrary: value(batch) },
    {
      weight: 3,
      arbitrary: fc
        .tuple(guarded(fc.oneof(request, mutated, batch)), fc.array(textMut, { minLength: 1, maxLength: constrain ? 1 : 3 }))
        .map(([v, muts]): Spec => ({ t: 'textMut', value: v, muts })),
    },
    {
      weight: 3,
      arbitrary: fc.tuple(sized, freshId, fc.boolean()).map(([s, fresh, useFresh]): Spec => ({
        t: 'sized',
        ...s,
        value: guard(s.value, fresh, useFresh) as Json,
      })),
    },
    { weight: 1, arbitrary: guarded(fc.oneof(request, batch)).map((v): Spec => ({ t: 'binary', value: v })) },
  );
  return { frame };
}

// ---------------------------------------------------------------------------------------------
// Sending one frame and checking its window of replies

let firstFailure: string | null = null;

async function fire(s: Session, spec: Spec, counter: Counter, ctx: Ctx): Promise<void> {
  const r = await render(spec, counter);
  // Over 4x maxFrameBytes the server closes the connection (1009): tested on other sockets.
  fc.pre(Buffer.byteLength(r.text) <= 4 * MAX_FRAME);
  const exp = expectedFor(r);
  const sentinel = `sentinel:${s.name}:${++s.sentinels}`;
  const raw = s.raw;
  if (!raw.open) throw new Error(`the ${s.name} connection is closed: ${JSON.stringify(raw.closeInfo)}`);
  if (r.binary) raw.ws.send(Buffer.from(r.text, 'utf8'), { binary: true });
  else raw.send(r.text);
  raw.send({ jsonrpc: '2.0', id: sentinel, method: 'ping' });
  s.frames++;

  const wanted = exp.kind === 'none' ? 0 : 1;
  const isSentinel = (m: unknown) => isObj(m) && m.id === sentinel;
  const responses = () => {
    let n = 0;
    for (let i = s.checked; i < raw.frames.length; i++) {
      const m = raw.frames[i]!.msg;
      if (!isPush(m) && !isSentinel(m)) n++;
    }
    return n;
  };
  const problems: string[] = [];
  try {
    await s.tap.until(
      () => raw.indexOf((f) => isSentinel(f.msg), s.checked) >= 0 && responses() >= wanted,
      REPLY_TIMEOUT_MS,
      `${wanted} reply frame(s) and the sentinel`,
    );
  } catch (e) {
    problems.push((e as Error).message);
  }

  const window = raw.frames.slice(s.checked);
  s.checked = raw.frames.length;
  const got: unknown[] = [];
  for (const f of window) {
    if (f.msg === undefined) {
      problems.push(`a frame that is not JSON: ${short(f.text, 400)}`);
      continue;
    }
    if (isSentinel(f.msg)) {
      for (const q of malformed(f.msg)) problems.push(`sentinel reply: ${q}`);
      continue;
    }
    if (isPush(f.msg)) {
      problems.push(...badPush(f.msg as Json));
      continue;
    }
    got.push(f.msg);
  }
  s.replies += got.length;

  if (exp.kind === 'none') {
    for (const m of got) problems.push(`a reply to a frame that must get none: ${short(JSON.stringify(m), 600)}`);
  } else if (got.length !== 1) {
    if (got.length > 1 || problems.length === 0) problems.push(`expected one reply frame, got ${got.length}: ${got.map((m) => short(JSON.stringify(m), 400)).join(' | ')}`);
  } else {
    const m = got[0];
    const list = exp.kind === 'batch' ? m : [m];
    if (exp.kind === 'batch' && !Array.isArray(m)) problems.push(`a batch must be answered with an array, got ${short(JSON.stringify(m), 600)}`);
    else if (exp.kind === 'single' && Array.isArray(m)) problems.push(`a single request must not be answered with an array: ${short(JSON.stringify(m), 600)}`);
    else {
      const replies = list as unknown[];
      if (exp.kind === 'batch' && replies.length === 0) problems.push('an empty array was sent for a batch');
      let shapeOk = true;
      for (const x of replies) {
        const bad = malformed(x);
        if (bad.length > 0) shapeOk = false;
        for (const q of bad) problems.push(`malformed reply ${short(JSON.stringify(x), 600)}: ${q}`);
        if (isObj(x) && isObj(x.error) && typeof x.error.code === 'number') s.codes.set(x.error.code, (s.codes.get(x.error.code) ?? 0) + 1);
      }
      if (shapeOk) problems.push(...matchReplies(replies as Json[], exp.kind === 'batch' ? exp.replies : [exp.reply], s));
    }
  }

  if (!raw.open) problems.push(`the connection was closed: ${JSON.stringify(raw.closeInfo)}`);
  const head = await ctx.ts.store.headPosition();
  if (head !== ctx.head) problems.push(`the store's head moved from ${ctx.head} to ${head}`);
  const errors = ctx.logs.filter((l) => l.level >= 50);
  if (errors.length > ctx.errorsSeen) {
    problems.push(`the server logged errors: ${errors.slice(ctx.errorsSeen).map((l) => JSON.stringify(l)).join(' | ')}`);
    ctx.errorsSeen = errors.length;
  }

  if (problems.length > 0) {
    const report = [
      `${s.name} frame #${s.frames} (seed ${SEED}):`,
      `  sent (${r.binary ? 'binary' : 'text'}, ${Buffer.byteLength(r.text)} bytes): ${short(r.text)}`,
      `  expected: ${JSON.stringify(exp)}`,
      `  received: ${window.map((f) => short(f.text, 1500)).join('\n            ')}`,
      ...problems.map((p) => `  - ${p}`),
    ].join('\n');
    firstFailure ??= report;
    throw new Error(report);
  }
}

/** After the last frame: one more sentinel, and nothing but pushes may arrive before its reply. */
async function drain(s: Session): Promise<void> {
  const sentinel = `sentinel:${s.name}:${++s.sentinels}`;
  const isSentinel = (m: unknown) => isObj(m) && m.id === sentinel;
  s.raw.send({ jsonrpc: '2.0', id: sentinel, method: 'ping' });
  await s.tap.until(() => s.raw.indexOf((f) => isSentinel(f.msg), s.checked) >= 0, REPLY_TIMEOUT_MS, 'the last sentinel');
  const window = s.raw.frames.slice(s.checked);
  s.checked = s.raw.frames.length;
  const stray = window.filter((f) => !isSentinel(f.msg) && !(isPush(f.msg) && badPush(f.msg as Json).length === 0));
  assert.equal(stray.map((f) => f.text), [], 'nothing unexpected arrived after the last frame was answered');
}

// ---------------------------------------------------------------------------------------------
// The suite

interface Logged {
  level: number;
  msg?: string;
  [k: string]: unknown;
}

interface Ctx {
  ts: TestServer;
  logs: Logged[];
  errorsSeen: number;
  agent: Session;
  observer: Session;
  known: Known;
  /** task.get and task.timeline of each known task and agent.get of the agent, before fuzzing. */
  before: string;
  head: number;
  counter: Counter;
  started: number;
}

const test = suite<Ctx>('fuzz: random and mutated frames get well-formed replies and change nothing');

async function session(ts: TestServer, name: string, principalId: string, roles: Role[]): Promise<Session> {
  const raw = await RawSocket.open(ts.url, await ts.key(TENANT, principalId, roles));
  const me = await raw.ok('session.whoami');
  assert.is(me.principalId, principalId);
  return {
    name,
    raw,
    tap: new Tap(raw),
    principal: { tenantId: TENANT, principalId, roles },
    checked: raw.frames.length,
    sentinels: 0,
    frames: 0,
    replies: 0,
    codes: new Map(),
    outcomes: new Map(),
  };
}

/** What must not change: the known tasks, the agent, and the store's head. */
async function state(ctx: Ctx): Promise<string> {
  const tasks = [];
  for (const taskId of ctx.known.taskIds) tasks.push(await ctx.agent.raw.ok('task.get', { taskId }));
  const timelines = [];
  for (const taskId of ctx.known.taskIds) timelines.push(await ctx.agent.raw.ok('task.timeline', { taskId }));
  const agent = await ctx.agent.raw.ok('agent.get', { agentId: ctx.known.agentId });
  return JSON.stringify({ tasks, timelines, agent }, null, 1);
}

test.before(async (ctx) => {
  ctx.started = Date.now();
  ctx.logs = [];
  ctx.errorsSeen = 0;
  ctx.counter = { next: 1 };
  const logger = pino({ level: 'warn' }, { write: (line: string) => void ctx.logs.push(JSON.parse(line) as Logged) });
  ctx.ts = await startServer({ maxFrameBytes: MAX_FRAME, jwtSecret: JWT_SECRET, logger });

  // A registered agent with tasks in a few states, and one task of an admin.
  ctx.agent = await session(ctx.ts, 'agent', 'worker', ['agent']);
  const a = ctx.agent.raw;
  await a.ok('agent.register', { name: 'Fuzz worker', capabilities: ['fuzz', 'review'], maxConcurrentTasks: 3 });
  const pending = await a.ok('task.create', { type: 'fuzz', title: 'known pending', parameters: { a: 1, nested: { b: [1, 2] } }, priority: 'low' });
  const active = await a.ok('task.create', { type: 'fuzz', title: 'known active', assignTo: 'worker', description: 'in progress' });
  await a.ok('task.accept', { taskId: active.id });
  await a.ok('task.start', { taskId: active.id });
  await a.ok('task.progress', { taskId: active.id, percent: 40, message: 'working' });
  const asking = await a.ok('task.create', { type: 'fuzz', title: 'known asking', assignTo: 'worker' });
  await a.ok('task.accept', { taskId: asking.id });
  await a.ok('task.start', { taskId: asking.id });
  await a.ok('task.requestInput', { taskId: asking.id, prompt: 'which one?' });
  const boss = await ctx.ts.client(TENANT, 'boss', ['admin']);
  const foreign = await boss.call('task.create', { type: 'fuzz', title: 'known foreign', priority: 'high' });
  const page = await a.ok('task.search', { limit: 1 });
  assert.type(page.nextCursor, 'string');
  const tokens = [
    await ctx.ts.key(TENANT, 'boss', ['admin']),
    await ctx.ts.key(TENANT, 'watcher', ['admin']),
    await ctx.ts.key(TENANT, 'worker', ['admin', 'agent']),
    await ctx.ts.key(TENANT, 'nobody', ['agent']),
    await ctx.ts.key('other', 'watcher', ['admin']),
    await ctx.ts.key('other', 'worker', ['agent']),
  ];
  ctx.known = { taskIds: [pending.id, active.id, asking.id, foreign.id], agentId: 'worker', cursor: page.nextCursor, tokens };

  ctx.observer = await session(ctx.ts, 'observer', 'watcher', ['observer']);
  ctx.head = await ctx.ts.store.headPosition();
  ctx.before = await state(ctx);
  assert.is(await ctx.ts.store.headPosition(), ctx.head, 'reading changes nothing');
  ctx.agent.checked = ctx.agent.raw.frames.length;
});

test.after(async (ctx) => {
  const seconds = ((Date.now() - ctx.started) / 1000).toFixed(1);
  const total = (ctx.observer?.frames ?? 0) + (ctx.agent?.frames ?? 0);
  const replies = (ctx.observer?.replies ?? 0) + (ctx.agent?.replies ?? 0);
  console.log(
    `fuzz: ${total} frames tried (observer ${ctx.observer?.frames ?? 0}, agent ${ctx.agent?.frames ?? 0}), ${replies} reply frames, seed ${SEED}, ${seconds} s`,
  );
  if (process.env.FUZZ_STATS === '1') {
    for (const s of [ctx.observer, ctx.agent]) {
      console.log(s.name, Object.fromEntries([...s.codes].sort((a, b) => b[1] - a[1])));
      console.log(Object.fromEntries([...s.outcomes].sort()));
    }
  }
  await ctx.observer?.raw.close();
  await ctx.agent?.raw.close();
  await ctx.ts.close();
});

async function runRound(ctx: Ctx, s: Session, arbs: Arbs, numRuns: number): Promise<void> {
  s.checked = s.raw.frames.length;
  try {
    await fc.assert(
      fc.asyncProperty(arbs.frame, (spec) => fire(s, spec, ctx.counter, ctx)),
      { seed: SEED, numRuns, endOnFailure: !SHRINK },
    );
    await drain(s);
  } catch (e) {
    const message = (e as Error).message;
    // Without shrinking fast-check's report already holds the failing frame; with it, keep the first.
    throw new Error(firstFailure && !message.includes(firstFailure) ? `first failure:\n${firstFailure}\n\n${message}` : message);
  }
}

async function unchanged(ctx: Ctx, s: Session): Promise<void> {
  assert.ok(s.raw.open, `the ${s.name} connection stays open`);
  const me = await s.raw.ok('session.whoami');
  assert.equal({ tenantId: me.tenantId, principalId: me.principalId, roles: me.roles }, s.principal, 'the principal did not change');
  assert.is(await ctx.ts.store.headPosition(), ctx.head, 'nothing was written to the store');
  assert.fixture(await state(ctx), ctx.before, 'the known tasks and the agent are exactly as before');
  assert.is(ctx.logs.filter((l) => l.level >= 50).length, 0, `no errors were logged: ${JSON.stringify(ctx.logs)}`);
}

test('an observer: any frame gets well-formed replies, and nothing changes', async (ctx) => {
  const arbs = arbitraries(ctx.known, ALL_METHODS, false);
  await runRound(ctx, ctx.observer, arbs, OBSERVER_RUNS);
  await unchanged(ctx, ctx.observer);
  // Several answers actually ran handlers, and many failed validation.
  assert.ok((ctx.observer.codes.get(ErrorCodes.INVALID_PARAMS) ?? 0) > 50, `INVALID_PARAMS seen ${ctx.observer.codes.get(ErrorCodes.INVALID_PARAMS)} times`);
  assert.ok((ctx.observer.codes.get(ErrorCodes.FORBIDDEN) ?? 0) > 5, `FORBIDDEN seen ${ctx.observer.codes.get(ErrorCodes.FORBIDDEN)} times`);
});

test('an agent with reads and failing writes: never an INTERNAL error, and nothing changes', async (ctx) => {
  const arbs = arbitraries(ctx.known, [...READ_METHODS, ...WRITE_METHODS, 'session.authenticate'], true);
  await runRound(ctx, ctx.agent, arbs, AGENT_RUNS);
  await unchanged(ctx, ctx.agent);
  assert.not.ok(ctx.agent.codes.has(ErrorCodes.INTERNAL));
  assert.ok((ctx.agent.codes.get(ErrorCodes.NOT_FOUND) ?? 0) > 5, `NOT_FOUND seen ${ctx.agent.codes.get(ErrorCodes.NOT_FOUND)} times`);
});

test('frames over 4x maxFrameBytes close only their own connection with 1009', async (ctx) => {
  for (const [bytes, wide] of [
    [4 * MAX_FRAME + 1, 'x'],
    [4 * MAX_FRAME + 2, 'é'],
    [6 * MAX_FRAME, '😀'],
  ] as const) {
    const victim = await RawSocket.open(ctx.ts.url, await ctx.ts.key(TENANT, 'watcher', ['observer']));
    assert.ok((await victim.call('ping')).result);
    const base = JSON.stringify({ jsonrpc: '2.0', id: 'huge', method: 'ping', pad: '' });
    const need = bytes - Buffer.byteLength(base);
    const wb = Buffer.byteLength(wide);
    const text = base.replace('"pad":""', `"pad":"${wide.repeat(Math.floor(need / wb))}${'x'.repeat(need % wb)}"`);
    assert.is(Buffer.byteLength(text), bytes);
    victim.send(text);
    const { code } = await victim.waitClosed();
    assert.is(code, 1009);
    assert.is(victim.indexOf((f) => f.msg?.id === 'huge'), -1, 'the frame was not answered');
  }
  const pong = await ctx.observer.raw.call('ping');
  assert.equal((pong.result as { pong: boolean }).pong, true, 'the other connections still serve');
  ctx.observer.checked = ctx.observer.raw.frames.length;
  await unchanged(ctx, ctx.observer);
});

test.run();

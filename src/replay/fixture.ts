import fs from 'node:fs';
import { z } from 'zod';
import { Id, TenantId } from '../../protocol/methods.js';
import { Roles, type Role } from '../../protocol/model.js';
import { checkPattern, checkSendValue, collectCaptures, collectRefs } from './matchers.js';

/**
 * The replay fixture format (DESIGN §10): a scripted conversation of one or more clients with a
 * real Troupe server over real WebSockets. It is part of Troupe's public interface — users write
 * their own — so it only ever grows compatibly. `docs/replay.md` is the user reference.
 */

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** How a client authenticates when it connects. */
export type ClientAuth = 'header' | 'message' | 'none';

/** One declared client: the runner provisions an API key for it. */
export interface ClientSpec {
  tenant: string;
  principal: string;
  roles: Role[];
  /** Connect before the first step (default true). */
  connect?: boolean;
  /**
   * `header` (default): `Authorization: Bearer <key>` on the upgrade. `message`: no header; the
   * fixture authenticates with `session.authenticate` and `"$ref:token.NAME"`. `none`: no header
   * either, for fixtures about unauthenticated connections (the key is still available).
   */
  auth?: ClientAuth;
}

/** Server settings a fixture may need; durations in milliseconds, sizes in bytes. */
export interface ServerSpec {
  /** Frames larger than this get PAYLOAD_TOO_LARGE (-32020); 4× larger ones close with 1009. */
  maxFrameBytes?: number;
  /** Unauthenticated connections are closed after this long. */
  authGraceMs?: number;
}

interface StepBase {
  /** Free text for readers; ignored by the runner. */
  comment?: string;
}

/** Send one JSON frame (an object, or an array for a batch). */
export interface SendStep extends StepBase {
  client: string;
  send: { [key: string]: Json } | Json[];
}
/** Send a text frame exactly as given (for malformed input). */
export interface SendRawStep extends StepBase {
  client: string;
  sendRaw: string;
}
/** Wait for the first queued message of the client that matches, and consume it. */
export interface ExpectStep extends StepBase {
  client: string;
  expect: Json;
  /** Default 5000, or the runner's `defaultTimeoutMs`. */
  timeoutMs?: number;
}
/** Assert that no message matching the pattern arrives within the window. */
export interface ExpectNoneStep extends StepBase {
  client: string;
  expectNone: Json;
  withinMs: number;
}
/** Stop the server and start it again on the same store; connected clients reconnect. */
export interface RestartStep extends StepBase {
  restart: true;
}
/** Wait this many milliseconds (for durable-timer cases). */
export interface SleepStep extends StepBase {
  sleep: number;
}
/** Open the client's connection. */
export interface ConnectStep extends StepBase {
  client: string;
  connect: true;
}
/** Close the client's connection (close code 1000). */
export interface DisconnectStep extends StepBase {
  client: string;
  disconnect: true;
}
/** Wait until the server closes the client's connection, optionally with a given code. */
export interface ExpectCloseStep extends StepBase {
  client: string;
  expectClose: { code?: number; reason?: Json };
  timeoutMs?: number;
}

/** One step of a fixture. */
export type Step =
  | SendStep
  | SendRawStep
  | ExpectStep
  | ExpectNoneStep
  | RestartStep
  | SleepStep
  | ConnectStep
  | DisconnectStep
  | ExpectCloseStep;

/** The kinds of step, named after the key that identifies each. */
export const StepKinds = ['send', 'sendRaw', 'expect', 'expectNone', 'restart', 'sleep', 'connect', 'disconnect', 'expectClose'] as const;
/** One of {@link StepKinds}. */
export type StepKind = (typeof StepKinds)[number];

/** A replay fixture. */
export interface Fixture {
  /** A sentence saying what the conversation shows; the test name. */
  name: string;
  description?: string;
  server?: ServerSpec;
  clients: Record<string, ClientSpec>;
  steps: Step[];
}

/** A fixture that does not follow the format; `issues` name the path of each problem. */
export class FixtureError extends Error {
  readonly issues: string[];
  constructor(source: string, issues: string[]) {
    super(`${source} is not a valid replay fixture:\n${issues.map((i) => `  - ${i}`).join('\n')}`);
    this.name = 'FixtureError';
    this.issues = issues;
  }
}

const JsonValue: z.ZodType<Json> = z.json();
const ClientName = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'client names are 1-64 characters of A-Z a-z 0-9 _ -');
const Ms = (max: number) => z.number().int().min(0).max(max);
const comment = { comment: z.string().optional() };
const client = { client: z.string().min(1) };

const ClientSchema = z.strictObject({
  tenant: TenantId,
  principal: Id,
  roles: z.array(z.enum(Roles)).min(1),
  connect: z.boolean().optional(),
  auth: z.enum(['header', 'message', 'none']).optional(),
});

/** The zod schema of each step kind. */
const StepSchemas: Record<StepKind, z.ZodType> = {
  send: z.strictObject({ ...comment, ...client, send: z.union([z.record(z.string(), JsonValue), z.array(JsonValue)]) }),
  sendRaw: z.strictObject({ ...comment, ...client, sendRaw: z.string() }),
  expect: z.strictObject({ ...comment, ...client, expect: JsonValue, timeoutMs: Ms(600_000).optional() }),
  expectNone: z.strictObject({ ...comment, ...client, expectNone: JsonValue, withinMs: Ms(600_000) }),
  restart: z.strictObject({ ...comment, restart: z.literal(true) }),
  sleep: z.strictObject({ ...comment, sleep: Ms(600_000) }),
  connect: z.strictObject({ ...comment, ...client, connect: z.literal(true) }),
  disconnect: z.strictObject({ ...comment, ...client, disconnect: z.literal(true) }),
  expectClose: z.strictObject({
    ...comment,
    ...client,
    expectClose: z.strictObject({ code: z.number().int().min(1000).max(4999).optional(), reason: JsonValue.optional() }),
    timeoutMs: Ms(600_000).optional(),
  }),
};

const FixtureSchema = z.strictObject({
  name: z.string().min(1).max(200),
  description: z.string().optional(),
  server: z
    .strictObject({
      maxFrameBytes: z.number().int().min(64).max(64 * 1024 * 1024).optional(),
      authGraceMs: Ms(600_000).optional(),
    })
    .optional(),
  clients: z.record(ClientName, ClientSchema),
  steps: z.array(z.unknown()).min(1),
});

function pathOf(base: string, path: readonly PropertyKey[]): string {
  let s = base;
  for (const p of path) {
    if (typeof p === 'number') s += `[${p}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(String(p))) s += s ? `.${String(p)}` : String(p);
    else s += `[${JSON.stringify(String(p))}]`;
  }
  return s || '(fixture)';
}

function zodIssues(base: string, error: z.ZodError): string[] {
  return error.issues.map((i) => `${pathOf(base, i.path)}: ${i.message}`);
}

/** The kind of a step, from the one identifying key it has. */
export function stepKind(step: Step): StepKind {
  for (const k of StepKinds) if (k in step) return k;
  throw new Error('not a step');
}

/**
 * Checks a parsed JSON value against the fixture format and returns it typed. Besides the shape
 * it checks that every step names a declared client, that every matcher is known, and that every
 * `$ref:NAME` is captured by an earlier step (or is a built-in `token.CLIENT`).
 *
 * @param source names the fixture in error messages (a file path, say)
 * @throws {@link FixtureError} listing every problem with its path
 * @example
 * ```ts
 * const fixture = parseFixture(JSON.parse(text), 'my-case.json');
 * ```
 */
export function parseFixture(value: unknown, source = 'fixture'): Fixture {
  const top = FixtureSchema.safeParse(value);
  if (!top.success) throw new FixtureError(source, zodIssues('', top.error));
  const f = top.data;
  const issues: string[] = [];
  const clients = new Set(Object.keys(f.clients));
  const known = new Set([...clients].map((c) => `token.${c}`));
  const steps: Step[] = [];
  f.steps.forEach((raw, i) => {
    const at = `steps[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      issues.push(`${at}: a step must be an object`);
      return;
    }
    const kinds = StepKinds.filter((k) => k in raw);
    if (kinds.length !== 1) {
      issues.push(
        kinds.length === 0
          ? `${at}: unknown step; a step has exactly one of ${StepKinds.join(', ')}`
          : `${at}: a step has exactly one of ${StepKinds.join(', ')}, this one has ${kinds.join(' and ')}`,
      );
      return;
    }
    const kind = kinds[0]!;
    const parsed = StepSchemas[kind].safeParse(raw);
    if (!parsed.success) {
      issues.push(...zodIssues(at, parsed.error));
      return;
    }
    const step = parsed.data as Step;
    if ('client' in step && !clients.has(step.client)) {
      issues.push(`${at}.client: "${step.client}" is not declared in "clients" (declared: ${[...clients].join(', ') || 'none'})`);
    }
    const check = (p: string, v: Json, pattern: boolean) => {
      issues.push(...(pattern ? checkPattern(v, `${at}.${p}`) : checkSendValue(v, `${at}.${p}`)));
      const own = kind === 'expect' ? collectCaptures(v) : [];
      for (const r of collectRefs(v)) {
        if (!known.has(r.name) && !own.includes(r.name)) {
          issues.push(`${at}.${p}${r.path}: "$ref:${r.name}" is not captured by an earlier expect step (add "$capture:${r.name}" there)`);
        }
      }
      for (const c of own) known.add(c);
    };
    if (kind === 'send') check('send', (step as SendStep).send, false);
    if (kind === 'expect') check('expect', (step as ExpectStep).expect, true);
    if (kind === 'expectNone') check('expectNone', (step as ExpectNoneStep).expectNone, true);
    if (kind === 'expectClose' && (step as ExpectCloseStep).expectClose.reason !== undefined) {
      check('expectClose.reason', (step as ExpectCloseStep).expectClose.reason!, true);
    }
    steps.push(step);
  });
  if (issues.length > 0) throw new FixtureError(source, issues);
  return { ...f, clients: f.clients as Record<string, ClientSpec>, steps };
}

/**
 * Reads and checks a fixture file.
 *
 * @throws {@link FixtureError} when the file is not JSON or not a valid fixture
 */
export function loadFixture(file: string): Fixture {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new FixtureError(file, [`cannot read the file: ${(e as Error).message}`]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new FixtureError(file, [`the file is not valid JSON: ${(e as Error).message}`]);
  }
  return parseFixture(value, file);
}

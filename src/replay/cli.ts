import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { FixtureError, loadFixture } from './fixture.js';
import { recordSession } from './recorder.js';
import { runFixture } from './runner.js';

/** Writes output; the CLI passes stdout. */
export type Out = (s: string) => void;

const REPLAY_HELP = `Usage: troupe replay <fixture.json | directory>... [--timeout <ms>] [--verbose]

Runs each fixture against a fresh in-process Troupe server (temporary SQLite store) and prints
"ok  <name>" or "FAIL <name>" with the details, then "N passed, M failed".
  --timeout <ms>  default wait of expect steps without timeoutMs (default 5000)
  --verbose       print every step and every frame sent and received
Exit code: 0 when all pass, 1 when any fails, 2 on a usage error.
`;

const RECORD_HELP = `Usage: troupe record --url ws://host:port/v1 --key <key> --out <fixture.json> [--name <text>] [--port <n>]

Starts a WebSocket proxy to the server and prints its URL. Connect your client to it without
credentials (the proxy authenticates with --key). The fixture is written when the last client
disconnects, or on Ctrl-C.
`;

function indent(s: string): string {
  return s
    .split('\n')
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');
}

/** The fixture files named by the arguments: files as given, directories expanded to their `*.json`. */
function fixtureFiles(args: string[]): string[] {
  const files: string[] = [];
  for (const a of args) {
    if (fs.existsSync(a) && fs.statSync(a).isDirectory()) {
      files.push(...fs.readdirSync(a).filter((f) => f.endsWith('.json')).sort().map((f) => path.join(a, f)));
    } else files.push(a);
  }
  return files;
}

/**
 * `troupe replay`: runs fixture files and reports each.
 *
 * @returns the exit code: 0 all passed, 1 some failed, 2 usage error
 * @example
 * ```ts
 * process.exitCode = await replayCommand(['test/replay'], (s) => process.stdout.write(s));
 * ```
 */
export async function replayCommand(args: string[], out: Out): Promise<number> {
  let values;
  let positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: { timeout: { type: 'string' }, verbose: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    out(`troupe replay: ${(e as Error).message}\n\n${REPLAY_HELP}`);
    return 2;
  }
  if (values.help) {
    out(REPLAY_HELP);
    return 0;
  }
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && (!Number.isInteger(timeout) || timeout <= 0)) {
    out(`troupe replay: --timeout must be a positive number of milliseconds, got "${values.timeout}"\n`);
    return 2;
  }
  const files = fixtureFiles(positionals);
  if (files.length === 0) {
    out(`troupe replay: name at least one fixture file\n\n${REPLAY_HELP}`);
    return 2;
  }
  let passed = 0;
  let failed = 0;
  for (const file of files) {
    let name = file;
    try {
      const fixture = loadFixture(file);
      name = fixture.name;
      const trace = values.verbose ? (line: string) => out(`    ${line}\n`) : undefined;
      const r = await runFixture(fixture, { defaultTimeoutMs: timeout, trace });
      out(`ok  ${name}${values.verbose ? ` (${r.steps} steps, ${r.durationMs} ms)` : ''}\n`);
      passed++;
    } catch (e) {
      failed++;
      const detail = e instanceof FixtureError ? e.message : `${file}: ${(e as Error).message}`;
      out(`FAIL ${name}\n${indent(detail)}\n`);
    }
  }
  out(`${passed} passed, ${failed} failed\n`);
  return failed === 0 ? 0 : 1;
}

/**
 * `troupe record`: proxies one session and writes it as a fixture.
 *
 * @returns the exit code: 0 written, 2 usage error or the server refused the key
 */
export async function recordCommand(args: string[], out: Out): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        url: { type: 'string' },
        key: { type: 'string' },
        out: { type: 'string' },
        name: { type: 'string' },
        port: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    out(`troupe record: ${(e as Error).message}\n\n${RECORD_HELP}`);
    return 2;
  }
  if (values.help) {
    out(RECORD_HELP);
    return 0;
  }
  if (!values.url || !values.key || !values.out) {
    out(`troupe record: --url, --key and --out are required\n\n${RECORD_HELP}`);
    return 2;
  }
  const port = values.port === undefined ? 0 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    out(`troupe record: --port must be a port number, got "${values.port}"\n`);
    return 2;
  }
  let rec;
  try {
    rec = await recordSession({ url: values.url, key: values.key, name: values.name, port });
  } catch (e) {
    out(`troupe record: ${(e as Error).message}\n`);
    return 2;
  }
  const p = rec.principal;
  out(`recording as ${p.principalId}@${p.tenantId} (${p.roles.join(',')}); connect your client to ${rec.proxyUrl} without a token; Ctrl-C stops\n`);
  let onSigint: (() => void) | undefined;
  await Promise.race([rec.finished, new Promise<void>((resolve) => process.once('SIGINT', (onSigint = resolve)))]);
  if (onSigint) process.off('SIGINT', onSigint);
  const fixture = await rec.stop();
  fs.writeFileSync(values.out, `${JSON.stringify(fixture, null, 2)}\n`);
  out(`wrote ${values.out}: ${Object.keys(fixture.clients).length} client(s), ${fixture.steps.length} steps\n`);
  return 0;
}

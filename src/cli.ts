import fs from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { parseArgs } from 'node:util';
import { replay, replayPersisted } from '../actors/replay.js';
import { addressOf } from '../actors/ActorKind.js';
import type { Store } from '../actors/Store.js';
import { Roles, type Role } from '../protocol/model.js';
import { protocolJsonSchema } from '../protocol/schema.js';
import { Authenticator } from './auth/Authenticator.js';
import { loadConfig } from './config.js';
import { actorKinds } from './kinds/index.js';
import { openStore } from './storage/openStore.js';

const HELP = `troupe — command line tools for a Troupe store

Usage:
  troupe keys create --tenant <id> --principal <id> --roles <admin,agent,observer> [--label <text>]
  troupe keys list [--tenant <id>]
  troupe keys revoke <keyId>
  troupe tenants create <id> [--name <text>]
  troupe tenants list
  troupe verify                 replay every stream and compare with its stored snapshot
  troupe protocol-schema [--out <file>]
  troupe replay <fixture.json | dir>... [--timeout <ms>] [--verbose]
                                runs replay fixtures against a fresh in-process server
  troupe record --url ws://host:port/v1 --key <key> --out <fixture.json> [--name <text>] [--port <n>]
                                proxies a live session and writes it as a fixture (docs/replay.md)

The store is the one the server uses: --store / TROUPE_STORE, or sqlite:<dataDir>/troupe.db
(--data-dir / TROUPE_DATA_DIR, default ./data). SQLite may be used while the server runs.
`;

/** A usage error: reported on stderr with exit code 2. */
export class CliError extends Error {}

function fail(message: string): never {
  throw new CliError(message);
}

/**
 * Replays every stream of a store through its machine and compares the result with the stored
 * snapshot (at the snapshot's version) and with the read model row (at the stream's head).
 */
export async function verifyStore(store: Store): Promise<{ streams: number; snapshots: number; mismatches: string[] }> {
  const kinds = new Map(actorKinds.map((k) => [k.kind, k]));
  const mismatches: string[] = [];
  let streams = 0;
  let snapshots = 0;
  for (const stream of await store.listStreams()) {
    const address = addressOf(stream);
    const kind = kinds.get(address.kind);
    if (!kind) continue;
    streams++;
    const events = await store.readStream(stream);
    const snap = await store.loadSnapshot(stream);
    if (snap) {
      snapshots++;
      const replayed = replayPersisted(kind.machine, events.slice(0, snap.version));
      if (!isDeepStrictEqual(JSON.parse(JSON.stringify(replayed)), snap.state)) mismatches.push(`${stream}: snapshot at version ${snap.version}`);
    }
    const version = events.length > 0 ? events[events.length - 1]!.version : 0;
    const expected = kind.view(replay(kind.machine, events), address, version);
    const actual = (await store.getView(address.tenant, address.kind, address.id)) ?? null;
    if (!isDeepStrictEqual(JSON.parse(JSON.stringify(expected)), actual)) mismatches.push(`${stream}: read model at version ${version}`);
  }
  return { streams, snapshots, mismatches };
}

/**
 * Runs one CLI command and returns the process exit code: 0 done, 1 a check failed, 2 a usage
 * or input error (written to `err`).
 */
export async function runCli(
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(s),
  err: (s: string) => void = (s) => process.stderr.write(s),
): Promise<number> {
  try {
    return await runCommand(argv, out);
  } catch (e) {
    // parseArgs reports unknown or malformed options with a TypeError carrying an ERR_PARSE_ARGS code.
    const code = (e as { code?: string }).code;
    if (e instanceof CliError || code?.startsWith('ERR_PARSE_ARGS')) {
      err(`troupe: ${(e as Error).message}\n`);
      return 2;
    }
    throw e;
  }
}

async function runCommand(argv: string[], out: (s: string) => void): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  // The replay tools parse their own flags.
  if (cmd === 'replay' || cmd === 'record') {
    const { replayCommand, recordCommand } = await import('./replay/cli.js');
    return (cmd === 'replay' ? replayCommand : recordCommand)(argv.slice(1), out);
  }
  const { values, positionals } = parseArgs({
    args: argv.slice(1),
    options: {
      tenant: { type: 'string' },
      principal: { type: 'string' },
      roles: { type: 'string' },
      label: { type: 'string' },
      name: { type: 'string' },
      out: { type: 'string' },
      store: { type: 'string' },
      'data-dir': { type: 'string' },
    },
    allowPositionals: true,
    strict: true,
  });
  void rest;
  const config = () => {
    const args: string[] = [];
    if (values.store) args.push('--store', values.store);
    if (values['data-dir']) args.push('--data-dir', values['data-dir']);
    return loadConfig(args);
  };
  const withStore = async <T>(fn: (store: ReturnType<typeof openStore>) => Promise<T>): Promise<T> => {
    const c = config();
    const store = openStore(c.store, { sqliteSync: c.sqliteSync });
    try {
      return await fn(store);
    } finally {
      await store.close();
    }
  };

  switch (cmd) {
    case 'keys':
      // Usage errors are reported before the store is opened (or created).
      if (sub === 'create' && (!values.tenant || !values.principal || !values.roles)) fail('keys create needs --tenant, --principal and --roles');
      return withStore(async (store) => {
        const auth = new Authenticator({ store });
        if (sub === 'create') {
          if (!values.tenant || !values.principal || !values.roles) fail('keys create needs --tenant, --principal and --roles');
          const roles = values.roles.split(',').map((r) => r.trim());
          const bad = roles.filter((r) => !(Roles as readonly string[]).includes(r));
          if (bad.length) fail(`unknown role(s) ${bad.join(', ')}; use ${Roles.join(', ')}`);
          const { key, record } = await auth.createKey({ tenant: values.tenant, principal: values.principal, roles: roles as Role[], label: values.label });
          out(`${key}\n`);
          process.stderr.write(`created key ${record.id} for ${record.principal}@${record.tenant} (${record.roles.join(',')}); it is shown only once\n`);
          return 0;
        }
        if (sub === 'list') {
          for (const k of await store.listApiKeys(values.tenant)) {
            out(`${k.id}\t${k.tenant}\t${k.principal}\t${k.roles.join(',')}\t${k.revokedAt ? 'revoked' : 'active'}\t${k.label}\n`);
          }
          return 0;
        }
        if (sub === 'revoke') {
          const id = positionals[1] ?? fail('keys revoke needs a key id');
          if (!(await store.revokeApiKey(id, Date.now()))) fail(`no key ${id}`);
          out(`revoked ${id}\n`);
          return 0;
        }
        return fail(`unknown keys command "${sub ?? ''}"\n\n${HELP}`);
      });
    case 'tenants':
      return withStore(async (store) => {
        if (sub === 'create') {
          const id = positionals[1] ?? fail('tenants create needs an id');
          if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(id)) fail('tenant ids are 1-64 characters of a-z 0-9 _ -');
          await store.putTenant({ id, name: values.name ?? id, createdAt: Date.now() });
          out(`created tenant ${id}\n`);
          return 0;
        }
        if (sub === 'list') {
          for (const t of await store.listTenants()) out(`${t.id}\t${t.name}\n`);
          return 0;
        }
        return fail(`unknown tenants command "${sub ?? ''}"`);
      });
    case 'verify':
      return withStore(async (store) => {
        const result = await verifyStore(store);
        for (const m of result.mismatches) out(`MISMATCH ${m}\n`);
        out(`verified ${result.streams} streams (${result.snapshots} snapshots), ${result.mismatches.length} mismatches\n`);
        return result.mismatches.length === 0 ? 0 : 1;
      });
    case 'protocol-schema': {
      const json = JSON.stringify(protocolJsonSchema(), null, 2) + '\n';
      if (values.out) fs.writeFileSync(values.out, json);
      else out(json);
      return 0;
    }
    case undefined:
    case 'help':
    case '--help':
      out(HELP);
      return 0;
    default:
      return fail(`unknown command "${cmd}"\n\n${HELP}`);
  }
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  runCli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`troupe: ${(e as Error).message}\n`);
      process.exit(1);
    },
  );
}

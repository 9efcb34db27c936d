#!/usr/bin/env node
// Runs the TypeScript CLI through tsx, so `npx troupe ...` works without a build step.
import { register } from 'tsx/esm/api';
register();
const { runCli } = await import('../src/cli.ts');
runCli(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`troupe: ${e?.message ?? e}\n`);
    process.exit(2);
  },
);

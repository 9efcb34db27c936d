// Runs every test (uvu under c8 for line coverage) and ends with one plain summary line,
// "N passed, N failed, N skipped", that any CI can read. Exit code: uvu's.
import { spawn } from 'node:child_process';

const args = [
  'node_modules/c8/bin/c8.js',
  '--reporter=text-summary',
  '--reporter=lcov',
  process.execPath,
  '--import',
  'tsx',
  'node_modules/uvu/bin.js',
  'test',
  '.test.ts$',
  ...process.argv.slice(2),
];
const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
let tail = '';
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  tail = (tail + chunk.toString()).slice(-4000);
});
child.on('close', (code) => {
  // Strip colour codes before reading uvu's totals.
  const plain = tail.replace(/\u001b\[[0-9;]*m/g, '');
  const num = (label) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(plain)?.[1] ?? 0);
  const total = num('Total');
  const passed = num('Passed');
  const skipped = num('Skipped');
  process.stdout.write(`\n${passed} passed, ${total - passed} failed, ${skipped} skipped\n`);
  process.exit(code ?? 1);
});

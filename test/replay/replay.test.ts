import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { loadFixture } from '../../src/replay/fixture.js';
import { runFixture } from '../../src/replay/runner.js';

const dir = path.dirname(fileURLToPath(import.meta.url));
const files = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort();

const replay = suite('replay fixtures');

replay('the fixture files are kebab-case and have distinct names', () => {
  assert.ok(files.length >= 15, `only ${files.length} fixtures`);
  for (const f of files) assert.match(f, /^[a-z0-9]+(-[a-z0-9]+)*\.json$/);
  const names = files.map((f) => loadFixture(path.join(dir, f)).name);
  assert.equal(new Set(names).size, names.length);
});

for (const file of files) {
  const fixture = loadFixture(path.join(dir, file));
  replay(fixture.name, async () => {
    await runFixture(fixture);
  });
}

replay.run();

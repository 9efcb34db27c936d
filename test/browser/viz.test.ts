import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { startServer, type TestServer } from '../helpers/server.js';

/** Debian's chromium; `.ci/run` installs it when missing. Tests never download a browser. */
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = path.resolve('test/artifacts');
/** Generous for a loaded CI machine; conditions usually hold within milliseconds. */
const WAIT = { timeout: 10_000 };

interface Ctx {
  ts: TestServer;
  browser: Browser;
  /** The page most tests share, signed in as the observer; it stays open, as a user's would. */
  page: Page;
  /** Uncaught errors and console errors of the pages, checked after each test. */
  errors: string[];
  lead: TroupeClient;
  worker: TroupeClient;
  /** An observer's key: the page reads only. */
  eyeKey: string;
}

const test = suite<Ctx>('viz: the state machine visualiser in headless Chromium');

/** A page in a fresh context (its own sessionStorage) whose errors are collected. */
async function freshPage(ctx: Ctx): Promise<{ page: Page; context: BrowserContext }> {
  const context = await ctx.browser.newContext({ viewport: { width: 1600, height: 1000 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => ctx.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') ctx.errors.push(`console: ${m.text()}`);
  });
  return { page, context };
}

test.before(async (ctx) => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), as .ci/run does`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  ctx.errors = [];
  ctx.ts = await startServer();
  ctx.browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  ctx.lead = await ctx.ts.client('acme', 'lead', ['admin']);
  ctx.worker = await ctx.ts.client('acme', 'worker', ['agent']);
  await ctx.worker.call('agent.register', { capabilities: ['review'], maxConcurrentTasks: 20 });
  ctx.eyeKey = await ctx.ts.key('acme', 'eye', ['observer']);
  // Signed in by a link carrying the key, as a user would open it.
  ctx.page = (await freshPage(ctx)).page;
  await ctx.page.goto(`${ctx.ts.httpUrl}/viz?key=${encodeURIComponent(ctx.eyeKey)}`);
  await ctx.page.waitForSelector('#conn-status[data-state="connected"]', WAIT);
});

test.after(async (ctx) => {
  await ctx.browser?.close();
  await ctx.ts?.close();
});

test.after.each((ctx) => {
  assert.equal(ctx.errors.splice(0), [], 'the page logged errors');
});

/** Waits until the chart marks `stateId` as the current (innermost active) state. */
async function current(page: Page, stateId: string): Promise<void> {
  await page.waitForSelector(`#chart g.state[data-state-id="${stateId}"][data-active="current"]`, WAIT);
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

test('serves the page and its assets, the layout engine included, and nothing else under /viz', async (ctx) => {
  for (const p of ['/viz', '/viz/', '/viz/app.js', '/viz/viz.css', '/viz/layoutWorker.js', '/viz/elk.bundled.js']) {
    const res = await fetch(`${ctx.ts.httpUrl}${p}`);
    assert.is(res.status, 200, p);
    assert.ok(res.headers.get('content-security-policy')?.includes("connect-src 'self'"), p);
    const again = await fetch(`${ctx.ts.httpUrl}${p}`, { headers: { 'if-none-match': res.headers.get('etag')! } });
    assert.is(again.status, 304, p);
  }
  for (const p of ['/viz/../package.json', '/viz/%2e%2e/package.json', '/viz/nope.js', '/viz/static/app.js', '/vizz']) {
    assert.is((await fetch(`${ctx.ts.httpUrl}${p}`)).status, 404, p);
  }
  const endpoints = ((await (await fetch(`${ctx.ts.httpUrl}/`)).json()) as { endpoints: string[] }).endpoints;
  assert.ok(endpoints.includes('/viz'));
});

test('draws every machine kind from /machines', async (ctx) => {
  const machines = (await (await fetch(`${ctx.ts.httpUrl}/machines`)).json()) as Record<string, { id: string; states?: Record<string, unknown> }>;
  const page = ctx.page;
  const count = (states: Record<string, { states?: Record<string, unknown> }> | undefined): number =>
    Object.values(states ?? {}).reduce((n, s) => n + 1 + count(s.states as never), 0);
  for (const [kind, m] of Object.entries(machines)) {
    await page.click(`#machine-list button[data-kind="${kind}"]`);
    await page.waitForSelector(`#chart svg[data-machine="${m.id}"]`, WAIT);
    // Every state, and the machine itself as the outermost box.
    assert.is(await page.locator('#chart g.state').count(), count(m.states as never) + 1, kind);
  }
  await page.click('#machine-list button[data-kind="task"]');
  await page.waitForSelector('#chart svg[data-machine="task"]', WAIT);
  const accept = page.locator('#chart g.transition[data-source="task.live.assigned"][data-target="task.live.accepted"]');
  assert.ok((await accept.getAttribute('data-events'))?.split(' ').includes('task.accept'));
  await page.click('#machine-list button[data-kind="execution"]');
  await page.waitForSelector('#chart svg[data-machine="execution"]', WAIT);
  // One transition per possible target, merged: one arrow per pair of states, and the events
  // whose outcome picks the target listed once in their state instead of on every arrow.
  const pairs = await page.$$eval('#chart g.transition', (gs) => gs.map((g) => `${(g as SVGGElement).dataset.source}->${(g as SVGGElement).dataset.target}`));
  assert.is(new Set(pairs).size, pairs.length);
  assert.ok((await page.textContent('#chart g.state[data-state-id="execution.running"]'))?.includes('⇉ dispatched'));
  assert.is(await page.locator('#chart g.edge-label', { hasText: 'stepSettled' }).count(), 0);
  await shot(page, 'viz-execution-machine');
});

test('asks for a key, refuses a bad one, and keeps a good one for the session until signing out', async (ctx) => {
  const { page, context } = await freshPage(ctx);
  await page.goto(`${ctx.ts.httpUrl}/viz`);
  await page.waitForSelector('#conn-status[data-state="signed-out"]', WAIT);
  // The machines are drawn without a key; actors need one.
  await page.waitForSelector('#chart svg.statechart', WAIT);
  await page.fill('#key-input', 'not-a-key');
  await page.click('#key-form button[type="submit"]');
  await page.waitForSelector('#conn-status[data-state="signed-out"]:has-text("refused")', WAIT);
  await page.fill('#key-input', ctx.eyeKey);
  await page.click('#key-form button[type="submit"]');
  await page.waitForSelector('#conn-status[data-state="connected"]', WAIT);
  assert.is(await page.textContent('#whoami'), 'eye · acme · observer');
  await page.reload();
  await page.waitForSelector('#conn-status[data-state="connected"]', WAIT);
  await page.click('#sign-out');
  await page.waitForSelector('#conn-status[data-state="signed-out"]', WAIT);
  assert.is(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('a revoked key closes the page\'s connection and asks for a key again', async (ctx) => {
  const { key, record } = await ctx.ts.server.app.auth.createKey({ tenant: 'acme', principal: 'eye2', roles: ['observer'] });
  const { page, context } = await freshPage(ctx);
  await page.goto(`${ctx.ts.httpUrl}/viz?key=${encodeURIComponent(key)}`);
  await page.waitForSelector('#conn-status[data-state="connected"]', WAIT);
  await ctx.ts.store.revokeApiKey(record.id, Date.now());
  assert.is(await ctx.ts.server.checkCredentials(), 1);
  await page.waitForSelector('#conn-status[data-state="signed-out"]:has-text("revoked")', WAIT);
  assert.ok(await page.isVisible('#key-input'));
  assert.is(await page.evaluate(() => sessionStorage.length), 0);
  await context.close();
});

test('follows a task through its lifecycle live, and steps back through its timeline (the key given in the URL leaves it)', async (ctx) => {
  const task = await ctx.lead.call('task.create', { type: 'review', title: 'Review PR 7' });
  const page = ctx.page;
  assert.ok(!page.url().includes('key='), `the key stays out of the address: ${page.url()}`);
  await page.selectOption('#picker-kind', 'task');
  await page.click('#picker-reload');
  await page.click(`#picker-list .pick-row[data-id="${task.id}"]`);
  await current(page, 'task.live.pending');
  await page.waitForSelector('#chart g.state[data-state-id="task.live"][data-active="ancestor"]', WAIT);

  await ctx.lead.call('task.assign', { taskId: task.id, agentId: 'worker' });
  await current(page, 'task.live.assigned');
  await page.waitForSelector('#chart g.transition[data-source="task.live.pending"][data-target="task.live.assigned"][data-taken="true"]', WAIT);
  await ctx.worker.call('task.accept', { taskId: task.id });
  await current(page, 'task.live.accepted');

  // Back to v2 while the task moves on: the view stays there, the timeline grows.
  await page.click('#timeline .event-row[data-version="2"]');
  await current(page, 'task.live.assigned');
  await page.waitForSelector('#actor-version[data-version="2"]', WAIT);
  await ctx.worker.call('task.start', { taskId: task.id });
  await page.waitForSelector('#timeline .event-row[data-version="4"]', WAIT);
  await current(page, 'task.live.assigned');
  assert.ok((await page.textContent('#actor-version'))?.includes('v2 of 4'));
  assert.ok(await page.isVisible('#follow'));
  assert.ok((await page.textContent('#resource'))?.includes('"status": "assigned"'));

  await page.click('#follow');
  await current(page, 'task.live.in_progress');
  await ctx.worker.call('task.complete', { taskId: task.id, result: { approved: true } });
  await current(page, 'task.completed');
  await page.waitForSelector('#actor-status[data-status="completed"]', WAIT);
  assert.ok((await page.textContent('#resource'))?.includes('"approved": true'));
  await shot(page, 'viz-task-completed');

  await page.click('#step-back');
  await current(page, 'task.live.in_progress');
  await page.click('#step-first');
  await current(page, 'task.live.pending');
  await page.click('#step-forward');
  await current(page, 'task.live.assigned');
  // The timeline row and the event panel follow the chart; wait for them rather than read at once.
  await page.waitForSelector('#timeline .event-row[data-version="2"][aria-selected="true"]', WAIT);
  await page.waitForFunction(() => document.querySelector('#event-data')?.textContent?.includes('"type": "task.assign"'), undefined, WAIT);
  await shot(page, 'viz-task-stepped-back');
});

test("colours a workflow execution's steps by their statuses as they change", async (ctx) => {
  const wf = await ctx.lead.call('workflow.create', {
    name: 'ship',
    type: 'parallel',
    steps: [
      { id: 'fetch', name: 'Fetch sources', action: 'git.fetch', agent: 'worker' },
      { id: 'build', action: 'build', agent: 'worker', dependsOn: ['fetch'] },
      { id: 'test', action: 'test', agent: 'worker', dependsOn: ['fetch'] },
      { id: 'publish', action: 'publish', agent: 'worker', dependsOn: ['build', 'test'] },
    ],
  });
  const x = await ctx.lead.call('workflow.execute', { workflowId: wf.id, input: {} });
  const page = ctx.page;
  await page.selectOption('#picker-kind', 'execution');
  await page.click('#picker-reload');
  await page.click(`#picker-list .pick-row[data-id="${x.id}"]`);
  await current(page, 'execution.running');
  await page.waitForSelector('#dag g.step[data-step-id="publish"][data-status="pending"]', WAIT);
  assert.is(await page.locator('#dag g.dependency').count(), 4);

  const step = (id: string, status: string) => page.waitForSelector(`#dag g.step[data-step-id="${id}"][data-status="${status}"]`, WAIT);
  /** The fill of a step's box must be the legend's colour of its status. */
  const colourMatchesLegend = async (id: string) => {
    const [status, fill] = await page.$eval(`#dag g.step[data-step-id="${id}"]`, (g) => [
      (g as SVGGElement).dataset.status!,
      getComputedStyle(g.querySelector('rect.box')!).fill,
    ]);
    const legend = await page.$$eval('#dag-legend .legend-item', (items) =>
      Object.fromEntries(items.map((i) => [i.textContent!.trim(), getComputedStyle(i.querySelector('.swatch')!).backgroundColor])),
    );
    assert.is(fill, legend[status.replace(/_/g, ' ')], `${id} is ${status}`);
  };

  await ctx.lead.call('execution.completeStep', { executionId: x.id, stepId: 'fetch', output: { commit: 'abc' } });
  await step('fetch', 'completed');
  await page.waitForSelector('#dag g.step[data-step-id="build"]:not([data-status="pending"])', WAIT);
  await colourMatchesLegend('fetch');
  await colourMatchesLegend('build');
  await colourMatchesLegend('publish');
  await shot(page, 'viz-execution-running');

  await ctx.lead.call('execution.completeStep', { executionId: x.id, stepId: 'build', output: {} });
  await ctx.lead.call('execution.failStep', { executionId: x.id, stepId: 'test', error: 'flaky' });
  await step('test', 'failed');
  await colourMatchesLegend('test');
  await page.waitForSelector('#chart g.state[data-active="current"]:not([data-state-id="execution.running"])', WAIT);
  const ended = await ctx.lead.call('execution.get', { executionId: x.id });
  await current(page, `execution.${ended.status}`);
  await shot(page, 'viz-execution-ended');
});

test('pages through 1,000 live tasks keeping only the rows in view in the DOM', async (ctx) => {
  await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      ctx.lead.call('task.createBatch', { tasks: Array.from({ length: 100 }, (_, k) => ({ type: 'bulk', title: `Bulk ${i * 100 + k}` })) }),
    ),
  );
  const page = ctx.page;
  await page.selectOption('#picker-kind', 'task');
  await page.click('#picker-reload');
  await page.waitForSelector('#picker-count:has-text("100+")', WAIT);
  // Scrolling to the end loads the next page, until every task is there.
  await page.waitForFunction(
    () => {
      const list = document.getElementById('picker-list')!;
      list.scrollTop = list.scrollHeight;
      return /^\d+ tasks$/.test(document.getElementById('picker-count')!.textContent ?? '');
    },
    undefined,
    { ...WAIT, polling: 50 },
  );
  const loaded = Number(/^(\d+)/.exec((await page.textContent('#picker-count')) ?? '')![1]);
  assert.ok(loaded >= 1000 && loaded < 1100, `${loaded} tasks listed`);
  assert.ok((await page.locator('#picker-list .vlist-row').count()) < 60, 'only the rows in view are in the DOM');
  await page.fill('#picker-search', 'Bulk 999');
  await page.waitForSelector('#picker-count:text-is("1 task")', WAIT);
  await page.click('#picker-list .pick-row');
  await current(page, 'task.live.pending');
});

test('opens any kind by id, and follows kinds without a topic of their own on the tenant feed', async (ctx) => {
  const rule = await ctx.lead.call('rule.register', { name: 'short-titles', category: 'task.validation', expression: 'size(task.title) < 200' });
  const page = ctx.page;
  await page.selectOption('#open-kind', 'rule');
  await page.fill('#open-id', rule.id);
  await page.click('#open-form button[type="submit"]');
  await current(page, 'rule.active');
  await page.waitForSelector('#timeline-note:has-text("tenant feed")', WAIT);
  await ctx.lead.call('rule.update', { ruleId: rule.id, enabled: false });
  await page.waitForSelector('#timeline .event-row[data-version="2"][data-type="rule.update"]', WAIT);
  await page.waitForSelector('#actor-status[data-status="disabled"]', WAIT);
  assert.ok((await page.textContent('#resource'))?.includes('"enabled": false'));
});

test("opening another tenant's actor by id says it does not exist", async (ctx) => {
  const other = await ctx.ts.client('globex', 'boss', ['admin']);
  const theirs = await other.call('task.create', { type: 'secret', title: 'Theirs' });
  const page = ctx.page;
  await page.selectOption('#open-kind', 'task');
  await page.fill('#open-id', theirs.id);
  await page.click('#open-form button[type="submit"]');
  await page.waitForSelector('#message:has-text("There is no task")', WAIT);
  assert.is(await page.locator('#chart g.state[data-active]').count(), 0);
  assert.ok(!(await page.textContent('body'))?.includes('Theirs'));
});

test.run();

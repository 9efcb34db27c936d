import Database from 'better-sqlite3';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { TroupeClient } from '../../protocol/client.js';
import { ErrorCodes, type ProtocolError } from '../../protocol/errors.js';
import type { Role, Task } from '../../protocol/model.js';
import { startCluster, type InProcessCluster } from '../helpers/cluster.js';
import { refusal } from '../helpers/errors.js';
import { doWork, executionSettled, stepTask } from '../helpers/executions.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  c: InProcessCluster;
  /** A single node, the reference for what errors look like. */
  single: TestServer;
  n: number;
}

const test = suite<Ctx>('cluster routing: one system across nodes');

test.before(async (ctx) => {
  ctx.c = await startCluster(3);
  ctx.single = await startServer();
  ctx.n = 0;
});

test.after(async (ctx) => {
  await ctx.single.close();
  await ctx.c.close();
});

const taskStream = (tenant: string, id: string) => `${tenant}/task/${id}`;

/** This node's count of messages it sent to other nodes. */
async function forwarded(c: InProcessCluster, i: number): Promise<number> {
  return (await c.nodes[i]!.server.cluster!.view()).counters.forwarded;
}

test('a task created on node 1 is accepted, started and completed by an agent on node 2; search and listForAgent see it from every node', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const w1 = await c.client(1, tenant, 'w1', ['agent']);
  await w1.call('agent.register', { capabilities: ['review'] });
  const t = await lead.call('task.create', { type: 'review', title: 'Review PR 7 zebra', assignTo: 'w1' });
  const stream = taskStream(tenant, t.id);
  assert.equal(c.holders(stream), [0], 'the node that created the task holds it');

  const before = await forwarded(c, 1);
  const seen = await w1.call('task.get', { taskId: t.id });
  assert.equal([seen.id, seen.status, seen.assignedTo], [t.id, 'assigned', 'w1']);
  assert.is((await w1.call('task.accept', { taskId: t.id })).status, 'accepted');
  assert.is((await w1.call('task.start', { taskId: t.id })).status, 'in_progress');
  assert.equal(c.holders(stream), [0], 'node 2 sent the agent\'s calls to the owner instead of taking the task');
  assert.ok((await forwarded(c, 1)) > before, 'node 2 forwarded the agent\'s calls');

  // The read models are in the shared store: every node answers queries with the live task.
  for (const i of [0, 1, 2]) {
    const admin = await c.client(i, tenant, 'lead', ['admin']);
    const found = await admin.call('task.search', { query: 'zebra' });
    assert.equal(found.items.map((x) => [x.id, x.status, x.version]), [[t.id, 'in_progress', 3]], `task.search on node ${i + 1}`);
    const listed = await admin.call('task.listForAgent', { agentId: 'w1' });
    assert.equal(listed.items.map((x) => [x.id, x.status]), [[t.id, 'in_progress']], `task.listForAgent on node ${i + 1}`);
  }

  const done = await w1.call('task.complete', { taskId: t.id, result: { ok: true } });
  assert.equal([done.status, done.result, done.version], ['completed', { ok: true }, 4]);
  for (const i of [0, 1, 2]) {
    const agent = await c.client(i, tenant, 'w1', ['agent']);
    const mine = await agent.call('task.listForAgent', {});
    assert.equal(mine.items.map((x) => [x.id, x.status, x.version]), [[t.id, 'completed', 4]], `the agent's own list on node ${i + 1}`);
    assert.equal(await agent.call('task.get', { taskId: t.id }), done, `task.get on node ${i + 1}`);
  }
  assert.ok(c.holders(stream).length <= 1, 'at most one node holds the task');
});

/** A refusal as a client sees it, with the ids that differ between two runs replaced by names. */
function shape(e: ProtocolError, ids: Record<string, string>): unknown {
  let json = JSON.stringify({ code: e.code, reason: e.reason, message: e.message, data: e.data });
  for (const [name, id] of Object.entries(ids)) json = json.split(id).join(`<${name}>`);
  return JSON.parse(json);
}

interface Refusals {
  illegal: unknown;
  version: unknown;
  forbidden: unknown;
  notFound: unknown;
}

/**
 * One script of refused calls about a task and an agent that `owner` made, sent through `via`
 * (on a cluster: connections to a node that does not hold them). Checks that each refusal left
 * the task and the agent as they were, and returns the refusals.
 */
async function refusedCalls(
  tenant: string,
  owner: (principal: string, roles: Role[]) => Promise<TroupeClient>,
  via: (principal: string, roles: Role[]) => Promise<TroupeClient>,
  afterEach: (taskId: string) => Promise<void> = async () => {},
): Promise<{ refusals: Refusals; task: Task }> {
  const lead = await owner('lead', ['admin']);
  const w1 = await owner('w1', ['agent']);
  await w1.call('agent.register', { capabilities: ['review'] });
  const gone = await owner('gone', ['agent']);
  await gone.call('agent.register', {});
  await gone.call('agent.deregister', {});
  const t = await lead.call('task.create', { type: 'review', title: 'Refused calls', assignTo: 'w1' });
  const ids = { task: t.id, tenant };

  const lead2 = await via('lead', ['admin']);
  const w2 = await via('w2', ['agent']);
  const illegal = await refusal(lead2.call('task.complete', { taskId: t.id, result: 1 }), ErrorCodes.ILLEGAL_TRANSITION);
  await afterEach(t.id);
  const version = await refusal(lead2.call('task.update', { taskId: t.id, expectedVersion: t.version + 5, title: 'lost update' }), ErrorCodes.VERSION_MISMATCH);
  await afterEach(t.id);
  const forbidden = await refusal(w2.call('task.accept', { taskId: t.id }), ErrorCodes.FORBIDDEN);
  await afterEach(t.id);
  const notFound = await refusal(lead2.call('agent.heartbeat', { agentId: 'gone' }), ErrorCodes.NOT_FOUND);
  await afterEach(t.id);

  assert.equal(await lead2.call('task.get', { taskId: t.id }), t, 'the refusals changed nothing');
  await refusal(lead2.call('agent.get', { agentId: 'gone' }), ErrorCodes.NOT_FOUND);
  return { refusals: { illegal: shape(illegal, ids), version: shape(version, ids), forbidden: shape(forbidden, ids), notFound: shape(notFound, ids) }, task: t };
}

test('refusals of calls forwarded to the owner reach the client with the same code, message and data as on a single node, and change nothing', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const reference = await refusedCalls(
    tenant,
    (p, roles) => ctx.single.client(tenant, p, roles),
    (p, roles) => ctx.single.client(tenant, p, roles),
  );

  const sent = await forwarded(c, 1);
  const viaCluster = await refusedCalls(
    tenant,
    (p, roles) => c.client(0, tenant, p, roles),
    (p, roles) => c.client(1, tenant, p, roles),
    async (taskId) => {
      for (const s of [taskStream(tenant, taskId), `${tenant}/agent/gone`]) {
        assert.equal(c.holders(s), [0], `node 1 still holds ${s}: the call was forwarded, not taken over`);
      }
    },
  );
  assert.ok((await forwarded(c, 1)) >= sent + 4, 'node 2 forwarded each call to node 1');
  assert.equal(viaCluster.refusals, reference.refusals);
  assert.equal((await c.nodes[2]!.store.streamInfo(taskStream(tenant, viaCluster.task.id))).version, viaCluster.task.version, 'nothing was stored');
  for (const i of [0, 1, 2]) {
    const eye = await c.client(i, tenant, 'eye', ['observer']);
    assert.equal(await eye.call('task.get', { taskId: viaCluster.task.id }), viaCluster.task, `node ${i + 1} reads the task unchanged`);
  }
});

test('task.create with the same idempotency key on different nodes creates one task, also when the calls race', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const leads = [await c.client(0, tenant, 'lead', ['admin']), await c.client(1, tenant, 'lead', ['admin']), await c.client(2, tenant, 'lead', ['admin'])];
  const params = { type: 'build', title: 'Build once', idempotencyKey: 'build-1' };
  const first = await leads[0]!.call('task.create', params);
  const again = await leads[1]!.call('task.create', params);
  assert.equal(again, first, 'node 2 answers with the task node 1 created');
  await refusal(leads[2]!.call('task.create', { ...params, title: 'Build twice' }), ErrorCodes.IDEMPOTENCY_MISMATCH);

  const raced = await Promise.all(leads.map((l) => l.call('task.create', { type: 'build', title: 'Build raced', idempotencyKey: 'build-2' })));
  assert.is(new Set(raced.map((x) => x.id)).size, 1, 'every node answers with the same task');
  assert.equal(raced[1], raced[0]);
  assert.equal(raced[2], raced[0]);
  const all = await leads[2]!.call('task.search', { limit: 100 });
  assert.equal(all.items.map((x) => x.title).sort(), ['Build once', 'Build raced']);
});

test('a workflow execution started on node 1 runs its steps as tasks of agents on nodes 2 and 3 and completes', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const ag: Record<string, TroupeClient> = {};
  for (const [id, node] of [['w2', 1], ['w3', 2]] as const) {
    ag[id] = await c.client(node, tenant, id, ['agent']);
    await ag[id].call('agent.register', { maxConcurrentTasks: 5 });
  }
  const wf = await lead.call('workflow.create', {
    name: 'ship',
    type: 'sequential',
    steps: [
      { id: 'fetch', action: 'git.fetch', agent: 'w2', input: { repo: '${input.repo}' } },
      { id: 'build', action: 'build', agent: 'w3', input: { commit: '${steps.fetch.output.commit}' } },
      { id: 'publish', action: 'publish', agent: 'w2', input: { artifact: '${steps.build.output.artifact}' } },
    ],
  });
  const x = await lead.call('workflow.execute', { workflowId: wf.id, input: { repo: 'acme/api' } });
  const fetch = await doWork(lead, ag, stepTask(x.id, 'fetch'), { commit: 'abc' });
  const build = await doWork(lead, ag, stepTask(x.id, 'build'), { artifact: 'api-abc.tgz' });
  const publish = await doWork(lead, ag, stepTask(x.id, 'publish'), { url: 'https://cdn/api-abc.tgz' });
  assert.equal(
    [fetch, build, publish].map((t) => [t.assignedTo, t.parameters]),
    [
      ['w2', { repo: 'acme/api' }],
      ['w3', { commit: 'abc' }],
      ['w2', { artifact: 'api-abc.tgz' }],
    ],
  );
  const done = await executionSettled(lead, x.id);
  assert.is(done.status, 'completed');
  assert.equal(done.output, { fetch: { commit: 'abc' }, build: { artifact: 'api-abc.tgz' }, publish: { url: 'https://cdn/api-abc.tgz' } });
  assert.equal(done.completionOrder, ['fetch', 'build', 'publish']);
  for (const i of [1, 2]) {
    const eye = await c.client(i, tenant, 'eye', ['observer']);
    assert.equal(await eye.call('execution.get', { executionId: x.id }), done, `node ${i + 1} reads the same execution`);
  }
});

test('a forwarded write the owner applies after the forwarding node stopped waiting is reported with an unknown outcome, not as a move to retry', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const t = await lead.call('task.create', { type: 'x', title: 'original' });
  const lead2 = await c.client(1, tenant, 'lead', ['admin']);
  // A first call through node 2 loads what its guards need (quota and rate limit actors), so the
  // next one only waits for node 1.
  assert.is((await lead2.call('task.update', { taskId: t.id, title: 'first' })).version, 2);
  // Another writer holds the store's write lock longer than node 2 waits for node 1's answer
  // (requestTimeoutMs 2 s), and less than node 1's writer waits for the lock (5 s).
  const blocker = new Database(c.dbPath);
  blocker.prepare('BEGIN IMMEDIATE').run();
  let refused: ProtocolError;
  try {
    refused = await refusal(lead2.call('task.update', { taskId: t.id, title: 'slow write' }), ErrorCodes.UNAVAILABLE);
  } finally {
    blocker.prepare('ROLLBACK').run();
    blocker.close();
  }
  // Node 1 commits as soon as the lock is free: the write the client was told to retry happened.
  const applied = await waitFor(async () => {
    const got = await lead.call('task.get', { taskId: t.id });
    return got.version === 3 ? got : null;
  });
  assert.is(applied.title, 'slow write');
  assert.is(refused.data.outcome, 'unknown', `the refusal must not present an applied write as not done: ${JSON.stringify(refused.data)} ${refused.message}`);
  assert.not.ok(refused.data.ownerMoving, 'nothing was moving');
});

interface ClusterBody {
  mode: string;
  self: string;
  leaseMs: number;
  nodes: { id: string; address: string; startedAt: number; heartbeatAt: number; actors: Record<string, number>; self: boolean }[];
  counters: Record<string, number>;
}

async function getCluster(httpUrl: string, token?: string): Promise<{ status: number; body: ClusterBody & { error?: string } }> {
  const res = await fetch(`${httpUrl}/cluster`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as ClusterBody & { error?: string } };
}

test('GET /cluster shows an admin every node, marks the one that answered, and counts the actors each holds', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const admin = await c.key(tenant, 'root', ['admin']);
  // Node 1 takes two tasks, node 3 one (live tasks stay in memory; settled ones leave).
  const lead1 = await c.client(0, tenant, 'lead', ['admin']);
  const lead3 = await c.client(2, tenant, 'lead', ['admin']);
  const mine = [
    await lead1.call('task.create', { type: 'x', title: 'one' }),
    await lead1.call('task.create', { type: 'x', title: 'two' }),
    await lead3.call('task.create', { type: 'x', title: 'three' }),
  ];
  assert.equal(mine.map((t) => c.holders(taskStream(tenant, t.id))), [[0], [0], [2]]);
  // Each node reports what it holds at its next heartbeat; every node shows every node's report.
  let seen: ClusterBody | null = null;
  const held = () => c.nodes.map((n) => Object.fromEntries(n.server.host.activeByKind()));
  await waitFor(
    async () => {
      seen = (await getCluster(c.nodes[1]!.httpUrl, admin)).body;
      const reported = c.nodes.map((_, i) => seen!.nodes.find((x) => x.id === `n${i + 1}`)?.actors);
      return JSON.stringify(reported) === JSON.stringify(held());
    },
    { timeoutMs: 5000, intervalMs: 50 },
  ).catch((e: Error) => {
    throw new Error(`GET /cluster never showed the actors the nodes hold, ${JSON.stringify(held())}; last seen ${JSON.stringify(seen?.nodes.map((x) => [x.id, x.actors]))} (${e.message})`);
  });
  const reported = (id: string) => seen!.nodes.find((x) => x.id === id)!.actors;
  assert.ok(reported('n1').task! >= 2 && reported('n3').task! >= 1, 'the tasks created here are counted where they live');

  for (const [i, node] of c.nodes.entries()) {
    const { status, body } = await getCluster(node.httpUrl, admin);
    assert.is(status, 200);
    assert.equal([body.mode, body.self, body.leaseMs], ['cluster', `n${i + 1}`, 2000]);
    assert.equal(
      body.nodes.map((x) => [x.id, x.address, x.self]),
      c.nodes.map((n, j) => [`n${j + 1}`, n.url, j === i]),
      `node ${i + 1} lists every node and marks itself`,
    );
    for (const x of body.nodes) {
      assert.ok(x.heartbeatAt >= x.startedAt && Date.now() - x.heartbeatAt < 5000, `${x.id} heartbeats`);
      for (const kind of ['task', 'agent', 'workspace', 'document', 'execution']) assert.type(x.actors[kind], 'number', `${x.id} reports its ${kind} actors`);
    }
    assert.equal(Object.keys(body.counters).sort(), ['forwarded', 'leasesLost', 'remoteCommits', 'served', 'staleWritesRejected']);
  }
  // Nodes 1 and 3 committed here: every node has heard of commits made elsewhere.
  const views = await Promise.all(c.nodes.map(async (n) => (await getCluster(n.httpUrl, admin)).body.counters));
  assert.ok(views.every((v) => v.remoteCommits > 0), 'every node receives the commits of the others');
});

test('GET /cluster refuses non-admins (403) and requests without a valid token (401); a single node answers mode single', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const agent = await c.key(tenant, 'w1', ['agent']);
  const refusedAgent = await getCluster(c.nodes[0]!.httpUrl, agent);
  assert.is(refusedAgent.status, 403);
  assert.match(refusedAgent.body.error!, /admin/);
  assert.is((await getCluster(c.nodes[0]!.httpUrl)).status, 401);
  assert.is((await getCluster(c.nodes[0]!.httpUrl, 'not-a-key')).status, 401);

  const single = await getCluster(ctx.single.httpUrl, await ctx.single.key(tenant, 'root', ['admin']));
  assert.is(single.status, 200);
  assert.equal([single.body.mode, single.body.nodes.map((x) => [x.id, x.self])], ['single', [['local', true]]]);
  assert.type(single.body.nodes[0]!.actors.task, 'number');
  assert.is((await getCluster(ctx.single.httpUrl, await ctx.single.key(tenant, 'w1', ['agent']))).status, 403);
});

test('with the shared Redis not answering, a call through a node that does not hold the actor is refused with a retry hint, not left hanging', async (ctx) => {
  const { c } = ctx;
  const tenant = `r${++ctx.n}`;
  const lead = await c.client(0, tenant, 'lead', ['admin']);
  const t = await lead.call('task.create', { type: 'x', title: 'original' });
  // Answers come within requestTimeoutMs (2 s) of a node that waits for another; this client waits twice that.
  const lead2 = await c.client(1, tenant, 'lead', ['admin'], { callTimeoutMs: 4000 });
  assert.is((await lead2.call('task.update', { taskId: t.id, title: 'first' })).version, 2);
  // Paused, not stopped: connections stay open and nothing is answered (a hung or partitioned Redis).
  c.redis[0]!.pause();
  let outcome: unknown;
  try {
    outcome = await lead2.call('task.update', { taskId: t.id, title: 'while paused' }).catch((e: Error) => e);
  } finally {
    c.redis[0]!.resume();
  }
  assert.instance(outcome, Error, 'node 2 cannot reach node 1 without the shared Redis');
  const e = outcome as ProtocolError;
  assert.is(e.reason, 'UNAVAILABLE', `refused by the server, not timed out by the client: ${e.message}`);
  assert.type(e.data.retryAfterMs, 'number');
});

test.run();

const contention = suite<{ c: InProcessCluster }>('cluster routing: writers through a non-owner under contention');

contention.before(async (ctx) => {
  ctx.c = await startCluster(2);
});

contention.after(async (ctx) => {
  await ctx.c.close();
});

contention('a checked call forwarded while the owner takes other writes is judged again, never refused as a version the caller did not send', async ({ c }) => {
  const lead = await c.client(0, 'busy', 'lead', ['admin']);
  const local = await Promise.all([0, 1, 2, 3].map(() => c.client(0, 'busy', 'w', ['agent'])));
  const remote = await c.client(1, 'busy', 'w', ['agent']);
  await local[0]!.call('agent.register', { capabilities: ['x'] });
  const t = await lead.call('task.create', { type: 'x', title: 'hot', assignTo: 'w' });
  await local[0]!.call('task.accept', { taskId: t.id });
  await local[0]!.call('task.start', { taskId: t.id });
  // The owner's writers hammer for 1.5 s, and on until the writer through the other node got
  // through (at most 15 s: a machine slow enough to need that is one where it never would).
  const until = Date.now() + 1500;
  const giveUp = Date.now() + 15_000;
  let localDone = 0;
  const remoteOutcomes: string[] = [];
  const going = () => Date.now() < giveUp && (Date.now() < until || !remoteOutcomes.includes('ok'));
  const hammer = async (client: TroupeClient, record: (outcome: string) => void) => {
    for (let i = 0; going(); i++) {
      try {
        await client.call('task.progress', { taskId: t.id, percent: i % 100, message: `step ${i}` });
        record('ok');
      } catch (e) {
        const pe = e as ProtocolError;
        record(`${pe.reason}:${String((pe.data as { outcome?: string }).outcome)}`);
      }
    }
  };
  await Promise.all([
    ...local.map((l) => hammer(l, (o) => void (o === 'ok' && localDone++))),
    hammer(remote, (o) => void remoteOutcomes.push(o)),
  ]);
  const ok = remoteOutcomes.filter((o) => o === 'ok').length;
  console.log(`contention: ${localDone} writes on the owner, ${ok} of ${remoteOutcomes.length} through the other node got through`);
  assert.ok(localDone > 0, 'the owner took writes all along');
  assert.ok(ok > 0, `the writer through the other node got through (${remoteOutcomes.length} calls: ${[...new Set(remoteOutcomes)].join(', ')})`);
  for (const o of remoteOutcomes) assert.ok(o === 'ok' || o === 'UNAVAILABLE:not_applied', `a refusal says nothing was written: ${o}`);
  const stored: { type: string }[] = [];
  for (let head = 1; stored.length < head; ) {
    const page = await lead.call('events.read', { kind: 'task', actorId: t.id, afterVersion: stored.length, limit: 1000 });
    stored.push(...page.items);
    head = page.items.length === 0 ? 0 : page.headVersion;
  }
  const progress = stored.filter((e) => e.type === 'task.progress').length;
  assert.is(progress, localDone + ok, 'every acknowledged progress is stored, and nothing else');
});

contention('a checked call is judged on the snapshot the previous call brought back: one request to the owner instead of a read and a turn', async ({ c }) => {
  const lead = await c.client(0, 'seen', 'lead', ['admin']);
  const w = await c.client(1, 'seen', 'w', ['agent']);
  await w.call('agent.register', { capabilities: ['x'] });
  const t = await lead.call('task.create', { type: 'x', title: 'seen', assignTo: 'w' });
  const requests = async () => (await c.nodes[1]!.server.cluster!.view()).counters.forwarded;
  const before = await requests();
  await w.call('task.accept', { taskId: t.id });
  const afterAccept = await requests();
  assert.is(afterAccept - before, 2, 'the first call reads the owner\'s snapshot, then sends the turn');
  await w.call('task.start', { taskId: t.id });
  assert.is((await requests()) - afterAccept, 1, 'the next one is judged on the snapshot the accept brought back');
  // Another writer on the owner makes that snapshot old: the next call reads again.
  await lead.call('task.update', { taskId: t.id, title: 'renamed' });
  await waitFor(async () => (await w.call('task.get', { taskId: t.id })).title === 'renamed');
  const beforeProgress = await requests();
  const p = await w.call('task.progress', { taskId: t.id, percent: 50 });
  assert.is(p.title, 'renamed', 'the turn applied to the task as it is now');
  // A fresh read first (2 requests), or, had the news of the update not arrived yet, a turn the
  // owner answers with the task as it is now, then the turn again (2).
  assert.ok((await requests()) - beforeProgress >= 2, 'an old snapshot is not what the turn is applied on');
});

contention('a checked call whose actor changed on the way is judged again on the state the owner answers with, and also when an older owner refuses instead', async ({ c }) => {
  const lead = await c.client(0, 'moved', 'lead', ['admin']);
  const w = await c.client(1, 'moved', 'w', ['agent']);
  await w.call('agent.register', { capabilities: ['x'] });
  const t = await lead.call('task.create', { type: 'x', title: 'moved', assignTo: 'w' });
  await w.call('task.accept', { taskId: t.id });
  const bus = c.nodes[0]!.server.cluster!.bus;
  const served = bus.handler('actor.send')!;
  const requests = async () => (await c.nodes[1]!.server.cluster!.view()).counters.forwarded;
  // The owner takes another write just before it serves the forwarded turn, once per call, so the
  // version the caller judged its check on is always one behind when the turn arrives.
  const through = async (older: boolean, percent: number) => {
    let raced = false;
    const seen: string[] = [];
    bus.handle('actor.send', async (payload, from) => {
      const p = payload as { address: { id: string }; opts: { answerChanged?: true } };
      if (p.address.id !== t.id) return served(payload, from);
      if (!raced) {
        raced = true;
        await lead.call('task.update', { taskId: t.id, title: `moved ${percent}` });
      }
      if (older) delete p.opts.answerChanged;
      try {
        const r = await served(payload, from);
        seen.push(typeof r === 'object' && r !== null && 'changed' in r ? 'changed' : 'applied');
        return r;
      } catch (e) {
        seen.push((e as ProtocolError).reason);
        throw e;
      }
    });
    try {
      const before = await requests();
      const r = await w.call('task.progress', { taskId: t.id, percent });
      return { r, seen, requests: (await requests()) - before };
    } finally {
      bus.handle('actor.send', served);
    }
  };
  await w.call('task.start', { taskId: t.id });
  const now = await through(false, 10);
  assert.equal(now.seen, ['changed', 'applied'], 'the owner answers with the task as it is now, then applies the turn judged on it');
  assert.is(now.r.title, 'moved 10', 'the turn applied to the task as it is now');
  const old = await through(true, 20);
  assert.equal(old.seen, ['VERSION_MISMATCH', 'applied'], 'an older owner refuses; the caller reads again and the turn is applied');
  assert.is(old.r.title, 'moved 20');
  assert.is(old.requests - now.requests, 1, 'the older owner costs one more request: the fresh read');
  const stored = await lead.call('events.read', { kind: 'task', actorId: t.id, limit: 100 });
  assert.equal(
    stored.items.filter((e) => e.type === 'task.progress').map((e) => (e.data as { percent: number }).percent),
    [10, 20],
    'each progress is stored once',
  );
});

contention.run();

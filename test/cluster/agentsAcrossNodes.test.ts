import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { startProcessCluster, type ProcessCluster } from '../helpers/clusterProcess.js';
import { waitFor } from '../helpers/waitFor.js';

const test = suite<{ c: ProcessCluster }>('cluster: agents connected to a node that dies');

test.before(async (ctx) => {
  ctx.c = await startProcessCluster({ nodes: 2, locks: 1, leaseMs: 2000, heartbeatMs: 200 });
});

test.after(async (ctx) => {
  await ctx.c.close();
});

test('an agent connected only to a SIGKILLed node is offline once the survivors see the node gone', async ({ c }) => {
  const admin = await c.connect(0, c.adminKey);
  const agent = await c.connect(1, await c.key('scout', ['agent']));
  await agent.call('agent.register', { capabilities: ['scan'] });
  await waitFor(async () => (await admin.call('agent.get', { agentId: 'scout' })).status === 'online');
  const killedAt = Date.now();
  await c.kill(1);
  // Three missed heartbeats make the node gone; its agents' connections are then released.
  const seen = await waitFor(async () => {
    const a = await admin.call('agent.get', { agentId: 'scout' }).catch(() => null);
    return a?.status === 'offline' ? a : null;
  }, { timeoutMs: 10_000 });
  console.log(`cluster: agent offline ${Date.now() - killedAt} ms after its node was killed (heartbeat 200 ms)`);
  assert.is(seen.status, 'offline');
  await admin.close();
});

test.run();

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { RawSocket } from '../helpers/rawSocket.js';
import { sqliteStore, startServer, tempDir, type TestServer } from '../helpers/server.js';
import { waitFor } from '../helpers/waitFor.js';

interface Ctx {
  ts: TestServer;
  dir: { dir: string; remove: () => void };
}

const test = suite<Ctx>('agents: presence follows connections');

test.before(async (ctx) => {
  // SQLite with its writer thread: a registration takes a moment to commit, as in production.
  ctx.dir = tempDir();
  ctx.ts = await startServer({ store: sqliteStore(ctx.dir.dir) });
});

test.after(async (ctx) => {
  await ctx.ts.close();
  ctx.dir.remove();
});

test('an agent that registers and drops the connection at once ends up offline', async (ctx) => {
  const lead = await ctx.ts.client('presence', 'lead', ['admin']);
  for (let i = 0; i < 10; i++) {
    const id = `quick-${i}`;
    const raw = await RawSocket.open(ctx.ts.url, await ctx.ts.key('presence', id, ['agent']));
    raw.send({ jsonrpc: '2.0', id: 1, method: 'agent.register', params: { capabilities: ['go'] } });
    await raw.terminate();
    const agent = await waitFor(() => lead.call('agent.get', { agentId: id }).catch(() => null));
    const settled = await waitFor(async () => {
      const a = await lead.call('agent.get', { agentId: id });
      return a.connections === 0 ? a : null;
    });
    assert.is(settled.status, 'offline', `${id} after ${JSON.stringify(agent)}`);
  }
});

test('an agent is online while any of its connections is open, and offline after the last', async (ctx) => {
  const lead = await ctx.ts.client('presence', 'lead2', ['admin']);
  const a = await ctx.ts.client('presence', 'twice', ['agent']);
  await a.call('agent.register', {});
  const b = await ctx.ts.client('presence', 'twice', ['agent']);
  await waitFor(async () => (await lead.call('agent.get', { agentId: 'twice' })).connections === 2);
  await a.close();
  const one = await waitFor(async () => {
    const x = await lead.call('agent.get', { agentId: 'twice' });
    return x.connections === 1 ? x : null;
  });
  assert.is(one.status, 'online');
  await b.close();
  const none = await waitFor(async () => {
    const x = await lead.call('agent.get', { agentId: 'twice' });
    return x.connections === 0 ? x : null;
  });
  assert.is(none.status, 'offline');
});

test.run();

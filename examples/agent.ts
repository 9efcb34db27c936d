/**
 * An example worker agent. It registers, listens to its inbox, and works every task offered to
 * it: accept → start → progress → complete.
 *
 *   TROUPE_KEY=<agent key> npx tsx examples/agent.ts
 *
 * TROUPE_URL defaults to ws://127.0.0.1:7420/v1. With an admin key it registers as
 * TROUPE_AGENT_ID (default "example-worker") and, unless TROUPE_DEMO=0, also offers itself a
 * demo task so there is something to do.
 */
import { connect, type ActorEvent } from '../protocol/index.js';

const url = process.env.TROUPE_URL ?? 'ws://127.0.0.1:7420/v1';
const token = process.env.TROUPE_KEY;
if (!token) {
  console.error('Set TROUPE_KEY to an API key (npm start prints one; see README).');
  process.exit(2);
}

const client = await connect(url, { token });
const me = await client.call('session.whoami');
const isAdmin = me.roles.includes('admin');
const agentId = isAdmin ? (process.env.TROUPE_AGENT_ID ?? 'example-worker') : me.principalId;
const agent = await client.call('agent.register', { id: agentId, name: 'Example worker', capabilities: ['demo'] });
console.log(`registered ${agent.id} (${agent.status}) in tenant ${me.tenantId}`);

const working = new Set<string>();
async function work(taskId: string): Promise<void> {
  if (working.has(taskId)) return;
  working.add(taskId);
  try {
    const task = await client.call('task.accept', { taskId });
    console.log(`accepted "${task.title}"`);
    await client.call('task.start', { taskId });
    for (const percent of [25, 50, 75]) await client.call('task.progress', { taskId, percent, message: `${percent}% done` });
    const done = await client.call('task.complete', { taskId, result: { summary: `finished ${task.title}` } });
    console.log(`completed "${done.title}" at version ${done.version}`);
  } catch (e) {
    console.error(`could not work on ${taskId}: ${(e as Error).message}`);
  } finally {
    working.delete(taskId);
  }
}

await client.subscribe(`inbox:${agentId}`, (event: ActorEvent) => {
  console.log(`inbox: ${event.type} → ${event.status} (task ${event.actorId})`);
  if (event.status === 'assigned') void work(event.actorId);
});

// Pick up anything offered while this agent was away.
const waiting = await client.call('task.listForAgent', { agentId, status: ['assigned'] });
for (const t of waiting.items) void work(t.id);

if (isAdmin && process.env.TROUPE_DEMO !== '0') {
  const t = await client.call('task.create', { type: 'demo', title: 'Say hello', assignTo: agentId });
  console.log(`offered demo task ${t.id}`);
}
console.log('waiting for tasks; Ctrl-C to stop');
process.on('SIGINT', () => void client.close().then(() => process.exit(0)));

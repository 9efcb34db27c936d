/**
 * The worker for examples/workflow.ts. It registers with the capabilities `fetch`, `transform`
 * and `publish`, listens to its inbox, and works every task offered to it: accept → start →
 * complete. The workflow's steps and their compensations arrive as ordinary tasks; `task.origin`
 * says which execution, step and attempt a task runs, and whether it is a step or the undo of one.
 *
 *   TROUPE_KEY=<key> npx tsx examples/workflow-agent.ts
 *
 * A step task whose parameters say `simulateFailure: true` is failed instead of completed
 * (examples/workflow.ts sets that for the step named in FAIL_STEP), so you can watch the saga
 * undo what was done. Compensation tasks are always completed.
 *
 * TROUPE_URL defaults to ws://127.0.0.1:7420/v1. The agent registers as the key's principal:
 * steps are auto-assigned, and an agent is online (offered work) only while a connection of its
 * own principal is open. Give it its own key:
 *
 *   npx troupe keys create --tenant default --principal worker-1 --roles agent
 */
import { connect, type ActorEvent, type Task } from '../protocol/index.js';

const url = process.env.TROUPE_URL ?? 'ws://127.0.0.1:7420/v1';
const token = process.env.TROUPE_KEY;
if (!token) {
  console.error('Set TROUPE_KEY to an API key (npm start prints one; see README).');
  process.exit(2);
}

const client = await connect(url, { token }).catch((e: unknown) => {
  console.error(`Could not connect to ${url}: ${(e as Error).message}. Is the server running (npm start)? Set TROUPE_URL if it listens elsewhere.`);
  process.exit(1);
});
const me = await client.call('session.whoami');
const agentId = me.principalId;
const agent = await client.call('agent.register', {
  id: agentId,
  name: 'Workflow example worker',
  capabilities: ['fetch', 'transform', 'publish'],
  maxConcurrentTasks: 8,
});
console.log(`registered ${agent.id} (${agent.status}) with capabilities ${agent.capabilities.join(', ')} in tenant ${me.tenantId}`);

/** What the worker "does" for each kind of task: made-up results the next steps read. */
function resultOf(task: Task): Record<string, unknown> {
  const p = task.parameters;
  switch (task.type) {
    case 'fetch':
      return { records: [{ city: 'Lisbon', temp: 21 }, { city: 'Oslo', temp: 9 }, { city: 'Lima', temp: 17 }], source: p.source };
    case 'transform': {
      const records = Array.isArray(p.records) ? (p.records as { temp: number }[]) : [];
      const mean = records.reduce((s, r) => s + r.temp, 0) / (records.length || 1);
      return { dataset: `readings-${(task.origin?.executionId ?? task.id).slice(-8)}`, rows: records.length, meanTemp: Math.round(mean * 10) / 10 };
    }
    case 'publish':
      return { url: `https://example.invalid/${String(p.channel)}/${String(p.dataset)}` };
    default:
      // Compensations: fetch.undo, transform.undo, publish.undo.
      return { undone: task.type.replace(/\.undo$/, ''), of: p };
  }
}

const working = new Set<string>();
async function work(taskId: string): Promise<void> {
  if (working.has(taskId)) return;
  working.add(taskId);
  try {
    const task = await client.call('task.accept', { taskId });
    const o = task.origin;
    const what = o ? `${o.role === 'compensation' ? 'undo ' : ''}step ${o.stepId} (attempt ${o.attempt})` : 'a task';
    await client.call('task.start', { taskId });
    if (o?.role === 'step' && task.parameters.simulateFailure === true) {
      await client.call('task.fail', { taskId, error: `simulated failure of ${task.type}` });
      console.log(`✗ failed    ${task.type.padEnd(14)} ${what}: simulated failure`);
      return;
    }
    const result = resultOf(task);
    await client.call('task.complete', { taskId, result });
    console.log(`✓ completed ${task.type.padEnd(14)} ${what} → ${JSON.stringify(result)}`);
  } catch (e) {
    console.error(`could not work on ${taskId}: ${(e as Error).message}`);
  } finally {
    working.delete(taskId);
  }
}

await client.subscribe(`inbox:${agentId}`, (event: ActorEvent) => {
  if (event.kind === 'task' && event.status === 'assigned') void work(event.actorId);
});

// Pick up anything offered while this agent was away.
const waiting = await client.call('task.listForAgent', { agentId, status: ['assigned'] });
for (const t of waiting.items) void work(t.id);

console.log('waiting for workflow tasks; Ctrl-C to stop');
process.on('SIGINT', () => void client.close().then(() => process.exit(0)));
process.on('SIGTERM', () => void client.close().then(() => process.exit(0)));

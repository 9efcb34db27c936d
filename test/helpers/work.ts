import type { TroupeClient } from '../../protocol/client.js';
import type { ParamsOf } from '../../protocol/methods.js';
import type { ActorEvent, Role, Task } from '../../protocol/model.js';
import type { TestServer } from './server.js';
import { waitFor } from './waitFor.js';

/**
 * Waits until `pred` holds for the task as `client` reads it, and returns that task. The error
 * names the last state seen, so a test that waits in vain says where the task got stuck.
 */
export async function taskWhen(client: TroupeClient, taskId: string, pred: (t: Task) => boolean, timeoutMs = 5000): Promise<Task> {
  let last: Task | null = null;
  try {
    return await waitFor(
      async () => {
        last = await client.call('task.get', { taskId });
        return pred(last) ? last : null;
      },
      { timeoutMs, intervalMs: 15 },
    );
  } catch (e) {
    const t = last as Task | null;
    throw new Error(
      `task ${taskId} never reached the expected state within ${timeoutMs} ms; last seen: ${
        t ? JSON.stringify({ status: t.status, assignedTo: t.assignedTo, version: t.version, waitingForAgent: t.waitingForAgent, rejections: t.rejections }) : 'nothing'
      } (${(e as Error).message})`,
    );
  }
}

/** Waits until the task is offered to some agent (status `assigned`) and returns it. */
export function offered(client: TroupeClient, taskId: string, timeoutMs = 5000): Promise<Task> {
  return taskWhen(client, taskId, (t) => t.status === 'assigned' && t.assignedTo !== null, timeoutMs);
}

/** The task's timeline events of one type, oldest first. */
export async function eventsOf(client: TroupeClient, taskId: string, type: string): Promise<ActorEvent[]> {
  return (await client.call('task.timeline', { taskId, limit: 1000 })).items.filter((e) => e.type === type);
}

/**
 * Connects one client per agent (principal = agent id, role `agent`) and registers each with
 * its profile. Returns the clients by agent id.
 */
export async function registerAgents(
  ts: TestServer,
  tenant: string,
  profiles: Record<string, Omit<ParamsOf<'agent.register'>, 'id'>>,
  roles: Role[] = ['agent'],
): Promise<Record<string, TroupeClient>> {
  const out: Record<string, TroupeClient> = {};
  for (const [id, profile] of Object.entries(profiles)) {
    out[id] = await ts.client(tenant, id, roles);
    await out[id].call('agent.register', profile);
  }
  return out;
}

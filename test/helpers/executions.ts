import { stepTaskId } from '../../machines/execution.js';
import type { TroupeClient } from '../../protocol/client.js';
import type { Task } from '../../protocol/model.js';
import type { Execution } from '../../protocol/workflows.js';
import { waitFor } from './waitFor.js';
import { offered } from './work.js';

/** Execution states after which nothing runs any more (until a retry). */
export const FINISHED_EXECUTION = ['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out'];

/**
 * Waits until `pred` holds for the execution as `client` reads it, and returns it. The error
 * names the last state seen, so a test that waits in vain says where the run got stuck.
 */
export async function executionWhen(client: TroupeClient, executionId: string, pred: (x: Execution) => boolean, timeoutMs = 5000): Promise<Execution> {
  let last: Execution | null = null;
  try {
    return await waitFor(
      async () => {
        last = await client.call('execution.get', { executionId });
        return pred(last) ? last : null;
      },
      { timeoutMs, intervalMs: 15 },
    );
  } catch (e) {
    const x = last as Execution | null;
    throw new Error(
      `execution ${executionId} never reached the expected state within ${timeoutMs} ms; last seen: ${
        x ? JSON.stringify({ status: x.status, error: x.error, steps: x.steps.map((s) => `${s.id}:${s.status}#${s.attempt}`) }) : 'nothing'
      } (${(e as Error).message})`,
    );
  }
}

/** Waits until the execution has finished (any final state) and returns it. */
export function executionSettled(client: TroupeClient, executionId: string, timeoutMs = 5000): Promise<Execution> {
  return executionWhen(client, executionId, (x) => FINISHED_EXECUTION.includes(x.status), timeoutMs);
}

/** The id of the task that runs attempt `attempt` of a step. */
export function stepTask(executionId: string, stepId: string, attempt = 1): string {
  return stepTaskId(executionId, stepId, attempt, 'step');
}

/** The id of the task that runs attempt `attempt` of a step's compensation. */
export function compensationTask(executionId: string, stepId: string, attempt = 1): string {
  return stepTaskId(executionId, stepId, attempt, 'compensation');
}

/** Waits until the task is offered to an agent, then that agent accepts and starts it. */
export async function startWork(observer: TroupeClient, agents: Record<string, TroupeClient>, taskId: string, timeoutMs = 5000): Promise<{ task: Task; agent: TroupeClient }> {
  const task = await offered(observer, taskId, timeoutMs);
  const agent = agents[task.assignedTo!];
  if (!agent) throw new Error(`task ${taskId} was offered to ${task.assignedTo}, who is not one of ${Object.keys(agents).join(', ')}`);
  await agent.call('task.accept', { taskId });
  await agent.call('task.start', { taskId });
  return { task, agent };
}

/** The agent the task is offered to accepts, starts and completes it with `result`; returns the task as offered. */
export async function doWork(observer: TroupeClient, agents: Record<string, TroupeClient>, taskId: string, result: unknown, timeoutMs = 5000): Promise<Task> {
  const { task, agent } = await startWork(observer, agents, taskId, timeoutMs);
  await agent.call('task.complete', { taskId, result });
  return task;
}

/** The agent the task is offered to accepts, starts and fails it; returns the task as offered. */
export async function failWork(observer: TroupeClient, agents: Record<string, TroupeClient>, taskId: string, error: string, timeoutMs = 5000): Promise<Task> {
  const { task, agent } = await startWork(observer, agents, taskId, timeoutMs);
  await agent.call('task.fail', { taskId, error });
  return task;
}

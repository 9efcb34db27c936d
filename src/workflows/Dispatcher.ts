import type { SnapshotFrom } from 'xstate';
import type { ActorHost } from '../../actors/ActorHost.js';
import type { TimerRecord } from '../../actors/Store.js';
import { pendingCompensation, stepTaskId, type ExecutionContext, type Started } from '../../machines/execution.js';
import type { executionMachine } from '../../machines/executionMachine.js';
import { isProtocolError } from '../../protocol/errors.js';
import type { Principal, TaskOrigin } from '../../protocol/model.js';
import type { Step, StepAction, StepRun } from '../../protocol/workflows.js';
import { prepareTask } from '../handlers/taskPrep.js';
import type { Logger } from '../logger.js';
import type { App } from '../server/App.js';
import { evaluate, resolve, type WorkflowVars } from './expressions.js';

type ExecutionSnapshot = SnapshotFrom<typeof executionMachine>;

/** What one dispatch decided, reported to the execution in one event. */
interface Dispatch {
  started: Started[];
  skipped: { stepId: string; reason: string }[];
  failed: { stepId: string; error: string }[];
  compensations: Started[];
  compensationsFailed: { stepId: string; error: string }[];
}

/** The `steps` variable of workflow expressions: each step's status, output, error and agent. */
export function stepsVar(steps: StepRun[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of steps) {
    Object.defineProperty(out, s.id, {
      value: { status: s.status, output: s.output, error: s.error, agent: s.agent, attempt: s.attempt },
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

/**
 * Turns an execution's queued steps into tasks. The execution machine asks through its
 * `dispatch` timer; this service evaluates each queued step's `when` and `input` (CEL), creates
 * its task (with a task id derived from execution, step and attempt, so a repeated dispatch after
 * a crash finds the same task instead of making a second), and tells the execution what it
 * started, skipped or could not start, consuming the timer in the same commit. During a saga it
 * does the same for the compensation whose turn it is.
 */
export class Dispatcher {
  #app: App;
  #host: ActorHost;
  #log: Logger;

  constructor(app: App) {
    this.#app = app;
    this.#host = app.host;
    this.#log = app.log;
  }

  /** Delivers an execution's `dispatch` timer. */
  async deliver(t: TimerRecord): Promise<void> {
    const address = { tenant: t.tenant, kind: 'execution', id: t.actorId };
    for (let attempt = 0; ; attempt++) {
      const { snapshot, version } = await this.#host.read<typeof executionMachine>(address);
      const ctx = (snapshot as ExecutionSnapshot).context;
      if (ctx.timers.dispatch !== t.fireAt || (ctx.phase !== 'running' && ctx.phase !== 'compensating')) return this.#host.fireTimer(t);
      const d = await this.#plan(ctx);
      try {
        await this.#host.send(address, { type: 'execution.dispatched', ...d }, {
          principal: 'system',
          expectedVersion: version,
          firedTimer: { name: t.name, fireAt: t.fireAt },
        });
        return;
      } catch (e) {
        // The execution moved on while its tasks were created: plan again on its new state (the
        // tasks already created are found again by their ids).
        if (isProtocolError(e, 'VERSION_MISMATCH') && attempt < 5) continue;
        if (isProtocolError(e, 'ILLEGAL_TRANSITION')) return this.#host.fireTimer(t);
        throw e;
      }
    }
  }

  async #plan(ctx: ExecutionContext): Promise<Dispatch> {
    const x = ctx.execution;
    const d: Dispatch = { started: [], skipped: [], failed: [], compensations: [], compensationsFailed: [] };
    const vars: WorkflowVars = { input: x.input, steps: stepsVar(x.steps) };
    const def = (id: string) => ctx.definition.steps.find((s) => s.id === id)!;
    const work: Promise<void>[] = [];
    // A task that could not be created for a passing reason (its agent's actor is moving between
    // nodes, the store is busy) fails nothing: the dispatch is tried again, and the tasks created
    // meanwhile are found again by their ids.
    let passing: unknown = null;
    const failedWith = (e: unknown, fail: () => void) => {
      if (isProtocolError(e, 'UNAVAILABLE') || isProtocolError(e, 'BUSY') || isProtocolError(e, 'RATE_LIMITED')) passing ??= e;
      else fail();
    };

    if (ctx.phase === 'running') {
      for (const s of x.steps.filter((r) => r.status === 'queued')) {
        const step = def(s.id);
        const attempt = s.attempt + 1;
        if (step.when) {
          let ok: unknown;
          try {
            ok = evaluate(step.when, vars, `steps.${s.id}.when`);
          } catch (e) {
            d.failed.push({ stepId: s.id, error: `its condition could not be evaluated: ${(e as Error).message}` });
            continue;
          }
          if (ok !== true) {
            d.skipped.push({ stepId: s.id, reason: `its condition \`${step.when}\` is ${JSON.stringify(ok)}` });
            continue;
          }
        }
        if (step.approval && !step.action) {
          d.started.push({ stepId: s.id, attempt, taskId: null, input: null });
          continue;
        }
        work.push(
          this.#startTask(ctx, step as Step & StepAction, s.id, attempt, 'step', vars).then(
            (r) => void d.started.push(r),
            (e: unknown) => failedWith(e, () => d.failed.push({ stepId: s.id, error: (e as Error).message })),
          ),
        );
      }
    } else {
      const s = pendingCompensation(ctx);
      if (s) {
        const comp = def(s.id).compensate!;
        const cvars = { ...vars, step: { id: s.id, input: s.input, output: s.output, agent: s.agent } };
        work.push(
          this.#startTask(ctx, comp, s.id, s.compensation!.attempt + 1, 'compensation', cvars).then(
            (r) => void d.compensations.push(r),
            (e: unknown) => failedWith(e, () => d.compensationsFailed.push({ stepId: s.id, error: (e as Error).message })),
          ),
        );
      }
    }
    await Promise.all(work);
    if (passing) throw passing;
    return d;
  }

  /** Creates (or finds) the task of one attempt of a step or of its compensation. */
  async #startTask(
    ctx: ExecutionContext,
    action: StepAction & { name?: string },
    stepId: string,
    attempt: number,
    role: TaskOrigin['role'],
    vars: WorkflowVars,
  ): Promise<Started> {
    const x = ctx.execution;
    const field = role === 'step' ? `steps.${stepId}.input` : `steps.${stepId}.compensate.input`;
    const resolved = action.input === undefined ? {} : resolve(action.input, vars, field);
    const parameters: Record<string, unknown> =
      resolved && typeof resolved === 'object' && !Array.isArray(resolved) ? { ...(resolved as Record<string, unknown>) } : { value: resolved };
    if (x.workspaceId) parameters.workspaceId = x.workspaceId;
    if (action.agent) {
      const dir = await this.#app.directory.tenant(x.tenantId);
      if (!dir.agents.has(action.agent)) throw new Error(`its agent ${action.agent} is not registered`);
    }
    const principal: Principal = { tenantId: x.tenantId, principalId: x.createdBy, roles: ['agent'] };
    const title = action.title ?? `${x.workflowName}: ${role === 'step' ? '' : 'undo '}${action.name ?? stepId}`;
    const prepared = await prepareTask(this.#app, principal, {
      type: action.action,
      title: title.slice(0, 512),
      parameters,
      requiredCapabilities: action.requiredCapabilities,
      assignTo: action.agent,
      autoAssign: !action.agent,
      timeoutSeconds: action.timeoutSeconds,
      maxRetries: 0,
      leaseSeconds: ctx.definition.config?.leaseSeconds,
    });
    const taskId = stepTaskId(x.id, stepId, attempt, role);
    const origin: TaskOrigin = { executionId: x.id, stepId, attempt, role };
    // Step tasks count against the tenant's quotas; one that does not fit fails its step.
    const quota = await this.#app.quotas?.reserve(x.tenantId, { tasks: [taskId], activeTasks: [taskId], storage: true }).catch(async (e: unknown) => {
      // A task created by an earlier dispatch is found again below, whatever the quota says now.
      if (isProtocolError(e, 'QUOTA_EXCEEDED') && (await this.#app.store.getView(x.tenantId, 'task', taskId))) return undefined;
      throw e;
    });
    try {
      await this.#host.send(
        { tenant: x.tenantId, kind: 'task', id: taskId },
        { ...prepared, type: 'task.create', taskType: prepared.type, id: taskId, tenantId: x.tenantId, origin },
        { principal: x.createdBy, correlationId: x.id },
      );
    } catch (e) {
      quota?.release(e);
      // Created by an earlier dispatch that did not get to report it: the same task, started once.
      if (!isProtocolError(e, 'ILLEGAL_TRANSITION')) throw e;
      this.#log.debug({ taskId }, 'step task already created');
    } finally {
      quota?.release();
    }
    return { stepId, attempt, taskId, input: parameters };
  }
}

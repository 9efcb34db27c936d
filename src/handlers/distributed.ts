import { createHash } from 'node:crypto';
import { IdempotencyConflict, type TurnResult } from '../../actors/ActorHost.js';
import { uuidv7 } from '../../actors/uuidv7.js';
import { initialActivations } from '../../machines/distribution.js';
import type { taskMachine } from '../../machines/taskMachine.js';
import { isProtocolError, ProtocolError } from '../../protocol/errors.js';
import type { ParamsOf } from '../../protocol/methods.js';
import type { Distribution, Principal, Task, TaskTree } from '../../protocol/model.js';
import { taskFromTurn } from '../kinds/taskKind.js';
import { applied, hasRole, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';
import { registeredAgent } from './agents.js';
import { taskView } from './assignment.js';
import { prepareTask } from './taskPrep.js';
import { canonicalJson } from './tasks.js';

type Params = ParamsOf<'task.createDistributed'>;

const FINISHED = new Set(['completed', 'cancelled', 'timed_out']);

/** Distributed tasks: a parent with subtasks that completes by its rules. */
export function distributedHandlers(app: App): Handlers {
  const { host, store } = app;
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'task', id });

  async function stage(ctx: AuthedContext, id: string, fields: Record<string, unknown>): Promise<void> {
    const p = ctx.principal;
    applied(
      await host.send(address(p, id), { ...fields, type: 'task.create', staged: true, id, tenantId: p.tenantId }, {
        principal: p.principalId,
        correlationId: ctx.correlationId,
        fresh: true,
      }),
    );
  }

  /** Removes staged tasks after a failed creation; what cannot be removed is logged, never shown. */
  async function compensate(ctx: AuthedContext, ids: string[]): Promise<void> {
    for (const id of [...ids].reverse()) {
      await host
        .send(address(ctx.principal, id), { type: 'task.delete' }, { principal: ctx.principal.principalId, correlationId: ctx.correlationId })
        .catch((e: unknown) => app.log.error({ err: e, taskId: id }, 'a staged task of a failed distributed creation could not be removed'));
    }
  }

  async function result(p: Principal, parentId: string): Promise<{ task: Task; subtasks: Task[] }> {
    const parent = await taskView(app, p, parentId);
    const ids = parent.distribution?.subtasks.map((s) => s.id) ?? [];
    const views = await store.getViews(p.tenantId, 'task', ids);
    const byId = new Map(views.map((v) => [v.id, v.doc as unknown as Task]));
    return { task: parent, subtasks: ids.map((id) => byId.get(id)).filter((t): t is Task => t !== undefined) };
  }

  function validate(params: Params): void {
    const n = params.subtasks.length;
    if (params.coordination === 'map_reduce' && n < 2) {
      throw new ProtocolError('INVALID_PARAMS', 'A map_reduce task needs at least two subtasks: mappers and, last, the reducer.', { field: 'subtasks' });
    }
    const workers = params.coordination === 'map_reduce' ? n - 1 : n;
    if (params.completion.mode === 'threshold') {
      const k = params.completion.threshold;
      if (k === undefined) throw new ProtocolError('INVALID_PARAMS', 'Completion mode threshold needs completion.threshold.', { field: 'completion.threshold' });
      if (k > workers) {
        throw new ProtocolError('INVALID_PARAMS', `The threshold ${k} is more than the ${workers} subtasks that count toward it.`, { field: 'completion.threshold' });
      }
    } else if (params.completion.threshold !== undefined) {
      throw new ProtocolError('INVALID_PARAMS', 'completion.threshold applies only to completion mode threshold.', { field: 'completion.threshold' });
    }
  }

  return {
    /**
     * Builds the tree invisibly (staged), subtask by subtask, each validated like any task; if
     * any part fails, the staged parts are deleted and nothing was ever visible. Then the parent
     * is activated (claiming the idempotency key) and starts its first subtasks.
     */
    'task.createDistributed': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'create tasks', 'admin', 'agent');
      const { idempotencyKey, ...fields } = params;
      const key = idempotencyKey === undefined ? undefined : `${p.principalId}\ndistributed\n${idempotencyKey}`;
      const requestHash = createHash('sha256').update(canonicalJson(fields)).digest('hex');
      const replayed = async () => {
        const rec = key ? await store.getIdempotency(p.tenantId, key) : undefined;
        if (!rec) return undefined;
        if (rec.requestHash !== requestHash) {
          throw new ProtocolError('IDEMPOTENCY_MISMATCH', `The idempotency key "${idempotencyKey}" was already used with different parameters.`, { idempotencyKey });
        }
        return result(p, (rec.result as { taskId: string }).taskId);
      };
      const earlier = await replayed();
      if (earlier) return earlier;
      validate(params);

      const now = app.now();
      const parentId = uuidv7(now);
      const ids = params.subtasks.map(() => uuidv7(now));
      const distribution: Distribution = {
        coordination: params.coordination,
        completion: { mode: params.completion.mode, threshold: params.completion.threshold ?? null },
        aggregation: params.aggregation ?? 'combine_results',
        subtasks: ids.map((id) => ({ id, status: 'waiting', result: null, error: null, agent: null, settledOrder: null })),
      };
      const parentFields = await prepareTask(app, p, {
        type: params.type,
        title: params.title,
        description: params.description,
        priority: params.priority,
        parameters: params.parameters,
      });
      // Held for the whole tree: staged parts count as tasks, the parts started now as unfinished.
      const quota = await app.quotas?.reserve(p.tenantId, { tasks: [parentId, ...ids], activeTasks: [parentId, ...initialActivations(distribution)], storage: true });
      try {
        // Every part is validated and staged at once (their commits group); if any part is
        // refused, every part that was staged is removed again.
        const parts = [
          stage(ctx, parentId, {
            ...parentFields,
            taskType: parentFields.type,
            // The parent is coordinated by its subtasks, never assigned, leased or retried itself.
            autoAssign: false,
            leaseSeconds: undefined,
            offerTimeoutSeconds: undefined,
            maxRetries: 0,
            timeoutSeconds: undefined,
            deadline: params.timeoutSeconds ? new Date(now + params.timeoutSeconds * 1000).toISOString() : undefined,
            distribution,
          }),
          ...params.subtasks.map(async (st, i) => {
            if (st.assignTo) await registeredAgent(app, p, st.assignTo);
            const f = await prepareTask(app, p, { ...st, type: st.type ?? params.type, parentTaskId: parentId, autoAssign: st.autoAssign ?? !st.assignTo });
            await stage(ctx, ids[i]!, { ...f, taskType: f.type });
          }),
        ];
        const outcomes = await Promise.allSettled(parts);
        const failed = outcomes.findIndex((o) => o.status === 'rejected');
        const staged = [parentId, ...ids].filter((_, i) => outcomes[i]!.status === 'fulfilled');
        if (failed >= 0) {
          await compensate(ctx, staged);
          const e = (outcomes[failed] as PromiseRejectedResult).reason as unknown;
          if (failed === 0) throw e;
          const index = failed - 1;
          const err = e instanceof ProtocolError ? e : new ProtocolError('INTERNAL', 'The subtask could not be created.');
          throw new ProtocolError(err.reason, `Subtask ${index + 1} ("${params.subtasks[index]!.title}") could not be created, so nothing was: ${err.message}`, {
            ...err.data,
            subtaskIndex: index,
          });
        }

        try {
          applied(
            await host.send<typeof taskMachine>(address(p, parentId), { type: 'task.activate' }, {
              principal: p.principalId,
              correlationId: ctx.correlationId,
              idempotency: key ? { tenant: p.tenantId, key, requestHash, createdAt: now, result: { taskId: parentId } } : undefined,
            }),
          );
        } catch (e) {
          await compensate(ctx, staged);
          if (e instanceof IdempotencyConflict) {
            const first = await replayed();
            if (first) return first;
          }
          throw e;
        }
        // The activation's messages to the first subtasks were handed to their mailboxes as it
        // committed; a read queued behind them returns once they are active, so the reply shows them.
        await Promise.all(initialActivations(distribution).map((id) => host.read(address(p, id)).catch(() => undefined)));
        return result(p, parentId);
      } catch (e) {
        quota?.release(e);
        throw e;
      } finally {
        quota?.release();
      }
    },

    'task.submitSubtaskResult': async (ctx, { parentTaskId, subtaskId, result: value }) => {
      const p = ctx.principal;
      requireRole(p, 'submit results', 'admin', 'agent');
      const sub = await taskView(app, p, subtaskId);
      if (sub.parentTaskId !== parentTaskId) {
        throw new ProtocolError('NOT_FOUND', `Task ${subtaskId} is not a subtask of ${parentTaskId}.`, { kind: 'task', id: subtaskId });
      }
      if (!hasRole(p, 'admin') && sub.assignedTo !== p.principalId) {
        throw new ProtocolError('FORBIDDEN', `Only the agent holding subtask ${subtaskId} (${sub.assignedTo ?? 'nobody'}) or an admin may submit its result; you are ${p.principalId}.`);
      }
      // Submitting a result implies accepting and starting, for agents that skip those steps.
      const steps: Record<string, string[]> = {
        assigned: ['task.accept', 'task.start', 'task.complete'],
        accepted: ['task.start', 'task.complete'],
        in_progress: ['task.complete'],
        input_required: [],
      };
      const plan = steps[sub.status];
      if (!plan || plan.length === 0) {
        throw new ProtocolError('ILLEGAL_TRANSITION', `Subtask ${subtaskId} is ${sub.status}; a result can be submitted while it is assigned, accepted or in progress.`, {
          state: sub.status,
        });
      }
      let last: TurnResult<typeof taskMachine> | null = null;
      for (const type of plan) {
        const event = type === 'task.complete' ? { type, result: value ?? null } : { type };
        last = applied(
          await host.send<typeof taskMachine>(address(p, subtaskId), event, {
            principal: p.principalId,
            correlationId: ctx.correlationId,
            // Each step applies to the state the previous one left, and only to the holder's task.
            check: (s) => {
              if (!hasRole(p, 'admin') && s.context.task.assignedTo !== p.principalId) {
                throw new ProtocolError('FORBIDDEN', `Subtask ${subtaskId} is no longer held by you (${p.principalId}).`);
              }
            },
          }),
        );
      }
      return taskFromTurn(last!);
    },

    'task.tree': async (ctx, { taskId, depth }) => {
      const p = ctx.principal;
      const build = async (t: Task, level: number): Promise<TaskTree> => {
        if (level >= (depth ?? 3)) return { task: t, children: [] };
        const children: Task[] = [];
        let cursor: string | undefined;
        do {
          const page = await store.queryViews(p.tenantId, 'task', { parentId: t.id, archived: 'any', limit: 1000, cursor });
          children.push(...page.items.map((v) => v.doc as unknown as Task));
          cursor = page.nextCursor ?? undefined;
        } while (cursor);
        // A distributed parent lists its subtasks in their order, the ones not started included.
        const order = t.distribution?.subtasks.map((s) => s.id) ?? [];
        const byId = new Map(children.map((c) => [c.id, c]));
        const nodes: TaskTree[] = [];
        for (const id of order) {
          const c = byId.get(id);
          nodes.push(c ? await build(c, level + 1) : { task: { id, status: 'waiting', parentTaskId: t.id }, children: [] });
          byId.delete(id);
        }
        for (const c of byId.values()) nodes.push(await build(c, level + 1));
        return { task: t, children: nodes };
      };
      return build(await taskView(app, p, taskId), 0);
    },

    'task.cancelTree': async (ctx, { taskId, reason }) => {
      const p = ctx.principal;
      requireRole(p, 'cancel tasks', 'admin', 'agent');
      const root = await taskView(app, p, taskId);
      if (!hasRole(p, 'admin') && root.createdBy !== p.principalId) {
        throw new ProtocolError('FORBIDDEN', `Only its creator (${root.createdBy}) or an admin may cancel task ${taskId}; you are ${p.principalId}.`);
      }
      let cancelled = 0;
      const visit = async (id: string, depth: number): Promise<void> => {
        const t = await store.getView(p.tenantId, 'task', id);
        const status = t?.status;
        if (status && !FINISHED.has(status)) {
          try {
            await host.send(address(p, id), { type: 'task.cancel', reason: reason ?? `cancelled with its tree (${taskId})` }, {
              principal: p.principalId,
              correlationId: ctx.correlationId,
            });
            cancelled++;
          } catch (e) {
            if (!isProtocolError(e, 'ILLEGAL_TRANSITION')) throw e;
          }
        }
        if (depth >= 10) return;
        let cursor: string | undefined;
        do {
          const page = await store.queryViews(p.tenantId, 'task', { parentId: id, archived: 'any', limit: 1000, cursor });
          for (const c of page.items) await visit(c.id, depth + 1);
          cursor = page.nextCursor ?? undefined;
        } while (cursor);
      };
      await visit(taskId, 0);
      return { task: await taskView(app, p, taskId), cancelled };
    },
  };
}

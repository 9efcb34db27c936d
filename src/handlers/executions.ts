import { createHash } from 'node:crypto';
import type { SnapshotFrom } from 'xstate';
import { IdempotencyConflict, type TurnResult } from '../../actors/ActorHost.js';
import type { ViewQuery } from '../../actors/Store.js';
import { uuidv7 } from '../../actors/uuidv7.js';
import { executionResource } from '../../machines/execution.js';
import type { executionMachine } from '../../machines/executionMachine.js';
import type { workflowMachine } from '../../machines/workflowMachine.js';
import { dependencies } from '../../machines/workflowGraph.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type { Execution, StepStatus, WorkflowDefinition } from '../../protocol/workflows.js';
import { DEFAULT_MAX_MEMBERS } from '../../protocol/workspaces.js';
import { applied, hasRole, queryPage, requireRole, type App, type AuthedContext, type Handlers } from '../server/App.js';
import { canonicalJson } from './tasks.js';

type ExecutionSnapshot = SnapshotFrom<typeof executionMachine>;
type WorkflowSnapshot = SnapshotFrom<typeof workflowMachine>;

const SATISFIED: ReadonlySet<StepStatus> = new Set(['completed', 'skipped']);

/** Workflow executions: start, control, and look inside. */
export function executionHandlers(app: App): Handlers {
  const { host, store } = app;
  const address = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'execution', id });

  /** The execution as stored, or NOT_FOUND. */
  async function view(p: Principal, executionId: string): Promise<Execution> {
    const v = await store.getView(p.tenantId, 'execution', executionId);
    if (!v) throw new ProtocolError('NOT_FOUND', `Execution ${executionId} does not exist.`, { kind: 'execution', id: executionId });
    return v.doc as unknown as Execution;
  }

  /** The definition of a workflow at a version (default: its current one). */
  async function definitionOf(p: Principal, workflowId: string, version?: number): Promise<{ definition: WorkflowDefinition; version: number }> {
    const v = await store.getView(p.tenantId, 'workflow', workflowId);
    if (!v) throw new ProtocolError('NOT_FOUND', `Workflow ${workflowId} does not exist.`, { kind: 'workflow', id: workflowId });
    const { snapshot } = await host.read<typeof workflowMachine>({ tenant: p.tenantId, kind: 'workflow', id: workflowId });
    const versions = (snapshot as WorkflowSnapshot).context.versions;
    const want = version ?? versions.length;
    const found = versions[want - 1];
    if (!found) {
      throw new ProtocolError('NOT_FOUND', `Workflow ${workflowId} has no version ${want}; its versions are 1 to ${versions.length}.`, {
        kind: 'workflow',
        id: workflowId,
        version: want,
      });
    }
    if (found.definition.active === false) {
      throw new ProtocolError('INVALID_PARAMS', `Workflow ${workflowId} version ${want} is not active; activate it with a new version first.`, { field: 'workflowId' });
    }
    return { definition: found.definition, version: want };
  }

  /**
   * The shared workspace of an execution: team-visible, owned by the executor, with the agents
   * and approvers the definition names as editors (auto-assigned agents can read it; an owner
   * may add them).
   */
  async function executionWorkspace(ctx: AuthedContext, executionId: string, def: WorkflowDefinition): Promise<string> {
    const p = ctx.principal;
    const id = uuidv7(app.now());
    const address = { tenant: p.tenantId, kind: 'workspace', id };
    const turn = { principal: p.principalId, correlationId: ctx.correlationId };
    const names = new Set<string>();
    for (const s of def.steps) {
      if (s.agent) names.add(s.agent);
      if (s.compensate?.agent) names.add(s.compensate.agent);
      for (const a of s.approval?.approvers ?? []) names.add(a);
    }
    names.delete(p.principalId);
    applied(
      await host.send(address, {
        type: 'workspace.create',
        id,
        tenantId: p.tenantId,
        name: `${def.name} · execution ${executionId.slice(-12)}`,
        workspaceType: 'execution',
        description: `Shared by the steps of execution ${executionId} of workflow ${def.name}.`,
        visibility: 'team',
        maxMembers: Math.max(DEFAULT_MAX_MEMBERS, names.size + 1),
        settings: { executionId },
        tags: ['execution'],
      }, { ...turn, fresh: true }),
    );
    for (const principalId of names) {
      await host.send(address, { type: 'workspace.addMember', principalId, role: 'editor', permissions: [] }, turn);
    }
    return id;
  }

  function fromTurn(r: TurnResult<typeof executionMachine>): Execution {
    return executionResource((r.snapshot as ExecutionSnapshot).context, r.version);
  }

  /** Who may steer an execution: its creator or an admin. */
  function mayControl(p: Principal, x: Execution, action: string): void {
    if (hasRole(p, 'admin') || x.createdBy === p.principalId) return;
    throw new ProtocolError('FORBIDDEN', `Only the execution's creator (${x.createdBy}) or an admin may ${action} execution ${x.id}; you are ${p.principalId}.`);
  }

  async function control(
    ctx: AuthedContext,
    executionId: string,
    action: string,
    event: { type: string } & Record<string, unknown>,
    check: (p: Principal, x: Execution) => void | Promise<void>,
    expectedVersion?: number,
  ): Promise<Execution> {
    const p = ctx.principal;
    requireRole(p, `${action} executions`, 'admin', 'agent');
    const x = await view(p, executionId);
    await check(p, x);
    // Decided on this version: if the execution moved on meanwhile (a step retried, say), the
    // caller reads it again rather than acting on rights it may no longer have.
    const r = await host.send<typeof executionMachine>(address(p, executionId), event, {
      principal: p.principalId,
      correlationId: ctx.correlationId,
      expectedVersion: expectedVersion ?? x.version,
    });
    return fromTurn(applied(r));
  }

  /** Creator, admin, or the agent holding the task of the step's current attempt. */
  function mayDecideStep(stepId: string, action: string) {
    return async (p: Principal, x: Execution) => {
      const s = x.steps.find((r) => r.id === stepId);
      if (!s) throw new ProtocolError('NOT_FOUND', `Execution ${x.id} has no step ${stepId}.`, { kind: 'step', id: stepId });
      if (hasRole(p, 'admin') || x.createdBy === p.principalId) return;
      const task = s.taskId ? await store.getView(p.tenantId, 'task', s.taskId) : undefined;
      if (task && task.owner === p.principalId) return;
      throw new ProtocolError('FORBIDDEN', `Only the execution's creator (${x.createdBy}), an admin or the agent holding step ${stepId}'s task may ${action} it; you are ${p.principalId}.`);
    };
  }

  async function step(p: Principal, executionId: string, stepId: string) {
    const x = await view(p, executionId);
    const s = x.steps.find((r) => r.id === stepId);
    if (!s) throw new ProtocolError('NOT_FOUND', `Execution ${executionId} has no step ${stepId}.`, { kind: 'step', id: stepId });
    return { x, s };
  }

  return {
    'workflow.execute': async (ctx, { workflowId, version, input, idempotencyKey }) => {
      const p = ctx.principal;
      requireRole(p, 'execute workflows', 'admin', 'agent');
      const key = idempotencyKey === undefined ? undefined : `${p.principalId}\nexecute\n${idempotencyKey}`;
      const requestHash = createHash('sha256').update(canonicalJson({ workflowId, version, input })).digest('hex');
      const replayed = async (): Promise<Execution | undefined> => {
        const rec = key ? await store.getIdempotency(p.tenantId, key) : undefined;
        if (!rec) return undefined;
        if (rec.requestHash !== requestHash) {
          throw new ProtocolError('IDEMPOTENCY_MISMATCH', `The idempotency key "${idempotencyKey}" was already used with different parameters.`, { idempotencyKey });
        }
        return view(p, (rec.result as { executionId: string }).executionId);
      };
      const earlier = await replayed();
      if (earlier) return earlier;
      const def = await definitionOf(p, workflowId, version);
      const id = uuidv7(app.now());
      const quota = await app.quotas?.reserve(p.tenantId, { executions: [id], storage: true });
      let workspaceId: string | undefined;
      try {
        if (def.definition.config?.workspace) workspaceId = await executionWorkspace(ctx, id, def.definition);
        const r = await host.send<typeof executionMachine>(
          address(p, id),
          { type: 'execution.start', id, tenantId: p.tenantId, workflowId, workflowVersion: def.version, definition: def.definition, input: input ?? {}, workspaceId },
          {
            principal: p.principalId,
            correlationId: ctx.correlationId,
            fresh: true,
            idempotency: key ? { tenant: p.tenantId, key, requestHash, createdAt: app.now(), result: { executionId: id } } : undefined,
          },
        );
        return fromTurn(applied(r));
      } catch (e) {
        quota?.release(e);
        // The execution was not started: its workspace goes too (best effort; it is only a room).
        if (workspaceId) {
          await host
            .send({ tenant: p.tenantId, kind: 'workspace', id: workspaceId }, { type: 'workspace.delete' }, { principal: p.principalId })
            .catch(() => undefined);
        }
        if (e instanceof IdempotencyConflict) {
          const first = await replayed();
          if (first) return first;
        }
        throw e;
      } finally {
        quota?.release();
      }
    },

    'execution.get': async (ctx, { executionId }) => view(ctx.principal, executionId),

    'execution.list': async (ctx, { workflowId, status, createdAfter, createdBefore, limit, cursor }) => {
      const q: ViewQuery = { limit, cursor };
      if (workflowId) q.type = workflowId;
      if (status) q.status = status;
      if (createdAfter) q.createdAfter = Date.parse(createdAfter);
      if (createdBefore) q.createdBefore = Date.parse(createdBefore);
      return queryPage<Execution>(store, ctx.principal.tenantId, 'execution', q);
    },

    'execution.pause': (ctx, { executionId, expectedVersion }) =>
      control(ctx, executionId, 'pause', { type: 'execution.pause' }, (p, x) => mayControl(p, x, 'pause'), expectedVersion),
    'execution.resume': (ctx, { executionId, expectedVersion }) =>
      control(ctx, executionId, 'resume', { type: 'execution.resume' }, (p, x) => mayControl(p, x, 'resume'), expectedVersion),
    'execution.cancel': (ctx, { executionId, reason, expectedVersion }) =>
      control(ctx, executionId, 'cancel', { type: 'execution.cancel', reason }, (p, x) => mayControl(p, x, 'cancel'), expectedVersion),
    'execution.retry': (ctx, { executionId, fromStep, expectedVersion }) =>
      control(
        ctx,
        executionId,
        'retry',
        { type: 'execution.retry', fromStep },
        (p, x) => {
          mayControl(p, x, 'retry');
          if (!x.steps.some((s) => s.id === fromStep)) {
            throw new ProtocolError('INVALID_PARAMS', `Execution ${executionId} has no step ${fromStep}.`, { field: 'fromStep' });
          }
        },
        expectedVersion,
      ),
    'execution.completeStep': (ctx, { executionId, stepId, output }) =>
      control(ctx, executionId, 'complete steps of', { type: 'execution.completeStep', stepId, output: output ?? null }, mayDecideStep(stepId, 'complete')),
    'execution.failStep': (ctx, { executionId, stepId, error }) =>
      control(ctx, executionId, 'fail steps of', { type: 'execution.failStep', stepId, error }, mayDecideStep(stepId, 'fail')),

    'execution.approve': async (ctx, { executionId, stepId, approve, comment }) => {
      const p = ctx.principal;
      requireRole(p, 'vote on steps', 'admin', 'agent');
      const { x, s } = await step(p, executionId, stepId);
      const r = await host.read<typeof executionMachine>(address(p, executionId));
      const approval = (r.snapshot as ExecutionSnapshot).context.definition.steps.find((d) => d.id === stepId)?.approval;
      if (!approval) throw new ProtocolError('INVALID_PARAMS', `Step ${stepId} of execution ${x.id} is not an approval step.`, { field: 'stepId' });
      if (!approval.approvers.includes(p.principalId)) {
        throw new ProtocolError('FORBIDDEN', `Only ${approval.approvers.join(', ')} may vote on step ${stepId}; you are ${p.principalId}.`);
      }
      if (s.votes.some((v) => v.by === p.principalId)) {
        throw new ProtocolError('ALREADY_EXISTS', `You (${p.principalId}) already voted on step ${stepId}.`, { stepId });
      }
      const turn = await host.send<typeof executionMachine>(address(p, executionId), { type: 'execution.vote', stepId, approve, comment }, {
        principal: p.principalId,
        correlationId: ctx.correlationId,
      });
      return fromTurn(applied(turn));
    },

    'execution.nextSteps': async (ctx, { executionId }) => {
      const p = ctx.principal;
      const x = await view(p, executionId);
      const { snapshot } = await host.read<typeof executionMachine>(address(p, executionId));
      const definition = (snapshot as ExecutionSnapshot).context.definition;
      const deps = dependencies(definition);
      const status = new Map(x.steps.map((s) => [s.id, s.status]));
      // Done for its dependents: completed, skipped, or failed with `onFailure: continue`.
      const done = (id: string) => {
        const st = status.get(id)!;
        return SATISFIED.has(st) || ((st === 'failed' || st === 'timed_out') && definition.steps.find((d) => d.id === id)?.onFailure === 'continue');
      };
      const items = x.steps
        .filter((s) => s.status === 'pending' || s.status === 'queued' || s.status === 'retrying' || s.status === 'awaiting_approval')
        .map((s) => ({ stepId: s.id, status: s.status, waitingFor: (deps.get(s.id) ?? []).filter((d) => !done(d)) }));
      return { items };
    },

    'execution.stepStatus': async (ctx, { executionId, stepId }) => (await step(ctx.principal, executionId, stepId)).s,

    'execution.trace': async (ctx, { executionId }) => ({ items: (await view(ctx.principal, executionId)).trace }),
  };
}

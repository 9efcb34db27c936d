import { z } from 'zod';
import type { TaskCreateFields } from '../../machines/taskMachine.js';
import { ProtocolError } from '../../protocol/errors.js';
import type { MethodSchemas } from '../../protocol/methods.js';
import { AssignmentStrategies, TaskPriorities, type Principal } from '../../protocol/model.js';
import type { App } from '../server/App.js';

/** What a client asks for when it creates a task (validated by the method's schema). */
export type TaskRequest = Omit<z.output<(typeof MethodSchemas)['task.create']>, 'idempotencyKey'>;

/** Values a `task.defaults` rule may supply, checked like the client's own fields. */
const RuleDefaults = z.object({
  priority: z.enum(TaskPriorities),
  maxRetries: z.number().int().min(0).max(100),
  retryBackoffMs: z.number().int().min(0).max(86_400_000),
  timeoutSeconds: z.number().int().min(1).max(31_536_000),
  leaseSeconds: z.number().int().min(1).max(86_400),
  offerTimeoutSeconds: z.number().int().min(1).max(86_400),
  parameters: z.record(z.string(), z.unknown()),
  requiredCapabilities: z.array(z.string().min(1).max(64)).max(64),
  autoAssign: z.boolean(),
  assignmentStrategy: z.enum(AssignmentStrategies),
});
type RuleDefaults = Partial<z.infer<typeof RuleDefaults>>;

/** How long an auto-assigned offer waits for acceptance when nothing else says. */
export const DEFAULT_AUTO_OFFER_SECONDS = 60;

/** The CEL `principal` variable. */
export function principalVar(p: Principal): Record<string, unknown> {
  return { id: p.principalId, tenantId: p.tenantId, roles: p.roles };
}

/**
 * Completes a task request with defaults and checks it against the tenant's rules. Each field
 * comes from, in order: the request, the `task.defaults` rules, the policy of the task's type,
 * the tenant's default policy, the server. Parameters merge the same way, key by key. A
 * `task.validation` rule that denies refuses the task with POLICY_DENIED naming the rule.
 */
export async function prepareTask(
  app: App,
  p: Principal,
  req: TaskRequest,
): Promise<Omit<TaskCreateFields, 'id' | 'tenantId' | 'taskType'> & { type: string }> {
  const tenant = p.tenantId;
  const policy = await app.rules.policy(tenant, req.type);
  const asked = { ...req, createdBy: p.principalId };
  const fromRules = await app.rules.defaults(tenant, { task: asked, principal: principalVar(p) });
  const ruled: RuleDefaults = {};
  for (const [k, v] of Object.entries(fromRules.values)) {
    const field = RuleDefaults.shape[k as keyof RuleDefaults];
    const ok = field?.safeParse(v);
    if (ok?.success) (ruled as Record<string, unknown>)[k] = ok.data;
    else app.log.warn({ tenant, field: k }, 'a task.defaults rule produced a value that is not a valid task field; ignored');
  }
  for (const e of fromRules.errors) app.log.warn({ tenant, rule: e.rule, err: e.message }, 'a task.defaults rule failed; ignored');

  const d = policy.defaults;
  const autoAssign = req.autoAssign ?? ruled.autoAssign ?? policy.assignment.auto ?? false;
  const fields = {
    type: req.type,
    title: req.title,
    description: req.description,
    priority: req.priority ?? ruled.priority ?? d.priority,
    parameters: { ...d.parameters, ...ruled.parameters, ...req.parameters },
    requiredCapabilities: req.requiredCapabilities ?? ruled.requiredCapabilities ?? d.requiredCapabilities,
    maxRetries: req.maxRetries ?? ruled.maxRetries ?? d.maxRetries,
    retryBackoffMs: req.retryBackoffMs ?? ruled.retryBackoffMs ?? d.retryBackoffMs,
    timeoutSeconds: req.timeoutSeconds ?? ruled.timeoutSeconds ?? d.timeoutSeconds,
    deadline: req.deadline,
    assignTo: req.assignTo,
    parentTaskId: req.parentTaskId,
    autoAssign: autoAssign && !req.assignTo,
    // The policy's strategy is looked up at each decision, so a policy change reaches waiting tasks.
    assignmentStrategy: req.assignmentStrategy ?? ruled.assignmentStrategy,
    offerTimeoutSeconds: req.offerTimeoutSeconds ?? ruled.offerTimeoutSeconds ?? d.offerTimeoutSeconds ?? (autoAssign ? DEFAULT_AUTO_OFFER_SECONDS : undefined),
    leaseSeconds: req.leaseSeconds ?? ruled.leaseSeconds ?? d.leaseSeconds ?? app.leaseSeconds,
    onLeaseExpired: req.onLeaseExpired,
  };
  const defined = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as typeof fields;

  const verdict = await app.rules.check(tenant, 'task.validation', { task: { ...defined, createdBy: p.principalId }, principal: principalVar(p) });
  if (!verdict.allowed) {
    throw new ProtocolError('POLICY_DENIED', `The task was refused by rule ${verdict.rule.name}: ${verdict.reason}`, {
      rule: verdict.rule.name,
      category: 'task.validation',
      ruleReason: verdict.reason,
    });
  }
  return defined;
}

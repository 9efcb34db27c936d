import type { TurnResult } from '../../actors/ActorHost.js';
import type { ViewQuery } from '../../actors/Store.js';
import type { policyMachine } from '../../machines/policyMachine.js';
import type { RuleChanges, ruleMachine } from '../../machines/ruleMachine.js';
import { ProtocolError, isProtocolError } from '../../protocol/errors.js';
import type { Principal } from '../../protocol/model.js';
import type { Policy, Rule } from '../../protocol/rules.js';
import { policyResource } from '../kinds/policyKind.js';
import { ruleResource } from '../kinds/ruleKind.js';
import { principalVars, type RuleEngine, type RuleVars } from '../policy/RuleEngine.js';
import { applied, queryPage, requireRole, type App, type Handlers } from '../server/App.js';

function fromTurn(r: TurnResult<typeof ruleMachine>): Rule {
  return ruleResource(r.snapshot.context.rule, r.version);
}

/**
 * The rule and policy methods. Changing rules and policies, and dry runs, need `admin`; any
 * principal of the tenant may read them (agents may want to know why they were refused).
 */
export function ruleHandlers(app: App, rules: RuleEngine): Handlers {
  const { host, store } = app;
  const ruleAt = (p: Principal, id: string) => ({ tenant: p.tenantId, kind: 'rule', id });

  return {
    'rule.register': async (ctx, params) => {
      const p = ctx.principal;
      requireRole(p, 'register rules', 'admin');
      // Refused before anything is stored: a rule that does not compile would deny everything.
      rules.compile(params.expression, params.category);
      try {
        const r = await host.send<typeof ruleMachine>(
          ruleAt(p, params.name),
          { ...params, type: 'rule.register', tenantId: p.tenantId },
          {
            principal: p.principalId,
            correlationId: ctx.correlationId,
            check: (s) => {
              if (s.value === 'active') {
                throw new ProtocolError('ALREADY_EXISTS', `Rule ${params.name} already exists; change it with rule.update.`, { kind: 'rule', id: params.name });
              }
            },
          },
        );
        return fromTurn(applied(r));
      } catch (e) {
        // A deleted rule accepts no event, which the host reports as "does not exist".
        if (isProtocolError(e, 'NOT_FOUND')) {
          throw new ProtocolError('ALREADY_EXISTS', `Rule ${params.name} was deleted, and a deleted rule's name is not reused; choose another name.`, {
            kind: 'rule',
            id: params.name,
            deleted: true,
          });
        }
        throw e;
      }
    },

    'rule.update': async (ctx, { ruleId, expectedVersion, ...changes }) => {
      const p = ctx.principal;
      requireRole(p, 'change rules', 'admin');
      const defined = Object.fromEntries(Object.entries(changes).filter(([, v]) => v !== undefined)) as RuleChanges;
      if (Object.keys(defined).length === 0) {
        throw new ProtocolError('INVALID_PARAMS', 'rule.update needs at least one field to change.', {});
      }
      const r = await host.send<typeof ruleMachine>(
        ruleAt(p, ruleId),
        { type: 'rule.update', changes: defined },
        {
          principal: p.principalId,
          correlationId: ctx.correlationId,
          expectedVersion,
          // Compiled inside the mailbox: the rule's category decides which result type fits.
          check: (s) => {
            if (defined.expression !== undefined) rules.compile(defined.expression, s.context.rule.category);
          },
        },
      );
      return fromTurn(applied(r));
    },

    'rule.get': async (ctx, { ruleId }) => {
      const v = await store.getView(ctx.principal.tenantId, 'rule', ruleId);
      if (!v) throw new ProtocolError('NOT_FOUND', `Rule ${ruleId} does not exist.`, { kind: 'rule', id: ruleId });
      return v.doc as unknown as Rule;
    },

    'rule.list': async (ctx, { category, enabled, limit, cursor }) => {
      const q: ViewQuery = { limit, cursor };
      if (category) q.type = category;
      if (enabled !== undefined) q.status = [enabled ? 'enabled' : 'disabled'];
      return queryPage<Rule>(store, ctx.principal.tenantId, 'rule', q);
    },

    'rule.delete': async (ctx, { ruleId, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'delete rules', 'admin');
      const r = await host.send<typeof ruleMachine>(ruleAt(p, ruleId), { type: 'rule.delete' }, {
        principal: p.principalId,
        correlationId: ctx.correlationId,
        expectedVersion,
      });
      return { id: ruleId, deleted: true as const, version: applied(r).version };
    },

    'rule.evaluate': async (ctx, { ruleId, category, expression, input }) => {
      const p = ctx.principal;
      requireRole(p, 'evaluate rules', 'admin');
      // The server passes the caller as `principal`; a dry run does the same unless told otherwise.
      const vars: RuleVars = { ...input };
      if (vars.principal === undefined) vars.principal = principalVars(p);
      const target = ruleId !== undefined ? { ruleId } : category !== undefined ? { category } : { expression: expression! };
      return rules.evaluate(p.tenantId, target, vars);
    },

    'policy.get': async (ctx, { taskType }) => {
      const tenant = ctx.principal.tenantId;
      const [effective, own] = await Promise.all([rules.policy(tenant, taskType), store.getView(tenant, 'policy', taskType)]);
      return { taskType, effective, policy: own ? (own.doc as unknown as Policy) : null };
    },

    'policy.set': async (ctx, { taskType, defaults, assignment, expectedVersion }) => {
      const p = ctx.principal;
      requireRole(p, 'set policies', 'admin');
      if (defaults === undefined && assignment === undefined) {
        throw new ProtocolError('INVALID_PARAMS', 'policy.set needs defaults, assignment or both.', {});
      }
      const r = await host.send<typeof policyMachine>(
        { tenant: p.tenantId, kind: 'policy', id: taskType },
        { type: 'policy.set', taskType, defaults, assignment },
        { principal: p.principalId, correlationId: ctx.correlationId, expectedVersion },
      );
      const { snapshot, version } = applied(r);
      return policyResource(snapshot.context.policy, version);
    },

    'policy.list': async (ctx) => ({ items: await rules.policies(ctx.principal.tenantId) }),
  };
}

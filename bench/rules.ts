import { performance } from 'node:perf_hooks';
import { ActorHost } from '../actors/ActorHost.js';
import { LocalOwnership } from '../actors/Ownership.js';
import type { RuleCategory } from '../protocol/rules.js';
import { policyKind } from '../src/kinds/policyKind.js';
import { ruleKind } from '../src/kinds/ruleKind.js';
import { RuleEngine } from '../src/policy/RuleEngine.js';
import { MemoryStore } from '../src/storage/MemoryStore.js';

/** The realistic rule the numbers are about: an assignment rule over the task and the agent. */
const RULE = "task.priority == 'critical' || ('gpu' in agent.capabilities && agent.costPerTask < 5.0)";
const EVALS = 100_000;

const task = {
  id: '0190a1b2-0000-7000-8000-000000000001',
  type: 'render',
  title: 'Render the trailer',
  priority: 'normal',
  maxRetries: 3,
  parameters: { budget: 10.5, frames: 240 },
  requiredCapabilities: ['gpu'],
};
const agents = [
  { id: 'a', capabilities: ['go', 'gpu'], costPerTask: 2.5, status: 'online', maxConcurrentTasks: 4 },
  { id: 'b', capabilities: ['go'], costPerTask: 1, status: 'online', maxConcurrentTasks: 2 },
];

async function register(host: ActorHost, name: string, category: RuleCategory, expression: string): Promise<void> {
  await host.send({ tenant: 'bench', kind: 'rule', id: name }, { type: 'rule.register', name, tenantId: 'bench', category, expression }, { principal: 'bench' });
}

/** Runs `fn` `n` times after a warm-up of n/10 and returns microseconds per call. */
function perCallMicros(n: number, fn: (i: number) => unknown): number {
  let sink = 0;
  for (let i = 0; i < n / 10; i++) if (fn(i)) sink++;
  const started = performance.now();
  for (let i = 0; i < n; i++) if (fn(i)) sink++;
  const micros = ((performance.now() - started) * 1000) / n;
  // Keeps the loop from being optimised away.
  if (sink < 0) throw new Error('unreachable');
  return micros;
}

/**
 * Micro-benchmark of the rule engine: compile once, then evaluate a realistic rule 100 000 times,
 * directly, through the per-agent eligibility predicate, and through `check` (cached rules).
 * Also what compiling (parse + type check) costs.
 *
 * @example
 * ```ts
 * for (const row of await benchRules()) console.log(row.name, row.perEvalMicros.toFixed(3));
 * ```
 */
export async function benchRules(): Promise<{ name: string; perEvalMicros: number }[]> {
  const store = new MemoryStore();
  const host = new ActorHost({ store, ownership: new LocalOwnership(store), kinds: [ruleKind, policyKind] });
  const rules = new RuleEngine({ store });
  rules.attach(host);
  try {
    const compiled = rules.compile(RULE, 'task.assignment');
    const direct = perCallMicros(EVALS, (i) => compiled.run({ task, agent: agents[i & 1] }));

    await register(host, 'gpu-or-critical', 'task.assignment', RULE);
    const eligible = (await rules.eligibility('bench', { task }))!;
    const predicate = perCallMicros(EVALS, (i) => eligible(agents[i & 1]!).allowed);

    await register(host, 'no-low', 'task.validation', "task.priority != 'low' && task.maxRetries <= 5");
    await rules.check('bench', 'task.validation', { task });
    let n = 0;
    const started = performance.now();
    for (let i = 0; i < EVALS; i++) if ((await rules.check('bench', 'task.validation', { task })).allowed) n++;
    const check = ((performance.now() - started) * 1000) / EVALS;
    if (n !== EVALS) throw new Error('the validation rule should allow the benchmark task');

    const compile = perCallMicros(10_000, () => rules.compile(RULE, 'task.assignment'));

    return [
      { name: 'rule eval: compiled assignment rule, direct', perEvalMicros: direct },
      { name: 'rule eval: eligibility predicate per agent', perEvalMicros: predicate },
      { name: 'rule eval: check (1 cached validation rule, async)', perEvalMicros: check },
      { name: 'rule compile: parse + type check', perEvalMicros: compile },
    ];
  } finally {
    await host.close();
    await store.close();
  }
}

/**
 * An example workflow: fetch → transform → publish, each step with a compensation (its undo).
 * It defines the workflow, executes it, follows the execution on its `execution:<id>` topic, and
 * prints the trace when the execution ends. Run examples/workflow-agent.ts first: it works the
 * tasks the steps become.
 *
 *   TROUPE_KEY=<key> npx tsx examples/workflow.ts
 *   FAIL_STEP=publish TROUPE_KEY=<key> npx tsx examples/workflow.ts
 *
 * With FAIL_STEP=publish the publish step fails (twice: it has a retry), the saga starts and the
 * completed steps are undone in reverse order: transform's compensation, then fetch's. FAIL_STEP
 * may name any of the three steps; it reaches the agent through the execution's input and the
 * steps' `simulateFailure` input expressions.
 *
 * TROUPE_URL defaults to ws://127.0.0.1:7420/v1. The key needs the admin or agent role.
 */
import { createHash } from 'node:crypto';
import { connect, type Execution, type ParamsOf } from '../protocol/index.js';

const url = process.env.TROUPE_URL ?? 'ws://127.0.0.1:7420/v1';
const token = process.env.TROUPE_KEY;
if (!token) {
  console.error('Set TROUPE_KEY to an API key (npm start prints one; see README).');
  process.exit(2);
}
const STEPS = ['fetch', 'transform', 'publish'];
const failStep = process.env.FAIL_STEP ?? '';
if (failStep !== '' && !STEPS.includes(failStep)) {
  console.error(`FAIL_STEP must be one of ${STEPS.join(', ')} (or unset), not "${failStep}".`);
  process.exit(2);
}

/**
 * The definition. Strings of the form `${...}` are CEL expressions over `input` (the execution's
 * input), `steps.<id>.output` (what earlier steps returned) and, in a compensation, `step` (the
 * step being undone). In a `sequential` workflow each step waits for the one before it.
 */
const definition: ParamsOf<'workflow.create'> = {
  name: 'weather-report',
  description: 'Fetch readings, turn them into a dataset, publish it; if a step fails for good, undo the completed ones in reverse order.',
  type: 'sequential',
  tags: ['example'],
  config: { timeoutSeconds: 300 },
  steps: [
    {
      id: 'fetch',
      action: 'fetch',
      requiredCapabilities: ['fetch'],
      input: { source: '${input.source}', simulateFailure: '${input.failStep == "fetch"}' },
      onFailure: 'compensate',
      compensate: { action: 'fetch.undo', requiredCapabilities: ['fetch'], input: { source: '${step.output.source}' } },
    },
    {
      id: 'transform',
      action: 'transform',
      requiredCapabilities: ['transform'],
      input: { records: '${steps.fetch.output.records}', simulateFailure: '${input.failStep == "transform"}' },
      onFailure: 'compensate',
      compensate: { action: 'transform.undo', requiredCapabilities: ['transform'], input: { dataset: '${step.output.dataset}' } },
    },
    {
      id: 'publish',
      action: 'publish',
      requiredCapabilities: ['publish'],
      input: { dataset: '${steps.transform.output.dataset}', channel: '${input.channel}', simulateFailure: '${input.failStep == "publish"}' },
      retryPolicy: { maxAttempts: 2, backoff: 'linear', initialWaitMs: 500 },
      onFailure: 'compensate',
      compensate: { action: 'publish.undo', requiredCapabilities: ['publish'], input: { url: '${step.output.url}' } },
    },
  ],
};

const client = await connect(url, { token }).catch((e: unknown) => {
  console.error(`Could not connect to ${url}: ${(e as Error).message}. Is the server running (npm start)? Set TROUPE_URL if it listens elsewhere.`);
  process.exit(1);
});
const started = Date.now();
const since = () => `+${((Date.now() - started) / 1000).toFixed(2)}s`.padStart(7);

// The same definition is created once (the idempotency key is its hash); later runs reuse it.
const hash = createHash('sha256').update(JSON.stringify(definition)).digest('hex').slice(0, 16);
const workflow = await client.call('workflow.create', { ...definition, idempotencyKey: `examples/workflow.ts ${hash}` });
console.log(`workflow ${workflow.name} ${workflow.id} version ${workflow.version}: ${workflow.steps.map((s) => s.id).join(' → ')}`);

const input = { source: 'stations/eu', channel: 'daily', failStep };
const started0 = await client.call('workflow.execute', { workflowId: workflow.id, input });
const executionId = started0.id;
console.log(`execution ${executionId} started with input ${JSON.stringify(input)}${failStep ? ` (step ${failStep} will fail)` : ''}`);

const FINISHED = new Set(['completed', 'failed', 'compensation_failed', 'cancelled', 'timed_out']);

/** One line per change: the execution's status and each step's (with its compensation's, if any). */
function summary(x: Execution): string {
  const steps = x.steps.map((s) => `${s.id}=${s.status}${s.compensation ? `(undo ${s.compensation.status})` : ''}`);
  return `${x.status.padEnd(12)} ${steps.join('  ')}`;
}

let last = '';
let lastChange = Date.now();
let finish!: (x: Execution) => void;
const ended = new Promise<Execution>((resolve) => (finish = resolve));

/** Reads the execution and prints it if it changed; resolves `ended` once it is finished. */
async function look(): Promise<void> {
  const x = await client.call('execution.get', { executionId });
  const line = summary(x);
  if (line !== last) {
    last = line;
    lastChange = Date.now();
    console.log(`${since()}  ${line}`);
  }
  if (FINISHED.has(x.status)) finish(x);
}

// Every event of the execution arrives on its topic; each one is a cue to look again (one look
// at a time, so the lines come out in order; events during a look cause one more).
let looking: Promise<void> | null = null;
let again = false;
function cue(): void {
  if (looking) {
    again = true;
    return;
  }
  looking = look()
    .catch((e: unknown) => console.error(`execution.get failed: ${(e as Error).message}`))
    .finally(() => {
      looking = null;
      if (again) {
        again = false;
        cue();
      }
    });
}
await client.subscribe(`execution:${executionId}`, cue);
cue();

// If nothing moves for a while, say why (usually: no agent with the capabilities is online).
const hinted = new Set<string>();
const watchdog = setInterval(() => {
  if (Date.now() - lastChange < 5000) return;
  lastChange = Date.now();
  void (async () => {
    const x = await client.call('execution.get', { executionId });
    for (const s of x.steps.filter((r) => r.status === 'running' && r.taskId)) {
      const t = await client.call('task.get', { taskId: s.taskId! });
      const hint = `step ${s.id} waits for an agent: ${t.waitingForAgent?.reason ?? 'pending'}`;
      if (t.status !== 'pending' || hinted.has(hint)) continue;
      hinted.add(hint);
      console.log(`${since()}  ${hint} Is examples/workflow-agent.ts running, with a key of its own (see README, Workflows)?`);
    }
  })().catch(() => undefined);
}, 1000);
const giveUp = setTimeout(() => {
  console.error(`execution ${executionId} did not finish within 120 s; see execution.get / execution.trace`);
  process.exit(1);
}, 120_000);

const x = await ended;
clearInterval(watchdog);
clearTimeout(giveUp);

const { items: trace } = await client.call('execution.trace', { executionId });
const t0 = Date.parse(trace[0]?.at ?? x.createdAt);
console.log(`\nexecution ${x.id} ended ${x.status}${x.error ? `: ${x.error}` : ''}`);
if (x.output) console.log(`output: ${JSON.stringify(x.output)}`);
console.log('\ntrace:');
for (const e of trace) {
  const ms = `${Date.parse(e.at) - t0} ms`.padStart(8);
  console.log(`  ${ms}  ${e.event.padEnd(28)} ${(e.stepId ?? '').padEnd(10)} ${e.detail}`);
}

const m = await client.call('workflow.metrics', { workflowId: workflow.id });
const rate = m.successRate === null ? '-' : `${Math.round(m.successRate * 100)}%`;
const byStatus = Object.entries(m.byStatus).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ');
console.log(`\nworkflow.metrics, last 7 days: ${m.runs} run(s) (${byStatus}), success rate ${rate}, duration p50 ${m.durationMs.p50 ?? '-'} ms`);

await client.close();
// Success is the outcome that was asked for: completed, or (with FAIL_STEP) failed with everything undone.
process.exit(x.status === (failStep ? 'failed' : 'completed') ? 0 : 1);

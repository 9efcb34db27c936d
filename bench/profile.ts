import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One line of a profile summary: a function or a module with its time in ms and share in %. */
export interface ProfileItem {
  name: string;
  ms: number;
  pct: number;
}

/** Where a `--cpu-prof` profile's time went. */
export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  /** Self time per function (time with the function on top of the stack). */
  selfByFunction: ProfileItem[];
  /** Self time per module (npm package, project file, node internals, native, GC). */
  selfByModule: ProfileItem[];
  /** Inclusive time per module: samples with the module anywhere on the stack (counted once). */
  inclusiveByModule: ProfileItem[];
  /** Inclusive time per function (counted once per sample). */
  inclusiveByFunction: ProfileItem[];
}

interface CpuNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: CpuNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function moduleOf(frame: CpuNode['callFrame']): string {
  const { url, functionName } = frame;
  if (!url) {
    if (functionName.startsWith('(')) return functionName;
    return `(native) ${functionName || 'anonymous'}`;
  }
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (nm) return nm[1]!;
  if (url.startsWith('node:')) return 'node internals';
  const file = url.startsWith('file://') ? fileURLToPath(url) : url;
  return path.relative(root, file);
}

function functionOf(frame: CpuNode['callFrame']): string {
  const mod = moduleOf(frame);
  const fn = frame.functionName || '(anonymous)';
  if (!frame.url) return mod.startsWith('(native)') || mod.startsWith('(') ? mod : fn;
  return `${fn} ${mod}:${frame.lineNumber + 1}`;
}

function top(map: Map<string, number>, total: number, n: number): ProfileItem[] {
  return [...map]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([name, us]) => ({ name, ms: us / 1000, pct: (us / total) * 100 }));
}

/** Reads a `.cpuprofile` and attributes its samples to functions and modules. */
export function summarizeProfile(file: string, n = 30): ProfileSummary {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, CpuNode>();
  const parent = new Map<number, number>();
  for (const node of prof.nodes) {
    byId.set(node.id, node);
    for (const c of node.children ?? []) parent.set(c, node.id);
  }
  const selfFn = new Map<string, number>();
  const selfMod = new Map<string, number>();
  const inclMod = new Map<string, number>();
  const inclFn = new Map<string, number>();
  let total = 0;
  let idle = 0;
  const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);
  for (let i = 0; i < prof.samples.length; i++) {
    // A sample's time is the delta to the next sample.
    const dt = prof.timeDeltas[i + 1] ?? 0;
    const node = byId.get(prof.samples[i]!)!;
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    total += dt;
    add(selfFn, functionOf(node.callFrame), dt);
    add(selfMod, moduleOf(node.callFrame), dt);
    const mods = new Set<string>();
    const fns = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const f = byId.get(id)!.callFrame;
      if (f.functionName === '(root)') break;
      mods.add(moduleOf(f));
      fns.add(functionOf(f));
    }
    for (const m of mods) add(inclMod, m, dt);
    for (const f of fns) add(inclFn, f, dt);
  }
  return {
    totalMs: total / 1000,
    idleMs: idle / 1000,
    selfByFunction: top(selfFn, total, n),
    selfByModule: top(selfMod, total, n),
    inclusiveByModule: top(inclMod, total, n),
    inclusiveByFunction: top(inclFn, total, n + 20),
  };
}

/** Prints a summary as four short tables. */
export function printProfile(s: ProfileSummary): void {
  const out: string[] = [];
  out.push(`\nServer CPU profile: ${s.totalMs.toFixed(0)} ms busy, ${s.idleMs.toFixed(0)} ms idle (whole thread lifetime)`);
  const table = (title: string, items: ProfileItem[]) => {
    out.push(`\n${title}`);
    for (const it of items) out.push(`  ${it.pct.toFixed(1).padStart(5)}%  ${it.ms.toFixed(0).padStart(6)} ms  ${it.name}`);
  };
  table('Self time by module', s.selfByModule.slice(0, 20));
  table('Inclusive time by module (a module anywhere on the stack)', s.inclusiveByModule.slice(0, 25));
  table('Self time by function', s.selfByFunction.slice(0, 30));
  table('Inclusive time by function', s.inclusiveByFunction.slice(0, 45));
  process.stdout.write(out.join('\n') + '\n');
}

// `tsx bench/profile.ts <file.cpuprofile>` summarises a profile taken elsewhere.
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const file = process.argv[2];
  if (!file) {
    process.stderr.write('usage: tsx bench/profile.ts <file.cpuprofile>\n');
    process.exit(1);
  }
  printProfile(summarizeProfile(file));
}

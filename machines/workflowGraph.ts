import type { Step, WorkflowDefinition } from '../protocol/workflows.js';

/**
 * The step graph of a workflow definition. In a `sequential` workflow a step without `dependsOn`
 * depends on the step listed before it; in every other kind it depends on nothing.
 */
export function dependencies(def: Pick<WorkflowDefinition, 'type' | 'steps'>): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  def.steps.forEach((s: Step, i: number) => {
    if (s.dependsOn) deps.set(s.id, [...s.dependsOn]);
    else deps.set(s.id, def.type === 'sequential' && i > 0 ? [def.steps[i - 1]!.id] : []);
  });
  return deps;
}

/** Every step that (transitively) depends on `id`. */
export function dependents(deps: Map<string, string[]>, id: string): Set<string> {
  const out = new Set<string>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const [s, ds] of deps) {
      if (out.has(s)) continue;
      if (ds.includes(id) || ds.some((d) => out.has(d))) {
        out.add(s);
        grew = true;
      }
    }
  }
  return out;
}

/** Every step `id` (transitively) depends on. */
export function ancestors(deps: Map<string, string[]>, id: string): Set<string> {
  const out = new Set<string>();
  const stack = [...(deps.get(id) ?? [])];
  while (stack.length) {
    const d = stack.pop()!;
    if (out.has(d)) continue;
    out.add(d);
    stack.push(...(deps.get(d) ?? []));
  }
  return out;
}

/** A dependency cycle as a path (`a → b → a`), or null. */
export function findCycle(deps: Map<string, string[]>): string[] | null {
  const state = new Map<string, 'visiting' | 'done'>();
  const path: string[] = [];
  const visit = (id: string): string[] | null => {
    if (state.get(id) === 'done') return null;
    if (state.get(id) === 'visiting') return [...path.slice(path.indexOf(id)), id];
    state.set(id, 'visiting');
    path.push(id);
    for (const d of deps.get(id) ?? []) {
      if (!deps.has(d)) continue;
      const c = visit(d);
      if (c) return c;
    }
    path.pop();
    state.set(id, 'done');
    return null;
  };
  for (const id of deps.keys()) {
    const c = visit(id);
    if (c) return c;
  }
  return null;
}

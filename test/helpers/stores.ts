import type { CommitItem, CommitOutcome, Store } from '../../actors/Store.js';

/**
 * A store that behaves like `inner` except for the methods in `overrides`, which receive the
 * inner store's own method (bound) as their first argument. For fault injection and spying.
 *
 * @example
 * ```ts
 * const store = interceptStore(new MemoryStore(), {
 *   commit: (inner, items) => inner(items),
 * });
 * ```
 */
export function interceptStore(
  inner: Store,
  overrides: { [K in keyof Store]?: (inner: Store[K], ...args: Parameters<Store[K]>) => ReturnType<Store[K]> },
): Store {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== 'function') return value;
      const bound = value.bind(target);
      const override = (overrides as Record<PropertyKey, ((...args: unknown[]) => unknown) | undefined>)[prop];
      return override ? (...args: unknown[]) => override(bound, ...args) : bound;
    },
  });
}

/** One commit call held back by {@link gatedStore} until released. */
export interface HeldCommit {
  items: CommitItem[];
  release(): void;
}

/**
 * Wraps a store so that every commit waits until the test releases it. `held` lists the calls
 * waiting now; `maxInFlight` counts the most commits of one stream that were waiting at once.
 */
export function gatedStore(inner: Store): {
  store: Store;
  held: HeldCommit[];
  maxInFlight: Map<string, number>;
  releaseAll(): void;
} {
  const held: HeldCommit[] = [];
  const inFlight = new Map<string, number>();
  const maxInFlight = new Map<string, number>();
  const store = interceptStore(inner, {
    async commit(commit, items): Promise<CommitOutcome[]> {
      const streams = items.map((i) => i.stream);
      for (const s of streams) {
        const n = (inFlight.get(s) ?? 0) + 1;
        inFlight.set(s, n);
        maxInFlight.set(s, Math.max(maxInFlight.get(s) ?? 0, n));
      }
      await new Promise<void>((resolve) => held.push({ items, release: resolve }));
      try {
        return await commit(items);
      } finally {
        for (const s of streams) inFlight.set(s, inFlight.get(s)! - 1);
      }
    },
  });
  return {
    store,
    held,
    maxInFlight,
    releaseAll() {
      for (const h of held.splice(0)) h.release();
    },
  };
}

/**
 * A commit item for stream `kind/actorId` of tenant `acme` at `expectedVersion`, with one
 * `task.updated` event per id (topic `all`), plus `extra`.
 */
export function commitItem(stream: string, expectedVersion: number, eventIds: string[], extra: Partial<CommitItem> = {}): CommitItem {
  const [kind = '', actorId = ''] = stream.split('/');
  return {
    stream,
    tenant: 'acme',
    kind,
    actorId,
    expectedVersion,
    epoch: 1,
    events: eventIds.map((id) => ({ id, type: 'task.updated', data: { type: 'task.updated', id }, meta: { at: 1, principal: 'ann' } })),
    topics: eventIds.map(() => ['all']),
    ...extra,
  };
}

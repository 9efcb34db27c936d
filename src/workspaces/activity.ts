import type { EventQuery, Store, StoredEvent } from '../../actors/Store.js';
import type { MemberActivityItem } from '../../protocol/workspaces.js';

/** Events read at most per activity scan; the answer says when it stopped there. */
export const ACTIVITY_SCAN_LIMIT = 100_000;

/** One accepted change: who made it, when, and which paths it touched. */
export interface Change {
  principal: string;
  at: number;
  source: 'workspace' | 'document';
  paths: string[];
}

/** Escapes a key for a JSON pointer (RFC 6901). */
function escapeKey(k: string): string {
  return k.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** A path as `/a/b`: kept when it is a pointer already, joined when it is a list of keys. */
function pointer(path: unknown): string | null {
  if (typeof path === 'string') return path === '' || path.startsWith('/') ? path : `/${path}`;
  if (Array.isArray(path) && path.every((k) => typeof k === 'string' || typeof k === 'number')) return path.map((k) => `/${escapeKey(String(k))}`).join('');
  return null;
}

/** The paths a workspace event changed. */
export function workspacePaths(e: Pick<StoredEvent, 'type' | 'data'>): string[] {
  const d = e.data;
  switch (e.type) {
    case 'workspace.update':
      return Object.keys((d.changes as Record<string, unknown> | undefined) ?? {}).map((k) => `/workspace/${escapeKey(k)}`);
    case 'workspace.archive':
      return ['/workspace/status'];
    case 'workspace.addMember':
    case 'workspace.removeMember':
    case 'workspace.setMemberRole':
    case 'workspace.setMemberPermissions':
      return [`/workspace/members/${escapeKey(String(d.principalId))}`];
    default:
      return ['/workspace'];
  }
}

/** The paths a document event changed (`data.paths`, under `/documents/<docId>`). */
export function documentPaths(e: Pick<StoredEvent, 'actorId' | 'data'>, workspaceId: string): string[] {
  const base = `/documents/${escapeKey(e.actorId.slice(workspaceId.length + 1))}`;
  const raw = e.data.paths;
  if (!Array.isArray(raw) || raw.length === 0) return [base];
  const out = new Set<string>();
  for (const p of raw.slice(0, 100)) {
    const ptr = pointer(p);
    if (ptr !== null) out.add(base + ptr);
  }
  return out.size > 0 ? [...out] : [base];
}

/**
 * The accepted changes of a workspace and its documents (actors of kind `document` with ids
 * `<workspaceId>:<docId>`) between `from` (inclusive) and `to` (exclusive), optionally by one
 * principal, read from the audit trail. Changes by the server itself (`system`) are left out.
 */
export async function scanChanges(
  store: Store,
  tenant: string,
  workspaceId: string,
  opts: { from: number; to: number; principal?: string; limit?: number },
): Promise<{ changes: Change[]; scanned: number; truncated: boolean }> {
  const limit = opts.limit ?? ACTIVITY_SCAN_LIMIT;
  const changes: Change[] = [];
  let scanned = 0;
  let truncated = false;
  const scan = async (q: EventQuery, take: (e: StoredEvent) => void) => {
    let cursor: string | undefined;
    do {
      if (scanned >= limit) {
        truncated = true;
        return;
      }
      const page = await store.queryEvents(tenant, { ...q, outcome: 'accepted', from: opts.from, to: opts.to, limit: 1000, cursor });
      for (const item of page.items) {
        if (item.outcome !== 'accepted') continue;
        scanned++;
        if (item.event.meta.principal !== 'system') take(item.event);
      }
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
  };
  const principal = opts.principal === undefined ? {} : { principal: opts.principal };
  await scan({ kind: 'workspace', actorId: workspaceId, ...principal }, (e) =>
    changes.push({ principal: e.meta.principal, at: e.meta.at, source: 'workspace', paths: workspacePaths(e) }),
  );
  const prefix = `${workspaceId}:`;
  await scan({ kind: 'document', ...principal }, (e) => {
    if (e.actorId.startsWith(prefix)) changes.push({ principal: e.meta.principal, at: e.meta.at, source: 'document', paths: documentPaths(e, workspaceId) });
  });
  return { changes, scanned, truncated };
}

/** Changes per member and per path (at most `maxPaths` paths per member, most changed first). */
export function activityByMember(changes: Change[], maxPaths = 100): MemberActivityItem[] {
  const by = new Map<string, { item: MemberActivityItem; paths: Map<string, number>; last: number }>();
  for (const c of changes) {
    let m = by.get(c.principal);
    if (!m) {
      m = { item: { principalId: c.principal, changes: 0, workspaceChanges: 0, documentChanges: 0, paths: [], lastActiveAt: null }, paths: new Map(), last: 0 };
      by.set(c.principal, m);
    }
    m.item.changes++;
    if (c.source === 'workspace') m.item.workspaceChanges++;
    else m.item.documentChanges++;
    for (const p of c.paths) m.paths.set(p, (m.paths.get(p) ?? 0) + 1);
    m.last = Math.max(m.last, c.at);
  }
  return [...by.values()]
    .map(({ item, paths, last }) => ({
      ...item,
      paths: [...paths]
        .map(([path, n]) => ({ path, changes: n }))
        .sort((a, b) => b.changes - a.changes || (a.path < b.path ? -1 : 1))
        .slice(0, maxPaths),
      lastActiveAt: new Date(last).toISOString(),
    }))
    .sort((a, b) => b.changes - a.changes || (a.principalId < b.principalId ? -1 : 1));
}

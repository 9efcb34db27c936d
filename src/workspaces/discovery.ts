import { ProtocolError } from '../../protocol/errors.js';
import type { Page } from '../../protocol/model.js';
import type { WorkspaceRecommendation } from '../../protocol/workspaces.js';
import { docResource, type WorkspaceDoc } from '../kinds/workspaceKind.js';
import { decodeCursor, encodeCursor } from '../storage/cursor.js';
import type { TenantWorkspaces, WorkspaceEntry } from './WorkspaceService.js';

type Live = WorkspaceEntry & { doc: WorkspaceDoc };

/** How `workspace.recommended` scores, as told to clients. */
export const RECOMMENDATION_SCORING =
  'score = 3 × shared members (members who share another workspace with the agent) + 2 × matched capabilities ' +
  "(the agent's capabilities among the workspace's tags and settings.capabilities, case-insensitive) + recent activity " +
  '(1 for activity now, falling linearly to 0 after 7 days without a change or message). Only active team and public ' +
  'workspaces the agent is not a member of, with a score above 0, are listed, highest first.';

const WEEK_MS = 7 * 86_400_000;

/**
 * One page of workspaces, newest first (by creation time, then id), after `cursor`. Cursors are
 * the same opaque keyset cursors the store issues; one it did not issue is INVALID_PARAMS.
 */
export function pageOf<T>(entries: Live[], limit: number | undefined, cursor: string | undefined, map: (e: Live) => T): Page<T> {
  const created = (e: Live) => Date.parse(e.doc.createdAt);
  const sorted = [...entries].sort((a, b) => created(b) - created(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  let start = 0;
  if (cursor !== undefined) {
    let after: [number, string];
    try {
      after = decodeCursor(cursor);
    } catch {
      throw new ProtocolError('INVALID_PARAMS', 'The cursor is not one this server issued; start again without it.', { field: 'cursor' });
    }
    const [at, id] = after;
    start = sorted.findIndex((e) => created(e) < at || (created(e) === at && e.id < id));
    if (start < 0) start = sorted.length;
  }
  const n = limit ?? 50;
  const page = sorted.slice(start, start + n);
  const last = page[page.length - 1];
  const more = start + n < sorted.length;
  return { items: page.map(map), nextCursor: more && last ? encodeCursor(created(last), last.id) : null };
}

/** Text, type, visibility, status and tag filters of `workspace.search`. */
export function matchesSearch(
  doc: WorkspaceDoc,
  q: { query?: string; type?: string; visibility?: string; status?: string; tag?: string },
): boolean {
  if (q.type !== undefined && doc.type !== q.type) return false;
  if (q.visibility !== undefined && doc.visibility !== q.visibility) return false;
  if ((q.status ?? 'active') !== doc.status) return false;
  if (q.tag !== undefined && !doc.tags.some((t) => t.toLowerCase() === q.tag!.toLowerCase())) return false;
  if (q.query) {
    const text = `${doc.name}\n${doc.description}\n${doc.tags.join('\n')}`.toLowerCase();
    if (!text.includes(q.query.toLowerCase())) return false;
  }
  return true;
}

/** The topics a workspace offers to match capabilities against: its tags and `settings.capabilities`. */
export function workspaceTopics(doc: WorkspaceDoc): Set<string> {
  const out = new Set(doc.tags.map((t) => t.toLowerCase()));
  const caps = doc.settings.capabilities;
  if (Array.isArray(caps)) for (const c of caps) if (typeof c === 'string') out.add(c.toLowerCase());
  return out;
}

/** Recommendations for an agent among a tenant's workspaces; see {@link RECOMMENDATION_SCORING}. */
export function recommend(t: TenantWorkspaces, agentId: string, capabilities: readonly string[], now: number, limit: number): WorkspaceRecommendation[] {
  const mine = t.byMember.get(agentId) ?? new Set<string>();
  const collaborators = new Set<string>();
  for (const id of mine) for (const m of t.byId.get(id)?.members.keys() ?? []) if (m !== agentId) collaborators.add(m);
  const caps = capabilities.map((c) => c.toLowerCase());
  const out: WorkspaceRecommendation[] = [];
  for (const e of t.live()) {
    const doc = e.doc;
    if (doc.status !== 'active' || doc.visibility === 'private' || e.members.has(agentId)) continue;
    const sharedMembers = [...e.members.keys()].filter((m) => collaborators.has(m)).sort();
    const topics = workspaceTopics(doc);
    const matchedCapabilities = [...new Set(caps.filter((c) => topics.has(c)))].sort();
    const recentActivity = Math.round(Math.max(0, 1 - (now - e.lastActivityAt) / WEEK_MS) * 1000) / 1000;
    const score = 3 * sharedMembers.length + 2 * matchedCapabilities.length + recentActivity;
    if (score <= 0) continue;
    out.push({ workspace: docResource(doc), score: Math.round(score * 1000) / 1000, reasons: { sharedMembers, matchedCapabilities, recentActivity } });
  }
  return out.sort((a, b) => b.score - a.score || (a.workspace.id < b.workspace.id ? -1 : 1)).slice(0, limit);
}

import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { iso } from '../../machines/effects.js';
import { workspaceMachine, type WorkspaceEvent } from '../../machines/workspaceMachine.js';
import { T0 } from '../helpers/clock.js';

type WorkspaceSnapshot = SnapshotFrom<typeof workspaceMachine>;
type Body = WorkspaceEvent extends infer E ? (E extends WorkspaceEvent ? Omit<E, 'at' | 'by'> : never) : never;

/** A workspace driven by pure transitions on a simulated clock (1 s per event unless given). */
class Sim {
  snapshot: WorkspaceSnapshot;
  at = T0 - 1_000;
  events: WorkspaceEvent[] = [];

  constructor() {
    [this.snapshot] = initialTransition(workspaceMachine);
  }

  get ws() {
    return this.snapshot.context.workspace;
  }

  get members() {
    return this.snapshot.context.members;
  }

  send(body: Body, by = 'lead', at = this.at + 1_000): void {
    const event = { ...body, at, by } as WorkspaceEvent;
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted in ${String(this.snapshot.value)}`);
    const [next, actions] = transition(workspaceMachine, this.snapshot, event);
    assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'workspaces emit no effects');
    this.snapshot = next;
    this.at = at;
    this.events.push(event);
  }

  refuse(body: Body, by = 'lead'): void {
    const event = { ...body, at: this.at + 1_000, by } as WorkspaceEvent;
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused in ${String(this.snapshot.value)}`);
    const [next] = transition(workspaceMachine, this.snapshot, event);
    assert.equal(workspaceMachine.getPersistedSnapshot(next), workspaceMachine.getPersistedSnapshot(this.snapshot));
  }
}

const creation: Body = {
  type: 'workspace.create',
  id: 'w1',
  tenantId: 'acme',
  name: 'Release 7',
  workspaceType: 'release',
  description: 'Ship it',
  visibility: 'team',
  maxMembers: 3,
  settings: { capabilities: ['go'] },
  tags: ['go', 'release'],
};

function created(extra: Partial<Extract<Body, { type: 'workspace.create' }>> = {}): Sim {
  const sim = new Sim();
  sim.send({ ...creation, ...extra } as Body, 'lead', T0);
  return sim;
}

const test = suite('workspaceMachine');

test('refuses everything but creation before the workspace exists, and changes nothing', () => {
  const sim = new Sim();
  assert.is(sim.snapshot.value, 'none');
  sim.refuse({ type: 'workspace.update', changes: { name: 'x' } });
  sim.refuse({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: [] });
  sim.refuse({ type: 'workspace.archive' });
  sim.refuse({ type: 'workspace.delete' });
  assert.equal(sim.members, []);
});

test('creates an active workspace whose creator is its only owner, stamped at the event time', () => {
  const sim = created();
  assert.is(sim.snapshot.value, 'active');
  const w = sim.ws;
  assert.equal(
    { id: w.id, tenantId: w.tenantId, name: w.name, type: w.type, visibility: w.visibility, status: w.status, maxMembers: w.maxMembers },
    { id: 'w1', tenantId: 'acme', name: 'Release 7', type: 'release', visibility: 'team', status: 'active', maxMembers: 3 },
  );
  assert.is(w.createdBy, 'lead');
  assert.is(w.createdAt, iso(T0));
  assert.is(w.archivedAt, null);
  assert.equal(sim.members, [{ principalId: 'lead', role: 'owner', permissions: [], addedBy: 'lead', joinedAt: iso(T0), updatedAt: iso(T0) }]);
  sim.refuse(creation);
});

test('adds members up to maxMembers, never the same principal twice', () => {
  const sim = created();
  sim.send({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: ['member:manage'] });
  sim.refuse({ type: 'workspace.addMember', principalId: 'bob', role: 'viewer', permissions: [] });
  sim.send({ type: 'workspace.addMember', principalId: 'cat', role: 'viewer', permissions: [] }, 'bob');
  assert.is(sim.members.length, 3);
  sim.refuse({ type: 'workspace.addMember', principalId: 'dan', role: 'viewer', permissions: [] });
  const cat = sim.members.find((m) => m.principalId === 'cat')!;
  assert.is(cat.addedBy, 'bob');
  assert.is(sim.ws.updatedAt, iso(sim.at));
});

test('a principal id that is also an Object property (constructor) is an ordinary member', () => {
  const sim = created();
  sim.refuse({ type: 'workspace.removeMember', principalId: 'constructor' });
  sim.send({ type: 'workspace.addMember', principalId: 'constructor', role: 'viewer', permissions: [] });
  sim.send({ type: 'workspace.setMemberRole', principalId: 'constructor', role: 'editor' });
  assert.is(sim.members.find((m) => m.principalId === 'constructor')?.role, 'editor');
});

test('changes roles and permissions of members only, and never leaves the workspace without an owner', () => {
  const sim = created();
  sim.refuse({ type: 'workspace.setMemberRole', principalId: 'bob', role: 'viewer' });
  sim.refuse({ type: 'workspace.setMemberPermissions', principalId: 'bob', permissions: [] });
  sim.refuse({ type: 'workspace.setMemberRole', principalId: 'lead', role: 'admin' });
  sim.refuse({ type: 'workspace.removeMember', principalId: 'lead' });
  sim.send({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: [] });
  sim.send({ type: 'workspace.setMemberPermissions', principalId: 'bob', permissions: ['member:manage'] });
  sim.send({ type: 'workspace.setMemberRole', principalId: 'bob', role: 'owner' });
  sim.send({ type: 'workspace.setMemberRole', principalId: 'lead', role: 'viewer' }, 'bob');
  assert.equal(
    sim.members.map((m) => [m.principalId, m.role, m.permissions]),
    [
      ['lead', 'viewer', []],
      ['bob', 'owner', ['member:manage']],
    ],
  );
  sim.refuse({ type: 'workspace.removeMember', principalId: 'bob' });
  sim.send({ type: 'workspace.removeMember', principalId: 'lead' }, 'bob');
  assert.equal(sim.members.map((m) => m.principalId), ['bob']);
});

test('an update changes only what it names, and may not lower maxMembers below the members there are', () => {
  const sim = created();
  sim.send({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: [] });
  sim.refuse({ type: 'workspace.update', changes: { maxMembers: 1 } });
  sim.send({ type: 'workspace.update', changes: { name: 'Release 8', visibility: 'private', maxMembers: 2 } });
  assert.is(sim.ws.name, 'Release 8');
  assert.is(sim.ws.visibility, 'private');
  assert.is(sim.ws.maxMembers, 2);
  assert.is(sim.ws.description, 'Ship it');
  assert.equal(sim.ws.tags, ['go', 'release']);
});

test('an archived workspace is read-only: only deletion is accepted', () => {
  const sim = created();
  sim.send({ type: 'workspace.archive' });
  assert.is(sim.snapshot.value, 'archived');
  assert.is(sim.ws.status, 'archived');
  assert.is(sim.ws.archivedAt, iso(sim.at));
  sim.refuse({ type: 'workspace.update', changes: { name: 'x' } });
  sim.refuse({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: [] });
  sim.refuse({ type: 'workspace.removeMember', principalId: 'lead' });
  sim.refuse({ type: 'workspace.archive' });
  sim.send({ type: 'workspace.delete' });
  assert.is(sim.snapshot.value, 'deleted');
});

test('a deleted workspace is final and accepts nothing', () => {
  const sim = created();
  sim.send({ type: 'workspace.delete' });
  assert.is(sim.snapshot.status, 'done');
  sim.refuse({ type: 'workspace.update', changes: { name: 'x' } });
  sim.refuse({ type: 'workspace.delete' });
  sim.refuse(creation);
});

test('a persisted snapshot survives JSON and goes on accepting members', () => {
  const sim = created();
  const persisted = JSON.parse(JSON.stringify(workspaceMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(workspaceMachine, { snapshot: persisted }).start();
  actor.send({ type: 'workspace.addMember', principalId: 'bob', role: 'viewer', permissions: [], at: T0 + 5_000, by: 'lead' });
  assert.equal(actor.getSnapshot().context.members.map((m) => m.principalId), ['lead', 'bob']);
  actor.stop();
});

test('replaying the events reproduces the live state exactly', () => {
  const sim = created();
  sim.send({ type: 'workspace.addMember', principalId: 'bob', role: 'editor', permissions: [] });
  sim.send({ type: 'workspace.setMemberRole', principalId: 'bob', role: 'admin' });
  sim.send({ type: 'workspace.update', changes: { tags: ['x'] } });
  sim.send({ type: 'workspace.removeMember', principalId: 'bob' });
  sim.send({ type: 'workspace.archive' });
  const stored = sim.events.map((e) => ({ data: JSON.parse(JSON.stringify(e)) as Record<string, unknown> }));
  assert.equal(
    JSON.parse(JSON.stringify(replayPersisted(workspaceMachine, stored))),
    JSON.parse(JSON.stringify(workspaceMachine.getPersistedSnapshot(sim.snapshot))),
  );
});

test.run();

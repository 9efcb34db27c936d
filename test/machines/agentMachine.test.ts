import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createActor, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { replayPersisted } from '../../actors/replay.js';
import { agentMachine, agentStatus, type AgentEvent } from '../../machines/agentMachine.js';
import { iso } from '../../machines/effects.js';
import { T0 } from '../helpers/clock.js';
import { seeded } from '../helpers/prng.js';
import { pickAgentEvent, type AgentEventBody } from '../helpers/workload.js';

type AgentSnapshot = SnapshotFrom<typeof agentMachine>;

/** An agent driven by pure transitions on a simulated clock (`at` moves 1 s per event unless given). */
class Sim {
  snapshot: AgentSnapshot;
  at = T0;

  constructor() {
    [this.snapshot] = initialTransition(agentMachine);
  }

  get agent() {
    return this.snapshot.context.agent;
  }

  get status() {
    return agentStatus(this.agent);
  }

  send(body: AgentEventBody, at = this.at + 1_000): void {
    const event = { ...body, at, by: 'w1' } as AgentEvent;
    assert.ok(this.snapshot.can(event), `${body.type} should be accepted in ${String(this.snapshot.value)}`);
    const [next, actions] = transition(agentMachine, this.snapshot, event);
    assert.equal(actions.filter((a) => (a.type as string) === 'xstate.emit'), [], 'agents emit no effects');
    this.snapshot = next;
    this.at = at;
  }

  refuse(body: AgentEventBody): void {
    const event = { ...body, at: this.at + 1_000, by: 'w1' } as AgentEvent;
    assert.not.ok(this.snapshot.can(event), `${body.type} should be refused in ${String(this.snapshot.value)}`);
    const [next] = transition(agentMachine, this.snapshot, event);
    assert.equal(agentMachine.getPersistedSnapshot(next), agentMachine.getPersistedSnapshot(this.snapshot));
  }
}

const register = (extra: Partial<Extract<AgentEventBody, { type: 'agent.register' }>> = {}): AgentEventBody => ({
  type: 'agent.register',
  id: 'w1',
  tenantId: 'acme',
  ...extra,
});

function registered(extra: Partial<Extract<AgentEventBody, { type: 'agent.register' }>> = {}): Sim {
  const sim = new Sim();
  sim.send(register(extra), T0);
  return sim;
}

const test = suite('agentMachine');

test('refuses every event but agent.register before registration and leaves the agent unchanged', () => {
  const sim = new Sim();
  assert.is(sim.snapshot.value, 'unregistered');
  for (const body of [
    { type: 'agent.heartbeat' },
    { type: 'agent.setStatus', status: 'busy' },
    { type: 'agent.connected' },
    { type: 'agent.disconnected' },
    { type: 'agent.connectionsReset' },
  ] as AgentEventBody[]) {
    sim.refuse(body);
  }
  assert.is(sim.agent.id, '');
});

test('registers with defaults, stamping registeredAt and lastSeenAt', () => {
  const sim = registered();
  assert.is(sim.snapshot.value, 'registered');
  const a = sim.agent;
  assert.is(a.id, 'w1');
  assert.is(a.tenantId, 'acme');
  assert.is(a.name, 'w1', 'the name defaults to the id');
  assert.is(a.kind, 'agent');
  assert.equal(a.capabilities, []);
  assert.is(a.maxConcurrentTasks, 1);
  assert.is(a.costPerTask, 0);
  assert.equal(a.metadata, {});
  assert.is(a.connections, 0);
  assert.is(a.registeredAt, iso(T0));
  assert.is(a.lastSeenAt, iso(T0));
  assert.is(sim.status, 'offline', 'registered without a connection is offline');
});

test('registration may carry the connections the gateway knows about', () => {
  const sim = registered({ connections: 2 });
  assert.is(sim.agent.connections, 2);
  assert.is(sim.status, 'online');
});

test('re-registration updates the profile, keeps registeredAt and keeps what it does not name', () => {
  const sim = registered({ name: 'Worker', kind: 'bot', capabilities: ['go'], maxConcurrentTasks: 2, costPerTask: 3, metadata: { zone: 'eu' } });
  sim.send({ type: 'agent.connected' });
  sim.send(register({ capabilities: ['go', 'review'], maxConcurrentTasks: 4 }), T0 + 60_000);
  const a = sim.agent;
  assert.equal(a.capabilities, ['go', 'review']);
  assert.is(a.maxConcurrentTasks, 4);
  assert.is(a.name, 'Worker');
  assert.is(a.kind, 'bot');
  assert.is(a.costPerTask, 3);
  assert.equal(a.metadata, { zone: 'eu' });
  assert.is(a.connections, 1, 'connections survive a re-registration that does not name them');
  assert.is(a.registeredAt, iso(T0));
  assert.is(a.lastSeenAt, iso(T0 + 60_000));
});

test('counts connections: online while connected, offline at zero, never below zero', () => {
  const sim = registered();
  sim.send({ type: 'agent.connected' });
  assert.is(sim.status, 'online');
  sim.send({ type: 'agent.connected' });
  assert.is(sim.agent.connections, 2);
  sim.send({ type: 'agent.disconnected' });
  assert.is(sim.status, 'online', 'one connection is still open');
  sim.send({ type: 'agent.disconnected' });
  assert.is(sim.status, 'offline');
  sim.send({ type: 'agent.disconnected' });
  assert.is(sim.agent.connections, 0);
  assert.is(sim.agent.lastSeenAt, iso(sim.at), 'every connect and disconnect counts as seen');
});

test('busy and draining are reported only while connected', () => {
  const sim = registered();
  sim.send({ type: 'agent.setStatus', status: 'busy' });
  assert.is(sim.status, 'offline', 'no connection: offline whatever was asked');
  sim.send({ type: 'agent.connected' });
  assert.is(sim.status, 'busy');
  sim.send({ type: 'agent.setStatus', status: 'draining' });
  assert.is(sim.status, 'draining');
  sim.send({ type: 'agent.setStatus', status: 'online' });
  assert.is(sim.status, 'online');
  sim.send({ type: 'agent.setStatus', status: 'busy' });
  sim.send({ type: 'agent.disconnected' });
  assert.is(sim.status, 'offline');
  sim.send({ type: 'agent.connected' });
  assert.is(sim.status, 'busy', 'the requested status comes back with the connection');
});

test('asking to be offline drops the counted connections and keeps the requested status', () => {
  const sim = registered();
  sim.send({ type: 'agent.connected' });
  sim.send({ type: 'agent.setStatus', status: 'draining' });
  sim.send({ type: 'agent.setStatus', status: 'offline' });
  assert.is(sim.agent.connections, 0);
  assert.is(sim.status, 'offline');
  assert.is(sim.agent.requestedStatus, 'draining');
});

test('heartbeat only moves lastSeenAt', () => {
  const sim = registered();
  sim.send({ type: 'agent.connected' });
  const before = sim.agent;
  sim.send({ type: 'agent.heartbeat' }, T0 + 30_000);
  assert.equal(sim.agent, { ...before, lastSeenAt: iso(T0 + 30_000) });
});

test('connectionsReset zeroes the connections without counting as seen', () => {
  const sim = registered();
  sim.send({ type: 'agent.connected' });
  sim.send({ type: 'agent.connected' });
  const seen = sim.agent.lastSeenAt;
  sim.send({ type: 'agent.connectionsReset' }, T0 + 99_000);
  assert.is(sim.agent.connections, 0);
  assert.is(sim.status, 'offline');
  assert.is(sim.agent.lastSeenAt, seen);
});

test('a persisted snapshot survives JSON and goes on counting connections', () => {
  const sim = registered({ capabilities: ['go'] });
  sim.send({ type: 'agent.connected' });
  sim.send({ type: 'agent.setStatus', status: 'busy' });
  const persisted = JSON.parse(JSON.stringify(agentMachine.getPersistedSnapshot(sim.snapshot)));
  const actor = createActor(agentMachine, { snapshot: persisted }).start();
  assert.equal(actor.getSnapshot().context, sim.snapshot.context);
  actor.send({ type: 'agent.connected', at: T0 + 5_000, by: 'w1' });
  assert.is(actor.getSnapshot().context.agent.connections, 2);
  assert.is(agentStatus(actor.getSnapshot().context.agent), 'busy');
  actor.stop();
});

test('setCapabilities replaces the capabilities and marks the agent as seen', () => {
  const sim = new Sim();
  sim.send({ type: 'agent.register', id: 'w1', tenantId: 'acme', capabilities: ['go'] });
  sim.send({ type: 'agent.setCapabilities', capabilities: ['py', 'sql'] }, T0 + 60_000);
  assert.equal(sim.agent.capabilities, ['py', 'sql']);
  assert.is(sim.agent.lastSeenAt, iso(T0 + 60_000));
});

test('a deregistered agent accepts only registration and connection bookkeeping; registering again restores it', () => {
  const sim = new Sim();
  sim.send({ type: 'agent.register', id: 'w1', tenantId: 'acme', capabilities: ['go'], maxConcurrentTasks: 3 });
  sim.send({ type: 'agent.connected' });
  sim.send({ type: 'agent.deregister', reason: 'retired' });
  assert.is(sim.snapshot.value, 'deregistered');
  sim.refuse({ type: 'agent.heartbeat' });
  sim.refuse({ type: 'agent.setStatus', status: 'online' });
  sim.refuse({ type: 'agent.setCapabilities', capabilities: ['x'] });
  sim.refuse({ type: 'agent.deregister' });
  sim.send({ type: 'agent.disconnected' });
  assert.is(sim.agent.connections, 0);
  sim.send({ type: 'agent.register', id: 'w1', tenantId: 'acme' });
  assert.is(sim.snapshot.value, 'registered');
  assert.equal(sim.agent.capabilities, ['go'], 'the profile is kept');
  assert.is(sim.agent.maxConcurrentTasks, 3);
});

test('replaying 100 random (seeded) histories reproduces the live state exactly', () => {
  for (let seed = 1; seed <= 100; seed++) {
    const rng = seeded(seed);
    const live = createActor(agentMachine).start();
    const stored: { data: Record<string, unknown> }[] = [];
    let at = T0;
    for (let i = rng.between(1, 30); i > 0; i--) {
      at += rng.between(0, 10_000);
      const body = pickAgentEvent(rng, live.getSnapshot(), { id: 'w1', tenantId: 'acme', at, by: 'w1' })!;
      const event = { ...body, at, by: 'w1' } as AgentEvent;
      live.send(event);
      stored.push({ data: JSON.parse(JSON.stringify(event)) });
      assert.ok(live.getSnapshot().context.agent.connections >= 0);
    }
    assert.equal(
      JSON.parse(JSON.stringify(replayPersisted(agentMachine, stored))),
      JSON.parse(JSON.stringify(live.getPersistedSnapshot())),
      `seed ${seed}`,
    );
    live.stop();
  }
});

test.run();

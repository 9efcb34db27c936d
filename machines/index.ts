/** The pure state machines of every actor kind, their events and the effects they emit. */
export { taskMachine, retryDelayMs, type TaskData, type TaskContext, type TaskEvent, type TaskChanges, type TaskCreateFields } from './taskMachine.js';
export { agentMachine, agentStatus, type AgentData, type AgentEvent, type AgentRegistration } from './agentMachine.js';
export { iso, type Effect, type ScheduleTimer, type CancelTimer, type SendToActor, type TimerFired, type Stamp } from './effects.js';
export { ruleMachine, defaultRuleMessage, type RuleData, type RuleEvent, type RuleRegistration, type RuleChanges } from './ruleMachine.js';
export { policyMachine, type PolicyData, type PolicyEvent } from './policyMachine.js';

/** The pure state machines of every actor kind, their events and the effects they emit. */
export { taskMachine, retryDelayMs, type TaskData, type TaskContext, type TaskEvent, type TaskChanges, type TaskCreateFields } from './taskMachine.js';
export { agentMachine, agentStatus, type AgentData, type AgentEvent, type AgentRegistration } from './agentMachine.js';
export { iso, type Effect, type ScheduleTimer, type CancelTimer, type SendToActor, type TimerFired, type Stamp } from './effects.js';


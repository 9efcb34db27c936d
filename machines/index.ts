/** Every machine Troupe runs, by actor kind. */
export { taskMachine, retryDelayMs, type TaskData, type TaskContext, type TaskEvent, type TaskChanges, type TaskCreateFields } from './taskMachine.js';
export { agentMachine, agentStatus, type AgentData, type AgentEvent, type AgentRegistration } from './agentMachine.js';
export { iso, type Effect, type ScheduleTimer, type CancelTimer, type SendToActor, type TimerFired, type Stamp } from './effects.js';

import { taskMachine } from './taskMachine.js';
import { agentMachine } from './agentMachine.js';

/** The machine of each actor kind, for `GET /machines` and the visualiser. */
export const machines = { task: taskMachine, agent: agentMachine } as const;

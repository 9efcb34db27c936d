import type { ActorKind } from '../../actors/ActorKind.js';
import { agentKind } from './agentKind.js';
import { policyKind } from './policyKind.js';
import { ruleKind } from './ruleKind.js';
import { taskKind } from './taskKind.js';

/** Every kind of actor a Troupe node hosts; the server, `GET /machines` and `troupe verify` use it. */
export const actorKinds: readonly ActorKind[] = [
  taskKind as unknown as ActorKind,
  agentKind as unknown as ActorKind,
  ruleKind as unknown as ActorKind,
  policyKind as unknown as ActorKind,
];

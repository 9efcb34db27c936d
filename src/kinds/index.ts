import type { ActorKind } from '../../actors/ActorKind.js';
import { agentKind } from './agentKind.js';
import { executionKind } from './executionKind.js';
import { fieldPolicyKind } from './fieldPolicyKind.js';
import { policyKind } from './policyKind.js';
import { quotaKind } from './quotaKind.js';
import { rateLimitKind } from './rateLimitKind.js';
import { ruleKind } from './ruleKind.js';
import { taskKind } from './taskKind.js';
import { templateKind } from './templateKind.js';
import { workflowKind } from './workflowKind.js';
import { workspaceKind } from './workspaceKind.js';
import { documentKind } from './documentKind.js';

/** Every kind of actor a Troupe node hosts; the server, `GET /machines` and `troupe verify` use it. */
export const actorKinds: readonly ActorKind[] = [
  taskKind as unknown as ActorKind,
  agentKind as unknown as ActorKind,
  ruleKind as unknown as ActorKind,
  policyKind as unknown as ActorKind,
  workflowKind as unknown as ActorKind,
  templateKind as unknown as ActorKind,
  executionKind as unknown as ActorKind,
  fieldPolicyKind as unknown as ActorKind,
  rateLimitKind as unknown as ActorKind,
  quotaKind as unknown as ActorKind,
  workspaceKind as unknown as ActorKind,
  documentKind as unknown as ActorKind,
];

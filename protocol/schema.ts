import { z } from 'zod';
import { ErrorCodes } from './errors.js';
import { MethodDescriptions, MethodSchemas, type MethodName } from './methods.js';

/** The protocol's version; bumped on any incompatible change to the wire contract. */
export const PROTOCOL_VERSION = '1.0.0';

/**
 * The whole method catalogue as JSON Schema (draft 2020-12), with the error codes, so agents
 * written in other languages can validate what they send. Served at `GET /protocol.json`.
 */
export function protocolJsonSchema(): Record<string, unknown> {
  const methods: Record<string, unknown> = {};
  for (const name of Object.keys(MethodSchemas) as MethodName[]) {
    methods[name] = {
      description: MethodDescriptions[name],
      params: z.toJSONSchema(MethodSchemas[name], { io: 'input', unrepresentable: 'any' }),
    };
  }
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    title: 'Troupe JSON-RPC 2.0 protocol',
    version: PROTOCOL_VERSION,
    transport: { websocket: '/v1', encoding: 'JSON text frames, JSON-RPC 2.0, batches allowed' },
    methods,
    errors: ErrorCodes,
    notifications: {
      'subscription.event': 'params: { subscriptionId, topic, position, event }',
      'subscription.overflow': 'params: { subscriptionId, topic, lastPosition, message }',
      'session.closing': 'params: { reason }',
    },
  };
}

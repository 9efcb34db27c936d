/** The Troupe wire contract: JSON-RPC envelope, methods, errors, resources and the client. */
export * from './errors.js';
export * from './jsonrpc.js';
export * from './methods.js';
export * from './model.js';
export * from './schema.js';
export * from './client.js';
export * from './rules.js';
export * from './workflows.js';
export * from './ratelimits.js';
export * from './quotas.js';
export * from './audit.js';
export * from './fieldPolicy.js';
export * from './workspaces.js';
export * from './documents.js';
export * from './inspect.js';

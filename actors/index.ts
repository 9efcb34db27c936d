/** The actor runtime: hosting, persistence port, ownership and durable timers. */
export * from './ActorHost.js';
export * from './ActorKind.js';
export * from './Ownership.js';
export * from './Store.js';
export * from './TimerService.js';
export * from './replay.js';
export * from './uuidv7.js';

/**
 * Wire shapes and method schemas of this area, merged into the catalogue by `methods.ts`.
 */

/** Params schema of the methods. */
export const RateLimitMethodSchemas = {} as const;

/** Result types of the methods. */
export interface RateLimitMethodResults {}

/** Descriptions of the methods. */
export const RateLimitMethodDescriptions: Record<keyof typeof RateLimitMethodSchemas, string> = {};

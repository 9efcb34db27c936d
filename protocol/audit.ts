/**
 * Wire shapes and method schemas of this area, merged into the catalogue by `methods.ts`.
 */

/** Params schema of the methods. */
export const AuditMethodSchemas = {} as const;

/** Result types of the methods. */
export interface AuditMethodResults {}

/** Descriptions of the methods. */
export const AuditMethodDescriptions: Record<keyof typeof AuditMethodSchemas, string> = {};

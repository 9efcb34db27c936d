/**
 * Wire shapes and method schemas of this area, merged into the catalogue by `methods.ts`.
 */

/** Params schema of the methods. */
export const QuotaMethodSchemas = {} as const;

/** Result types of the methods. */
export interface QuotaMethodResults {}

/** Descriptions of the methods. */
export const QuotaMethodDescriptions: Record<keyof typeof QuotaMethodSchemas, string> = {};

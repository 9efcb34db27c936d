/**
 * Wire shapes and method schemas of this area, merged into the catalogue by `methods.ts`.
 */

/** Params schema of the methods. */
export const FieldPolicyMethodSchemas = {} as const;

/** Result types of the methods. */
export interface FieldPolicyMethodResults {}

/** Descriptions of the methods. */
export const FieldPolicyMethodDescriptions: Record<keyof typeof FieldPolicyMethodSchemas, string> = {};

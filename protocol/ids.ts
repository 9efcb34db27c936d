import { z } from 'zod';

/**
 * Id schemas shared by every part of the catalogue. They live apart from `methods.ts` so that
 * catalogue modules merged into it (`rules.ts`) can use them without an import cycle.
 */

/** Ids of actors and principals: 1–128 characters, no `/`, no whitespace. */
export const Id = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/, 'must be 1-128 characters of A-Z a-z 0-9 . _ : @ - and start with a letter or digit');

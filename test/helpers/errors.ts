import * as assert from 'uvu/assert';
import { ProtocolError } from '../../protocol/errors.js';

/**
 * Resolves with the ProtocolError a call was refused with, checking its numeric code when given;
 * fails the test if the call succeeded or failed with something else.
 */
export async function refusal(p: Promise<unknown>, code?: number): Promise<ProtocolError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ProtocolError, String(e));
    if (code !== undefined) assert.is((e as ProtocolError).code, code, (e as ProtocolError).message);
    return e as ProtocolError;
  }
  throw new Error(`the call should have been refused${code === undefined ? '' : ` with ${code}`}, but it succeeded`);
}

/**
 * The store's access token: 32 random bytes as hex in DIR/access-token (0600). Agents present it in
 * HELLO; the server compares in constant time.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { writeFileDurable } from '../util/durable.js';
import { fromSystemError, VnstoreError } from '../util/errors.js';

export const TOKEN_FILE = 'access-token';

export function tokenPath(storeDir: string): string {
  return path.join(storeDir, TOKEN_FILE);
}

/** Writes a fresh token (replacing any); returns it. */
export async function writeNewToken(storeDir: string): Promise<string> {
  const token = randomBytes(32).toString('hex');
  try {
    await writeFileDurable(tokenPath(storeDir), Buffer.from(token + '\n'), path.join(storeDir, 'tmp', `${TOKEN_FILE}.${process.pid}.tmp`));
  } catch (err) {
    throw fromSystemError(err, `writing the access token of ${storeDir}`);
  }
  return token;
}

/** Reads a token file (the store's, or a client's --token-file). */
export async function readTokenFile(file: string): Promise<string> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new VnstoreError(
        'E_NOT_FOUND',
        `no access token at ${file} (a store made before tokens existed: run 'vnstore token --rotate')`,
      );
    throw fromSystemError(err, `reading access token ${file}`);
  }
  const token = text.trim();
  if (token.length === 0) throw new VnstoreError('E_INPUT', `access token file ${file} is empty`);
  return token;
}

/** Constant-time comparison (of digests, so unequal lengths take the same path). */
export function tokensMatch(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

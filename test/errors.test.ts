/**
 * System errors become typed errors with the documented exit codes (src/util/errors.ts): a full disk
 * is exit 9 however it is reported, other I/O failures exit 8.
 */
import { describe, expect, it } from 'vitest';
import { fromSystemError, VnstoreError } from '../src/util/errors.js';

const sys = (code: string, message = `${code}: failed`) => Object.assign(new Error(message), { code });

describe('fromSystemError', () => {
  it('ENOSPC and EDQUOT: E_NO_SPACE (exit 9), naming what was being done', () => {
    for (const code of ['ENOSPC', 'EDQUOT']) {
      const e = fromSystemError(sys(code), 'writing pack 00000001.vpk');
      expect([e.code, e.exitCode, e.message]).toEqual(['E_NO_SPACE', 9, 'writing pack 00000001.vpk: no space left on device']);
    }
  });

  it('EIO, EROFS, EACCES: E_IO (exit 8)', () => {
    expect(fromSystemError(sys('EIO', 'EIO: i/o error, write'), 'writing manifest')).toMatchObject({
      code: 'E_IO',
      exitCode: 8,
      message: 'writing manifest: EIO: i/o error, write',
    });
    expect(fromSystemError(sys('EROFS'), 'x')).toMatchObject({ code: 'E_IO', exitCode: 8, message: 'x: read-only file system' });
    expect(fromSystemError(sys('EACCES'), 'x')).toMatchObject({ code: 'E_IO', exitCode: 8, message: 'x: permission denied' });
  });

  it("LevelDB's full disk, in its message or only in its cause: E_NO_SPACE", () => {
    const inMessage = sys('LEVEL_IO_ERROR', 'IO error: /s/db/000005.log: No space left on device');
    const inCause = Object.assign(
      new Error('Failed to write batch', { cause: new Error('IO error: /s/db/000005.log: No space left on device') }),
      { code: 'LEVEL_IO_ERROR' },
    );
    for (const err of [inMessage, inCause])
      expect(fromSystemError(err, 'writing commit record')).toMatchObject({ code: 'E_NO_SPACE', exitCode: 9 });
  });

  it("LevelDB on damaged files ('Corruption', a table's offsets outside it): E_CORRUPT (exit 7), not an I/O error", () => {
    for (const err of [
      sys('LEVEL_CORRUPTION', 'Corruption: block checksum mismatch'),
      sys('LEVEL_IO_ERROR', 'IO error: /s/db/000012.ldb: Invalid argument'),
    ]) {
      const e = fromSystemError(err, 'opening store /s');
      expect([e.code, e.exitCode]).toEqual(['E_CORRUPT', 7]);
      expect(e.message).toMatch(/^opening store \/s: store catalog \(db\/\) is damaged \(.+\); restore the store from a backup/);
    }
  });

  it('a typed error passes through unchanged', () => {
    const typed = new VnstoreError('E_CORRUPT', 'pack 00000002.vpk is damaged');
    expect(fromSystemError(typed, 'x')).toBe(typed);
  });
});

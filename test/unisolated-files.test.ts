/**
 * The files that share worker processes (test/unisolated-files.ts, vitest.config.ts) must leave
 * nothing behind for the next file in the process: a check of their source, so that a file that
 * starts mocking, stubbing or writing process.env fails here instead of upsetting another file.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO_ROOT } from './helpers/engine.js';
import { UNISOLATED_FILES, stateLeftBehind } from './unisolated-files.js';

describe('test files without isolation', () => {
  it('finds each kind of state a file could leave behind, and none in plain code', () => {
    expect(stateLeftBehind("vi.mock('../src/x.js');")).toEqual(['mocks, stubs or spies']);
    expect(stateLeftBehind("const s = vi.spyOn(store, 'lookupExact');")).toEqual(['mocks, stubs or spies']);
    expect(stateLeftBehind("process.env.VNSTORE_NATIVE = '0';")).toEqual(['writes to process.env']);
    expect(stateLeftBehind("process.env['VNSTORE_X'] = '1';")).toEqual(['writes to process.env']);
    expect(stateLeftBehind('delete process.env.VNSTORE_NATIVE;')).toEqual(['writes to process.env']);
    expect(stateLeftBehind("process.on('exit', done);")).toEqual(['process listeners']);
    expect(stateLeftBehind('process.exitCode = 3;')).toEqual(['process-wide settings']);
    expect(stateLeftBehind("await runCliInProcess(['ls']);")).toEqual(['in-process CLI runs']);
    expect(stateLeftBehind('globalThis.fetch = fake;')).toEqual(['globals']);
    expect(
      stateLeftBehind(
        "const v = process.env.CI === 'true';\nif (process.exitCode === 0) spawn(process.execPath, [], { env: { ...process.env } });",
      ),
    ).toEqual([]);
  });

  it('lists existing test files, once each, none of which leaves state behind', () => {
    expect(new Set(UNISOLATED_FILES).size).toBe(UNISOLATED_FILES.length);
    for (const file of UNISOLATED_FILES) {
      expect(file).toMatch(/^test\/[\w-]+\.test\.ts$/);
      const full = path.join(REPO_ROOT, file);
      expect(existsSync(full), file).toBe(true);
      expect(stateLeftBehind(readFileSync(full, 'utf8')), file).toEqual([]);
    }
  });
});

/**
 * Advice that leads somewhere (issue 15): the command an error names must find or heal the problem.
 * A flipped byte in a pack is found by 'check --read-data' (plain check reads structure only), and
 * after 'check --repair-index' has quarantined the pack, the advice is what heals the snapshot (a
 * parentless put of the same image, or forget), not the repair just run.
 */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, randomPage, removeDir, runCli, singleErrorLine } from './helpers/engine.js';

let root: string;
let dir: string;
let imageFile: string;
let image: Buffer;
let id: string;

beforeAll(async () => {
  root = makeTempDir('advice');
  dir = path.join(root, 'store');
  image = Buffer.concat(Array.from({ length: 64 }, (_, i) => randomPage(4_200 + i))); // incompressible: stored raw
  imageFile = path.join(root, 'a.img');
  writeFileSync(imageFile, image);
  expect((await runCli(['init', '--store', dir, '--format', '1'])).code).toBe(0);
  const r = await runCli(['put', '--store', dir, '--vm', 'a', imageFile]);
  expect(r.code, r.stderr).toBe(0);
  id = r.stdout.toString().trim();
  // One flipped byte in the first chunk's payload (after the 16-byte pack header).
  const pack = path.join(dir, 'packs', readdirSync(path.join(dir, 'packs'))[0]);
  const bytes = readFileSync(pack);
  bytes[16 + 100] ^= 0x5a;
  writeFileSync(pack, bytes);
});

afterAll(() => removeDir(root));

describe('advice after a flipped byte in a pack', () => {
  it("restore names 'check --read-data', and that command finds the damage (plain check cannot)", async () => {
    const r = await runCli(['restore', '--store', dir, id, '-o', path.join(root, 'out.img')]);
    expect(r.code, r.stderr).toBe(7);
    const line = singleErrorLine(r.stderr);
    expect(line).toContain(`snapshot ${id}`);
    expect(line).toContain("run 'vnstore check --read-data'");
    // Plain check reads only structure: it has nothing to say, which is why the advice names --read-data.
    expect((await runCli(['check', '--store', dir])).code).toBe(0);
    const c = await runCli(['check', '--store', dir, '--read-data', '--json']);
    expect(c.code).toBe(7);
    const report = JSON.parse(c.stdout.toString()) as { problems: { kind: string; affects: string[] }[] };
    expect(report.problems.map((p) => [p.kind, p.affects])).toEqual([['chunk-corrupt', [id]]]);
  });

  it("after 'check --repair-index' the advice is what heals (put --parent none, or forget), and following it heals", async () => {
    const r = await runCli(['check', '--store', dir, '--repair-index', '--json']);
    expect(r.code).toBe(7);
    const report = JSON.parse(r.stdout.toString()) as { problems: { kind: string; affects: string[]; next: string }[]; next: string[] };
    expect(report.problems.map((p) => [p.kind, p.affects])).toEqual([['chunk-missing', [id]]]);
    for (const next of [report.problems[0].next, ...report.next]) {
      expect(next).not.toContain('--repair-index');
      expect(next).toContain(`vnstore forget ${id}`);
      expect(next).toContain("'vnstore put --parent none'");
    }
    expect(singleErrorLine(r.stderr)).not.toContain('--repair-index');
    // Follow the advice: a parentless put of the same image stores the lost chunk again.
    const put = await runCli(['put', '--store', dir, '--vm', 'a', '--parent', 'none', imageFile]);
    expect(put.code, put.stderr).toBe(0);
    expect((await runCli(['check', '--store', dir, '--read-data'])).code).toBe(0);
    const restored = await runCli(['restore', '--store', dir, id]);
    expect(restored.code, restored.stderr).toBe(0);
    expect(restored.stdout.equals(image)).toBe(true);
  });
});

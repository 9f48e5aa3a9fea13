/**
 * vnstore completion: the bash script is generated from the command tree (every command and every
 * option its --help lists completes) and works in a real bash, driven as bash's completion calls it.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCliError, runCliInProcess } from './helpers/cli.js';
import { makeTempDir, removeDir, runCli } from './helpers/engine.js';

let dir: string;
let script: string;

beforeAll(async () => {
  dir = makeTempDir('completion');
  const r = await runCli(['completion', 'bash']);
  expect(r.code, r.stderr).toBe(0);
  script = path.join(dir, 'vnstore.bash');
  writeFileSync(script, r.stdout);
  mkdirSync(path.join(dir, 'store-dir'));
  writeFileSync(path.join(dir, 'mem.img'), 'x');
});
afterAll(() => removeDir(dir));

/** What bash offers after typing `words` (the last one is the word being completed). */
function complete(...words: string[]): string[] {
  const line = ['vnstore', ...words].map((w) => `'${w}'`).join(' ');
  const r = spawnSync(
    'bash',
    ['-c', `source '${script}'; COMP_WORDS=(${line}); COMP_CWORD=${words.length}; _vnstore; printf '%s\\n' "\${COMPREPLY[@]}"`],
    { cwd: dir, encoding: 'utf8' },
  );
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.split('\n').filter(Boolean).sort();
}

describe('vnstore completion bash', () => {
  it('completes every command and every option each --help lists', async () => {
    // Help texts in-process (test/helpers/cli.ts runCliInProcess): the completion is what runs in bash.
    const top = (await runCliInProcess(['--help'])).stdout.toString();
    const commands = [...top.split('Commands:')[1].matchAll(/^ {2}([a-z]+)/gm)].map((m) => m[1]).filter((c) => c !== 'help');
    expect(commands).toEqual(
      expect.arrayContaining(['init', 'put', 'restore', 'ls', 'forget', 'gc', 'stats', 'check', 'diff', 'completion', 'bench']),
    );
    expect(complete('')).toEqual([...commands, '--help', '--version'].sort());
    expect(complete('re')).toEqual(['restore']);
    for (const cmd of commands) {
      const help = (await runCliInProcess([cmd, '--help'])).stdout.toString();
      const subs = [...(help.split('Commands:')[1] ?? '').matchAll(/^ {2}([a-z]+)/gm)].map((m) => m[1]).filter((c) => c !== 'help');
      // A command that groups subcommands (qemu, agent) offers them, and each its own options.
      if (subs.length > 0) expect(complete(cmd, '')).toEqual([...subs, '--help', '-h'].sort());
      for (const words of subs.length > 0 ? subs.map((sub) => [cmd, sub]) : [[cmd]]) {
        const text = subs.length > 0 ? (await runCliInProcess([...words, '--help'])).stdout.toString() : help;
        // The flags that start the option lines (descriptions may quote other programs' flags).
        const optionLines = (text.split('Options:')[1] ?? '').split(/\n(?:Commands:|\S)/)[0];
        const listed = [...optionLines.matchAll(/^ {2}(-[a-zA-Z], )?(--[a-z][a-z-]*)/gm)].flatMap((m) =>
          m[1] ? [m[1].slice(0, 2), m[2]] : [m[2]],
        );
        expect(listed.length, `${words.join(' ')}: options found in --help`).toBeGreaterThan(0);
        const offered = complete(...words, '-');
        for (const flag of listed) expect(offered, `${words.join(' ')} ${flag}`).toContain(flag);
      }
    }
  }, 120_000);

  it('completes option prefixes, directories after --store, files for <file>, nothing for other values', () => {
    expect(complete('restore', '--st')).toEqual(['--store']);
    expect(complete('forget', '--keep-')).toEqual([
      '--keep-daily',
      '--keep-hourly',
      '--keep-last',
      '--keep-monthly',
      '--keep-weekly',
      '--keep-within',
      '--keep-yearly',
    ]);
    expect(complete('ls', '--store', 'st')).toEqual(['store-dir']);
    expect(complete('put', '--vm', 'web1', 'me')).toEqual(['mem.img']);
    expect(complete('restore', 'abc', '-o', 'me')).toEqual(['mem.img']);
    expect(complete('put', '--vm', 'me')).toEqual([]);
  });

  it('zsh gets the same function behind bashcompinit; another shell is a usage error', async () => {
    const zsh = (await runCli(['completion', 'zsh'])).stdout.toString();
    expect(zsh.split('\n').slice(0, 2)).toEqual([
      '# zsh: load bash-style completion, then the bash function.',
      'autoload -U +X bashcompinit && bashcompinit',
    ]);
    expect(zsh.endsWith('complete -o filenames -F _vnstore vnstore\n')).toBe(true);
    expectCliError(await runCli(['completion', 'fish']), 2, 'bash and zsh');
    const help = (await runCliInProcess(['completion', '--help'])).stdout.toString();
    expect(help).toContain('source <(vnstore completion bash)');
  });
});

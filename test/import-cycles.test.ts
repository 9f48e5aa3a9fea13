/**
 * The runtime module graph of src/ has no cycles (issue 11): a cycle makes load order decide which
 * module sees the other's bindings undefined, and ties layers that should stack (format → index →
 * store → maintenance → cli). Type-only imports are erased at compile time and do not count; nor
 * do dynamic import()s, which load lazily.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.c?ts$/.test(e.name) && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Static imports and re-exports of `file` that survive compilation (not `import type`, not all-type specifiers). */
export function runtimeImports(file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, false);
  const out: string[] = [];
  for (const st of sf.statements) {
    let spec: ts.Expression | undefined;
    if (ts.isImportDeclaration(st)) {
      const clause = st.importClause;
      if (clause?.isTypeOnly) continue;
      const named = clause?.namedBindings;
      // `import { type A, type B } from` is erased too; `import {} from` / a bare import is not.
      if (
        clause &&
        !clause.name &&
        named &&
        ts.isNamedImports(named) &&
        named.elements.length > 0 &&
        named.elements.every((e) => e.isTypeOnly)
      )
        continue;
      spec = st.moduleSpecifier;
    } else if (ts.isExportDeclaration(st)) {
      if (st.isTypeOnly) continue;
      const clause = st.exportClause;
      if (clause && ts.isNamedExports(clause) && clause.elements.length > 0 && clause.elements.every((e) => e.isTypeOnly)) continue;
      spec = st.moduleSpecifier;
    }
    if (!spec || !ts.isStringLiteral(spec) || !spec.text.startsWith('.')) continue;
    out.push(path.resolve(path.dirname(file), spec.text.replace(/\.js$/, '.ts').replace(/\.cjs$/, '.cts')));
  }
  return out;
}

/**
 * Relative `import()`s of `file` with a literal specifier: lazy, so no cycle, but still a dependency
 * of its layer (a store that lazily imports gc calls up into maintenance all the same).
 */
export function dynamicImports(file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, false);
  const out: string[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const spec = node.arguments[0];
      if (spec && ts.isStringLiteralLike(spec) && spec.text.startsWith('.'))
        out.push(path.resolve(path.dirname(file), spec.text.replace(/\.js$/, '.ts').replace(/\.cjs$/, '.cts')));
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** Every cycle's members, one entry per strongly connected component of more than one module (or a self-import). */
export function findCycles(graph: Map<string, string[]>): string[][] {
  // Tarjan's strongly connected components.
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      scc.push(w);
    } while (w !== v);
    if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) cycles.push(scc.sort());
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

describe('module graph of src/', () => {
  it('finds a cycle when there is one, and ignores type-only imports', () => {
    const a = path.join(SRC, 'a.ts');
    const b = path.join(SRC, 'b.ts');
    const c = path.join(SRC, 'c.ts');
    expect(runtimeImports(a, "import { x } from './b.js';\nimport type { T } from './c.js';\nimport { type U } from './c.js';")).toEqual([
      b,
    ]);
    expect(runtimeImports(b, "export { y } from './a.js';\nimport './c.js';")).toEqual([a, c]);
    expect(
      findCycles(
        new Map([
          [a, [b]],
          [b, [a, c]],
          [c, []],
        ]),
      ),
    ).toEqual([[a, b]]);
    expect(
      findCycles(
        new Map([
          [a, [b]],
          [b, [c]],
          [c, []],
        ]),
      ),
    ).toEqual([]);
  });

  it('has no runtime import cycle', () => {
    const graph = new Map<string, string[]>();
    for (const f of sourceFiles(SRC)) graph.set(f, runtimeImports(f, readFileSync(f, 'utf8')));
    expect(graph.size).toBeGreaterThan(50);
    const named = findCycles(graph).map((scc) => scc.map((f) => path.relative(SRC, f)));
    expect(named).toEqual([]);
  });

  it('sees lazy imports', () => {
    const store = path.join(SRC, 'store', 'store.ts');
    expect(dynamicImports(store, "async function f() { const { g } = await import('../maintenance/gc.js'); }")).toEqual([
      path.join(SRC, 'maintenance', 'gc.ts'),
    ]);
    expect(dynamicImports(store, "import { g } from '../maintenance/gc.js';")).toEqual([]);
  });

  it('keeps the layers: format, index and util import no store or maintenance; the store imports no maintenance', () => {
    const below: Record<string, string[]> = {
      format: ['store', 'maintenance'],
      index: ['store', 'maintenance'],
      util: ['store', 'maintenance'],
      store: ['maintenance'],
    };
    const crossings: string[] = [];
    for (const f of sourceFiles(SRC)) {
      const layer = path.relative(SRC, f).split(path.sep)[0];
      const text = readFileSync(f, 'utf8');
      // Lazy imports count here: a layer that loads an upper one later still depends on it.
      for (const to of [...runtimeImports(f, text), ...dynamicImports(f, text)]) {
        const target = path.relative(SRC, to).split(path.sep)[0];
        if (below[layer]?.includes(target)) crossings.push(`${path.relative(SRC, f)} -> ${path.relative(SRC, to)}`);
      }
    }
    expect(crossings).toEqual([]);
  });
});

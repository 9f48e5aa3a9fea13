/**
 * Which hashing and codec paths this process runs, and the versions behind them: the native
 * addons (native/) when they load and pass their self-tests, else @napi-rs/blake-hash per page and
 * the TypeScript codec over lz4-napi. Read by `vnstore version` and by the test set-up, which in CI
 * refuses to run the suite on a fallback that hides a broken build.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { nativeCodecStatus } from './codec.js';
import { pageHasherStatus } from './hash.js';
import { zstdStatus } from './zstd.js';

/** What became of an addon: loaded (and self-tested), failed (missing, not loading, wrong), or disabled. */
export type AddonState = 'loaded' | 'failed' | 'disabled';

export interface ActivePaths {
  hashing: {
    /** 'native-simd': native/src/blake3_pages.c, eight or sixteen pages per SIMD pass; 'napi-rs': one call per page. */
    path: 'native-simd' | 'napi-rs';
    /** The SIMD kernel ('avx512', 'avx512vl' or 'avx2') on the native path. */
    kernel?: string;
    addon: AddonState;
    addonAbi: number;
    /** '@napi-rs/blake-hash 1.3.4': always loaded (the image digest and the fallback use it). */
    library: string;
    /** Why the fallback serves, when it does. */
    reason?: string;
  };
  codec: {
    /** 'native': native/src/vnstore_native.c over the system liblz4; 'typescript': lz4-napi. */
    path: 'native' | 'typescript';
    addon: AddonState;
    addonAbi: number;
    /** The system liblz4's version ('1.9.4') where the addon loaded. */
    liblz4?: string;
    /** 'lz4-napi 2.10.0', the fallback's library. */
    library: string;
    reason?: string;
  };
  zstd: {
    /** 'native': native/src/zstd_codec.c over the system libzstd (compress and decompress); 'fzstd': decompress only. */
    path: 'native' | 'fzstd';
    /** The system libzstd's version ('1.5.4') where it loaded. */
    libzstd?: string;
    /** 'fzstd 0.1.1', the fallback's library. */
    library: string;
    reason?: string;
  };
}

export function activePaths(): ActivePaths {
  const h = pageHasherStatus();
  const c = nativeCodecStatus();
  const z = zstdStatus();
  const disabled = process.env.VNSTORE_NATIVE === '0';
  const codecReason = c.active === 'native' ? undefined : disabled ? 'disabled by VNSTORE_NATIVE=0' : c.error;
  return {
    hashing: {
      path: h.native ? 'native-simd' : 'napi-rs',
      ...(h.simd ? { kernel: h.simd } : {}),
      addon: h.addon,
      addonAbi: h.abi,
      library: `@napi-rs/blake-hash ${packageVersion('@napi-rs/blake-hash')}`,
      ...(h.native ? {} : { reason: h.error }),
    },
    codec: {
      path: c.active === 'native' ? 'native' : 'typescript',
      addon: c.loaded ? (disabled ? 'disabled' : 'loaded') : 'failed',
      addonAbi: c.abi,
      ...(c.lz4Version !== undefined ? { liblz4: lz4VersionString(c.lz4Version) } : {}),
      library: `lz4-napi ${packageVersion('lz4-napi')}`,
      ...(codecReason !== undefined ? { reason: codecReason } : {}),
    },
    zstd: {
      path: z.path === 'native' ? 'native' : 'fzstd',
      ...(z.libzstd !== undefined ? { libzstd: z.libzstd } : {}),
      library: `fzstd ${packageVersion('fzstd')}`,
      ...(z.reason !== undefined ? { reason: z.reason } : {}),
    },
  };
}

/** LZ4_versionNumber() is major*10000 + minor*100 + release. */
function lz4VersionString(v: number): string {
  return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100}`;
}

/**
 * An installed package's version, from the package.json above its entry point (packages' `exports`
 * may not list package.json itself); '?' if it cannot be found.
 */
function packageVersion(name: string): string {
  try {
    let dir = path.dirname(createRequire(import.meta.url).resolve(name));
    for (;;) {
      try {
        const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
        if (pkg.name === name) return pkg.version ?? '?';
      } catch {
        // no package.json here: keep climbing
      }
      const up = path.dirname(dir);
      if (up === dir) return '?';
      dir = up;
    }
  } catch {
    return '?';
  }
}

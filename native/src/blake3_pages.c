/*
 * vnstore_hash: BLAKE3-256 of many 4 KiB pages in one N-API call (N-API, C).
 *
 * Why this exists (bench/RESULTS.md, "BLAKE3 per page"): hashing is the one cost every ingested and
 * restored page pays. Through @napi-rs/blake-hash a page costs one N-API call and a fresh Buffer, and
 * the hasher inside can only fill four SIMD lanes (a page is four BLAKE3 chunks). Here one call hashes
 * a whole list of pages, eight side by side in AVX2 lanes (blake3_x8.h) or sixteen in AVX-512 ones
 * (blake3_x16.h), into caller-owned memory.
 *
 * Written from the BLAKE3 specification for exactly one input size (4096 bytes, hash mode, 32-byte
 * output); it is not a general BLAKE3. Tests compare it with @napi-rs/blake-hash on random and edge
 * pages, and src/chunk/hash.ts refuses the addon unless a self-test matches at load time.
 *
 * Without AVX2 the module loads but reports simd = "" and the TypeScript layer keeps using
 * @napi-rs/blake-hash, which is also the fallback when this addon is not built at all.
 */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>

#include "napi_args.h"
#include "napi_async.h"

#if (defined(__x86_64__) || defined(__i386__)) && !defined(VNSTORE_NO_SIMD) /* VNSTORE_NO_SIMD: build without kernels */
#define HAVE_X86_KERNELS 1
#include <immintrin.h>
#endif
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define DIGEST_BYTES 32u
/* Bumped whenever the JS-visible contract of this addon changes; hash.ts refuses other values. */
#define HASH_ADDON_ABI 3

#define BLAKE3_BLOCK_LEN 64
#define BLAKE3_CHUNK_LEN 1024
#define BLAKE3_CHUNK_START 1u
#define BLAKE3_CHUNK_END 2u
#define BLAKE3_PARENT 4u
#define BLAKE3_ROOT 8u

static const uint32_t BLAKE3_IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                                      0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};

/* Message word order of each of the 7 rounds: row r+1 is row r through the spec's permutation. */
static const uint8_t MSG_SCHEDULE[7][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8},
    {3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1},
    {10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6},
    {12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4},
    {9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7},
    {11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13},
};

/* A kernel hashes LANES pages side by side: page[l] (4096 bytes) -> out[l] (32 bytes). */
typedef void (*hash_lanes_fn)(const uint8_t *const page[], uint8_t *const out[]);
#define MAX_LANES 16

#ifdef HAVE_X86_KERNELS
/* AVX2 variant: rotations by 12 and 7 as two shifts and an or. */
#define KSUFFIX _avx2
#define KTARGET "avx2"
#define ROTR12(x) _mm256_or_si256(_mm256_srli_epi32((x), 12), _mm256_slli_epi32((x), 20))
#define ROTR7(x) _mm256_or_si256(_mm256_srli_epi32((x), 7), _mm256_slli_epi32((x), 25))
#include "blake3_x8.h"
#undef ROTR7
#undef ROTR12
#undef KTARGET
#undef KSUFFIX

/* AVX-512VL variant: the same 256-bit lanes, but every rotation is one vprord. */
#define KSUFFIX _avx512vl
#define KTARGET "avx2,avx512f,avx512vl"
#define ROTR12(x) _mm256_ror_epi32((x), 12)
#define ROTR7(x) _mm256_ror_epi32((x), 7)
#include "blake3_x8.h"
#undef ROTR7
#undef ROTR12
#undef KTARGET
#undef KSUFFIX

/* AVX-512F variant: sixteen pages in 512-bit lanes. */
#include "blake3_x16.h"

/* The widest kernel the CPU runs, unless $VNSTORE_HASH_SIMD (a test and bench hook) names a
 * narrower one: "avx2" or "avx512vl" (the 8-lane kernels). */
static hash_lanes_fn pick_kernel(const char **name, size_t *lanes) {
  __builtin_cpu_init();
  const char *force = getenv("VNSTORE_HASH_SIMD");
  const int want_avx2 = force != NULL && strcmp(force, "avx2") == 0;
  const int want_avx512vl = force != NULL && strcmp(force, "avx512vl") == 0;
  if (__builtin_cpu_supports("avx512f") && !want_avx2 && !want_avx512vl) {
    *name = "avx512";
    *lanes = 16;
    return hash16_pages;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && !want_avx2) {
    *name = "avx512vl";
    *lanes = 8;
    return hash8_pages_avx512vl;
  }
  if (__builtin_cpu_supports("avx2")) {
    *name = "avx2";
    *lanes = 8;
    return hash8_pages_avx2;
  }
  *name = "";
  return NULL;
}
#else
/* Other architectures: no kernel; the module still loads, reports simd = "" and hash.ts keeps
 * using @napi-rs/blake-hash (and the page codec, built in the same node-gyp run, is unaffected). */
static hash_lanes_fn pick_kernel(const char **name, size_t *lanes) {
  *name = "";
  *lanes = 0;
  return NULL;
}
#endif

static hash_lanes_fn g_kernel;
static size_t g_lanes;
static const char *g_kernel_name = "";
static pthread_once_t g_kernel_once = PTHREAD_ONCE_INIT;

static void init_kernel(void) { g_kernel = pick_kernel(&g_kernel_name, &g_lanes); }

/* Hashes pages[0..n) of src into out at each page's index (caller validated every index). */
static void hash_listed(const uint8_t *src, const uint32_t *pages, size_t n, uint8_t *out) {
  uint8_t discard[MAX_LANES][DIGEST_BYTES];
  const size_t lanes = g_lanes;
  for (size_t k = 0; k < n; k += lanes) {
    const uint8_t *in[MAX_LANES];
    uint8_t *dst[MAX_LANES];
    const uint8_t *const first = src + (size_t)pages[k] * PAGE_SIZE;
    for (size_t l = 0; l < lanes; l++) {
      /* A short last group repeats its first page in the idle lanes and throws those digests away. */
      if (k + l < n) {
        in[l] = src + (size_t)pages[k + l] * PAGE_SIZE;
        dst[l] = out + (size_t)pages[k + l] * DIGEST_BYTES;
      } else {
        in[l] = first;
        dst[l] = discard[l];
      }
    }
    g_kernel(in, dst);
  }
}

/* Every call's prologue: its `n` arguments into argv, and a SIMD kernel to run them on. Throws
 * (usage as the message) and returns -1 otherwise. */
static int call_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv, const char *usage) {
  if (get_args(env, info, n, argv, usage) != 0) return -1;
  if (g_kernel == NULL) return throw_range(env, "no SIMD kernel on this CPU"), -1;
  return 0;
}

/* hashPages(src: Uint8Array, pages: Uint32Array, out: Uint8Array): void
 * For every k, with p = pages[k]: out[p*32 .. p*32+32) = BLAKE3-256(src[p*4096 .. p*4096+4096)).
 * Digests land at their page's index, so callers hash a sparse set of pages in place. */
static napi_value js_hash_pages(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (call_args(env, info, 3, argv, "hashPages(src, pages, out)") != 0) return NULL;
  uint8_t *src, *out;
  uint32_t *pages;
  size_t src_len, n, out_len;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len, "src must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&pages, &n, "pages must be a Uint32Array") ||
      arg_typed(env, argv[2], napi_uint8_array, (void **)&out, &out_len, "out must be a Uint8Array"))
    return NULL;
  const size_t src_pages = src_len / PAGE_SIZE;
  const size_t out_pages = out_len / DIGEST_BYTES;
  for (size_t k = 0; k < n; k++) {
    if (pages[k] >= src_pages) return throw_range(env, "page index out of range of src");
    if (pages[k] >= out_pages) return throw_range(env, "out too small: need 32 bytes per page up to the highest index");
  }

  hash_listed(src, pages, n, out);
  return NULL;
}

static int page_is_zero(const uint8_t *page) {
  /* Eight words at a time through memcpy: no type-punned read, no alignment assumption (the
   * compiler turns each memcpy into plain loads). */
  uint64_t w[8];
  for (size_t i = 0; i < PAGE_SIZE; i += sizeof w) {
    memcpy(w, page + i, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return 0; /* most non-zero pages stop within the first 64 bytes */
  }
  return 1;
}

typedef struct {
  vn_async_t base;
  const uint8_t *src;
  size_t count;
  uint8_t *zero;
  uint8_t *out;
} scan_job_t;

/* Zero flags and digests of job->count pages at job->src; returns the non-zero count. */
static size_t scan_block(const scan_job_t *job) {
  uint32_t list[64];
  size_t listed = 0, non_zero = 0;
  for (size_t p = 0; p < job->count; p++) {
    const int z = page_is_zero(job->src + p * PAGE_SIZE);
    job->zero[p] = (uint8_t)z;
    if (z) continue;
    non_zero++;
    list[listed++] = (uint32_t)p;
    if (listed == 64) {
      hash_listed(job->src, list, listed, job->out);
      listed = 0;
    }
  }
  hash_listed(job->src, list, listed, job->out);
  return non_zero;
}

static void run_scan(vn_async_t *self) {
  self->result = (double)scan_block((scan_job_t *)self);
}

typedef struct {
  scan_job_t scan; /* src is the destination of the read */
  int fd;
  int64_t position;
  size_t length;
} scan_file_job_t;

/* Reads the range, zero-pads it to whole pages and scans them: one thread-pool job per block
 * instead of a read job and a scan job (each queued job cost the main thread a thread wake-up,
 * ~0.4 ms with both cores busy; docs/DESIGN.md, "Thread-pool jobs"). */
static void run_scan_file(vn_async_t *self) {
  scan_file_job_t *job = (scan_file_job_t *)self;
  uint8_t *dst = (uint8_t *)job->scan.src;
  size_t got = 0;
  while (got < job->length) {
    const ssize_t n = pread(job->fd, dst + got, job->length - got, (off_t)(job->position + (int64_t)got));
    if (n < 0) {
      if (errno == EINTR) continue;
      self->result = -(double)errno;
      return;
    }
    if (n == 0) break; /* the file ended early: the caller reports it, nothing is scanned */
    got += (size_t)n;
  }
  self->result = (double)got;
  if (got < job->length) return;
  memset(dst + got, 0, job->scan.count * PAGE_SIZE - got);
  scan_block(&job->scan);
}

/* Checks a scan's page buffer, count, zero flags and digest buffer (argv[0..3]: pages, count,
 * zero, out) and fills `into` with them; throws and returns -1 on bad arguments. */
static int scan_args(napi_env env, const napi_value argv[4], scan_job_t *into) {
  uint8_t *pages, *zero, *out;
  size_t pages_len, zero_len, out_len;
  uint32_t count;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&pages, &pages_len, "the page buffer must be a Uint8Array") ||
      arg_typed(env, argv[2], napi_uint8_array, (void **)&zero, &zero_len, "zero must be a Uint8Array") ||
      arg_typed(env, argv[3], napi_uint8_array, (void **)&out, &out_len, "out must be a Uint8Array"))
    return -1;
  if (napi_get_value_uint32(env, argv[1], &count) != napi_ok) return throw_type(env, "count must be a number"), -1;
  if ((size_t)count * PAGE_SIZE > pages_len) return throw_range(env, "the page buffer holds fewer than count pages"), -1;
  if (zero_len < count || out_len < (size_t)count * DIGEST_BYTES) return throw_range(env, "zero or out too small for count pages"), -1;
  if (count > 0 && ((uintptr_t)pages & 7u) != 0) return throw_range(env, "the page buffer must be 8-byte aligned"), -1;
  into->src = pages;
  into->count = count;
  into->zero = zero;
  into->out = out;
  return 0;
}

/* scanPagesAsync(src: Uint8Array, count: number, zero: Uint8Array, out: Uint8Array): Promise<number>
 * On the libuv thread pool: zero[p] = 1 if page p of src is all zero, else 0 and
 * out[p*32 .. p*32+32) = its BLAKE3-256 (other slots untouched). Resolves to the non-zero count.
 * src must hold count pages and be 8-byte aligned; zero count bytes; out count*32 bytes. */
static napi_value js_scan_pages_async(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (call_args(env, info, 4, argv, "scanPagesAsync(src, count, zero, out)") != 0) return NULL;
  scan_job_t args;
  if (scan_args(env, argv, &args) != 0) return NULL;
  scan_job_t *job = (scan_job_t *)vn_async_new(sizeof *job, run_scan);
  if (job == NULL) return throw_range(env, "out of memory");
  args.base = job->base; /* keep the job's own header */
  *job = args;
  const napi_value held[] = {argv[0], argv[2], argv[3]};
  return vn_async_queue(env, &job->base, held, 3, "vnstore.scanPages");
}

/* scanFileAsync(fd, position, length, dst, count, zero, out): Promise<number>
 * On the libuv thread pool: reads `length` bytes of file descriptor `fd` at `position` into dst,
 * zero-fills dst up to `count` whole pages, then does what scanPagesAsync does with dst. Resolves
 * to the bytes read: `length`, fewer if the file ended first (then nothing is scanned), or -errno
 * if the read failed. dst must hold count pages and be 8-byte aligned; length <= count * 4096. */
static napi_value js_scan_file_async(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  if (call_args(env, info, 7, argv, "scanFileAsync(fd, position, length, dst, count, zero, out)") != 0) return NULL;
  int32_t fd;
  int64_t position, length;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return throw_type(env, "fd must be a file descriptor");
  if (napi_get_value_int64(env, argv[1], &position) != napi_ok || position < 0) return throw_type(env, "position must be a non-negative number");
  if (napi_get_value_int64(env, argv[2], &length) != napi_ok || length < 0) return throw_type(env, "length must be a non-negative number");
  scan_job_t args;
  if (scan_args(env, argv + 3, &args) != 0) return NULL;
  if ((uint64_t)length > (uint64_t)args.count * PAGE_SIZE) return throw_range(env, "length exceeds count pages");
  scan_file_job_t *job = (scan_file_job_t *)vn_async_new(sizeof *job, run_scan_file);
  if (job == NULL) return throw_range(env, "out of memory");
  args.base = job->scan.base;
  job->scan = args;
  job->fd = fd;
  job->position = position;
  job->length = (size_t)length;
  const napi_value held[] = {argv[3], argv[5], argv[6]};
  return vn_async_queue(env, &job->scan.base, held, 3, "vnstore.scanFile");
}

NAPI_MODULE_INIT() {
  pthread_once(&g_kernel_once, init_kernel); /* the main thread and every worker load this module */
  napi_value abi, simd;
  NAPI_OK(napi_create_int32(env, HASH_ADDON_ABI, &abi));
  NAPI_OK(napi_create_string_utf8(env, g_kernel_name, NAPI_AUTO_LENGTH, &simd));
  napi_property_descriptor props[] = {
      {"hashPages", NULL, js_hash_pages, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanPagesAsync", NULL, js_scan_pages_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"scanFileAsync", NULL, js_scan_file_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"abi", NULL, NULL, NULL, NULL, abi, napi_enumerable, NULL},
      {"simd", NULL, NULL, NULL, NULL, simd, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

/*
 * vnstore_native: batched page codec hot path for vnstore (N-API, C).
 *
 * Why this exists: compressing or decoding one 4 KiB page costs a few microseconds, and so does one
 * trip through a generic N-API binding that allocates a fresh Buffer per page. Batching a whole round
 * of pages into one call, writing straight into caller-owned memory, removes the per-page overhead.
 *
 * liblz4 is bound at run time with dlopen("liblz4.so.1") through its stable entry points (declared
 * below, because the build machines carry the runtime library but no headers). No lz4 source is part
 * of this repository. If the library is absent the module's init throws, require() fails, and the
 * TypeScript layer falls back to its pure-JS codec.
 *
 * Stored format (must match src/chunk/codec.ts): a page payload is either Raw (exactly PAGE_SIZE bytes)
 * or Lz4 (a raw LZ4 block, no size prefix and no frame, 1..PAGE_SIZE-1 bytes, decoding to exactly
 * PAGE_SIZE bytes).
 *
 * The same module carries the batched zstd codec (native/src/zstd_codec.c, over libzstd.so.1, which
 * is optional: without it only the zstd functions refuse).
 */
#ifndef NAPI_VERSION
#define NAPI_VERSION 8
#endif
#include <node_api.h>

#include "napi_args.h"
#include "napi_async.h"
#include "zstd_codec.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE_SIZE 4096u
#define CODEC_RAW 0u
#define CODEC_LZ4 1u
/* Bumped whenever the JS-visible contract of this addon changes; codec.ts refuses other values. */
#define ADDON_ABI 6
/* Scratch kept per JS environment for compress output; larger batches use a temporary allocation. */
#define SCRATCH_KEEP_MAX (64u * 1024u * 1024u)

/* liblz4 prototypes (lz4.h, stable since lz4 r1xx / 1.7). */
typedef int (*lz4_compress_default_fn)(const char *src, char *dst, int src_size, int dst_capacity);
typedef int (*lz4_decompress_safe_fn)(const char *src, char *dst, int compressed_size, int dst_capacity);
typedef int (*lz4_version_number_fn)(void);

static pthread_once_t g_lz4_once = PTHREAD_ONCE_INIT;
static lz4_compress_default_fn g_lz4_compress;
static lz4_decompress_safe_fn g_lz4_decompress;
static int g_lz4_version;
static char g_lz4_error[512];

static void lz4_load(void) {
  /* Test hook: VNSTORE_LZ4_SONAME may name another soname (never a path) to exercise the failure
   * path, e.g. "liblz4.so.999". Rejecting '/' keeps dlopen on the system search path. */
  const char *soname = getenv("VNSTORE_LZ4_SONAME");
  if (soname == NULL || soname[0] == '\0') soname = "liblz4.so.1";
  if (strchr(soname, '/') != NULL) {
    snprintf(g_lz4_error, sizeof g_lz4_error, "VNSTORE_LZ4_SONAME must be a soname, not a path");
    return;
  }
  void *handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    const char *why = dlerror();
    snprintf(g_lz4_error, sizeof g_lz4_error, "dlopen(%s) failed: %s", soname, why ? why : "unknown");
    return;
  }
  /* dlsym returns void*; going through a union avoids the ISO C object/function pointer warning. */
  union { void *p; lz4_compress_default_fn f; } c = { dlsym(handle, "LZ4_compress_default") };
  union { void *p; lz4_decompress_safe_fn f; } d = { dlsym(handle, "LZ4_decompress_safe") };
  union { void *p; lz4_version_number_fn f; } v = { dlsym(handle, "LZ4_versionNumber") };
  if (c.p == NULL || d.p == NULL) {
    snprintf(g_lz4_error, sizeof g_lz4_error, "%s lacks LZ4_compress_default/LZ4_decompress_safe", soname);
    dlclose(handle);
    return;
  }
  g_lz4_version = v.p != NULL ? v.f() : 0;
  g_lz4_decompress = d.f;
  g_lz4_compress = c.f; /* set last: it is the "loaded" flag */
  /* The handle stays open for the life of the process. */
}

/* ---------- per-environment state ---------- */

typedef struct {
  uint8_t *scratch;
  size_t scratch_cap;
} instance_t;

static void instance_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  instance_t *inst = (instance_t *)data;
  if (inst != NULL) {
    free(inst->scratch);
    free(inst);
  }
}

/* ---------- error helpers ---------- */

static napi_value throw_codec(napi_env env, const char *msg) {
  napi_throw_error(env, "E_CODEC", msg);
  return NULL;
}

/* Reads a non-negative integral number that fits a size_t. Returns 0 on success. */
static int get_index(napi_env env, napi_value v, size_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return -1;
  if (!(d >= 0) || d != floor(d) || d > 9007199254740991.0) return -1;
  *out = (size_t)d;
  return 0;
}

/* ---------- page primitives ---------- */

/* Decodes one payload into exactly PAGE_SIZE bytes at dst. Returns NULL or a static reason. */
static const char *decode_one(const uint8_t *payload, size_t len, uint32_t codec, uint8_t *dst,
                              int *decoded) {
  *decoded = -1;
  if (codec == CODEC_RAW) {
    if (len != PAGE_SIZE) return "raw payload length is not PAGE_SIZE";
    memcpy(dst, payload, PAGE_SIZE);
    return NULL;
  }
  if (codec == CODEC_LZ4) {
    /* The encoders only store Lz4 when it is strictly smaller than the page. */
    if (len == 0 || len >= PAGE_SIZE) return "lz4 payload length out of range";
    /* LZ4_decompress_safe never writes past dst_capacity and never reads past len. */
    int r = g_lz4_decompress((const char *)payload, (char *)dst, (int)len, (int)PAGE_SIZE);
    *decoded = r;
    if (r < 0) return "malformed lz4 block";
    if ((unsigned)r != PAGE_SIZE) return "lz4 block does not decode to PAGE_SIZE bytes";
    return NULL;
  }
  return "unknown codec";
}

/* Compresses one page to dst (PAGE_SIZE bytes of room); returns the stored length. */
static size_t compress_one(const uint8_t *page, uint8_t *dst, uint32_t *length, uint8_t *codec) {
  /* Capacity PAGE_SIZE-1: LZ4 gives up (returns 0) as soon as the page cannot get smaller. */
  int r = g_lz4_compress((const char *)page, (char *)dst, (int)PAGE_SIZE, (int)PAGE_SIZE - 1);
  if (r > 0) {
    *codec = CODEC_LZ4;
    *length = (uint32_t)r;
    return (size_t)r;
  }
  memcpy(dst, page, PAGE_SIZE);
  *codec = CODEC_RAW;
  *length = PAGE_SIZE;
  return PAGE_SIZE;
}

/* ---------- exported functions ---------- */

/* compressPages(src: Uint8Array, offsets: Uint32Array | Float64Array, lengths: Uint32Array,
 *               codecs: Uint8Array[, dst: Uint8Array]): Buffer | number
 * Page i is src[offsets[i], offsets[i]+PAGE_SIZE). Fills lengths[i]/codecs[i]. Without dst, returns
 * the concatenated payloads in a new Buffer; with dst (at least offsets.length * PAGE_SIZE bytes,
 * e.g. a reused shared slab), writes them to dst[0..] and returns their total length. */
static napi_value js_compress_pages(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  instance_t *inst = NULL;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  NAPI_OK(napi_get_instance_data(env, (void **)&inst));
  if (argc < 4) return throw_type(env, "compressPages(src, offsets, lengths, codecs)");

  uint8_t *src;
  size_t src_len;
  if (get_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len) != 0)
    return throw_type(env, "src must be a Uint8Array");

  void *offsets;
  size_t n;
  int offsets_f64 = 0;
  if (get_typed(env, argv[1], napi_uint32_array, &offsets, &n) != 0) {
    if (get_typed(env, argv[1], napi_float64_array, &offsets, &n) != 0)
      return throw_type(env, "offsets must be a Uint32Array or Float64Array");
    offsets_f64 = 1;
  }
  uint32_t *lengths;
  size_t n_len;
  if (get_typed(env, argv[2], napi_uint32_array, (void **)&lengths, &n_len) != 0 || n_len != n)
    return throw_type(env, "lengths must be a Uint32Array with one element per offset");
  uint8_t *codecs;
  size_t n_codecs;
  if (get_typed(env, argv[3], napi_uint8_array, (void **)&codecs, &n_codecs) != 0 || n_codecs != n)
    return throw_type(env, "codecs must be a Uint8Array with one element per offset");

  /* Validate every offset before touching memory, so a bad batch has no side effects. */
  for (size_t i = 0; i < n; i++) {
    double off = offsets_f64 ? ((const double *)offsets)[i] : (double)((const uint32_t *)offsets)[i];
    if (!(off >= 0) || off != floor(off) || off + PAGE_SIZE > (double)src_len)
      return throw_range(env, "page offset out of range of src");
  }

  if (n > SIZE_MAX / PAGE_SIZE) return throw_range(env, "batch too large");
  size_t need = n * PAGE_SIZE;
  uint8_t *out;
  int temporary = 0;
  int into_dst = 0;
  napi_valuetype dst_type = napi_undefined;
  if (argc >= 5) NAPI_OK(napi_typeof(env, argv[4], &dst_type));
  if (dst_type != napi_undefined) {
    size_t dst_len;
    if (get_typed(env, argv[4], napi_uint8_array, (void **)&out, &dst_len) != 0)
      return throw_type(env, "dst must be a Uint8Array");
    if (dst_len < need) return throw_range(env, "dst too small: need offsets.length * PAGE_SIZE bytes");
    into_dst = 1;
  } else if (need <= inst->scratch_cap) {
    out = inst->scratch;
  } else if (need <= SCRATCH_KEEP_MAX) {
    uint8_t *grown = (uint8_t *)realloc(inst->scratch, need);
    if (grown == NULL) return throw_range(env, "out of memory for compress scratch");
    inst->scratch = grown;
    inst->scratch_cap = need;
    out = grown;
  } else {
    out = (uint8_t *)malloc(need);
    if (out == NULL) return throw_range(env, "out of memory for compress scratch");
    temporary = 1;
  }

  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    size_t off = offsets_f64 ? (size_t)((const double *)offsets)[i] : (size_t)((const uint32_t *)offsets)[i];
    pos += compress_one(src + off, out + pos, &lengths[i], &codecs[i]);
  }

  napi_value result;
  if (into_dst) {
    NAPI_OK(napi_create_double(env, (double)pos, &result));
    return result;
  }
  void *copy_data;
  static const uint8_t empty = 0; /* out may be NULL for an empty batch */
  napi_status st = napi_create_buffer_copy(env, pos, pos > 0 ? (const void *)out : (const void *)&empty,
                                           &copy_data, &result);
  if (temporary) free(out);
  if (st != napi_ok) return throw_range(env, "cannot allocate payload buffer");
  return result;
}

typedef struct {
  vn_async_t base;
  const uint8_t *src;
  const uint32_t *offsets;
  size_t n;
  uint32_t *lengths;
  uint8_t *codecs;
  uint8_t *dst;
} compress_job_t;

static void run_compress(vn_async_t *self) {
  compress_job_t *job = (compress_job_t *)self;
  size_t pos = 0;
  for (size_t i = 0; i < job->n; i++) pos += compress_one(job->src + job->offsets[i], job->dst + pos, &job->lengths[i], &job->codecs[i]);
  self->result = (double)pos;
}

/* compressPagesAsync(src: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, codecs: Uint8Array,
 *                    dst: Uint8Array): Promise<number>
 * compressPages with a destination, on the libuv thread pool; resolves to the payloads' total length.
 * Every argument is checked here, before the job is queued. */
static napi_value js_compress_pages_async(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (get_args(env, info, 5, argv, "compressPagesAsync(src, offsets, lengths, codecs, dst)") != 0) return NULL;
  uint8_t *src, *codecs, *dst;
  uint32_t *offsets, *lengths;
  size_t src_len, n, n_len, n_codecs, dst_len;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len, "src must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&offsets, &n, "offsets must be a Uint32Array") ||
      arg_typed(env, argv[2], napi_uint32_array, (void **)&lengths, &n_len, "lengths must be a Uint32Array") ||
      arg_typed(env, argv[3], napi_uint8_array, (void **)&codecs, &n_codecs, "codecs must be a Uint8Array") ||
      arg_typed(env, argv[4], napi_uint8_array, (void **)&dst, &dst_len, "dst must be a Uint8Array"))
    return NULL;
  if (n_len != n || n_codecs != n) return throw_type(env, "lengths and codecs need one element per offset");
  for (size_t i = 0; i < n; i++)
    if ((size_t)offsets[i] + PAGE_SIZE > src_len) return throw_range(env, "page offset out of range of src");
  if (n > SIZE_MAX / PAGE_SIZE || dst_len < n * PAGE_SIZE) return throw_range(env, "dst too small: need offsets.length * PAGE_SIZE bytes");
  compress_job_t *job = (compress_job_t *)vn_async_new(sizeof *job, run_compress);
  if (job == NULL) return throw_range(env, "out of memory");
  job->src = src;
  job->offsets = offsets;
  job->n = n;
  job->lengths = lengths;
  job->codecs = codecs;
  job->dst = dst;
  return vn_async_queue(env, &job->base, argv, 5, "vnstore.compressPages");
}

/* decodeChunks(src: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, codecs: Uint8Array,
 *              slots: Uint32Array, out: Uint8Array, failed: Uint8Array): number
 * Chunk i, stored at src[offsets[i], +lengths[i]) with codecs[i], is decoded into page slots[i] of
 * out; failed[i] = 1 where it does not decode to exactly one page (that page's bytes are then
 * unspecified), else 0. Returns the number of failures. Every range and slot is checked first, so
 * bad arguments throw before any byte is written. One call per restore window: a call per page cost
 * as much as the LZ4 decoding itself. */
static napi_value js_decode_chunks(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  if (get_args(env, info, 7, argv, "decodeChunks(src, offsets, lengths, codecs, slots, out, failed)") != 0) return NULL;
  uint8_t *src, *codecs, *out, *failed;
  uint32_t *offsets, *lengths, *slots;
  size_t src_len, n, n_len, n_codecs, n_slots, out_len, n_failed;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len, "src must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&offsets, &n, "offsets must be a Uint32Array") ||
      arg_typed(env, argv[2], napi_uint32_array, (void **)&lengths, &n_len, "lengths must be a Uint32Array") ||
      arg_typed(env, argv[3], napi_uint8_array, (void **)&codecs, &n_codecs, "codecs must be a Uint8Array") ||
      arg_typed(env, argv[4], napi_uint32_array, (void **)&slots, &n_slots, "slots must be a Uint32Array") ||
      arg_typed(env, argv[5], napi_uint8_array, (void **)&out, &out_len, "out must be a Uint8Array") ||
      arg_typed(env, argv[6], napi_uint8_array, (void **)&failed, &n_failed, "failed must be a Uint8Array"))
    return NULL;
  if (n_len != n || n_codecs != n || n_slots != n || n_failed != n)
    return throw_type(env, "lengths, codecs, slots and failed need one element per offset");
  for (size_t i = 0; i < n; i++) {
    if ((uint64_t)offsets[i] + lengths[i] > (uint64_t)src_len) return throw_range(env, "chunk range out of range of src");
    if (((uint64_t)slots[i] + 1) * PAGE_SIZE > (uint64_t)out_len) return throw_range(env, "slot out of range of out");
  }
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    int decoded;
    const char *why = decode_one(src + offsets[i], lengths[i], codecs[i], out + (size_t)slots[i] * PAGE_SIZE, &decoded);
    failed[i] = why != NULL;
    bad += why != NULL;
  }
  napi_value result;
  NAPI_OK(napi_create_uint32(env, (uint32_t)bad, &result));
  return result;
}

/* decodePage(payload: Uint8Array, codec: number, dst: Uint8Array, dstOffset: number): void */
static napi_value js_decode_page(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (get_args(env, info, 4, argv, "decodePage(payload, codec, dst, dstOffset)") != 0) return NULL;
  uint8_t *payload;
  size_t len;
  if (get_typed(env, argv[0], napi_uint8_array, (void **)&payload, &len) != 0)
    return throw_type(env, "payload must be a Uint8Array");
  /* Read as a double so that 1.5 or -1 become "unknown codec" rather than being truncated to one. */
  double codec_d;
  if (napi_get_value_double(env, argv[1], &codec_d) != napi_ok) return throw_type(env, "codec must be a number");
  uint32_t codec = (codec_d >= 0 && codec_d <= 255 && codec_d == floor(codec_d)) ? (uint32_t)codec_d : 0xffffffffu;
  uint8_t *dst;
  size_t dst_len;
  if (get_typed(env, argv[2], napi_uint8_array, (void **)&dst, &dst_len) != 0)
    return throw_type(env, "dst must be a Uint8Array");
  size_t dst_off;
  if (get_index(env, argv[3], &dst_off) != 0 || dst_off > dst_len || dst_len - dst_off < PAGE_SIZE)
    return throw_range(env, "dstOffset out of range: need PAGE_SIZE bytes at dst[dstOffset]");

  int decoded;
  const char *why = decode_one(payload, len, codec, dst + dst_off, &decoded);
  if (why != NULL) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s (codec %u, payload %zu bytes, decoded %d)", why, codec, len, decoded);
    return throw_codec(env, msg);
  }
  return NULL; /* undefined */
}

/* decodePages(payload: Uint8Array, lengths: Uint32Array, codecs: Uint8Array, dst: Uint8Array,
 *             dstOffset: number): void
 * Payloads are concatenated in order; page i lands at dst[dstOffset + i*PAGE_SIZE]. */

/* dropCacheAsync(path: string): Promise<number>
 * On the thread pool: opens `path` read-only and advises the kernel that its cached pages are not
 * needed (posix_fadvise POSIX_FADV_DONTNEED over the whole file), then closes it. Resolves to 0, or
 * to the errno of the open or the advice (ENOENT for a file removed meanwhile): the caller decides.
 * Only clean pages are dropped, so it is for files already made durable (a sealed pack). Why: the
 * page cache of packs written long ago is rarely read again, and new pack writes then reuse its
 * pages instead of taking fresh memory (docs/DESIGN.md, "The page cache of old packs"). */
typedef struct {
  vn_async_t base;
  char path[PATH_MAX];
} drop_job_t;

static void run_drop_cache(vn_async_t *self) {
  drop_job_t *job = (drop_job_t *)self;
  int fd = open(job->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    self->result = errno;
    return;
  }
  int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  self->result = rc;
}

static napi_value js_drop_cache_async(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (get_args(env, info, 1, argv, "dropCacheAsync(path)") != 0) return NULL;
  napi_valuetype type;
  NAPI_OK(napi_typeof(env, argv[0], &type));
  if (type != napi_string) return throw_type(env, "path must be a string");
  drop_job_t *job = (drop_job_t *)vn_async_new(sizeof *job, run_drop_cache);
  if (job == NULL) return throw_range(env, "out of memory");
  size_t len = 0;
  if (napi_get_value_string_utf8(env, argv[0], job->path, sizeof job->path, &len) != napi_ok || len == 0 ||
      len >= sizeof job->path - 1) {
    free(job);
    return throw_range(env, "path must be 1 to PATH_MAX - 2 bytes");
  }
  return vn_async_queue(env, &job->base, NULL, 0, "vnstore.dropCache");
}

/* prefetchSlots(words: Uint32Array, digests: Uint8Array, offset: number, stride: number, count: number): number
 * Asks the CPU for the chunk-table line each digest's probe starts at: digest k at
 * digests[offset + k*stride ..], its fingerprint keyed by the seed in words[0..2] and its home slot
 * fp & mask, exactly as src/index/chunk-table.ts computes them (a test compares). A table probe is a
 * cache miss of its own (the table is megabytes); made one after another from JavaScript they run
 * in series, and requested together here they overlap, so the probes that follow find their lines
 * cached. A hint: nothing is read or written that a probe would not read. Returns the last digest's
 * home slot (-1 for none), so tests can hold the fingerprint to the table's. */
static inline uint32_t le32(const uint8_t *d) {
  return (uint32_t)d[0] | ((uint32_t)d[1] << 8) | ((uint32_t)d[2] << 16) | ((uint32_t)d[3] << 24);
}

static inline uint32_t table_fingerprint(const uint32_t *seed, const uint8_t *d) {
  uint32_t h = ((le32(d) ^ seed[0]) * 0x9e3779b1u) ^ ((le32(d + 4) ^ seed[1]) * 0x85ebca77u) ^ ((le32(d + 8) ^ seed[2]) * 0xc2b2ae3du);
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 13;
  return h;
}

#define TABLE_HEADER_WORDS 4
#define TABLE_SLOT_WORDS 4

static napi_value js_prefetch_slots(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (get_args(env, info, 5, argv, "prefetchSlots(words, digests, offset, stride, count)") != 0) return NULL;
  uint32_t *words;
  size_t nwords;
  uint8_t *digests;
  size_t dlen;
  if (arg_typed(env, argv[0], napi_uint32_array, (void **)&words, &nwords, "words must be a Uint32Array") ||
      arg_typed(env, argv[1], napi_uint8_array, (void **)&digests, &dlen, "digests must be a Uint8Array"))
    return NULL;
  uint32_t offset, stride, count;
  if (napi_get_value_uint32(env, argv[2], &offset) != napi_ok || napi_get_value_uint32(env, argv[3], &stride) != napi_ok ||
      napi_get_value_uint32(env, argv[4], &count) != napi_ok)
    return throw_type(env, "offset, stride and count must be numbers");
  const size_t slots = nwords > TABLE_HEADER_WORDS ? (nwords - TABLE_HEADER_WORDS) / TABLE_SLOT_WORDS : 0;
  if (slots == 0 || (slots & (slots - 1)) != 0) return throw_range(env, "words is not a chunk table (a power-of-two slot count)");
  if (count > 0 && (stride < 12 || (uint64_t)offset + (uint64_t)(count - 1) * stride + 12 > dlen))
    return throw_range(env, "digests too short for count entries of 12 or more bytes at stride");
  const uint32_t mask = (uint32_t)(slots - 1);
  int64_t last = -1;
  for (uint32_t k = 0; k < count; k++) {
    const uint32_t s = table_fingerprint(words, digests + offset + (size_t)k * stride) & mask;
    __builtin_prefetch(words + TABLE_HEADER_WORDS + (size_t)s * TABLE_SLOT_WORDS);
    last = s;
  }
  napi_value out;
  NAPI_OK(napi_create_int64(env, last, &out));
  return out;
}

/* touchPagesAsync(bytes: Uint8Array): Promise<number>
 * On the thread pool: a write access to every 4 KiB page of `bytes` that leaves its contents as they
 * are (an atomic or of zero), so the kernel gives the memory its pages there and not on the thread
 * that uses it next. Resolves to the pages touched. Why: a new 4 KiB page costs ~12 µs on the
 * project machine, and a chunk table's doubling touches megabytes of them at once (the table
 * prepares its next words ahead with this: src/index/chunk-table.ts, useHelpers). */
typedef struct {
  vn_async_t base;
  uint8_t *bytes;
  size_t length;
} touch_job_t;

static void run_touch_pages(vn_async_t *self) {
  touch_job_t *job = (touch_job_t *)self;
  size_t pages = 0;
  for (size_t o = 0; o < job->length; o += PAGE_SIZE, pages++) __atomic_fetch_or(job->bytes + o, (uint8_t)0, __ATOMIC_RELAXED);
  self->result = (double)pages;
}

static napi_value js_touch_pages_async(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (get_args(env, info, 1, argv, "touchPagesAsync(bytes)") != 0) return NULL;
  uint8_t *bytes;
  size_t length;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&bytes, &length, "bytes must be a Uint8Array")) return NULL;
  touch_job_t *job = (touch_job_t *)vn_async_new(sizeof *job, run_touch_pages);
  if (job == NULL) return throw_range(env, "out of memory");
  job->bytes = bytes;
  job->length = length;
  return vn_async_queue(env, &job->base, argv, 1, "vnstore.touchPages");
}

/* crc32Async(data: Uint8Array, crc: number): Promise<number>
 * zlib's CRC-32 of `data`, continuing `crc`, on the thread pool: a pack's payload checksum, off the
 * main thread that applies pages (docs/DESIGN.md, "Packs and durability"). zlib is the one Node
 * carries and exports to addons (its `crc32`, found with dlsym at load); where it is not found, the
 * function is not exported and the caller computes the checksum itself. */
typedef unsigned long (*zlib_crc32_fn)(unsigned long crc, const unsigned char *buf, unsigned int len);
static zlib_crc32_fn g_crc32;

/* zlib's crc32 over any length (its own takes an unsigned int). */
static unsigned long crc32_zlib(unsigned long crc, const uint8_t *buf, size_t len) {
  while (len > 0) {
    const unsigned int n = len > (1u << 30) ? (1u << 30) : (unsigned int)len;
    crc = g_crc32(crc, buf, n);
    buf += n;
    len -= n;
  }
  return crc;
}

#if (defined(__x86_64__) || defined(__i386__)) && !defined(VNSTORE_NO_SIMD)
#include <immintrin.h>
/*
 * The same CRC-32 (zlib's: reflected polynomial 0xEDB88320) by carry-less multiplication, folding
 * four 128-bit lanes over each 64 bytes, then Barrett reduction (Intel, "Fast CRC Computation for
 * Generic Polynomials Using PCLMULQDQ", 2009; the constants are those of Linux's crc32-pclmul).
 * Why: Node's zlib computes it with tables at ~4-5 GB/s here, and every pack's payload is summed
 * (a first snapshot of 256 MiB spent ~33 ms of thread-pool CPU on it; bench/RESULTS.md, issue 12,
 * session 18). `crc` and the result are unconditioned (no inversion); len >= 64, a multiple of 16.
 */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc32_fold(uint32_t crc, const uint8_t *buf, size_t len) {
  const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL); /* 64 bytes on */
  const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL); /* 16 bytes on */
  const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124LL);
  const __m128i poly = _mm_set_epi64x(0x1f7011641LL, 0x1db710641LL); /* mu, P' */
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
#define FOLD(x, k, next) \
  _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11)), (next))
  __m128i x1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)buf), _mm_cvtsi32_si128((int)crc));
  __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 16));
  __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 32));
  __m128i x4 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 48));
  buf += 64;
  len -= 64;
  for (; len >= 64; buf += 64, len -= 64) {
    x1 = FOLD(x1, k1k2, _mm_loadu_si128((const __m128i *)(const void *)buf));
    x2 = FOLD(x2, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(buf + 16)));
    x3 = FOLD(x3, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(buf + 32)));
    x4 = FOLD(x4, k1k2, _mm_loadu_si128((const __m128i *)(const void *)(buf + 48)));
  }
  x1 = FOLD(x1, k3k4, x2);
  x1 = FOLD(x1, k3k4, x3);
  x1 = FOLD(x1, k3k4, x4);
  for (; len >= 16; buf += 16, len -= 16) x1 = FOLD(x1, k3k4, _mm_loadu_si128((const __m128i *)(const void *)buf));
#undef FOLD
  /* 128 -> 64 bits (appending 32 zero bits), 64 -> 32, then Barrett reduction. */
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), _mm_clmulepi64_si128(k3k4, x1, 0x01));
  __m128i hi = _mm_srli_si128(x1, 4);
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), k5, 0x00), hi);
  hi = x1;
  x1 = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, mask32), poly, 0x10), mask32);
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, poly, 0x00), hi);
  return (uint32_t)_mm_extract_epi32(x1, 1);
}

static int g_crc_fold; /* set at load when the CPU has PCLMULQDQ and SSE4.1 and crc32_fold matches zlib */

/* zlib's crc32 over any length, through crc32_fold where it is in use. */
static unsigned long crc32_any(unsigned long crc, const uint8_t *buf, size_t len) {
  if (g_crc_fold && len >= 64) {
    const size_t body = len & ~(size_t)15;
    crc = (unsigned long)~crc32_fold(~(uint32_t)crc, buf, body);
    buf += body;
    len -= body;
  }
  return crc32_zlib(crc, buf, len);
}

/* Turns crc32_fold on if the CPU runs it and it agrees with zlib on every length and offset tried. */
static void pick_crc(void) {
  __builtin_cpu_init();
  const char *force = getenv("VNSTORE_CRC"); /* test hook: "zlib" keeps zlib's */
  if (!__builtin_cpu_supports("pclmul") || !__builtin_cpu_supports("sse4.1") || (force != NULL && strcmp(force, "zlib") == 0)) return;
  uint8_t buf[1024 + 7];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 131u + (i >> 5));
  g_crc_fold = 1;
  for (size_t len = 64; len <= 1024 && g_crc_fold; len += 61)
    for (size_t off = 0; off < 8 && g_crc_fold; off += 3)
      if (crc32_any(0x12345678u, buf + off, len) != g_crc32(0x12345678u, buf + off, (unsigned int)len)) g_crc_fold = 0;
}
#else
static unsigned long crc32_any(unsigned long crc, const uint8_t *buf, size_t len) { return crc32_zlib(crc, buf, len); }
static const int g_crc_fold = 0;
static void pick_crc(void) {}
#endif

typedef struct {
  vn_async_t base;
  const uint8_t *data;
  size_t length;
  unsigned long crc;
} crc_job_t;

static void run_crc32(vn_async_t *self) {
  crc_job_t *job = (crc_job_t *)self;
  self->result = (double)crc32_any(job->crc, job->data, job->length);
}

static napi_value js_crc32_async(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (get_args(env, info, 2, argv, "crc32Async(data, crc)") != 0) return NULL;
  uint8_t *data;
  size_t length;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&data, &length, "data must be a Uint8Array")) return NULL;
  double crc;
  NAPI_OK(napi_get_value_double(env, argv[1], &crc));
  if (!(crc >= 0 && crc <= 4294967295.0) || crc != floor(crc)) return throw_range(env, "crc must be a u32");
  crc_job_t *job = (crc_job_t *)vn_async_new(sizeof *job, run_crc32);
  if (job == NULL) return throw_range(env, "out of memory");
  job->data = data;
  job->length = length;
  job->crc = (unsigned long)crc;
  return vn_async_queue(env, &job->base, argv, 1, "vnstore.crc32");
}

static napi_value js_decode_pages(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (get_args(env, info, 5, argv, "decodePages(payload, lengths, codecs, dst, dstOffset)") != 0) return NULL;
  uint8_t *payload;
  size_t payload_len;
  if (get_typed(env, argv[0], napi_uint8_array, (void **)&payload, &payload_len) != 0)
    return throw_type(env, "payload must be a Uint8Array");
  uint32_t *lengths;
  size_t n;
  if (get_typed(env, argv[1], napi_uint32_array, (void **)&lengths, &n) != 0)
    return throw_type(env, "lengths must be a Uint32Array");
  uint8_t *codecs;
  size_t n_codecs;
  if (get_typed(env, argv[2], napi_uint8_array, (void **)&codecs, &n_codecs) != 0 || n_codecs != n)
    return throw_type(env, "codecs must be a Uint8Array with one element per length");
  uint8_t *dst;
  size_t dst_len;
  if (get_typed(env, argv[3], napi_uint8_array, (void **)&dst, &dst_len) != 0)
    return throw_type(env, "dst must be a Uint8Array");
  size_t dst_off;
  if (get_index(env, argv[4], &dst_off) != 0 || dst_off > dst_len || n > (dst_len - dst_off) / PAGE_SIZE)
    return throw_range(env, "dst too small: need lengths.length * PAGE_SIZE bytes at dst[dstOffset]");

  /* The lengths must tile the payload exactly; anything else is a corrupt table. */
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total += lengths[i];
  if (total != (uint64_t)payload_len) {
    char msg[160];
    snprintf(msg, sizeof msg, "payload is %zu bytes but lengths sum to %llu", payload_len,
             (unsigned long long)total);
    return throw_codec(env, msg);
  }

  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    int decoded;
    const char *why = decode_one(payload + pos, lengths[i], codecs[i], dst + dst_off + i * PAGE_SIZE, &decoded);
    if (why != NULL) {
      char msg[192];
      snprintf(msg, sizeof msg, "page %zu of batch: %s (codec %u, payload %u bytes, decoded %d)", i, why,
               (unsigned)codecs[i], lengths[i], decoded);
      return throw_codec(env, msg);
    }
    pos += lengths[i];
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  pthread_once(&g_lz4_once, lz4_load);
  if (g_lz4_compress == NULL) {
    /* Fail the require() cleanly; codec.ts then falls back to the JS codec. */
    napi_throw_error(env, "E_NATIVE_UNAVAILABLE", g_lz4_error[0] ? g_lz4_error : "liblz4 unavailable");
    return NULL;
  }

  instance_t *inst = (instance_t *)calloc(1, sizeof *inst);
  if (inst == NULL) {
    napi_throw_error(env, "E_NATIVE_UNAVAILABLE", "out of memory");
    return NULL;
  }
  if (napi_set_instance_data(env, inst, instance_finalize, NULL) != napi_ok) {
    free(inst);
    napi_throw_error(env, "E_NATIVE_UNAVAILABLE", "napi_set_instance_data failed");
    return NULL;
  }

  napi_value abi, page_size, lz4_version;
  NAPI_OK(napi_create_int32(env, ADDON_ABI, &abi));
  NAPI_OK(napi_create_uint32(env, PAGE_SIZE, &page_size));
  NAPI_OK(napi_create_int32(env, g_lz4_version, &lz4_version));
  napi_property_descriptor props[] = {
      {"compressPages", NULL, js_compress_pages, NULL, NULL, NULL, napi_enumerable, NULL},
      {"compressPagesAsync", NULL, js_compress_pages_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decodeChunks", NULL, js_decode_chunks, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decodePage", NULL, js_decode_page, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decodePages", NULL, js_decode_pages, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dropCacheAsync", NULL, js_drop_cache_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"touchPagesAsync", NULL, js_touch_pages_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"prefetchSlots", NULL, js_prefetch_slots, NULL, NULL, NULL, napi_enumerable, NULL},
      {"abi", NULL, NULL, NULL, NULL, abi, napi_enumerable, NULL},
      {"pageSize", NULL, NULL, NULL, NULL, page_size, napi_enumerable, NULL},
      {"lz4Version", NULL, NULL, NULL, NULL, lz4_version, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  union { void *p; zlib_crc32_fn f; } crc = { dlsym(RTLD_DEFAULT, "crc32") };
  g_crc32 = crc.f;
  if (g_crc32 != NULL) {
    static pthread_once_t crc_once = PTHREAD_ONCE_INIT; /* the main thread and every worker load this module */
    pthread_once(&crc_once, pick_crc);
    napi_value fold;
    NAPI_OK(napi_get_boolean(env, g_crc_fold != 0, &fold));
    napi_property_descriptor crc_props[] = {
        {"crc32Async", NULL, js_crc32_async, NULL, NULL, NULL, napi_enumerable, NULL},
        {"crc32Fold", NULL, NULL, NULL, NULL, fold, napi_enumerable, NULL}, /* true: crc32_fold serves it */
    };
    NAPI_OK(napi_define_properties(env, exports, 2, crc_props));
  }
  return zstd_define(env, exports);
}

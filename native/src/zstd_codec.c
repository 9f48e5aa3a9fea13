/*
 * Batched zstd for vnstore: compress many blobs (pages or containers of pages) into consecutive zstd
 * frames in one call, decode many frames in one call, train a dictionary. Why batched: as with the
 * LZ4 page codec, one N-API trip per 4 KiB page costs about as much as the compression itself.
 *
 * libzstd is bound at run time with dlopen("libzstd.so.1") through its stable entry points (the
 * prototypes are declared below: the machines carry the runtime library, not its headers); no zstd
 * source is part of this repository. Unlike liblz4 it is optional: without it the addon still loads
 * and only these functions refuse, so the LZ4 path never depends on libzstd.
 *
 * Stored form (must match src/chunk/zstd.ts): one standard zstd frame per blob, as ZSTD_compressCCtx
 * writes it (content size in the header, no checksum: vnstore verifies page digests itself).
 */
#include "zstd_codec.h"
#include "napi_args.h"
#include "napi_async.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libzstd prototypes (zstd.h / zdict.h, stable API since zstd 1.3). */
typedef struct zstd_cctx zstd_cctx;
typedef struct zstd_dctx zstd_dctx;
typedef struct zstd_cdict zstd_cdict;
typedef struct zstd_ddict zstd_ddict;
typedef size_t (*bound_fn)(size_t);
typedef unsigned (*is_error_fn)(size_t);
typedef const char *(*error_name_fn)(size_t);
typedef unsigned (*version_fn)(void);
typedef int (*max_level_fn)(void);
typedef zstd_cctx *(*create_cctx_fn)(void);
typedef zstd_dctx *(*create_dctx_fn)(void);
typedef size_t (*free_cctx_fn)(zstd_cctx *);
typedef size_t (*free_dctx_fn)(zstd_dctx *);
typedef size_t (*compress_cctx_fn)(zstd_cctx *, void *, size_t, const void *, size_t, int);
typedef size_t (*decompress_dctx_fn)(zstd_dctx *, void *, size_t, const void *, size_t);
typedef zstd_cdict *(*create_cdict_fn)(const void *, size_t, int);
typedef zstd_ddict *(*create_ddict_fn)(const void *, size_t);
typedef size_t (*free_cdict_fn)(zstd_cdict *);
typedef size_t (*free_ddict_fn)(zstd_ddict *);
typedef size_t (*compress_cdict_fn)(zstd_cctx *, void *, size_t, const void *, size_t, const zstd_cdict *);
typedef size_t (*decompress_ddict_fn)(zstd_dctx *, void *, size_t, const void *, size_t, const zstd_ddict *);
typedef size_t (*train_fn)(void *, size_t, const void *, const size_t *, unsigned);

static struct {
  bound_fn bound;
  is_error_fn is_error;
  error_name_fn error_name;
  max_level_fn max_level;
  create_cctx_fn create_cctx;
  create_dctx_fn create_dctx;
  free_cctx_fn free_cctx;
  free_dctx_fn free_dctx;
  compress_cctx_fn compress;
  decompress_dctx_fn decompress;
  create_cdict_fn create_cdict;
  create_ddict_fn create_ddict;
  free_cdict_fn free_cdict;
  free_ddict_fn free_ddict;
  compress_cdict_fn compress_cdict;
  decompress_ddict_fn decompress_ddict;
  train_fn train;
  is_error_fn dict_is_error;
  error_name_fn dict_error_name;
  unsigned version; /* ZSTD_versionNumber(); 0 = not loaded */
} Z;

static pthread_once_t g_zstd_once = PTHREAD_ONCE_INIT;
static char g_zstd_error[512];

/* dlsym returns void*; a union avoids the ISO C object/function pointer conversion warning. */
typedef void (*any_fn)(void);
static any_fn sym(void *handle, const char *name, int *missing) {
  union { void *p; any_fn f; } u = { dlsym(handle, name) };
  if (u.p == NULL && *missing == 0) {
    *missing = 1;
    snprintf(g_zstd_error, sizeof g_zstd_error, "libzstd lacks %s", name);
  }
  return u.f;
}

static void zstd_load(void) {
  /* Test hook, as VNSTORE_LZ4_SONAME: another soname (never a path) to exercise the missing path. */
  const char *soname = getenv("VNSTORE_ZSTD_SONAME");
  if (soname == NULL || soname[0] == '\0') soname = "libzstd.so.1";
  if (strchr(soname, '/') != NULL) {
    snprintf(g_zstd_error, sizeof g_zstd_error, "VNSTORE_ZSTD_SONAME must be a soname, not a path");
    return;
  }
  void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    const char *why = dlerror();
    snprintf(g_zstd_error, sizeof g_zstd_error, "dlopen(%s) failed: %s", soname, why ? why : "unknown");
    return;
  }
  int missing = 0;
#define LOAD(field, type, name) Z.field = (type)sym(h, name, &missing)
  LOAD(bound, bound_fn, "ZSTD_compressBound");
  LOAD(is_error, is_error_fn, "ZSTD_isError");
  LOAD(error_name, error_name_fn, "ZSTD_getErrorName");
  LOAD(max_level, max_level_fn, "ZSTD_maxCLevel");
  LOAD(create_cctx, create_cctx_fn, "ZSTD_createCCtx");
  LOAD(create_dctx, create_dctx_fn, "ZSTD_createDCtx");
  LOAD(free_cctx, free_cctx_fn, "ZSTD_freeCCtx");
  LOAD(free_dctx, free_dctx_fn, "ZSTD_freeDCtx");
  LOAD(compress, compress_cctx_fn, "ZSTD_compressCCtx");
  LOAD(decompress, decompress_dctx_fn, "ZSTD_decompressDCtx");
  LOAD(create_cdict, create_cdict_fn, "ZSTD_createCDict");
  LOAD(create_ddict, create_ddict_fn, "ZSTD_createDDict");
  LOAD(free_cdict, free_cdict_fn, "ZSTD_freeCDict");
  LOAD(free_ddict, free_ddict_fn, "ZSTD_freeDDict");
  LOAD(compress_cdict, compress_cdict_fn, "ZSTD_compress_usingCDict");
  LOAD(decompress_ddict, decompress_ddict_fn, "ZSTD_decompress_usingDDict");
  LOAD(train, train_fn, "ZDICT_trainFromBuffer");
  LOAD(dict_is_error, is_error_fn, "ZDICT_isError");
  LOAD(dict_error_name, error_name_fn, "ZDICT_getErrorName");
#undef LOAD
  version_fn version = (version_fn)sym(h, "ZSTD_versionNumber", &missing);
  if (missing) {
    dlclose(h);
    memset(&Z, 0, sizeof Z);
    return;
  }
  Z.version = version(); /* set last: it is the "loaded" flag. The handle stays open. */
}

/* Contexts reused across calls of one JS environment (main thread only: the calls are synchronous). */
typedef struct {
  zstd_cctx *cctx;
  zstd_dctx *dctx;
} zstd_state_t;

static void state_free(void *arg) {
  zstd_state_t *s = (zstd_state_t *)arg;
  if (s->cctx != NULL) Z.free_cctx(s->cctx);
  if (s->dctx != NULL) Z.free_dctx(s->dctx);
  free(s);
}

static napi_value throw_unavailable(napi_env env) {
  napi_throw_error(env, "E_NATIVE_UNAVAILABLE", g_zstd_error[0] ? g_zstd_error : "libzstd unavailable");
  return NULL;
}

static napi_value throw_codec(napi_env env, const char *msg) {
  napi_throw_error(env, "E_CODEC", msg);
  return NULL;
}

/* The optional dictionary argument: undefined, or a non-empty Uint8Array. Returns 0 on success. */
static int get_dict(napi_env env, size_t argc, napi_value *argv, size_t at, uint8_t **dict, size_t *dict_len) {
  *dict = NULL;
  *dict_len = 0;
  if (argc <= at) return 0;
  napi_valuetype t;
  if (napi_typeof(env, argv[at], &t) != napi_ok) return -1;
  if (t == napi_undefined) return 0;
  if (arg_typed(env, argv[at], napi_uint8_array, (void **)dict, dict_len, "dict must be a Uint8Array") != 0) return -1;
  if (*dict_len == 0) {
    throw_type(env, "dict must not be empty");
    return -1;
  }
  return 0;
}

/* A checked compress batch: blob i is src[starts[i], +sizes[i]); frames go to dst back to back. */
typedef struct {
  const uint8_t *src, *dict;
  const uint32_t *starts, *sizes;
  uint32_t *lengths;
  uint8_t *dst;
  size_t n, dict_len;
  int level;
} compress_args_t;

/* Reads and checks (src, starts, sizes, level, lengths, dst[, dict]). Returns 0, or -1 with an
 * exception pending. Every range is checked here, so compressing cannot fail on bad arguments. */
static int read_compress_args(napi_env env, size_t argc, napi_value *argv, compress_args_t *a) {
  if (Z.version == 0) {
    throw_unavailable(env);
    return -1;
  }
  if (argc < 6) {
    throw_type(env, "zstdCompress(src, starts, sizes, level, lengths, dst[, dict])");
    return -1;
  }
  uint8_t *src, *dst, *dict;
  uint32_t *starts, *sizes, *lengths;
  size_t src_len, n, n_sizes, n_lengths, dst_len, dict_len;
  int32_t level;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len, "src must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&starts, &n, "starts must be a Uint32Array") ||
      arg_typed(env, argv[2], napi_uint32_array, (void **)&sizes, &n_sizes, "sizes must be a Uint32Array") ||
      arg_typed(env, argv[4], napi_uint32_array, (void **)&lengths, &n_lengths, "lengths must be a Uint32Array") ||
      arg_typed(env, argv[5], napi_uint8_array, (void **)&dst, &dst_len, "dst must be a Uint8Array") ||
      get_dict(env, argc, argv, 6, &dict, &dict_len))
    return -1;
  const char *type_error = NULL, *range_error = NULL;
  if (n_sizes != n || n_lengths != n) type_error = "sizes and lengths need one element per start";
  else if (napi_get_value_int32(env, argv[3], &level) != napi_ok) type_error = "level must be a number";
  else if (level < 1 || level > Z.max_level()) range_error = "level out of range (1 to ZSTD_maxCLevel())";
  uint64_t need = 0;
  for (size_t i = 0; type_error == NULL && range_error == NULL && i < n; i++) {
    if ((uint64_t)starts[i] + sizes[i] > (uint64_t)src_len) range_error = "blob range out of range of src";
    need += Z.bound(sizes[i]);
  }
  if (type_error == NULL && range_error == NULL && need > (uint64_t)dst_len)
    range_error = "dst too small: need the sum of zstdBound(sizes[i]) bytes";
  if (type_error != NULL || range_error != NULL) {
    if (type_error != NULL) throw_type(env, type_error);
    else throw_range(env, range_error);
    return -1;
  }
  *a = (compress_args_t){src, dict, starts, sizes, lengths, dst, n, dict_len, level};
  return 0;
}

/* Compresses a checked batch with `cctx`; returns NULL and the total in *total, or a static reason. */
static const char *compress_all(zstd_cctx *cctx, const compress_args_t *a, size_t *total) {
  zstd_cdict *cdict = NULL;
  if (a->dict != NULL && (cdict = Z.create_cdict(a->dict, a->dict_len, a->level)) == NULL) return "zstd cannot load this dictionary";
  size_t pos = 0;
  const char *fail = NULL;
  for (size_t i = 0; i < a->n; i++) {
    size_t cap = Z.bound(a->sizes[i]);
    const uint8_t *blob = a->src + a->starts[i];
    size_t r = cdict != NULL ? Z.compress_cdict(cctx, a->dst + pos, cap, blob, a->sizes[i], cdict)
                             : Z.compress(cctx, a->dst + pos, cap, blob, a->sizes[i], a->level);
    if (Z.is_error(r)) {
      fail = Z.error_name(r); /* cannot happen within the bound; reported rather than assumed */
      break;
    }
    a->lengths[i] = (uint32_t)r;
    pos += r;
  }
  if (cdict != NULL) Z.free_cdict(cdict);
  *total = pos;
  return fail;
}

/* zstdCompress(src: Uint8Array, starts: Uint32Array, sizes: Uint32Array, level: number,
 *              lengths: Uint32Array, dst: Uint8Array[, dict: Uint8Array]): number
 * Blob i is src[starts[i], +sizes[i]); its frame is written to dst after frame i-1 and its length to
 * lengths[i]. dst needs the sum of ZSTD_compressBound(sizes[i]) bytes. Returns the frames' total
 * length. Every argument is checked before anything is written. */
static napi_value js_compress(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  zstd_state_t *s;
  compress_args_t a;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&s));
  if (read_compress_args(env, argc, argv, &a) != 0) return NULL;
  if (s->cctx == NULL && (s->cctx = Z.create_cctx()) == NULL) return throw_range(env, "out of memory for a zstd context");
  size_t total;
  const char *fail = compress_all(s->cctx, &a, &total);
  if (fail != NULL) return throw_codec(env, fail);
  napi_value result;
  NAPI_OK(napi_create_double(env, (double)total, &result));
  return result;
}

typedef struct {
  vn_async_t base;
  compress_args_t a;
} compress_job_t;

static void run_compress(vn_async_t *self) {
  compress_job_t *job = (compress_job_t *)self;
  /* A context of its own: the environment's is for main-thread calls. */
  zstd_cctx *cctx = Z.create_cctx();
  if (cctx == NULL) {
    self->error = "out of memory for a zstd context";
    return;
  }
  size_t total;
  self->error = compress_all(cctx, &job->a, &total);
  self->result = (double)total;
  Z.free_cctx(cctx);
}

/* zstdCompressAsync(...same arguments as zstdCompress): Promise<number>
 * zstdCompress on the libuv thread pool, so that background recompression leaves the main thread
 * free. Arguments are checked before the job is queued; until the promise settles none of their
 * buffers may be written or transferred. */
static napi_value js_compress_async(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  compress_args_t a;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (read_compress_args(env, argc, argv, &a) != 0) return NULL;
  compress_job_t *job = (compress_job_t *)vn_async_new(sizeof *job, run_compress);
  if (job == NULL) return throw_range(env, "out of memory");
  job->a = a;
  /* Hold src, starts, sizes, lengths, dst and the dictionary (argv[3] is the level, a number). */
  napi_value held[6] = {argv[0], argv[1], argv[2], argv[4], argv[5], argv[0]};
  int nheld = 5;
  if (a.dict != NULL) held[nheld++] = argv[6];
  return vn_async_queue(env, &job->base, held, nheld, "vnstore.zstdCompress");
}

/* zstdDecompress(src: Uint8Array, offsets: Uint32Array, lengths: Uint32Array, out: Uint8Array,
 *                outStarts: Uint32Array, outSizes: Uint32Array[, dict: Uint8Array]): void
 * Frame i, at src[offsets[i], +lengths[i]), must decode to exactly outSizes[i] bytes, written at
 * out[outStarts[i]..]; zstd never writes past that room. Ranges are checked first (RangeError);
 * the first frame that does not decode throws E_CODEC naming it (earlier frames are then written,
 * its own room unspecified). */
static napi_value js_decompress(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  zstd_state_t *s;
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&s));
  if (Z.version == 0) return throw_unavailable(env);
  if (argc < 6) return throw_type(env, "zstdDecompress(src, offsets, lengths, out, outStarts, outSizes[, dict])");
  uint8_t *src, *out, *dict;
  uint32_t *offsets, *lengths, *out_starts, *out_sizes;
  size_t src_len, n, n_lengths, out_len, n_starts, n_sizes, dict_len;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&src, &src_len, "src must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&offsets, &n, "offsets must be a Uint32Array") ||
      arg_typed(env, argv[2], napi_uint32_array, (void **)&lengths, &n_lengths, "lengths must be a Uint32Array") ||
      arg_typed(env, argv[3], napi_uint8_array, (void **)&out, &out_len, "out must be a Uint8Array") ||
      arg_typed(env, argv[4], napi_uint32_array, (void **)&out_starts, &n_starts, "outStarts must be a Uint32Array") ||
      arg_typed(env, argv[5], napi_uint32_array, (void **)&out_sizes, &n_sizes, "outSizes must be a Uint32Array") ||
      get_dict(env, argc, argv, 6, &dict, &dict_len))
    return NULL;
  if (n_lengths != n || n_starts != n || n_sizes != n) return throw_type(env, "lengths, outStarts and outSizes need one element per offset");
  for (size_t i = 0; i < n; i++) {
    if ((uint64_t)offsets[i] + lengths[i] > (uint64_t)src_len) return throw_range(env, "frame range out of range of src");
    if ((uint64_t)out_starts[i] + out_sizes[i] > (uint64_t)out_len) return throw_range(env, "output range out of range of out");
  }
  if (s->dctx == NULL && (s->dctx = Z.create_dctx()) == NULL) return throw_range(env, "out of memory for a zstd context");
  zstd_ddict *ddict = NULL;
  if (dict != NULL && (ddict = Z.create_ddict(dict, dict_len)) == NULL) return throw_codec(env, "zstd cannot load this dictionary");
  char msg[192];
  msg[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    /* An empty frame range would make zstd read nothing and "succeed" on a zero-size output. */
    if (lengths[i] == 0) {
      snprintf(msg, sizeof msg, "frame %zu of batch: empty", i);
      break;
    }
    uint8_t *o = out + out_starts[i];
    size_t r = ddict != NULL ? Z.decompress_ddict(s->dctx, o, out_sizes[i], src + offsets[i], lengths[i], ddict)
                             : Z.decompress(s->dctx, o, out_sizes[i], src + offsets[i], lengths[i]);
    if (Z.is_error(r)) {
      snprintf(msg, sizeof msg, "frame %zu of batch: %s (%u bytes)", i, Z.error_name(r), lengths[i]);
      break;
    }
    if (r != out_sizes[i]) {
      snprintf(msg, sizeof msg, "frame %zu of batch decodes to %zu bytes, not %u", i, r, out_sizes[i]);
      break;
    }
  }
  if (ddict != NULL) Z.free_ddict(ddict);
  if (msg[0] != '\0') return throw_codec(env, msg);
  return NULL;
}

/* zstdTrain(samples: Uint8Array, sampleSizes: Uint32Array, capacity: number): Buffer
 * ZDICT_trainFromBuffer over the concatenated samples; returns the dictionary (at most capacity
 * bytes). Throws E_CODEC when zstd cannot train one (e.g. too few samples). */
static napi_value js_train(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (Z.version == 0) return throw_unavailable(env);
  if (argc < 3) return throw_type(env, "zstdTrain(samples, sampleSizes, capacity)");
  uint8_t *samples;
  uint32_t *sizes32;
  size_t samples_len, n;
  uint32_t capacity;
  if (arg_typed(env, argv[0], napi_uint8_array, (void **)&samples, &samples_len, "samples must be a Uint8Array") ||
      arg_typed(env, argv[1], napi_uint32_array, (void **)&sizes32, &n, "sampleSizes must be a Uint32Array"))
    return NULL;
  if (napi_get_value_uint32(env, argv[2], &capacity) != napi_ok || capacity < 256)
    return throw_range(env, "capacity must be a number of at least 256 bytes");
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total += sizes32[i];
  if (total != (uint64_t)samples_len) return throw_range(env, "sampleSizes must sum to samples.length");
  if (n > UINT32_MAX) return throw_range(env, "too many samples");
  size_t *sizes = (size_t *)malloc((n > 0 ? n : 1) * sizeof *sizes);
  uint8_t *dict = (uint8_t *)malloc(capacity);
  if (sizes == NULL || dict == NULL) {
    free(sizes);
    free(dict);
    return throw_range(env, "out of memory for dictionary training");
  }
  for (size_t i = 0; i < n; i++) sizes[i] = sizes32[i];
  size_t r = Z.train(dict, capacity, samples, sizes, (unsigned)n);
  free(sizes);
  if (Z.dict_is_error(r)) {
    char msg[160];
    snprintf(msg, sizeof msg, "zstd dictionary training failed: %s", Z.dict_error_name(r));
    free(dict);
    return throw_codec(env, msg);
  }
  napi_value result;
  void *copy;
  napi_status st = napi_create_buffer_copy(env, r, dict, &copy, &result);
  free(dict);
  if (st != napi_ok) return throw_range(env, "cannot allocate the dictionary buffer");
  return result;
}

napi_value zstd_define(napi_env env, napi_value exports) {
  pthread_once(&g_zstd_once, zstd_load);
  zstd_state_t *s = (zstd_state_t *)calloc(1, sizeof *s);
  if (s == NULL) {
    napi_throw_error(env, "E_NATIVE_UNAVAILABLE", "out of memory");
    return NULL;
  }
  if (napi_add_env_cleanup_hook(env, state_free, s) != napi_ok) {
    free(s);
    napi_throw_error(env, "E_NAPI", "napi_add_env_cleanup_hook failed");
    return NULL;
  }
  napi_value version, error, max_level;
  NAPI_OK(napi_create_uint32(env, Z.version, &version));
  NAPI_OK(napi_create_string_utf8(env, Z.version != 0 ? "" : g_zstd_error, NAPI_AUTO_LENGTH, &error));
  NAPI_OK(napi_create_int32(env, Z.version != 0 ? Z.max_level() : 0, &max_level));
  napi_property_descriptor props[] = {
      {"zstdCompress", NULL, js_compress, NULL, NULL, NULL, napi_enumerable, s},
      {"zstdCompressAsync", NULL, js_compress_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"zstdDecompress", NULL, js_decompress, NULL, NULL, NULL, napi_enumerable, s},
      {"zstdTrain", NULL, js_train, NULL, NULL, NULL, napi_enumerable, NULL},
      {"zstdVersion", NULL, NULL, NULL, NULL, version, napi_enumerable, NULL},
      {"zstdMaxLevel", NULL, NULL, NULL, NULL, max_level, napi_enumerable, NULL},
      {"zstdError", NULL, NULL, NULL, NULL, error, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

/*
 * zstd half of the vnstore_native addon (native/src/zstd_codec.c): batched zstd frames over the
 * system libzstd, bound at run time like liblz4.
 */
#ifndef VNSTORE_ZSTD_CODEC_H
#define VNSTORE_ZSTD_CODEC_H
#include <node_api.h>

/* Adds zstdCompress, zstdDecompress, zstdTrain, zstdVersion and zstdError to `exports`. Never
 * fails because libzstd is missing: then zstdVersion is 0, zstdError says why, and the functions
 * throw E_NATIVE_UNAVAILABLE. Returns NULL with an exception pending on an N-API failure. */
napi_value zstd_define(napi_env env, napi_value exports);

#endif

/*
 * Argument helpers shared by the vnstore addons (header-only: each addon is its own module).
 */
#ifndef VNSTORE_NAPI_ARGS_H
#define VNSTORE_NAPI_ARGS_H
#include <node_api.h>
#include <stddef.h>

/* Runs an N-API call; on failure makes sure an exception is pending (the call's own, else E_NAPI
 * naming the call) and returns NULL from the enclosing function, so require() or the JS call throws.
 * Used by every function and by each module's init: an init that returned NULL without a pending
 * exception would hand JS an empty exports object instead of an error. */
#define NAPI_OK(call)                                                               \
  do {                                                                              \
    if ((call) != napi_ok) {                                                        \
      bool pending_ = false;                                                        \
      napi_is_exception_pending(env, &pending_);                                    \
      if (!pending_) napi_throw_error(env, "E_NAPI", "N-API call failed: " #call); \
      return NULL;                                                                  \
    }                                                                               \
  } while (0)

static inline napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

static inline napi_value throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
  return NULL;
}

/* The call's first `n` arguments into argv (room for n), every function's prologue. Returns 0, or -1
 * with an exception pending: a TypeError with `usage` when fewer than `n` were given. */
static inline int get_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv, const char *usage) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_error(env, "E_NAPI", "N-API call failed: napi_get_cb_info");
    return -1;
  }
  if (argc < n) return throw_type(env, usage), -1;
  return 0;
}

/* Reads a typed array argument of the wanted element type. Returns 0 on success. */
static inline int get_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *length) {
  bool is_ta = false;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return -1;
  napi_typedarray_type type;
  napi_value ab;
  size_t byte_offset;
  if (napi_get_typedarray_info(env, v, &type, length, data, &ab, &byte_offset) != napi_ok) return -1;
  if (type != want) return -1;
  if (*length == 0) *data = NULL; /* detached or empty: never dereferenced */
  return 0;
}

/* get_typed, throwing a TypeError with `msg` on failure. Returns 0 on success. */
static inline int arg_typed(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *length, const char *msg) {
  if (get_typed(env, v, want, data, length) == 0) return 0;
  throw_type(env, msg);
  return -1;
}

#endif

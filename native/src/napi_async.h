/*
 * Promise-returning N-API calls whose work runs on the libuv thread pool (header-only, shared by
 * the vnstore addons). Why: a one-shot command cannot earn back a worker thread's ~90 ms start-up,
 * but the thread pool is already running; hashing and compressing there lets the main thread read
 * and apply the next block meanwhile (docs/DESIGN.md, "Thread-pool jobs").
 *
 * Contract: the typed arrays a job uses are held by references until it completes, and the caller
 * must neither transfer nor detach their buffers before the promise settles. All arguments are
 * validated on the main thread before the job is queued, so a job either runs fully or not at all;
 * `run` reports failure only through `error` (a static string).
 */
#ifndef VNSTORE_NAPI_ASYNC_H
#define VNSTORE_NAPI_ASYNC_H
#include <node_api.h>
#include <stdlib.h>

#define VN_ASYNC_MAX_REFS 6

typedef struct vn_async {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref refs[VN_ASYNC_MAX_REFS];
  int nrefs;
  const char *error; /* set by run() on failure: the promise rejects with it (code E_CODEC) */
  double result;     /* the promise's value otherwise */
  void (*run)(struct vn_async *self);
} vn_async_t;

/* Allocates a job of `size` bytes (a struct whose first member is vn_async_t). */
static inline void *vn_async_new(size_t size, void (*run)(vn_async_t *)) {
  vn_async_t *job = (vn_async_t *)calloc(1, size);
  if (job != NULL) job->run = run;
  return job;
}

/* Keeps `value` (an argument whose memory the job uses) alive until the job completes. */
static inline int vn_async_hold(napi_env env, vn_async_t *job, napi_value value) {
  if (job->nrefs >= VN_ASYNC_MAX_REFS) return -1;
  if (napi_create_reference(env, value, 1, &job->refs[job->nrefs]) != napi_ok) return -1;
  job->nrefs++;
  return 0;
}

static void vn_async_execute(napi_env env, void *data) {
  (void)env; /* no N-API calls off the main thread */
  vn_async_t *job = (vn_async_t *)data;
  job->run(job);
}

static void vn_async_release(napi_env env, vn_async_t *job) {
  for (int i = 0; i < job->nrefs; i++) napi_delete_reference(env, job->refs[i]);
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  free(job);
}

static void vn_async_complete(napi_env env, napi_status status, void *data) {
  vn_async_t *job = (vn_async_t *)data;
  napi_value value = NULL;
  if (status != napi_ok) job->error = "thread-pool job cancelled";
  if (job->error == NULL) {
    if (napi_create_double(env, job->result, &value) == napi_ok) napi_resolve_deferred(env, job->deferred, value);
  } else {
    napi_value code = NULL, msg = NULL;
    napi_create_string_utf8(env, "E_CODEC", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, job->error, NAPI_AUTO_LENGTH, &msg);
    if (napi_create_error(env, code, msg, &value) == napi_ok) napi_reject_deferred(env, job->deferred, value);
  }
  vn_async_release(env, job);
}

/* Holds the `n` values whose memory the job uses, queues the job and returns its promise; on
 * failure frees the job, throws, and returns NULL. */
static inline napi_value vn_async_queue(napi_env env, vn_async_t *job, const napi_value *held, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (vn_async_hold(env, job, held[i]) != 0) {
      vn_async_release(env, job);
      napi_throw_error(env, "E_NAPI", "cannot hold a thread-pool job's arguments");
      return NULL;
    }
  napi_value promise, resource_name;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, vn_async_execute, vn_async_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    /* A created but unqueued promise is never settled; nothing awaits it since we throw. */
    vn_async_release(env, job);
    napi_throw_error(env, "E_NAPI", "cannot queue a thread-pool job");
    return NULL;
  }
  return promise;
}

#endif

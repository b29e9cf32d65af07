/* What every test shares: pass/fail counting, CHECK macros, the final
 * summary line, fixtures, npy loading and output poisoning. */
#ifndef GDN_TEST_UTIL_H
#define GDN_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gdn.h"
#include "gdn_ref.h"
#include "npy.h"

#ifdef __cplusplus
extern "C" {
#endif

extern long gdn_test_passed;
extern long gdn_test_failed;

/* CHECK(cond, fmt, ...): one counted check; on failure prints file:line and
 * the message. Evaluates to cond (0/1). */
#define CHECK(cond, ...) gdn_test_check_ret(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
int gdn_test_check_ret(int ok, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* CHECK_STATUS(expr, expected, ctx): expr returns a gdn_status; on a
 * mismatch prints both statuses and gdn_last_error(ctx) (ctx may be NULL).
 * Evaluates to 1 when the status matched. */
#define CHECK_STATUS(expr, expected, ctx)                                                          \
    gdn_test_check_status((expr), (expected), (ctx), #expr, __FILE__, __LINE__)
int gdn_test_check_status(gdn_status got, gdn_status expected, const gdn_context *ctx,
                          const char *expr, const char *file, int line);

/* CHECK_ERROR(expr, expected, ctx, want): CHECK_STATUS, then a second
 * check that gdn_last_error(ctx) contains want (the argument and rule a
 * refused call names). Evaluates to 1 when both held. */
#define CHECK_ERROR(expr, expected, ctx, want)                                                     \
    gdn_test_check_error((expr), (expected), (ctx), (want), #expr, __FILE__, __LINE__)
int gdn_test_check_error(gdn_status got, gdn_status expected, const gdn_context *ctx,
                         const char *want, const char *expr, const char *file, int line);

/* Print "name: P passed, F failed" and return the exit code (0 if none
 * failed, 1 otherwise). */
int gdn_test_finish(const char *name);

/* The FLA fixtures directory: $GDN_FIXTURES if set, else the configured
 * GDN_FIXTURES_DIR. */
const char *gdn_test_fixtures_dir(void);

/* Read dir/name with npy_read and check dtype ("<u2", "<f4", ...) and
 * shape. 0 on success; else -1 after printing why (arr left empty). */
int gdn_test_load_npy(const char *dir, const char *name, const char *dtype, int ndim,
                      const int64_t *shape, npy_array *arr);

/* The FLA fixture cases (shared/fixtures/fla/manifest.json): B, T, Hk (its
 * "H"), Hv ("HV"), K, V; none uses cu_seqlens. */
typedef struct gdn_test_fixture {
    const char *name;
    int64_t B, T, Hk, Hv, K, V;
} gdn_test_fixture;
extern const gdn_test_fixture gdn_test_fixtures[];
extern const int gdn_test_num_fixtures;

/* Counted checks that the fixtures directory exists and that its manifest
 * lists exactly the cases of gdn_test_fixtures. Returns the directory, or
 * NULL when it is not there. */
const char *gdn_test_fixtures_checked(void);

/* One file of a fixture case: name, dtype, shape and where it goes. */
typedef struct gdn_test_npy_file {
    const char *name;
    const char *dtype;
    int ndim;
    int64_t shape[5];
    npy_array *arr;
} gdn_test_npy_file;

/* Load every file of case c (in root/c->name), all or none: a counted
 * check that they all loaded; on a failure none is left loaded. */
int gdn_test_load_fixture(const char *root, const gdn_test_fixture *c, gdn_test_npy_file *files,
                          int n);
void gdn_test_free_fixture(gdn_test_npy_file *files, int n);

/* A malloc'd fp64 copy of an "<u2" (bf16) or "<f4" array. */
double *gdn_test_npy_to_f64(const npy_array *a);

/* Fill bytes with 0xFF: bf16 and f32 NaN, so unwritten outputs show. */
void gdn_test_poison(void *ptr, size_t bytes);
/* gdn_test_alloc, then gdn_test_poison: an output buffer of n elements. */
void *gdn_test_alloc_poisoned(int64_t n, size_t size);
/* Number of NaN elements (a poisoned, unwritten element is NaN). */
int64_t gdn_test_count_nan_bf16(const gdn_bf16 *x, int64_t n);
int64_t gdn_test_count_nan_f32(const float *x, int64_t n);

/* The inputs of a forward call: the SPEC 5 draw (in, with its problem p)
 * and the options; with the Qwen gate on, opts points at A_log and dt_bias
 * (malloc'd, else NULL). */
typedef struct gdn_test_fw_inputs {
    gdn_ref_inputs in;
    gdn_forward_options opts;
    float *A_log, *dt_bias;
} gdn_test_fw_inputs;
void gdn_test_fw_inputs_free(gdn_test_fw_inputs *f);

/* A problem of the given shape, state layout and head map; cu (NULL for
 * none) and num_seqs are its cu_seqlens. */
gdn_problem gdn_test_problem(int64_t B, int64_t T, int64_t Hk, int64_t Hv, int64_t K, int64_t V,
                             gdn_state_layout layout, gdn_head_map map, const int32_t *cu,
                             int64_t num_seqs);

/* States [M, V, K] (the VK layout) transposed into a malloc'd [M, K, V]
 * (KV). */
float *gdn_test_vk_to_kv(const float *vk, int64_t M, int64_t V, int64_t K);
/* 1 when kv [M, K, V] is vk [M, V, K] transposed, element by element with
 * ==; elem picks the type: 2 bf16 (bits), 4 float, 8 double. */
int gdn_test_kv_is_vk(const void *kv, const void *vk, size_t elem, int64_t M, int64_t V, int64_t K);

/* malloc that aborts the test on failure (with n elements of size). */
void *gdn_test_alloc(int64_t n, size_t size);

/* Seconds from a monotonic clock (for reporting test times). */
double gdn_test_seconds(void);

#ifdef __cplusplus
}
#endif
#endif

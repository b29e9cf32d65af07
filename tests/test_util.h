/* What every test shares: pass/fail counting, CHECK macros, the final
 * summary line, fixtures, npy loading and output poisoning. */
#ifndef GDN_TEST_UTIL_H
#define GDN_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gdn.h"
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

/* Fill bytes with 0xFF: bf16 and f32 NaN, so unwritten outputs show. */
void gdn_test_poison(void *ptr, size_t bytes);
/* Number of NaN elements (a poisoned, unwritten element is NaN). */
int64_t gdn_test_count_nan_bf16(const gdn_bf16 *x, int64_t n);
int64_t gdn_test_count_nan_f32(const float *x, int64_t n);

/* malloc that aborts the test on failure (with n elements of size). */
void *gdn_test_alloc(int64_t n, size_t size);

/* Seconds from a monotonic clock (for reporting test times). */
double gdn_test_seconds(void);

#ifdef __cplusplus
}
#endif
#endif

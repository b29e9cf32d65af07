/* See test_util.h. */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bf16.h"

#ifndef GDN_FIXTURES_DIR
#define GDN_FIXTURES_DIR "../shared/fixtures/fla"
#endif

long gdn_test_passed = 0;
long gdn_test_failed = 0;

static int vcheck(int ok, const char *file, int line, const char *fmt, va_list ap) {
    if (ok) {
        gdn_test_passed++;
        return 1;
    }
    gdn_test_failed++;
    fprintf(stdout, "FAIL %s:%d: ", file, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    return 0;
}

int gdn_test_check_ret(int ok, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vcheck(ok, file, line, fmt, ap);
    va_end(ap);
    return r;
}

int gdn_test_check_status(gdn_status got, gdn_status expected, const gdn_context *ctx,
                          const char *expr, const char *file, int line) {
    return gdn_test_check_ret(got == expected, file, line, "%s returned %s, expected %s (%s)", expr,
                              gdn_status_string(got), gdn_status_string(expected),
                              ctx ? gdn_last_error(ctx) : "no context");
}

int gdn_test_finish(const char *name) {
    printf("%s: %ld passed, %ld failed\n", name, gdn_test_passed, gdn_test_failed);
    fflush(stdout);
    return gdn_test_failed == 0 ? 0 : 1;
}

const char *gdn_test_fixtures_dir(void) {
    const char *env = getenv("GDN_FIXTURES");
    return env && *env ? env : GDN_FIXTURES_DIR;
}

int gdn_test_load_npy(const char *dir, const char *name, const char *dtype, int ndim,
                      const int64_t *shape, npy_array *arr) {
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (npy_read(path, arr, err, sizeof err) != 0) {
        printf("cannot read %s: %s\n", path, err);
        return -1;
    }
    char want[128], got[128];
    int ok = strcmp(arr->dtype, dtype) == 0 && arr->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = arr->shape[d] == shape[d];
    if (!ok) {
        printf("%s: expected dtype %s shape %s, found dtype %s shape %s\n", path, dtype,
               npy_shape_str(ndim, shape, want, sizeof want), arr->dtype,
               npy_shape_str(arr->ndim, arr->shape, got, sizeof got));
        npy_free(arr);
        return -1;
    }
    return 0;
}

void gdn_test_poison(void *ptr, size_t bytes) {
    if (ptr) memset(ptr, 0xFF, bytes);
}

int64_t gdn_test_count_nan_bf16(const gdn_bf16 *x, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) {
        const float f = gdn_bf16_to_f32(x[i]);
        c += f != f;
    }
    return c;
}

int64_t gdn_test_count_nan_f32(const float *x, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += x[i] != x[i];
    return c;
}

void *gdn_test_alloc(int64_t n, size_t size) {
    void *p = n > 0 ? malloc((size_t)n * size) : malloc(1);
    if (!p) {
        printf("FAIL: out of memory allocating %lld x %zu bytes\n", (long long)n, size);
        exit(1);
    }
    return p;
}

double gdn_test_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

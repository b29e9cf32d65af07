/* See test_util.h. */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int gdn_test_check_error(gdn_status got, gdn_status expected, const gdn_context *ctx,
                         const char *want, const char *expr, const char *file, int line) {
    const int status_ok = gdn_test_check_status(got, expected, ctx, expr, file, line);
    const char *msg = gdn_last_error(ctx);
    const int msg_ok = gdn_test_check_ret(strstr(msg, want) != NULL, file, line,
                                          "%s: want '%s' in the message: %s", expr, want, msg);
    return status_ok && msg_ok;
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

const gdn_test_fixture gdn_test_fixtures[] = {
    {"seed_t128", 1, 128, 2, 4, 128, 128},
    {"odd_t300_b2", 2, 300, 2, 4, 128, 128},
};
const int gdn_test_num_fixtures = (int)(sizeof gdn_test_fixtures / sizeof gdn_test_fixtures[0]);

/* The manifest lists exactly gdn_test_fixtures (a minimal read: count the
 * "name" keys and find each case's name). */
static void check_manifest(const char *root) {
    char path[4096];
    snprintf(path, sizeof path, "%s/manifest.json", root);
    FILE *f = fopen(path, "rb");
    if (!CHECK(f != NULL, "cannot open %s", path)) return;
    static char text[1 << 16];
    const size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    int names = 0;
    for (const char *q = text; (q = strstr(q, "\"name\"")) != NULL; q++) names++;
    CHECK(names == gdn_test_num_fixtures,
          "%s lists %d cases, this test knows %d: add the new ones to gdn_test_fixtures", path,
          names, gdn_test_num_fixtures);
    for (int i = 0; i < gdn_test_num_fixtures; i++) {
        char quoted[128];
        snprintf(quoted, sizeof quoted, "\"%s\"", gdn_test_fixtures[i].name);
        CHECK(strstr(text, quoted) != NULL, "%s does not list case %s", path,
              gdn_test_fixtures[i].name);
    }
}

const char *gdn_test_fixtures_checked(void) {
    const char *root = gdn_test_fixtures_dir();
    struct stat st;
    if (!CHECK(stat(root, &st) == 0 && S_ISDIR(st.st_mode),
               "fixtures directory %s not found: set GDN_FIXTURES or configure with "
               "-DGDN_FIXTURES_DIR=<shared>/fixtures/fla (CI has it at ../shared beside the "
               "checkout)",
               root))
        return NULL;
    printf("fixtures: %s\n", root);
    check_manifest(root);
    return root;
}

void gdn_test_free_fixture(gdn_test_npy_file *files, int n) {
    for (int i = 0; i < n; i++) npy_free(files[i].arr);
}

int gdn_test_load_fixture(const char *root, const gdn_test_fixture *c, gdn_test_npy_file *files,
                          int n) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", root, c->name);
    for (int i = 0; i < n; i++) memset(files[i].arr, 0, sizeof *files[i].arr);
    int ok = 1;
    for (int i = 0; ok && i < n; i++)
        ok = gdn_test_load_npy(dir, files[i].name, files[i].dtype, files[i].ndim, files[i].shape,
                               files[i].arr) == 0;
    if (!CHECK(ok, "%s: fixture files missing or of the wrong shape (see above)", c->name)) {
        gdn_test_free_fixture(files, n);
        return 0;
    }
    return 1;
}

double *gdn_test_npy_to_f64(const npy_array *a) {
    double *d = gdn_test_alloc(a->count, sizeof(double));
    if (strcmp(a->dtype, "<u2") == 0) {
        const gdn_bf16 *x = a->data;
        for (int64_t i = 0; i < a->count; i++) d[i] = gdn_bf16_to_f32(x[i]);
    } else if (strcmp(a->dtype, "<f4") == 0) {
        const float *x = a->data;
        for (int64_t i = 0; i < a->count; i++) d[i] = x[i];
    } else {
        printf("FAIL: gdn_test_npy_to_f64: dtype %s is neither <u2 nor <f4\n", a->dtype);
        exit(1);
    }
    return d;
}

void gdn_test_poison(void *ptr, size_t bytes) {
    if (ptr) memset(ptr, 0xFF, bytes);
}

void *gdn_test_alloc_poisoned(int64_t n, size_t size) {
    void *p = gdn_test_alloc(n, size);
    if (n > 0) gdn_test_poison(p, (size_t)n * size);
    return p;
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

void gdn_test_fw_inputs_free(gdn_test_fw_inputs *f) {
    free(f->A_log);
    free(f->dt_bias);
    gdn_ref_inputs_free(&f->in);
}

gdn_problem gdn_test_problem(int64_t B, int64_t T, int64_t Hk, int64_t Hv, int64_t K, int64_t V,
                             gdn_state_layout layout, gdn_head_map map, const int32_t *cu,
                             int64_t num_seqs) {
    gdn_problem p;
    gdn_problem_init(&p, B, T, Hk, Hv, K, V);
    p.state_layout = layout;
    p.head_map = map;
    p.cu_seqlens = cu;
    p.num_seqs = num_seqs;
    return p;
}

float *gdn_test_vk_to_kv(const float *vk, int64_t M, int64_t V, int64_t K) {
    float *kv = gdn_test_alloc(M * V * K, sizeof(float));
    for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < V; j++)
            for (int64_t i = 0; i < K; i++) kv[(m * K + i) * V + j] = vk[(m * V + j) * K + i];
    return kv;
}

static int elem_equal(const void *a, int64_t ia, const void *b, int64_t ib, size_t elem) {
    switch (elem) {
    case 2: return ((const gdn_bf16 *)a)[ia] == ((const gdn_bf16 *)b)[ib];
    case 4: return ((const float *)a)[ia] == ((const float *)b)[ib];
    case 8: return ((const double *)a)[ia] == ((const double *)b)[ib];
    }
    printf("FAIL: gdn_test_kv_is_vk: element size %zu\n", elem);
    exit(1);
}

int gdn_test_kv_is_vk(const void *kv, const void *vk, size_t elem, int64_t M, int64_t V, int64_t K) {
    int same = 1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < V; j++)
            for (int64_t i = 0; i < K; i++)
                same &= elem_equal(kv, (m * K + i) * V + j, vk, (m * V + j) * K + i, elem);
    return same;
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

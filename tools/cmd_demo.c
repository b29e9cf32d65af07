/* gdn demo: time gdn_chunk_state on random inputs of a production shape and
 * check it against the fp64 oracle (see cli_demo_usage in gdn.c). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "devbuf.h"
#include "gdn_ref.h"

static const char *const CMD = "demo";

/* Bound on the relative Frobenius error of every output against the fp64
 * oracle: SPEC section 5's state bound. Measured 2.2e-3 (h), 1.2e-3
 * (v_new), 1.5e-3 (final state) on the CPU and on an H100 at the default
 * shapes; the bf16 storage of h alone costs about 1.6e-3. */
#define DEMO_ERROR_BOUND 3.5e-3
#define GPU_RUNS 20
#define CPU_RUNS 3
/* The oracle check covers as many leading key-head groups as keep
 * B*T*Hv_checked*K*V under this (about a second of fp64 loops). */
#define CHECK_BUDGET 6.0e8

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Copy x[outer][0:hs][inner] out of x[outer][H][inner] (elem bytes each). */
static void *head_slice(const void *x, int64_t outer, int64_t H, int64_t hs, int64_t inner,
                        size_t elem) {
    const size_t row = (size_t)(hs * inner) * elem, src_row = (size_t)(H * inner) * elem;
    char *out = (char *)malloc((size_t)outer * row + 1);
    if (!out) return NULL;
    for (int64_t o = 0; o < outer; o++)
        memcpy(out + (size_t)o * row, (const char *)x + (size_t)o * src_row, row);
    return out;
}

typedef struct demo_result {
    double err_h, err_v, err_f, seconds;
    int64_t hv_checked;
} demo_result;

/* Relative errors of the outputs against gdn_ref_chunk_state_f64 on the
 * value heads [0, hv_checked) - with block head mapping these read exactly
 * the key heads [0, hv_checked / r), so they form a problem of their own. */
static int check(const gdn_ref_inputs *in, const gdn_bf16 *h_out, const gdn_bf16 *v_new,
                 const float *final_state, demo_result *res) {
    const gdn_problem *p = &in->p;
    const int64_t r = p->Hv / p->Hk, KV = p->K * p->V, BT = p->B * p->T;
    int64_t hk = (int64_t)(CHECK_BUDGET / ((double)BT * (double)r * (double)KV));
    if (hk < 1) hk = 1;
    if (hk > p->Hk || p->head_map != GDN_HEAD_MAP_BLOCK) hk = p->Hk;
    const int64_t hv = hk * r, N = in->N, NT = in->NT;
    gdn_problem sub = *p;
    sub.Hk = hk;
    sub.Hv = hv;
    res->hv_checked = hv;

    const double t0 = now_s();
    int ok = 0;
    gdn_bf16 *k = NULL, *w = NULL, *u = NULL, *hs = NULL, *vs = NULL;
    float *g = NULL, *h0 = NULL, *fs = NULL;
    double *rh = NULL, *rv = NULL, *rf = NULL;
    k = head_slice(in->k, BT, p->Hk, hk, p->K, 2);
    w = head_slice(in->w, BT, p->Hv, hv, p->K, 2);
    u = head_slice(in->u, BT, p->Hv, hv, p->V, 2);
    g = head_slice(in->g_cumsum, BT, p->Hv, hv, 1, 4);
    h0 = in->h0 ? head_slice(in->h0, N, p->Hv, hv, KV, 4) : NULL;
    hs = head_slice(h_out, NT, p->Hv, hv, KV, 2);
    vs = head_slice(v_new, BT, p->Hv, hv, p->V, 2);
    fs = head_slice(final_state, N, p->Hv, hv, KV, 4);
    rh = (double *)malloc((size_t)(NT * hv * KV) * sizeof(double) + 1);
    rv = (double *)malloc((size_t)(BT * hv * p->V) * sizeof(double) + 1);
    rf = (double *)malloc((size_t)(N * hv * KV) * sizeof(double) + 1);
    if (k && w && u && g && (h0 || !in->h0) && hs && vs && fs && rh && rv && rf) {
        gdn_ref_chunk_state_f64(&sub, k, w, u, g, h0, rh, rv, rf);
        res->err_h = gdn_rel_err_bf16(hs, rh, NT * hv * KV);
        res->err_v = gdn_rel_err_bf16(vs, rv, BT * hv * p->V);
        res->err_f = gdn_rel_err_f32(fs, rf, N * hv * KV);
        ok = 1;
    }
    res->seconds = now_s() - t0;
    free(k), free(w), free(u), free(g), free(h0), free(hs), free(vs), free(fs);
    free(rh), free(rv), free(rf);
    return ok ? CLI_OK : cli_error(CLI_FAIL, CMD, "out of memory for the oracle check");
}

enum { D_K, D_W, D_U, D_G, D_H0, D_H, D_V, D_F, D_WS, D_COUNT };

/* Runs on the GPU: a warm-up, then GPU_RUNS timed runs; times[] in ms. */
static int run_cuda(gdn_context *ctx, const gdn_ref_inputs *in, size_t ws_bytes, gdn_bf16 *h_out,
                    size_t h_bytes, gdn_bf16 *v_new, size_t v_bytes, float *final_state,
                    size_t f_bytes, double *times) {
    const gdn_problem *p = &in->p;
    const size_t k_bytes = (size_t)(p->B * p->T * p->Hk * p->K) * 2,
                 w_bytes = (size_t)(p->B * p->T * p->Hv * p->K) * 2,
                 u_bytes = (size_t)(p->B * p->T * p->Hv * p->V) * 2,
                 g_bytes = (size_t)(p->B * p->T * p->Hv) * 4;
    const void *host[D_COUNT] = {in->k, in->w, in->u, in->g_cumsum, in->h0};
    const size_t bytes[D_COUNT] = {k_bytes, w_bytes, u_bytes, g_bytes, f_bytes,
                                   h_bytes, v_bytes, f_bytes, ws_bytes};
    void *d[D_COUNT] = {0};
    int rc = CLI_OK;
    for (int i = 0; i < D_COUNT && rc == CLI_OK; i++) {
        if ((i == D_H0 && !in->h0) || (i == D_WS && ws_bytes == 0)) continue;
        if (gdn_dev_alloc(&d[i], bytes[i]) != 0 ||
            (host[i] && gdn_dev_upload(d[i], host[i], bytes[i]) != 0))
            rc = cli_error(CLI_FAIL, CMD, "device buffers (%zu bytes): %s", bytes[i],
                           gdn_dev_error());
    }
    for (int it = -1; it < GPU_RUNS && rc == CLI_OK; it++) {
        if (it >= 0 && gdn_dev_timer_start() != 0) {
            rc = cli_error(CLI_FAIL, CMD, "timer: %s", gdn_dev_error());
            break;
        }
        gdn_status st = gdn_chunk_state(ctx, p, d[D_K], d[D_W], d[D_U], d[D_G], d[D_H0], d[D_H],
                                        d[D_V], d[D_F], d[D_WS], ws_bytes);
        if (st != GDN_SUCCESS) {
            rc = cli_lib_error(CMD, "gdn_chunk_state", ctx, st);
            break;
        }
        if (it < 0) {
            if (gdn_dev_sync() != 0) rc = cli_error(CLI_FAIL, CMD, "warm-up: %s", gdn_dev_error());
            continue;
        }
        times[it] = gdn_dev_timer_stop();
        if (times[it] < 0) rc = cli_error(CLI_FAIL, CMD, "timer: %s", gdn_dev_error());
    }
    if (rc == CLI_OK &&
        (gdn_dev_sync() != 0 || gdn_dev_download(h_out, d[D_H], h_bytes) != 0 ||
         gdn_dev_download(v_new, d[D_V], v_bytes) != 0 ||
         gdn_dev_download(final_state, d[D_F], f_bytes) != 0))
        rc = cli_error(CLI_FAIL, CMD, "after gdn_chunk_state: %s", gdn_dev_error());
    for (int i = 0; i < D_COUNT; i++) gdn_dev_free(d[i]);
    return rc;
}

/* Runs on the CPU: a warm-up, then CPU_RUNS timed runs; times[] in ms. */
static int run_cpu(gdn_context *ctx, const gdn_ref_inputs *in, gdn_bf16 *h_out, gdn_bf16 *v_new,
                   float *final_state, double *times) {
    for (int it = -1; it < CPU_RUNS; it++) {
        const double t0 = now_s();
        gdn_status st = gdn_chunk_state(ctx, &in->p, in->k, in->w, in->u, in->g_cumsum, in->h0,
                                        h_out, v_new, final_state, NULL, 0);
        const double t1 = now_s();
        if (st != GDN_SUCCESS) return cli_lib_error(CMD, "gdn_chunk_state", ctx, st);
        if (it >= 0) times[it] = 1e3 * (t1 - t0);
    }
    return CLI_OK;
}

/* dims_opt: B, T, Hk, Hv, K, V as given, 0 where not given. */
static int demo(gdn_backend backend, int device, const int64_t *dims_opt, uint64_t seed) {
    gdn_context *ctx = NULL;
    int rc = cli_context(CMD, backend, device, &ctx);
    if (rc) return rc;
    const int gpu = gdn_context_backend(ctx) == GDN_BACKEND_CUDA;
    int64_t dims[6] = {1, gpu ? 8192 : 1024, gpu ? 16 : 4, gpu ? 32 : 8, 128, 128};
    for (int i = 0; i < 6; i++)
        if (dims_opt[i] > 0) dims[i] = dims_opt[i];

    gdn_problem shape;
    gdn_problem_init(&shape, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]);
    size_t ws_bytes = 0;
    gdn_status st = gdn_chunk_state_workspace_size(ctx, &shape, &ws_bytes);
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_state_workspace_size", ctx, st);
        gdn_context_destroy(ctx);
        return rc;
    }

    gdn_ref_inputs in;
    memset(&in, 0, sizeof in);
    gdn_bf16 *h_out = NULL, *v_new = NULL;
    float *final_state = NULL;
    double times[GPU_RUNS > CPU_RUNS ? GPU_RUNS : CPU_RUNS];
    const int runs = gpu ? GPU_RUNS : CPU_RUNS;
    const double t_make = now_s();
    if (gdn_ref_inputs_make(&in, &shape, seed, 1) != 0) {
        rc = cli_error(CLI_FAIL, CMD, "gdn_ref_inputs_make failed (out of memory?)");
        goto done;
    }
    const double make_s = now_s() - t_make;
    const gdn_problem *p = &in.p;
    const int64_t state = p->Hv * p->K * p->V;
    const size_t h_bytes = (size_t)(in.NT * state) * 2,
                 v_bytes = (size_t)(p->B * p->T * p->Hv * p->V) * 2,
                 f_bytes = (size_t)(in.N * state) * 4;
    h_out = (gdn_bf16 *)malloc(h_bytes);
    v_new = (gdn_bf16 *)malloc(v_bytes);
    final_state = (float *)malloc(f_bytes);
    if (!h_out || !v_new || !final_state) {
        rc = cli_error(CLI_FAIL, CMD, "out of memory for the outputs");
        goto done;
    }
    rc = gpu ? run_cuda(ctx, &in, ws_bytes, h_out, h_bytes, v_new, v_bytes, final_state, f_bytes,
                        times)
             : run_cpu(ctx, &in, h_out, v_new, final_state, times);
    if (rc) goto done;

    double mean = 0;
    for (int i = 0; i < runs; i++) mean += times[i] / runs;
    qsort(times, (size_t)runs, sizeof times[0], cmp_double);
    const double median =
        runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    /* Bytes moved: k, w, u, h0 read; h_out, v_new, final_state written. */
    const double bytes =
        (double)(p->B * p->T) * (double)(p->Hk * p->K + p->Hv * p->K + p->Hv * p->V) * 2.0 +
        (double)h_bytes + (double)v_bytes + 2.0 * (double)f_bytes;

    demo_result res = {0, 0, 0, 0, 0};
    if ((rc = check(&in, h_out, v_new, final_state, &res))) goto done;
    const double worst = fmax(fmax(res.err_h, res.err_v), res.err_f);
    const int pass = res.err_h <= DEMO_ERROR_BOUND && res.err_v <= DEMO_ERROR_BOUND &&
                     res.err_f <= DEMO_ERROR_BOUND; /* false for NaN */

    printf("gdn demo: inter-chunk state recurrence (gdn_chunk_state), libgdn %d.%d.%d\n",
           GDN_VERSION_MAJOR, GDN_VERSION_MINOR, GDN_VERSION_PATCH);
    printf("  backend    %s (%s%s)\n", gpu ? "cuda" : "cpu", cli_device_name(ctx),
           gpu ? "" : ", all threads");
    printf("  shape      B=%lld T=%lld Hk=%lld Hv=%lld K=%lld V=%lld (NT=%lld chunks), state vk, "
           "head map block, h0 given, seed %llu\n",
           (long long)p->B, (long long)p->T, (long long)p->Hk, (long long)p->Hv, (long long)p->K,
           (long long)p->V, (long long)in.NT, (unsigned long long)seed);
    printf("  time       %.4f ms median of %d runs (mean %.4f, min %.4f ms), after a warm-up\n",
           median, runs, mean, times[0]);
    printf("  bandwidth  %.1f GB/s (%.1f MB: k, w, u, h0 read; h, v_new, final_state written)\n",
           bytes / (median * 1e-3) / 1e9, bytes / 1e6);
    printf("  check      fp64 oracle on value heads 0..%lld of %lld (%.1f s; inputs made in "
           "%.1f s)\n",
           (long long)res.hv_checked - 1, (long long)p->Hv, res.seconds, make_s);
    printf("  rel err    h %.3e  v_new %.3e  final_state %.3e  (bound %.1e)\n", res.err_h,
           res.err_v, res.err_f, DEMO_ERROR_BOUND);
    printf("  result     %s\n", pass ? "PASS" : "FAIL");
    if (!pass)
        fprintf(stderr, "gdn demo: FAIL: largest relative error %.3e exceeds %.1e\n", worst,
                DEMO_ERROR_BOUND);
    rc = pass ? CLI_OK : CLI_FAIL;
done:
    free(h_out);
    free(v_new);
    free(final_state);
    gdn_ref_inputs_free(&in);
    gdn_context_destroy(ctx);
    return rc;
}

int cmd_demo(int argc, char **argv) {
    const char *backend_s = "auto", *device_s = "0", *seed_s = "1";
    const char *dims_s[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    const cli_opt opts[] = {
        {"backend", &backend_s}, {"device", &device_s}, {"seed", &seed_s},
        {"B", &dims_s[0]},       {"T", &dims_s[1]},     {"Hk", &dims_s[2]},
        {"Hv", &dims_s[3]},      {"K", &dims_s[4]},     {"V", &dims_s[5]},
    };
    int rc = cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]));
    if (rc < 0) {
        cli_demo_usage(stdout);
        return CLI_OK;
    }
    if (rc) return rc;
    gdn_backend backend;
    int64_t device, seed, dims[6] = {0, 0, 0, 0, 0, 0};
    static const char *const names[6] = {"B", "T", "Hk", "Hv", "K", "V"};
    if ((rc = cli_backend(CMD, backend_s, &backend)) ||
        (rc = cli_int(CMD, "device", device_s, 0, 1024, &device)) ||
        (rc = cli_int(CMD, "seed", seed_s, 0, INT64_MAX, &seed)))
        return rc;
    for (int i = 0; i < 6; i++)
        if (dims_s[i] && (rc = cli_int(CMD, names[i], dims_s[i], 1, INT32_MAX, &dims[i])))
            return rc;
    return demo(backend, (int)device, dims, (uint64_t)seed);
}

/* gdn demo: time the whole chunked forward (gdn_chunk_forward) on random
 * inputs of a production shape and check it against the fp64 oracle (see
 * cli_demo_usage in gdn.c). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bf16.h"
#include "cli.h"
#include "devbuf.h"
#include "gdn_ref.h"

static const char *const CMD = "demo";

/* Bounds on the relative Frobenius error against the fp64 oracle: SPEC
 * section 5 (FLA measures 3.5e-3 to 3.6e-3 on o, 2.6e-3 to 2.9e-3 on the
 * final state on the same kind of inputs). */
#define O_BOUND 4e-3
#define F_BOUND 3.5e-3
#define GPU_RUNS 20
#define CPU_RUNS 3
/* The oracle check covers as many leading key-head groups as keep
 * B*T*Hv_checked*K*V under this (about a second of the fp64 recurrence,
 * which takes some 2 ns per unit on one core): at q35_t8k, value heads 0..3. */
#define CHECK_BUDGET 5.5e8

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

/* Flops of the chunked forward per chunk of C = 64 tokens and value head
 * (multiply-adds x 2), as bench/bench_chunk_forward.c counts them: k k^T,
 * the WY products (w, u), the state stage (w h^T, the update), the output
 * (q k^T, P v_new, q h^T); the 64x64 triangular solve is left out. */
static double chunk_flops(double K, double V) {
    const double C = GDN_CHUNK;
    return 2 * (3 * C * C * K + 2 * C * C * V + 3 * C * K * V);
}

/* The inputs of the forward: gdn_ref_inputs_make's, with q and k taken off
 * the unit sphere (each vector scaled by 0.25..4, then rounded to bf16) so
 * that the kernel's L2 normalisation has work to do. */
static void unnormalise_qk(gdn_ref_inputs *in, uint64_t seed) {
    const gdn_problem *p = &in->p;
    gdn_rng r;
    gdn_rng_seed(&r, seed ^ 0x5eed0f0e1d5ca1e5ull);
    gdn_bf16 *x[2] = {in->q, in->k};
    for (int w = 0; w < 2; w++)
        for (int64_t m = 0; m < p->B * p->T * p->Hk; m++) {
            const float s = (float)(0.25 * pow(16.0, gdn_rng_uniform(&r)));
            gdn_bf16 *row = x[w] + m * p->K;
            for (int64_t i = 0; i < p->K; i++)
                row[i] = gdn_f32_to_bf16(s * gdn_bf16_to_f32(row[i]));
        }
}

typedef struct demo_result {
    double err_o, err_f, seconds;
    int64_t hv_checked;
} demo_result;

/* Relative errors of o and final_state against gdn_ref_forward_f64 on the
 * value heads [0, hv_checked) - with block head mapping these read exactly
 * the key heads [0, hv_checked / r), so they form a problem of their own. */
static int check(const gdn_ref_inputs *in, const gdn_forward_options *opts, const gdn_bf16 *o,
                 const float *final_state, demo_result *res) {
    const gdn_problem *p = &in->p;
    const int64_t r = p->Hv / p->Hk, KV = p->K * p->V, BT = p->B * p->T, N = in->N;
    int64_t hk = (int64_t)(CHECK_BUDGET / ((double)BT * (double)r * (double)KV));
    if (hk < 1) hk = 1;
    if (hk > p->Hk || p->head_map != GDN_HEAD_MAP_BLOCK) hk = p->Hk;
    const int64_t hv = hk * r;
    gdn_problem sub = *p;
    sub.Hk = hk;
    sub.Hv = hv;
    res->hv_checked = hv;

    const double t0 = now_s();
    int ok = 0;
    gdn_bf16 *q = NULL, *k = NULL, *v = NULL, *os = NULL;
    float *g = NULL, *beta = NULL, *h0 = NULL, *fs = NULL;
    double *ro = NULL, *rf = NULL;
    q = head_slice(in->q, BT, p->Hk, hk, p->K, 2);
    k = head_slice(in->k, BT, p->Hk, hk, p->K, 2);
    v = head_slice(in->v, BT, p->Hv, hv, p->V, 2);
    g = head_slice(in->g, BT, p->Hv, hv, 1, 4);
    beta = head_slice(in->beta, BT, p->Hv, hv, 1, 4);
    h0 = in->h0 ? head_slice(in->h0, N, p->Hv, hv, KV, 4) : NULL;
    os = head_slice(o, BT, p->Hv, hv, p->V, 2);
    fs = head_slice(final_state, N, p->Hv, hv, KV, 4);
    ro = (double *)malloc((size_t)(BT * hv * p->V) * sizeof(double) + 1);
    rf = (double *)malloc((size_t)(N * hv * KV) * sizeof(double) + 1);
    if (q && k && v && g && beta && (h0 || !in->h0) && os && fs && ro && rf) {
        gdn_ref_forward_f64(&sub, opts, q, k, v, g, beta, h0, ro, rf, NULL);
        res->err_o = gdn_rel_err_bf16(os, ro, BT * hv * p->V);
        res->err_f = gdn_rel_err_f32(fs, rf, N * hv * KV);
        ok = 1;
    }
    res->seconds = now_s() - t0;
    free(q), free(k), free(v), free(g), free(beta), free(h0), free(os), free(fs);
    free(ro), free(rf);
    return ok ? CLI_OK : cli_error(CLI_FAIL, CMD, "out of memory for the oracle check");
}

enum { D_Q, D_K, D_V, D_G, D_BETA, D_H0, D_O, D_F, D_WS, D_COUNT };

/* Runs on the GPU: a warm-up, then GPU_RUNS timed runs; times[] in ms. */
static int run_cuda(gdn_context *ctx, const gdn_ref_inputs *in, const gdn_forward_options *opts,
                    size_t ws_bytes, gdn_bf16 *o, size_t o_bytes, float *final_state,
                    size_t f_bytes, double *times) {
    const gdn_problem *p = &in->p;
    const size_t qk_bytes = (size_t)(p->B * p->T * p->Hk * p->K) * 2,
                 g_bytes = (size_t)(p->B * p->T * p->Hv) * 4;
    const void *host[D_COUNT] = {in->q, in->k, in->v, in->g, in->beta, in->h0};
    const size_t bytes[D_COUNT] = {qk_bytes, qk_bytes, o_bytes, g_bytes, g_bytes,
                                   f_bytes,  o_bytes,  f_bytes, ws_bytes};
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
        gdn_status st = gdn_chunk_forward(ctx, p, opts, d[D_Q], d[D_K], d[D_V], d[D_G],
                                          d[D_BETA], d[D_H0], d[D_O], d[D_F], NULL, d[D_WS],
                                          ws_bytes);
        if (st != GDN_SUCCESS) {
            rc = cli_lib_error(CMD, "gdn_chunk_forward", ctx, st);
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
        (gdn_dev_sync() != 0 || gdn_dev_download(o, d[D_O], o_bytes) != 0 ||
         gdn_dev_download(final_state, d[D_F], f_bytes) != 0))
        rc = cli_error(CLI_FAIL, CMD, "after gdn_chunk_forward: %s", gdn_dev_error());
    for (int i = 0; i < D_COUNT; i++) gdn_dev_free(d[i]);
    return rc;
}

/* Runs on the CPU: a warm-up, then CPU_RUNS timed runs; times[] in ms. */
static int run_cpu(gdn_context *ctx, const gdn_ref_inputs *in, const gdn_forward_options *opts,
                   gdn_bf16 *o, float *final_state, double *times) {
    for (int it = -1; it < CPU_RUNS; it++) {
        const double t0 = now_s();
        gdn_status st = gdn_chunk_forward(ctx, &in->p, opts, in->q, in->k, in->v, in->g, in->beta,
                                          in->h0, o, final_state, NULL, NULL, 0);
        const double t1 = now_s();
        if (st != GDN_SUCCESS) return cli_lib_error(CMD, "gdn_chunk_forward", ctx, st);
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

    /* As Qwen3-Next calls the layer: q and k L2-normalised in the kernel,
     * scale 1/sqrt(K), beta and the per-token log decay g given as is. */
    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    opts.l2norm_qk = 1;

    gdn_problem shape;
    gdn_problem_init(&shape, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5]);
    size_t ws_bytes = 0;
    gdn_status st = gdn_chunk_forward_workspace_size(ctx, &shape, &opts, &ws_bytes);
    if (st != GDN_SUCCESS) {
        rc = cli_lib_error(CMD, "gdn_chunk_forward_workspace_size", ctx, st);
        gdn_context_destroy(ctx);
        return rc;
    }

    gdn_ref_inputs in;
    memset(&in, 0, sizeof in);
    gdn_bf16 *o = NULL;
    float *final_state = NULL;
    double times[GPU_RUNS > CPU_RUNS ? GPU_RUNS : CPU_RUNS];
    const int runs = gpu ? GPU_RUNS : CPU_RUNS;
    const double t_make = now_s();
    if (gdn_ref_inputs_make(&in, &shape, seed, 1) != 0) {
        rc = cli_error(CLI_FAIL, CMD, "gdn_ref_inputs_make failed (out of memory?)");
        goto done;
    }
    unnormalise_qk(&in, seed);
    const double make_s = now_s() - t_make;
    const gdn_problem *p = &in.p;
    const int64_t BT = p->B * p->T;
    const size_t o_bytes = (size_t)(BT * p->Hv * p->V) * 2,
                 f_bytes = (size_t)(in.N * p->Hv * p->K * p->V) * 4;
    o = (gdn_bf16 *)malloc(o_bytes);
    final_state = (float *)malloc(f_bytes);
    if (!o || !final_state) {
        rc = cli_error(CLI_FAIL, CMD, "out of memory for the outputs");
        goto done;
    }
    rc = gpu ? run_cuda(ctx, &in, &opts, ws_bytes, o, o_bytes, final_state, f_bytes, times)
             : run_cpu(ctx, &in, &opts, o, final_state, times);
    if (rc) goto done;

    double mean = 0;
    for (int i = 0; i < runs; i++) mean += times[i] / runs;
    qsort(times, (size_t)runs, sizeof times[0], cmp_double);
    const double median =
        runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
    /* Bytes moved: q, k, v, g, beta, h0 read; o, final_state written. */
    const double bytes = (double)BT * (double)(2 * p->Hk * p->K * 2 + p->Hv * 2 * 4) +
                         2.0 * (double)o_bytes + 2.0 * (double)f_bytes;
    const double flops =
        chunk_flops((double)p->K, (double)p->V) * (double)in.NT * (double)p->Hv;
    /* The memory floor: those bytes at the device's copy bandwidth. */
    const double copy_bw = gpu ? gdn_dev_copy_bandwidth() : -1;

    demo_result res = {0, 0, 0, 0};
    if ((rc = check(&in, &opts, o, final_state, &res))) goto done;
    const int pass = res.err_o <= O_BOUND && res.err_f <= F_BOUND; /* false for NaN */

    printf("gdn demo: chunked forward (gdn_chunk_forward), libgdn %d.%d.%d\n", GDN_VERSION_MAJOR,
           GDN_VERSION_MINOR, GDN_VERSION_PATCH);
    printf("  backend    %s (%s%s)\n", gpu ? "cuda" : "cpu", cli_device_name(ctx),
           gpu ? "" : ", all threads");
    printf("  shape      B=%lld T=%lld Hk=%lld Hv=%lld K=%lld V=%lld (NT=%lld chunks), state vk, "
           "head map block, seed %llu\n",
           (long long)p->B, (long long)p->T, (long long)p->Hk, (long long)p->Hv, (long long)p->K,
           (long long)p->V, (long long)in.NT, (unsigned long long)seed);
    printf("  options    q, k L2-normalised in the kernel, scale 1/sqrt(K), beta and per-token g "
           "as given, h0 given, final_state written\n");
    printf("  time       %.4f ms median of %d runs (mean %.4f, min %.4f ms), after a warm-up%s\n",
           median, runs, mean, times[0], gpu ? ", CUDA events" : ", wall clock");
    printf("  bandwidth  %.1f GB/s (%.1f MB: q, k, v, g, beta, h0 read; o, final_state "
           "written)\n",
           bytes / (median * 1e-3) / 1e9, bytes / 1e6);
    printf("  compute    %.2f TFLOP/s (%.3f GFLOP: the chunked algorithm's matrix products)\n",
           flops / (median * 1e-3) / 1e12, flops / 1e9);
    if (!gpu)
        printf("  floor      not applicable on the CPU\n");
    else if (copy_bw <= 0)
        printf("  floor      not measured (device copy: %s)\n", gdn_dev_error());
    else {
        const double floor_ms = bytes / copy_bw * 1e3;
        printf("  floor      %.4f ms memory floor (those bytes at %.0f GB/s, the device copy "
               "bandwidth, read+write): time %.2fx the floor, %.0f%% of floor speed\n",
               floor_ms, copy_bw / 1e9, median / floor_ms, 100.0 * floor_ms / median);
    }
    printf("  check      fp64 oracle on value heads 0..%lld of %lld (%.1f s; inputs made in "
           "%.1f s)\n",
           (long long)res.hv_checked - 1, (long long)p->Hv, res.seconds, make_s);
    printf("  rel err    o %.3e (bound %.1e)  final_state %.3e (bound %.1e)\n", res.err_o, O_BOUND,
           res.err_f, F_BOUND);
    printf("  result     %s\n", pass ? "PASS" : "FAIL");
    if (!pass)
        fprintf(stderr,
                "gdn demo: FAIL: relative error o %.3e (bound %.1e), final_state %.3e (bound "
                "%.1e)\n",
                res.err_o, O_BOUND, res.err_f, F_BOUND);
    rc = pass ? CLI_OK : CLI_FAIL;
done:
    free(o);
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

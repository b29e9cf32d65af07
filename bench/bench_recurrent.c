/* Benchmark of gdn_recurrent_forward on the CUDA backend (not a test): the
 * decode step, one token per sequence, Hk = 16, Hv = 32, K = V = 128.
 *
 * Rows: an f32 pool and a bf16 pool at N = 1, 32, 64, 128, 256, 1024 and
 * 8192 sequences (identity slots, pool_size = N), the KV layout at a few N,
 * and N = 256 scattered over a pool of 4096 slots by random state_indices.
 *
 * Timing: `calls` consecutive calls are captured in one CUDA graph, the
 * graph is replayed `inner` times between two events, and the time per call
 * is the median over 15 such repetitions. Consecutive calls in the graph
 * work on different copies of the pool (as many as make the footprint at
 * least 256 MB, five times an H100's L2), so that every call reads its
 * states from DRAM, as a decode step does when the other layers ran in
 * between; --warm uses one pool (states stay in L2 where they fit).
 *
 * The floor is the state traffic (every state of the N sequences read once
 * and written once: 2 * N * Hv * V * K * elem bytes; q, k, v, o, g, beta are
 * under 1% and not counted) divided by the device-to-device copy bandwidth
 * measured in the same run (cudaMemcpyAsync of 1 GiB in a graph, counting
 * read + write). GB/s is the same state traffic over our time.
 *
 * bench/fla_recurrent.py reads the --csv output and times FLA's
 * fused_recurrent_gated_delta_rule on the same rows.
 *
 * --max-pool (issue 4: no fault at any N up to the largest pool that fits
 * the card) replaces the rows by one run: the largest f32 pool (2 MiB a
 * state) that the free device memory holds, less 1 GiB and the other
 * buffers; N = P sequences of one token, in a random permutation of the
 * slots, so the highest slots (byte offsets far past 2^32) are read and
 * written. One call, then a few timed with events (median; no graph, no
 * pool copies: the pool is far larger than L2). The first call's o rows and
 * states of a few sequences (first, middle, last, and those in the lowest
 * and highest slot) are checked against the CPU backend on the same inputs
 * (max |gpu - cpu| / max |cpu|: <= 1e-2 for the bf16 o, 1e-4 for the f32
 * states); exit 1 when they differ more. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "bench_util.h"
#include "gdn.h"
#include "gdn_ref.h"


enum { HK = 16, HV = 32, KD = 128, VD = 128 };
static const double FOOTPRINT = 256.0 * (1 << 20); /* bytes of pool copies a graph cycles */

typedef struct row {
    const char *name;
    int64_t N;
    gdn_dtype dtype;
    gdn_state_layout layout;
    int64_t pool_size; /* 0: N slots, identity (state_indices NULL) */
} row;

static const row ROWS[] = {
    {"f32_n1", 1, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n32", 32, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n64", 64, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n128", 128, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n256", 256, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n1024", 1024, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"f32_n8192", 8192, GDN_DTYPE_F32, GDN_STATE_VK, 0},
    {"bf16_n1", 1, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n32", 32, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n64", 64, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n128", 128, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n256", 256, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n1024", 1024, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"bf16_n8192", 8192, GDN_DTYPE_BF16, GDN_STATE_VK, 0},
    {"f32_kv_n1", 1, GDN_DTYPE_F32, GDN_STATE_KV, 0},
    {"f32_kv_n256", 256, GDN_DTYPE_F32, GDN_STATE_KV, 0},
    {"f32_kv_n1024", 1024, GDN_DTYPE_F32, GDN_STATE_KV, 0},
    {"f32_n256_pool4096", 256, GDN_DTYPE_F32, GDN_STATE_VK, 4096},
};

/* One decode step's inputs for N sequences (one token each), on the host
 * and the device: q, k ~ N(0, 1/K) (about unit norm), v ~ N(0, 1), the
 * SPEC 5 gate and beta. */
typedef struct step_inputs {
    size_t nv; /* elements of v (and o) */
    gdn_bf16 *q, *k, *v;
    float *g, *beta;
    void *dq, *dk, *dv, *dg, *dbeta;
} step_inputs;

static void step_inputs_make(step_inputs *in, gdn_rng *rng, int64_t N) {
    const size_t nqk = (size_t)N * HK * KD, nv = (size_t)N * HV * VD, ng = (size_t)N * HV;
    in->nv = nv;
    in->q = malloc(nqk * 2), in->k = malloc(nqk * 2), in->v = malloc(nv * 2);
    in->g = malloc(ng * 4), in->beta = malloc(ng * 4);
    if (!in->q || !in->k || !in->v || !in->g || !in->beta) {
        fprintf(stderr, "bench_recurrent: out of host memory for %lld sequences\n", (long long)N);
        exit(1);
    }
    const double inv = 1.0 / sqrt((double)KD);
    for (size_t i = 0; i < nqk; i++) {
        in->q[i] = gdn_f32_to_bf16((float)(gdn_rng_normal(rng) * inv));
        in->k[i] = gdn_f32_to_bf16((float)(gdn_rng_normal(rng) * inv));
    }
    for (size_t i = 0; i < nv; i++) in->v[i] = gdn_f32_to_bf16((float)gdn_rng_normal(rng));
    for (size_t i = 0; i < ng; i++) {
        in->g[i] = (float)(-log1p(exp(-gdn_rng_uniform(rng))) / 4); /* logsigmoid(U)/4 */
        in->beta[i] = (float)(1.0 / (1.0 + exp(-gdn_rng_uniform(rng))));
    }
    in->dq = bench_dev_from(in->q, nqk * 2), in->dk = bench_dev_from(in->k, nqk * 2);
    in->dv = bench_dev_from(in->v, nv * 2);
    in->dg = bench_dev_from(in->g, ng * 4), in->dbeta = bench_dev_from(in->beta, ng * 4);
}

static void step_inputs_free(step_inputs *in) {
    void *bufs[] = {in->dq, in->dk, in->dv, in->dg, in->dbeta};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    free(in->q), free(in->k), free(in->v), free(in->g), free(in->beta);
}

/* A random permutation of the P slots (Fisher-Yates). */
static int32_t *shuffled_slots(gdn_rng *rng, int64_t P) {
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)P);
    if (!perm) {
        fprintf(stderr, "bench_recurrent: out of host memory for %lld indices\n", (long long)P);
        exit(1);
    }
    for (int64_t i = 0; i < P; i++) perm[i] = (int32_t)i;
    for (int64_t i = P - 1; i > 0; i--) {
        const int64_t j = (int64_t)(gdn_rng_uniform(rng) * (double)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    return perm;
}

/* max |a - b| / max |b| over n values; infinite when a value of a is not
 * finite (an o row left unwritten keeps its NaN poison). */
static double max_rel_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return m > 0 ? d / m : d;
}

/* The CPU backend on sequences seqs[0..ns) of in, each from a state of
 * 0x3C bytes (what the GPU pool starts with) in its own slot: o [ns, Hv, V]
 * as f32, state [ns, Hv, V, K]. */
static void cpu_reference(const step_inputs *in, const int64_t *seqs, int ns, float *o,
                          float *state) {
    const size_t qr = (size_t)HK * KD, vr = (size_t)HV * VD, S = vr * KD;
    gdn_bf16 *q = malloc(ns * qr * 2), *k = malloc(ns * qr * 2), *v = malloc(ns * vr * 2);
    gdn_bf16 *ob = malloc(ns * vr * 2);
    float *g = malloc(ns * HV * 4), *beta = malloc(ns * HV * 4);
    for (int i = 0; i < ns; i++) {
        const size_t n = (size_t)seqs[i];
        memcpy(q + i * qr, in->q + n * qr, qr * 2);
        memcpy(k + i * qr, in->k + n * qr, qr * 2);
        memcpy(v + i * vr, in->v + n * vr, vr * 2);
        memcpy(g + i * HV, in->g + n * HV, HV * 4);
        memcpy(beta + i * HV, in->beta + n * HV, HV * 4);
    }
    memset(state, 0x3C, ns * S * 4);
    gdn_context *cpu;
    GK(NULL, gdn_context_create(&cpu, GDN_BACKEND_CPU, 0));
    gdn_problem p;
    gdn_problem_init(&p, ns, 1, HK, HV, KD, VD);
    GK(cpu, gdn_recurrent_forward(cpu, &p, NULL, q, k, v, g, beta, state, GDN_DTYPE_F32, ns, NULL,
                                  ob, NULL));
    gdn_context_destroy(cpu);
    for (size_t i = 0; i < ns * vr; i++) o[i] = gdn_bf16_to_f32(ob[i]);
    free(q), free(k), free(v), free(ob), free(g), free(beta);
}

/* --max-pool (see the top comment). Returns the exit code. */
static int run_max_pool(const bench_device *dev, double bw) {
    enum { TIMED = 5, MAX_SAMPLES = 5 };
    cudaStream_t s = dev->stream;
    gdn_context *ctx = dev->ctx;
    const size_t S = (size_t)HV * VD * KD, state_bytes = S * 4, o_row = (size_t)HV * VD;
    /* device bytes of a sequence besides its state: q, k, v, o, g, beta, its index */
    const size_t per_seq = (size_t)(2 * HK * KD + 2 * HV * VD) * 2 + 2 * HV * 4 + 4;
    const size_t margin = (size_t)1 << 30; /* allocation granularity, the runtime's own */
    size_t free_b, total_b;
    CK(cudaMemGetInfo(&free_b, &total_b));
    if (free_b < margin + 3 * (state_bytes + per_seq)) {
        fprintf(stderr, "bench_recurrent: --max-pool: only %.2f GiB free\n",
                (double)free_b / (1 << 30));
        return 1;
    }
    const int64_t P = (int64_t)((free_b - margin) / (state_bytes + per_seq));
    const size_t pool_bytes = (size_t)P * state_bytes;
    const double gib = (double)(1 << 30);
    printf("max_pool: %.1f of %.1f GiB free; pool of %lld f32 slots = %.1f GiB (last slot at "
           "byte %.3g), N = P sequences, T = 1, random slots\n",
           (double)free_b / gib, (double)total_b / gib, (long long)P, (double)pool_bytes / gib,
           (double)(P - 1) * (double)state_bytes);
    fflush(stdout);

    gdn_rng rng;
    gdn_rng_seed(&rng, 42);
    step_inputs in;
    step_inputs_make(&in, &rng, P);
    int32_t *idx = shuffled_slots(&rng, P);
    void *didx = bench_dev_from(idx, (size_t)P * 4);
    void *dout = bench_dev_from(NULL, in.nv * 2);
    void *pool = bench_dev_from(NULL, pool_bytes);
    CK(cudaMemsetAsync(pool, 0x3C, pool_bytes, s)); /* 0.0115 as f32, as the rows */
    CK(cudaMemsetAsync(dout, 0xFF, in.nv * 2, s));  /* NaN: an unwritten o row fails */
    /* the uploads ran on the legacy stream, which s (non-blocking) does not wait for */
    CK(cudaDeviceSynchronize());

    /* samples: the first, middle and last sequence, and those in slots 0 and P-1 */
    int64_t seqs[MAX_SAMPLES] = {0, P / 2, P - 1, -1, -1};
    for (int64_t n = 0; n < P; n++) {
        if (idx[n] == 0) seqs[3] = n;
        if (idx[n] == P - 1) seqs[4] = n;
    }
    int ns = 0;
    for (int i = 0; i < MAX_SAMPLES; i++) {
        int seen = 0;
        for (int j = 0; j < ns; j++) seen |= seqs[j] == seqs[i];
        if (!seen) seqs[ns++] = seqs[i];
    }

    /* the first call, checked: later calls move the states on */
    gdn_problem p;
    gdn_problem_init(&p, P, 1, HK, HV, KD, VD);
    GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, in.dq, in.dk, in.dv, in.dg, in.dbeta, pool,
                                  GDN_DTYPE_F32, P, didx, dout, NULL));
    CK(cudaStreamSynchronize(s));
    CK(cudaGetLastError());
    float *gpu_state = malloc(ns * state_bytes), *cpu_state = malloc(ns * state_bytes);
    float *gpu_o = malloc(ns * o_row * 4), *cpu_o = malloc(ns * o_row * 4);
    gdn_bf16 *ob = malloc(ns * o_row * 2);
    for (int i = 0; i < ns; i++) {
        CK(cudaMemcpy(gpu_state + i * S, (const char *)pool + (size_t)idx[seqs[i]] * state_bytes,
                      state_bytes, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(ob + i * o_row, (const gdn_bf16 *)dout + (size_t)seqs[i] * o_row, o_row * 2,
                      cudaMemcpyDeviceToHost));
    }
    for (size_t i = 0; i < ns * o_row; i++) gpu_o[i] = gdn_bf16_to_f32(ob[i]);

    /* timed calls, one event pair each (a call takes tens of ms: launch cost is noise) */
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    double ms[TIMED];
    for (int r = 0; r < TIMED; r++) {
        CK(cudaEventRecord(a, s));
        GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, in.dq, in.dk, in.dv, in.dg, in.dbeta, pool,
                                      GDN_DTYPE_F32, P, didx, dout, NULL));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float t;
        CK(cudaEventElapsedTime(&t, a, b));
        ms[r] = t;
    }
    CK(cudaStreamSynchronize(s));
    CK(cudaGetLastError());
    qsort(ms, TIMED, sizeof(double), bench_cmp_double);
    const double med = ms[TIMED / 2], gbs = 2.0 * (double)pool_bytes / (med * 1e-3) / 1e9;

    cpu_reference(&in, seqs, ns, cpu_o, cpu_state);
    const double err_o = max_rel_err(gpu_o, cpu_o, ns * o_row);
    const double err_s = max_rel_err(gpu_state, cpu_state, ns * S);
    const int ok = err_o <= 1e-2 && err_s <= 1e-4;
    printf("max_pool: P=%lld slots (%.1f GiB f32), N=P, one step %.2f ms (median of %d), %.0f GB/s "
           "(%.0f%% of copy), o err %.1e, state err %.1e (%d sequences vs CPU), %s\n",
           (long long)P, (double)pool_bytes / gib, med, TIMED, gbs, 100.0 * gbs * 1e9 / bw, err_o,
           err_s, ns, ok ? "no fault" : "WRONG RESULTS");
    if (!ok)
        fprintf(stderr, "bench_recurrent: --max-pool: vs CPU: o err %.2e (bound 1e-2), state err "
                        "%.2e (bound 1e-4)\n",
                err_o, err_s);

    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(pool), cudaFree(dout), cudaFree(didx);
    step_inputs_free(&in);
    free(idx), free(gpu_state), free(cpu_state), free(gpu_o), free(cpu_o), free(ob);
    return ok ? 0 : 1;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--csv FILE] [--row NAME] [--warm] | --max-pool\n"
            "  --csv FILE  also write the results as CSV (bench/fla_recurrent.py reads it)\n"
            "  --row NAME  only this row (see the table)\n"
            "  --warm      one pool copy (states may stay in L2) instead of >= 256 MB of copies\n"
            "  --max-pool  instead of the rows: the largest f32 pool that fits the free memory,\n"
            "              N = P sequences in random slots; time a step, check samples against\n"
            "              the CPU backend (exit 1 if they differ); alone, no other option\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *csv_path = NULL, *only = NULL;
    int warm = 0, max_pool = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
        else if (!strcmp(argv[i], "--row") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--warm")) warm = 1;
        else if (!strcmp(argv[i], "--max-pool")) max_pool = 1;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    if (max_pool && (csv_path || only || warm)) { /* it has no rows for them to act on */
        usage(argv[0]);
        return 2;
    }
    bench_device dev;
    bench_device_open("bench_recurrent", &dev);
    const struct cudaDeviceProp prop = dev.prop;
    cudaStream_t s = dev.stream;
    gdn_context *ctx = dev.ctx;
    const double bw = bench_copy_bandwidth(s);
    printf("device %s, %d SMs, L2 %d MB; copy bandwidth %.0f GB/s (read+write)\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, bw / 1e9);
    if (max_pool) {
        const int rc = run_max_pool(&dev, bw);
        gdn_context_destroy(ctx);
        cudaStreamDestroy(s);
        return rc;
    }
    printf("decode step: Hk=%d Hv=%d K=V=%d, T=1 per sequence; %s\n", HK, HV, KD,
           warm ? "one pool (--warm)" : "pool copies cycled, >= 256 MB footprint (L2 cold)");
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv_path && !csv) {
        fprintf(stderr, "bench_recurrent: cannot write %s\n", csv_path);
        return 1;
    }
    if (csv)
        fprintf(csv, "name,N,Hk,Hv,K,V,T,dtype,layout,pool_size,copies,calls,ours_us,"
                     "state_bytes,copy_bw,warm\n");
    printf("%-18s %6s %5s %6s %7s %6s %10s %8s %9s %7s %6s\n", "row", "N", "pool", "layout",
           "slots", "copies", "ours us", "GB/s", "floor us", "xfloor", "%copy");

    gdn_rng rng;
    gdn_rng_seed(&rng, 42);
    for (unsigned ri = 0; ri < sizeof ROWS / sizeof ROWS[0]; ri++) {
        const row *rw = &ROWS[ri];
        if (only && strcmp(only, rw->name)) continue;
        const int64_t N = rw->N, P = rw->pool_size ? rw->pool_size : N;
        const size_t elem = rw->dtype == GDN_DTYPE_F32 ? 4 : 2;
        const size_t state_elems = (size_t)HV * VD * KD;
        const size_t pool_bytes = (size_t)P * state_elems * elem;
        const double traffic = 2.0 * (double)N * state_elems * elem;
        gdn_problem p;
        gdn_problem_init(&p, N, 1, HK, HV, KD, VD);
        p.state_layout = rw->layout;

        step_inputs in;
        step_inputs_make(&in, &rng, N);
        /* N distinct random slots of the pool: the first N of a permutation */
        int32_t *idx = rw->pool_size ? shuffled_slots(&rng, P) : NULL;
        void *dout = bench_dev_from(NULL, in.nv * 2);
        void *didx = idx ? bench_dev_from(idx, (size_t)N * 4) : NULL;
        int copies = warm ? 1 : (int)ceil(FOOTPRINT / (double)pool_bytes);
        if (copies < 1) copies = 1;
        const int calls = copies < 4 ? 4 : copies;
        void **pools = malloc(sizeof(void *) * copies);
        for (int c = 0; c < copies; c++) {
            pools[c] = bench_dev_from(NULL, pool_bytes);
            /* 0x3C3C..: 0.0115 as f32 and as bf16, a small finite state */
            CK(cudaMemsetAsync(pools[c], 0x3C, pool_bytes, s));
        }
        CK(cudaStreamSynchronize(s));

        /* warm-up outside the graph, then capture `calls` calls */
        GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, in.dq, in.dk, in.dv, in.dg, in.dbeta, pools[0],
                                      rw->dtype, P, didx, dout, NULL));
        CK(cudaStreamSynchronize(s));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int c = 0; c < calls; c++)
            GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, in.dq, in.dk, in.dv, in.dg, in.dbeta,
                                          pools[c % copies], rw->dtype, P, didx, dout, NULL));
        CK(cudaStreamEndCapture(s, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        const double us = bench_time_graph(exec, s, 15, 0) * 1e3 / calls;
        CK(cudaStreamSynchronize(s));

        const double floor_us = traffic / bw * 1e6;
        char slots[16];
        snprintf(slots, sizeof slots, "%s", rw->pool_size ? "random" : "n");
        printf("%-18s %6lld %5s %6s %7s %6d %10.2f %8.0f %9.2f %7.2f %5.0f%%\n", rw->name,
               (long long)N, rw->dtype == GDN_DTYPE_F32 ? "f32" : "bf16",
               rw->layout == GDN_STATE_KV ? "KV" : "VK", slots, copies, us,
               traffic / (us * 1e-6) / 1e9, floor_us, us / floor_us, 100.0 * floor_us / us);
        fflush(stdout);
        if (csv) {
            fprintf(csv, "%s,%lld,%d,%d,%d,%d,1,%s,%s,%lld,%d,%d,%.4f,%.0f,%.0f,%d\n", rw->name,
                    (long long)N, HK, HV, KD, VD, rw->dtype == GDN_DTYPE_F32 ? "f32" : "bf16",
                    rw->layout == GDN_STATE_KV ? "kv" : "vk", (long long)P, copies, calls, us,
                    traffic, bw, warm);
            fflush(csv);
        }

        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        for (int c = 0; c < copies; c++) cudaFree(pools[c]);
        free(pools);
        cudaFree(dout), cudaFree(didx);
        step_inputs_free(&in);
        free(idx);
    }
    if (csv) fclose(csv);
    gdn_context_destroy(ctx);
    cudaStreamDestroy(s);
    return 0;
}

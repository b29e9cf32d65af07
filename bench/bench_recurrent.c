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
 * fused_recurrent_gated_delta_rule on the same rows. */
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

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--csv FILE] [--row NAME] [--warm]\n"
            "  --csv FILE  also write the results as CSV (bench/fla_recurrent.py reads it)\n"
            "  --row NAME  only this row (see the table)\n"
            "  --warm      one pool copy (states may stay in L2) instead of >= 256 MB of copies\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *csv_path = NULL, *only = NULL;
    int warm = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--csv") && i + 1 < argc) csv_path = argv[++i];
        else if (!strcmp(argv[i], "--row") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--warm")) warm = 1;
        else {
            usage(argv[0]);
            return 2;
        }
    }
    bench_device dev;
    bench_device_open("bench_recurrent", &dev);
    const struct cudaDeviceProp prop = dev.prop;
    cudaStream_t s = dev.stream;
    gdn_context *ctx = dev.ctx;
    const double bw = bench_copy_bandwidth(s);
    printf("device %s, %d SMs, L2 %d MB; copy bandwidth %.0f GB/s (read+write)\n", prop.name,
           prop.multiProcessorCount, prop.l2CacheSize >> 20, bw / 1e9);
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

        /* inputs: unit-norm keys and queries, v ~ N(0,1), the SPEC 5 gate and beta */
        const size_t nqk = (size_t)N * HK * KD, nv = (size_t)N * HV * VD, ng = (size_t)N * HV;
        gdn_bf16 *q = malloc(nqk * 2), *k = malloc(nqk * 2), *v = malloc(nv * 2);
        float *g = malloc(ng * 4), *beta = malloc(ng * 4);
        const double inv = 1.0 / sqrt((double)KD);
        for (size_t i = 0; i < nqk; i++) {
            q[i] = gdn_f32_to_bf16((float)(gdn_rng_normal(&rng) * inv));
            k[i] = gdn_f32_to_bf16((float)(gdn_rng_normal(&rng) * inv));
        }
        for (size_t i = 0; i < nv; i++) v[i] = gdn_f32_to_bf16((float)gdn_rng_normal(&rng));
        for (size_t i = 0; i < ng; i++) {
            g[i] = (float)(-log1p(exp(-gdn_rng_uniform(&rng))) / 4); /* logsigmoid(U)/4 */
            beta[i] = (float)(1.0 / (1.0 + exp(-gdn_rng_uniform(&rng))));
        }
        int32_t *idx = NULL;
        if (rw->pool_size) { /* N distinct random slots of the pool */
            int32_t *perm = malloc(sizeof(int32_t) * P);
            for (int64_t i = 0; i < P; i++) perm[i] = (int32_t)i;
            for (int64_t i = P - 1; i > 0; i--) {
                const int64_t j = (int64_t)(gdn_rng_uniform(&rng) * (double)(i + 1));
                const int32_t t = perm[i];
                perm[i] = perm[j];
                perm[j] = t;
            }
            idx = perm; /* the first N entries */
        }
        void *dq = bench_dev_from(q, nqk * 2), *dk = bench_dev_from(k, nqk * 2), *dv = bench_dev_from(v, nv * 2);
        void *dg = bench_dev_from(g, ng * 4), *dbeta = bench_dev_from(beta, ng * 4);
        void *dout = bench_dev_from(NULL, nv * 2);
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
        GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, dq, dk, dv, dg, dbeta, pools[0], rw->dtype, P,
                                      didx, dout, NULL));
        CK(cudaStreamSynchronize(s));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        for (int c = 0; c < calls; c++)
            GK(ctx, gdn_recurrent_forward(ctx, &p, NULL, dq, dk, dv, dg, dbeta, pools[c % copies],
                                          rw->dtype, P, didx, dout, NULL));
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
        void *bufs[] = {dq, dk, dv, dg, dbeta, dout, didx};
        for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
        free(q), free(k), free(v), free(g), free(beta), free(idx);
    }
    if (csv) fclose(csv);
    gdn_context_destroy(ctx);
    cudaStreamDestroy(s);
    return 0;
}

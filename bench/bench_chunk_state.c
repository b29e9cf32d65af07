/* Benchmark of gdn_chunk_state on the CUDA backend (not a test).
 *
 * For each shape of issue 2's table: our time (the call captured in a CUDA
 * graph and replayed, median of many replays), the bytes it must move and
 * the floor = bytes / the device-to-device copy bandwidth measured in the
 * same run. FLA's time comes from bench/fla_chunk_state.py, which reads
 * this program's CSV and prints the combined table.
 *
 * Inputs are random of realistic magnitude (unit-norm keys, w = beta e^G k,
 * u ~ N(0, 1/4)): the kernels have no data-dependent paths, so timing does
 * not depend on whether w and u come from a real WY step. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "bench_util.h"
#include "gdn.h"
#include "gdn_ref.h"


typedef struct shape {
    const char *name;
    int64_t B, T, Hk, Hv, K;
} shape;

static const shape SHAPES[] = {
    {"seed_bench", 1, 4096, 2, 4, 128},   {"q35_t8k", 1, 8192, 16, 32, 128},
    {"q35_t32k", 1, 32768, 16, 32, 128},  {"q397_t8k", 1, 8192, 16, 64, 128},
    {"q35_b4_t8k", 4, 8192, 16, 32, 128}, {"tp8_t64k", 1, 65536, 2, 8, 128},
    {"k256_t8k", 1, 8192, 16, 32, 256},
};

int main(int argc, char **argv) {
    const char *csv_path, *only;
    bench_parse_csv_shape(argc, argv, &csv_path, &only);
    bench_device dev;
    bench_device_open("bench_chunk_state", &dev);
    const struct cudaDeviceProp prop = dev.prop;
    cudaStream_t s = dev.stream;
    gdn_context *ctx = dev.ctx;
    const double bw = bench_copy_bandwidth(s);
    printf("device %s, %d SMs; copy bandwidth %.0f GB/s (read+write)\n", prop.name,
           prop.multiProcessorCount, bw / 1e9);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv) fprintf(csv, "name,B,T,Hk,Hv,K,V,ours_ms,bytes,flops,copy_bw\n");
    printf("%-12s %9s %9s %8s %9s %7s\n", "shape", "ours ms", "GB/s", "TFLOP/s", "floor ms",
           "xfloor");

    gdn_rng rng;
    gdn_rng_seed(&rng, 42);
    for (unsigned si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; si++) {
        const shape *sh = &SHAPES[si];
        if (only && strcmp(only, sh->name)) continue;
        const int64_t K = sh->K, V = sh->K, BT = sh->B * sh->T;
        gdn_problem p;
        gdn_problem_init(&p, sh->B, sh->T, sh->Hk, sh->Hv, K, V);
        const int64_t NT = gdn_problem_num_chunks(&p), N = sh->B;
        const size_t nk = BT * sh->Hk * K, nw = BT * sh->Hv * K, nu = BT * sh->Hv * V;
        const size_t ng = BT * sh->Hv, nh = NT * sh->Hv * V * K, ns = N * sh->Hv * V * K;
        gdn_bf16 *k = malloc(nk * 2), *w = malloc(nw * 2), *u = malloc(nu * 2);
        float *g = malloc(ng * 4), *h0 = malloc(ns * 4);
        const double inv = 1.0 / sqrt((double)K);
        for (size_t i = 0; i < nk; i++) k[i] = gdn_f32_to_bf16((float)(gdn_rng_normal(&rng) * inv));
        for (size_t i = 0; i < ng; i++) {
            const int64_t t = (int64_t)(i / sh->Hv) % sh->T;
            const double gi = -log1p(exp(-gdn_rng_uniform(&rng))) / 4; /* logsigmoid(U)/4 */
            g[i] = (float)((t % 64 ? g[i - sh->Hv] : 0.0) + gi);
        }
        for (size_t i = 0; i < nw; i++)
            w[i] = gdn_f32_to_bf16((float)(0.6 * gdn_rng_normal(&rng) * inv));
        for (size_t i = 0; i < nu; i++) u[i] = gdn_f32_to_bf16((float)(0.5 * gdn_rng_normal(&rng)));
        for (size_t i = 0; i < ns; i++) h0[i] = (float)(0.1 * gdn_rng_normal(&rng));

        void *dk = bench_dev_from(k, nk * 2), *dw = bench_dev_from(w, nw * 2), *du = bench_dev_from(u, nu * 2);
        void *dg = bench_dev_from(g, ng * 4), *dh0 = bench_dev_from(h0, ns * 4);
        void *dh = bench_dev_from(NULL, nh * 2), *dvn = bench_dev_from(NULL, nu * 2), *dfs = bench_dev_from(NULL, ns * 4);
        size_t wsb = 0;
        GK(ctx, gdn_chunk_state_workspace_size(ctx, &p, &wsb));
        void *ws = wsb ? bench_dev_from(NULL, wsb) : NULL;

        /* Warm up outside the graph (first-launch attribute setting), then
         * capture one call. */
        GK(ctx, gdn_chunk_state(ctx, &p, dk, dw, du, dg, dh0, dh, dvn, dfs, ws, wsb));
        CK(cudaStreamSynchronize(s));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        GK(ctx, gdn_chunk_state(ctx, &p, dk, dw, du, dg, dh0, dh, dvn, dfs, ws, wsb));
        CK(cudaStreamEndCapture(s, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        const double ms = bench_time_graph(exec, s, 30, 10);

        const double bytes = 2.0 * (nk + nw + nu) + 2.0 * (nh + nu) + 4.0 * 2 * ns;
        const double flops = 4.0 * BT * sh->Hv * V * K;
        const double floor_ms = bytes / bw * 1e3;
        printf("%-12s %9.4f %9.0f %8.1f %9.4f %7.2f\n", sh->name, ms, bytes / (ms * 1e-3) / 1e9,
               flops / (ms * 1e-3) / 1e12, floor_ms, ms / floor_ms);
        fflush(stdout);
        if (csv)
            fprintf(csv, "%s,%lld,%lld,%lld,%lld,%lld,%lld,%.5f,%.0f,%.0f,%.0f\n", sh->name,
                    (long long)sh->B, (long long)sh->T, (long long)sh->Hk, (long long)sh->Hv,
                    (long long)K, (long long)V, ms, bytes, flops, bw);

        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        void *bufs[] = {dk, dw, du, dg, dh0, dh, dvn, dfs, ws};
        for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
        free(k), free(w), free(u), free(g), free(h0);
    }
    if (csv) fclose(csv);
    gdn_context_destroy(ctx);
    cudaStreamDestroy(s);
    return 0;
}

/* Benchmark of gdn_chunk_forward on the CUDA backend (not a test).
 *
 * For each shape of issue 3's table: our time (the call captured in a CUDA
 * graph and replayed, median of many replays); achieved GB/s and TFLOP/s;
 * and the floor, the larger of
 *   memory:  bytes of q, k, v, g, beta read and o written / the copy
 *            bandwidth measured in this run (device-to-device cudaMemcpy);
 *   compute: the chunked algorithm's flops / the bf16 matmul rate measured
 *            in this run (cuBLAS, 8192^3, bf16 in, f32 accumulate).
 * FLA's times come from bench/fla_chunk_forward.py, which reads this
 * program's CSV and prints the combined table.
 *
 * Options as Qwen3-Next calls the layer: q and k L2-normalised in the
 * kernel, beta given, g a per-token log decay, h0 given, the final state
 * written. Inputs are cheap uniform random values (the kernels have no
 * data-dependent paths). With GDN_BENCH_VARLEN=1 in the environment each
 * shape's B rows go in as one varlen batch (cu_seqlens, with its device
 * copy), the form serving engines call. GDN_BENCH_SHAPE=name:B:T:Hk:Hv:K[:V]
 * runs that one shape (V = K if left out) instead of the table. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "bench_util.h"
#include "gdn.h"


typedef struct shape {
    const char *name;
    int64_t B, T, Hk, Hv, K;
    int64_t V; /* 0: V = K */
} shape;

static const shape SHAPES[] = {
    {"q35_t8k", 1, 8192, 16, 32, 128},    {"q35_t32k", 1, 32768, 16, 32, 128},
    {"q397_t8k", 1, 8192, 16, 64, 128},   {"q35_b4_t8k", 4, 8192, 16, 32, 128},
    {"tp8_t64k", 1, 65536, 2, 8, 128},    {"tp8_t2k", 1, 2048, 2, 8, 128},
    {"k256_t8k", 1, 8192, 16, 32, 256},
};

/* xorshift64*: uniform in [0, 1), fast enough for 10^8 draws. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double urand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}

static void *dev_bf16(size_t n, double lo, double hi) {
    gdn_bf16 *h = malloc(n * 2);
    for (size_t i = 0; i < n; i++) h[i] = gdn_f32_to_bf16((float)(lo + (hi - lo) * urand()));
    void *d;
    CK(cudaMalloc(&d, n * 2));
    CK(cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static void *dev_f32(size_t n, double lo, double hi) {
    float *h = malloc(n * 4);
    for (size_t i = 0; i < n; i++) h[i] = (float)(lo + (hi - lo) * urand());
    void *d;
    CK(cudaMalloc(&d, n * 4));
    CK(cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

/* bf16 matmul rate (flop/s): cuBLAS 8192^3, bf16 operands, f32 accumulate. */
static double matmul_rate(cudaStream_t s) {
    const int n = 8192;
    void *a = dev_bf16((size_t)n * n, -1, 1), *b = dev_bf16((size_t)n * n, -1, 1), *c;
    CK(cudaMalloc(&c, (size_t)n * n * 2));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        exit(1);
    }
    cublasSetStream(h, s);
    const float one = 1.f, zero = 0.f;
    cudaGraph_t g;
    cudaGraphExec_t exec;
    /* once outside the capture (heuristics, workspace) */
    cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n,
                                     b, CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CK(cudaStreamSynchronize(s));
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    st |= cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b,
                       CUDA_R_16BF, n, &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT);
    CK(cudaStreamEndCapture(s, &g));
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasGemmEx failed (%d)\n", (int)st);
        exit(1);
    }
    CK(cudaGraphInstantiate(&exec, g, 0));
    const double ms = bench_time_graph(exec, s, 10, 5);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(g);
    cublasDestroy(h);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return 2.0 * n * n * (double)n / (ms * 1e-3);
}

/* Flops of the chunked forward per chunk of C = 64 tokens and value head
 * (multiply-adds x 2): k k^T, the WY products (w, u), the state stage
 * (w h^T, the update), the output (q k^T, P v_new, q h^T); the 64x64
 * triangular solve is left out (C^3/3, under 2%). */
static double chunk_flops(double K, double V) {
    const double C = 64;
    return 2 * (C * C * K + C * C * K + C * C * V + C * K * V + C * K * V + C * C * K +
                C * C * V + C * K * V);
}

int main(int argc, char **argv) {
    const char *csv_path, *only;
    bench_parse_csv_shape(argc, argv, &csv_path, &only);
    bench_device dev;
    bench_device_open("bench_chunk_forward", &dev);
    const struct cudaDeviceProp prop = dev.prop;
    cudaStream_t s = dev.stream;
    gdn_context *ctx = dev.ctx;
    const double bw = bench_copy_bandwidth(s), mm = matmul_rate(s);
    printf("device %s, %d SMs; copy bandwidth %.0f GB/s (read+write); bf16 matmul %.0f TFLOP/s\n",
           prop.name, prop.multiProcessorCount, bw / 1e9, mm / 1e12);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv) fprintf(csv, "name,B,T,Hk,Hv,K,V,ours_ms,bytes,flops,copy_bw,matmul_rate\n");
    printf("%-12s %9s %8s %8s %9s %9s %7s\n", "shape", "ours ms", "GB/s", "TFLOP/s",
           "mem floor", "flop floor", "xfloor");

    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    opts.l2norm_qk = 1;
    shape custom = {0};
    char custom_name[32];
    const char *cs = getenv("GDN_BENCH_SHAPE");
    if (cs && *cs) {
        const int got = sscanf(cs, "%31[^:]:%lld:%lld:%lld:%lld:%lld:%lld", custom_name,
                               (long long *)&custom.B, (long long *)&custom.T, (long long *)&custom.Hk,
                               (long long *)&custom.Hv, (long long *)&custom.K, (long long *)&custom.V);
        if ((got != 6 && got != 7) || custom.B < 1 || custom.T < 1 || custom.Hk < 1 ||
            custom.Hv < custom.Hk || custom.K < 1 || (got == 7 && custom.V < 1)) {
            fprintf(stderr, "GDN_BENCH_SHAPE: want name:B:T:Hk:Hv:K[:V] (positive, Hv >= Hk), got '%s'\n", cs);
            return 2;
        }
        custom.name = custom_name;
    }
    const unsigned nshapes = custom.name ? 1 : sizeof SHAPES / sizeof SHAPES[0];
    for (unsigned si = 0; si < nshapes; si++) {
        const shape *sh = custom.name ? &custom : &SHAPES[si];
        if (only && strcmp(only, sh->name)) continue;
        const int64_t K = sh->K, V = sh->V ? sh->V : sh->K, BT = sh->B * sh->T, N = sh->B;
        gdn_problem p;
        gdn_problem_init(&p, sh->B, sh->T, sh->Hk, sh->Hv, K, V);
        const char *vl = getenv("GDN_BENCH_VARLEN");
        int32_t *cu = NULL;
        void *dcu = NULL;
        if (vl && vl[0] == '1') {
            cu = malloc((size_t)(N + 1) * sizeof(int32_t));
            for (int64_t n = 0; n <= N; n++) cu[n] = (int32_t)(n * sh->T);
            CK(cudaMalloc(&dcu, (size_t)(N + 1) * sizeof(int32_t)));
            CK(cudaMemcpy(dcu, cu, (size_t)(N + 1) * sizeof(int32_t), cudaMemcpyHostToDevice));
            p.B = 1;
            p.T = BT;
            p.cu_seqlens = cu;
            p.cu_seqlens_device = dcu;
            p.num_seqs = N;
        }
        const int64_t NT = gdn_problem_num_chunks(&p);
        const size_t nqk = BT * sh->Hk * K, nv = BT * sh->Hv * V, ng = BT * sh->Hv;
        const size_t ns = N * sh->Hv * V * K;
        void *dq = dev_bf16(nqk, -1, 1), *dk = dev_bf16(nqk, -1, 1), *dv = dev_bf16(nv, -1, 1);
        void *dg = dev_f32(ng, -0.1, 0), *db = dev_f32(ng, 0, 1), *dh0 = dev_f32(ns, -0.1, 0.1);
        void *dO, *dfs;
        CK(cudaMalloc(&dO, nv * 2));
        CK(cudaMalloc(&dfs, ns * 4));
        size_t wsb = 0;
        GK(ctx, gdn_chunk_forward_workspace_size(ctx, &p, &opts, &wsb));
        void *ws = NULL;
        if (wsb) CK(cudaMalloc(&ws, wsb));

        GK(ctx, gdn_chunk_forward(ctx, &p, &opts, dq, dk, dv, dg, db, dh0, dO, dfs, NULL, ws, wsb));
        CK(cudaStreamSynchronize(s));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        GK(ctx, gdn_chunk_forward(ctx, &p, &opts, dq, dk, dv, dg, db, dh0, dO, dfs, NULL, ws, wsb));
        CK(cudaStreamEndCapture(s, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        const double ms = bench_time_graph(exec, s, 20, 5);

        const double bytes = 2.0 * (2 * nqk + nv) + 4.0 * 2 * ng + 2.0 * nv;
        const double flops = chunk_flops((double)K, (double)V) * (double)NT * sh->Hv;
        const double mem_ms = bytes / bw * 1e3, flop_ms = flops / mm * 1e3;
        const double floor_ms = mem_ms > flop_ms ? mem_ms : flop_ms;
        printf("%-12s %9.4f %8.0f %8.1f %9.4f %9.4f %7.2f\n", sh->name, ms,
               bytes / (ms * 1e-3) / 1e9, flops / (ms * 1e-3) / 1e12, mem_ms, flop_ms,
               ms / floor_ms);
        fflush(stdout);
        if (csv)
            fprintf(csv, "%s,%lld,%lld,%lld,%lld,%lld,%lld,%.5f,%.0f,%.0f,%.0f,%.0f\n", sh->name,
                    (long long)sh->B, (long long)sh->T, (long long)sh->Hk, (long long)sh->Hv,
                    (long long)K, (long long)V, ms, bytes, flops, bw, mm);
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        free(cu);
        void *bufs[] = {dq, dk, dv, dg, db, dh0, dO, dfs, ws, dcu};
        for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    }
    if (csv) fclose(csv);
    gdn_context_destroy(ctx);
    cudaStreamDestroy(s);
    return 0;
}

/* Benchmark of context parallelism (not a test): one sequence of T tokens
 * (Hk = 16, Hv = 32, K = V = 128, q and k L2-normalised in the kernel)
 * on P = 1, 2, 4, 8 GPUs, as many as the machine has. P = 1 is the plain
 * single-GPU gdn_chunk_forward; P > 1 runs gdn_chunk_forward_cp with one
 * host thread and one NCCL rank per GPU, each GPU holding T / P tokens.
 * The time of a call is host wall time from a barrier until the last
 * rank's stream has finished (median of the runs after a warm-up), so it
 * includes the summaries' all-gather. Prints time, speedup over P = 1 and
 * parallel efficiency (speedup / P).
 *
 * Inputs are constant byte patterns set on the device (cudaMemset): the
 * kernels have no data-dependent paths, and 1M tokens of random inputs
 * would take longer to make on the host than to run. */
#include <cuda_runtime_api.h>
#include <nccl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "gdn.h"

#define RUNS 7

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct job {
    int rank, P;
    int64_t Tr;
    ncclComm_t comm;
    pthread_barrier_t *bar;
    double times[RUNS];
    int failed;
} job;

#define CKJ(j, call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "rank %d: %s: %s\n", (j)->rank, #call, cudaGetErrorString(e_));      \
            (j)->failed = 1;                                                                       \
        }                                                                                          \
    } while (0)

static void *run(void *arg) {
    job *j = (job *)arg;
    const int64_t Hk = 16, Hv = 32, K = 128, V = 128, T = j->Tr;
    cudaSetDevice(j->rank);
    gdn_context *ctx = NULL;
    cudaStream_t s;
    CKJ(j, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    if (gdn_context_create(&ctx, GDN_BACKEND_CUDA, j->rank) != GDN_SUCCESS) j->failed = 1;
    if (!j->failed) gdn_context_set_stream(ctx, s);
    gdn_problem p;
    gdn_problem_init(&p, 1, T, Hk, Hv, K, V);
    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    opts.l2norm_qk = 1;
    void *q = NULL, *k = NULL, *v = NULL, *g = NULL, *b = NULL, *o = NULL, *fs = NULL, *ws = NULL;
    const size_t nqk = (size_t)(T * Hk * K) * 2, nv = (size_t)(T * Hv * V) * 2;
    const size_t ng = (size_t)(T * Hv) * 4, ns = (size_t)(Hv * V * K) * 4;
    CKJ(j, cudaMalloc(&q, nqk));
    CKJ(j, cudaMalloc(&k, nqk));
    CKJ(j, cudaMalloc(&v, nv));
    CKJ(j, cudaMalloc(&o, nv));
    CKJ(j, cudaMalloc(&g, ng));
    CKJ(j, cudaMalloc(&b, ng));
    CKJ(j, cudaMalloc(&fs, ns));
    if (!j->failed) {
        CKJ(j, cudaMemset(q, 0x3C, nqk)); /* bf16 0x3C3C = 0.0115 */
        CKJ(j, cudaMemset(k, 0x3D, nqk));
        CKJ(j, cudaMemset(v, 0x3E, nv));
        CKJ(j, cudaMemset(g, 0xBC, ng)); /* f32 -0.023 */
        CKJ(j, cudaMemset(b, 0x3E, ng)); /* f32 0.186 */
    }
    size_t wsb = 0;
    gdn_status st = GDN_SUCCESS;
    if (!j->failed) {
        st = j->P == 1 ? gdn_chunk_forward_workspace_size(ctx, &p, &opts, &wsb)
                       : gdn_chunk_forward_cp_workspace_size(ctx, &p, &opts, j->comm, &wsb);
        if (st == GDN_SUCCESS && wsb) CKJ(j, cudaMalloc(&ws, wsb));
    }
    for (int it = -1; it < RUNS; it++) {
        pthread_barrier_wait(j->bar);
        const double t0 = now_s();
        if (!j->failed && st == GDN_SUCCESS)
            st = j->P == 1 ? gdn_chunk_forward(ctx, &p, &opts, q, k, v, g, b, NULL, o, fs, NULL, ws,
                                               wsb)
                           : gdn_chunk_forward_cp(ctx, &p, &opts, q, k, v, g, b, NULL, o, fs, j->comm,
                                                  ws, wsb);
        if (!j->failed) CKJ(j, cudaStreamSynchronize(s));
        pthread_barrier_wait(j->bar); /* the call is done when every rank is */
        if (it >= 0) j->times[it] = now_s() - t0;
    }
    if (st != GDN_SUCCESS) {
        fprintf(stderr, "rank %d: %s: %s\n", j->rank, gdn_status_string(st), gdn_last_error(ctx));
        j->failed = 1;
    }
    void *bufs[] = {q, k, v, g, b, o, fs, ws};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) cudaFree(bufs[i]);
    gdn_context_destroy(ctx);
    cudaStreamDestroy(s);
    return NULL;
}

/* Median time (s) of one P-GPU call on T tokens; < 0 on failure. */
static double time_p(int64_t T, int P) {
    job jobs[8];
    pthread_t th[8];
    ncclComm_t comms[8];
    int devs[8];
    for (int i = 0; i < P; i++) devs[i] = i;
    if (P > 1 && ncclCommInitAll(comms, P, devs) != ncclSuccess) return -1;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)P);
    for (int r = 0; r < P; r++) {
        memset(&jobs[r], 0, sizeof jobs[r]);
        jobs[r].rank = r;
        jobs[r].P = P;
        jobs[r].Tr = T * (r + 1) / P - T * r / P;
        jobs[r].comm = P > 1 ? comms[r] : NULL;
        jobs[r].bar = &bar;
        pthread_create(&th[r], NULL, run, &jobs[r]);
    }
    int failed = 0;
    for (int r = 0; r < P; r++) {
        pthread_join(th[r], NULL);
        failed |= jobs[r].failed;
    }
    pthread_barrier_destroy(&bar);
    if (P > 1)
        for (int r = 0; r < P; r++) ncclCommDestroy(comms[r]);
    if (failed) return -1;
    qsort(jobs[0].times, RUNS, sizeof(double), bench_cmp_double);
    return jobs[0].times[RUNS / 2];
}

int main(int argc, char **argv) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        fprintf(stderr, "bench_chunk_forward_cp: no CUDA device\n");
        return 1;
    }
    int64_t Ts[2] = {262144, 1048576};
    int nT = 2;
    if (argc > 1) Ts[0] = atoll(argv[1]), nT = 1;
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("devices: %d x %s; Hk=16 Hv=32 K=V=128, q/k L2 norm in the kernel\n", n, prop.name);
    printf("| T | GPUs | time (ms) | speedup | efficiency |\n| --- | --- | --- | --- | --- |\n");
    for (int ti = 0; ti < nT; ti++) {
        double t1 = -1;
        for (int P = 1; P <= n && P <= 8; P *= 2) {
            const double t = time_p(Ts[ti], P);
            if (P == 1) t1 = t;
            if (t < 0) printf("| %lld | %d | failed | | |\n", (long long)Ts[ti], P);
            else
                printf("| %lld | %d | %.2f | %.2f | %.0f%% |\n", (long long)Ts[ti], P, t * 1e3,
                       t1 / t, 100.0 * t1 / t / P);
            fflush(stdout);
        }
    }
    return 0;
}

/* Shared pieces of the benchmark programs (bench_util.h). */
#include "bench_util.h"

#include <math.h>
#include <string.h>

void bench_device_open(const char *prog, bench_device *d) {
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        fprintf(stderr, "%s: no CUDA device\n", prog);
        exit(1);
    }
    CK(cudaGetDeviceProperties(&d->prop, 0));
    CK(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
    GK(NULL, gdn_context_create(&d->ctx, GDN_BACKEND_CUDA, 0));
    GK(d->ctx, gdn_context_set_stream(d->ctx, d->stream));
}

void bench_parse_csv_shape(int argc, char **argv, const char **csv_path, const char **shape) {
    *csv_path = *shape = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--csv") && i + 1 < argc) *csv_path = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) *shape = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--csv FILE] [--shape NAME]\n", argv[0]);
            exit(2);
        }
    }
}

int bench_cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void *bench_dev_from(const void *host, size_t bytes) {
    void *d;
    CK(cudaMalloc(&d, bytes));
    if (host) CK(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

double bench_time_graph(cudaGraphExec_t exec, cudaStream_t s, int reps, int inner) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(exec, s));
    if (inner <= 0) {
        CK(cudaEventRecord(a, s));
        CK(cudaGraphLaunch(exec, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float one;
        CK(cudaEventElapsedTime(&one, a, b));
        inner = (int)ceil(2.0 / (one > 1e-3f ? one : 1e-3f));
        if (inner > 200) inner = 200;
    }
    CK(cudaStreamSynchronize(s));
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(a, s));
        for (int i = 0; i < inner; i++) CK(cudaGraphLaunch(exec, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t[r] = ms / inner;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp_double);
    const double med = t[reps / 2];
    free(t);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return med;
}

/* The device's copy bandwidth (read + write): a 1 GiB device-to-device
 * cudaMemcpyAsync launched directly, median of 11 after warm-up. Not from a
 * CUDA graph: a memcpy node there runs on a copy engine at about 2.43 TB/s
 * on an H100, where the direct call (an SM copy) reaches about 3.0 TB/s
 * (measured 2026-11-26; a plain copy kernel: 2.83 TB/s). */
double bench_copy_bandwidth(cudaStream_t s) {
    enum { REPS = 11 };
    const size_t bytes = (size_t)1 << 30;
    void *x, *y;
    cudaEvent_t a, b;
    CK(cudaMalloc(&x, bytes));
    CK(cudaMalloc(&y, bytes));
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaMemsetAsync(x, 1, bytes, s));
    for (int i = 0; i < 3; i++) CK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
    double t[REPS];
    for (int r = 0; r < REPS; r++) {
        CK(cudaEventRecord(a, s));
        CK(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, s));
        CK(cudaEventRecord(b, s));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t[r] = ms;
    }
    qsort(t, REPS, sizeof(double), bench_cmp_double);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaFree(x);
    cudaFree(y);
    return 2.0 * bytes / (t[REPS / 2] * 1e-3);
}

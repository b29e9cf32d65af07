/* What the CUDA benchmark programs share: error checks that exit, device
 * buffers, CUDA-graph timing and the copy bandwidth the floors use. */
#ifndef GDN_BENCH_UTIL_H
#define GDN_BENCH_UTIL_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#include "gdn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CUDA runtime call or a libgdn call that must succeed (else exit 1). */
#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define GK(ctx, call)                                                                              \
    do {                                                                                           \
        gdn_status s_ = (call);                                                                    \
        if (s_ != GDN_SUCCESS) {                                                                   \
            fprintf(stderr, "%s: %s: %s\n", #call, gdn_status_string(s_), gdn_last_error(ctx));    \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* The device a benchmark runs on: device 0, a non-blocking stream and a
 * CUDA context on it; exits 1 (naming prog) when there is no device. */
typedef struct bench_device {
    struct cudaDeviceProp prop;
    cudaStream_t stream;
    gdn_context *ctx;
} bench_device;
void bench_device_open(const char *prog, bench_device *d);
/* Options "--csv FILE" and "--shape NAME" (each NULL when absent); exits 2
 * with a usage line on anything else. */
void bench_parse_csv_shape(int argc, char **argv, const char **csv_path, const char **shape);

/* qsort comparator for doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);
/* cudaMalloc of bytes, filled from host unless host is NULL. */
void *bench_dev_from(const void *host, size_t bytes);
/* Milliseconds of one replay of exec: median over reps repetitions of inner
 * replays each, after three warm-up replays; inner <= 0 chooses it so that
 * a repetition takes about 2 ms (1 to 200). */
double bench_time_graph(cudaGraphExec_t exec, cudaStream_t s, int reps, int inner);
/* Device-to-device copy bandwidth, bytes read + written per second: a
 * 1 GiB cudaMemcpy launched directly (not graph-captured), median of 11. */
double bench_copy_bandwidth(cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif

/* See devbuf.h. Built with the CUDA runtime when GDN_HAVE_CUDA is set. */
#include "devbuf.h"

#include <stdio.h>
#include <stdlib.h>

static char dev_error[256] = "";

#ifdef GDN_HAVE_CUDA
#include <cuda_runtime_api.h>

static int check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    snprintf(dev_error, sizeof dev_error, "%s: %s", what, cudaGetErrorString(e));
    return -1;
}

int gdn_dev_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
int gdn_dev_set_device(int dev) { return check(cudaSetDevice(dev), "cudaSetDevice"); }
int gdn_dev_alloc(void **ptr, size_t bytes) {
    *ptr = NULL;
    return check(cudaMalloc(ptr, bytes ? bytes : 1), "cudaMalloc");
}
void gdn_dev_free(void *ptr) {
    if (ptr) cudaFree(ptr);
}
int gdn_dev_upload(void *dst, const void *src, size_t bytes) {
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
int gdn_dev_download(void *dst, const void *src, size_t bytes) {
    return check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
int gdn_dev_fill(void *dst, int byte, size_t bytes) {
    return check(cudaMemset(dst, byte, bytes), "cudaMemset");
}
int gdn_dev_sync(void) { return check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
const char *gdn_dev_error(void) { return dev_error; }

static cudaEvent_t ev_start, ev_stop;
static int events_ready;
int gdn_dev_timer_start(void) {
    if (!events_ready) {
        if (check(cudaEventCreate(&ev_start), "cudaEventCreate") ||
            check(cudaEventCreate(&ev_stop), "cudaEventCreate"))
            return -1;
        events_ready = 1;
    }
    return check(cudaEventRecord(ev_start, 0), "cudaEventRecord");
}
double gdn_dev_timer_stop(void) {
    float ms = 0;
    if (check(cudaEventRecord(ev_stop, 0), "cudaEventRecord") ||
        check(cudaEventSynchronize(ev_stop), "cudaEventSynchronize") ||
        check(cudaEventElapsedTime(&ms, ev_start, ev_stop), "cudaEventElapsedTime"))
        return -1;
    return ms;
}
static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}
double gdn_dev_copy_bandwidth(void) {
    enum { COPIES = 5 };
    const size_t bytes = (size_t)1 << 30;
    void *src = NULL, *dst = NULL;
    cudaEvent_t a = NULL, b = NULL;
    float ms[COPIES];
    int rc = check(cudaMalloc(&src, bytes), "cudaMalloc (1 GiB)") ||
             check(cudaMalloc(&dst, bytes), "cudaMalloc (1 GiB)") ||
             check(cudaMemset(src, 1, bytes), "cudaMemset") ||
             check(cudaEventCreate(&a), "cudaEventCreate") ||
             check(cudaEventCreate(&b), "cudaEventCreate") ||
             check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
    for (int i = 0; i < COPIES && !rc; i++)
        rc = check(cudaEventRecord(a, 0), "cudaEventRecord") ||
             check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0),
                   "cudaMemcpyAsync D2D") ||
             check(cudaEventRecord(b, 0), "cudaEventRecord") ||
             check(cudaEventSynchronize(b), "cudaEventSynchronize") ||
             check(cudaEventElapsedTime(&ms[i], a, b), "cudaEventElapsedTime");
    if (a) cudaEventDestroy(a);
    if (b) cudaEventDestroy(b);
    cudaFree(src);
    cudaFree(dst);
    if (rc) {
        (void)cudaGetLastError(); /* an out-of-memory must not fail later calls */
        return -1;
    }
    qsort(ms, COPIES, sizeof ms[0], cmp_float);
    return 2.0 * (double)bytes / (ms[COPIES / 2] * 1e-3);
}
int gdn_dev_mem_info(size_t *free_bytes, size_t *total_bytes) {
    return check(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}
const char *gdn_dev_name(void) {
    static struct cudaDeviceProp prop;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
        return "none";
    return prop.name;
}

#else /* no CUDA */

static int not_built(void) {
    snprintf(dev_error, sizeof dev_error, "libgdn was built without CUDA");
    return -1;
}
int gdn_dev_available(void) { return 0; }
int gdn_dev_set_device(int dev) {
    (void)dev;
    return not_built();
}
int gdn_dev_alloc(void **ptr, size_t bytes) {
    (void)bytes;
    *ptr = NULL;
    return not_built();
}
void gdn_dev_free(void *ptr) { (void)ptr; }
int gdn_dev_upload(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return not_built();
}
int gdn_dev_download(void *dst, const void *src, size_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return not_built();
}
int gdn_dev_fill(void *dst, int byte, size_t bytes) {
    (void)dst, (void)byte, (void)bytes;
    return not_built();
}
int gdn_dev_sync(void) { return not_built(); }
const char *gdn_dev_error(void) { return dev_error; }
int gdn_dev_timer_start(void) { return not_built(); }
double gdn_dev_timer_stop(void) { return -1; }
double gdn_dev_copy_bandwidth(void) {
    not_built();
    return -1;
}
const char *gdn_dev_name(void) { return "none"; }
int gdn_dev_mem_info(size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    return not_built();
}
#endif

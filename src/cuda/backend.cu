/* CUDA backend plumbing: device selection, pointer kinds, streams. */
#include "cuda_common.cuh"

extern "C" int gdn_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

extern "C" gdn_status gdn_cuda_context_init(gdn_context *ctx, int device) {
    int n = gdn_cuda_device_count();
    if (n == 0)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED, "gdn_context_create: no CUDA device found");
    if (device < 0 || device >= n)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_context_create: device (%d) must be in [0, %d)", device, n);
    cudaDeviceProp prop;
    GDN_CUDA_TRY(ctx, cudaGetDeviceProperties(&prop, device));
    if (prop.major < 8)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "gdn_context_create: device %d (%s) is sm_%d%d; libgdn needs sm_80 or newer",
                        device, prop.name, prop.major, prop.minor);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin = prop.sharedMemPerBlockOptin;
    ctx->cc_major = prop.major;
    ctx->device = device;
    return GDN_SUCCESS;
}

extern "C" gdn_memory_kind gdn_cuda_pointer_kind(const void *ptr) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
        cudaGetLastError();
        return GDN_MEMORY_HOST;
    }
    switch (attr.type) {
    case cudaMemoryTypeDevice: return GDN_MEMORY_DEVICE;
    case cudaMemoryTypeManaged: return GDN_MEMORY_MANAGED;
    default: return GDN_MEMORY_HOST;
    }
}

extern "C" gdn_status gdn_cuda_set_stream(gdn_context *ctx, void *stream) {
    ctx->stream = stream;
    return GDN_SUCCESS;
}

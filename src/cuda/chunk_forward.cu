/* gdn_chunk_forward on CUDA: not written yet. Until the kernels land, the
 * CUDA backend reports that it does not implement the operation (after the
 * shared validation in src/chunk_forward.c); it never falls back to the
 * CPU, which would read device pointers on the host. */
#include "cuda_common.cuh"

extern "C" size_t gdn_cuda_chunk_forward_workspace_size(const gdn_context *ctx,
                                                        const gdn_problem *p) {
    (void)ctx;
    (void)p;
    return 0;
}

extern "C" gdn_status gdn_cuda_chunk_forward(gdn_context *ctx, const gdn_chunk_forward_args *a) {
    (void)a;
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                    "gdn_chunk_forward: the CUDA backend does not implement this operation yet");
}

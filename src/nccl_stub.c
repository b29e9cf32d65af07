/* gdn_chunk_forward_cp when libgdn is built without NCCL (or CUDA). */
#include "gdn_internal.h"

gdn_status gdn_cuda_chunk_forward_cp_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                    void *nccl_comm, size_t *bytes) {
    (void)p;
    (void)nccl_comm;
    (void)bytes;
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                    "gdn_chunk_forward_cp_workspace_size: libgdn was built without NCCL");
}

gdn_status gdn_cuda_chunk_forward_cp(gdn_context *ctx, const gdn_chunk_forward_args *a,
                                     void *nccl_comm) {
    (void)a;
    (void)nccl_comm;
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED, "gdn_chunk_forward_cp: libgdn was built without NCCL");
}

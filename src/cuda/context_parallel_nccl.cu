/* gdn_chunk_forward_cp: one sequence's slices on the ranks of an NCCL
 * communicator. Each rank summarises its slice (transition, partial), the
 * summaries are all-gathered (one ncclAllGather on the context's stream),
 * and each rank folds those of the ranks before it into its initial state
 * before running the forward's state and output stages. Everything is
 * stream-ordered: no host synchronisation, no allocation. */
#include <nccl.h>

#include "chunk_forward.cuh"

namespace {

gdn_status comm_info(gdn_context *ctx, const char *op, void *comm, int *nranks, int *rank) {
    ncclComm_t c = static_cast<ncclComm_t>(comm);
    int dev = -1;
    ncclResult_t r = ncclCommCount(c, nranks);
    if (r == ncclSuccess) r = ncclCommUserRank(c, rank);
    if (r == ncclSuccess) r = ncclCommCuDevice(c, &dev);
    if (r != ncclSuccess)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "%s: nccl_comm cannot be read: %s", op,
                        ncclGetErrorString(r));
    if (dev != ctx->device)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "%s: nccl_comm is on device %d but the context on device %d; they must "
                        "be the same",
                        op, dev, ctx->device);
    return GDN_SUCCESS;
}

} // namespace

extern "C" gdn_status gdn_cuda_chunk_forward_cp_workspace_size(gdn_context *ctx,
                                                               const gdn_problem *p,
                                                               void *nccl_comm, size_t *bytes) {
    int nranks = 0, rank = 0;
    gdn_status st =
        comm_info(ctx, "gdn_chunk_forward_cp_workspace_size", nccl_comm, &nranks, &rank);
    if (st != GDN_SUCCESS) return st;
    *bytes = gdn::cp_workspace_bytes(ctx, p, nranks);
    return GDN_SUCCESS;
}

extern "C" gdn_status gdn_cuda_chunk_forward_cp(gdn_context *ctx, const gdn_chunk_forward_args *a,
                                                void *nccl_comm) {
    static const char *const OP = "gdn_chunk_forward_cp";
    int nranks = 0, rank = 0;
    gdn_status st = comm_info(ctx, OP, nccl_comm, &nranks, &rank);
    if (st != GDN_SUCCESS) return st;
    gdn::DeviceGuard guard(ctx->device);
    float *send = nullptr, *recv = nullptr;
    size_t count = 0;
    if ((st = gdn::cp_summarise(ctx, a, nranks, &send, &recv, &count)) != GDN_SUCCESS) return st;
    const ncclResult_t r = ncclAllGather(send, recv, count, ncclFloat32,
                                         static_cast<ncclComm_t>(nccl_comm),
                                         static_cast<cudaStream_t>(ctx->stream));
    if (r != ncclSuccess)
        return gdn_fail(ctx, GDN_ERROR_CUDA, "%s: ncclAllGather of the slice summaries: %s", OP,
                        ncclGetErrorString(r));
    return gdn::cp_finish(ctx, a, nranks, rank);
}

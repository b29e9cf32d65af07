/*
 * gdn_recurrent_forward on CUDA: not written yet (issue 4 needs a GPU
 * session). The call is validated first (src/recurrent_forward.c), then
 * reports GDN_ERROR_NOT_SUPPORTED; it never falls back to the CPU, whose
 * host pointers the caller does not have.
 *
 * The contract the kernel must keep (gdn.h): state_indices and
 * cu_seqlens_device are read on the device only (no host synchronisation,
 * no allocation, graph-capturable); a slot < 0 or >= pool_size is padding
 * (o rows zero, the pool and state_history untouched, never an access
 * outside the pool); f32 math with the state kept in f32 across a
 * sequence's tokens, a bf16 pool rounded only on write-back.
 */
#include "cuda_common.cuh"

extern "C" gdn_status gdn_cuda_recurrent_forward(gdn_context *ctx,
                                                 const gdn_recurrent_forward_args *a) {
    (void)a;
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                    "gdn_recurrent_forward: the CUDA backend does not implement this operation "
                    "yet");
}

/* The CUDA backend's entry points when libgdn is built without CUDA. */
#include "gdn_internal.h"

/* What the operations that need CUDA report. */
static gdn_status without_cuda(gdn_context *ctx) {
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED, "libgdn was built without CUDA");
}

gdn_status gdn_cuda_context_init(gdn_context *ctx, int device) {
    (void)ctx;
    (void)device;
    return GDN_ERROR_NOT_SUPPORTED;
}
int gdn_cuda_device_count(void) { return 0; }
gdn_memory_kind gdn_cuda_pointer_kind(const void *ptr) {
    (void)ptr;
    return GDN_MEMORY_UNKNOWN;
}
gdn_status gdn_cuda_set_stream(gdn_context *ctx, void *stream) {
    (void)stream;
    return without_cuda(ctx);
}
size_t gdn_cuda_chunk_state_workspace_size(const gdn_context *ctx, const gdn_problem *p) {
    (void)ctx;
    (void)p;
    return 0;
}
gdn_status gdn_cuda_chunk_state(gdn_context *ctx, const gdn_chunk_state_args *a) {
    (void)a;
    return without_cuda(ctx);
}
size_t gdn_cuda_chunk_forward_workspace_size(const gdn_context *ctx, const gdn_problem *p) {
    (void)ctx;
    (void)p;
    return 0;
}
gdn_status gdn_cuda_chunk_forward(gdn_context *ctx, const gdn_chunk_forward_args *a) {
    (void)a;
    return without_cuda(ctx);
}
gdn_status gdn_cuda_recurrent_forward(gdn_context *ctx, const gdn_recurrent_forward_args *a) {
    (void)a;
    return without_cuda(ctx);
}
size_t gdn_cuda_chunk_forward_summary_workspace_size(const gdn_context *ctx, const gdn_problem *p) {
    (void)ctx;
    (void)p;
    return 0;
}
gdn_status gdn_cuda_chunk_forward_summary(gdn_context *ctx, const gdn_chunk_forward_args *a) {
    (void)a;
    return without_cuda(ctx);
}
gdn_status gdn_cuda_state_advance(gdn_context *ctx, const gdn_problem *p, const float *state_in,
                                  const float *transition, const float *partial, float *state_out) {
    (void)p;
    (void)state_in;
    (void)transition;
    (void)partial;
    (void)state_out;
    return without_cuda(ctx);
}

/* gdn_chunk_forward: validation shared by both backends, then dispatch. */
#include "gdn_internal.h"

static const char *const OP = "gdn_chunk_forward";
static const char *const OP_WS = "gdn_chunk_forward_workspace_size";

gdn_status gdn_chunk_forward_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                            const gdn_forward_options *opts, size_t *bytes) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_size_query(ctx, OP_WS, p, opts, bytes);
    if (st != GDN_SUCCESS) return st;
    if (ctx->backend == GDN_BACKEND_CUDA) *bytes = gdn_cuda_chunk_forward_workspace_size(ctx, p);
    return GDN_SUCCESS;
}

gdn_status gdn_chunk_forward(gdn_context *ctx, const gdn_problem *p,
                             const gdn_forward_options *opts, const gdn_bf16 *q,
                             const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                             const float *beta, const float *h0, gdn_bf16 *o, float *final_state,
                             float *chunk_states, void *workspace, size_t workspace_bytes) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"q", q, 1},
        {"k", k, 1},
        {"v", v, 1},
        {"g", g, 1},
        {"beta", beta, 1},
        {"h0", h0, 0},
        {"o", o, 1},
        {"final_state", final_state, 0},
        {"chunk_states", chunk_states, 0},
        {"workspace", workspace, 0},
        {"cu_seqlens_device", p->cu_seqlens_device, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;

    gdn_chunk_forward_args a;
    st = gdn_forward_args_init(ctx, OP, p, opts, &a);
    if (st != GDN_SUCCESS) return st;
    a.q = q, a.k = k, a.v = v, a.g = g, a.beta = beta, a.h0 = h0;
    a.o = o, a.final_state = final_state, a.chunk_states = chunk_states;
    a.workspace = workspace, a.workspace_bytes = workspace_bytes;

    if (ctx->backend == GDN_BACKEND_CUDA) {
        st = gdn_validate_workspace(ctx, OP, OP_WS, workspace, workspace_bytes,
                                    gdn_cuda_chunk_forward_workspace_size(ctx, p));
        if (st != GDN_SUCCESS) return st;
        return gdn_cuda_chunk_forward(ctx, &a);
    }
    return gdn_cpu_chunk_forward(ctx, &a);
}

/* gdn_chunk_state: validation shared by both backends, then dispatch. */
#include "gdn_internal.h"

static const char *const OP = "gdn_chunk_state";
static const char *const OP_WS = "gdn_chunk_state_workspace_size";

gdn_status gdn_chunk_state_workspace_size(gdn_context *ctx, const gdn_problem *p, size_t *bytes) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    if (!bytes) return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "%s: bytes is NULL", OP_WS);
    *bytes = 0;
    gdn_status st = gdn_validate_problem(ctx, OP_WS, p);
    if (st != GDN_SUCCESS) return st;
    if (ctx->backend == GDN_BACKEND_CUDA) *bytes = gdn_cuda_chunk_state_workspace_size(ctx, p);
    return GDN_SUCCESS;
}

gdn_status gdn_chunk_state(gdn_context *ctx, const gdn_problem *p, const gdn_bf16 *k,
                           const gdn_bf16 *w, const gdn_bf16 *u, const float *g, const float *h0,
                           gdn_bf16 *h_out, gdn_bf16 *v_new, float *final_state, void *workspace,
                           size_t workspace_bytes) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"k", k, 1},         {"w", w, 1},
        {"u", u, 1},         {"g", g, 1},
        {"h0", h0, 0},       {"h_out", h_out, 1},
        {"v_new", v_new, 0}, {"final_state", final_state, 0},
        {"workspace", workspace, 0},
        {"cu_seqlens_device", p->cu_seqlens_device, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;

    gdn_chunk_state_args a = {
        .p = p,
        .N = gdn_problem_num_seqs(p),
        .NT = gdn_problem_num_chunks(p),
        .k = k, .w = w, .u = u, .g = g, .h0 = h0,
        .h_out = h_out, .v_new = v_new, .final_state = final_state,
        .workspace = workspace, .workspace_bytes = workspace_bytes,
    };
    if (ctx->backend == GDN_BACKEND_CUDA) {
        st = gdn_validate_workspace(ctx, OP, OP_WS, workspace, workspace_bytes,
                                    gdn_cuda_chunk_state_workspace_size(ctx, p));
        if (st != GDN_SUCCESS) return st;
        return gdn_cuda_chunk_state(ctx, &a);
    }
    return gdn_cpu_chunk_state(ctx, &a);
}

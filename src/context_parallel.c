/* Context parallelism building blocks (gdn.h): the slice summary and the
 * affine state advance. Validation and dispatch here; the summary's CPU
 * kernel lives with the chunked forward, whose stages it reuses. */
#include "gdn_internal.h"

static const char *const OP_SUM_WS = "gdn_chunk_forward_summary_workspace_size";

gdn_status gdn_chunk_forward_summary_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                                    const gdn_forward_options *opts,
                                                    size_t *bytes) {
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_size_query(ctx, OP_SUM_WS, p, opts, bytes);
    if (st != GDN_SUCCESS) return st;
    if (ctx->backend == GDN_BACKEND_CUDA)
        *bytes = gdn_cuda_chunk_forward_summary_workspace_size(ctx, p);
    return GDN_SUCCESS;
}

gdn_status gdn_chunk_forward_summary(gdn_context *ctx, const gdn_problem *p,
                                     const gdn_forward_options *opts, const gdn_bf16 *k,
                                     const gdn_bf16 *v, const float *g, const float *beta,
                                     float *transition, float *partial, void *workspace,
                                     size_t workspace_bytes) {
    static const char *const OP = "gdn_chunk_forward_summary";
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"k", k, 1},           {"v", v, 1},         {"g", g, 1},
        {"beta", beta, 1},     {"transition", transition, 1},
        {"partial", partial, 1},
        {"workspace", workspace, 0},
        {"cu_seqlens_device", p->cu_seqlens_device, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;
    gdn_chunk_forward_args a;
    st = gdn_forward_args_init(ctx, OP, p, opts, &a);
    if (st != GDN_SUCCESS) return st;
    a.k = k, a.v = v, a.g = g, a.beta = beta;
    a.final_state = partial, a.transition = transition;
    a.workspace = workspace, a.workspace_bytes = workspace_bytes;
    if (ctx->backend == GDN_BACKEND_CUDA) {
        st = gdn_validate_workspace(ctx, OP, OP_SUM_WS, workspace, workspace_bytes,
                                    gdn_cuda_chunk_forward_summary_workspace_size(ctx, p));
        if (st != GDN_SUCCESS) return st;
        return gdn_cuda_chunk_forward_summary(ctx, &a);
    }
    return gdn_cpu_chunk_forward_summary(ctx, &a);
}

gdn_status gdn_state_advance(gdn_context *ctx, const gdn_problem *p, const float *state_in,
                             const float *transition, const float *partial, float *state_out) {
    static const char *const OP = "gdn_state_advance";
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"state_in", state_in, 0},
        {"transition", transition, 1},
        {"partial", partial, 1},
        {"state_out", state_out, 1},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;
    if (ctx->backend == GDN_BACKEND_CUDA)
        return gdn_cuda_state_advance(ctx, p, state_in, transition, partial, state_out);
    return gdn_cpu_state_advance(ctx, p, state_in, transition, partial, state_out);
}

/* The rules gdn_chunk_forward_cp adds to the forward's. */
static gdn_status cp_check(gdn_context *ctx, const char *op, const gdn_problem *p,
                           const void *nccl_comm) {
    if (p->cu_seqlens)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "%s: cu_seqlens must be NULL (each rank holds a slice of B sequences of "
                        "equal slice length T)",
                        op);
    if (!nccl_comm) return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "%s: nccl_comm is NULL", op);
    if (ctx->backend != GDN_BACKEND_CUDA)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "%s: context parallelism over NCCL needs the CUDA backend (on the CPU, "
                        "use gdn_chunk_forward_summary and gdn_state_advance)",
                        op);
    return GDN_SUCCESS;
}

gdn_status gdn_chunk_forward_cp_workspace_size(gdn_context *ctx, const gdn_problem *p,
                                               const gdn_forward_options *opts, void *nccl_comm,
                                               size_t *bytes) {
    static const char *const OP = "gdn_chunk_forward_cp_workspace_size";
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_size_query(ctx, OP, p, opts, bytes);
    if (st != GDN_SUCCESS) return st;
    if ((st = cp_check(ctx, OP, p, nccl_comm)) != GDN_SUCCESS) return st;
    return gdn_cuda_chunk_forward_cp_workspace_size(ctx, p, nccl_comm, bytes);
}

gdn_status gdn_chunk_forward_cp(gdn_context *ctx, const gdn_problem *p,
                                const gdn_forward_options *opts, const gdn_bf16 *q,
                                const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                                const float *beta, const float *h0, gdn_bf16 *o,
                                float *final_state, void *nccl_comm, void *workspace,
                                size_t workspace_bytes) {
    static const char *const OP = "gdn_chunk_forward_cp";
    static const char *const OP_WS = "gdn_chunk_forward_cp_workspace_size";
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    if ((st = cp_check(ctx, OP, p, nccl_comm)) != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"q", q, 1},   {"k", k, 1},   {"v", v, 1},
        {"g", g, 1},   {"beta", beta, 1}, {"h0", h0, 0},
        {"o", o, 1},   {"final_state", final_state, 0}, {"workspace", workspace, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;
    gdn_chunk_forward_args a;
    st = gdn_forward_args_init(ctx, OP, p, opts, &a);
    if (st != GDN_SUCCESS) return st;
    a.q = q, a.k = k, a.v = v, a.g = g, a.beta = beta, a.h0 = h0;
    a.o = o, a.final_state = final_state;
    a.workspace = workspace, a.workspace_bytes = workspace_bytes;
    size_t need = 0;
    if ((st = gdn_cuda_chunk_forward_cp_workspace_size(ctx, p, nccl_comm, &need)) != GDN_SUCCESS)
        return st;
    st = gdn_validate_workspace(ctx, OP, OP_WS, workspace, workspace_bytes, need);
    if (st != GDN_SUCCESS) return st;
    return gdn_cuda_chunk_forward_cp(ctx, &a, nccl_comm);
}

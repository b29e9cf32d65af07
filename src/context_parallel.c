/* Context parallelism building blocks (gdn.h): the slice summary and the
 * affine state advance. Validation and dispatch here; the summary's CPU
 * kernel lives with the chunked forward, whose stages it reuses. */
#include "gdn_internal.h"

static gdn_status cuda_not_yet(gdn_context *ctx, const char *op) {
    return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                    "%s: the CUDA backend does not implement this operation yet", op);
}

gdn_status gdn_chunk_forward_summary(gdn_context *ctx, const gdn_problem *p,
                                     const gdn_forward_options *opts, const gdn_bf16 *k,
                                     const gdn_bf16 *v, const float *g, const float *beta,
                                     float *transition, float *partial) {
    static const char *const OP = "gdn_chunk_forward_summary";
    if (!ctx) return GDN_ERROR_INVALID_ARGUMENT;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    const gdn_ptr_arg ptrs[] = {
        {"k", k, 1},           {"v", v, 1},         {"g", g, 1},
        {"beta", beta, 1},     {"transition", transition, 1},
        {"partial", partial, 1},
        {"cu_seqlens_device", p->cu_seqlens_device, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;
    gdn_chunk_forward_args a = {
        .p = p,
        .N = gdn_problem_num_seqs(p),
        .NT = gdn_problem_num_chunks(p),
        .k = k, .v = v, .g = g, .beta = beta,
        .final_state = partial, .transition = transition,
    };
    st = gdn_validate_forward_options(ctx, OP, p, opts, &a.opts);
    if (st != GDN_SUCCESS) return st;
    if (ctx->backend == GDN_BACKEND_CUDA) return cuda_not_yet(ctx, OP);
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
    if (ctx->backend == GDN_BACKEND_CUDA) return cuda_not_yet(ctx, OP);

    return gdn_cpu_state_advance(ctx, p, state_in, transition, partial, state_out);
}

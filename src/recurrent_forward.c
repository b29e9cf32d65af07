/* gdn_recurrent_forward: validation shared by both backends, then
 * dispatch. The pool indices are checked here for the CPU backend only:
 * for CUDA they are device memory, which the host never reads (the call
 * must not synchronise), so the kernel treats out-of-range slots as
 * padding instead (see gdn.h). */
#include <stdint.h>
#include <stdlib.h>

#include "gdn_internal.h"

static const char *const OP = "gdn_recurrent_forward";

/* Bytes of count states of Hv*V*K elements of elem bytes; 0 on overflow. */
static int state_bytes_ok(const gdn_problem *p, int64_t count, int64_t elem) {
    int64_t x = count;
    return gdn_mul_ok(x, p->Hv, &x) && gdn_mul_ok(x, p->V, &x) && gdn_mul_ok(x, p->K, &x) &&
           gdn_mul_ok(x, elem, &x);
}

typedef struct slot_ref {
    int32_t slot;
    int64_t n;
} slot_ref;

static int slot_ref_cmp(const void *a, const void *b) {
    const slot_ref *x = (const slot_ref *)a, *y = (const slot_ref *)b;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return x->n < y->n ? -1 : (x->n > y->n);
}

/* Without state_indices, sequence n uses slot n: the pool must hold N. */
static gdn_status check_identity_slots(gdn_context *ctx, int64_t N, int64_t pool_size) {
    if (pool_size < N)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "%s: state_indices is NULL (sequence n uses pool slot n), so "
                        "pool_size (%lld) must be >= the number of sequences (%lld)",
                        OP, (long long)pool_size, (long long)N);
    return GDN_SUCCESS;
}

/* Host-side index rules (CPU backend): every index < pool_size, and no
 * slot named by two sequences. Reports the first offender in index
 * order; for duplicates the smallest repeated slot. */
static gdn_status check_indices(gdn_context *ctx, const int32_t *idx, int64_t N,
                                int64_t pool_size) {
    const gdn_status bad = GDN_ERROR_INVALID_ARGUMENT;
    if (!idx) return check_identity_slots(ctx, N, pool_size);
    int64_t used = 0;
    for (int64_t n = 0; n < N; n++) {
        if (idx[n] >= pool_size)
            return gdn_fail(ctx, bad,
                            "%s: state_indices[%lld] (%d) must be < pool_size (%lld) (or < 0 "
                            "for a padding sequence)",
                            OP, (long long)n, idx[n], (long long)pool_size);
        used += idx[n] >= 0;
    }
    if (used < 2) return GDN_SUCCESS;
    slot_ref *refs = (slot_ref *)malloc((size_t)used * sizeof(slot_ref));
    if (!refs)
        return gdn_fail(ctx, GDN_ERROR_OUT_OF_MEMORY,
                        "%s: cannot allocate %lld bytes to check state_indices for repeats", OP,
                        (long long)(used * (int64_t)sizeof(slot_ref)));
    int64_t m = 0;
    for (int64_t n = 0; n < N; n++)
        if (idx[n] >= 0) refs[m++] = (slot_ref){idx[n], n};
    qsort(refs, (size_t)m, sizeof(slot_ref), slot_ref_cmp);
    gdn_status st = GDN_SUCCESS;
    for (int64_t i = 1; i < m; i++) {
        if (refs[i].slot != refs[i - 1].slot) continue;
        st = gdn_fail(ctx, bad,
                      "%s: state_indices[%lld] and state_indices[%lld] both name pool slot %d; "
                      "the slots of non-padding sequences must be distinct",
                      OP, (long long)refs[i - 1].n, (long long)refs[i].n, refs[i].slot);
        break;
    }
    free(refs);
    return st;
}

gdn_status gdn_recurrent_forward(gdn_context *ctx, const gdn_problem *p,
                                 const gdn_forward_options *opts, const gdn_bf16 *q,
                                 const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                                 const float *beta, void *state_pool, gdn_dtype pool_dtype,
                                 int64_t pool_size, const int32_t *state_indices, gdn_bf16 *o,
                                 void *state_history) {
    const gdn_status bad = GDN_ERROR_INVALID_ARGUMENT;
    if (!ctx) return bad;
    gdn_clear_error(ctx);
    gdn_status st = gdn_validate_problem(ctx, OP, p);
    if (st != GDN_SUCCESS) return st;
    gdn_recurrent_forward_args a = {
        .p = p,
        .N = gdn_problem_num_seqs(p),
        .q = q, .k = k, .v = v, .g = g, .beta = beta,
        .state_pool = state_pool, .pool_dtype = pool_dtype, .pool_size = pool_size,
        .state_indices = state_indices, .o = o, .state_history = state_history,
    };
    st = gdn_validate_forward_options(ctx, OP, p, opts, &a.opts);
    if (st != GDN_SUCCESS) return st;

    if (pool_dtype != GDN_DTYPE_F32 && pool_dtype != GDN_DTYPE_BF16)
        return gdn_fail(ctx, bad, "%s: pool_dtype (%d) must be GDN_DTYPE_F32 or GDN_DTYPE_BF16",
                        OP, (int)pool_dtype);
    const int64_t elem = pool_dtype == GDN_DTYPE_F32 ? 4 : 2;
    if (pool_size < 1)
        return gdn_fail(ctx, bad, "%s: pool_size (%lld) must be >= 1", OP, (long long)pool_size);
    if (!state_bytes_ok(p, pool_size, elem))
        return gdn_fail(ctx, bad,
                        "%s: state_pool size (pool_size*Hv*V*K = %lld*%lld*%lld*%lld elements) "
                        "overflows int64 bytes",
                        OP, (long long)pool_size, (long long)p->Hv, (long long)p->V,
                        (long long)p->K);
    if (state_history && !state_bytes_ok(p, p->B * p->T, elem))
        return gdn_fail(ctx, bad,
                        "%s: state_history size (B*T*Hv*V*K = %lld*%lld*%lld*%lld*%lld "
                        "elements) overflows int64 bytes",
                        OP, (long long)p->B, (long long)p->T, (long long)p->Hv, (long long)p->V,
                        (long long)p->K);

    const gdn_ptr_arg ptrs[] = {
        {"q", q, 1},
        {"k", k, 1},
        {"v", v, 1},
        {"g", g, 1},
        {"beta", beta, 1},
        {"state_pool", state_pool, 1},
        {"state_indices", state_indices, 0},
        {"o", o, 1},
        {"state_history", state_history, 0},
        {"cu_seqlens_device", p->cu_seqlens_device, 0},
    };
    st = gdn_validate_pointers(ctx, OP, ptrs, (int)(sizeof ptrs / sizeof ptrs[0]));
    if (st != GDN_SUCCESS) return st;

    if (ctx->backend == GDN_BACKEND_CUDA) {
        if (p->cu_seqlens && !p->cu_seqlens_device)
            return gdn_fail(ctx, bad,
                            "%s: the CUDA backend needs cu_seqlens_device (a device copy of "
                            "cu_seqlens) when cu_seqlens is given; this operation takes no "
                            "workspace to copy it into",
                            OP);
        if (!state_indices) {
            st = check_identity_slots(ctx, a.N, pool_size);
            if (st != GDN_SUCCESS) return st;
        }
        return gdn_cuda_recurrent_forward(ctx, &a);
    }
    st = check_indices(ctx, state_indices, a.N, pool_size);
    if (st != GDN_SUCCESS) return st;
    return gdn_cpu_recurrent_forward(ctx, &a);
}

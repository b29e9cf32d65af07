/* The problem description: defaults, derived sizes, and the validation
 * shared by every operation. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gdn_internal.h"

void gdn_problem_init(gdn_problem *p, int64_t B, int64_t T, int64_t Hk, int64_t Hv, int64_t K,
                      int64_t V) {
    if (!p) return;
    p->B = B;
    p->T = T;
    p->Hk = Hk;
    p->Hv = Hv;
    p->K = K;
    p->V = V;
    p->cu_seqlens = NULL;
    p->cu_seqlens_device = NULL;
    p->num_seqs = 0;
    p->state_layout = GDN_STATE_VK;
    p->head_map = GDN_HEAD_MAP_BLOCK;
}

int64_t gdn_problem_num_seqs(const gdn_problem *p) {
    if (!p) return -1;
    return p->cu_seqlens ? p->num_seqs : p->B;
}

int64_t gdn_problem_num_chunks(const gdn_problem *p) {
    if (!p) return -1;
    if (!p->cu_seqlens) return p->B * gdn_ceil_div(p->T, GDN_CHUNK);
    int64_t nt = 0;
    for (int64_t n = 0; n < p->num_seqs; n++) {
        int64_t len = (int64_t)p->cu_seqlens[n + 1] - p->cu_seqlens[n];
        if (len < 0) return -1;
        nt += gdn_ceil_div(len, GDN_CHUNK);
    }
    return nt;
}

static int product_ok(const int64_t *f, int n, int64_t *out) {
    int64_t acc = 1;
    for (int i = 0; i < n; i++)
        if (!gdn_mul_ok(acc, f[i], &acc)) return 0;
    *out = acc;
    return 1;
}

gdn_status gdn_validate_problem(gdn_context *ctx, const char *op, const gdn_problem *p) {
    const gdn_status bad = GDN_ERROR_INVALID_ARGUMENT;
    if (!p) return gdn_fail(ctx, bad, "%s: problem is NULL", op);
    const struct {
        const char *name;
        int64_t value;
    } dims[] = {{"B", p->B}, {"T", p->T}, {"Hk", p->Hk}, {"Hv", p->Hv}, {"K", p->K}, {"V", p->V}};
    for (unsigned i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].value < 1)
            return gdn_fail(ctx, bad, "%s: %s (%lld) must be >= 1", op, dims[i].name,
                            (long long)dims[i].value);
    if (p->Hv % p->Hk != 0)
        return gdn_fail(ctx, bad, "%s: Hv (%lld) must be a multiple of Hk (%lld)", op,
                        (long long)p->Hv, (long long)p->Hk);
    if (p->K > GDN_MAX_HEAD_DIM)
        return gdn_fail(ctx, bad, "%s: K (%lld) must be <= %d", op, (long long)p->K,
                        GDN_MAX_HEAD_DIM);
    if (p->V > GDN_MAX_HEAD_DIM)
        return gdn_fail(ctx, bad, "%s: V (%lld) must be <= %d", op, (long long)p->V,
                        GDN_MAX_HEAD_DIM);
    if (p->state_layout != GDN_STATE_VK && p->state_layout != GDN_STATE_KV)
        return gdn_fail(ctx, bad, "%s: state_layout (%d) must be GDN_STATE_VK or GDN_STATE_KV", op,
                        (int)p->state_layout);
    if (p->head_map != GDN_HEAD_MAP_BLOCK && p->head_map != GDN_HEAD_MAP_TILED)
        return gdn_fail(ctx, bad,
                        "%s: head_map (%d) must be GDN_HEAD_MAP_BLOCK or GDN_HEAD_MAP_TILED", op,
                        (int)p->head_map);

    /* Every tensor's element count, and its byte count, must fit in int64
     * (the kernels index with 64-bit offsets). */
    const int64_t H = p->Hv > p->Hk ? p->Hv : p->Hk;
    const int64_t D = p->K > p->V ? p->K : p->V;
    int64_t tokens, elems;
    const int64_t f_tok[] = {p->B, p->T};
    if (!product_ok(f_tok, 2, &tokens))
        return gdn_fail(ctx, bad, "%s: B * T (%lld * %lld) overflows int64", op, (long long)p->B,
                        (long long)p->T);
    const int64_t f_act[] = {tokens, H, D, 4};
    if (!product_ok(f_act, 4, &elems))
        return gdn_fail(ctx, bad,
                        "%s: tensor size B*T*max(Hk,Hv)*max(K,V) = %lld*%lld*%lld*%lld elements "
                        "overflows int64 bytes",
                        op, (long long)p->B, (long long)p->T, (long long)H, (long long)D);
    /* The state tensors: chunks (<= tokens) times Hv*V*K, times 4 bytes. */
    const int64_t f_state[] = {gdn_ceil_div(tokens, GDN_CHUNK) + p->B, p->Hv, p->V, p->K, 4};
    if (!product_ok(f_state, 5, &elems))
        return gdn_fail(ctx, bad, "%s: state tensor size (chunks*Hv*V*K) overflows int64 bytes",
                        op);

    if (p->cu_seqlens_device && !p->cu_seqlens)
        return gdn_fail(ctx, bad,
                        "%s: cu_seqlens_device is set but cu_seqlens (the host copy the library "
                        "validates) is NULL",
                        op);
    if (!p->cu_seqlens) return GDN_SUCCESS;

    if (p->B != 1)
        return gdn_fail(ctx, bad, "%s: B (%lld) must be 1 when cu_seqlens is given", op,
                        (long long)p->B);
    if (p->num_seqs < 1)
        return gdn_fail(ctx, bad, "%s: num_seqs (%lld) must be >= 1 when cu_seqlens is given", op,
                        (long long)p->num_seqs);
    if (p->T > INT32_MAX)
        return gdn_fail(ctx, bad, "%s: T (%lld) must fit in int32 when cu_seqlens is given", op,
                        (long long)p->T);
    const int32_t *cu = p->cu_seqlens;
    if (cu[0] != 0)
        return gdn_fail(ctx, bad, "%s: cu_seqlens[0] (%d) must be 0", op, cu[0]);
    for (int64_t n = 0; n < p->num_seqs; n++)
        if (cu[n + 1] < cu[n])
            return gdn_fail(ctx, bad,
                            "%s: cu_seqlens must be non-decreasing, but cu_seqlens[%lld] (%d) < "
                            "cu_seqlens[%lld] (%d)",
                            op, (long long)(n + 1), cu[n + 1], (long long)n, cu[n]);
    if (cu[p->num_seqs] != p->T)
        return gdn_fail(ctx, bad, "%s: cu_seqlens[num_seqs=%lld] (%d) must equal T (%lld)", op,
                        (long long)p->num_seqs, cu[p->num_seqs], (long long)p->T);
    return GDN_SUCCESS;
}

gdn_status gdn_validate_pointers(gdn_context *ctx, const char *op, const gdn_ptr_arg *args,
                                 int count) {
    for (int i = 0; i < count; i++) {
        const gdn_ptr_arg *a = &args[i];
        if (!a->ptr) {
            if (a->required)
                return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "%s: %s is NULL but required",
                                op, a->name);
            continue;
        }
        gdn_memory_kind kind = gdn_cuda_pointer_kind(a->ptr);
        if (ctx->backend == GDN_BACKEND_CUDA && kind == GDN_MEMORY_HOST)
            return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                            "%s: %s is a host pointer, but the CUDA backend needs device (or "
                            "managed) memory",
                            op, a->name);
        if (ctx->backend == GDN_BACKEND_CPU && kind == GDN_MEMORY_DEVICE)
            return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                            "%s: %s is a device pointer, but the CPU backend needs host memory", op,
                            a->name);
    }
    return GDN_SUCCESS;
}

gdn_status gdn_validate_workspace(gdn_context *ctx, const char *op, const char *size_fn,
                                  const void *workspace, size_t workspace_bytes, size_t need) {
    if (need > 0 && (!workspace || workspace_bytes < need))
        return gdn_fail(ctx, GDN_ERROR_WORKSPACE,
                        "%s: workspace (%zu bytes at %p) must hold at least %zu bytes (%s)", op,
                        workspace_bytes, workspace, need, size_fn);
    return GDN_SUCCESS;
}

void gdn_forward_options_init(gdn_forward_options *opts) {
    if (!opts) return;
    opts->scale = 0.f;
    opts->l2norm_qk = 0;
    opts->beta_sigmoid = 0;
    opts->qwen_gate = 0;
    opts->A_log = NULL;
    opts->dt_bias = NULL;
}

gdn_status gdn_validate_forward_options(gdn_context *ctx, const char *op, const gdn_problem *p,
                                        const gdn_forward_options *opts,
                                        gdn_forward_options *out) {
    const gdn_status bad = GDN_ERROR_INVALID_ARGUMENT;
    gdn_forward_options o;
    if (opts)
        o = *opts;
    else
        gdn_forward_options_init(&o);
    if (!isfinite(o.scale) || o.scale < 0.0f)
        return gdn_fail(ctx, bad, "%s: opts->scale (%g) must be finite and >= 0 (0 = 1/sqrt(K))",
                        op, (double)o.scale);
    const struct {
        const char *name;
        int value;
    } flags[] = {{"l2norm_qk", o.l2norm_qk},
                 {"beta_sigmoid", o.beta_sigmoid},
                 {"qwen_gate", o.qwen_gate}};
    for (unsigned i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (flags[i].value != 0 && flags[i].value != 1)
            return gdn_fail(ctx, bad, "%s: opts->%s (%d) must be 0 or 1", op, flags[i].name,
                            flags[i].value);
    if (o.qwen_gate) {
        if (!o.A_log)
            return gdn_fail(ctx, bad, "%s: opts->A_log is NULL but required by opts->qwen_gate",
                            op);
        if (!o.dt_bias)
            return gdn_fail(ctx, bad,
                            "%s: opts->dt_bias is NULL but required by opts->qwen_gate", op);
        /* a size query (out == NULL) reads neither: any pointer kind will do */
        const gdn_ptr_arg ptrs[] = {{"opts->A_log", o.A_log, 1}, {"opts->dt_bias", o.dt_bias, 1}};
        gdn_status st = out ? gdn_validate_pointers(ctx, op, ptrs, 2) : GDN_SUCCESS;
        if (st != GDN_SUCCESS) return st;
    } else {
        o.A_log = NULL; /* ignored without the gate */
        o.dt_bias = NULL;
    }
    if (o.scale == 0.0f) o.scale = (float)(1.0 / sqrt((double)p->K));
    if (out) *out = o;
    return GDN_SUCCESS;
}

gdn_status gdn_validate_size_query(gdn_context *ctx, const char *op, const gdn_problem *p,
                                   const gdn_forward_options *opts, size_t *bytes) {
    if (!bytes) return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "%s: bytes is NULL", op);
    *bytes = 0;
    gdn_status st = gdn_validate_problem(ctx, op, p);
    if (st != GDN_SUCCESS) return st;
    return gdn_validate_forward_options(ctx, op, p, opts, NULL);
}

gdn_status gdn_forward_args_init(gdn_context *ctx, const char *op, const gdn_problem *p,
                                 const gdn_forward_options *opts, gdn_chunk_forward_args *a) {
    memset(a, 0, sizeof *a);
    a->p = p;
    a->N = gdn_problem_num_seqs(p);
    a->NT = gdn_problem_num_chunks(p);
    return gdn_validate_forward_options(ctx, op, p, opts, &a->opts);
}

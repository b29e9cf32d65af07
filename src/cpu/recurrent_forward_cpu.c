/* gdn_recurrent_forward on the CPU: the token recurrence of SPEC section 1
 * in f32, on states read from and written back to a pool.
 *
 * Per token, with q and k pre-processed (L2 norm if asked, q times scale):
 *   S   = exp(g) S
 *   e   = v - S k
 *   S   = S + beta e k^T
 *   o   = S q
 * Every row j of S ([V][K], K innermost) evolves on its own: the decay and
 * S k are one pass over the row, the update and S q a second. The state
 * lives in per-thread f32 scratch for all of a sequence's tokens; a bf16
 * pool is widened on load and rounded once when the state is written back
 * (and for each state_history entry).
 *
 * One task per (sequence, value head), independent of each other; each
 * f32 sum has a fixed order (dot products as eight interleaved partial
 * sums, combined pairwise), so results do not depend on the thread count
 * or on the other sequences of the batch. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "cpu_internal.h"

/* sum_i a[i] b[i] in a fixed order: eight partial sums over i mod 8, then
 * combined pairwise. */
static inline float dot_f32(const float *restrict a, const float *restrict b, int64_t n) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* row *= decay, then returns row . k; one pass, the sum as in dot_f32. */
static inline float decay_dot(float *restrict row, float decay, const float *restrict k,
                              int64_t n) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            row[i + l] *= decay;
            acc[l] += row[i + l] * k[i + l];
        }
    for (int l = 0; i < n; i++, l++) {
        row[i] *= decay;
        acc[l] += row[i] * k[i];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* row += a k, then returns row . q; one pass, the sum as in dot_f32. */
static inline float axpy_dot(float *restrict row, float a, const float *restrict k,
                             const float *restrict q, int64_t n) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            row[i + l] += a * k[i + l];
            acc[l] += row[i + l] * q[i + l];
        }
    for (int l = 0; i < n; i++, l++) {
        row[i] += a * k[i];
        acc[l] += row[i] * q[i];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Per-thread scratch, f32: S [V][K], and the token's q and k [K]. */
typedef struct scratch {
    float *S, *q, *k;
} scratch;

static size_t scratch_floats(int64_t K, int64_t V) { return (size_t)(V * K + 2 * K); }

static scratch scratch_at(float *base, int64_t K, int64_t V) {
    scratch s;
    s.S = base;
    s.q = s.S + V * K;
    s.k = s.q + K;
    return s;
}

/* S [V][K] from one pool (or history) state of the given dtype and layout. */
static void state_load(float *restrict S, const void *src, gdn_dtype dt, int kv, int64_t K,
                       int64_t V) {
    if (dt == GDN_DTYPE_F32) {
        const float *x = (const float *)src;
        if (kv)
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) S[j * K + i] = x[i * V + j];
        else
            memcpy(S, x, (size_t)(V * K) * sizeof(float));
    } else {
        const gdn_bf16 *x = (const gdn_bf16 *)src;
        if (kv)
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) S[j * K + i] = gdn_bf16_to_f32(x[i * V + j]);
        else
            for (int64_t x_ = 0; x_ < V * K; x_++) S[x_] = gdn_bf16_to_f32(x[x_]);
    }
}

/* The inverse: S into dst, rounded to bf16 for a bf16 dtype. */
static void state_store(void *dst, const float *restrict S, gdn_dtype dt, int kv, int64_t K,
                        int64_t V) {
    if (dt == GDN_DTYPE_F32) {
        float *x = (float *)dst;
        if (kv)
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) x[i * V + j] = S[j * K + i];
        else
            memcpy(x, S, (size_t)(V * K) * sizeof(float));
    } else {
        gdn_bf16 *x = (gdn_bf16 *)dst;
        if (kv)
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) x[i * V + j] = gdn_f32_to_bf16(S[j * K + i]);
        else
            for (int64_t x_ = 0; x_ < V * K; x_++) x[x_] = gdn_f32_to_bf16(S[x_]);
    }
}

/* x (bf16, K values) into out as f32, L2-normalised if asked
 * (x / sqrt(sum x^2 + 1e-6)), then times mul. */
static void load_vec(float *restrict out, const gdn_bf16 *x, int64_t K, int l2norm, float mul) {
    for (int64_t i = 0; i < K; i++) out[i] = gdn_bf16_to_f32(x[i]);
    if (l2norm) mul *= 1.0f / sqrtf(dot_f32(out, out, K) + 1e-6f);
    if (mul != 1.0f)
        for (int64_t i = 0; i < K; i++) out[i] *= mul;
}

/* softplus(x) = log(1 + exp(x)), linear above 20 as in PyTorch. */
static inline float softplus_f32(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

static void run_task(const void *args, int64_t n, int64_t h, int64_t cfirst, float *base) {
    const gdn_recurrent_forward_args *a = (const gdn_recurrent_forward_args *)args;
    (void)cfirst; /* no chunks here */
    const gdn_problem *p = a->p;
    const gdn_forward_options *op = &a->opts;
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    const int kv = p->state_layout == GDN_STATE_KV;
    const gdn_dtype dt = a->pool_dtype;
    const int64_t elem = dt == GDN_DTYPE_F32 ? 4 : 2;
    const int64_t slot = a->state_indices ? a->state_indices[n] : n;
    int64_t bos, eos;
    gdn_seq_bounds(p, n, &bos, &eos);

    if (slot < 0) { /* padding: o rows zero, nothing else touched */
        for (int64_t t = bos; t < eos; t++) memset(a->o + (t * Hv + h) * V, 0, (size_t)V * 2);
        return;
    }
    if (bos == eos) return;

    const int64_t hk = gdn_key_head(p, h);
    const scratch s = scratch_at(base, K, V);
    float *restrict S = s.S, *restrict qt = s.q, *restrict kt = s.k;
    char *pool_state = (char *)a->state_pool + (slot * Hv + h) * V * K * elem;
    state_load(S, pool_state, dt, kv, K, V);
    const float neg_A = op->qwen_gate ? -expf(op->A_log[h]) : 0.0f;
    const float dt_bias = op->qwen_gate ? op->dt_bias[h] : 0.0f;

    for (int64_t t = bos; t < eos; t++) {
        load_vec(qt, a->q + (t * Hk + hk) * K, K, op->l2norm_qk, op->scale);
        load_vec(kt, a->k + (t * Hk + hk) * K, K, op->l2norm_qk, 1.0f);
        float gt = a->g[t * Hv + h];
        if (op->qwen_gate) gt = neg_A * softplus_f32(gt + dt_bias);
        const float decay = expf(gt);
        float bt = a->beta[t * Hv + h];
        if (op->beta_sigmoid) bt = 1.0f / (1.0f + expf(-bt));
        const gdn_bf16 *vt = a->v + (t * Hv + h) * V;
        gdn_bf16 *ot = a->o + (t * Hv + h) * V;

        for (int64_t j = 0; j < V; j++) {
            float *restrict row = S + j * K;
            const float e = gdn_bf16_to_f32(vt[j]) - decay_dot(row, decay, kt, K);
            ot[j] = gdn_f32_to_bf16(axpy_dot(row, bt * e, kt, qt, K));
        }
        if (a->state_history)
            state_store((char *)a->state_history + (t * Hv + h) * V * K * elem, S, dt, kv, K, V);
    }
    state_store(pool_state, S, dt, kv, K, V);
}

gdn_status gdn_cpu_recurrent_forward(gdn_context *ctx, const gdn_recurrent_forward_args *a) {
    const gdn_problem *p = a->p;
    return gdn_cpu_run_tasks(ctx, "gdn_recurrent_forward", p, a->N, 0,
                             scratch_floats(p->K, p->V), run_task, a);
}

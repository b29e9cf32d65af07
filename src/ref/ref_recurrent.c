/* The fp64 oracle (SPEC section 1): the token-by-token recurrence on the
 * exact input values, no intermediate rounding - plain
 * (gdn_ref_recurrent_f64), or with the optional pre-processing of the
 * whole-layer operations (gdn_ref_forward_f64: L2 norm of q and k, sigmoid
 * of beta, the Qwen3-Next gate, the scale). Both are one routine. */
#include <math.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "ref_common.h"

/* log(1 + exp(x)) without overflow. */
static double softplus_f64(double x) { return x > 0.0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

/* x (K values of bf16) as fp64, L2-normalised if asked. */
static void load_vec(double *out, const gdn_bf16 *x, int64_t K, int l2norm) {
    double ss = 0.0;
    for (int64_t i = 0; i < K; i++) {
        out[i] = gdn_bf16_to_f32(x[i]);
        ss += out[i] * out[i];
    }
    if (!l2norm) return;
    const double inv = 1.0 / sqrt(ss + 1e-6);
    for (int64_t i = 0; i < K; i++) out[i] *= inv;
}

/* The recurrence with op's pre-processing (op->scale is not read: scale is
 * the one applied); chunk_states as gdn_ref_forward_f64's. who names the
 * caller in an out-of-memory message. */
static void recurrence(const gdn_problem *p, const gdn_forward_options *op, double scale,
                       const char *who, const gdn_bf16 *q, const gdn_bf16 *k, const gdn_bf16 *v,
                       const float *g, const float *beta, const float *h0, double *o,
                       double *final_state, double *chunk_states) {
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    const int64_t N = ref_num_seqs(p);
    /* S [V][K], and q_t, k_t, e as fp64. */
    double *S = (double *)ref_alloc((size_t)(V * K + 2 * K + V) * sizeof(double), who);
    double *qt = S + V * K, *kt = qt + K, *e = kt + K;

    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        const int64_t cfirst = ref_first_chunk(p, n);
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t hk = gdn_key_head(p, h);
            const int64_t soff = (n * Hv + h) * V * K;
            ref_state_load(p, S, h0 ? h0 + soff : NULL);

            for (int64_t t = bos; t < eos; t++) {
                if ((t - bos) % GDN_CHUNK == 0 && chunk_states)
                    ref_state_store(
                        p, chunk_states + ((cfirst + (t - bos) / GDN_CHUNK) * Hv + h) * V * K, S);
                double gt = g[t * Hv + h];
                if (op->qwen_gate)
                    gt = -exp((double)op->A_log[h]) * softplus_f64(gt + (double)op->dt_bias[h]);
                double b = beta[t * Hv + h];
                if (op->beta_sigmoid) b = 1.0 / (1.0 + exp(-b));
                const double decay = exp(gt);
                load_vec(qt, q + (t * Hk + hk) * K, K, op->l2norm_qk);
                load_vec(kt, k + (t * Hk + hk) * K, K, op->l2norm_qk);
                /* decay first, then the prediction error on the decayed state */
                for (int64_t x = 0; x < V * K; x++) S[x] *= decay;
                for (int64_t j = 0; j < V; j++) {
                    double sk = 0.0;
                    for (int64_t i = 0; i < K; i++) sk += S[j * K + i] * kt[i];
                    e[j] = (double)gdn_bf16_to_f32(v[(t * Hv + h) * V + j]) - sk;
                }
                for (int64_t j = 0; j < V; j++)
                    for (int64_t i = 0; i < K; i++) S[j * K + i] += b * e[j] * kt[i];
                if (o) {
                    for (int64_t j = 0; j < V; j++) {
                        double sq = 0.0;
                        for (int64_t i = 0; i < K; i++) sq += S[j * K + i] * qt[i];
                        o[(t * Hv + h) * V + j] = scale * sq;
                    }
                }
            }
            if (final_state) ref_state_store(p, final_state + soff, S);
        }
    }
    free(S);
}

/* The defaults of gdn_forward_options_init (not called: gdn_ref does not
 * link the library). */
static const gdn_forward_options defaults = {0.0f, 0, 0, 0, NULL, NULL};

void gdn_ref_recurrent_f64(const gdn_problem *p, const gdn_bf16 *q, const gdn_bf16 *k,
                           const gdn_bf16 *v, const float *g, const float *beta, const float *h0,
                           double scale, double *o, double *final_state) {
    recurrence(p, &defaults, scale, "gdn_ref_recurrent_f64", q, k, v, g, beta, h0, o,
               final_state, NULL);
}

void gdn_ref_forward_f64(const gdn_problem *p, const gdn_forward_options *opts,
                         const gdn_bf16 *q, const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                         const float *beta, const float *h0, double *o, double *final_state,
                         double *chunk_states) {
    const gdn_forward_options *op = opts ? opts : &defaults;
    const double scale = op->scale != 0.0f ? (double)op->scale : 1.0 / sqrt((double)p->K);
    recurrence(p, op, scale, "gdn_ref_forward_f64", q, k, v, g, beta, h0, o, final_state,
               chunk_states);
}

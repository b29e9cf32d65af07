/* The fp64 oracle (SPEC section 1): the token-by-token recurrence on the
 * exact input values, no intermediate rounding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "ref_common.h"

void gdn_ref_recurrent_f64(const gdn_problem *p, const gdn_bf16 *q, const gdn_bf16 *k,
                           const gdn_bf16 *v, const float *g, const float *beta, const float *h0,
                           double scale, double *o, double *final_state) {
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    const int64_t N = ref_num_seqs(p);
    /* S [V][K], and q_t, k_t, e as fp64. */
    double *S = (double *)malloc((size_t)(V * K + 2 * K + V) * sizeof(double));
    if (!S) {
        fprintf(stderr, "gdn_ref_recurrent_f64: out of memory\n");
        abort();
    }
    double *qt = S + V * K, *kt = qt + K, *e = kt + K;

    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t hk = gdn_key_head(p, h);
            const int64_t soff = (n * Hv + h) * V * K;
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++)
                    S[j * K + i] = h0 ? (double)h0[soff + ref_state_off(p, j, i)] : 0.0;

            for (int64_t t = bos; t < eos; t++) {
                const double decay = exp((double)g[t * Hv + h]);
                const double b = (double)beta[t * Hv + h];
                for (int64_t i = 0; i < K; i++) {
                    qt[i] = gdn_bf16_to_f32(q[(t * Hk + hk) * K + i]);
                    kt[i] = gdn_bf16_to_f32(k[(t * Hk + hk) * K + i]);
                }
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
            if (final_state)
                for (int64_t j = 0; j < V; j++)
                    for (int64_t i = 0; i < K; i++)
                        final_state[soff + ref_state_off(p, j, i)] = S[j * K + i];
        }
    }
    free(S);
}

/* fp64 versions of the chunked stages (SPEC section 3): chunk-local cumsum,
 * the WY transform, the inter-chunk state recurrence and the output. Plain
 * loops; the only rounding is the inputs' own (bf16 / f32 values). */
#include <math.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "ref_common.h"

void gdn_ref_chunk_cumsum(const gdn_problem *p, const float *g, float *g_cumsum) {
    const int64_t Hv = p->Hv, N = ref_num_seqs(p);
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        for (int64_t h = 0; h < Hv; h++) {
            for (int64_t c0 = bos; c0 < eos; c0 += GDN_CHUNK) {
                const int64_t c1 = c0 + GDN_CHUNK < eos ? c0 + GDN_CHUNK : eos;
                float acc = 0.0f;
                for (int64_t t = c0; t < c1; t++) {
                    acc += g[t * Hv + h];
                    g_cumsum[t * Hv + h] = acc;
                }
            }
        }
    }
}

void gdn_ref_chunk_wy_f64(const gdn_problem *p, const gdn_bf16 *k, const gdn_bf16 *v,
                          const float *beta, const float *g_cumsum, double *w, double *u) {
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, N = ref_num_seqs(p);
    const int64_t BT = GDN_CHUNK;
    double *A = (double *)ref_alloc((size_t)(BT * BT) * sizeof(double), "gdn_ref_chunk_wy_f64");
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t hk = gdn_key_head(p, h);
            for (int64_t c0 = bos; c0 < eos; c0 += BT) {
                const int64_t L = c0 + BT < eos ? BT : eos - c0;
                /* A[i][j] = beta_i (k_i . k_j) exp(G_i - G_j), i > j */
                for (int64_t i = 0; i < L; i++) {
                    const int64_t ti = c0 + i;
                    const double bi = beta[ti * Hv + h], Gi = g_cumsum[ti * Hv + h];
                    for (int64_t j = 0; j < i; j++) {
                        const int64_t tj = c0 + j;
                        double kk = 0.0;
                        for (int64_t x = 0; x < K; x++)
                            kk += (double)gdn_bf16_to_f32(k[(ti * Hk + hk) * K + x]) *
                                  (double)gdn_bf16_to_f32(k[(tj * Hk + hk) * K + x]);
                        A[i * BT + j] = bi * kk * exp(Gi - (double)g_cumsum[tj * Hv + h]);
                    }
                }
                /* (I + A) X = RHS by forward substitution, i.e. X = Tinv RHS:
                 * w_i = beta_i exp(G_i) k_i - sum_{j<i} A_ij w_j,
                 * u_i = beta_i v_i          - sum_{j<i} A_ij u_j. */
                for (int64_t i = 0; i < L; i++) {
                    const int64_t ti = c0 + i;
                    const double bi = beta[ti * Hv + h];
                    const double eg = exp((double)g_cumsum[ti * Hv + h]);
                    double *wi = w + (ti * Hv + h) * K;
                    double *ui = u + (ti * Hv + h) * V;
                    for (int64_t x = 0; x < K; x++)
                        wi[x] = bi * eg * (double)gdn_bf16_to_f32(k[(ti * Hk + hk) * K + x]);
                    for (int64_t x = 0; x < V; x++)
                        ui[x] = bi * (double)gdn_bf16_to_f32(v[(ti * Hv + h) * V + x]);
                    for (int64_t j = 0; j < i; j++) {
                        const double a = A[i * BT + j];
                        const double *wj = w + ((c0 + j) * Hv + h) * K;
                        const double *uj = u + ((c0 + j) * Hv + h) * V;
                        for (int64_t x = 0; x < K; x++) wi[x] -= a * wj[x];
                        for (int64_t x = 0; x < V; x++) ui[x] -= a * uj[x];
                    }
                }
            }
        }
    }
    free(A);
}

/* The state recurrence on w, u given either as bf16 (wb, ub) or fp64
 * (wd, ud); exactly one of each pair is non-NULL. */
static inline double ld(const gdn_bf16 *b, const double *d, int64_t i) {
    return d ? d[i] : (double)gdn_bf16_to_f32(b[i]);
}

static void chunk_state(const gdn_problem *p, const gdn_bf16 *k, const gdn_bf16 *wb,
                        const double *wd, const gdn_bf16 *ub, const double *ud,
                        const float *g_cumsum, const float *h0, double *h_out, double *v_new,
                        double *final_state) {
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, N = ref_num_seqs(p);
    const int64_t BT = GDN_CHUNK;
    /* h [V][K] (the state at the chunk start), vn [BT][V] (this chunk's v_new). */
    double *hs =
        (double *)ref_alloc((size_t)(V * K + BT * V) * sizeof(double), "gdn_ref_chunk_state_f64");
    double *vn = hs + V * K;
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        const int64_t cfirst = ref_first_chunk(p, n);
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t hk = gdn_key_head(p, h);
            const int64_t soff = (n * Hv + h) * V * K;
            ref_state_load(p, hs, h0 ? h0 + soff : NULL);

            int64_t c = cfirst;
            for (int64_t c0 = bos; c0 < eos; c0 += BT, c++) {
                const int64_t L = c0 + BT < eos ? BT : eos - c0;
                ref_state_store(p, h_out + (c * Hv + h) * V * K, hs);
                /* v_new_t = u_t - w_t h^T */
                for (int64_t t = 0; t < L; t++) {
                    const int64_t tok = c0 + t;
                    for (int64_t j = 0; j < V; j++) {
                        double acc = 0.0;
                        for (int64_t i = 0; i < K; i++)
                            acc += ld(wb, wd, (tok * Hv + h) * K + i) * hs[j * K + i];
                        vn[t * V + j] = ld(ub, ud, (tok * Hv + h) * V + j) - acc;
                        if (v_new) v_new[(tok * Hv + h) * V + j] = vn[t * V + j];
                    }
                }
                /* h = exp(G_last) h + sum_t v_new_t exp(G_last - G_t) k_t^T */
                const double Glast = g_cumsum[(c0 + L - 1) * Hv + h];
                const double decay = exp(Glast);
                for (int64_t x = 0; x < V * K; x++) hs[x] *= decay;
                for (int64_t t = 0; t < L; t++) {
                    const int64_t tok = c0 + t;
                    const double gate = exp(Glast - (double)g_cumsum[tok * Hv + h]);
                    for (int64_t j = 0; j < V; j++) {
                        const double vg = vn[t * V + j] * gate;
                        for (int64_t i = 0; i < K; i++)
                            hs[j * K + i] +=
                                vg * (double)gdn_bf16_to_f32(k[(tok * Hk + hk) * K + i]);
                    }
                }
            }
            if (final_state) ref_state_store(p, final_state + soff, hs);
        }
    }
    free(hs);
}

void gdn_ref_chunk_state_f64(const gdn_problem *p, const gdn_bf16 *k, const gdn_bf16 *w,
                             const gdn_bf16 *u, const float *g_cumsum, const float *h0,
                             double *h_out, double *v_new, double *final_state) {
    chunk_state(p, k, w, NULL, u, NULL, g_cumsum, h0, h_out, v_new, final_state);
}

void gdn_ref_chunk_state_f64_wu(const gdn_problem *p, const gdn_bf16 *k, const double *w,
                                const double *u, const float *g_cumsum, const float *h0,
                                double *h_out, double *v_new, double *final_state) {
    chunk_state(p, k, NULL, w, NULL, u, g_cumsum, h0, h_out, v_new, final_state);
}

void gdn_ref_chunk_output_f64(const gdn_problem *p, const gdn_bf16 *q, const gdn_bf16 *k,
                              const double *v_new, const float *g_cumsum, const double *h_out,
                              double scale, double *o) {
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, N = ref_num_seqs(p);
    const int64_t BT = GDN_CHUNK;
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        const int64_t cfirst = ref_first_chunk(p, n);
        for (int64_t h = 0; h < Hv; h++) {
            const int64_t hk = gdn_key_head(p, h);
            int64_t c = cfirst;
            for (int64_t c0 = bos; c0 < eos; c0 += BT, c++) {
                const int64_t L = c0 + BT < eos ? BT : eos - c0;
                const double *hc = h_out + (c * Hv + h) * V * K;
                for (int64_t t = 0; t < L; t++) {
                    const int64_t tt = c0 + t;
                    const double Gt = g_cumsum[tt * Hv + h];
                    const gdn_bf16 *qt = q + (tt * Hk + hk) * K;
                    double *ot = o + (tt * Hv + h) * V;
                    /* inter-chunk: exp(G_t) h_c q_t */
                    const double eg = exp(Gt);
                    for (int64_t j = 0; j < V; j++) {
                        double acc = 0.0;
                        for (int64_t i = 0; i < K; i++)
                            acc += hc[ref_state_off(p, j, i)] * (double)gdn_bf16_to_f32(qt[i]);
                        ot[j] = eg * acc;
                    }
                    /* intra-chunk: sum_{s<=t} (q_t . k_s) exp(G_t - G_s) v_new_s */
                    for (int64_t s = 0; s <= t; s++) {
                        const int64_t ts = c0 + s;
                        const gdn_bf16 *ks = k + (ts * Hk + hk) * K;
                        double qk = 0.0;
                        for (int64_t i = 0; i < K; i++)
                            qk += (double)gdn_bf16_to_f32(qt[i]) * (double)gdn_bf16_to_f32(ks[i]);
                        const double a = qk * exp(Gt - (double)g_cumsum[ts * Hv + h]);
                        const double *vs = v_new + (ts * Hv + h) * V;
                        for (int64_t j = 0; j < V; j++) ot[j] += a * vs[j];
                    }
                    for (int64_t j = 0; j < V; j++) ot[j] *= scale;
                }
            }
        }
    }
}

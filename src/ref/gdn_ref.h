/* gdn_ref: the references every test, the demo and the benchmark check
 * against. Host only, plain loops, no tricks:
 *   - the fp64 oracle of SPEC section 1 (the token-by-token recurrence),
 *   - fp64 versions of each chunked stage of SPEC section 3,
 *   - random inputs of the SPEC section 5 kind, and error measures.
 * Not part of the installed library. */
#ifndef GDN_REF_H
#define GDN_REF_H

#include <stdint.h>

#include "gdn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- random numbers (splitmix64 / xoshiro-style, reproducible) ---- */
typedef struct gdn_rng {
    uint64_t s[4];
} gdn_rng;
void gdn_rng_seed(gdn_rng *r, uint64_t seed);
double gdn_rng_uniform(gdn_rng *r); /* [0, 1) */
double gdn_rng_normal(gdn_rng *r);  /* N(0, 1) */

/* ---- one problem's inputs, host arrays, made by gdn_ref_inputs_make ----
 * Drawn as SPEC section 5: q, k L2-normalised per head then rounded to
 * bf16; v ~ N(0,1) bf16; g = logsigmoid(U(0,1))/4; beta = sigmoid(U(0,1));
 * h0 ~ 0.1 N(0,1) (in p.state_layout). g_cumsum is the chunk-local cumsum of
 * g (f32, summed in order). w and u are the WY stage (SPEC 3 steps 1-3)
 * computed in fp64 from these and rounded to bf16, so that the state
 * recurrence sees inputs of realistic size. */
typedef struct gdn_ref_inputs {
    gdn_problem p; /* the shape; p.cu_seqlens points at cu_seqlens below */
    int64_t N, NT;
    int32_t *cu_seqlens; /* NULL without varlen */
    gdn_bf16 *q, *k;     /* [B,T,Hk,K] */
    gdn_bf16 *v;         /* [B,T,Hv,V] */
    float *g, *beta;     /* [B,T,Hv] */
    float *g_cumsum;     /* [B,T,Hv] */
    gdn_bf16 *w;         /* [B,T,Hv,K] */
    gdn_bf16 *u;         /* [B,T,Hv,V] */
    float *h0;           /* [N,Hv,V,K] or [N,Hv,K,V]; NULL if not asked for */
    double scale;        /* 1/sqrt(K) */
} gdn_ref_inputs;

/* shape: dims, layout, head map, and cu_seqlens/num_seqs (copied) if set.
 * Returns 0 on success. */
int gdn_ref_inputs_make(gdn_ref_inputs *in, const gdn_problem *shape, uint64_t seed,
                        int with_h0);
void gdn_ref_inputs_free(gdn_ref_inputs *in);

/* ---- the oracle and the stages, fp64, no intermediate rounding ----
 * All take the problem for shapes, layout, head map and cu_seqlens. State
 * tensors (h0, h_out, final_state) follow p->state_layout. h0 may be NULL. */

/* SPEC 1. o [B,T,Hv,V], final_state [N,Hv,V,K] (either may be NULL). g is
 * per token (not cumsum). */
void gdn_ref_recurrent_f64(const gdn_problem *p, const gdn_bf16 *q, const gdn_bf16 *k,
                           const gdn_bf16 *v, const float *g, const float *beta, const float *h0,
                           double scale, double *o, double *final_state);

/* SPEC 1 with the pre-processing of gdn_forward_options (opts may be NULL:
 * defaults), all in fp64 on the exact input values: q and k L2-normalised
 * (x / sqrt(sum x^2 + 1e-6)), beta = sigmoid(beta), the Qwen3-Next gate
 * g = -exp(A_log[h]) * softplus(a + dt_bias[h]), scale (0 = 1/sqrt(K)). No
 * intermediate rounding: the oracle of the whole-layer operations.
 * o [B,T,Hv,V], final_state [N,Hv,V,K], chunk_states [NT,Hv,V,K] (the
 * state at the start of each 64-token chunk, packed over the sequences as
 * h_out); each may be NULL. */
void gdn_ref_forward_f64(const gdn_problem *p, const gdn_forward_options *opts,
                         const gdn_bf16 *q, const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                         const float *beta, const float *h0, double *o, double *final_state,
                         double *chunk_states);

/* SPEC 3, chunk-local cumsum of g (f32, in order, reset per chunk and seq). */
void gdn_ref_chunk_cumsum(const gdn_problem *p, const float *g, float *g_cumsum);

/* SPEC 3 steps 1-3: w [B,T,Hv,K], u [B,T,Hv,V]. */
void gdn_ref_chunk_wy_f64(const gdn_problem *p, const gdn_bf16 *k, const gdn_bf16 *v,
                          const float *beta, const float *g_cumsum, double *w, double *u);

/* SPEC 3 step 4 (the seed's op) in fp64 on the given bf16 inputs:
 * h_out [NT,Hv,V,K], v_new [B,T,Hv,V], final_state [N,Hv,V,K]; v_new and
 * final_state may be NULL. */
void gdn_ref_chunk_state_f64(const gdn_problem *p, const gdn_bf16 *k, const gdn_bf16 *w,
                             const gdn_bf16 *u, const float *g_cumsum, const float *h0,
                             double *h_out, double *v_new, double *final_state);
/* The same on fp64 w and u (e.g. gdn_ref_chunk_wy_f64's unrounded output):
 * the chunked stages composed entirely in fp64, as test_ref checks them
 * against the recurrence. */
void gdn_ref_chunk_state_f64_wu(const gdn_problem *p, const gdn_bf16 *k, const double *w,
                                const double *u, const float *g_cumsum, const float *h0,
                                double *h_out, double *v_new, double *final_state);

/* SPEC 3 step 5: o [B,T,Hv,V] from q, k, v_new, g_cumsum, h_out. */
void gdn_ref_chunk_output_f64(const gdn_problem *p, const gdn_bf16 *q, const gdn_bf16 *k,
                              const double *v_new, const float *g_cumsum, const double *h_out,
                              double scale, double *o);

/* ---- error measures: ||x - ref||_F / ||ref||_F over n elements; any
 * non-finite x (where ref is finite) gives +INFINITY, so NaN never passes.
 * If ||ref|| is 0, returns ||x||. */
double gdn_rel_err_bf16(const gdn_bf16 *x, const double *ref, int64_t n);
double gdn_rel_err_f32(const float *x, const double *ref, int64_t n);
double gdn_rel_err_f64(const double *x, const double *ref, int64_t n);

#ifdef __cplusplus
}
#endif
#endif

/* Reproducible random numbers, the SPEC section 5 inputs, and the error
 * measures every test reports. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "ref_common.h"

/* ---- random numbers: splitmix64 seeding, xoshiro256** stream ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(gdn_rng *r) {
    uint64_t *s = r->s;
    const uint64_t result = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void gdn_rng_seed(gdn_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

double gdn_rng_uniform(gdn_rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

double gdn_rng_normal(gdn_rng *r) {
    /* Box-Muller, one value per call (the pair's second half is dropped so
     * that the stream has no hidden state besides s). */
    const double u1 = 1.0 - gdn_rng_uniform(r); /* (0, 1] */
    const double u2 = gdn_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
}

/* ---- inputs ---- */

void gdn_ref_inputs_free(gdn_ref_inputs *in) {
    if (!in) return;
    free(in->cu_seqlens);
    free(in->q);
    free(in->k);
    free(in->v);
    free(in->g);
    free(in->beta);
    free(in->g_cumsum);
    free(in->w);
    free(in->u);
    free(in->h0);
    memset(in, 0, sizeof *in);
}

static void *alloc_n(int64_t count, size_t elem) {
    if (count < 0) return NULL;
    return malloc(count > 0 ? (size_t)count * elem : 1);
}

/* Draw count vectors of length d: N(0,1), L2-normalised (eps 1e-6 under
 * the root, as SPEC 1), rounded to bf16. */
static void fill_normalised(gdn_rng *r, gdn_bf16 *x, int64_t count, int64_t d, double *tmp) {
    for (int64_t c = 0; c < count; c++) {
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++) {
            tmp[i] = gdn_rng_normal(r);
            ss += tmp[i] * tmp[i];
        }
        const double inv = 1.0 / sqrt(ss + 1e-6);
        for (int64_t i = 0; i < d; i++) x[c * d + i] = gdn_f32_to_bf16((float)(tmp[i] * inv));
    }
}

int gdn_ref_inputs_make(gdn_ref_inputs *in, const gdn_problem *shape, uint64_t seed, int with_h0) {
    if (!in || !shape) return 1;
    memset(in, 0, sizeof *in);
    in->p = *shape;
    in->p.cu_seqlens_device = NULL;
    if (shape->cu_seqlens) {
        if (shape->num_seqs < 1) return 1;
        in->cu_seqlens = (int32_t *)alloc_n(shape->num_seqs + 1, sizeof(int32_t));
        if (!in->cu_seqlens) return 1;
        memcpy(in->cu_seqlens, shape->cu_seqlens, (size_t)(shape->num_seqs + 1) * sizeof(int32_t));
        in->p.cu_seqlens = in->cu_seqlens;
    } else {
        in->p.cu_seqlens = NULL;
    }
    const gdn_problem *p = &in->p;
    const int64_t tok = p->B * p->T, Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    in->N = ref_num_seqs(p);
    in->NT = ref_num_chunks(p);
    in->scale = 1.0 / sqrt((double)K);

    in->q = (gdn_bf16 *)alloc_n(tok * Hk * K, sizeof(gdn_bf16));
    in->k = (gdn_bf16 *)alloc_n(tok * Hk * K, sizeof(gdn_bf16));
    in->v = (gdn_bf16 *)alloc_n(tok * Hv * V, sizeof(gdn_bf16));
    in->g = (float *)alloc_n(tok * Hv, sizeof(float));
    in->beta = (float *)alloc_n(tok * Hv, sizeof(float));
    in->g_cumsum = (float *)alloc_n(tok * Hv, sizeof(float));
    in->w = (gdn_bf16 *)alloc_n(tok * Hv * K, sizeof(gdn_bf16));
    in->u = (gdn_bf16 *)alloc_n(tok * Hv * V, sizeof(gdn_bf16));
    if (with_h0) in->h0 = (float *)alloc_n(in->N * Hv * V * K, sizeof(float));
    double *wd = (double *)alloc_n(tok * Hv * K, sizeof(double));
    double *ud = (double *)alloc_n(tok * Hv * V, sizeof(double));
    double *tmp = (double *)alloc_n(K, sizeof(double));
    if (!in->q || !in->k || !in->v || !in->g || !in->beta || !in->g_cumsum || !in->w || !in->u ||
        (with_h0 && !in->h0) || !wd || !ud || !tmp) {
        free(wd);
        free(ud);
        free(tmp);
        gdn_ref_inputs_free(in);
        return 1;
    }

    gdn_rng r;
    gdn_rng_seed(&r, seed);
    fill_normalised(&r, in->q, tok * Hk, K, tmp);
    fill_normalised(&r, in->k, tok * Hk, K, tmp);
    for (int64_t x = 0; x < tok * Hv * V; x++)
        in->v[x] = gdn_f32_to_bf16((float)gdn_rng_normal(&r));
    for (int64_t x = 0; x < tok * Hv; x++) {
        /* logsigmoid(x) = -log(1 + exp(-x)) */
        in->g[x] = (float)(-log1p(exp(-gdn_rng_uniform(&r))) / 4.0);
        in->beta[x] = (float)(1.0 / (1.0 + exp(-gdn_rng_uniform(&r))));
    }
    if (with_h0)
        for (int64_t x = 0; x < in->N * Hv * V * K; x++)
            in->h0[x] = (float)(0.1 * gdn_rng_normal(&r));

    gdn_ref_chunk_cumsum(p, in->g, in->g_cumsum);
    gdn_ref_chunk_wy_f64(p, in->k, in->v, in->beta, in->g_cumsum, wd, ud);
    for (int64_t x = 0; x < tok * Hv * K; x++) in->w[x] = gdn_f32_to_bf16((float)wd[x]);
    for (int64_t x = 0; x < tok * Hv * V; x++) in->u[x] = gdn_f32_to_bf16((float)ud[x]);
    free(wd);
    free(ud);
    free(tmp);
    return 0;
}

/* ---- error measures ---- */

static double rel_err_finish(double num, double den, double xnorm, int nonfinite) {
    if (nonfinite) return INFINITY;
    if (den == 0.0) return sqrt(xnorm);
    return sqrt(num) / sqrt(den);
}

#define REL_ERR_BODY(LOAD)                                                                         \
    double num = 0.0, den = 0.0, xn = 0.0;                                                         \
    int nonfinite = 0;                                                                             \
    for (int64_t i = 0; i < n; i++) {                                                              \
        const double xi = (LOAD);                                                                  \
        const double ri = ref[i];                                                                  \
        if (!isfinite(xi) && isfinite(ri)) nonfinite = 1;                                          \
        const double d = xi - ri;                                                                  \
        num += d * d;                                                                              \
        den += ri * ri;                                                                            \
        xn += xi * xi;                                                                             \
    }                                                                                              \
    if (isnan(num) || isnan(den)) nonfinite = 1;                                                   \
    return rel_err_finish(num, den, xn, nonfinite)

double gdn_rel_err_bf16(const gdn_bf16 *x, const double *ref, int64_t n) {
    REL_ERR_BODY((double)gdn_bf16_to_f32(x[i]));
}

double gdn_rel_err_f32(const float *x, const double *ref, int64_t n) { REL_ERR_BODY((double)x[i]); }

double gdn_rel_err_f64(const double *x, const double *ref, int64_t n) { REL_ERR_BODY(x[i]); }

/* See recurrent_cases.h. */
#include "recurrent_cases.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gdn_internal.h"
#include "test_util.h"

const char *const rf_variant_names[RF_NUM_VARIANTS] = {"defaults", "l2norm", "sigmoid+scale",
                                                       "qwen_gate", "all"};

rf_case rf_sweep_case(int64_t K, int64_t V, int layout, int map, int dtype, int variant) {
    const int64_t area = K * V;
    rf_case c = {0};
    c.Hk = 2;
    c.Hv = area >= 128 * 128 ? 4 : 6;
    c.K = K;
    c.V = V;
    c.layout = (gdn_state_layout)layout;
    c.map = (gdn_head_map)map;
    c.dtype = (gdn_dtype)dtype;
    c.variant = variant;
    c.N = area > 128 * 128 ? 5 : area == 128 * 128 ? 7 : 11;
    c.varlen = 1;
    c.tmin = 1;
    c.padding = 1;
    c.history = layout == map;
    return c;
}

const rf_case rf_special_cases[RF_NUM_SPECIAL] = {
        /* decode, batch layout (no cu_seqlens): B = N, T = 1 */
        {.Hk = 4, .Hv = 8, .K = 128, .V = 128, .layout = GDN_STATE_KV, .map = GDN_HEAD_MAP_TILED,
         .dtype = GDN_DTYPE_BF16, .variant = 4, .N = 9, .T = 1, .padding = 1, .history = 1},
        /* batch of 3-token verifications */
        {.Hk = 2, .Hv = 4, .K = 64, .V = 96, .map = GDN_HEAD_MAP_TILED, .dtype = GDN_DTYPE_BF16,
         .variant = 2, .N = 5, .T = 3, .padding = 1, .history = 1},
        /* identity indices (NULL), with and without history */
        {.Hk = 1, .Hv = 2, .K = 64, .V = 64, .variant = 3, .N = 6, .varlen = 1, .tmin = 1,
         .identity = 1, .history = 1},
        {.Hk = 2, .Hv = 2, .K = 32, .V = 16, .layout = GDN_STATE_KV, .dtype = GDN_DTYPE_BF16,
         .variant = 1, .N = 5, .T = 2, .identity = 1},
        /* empty sequences among the others (T_n from 0 to 8) */
        {.Hk = 2, .Hv = 4, .K = 64, .V = 64, .variant = 4, .N = 12, .varlen = 1, .tmin = 0,
         .padding = 1},
        {.Hk = 2, .Hv = 4, .K = 64, .V = 64, .layout = GDN_STATE_KV, .map = GDN_HEAD_MAP_TILED,
         .dtype = GDN_DTYPE_BF16, .N = 12, .varlen = 1, .tmin = 0, .padding = 1, .history = 1},
};

void rf_describe(const rf_case *c, char *buf, size_t len) {
    char shape[64];
    if (c->varlen)
        snprintf(shape, sizeof shape, "N=%lld varlen%s", (long long)c->N,
                 c->tmin == 0 ? "(empty)" : "");
    else
        snprintf(shape, sizeof shape, "B=%lld T=%lld", (long long)c->N, (long long)c->T);
    snprintf(buf, len, "%s Hk=%lld Hv=%lld K=%lld V=%lld %s %s %s %s%s%s%s", shape,
             (long long)c->Hk, (long long)c->Hv, (long long)c->K, (long long)c->V,
             c->layout == GDN_STATE_KV ? "KV" : "VK",
             c->map == GDN_HEAD_MAP_TILED ? "tiled" : "block",
             c->dtype == GDN_DTYPE_F32 ? "f32" : "bf16", rf_variant_names[c->variant],
             c->identity ? " identity" : "", c->history ? " hist" : "",
             c->misalign ? " misaligned" : "");
}

void rf_problem_free(rf_problem *r) {
    gdn_ref_inputs_free(&r->in);
    free(r->cu);
    free(r->A_log);
    free(r->dt_bias);
    free(r->pool0);
    free(r->pool);
    free(r->idx);
    free(r->idx_cpu);
    free(r->slot_of);
    free(r->h0);
    memset(r, 0, sizeof *r);
}

/* The state_indices: a random permutation of the slots for the sequences;
 * padding marked with assorted negatives (and, for the CUDA test, indices
 * past the pool). The random draws are those each test always made. */
static void draw_indices(rf_problem *r, const rf_case *c, gdn_rng *rng, rf_drawn_for who) {
    const int64_t N = r->in.N;
    int32_t *perm = gdn_test_alloc(r->P, sizeof(int32_t));
    for (int64_t i = 0; i < r->P; i++) perm[i] = (int32_t)i;
    for (int64_t i = r->P - 1; i > 0; i--) {
        const int64_t j = (int64_t)(gdn_rng_uniform(rng) * (double)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    const int32_t P32 = (int32_t)r->P;
    const int32_t pads[] = {-1, -1, -1, -2, -1000, INT32_MIN, /* negatives: 6 */
                            P32, P32 + 1, P32 + 1000, INT32_MAX};
    const int npads = (int)(sizeof pads / sizeof pads[0]);
    r->idx = gdn_test_alloc(N, sizeof(int32_t));
    r->idx_cpu = gdn_test_alloc(N, sizeof(int32_t));
    for (int64_t n = 0; n < N; n++) {
        const int pad = c->padding && N > 1 && (n % 4 == 1 || gdn_rng_uniform(rng) < 0.15);
        if (who == RF_FOR_CPU_TEST) {
            r->idx[n] = pad ? pads[(int)(gdn_rng_uniform(rng) * 6)] : perm[n];
        } else {
            /* n % 8 == 1: a negative; n % 8 == 5: past the pool; else any */
            int which = (int)(gdn_rng_uniform(rng) * npads);
            if (n % 8 == 1) which = which % 6;
            if (n % 8 == 5) which = 6 + which % 4;
            r->idx[n] = pad ? pads[which] : perm[n];
        }
        r->idx_cpu[n] = r->idx[n] >= P32 ? -1 : r->idx[n];
        r->slot_of[n] = r->idx_cpu[n] < 0 ? -1 : r->idx_cpu[n];
    }
    free(perm);
}

int rf_problem_make(rf_problem *r, const rf_case *c, uint64_t seed, rf_drawn_for who) {
    memset(r, 0, sizeof *r);
    gdn_rng rng;
    gdn_rng_seed(&rng, seed ^ 0x9e3779b97f4a7c15ull);
    int64_t B = c->N, T = c->T; /* without varlen: B = N sequences of T tokens */
    if (c->varlen) {
        r->cu = gdn_test_alloc(c->N + 1, sizeof(int32_t));
        r->cu[0] = 0;
        const int tmax = c->tmax ? c->tmax : 8;
        for (int64_t n = 0; n < c->N; n++)
            r->cu[n + 1] =
                r->cu[n] + c->tmin + (int32_t)(gdn_rng_uniform(&rng) * (tmax + 1 - c->tmin));
        B = 1;
        T = r->cu[c->N] > 0 ? r->cu[c->N] : 1;
        if (r->cu[c->N] == 0) r->cu[c->N] = 1; /* at least one token overall */
    }
    const gdn_problem shape = gdn_test_problem(B, T, c->Hk, c->Hv, c->K, c->V, c->layout, c->map,
                                               r->cu, c->varlen ? c->N : 0);
    if (!CHECK(gdn_ref_inputs_make(&r->in, &shape, seed, 1) == 0, "inputs_make")) return 0;
    const gdn_problem *p = &r->in.p;
    r->tokens = p->B * p->T;
    r->S = p->Hv * p->V * p->K;

    gdn_forward_options_init(&r->opts);
    const int l2 = c->variant == 1 || c->variant == 4, sig = c->variant == 2 || c->variant == 4;
    const int qwen = c->variant == 3 || c->variant == 4;
    r->opts.l2norm_qk = l2;
    r->opts.beta_sigmoid = sig;
    if (sig) r->opts.scale = 0.37f;
    if (l2) { /* q and k of random norms, 0.3 to 3 */
        gdn_bf16 *x[2] = {r->in.q, r->in.k};
        for (int a = 0; a < 2; a++)
            for (int64_t vec = 0; vec < r->tokens * p->Hk; vec++) {
                const float f = (float)(0.3 + 2.7 * gdn_rng_uniform(&rng));
                for (int64_t i = 0; i < p->K; i++)
                    x[a][vec * p->K + i] =
                        gdn_f32_to_bf16(gdn_bf16_to_f32(x[a][vec * p->K + i]) * f);
            }
    }
    if (sig)
        for (int64_t i = 0; i < r->tokens * p->Hv; i++)
            r->in.beta[i] = (float)(2.0 * gdn_rng_normal(&rng));
    r->A_log = gdn_test_alloc(p->Hv, sizeof(float));
    r->dt_bias = gdn_test_alloc(p->Hv, sizeof(float));
    if (qwen || who == RF_FOR_CUDA_TEST)
        for (int64_t h = 0; h < p->Hv; h++) {
            r->A_log[h] = (float)log(0.1 + 1.9 * gdn_rng_uniform(&rng));
            r->dt_bias[h] = (float)(-4.0 + 3.0 * gdn_rng_uniform(&rng));
        }
    if (qwen) {
        r->opts.qwen_gate = 1;
        r->opts.A_log = r->A_log;
        r->opts.dt_bias = r->dt_bias;
        for (int64_t i = 0; i < r->tokens * p->Hv; i++) r->in.g[i] = (float)gdn_rng_normal(&rng);
    }
    r->opts_arg = c->variant == 0 ? NULL : &r->opts;

    /* The pool: random contents everywhere, untouched slots around the
     * sequences' ones. */
    const int64_t N = r->in.N;
    r->P = c->identity ? N + 2 : N + N / 2 + 3;
    r->elem = c->dtype == GDN_DTYPE_F32 ? 4 : 2;
    r->pool0 = gdn_test_alloc(r->P * r->S, r->elem);
    for (int64_t x = 0; x < r->P * r->S; x++) {
        const float f = (float)(0.3 * (gdn_rng_uniform(&rng) - 0.5));
        if (r->elem == 4)
            ((float *)r->pool0)[x] = f;
        else
            ((gdn_bf16 *)r->pool0)[x] = gdn_f32_to_bf16(f);
    }
    r->slot_of = gdn_test_alloc(N, sizeof(int32_t));
    if (c->identity)
        for (int64_t n = 0; n < N; n++) r->slot_of[n] = (int32_t)n;
    else
        draw_indices(r, c, &rng, who);
    /* The sequences' initial states: the oracle's h0 in those slots. */
    r->h0 = gdn_test_alloc(N * r->S, sizeof(float));
    for (int64_t n = 0; n < N; n++) {
        const int64_t s = r->slot_of[n];
        for (int64_t x = 0; x < r->S; x++) {
            if (s < 0) {
                r->h0[n * r->S + x] = 0.0f;
                continue;
            }
            const float f = r->in.h0[n * r->S + x];
            if (r->elem == 4) {
                ((float *)r->pool0)[s * r->S + x] = f;
                r->h0[n * r->S + x] = f;
            } else {
                const gdn_bf16 b = gdn_f32_to_bf16(f);
                ((gdn_bf16 *)r->pool0)[s * r->S + x] = b;
                r->h0[n * r->S + x] = gdn_bf16_to_f32(b);
            }
        }
    }
    if (who == RF_FOR_CPU_TEST) {
        r->pool = gdn_test_alloc(r->P * r->S, r->elem);
        memcpy(r->pool, r->pool0, (size_t)(r->P * r->S) * r->elem);
    }
    return 1;
}

double rf_pool_elem(size_t elem, const void *base, int64_t i) {
    return elem == 4 ? (double)((const float *)base)[i]
                     : (double)gdn_bf16_to_f32(((const gdn_bf16 *)base)[i]);
}

double rf_ulp_bf16(double x) {
    const float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u &= 0x7f800000u; /* 2^floor(log2|x|) */
    float p2;
    memcpy(&p2, &u, sizeof p2);
    return (double)p2 * 0x1p-7;
}

void rf_errs_add(rf_errs *er, double x, double ref) {
    if (!isfinite(x)) er->nonfinite = 1;
    const double d = x - ref;
    er->ss_diff += d * d;
    er->ss_ref += ref * ref;
    er->n++;
    const double m = fmax(fabs(x), fabs(ref));
    er->worst = fmax(er->worst, fabs(d) - 0.5 * rf_ulp_bf16(m));
}

double rf_errs_rel(const rf_errs *er) {
    if (er->nonfinite) return INFINITY;
    return er->ss_ref > 0.0 ? sqrt(er->ss_diff / er->ss_ref) : sqrt(er->ss_diff);
}

double rf_errs_excess(const rf_errs *er) {
    if (er->nonfinite) return INFINITY;
    const double rms = sqrt(er->ss_ref / (double)(er->n > 0 ? er->n : 1));
    return rms > 0.0 ? er->worst / rms : er->worst;
}

void rf_oracle_prefix_states(const rf_problem *r, int64_t L, double *out) {
    const gdn_problem *p = &r->in.p;
    const int64_t N = r->in.N, Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    int32_t *cu = gdn_test_alloc(N + 1, sizeof(int32_t));
    cu[0] = 0;
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        cu[n + 1] = cu[n] + (int32_t)(eos - bos < L ? eos - bos : L);
    }
    const int64_t T = cu[N] > 0 ? cu[N] : 1;
    gdn_bf16 *q = gdn_test_alloc(T * Hk * K, 2), *k = gdn_test_alloc(T * Hk * K, 2);
    gdn_bf16 *v = gdn_test_alloc(T * Hv * V, 2);
    float *g = gdn_test_alloc(T * Hv, 4), *beta = gdn_test_alloc(T * Hv, 4);
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        for (int64_t t = cu[n]; t < cu[n + 1]; t++) {
            const int64_t src = bos + (t - cu[n]);
            memcpy(q + t * Hk * K, r->in.q + src * Hk * K, (size_t)(Hk * K) * 2);
            memcpy(k + t * Hk * K, r->in.k + src * Hk * K, (size_t)(Hk * K) * 2);
            memcpy(v + t * Hv * V, r->in.v + src * Hv * V, (size_t)(Hv * V) * 2);
            memcpy(g + t * Hv, r->in.g + src * Hv, (size_t)Hv * 4);
            memcpy(beta + t * Hv, r->in.beta + src * Hv, (size_t)Hv * 4);
        }
    }
    gdn_problem pp = *p;
    pp.B = 1;
    pp.T = T;
    pp.cu_seqlens = cu;
    pp.num_seqs = N;
    gdn_ref_forward_f64(&pp, r->opts_arg, q, k, v, g, beta, r->h0, NULL, out, NULL);
    free(q);
    free(k);
    free(v);
    free(g);
    free(beta);
    free(cu);
}

/* The bound on one kind of state (written-back or history): the relative
 * error for an f32 pool, the excess over one rounding for bf16. */
static void check_states(const rf_case *c, const char *name, const char *what, double rel,
                         double excess, rf_worst *worst) {
    if (c->dtype == GDN_DTYPE_F32) {
        CHECK(rel <= RF_BOUND_F32, "%s: %s rel err %.3e > %.1e", name, what, rel, RF_BOUND_F32);
        worst->f32 = fmax(worst->f32, rel);
    } else {
        CHECK(excess <= RF_BOUND_EXCESS, "%s: bf16 %s excess over rounding %.3e > %.1e", name,
              what, excess, RF_BOUND_EXCESS);
        worst->bf16_excess = fmax(worst->bf16_excess, excess);
        worst->bf16_rel = fmax(worst->bf16_rel, rel);
    }
}

void rf_check_vs_oracle(const rf_problem *r, const rf_case *c, const char *name,
                        const gdn_bf16 *o, const void *pool, const void *hist, rf_worst *worst,
                        rf_oracle_errs *e) {
    const gdn_problem *p = &r->in.p;
    const int64_t N = r->in.N, Hv = p->Hv, V = p->V, S = r->S;
    double *o_ref = gdn_test_alloc(r->tokens * Hv * V, sizeof(double));
    double *fs_ref = gdn_test_alloc(N * S, sizeof(double));
    gdn_ref_forward_f64(p, r->opts_arg, r->in.q, r->in.k, r->in.v, r->in.g, r->in.beta, r->h0,
                        o_ref, fs_ref, NULL);
    memset(e, 0, sizeof *e);

    rf_errs po = {0}, ps = {0};
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        if (r->slot_of[n] < 0) continue;
        for (int64_t x = bos * Hv * V; x < eos * Hv * V; x++)
            rf_errs_add(&po, gdn_bf16_to_f32(o[x]), o_ref[x]);
        if (eos > bos)
            for (int64_t x = 0; x < S; x++)
                rf_errs_add(&ps, rf_pool_elem(r->elem, pool, r->slot_of[n] * S + x),
                            fs_ref[n * S + x]);
    }
    e->o_rel = rf_errs_rel(&po), e->o_excess = rf_errs_excess(&po);
    CHECK(e->o_rel <= RF_BOUND_O_REL, "%s: o rel err %.3e > %.1e", name, e->o_rel,
          RF_BOUND_O_REL);
    CHECK(e->o_excess <= RF_BOUND_EXCESS, "%s: o excess over bf16 rounding %.3e > %.1e", name,
          e->o_excess, RF_BOUND_EXCESS);
    worst->o_rel = fmax(worst->o_rel, e->o_rel);
    worst->o_excess = fmax(worst->o_excess, e->o_excess);
    e->state_rel = rf_errs_rel(&ps), e->state_excess = rf_errs_excess(&ps);
    check_states(c, name, "state", e->state_rel, e->state_excess, worst);

    /* The history: token t of a sequence holds its state after its first
     * L = t - bos + 1 tokens (one oracle run per prefix length). */
    if (hist) {
        rf_errs ph = {0};
        int64_t maxlen = 0;
        for (int64_t n = 0; n < N; n++) {
            int64_t bos, eos;
            gdn_seq_bounds(p, n, &bos, &eos);
            if (eos - bos > maxlen) maxlen = eos - bos;
        }
        double *pref = gdn_test_alloc(N * S, sizeof(double));
        for (int64_t L = 1; L <= maxlen; L++) {
            rf_oracle_prefix_states(r, L, pref);
            for (int64_t n = 0; n < N; n++) {
                int64_t bos, eos;
                gdn_seq_bounds(p, n, &bos, &eos);
                if (r->slot_of[n] < 0 || eos - bos < L) continue;
                const int64_t t = bos + L - 1;
                for (int64_t x = 0; x < S; x++)
                    rf_errs_add(&ph, rf_pool_elem(r->elem, hist, t * S + x), pref[n * S + x]);
            }
        }
        free(pref);
        e->hist_rel = rf_errs_rel(&ph), e->hist_excess = rf_errs_excess(&ph);
        check_states(c, name, "history", e->hist_rel, e->hist_excess, worst);
    }
    free(o_ref);
    free(fs_ref);
}

void rf_check_untouched(const rf_problem *r, const char *name, const gdn_bf16 *o,
                        const void *pool) {
    const gdn_problem *p = &r->in.p;
    const int64_t N = r->in.N, Hv = p->Hv, V = p->V, S = r->S;
    int pad_rows_zero = 1;
    char *named = gdn_test_alloc(r->P, 1);
    memset(named, 0, (size_t)r->P);
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        if (r->slot_of[n] >= 0) {
            if (eos > bos) named[r->slot_of[n]] = 1;
            continue;
        }
        for (int64_t x = bos * Hv * V; x < eos * Hv * V; x++) pad_rows_zero &= o[x] == 0;
    }
    CHECK(pad_rows_zero, "%s: o rows of padding sequences are not zero", name);
    int64_t changed = 0;
    for (int64_t s = 0; s < r->P; s++)
        if (!named[s] && memcmp((const char *)pool + s * S * r->elem,
                                (const char *)r->pool0 + s * S * r->elem, (size_t)S * r->elem) != 0)
            changed++;
    CHECK(changed == 0, "%s: %lld pool slots that no sequence names were changed", name,
          (long long)changed);
    free(named);
}

int rf_padding_history_untouched(const rf_problem *r, const void *hist) {
    if (!hist) return 1;
    int untouched = 1;
    for (int64_t n = 0; n < r->in.N; n++) {
        if (r->slot_of[n] >= 0) continue;
        int64_t bos, eos;
        gdn_seq_bounds(&r->in.p, n, &bos, &eos);
        const unsigned char *b = (const unsigned char *)hist + bos * r->S * r->elem;
        for (int64_t x = 0; x < (eos - bos) * r->S * (int64_t)r->elem; x++)
            untouched &= b[x] == 0xFF;
    }
    return untouched;
}

void rf_check_same_bits(const rf_problem *r, const char *name, const gdn_bf16 *o,
                        const gdn_bf16 *o2, const void *pool, const void *pool2, const void *hist,
                        const void *hist2) {
    const int64_t n_o = r->tokens * r->in.p.Hv * r->in.p.V;
    CHECK(memcmp(o, o2, (size_t)n_o * 2) == 0, "%s: o differs between two runs", name);
    CHECK(memcmp(pool, pool2, (size_t)(r->P * r->S) * r->elem) == 0,
          "%s: pool differs between two runs", name);
    CHECK(!hist || memcmp(hist, hist2, (size_t)(r->tokens * r->S) * r->elem) == 0,
          "%s: history differs between two runs", name);
}

void rf_put_nan_in_v(rf_problem *r, int64_t hn) {
    int64_t bos, eos;
    gdn_seq_bounds(&r->in.p, 1, &bos, &eos);
    r->in.v[(bos * r->in.p.Hv + hn) * r->in.p.V + 3] = 0x7fc0; /* NaN */
}

void rf_check_nan_contained(const rf_problem *r, int64_t hn, const gdn_bf16 *o,
                            const gdn_bf16 *o_nan, const void *pool, const void *pool_nan) {
    const gdn_problem *p = &r->in.p;
    const int64_t Hv = p->Hv, V = p->V, hs = p->V * p->K;
    int64_t bos, eos;
    gdn_seq_bounds(p, 1, &bos, &eos);
    int other_same = 1, hit_nan = 0;
    for (int64_t t = 0; t < r->tokens; t++)
        for (int64_t h = 0; h < Hv; h++) {
            const int hit = t >= bos && t < eos && h == hn;
            for (int64_t j = 0; j < V; j++) {
                const int64_t x = (t * Hv + h) * V + j;
                if (hit)
                    hit_nan |= (o_nan[x] & 0x7fff) > 0x7f80;
                else
                    other_same &= o[x] == o_nan[x];
            }
        }
    for (int64_t s = 0; s < r->P; s++)
        for (int64_t h = 0; h < Hv; h++) {
            if (s == r->slot_of[1] && h == hn) continue;
            other_same &= memcmp((const char *)pool + (s * Hv + h) * hs * r->elem,
                                 (const char *)pool_nan + (s * Hv + h) * hs * r->elem,
                                 (size_t)hs * r->elem) == 0;
        }
    CHECK(hit_nan, "NaN in v did not reach its own o rows");
    CHECK(other_same, "a NaN in one (sequence, head) changed other outputs or slots");
}

/* The oracle against itself: the token-by-token fp64 recurrence (SPEC 1)
 * versus the fp64 chunked stages composed (SPEC 3: cumsum -> WY -> state ->
 * output). Both are exact algebra on the same inputs, so they agree to
 * fp64 rounding (~1e-13 relative); 1e-10 leaves room without hiding any
 * real mistake (a wrong gate, index or head map is an O(1e-2..1) error).
 *
 * The one input made exact for this test: g is rounded to a multiple of
 * 2^-12, so that its chunk-local f32 cumsum (which the chunked stages take)
 * is exact; otherwise f32 rounding of G alone would differ from the
 * recurrence's per-token decays by ~1e-7. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "test_util.h"

typedef struct ref_case {
    int64_t B, T, Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    int with_h0;
    const int32_t *cu; /* NULL or num_seqs+1 entries */
    int64_t num_seqs;
} ref_case;

static const double TOL = 1e-10;

static void run_case(const ref_case *c, uint64_t seed) {
    const gdn_problem shape = gdn_test_problem(c->B, c->T, c->Hk, c->Hv, c->K, c->V, c->layout,
                                               c->map, c->cu, c->num_seqs);

    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, seed, c->with_h0) == 0, "inputs_make failed"))
        return;
    const gdn_problem *p = &in.p;
    const int64_t tok = p->B * p->T;
    for (int64_t x = 0; x < tok * p->Hv; x++)
        in.g[x] = ldexpf(nearbyintf(ldexpf(in.g[x], 12)), -12);
    gdn_ref_chunk_cumsum(p, in.g, in.g_cumsum);

    const int64_t nstate = in.N * p->Hv * p->V * p->K;
    const int64_t nout = tok * p->Hv * p->V;
    double *o_rec = gdn_test_alloc(nout, sizeof(double));
    double *o_ch = gdn_test_alloc(nout, sizeof(double));
    double *fs_rec = gdn_test_alloc(nstate, sizeof(double));
    double *fs_ch = gdn_test_alloc(nstate, sizeof(double));
    double *wd = gdn_test_alloc(tok * p->Hv * p->K, sizeof(double));
    double *ud = gdn_test_alloc(nout, sizeof(double));
    double *vn = gdn_test_alloc(nout, sizeof(double));
    double *ho = gdn_test_alloc(in.NT * p->Hv * p->V * p->K, sizeof(double));

    gdn_ref_recurrent_f64(p, in.q, in.k, in.v, in.g, in.beta, in.h0, in.scale, o_rec, fs_rec);
    gdn_ref_chunk_wy_f64(p, in.k, in.v, in.beta, in.g_cumsum, wd, ud);
    gdn_ref_chunk_state_f64_wu(p, in.k, wd, ud, in.g_cumsum, in.h0, ho, vn, fs_ch);
    gdn_ref_chunk_output_f64(p, in.q, in.k, vn, in.g_cumsum, ho, in.scale, o_ch);

    const double eo = gdn_rel_err_f64(o_ch, o_rec, nout);
    const double ef = gdn_rel_err_f64(fs_ch, fs_rec, nstate);
    printf("  B=%lld T=%lld Hk=%lld Hv=%lld K=%lld V=%lld %s %s h0=%d N=%lld: o %.2e, "
           "final %.2e\n",
           (long long)p->B, (long long)p->T, (long long)p->Hk, (long long)p->Hv, (long long)p->K,
           (long long)p->V, p->state_layout == GDN_STATE_KV ? "KV" : "VK",
           p->head_map == GDN_HEAD_MAP_TILED ? "tiled" : "block", c->with_h0, (long long)in.N, eo,
           ef);
    CHECK(eo <= TOL, "o: recurrent vs chunked rel err %.3e > %.1e", eo, TOL);
    CHECK(ef <= TOL, "final_state: recurrent vs chunked rel err %.3e > %.1e", ef, TOL);

    /* An empty sequence's final state is its h0 (or zero), exactly. */
    if (p->cu_seqlens) {
        const int64_t S = p->Hv * p->V * p->K;
        for (int64_t n = 0; n < in.N; n++) {
            if (p->cu_seqlens[n + 1] != p->cu_seqlens[n]) continue;
            int same = 1;
            for (int64_t x = 0; x < S; x++) {
                const double want = in.h0 ? (double)in.h0[n * S + x] : 0.0;
                same &= fs_rec[n * S + x] == want && fs_ch[n * S + x] == want;
            }
            CHECK(same, "empty sequence %lld: final state is not h0", (long long)n);
        }
    }

    /* The bf16-input state stage equals the fp64 one fed the same values. */
    for (int64_t x = 0; x < tok * p->Hv * p->K; x++) wd[x] = gdn_bf16_to_f32(in.w[x]);
    for (int64_t x = 0; x < nout; x++) ud[x] = gdn_bf16_to_f32(in.u[x]);
    double *ho2 = gdn_test_alloc(in.NT * p->Hv * p->V * p->K, sizeof(double));
    double *vn2 = gdn_test_alloc(nout, sizeof(double));
    double *fs2 = gdn_test_alloc(nstate, sizeof(double));
    gdn_ref_chunk_state_f64_wu(p, in.k, wd, ud, in.g_cumsum, in.h0, ho, vn, fs_ch);
    gdn_ref_chunk_state_f64(p, in.k, in.w, in.u, in.g_cumsum, in.h0, ho2, vn2, fs2);
    CHECK(memcmp(ho, ho2, (size_t)(in.NT * p->Hv * p->V * p->K) * sizeof(double)) == 0 &&
              memcmp(vn, vn2, (size_t)nout * sizeof(double)) == 0 &&
              memcmp(fs_ch, fs2, (size_t)nstate * sizeof(double)) == 0,
          "chunk_state_f64 (bf16 w,u) differs from chunk_state_f64_wu on the same values");

    free(ho2);
    free(vn2);
    free(fs2);
    free(o_rec);
    free(o_ch);
    free(fs_rec);
    free(fs_ch);
    free(wd);
    free(ud);
    free(vn);
    free(ho);
    gdn_ref_inputs_free(&in);
}

/* The random inputs have the SPEC 5 distribution and are reproducible. */
static void test_inputs(void) {
    gdn_problem shape;
    gdn_problem_init(&shape, 1, 200, 2, 4, 100, 36);
    gdn_ref_inputs a, b, c;
    if (!CHECK(gdn_ref_inputs_make(&a, &shape, 7, 1) == 0 &&
                   gdn_ref_inputs_make(&b, &shape, 7, 1) == 0 &&
                   gdn_ref_inputs_make(&c, &shape, 8, 1) == 0,
               "inputs_make failed"))
        return;
    const int64_t nk = 200 * 2 * 100, nv = 200 * 4 * 36, ng = 200 * 4;
    CHECK(memcmp(a.k, b.k, (size_t)nk * 2) == 0 && memcmp(a.w, b.w, (size_t)ng * 100 * 2) == 0 &&
              memcmp(a.h0, b.h0, (size_t)4 * 36 * 100 * 4) == 0,
          "same seed gives different inputs");
    CHECK(memcmp(a.k, c.k, (size_t)nk * 2) != 0, "different seeds give the same k");
    double worst = 0.0;
    for (int64_t r = 0; r < 200 * 2; r++) {
        double sq = 0.0, sk = 0.0;
        for (int64_t i = 0; i < 100; i++) {
            sq += pow(gdn_bf16_to_f32(a.q[r * 100 + i]), 2);
            sk += pow(gdn_bf16_to_f32(a.k[r * 100 + i]), 2);
        }
        worst = fmax(worst, fmax(fabs(sqrt(sq) - 1), fabs(sqrt(sk) - 1)));
    }
    CHECK(worst < 1e-2, "q, k rows not unit norm (worst |norm-1| %.3e)", worst);
    int g_ok = 1, b_ok = 1;
    for (int64_t x = 0; x < ng; x++) {
        g_ok &= a.g[x] >= -0.1733f && a.g[x] <= -0.0781f;  /* logsigmoid([0,1))/4 */
        b_ok &= a.beta[x] >= 0.5f && a.beta[x] <= 0.7311f; /* sigmoid([0,1)) */
    }
    CHECK(g_ok, "g outside logsigmoid(U(0,1))/4");
    CHECK(b_ok, "beta outside sigmoid(U(0,1))");
    double m = 0.0, s2 = 0.0;
    for (int64_t x = 0; x < nv; x++) {
        const double v = gdn_bf16_to_f32(a.v[x]);
        m += v;
        s2 += v * v;
    }
    m /= (double)nv;
    s2 = s2 / (double)nv - m * m;
    CHECK(fabs(m) < 0.05 && fabs(s2 - 1.0) < 0.05, "v not N(0,1): mean %.3f var %.3f", m, s2);
    /* g_cumsum restarts at each chunk */
    CHECK(a.g_cumsum[64 * 4 + 1] == a.g[64 * 4 + 1] && a.g_cumsum[0] == a.g[0],
          "g_cumsum does not restart at a chunk start");
    gdn_ref_inputs_free(&a);
    gdn_ref_inputs_free(&b);
    gdn_ref_inputs_free(&c);
}

static void test_rel_err(void) {
    const double ref[3] = {1.0, 2.0, 2.0};
    const double x[3] = {1.0, 2.0, 2.3};
    const float xf[3] = {1.0f, NAN, 2.0f};
    const double zero[3] = {0, 0, 0};
    CHECK(fabs(gdn_rel_err_f64(x, ref, 3) - 0.1) < 1e-12, "rel_err_f64 wrong");
    CHECK(gdn_rel_err_f32(xf, ref, 3) == INFINITY, "NaN must give +inf");
    CHECK(fabs(gdn_rel_err_f64(ref, zero, 3) - 3.0) < 1e-12, "zero ref must give ||x||");
    const gdn_bf16 xb[3] = {gdn_f32_to_bf16(1.0f), gdn_f32_to_bf16(2.0f), 0xFFFF};
    CHECK(gdn_rel_err_bf16(xb, ref, 3) == INFINITY, "bf16 NaN must give +inf");
}

/* Independent checks of the head map and the state layout, which the
 * recurrent-vs-chunked comparison cannot see (both use the same mapping):
 * every value head of a multi-head problem equals a one-head problem made
 * from the key head the map names (tiled: h % Hk, block: h / (Hv/Hk)),
 * bitwise; and the KV final state is the transpose of the VK one. */
static void test_head_map_and_layout(gdn_head_map map) {
    const int64_t T = 70, Hk = 2, Hv = 6, K = 24, V = 20;
    const gdn_problem shape = gdn_test_problem(1, T, Hk, Hv, K, V, GDN_STATE_VK, map, NULL, 0);
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, 55, 1) == 0, "inputs_make failed")) return;
    double *o = gdn_test_alloc(T * Hv * V, sizeof(double));
    double *fs = gdn_test_alloc(Hv * V * K, sizeof(double));
    double *fs_kv = gdn_test_alloc(Hv * V * K, sizeof(double));
    gdn_ref_recurrent_f64(&in.p, in.q, in.k, in.v, in.g, in.beta, in.h0, in.scale, o, fs);

    gdn_problem one;
    gdn_problem_init(&one, 1, T, 1, 1, K, V);
    gdn_bf16 *q1 = gdn_test_alloc(T * K, 2), *k1 = gdn_test_alloc(T * K, 2);
    gdn_bf16 *v1 = gdn_test_alloc(T * V, 2);
    float *g1 = gdn_test_alloc(T, 4), *b1 = gdn_test_alloc(T, 4);
    double *o1 = gdn_test_alloc(T * V, sizeof(double)),
           *fs1 = gdn_test_alloc(V * K, sizeof(double));
    int same = 1;
    for (int64_t h = 0; h < Hv; h++) {
        const int64_t hk = map == GDN_HEAD_MAP_TILED ? h % Hk : h / (Hv / Hk);
        for (int64_t t = 0; t < T; t++) {
            memcpy(q1 + t * K, in.q + (t * Hk + hk) * K, (size_t)K * 2);
            memcpy(k1 + t * K, in.k + (t * Hk + hk) * K, (size_t)K * 2);
            memcpy(v1 + t * V, in.v + (t * Hv + h) * V, (size_t)V * 2);
            g1[t] = in.g[t * Hv + h];
            b1[t] = in.beta[t * Hv + h];
        }
        gdn_ref_recurrent_f64(&one, q1, k1, v1, g1, b1, in.h0 + h * V * K, in.scale, o1, fs1);
        for (int64_t t = 0; t < T; t++)
            same &= memcmp(o1 + t * V, o + (t * Hv + h) * V, (size_t)V * sizeof(double)) == 0;
        same &= memcmp(fs1, fs + h * V * K, (size_t)(V * K) * sizeof(double)) == 0;
    }
    CHECK(same, "%s head map: a value head differs from its one-head problem",
          map == GDN_HEAD_MAP_TILED ? "tiled" : "block");

    /* KV: h0 and final state transposed, same numbers. */
    float *h0t = gdn_test_vk_to_kv(in.h0, Hv, V, K);
    in.p.state_layout = GDN_STATE_KV;
    double *o_kv = gdn_test_alloc(T * Hv * V, sizeof(double));
    gdn_ref_recurrent_f64(&in.p, in.q, in.k, in.v, in.g, in.beta, h0t, in.scale, o_kv, fs_kv);
    const int tr = memcmp(o_kv, o, (size_t)(T * Hv * V) * sizeof(double)) == 0 &&
                   gdn_test_kv_is_vk(fs_kv, fs, sizeof(double), Hv, V, K);
    CHECK(tr, "KV layout is not the transpose of VK");

    free(h0t);
    free(o_kv);
    free(q1);
    free(k1);
    free(v1);
    free(g1);
    free(b1);
    free(o1);
    free(fs1);
    free(o);
    free(fs);
    free(fs_kv);
    gdn_ref_inputs_free(&in);
}

int main(void) {
    test_inputs();
    test_rel_err();
    test_head_map_and_layout(GDN_HEAD_MAP_BLOCK);
    test_head_map_and_layout(GDN_HEAD_MAP_TILED);

    static const int32_t cu1[] = {0, 0, 5, 5, 70, 200, 200};
    static const int32_t cu2[] = {0, 64, 128, 129, 193};
    static const int32_t cu3[] = {0, 300};
    const int64_t Ts[] = {1, 63, 64, 65, 130, 300};
    uint64_t seed = 100;
    for (unsigned i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        ref_case c = {1, Ts[i], 1, 2, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0};
        run_case(&c, seed++);
        c.layout = GDN_STATE_KV;
        c.with_h0 = 0;
        c.Hk = 2;
        c.Hv = 6;
        c.K = 100;
        c.V = 128;
        c.map = GDN_HEAD_MAP_TILED;
        run_case(&c, seed++);
    }
    const ref_case cases[] = {
        {1, 130, 1, 1, 100, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0},
        {1, 130, 3, 3, 128, 100, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0},
        {1, 130, 2, 6, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0},
        {1, 130, 2, 6, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0},
        {2, 65, 1, 3, 64, 100, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0},
        {3, 300, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, NULL, 0},
        {1, 70, 1, 1, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0},
        {1, 20, 1, 2, 256, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0},
        {1, 200, 2, 4, 64, 100, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, cu1, 6},
        {1, 200, 1, 2, 100, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, cu1, 6},
        {1, 193, 1, 3, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, cu2, 4},
        {1, 300, 2, 2, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, cu3, 1},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], seed++);
    return gdn_test_finish("test_ref");
}

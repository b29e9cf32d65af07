/* The algebra of context parallelism, simulated on the CPU: one sequence
 * cut into P slices (P = 1, 2, 3, 8; cuts not multiples of 64, slices as
 * short as one token). Each slice computes its summary alone
 * (gdn_chunk_forward_summary), the summaries are folded from h0
 * (gdn_state_advance) into each slice's initial state, and each slice runs
 * gdn_chunk_forward from there. The result must meet SPEC 5's bounds
 * against the fp64 oracle, like the unsplit forward, and stay close to it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gdn_ref.h"
#include "test_util.h"

/* SPEC section 5 */
#define TOL_O 4e-3
#define TOL_STATE 3.5e-3

typedef struct cp_case {
    const char *name;
    int64_t T, Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    int opts_all; /* l2norm, beta sigmoid, Qwen gate, custom scale */
    double g_scale; /* 0: SPEC 5's gates; else g times this: a weak decay, so
                       that the state (and the transition) carries across
                       slices instead of fading within one */
    int P;
    int64_t cuts[9]; /* cuts[0] = 0 < ... < cuts[P] = T */
} cp_case;

static gdn_context *ctx;

static void run_case(const cp_case *c, uint64_t seed) {
    const gdn_problem shape =
        gdn_test_problem(1, c->T, c->Hk, c->Hv, c->K, c->V, c->layout, c->map, NULL, 0);
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, seed, 1) == 0, "%s: inputs", c->name)) return;
    const gdn_problem *p = &in.p;
    const int64_t Hk = c->Hk, Hv = c->Hv, K = c->K, V = c->V, T = c->T;
    const int64_t ns = Hv * V * K, no = T * Hv * V;

    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    float *A_log = gdn_test_alloc(Hv, 4), *dt_bias = gdn_test_alloc(Hv, 4);
    float *g = in.g, *beta = in.beta;
    if (c->g_scale != 0)
        for (int64_t i = 0; i < T * Hv; i++) in.g[i] = (float)(in.g[i] * c->g_scale);
    if (c->opts_all) {
        /* raw inputs: a for the Qwen gate, beta logits, q/k not normalised */
        gdn_rng r;
        gdn_rng_seed(&r, seed ^ 0x5eed);
        for (int64_t h = 0; h < Hv; h++) {
            A_log[h] = (float)(0.5 * gdn_rng_normal(&r) - 1.0);
            dt_bias[h] = (float)(0.3 * gdn_rng_normal(&r));
        }
        for (int64_t i = 0; i < T * Hv; i++) {
            in.g[i] = (float)gdn_rng_normal(&r);
            in.beta[i] = (float)gdn_rng_normal(&r);
        }
        for (int64_t i = 0; i < T * Hk * K; i++) { /* un-normalise q and k */
            in.q[i] = gdn_f32_to_bf16(3.0f * gdn_bf16_to_f32(in.q[i]));
            in.k[i] = gdn_f32_to_bf16(0.5f * gdn_bf16_to_f32(in.k[i]));
        }
        opts.l2norm_qk = 1;
        opts.beta_sigmoid = 1;
        opts.qwen_gate = 1;
        opts.A_log = A_log;
        opts.dt_bias = dt_bias;
        opts.scale = 0.07f;
    }

    double *o_ref = gdn_test_alloc(no, 8), *fs_ref = gdn_test_alloc(ns, 8);
    gdn_ref_forward_f64(p, &opts, in.q, in.k, in.v, g, beta, in.h0, o_ref, fs_ref, NULL);

    /* unsplit */
    gdn_bf16 *o_one = gdn_test_alloc(no, 2);
    float *fs_one = gdn_test_alloc(ns, 4);
    CHECK_STATUS(gdn_chunk_forward(ctx, p, &opts, in.q, in.k, in.v, g, beta, in.h0, o_one, fs_one,
                                   NULL, NULL, 0),
                 GDN_SUCCESS, ctx);

    /* split: summaries, fold, forward per slice */
    gdn_bf16 *o_cp = gdn_test_alloc_poisoned(no, 2);
    float *fs_cp = gdn_test_alloc_poisoned(ns, 4), *folded = gdn_test_alloc(ns, 4);
    float *tr = gdn_test_alloc_poisoned((int64_t)c->P * Hv * K * K, 4);
    float *part = gdn_test_alloc_poisoned((int64_t)c->P * ns, 4);
    float *start = gdn_test_alloc((int64_t)c->P * ns, 4);
    for (int r = 0; r < c->P; r++) {
        const int64_t t0 = c->cuts[r], Tr = c->cuts[r + 1] - t0;
        gdn_problem ps = *p;
        ps.T = Tr;
        CHECK_STATUS(gdn_chunk_forward_summary(ctx, &ps, &opts, in.k + t0 * Hk * K,
                                               in.v + t0 * Hv * V, g + t0 * Hv, beta + t0 * Hv,
                                               tr + r * Hv * K * K, part + r * ns, NULL, 0),
                     GDN_SUCCESS, ctx);
    }
    /* rank r's initial state: h0 advanced through slices 0..r-1 (in place) */
    memcpy(folded, in.h0, (size_t)ns * 4);
    for (int r = 0; r < c->P; r++) {
        memcpy(start + r * ns, folded, (size_t)ns * 4);
        gdn_problem ps = *p;
        CHECK_STATUS(gdn_state_advance(ctx, &ps, folded, tr + r * Hv * K * K, part + r * ns, folded),
                     GDN_SUCCESS, ctx);
    }
    for (int r = 0; r < c->P; r++) {
        const int64_t t0 = c->cuts[r], Tr = c->cuts[r + 1] - t0;
        gdn_problem ps = *p;
        ps.T = Tr;
        CHECK_STATUS(gdn_chunk_forward(ctx, &ps, &opts, in.q + t0 * Hk * K, in.k + t0 * Hk * K,
                                       in.v + t0 * Hv * V, g + t0 * Hv, beta + t0 * Hv,
                                       start + r * ns, o_cp + t0 * Hv * V,
                                       r == c->P - 1 ? fs_cp : NULL, NULL, NULL, 0),
                     GDN_SUCCESS, ctx);
    }

    const double e_o = gdn_rel_err_bf16(o_cp, o_ref, no);
    const double e_fs = gdn_rel_err_f32(fs_cp, fs_ref, ns);
    const double e_fold = gdn_rel_err_f32(folded, fs_ref, ns);
    const double e_o1 = gdn_rel_err_bf16(o_one, o_ref, no);
    double *one64 = gdn_test_alloc(no, 8);
    for (int64_t i = 0; i < no; i++) one64[i] = (double)gdn_bf16_to_f32(o_one[i]);
    const double e_vs_one = gdn_rel_err_bf16(o_cp, one64, no);
    /* SPEC 5's bounds hold for its inputs. With a weak decay the state
     * keeps 1000 tokens of bf16 roundings and the unsplit forward itself
     * lands at about 4e-3 (measured 4.03e-3 on t1000): there the split must
     * do no worse than 1.1x the unsplit error. */
    const double e_fs1 = gdn_rel_err_f32(fs_one, fs_ref, ns);
    const double tol_o = c->g_scale != 0 ? fmax(TOL_O, 1.1 * e_o1) : TOL_O;
    const double tol_s = c->g_scale != 0 ? fmax(TOL_STATE, 1.1 * e_fs1) : TOL_STATE;
    CHECK(e_o <= tol_o, "%s: split o vs oracle %.3e > %.3e", c->name, e_o, tol_o);
    CHECK(e_fs <= tol_s, "%s: split final state vs oracle %.3e > %.3e", c->name, e_fs, tol_s);
    CHECK(e_fold <= tol_s, "%s: folded summaries vs oracle final state %.3e > %.3e", c->name,
          e_fold, tol_s);
    /* split and unsplit each sit within the bound of the oracle; between
     * them, chunk boundaries move, so allow twice the bound */
    CHECK(e_vs_one <= 2 * TOL_O, "%s: split o vs unsplit o %.3e", c->name, e_vs_one);
    CHECK(gdn_test_count_nan_bf16(o_cp, no) == 0, "%s: unwritten o", c->name);
    if (c->P == 1)
        CHECK(memcmp(o_cp, o_one, (size_t)no * 2) == 0, "%s: P = 1 must equal the unsplit forward",
              c->name);
    printf("  %-26s P=%d  o %.2e (unsplit %.2e, split vs unsplit %.2e)  final %.2e  folded %.2e\n",
           c->name, c->P, e_o, e_o1, e_vs_one, e_fs, e_fold);

    free(one64), free(o_ref), free(fs_ref), free(o_one), free(fs_one), free(o_cp), free(fs_cp);
    free(folded), free(tr), free(part), free(start), free(A_log), free(dt_bias);
    gdn_ref_inputs_free(&in);
}

/* The summary and advance rules: each required pointer named, options
 * and problem rules as in gdn_chunk_forward; the CUDA backend says it does
 * not implement these yet. */
static void test_validation(void) {
    gdn_problem p;
    gdn_problem_init(&p, 1, 8, 1, 1, 4, 4);
    gdn_bf16 kv[32] = {0};
    float gb[8] = {0}, tr[16], part[16], out[16];
    struct {
        const char *want; /* substring of the message */
        const gdn_bf16 *k, *v;
        const float *g, *beta;
        float *tr, *part;
    } sum_cases[] = {
        {"k is NULL", NULL, kv, gb, gb, tr, part},   {"v is NULL", kv, NULL, gb, gb, tr, part},
        {"g is NULL", kv, kv, NULL, gb, tr, part},   {"beta is NULL", kv, kv, gb, NULL, tr, part},
        {"transition is NULL", kv, kv, gb, gb, NULL, part},
        {"partial is NULL", kv, kv, gb, gb, tr, NULL},
    };
    for (unsigned i = 0; i < sizeof sum_cases / sizeof sum_cases[0]; i++) {
        CHECK_ERROR(gdn_chunk_forward_summary(ctx, &p, NULL, sum_cases[i].k, sum_cases[i].v,
                                              sum_cases[i].g, sum_cases[i].beta, sum_cases[i].tr,
                                              sum_cases[i].part, NULL, 0),
                    GDN_ERROR_INVALID_ARGUMENT, ctx, sum_cases[i].want);
    }
    /* options: the Qwen gate needs A_log */
    gdn_forward_options opts;
    gdn_forward_options_init(&opts);
    opts.qwen_gate = 1;
    CHECK_ERROR(gdn_chunk_forward_summary(ctx, &p, &opts, kv, kv, gb, gb, tr, part, NULL, 0),
                GDN_ERROR_INVALID_ARGUMENT, ctx, "A_log");
    /* problem rules: cu_seqlens must end at T */
    static const int32_t cu_bad[] = {0, 3, 7};
    gdn_problem pv = p;
    pv.cu_seqlens = cu_bad;
    pv.num_seqs = 2;
    CHECK_ERROR(gdn_chunk_forward_summary(ctx, &pv, NULL, kv, kv, gb, gb, tr, part, NULL, 0),
                GDN_ERROR_INVALID_ARGUMENT, ctx, "cu_seqlens");

    struct {
        const char *want;
        float *tr, *part, *out;
    } adv_cases[] = {
        {"transition is NULL", NULL, part, out},
        {"partial is NULL", tr, NULL, out},
        {"state_out is NULL", tr, part, NULL},
    };
    for (unsigned i = 0; i < sizeof adv_cases / sizeof adv_cases[0]; i++) {
        CHECK_ERROR(gdn_state_advance(ctx, &p, NULL, adv_cases[i].tr, adv_cases[i].part,
                                      adv_cases[i].out),
                    GDN_ERROR_INVALID_ARGUMENT, ctx, adv_cases[i].want);
    }
    gdn_problem ph = p;
    ph.Hv = 3; /* Hv % Hk rule applies here too */
    ph.Hk = 2;
    CHECK_ERROR(gdn_state_advance(ctx, &ph, NULL, tr, part, part), GDN_ERROR_INVALID_ARGUMENT, ctx,
                "Hv");

    /* state_in NULL means zero: out = partial */
    for (int i = 0; i < 16; i++) part[i] = (float)i, tr[i] = 1.0f;
    CHECK_STATUS(gdn_state_advance(ctx, &p, NULL, tr, part, out), GDN_SUCCESS, ctx);
    CHECK(memcmp(out, part, sizeof out) == 0, "advance from a zero state must give partial");
    if (gdn_cuda_available()) {
        gdn_context *gpu;
        if (CHECK_STATUS(gdn_context_create(&gpu, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL)) {
            /* host pointers on a CUDA context are refused, by name */
            CHECK_STATUS(gdn_state_advance(gpu, &p, NULL, tr, part, out),
                         GDN_ERROR_INVALID_ARGUMENT, gpu);
            gdn_context_destroy(gpu);
        }
    }
}

/* The rules of the workspace-size queries and of gdn_chunk_forward_cp
 * that hold on any backend: bytes not NULL, no cu_seqlens, a communicator,
 * and (here, on the CPU) the CUDA backend required. The pointer rules of
 * gdn_chunk_forward_cp are the forward's (gdn_validate_pointers, tested in
 * test_validation) and are reached only on a CUDA context. */
static void test_cp_validation(void) {
    gdn_problem p;
    gdn_problem_init(&p, 1, 8, 1, 1, 4, 4);
    gdn_bf16 x[32] = {0};
    float f[16] = {0};
    int fake_comm = 0; /* never dereferenced: the CPU backend is refused first */
    size_t bytes = 7;
    CHECK_ERROR(gdn_chunk_forward_summary_workspace_size(ctx, &p, NULL, NULL),
                GDN_ERROR_INVALID_ARGUMENT, ctx,
                "gdn_chunk_forward_summary_workspace_size: bytes is NULL");
    CHECK_STATUS(gdn_chunk_forward_summary_workspace_size(ctx, &p, NULL, &bytes), GDN_SUCCESS, ctx);
    CHECK(bytes == 0, "the CPU summary needs no workspace (got %zu)", bytes);
    gdn_problem bad = p;
    bad.Hv = 3, bad.Hk = 2;
    CHECK_ERROR(gdn_chunk_forward_summary_workspace_size(ctx, &bad, NULL, &bytes),
                GDN_ERROR_INVALID_ARGUMENT, ctx, "Hv");

    static const int32_t cu[] = {0, 3, 8};
    gdn_problem pv = p;
    pv.cu_seqlens = cu;
    pv.num_seqs = 2;
    struct {
        const char *what, *want;
        const gdn_problem *p;
        void *comm;
        gdn_status status;
    } cases[] = {
        {"cu_seqlens", "cu_seqlens must be NULL", &pv, &fake_comm, GDN_ERROR_INVALID_ARGUMENT},
        {"no communicator", "nccl_comm is NULL", &p, NULL, GDN_ERROR_INVALID_ARGUMENT},
        {"CPU backend", "needs the CUDA backend", &p, &fake_comm, GDN_ERROR_NOT_SUPPORTED},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK_STATUS(gdn_chunk_forward_cp_workspace_size(ctx, cases[i].p, NULL, cases[i].comm,
                                                         &bytes),
                     cases[i].status, ctx);
        CHECK(strstr(gdn_last_error(ctx), "gdn_chunk_forward_cp_workspace_size") &&
                  strstr(gdn_last_error(ctx), cases[i].want),
              "cp workspace size, %s: message: %s", cases[i].what, gdn_last_error(ctx));
        CHECK_STATUS(gdn_chunk_forward_cp(ctx, cases[i].p, NULL, x, x, x, f, f, NULL, x, NULL,
                                          cases[i].comm, NULL, 0),
                     cases[i].status, ctx);
        CHECK(strstr(gdn_last_error(ctx), "gdn_chunk_forward_cp:") &&
                  strstr(gdn_last_error(ctx), cases[i].want),
              "cp, %s: message: %s", cases[i].what, gdn_last_error(ctx));
    }
    CHECK_ERROR(gdn_chunk_forward_cp_workspace_size(ctx, &p, NULL, &fake_comm, NULL),
                GDN_ERROR_INVALID_ARGUMENT, ctx, "bytes is NULL");
}

/* Summaries of a varlen batch equal each sequence's alone, bit for bit;
 * an empty sequence has the identity transition and a zero partial. */
static void test_summary_varlen(void) {
    static const int32_t cu[] = {0, 70, 70, 200};
    const int64_t Hk = 1, Hv = 2, K = 32, V = 16, N = 3;
    gdn_problem shape = gdn_test_problem(1, 200, Hk, Hv, K, V, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK,
                                         cu, N);
    gdn_ref_inputs in;
    if (!CHECK(gdn_ref_inputs_make(&in, &shape, 99, 0) == 0, "varlen inputs")) return;
    const int64_t nt = Hv * K * K, np = Hv * V * K;
    float *tr = gdn_test_alloc_poisoned(N * nt, 4), *part = gdn_test_alloc_poisoned(N * np, 4);
    float *tr1 = gdn_test_alloc_poisoned(nt, 4), *part1 = gdn_test_alloc_poisoned(np, 4);
    CHECK_STATUS(gdn_chunk_forward_summary(ctx, &in.p, NULL, in.k, in.v, in.g, in.beta, tr, part, NULL, 0),
                 GDN_SUCCESS, ctx);
    for (int64_t n = 0; n < N; n++) {
        const int64_t t0 = cu[n], len = cu[n + 1] - cu[n];
        if (len == 0) {
            int ok = 1;
            for (int64_t h = 0; h < Hv; h++)
                for (int64_t i = 0; i < K * K; i++)
                    ok &= tr[n * nt + h * K * K + i] == (i / K == i % K ? 1.0f : 0.0f);
            for (int64_t i = 0; i < np; i++) ok &= part[n * np + i] == 0.0f;
            CHECK(ok, "empty sequence %lld: identity transition, zero partial", (long long)n);
            continue;
        }
        gdn_problem one = gdn_test_problem(1, len, Hk, Hv, K, V, GDN_STATE_VK,
                                           GDN_HEAD_MAP_BLOCK, NULL, 0);
        CHECK_STATUS(gdn_chunk_forward_summary(ctx, &one, NULL, in.k + t0 * Hk * K,
                                               in.v + t0 * Hv * V, in.g + t0 * Hv,
                                               in.beta + t0 * Hv, tr1, part1, NULL, 0),
                     GDN_SUCCESS, ctx);
        CHECK(memcmp(tr1, tr + n * nt, (size_t)nt * 4) == 0 &&
                  memcmp(part1, part + n * np, (size_t)np * 4) == 0,
              "sequence %lld: summary in the batch differs from alone", (long long)n);
    }
    free(tr), free(part), free(tr1), free(part1);
    gdn_ref_inputs_free(&in);
}

int main(void) {
    if (!CHECK_STATUS(gdn_context_create(&ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish("test_context_parallel_cpu");
    const cp_case cases[] = {
        {"t1000_p1", 1000, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 1, {0, 1000}},
        {"t1000_p2", 1000, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 2, {0, 437, 1000}},
        {"t1000_p2_weak_decay", 1000, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0.002, 2,
         {0, 437, 1000}},
        {"t1000_p3_kv_tiled_weak", 1000, 2, 4, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 0, 0.002, 3,
         {0, 100, 555, 1000}},
        {"t1000_p8_short_slices", 1000, 1, 3, 64, 48, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0, 8,
         {0, 1, 71, 200, 201, 390, 650, 999, 1000}},
        {"t777_p8_k100_weak", 777, 1, 2, 100, 36, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 0, 0.002, 8,
         {0, 90, 130, 131, 300, 470, 600, 700, 777}},
        {"t600_p3_k128_options", 600, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, 0, 3,
         {0, 65, 333, 600}},
        {"t2000_p8_k128_weak", 2000, 1, 2, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, 0.002, 8,
         {0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000}},
    };
    const double t0 = gdn_test_seconds();
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 7000 + i);
    test_validation();
    test_cp_validation();
    test_summary_varlen();
    printf("elapsed %.1f s\n", gdn_test_seconds() - t0);
    gdn_context_destroy(ctx);
    return gdn_test_finish("test_context_parallel_cpu");
}

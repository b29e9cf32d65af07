/* gdn_chunk_forward against the fp64 oracle of SPEC
 * section 1 (gdn_ref_forward_f64: the token recurrence with the options
 * applied in fp64 on the exact input values), on fresh SPEC section 5
 * inputs: every T from 1 to 130 (each chunk boundary), 300 and 1000; K = V
 * = 64, 100, 128, 256; Hv/Hk = 1..4; ragged varlen with empty sequences;
 * each option (scale, L2 norm of un-normalised q and k, beta logits
 * through the sigmoid, the Qwen3-Next gate from raw a, A_log, dt_bias);
 * both state layouts and head maps; the chunk-start states. Outputs are
 * poisoned (0xFF, NaN) before every call so that unwritten elements show.
 * Then: the FLA fixtures (SPEC section 6); determinism (two runs, thread
 * counts) and batch invariance, bitwise; resuming from chunk_states,
 * bitwise; optional outputs and NULL options changing nothing; KV as the
 * transpose of VK; NaN and Inf propagating only to the outputs that
 * depend on them; and the bounds catching real bugs.
 *
 * Bounds: SPEC section 5, relative Frobenius error vs fp64: o 4e-3,
 * final_state 3.5e-3; the chunk-start states are states like the final
 * one: 3.5e-3.
 *
 * Built twice: test_chunk_forward_cpu runs it on the CPU backend;
 * test_chunk_forward_cuda (GDN_TEST_CUDA) runs every call on the CUDA
 * backend through fwd() (host arrays copied to the device, outputs
 * poisoned there, copied back), adds the split path of long sequences,
 * and skips (exit 77) without a GPU. GDN_TEST_QUICK=1 runs a subset (for
 * compute-sanitizer). On CUDA a non-finite input reaches the outputs from
 * the start of its 64-token chunk (gdn.h), so check_nonfinite allows that. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "devbuf.h"
#include "gdn_ref.h"
#include "test_util.h"

#ifdef GDN_TEST_CUDA
#define TEST_NAME "test_chunk_forward_cuda"
#define TEST_BACKEND GDN_BACKEND_CUDA
#else
#define TEST_NAME "test_chunk_forward_cpu"
#define TEST_BACKEND GDN_BACKEND_CPU
#endif
static int quick; /* GDN_TEST_QUICK=1 */

static const double BOUND_O = 4e-3;
static const double BOUND_FINAL = 3.5e-3;
static const double BOUND_CS = 3.5e-3;

enum { OPT_SCALE = 1, OPT_L2 = 2, OPT_SIG = 4, OPT_QWEN = 8 };

typedef struct fw_case {
    int cls; /* case class, for the summary */
    int64_t B, T, Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    int with_h0;
    const int32_t *cu;
    int64_t num_seqs;
    unsigned opt;
} fw_case;

enum { C_TSWEEP, C_DIMS, C_RATIO, C_VARLEN, C_OPTS, C_LONG, C_COUNT };
static const char *const CLASS_NAME[C_COUNT] = {
    "T = 1..130 (K=V=32)", "K = V = 64/100/128/256", "Hv/Hk = 1..4",
    "varlen + empty seqs", "options",             "T = 1000, batches"};
static double worst[C_COUNT][3]; /* o, final, chunk states */
static int class_cases[C_COUNT];

/* The inputs of one case: the SPEC 5 draw, then what the options need in
 * place of the pre-processed tensors. */
typedef gdn_test_fw_inputs fw_inputs;

static int fw_inputs_make(fw_inputs *f, const fw_case *c, uint64_t seed) {
    memset(f, 0, sizeof *f);
    const gdn_problem shape = gdn_test_problem(c->B, c->T, c->Hk, c->Hv, c->K, c->V, c->layout,
                                               c->map, c->cu, c->num_seqs);
    if (gdn_ref_inputs_make(&f->in, &shape, seed, c->with_h0) != 0) return 1;
    gdn_forward_options_init(&f->opts);
    const gdn_problem *p = &f->in.p;
    const int64_t tok = p->B * p->T;
    gdn_rng r;
    gdn_rng_seed(&r, seed ^ 0x5eedf00dull);
    if (c->opt & OPT_SCALE) f->opts.scale = 0.37f;
    if (c->opt & OPT_L2) {
        /* un-normalised q and k: N(0,1) times a per-vector scale 0.25..4 */
        f->opts.l2norm_qk = 1;
        gdn_bf16 *x[2] = {f->in.q, f->in.k};
        for (int w = 0; w < 2; w++)
            for (int64_t m = 0; m < tok * p->Hk; m++) {
                const double s = 0.25 * pow(16.0, gdn_rng_uniform(&r));
                for (int64_t i = 0; i < p->K; i++)
                    x[w][m * p->K + i] = gdn_f32_to_bf16((float)(s * gdn_rng_normal(&r)));
            }
    }
    if (c->opt & OPT_SIG) {
        /* logits: beta = sigmoid(U(0,1)) as SPEC 5, given before the sigmoid */
        f->opts.beta_sigmoid = 1;
        for (int64_t x = 0; x < tok * p->Hv; x++) f->in.beta[x] = (float)gdn_rng_uniform(&r);
    }
    if (c->opt & OPT_QWEN) {
        /* raw a ~ N(0,1) (now and then 25, past softplus's linear
         * threshold), exp(A_log) in [0.02, 0.3], dt_bias in [-1, 1] */
        f->opts.qwen_gate = 1;
        f->A_log = gdn_test_alloc(p->Hv, sizeof(float));
        f->dt_bias = gdn_test_alloc(p->Hv, sizeof(float));
        for (int64_t h = 0; h < p->Hv; h++) {
            f->A_log[h] = (float)log(0.02 + 0.28 * gdn_rng_uniform(&r));
            f->dt_bias[h] = (float)(2.0 * gdn_rng_uniform(&r) - 1.0);
        }
        for (int64_t x = 0; x < tok * p->Hv; x++)
            f->in.g[x] = gdn_rng_uniform(&r) < 0.01 ? 25.0f : (float)gdn_rng_normal(&r);
        f->opts.A_log = f->A_log;
        f->opts.dt_bias = f->dt_bias;
    }
    return 0;
}

/* gdn_chunk_forward on ctx's backend with host arrays. On CUDA: every
 * array is copied to the device (A_log, dt_bias of the options too),
 * the outputs are poisoned there (0xFF: NaN), the workspace is allocated
 * at the size the library asks for and poisoned too (so that no kernel
 * can lean on what an earlier call left there: zeros, say), and the
 * outputs come back. */
#ifdef GDN_TEST_CUDA
static void *dev_copy(const void *src, size_t bytes, int *ok) {
    void *d = NULL;
    if (!src || !*ok) return NULL;
    if (gdn_dev_alloc(&d, bytes ? bytes : 1) != 0 || gdn_dev_upload(d, src, bytes) != 0) *ok = 0;
    return d;
}
static void *dev_out(const void *host, size_t bytes, int *ok) {
    void *d = NULL;
    if (!host || !*ok) return NULL;
    if (gdn_dev_alloc(&d, bytes ? bytes : 1) != 0 || gdn_dev_fill(d, 0xFF, bytes) != 0) *ok = 0;
    return d;
}
#endif

static gdn_status fwd(gdn_context *ctx, const gdn_problem *p, const gdn_forward_options *opts,
                      const gdn_bf16 *q, const gdn_bf16 *k, const gdn_bf16 *v, const float *g,
                      const float *beta, const float *h0, gdn_bf16 *o, float *fs, float *cs) {
#ifndef GDN_TEST_CUDA
    return gdn_chunk_forward(ctx, p, opts, q, k, v, g, beta, h0, o, fs, cs, NULL, 0);
#else
    const int64_t tok = p->B * p->T, N = gdn_problem_num_seqs(p), NT = gdn_problem_num_chunks(p);
    const size_t nqk = (size_t)(tok * p->Hk * p->K) * 2, nv = (size_t)(tok * p->Hv * p->V) * 2;
    const size_t ng = (size_t)(tok * p->Hv) * 4, ns = (size_t)(N * p->Hv * p->V * p->K) * 4;
    const size_t nc = (size_t)(NT * p->Hv * p->V * p->K) * 4;
    int ok = 1;
    gdn_problem pd = *p;
    gdn_forward_options od;
    if (opts) od = *opts;
    void *dq = dev_copy(q, nqk, &ok), *dk = dev_copy(k, nqk, &ok), *dv = dev_copy(v, nv, &ok);
    void *dg = dev_copy(g, ng, &ok), *db = dev_copy(beta, ng, &ok), *dh = dev_copy(h0, ns, &ok);
    void *dcu = p->cu_seqlens ? dev_copy(p->cu_seqlens, (size_t)(N + 1) * 4, &ok) : NULL;
    void *da = NULL, *dd = NULL;
    if (opts && opts->qwen_gate) {
        da = dev_copy(opts->A_log, (size_t)p->Hv * 4, &ok);
        dd = dev_copy(opts->dt_bias, (size_t)p->Hv * 4, &ok);
        od.A_log = da;
        od.dt_bias = dd;
    }
    void *dO = dev_out(o, nv, &ok), *dF = dev_out(fs, ns, &ok), *dC = dev_out(cs, nc, &ok);
    pd.cu_seqlens_device = dcu;
    size_t wsb = 0;
    void *ws = NULL;
    gdn_status st = GDN_ERROR_INTERNAL;
    if (ok && gdn_chunk_forward_workspace_size(ctx, &pd, opts ? &od : NULL, &wsb) == GDN_SUCCESS &&
        (wsb == 0 || (gdn_dev_alloc(&ws, wsb) == 0 && gdn_dev_fill(ws, 0xFF, wsb) == 0))) {
        st = gdn_chunk_forward(ctx, &pd, opts ? &od : NULL, dq, dk, dv, dg, db, dh, dO, dF, dC, ws,
                               wsb);
        if (st == GDN_SUCCESS && gdn_dev_sync() != 0) st = GDN_ERROR_CUDA;
        if (st == GDN_SUCCESS &&
            (gdn_dev_download(o, dO, nv) != 0 || (fs && gdn_dev_download(fs, dF, ns) != 0) ||
             (cs && gdn_dev_download(cs, dC, nc) != 0)))
            st = GDN_ERROR_CUDA;
    }
    if (!ok) fprintf(stderr, "device buffers: %s\n", gdn_dev_error());
    void *bufs[] = {dq, dk, dv, dg, db, dh, dcu, da, dd, dO, dF, dC, ws};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gdn_dev_free(bufs[i]);
    return st;
#endif
}

/* The op's outputs, poisoned before the call. */
typedef struct fw_out {
    gdn_bf16 *o;
    float *fs, *cs;
    int64_t n_o, n_f, n_c;
} fw_out;

static void fw_out_alloc(fw_out *o, const gdn_ref_inputs *in, int want_final, int want_cs) {
    const gdn_problem *p = &in->p;
    o->n_o = p->B * p->T * p->Hv * p->V;
    o->n_f = in->N * p->Hv * p->V * p->K;
    o->n_c = in->NT * p->Hv * p->V * p->K;
    o->o = gdn_test_alloc_poisoned(o->n_o, sizeof(gdn_bf16));
    o->fs = want_final ? gdn_test_alloc_poisoned(o->n_f, sizeof(float)) : NULL;
    o->cs = want_cs ? gdn_test_alloc_poisoned(o->n_c, sizeof(float)) : NULL;
}

static void fw_out_free(fw_out *o) {
    free(o->o);
    free(o->fs);
    free(o->cs);
}

static gdn_status run_op(gdn_context *ctx, const fw_inputs *f, fw_out *o) {
    const gdn_ref_inputs *in = &f->in;
    return fwd(ctx, &in->p, &f->opts, in->q, in->k, in->v, in->g, in->beta, in->h0, o->o, o->fs,
               o->cs);
}

/* The case's inputs and its outputs from one run of the op (two counted
 * checks); 0 when the inputs could not be made (nothing to free then). */
static int fw_setup(gdn_context *ctx, const fw_case *c, uint64_t seed, fw_inputs *f, fw_out *o) {
    if (!CHECK(fw_inputs_make(f, c, seed) == 0, "inputs")) return 0;
    fw_out_alloc(o, &f->in, 1, 1);
    CHECK_STATUS(run_op(ctx, f, o), GDN_SUCCESS, ctx);
    return 1;
}

static int fw_out_equal(const fw_out *a, const fw_out *b) {
    if (memcmp(a->o, b->o, (size_t)a->n_o * sizeof(gdn_bf16)) != 0) return 0;
    if (a->fs && b->fs && memcmp(a->fs, b->fs, (size_t)a->n_f * sizeof(float)) != 0) return 0;
    if (a->cs && b->cs && memcmp(a->cs, b->cs, (size_t)a->n_c * sizeof(float)) != 0) return 0;
    return 1;
}

static void describe(const fw_case *c, char *buf, size_t len) {
    snprintf(buf, len, "B=%lld T=%lld Hk=%lld Hv=%lld K=%lld V=%lld %s %s h0=%d%s%s%s%s%s",
             (long long)c->B, (long long)c->T, (long long)c->Hk, (long long)c->Hv, (long long)c->K,
             (long long)c->V, c->layout == GDN_STATE_KV ? "KV" : "VK",
             c->map == GDN_HEAD_MAP_TILED ? "tiled" : "block", c->with_h0,
             c->cu ? " varlen" : "", c->opt & OPT_SCALE ? " scale" : "",
             c->opt & OPT_L2 ? " l2norm" : "", c->opt & OPT_SIG ? " sigmoid" : "",
             c->opt & OPT_QWEN ? " qwen" : "");
}

/* The op vs the oracle on one case; verbose prints a line. */
static void check_case(gdn_context *ctx, const fw_case *c, uint64_t seed, int verbose) {
    char name[256];
    describe(c, name, sizeof name);
    fw_inputs f;
    if (!CHECK(fw_inputs_make(&f, c, seed) == 0, "%s: inputs", name)) return;
    const gdn_ref_inputs *in = &f.in;
    fw_out o;
    fw_out_alloc(&o, in, 1, 1);
    if (!CHECK_STATUS(run_op(ctx, &f, &o), GDN_SUCCESS, ctx)) {
        fw_out_free(&o);
        gdn_test_fw_inputs_free(&f);
        return;
    }
    double *ro = gdn_test_alloc(o.n_o, sizeof(double));
    double *rf = gdn_test_alloc(o.n_f, sizeof(double));
    double *rc = gdn_test_alloc(o.n_c, sizeof(double));
    gdn_ref_forward_f64(&in->p, &f.opts, in->q, in->k, in->v, in->g, in->beta, in->h0, ro, rf, rc);
    const double eo = gdn_rel_err_bf16(o.o, ro, o.n_o);
    const double ef = gdn_rel_err_f32(o.fs, rf, o.n_f);
    const double ec = gdn_rel_err_f32(o.cs, rc, o.n_c);
    if (verbose) printf("  %-86s o %.2e  final %.2e  chunk states %.2e\n", name, eo, ef, ec);
    CHECK(gdn_test_count_nan_bf16(o.o, o.n_o) == 0, "%s: o has unwritten/NaN elements", name);
    CHECK(gdn_test_count_nan_f32(o.fs, o.n_f) == 0, "%s: final_state has unwritten/NaN elements",
          name);
    CHECK(gdn_test_count_nan_f32(o.cs, o.n_c) == 0, "%s: chunk_states has unwritten/NaN elements",
          name);
    CHECK(eo <= BOUND_O, "%s: o rel err %.3e > %.1e", name, eo, BOUND_O);
    CHECK(ef <= BOUND_FINAL, "%s: final_state rel err %.3e > %.1e", name, ef, BOUND_FINAL);
    CHECK(ec <= BOUND_CS, "%s: chunk_states rel err %.3e > %.1e", name, ec, BOUND_CS);
    worst[c->cls][0] = fmax(worst[c->cls][0], eo);
    worst[c->cls][1] = fmax(worst[c->cls][1], ef);
    worst[c->cls][2] = fmax(worst[c->cls][2], ec);
    class_cases[c->cls]++;

    /* Every sequence's first chunk state is its h0, exactly; an empty
     * sequence's final state too. */
    const gdn_problem *p = &in->p;
    const int64_t S = p->Hv * p->V * p->K;
    int64_t chunk = 0;
    for (int64_t n = 0; n < in->N; n++) {
        int64_t bos, eos;
        if (p->cu_seqlens) {
            bos = p->cu_seqlens[n];
            eos = p->cu_seqlens[n + 1];
        } else {
            bos = n * p->T;
            eos = bos + p->T;
        }
        int same = 1;
        const float *want = in->h0 ? in->h0 + n * S : NULL;
        if (eos > bos) {
            for (int64_t x = 0; x < S; x++) same &= o.cs[chunk * S + x] == (want ? want[x] : 0.0f);
            CHECK(same, "%s: sequence %lld: chunk_states of its first chunk is not h0", name,
                  (long long)n);
        } else {
            for (int64_t x = 0; x < S; x++) same &= o.fs[n * S + x] == (want ? want[x] : 0.0f);
            CHECK(same, "%s: empty sequence %lld: final state is not h0", name, (long long)n);
        }
        chunk += (eos - bos + 63) / 64;
    }

    free(ro);
    free(rf);
    free(rc);
    fw_out_free(&o);
    gdn_test_fw_inputs_free(&f);
}

/* ---- FLA fixtures --------------------------------------------------------- */

static void check_fixture(gdn_context *ctx, const char *root, const gdn_test_fixture *c) {
    const int64_t B = c->B, T = c->T, Hk = c->Hk, Hv = c->Hv, K = c->K, V = c->V;
    npy_array q, k, v, g, beta, h0, o_fla, o_ref, ht_fla, ht_ref;
    gdn_test_npy_file files[] = {
        {"q.npy", "<u2", 4, {B, T, Hk, K}, &q},
        {"k.npy", "<u2", 4, {B, T, Hk, K}, &k},
        {"v.npy", "<u2", 4, {B, T, Hv, V}, &v},
        {"g.npy", "<f4", 3, {B, T, Hv}, &g},
        {"beta.npy", "<f4", 3, {B, T, Hv}, &beta},
        {"h0_vk.npy", "<f4", 4, {B, Hv, V, K}, &h0},
        {"o.npy", "<u2", 4, {B, T, Hv, V}, &o_fla},
        {"o_ref.npy", "<f4", 4, {B, T, Hv, V}, &o_ref},
        {"ht_vk.npy", "<f4", 4, {B, Hv, V, K}, &ht_fla},
        {"ht_ref_vk.npy", "<f4", 4, {B, Hv, V, K}, &ht_ref},
    };
    const int n_files = (int)(sizeof files / sizeof files[0]);
    if (!gdn_test_load_fixture(root, c, files, n_files)) return;
    gdn_problem p;
    gdn_problem_init(&p, B, T, Hk, Hv, K, V);
    const int64_t n_o = B * T * Hv * V, n_f = B * Hv * V * K;
    gdn_bf16 *o = gdn_test_alloc_poisoned(n_o, sizeof(gdn_bf16));
    float *fs = gdn_test_alloc_poisoned(n_f, sizeof(float));
    CHECK_STATUS(fwd(ctx, &p, NULL, q.data, k.data, v.data, g.data, beta.data,
                                   h0.data, o, fs, NULL),
                 GDN_SUCCESS, ctx);
    double *ro = gdn_test_npy_to_f64(&o_ref), *rf = gdn_test_npy_to_f64(&ht_ref);
    double *fo = gdn_test_npy_to_f64(&o_fla), *ff = gdn_test_npy_to_f64(&ht_fla);
    const double eo = gdn_rel_err_bf16(o, ro, n_o), ef = gdn_rel_err_f32(fs, rf, n_f);
    printf("  %-12s libgdn vs o_ref: o %.3e (bound %.1e)  final vs ht_ref_vk %.3e (bound %.1e)\n",
           c->name, eo, BOUND_O, ef, BOUND_FINAL);
    printf("  %-12s FLA    vs o_ref: o %.3e                final vs ht_ref_vk %.3e\n", c->name,
           gdn_rel_err_f64(fo, ro, n_o), gdn_rel_err_f64(ff, rf, n_f));
    printf("  %-12s libgdn vs FLA:   o %.3e                final vs ht_vk     %.3e\n", c->name,
           gdn_rel_err_bf16(o, fo, n_o), gdn_rel_err_f32(fs, ff, n_f));
    CHECK(eo <= BOUND_O, "%s: o vs o_ref %.3e > %.1e", c->name, eo, BOUND_O);
    CHECK(ef <= BOUND_FINAL, "%s: final vs ht_ref_vk %.3e > %.1e", c->name, ef, BOUND_FINAL);
    /* Against FLA itself: two approximations of the same oracle, each
     * within the bounds, are within their sum of each other (measured
     * 4.0e-3 for o, 3.1e-3 for the final state: FLA rounds at points this
     * library keeps in f32, see src/cpu/chunk_forward_cpu.c). */
    const double xo = gdn_rel_err_bf16(o, fo, n_o), xf = gdn_rel_err_f32(fs, ff, n_f);
    CHECK(xo <= 2 * BOUND_O && xf <= 2 * BOUND_FINAL,
          "%s: libgdn vs FLA: o %.3e, final %.3e: further apart than both bounds", c->name, xo,
          xf);
    /* The stored oracle is this library's oracle (f32-rounded). */
    double *mo = gdn_test_alloc(n_o, sizeof(double)), *mf = gdn_test_alloc(n_f, sizeof(double));
    gdn_ref_forward_f64(&p, NULL, q.data, k.data, v.data, g.data, beta.data, h0.data, mo, mf, NULL);
    const double so = gdn_rel_err_f64(ro, mo, n_o), sf = gdn_rel_err_f64(rf, mf, n_f);
    CHECK(so < 1e-6 && sf < 1e-6, "%s: o_ref / ht_ref_vk differ from gdn_ref_forward_f64: %.2e %.2e",
          c->name, so, sf);
    free(mo);
    free(mf);
    free(ro);
    free(rf);
    free(fo);
    free(ff);
    free(o);
    free(fs);
    gdn_test_free_fixture(files, n_files);
}

static void check_fixtures(gdn_context *ctx) {
    const char *root = gdn_test_fixtures_checked();
    if (!root) return;
    for (int i = 0; i < gdn_test_num_fixtures; i++) check_fixture(ctx, root, &gdn_test_fixtures[i]);
}

/* ---- bitwise properties --------------------------------------------------- */

/* Same call twice, and 1 or 3 threads vs all: the same bits. */
static void check_determinism(gdn_context *ctx) {
    static const int32_t cu[] = {0, 10, 200, 200, 333, 500};
    const fw_case c = {C_VARLEN, 1, 500, 2, 4, 100, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, cu, 5,
                       OPT_L2 | OPT_QWEN | OPT_SIG};
    fw_inputs f;
    fw_out a, b, d;
    if (!fw_setup(ctx, &c, 99, &f, &a)) return;
    fw_out_alloc(&b, &f.in, 1, 1);
    fw_out_alloc(&d, &f.in, 1, 1);
    CHECK_STATUS(run_op(ctx, &f, &b), GDN_SUCCESS, ctx);
    CHECK(fw_out_equal(&a, &b), "two identical calls differ");
    const int threads[] = {1, 3};
    for (int i = 0; i < 2; i++) {
        gdn_test_poison(d.o, (size_t)d.n_o * sizeof(gdn_bf16));
        CHECK_STATUS(gdn_context_set_num_threads(ctx, threads[i]), GDN_SUCCESS, ctx);
        CHECK_STATUS(run_op(ctx, &f, &d), GDN_SUCCESS, ctx);
        CHECK(fw_out_equal(&a, &d), "%d thread(s) and all threads differ", threads[i]);
    }
    CHECK_STATUS(gdn_context_set_num_threads(ctx, 0), GDN_SUCCESS, ctx);
    fw_out_free(&a);
    fw_out_free(&b);
    fw_out_free(&d);
    gdn_test_fw_inputs_free(&f);
}

/* Each non-empty sequence of varlen case c (run as planned) computed
 * alone, as one B row (as_varlen 0) or as a varlen batch of one: bitwise
 * the batch's rows. */
static void check_each_alone(gdn_context *ctx, const fw_case *c, uint64_t seed, int as_varlen) {
    fw_inputs f;
    fw_out all;
    if (!fw_setup(ctx, c, seed, &f, &all)) return;
    const gdn_ref_inputs *in = &f.in;
    const gdn_problem *p = &in->p;
    const int32_t *cu = c->cu;
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, S = Hv * V * K;
    int64_t chunk = 0;
    for (int64_t n = 0; n < in->N; n++) {
        const int64_t bos = cu[n], len = cu[n + 1] - cu[n], nt = (len + 63) / 64;
        if (len > 0) {
            const int32_t one_cu[2] = {0, (int32_t)len};
            gdn_problem one = *p;
            one.cu_seqlens = as_varlen ? one_cu : NULL;
            one.cu_seqlens_device = NULL;
            one.num_seqs = as_varlen ? 1 : 0;
            one.T = len;
            gdn_bf16 *o = gdn_test_alloc_poisoned(len * Hv * V, 2);
            float *fs = gdn_test_alloc(S, 4), *cs = gdn_test_alloc(nt * S, 4);
            CHECK_STATUS(fwd(ctx, &one, &f.opts, in->q + bos * Hk * K,
                                           in->k + bos * Hk * K, in->v + bos * Hv * V,
                                           in->g + bos * Hv, in->beta + bos * Hv, in->h0 + n * S,
                                           o, fs, cs),
                         GDN_SUCCESS, ctx);
            CHECK(memcmp(o, all.o + bos * Hv * V, (size_t)(len * Hv * V) * 2) == 0 &&
                      memcmp(fs, all.fs + n * S, (size_t)S * 4) == 0 &&
                      memcmp(cs, all.cs + chunk * S, (size_t)(nt * S) * 4) == 0,
                  "sequence %lld alone (%s) differs from the same sequence in a varlen batch",
                  (long long)n, as_varlen ? "a varlen batch of one" : "one B row");
            free(o);
            free(fs);
            free(cs);
        }
        chunk += nt;
    }
    fw_out_free(&all);
    gdn_test_fw_inputs_free(&f);
}

/* B=2 x T of case cb vs the same tokens as varlen {0, T, 2T}: the same
 * memory, the same bits. */
static void check_rows_as_varlen(gdn_context *ctx, const fw_case *cb, uint64_t seed) {
    fw_inputs f;
    fw_out ob, ov;
    if (!fw_setup(ctx, cb, seed, &f, &ob)) return;
    fw_out_alloc(&ov, &f.in, 1, 1);
    const int32_t cu2[] = {0, (int32_t)cb->T, (int32_t)(2 * cb->T)};
    const gdn_problem saved = f.in.p;
    f.in.p.B = 1;
    f.in.p.T = 2 * cb->T;
    f.in.p.cu_seqlens = cu2;
    f.in.p.num_seqs = 2;
    CHECK_STATUS(run_op(ctx, &f, &ov), GDN_SUCCESS, ctx);
    f.in.p = saved;
    CHECK(fw_out_equal(&ob, &ov), "B=2 x T=%lld differs from the same tokens as two varlen sequences",
          (long long)cb->T);
    fw_out_free(&ob);
    fw_out_free(&ov);
    gdn_test_fw_inputs_free(&f);
}

/* Each sequence of a varlen batch, computed alone, gives the same bits;
 * B=2 equals the same tokens as two varlen sequences, also at a length
 * that the CUDA fused path splits into three segments with few heads (25
 * chunks), which is checked against the oracle too. */
static void check_batch_invariance(gdn_context *ctx) {
    static const int32_t cu[] = {0, 0, 70, 71, 71, 200, 264};
    const fw_case c = {C_VARLEN, 1, 264, 1, 2, 64, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, cu, 6,
                       OPT_L2 | OPT_QWEN | OPT_SIG | OPT_SCALE};
    check_each_alone(ctx, &c, 31, 0);
    const fw_case cb = {C_VARLEN, 2, 150, 2, 4, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL,
                        0, 0};
    check_rows_as_varlen(ctx, &cb, 32);
    if (quick) return;
    const fw_case split3 = {C_LONG, 2, 1600, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL,
                            0, OPT_L2 | OPT_SIG};
    check_case(ctx, &split3, 33, 1);
    check_rows_as_varlen(ctx, &split3, 34);
}

/* Prefix caching: a run resumed at chunk c with h0 = chunk_states[c] gives
 * the same o for the remaining tokens and the same final state, bitwise. */
static void check_resume(gdn_context *ctx) {
    const fw_case c = {C_LONG, 1, 300, 2, 4, 64, 100, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                       OPT_QWEN | OPT_L2};
    fw_inputs f;
    fw_out full;
    if (!fw_setup(ctx, &c, 77, &f, &full)) return;
    const gdn_ref_inputs *in = &f.in;
    const gdn_problem *p = &in->p;
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, S = Hv * V * K;
    for (int64_t cidx = 1; cidx < in->NT; cidx += 2) {
        const int64_t t0 = cidx * 64, len = p->T - t0;
        gdn_problem tail = *p;
        tail.T = len;
        gdn_bf16 *o = gdn_test_alloc(len * Hv * V, 2);
        float *fs = gdn_test_alloc(S, 4);
        CHECK_STATUS(fwd(ctx, &tail, &f.opts, in->q + t0 * Hk * K,
                                       in->k + t0 * Hk * K, in->v + t0 * Hv * V, in->g + t0 * Hv,
                                       in->beta + t0 * Hv, full.cs + cidx * S, o, fs, NULL),
                     GDN_SUCCESS, ctx);
        CHECK(memcmp(o, full.o + t0 * Hv * V, (size_t)(len * Hv * V) * 2) == 0 &&
                  memcmp(fs, full.fs, (size_t)S * 4) == 0,
              "resuming at chunk %lld from chunk_states does not reproduce o and the final state",
              (long long)cidx);
        free(o);
        free(fs);
    }
    fw_out_free(&full);
    gdn_test_fw_inputs_free(&f);
}

/* Leaving out final_state / chunk_states changes nothing else; NULL
 * options are the defaults, and scale 0 is 1/sqrt(K); KV outputs are the
 * transpose of VK outputs, bitwise. */
static void check_optional_and_layout(gdn_context *ctx) {
    const fw_case c = {C_LONG, 2, 130, 1, 2, 64, 100, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                       0};
    fw_inputs f;
    fw_out full, no_f, no_c, none, dflt;
    if (!fw_setup(ctx, &c, 5, &f, &full)) return;
    gdn_ref_inputs *in = &f.in;
    fw_out_alloc(&no_f, in, 0, 1);
    fw_out_alloc(&no_c, in, 1, 0);
    fw_out_alloc(&none, in, 0, 0);
    fw_out_alloc(&dflt, in, 1, 1);
    CHECK_STATUS(run_op(ctx, &f, &no_f), GDN_SUCCESS, ctx);
    CHECK_STATUS(run_op(ctx, &f, &no_c), GDN_SUCCESS, ctx);
    CHECK_STATUS(run_op(ctx, &f, &none), GDN_SUCCESS, ctx);
    CHECK(fw_out_equal(&full, &no_f) && fw_out_equal(&full, &no_c) && fw_out_equal(&full, &none),
          "leaving out final_state or chunk_states changes the other outputs");
    CHECK_STATUS(fwd(ctx, &in->p, NULL, in->q, in->k, in->v, in->g, in->beta,
                                   in->h0, dflt.o, dflt.fs, dflt.cs),
                 GDN_SUCCESS, ctx);
    CHECK(fw_out_equal(&full, &dflt), "opts = NULL differs from gdn_forward_options_init");
    f.opts.scale = (float)(1.0 / sqrt((double)in->p.K));
    gdn_test_poison(dflt.o, (size_t)dflt.n_o * 2);
    CHECK_STATUS(run_op(ctx, &f, &dflt), GDN_SUCCESS, ctx);
    CHECK(fw_out_equal(&full, &dflt), "scale 1/sqrt(K) given differs from scale 0");
    f.opts.scale = 0.0f;

    /* The same problem in KV layout, h0 transposed. */
    const int64_t Hv = in->p.Hv, K = in->p.K, V = in->p.V;
    float *h0_vk = in->h0;
    float *h0_kv = gdn_test_vk_to_kv(h0_vk, in->N * Hv, V, K);
    in->h0 = h0_kv;
    in->p.state_layout = GDN_STATE_KV;
    fw_out kv;
    fw_out_alloc(&kv, in, 1, 1);
    CHECK_STATUS(run_op(ctx, &f, &kv), GDN_SUCCESS, ctx);
    const int tr = memcmp(kv.o, full.o, (size_t)kv.n_o * 2) == 0 &&
                   gdn_test_kv_is_vk(kv.cs, full.cs, sizeof(float), in->NT * Hv, V, K) &&
                   gdn_test_kv_is_vk(kv.fs, full.fs, sizeof(float), in->N * Hv, V, K);
    CHECK(tr, "KV outputs are not the transpose of VK outputs");
    in->h0 = h0_vk;
    free(h0_kv);
    fw_out_free(&kv);
    fw_out_free(&full);
    fw_out_free(&no_f);
    fw_out_free(&no_c);
    fw_out_free(&none);
    fw_out_free(&dflt);
    gdn_test_fw_inputs_free(&f);
}

static int64_t count_nonfinite_bf16(const gdn_bf16 *x, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += !isfinite(gdn_bf16_to_f32(x[i]));
    return c;
}

/* NaN / Inf in one input element: the outputs that depend on it (its
 * sequence and value head(s), from its token on) go non-finite, every
 * other output keeps its bits, and nothing crashes. */
static void check_nonfinite(gdn_context *ctx) {
    static const int32_t cu[] = {0, 100, 250, 300};
    const fw_case c = {C_VARLEN, 1, 300, 1, 2, 32, 32, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, cu, 3,
                       OPT_L2 | OPT_QWEN | OPT_SIG};
    fw_inputs f;
    fw_out clean;
    if (!fw_setup(ctx, &c, 404, &f, &clean)) return;
    gdn_ref_inputs *in = &f.in;
    const gdn_problem *p = &in->p;
    const int64_t Hv = p->Hv, K = p->K, V = p->V;

    /* the poisoned token: sequence 1 (tokens 100..249), token 170 (chunk 1
     * of the sequence, row 6); value head 1 for v, g, beta; q, k (the only
     * key head) reach both value heads */
    const int64_t n = 1, tok = 170, eos = 250;
#ifdef GDN_TEST_CUDA
    const int64_t from = 100 + (tok - 100) / 64 * 64; /* the start of tok's chunk */
#else
    const int64_t from = tok;
#endif
    const struct {
        const char *what;
        int tensor; /* 0 q, 1 k, 2 v, 3 g, 4 beta */
        float value;
    } pokes[] = {{"NaN in v", 2, NAN},    {"Inf in v", 2, INFINITY}, {"NaN in k", 1, NAN},
                 {"Inf in q", 0, INFINITY}, {"NaN in g", 3, NAN},    {"NaN in beta", 4, NAN}};
    for (unsigned i = 0; i < sizeof pokes / sizeof pokes[0]; i++) {
        const int t = pokes[i].tensor;
        const int64_t h_hit = 1;
        gdn_bf16 *bx = t == 0 ? in->q : t == 1 ? in->k : t == 2 ? in->v : NULL;
        float *fx = t == 3 ? in->g : t == 4 ? in->beta : NULL;
        const int64_t at = t <= 1 ? (tok * p->Hk + 0) * K + 3
                           : t == 2 ? (tok * Hv + h_hit) * V + 5
                                    : tok * Hv + h_hit;
        gdn_bf16 saved_b = 0;
        float saved_f = 0;
        if (bx) {
            saved_b = bx[at];
            bx[at] = gdn_f32_to_bf16(pokes[i].value);
        } else {
            saved_f = fx[at];
            fx[at] = pokes[i].value;
        }
        fw_out d;
        fw_out_alloc(&d, in, 1, 1);
        CHECK_STATUS(run_op(ctx, &f, &d), GDN_SUCCESS, ctx);
        /* Dependent: sequence n, the heads that read the element, tokens
         * from tok on (only tok itself for q, which feeds no state). */
        int others_same = 1, hit_nonfinite = 1;
        for (int64_t x = 0; x < p->T; x++)
            for (int64_t h = 0; h < Hv; h++) {
                const int head = t <= 1 || h == h_hit;
                const int dep = head && x >= from && x < eos && (t != 0 || x == tok);
                const gdn_bf16 *a = d.o + (x * Hv + h) * V, *b = clean.o + (x * Hv + h) * V;
                if (!dep)
                    others_same &= memcmp(a, b, (size_t)V * 2) == 0;
                else if (x == tok)
                    hit_nonfinite &= count_nonfinite_bf16(a, V) > 0;
            }
        for (int64_t m = 0; m < in->N; m++)
            for (int64_t h = 0; h < Hv; h++) {
                const float *a = d.fs + (m * Hv + h) * V * K, *b = clean.fs + (m * Hv + h) * V * K;
                if (m == n && (t <= 1 || h == h_hit) && t != 0) {
                    int64_t bad = 0;
                    for (int64_t x = 0; x < V * K; x++) bad += !isfinite(a[x]);
                    hit_nonfinite &= bad > 0;
                } else {
                    others_same &= memcmp(a, b, (size_t)(V * K) * 4) == 0;
                }
            }
        CHECK(others_same, "%s: an output that does not depend on it changed (other sequences, "
              "heads or earlier tokens)", pokes[i].what);
        CHECK(hit_nonfinite, "%s: the dependent outputs are not all non-finite", pokes[i].what);
        fw_out_free(&d);
        if (bx)
            bx[at] = saved_b;
        else
            fx[at] = saved_f;
    }
    fw_out_free(&clean);
    gdn_test_fw_inputs_free(&f);
}

/* The bounds catch real bugs: compared with the oracle of a subtly wrong
 * problem, the op's output must exceed them. */
static void check_bound_sensitivity(gdn_context *ctx) {
    const fw_case c = {C_LONG, 1, 300, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                       0};
    fw_inputs f;
    fw_out o;
    if (!fw_setup(ctx, &c, 4242, &f, &o)) return;
    gdn_ref_inputs *in = &f.in;
    double *ro = gdn_test_alloc(o.n_o, sizeof(double)), *rf = gdn_test_alloc(o.n_f, sizeof(double));
    const int64_t ng = in->p.T * in->p.Hv;
    float *g2 = gdn_test_alloc(ng, sizeof(float)), *b2 = gdn_test_alloc(ng, sizeof(float));
    for (int64_t x = 0; x < ng; x++) {
        g2[x] = in->g[x] * 1.02f;
        b2[x] = in->beta[x] * 1.01f;
    }
    gdn_ref_forward_f64(&in->p, NULL, in->q, in->k, in->v, g2, in->beta, in->h0, ro, rf, NULL);
    double eo = gdn_rel_err_bf16(o.o, ro, o.n_o), ef = gdn_rel_err_f32(o.fs, rf, o.n_f);
    printf("  sensitivity: gate x1.02: o %.2e final %.2e\n", eo, ef);
    CHECK(eo > BOUND_O && ef > BOUND_FINAL, "a 2%% gate error stays within the bounds");
    gdn_ref_forward_f64(&in->p, NULL, in->q, in->k, in->v, in->g, b2, in->h0, ro, rf, NULL);
    eo = gdn_rel_err_bf16(o.o, ro, o.n_o);
    ef = gdn_rel_err_f32(o.fs, rf, o.n_f);
    printf("  sensitivity: beta x1.01: o %.2e final %.2e\n", eo, ef);
    CHECK(eo > BOUND_O && ef > BOUND_FINAL, "a 1%% beta error stays within the bounds");
    in->p.head_map = GDN_HEAD_MAP_TILED;
    gdn_ref_forward_f64(&in->p, NULL, in->q, in->k, in->v, in->g, in->beta, in->h0, ro, rf, NULL);
    in->p.head_map = GDN_HEAD_MAP_BLOCK;
    eo = gdn_rel_err_bf16(o.o, ro, o.n_o);
    ef = gdn_rel_err_f32(o.fs, rf, o.n_f);
    printf("  sensitivity: wrong head map: o %.2e final %.2e\n", eo, ef);
    CHECK(eo > BOUND_O && ef > BOUND_FINAL, "the wrong head map stays within the bounds");
    gdn_forward_options s2;
    gdn_forward_options_init(&s2);
    s2.scale = (float)(1.01 / sqrt((double)in->p.K));
    gdn_ref_forward_f64(&in->p, &s2, in->q, in->k, in->v, in->g, in->beta, in->h0, ro, NULL, NULL);
    eo = gdn_rel_err_bf16(o.o, ro, o.n_o);
    printf("  sensitivity: scale x1.01: o %.2e\n", eo);
    CHECK(eo > BOUND_O, "a 1%% scale error stays within the o bound");
    free(g2);
    free(b2);
    free(ro);
    free(rf);
    fw_out_free(&o);
    gdn_test_fw_inputs_free(&f);
}

#ifdef GDN_TEST_CUDA
/* Long sequences with few heads take the split path of the state stage:
 * against the oracle, and a B = 2 batch against each row alone (the split
 * rule looks at one sequence, so the bits must match). */
static void check_split_path(gdn_context *ctx) {
    const fw_case c = {C_LONG, 2, 4200, 2, 8, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1,
                       NULL, 0, OPT_L2 | OPT_QWEN | OPT_SIG};
    check_case(ctx, &c, 8080, 1);
    fw_inputs f;
    fw_out all;
    if (!fw_setup(ctx, &c, 8081, &f, &all)) return;
    const gdn_ref_inputs *in = &f.in;
    const gdn_problem *p = &in->p;
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V, S = Hv * V * K, T = p->T;
    const int64_t nt = (T + 63) / 64;
    for (int64_t b = 0; b < 2; b++) {
        gdn_problem one = *p;
        one.B = 1;
        gdn_bf16 *o = gdn_test_alloc_poisoned(T * Hv * V, 2);
        float *fs = gdn_test_alloc(S, 4), *cs = gdn_test_alloc(nt * S, 4);
        const int64_t t0 = b * T;
        CHECK_STATUS(fwd(ctx, &one, &f.opts, in->q + t0 * Hk * K, in->k + t0 * Hk * K,
                         in->v + t0 * Hv * V, in->g + t0 * Hv, in->beta + t0 * Hv,
                         in->h0 + b * S, o, fs, cs),
                     GDN_SUCCESS, ctx);
        CHECK(memcmp(o, all.o + t0 * Hv * V, (size_t)(T * Hv * V) * 2) == 0 &&
                  memcmp(fs, all.fs + b * S, (size_t)S * 4) == 0 &&
                  memcmp(cs, all.cs + b * nt * S, (size_t)(nt * S) * 4) == 0,
              "split path: batch row %lld differs from the same sequence alone", (long long)b);
        free(o);
        free(fs);
        free(cs);
    }
    fw_out_free(&all);
    gdn_test_fw_inputs_free(&f);
}

/* Runs case c as planned and again with the environment variable `name`
 * set to each of values[]: every run must give the planned run's bits (a
 * knob that only times other block shapes or work splits). Skipped when the
 * runner has set `name`. */
static void check_env_bits(gdn_context *ctx, const fw_case *c, uint64_t seed, const char *name,
                           const char *const *values, int nvalues) {
    if (getenv(name)) return;
    fw_inputs f;
    fw_out plan;
    if (!fw_setup(ctx, c, seed, &f, &plan)) return;
    for (int i = 0; i < nvalues; i++) {
        fw_out o;
        fw_out_alloc(&o, &f.in, 1, 1);
        setenv(name, values[i], 1);
        CHECK_STATUS(run_op(ctx, &f, &o), GDN_SUCCESS, ctx);
        unsetenv(name);
        CHECK(fw_out_equal(&plan, &o), "%s=%s changes the bits", name, values[i]);
        fw_out_free(&o);
    }
    fw_out_free(&plan);
    gdn_test_fw_inputs_free(&f);
}

/* The state pass's row tile (32, 64 or 128 rows, chosen from the batch's
 * size, so a sequence alone and in a large batch can get different ones)
 * must not change the bits: every tile sums each row in the same order.
 * Forced through GDN_CUDA_ROWS_PER_BLOCK, unless the runner has set it. */
static void check_row_tiles(gdn_context *ctx) {
    const fw_case c = {C_LONG, 2, 300, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                       OPT_L2 | OPT_SIG};
    static const char *const rows[] = {"32", "64", "128"};
    check_env_bits(ctx, &c, 4242, "GDN_CUDA_ROWS_PER_BLOCK", rows, 3);
}

/* The fused pass's block size (2 or 4 compute warps, chosen from the
 * batch's size) must not change the bits either: each warp computes its
 * 16 rows the same way; nor the pair form (GDN_CUDA_FUSED_PAIRS: two
 * warps share 16 rows by token blocks and state columns, the default for
 * 32-row blocks); nor how its inputs arrive (GDN_CUDA_FUSED_TMA_IN:
 * tensor copies or per-lane copies); nor its product form (mma.sync, or
 * Hopper's wgmma over 64-row blocks or over 128-row blocks of two
 * warpgroups, also chosen from the batch's size: all sum each 16-deep
 * k-step in the same order). Nor must prep's sharing of a key
 * head's products among its value heads (GDN_CUDA_PREP_SHARE=0 gives a
 * block each value head, 1 a block each key head, which these small
 * cases would not get), checked with both head maps and with six value
 * heads to a key head (more than prep's gate slots); nor the
 * programmatic launch after prep (GDN_CUDA_FUSED_PDL) or a two-deep ring
 * where three fit (GDN_CUDA_FUSED_STAGES=2); nor the wgmma forms' T and P
 * by tensor copies (GDN_CUDA_FUSED_TP_TMA, the split's default on
 * Hopper; the copies write the zeros above the diagonal blocks): checked
 * off and on, and every product form with them on; nor the 32-row wgmma
 * form that takes the pair form's blocks on Hopper (GDN_CUDA_FUSED_WG32),
 * checked off and on at K = 128 and 64, and with per-lane copies.
 * Forced through GDN_CUDA_FUSED=1, unless the runner has set it. */
static void check_fused_knobs(gdn_context *ctx) {
    if (getenv("GDN_CUDA_FUSED")) return;
    static const int32_t cu[] = {0, 70, 70, 300};
    const fw_case c = {C_LONG, 1, 300, 2, 4, 128, 96, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, cu, 3,
                       OPT_L2 | OPT_SIG};
    const fw_case tiled = {C_LONG, 1, 200, 2, 6, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0,
                           OPT_QWEN | OPT_SIG};
    /* six value heads to a key head: more than prep keeps gate slots for */
    const fw_case g6 = {C_LONG, 1, 200, 1, 6, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                        OPT_QWEN | OPT_SIG};
    static const char *const warps[] = {"2", "4"}, *const wg[] = {"0", "1", "2"};
    static const char *const off_on[] = {"0", "1"}, *const two[] = {"2"};
    setenv("GDN_CUDA_FUSED", "1", 1);
    check_env_bits(ctx, &c, 4343, "GDN_CUDA_FUSED_WARPS", warps, 2);
    check_env_bits(ctx, &c, 4348, "GDN_CUDA_FUSED_PAIRS", off_on, 2);
    check_env_bits(ctx, &tiled, 4349, "GDN_CUDA_FUSED_PAIRS", off_on, 2);
    check_env_bits(ctx, &c, 4350, "GDN_CUDA_FUSED_TMA_IN", off_on, 2);
    check_env_bits(ctx, &tiled, 4351, "GDN_CUDA_FUSED_TMA_IN", off_on, 2);
    check_env_bits(ctx, &c, 4346, "GDN_CUDA_FUSED_WGMMA", wg, 3);
    check_env_bits(ctx, &tiled, 4347, "GDN_CUDA_FUSED_WGMMA", wg, 3);
    check_env_bits(ctx, &c, 4344, "GDN_CUDA_PREP_SHARE", off_on, 2);
    check_env_bits(ctx, &tiled, 4345, "GDN_CUDA_PREP_SHARE", off_on, 2);
    check_env_bits(ctx, &g6, 4358, "GDN_CUDA_PREP_SHARE", off_on, 2);
    check_env_bits(ctx, &tiled, 4352, "GDN_CUDA_FUSED_PDL", off_on, 2);
    check_env_bits(ctx, &tiled, 4353, "GDN_CUDA_FUSED_STAGES", two, 1);
    check_env_bits(ctx, &c, 4354, "GDN_CUDA_FUSED_TP_TMA", off_on, 2);
    check_env_bits(ctx, &tiled, 4355, "GDN_CUDA_FUSED_TP_TMA", off_on, 2);
    if (!getenv("GDN_CUDA_FUSED_TP_TMA")) {
        setenv("GDN_CUDA_FUSED_TP_TMA", "1", 1);
        check_env_bits(ctx, &c, 4356, "GDN_CUDA_FUSED_WGMMA", wg, 3);
        check_env_bits(ctx, &tiled, 4357, "GDN_CUDA_FUSED_WGMMA", wg, 3);
        unsetenv("GDN_CUDA_FUSED_TP_TMA");
    }
    check_env_bits(ctx, &c, 4360, "GDN_CUDA_FUSED_WG32", off_on, 2);
    check_env_bits(ctx, &tiled, 4361, "GDN_CUDA_FUSED_WG32", off_on, 2);
    if (!getenv("GDN_CUDA_FUSED_TMA_IN")) {
        setenv("GDN_CUDA_FUSED_TMA_IN", "0", 1);
        check_env_bits(ctx, &c, 4362, "GDN_CUDA_FUSED_WG32", off_on, 2);
        unsetenv("GDN_CUDA_FUSED_TMA_IN");
    }
    unsetenv("GDN_CUDA_FUSED");
}

/* The fused path's split of a sequence into segments (summary launch,
 * combine, final launch), forced onto short sequences with
 * GDN_CUDA_FUSED_SEGMENTS: 2 (no combine), 3 and 5 segments (the last one
 * partial) against the oracle with every output, h0 from the caller; a row
 * tile that holds both value rows and transition rows (V = 96, K = 128);
 * no h0; both product forms, which must agree bitwise here too, as must
 * the wgmma forms' T and P by tensor copies off and on (on by default
 * here on Hopper) and the 32-row wgmma form off and on, as must segment 0
 * run beside the summary or in the final launch (GDN_CUDA_FUSED_SEG0, on
 * only where the final launch would not fit one wave, forced both ways
 * here, B rows and varlen); leaving out
 * final_state and chunk_states changes nothing else. And a varlen
 * batch's split, each sequence by its own length (GDN_CUDA_FUSED_MIN_SEG=2
 * lets 8 chunks split): empty, unsplit and split sequences side by side
 * against the oracle, both product forms, each sequence alone. */
static void check_fused_split(gdn_context *ctx) {
    if (getenv("GDN_CUDA_FUSED") || getenv("GDN_CUDA_FUSED_SEGMENTS") || getenv("GDN_CUDA_FUSED_MIN_SEG"))
        return;
    const fw_case a = {C_LONG, 2, 1000, 2, 4, 128, 96, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
                       OPT_L2 | OPT_SIG};
    const fw_case b = {C_LONG, 1, 300, 1, 2, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_QWEN};
    const fw_case c = {C_LONG, 1, 700, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, NULL, 0, OPT_SIG};
    static const char *const segs[] = {"2", "3", "5"}, *const wg[] = {"0", "1", "2"}, *const cols[] = {"1", "2"};
    static const char *const off_on[] = {"0", "1"};
    setenv("GDN_CUDA_FUSED", "1", 1);
    for (int i = 0; i < 3; i++) {
        setenv("GDN_CUDA_FUSED_SEGMENTS", segs[i], 1);
        printf("  (fused path, GDN_CUDA_FUSED_SEGMENTS=%s)\n", segs[i]);
        check_case(ctx, &a, 4400 + (uint64_t)i, 1);
        check_case(ctx, &b, 4410 + (uint64_t)i, 1);
        check_case(ctx, &c, 4430 + (uint64_t)i, 1);
        check_env_bits(ctx, &a, 4420 + (uint64_t)i, "GDN_CUDA_FUSED_WGMMA", wg, 3);
        check_env_bits(ctx, &c, 4434 + (uint64_t)i, "GDN_CUDA_FUSED_TP_TMA", off_on, 2);
        check_env_bits(ctx, &c, 4437 + (uint64_t)i, "GDN_CUDA_FUSED_WG32", off_on, 2);
        check_env_bits(ctx, &a, 4470 + (uint64_t)i, "GDN_CUDA_FUSED_SEG0", off_on, 2);
        check_env_bits(ctx, &b, 4473 + (uint64_t)i, "GDN_CUDA_FUSED_SEG0", off_on, 2);
        if (i == 1) { /* one combine step: its columns over one block or two, the same bits */
            check_env_bits(ctx, &a, 4424, "GDN_CUDA_COMBINE_COLS", cols, 2);
            check_env_bits(ctx, &c, 4425, "GDN_CUDA_COMBINE_COLS", cols, 2);
        }
    }
    fw_inputs f;
    fw_out full, none;
    if (fw_setup(ctx, &a, 4440, &f, &full)) { /* (still 5 segments) */
        fw_out_alloc(&none, &f.in, 0, 0);
        CHECK_STATUS(run_op(ctx, &f, &none), GDN_SUCCESS, ctx);
        CHECK(fw_out_equal(&full, &none), "split: leaving out final_state and chunk_states changes o");
        fw_out_free(&none);
        fw_out_free(&full);
        gdn_test_fw_inputs_free(&f);
    }
    static const int32_t cu[] = {0, 0, 300, 310, 1000, 1000, 1700, 2300};
    const fw_case v = {C_VARLEN, 1, 2300, 2, 4, 128, 96, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, cu, 7,
                       OPT_L2 | OPT_SIG};
    const fw_case v64 = {C_VARLEN, 1, 2300, 1, 2, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 0, cu, 7, OPT_QWEN};
    setenv("GDN_CUDA_FUSED_MIN_SEG", "2", 1);
    printf("  (fused path, varlen, GDN_CUDA_FUSED_MIN_SEG=2)\n");
    check_case(ctx, &v, 4450, 1);
    check_case(ctx, &v64, 4451, 1);
    check_env_bits(ctx, &v, 4452, "GDN_CUDA_FUSED_WGMMA", wg, 3);
    check_env_bits(ctx, &v, 4455, "GDN_CUDA_FUSED_SEG0", off_on, 2);
    check_env_bits(ctx, &v64, 4456, "GDN_CUDA_FUSED_SEG0", off_on, 2);
    check_each_alone(ctx, &v, 4453, 1);
    unsetenv("GDN_CUDA_FUSED_MIN_SEG");
    unsetenv("GDN_CUDA_FUSED_SEGMENTS");
    unsetenv("GDN_CUDA_FUSED");
}

/* The fused path past 128: K in (128, 256] (the pair form over 256
 * padded columns, unsplit) and V in (128, 256] (more row tiles), forced
 * with GDN_CUDA_FUSED=1 onto few heads where the plan would split or pick
 * a form by size: against the oracle at K = V = 256 with h0 and both
 * layouts, K and V not powers of two (a partial last row tile, zero
 * columns past K), T = 1 and 65, a ragged varlen batch with empty
 * sequences, every option; each sequence alone gives the batch's bits;
 * tensor or per-lane copies in and out give the same bits; the split knob
 * cannot split K > 128 (no summary form holds those rows). With K <= 128
 * and V = 200 or 256 the split path runs (summary rows V + K up to 384),
 * its two product forms bitwise equal. */
static void check_wide_fused(gdn_context *ctx) {
    if (getenv("GDN_CUDA_FUSED") || getenv("GDN_CUDA_FUSED_SEGMENTS")) return;
    static const int32_t cu[] = {0, 0, 65, 66, 66, 300, 429};
    const fw_case cases[] = {
        {C_DIMS, 1, 300, 1, 2, 256, 256, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_L2 | OPT_SIG},
        {C_DIMS, 2, 130, 2, 4, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 0, NULL, 0, OPT_QWEN | OPT_SCALE},
        {C_DIMS, 1, 200, 1, 3, 200, 136, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_QWEN | OPT_SIG},
        {C_DIMS, 1, 1, 1, 2, 136, 256, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 65, 2, 2, 256, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_L2},
        {C_VARLEN, 1, 429, 1, 2, 256, 128, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, cu, 6,
         OPT_L2 | OPT_QWEN | OPT_SIG | OPT_SCALE},
        {C_DIMS, 1, 300, 2, 4, 64, 256, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_L2 | OPT_QWEN},
        {C_DIMS, 1, 130, 1, 2, 128, 200, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 0, NULL, 0, OPT_SIG},
        {C_LONG, 1, 1000, 1, 1, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_SIG},
    };
    static const char *const segs[] = {"3"}, *const off_on[] = {"0", "1"}, *const wg[] = {"0", "1", "2"};
    setenv("GDN_CUDA_FUSED", "1", 1);
    printf("  (fused path past 128, GDN_CUDA_FUSED=1)\n");
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (quick && cases[i].cls == C_LONG) continue;
        check_case(ctx, &cases[i], 4500 + i, 1);
    }
    check_each_alone(ctx, &cases[5], 4520, 1);
    check_each_alone(ctx, &cases[5], 4521, 0);
    check_env_bits(ctx, &cases[0], 4522, "GDN_CUDA_FUSED_SEGMENTS", segs, 1);
    check_env_bits(ctx, &cases[0], 4523, "GDN_CUDA_FUSED_TMA_IN", off_on, 2);
    check_env_bits(ctx, &cases[1], 4524, "GDN_CUDA_FUSED_TMA_O", off_on, 2);
    check_env_bits(ctx, &cases[6], 4525, "GDN_CUDA_FUSED_WGMMA", wg, 3);
    const fw_case split[] = {
        {C_LONG, 1, 700, 2, 4, 128, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_L2 | OPT_SIG},
        {C_LONG, 2, 600, 1, 2, 64, 200, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_QWEN},
    };
    setenv("GDN_CUDA_FUSED_SEGMENTS", "3", 1);
    printf("  (fused path, V past 128, GDN_CUDA_FUSED_SEGMENTS=3)\n");
    for (unsigned i = 0; i < 2; i++) {
        check_case(ctx, &split[i], 4530 + i, 1);
        check_env_bits(ctx, &split[i], 4532 + i, "GDN_CUDA_FUSED_WGMMA", wg, 3);
    }
    unsetenv("GDN_CUDA_FUSED_SEGMENTS");
    unsetenv("GDN_CUDA_FUSED");
}
#endif

int main(void) {
    const double t0 = gdn_test_seconds();
    const char *q_env = getenv("GDN_TEST_QUICK");
    quick = q_env && q_env[0] == '1';
#ifdef GDN_TEST_CUDA
    if (!gdn_dev_available()) {
        printf("SKIP %s: no CUDA device (or libgdn built without CUDA)\n", TEST_NAME);
        return 77;
    }
#endif
    gdn_context *ctx = NULL;
    if (!CHECK_STATUS(gdn_context_create(&ctx, TEST_BACKEND, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish(TEST_NAME);
    uint64_t seed = 2000;

    /* Every T from 1 to 130, small heads; layouts, head maps, h0 and the
     * options rotate with T. */
    printf("T = 1..130 (K = V = 32, Hk = 1, Hv = 2; one line per 10):\n");
    for (int64_t T = 1; T <= 130; T++) {
        if (quick && !(T <= 2 || T == 63 || T == 64 || T == 65 || T == 130)) continue;
        const unsigned opts[] = {0, OPT_L2, OPT_QWEN | OPT_SIG, OPT_SCALE, 0};
        const fw_case c = {C_TSWEEP, 1, T, 1, 2, 32, 32,
                           T % 2 ? GDN_STATE_VK : GDN_STATE_KV,
                           T % 3 ? GDN_HEAD_MAP_BLOCK : GDN_HEAD_MAP_TILED,
                           T % 4 != 1, NULL, 0, opts[T % 5]};
        check_case(ctx, &c, seed++, T % 10 == 0 || T <= 2 || T == 63 || T == 64 || T == 65 ||
                                        T == 127 || T == 128 || T == 129);
    }

    static const int32_t cu_a[] = {0, 0, 5, 5, 70, 200, 200}; /* empty first and last */
    static const int32_t cu_b[] = {0, 64, 128, 129, 193};     /* chunk-aligned edges */
    static const int32_t cu_c[] = {0, 0, 0, 3, 3};            /* mostly empty */
    static const int32_t cu_d[] = {0, 1000};                  /* one long sequence */
    static const int32_t cu_e[] = {0, 1, 2, 66, 130, 131, 300, 300, 433}; /* ragged */
    const fw_case cases[] = {
        /* head dims */
        {C_DIMS, 1, 300, 1, 2, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 300, 2, 4, 100, 100, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 0, NULL, 0, 0},
        {C_DIMS, 1, 300, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 300, 1, 2, 256, 256, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 150, 2, 4, 64, 128, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, 0},
        {C_DIMS, 1, 100, 1, 2, 100, 36, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 70, 1, 1, 256, 16, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_DIMS, 1, 70, 1, 1, 16, 256, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        /* head ratios, both maps */
        {C_RATIO, 1, 200, 3, 3, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_RATIO, 1, 200, 2, 4, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, 0},
        {C_RATIO, 1, 200, 2, 6, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_RATIO, 1, 200, 2, 6, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0, 0},
        {C_RATIO, 1, 200, 2, 8, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, NULL, 0, 0},
        {C_RATIO, 1, 200, 2, 8, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0, 0},
        /* variable length */
        {C_VARLEN, 1, 200, 2, 4, 64, 100, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, cu_a, 6, 0},
        {C_VARLEN, 1, 200, 1, 2, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 0, cu_a, 6,
         OPT_L2 | OPT_SIG},
        {C_VARLEN, 1, 193, 1, 4, 128, 64, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, cu_b, 4, OPT_QWEN},
        {C_VARLEN, 1, 3, 1, 2, 64, 64, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, cu_c, 4, 0},
        {C_VARLEN, 1, 433, 2, 6, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, cu_e, 8,
         OPT_L2 | OPT_QWEN | OPT_SIG | OPT_SCALE},
        /* each option alone and all together, both layouts and maps */
        {C_OPTS, 1, 200, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_SCALE},
        {C_OPTS, 1, 200, 2, 4, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_L2},
        {C_OPTS, 1, 200, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0, OPT_SIG},
        {C_OPTS, 1, 200, 2, 4, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, OPT_QWEN},
        {C_OPTS, 1, 200, 2, 4, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 0, NULL, 0,
         OPT_L2 | OPT_QWEN | OPT_SIG | OPT_SCALE},
        {C_OPTS, 2, 130, 1, 3, 64, 100, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
         OPT_L2 | OPT_QWEN | OPT_SIG},
        /* long, and batches */
        {C_LONG, 1, 1000, 2, 4, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, cu_d, 1, 0},
        {C_LONG, 1, 1000, 1, 2, 128, 128, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 1, NULL, 0,
         OPT_L2 | OPT_QWEN},
        {C_LONG, 1, 1000, 1, 1, 256, 256, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0,
         OPT_SIG | OPT_SCALE},
        {C_LONG, 2, 300, 1, 2, 128, 128, GDN_STATE_VK, GDN_HEAD_MAP_BLOCK, 1, NULL, 0, 0},
        {C_LONG, 3, 65, 2, 4, 64, 100, GDN_STATE_KV, GDN_HEAD_MAP_TILED, 0, NULL, 0, OPT_SIG},
        /* enough value heads (48 x 2 row tiles) that the CUDA plan picks the
         * fused path by itself on a GPU with up to 192 multiprocessors */
        {C_LONG, 1, 200, 16, 48, 64, 64, GDN_STATE_VK, GDN_HEAD_MAP_TILED, 1, NULL, 0,
         OPT_L2 | OPT_QWEN | OPT_SIG},
    };
    printf("cases:\n");
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* quick: one case of each class but the long ones */
        if (quick && (cases[i].cls == C_LONG || (i > 0 && cases[i - 1].cls == cases[i].cls)))
            continue;
        check_case(ctx, &cases[i], seed++, 1);
    }

    printf("worst relative error per class (bounds: o %.1e, final %.1e, chunk states %.1e):\n",
           BOUND_O, BOUND_FINAL, BOUND_CS);
    for (int c = 0; c < C_COUNT; c++)
        printf("  %-26s %3d cases  o %.2e  final %.2e  chunk states %.2e\n", CLASS_NAME[c],
               class_cases[c], worst[c][0], worst[c][1], worst[c][2]);

    check_fixtures(ctx);
    if (!quick) check_bound_sensitivity(ctx);
    check_determinism(ctx);
    check_batch_invariance(ctx);
    check_resume(ctx);
    check_optional_and_layout(ctx);
    check_nonfinite(ctx);
#ifdef GDN_TEST_CUDA
    if (!quick) check_split_path(ctx);
    check_row_tiles(ctx);
    check_fused_knobs(ctx);
    check_fused_split(ctx);
    check_wide_fused(ctx);
#endif

    gdn_context_destroy(ctx);
    printf("time %.1f s\n", gdn_test_seconds() - t0);
    return gdn_test_finish(TEST_NAME);
}

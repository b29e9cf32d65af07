/* gdn_recurrent_forward on the CUDA backend, against the fp64 oracle
 * (gdn_ref_forward_f64) and against the CPU backend, on fresh random
 * inputs of the SPEC section 5 kind:
 *  - a sweep over K = V = 64, 100, 128, 256 and K != V (128/64, 48/100,
 *    64/256), both state layouts, both head maps, both pool dtypes, the
 *    option variants cycling (defaults, L2 norm, sigmoid + scale, Qwen gate,
 *    all), T_n from 1 to 8 mixed through cu_seqlens, slots permuted,
 *    padding repeated (-1 and other negatives) and indices >= pool_size
 *    (pool_size, pool_size + 1, + 1000, INT32_MAX: padding on CUDA, nothing
 *    touched), random untouched slots around them, state_history in half
 *    of the cases;
 *  - odd sizes (the element-wise path: K or V not a multiple of the 16-byte
 *    vector, 1..256), misaligned pointers (the element-wise path on aligned
 *    sizes, scalar q/k loads), batch decode without cu_seqlens, identity
 *    indices (NULL), empty sequences, longer sequences (up to 40 tokens),
 *    an all-padding call, NaN containment, decode steps back to back on
 *    one pool without host synchronisation (the programmatic launch);
 *  - large launches: 4096 sequences (16384 and 131072 blocks), and the
 *    largest f32 pool of the production head shape that fits the card;
 *  - the CUDA-only argument rules.
 * Every case: o and state_history poisoned (0xFF) on the device before each
 * run; o vs the oracle (one bf16 rounding of a value within 1e-5 rms of
 * it), the written-back states and the history vs the oracle (f32 pool:
 * relative error <= 1e-6; bf16 pool: one rounding); padding o rows zero,
 * padding history rows and every slot that no (non-empty, non-padding)
 * sequence names bitwise unchanged; the same against the CPU backend (o
 * and bf16 states within one bf16 ulp plus 1e-5 rms, f32 states 1e-6
 * relative: the backends sum in different orders); two runs bitwise
 * identical.
 *
 * GDN_TEST_QUICK=1 (for compute-sanitizer) runs a subset that still covers
 * every kernel configuration (dtype x layout x padded K x vector/element
 * path), padding, indices past the pool and the history, without the large
 * launches. Exits 77 (skipped) with the reason when no GPU is usable. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "devbuf.h"
#include "gdn_internal.h"
#include "gdn_ref.h"
#include "recurrent_cases.h"
#include "test_util.h"

/* Bounds against the oracle: RF_BOUND_* of recurrent_cases.h (the GPU
 * also computes in f32 and rounds o, and a bf16 pool, once). Against the
 * CPU backend: f32 states differ by summation order only. */
static const double BOUND_CPU_F32 = 1e-6;

static gdn_context *gpu_ctx, *cpu_ctx;
static int quick;
static rf_worst worst_seen; /* vs the oracle */
static double worst_cpu_f32, worst_cpu_excess;
static int64_t total_o_diffs, total_o_compared;

/* ---- device side ---- */

enum { D_Q, D_K, D_V, D_G, D_BETA, D_POOL, D_IDX, D_O, D_HIST, D_CU, D_ALOG, D_DTB, D_COUNT };

typedef struct dev_problem {
    void *base[D_COUNT]; /* allocations */
    void *ptr[D_COUNT];  /* what the call gets (base + offset when misaligned) */
    size_t bytes[D_COUNT];
    gdn_problem p;             /* with cu_seqlens_device */
    gdn_forward_options opts;  /* device A_log, dt_bias */
    const gdn_forward_options *opts_arg;
} dev_problem;

static void die(const char *what) {
    fprintf(stderr, "test_recurrent_forward_cuda: %s: %s\n", what, gdn_dev_error());
    exit(1);
}

/* A device buffer of exactly bytes (placed off bytes into its allocation,
 * so memcheck sees the true end), filled from host when given. */
static void dev_buf(dev_problem *d, int i, const void *host, size_t bytes, size_t off) {
    d->bytes[i] = bytes;
    if (gdn_dev_alloc(&d->base[i], bytes + off) != 0) die("cudaMalloc");
    d->ptr[i] = (char *)d->base[i] + off;
    if (host && gdn_dev_upload(d->ptr[i], host, bytes) != 0) die("upload");
}

static void dev_free(dev_problem *d) {
    for (int i = 0; i < D_COUNT; i++) gdn_dev_free(d->base[i]);
    memset(d, 0, sizeof *d);
}

static void dev_make(dev_problem *d, const rf_problem *r, const rf_case *c) {
    memset(d, 0, sizeof *d);
    const gdn_problem *p = &r->in.p;
    const int64_t T = r->tokens, N = r->in.N;
    /* misaligned: bf16 tensors 2 bytes off, f32 tensors 4, the pool one
     * element: no 16-byte vectors anywhere */
    const size_t o2 = c->misalign ? 2 : 0, o4 = c->misalign ? 4 : 0;
    const size_t op = c->misalign ? r->elem : 0;
    dev_buf(d, D_Q, r->in.q, (size_t)(T * p->Hk * p->K) * 2, o2);
    dev_buf(d, D_K, r->in.k, (size_t)(T * p->Hk * p->K) * 2, o2);
    dev_buf(d, D_V, r->in.v, (size_t)(T * p->Hv * p->V) * 2, o2);
    dev_buf(d, D_G, r->in.g, (size_t)(T * p->Hv) * 4, o4);
    dev_buf(d, D_BETA, r->in.beta, (size_t)(T * p->Hv) * 4, o4);
    dev_buf(d, D_POOL, NULL, (size_t)(r->P * r->S) * r->elem, op);
    if (r->idx) dev_buf(d, D_IDX, r->idx, (size_t)N * 4, o4);
    dev_buf(d, D_O, NULL, (size_t)(T * p->Hv * p->V) * 2, o2);
    if (c->history) dev_buf(d, D_HIST, NULL, (size_t)(T * r->S) * r->elem, op);
    if (r->cu) dev_buf(d, D_CU, r->cu, (size_t)(N + 1) * 4, o4);
    dev_buf(d, D_ALOG, r->A_log, (size_t)p->Hv * 4, o4);
    dev_buf(d, D_DTB, r->dt_bias, (size_t)p->Hv * 4, o4);
    d->p = *p;
    d->p.cu_seqlens_device = (const int32_t *)d->ptr[D_CU];
    d->opts = r->opts;
    if (r->opts.qwen_gate) {
        d->opts.A_log = (const float *)d->ptr[D_ALOG];
        d->opts.dt_bias = (const float *)d->ptr[D_DTB];
    }
    d->opts_arg = r->opts_arg ? &d->opts : NULL;
}

/* One GPU run from pool0: o and history poisoned first; results copied
 * back into o, pool and hist (hist may be NULL). */
static int gpu_run(dev_problem *d, const rf_problem *r, gdn_dtype dt, gdn_bf16 *o, void *pool,
                   void *hist) {
    if (gdn_dev_upload(d->ptr[D_POOL], r->pool0, d->bytes[D_POOL]) != 0) die("upload pool");
    if (gdn_dev_fill(d->ptr[D_O], 0xFF, d->bytes[D_O]) != 0) die("poison o");
    if (d->ptr[D_HIST] && gdn_dev_fill(d->ptr[D_HIST], 0xFF, d->bytes[D_HIST]) != 0)
        die("poison history");
    if (gdn_dev_sync() != 0) die("sync");
    const int ok = CHECK_STATUS(
        gdn_recurrent_forward(gpu_ctx, &d->p, d->opts_arg, d->ptr[D_Q], d->ptr[D_K], d->ptr[D_V],
                              d->ptr[D_G], d->ptr[D_BETA], d->ptr[D_POOL], dt, r->P,
                              (const int32_t *)d->ptr[D_IDX], d->ptr[D_O], d->ptr[D_HIST]),
        GDN_SUCCESS, gpu_ctx);
    if (gdn_dev_sync() != 0) die("after gdn_recurrent_forward");
    if (gdn_dev_download(o, d->ptr[D_O], d->bytes[D_O]) != 0 ||
        gdn_dev_download(pool, d->ptr[D_POOL], d->bytes[D_POOL]) != 0 ||
        (hist && gdn_dev_download(hist, d->ptr[D_HIST], d->bytes[D_HIST]) != 0))
        die("download");
    return ok;
}

/* GPU vs CPU, element by element over n elements of elem bytes (2 = bf16
 * bits, 4 = f32). Identical bits count as equal (so the untouched poison
 * of both does); otherwise both must be finite. Returns the relative
 * Frobenius difference; *excess: the largest difference beyond one bf16
 * ulp of the larger of the two, in units of the CPU tensor's rms (the two
 * backends' f32 values differ by rounding, so their bf16 roundings may be
 * neighbours; the rms scale keeps values near zero, where the f32
 * difference can be many bf16 ulps of a tiny value, from failing);
 * *ndiff: how many elements differ at all. */
static double cmp_cpu(const void *gpu, const void *cpu, size_t elem, int64_t n, double *excess,
                      int64_t *ndiff) {
    double ss_d = 0, ss_r = 0, worst = 0;
    int64_t diffs = 0, finite = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double x, y;
        int same;
        if (elem == 2) {
            const gdn_bf16 a = ((const gdn_bf16 *)gpu)[i], b = ((const gdn_bf16 *)cpu)[i];
            same = a == b;
            x = gdn_bf16_to_f32(a), y = gdn_bf16_to_f32(b);
        } else {
            const float a = ((const float *)gpu)[i], b = ((const float *)cpu)[i];
            same = memcmp(&a, &b, 4) == 0;
            x = a, y = b;
        }
        if (isfinite(y)) {
            ss_r += y * y;
            finite++;
        }
        if (same) continue;
        diffs++;
        if (!isfinite(x) || !isfinite(y)) {
            bad = 1;
            continue;
        }
        ss_d += (x - y) * (x - y);
        worst = fmax(worst, fabs(x - y) - rf_ulp_bf16(fmax(fabs(x), fabs(y))));
    }
    const double rms = sqrt(ss_r / (double)(finite > 0 ? finite : 1));
    if (excess) *excess = bad ? INFINITY : rms > 0 ? worst / rms : worst;
    if (ndiff) *ndiff = diffs;
    if (bad) return INFINITY;
    return ss_r > 0 ? sqrt(ss_d / ss_r) : sqrt(ss_d);
}

/* ---- one case ---- */

static void check_case(const rf_case *c, uint64_t seed) {
    char name[256];
    rf_describe(c, name, sizeof name);
    rf_problem r;
    if (!rf_problem_make(&r, c, seed, RF_FOR_CUDA_TEST)) return;
    const gdn_problem *p = &r.in.p;
    const int64_t n_o = r.tokens * p->Hv * p->V, n_hist = r.tokens * r.S, n_pool = r.P * r.S;
    const gdn_dtype dt = c->dtype;
    dev_problem d;
    dev_make(&d, &r, c);

    gdn_bf16 *o = gdn_test_alloc(n_o, 2), *o2 = gdn_test_alloc(n_o, 2);
    void *pool = gdn_test_alloc(n_pool, r.elem), *pool2 = gdn_test_alloc(n_pool, r.elem);
    void *hist = c->history ? gdn_test_alloc(n_hist, r.elem) : NULL;
    void *hist2 = c->history ? gdn_test_alloc(n_hist, r.elem) : NULL;
    if (!gpu_run(&d, &r, dt, o, pool, hist) || !gpu_run(&d, &r, dt, o2, pool2, hist2)) goto done;

    /* Determinism: the second run from the same pool, the same bits. */
    rf_check_same_bits(&r, name, o, o2, pool, pool2, hist, hist2);
    rf_check_untouched(&r, name, o, pool);
    CHECK(rf_padding_history_untouched(&r, hist),
          "%s: history rows of padding sequences were written", name);

    /* Against the fp64 oracle, from the states the pool held. */
    rf_oracle_errs e = {0};
    if (!c->no_oracle) rf_check_vs_oracle(&r, c, name, o, pool, hist, &worst_seen, &e);

    /* Against the CPU backend on the same inputs (indices past the pool
     * given to it as -1, which it treats the same way). */
    gdn_bf16 *o_c = gdn_test_alloc_poisoned(n_o, 2);
    void *pool_c = gdn_test_alloc(n_pool, r.elem);
    void *hist_c = hist ? gdn_test_alloc_poisoned(n_hist, r.elem) : NULL;
    memcpy(pool_c, r.pool0, (size_t)n_pool * r.elem);
    double c_s = 0, c_h = 0, x_o = 0, x_s = 0, x_h = 0;
    int64_t diffs_o = 0;
    if (CHECK_STATUS(gdn_recurrent_forward(cpu_ctx, p, r.opts_arg, r.in.q, r.in.k, r.in.v, r.in.g,
                                           r.in.beta, pool_c, dt, r.P, r.idx_cpu, o_c, hist_c),
                     GDN_SUCCESS, cpu_ctx)) {
        cmp_cpu(o, o_c, 2, n_o, &x_o, &diffs_o);
        CHECK(x_o <= RF_BOUND_EXCESS, "%s: o vs CPU: %.3e (rms units) beyond one bf16 ulp", name,
              x_o);
        total_o_diffs += diffs_o;
        total_o_compared += n_o;
        c_s = cmp_cpu(pool, pool_c, r.elem, n_pool, &x_s, NULL);
        if (hist) c_h = cmp_cpu(hist, hist_c, r.elem, n_hist, &x_h, NULL);
        if (dt == GDN_DTYPE_F32) {
            CHECK(c_s <= BOUND_CPU_F32 && c_h <= BOUND_CPU_F32,
                  "%s: vs CPU: state %.3e, history %.3e > %.1e", name, c_s, c_h, BOUND_CPU_F32);
            worst_cpu_f32 = fmax(worst_cpu_f32, fmax(c_s, c_h));
        } else {
            CHECK(x_s <= RF_BOUND_EXCESS && x_h <= RF_BOUND_EXCESS,
                  "%s: bf16 state / history vs CPU: %.3e / %.3e beyond one bf16 ulp", name, x_s,
                  x_h);
        }
        worst_cpu_excess =
            fmax(worst_cpu_excess, fmax(x_o, dt == GDN_DTYPE_F32 ? 0 : fmax(x_s, x_h)));
    }
    /* the state column: rel err for an f32 pool, excess for bf16 */
    const double state_err = c->history ? (dt == GDN_DTYPE_F32 ? e.hist_rel : e.hist_excess)
                                        : (dt == GDN_DTYPE_F32 ? e.state_rel : e.state_excess);
    printf("  %-84s o %.2e (+%.0e) state %.2e%s | cpu: o %lld/%lld differ, state %.1e\n", name,
           e.o_rel, e.o_excess, state_err, c->history ? " (hist)" : "", (long long)diffs_o,
           (long long)n_o, c_s);
    fflush(stdout);
    free(o_c);
    free(pool_c);
    free(hist_c);
done:
    free(o);
    free(o2);
    free(pool);
    free(pool2);
    free(hist);
    free(hist2);
    dev_free(&d);
    rf_problem_free(&r);
}

/* Decode steps back to back on one pool with no host synchronisation
 * between them (on sm_90 each step is a programmatic dependent launch of
 * the one before, which starts while that one's last blocks run and must
 * wait before it touches the pool or o): f32 and bf16 pools in the VK
 * layout, six steps alternating two input sets. The pool and every step's
 * o must have the same bits as the same steps with a synchronisation after
 * each; the f32 run is also checked against the CPU backend taking the
 * same steps (a bf16 pool's roundings may part the backends by more than
 * one ulp after a few steps, so it is not). Two sizes: N = 2 in reversed
 * slots (state_indices given), a grid that fits the GPU at once, whose
 * blocks ask for their state rows into L2 before that wait, while the step
 * before may still be writing them; and N = 256 (16 quick) in identity
 * slots, several waves. */
enum { B2B_STEPS = 6 };

/* The steps from pool0 (o poisoned first); sync: after every step. */
static int b2b_run(dev_problem d[2], const rf_problem *r, gdn_dtype dt, const void *idx,
                   void *o_dev[B2B_STEPS], int sync, gdn_bf16 *o, void *pool) {
    if (gdn_dev_upload(d[0].ptr[D_POOL], r->pool0, d[0].bytes[D_POOL]) != 0) die("upload pool");
    for (int s = 0; s < B2B_STEPS; s++)
        if (gdn_dev_fill(o_dev[s], 0xFF, d[0].bytes[D_O]) != 0) die("poison o");
    if (gdn_dev_sync() != 0) die("sync");
    int ok = 1;
    for (int s = 0; s < B2B_STEPS && ok; s++) {
        const dev_problem *in = &d[s % 2];
        ok = CHECK_STATUS(gdn_recurrent_forward(gpu_ctx, &in->p, in->opts_arg, in->ptr[D_Q],
                                                in->ptr[D_K], in->ptr[D_V], in->ptr[D_G],
                                                in->ptr[D_BETA], d[0].ptr[D_POOL], dt, r->P, idx,
                                                o_dev[s], NULL),
                          GDN_SUCCESS, gpu_ctx);
        if (sync && gdn_dev_sync() != 0) die("after a step");
    }
    if (gdn_dev_sync() != 0) die("after the steps");
    if (gdn_dev_download(pool, d[0].ptr[D_POOL], d[0].bytes[D_POOL]) != 0) die("download");
    for (int s = 0; s < B2B_STEPS; s++)
        if (gdn_dev_download(o + s * (d[0].bytes[D_O] / 2), o_dev[s], d[0].bytes[D_O]) != 0)
            die("download");
    return ok;
}

static void check_back_to_back(void) {
    for (int run = 0; run < 4; run++) {
        const int bf = run & 1, small = run < 2;
        const rf_case c = {.Hk = 16, .Hv = 32, .K = 128, .V = 128, .variant = 1,
                           .dtype = bf ? GDN_DTYPE_BF16 : GDN_DTYPE_F32,
                           .N = small ? 2 : quick ? 16 : 256, .T = 1, .identity = 1};
        const int32_t reversed[2] = {1, 0}; /* small: slot 1 - n */
        void *idx_dev = NULL;
        if (small && (gdn_dev_alloc(&idx_dev, sizeof reversed) != 0 ||
                      gdn_dev_upload(idx_dev, reversed, sizeof reversed) != 0))
            die("state_indices");
        const char *name = bf ? "bf16" : "f32";
        rf_problem r[2];
        if (!rf_problem_make(&r[0], &c, 9100 + bf, RF_FOR_CUDA_TEST)) {
            gdn_dev_free(idx_dev);
            return;
        }
        if (!rf_problem_make(&r[1], &c, 9200 + bf, RF_FOR_CUDA_TEST)) {
            rf_problem_free(&r[0]);
            gdn_dev_free(idx_dev);
            return;
        }
        dev_problem d[2];
        dev_make(&d[0], &r[0], &c);
        dev_make(&d[1], &r[1], &c);
        const gdn_problem *p = &r[0].in.p;
        const int64_t n_o = r[0].tokens * p->Hv * p->V, n_pool = r[0].P * r[0].S;
        const size_t pool_bytes = (size_t)n_pool * r[0].elem,
                     o_bytes = (size_t)(B2B_STEPS * n_o) * 2;
        gdn_bf16 *o = gdn_test_alloc(B2B_STEPS * n_o, 2), *o_s = gdn_test_alloc(B2B_STEPS * n_o, 2);
        gdn_bf16 *o_c = gdn_test_alloc(n_o, 2);
        void *pool = gdn_test_alloc(n_pool, r[0].elem), *pool_s = gdn_test_alloc(n_pool, r[0].elem);
        void *pool_c = gdn_test_alloc(n_pool, r[0].elem);
        void *o_dev[B2B_STEPS] = {0};
        for (int s = 0; s < B2B_STEPS; s++)
            if (gdn_dev_alloc(&o_dev[s], d[0].bytes[D_O]) != 0) die("cudaMalloc");
        const int ran = b2b_run(d, &r[0], c.dtype, idx_dev, o_dev, 1, o_s, pool_s) &&
                        b2b_run(d, &r[0], c.dtype, idx_dev, o_dev, 0, o, pool);
        const int same =
            ran && memcmp(pool, pool_s, pool_bytes) == 0 && memcmp(o, o_s, o_bytes) == 0;
        CHECK(!ran || same, "back to back, %s pool: states or o differ from the synchronised steps",
              name);
        double worst_o = 0, c_s = 0;
        const int vs_cpu = !bf && ran;
        if (vs_cpu) { /* the f32 steps against the CPU backend */
            memcpy(pool_c, r[0].pool0, pool_bytes);
            for (int s = 0; s < B2B_STEPS; s++) {
                const rf_problem *in = &r[s % 2];
                if (!CHECK_STATUS(gdn_recurrent_forward(cpu_ctx, p, in->opts_arg, in->in.q,
                                                        in->in.k, in->in.v, in->in.g, in->in.beta,
                                                        pool_c, c.dtype, r[0].P,
                                                        small ? reversed : NULL, o_c, NULL),
                                  GDN_SUCCESS, cpu_ctx))
                    break;
                double x_o = 0;
                cmp_cpu(o + s * n_o, o_c, 2, n_o, &x_o, NULL);
                CHECK(x_o <= RF_BOUND_EXCESS,
                      "back to back, f32, step %d: o vs CPU %.3e (rms units) beyond one bf16 ulp",
                      s, x_o);
                worst_o = fmax(worst_o, x_o);
            }
            /* summation orders part the f32 states a little more each step */
            c_s = cmp_cpu(pool, pool_c, 4, n_pool, NULL, NULL);
            CHECK(c_s <= B2B_STEPS * BOUND_CPU_F32, "back to back, f32: states vs CPU %.3e > %.1e",
                  c_s, B2B_STEPS * BOUND_CPU_F32);
        }
        printf("  back to back: %d steps, N=%lld (%s slots), %s pool: %s a sync after each step%s",
               B2B_STEPS, (long long)c.N, small ? "reversed" : "identity", name,
               !ran   ? "failed; not compared with"
               : same ? "same bits as with"
                      : "DIFFERENT from",
               vs_cpu ? "" : "\n");
        if (vs_cpu) printf("; vs CPU o excess %.1e, states %.2e rel\n", worst_o, c_s);
        for (int s = 0; s < B2B_STEPS; s++) gdn_dev_free(o_dev[s]);
        gdn_dev_free(idx_dev);
        free(o);
        free(o_s);
        free(o_c);
        free(pool);
        free(pool_s);
        free(pool_c);
        dev_free(&d[0]);
        dev_free(&d[1]);
        rf_problem_free(&r[0]);
        rf_problem_free(&r[1]);
    }
}

/* ---- the case lists ---- */

/* Sizes x layouts x head maps x dtypes, options cycling; the history in
 * half the cases. Odd sizes take the element-wise path in the layouts
 * whose contiguous dimension they make odd. */
static void check_sweep(void) {
    static const int64_t dims[][2] = {{64, 64},   {100, 100}, {128, 128}, {256, 256},
                                      {128, 64},  {48, 100},  {64, 256},  {37, 53},
                                      {256, 255}, {255, 200}, {1, 1},     {5, 3}};
    static const int quick_dims[] = {0, 1, 2, 3, 7, 8, 9};
    const int ndims = (int)(sizeof dims / sizeof dims[0]);
    uint64_t seed = 1000;
    int variant = 0;
    for (int di = 0; di < (quick ? 7 : ndims); di++) {
        const int d = quick ? quick_dims[di] : di;
        for (int layout = 0; layout < 2; layout++)
            for (int map = 0; map < 2; map++)
                for (int dt = 0; dt < 2; dt++) {
                    if (quick && map != (layout ^ dt)) continue; /* half the combinations */
                    rf_case c = rf_sweep_case(dims[d][0], dims[d][1], layout, map, dt, variant);
                    check_case(&c, seed++);
                    variant = (variant + 1) % RF_NUM_VARIANTS;
                }
    }
}

/* Shapes and modes the sweep does not cover: the shared rf_special_cases
 * between cases of this test's own; seed 5000 + the place in the list. */
static void check_special(void) {
    rf_case cases[RF_NUM_SPECIAL + 10];
    int n = 0;
    /* decode, batch layout (no cu_seqlens): B = N, T = 1; the serving shape */
    cases[n++] = (rf_case){.Hk = 16, .Hv = 32, .K = 128, .V = 128, .N = 3, .T = 1, .padding = 1,
                           .history = 1};
    for (int i = 0; i < RF_NUM_SPECIAL; i++) cases[n++] = rf_special_cases[i];
    const rf_case more[] = {
        /* longer sequences (the token loop and its prefetch) */
        {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .variant = 1, .N = 4, .varlen = 1, .tmin = 20,
         .tmax = 40, .padding = 1},
        {.Hk = 1, .Hv = 2, .K = 256, .V = 256, .layout = GDN_STATE_KV, .dtype = GDN_DTYPE_BF16,
         .variant = 3, .N = 3, .varlen = 1, .tmin = 10, .tmax = 24, .padding = 1, .history = 1},
        /* misaligned pointers on aligned sizes: element-wise state path,
         * scalar q/k loads, each layout and dtype */
        {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .variant = 1, .N = 6, .varlen = 1, .tmin = 1,
         .padding = 1, .history = 1, .misalign = 1},
        {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .layout = GDN_STATE_KV, .dtype = GDN_DTYPE_BF16,
         .variant = 4, .N = 6, .varlen = 1, .tmin = 1, .padding = 1, .history = 1, .misalign = 1},
        {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .layout = GDN_STATE_KV, .variant = 0, .N = 5,
         .varlen = 1, .tmin = 1, .padding = 1, .misalign = 1},
        {.Hk = 1, .Hv = 2, .K = 256, .V = 256, .layout = GDN_STATE_KV, .map = GDN_HEAD_MAP_TILED,
         .variant = 2, .N = 4, .varlen = 1, .tmin = 1, .padding = 1, .misalign = 1},
        {.Hk = 1, .Hv = 2, .K = 64, .V = 64, .dtype = GDN_DTYPE_BF16, .variant = 3, .N = 4,
         .T = 2, .identity = 1, .history = 1, .misalign = 1},
        /* tiny heads, one sequence */
        {.Hk = 1, .Hv = 1, .K = 1, .V = 1, .variant = 4, .N = 1, .varlen = 1, .tmin = 1},
        {.Hk = 1, .Hv = 3, .K = 5, .V = 3, .layout = GDN_STATE_KV, .map = GDN_HEAD_MAP_TILED,
         .dtype = GDN_DTYPE_BF16, .variant = 1, .N = 3, .varlen = 1, .tmin = 1, .padding = 1,
         .history = 1},
    };
    for (unsigned i = 0; i < sizeof more / sizeof more[0]; i++) cases[n++] = more[i];
    for (int i = 0; i < n; i++)
        if (!quick || i % 2 == 0 || cases[i].misalign) check_case(&cases[i], 5000 + (uint64_t)i);
}

/* Large launches: 4096 sequences. The first, K = V = 32 f32 (16384
 * blocks) against the oracle too; the second, Hv = 32 and K = V = 16 in a
 * bf16 KV pool, one warp a head: 131072 blocks, against the CPU. */
static void check_large(void) {
    const rf_case cases[] = {
        {.Hk = 2, .Hv = 4, .K = 32, .V = 32, .variant = 1, .N = 4096, .varlen = 1, .tmin = 1,
         .tmax = 3, .padding = 1},
        {.Hk = 8, .Hv = 32, .K = 16, .V = 16, .layout = GDN_STATE_KV, .map = GDN_HEAD_MAP_TILED,
         .dtype = GDN_DTYPE_BF16, .variant = 3, .N = 4096, .T = 1, .padding = 1, .no_oracle = 1},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) check_case(&cases[i], 6000 + i);
}

/* The largest pool that fits the card (issue 4: no fault at any N up to
 * it): the production head shape (Hk 16, Hv 32, K = V = 128, f32 pool,
 * 2 MiB a state), as many slots as 85% of the free memory holds (over 32 K
 * on an 80 GB card, so slot offsets pass 2^32 elements), one token per
 * sequence, sequence n in slot P-1-n. Every sequence sees the same inputs
 * and the same initial state (byte patterns), so every slot must end with
 * the same bits and o must be the same for every sequence; one sequence is
 * checked against the CPU backend. */
static void check_largest_pool(void) {
    enum { HK = 16, HV = 32, KD = 128 };
    const size_t S = (size_t)HV * KD * KD, sbytes = S * 4;
    size_t free_b = 0, total_b = 0;
    if (!CHECK(gdn_dev_mem_info(&free_b, &total_b) == 0, "cudaMemGetInfo: %s", gdn_dev_error()))
        return;
    const size_t per_seq = sbytes + (size_t)(2 * HK * KD + HV * KD) * 2 + 2 * HV * 4 + 4 +
                           (size_t)HV * KD * 2;
    const int64_t P = (int64_t)(0.85 * (double)free_b / (double)per_seq);
    if (!CHECK(P >= 2, "largest pool: only %zu bytes free", free_b)) return;
    gdn_problem p;
    gdn_problem_init(&p, P, 1, HK, HV, KD, KD);
    void *q = NULL, *k = NULL, *v = NULL, *g = NULL, *b = NULL, *pool = NULL, *idx = NULL, *o = NULL;
    const size_t nqk = (size_t)P * HK * KD * 2, nv = (size_t)P * HV * KD * 2, ng = (size_t)P * HV * 4;
    int ok = gdn_dev_alloc(&q, nqk) == 0 && gdn_dev_alloc(&k, nqk) == 0 &&
             gdn_dev_alloc(&v, nv) == 0 && gdn_dev_alloc(&g, ng) == 0 &&
             gdn_dev_alloc(&b, ng) == 0 && gdn_dev_alloc(&o, nv) == 0 &&
             gdn_dev_alloc(&idx, (size_t)P * 4) == 0 && gdn_dev_alloc(&pool, (size_t)P * sbytes) == 0;
    int32_t *hidx = gdn_test_alloc(P, 4);
    for (int64_t n = 0; n < P; n++) hidx[n] = (int32_t)(P - 1 - n);
    /* bf16 0x3C3C = 0.0115 (q, k), 0x3D3D = 0.046 (v); f32 0xBCBCBCBC =
     * -0.023 (g), 0x3E3E3E3E = 0.186 (beta), 0x3C3C3C3C = 0.0115 (state) */
    ok = ok && gdn_dev_fill(q, 0x3C, nqk) == 0 && gdn_dev_fill(k, 0x3C, nqk) == 0 &&
         gdn_dev_fill(v, 0x3D, nv) == 0 && gdn_dev_fill(g, 0xBC, ng) == 0 &&
         gdn_dev_fill(b, 0x3E, ng) == 0 && gdn_dev_fill(pool, 0x3C, (size_t)P * sbytes) == 0 &&
         gdn_dev_fill(o, 0xFF, nv) == 0 && gdn_dev_upload(idx, hidx, (size_t)P * 4) == 0;
    if (CHECK(ok, "largest pool (%lld slots, %.1f GB): device buffers: %s", (long long)P,
              (double)P * (double)sbytes / 1e9, gdn_dev_error())) {
        CHECK_STATUS(gdn_recurrent_forward(gpu_ctx, &p, NULL, q, k, v, g, b, pool, GDN_DTYPE_F32, P,
                                           idx, o, NULL),
                     GDN_SUCCESS, gpu_ctx);
        CHECK(gdn_dev_sync() == 0, "largest pool: %s", gdn_dev_error());
        /* the same sequence on the CPU */
        gdn_bf16 *hq = gdn_test_alloc(HK * KD, 2), *hv = gdn_test_alloc(HV * KD, 2);
        float *hg = gdn_test_alloc(HV, 4), *hb = gdn_test_alloc(HV, 4);
        float *cpu_state = gdn_test_alloc((int64_t)S, 4), *st = gdn_test_alloc((int64_t)S, 4);
        gdn_bf16 *cpu_o = gdn_test_alloc(HV * KD, 2), *go = gdn_test_alloc(HV * KD, 2);
        memset(hq, 0x3C, (size_t)HK * KD * 2);
        memset(hv, 0x3D, (size_t)HV * KD * 2);
        memset(hg, 0xBC, HV * 4);
        memset(hb, 0x3E, HV * 4);
        memset(cpu_state, 0x3C, sbytes);
        gdn_problem one;
        gdn_problem_init(&one, 1, 1, HK, HV, KD, KD);
        CHECK_STATUS(gdn_recurrent_forward(cpu_ctx, &one, NULL, hq, hq, hv, hg, hb, cpu_state,
                                           GDN_DTYPE_F32, 1, NULL, cpu_o, NULL),
                     GDN_SUCCESS, cpu_ctx);
        /* slots 0, P/2 and P-1 (sequences P-1, .., 0) and o of sequences 0 and P-1 */
        const int64_t slots[3] = {0, P / 2, P - 1};
        float *first = gdn_test_alloc((int64_t)S, 4);
        double worst = 0;
        int same = 1;
        for (int i = 0; i < 3; i++) {
            if (gdn_dev_download(st, (const char *)pool + (size_t)slots[i] * sbytes, sbytes) != 0)
                die("download a slot");
            worst = fmax(worst, cmp_cpu(st, cpu_state, 4, (int64_t)S, NULL, NULL));
            if (i == 0) memcpy(first, st, sbytes);
            else same &= memcmp(first, st, sbytes) == 0; /* same work, same bits */
        }
        free(first);
        for (int i = 0; i < 2; i++) {
            const int64_t n = i ? P - 1 : 0;
            if (gdn_dev_download(go, (const char *)o + (size_t)n * HV * KD * 2, (size_t)HV * KD * 2))
                die("download o");
            same &= cmp_cpu(go, cpu_o, 2, HV * KD, NULL, NULL) <= 1e-2;
        }
        printf("  largest pool: %lld slots (%.1f GB of f32 states), last slot at byte %.3g: "
               "state vs CPU %.2e\n",
               (long long)P, (double)P * (double)sbytes / 1e9, (double)(P - 1) * (double)sbytes,
               worst);
        CHECK(worst <= BOUND_CPU_F32, "largest pool: slot states differ from the CPU by %.2e",
              worst);
        CHECK(same, "largest pool: slots differ from each other, or o of the first or last "
                    "sequence differs from the CPU's");
        free(hq), free(hv), free(hg), free(hb), free(cpu_state), free(st), free(cpu_o), free(go);
    }
    void *bufs[] = {q, k, v, g, b, pool, idx, o};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) gdn_dev_free(bufs[i]);
    free(hidx);
}

/* Every sequence padding (negatives and indices past the pool): o all
 * zero, the pool and the history untouched. */
static void check_all_padding(void) {
    rf_case c = {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .N = 6, .varlen = 1, .tmin = 1,
                 .padding = 1, .history = 1};
    rf_problem r;
    if (!rf_problem_make(&r, &c, 77, RF_FOR_CUDA_TEST)) return;
    const int32_t pads[] = {-1, (int32_t)r.P, -5, INT32_MAX, INT32_MIN, (int32_t)r.P + 3};
    for (int64_t n = 0; n < r.in.N; n++) {
        r.idx[n] = pads[n % 6];
        r.idx_cpu[n] = r.slot_of[n] = -1;
    }
    dev_problem d;
    dev_make(&d, &r, &c);
    const int64_t n_o = r.tokens * r.in.p.Hv * r.in.p.V, n_hist = r.tokens * r.S;
    gdn_bf16 *o = gdn_test_alloc(n_o, 2);
    void *pool = gdn_test_alloc(r.P * r.S, r.elem), *hist = gdn_test_alloc(n_hist, r.elem);
    if (gpu_run(&d, &r, c.dtype, o, pool, hist)) {
        int zero = 1, untouched = 1;
        for (int64_t x = 0; x < n_o; x++) zero &= o[x] == 0;
        for (int64_t x = 0; x < n_hist * (int64_t)r.elem; x++)
            untouched &= ((unsigned char *)hist)[x] == 0xFF;
        CHECK(zero, "all padding: o not all zero");
        CHECK(untouched, "all padding: the history was written");
        CHECK(memcmp(pool, r.pool0, (size_t)(r.P * r.S) * r.elem) == 0,
              "all padding: the pool changed");
    }
    free(o);
    free(pool);
    free(hist);
    dev_free(&d);
    rf_problem_free(&r);
}

/* A NaN in one (sequence, head)'s v stays there: every other o row and
 * pool state is bitwise what it is without the NaN. */
static void check_nan_containment(void) {
    rf_case c = {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .N = 4, .varlen = 1, .tmin = 2};
    rf_problem r;
    if (!rf_problem_make(&r, &c, 78, RF_FOR_CUDA_TEST)) return;
    const int64_t n_o = r.tokens * r.in.p.Hv * r.in.p.V, hn = 2;
    gdn_bf16 *o1 = gdn_test_alloc(n_o, 2), *o2 = gdn_test_alloc(n_o, 2);
    void *pool1 = gdn_test_alloc(r.P * r.S, r.elem), *pool2 = gdn_test_alloc(r.P * r.S, r.elem);
    dev_problem d;
    dev_make(&d, &r, &c);
    const int ok1 = gpu_run(&d, &r, c.dtype, o1, pool1, NULL);
    dev_free(&d);
    rf_put_nan_in_v(&r, hn);
    dev_make(&d, &r, &c);
    if (ok1 && gpu_run(&d, &r, c.dtype, o2, pool2, NULL))
        rf_check_nan_contained(&r, hn, o1, o2, pool1, pool2);
    free(o1);
    free(o2);
    free(pool1);
    free(pool2);
    dev_free(&d);
    rf_problem_free(&r);
}

/* The rules only the CUDA backend has, and host pointers refused by name
 * (test_validation covers the rest of the argument rules). */
static void check_cuda_rules(void) {
    rf_case c = {.Hk = 1, .Hv = 2, .K = 64, .V = 64, .N = 3, .varlen = 1, .tmin = 1,
                 .padding = 1};
    rf_problem r;
    if (!rf_problem_make(&r, &c, 79, RF_FOR_CUDA_TEST)) return;
    dev_problem d;
    dev_make(&d, &r, &c);
    gdn_problem pd = d.p;
    pd.cu_seqlens_device = NULL;
    CHECK_STATUS(gdn_recurrent_forward(gpu_ctx, &pd, NULL, d.ptr[D_Q], d.ptr[D_K], d.ptr[D_V],
                                       d.ptr[D_G], d.ptr[D_BETA], d.ptr[D_POOL], c.dtype, r.P,
                                       d.ptr[D_IDX], d.ptr[D_O], NULL),
                 GDN_ERROR_INVALID_ARGUMENT, gpu_ctx);
    CHECK(strstr(gdn_last_error(gpu_ctx), "cu_seqlens_device") != NULL,
          "no cu_seqlens_device: message '%s'", gdn_last_error(gpu_ctx));
    CHECK_STATUS(gdn_recurrent_forward(gpu_ctx, &d.p, NULL, d.ptr[D_Q], d.ptr[D_K], d.ptr[D_V],
                                       d.ptr[D_G], d.ptr[D_BETA], d.ptr[D_POOL], c.dtype, r.P,
                                       r.idx, d.ptr[D_O], NULL),
                 GDN_ERROR_INVALID_ARGUMENT, gpu_ctx);
    CHECK(strstr(gdn_last_error(gpu_ctx), "state_indices is a host pointer") != NULL,
          "host state_indices: message '%s'", gdn_last_error(gpu_ctx));
    CHECK_STATUS(gdn_recurrent_forward(gpu_ctx, &d.p, NULL, d.ptr[D_Q], d.ptr[D_K], d.ptr[D_V],
                                       d.ptr[D_G], d.ptr[D_BETA], d.ptr[D_POOL], c.dtype,
                                       r.in.N - 1, NULL, d.ptr[D_O], NULL),
                 GDN_ERROR_INVALID_ARGUMENT, gpu_ctx);
    CHECK(strstr(gdn_last_error(gpu_ctx), "pool_size") != NULL,
          "identity slots, small pool: message '%s'", gdn_last_error(gpu_ctx));
    dev_free(&d);
    rf_problem_free(&r);
}

int main(void) {
    if (!gdn_dev_available()) {
        printf("test_recurrent_forward_cuda: SKIPPED: no CUDA device (or libgdn built without "
               "CUDA)\n");
        return 77;
    }
    quick = getenv("GDN_TEST_QUICK") && atoi(getenv("GDN_TEST_QUICK"));
    printf("device: %s%s\n", gdn_dev_name(), quick ? " (GDN_TEST_QUICK: subset)" : "");
    if (!CHECK_STATUS(gdn_context_create(&gpu_ctx, GDN_BACKEND_CUDA, 0), GDN_SUCCESS, NULL) ||
        !CHECK_STATUS(gdn_context_create(&cpu_ctx, GDN_BACKEND_CPU, 0), GDN_SUCCESS, NULL))
        return gdn_test_finish("test_recurrent_forward_cuda");
    const double t0 = gdn_test_seconds();
    printf("o: rel err vs fp64 (+ excess over its bf16 rounding); state: rel err (f32) or "
           "excess (bf16)\n");
    check_sweep();
    check_special();
    if (!quick) check_large();
    if (!quick) check_largest_pool();
    check_all_padding();
    check_nan_containment();
    check_back_to_back();
    check_cuda_rules();
    printf("worst vs fp64: o %.2e (excess %.1e), f32 state/history %.2e, bf16 excess %.1e\n",
           worst_seen.o_rel, worst_seen.o_excess, worst_seen.f32, worst_seen.bf16_excess);
    printf("vs CPU: f32 states %.2e rel, bf16 tensors %.1e beyond one ulp, o elements that "
           "differ %lld of %lld\n",
           worst_cpu_f32, worst_cpu_excess, (long long)total_o_diffs,
           (long long)total_o_compared);
    printf("(%.1f s)\n", gdn_test_seconds() - t0);
    gdn_context_destroy(gpu_ctx);
    gdn_context_destroy(cpu_ctx);
    return gdn_test_finish("test_recurrent_forward_cuda");
}

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
 *    an all-padding call, NaN containment;
 *  - large launches: 4096 sequences (16384 and 131072 blocks);
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
#include "test_util.h"

/* Bounds against the oracle: those of test_recurrent_forward_cpu.c (the
 * GPU also computes in f32 and rounds o, and a bf16 pool, once). */
static const double BOUND_EXCESS = 1e-5; /* f32 error left after the allowed bf16 rounding */
static const double BOUND_F32 = 1e-6;    /* f32 pool / history, relative Frobenius */
static const double BOUND_O_REL = 3e-3;  /* o vs fp64: its bf16 rounding */
/* Against the CPU backend: f32 states differ by summation order only. */
static const double BOUND_CPU_F32 = 1e-6;

static gdn_context *gpu_ctx, *cpu_ctx;
static int quick;
static double worst_o_rel, worst_o_excess, worst_f32, worst_bf16_excess, worst_cpu_f32;
static double worst_cpu_excess;
static int64_t total_o_diffs, total_o_compared;

enum { NUM_VARIANTS = 5 };
static const char *const VARIANT_NAMES[NUM_VARIANTS] = {"defaults", "l2norm", "sigmoid+scale",
                                                        "qwen_gate", "all"};

typedef struct rf_case {
    int64_t Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    gdn_dtype dtype;
    int variant;
    int64_t N;    /* sequences */
    int varlen;   /* 1: cu_seqlens, T_n random in [tmin, tmax] */
    int tmin;     /* shortest sequence with varlen (0 allows empty ones) */
    int tmax;     /* longest with varlen; 0 means 8 */
    int64_t T;    /* tokens per sequence without varlen (B = N) */
    int padding;  /* 1: some sequences are padding (negative or >= pool_size) */
    int identity; /* 1: state_indices NULL */
    int history;  /* 1: ask for state_history */
    int misalign; /* 1: device tensors off their 16-byte alignment */
    int no_oracle; /* 1: compare with the CPU backend only (the largest cases) */
} rf_case;

/* One problem on the host: inputs, options, pool and indices. */
typedef struct rf_problem {
    gdn_ref_inputs in; /* q k v g beta; in.h0 gives the initial states */
    int32_t *cu;
    gdn_forward_options opts; /* host A_log, dt_bias (CPU backend, oracle) */
    const gdn_forward_options *opts_arg;
    float *A_log, *dt_bias;
    int64_t P;        /* pool slots */
    size_t elem;      /* pool element bytes */
    int64_t S;        /* elements per state (Hv*V*K) */
    void *pool0;      /* the pool before the call */
    int32_t *idx;     /* [N] as the GPU gets it (may hold >= P); NULL with identity */
    int32_t *idx_cpu; /* the same with >= P replaced by -1 (the CPU refuses those) */
    int32_t *slot_of; /* [N]: the slot of each sequence, -1 for padding */
    float *h0;        /* [N, S]: each sequence's initial state as the pool holds it */
    int64_t tokens;   /* B*T */
} rf_problem;

static double pool_elem(size_t elem, const void *base, int64_t i) {
    return elem == 4 ? (double)((const float *)base)[i]
                     : (double)gdn_bf16_to_f32(((const gdn_bf16 *)base)[i]);
}

static void describe(const rf_case *c, char *buf, size_t len) {
    char shape[64];
    if (c->varlen)
        snprintf(shape, sizeof shape, "N=%lld varlen%s", (long long)c->N,
                 c->tmin == 0 ? "(empty)" : "");
    else
        snprintf(shape, sizeof shape, "B=%lld T=%lld", (long long)c->N, (long long)c->T);
    snprintf(buf, len, "%s Hk=%lld Hv=%lld K=%lld V=%lld %s %s %s %s%s%s%s", shape,
             (long long)c->Hk, (long long)c->Hv, (long long)c->K, (long long)c->V,
             c->layout == GDN_STATE_KV ? "KV" : "VK", c->map == GDN_HEAD_MAP_TILED ? "tiled" : "block",
             c->dtype == GDN_DTYPE_F32 ? "f32" : "bf16", VARIANT_NAMES[c->variant],
             c->identity ? " identity" : "", c->history ? " hist" : "",
             c->misalign ? " misaligned" : "");
}

static void problem_free(rf_problem *r) {
    gdn_ref_inputs_free(&r->in);
    free(r->cu);
    free(r->A_log);
    free(r->dt_bias);
    free(r->pool0);
    free(r->idx);
    free(r->idx_cpu);
    free(r->slot_of);
    free(r->h0);
    memset(r, 0, sizeof *r);
}

/* Random inputs for the case (as test_recurrent_forward_cpu.c draws them,
 * plus indices past the pool among the padding). */
static int problem_make(rf_problem *r, const rf_case *c, uint64_t seed) {
    memset(r, 0, sizeof *r);
    gdn_rng rng;
    gdn_rng_seed(&rng, seed ^ 0x9e3779b97f4a7c15ull);
    int64_t B = c->N, T = c->T;
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

    /* The pool: random contents everywhere; the sequences' slots a random
     * permutation; padding marked with assorted negatives and indices past
     * the pool. */
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
    if (c->identity) {
        for (int64_t n = 0; n < N; n++) r->slot_of[n] = (int32_t)n;
    } else {
        int32_t *perm = gdn_test_alloc(r->P, sizeof(int32_t));
        for (int64_t i = 0; i < r->P; i++) perm[i] = (int32_t)i;
        for (int64_t i = r->P - 1; i > 0; i--) {
            const int64_t j = (int64_t)(gdn_rng_uniform(&rng) * (double)(i + 1));
            const int32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        const int32_t P32 = (int32_t)r->P;
        const int32_t pads[] = {-1, -1, -1, -2, -1000, INT32_MIN,
                                P32, P32 + 1, P32 + 1000, INT32_MAX};
        const int npads = (int)(sizeof pads / sizeof pads[0]);
        r->idx = gdn_test_alloc(N, sizeof(int32_t));
        r->idx_cpu = gdn_test_alloc(N, sizeof(int32_t));
        for (int64_t n = 0; n < N; n++) {
            const int pad = c->padding && N > 1 && (n % 4 == 1 || gdn_rng_uniform(&rng) < 0.15);
            /* n % 8 == 1: a negative; n % 8 == 5: past the pool; else any */
            int which = (int)(gdn_rng_uniform(&rng) * npads);
            if (n % 8 == 1) which = which % 6;
            if (n % 8 == 5) which = 6 + which % 4;
            r->idx[n] = pad ? pads[which] : perm[n];
            r->idx_cpu[n] = r->idx[n] >= P32 ? -1 : r->idx[n];
            r->slot_of[n] = r->idx_cpu[n] < 0 ? -1 : r->idx_cpu[n];
        }
        free(perm);
    }
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
    return 1;
}

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

/* ---- error measures ---- */

/* As in test_recurrent_forward_cpu.c: the relative Frobenius error
 * (+INFINITY if any x is not finite) and the f32 error left after one
 * allowed bf16 rounding, in units of the reference's rms. */
typedef struct errs {
    double ss_diff, ss_ref, worst;
    int64_t n;
    int nonfinite;
} errs;

static double ulp_bf16(double x) {
    const float f = (float)x;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u &= 0x7f800000u;
    float p2;
    memcpy(&p2, &u, sizeof p2);
    return (double)p2 * 0x1p-7;
}

static void errs_add(errs *er, double x, double ref) {
    if (!isfinite(x)) er->nonfinite = 1;
    const double d = x - ref;
    er->ss_diff += d * d;
    er->ss_ref += ref * ref;
    er->n++;
    const double m = fmax(fabs(x), fabs(ref));
    er->worst = fmax(er->worst, fabs(d) - 0.5 * ulp_bf16(m));
}

static double errs_rel(const errs *er) {
    if (er->nonfinite) return INFINITY;
    return er->ss_ref > 0.0 ? sqrt(er->ss_diff / er->ss_ref) : sqrt(er->ss_diff);
}

static double errs_excess(const errs *er) {
    if (er->nonfinite) return INFINITY;
    const double rms = sqrt(er->ss_ref / (double)(er->n > 0 ? er->n : 1));
    return rms > 0.0 ? er->worst / rms : er->worst;
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
        worst = fmax(worst, fabs(x - y) - ulp_bf16(fmax(fabs(x), fabs(y))));
    }
    const double rms = sqrt(ss_r / (double)(finite > 0 ? finite : 1));
    if (excess) *excess = bad ? INFINITY : rms > 0 ? worst / rms : worst;
    if (ndiff) *ndiff = diffs;
    if (bad) return INFINITY;
    return ss_r > 0 ? sqrt(ss_d / ss_r) : sqrt(ss_d);
}

/* The final state of every sequence after its first L tokens (all of them
 * if it has fewer), from the oracle. out [N, S]. */
static void oracle_prefix_states(const rf_problem *r, int64_t L, double *out) {
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

/* ---- one case ---- */

static void check_case(const rf_case *c, uint64_t seed) {
    char name[256];
    describe(c, name, sizeof name);
    rf_problem r;
    if (!problem_make(&r, c, seed)) return;
    const gdn_problem *p = &r.in.p;
    const int64_t N = r.in.N, Hv = p->Hv, V = p->V, S = r.S;
    const int64_t n_o = r.tokens * Hv * V, n_hist = r.tokens * S, n_pool = r.P * S;
    const gdn_dtype dt = c->dtype;
    dev_problem d;
    dev_make(&d, &r, c);

    gdn_bf16 *o = gdn_test_alloc(n_o, 2), *o2 = gdn_test_alloc(n_o, 2);
    void *pool = gdn_test_alloc(n_pool, r.elem), *pool2 = gdn_test_alloc(n_pool, r.elem);
    void *hist = c->history ? gdn_test_alloc(n_hist, r.elem) : NULL;
    void *hist2 = c->history ? gdn_test_alloc(n_hist, r.elem) : NULL;
    if (!gpu_run(&d, &r, dt, o, pool, hist) || !gpu_run(&d, &r, dt, o2, pool2, hist2)) goto done;

    /* Determinism: the second run from the same pool, the same bits. */
    CHECK(memcmp(o, o2, (size_t)n_o * 2) == 0, "%s: o differs between two runs", name);
    CHECK(memcmp(pool, pool2, (size_t)n_pool * r.elem) == 0, "%s: pool differs between two runs",
          name);
    CHECK(!hist || memcmp(hist, hist2, (size_t)n_hist * r.elem) == 0,
          "%s: history differs between two runs", name);

    /* Padding o rows zero; slots no (non-empty, non-padding) sequence names
     * and padding history rows bitwise unchanged. */
    int pad_rows_zero = 1, pad_hist_untouched = 1;
    char *named = gdn_test_alloc(r.P, 1);
    memset(named, 0, (size_t)r.P);
    for (int64_t n = 0; n < N; n++) {
        int64_t bos, eos;
        gdn_seq_bounds(p, n, &bos, &eos);
        if (r.slot_of[n] >= 0) {
            if (eos > bos) named[r.slot_of[n]] = 1;
            continue;
        }
        for (int64_t x = bos * Hv * V; x < eos * Hv * V; x++) pad_rows_zero &= o[x] == 0;
        if (hist) {
            const unsigned char *b = (const unsigned char *)hist + bos * S * r.elem;
            for (int64_t x = 0; x < (eos - bos) * S * (int64_t)r.elem; x++)
                pad_hist_untouched &= b[x] == 0xFF;
        }
    }
    CHECK(pad_rows_zero, "%s: o rows of padding sequences are not zero", name);
    CHECK(pad_hist_untouched, "%s: history rows of padding sequences were written", name);
    int64_t changed = 0;
    for (int64_t s = 0; s < r.P; s++)
        if (!named[s] && memcmp((char *)pool + s * S * r.elem, (char *)r.pool0 + s * S * r.elem,
                                (size_t)S * r.elem) != 0)
            changed++;
    CHECK(changed == 0, "%s: %lld pool slots that no sequence names were changed", name,
          (long long)changed);
    free(named);

    /* Against the fp64 oracle, from the states the pool held. */
    double eo = 0, xo = 0, es = 0, xs = 0, eh = 0, xh = 0;
    if (!c->no_oracle) {
        double *o_ref = gdn_test_alloc(n_o, sizeof(double));
        double *fs_ref = gdn_test_alloc(N * S, sizeof(double));
        gdn_ref_forward_f64(p, r.opts_arg, r.in.q, r.in.k, r.in.v, r.in.g, r.in.beta, r.h0, o_ref,
                            fs_ref, NULL);
        errs po = {0}, ps = {0};
        for (int64_t n = 0; n < N; n++) {
            int64_t bos, eos;
            gdn_seq_bounds(p, n, &bos, &eos);
            if (r.slot_of[n] < 0) continue;
            for (int64_t x = bos * Hv * V; x < eos * Hv * V; x++)
                errs_add(&po, gdn_bf16_to_f32(o[x]), o_ref[x]);
            if (eos > bos)
                for (int64_t x = 0; x < S; x++)
                    errs_add(&ps, pool_elem(r.elem, pool, r.slot_of[n] * S + x), fs_ref[n * S + x]);
        }
        eo = errs_rel(&po), xo = errs_excess(&po), es = errs_rel(&ps), xs = errs_excess(&ps);
        CHECK(eo <= BOUND_O_REL, "%s: o rel err %.3e > %.1e", name, eo, BOUND_O_REL);
        CHECK(xo <= BOUND_EXCESS, "%s: o excess over bf16 rounding %.3e > %.1e", name, xo,
              BOUND_EXCESS);
        worst_o_rel = fmax(worst_o_rel, eo);
        worst_o_excess = fmax(worst_o_excess, xo);
        if (dt == GDN_DTYPE_F32) {
            CHECK(es <= BOUND_F32, "%s: state rel err %.3e > %.1e", name, es, BOUND_F32);
            worst_f32 = fmax(worst_f32, es);
        } else {
            CHECK(xs <= BOUND_EXCESS, "%s: bf16 state excess over rounding %.3e > %.1e", name, xs,
                  BOUND_EXCESS);
            worst_bf16_excess = fmax(worst_bf16_excess, xs);
        }
        if (hist) {
            errs ph = {0};
            int64_t maxlen = 0;
            for (int64_t n = 0; n < N; n++) {
                int64_t bos, eos;
                gdn_seq_bounds(p, n, &bos, &eos);
                if (eos - bos > maxlen) maxlen = eos - bos;
            }
            double *pref = gdn_test_alloc(N * S, sizeof(double));
            for (int64_t L = 1; L <= maxlen; L++) {
                oracle_prefix_states(&r, L, pref);
                for (int64_t n = 0; n < N; n++) {
                    int64_t bos, eos;
                    gdn_seq_bounds(p, n, &bos, &eos);
                    if (r.slot_of[n] < 0 || eos - bos < L) continue;
                    const int64_t t = bos + L - 1;
                    for (int64_t x = 0; x < S; x++)
                        errs_add(&ph, pool_elem(r.elem, hist, t * S + x), pref[n * S + x]);
                }
            }
            free(pref);
            eh = errs_rel(&ph), xh = errs_excess(&ph);
            if (dt == GDN_DTYPE_F32) {
                CHECK(eh <= BOUND_F32, "%s: history rel err %.3e > %.1e", name, eh, BOUND_F32);
                worst_f32 = fmax(worst_f32, eh);
            } else {
                CHECK(xh <= BOUND_EXCESS, "%s: bf16 history excess over rounding %.3e > %.1e",
                      name, xh, BOUND_EXCESS);
                worst_bf16_excess = fmax(worst_bf16_excess, xh);
            }
        }
        free(o_ref);
        free(fs_ref);
    }

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
        CHECK(x_o <= BOUND_EXCESS, "%s: o vs CPU: %.3e (rms units) beyond one bf16 ulp", name,
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
            CHECK(x_s <= BOUND_EXCESS && x_h <= BOUND_EXCESS,
                  "%s: bf16 state / history vs CPU: %.3e / %.3e beyond one bf16 ulp", name, x_s,
                  x_h);
        }
        worst_cpu_excess = fmax(worst_cpu_excess, fmax(x_o, dt == GDN_DTYPE_F32 ? 0 : fmax(x_s, x_h)));
    }
    printf("  %-84s o %.2e (+%.0e) state %.2e%s | cpu: o %lld/%lld differ, state %.1e\n", name,
           eo, xo, c->history ? (dt == GDN_DTYPE_F32 ? eh : xh) : (dt == GDN_DTYPE_F32 ? es : xs),
           c->history ? " (hist)" : "", (long long)diffs_o, (long long)n_o, c_s);
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
    problem_free(&r);
}

/* ---- the case lists ---- */

static rf_case sweep_case(int64_t K, int64_t V, int layout, int map, int dt, int variant) {
    const int64_t area = K * V;
    rf_case c = {0};
    c.Hk = 2;
    c.Hv = area >= 128 * 128 ? 4 : 6;
    c.K = K;
    c.V = V;
    c.layout = (gdn_state_layout)layout;
    c.map = (gdn_head_map)map;
    c.dtype = (gdn_dtype)dt;
    c.variant = variant;
    c.N = area > 128 * 128 ? 5 : area == 128 * 128 ? 7 : 11;
    c.varlen = 1;
    c.tmin = 1;
    c.padding = 1;
    c.history = layout == map;
    return c;
}

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
                    rf_case c = sweep_case(dims[d][0], dims[d][1], layout, map, dt, variant);
                    check_case(&c, seed++);
                    variant = (variant + 1) % NUM_VARIANTS;
                }
    }
}

/* Shapes and modes the sweep does not cover. */
static void check_special(void) {
    const rf_case cases[] = {
        /* decode, batch layout (no cu_seqlens): B = N, T = 1; the serving shape */
        {.Hk = 16, .Hv = 32, .K = 128, .V = 128, .layout = GDN_STATE_VK, .dtype = GDN_DTYPE_F32,
         .N = 3, .T = 1, .padding = 1, .history = 1},
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
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (!quick || i % 2 == 0 || cases[i].misalign) check_case(&cases[i], 5000 + i);
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

/* Every sequence padding (negatives and indices past the pool): o all
 * zero, the pool and the history untouched. */
static void check_all_padding(void) {
    rf_case c = {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .N = 6, .varlen = 1, .tmin = 1,
                 .padding = 1, .history = 1};
    rf_problem r;
    if (!problem_make(&r, &c, 77)) return;
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
    problem_free(&r);
}

/* A NaN in one (sequence, head)'s v stays there: every other o row and
 * pool state is bitwise what it is without the NaN. */
static void check_nan_containment(void) {
    rf_case c = {.Hk = 2, .Hv = 4, .K = 128, .V = 128, .N = 4, .varlen = 1, .tmin = 2};
    rf_problem r;
    if (!problem_make(&r, &c, 78)) return;
    const gdn_problem *p = &r.in.p;
    const int64_t Hv = p->Hv, V = p->V, n_o = r.tokens * Hv * V, hn = 2;
    int64_t bos, eos;
    gdn_seq_bounds(p, 1, &bos, &eos);
    gdn_bf16 *o1 = gdn_test_alloc(n_o, 2), *o2 = gdn_test_alloc(n_o, 2);
    void *pool1 = gdn_test_alloc(r.P * r.S, r.elem), *pool2 = gdn_test_alloc(r.P * r.S, r.elem);
    dev_problem d;
    dev_make(&d, &r, &c);
    const int ok1 = gpu_run(&d, &r, c.dtype, o1, pool1, NULL);
    dev_free(&d);
    r.in.v[(bos * Hv + hn) * V + 3] = 0x7fc0; /* NaN */
    dev_make(&d, &r, &c);
    if (ok1 && gpu_run(&d, &r, c.dtype, o2, pool2, NULL)) {
        int other_same = 1, hit_nan = 0;
        for (int64_t t = 0; t < r.tokens; t++)
            for (int64_t h = 0; h < Hv; h++) {
                const int hit = t >= bos && t < eos && h == hn;
                for (int64_t j = 0; j < V; j++) {
                    const int64_t x = (t * Hv + h) * V + j;
                    if (hit)
                        hit_nan |= (o2[x] & 0x7fff) > 0x7f80;
                    else
                        other_same &= o1[x] == o2[x];
                }
            }
        const int64_t hs = p->V * p->K;
        for (int64_t s = 0; s < r.P; s++)
            for (int64_t h = 0; h < Hv; h++) {
                if (s == r.slot_of[1] && h == hn) continue;
                other_same &= memcmp((char *)pool1 + (s * Hv + h) * hs * r.elem,
                                     (char *)pool2 + (s * Hv + h) * hs * r.elem,
                                     (size_t)hs * r.elem) == 0;
            }
        CHECK(hit_nan, "NaN in v did not reach its own o rows");
        CHECK(other_same, "a NaN in one (sequence, head) changed other outputs or slots");
    }
    free(o1);
    free(o2);
    free(pool1);
    free(pool2);
    dev_free(&d);
    problem_free(&r);
}

/* The rules only the CUDA backend has, and host pointers refused by name
 * (test_validation covers the rest of the argument rules). */
static void check_cuda_rules(void) {
    rf_case c = {.Hk = 1, .Hv = 2, .K = 64, .V = 64, .N = 3, .varlen = 1, .tmin = 1,
                 .padding = 1};
    rf_problem r;
    if (!problem_make(&r, &c, 79)) return;
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
    problem_free(&r);
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
    check_all_padding();
    check_nan_containment();
    check_cuda_rules();
    printf("worst vs fp64: o %.2e (excess %.1e), f32 state/history %.2e, bf16 excess %.1e\n",
           worst_o_rel, worst_o_excess, worst_f32, worst_bf16_excess);
    printf("vs CPU: f32 states %.2e rel, bf16 tensors %.1e beyond one ulp, o elements that "
           "differ %lld of %lld\n",
           worst_cpu_f32, worst_cpu_excess, (long long)total_o_diffs,
           (long long)total_o_compared);
    printf("(%.1f s)\n", gdn_test_seconds() - t0);
    gdn_context_destroy(gpu_ctx);
    gdn_context_destroy(cpu_ctx);
    return gdn_test_finish("test_recurrent_forward_cuda");
}

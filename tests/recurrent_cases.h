/* What test_recurrent_forward_cpu.c and test_recurrent_forward_cuda.c
 * share: the case description, the random problem (inputs, options, state
 * pool, indices), the error measures and the checks against the fp64
 * oracle (gdn_ref_forward_f64) that both make of the op's outputs. */
#ifndef GDN_RECURRENT_CASES_H
#define GDN_RECURRENT_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "gdn.h"
#include "gdn_ref.h"

/* Bounds against the oracle. The op computes in f32 and rounds o (bf16)
 * once, and a bf16 pool once per write-back (see the CPU test's header). */
#define RF_BOUND_EXCESS 1e-5 /* f32 error left after the allowed bf16 rounding */
#define RF_BOUND_F32 1e-6    /* f32 pool / history, relative Frobenius */
#define RF_BOUND_O_REL 3e-3  /* o vs fp64: its bf16 rounding */

/* Option variants: 0 defaults (opts NULL), 1 L2 norm of q and k, 2 beta
 * sigmoid with an explicit scale, 3 the Qwen3-Next gate, 4 all of them. */
enum { RF_NUM_VARIANTS = 5 };
extern const char *const rf_variant_names[RF_NUM_VARIANTS];

/* One case (zero fields: the defaults). */
typedef struct rf_case {
    int64_t Hk, Hv, K, V;
    gdn_state_layout layout;
    gdn_head_map map;
    gdn_dtype dtype;
    int variant;
    int64_t N;     /* sequences */
    int varlen;    /* 1: cu_seqlens, T_n random in [tmin, tmax] */
    int tmin;      /* shortest sequence with varlen (0 allows empty ones) */
    int64_t T;     /* tokens per sequence without varlen (B = N) */
    int padding;   /* 1: some sequences are padding */
    int identity;  /* 1: state_indices NULL */
    int history;   /* 1: ask for state_history */
    int tmax;      /* longest sequence with varlen; 0 means 8 */
    int misalign;  /* CUDA: device tensors off their 16-byte alignment */
    int no_oracle; /* CUDA: compare with the CPU backend only (the largest cases) */
} rf_case;

/* The sweep's case for one size, layout, head map, dtype and variant:
 * more heads and sequences for the small states, padding, the history
 * when layout == map (half of the cases, both dtypes among them). */
rf_case rf_sweep_case(int64_t K, int64_t V, int layout, int map, int dtype, int variant);

/* Cases the sweep does not cover that both tests run: a decode step, a
 * verification batch, identity indices, empty sequences. */
enum { RF_NUM_SPECIAL = 6 };
extern const rf_case rf_special_cases[RF_NUM_SPECIAL];

/* "N=.. varlen Hk=.. Hv=.. K=.. V=.. layout map dtype variant [flags]". */
void rf_describe(const rf_case *c, char *buf, size_t len);

/* Which test draws the problem. Each keeps the random inputs it has
 * always been run on, so the draws differ a little: the CUDA test also
 * pads with indices past the pool (the CPU backend refuses those, so
 * idx_cpu has -1 there) and draws A_log and dt_bias for every variant
 * (its device copies are made either way); the CPU test gets a working
 * pool (the op updates it in place). */
typedef enum { RF_FOR_CPU_TEST, RF_FOR_CUDA_TEST } rf_drawn_for;

/* One problem on the host: inputs, options, pool and indices. */
typedef struct rf_problem {
    gdn_ref_inputs in; /* q k v g beta; in.h0 gives the initial states */
    int32_t *cu;       /* varlen lengths, else NULL */
    gdn_forward_options opts;            /* host A_log, dt_bias */
    const gdn_forward_options *opts_arg; /* NULL for the defaults variant */
    float *A_log, *dt_bias;              /* [Hv] */
    int64_t P;         /* pool slots */
    size_t elem;       /* pool element bytes */
    int64_t S;         /* elements per state (Hv*V*K) */
    void *pool0;       /* the pool before the call */
    void *pool;        /* CPU test: a copy of pool0 for the op to update; else NULL */
    int32_t *idx;      /* [N] as the op gets it (CUDA: may hold >= P); NULL with identity */
    int32_t *idx_cpu;  /* idx with >= P replaced by -1; NULL with identity */
    int32_t *slot_of;  /* [N]: the slot of each sequence, < 0 for padding */
    float *h0;         /* [N, S]: each sequence's initial state as the pool holds it */
    int64_t tokens;    /* B*T */
} rf_problem;

/* Random inputs for the case (SPEC 5); the option variants get inputs that
 * make the option matter (un-normalised q and k, beta logits, raw gate
 * inputs). 0 after a failed counted check. */
int rf_problem_make(rf_problem *r, const rf_case *c, uint64_t seed, rf_drawn_for who);
void rf_problem_free(rf_problem *r);

/* Element i of a pool or history of elem-byte elements (4 f32, 2 bf16). */
double rf_pool_elem(size_t elem, const void *base, int64_t i);

/* bf16 ulp of x: the spacing of bf16 values at |x| (8 significant bits),
 * from the exponent bits of (float)x; 0 for 0. */
double rf_ulp_bf16(double x);

/* Error measures of one kind of tensor, accumulated element by element:
 * the relative Frobenius error ||x - ref|| / ||ref|| (+INFINITY if any x
 * is not finite) and the f32 error left after one allowed bf16 rounding,
 * in units of the reference's rms:
 *   excess = max_i (|x_i - ref_i| - ulp(max(|x_i|, |ref_i|)) / 2)_+ / rms(ref). */
typedef struct rf_errs {
    double ss_diff, ss_ref, worst;
    int64_t n;
    int nonfinite;
} rf_errs;
void rf_errs_add(rf_errs *er, double x, double ref);
double rf_errs_rel(const rf_errs *er);
double rf_errs_excess(const rf_errs *er);

/* The final state of every sequence after its first L tokens (all of them
 * if it has fewer), from the oracle: the sequences cut to their prefixes
 * and packed. out [N, S]. */
void rf_oracle_prefix_states(const rf_problem *r, int64_t L, double *out);

/* The worst errors against the oracle over all cases, for the summary. */
typedef struct rf_worst {
    double o_rel, o_excess, f32, bf16_excess, bf16_rel;
} rf_worst;

/* One case's errors against the oracle: rel and excess of o, of the
 * written-back states and of the history (0 without one). */
typedef struct rf_oracle_errs {
    double o_rel, o_excess, state_rel, state_excess, hist_rel, hist_excess;
} rf_oracle_errs;

/* The op's o, written-back pool and history (hist NULL: none) against the
 * oracle run from r->h0, checked against the bounds (o: rel and excess;
 * states and history: rel for an f32 pool, excess for bf16); padding
 * sequences are left out. Updates *worst; the errors go to *e. */
void rf_check_vs_oracle(const rf_problem *r, const rf_case *c, const char *name,
                        const gdn_bf16 *o, const void *pool, const void *hist, rf_worst *worst,
                        rf_oracle_errs *e);

/* Checks that the op left alone what it must: o rows of padding sequences
 * zero, and pool slots that no non-empty, non-padding sequence names
 * bitwise as in r->pool0. */
void rf_check_untouched(const rf_problem *r, const char *name, const gdn_bf16 *o,
                        const void *pool);

/* 1 when the history rows of padding sequences still hold the poison
 * (0xFF) they were given; 1 when hist is NULL. A verdict, not a check:
 * the CPU test checks it only for cases with a history, the CUDA test for
 * every case. */
int rf_padding_history_untouched(const rf_problem *r, const void *hist);

/* Checks that two runs of the case gave the same bits in o, the pool and
 * the history (hist NULL: none). */
void rf_check_same_bits(const rf_problem *r, const char *name, const gdn_bf16 *o,
                        const gdn_bf16 *o2, const void *pool, const void *pool2, const void *hist,
                        const void *hist2);

/* NaN containment: a NaN into v of sequence 1's first token, head hn;
 * then, o_nan and pool_nan from the same call as o and pool but with that
 * NaN, checks that it reached that (sequence, head)'s o rows and that
 * every other o row and (slot, head) state is bitwise unchanged. */
void rf_put_nan_in_v(rf_problem *r, int64_t hn);
void rf_check_nan_contained(const rf_problem *r, int64_t hn, const gdn_bf16 *o,
                            const gdn_bf16 *o_nan, const void *pool, const void *pool_nan);

#endif

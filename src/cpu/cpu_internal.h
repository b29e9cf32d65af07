/* What the CPU operations share (implemented in chunk_state_cpu.c): the
 * row-axpy product every stage is built from, the inter-chunk state
 * recurrence of one (sequence, value head) task (SPEC section 3 step 4),
 * which gdn_chunk_state and gdn_chunk_forward both run, and the driver
 * that runs an operation's tasks on the context's threads. */
#ifndef GDN_CPU_INTERNAL_H
#define GDN_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gdn_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[r][:] = sum_{s = 0..ns-1, in order} coef[r*crs + s*ccs] * src[s][:]
 * for r < nr; src and out rows are n floats, contiguous; every f32 sum
 * starts at 0 and runs over s in order (vectorised across the row, never
 * reassociated), so the result does not depend on the blocking. */
void gdn_cpu_rows_axpy(float *out, int64_t nr, const float *coef, int64_t crs, int64_t ccs,
                       const float *src, int64_t ns, int64_t n);

/* The state recurrence of one task. The state is kept transposed, [K][V]
 * (V innermost), so that both products are row axpys over V. */
typedef struct gdn_cpu_recurrence {
    int64_t K, V;
    float *h;   /* [K][V]  the f32 state */
    float *hb;  /* [K][V]  after a step: bf16(h) at the chunk's start (as f32) */
    float *upd; /* [K][V]  scratch */
    float *vn;  /* [BT][V] after a step: the chunk's v_new rounded to bf16 (as f32) */
    float *vg;  /* [BT][V] scratch: bf16(v_gated) */
} gdn_cpu_recurrence;

/* Floats of scratch one recurrence needs, and the recurrence laid out in
 * that many floats at base. */
size_t gdn_cpu_recurrence_floats(int64_t K, int64_t V);
gdn_cpu_recurrence gdn_cpu_recurrence_at(float *base, int64_t K, int64_t V);

/* h = h0 (one [V,K] matrix, or [K,V] with kv), or 0 when h0 is NULL. */
void gdn_cpu_recurrence_load(gdn_cpu_recurrence *r, const float *h0, int kv);
/* dst (one [V,K] matrix, or [K,V] with kv) = the f32 state h. */
void gdn_cpu_recurrence_store(const gdn_cpu_recurrence *r, float *dst, int kv);

/* One chunk of L <= GDN_CHUNK tokens (SPEC 3 step 4, the seed's rounding):
 *   hb      = bf16(h)
 *   v_new_t = u_t - w_t hb^T           f32, summed over K in order
 *   vn_t    = bf16(v_new_t)
 *   vg_t    = bf16(v_new_t * exp(G_last - G_t))   (from the f32 v_new)
 *   h       = exp(G_last) h + sum_t k_t vg_t^T    (summed over t in order)
 * kc, wc: [L][K], uc: [L][V], the bf16 values as f32; G: [L] the
 * chunk-local cumulative gate. On return hb and vn hold the chunk-start
 * state and v_new for the caller's outputs. */
void gdn_cpu_recurrence_chunk(gdn_cpu_recurrence *r, int64_t L, const float *kc,
                              const float *wc, const float *uc, const float *G);

/* Threads for tasks independent tasks on ctx (1 without OpenMP). */
int gdn_cpu_threads(const gdn_context *ctx, int64_t tasks);

/* One (sequence n, value head h) task of an operation: args are the
 * operation's arguments, cfirst the index of sequence n's first chunk in
 * the packed chunk axis (0 unless the driver was asked for chunk offsets),
 * scratch the running thread's own floats. */
typedef void (*gdn_cpu_task)(const void *args, int64_t n, int64_t h, int64_t cfirst,
                             float *scratch);

/* Runs task for every n < N and h < p->Hv, tasks in parallel on ctx's
 * threads (handed out one at a time), each thread with thread_floats
 * floats of scratch; with chunk_offsets, cfirst is computed per sequence.
 * Tasks must be independent, so that the result does not depend on the
 * thread count. Allocation failures are reported under op's name. */
gdn_status gdn_cpu_run_tasks(gdn_context *ctx, const char *op, const gdn_problem *p, int64_t N,
                             int chunk_offsets, size_t thread_floats, gdn_cpu_task task,
                             const void *args);

#ifdef __cplusplus
}
#endif
#endif

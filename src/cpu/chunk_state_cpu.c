/* gdn_chunk_state on the CPU: the inter-chunk state recurrence of SPEC
 * section 3 step 4, f32 state and f32 accumulation, bf16 rounding exactly
 * where FLA and the seed round:
 *
 *   h_out[c] = bf16(h)
 *   v_new_t  = u_t - w_t . bf16(h)^T         f32 accumulate (stored bf16)
 *   v_gated  = v_new_t * exp(G_last - G_t)   from the unrounded f32 v_new
 *   h        = exp(G_last) h + sum_t bf16(v_gated_t) k_t^T
 *
 * The recurrence of one (sequence, value head) task lives here as
 * gdn_cpu_recurrence_* (cpu_internal.h); gdn_chunk_forward's CPU backend
 * runs the same routine on the w, u it computes. So does the driver that
 * runs every CPU operation's tasks (gdn_cpu_run_tasks).
 *
 * One task per (sequence, value head), independent of each other, so the
 * result does not depend on the thread count or on the other sequences of
 * a batch. Inside a task the state is kept transposed, [K][V] (V innermost),
 * so that both products are axpy loops over V that the compiler vectorises
 * without reassociating any sum: every f32 sum is accumulated in a fixed
 * order (over i for v_new, over t for the update). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bf16.h"
#include "cpu_internal.h"

#define BT GDN_CHUNK

/* Four output rows share each src row load (the products are otherwise
 * bound by reading src); the per-element summation order is the plain
 * one, so the blocking does not change a bit. */
void gdn_cpu_rows_axpy(float *out, int64_t nr, const float *coef, int64_t crs, int64_t ccs,
                       const float *src, int64_t ns, int64_t n) {
    int64_t r = 0;
    for (; r + 4 <= nr; r += 4) {
        float *restrict o0 = out + r * n, *restrict o1 = o0 + n;
        float *restrict o2 = o1 + n, *restrict o3 = o2 + n;
        for (int64_t j = 0; j < n; j++) o0[j] = o1[j] = o2[j] = o3[j] = 0.0f;
        for (int64_t s = 0; s < ns; s++) {
            const float *c = coef + r * crs + s * ccs;
            const float c0 = c[0], c1 = c[crs], c2 = c[2 * crs], c3 = c[3 * crs];
            const float *restrict x = src + s * n;
            for (int64_t j = 0; j < n; j++) {
                o0[j] += c0 * x[j];
                o1[j] += c1 * x[j];
                o2[j] += c2 * x[j];
                o3[j] += c3 * x[j];
            }
        }
    }
    for (; r < nr; r++) {
        float *restrict o0 = out + r * n;
        for (int64_t j = 0; j < n; j++) o0[j] = 0.0f;
        for (int64_t s = 0; s < ns; s++) {
            const float c0 = coef[r * crs + s * ccs];
            const float *restrict x = src + s * n;
            for (int64_t j = 0; j < n; j++) o0[j] += c0 * x[j];
        }
    }
}

size_t gdn_cpu_recurrence_floats(int64_t K, int64_t V) {
    return (size_t)(3 * K * V + 2 * BT * V);
}

gdn_cpu_recurrence gdn_cpu_recurrence_at(float *base, int64_t K, int64_t V) {
    gdn_cpu_recurrence r;
    r.K = K;
    r.V = V;
    r.h = base;
    r.hb = r.h + K * V;
    r.upd = r.hb + K * V;
    r.vn = r.upd + K * V;
    r.vg = r.vn + BT * V;
    return r;
}

void gdn_cpu_recurrence_load(gdn_cpu_recurrence *r, const float *h0, int kv) {
    const int64_t K = r->K, V = r->V;
    float *restrict hs = r->h;
    if (!h0)
        for (int64_t x = 0; x < K * V; x++) hs[x] = 0.0f;
    else if (kv)
        for (int64_t x = 0; x < K * V; x++) hs[x] = h0[x];
    else
        for (int64_t j = 0; j < V; j++)
            for (int64_t i = 0; i < K; i++) hs[i * V + j] = h0[j * K + i];
}

void gdn_cpu_recurrence_store(const gdn_cpu_recurrence *r, float *dst, int kv) {
    const int64_t K = r->K, V = r->V;
    const float *restrict hs = r->h;
    if (kv)
        for (int64_t x = 0; x < K * V; x++) dst[x] = hs[x];
    else
        for (int64_t j = 0; j < V; j++)
            for (int64_t i = 0; i < K; i++) dst[j * K + i] = hs[i * V + j];
}

void gdn_cpu_recurrence_chunk(gdn_cpu_recurrence *r, int64_t L, const float *kc,
                              const float *wc, const float *uc, const float *G) {
    const int64_t K = r->K, V = r->V;
    float *restrict hs = r->h, *restrict hb = r->hb, *restrict upd = r->upd;
    float *restrict vn = r->vn, *restrict vg = r->vg;

    for (int64_t x = 0; x < K * V; x++) hb[x] = gdn_round_bf16(hs[x]);

    /* v_new_t = u_t - sum_i w_t[i] bf16(h)[i][:], the sum in f32 from 0;
     * v_gated_t = bf16(v_new_t * exp(G_last - G_t)) from the f32 v_new. */
    gdn_cpu_rows_axpy(vn, L, wc, K, 1, hb, K, V);
    const float Glast = G[L - 1];
    for (int64_t t = 0; t < L; t++) {
        const float gate = expf(Glast - G[t]);
        float *restrict acc = vn + t * V, *restrict gt = vg + t * V;
        const float *restrict ut = uc + t * V;
        for (int64_t j = 0; j < V; j++) {
            const float d = ut[j] - acc[j];
            gt[j] = gdn_round_bf16(d * gate);
            acc[j] = gdn_round_bf16(d);
        }
    }

    /* upd[i][:] = sum_t k_t[i] v_gated_t[:] (f32, over t in order),
     * then h = exp(G_last) h + upd. */
    gdn_cpu_rows_axpy(upd, K, kc, 1, K, vg, L, V);
    const float decay = expf(Glast);
    for (int64_t x = 0; x < K * V; x++) hs[x] = decay * hs[x] + upd[x];
}

int gdn_cpu_threads(const gdn_context *ctx, int64_t tasks) {
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = ctx->num_threads > 0 ? ctx->num_threads : omp_get_max_threads();
    if (nthreads < 1) nthreads = 1;
    if ((int64_t)nthreads > tasks) nthreads = (int)tasks;
#else
    (void)ctx;
    (void)tasks;
#endif
    return nthreads;
}

gdn_status gdn_cpu_run_tasks(gdn_context *ctx, const char *op, const gdn_problem *p, int64_t N,
                             int chunk_offsets, size_t thread_floats, gdn_cpu_task task,
                             const void *args) {
    const int64_t Hv = p->Hv, tasks = N * Hv;
    if (tasks <= 0) return GDN_SUCCESS;

    /* First chunk of every sequence, so that tasks need no prefix sum. */
    int64_t *cfirst = NULL;
    if (chunk_offsets) {
        cfirst = (int64_t *)malloc((size_t)N * sizeof(int64_t));
        if (!cfirst)
            return gdn_fail(ctx, GDN_ERROR_OUT_OF_MEMORY,
                            "%s: cannot allocate %lld bytes of chunk offsets", op,
                            (long long)(N * (int64_t)sizeof(int64_t)));
        int64_t cacc = 0;
        for (int64_t n = 0; n < N; n++) {
            int64_t bos, eos;
            gdn_seq_bounds(p, n, &bos, &eos);
            cfirst[n] = cacc;
            cacc += gdn_ceil_div(eos - bos, BT);
        }
    }

    const int nthreads = gdn_cpu_threads(ctx, tasks);
    float *pool = (float *)malloc(thread_floats * (size_t)nthreads * sizeof(float));
    if (!pool) {
        free(cfirst);
        return gdn_fail(ctx, GDN_ERROR_OUT_OF_MEMORY,
                        "%s: cannot allocate %zu bytes of scratch for %d threads", op,
                        thread_floats * (size_t)nthreads * sizeof(float), nthreads);
    }

#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *own = pool + thread_floats * (size_t)tid;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t t = 0; t < tasks; t++) {
            const int64_t n = t / Hv;
            task(args, n, t % Hv, cfirst ? cfirst[n] : 0, own);
        }
    }
    free(pool);
    free(cfirst);
    return GDN_SUCCESS;
}

/* Per-thread scratch: the recurrence, and the chunk's rows of k, w (each
 * [BT][K]) and u ([BT][V]) as f32, and its gates [BT]. */
typedef struct scratch {
    gdn_cpu_recurrence rec;
    float *kc, *wc, *uc, *G;
} scratch;

static size_t scratch_floats(int64_t K, int64_t V) {
    return gdn_cpu_recurrence_floats(K, V) + (size_t)(2 * BT * K + BT * V + BT);
}

static scratch scratch_at(float *base, int64_t K, int64_t V) {
    scratch s;
    s.rec = gdn_cpu_recurrence_at(base, K, V);
    s.kc = base + gdn_cpu_recurrence_floats(K, V);
    s.wc = s.kc + BT * K;
    s.uc = s.wc + BT * K;
    s.G = s.uc + BT * V;
    return s;
}

static void run_task(const void *args, int64_t n, int64_t h, int64_t cfirst, float *base) {
    const gdn_chunk_state_args *a = (const gdn_chunk_state_args *)args;
    const gdn_problem *p = a->p;
    const int64_t Hk = p->Hk, Hv = p->Hv, K = p->K, V = p->V;
    const int kv = p->state_layout == GDN_STATE_KV;
    const int64_t hk = gdn_key_head(p, h);
    const int64_t soff = (n * Hv + h) * V * K;
    scratch s = scratch_at(base, K, V);
    gdn_cpu_recurrence *rec = &s.rec;
    float *restrict kc = s.kc, *restrict wc = s.wc, *restrict uc = s.uc, *restrict G = s.G;

    gdn_cpu_recurrence_load(rec, a->h0 ? a->h0 + soff : NULL, kv);

    int64_t bos, eos;
    gdn_seq_bounds(p, n, &bos, &eos);
    int64_t c = cfirst;
    for (int64_t c0 = bos; c0 < eos; c0 += BT, c++) {
        const int64_t L = c0 + BT < eos ? BT : eos - c0;

        /* The chunk's rows of k, w, u as f32, and its gates. */
        for (int64_t t = 0; t < L; t++) {
            const gdn_bf16 *kt = a->k + ((c0 + t) * Hk + hk) * K;
            const gdn_bf16 *wt = a->w + ((c0 + t) * Hv + h) * K;
            const gdn_bf16 *ut = a->u + ((c0 + t) * Hv + h) * V;
            for (int64_t i = 0; i < K; i++) {
                kc[t * K + i] = gdn_bf16_to_f32(kt[i]);
                wc[t * K + i] = gdn_bf16_to_f32(wt[i]);
            }
            for (int64_t j = 0; j < V; j++) uc[t * V + j] = gdn_bf16_to_f32(ut[j]);
            G[t] = a->g[(c0 + t) * Hv + h];
        }

        gdn_cpu_recurrence_chunk(rec, L, kc, wc, uc, G);

        /* h_out[c] = bf16(h) at the chunk start; v_new (exact: vn holds
         * bf16 values). */
        const float *restrict hb = rec->hb;
        gdn_bf16 *ho = a->h_out + (c * Hv + h) * V * K;
        if (kv)
            for (int64_t x = 0; x < K * V; x++) ho[x] = gdn_f32_to_bf16(hb[x]);
        else
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) ho[j * K + i] = gdn_f32_to_bf16(hb[i * V + j]);
        if (a->v_new)
            for (int64_t t = 0; t < L; t++) {
                gdn_bf16 *vt = a->v_new + ((c0 + t) * Hv + h) * V;
                for (int64_t j = 0; j < V; j++) vt[j] = gdn_f32_to_bf16(rec->vn[t * V + j]);
            }
    }

    if (a->final_state) gdn_cpu_recurrence_store(rec, a->final_state + soff, kv);
}

gdn_status gdn_cpu_chunk_state(gdn_context *ctx, const gdn_chunk_state_args *a) {
    const gdn_problem *p = a->p;
    return gdn_cpu_run_tasks(ctx, "gdn_chunk_state", p, a->N, 1, scratch_floats(p->K, p->V),
                             run_task, a);
}

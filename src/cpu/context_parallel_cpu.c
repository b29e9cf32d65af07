/* gdn_state_advance on the CPU: out = in . transition + partial per state. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_internal.h"

/* out[r][:] = init[r][:] + sum_{s < ns, in order} coef[r*crs + s*ccs] * src[s][:]
 * for r < nr, rows of n floats (f32; coef and src are not read when ns is 0). */
static void rows_affine(float *restrict out, int64_t nr, const float *init, const float *coef,
                        int64_t crs, int64_t ccs, const float *src, int64_t ns, int64_t n) {
    for (int64_t r = 0; r < nr; r++) {
        float *restrict o = out + r * n;
        memcpy(o, init + r * n, (size_t)n * sizeof(float));
        for (int64_t s = 0; s < ns; s++) {
            const float c = coef[r * crs + s * ccs];
            const float *restrict x = src + s * n;
            for (int64_t j = 0; j < n; j++) o[j] += c * x[j];
        }
    }
}

/* out = in . T + part for one [V, K] state (kv: the [K, V] transposes,
 * out^T = T^T in^T + part^T), f32 summed over j in order, into tmp first
 * so that out may alias in. in NULL means 0. */
static void advance_one(const float *in, const float *T, const float *part, float *out,
                        float *tmp, int64_t K, int64_t V, int kv) {
    const int64_t terms = in ? K : 0;
    if (!kv)
        rows_affine(tmp, V, part, in, K, 1, T, terms, K); /* row r: part_r + sum_j in[r][j] T[j] */
    else
        rows_affine(tmp, K, part, T, 1, K, in, terms, V); /* row c: part_c + sum_j T[j][c] in[j] */
    memcpy(out, tmp, (size_t)(K * V) * sizeof(float));
}

gdn_status gdn_cpu_state_advance(gdn_context *ctx, const gdn_problem *p, const float *state_in,
                                 const float *transition, const float *partial, float *state_out) {
    const int64_t K = p->K, V = p->V, states = gdn_problem_num_seqs(p) * p->Hv;
    const int kv = p->state_layout == GDN_STATE_KV;
    const int nthreads = gdn_cpu_threads(ctx, states);
    float *tmp = (float *)malloc((size_t)nthreads * (size_t)(K * V) * sizeof(float));
    if (!tmp)
        return gdn_fail(ctx, GDN_ERROR_OUT_OF_MEMORY,
                        "gdn_state_advance: cannot allocate %d scratch states", nthreads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static)
#endif
    for (int64_t i = 0; i < states; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        advance_one(state_in ? state_in + i * K * V : NULL, transition + i * K * K,
                    partial + i * K * V, state_out + i * K * V, tmp + (size_t)tid * (size_t)(K * V),
                    K, V, kv);
    }
    free(tmp);
    return GDN_SUCCESS;
}

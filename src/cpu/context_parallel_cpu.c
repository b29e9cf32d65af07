/* gdn_state_advance on the CPU: out = in . transition + partial per state. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_internal.h"

/* out = in . T + part for one [V, K] state (kv: the [K, V] transposes,
 * out^T = T^T in^T + part^T), f32 summed over j in order, into tmp first
 * so that out may alias in. */
static void advance_one(const float *in, const float *T, const float *part, float *out,
                        float *tmp, int64_t K, int64_t V, int kv) {
    if (!kv) {
        for (int64_t r = 0; r < V; r++) {
            float *restrict o = tmp + r * K;
            memcpy(o, part + r * K, (size_t)K * sizeof(float));
            if (in)
                for (int64_t j = 0; j < K; j++) {
                    const float x = in[r * K + j];
                    const float *restrict t = T + j * K;
                    for (int64_t c = 0; c < K; c++) o[c] += x * t[c];
                }
        }
    } else {
        for (int64_t c = 0; c < K; c++) {
            float *restrict o = tmp + c * V;
            memcpy(o, part + c * V, (size_t)V * sizeof(float));
            if (in)
                for (int64_t j = 0; j < K; j++) {
                    const float t = T[j * K + c];
                    const float *restrict x = in + j * V;
                    for (int64_t r = 0; r < V; r++) o[r] += t * x[r];
                }
        }
    }
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

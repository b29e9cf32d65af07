/* Private helpers of the reference (src/ref): index arithmetic, state
 * copies and allocation shared by ref_recurrent.c, ref_chunked.c and
 * ref_random.c. All offsets int64. */
#ifndef GDN_REF_COMMON_H
#define GDN_REF_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gdn_internal.h"

/* Number of sequences (num_seqs with cu_seqlens, else B). */
static inline int64_t ref_num_seqs(const gdn_problem *p) {
    return p->cu_seqlens ? p->num_seqs : p->B;
}

/* Index of sequence n's first chunk in the packed chunk axis of h_out:
 * the chunks of all earlier sequences come first. */
static inline int64_t ref_first_chunk(const gdn_problem *p, int64_t n) {
    if (!p->cu_seqlens) return n * gdn_ceil_div(p->T, GDN_CHUNK);
    int64_t c = 0;
    for (int64_t m = 0; m < n; m++)
        c += gdn_ceil_div((int64_t)p->cu_seqlens[m + 1] - p->cu_seqlens[m], GDN_CHUNK);
    return c;
}

/* Total chunks over all sequences. */
static inline int64_t ref_num_chunks(const gdn_problem *p) {
    return ref_first_chunk(p, ref_num_seqs(p));
}

/* Offset of element (v, k) inside one [V, K] / [K, V] state matrix. */
static inline int64_t ref_state_off(const gdn_problem *p, int64_t v, int64_t k) {
    return p->state_layout == GDN_STATE_KV ? k * p->V + v : v * p->K + k;
}

/* S [V][K] (fp64) = one state matrix src in p->state_layout, or 0 when src
 * is NULL. */
static inline void ref_state_load(const gdn_problem *p, double *S, const float *src) {
    const int64_t K = p->K, V = p->V;
    for (int64_t j = 0; j < V; j++)
        for (int64_t i = 0; i < K; i++)
            S[j * K + i] = src ? (double)src[ref_state_off(p, j, i)] : 0.0;
}

/* The inverse: one state matrix dst in p->state_layout = S [V][K]. */
static inline void ref_state_store(const gdn_problem *p, double *dst, const double *S) {
    const int64_t K = p->K, V = p->V;
    for (int64_t j = 0; j < V; j++)
        for (int64_t i = 0; i < K; i++) dst[ref_state_off(p, j, i)] = S[j * K + i];
}

/* malloc, or abort with a message naming who. */
static inline void *ref_alloc(size_t bytes, const char *who) {
    void *ptr = malloc(bytes ? bytes : 1);
    if (!ptr) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", who, bytes);
        abort();
    }
    return ptr;
}

#endif

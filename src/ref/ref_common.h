/* Private helpers of the reference (src/ref): index arithmetic shared by
 * ref_recurrent.c, ref_chunked.c and ref_random.c. All offsets int64. */
#ifndef GDN_REF_COMMON_H
#define GDN_REF_COMMON_H

#include <stdint.h>

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

#endif

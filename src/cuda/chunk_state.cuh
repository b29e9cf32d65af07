/* The inter-chunk state recurrence (chunk_state.cu) as the CUDA
 * operations call it: gdn_chunk_state, the forward's stage 2, and the
 * whole-sequence summary of gdn_chunk_forward_summary. */
#ifndef GDN_CUDA_CHUNK_STATE_CUH
#define GDN_CUDA_CHUNK_STATE_CUH

#include "cuda_common.cuh"

namespace gdn {

struct StateArgs {
    const __nv_bfloat16 *k, *w, *u; /* [tokens, Hk, K], [tokens, Hv, K], [tokens, Hv, V] */
    const float *g;                 /* [tokens, Hv] chunk-local cumulative gate */
    const float *kscale;            /* [tokens, Hv] factor on k rows, or NULL (1) */
    const float *h0;                /* [N, Hv, V, K] (problem layout) or NULL */
    __nv_bfloat16 *h_out;           /* [NT, Hv, V, K] bf16, layout hout_kv; NULL with transition */
    int hout_kv;
    __nv_bfloat16 *v_new;           /* [tokens, Hv, V] or NULL */
    float *final_state;             /* [N, Hv, V, K] (problem layout) or NULL; with
                                       transition: the summary's partial */
    float *chunk_states;            /* [NT, Hv, V, K] f32 (problem layout) or NULL */
    float *transition;              /* [N, Hv, K, K]: compute the whole-sequence
                                       summary (from a zero state) instead */
    const int32_t *cu_seqlens;      /* device, or NULL without varlen */
    const int64_t *chunk_offsets;   /* device [N+1] with varlen (launch_chunk_offsets) */
    int64_t N;
    /* Decide the split of long sequences from one sequence's work, not
     * the batch's: the result is then batch invariant. */
    bool per_seq_split;
};

/* Scratch (device bytes) run_chunk_state needs for problem p. */
size_t chunk_state_scratch_bytes(const gdn_context *ctx, const gdn_problem *p, bool per_seq_split);
gdn_status run_chunk_state(gdn_context *ctx, const gdn_problem *p, const StateArgs &a,
                           void *scratch, cudaStream_t stream);

} // namespace gdn

#endif

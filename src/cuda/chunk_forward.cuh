/*
 * The CUDA chunked forward (gdn_chunk_forward): two paths, and what they
 * share. Every stage works on whole 64-token chunks; chunk c is numbered
 * over the packed chunk axis of all sequences (0 .. NT-1), as h_out of
 * gdn_chunk_state.
 *
 * The fused path (K, V multiples of 8 up to 256; chosen in
 * chunk_forward.cu): prep in its
 * T/P form (PrepParams.tmat), then the fused pass (FusedParams,
 * chunk_fused.cu) for the state and the output together. The three-stage
 * path:
 *
 *   1. prep   (chunk_prep.cu)    per (chunk, value head): the options
 *             (beta sigmoid, Qwen3-Next gate, L2-norm scales of q and k),
 *             the chunk-local gate cumsum, A and the triangular solve,
 *             giving w, u (bf16), gcum (f32) and the norm scales.
 *   2. state  (chunk_state.cu)   the inter-chunk recurrence: chunk-start
 *             states h (bf16, V-first) and v_new (bf16).
 *   3. output (chunk_output.cu)  per (chunk, value head, V tile):
 *             o = scale (exp(G) qs (q . h^T) + causal intra-chunk part).
 *
 * L2 normalisation is never applied to stored q or k: the kernels read the
 * raw bf16 inputs and multiply the f32 products by the inverse norms
 * (qscale, kscale), which is exact where rounding a normalised q or k to
 * bf16 would cost about 2e-3 relative in o.
 */
#ifndef GDN_CUDA_CHUNK_FORWARD_CUH
#define GDN_CUDA_CHUNK_FORWARD_CUH

#include <cuda.h>

#include "cuda_common.cuh"

namespace gdn {

/* Where the chunks are. Without varlen every sequence has ceil(T/64)
 * chunks; with varlen chunk_offsets[n] (device, N+1 entries) counts the
 * chunks of the sequences before n (build_chunk_offsets). */
struct ChunkMap {
    const int32_t *cu_seqlens;    /* device [N+1], NULL without varlen */
    const int64_t *chunk_offsets; /* device [N+1], NULL without varlen */
    int64_t T;                    /* tokens per batch row (no varlen) */
    int N;                        /* sequences */
};

/* One chunk: sequence n, its first token bos (flattened token axis), the
 * chunk's first token t0 and its length len (1..64). */
struct ChunkLoc {
    int n;
    int64_t bos, t0;
    int len;
};

__device__ __forceinline__ ChunkLoc locate_chunk(const ChunkMap &m, int64_t c) {
    ChunkLoc l;
    if (!m.cu_seqlens) {
        const int64_t per = (m.T + GDN_CHUNK - 1) / GDN_CHUNK;
        l.n = (int)(c / per);
        l.bos = (int64_t)l.n * m.T;
        l.t0 = l.bos + (c % per) * GDN_CHUNK;
        const int64_t left = l.bos + m.T - l.t0;
        l.len = (int)(left < GDN_CHUNK ? left : GDN_CHUNK);
        return l;
    }
    /* the last n with chunk_offsets[n] <= c (empty sequences own no chunk) */
    int lo = 0, hi = m.N - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (m.chunk_offsets[mid] <= c) lo = mid;
        else hi = mid - 1;
    }
    l.n = lo;
    l.bos = m.cu_seqlens[lo];
    l.t0 = l.bos + (c - m.chunk_offsets[lo]) * GDN_CHUNK;
    const int64_t left = (int64_t)m.cu_seqlens[lo + 1] - l.t0;
    l.len = (int)(left < GDN_CHUNK ? left : GDN_CHUNK);
    return l;
}

/* Sequence n: its tokens [bos, eos) on the flattened token axis and its
 * first chunk's packed index hoff. With varlen hoff comes from
 * chunk_offsets, which a caller that writes nothing per chunk may pass as
 * NULL (hoff 0 then). */
struct SeqSpan {
    int64_t bos, eos, hoff;
};

__device__ __forceinline__ SeqSpan seq_span(const int32_t *cu_seqlens, const int64_t *chunk_offsets,
                                            int64_t T, int n) {
    SeqSpan s;
    if (cu_seqlens) {
        s.bos = cu_seqlens[n];
        s.eos = cu_seqlens[n + 1];
        s.hoff = chunk_offsets ? chunk_offsets[n] : 0;
    } else {
        s.bos = (int64_t)n * T;
        s.eos = s.bos + T;
        s.hoff = (int64_t)n * ((T + GDN_CHUNK - 1) / GDN_CHUNK);
    }
    return s;
}

/* s segments (1..nchunks) of nchunks chunks rounded so that none is empty:
 * ceil(nchunks / ceil(nchunks / s)), each of ceil(nchunks / S) chunks but
 * the last. Rounding twice gives the same count. */
__host__ __device__ inline int whole_segments(int64_t nchunks, int64_t s) {
    if (s > nchunks) s = nchunks;
    if (s < 1) return 1;
    const int64_t per = (nchunks + s - 1) / s;
    return (int)((nchunks + per - 1) / per);
}

/* Segments the fused path cuts one sequence of nchunks chunks into (host
 * and device use it, for B rows and for a varlen batch's sequences alike,
 * with min_seg 16, lower only to test; smax: segments whose 64-row blocks
 * fill the machine): min(smax, nchunks / min_seg, 64), made whole, from
 * 4 min_seg chunks; three from 1.5 min_seg where smax >= 6, so that the
 * final launch's 32-row blocks (twice as many) fit in one wave; else 1.
 * H100, K = V = 128, ms: Hv 8 (smax 8) at 32 chunks, three segments
 * 0.051-0.055 against 0.063 unsplit, at 16 chunks 0.039-0.041 against
 * 0.041-0.043; Hv 16 (smax 4) at 32 chunks, three 0.095-0.100 against
 * 0.064-0.066 unsplit. */
__host__ __device__ inline int fused_seq_segments(int64_t nchunks, int smax, int min_seg) {
    if (smax < 2 || min_seg < 1) return 1;
    if (nchunks < 4 * (int64_t)min_seg)
        return smax >= 6 && nchunks >= 3 * (int64_t)((min_seg + 1) / 2) ? whole_segments(nchunks, 3) : 1;
    int64_t s = nchunks / min_seg;
    if (s > smax) s = smax;
    if (s > 64) s = 64;
    return whole_segments(nchunks, s);
}

/* Element offset of state element (row v of V, column k of K) in a state
 * tensor [V][K], or [K][V] with kv (GDN_STATE_KV). */
__device__ __forceinline__ int64_t state_index(int kv, int V, int K, int v, int k) {
    return kv ? (int64_t)k * V + v : (int64_t)v * K + k;
}

/* Stage 1. Per (chunk, value head h), tokens t < len of the chunk, kh the
 * key head of h (block: h / group; tiled: h % Hk). All math in f32:
 *   qs_t, ks_t  1 / sqrt(sum_i x_i^2 + 1e-6) of q_t, k_t (bf16 inputs as
 *               f32) with l2norm; the arrays are NULL without l2norm
 *   beta_t      beta, or sigmoid(beta) with beta_sigmoid
 *   g_t         g, or -exp(A_log[h]) * softplus(g + dt_bias[h]) with
 *               qwen_gate (softplus linear above 20, as PyTorch)
 *   G_t         sum_{s<=t} g_s (in order)                 -> gcum
 *   A[i][j]     beta_i ks_i ks_j (k_i . k_j) exp(G_i - G_j), j < i
 *   w           (I + A)^-1 (beta_t exp(G_t) ks_t k_t)      -> bf16
 *   u           (I + A)^-1 (beta_t v_t)                    -> bf16
 * Rows t >= len are not written. */
struct PrepParams {
    ChunkMap map;
    int64_t NT;                  /* chunks over all sequences */
    const __nv_bfloat16 *q, *k;  /* [tokens, Hk, K] */
    const __nv_bfloat16 *v;      /* [tokens, Hv, V] */
    const float *g, *beta;       /* [tokens, Hv] */
    const float *A_log, *dt_bias; /* [Hv], qwen_gate only */
    int l2norm, beta_sigmoid, qwen_gate;
    int Hk, Hv, K, V, group, tiled;
    __nv_bfloat16 *w;            /* [tokens, Hv, K] */
    __nv_bfloat16 *u;            /* [tokens, Hv, V] */
    float *gcum;                 /* [tokens, Hv] */
    float *qscale, *kscale;      /* [tokens, Hv], written only with l2norm */
    /* The fused path's form (tmat set): instead of w and u (and without
     * reading v), per (chunk c, head h) two [64][64] bf16 tiles at
     * ((c * Hv + h) * 64 + t) * 64 + s, lower 16x16 blocks only (s / 16
     * <= t / 16; the others are left unwritten: encode_tp_maps),
     * rows t >= len zero:
     *   tmat  T[t][s] = (I + A)^-1[t][s] beta_s for s < t, bf16, and 0 on
     *         the diagonal: the pass adds the diagonal term U'[:, t] beta_t
     *         in f32 (see FusedParams), so only the off-diagonal part, far
     *         smaller, takes bf16's rounding
     *   pmat  P[t][s] = scale qs_t ks_s (q_t . k_s) exp(G_t - G_s), s <= t
     * and, instead of the norms and the cumsum, the fused pass's per-token
     * factors (qs, ks = 1 without l2norm; G_L the cumsum at the chunk's
     * last token), all four arrays required, each [tile][64] by the
     * tiles' index (chunk, value head) and zero past a chunk's end, so
     * that a chunk's factors are one 256-byte row (fwd_layout sizes them):
     *   qscale  scale qs_t exp(G_t)     kscale  ks_t exp(G_t)
     *   gcum    ks_t exp(G_L - G_t)     tbeta   beta_t */
    __nv_bfloat16 *tmat, *pmat;
    float *tbeta;
    float scale;
};
gdn_status launch_chunk_prep(gdn_context *ctx, const PrepParams &P, cudaStream_t stream);

/* Stage 3. Per (chunk, value head h), t < len, v < V:
 *   o_t[v] = bf16(scale * (exp(G_t) qs_t (q_t . h_c[v, :])
 *                          + sum_{s <= t} qs_t ks_s (q_t . k_s) exp(G_t - G_s) vn_s[v]))
 * with qs, ks = 1 when the arrays are NULL, h_c the chunk-start state
 * (bf16, [NT, Hv, V, K]) and vn = v_new (bf16). The causal mask makes
 * the terms s > t exact zeros of the product matrix; inside a tensor-core
 * product they still meet vn_s, so a NaN or Inf at a later token of the
 * same chunk can reach o_t (the CUDA backend propagates non-finite inputs
 * at chunk granularity, as gdn.h says). Rows t >= len are not written. */
struct OutputParams {
    ChunkMap map;
    int64_t NT;
    const __nv_bfloat16 *q, *k;   /* [tokens, Hk, K] raw */
    const float *qscale, *kscale; /* [tokens, Hv] or NULL */
    const float *gcum;            /* [tokens, Hv] */
    const __nv_bfloat16 *h;       /* [NT, Hv, V, K] */
    const __nv_bfloat16 *v_new;   /* [tokens, Hv, V] */
    __nv_bfloat16 *o;             /* [tokens, Hv, V] */
    float scale;
    int Hk, Hv, K, V, group, tiled;
};
gdn_status launch_chunk_output(gdn_context *ctx, const OutputParams &P, cudaStream_t stream);

/* The fused pass (chunk_fused.cu), after prep's T and P form: per
 * (sequence, value head, tile of 16 NWS rows of V) the state lives in f32
 * registers for the whole sequence; per chunk, with gamma_t = exp(G_t):
 *   U' = V^T - (S k^T) diag(ks gamma)         (S bf16 as the operand)
 *   D^T = U' diag(beta) + U' T^T               (the chunk's new values;
 *         the first term f32, the second on the tensor cores with U' as
 *         bf16 and T prep's strictly lower part of (I + A)^-1 diag(beta))
 *   O^T = (S q^T) diag(scale qs gamma) + D^T P^T  -> o
 *   S   = gamma_L S + D^T diag(ks exp(G_L - G)) k
 * with G_L the gate cumsum at the chunk's last token. Nothing but o and
 * the asked-for states is written. K, V multiples of 8 up to 256 (K > 128:
 * the pair form only, unsplit).
 *
 * Split sequences (few heads, from 24 chunks: fused_seq_segments): a
 * sequence's chunks are cut into `segments` runs of seg_chunks chunks
 * (the last one shorter) and the pass runs twice. The update is affine
 * in the state, so the summary launch (summary = true, segments 0 ..
 * S-2) runs the state part only: segment 0 from h0, its end into
 * h_start[0]; segment s >= 1 over V + K rows, rows < V from zero with the
 * real v (giving b_s) and row V + j from the unit row e_j with v = 0 (row
 * j of P_s), into seg_summary[s-1], so that state_after = state_before
 * P_s + b_s. The combine (chunk_state.cu) chains h_start[s] =
 * h_start[s-1] P_s + b_s, and the final launch runs every segment from
 * its start (h0 or h_start[s-1]) with o, the last one writing
 * final_state.
 *
 * Varlen batches (seg_off set): sequence n has its own S_n =
 * fused_seq_segments(its chunks, smax) (so its bits do not depend on the
 * batch), seg_off[n] counting the segments before it; h_start and
 * seg_summary then go by sequence: the entry of segment s >= 1 of sequence
 * n is (seg_off[n] - n + s - 1) * Hv + h (the summary of segment S_n - 1
 * unused). A launch's blocks cover the batch's segments in order (the
 * summary: S_n - 1 of each sequence). */
struct FusedParams {
    ChunkMap map;
    const __nv_bfloat16 *q, *k, *v;   /* raw inputs */
    const __nv_bfloat16 *tmat, *pmat; /* prep's tiles */
    const float *wq, *wk, *wd, *wb;   /* [tile][64]: prep's per-token factors (PrepParams) */
    const float *h0;                  /* [N, Hv, V, K] (layout kv) or NULL */
    float *final_state, *chunk_states; /* or NULL */
    __nv_bfloat16 *o;
    int Hk, Hv, K, V, group, tiled, kv;
    int segments;      /* S, segments a sequence (1: no split) */
    int seg_chunks;    /* chunks a segment (the last may have fewer); 0 without split */
    float *h_start;    /* [S-1][N][Hv][V][K] f32: starts of segments 1 .. S-1 */
    float *seg_summary; /* [S-2][N][Hv][V+K][K] f32: b_s, then P_s, of segments 1 .. S-2 */
    const int64_t *seg_off; /* varlen split: [N+1] device, or NULL */
    /* sm_90: o of whole chunks by tensor stores, tmap_o (encode_o_map) set */
    int tma_o;
    CUtensorMap tmap_o;
    /* sm_90: whole chunks' q, k, T and P by tensor copies
     * (encode_tile_map, encode_tp_maps; the wgmma forms' T and P only with
     * tp_tma) */
    int tma_in;
    CUtensorMap tmap_q, tmap_k, tmap_tp[4];
    /* host: launch as prep's programmatic dependent (sm_90). The kernel's
     * producers wait for prep before their first copy in any case (a
     * no-op without the launch attribute); no other warp reads prep's
     * output, so a launch whose compute warps read an earlier kernel's
     * output (the combine's start states) must not set it. */
    int pdl;
    /* the wgmma forms take T and P by tensor copies too (with tma_in;
     * else their lower blocks per lane): run_fused */
    int tp_tma;
    /* sm_90a: the pair form's blocks (K <= 128) by the 32-row wgmma form
     * (chunk_fused.cu, wg32_chunks); set by launch_form where it launches
     * that form (GDN_CUDA_FUSED_WG32=0 | 1) */
    int wg32;
    /* Segment 0 beside the summary (run_fused, where the final launch would
     * not fit one wave): 1, the launch of every sequence's segment 0 alone
     * (one unit a sequence; a split one's end state is segment 1's start,
     * which otherwise the summary's segment-0 blocks write); 2, the summary
     * and final launches without segment 0 (its blocks return at once).
     * Same bits: the state rows are summed as in every form. */
    int seg_first;
    /* the segment-0 launch lets the next launch (the summary) start once
     * its blocks have waited for prep (pdl_trigger), and that summary,
     * launched as its programmatic dependent, does not wait for it: prep
     * is then done (pdl_nowait). sm_90 only. */
    int pdl_trigger, pdl_nowait;
};
bool chunk_fused_supported(const gdn_context *ctx, const gdn_problem *p);
/* o [tokens][Hv][V] bf16 (V % 8 == 0, 16-byte aligned) as a map of boxes
 * of 16 values x 64 tokens of one head, 32-byte swizzled in shared memory
 * (stage_ot writes that layout; chunk_state.cu, beside the state kernel's
 * maps); false where the driver has no encoder. */
bool encode_o_map(CUtensorMap *m, void *o, int64_t tokens, int64_t Hv, int V);
/* a bf16 [tokens][heads][K] tensor as boxes of 64 columns x 64 tokens of
 * one head, 128-byte swizzled, zeros past K and past the last token */
bool encode_tile_map(CUtensorMap *m, const void *base, int64_t tokens, int64_t heads, int K);
/* prep's T and P tiles ([tiles][64][64] bf16 each, the two arrays
 * kind_bytes apart) as four maps, one a 16-row block rb of a tile:
 * box {64 columns, 16 rows, 1 kind} at (0, 64 tile + 16 rb, kind), 128-byte
 * swizzled; the map of block rb holds columns < 16 (rb + 1) only, so a copy
 * writes zeros above the diagonal blocks, whatever prep left there. */
bool encode_tp_maps(CUtensorMap m[4], const void *base, int64_t tiles, int64_t kind_bytes);
/* summary: the split path's first launch (see FusedParams) */
gdn_status launch_chunk_fused(gdn_context *ctx, const FusedParams &P, bool summary, cudaStream_t stream,
                              int64_t varlen_segments = 0);
/* The split path's combine: h_start[s] = h_start[s-1] P_s + b_s for
 * s = 1 .. segments-2 (chunk_state.cu's, shared with the state stage). */
gdn_status launch_segment_combine(gdn_context *ctx, const float *seg_summary, float *h_start, int N,
                                  int Hv, int K, int V, int segments, cudaStream_t stream,
                                  const int64_t *seg_off = nullptr);

/* The context-parallel forward (context_parallel_nccl.cu drives it around
 * the all-gather; chunk_forward.cu): workspace bytes for nranks ranks;
 * phase 1 (prep and this slice's summary, *count floats at *send, to be
 * all-gathered into *recv); phase 2 (fold, state, output). */
size_t cp_workspace_bytes(const gdn_context *ctx, const gdn_problem *p, int nranks);
gdn_status cp_summarise(gdn_context *ctx, const gdn_chunk_forward_args *a, int nranks,
                        float **send, float **recv, size_t *count);
gdn_status cp_finish(gdn_context *ctx, const gdn_chunk_forward_args *a, int nranks, int rank);

/* chunk_offsets[n] = sum_{i<n} ceil(len_i / 64), n = 0..N (one block);
 * with smax > 0 the sum of fused_seq_segments(ceil(len_i / 64), smax,
 * min_seg). */
gdn_status launch_chunk_offsets(gdn_context *ctx, const int32_t *cu_seqlens, int N,
                                int64_t *chunk_offsets, cudaStream_t stream, int smax = 0,
                                int min_seg = 16);

} // namespace gdn

#endif

/*
 * gdn_chunk_forward on CUDA: the paths of chunk_forward.cuh on the
 * context's stream, their intermediates in the caller's workspace.
 *
 * Fused (use_fused):
 *   prep    q, k, g, beta        -> T (strictly lower), P, per-token factors
 *   fused   q, k, v, T, P, ...   -> o, final_state, chunk_states
 * and where a sequence is split into segments (fused_segments), before
 * that pass (which then runs each segment from its start state):
 *   summary k, v, T, ...         -> segment 1's start, each segment's
 *                                   affine summary (P_s, b_s)
 *   combine                      -> every segment's start state
 * (on sm_90, where the final pass would not fit one wave, segment 0's
 * final pass runs beside the summary and gives segment 1's start:
 * seg0_beside).
 * Three stages (otherwise):
 *   prep    q, k, v, g, beta -> w, u, gcum (and the L2-norm scales)
 *   state   w, u, k, gcum    -> h (bf16 chunk-start states), v_new,
 *                               final_state, chunk_states (f32, if asked)
 *   output  q, k, h, v_new   -> o
 *
 * The path, and the split of long sequences in either path (the state
 * stage's per_seq_split, fused_segments), are decided from the shape and
 * one sequence's length, so a sequence gets the same bits alone or in a
 * batch; every other stage works per chunk and head.
 */
#include "chunk_forward.cuh"
#include "chunk_state.cuh"

namespace gdn {
namespace {

/* A segment's 64-row blocks (Hv ceil(V / 64)) */
int64_t seg_tiles64(const gdn_problem *p) { return p->Hv * gdn_ceil_div(p->V, 64); }

/* Segments whose 64-row blocks (seg_tiles64 a segment) fill the
 * multiprocessors: the most a split gives one sequence; one more on sm_90,
 * where segment 0 can run beside the summary (seg0_beside), so that the
 * final launch has one segment fewer. By the device only, not by that
 * choice, so that the bits stay the same either way. */
int split_smax(const gdn_context *ctx, const gdn_problem *p) {
    const int sms = sm_count(ctx);
    return (int)(sms / seg_tiles64(p)) + (ctx->cc_major >= 9 ? 1 : 0);
}

/* Whether a split's segment 0 (of every sequence) runs beside the summary
 * launch instead of in the final one (FusedParams::seg_first): on sm_90
 * (programmatic launches), where the final launch's 64-row blocks over all
 * segments would not fit one wave. GDN_CUDA_FUSED_SEG0=0 | 1 forces it. */
bool seg0_beside(const gdn_context *ctx, const gdn_problem *p, int64_t units) {
    const bool fill = units * seg_tiles64(p) > sm_count(ctx);
    return ctx->cc_major >= 9 && env_override("GDN_CUDA_FUSED_SEG0", fill ? 1 : 0, {0, 1}) == 1;
}

/* Few heads: one sequence's 32-row tiles (Hv ceil(V / 32)) fill less than
 * half of the multiprocessors, so the fused path splits its sequences
 * into segments that run side by side (fused_seq_segments). Many heads
 * fill the machine without: a split only adds the summary's work (H100,
 * q35_t8k as a varlen batch of one, split in two: 0.384 ms against 0.348
 * unsplit). */
bool few_heads(const gdn_context *ctx, const gdn_problem *p) {
    return 2 * p->Hv * gdn_ceil_div(p->V, 32) < sm_count(ctx);
}

/* The split needs a summary form, which exists for K <= 128 only. Above
 * that the fused path runs unsplit, few heads included: still faster
 * than the three kernels there (H100, K = V = 256, ms, fused against
 * three: Hk 2, Hv 8, T 8192 0.289 / 0.459, T 2048 0.086-0.095 / 0.127;
 * Hk 1, Hv 4, T 8192 0.274-0.285 / 0.331-0.337). */
bool fused_can_split(const gdn_problem *p) { return p->K <= 128; }

/* The fused path's split of one sequence of B rows (see FusedParams):
 * with few heads, fused_seq_segments of its chunks, as a varlen batch
 * splits each sequence (varlen_split), so a sequence gets the same bits
 * in either form; 1 = no split. GDN_CUDA_FUSED_SEGMENTS=1..64 forces the
 * count (without varlen). */
int fused_segments(const gdn_context *ctx, const gdn_problem *p) {
    if (p->cu_seqlens || p->T <= 0 || !chunk_fused_supported(ctx, p) || !fused_can_split(p)) return 1;
    const int64_t nchunks = gdn_ceil_div(p->T, GDN_CHUNK);
    const int s = few_heads(ctx, p) ? fused_seq_segments(nchunks, split_smax(ctx, p), 16) : 1;
    return whole_segments(nchunks, env_override("GDN_CUDA_FUSED_SEGMENTS", s, 1, 64));
}

/* A varlen batch's split (FusedParams.seg_off): each sequence by
 * fused_seq_segments, with few heads as fused_segments; segments == N
 * where none splits. GDN_CUDA_FUSED_MIN_SEG=1..16 lowers the chunks a
 * segment must have (to test the split on short sequences). */
struct VarlenSplit {
    int smax, min_seg;
    int64_t segments;
};

VarlenSplit varlen_split(const gdn_context *ctx, const gdn_problem *p) {
    const int64_t N = gdn_problem_num_seqs(p);
    VarlenSplit v{0, 16, N};
    if (!p->cu_seqlens || N <= 0 || !chunk_fused_supported(ctx, p) || !fused_can_split(p)) return v;
    if (!few_heads(ctx, p)) return v;
    v.smax = split_smax(ctx, p);
    v.min_seg = env_override("GDN_CUDA_FUSED_MIN_SEG", 16, 1, 16);
    if (v.smax < 2) return v;
    int64_t total = 0;
    for (int64_t n = 0; n < N; n++) {
        const int64_t len = (int64_t)p->cu_seqlens[n + 1] - p->cu_seqlens[n];
        total += fused_seq_segments(len > 0 ? gdn_ceil_div(len, GDN_CHUNK) : 0, v.smax, v.min_seg);
    }
    v.segments = total;
    return v;
}

/* Bytes of the fused split's buffers: h_start [S-1] then the segment
 * summaries [S-2] (FusedParams); for a varlen split, S - 1 entries of each
 * a sequence (varlen_split's segments - N in all). */
size_t fused_split_bytes(const gdn_problem *p, int S, size_t *summary_at, int64_t varlen_segments = 0) {
    const size_t N = (size_t)gdn_problem_num_seqs(p), VK = (size_t)(p->V * p->K);
    size_t starts = 0, sums = 0; /* entries of Hv states */
    if (varlen_segments > (int64_t)N) {
        starts = sums = (size_t)varlen_segments - N;
    } else if (S >= 2) {
        starts = (size_t)(S - 1) * N;
        sums = (size_t)(S - 2) * N;
    }
    *summary_at = align256(starts * (size_t)p->Hv * VK * sizeof(float));
    return *summary_at + align256(sums * (size_t)p->Hv * (VK + (size_t)(p->K * p->K)) * sizeof(float));
}

/* Byte offsets of the intermediates in the workspace, and the fused
 * path's split they were sized for (decided once a call). */
struct FwdLayout {
    size_t offsets, cu, w, u, tmat, pmat, gcum, qscale, kscale, tbeta, v_new, h, scratch, total;
    size_t seg_summary; /* the split's segment summaries (h_start at scratch) */
    size_t seg_off;     /* the varlen split's [N+1] segment offsets (if it splits) */
    int segments;       /* fused_segments */
    VarlenSplit vs;
};

FwdLayout fwd_layout(const gdn_context *ctx, const gdn_problem *p, bool summary) {
    const size_t tokens = (size_t)(p->B * p->T), Hv = (size_t)p->Hv;
    const size_t K = (size_t)p->K, V = (size_t)p->V;
    const size_t N = (size_t)gdn_problem_num_seqs(p);
    const size_t NT = (size_t)gdn_problem_num_chunks(p);
    FwdLayout l{};
    size_t at = 0;
    auto take = [&](size_t bytes) {
        const size_t here = at;
        at += align256(bytes);
        return here;
    };
    const bool varlen = p->cu_seqlens != nullptr;
    l.offsets = take(varlen ? (N + 1) * sizeof(int64_t) : 0);
    l.cu = take(varlen && !p->cu_seqlens_device ? (N + 1) * sizeof(int32_t) : 0);
    /* w and u, or the fused path's T and P tiles in the same bytes */
    const size_t wb = align256(tokens * Hv * K * 2), ub = align256(tokens * Hv * V * 2);
    const size_t tpb = align256(NT * Hv * GDN_CHUNK * GDN_CHUNK * 2);
    l.w = take(wb + ub > 2 * tpb ? wb + ub : 2 * tpb);
    l.u = l.w + wb;
    l.tmat = l.w; /* the two one tile array apart: one tensor map spans them (encode_tp_maps) */
    l.pmat = l.w + tpb;
    /* [tokens, Hv], or the fused path's factors as [NT Hv][64] (PrepParams) */
    const size_t fac = (tokens > NT * GDN_CHUNK ? tokens : NT * GDN_CHUNK) * Hv * sizeof(float);
    l.gcum = take(fac);
    l.qscale = take(summary ? 0 : fac);
    l.kscale = take(fac);
    l.tbeta = take(fac); /* the fused path's beta row (PrepParams::tbeta) */
    l.v_new = take(summary ? 0 : tokens * Hv * V * 2);
    l.h = take(summary ? 0 : NT * Hv * V * K * 2);
    l.segments = summary ? 1 : fused_segments(ctx, p);
    l.vs = summary ? VarlenSplit{0, 16, (int64_t)N} : varlen_split(ctx, p);
    size_t sum_at;
    const size_t scratch = chunk_state_scratch_bytes(ctx, p, true);
    const size_t fused = fused_split_bytes(p, l.segments, &sum_at, l.vs.segments);
    l.scratch = take(summary ? 0 : scratch > fused ? scratch : fused);
    l.seg_summary = l.scratch + sum_at;
    l.seg_off = take(l.vs.segments > (int64_t)N ? (N + 1) * sizeof(int64_t) : 0);
    l.total = at;
    return l;
}

/* The device cu_seqlens and chunk offsets of a varlen problem. */
gdn_status chunk_map(gdn_context *ctx, const gdn_problem *p, const FwdLayout &l, uint8_t *ws,
                     cudaStream_t stream, ChunkMap *m) {
    const int64_t N = gdn_problem_num_seqs(p);
    m->T = p->T;
    m->N = (int)N;
    m->cu_seqlens = nullptr;
    m->chunk_offsets = nullptr;
    if (!p->cu_seqlens) return GDN_SUCCESS;
    const int32_t *cu = p->cu_seqlens_device;
    if (!cu) {
        int32_t *copy = reinterpret_cast<int32_t *>(ws + l.cu);
        GDN_CUDA_TRY(ctx, cudaMemcpyAsync(copy, p->cu_seqlens, (size_t)(N + 1) * sizeof(int32_t),
                                          cudaMemcpyHostToDevice, stream));
        cu = copy;
    }
    int64_t *off = reinterpret_cast<int64_t *>(ws + l.offsets);
    gdn_status st = launch_chunk_offsets(ctx, cu, (int)N, off, stream);
    if (st != GDN_SUCCESS) return st;
    m->cu_seqlens = cu;
    m->chunk_offsets = off;
    return GDN_SUCCESS;
}

gdn_status check_sizes(gdn_context *ctx, const char *op, const gdn_chunk_forward_args *a) {
    if (a->N > INT32_MAX || a->p->Hv > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "%s: the number of sequences (%lld) and Hv (%lld) must each fit in int32",
                        op, (long long)a->N, (long long)a->p->Hv);
    return GDN_SUCCESS;
}

/* Stage 1 for either operation: tp, the fused path's T/P form (else w
 * and u for the three stages). */
gdn_status run_prep(gdn_context *ctx, const gdn_chunk_forward_args *a, const ChunkMap &m,
                    const FwdLayout &l, uint8_t *ws, cudaStream_t stream, bool tp) {
    const gdn_problem *p = a->p;
    PrepParams P{};
    P.map = m;
    P.NT = a->NT;
    P.q = reinterpret_cast<const __nv_bfloat16 *>(a->q);
    P.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    P.v = reinterpret_cast<const __nv_bfloat16 *>(a->v);
    P.g = a->g;
    P.beta = a->beta;
    P.A_log = a->opts.A_log;
    P.dt_bias = a->opts.dt_bias;
    P.l2norm = a->opts.l2norm_qk;
    P.beta_sigmoid = a->opts.beta_sigmoid;
    P.qwen_gate = a->opts.qwen_gate;
    set_heads(P, p);
    P.w = reinterpret_cast<__nv_bfloat16 *>(ws + l.w);
    P.u = reinterpret_cast<__nv_bfloat16 *>(ws + l.u);
    P.gcum = reinterpret_cast<float *>(ws + l.gcum);
    P.qscale = a->q && a->opts.l2norm_qk ? reinterpret_cast<float *>(ws + l.qscale) : nullptr;
    P.kscale = a->opts.l2norm_qk ? reinterpret_cast<float *>(ws + l.kscale) : nullptr;
    if (tp) { /* the T/P form: the per-token factors in the same arrays */
        P.qscale = reinterpret_cast<float *>(ws + l.qscale);
        P.kscale = reinterpret_cast<float *>(ws + l.kscale);
        P.tmat = reinterpret_cast<__nv_bfloat16 *>(ws + l.tmat);
        P.pmat = reinterpret_cast<__nv_bfloat16 *>(ws + l.pmat);
        P.tbeta = reinterpret_cast<float *>(ws + l.tbeta);
        P.scale = a->opts.scale;
    }
    return launch_chunk_prep(ctx, P, stream);
}

/* What every entry point does first: the int32 size rule, the chunk map,
 * and stage 1 when there are tokens. */
gdn_status map_and_prep(gdn_context *ctx, const char *op, const gdn_chunk_forward_args *a,
                        const FwdLayout &l, uint8_t *ws, cudaStream_t stream, ChunkMap *m,
                        bool tp = false) {
    gdn_status st = check_sizes(ctx, op, a);
    if (st != GDN_SUCCESS) return st;
    if ((st = chunk_map(ctx, a->p, l, ws, stream, m)) != GDN_SUCCESS) return st;
    return a->NT > 0 ? run_prep(ctx, a, *m, l, ws, stream, tp) : GDN_SUCCESS;
}

/* The fused path (prep's T/P form, then one pass for state and output)
 * wherever it applies: K, V multiples of 8 (up to 256; K > 128 unsplit,
 * fused_can_split), 16-byte aligned q, k, v, o; else the three stages.
 * At K = V = 256 it moves no bf16 chunk states through memory, which the
 * three stages write and read (k256_t8k 0.626 ms against 1.056, H100).
 * With few heads it splits a sequence into segments (fused_segments,
 * varlen_split) and prep gives each value head a block of its own.
 * Since those two (session 18) it beats the three stages on every single
 * sequence measured (H100, K = V = 128, ms,
 * fused against three: Hk 2, Hv 8, T 1024 0.040 / 0.049, 2048 0.051 /
 * 0.075, 8192 0.151 / 0.212; Hv 4, T 2048 0.051 / 0.063; Hk 8, Hv 16, T
 * 2048 0.065 / 0.090), and runs within 2% of them on four such sequences
 * of 2048 tokens, which fill the machine unsplit (B rows 0.127 / 0.125,
 * varlen 0.136 / 0.133). The choice looks at the shape only, and the
 * split at one sequence's length, the same way for B rows and varlen
 * batches, so a sequence takes the same path and bits alone or in a
 * batch (batch invariance). GDN_CUDA_FUSED=0 | 1 forces either path (1
 * only where it applies). */
bool use_fused(const gdn_context *ctx, const gdn_chunk_forward_args *a) {
    const gdn_problem *p = a->p;
    const uintptr_t al = (uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v | (uintptr_t)a->o;
    if (!chunk_fused_supported(ctx, p) || al % 16 != 0) return false;
    return env_override("GDN_CUDA_FUSED", 1, {0, 1}) == 1;
}

gdn_status run_fused(gdn_context *ctx, const gdn_chunk_forward_args *a, const ChunkMap &m,
                     const FwdLayout &l, uint8_t *ws, cudaStream_t stream) {
    const gdn_problem *p = a->p;
    FusedParams F{};
    F.map = m;
    F.q = reinterpret_cast<const __nv_bfloat16 *>(a->q);
    F.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    F.v = reinterpret_cast<const __nv_bfloat16 *>(a->v);
    F.tmat = reinterpret_cast<const __nv_bfloat16 *>(ws + l.tmat);
    F.pmat = reinterpret_cast<const __nv_bfloat16 *>(ws + l.pmat);
    F.wq = reinterpret_cast<const float *>(ws + l.qscale);
    F.wk = reinterpret_cast<const float *>(ws + l.kscale);
    F.wd = reinterpret_cast<const float *>(ws + l.gcum);
    F.wb = reinterpret_cast<const float *>(ws + l.tbeta);
    F.h0 = a->h0;
    F.final_state = a->final_state;
    F.chunk_states = a->chunk_states;
    F.o = reinterpret_cast<__nv_bfloat16 *>(a->o);
    F.kv = p->state_layout == GDN_STATE_KV;
    set_heads(F, p);
    /* sm_90: o of whole chunks by tensor stores (GDN_CUDA_FUSED_TMA_O=0 | 1) */
    const int64_t tokens = p->B * p->T;
    F.tma_o = 0;
    if (ctx->cc_major >= 9 && tokens <= INT32_MAX && env_override("GDN_CUDA_FUSED_TMA_O", 1, {0, 1}) == 1)
        F.tma_o = encode_o_map(&F.tmap_o, a->o, tokens, p->Hv, (int)p->V);
    /* sm_90: the fused pass's whole-chunk inputs by tensor copies
     * (GDN_CUDA_FUSED_TMA_IN=0 | 1); prep's tiles: NT Hv of them */
    F.tma_in = 0;
    if (ctx->cc_major >= 9 && tokens <= INT32_MAX && env_override("GDN_CUDA_FUSED_TMA_IN", 1, {0, 1}) == 1) {
        const int64_t tiles = gdn_problem_num_chunks(p) * p->Hv;
        F.tma_in = encode_tile_map(&F.tmap_q, a->q, tokens, p->Hk, (int)p->K) &&
                   encode_tile_map(&F.tmap_k, a->k, tokens, p->Hk, (int)p->K) &&
                   encode_tp_maps(F.tmap_tp, F.tmat, tiles, (int64_t)(l.pmat - l.tmat));
    }
    /* a split (fwd_layout's): the summary launch, the combine, then the
     * final launch; a varlen batch's by the device's segment offsets */
    F.segments = l.segments;
    const bool varlen = l.vs.segments > a->N;
    /* The wgmma forms' T and P by tensor copies as well (a copy a 16-row
     * block: encode_tp_maps), where else they copy the lower blocks per
     * lane: a split sequence (GDN_CUDA_FUSED_TP_TMA=0 | 1 forces it). It
     * pays there and loses where many heads load the pass (H100, ms,
     * against per-lane copies: q397_t8k 0.328 -> 0.358, q35_b4_t8k 0.712 ->
     * 0.751; with whole tiles and prep writing zeros above the diagonal
     * blocks, session 27: tp8_t64k 0.605 -> 0.551). The bits do not change. */
    F.tp_tma = env_override("GDN_CUDA_FUSED_TP_TMA", varlen || F.segments > 1 ? 1 : 0, {0, 1}) == 1;
    /* the first fused launch follows prep directly (a varlen batch has the
     * chunk-offset scan between them): a programmatic dependent launch,
     * sm_90 (GDN_CUDA_FUSED_PDL=0 | 1) */
    F.pdl = ctx->cc_major >= 9 && !varlen && env_override("GDN_CUDA_FUSED_PDL", 1, {0, 1}) == 1;
    if (varlen || F.segments > 1) {
        F.h_start = reinterpret_cast<float *>(ws + l.scratch);
        F.seg_summary = reinterpret_cast<float *>(ws + l.seg_summary);
        gdn_status st;
        if (varlen) {
            int64_t *seg_off = reinterpret_cast<int64_t *>(ws + l.seg_off);
            st = launch_chunk_offsets(ctx, m.cu_seqlens, (int)a->N, seg_off, stream, l.vs.smax, l.vs.min_seg);
            if (st != GDN_SUCCESS) return st;
            F.seg_off = seg_off;
        } else {
            F.seg_chunks = (int)gdn_ceil_div(gdn_ceil_div(p->T, GDN_CHUNK), F.segments);
        }
        const int64_t units = varlen ? l.vs.segments : a->N * F.segments;
        if (seg0_beside(ctx, p, units)) {
            /* segment 0 first, as prep's dependent; the summary as its
             * dependent, started once prep is done; the final launch later
             * without segment 0 (FusedParams::seg_first) */
            FusedParams A = F;
            A.seg_first = 1;
            A.pdl_trigger = 1;
            if ((st = launch_chunk_fused(ctx, A, false, stream)) != GDN_SUCCESS) return st;
            F.seg_first = 2;
            F.pdl = 1;
            F.pdl_nowait = 1;
        }
        if ((st = launch_chunk_fused(ctx, F, true, stream, l.vs.segments)) != GDN_SUCCESS) return st;
        F.pdl = F.pdl_nowait = 0; /* the final launch reads the combine's start states in every warp */
        if ((varlen || F.segments > 2) &&
            (st = launch_segment_combine(ctx, F.seg_summary, F.h_start, (int)a->N, (int)p->Hv, (int)p->K,
                                         (int)p->V, varlen ? 0 : F.segments, stream, F.seg_off)) != GDN_SUCCESS)
            return st;
    }
    return launch_chunk_fused(ctx, F, false, stream, l.vs.segments);
}

/* Stage 2's arguments shared by the forward and the summary. */
StateArgs state_args(const gdn_chunk_forward_args *a, const ChunkMap &m, const FwdLayout &l,
                     uint8_t *ws) {
    StateArgs s{};
    s.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    s.w = reinterpret_cast<const __nv_bfloat16 *>(ws + l.w);
    s.u = reinterpret_cast<const __nv_bfloat16 *>(ws + l.u);
    s.g = reinterpret_cast<const float *>(ws + l.gcum);
    s.kscale = a->opts.l2norm_qk ? reinterpret_cast<const float *>(ws + l.kscale) : nullptr;
    s.cu_seqlens = m.cu_seqlens;
    s.chunk_offsets = m.chunk_offsets;
    s.N = a->N;
    s.per_seq_split = true;
    return s;
}

} // namespace
} // namespace gdn

using namespace gdn;

extern "C" size_t gdn_cuda_chunk_forward_workspace_size(const gdn_context *ctx,
                                                        const gdn_problem *p) {
    return fwd_layout(ctx, p, false).total;
}

extern "C" size_t gdn_cuda_chunk_forward_summary_workspace_size(const gdn_context *ctx,
                                                                const gdn_problem *p) {
    return fwd_layout(ctx, p, true).total;
}

namespace gdn {
namespace {

/* No tokens at all: the final state is the initial one (h0, or 0). */
gdn_status final_is_start(gdn_context *ctx, const gdn_chunk_forward_args *a, cudaStream_t stream) {
    if (!a->final_state) return GDN_SUCCESS;
    const gdn_problem *p = a->p;
    const size_t bytes = (size_t)(a->N * p->Hv * p->V * p->K) * sizeof(float);
    if (a->h0)
        GDN_CUDA_TRY(ctx, cudaMemcpyAsync(a->final_state, a->h0, bytes, cudaMemcpyDeviceToDevice,
                                          stream));
    else
        GDN_CUDA_TRY(ctx, cudaMemsetAsync(a->final_state, 0, bytes, stream));
    return GDN_SUCCESS;
}

/* Stages 2 and 3 (prep done): the state from a->h0, then the output. */
gdn_status run_state_output(gdn_context *ctx, const gdn_chunk_forward_args *a, const ChunkMap &m,
                            const FwdLayout &l, uint8_t *ws, cudaStream_t stream) {
    const gdn_problem *p = a->p;
    gdn_status st;
    StateArgs s = state_args(a, m, l, ws);
    s.h0 = a->h0;
    s.h_out = reinterpret_cast<__nv_bfloat16 *>(ws + l.h);
    s.hout_kv = 0;
    s.v_new = reinterpret_cast<__nv_bfloat16 *>(ws + l.v_new);
    s.final_state = a->final_state;
    s.chunk_states = a->chunk_states;
    if ((st = run_chunk_state(ctx, p, s, ws + l.scratch, stream)) != GDN_SUCCESS) return st;

    OutputParams O{};
    O.map = m;
    O.NT = a->NT;
    O.q = reinterpret_cast<const __nv_bfloat16 *>(a->q);
    O.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    O.qscale = a->opts.l2norm_qk ? reinterpret_cast<const float *>(ws + l.qscale) : nullptr;
    O.kscale = a->opts.l2norm_qk ? reinterpret_cast<const float *>(ws + l.kscale) : nullptr;
    O.gcum = reinterpret_cast<const float *>(ws + l.gcum);
    O.h = s.h_out;
    O.v_new = s.v_new;
    O.o = reinterpret_cast<__nv_bfloat16 *>(a->o);
    O.scale = a->opts.scale;
    set_heads(O, p);
    return launch_chunk_output(ctx, O, stream);
}

/* The context-parallel forward's workspace: the forward's, then the
 * summary this rank sends, the summaries of all ranks, and the folded
 * initial state. One summary: transition [N,Hv,K,K] then partial
 * [N,Hv,V,K], f32. */
struct CpLayout {
    FwdLayout f;
    size_t summary_floats; /* one rank's */
    size_t send, recv, start, total;
};

CpLayout cp_layout(const gdn_context *ctx, const gdn_problem *p, int nranks) {
    CpLayout c{};
    c.f = fwd_layout(ctx, p, false);
    const size_t heads = (size_t)(gdn_problem_num_seqs(p) * p->Hv);
    c.summary_floats = heads * (size_t)(p->K * p->K + p->V * p->K);
    c.send = c.f.total;
    c.recv = c.send + align256(c.summary_floats * sizeof(float));
    c.start = c.recv + align256((size_t)nranks * c.summary_floats * sizeof(float));
    c.total = c.start + align256(heads * (size_t)(p->V * p->K) * sizeof(float));
    return c;
}

} // namespace

size_t cp_workspace_bytes(const gdn_context *ctx, const gdn_problem *p, int nranks) {
    return cp_layout(ctx, p, nranks).total;
}

/* Phase 1 of the context-parallel forward: prep, then this slice's
 * summary into the send buffer; *send and *count say what to all-gather
 * (count floats), *recv where. */
gdn_status cp_summarise(gdn_context *ctx, const gdn_chunk_forward_args *a, int nranks,
                        float **send, float **recv, size_t *count) {
    const gdn_problem *p = a->p;
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    const CpLayout c = cp_layout(ctx, p, nranks);
    uint8_t *ws = static_cast<uint8_t *>(a->workspace);
    ChunkMap m;
    gdn_status st = map_and_prep(ctx, "gdn_chunk_forward_cp", a, c.f, ws, stream, &m);
    if (st != GDN_SUCCESS) return st;
    *send = reinterpret_cast<float *>(ws + c.send);
    *recv = reinterpret_cast<float *>(ws + c.recv);
    *count = c.summary_floats;
    StateArgs s = state_args(a, m, c.f, ws);
    s.transition = *send;
    s.final_state = *send + (size_t)(a->N * p->Hv * p->K * p->K); /* the partial */
    return run_chunk_state(ctx, p, s, nullptr, stream);
}

/* Phase 2, after the all-gather: fold h0 through the summaries of ranks
 * 0 .. rank-1 into this slice's initial state, then the forward's state
 * and output stages (prep from phase 1 stays in the workspace). */
gdn_status cp_finish(gdn_context *ctx, const gdn_chunk_forward_args *a, int nranks, int rank) {
    const gdn_problem *p = a->p;
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    const CpLayout c = cp_layout(ctx, p, nranks);
    uint8_t *ws = static_cast<uint8_t *>(a->workspace);
    const float *recv = reinterpret_cast<const float *>(ws + c.recv);
    float *start = reinterpret_cast<float *>(ws + c.start);
    const size_t ntr = (size_t)(a->N * p->Hv * p->K * p->K);
    const float *in = a->h0;
    gdn_status st;
    for (int j = 0; j < rank; j++) {
        const float *tr = recv + (size_t)j * c.summary_floats;
        st = gdn_cuda_state_advance(ctx, p, in, tr, tr + ntr, start);
        if (st != GDN_SUCCESS) return st;
        in = start;
    }
    gdn_chunk_forward_args b = *a;
    b.h0 = in;
    if (b.NT == 0) return final_is_start(ctx, &b, stream);
    ChunkMap m;
    m.T = p->T;
    m.N = (int)a->N;
    m.cu_seqlens = nullptr; /* the context-parallel forward takes no cu_seqlens */
    m.chunk_offsets = nullptr;
    return run_state_output(ctx, &b, m, c.f, ws, stream);
}

} // namespace gdn

extern "C" gdn_status gdn_cuda_chunk_forward(gdn_context *ctx, const gdn_chunk_forward_args *a) {
    static const char *const OP = "gdn_chunk_forward";
    DeviceGuard guard(ctx->device);
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    const FwdLayout l = fwd_layout(ctx, a->p, false);
    uint8_t *ws = static_cast<uint8_t *>(a->workspace);
    ChunkMap m;
    const bool fused = use_fused(ctx, a);
    gdn_status st = map_and_prep(ctx, OP, a, l, ws, stream, &m, fused);
    if (st != GDN_SUCCESS) return st;
    if (a->NT == 0) return final_is_start(ctx, a, stream);
    if (fused) return run_fused(ctx, a, m, l, ws, stream);
    return run_state_output(ctx, a, m, l, ws, stream);
}

extern "C" gdn_status gdn_cuda_chunk_forward_summary(gdn_context *ctx,
                                                     const gdn_chunk_forward_args *a) {
    static const char *const OP = "gdn_chunk_forward_summary";
    const gdn_problem *p = a->p;
    DeviceGuard guard(ctx->device);
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    const FwdLayout l = fwd_layout(ctx, p, true);
    uint8_t *ws = static_cast<uint8_t *>(a->workspace);
    ChunkMap m;
    gdn_status st = map_and_prep(ctx, OP, a, l, ws, stream, &m);
    if (st != GDN_SUCCESS) return st;
    StateArgs s = state_args(a, m, l, ws);
    s.final_state = a->final_state; /* the partial */
    s.transition = a->transition;
    return run_chunk_state(ctx, p, s, nullptr, stream);
}

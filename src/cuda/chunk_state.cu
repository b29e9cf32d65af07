/*
 * gdn_chunk_state on CUDA: the inter-chunk state recurrence (SPEC 3 step 4).
 *
 * One block owns BV = 16 RG rows of one head's state [V, K] and walks that
 * sequence's chunks in order; the chunk inputs (w, k, u, g) stream through
 * a cp.async ring of shared-memory stages. Each 16-row group of the state
 * is held by two warps as mma.sync accumulators (f32), each warp owning
 * half of the K columns; per chunk:
 *   vn^T    = u^T - bf16(H) w^T        (each warp: half of the tokens, all K;
 *                                       A = bf16(H), the partner's columns
 *                                       staged in shared memory)
 *   vg^T    = bf16(vn^T * exp(G_last - G_t))   (rows past the end -> 0)
 *   H       = exp(G_last) H + vg^T k   (each warp: its columns, all tokens;
 *                                       A = vg^T, the partner's tokens
 *                                       staged in u's slot)
 * The two warps of a row group meet at a named barrier before each product
 * (or, where that measured faster, within it: after the half whose A
 * operand is in their own registers); the block meets once a chunk, at
 * the ring. Or (the plan's
 * choice, "producer") one more warp issues all the ring's loads and the
 * stages hand over through mbarriers: the compute warps then spend no
 * issue slots on loads and never meet as a block. Halving each warp's
 * serial work this way is what pays: the kernel is bound by the latency of
 * one chunk's dependent steps, not by bandwidth or tensor throughput, for
 * all but the largest problems. h_out and v_new go out from the staged
 * tiles as 16-byte stores. On sm_90 the producer moves a whole chunk's w
 * and k tiles with the tensor copy engine (TMA: one instruction a 64 x 64
 * box, 128-byte swizzled in shared memory) instead of 16-byte cp.async
 * copies, which left it too slow to keep ahead of the compute warps
 * (72 copies a lane a chunk at K = 128, each holding its address
 * registers); u, g and partial chunks still go by cp.async.
 * Rows of the state are independent, so blocks never communicate.
 *
 * Few heads, long sequences (the tp8 shapes) leave most SMs idle. Then the
 * sequence is cut into S segments and processed in three launches:
 *   1. summary: segment 0 runs its state pass from h0 (its end state is
 *      h_start[1]); beside it each segment 0 < s < S-1 runs from a zero
 *      state, and from the identity for K extra "transition" rows with
 *      u = 0, giving b_s and P_s with state_after = state_before * P_s + b_s
 *      (the update is affine);
 *   2. combine: h_start[s+1] = h_start[s] P_s + b_s, serially, in f32;
 *   3. segments 1..S-1 rerun from their true h_start, writing h_out and
 *      v_new.
 * This costs about 2.5x the arithmetic but S times the parallelism; segment
 * 0 riding in the summary launch lets the last launch take one more
 * segment in the same wave.
 */
#include <cuda.h>
#include <cudaTypedefs.h>

#include "chunk_forward.cuh"
#include "chunk_state.cuh"

namespace gdn {
namespace {

constexpr int BT = GDN_CHUNK;
/* Warps a 16-row group. Two halve each warp's serial per-chunk work and
 * give a 32-row block a warp on each of the SM's four schedulers (H100,
 * q35_t8k: 0.286 ms with one, 0.218 with two, 0.219 with four). */
constexpr int KSPLIT = 2;

/* MODE_STATE_F32 is MODE_STATE that also stores the f32 chunk-start
 * states (a variant of its own: the stores cost registers). */
enum { MODE_STATE = 0, MODE_SUMMARY = 1, MODE_STATE_F32 = 2 };

struct Params {
    const __nv_bfloat16 *k, *w, *u;
    const float *g, *h0;
    const float *kscale;       /* [tokens, Hv] f32 factor on k (the forward's L2 norm), or NULL */
    __nv_bfloat16 *h_out, *v_new;
    float *final_state;
    float *chunk_states;       /* [NT, Hv, V, K] f32 chunk-start states (forward), or NULL */
    const int32_t *cu_seqlens; /* device; NULL without varlen */
    const int64_t *chunk_offsets; /* device [N+1] chunks before each sequence (varlen) */
    int64_t T;
    int N, Hk, Hv, K, V;
    int group;        /* Hv / Hk */
    int tiled;        /* head map */
    int kv_layout;    /* state layout of h0, final_state, chunk_states */
    int hout_kv;      /* state layout of h_out */
    int row_tiles;    /* row tiles per head in this launch */
    int segments;     /* S: segments per sequence (1 = no split) */
    int seg_first;    /* the first segment of this launch */
    int seg_launch;   /* segments per sequence covered by this launch */
    int64_t lead_blocks; /* summary launch: its first blocks run segment 0's state pass */
    int chunks_first; /* chunks of segment 0 */
    int chunks_per_segment; /* ... of each later segment */
    float *summary;   /* [S-2][N][Hv][V+K][K] f32: segments 1..S-2 */
    float *transition; /* whole-sequence summary: [N][Hv][K][K], partial in final_state */
    float *h_start;   /* [S-1][N][Hv][V][K] f32: segments 1..S-1, NULL when S == 1 */
    const int64_t *seg_off; /* combine only: the fused path's varlen split (FusedParams) */
    int tma;          /* tmap_w, tmap_k are set (sm_90 producer kernels use them) */
    CUtensorMap tmap_w, tmap_k; /* w [T][Hv][K], k [T][Hk][K]; boxes of 64 columns x 64 tokens */
};

/* A producer kernel's stages start at 1024-byte boundaries (the tensor
 * copy's 128-byte swizzle is laid out in 1024-byte blocks). */
__host__ __device__ constexpr int round1024(int x) { return (x + 1023) / 1024 * 1024; }

/* Shared memory of the vector kernel (KP, RG row groups, a STAGES-deep
 * ring, a producer warp or not), the layout of Smem below in one formula,
 * for the host's plan. The producer's adds 1024 bytes of slack to align
 * the base. */
__host__ __device__ constexpr int smem_bytes(int kp, int rg, int stages, bool prod) {
    return prod ? stages * round1024(2 * BT * (kp + 8) * 2 + BT * (16 * rg + 8) * 2 + 2 * BT * 4) +
                      rg * 16 * (kp + 8) * 2 + stages * 16 + 1024
                : stages * (2 * BT * (kp + 8) * 2 + BT * (16 * rg + 8) * 2 + 2 * BT * 4) +
                      rg * 16 * (kp + 8) * 2;
}

/* A block covers BV = 16 RG rows of one head's state: RG row groups of 16
 * rows, each worked by KS warps that split the state's columns (and, for
 * v_new, the chunk's tokens) between them. PROD: one more warp, the
 * producer, issues the ring's loads (see the kernel). */
template <int KP_, int RG_, int KS_, int STAGES_, bool PROD_> struct Smem {
    static constexpr int KP = KP_, RG = RG_, KS = KS_, STAGES = STAGES_;
    static constexpr bool PROD = PROD_;
    static constexpr int BV = 16 * RG;
    static constexpr int NW = RG * KS; /* compute warps */
    static constexpr int NTHREADS = 32 * (NW + PROD);
    /* threads that issue a chunk's loads */
    static constexpr int LOADERS = PROD ? 32 : NTHREADS;
    static constexpr int LDK = KP + 8; /* +16 bytes a row: conflict-free ldmatrix */
    static constexpr int LDU = BV + 8;
    static constexpr int W = 0;
    static constexpr int KC = W + BT * LDK * 2;
    static constexpr int U = KC + BT * LDK * 2;
    static constexpr int G = U + BT * LDU * 2;
    static constexpr int KS_OFF = G + BT * 4; /* kscale, when given */
    /* W and KC sit at multiples of 1024 bytes in a stage (BT * LDK * 2 is
     * 128 (KP + 8)); so do the stages of a producer kernel */
    static constexpr int STAGE = PROD ? round1024(KS_OFF + BT * 4) : KS_OFF + BT * 4;
    /* per row group: [16][LDK] bf16 state (MMA1's A; h_out) */
    static constexpr int HST = STAGES * STAGE;
    /* PROD: per stage, mbarriers full (its loads landed) and empty (every
     * compute warp is done with it) */
    static constexpr int MBAR = HST + RG * 16 * LDK * 2;
    static constexpr int BYTES = MBAR + (PROD ? STAGES * 16 + 1024 : 0);
    static_assert(BYTES == smem_bytes(KP, RG, STAGES, PROD), "smem_bytes must match the layout");
    /* Blocks a multiprocessor can hold by shared memory (Hopper and Ampere
     * give a block up to 227 KB, 228 KB a multiprocessor): asking the
     * compiler for two caps registers so that two do fit. */
    static constexpr int MIN_BLOCKS = 2 * (BYTES + 1024) <= 228 * 1024 ? 2 : 1;
    /* Registers to spare (a lone block of at most nine warps, up to 224
     * registers a thread): the kernel then spends them on latency (hoisted
     * ldmatrix offsets, batched h_out and v_new reads). A 128-row block's
     * 17 warps get 120, as two 64-row blocks do. */
    static constexpr bool ROOMY = MIN_BLOCKS == 1 && NW <= 8;
};

/* Whether kernel L's w and k tiles are in the tensor copy's layout: the
 * producer kernels of the sm_90 build (TMA). */
template <class L> __device__ __forceinline__ constexpr bool swizzled() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return L::PROD;
#else
    return false;
#endif
}

/* Element offset of (token t, column c) in a stage's w or k tile, c a
 * multiple of 8. Swizzled: KP / 64 boxes of [64 tokens][64 columns], 8 KB
 * each, with the 16-byte piece p of row t at piece p ^ (t % 8) (TMA's
 * 128-byte swizzle: conflict-free ldmatrix without padding). Else rows
 * of LDK elements. */
template <class L> __device__ __forceinline__ int tile_off(int t, int c) {
    if constexpr (swizzled<L>())
        return (c >> 6) * (BT * 64) + t * 64 + ((((c >> 3) ^ t) & 7) << 3);
    else
        return t * L::LDK + c;
}

/* Where one chunk's rows start, and the strides between tokens. */
struct ChunkSrc {
    const __nv_bfloat16 *w, *k, *u;
    const float *g, *ks;
    int64_t rs_w, rs_k, rs_u, rs_g;
};

/* A chunk's g (and k scale) into a stage by cp.async, zero past nvalid;
 * tid: this thread among the L::LOADERS that load. */
template <class L>
__device__ __forceinline__ void load_gates(uint8_t *stage, const ChunkSrc &src, int nvalid, int tid) {
    float *sg = reinterpret_cast<float *>(stage + L::G);
    float *sks = reinterpret_cast<float *>(stage + L::KS_OFF);
    auto one = [&](int t) {
        const bool ok = t < nvalid;
        cp_async4(sg + t, ok ? src.g + t * src.rs_g : src.g, ok ? 4 : 0);
        if (src.ks) cp_async4(sks + t, ok ? src.ks + t * src.rs_g : src.ks, ok ? 4 : 0);
    };
    if constexpr (L::LOADERS >= BT) {
        if (tid < BT) one(tid);
    } else {
#pragma unroll
        for (int t = tid; t < BT; t += L::LOADERS) one(t);
    }
}

/* Load one chunk's w, k, u, g rows [0, nvalid) into a stage; rows and
 * columns past the valid range are zero. VEC: 16-byte cp.async (needs K, V
 * multiples of 8 and aligned bases); otherwise plain element loads. Each
 * thread keeps one column and steps over rows, so the per-chunk address
 * math is one multiply-add a copy. tid: this thread among the L::LOADERS. */
template <class L, bool VEC>
__device__ __forceinline__ void load_chunk(uint8_t *stage, const ChunkSrc &src, int nvalid, int K,
                                           int vrows, bool load_u, int tid, bool load_wk = true) {
    constexpr int NTHREADS = L::LOADERS, BV = L::BV, KP = L::KP;
    __nv_bfloat16 *sw = reinterpret_cast<__nv_bfloat16 *>(stage + L::W);
    __nv_bfloat16 *sk = reinterpret_cast<__nv_bfloat16 *>(stage + L::KC);
    __nv_bfloat16 *su = reinterpret_cast<__nv_bfloat16 *>(stage + L::U);
    float *sg = reinterpret_cast<float *>(stage + L::G);
    float *sks = reinterpret_cast<float *>(stage + L::KS_OFF);
    if constexpr (VEC) {
        constexpr int CPR = KP / 8; /* 16-byte pieces a row */
        constexpr int RSTEP = NTHREADS / CPR;
        static_assert(NTHREADS % CPR == 0 && BT % RSTEP == 0, "load shape");
        const int c = (tid % CPR) * 8;
        const bool col_ok = c < K;
        constexpr int UPR = BV / 8;
        if (nvalid == BT) {
            /* a whole chunk (all but a sequence's last): running pointers,
             * no per-row checks; this is most of the kernel's issue slots */
            const int t1 = tid / CPR, cc = col_ok ? c : 0, bytes = col_ok ? 16 : 0;
            const __nv_bfloat16 *pw = src.w + t1 * src.rs_w + cc, *pk = src.k + t1 * src.rs_k + cc;
            const int64_t stw = RSTEP * src.rs_w, stk = RSTEP * src.rs_k;
            if (load_wk) {
#pragma unroll
                for (int i = 0; i < BT / RSTEP; i++, pw += stw, pk += stk) {
                    cp_async16(sw + tile_off<L>(t1 + i * RSTEP, c), pw, bytes);
                    cp_async16(sk + tile_off<L>(t1 + i * RSTEP, c), pk, bytes);
                }
            }
            if (load_u) {
                constexpr int USTEP = NTHREADS / UPR;
                static_assert(NTHREADS % UPR == 0 && BT % USTEP == 0, "u load shape");
                const int tu = tid / UPR, cu = (tid % UPR) * 8;
                const bool uok = cu < vrows;
                const __nv_bfloat16 *pu = src.u + tu * src.rs_u + (uok ? cu : 0);
                const int64_t stu = USTEP * src.rs_u;
#pragma unroll
                for (int i = 0; i < BT / USTEP; i++, pu += stu)
                    cp_async16(su + (tu + i * USTEP) * L::LDU + cu, pu, uok ? 16 : 0);
            }
            load_gates<L>(stage, src, nvalid, tid);
            return;
        }
#pragma unroll 4
        for (int t = tid / CPR; t < BT; t += RSTEP) {
            const bool ok = col_ok && t < nvalid;
            cp_async16(sw + tile_off<L>(t, c), ok ? src.w + t * src.rs_w + c : src.w, ok ? 16 : 0);
            cp_async16(sk + tile_off<L>(t, c), ok ? src.k + t * src.rs_k + c : src.k, ok ? 16 : 0);
        }
        if (load_u) {
            for (int i = tid; i < BT * UPR; i += NTHREADS) {
                const int t = i / UPR, cu = (i % UPR) * 8;
                const bool ok = t < nvalid && cu < vrows;
                cp_async16(su + t * L::LDU + cu, ok ? src.u + t * src.rs_u + cu : src.u, ok ? 16 : 0);
            }
        }
        load_gates<L>(stage, src, nvalid, tid);
    } else {
        static_assert(!swizzled<L>(), "the tensor copy layout needs the vector path");
        const __nv_bfloat16 zero = __float2bfloat16(0.f);
        for (int i = tid; i < BT * KP; i += NTHREADS) {
            const int t = i / KP, c = i % KP;
            const bool ok = t < nvalid && c < K;
            sw[t * L::LDK + c] = ok ? src.w[t * src.rs_w + c] : zero;
            sk[t * L::LDK + c] = ok ? src.k[t * src.rs_k + c] : zero;
        }
        if (load_u) {
            for (int i = tid; i < BT * BV; i += NTHREADS) {
                const int t = i / BV, c = i % BV;
                su[t * L::LDU + c] = t < nvalid && c < vrows ? src.u[t * src.rs_u + c] : zero;
            }
        }
        for (int t = tid; t < BT; t += NTHREADS) {
            sg[t] = t < nvalid ? src.g[t * src.rs_g] : 0.f;
            if (src.ks) sks[t] = t < nvalid ? src.ks[t * src.rs_g] : 0.f;
        }
    }
}

/* A block's chunks, issued in order: the sources run from the first
 * chunk's rows by BT rows a chunk (token row t of chunk c is token
 * bos + 64c + t), with no per-chunk address arithmetic. */
struct ChunkStream {
    ChunkSrc src;
    int64_t t_issue, eos; /* first token of the next chunk to issue; sequence end */
    /* tma (producer lane tid of a swizzled kernel, whole chunks only): w
     * and k come by tensor copies completing on bar, lane 0 issuing them;
     * h / kh: this head's coordinates in the w and k maps. */
    template <class L, bool VEC>
    __device__ __forceinline__ void issue(uint8_t *stage, int K, int vrows, bool load_u, int tid,
                                          const Params *tma = nullptr, uint64_t *bar = nullptr,
                                          int h = 0, int kh = 0) {
        const int nv = (int)(eos - t_issue < BT ? eos - t_issue : BT);
        if (tma && tid == 0)
#pragma unroll
            for (int b = 0; b < L::KP / 64; b++) {
                tma_load_3d(stage + L::W + b * BT * 128, &tma->tmap_w, bar, 64 * b, h, (int)t_issue);
                tma_load_3d(stage + L::KC + b * BT * 128, &tma->tmap_k, bar, 64 * b, kh, (int)t_issue);
            }
        load_chunk<L, VEC>(stage, src, nv, K, vrows, load_u, tid, tma == nullptr);
        t_issue += BT;
        src.w += BT * src.rs_w;
        src.k += BT * src.rs_k;
        src.u += BT * src.rs_u;
        src.g += BT * src.rs_g;
        if (src.ks) src.ks += BT * src.rs_g;
    }
};

/* Four 8x8 bf16 tiles from registers to shared memory (the inverse of
 * ldmatrix_x4, lane addresses alike); stmatrix on sm_90, stores elsewhere. */
template <bool TRANS>
__device__ __forceinline__ void store_tiles_x4(__nv_bfloat16 *base, int ld, const uint32_t r[4]) {
    const int lane = threadIdx.x & 31;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const __nv_bfloat16 *p = base + ((lane >> 4) * 8 + (lane & 7)) * ld + ((lane >> 3) & 1) * 8;
    if (TRANS)
        asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(
                         smem_addr(p)), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
    else
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(
                         smem_addr(p)), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
#else
    /* tile i: rows (i >> 1) * 8.., columns (i & 1) * 8..; this lane holds
     * (row gid, columns 2 tig, 2 tig + 1), transposed with TRANS */
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r0 = (i >> 1) * 8, c0 = (i & 1) * 8;
        const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162 *>(&r[i]);
        if (TRANS) {
            base[(r0 + 2 * tig) * ld + c0 + gid] = v.x;
            base[(r0 + 2 * tig + 1) * ld + c0 + gid] = v.y;
        } else {
            *reinterpret_cast<uint32_t *>(base + (r0 + gid) * ld + c0 + 2 * tig) = r[i];
        }
    }
#endif
}

template <class L, bool VEC, int MODE>
__global__ void __launch_bounds__(L::NTHREADS, L::MIN_BLOCKS) chunk_state_kernel(const __grid_constant__ Params P) {
    constexpr int KP = L::KP, KS = L::KS, BV = L::BV;
    constexpr int KW = KP / KS; /* state columns a warp owns */
    constexpr int NK = KW / 8;  /* ... as n8 tiles */
    constexpr int TW = BT / KS; /* chunk tokens a warp takes for v_new */
    static_assert(NK % 2 == 0 && TW % 32 == 0, "warp split");
    extern __shared__ __align__(16) uint8_t smem_raw[];
    /* producer kernels: the layout from the next 1024-byte boundary */
    uint8_t *const smem = L::PROD ? smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023) : smem_raw;

    /* A warp owns the state rows [wrow, wrow + 16) x columns [kc0, kc0 + KW)
     * as mma accumulators and computes v_new for tokens [tw0, tw0 + TW):
     *   MMA1  vn^T = u^T - bf16(H) w^T over all K (A: bf16(H), the row
     *         group's copy staged in Hw by stage_h);
     *   MMA2  H += vg^T k over its columns (A: the gated vn of all the
     *         chunk's tokens, staged in the u slot).
     * So a row group's KS warps exchange bf16(H) and vg through shared
     * memory, which multiplies the warps (and divides the serial
     * instructions of each) for the same rows. */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int rg = warp / KS, kpart = warp % KS;
    const int kc0 = kpart * KW, tw0 = kpart * TW;

    /* Block -> (row tile, head, segment, sequence); x only, so no grid
     * dimension limit applies to N * Hv. A split problem's summary launch
     * begins with lead blocks, which run segment 0's state pass (it starts
     * from h0, so needs no summary): they write h_out, v_new and the state
     * segment 1 starts from, like a state block (writes). */
    const int vtiles = (P.V + BV - 1) / BV;
    int64_t bid = blockIdx.x;
    const bool lead = MODE == MODE_SUMMARY && bid < P.lead_blocks;
    const bool writes = MODE != MODE_SUMMARY || lead;
    if (MODE == MODE_SUMMARY && !lead) bid -= P.lead_blocks;
    const int row_tiles = lead ? vtiles : P.row_tiles;
    const int tile = (int)(bid % row_tiles);
    bid /= row_tiles;
    const int h = (int)(bid % P.Hv);
    bid /= P.Hv;
    const int seg_launch = lead ? 1 : P.seg_launch;
    const int seg = lead ? 0 : P.seg_first + (int)(bid % seg_launch);
    const int n = (int)(bid / seg_launch);
    const int kh = P.tiled ? h % P.Hk : h / P.group;

    const bool trans_rows = MODE == MODE_SUMMARY && !lead && tile >= vtiles; /* rows of P_s */
    const int row0 = trans_rows ? (tile - vtiles) * BV : tile * BV;
    const int row_limit = trans_rows ? P.K : P.V;
    const int wrow = rg * 16; /* this warp's first row within the tile */

    const SeqSpan span = seq_span(P.cu_seqlens, writes ? P.chunk_offsets : nullptr, P.T, n);
    const int64_t bos = span.bos, eos = span.eos, hoff = span.hoff;
    const int nchunks = (int)((eos - bos + BT - 1) / BT);
    const int c_begin = seg == 0 ? 0 : min(P.chunks_first + (seg - 1) * P.chunks_per_segment, nchunks);
    const int c_end = P.segments == 1 ? nchunks
                      : min(c_begin + (seg == 0 ? P.chunks_first : P.chunks_per_segment), nchunks);
    const bool load_u = !trans_rows;
    const int vrows = P.V - row0; /* valid rows of this tile */

    auto open_stream = [&]() {
        ChunkStream s;
        s.src.rs_w = (int64_t)P.Hv * P.K;
        s.src.rs_k = (int64_t)P.Hk * P.K;
        s.src.rs_u = (int64_t)P.Hv * P.V;
        s.src.rs_g = P.Hv;
        s.t_issue = bos + (int64_t)c_begin * BT;
        s.eos = eos;
        s.src.w = P.w + s.t_issue * s.src.rs_w + (int64_t)h * P.K;
        s.src.k = P.k + s.t_issue * s.src.rs_k + (int64_t)kh * P.K;
        s.src.u = P.u + s.t_issue * s.src.rs_u + (int64_t)h * P.V + (load_u ? row0 : 0);
        s.src.g = P.g + s.t_issue * s.src.rs_g + h;
        s.src.ks = P.kscale ? P.kscale + s.t_issue * s.src.rs_g + h : nullptr;
        return s;
    };

    /* PROD: stage s of the ring is filled by the producer warp, whose
     * copies complete full[s]; the compute warps wait on full[s] and, done
     * with the stage, arrive on empty[s], which the producer waits on before
     * filling it again (phases alternate parity each use). The compute warps
     * issue no loads and meet only within their row group. */
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + L::MBAR), *empty = full + L::STAGES;
    if constexpr (L::PROD) {
        static_assert(VEC, "the producer warp issues 16-byte copies only");
        /* full[s]: the producer's 32 lanes' cp.async arrivals, and lane 0's
         * arrival that announces the stage's tensor-copy bytes (0 without) */
        if (threadIdx.x == 0)
            for (int i = 0; i < L::STAGES; i++) {
                mbar_init(full + i, 32 + 1);
                mbar_init(empty + i, 32 * L::NW);
            }
        __syncthreads();
        if (warp == L::NW) {
            ChunkStream cs = open_stream();
            const bool tma = swizzled<L>() && P.tma;
            constexpr uint32_t TMA_BYTES = 2 * BT * L::KP * 2; /* w and k boxes, zero-filled past K */
            for (int it = 0; it < c_end - c_begin; it++) {
                const int slot = it % L::STAGES;
                if (it >= L::STAGES) mbar_wait(empty + slot, (uint32_t)((it / L::STAGES - 1) & 1));
                /* whole chunks by tensor copies; a sequence's last partial
                 * chunk by cp.async, which zero-fills past its end (the next
                 * sequence's rows, even finite, must not enter) */
                const bool whole = tma && cs.eos - cs.t_issue >= BT;
                if (lane == 0) mbar_arrive_expect_tx(full + slot, whole ? TMA_BYTES : 0);
                cs.issue<L, VEC>(smem + slot * L::STAGE, P.K, vrows, load_u, lane, whole ? &P : nullptr,
                                 full + slot, h, kh);
                mbar_arrive_cp_async(full + slot);
            }
            cp_async_commit();
            cp_async_wait<0>(); /* no copy outlives its issuing thread */
            return;
        }
    }

    /* ---- initial state into the accumulators: H[nt][e] holds row
     * wrow + gid + 8 (e >> 1), column kc0 + nt * 8 + 2 tig + (e & 1) ---- */
    float H[NK][4];
    const int64_t head = (int64_t)n * P.Hv + h;
#pragma unroll
    for (int nt = 0; nt < NK; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = row0 + wrow + gid + (e >> 1) * 8;
            const int c = kc0 + nt * 8 + 2 * tig + (e & 1);
            float x = 0.f;
            if (r < row_limit && c < P.K) {
                if (MODE == MODE_SUMMARY && !lead) {
                    x = trans_rows && r == c ? 1.f : 0.f;
                } else if (seg > 0) {
                    x = P.h_start[(((int64_t)(seg - 1) * P.N * P.Hv + head) * P.V + r) * P.K + c];
                } else if (P.h0) {
                    x = P.h0[head * P.V * P.K + state_index(P.kv_layout, P.V, P.K, r, c)];
                }
            }
            H[nt][e] = x;
        }

    /* The f32 state tile (rows < row_limit, columns < K) to dst: [rows][K]
     * with rows_k, else a state in layout kv. */
    auto store_state = [&](float *dst, bool rows_k, int kv) {
#pragma unroll
        for (int nt = 0; nt < NK; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = row0 + wrow + gid + (e >> 1) * 8;
                const int col = kc0 + nt * 8 + 2 * tig + (e & 1);
                if (r < row_limit && col < P.K)
                    dst[rows_k ? (int64_t)r * P.K + col : state_index(kv, P.V, P.K, r, col)] =
                        H[nt][e];
            }
    };

    /* The row group's staged bf16(H) [16][LDK] (the gated v_new goes
     * through the stage's u slot, [token][row]). */
    __nv_bfloat16 *Hw = reinterpret_cast<__nv_bfloat16 *>(smem + L::HST) + rg * 16 * L::LDK;
    /* bf16(H), this warp's columns, into Hw: the A fragment of k-step q of
     * MMA1 is (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
     * (rows 8-15, k 8-15) of tiles 2q, 2q + 1; store_tiles_x4 takes
     * (row block i >> 1, column block i & 1). */
    auto pack_h = [&](int q, uint32_t a[4]) {
        a[0] = pack_bf16x2(H[2 * q][0], H[2 * q][1]);
        a[1] = pack_bf16x2(H[2 * q][2], H[2 * q][3]);
        a[2] = pack_bf16x2(H[2 * q + 1][0], H[2 * q + 1][1]);
        a[3] = pack_bf16x2(H[2 * q + 1][2], H[2 * q + 1][3]);
    };
    auto stage_h = [&]() {
        __syncwarp();
#pragma unroll
        for (int q = 0; q < NK / 2; q++) {
            uint32_t a[4];
            pack_h(q, a);
            const uint32_t r[4] = {a[0], a[2], a[1], a[3]};
            store_tiles_x4<false>(Hw + kc0 + q * 16, L::LDK, r);
        }
    };
    stage_h(); /* the loop's first barrier publishes it */

    const int wrows = vrows - wrow; /* valid rows of this warp's 16 */

    /* The ldmatrix row addresses of the B operands, for a lone block a
     * multiprocessor (latency-bound) as per-lane offsets (elements) into a
     * stage's w and k tiles plus compile-time constants, so that the
     * swizzle costs no arithmetic in the loop (H100, q35_t32k 1.6% faster);
     * blocks sharing a multiprocessor keep the registers and compute them
     * (q35_b4_t8k: 0.580 ms, 0.607 with the offsets, register spills):
     *   MMA1 (k-step q, tokens tw0 + 8j..): this lane's row tw0 + 8j + wr,
     *     column 16q + 8 b1; w_at(part, qq, j) = woff[qq % 4] + constant;
     *   MMA2 (token step q, columns kc0 + 8nt..): row 16q + 8 b1 + r7,
     *     column kc0 + 8nt + 8 b4; k_at(q, nt) = koff[nt / 2] + constant. */
    const int r7 = lane & 7, b1 = (lane >> 3) & 1, b4 = lane >> 4;
    const int wr = 8 * b4 + r7;
    int woff[4], koff[NK / 2];
#pragma unroll
    for (int m = 0; m < 4; m++) woff[m] = tile_off<L>(tw0 + wr, 16 * m + 8 * b1);
#pragma unroll
    for (int i = 0; i < NK / 2; i++) koff[i] = tile_off<L>(8 * b1 + r7, kc0 + 16 * i + 8 * b4);
    /* w_at(part, qq, j): k-step q = part QH + qq (QH: the k-steps of one
     * warp's columns, so qq is a compile-time index even where part is the
     * lane's kpart); k_at(q, nt): what the offsets leave, by the layout */
    constexpr bool HOIST = L::ROOMY;
    constexpr int QH = NK / 2;
    /* Each product's half whose A operand is in this warp's registers
     * first, then the barrier with the partner, then the other half from
     * shared memory: faster where a multiprocessor's two blocks or K = 256
     * keep its warps busy (H100: k256_t8k 0.391 -> 0.386 ms, q35_b4_t8k
     * 0.579 -> 0.577), slower for lone 128-column blocks, which wait on
     * the chain (q35_t32k 0.583 -> 0.589, q397_t8k 0.259 -> 0.260: the
     * barrier then also holds back the second half's B loads). Either way
     * the sums run in the same order, the warp's own half first: the ring
     * depth (so OWN_FIRST) follows the launch's size, and a sequence's bits
     * must not depend on the batch around it. */
    constexpr bool OWN_FIRST = !HOIST || KP == 256;
    auto w_at = [&](int part, int qq, int j) {
        const int q = part * QH + qq;
        if constexpr (!HOIST || QH % 4 != 0) return tile_off<L>(tw0 + 8 * j + wr, 16 * q + 8 * b1);
        return swizzled<L>() ? woff[qq & 3] + (q >> 2) * (BT * 64) + j * 8 * 64
                             : woff[0] + 16 * q + j * 8 * L::LDK;
    };
    auto k_at = [&](int q, int nt) {
        if constexpr (!HOIST) return tile_off<L>(16 * q + 8 * b1 + r7, kc0 + 8 * nt + 8 * b4);
        return swizzled<L>() ? koff[nt / 2] + q * 16 * 64 : koff[0] + 8 * nt + q * 16 * L::LDK;
    };
    ChunkStream cs; /* without a producer: every thread loads */
    if constexpr (!L::PROD) cs = open_stream();

    /* h_out and v_new stores (V-first, vector path): each lane's first
     * element, advanced by a chunk each chunk. h_out: 16 rows x KW columns
     * in 16-byte pieces, HPR a row, lane -> row hr + HRS j, column hc.
     * v_new: 16 rows x TW tokens, lane -> token tw0 + vt + 16 j, rows vr.. */
    constexpr int HPR = KW / 8, HRS = 32 / HPR;
    static_assert(32 % HPR == 0, "h_out pieces");
    const int hr = lane / HPR, hc = kc0 + (lane % HPR) * 8;
    const int64_t hstep = (int64_t)P.Hv * P.V * P.K;
    __nv_bfloat16 *hp = nullptr;
    if (writes)
        hp = P.h_out + (hoff + c_begin) * hstep + (int64_t)h * P.V * P.K +
             (int64_t)(row0 + wrow + hr) * P.K + hc;
    const int vt = lane >> 1, vr = (lane & 1) * 8;
    const int64_t vtok = (int64_t)P.Hv * P.V; /* v_new row stride */
    __nv_bfloat16 *vp = nullptr;
    if (writes && P.v_new)
        vp = P.v_new + (bos + (int64_t)c_begin * BT + tw0 + vt) * vtok + (int64_t)h * P.V + row0 +
             wrow + vr;

    /* ---- pipeline prologue (without a producer, every thread loads) ---- */
    if constexpr (!L::PROD) {
#pragma unroll
        for (int i = 0; i < L::STAGES - 1; i++) {
            if (c_begin + i < c_end) cs.issue<L, VEC>(smem + i * L::STAGE, P.K, vrows, load_u, threadIdx.x);
            cp_async_commit();
        }
    }

    for (int c = c_begin; c < c_end; c++) {
        const int it = c - c_begin, slot = it % L::STAGES;
        uint8_t *stage = smem + slot * L::STAGE;
        const int64_t t0 = bos + (int64_t)c * BT;
        const int nvalid = (int)(eos - t0 < BT ? eos - t0 : BT);
        if constexpr (L::PROD) {
            mbar_wait(full + slot, (uint32_t)((it / L::STAGES) & 1));
        } else {
            cp_async_wait<L::STAGES - 2>();
            __syncthreads();
            if (c + L::STAGES - 1 < c_end)
                cs.issue<L, VEC>(smem + ((it + L::STAGES - 1) % L::STAGES) * L::STAGE, P.K, vrows, load_u,
                                 threadIdx.x);
            cp_async_commit();
        }
        const __nv_bfloat16 *Ws = reinterpret_cast<const __nv_bfloat16 *>(stage + L::W);
        const __nv_bfloat16 *Ks = reinterpret_cast<const __nv_bfloat16 *>(stage + L::KC);
        __nv_bfloat16 *Us = reinterpret_cast<__nv_bfloat16 *>(stage + L::U) + wrow;
        const float *Gs = reinterpret_cast<const float *>(stage + L::G);
        const float g_last = Gs[nvalid - 1];

        if (MODE == MODE_STATE_F32 || (lead && P.chunk_states))
            store_state(P.chunk_states + ((hoff + c) * P.Hv + h) * (int64_t)P.V * P.K, false,
                        P.kv_layout);

        /* 1. acc[j] (tokens tw0 + 8j ..) = bf16(H) . w^T over all K; TW / 8
         * independent accumulators, so no long dependent mma chain. With
         * OWN_FIRST, the warp's own columns first, their A fragments packed
         * from its registers (no shared memory, no partner), then the
         * partner's, once the barrier shows them staged in Hw. */
        float acc[TW / 8][4];
#pragma unroll
        for (int j = 0; j < TW / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[j][e] = 0.f;
        auto mma1_step = [&](int part, int qq, const uint32_t a[4]) {
#pragma unroll
            for (int j = 0; j < TW / 8; j += 2) {
                uint32_t b[4]; /* tokens tw0 + 8j.. and + 8.., columns 16q.. */
                ldmatrix_x4(b, Ws + w_at(part, qq, j));
                mma_bf16_16816(acc[j], a, b);
                mma_bf16_16816(acc[j + 1], a, b + 2);
            }
        };
        auto mma1_smem = [&](int part, int qq) {
            uint32_t a[4];
            ldmatrix_x4(a, Hw + (lane & 15) * L::LDK + (part * QH + qq) * 16 + (lane >> 4) * 8);
            mma1_step(part, qq, a);
        };
        if constexpr (OWN_FIRST) {
#pragma unroll
            for (int qq = 0; qq < QH; qq++) {
                uint32_t a[4];
                pack_h(qq, a);
                mma1_step(kpart, qq, a);
            }
        }
        if constexpr (L::PROD) named_barrier(1 + rg, 32 * KS); /* the partners' bf16(H) in Hw */
#pragma unroll
        for (int pp = OWN_FIRST ? 1 : 0; pp < KS; pp++) /* (OWN_FIRST: own half done) */
#pragma unroll
            for (int qq = 0; qq < QH; qq++) mma1_smem((kpart + pp) % KS, qq);

        /* 2. h_out[c] = bf16(H): this warp's rows and columns, from Hw */
        if (writes) {
            if (!P.hout_kv && VEC) {
                /* a lone block a multiprocessor (latency-bound): all the
                 * shared-memory reads first (always in the tile), then the
                 * guarded stores, one read latency instead of one a row
                 * (H100: q35_t8k 2% faster); blocks sharing a multiprocessor
                 * keep the registers instead (q35_b4_t8k 5% slower with it) */
                constexpr int NH = 16 / HRS, NB = L::ROOMY ? NH : 1;
#pragma unroll
                for (int j0 = 0; j0 < NH; j0 += NB) {
                    uint4 hv[NB];
#pragma unroll
                    for (int j = 0; j < NB; j++)
                        hv[j] = *reinterpret_cast<const uint4 *>(Hw + (hr + HRS * (j0 + j)) * L::LDK + hc);
#pragma unroll
                    for (int j = 0; j < NB; j++)
                        if (hr + HRS * (j0 + j) < wrows && hc < P.K)
                            *reinterpret_cast<uint4 *>(hp + (int64_t)(HRS * (j0 + j)) * P.K) = hv[j];
                }
            } else if (P.hout_kv && VEC) {
                __nv_bfloat16 *dst = P.h_out + (hoff + c) * hstep + (int64_t)h * P.V * P.K;
                for (int i = lane; i < KW * 2; i += 32) {
                    const int col = kc0 + (i >> 1), r = (i & 1) * 8;
                    if (r < wrows && col < P.K) {
                        uint32_t packed[4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            const uint32_t lo = __bfloat16_as_ushort(Hw[(r + 2 * j) * L::LDK + col]);
                            const uint32_t hi = __bfloat16_as_ushort(Hw[(r + 2 * j + 1) * L::LDK + col]);
                            packed[j] = lo | (hi << 16);
                        }
                        *reinterpret_cast<uint4 *>(dst + (int64_t)col * P.V + row0 + wrow + r) =
                            make_uint4(packed[0], packed[1], packed[2], packed[3]);
                    }
                }
            } else {
                __nv_bfloat16 *dst = P.h_out + (hoff + c) * hstep + (int64_t)h * P.V * P.K;
                for (int i = lane; i < 16 * KW; i += 32) {
                    const int r = i / KW, col = kc0 + i % KW;
                    if (r < wrows && col < P.K)
                        dst[state_index(P.hout_kv, P.V, P.K, row0 + wrow + r, col)] = Hw[r * L::LDK + col];
                }
            }
        }

        /* 3. the gates of this lane's tokens tw0 + 8j + 2 tig + {0, 1}: each
         * lane computes tokens tw0 + lane + 32 i, the warp shares them */
        float gl[TW / 32];
#pragma unroll
        for (int i = 0; i < TW / 32; i++) {
            const int t = tw0 + lane + 32 * i;
            float x = t < nvalid ? expf(g_last - Gs[t]) : 0.f;
            if (P.kscale) x *= reinterpret_cast<const float *>(stage + L::KS_OFF)[t];
            gl[i] = x;
        }

        /* 4. vn = u - acc (u^T fragments by ldmatrix.trans), v_new = bf16(vn)
         * back in u's place, vg = bf16(vn * gate) in A order
         * (k-step q over tokens tw0 + 16q..: tiles 2q, 2q+1) */
        uint32_t Vg[TW / 16][4];
#pragma unroll
        for (int q = 0; q < TW / 16; q++) {
            /* tiles (tokens 16q.., rows 0-7), (16q.., 8-15), (16q+8.., 0-7), (16q+8.., 8-15) */
            uint32_t ur[4] = {0u, 0u, 0u, 0u};
            __nv_bfloat16 *ut = Us + (tw0 + q * 16) * L::LDU;
            if (load_u)
                ldmatrix_x4_trans(ur, ut + (((lane >> 4) << 3) + (lane & 7)) * L::LDU + ((lane >> 3) & 1) * 8);
            uint32_t vb[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = 2 * q + (i >> 1), e = (i & 1) * 2; /* acc tile, element pair */
                const float2 u2 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&ur[i]));
                const float vn0 = u2.x - acc[j][e], vn1 = u2.y - acc[j][e + 1];
                vb[i] = pack_bf16x2(vn0, vn1);
                const int tl = 8 * j + 2 * tig, t = tw0 + tl;
                const float g0 = __shfl_sync(0xffffffffu, gl[j >> 2], tl & 31);
                const float g1 = __shfl_sync(0xffffffffu, gl[j >> 2], (tl + 1) & 31);
                /* a zero gate must not turn an Inf/NaN of a padding row
                 * into NaN: select, don't multiply */
                Vg[q][i] = pack_bf16x2(t < nvalid ? vn0 * g0 : 0.f, t + 1 < nvalid ? vn1 * g1 : 0.f);
            }
            /* Vg[q] is in A order, (rows 0-7, tokens 0-7), (rows 8-15, tokens
             * 0-7), (rows 0-7, tokens 8-15), ...; vb in the same order is
             * store_tiles_x4's (token block i >> 1, row block i & 1),
             * transposed back to u's [token][row] */
            if (writes && P.v_new) store_tiles_x4<true>(ut, L::LDU, vb);
        }

        /* 5. v_new rows of this warp's tokens and 16 value rows */
        if (writes && P.v_new) {
            __syncwarp();
            if (VEC) {
                constexpr int NV = TW / 16, NB = L::ROOMY ? NV : 1; /* as for h_out */
#pragma unroll
                for (int j0 = 0; j0 < NV; j0 += NB) {
                    uint4 vv[NB];
#pragma unroll
                    for (int j = 0; j < NB; j++)
                        vv[j] = *reinterpret_cast<const uint4 *>(Us + (tw0 + vt + 16 * (j0 + j)) * L::LDU + vr);
#pragma unroll
                    for (int j = 0; j < NB; j++)
                        if (tw0 + vt + 16 * (j0 + j) < nvalid && vr < wrows)
                            *reinterpret_cast<uint4 *>(vp + (16 * (j0 + j)) * vtok) = vv[j];
                }
            } else {
                __nv_bfloat16 *dst = P.v_new + (t0 * P.Hv + h) * (int64_t)P.V + row0 + wrow;
                for (int i = lane; i < TW * 16; i += 32) {
                    const int t = tw0 + (i >> 4), r = i & 15;
                    if (t < nvalid && r < wrows) dst[(int64_t)t * P.Hv * P.V + r] = Us[t * L::LDU + r];
                }
            }
        }
        /* vg in u's place as well (once v_new has left): MMA2's A operand
         * for the partner, read back by ldmatrix.trans */
        __syncwarp();
#pragma unroll
        for (int q = 0; q < TW / 16; q++) store_tiles_x4<true>(Us + (tw0 + q * 16) * L::LDU, L::LDU, Vg[q]);

        /* 6. H = exp(G_last) H + vg^T k, this warp's columns; with
         * OWN_FIRST its own tokens first (Vg is their A fragment: what
         * ldmatrix.trans would read back), then, past the barrier, the
         * partner's */
        const float decay = expf(g_last);
#pragma unroll
        for (int nt = 0; nt < NK; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) H[nt][e] *= decay;
        auto mma2_step = [&](int q, const uint32_t a[4]) {
#pragma unroll
            for (int nt = 0; nt < NK; nt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, Ks + k_at(q, nt));
                mma_bf16_16816(H[nt], a, b);
                mma_bf16_16816(H[nt + 1], a, b + 2);
            }
        };
        auto mma2_smem = [&](int q) {
            uint32_t a[4]; /* (rows 0-7, tokens 16q..), (8-15, 16q..), (0-7, 16q+8..), (8-15, 16q+8..) */
            ldmatrix_x4_trans(a, Us + (q * 16 + ((lane >> 4) << 3) + (lane & 7)) * L::LDU + ((lane >> 3) & 1) * 8);
            mma2_step(q, a);
        };
        if constexpr (OWN_FIRST) {
#pragma unroll
            for (int qq = 0; qq < TW / 16; qq++) mma2_step(kpart * (TW / 16) + qq, Vg[qq]);
        }
        named_barrier(1 + rg, 32 * KS); /* the row group's vg (and, before it, reads of Hw) complete */
#pragma unroll
        for (int pp = OWN_FIRST ? 1 : 0; pp < KS; pp++) /* (OWN_FIRST: own half done) */
#pragma unroll
            for (int qq = 0; qq < TW / 16; qq++) mma2_smem(((kpart + pp) % KS) * (TW / 16) + qq);
        /* this thread is done with the stage: every thread arrives, since an
         * arrival releases only the arriving thread's own reads */
        if constexpr (L::PROD) mbar_arrive(empty + slot);
        /* for the next chunk's MMA1 and h_out; the partner's reads of Hw
         * ended before the barrier above */
        stage_h();
        if (writes) {
            hp += hstep;
            if (vp) vp += BT * vtok;
        }
    }
    cp_async_wait<0>();

    /* ---- the state after this block's chunks ---- */
    float *out = nullptr;
    int64_t base = 0;
    int kv = 0;
    bool rows_k = true; /* out is [rows][K] */
    if (MODE == MODE_SUMMARY && P.transition) {
        /* a whole-sequence summary (gdn_chunk_forward_summary) */
        out = trans_rows ? P.transition : P.final_state;
        base = head * (trans_rows ? P.K : P.V) * P.K;
        kv = P.kv_layout;
        rows_k = trans_rows;
    } else if (MODE == MODE_SUMMARY && !lead) {
        out = P.summary;
        base = (((int64_t)(seg - 1) * P.N * P.Hv + head) * (P.V + P.K) + (trans_rows ? P.V : 0)) * P.K;
    } else if (seg == P.segments - 1) {
        out = P.final_state; /* may be NULL */
        base = head * P.V * P.K;
        kv = P.kv_layout;
        rows_k = false;
    } else if (lead) {
        out = P.h_start; /* segment 1's start */
        base = head * P.V * P.K;
    }
    if (out) store_state(out + base, rows_k, kv);
}

/* h_start[s+1] = h_start[s] P_s + b_s for s = 1..S-2 (h_start[1],
 * segment 0's end, comes from the lead blocks of the summary launch).
 * One block of 8 warps per (sequence, head, 16 state rows), which it keeps
 * in shared memory across the segments; warp w computes columns
 * [w KP/8, (w+1) KP/8) of each product on tensor cores in split tf32
 * (split_tf32: about 2^-20 relative, an f32 product's accuracy), the
 * big x big products and the two cross terms in separate accumulators
 * (two short chains). h is kept split, big and small halves, in A
 * fragment order: split once a step, not by every warp at every k-step,
 * and a k-step's A fragments are two 16-byte loads.
 * The P_s do not depend on the serial chain, and a warp reads only its
 * own columns of them, so each warp streams its [K][KP/8] slices through
 * a ring of its own (tiles of COMBINE_JB rows, all segments' tiles one
 * sequence) and meets the other warps only twice a step, to exchange h.
 * H100, tp8_t64k's six steps (ncu, warm caches): 35 us with one ring a
 * block and a __syncthreads a tile; 27 with a ring a warp (then about
 * 1600 instructions a warp a step, issued on 45% of the cycles); 23 so
 * (21 once the launch bounds freed its registers and a thread's first
 * loads of h went out together).
 * What is left is each step's serial chain (tile, split, three dependent
 * mma a k-step), about 3 us: a whole step of tiles in flight was no
 * faster. */
constexpr int COMBINE_ROWS = 16;
constexpr int COMBINE_THREADS = 256;
constexpr int COMBINE_JB = 16; /* rows of P_s a ring tile */
/* a warp's ring depth, dividing a step's tiles so that a tile's slot is
 * its place in the step: four (H100, K = 128: four and eight timed the
 * same), two at K = 256, so that the block fits the 99 KB of sm_86/89 */
__host__ __device__ constexpr int combine_stages(int kp) { return kp > 128 ? 2 : 4; }
/* a warp's ring row pitch: its cw columns plus a pad that makes the B
 * fragment reads conflict-free (4 tig rows on banks 0, 8, 16, 24 apart) */
__host__ __device__ constexpr int combine_cld(int cw) { return cw == 8 ? 8 : cw + 8; }

/* Shared memory of combine_kernel<KP, CS>: the 8 warps' rings (KP / (8 CS)
 * columns each), then h's big and small halves ([KP / 8][32 lanes][4]
 * each). */
constexpr size_t combine_smem_bytes(int kp, int cs = 1) {
    return ((size_t)8 * combine_stages(kp) * COMBINE_JB * combine_cld(kp / (8 * cs)) + 2 * COMBINE_ROWS * kp) * 4;
}

/* (one block a multiprocessor in the bounds: without it ptxas held
 * KP = 128 to 128 registers and spilled 16 bytes)
 * CS = 2: a single step (three segments, no varlen) needs no h from its
 * own outputs, so two blocks share its columns: half the serial work a
 * warp, the same products and order, the same bits. */
template <int KP, int CS>
__global__ void __launch_bounds__(COMBINE_THREADS, 1) combine_kernel(const __grid_constant__ Params P) {
    constexpr int CW = KP / (8 * CS), CLD = combine_cld(CW);
    constexpr int JB = COMBINE_JB, TILE = JB * CLD, STAGES = combine_stages(KP);
    constexpr int JT = KP / JB; /* P_s tiles a step (rows past K zero) */
    constexpr int NT = CW / 8;  /* 8-column n-tiles a warp */
    static_assert(COMBINE_THREADS == 256 && KP % 64 == 0 && CW % 8 == 0, "8 warps over KP / CS columns");
    static_assert(JT % STAGES == 0 && (JB * CW / 4) % 32 == 0, "a tile's slot is its place in the step");
    extern __shared__ __align__(16) float cs[];
    const int N = P.N, K = P.K, V = P.V;
    const int tiles = (V + COMBINE_ROWS - 1) / COMBINE_ROWS;
    const int part = (int)(blockIdx.x % CS); /* its columns [part KP / CS, ...) */
    const int tile = (int)(blockIdx.x / CS % tiles);
    const int64_t head = blockIdx.x / CS / tiles; /* n * Hv + h */
    const int row0 = tile * COMBINE_ROWS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int c0 = part * (KP / CS) + warp * CW;
    float *ring = cs + warp * STAGES * TILE; /* this warp's [STAGES][JB][CLD], zero past K */
    uint32_t *hb = reinterpret_cast<uint32_t *>(cs + 8 * STAGES * TILE); /* zero past K, V */
    uint32_t *hsm = hb + COMBINE_ROWS * KP;
    /* segment s + 1's entries: segment-major, or by sequence (varlen) */
    int steps = P.segments - 2;    /* s = 1..S-2, as step s - 1 */
    int64_t first = head, stride = (int64_t)N * P.Hv;
    if (P.seg_off) {
        const int64_t n = head / P.Hv;
        steps = (int)(P.seg_off[n + 1] - P.seg_off[n]) - 2;
        first = (P.seg_off[n] - n) * P.Hv + head % P.Hv;
        stride = P.Hv;
    }
    if (steps <= 0) return; /* (a varlen sequence of one or two segments) */
    if (CS > 1 && steps != 1) __trap(); /* (launch_combine: one step only) */
    auto seg_base = [&](int s) { return P.summary + (first + s * stride) * (V + K) * K; };
    auto start = [&](int s) { return P.h_start + (first + s * stride) * V * K; };
    /* tile jt of step s (this warp's columns of P_s) into its stage;
     * 16-byte copies where rows stay aligned */
    auto issue = [&](int s, int jt) {
        const float *Pm = seg_base(s) + (int64_t)V * K;
        const int j0 = jt * JB;
        float *dst = ring + (jt % STAGES) * TILE;
        if (K % 4 == 0) {
#pragma unroll
            for (int m = 0; m < JB * CW / 128; m++) {
                const int e = lane + 32 * m, jj = e / (CW / 4), c = (e % (CW / 4)) * 4;
                const bool ok = j0 + jj < K && c0 + c < K;
                cp_async16(dst + jj * CLD + c, ok ? Pm + (int64_t)(j0 + jj) * K + c0 + c : Pm, ok ? 16 : 0);
            }
        } else {
            for (int e = lane; e < JB * CW; e += 32) {
                const int jj = e / CW, c = e % CW;
                const bool ok = j0 + jj < K && c0 + c < K;
                cp_async4(dst + jj * CLD + c, ok ? Pm + (int64_t)(j0 + jj) * K + c0 + c : Pm, ok ? 4 : 0);
            }
        }
    };
#pragma unroll
    for (int jt = 0; jt < STAGES - 1; jt++) {
        issue(0, jt);
        cp_async_commit();
    }
    /* h (r, c) as element r >> 3 + 2 (c bit 2) of lane 4 (r & 7) + (c & 3)
     * of k-step c >> 3: the m16n8k8 A fragment */
    auto put_h = [&](int r, int c, float x) {
        const int at = ((c >> 3) * 32 + (r & 7) * 4 + (c & 3)) * 4 + (r >> 3) + 2 * ((c >> 2) & 1);
        split_tf32(x, hb[at], hsm[at]);
    };
    { /* all of a thread's loads first, then the splits: as one loop of load
       * and store each element waited out its own L2 round trip */
        constexpr int PER = COMBINE_ROWS * KP / COMBINE_THREADS;
        float x[PER];
#pragma unroll
        for (int m = 0; m < PER; m++) {
            const int i = tid + m * COMBINE_THREADS, rr = i / KP, c = i % KP;
            x[m] = row0 + rr < V && c < K ? start(0)[(int64_t)(row0 + rr) * K + c] : 0.f;
        }
#pragma unroll
        for (int m = 0; m < PER; m++) {
            const int i = tid + m * COMBINE_THREADS;
            put_h(i / KP, i % KP, x[m]);
        }
    }
    /* f(t, e, row, c) for element e of n-tile t of this thread's C
     * fragments: row gid + 8 (e >> 1), column c0 + 8 t + 2 tig + (e & 1) */
    auto each_frag = [&](auto &&f) {
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) f(t, e, row0 + gid + 8 * (e >> 1), c0 + 8 * t + 2 * tig + (e & 1));
    };
    /* b_s of this thread's outputs; the next segment's is loaded a step
     * ahead, off the chain */
    auto load_b = [&](int s, float (&b)[NT][4]) {
        const float *bs = seg_base(s);
        each_frag([&](int t, int e, int row, int c) { b[t][e] = row < V && c < K ? bs[(int64_t)row * K + c] : 0.f; });
    };
    float big[NT][4], cross[NT][4], bnext[NT][4];
    load_b(0, bnext);
    __syncthreads(); /* h written */
    const uint4 *hb4 = reinterpret_cast<const uint4 *>(hb) + lane, *hs4 = reinterpret_cast<const uint4 *>(hsm) + lane;
    for (int s = 0; s < steps; s++) {
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int e = 0; e < 4; e++) big[t][e] = bnext[t][e], cross[t][e] = 0.f;
        if (s + 1 < steps) load_b(s + 1, bnext);
#pragma unroll
        for (int jt = 0; jt < JT; jt++) {
            cp_async_wait<STAGES - 2>();
            __syncwarp(); /* the tile landed for the warp; the previous tile's stage read */
            constexpr int AHEAD = STAGES - 1;
            if (jt + AHEAD < JT) issue(s, jt + AHEAD);
            else if (s + 1 < steps) issue(s + 1, jt + AHEAD - JT);
            cp_async_commit();
            const float *ps = ring + (jt % STAGES) * TILE;
#pragma unroll
            for (int ks = 0; ks < JB; ks += 8) {
                const int kk = (jt * JB + ks) / 8;
                const uint4 hbv = hb4[kk * 32], hsv = hs4[kk * 32];
                const uint32_t ab[4] = {hbv.x, hbv.y, hbv.z, hbv.w}, as[4] = {hsv.x, hsv.y, hsv.z, hsv.w};
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const float *pp = ps + (ks + tig) * CLD + 8 * t + gid;
                    uint32_t bb[2], bsm[2];
                    split_tf32(pp[0], bb[0], bsm[0]);
                    split_tf32(pp[4 * CLD], bb[1], bsm[1]);
                    mma_tf32_1688(big[t], ab, bb);
                    mma_tf32_1688(cross[t], ab, bsm);
                    mma_tf32_1688(cross[t], as, bb);
                }
            }
        }
        __syncthreads(); /* every read of h done */
        float *next = start(s + 1);
        each_frag([&](int t, int e, int row, int c) {
            const float x = big[t][e] + cross[t][e];
            put_h(row - row0, c, x);
            if (row < V && c < K) next[(int64_t)row * K + c] = x;
        });
        __syncthreads(); /* h written */
    }
    cp_async_wait<0>();
}

/* ---- host side ---- */

/* The combine over N sequences of P.segments segments (P.summary,
 * P.h_start; P.K picks the kernel's padded K). */
template <int KP, int CS = 1>
gdn_status launch_combine_kp(gdn_context *ctx, const Params &P, int64_t N, cudaStream_t stream) {
    const int tiles = (P.V + COMBINE_ROWS - 1) / COMBINE_ROWS;
    const size_t bytes = combine_smem_bytes(KP, CS); /* 24-72 KB */
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(combine_kernel<KP, CS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           (int)bytes));
    combine_kernel<KP, CS><<<(unsigned)(N * P.Hv * tiles * CS), COMBINE_THREADS, bytes, stream>>>(P);
    GDN_CUDA_CHECK_LAUNCH(ctx, "combine_kernel");
    return GDN_SUCCESS;
}

/* A single step (three segments, no varlen) splits its columns over two
 * blocks where a warp then still has a whole 8-column n-tile (K > 64);
 * GDN_CUDA_COMBINE_COLS=1 | 2 forces it off or on (on only there). */
gdn_status launch_combine(gdn_context *ctx, const Params &P, int64_t N, cudaStream_t stream) {
    const bool one_step = P.segments == 3 && !P.seg_off && P.K > 64;
    const bool cols = env_override("GDN_CUDA_COMBINE_COLS", one_step ? 2 : 1, {1, 2}) == 2 && one_step;
    if (P.K <= 64) return launch_combine_kp<64>(ctx, P, N, stream);
    if (P.K <= 128)
        return cols ? launch_combine_kp<128, 2>(ctx, P, N, stream) : launch_combine_kp<128>(ctx, P, N, stream);
    return cols ? launch_combine_kp<256, 2>(ctx, P, N, stream) : launch_combine_kp<256>(ctx, P, N, stream);
}

struct Plan {
    int kp;     /* K padded to the kernel's: 64, 128 or 256 */
    int bv;     /* state rows a block */
    int stages; /* depth of the cp.async ring */
    int final_stages; /* ... for a split problem's state pass */
    bool vec;   /* 16-byte loads and stores */
    bool producer; /* a warp of its own issues the ring's loads (vec only) */
    bool tma;      /* ... whole chunks' w and k by tensor copies (sm_90) */
    int segments;
    int chunks_first; /* segment 0's chunks */
    int chunks_per_segment; /* each later segment's */
    size_t summary_bytes, h_start_bytes;
    size_t scratch() const { return summary_bytes + h_start_bytes; }
};

/* Segments for the split path: as many as keep the final pass (segments
 * 1..S-1: segment 0's runs in the summary launch) in one wave, blocks x
 * (S - 1) <= multiprocessors, each keeping at least 16 chunks; 1 = no
 * split. blocks: the blocks of the unsplit launch. (H100, tp8_t64k state,
 * before segment 0 moved into the summary launch: 8 segments of 64-row
 * tiles, 128 blocks, 0.713 ms; 9, 144 blocks, two waves, 0.908; 4 of
 * 32-row tiles 0.800; seed_bench: 4 segments of 32 rows 0.085, of 64 rows
 * 0.104.) */
int64_t split_segments(const gdn_problem *p, int64_t blocks, int sms) {
    const int64_t nchunks = gdn_ceil_div(p->T, BT);
    if (p->cu_seqlens || 2 * blocks > sms || nchunks < 64) return 1;
    int64_t s = sms / blocks + 1;
    if (s > nchunks / 16) s = nchunks / 16;
    if (s > 64) s = 64;
    return s < 2 ? 1 : s;
}

/* per_seq: decide the split from one sequence's blocks, not the batch's,
 * so that a sequence's bits do not depend on the batch around it (the
 * forward's batch invariance; the row tile never changes the bits). */
Plan make_plan(const gdn_context *ctx, const gdn_problem *p, bool per_seq) {
    Plan pl{};
    pl.kp = p->K <= 64 ? 64 : p->K <= 128 ? 128 : 256;
    pl.vec = p->K % 8 == 0 && p->V % 8 == 0;
    const int64_t N = gdn_problem_num_seqs(p);
    const int sms = sm_count(ctx);
    const int64_t blocks32 = N * p->Hv * gdn_ceil_div(p->V, 32);
    const int64_t blocks64 = N * p->Hv * gdn_ceil_div(p->V, 64);
    /* Rows a block: 64 (four row groups, eight warps, sharing each chunk's
     * w and k tiles: half the shared-memory fill traffic of 32) where that still gives every
     * multiprocessor a block or lets a split problem cut more segments;
     * else 32, for twice the blocks. */
    pl.bv = 32;
    const bool can64 = pl.vec;
    if (per_seq) {
        /* a split problem takes the tile that allows more segments */
        const int64_t s32 = split_segments(p, p->Hv * gdn_ceil_div(p->V, 32), sms);
        const int64_t s64 = can64 ? split_segments(p, p->Hv * gdn_ceil_div(p->V, 64), sms) : 1;
        const bool split64 = s32 > 1 && s64 > s32; /* only where can64 */
        pl.segments = (int)(split64 ? s64 : s32);
        if (split64 || (can64 && 10 * blocks64 * pl.segments >= 9 * (int64_t)sms)) pl.bv = 64;
    } else {
        const int64_t seg32 = split_segments(p, blocks32, sms);
        if (can64 && (10 * blocks64 >= 9 * sms ||
                      (seg32 > 1 && split_segments(p, blocks64, sms) > seg32)))
            pl.bv = 64;
    }
    /* 128 rows (a whole head at V <= 128, eight row groups sharing each
     * chunk's w and k tiles, a three-deep ring, one block a multiprocessor)
     * where 64-row tiles would put two blocks on a multiprocessor, each
     * with a two-deep ring (H100, q35_b4_t8k state: 0.578 -> 0.556 ms, with
     * the cp.async producer; 0.561 with tensor copies). sm_90 only (not
     * measured elsewhere; an A100's shared memory does not hold it), and
     * unsplit problems only (none of the split shapes has the blocks). */
    const int64_t blocks128 = N * p->Hv * gdn_ceil_div(p->V, 128);
    const bool can128 = can64 && pl.kp <= 128 && ctx->cc_major >= 9 &&
                        (size_t)smem_bytes(pl.kp, 8, 3, true) <= ctx->smem_optin;
    if (can128 && blocks64 > sms && 10 * blocks128 >= 9 * (int64_t)sms && (!per_seq || pl.segments == 1))
        pl.bv = 128;
    if (can64) pl.bv = env_override("GDN_CUDA_ROWS_PER_BLOCK", pl.bv, {32, 64, 128}); /* force the row tile */
    if (pl.bv == 128 && !can128) pl.bv = 64;
    /* Only what the device's shared memory holds: the 64-row tile at
     * K = 256 is 184 KB (Hopper's 227 KB, not the A100's 163 KB). */
    if (pl.bv == 64 && (size_t)smem_bytes(pl.kp, 4, 2, true) > ctx->smem_optin) pl.bv = 32;
    int64_t blocks = pl.bv == 128 ? blocks128 : pl.bv == 64 ? blocks64 : blocks32;
    if (!per_seq) pl.segments = (int)split_segments(p, blocks, sms);
    /* GDN_CUDA_SEGMENTS=1..64 forces the split (1: none) of a problem
     * without varlen, to time other counts; results stay within the tests'
     * bounds, not bitwise the same */
    if (!p->cu_seqlens) pl.segments = env_override("GDN_CUDA_SEGMENTS", pl.segments, 1, 64);
    if (pl.bv == 128 && pl.segments > 1) { /* (forced by the environment) */
        pl.bv = 64;
        blocks = blocks64;
    }
    /* The largest launch: a split problem's state pass has S - 1 times the
     * blocks, its summary launch those of segment 0 and (V + K) / BV row
     * tiles a head for S - 2 segments. */
    const int64_t state_blocks = blocks * (pl.segments > 1 ? pl.segments - 1 : 1);
    int64_t launch_blocks = state_blocks;
    if (pl.segments > 1) {
        const int64_t summary = blocks + N * p->Hv * gdn_ceil_div(p->V + p->K, pl.bv) * (pl.segments - 2);
        if (summary > launch_blocks) launch_blocks = summary;
    }
    /* A lone 32-row block on a multiprocessor gets a four-deep ring where it
     * fits, a 64-row one three (H100, session 9, ms, three -> four stages:
     * q35_t8k 0.152 -> 0.146, q35_t32k 0.584 -> 0.565, where a chunk's loads
     * took longer to land than two chunks' work, so the ring's depth, not
     * the chain, set the pace; but 64-row q397_t8k 0.258 -> 0.282 and
     * tp8_t64k's state pass 0.60 -> 0.61). Where a launch has more blocks
     * than multiprocessors (or K = 256, whose stages are twice the size),
     * two, so that two blocks fit a multiprocessor and the launch runs in
     * one wave, not two. (Measured, H100 tp8_t64k, 9 segments: 0.924 ->
     * 0.915 ms, forward 1.476 -> 1.441; two 64-row blocks on a
     * multiprocessor each run nearly half as fast, so little is won.)
     * Rings of 3 and 4 stages are 132-174 KB: fewer where the device holds
     * less (sm_80: 163 KB; sm_86 / sm_89: 99 KB). */
    const int lone_stages = pl.bv == 32 ? 4 : 3;
    auto deepest = [&](int want) {
        if (want > lone_stages) want = lone_stages;
        while (want > 2 && (size_t)smem_bytes(pl.kp, pl.bv / 16, want, true) > ctx->smem_optin) want--;
        return want;
    };
    pl.stages = (!pl.vec || pl.kp == 256 || launch_blocks > sms) ? 2 : deepest(4);
    if (pl.stages > 2) pl.stages = deepest(env_override("GDN_CUDA_STAGES", pl.stages, {3, 4}));
    if (pl.bv == 128) pl.stages = 3; /* (the only 128-row ring; any launch size) */
    /* A split problem's state pass is one wave of lone blocks even where
     * its summary pass took the 2-deep ring: give it the deep ring too. */
    pl.final_stages = pl.stages;
    if (pl.segments > 1 && pl.vec && pl.kp < 256 && state_blocks <= sms) pl.final_stages = deepest(4);
    if (pl.vec && pl.kp < 256 && pl.bv < 128)
        pl.final_stages = deepest(env_override("GDN_CUDA_FINAL_STAGES", pl.final_stages, {2, 3, 4}));
    /* The producer warp: on sm_80 for split problems and K = 256, where it
     * fills the padded layout by cp.async (measured with that code on an
     * H100, ms, without -> with: seed_bench 0.095 -> 0.085, tp8_t64k 1.063
     * -> 0.921, k256_t8k 0.476 -> 0.436, but 2-7% slower at K <= 128
     * unsplit). On sm_90 always, its w and k tiles by tensor copies except
     * for unsplit 64-row tiles at K <= 128, where its 80 cp.async copies a
     * lane a chunk keep up (H100, session 7, ms, without producer /
     * cp.async producer / TMA producer: q35_t8k 0.191 / 0.165 / 0.155,
     * q35_t32k 0.726 / 0.630 / 0.597, tp8_t64k 0.792 / 0.715 / 0.693,
     * 64-row k256_t8k 0.480 / 0.459 / 0.390; but 64-row q397_t8k 0.287 /
     * 0.258 / 0.263 and q35_b4_t8k 0.648 / 0.580 / 0.610). */
    pl.producer = pl.vec && (ctx->cc_major >= 9 || pl.kp == 256 || pl.segments > 1);
    if (pl.vec) pl.producer = env_override("GDN_CUDA_PRODUCER", pl.producer ? 1 : 0, {0, 1}) != 0;
    if (pl.bv == 128) pl.producer = true; /* (the only 128-row kernel) */
    /* (GDN_CUDA_TMA=1 forces the tensor copies only where a producer runs
     * the sm_90 code) */
    pl.tma = env_override("GDN_CUDA_TMA", pl.bv == 32 || pl.segments > 1 || pl.kp == 256, {0, 1}) != 0 &&
             pl.producer && ctx->cc_major >= 9;
    pl.chunks_first = pl.chunks_per_segment = 0;
    const int64_t nchunks = gdn_ceil_div(p->T, BT);
    if (pl.segments > nchunks) pl.segments = (int)nchunks; /* a forced count */
    if (pl.segments > 1) {
        /* Segment 0 runs in the summary launch, where its blocks (state
         * blocks: u in, h_out and v_new out) share multiprocessors with
         * summary blocks. It gets LEAD_PCT % of the other segments' chunks
         * (they get the rest, all whole): H100, tp8_t64k state, ms, at 55 /
         * 65 / 70 / 75 / 80 / 90 %: 0.616 / 0.610 / 0.607 / 0.607 / 0.603 /
         * 0.602; seed_bench 0.065 / 0.063 / 0.063 / 0.063 / 0.061 / 0.061. */
        constexpr int64_t LEAD_PCT = 90;
        const int64_t s1 = pl.segments - 1;
        int64_t cps = gdn_ceil_div(100 * nchunks, 100 * s1 + LEAD_PCT);
        if (cps > (nchunks - 1) / s1) cps = (nchunks - 1) / s1; /* segment 0 keeps a chunk */
        if (cps < 1) cps = 1;
        pl.chunks_per_segment = (int)cps;
        pl.chunks_first = (int)(nchunks - s1 * cps);
        const int64_t heads = N * p->Hv;
        pl.summary_bytes = align256((size_t)(pl.segments - 2) * heads * (p->V + p->K) * p->K * sizeof(float));
        pl.h_start_bytes = align256((size_t)(pl.segments - 1) * heads * p->V * p->K * sizeof(float));
    }
    return pl;
}

template <class L, bool VEC, int MODE>
gdn_status launch(gdn_context *ctx, const Params &P, int64_t blocks, cudaStream_t stream) {
    auto kern = chunk_state_kernel<L, VEC, MODE>;
    const int bytes = L::BYTES;
    if ((size_t)bytes > ctx->smem_optin)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "gdn_chunk_state: kernel needs %d bytes of shared memory, device allows %zu",
                        bytes, ctx->smem_optin);
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    if (blocks > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_chunk_state: %lld blocks (sequences * Hv * V/%d) exceed the grid limit",
                        (long long)blocks, L::BV);
    if (blocks == 0) return GDN_SUCCESS;
    kern<<<(unsigned)blocks, L::NTHREADS, bytes, stream>>>(P);
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_state_kernel");
    return GDN_SUCCESS;
}

/* The state pass (h_out, v_new, the end state), with the f32 chunk-start
 * states where asked. */
template <class L, bool VEC>
gdn_status launch_state(gdn_context *ctx, const Params &P, int64_t blocks, cudaStream_t stream) {
    if (P.chunk_states) return launch<L, VEC, MODE_STATE_F32>(ctx, P, blocks, stream);
    return launch<L, VEC, MODE_STATE>(ctx, P, blocks, stream);
}

/* The launches of one call: with P.transition set, only the summary pass
 * over whole sequences; else (split) summary, combine, then the state pass. */
template <class L, bool VEC>
gdn_status run_passes(gdn_context *ctx, Params P, const Plan &pl, int64_t N, cudaStream_t stream) {
    constexpr int BV = L::BV;
    const int vtiles = (P.V + BV - 1) / BV;
    const int ktiles = (P.K + BV - 1) / BV;
    if (P.transition) {
        P.row_tiles = vtiles + ktiles;
        P.seg_launch = 1;
        return launch<L, VEC, MODE_SUMMARY>(ctx, P, N * P.Hv * P.row_tiles, stream);
    }
    if (pl.segments > 1) {
        /* segment 0's state pass and segments 1..S-2's summaries */
        Params S = P;
        S.row_tiles = vtiles + ktiles;
        S.seg_first = 1;
        S.seg_launch = pl.segments - 2;
        S.lead_blocks = N * P.Hv * vtiles;
        gdn_status st = launch<L, VEC, MODE_SUMMARY>(
            ctx, S, S.lead_blocks + N * P.Hv * S.row_tiles * S.seg_launch, stream);
        if (st != GDN_SUCCESS) return st;
        if (pl.segments > 2 && (st = launch_combine(ctx, S, N, stream)) != GDN_SUCCESS) return st;
    }
    P.row_tiles = vtiles;
    P.seg_first = pl.segments > 1 ? 1 : 0;
    P.seg_launch = pl.segments - P.seg_first;
    const int64_t blocks = N * P.Hv * vtiles * P.seg_launch;
    if constexpr (VEC && L::KP < 256) {
        if (pl.final_stages == 3 && L::STAGES != 3)
            return launch_state<Smem<L::KP, L::RG, L::KS, 3, L::PROD>, VEC>(ctx, P, blocks, stream);
        if constexpr (L::RG == 2) /* four stages: 32-row tiles only */
            if (pl.final_stages == 4 && L::STAGES != 4)
                return launch_state<Smem<L::KP, L::RG, L::KS, 4, L::PROD>, VEC>(ctx, P, blocks, stream);
    }
    return launch_state<L, VEC>(ctx, P, blocks, stream);
}

/* The compiled configurations: the generic (unaligned) path, and per K the
 * row tiles, ring depths and load schemes make_plan can choose. */
template <int KP, int RG, int STAGES>
gdn_status run_vec(gdn_context *ctx, const Params &P, const Plan &pl, int64_t N, cudaStream_t stream) {
    return pl.producer ? run_passes<Smem<KP, RG, KSPLIT, STAGES, true>, true>(ctx, P, pl, N, stream)
                       : run_passes<Smem<KP, RG, KSPLIT, STAGES, false>, true>(ctx, P, pl, N, stream);
}

template <int KP>
gdn_status dispatch(gdn_context *ctx, const Params &P, const Plan &pl, int64_t N,
                    cudaStream_t stream) {
    if (!pl.vec) return run_passes<Smem<KP, 2, KSPLIT, 2, false>, false>(ctx, P, pl, N, stream);
    if constexpr (KP < 256) {
        if (pl.bv == 128) /* (producer, three stages, unsplit only) */
            return run_passes<Smem<KP, 8, KSPLIT, 3, true>, true>(ctx, P, pl, N, stream);
        if (pl.stages == 4) return run_vec<KP, 2, 4>(ctx, P, pl, N, stream); /* (32-row tiles only) */
        if (pl.stages == 3)
            return pl.bv == 64 ? run_vec<KP, 4, 3>(ctx, P, pl, N, stream) : run_vec<KP, 2, 3>(ctx, P, pl, N, stream);
    }
    return pl.bv == 64 ? run_vec<KP, 4, 2>(ctx, P, pl, N, stream) : run_vec<KP, 2, 2>(ctx, P, pl, N, stream);
}

} // namespace

/* cuTensorMapEncodeTiled, looked up in the driver once (libgdn does not
 * link libcuda); NULL where the driver lacks it. */
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
        void *f = nullptr;
        cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
        const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else
        const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
        if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
    }();
    return fn;
}

/* A rank-3 bf16 tensor map (dims innermost first, byte strides of the
 * outer two), boxes read whole: elements past dims are zero-filled. */
static bool encode_bf16_3d(CUtensorMap *m, const void *base, const cuuint64_t (&dims)[3],
                           const cuuint64_t (&strides)[2], const cuuint32_t (&box)[3], CUtensorMapSwizzle swizzle,
                           CUtensorMapL2promotion promotion) {
    const PFN_cuTensorMapEncodeTiled_v12000 enc = tensor_map_encoder();
    if (!enc) return false;
    const cuuint32_t elem_strides[3] = {1, 1, 1};
    return enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void *>(base), dims, strides, box,
               elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* A bf16 [tokens][heads][width] tensor (width % 8 == 0, 16-byte aligned)
 * as a map of boxes of box_w columns x 64 tokens of one head. */
static bool encode_bf16_map(CUtensorMap *m, const void *base, int64_t tokens, int64_t heads, int width,
                            int box_w, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion) {
    const cuuint64_t dims[3] = {(cuuint64_t)width, (cuuint64_t)heads, (cuuint64_t)tokens};
    const cuuint64_t strides[2] = {(cuuint64_t)width * 2, (cuuint64_t)(heads * width * 2)};
    const cuuint32_t box[3] = {(cuuint32_t)box_w, 1, BT};
    return encode_bf16_3d(m, base, dims, strides, box, swizzle, promotion);
}

/* The state kernel's w and k: boxes of 64 columns, 128-byte swizzled in
 * shared memory, zeros past K. */
bool encode_tile_map(CUtensorMap *m, const void *base, int64_t tokens, int64_t heads, int K) {
    return encode_bf16_map(m, base, tokens, heads, K, 64, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

bool encode_tp_maps(CUtensorMap m[4], const void *base, int64_t tiles, int64_t kind_bytes) {
    if (tiles > INT32_MAX / BT || kind_bytes % 16) return false; /* row coordinates are int32 */
    for (int rb = 0; rb < 4; rb++) {
        /* columns past 16 (rb + 1) lie outside the tensor: the copy fills them with zeros */
        const cuuint64_t dims[3] = {(cuuint64_t)(16 * (rb + 1)), (cuuint64_t)(tiles * BT), 2};
        const cuuint64_t strides[2] = {BT * 2, (cuuint64_t)kind_bytes};
        const cuuint32_t box[3] = {BT, 16, 1};
        if (!encode_bf16_3d(&m[rb], base, dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B))
            return false;
    }
    return true;
}

bool encode_o_map(CUtensorMap *m, void *o, int64_t tokens, int64_t Hv, int V) {
    return encode_bf16_map(m, o, tokens, Hv, V, 16, CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

size_t chunk_state_scratch_bytes(const gdn_context *ctx, const gdn_problem *p, bool per_seq_split) {
    return make_plan(ctx, p, per_seq_split).scratch();
}

gdn_status launch_segment_combine(gdn_context *ctx, const float *seg_summary, float *h_start, int N,
                                  int Hv, int K, int V, int segments, cudaStream_t stream,
                                  const int64_t *seg_off) {
    Params P{};
    P.seg_off = seg_off;
    P.summary = const_cast<float *>(seg_summary); /* (read only by the combine) */
    P.h_start = h_start;
    P.N = N;
    P.Hv = Hv;
    P.K = K;
    P.V = V;
    P.segments = segments;
    return launch_combine(ctx, P, N, stream);
}

gdn_status run_chunk_state(gdn_context *ctx, const gdn_problem *p, const StateArgs &a,
                           void *scratch, cudaStream_t stream) {
    Plan pl = make_plan(ctx, p, a.per_seq_split);
    const uintptr_t align = (uintptr_t)a.k | (uintptr_t)a.w | (uintptr_t)a.u |
                            (uintptr_t)a.h_out | (uintptr_t)a.v_new;
    if (align % 16 != 0) pl.vec = pl.producer = pl.tma = false;
    if (a.transition) { /* one pass over whole sequences, 32-row tiles */
        pl.bv = 32;
        pl.stages = 2;
        pl.segments = 1;
        pl.producer = pl.tma = false;
    }
    if (a.cu_seqlens && !a.chunk_offsets && !a.transition) /* the kernel reads h_out offsets there */
        return gdn_fail(ctx, GDN_ERROR_INTERNAL, "run_chunk_state: varlen without chunk offsets");
    if (a.N > INT32_MAX || p->Hv > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_chunk_state: N (%lld) and Hv (%lld) must each fit in int32",
                        (long long)a.N, (long long)p->Hv);
    Params P{};
    P.k = reinterpret_cast<const __nv_bfloat16 *>(a.k);
    P.w = reinterpret_cast<const __nv_bfloat16 *>(a.w);
    P.u = reinterpret_cast<const __nv_bfloat16 *>(a.u);
    P.g = a.g;
    P.kscale = a.kscale;
    P.h0 = a.h0;
    P.h_out = a.h_out;
    P.v_new = a.v_new;
    P.final_state = a.final_state;
    P.chunk_states = a.chunk_states;
    P.transition = a.transition;
    P.cu_seqlens = a.cu_seqlens;
    P.chunk_offsets = a.chunk_offsets;
    P.T = p->T;
    P.N = (int)a.N;
    set_heads(P, p);
    P.kv_layout = p->state_layout == GDN_STATE_KV;
    P.hout_kv = a.hout_kv;
    /* The producer's tensor copies (sm_90): maps of w and k over all tokens.
     * Without them (pl.tma off, or no encoder in the driver) the sm_90
     * producer kernels fill the same swizzled layout by cp.async. */
    const int64_t tokens = p->cu_seqlens ? p->T : a.N * p->T;
    if (pl.tma && tokens <= INT32_MAX)
        P.tma = encode_tile_map(&P.tmap_w, a.w, tokens, p->Hv, (int)p->K) &&
                encode_tile_map(&P.tmap_k, a.k, tokens, p->Hk, (int)p->K);
    P.segments = a.transition ? 2 : pl.segments; /* summary: segment 0 is the whole sequence */
    P.chunks_first = a.transition ? (1 << 30) : pl.chunks_first;
    P.chunks_per_segment = pl.chunks_per_segment;
    uint8_t *ws = static_cast<uint8_t *>(scratch);
    if (!a.transition && pl.segments > 1) {
        P.summary = reinterpret_cast<float *>(ws);
        P.h_start = reinterpret_cast<float *>(ws + pl.summary_bytes);
    }
    switch (pl.kp) {
    case 64: return dispatch<64>(ctx, P, pl, a.N, stream);
    case 128: return dispatch<128>(ctx, P, pl, a.N, stream);
    default: return dispatch<256>(ctx, P, pl, a.N, stream);
    }
}

} // namespace gdn

using namespace gdn;

/* The public op's workspace: the split scratch, then (varlen) the chunk
 * offsets and, without cu_seqlens_device, a copy of cu_seqlens. */
namespace {
struct PublicWs {
    size_t scratch, offsets, cu;
    size_t total() const { return scratch + offsets + cu; }
};
PublicWs public_ws(const gdn_context *ctx, const gdn_problem *p) {
    PublicWs w{};
    w.scratch = chunk_state_scratch_bytes(ctx, p, false);
    if (p->cu_seqlens) {
        w.offsets = align256((size_t)(p->num_seqs + 1) * sizeof(int64_t));
        if (!p->cu_seqlens_device) w.cu = align256((size_t)(p->num_seqs + 1) * sizeof(int32_t));
    }
    return w;
}
} // namespace

extern "C" size_t gdn_cuda_chunk_state_workspace_size(const gdn_context *ctx, const gdn_problem *p) {
    return public_ws(ctx, p).total();
}

extern "C" gdn_status gdn_cuda_chunk_state(gdn_context *ctx, const gdn_chunk_state_args *a) {
    const gdn_problem *p = a->p;
    DeviceGuard guard(ctx->device);
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    const PublicWs w = public_ws(ctx, p);
    uint8_t *ws = static_cast<uint8_t *>(a->workspace);
    StateArgs s{};
    s.k = reinterpret_cast<const __nv_bfloat16 *>(a->k);
    s.w = reinterpret_cast<const __nv_bfloat16 *>(a->w);
    s.u = reinterpret_cast<const __nv_bfloat16 *>(a->u);
    s.g = a->g;
    s.h0 = a->h0;
    s.h_out = reinterpret_cast<__nv_bfloat16 *>(a->h_out);
    s.hout_kv = p->state_layout == GDN_STATE_KV;
    s.v_new = reinterpret_cast<__nv_bfloat16 *>(a->v_new);
    s.final_state = a->final_state;
    s.N = a->N;
    if (p->cu_seqlens) {
        s.cu_seqlens = p->cu_seqlens_device;
        if (!s.cu_seqlens) {
            int32_t *cu = reinterpret_cast<int32_t *>(ws + w.scratch + w.offsets);
            GDN_CUDA_TRY(ctx, cudaMemcpyAsync(cu, p->cu_seqlens,
                                              (size_t)(p->num_seqs + 1) * sizeof(int32_t),
                                              cudaMemcpyHostToDevice, stream));
            s.cu_seqlens = cu;
        }
        int64_t *off = reinterpret_cast<int64_t *>(ws + w.scratch);
        gdn_status st = launch_chunk_offsets(ctx, s.cu_seqlens, (int)a->N, off, stream);
        if (st != GDN_SUCCESS) return st;
        s.chunk_offsets = off;
    }
    return run_chunk_state(ctx, p, s, ws, stream);
}

/*
 * gdn_chunk_state on CUDA: the inter-chunk state recurrence (SPEC 3 step 4).
 *
 * One block owns BV rows of one head's state [V, K] and walks that
 * sequence's chunks in order; the state tile lives in registers as mma.sync
 * accumulators (f32), the chunk inputs (w, k, u, g) stream through a
 * cp.async ring of shared-memory stages. Per chunk:
 *   Hs      = bf16(H)                          (shared; also stored as h_out)
 *   vn^T    = u^T - Hs w^T                     (tensor cores, f32 accumulate)
 *   vg^T    = bf16(vn^T * exp(G_last - G_t))   (rows past the end -> 0)
 *   H       = exp(G_last) H + vg^T k           (tensor cores)
 * Rows of the state are independent, so blocks never communicate.
 *
 * Few heads, long sequences (the tp8 shapes) leave most SMs idle. Then the
 * sequence is cut into S segments and processed in three launches:
 *   1. summary: each segment s < S-1 runs from a zero state, and from the
 *      identity for K extra "transition" rows with u = 0, giving b_s and P_s
 *      with state_after = state_before * P_s + b_s (the update is affine);
 *   2. combine: h_start[s+1] = h_start[s] P_s + b_s, serially, in f32;
 *   3. each segment reruns from its true h_start, writing h_out and v_new.
 * This costs about 2.5x the arithmetic but S times the parallelism.
 */
#include <stdlib.h>

#include "chunk_forward.cuh"
#include "chunk_state.cuh"

namespace gdn {
namespace {

constexpr int BT = GDN_CHUNK;
/* Warps per block: 8 for K > 64, so that each scheduler has two warps to
 * switch between; 4 for K <= 64, where 8 would leave a warp one column. */
template <int KP> struct Warps {
    static constexpr int NW = KP >= 128 ? 8 : 4;
    static constexpr int NTHREADS = NW * 32;
};

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
    int seg_launch;   /* segments per sequence covered by this launch */
    int chunks_per_segment;
    float *summary;   /* [S-1][N][Hv][V+K][K] f32 */
    float *transition; /* whole-sequence summary: [N][Hv][K][K], partial in final_state */
    float *h_start;   /* [S][N][Hv][V][K] f32, NULL when S == 1 */
};

template <int KP, int BV, int STAGES> struct Smem {
    static constexpr int LDK = KP + 8; /* +16 bytes a row: conflict-free ldmatrix */
    static constexpr int LDU = BV + 8;
    static constexpr int LDG = BT + 8;
    static constexpr int W = 0;
    static constexpr int KC = W + BT * LDK * 2;
    static constexpr int U = KC + BT * LDK * 2;
    static constexpr int G = U + BT * LDU * 2;
    static constexpr int KS = G + BT * 4; /* kscale, when given */
    static constexpr int STAGE = KS + BT * 4;
    static constexpr int HS = STAGES * STAGE;
    static constexpr int VN = HS + BV * LDK * 2;
    static constexpr int VG = VN + BT * LDU * 2;
    static constexpr int GATE = VG + BV * LDG * 2; /* exp(G_last - G_t), 0 past the end */
    static constexpr int BYTES = GATE + BT * 4;
    /* Blocks a multiprocessor can hold by shared memory (Hopper and Ampere
     * give a block up to 227 KB, 228 KB a multiprocessor): asking the
     * compiler for two caps registers so that two do fit. */
    static constexpr int MIN_BLOCKS = 2 * (BYTES + 1024) <= 228 * 1024 ? 2 : 1;
};

__device__ __forceinline__ int64_t state_index(int kv, int V, int K, int v, int k) {
    return kv ? (int64_t)k * V + v : (int64_t)v * K + k;
}

/* Where one chunk's rows start, and the strides between tokens. */
struct ChunkSrc {
    const __nv_bfloat16 *w, *k, *u;
    const float *g, *ks;
    int64_t rs_w, rs_k, rs_u, rs_g;
};

/* Load one chunk's w, k, u, g rows [0, nvalid) into a stage; rows and
 * columns past the valid range are zero. VEC: 16-byte cp.async (needs K, V
 * multiples of 8 and aligned bases); otherwise plain element loads. Each
 * thread keeps one column and steps over rows, so the per-chunk address
 * math is one multiply-add a copy. */
template <int KP, int BV, int STAGES, bool VEC>
__device__ __forceinline__ void load_chunk(uint8_t *stage, const ChunkSrc &src, int nvalid, int K,
                                           int vrows, bool load_u) {
    using L = Smem<KP, BV, STAGES>;
    constexpr int NTHREADS = Warps<KP>::NTHREADS;
    __nv_bfloat16 *sw = reinterpret_cast<__nv_bfloat16 *>(stage + L::W);
    __nv_bfloat16 *sk = reinterpret_cast<__nv_bfloat16 *>(stage + L::KC);
    __nv_bfloat16 *su = reinterpret_cast<__nv_bfloat16 *>(stage + L::U);
    float *sg = reinterpret_cast<float *>(stage + L::G);
    float *sks = reinterpret_cast<float *>(stage + L::KS);
    const int tid = threadIdx.x;
    if constexpr (VEC) {
        constexpr int CPR = KP / 8; /* 16-byte pieces a row */
        constexpr int RSTEP = NTHREADS / CPR;
        static_assert(NTHREADS % CPR == 0 && BT % RSTEP == 0, "load shape");
        const int c = (tid % CPR) * 8;
        const bool col_ok = c < K;
#pragma unroll
        for (int t = tid / CPR; t < BT; t += RSTEP) {
            const bool ok = col_ok && t < nvalid;
            cp_async16(sw + t * L::LDK + c, ok ? src.w + t * src.rs_w + c : src.w, ok ? 16 : 0);
            cp_async16(sk + t * L::LDK + c, ok ? src.k + t * src.rs_k + c : src.k, ok ? 16 : 0);
        }
        if (load_u) {
            constexpr int UPR = BV / 8;
            static_assert(NTHREADS >= BT * UPR / 2, "u load shape");
            for (int i = tid; i < BT * UPR; i += NTHREADS) {
                const int t = i / UPR, cu = (i % UPR) * 8;
                const bool ok = t < nvalid && cu < vrows;
                cp_async16(su + t * L::LDU + cu, ok ? src.u + t * src.rs_u + cu : src.u, ok ? 16 : 0);
            }
        }
        if (tid < BT) {
            const bool ok = tid < nvalid;
            cp_async4(sg + tid, ok ? src.g + tid * src.rs_g : src.g, ok ? 4 : 0);
            if (src.ks) cp_async4(sks + tid, ok ? src.ks + tid * src.rs_g : src.ks, ok ? 4 : 0);
        }
    } else {
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
        if (tid < BT) sg[tid] = tid < nvalid ? src.g[tid * src.rs_g] : 0.f;
        if (src.ks && tid < BT) sks[tid] = tid < nvalid ? src.ks[tid * src.rs_g] : 0.f;
    }
}

template <int KP, int BV, int STAGES, bool VEC, int MODE>
__global__ void __launch_bounds__(Warps<KP>::NTHREADS, (Smem<KP, BV, STAGES>::MIN_BLOCKS))
chunk_state_kernel(const Params P) {
    using L = Smem<KP, BV, STAGES>;
    constexpr int NW = Warps<KP>::NW;
    constexpr int NTHREADS = Warps<KP>::NTHREADS;
    extern __shared__ __align__(16) uint8_t smem[];

    /* Warp roles. MMA2 (state update): warp owns state columns
     * [warp*KP/NW, ...) of all BV rows. MMA1 (v_new): warps form a
     * (NW/4) x 4 grid over (rows, chunk columns t), 16 t columns each. */
    constexpr int MT = BV / 16;        /* m16 tiles over the rows */
    constexpr int NT2 = KP / NW / 8;   /* n8 tiles of state columns a warp */
    constexpr int WM1 = NW / 4;        /* MMA1 warps along rows */
    constexpr int MT1 = MT / WM1;      /* MMA1 m16 tiles a warp */
    static_assert(NT2 % 2 == 0 && MT % WM1 == 0, "tile shape");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm1 = warp / 4, wn1 = warp % 4;

    /* Block -> (row tile, head, segment, sequence); x only, so no grid
     * dimension limit applies to N * Hv. */
    int64_t bid = blockIdx.x;
    const int tile = (int)(bid % P.row_tiles);
    bid /= P.row_tiles;
    const int h = (int)(bid % P.Hv);
    bid /= P.Hv;
    const int seg = (int)(bid % P.seg_launch);
    const int n = (int)(bid / P.seg_launch);
    const int kh = P.tiled ? h % P.Hk : h / P.group;

    const int vtiles = (P.V + BV - 1) / BV;
    const bool trans_rows = MODE == MODE_SUMMARY && tile >= vtiles; /* rows of P_s */
    const int row0 = trans_rows ? (tile - vtiles) * BV : tile * BV;
    const int row_limit = trans_rows ? P.K : P.V;

    int64_t bos, eos, hoff = 0;
    if (P.cu_seqlens) {
        bos = P.cu_seqlens[n];
        eos = P.cu_seqlens[n + 1];
        if (MODE != MODE_SUMMARY)
            hoff = P.chunk_offsets[n];
    } else {
        bos = (int64_t)n * P.T;
        eos = bos + P.T;
        hoff = (int64_t)n * ((P.T + BT - 1) / BT);
    }
    const int nchunks = (int)((eos - bos + BT - 1) / BT);
    const int c_begin = min(seg * P.chunks_per_segment, nchunks);
    const int c_end = P.segments == 1 ? nchunks : min(c_begin + P.chunks_per_segment, nchunks);

    /* ---- initial state into the accumulators ---- */
    float H[MT][NT2][4];
    const int64_t head = (int64_t)n * P.Hv + h;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT2; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = row0 + mt * 16 + gid + (e >> 1) * 8;
                const int c = warp * (KP / NW) + nt * 8 + 2 * tig + (e & 1);
                float x = 0.f;
                if (r < row_limit && c < P.K) {
                    if (MODE == MODE_SUMMARY) {
                        x = trans_rows && r == c ? 1.f : 0.f;
                    } else if (P.segments > 1) {
                        x = P.h_start[(((int64_t)seg * P.N * P.Hv + head) * P.V + r) * P.K + c];
                    } else if (P.h0) {
                        x = P.h0[head * P.V * P.K + state_index(P.kv_layout, P.V, P.K, r, c)];
                    }
                }
                H[mt][nt][e] = x;
            }

    /* The f32 state tile (rows < row_limit, columns < K) to dst: [rows][K]
     * with rows_k, else a state in layout kv. */
    auto store_state = [&](float *dst, bool rows_k, int kv) {
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int r = row0 + mt * 16 + gid + (e >> 1) * 8;
                    const int col = warp * (KP / NW) + nt * 8 + 2 * tig + (e & 1);
                    if (r < row_limit && col < P.K)
                        dst[rows_k ? (int64_t)r * P.K + col : state_index(kv, P.V, P.K, r, col)] =
                            H[mt][nt][e];
                }
    };

    __nv_bfloat16 *Hs = reinterpret_cast<__nv_bfloat16 *>(smem + L::HS);
    __nv_bfloat16 *VNs = reinterpret_cast<__nv_bfloat16 *>(smem + L::VN);
    __nv_bfloat16 *VGs = reinterpret_cast<__nv_bfloat16 *>(smem + L::VG);
    float *gate = reinterpret_cast<float *>(smem + L::GATE);
    const bool load_u = !trans_rows;
    const int vrows = P.V - row0;

    /* Token row t of chunk c is at token bos + 64c + t. */
    ChunkSrc src;
    src.rs_w = (int64_t)P.Hv * P.K;
    src.rs_k = (int64_t)P.Hk * P.K;
    src.rs_u = (int64_t)P.Hv * P.V;
    src.rs_g = P.Hv;
    auto point_at = [&](int c) {
        const int64_t t0 = bos + (int64_t)c * BT;
        src.w = P.w + t0 * src.rs_w + (int64_t)h * P.K;
        src.k = P.k + t0 * src.rs_k + (int64_t)kh * P.K;
        src.u = P.u + t0 * src.rs_u + (int64_t)h * P.V + (load_u ? row0 : 0);
        src.g = P.g + t0 * src.rs_g + h;
        src.ks = P.kscale ? P.kscale + t0 * src.rs_g + h : nullptr;
        return (int)(eos - t0 < BT ? eos - t0 : BT);
    };

    /* ---- pipeline prologue ---- */
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) {
        const int c = c_begin + i;
        if (c < c_end) {
            const int nv = point_at(c);
            load_chunk<KP, BV, STAGES, VEC>(smem + i * L::STAGE, src, nv, P.K, vrows, load_u);
        }
        cp_async_commit();
    }

    for (int c = c_begin; c < c_end; c++) {
        const int it = c - c_begin;
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int cn = c + STAGES - 1;
            if (cn < c_end) {
                const int nv = point_at(cn);
                load_chunk<KP, BV, STAGES, VEC>(smem + ((it + STAGES - 1) % STAGES) * L::STAGE, src, nv,
                                            P.K, vrows, load_u);
            }
            cp_async_commit();
        }
        uint8_t *stage = smem + (it % STAGES) * L::STAGE;
        const __nv_bfloat16 *Ws = reinterpret_cast<const __nv_bfloat16 *>(stage + L::W);
        const __nv_bfloat16 *Ks = reinterpret_cast<const __nv_bfloat16 *>(stage + L::KC);
        const __nv_bfloat16 *Us = reinterpret_cast<const __nv_bfloat16 *>(stage + L::U);
        const float *Gs = reinterpret_cast<const float *>(stage + L::G);
        const int64_t t0 = bos + (int64_t)c * BT;
        const int nvalid = (int)(eos - t0 < BT ? eos - t0 : BT);
        const float g_last = Gs[nvalid - 1];

        /* 1. Hs = bf16(H); the chunk's gates, once */
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT2; nt++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int r = mt * 16 + gid + hf * 8;
                    const int col = warp * (KP / NW) + nt * 8 + 2 * tig;
                    *reinterpret_cast<uint32_t *>(Hs + r * L::LDK + col) =
                        pack_bf16x2(H[mt][nt][2 * hf], H[mt][nt][2 * hf + 1]);
                }
        if (threadIdx.x < BT) {
            float gt = threadIdx.x < nvalid ? expf(g_last - Gs[threadIdx.x]) : 0.f;
            if (P.kscale) gt *= reinterpret_cast<const float *>(stage + L::KS)[threadIdx.x];
            gate[threadIdx.x] = gt;
        }
        /* the f32 chunk-start state, straight from the accumulators */
        if (MODE == MODE_STATE_F32)
            store_state(P.chunk_states + ((hoff + c) * P.Hv + h) * (int64_t)P.V * P.K, false,
                        P.kv_layout);
        __syncthreads();

        /* 2. h_out[c] = Hs */
        if (MODE != MODE_SUMMARY) {
            __nv_bfloat16 *dst = P.h_out + ((hoff + c) * P.Hv + h) * (int64_t)P.V * P.K;
            if (!P.hout_kv && VEC) {
                for (int i = threadIdx.x; i < BV * (KP / 8); i += NTHREADS) {
                    const int r = i / (KP / 8), col = (i % (KP / 8)) * 8;
                    if (r < vrows && col < P.K)
                        *reinterpret_cast<uint4 *>(dst + (int64_t)(row0 + r) * P.K + col) =
                            *reinterpret_cast<const uint4 *>(Hs + r * L::LDK + col);
                }
            } else if (P.hout_kv && VEC) {
                for (int i = threadIdx.x; i < KP * (BV / 8); i += NTHREADS) {
                    const int col = i / (BV / 8), r = (i % (BV / 8)) * 8;
                    if (r < vrows && col < P.K) {
                        uint32_t packed[4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            const uint32_t lo = __bfloat16_as_ushort(Hs[(r + 2 * j) * L::LDK + col]);
                            const uint32_t hi = __bfloat16_as_ushort(Hs[(r + 2 * j + 1) * L::LDK + col]);
                            packed[j] = lo | (hi << 16);
                        }
                        *reinterpret_cast<uint4 *>(dst + (int64_t)col * P.V + row0 + r) =
                            make_uint4(packed[0], packed[1], packed[2], packed[3]);
                    }
                }
            } else {
                for (int i = threadIdx.x; i < BV * KP; i += NTHREADS) {
                    const int r = i / KP, col = i % KP;
                    if (r < vrows && col < P.K)
                        dst[state_index(P.hout_kv, P.V, P.K, row0 + r, col)] =
                            Hs[r * L::LDK + col];
                }
            }
        }

        /* 3. acc[v][t] = Hs . w^T over the K columns; this warp: rows
         * wm1*16*MT1.., columns t in [wn1*16, wn1*16+16). Even and odd
         * k-steps accumulate apart, halving the dependent mma chain. */
        float acc[MT1][2][4], acc2[MT1][2][4];
#pragma unroll
        for (int mt = 0; mt < MT1; mt++)
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mt][nt][e] = acc2[mt][nt][e] = 0.f;
        const int mrow = wm1 * MT1 * 16;
#pragma unroll
        for (int kk = 0; kk < KP; kk += 16) {
            uint32_t a[MT1][4], b[4];
#pragma unroll
            for (int mt = 0; mt < MT1; mt++)
                ldmatrix_x4(a[mt], Hs + (mrow + mt * 16 + (lane & 15)) * L::LDK + kk + (lane >> 4) * 8);
            /* two n8 tiles of t: rows t = wn1*16 + (lane>>4)*8 + lane%8 */
            ldmatrix_x4(b, Ws + (wn1 * 16 + ((lane >> 4) << 3) + (lane & 7)) * L::LDK + kk +
                               ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int mt = 0; mt < MT1; mt++) {
                float(*dst)[4] = (kk / 16) % 2 ? acc2[mt] : acc[mt];
                mma_bf16_16816(dst[0], a[mt], b);
                mma_bf16_16816(dst[1], a[mt], b + 2);
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT1; mt++)
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mt][nt][e] += acc2[mt][nt][e];

        /* 4. vn = u - acc; VNs[t][v] = bf16(vn); VGs[v][t] = bf16(vn * gate) */
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            const int t = wn1 * 16 + nt * 8 + 2 * tig;
            const float g0 = gate[t], g1 = gate[t + 1];
#pragma unroll
            for (int mt = 0; mt < MT1; mt++)
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int r = mrow + mt * 16 + gid + hf * 8;
                    float vn0 = -acc[mt][nt][2 * hf], vn1 = -acc[mt][nt][2 * hf + 1];
                    if (load_u) {
                        vn0 += __bfloat162float(Us[t * L::LDU + r]);
                        vn1 += __bfloat162float(Us[(t + 1) * L::LDU + r]);
                    }
                    if (MODE != MODE_SUMMARY) {
                        VNs[t * L::LDU + r] = __float2bfloat16(vn0);
                        VNs[(t + 1) * L::LDU + r] = __float2bfloat16(vn1);
                    }
                    /* a zero gate must not turn an Inf/NaN of a padding
                     * row into NaN: select, don't multiply */
                    *reinterpret_cast<uint32_t *>(VGs + r * L::LDG + t) =
                        pack_bf16x2(t < nvalid ? vn0 * g0 : 0.f, t + 1 < nvalid ? vn1 * g1 : 0.f);
                }
        }
        __syncthreads();

        /* 5. v_new rows of this chunk */
        if (MODE != MODE_SUMMARY && P.v_new) {
            __nv_bfloat16 *dst = P.v_new + (t0 * P.Hv + h) * (int64_t)P.V + row0;
            if (VEC) {
                for (int i = threadIdx.x; i < BT * (BV / 8); i += NTHREADS) {
                    const int t = i / (BV / 8), r = (i % (BV / 8)) * 8;
                    if (t < nvalid && r < vrows)
                        *reinterpret_cast<uint4 *>(dst + (int64_t)t * P.Hv * P.V + r) =
                            *reinterpret_cast<const uint4 *>(VNs + t * L::LDU + r);
                }
            } else {
                for (int i = threadIdx.x; i < BT * BV; i += NTHREADS) {
                    const int t = i / BV, r = i % BV;
                    if (t < nvalid && r < vrows) dst[(int64_t)t * P.Hv * P.V + r] = VNs[t * L::LDU + r];
                }
            }
        }

        /* 6. H = exp(G_last) H + VG . k */
        const float decay = expf(g_last);
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < NT2; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) H[mt][nt][e] *= decay;
#pragma unroll
        for (int kk = 0; kk < BT; kk += 16) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
                ldmatrix_x4(a[mt], VGs + (mt * 16 + (lane & 15)) * L::LDG + kk + (lane >> 4) * 8);
#pragma unroll
            for (int nt = 0; nt < NT2; nt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, Ks + (kk + ((lane >> 3) & 1) * 8 + (lane & 7)) * L::LDK +
                                         warp * (KP / NW) + nt * 8 + (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma_bf16_16816(H[mt][nt], a[mt], b);
                    mma_bf16_16816(H[mt][nt + 1], a[mt], b + 2);
                }
            }
        }
    }
    cp_async_wait<0>();

    /* ---- the state after this block's chunks ---- */
    float *out = nullptr;
    int64_t base = 0;
    int kv = 0;
    bool rows_k = MODE == MODE_SUMMARY; /* out is [rows][K] */
    if (MODE == MODE_SUMMARY && P.transition) {
        /* a whole-sequence summary (gdn_chunk_forward_summary) */
        out = trans_rows ? P.transition : P.final_state;
        base = head * (trans_rows ? P.K : P.V) * P.K;
        kv = P.kv_layout;
        rows_k = trans_rows;
    } else if (MODE == MODE_SUMMARY) {
        out = P.summary;
        base = (((int64_t)seg * P.N * P.Hv + head) * (P.V + P.K) + (trans_rows ? P.V : 0)) * P.K;
    } else if (seg == P.segments - 1 && P.final_state) {
        out = P.final_state;
        base = head * P.V * P.K;
        kv = P.kv_layout;
    }
    if (out) store_state(out + base, rows_k, kv);
}

/* h_start[0] = h0 (or 0); h_start[s+1] = h_start[s] P_s + b_s, in f32.
 * One block per (sequence, head, 16 state rows). */
constexpr int COMBINE_ROWS = 16;
constexpr int COMBINE_THREADS = 256;

__global__ void __launch_bounds__(COMBINE_THREADS) combine_kernel(const Params P) {
    const int N = P.N;
    extern __shared__ float hs[]; /* [COMBINE_ROWS][K] */
    const int tiles = (P.V + COMBINE_ROWS - 1) / COMBINE_ROWS;
    const int tile = blockIdx.x % tiles;
    const int64_t head = blockIdx.x / tiles; /* n * Hv + h */
    const int row0 = tile * COMBINE_ROWS;
    const int K = P.K, V = P.V;
    for (int i = threadIdx.x; i < COMBINE_ROWS * K; i += COMBINE_THREADS) {
        const int r = i / K, c = i % K;
        float x = 0.f;
        if (row0 + r < V && P.h0) x = P.h0[head * V * K + state_index(P.kv_layout, V, K, row0 + r, c)];
        hs[i] = x;
        if (row0 + r < V) P.h_start[(head * V + row0 + r) * K + c] = x;
    }
    __syncthreads();
    for (int s = 0; s + 1 < P.segments; s++) {
        const float *b = P.summary + ((int64_t)s * N * P.Hv + head) * (V + K) * K;
        const float *Pm = b + (int64_t)V * K;
        float next[COMBINE_ROWS * GDN_MAX_HEAD_DIM / COMBINE_THREADS];
        int cnt = 0;
        for (int i = threadIdx.x; i < COMBINE_ROWS * K; i += COMBINE_THREADS, cnt++) {
            const int r = i / K, c = i % K;
            float acc = row0 + r < V ? b[(int64_t)(row0 + r) * K + c] : 0.f;
            for (int j = 0; j < K; j++) acc = fmaf(hs[r * K + j], Pm[(int64_t)j * K + c], acc);
            next[cnt] = acc;
        }
        __syncthreads();
        cnt = 0;
        for (int i = threadIdx.x; i < COMBINE_ROWS * K; i += COMBINE_THREADS, cnt++) {
            const int r = i / K, c = i % K;
            hs[i] = next[cnt];
            if (row0 + r < V)
                P.h_start[(((int64_t)(s + 1) * N * P.Hv + head) * V + row0 + r) * K + c] = next[cnt];
        }
        __syncthreads();
    }
}

/* ---- host side ---- */

struct Plan {
    int kp;     /* K padded to the kernel's: 64, 128 or 256 */
    int bv;     /* state rows a block */
    int stages; /* depth of the cp.async ring */
    bool vec;   /* 16-byte loads and stores */
    int segments;
    int chunks_per_segment;
    size_t summary_bytes, h_start_bytes;
    size_t scratch() const { return summary_bytes + h_start_bytes; }
};

/* Segments for the split path: enough that the final pass fills the
 * machine about twice, each keeping at least 16 chunks; 1 = no split.
 * blocks: the blocks of the unsplit launch the rule is to fill. */
int64_t split_segments(const gdn_problem *p, int64_t blocks, int sms) {
    const int64_t nchunks = gdn_ceil_div(p->T, BT);
    if (p->cu_seqlens || 2 * blocks > sms || nchunks < 64) return 1;
    int64_t s = gdn_ceil_div(2 * sms, blocks);
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
    const int sms = ctx->sm_count > 0 ? ctx->sm_count : 132;
    const int64_t blocks32 = N * p->Hv * gdn_ceil_div(p->V, 32);
    const int64_t blocks64 = N * p->Hv * gdn_ceil_div(p->V, 64);
    /* Rows a block (K = 128): a block's time per chunk grows faster than
     * its rows (H100: 2.1 us at 32 rows, 5.1 us at 64), so 64 rows pay only
     * where they still give every multiprocessor a block, or where they
     * let a problem that splits anyway cut more segments (measured:
     * q397_t8k 0.41 -> 0.37 ms, q35_b4_t8k 0.78 -> 0.74, tp8_t64k 1.69 ->
     * 1.49; but q35_t8k 0.27 -> 0.64 when 64 rows made it split). */
    pl.bv = 32;
    const bool can64 = pl.kp == 128 && pl.vec;
    if (per_seq) {
        pl.segments = (int)split_segments(p, p->Hv * gdn_ceil_div(p->V, 32), sms);
        if (can64 && 10 * blocks64 * pl.segments >= 9 * (int64_t)sms) pl.bv = 64;
    } else {
        const int64_t seg32 = split_segments(p, blocks32, sms);
        if (can64 && (10 * blocks64 >= 9 * sms ||
                      (seg32 > 1 && split_segments(p, blocks64, sms) > seg32)))
            pl.bv = 64;
    }
    /* Testing override, documented in README: force the row tile. */
    const char *force = getenv("GDN_CUDA_ROWS_PER_BLOCK");
    if (force && can64 && (atoi(force) == 32 || atoi(force) == 64)) pl.bv = atoi(force);
    const int64_t blocks = pl.bv == 64 ? blocks64 : blocks32;
    /* A lone block on a multiprocessor gets a three-deep ring (four
     * measured the same); with several resident, two. */
    pl.stages = (!pl.vec || pl.kp == 256 || blocks > sms) ? 2 : 3;
    if (!per_seq) pl.segments = (int)split_segments(p, blocks, sms);
    pl.chunks_per_segment = 0;
    if (pl.segments > 1) {
        const int64_t nchunks = gdn_ceil_div(p->T, BT);
        pl.chunks_per_segment = (int)gdn_ceil_div(nchunks, pl.segments);
        pl.segments = (int)gdn_ceil_div(nchunks, pl.chunks_per_segment);
        const int64_t heads = N * p->Hv;
        pl.summary_bytes =
            align256((size_t)(pl.segments - 1) * heads * (p->V + p->K) * p->K * sizeof(float));
        pl.h_start_bytes = align256((size_t)pl.segments * heads * p->V * p->K * sizeof(float));
    }
    return pl;
}

template <int KP, int BV, int STAGES, bool VEC, int MODE>
gdn_status launch(gdn_context *ctx, const Params &P, int64_t blocks, cudaStream_t stream) {
    auto kern = chunk_state_kernel<KP, BV, STAGES, VEC, MODE>;
    const int bytes = Smem<KP, BV, STAGES>::BYTES;
    if ((size_t)bytes > ctx->smem_optin)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "gdn_chunk_state: kernel needs %d bytes of shared memory, device allows %zu",
                        bytes, ctx->smem_optin);
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    if (blocks > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_chunk_state: %lld blocks (sequences * Hv * V/%d) exceed the grid limit",
                        (long long)blocks, BV);
    if (blocks == 0) return GDN_SUCCESS;
    kern<<<(unsigned)blocks, Warps<KP>::NTHREADS, bytes, stream>>>(P);
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_state_kernel");
    return GDN_SUCCESS;
}

/* The launches of one call: with P.transition set, only the summary pass
 * over whole sequences; else (split) summary, combine, then the state pass. */
template <int KP, int BV, int STAGES, bool VEC>
gdn_status run_passes(gdn_context *ctx, Params P, const Plan &pl, int64_t N, cudaStream_t stream) {
    const int vtiles = (P.V + BV - 1) / BV;
    const int ktiles = (P.K + BV - 1) / BV;
    if (P.transition) {
        P.row_tiles = vtiles + ktiles;
        P.seg_launch = 1;
        return launch<KP, BV, STAGES, VEC, MODE_SUMMARY>(ctx, P, N * P.Hv * P.row_tiles, stream);
    }
    if (pl.segments > 1) {
        Params S = P;
        S.row_tiles = vtiles + ktiles;
        S.seg_launch = pl.segments - 1;
        gdn_status st = launch<KP, BV, STAGES, VEC, MODE_SUMMARY>(
            ctx, S, N * P.Hv * S.row_tiles * S.seg_launch, stream);
        if (st != GDN_SUCCESS) return st;
        const int tiles = (P.V + COMBINE_ROWS - 1) / COMBINE_ROWS;
        const size_t bytes = (size_t)COMBINE_ROWS * P.K * sizeof(float);
        combine_kernel<<<(unsigned)(N * P.Hv * tiles), COMBINE_THREADS, bytes, stream>>>(S);
        GDN_CUDA_CHECK_LAUNCH(ctx, "combine_kernel");
    }
    P.row_tiles = vtiles;
    P.seg_launch = pl.segments;
    const int64_t blocks = N * P.Hv * vtiles * pl.segments;
    if (P.chunk_states) return launch<KP, BV, STAGES, VEC, MODE_STATE_F32>(ctx, P, blocks, stream);
    return launch<KP, BV, STAGES, VEC, MODE_STATE>(ctx, P, blocks, stream);
}

/* The compiled configurations: the generic (unaligned) path, and per K the
 * ring depths and row tiles make_plan can choose. */
template <int KP>
gdn_status dispatch(gdn_context *ctx, const Params &P, const Plan &pl, int64_t N,
                    cudaStream_t stream) {
    if (!pl.vec) return run_passes<KP, 32, 2, false>(ctx, P, pl, N, stream);
    if constexpr (KP == 128) {
        if (pl.bv == 64) {
            if (pl.stages == 2) return run_passes<KP, 64, 2, true>(ctx, P, pl, N, stream);
            return run_passes<KP, 64, 3, true>(ctx, P, pl, N, stream);
        }
    }
    if constexpr (KP < 256)
        if (pl.stages >= 3) return run_passes<KP, 32, 3, true>(ctx, P, pl, N, stream);
    return run_passes<KP, 32, 2, true>(ctx, P, pl, N, stream);
}

} // namespace

size_t chunk_state_scratch_bytes(const gdn_context *ctx, const gdn_problem *p, bool per_seq_split) {
    return make_plan(ctx, p, per_seq_split).scratch();
}

gdn_status run_chunk_state(gdn_context *ctx, const gdn_problem *p, const StateArgs &a,
                           void *scratch, cudaStream_t stream) {
    Plan pl = make_plan(ctx, p, a.per_seq_split);
    const uintptr_t align = (uintptr_t)a.k | (uintptr_t)a.w | (uintptr_t)a.u |
                            (uintptr_t)a.h_out | (uintptr_t)a.v_new;
    if (align % 16 != 0) pl.vec = false;
    if (a.transition) { /* one pass over whole sequences, 32-row tiles */
        pl.bv = 32;
        pl.stages = 2;
        pl.segments = 1;
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
    P.segments = a.transition ? 2 : pl.segments; /* summary: segment 0 is the whole sequence */
    P.chunks_per_segment = a.transition ? (1 << 30) : pl.chunks_per_segment;
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

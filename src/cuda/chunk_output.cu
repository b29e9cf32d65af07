/*
 * Stage 3 of the CUDA chunked forward: the output (SPEC 3 step 5).
 *
 * One block per (chunk, value head, BV columns of V), blocks independent.
 * Per block, with t, s < 64 the chunk's tokens and v the block's columns:
 *   S[t][s] = q_t . k_s                                (tensor cores, K contraction)
 *   P[t][s] = bf16(qs_t ks_s S[t][s] exp(G_t - G_s))   s <= t, exact 0 else
 *   o[t][v] = scale (exp(G_t) qs_t (q_t . h_c[v]) + sum_s P[t][s] vn_s[v])
 *
 * Both K contractions (S and q h^T) run together over slices of 64 columns
 * of K: a slice's q, k and h columns come in one cp.async group into one
 * of two stages, so shared memory does not grow with K (at K = 256 whole
 * q, k and h tiles would leave one block of four warps a multiprocessor).
 * v_new comes in its own group, and lands while the slices are worked on.
 *
 * Warp w owns 16 rows t (row tile tw) and 64 columns v (half vw). It
 * computes S for its own rows only, so that S's accumulators become P's
 * mma A fragments in registers (the c layout of two n8 tiles is the a
 * layout of one k16 step) and P never goes through shared memory; with
 * BV = 128 the two column halves of a row tile compute the same S, which
 * costs less than a shared round trip and a barrier in a kernel that is
 * bound by memory (h alone is 32 KB a chunk-head at K = V = 128). S tiles
 * past the diagonal are all masked, so row tile tw only computes s tiles
 * 0..tw.
 */
#include "chunk_forward.cuh"

namespace gdn {
namespace {

constexpr int BT = GDN_CHUNK;
constexpr int KSL = 64; /* K columns a slice */

template <int KP, int BV> struct OutCfg {
    static constexpr int NW = 4 * (BV / 64); /* 4 row tiles x BV/64 column halves */
    static constexpr int NTHREADS = NW * 32;
    static constexpr int NSL = KP / KSL;     /* slices of K */
    static constexpr int STAGES = NSL < 2 ? NSL : 2;
    static constexpr int LDS = KSL + 8;      /* +16 bytes a row: conflict-free ldmatrix */
    static constexpr int LDV = BV + 8;
    /* a stage: q [BT][LDS], k [BT][LDS], h [BV][LDS] (bf16) */
    static constexpr int SQ = 0, SK = BT * LDS, SH = 2 * BT * LDS;
    static constexpr int STAGE_ELEMS = (2 * BT + BV) * LDS;
    static constexpr int VN = STAGES * STAGE_ELEMS * 2;
    static constexpr int G = VN + BT * LDV * 2;
    static constexpr int QSC = G + BT * 4;
    static constexpr int KSC = QSC + BT * 4;
    static constexpr int BYTES = KSC + BT * 4;
    /* Blocks a multiprocessor holds by shared memory (228 KB, 1 KB
     * reserved a block), capped so that a thread keeps 128 registers. */
    static constexpr int SMEM_BLOCKS = 228 * 1024 / (BYTES + 1024);
    static constexpr int REG_BLOCKS = 65536 / (NTHREADS * 128);
    static constexpr int MB = SMEM_BLOCKS < REG_BLOCKS ? SMEM_BLOCKS : REG_BLOCKS;
    static constexpr int MIN_BLOCKS = MB < 1 ? 1 : MB;
    /* the output tile is staged in stage 0 once every slice is consumed */
    static_assert(STAGE_ELEMS >= BT * LDV, "o staging must fit in a stage");
    static_assert(KP % KSL == 0 && (BV == 64 || BV == 128), "tile shape");
};

/* Rows [0, rows) and columns [0, cols) of a [NROWS][LD] bf16 tile of NCP
 * columns from global rows of stride rs; the rest zero, never read from
 * global memory. cp.async 16-byte pieces on the vector path (cols and rs
 * multiples of 8 elements there, src 16-byte aligned). */
template <int NTHREADS, int NROWS, int NCP, int LD, bool VEC>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *src, int64_t rs,
                                          int rows, int cols) {
    if constexpr (VEC) {
        constexpr int CPR = NCP / 8; /* 16-byte pieces a row */
        static_assert((NROWS * CPR) % NTHREADS == 0, "load shape");
#pragma unroll
        for (int it = 0; it < NROWS * CPR / NTHREADS; it++) {
            const int i = threadIdx.x + it * NTHREADS;
            const int t = i / CPR, col = (i % CPR) * 8;
            const bool ok = t < rows && col < cols;
            cp_async16(dst + t * LD + col, ok ? src + t * rs + col : src, ok ? 16 : 0);
        }
    } else {
        const __nv_bfloat16 zero = __float2bfloat16(0.f);
        for (int i = threadIdx.x; i < NROWS * NCP; i += NTHREADS) {
            const int t = i / NCP, col = i % NCP;
            dst[t * LD + col] = t < rows && col < cols ? src[t * rs + col] : zero;
        }
    }
}

/* Wait until at most n of this thread's cp.async groups are pending. */
__device__ __forceinline__ void cp_async_wait_n(int n) {
    if (n <= 0) cp_async_wait<0>();
    else if (n == 1) cp_async_wait<1>();
    else cp_async_wait<2>();
}

template <int KP, int BV, bool VEC>
__global__ void __launch_bounds__(OutCfg<KP, BV>::NTHREADS, OutCfg<KP, BV>::MIN_BLOCKS)
chunk_output_kernel(const OutputParams P) {
    using L = OutCfg<KP, BV>;
    constexpr int NTHREADS = L::NTHREADS, LDS = L::LDS;
    extern __shared__ __align__(16) uint8_t smem[];
    __nv_bfloat16 *stages = reinterpret_cast<__nv_bfloat16 *>(smem);
    __nv_bfloat16 *VNs = reinterpret_cast<__nv_bfloat16 *>(smem + L::VN);
    __nv_bfloat16 *Os = stages; /* [BT][LDV], after the last slice */
    float *Gs = reinterpret_cast<float *>(smem + L::G);
    float *QSs = reinterpret_cast<float *>(smem + L::QSC);
    float *KSs = reinterpret_cast<float *>(smem + L::KSC);

    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    /* Warps w and w + 4 share a scheduler: pair row tile tw with 3 - tw so
     * that the causal work (grows with tw) is even across schedulers. */
    const int vw = warp >> 2;
    const int tw = vw & 1 ? 3 - (warp & 3) : warp & 3;
    const int row0 = tw * 16, col0 = vw * 64;

    /* Block -> (column tile, head, chunk), column tile fastest: the blocks
     * that read the same q and k rows run together and share them in L2. */
    const int vtiles = (P.V + BV - 1) / BV;
    int64_t bid = blockIdx.x;
    const int vt = (int)(bid % vtiles);
    bid /= vtiles;
    const int h = (int)(bid % P.Hv);
    const int64_t c = bid / P.Hv;
    const int kh = P.tiled ? h % P.Hk : h / P.group;
    const ChunkLoc loc = locate_chunk(P.map, c);
    const int len = loc.len;
    const int v0 = vt * BV;
    const int vcols = P.V - v0 < BV ? P.V - v0 : BV; /* valid columns of this tile */
    const int K = P.K;

    /* Row t of the chunk: q, k at qk + t*rs_qk, v_new and o at vo + t*rs_v,
     * gates and scales at gi + t*Hv. */
    const int64_t rs_qk = (int64_t)P.Hk * K;
    const int64_t rs_v = (int64_t)P.Hv * P.V;
    const int64_t qk = (loc.t0 * P.Hk + kh) * K;
    const int64_t vo = (loc.t0 * P.Hv + h) * P.V + v0;
    const int64_t gi = loc.t0 * P.Hv + h;
    const __nv_bfloat16 *qg = P.q + qk;
    const __nv_bfloat16 *kg = P.k + qk;
    const __nv_bfloat16 *hg = P.h + (c * P.Hv + h) * (int64_t)P.V * K + (int64_t)v0 * K;
    const __nv_bfloat16 *vg = P.v_new + vo;

    /* Slice j's q, k and h columns into stage j % STAGES, one group; rows
     * t >= len, v >= vcols and columns past K zero, never read. */
    auto load_slice = [&](int j) {
        __nv_bfloat16 *st = stages + (j % L::STAGES) * L::STAGE_ELEMS;
        const int kc = j * KSL, cols = K - kc;
        load_tile<NTHREADS, BT, KSL, LDS, VEC>(st + L::SQ, qg + kc, rs_qk, len, cols);
        load_tile<NTHREADS, BT, KSL, LDS, VEC>(st + L::SK, kg + kc, rs_qk, len, cols);
        load_tile<NTHREADS, BV, KSL, LDS, VEC>(st + L::SH, hg + kc, K, vcols, cols);
    };
    /* group order: slice 0 (with the gates), slice 1, v_new, then slices
     * 2.. as stages free up */
    load_slice(0);
    if (tid < BT) {
        const bool ok = tid < len;
        const int64_t off = gi + (int64_t)tid * P.Hv;
        if constexpr (VEC) {
            cp_async4(Gs + tid, ok ? P.gcum + off : P.gcum, ok ? 4 : 0);
            if (P.qscale) cp_async4(QSs + tid, ok ? P.qscale + off : P.qscale, ok ? 4 : 0);
            if (P.kscale) cp_async4(KSs + tid, ok ? P.kscale + off : P.kscale, ok ? 4 : 0);
        } else {
            Gs[tid] = ok ? P.gcum[off] : 0.f;
            if (P.qscale) QSs[tid] = ok ? P.qscale[off] : 0.f;
            if (P.kscale) KSs[tid] = ok ? P.kscale[off] : 0.f;
        }
        if (!P.qscale) QSs[tid] = 1.f;
        if (!P.kscale) KSs[tid] = 1.f;
    }
    if constexpr (VEC) cp_async_commit();
    if constexpr (L::NSL > 1) {
        load_slice(1);
        if constexpr (VEC) cp_async_commit();
    }
    load_tile<NTHREADS, BT, BV, L::LDV, VEC>(VNs, vg, rs_v, len, vcols);
    if constexpr (VEC) cp_async_commit();

    /* A warp whose rows are all past the end, or whose columns all past V,
     * computes nothing (it still takes part in every barrier). */
    const bool active = row0 < len && col0 < vcols;

    /* ---- 1. S = q k^T (this warp's rows, s tiles 0..tw) and
     * oh = q h^T (its 64 columns), slice by slice ---- */
    float sacc[8][4], oacc[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) sacc[nt][e] = oacc[nt][e] = 0.f;
#pragma unroll
    for (int j = 0; j < L::NSL; j++) {
        /* groups committed after slice j: slice 1 and v_new after slice
         * 0; v_new and slice 2 after slice 1; slice j + 1 after j >= 2 */
        cp_async_wait_n(j == 0 ? (L::NSL > 1) + 1 : j == 1 ? 1 + (L::NSL > 2) : (j + 1 < L::NSL));
        __syncthreads();
        const __nv_bfloat16 *st = stages + (j % L::STAGES) * L::STAGE_ELEMS;
        const __nv_bfloat16 *Qs = st + L::SQ, *Ks = st + L::SK, *Hs = st + L::SH;
        if (active) {
#pragma unroll
            for (int kk = 0; kk < KSL; kk += 16) {
                uint32_t a[4];
                ldmatrix_x4(a, Qs + (row0 + (lane & 15)) * LDS + kk + (lane >> 4) * 8);
#pragma unroll
                for (int sj = 0; sj < 4; sj++) {
                    if (sj <= tw) {
                        /* k rows s = 16sj + (lane>>4)*8 + lane%8: b[0..1] tile 2sj, b[2..3] 2sj+1 */
                        uint32_t b[4];
                        ldmatrix_x4(b, Ks + (sj * 16 + ((lane >> 4) << 3) + (lane & 7)) * LDS + kk +
                                           ((lane >> 3) & 1) * 8);
                        mma_bf16_16816(sacc[2 * sj], a, b);
                        mma_bf16_16816(sacc[2 * sj + 1], a, b + 2);
                    }
                }
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    if (col0 + np * 16 < vcols) {
                        /* h rows v = col0 + 16np + (lane>>4)*8 + lane%8 */
                        uint32_t b[4];
                        ldmatrix_x4(b, Hs + (col0 + np * 16 + ((lane >> 4) << 3) + (lane & 7)) * LDS +
                                           kk + ((lane >> 3) & 1) * 8);
                        mma_bf16_16816(oacc[2 * np], a, b);
                        mma_bf16_16816(oacc[2 * np + 1], a, b + 2);
                    }
                }
            }
        }
        if (j + L::STAGES < L::NSL) { /* this stage's next slice, once every warp is done */
            __syncthreads();
            load_slice(j + L::STAGES);
            if constexpr (VEC) cp_async_commit();
        }
    }

    /* ---- 2. P in registers (bf16 A fragments: pf[j] covers s in
     * [16j, 16j + 16)); oh scaled by exp(G_t) qs_t ---- */
    const int tA = row0 + gid, tB = tA + 8; /* the thread's two rows */
    const float gA = Gs[tA], gB = Gs[tB];
    const float qA = QSs[tA], qB = QSs[tB];
    uint32_t pf[4][4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) pf[j][e] = 0u;
    if (active) {
        /* c fragment e: row gid + (e>>1)*8, column 2*tig + (e&1). The mask
         * selects, so that an Inf exp(G_t - G_s) (s > t) or an Inf/NaN S of
         * a later token never reaches P. */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j <= tw) {
#pragma unroll
                for (int hn = 0; hn < 2; hn++) {
                    const int nt = 2 * j + hn;
                    const int s = nt * 8 + 2 * tig;
                    const float gs0 = Gs[s], gs1 = Gs[s + 1];
                    const float ks0 = KSs[s], ks1 = KSs[s + 1];
                    const float p0 = s <= tA ? sacc[nt][0] * qA * ks0 * expf(gA - gs0) : 0.f;
                    const float p1 = s + 1 <= tA ? sacc[nt][1] * qA * ks1 * expf(gA - gs1) : 0.f;
                    const float p2 = s <= tB ? sacc[nt][2] * qB * ks0 * expf(gB - gs0) : 0.f;
                    const float p3 = s + 1 <= tB ? sacc[nt][3] * qB * ks1 * expf(gB - gs1) : 0.f;
                    /* a fragment: a0 (gid, 2tig) a1 (gid+8, 2tig) a2 (gid, 8+2tig) a3 (gid+8, 8+2tig) */
                    pf[j][2 * hn] = pack_bf16x2(p0, p1);
                    pf[j][2 * hn + 1] = pack_bf16x2(p2, p3);
                }
            }
        }
        const float fA = expf(gA) * qA, fB = expf(gB) * qB;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            oacc[nt][0] *= fA;
            oacc[nt][1] *= fA;
            oacc[nt][2] *= fB;
            oacc[nt][3] *= fB;
        }
    }

    /* ---- 3. o += P v_new (s contraction, s tiles 0..tw) ---- */
    cp_async_wait<0>();
    __syncthreads(); /* also: every warp is done with the stages, Os may reuse them */
    if (active) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j <= tw) {
#pragma unroll
                for (int np = 0; np < 4; np++) {
                    if (col0 + np * 16 < vcols) {
                        /* transposed: rows s = 16j + ((lane>>3)&1)*8 + lane%8,
                         * columns +(lane>>4)*8: b[0..1] tile 2np, b[2..3] 2np+1 */
                        uint32_t b[4];
                        ldmatrix_x4_trans(b, VNs + (j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * L::LDV +
                                                 col0 + np * 16 + (lane >> 4) * 8);
                        mma_bf16_16816(oacc[2 * np], pf[j], b);
                        mma_bf16_16816(oacc[2 * np + 1], pf[j], b + 2);
                    }
                }
            }
        }
        /* stage bf16(scale * o) for row-contiguous 16-byte stores */
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                const int r = row0 + gid + hf * 8;
                const int col = col0 + nt * 8 + 2 * tig;
                *reinterpret_cast<uint32_t *>(Os + r * L::LDV + col) =
                    pack_bf16x2(P.scale * oacc[nt][2 * hf], P.scale * oacc[nt][2 * hf + 1]);
            }
    }
    __syncthreads();

    /* ---- 4. o rows t < len, columns < V ---- */
    __nv_bfloat16 *og = P.o + vo;
    if constexpr (VEC) {
        constexpr int VPR = BV / 8;
#pragma unroll
        for (int it = 0; it < BT * VPR / NTHREADS; it++) {
            const int i = tid + it * NTHREADS;
            const int t = i / VPR, col = (i % VPR) * 8;
            if (t < len && col < vcols)
                *reinterpret_cast<uint4 *>(og + t * rs_v + col) =
                    *reinterpret_cast<const uint4 *>(Os + t * L::LDV + col);
        }
    } else {
        for (int i = tid; i < BT * BV; i += NTHREADS) {
            const int t = i / BV, col = i % BV;
            if (t < len && col < vcols) og[t * rs_v + col] = Os[t * L::LDV + col];
        }
    }
}

template <int KP, int BV, bool VEC>
gdn_status launch(gdn_context *ctx, const OutputParams &P, int64_t blocks, cudaStream_t stream) {
    using L = OutCfg<KP, BV>;
    auto kern = chunk_output_kernel<KP, BV, VEC>;
    const int bytes = L::BYTES;
    if ((size_t)bytes > ctx->smem_optin)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "gdn_chunk_forward: output kernel needs %d bytes of shared memory, "
                        "device allows %zu",
                        bytes, ctx->smem_optin);
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    kern<<<(unsigned)blocks, L::NTHREADS, bytes, stream>>>(P);
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_output_kernel");
    return GDN_SUCCESS;
}

/* Column tile: 128 columns in one block read q and k once for both halves
 * and keep 16 warps a multiprocessor (two blocks of 92 KB at any K); 64
 * where a 128 tile would be mostly padding or would leave multiprocessors
 * without two blocks. */
int choose_bv(const gdn_context *ctx, const OutputParams &P, bool vec) {
    if (!vec || P.V <= 64) return 64;
    const int64_t t64 = (P.V + 63) / 64, t128 = (P.V + 127) / 128;
    if (t64 != 2 * t128) return 64;
    const int sms = sm_count(ctx);
    const int bv = P.NT * P.Hv * t128 >= 2 * (int64_t)sms ? 128 : 64;
    return env_override("GDN_CUDA_OUTPUT_BV", bv, {64, 128}); /* force the column tile */
}

template <int KP>
gdn_status dispatch(gdn_context *ctx, const OutputParams &P, int bv, bool vec, int64_t blocks,
                    cudaStream_t stream) {
    if (!vec) return launch<KP, 64, false>(ctx, P, blocks, stream);
    if (bv == 128) return launch<KP, 128, true>(ctx, P, blocks, stream);
    return launch<KP, 64, true>(ctx, P, blocks, stream);
}

} // namespace

gdn_status launch_chunk_output(gdn_context *ctx, const OutputParams &P, cudaStream_t stream) {
    if (P.K < 1 || P.K > GDN_MAX_HEAD_DIM || P.V < 1 || P.V > GDN_MAX_HEAD_DIM || P.Hk < 1 ||
        P.Hv < 1 || P.group < 1)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_chunk_forward: output stage got K %d, V %d, Hk %d, Hv %d", P.K, P.V,
                        P.Hk, P.Hv);
    if (P.NT <= 0) return GDN_SUCCESS;
    const int kp = P.K <= 64 ? 64 : P.K <= 128 ? 128 : 256;
    const uintptr_t align =
        (uintptr_t)P.q | (uintptr_t)P.k | (uintptr_t)P.h | (uintptr_t)P.v_new | (uintptr_t)P.o;
    const bool vec = P.K % 8 == 0 && P.V % 8 == 0 && align % 16 == 0;
    const int bv = choose_bv(ctx, P, vec);
    const int64_t vtiles = (P.V + bv - 1) / bv;
    int64_t blocks;
    if (!gdn_mul_ok(P.NT, (int64_t)P.Hv * vtiles, &blocks) || blocks > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_chunk_forward: %lld chunks x %d heads x %lld column tiles exceed the "
                        "grid limit",
                        (long long)P.NT, P.Hv, (long long)vtiles);
    switch (kp) {
    case 64: return dispatch<64>(ctx, P, bv, vec, blocks, stream);
    case 128: return dispatch<128>(ctx, P, bv, vec, blocks, stream);
    default: return dispatch<256>(ctx, P, bv, vec, blocks, stream);
    }
}

} // namespace gdn

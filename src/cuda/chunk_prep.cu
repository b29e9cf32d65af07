/*
 * Stage 1 of the CUDA chunked forward (see chunk_forward.cuh): per (chunk,
 * value head) the options, the gate cumsum, A = strict_lower(beta k k^T
 * gated), the inverse Tinv = (I + A)^-1 and the WY rows
 *   w = Tinv diag(beta exp(G) ks) k,    u = Tinv diag(beta) v.
 *
 * One block of 256 threads per (chunk, head); blocks share nothing. The
 * fused path's form (T and P instead of w and u, see PrepParams) takes a
 * (chunk, key head) a block instead when Hv > Hk: loads, norms, k k^T and
 * q k^T depend on the key head only, so they are done once and steps 3-5
 * run for each of its value heads in turn (H100, one job, against a block
 * a value head: q397_t8k 0.764 -> 0.725 ms, q35_t32k 1.473 -> 1.451,
 * q35_t8k unchanged at 0.385). Steps:
 *   load    k, v (and, for its norms, q) rows of the chunk into shared
 *           memory (raw bf16; rows past the end and columns past K, V
 *           zero-filled); gates and the gate cumsum in warp 0
 *   norms   q and k norms from the tiles, four lanes a row
 *   S       k k^T on tensor cores (bf16 inputs exact, f32 accumulate),
 *           lower 16x16 blocks only; scaled into A (f32, shared)
 *   solve   Tinv in f32 by blocks of 16: per block row i, forward
 *           substitution with (I + A_ii) on [I | A_i0 .. A_i,i-1] gives
 *           T_ii and Y_ik = T_ii A_ik (one lane per column); then
 *           T_ij = -sum_{k=j}^{i-1} Y_ik T_kj on tensor cores (split tf32)
 *   WY      T' = Tinv diag(d) split into bf16 hi + lo, so that T' k and
 *           T' v (k, v exact in bf16) are two tensor-core products each
 *           with about f32 accuracy; w, u rounded to bf16 only when stored
 *           (staged through the k and v tiles for coalesced stores; with
 *           v_late, w is done and stored before v arrives in k's place)
 */
#include "chunk_forward.cuh"

namespace gdn {
namespace {

constexpr int BT = GDN_CHUNK;
constexpr int NTHREADS = 256;
constexpr int NW = NTHREADS / 32;
constexpr unsigned FULL = 0xffffffffu;
/* f32 pitch of A and Tinv (16-byte rows, conflict-free float2 stores) and
 * bf16 pitch of the split T' (rows an odd number of 16-byte units, so
 * ldmatrix is conflict-free). A hi/lo pair fills exactly one f32 matrix. */
constexpr int LDF = BT + 8;
constexpr int LDH = BT + 8;
constexpr int MAT_BYTES = BT * LDF * 4;
/* bf16 pitch of the T/P form's P staging tile (in the k tile's place once
 * k k^T and q k^T are in registers): 36 words a row, so the fragments'
 * 4-byte stores (rows gid, words tig) hit 32 different banks */
constexpr int LDP = BT + 8;
static_assert(MAT_BYTES == 2 * BT * LDH * 2, "hi/lo pair must alias one f32 matrix");
static_assert(BT * (GDN_MAX_HEAD_DIM + 8) * 2 <= 2 * MAT_BYTES, "a q tile must fit in R1 + R2");

/* Shared memory: Ks [64][kp+8] bf16, Vs [64][vp+8] bf16, R1 (A, later the
 * w hi/lo of T'), R2 (Tinv, later the u hi/lo), four [64] f32 vectors.
 * Before A, R1 and R2 together hold the q rows (the norms' only use of q).
 * v_late: v is loaded only once w is done and stored, into the k tile's
 * place, which saves a tile where that fits more blocks a multiprocessor
 * (H100: K = V = 256 three instead of two, 128 four instead of three). */
__host__ __device__ inline int pad16(int x) { return (x + 15) & ~15; }
/* bf16 elements of the k and v tiles' region (row pitches ldk, ldv): both
 * tiles, or with v_late the larger, v taking k's place */
__host__ __device__ inline int kv_region_elems(int ldk, int ldv, bool v_late, bool tp = false) {
    const int e = BT * (v_late ? (ldk > ldv ? ldk : ldv) : ldk + ldv);
    return tp && e < BT * LDP ? BT * LDP : e; /* the T/P form stages P there */
}
/* The T/P form (tp) keeps the beta / cumsum pairs of up to GATE_SLOTS
 * value heads: a shared block's first heads' are computed while the tiles
 * load, later ones while an earlier head is solved (step 4). */
constexpr int GATE_SLOTS = 4;
__host__ __device__ inline int smem_bytes(int K, int V, bool v_late, bool tp = false) {
    return kv_region_elems(pad16(K) + 8, pad16(V) + 8, v_late, tp) * 2 + 2 * MAT_BYTES +
           (tp ? 2 + 2 * GATE_SLOTS : 4) * BT * 4;
}

/* 2^x on the special-function unit (ex2.approx.ftz: about 2 ulp; 0 below
 * 2^-126). A's and P's gates exp(G_i - G_j) as 2^(G_i log2 e - G_j log2 e):
 * the scaling adds an error of the size that G's own rounding has. */
constexpr float LOG2E = 1.4426950408889634f;
__device__ __forceinline__ float exp2_sfu(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float softplus_f32(float x) { return x > 20.f ? x : log1pf(expf(x)); }

/* Rows [0, len) of a chunk into a [64][ld] tile, the rest (rows >= len,
 * columns [n, np)) zero; the source is read only inside the chunk. Where a
 * row is a power-of-two number of 16-byte pieces (np = 16 .. 256) a thread
 * keeps one column and steps down the rows: no division per piece. */
template <bool VEC>
__device__ __forceinline__ void load_rows(__nv_bfloat16 *dst, int ld, const __nv_bfloat16 *src,
                                          int64_t rs, int n, int np, int len) {
    if constexpr (VEC) {
        const int cpr = np / 8; /* 16-byte pieces a row; n % 8 == 0 */
        if ((cpr & (cpr - 1)) == 0) {
            const int sh = __ffs(cpr) - 1, step = NTHREADS >> sh;
            const int c = (threadIdx.x & (cpr - 1)) * 8;
            int t = threadIdx.x >> sh;
            const bool col_ok = c < n;
            int64_t off = t * rs + c;
            for (; t < BT; t += step, off += step * rs) {
                const bool ok = col_ok && t < len;
                cp_async16(dst + t * ld + c, ok ? src + off : src, ok ? 16 : 0);
            }
            return;
        }
        for (int i = threadIdx.x; i < BT * cpr; i += NTHREADS) {
            const int t = i / cpr, c = (i - t * cpr) * 8;
            const bool ok = t < len && c < n;
            cp_async16(dst + t * ld + c, ok ? src + t * rs + c : src, ok ? 16 : 0);
        }
    } else {
        const __nv_bfloat16 zero = __float2bfloat16(0.f);
        for (int i = threadIdx.x; i < BT * np; i += NTHREADS) {
            const int t = i / np, c = i - t * np;
            dst[t * ld + c] = t < len && c < n ? src[t * rs + c] : zero;
        }
    }
}

/* Rows [0, len), columns [0, n) of a tile to global rows of stride rs. */
template <bool VEC>
__device__ __forceinline__ void store_rows(__nv_bfloat16 *dst, int64_t rs, const __nv_bfloat16 *src,
                                           int ld, int n, int len) {
    if constexpr (VEC) {
        const int cpr = n / 8;
        if ((cpr & (cpr - 1)) == 0) { /* as in load_rows: one column a thread */
            const int sh = __ffs(cpr) - 1, step = NTHREADS >> sh;
            const int c = (threadIdx.x & (cpr - 1)) * 8;
            int64_t off = (threadIdx.x >> sh) * rs + c;
            for (int t = threadIdx.x >> sh; t < len; t += step, off += step * rs)
                *reinterpret_cast<uint4 *>(dst + off) = *reinterpret_cast<const uint4 *>(src + t * ld + c);
            return;
        }
        for (int i = threadIdx.x; i < len * cpr; i += NTHREADS) {
            const int t = i / cpr, c = (i - t * cpr) * 8;
            *reinterpret_cast<uint4 *>(dst + t * rs + c) =
                *reinterpret_cast<const uint4 *>(src + t * ld + c);
        }
    } else {
        for (int i = threadIdx.x; i < len * n; i += NTHREADS) {
            const int t = i / n, c = i - t * n;
            dst[t * rs + c] = src[t * ld + c];
        }
    }
}

/* 1 / sqrt(sum x^2 + 1e-6) over row `row` of a [64][ld] bf16 tile whose
 * columns [n, np) are zero (np % 16 == 0, ld = np + 8). Four lanes share a
 * row (part = lane >> 3 takes 16-byte pieces part, part + 4, ...), so a
 * warp does 8 rows at once; lanes 0-7 read 8 rows at one offset, which the
 * odd 16-byte pitch spreads over all banks. Two xor shuffles give all four
 * lanes the same bits. */
__device__ __forceinline__ float row_inv_norm(const __nv_bfloat16 *tile, int ld, int np, int row,
                                              int part) {
    const __nv_bfloat16 *r = tile + row * ld;
    float s = 0.f;
    for (int c = part * 8; c < np; c += 32) {
        const uint4 x = *reinterpret_cast<const uint4 *>(r + c);
        const __nv_bfloat162 *p = reinterpret_cast<const __nv_bfloat162 *>(&x);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(p[e]);
            s = fmaf(f.x, f.x, s);
            s = fmaf(f.y, f.y, s);
        }
    }
    s += __shfl_xor_sync(FULL, s, 8);
    s += __shfl_xor_sync(FULL, s, 16);
    return 1.f / sqrtf(s + 1e-6f);
}

/* x = hi + lo with hi = bf16(x), lo = bf16(x - hi): about 16 bits of x. */
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t &hi, uint32_t &lo) {
    const __nv_bfloat16 h0 = __float2bfloat16(x0), h1 = __float2bfloat16(x1);
    hi = (uint32_t)__bfloat16_as_ushort(h0) | ((uint32_t)__bfloat16_as_ushort(h1) << 16);
    lo = pack_bf16x2(x0 - __bfloat162float(h0), x1 - __bfloat162float(h1));
}

/* MINB blocks a multiprocessor by the launch bound: 3 keeps 80 registers a
 * thread, 4 caps them at 64 (a few bytes of spill) for 32 warps where
 * shared memory allows four blocks. */
template <bool VEC, int MINB, bool TP, bool SHARED>
__global__ void __launch_bounds__(NTHREADS, MINB) chunk_prep_kernel(const PrepParams P, bool v_late) {
    extern __shared__ __align__(16) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int K = P.K, V = P.V, Hv = P.Hv, Hk = P.Hk;
    const int kp = pad16(K), vp = pad16(V);
    const int ldk = kp + 8, ldv = vp + 8;
    __nv_bfloat16 *Ks = reinterpret_cast<__nv_bfloat16 *>(smem);
    __nv_bfloat16 *Vs = v_late ? Ks : Ks + BT * ldk;
    float *A = reinterpret_cast<float *>(Ks + kv_region_elems(ldk, ldv, v_late, TP)); /* R1 */
    float *Ti = A + BT * LDF;                            /* R2 */
    float *bs = Ti + BT * LDF;                           /* beta (0 past the end) */
    float *Gs = bs + BT;                                 /* gate cumsum */
    float *kss = Gs + BT;                                /* k inverse norms */
    float *dws = kss + BT;                               /* beta exp(G) ks: w's column scale;
                                                            TP: the q inverse norms */
    /* TP: the beta / cumsum pair of value head i in slot i % GATE_SLOTS
     * (slot 0 is bs, Gs above) */
    float *const slots = dws + BT;
    auto slot_b = [&](int i) { return i % GATE_SLOTS == 0 ? bs : slots + (i % GATE_SLOTS - 1) * 2 * BT; };
    __nv_bfloat16 *Qs = reinterpret_cast<__nv_bfloat16 *>(A); /* q rows, until A is written */
    __nv_bfloat16 *const Ps = Ks; /* TP: P's staging tile [64][LDP], once k is dead (step 3) */

    /* Block -> (chunk, head), heads fastest: the heads of a key head read
     * the same k, q rows close together in time (L2 hits). With the T/P
     * form and SHARED (group > 1) a block takes (chunk, key head) and
     * every value head of that key head in turn: k, q, their norms and
     * the products k k^T, q k^T (which depend on the key head only) are
     * loaded and computed once for all of them. */
    /* the fused pass may launch now: its blocks take multiprocessors as
     * prep's last ones leave, and wait for the whole of prep (pdl_wait) */
    if constexpr (TP) pdl_trigger();
    const int share = SHARED ? P.group : 1; /* a constant 1 keeps S, QK out of the loop's registers */
    const unsigned grid_heads = share > 1 ? Hk : Hv;
    const int64_t c = blockIdx.x / grid_heads;
    const int hx = (int)(blockIdx.x % grid_heads);
    const int kh = share > 1 ? hx : P.tiled ? hx % Hk : hx / P.group;
    /* value head i of this block */
    auto head_of = [&](int i) { return share == 1 ? hx : P.tiled ? hx + i * Hk : hx * P.group + i; };
    int h = head_of(0);
    const ChunkLoc loc = locate_chunk(P.map, c);
    const int len = loc.len;
    const int64_t t0 = loc.t0;
    const int64_t rs_k = (int64_t)Hk * K, rs_v = (int64_t)Hv * V;

    /* ---- 1. loads; gates and cumsum ---- */
    /* A warp's part of value head h's gates: its lanes' raw g and beta
     * (tokens lane, lane + 32; 0 past the end) and the head's qwen-gate
     * constants, loaded apart from the arithmetic so that step 1's gate
     * warps issue them before the tile copies, not behind them (H100:
     * prep 89-90 -> 81-82 us under ncu at q35_t8k, the forward -2%) */
    struct GateIn {
        float g[2], b[2], negA, dtb;
    };
    auto gate_loads = [&](int h) {
        GateIn in;
        in.negA = P.qwen_gate ? -expf(P.A_log[h]) : 0.f;
        in.dtb = P.qwen_gate ? P.dt_bias[h] : 0.f;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int t = lane + 32 * e;
            const int64_t idx = (t0 + t) * Hv + h;
            in.g[e] = t < len ? P.g[idx] : 0.f;
            in.b[e] = t < len ? P.beta[idx] : 0.f;
        }
        return in;
    };
    /* beta and the gate cumsum of value head h into bd, Gd */
    auto gate_scan = [&](int h, const GateIn &in, float *bd, float *Gd) {
        float g[2], b[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int t = lane + 32 * e;
            g[e] = b[e] = 0.f;
            if (t < len) {
                float gt = in.g[e], bt = in.b[e];
                if (P.qwen_gate) gt = in.negA * softplus_f32(gt + in.dtb);
                if (P.beta_sigmoid) bt = 1.f / (1.f + expf(-bt));
                g[e] = gt;
                b[e] = bt;
            }
        }
        /* in token order, as the CPU reference sums (rows past the end add 0) */
        float run = 0.f, G[2] = {0.f, 0.f};
#pragma unroll
        for (int e = 0; e < 2; e++)
#pragma unroll
            for (int s = 0; s < 32; s++) {
                run += __shfl_sync(FULL, g[e], s);
                if (lane == s) G[e] = run;
            }
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int t = lane + 32 * e;
            const bool ok = t < len;
            bd[t] = ok ? b[e] : 0.f;
            Gd[t] = ok ? G[e] : 0.f;
            if (ok && !TP) P.gcum[(t0 + t) * Hv + h] = G[e];
        }
    };
    /* Warp 0 takes value head h's gates and (T/P form, shared key head)
     * warp i those of the block's head i where it has a slot (see step 4) */
    const int gate_head = warp == 0 || (TP && warp < share && warp < GATE_SLOTS) ? warp : -1;
    GateIn gin{};
    if (gate_head >= 0) gin = gate_loads(head_of(gate_head));

    load_rows<VEC>(Ks, ldk, P.k + (t0 * Hk + kh) * K, rs_k, K, kp, len);
    /* q is needed only for its norms: its rows go to R1/R2, free until A */
    if (TP || (P.l2norm && P.qscale))
        load_rows<VEC>(Qs, ldk, P.q + (t0 * Hk + kh) * K, rs_k, K, kp, len);
    if constexpr (VEC) cp_async_commit();
    /* v in a group of its own (empty with v_late): it is first read in
     * step 7, so it lands while S, A and the solve run */
    const __nv_bfloat16 *vg = P.v + (t0 * Hv + h) * V;
    if (!v_late && !TP) load_rows<VEC>(Vs, ldv, vg, rs_v, V, vp, len);
    if constexpr (VEC) cp_async_commit();

    if (gate_head >= 0) gate_scan(head_of(gate_head), gin, slot_b(gate_head), slot_b(gate_head) + BT);

    if constexpr (VEC) cp_async_wait<1>(); /* k and q; v may be in flight */
    __syncthreads();

    /* ---- 2. S = k k^T (lower blocks); the q and k norms ----
     * Warp w: row block mt = w/2, column blocks nb0, nb0+1 (nb0 = 2(w%2))
     * where nb <= mt; warps 1 and 3 have none. */
    const int mt = warp >> 1, nb0 = (warp & 1) * 2;
    const bool s_work = nb0 <= mt, s_two = nb0 + 1 <= mt;
    float S[2][2][4], QK[TP ? 2 : 1][2][4]; /* TP: q k^T over the same blocks */
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) S[a][n][e] = QK[TP ? a : 0][n][e] = 0.f;
    if (s_work) {
#pragma unroll 2
        for (int kk = 0; kk < kp; kk += 16) {
            uint32_t a[4], b[4];
            ldmatrix_x4(a, Ks + (mt * 16 + (lane & 15)) * ldk + kk + (lane >> 4) * 8);
            ldmatrix_x4(b, Ks + (nb0 * 16 + ((lane >> 4) << 3) + (lane & 7)) * ldk + kk +
                               ((lane >> 3) & 1) * 8);
            uint32_t aq[4];
            if constexpr (TP) ldmatrix_x4(aq, Qs + (mt * 16 + (lane & 15)) * ldk + kk + (lane >> 4) * 8);
            mma_bf16_16816(S[0][0], a, b);
            mma_bf16_16816(S[0][1], a, b + 2);
            if constexpr (TP) {
                mma_bf16_16816(QK[0][0], aq, b);
                mma_bf16_16816(QK[0][1], aq, b + 2);
            }
            if (s_two) {
                ldmatrix_x4(b, Ks + ((nb0 + 1) * 16 + ((lane >> 4) << 3) + (lane & 7)) * ldk + kk +
                                   ((lane >> 3) & 1) * 8);
                mma_bf16_16816(S[1][0], a, b);
                mma_bf16_16816(S[1][1], a, b + 2);
                if constexpr (TP) {
                    mma_bf16_16816(QK[TP ? 1 : 0][0], aq, b);
                    mma_bf16_16816(QK[TP ? 1 : 0][1], aq, b + 2);
                }
            }
        }
    }

    /* q and k norms from the tiles (zero padding adds nothing): row
     * warp * 8 + (lane & 7), its results stored by lanes 0-7 */
    {
        const int t = warp * 8 + (lane & 7);
        const float ks = P.l2norm ? row_inv_norm(Ks, ldk, kp, t, lane >> 3) : 1.f;
        const bool qnorm = P.l2norm && P.qscale;
        const float qs = qnorm ? row_inv_norm(Qs, ldk, kp, t, lane >> 3) : 1.f;
        if (lane < 8) {
            const bool ok = t < len;
            kss[t] = ok ? ks : 0.f;
            if constexpr (TP) dws[t] = ok ? qs : 0.f;
            else dws[t] = ok ? bs[t] * expf(Gs[t]) * ks : 0.f;
            if constexpr (!TP) {
                if (ok && P.l2norm && P.kscale) P.kscale[(t0 + t) * Hv + h] = ks;
                if (ok && qnorm) P.qscale[(t0 + t) * Hv + h] = qs;
            }
        }
    }
    __syncthreads();

    /* Per value head (one pass unless the block shares its key head). */
    for (int vi = 0; vi < share; vi++) {
        float *const bv = slot_b(vi), *const Gv = bv + BT; /* (slot 0: bs, Gs) */
        if (vi > 0) h = head_of(vi); /* its gates came in step 1 or 4 (barriers since) */
        if constexpr (TP) { /* the fused pass's per-token factors, 64 threads: one
                             * 256-byte row each (whole sectors, where rows of
                             * [tokens, Hv] put each 4-byte value in a sector of its own) */
            if (tid < BT) {
                const int t = tid;
                const int64_t at = (c * Hv + h) * (int64_t)BT + t;
                float fq = 0.f, fk = 0.f, fd = 0.f, fb = 0.f; /* past the end: those tokens add nothing */
                if (t < len) {
                    const float G = Gv[t], eg = expf(G);
                    fq = P.scale * dws[t] * eg;
                    fk = kss[t] * eg;
                    fd = kss[t] * expf(Gv[len - 1] - G);
                    fb = bv[t];
                }
                P.qscale[at] = fq;
                P.kscale[at] = fk;
                P.gcum[at] = fd;
                P.tbeta[at] = fb;
            }
        }

        /* ---- 3. A[i][j] = beta_i ks_i ks_j S_ij exp(G_i - G_j), j < i < len;
         * 0 elsewhere in the lower blocks (select, so a non-finite S of a
         * masked entry stays out) ---- */
        if (s_work) {
            /* Smem operands are read into registers before any store: the
             * stores go through generic pointers, which the compiler must
             * assume alias them (each exp is then computed once for A and P). */
#pragma unroll
            for (int a = 0; a < 2; a++) {
                if (a == 1 && !s_two) break;
                float kj[2][2], gj[2][2]; /* gj in log2 units */
#pragma unroll
                for (int n = 0; n < 2; n++) {
                    const int j = (nb0 + a) * 16 + n * 8 + 2 * tig;
                    const float2 k2 = *reinterpret_cast<const float2 *>(kss + j);
                    const float2 g2 = *reinterpret_cast<const float2 *>(Gv + j);
                    kj[n][0] = k2.x, kj[n][1] = k2.y, gj[n][0] = g2.x * LOG2E, gj[n][1] = g2.y * LOG2E;
                }
#pragma unroll
                for (int hf = 0; hf < 2; hf++) {
                    const int i = mt * 16 + gid + hf * 8;
                    const bool row_ok = i < len;
                    const float bi = bv[i] * kss[i], gi = Gv[i] * LOG2E;
                    const float qi = TP ? P.scale * dws[i] : 0.f;
                    float2 out[2];
                    uint32_t pw[2];
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        const int j = (nb0 + a) * 16 + n * 8 + 2 * tig;
                        /* ks_j exp(G_i - G_j), shared by A and P */
                        const float e0 = kj[n][0] * exp2_sfu(gi - gj[n][0]);
                        const float e1 = kj[n][1] * exp2_sfu(gi - gj[n][1]);
                        out[n].x = row_ok && j < i ? bi * S[a][n][2 * hf] * e0 : 0.f;
                        out[n].y = row_ok && j + 1 < i ? bi * S[a][n][2 * hf + 1] * e1 : 0.f;
                        if constexpr (TP) { /* P[i][j], the diagonal included */
                            const float p0 = row_ok && j <= i ? qi * QK[TP ? a : 0][n][2 * hf] * e0 : 0.f;
                            const float p1 = row_ok && j + 1 <= i ? qi * QK[TP ? a : 0][n][2 * hf + 1] * e1 : 0.f;
                            pw[n] = pack_bf16x2(p0, p1);
                        }
                    }
#pragma unroll
                    for (int n = 0; n < 2; n++) {
                        const int j = (nb0 + a) * 16 + n * 8 + 2 * tig;
                        *reinterpret_cast<float2 *>(A + i * LDF + j) = out[n];
                        if constexpr (TP) *reinterpret_cast<uint32_t *>(Ps + i * LDP + j) = pw[n];
                    }
                }
            }
        }
        __syncthreads();

        /* ---- 4. diagonal blocks: (I + A_ii) X = [I | A_i0 .. A_i,i-1] by
         * forward substitution, one lane per right-hand column (160 in all:
         * 16 (i + 1) for block row i). X gives T_ii (to Ti, zeros above the
         * diagonal) and Y_ik = T_ii A_ik (in place of A_ik: only this lane
         * reads that column). The last warp, idle here, computes the next
         * value head's gates into its slot from the fifth head on (the
         * first GATE_SLOTS heads' came with the loads of step 1, where they
         * wait on no one: here they held this step back, H100 q35_t8k
         * -1.8%): that slot's previous head's T store, its last reader, is
         * behind the barriers of step 3. ---- */
        if (TP && warp == NW - 1 && vi + 1 < share && vi + 1 >= GATE_SLOTS)
            gate_scan(head_of(vi + 1), gate_loads(head_of(vi + 1)), slot_b(vi + 1), slot_b(vi + 1) + BT);
        if (TP && tid >= 160 && tid < 224) { /* P's lower blocks out of the staging tile in
                                              * 16-byte pieces: whole sectors (the fragments'
                                              * 4-byte stores filled half of each) */
            __nv_bfloat16 *pm = P.pmat + (c * Hv + h) * (int64_t)(BT * BT);
            /* row block m has 16 rows of 2 (m + 1) pieces, 16 m (m + 1) pieces before it */
            for (int x = tid - 160; x < 320; x += 64) {
                const int m = x < 32 ? 0 : x < 96 ? 1 : x < 192 ? 2 : 3;
                const int y = x - 16 * m * (m + 1), ppr = 2 * (m + 1);
                const int i = 16 * m + y / ppr, col = (y % ppr) * 8;
                *reinterpret_cast<uint4 *>(pm + i * BT + col) =
                    *reinterpret_cast<const uint4 *>(Ps + i * LDP + col);
            }
        }
        if (tid < 160) {
            const int i = tid < 16 ? 0 : tid < 48 ? 1 : tid < 96 ? 2 : 3;
            const int sub = (tid - 8 * i * (i + 1)) >> 4, cc = tid & 15;
            const bool ident = sub == i;
            const float *Ad = A + 16 * i * LDF + 16 * i;
            float *src = A + 16 * i * LDF + 16 * sub + cc;
            float x[16];
#pragma unroll
            for (int r = 0; r < 16; r++) x[r] = ident ? (r == cc ? 1.f : 0.f) : src[r * LDF];
#pragma unroll
            for (int r = 1; r < 16; r++) {
                const float *arow = Ad + r * LDF;
                float s = x[r];
#pragma unroll
                for (int q = 0; q < r; q += 4) {
                    const float4 av = *reinterpret_cast<const float4 *>(arow + q);
                    s = fmaf(-av.x, x[q], s);
                    if (q + 1 < r) s = fmaf(-av.y, x[q + 1], s);
                    if (q + 2 < r) s = fmaf(-av.z, x[q + 2], s);
                    if (q + 3 < r) s = fmaf(-av.w, x[q + 3], s);
                }
                x[r] = s;
            }
            if (ident) {
                float *dst = Ti + 16 * i * LDF + 16 * i + cc;
#pragma unroll
                for (int r = 0; r < 16; r++) dst[r * LDF] = r < cc ? 0.f : x[r];
            } else {
#pragma unroll
                for (int r = 0; r < 16; r++) src[r * LDF] = x[r];
            }
        }
        __syncthreads();

        /* ---- 5. off-diagonal blocks of Tinv: T_ij = -sum_{k=j}^{i-1} Y_ik
         * T_kj, 16 x 16 block products on tensor cores in split tf32 (see
         * split_tf32: about 2^-20 relative, far below the bf16 that T is
         * stored as, hi + lo in the three-kernel form). Written out, T_30
         * and T_31 need T_20 and T_21 first, a chain of six block products
         * down column block 0; with
         * Z_3k = Y_3k - Y_32 Y_2k (k = 0, 1) they are T_30 = -(Z_31 T_10 +
         * Z_30 T_00) and T_31 = -Z_31 T_11, so the work goes in two rounds
         * of at most two products a warp (H100: q35_t8k -0.9%, q397_t8k
         * -1.1%). Warp pair pr (warps 2 pr, 2 pr + 1) takes 8 columns c
         * each of a 16-column block:
         *   round 1  T_10 | T_21 | Z_30 (in Y_30's place) | Z_31 (in Y_31's)
         *   round 2  T_20 = -(Y_20 T_00 + Y_21 T_10) | T_31 | T_32 | T_30
         * (Named barriers between just the pairs that meet, instead of the
         * block barrier, gave the same time, and racecheck reported
         * hazards with them that I did not explain.) ---- */
        /* acc (big, cross) += the 16 x 16 block at y (rows gid, gid + 8 of
         * this lane) times the 16 x 8 block at b, f32 pitch LDF */
        auto kblock = [&](float (&big)[4], float (&cross)[4], const float *y, const float *b) {
#pragma unroll
            for (int ks = 0; ks < 16; ks += 8) {
                const float *yy = y + gid * LDF + ks + tig;
                const float *bb = b + (ks + tig) * LDF + gid;
                uint32_t ab[4], as[4], bb2[2], bsm[2];
                split_tf32(yy[0], ab[0], as[0]);
                split_tf32(yy[8 * LDF], ab[1], as[1]);
                split_tf32(yy[4], ab[2], as[2]);
                split_tf32(yy[8 * LDF + 4], ab[3], as[3]);
                split_tf32(bb[0], bb2[0], bsm[0]);
                split_tf32(bb[4 * LDF], bb2[1], bsm[1]);
                mma_tf32_1688(big, ab, bb2);
                mma_tf32_1688(cross, ab, bsm);
                mma_tf32_1688(cross, as, bb2);
            }
        };
        /* dst (a 16 x 8 block at pitch LDF) = base - (big + cross), base
         * the block's own values (a Z below) or zero (a T) */
        auto put = [&](float *dst, const float (&big)[4], const float (&cross)[4], bool minus_from_dst) {
            float *d = dst + gid * LDF + 2 * tig;
            float2 lo = make_float2(0.f, 0.f), hi = make_float2(0.f, 0.f);
            if (minus_from_dst) {
                lo = *reinterpret_cast<const float2 *>(d);
                hi = *reinterpret_cast<const float2 *>(d + 8 * LDF);
            }
            *reinterpret_cast<float2 *>(d) = make_float2(lo.x - (big[0] + cross[0]), lo.y - (big[1] + cross[1]));
            *reinterpret_cast<float2 *>(d + 8 * LDF) =
                make_float2(hi.x - (big[2] + cross[2]), hi.y - (big[3] + cross[3]));
        };
        auto Tb = [&](int i, int j) { return Ti + 16 * i * LDF + 16 * j; };
        auto Yb = [&](int i, int k) { return A + 16 * i * LDF + 16 * k; };
        {
            const int pr = warp >> 1, c = 8 * (warp & 1);
            float big[4] = {0.f, 0.f, 0.f, 0.f}, cross[4] = {0.f, 0.f, 0.f, 0.f};
            if (pr == 0) kblock(big, cross, Yb(1, 0), Tb(0, 0) + c);
            else if (pr == 1) kblock(big, cross, Yb(2, 1), Tb(1, 1) + c);
            else kblock(big, cross, Yb(3, 2), Yb(2, pr - 2) + c);
            put(pr == 0 ? Tb(1, 0) + c : pr == 1 ? Tb(2, 1) + c : Yb(3, pr - 2) + c, big, cross, pr >= 2);
            __syncthreads();
#pragma unroll
            for (int e = 0; e < 4; e++) big[e] = cross[e] = 0.f;
            if (pr == 0) {
                kblock(big, cross, Yb(2, 0), Tb(0, 0) + c);
                kblock(big, cross, Yb(2, 1), Tb(1, 0) + c);
            } else if (pr == 1) {
                kblock(big, cross, Yb(3, 1), Tb(1, 1) + c);
            } else if (pr == 2) {
                kblock(big, cross, Yb(3, 2), Tb(2, 2) + c);
            } else {
                kblock(big, cross, Yb(3, 1), Tb(1, 0) + c);
                kblock(big, cross, Yb(3, 0), Tb(0, 0) + c);
            }
            put(pr == 0 ? Tb(2, 0) + c : pr == 1 ? Tb(3, 1) + c : pr == 2 ? Tb(3, 2) + c : Tb(3, 0) + c, big,
                cross, false);
        }
        __syncthreads();

        if constexpr (TP) { /* T = Tinv diag(beta) strictly below the diagonal as bf16 (the
                             * pass adds the diagonal's beta in f32), lower blocks, all
                             * 64 rows: 4 columns a lane, two rows a warp at a time */
            const int j = (lane & 15) * 4;
            const float4 b4 = *reinterpret_cast<const float4 *>(bv + j); /* hoisted: see step 3 */
            __nv_bfloat16 *th = P.tmat + (c * Hv + h) * (int64_t)(BT * BT) + j;
#pragma unroll
            for (int r = 0; r < BT / (2 * NW); r++) {
                const int i = 2 * warp + (lane >> 4) + 2 * NW * r;
                if ((j >> 4) <= (i >> 4)) {
                    const float4 t = *reinterpret_cast<const float4 *>(Ti + i * LDF + j);
                    auto off = [&](float x, int col) { return col < i ? x : 0.f; };
                    const uint2 tt = make_uint2(pack_bf16x2(off(t.x * b4.x, j), off(t.y * b4.y, j + 1)),
                                                pack_bf16x2(off(t.z * b4.z, j + 2), off(t.w * b4.w, j + 3)));
                    *reinterpret_cast<uint2 *>(th + i * BT) = tt;
                }
            }
        }
    } /* value heads */
    if constexpr (TP) return;

    /* ---- 6. T' = Tinv diag(d) as bf16 hi/lo, lower blocks only (the
     * products read no other). w's pair goes to R1 (A is dead); u's
     * replaces Tinv in R2, so it waits in registers for a barrier ---- */
    __nv_bfloat16 *Wh = reinterpret_cast<__nv_bfloat16 *>(A), *Wl = Wh + BT * LDH;
    __nv_bfloat16 *Uh = reinterpret_cast<__nv_bfloat16 *>(Ti), *Ul = Uh + BT * LDH;
    {
        constexpr int IT = BT * BT / 2 / NTHREADS;
        uint32_t uh[IT], ul[IT];
        const int j = lane * 2;
        /* read before the stores (generic pointers: see step 3) */
        const float2 dw2 = *reinterpret_cast<const float2 *>(dws + j);
        const float2 b2 = *reinterpret_cast<const float2 *>(bs + j);
#pragma unroll
        for (int it = 0; it < IT; it++) {
            const int i = warp + it * NW;
            uh[it] = ul[it] = 0u;
            if ((j >> 4) <= (i >> 4)) {
                const float2 t = *reinterpret_cast<const float2 *>(Ti + i * LDF + j);
                uint32_t hi, lo;
                split_pair(t.x * dw2.x, t.y * dw2.y, hi, lo);
                *reinterpret_cast<uint32_t *>(Wh + i * LDH + j) = hi;
                *reinterpret_cast<uint32_t *>(Wl + i * LDH + j) = lo;
                split_pair(t.x * b2.x, t.y * b2.y, uh[it], ul[it]);
            }
        }
        __syncthreads();
#pragma unroll
        for (int it = 0; it < IT; it++) {
            const int i = warp + it * NW;
            if ((j >> 4) <= (i >> 4)) {
                *reinterpret_cast<uint32_t *>(Uh + i * LDH + j) = uh[it];
                *reinterpret_cast<uint32_t *>(Ul + i * LDH + j) = ul[it];
            }
        }
    }
    if constexpr (VEC) cp_async_wait<0>(); /* v, for step 7 */
    __syncthreads();

    /* ---- 7. w = T'_w k, u = T'_u v: one job = 16 columns of w or u, all
     * 64 rows; only the lower blocks of T' (kb <= m). Row block m of the
     * result replaces rows m of the job's own 16 columns of Ks / Vs (no
     * other warp reads them): m descends, so the rows overwritten are never
     * read again. hi and lo accumulate apart for two independent chains. ---- */
    const int jobs_w = kp / 16, jobs = jobs_w + vp / 16;
    auto wy = [&](int j0, int j1) {
        for (int job = j0 + warp; job < j1; job += NW) {
            const bool is_w = job < jobs_w;
            __nv_bfloat16 *B = is_w ? Ks : Vs;
            const int ldb = is_w ? ldk : ldv;
            const int n0 = (is_w ? job : job - jobs_w) * 16;
            const __nv_bfloat16 *Th = is_w ? Wh : Uh, *Tl = is_w ? Wl : Ul;
#pragma unroll
            for (int m = 3; m >= 0; m--) {
                float ah_acc[2][4], al_acc[2][4];
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) ah_acc[n][e] = al_acc[n][e] = 0.f;
#pragma unroll
                for (int kb = 0; kb <= m; kb++) {
                    uint32_t b[4], ah[4], al[4];
                    ldmatrix_x4_trans(b, B + (kb * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * ldb + n0 +
                                             (lane >> 4) * 8);
                    const int off = (m * 16 + (lane & 15)) * LDH + kb * 16 + (lane >> 4) * 8;
                    ldmatrix_x4(ah, Th + off);
                    ldmatrix_x4(al, Tl + off);
                    mma_bf16_16816(al_acc[0], al, b);
                    mma_bf16_16816(al_acc[1], al, b + 2);
                    mma_bf16_16816(ah_acc[0], ah, b);
                    mma_bf16_16816(ah_acc[1], ah, b + 2);
                }
                __syncwarp();
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int hf = 0; hf < 2; hf++) {
                        const int row = m * 16 + gid + hf * 8, col = n0 + n * 8 + 2 * tig;
                        *reinterpret_cast<uint32_t *>(B + row * ldb + col) =
                            pack_bf16x2(ah_acc[n][2 * hf] + al_acc[n][2 * hf],
                                        ah_acc[n][2 * hf + 1] + al_acc[n][2 * hf + 1]);
                    }
            }
        }
    };
    __nv_bfloat16 *wg = P.w + (t0 * Hv + h) * K, *ug = P.u + (t0 * Hv + h) * V;
    if (!v_late) {
        wy(0, jobs);
        __syncthreads();
    } else { /* w first and out; then v into the k tile's place */
        wy(0, jobs_w);
        __syncthreads();
        store_rows<VEC>(wg, (int64_t)Hv * K, Ks, ldk, K, len);
        __syncthreads();
        load_rows<VEC>(Vs, ldv, vg, rs_v, V, vp, len);
        if constexpr (VEC) {
            cp_async_commit();
            cp_async_wait<0>();
        }
        __syncthreads();
        wy(jobs_w, jobs);
        __syncthreads();
    }

    /* ---- 8. w (unless stored above), u rows of the chunk ---- */
    if (!v_late) store_rows<VEC>(wg, (int64_t)Hv * K, Ks, ldk, K, len);
    store_rows<VEC>(ug, rs_v, Vs, ldv, V, len);
}

/* chunk_offsets[i] = chunks of sequences before i: one block scans tiles of
 * 1024 sequences, carrying the running total. */
constexpr int SCAN_THREADS = 1024;

__global__ void __launch_bounds__(SCAN_THREADS)
chunk_offsets_kernel(const int32_t *cu, int N, int64_t *out, int smax, int min_seg) {
    __shared__ int64_t wsum[SCAN_THREADS / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int64_t carry = 0;
    for (int64_t base = 0; base < N; base += SCAN_THREADS) {
        const int64_t i = base + threadIdx.x;
        int64_t x = 0;
        if (i < N) {
            const int64_t len = (int64_t)cu[i + 1] - cu[i];
            x = len > 0 ? (len + BT - 1) / BT : 0;
            if (smax > 0) x = fused_seq_segments(x, smax, min_seg);
        }
        int64_t incl = x;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const int64_t y = __shfl_up_sync(FULL, incl, off);
            if (lane >= off) incl += y;
        }
        if (lane == 31) wsum[warp] = incl;
        __syncthreads();
        if (warp == 0) {
            int64_t s = wsum[lane];
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const int64_t y = __shfl_up_sync(FULL, s, off);
                if (lane >= off) s += y;
            }
            wsum[lane] = s; /* inclusive over warps */
        }
        __syncthreads();
        if (i < N) out[i] = carry + (warp ? wsum[warp - 1] : 0) + incl - x;
        carry += wsum[SCAN_THREADS / 32 - 1];
        __syncthreads(); /* wsum is rewritten by the next tile */
    }
    if (threadIdx.x == 0) out[N] = carry;
}

template <bool VEC, int MINB, bool TP, bool SHARED = false>
gdn_status launch_prep(gdn_context *ctx, const PrepParams &P, bool v_late, unsigned blocks, int bytes,
                       cudaStream_t stream) {
    auto kern = chunk_prep_kernel<VEC, MINB, TP, SHARED>;
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    kern<<<blocks, NTHREADS, bytes, stream>>>(P, v_late);
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_prep_kernel");
    return GDN_SUCCESS;
}

} // namespace

gdn_status launch_chunk_prep(gdn_context *ctx, const PrepParams &P, cudaStream_t stream) {
    if (P.K < 1 || P.K > GDN_MAX_HEAD_DIM || P.V < 1 || P.V > GDN_MAX_HEAD_DIM || P.Hk < 1 ||
        P.Hv < 1 || P.NT < 0)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "chunk_prep: bad shape (K %d, V %d, Hk %d, Hv %d, NT %lld)", P.K, P.V, P.Hk,
                        P.Hv, (long long)P.NT);
    if (P.NT == 0) return GDN_SUCCESS;
    if (P.NT > INT32_MAX / P.Hv)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "chunk_prep: %lld chunks x %d heads exceed the grid limit", (long long)P.NT,
                        P.Hv);
    /* The layout and launch bound that hold the most blocks a
     * multiprocessor (one holds about smem_optin + 1 KB, 1 KB a block
     * reserved); on a tie the whole layout (v loads early) and then the
     * bound of 3 (more registers). H100: K = V = 128 runs v_late with 4
     * blocks, 256 v_late with 3, 64 the whole layout with 4. */
    const int full = smem_bytes(P.K, P.V, false), late = smem_bytes(P.K, P.V, true);
    auto per_sm = [&](int bytes, int minb) {
        const int n = (int)((ctx->smem_optin + 1024) / ((size_t)bytes + 1024));
        return n < minb ? n : minb;
    };
    auto best = [&](int bytes) { return per_sm(bytes, 4) > per_sm(bytes, 3) ? 4 : 3; };
    const int by_plan = per_sm(late, best(late)) > per_sm(full, best(full)) ? 1 : 0;
    /* the T and P form reads no v: the v_late layout with no v load */
    const bool v_late = P.tmat ? true : env_override("GDN_CUDA_PREP_V_LATE", by_plan, {0, 1}) != 0;
    const int bytes = P.tmat ? smem_bytes(P.K, P.V, true, true) : v_late ? late : full;
    const int minb = best(bytes);
    if ((size_t)bytes > ctx->smem_optin)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "chunk_prep: kernel needs %d bytes of shared memory, device allows %zu",
                        bytes, ctx->smem_optin);
    /* 16-byte paths need every row (and base) on a 16-byte boundary */
    uintptr_t align = (uintptr_t)P.k;
    if (P.tmat) align |= (uintptr_t)P.q;
    else align |= (uintptr_t)P.v | (uintptr_t)P.w | (uintptr_t)P.u;
    if (P.l2norm && P.qscale) align |= (uintptr_t)P.q;
    const bool vec = P.K % 8 == 0 && P.V % 8 == 0 && align % 16 == 0;
    /* the T/P form shares a key head's products among its value heads
     * where it has more than one and its blocks (one a chunk and key head,
     * SHARE_MINB a multiprocessor) still fill the machine; a smaller grid
     * takes a block a value head, which spreads wider (H100, tp8_t2k's 64
     * shared blocks: prep 19.1 -> 12.4 us). Same bits either way;
     * GDN_CUDA_PREP_SHARE=0 | 1 forces it. Sharing: 3 blocks of 80
     * registers (its S, QK live across the heads; H100, against 4 of 64
     * with spills: q397_t8k 0.733 -> 0.725 ms, q35_t32k 1.459 -> 1.451). */
    constexpr int SHARE_MINB = 3;
    const bool fills = P.NT * P.Hk >= SHARE_MINB * (int64_t)sm_count(ctx);
    const bool share = P.tmat && P.group > 1 && env_override("GDN_CUDA_PREP_SHARE", fills ? 1 : 0, {0, 1}) == 1;
    const unsigned blocks = (unsigned)(P.NT * (share ? P.Hk : P.Hv));
    if (P.tmat) { /* the fused path needs K, V multiples of 8: always vectors */
        if (!vec)
            return gdn_fail(ctx, GDN_ERROR_INTERNAL, "chunk_prep: T/P form without 16-byte rows");
        if (share) return launch_prep<true, SHARE_MINB, true, true>(ctx, P, v_late, blocks, bytes, stream);
        if (env_override("GDN_CUDA_PREP_TP_MINB", minb, {3, 4}) == 4)
            return launch_prep<true, 4, true>(ctx, P, v_late, blocks, bytes, stream);
        return launch_prep<true, 3, true>(ctx, P, v_late, blocks, bytes, stream);
    }
    if (minb == 4)
        return vec ? launch_prep<true, 4, false>(ctx, P, v_late, blocks, bytes, stream)
                   : launch_prep<false, 4, false>(ctx, P, v_late, blocks, bytes, stream);
    return vec ? launch_prep<true, 3, false>(ctx, P, v_late, blocks, bytes, stream)
               : launch_prep<false, 3, false>(ctx, P, v_late, blocks, bytes, stream);
}

gdn_status launch_chunk_offsets(gdn_context *ctx, const int32_t *cu_seqlens, int N,
                                int64_t *chunk_offsets, cudaStream_t stream, int smax,
                                int min_seg) {
    if (N < 0 || !cu_seqlens || !chunk_offsets)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "chunk_offsets: bad arguments (N %d)", N);
    chunk_offsets_kernel<<<1, SCAN_THREADS, 0, stream>>>(cu_seqlens, N, chunk_offsets, smax, min_seg);
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_offsets_kernel");
    return GDN_SUCCESS;
}

} // namespace gdn

/*
 * The fused state + output pass of the CUDA chunked forward (see
 * FusedParams in chunk_forward.cuh for the math). It replaces the state
 * and output stages of the three-stage path: no w, u, v_new or bf16
 * chunk-start states go through memory, only o (and the states the
 * caller asks for) come out.
 *
 * Why it is shaped this way. Row j of the state evolves on its own given
 * the chunk's k, q, gates and T, so the V rows split across warps that
 * never talk to each other: a compute warp owns 16 rows of S (all K
 * columns) as m16n8k16 accumulators, f32, for the whole sequence. Every
 * product of a chunk then keeps the state side in registers:
 *   S q^T, S k^T   A = bf16(S) straight from the accumulators (the C
 *                  fragments of two n-tiles are the A fragment of one
 *                  k-step), B = q, k rows from shared memory
 *   U' T^T         A = U' packed from those accumulators, B = T rows
 *                  (T's strictly lower part, onto U' diag(beta) in f32:
 *                  dt_diagonal)
 *   D^T P^T        A = D^T likewise, B = P rows
 *   D'^T k         A = D'^T, B = k columns (ldmatrix.trans)
 * T and P are lower triangular: the blocks above the diagonal are skipped.
 * A block is NWS compute warps (16 NWS rows of one value head) and one or
 * two producer warps that stream each chunk's q, k, the block's v columns,
 * T, P and gates into a ring of stages by cp.async (mbarriers full / empty,
 * as the state kernel's producer form). The compute warps meet nowhere
 * (but in the pair form below): each waits on full, reads the stage, and
 * arrives on empty.
 *
 * What bounds it (H100, q35_t8k, 271 us, 2.1 us a chunk): the compute
 * warps, one a scheduler, always busy: stalls are mostly fixed-latency
 * waits. Clocked by phase (clock64, one warp, cycles a chunk): S q^T with
 * S k^T 1000 (128 products, about 8 cycles each), the update 840, o's
 * staging and stores 585, D^T 305, O2 265, U' 230, waiting for a stage 180.
 * Not the fills: leaving a second T tile unloaded (13% of the bytes, when
 * T came as bf16 hi + lo) changed nothing.
 * Tried and slower or no faster (RESULTS): output warps beside state warps,
 * two warps splitting S's columns, stmatrix for o's staging.
 * The per-token factors come from prep (they were computed here by every
 * warp: q35_t32k -5%), and the update runs all four k-steps even past a
 * partial chunk's end (a branch there cost 6% at q35_t8k).
 *
 * The wgmma form (WG, sm_90a): the same products, the same register
 * layouts, but the four compute warps are one warpgroup and each product
 * is a wgmma with A from those registers and B from swizzled shared
 * tiles (wgmma.cuh): a B operand is read once per 64 rows, not once per
 * warp, which is what bounds the mma.sync form once two blocks share a
 * multiprocessor (q397_t8k: fused pass 2x the q35_t8k time for 2x the
 * rows). T and P blocks above the diagonal are zeros in shared memory
 * and the products run whole rows over them. Tried and slower (RESULTS):
 * storing o during the next chunk's first products; trimming T's and P's
 * k-steps to the blocks below the diagonal; S q^T and S k^T as one
 * 128-wide product; the update's and O2's products interleaved.
 * Two warpgroups a block (NWS = 8, 128 rows): the same code per warp; the
 * two share each stage (one load of q, k, T, P for both) and run together
 * on one multiprocessor, registers moved to them by setmaxnreg
 * (block_warps). Where 64-row blocks would take two waves, this one wave
 * is faster (q35_b4_t8k 0.850 -> 0.779 ms); its pass then reads DRAM at
 * 79% of peak (ncu: 2.64 TB/s, 1.1 GB: q, k, v, T, P in, o out), so the
 * bytes, not the products, bound it there. Tried and no faster (RESULTS):
 * the two warpgroups taking turns to issue their products (named
 * barriers, as ping-pong GEMMs do).
 *
 * The pair form (pair_chunks): where a block has 32 rows (q35), four
 * compute warps, two a 16-row slice, split every chunk's token-parallel
 * products and the update's columns, and exchange fragments by shared
 * memory; with the inputs below by tensor copies it ran q35_t8k in 0.309
 * ms against 0.350 (two warps), q35_t32k 1.165 against 1.296 (H100).
 * It is also the only form above K = 128 (KP = 256): a warp keeps half
 * of K, so its state is 64 f32 registers as at K = 128 (255 registers in
 * all, no spills), and two stages of 94 KB with the exchange tiles fill
 * about 223 KB (k256_t8k 0.626 ms against 1.056 for the three kernels).
 *
 * Inputs (sm_90): a whole chunk's q, k, T and P arrive by
 * tensor copies that one producer lane issues into 128-byte swizzled
 * tiles; the per-lane cp.async copies before that kept the producer warp
 * issuing about 120 copies a chunk and bounded the pair form (q35_t8k
 * 0.430 ms with them, 0.309 without). T and P come a 16-row block a
 * copy from maps whose columns end at the diagonal block
 * (encode_tp_maps), so that the copies write zeros above it, which the
 * wgmma forms' products need (prep leaves those blocks unwritten; when
 * it wrote zeros there instead, for whole-tile copies, it took 6 us more
 * at q35_t8k, H100). The wgmma form takes T and P so where the sequence
 * is split (tp_tma); else it copies their lower blocks per lane and keeps
 * the zeros the kernel put there at the start. Prep's per-token factors
 * are one 256-byte row a tile (16-byte copies). As [tokens, Hv], each
 * value a sector of its own, they took 192 four-byte copies a stage,
 * which likely held the L1 pipe that the compute warps' ldmatrix reads
 * need (H100, q35_t8k's pair form 190 -> 174 us with the rows). v by a
 * tensor copy as well gained nothing there.
 *
 * o (sm_90): a warp stages its 16 rows of a whole chunk as a dense
 * [64][16] tile and one lane writes it with a tensor store (TMA), waited
 * for (read) only before the next chunk's staging: H100, against each
 * lane's four 16-byte stores, q35_t8k 0.358 -> 0.341 ms, q35_t32k 1.363 ->
 * 1.272, q397_t8k 0.527 -> 0.454, q35_b4_t8k 1.049 -> 0.930. The per-lane
 * stores (a sequence's last, partial chunk; sm_80) hold their source and
 * address registers until the store issues, which at 240 registers
 * serialised them (ncu: long-scoreboard waits on the address registers).
 * The staging is by stmatrix.trans on sm_90 (stage_ot), where 16 two-byte
 * stores a group pair were.
 *
 * The 32-row wgmma form (WG32, wg32_chunks): on sm_90a the pair form's
 * blocks at K <= 128 run as one warpgroup whose products are wgmmas
 * transposed (M = the chunk's tokens, N = the block's 32 rows), every B
 * operand read once a block; same bits (GDN_CUDA_FUSED_WG32=0 | 1). A
 * summary's 32-row blocks (few heads, short segments: tp8_t2k) run as WG32
 * too, where they were two mma.sync warps (MMA2).
 *
 * Launch (sm_90): as prep's programmatic dependent (FusedParams::pdl), so
 * blocks start on multiprocessors that prep's last blocks leave; only the
 * producers wait for prep (pdl_wait), the only warps that read its output.
 *
 * Split sequences (FusedParams): the summary launch is this kernel with
 * SUM set: no q, P, o products or loads, so its stages are 43 KB and its
 * registers 155 (wgmma form, K = 128), and two blocks share a
 * multiprocessor (H100, tp8_t64k, 8 segments of 128 chunks: 208 summary
 * blocks, 297 us under ncu; the forward 0.78 ms, against 0.955 with three
 * stages, one summary block a multiprocessor). Segment 0 may run as a
 * launch of its own beside the summary (FusedParams::seg_first), whose
 * end state is then segment 1's start; the summary and final launches
 * then skip it.
 *
 * Determinism and batch invariance: every row's arithmetic is fixed by
 * its chunk inputs and its own accumulators, in a fixed order; the plan
 * (NWS, stages, mma.sync or wgmma: the tensor cores sum each 16-deep
 * k-step the same way in both) changes which warp does a row, not how.
 */
#include "chunk_forward.cuh"
#include "wgmma.cuh"

namespace gdn {
namespace {

constexpr int BT = GDN_CHUNK;
constexpr int LDO = 24;     /* a warp's o staging rows: 16 values + pad */

/* A lane's ldmatrix row offsets in a swizzled [64][64] tile, by k-step
 * (or n-tile pair) mod 4: the part of every address that is neither a
 * compile-time constant nor the stage's base. Computed once (the swizzle's
 * XOR on every address cost about 150 integer instructions a warp a
 * chunk). b: rows 16 jj + (lane & 7) + 8 (lane >> 4), column 8 of
 * lane bit 3; t (ldmatrix.trans of k): rows 16 kk + 8 (lane bit 3) +
 * (lane & 7), column 8 (lane >> 4). Row offsets 16 jj (16 kk) leave the
 * swizzle's row phase unchanged, hence the constants. */
struct LaneOffsets {
    uint32_t b[4], t[4];
};
__device__ __forceinline__ LaneOffsets lane_offsets(int lane) {
    LaneOffsets lo;
    const int rb = (lane & 7) + ((lane >> 4) << 3), cb = ((lane >> 3) & 1) * 8;
    const int rt = ((lane >> 3) & 1) * 8 + (lane & 7), ct = (lane >> 4) * 8;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        lo.b[i] = sw128_offset(rb, 16 * i + cb);
        lo.t[i] = sw128_offset(rt, 16 * i + ct);
    }
    return lo;
}

/* One stage: q, k as KP / 64 swizzled [64][64] tiles, T and P one
 * swizzled [64][64] tile each (wgmma.cuh's 128-byte swizzle: conflict-free
 * ldmatrix rows, the wgmma form's operands, and the tensor copies' layout),
 * every tile 1024-byte aligned; then v [64][ROWS + 8] bf16 and prep's
 * per-token factors wd, wk, wb, wq [64] f32. After the stages: per compute
 * warp (per pair in the pair form) its o staging [64][LDO] bf16; then the
 * mbarriers. A summary (SUM) has no q, P, wq or o staging: its stages are
 * about 40% smaller. */
template <int KP, int NWS, bool WG, bool SUM = false, bool PAIR = false> struct FusedLayout {
    static constexpr int ROWS = 16 * NWS / (PAIR ? 2 : 1);
    static constexpr int LDV = ROWS + 8;
    static constexpr int QK_BYTES = BT * KP * 2;
    static constexpr int TP_BYTES = BT * BT * 2;
    static constexpr int Q = 0;
    static constexpr int KC = Q + (SUM ? 0 : QK_BYTES);
    static constexpr int TM = KC + QK_BYTES;
    static constexpr int PM = TM + TP_BYTES;
    static constexpr int VS = PM + (SUM ? 0 : TP_BYTES);
    static constexpr int WD = VS + BT * LDV * 2;
    static constexpr int WK = WD + BT * 4;
    static constexpr int WB = WK + BT * 4;
    static constexpr int WQ = WB + BT * 4;
    static constexpr int ALIGN = 1024;
    static constexpr int STAGE = (WQ + (SUM ? 0 : BT * 4) + ALIGN - 1) / ALIGN * ALIGN;
    static constexpr int WARP_BYTES = SUM ? 0 : BT * LDO * 2;
    /* the pair form (see pair_chunks): a pair's o staging, then its
     * exchange tiles: S halves (KP / 32 k-steps), U' (2 blocks), D and D'
     * (2 each), a warp's A fragments as [..][32 lanes] uint4 */
    static constexpr int PAIR_X = (2 * (KP / 32) + 4 + 8) * 32 * 16;
    static constexpr int PAIR_BYTES = BT * LDO * 2 + PAIR_X;
    static constexpr int COMPUTE_BYTES = PAIR ? NWS / 2 * PAIR_BYTES : NWS * WARP_BYTES;
    static_assert(!PAIR || (NWS == 4 && !WG), "pairs: 4 mma.sync compute warps (WG32 alone in a summary)");
    static_assert(STAGE % 16 == 0 && WARP_BYTES % 16 == 0 && VS % 16 == 0, "16-byte pieces");
    static_assert(KP % 64 == 0 && TM % 1024 == 0 && VS % 1024 == 0, "1024-byte aligned tiles");
    static_assert(!WG || NWS == 4 || NWS == 8, "wgmma: one or two warpgroups");
    /* byte offset of q / k element (t, c) (c a multiple of 8) in its tile */
    static __device__ __forceinline__ uint32_t qk_at(int t, int c) {
        return (uint32_t)((c >> 6) * (BT * 128)) + sw128_offset(t, c & 63);
    }
    /* byte offset of T / P element (t, s) (s a multiple of 8) */
    static __device__ __forceinline__ uint32_t tp_at(int t, int s) { return sw128_offset(t, s); }
    /* this lane's x4 ldmatrix row address (byte offset) of n-tiles 2 jj,
     * 2 jj + 1 by k-step kk from a q / k (or T / P: kk < 4) tile: rows are
     * the n index (B[k][n] = tile[n][k]); lo from lane_offsets */
    static __device__ __forceinline__ uint32_t b_at(const LaneOffsets &lo, int jj, int kk) {
        return (uint32_t)((kk >> 2) * (BT * 128) + jj * 2048) + lo.b[kk & 3];
    }
    /* the same, transposed (ldmatrix.trans) from k: k-step kk (rows = tokens),
     * n-tiles 2 np, 2 np + 1 (columns of K) */
    static __device__ __forceinline__ uint32_t bt_at(const LaneOffsets &lo, int kk, int np) {
        return (uint32_t)((np >> 2) * (BT * 128) + kk * 2048) + lo.t[np & 3];
    }
    /* with the slack to align the stages */
    static int bytes(int stages) { return ALIGN + stages * STAGE + COMPUTE_BYTES + 2 * stages * 8; }
};

/* Producer warps after the first (which loads q and k) that share the
 * rest of a stage (v, and in the wgmma forms T and P by per-lane copies):
 * two in the wgmma forms (H100, q35_b4_t8k in two warpgroups, one to four
 * producers in all: 0.869 / 0.846 / 0.748 / 0.760 ms; q397_t8k in one,
 * three against two: 0.380 against 0.418), but one in the one-warpgroup
 * summary, whose launch bound of two blocks a multiprocessor leaves no
 * registers for a seventh warp; one in the mma.sync forms (or none: a
 * lone producer loads everything). */
__host__ __device__ constexpr int rest_parts(int nws, bool wg, bool sum) {
    return wg && (nws == 8 || !sum) ? 2 : 1;
}

/* The producer warp (part of nparts): chunk c of the sequence into stage
 * slot, arriving on its full barrier bar; with more than one, part 0 loads
 * q and k, the others (rest_parts) the rest. Rows past the chunk's end and
 * columns past K, V are zero-filled (never read from global). With
 * P.tma_in (sm_90), a whole chunk's q and k (and T and P: the mma.sync
 * forms and WG32, the wgmma forms with P.tp_tma) come by tensor copies
 * that one lane issues (a partial chunk's rows past its end would be the
 * next sequence's: those keep the per-lane copies, which zero them); that
 * lane is then one more arrival (kernel's init count).
 * Prep leaves T's and P's blocks above the diagonal unwritten. The
 * wgmma forms (and WG32) need zeros there (their products run whole rows:
 * trimming them was slower); the tensor copies write zeros there (the
 * maps end at the diagonal block), and per-lane copies skip those blocks,
 * keeping the zeros that the kernel wrote at its start or a tensor copy
 * left. The wgmma form takes T and P per lane unless P.tp_tma. */
template <int KP, int NWS, bool WG, bool SUM, bool PAIR>
__device__ __forceinline__ void load_stage(uint8_t *st, uint64_t *bar, const FusedParams &P, const SeqSpan &sq,
                                           int c, int h, int kh, int row0, int lane, int part, int nparts) {
    using L = FusedLayout<KP, NWS, WG, SUM, PAIR>;
    const int64_t t0 = sq.bos + (int64_t)c * BT;
    const int len = (int)min((int64_t)BT, sq.eos - t0);
    const int64_t rs_k = (int64_t)P.Hk * P.K, rs_v = (int64_t)P.Hv * P.V;
    const __nv_bfloat16 *qg = P.q + (t0 * P.Hk + kh) * P.K, *kg = P.k + (t0 * P.Hk + kh) * P.K;
    constexpr int CPR = KP / 8; /* 16-byte pieces a q / k row */
    const int64_t ti = (sq.hoff + c) * P.Hv + h; /* prep's tile */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const bool tma = P.tma_in && len == BT;
#else
    constexpr bool tma = false;
#endif
    if (part == 0 && P.tma_in && lane == 0) {
        if (tma) {
            const uint32_t bytes = (SUM ? 1 : 2) * L::QK_BYTES + (WG && !P.tp_tma ? 0 : SUM ? 1 : 2) * L::TP_BYTES;
            mbar_arrive_expect_tx(bar, bytes);
#pragma unroll
            for (int b = 0; b < KP / 64; b++) {
                if (!SUM) tma_load_3d(st + L::Q + b * BT * 128, &P.tmap_q, bar, 64 * b, kh, (int)t0);
                tma_load_3d(st + L::KC + b * BT * 128, &P.tmap_k, bar, 64 * b, kh, (int)t0);
            }
            if (!WG || P.tp_tma) /* (else the wgmma form's T, P per lane below) */
#pragma unroll
                for (int rb = 0; rb < 4; rb++) { /* 16 rows a copy, zeros above the diagonal blocks */
                    const int row = (int)(ti * BT) + 16 * rb;
                    tma_load_3d(st + L::TM + rb * 2048, &P.tmap_tp[rb], bar, 0, row, 0);
                    if (!SUM) tma_load_3d(st + L::PM + rb * 2048, &P.tmap_tp[rb], bar, 0, row, 1);
                }
        } else {
            mbar_arrive(bar);
        }
    }
    if (part == 0 && !tma) {
#pragma unroll 4
        for (int i = lane; i < BT * CPR; i += 32) {
            const int t = i / CPR, cc = (i % CPR) * 8;
            const bool ok = t < len && cc < P.K;
            const int64_t off = ok ? t * rs_k + cc : 0;
            const uint32_t at = L::qk_at(t, cc);
            if (!SUM) cp_async16(st + L::Q + at, qg + off, ok ? 16 : 0); /* (no o: no q) */
            cp_async16(st + L::KC + at, kg + off, ok ? 16 : 0);
        }
    }
    if (part == 0 && nparts > 1) return;
    /* the rest: part 0 alone, part 1, or (two warpgroups) parts 1 and 2
     * (a compile-time stride: a runtime one cost the one-warpgroup form
     * 20% at q35_b4_t8k, its producer being on the critical path) */
    constexpr int NRP = rest_parts(NWS, WG, SUM), DI = 32 * NRP;
    const int i0 = lane + 32 * (nparts > 1 ? part - 1 : 0); /* < DI: the loops below need no bound */
    __nv_bfloat16 *vs = reinterpret_cast<__nv_bfloat16 *>(st + L::VS);
    constexpr int CPV = L::ROWS / 8;
    const __nv_bfloat16 *vg = P.v + (t0 * P.Hv + h) * P.V + row0;
    static_assert((BT * CPV) % DI == 0 && DI % CPV == 0 && BT % DI == 0, "whole rounds");
    /* a lane's column is the same every round, its row steps by DI / CPV */
    const int tv = i0 / CPV, cc = (i0 % CPV) * 8;
#pragma unroll 4
    for (int r = 0; r < BT * CPV / DI; r++) {
        const int t = tv + r * (DI / CPV);
        const bool ok = t < len && row0 + cc < P.V;
        cp_async16(vs + t * L::LDV + cc, ok ? vg + t * rs_v + cc : vg, ok ? 16 : 0);
    }
    const int64_t tile = ti * (BT * BT);
#pragma unroll 4
    for (int r = 0; r < BT * 8 / DI && (!tma || (WG && !P.tp_tma)); r++) {
        const int t = (i0 >> 3) + r * (DI / 8), cc = (i0 & 7) * 8;
        if ((cc >> 4) > (t >> 4)) continue; /* zeros there (the kernel's start, or a tensor copy) */
        const uint32_t at = L::tp_at(t, cc);
        const int64_t g = tile + t * BT + cc;
        cp_async16(st + L::TM + at, P.tmat + g, 16);
        if (!SUM) cp_async16(st + L::PM + at, P.pmat + g, 16);
    }
    float *wd = reinterpret_cast<float *>(st + L::WD), *wk = reinterpret_cast<float *>(st + L::WK);
    float *wq = reinterpret_cast<float *>(st + L::WQ), *wb = reinterpret_cast<float *>(st + L::WB);
    /* the factors: a 256-byte row of each array, 16 bytes a lane (prep
     * zeroed them past the end) */
    if (i0 < BT / 4) {
        const int64_t g = ti * BT + 4 * i0;
        cp_async16(wd + 4 * i0, P.wd + g, 16);
        cp_async16(wk + 4 * i0, P.wk + g, 16);
        cp_async16(wb + 4 * i0, P.wb + g, 16);
        if (!SUM) cp_async16(wq + 4 * i0, P.wq + g, 16);
    }
}

/* The A fragment (bf16) of k-step kk from the accumulators of n-tiles
 * 2 kk and 2 kk + 1: rows gid / gid + 8, columns 2 tig (+8). */
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float (&c0)[4], const float (&c1)[4]) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

/* D^T's diagonal term on a C fragment x (columns t, t + 1 with factors
 * b0, b1): U'[:, t] beta_t, in f32. T's diagonal is exactly beta (the
 * inverse of I + A, A strictly lower, has a unit diagonal), so adding it
 * here instead of through bf16 leaves only T's off-diagonal part, which is
 * far smaller, to the operand rounding (see PrepParams::tmat). */
__device__ __forceinline__ void dt_diagonal(float (&x)[4], const float (&u)[4], float b0, float b1) {
    x[0] = u[0] * b0;
    x[1] = u[1] * b1;
    x[2] = u[2] * b0;
    x[3] = u[3] * b1;
}

/* D^T's n-tiles 2 jj, 2 jj + 1 (x0, x1, holding U' diag(beta) there) +=
 * U' T^T over the k-steps kk <= jj (T strictly lower triangular), in
 * k-step order: the order every form sums in. */
template <class L>
__device__ __forceinline__ void dt_block(float (&x0)[4], float (&x1)[4], const uint32_t (&ua)[4][4],
                                         const uint8_t *ts, const LaneOffsets &lo, int jj) {
#pragma unroll
    for (int kk = 0; kk <= jj; kk++) {
        uint32_t bt[4];
        ldmatrix_x4(bt, ts + L::b_at(lo, jj, kk));
        mma_bf16_16816(x0, ua[kk], bt);
        mma_bf16_16816(x1, ua[kk], bt + 2);
    }
}

/* A warp's 16 rows of S (from r0; columns k0 .. k0 + 8 NT - 1) into the
 * [rows][K] state (or [K][rows] with kv) at dst; rows past `rows` and
 * columns past K are not stored. */
template <int NT>
__device__ __forceinline__ void store_rows(float *dst, const float (&S)[NT][4], int kv, int rows, int K,
                                           int r0, int lane, int k0 = 0) {
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int v = r0 + gid + 8 * (e >> 1), k = k0 + 8 * j + 2 * tig + (e & 1);
            if (v < rows && k < K) dst[state_index(kv, rows, K, v, k)] = S[j][e];
        }
}

/* Where a block's state starts and ends (see FusedParams): its segment's
 * chunks [c0, c1) of the sequence, the state it starts from (its rows
 * [V][K], or NULL: zero, and in a summary the unit rows past V), and where
 * its end state goes ([rows][K] or, kv, [K][rows]; NULL: nowhere). */
struct SegmentPlan {
    int c0, c1;
    const float *start;
    int start_kv;
    float *end;
    int end_kv, end_rows;
};

/* Block unit b (over the launch's segments) -> sequence n and segment
 * seg: b = n segs + seg, or by seg_off (varlen; a summary counts S_n - 1
 * segments a sequence). Returns S, the sequence's segments. */
template <bool SUM>
__device__ __forceinline__ int locate_segment(const FusedParams &P, unsigned b, int segs, int &n, int &seg) {
    if (P.seg_off && !SUM && P.seg_first == 1) { /* segment 0 of sequence b */
        n = (int)b;
        seg = 0;
        return (int)(P.seg_off[n + 1] - P.seg_off[n]);
    }
    if (!P.seg_off) {
        seg = (int)(b % (unsigned)segs);
        n = (int)(b / (unsigned)segs);
        return P.segments;
    }
    auto key = [&](int i) { return P.seg_off[i] - (SUM ? i : 0); };
    int lo = 0, hi = P.map.N - 1; /* the last n with key(n) <= b (empty ranges own no block) */
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (key(mid) <= (int64_t)b) lo = mid;
        else hi = mid - 1;
    }
    n = lo;
    seg = (int)((int64_t)b - key(lo));
    return (int)(P.seg_off[lo + 1] - P.seg_off[lo]);
}

template <bool SUM>
__device__ __forceinline__ SegmentPlan segment_plan(const FusedParams &P, int n, int h, int seg, int S,
                                                    int nchunks) {
    SegmentPlan s;
    const int64_t head = (int64_t)n * P.Hv + h;
    const int64_t VK = (int64_t)P.V * P.K;
    /* the entry of segment s >= 1 in h_start and seg_summary */
    auto slot = [&](int s) -> int64_t {
        return P.seg_off ? (P.seg_off[n] - n + s - 1) * P.Hv + h : (int64_t)(s - 1) * P.map.N * P.Hv + head;
    };
    const int per = P.seg_off ? (S > 1 ? (nchunks + S - 1) / S : 0) : P.seg_chunks;
    s.c0 = per ? min(seg * per, nchunks) : 0;
    s.c1 = per ? min(s.c0 + per, nchunks) : nchunks;
    s.start = seg == 0 ? (P.h0 ? P.h0 + head * VK : nullptr) : (SUM ? nullptr : P.h_start + slot(seg) * VK);
    s.start_kv = seg == 0 ? P.kv : 0;
    s.end = nullptr;
    s.end_kv = 0;
    s.end_rows = P.V;
    if (SUM && seg == 0) {
        s.end = P.h_start + slot(1) * VK; /* segment 1's start */
    } else if (SUM) {
        s.end = P.seg_summary + slot(seg) * (VK + (int64_t)P.K * P.K);
        s.end_rows = P.V + P.K;
    } else if (P.seg_first == 1 && S > 1) { /* segment 0 beside the summary: segment 1's start */
        s.end = P.h_start + slot(1) * VK;
    } else if (seg >= S - 1 && P.final_state) { /* (S 0 or 1: no split) */
        s.end = P.final_state + head * VK;
        s.end_kv = P.kv;
    }
    return s;
}

/* The 16-byte half (0 or 1) of an o staging row t ([64][16] bf16) that
 * holds values 8 half .. 8 half + 7 in the o map's 32-byte swizzle. */
__device__ __forceinline__ int o_swz32(int half, int t) { return half ^ ((t >> 2) & 1); }

/* Two 8-token groups of a warp's O^T fragments (rows v = gid, gid + 8;
 * columns the tokens ta + 2 tig, + 1 and tb + ...) into a [t][pitch] bf16
 * tile, transposed: one stmatrix on sm_90 where 16 two-byte stores were.
 * The tensor stores' dense [64][16] tile (pitch 16: 32-byte rows) is in
 * the o map's 32-byte swizzle, its 16-byte halves swapped in rows with
 * bit 2 set: unswizzled, rows r and r + 4 of each 8-row matrix fell on
 * the same banks, two wavefronts a matrix (H200, three rounds: q397_t8k
 * and tp8_t64k -0.9%, whose warps stage four times a chunk; the pair
 * form's rows unchanged). */
__device__ __forceinline__ void stage_ot(__nv_bfloat16 *tile, int pitch, const float (&xa)[4], const float (&xb)[4],
                                         int ta, int tb, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const int m = lane >> 3; /* the matrix this lane addresses: (group, v half) */
    const int half = pitch == 16 ? o_swz32(m & 1, lane & 7) : m & 1; /* (ta, tb multiples of 8) */
    stmatrix_x4<true>(tile + ((m < 2 ? ta : tb) + (lane & 7)) * pitch + half * 8, pack_bf16x2(xa[0], xa[1]),
                      pack_bf16x2(xa[2], xa[3]), pack_bf16x2(xb[0], xb[1]), pack_bf16x2(xb[2], xb[3]));
#else
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const int t = 2 * tig + (e & 1), v = gid + 8 * (e >> 1);
        tile[(ta + t) * pitch + v] = __float2bfloat16(xa[e]);
        tile[(tb + t) * pitch + v] = __float2bfloat16(xb[e]);
    }
#endif
}

/* A place in the ring of stages: the slot and the parity of its use,
 * stepped once a chunk (a runtime % and / by the stage count were about
 * 20 instructions a warp a chunk on the pair form's chain). */
struct Ring {
    int slot = 0;
    uint32_t phase = 0;
    __device__ __forceinline__ void next(int stages) {
        if (++slot == stages) slot = 0, phase ^= 1u;
    }
};

/* A warp's 16 rows of o for one chunk (tokens t0 .. t0 + len - 1) through
 * its staging tile ost, as 16-byte stores. */
__device__ __forceinline__ void store_o(__nv_bfloat16 *ost, const float (&O)[8][4], const FusedParams &P,
                                        int64_t t0, int len, int h, int r0, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (P.tma_o) { /* the staging tile is free once the last tensor store has read it */
        if (lane == 0) bulk_wait_read<0>();
        __syncwarp();
    }
    if (P.tma_o && len == BT) { /* a whole chunk: a dense [64][16] tile, one tensor store */
#pragma unroll
        for (int j = 0; j < 8; j += 2) stage_ot(ost, 16, O[j], O[j + 1], 8 * j, 8 * j + 8, lane);
        fence_proxy_async_smem();
        __syncwarp();
        if (lane == 0 && r0 < P.V) { /* values past V are outside the map */
            tma_store_3d(&P.tmap_o, ost, r0, h, (int)t0);
            bulk_commit();
        }
        return;
    }
#endif
#pragma unroll
    for (int j = 0; j < 8; j += 2) stage_ot(ost, LDO, O[j], O[j + 1], 8 * j, 8 * j + 8, lane);
    __syncwarp();
    __nv_bfloat16 *og = P.o + (t0 * P.Hv + h) * P.V + r0;
#pragma unroll
    for (int i = lane; i < 2 * BT; i += 32) {
        const int t = i >> 1, half = (i & 1) * 8;
        if (t < len && r0 + half < P.V)
            *reinterpret_cast<uint4 *>(og + t * (int64_t)P.Hv * P.V + half) =
                *reinterpret_cast<const uint4 *>(ost + t * LDO + half);
    }
    __syncwarp();
}

/* ---- the pair form (mma.sync, 32 rows a block, four compute warps) ----
 * With 32 rows a block and one block a multiprocessor (q35: 32 heads x 4
 * row tiles = 128 blocks), two compute warps leave two of the four
 * schedulers idle and each warp's mma.sync chain bounds the chunk. Here
 * two warps share 16 rows: warp R of a pair takes the token blocks
 * {0, 3} (R = 0) or {1, 2} (R = 1) of every token-parallel product (S q^T,
 * S k^T, U', D^T, O2: the triangular ones balance at 5 of 10 blocks each)
 * and the columns [R K / 2, (R + 1) K / 2) of the update. Each warp keeps
 * the f32 state of its half only; the products that reduce over K take
 * the other half's bf16 A fragments from shared memory, published after
 * every update. U', D and D' fragments are exchanged likewise, with three
 * 64-thread barriers a chunk (unaligned: the two warps run different
 * instantiations, so they meet at different instructions). Every
 * accumulator sums the same products in the same order as in the one-warp
 * forms, so the bits are theirs. */
struct PairCtx {
    const FusedParams &P;
    uint8_t *smem;
    uint64_t *full, *empty;
    int stages;
    SeqSpan sq;
    int h, r0, pair, lane; /* r0: the pair's first row (its v columns start 16 pair in) */
    uint8_t *pb;           /* the pair's o staging, then its exchange tiles */
};

template <int KP, int R> __device__ __forceinline__ void pair_chunks(const PairCtx &C, const SegmentPlan &sp) {
    using L = FusedLayout<KP, 4, false, false, true>;
    constexpr int NT = KP / 8, NH = NT / 2, KH = KP / 32; /* own n-tiles, own k-steps */
    constexpr int J0 = R ? 1 : 0, J1 = R ? 2 : 3;           /* own token blocks */
    constexpr int O0 = R ? 0 : 1, O1 = R ? 3 : 2;           /* the partner's */
    const FusedParams &P = C.P;
    const int lane = C.lane, gid = lane >> 2, tig = lane & 3, r0 = C.r0;
    const int bar = 1 + C.pair;
    const LaneOffsets lo = lane_offsets(lane);
    __nv_bfloat16 *ost = reinterpret_cast<__nv_bfloat16 *>(C.pb);
    uint4 *xs = reinterpret_cast<uint4 *>(C.pb + BT * LDO * 2); /* [2][KH][32] */
    uint4 *xu = xs + 2 * KH * 32;                                /* [2][2][32] */
    uint4 *xd = xu + 2 * 2 * 32;                                 /* [2][4][32]: D, D, D', D' */
    auto put = [&](uint4 *x, int i, const uint32_t (&a)[4]) { x[i * 32 + lane] = make_uint4(a[0], a[1], a[2], a[3]); };
    auto get = [&](uint32_t (&a)[4], const uint4 *x, int i) {
        const uint4 w = x[i * 32 + lane];
        a[0] = w.x, a[1] = w.y, a[2] = w.z, a[3] = w.w;
    };

    float S[NH][4]; /* columns 8 (R NH + j) + ... */
#pragma unroll
    for (int j = 0; j < NH; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int v = r0 + gid + 8 * (e >> 1), k = 8 * (R * NH + j) + 2 * tig + (e & 1);
            S[j][e] = sp.start && v < P.V && k < P.K ? sp.start[state_index(sp.start_kv, P.V, P.K, v, k)] : 0.f;
        }
    /* the partner's half and the own half as A fragments; the own half's
     * are kept from publishing S to the next chunk's S k^T, S q^T (S does
     * not change between) */
    uint32_t so[KH][4], sa[KH][4];
    auto publish = [&]() {
#pragma unroll
        for (int kk = 0; kk < KH; kk++) {
            acc_to_a(sa[kk], S[2 * kk], S[2 * kk + 1]);
            put(xs, R * KH + kk, sa[kk]);
        }
    };
    publish();
    named_barrier_unaligned(bar, 64);
#pragma unroll
    for (int kk = 0; kk < KH; kk++) get(so[kk], xs, (1 - R) * KH + kk);

    Ring ring;
    for (int c = sp.c0; c < sp.c1; c++, ring.next(C.stages)) {
        const int slot = ring.slot;
        const uint8_t *st = C.smem + slot * L::STAGE;
        const uint8_t *qs = st + L::Q;
        const uint8_t *ks = st + L::KC;
        const __nv_bfloat16 *vs = reinterpret_cast<const __nv_bfloat16 *>(st + L::VS);
        const uint8_t *ts = st + L::TM;
        const uint8_t *ps = st + L::PM;
        const float *wd = reinterpret_cast<const float *>(st + L::WD);
        const float *wk = reinterpret_cast<const float *>(st + L::WK);
        const float *wb = reinterpret_cast<const float *>(st + L::WB);
        const float *wq = reinterpret_cast<const float *>(st + L::WQ);
        const int64_t t0 = C.sq.bos + (int64_t)c * BT;
        const int len = (int)min((int64_t)BT, C.sq.eos - t0);
        const bool tma = P.tma_o && len == BT;

        if (P.chunk_states)
            store_rows(P.chunk_states + ((C.sq.hoff + c) * P.Hv + C.h) * P.V * P.K, S, P.kv, P.V, P.K, r0, lane,
                       8 * R * NH);
        mbar_wait(C.full + slot, ring.phase);

        /* O1 = S q^T, X = S k^T over the own token blocks, all K */
        float O[2][2][4], X[2][2][4];
#pragma unroll
        for (int b = 0; b < 2; b++)
#pragma unroll
            for (int s = 0; s < 2; s++)
#pragma unroll
                for (int e = 0; e < 4; e++) O[b][s][e] = X[b][s][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KP / 16; kk++) {
            uint32_t a[4];
#pragma unroll
            for (int e = 0; e < 4; e++) a[e] = kk / KH == R ? sa[kk - R * KH][e] : so[kk - (1 - R) * KH][e];
#pragma unroll
            for (int b = 0; b < 2; b++) {
                uint32_t bq[4], bk[4];
                const uint32_t off = L::b_at(lo, b ? J1 : J0, kk);
                ldmatrix_x4(bq, qs + off);
                ldmatrix_x4(bk, ks + off);
                mma_bf16_16816(O[b][0], a, bq);
                mma_bf16_16816(O[b][1], a, bq + 2);
                mma_bf16_16816(X[b][0], a, bk);
                mma_bf16_16816(X[b][1], a, bk + 2);
            }
        }

        /* U' = V^T - X diag(ks gamma) and O1 scaled, own blocks; then the
         * partner's U' */
        uint32_t ua[4][4];
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const int jj = b ? J1 : J0;
            uint32_t vt[4];
            ldmatrix_x4_trans(vt, vs + (16 * jj + (lane & 7) + ((lane >> 4) << 3)) * L::LDV + 16 * C.pair +
                                      ((lane >> 3) & 1) * 8);
            float u[2][4];
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int t = 8 * (2 * jj + s) + 2 * tig;
                const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&vt[2 * s]));
                const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&vt[2 * s + 1]));
                const float k0 = wk[t], k1 = wk[t + 1], q0 = wq[t], q1 = wq[t + 1];
                u[s][0] = lo.x - X[b][s][0] * k0;
                u[s][1] = lo.y - X[b][s][1] * k1;
                u[s][2] = hi.x - X[b][s][2] * k0;
                u[s][3] = hi.y - X[b][s][3] * k1;
                dt_diagonal(X[b][s], u[s], wb[t], wb[t + 1]);
                O[b][s][0] *= q0;
                O[b][s][1] *= q1;
                O[b][s][2] *= q0;
                O[b][s][3] *= q1;
            }
            acc_to_a(ua[jj], u[0], u[1]);
            put(xu, R * 2 + b, ua[jj]);
        }
        named_barrier_unaligned(bar, 64); /* B1: U' */
        get(ua[O0], xu, (1 - R) * 2 + 0);
        get(ua[O1], xu, (1 - R) * 2 + 1);

        /* D^T += U' T^T for the own blocks (k-steps kk <= jj) */
#pragma unroll
        for (int b = 0; b < 2; b++) dt_block<L>(X[b][0], X[b][1], ua, ts, lo, b ? J1 : J0);
        /* D and D' = D diag(ks exp(G_L - G)) fragments, own blocks; then
         * the partner's */
        uint32_t da[4][4], dp[4][4];
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const int jj = b ? J1 : J0;
            acc_to_a(da[jj], X[b][0], X[b][1]);
            float d[2][4];
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int t = 8 * (2 * jj + s) + 2 * tig;
                const float f0 = wd[t], f1 = wd[t + 1];
                d[s][0] = X[b][s][0] * f0;
                d[s][1] = X[b][s][1] * f1;
                d[s][2] = X[b][s][2] * f0;
                d[s][3] = X[b][s][3] * f1;
            }
            acc_to_a(dp[jj], d[0], d[1]);
            put(xd, R * 4 + b, da[jj]);
            put(xd, R * 4 + 2 + b, dp[jj]);
        }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (R == 0 && lane == 0 && P.tma_o) bulk_wait_read<0>(); /* the staging tile is free */
#endif
        named_barrier_unaligned(bar, 64); /* B2: D, D' (and the staging tile) */
        get(da[O0], xd, (1 - R) * 4 + 0);
        get(da[O1], xd, (1 - R) * 4 + 1);
        get(dp[O0], xd, (1 - R) * 4 + 2);
        get(dp[O1], xd, (1 - R) * 4 + 3);

        /* S = gamma_L S + D'^T k, own columns */
        const float gL = __fdividef(wk[len - 1], wd[len - 1]); /* as in the main loop */
#pragma unroll
        for (int j = 0; j < NH; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) S[j][e] *= gL;
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
#pragma unroll
            for (int n = 0; n < NH / 2; n++) {
                uint32_t bk[4];
                const int np = R * (NH / 2) + n;
                ldmatrix_x4_trans(bk, ks + L::bt_at(lo, kk, np));
                mma_bf16_16816(S[2 * n], dp[kk], bk);
                mma_bf16_16816(S[2 * n + 1], dp[kk], bk + 2);
            }
        /* O += D^T P^T, own blocks */
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const int jj = b ? J1 : J0;
#pragma unroll
            for (int kk = 0; kk <= jj; kk++) {
                uint32_t bp[4];
                ldmatrix_x4(bp, ps + L::b_at(lo, jj, kk));
                mma_bf16_16816(O[b][0], da[kk], bp);
                mma_bf16_16816(O[b][1], da[kk], bp + 2);
            }
        }
        mbar_arrive(C.empty + slot); /* the stage is read */

        /* o of the own tokens into the pair's staging tile, the new half
         * published; the tile leaves by one tensor store (whole chunks,
         * sm_90) or by each warp's rows */
        const int pitch = tma ? 16 : LDO;
#pragma unroll
        for (int b = 0; b < 2; b++) {
            const int tb = 16 * (b ? J1 : J0);
            stage_ot(ost, pitch, O[b][0], O[b][1], tb, tb + 8, lane);
        }
        publish();
        if (tma) fence_proxy_async_smem();
        named_barrier_unaligned(bar, 64); /* B3: staging, S halves */
#pragma unroll
        for (int kk = 0; kk < KH; kk++) get(so[kk], xs, (1 - R) * KH + kk);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (tma) {
            if (R == 0 && lane == 0 && r0 < P.V) {
                tma_store_3d(&P.tmap_o, ost, r0, C.h, (int)t0);
                bulk_commit();
            }
            continue;
        }
#endif
        __nv_bfloat16 *og = P.o + (t0 * P.Hv + C.h) * P.V + r0;
#pragma unroll
        for (int x = lane; x < 64; x += 32) { /* own 32 tokens x two 8-value halves */
            const int tl8 = x >> 1, half = (x & 1) * 8;
            const int t = 16 * (tl8 < 16 ? J0 : J1) + (tl8 & 15);
            if (t < len && r0 + half < P.V)
                *reinterpret_cast<uint4 *>(og + t * (int64_t)P.Hv * P.V + half) =
                    *reinterpret_cast<const uint4 *>(ost + t * LDO + half);
        }
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (R == 0 && lane == 0 && P.tma_o) bulk_wait<0>(); /* the pair's tensor stores are done */
#endif
    if (sp.end) store_rows(sp.end, S, sp.end_kv, sp.end_rows, P.K, r0, lane, 8 * R * NH);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* ---- the 32-row wgmma form (WG32: sm_90a, K <= 128, the pair form's
 * blocks) ----
 * The four compute warps are one warpgroup, and every product is an
 * m64n32 wgmma with both operands in shared memory, transposed against
 * the other forms so that M is the chunk's 64 tokens and N the block's 32
 * rows: X^T = k S^T and O1^T = q S^T (A = the k, q tiles as loaded, B =
 * bf16(S) as a [32][K] tile that the warps write after every update),
 * D = diag(beta) U'^T + T U'^T (B = U'^T written likewise), O^T += P D,
 * and the update as S^T = gamma_L S^T + k^T D' (M = K: A is the k tile
 * read M-major). The state lives as S^T accumulators, 32 f32 a thread at
 * K = 128. A B operand is read once a block, where the pair form's mma.sync
 * read each fragment once a warp (its two pairs read the same q, k, T and
 * P fragments), and the tensor pipe's order is chosen so that the chain
 * X -> D -> S^T does not wait behind O's products: O1 goes in after D, O2
 * after the update (with O1 ahead of D, as first built, q35_t8k was about
 * 1% slower, an A/B confounded by prep's zeros: RESULTS, session 28).
 * H200, under ncu, q35_t8k's fused pass
 * 178 -> 169 us against the pair form. The whole T and P tiles that the
 * products run need zeros above the diagonal blocks: the tensor copies
 * write them (encode_tp_maps). Tried and slower for those zeros: prep
 * writing them (prep 80 -> 84-86 us), a warp of its own writing them into
 * each landed stage (q35_t8k 0.35 ms; not understood), and the compute
 * warps doing so while X runs (H100: the pass 169 -> 185 us; not
 * understood either).
 * Every accumulator sums the same 16-deep k-steps in the same order as the
 * other forms, so the bits are theirs (for finite values: a non-finite
 * value in a chunk's T reaches more of that chunk's o through the zero
 * blocks than in the pair form, still within the chunk).
 * Accumulators: warp w holds M rows 16 w + gid (+ 8), N columns 8 j +
 * 2 tig (+ 1), as the mma.sync C fragments. */
template <int KP> struct Wg32Layout { /* in the pair form's compute bytes */
    static constexpr int KT = KP / 64, S = 0, U = KT * 4096, D = U + 4096, DP = D + 4096, O = DP + 4096;
    static_assert(O + 4096 <= FusedLayout<KP, 4, false, false, true>::COMPUTE_BYTES, "fits");
};

/* a warp's 16 x 32 accumulator block a (M index from xw, N index r) into
 * a K-major [32 r][64 x] bf16 tile, 128-byte swizzled */
__device__ __forceinline__ void wg32_put(uint8_t *tile, const float (&a)[4][4], int xw, int lane) {
    const int m = lane >> 3, i = lane & 7;
#pragma unroll
    for (int p = 0; p < 2; p++) {
        const int r = 8 * (2 * p + (m >> 1)) + i, x = xw + 8 * (m & 1);
        stmatrix_x4<true>(tile + sw128_offset(r, x), pack_bf16x2(a[2 * p][0], a[2 * p][1]),
                          pack_bf16x2(a[2 * p][2], a[2 * p][3]), pack_bf16x2(a[2 * p + 1][0], a[2 * p + 1][1]),
                          pack_bf16x2(a[2 * p + 1][2], a[2 * p + 1][3]));
    }
}

template <int KP, bool SUM>
__device__ __forceinline__ void wg32_chunks(const FusedParams &P, uint8_t *smem, uint64_t *full, uint64_t *empty,
                                            int stages, const SeqSpan &sq, int h, int r0,
                                            const SegmentPlan &sp, bool unit, uint8_t *xb, int warp, int lane) {
    using L = FusedLayout<KP, 4, false, SUM, true>;
    using W = Wg32Layout<KP>;
    constexpr int KT = W::KT;
    const int gid = lane >> 2, tig = lane & 3;
    uint8_t *sS = xb + W::S, *sU = xb + W::U, *sD = xb + W::D, *sDp = xb + W::DP;
    __nv_bfloat16 *sO = reinterpret_cast<__nv_bfloat16 *>(xb + W::O); /* two [64][16], the o map's swizzle */
    /* K-major tiles of the compute bytes (xb: W's offsets) */
    const WgmmaDescBase dx = wgmma_desc_base(smem_addr(xb), 16, 1024);

    /* S^T: ST[mh][j][e] at k = 64 mh + 16 warp + gid + 8 (e >> 1), row v = r0 + 8 j + 2 tig + (e & 1) */
    float ST[KT][4][4];
    auto each_st = [&](auto &&f) { /* f(element, k, v) over this thread's */
#pragma unroll
        for (int mh = 0; mh < KT; mh++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    f(ST[mh][j][e], 64 * mh + 16 * warp + gid + 8 * (e >> 1), r0 + 8 * j + 2 * tig + (e & 1));
    };
    each_st([&](float &x, int k, int v) { /* (unit: a summary's transition rows past V) */
        x = sp.start && v < P.V && k < P.K ? sp.start[state_index(sp.start_kv, P.V, P.K, v, k)]
            : unit && k < P.K && v - P.V == k ? 1.f
                                              : 0.f;
    });
    auto store_st = [&](float *dst, int kv, int rows) {
        each_st([&](float &x, int k, int v) {
            if (v < rows && k < P.K) dst[state_index(kv, rows, P.K, v, k)] = x;
        });
    };
    auto put_s = [&]() {
#pragma unroll
        for (int mh = 0; mh < KT; mh++) wg32_put(sS + mh * 4096, ST[mh], 16 * warp, lane);
    };
    put_s();
    fence_proxy_async_smem();
    named_barrier(1, 128);

    Ring ring;
    for (int c = sp.c0; c < sp.c1; c++, ring.next(stages)) {
        const int slot = ring.slot;
        const uint8_t *st = smem + slot * L::STAGE;
        const WgmmaDescBase dk = wgmma_desc_base(smem_addr(st), 16, 1024),
                            dm = wgmma_desc_base(smem_addr(st), BT * 128, 1024);
        const __nv_bfloat16 *vs = reinterpret_cast<const __nv_bfloat16 *>(st + L::VS);
        const float *wd = reinterpret_cast<const float *>(st + L::WD);
        const float *wk = reinterpret_cast<const float *>(st + L::WK);
        const float *wq = reinterpret_cast<const float *>(st + L::WQ); /* (not in a summary) */
        const float *wb = reinterpret_cast<const float *>(st + L::WB);
        const int64_t t0 = sq.bos + (int64_t)c * BT;
        const int len = (int)min((int64_t)BT, sq.eos - t0);
        const bool tma = !SUM && P.tma_o && len == BT;
        if (!SUM && P.chunk_states) store_st(P.chunk_states + ((sq.hoff + c) * P.Hv + h) * P.V * P.K, P.kv, P.V);
        mbar_wait(full + slot, ring.phase);

        /* acc = x S^T for the chunk's k or q tile (at byte x_at of the
         * stage), as one group */
        auto s_group = [&](float(&acc)[4][4], int x_at) {
#pragma unroll
            for (int kk = 0; kk < KP / 16; kk++) {
                const uint32_t off = (kk >> 2) * (BT * 128) + (kk & 3) * 32;
                WgmmaSS32<0>::run(acc, wgmma_desc_at(dk, x_at + off),
                                  wgmma_desc_at(dx, W::S + (kk >> 2) * 4096 + (kk & 3) * 32), kk > 0);
            }
            wgmma_commit();
        };
        /* X^T = k S^T */
        float X[4][4], O[4][4];
        wgmma_fence();
        s_group(X, L::KC);
        /* this thread's per-token factors and v pairs, read while it runs */
        float fk[2], fq[2], fd[2], fb[2];
        __nv_bfloat162 vv[2][4];
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++) {
            const int t = 16 * warp + gid + 8 * e2;
            fk[e2] = wk[t], fd[e2] = wd[t], fb[e2] = wb[t];
            fq[e2] = SUM ? 0.f : wq[t];
#pragma unroll
            for (int j = 0; j < 4; j++)
                vv[e2][j] = *reinterpret_cast<const __nv_bfloat162 *>(vs + t * L::LDV + 8 * j + 2 * tig);
        }
        const float gL = __fdividef(wk[len - 1], wd[len - 1]); /* as in the other forms */
        wgmma_wait<0>();
        wgmma_fence_acc(X);

        /* U'^T = v - diag(wk) X^T, into its tile */
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 v2 = __bfloat1622float2(vv[e2][j]);
                X[j][2 * e2] = v2.x - X[j][2 * e2] * fk[e2];
                X[j][2 * e2 + 1] = v2.y - X[j][2 * e2 + 1] * fk[e2];
            }
        wg32_put(sU, X, 16 * warp, lane);
        fence_proxy_async_smem();
        /* D = diag(beta) U'^T (f32) + T U'^T, as the other forms sum it */
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++)
#pragma unroll
            for (int j = 0; j < 4; j++) X[j][2 * e2] *= fb[e2], X[j][2 * e2 + 1] *= fb[e2];
        wgmma_fence_acc(X);
        named_barrier(1, 128);

        /* D += T U'^T; then O1^T = q S^T behind it in the tensor pipe */
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            WgmmaSS32<0>::run(X, wgmma_desc_at(dk, L::TM + kk * 32), wgmma_desc_at(dx, W::U + kk * 32), 1);
        wgmma_commit();
        if constexpr (SUM) {
            wgmma_wait<0>(); /* D */
        } else {
            s_group(O, L::Q);
            wgmma_wait<1>(); /* D */
        }
        wgmma_fence_acc(X);

        /* D and D' = diag(wd) D into their tiles */
        float Dp[4][4];
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int b = 0; b < 2; b++) Dp[j][2 * e2 + b] = X[j][2 * e2 + b] * fd[e2];
        if (!SUM) wg32_put(sD, X, 16 * warp, lane);
        wg32_put(sDp, Dp, 16 * warp, lane);
        fence_proxy_async_smem();
        if (!SUM && warp == 0 && lane == 0 && P.tma_o) bulk_wait_read<0>(); /* the o staging is free */
        named_barrier(1, 128);

        /* S^T = gamma_L S^T + k^T D' (k read M-major); then, once O1 is
         * in, O1 scaled and O^T += P D */
        each_st([&](float &x, int, int) { x *= gL; });
#pragma unroll
        for (int mh = 0; mh < KT; mh++) wgmma_fence_acc(ST[mh]); /* (the scaling before the fence) */
        wgmma_fence();
#pragma unroll
        for (int mh = 0; mh < KT; mh++)
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                WgmmaSS32<1>::run(ST[mh], wgmma_desc_at(dm, L::KC + mh * (BT * 128) + kk * 2048),
                                  wgmma_desc_at(dx, W::DP + kk * 32), 1);
        wgmma_commit();
        if constexpr (SUM) { /* the state only: no o */
            wgmma_wait<0>();
#pragma unroll
            for (int mh = 0; mh < KT; mh++) wgmma_fence_acc(ST[mh]);
            put_s();
            mbar_arrive(empty + slot); /* the stage is read */
            fence_proxy_async_smem();
            named_barrier(1, 128); /* the S tile */
            continue;
        }
        wgmma_wait<1>(); /* O1 */
        wgmma_fence_acc(O);
#pragma unroll
        for (int e2 = 0; e2 < 2; e2++)
#pragma unroll
            for (int j = 0; j < 4; j++) O[j][2 * e2] *= fq[e2], O[j][2 * e2 + 1] *= fq[e2];
        wgmma_fence_acc(O);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++)
            WgmmaSS32<0>::run(O, wgmma_desc_at(dk, L::PM + kk * 32), wgmma_desc_at(dx, W::D + kk * 32), 1);
        wgmma_commit();
        wgmma_wait<1>(); /* the update: the next chunk's S goes out while O2 runs */
#pragma unroll
        for (int mh = 0; mh < KT; mh++) wgmma_fence_acc(ST[mh]);
        put_s();
        wgmma_wait<0>();
        wgmma_fence_acc(O);
        mbar_arrive(empty + slot); /* the stage is read */

        /* o: a whole chunk staged for two tensor stores, else stored directly */
        if (tma) {
            const int m = lane >> 3, i = lane & 7;
#pragma unroll
            for (int p = 0; p < 2; p++) {
                const int t = 16 * warp + 8 * (m & 1) + i, jj = 2 * p + (m >> 1);
                const int half = o_swz32(jj & 1, t);
                stmatrix_x4<false>(sO + p * 1024 + t * 16 + half * 8, pack_bf16x2(O[2 * p][0], O[2 * p][1]),
                            pack_bf16x2(O[2 * p][2], O[2 * p][3]), pack_bf16x2(O[2 * p + 1][0], O[2 * p + 1][1]),
                            pack_bf16x2(O[2 * p + 1][2], O[2 * p + 1][3]));
            }
        } else {
            __nv_bfloat16 *og = P.o + (t0 * P.Hv + h) * P.V + r0;
#pragma unroll
            for (int e2 = 0; e2 < 2; e2++) {
                const int t = 16 * warp + gid + 8 * e2;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int r = 8 * j + 2 * tig;
                    if (t < len && r0 + r < P.V)
                        *reinterpret_cast<uint32_t *>(og + t * (int64_t)P.Hv * P.V + r) =
                            pack_bf16x2(O[j][2 * e2], O[j][2 * e2 + 1]);
                }
            }
        }
        fence_proxy_async_smem();
        named_barrier(1, 128); /* the S tile and the o staging */
        if (tma && warp == 0 && lane == 0) {
#pragma unroll
            for (int p = 0; p < 2; p++)
                if (r0 + 16 * p < P.V) tma_store_3d(&P.tmap_o, sO + p * 1024, r0 + 16 * p, h, (int)t0);
            bulk_commit();
        }
    }
    if (!SUM && warp == 0 && lane == 0 && P.tma_o) bulk_wait<0>(); /* the block's tensor stores are done */
    if (sp.end) store_st(sp.end, sp.end_kv, sp.end_rows);
}

#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GDN_FUSED_WGMMA 1 /* this compilation has the wgmma form's products */
#else
#define GDN_FUSED_WGMMA 0
#endif

/* Warps a block launches: the compute warps and npw producers, but
 * beside two warpgroups a whole third one, of which npw load and the rest
 * leave: setmaxnreg moves registers by warpgroup. Two compute warps and
 * one producer share each quarter of the register file (16384 a
 * multiprocessor quarter), so at one launch bound of 384 threads every
 * warp would get 168 registers (the one-warpgroup form needs 217: 108
 * bytes of spills); the producers give theirs back (PRODUCER_REGS) and the
 * compute warps take COMPUTE_REGS, 2 x 224 + 56 = 504 registers a lane
 * of a quarter's 512. */
__host__ __device__ constexpr int block_warps(int nws, int npw) { return nws == 8 ? 12 : nws + npw; }
#if GDN_FUSED_WGMMA /* (only the wgmma forms' device code uses them) */
constexpr int PRODUCER_REGS = 56, COMPUTE_REGS = 224;
#endif

/* SUM: the split path's summary launch (state only: no q, P or o).
 * PAIR: the pair form (pair_chunks). */
template <int KP, int NWS, bool WG, bool SUM, bool PAIR>
__global__ void __launch_bounds__(32 * block_warps(NWS, 1 + rest_parts(NWS, WG, SUM)), SUM && NWS < 8 ? 2 : 1)
    chunk_fused_kernel(const __grid_constant__ FusedParams P, int stages, int slices, int segs, int npw) {
    using L = FusedLayout<KP, NWS, WG, SUM, PAIR>;
    constexpr int NT = KP / 8; /* n-tiles of S's columns */
    extern __shared__ __align__(128) uint8_t smem_raw[];
    if (WG && !GDN_FUSED_WGMMA) { /* the host launches WG only where built (wgmma_built) */
        __trap();
    }
    /* the swizzled tiles want 1024-byte alignment (bytes() has the slack) */
    uint8_t *smem = smem_raw + ((L::ALIGN - (smem_addr(smem_raw) & (L::ALIGN - 1))) & (L::ALIGN - 1));
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gid = lane >> 2, tig = lane & 3;
    uint64_t *full = reinterpret_cast<uint64_t *>(smem + stages * L::STAGE + L::COMPUTE_BYTES);
    uint64_t *empty = full + stages;

    unsigned b = blockIdx.x;
    const int slice = (int)(b % (unsigned)slices);
    b /= (unsigned)slices;
    const int h = (int)(b % (unsigned)P.Hv);
    b /= (unsigned)P.Hv;
    int n, seg;
    const int nseg = locate_segment<SUM>(P, b, segs, n, seg);
    const int kh = P.tiled ? h % P.Hk : h / P.group;
    const SeqSpan sq = seq_span(P.map.cu_seqlens, P.map.chunk_offsets, P.map.T, n);
    const int nchunks = (int)((sq.eos - sq.bos + BT - 1) / BT);
    if (P.seg_first == 2 && seg == 0) return; /* (run by the segment-0 launch) */
    const SegmentPlan sp = segment_plan<SUM>(P, n, h, seg, nseg, nchunks);
    const int row0 = slice * L::ROWS;
    if (row0 >= sp.end_rows) return; /* a summary's segment 0 has V rows, not V + K */

    if (threadIdx.x == 0)
        for (int i = 0; i < stages; i++) {
            mbar_init(full + i, 32 * npw + (P.tma_in ? 1 : 0)); /* + the tensor copies' lane */
            mbar_init(empty + i, 32 * NWS);
        }
    /* zeros above T's and P's diagonal blocks of every stage, for the
     * per-lane copies (which skip those blocks; a tensor copy writes zeros
     * there itself): the wgmma forms' products run whole tiles over them */
    for (int i = threadIdx.x; i < stages * BT * 8; i += blockDim.x) {
        const int slot = i / (BT * 8), t = (i >> 3) % BT, cc = (i & 7) * 8;
        if ((cc >> 4) <= (t >> 4)) continue;
        uint8_t *st = smem + slot * L::STAGE;
        const uint32_t at = L::tp_at(t, cc);
        const uint4 z = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4 *>(st + L::TM + at) = z;
        if (!SUM) *reinterpret_cast<uint4 *>(st + L::PM + at) = z;
    }
    fence_proxy_async_smem(); /* for the products' reads */
    __syncthreads();

    if (warp >= NWS) { /* the producer(s) */
#if GDN_FUSED_WGMMA
        if constexpr (NWS == 8) setmaxnreg_dec<PRODUCER_REGS>();
#endif
        if (warp - NWS >= npw) return; /* (the producer warpgroup's idle warps) */
        if (!P.pdl_nowait) pdl_wait(); /* prep's tiles and factors (see FusedParams::pdl) */
        if (P.pdl_trigger) pdl_trigger(); /* prep is done: the summary may start (seg_first) */
        Ring ring;
        for (int c = sp.c0; c < sp.c1; c++, ring.next(stages)) {
            const int slot = ring.slot;
            if (c - sp.c0 >= stages) mbar_wait(empty + slot, ring.phase ^ 1u);
            load_stage<KP, NWS, WG, SUM, PAIR>(smem + slot * L::STAGE, full + slot, P, sq, c, h, kh, row0, lane, warp - NWS, npw);
            mbar_arrive_cp_async(full + slot);
        }
        cp_async_commit();
        cp_async_wait<0>(); /* no copy outlives its issuing thread */
        return;
    }

    if constexpr (PAIR) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
        if constexpr (KP <= 128)
            if (P.wg32) {
                wg32_chunks<KP, SUM>(P, smem, full, empty, stages, sq, h, row0, sp, SUM && seg > 0,
                                     smem + stages * L::STAGE, warp, lane);
                return;
            }
#endif
        if constexpr (SUM) { /* a summary's 32-row blocks are WG32 only (launch_form) */
            __trap();
        } else {
            PairCtx pc{P, smem, full, empty, stages, sq, h, row0 + 16 * (warp >> 1), warp >> 1, lane,
                       smem + stages * L::STAGE + (warp >> 1) * L::PAIR_BYTES};
            if (warp & 1) pair_chunks<KP, 1>(pc, sp);
            else pair_chunks<KP, 0>(pc, sp);
        }
        return;
    }

    /* ---- a compute warp: rows r0 .. r0 + 15 of the head's state ---- */
#if GDN_FUSED_WGMMA
    if constexpr (NWS == 8) setmaxnreg_inc<COMPUTE_REGS>();
#endif
    const int r0 = row0 + 16 * warp;
    float S[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int v = r0 + gid + 8 * (e >> 1), k = 8 * j + 2 * tig + (e & 1);
            float x = 0.f;
            if (v < P.V && k < P.K) {
                if (sp.start) x = sp.start[state_index(sp.start_kv, P.V, P.K, v, k)];
            } else if (SUM && seg > 0 && k < P.K && v - P.V == k) {
                x = 1.f; /* transition row V + k: the unit row e_k */
            }
            S[j][e] = x;
        }
    __nv_bfloat16 *ost = reinterpret_cast<__nv_bfloat16 *>(smem + stages * L::STAGE + warp * L::WARP_BYTES);
    const int vl = 16 * warp; /* this warp's rows in the stage's v tile */
    const LaneOffsets lo = lane_offsets(lane);
    (void)lo;

    Ring ring;
    for (int c = sp.c0; c < sp.c1; c++, ring.next(stages)) {
        const int slot = ring.slot;
        const uint8_t *st = smem + slot * L::STAGE;
        const uint8_t *qs = st + L::Q;
        const uint8_t *ks = st + L::KC;
        const __nv_bfloat16 *vs = reinterpret_cast<const __nv_bfloat16 *>(st + L::VS);
        const uint8_t *ts = st + L::TM;
        const uint8_t *ps = st + L::PM;
        const float *wd = reinterpret_cast<const float *>(st + L::WD);
        const float *wk = reinterpret_cast<const float *>(st + L::WK);
        const float *wb = reinterpret_cast<const float *>(st + L::WB);
        const float *wq = reinterpret_cast<const float *>(st + L::WQ);
        const int64_t t0 = sq.bos + (int64_t)c * BT;
        const int len = (int)min((int64_t)BT, sq.eos - t0);
        const uint32_t sb = smem_addr(st);
        /* the stage's K-major and N-major (k by rows) tile descriptors */
        const WgmmaDescBase dk = wgmma_desc_base(sb, 16, 1024), dm = wgmma_desc_base(sb, BT * 128, 1024);
        (void)dk, (void)dm;

        if (!SUM && P.chunk_states) /* the state at this chunk's start */
            store_rows(P.chunk_states + ((sq.hoff + c) * P.Hv + h) * P.V * P.K, S, P.kv, P.V, P.K, r0, lane);
        mbar_wait(full + slot, ring.phase);

        /* O1 = S q^T and X = S k^T, 16 rows x 64 tokens each */
        float O[8][4], X[8][4];
        if constexpr (WG) {
#if GDN_FUSED_WGMMA
            /* K-major B: k-step kk is 32 kk bytes into its 64-column tile */
            uint32_t a[KP / 16][4];
#pragma unroll
            for (int kk = 0; kk < KP / 16; kk++) acc_to_a(a[kk], S[2 * kk], S[2 * kk + 1]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < KP / 16; kk++) {
                const uint32_t off = (kk >> 2) * (BT * 128) + (kk & 3) * 32;
                if (!SUM) WgmmaRS<8, 0>::run(O, a[kk], wgmma_desc_at(dk, L::Q + off), kk > 0);
                WgmmaRS<8, 0>::run(X, a[kk], wgmma_desc_at(dk, L::KC + off), kk > 0);
            }
            if constexpr (SUM) wgmma_complete(X);
            else wgmma_complete(O, X);
#endif
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) O[j][e] = X[j][e] = 0.f;
#pragma unroll
            for (int kk = 0; kk < KP / 16; kk++) {
                uint32_t a[4];
                acc_to_a(a, S[2 * kk], S[2 * kk + 1]);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) {
                    uint32_t bq[4], bk[4];
                    const uint32_t off = L::b_at(lo, jj, kk);
                    if (!SUM) ldmatrix_x4(bq, qs + off);
                    ldmatrix_x4(bk, ks + off);
                    if (!SUM) {
                        mma_bf16_16816(O[2 * jj], a, bq);
                        mma_bf16_16816(O[2 * jj + 1], a, bq + 2);
                    }
                    mma_bf16_16816(X[2 * jj], a, bk);
                    mma_bf16_16816(X[2 * jj + 1], a, bk + 2);
                }
            }
        }

        /* U' = V^T - X diag(ks gamma), packed as A fragments; O1 scaled.
         * V^T's C-layout pairs come from the v tile by ldmatrix.trans. */
        uint32_t ua[4][4];
#pragma unroll
        for (int jj = 0; jj < 4; jj++) {
            uint32_t vt[4];
            ldmatrix_x4_trans(vt, vs + (16 * jj + (lane & 7) + ((lane >> 4) << 3)) * L::LDV + vl +
                                      ((lane >> 3) & 1) * 8);
            float u[2][4];
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int j = 2 * jj + s;
                const int t = 8 * j + 2 * tig;
                const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&vt[2 * s]));
                const float2 hi =
                    __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&vt[2 * s + 1]));
                const float k0 = wk[t], k1 = wk[t + 1];
                u[s][0] = lo.x - X[j][0] * k0;
                u[s][1] = lo.y - X[j][1] * k1;
                u[s][2] = hi.x - X[j][2] * k0;
                u[s][3] = hi.y - X[j][3] * k1;
                dt_diagonal(X[j], u[s], wb[t], wb[t + 1]);
                if (!SUM) {
                    const float q0 = wq[t], q1 = wq[t + 1];
                    O[j][0] *= q0;
                    O[j][1] *= q1;
                    O[j][2] *= q0;
                    O[j][3] *= q1;
                }
            }
            acc_to_a(ua[jj], u[0], u[1]);
        }

        /* D^T += U' T^T (T strictly lower triangular: k-steps kk <= jj;
         * the wgmma form runs whole rows over the zeros above the diagonal
         * blocks: trimming each k-step's N to the blocks below was slower,
         * q397_t8k 0.495 -> 0.532 ms) */
        if constexpr (WG) {
#if GDN_FUSED_WGMMA
            wgmma_fence_acc(X); /* (the diagonal term before the fence) */
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                WgmmaRS<8, 0>::run(X, ua[kk], wgmma_desc_at(dk, L::TM + kk * 32), 1);
            wgmma_complete(X);
#endif
        } else {
#pragma unroll
            for (int jj = 0; jj < 4; jj++) dt_block<L>(X[2 * jj], X[2 * jj + 1], ua, ts, lo, jj);
        }

        /* A fragments of D^T (for O2) and of D'^T = D^T diag(ks exp(G_L - G)) */
        uint32_t da[4][4], dp[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            acc_to_a(da[kk], X[2 * kk], X[2 * kk + 1]);
            float d[2][4];
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int j = 2 * kk + s, t = 8 * j + 2 * tig;
                const float f0 = wd[t], f1 = wd[t + 1];
                d[s][0] = X[j][0] * f0;
                d[s][1] = X[j][1] * f1;
                d[s][2] = X[j][2] * f0;
                d[s][3] = X[j][3] * f1;
            }
            acc_to_a(dp[kk], d[0], d[1]);
        }

        /* S = gamma_L S + D'^T k (k columns by ldmatrix.trans) */
        /* exp(G_L) = wk / wd at the last token (ks > 0), by the fast
         * division (wd = ks there: 1 without l2norm, else at most 1e3 and
         * never subnormal, where __fdividef is within 2 ulp): a few ulp from
         * exp(G_L), exact without l2norm */
        const float gL = __fdividef(wk[len - 1], wd[len - 1]);
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) S[j][e] *= gL;
        if constexpr (WG) {
#if GDN_FUSED_WGMMA
            /* N-major B (k rows of the k tile): k-step kk 16 rows down, the
             * second 64 columns one tile (BT * 128 bytes) on; then O2's
             * products (interleaving the two chains was slower) */
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                WgmmaRS<NT, 1>::run(S, dp[kk], wgmma_desc_at(dm, L::KC + kk * 2048), 1);
            if constexpr (SUM) {
                wgmma_complete(S);
            } else {
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    WgmmaRS<8, 0>::run(O, da[kk], wgmma_desc_at(dk, L::PM + kk * 32), 1);
                wgmma_complete(S, O);
            }
#endif
        } else {
        /* all four k-steps, also past a partial chunk's end (D' is zero
         * there): no branch splits the unrolled products */
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int np = 0; np < KP / 16; np++) {
                uint32_t bk[4];
                ldmatrix_x4_trans(bk, ks + L::bt_at(lo, kk, np));
                mma_bf16_16816(S[2 * np], dp[kk], bk);
                mma_bf16_16816(S[2 * np + 1], dp[kk], bk + 2);
            }
        }
        /* O += D^T P^T (P lower triangular), after the update in source
         * order: its short chains then overlap the update's 64 independent
         * products (q35_t32k -1%) */
        if (!SUM) {
#pragma unroll
            for (int jj = 0; jj < 4; jj++)
#pragma unroll
                for (int kk = 0; kk <= jj; kk++) {
                    uint32_t bp[4];
                    ldmatrix_x4(bp, ps + L::b_at(lo, jj, kk));
                    mma_bf16_16816(O[2 * jj], da[kk], bp);
                    mma_bf16_16816(O[2 * jj + 1], da[kk], bp + 2);
                }
        }
        }
        mbar_arrive(empty + slot); /* the stage is read */

        if (!SUM) store_o(ost, O, P, t0, len, h, r0, lane); /* o rows of this chunk */
    }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (!SUM && P.tma_o && lane == 0) bulk_wait<0>(); /* this warp's tensor stores are done */
#endif
    if (sp.end) store_rows(sp.end, S, sp.end_kv, sp.end_rows, P.K, r0, lane);
}

/* One launch over `units` segments (N x segs, or a varlen batch's) x Hv
 * heads x the row tiles of `rows` rows (V, or V + K in a summary). */
template <int KP, int NWS, bool WG, bool SUM, bool PAIR = false>
gdn_status launch(gdn_context *ctx, const FusedParams &P, int64_t units, int segs, int rows, cudaStream_t stream) {
    using L = FusedLayout<KP, NWS, WG, SUM, PAIR>;
    const int slices = (rows + L::ROWS - 1) / L::ROWS;
    /* three stages where they fit, but two for the 32-row one-warp blocks
     * (H100, three rounds in one job, ms: q35_t32k 1.319-1.322 -> 1.299-
     * 1.300, q35_t8k 0.348-0.349 -> 0.346-0.349; the 64-row wgmma blocks
     * lose with two, q397_t8k 0.455 -> 0.469; the pair form gains with
     * three, four rounds: q35_t8k 0.287 -> 0.282, q35_t32k 1.074 -> 1.071),
     * for a one-warpgroup summary, so that two of its blocks share a
     * multiprocessor (its launch bounds ask for that), and for the
     * two-warpgroup pass since T came in one tile (H100, two rounds, ms:
     * q35_b4_t8k 0.680 / 0.682 -> 0.641 / 0.639, B 2 x 64 heads at T 8192
     * 0.581 -> 0.567 / 0.563, B 8 x 32 heads at T 4096 0.671 -> 0.652 /
     * 0.651) */
    int stages = 2;
    if ((SUM ? NWS == 8 : (WG || NWS == 4) && NWS != 8) && (size_t)L::bytes(3) <= ctx->smem_optin) stages = 3;
    stages = env_override("GDN_CUDA_FUSED_STAGES", stages, 2, 4);
    const int bytes = L::bytes(stages);
    if ((size_t)bytes > ctx->smem_optin)
        return gdn_fail(ctx, GDN_ERROR_NOT_SUPPORTED,
                        "chunk_fused: %d bytes of shared memory, device allows %zu", bytes,
                        ctx->smem_optin);
    const int64_t blocks = units * P.Hv * slices;
    if (blocks > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT, "chunk_fused: %lld blocks exceed the grid",
                        (long long)blocks);
    auto kern = chunk_fused_kernel<KP, NWS, WG, SUM, PAIR>;
    GDN_CUDA_TRY(ctx, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    /* producer warps: three (q, k / two sharing the rest) where the rest is
     * split (rest_parts), two (q, k / the rest) for 4 other compute warps,
     * else one (H100: q35_b4_t8k 1.17 -> 1.12 ms with two; q35_t8k 0.398 ->
     * 0.413). GDN_CUDA_FUSED_PRODUCERS=1|2 sets the latter. */
    constexpr int NRP = rest_parts(NWS, WG, SUM); /* as the kernel's launch bound counts them */
    const int npw = NRP == 2 ? 1 + NRP : env_override("GDN_CUDA_FUSED_PRODUCERS", NWS == 4 && !PAIR ? 2 : 1, {1, 2});
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg =
        launch_config((unsigned)blocks, 32 * block_warps(NWS, npw), (size_t)bytes, stream, P.pdl, &attr);
    GDN_CUDA_TRY(ctx, cudaLaunchKernelEx(&cfg, kern, P, stages, slices, segs, npw));
    GDN_CUDA_CHECK_LAUNCH(ctx, "chunk_fused_kernel");
    return GDN_SUCCESS;
}

/* Whether nws compute warps with a two-deep ring fit the device's shared
 * memory at K <= KP. */
template <int KP> bool fits(const gdn_context *ctx, int nws, bool wg = false) {
    const int bytes = wg        ? (nws == 8 ? FusedLayout<KP, 8, true>::bytes(2) : FusedLayout<KP, 4, true>::bytes(2))
                      : nws == 4 ? FusedLayout<KP, 4, false>::bytes(2)
                                 : FusedLayout<KP, 2, false>::bytes(2);
    return (size_t)bytes <= ctx->smem_optin;
}

/* Whether the loaded binary has the wgmma form for this device: an sm_90
 * device running the sm_90a code (not an sm_80 build run forward). Asked
 * of the driver once, not on every launch: every sm_90 device runs the
 * same code. */
bool wgmma_built(const gdn_context *ctx) {
    if (ctx->cc_major != 9) return false;
    static const bool built = [] {
        cudaFuncAttributes fa;
        if (cudaFuncGetAttributes(&fa, chunk_fused_kernel<128, 4, true, false, false>) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        return fa.binaryVersion == 90;
    }();
    return built;
}

/* Whether the pair form's blocks run as WG32 (GDN_CUDA_FUSED_WG32=0 | 1) */
bool wg32_on(const gdn_context *ctx) {
    return ctx->cc_major == 9 && wgmma_built(ctx) && env_override("GDN_CUDA_FUSED_WG32", 1, {0, 1}) == 1;
}

/* Whether the one-warpgroup form (64-row blocks) runs K on this device. */
bool wg1_built(const gdn_context *ctx, int K) {
    return wgmma_built(ctx) && (K <= 64 ? fits<64>(ctx, 4, true) : fits<128>(ctx, 4, true));
}

/* Whether the two-warpgroup form (128-row blocks) runs K on this device. */
bool wg2_built(const gdn_context *ctx, int K) {
    return K <= 128 && wgmma_built(ctx) && (K <= 64 ? fits<64>(ctx, 8, true) : fits<128>(ctx, 8, true));
}

} // namespace

bool chunk_fused_supported(const gdn_context *ctx, const gdn_problem *p) {
    if (p->K % 8 != 0 || p->V % 8 != 0 || p->K > 256 || p->V > 256) return false;
    /* K in (128, 256]: the pair form only (its warps keep half of K each,
     * 64 f32 registers of S as at K = 128), two stages, about 223 KB.
     * V only sets the number of row tiles. */
    if (p->K > 128) return (size_t)FusedLayout<256, 4, false, false, true>::bytes(2) <= ctx->smem_optin;
    /* H100: 143 KB; a device that cannot hold it takes the three kernels */
    return p->K <= 64 ? fits<64>(ctx, 2) : fits<128>(ctx, 2);
}

namespace {

/* The fused pass's form for a launch of N segments' chains over `rows`
 * rows (V, or V + K in a summary), K <= 128. */
enum class Form { WG2, WG1, PAIR, MMA4, MMA2 };
/* a form's kernel arguments (launch_form) */
template <int NWS_, bool WG_, bool PAIR_ = false> struct FormArgs {
    static constexpr int NWS = NWS_;
    static constexpr bool WG = WG_, PAIR = PAIR_;
};
template <bool SUM> Form choose_form(const gdn_context *ctx, int K, int64_t N, int Hv, int rows) {
    const bool k64 = K <= 64;
    const int sms = sm_count(ctx);
    const int64_t heads = N * Hv; /* chains of row tiles (N: the launch's segments) */
    /* The wgmma form (Hopper) where its 64-row blocks fill at least 3/4 of
     * the multiprocessors: it reads each B operand from shared memory once
     * per 64 rows where the mma.sync form reads it once per warp, and ran
     * q397_t8k in 0.495 ms against 0.686 (q35_b4_t8k 1.005 against 1.036);
     * with fewer blocks the 32-row mma.sync blocks spread wider (q35_t8k
     * 0.357 ms against 0.412 in the wgmma form). Two warpgroups a block
     * (128 rows, wg2) where those blocks fill 3/4 of the multiprocessors
     * and 64-row blocks would need more than one wave (a summary: wherever
     * they fill): the two share each stage and its three producers, and
     * one block a multiprocessor runs both (H100: q35_b4_t8k 0.850 ->
     * 0.779 ms, 4 x 32 heads at V = 96 0.84 -> 0.70, tp8_t64k's summary
     * 0.671 against 0.695; q397_t8k, 64 such blocks, 0.59 against 0.43).
     * Every form gives the same bits (test_chunk_forward checks), so the
     * choice may follow the batch. GDN_CUDA_FUSED_WGMMA=0 / 1 / 2 forces
     * one (1 and 2 only where built). */
    const bool wg_ok = wg1_built(ctx, K);
    const int64_t tiles64 = heads * ((rows + 63) / 64), tiles128 = heads * ((rows + 127) / 128);
    const bool wg_fills = 4 * tiles64 >= 3 * (int64_t)sms;
    const bool wg2_ok = wg2_built(ctx, K);
    const bool wg2 = wg2_ok && rows > 64 && 4 * tiles128 >= 3 * (int64_t)sms && (SUM || tiles64 > sms);
    const int wg = env_override("GDN_CUDA_FUSED_WGMMA", wg2 ? 2 : wg_fills ? 1 : 0, {0, 1, 2});
    if (wg == 2 && wg2_ok) return Form::WG2;
    if (wg >= 1 && wg_ok) return Form::WG1;
    /* rows a block: 32 (2 compute warps) unless that leaves too many blocks
     * for one wave and 64 still fill the machine; bits do not depend on it */
    int nws = heads * ((rows + 31) / 32) > sms && heads * ((rows + 63) / 64) >= sms ? 4 : 2;
    if (nws == 4 && !(k64 ? fits<64>(ctx, 4) : fits<128>(ctx, 4))) nws = 2;
    nws = env_override("GDN_CUDA_FUSED_WARPS", nws, {2, 4});
    if (nws == 2) { /* 32-row blocks: the pair form where it fits (a summary: as WG32 only) */
        const bool pair_fits = (size_t)(k64 ? FusedLayout<64, 4, false, SUM, true>::bytes(2)
                                            : FusedLayout<128, 4, false, SUM, true>::bytes(2)) <=
                               ctx->smem_optin;
        if (pair_fits && env_override("GDN_CUDA_FUSED_PAIRS", 1, {0, 1}) == 1 && (!SUM || wg32_on(ctx)))
            return Form::PAIR;
    }
    return nws == 4 ? Form::MMA4 : Form::MMA2;
}

template <bool SUM>
gdn_status launch_form(gdn_context *ctx, const FusedParams &P, int64_t N, int segs, int rows,
                       cudaStream_t stream) {
    if (P.K > 128) { /* (chunk_fused_supported) unsplit only: no summary form holds K > 128 rows */
        if constexpr (SUM)
            return gdn_fail(ctx, GDN_ERROR_INTERNAL, "chunk_fused: no split form for K = %d > 128", P.K);
        else
            return launch<256, 4, false, false, true>(ctx, P, N, segs, rows, stream);
    }
    /* the form's launch at KP = 64 or 128 */
    auto at_k = [&](auto form, const FusedParams &Q) {
        using F = decltype(form);
        return Q.K <= 64 ? launch<64, F::NWS, F::WG, SUM, F::PAIR>(ctx, Q, N, segs, rows, stream)
                         : launch<128, F::NWS, F::WG, SUM, F::PAIR>(ctx, Q, N, segs, rows, stream);
    };
    Form form = choose_form<SUM>(ctx, P.K, N, P.Hv, rows);
    /* segment 0 beside the summary: 64-row blocks, few enough to fit
     * beside it, where the plan would take 32-row ones for so few chains */
    if (!SUM && P.seg_first == 1 && form != Form::WG2 && wg1_built(ctx, P.K)) form = Form::WG1;
    switch (form) {
    case Form::WG2: return at_k(FormArgs<8, true>{}, P);
    case Form::WG1: return at_k(FormArgs<4, true>{}, P);
    case Form::PAIR: { /* its blocks as the 32-row wgmma form (WG32) on sm_90a (choose_form: always
                        * in a summary) */
        FusedParams Q = P;
        Q.wg32 = wg32_on(ctx);
        return at_k(FormArgs<4, false, true>{}, Q);
    }
    case Form::MMA4: return at_k(FormArgs<4, false>{}, P);
    case Form::MMA2: return at_k(FormArgs<2, false>{}, P);
    }
    return gdn_fail(ctx, GDN_ERROR_INTERNAL, "chunk_fused: no form");
}

} // namespace

/* The summary launch covers segments 0 .. S-2, over V + K rows (segment
 * 0's blocks past V return at once); the final one every segment.
 * varlen_segments: the batch's segments (seg_off set). */
gdn_status launch_chunk_fused(gdn_context *ctx, const FusedParams &P, bool summary, cudaStream_t stream,
                              int64_t varlen_segments) {
    const int64_t N = P.map.N;
    if (!summary && P.seg_first == 1) return launch_form<false>(ctx, P, N, 1, P.V, stream); /* segments 0 */
    if (P.seg_off) {
        if (summary) return launch_form<true>(ctx, P, varlen_segments - N, 1, P.V + P.K, stream);
        return launch_form<false>(ctx, P, varlen_segments, 1, P.V, stream);
    }
    const int S = P.segments > 1 ? P.segments : 1;
    if (summary) return launch_form<true>(ctx, P, N * (S - 1), S - 1, P.V + P.K, stream);
    return launch_form<false>(ctx, P, N * S, S, P.V, stream);
}

} // namespace gdn

/*
 * gdn_recurrent_forward on CUDA: the token recurrence of SPEC section 1 on
 * states kept in a caller-owned pool (the serving / decode step).
 *
 * Per token, with q and k pre-processed (L2 norm if asked, q times scale):
 *   S = exp(g) S;  e = v - S k;  S += beta e k^T;  o = S q
 * Row j of S ([V][K]) evolves on its own given the token's k, q, g, beta:
 *   e_j = v_j - exp(g) S_j . k,  S_j = exp(g) S_j + beta e_j k,  o_j = S_j . q
 * so the V rows of one (sequence, value head) state are split across warps
 * and blocks that never communicate.
 *
 * The operation is memory-bound: at T_n = 1 each state element is read
 * once and written once and costs four flops. So the kernel is built
 * around moving the state at copy speed:
 *
 *  - Each thread owns a fixed tile of the state, RT rows x CT columns, in
 *    f32 registers: 128 bytes of pool a thread (32 f32 or 64 bf16
 *    elements; 64 bytes on the f32 VK vector path with 64 < K <= 128;
 *    256 bytes in the KV layout with K > 128, see below). The
 *    tile is loaded once, kept across all T_n tokens of the sequence and
 *    stored once (rounded to bf16, nearest even, for a bf16 pool), plus
 *    once per token into state_history when asked. There is no shared
 *    memory and no __syncthreads: a warp holds complete rows (all K
 *    columns), so both dot products of a row reduce inside the warp with
 *    xor shuffles over the LC lanes that share it. The butterfly gives
 *    every lane of a row the same bits, so all of them apply the same e_j;
 *    the summation order is fixed (in-thread over the thread's columns in
 *    order, then the butterfly), so results are deterministic (no atomics)
 *    and do not depend on N or on the other sequences.
 *  - q and k are kept as raw bf16 values; the L2 norms (with
 *    l2norm_qk) and the scale multiply the dot products instead:
 *    S_j . k_hat = mk (S_j . k), S_j += (beta e_j mk) k, o_j = mq (S_j . q).
 *    Same math as the CPU backend, rounded differently (an ulp of f32).
 *  - Loads and stores of the state are 16-byte vectors along the pool's
 *    contiguous dimension, laid out so that the lanes of a warp cover whole
 *    32-byte sectors:
 *      VK ([V][K], K contiguous): LC = 8 lanes (16 for K > 128, and on
 *        the f32 vector path for K > 64) share a row and read consecutive
 *        16-byte pieces of it (128 or 256 contiguous bytes a row an
 *        instruction); the other lanes of the
 *        warp take other rows. Column of tile element b:
 *        (b / VEC) * VEC * LC + lc * VEC + b % VEC.
 *      KV ([K][V], V contiguous, holds S^T): a thread holds RT consecutive
 *        rows (vectors along V) of CT = 8 consecutive columns; LR lanes
 *        side by side along V, LC = KP / 8 lanes along K. With 128 bytes a
 *        thread, K > 128 would leave a warp 4 rows (16 bytes of a column),
 *        so there a thread holds 256 bytes (8 f32 or 16 bf16 rows, a whole
 *        32-byte sector of each column).
 *    Tiles (KP = K padded to 64, 128 or 256; WR = RT * LR rows a warp):
 *      pool layout KP   LC LR CT RT WR      pool layout KP   LC LR CT RT WR
 *      f32  VK     64    8  4  8  4 16      bf16 VK     64    8  4  8  8 32
 *      f32  VK    128   16  2  8  2  4      bf16 VK    128    8  4 16  4 16
 *      f32  VK    256   16  2 16  2  4      bf16 VK    256   16  2 16  4  8
 *      f32  KV     64    8  4  8  4 16      bf16 KV     64    8  4  8  8 32
 *      f32  KV    128   16  2  8  4  8      bf16 KV    128   16  2  8  8 16
 *      f32  KV    256   32  1  8  8  8      bf16 KV    256   32  1  8 16 16
 *    The vector path needs the contiguous dimension (K for VK, V for KV)
 *    to be a multiple of the vector (4 f32, 8 bf16) and the pool (and
 *    state_history) 16-byte aligned; otherwise the same tiles (128 bytes
 *    a thread also for KV, K > 128, and for f32 VK at KP = 128, whose
 *    tile there is 8 4 16 2 8) are moved element by element: the
 *    generic path, any K, V in 1..256, lanes still reading consecutive
 *    elements. q and k come as 8- or 16-byte vectors when K and their
 *    alignment allow, else element by element.
 *  - Parallelism: one block per (sequence, value head, tile of rows), a
 *    1D grid; a block is 1 to 4 warps. The host halves the warps a block
 *    while the grid has fewer blocks than multiprocessors, so that small
 *    N still spreads over the machine: N = 1, Hv = 32, K = V = 128 runs
 *    256 blocks of 4 warps (16 rows) with an f32 pool, 256 blocks of one
 *    warp (16 rows) with a bf16 pool.
 *  - Registers: launch bounds cap them (see Geo::MIN_BLOCKS) so that at
 *    least 6 blocks of 128 threads fit a multiprocessor with an f32 pool
 *    (3 with bf16, 2 for the 256-byte tiles and the element-wise path):
 *    48-96 KB of state loads in flight a multiprocessor, several times
 *    what the copy bandwidth needs at DRAM latency. No shared memory.
 *  - Latency: state_indices[n] and cu_seqlens[n] are loaded first (two
 *    independent chains), then the state tile and the first token's q, k,
 *    v, g, beta are in flight together; while token t computes, token
 *    t+1's inputs are prefetched into L1 (prefetch.global.L1, no
 *    registers held).
 *  - Padding: a slot < 0 or >= pool_size writes zeros to the sequence's o
 *    rows and touches nothing else (no pool access at all, so an index
 *    past the pool is never dereferenced). An empty sequence reads and
 *    writes nothing.
 *  - The launch is one kernel on the context's stream: no allocation, no
 *    host synchronisation, state_indices and cu_seqlens_device read on the
 *    device only, so the call can be captured in a CUDA graph. On sm_90
 *    (VK layout) it is a programmatic dependent launch (see launch()):
 *    nothing global is loaded or stored before griddepcontrol.wait but,
 *    in a grid that fits the machine at once, a hint: the block's slot,
 *    read through L2, and its state rows asked into L2.
 *
 * Columns past K (up to the padded KP = 64, 128 or 256) and rows past V
 * are held as zeros and never stored; their k, q, v are zero, so they add
 * nothing to the dot products.
 */
#include <atomic>
#include <type_traits>

#include "cuda_common.cuh"

namespace gdn {
namespace {

constexpr int MAX_WARPS = 4;

struct RecParams {
    const uint16_t *q, *k, *v; /* bf16 bits */
    const float *g, *beta;
    const float *A_log, *dt_bias; /* with qwen only */
    void *pool;
    void *hist;                   /* NULL: no state_history */
    const int32_t *idx;           /* NULL: slot n */
    const int32_t *cu;            /* NULL: B rows of T tokens */
    uint16_t *o;
    int64_t pool_size;
    int64_t T;
    int Hk, Hv, K, V;
    int group, tiled;
    int tiles;      /* row tiles per head */
    int block_rows; /* rows a block: warps * WR */
    float scale;
    int l2norm, beta_sigmoid, qwen;
    int in_vec; /* q and k may be read as RUN-element vectors */
    int prefetch; /* the block's state rows towards L2 before pdl_wait (see launch()) */
};

/* The thread tile of one kernel configuration. E: pool element (float or
 * uint16_t = bf16 bits); KP: K padded; KV: layout; VECS: vector path. */
template <typename E, int KP, bool KV, bool VECS> struct Geo {
    static constexpr int ESIZE = (int)sizeof(E);
    static constexpr int VE = 16 / ESIZE; /* elements of a 16-byte vector */
    /* f32 VK vectors at KP = 128: 64 bytes a thread (see MIN_BLOCKS) */
    static constexpr bool HALF = ESIZE == 4 && !KV && VECS && KP == 128;
    /* state elements a thread: 128 bytes; 256 for KV vectors with KP = 256 */
    static constexpr int ELEMS = HALF ? 16 : (128 / ESIZE) * (KV && KP == 256 && VECS ? 2 : 1);
    static constexpr int LC = KV ? KP / 8 : (KP == 256 || HALF ? 16 : 8); /* lanes sharing a row */
    static constexpr int CT = KP / LC;                             /* columns a thread */
    static constexpr int RT = ELEMS / CT;                          /* rows a thread */
    static constexpr int LR = 32 / LC;                             /* lanes along the rows */
    static constexpr int WR = RT * LR;                             /* rows a warp */
    static constexpr int VEC = VECS ? VE : 1;                      /* elements a state access */
    static constexpr int RUN = KV ? CT : VEC; /* consecutive q, k columns a thread */
    static_assert(LC * LR == 32 && CT * LC == KP, "lane split");
    static_assert(CT % 2 == 0 && RT % 2 == 0, "packed bf16 pairs");
    static_assert(KV ? RT % VEC == 0 : CT % VEC == 0, "vector tile");
    static_assert(WR <= 32, "o padding rows: one pass");
    /* Blocks of 128 threads a multiprocessor should hold: a register cap
     * for ptxas (6: 80 registers, 4: 128, 3: 168, 2: 255). f32 VK vector
     * tiles fit in 80 without spilling (KV ones need more: 4 blocks)
     * (measured on an H100: 0.5-1% faster at N = 32..8192 than the 128
     * registers of 4 blocks; 8 blocks, 64 registers, spills and is 8-18%
     * slower). At KP = 128 the f32 VK tile is 64 bytes (HALF): 2 rows of 8
     * columns, 48 KB of state loads in flight a multiprocessor. H100, one
     * job against the 128-byte tile, us: N = 1 3.58 -> 3.52, N = 32 47.9 ->
     * 48.3, N = 64 93.4 -> 93.2, N = 256 364.3 -> 361.9, N = 8192 11548 ->
     * 11448; the same tile at 8 blocks (64 registers) gained less at large N
     * (11505), 32 bytes a thread lost 3%. 64-element bf16 vector tiles need
     * about 140; the element-wise path and the 128-element tiles get 255. */
    static constexpr int MIN_BLOCKS =
        !VECS || ELEMS == 128 ? 2 : ESIZE == 4 && (ELEMS == 32 || HALF) ? (KV ? 4 : 6) : 3;
};

/* Sum over the lanes that share a row: an xor butterfly over the lane
 * offsets LO, 2 LO, ..., HI / 2 (VK: 1 .. LC / 2, KV: LR .. 16). Each step
 * adds the same two values on both partners (a + b == b + a), so every
 * lane of the row ends with the same bits. */
template <int LO, int HI> __device__ __forceinline__ float lane_sum(float x) {
#pragma unroll
    for (int off = LO; off < HI; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ float bf16_to_f32(uint16_t x) { return __uint_as_float((uint32_t)x << 16); }
__device__ __forceinline__ uint16_t f32_to_bf16(float x) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

/* ---- state vectors: VEC elements of E <-> f32 ---- */

/* Cache policies (measured on an H100, bench_recurrent, session 6): f32
 * vectors load with a 256-byte L2 fetch hint (a warp reads whole 512-byte
 * rows) and store with the default write-back policy; bf16 vectors and the
 * element-wise path stream both ways (.cs, evict first): for the bf16 pool
 * the default policies were 12% slower at N = 256, for f32 .cs was
 * 0.7-3.5% slower at N = 1 and 8192. */
__device__ __forceinline__ float4 ld_f32x4(const float *p) {
    float4 x;
    asm volatile("ld.global.L2::256B.v4.f32 {%0,%1,%2,%3}, [%4];"
                 : "=f"(x.x), "=f"(x.y), "=f"(x.z), "=f"(x.w)
                 : "l"(p));
    return x;
}

template <typename E, int VEC> struct StateIO;

template <> struct StateIO<float, 1> {
    static __device__ __forceinline__ void load(float *d, const float *p) { d[0] = __ldcs(p); }
    static __device__ __forceinline__ void store(float *p, const float *s) { __stcs(p, s[0]); }
};
template <> struct StateIO<float, 4> {
    static __device__ __forceinline__ void load(float *d, const float *p) {
        const float4 x = ld_f32x4(p);
        d[0] = x.x, d[1] = x.y, d[2] = x.z, d[3] = x.w;
    }
    static __device__ __forceinline__ void store(float *p, const float *s) {
        *reinterpret_cast<float4 *>(p) = make_float4(s[0], s[1], s[2], s[3]);
    }
};
template <> struct StateIO<uint16_t, 1> {
    static __device__ __forceinline__ void load(float *d, const uint16_t *p) {
        d[0] = bf16_to_f32(__ldcs(reinterpret_cast<const unsigned short *>(p)));
    }
    static __device__ __forceinline__ void store(uint16_t *p, const float *s) {
        __stcs(reinterpret_cast<unsigned short *>(p), (unsigned short)f32_to_bf16(s[0]));
    }
};
template <> struct StateIO<uint16_t, 8> {
    static __device__ __forceinline__ void load(float *d, const uint16_t *p) {
        const uint4 x = __ldcs(reinterpret_cast<const uint4 *>(p));
        const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int i = 0; i < 4; i++) d[2 * i] = bf16_lo(w[i]), d[2 * i + 1] = bf16_hi(w[i]);
    }
    static __device__ __forceinline__ void store(uint16_t *p, const float *s) {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            w[i] = (uint32_t)f32_to_bf16(s[2 * i]) | ((uint32_t)f32_to_bf16(s[2 * i + 1]) << 16);
        __stcs(reinterpret_cast<uint4 *>(p), make_uint4(w[0], w[1], w[2], w[3]));
    }
};

/* Row of state element (a, *) and column of (*, b) held by this thread. */
template <class G, bool KV> __host__ __device__ __forceinline__ int row_of(int row0, int lr, int a) {
    return KV ? row0 + (a / G::VEC) * G::VEC * G::LR + lr * G::VEC + a % G::VEC
              : row0 + a * G::LR + lr;
}
template <class G, bool KV> __host__ __device__ __forceinline__ int col_of(int lc, int b) {
    return KV ? lc * G::CT + b : (b / G::VEC) * G::VEC * G::LC + lc * G::VEC + b % G::VEC;
}

/* Calls f(a, b, off) for each state vector of the thread's tile that lies
 * inside [V][K]: (a, b) the tile position of its first element, off its
 * element offset within the state (an int: V * K <= 65536). For the vector
 * path a vector is wholly inside or wholly outside (the contiguous
 * dimension is a multiple of VEC and vectors start at multiples of VEC). */
template <class G, bool KV, class F>
__device__ __forceinline__ void for_each_vec(int row0, int lr, int lc, int K, int V, F &&f) {
    constexpr int VEC = G::VEC;
    if constexpr (!KV) {
#pragma unroll
        for (int a = 0; a < G::RT; a++) {
            const int r = row_of<G, KV>(row0, lr, a);
#pragma unroll
            for (int b = 0; b < G::CT; b += VEC) {
                const int c = col_of<G, KV>(lc, b);
                if (r < V && c < K) f(a, b, r * K + c);
            }
        }
    } else {
#pragma unroll
        for (int b = 0; b < G::CT; b++) {
            const int c = col_of<G, KV>(lc, b);
#pragma unroll
            for (int a = 0; a < G::RT; a += VEC) {
                const int r = row_of<G, KV>(row0, lr, a);
                if (r < V && c < K) f(a, b, c * V + r);
            }
        }
    }
}

/* The thread's tile from (load) or to (store) one state of the pool or
 * history, base at that state's [0][0]. Rows >= V and columns >= K are
 * zero on load and skipped on store. VK vectors run along b, KV along a. */
template <class G, bool KV, typename E>
__device__ __forceinline__ void tile_load(float (&s)[G::RT][G::CT], const E *base, int row0,
                                          int lr, int lc, int K, int V) {
    using IO = StateIO<E, G::VEC>;
#pragma unroll
    for (int a = 0; a < G::RT; a++)
#pragma unroll
        for (int b = 0; b < G::CT; b++) s[a][b] = 0.f;
    for_each_vec<G, KV>(row0, lr, lc, K, V, [&](int a, int b, int off) {
        float x[G::VEC];
        IO::load(x, base + off);
#pragma unroll
        for (int e = 0; e < G::VEC; e++) (KV ? s[a + e][b] : s[a][b + e]) = x[e];
    });
}

template <class G, bool KV, typename E>
__device__ __forceinline__ void tile_store(E *base, const float (&s)[G::RT][G::CT], int row0,
                                           int lr, int lc, int K, int V) {
    using IO = StateIO<E, G::VEC>;
    for_each_vec<G, KV>(row0, lr, lc, K, V, [&](int a, int b, int off) {
        float x[G::VEC];
#pragma unroll
        for (int e = 0; e < G::VEC; e++) x[e] = KV ? s[a + e][b] : s[a][b + e];
        IO::store(base + off, x);
    });
}

/* One token's inputs for this thread, as loaded: q and k at its CT
 * columns and v at its RT rows as packed bf16 pairs (element i in word
 * i / 2, low half first), g and beta raw. */
template <class G> struct Tok {
    uint32_t k[G::CT / 2], q[G::CT / 2], v[G::RT / 2];
    float g, beta;
};

__device__ __forceinline__ void put_half(uint32_t *w, int i, uint16_t x) {
    if (i & 1) w[i >> 1] |= (uint32_t)x << 16;
    else w[i >> 1] = x;
}

/* Element i of packed bf16 pairs, as f32. */
template <int COUNT> __device__ __forceinline__ float raw_at(const uint32_t (&w)[COUNT / 2], int i) {
    return i & 1 ? bf16_hi(w[i >> 1]) : bf16_lo(w[i >> 1]);
}

/* The thread's CT columns of one q or k row (K elements at p): CT / RUN
 * runs of RUN consecutive columns, vector loads where allowed. */
template <class G, bool KV>
__device__ __forceinline__ void load_cols(uint32_t (&w)[G::CT / 2], const uint16_t *p, int lc,
                                          int K, bool vec) {
    constexpr int RUN = G::RUN;
#pragma unroll
    for (int b = 0; b < G::CT; b += RUN) {
        const int c = col_of<G, KV>(lc, b);
        if constexpr (RUN == 8) {
            if (vec && c + 8 <= K) {
                const uint4 x = __ldg(reinterpret_cast<const uint4 *>(p + c));
                w[b / 2] = x.x, w[b / 2 + 1] = x.y, w[b / 2 + 2] = x.z, w[b / 2 + 3] = x.w;
                continue;
            }
        } else if constexpr (RUN == 4) {
            if (vec && c + 4 <= K) {
                const uint2 x = __ldg(reinterpret_cast<const uint2 *>(p + c));
                w[b / 2] = x.x, w[b / 2 + 1] = x.y;
                continue;
            }
        }
#pragma unroll
        for (int e = 0; e < RUN; e++)
            put_half(w, b + e, c + e < K ? __ldg(reinterpret_cast<const unsigned short *>(p + c + e))
                                         : (uint16_t)0);
    }
}

template <class G, bool KV>
__device__ __forceinline__ void load_tok(Tok<G> &tk, const RecParams &P, int64_t t, int h, int kh,
                                         int row0, int lr, int lc) {
    const int64_t qk = (t * P.Hk + kh) * (int64_t)P.K;
    load_cols<G, KV>(tk.k, P.k + qk, lc, P.K, P.in_vec);
    load_cols<G, KV>(tk.q, P.q + qk, lc, P.K, P.in_vec);
    const uint16_t *v = P.v + (t * P.Hv + h) * (int64_t)P.V;
#pragma unroll
    for (int a = 0; a < G::RT; a++) {
        const int r = row_of<G, KV>(row0, lr, a);
        put_half(tk.v, a, r < P.V ? __ldg(reinterpret_cast<const unsigned short *>(v + r))
                                  : (uint16_t)0);
    }
    tk.g = __ldg(P.g + t * P.Hv + h);
    tk.beta = __ldg(P.beta + t * P.Hv + h);
}

/* Token t's inputs towards L1 while the previous token computes (no
 * registers held): lanes 0-4 the k row, 5-9 the q row, 10-14 the v row
 * (a row of <= 256 bf16 spans at most 5 lines of 128 bytes; addresses past
 * the row are clamped to its last element), 15 g, 16 beta. */
__device__ __forceinline__ void prefetch_tok(const RecParams &P, int64_t t, int h, int kh,
                                             int lane) {
    const void *p = nullptr;
    const int i = (lane % 5) * 64;
    if (lane < 10)
        p = (lane < 5 ? P.k : P.q) + (t * P.Hk + kh) * (int64_t)P.K + min(i, P.K - 1);
    else if (lane < 15)
        p = P.v + (t * P.Hv + h) * (int64_t)P.V + min(i, P.V - 1);
    else if (lane < 17)
        p = (lane == 15 ? P.g : P.beta) + t * P.Hv + h;
    if (p) asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

/* softplus(x) = log(1 + exp(x)), linear above 20 (as PyTorch). */
__device__ __forceinline__ float softplus_f32(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

template <typename E, int KP, bool KV, bool VECS>
__global__ void __launch_bounds__(MAX_WARPS * 32, (Geo<E, KP, KV, VECS>::MIN_BLOCKS))
recurrent_kernel(const RecParams P) {
    using G = Geo<E, KP, KV, VECS>;
    constexpr int RT = G::RT, CT = G::CT;
    /* lanes sharing a row: VK lane = lr * LC + lc, KV lane = lc * LR + lr */
    constexpr int RED_LO = KV ? G::LR : 1, RED_HI = KV ? 32 : G::LC;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int lc = KV ? lane / G::LR : lane % G::LC;
    const int lr = KV ? lane % G::LR : lane / G::LC;

    /* The vector kernels divide in 32 bits (the host keeps the grid below
     * 2^31): a 64-bit division is a long emulated sequence on the way to
     * the first load (N = 1: 3.76 -> 3.67 us on an H100). The element-wise
     * kernels keep 64 bits: with 32, nvcc 13.0 spills them. */
    using Idx = std::conditional_t<VECS, uint32_t, int64_t>;
    Idx bid = blockIdx.x;
    const int tile = (int)(bid % (Idx)P.tiles);
    bid /= (Idx)P.tiles;
    const int h = (int)(bid % (Idx)P.Hv);
    const int64_t n = (int64_t)(bid / (Idx)P.Hv);
    const int row0 = tile * P.block_rows + warp * G::WR;
    pdl_trigger();
    if (row0 >= P.V) return; /* a whole warp past the rows; no block-level sync below */
    const int kh = P.tiled ? h % P.Hk : h / P.group;
    /* Launched as a programmatic dependent (sm_90): everything above may
     * run while the previous kernel finishes; no load or store of global
     * memory before this wait (that kernel may write the inputs or read o
     * or the pool). Only a hint may go first: the block's state rows (VK:
     * one contiguous run) asked into L2, so that their DRAM reads overlap
     * that kernel's tail. Safe whatever that kernel writes (see
     * prefetch_l2_bulk). The slot is read through L2 only (ld.cg leaves no
     * L1 line behind) and may be stale: then another slot of the pool is
     * prefetched, which costs time, never a result; it is read again below. */
    const int64_t state_elems = (int64_t)P.V * P.K;
    if constexpr (!KV && VECS) {
        if (P.prefetch && threadIdx.x == 0) {
            const int64_t hint = P.idx ? (int64_t)__ldcg(P.idx + n) : n;
            const int r0 = tile * P.block_rows; /* the block's first row */
            if (hint >= 0 && hint < P.pool_size)
                prefetch_l2_bulk(static_cast<const E *>(P.pool) + (hint * P.Hv + h) * state_elems + (int64_t)r0 * P.K,
                                 (uint32_t)(min(P.block_rows, P.V - r0) * P.K * (int)sizeof(E)));
        }
    }
    pdl_wait();

    int64_t bos, eos;
    if (P.cu) {
        bos = P.cu[n];
        eos = P.cu[n + 1];
    } else {
        bos = n * P.T;
        eos = bos + P.T;
    }
    const int64_t slot = P.idx ? (int64_t)P.idx[n] : n;
    if (slot < 0 || slot >= P.pool_size) { /* padding: o rows zero, nothing else */
        for (int64_t t = bos; t < eos; t++)
            for (int i = lane; i < G::WR; i += 32)
                if (row0 + i < P.V) P.o[(t * P.Hv + h) * P.V + row0 + i] = 0;
        return;
    }
    if (bos >= eos) return; /* empty: reads and writes nothing */

    E *state = static_cast<E *>(P.pool) + (slot * P.Hv + h) * state_elems;
    float s[RT][CT];
    tile_load<G, KV>(s, state, row0, lr, lc, P.K, P.V);
    float neg_A = 0.f, dt_bias = 0.f;
    if (P.qwen) {
        neg_A = -expf(__ldg(P.A_log + h));
        dt_bias = __ldg(P.dt_bias + h);
    }

    for (int64_t t = bos; t < eos; t++) {
        Tok<G> tk;
        load_tok<G, KV>(tk, P, t, h, kh, row0, lr, lc);
        if (t + 1 < eos) prefetch_tok(P, t + 1, h, kh, lane);

        /* q and k stay raw bf16 values; the L2 norms and the scale are
         * applied to the dot products instead (mk, mq). */
        float mk = 1.0f, mq = P.scale;
        if (P.l2norm) {
            float sk = 0.f, sq = 0.f;
#pragma unroll
            for (int b = 0; b < CT; b++) {
                const float kb = raw_at<CT>(tk.k, b), qb = raw_at<CT>(tk.q, b);
                sk = fmaf(kb, kb, sk);
                sq = fmaf(qb, qb, sq);
            }
            sk = lane_sum<RED_LO, RED_HI>(sk);
            sq = lane_sum<RED_LO, RED_HI>(sq);
            mk = 1.0f / sqrtf(sk + 1e-6f);
            mq *= 1.0f / sqrtf(sq + 1e-6f);
        }
        float gt = tk.g;
        if (P.qwen) gt = neg_A * softplus_f32(gt + dt_bias);
        const float decay = expf(gt);
        float bt = tk.beta;
        if (P.beta_sigmoid) bt = 1.0f / (1.0f + expf(-bt));

        /* pass 1: S_j = decay S_j, x_j = S_j . k (in-thread part) */
        float x[RT];
#pragma unroll
        for (int a = 0; a < RT; a++) x[a] = 0.f;
#pragma unroll
        for (int b = 0; b < CT; b++) {
            const float kb = raw_at<CT>(tk.k, b);
#pragma unroll
            for (int a = 0; a < RT; a++) {
                s[a][b] *= decay;
                x[a] = fmaf(s[a][b], kb, x[a]);
            }
        }
        /* u_j = beta (v_j - S_j . k_hat) mk: S_j += u_j k_raw = beta e_j k_hat */
#pragma unroll
        for (int a = 0; a < RT; a++) {
            const float dot = lane_sum<RED_LO, RED_HI>(x[a]) * mk;
            x[a] = bt * (raw_at<RT>(tk.v, a) - dot) * mk;
        }
        /* pass 2: S_j += u_j k, then S_j . q */
        float y[RT];
#pragma unroll
        for (int a = 0; a < RT; a++) y[a] = 0.f;
#pragma unroll
        for (int b = 0; b < CT; b++) {
            const float kb = raw_at<CT>(tk.k, b), qb = raw_at<CT>(tk.q, b);
#pragma unroll
            for (int a = 0; a < RT; a++) {
                s[a][b] = fmaf(x[a], kb, s[a][b]);
                y[a] = fmaf(s[a][b], qb, y[a]);
            }
        }
#pragma unroll
        for (int a = 0; a < RT; a++) y[a] = lane_sum<RED_LO, RED_HI>(y[a]) * mq;
        if (lc == 0) {
            uint16_t *o = P.o + (t * P.Hv + h) * P.V;
#pragma unroll
            for (int a = 0; a < RT; a++) {
                const int r = row_of<G, KV>(row0, lr, a);
                if (r < P.V) o[r] = f32_to_bf16(y[a]);
            }
        }
        if (P.hist)
            tile_store<G, KV>(static_cast<E *>(P.hist) + (t * P.Hv + h) * state_elems, s, row0, lr,
                              lc, P.K, P.V);
    }
    tile_store<G, KV>(state, s, row0, lr, lc, P.K, P.V);
}

/* ---- host side ---- */

/* Blocks of this kernel configuration a multiprocessor of ctx's device
 * holds at `warps` warps a block. The occupancy query costs microseconds
 * of host time, about a small step's GPU time, so it is asked once per
 * device and block shape (devices past the table are asked every call). */
template <typename E, int KP, bool KV, bool VECS>
gdn_status resident_per_sm(gdn_context *ctx, int warps, int *per_sm) {
    static std::atomic<int> known[16][MAX_WARPS]; /* [device][warps - 1]; 0: not asked yet */
    const bool cached = ctx->device >= 0 && ctx->device < 16 && warps >= 1 && warps <= MAX_WARPS;
    if (cached && (*per_sm = known[ctx->device][warps - 1].load(std::memory_order_relaxed)) > 0)
        return GDN_SUCCESS;
    GDN_CUDA_TRY(ctx, cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                          per_sm, recurrent_kernel<E, KP, KV, VECS>, warps * 32, 0));
    if (cached) known[ctx->device][warps - 1].store(*per_sm, std::memory_order_relaxed);
    return GDN_SUCCESS;
}

template <typename E, int KP, bool KV, bool VECS>
gdn_status launch(gdn_context *ctx, RecParams P, int64_t N, cudaStream_t stream) {
    using G = Geo<E, KP, KV, VECS>;
    constexpr int RUN = G::RUN;
    /* q and k as vectors: every run starts at a multiple of RUN columns, so
     * K % RUN == 0 and RUN-element-aligned bases keep them aligned */
    const uintptr_t qk = (uintptr_t)P.q | (uintptr_t)P.k;
    P.in_vec = RUN >= 4 && P.K % RUN == 0 && qk % (2 * RUN) == 0;
    /* Warps a block: enough for V, then fewer while the grid would leave
     * multiprocessors idle (small N: more, smaller blocks). */
    const int sms = sm_count(ctx);
    const int64_t heads = N * P.Hv;
    if (heads > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_recurrent_forward: sequences * Hv (%lld) exceed the grid limit",
                        (long long)heads);
    int warps = (int)gdn_ceil_div(P.V, G::WR);
    if (warps > MAX_WARPS) warps = MAX_WARPS;
    while (warps > 1 && heads * gdn_ceil_div(P.V, (int64_t)warps * G::WR) < sms) warps /= 2;
    /* to time other block shapes; results do not change */
    warps = env_override("GDN_CUDA_RECURRENT_WARPS", warps, {1, 2, 4});
    P.block_rows = warps * G::WR;
    P.tiles = (int)gdn_ceil_div(P.V, P.block_rows);
    const int64_t blocks = heads * P.tiles;
    if (blocks > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_recurrent_forward: %lld blocks (sequences * Hv * row tiles) exceed "
                        "the grid limit",
                        (long long)blocks);
    /* sm_90, VK layout: a programmatic dependent launch
     * (GDN_CUDA_RECURRENT_PDL=0 | 1), so that the blocks' launch and index
     * arithmetic overlap the end of the kernel before; each block also lets
     * the next such launch start. H100, one job, f32 pool, us, without /
     * with: N = 1 3.51 -> 3.27, N = 32 48.1 -> 47.45, N = 64 92.7 -> 92.1,
     * N = 8192 unchanged; bf16 N = 32 30.1 -> 29.55, N = 1 3.70 -> 3.72.
     * Not for KV: its N = 1 went 3.30 -> 4.35 (not understood). */
    const bool pdl = ctx->cc_major >= 9 && !KV && env_override("GDN_CUDA_RECURRENT_PDL", 1, {0, 1}) == 1;
    /* With the launch, a grid that fits the machine at once (small N) has
     * each block ask for its state rows before the wait: its DRAM reads
     * then overlap the previous kernel's last blocks (GDN_CUDA_RECURRENT_PREFETCH
     * = 0 | 1). H100, one job, us, without / with: f32 N = 1 3.27 -> 2.52,
     * bf16 N = 1 3.78 -> 3.00. Grids of several waves keep it off: there
     * the prefetch measured 0.3-0.7% slower (f32, N = 32 to 128) or up to
     * 15% (bf16, N = 128 and 256), and 0.3% faster only at f32 N >= 256. */
    if (pdl && env_override("GDN_CUDA_RECURRENT_PREFETCH", 1, {0, 1}) == 1) {
        int per_sm = 0;
        const gdn_status st = resident_per_sm<E, KP, KV, VECS>(ctx, warps, &per_sm);
        if (st != GDN_SUCCESS) return st;
        P.prefetch = blocks <= (int64_t)per_sm * sms;
    }
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t cfg = launch_config((unsigned)blocks, warps * 32, 0, stream, pdl, &attr);
    GDN_CUDA_TRY(ctx, cudaLaunchKernelEx(&cfg, recurrent_kernel<E, KP, KV, VECS>, P));
    GDN_CUDA_CHECK_LAUNCH(ctx, "recurrent_kernel");
    return GDN_SUCCESS;
}

template <typename E, int KP>
gdn_status dispatch_layout(gdn_context *ctx, const RecParams &P, int64_t N, bool kv, bool vecs,
                           cudaStream_t stream) {
    if (kv) {
        if (vecs) return launch<E, KP, true, true>(ctx, P, N, stream);
        return launch<E, KP, true, false>(ctx, P, N, stream);
    }
    if (vecs) return launch<E, KP, false, true>(ctx, P, N, stream);
    return launch<E, KP, false, false>(ctx, P, N, stream);
}

template <typename E>
gdn_status dispatch_k(gdn_context *ctx, const RecParams &P, int64_t N, bool kv, bool vecs,
                      cudaStream_t stream) {
    if (P.K <= 64) return dispatch_layout<E, 64>(ctx, P, N, kv, vecs, stream);
    if (P.K <= 128) return dispatch_layout<E, 128>(ctx, P, N, kv, vecs, stream);
    return dispatch_layout<E, 256>(ctx, P, N, kv, vecs, stream);
}

} // namespace
} // namespace gdn

using namespace gdn;

extern "C" gdn_status gdn_cuda_recurrent_forward(gdn_context *ctx,
                                                 const gdn_recurrent_forward_args *a) {
    const gdn_problem *p = a->p;
    DeviceGuard guard(ctx->device);
    cudaStream_t stream = (cudaStream_t)ctx->stream;
    if (a->N > INT32_MAX || p->Hv > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_recurrent_forward: N (%lld) and Hv (%lld) must each fit in int32",
                        (long long)a->N, (long long)p->Hv);
    RecParams P{};
    P.q = a->q;
    P.k = a->k;
    P.v = a->v;
    P.g = a->g;
    P.beta = a->beta;
    P.A_log = a->opts.A_log;
    P.dt_bias = a->opts.dt_bias;
    P.pool = a->state_pool;
    P.hist = a->state_history;
    P.idx = a->state_indices;
    P.cu = p->cu_seqlens ? p->cu_seqlens_device : nullptr;
    P.o = a->o;
    P.pool_size = a->pool_size;
    P.T = p->T;
    set_heads(P, p);
    P.scale = a->opts.scale;
    P.l2norm = a->opts.l2norm_qk;
    P.beta_sigmoid = a->opts.beta_sigmoid;
    P.qwen = a->opts.qwen_gate;

    const bool kv = p->state_layout == GDN_STATE_KV;
    const bool f32 = a->pool_dtype == GDN_DTYPE_F32;
    /* The vector path: the contiguous dimension a multiple of the 16-byte
     * vector, the pool and the history 16-byte aligned. */
    const int ve = f32 ? 4 : 8;
    const int64_t contiguous = kv ? p->V : p->K;
    const bool vecs = contiguous % ve == 0 && (uintptr_t)a->state_pool % 16 == 0 &&
                      (uintptr_t)a->state_history % 16 == 0;
    if (f32) return dispatch_k<float>(ctx, P, a->N, kv, vecs, stream);
    return dispatch_k<uint16_t>(ctx, P, a->N, kv, vecs, stream);
}

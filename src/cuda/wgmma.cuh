/*
 * Hopper warpgroup matrix products (wgmma, sm_90a only) for the fused
 * pass: A from registers (the m16n8k16 A-fragment layout, warp w of the
 * warpgroup giving rows 16w..16w+15), B from shared memory through a
 * descriptor, f32 accumulators in the m16n8k16 C layout (n8 group j of
 * the warp's rows in d[j][0..3]). Callers compile these only where
 * __CUDA_ARCH_FEAT_SM90_ALL is defined.
 *
 * Shared-memory operands use the 128-byte swizzle: a tile of rows of 64
 * bf16 (128 bytes), 1024-byte aligned, 16-byte piece p of row r stored at
 * piece p ^ (r % 8) (sw128_offset). A B operand is either K-major (rows
 * are the N index, 64 K values a row: k-step kk of a row block starts
 * 32 kk bytes in) or N-major (rows are the K index, 64 N values a row:
 * k-step kk starts 16 rows = 2048 bytes down; N past 64 in the next tile,
 * lbo bytes on).
 */
#ifndef GDN_CUDA_WGMMA_CUH
#define GDN_CUDA_WGMMA_CUH

#include <stdint.h>

namespace gdn {

/* Byte offset of bf16 element (r, c), c < 64, in a swizzled 128-byte-row tile. */
__host__ __device__ __forceinline__ uint32_t sw128_offset(int r, int c) {
    return (uint32_t)(r * 128 + ((((c >> 3) ^ r) & 7) << 4) + (c & 7) * 2);
}

/* Matrix descriptor, 128-byte swizzle: start address (shared, 16-byte
 * units), leading and stride byte offsets; as two words, so that the
 * descriptors of tiles at constant offsets from one base (a stage's)
 * cost one add each (wgmma_desc_at). Encoded whole from each tile's
 * address, the mask and shift could not fold into the offset: about
 * seven instructions a product where it issues them (H100: q35_t8k
 * 0.226 -> 0.222 ms, the 32-row form; the 64- and 128-row forms within
 * their spread). */
struct WgmmaDescBase {
    uint32_t lo, hi;
};
__device__ __forceinline__ WgmmaDescBase wgmma_desc_base(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
    return {((saddr & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16), ((sbo >> 4) & 0x3FFF) | (1u << 30)};
}
/* The descriptor of the tile byte_off bytes (a multiple of 16) past the
 * base: the start address field cannot carry into the next one, since
 * shared addresses stay below 256 KB. */
__device__ __forceinline__ uint64_t wgmma_desc_at(WgmmaDescBase b, uint32_t byte_off) {
    return ((uint64_t)b.hi << 32) | (uint64_t)(b.lo + (byte_off >> 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* Keeps the compiler from moving reads or writes of accumulators across
 * the asynchronous products (call after wgmma_wait). */
template <int NG> __device__ __forceinline__ void wgmma_fence_acc(float (&d)[NG][4]) {
#pragma unroll
    for (int j = 0; j < NG; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[j][e])::"memory");
}
/* The products issued since the last commit, as one group, done: their
 * accumulators acc... readable again. */
template <class... Acc> __device__ __forceinline__ void wgmma_complete(Acc &...acc) {
    wgmma_commit();
    wgmma_wait<0>();
    (wgmma_fence_acc(acc), ...);
}

/* Registers a lane of this warpgroup may hold from here on (setmaxnreg,
 * every warp of the warpgroup together): dec gives back, inc waits until
 * the multiprocessor has them. N a multiple of 8 in 24..256. */
template <int N> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

/* d (+)= A B for a 64 x 32 tile, one k-step of 16, both operands from
 * shared memory by descriptor (the 32-row wgmma form's products); acc = 0
 * overwrites d; TA = 1 for an M-major A. */
template <int TA> struct WgmmaSS32 {
    static __device__ __forceinline__ void run(float (&d)[4][4], uint64_t da, uint64_t db, int acc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
                     "%16, %17, p, 1, 1, %19, 0;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
                     : "l"(da), "l"(db), "r"(acc), "n"(TA));
    }
};

/* d (+)= A B for a 64 x N tile, N = 8 NG (64 or 128), one k-step of 16;
 * acc = 0 overwrites d; TB = 1 for an N-major B. */
template <int NG, int TB> struct WgmmaRS;

template <int TB> struct WgmmaRS<8, TB> {
    static __device__ __forceinline__ void run(float (&d)[8][4], const uint32_t a[4], uint64_t desc, int acc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                     "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
    }
};
template <int TB> struct WgmmaRS<16, TB> {
    static __device__ __forceinline__ void run(float (&d)[16][4], const uint32_t a[4], uint64_t desc, int acc) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                     "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"
                     : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
                       "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
                       "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
                       "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
                       "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
                       "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
                       "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
                       "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
    }
};

} // namespace gdn

#endif

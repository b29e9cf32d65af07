/* Shared CUDA helpers: error checks that report through the context, and
 * the warp-level primitives the kernels are built from (cp.async,
 * ldmatrix, mma.sync m16n8k16 bf16 -> f32), portable to sm_80. */
#ifndef GDN_CUDA_COMMON_CUH
#define GDN_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include <initializer_list>

#include "gdn_internal.h"

/* Evaluate a CUDA runtime call; on failure record it on ctx and return. */
#define GDN_CUDA_TRY(ctx, call)                                                              \
    do {                                                                                     \
        cudaError_t gdn_err_ = (call);                                                       \
        if (gdn_err_ != cudaSuccess)                                                         \
            return gdn_fail((ctx), GDN_ERROR_CUDA, "%s: %s (%s:%d)", #call,                  \
                            cudaGetErrorString(gdn_err_), __FILE__, __LINE__);               \
    } while (0)

/* A testing override from the environment (documented in README): the
 * value of variable name when it is one of allowed (or, second form, in
 * [lo, hi]), else current. */
inline int env_override(const char *name, int current, std::initializer_list<int> allowed) {
    const char *s = getenv(name);
    if (!s) return current;
    const int v = atoi(s);
    for (int a : allowed)
        if (v == a) return v;
    return current;
}
inline int env_override(const char *name, int current, int lo, int hi) {
    const char *s = getenv(name);
    const int v = s ? atoi(s) : current;
    return v >= lo && v <= hi ? v : current;
}

/* After a launch: a bad configuration shows here, not at the next call. */
#define GDN_CUDA_CHECK_LAUNCH(ctx, what)                                                     \
    do {                                                                                     \
        cudaError_t gdn_err_ = cudaGetLastError();                                           \
        if (gdn_err_ != cudaSuccess)                                                         \
            return gdn_fail((ctx), GDN_ERROR_CUDA, "%s launch failed: %s", (what),           \
                            cudaGetErrorString(gdn_err_));                                   \
    } while (0)

namespace gdn {

/* The device's multiprocessors for launch-shape rules (the context's
 * count; an H100's 132 where the driver gave none). */
inline int sm_count(const gdn_context *ctx) { return ctx->sm_count > 0 ? ctx->sm_count : 132; }

/* Workspace carving: every piece starts 256-byte aligned. */
inline size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

/* The head geometry every kernel's parameter block carries (fields Hk, Hv,
 * K, V, group = Hv / Hk, tiled = the tiled head map). */
template <class Params> inline void set_heads(Params &P, const gdn_problem *p) {
    P.Hk = (int)p->Hk;
    P.Hv = (int)p->Hv;
    P.K = (int)p->K;
    P.V = (int)p->V;
    P.group = (int)(p->Hv / p->Hk);
    P.tiled = p->head_map == GDN_HEAD_MAP_TILED;
}

/* Makes ctx's device current for a call and restores the caller's. */
struct DeviceGuard {
    int prev = -1;
    explicit DeviceGuard(int dev) {
        if (cudaGetDevice(&prev) == cudaSuccess && prev != dev) cudaSetDevice(dev);
        else prev = -1;
    }
    ~DeviceGuard() {
        if (prev >= 0) cudaSetDevice(prev);
    }
};

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16-byte asynchronous global->shared copy; src_bytes < 16 zero-fills the
 * rest (0 = pure zero fill, the source is not read). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* bar.sync on barrier id (1..15; 0 is __syncthreads') for count threads,
 * a multiple of 32: a barrier for some of a block's warps. */
__device__ __forceinline__ void named_barrier(int id, int count) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

/* The same without .aligned (barrier.sync): for warps that reach it from
 * different instructions (bar.sync requires every participant at the
 * same one; compute-sanitizer's synccheck flags it otherwise). */
__device__ __forceinline__ void named_barrier_unaligned(int id, int count) {
    asm volatile("barrier.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

/* mbarrier (sm_80+): a shared-memory barrier that completes a phase when
 * `count` arrivals have come; waiters name the phase by its parity. */
__device__ __forceinline__ void mbar_init(uint64_t *bar, int count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
/* One arrival (release: this thread's earlier shared-memory writes and
 * reads are ordered before the phase completes). */
__device__ __forceinline__ void mbar_arrive(uint64_t *bar) {
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared.b64 st, [%0];\n}\n" ::"r"(smem_addr(bar))
                 : "memory");
}
/* One arrival once all of this thread's earlier cp.async copies have
 * landed (counted in the init count: .noinc). */
__device__ __forceinline__ void mbar_arrive_cp_async(uint64_t *bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
/* Wait until the phase of the given parity has completed (acquire). */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n .reg .pred p;\n WAIT:\n"
                 " mbarrier.try_wait.parity.shared.b64 p, [%0], %1;\n"
                 " @!p bra WAIT;\n}\n" ::"r"(smem_addr(bar)), "r"(parity)
                 : "memory");
#else
    asm volatile("{\n .reg .pred p;\n WAIT:\n"
                 " mbarrier.test_wait.parity.shared.b64 p, [%0], %1;\n"
                 " @!p bra WAIT;\n}\n" ::"r"(smem_addr(bar)), "r"(parity)
                 : "memory");
#endif
}

/* One arrival that also raises the phase's expected transaction bytes
 * (the tensor copies below count down); sm_90, else a plain arrival (the
 * callers pass 0 bytes there). */
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}\n" ::"r"(
                     smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#else
    (void)bytes;
    mbar_arrive(bar);
#endif
}

/* A 3D tile from global to shared memory by the tensor copy engine (sm_90
 * TMA), completing its bytes on bar. tmap: a CUtensorMap in parameter,
 * constant or global memory; c0 the innermost coordinate. Not for sm_80:
 * callers select it by __CUDA_ARCH__. */
__device__ __forceinline__ void tma_load_3d(void *dst, const void *tmap, uint64_t *bar, int c0, int c1,
                                            int c2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_addr(dst)),
                 "l"(tmap), "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(bar))
                 : "memory");
#else
    (void)dst, (void)tmap, (void)bar, (void)c0, (void)c1, (void)c2;
    __trap();
#endif
}

/* A 3D tile from shared to global memory by the tensor copy engine (sm_90
 * TMA store; elements past the map's bounds are not written), in this
 * thread's bulk group; then the group's commit and waits (.read: until the
 * shared source has been read). Not for sm_80: callers select them by
 * __CUDA_ARCH__. */
__device__ __forceinline__ void tma_store_3d(const void *tmap, const void *src, int c0, int c1, int c2) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];\n" ::"l"(
                     tmap),
                 "r"(c0), "r"(c1), "r"(c2), "r"(smem_addr(src))
                 : "memory");
#else
    (void)tmap, (void)src, (void)c0, (void)c1, (void)c2;
    __trap();
#endif
}
__device__ __forceinline__ void bulk_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void bulk_wait_read() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
template <int N> __device__ __forceinline__ void bulk_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
/* Orders this thread's generic-proxy shared-memory writes before later
 * async-proxy reads (a tensor store, a wgmma operand). */
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

/* Asks for [p, p + bytes) to be brought into L2 (sm_90 bulk prefetch; a
 * no-op before): p 16-byte aligned, bytes a multiple of 16. A hint only:
 * nothing waits for it, and since every write lands in L2 (the point of
 * coherence) a line prefetched before another kernel writes it is still
 * read with its new value. */
__device__ __forceinline__ void prefetch_l2_bulk(const void *p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}
/* Programmatic dependent launch (sm_90; no-ops before): a kernel lets
 * the next launch in its stream start (pdl_trigger), and that launch
 * waits for this one to finish and its writes to be visible (pdl_wait)
 * before it reads them. Without the launch attribute the wait returns at
 * once, the stream having ordered the kernels already. */
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* A launch configuration for cudaLaunchKernelEx; with pdl, a programmatic
 * dependent launch (the kernel must pdl_wait before touching what the
 * kernel before it writes or reads). The configuration points at *attr,
 * which must outlive the launch call. */
inline cudaLaunchConfig_t launch_config(unsigned grid, unsigned block, size_t smem, cudaStream_t stream,
                                        bool pdl, cudaLaunchAttribute *attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(block);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    attr->id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr->val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cfg;
}

/* ldmatrix: four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses
 * of matrix i. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* stmatrix (sm_90): four 8x8 b16 matrices, each stored transposed with
 * TRANS; lanes 8i .. 8i + 7 give the row addresses of matrix i, r[i] its
 * fragment (the ldmatrix layout, before any transpose). */
#define GDN_STMATRIX_X4(T)                                                                                 \
    asm volatile("stmatrix.sync.aligned.m8n8.x4" T ".shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_addr(p)), \
                 "r"(r0), "r"(r1), "r"(r2), "r"(r3)                                                        \
                 : "memory")
template <bool TRANS>
__device__ __forceinline__ void stmatrix_x4(void *p, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    if constexpr (TRANS) GDN_STMATRIX_X4(".trans");
    else GDN_STMATRIX_X4("");
}
#undef GDN_STMATRIX_X4
#endif

/* D = A(16x16, row) * B(16x8, col) + D, bf16 inputs, f32 accumulators. */
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4],
                                               const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* x = big + small, both tf32 by truncation: big exact, small within 2^-10
 * of itself (so x within about 2^-20); big big + big small + small big
 * on tensor cores is then close to an f32 product. A NaN whose payload
 * sits in the dropped bits becomes Inf in big, but x - big keeps it NaN. */
__device__ __forceinline__ void split_tf32(float x, uint32_t &big, uint32_t &small) {
    const uint32_t b = __float_as_uint(x) & 0xffffe000u;
    big = b;
    small = __float_as_uint(x - __uint_as_float(b)) & 0xffffe000u;
}

/* D += A B on tensor cores, m16n8k8 with tf32 inputs (f32 bit patterns
 * whose low 13 bits are zero). Not volatile: the compiler may schedule it. */
__device__ __forceinline__ void mma_tf32_1688(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

} // namespace gdn

#endif

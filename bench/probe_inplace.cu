/* Probe (not a libgdn benchmark): how fast can a read-modify-write of a
 * large f32 buffer go, against cudaMemcpy? Bears on
 * gdn_recurrent_forward, whose pool update runs at the copy bandwidth
 * (bench/RESULTS.md, sessions 7 and 21). 2 GiB, median of 13, three parts:
 *  1. in place against a second buffer: blocks of 128 threads that load
 *     PER 16-byte vectors each, scale them, then store them;
 *  2. in place, by threads a block, vectors a thread and blocks a
 *     multiprocessor (held down by unused dynamic shared memory);
 *  3. in place by bulk copies (sm_90 cp.async.bulk): persistent blocks, one
 *     producer lane loading tile after tile into a ring of shared-memory
 *     stages, four consumer warps scaling a tile there, one lane storing it
 *     back with a bulk store. */
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "bench_util.h"
#include "cuda_common.cuh" /* smem_addr, named_barrier, the mbarrier and bulk-group helpers */

using namespace gdn;

template <int PER, int TH = 128>
__global__ void __launch_bounds__(TH) scale(const float4 *x, float4 *y, float a) {
    const size_t base = (size_t)blockIdx.x * TH * PER + threadIdx.x;
    float4 v[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) v[i] = x[base + i * TH];
#pragma unroll
    for (int i = 0; i < PER; i++) v[i].x *= a, v[i].y *= a, v[i].z *= a, v[i].w *= a;
#pragma unroll
    for (int i = 0; i < PER; i++) y[base + i * TH] = v[i];
}

template <int TILE, int STAGES>
__global__ void __launch_bounds__(160) bulk_scale(float *x, unsigned tiles, float a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* bulk copies: sm_90 */
    extern __shared__ __align__(128) unsigned char ring[];
    __shared__ uint64_t full[STAGES], empty[STAGES];
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) mbar_init(&full[s], 1), mbar_init(&empty[s], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (tid >= 128) { /* producer warp, one lane */
        if (tid != 128) return;
        unsigned i = 0;
        for (unsigned t = blockIdx.x; t < tiles; t += gridDim.x, i++) {
            const int s = i % STAGES;
            if (i >= STAGES) mbar_wait(&empty[s], ((i / STAGES) - 1) & 1);
            mbar_arrive_expect_tx(&full[s], TILE);
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                             smem_addr(ring + s * TILE)),
                         "l"((const char *)x + (size_t)t * TILE), "r"(TILE), "r"(smem_addr(&full[s]))
                         : "memory");
        }
        return;
    }
    unsigned i = 0;
    for (unsigned t = blockIdx.x; t < tiles; t += gridDim.x, i++) {
        const int s = i % STAGES;
        mbar_wait(&full[s], (i / STAGES) & 1);
        float4 *p = reinterpret_cast<float4 *>(ring + s * TILE);
#pragma unroll
        for (int j = tid; j < TILE / 16; j += 128) {
            float4 v = p[j];
            v.x *= a, v.y *= a, v.z *= a, v.w *= a;
            p[j] = v;
        }
        fence_proxy_async_smem();
        named_barrier(1, 128);
        if (tid == 0) {
            asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(
                             (char *)x + (size_t)t * TILE),
                         "r"(smem_addr(p)), "r"(TILE)
                         : "memory");
            bulk_commit();
            bulk_wait_read<1>();
            if (i >= 1) mbar_arrive(&empty[(i - 1) % STAGES]);
        }
    }
    if (tid == 0) bulk_wait<0>();
#else
    (void)x, (void)tiles, (void)a;
    __trap();
#endif
}

int main() {
    const size_t bytes = 2ull << 30, n4 = bytes / 16;
    float4 *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 0, bytes));
    CK(cudaMemset(b, 0, bytes));
    int sms = 0, cc = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaDeviceGetAttribute(&cc, cudaDevAttrComputeCapabilityMajor, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    auto median_ms = [&](auto launch) {
        enum { REPS = 13 };
        double t[REPS];
        for (int r = 0; r < REPS; r++) {
            CK(cudaEventRecord(e0));
            launch();
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms = 0.f;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            t[r] = ms;
        }
        qsort(t, REPS, sizeof(double), bench_cmp_double);
        return (float)t[REPS / 2];
    };
    auto gbs = [&](float ms) { return 2.0 * bytes / ms / 1e6; };
    const float m = median_ms([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); });
    const float o8 = median_ms([&] { scale<8><<<(unsigned)(n4 / 1024), 128>>>(a, b, 1.0001f); });
    const float i8 = median_ms([&] { scale<8><<<(unsigned)(n4 / 1024), 128>>>(a, a, 1.0001f); });
    const float o2 = median_ms([&] { scale<2><<<(unsigned)(n4 / 256), 128>>>(a, b, 1.0001f); });
    const float i2 = median_ms([&] { scale<2><<<(unsigned)(n4 / 256), 128>>>(a, a, 1.0001f); });
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::printf("cudaMemcpy %.3f ms (%.0f GB/s)\n", m, gbs(m));
    std::printf("16 KB blocks: new buffer %.3f ms (%.0f GB/s), in place %.3f ms (%.0f GB/s), ratio %.4f\n", o8,
                gbs(o8), i8, gbs(i8), i8 / o8);
    std::printf(" 4 KB blocks: new buffer %.3f ms (%.0f GB/s), in place %.3f ms (%.0f GB/s), ratio %.4f\n", o2,
                gbs(o2), i2, gbs(i2), i2 / o2);

    auto report = [&](const char *name, float ms) {
        std::printf("%-48s %.4f ms  %6.0f GB/s  %.4f of cudaMemcpy's time\n", name, ms, gbs(ms), ms / m);
    };
    /* part 2: registers, in place; blocks a multiprocessor held to `want` */
    auto regs = [&](auto kernel, int th, int per, int want) {
        const int smem = want >= 16 ? 0 : 233472 / want - 2048;
        CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        int got = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&got, kernel, th, smem));
        char label[80];
        std::snprintf(label, sizeof label, "in place, %3d threads x %d vectors, %2d blocks (%3d KB/SM)", th, per,
                      got, got * th * per * 16 / 1024);
        const unsigned blocks = (unsigned)(n4 / ((size_t)th * per));
        report(label, median_ms([&] { kernel<<<blocks, th, smem>>>(a, a, 1.0001f); }));
        CK(cudaGetLastError());
    };
    regs(scale<1>, 128, 1, 16);
    regs(scale<2>, 128, 2, 16), regs(scale<2>, 128, 2, 12), regs(scale<2>, 128, 2, 8);
    regs(scale<4>, 128, 4, 16), regs(scale<4>, 128, 4, 8), regs(scale<4>, 128, 4, 6);
    regs(scale<8>, 128, 8, 16), regs(scale<8>, 128, 8, 6), regs(scale<8>, 128, 8, 4), regs(scale<8>, 128, 8, 2);
    regs(scale<8, 32>, 32, 8, 32);
    regs(scale<2, 512>, 512, 2, 4), regs(scale<8, 512>, 512, 8, 1);

    /* part 3: bulk copies through shared memory (sm_90) */
    if (cc < 9) {
        std::printf("bulk copies: skipped (compute capability %d < 9)\n", cc);
        return 0;
    }
    auto bulk = [&](auto kernel, int tile, int stages, int per_sm) {
        const int smem = tile * stages;
        CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        char label[80];
        std::snprintf(label, sizeof label, "bulk, %2d KB tiles x %2d stages x %d blocks a SM", tile / 1024, stages,
                      per_sm);
        report(label, median_ms([&] {
                   kernel<<<sms * per_sm, 160, smem>>>(reinterpret_cast<float *>(a), (unsigned)(bytes / tile),
                                                       1.0001f);
               }));
        CK(cudaGetLastError());
    };
    bulk(bulk_scale<16384, 6>, 16384, 6, 1);
    bulk(bulk_scale<16384, 3>, 16384, 3, 2);
    bulk(bulk_scale<8192, 12>, 8192, 12, 1);
    bulk(bulk_scale<8192, 6>, 8192, 6, 2);
    bulk(bulk_scale<32768, 6>, 32768, 6, 1);
    bulk(bulk_scale<4096, 12>, 4096, 12, 2);
    CK(cudaDeviceSynchronize());
    return 0;
}

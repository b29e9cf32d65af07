/* Probe (not a libgdn benchmark): is a read-modify-write of a large buffer
 * in place slower than the same traffic into a second buffer? Bears on
 * gdn_recurrent_forward, which updates the state pool in place while the
 * FLA call it is compared with writes a new buffer (bench/RESULTS.md).
 * 2 GiB of f32, blocks of 128 threads that load PER 16-byte vectors each,
 * scale them, then store them; cudaMemcpy for reference. Median of 13. */
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "bench_util.h"

template <int PER> __global__ void __launch_bounds__(128) scale(const float4 *x, float4 *y, float a) {
    const size_t base = (size_t)blockIdx.x * 128 * PER + threadIdx.x;
    float4 v[PER];
#pragma unroll
    for (int i = 0; i < PER; i++) v[i] = x[base + i * 128];
#pragma unroll
    for (int i = 0; i < PER; i++) v[i].x *= a, v[i].y *= a, v[i].z *= a, v[i].w *= a;
#pragma unroll
    for (int i = 0; i < PER; i++) y[base + i * 128] = v[i];
}

int main() {
    const size_t bytes = 2ull << 30, n4 = bytes / 16;
    float4 *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 0, bytes));
    CK(cudaMemset(b, 0, bytes));
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
    return 0;
}

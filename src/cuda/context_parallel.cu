/* gdn_state_advance on CUDA: state_out = state_in . transition + partial
 * per (sequence, head) state, in f32. One block per 16 state rows of one
 * head: it reads those rows of state_in whole before writing any of them,
 * and no other block touches them, so state_out may be state_in. */
#include "cuda_common.cuh"

namespace gdn {
namespace {

constexpr int ROWS = 16;
constexpr int THREADS = 256;

__device__ __forceinline__ int64_t sidx(int kv, int V, int K, int v, int k) {
    return kv ? (int64_t)k * V + v : (int64_t)v * K + k;
}

__global__ void __launch_bounds__(THREADS)
state_advance_kernel(const float *in, const float *tr, const float *part, float *out, int V,
                     int K, int kv, int tiles) {
    extern __shared__ float rows[]; /* [ROWS][K] */
    const int64_t head = blockIdx.x / tiles;
    const int v0 = (int)(blockIdx.x % tiles) * ROWS;
    const int64_t soff = head * V * K;
    const float *T = tr + head * K * K;
    for (int i = threadIdx.x; i < ROWS * K; i += THREADS) {
        const int r = i / K, c = i % K;
        rows[i] = in && v0 + r < V ? in[soff + sidx(kv, V, K, v0 + r, c)] : 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < ROWS * K; i += THREADS) {
        const int r = i / K, c = i % K;
        if (v0 + r >= V) continue;
        const int64_t at = soff + sidx(kv, V, K, v0 + r, c);
        float acc = part[at];
        for (int j = 0; j < K; j++) acc = fmaf(rows[r * K + j], T[(int64_t)j * K + c], acc);
        out[at] = acc;
    }
}

} // namespace
} // namespace gdn

extern "C" gdn_status gdn_cuda_state_advance(gdn_context *ctx, const gdn_problem *p,
                                             const float *state_in, const float *transition,
                                             const float *partial, float *state_out) {
    using namespace gdn;
    DeviceGuard guard(ctx->device);
    const int64_t heads = gdn_problem_num_seqs(p) * p->Hv;
    const int tiles = (int)gdn_ceil_div(p->V, ROWS);
    if (heads * tiles > INT32_MAX)
        return gdn_fail(ctx, GDN_ERROR_INVALID_ARGUMENT,
                        "gdn_state_advance: N * Hv * ceil(V/16) (%lld) exceeds the grid limit",
                        (long long)(heads * tiles));
    if (heads == 0) return GDN_SUCCESS;
    const size_t bytes = (size_t)ROWS * p->K * sizeof(float);
    state_advance_kernel<<<(unsigned)(heads * tiles), THREADS, bytes, (cudaStream_t)ctx->stream>>>(
        state_in, transition, partial, state_out, (int)p->V, (int)p->K,
        p->state_layout == GDN_STATE_KV, tiles);
    GDN_CUDA_CHECK_LAUNCH(ctx, "state_advance_kernel");
    return GDN_SUCCESS;
}

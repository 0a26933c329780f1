// bench.cu: the physical limit. A streaming read and a copy over device buffers far larger than the L2, 16 bytes per
// thread per access and BW_UNROLL accesses in flight; what they count is what Measure-CalmBandwidth reports.
#include "common.cuh"

#define BW_UNROLL 4

// in [n] 16-byte vectors. Every word is folded into an xor per thread; each warp writes its xor to out[warp id]
// (gridDim.x * blockDim.x / 32 words) so the loads cannot be optimised away. Bytes moved: n * 16 read.
// UNR accesses in flight per thread (tools/probe/mv_chain.cu times other depths with it).
template <int UNR>
__device__ __forceinline__ void bw_read_impl(const calm_u4* in, long long n, u32* out) {
    long long stride = (long long)gridDim.x * blockDim.x;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (; i + (UNR - 1) * stride < n; i += UNR * stride) {
        calm_u4 v[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) v[u] = ldg_u4_stream(in + i + u * stride);
#pragma unroll
        for (int u = 0; u < UNR; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    for (; i < n; i += stride) { calm_u4 v = ldg_u4_stream(in + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) out[(blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5] = acc;
}
extern "C" __global__ void bw_read(const calm_u4* in, long long n, u32* out) { bw_read_impl<BW_UNROLL>(in, n, out); }

// out [n] = in [n] (16-byte vectors). Bytes moved: n * 16 read + n * 16 written.
extern "C" __global__ void bw_copy(const calm_u4* in, calm_u4* out, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    for (; i + (BW_UNROLL - 1) * stride < n; i += BW_UNROLL * stride) {
        calm_u4 v[BW_UNROLL];
#pragma unroll
        for (int u = 0; u < BW_UNROLL; u++) v[u] = ldg_u4_stream(in + i + u * stride);
#pragma unroll
        for (int u = 0; u < BW_UNROLL; u++) out[i + u * stride] = v[u];
    }
    for (; i < n; i += stride) out[i] = ldg_u4_stream(in + i);
}

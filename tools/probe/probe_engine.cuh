// probe_engine.cuh: device fills and the programmatic launch shared by the probes that include the engine's kernels
// (tools/probe/engine_chain.cu, att_trace.cu); include it after them (it uses u16 and f32_to_f16 of common.cuh).
#pragma once

// p[i] = uniform in [-scale, scale) as bf16 (bf) or fp16, from a hash of i and seed
__global__ void fill_u16(u16* p, long long n, float scale, u32 seed, int bf) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        float f = ((h & 0xffffff) / 16777216.f * 2.f - 1.f) * scale;
        p[i] = bf ? (u16)(__float_as_uint(f) >> 16) : f32_to_f16(f);
    }
}
// p[i] = uniform in [lo, hi)
__global__ void fill_f32v(float* p, long long n, float lo, float hi, u32 seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = lo + (hi - lo) * ((h & 0xffffff) / 16777216.f);
    }
}

// a kernel launch with programmatic dependent launch allowed (as CudaKernel.Launch with Programmatic set)
template <typename... A>
static void launch(const void* k, dim3 grid, int threads, cudaStream_t s, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid; cfg.blockDim = dim3(threads); cfg.stream = s;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = 1;
    void* pa[] = {(void*)&args...};
    CK(cudaLaunchKernelExC(&cfg, k, pa));
}

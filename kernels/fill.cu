// fill.cu: synthetic weights made on the GPU, element for element the same as the host generator.
// key = splitmix64((seed << 32) ^ fnv1a64(tensor name)) (computed on the host);
// u = splitmix64(key + i) >> 40 (24 bits); x = ((u + 0.5) / 2^24) * 2 - 1 in (-1, 1); value = x * scale + offset (f32),
// then rounded to the dtype (bf16 / f16 round-to-nearest-even).
#include "common.cuh"
#include "fp8.cuh"

__device__ __forceinline__ u64 splitmix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float synthetic_value(u64 key, long long i, float scale, float offset) {
    u64 u = splitmix64(key + (u64)i) >> 40;
    float x = (float)(((double)u + 0.5) / 16777216.0 * 2.0 - 1.0);
    return __fadd_rn(__fmul_rn(x, scale), offset);  // no fma contraction: same rounding as the host
}

// out [count] of dtype (CALM_F32/F16/BF16). asF32 != 0: round to dtype, then store as f32 (norm/bias vectors the
// backend keeps in f32).
extern "C" __global__ void fill_synthetic(void* out, long long count, u64 key, float scale, float offset, int dtype, int asF32) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
        float v = synthetic_value(key, i, scale, offset);
        if (dtype == CALM_BF16) {
            u16 h = f32_to_bf16(v);
            if (asF32) ((float*)out)[i] = bf16_to_f32(h); else ((u16*)out)[i] = h;
        } else if (dtype == CALM_F16) {
            u16 h = f32_to_f16(v);
            if (asF32) ((float*)out)[i] = f16_to_f32(h); else ((u16*)out)[i] = h;
        } else {
            ((float*)out)[i] = v;
        }
    }
}

// out [count] e4m3 bytes = e4m3(x * 448) of the synthetic x in (-1, 1) (benchmarks' fp8 KV cache fill; with row
// scales 1/448 the cache then reads values in (-1, 1), as the fp16 fill does).
extern "C" __global__ void fill_kv_fp8(unsigned char* out, long long count, u64 key) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
        out[i] = (unsigned char)f32_to_e4m3(synthetic_value(key, i, CALM_E4M3_MAX, 0.f));
}

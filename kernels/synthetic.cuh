// synthetic.cuh: the synthetic weight generator (SyntheticWeights on the host), shared by fill.cu (weights at their
// dtype) and quantize.cu (weights quantized to fp8/int4 as they are made).
// key = splitmix64((seed << 32) ^ fnv1a64(tensor name)) (computed on the host);
// u = splitmix64(key + i) >> 40 (24 bits); x = ((u + 0.5) / 2^24) * 2 - 1 in (-1, 1); value = x * scale + offset (f32),
// then rounded to the dtype (bf16 / f16 round-to-nearest-even).
#pragma once
#include "common.cuh"

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

// the value rounded to dtype (CALM_F32/F16/BF16) and widened back to f32 (what the host quantizer reads)
__device__ __forceinline__ float synthetic_value_as(u64 key, long long i, float scale, float offset, int dtype) {
    float v = synthetic_value(key, i, scale, offset);
    if (dtype == CALM_BF16) return bf16_to_f32(f32_to_bf16(v));
    if (dtype == CALM_F16) return f16_to_f32(f32_to_f16(v));
    return v;
}

// fill.cu: synthetic weights made on the GPU, element for element the same as the host generator.
// key = splitmix64((seed << 32) ^ fnv1a64(tensor name)) (computed on the host);
// u = splitmix64(key + i) >> 40 (24 bits); x = ((u + 0.5) / 2^24) * 2 - 1 in (-1, 1); value = x * scale + offset (f32),
// then rounded to the dtype (bf16 / f16 round-to-nearest-even).
#include "synthetic.cuh"   // splitmix64, synthetic_value
#include "fp8.cuh"

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

// fp8.cuh: OCP e4m3 ("FN": __nv_fp8_e4m3, torch.float8_e4m3fn) conversions shared by the quantized matvecs
// (matvec_quant.cu) and the fp8 KV cache (norm_rope.cu, attention*.cu, prefill_attention.cu).
// e4m3 byte = S.EEEE.MMM, bias 7, largest finite 0x7E = 448, NaN 0x7F/0xFF, no infinities.
#pragma once
#include "common.cuh"

// The hardware conversions (cvt.rn.f16x2.e4m3x2, cvt.rn.satfinite.e4m3x2.f32) exist from sm_89 and PTX ISA 7.8
// (CUDA 11.8). CALM_FP8_CVT selects them; NVRTC defines __CUDACC_VER_MAJOR__/__CUDACC_VER_MINOR__, so a compiler
// that predates PTX 7.8 gets the exact bit fallbacks, as does every architecture below sm_89. The C# side may force
// either path with -DCALM_FP8_CVT=0|1.
#ifndef CALM_FP8_CVT
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 8))
#define CALM_FP8_CVT 1
#else
#define CALM_FP8_CVT 0
#endif
#endif

#define CALM_E4M3_MAX 448.f

// Two e4m3 bytes (low byte = first element) -> f16x2 (low half = first element), exact (e4m3 is a subset of f16).
// Fallback: with the byte in the top of a 16-bit half, S.EEEE.MMM is shifted right by one under the sign, which is the
// f16 S.0EEEE.MMM0000000 = value * 2^-8 (exponent bias 7 vs 15; subnormals land on f16 subnormals exactly), then
// scaled by 2^8 with an exact f16x2 multiply. NaN codes S.1111.111 are forced to an f16 NaN.
__device__ __forceinline__ u32 e4m3x2_to_f16x2(u32 two /* bytes in bits 0..15 */) {
#if CALM_FP8_CVT
    u32 r;
    u16 a = (u16)two;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(a));
    return r;
#else
    u32 t = __byte_perm(two, 0u, 0x1404);                        // [0, b0, 0, b1]: each byte in the top of its half
    u32 h = (t & 0x80008000u) | ((t >> 1) & 0x3F803F80u);        // f16 bits of value * 2^-8
    u32 r;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(0x5C005C00u));  // * 256 (f16 0x5C00), exact
    u32 nan = __vcmpeq2(t & 0x7F007F00u, 0x7F007F00u);          // 0xFFFF in each half holding a NaN code
    return r | (nan & 0x7E007E00u);
#endif
}

// one e4m3 byte -> f32 (exact)
__device__ __forceinline__ float e4m3_to_f32(u32 b) {
    u32 mag = b & 0x7Fu;
    if (mag == 0x7Fu) return __int_as_float(0x7FC00000);
    float f = __uint_as_float(mag << 20) * 1.329227995784916e36f;  // * 2^120: rebias 7 -> 127 (subnormals exact)
    return (b & 0x80u) ? -f : f;
}

// four e4m3 bytes of a word (element order: low byte first) -> f32
__device__ __forceinline__ void e4m3x4_to_f32(u32 w, float& a, float& b, float& c, float& d) {
    unpack2<CALM_F16>(e4m3x2_to_f16x2(w & 0xffffu), a, b);
    unpack2<CALM_F16>(e4m3x2_to_f16x2(w >> 16), c, d);
}

// four e4m3 bytes of a word -> two f16x2 words: lo = bytes 0, 1 (byte 0 in the low half), hi = bytes 2, 3 (exact)
__device__ __forceinline__ void e4m3x4_to_f16x2x2(u32 w, u32& lo, u32& hi) {
#if CALM_FP8_CVT
    asm("{ .reg .b16 a, b; mov.b32 {a, b}, %2; cvt.rn.f16x2.e4m3x2 %0, a; cvt.rn.f16x2.e4m3x2 %1, b; }"
        : "=r"(lo), "=r"(hi) : "r"(w));
#else
    lo = e4m3x2_to_f16x2(w & 0xffffu);
    hi = e4m3x2_to_f16x2(w >> 16);
#endif
}

// f32 -> e4m3 byte: round to nearest even, saturating to ±448 (also ±inf), NaN -> 0x7F. The bit fallback is
// Calm.Engine.Quant.QuantFormats.FloatToE4M3 line for line (so the GPU and the CPU reference agree bit for bit).
__device__ __forceinline__ u32 f32_to_e4m3(float x) {
#if CALM_FP8_CVT
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.f), "f"(x));   // second source -> low byte
    return (u32)(r & 0xffu);
#else
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7Fu;
    u32 sign = (bits >> 24) & 0x80u;
    float a = fabsf(x);
    if (a >= 464.f) return sign | 0x7Eu;
    if (a < 0.015625f) {                                  // 2^-6: subnormal multiples of 2^-9
        float n = rintf(a * 512.f);                      // round half to even, exact product
        return sign | (u32)n;
    }
    u32 ab = bits & 0x7fffffffu;
    u32 lsb = (ab >> 20) & 1u;
    ab += 0x7FFFFu + lsb;
    ab &= 0xFFF00000u;
    int e = (int)(ab >> 23) - 127 + 7;
    u32 man = (ab >> 20) & 7u;
    if (e > 15 || (e == 15 && man == 7u)) return sign | 0x7Eu;
    return sign | ((u32)e << 3) | man;
#endif
}

// The scale of one KV cache row of n values whose largest magnitude is amax: amax / 448 (0 for an all-zero row,
// whose bytes are then all 0). Quantized value: e4m3(x / scale); dequantized: e4m3 * scale.
__device__ __forceinline__ float kv_fp8_scale(float amax) { return __fdiv_rn(amax, CALM_E4M3_MAX); }
__device__ __forceinline__ u32 kv_fp8_quant(float x, float scale) { return scale > 0.f ? f32_to_e4m3(__fdiv_rn(x, scale)) : 0u; }

// ---- fp8 KV cache --------------------------------------------------------------------------------------------------
// KV cache element types (template parameter KVT of the attention kernels; codes shared with CudaKernels.KvCode):
// CALM_KV_F16: caches [K, maxCtx, Hd] fp16. CALM_KV_FP8: caches [K, maxCtx, Hd] e4m3 bytes plus one f32 scale per
// row, scales [K, maxCtx] (per layer), for K and V each.
#define CALM_KV_F16 0
#define CALM_KV_FP8 1

// max over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_max(float v) {
    __shared__ float s_pmax[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) s_pmax[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? s_pmax[lane] : 0.f;
    return warp_max(r);
}

// Writes one cache row: this thread's values outv[t] (element d = threadIdx.x + t*blockDim.x, d < Hd) at row
// (kh, pos) of a [K, maxCtx, Hd] cache; fp8 also writes the row scale at scales[kh * maxCtx + pos]. Every thread of
// the block must call it (fp8 reduces the row's amax over the block).
template <int KVT, int NT>
__device__ __forceinline__ void kv_write_row(void* cache, float* scales, const float (&outv)[NT], int kh, int pos, int maxCtx, int Hd) {
    long long row = (long long)kh * maxCtx + pos;
    if (KVT == CALM_KV_FP8) {
        float am = 0.f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int d = threadIdx.x + t * blockDim.x;
            if (d < Hd) am = fmaxf(am, fabsf(outv[t]));
        }
        am = block_max(am);
        float sc = kv_fp8_scale(am);
        unsigned char* c = (unsigned char*)cache + row * Hd;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int d = threadIdx.x + t * blockDim.x;
            if (d < Hd) c[d] = (unsigned char)kv_fp8_quant(outv[t], sc);
        }
        if (threadIdx.x == 0) scales[row] = sc;
    } else {
        u16* c = (u16*)cache + row * Hd;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            int d = threadIdx.x + t * blockDim.x;
            if (d < Hd) c[d] = f32_to_f16(outv[t]);
        }
    }
}

// quant.cuh: fp8 (e4m3) and int4 dot-product helpers shared by the quantized matvec (matvec_quant.cu) and the
// persistent decode kernel (decode_persistent.cu). Layouts: src/Calm.Engine/Quant/QuantFormats.cs.
#pragma once
#include "common.cuh"

// ---- e4m3 -> f16x2 ---------------------------------------------------------------------------------------------
// The hardware conversion (cvt.rn.f16x2.e4m3x2) exists from sm_89 and PTX ISA 7.8 (CUDA 11.8). CALM_FP8_CVT selects
// it; NVRTC defines __CUDACC_VER_MAJOR__/__CUDACC_VER_MINOR__, so a compiler that predates PTX 7.8 gets the bit
// fallback, as does every architecture below sm_89. The C# side may force either path with -DCALM_FP8_CVT=0|1.
#ifndef CALM_FP8_CVT
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890 && defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 8))
#define CALM_FP8_CVT 1
#else
#define CALM_FP8_CVT 0
#endif
#endif

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

// one e4m3 byte -> f32 (the byte-wise path for rows that are not 16-byte aligned)
__device__ __forceinline__ float e4m3_to_f32(u32 b) {
    u32 mag = b & 0x7Fu;
    if (mag == 0x7Fu) return __int_as_float(0x7FC00000);
    float f = __uint_as_float(mag << 20) * 1.329227995784916e36f;  // * 2^120: rebias 7 -> 127 (subnormals exact)
    return (b & 0x80u) ? -f : f;
}

// 16 e4m3 weights (one 16-byte vector) . 16 fp32 inputs held in registers (xs[0..3], element order)
__device__ __forceinline__ float dot16_fp8(const calm_u4 w, const calm_f4* xs) {
    const u32 words[4] = { w.x, w.y, w.z, w.w };
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float w0, w1, w2, w3;
        unpack2<CALM_F16>(e4m3x2_to_f16x2(words[k] & 0xffffu), w0, w1);
        unpack2<CALM_F16>(e4m3x2_to_f16x2(words[k] >> 16), w2, w3);
        s = fmaf(w0, xs[k].x, s); s = fmaf(w1, xs[k].y, s); s = fmaf(w2, xs[k].z, s); s = fmaf(w3, xs[k].w, s);
    }
    return s;
}

// ---- int4 ------------------------------------------------------------------------------------------------------
// The float with bits 0x4B0000uu is exactly 2^23 + uu, so (that) - (2^23 + 8) = u - 8 with no int->float conversion;
// prmt builds it in one instruction: byte 0 from the packed word, bytes 1..3 from 0x4B000000.
#define MQ_MAGIC 0x4B000000u
#define MQ_MAGIC_BIAS 8388616.f
__device__ __forceinline__ float nib_byte(u32 w, u32 sel) { return __uint_as_float(__byte_perm(w, MQ_MAGIC, sel)) - MQ_MAGIC_BIAS; }

// Four packed bytes (8 weights in element order b0.lo, b0.hi, b1.lo, ...) . 8 fp32 inputs (a, b), unscaled.
__device__ __forceinline__ float dot8_int4(u32 w, calm_f4 a, calm_f4 b) {
    u32 lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
    float s = nib_byte(lo, 0x7540) * a.x;
    s = fmaf(nib_byte(hi, 0x7540), a.y, s);
    s = fmaf(nib_byte(lo, 0x7541), a.z, s);
    s = fmaf(nib_byte(hi, 0x7541), a.w, s);
    s = fmaf(nib_byte(lo, 0x7542), b.x, s);
    s = fmaf(nib_byte(hi, 0x7542), b.y, s);
    s = fmaf(nib_byte(lo, 0x7543), b.z, s);
    s = fmaf(nib_byte(hi, 0x7543), b.w, s);
    return s;
}


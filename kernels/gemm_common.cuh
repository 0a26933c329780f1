// gemm_common.cuh: device helpers of the tensor-core GEMMs (gemm.cu: mma.sync; gemm_wgmma.cu: wgmma on sm_90a):
// shared-memory addresses, cp.async, ldmatrix, bf16 -> f16 pairs, the f32 -> f16/bf16 store rule.
#pragma once
#include "common.cuh"

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void g_cp16(u32 dst, const void* src, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes) : "memory");
#endif
}
// 4 bytes (src 4-byte aligned) through L1; bytes 0 zero-fills
__device__ __forceinline__ void g_cp4(u32 dst, const void* src, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(dst), "l"(src), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void g_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void g_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
#endif
}
__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
#endif
}

// two bf16 (low = first) -> two f16 in the same places
__device__ __forceinline__ u32 bf16x2_to_f16x2(u32 w) {
    return (u32)f32_to_f16(__int_as_float(w << 16)) | ((u32)f32_to_f16(__int_as_float(w & 0xffff0000u)) << 16);
}
// the same with one cvt.rn.f16x2.f32 per pair (sm_80+; d = {hi: first operand, lo: second})
__device__ __forceinline__ u32 bf16x2_to_f16x2_v2(u32 w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(__int_as_float(w & 0xffff0000u)), "f"(__int_as_float(w << 16)));
    return r;
#else
    return bf16x2_to_f16x2(w);
#endif
}

struct __align__(8) gemm_f2 { float x, y; };

// f16 saturates at +-65504 instead of overflowing to inf (NaN stays NaN)
__device__ __forceinline__ u16 to_half(float v, int dt) {
    if (dt == CALM_BF16) return f32_to_bf16(v);
    if (fabsf(v) > 65504.f) v = copysignf(65504.f, v);
    return f32_to_f16(v);
}

// act(g) * u rounded to odt (the gated GEMM epilogues), out of line: inlined into the unrolled epilogue (three
// activations x tens of outputs per thread) it made the whole kernel slower -- wgmma gate_up + act at T=512 on the H200
// 0.509 ms inlined vs 0.319 ms out of line (128 x 256 tiles; no spills either way), mma.sync variant 4 likewise
__device__ __noinline__ u16 gemm_act_mul(float g, float u, int act, int odt) { return to_half(activate(g, act) * u, odt); }

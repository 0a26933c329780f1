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

// The epilogue stores of one accumulator pair (columns col, col + 1 of a row; the mma.sync and wgmma C layouts both
// give a lane two adjacent columns). Y f32: (+ bias) (+ Y when accumulate), one 8-byte store where the pair is whole
// (pairs: N even and Y 8-byte aligned), else per column inside N.
__device__ __forceinline__ void gemm_store2(float* Y, const float* bias, int N, int row, int col, float v0, float v1, int accumulate, bool pairs) {
    float* y = Y + (long long)row * N + col;
    if (pairs && col + 1 < N) {
        if (bias) { v0 += bias[col]; v1 += bias[col + 1]; }
        if (accumulate) { gemm_f2 o = *(gemm_f2*)y; v0 += o.x; v1 += o.y; }
        gemm_f2 r; r.x = v0; r.y = v1;
        *(gemm_f2*)y = r;
        return;
    }
    if (col < N) { if (bias) v0 += bias[col]; if (accumulate) v0 += y[0]; y[0] = v0; }
    if (col + 1 < N) { if (bias) v1 += bias[col + 1]; if (accumulate) v1 += y[1]; y[1] = v1; }
}
// Gated: H [T, F] (odt) columns f, f + 1 = act(gate + bias) * (up + bias) (bias [2F] or null), one 4-byte store where
// the pair is whole
__device__ __forceinline__ void gemm_store_gated2(u16* Hout, const float* bias, int F, int row, int f, float g0, float g1, float u0, float u1, int act, int odt) {
    float gv[2] = { g0, g1 }, uv[2] = { u0, u1 };
    u16 o[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {
        if (bias && f + e < F) { gv[e] += bias[f + e]; uv[e] += bias[F + f + e]; }
        o[e] = gemm_act_mul(gv[e], uv[e], act, odt);
    }
    u16* hp = Hout + (long long)row * F + f;
    if ((F & 1) == 0 && f + 1 < F && ((u64)Hout & 3) == 0) { *(u32*)hp = (u32)o[0] | ((u32)o[1] << 16); return; }
    if (f < F) hp[0] = o[0];
    if (f + 1 < F) hp[1] = o[1];
}

// A tile of the 128-row GEMMs (gemm.cu variant 4, gemm_wgmma.cu): rows m0 .. m0+127 of X [T, K] f16, columns k0 ..
// k0+63, as 128-byte rows with 16-byte chunk c of row r at c ^ (r & 7); thread t copies chunk t&7 of rows (t>>3) + 32 i
// (256 threads); rows past T and chunks past K are zero-filled
__device__ __forceinline__ void gemm_load_a128(u32 sA, const u16* X, int T, int K, int m0, int k0) {
    const int rr = threadIdx.x >> 3, cc = threadIdx.x & 7;
    const u32 sw = (u32)((cc ^ (rr & 7)) << 4);
    const int k = k0 + cc * 8;
    const bool kok = k < K;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int row = m0 + rr + 32 * i;
        bool ok = kok && row < T;
        g_cp16(sA + (u32)((rr + 32 * i) * 128) + sw, X + (ok ? (long long)row * K + k : 0), ok ? 16 : 0);
    }
}

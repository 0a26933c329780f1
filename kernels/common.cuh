// common.cuh: shared by every kernels/*.cu. Self-contained: no CUDA toolkit headers (NVRTC compiles these with no
// include path). Number formats, 16-byte vector loads, warp/block reductions.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// dtype codes shared with the C# launchers (CudaKernels.DTypeCode).
#define CALM_F32 0
#define CALM_F16 1
#define CALM_BF16 2

// 16 bytes: 8 half-precision values; alignas so the compiler emits one 128-bit load.
struct __align__(16) calm_u4 { u32 x, y, z, w; };
struct __align__(16) calm_f4 { float x, y, z, w; };

// ---- number formats --------------------------------------------------------------------------------------------
__device__ __forceinline__ float bf16_to_f32(u16 h) { return __int_as_float(((u32)h) << 16); }

// round-to-nearest-even; NaN stays NaN (quiet)
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// a 32-bit word holding two 16-bit values (low = first element)
template <int DT> __device__ __forceinline__ void unpack2(u32 w, float& a, float& b);
template <> __device__ __forceinline__ void unpack2<CALM_BF16>(u32 w, float& a, float& b) {
    a = __int_as_float(w << 16);
    b = __int_as_float(w & 0xffff0000u);
}
template <> __device__ __forceinline__ void unpack2<CALM_F16>(u32 w, float& a, float& b) {
    a = f16_to_f32((u16)(w & 0xffffu));
    b = f16_to_f32((u16)(w >> 16));
}

template <int DT> __device__ __forceinline__ float load_elem(const u16* p, long long i);
template <> __device__ __forceinline__ float load_elem<CALM_BF16>(const u16* p, long long i) { return bf16_to_f32(p[i]); }
template <> __device__ __forceinline__ float load_elem<CALM_F16>(const u16* p, long long i) { return f16_to_f32(p[i]); }

// cp.async groups (sm_80+; no-ops below, where the copies themselves are plain loads or absent): close the group of
// this thread's copies issued so far; wait until at most N groups are still in flight
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

// 16-byte read-only load through the non-coherent cache
__device__ __forceinline__ calm_u4 ldg_u4(const void* p) {
    calm_u4 r;
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// 16-byte streaming load for weights that are read once per step (evict-first)
__device__ __forceinline__ calm_u4 ldg_u4_stream(const void* p) {
    calm_u4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// The same loads with the L2 prefetch-size hint (.L2::256B, sm_80+): a load that misses L2 has the whole aligned 256
// bytes around it fetched from DRAM, so the rest of them, which other instructions of the warp or block read soon after,
// hit L2. For the fragment layouts of the tensor-core matvecs and attention, where one load instruction covers 8 rows x
// 64 bytes (half a 128-byte line of each), a streaming read ran at 2.7-2.9 TB/s without the hint and 3.4-4.0 with it
// on the H200 (tools/probe/stream_modes.cu "prefetch"; 4.3-4.5 when each instruction reads whole lines; bench/RESULTS.md,
// fourteenth session). CALM_L2_256=0 (KernelCompiler: -DCALM_L2_256=0) compiles them as the plain loads.
#ifndef CALM_L2_256
#define CALM_L2_256 1
#endif
#if CALM_L2_256 && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define CALM_L2_HINT ".L2::256B"
#else
#define CALM_L2_HINT ""
#endif
__device__ __forceinline__ calm_u4 ldg_u4_stream_l2(const void* p) {
    calm_u4 r;
    asm volatile("ld.global.nc.L1::no_allocate" CALM_L2_HINT ".v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ calm_u4 ldg_u4_l2(const void* p) {
    calm_u4 r;
    asm volatile("ld.global.nc" CALM_L2_HINT ".v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ u32 ldg_u32_l2(const void* p) {
    u32 r;
    asm volatile("ld.global.nc" CALM_L2_HINT ".u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}

#define CALM_INF __int_as_float(0x7f800000)

// ---- programmatic dependent launch (sm_90+; no-ops below, and when launched without the attribute) ---------------
// pdl_wait: blocks until the previous kernel on the stream has finished and its writes are visible; a kernel
// launched as Programmatic must call it before touching anything earlier kernels read or write.
// pdl_trigger: lets the next kernel launch now (its blocks start and wait in pdl_wait, or prefetch weights).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#define PDL_ENTER() do { pdl_wait(); pdl_trigger(); } while (0)

// L2 prefetch of the 128-byte line holding p (a hint: no register, nothing to wait for)
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p)); }
// L2 prefetch of [p, p + bytes), the warp's lanes taking 128-byte lines in turn
__device__ __forceinline__ void prefetch_l2_warp(const void* p, long long bytes, int lane) {
    const char* c = (const char*)p;
    for (long long off = (long long)lane * 128; off < bytes; off += 32 * 128) prefetch_l2(c + off);
}

// ---- tensor cores (sm_80+; no-ops below) ---------------------------------------------------------------------------
// c[4] += a[4] (16 x 16) . (b0, b1) (16 x 8): mma.sync m16n8k16, f16 operands, fp32 accumulators
__device__ __forceinline__ void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
// (a, b) -> f16x2 {low: a, high: b}, round to nearest
__device__ __forceinline__ u32 pack_f16x2(float a, float b) {
    u32 r;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));   // first source -> upper half
#else
    r = (u32)f32_to_f16(a) | ((u32)f32_to_f16(b) << 16);
#endif
    return r;
}
// (a, b) as two f16 parts: hi = f16x2(a, b), lo = f16x2(a - hi.a, b - hi.b) (the differences are exact in f32), so
// hi + lo carries ~22 significant bits; |a|, |b| < 65504 (beyond, hi is inf)
__device__ __forceinline__ void split_f16x2(float a, float b, u32& hi, u32& lo) {
    hi = pack_f16x2(a, b);
    float ha, hb;
    unpack2<CALM_F16>(hi, ha, hb);
    lo = pack_f16x2(a - ha, b - hb);
}

// ---- reductions --------------------------------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float s_part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // s_part may still be read by a previous call
    if (lane == 0) s_part[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? s_part[lane] : 0.f;
    return warp_sum(r);
}

// ---- RMSNorm folded into the kernels around it (CudaKernels.FoldNorm) ----------------------------------------------
// The kernel that writes the residual x (embed, the accumulating o / down matvecs) also writes xg = x * (g or 1 + g)
// and one partial sum of x^2 per block (ssOut[blockIdx.x], the block's values added in a fixed order); the next
// matvec reads xg as its input and multiplies each row's dot product by r = rsqrt(sum of the nIn partials / n + eps),
// which every block computes the same way: W (x r g) = r W (x g), and no rmsnorm kernel between them.

// an RMSNorm weight as applied: g, or 1 + g (gemma's addOne)
__device__ __forceinline__ float gain(float g, int addOne) { return addOne ? g + 1.f : g; }
// producer: v = this thread's x^2 (0 if none); block-wide (every thread of the block calls it)
__device__ __forceinline__ void fold_partial(float v, float* ssOut) {
    v = block_sum(v);
    if (threadIdx.x == 0) ssOut[blockIdx.x] = v;
}
// consumer: r of the norm over n elements from the producer's nIn partials; block-wide, after pdl_wait
__device__ __forceinline__ float fold_scale(const float* ssIn, int nIn, int n, float eps) {
    float t = 0.f;
    for (int i = threadIdx.x; i < nIn; i += blockDim.x) t += ssIn[i];
    t = block_sum(t);
    return rsqrtf(t / (float)n + eps);
}
// the same r worked out by one warp alone (no block barrier: the quantized tensor-core consumers, matvec_quant.cu);
// every warp adds the partials in the same order, so all agree
__device__ __forceinline__ float fold_scale_warp(const float* ssIn, int nIn, int n, float eps) {
    float t = 0.f;
    for (int i = threadIdx.x & 31; i < nIn; i += 32) t += ssIn[i];
    t = warp_sum(t);
    return rsqrtf(t / (float)n + eps);
}

// (value, index) argmax across a warp; ties -> lower index. NaN never wins over a number.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

// ---- activations -------------------------------------------------------------------------------------------------
#define CALM_ACT_SILU 0
#define CALM_ACT_GELU_TANH 1
#define CALM_ACT_GELU 2

__device__ __forceinline__ float activate(float x, int act) {
    if (act == CALM_ACT_SILU) return x / (1.f + expf(-x));
    if (act == CALM_ACT_GELU_TANH) {
        float inner = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        return 0.5f * x * (1.f + tanhf(inner));
    }
    return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
}

// ---- step parameters read by every kernel of the captured decode graph ------------------------------------------
// The host writes these before each graph launch; kernels read them from device memory so the graph never changes.
struct StepParams {
    int token;   // token id at this step
    int pos;     // its position (0-based)
};

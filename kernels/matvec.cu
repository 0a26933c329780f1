// matvec.cu: y = W x for half-precision weights, fp32 input/accumulation/output.
// One warp per output row: lanes read the row 16 bytes (8 elements) at a time, MV_UNROLL loads in flight per lane,
// the partial sums meet in a warp reduction. W rows must be 16-byte aligned when cols % 8 == 0 (every allocation is).
#include "common.cuh"

#define MV_UNROLL 4

// NORM: the norm is fused into this matvec, x times its RMSNorm weight (gain, common.cuh); the 1/rms scale is applied
// to the row's sum at the end, as W (x * r * g) = r * W (x * g)

// 8 weights (one 16-byte vector) . 8 fp32 inputs (times 8 norm weights when NORM)
template <int DT, bool NORM>
__device__ __forceinline__ float dot8(const calm_u4 w, const float* x, const float* nw, int addOne) {
    calm_f4 a = *(const calm_f4*)x;
    calm_f4 b = *(const calm_f4*)(x + 4);
    if (NORM) {
        calm_f4 ga = *(const calm_f4*)nw, gb = *(const calm_f4*)(nw + 4);
        a.x *= gain(ga.x, addOne); a.y *= gain(ga.y, addOne); a.z *= gain(ga.z, addOne); a.w *= gain(ga.w, addOne);
        b.x *= gain(gb.x, addOne); b.y *= gain(gb.y, addOne); b.z *= gain(gb.z, addOne); b.w *= gain(gb.w, addOne);
    }
    float w0, w1, w2, w3, w4, w5, w6, w7;
    unpack2<DT>(w.x, w0, w1);
    unpack2<DT>(w.y, w2, w3);
    unpack2<DT>(w.z, w4, w5);
    unpack2<DT>(w.w, w6, w7);
    float s = w0 * a.x;
    s = fmaf(w1, a.y, s); s = fmaf(w2, a.z, s); s = fmaf(w3, a.w, s);
    s = fmaf(w4, b.x, s); s = fmaf(w5, b.y, s); s = fmaf(w6, b.z, s); s = fmaf(w7, b.w, s);
    return s;
}

// acc += the dot products of UNR 16-byte vectors of a row (lane's vectors v, v + 32, ...) with x. wait: pdl_wait()
// between the loads and the products (the weights do not depend on earlier kernels, x does: "early" loads).
template <int DT, int UNR, bool NORM>
__device__ __forceinline__ void row_batch(const calm_u4* rv, int v, const float* x, const float* nw, int addOne, float& acc, bool wait) {
    calm_u4 w[UNR];
#pragma unroll
    for (int u = 0; u < UNR; u++) w[u] = ldg_u4_stream(rv + v + 32 * u);
    if (wait) pdl_wait();
#pragma unroll
    for (int u = 0; u < UNR; u++) acc += dot8<DT, NORM>(w[u], x + (long long)(v + 32 * u) * 8, nw + (long long)(v + 32 * u) * 8, addOne);
}

// dot(row[0..cols), x) summed over the warp; every lane returns the total.
// early: the caller has not waited for the previous kernel (pdl_wait); the first batch of loads is issued before it.
template <int DT, int UNR, bool NORM>
__device__ __forceinline__ float row_dot(const u16* row, const float* x, const float* nw, int addOne, int cols, int lane, bool early = false) {
    float acc = 0.f;
    if ((cols & 7) == 0) {
        const calm_u4* rv = (const calm_u4*)row;
        int nvec = cols >> 3;
        int v = lane;
        if (early) {
            if (v + 32 * (UNR - 1) < nvec) { row_batch<DT, UNR, NORM>(rv, v, x, nw, addOne, acc, true); v += 32 * UNR; }
            else pdl_wait();
        }
        for (; v + 32 * (UNR - 1) < nvec; v += 32 * UNR) row_batch<DT, UNR, NORM>(rv, v, x, nw, addOne, acc, false);
        for (; v < nvec; v += 32) acc += dot8<DT, NORM>(ldg_u4_stream(rv + v), x + (long long)v * 8, nw + (long long)v * 8, addOne);
    } else {
        if (early) pdl_wait();
        for (int c = lane; c < cols; c += 32) acc = fmaf(load_elem<DT>(row, c), NORM ? x[c] * gain(nw[c], addOne) : x[c], acc);
    }
    return warp_sum(acc);
}

// f32 weights (fixtures saved in float32): rows read 16 bytes (4 floats) at a time.
template <bool NORM>
__device__ __forceinline__ float row_dot_f32(const float* row, const float* x, const float* nw, int addOne, int cols, int lane, bool early = false) {
    if (early) pdl_wait();
    float acc = 0.f;
    if ((cols & 3) == 0) {
        const calm_u4* rv = (const calm_u4*)row;
        int nvec = cols >> 2;
        for (int v = lane; v < nvec; v += 32) {
            calm_u4 w = ldg_u4_stream(rv + v);
            calm_f4 a = *(const calm_f4*)(x + (long long)v * 4);
            if (NORM) {
                calm_f4 g = *(const calm_f4*)(nw + (long long)v * 4);
                a.x *= gain(g.x, addOne); a.y *= gain(g.y, addOne); a.z *= gain(g.z, addOne); a.w *= gain(g.w, addOne);
            }
            acc = fmaf(__uint_as_float(w.x), a.x, acc); acc = fmaf(__uint_as_float(w.y), a.y, acc);
            acc = fmaf(__uint_as_float(w.z), a.z, acc); acc = fmaf(__uint_as_float(w.w), a.w, acc);
        }
    } else {
        for (int c = lane; c < cols; c += 32) acc = fmaf(row[c], NORM ? x[c] * gain(nw[c], addOne) : x[c], acc);
    }
    return warp_sum(acc);
}

// element type of a weight dtype code
template <int DT> struct WeightT { typedef u16 T; };
template <> struct WeightT<CALM_F32> { typedef float T; };

template <int DT, int UNR, bool NORM> struct RowDot {
    static __device__ __forceinline__ float run(const u16* row, const float* x, const float* nw, int addOne, int cols, int lane, bool early) {
        return row_dot<DT, UNR, NORM>(row, x, nw, addOne, cols, lane, early);
    }
};
template <int UNR, bool NORM> struct RowDot<CALM_F32, UNR, NORM> {
    static __device__ __forceinline__ float run(const float* row, const float* x, const float* nw, int addOne, int cols, int lane, bool early) {
        return row_dot_f32<NORM>(row, x, nw, addOne, cols, lane, early);
    }
};

// W [rows, cols] (DT), x [cols] f32, y [rows] f32, bias [rows] f32 or null.
// y[r] = W[r,:] . x (+ bias[r]) (+ y[r] when accumulate != 0: fused residual add).
// early (not with NORM): each warp issues its row's first loads before pdl_wait (CudaKernels.MatvecEarly), so with
// programmatic launch the weights stream while the previous kernel finishes.
// Folded RMSNorm (common.cuh; not with NORM): ssIn (consumer: x is xg, each row's sum times r of the nIn partials, eps)
// or ssOut (producer: y is the residual; also xg [rows] = y * (fg or 1 + fg) and the block's partial sum of y^2).
template <int DT, int UNR = MV_UNROLL, bool NORM = false>
__device__ __forceinline__ void matvec_impl(const typename WeightT<DT>::T* W, const float* x, float* y, const float* bias, int rows, int cols, int accumulate,
                                            int prefetch, const float* nw = 0, float eps = 0.f, int addOne = 0, int early = 0,
                                            const float* fg = 0, float* xg = 0, float* ssOut = 0, const float* ssIn = 0, int nIn = 0) {
    int row = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    // the weights do not depend on earlier kernels: start pulling this warp's row into L2 before waiting for them
    // (with programmatic launch this overlaps the previous kernel; x and y are touched only after pdl_wait)
    if (row < rows && prefetch > 0) {
        long long rowBytes = (long long)cols * sizeof(typename WeightT<DT>::T);
        prefetch_l2_warp(W + (long long)row * cols, rowBytes < prefetch ? rowBytes : prefetch, lane);
    }
    pdl_trigger();
    const bool eu = early && !NORM;
    if (!eu) pdl_wait();
    if (!NORM && !ssIn && !ssOut && row >= rows) return;   // the norms' steps are block-wide
    float s = row < rows ? RowDot<DT, UNR, NORM>::run(W + (long long)row * cols, x, nw, addOne, cols, lane, eu) : 0.f;
    if (NORM) {
        // 1/rms of x for the whole block (x was just read through L1 by the dot products); every thread takes part
        float ss = 0.f;
        if ((cols & 3) == 0)
            for (int v = threadIdx.x; v < (cols >> 2); v += blockDim.x) {
                calm_f4 a = *(const calm_f4*)(x + (long long)v * 4);
                ss = fmaf(a.x, a.x, ss); ss = fmaf(a.y, a.y, ss); ss = fmaf(a.z, a.z, ss); ss = fmaf(a.w, a.w, ss);
            }
        else
            for (int c = threadIdx.x; c < cols; c += blockDim.x) ss = fmaf(x[c], x[c], ss);
        ss = block_sum(ss);
        if (row >= rows) return;
        s *= rsqrtf(ss / (float)cols + eps);
    }
    if (!NORM && ssIn) {
        pdl_wait();   // warps without a row have not waited yet (early loads)
        s *= fold_scale(ssIn, nIn, cols, eps);
    }
    float v2 = 0.f;
    if (row < rows && lane == 0) {
        if (bias) s += bias[row];
        if (accumulate) s += y[row];
        y[row] = s;
        if (!NORM && ssOut) { xg[row] = s * gain(fg[row], addOne); v2 = s * s; }
    }
    if (!NORM && ssOut) fold_partial(v2, ssOut);
}

// The plain matvec kernels: W (DT, element type T), UNR loads in flight per lane; the folded-norm arguments as in
// matvec_impl (0 when not folded).
// deep: 8 or 16 loads in flight per lane (16: a 4096-column bf16 row at once). __launch_bounds__ gives ptxas the
// registers to keep them all in flight (without it, ptxas sinks the loads into the dot products at 42 registers).
#define MV_KERNEL(NAME, DT, T, UNR, BOUNDS)                                                                                   \
    extern "C" __global__ void BOUNDS NAME(const T* W, const float* x, float* y, const float* bias, int rows, int cols,   \
                                           int accumulate, int prefetch, int early, const float* fg, float* xg,          \
                                           float* ssOut, const float* ssIn, int nIn, float eps, int addOne) {            \
        matvec_impl<DT, UNR>(W, x, y, bias, rows, cols, accumulate, prefetch, 0, eps, addOne, early, fg, xg, ssOut,      \
                             ssIn, nIn);                                                                                 \
    }
// The dtype / depth variants of a matvec kernel family: KERNEL(NAME, ...) for each, names PREFIX + bf16, f16, f32,
// bf16_deep8, f16_deep8, bf16_deep16, f16_deep16 (deep: more loads in flight, registers capped for 4 / 2 blocks per SM)
#define MV_VARIANTS(KERNEL, PREFIX)                                                  \
    KERNEL(PREFIX##bf16, CALM_BF16, u16, MV_UNROLL, )                                \
    KERNEL(PREFIX##f16, CALM_F16, u16, MV_UNROLL, )                                  \
    KERNEL(PREFIX##f32, CALM_F32, float, MV_UNROLL, )                                \
    KERNEL(PREFIX##bf16_deep8, CALM_BF16, u16, 8, __launch_bounds__(256, 4))         \
    KERNEL(PREFIX##f16_deep8, CALM_F16, u16, 8, __launch_bounds__(256, 4))           \
    KERNEL(PREFIX##bf16_deep16, CALM_BF16, u16, 16, __launch_bounds__(256, 2))       \
    KERNEL(PREFIX##f16_deep16, CALM_F16, u16, 16, __launch_bounds__(256, 2))
MV_VARIANTS(MV_KERNEL, matvec_)
// RMSNorm fused: y = W (rmsnorm(x) * g) (+ bias) (+ y); nw [cols] f32 the norm weights (addOne: 1 + nw, gemma).
// x must not be y (the norm reads all of x).
#define MV_NORM_KERNEL(NAME, DT, T, UNR, BOUNDS)                                                                              \
    extern "C" __global__ void BOUNDS NAME(const T* W, const float* x, float* y, const float* bias, int rows, int cols,   \
                                           int accumulate, int prefetch, const float* nw, float eps, int addOne) {      \
        matvec_impl<DT, UNR, true>(W, x, y, bias, rows, cols, accumulate, prefetch, nw, eps, addOne);                    \
    }
MV_VARIANTS(MV_NORM_KERNEL, matvec_norm_)


// MoE: blockIdx.y = slot s of the top-k; the expert is expertIdx[s] (chosen on the GPU by moe_route).
// experts [E] device pointers to [rows, cols] matrices; x [slots, xStride]
// (xStride 0: every slot reads the same input); y [slots, rows].
template <int DT>
__device__ __forceinline__ void moe_matvec_impl(const void* const* experts, const int* expertIdx, const float* x, int xStride,
                                                float* y, int rows, int cols) {
    int s = blockIdx.y;
    pdl_wait();   // the expert ids come from moe_route
    const typename WeightT<DT>::T* W = (const typename WeightT<DT>::T*)experts[expertIdx[s]];
    matvec_impl<DT>(W, x + (long long)s * xStride, y + (long long)s * rows, (const float*)0, rows, cols, 0, 0);
}

extern "C" __global__ void moe_matvec_bf16(const void* const* experts, const int* expertIdx, const float* x, int xStride, float* y, int rows, int cols) {
    moe_matvec_impl<CALM_BF16>(experts, expertIdx, x, xStride, y, rows, cols);
}
extern "C" __global__ void moe_matvec_f16(const void* const* experts, const int* expertIdx, const float* x, int xStride, float* y, int rows, int cols) {
    moe_matvec_impl<CALM_F16>(experts, expertIdx, x, xStride, y, rows, cols);
}
extern "C" __global__ void moe_matvec_f32(const void* const* experts, const int* expertIdx, const float* x, int xStride, float* y, int rows, int cols) {
    moe_matvec_impl<CALM_F32>(experts, expertIdx, x, xStride, y, rows, cols);
}

// ---- paired rows: two rows per warp whose outputs meet in one epilogue ----------------------------------------------
// The decode step's qkv and gate_up matvecs end in an elementwise step that needs two rows of the same matvec
// (a rotary pair of a head; gate i and up i). A warp computes both rows (8 loads in flight per row, 16 per lane) and
// finishes that step itself, so the separate qkv_rope_cache and gate_act kernels (and their launch gaps) go away.

// acc0/acc1 += 8 16-byte vectors of rows a and b (lane's vectors v, v + 32, ...) . x; wait: pdl_wait() between the
// loads and the products (as row_batch)
template <int DT>
__device__ __forceinline__ void row_batch2(const calm_u4* va, const calm_u4* vb, int v, const float* x, float& acc0, float& acc1, bool wait) {
    calm_u4 wa[8], wb[8];
#pragma unroll
    for (int u = 0; u < 8; u++) { wa[u] = ldg_u4_stream(va + v + 32 * u); wb[u] = ldg_u4_stream(vb + v + 32 * u); }
    if (wait) pdl_wait();
#pragma unroll
    for (int u = 0; u < 8; u++) {
        const float* xp = x + (long long)(v + 32 * u) * 8;
        acc0 += dot8<DT, false>(wa[u], xp, xp, 0);
        acc1 += dot8<DT, false>(wb[u], xp, xp, 0);
    }
}

// dot products of rows a and b with x: 8 16-byte loads of each row in flight per lane; every lane gets both totals.
// early: the caller has not waited for the previous kernel; the first loads are issued before pdl_wait.
template <int DT>
__device__ __forceinline__ void row_dot2(const u16* ra, const u16* rb, const float* x, int cols, int lane, float& sa, float& sb, bool early = false) {
    float acc0 = 0.f, acc1 = 0.f;
    if ((cols & 7) == 0) {
        const calm_u4* va = (const calm_u4*)ra;
        const calm_u4* vb = (const calm_u4*)rb;
        int nvec = cols >> 3;
        int v = lane;
        if (early) {
            if (v + 32 * 7 < nvec) { row_batch2<DT>(va, vb, v, x, acc0, acc1, true); v += 32 * 8; }
            else pdl_wait();
        }
        for (; v + 32 * 7 < nvec; v += 32 * 8) row_batch2<DT>(va, vb, v, x, acc0, acc1, false);
        for (; v < nvec; v += 32) {
            const float* xp = x + (long long)v * 8;
            acc0 += dot8<DT, false>(ldg_u4_stream(va + v), xp, xp, 0);
            acc1 += dot8<DT, false>(ldg_u4_stream(vb + v), xp, xp, 0);
        }
    } else {
        if (early) pdl_wait();
        for (int c = lane; c < cols; c += 32) {
            float xv = x[c];
            acc0 = fmaf(load_elem<DT>(ra, c), xv, acc0);
            acc1 = fmaf(load_elem<DT>(rb, c), xv, acc1);
        }
    }
    sa = warp_sum(acc0);
    sb = warp_sum(acc1);
}

// qkv = Wqkv [Q+2KV, D] x (+ bias), then RoPE (rotate_half over the whole head) and the KV write, per rotary pair:
// pair g of unit u (u < H: q head, < H+K: k head, else v head) is rows u*Hd + i and u*Hd + i + Hd/2 (i = g % (Hd/2)).
// q heads: rotated, written to qkv (the attention reads them there); k: rotated, v: as is, both to this layer's fp16
// caches [K, maxCtx, Hd] at the step's position. cos/sin [maxCtx, Hd/2]. One warp per pair, 8 warps per block.
template <int DT>
__device__ __forceinline__ void matvec_qkv_rope_impl(const u16* W, const float* x, float* qkv, const float* bias,
                                                    int H, int K, int Hd, int D, const float* cosT, const float* sinT,
                                                    u16* kCache, u16* vCache, int maxCtx, const StepParams* sp, int early,
                                                    const float* ssIn, int nIn, float eps) {
    int g = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    pdl_trigger();
    if (!early) pdl_wait();
    int half = Hd >> 1;
    const bool active = g < (H + 2 * K) * half;
    if (!active && !ssIn) return;   // the folded norm's scale is block-wide
    int unit = g / half, i = g - unit * half;
    int r0 = unit * Hd + i, r1 = r0 + half;
    float s0 = 0.f, s1 = 0.f;
    if (active) row_dot2<DT>(W + (long long)r0 * D, W + (long long)r1 * D, x, D, lane, s0, s1, early);
    if (ssIn) {
        pdl_wait();
        const float r = fold_scale(ssIn, nIn, D, eps);
        s0 *= r; s1 *= r;
    }
    if (!active || lane != 0) return;
    if (bias) { s0 += bias[r0]; s1 += bias[r1]; }
    int pos = sp->pos;
    if (unit < H + K) {
        float c = cosT[(long long)pos * half + i], sn = sinT[(long long)pos * half + i];
        float o0 = s0 * c - s1 * sn, o1 = s1 * c + s0 * sn;
        s0 = o0; s1 = o1;
    }
    if (unit < H) { qkv[r0] = s0; qkv[r1] = s1; return; }
    int kh = unit < H + K ? unit - H : unit - H - K;
    u16* cache = (unit < H + K ? kCache : vCache) + ((long long)kh * maxCtx + pos) * Hd;
    cache[i] = f32_to_f16(s0);
    cache[i + half] = f32_to_f16(s1);
}

// h [F] = act(Wgu[i] x + bg[i]) * (Wgu[F + i] x + bu[i]); Wgu [2F, D] = gate rows then up rows, bias [2F] or null.
template <int DT>
__device__ __forceinline__ void matvec_glu_impl(const u16* W, const float* x, float* h, const float* bias, int F, int D, int act, int early,
                                                const float* ssIn, int nIn, float eps) {
    int i = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    pdl_trigger();
    if (!early) pdl_wait();
    const bool active = i < F;
    if (!active && !ssIn) return;   // the folded norm's scale is block-wide
    float gs = 0.f, us = 0.f;
    if (active) row_dot2<DT>(W + (long long)i * D, W + (long long)(F + i) * D, x, D, lane, gs, us, early);
    if (ssIn) {
        pdl_wait();
        const float r = fold_scale(ssIn, nIn, D, eps);
        gs *= r; us *= r;
    }
    if (!active || lane != 0) return;
    if (bias) { gs += bias[i]; us += bias[F + i]; }
    h[i] = activate(gs, act) * us;
}

extern "C" __global__ void __launch_bounds__(256, 2) matvec_qkv_rope_bf16(const u16* W, const float* x, float* qkv, const float* bias, int H, int K, int Hd, int D,
        const float* cosT, const float* sinT, u16* kCache, u16* vCache, int maxCtx, const StepParams* sp, int early,
        const float* ssIn, int nIn, float eps) {
    matvec_qkv_rope_impl<CALM_BF16>(W, x, qkv, bias, H, K, Hd, D, cosT, sinT, kCache, vCache, maxCtx, sp, early, ssIn, nIn, eps);
}
extern "C" __global__ void __launch_bounds__(256, 2) matvec_qkv_rope_f16(const u16* W, const float* x, float* qkv, const float* bias, int H, int K, int Hd, int D,
        const float* cosT, const float* sinT, u16* kCache, u16* vCache, int maxCtx, const StepParams* sp, int early,
        const float* ssIn, int nIn, float eps) {
    matvec_qkv_rope_impl<CALM_F16>(W, x, qkv, bias, H, K, Hd, D, cosT, sinT, kCache, vCache, maxCtx, sp, early, ssIn, nIn, eps);
}
extern "C" __global__ void __launch_bounds__(256, 2) matvec_glu_bf16(const u16* W, const float* x, float* h, const float* bias, int F, int D, int act, int early,
        const float* ssIn, int nIn, float eps) {
    matvec_glu_impl<CALM_BF16>(W, x, h, bias, F, D, act, early, ssIn, nIn, eps);
}
extern "C" __global__ void __launch_bounds__(256, 2) matvec_glu_f16(const u16* W, const float* x, float* h, const float* bias, int F, int D, int act, int early,
        const float* ssIn, int nIn, float eps) {
    matvec_glu_impl<CALM_F16>(W, x, h, bias, F, D, act, early, ssIn, nIn, eps);
}

// elementwise.cu: embedding lookup, FFN gating, residual adds, MoE routing and combine, dtype conversion.
#include "common.cuh"

// table [V, D] (DT; f32 tables for float32 checkpoints), out [D] f32 = table[token] * scale (gemma: sqrt(D); else 1).
// token from the step params. With ssOut (the first layer's norm folded, common.cuh): also xg [D] = out * (g or 1 + g)
// and one partial sum of out^2 per block.
__device__ __forceinline__ float embed_elem(const u16* row, int d, int dt) { return dt == CALM_BF16 ? load_elem<CALM_BF16>(row, d) : load_elem<CALM_F16>(row, d); }
__device__ __forceinline__ float embed_elem(const float* row, int d, int) { return row[d]; }
template <int DT, typename T>
__device__ __forceinline__ void embed_impl(const T* table, float* out, int D, float scale, const StepParams* sp,
                                           const float* fg, float* xg, float* ssOut, int addOne) {
    PDL_ENTER();
    const T* row = table + (long long)sp->token * D;
    float v2 = 0.f;
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) {
        const float v = embed_elem(row, d, DT) * scale;
        out[d] = v;
        if (ssOut) { xg[d] = v * gain(fg[d], addOne); v2 = fmaf(v, v, v2); }
    }
    if (ssOut) fold_partial(v2, ssOut);
}
extern "C" __global__ void embed_bf16(const u16* table, float* out, int D, float scale, const StepParams* sp,
                                      const float* fg, float* xg, float* ssOut, int addOne) {
    embed_impl<CALM_BF16>(table, out, D, scale, sp, fg, xg, ssOut, addOne);
}
extern "C" __global__ void embed_f16(const u16* table, float* out, int D, float scale, const StepParams* sp,
                                     const float* fg, float* xg, float* ssOut, int addOne) {
    embed_impl<CALM_F16>(table, out, D, scale, sp, fg, xg, ssOut, addOne);
}
extern "C" __global__ void embed_f32(const float* table, float* out, int D, float scale, const StepParams* sp,
                                     const float* fg, float* xg, float* ssOut, int addOne) {
    embed_impl<CALM_F32>(table, out, D, scale, sp, fg, xg, ssOut, addOne);
}

// gu [slots, 2F] f32 = [gate | up] per slot; h [slots, F] = act(gate) * up.
extern "C" __global__ void gate_act(const float* gu, float* h, int F, int slots, int act) {
    PDL_ENTER();
    long long n = (long long)F * slots;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        long long s = idx / F, i = idx - s * F;
        const float* g = gu + s * 2 * F;
        h[idx] = activate(g[i], act) * g[F + i];
    }
}

// y [n] += x [n]
extern "C" __global__ void add_inplace(float* y, const float* x, int n) {
    PDL_ENTER();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] += x[i];
}

// Mixtral routing. logits [E] f32 -> idx [k] int, weight [k] f32: softmax over all E, the k largest (ties: lower
// expert), renormalised to sum 1. E <= 1024. One warp (all 32 lanes call it); p: E floats of shared scratch.
__device__ __forceinline__ void moe_route_warp(const float* logits, int E, int k, int* idx, float* weight, float* p) {
    int lane = threadIdx.x & 31;
    float mx = -CALM_INF;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, logits[e]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) { float v = expf(logits[e] - mx); p[e] = v; sum += v; }
    sum = warp_sum(sum);
    __syncwarp();
    float chosen = 0.f;
    for (int s = 0; s < k; s++) {
        float bv = -1.f; int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32) { float v = p[e]; if (v > bv || (v == bv && e < bi)) { bv = v; bi = e; } }
        warp_argmax(bv, bi);
        if (lane == 0) { idx[s] = bi; weight[s] = bv / sum; p[bi] = -2.f; }
        chosen += bv / sum;
        __syncwarp();
    }
    __syncwarp();
    if (lane == 0) for (int s = 0; s < k; s++) weight[s] = weight[s] / chosen;
}
extern "C" __global__ void moe_route(const float* logits, int E, int k, int* idx, float* weight) {
    PDL_ENTER();
    __shared__ float p[1024];
    moe_route_warp(logits, E, k, idx, weight, p);
}

// The gate of a MoE layer in one block of MOE_GATE_THREADS (CudaKernels.MoeGate): the FFN's RMSNorm (the rmsnorm
// kernel's arithmetic: the same block sum, xn = x * r * g), written to xn for the experts; the router's logits [E] =
// R xn (f32 sums; written to logits); then moe_route's softmax, top-k and renormalisation (warp 0). It replaces
// rmsnorm, the router matvec and moe_route: three single-block kernels in a row. With programmatic launch their
// boundaries cost little; what the one block gains is reading the router and the norm weights from L2 (prefetched
// before the wait): Mixtral-8x7B fp8 +0.3-0.5% on the H200 (bench/RESULTS.md, twelfth session). A router row is cut
// among nw / E warps (32 warps, E = 8: 4), each taking 8-element vectors 32 apart (16-byte loads of a bf16/f16 router
// where D % 8 == 0 and x, g, R are 16-byte aligned; else element by element); the warps' partial sums meet in shared
// memory in a fixed order. R [E, D] in DT (CALM_BF16 / CALM_F16 / CALM_F32); E <= 1024.
#define MOE_GATE_THREADS 1024
template <int DT>
__device__ __forceinline__ float moe_gate_elem(const void* R, long long i) {
    if (DT == CALM_F32) return ((const float*)R)[i];
    return load_elem<DT == CALM_F32 ? CALM_BF16 : DT>((const u16*)R, i);
}
template <int DT>
__device__ __forceinline__ void moe_gate_impl(const float* x, const float* g, float eps, int addOne, const void* R, int E, int D,
                                              int k, float* xn, float* logits, int* idx, float* weight) {
    // the norm weights and the router (no kernel writes them) into L2 while the previous kernel finishes, so the
    // block's reads after the wait are L2 round trips
    {
        const long long rb = (long long)E * D * (DT == CALM_F32 ? 4 : 2);   // the threads take 128-byte lines in turn
        for (long long off = (long long)threadIdx.x * 128; off < rb; off += (long long)blockDim.x * 128) prefetch_l2((const char*)R + off);
        for (long long off = (long long)threadIdx.x * 128; off < (long long)D * 4; off += (long long)blockDim.x * 128) prefetch_l2((const char*)g + off);
    }
    PDL_ENTER();
    __shared__ float s_logit[1024];
    __shared__ float s_p[1024];
    __shared__ float s_part[MOE_GATE_THREADS / 32];
    float ss = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) { float v = x[i]; ss = fmaf(v, v, ss); }
    ss = block_sum(ss);
    const float r = rsqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) xn[i] = x[i] * r * gain(g[i], addOne);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int wpr = max(1, nw / E);      // warps per row
    const int rpr = nw / wpr;            // rows per round
    const bool vec = DT != CALM_F32 && (D & 7) == 0 && (((unsigned long long)x | (unsigned long long)g | (unsigned long long)R) & 15) == 0;
    for (int e0 = 0; e0 < E; e0 += rpr) {
        const int e = e0 + warp / wpr, part = warp - (warp / wpr) * wpr;
        float a = 0.f;
        if (warp < rpr * wpr && e < E) {
            if (vec) {
                const calm_u4* rv = (const calm_u4*)((const u16*)R + (long long)e * D);
                for (int v = lane + 32 * part; v < (D >> 3); v += 32 * wpr) {
                    const calm_u4 w = ldg_u4(rv + v);
                    const calm_f4 xa = *(const calm_f4*)(x + 8 * v), xb = *(const calm_f4*)(x + 8 * v + 4);
                    const calm_f4 ga = *(const calm_f4*)(g + 8 * v), gb = *(const calm_f4*)(g + 8 * v + 4);
                    const float xv[8] = { xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w };
                    const float gv[8] = { ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w };
                    const u32 wd[4] = { w.x, w.y, w.z, w.w };
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        float w0, w1;
                        unpack2<DT == CALM_F32 ? CALM_BF16 : DT>(wd[j], w0, w1);
                        a = fmaf(w0, xv[2 * j] * r * gain(gv[2 * j], addOne), a);
                        a = fmaf(w1, xv[2 * j + 1] * r * gain(gv[2 * j + 1], addOne), a);
                    }
                }
            } else {
                for (int i = lane + 32 * part; i < D; i += 32 * wpr) a = fmaf(moe_gate_elem<DT>(R, (long long)e * D + i), x[i] * r * gain(g[i], addOne), a);
            }
            a = warp_sum(a);
        }
        if (lane == 0) s_part[warp] = a;
        __syncthreads();
        if (threadIdx.x < rpr && e0 + (int)threadIdx.x < E) {
            float t = 0.f;
            for (int w = 0; w < wpr; w++) t += s_part[threadIdx.x * wpr + w];
            s_logit[e0 + threadIdx.x] = t;
            logits[e0 + threadIdx.x] = t;
        }
        __syncthreads();
    }
    if (warp == 0) moe_route_warp(s_logit, E, k, idx, weight, s_p);
}
extern "C" __global__ void __launch_bounds__(MOE_GATE_THREADS) moe_gate_bf16(const float* x, const float* g, float eps, int addOne, const void* R, int E, int D, int k, float* xn, float* logits, int* idx, float* weight) {
    moe_gate_impl<CALM_BF16>(x, g, eps, addOne, R, E, D, k, xn, logits, idx, weight);
}
extern "C" __global__ void __launch_bounds__(MOE_GATE_THREADS) moe_gate_f16(const float* x, const float* g, float eps, int addOne, const void* R, int E, int D, int k, float* xn, float* logits, int* idx, float* weight) {
    moe_gate_impl<CALM_F16>(x, g, eps, addOne, R, E, D, k, xn, logits, idx, weight);
}
extern "C" __global__ void __launch_bounds__(MOE_GATE_THREADS) moe_gate_f32(const float* x, const float* g, float eps, int addOne, const void* R, int E, int D, int k, float* xn, float* logits, int* idx, float* weight) {
    moe_gate_impl<CALM_F32>(x, g, eps, addOne, R, E, D, k, xn, logits, idx, weight);
}

// x [D] += sum_s weight[s] * eo[s, D]   (MoE expert outputs into the residual stream)
extern "C" __global__ void moe_combine(float* x, const float* eo, const float* weight, int k, int D) {
    PDL_ENTER();
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < k; s++) a = fmaf(weight[s], eo[(long long)s * D + d], a);
        x[d] += a;
    }
}

// src [n] (dtype) -> dst [n] f32
extern "C" __global__ void convert_to_f32(const u16* src, float* dst, long long n, int dtype) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dst[i] = dtype == CALM_BF16 ? bf16_to_f32(src[i]) : f16_to_f32(src[i]);
}

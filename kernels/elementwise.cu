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
// expert), renormalised to sum 1. E <= 1024. One warp.
extern "C" __global__ void moe_route(const float* logits, int E, int k, int* idx, float* weight) {
    PDL_ENTER();
    __shared__ float p[1024];
    int lane = threadIdx.x;
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

// sampling.cu: greedy argmax and top-k over the logits on the GPU, so the host copies k values, not V.
// Two stages each: blocks reduce their chunk to candidates, one block merges the candidates.
#include "common.cuh"

// Stage 1: x [n] f32 -> pv/pi [gridDim.x] best (value, index) of each block's grid-stride share.
extern "C" __global__ void argmax_partial(const float* x, int n, float* pv, int* pi) {
    PDL_ENTER();
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    float bv = -CALM_INF; int bi = 0x7fffffff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float v = x[i];
        if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
    }
    warp_argmax(bv, bi);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { s_v[warp] = bv; s_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        bv = lane < nw ? s_v[lane] : -CALM_INF; bi = lane < nw ? s_i[lane] : 0x7fffffff;
        warp_argmax(bv, bi);
        if (lane == 0) { pv[blockIdx.x] = bv; pi[blockIdx.x] = bi; }
    }
}

// Stage 2 (one warp): pv/pi [m] -> result[0] = index (int), result[1] = value (float bits).
extern "C" __global__ void argmax_final(const float* pv, const int* pi, int m, int* result) {
    PDL_ENTER();
    int lane = threadIdx.x;
    float bv = -CALM_INF; int bi = 0x7fffffff;
    for (int i = lane; i < m; i += 32) { float v = pv[i]; int j = pi[i]; if (v > bv || (v == bv && j < bi)) { bv = v; bi = j; } }
    warp_argmax(bv, bi);
    if (lane == 0) { result[0] = bi == 0x7fffffff ? 0 : bi; result[1] = __float_as_int(bv); }
}

// Block-wide argmax over s_v/s_i[0..m) skipping entries whose index is < 0 (taken). Returns the slot, or -1.
__device__ int block_argmax_slot(const float* s_v, const int* s_i, int m, float* r_v, int* r_slot) {
    __shared__ float w_v[32];
    __shared__ int w_i[32], w_s[32];
    float bv = -CALM_INF; int bi = 0x7fffffff, bs = -1;
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
        int j = s_i[t];
        if (j < 0) continue;
        float v = s_v[t];
        if (bs < 0 || v > bv || (v == bv && j < bi)) { bv = v; bi = j; bs = t; }
    }
    // reduce (value, index, slot) with the index as tie-break; slot -1 never beats a real candidate
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        int os = __shfl_xor_sync(0xffffffffu, bs, o);
        if (os >= 0 && (bs < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; bs = os; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { w_v[warp] = bv; w_i[warp] = bi; w_s[warp] = bs; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < nw ? w_v[lane] : -CALM_INF; bi = lane < nw ? w_i[lane] : 0x7fffffff; bs = lane < nw ? w_s[lane] : -1;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            int os = __shfl_xor_sync(0xffffffffu, bs, o);
            if (os >= 0 && (bs < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; bs = os; }
        }
        if (lane == 0) { *r_v = bv; *r_slot = bs; }
    }
    __syncthreads();
    return *r_slot;
}

// Stage 1: block b takes x[b*chunk, min(n,(b+1)*chunk)) into shared memory (dynamic: chunk floats + chunk ints) and
// writes its k best to cv/ci [b*k .. b*k+k) in descending order (index -1 where the chunk has fewer than k).
extern "C" __global__ void topk_partial(const float* x, int n, int chunk, int k, float* cv, int* ci) {
    PDL_ENTER();
    extern __shared__ float dyn[];
    float* s_v = dyn;
    int* s_i = (int*)(dyn + chunk);
    __shared__ float r_v; __shared__ int r_slot;
    int base = blockIdx.x * chunk;
    int m = n - base < chunk ? n - base : chunk;
    if (m < 0) m = 0;
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
        float v = x[base + t];
        s_v[t] = v;
        s_i[t] = v != v ? -1 : base + t;  // NaN never selected
    }
    __syncthreads();
    for (int r = 0; r < k; r++) {
        int slot = block_argmax_slot(s_v, s_i, m, &r_v, &r_slot);
        if (threadIdx.x == 0) {
            cv[blockIdx.x * k + r] = slot >= 0 ? r_v : -CALM_INF;
            ci[blockIdx.x * k + r] = slot >= 0 ? s_i[slot] : -1;
            if (slot >= 0) s_i[slot] = -1;
        }
        __syncthreads();
    }
}

// Stage 2 (one block): candidates cv/ci [m] (dynamic shared: m floats + m ints) -> outV/outI [k], descending
// (index -1 when fewer than k candidates exist).
extern "C" __global__ void topk_final(const float* cv, const int* ci, int m, int k, float* outV, int* outI) {
    PDL_ENTER();
    extern __shared__ float dyn[];
    float* s_v = dyn;
    int* s_i = (int*)(dyn + m);
    __shared__ float r_v; __shared__ int r_slot;
    for (int t = threadIdx.x; t < m; t += blockDim.x) { s_v[t] = cv[t]; s_i[t] = ci[t]; }
    __syncthreads();
    for (int r = 0; r < k; r++) {
        int slot = block_argmax_slot(s_v, s_i, m, &r_v, &r_slot);
        if (threadIdx.x == 0) {
            outV[r] = slot >= 0 ? r_v : -CALM_INF;
            outI[r] = slot >= 0 ? s_i[slot] : -1;
            if (slot >= 0) s_i[slot] = -1;
        }
        __syncthreads();
    }
}

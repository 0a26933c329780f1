// qkv_rope.cuh: the per-head step after the q/k/v projection, one block per head (qwen3 q/k RMSNorm, RoPE, write of
// k and v into the KV cache): qkv_rope_cache in norm_rope.cu (decode, one token) and the general path of
// qkv_rope_rows in prefill_attention.cu (a row of the batched prefill) run the same code.
#pragma once
#include "common.cuh"
#include "fp8.cuh"

#define QKV_MAX_HD 1024

// vec: head b of one qkv row [H*Hd | K*Hd | K*Hd] f32 (biases already added) at position pos. b < H: query head
// (normed, rotated, written back in place); H <= b < H+K: key head (normed, rotated, written to kCache); H+K <= b <
// H+2K: value head (copied to vCache). qNorm/kNorm [Hd] f32 (used when qkNorm != 0). ropeCos/ropeSin [maxCtx,
// rotDim/2] f32: HF rotate_half on the first rotDim dims of each head. kCache/vCache: this layer's [K, maxCtx, Hd]
// fp16; KVT CALM_KV_FP8: e4m3 with row scales kScale/vScale [K, maxCtx] f32 (fp8.cuh). Every thread of the block calls it.
template <int KVT>
__device__ __forceinline__ void qkv_rope_head(float* vec, int b, int pos, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                              const float* ropeCos, const float* ropeSin, int rotDim,
                                              void* kCache, void* vCache, int maxCtx, int H, int K, int Hd,
                                              float* kScale, float* vScale) {
    __shared__ float sh[QKV_MAX_HD];
    int kind = b < H ? 0 : (b < H + K ? 1 : 2);  // 0 q, 1 k, 2 v
    for (int d = threadIdx.x; d < Hd; d += blockDim.x) sh[d] = vec[d];
    __syncthreads();
    if (kind != 2 && qkNorm) {
        const float* w = kind == 0 ? qNorm : kNorm;
        float ss = 0.f;
        for (int d = threadIdx.x; d < Hd; d += blockDim.x) ss = fmaf(sh[d], sh[d], ss);
        ss = block_sum(ss);
        float r = rsqrtf(ss / (float)Hd + eps);
        __syncthreads();
        for (int d = threadIdx.x; d < Hd; d += blockDim.x) {
            const float g = gain(w[d], addOne);
            sh[d] = sh[d] * r * g;
        }
        __syncthreads();
    }
    float outv[QKV_MAX_HD / 32];  // per-thread results (blockDim >= 32 assumed; index is compile-time after unroll)
    int half = rotDim >> 1;
#pragma unroll
    for (int t = 0; t < QKV_MAX_HD / 32; t++) {
        int d = threadIdx.x + t * blockDim.x;
        if (d < Hd) {
            float v = sh[d];
            if (kind != 2 && d < rotDim) {
                int i = d < half ? d : d - half;
                float c = ropeCos[(long long)pos * half + i], s = ropeSin[(long long)pos * half + i];
                v = d < half ? v * c - sh[d + half] * s : v * c + sh[d - half] * s;
            }
            outv[t] = v;
        }
    }
    if (kind == 0) {
#pragma unroll
        for (int t = 0; t < QKV_MAX_HD / 32; t++) {
            int d = threadIdx.x + t * blockDim.x;
            if (d < Hd) vec[d] = outv[t];
        }
    } else {
        int kh = kind == 1 ? b - H : b - H - K;
        kv_write_row<KVT>(kind == 1 ? kCache : vCache, kind == 1 ? kScale : vScale, outv, kh, pos, maxCtx, Hd);
    }
}

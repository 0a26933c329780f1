// norm_rope.cu: RMSNorm of the residual stream, and the per-head step after the q/k/v projection
// (qwen3 q/k RMSNorm, RoPE, write of k and v into the fp16 KV cache).
#include "common.cuh"
#include "fp8.cuh"

// x [n] f32, w [n] f32, out [n] f32: out = x / sqrt(mean(x^2) + eps) * (w or 1 + w). One block.
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int n, float eps, int addOne) {
    PDL_ENTER();
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = x[i]; ss = fmaf(v, v, ss); }
    ss = block_sum(ss);
    float r = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float g = w[i];
        if (addOne) g += 1.f;
        out[i] = x[i] * r * g;
    }
}

#define QKV_MAX_HD 1024

// qkv [H*Hd | K*Hd | K*Hd] f32 (the fused projection output, biases already added).
// Block b < H: query head b (normed, rotated, written back in place); H <= b < H+K: key head (normed, rotated,
// written to kCache); H+K <= b < H+2K: value head (copied to vCache).
// qNorm/kNorm [Hd] f32 (used when qkNorm != 0). ropeCos/ropeSin [maxCtx, rotDim/2] f32: HF rotate_half on the first
// rotDim dims of each head. kCache/vCache: this layer's [K, maxCtx, Hd] fp16.
// KVT CALM_KV_FP8: kCache/vCache [K, maxCtx, Hd] e4m3 with row scales kScale/vScale [K, maxCtx] f32 (fp8.cuh).
template <int KVT>
__device__ __forceinline__ void qkv_rope_cache_impl(float* qkv, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                                    const float* ropeCos, const float* ropeSin, int rotDim,
                                                    void* kCache, void* vCache, int maxCtx, int H, int K, int Hd,
                                                    const StepParams* sp, float* kScale, float* vScale) {
    __shared__ float sh[QKV_MAX_HD];
    int b = blockIdx.x;
    const int pos = sp->pos;
    int kind = b < H ? 0 : (b < H + K ? 1 : 2);  // 0 q, 1 k, 2 v
    float* vec = qkv + (long long)b * Hd;         // the three blocks are contiguous, so head b starts at b*Hd
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
            float g = w[d];
            if (addOne) g += 1.f;
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

extern "C" __global__ void qkv_rope_cache(float* qkv, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                          const float* ropeCos, const float* ropeSin, int rotDim,
                                          u16* kCache, u16* vCache, int maxCtx, int H, int K, int Hd,
                                          const StepParams* sp) {
    PDL_ENTER();
    qkv_rope_cache_impl<CALM_KV_F16>(qkv, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim, kCache, vCache, maxCtx, H, K, Hd, sp, 0, 0);
}

// the fp8 KV cache: as qkv_rope_cache, k and v rows quantized (row scale amax/448) with their scales
extern "C" __global__ void qkv_rope_cache_fp8(float* qkv, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                              const float* ropeCos, const float* ropeSin, int rotDim,
                                              unsigned char* kCache, unsigned char* vCache, int maxCtx, int H, int K, int Hd,
                                              const StepParams* sp, float* kScale, float* vScale) {
    PDL_ENTER();
    qkv_rope_cache_impl<CALM_KV_FP8>(qkv, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim, kCache, vCache, maxCtx, H, K, Hd, sp, kScale, vScale);
}

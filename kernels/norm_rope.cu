// norm_rope.cu: RMSNorm of the residual stream, and the per-head step after the q/k/v projection
// (qwen3 q/k RMSNorm, RoPE, write of k and v into the fp16 KV cache).
#include "common.cuh"
#include "fp8.cuh"
#include "qkv_rope.cuh"

// x [n] f32, w [n] f32, out [n] f32: out = x / sqrt(mean(x^2) + eps) * (w or 1 + w). One block.
extern "C" __global__ void rmsnorm(const float* x, const float* w, float* out, int n, float eps, int addOne) {
    PDL_ENTER();
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = x[i]; ss = fmaf(v, v, ss); }
    ss = block_sum(ss);
    float r = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float g = gain(w[i], addOne);
        out[i] = x[i] * r * g;
    }
}

// qkv [H*Hd | K*Hd | K*Hd] f32 (the fused projection output): block b runs head b at the step's position
// (qkv_rope.cuh; the three blocks are contiguous, so head b starts at b*Hd).
template <int KVT>
__device__ __forceinline__ void qkv_rope_cache_impl(float* qkv, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                                    const float* ropeCos, const float* ropeSin, int rotDim,
                                                    void* kCache, void* vCache, int maxCtx, int H, int K, int Hd,
                                                    const StepParams* sp, float* kScale, float* vScale) {
    const int b = blockIdx.x;
    qkv_rope_head<KVT>(qkv + (long long)b * Hd, b, sp->pos, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim,
                       kCache, vCache, maxCtx, H, K, Hd, kScale, vScale);
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

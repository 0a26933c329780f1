// attention.cu: one decode query per head against the KV cache (fp16, or fp8 e4m3 with row scales), online softmax in fp32.
// GQA (query head h reads kv head h / (H/K)), optional sliding window (query at pos sees keys j with pos-W < j <= pos).
#include "common.cuh"
#include "fp8.cuh"

#define ATT_MAX_HD 512
#define ATT_PER_LANE (ATT_MAX_HD / 32)
#define ATT_MAX_WARPS 16

// q [H*Hd] f32 (rotated), kCache/vCache this layer's [K, maxCtx, Hd] fp16, out [H*Hd] f32.
// One block per query head; each warp walks positions start+warp, start+warp+nwarps, ... keeping a running max,
// sum and weighted V (lane owns dims lane, lane+32, ...); the warps' partial results are merged at the end.
// KVT CALM_KV_FP8: caches [K, maxCtx, Hd] e4m3 with row scales kScale/vScale [K, maxCtx] f32 (fp8.cuh).
template <int KVT>
__device__ __forceinline__ float att_elem(const void* row, int d) {
    if (KVT == CALM_KV_FP8) return e4m3_to_f32(((const unsigned char*)row)[d]);
    return f16_to_f32(((const u16*)row)[d]);
}

template <int KVT>
__device__ __forceinline__ void attention_decode_impl(const float* q, const void* kCache, const void* vCache, float* out,
                                                      int H, int K, int Hd, int maxCtx, int window, float scale,
                                                      const StepParams* sp, const float* kScale, const float* vScale) {
    const int ES = KVT == CALM_KV_FP8 ? 1 : 2;
    __shared__ float s_m[ATT_MAX_WARPS], s_l[ATT_MAX_WARPS];
    __shared__ float s_acc[ATT_MAX_WARPS][ATT_MAX_HD];
    int h = blockIdx.x;
    int kh = h / (H / K);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int pos = sp->pos;
    int start = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;

    float qv[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int d = lane + 32 * i;
        qv[i] = d < Hd ? q[(long long)h * Hd + d] * scale : 0.f;
        acc[i] = 0.f;
    }
    float m = -CALM_INF, l = 0.f;
    const char* kb = (const char*)kCache + (long long)kh * maxCtx * Hd * ES;
    const char* vb = (const char*)vCache + (long long)kh * maxCtx * Hd * ES;
    for (int j = start + warp; j <= pos; j += nwarps) {
        const char* kr = kb + (long long)j * Hd * ES;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < Hd) s = fmaf(qv[i], att_elem<KVT>(kr, d), s);
        }
        s = warp_sum(s);
        float vsc = 1.f;
        if (KVT == CALM_KV_FP8) { s *= kScale[(long long)kh * maxCtx + j]; vsc = vScale[(long long)kh * maxCtx + j]; }
        float mn = fmaxf(m, s);
        float corr = expf(m - mn);
        float p = expf(s - mn);
        l = l * corr + p;
        const char* vr = vb + (long long)j * Hd * ES;
        float pv = KVT == CALM_KV_FP8 ? p * vsc : p;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < Hd) acc[i] = fmaf(pv, att_elem<KVT>(vr, d), acc[i] * corr);
        }
        m = mn;
    }
    if (lane == 0) { s_m[warp] = m; s_l[warp] = l; }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; i++) {
        int d = lane + 32 * i;
        if (d < Hd) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    float M = -CALM_INF;
    for (int w = 0; w < nwarps; w++) M = fmaxf(M, s_m[w]);
    float L = 0.f;
    for (int w = 0; w < nwarps; w++) L += s_m[w] == -CALM_INF ? 0.f : s_l[w] * expf(s_m[w] - M);
    for (int d = threadIdx.x; d < Hd; d += blockDim.x) {
        float o = 0.f;
        for (int w = 0; w < nwarps; w++)
            if (s_m[w] != -CALM_INF) o += s_acc[w][d] * expf(s_m[w] - M);
        out[(long long)h * Hd + d] = o / L;
    }
}

extern "C" __global__ void attention_decode(const float* q, const u16* kCache, const u16* vCache, float* out,
                                            int H, int K, int Hd, int maxCtx, int window, float scale,
                                            const StepParams* sp) {
    PDL_ENTER();
    attention_decode_impl<CALM_KV_F16>(q, kCache, vCache, out, H, K, Hd, maxCtx, window, scale, sp, 0, 0);
}

extern "C" __global__ void attention_decode_fp8(const float* q, const unsigned char* kCache, const unsigned char* vCache, float* out,
                                                int H, int K, int Hd, int maxCtx, int window, float scale,
                                                const StepParams* sp, const float* kScale, const float* vScale) {
    PDL_ENTER();
    attention_decode_impl<CALM_KV_FP8>(q, kCache, vCache, out, H, K, Hd, maxCtx, window, scale, sp, kScale, vScale);
}

#include "attention_split.cuh"

#define FD_KERNEL(NAME, MAXG, U, MINB)                                                                                   \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    NAME(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws, int H, int K, int Hd, int maxCtx, \
         int window, float scale, int S, const StepParams* sp, int pf, const char* nextW, long long nextBytes) {       \
        FD_STAMP(0);                                                                                                   \
        attention_split_impl<MAXG, U, false, CALM_KV_F16, true>(q, kCache, vCache, out, ws, H, K, Hd, maxCtx, window,  \
                                             scale, S, sp, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z, 0, 0, pf,    \
                                             nextW, nextBytes);                                                        \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    NAME##_async(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws, int H, int K, int Hd,   \
                 int maxCtx, int window, float scale, int S, const StepParams* sp) {                                   \
        FD_STAMP(0);                                                                                                   \
        PDL_ENTER();                                                                                                   \
        attention_split_impl<MAXG, U, true>(q, kCache, vCache, out, ws, H, K, Hd, maxCtx, window, scale, S, sp,       \
                                            blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z);                            \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    NAME##_fp8(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws, int H, int K, int Hd,     \
               int maxCtx, int window, float scale, int S, const StepParams* sp, const float* kScale,                  \
               const float* vScale, int pf, const char* nextW, long long nextBytes) {                                  \
        FD_STAMP(0);                                                                                                   \
        attention_split_impl<MAXG, U, false, CALM_KV_FP8, true>(q, kCache, vCache, out, ws, H, K, Hd, maxCtx, window,  \
                                                          scale, S, sp, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z, \
                                                          kScale, vScale, pf, nextW, nextBytes);                       \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    NAME##_fp8_async(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws, int H, int K,       \
                     int Hd, int maxCtx, int window, float scale, int S, const StepParams* sp, const float* kScale,    \
                     const float* vScale) {                                                                            \
        FD_STAMP(0);                                                                                                   \
        PDL_ENTER();                                                                                                   \
        attention_split_impl<MAXG, U, true, CALM_KV_FP8>(q, kCache, vCache, out, ws, H, K, Hd, maxCtx, window, scale,  \
                                                         S, sp, blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z,         \
                                                         kScale, vScale);                                              \
    }
FD_KERNEL(attention_split_g1, 1, 4, 2)
FD_KERNEL(attention_split_g2, 2, 4, 2)
FD_KERNEL(attention_split_g4, 4, 4, 2)
FD_KERNEL(attention_split_g8, 8, 2, 1)

#include "attention_split_fp8.cuh"

// fp8 KV cache on the tensor cores (attention_split_fp8.cuh): the g4 kernels serve 1 to 4 query heads per kv head,
// g8 up to 8 per head group; the same arguments as attention_split_g*_fp8 (Hd must be the kernel's HD). Registers
// (sm_90, NVRTC 11.8, no spills): g4 hd64 110, hd128 126 (2 blocks/SM), hd256 205; g8 hd64 119, hd128 182 (1 block/SM);
// no g8 hd256 (it would spill: q and the accumulators alone are 192 registers), that shape keeps attention_split_g8_fp8.
#define FW_KERNEL(MAXG, HD, MINB)                                                                                       \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    attention_split_g##MAXG##_fp8w_hd##HD(const float* q, const unsigned char* kCache, const unsigned char* vCache,   \
                                          float* out, float* ws, int H, int K, int Hd, int maxCtx, int window,         \
                                          float scale, int S, const StepParams* sp, const float* kScale,              \
                                          const float* vScale, int pf, const char* nextW, long long nextBytes) {       \
        FD_STAMP(0);                                                                                                   \
        attention_split_fp8w_impl<MAXG, HD, true>(q, kCache, vCache, out, ws, H, K, maxCtx, window, scale, S, sp,      \
                                            blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z, kScale, vScale, pf,         \
                                            nextW, nextBytes);                                                         \
    }
// fp16 KV cache on the tensor cores: the same kernel with 2-byte rows (attention_split_fp8.cuh, KVT CALM_KV_F16); the
// arguments of attention_split_g* (no scales). head_dim 64 and 128 (256 would need 128 registers for a tile's loads).
// Registers (sm_90, NVRTC 11.8, no spills): g4 hd64 124, hd128 128 (q's fragments in shared memory), g8 hd64 128, hd128 184.
#define FW16_KERNEL(MAXG, HD, MINB)                                                                                     \
    extern "C" __global__ void __launch_bounds__(FD_THREADS, MINB)                                                    \
    attention_split_g##MAXG##_f16w_hd##HD(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws, \
                                          int H, int K, int Hd, int maxCtx, int window, float scale, int S,             \
                                          const StepParams* sp, int pf, const char* nextW, long long nextBytes) {       \
        FD_STAMP(0);                                                                                                   \
        attention_split_fp8w_impl<MAXG, HD, true, CALM_KV_F16>(q, (const unsigned char*)kCache,                       \
                                            (const unsigned char*)vCache, out, ws, H, K, maxCtx, window, scale, S, sp, \
                                            blockIdx.x, blockIdx.y, blockIdx.z, gridDim.z, 0, 0, pf, nextW, nextBytes); \
    }
FW16_KERNEL(4, 64, 2)
FW16_KERNEL(4, 128, 2)
FW16_KERNEL(8, 64, 2)
FW16_KERNEL(8, 128, 1)
FW_KERNEL(4, 64, 2)
FW_KERNEL(4, 128, 2)
FW_KERNEL(4, 256, 1)
FW_KERNEL(8, 64, 2)
FW_KERNEL(8, 128, 1)

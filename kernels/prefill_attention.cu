// prefill_attention.cu: the per-head steps of a batched (prefill) forward over T tokens at positions start .. start+T-1:
// q/k RMSNorm + RoPE + KV-cache write for every row, and causal attention of the T queries against the cache.
#include "common.cuh"
#include "fp8.cuh"

#define PQ_MAX_HD 1024

// qkv [T, H*Hd | K*Hd | K*Hd] f32 (row stride ld = (H+2K)*Hd). grid (H+2K, T): block (b, t) handles head b of row t at
// position start+t exactly as qkv_rope_cache (norm_rope.cu) does for one token: q heads normed/rotated in place, k heads
// normed/rotated into kCache, v heads into vCache (this layer's [K, maxCtx, Hd] fp16).
// KVT CALM_KV_FP8: caches [K, maxCtx, Hd] e4m3 with row scales kScale/vScale [K, maxCtx] f32 (fp8.cuh).
template <int KVT>
__device__ __forceinline__ void qkv_rope_rows_impl(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                                   const float* ropeCos, const float* ropeSin, int rotDim,
                                                   void* kCache, void* vCache, int maxCtx, int H, int K, int Hd, int start,
                                                   float* kScale, float* vScale) {
    __shared__ float sh[PQ_MAX_HD];
    int b = blockIdx.x, t = blockIdx.y;
    int pos = start + t;
    int kind = b < H ? 0 : (b < H + K ? 1 : 2);
    float* vec = qkv + (long long)t * ld + (long long)b * Hd;
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
    int half = rotDim >> 1;
    float outv[PQ_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < PQ_MAX_HD / 32; i++) {
        int d = threadIdx.x + i * blockDim.x;
        if (d < Hd) {
            float v = sh[d];
            if (kind != 2 && d < rotDim) {
                int j = d < half ? d : d - half;
                float c = ropeCos[(long long)pos * half + j], s = ropeSin[(long long)pos * half + j];
                v = d < half ? v * c - sh[d + half] * s : v * c + sh[d - half] * s;
            }
            outv[i] = v;
        }
    }
    if (kind == 0) {
#pragma unroll
        for (int i = 0; i < PQ_MAX_HD / 32; i++) {
            int d = threadIdx.x + i * blockDim.x;
            if (d < Hd) vec[d] = outv[i];
        }
    } else {
        int kh = kind == 1 ? b - H : b - H - K;
        kv_write_row<KVT>(kind == 1 ? kCache : vCache, kind == 1 ? kScale : vScale, outv, kh, pos, maxCtx, Hd);
    }
}

extern "C" __global__ void qkv_rope_rows(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                         const float* ropeCos, const float* ropeSin, int rotDim,
                                         u16* kCache, u16* vCache, int maxCtx, int H, int K, int Hd, int start) {
    qkv_rope_rows_impl<CALM_KV_F16>(qkv, ld, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start, 0, 0);
}

extern "C" __global__ void qkv_rope_rows_fp8(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                             const float* ropeCos, const float* ropeSin, int rotDim,
                                             unsigned char* kCache, unsigned char* vCache, int maxCtx, int H, int K, int Hd, int start,
                                             float* kScale, float* vScale) {
    qkv_rope_rows_impl<CALM_KV_FP8>(qkv, ld, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim, kCache, vCache, maxCtx, H, K, Hd, start, kScale, vScale);
}

// ---- causal prefill attention ----------------------------------------------------------------------------------
// q: row t of head h at q + t*ld + h*Hd (f32, rotated). Caches [K, maxCtx, Hd] fp16 hold positions 0 .. start+T-1.
// out [T, H*Hd] in odt (bf16/f16, the o-projection's input). Query t (position p = start+t) sees keys j with
// max(0, p-window+1) <= j <= p (window 0: no window). GQA: head h reads kv head h / (H/K).
// grid (ceil(T/PA_QT), H), PA_THREADS threads. The block's PA_QT queries share each chunk of PA_KC keys staged in
// shared memory (fp16, rows padded by one word); warp w owns queries w, w+PA_WARPS, ... (PA_QPW of them). Scores:
// lane j takes key j of the chunk for all the warp's queries; V: lane owns dims lane + 32i. Online softmax in fp32.
#define PA_QT 16
#define PA_THREADS 128
#define PA_WARPS (PA_THREADS / 32)
#define PA_QPW (PA_QT / PA_WARPS)
#define PA_KC 32
#define PA_MAX_HD 256
#define PA_PER_LANE (PA_MAX_HD / 32)
struct __align__(8) pa_f2 { float x, y; };

// KVT CALM_KV_FP8: caches [K, maxCtx, Hd] e4m3 with row scales kScale/vScale [K, maxCtx] f32: the chunk is staged
// as exact fp16 (e4m3 is a subset) with the rows' scales beside it; the K scale multiplies the score, the V scale p.
template <int KVT>
__device__ __forceinline__ void attention_prefill_impl(const float* q, int ld, const void* kCache, const void* vCache, u16* out,
                                                       int T, int start, int H, int K, int Hd, int maxCtx, int window, float scale, int odt,
                                                       const float* kScale, const float* vScale) {
    __shared__ float s_ks[PA_KC], s_vs[PA_KC];
    // dynamic shared memory (PA_SMEM(Hd) bytes): sq [PA_QT][Hd] f32 | sk [PA_KC][Hd/2 + 1] words | sv [PA_KC][Hd/2] words
    extern __shared__ __align__(16) float pa_sm[];
    const int hw = Hd >> 1;   // words per row (Hd even)
    float* sqb = pa_sm;
    u32* sk = (u32*)(pa_sm + PA_QT * Hd);
    u32* sv = sk + PA_KC * (hw + 1);
    const int h = blockIdx.y, kh = h / (H / K);
    const int t0 = blockIdx.x * PA_QT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < PA_QT * Hd; i += PA_THREADS) {
        int r = i / Hd, d = i - r * Hd;
        int t = t0 + r;
        sqb[r * Hd + d] = t < T ? q[(long long)t * ld + (long long)h * Hd + d] * scale : 0.f;
    }
    const int tLast = min(t0 + PA_QT, T) - 1;
    const int pFirst = start + t0, pLast = start + tLast;
    const int kBegin = window > 0 ? max(0, pFirst - window + 1) : 0;
    const int ES = KVT == CALM_KV_FP8 ? 1 : 2;
    const u32* kb = (const u32*)((const char*)kCache + (long long)kh * maxCtx * Hd * ES);   // fp16: word = 2 values
    const u32* vb = (const u32*)((const char*)vCache + (long long)kh * maxCtx * Hd * ES);
    const u16* kb8 = (const u16*)kb;   // fp8: 2 values per 16 bits
    const u16* vb8 = (const u16*)vb;

    float m[PA_QPW], l[PA_QPW], acc[PA_QPW][PA_PER_LANE];
#pragma unroll
    for (int a = 0; a < PA_QPW; a++) {
        m[a] = -CALM_INF; l[a] = 0.f;
#pragma unroll
        for (int i = 0; i < PA_PER_LANE; i++) acc[a][i] = 0.f;
    }
    for (int c0 = kBegin; c0 <= pLast; c0 += PA_KC) {
        __syncthreads();   // previous chunk fully read (and sq written, first time)
        for (int i = threadIdx.x; i < PA_KC * hw; i += PA_THREADS) {
            int r = i / hw, w = i - r * hw;
            int j = c0 + r;
            bool ok = j <= pLast;
            if (KVT == CALM_KV_FP8) {
                sk[r * (hw + 1) + w] = ok ? e4m3x2_to_f16x2(kb8[(long long)j * hw + w]) : 0u;
                sv[r * hw + w] = ok ? e4m3x2_to_f16x2(vb8[(long long)j * hw + w]) : 0u;
            } else {
                sk[r * (hw + 1) + w] = ok ? kb[(long long)j * hw + w] : 0u;
                sv[r * hw + w] = ok ? vb[(long long)j * hw + w] : 0u;
            }
        }
        if (KVT == CALM_KV_FP8 && threadIdx.x < PA_KC) {
            int j = c0 + threadIdx.x;
            bool ok = j <= pLast;
            s_ks[threadIdx.x] = ok ? kScale[(long long)kh * maxCtx + j] : 0.f;
            s_vs[threadIdx.x] = ok ? vScale[(long long)kh * maxCtx + j] : 0.f;
        }
        __syncthreads();
        // scores of key c0 + lane for each of this warp's queries
        float s[PA_QPW];
#pragma unroll
        for (int a = 0; a < PA_QPW; a++) s[a] = 0.f;
        for (int w = 0; w < hw; w++) {
            u32 kw = sk[lane * (hw + 1) + w];
            float k0 = f16_to_f32((u16)(kw & 0xffffu)), k1 = f16_to_f32((u16)(kw >> 16));
#pragma unroll
            for (int a = 0; a < PA_QPW; a++) {
                pa_f2 qq = ((const pa_f2*)(sqb + (warp + a * PA_WARPS) * Hd))[w];   // broadcast 8-byte read (Hd even)
                s[a] = fmaf(qq.x, k0, fmaf(qq.y, k1, s[a]));
            }
        }
        const int j = c0 + lane;
        if (KVT == CALM_KV_FP8) {
            float ksc = s_ks[lane];
#pragma unroll
            for (int a = 0; a < PA_QPW; a++) s[a] *= ksc;
        }
        float pr[PA_QPW];   // this lane's key weight for each query (0: not visible)
        bool any = false;
#pragma unroll
        for (int a = 0; a < PA_QPW; a++) {
            int t = t0 + warp + a * PA_WARPS;
            int p = start + t;
            bool ok = t < T && j <= p && (window <= 0 || j > p - window);
            float sc = ok ? s[a] : -CALM_INF;
            float mn = fmaxf(m[a], warp_max(sc));
            pr[a] = 0.f;
            if (mn == -CALM_INF) continue;   // no visible key yet for this query (uniform across the warp)
            float corr = expf(m[a] - mn);
            pr[a] = ok ? expf(sc - mn) : 0.f;
            l[a] = l[a] * corr + warp_sum(pr[a]);
            m[a] = mn;
            any = true;
#pragma unroll
            for (int i = 0; i < PA_PER_LANE; i++) acc[a][i] *= corr;
        }
        if (!any) continue;   // uniform
        // weighted V: each cache row read once from shared memory for all the warp's queries
        for (int r = 0; r < PA_KC; r++) {
            float pj[PA_QPW];
            bool nz = false;
#pragma unroll
            for (int a = 0; a < PA_QPW; a++) { pj[a] = __shfl_sync(0xffffffffu, pr[a], r); nz |= pj[a] != 0.f; }
            if (!nz) continue;   // uniform: every lane got the same pj
            if (KVT == CALM_KV_FP8) {
                float vsc = s_vs[r];
#pragma unroll
                for (int a = 0; a < PA_QPW; a++) pj[a] *= vsc;
            }
#pragma unroll
            for (int i = 0; i < PA_PER_LANE; i++) {
                int d = lane + 32 * i;
                if (d < Hd) {
                    u32 vw = sv[r * hw + (d >> 1)];
                    float v = f16_to_f32((u16)((d & 1) ? (vw >> 16) : (vw & 0xffffu)));
#pragma unroll
                    for (int a = 0; a < PA_QPW; a++) acc[a][i] = fmaf(pj[a], v, acc[a][i]);
                }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < PA_QPW; a++) {
        int t = t0 + warp + a * PA_WARPS;
        if (t >= T) continue;
        float inv = 1.f / l[a];
        u16* o = out + (long long)t * H * Hd + (long long)h * Hd;
#pragma unroll
        for (int i = 0; i < PA_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < Hd) {
                float v = acc[a][i] * inv;   // a convex mix of fp16 cache values: within f16 range
                o[d] = odt == CALM_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(PA_THREADS) attention_prefill(const float* q, int ld, const u16* kCache, const u16* vCache, u16* out,
                                                                             int T, int start, int H, int K, int Hd, int maxCtx, int window, float scale, int odt) {
    attention_prefill_impl<CALM_KV_F16>(q, ld, kCache, vCache, out, T, start, H, K, Hd, maxCtx, window, scale, odt, 0, 0);
}

extern "C" __global__ void __launch_bounds__(PA_THREADS) attention_prefill_fp8(const float* q, int ld, const unsigned char* kCache, const unsigned char* vCache, u16* out,
                                                                                 int T, int start, int H, int K, int Hd, int maxCtx, int window, float scale, int odt,
                                                                                 const float* kScale, const float* vScale) {
    attention_prefill_impl<CALM_KV_FP8>(q, ld, kCache, vCache, out, T, start, H, K, Hd, maxCtx, window, scale, odt, kScale, vScale);
}

// prefill_attention.cu: the per-head steps of a batched (prefill) forward over T tokens at positions start .. start+T-1:
// q/k RMSNorm + RoPE + KV-cache write for every row, and causal attention of the T queries against the cache.
#include "common.cuh"
#include "fp8.cuh"
#include "qkv_rope.cuh"
#include "gemm_common.cuh"   // smem_addr, g_cp16, g_commit, g_wait, ldsm_x4


// qkv [T, H*Hd | K*Hd | K*Hd] f32 (row stride ld = (H+2K)*Hd). grid (H+2K, T): block (b, t) handles head b of row t at
// position start+t exactly as qkv_rope_cache (norm_rope.cu) does for one token (qkv_rope.cuh): q heads normed/rotated
// in place, k heads normed/rotated into kCache, v heads into vCache (this layer's [K, maxCtx, Hd] fp16).
// KVT CALM_KV_FP8: caches [K, maxCtx, Hd] e4m3 with row scales kScale/vScale [K, maxCtx] f32 (fp8.cuh).
// The general path (any head_dim <= QKV_MAX_HD, any rotDim): the launcher takes qkv_rope_rows_hd* below where it can.
template <int KVT>
__device__ __forceinline__ void qkv_rope_rows_impl(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                                   const float* ropeCos, const float* ropeSin, int rotDim,
                                                   void* kCache, void* vCache, int maxCtx, int H, int K, int Hd, int start,
                                                   float* kScale, float* vScale) {
    const int b = blockIdx.x, t = blockIdx.y;
    qkv_rope_head<KVT>(qkv + (long long)t * ld + (long long)b * Hd, b, start + t, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim,
                       kCache, vCache, maxCtx, H, K, Hd, kScale, vScale);
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

// ---- qkv_rope_rows, one warp per (row, head) ----------------------------------------------------------------------
// The same per-head step for head_dim HD = 32 * EPL (EPL 1, 2, 3, 4, 8: HD 32, 64, 96, 128, 256) when rotDim / 2 is a
// multiple of EPL (CudaPrefillKernels picks it; other shapes take qkv_rope_rows above). Blocks of W = blockDim / 32
// warps, grid (ceil((H+2K) / W), T): warp w of block (x, t) takes head b = x*W + w of row t. Lane l holds dims
// l*EPL .. l*EPL + EPL-1 in registers (one float4/float2 load each where EPL allows); the q/k norm's sum of squares
// is a warp sum; the rotate_half partner of lane l's dims (d +- rotDim/2) is lane l +- rotDim/(2*EPL), fetched with
// __shfl_sync, and the two lanes of a pair read the same cos/sin addresses in the same instruction; fp8: the row's
// amax is a warp max, the scale and bytes those of kv_write_row. Same formulas as qkv_rope_rows per element.
struct __align__(8) qr_f2 { float x, y; };
struct __align__(8) qr_u2 { u32 x, y; };

template <int N> __device__ __forceinline__ void qr_load(const float* p, float (&v)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; i++) {
            calm_f4 t = ((const calm_f4*)p)[i];
            v[4 * i] = t.x; v[4 * i + 1] = t.y; v[4 * i + 2] = t.z; v[4 * i + 3] = t.w;
        }
    } else if constexpr (N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N / 2; i++) { qr_f2 t = ((const qr_f2*)p)[i]; v[2 * i] = t.x; v[2 * i + 1] = t.y; }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) v[i] = p[i];
    }
}

template <int N> __device__ __forceinline__ void qr_store(float* p, const float (&v)[N]) {
    if constexpr (N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N / 4; i++)   // asm: a plain struct store came out as four 4-byte stores (NVRTC 11.8)
            asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" :: "l"(p + 4 * i), "f"(v[4 * i]), "f"(v[4 * i + 1]), "f"(v[4 * i + 2]), "f"(v[4 * i + 3]) : "memory");
    } else if constexpr (N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N / 2; i++)
            asm volatile("st.global.v2.f32 [%0], {%1, %2};" :: "l"(p + 2 * i), "f"(v[2 * i]), "f"(v[2 * i + 1]) : "memory");
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) p[i] = v[i];
    }
}

// N f32 -> N fp16 at p (8 * (N/8), 4 * (N/4) or 2 * (N/2) halves per store where N allows)
template <int N> __device__ __forceinline__ void qr_store_f16(u16* p, const float (&v)[N]) {
    if constexpr (N % 2 == 0) {
        u32 w[N / 2];
#pragma unroll
        for (int i = 0; i < N / 2; i++) w[i] = (u32)f32_to_f16(v[2 * i]) | ((u32)f32_to_f16(v[2 * i + 1]) << 16);
        if constexpr (N % 8 == 0) {
#pragma unroll
            for (int i = 0; i < N / 8; i++) { calm_u4 t; t.x = w[4 * i]; t.y = w[4 * i + 1]; t.z = w[4 * i + 2]; t.w = w[4 * i + 3]; ((calm_u4*)p)[i] = t; }
        } else if constexpr (N % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; i++) { qr_u2 t; t.x = w[2 * i]; t.y = w[2 * i + 1]; ((qr_u2*)p)[i] = t; }
        } else {
#pragma unroll
            for (int i = 0; i < N / 2; i++) ((u32*)p)[i] = w[i];
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) p[i] = f32_to_f16(v[i]);
    }
}

// N e4m3 bytes (low byte first) -> p (8 or 4 bytes per store where N allows)
template <int N> __device__ __forceinline__ void qr_store_fp8(unsigned char* p, const u32 (&q)[N]) {
    if constexpr (N % 4 == 0) {
        u32 w[N / 4];
#pragma unroll
        for (int i = 0; i < N / 4; i++) w[i] = q[4 * i] | (q[4 * i + 1] << 8) | (q[4 * i + 2] << 16) | (q[4 * i + 3] << 24);
        if constexpr (N % 8 == 0) {
#pragma unroll
            for (int i = 0; i < N / 8; i++) { qr_u2 t; t.x = w[2 * i]; t.y = w[2 * i + 1]; ((qr_u2*)p)[i] = t; }
        } else {
#pragma unroll
            for (int i = 0; i < N / 4; i++) ((u32*)p)[i] = w[i];
        }
    } else if constexpr (N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N / 2; i++) ((u16*)p)[i] = (u16)(q[2 * i] | (q[2 * i + 1] << 8));
    } else {
#pragma unroll
        for (int i = 0; i < N; i++) p[i] = (unsigned char)q[i];
    }
}

template <int KVT, int EPL>
__device__ __forceinline__ void qkv_rope_rows_warp_impl(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, int addOne,
                                                        const float* ropeCos, const float* ropeSin, int rotDim,
                                                        void* kCache, void* vCache, int maxCtx, int H, int K, int start,
                                                        float* kScale, float* vScale) {
    constexpr int HD = 32 * EPL;
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (b >= H + 2 * K) return;   // whole warps
    const int t = blockIdx.y, pos = start + t;
    const int kind = b < H ? 0 : (b < H + K ? 1 : 2);   // warp-uniform
    const int d0 = lane * EPL;
    float* vec = qkv + (long long)t * ld + (long long)b * HD + d0;
    float x[EPL];
    qr_load(vec, x);
    const int half = rotDim >> 1, hl = half / EPL;   // lanes per half of the rotated dims
    const bool lo = lane < hl, rot = kind != 2 && lane < 2 * hl;
    float c[EPL], s[EPL];
    if (rot) {   // loaded with x, not after the norm and the shuffle
        const long long j = (long long)pos * half + (lo ? d0 : d0 - half);
        qr_load(ropeCos + j, c);
        qr_load(ropeSin + j, s);
    }
    if (kind != 2) {
        if (qkNorm) {
            float g[EPL];
            qr_load((kind == 0 ? qNorm : kNorm) + d0, g);
            float ss = 0.f;
#pragma unroll
            for (int e = 0; e < EPL; e++) ss = fmaf(x[e], x[e], ss);
            ss = warp_sum(ss);
            float r = rsqrtf(ss / (float)HD + eps);
#pragma unroll
            for (int e = 0; e < EPL; e++) {
                float ge = g[e];
                if (addOne) ge += 1.f;
                x[e] = x[e] * r * ge;
            }
        }
        const int src = lo ? lane + hl : (rot ? lane - hl : lane);
        float p[EPL];
#pragma unroll
        for (int e = 0; e < EPL; e++) p[e] = __shfl_sync(0xffffffffu, x[e], src);
        if (rot) {
#pragma unroll
            for (int e = 0; e < EPL; e++) x[e] = lo ? x[e] * c[e] - p[e] * s[e] : x[e] * c[e] + p[e] * s[e];
        }
    }
    if (kind == 0) { qr_store(vec, x); return; }
    const int kh = kind == 1 ? b - H : b - H - K;
    const long long row = (long long)kh * maxCtx + pos;
    if (KVT == CALM_KV_FP8) {
        float am = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; e++) am = fmaxf(am, fabsf(x[e]));
        am = warp_max(am);
        const float sc = kv_fp8_scale(am);
        u32 q[EPL];
#pragma unroll
        for (int e = 0; e < EPL; e++) q[e] = kv_fp8_quant(x[e], sc);
        qr_store_fp8((unsigned char*)(kind == 1 ? kCache : vCache) + row * HD + d0, q);
        if (lane == 0) (kind == 1 ? kScale : vScale)[row] = sc;
    } else {
        qr_store_f16((u16*)(kind == 1 ? kCache : vCache) + row * HD + d0, x);
    }
}

#define QKV_ROWS_WARP_ENTRY(HDIM)                                                                                                      \
    extern "C" __global__ void qkv_rope_rows_hd##HDIM(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm, float eps, \
                                                      int addOne, const float* ropeCos, const float* ropeSin, int rotDim,               \
                                                      u16* kCache, u16* vCache, int maxCtx, int H, int K, int start) {                  \
        qkv_rope_rows_warp_impl<CALM_KV_F16, HDIM / 32>(qkv, ld, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim,          \
                                                         kCache, vCache, maxCtx, H, K, start, 0, 0);                                    \
    }                                                                                                                                   \
    extern "C" __global__ void qkv_rope_rows_fp8_hd##HDIM(float* qkv, int ld, const float* qNorm, const float* kNorm, int qkNorm,      \
                                                          float eps, int addOne, const float* ropeCos, const float* ropeSin, int rotDim, \
                                                          unsigned char* kCache, unsigned char* vCache, int maxCtx, int H, int K,       \
                                                          int start, float* kScale, float* vScale) {                                    \
        qkv_rope_rows_warp_impl<CALM_KV_FP8, HDIM / 32>(qkv, ld, qNorm, kNorm, qkNorm, eps, addOne, ropeCos, ropeSin, rotDim,          \
                                                         kCache, vCache, maxCtx, H, K, start, kScale, vScale);                          \
    }
QKV_ROWS_WARP_ENTRY(32)
QKV_ROWS_WARP_ENTRY(64)
QKV_ROWS_WARP_ENTRY(96)
QKV_ROWS_WARP_ENTRY(128)
QKV_ROWS_WARP_ENTRY(256)

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

// ---- tensor-core causal prefill attention (head_dim HD = 64 or 128) --------------------------------------------
// Same contract as attention_prefill (q f32 rows of stride ld, caches [K, maxCtx, HD] fp16, out [T, H*HD] in odt).
// grid (ceil(T/PT_QT), H), PT_THREADS threads (4 warps x 16 query rows; the last query tiles, which see the most
// keys, are launched first). Keys stream through shared memory in chunks of PT_KC(HD) rows of K and V (cp.async, two
// stages, rows padded to HD+8 halves: conflict-free ldmatrix). S = Q.K^T and O += P.V on mma.sync m16n8k16 (f16 in,
// fp32 accumulation); online softmax in the log2 domain in fp32. Accuracy as the fp32 kernel: Q (scaled by
// scale*log2 e) and P are each split into f16 hi + f16 lo (hi + lo carries ~22 bits) and both halves go through the
// tensor cores (2 mma per product), so rounding Q or P to f16 (11 bits, ~3e-4 relative) never reaches the output.
#define PT_QT 64
#define PT_KC(HD) ((HD) >= 128 ? 32 : 64)   // keys per chunk: 32 at HD 128 keeps S in 16 registers (64 keys: 255 + spill)
#define PT_THREADS 128

__device__ __forceinline__ void pt_ldsm_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
#endif
}
// (a, b) -> hi = f16x2(a, b) (a in the low half), lo = f16x2 of the remainders; |values| saturate at 65504
__device__ __forceinline__ void pt_split(float a, float b, u32& hi, u32& lo) {
    a = fminf(fmaxf(a, -65504.f), 65504.f);
    b = fminf(fmaxf(b, -65504.f), 65504.f);
    u16 ha = f32_to_f16(a), hb = f32_to_f16(b);
    u16 la = f32_to_f16(a - f16_to_f32(ha)), lb = f32_to_f16(b - f16_to_f32(hb));
    hi = (u32)ha | ((u32)hb << 16);
    lo = (u32)la | ((u32)lb << 16);
}

// K and V rows c0 .. c0+KC-1 (rows past jLast zero-filled) into sK / sV [KC][HD+8]
template <int HD, int KC>
__device__ __forceinline__ void pt_load_kv(u32 sK, u32 sV, const u16* kb, const u16* vb, int c0, int jLast) {
    const int ROW = HD + 8, CPR = HD / 8;
#pragma unroll
    for (int i = 0; i < KC * CPR / PT_THREADS; i++) {
        int c = threadIdx.x + i * PT_THREADS;
        int r = c / CPR, kc = (c % CPR) * 8;
        int j = c0 + r;
        bool ok = j <= jLast;
        long long off = ok ? (long long)j * HD + kc : 0;
        g_cp16(sK + (u32)(r * ROW + kc) * 2, kb + off, ok ? 16 : 0);
        g_cp16(sV + (u32)(r * ROW + kc) * 2, vb + off, ok ? 16 : 0);
    }
}

template <int HD>
__device__ __forceinline__ void attention_tc_impl(const float* q, int ld, const u16* kCache, const u16* vCache, u16* out,
                                                  int T, int start, int H, int K, int maxCtx, int window, float scale, int odt) {
    extern __shared__ __align__(16) u16 pt_sm[];
    const int ROW = HD + 8;      // halves per shared row
    const int NT = HD / 8;       // n8 tiles of O over d
    const int KS = HD / 16;      // k16 steps of S over d
    const int KC = PT_KC(HD);    // keys per chunk
    const int SN = KC / 8;       // n8 tiles of S over the chunk's keys
    const int h = blockIdx.y, kh = h / (H / K);
    const int t0 = (gridDim.x - 1 - blockIdx.x) * PT_QT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const int tw = t0 + warp * 16;                       // this warp's first query row
    const int tLast = min(t0 + PT_QT, T) - 1;
    const int pFirst = start + t0, pLast = start + tLast;
    const int pWarpLast = start + min(tw + 15, T - 1);   // the warp's last position (meaningful when tw < T)
    const int kBegin = window > 0 ? max(0, pFirst - window + 1) : 0;
    const u16* kb = kCache + (long long)kh * maxCtx * HD;
    const u16* vb = vCache + (long long)kh * maxCtx * HD;

    // this thread's Q fragments (rows tw+g and tw+g+8), scaled into the log2 domain, as f16 hi + lo
    const float qs = scale * 1.4426950408889634f;
    u32 qh[KS][4], ql[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int row = tw + g + (e & 1) * 8, col = ks * 16 + (e >> 1) * 8 + 2 * t4;
            float a = 0.f, b = 0.f;
            if (row < T) {
                const float* p = q + (long long)row * ld + (long long)h * HD + col;
                a = p[0] * qs; b = p[1] * qs;
            }
            pt_split(a, b, qh[ks][e], ql[ks][e]);
        }

    float o[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) { o[n][0] = 0.f; o[n][1] = 0.f; o[n][2] = 0.f; o[n][3] = 0.f; }
    float m0 = -CALM_INF, m1 = -CALM_INF, l0 = 0.f, l1 = 0.f;   // rows g, g+8 (l: this thread's partial sums)
    const int p0 = start + tw + g, p1 = p0 + 8;
    const u32 base = smem_addr(pt_sm);
    const u32 stageBytes = 2 * KC * ROW * 2;
    const int nChunks = (pLast - kBegin) / KC + 1;
    pt_load_kv<HD, KC>(base, base + KC * ROW * 2, kb, vb, kBegin, pLast);
    g_commit();
    // ldmatrix lanes: K (non-transposed, two key n8 tiles x k16 over d) and V (transposed, k16 keys x two d n8 tiles)
    const int bRow = (lane & 7) + ((lane >> 4) << 3), bCol = ((lane >> 3) & 1) * 8;
    const int vRow = (lane & 7) + (((lane >> 3) & 1) << 3), vCol = (lane >> 4) * 8;
    for (int ci = 0; ci < nChunks; ci++) {
        const int c0 = kBegin + ci * KC;
        if (ci + 1 < nChunks) {
            u32 st = base + ((ci + 1) & 1) * stageBytes;
            pt_load_kv<HD, KC>(st, st + KC * ROW * 2, kb, vb, c0 + KC, pLast);
        }
        g_commit();
        g_wait<1>();
        __syncthreads();   // chunk ci landed for every thread
        const u32 sK = base + (ci & 1) * stageBytes, sV = sK + KC * ROW * 2;
        // uniform per warp: no rows, or every key of the chunk after the warp's last position or before its window
        const bool skip = tw >= T || c0 > pWarpLast || (window > 0 && c0 + KC - 1 <= start + tw - window);
        if (!skip) {
            float sc[SN][4];
#pragma unroll
            for (int n = 0; n < SN; n++) { sc[n][0] = 0.f; sc[n][1] = 0.f; sc[n][2] = 0.f; sc[n][3] = 0.f; }
#pragma unroll
            for (int ks = 0; ks < KS; ks++)
#pragma unroll
                for (int jj = 0; jj < SN / 2; jj++) {
                    u32 b0, b1, b2, b3;
                    ldsm_x4(sK + (u32)((jj * 16 + bRow) * ROW + ks * 16 + bCol) * 2, b0, b1, b2, b3);
                    mma_16816(sc[2 * jj], qh[ks], b0, b1);
                    mma_16816(sc[2 * jj], ql[ks], b0, b1);
                    mma_16816(sc[2 * jj + 1], qh[ks], b2, b3);
                    mma_16816(sc[2 * jj + 1], ql[ks], b2, b3);
                }
            // causal / window / past-the-prompt mask; row maxima over the quad that holds a row
            float mx0 = -CALM_INF, mx1 = -CALM_INF;
#pragma unroll
            for (int n = 0; n < SN; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int key = c0 + n * 8 + 2 * t4 + (e & 1);
                    int p = e < 2 ? p0 : p1;
                    bool ok = key <= p && key <= pLast && (window <= 0 || key > p - window);
                    float v = ok ? sc[n][e] : -CALM_INF;
                    sc[n][e] = v;
                    if (e < 2) mx0 = fmaxf(mx0, v); else mx1 = fmaxf(mx1, v);
                }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1)); mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1)); mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
            const float mu0 = mn0 == -CALM_INF ? 0.f : mn0, mu1 = mn1 == -CALM_INF ? 0.f : mn1;   // no visible key yet: p = 0
            const float corr0 = exp2f(m0 - mu0), corr1 = exp2f(m1 - mu1);
            m0 = mn0; m1 = mn1;
            l0 *= corr0; l1 *= corr1;
#pragma unroll
            for (int n = 0; n < NT; n++) { o[n][0] *= corr0; o[n][1] *= corr0; o[n][2] *= corr1; o[n][3] *= corr1; }
            // P of each k16 slice of keys as A fragments (the S accumulator layout of two n8 tiles is the A layout)
#pragma unroll
            for (int kk = 0; kk < KC / 16; kk++) {
                float pa[2][4];
#pragma unroll
                for (int u = 0; u < 2; u++)
#pragma unroll
                    for (int e = 0; e < 4; e++) pa[u][e] = exp2f(sc[2 * kk + u][e] - (e < 2 ? mu0 : mu1));
                l0 += pa[0][0] + pa[0][1] + pa[1][0] + pa[1][1];
                l1 += pa[0][2] + pa[0][3] + pa[1][2] + pa[1][3];
                u32 ah[4], al[4];
                pt_split(pa[0][0], pa[0][1], ah[0], al[0]);   // row g,   keys 2t, 2t+1
                pt_split(pa[0][2], pa[0][3], ah[1], al[1]);   // row g+8, keys 2t, 2t+1
                pt_split(pa[1][0], pa[1][1], ah[2], al[2]);   // row g,   keys 8+2t, 8+2t+1
                pt_split(pa[1][2], pa[1][3], ah[3], al[3]);   // row g+8, keys 8+2t, 8+2t+1
#pragma unroll
                for (int dn = 0; dn < NT / 2; dn++) {
                    u32 b0, b1, b2, b3;
                    pt_ldsm_t(sV + (u32)((kk * 16 + vRow) * ROW + dn * 16 + vCol) * 2, b0, b1, b2, b3);
                    mma_16816(o[2 * dn], ah, b0, b1);
                    mma_16816(o[2 * dn], al, b0, b1);
                    mma_16816(o[2 * dn + 1], ah, b2, b3);
                    mma_16816(o[2 * dn + 1], al, b2, b3);
                }
            }
        }
        __syncthreads();   // every warp is done with this stage before the next iteration refills it
    }
    g_wait<0>();
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1); l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1); l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;   // every query sees at least its own key: l > 0
#pragma unroll
    for (int u = 0; u < 2; u++) {
        int row = tw + g + u * 8;
        if (row >= T) continue;
        float inv = u ? inv1 : inv0;
        u32* orow = (u32*)(out + (long long)row * H * HD + (long long)h * HD);
#pragma unroll
        for (int n = 0; n < NT; n++) {
            float a = o[n][2 * u] * inv, b = o[n][2 * u + 1] * inv;   // a convex mix of fp16 cache values: within f16 range
            u32 w = odt == CALM_BF16 ? ((u32)f32_to_bf16(a) | ((u32)f32_to_bf16(b) << 16)) : ((u32)f32_to_f16(a) | ((u32)f32_to_f16(b) << 16));
            orow[(n * 8 + 2 * t4) >> 1] = w;
        }
    }
}

// dynamic shared memory: 2 stages x (K + V) x PT_KC(HD) x (HD + 8) halves (CudaPrefillKernels.AttentionTcSharedBytes)
#define PT_ENTRY(HD) \
    extern "C" __global__ void __launch_bounds__(PT_THREADS) attention_prefill_tc##HD(const float* q, int ld, const u16* kCache, const u16* vCache, u16* out, \
            int T, int start, int H, int K, int maxCtx, int window, float scale, int odt) { \
        attention_tc_impl<HD>(q, ld, kCache, vCache, out, T, start, H, K, maxCtx, window, scale, odt); \
    }
PT_ENTRY(64)
PT_ENTRY(128)

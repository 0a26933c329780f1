// decode_persistent.cu: one whole decode step (embedding .. classifier and argmax) as ONE persistent kernel.
//
// Why: a step of the per-kernel graph is ~290 kernels; every kernel boundary leaves the memory system idle for a few
// microseconds (ramp-up, tail, launch) — measured ~0.8 ms of a 4.3 ms Llama-3-8B step on the H200. Here every block
// stays resident (grid = multiprocessors x blocks per SM, launched cooperatively so all blocks are co-resident) and
// the stages are separated by grid-wide barriers. The weights do not depend on the activations, so before a block
// waits at a barrier each of its warps issues the loads of its first weight rows of the NEXT stage: the DRAM stream
// never stops for the barrier, the tail of a stage or the activation fetch.
//
// Stages of a dense layer l (B = grid barrier):
//   A  xs = rmsnorm(x) * attn_norm; rows of Wqkv in pairs (d, d + Hd/2) of one head, so each warp finishes a
//      rotary pair: q (roped) -> q buffer, k (roped) / v -> the fp16 KV cache at the step's position   B
//   Att split decode attention (attention_split.cuh) over (kv head, chunk, head group) work items; the last block of
//      a kv head merges the chunks (no barrier of its own)                                             B
//   C  x += Wo att (+ bias)                                                                           B
//   D  xs = rmsnorm(x) * ffn_norm; rows of Wgu in pairs (gate i, up i): h[i] = act(g) * u             B
//   E  x += Wdown h (+ bias)                                                                          B
// then rmsnorm + classifier: logits, with each block's argmax; the last block to finish picks the winner.
//
// Matvec inside a stage: the stage input (normed x, att or h) is copied into shared memory once per block, permuted
// so that the 16-byte x reads of a warp are contiguous (conflict-free) — lane l of 32-vector chunk c needs elements
// (c*32 + l)*E .. +E-1 (E = weights per 16-byte vector: 8 bf16/f16, 16 fp8, 32 int4); they are stored at
// c*32E + k*128 + 4l + j (k < E/4, j < 4). A warp owns R rows at a time (pairs in A and D; RS in C, E and the
// classifier); its weights stream through a per-warp ring of shared-memory slots filled by cp.async (see PfRing).
//
// Coherence: everything one block reads that another block wrote in this launch is read with ld.global.cg (L2), never
// through the non-coherent L1 (x, att, h, q, residuals, attention partials). The KV row of the step's position is
// written in A and first read in Att: no SM has it cached before (L1/texture caches start empty at each launch).
#include "common.cuh"
#include "quant.cuh"
#include "attention_split.cuh"

#define PF_THREADS 256
#define PF_WARPS (PF_THREADS / 32)
#define PF_NV 16            // 16-byte weight vectors in flight per lane (all rows of a group)

// weight formats (the C# side passes the same codes)
#define PF_FP8 10
#define PF_INT4 11

// one layer's device pointers (CudaBackend.Persistent.cs writes [L] of these; field order and sizes must match)
struct PLayer {
    const float* attnNorm;    // [D] f32
    const float* ffnNorm;     // [D] f32
    const unsigned char* wqkv; const void* sqkv; const float* bqkv;   // [Q+2KV, D] weights, scales (fp8/int4) or 0, bias or 0
    const unsigned char* wo;   const void* so;   const float* bo;     // [D, Q]
    const unsigned char* wgu;  const void* sgu;  const float* bgu;    // [2F, D] (gate rows, then up rows)
    const unsigned char* wdown; const void* sdown; const float* bdown; // [D, F]
};

// everything the step needs (device memory, written once by the host)
struct PArgs {
    const PLayer* layers;
    const void* emb;              // [V, D] (embDt)
    const unsigned char* lm; const void* lmScales;   // [V, D] in the layer format
    const float* finalNorm;       // [D]
    float* x;                     // [D] residual stream
    float* q;                     // [H*Hd] roped queries
    float* att;                   // [H*Hd] attention output
    float* h;                     // [F] ffn hidden
    float* logits;                // [V]
    u16* kCache; u16* vCache;     // [L, K, maxCtx, Hd] fp16
    const float* cosT; const float* sinT;   // [maxCtx, Hd/2]
    float* attWs;                 // split-attention workspace (attention_split.cuh)
    unsigned* sync;               // [0] arrivals, [1] generation, [2] argmax blocks done
    float* amaxV; int* amaxI;     // [gridDim] per-block argmax
    int* result;                  // [2] argmax index, its value's bits
    long long* stamps;            // [2 + 5L + 1] %globaltimer after each barrier (block 0), or null
    const StepParams* sp;
    int L, D, H, K, Hd, F, V, maxCtx, window, S, embDt, addOne, act;
    float eps, attScale, embScale;
};

// ---- weight formats ----------------------------------------------------------------------------------------------
template <int WF> struct Fmt;
// bf16 / f16: 8 weights per 16-byte vector, no scales
template <int DT> struct FmtHalf {
    static constexpr int E = 8;
    static __device__ __forceinline__ int nvec(int cols) { return cols >> 3; }
    static __device__ __forceinline__ long long rowBytes(int cols) { return (long long)cols * 2; }
    static __device__ __forceinline__ float dot(const calm_u4 w, const calm_f4* xv, u16) {
        float w0, w1, w2, w3, w4, w5, w6, w7;
        unpack2<DT>(w.x, w0, w1); unpack2<DT>(w.y, w2, w3);
        unpack2<DT>(w.z, w4, w5); unpack2<DT>(w.w, w6, w7);
        float s = w0 * xv[0].x;
        s = fmaf(w1, xv[0].y, s); s = fmaf(w2, xv[0].z, s); s = fmaf(w3, xv[0].w, s);
        s = fmaf(w4, xv[1].x, s); s = fmaf(w5, xv[1].y, s); s = fmaf(w6, xv[1].z, s); s = fmaf(w7, xv[1].w, s);
        return s;
    }
};
template <> struct Fmt<CALM_BF16> : FmtHalf<CALM_BF16> {};
template <> struct Fmt<CALM_F16> : FmtHalf<CALM_F16> {};
// fp8: q [rows, cols] e4m3 (cols % 16 == 0), one f32 scale per row applied to the row total
template <> struct Fmt<PF_FP8> {
    static constexpr int E = 16;
    static __device__ __forceinline__ int nvec(int cols) { return cols >> 4; }
    static __device__ __forceinline__ long long rowBytes(int cols) { return (long long)cols; }
    static __device__ __forceinline__ float dot(const calm_u4 w, const calm_f4* xv, u16) { return dot16_fp8(w, xv); }
};
// int4: [rows, G*16] nibbles (G = ceil(cols/32) groups of 32, one 16-byte vector each), one f16 scale per group
template <> struct Fmt<PF_INT4> {
    static constexpr int E = 32;
    static __device__ __forceinline__ int nvec(int cols) { return (cols + 31) >> 5; }
    static __device__ __forceinline__ long long rowBytes(int cols) { return (long long)((cols + 31) >> 5) * 16; }
    static __device__ __forceinline__ float dot(const calm_u4 w, const calm_f4* xv, u16 d) {
        float s = dot8_int4(w.x, xv[0], xv[1]) + dot8_int4(w.y, xv[2], xv[3]) + dot8_int4(w.z, xv[4], xv[5]) + dot8_int4(w.w, xv[6], xv[7]);
        return f16_to_f32(d) * s;
    }
};

// ---- helpers -----------------------------------------------------------------------------------------------------
__device__ __forceinline__ float pf_ld_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ long long pf_globaltimer() {
    long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Grid-wide barrier, in two halves so the weight loads of the next stage go out between them:
//   pf_arrive: the block's writes are done (bar.sync), lane 0 of the last warp adds 1 to the arrival count with release semantics.
//   pf_wait:   the same thread (its warp never has prefetched loads outstanding, so nothing it waits on sits behind
//              DRAM traffic) spins until the count reaches target (nb per barrier so far), then bar.sync.
// Callers arrive before they issue the next stage's loads, wait after.
// The count only grows during a step; the block that finishes last (argmax) resets it to 0 for the next launch.
// Needs every block co-resident (cooperative launch).
#define PF_SYNC_THREAD (PF_THREADS - 32)
__device__ __forceinline__ void pf_arrive(unsigned* count) {
    __syncthreads();
    if (threadIdx.x == PF_SYNC_THREAD) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" :: "l"(count) : "memory");
    __syncthreads();
}
__device__ __forceinline__ void pf_wait(const unsigned* count, unsigned target) {
    if (threadIdx.x == PF_SYNC_THREAD) {
        unsigned v;
        do { asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory"); } while ((int)(v - target) < 0);
    }
    __syncthreads();
}

// position of element e of a row in the permuted shared-memory x (see the file comment)
template <int E>
__device__ __forceinline__ int pf_xpos(int e) {
    int c = e / (32 * E), rem = e - c * (32 * E);
    int l = rem / E, i = rem - l * E;
    return c * (32 * E) + (i >> 2) * 128 + 4 * l + (i & 3);
}

// xs <- src[0..n) (times rsqrt(mean(src^2) + eps) * (g or 1 + g) when g), permuted; zeros up to whole chunks.
// n % 4 == 0. Loads are 16-byte ld.global.cg, 8 in flight per thread (one L2 round trip for n <= 8192).
template <int E>
__device__ __forceinline__ void pf_fill_xs(float* xs, const float* src, int n, const float* g, float eps, int addOne) {
    const int padded4 = ((n + 32 * E - 1) / (32 * E)) * (32 * E) / 4;
    const int n4 = n >> 2;
    float ss = 0.f;
    for (int b = 0; b < padded4; b += 8 * PF_THREADS) {
        calm_f4 v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int i = b + k * PF_THREADS + threadIdx.x;
            if (i < n4) v[k] = ld_cg_f4(src + 4 * i);
            else v[k].x = v[k].y = v[k].z = v[k].w = 0.f;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int i = b + k * PF_THREADS + threadIdx.x;
            if (i < padded4) {
                ss = fmaf(v[k].x, v[k].x, ss); ss = fmaf(v[k].y, v[k].y, ss); ss = fmaf(v[k].z, v[k].z, ss); ss = fmaf(v[k].w, v[k].w, ss);
                *(calm_f4*)(xs + pf_xpos<E>(4 * i)) = v[k];   // 4 consecutive elements stay consecutive (E % 4 == 0)
            }
        }
    }
    if (g) {
        ss = block_sum(ss);   // synchronizes the block
        float r = rsqrtf(ss / (float)n + eps);
        for (int i = threadIdx.x; i < n4; i += PF_THREADS) {   // each thread rescales what it wrote
            calm_f4* p = (calm_f4*)(xs + pf_xpos<E>(4 * i));
            calm_f4 x = *p, gv = *(const calm_f4*)(g + 4 * i);
            if (addOne) { gv.x += 1.f; gv.y += 1.f; gv.z += 1.f; gv.w += 1.f; }
            x.x *= r * gv.x; x.y *= r * gv.y; x.z *= r * gv.z; x.w *= r * gv.w;
            *p = x;
        }
    }
    __syncthreads();
}

// A matrix in the layer format: values, scales (fp8 [rows] f32, int4 [rows, G] f16) and its shape.
struct PfMat {
    const unsigned char* w; const void* s; int rows, cols;
};

// Rows of row group gi: pairs (stage A: rotary pairs of a head; stage D: gate i / up i) or R consecutive rows.
// A row >= rows is clamped (its result dropped by the epilogue).
#define PF_ROWS_QKV 0
#define PF_ROWS_GU 1
#define PF_ROWS_SEQ 2
template <int R, int KIND>
__device__ __forceinline__ void pf_rows(int gi, int (&r)[R], int rows, int Hd, int F) {
    if (KIND == PF_ROWS_QKV) {
        int half = Hd >> 1, unit = gi / half, i = gi - unit * half;
        r[0] = unit * Hd + i;
        if (R > 1) r[R > 1 ? 1 : 0] = unit * Hd + i + half;
    } else if (KIND == PF_ROWS_GU) {
        r[0] = gi;
        if (R > 1) r[R > 1 ? 1 : 0] = F + gi;
    } else {
#pragma unroll
        for (int i = 0; i < R; i++) r[i] = min(gi * R + i, rows - 1);
    }
}

template <int WF, int R>
__device__ __forceinline__ void pf_row_ptrs(const PfMat& m, const int (&r)[R], const unsigned char* (&rp)[R], const u16* (&dp)[R]) {
    const long long rb = Fmt<WF>::rowBytes(m.cols);
    const int G = Fmt<WF>::nvec(m.cols);
#pragma unroll
    for (int i = 0; i < R; i++) {
        rp[i] = m.w + (long long)r[i] * rb;
        dp[i] = WF == PF_INT4 ? (const u16*)m.s + (long long)r[i] * G : (const u16*)0;
    }
}

// This block's share [g0, g1) of n row groups (contiguous, balanced).
__device__ __forceinline__ void pf_share(int n, int& g0, int& g1) {
    g0 = (int)((long long)n * blockIdx.x / gridDim.x);
    g1 = (int)((long long)n * (blockIdx.x + 1) / gridDim.x);
}

// ---- the weight stream: a per-warp ring of NSLOT batches in shared memory, filled by cp.async ----------------------
// A batch is PF_NV 16-byte vectors per lane: vectors v0 + 32u + lane (u < U = PF_NV/R) of the R rows of one group,
// at slot[s][u*R + i][lane] (each lane reads back only what it copied itself: no warp sync for the weights). int4
// group scales (R rows x 32U f16, contiguous per row) go to a scale slot, copied 16 bytes at a time by any lane (the
// consumer then syncs the warp). The ring holds PF_NSLOT batches, so 16 KB per warp are in flight with no registers
// held; before a barrier each warp copies the first batches of its next stage into the ring.
#define PF_NSLOT 2
#define PF_SLOT_VECS (PF_NV * 32)            // 16-byte vectors per slot (8 KB)
#define PF_SLOT_SCALES (PF_NV * 32)          // int4 scales per slot (R * 32U = 32 * PF_NV)

struct PfRing {
    calm_u4* w;      // this warp's [PF_NSLOT][PF_SLOT_VECS]
    u16* d;          // this warp's [PF_NSLOT][PF_SLOT_SCALES] (int4)
    int issued;      // batches of the coming stage already in the ring (0 or PF_NSLOT)
};

// the batch a warp issues next: group gi (global index), first vector v0
struct PfCur { int gi, v0; };

template <int WF, int R, int KIND>
__device__ __forceinline__ void pf_issue_batch(PfRing& ring, int slot, const PfMat& m, PfCur& c, int g1, int Hd, int F, int lane) {
    constexpr int U = PF_NV / R;
    const int nvec = Fmt<WF>::nvec(m.cols);
    if (c.gi < g1) {
        int r[R];
        pf_rows<R, KIND>(c.gi, r, m.rows, Hd, F);
        const unsigned char* rp[R]; const u16* dp[R];
        pf_row_ptrs<WF, R>(m, r, rp, dp);
        calm_u4* dst = ring.w + slot * PF_SLOT_VECS + lane;
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = c.v0 + 32 * u + lane;
#pragma unroll
            for (int i = 0; i < R; i++)   // past the row: zero-filled (its x is zero too, but NaN * 0 must not happen)
                cp_async16(dst + (u * R + i) * 32, v < nvec ? rp[i] + (long long)v * 16 : rp[i], v < nvec ? 16 : 0);
        }
        if (WF == PF_INT4) {
            // R rows x 32U scales = 4RU 16-byte pieces (64 for R*U = 16): two per lane
            u16* sd = ring.d + slot * PF_SLOT_SCALES;
#pragma unroll
            for (int k = lane; k < 4 * R * U; k += 32) {
                int i = k / (4 * U), part = k - i * (4 * U);
                int sv = c.v0 + part * 8;   // first of 8 scales
                cp_async16(sd + i * 32 * U + part * 8, sv < nvec ? dp[i] + sv : dp[i], sv < nvec ? 16 : 0);
            }
        }
        c.v0 += 32 * U;
        if (c.v0 >= nvec) { c.v0 = 0; c.gi += PF_WARPS; }
    }
    g_commit();   // also when empty: every consume step finds exactly PF_NSLOT groups behind it
}

// Folds the batch in ring slot `slot` (vectors v0 ..) into acc (x from the permuted shared memory).
template <int WF, int R>
__device__ __forceinline__ void pf_compute(const PfRing& ring, int slot, const float* xs, int v0, int nvec, int lane, float (&acc)[R]) {
    constexpr int U = PF_NV / R, E = Fmt<WF>::E;
    const calm_u4* w = ring.w + slot * PF_SLOT_VECS + lane;
    const u16* sd = ring.d + slot * PF_SLOT_SCALES;
#pragma unroll
    for (int u = 0; u < U; u++) {
        if (v0 + 32 * u >= nvec) break;   // warp-uniform
        const calm_f4* xp = (const calm_f4*)(xs + (v0 / 32 + u) * (32 * E)) + lane;
        calm_f4 xv[E / 4];
#pragma unroll
        for (int k = 0; k < E / 4; k++) xv[k] = xp[32 * k];
#pragma unroll
        for (int i = 0; i < R; i++) acc[i] += Fmt<WF>::dot(w[(u * R + i) * 32], xv, WF == PF_INT4 ? sd[i * 32 * U + 32 * u + lane] : (u16)0);
    }
}

// Before a barrier: copies the first PF_NSLOT batches of this warp's share of the next stage into the ring (not the
// barrier's spinning warp, whose loads must never be outstanding while it waits).
template <int WF, int R, int KIND>
__device__ __forceinline__ void pf_prefetch(PfRing& ring, const PfMat& m, int g0, int g1, int Hd, int F) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    ring.issued = 0;
    if (warp == PF_SYNC_THREAD / 32) return;
    PfCur c = { g0 + warp, 0 };
#pragma unroll
    for (int s = 0; s < PF_NSLOT; s++) pf_issue_batch<WF, R, KIND>(ring, s, m, c, g1, Hd, F, lane);
    ring.issued = PF_NSLOT;
}

// The row groups [g0, g1) of this block, warps taking every PF_WARPS-th. At each group start pro(gi, r, lane) returns
// the values its epilogue needs (residual, bias, rotary cos/sin: their loads overlap the weight stream);
// epi(gi, r, sums, pro, lane) gets the warp's totals (fp8 row scales applied) in every lane.
template <int WF, int R, int KIND, class Pro, class Epi>
__device__ __forceinline__ void pf_matvec(PfRing& ring, const PfMat& m, int g0, int g1, const float* xs, int Hd, int F, Pro pro, Epi epi) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int U = PF_NV / R;
    const int nvec = Fmt<WF>::nvec(m.cols);
    PfCur prod = { g0 + warp, 0 };
    for (int k = 0; k < ring.issued; k++) {   // skip what the prefetch already issued
        prod.v0 += 32 * U;
        if (prod.v0 >= nvec) { prod.v0 = 0; prod.gi += PF_WARPS; }
    }
    for (int s = ring.issued; s < PF_NSLOT; s++) pf_issue_batch<WF, R, KIND>(ring, s, m, prod, g1, Hd, F, lane);
    ring.issued = 0;
    int slot = 0;
    for (int gi = g0 + warp; gi < g1; gi += PF_WARPS) {
        int r[R];
        pf_rows<R, KIND>(gi, r, m.rows, Hd, F);
        float rs[R];
#pragma unroll
        for (int i = 0; i < R; i++) rs[i] = WF == PF_FP8 ? ((const float*)m.s)[r[i]] : 1.f;
        calm_f4 pv = pro(gi, r, lane);
        float acc[R];
#pragma unroll
        for (int i = 0; i < R; i++) acc[i] = 0.f;
        for (int v0 = 0; v0 < nvec; v0 += 32 * U) {
            g_wait<PF_NSLOT - 1>();   // the oldest batch (this slot) has landed
            if (WF == PF_INT4) __syncwarp();  // scales were copied by other lanes
            pf_compute<WF, R>(ring, slot, xs, v0, nvec, lane, acc);
            if (WF == PF_INT4) __syncwarp();  // every lane read the scales before the slot is refilled
            pf_issue_batch<WF, R, KIND>(ring, slot, m, prod, g1, Hd, F, lane);
            slot = slot + 1 == PF_NSLOT ? 0 : slot + 1;
        }
#pragma unroll
        for (int i = 0; i < R; i++) acc[i] = warp_sum(acc[i]) * rs[i];
        epi(gi, r, acc, pv, lane);
    }
}

// The split attention of one work item; U = 8 rows in flight per row-stream (2 for 8 heads per group): with one
// 256-thread block per multiprocessor (255 registers each) a block must keep as many loads in flight as two did.
template <int MAXG>
__device__ __forceinline__ void pf_attention(const float* q, const u16* kc, const u16* vc, float* att, float* ws, int H, int K, int Hd, int maxCtx,
                                          int window, float scale, int S, const StepParams* sp, int kh, int split, int z, int Z) {
    attention_split_impl<MAXG, (MAXG == 8 ? 2 : 8), false>(q, kc, vc, att, ws, H, K, Hd, maxCtx, window, scale, S, sp, kh, split, z, Z);
}

// ---- the step ----------------------------------------------------------------------------------------------------
template <int WF, int MAXG, int RS>
__device__ __forceinline__ void decode_persistent_impl(const PArgs& a) {
    extern __shared__ __align__(16) float xs[];
    __shared__ float s_bv[PF_WARPS];
    __shared__ int s_bi[PF_WARPS];
    __shared__ int s_lastBlock;
    constexpr int E = Fmt<WF>::E;
    const unsigned nb = gridDim.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int D = a.D, H = a.H, K = a.K, Hd = a.Hd, F = a.F, L = a.L;
    const int Q = H * Hd, KV = K * Hd;
    const int pos = a.sp->pos, token = a.sp->token;
    const int half = Hd >> 1;
    long long* stamps = blockIdx.x == 0 && threadIdx.x == 0 ? a.stamps : (long long*)0;
    int si = 0;
    if (stamps) stamps[si] = pf_globaltimer();
    si++;
    // the weight ring after the stage input in dynamic shared memory (CudaBackend sizes both)
    const int xsFloats = ((max(D, max(Q, F)) + 32 * E - 1) / (32 * E)) * (32 * E);
    PfRing ring;
    ring.w = (calm_u4*)(xs + xsFloats) + warp * PF_NSLOT * PF_SLOT_VECS;
    ring.d = (u16*)((calm_u4*)(xs + xsFloats) + PF_WARPS * PF_NSLOT * PF_SLOT_VECS) + warp * PF_NSLOT * PF_SLOT_SCALES;
    ring.issued = 0;
    unsigned target = 0;     // arrivals the next barrier waits for

    // row groups per stage
    const int nA = (H + 2 * K) * half;          // rotary pairs of q, k, v heads
    const int nC = (D + RS - 1) / RS;
    const int nD = F;                           // (gate i, up i) pairs
    const int nE = (D + RS - 1) / RS;
    const int nLm = (a.V + RS - 1) / RS;
    int a0, a1, c0, c1, d0, d1, e0, e1, m0, m1;
    pf_share(nA, a0, a1); pf_share(nC, c0, c1); pf_share(nD, d0, d1); pf_share(nE, e0, e1); pf_share(nLm, m0, m1);

    // split attention geometry (as attention_split_impl computes it from the position)
    const int G = H / K, Z = (G + MAXG - 1) / MAXG, S = a.S;
    const int start = (a.window > 0 && pos - a.window + 1 > 0) ? pos - a.window + 1 : 0;
    const int n = pos - start + 1;
    int chunk = (n + S - 1) / S;
    chunk = (chunk + 63) & ~63;
    const int nsplit = (n + chunk - 1) / chunk;
    const int items = K * S * Z;
    bool hasAtt = false;
    for (int it = blockIdx.x; it < items; it += nb) if ((it / K) % S < nsplit) hasAtt = true;

    auto arrive = [&]() { pf_arrive(a.sync); };
    auto wait = [&]() {
        target += nb;
        pf_wait(a.sync, target);
        if (stamps) stamps[si] = pf_globaltimer();
        si++;
    };

    // x[row] += W[row] . xs (+ bias[row]) for the row groups [g0, g1) of this block (stages C and E)
    auto residual_matvec = [&](const PfMat& m, int g0, int g1, const float* bias) {
        pf_matvec<WF, RS, PF_ROWS_SEQ>(ring, m, g0, g1, xs, Hd, F, [&](int gi, const int (&r)[RS], int ln) {
            calm_f4 p; p.x = p.y = p.z = p.w = 0.f;   // lane i: (residual, bias) of row gi*RS + i
            int row = gi * RS + ln;
            if (ln < RS && row < D) { p.x = pf_ld_cg(a.x + row); if (bias) p.y = bias[row]; }
            return p;
        }, [&](int gi, const int (&r)[RS], const float (&s)[RS], const calm_f4& p, int ln) {
#pragma unroll
            for (int i = 0; i < RS; i++) {
                int row = gi * RS + i;
                if (ln == i && row < D) a.x[row] = p.x + s[i] + p.y;
            }
        });
    };

    // embedding -> x (every block a slice), then the first qkv rows stream in during the barrier
    {
        const PLayer& l0 = a.layers[0];
        PfMat m = { l0.wqkv, l0.sqkv, Q + 2 * KV, D };
        for (int d = blockIdx.x * PF_THREADS + threadIdx.x; d < D; d += nb * PF_THREADS) {
            float v;
            if (a.embDt == CALM_BF16) v = bf16_to_f32(((const u16*)a.emb)[(long long)token * D + d]);
            else if (a.embDt == CALM_F16) v = f16_to_f32(((const u16*)a.emb)[(long long)token * D + d]);
            else v = ((const float*)a.emb)[(long long)token * D + d];
            a.x[d] = v * a.embScale;
        }
        arrive();
        pf_prefetch<WF, 2, PF_ROWS_QKV>(ring, m, a0, a1, Hd, F);
        wait();
    }

    for (int l = 0; l < L; l++) {
        const PLayer& ly = a.layers[l];
        u16* kc = a.kCache + (long long)l * K * a.maxCtx * Hd;
        u16* vc = a.vCache + (long long)l * K * a.maxCtx * Hd;

        // ---- A: qkv with rotary pairs, k/v into the cache ----
        pf_fill_xs<E>(xs, a.x, D, ly.attnNorm, a.eps, a.addOne);
        {
            PfMat m = { ly.wqkv, ly.sqkv, Q + 2 * KV, D };
            const float* bias = ly.bqkv;
            pf_matvec<WF, 2, PF_ROWS_QKV>(ring, m, a0, a1, xs, Hd, F, [&](int gi, const int (&r)[2], int ln) {
                calm_f4 p; p.x = p.y = p.z = p.w = 0.f;   // (cos, sin, bias 0, bias 1)
                if (ln == 0) {
                    int unit = gi / half, i = gi - unit * half;
                    if (unit < H + K) { p.x = a.cosT[(long long)pos * half + i]; p.y = a.sinT[(long long)pos * half + i]; }
                    if (bias) { p.z = bias[r[0]]; p.w = bias[r[1]]; }
                }
                return p;
            }, [&](int gi, const int (&r)[2], const float (&s)[2], const calm_f4& p, int ln) {
                if (ln != 0) return;
                int unit = gi / half, i = gi - unit * half;
                float s0 = s[0] + p.z, s1 = s[1] + p.w;
                if (unit < H + K) {
                    float o0 = s0 * p.x - s1 * p.y, o1 = s1 * p.x + s0 * p.y;
                    s0 = o0; s1 = o1;
                }
                if (unit < H) { a.q[r[0]] = s0; a.q[r[1]] = s1; }
                else {
                    int kh = unit < H + K ? unit - H : unit - H - K;
                    u16* cache = (unit < H + K ? kc : vc) + ((long long)kh * a.maxCtx + pos) * Hd;
                    cache[i] = f32_to_f16(s0);
                    cache[i + half] = f32_to_f16(s1);
                }
            });
        }
        // ---- Att: blocks with attention work wait first, the others prefetch the o projection meanwhile ----
        {
            PfMat mo = { ly.wo, ly.so, D, Q };
            if (hasAtt) {
                arrive();
                wait();
                for (int it = blockIdx.x; it < items; it += nb) {
                    int kh = it % K, rest = it / K, split = rest % S, z = rest / S;
                    if (split < nsplit)
                        pf_attention<MAXG>(a.q, kc, vc, a.att, a.attWs, H, K, Hd, a.maxCtx, a.window, a.attScale, S, a.sp, kh, split, z, Z);
                }
                arrive();
                pf_prefetch<WF, RS, PF_ROWS_SEQ>(ring, mo, c0, c1, Hd, F);
                wait();
            } else {
                arrive();
                pf_prefetch<WF, RS, PF_ROWS_SEQ>(ring, mo, c0, c1, Hd, F);
                wait();
                arrive();
                wait();
            }
        }
        // ---- C: x += Wo att ----
        pf_fill_xs<E>(xs, a.att, Q, (const float*)0, 0.f, 0);
        {
            PfMat m = { ly.wo, ly.so, D, Q };
            residual_matvec(m, c0, c1, ly.bo);
            PfMat mgu = { ly.wgu, ly.sgu, 2 * F, D };
            arrive();
            pf_prefetch<WF, 2, PF_ROWS_GU>(ring, mgu, d0, d1, Hd, F);
            wait();
        }
        // ---- D: h = act(gate) * up ----
        pf_fill_xs<E>(xs, a.x, D, ly.ffnNorm, a.eps, a.addOne);
        {
            PfMat m = { ly.wgu, ly.sgu, 2 * F, D };
            const float* bias = ly.bgu;
            pf_matvec<WF, 2, PF_ROWS_GU>(ring, m, d0, d1, xs, Hd, F, [&](int gi, const int (&r)[2], int ln) {
                calm_f4 p; p.x = p.y = p.z = p.w = 0.f;   // (gate bias, up bias)
                if (ln == 0 && bias) { p.x = bias[gi]; p.y = bias[F + gi]; }
                return p;
            }, [&](int gi, const int (&r)[2], const float (&s)[2], const calm_f4& p, int ln) {
                if (ln != 0) return;
                float g = s[0] + p.x, u = s[1] + p.y;
                a.h[gi] = activate(g, a.act) * u;
            });
            PfMat mdn = { ly.wdown, ly.sdown, D, F };
            arrive();
            pf_prefetch<WF, RS, PF_ROWS_SEQ>(ring, mdn, e0, e1, Hd, F);
            wait();
        }
        // ---- E: x += Wdown h ----
        pf_fill_xs<E>(xs, a.h, F, (const float*)0, 0.f, 0);
        {
            PfMat m = { ly.wdown, ly.sdown, D, F };
            residual_matvec(m, e0, e1, ly.bdown);
            arrive();
            if (l + 1 < L) {
                const PLayer& nx = a.layers[l + 1];
                PfMat mq = { nx.wqkv, nx.sqkv, Q + 2 * KV, D };
                pf_prefetch<WF, 2, PF_ROWS_QKV>(ring, mq, a0, a1, Hd, F);
            } else {
                PfMat ml = { a.lm, a.lmScales, a.V, D };
                pf_prefetch<WF, RS, PF_ROWS_SEQ>(ring, ml, m0, m1, Hd, F);
            }
            wait();
        }
    }

    // ---- classifier + argmax ----
    pf_fill_xs<E>(xs, a.x, D, a.finalNorm, a.eps, a.addOne);
    float bv = -CALM_INF;
    int bi = 0x7fffffff;
    {
        PfMat m = { a.lm, a.lmScales, a.V, D };
        const int V = a.V;
        pf_matvec<WF, RS, PF_ROWS_SEQ>(ring, m, m0, m1, xs, Hd, F, [&](int gi, const int (&r)[RS], int ln) {
            calm_f4 p; p.x = p.y = p.z = p.w = 0.f;
            return p;
        }, [&](int gi, const int (&r)[RS], const float (&s)[RS], const calm_f4& p, int ln) {
#pragma unroll
            for (int i = 0; i < RS; i++) {
                int row = gi * RS + i;
                if (row < V) {
                    if (ln == i) a.logits[row] = s[i];
                    if (s[i] > bv || (s[i] == bv && row < bi)) { bv = s[i]; bi = row; }
                }
            }
        });
    }
    warp_argmax(bv, bi);
    if (lane == 0) { s_bv[warp] = bv; s_bi[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = s_bv[0]; int i = s_bi[0];
        for (int w = 1; w < PF_WARPS; w++)
            if (s_bv[w] > v || (s_bv[w] == v && s_bi[w] < i)) { v = s_bv[w]; i = s_bi[w]; }
        a.amaxV[blockIdx.x] = v; a.amaxI[blockIdx.x] = i;
        __threadfence();
        unsigned done = atomicAdd(a.sync + 2, 1u);
        s_lastBlock = done == nb - 1;
    }
    __syncthreads();
    if (!s_lastBlock) return;
    __threadfence();
    if (warp == 0) {
        float v = -CALM_INF; int i = 0x7fffffff;
        for (unsigned b = lane; b < nb; b += 32) {
            float ov = pf_ld_cg(a.amaxV + b);
            int oi;
            asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(oi) : "l"(a.amaxI + b));
            if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
        }
        warp_argmax(v, i);
        if (lane == 0) {
            a.result[0] = i == 0x7fffffff ? 0 : i;
            a.result[1] = __float_as_int(v);
            a.sync[0] = 0;   // barrier count and finished blocks: ready for the next step (every block is past
            a.sync[2] = 0;   // its last barrier: they all finished the classifier)
            if (a.stamps) a.stamps[2 + 5 * L] = pf_globaltimer();
        }
    }
}

// Entry point. Launch cooperatively: grid = multiprocessors x blocks per SM (all co-resident), PF_THREADS threads,
// dynamic shared memory = 4 * (largest of D, H*Hd, F rounded up to 32 E) bytes.
// The host compiles ONE variant per model: -DPF_WF=<format code> -DPF_G=<MAXG> -DPF_RS=<rows per warp> gives the single
// kernel decode_persistent. Without them (the CI compile check) a representative set is compiled under their own names.
#define PF_KERNEL(NAME, WF, MAXG, RS)                                                                                  \
    extern "C" __global__ void __launch_bounds__(PF_THREADS, 1) NAME(const PArgs* a) {                               \
        decode_persistent_impl<WF, MAXG, RS>(*a);                                                                    \
    }
#if defined(PF_WF) && defined(PF_G) && defined(PF_RS)
PF_KERNEL(decode_persistent, PF_WF, PF_G, PF_RS)
#else
PF_KERNEL(decode_persistent_bf16_g1, CALM_BF16, 1, 1)
PF_KERNEL(decode_persistent_bf16_g2, CALM_BF16, 2, 1)
PF_KERNEL(decode_persistent_bf16_g4, CALM_BF16, 4, 1)
PF_KERNEL(decode_persistent_bf16_g8, CALM_BF16, 8, 1)
PF_KERNEL(decode_persistent_f16_g4, CALM_F16, 4, 1)
PF_KERNEL(decode_persistent_fp8_g4, PF_FP8, 4, 2)
PF_KERNEL(decode_persistent_int4_g4, PF_INT4, 4, 4)
#endif

// attention_split.cuh: the split (flash-decoding) decode attention as device code, shared by the standalone kernels
// (attention.cu) and the persistent decode kernel (decode_persistent.cu). Block indices are parameters so a
// persistent block can take any (kv head, chunk, head group) work item.
#pragma once
#include "common.cuh"
#include "fp8.cuh"

// ---- split decode attention (flash-decoding) ---------------------------------------------------------------------
// Grid (K, S, Z): block (kh, split, z) reads one chunk of the KV cache of kv head kh once for the query heads
// kh*G + z*MAXG + [0, MAXG) of its group (GQA: G = H/K query heads share a kv head). The positions start..pos are cut
// into at most S chunks of a multiple of 64 positions (computed from the step's position, so the captured graph
// stays valid at every position); blocks past the last chunk return at once.
// KV cache types (template parameter KVT, fp8.cuh): CALM_KV_F16 (default) or CALM_KV_FP8 (e4m3 rows with one f32
// scale each; kScale/vScale [K, maxCtx] of this layer). The geometry is the same for both: a lane owns 8 elements
// of a row (fp16: one 16-byte load, fp8: one 8-byte load), so the registers per lane (q, acc: MAXG x 8) are the
// same and the g4 kernel stays within the 128 registers of __launch_bounds__(256, 2); fp8 applies the K row scale
// to the score and the V row scale to p.
// Inside a block: Hd/8 lanes own one cache row (16-byte loads, 8 fp16 each); a warp walks 32/(Hd/8) rows at a time,
// FD_UNROLL row groups in flight; every row-stream keeps a running (max, sum, weighted V) per query head in the
// log2 domain; streams merge by shuffles, warps through shared memory (a tree of three rounds for head_dim <= 128).
// Launched programmatically, the register-path kernels request their first step of rows (those before pos, written
// by earlier steps) before pdl_wait, and q and row pos after it (attention_split_impl's EARLY).
// When a kv head needs more than one chunk, each block writes its partial (max, sum, unnormalised output) to the
// workspace; the last block of the kv head to finish (an acq_rel atomic counter) merges the partials in one pass and
// writes out. Where each phase's time went on the H200: tools/probe/att_trace.cu, bench/RESULTS.md (tenth session).
// Workspace (f32): pm [H, S] | pl [H, S] | pacc [H, S, Hd] | counters [K*Z] int (zero at allocation, reset by the
// merging block).
#define FD_THREADS 256
// Phase stamps for tools/probe/att_trace.cu, which defines FD_STAMP / FD_STAMP_V before including the kernels;
// nothing here. 0 kernel entry, 1 after pdl_wait, 6 q read, 2 the warp's keys done, 7 every warp's keys done, 3 the
// warps merged, 4 partial published (or output written), 5 the last block's merge written. FD_STAMP_V(i, v) stamps
// once v (a value the phase computes) is known.
#ifndef FD_STAMP
#define FD_STAMP(i) ((void)0)
#define FD_STAMP_V(i, v) ((void)0)
#endif
#define FD_WARPS (FD_THREADS / 32)
#define FD_MAX_HD 256
#define FD_MAX_SPLITS 256   // S <= 256 (CudaKernels.AttentionSplits)
// The block's output per query head in shared memory, s_acc[g][fd_acc_idx(d)]: one float of padding after every 32
// and a row stride of 292 (4 mod 32 banks), so the warps' adds in the block merge hit 32 (fp16 kernel: 16) distinct
// banks in both kernels' lane layouts (fp16: lane dl adds dims 8 dl + e; fp8 tensor-core: lane (gq, tq) adds head tq,
// dims HD/8 gq + 2i). Unpadded, those adds were 4- and 16-way bank conflicts, and the merge took 4-6 us per call on
// the H200 (tools/probe/att_trace.cu).
#define FD_ACC_STRIDE (FD_MAX_HD + FD_MAX_HD / 32 + 28)
__device__ __forceinline__ int fd_acc_idx(int d) { return d + (d >> 5); }

__device__ __forceinline__ float ld_cg_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ calm_f4 ld_cg_f4(const float* p) {
    calm_f4 v;
    asm volatile("ld.global.cg.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p));
    return v;
}

#define FD_STAGES 3

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int srcBytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    u32 sa;
    asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(sa) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(sa), "l"(gmem), "r"(srcBytes) : "memory");
#else
    calm_u4 v; v.x = v.y = v.z = v.w = 0u;
    if (srcBytes) v = ldg_u4(gmem);
    *(calm_u4*)smem = v;
#endif
}
// one stage: rows r0 .. r0 + vecs/vpr - 1 of K and V (rows >= c1 zero-filled) into dst [2][vecs] 16-byte vectors
// (rows of rowBytes = vpr * 16 bytes, vpr a power of two)
__device__ __forceinline__ void fd_issue_stage(calm_u4* dst, const char* kh0, const char* vh0, int r0, int c1, int rowBytes, int vpr, int vecs) {
    for (int v = threadIdx.x; v < vecs; v += FD_THREADS) {
        int r = r0 + v / vpr;
        bool ok = r < c1;
        long long off = (long long)(ok ? r : r0) * rowBytes + (v & (vpr - 1)) * 16;
        cp_async16(dst + v, kh0 + off, ok ? 16 : 0);
        cp_async16(dst + vecs + v, vh0 + off, ok ? 16 : 0);
    }
}

// what a lane holds of one cache row: 8 elements (fp16: 16 bytes, fp8: 8 bytes)
struct __align__(8) calm_u2 { u32 x, y; };
template <int KVT> struct fd_kv { typedef calm_u4 vec; static const int bytes = 2; };
template <> struct fd_kv<CALM_KV_FP8> { typedef calm_u2 vec; static const int bytes = 1; };
__device__ __forceinline__ void fd_load(calm_u4& r, const char* p) { r = ldg_u4(p); }
__device__ __forceinline__ void fd_load(calm_u2& r, const char* p) {
    asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
}
__device__ __forceinline__ void fd_zero(calm_u4& r) { r.x = r.y = r.z = r.w = 0u; }
__device__ __forceinline__ void fd_zero(calm_u2& r) { r.x = r.y = 0u; }
__device__ __forceinline__ void fd_unpack8(const calm_u4& r, float (&f)[8]) {
    unpack2<CALM_F16>(r.x, f[0], f[1]); unpack2<CALM_F16>(r.y, f[2], f[3]);
    unpack2<CALM_F16>(r.z, f[4], f[5]); unpack2<CALM_F16>(r.w, f[6], f[7]);
}
__device__ __forceinline__ void fd_unpack8(const calm_u2& r, float (&f)[8]) {
    e4m3x4_to_f32(r.x, f[0], f[1], f[2], f[3]);
    e4m3x4_to_f32(r.y, f[4], f[5], f[6], f[7]);
}

// the same through L2 only (ld.global.cg): for row pos, which this step's qkv kernel wrote, when the rows before it
// were requested earlier through the non-coherent path (a line of both may sit in L1 from then)
__device__ __forceinline__ void fd_load_cg(calm_u4& r, const char* p) {
    asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
}
__device__ __forceinline__ void fd_load_cg(calm_u2& r, const char* p) {
    asm volatile("ld.global.cg.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
}

// A row-stream step's loads (rows j = base + u*streams + slot, u < U): K and V rows (and fp8 row scales) of the rows
// below c1, zeros for the others and for row skip (-1: none), which fd_load_pos reads later.
template <int U, int KVT, typename VEC>
__device__ __forceinline__ void fd_load_rows(VEC (&kr)[U], VEC (&vr)[U], float (&ks)[U], float (&vs)[U], const char* kb, const char* vb,
                                             const float* ksb, const float* vsb, int base, int streams, int slot, int c1, int rowBytes, int skip) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int j = base + u * streams + slot;
        ks[u] = vs[u] = 0.f;
        if (j < c1 && j != skip) {
            fd_load(kr[u], kb + (long long)j * rowBytes); fd_load(vr[u], vb + (long long)j * rowBytes);
            if (KVT == CALM_KV_FP8) { ks[u] = ksb[j]; vs[u] = vsb[j]; }
        } else { fd_zero(kr[u]); vr[u] = kr[u]; }
    }
}
// ... and row pos of that step, after pdl_wait (through L2: see fd_load_cg)
template <int U, int KVT, typename VEC>
__device__ __forceinline__ void fd_load_pos(VEC (&kr)[U], VEC (&vr)[U], float (&ks)[U], float (&vs)[U], const char* kb, const char* vb,
                                            const float* ksb, const float* vsb, int base, int streams, int slot, int c1, int rowBytes, int pos) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int j = base + u * streams + slot;
        if (j == pos && j < c1) {
            fd_load_cg(kr[u], kb + (long long)j * rowBytes); fd_load_cg(vr[u], vb + (long long)j * rowBytes);
            if (KVT == CALM_KV_FP8) { ks[u] = ld_cg_f32(ksb + j); vs[u] = ld_cg_f32(vsb + j); }
        }
    }
}

// One step of a row-stream: U cache rows (K in kr, V in vr; rows j = base + u*streams + slot, valid when j < c1)
// folded into the running (m, l, acc) of each of the MAXG query heads. Every lane of the warp must call it.
// fp8 (KVT): ks/vs are the rows' K and V scales (unused for fp16).
template <int MAXG, int U, int KVT, typename VEC>
__device__ __forceinline__ void fd_rows(const VEC (&kr)[U], const VEC (&vr)[U], int base, int streams, int slot, int c1, int tpp,
                                        const float (&qv)[MAXG][8], float (&m)[MAXG], float (&l)[MAXG], float (&acc)[MAXG][8],
                                        const float (&ks)[U], const float (&vs)[U]) {
        float s[U][MAXG];
#pragma unroll
    for (int u = 0; u < U; u++) {
        float k8[8];
        fd_unpack8(kr[u], k8);
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            float a = qv[g][0] * k8[0];
#pragma unroll
            for (int e = 1; e < 8; e++) a = fmaf(qv[g][e], k8[e], a);
            s[u][g] = a;
        }
    }
    for (int o = tpp >> 1; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int g = 0; g < MAXG; g++) s[u][g] += __shfl_xor_sync(0xffffffffu, s[u][g], o);
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
        bool valid = base + u * streams + slot < c1;
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            if (KVT == CALM_KV_FP8) s[u][g] *= ks[u];
            if (!valid) s[u][g] = -CALM_INF;
        }
    }
    float v8[U][8];
#pragma unroll
    for (int u = 0; u < U; u++) fd_unpack8(vr[u], v8[u]);
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        float mx = m[g];
#pragma unroll
        for (int u = 0; u < U; u++) mx = fmaxf(mx, s[u][g]);
        float mref = mx == -CALM_INF ? 0.f : mx;
        float corr = exp2f(m[g] - mref);
        float p[U];
        float ps = 0.f;
#pragma unroll
        for (int u = 0; u < U; u++) { p[u] = exp2f(s[u][g] - mref); ps += p[u]; }
        l[g] = fmaf(l[g], corr, ps);
        if (KVT == CALM_KV_FP8) {
#pragma unroll
            for (int u = 0; u < U; u++) p[u] *= vs[u];
        }
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float a = acc[g][e] * corr;
#pragma unroll
            for (int u = 0; u < U; u++) a = fmaf(p[u], v8[u][e], a);
            acc[g][e] = a;
        }
        m[g] = mx;
    }
}

// KVT CALM_KV_FP8: kCache/vCache are this layer's [K, maxCtx, Hd] e4m3 bytes (passed as u16* to keep one
// signature), kScale/vScale its row scales [K, maxCtx] f32.
// The keys of a decode step and their split, the same for every split kernel (the launcher's S and workspace assume
// it): positions start .. pos (start > 0 with a sliding window), n of them, in nsplit chunks of ceil(n / S) rounded up
// to whole 64-row passes (Hd 128: 16 rows per pass x FD_UNROLL 4).
struct FdRange { int pos, start, n, chunk, nsplit; };
__device__ __forceinline__ FdRange fd_range(int pos, int window, int S) {
    FdRange r;
    r.pos = pos;
    r.start = (window > 0 && pos - window + 1 > 0) ? pos - window + 1 : 0;
    r.n = pos - r.start + 1;
    r.chunk = ((r.n + S - 1) / S + 63) & ~63;
    r.nsplit = (r.n + r.chunk - 1) / r.chunk;
    return r;
}

// Adds 1 to a split-attention counter with release and acquire semantics at GPU scope; returns the old value.
__device__ __forceinline__ int fd_count_acq_rel(int* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    int old;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(old) : "l"(p) : "memory");
    return old;
#else
    __threadfence();
    const int old = atomicAdd(p, 1);
    __threadfence();
    return old;
#endif
}
#define FD_MERGE_BATCH 9   // splits whose partials a merging thread reads at once (Llama-3-8B on 132 SMs: 33 splits, R = 2: two rounds)

// The end of a split-attention block once s_m (each warp's max per head), s_l and s_acc (the block's sum and
// unnormalised output per head, at the block max) are in place: the output with one chunk, else this block's partial
// to the workspace and, in the last block of the kv head, the merge of all. Shared by attention_split_impl
// and the tensor-core fp8 kernel (attention_split_fp8.cuh). Every thread calls it.
template <int MAXG>
__device__ __forceinline__ void fd_finish(float (&s_m)[FD_WARPS][MAXG], float (&s_l)[MAXG], float (&s_acc)[MAXG][FD_ACC_STRIDE],
                                          float (&s_wbuf)[MAXG][FD_MAX_SPLITS], float (&s_lw)[MAXG][FD_MAX_SPLITS],
                                          calm_f4 (&s_red)[FD_THREADS], int& s_last, float* out, float* ws, int H, int Hd, int S,
                                          int kh, int split, int z, int Z, int h0, int ng, int nsplit) {
    if (nsplit == 1) {
        for (int i = threadIdx.x; i < ng * Hd; i += FD_THREADS) {
            int g = i / Hd, d = i - g * Hd;
            out[(long long)(h0 + g) * Hd + d] = s_acc[g][fd_acc_idx(d)] / s_l[g];
        }
        FD_STAMP(4);
        return;
    }
    float* pm = ws;
    float* pl = ws + (long long)H * S;
    float* pacc = ws + 2LL * H * S;
    int* counters = (int*)(ws + (long long)H * S * (Hd + 2));
    for (int i = threadIdx.x; i < ng * Hd; i += FD_THREADS) {
        int g = i / Hd, d = i - g * Hd;
        pacc[((long long)(h0 + g) * S + split) * Hd + d] = s_acc[g][fd_acc_idx(d)];
    }
    if (threadIdx.x < ng) {
        int g = threadIdx.x;
        float M = -CALM_INF;
        for (int w = 0; w < FD_WARPS; w++) M = fmaxf(M, s_m[w][g]);
        pm[(long long)(h0 + g) * S + split] = M;
        pl[(long long)(h0 + g) * S + split] = s_l[g];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        // release: the block's partial (every thread's stores, ordered before this by the barrier) is visible before
        // the count; acquire: the block that counts last sees every other block's partial (its other threads through
        // the barrier below, and they read with ld.cg)
        const int prev = fd_count_acq_rel(&counters[kh * Z + z]);
        s_last = prev == nsplit - 1;
        if (s_last) counters[kh * Z + z] = 0;   // ready for the next launch (which counts only after this kernel ends)
    }
    __syncthreads();
    FD_STAMP(4);
    if (!s_last) return;
    // merge in one pass over the splits: thread (piece it = a float4 of the group's output, r < R) takes the splits
    // t = r, r + R, ..., reads their max, sum and output piece together (FD_MERGE_BATCH loads of each in flight) and
    // keeps a running (max, sum, output) as the row-streams do; the R threads of a piece then meet in shared memory
    // in a fixed order (deterministic).
    const int items = ng * (Hd >> 2);                      // float4 pieces of the group's output
    const int R = items >= FD_THREADS ? 1 : FD_THREADS / items;   // threads per piece (stride over splits)
    float* s_mr = &s_wbuf[0][0];                           // [items * R] each thread's running max
    float* s_lr = &s_lw[0][0];                             // ... and sum (MAXG * FD_MAX_SPLITS >= FD_THREADS)
    for (int i = threadIdx.x; i < items * R; i += FD_THREADS) {
        const int it = i % items, r = i / items;
        const int g = it / (Hd >> 2), d = (it - g * (Hd >> 2)) * 4;
        const long long hs = (long long)(h0 + g) * S;
        const float* base = pacc + hs * Hd + d;
        float M = -CALM_INF, L = 0.f, o0 = 0.f, o1 = 0.f, o2 = 0.f, o3 = 0.f;
        for (int t0 = r; t0 < nsplit; t0 += FD_MERGE_BATCH * R) {
            calm_f4 v[FD_MERGE_BATCH];
            float mv[FD_MERGE_BATCH], lv[FD_MERGE_BATCH];
#pragma unroll
            for (int u = 0; u < FD_MERGE_BATCH; u++) {
                const int t = t0 + u * R;
                if (t < nsplit) { v[u] = ld_cg_f4(base + (long long)t * Hd); mv[u] = ld_cg_f32(pm + hs + t); lv[u] = ld_cg_f32(pl + hs + t); }
                else { v[u].x = v[u].y = v[u].z = v[u].w = 0.f; mv[u] = -CALM_INF; lv[u] = 0.f; }
            }
            float mx = M;
#pragma unroll
            for (int u = 0; u < FD_MERGE_BATCH; u++) mx = fmaxf(mx, mv[u]);
            const float mref = mx == -CALM_INF ? 0.f : mx;
            const float c = exp2f(M - mref);
            L *= c; o0 *= c; o1 *= c; o2 *= c; o3 *= c;
#pragma unroll
            for (int u = 0; u < FD_MERGE_BATCH; u++) {
                const float w = exp2f(mv[u] - mref);
                L = fmaf(w, lv[u], L);
                o0 = fmaf(w, v[u].x, o0); o1 = fmaf(w, v[u].y, o1); o2 = fmaf(w, v[u].z, o2); o3 = fmaf(w, v[u].w, o3);
            }
            M = mx;
        }
        if (R == 1) {
            const float inv = 1.f / L;
            calm_f4 o; o.x = o0 * inv; o.y = o1 * inv; o.z = o2 * inv; o.w = o3 * inv;
            *(calm_f4*)(out + (long long)(h0 + g) * Hd + d) = o;
        } else {
            calm_f4 o; o.x = o0; o.y = o1; o.z = o2; o.w = o3;
            s_red[i] = o;   // i < items * R <= FD_THREADS
            s_mr[i] = M; s_lr[i] = L;
        }
    }
    if (R > 1) {
        __syncthreads();
        // the R running results of each piece, rescaled to their common max and added in a fixed order
        for (int i = threadIdx.x; i < ng * Hd; i += FD_THREADS) {
            int g = i / Hd, d = i - g * Hd;
            int it = g * (Hd >> 2) + (d >> 2), c = d & 3;
            float M = -CALM_INF;
            for (int r = 0; r < R; r++) M = fmaxf(M, s_mr[r * items + it]);
            const float mref = M == -CALM_INF ? 0.f : M;
            float o = 0.f, L = 0.f;
            for (int r = 0; r < R; r++) {
                const float w = exp2f(s_mr[r * items + it] - mref);
                o = fmaf(w, ((const float*)&s_red[r * items + it])[c], o);
                L = fmaf(w, s_lr[r * items + it], L);
            }
            out[(long long)(h0 + g) * Hd + d] = o / L;
        }
    }
    FD_STAMP(5);
}

// A block with no chunk to read (split >= nsplit: short contexts leave most of the grid idle) prefetches its share of
// the next kernel's weights into L2 instead (nextW, nextBytes: the o projection; CudaKernels.AttentionPrefetchNext),
// so they stream while the few busy blocks compute and the o matvec then reads them from L2. Idle blocks are numbered
// over (split - nsplit, kh, z); each takes a contiguous, 128-byte aligned slice, its threads a line at a time.
__device__ __forceinline__ void fd_prefetch_next(const char* nextW, long long nextBytes, int K, int S, int nsplit, int kh, int split, int z, int Z) {
    if (!nextW || nextBytes <= 0) return;
    const long long idle = (long long)(S - nsplit) * K * Z;
    const long long id = ((long long)(split - nsplit) * K + kh) * Z + z;
    const long long lines = (nextBytes + 127) >> 7;
    const long long per = (lines + idle - 1) / idle;
    const long long l0 = id * per, l1 = l0 + per < lines ? l0 + per : lines;
    for (long long i = l0 + threadIdx.x; i < l1; i += FD_THREADS) prefetch_l2(nextW + (i << 7));
}

// L2 prefetch of one block step's rows of this warp (rows rowBase + u * streams + s, u < U, s < ppw; rows from c1 on
// skipped), K and V, the lanes taking 128-byte lines in turn: the register-load path asks for its rows pf steps
// ahead (CudaKernels.AttentionPrefetch), so more of the cache is in flight than the registers hold.
__device__ __forceinline__ void fd_prefetch_rows(const char* kh0, const char* vh0, int rowBase, int c1, int rowBytes, int ppw,
                                                 int streams, int U, int lane) {
    const int lpr = (rowBytes + 127) >> 7;   // lines per row
    const int per = ppw * lpr;
    for (int i = lane; i < U * per; i += 32) {
        const int u = i / per, r = i - u * per;
        const int row = rowBase + u * streams + r / lpr;
        if (row < c1) {
            const long long off = (long long)row * rowBytes + (r % lpr) * 128;
            prefetch_l2(kh0 + off);
            prefetch_l2(vh0 + off);
        }
    }
}

// EARLY (launched programmatically, register path only): the kernel calls pdl_wait itself, after the position (host-
// written) is read and the first step's rows before it (written by earlier steps) are requested, so those loads
// overlap the previous kernel's end; q and row pos (this step's) are read after it. Otherwise the caller has waited.
template <int MAXG, int U, bool ASYNC, int KVT = CALM_KV_F16, bool EARLY = false>
__device__ __forceinline__ void attention_split_impl(const float* q, const u16* kCache, const u16* vCache, float* out, float* ws,
                                                     int H, int K, int Hd, int maxCtx, int window, float scale, int S,
                                                     const StepParams* sp, int kh, int split, int z, int Z,
                                                     const float* kScale = 0, const float* vScale = 0, int pf = 0,
                                                     const char* nextW = 0, long long nextBytes = 0) {
    typedef typename fd_kv<KVT>::vec VEC;
    const int ES = fd_kv<KVT>::bytes;      // bytes per element
    const int rowBytes = Hd * ES;
    __shared__ float s_m[FD_WARPS][MAXG];
    __shared__ float s_l[MAXG];
    __shared__ float s_acc[MAXG][FD_ACC_STRIDE];
    __shared__ __align__(16) float s_wbuf[MAXG][FD_MAX_SPLITS];   // merge: running maxima; warp tree: slots 0, 1
    __shared__ __align__(16) float s_lw[MAXG][FD_MAX_SPLITS];     // merge: running sums; warp tree: slots 2, 3
    __shared__ calm_f4 s_red[FD_THREADS];          // merge: partial sums of the threads sharing a piece
    __shared__ float s_tl[FD_WARPS / 2][MAXG];     // warp tree: the slots' sums of p
    __shared__ int s_last;
    const int G = H / K;
    const int g0 = z * MAXG;
    const int ng = min(MAXG, G - g0);
    static_assert(!(EARLY && ASYNC), "the early form is the register path's");
    const FdRange rg = fd_range(sp->pos, window, S);   // the position is host-written: readable before pdl_wait
    const int pos = rg.pos, start = rg.start, n = rg.n, chunk = rg.chunk, nsplit = rg.nsplit;
    // a block with no chunk touches nothing an earlier kernel writes (EARLY: it returns without waiting; every kv
    // head has a block with a chunk, which waits, so the kernel still ends after the previous one)
    if (split >= nsplit) { fd_prefetch_next(nextW, nextBytes, K, S, nsplit, kh, split, z, Z); return; }
    const int c0 = start + split * chunk;
    const int c1 = min(c0 + chunk, pos + 1);

    const int tpp = Hd >> 3;               // lanes per cache row (power of two <= 32)
    const int ppw = 32 / tpp;              // rows per warp per load
    const int streams = FD_WARPS * ppw;    // rows per block per load
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int slot = lane / tpp, dl = lane & (tpp - 1);
    const float sl = scale * 1.4426950408889634f;   // scores in log2 units: exp2 instead of exp
    const char* kb = (const char*)kCache + (long long)kh * maxCtx * rowBytes + dl * 8 * ES;
    const char* vb = (const char*)vCache + (long long)kh * maxCtx * rowBytes + dl * 8 * ES;
    const float* ksb = kScale + (long long)kh * maxCtx;   // fp8 only
    const float* vsb = vScale + (long long)kh * maxCtx;

    // register path: the warp's first step of rows is requested before q is read (and, EARLY, before pdl_wait);
    // base is uniform across the warp (the shuffles in fd_rows need every lane)
    int base = c0 + warp * ppw;
    VEC kr[U], vr[U];
    float ks[U], vs[U];
    if (!ASYNC) fd_load_rows<U, KVT>(kr, vr, ks, vs, kb, vb, ksb, vsb, base, streams, slot, c1, rowBytes, EARLY ? pos : -1);
    if (EARLY) {
        pdl_wait();
        pdl_trigger();
        fd_load_pos<U, KVT>(kr, vr, ks, vs, kb, vb, ksb, vsb, base, streams, slot, c1, rowBytes, pos);
    }
    FD_STAMP(1);

    float qv[MAXG][8], acc[MAXG][8], m[MAXG], l[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        m[g] = -CALM_INF; l[g] = 0.f;
        const float* qh = q + (long long)(kh * G + g0 + (g < ng ? g : 0)) * Hd + dl * 8;
        calm_f4 a = ld_cg_f4(qh), b = ld_cg_f4(qh + 4);   // .cg: q may come from another block of a persistent kernel
        float f = g < ng ? sl : 0.f;
        qv[g][0] = a.x * f; qv[g][1] = a.y * f; qv[g][2] = a.z * f; qv[g][3] = a.w * f;
        qv[g][4] = b.x * f; qv[g][5] = b.y * f; qv[g][6] = b.z * f; qv[g][7] = b.w * f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.f;
    }
    FD_STAMP_V(6, qv[0][0]);

    if (!ASYNC) {
        // steps 1 .. pf-1 of the warp into L2 now, step i + pf at the start of step i
        const char* kh0 = (const char*)kCache + (long long)kh * maxCtx * rowBytes;
        const char* vh0 = (const char*)vCache + (long long)kh * maxCtx * rowBytes;
        for (int t = 1; t < pf; t++) fd_prefetch_rows(kh0, vh0, base + t * streams * U, c1, rowBytes, ppw, streams, U, lane);
        if (base < c1) {   // the first step, on the rows requested above (peeled: its registers die here)
            if (pf > 0) fd_prefetch_rows(kh0, vh0, base + pf * streams * U, c1, rowBytes, ppw, streams, U, lane);
            fd_rows<MAXG, U, KVT>(kr, vr, base, streams, slot, c1, tpp, qv, m, l, acc, ks, vs);
            base += streams * U;
        }
        for (; base < c1; base += streams * U) {
            if (pf > 0) fd_prefetch_rows(kh0, vh0, base + pf * streams * U, c1, rowBytes, ppw, streams, U, lane);
            VEC kn[U], vn[U];
            float ksn[U], vsn[U];
            fd_load_rows<U, KVT>(kn, vn, ksn, vsn, kb, vb, ksb, vsb, base, streams, slot, c1, rowBytes, -1);
            fd_rows<MAXG, U, KVT>(kn, vn, base, streams, slot, c1, tpp, qv, m, l, acc, ksn, vsn);
        }
    } else {
        // cp.async pipeline: stages of rps = streams*U rows (16 KB of K + 16 KB of V), FD_STAGES deep in shared
        // memory, so loads stay in flight while the warps compute (no registers held for them)
        extern __shared__ calm_u4 s_kv[];   // [FD_STAGES][2][rps * tpp]
        const int vpr = rowBytes >> 4;     // 16-byte vectors per row (fp16: tpp, fp8: tpp/2)
        const int rps = streams * U, vecs = rps * vpr;
        const int nst = (c1 - c0 + rps - 1) / rps;
        const char* kh0 = (const char*)kCache + (long long)kh * maxCtx * rowBytes;
        const char* vh0 = (const char*)vCache + (long long)kh * maxCtx * rowBytes;
        for (int stg = 0; stg < FD_STAGES - 1; stg++) {
            if (stg < nst) fd_issue_stage(s_kv + (stg % FD_STAGES) * 2 * vecs, kh0, vh0, c0 + stg * rps, c1, rowBytes, vpr, vecs);
            g_commit();
        }
        for (int it = 0; it < nst; it++) {
            int nx = it + FD_STAGES - 1;
            if (nx < nst) fd_issue_stage(s_kv + (nx % FD_STAGES) * 2 * vecs, kh0, vh0, c0 + nx * rps, c1, rowBytes, vpr, vecs);
            g_commit();
            g_wait<FD_STAGES - 1>();
            __syncthreads();
            const char* sk = (const char*)(s_kv + (it % FD_STAGES) * 2 * vecs);
            const char* sv = sk + vecs * 16;
            const int st = warp * ppw + slot;
            VEC kr[U], vr[U];
            float ks[U], vs[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int rr = u * streams + st;   // row within the stage
                kr[u] = *(const VEC*)(sk + rr * rowBytes + dl * 8 * ES);
                vr[u] = *(const VEC*)(sv + rr * rowBytes + dl * 8 * ES);
                ks[u] = vs[u] = 0.f;
                int j = c0 + it * rps + rr;
                if (KVT == CALM_KV_FP8 && j < c1) { ks[u] = ksb[j]; vs[u] = vsb[j]; }
            }
            fd_rows<MAXG, U, KVT>(kr, vr, c0 + it * rps + warp * ppw, streams, slot, c1, tpp, qv, m, l, acc, ks, vs);
            __syncthreads();   // this stage's buffer is refilled next
        }
    }
    FD_STAMP_V(2, acc[0][0] + l[0]);
    // merge the row-streams of this warp (lanes with the same dl)
    for (int o = tpp; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
            float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
            float M = fmaxf(m[g], mo);
            float Mr = M == -CALM_INF ? 0.f : M;
            float fa = exp2f(m[g] - Mr), fb = exp2f(mo - Mr);
            l[g] = l[g] * fa + lo * fb;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] = acc[g][e] * fa + __shfl_xor_sync(0xffffffffu, acc[g][e], o) * fb;
            m[g] = M;
        }
    }
    // merge the warps: block max per head, then rescaled sums in shared memory
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < MAXG; g++) s_m[warp][g] = m[g];
    }
    if (Hd > 128) {   // the turns below add into s_acc and s_l; the tree assigns every element fd_finish reads
        for (int i = threadIdx.x; i < MAXG * FD_ACC_STRIDE; i += FD_THREADS) (&s_acc[0][0])[i] = 0.f;
        if (threadIdx.x < MAXG) s_l[threadIdx.x] = 0.f;
    }
    __syncthreads();
    FD_STAMP(7);
    float f[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; g++) {
        float M = -CALM_INF;
        for (int w = 0; w < FD_WARPS; w++) M = fmaxf(M, s_m[w][g]);
        f[g] = (m[g] == -CALM_INF) ? 0.f : exp2f(m[g] - M);
    }
    if (Hd <= 128) {
        // the warps meet in a fixed tree (deterministic: the same step gives the same bits every time): in round
        // r = 4, 2, 1 warps [r, 2r) store their scaled sums (slot-0 lanes hold the warp's) in a slot of shared memory
        // and warps [0, r) add them, so warp 0 ends with the block's. Slots (MAXG x Hd floats, float4 (g, e/4, dl):
        // conflict-free) lie in s_wbuf / s_lw, unused until fd_finish: round 4 writes slots w - 4 and reads w; round
        // 2 writes and reads slots 2, 3 and round 1 slot 1, each last read by the warp that writes it next, so a
        // round needs one barrier. (The form below, each warp adding into s_acc in turn, took ~3.4 us per call.)
        float ls[MAXG];
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            ls[g] = l[g] * f[g];
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= f[g];
        }
        for (int r = FD_WARPS / 2; r >= 1; r >>= 1) {
            if (warp >= r && warp < 2 * r && slot == 0) {
                const int k = r == FD_WARPS / 2 ? warp - r : warp;
                calm_f4* b = (calm_f4*)((k < 2 ? &s_wbuf[0][0] : &s_lw[0][0]) + (k & 1) * MAXG * 128);
#pragma unroll
                for (int g = 0; g < MAXG; g++) {
                    calm_f4 a0, a1;
                    a0.x = acc[g][0]; a0.y = acc[g][1]; a0.z = acc[g][2]; a0.w = acc[g][3];
                    a1.x = acc[g][4]; a1.y = acc[g][5]; a1.z = acc[g][6]; a1.w = acc[g][7];
                    b[(2 * g) * tpp + dl] = a0; b[(2 * g + 1) * tpp + dl] = a1;
                }
                if (dl == 0) {
#pragma unroll
                    for (int g = 0; g < MAXG; g++) s_tl[k][g] = ls[g];
                }
            }
            __syncthreads();
            if (warp < r && slot == 0) {
                const int k = r == FD_WARPS / 2 ? warp : warp + r;
                const calm_f4* b = (const calm_f4*)((k < 2 ? &s_wbuf[0][0] : &s_lw[0][0]) + (k & 1) * MAXG * 128);
#pragma unroll
                for (int g = 0; g < MAXG; g++) {
                    const calm_f4 a0 = b[(2 * g) * tpp + dl], a1 = b[(2 * g + 1) * tpp + dl];
                    acc[g][0] += a0.x; acc[g][1] += a0.y; acc[g][2] += a0.z; acc[g][3] += a0.w;
                    acc[g][4] += a1.x; acc[g][5] += a1.y; acc[g][6] += a1.z; acc[g][7] += a1.w;
                    ls[g] += s_tl[k][g];
                }
            }
        }
        if (warp == 0 && slot == 0) {
#pragma unroll
            for (int g = 0; g < MAXG; g++) {
                if (g < ng) {
#pragma unroll
                    for (int e = 0; e < 8; e++) s_acc[g][fd_acc_idx(dl * 8 + e)] = acc[g][e];
                    if (dl == 0) s_l[g] = ls[g];
                }
            }
        }
        __syncthreads();
    } else {
        // head_dim above 128: warps add in a fixed order; a warp reads all its sums before it writes any (the
        // compiler cannot tell the addresses apart, so += one by one would make each read wait for the previous write)
        for (int w = 0; w < FD_WARPS; w++) {
            if (warp == w && slot == 0) {
                float cur[MAXG][8];
#pragma unroll
                for (int g = 0; g < MAXG; g++)
#pragma unroll
                    for (int e = 0; e < 8; e++) cur[g][e] = g < ng ? s_acc[g][fd_acc_idx(dl * 8 + e)] : 0.f;
#pragma unroll
                for (int g = 0; g < MAXG; g++) {
                    if (g < ng) {
#pragma unroll
                        for (int e = 0; e < 8; e++) s_acc[g][fd_acc_idx(dl * 8 + e)] = fmaf(acc[g][e], f[g], cur[g][e]);
                        if (dl == 0) s_l[g] += l[g] * f[g];
                    }
                }
            }
            __syncthreads();
        }
    }
    FD_STAMP(3);
    fd_finish<MAXG>(s_m, s_l, s_acc, s_wbuf, s_lw, s_red, s_last, out, ws, H, Hd, S, kh, split, z, Z, kh * G + g0, ng, nsplit);
}


// mv_chain.cu: a standalone probe (nvcc, runs on the GPU machine; not part of the engine) for the bf16 decode
// matvecs' kernel boundaries. It answers two questions before the engine's kernels change:
//  1. how many bytes in flight per SM a streaming read needs for full bandwidth (bw_read at several grids / depths);
//  2. which matvec form keeps the memory busy across a chain of dependent matvecs launched with programmatic
//     dependent launch in a CUDA graph, as one Llama-3-8B layer after another (qkv 6144x4096, o 4096x4096,
//     gate_up 28672x4096, down 4096x14336; 8 layers' distinct weights, 32 layers per step), in bf16 and in fp8.
// The streaming read is the engine's (kernels/bench.cu bw_read_impl) at other depths; the helpers come from common.cuh.
// Build and run:  nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/mv_chain tools/probe/mv_chain.cu && /tmp/mv_chain
// ("chain": the chains only; "flag": the engine's form against a counter wait and no wait, then per-kernel stamps of
// where a boundary's time goes)
#include <cstdint>
#include <string>
#include <cmath>
#include "probe.cuh"
#include "../../kernels/bench.cu"   // the engine's streaming read, with common.cuh (16-byte loads, PDL, warp sums)
#include "../../kernels/quant.cuh"   // dot16_fp8 (e4m3 -> f16 -> fp32, the engine's CUDA-core fp8 dot)
#include "probe_async.cuh"           // mbarriers, bulk copies


// 8 bf16 weights . 8 floats whose halves are at xa, xb
__device__ __forceinline__ float dot8p(calm_u4 w, const float* xa, const float* xb) {
    calm_f4 a = *(const calm_f4*)xa, b = *(const calm_f4*)xb;
    float s = __int_as_float(w.x << 16) * a.x;
    s = fmaf(__int_as_float(w.x & 0xffff0000u), a.y, s);
    s = fmaf(__int_as_float(w.y << 16), a.z, s); s = fmaf(__int_as_float(w.y & 0xffff0000u), a.w, s);
    s = fmaf(__int_as_float(w.z << 16), b.x, s); s = fmaf(__int_as_float(w.z & 0xffff0000u), b.y, s);
    s = fmaf(__int_as_float(w.w << 16), b.z, s); s = fmaf(__int_as_float(w.w & 0xffff0000u), b.w, s);
    return s;
}
__device__ __forceinline__ float dot8(calm_u4 w, const float* x) { return dot8p(w, x, x + 4); }

// ---- 1. streaming read: the engine's (kernels/bench.cu) at UNR loads in flight per thread ------------------------
template <int UNR>
__global__ void bw_read_unr(const calm_u4* in, long long n, u32* out) { bw_read_impl<UNR>(in, n, out); }

// ---- 2. matvecs -------------------------------------------------------------------------------------------------
// One row's dot product, UNR 16-byte loads per lane per batch; the last batch is masked (no scalar tail).
// onBatch(first, last) runs once each batch's loads are out (where the engine waits or triggers). px: x is read in the
// lane-contiguous order a producer could write it in: the first 4 floats of vector v (8 columns) at (v / 32) 256 +
// (v % 32) 4, the last 4 at + 128, so a warp's two 16-byte x loads of a weight load are 512 contiguous bytes each (4 L1
// wavefronts) instead of 16 bytes every 32 over 1 KB (8 each). (The probe only times it: the chain's x is not written
// in that order, so its results differ.)
template <int UNR, typename F>
__device__ __forceinline__ float row_dot_hook(const calm_u4* rv, const float* x, int nvec, int lane, int px, F onBatch) {
    float acc = 0.f;
    bool first = true;
    for (int v0 = 0; v0 < nvec; v0 += 32 * UNR) {
        calm_u4 w[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int v = v0 + lane + 32 * u;
            w[u] = v < nvec ? ldg_u4_stream(rv + v) : calm_u4{0u, 0u, 0u, 0u};
        }
        onBatch(first, v0 + 32 * UNR >= nvec);
        first = false;
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int v = v0 + lane + 32 * u;
            if (v < nvec) {
                if (px) { const float* xa = x + (v >> 5) * 256 + (v & 31) * 4; acc += dot8p(w[u], xa, xa + 128); }
                else acc += dot8(w[u], x + (long long)v * 8);
            }
        }
    }
    return warp_sum(acc);
}
// early: the first batch's loads go out before pdl_wait. late: pdl_trigger after the last batch's loads.
template <int UNR>
__device__ __forceinline__ float row_dot(const u16* row, const float* x, int cols, int lane, bool early, bool late) {
    return row_dot_hook<UNR>((const calm_u4*)row, x, cols >> 3, lane, 0, [&](bool first, bool last) {
        if (late && last) pdl_trigger();
        if (early && first) pdl_wait();
    });
}

// the engine's form: one warp per row, blocks of 8 rows, as many blocks as rows / 8.
// trig 0: trigger at entry; 1: after the warp's last loads. early: first loads before the wait.
template <int UNR>
__global__ void __launch_bounds__(256, 2) mv_rows(const u16* W, const float* x, float* y, int rows, int cols, int early, int trig) {
    int row = (int)((blockIdx.x * 256u + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (trig == 0) pdl_trigger();
    if (!early) pdl_wait();
    if (row >= rows) { if (early) pdl_wait(); return; }
    float s = row_dot<UNR>(W + (long long)row * cols, x, cols, lane, early, trig == 1);
    if (lane == 0) y[row] = s;
}

// the engine's form with registers capped for 3 (MINB) blocks per SM: 24 warps x 8 KB in flight per SM instead of 16
template <int UNR, int MINB>
__global__ void __launch_bounds__(256, MINB) mv_rows_b(const u16* W, const float* x, float* y, int rows, int cols) {
    int row = (int)((blockIdx.x * 256u + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    pdl_trigger();
    if (row >= rows) { pdl_wait(); return; }
    float s = row_dot<UNR>(W + (long long)row * cols, x, cols, lane, true, false);
    if (lane == 0) y[row] = s;
}

// Two rows per warp, both in flight at once without more registers: row 2w's 16 loads into registers as the engine's
// form, row 2w+1's into the warp's 8 KB of shared memory by cp.async (issued first), so a warp has 16 KB in flight and
// a 4096-row matrix is one wave of 256 blocks (2 per SM: 128 KB of shared memory per SM). cols == 32 UNR 8 only.
// Dynamic shared memory: 8 x UNR x 32 x 16 bytes.
template <int UNR>
__global__ void __launch_bounds__(256, 2) mv_rows_cpa(const u16* W, const float* x, float* y, int rows, int cols) {
    extern __shared__ __align__(16) calm_u4 cbuf[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r0 = (blockIdx.x * 8 + warp) * 2;
    pdl_trigger();
    const calm_u4* ra = (const calm_u4*)(W + (long long)min(r0, rows - 1) * cols);
    const calm_u4* rb = (const calm_u4*)(W + (long long)min(r0 + 1, rows - 1) * cols);
    calm_u4* mine = cbuf + warp * UNR * 32;
#pragma unroll
    for (int u = 0; u < UNR; u++)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_u32(mine + u * 32 + lane)), "l"(rb + lane + 32 * u) : "memory");
    asm volatile("cp.async.commit_group;" ::: "memory");
    calm_u4 w[UNR];
#pragma unroll
    for (int u = 0; u < UNR; u++) w[u] = ldg_u4_stream(ra + lane + 32 * u);
    pdl_wait();
    float acc = 0.f;
#pragma unroll
    for (int u = 0; u < UNR; u++) acc += dot8(w[u], x + (long long)(lane + 32 * u) * 8);
    const float s0 = warp_sum(acc);
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncwarp();
    acc = 0.f;
#pragma unroll
    for (int u = 0; u < UNR; u++) acc += dot8(mine[u * 32 + lane], x + (long long)(lane + 32 * u) * 8);
    const float s1 = warp_sum(acc);
    if (lane == 0) { if (r0 < rows) y[r0] = s0; if (r0 + 1 < rows) y[r0 + 1] = s1; }
}

// grid-stride form: gridDim.x blocks (a few per SM, all resident at once), block b takes rows
// [b rows / G, (b+1) rows / G) and its warps take them in turn; early: each warp's first row's loads before the wait;
// trig 1: the trigger after the loads of the warp's last row (warps with no row trigger at once).
template <int UNR, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) mv_gs(const u16* W, const float* x, float* y, int rows, int cols, int early, int trig) {
    const int warps = THREADS / 32;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r0 = (int)((long long)blockIdx.x * rows / gridDim.x), r1 = (int)((long long)(blockIdx.x + 1) * rows / gridDim.x);
    if (trig == 0) pdl_trigger();
    if (!early) pdl_wait();
    bool first = true;
    int r = r0 + warp;
    if (r >= r1) { if (trig == 1) pdl_trigger(); if (early) pdl_wait(); return; }
    for (; r < r1; r += warps) {
        bool last = r + warps >= r1;
        float s = row_dot<UNR>(W + (long long)r * cols, x, cols, lane, early && first, trig == 1 && last);
        first = false;
        if (lane == 0) y[r] = s;
    }
}

// ---- 3. weights streamed by bulk copies (TMA, cp.async.bulk) into a shared-memory ring ----------------------
// One block per SM (8 compute warps + 1 producer warp; registers capped so two blocks fit, this kernel's and the next's); block b owns rows [b rows / G, (b+1) rows / G), a contiguous
// byte range that the producer warp's lane 0 copies chunk by chunk into `slots` ring slots (mbarrier full/empty per
// slot). The first `slots` chunks go out at entry, before pdl_wait: with the trigger at entry and the ring at most
// half of the SM's shared memory, the next kernel's block sits beside this one and fills its ring during this
// kernel's run, so no DRAM gap at the boundary. x is staged into shared memory (f32). A warp takes a contiguous run
// of 32-vector groups of each chunk (one group = 512 bytes, always in one row since cols % 256 == 0), sums per row,
// and adds the warp total into part[warp][row] (fixed order: deterministic).
// ---- flag form: the dependency on the previous kernel through a counter instead of griddepcontrol.wait ----------
// Each block of kernel i, once its rows are written, adds 1 to cnt[i] (after a fence); a block of kernel i + 1 issues
// its first batch of loads, then thread 0 polls cnt[i] (ld.acquire.gpu) until every block of kernel i has arrived.
// Launched programmatically with the trigger at entry, so all blocks of kernel i have started when kernel i + 1's
// blocks run (no deadlock). mode 0: the counter wait; 1: no wait, blocks still counted; 2: no wait, no count (1 and 2
// give wrong results: they only time the chain without its dependency).
__device__ __forceinline__ int ld_acquire_s32(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
template <int UNR>
__global__ void __launch_bounds__(256, 2) mv_rows_flag(const u16* W, const float* x, float* y, int rows, int cols,
                                                       const int* waitCnt, int waitTarget, int* doneCnt, int mode) {
    int row = (int)((blockIdx.x * 256u + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    pdl_trigger();
    const calm_u4* rv = (const calm_u4*)(W + (long long)min(row, rows - 1) * cols);
    float s = row_dot_hook<UNR>(rv, x, cols >> 3, lane, 0, [&](bool first, bool) {
        if (first && mode == 0 && waitCnt) {
            __syncthreads();
            if (threadIdx.x == 0) { while (ld_acquire_s32(waitCnt) < waitTarget) __nanosleep(32); }
            __syncthreads();
        }
    });
    if (lane == 0 && row < rows) y[row] = s;
    if (mode == 2) return;   // no count either: the engine's kernel without its wait
    __syncthreads();
    if (threadIdx.x == 0) { __threadfence(); atomicAdd(doneCnt, 1); }
}

// The engine's form (early loads, trigger at entry, griddepcontrol.wait) with %globaltimer stamps per block: entry,
// return from the wait, and the end (after the barrier that follows every warp's write). st: [blocks][3] u64.
__device__ __forceinline__ u64 gtimer() { u64 t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t; }
// px: x read in the lane order (row_dot_hook).
template <int UNR>
__global__ void __launch_bounds__(256, 2) mv_rows_stamp(const u16* W, const float* x, float* y, int rows, int cols, u64* st, int px) {
    int row = (int)((blockIdx.x * 256u + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (threadIdx.x == 0) st[blockIdx.x * 3] = gtimer();
    pdl_trigger();
    const calm_u4* rv = (const calm_u4*)(W + (long long)min(row, rows - 1) * cols);
    float s = row_dot_hook<UNR>(rv, x, cols >> 3, lane, px, [&](bool first, bool) {
        if (!first) return;
        pdl_wait();
        if (threadIdx.x == 0) st[blockIdx.x * 3 + 1] = gtimer();
    });
    if (lane == 0 && row < rows) y[row] = s;
    __syncthreads();
    if (threadIdx.x == 0) st[blockIdx.x * 3 + 2] = gtimer();
}

// Two adjacent rows per warp, UNR loads of each per batch (both rows' batch in flight together, one x chunk for both):
// half the blocks of mv_rows, so the down projection (4096 rows) is one wave of 256 blocks on 132 SMs x 2. st: stamps
// as mv_rows_stamp, or null.
template <int UNR>
__global__ void __launch_bounds__(256, 2) mv_rows2(const u16* W, const float* x, float* y, int rows, int cols, u64* st) {
    int r0 = (int)((blockIdx.x * 256u + threadIdx.x) >> 5) * 2;
    int lane = threadIdx.x & 31;
    if (st && threadIdx.x == 0) st[blockIdx.x * 3] = gtimer();
    pdl_trigger();
    const calm_u4* ra = (const calm_u4*)(W + (long long)min(r0, rows - 1) * cols);
    const calm_u4* rb = (const calm_u4*)(W + (long long)min(r0 + 1, rows - 1) * cols);
    int nvec = cols >> 3;
    float acc0 = 0.f, acc1 = 0.f;
    bool first = true;
    for (int v0 = 0; v0 < nvec; v0 += 32 * UNR) {
        calm_u4 wa[UNR], wb[UNR];
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int v = v0 + lane + 32 * u;
            wa[u] = v < nvec ? ldg_u4_stream(ra + v) : calm_u4{0u, 0u, 0u, 0u};
            wb[u] = v < nvec ? ldg_u4_stream(rb + v) : calm_u4{0u, 0u, 0u, 0u};
        }
        if (first) {
            first = false;
            pdl_wait();
            if (st && threadIdx.x == 0) st[blockIdx.x * 3 + 1] = gtimer();
        }
#pragma unroll
        for (int u = 0; u < UNR; u++) {
            int v = v0 + lane + 32 * u;
            if (v < nvec) { acc0 += dot8(wa[u], x + (long long)v * 8); acc1 += dot8(wb[u], x + (long long)v * 8); }
        }
    }
    float s0 = warp_sum(acc0), s1 = warp_sum(acc1);
    if (lane == 0 && r0 < rows) y[r0] = s0;
    if (lane == 0 && r0 + 1 < rows) y[r0 + 1] = s1;
    if (st) {
        __syncthreads();
        if (threadIdx.x == 0) st[blockIdx.x * 3 + 2] = gtimer();
    }
}


__device__ __forceinline__ void bar_compute() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

#define TMA_MAXSLOTS 12
// FP8: e4m3 weights with one fp32 scale per row (S), 16 per 16-byte vector; x is staged permuted per 32-vector chunk
// (element (c*32 + l)*16 + 4k + j at c*512 + k*128 + 4l + j, as matvec_quant.cu's xs kernels) so a lane's four 16-byte
// x reads are conflict-free. Needs cols % 512 == 0 (fp8) or % 256 (bf16).
template <bool FP8>
__device__ __forceinline__ void mv_tma_impl(const void* W, const float* S, const float* x, float* y, int rows, int cols, int slots, int chunk, int trig, int pdl, int maxRows) {
    extern __shared__ __align__(128) unsigned char sm[];
    __shared__ __align__(8) u64 full[TMA_MAXSLOTS], empty[TMA_MAXSLOTS];
    unsigned char* ring = sm;
    float* xs = (float*)(sm + (size_t)slots * chunk);
    float* part = xs + cols;                       // [8][maxRows]
    const int r0 = (int)((long long)blockIdx.x * rows / gridDim.x), r1 = (int)((long long)(blockIdx.x + 1) * rows / gridDim.x);
    const long long rowBytes = (long long)cols * (FP8 ? 1 : 2), total = (r1 - r0) * rowBytes;
    const unsigned char* src = (const unsigned char*)W + r0 * rowBytes;
    const int nch = (int)((total + chunk - 1) / chunk);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (threadIdx.x == 0) {
        for (int s = 0; s < slots; s++) { mbar_init(&full[s], 1); mbar_init(&empty[s], 8); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (trig == 0) pdl_trigger();
    if (warp == 8) {   // producer
        if (lane == 0) {
            for (int i = 0; i < nch; i++) {
                const int s = i % slots;
                if (i >= slots) mbar_wait(&empty[s], ((i / slots) - 1) & 1);
                const u32 bytes = (u32)min((long long)chunk, total - (long long)i * chunk);
                mbar_expect_tx(&full[s], bytes);
                bulk_g2s(ring + (size_t)s * chunk, src + (long long)i * chunk, bytes, &full[s]);
            }
        }
        if (pdl) pdl_wait();
        return;
    }
    if (pdl) pdl_wait();
    if (FP8)
        for (int e = threadIdx.x; e < cols; e += 256) {
            const int c = e >> 9, rem = e & 511, l = rem >> 4, k = (rem & 15) >> 2, j = rem & 3;
            xs[(c << 9) + k * 128 + 4 * l + j] = x[e];
        }
    else
        for (int c = threadIdx.x; c < cols; c += 256) xs[c] = x[c];
    for (int i = threadIdx.x; i < 8 * maxRows; i += 256) part[i] = 0.f;
    bar_compute();
    const int vpr = cols >> (FP8 ? 4 : 3);   // 16-byte vectors per row
    float acc = 0.f;
    int cur = -1;
    for (int i = 0; i < nch; i++) {
        const int s = i % slots;
        const int nv = (int)(min((long long)chunk, total - (long long)i * chunk) >> 4), ng = nv >> 5;
        const int vbase = i * (chunk >> 4);   // vectors before this chunk in the block's range (< 2^31: a block's rows are a few MB)
        const calm_u4* cv = (const calm_u4*)(ring + (size_t)s * chunk);
        const int g0 = warp * ng / 8, g1 = (warp + 1) * ng / 8;
        mbar_wait(&full[s], (i / slots) & 1);
        for (int gI = g0; gI < g1; gI++) {
            const int v = vbase + gI * 32;
            const int row = v / vpr, vin = v - row * vpr;   // vin: the group's first vector within its row
            if (row != cur) {
                if (cur >= 0) { float t = warp_sum(acc); if (lane == 0) part[warp * maxRows + cur] += t; }
                cur = row; acc = 0.f;
            }
            if (FP8) {
                const calm_f4* xp = (const calm_f4*)(xs + (vin >> 5) * 512) + lane;
                const calm_f4 xv[4] = { xp[0], xp[32], xp[64], xp[96] };
                acc += dot16_fp8(cv[gI * 32 + lane], xv);
            } else
                acc += dot8(cv[gI * 32 + lane], xs + vin * 8 + lane * 8);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[s]);
    }
    if (cur >= 0) { float t = warp_sum(acc); if (lane == 0) part[warp * maxRows + cur] += t; }
    bar_compute();
    for (int r = threadIdx.x; r < r1 - r0; r += 256) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < 8; w++) t += part[w * maxRows + r];
        y[r0 + r] = FP8 ? t * S[r0 + r] : t;
    }
}
__global__ void __launch_bounds__(288, 2) mv_tma(const u16* W, const float* x, float* y, int rows, int cols, int slots, int chunk, int trig, int pdl, int maxRows) {
    mv_tma_impl<false>(W, nullptr, x, y, rows, cols, slots, chunk, trig, pdl, maxRows);
}
__global__ void __launch_bounds__(288, 3) mv_tma3(const u16* W, const float* x, float* y, int rows, int cols, int slots, int chunk, int trig, int pdl, int maxRows) {
    mv_tma_impl<false>(W, nullptr, x, y, rows, cols, slots, chunk, trig, pdl, maxRows);
}
__global__ void __launch_bounds__(288, 2) mv_tma_fp8(const unsigned char* W, const float* S, const float* x, float* y, int rows, int cols, int slots, int chunk, int trig, int pdl, int maxRows) {
    mv_tma_impl<true>(W, S, x, y, rows, cols, slots, chunk, trig, pdl, maxRows);
}

// The CUDA-core fp8 form the engine had before the tensor cores (matvec_quant.cu matvec_fp8_impl, R = 2 rows per warp,
// U = 4 loads per row in flight, x from L1): the fp8 chain's baseline here. early: the first loads before pdl_wait.
__global__ void __launch_bounds__(256) mv_rows_fp8(const unsigned char* Q, const float* S, const float* x, float* y, int rows, int cols, int early) {
    const int R = 2, U = 4;
    int warp = (int)((blockIdx.x * 256u + threadIdx.x) >> 5), lane = threadIdx.x & 31, row0 = warp * R;
    pdl_trigger();
    if (!early) pdl_wait();
    if (row0 >= rows) { if (early) pdl_wait(); return; }
    const unsigned char* rp[R];
    float acc[R];
    for (int i = 0; i < R; i++) { acc[i] = 0.f; rp[i] = Q + (long long)min(row0 + i, rows - 1) * cols; }
    const int nvec = cols >> 4;
    bool first = true;
    for (int v = lane; v < nvec; v += 32 * U) {   // nvec % (32 U) == 0 for the chain's shapes
        calm_u4 w[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < R; i++) w[i][u] = ldg_u4_stream((const calm_u4*)rp[i] + v + 32 * u);
        if (early && first) pdl_wait();
        first = false;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const calm_f4* xp = (const calm_f4*)(x + (long long)(v + 32 * u) * 16);
            const calm_f4 xv[4] = { xp[0], xp[1], xp[2], xp[3] };
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] += dot16_fp8(w[i][u], xv);
        }
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        float t = warp_sum(acc[i]);
        if (lane == 0 && row0 + i < rows) y[row0 + i] = t * S[row0 + i];
    }
}

// ---- host -------------------------------------------------------------------------------------------------------
__global__ void fill_bf16(u16* p, long long n, float scale, u32 seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        float f = ((h & 0xffffff) / 16777216.f * 2.f - 1.f) * scale;
        p[i] = (u16)(__float_as_uint(f) >> 16);
    }
}
__global__ void fill_f32(float* p, long long n, u32 seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = (h & 0xffffff) / 16777216.f * 2.f - 1.f;
    }
}

__global__ void fill_fp8(unsigned char* p, long long n, u32 seed) {   // random e4m3 codes below 2^3, no NaN codes
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = (unsigned char)((h & 0x80u) | (h % 0x50u));
    }
}

__global__ void fill_scale(float* p, int n, float v) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) p[i] = (i & 1) ? v : -v;
}

template <typename K, typename... A>
static void launch_smem(K k, int grid, int threads, size_t smem, cudaStream_t s, bool pdl, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid); cfg.blockDim = dim3(threads); cfg.stream = s; cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, args...));
}
template <typename K, typename... A>
static void launch(K k, int grid, int threads, cudaStream_t s, bool pdl, A... args) { launch_smem(k, grid, threads, 0, s, pdl, args...); }

static int g_sms;

struct Variant { std::string name; int kind; int early; int trig; int gridPerSm; bool pdl; int budgetKB = 0; int chunkKB = 16; };
// kind 0: mv_rows<16>; 1: mv_gs<16,256,2>; 2: mv_gs<8,512,1>; 3: mv_rows<8>; 4: mv_gs<16,256,1> (up to 255 regs);
// 5: mv_tma, one block per SM, ring = as many chunks as fit in budgetKB of shared memory beside x and the partials

// The ring of a TMA variant: as many chunks as fit in budgetKB beside x (f32) and the per-warp row partials (chunks
// halved down to 4 KB until at least two fit).
struct TmaCfg { int slots, chunk, maxRows; size_t smem; };
static TmaCfg tma_cfg(const Variant& v, int rows, int cols) {
    const int G = g_sms * std::max(1, v.gridPerSm);
    int maxRows = (rows + G - 1) / G + 1, chunk = v.chunkKB * 1024;
    size_t fixed = (size_t)cols * 4 + (size_t)8 * maxRows * 4;
    int slots = std::min(TMA_MAXSLOTS, (int)(((size_t)v.budgetKB * 1024 - fixed) / chunk));
    while (slots < 2 && chunk > 4096) { chunk /= 2; slots = std::min(TMA_MAXSLOTS, (int)(((size_t)v.budgetKB * 1024 - fixed) / chunk)); }
    if (slots < 2) { printf("budget %d KB too small for %d x %d\n", v.budgetKB, rows, cols); exit(1); }
    return { slots, chunk, maxRows, (size_t)slots * chunk + fixed };
}

static void mv(const Variant& v, const u16* W, const float* x, float* y, int rows, int cols, cudaStream_t s) {
    int G;
    switch (v.kind) {
    case 0: launch(mv_rows<16>, (rows + 7) / 8, 256, s, v.pdl, W, x, y, rows, cols, v.early, v.trig); break;
    case 3: launch(mv_rows<8>, (rows + 7) / 8, 256, s, v.pdl, W, x, y, rows, cols, v.early, v.trig); break;
    case 1: G = std::min(g_sms * v.gridPerSm, (rows + 7) / 8); launch(mv_gs<16, 256, 2>, G, 256, s, v.pdl, W, x, y, rows, cols, v.early, v.trig); break;
    case 2: G = std::min(g_sms * v.gridPerSm, (rows + 15) / 16); launch(mv_gs<8, 512, 1>, G, 512, s, v.pdl, W, x, y, rows, cols, v.early, v.trig); break;
    case 4: G = std::min(g_sms * v.gridPerSm, (rows + 7) / 8); launch(mv_gs<16, 256, 1>, G, 256, s, v.pdl, W, x, y, rows, cols, v.early, v.trig); break;
    case 5: {
        TmaCfg c = tma_cfg(v, rows, cols);
        static bool attr = false;
        if (!attr) {
            CK(cudaFuncSetAttribute(mv_tma, cudaFuncAttributeMaxDynamicSharedMemorySize, 220 * 1024));
            CK(cudaFuncSetAttribute(mv_tma3, cudaFuncAttributeMaxDynamicSharedMemorySize, 220 * 1024));
            attr = true;
        }
        // gridPerSm blocks per SM (the seventh and ninth sessions' form: 1); 3 per SM: the register-capped instance
        const int G = g_sms * std::max(1, v.gridPerSm);
        if (v.gridPerSm >= 3) launch_smem(mv_tma3, G, 288, c.smem, s, v.pdl, W, x, y, rows, cols, c.slots, c.chunk, v.trig, (int)v.pdl, c.maxRows);
        else launch_smem(mv_tma, G, 288, c.smem, s, v.pdl, W, x, y, rows, cols, c.slots, c.chunk, v.trig, (int)v.pdl, c.maxRows);
        break;
    }
    }
}

// fp8 chain: kind 6 mv_rows_fp8 (early = first loads before the wait), 7 mv_tma_fp8
static void mv8(const Variant& v, const unsigned char* W, const float* S, const float* x, float* y, int rows, int cols, cudaStream_t s) {
    if (v.kind == 6) { launch(mv_rows_fp8, (rows + 15) / 16, 256, s, v.pdl, W, S, x, y, rows, cols, v.early); return; }
    TmaCfg c = tma_cfg(v, rows, cols);
    static bool attr = false;
    if (!attr) { CK(cudaFuncSetAttribute(mv_tma_fp8, cudaFuncAttributeMaxDynamicSharedMemorySize, 220 * 1024)); attr = true; }
    launch_smem(mv_tma_fp8, g_sms, 288, c.smem, s, v.pdl, W, S, x, y, rows, cols, c.slots, c.chunk, v.trig, (int)v.pdl, c.maxRows);
}

static float median(std::vector<float> a) { std::sort(a.begin(), a.end()); return a[a.size() / 2]; }

// One chain variant: captures enqueue() (one decode step) into a graph, warms it up, compares the output out[0..n)
// with ref (filled by the first variant, first = true), and prints the median step time against bytes per step.
template <typename F>
static void time_chain(const std::string& name, F enqueue, const float* out, int n, std::vector<float>& ref, bool first, long long bytes, cudaStream_t s) {
    cudaGraph_t g; cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    enqueue();
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int w = 0; w < 3; w++) CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    std::vector<float> got(n);
    CK(cudaMemcpy(got.data(), out, n * 4, cudaMemcpyDeviceToHost));
    if (first) ref = got;
    double maxRel = 0, maxRef = 0;
    for (int i = 0; i < n; i++) maxRef = std::max(maxRef, (double)fabsf(ref[i]));
    for (int i = 0; i < n; i++) maxRel = std::max(maxRel, fabs((double)got[i] - ref[i]) / maxRef);
    std::vector<float> t = graph_ms(ge, s, 4);
    float ms = t[t.size() / 2];
    printf("%-36s %.4f ms/step (min %.4f max %.4f)  %7.1f GB/s  diff %.1e\n", name.c_str(), ms, t.front(), t.back(), bytes / (ms * 1e6), maxRel);
    CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
}

int main(int argc, char** argv) {
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    g_sms = p.multiProcessorCount;
    printf("%s, %d SMs, L2 %d MB\n", p.name, g_sms, p.l2CacheSize >> 20);
    cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));   // the streaming-read timings

    // 1. streaming read over 4 GiB: grid (blocks per SM x 256 threads) and loads in flight per thread (argument "chain": skipped)
    if (argc <= 1) {
        long long bytes = 4LL << 30, n = bytes / 16;
        calm_u4* buf; u32* out; CK(cudaMalloc(&buf, bytes)); CK(cudaMalloc(&out, 1 << 20));
        CK(cudaMemset(buf, 1, bytes));
        printf("\n[bw_read] 4 GiB, 256-thread blocks: KB in flight per SM = blocks/SM x 256 x UNR x 16 B\n");
        int bps[] = {1, 2, 3, 4, 8};
        for (int unr : {4, 8, 16}) for (int b : bps) {
            int grid = g_sms * b;
            std::vector<float> t;
            for (int rep = 0; rep < 7; rep++) {
                CK(cudaEventRecord(e0, s));
                if (unr == 4) bw_read_unr<4><<<grid, 256, 0, s>>>(buf, n, out);
                else if (unr == 8) bw_read_unr<8><<<grid, 256, 0, s>>>(buf, n, out);
                else bw_read_unr<16><<<grid, 256, 0, s>>>(buf, n, out);
                CK(cudaEventRecord(e1, s)); CK(cudaEventSynchronize(e1));
                float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); t.push_back(ms);
            }
            float ms = median(t);
            printf("bw_read UNR %2d blocks/SM %d  in flight %4d KB/SM  %7.1f GB/s\n", unr, b, b * 256 * unr * 16 / 1024, bytes / (ms * 1e6));
        }
        CK(cudaFree(buf)); CK(cudaFree(out));
    }

    // 2. the layer chain
    const int D = 4096, QKV = 6144, F = 14336, NL = 8, STEPL = 32;
    struct M { int rows, cols; };
    M shapes[4] = {{QKV, D}, {D, D}, {2 * F, D}, {D, F}};
    std::vector<u16*> W(NL * 4);
    long long layerBytes = 0;
    for (int k = 0; k < 4; k++) layerBytes += (long long)shapes[k].rows * shapes[k].cols * 2;
    for (int l = 0; l < NL; l++) for (int k = 0; k < 4; k++) {
        long long n = (long long)shapes[k].rows * shapes[k].cols;
        CK(cudaMalloc(&W[l * 4 + k], n * 2));
        fill_bf16<<<1024, 256, 0, s>>>(W[l * 4 + k], n, sqrtf(3.f / shapes[k].cols), 17u * (l * 4 + k) + 1);
    }
    float *xa, *xq, *xo, *xg, *xd;
    CK(cudaMalloc(&xa, D * 4)); CK(cudaMalloc(&xq, QKV * 4)); CK(cudaMalloc(&xo, D * 4)); CK(cudaMalloc(&xg, 2 * F * 4)); CK(cudaMalloc(&xd, D * 4));
    fill_f32<<<16, 256, 0, s>>>(xa, D, 5);
    CK(cudaStreamSynchronize(s));
    long long stepBytes = layerBytes * STEPL;
    printf("\n[chain] %d layers x (qkv %dx%d, o %dx%d, gate_up %dx%d, down %dx%d) = %.2f GB per step\n", STEPL, QKV, D, D, D, 2 * F, D, D, F, stepBytes / 1e9);

    std::vector<Variant> vars = {
        {"rows16 start-trigger (engine now)", 0, 0, 0, 0, true},
        {"rows16 start-trigger early", 0, 1, 0, 0, true},
        {"rows16 late-trigger early", 0, 1, 1, 0, true},
        {"rows16 no PDL", 0, 0, 0, 0, false},
        {"rows8 start-trigger", 3, 0, 0, 0, true},
        {"gs16x256 G=1/SM late early", 1, 1, 1, 1, true},
        {"gs16x256 G=1/SM start early", 1, 1, 0, 1, true},
        {"gs16x256 G=1/SM late no-early", 1, 0, 1, 1, true},
        {"gs16x256 G=2/SM late early", 1, 1, 1, 2, true},
        {"gs16x256 G=2/SM start", 1, 0, 0, 2, true},
        {"gs8x512 G=1/SM late early", 2, 1, 1, 1, true},
        {"gs16x256(255r) G=1/SM late early", 4, 1, 1, 1, true},
        {"gs16x256 G=1/SM no PDL", 1, 0, 0, 1, false},
        {"tma 110KB/16KB start-trigger", 5, 1, 0, 1, true, 110, 16},
        {"tma 110KB/8KB start-trigger", 5, 1, 0, 1, true, 110, 8},
        {"tma 110KB/32KB start-trigger", 5, 1, 0, 1, true, 110, 32},
        {"tma 90KB/16KB start-trigger", 5, 1, 0, 1, true, 90, 16},
        {"tma 110KB/16KB no PDL", 5, 0, 0, 1, false, 110, 16},
        {"tma 200KB/16KB start-trigger", 5, 1, 0, 1, true, 200, 16},
    };
    // One decode step: mvk(matrix index layer*4 + k, x, y, rows, cols) for the four matrices of each of the 32 layers.
    auto chain = [&](auto mvk) {
        for (int l = 0; l < STEPL; l++) {
            int wl = (l % NL) * 4;
            mvk(wl + 0, l == 0 ? xa : xd, xq, QKV, D);
            mvk(wl + 1, xq, xo, D, D);          // o reads the first D of qkv (stands in for attention)
            mvk(wl + 2, xo, xg, 2 * F, D);
            mvk(wl + 3, xg, xd, D, F);          // down reads the first F of gate_up
        }
    };
    // "flag": the engine's form (early loads, trigger at entry, griddepcontrol.wait) against the counter wait and no wait
    if (argc > 1 && std::string(argv[1]) == "flag") {
        int* cnt; CK(cudaMalloc(&cnt, 4 * STEPL * 4 * sizeof(int)));
        std::vector<float> refF(D);
        Variant eng = {"rows16 start-trigger early (engine)", 0, 1, 0, 0, true};
        for (int rep = 0; rep < 2; rep++) {
            time_chain(eng.name, [&] { chain([&](int m, const float* x, float* y, int r, int c) { mv(eng, W[m], x, y, r, c, s); }); },
                       xd, D, refF, rep == 0, stepBytes, s);
            for (int mode : {0, 1, 2}) {
                time_chain(mode == 0 ? "rows16 counter wait (flag)" : mode == 1 ? "rows16 no wait, counted (wrong)" : "rows16 no wait, no count (wrong)", [&] {
                    CK(cudaMemsetAsync(cnt, 0, 4 * STEPL * 4 * sizeof(int), s));
                    int i = 0, prevBlocks = 0;
                    chain([&](int m, const float* x, float* y, int r, int c) {
                        int blocks = (r + 7) / 8;
                        launch(mv_rows_flag<16>, blocks, 256, s, i > 0, W[m], x, y, r, c, i > 0 ? (const int*)cnt + i - 1 : (const int*)nullptr,
                               prevBlocks, cnt + i, mode);
                        prevBlocks = blocks; i++;
                    });
                }, xd, D, refF, false, stepBytes, s);
            }
            // the engine's form for every matrix but those in mask (bit k: qkv 0, o 1, gate_up 2, down 3), which
            // alt(m, x, y, r, c) launches
            auto mixed = [&](const std::string& name, int mask, auto alt) {
                time_chain(name, [&] {
                    int i = 0;
                    chain([&](int m, const float* x, float* y, int r, int c) {
                        if (mask & (1 << (i % 4))) alt(m, x, y, r, c);
                        else mv(eng, W[m], x, y, r, c, s);
                        i++;
                    });
                }, xd, D, refF, false, stepBytes, s);
            };
            auto capped3 = [&](int m, const float* x, float* y, int r, int c) { launch(mv_rows_b<16, 3>, (r + 7) / 8, 256, s, true, W[m], x, y, r, c); };
            auto cpa = [&](int m, const float* x, float* y, int r, int c) { launch_smem(mv_rows_cpa<16>, (r + 15) / 16, 256, 64 * 1024, s, true, W[m], x, y, r, c); };
            auto rows14 = [&](int m, const float* x, float* y, int r, int c) { launch(mv_rows<14>, (r + 7) / 8, 256, s, true, W[m], x, y, r, c, 1, 0); };
            auto rows2 = [&](int m, const float* x, float* y, int r, int c) { launch(mv_rows2<8>, (r + 15) / 16, 256, s, true, W[m], x, y, r, c, (u64*)nullptr); };
            if (getenv("PROBE_ALL")) {   // capped for 3 blocks per SM (80 registers, spills): every kernel, down only, all but down
                mixed("rows16 3 blocks/SM, every kernel", 15, capped3);
                mixed("rows16 3 blocks/SM, down only", 8, capped3);
                mixed("rows16 3 blocks/SM, all but down", 7, capped3);
            }
            // two rows per warp, the second by cp.async into shared memory: o only, qkv and o, qkv, o and gate_up
            CK(cudaFuncSetAttribute(mv_rows_cpa<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
            mixed("rows16, o cp.async 2 rows/warp", 2, cpa);
            mixed("rows16, qkv+o cp.async 2 rows/warp", 3, cpa);
            mixed("rows16, qkv+o+gate_up cp.async 2 rows/warp", 7, cpa);
            // the same with one shared-memory carveout for both kernels (no L1 / shared reconfiguration between them)
            for (int cv : {60, -1}) {
                CK(cudaFuncSetAttribute(mv_rows<16>, cudaFuncAttributePreferredSharedMemoryCarveout, cv));
                CK(cudaFuncSetAttribute(mv_rows_cpa<16>, cudaFuncAttributePreferredSharedMemoryCarveout, cv));
                if (cv < 0) break;
                mixed("rows16, carveout 60 for both", 0, cpa);
                mixed("carveout 60, o cp.async 2 rows/warp", 2, cpa);
                mixed("carveout 60, qkv+o cp.async 2 rows/warp", 3, cpa);
            }
            // bulk copies into shared-memory rings at 2 or 3 blocks per SM (8 compute warps + a producer each), every
            // matrix or all but down (whose x alone is 57 KB of each block's shared memory)
            struct TV { const char* name; int perSm, budget, chunk, mask; };
            if (getenv("PROBE_ALL")) for (TV tv : {TV{"tma 2/SM 100KB/16KB, every kernel", 2, 100, 16, 15}, TV{"tma 2/SM 100KB/8KB, every kernel", 2, 100, 8, 15},
                          TV{"tma 2/SM 100KB/16KB, all but down", 2, 100, 16, 7}, TV{"tma 3/SM 72KB/8KB, all but down", 3, 72, 8, 7}}) {
                Variant tvv = {tv.name, 5, 1, 0, tv.perSm, true, tv.budget, tv.chunk};
                mixed(tv.name, tv.mask, [&](int m, const float* x, float* y, int r, int c) { mv(tvv, W[m], x, y, r, c, s); });
            }
            mixed("rows16, down rows14", 8, rows14);   // down's rows in 4 full batches of 14 loads (7 KB) instead of 3.5 of 16
            mixed("rows16, down rows2x8", 8, rows2);   // two rows per warp, 8 loads each
            mixed("rows16, down and o rows2x8", 10, rows2);
        }
        // each shape alone, 32 launches per graph: the engine's form against registers capped for 3 blocks per SM
        CK(cudaFuncSetAttribute(mv_rows_cpa<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));
        for (int k = 0; k < 3; k++) for (int b3 : {0, 2, 0, 2}) {   // 2: two rows per warp, the second by cp.async
            cudaGraph_t g1; cudaGraphExec_t ge1;
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            for (int l = 0; l < 32; l++) {
                const int r = shapes[k].rows, c = shapes[k].cols;
                const float* xin = k == 3 ? xg : xa;
                float* yout = k == 3 ? xd : xg;
                if (b3 == 2) launch_smem(mv_rows_cpa<16>, (r + 15) / 16, 256, 64 * 1024, s, true, W[(l % NL) * 4 + k], xin, yout, r, c);
                else if (b3) launch(mv_rows_b<16, 3>, (r + 7) / 8, 256, s, true, W[(l % NL) * 4 + k], xin, yout, r, c);
                else launch(mv_rows<16>, (r + 7) / 8, 256, s, true, W[(l % NL) * 4 + k], xin, yout, r, c, 1, 0);
            }
            CK(cudaStreamEndCapture(s, &g1));
            CK(cudaGraphInstantiate(&ge1, g1, 0));
            CK(cudaGraphLaunch(ge1, s)); CK(cudaStreamSynchronize(s));
            std::vector<float> t = graph_ms(ge1, s, 1);
            for (float& ms : t) ms = ms * 1000 / 32;
            const double b = (double)shapes[k].rows * shapes[k].cols * 2;
            printf("%5d x %5d alone, %s: %.2f us per launch (%.1f GB/s)\n", shapes[k].rows, shapes[k].cols, b3 == 2 ? "2 rows/warp, cp.async" : b3 ? "3 blocks/SM" : "2 blocks/SM (engine)", median(t), b / (median(t) * 1e3));
            CK(cudaGraphExecDestroy(ge1)); CK(cudaGraphDestroy(g1));
        }
        // the down shape alone, 32 launches per graph: 16 loads per batch (3.5 batches) against 14 (4)
        for (int unr : {16, 14}) {
            cudaGraph_t g1; cudaGraphExec_t ge1;
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            for (int l = 0; l < 32; l++) {
                if (unr == 16) launch(mv_rows<16>, D / 8, 256, s, true, W[(l % NL) * 4 + 3], xg, xd, D, F, 1, 0);
                else launch(mv_rows<14>, D / 8, 256, s, true, W[(l % NL) * 4 + 3], xg, xd, D, F, 1, 0);
            }
            CK(cudaStreamEndCapture(s, &g1));
            CK(cudaGraphInstantiate(&ge1, g1, 0));
            CK(cudaGraphLaunch(ge1, s)); CK(cudaStreamSynchronize(s));
            std::vector<float> t = graph_ms(ge1, s, 1);
            for (float& ms : t) ms = ms * 1000 / 32;
            printf("down %d x %d alone, %d loads per batch: %.2f us per launch (%.1f GB/s)\n", D, F, unr, median(t), (double)D * F * 2 / (median(t) * 1e3));
            CK(cudaGraphExecDestroy(ge1)); CK(cudaGraphDestroy(g1));
        }
        // where a boundary's time goes: the engine's form with per-block stamps (one graph launch after warm-up)
        const int NK = STEPL * 4;
        std::vector<int> nb(NK);
        std::vector<u64*> st(NK);
        for (int i = 0; i < NK; i++) { nb[i] = (shapes[i % 4].rows + 7) / 8; CK(cudaMalloc(&st[i], nb[i] * 3 * sizeof(u64))); }
        std::vector<int> nb1 = nb;
        for (int pxm : {0, 4, 12, 1, 0}) {   // bit 0: down reads x in the lane order, bit 1 o; bit 2: down two rows per warp, bit 3 o
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        { int i = 0; chain([&](int m, const float* x, float* y, int r, int c) {
            const int px = (i % 4 == 3 && (pxm & 1)) || (i % 4 == 1 && (pxm & 2)) ? 1 : 0;
            const bool two = (i % 4 == 3 && (pxm & 4)) || (i % 4 == 1 && (pxm & 8));
            nb[i] = two ? (nb1[i] + 1) / 2 : nb1[i];
            if (two) launch(mv_rows2<8>, nb[i], 256, s, true, W[m], x, y, r, c, st[i]);
            else launch(mv_rows_stamp<16>, nb[i], 256, s, true, W[m], x, y, r, c, st[i], px);
            i++; }); }
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        for (int w = 0; w < 5; w++) CK(cudaGraphLaunch(ge, s));
        CK(cudaStreamSynchronize(s));
        std::vector<std::vector<u64>> h(NK);
        for (int i = 0; i < NK; i++) { h[i].resize(nb[i] * 3); CK(cudaMemcpy(h[i].data(), st[i], nb[i] * 3 * sizeof(u64), cudaMemcpyDeviceToHost)); }
        const char* names[4] = {"qkv 6144x4096", "o 4096x4096", "gate_up 28672x4096", "down 4096x14336"};
        double sum[4][6] = {};
        int cntk[4] = {};
        for (int i = 1; i < NK; i++) {
            u64 aEnd = 0, aEndP90, bStart = ~0ull, bWaitMin = ~0ull, bWaitMax = 0, bEnd = 0;
            std::vector<u64> ends;
            for (int b = 0; b < nb[i - 1]; b++) { aEnd = std::max(aEnd, h[i - 1][b * 3 + 2]); ends.push_back(h[i - 1][b * 3 + 2]); }
            std::sort(ends.begin(), ends.end());
            aEndP90 = ends[ends.size() * 9 / 10];
            int early = 0;
            for (int b = 0; b < nb[i]; b++) {
                bStart = std::min(bStart, h[i][b * 3]); bWaitMin = std::min(bWaitMin, h[i][b * 3 + 1]);
                bWaitMax = std::max(bWaitMax, h[i][b * 3 + 1]); bEnd = std::max(bEnd, h[i][b * 3 + 2]);
                if (h[i][b * 3] < aEnd) early++;
            }
            int k = i % 4;
            // [0] span end-to-end, [1] release: first wait return - previous end, [2] previous kernel's last 10% of
            // blocks (p90 -> last end), [3] first block start before the previous end, [4] blocks resident before it ended
            sum[k][0] += (double)(bEnd - aEnd); sum[k][1] += (double)bWaitMin - (double)aEnd; sum[k][2] += (double)(aEnd - aEndP90);
            sum[k][3] += (double)aEnd - (double)bStart; sum[k][4] += early; sum[k][5] += (double)(bWaitMax - bWaitMin);
            cntk[k]++;
        }
        std::vector<float> tg = graph_ms(ge, s, 1);
        printf("\n[stamps] engine form%s, per kernel (mean over the step, microseconds; globaltimer); step %.4f ms\n",
               pxm == 0 ? "" : pxm == 1 ? ", down reads x in the lane order" : pxm == 4 ? ", down two rows per warp" : ", down and o two rows per warp", median(tg));
        printf("%-20s %9s %9s %9s %9s %9s %9s %9s\n", "kernel", "span", "bytes@4.4", "release", "prevTail", "startEarly", "earlyBlk", "waitSprd");
        for (int k = 0; k < 4; k++) {
            double n = cntk[k], bytes = (double)shapes[k].rows * shapes[k].cols * 2;
            printf("%-20s %9.2f %9.2f %9.2f %9.2f %9.2f %9.0f %9.2f\n", names[k], sum[k][0] / n / 1e3, bytes / 4.4e12 * 1e6, sum[k][1] / n / 1e3,
                   sum[k][2] / n / 1e3, sum[k][3] / n / 1e3, sum[k][4] / n, sum[k][5] / n / 1e3);
        }
        CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
        }
        printf("done\n");
        return 0;
    }
    // reference output of the engine's form, to check every variant computes the same chain
    std::vector<float> ref(D);
    for (size_t vi = 0; vi < vars.size(); vi++) {
        const Variant& v = vars[vi];
        time_chain(v.name, [&] { chain([&](int m, const float* x, float* y, int r, int c) { mv(v, W[m], x, y, r, c, s); }); },
                   xd, D, ref, vi == 0, stepBytes, s);
    }

    // 3. each matrix alone: a graph of 32 launches of one shape over the 8 layers' weights (no dependence on data
    // besides the stream order), engine form vs grid-stride
    printf("\n[single] one shape, 32 launches per graph over 8 weight copies\n");
    for (int k = 0; k < 4; k++) for (int vi : {0, 2, 5, 13, 14, 17}) {
        const Variant& v = vars[vi];
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int l = 0; l < 32; l++) mv(v, W[(l % NL) * 4 + k], k == 3 ? xg : xa, k == 3 ? xd : xg, shapes[k].rows, shapes[k].cols, s);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaGraphLaunch(ge, s)); CK(cudaStreamSynchronize(s));
        std::vector<float> t = graph_ms(ge, s, 1);
        for (float& ms : t) ms = ms * 1000 / 32;   // microseconds per launch
        float us = median(t);
        long long b = (long long)shapes[k].rows * shapes[k].cols * 2;
        printf("%5d x %5d  %-36s %8.2f us  %7.1f GB/s\n", shapes[k].rows, shapes[k].cols, v.name.c_str(), us, b / (us * 1e3));
        CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    }
    // 4. the same chain with fp8 weights (one fp32 scale per row): the CUDA-core form vs the TMA ring
    {
        std::vector<unsigned char*> W8(NL * 4);
        std::vector<float*> S8(NL * 4);
        long long stepBytes8 = 0;
        for (int k = 0; k < 4; k++) stepBytes8 += (long long)shapes[k].rows * (shapes[k].cols + 4);
        stepBytes8 *= STEPL;
        for (int l = 0; l < NL; l++) for (int k = 0; k < 4; k++) {
            long long n = (long long)shapes[k].rows * shapes[k].cols;
            CK(cudaMalloc(&W8[l * 4 + k], n)); CK(cudaMalloc(&S8[l * 4 + k], shapes[k].rows * 4));
            fill_fp8<<<1024, 256, 0, s>>>(W8[l * 4 + k], n, 31u * (l * 4 + k) + 7);
            fill_scale<<<64, 256, 0, s>>>(S8[l * 4 + k], shapes[k].rows, 0.3f / sqrtf((float)shapes[k].cols));   // keeps |x| ~ 1 along the chain
        }
        CK(cudaStreamSynchronize(s));
        printf("\n[chain fp8] the same chain with e4m3 weights and row scales: %.2f GB per step\n", stepBytes8 / 1e9);
        std::vector<Variant> v8 = {
            {"fp8 rows (CUDA-core form)", 6, 0, 0, 0, true},
            {"fp8 rows early", 6, 1, 0, 0, true},
            {"fp8 tma 110KB/16KB start-trigger", 7, 1, 0, 1, true, 110, 16},
            {"fp8 tma 110KB/8KB start-trigger", 7, 1, 0, 1, true, 110, 8},
            {"fp8 tma 110KB/16KB no PDL", 7, 0, 0, 1, false, 110, 16},
        };
        std::vector<float> ref8(D);
        for (size_t vi = 0; vi < v8.size(); vi++) {
            const Variant& v = v8[vi];
            time_chain(v.name, [&] { chain([&](int m, const float* x, float* y, int r, int c) { mv8(v, W8[m], S8[m], x, y, r, c, s); }); },
                       xd, D, ref8, vi == 0, stepBytes8, s);
        }
    }
    printf("done\n");
    return 0;
}

// stream_modes.cu: a standalone probe (nvcc, runs on the GPU machine; not part of the engine) for one question the
// kernels left open: on this GPU, does a warp that streams its bytes through shared memory (cp.async or bulk copies,
// so its next bytes are in flight while it works) keep HBM busier than a warp that loads a batch into registers, works
// on it, then loads the next (the engine's matvec and attention kernels)? cp.async rings measured slower in every
// engine kernel they were tried in (bench/RESULTS.md, 2026-11-26 .. 2026-11-30), but those kernels changed more than
// the loads. Here the only difference between the forms is how the bytes arrive.
//
// Every form reads a 2 GiB buffer once per launch: each warp a contiguous range, 512 bytes per warp step (lane l
// the l-th 16 bytes), and does W fused multiply-adds per 16 bytes on the loaded words (4 independent chains), which
// stands in for the kernels' work per byte: bf16 matvec ~23, fp8 ~28, int4 ~72 instructions per lane per 16 bytes
// (Nsight Compute, bench/RESULTS.md fifth session). Forms:
//   reg U     : U loads per lane in flight, then the U are worked on, then the next U (the engine's form)
//   regdb U   : two register batches of U, the next in flight while the current one is worked on
//   cpa S     : per-warp ring of S slots of 512 bytes, cp.async.cg 16 bytes per lane, S-1 steps ahead
//   bulk S K  : per-warp ring of S slots of 512K bytes, lane 0 issues cp.async.bulk per slot, an mbarrier per slot
//   tma S C   : per block a producer warp (lane 0) and 8 worker warps, a ring of S chunks of C KB (the ninth
//               session's matvec ring, here with nothing else)
//   short / persist ST x U : the quantized matvecs' block shape (one tile of 8 warps x ST stages of U loads, then a
//               block reduction), one block per tile or a grid that takes the tiles in turn
//   fp8pat R  : the fp8 tensor-core matvec's loads over 16 rows of R bytes per block, against the same bytes read
//               contiguously (contig R)
//   rowpat    : 16-row blocks read stage by stage, R rows per load instruction and runs of 2-8 KB per row per stage
//   prefetch  : rowpat with runs of 2 KB and the loads' L2 prefetch-size hint (.L2::128B / .L2::256B)
// at 1 .. 4 blocks of 256 threads (tma: 288) per SM. GB/s = bytes read / median time of one launch (7 x 10 launches).
// Build and run:  nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/stream_modes tools/probe/stream_modes.cu && /tmp/stream_modes
#include <cstdint>
#include <string>
#include "probe.cuh"
#include "../../kernels/common.cuh"   // calm_u4, ldg_u4_stream
#include "probe_async.cuh"           // mbarriers, bulk copies

// W multiply-adds on the 4 words of v (as floats, exponent forced small so nothing overflows), 4 chains
template <int W>
__device__ __forceinline__ void work(const calm_u4& v, float (&a)[4]) {
    const float f[4] = { __uint_as_float((v.x & 0x007fffffu) | 0x3f000000u), __uint_as_float((v.y & 0x007fffffu) | 0x3f000000u),
                         __uint_as_float((v.z & 0x007fffffu) | 0x3f000000u), __uint_as_float((v.w & 0x007fffffu) | 0x3f000000u) };
    if (W == 0) { a[0] += f[0]; a[1] += f[1]; a[2] += f[2]; a[3] += f[3]; return; }
#pragma unroll
    for (int k = 0; k < W; k++) a[k & 3] = fmaf(a[k & 3], f[k & 3], 0.25f);
}
__device__ __forceinline__ void finish(const float (&a)[4], float* out) {
    float s = (a[0] + a[1]) + (a[2] + a[3]);
    if (s == 1.2345f) out[threadIdx.x] = s;   // never true in practice; keeps the work
}

// ---- reg U: batches in registers --------------------------------------------------------------------------------
template <int U, int W>
__global__ void __launch_bounds__(256) st_reg(const calm_u4* in, long long perWarp, float* out) {
    const long long wg = blockIdx.x * 8LL + (threadIdx.x >> 5);
    const calm_u4* p = in + wg * perWarp + (threadIdx.x & 31);
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    for (long long s = 0; s < perWarp; s += 32 * U) {
        calm_u4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = ldg_u4_stream(p + s + 32 * u);
#pragma unroll
        for (int u = 0; u < U; u++) work<W>(v[u], a);
    }
    finish(a, out);
}
// ---- regdb U: two batches, the next in flight while the current is worked on ---------------------------------------
template <int U, int W>
__global__ void __launch_bounds__(256) st_regdb(const calm_u4* in, long long perWarp, float* out) {
    const long long wg = blockIdx.x * 8LL + (threadIdx.x >> 5);
    const calm_u4* p = in + wg * perWarp + (threadIdx.x & 31);
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    calm_u4 v0[U], v1[U];
#pragma unroll
    for (int u = 0; u < U; u++) v0[u] = ldg_u4_stream(p + 32 * u);
    for (long long s = 0; s < perWarp; s += 64 * U) {   // perWarp % (64 U) == 0
#pragma unroll
        for (int u = 0; u < U; u++) v1[u] = ldg_u4_stream(p + s + 32 * U + 32 * u);
#pragma unroll
        for (int u = 0; u < U; u++) work<W>(v0[u], a);
        if (s + 64 * U < perWarp) {
#pragma unroll
            for (int u = 0; u < U; u++) v0[u] = ldg_u4_stream(p + s + 64 * U + 32 * u);
        }
#pragma unroll
        for (int u = 0; u < U; u++) work<W>(v1[u], a);
    }
    finish(a, out);
}
// ---- cpa S: per-warp cp.async ring ---------------------------------------------------------------------------------
__device__ __forceinline__ void cpa16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cpa_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cpa_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

template <int S, int W>
__global__ void __launch_bounds__(256) st_cpa(const calm_u4* in, long long perWarp, float* out) {
    extern __shared__ __align__(16) calm_u4 ring[];   // [8][S][32]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long wg = blockIdx.x * 8LL + warp;
    const calm_u4* p = in + wg * perWarp + lane;
    calm_u4* r = ring + warp * S * 32 + lane;
    const long long steps = perWarp / 32;
#pragma unroll
    for (int i = 0; i < S - 1; i++) { cpa16(r + 32 * i, p + 32LL * i); cpa_commit(); }
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    int slot = 0;
    for (long long s = 0; s < steps; s++) {
        cpa_wait<S - 2>();   // step s's group is done (S - 1 + s committed, s + 1 needed)
        const calm_u4 v = r[32 * slot];
        work<W>(v, a);
        const long long nx = s + S - 1;
        const int ns = slot == 0 ? S - 1 : slot - 1;   // (s + S - 1) % S: the slot worked on in step s - 1
        if (nx < steps) cpa16(r + 32 * ns, p + 32 * nx);
        cpa_commit();
        slot = slot + 1 == S ? 0 : slot + 1;
    }
    cpa_wait<0>();
    finish(a, out);
}
// ---- bulk copies and mbarriers: probe_async.cuh ------------------------------------------------------------------
// bulk S K: per-warp ring of S slots of 512K bytes
template <int S, int K, int W>
__global__ void __launch_bounds__(256) st_bulk(const calm_u4* in, long long perWarp, float* out) {
    extern __shared__ __align__(16) calm_u4 ring[];   // [8][S][32 K]
    __shared__ __align__(8) u64 full[8][S];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long wg = blockIdx.x * 8LL + warp;
    const calm_u4* p = in + wg * perWarp;
    calm_u4* r = ring + warp * S * 32 * K;
    const long long steps = perWarp / (32 * K);
    const u32 bytes = 512u * K;
    if (lane == 0) {
        for (int i = 0; i < S; i++) mbar_init(&full[warp][i], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncwarp();
    if (lane == 0)
        for (int i = 0; i < S && i < steps; i++) { mbar_expect_tx(&full[warp][i], bytes); bulk_g2s(r + 32 * K * i, p + 32LL * K * i, bytes, &full[warp][i]); }
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    int slot = 0;
    u32 phase = 0;
    for (long long s = 0; s < steps; s++) {
        mbar_wait(&full[warp][slot], phase);
#pragma unroll
        for (int k = 0; k < K; k++) { const calm_u4 v = r[32 * K * slot + 32 * k + lane]; work<W>(v, a); }
        __syncwarp();
        const long long nx = s + S;
        if (lane == 0 && nx < steps) { mbar_expect_tx(&full[warp][slot], bytes); bulk_g2s(r + 32 * K * slot, p + 32LL * K * nx, bytes, &full[warp][slot]); }
        if (++slot == S) { slot = 0; phase ^= 1u; }
    }
    finish(a, out);
}
// tma S C: per block one producer warp and 8 worker warps, a ring of S chunks of C bytes; block b reads perBlock
// contiguous vectors
#define TMA_SLOTS 16
template <int W>
__global__ void __launch_bounds__(288) st_tma(const calm_u4* in, long long perBlock, int S, int C, float* out) {
    extern __shared__ __align__(16) calm_u4 ring[];
    __shared__ __align__(8) u64 full[TMA_SLOTS], empty[TMA_SLOTS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const calm_u4* p = in + blockIdx.x * perBlock;
    const int cv = C / 16;   // vectors per chunk
    const long long nch = perBlock / cv;
    if (threadIdx.x == 0) {
        for (int i = 0; i < S; i++) { mbar_init(&full[i], 1); mbar_init(&empty[i], 8); }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == 8) {
        if (lane == 0)
            for (long long i = 0; i < nch; i++) {
                const int s = (int)(i % S);
                if (i >= S) mbar_wait(&empty[s], (u32)((i / S) - 1) & 1u);
                mbar_expect_tx(&full[s], (u32)C);
                bulk_g2s(ring + (long long)s * cv, p + i * cv, (u32)C, &full[s]);
            }
        return;
    }
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    const int per = cv / 8;   // vectors of a chunk per worker warp (a multiple of 32)
    for (long long i = 0; i < nch; i++) {
        const int s = (int)(i % S);
        mbar_wait(&full[s], (u32)(i / S) & 1u);
        const calm_u4* c = ring + (long long)s * cv + warp * per + lane;
        for (int k = 0; k < per; k += 32) { const calm_u4 v = c[k]; work<W>(v, a); }
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[s]);
    }
    finish(a, out);
}


// the kernels' epilogue: each warp sums its lanes, the 8 warps meet in shared memory (red [8]) behind a barrier, one
// thread keeps the total (written only if it equals an unlikely value, so the work is not optimised away)
__device__ __forceinline__ void block_total(const float (&a)[4], float* red, float* out, long long idx) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float s = (a[0] + a[1]) + (a[2] + a[3]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) red[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float tot = 0.f;
        for (int w = 0; w < 8; w++) tot += red[w];
        if (tot == 1.2345f) out[idx & 1023] = tot;
    }
}

// ---- tiles: the quantized matvecs' block shape ---------------------------------------------------------------------
// A tile = 8 warps x ST stages x U loads per lane (t1b int4: 16 rows x 4096 columns = 32 KB = ST 2, U 4); after its
// stages a warp sums its lanes, the warps meet in shared memory behind a barrier and one thread writes the total (the
// kernels' epilogue). short: one tile per block, as many blocks as tiles (the engine's launch); persist: gridDim.x
// blocks take the tiles in turn. Dynamic shared memory (unused) caps the blocks per SM as the kernels' registers do.
template <int U, int W, int ST>
__device__ __forceinline__ void tile_body(const calm_u4* in, long long t, float (&a)[4], float* red, float* out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const calm_u4* p = in + t * (8LL * ST * U * 32) + lane;
#pragma unroll 1
    for (int j = 0; j < ST; j++) {
        const calm_u4* q = p + ((long long)j * 8 + warp) * (U * 32);
        calm_u4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = ldg_u4_stream(q + 32 * u);
#pragma unroll
        for (int u = 0; u < U; u++) work<W>(v[u], a);
    }
    block_total(a, red, out, t);
    __syncthreads();
    a[0] = a[1] = a[2] = a[3] = 0.f;
}
template <int U, int W, int ST>
__global__ void __launch_bounds__(256) st_short(const calm_u4* in, float* out) {
    __shared__ float red[8];
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    tile_body<U, W, ST>(in, blockIdx.x, a, red, out);
}
template <int U, int W, int ST>
__global__ void __launch_bounds__(256) st_persist(const calm_u4* in, long long tiles, float* out) {
    __shared__ float red[8];
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) tile_body<U, W, ST>(in, t, a, red, out);
}


// ---- the fp8 tensor-core matvec's access pattern (matvec_fp8_tc_impl, t1) -------------------------------------------
// A block owns 16 rows of rowBytes; lane (g, t) of warp w loads bytes [64 kb + 16 t, +16) of rows g and g + 8 for its
// k-blocks kb = w + 8 u + 32 j (4 per stage j): 8 rows x 64 bytes per load instruction. The same bytes per block as
// short ST x 8 with ST = rowBytes / 2048, which reads them as one contiguous run: the difference is the layout.
template <int W>
__global__ void __launch_bounds__(256) st_matpat(const unsigned char* in, int rowBytes, float* out) {
    __shared__ float red[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned char* r0 = in + ((long long)blockIdx.x * 16 + g) * rowBytes + 16 * t;
    const unsigned char* r1 = r0 + 8LL * rowBytes;
    const int nkb = rowBytes >> 6;
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
#pragma unroll 1
    for (int kb0 = warp; kb0 < nkb; kb0 += 32) {
        calm_u4 v[8];
#pragma unroll
        for (int u = 0; u < 4; u++) { v[2 * u] = ldg_u4_stream(r0 + 64 * (kb0 + 8 * u)); v[2 * u + 1] = ldg_u4_stream(r1 + 64 * (kb0 + 8 * u)); }
#pragma unroll
        for (int u = 0; u < 8; u++) work<W>(v[u], a);
    }
    block_total(a, red, out, blockIdx.x);
}


// rowpat R NL: a block owns 16 rows of rowBytes and reads them stage by stage, each stage a run of NL * 256 bytes of
// every row (NL loads per warp per stage); one load instruction of a warp covers R rows x 512 / R contiguous bytes
// (R = 8 is the tensor-core kernels' shape: 8 rows x 64 bytes). Which of R (bytes per row per instruction) or the
// run length per stage decides the bandwidth?
// PF: the loads' L2 prefetch-size hint (0 none, 1 .L2::128B, 2 .L2::256B: a miss fetches the whole 128 / 256 bytes
// into L2, so the other half of a line that an instruction reads 64 bytes of is an L2 hit)
template <int PF>
__device__ __forceinline__ calm_u4 ld_pf(const void* p) {
    calm_u4 r;
    if (PF == 1) asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    else if (PF == 2) asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    else r = ldg_u4_stream(p);
    return r;
}
template <int W, int NL, int PF = 0>
__global__ void __launch_bounds__(256) st_rowpat(const unsigned char* in, int rowBytes, int R, float* out) {
    __shared__ float red[8];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const unsigned char* blk = in + (long long)blockIdx.x * 16 * rowBytes;
    const int run = NL * 256, P = 512 / R, groups = 16 / R, lpr = 32 / R;
    float a[4] = { 0.f, 0.f, 0.f, 0.f };
#pragma unroll 1
    for (int j = 0; j < rowBytes / run; j++) {
        calm_u4 v[NL];
#pragma unroll
        for (int i = 0; i < NL; i++) {
            const int q = warp * NL + i, rg = q % groups, pc = q / groups;
            const int row = rg * R + lane / lpr, byte = j * run + pc * P + (lane % lpr) * 16;
            v[i] = ld_pf<PF>(blk + (long long)row * rowBytes + byte);
        }
#pragma unroll
        for (int i = 0; i < NL; i++) work<W>(v[i], a);
    }
    block_total(a, red, out, blockIdx.x);
}

// ---- host -------------------------------------------------------------------------------------------------------
static int g_sms;
static const long long kBytes = 2LL << 30;

template <typename F>
static void timed(const char* name, int bps, long long bytes, F launch) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    launch(); launch(); CK(cudaGetLastError()); CK(cudaDeviceSynchronize());
    std::vector<float> t;
    for (int rep = 0; rep < 7; rep++) {
        CK(cudaEventRecord(e0));
        for (int k = 0; k < 10; k++) launch();
        CK(cudaEventRecord(e1)); CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); t.push_back(ms / 10);
    }
    CK(cudaGetLastError());
    std::sort(t.begin(), t.end());
    printf("%-16s %d/SM  %8.1f GB/s  (min %.1f, max %.1f)\n", name, bps, bytes / (t[3] * 1e6), bytes / (t[6] * 1e6), bytes / (t[0] * 1e6));
    CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
}

template <int W>
static void run_all(const calm_u4* in, float* out) {
    printf("# W = %d multiply-adds per 16 bytes per lane\n", W);
    const long long nvec = kBytes / 16;
    for (int bps = 1; bps <= 4; bps++) {
        const int blocks = g_sms * bps, warps = blocks * 8;
        const long long perWarp = nvec / warps / 1024 * 1024;   // a multiple of every form's step
        const long long bytes = perWarp * warps * 16;
        char nm[64];
#define REG(U) snprintf(nm, sizeof nm, "reg %d", U); timed(nm, bps, bytes, [&] { st_reg<U, W><<<blocks, 256>>>(in, perWarp, out); });
        REG(4) REG(8) REG(16)
#define REGDB(U) snprintf(nm, sizeof nm, "regdb %d", U); timed(nm, bps, bytes, [&] { st_regdb<U, W><<<blocks, 256>>>(in, perWarp, out); });
        REGDB(4) REGDB(8)
#define CPA(S) { const int sm = 8 * S * 512; CK(cudaFuncSetAttribute(st_cpa<S, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, sm)); \
        if (sm * bps <= 220 * 1024) { snprintf(nm, sizeof nm, "cpa %d", S); timed(nm, bps, bytes, [&] { st_cpa<S, W><<<blocks, 256, sm>>>(in, perWarp, out); }); } }
        CPA(4) CPA(8) CPA(16)
#define BULK(S, K) { const int sm = 8 * S * 512 * K; CK(cudaFuncSetAttribute(st_bulk<S, K, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, sm)); \
        if (sm * bps <= 220 * 1024) { snprintf(nm, sizeof nm, "bulk %d x %dK", S, K / 2); timed(nm, bps, bytes, [&] { st_bulk<S, K, W><<<blocks, 256, sm>>>(in, perWarp, out); }); } }
        BULK(4, 2) BULK(4, 4) BULK(8, 2)
    }
    // tma: 1 or 2 blocks per SM, rings of S chunks of C KB
    CK(cudaFuncSetAttribute(st_tma<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    const int cfg[][3] = { { 1, 6, 16 }, { 1, 12, 16 }, { 1, 12, 8 }, { 2, 6, 16 }, { 2, 12, 8 } };
    for (auto& c : cfg) {
        const int bps = c[0], S = c[1], C = c[2] * 1024, blocks = g_sms * bps;
        const long long perBlock = nvec / blocks / (C / 16) * (C / 16);
        char nm[64]; snprintf(nm, sizeof nm, "tma %d x %dK", S, c[2]);
        timed(nm, bps, perBlock * blocks * 16, [&] { st_tma<W><<<blocks, 288, S * C>>>(in, perBlock, S, C, out); });
    }
}

template <int W>
static void run_tiles(const calm_u4* in, float* out) {
    printf("# tiles, W = %d\n", W);
    const long long nvec = kBytes / 16;
    for (int bps = 2; bps <= 4; bps++) {
        const int capSmem = (220 * 1024) / bps - 2048;   // at most bps blocks per SM
        char nm[64];
#define TILES(U, ST) { const long long tv = 8LL * ST * U * 32, tiles = nvec / tv; const long long bytes = tiles * tv * 16; \
        CK(cudaFuncSetAttribute(st_short<U, W, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, capSmem)); \
        CK(cudaFuncSetAttribute(st_persist<U, W, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, capSmem)); \
        snprintf(nm, sizeof nm, "short %dx%d", ST, U); timed(nm, bps, bytes, [&] { st_short<U, W, ST><<<(int)tiles, 256, capSmem>>>(in, out); }); \
        snprintf(nm, sizeof nm, "persist %dx%d", ST, U); timed(nm, bps, bytes, [&] { st_persist<U, W, ST><<<g_sms * bps, 256, capSmem>>>(in, tiles, out); }); }
        TILES(4, 2) TILES(4, 1) TILES(2, 4) TILES(4, 4) TILES(8, 2)
    }
}

template <int W>
static void run_pattern(const calm_u4* in, float* out) {
    printf("# fp8 tile pattern vs contiguous, W = %d\n", W);
    const long long nvec = kBytes / 16;
    for (int bps = 2; bps <= 4; bps++) {
        const int capSmem = (220 * 1024) / bps - 2048;
        char nm[64];
#define PAT(ST, ROWB) { const long long tv = 8LL * ST * 8 * 32, tiles = nvec / tv, bytes = tiles * tv * 16; \
        CK(cudaFuncSetAttribute(st_short<8, W, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, capSmem)); \
        CK(cudaFuncSetAttribute(st_matpat<W>, cudaFuncAttributeMaxDynamicSharedMemorySize, capSmem)); \
        snprintf(nm, sizeof nm, "contig %d", ROWB); timed(nm, bps, bytes, [&] { st_short<8, W, ST><<<(int)tiles, 256, capSmem>>>(in, out); }); \
        snprintf(nm, sizeof nm, "fp8pat %d", ROWB); timed(nm, bps, bytes, [&] { st_matpat<W><<<(int)tiles, 256, capSmem>>>((const unsigned char*)in, ROWB, out); }); }
        PAT(2, 4096) PAT(7, 14336)
    }
}

// one st_rowpat measurement (NL loads per warp per stage, prefetch hint PF) of 16-row blocks of rowBytes
template <int W, int NL, int PF = 0>
static void time_rowpat(const char* name, const calm_u4* in, float* out, int bps, int capSmem, int rowBytes, int R) {
    const long long tiles = kBytes / (16LL * rowBytes), bytes = tiles * 16 * rowBytes;
    CK(cudaFuncSetAttribute(st_rowpat<W, NL, PF>, cudaFuncAttributeMaxDynamicSharedMemorySize, capSmem));
    timed(name, bps, bytes, [&] { st_rowpat<W, NL, PF><<<(int)tiles, 256, capSmem>>>((const unsigned char*)in, rowBytes, R, out); });
}

// the row patterns (prefetch false: runs of 2, 4 and 8 KB per row per stage, R 8 / 4 / 2 / 1) or the L2 prefetch-size
// hint on runs of 2 KB (prefetch true: none, .L2::128B, .L2::256B; R 8 / 4), at 2 and 3 blocks per SM
template <int W>
static void run_rows(const calm_u4* in, float* out, bool prefetch) {
    if (prefetch) printf("# the L2 prefetch-size hint on row patterns, W = %d\n", W);
    else printf("# row patterns, W = %d (block: 16 rows; R rows per load instruction; run = bytes per row per stage)\n", W);
    for (int bps = 2; bps <= 3; bps++) {
        const int capSmem = (220 * 1024) / bps - 2048;
        for (int rowBytes : { 4096, 16384 })
            for (int R : { 8, 4, 2, 1 }) {
                if (prefetch && R < 4) continue;
                char nm[64];
                auto name = [&](const char* what, int v) { snprintf(nm, sizeof nm, "r%d R%d %s%d", rowBytes, R, what, v); return nm; };
                if (prefetch) {
                    time_rowpat<W, 8, 0>(name("pf", 0), in, out, bps, capSmem, rowBytes, R);
                    time_rowpat<W, 8, 1>(name("pf", 128), in, out, bps, capSmem, rowBytes, R);
                    time_rowpat<W, 8, 2>(name("pf", 256), in, out, bps, capSmem, rowBytes, R);
                } else {
                    time_rowpat<W, 8>(name("run", 8 * 256), in, out, bps, capSmem, rowBytes, R);
                    time_rowpat<W, 16>(name("run", 16 * 256), in, out, bps, capSmem, rowBytes, R);
                    if (rowBytes == 16384) time_rowpat<W, 32>(name("run", 32 * 256), in, out, bps, capSmem, rowBytes, R);
                }
            }
    }
}

__global__ void fill(calm_u4* p, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u; h ^= h >> 15;
        p[i] = calm_u4{ h, h * 3u, h * 5u, h * 7u };
    }
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("# %s, %d SMs, L2 %d MB; stream_modes over %lld MiB per launch\n", prop.name, g_sms, prop.l2CacheSize >> 20, kBytes >> 20);
    calm_u4* in; float* out;
    CK(cudaMalloc(&in, kBytes)); CK(cudaMalloc(&out, 4096 * sizeof(float)));
    fill<<<1024, 256>>>(in, kBytes / 16);
    CK(cudaDeviceSynchronize());
    const std::string only = getenv("STREAM_ONLY") ? getenv("STREAM_ONLY") : "";   // "tiles", "pattern": that part only
    if (only.empty()) { run_all<0>(in, out); run_all<24>(in, out); run_all<72>(in, out); }
    if (only.empty() || only == "tiles") { run_tiles<24>(in, out); run_tiles<72>(in, out); }
    if (only.empty() || only == "pattern") { run_pattern<0>(in, out); run_pattern<24>(in, out); }
    if (only.empty() || only == "rowpat") run_rows<0>(in, out, false);
    if (only.empty() || only == "prefetch") { run_rows<0>(in, out, true); run_rows<24>(in, out, true); }
    return 0;
}

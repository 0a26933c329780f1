// gemm.cu: the batched (prefill) matrix products on the tensor cores, and the row-wise helpers around them.
//   Y [T, N] f32 = X [T, K] f16 . W [N, K]^T (bf16/f16, row-major as stored) (+ bias [N] f32) (+ Y when accumulate)
// The activations are f16, not bf16: rounding them to bf16 (8-bit mantissa) costs ~1e-3 relative error per product,
// ~2e-3 on the logits of a 2-layer model; f16 (11 bits) costs 8x less. bf16 weights are converted to f16 in shared
// memory (exact for |w| in [6.1e-5, 65504]; smaller ones round to f16 subnormals, an absolute error < 3e-8).
// mma.sync.m16n8k16.f32.f16.f16.f32 (sm_80+, fp32 accumulation). Block tile GM x GN x GK = (32*MT) x 128 x (32 or 64), 8 warps as 2 (M) x 4 (N),
// each warp (16*MT) x 32 = MT x 4 mma tiles: MT = 4 (128-row tiles) or 2 (64-row tiles, twice the blocks for short
// prompts and narrow outputs, where 128-row tiles leave multiprocessors idle). Tiles stream into shared memory through cp.async, GEMM_STAGES deep; fragments
// come out with ldmatrix. Rows past T or N and 16-byte chunks past K are zero-filled (cp.async src-size 0), so T and N
// are free; K must be a multiple of 8 (16-byte rows) and X, W 16-byte aligned (CudaPrefillKernels checks).
// Variant 2 (_v2, _v2s4; CALM_GEMM_VARIANT): the same tiles with (a) the grid's x over row tiles, so the (T/GM) blocks
// that share one W column tile run side by side and W streams from DRAM once instead of T/GM times (gate_up at T=512:
// 235 MB once, not 4x), (b) bf16 B fragments converted to f16 in registers after ldmatrix (no shared-memory pass and
// no extra wait per stage), (c) float2 stores in the epilogue, (d) __launch_bounds__(256, 2): two blocks per SM;
// _v2s4 (variant 3): 4 stages instead of 3, one block per SM (147 KB of shared memory at 128 rows).
#include "common.cuh"
#include "gemm_common.cuh"

#define GN 128
#define GPAD 8                     // halves of padding per smem row (80- or 144-byte rows): conflict-free ldmatrix
// GK (32 or 64): the k depth of a stage; smem rows hold GK + GPAD halves
#define GEMM_THREADS 256
#define GEMM_STAGES 3
// dynamic shared memory bytes: STAGES x (A [GM][GK+GPAD] + B [GN][GK+GPAD]) halves (GM = 32*MT)

// rows r0.. of M [rows, K], columns k0 .. k0+GK, into s [R][GK+GPAD]: R rows x GK/8 chunks of 16 bytes, 256 threads
template <int R, int GK>
__device__ __forceinline__ void gemm_load_tile(u32 s, const u16* M, int rows, int K, int r0, int k0) {
    const int GROW = GK + GPAD, CPR = GK / 8;
#pragma unroll
    for (int i = 0; i < R * CPR / GEMM_THREADS; i++) {
        int c = threadIdx.x + i * GEMM_THREADS;
        int r = c / CPR, kc = (c % CPR) * 8;
        int k = k0 + kc, row = r0 + r;
        bool ok = k < K && row < rows;
        g_cp16(s + (u32)(r * GROW + kc) * 2, M + (ok ? (long long)row * K + k : 0), ok ? 16 : 0);
    }
}
// the B chunks this thread copied into a stage (same mapping as gemm_load_tile), bf16 -> f16 in place
template <int GK>
__device__ __forceinline__ void gemm_convert_b(u16* sB) {
    const int GROW = GK + GPAD, CPR = GK / 8;
#pragma unroll
    for (int i = 0; i < GN * CPR / GEMM_THREADS; i++) {
        int c = threadIdx.x + i * GEMM_THREADS;
        calm_u4* p = (calm_u4*)(sB + (c / CPR) * GROW + (c % CPR) * 8);
        calm_u4 v = *p;
        v.x = bf16x2_to_f16x2(v.x); v.y = bf16x2_to_f16x2(v.y); v.z = bf16x2_to_f16x2(v.z); v.w = bf16x2_to_f16x2(v.w);
        *p = v;
    }
}

// one stage: A rows m0.. of X [T, K] and B rows n0.. of W [N, K] (out-of-range rows and chunks zero-filled).
// GATED: W is [2F, K] = [gate | up] with N = F; B rows 0..GN/2-1 are gate rows n0.., rows GN/2.. the up rows F+n0..
// (the same per-thread chunk mapping as one GN-row load: gemm_convert_b converts what this thread copied)
template <int MT, int GK, int GATED>
__device__ __forceinline__ void gemm_load_stage(u32 sA, u32 sB, const u16* X, const u16* W, int T, int N, int K, int m0, int n0, int k0) {
    gemm_load_tile<32 * MT, GK>(sA, X, T, K, m0, k0);
    if (GATED) {
        gemm_load_tile<GN / 2, GK>(sB, W, N, K, n0, k0);
        gemm_load_tile<GN / 2, GK>(sB + (GN / 2) * (GK + GPAD) * 2, W + (long long)N * K, N, K, n0, k0);
    } else {
        gemm_load_tile<GN, GK>(sB, W, N, K, n0, k0);
    }
}

// GATED: N = F, W [2F, K] = [gate | up], bias [2F] or null; instead of Y, Hout [T, F] (odt) = act(gate) * up with the
// f32 sums exactly as Y would hold them (bit for bit what gemm + gate_act_rows give). Block tile: GN/2 columns of F.
template <int DT, int MT, int GK, int STG, int V2, int GATED>
__device__ __forceinline__ void gemm_impl(const u16* X, const u16* W, float* Y, const float* bias, int T, int N, int K, int accumulate,
                                          u16* Hout, int act, int odt) {
    extern __shared__ __align__(16) u16 gsm[];
    const int GM = 32 * MT, GROW = GK + GPAD;
    const int m0 = (V2 ? blockIdx.x : blockIdx.y) * GM, n0 = (V2 ? blockIdx.y : blockIdx.x) * (GATED ? GN / 2 : GN);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 16 * MT, wn = (warp & 3) * 32;   // this warp's (16*MT) x 32 sub-tile
    const u32 base = smem_addr(gsm);
    const u32 stageBytes = (GM + GN) * GROW * 2;
    float acc[MT][4][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const int kTiles = (K + GK - 1) / GK;
#pragma unroll
    for (int s = 0; s < STG - 1; s++) {
        if (s < kTiles) gemm_load_stage<MT, GK, GATED>(base + s * stageBytes, base + s * stageBytes + GM * GROW * 2, X, W, T, N, K, m0, n0, s * GK);
        g_commit();
    }
    // ldmatrix lane addresses (halves within a tile): A x4 = rows lane&15, column (lane>>4)*8;
    // B x4 over two n8 tiles = row (lane&7) + (lane>>4)*8, column ((lane>>3)&1)*8
    const int aRow = lane & 15, aCol = (lane >> 4) * 8;
    const int bRow = (lane & 7) + ((lane >> 4) << 3), bCol = ((lane >> 3) & 1) * 8;
    for (int kt = 0; kt < kTiles; kt++) {
        g_wait<STG - 2>();   // this thread's copies of stage kt have landed
        if (DT == CALM_BF16 && !V2) gemm_convert_b<GK>(gsm + (kt % STG) * (stageBytes / 2) + GM * GROW);
        __syncthreads();   // stage kt landed (and converted) for every thread; the stage refilled next was read by all
        {
            int nk = kt + STG - 1;
            int st = nk % STG;
            if (nk < kTiles) gemm_load_stage<MT, GK, GATED>(base + st * stageBytes, base + st * stageBytes + GM * GROW * 2, X, W, T, N, K, m0, n0, nk * GK);
            g_commit();
        }
        const u32 sA = base + (kt % STG) * stageBytes, sB = sA + GM * GROW * 2;
#pragma unroll
        for (int kk = 0; kk < GK; kk += 16) {
            u32 a[MT][4], b[4][2];
#pragma unroll
            for (int i = 0; i < MT; i++)
                ldsm_x4(sA + (u32)((wm + i * 16 + aRow) * GROW + kk + aCol) * 2, a[i][0], a[i][1], a[i][2], a[i][3]);
#pragma unroll
            for (int j = 0; j < 2; j++)
                ldsm_x4(sB + (u32)((wn + j * 16 + bRow) * GROW + kk + bCol) * 2, b[2 * j][0], b[2 * j][1], b[2 * j + 1][0], b[2 * j + 1][1]);
            if (DT == CALM_BF16 && V2) {   // bf16 pairs -> f16 pairs in the same places (v1 converted the stage in shared memory)
#pragma unroll
                for (int j = 0; j < 4; j++) { b[j][0] = bf16x2_to_f16x2_v2(b[j][0]); b[j][1] = bf16x2_to_f16x2_v2(b[j][1]); }
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16816(acc[i][j], a[i], b[j][0], b[j][1]);
        }
    }
    g_wait<0>();
    // epilogue: c0,c1 at (row g, cols 2t, 2t+1), c2,c3 at (row g+8, same cols)
    const int g = lane >> 2, t4 = lane & 3;
    if (GATED) {
        // the block's sums through shared memory [GM][GN + 4] f32 (the pipeline's buffers are free now): column c < GN/2
        // is gate column n0 + c, column GN/2 + c the up column of the same index
        const int SROW = GN + 4;
        float* sc = (float*)gsm;
        __syncthreads();   // every warp is done reading the last stage
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    sc[(wm + i * 16 + g + (e >> 1) * 8) * SROW + wn + j * 8 + 2 * t4 + (e & 1)] = acc[i][j][e];
        __syncthreads();
        for (int idx = threadIdx.x; idx < GM * (GN / 2); idx += GEMM_THREADS) {
            int r = idx / (GN / 2), c = idx - r * (GN / 2);
            int row = m0 + r, f = n0 + c;
            if (row >= T || f >= N) continue;
            float gv = sc[r * SROW + c], uv = sc[r * SROW + GN / 2 + c];
            if (bias) { gv += bias[f]; uv += bias[N + f]; }
            Hout[(long long)row * N + f] = gemm_act_mul(gv, uv, act, odt);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int row = m0 + wm + i * 16 + g + h * 8;
                int col = n0 + wn + j * 8 + 2 * t4;
                if (row >= T) continue;
                if (V2 && (N & 1) == 0 && col + 1 < N && ((u64)Y & 7) == 0) {   // col even, N even, Y 8-byte aligned: an aligned pair
                    float v0 = acc[i][j][h * 2], v1 = acc[i][j][h * 2 + 1];
                    if (bias) { v0 += bias[col]; v1 += bias[col + 1]; }
                    gemm_f2* y = (gemm_f2*)(Y + (long long)row * N + col);
                    if (accumulate) { gemm_f2 o = *y; v0 += o.x; v1 += o.y; }
                    gemm_f2 r; r.x = v0; r.y = v1;
                    *y = r;
                    continue;
                }
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int n = col + e;
                    if (n >= N) continue;
                    float v = acc[i][j][h * 2 + e];
                    if (bias) v += bias[n];
                    float* y = Y + (long long)row * N + n;
                    if (accumulate) v += *y;
                    *y = v;
                }
            }
}

// grid (ceil(N/GN), ceil(T/GM)) (v2: (ceil(T/GM), ceil(N/GN))), GEMM_THREADS threads, STAGES*(GM+GN)*(GK+GPAD)*2 bytes
// of dynamic shared memory; _m64: GM = 64 (else 128); _k64: GK = 64 (else 32); _v2: variant 2, 3 stages; _v2s4: 4 stages
// v2 (3 stages) asks for two blocks per multiprocessor (<= 128 registers a thread; 2 x 110.6 KB of shared memory at
// 128 rows): qkv at T=512 is 192 blocks, 1.45 waves of one block per SM on the H200
#define GEMM_MIN_BLOCKS(STG, V2) ((V2) && (STG) == 3 ? 2 : 1)
#define GEMM_ENTRY(NAME, DT, MT, GK, STG, V2) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(STG, V2)) NAME(const u16* X, const u16* W, float* Y, const float* bias, int T, int N, int K, int accumulate) { \
        gemm_impl<DT, MT, GK, STG, V2, 0>(X, W, Y, bias, T, N, K, accumulate, 0, 0, 0); \
    }
// gated (gate_up + activation fused): X [T, K] . W [2F, K]^T -> H [T, F] (odt) = act(gate) * up; grid over ceil(F/(GN/2))
// column tiles (x or y as the GEMM of the same variant); shared memory as the GEMM of the same tile, depth, stages
#define GEMM_GATED_ENTRY(NAME, DT, MT, GK, STG, V2) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(STG, V2)) NAME(const u16* X, const u16* W, u16* H, const float* bias, int T, int F, int K, int act, int odt) { \
        gemm_impl<DT, MT, GK, STG, V2, 1>(X, W, 0, bias, T, F, K, 0, H, act, odt); \
    }
GEMM_ENTRY(gemm_bf16, CALM_BF16, 4, 32, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_f16, CALM_F16, 4, 32, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_bf16_m64, CALM_BF16, 2, 32, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_f16_m64, CALM_F16, 2, 32, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_bf16_k64, CALM_BF16, 4, 64, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_f16_k64, CALM_F16, 4, 64, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_bf16_m64_k64, CALM_BF16, 2, 64, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_f16_m64_k64, CALM_F16, 2, 64, GEMM_STAGES, 0)
GEMM_ENTRY(gemm_bf16_k64_v2, CALM_BF16, 4, 64, 3, 1)
GEMM_ENTRY(gemm_f16_k64_v2, CALM_F16, 4, 64, 3, 1)
GEMM_ENTRY(gemm_bf16_m64_k64_v2, CALM_BF16, 2, 64, 3, 1)
GEMM_ENTRY(gemm_f16_m64_k64_v2, CALM_F16, 2, 64, 3, 1)
GEMM_ENTRY(gemm_bf16_k64_v2s4, CALM_BF16, 4, 64, 4, 1)
GEMM_ENTRY(gemm_f16_k64_v2s4, CALM_F16, 4, 64, 4, 1)
GEMM_ENTRY(gemm_bf16_m64_k64_v2s4, CALM_BF16, 2, 64, 4, 1)
GEMM_ENTRY(gemm_f16_m64_k64_v2s4, CALM_F16, 2, 64, 4, 1)

GEMM_GATED_ENTRY(gemm_gated_bf16_k64, CALM_BF16, 4, 64, GEMM_STAGES, 0)
GEMM_GATED_ENTRY(gemm_gated_f16_k64, CALM_F16, 4, 64, GEMM_STAGES, 0)
GEMM_GATED_ENTRY(gemm_gated_bf16_m64_k64, CALM_BF16, 2, 64, GEMM_STAGES, 0)
GEMM_GATED_ENTRY(gemm_gated_f16_m64_k64, CALM_F16, 2, 64, GEMM_STAGES, 0)
GEMM_GATED_ENTRY(gemm_gated_bf16_k64_v2, CALM_BF16, 4, 64, 3, 1)
GEMM_GATED_ENTRY(gemm_gated_f16_k64_v2, CALM_F16, 4, 64, 3, 1)
GEMM_GATED_ENTRY(gemm_gated_bf16_m64_k64_v2, CALM_BF16, 2, 64, 3, 1)
GEMM_GATED_ENTRY(gemm_gated_f16_m64_k64_v2, CALM_F16, 2, 64, 3, 1)
GEMM_GATED_ENTRY(gemm_gated_bf16_k64_v2s4, CALM_BF16, 4, 64, 4, 1)
GEMM_GATED_ENTRY(gemm_gated_f16_k64_v2s4, CALM_F16, 4, 64, 4, 1)
GEMM_GATED_ENTRY(gemm_gated_bf16_m64_k64_v2s4, CALM_BF16, 2, 64, 4, 1)
GEMM_GATED_ENTRY(gemm_gated_f16_m64_k64_v2s4, CALM_F16, 2, 64, 4, 1)

// ---- variant 4: 128 x (32*NT) x 64 block tiles, 64 x (8*NT) warp tiles ------------------------------------------
// The same product and numerics as variants 1-3 (f16 activations, bf16 weights converted to f16 in registers after
// ldmatrix with cvt.rn.f16x2.f32 as variant 2, mma.sync m16n8k16 f16 -> f32), with larger warp tiles: 8 warps as
// 2 (M) x 4 (N), each 64 x 8*NT (NT = 4, 6, 8: block tiles 128 x 128 / 192 / 256), so a k16 step is 4 + NT/2
// ldmatrix.x4 for 4*NT mma (variants 1-3: 6 for 16). Shared tiles are unpadded 128-byte rows (64 halves of K) with the
// 16-byte chunk c of row r at c ^ (r & 7) (XOR swizzle: the 8 rows of an ldmatrix phase hit 8 different chunks, and
// a row's cp.async chunks stay contiguous); GEMM4_STAGES(NT) deep cp.async ring; A and B fragments double-buffered in
// registers across the k16 steps (the fragments of step kk+1 load while step kk's mma run; the stage barrier sits
// before the last step's loads, one __syncthreads per stage). Blocks walk the (row tile, column tile) grid grouped
// 8 row tiles at a time, row tiles fastest (at T <= 1024 every block of a W column tile runs side by side: W streams
// from DRAM once, X stays in L2). One block per multiprocessor (__launch_bounds__(256, 1)).
// GATED: each warp's 8*NT B rows are 4*NT gate rows (W rows f) then the 4*NT up rows of the same f (W rows F + f),
// so act(gate) * up is formed in registers: acc[i][j] (gate) with acc[i][j + NT/2] (up); a block covers 16*NT of F.
#define GEMM4_BM 128
#define GEMM4_BK 64
#define GEMM4_STAGES(NT) ((NT) == 8 ? 3 : 4)
#define GEMM4_GROUP 8

template <int DT, int NT, int GATED>
__device__ __forceinline__ void gemm4_load_stage(u32 sA, const u16* X, const u16* W, int T, int N, int K, int m0, int n0, int k0) {
    const int BN = 32 * NT;
    const int rr = threadIdx.x >> 3, cc = threadIdx.x & 7;
    const u32 sw = (u32)((cc ^ (rr & 7)) << 4);
    const int k = k0 + cc * 8;
    const bool kok = k < K;
    gemm_load_a128(sA, X, T, K, m0, k0);
    const u32 sB = sA + GEMM4_BM * 128;
#pragma unroll
    for (int i = 0; i < BN / 32; i++) {
        int r = rr + 32 * i, src;
        bool ok;
        if (GATED) {   // warp column group w = r / (8 NT): rows q < 4 NT gate f = n0 + w*4NT + q, else the up row of f
            int w = r / (8 * NT), q = r - w * (8 * NT), up = q >= 4 * NT;
            int f = n0 + w * 4 * NT + (up ? q - 4 * NT : q);
            ok = kok && f < N;
            src = up ? N + f : f;
        } else {
            src = n0 + r;
            ok = kok && src < N;
        }
        g_cp16(sB + (u32)(r * 128) + sw, W + (ok ? (long long)src * K + k : 0), ok ? 16 : 0);
    }
}

template <int DT, int NT>
__device__ __forceinline__ void gemm4_load_frags(u32 sA, u32 sB, int kk, u32 aOff, u32 aX, u32 bOff, u32 bX, u32 (&a)[4][4], u32 (&b)[NT][2]) {
    const u32 ca = ((aX ^ (u32)(2 * kk)) << 4), cb = ((bX ^ (u32)(2 * kk)) << 4);
#pragma unroll
    for (int i = 0; i < 4; i++) ldsm_x4(sA + aOff + (u32)(i * 16 * 128) + ca, a[i][0], a[i][1], a[i][2], a[i][3]);
#pragma unroll
    for (int j = 0; j < NT / 2; j++) ldsm_x4(sB + bOff + (u32)(j * 16 * 128) + cb, b[2 * j][0], b[2 * j][1], b[2 * j + 1][0], b[2 * j + 1][1]);
    if (DT == CALM_BF16) {
#pragma unroll
        for (int j = 0; j < NT; j++) { b[j][0] = bf16x2_to_f16x2_v2(b[j][0]); b[j][1] = bf16x2_to_f16x2_v2(b[j][1]); }
    }
}

// N: columns of Y (GATED: F, the columns of H). Grid: ceil(T/128) * ceil(N / (GATED ? 16 NT : 32 NT)) blocks (1-D)
template <int DT, int NT, int GATED>
__device__ __forceinline__ void gemm4_impl(const u16* X, const u16* W, float* Y, const float* bias, int T, int N, int K, int accumulate,
                                           u16* Hout, int act, int odt) {
    extern __shared__ __align__(16) u16 gsm[];
    const int STG = GEMM4_STAGES(NT), BN = 32 * NT, BNC = GATED ? 16 * NT : 32 * NT;
    const u32 stageBytes = (GEMM4_BM + BN) * 128;
    // grouped block order: GEMM4_GROUP row tiles at a time, row tiles fastest
    const int mTiles = (T + GEMM4_BM - 1) / GEMM4_BM, nTiles = (N + BNC - 1) / BNC;
    const int pid = blockIdx.x, width = GEMM4_GROUP * nTiles, grp = pid / width, firstM = grp * GEMM4_GROUP;
    const int gsz = min(mTiles - firstM, GEMM4_GROUP), inGrp = pid - grp * width;
    const int m0 = (firstM + inGrp % gsz) * GEMM4_BM, n0 = (inGrp / gsz) * BNC;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 8 * NT;
    const u32 base = smem_addr(gsm);
    // ldmatrix lane rows and chunks (see gemm_impl): A row lane&15, chunk lane>>4; B row (lane&7) + (lane>>4)*8, chunk (lane>>3)&1;
    // every row's r & 7 is lane & 7, so the swizzled chunk of k16 step kk is (chunk ^ (lane & 7)) ^ 2kk
    const u32 aOff = (u32)((wm + (lane & 15)) * 128), aX = (u32)((lane >> 4) ^ (lane & 7));
    const u32 bOff = (u32)((wn + (lane & 7) + ((lane >> 4) << 3)) * 128), bX = (u32)(((lane >> 3) & 1) ^ (lane & 7));

    float acc[4][NT][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    const int kTiles = (K + GEMM4_BK - 1) / GEMM4_BK;
#pragma unroll
    for (int s = 0; s < STG - 1; s++) {
        if (s < kTiles) gemm4_load_stage<DT, NT, GATED>(base + s * stageBytes, X, W, T, N, K, m0, n0, s * GEMM4_BK);
        g_commit();
    }
    g_wait<STG - 2>();
    __syncthreads();
    u32 af[2][4][4], bf[2][NT][2];
    gemm4_load_frags<DT, NT>(base, base + GEMM4_BM * 128, 0, aOff, aX, bOff, bX, af[0], bf[0]);
    int rs = 0, ws = STG - 1;
    for (int kt = 0; kt < kTiles; kt++) {
#pragma unroll
        for (int kk = 0; kk < GEMM4_BK / 16; kk++) {
            if (kk == GEMM4_BK / 16 - 1) {
                // stage kt + 1 landed for every thread; every warp is past its last read of stage kt - 1 (refilled at kk == 0)
                g_wait<STG - 2>();
                __syncthreads();
                rs = rs + 1 == STG ? 0 : rs + 1;
            }
            const u32 sA = base + rs * stageBytes;
            gemm4_load_frags<DT, NT>(sA, sA + GEMM4_BM * 128, (kk + 1) & 3, aOff, aX, bOff, bX, af[(kk + 1) & 1], bf[(kk + 1) & 1]);
            if (kk == 0) {
                int nk = kt + STG - 1;
                if (nk < kTiles) gemm4_load_stage<DT, NT, GATED>(base + ws * stageBytes, X, W, T, N, K, m0, n0, nk * GEMM4_BK);
                g_commit();
                ws = ws + 1 == STG ? 0 : ws + 1;
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_16816(acc[i][j], af[kk & 1][i], bf[kk & 1][j][0], bf[kk & 1][j][1]);
        }
    }
    g_wait<0>();
    const int g = lane >> 2, t4 = lane & 3;
    if (GATED) {
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < NT / 2; j++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    int row = m0 + wm + i * 16 + g + h * 8;
                    int f = n0 + (warp & 3) * 4 * NT + j * 8 + 2 * t4;
                    if (row >= T) continue;
                    gemm_store_gated2(Hout, bias, N, row, f, acc[i][j][h * 2], acc[i][j][h * 2 + 1],
                                      acc[i][j + NT / 2][h * 2], acc[i][j + NT / 2][h * 2 + 1], act, odt);
                }
        return;
    }
    const bool pairs = (N & 1) == 0 && ((u64)Y & 7) == 0;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int row = m0 + wm + i * 16 + g + h * 8;
                int col = n0 + wn + j * 8 + 2 * t4;
                if (row >= T) continue;
                gemm_store2(Y, bias, N, row, col, acc[i][j][h * 2], acc[i][j][h * 2 + 1], accumulate, pairs);
            }
}

// gemm4_<h>_n<BN>: Y = X . W^T (+ bias) (+ Y); gemm4_gated_<h>_n<BN>: H = act(gate) * up, 16 NT columns of F per block.
// 256 threads, GEMM4_STAGES(NT) * (128 + BN) * 128 bytes of dynamic shared memory
#define GEMM4_ENTRY(NAME, DT, NT) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1) NAME(const u16* X, const u16* W, float* Y, const float* bias, int T, int N, int K, int accumulate) { \
        gemm4_impl<DT, NT, 0>(X, W, Y, bias, T, N, K, accumulate, 0, 0, 0); \
    }
#define GEMM4_GATED_ENTRY(NAME, DT, NT) \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 1) NAME(const u16* X, const u16* W, u16* H, const float* bias, int T, int F, int K, int act, int odt) { \
        gemm4_impl<DT, NT, 1>(X, W, 0, bias, T, F, K, 0, H, act, odt); \
    }
GEMM4_ENTRY(gemm4_bf16_n128, CALM_BF16, 4)
GEMM4_ENTRY(gemm4_bf16_n192, CALM_BF16, 6)
GEMM4_ENTRY(gemm4_bf16_n256, CALM_BF16, 8)
GEMM4_ENTRY(gemm4_f16_n128, CALM_F16, 4)
GEMM4_ENTRY(gemm4_f16_n192, CALM_F16, 6)
GEMM4_ENTRY(gemm4_f16_n256, CALM_F16, 8)
GEMM4_GATED_ENTRY(gemm4_gated_bf16_n128, CALM_BF16, 4)
GEMM4_GATED_ENTRY(gemm4_gated_bf16_n192, CALM_BF16, 6)
GEMM4_GATED_ENTRY(gemm4_gated_bf16_n256, CALM_BF16, 8)
GEMM4_GATED_ENTRY(gemm4_gated_f16_n128, CALM_F16, 4)
GEMM4_GATED_ENTRY(gemm4_gated_f16_n192, CALM_F16, 6)
GEMM4_GATED_ENTRY(gemm4_gated_f16_n256, CALM_F16, 8)

// ---- row-wise helpers of the batched forward ----------------------------------------------------------------------

// tokens [T] int, table [V, D] (tdt: f32/f16/bf16) -> x [T, D] f32 = table[token] * scale. grid (blocks, T)
extern "C" __global__ void embed_rows(const int* tokens, const void* table, int tdt, float* x, int D, float scale) {
    int t = blockIdx.y;
    long long row = (long long)tokens[t] * D;
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) {
        float v = tdt == CALM_F32 ? ((const float*)table)[row + d]
                : tdt == CALM_BF16 ? bf16_to_f32(((const u16*)table)[row + d]) : f16_to_f32(((const u16*)table)[row + d]);
        x[(long long)t * D + d] = v * scale;
    }
}

// x [T, n] f32, w [n] f32 -> out [T, n] in dtype odt (bf16/f16) = x / rms(x) * (w or 1 + w). One block per row.
// The general kernel (any n, any alignment; CudaPrefillKernels launches it with 256 threads where rmsnorm_rows_v4 does not take the shape).
extern "C" __global__ void rmsnorm_rows(const float* x, const float* w, u16* out, int n, float eps, int addOne, int odt) {
    const float* xr = x + (long long)blockIdx.x * n;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) { float v = xr[i]; ss = fmaf(v, v, ss); }
    ss = block_sum(ss);
    float r = rsqrtf(ss / (float)n + eps);
    u16* o = out + (long long)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float g = gain(w[i], addOne);
        o[i] = to_half(xr[i] * r * g, odt);
    }
}

// rmsnorm_rows for n % 4 == 0, n <= 4 * RN_V4 * 1024, x and w 16-byte aligned, out 8-byte aligned: one block per row of
// blockDim = 32 * ceil(n / (128 * RN_V4)) threads (n = 4096: 256); thread i holds float4s i, i + blockDim, ... (up to
// RN_V4 of them) of x and w in registers from one round of loads, so x is read once; the sum of squares is one
// block_sum; each float4 leaves as four halves in one 8-byte store. Same formula as rmsnorm_rows per element.
#define RN_V4 4
struct __align__(8) rn_u2 { u32 x, y; };
extern "C" __global__ void __launch_bounds__(1024) rmsnorm_rows_v4(const float* x, const float* w, u16* out, int n, float eps, int addOne, int odt) {
    const int n4 = n >> 2;
    const calm_f4* xr = (const calm_f4*)(x + (long long)blockIdx.x * n);
    const calm_f4* w4 = (const calm_f4*)w;
    calm_f4 v[RN_V4], g[RN_V4];
#pragma unroll
    for (int k = 0; k < RN_V4; k++) {
        int i = threadIdx.x + k * blockDim.x;
        if (i < n4) { v[k] = xr[i]; g[k] = w4[i]; }
        else { v[k].x = v[k].y = v[k].z = v[k].w = 0.f; g[k] = v[k]; }
    }
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < RN_V4; k++) {
        ss = fmaf(v[k].x, v[k].x, ss); ss = fmaf(v[k].y, v[k].y, ss);
        ss = fmaf(v[k].z, v[k].z, ss); ss = fmaf(v[k].w, v[k].w, ss);
    }
    ss = block_sum(ss);
    const float r = rsqrtf(ss / (float)n + eps);
    rn_u2* o = (rn_u2*)(out + (long long)blockIdx.x * n);
#pragma unroll
    for (int k = 0; k < RN_V4; k++) {
        int i = threadIdx.x + k * blockDim.x;
        if (i < n4) {
            calm_f4 gk = g[k];
            if (addOne) { gk.x += 1.f; gk.y += 1.f; gk.z += 1.f; gk.w += 1.f; }
            rn_u2 h;
            h.x = (u32)to_half(v[k].x * r * gk.x, odt) | ((u32)to_half(v[k].y * r * gk.y, odt) << 16);
            h.y = (u32)to_half(v[k].z * r * gk.z, odt) | ((u32)to_half(v[k].w * r * gk.w, odt) << 16);
            o[i] = h;
        }
    }
}

// gu [T, 2F] f32 = [gate | up] per row -> h [T, F] (odt) = act(gate) * up
extern "C" __global__ void gate_act_rows(const float* gu, u16* h, int F, int T, int act, int odt) {
    long long n = (long long)F * T;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n; idx += (long long)gridDim.x * blockDim.x) {
        long long t = idx / F, i = idx - t * F;
        const float* g = gu + t * 2 * F;
        h[idx] = to_half(activate(g[i], act) * g[F + i], odt);
    }
}

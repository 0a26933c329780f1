// matvec_quant.cu: y = W x for quantized weights (layouts: src/Calm.Engine/Quant/QuantFormats.cs), fp32 input,
// fp32 accumulation and output. Same structure as matvec.cu: each warp owns whole rows (R of them, so every x
// chunk a lane loads from L1 serves R rows), lanes stream the rows 16 bytes at a time with U loads in flight per row
// (R*U per lane), the partial sums meet in a warp reduction.
//
// fp8  W: q [rows, cols] e4m3 bytes (row r at q + r*cols), s [rows] fp32.  y[r] = s[r] * sum_c e4m3(q[r][c]) * x[c]
//      16 weights per 16-byte load when cols % 16 == 0 (rows are then 16-byte aligned); else a byte-wise path.
// int4 W: p [rows, G*16] bytes, G = ceil(cols/32) groups per row (one group = 16 bytes = one 16-byte load), two
//      weights per byte, low nibble first; d [rows, G] fp16.  y[r] = sum_g d[r][g] * sum_{c in g, c < cols} (u - 8) * x[c]
//      A partial last group (cols % 32 != 0, padded with nibble 8) never reads x at or past cols.
#include "common.cuh"
#include "quant.cuh"

// Writes the R row totals of a warp (every lane holds its partials): y[r] = scale * total (+ bias) (+ y).
template <int R>
__device__ __forceinline__ void store_rows(float (&acc)[R], const float* rowScale, float* y, const float* bias, int row0, int rows, int lane, int accumulate) {
#pragma unroll
    for (int i = 0; i < R; i++) {
        float t = warp_sum(acc[i]);
        int r = row0 + i;
        if (lane == 0 && r < rows) {
            if (rowScale) t *= rowScale[r];
            if (bias) t += bias[r];
            if (accumulate) t += y[r];
            y[r] = t;
        }
    }
}

// ---- fp8 matvec --------------------------------------------------------------------------------------------------
// Q [rows, cols] e4m3, S [rows] f32, x [cols] f32, y [rows] f32, bias [rows] f32 or null; R rows per warp, U loads per row in flight.
template <int R, int U>
__device__ __forceinline__ void matvec_fp8_impl(const unsigned char* Q, const float* S, const float* x, float* y, const float* bias,
                                                int rows, int cols, int accumulate) {
    int warp = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int row0 = warp * R;
    PDL_ENTER();   // x and y come from / go to the step's other kernels (no-op without programmatic launch)
    if (row0 >= rows) return;
    float acc[R];
    const unsigned char* rp[R];
#pragma unroll
    for (int i = 0; i < R; i++) { acc[i] = 0.f; rp[i] = Q + (long long)min(row0 + i, rows - 1) * cols; }  // past the end: reread the last row, result dropped
    if ((cols & 15) == 0) {
        int nvec = cols >> 4;
        int v = lane;
        for (; v + 32 * (U - 1) < nvec; v += 32 * U) {
            calm_u4 w[R][U];
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int i = 0; i < R; i++) w[i][u] = ldg_u4_stream((const calm_u4*)rp[i] + v + 32 * u);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const calm_f4* xp = (const calm_f4*)(x + (long long)(v + 32 * u) * 16);
                calm_f4 xs[4] = { xp[0], xp[1], xp[2], xp[3] };
#pragma unroll
                for (int i = 0; i < R; i++) acc[i] += dot16_fp8(w[i][u], xs);
            }
        }
        for (; v < nvec; v += 32) {
            const calm_f4* xp = (const calm_f4*)(x + (long long)v * 16);
            calm_f4 xs[4] = { xp[0], xp[1], xp[2], xp[3] };
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] += dot16_fp8(ldg_u4_stream((const calm_u4*)rp[i] + v), xs);
        }
    } else {
        for (int c = lane; c < cols; c += 32) {
            float xv = x[c];
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] = fmaf(e4m3_to_f32(rp[i][c]), xv, acc[i]);
        }
    }
    store_rows<R>(acc, S, y, bias, row0, rows, lane, accumulate);
}

// ---- int4 matvec -------------------------------------------------------------------------------------------------
// P [rows, G*16] packed nibbles, D [rows, G] f16 (G = ceil(cols/32)), x [cols] f32, y [rows] f32, bias [rows] or null.
template <int R, int U>
__device__ __forceinline__ void matvec_int4_impl(const unsigned char* P, const u16* D, const float* x, float* y, const float* bias,
                                                 int rows, int cols, int accumulate) {
    int warp = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int row0 = warp * R;
    PDL_ENTER();
    if (row0 >= rows) return;
    int G = (cols + 31) >> 5, full = cols >> 5;
    float acc[R];
    const calm_u4* rp[R];
    const u16* dp[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        long long r = min(row0 + i, rows - 1);   // past the end: reread the last row, result dropped
        acc[i] = 0.f; rp[i] = (const calm_u4*)(P + r * G * 16); dp[i] = D + r * G;
    }
    int g = lane;
    for (; g + 32 * (U - 1) < full; g += 32 * U) {
        calm_u4 w[R][U];
        u16 d[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < R; i++) { w[i][u] = ldg_u4_stream(rp[i] + g + 32 * u); d[i][u] = dp[i][g + 32 * u]; }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const calm_f4* xp = (const calm_f4*)(x + (long long)(g + 32 * u) * 32);
            float s[R];
#pragma unroll
            for (int i = 0; i < R; i++) s[i] = 0.f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                calm_f4 a = xp[2 * k], b = xp[2 * k + 1];
#pragma unroll
                for (int i = 0; i < R; i++) {
                    const u32 wk = k == 0 ? w[i][u].x : k == 1 ? w[i][u].y : k == 2 ? w[i][u].z : w[i][u].w;
                    s[i] += dot8_int4(wk, a, b);
                }
            }
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] = fmaf(f16_to_f32(d[i][u]), s[i], acc[i]);
        }
    }
    for (; g < full; g += 32) {
        const calm_f4* xp = (const calm_f4*)(x + (long long)g * 32);
#pragma unroll
        for (int i = 0; i < R; i++) {
            calm_u4 w = ldg_u4_stream(rp[i] + g);
            float s = dot8_int4(w.x, xp[0], xp[1]) + dot8_int4(w.y, xp[2], xp[3]) + dot8_int4(w.z, xp[4], xp[5]) + dot8_int4(w.w, xp[6], xp[7]);
            acc[i] = fmaf(f16_to_f32(dp[i][g]), s, acc[i]);
        }
    }
    int rem = cols & 31;
    if (rem && lane < rem) {   // partial last group: element full*32 + lane, only x below cols is read
        int c = full * 32 + lane;
        float xv = x[c];
#pragma unroll
        for (int i = 0; i < R; i++) {
            u32 b = ((const unsigned char*)(rp[i] + full))[lane >> 1];
            float v = (float)(int)(((lane & 1) ? b >> 4 : b) & 15u) - 8.f;
            acc[i] = fmaf(f16_to_f32(dp[i][full]) * v, xv, acc[i]);
        }
    }
    store_rows<R>(acc, (const float*)0, y, bias, row0, rows, lane, accumulate);
}

// ---- int4 matvec with x staged in shared memory ---------------------------------------------------------------------
// Why: in matvec_int4_impl lane g reads x[32g .. 32g+31] with 16-byte loads 128 bytes apart, so every x load of a warp
// touches 32 cache lines (32 L1 wavefronts); at R rows per warp that caps the weight stream at about R * 0.5 TB/s on
// the H200 (measured r1 ~0.5, r2 ~1.0, r4 ~1.5-1.8 TB/s). Here each block first copies x [cols] into shared memory
// (coalesced), group g at xs[g*MQ_XS_STRIDE] with 4 floats of padding, so the 16-byte reads of 8 lanes (one phase)
// fall in 8 distinct 4-bank sets: conflict-free. x past cols is stored as 0, so the last partial group needs no
// special path (its padding nibbles are 8 anyway). Dynamic shared memory: ceil(cols/32) * MQ_XS_STRIDE * 4 bytes.
#define MQ_XS_STRIDE 36
template <int R, int U>
__device__ __forceinline__ void matvec_int4_xs_impl(const unsigned char* P, const u16* D, const float* x, float* y, const float* bias,
                                                    int rows, int cols, int accumulate) {
    extern __shared__ __align__(16) float mq_xs[];   // [G][MQ_XS_STRIDE]
    PDL_ENTER();
    int G = (cols + 31) >> 5;
    for (int c = threadIdx.x; c < G * 32; c += blockDim.x) mq_xs[(c >> 5) * MQ_XS_STRIDE + (c & 31)] = c < cols ? x[c] : 0.f;
    __syncthreads();
    int warp = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int row0 = warp * R;
    if (row0 >= rows) return;
    float acc[R];
    const calm_u4* rp[R];
    const u16* dp[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        long long r = min(row0 + i, rows - 1);   // past the end: reread the last row, result dropped
        acc[i] = 0.f; rp[i] = (const calm_u4*)(P + r * G * 16); dp[i] = D + r * G;
    }
    int g = lane;
    for (; g + 32 * (U - 1) < G; g += 32 * U) {
        calm_u4 w[R][U];
        u16 d[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < R; i++) { w[i][u] = ldg_u4_stream(rp[i] + g + 32 * u); d[i][u] = dp[i][g + 32 * u]; }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const calm_f4* xp = (const calm_f4*)(mq_xs + (g + 32 * u) * MQ_XS_STRIDE);
            float s[R];
#pragma unroll
            for (int i = 0; i < R; i++) s[i] = 0.f;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                calm_f4 a = xp[2 * k], b = xp[2 * k + 1];
#pragma unroll
                for (int i = 0; i < R; i++) {
                    const u32 wk = k == 0 ? w[i][u].x : k == 1 ? w[i][u].y : k == 2 ? w[i][u].z : w[i][u].w;
                    s[i] += dot8_int4(wk, a, b);
                }
            }
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] = fmaf(f16_to_f32(d[i][u]), s[i], acc[i]);
        }
    }
    for (; g < G; g += 32) {
        const calm_f4* xp = (const calm_f4*)(mq_xs + g * MQ_XS_STRIDE);
#pragma unroll
        for (int i = 0; i < R; i++) {
            calm_u4 w = ldg_u4_stream(rp[i] + g);
            float s = dot8_int4(w.x, xp[0], xp[1]) + dot8_int4(w.y, xp[2], xp[3]) + dot8_int4(w.z, xp[4], xp[5]) + dot8_int4(w.w, xp[6], xp[7]);
            acc[i] = fmaf(f16_to_f32(dp[i][g]), s, acc[i]);
        }
    }
    store_rows<R>(acc, (const float*)0, y, bias, row0, rows, lane, accumulate);
}

// ---- fp8 matvec with x staged in shared memory ----------------------------------------------------------------------
// In matvec_fp8_impl lane l reads x[16v .. 16v+15] (64 bytes) for its vector v, so a warp's 16-byte x loads hit 16
// cache lines each (a quarter of every L1 wavefront used). Here each block first copies x (cols % 16 == 0) into
// shared memory permuted per 32-vector chunk c: element (c*32 + l)*16 + 4k + j at c*512 + k*128 + 4l + j, so the four
// 16-byte x reads of a vector are each 512 contiguous bytes across the warp (conflict-free). Zero past cols.
// Dynamic shared memory: ceil(cols/512) * 512 * 4 bytes.
template <int R, int U>
__device__ __forceinline__ void matvec_fp8_xs_impl(const unsigned char* Q, const float* S, const float* x, float* y, const float* bias,
                                                   int rows, int cols, int accumulate) {
    extern __shared__ __align__(16) float mq_xs[];
    PDL_ENTER();
    const int padded = ((cols + 511) >> 9) << 9;
    for (int e = threadIdx.x; e < padded; e += blockDim.x) {
        int c = e >> 9, rem = e & 511, l = rem >> 4, i = rem & 15;
        mq_xs[(c << 9) + (i >> 2) * 128 + 4 * l + (i & 3)] = e < cols ? x[e] : 0.f;
    }
    __syncthreads();
    int warp = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int row0 = warp * R;
    if (row0 >= rows) return;
    float acc[R];
    const unsigned char* rp[R];
#pragma unroll
    for (int i = 0; i < R; i++) { acc[i] = 0.f; rp[i] = Q + (long long)min(row0 + i, rows - 1) * cols; }
    const int nvec = cols >> 4;
    int v = lane;
    for (; v + 32 * (U - 1) < nvec; v += 32 * U) {
        calm_u4 w[R][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < R; i++) w[i][u] = ldg_u4_stream((const calm_u4*)rp[i] + v + 32 * u);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const calm_f4* xp = (const calm_f4*)(mq_xs + ((v + 32 * u) >> 5) * 512) + lane;
            calm_f4 xs[4] = { xp[0], xp[32], xp[64], xp[96] };
#pragma unroll
            for (int i = 0; i < R; i++) acc[i] += dot16_fp8(w[i][u], xs);
        }
    }
    for (; v < nvec; v += 32) {
        const calm_f4* xp = (const calm_f4*)(mq_xs + (v >> 5) * 512) + lane;
        calm_f4 xs[4] = { xp[0], xp[32], xp[64], xp[96] };
#pragma unroll
        for (int i = 0; i < R; i++) acc[i] += dot16_fp8(ldg_u4_stream((const calm_u4*)rp[i] + v), xs);
    }
    store_rows<R>(acc, S, y, bias, row0, rows, lane, accumulate);
}


// ---- tensor-core matvecs (sm_80+) -----------------------------------------------------------------------------------
// Why: in the kernels above every lane multiplies on the CUDA cores and reads its own x (fp8: 64 bytes of x per 16 weight
// bytes, int4: 128), so the L1 reads of x and the conversions, not DRAM, set the pace (fp8 1.5-3.7 TB/s, int4
// 0.5-1.8 TB/s by shape on the H200). Here mma.sync m16n8k16 (f16 in, f32 accumulate) does the multiplies: the weights
// (A, 16 rows x 16 k) are converted to f16 exactly (e4m3 and int4 - 8 are subsets of f16), and x (B) is held as two f16
// parts, hi = f16(x) and lo = f16(x - hi), carried in different columns of B, so the products are those of x to ~22
// bits and the sums fp32: the result matches the CUDA-core kernels (fp32 x) to ~1e-7.
// A dot product does not care in which order its k come, so a lane's 16-byte weight load need not follow the mma
// fragment layout: lane (g = lane/4, t = lane%4) loads 16 bytes of row g and of row g + 8 of the tile, and the same k
// permutation is applied to x when it is staged.
// Work: a block (8 warps) owns T tiles of 16 rows; its warps split the k-blocks of the rows (k-block = one 16-byte
// load per lane per row: fp8 64 columns, int4 128 columns = 4 groups) and meet in shared memory at the end. Each warp
// converts its own k-blocks' x once (coalesced loads, hi/lo split) into a per-warp shared buffer laid out as the B
// fragments, so x costs one 8-byte shared load per mma per lane.
// x beyond f16 (|x| > 65504) would overflow hi: a warp whose sums come out non-finite redoes its k-blocks on the CUDA
// cores in fp32 (the plain kernels' arithmetic), so such inputs cost time, not correctness; inf/NaN in x or the
// weights then propagate as they do on the CPU.
// Requirements (checked by the launcher): fp8 cols % 64 == 0, int4 cols % 128 == 0; rows any (the last tile rereads
// the last row and drops the result).
// int4 values and scales are row-major (tiled = 0) or in the tile order (tiled = 1, quant.cuh quant_tile_off and
// quant_scale_idx: what CudaBackend stores), where a lane's 16 bytes of 8 consecutive rows g = 0..7 are one contiguous
// 512-byte run and their scales for the k-block one 64-byte run: plain tiles (16
// rows from a multiple of 16), GLU gate and up rows when F % 8 == 0, QKV rotary halves (head_dim % 16 == 0). Rows
// that are not (the clamped last rows, F % 8 != 0) are read correctly, only in more pieces. fp8 values are always
// row-major (matvec_fp8_tc_impl says why).
struct __align__(8) mq_f2 { float x, y; };
struct __align__(8) mq_u2 { u32 x, y; };

__device__ __forceinline__ u32 mq_word(const calm_u4& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }
__device__ __forceinline__ u32 mq_hfma2(u32 a, u32 b, u32 c) {
    u32 r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
// 8 int4 weights (one word, element i = nibble i, low nibble of each byte first) -> 4 f16x2 of (u - 8), exactly:
// p[0] = (e0, e4), p[1] = (e1, e5), p[2] = (e2, e6), p[3] = (e3, e7). A nibble n or'ed into 0x6400 is the f16 1024 + n
// (n << 4: 1024 + 16n), so one fma each gives n - 8.
// (Tried: the nibbles as f16 subnormals n 2^-24 with no fma, x of the low nibbles staged times 16 and 8 * (the group's
// sum of x) taken off each group's sum: 5 instead of 9 instructions per 8 weights, Llama-3-8B int4 +2% on the H200,
// but the sums n x (not (n - 8) x) lose bits in the tensor cores' accumulation where a group holds a large x: the
// folded-norm consumer test's error rose from ~3e-7 to 3e-6 .. 2e-5. bench/RESULTS.md 2026-11-29 sixth session.)
__device__ __forceinline__ void mq_int4x8_f16(u32 w, u32 (&p)[4]) {
    const u32 w8 = w >> 8;
    p[0] = mq_hfma2((w & 0x000F000Fu) | 0x64006400u, 0x3C003C00u, 0xE408E408u);    // * 1 - 1032
    p[1] = mq_hfma2((w & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, 0xD480D480u);    // * 1/16 - 72
    p[2] = mq_hfma2((w8 & 0x000F000Fu) | 0x64006400u, 0x3C003C00u, 0xE408E408u);
    p[3] = mq_hfma2((w8 & 0x00F000F0u) | 0x64006400u, 0x2C002C00u, 0xD480D480u);
}
// sum over the 4 lanes of a quad (lanes 4g .. 4g+3)
__device__ __forceinline__ float mq_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The kernels' modes: plain y = W x, GLU (gate_up fused with the activation), QKV (the qkv projection fused with RoPE
// and the fp16 KV-cache write, as matvec_qkv_rope in matvec.cu does for bf16/f16 weights).
#define MQ_PLAIN 0
#define MQ_GLU 1
#define MQ_QKV 2

// RoPE and the KV write of the QKV mode: cos/sin [maxCtx, Hd/2], this layer's caches [K, maxCtx, Hd] fp16, the step's
// position in sp; H q heads, K kv heads of head_dim Hd (rotate_half over the whole head)
struct MqRope {
    const float* cosT; const float* sinT; u16* kCache; u16* vCache; const StepParams* sp;
    int maxCtx, H, K, Hd;
};

// RMSNorm folded into the matvecs around it (common.cuh, CudaKernels.FoldNorm), for the tensor-core kernels: the
// template argument FOLD (MQ_FOLD_*) picks the role at compile time, so the kernels without one are the unfolded code.
// Consumer (MQ_FOLD_CONSUMER): x is x * g; each warp works out r = rsqrt(sum of the nIn partials ssIn / cols + eps) (the same
// order in every warp and block) and stages x * r, so the f16 parts of B are those of the normalised x as with an
// rmsnorm kernel before (the residual's own magnitude never reaches f16; r costs one L2 round trip before the first
// loads: measured faster than working it out inside the first stage). Producer (MQ_FOLD_PRODUCER, plain mode): besides
// y[r] it writes xg[r] = y[r] * gain(g[r]) and one partial sum of y^2 per block to ssOut[blockIdx.x].
#define MQ_FOLD_NONE 0
#define MQ_FOLD_CONSUMER 1
#define MQ_FOLD_PRODUCER 2
struct MqFold {
    const float* ssIn; int nIn; float eps;
    const float* g; float* xg; float* ssOut; int addOne;
};

// Programmatic launch of the dense tensor-core kernels (sm_90+, MQ_EARLY_WAIT; template argument EARLY): a warp
// issues its first stage's weight loads (which no kernel writes), then waits for the previous kernel (x, y, the norm's
// sums) and, as a folded-norm consumer, works out its 1/rms; the block lets the next kernel launch once all its loads
// are issued (late: with the trigger at the start the Llama-3-8B int4 decode ran at 400 tok/s, with it here 480.5;
// bench/RESULTS.md). Below sm_90 (no programmatic launch) and in the MoE twins (their entry waits for the router's
// expert ids; the early form made Mixtral's expert FFN 3.37 -> 3.75 ms) the kernels wait and trigger at the start,
// work out 1/rms before the loop and then load (the early form without overlap: fp8 368.7 vs 374.1 tok/s).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MQ_EARLY_WAIT 1
#else
#define MQ_EARLY_WAIT 0
#endif
// A warp's side of that protocol, after the kernel's PDL_ENTER when not early: xr is a consumer's 1/rms (1 otherwise);
// after_loads() once the warp's first weight loads are issued, end() after its last.
template <int FOLD, bool EARLY>
struct MqPdl {
    float xr = 1.f;
    bool waited = !EARLY;
    __device__ __forceinline__ MqPdl(const MqFold& fold, int cols) {
        if (!EARLY && FOLD == MQ_FOLD_CONSUMER) xr = fold_scale_warp(fold.ssIn, fold.nIn, cols, fold.eps);
    }
    __device__ __forceinline__ void after_loads(const MqFold& fold, int cols) {
        if (waited) return;
        pdl_wait();
        if (FOLD == MQ_FOLD_CONSUMER) xr = fold_scale_warp(fold.ssIn, fold.nIn, cols, fold.eps);
        waited = true;
    }
    __device__ __forceinline__ void end(const MqFold& fold, int cols) {
        if (!EARLY) return;
        after_loads(fold, cols);   // a warp without k-blocks
        pdl_trigger();             // every weight load of this block is issued: the next kernel may start
    }
};

// Rows of the block's tiles. Plain: tile i holds rows 16 (blockIdx.x T + i) + [0, 16): fragment row g at + g, g + 8 at + g + 8.
// Paired modes: tile i holds the pairs p0 + [0, 8) with p0 = (blockIdx.x * T + i) * 8, fragment row g the first row
// of pair p0 + g and g + 8 its second, so both halves of a pair meet in the same lane and the same block. GLU: the
// matrix is [2F, cols] = gate rows [0, F) over up rows [F, 2F), pair p = (gate p, up F + p), n = F. QKV: [Q + 2KV,
// cols] = (H + 2K) heads of Hd rows, pair p = rows (u Hd + j, u Hd + j + Hd/2) of head u = p / (Hd/2), j = p % (Hd/2),
// n = (H + 2K) Hd / 2 pairs.
template <int MODE>
__device__ __forceinline__ long long mq_tc_row(int T, int row0, int i, int g, int h, int n, int hd) {
    if (MODE == MQ_GLU) return (long long)h * n + min((blockIdx.x * T + i) * 8 + g, n - 1);
    if (MODE == MQ_QKV) {
        const int p = min((blockIdx.x * T + i) * 8 + g, n - 1), half = hd >> 1, u = p / half;
        return (long long)u * hd + (p - u * half) + h * half;
    }
    return min(row0 + 16 * i + g + 8 * h, n - 1);   // past the end: reread the last row, result dropped
}

// The block's tile totals (per warp: tot[i][0] fragment row g, tot[i][1] row g + 8, lanes t == 0 write) summed over
// the warps, then plain: y[r] = scale * total (+ bias) (+ y); GLU: y[p] = act(gate) * up, each half scaled (+ bias);
// QKV: each half scaled (+ bias), q and k pairs rotated, q written to y (the qkv buffer), k and v to the caches.
template <int T, int MODE, int W, int FOLD>
__device__ __forceinline__ void mq_tc_store(float (&tot)[T][2], float (*red)[T * 16], const float* rowScale, float* y, const float* bias,
                                            int row0, int n, int accumulate, const MqRope& rope, const MqFold& fold) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2;
    if ((lane & 3) == 0) {
#pragma unroll
        for (int i = 0; i < T; i++) { red[warp][16 * i + g] = tot[i][0]; red[warp][16 * i + g + 8] = tot[i][1]; }
    }
    __syncthreads();
    if (MODE == MQ_QKV) {
        if (threadIdx.x < T * 8) {
            const int i = threadIdx.x >> 3, gg = threadIdx.x & 7;
            const int p = (blockIdx.x * T + i) * 8 + gg;
            if (p < n) {
                const int half = rope.Hd >> 1, u = p / half, j = p - u * half;
                const int r0 = u * rope.Hd + j, r1 = r0 + half;
                float s0 = 0.f, s1 = 0.f;
#pragma unroll
                for (int w = 0; w < W; w++) { s0 += red[w][16 * i + gg]; s1 += red[w][16 * i + gg + 8]; }
                if (rowScale) { s0 *= rowScale[r0]; s1 *= rowScale[r1]; }
                if (bias) { s0 += bias[r0]; s1 += bias[r1]; }
                const int pos = rope.sp->pos;
                if (u < rope.H + rope.K) {
                    const float c = rope.cosT[(long long)pos * half + j], sn = rope.sinT[(long long)pos * half + j];
                    const float o0 = s0 * c - s1 * sn, o1 = s1 * c + s0 * sn;
                    s0 = o0; s1 = o1;
                }
                if (u < rope.H) { y[r0] = s0; y[r1] = s1; }
                else {
                    const int kh = u < rope.H + rope.K ? u - rope.H : u - rope.H - rope.K;
                    u16* cache = (u < rope.H + rope.K ? rope.kCache : rope.vCache) + ((long long)kh * rope.maxCtx + pos) * rope.Hd;
                    cache[j] = f32_to_f16(s0);
                    cache[j + half] = f32_to_f16(s1);
                }
            }
        }
    } else if (MODE == MQ_GLU) {
        if (threadIdx.x < T * 8) {
            const int i = threadIdx.x >> 3, gg = threadIdx.x & 7;
            const int p = (blockIdx.x * T + i) * 8 + gg;
            if (p < n) {
                float gate = 0.f, up = 0.f;
#pragma unroll
                for (int w = 0; w < W; w++) { gate += red[w][16 * i + gg]; up += red[w][16 * i + gg + 8]; }
                if (rowScale) { gate *= rowScale[p]; up *= rowScale[n + p]; }
                if (bias) { gate += bias[p]; up += bias[n + p]; }
                y[p] = activate(gate, accumulate) * up;   // GLU: accumulate carries the activation code
            }
        }
    } else {
        float sq = 0.f;   // a folded-norm producer's y^2 of this thread's row
        if (threadIdx.x < T * 16) {
            float s = 0.f;
#pragma unroll
            for (int w = 0; w < W; w++) s += red[w][threadIdx.x];
            int r = row0 + threadIdx.x;
            if (r < n) {
                if (rowScale) s *= rowScale[r];
                if (bias) s += bias[r];
                if (accumulate) s += y[r];
                y[r] = s;
                if (FOLD == MQ_FOLD_PRODUCER) { fold.xg[r] = s * gain(fold.g[r], fold.addOne); sq = s * s; }
            }
        }
        if (FOLD == MQ_FOLD_PRODUCER) fold_partial(sq, fold.ssOut);   // block-wide
    }
}

// fp8: Q [rows, cols] e4m3, S [rows] f32. k-block kb = columns 64kb .. 64kb+63; lane (g, t) holds bytes 16t .. 16t+15
// of it for its rows g and g+8; mma j (0..3) takes word j of each: a0a1 = bytes 0,1 (k 2t, 2t+1), a4a5 = bytes 2,3
// (k 2t+8, 2t+9). B column n: x hi for even n, lo for odd n, so d0 + d1 (d2 + d3) is row g's (g+8's) sum.
// Per-warp x buffer: [U][j][slot = 2t + part][2] u32 (b0b1, b2b3).
// Each stage issues its U k-blocks' loads (with the L2 prefetch-size hint, common.cuh ldg_u4_stream_l2: a load
// instruction covers 8 rows x 64 bytes), stages x, then multiplies. Measured slower on the H200 (bench/RESULTS.md):
// double-buffered loads (the next stage's in flight during the multiplies: 96-164 registers, half the blocks per SM).
// The first stage's loads go out before pdl_wait (MqPdl).
// The values are row-major: `tiled` is the int4 kernels' argument, taken here for one entry-point signature and
// ignored (the launcher refuses fp8 in the tile order). Measured on the H200 (bench/RESULTS.md, fifteenth session,
// same call): fp8 read from the tile order ran Llama-3-8B at 424 tok/s against 435 for this row-major form with the
// .L2::256B hint (a row-major 64-byte load with that hint also brings the next warp's 64 bytes into L2), and the
// kernel that could read both orders lost that much on row-major values too (a runtime stride: 398; both orders as
// template instances in one kernel: 415).
template <int T, int U, int MODE, int W, int FOLD, bool EARLY = true>
__device__ __forceinline__ void matvec_fp8_tc_impl(const unsigned char* Q, const float* S, const float* x, float* y, const float* bias,
                                                   int n, int cols, int accumulate, const MqRope& rope, const MqFold& fold, int tiled) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ float red[W][T * 16];
    __shared__ __align__(16) u32 xb[W][U][4][8][2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * (T * 16);   // plain: the block's first row
    constexpr bool early = EARLY && MQ_EARLY_WAIT;
    if (!early) PDL_ENTER();
    if (MODE == MQ_PLAIN && row0 >= n) return;   // (early: before pdl_wait, it touches nothing)
    const calm_u4* rp[T][2];
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) rp[i][h] = (const calm_u4*)(Q + mq_tc_row<MODE>(T, row0, i, g, h, n, rope.Hd) * cols) + t;
    const int nkb = cols >> 6;
    // staging: lane L converts x[64kb + 2L, +1] = the pair (b0b1 if L even else b2b3) of t' = L/8, j' = (L/2)%4
    const int st = lane >> 3, sj = (lane >> 1) & 3, sw = lane & 1;
    const int bslot = 2 * t + (g & 1);
    float d[T][2][4];
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) d[i][0][e] = d[i][1][e] = 0.f;
    MqPdl<FOLD, early> pdl(fold, cols);
    const float& xr = pdl.xr;   // a consumer's 1/rms of the folded norm
    for (int kb0 = warp; kb0 < nkb; kb0 += W * U) {
        calm_u4 w[U][T][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
#pragma unroll
                for (int i = 0; i < T; i++) { w[u][i][0] = ldg_u4_stream_l2(rp[i][0] + 4 * kb); w[u][i][1] = ldg_u4_stream_l2(rp[i][1] + 4 * kb); }
            }
        }
        pdl.after_loads(fold, cols);
        __syncwarp();   // the previous iteration's B reads are done
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
                const mq_f2 v = *(const mq_f2*)(x + (long long)kb * 64 + 2 * lane);
                u32 hi, lo;
                if (FOLD == MQ_FOLD_CONSUMER) split_f16x2(v.x * xr, v.y * xr, hi, lo);
                else split_f16x2(v.x, v.y, hi, lo);
                xb[warp][u][sj][2 * st][sw] = hi;
                xb[warp][u][sj][2 * st + 1][sw] = lo;
            }
        }
        __syncwarp();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const mq_u2 b = *(const mq_u2*)&xb[warp][u][j][bslot][0];
#pragma unroll
                    for (int i = 0; i < T; i++) {
                        const u32 wg = mq_word(w[u][i][0], j), wh = mq_word(w[u][i][1], j);
                        const u32 a[4] = { e4m3x2_to_f16x2(wg & 0xffffu), e4m3x2_to_f16x2(wh & 0xffffu),
                                           e4m3x2_to_f16x2(wg >> 16), e4m3x2_to_f16x2(wh >> 16) };
                        mma_16816(d[i][j & 1], a, b.x, b.y);
                    }
                }
            }
        }
    }
    pdl.end(fold, cols);
    float tot[T][2];
    bool bad = false;
#pragma unroll
    for (int i = 0; i < T; i++) {
        tot[i][0] = (d[i][0][0] + d[i][0][1]) + (d[i][1][0] + d[i][1][1]);
        tot[i][1] = (d[i][0][2] + d[i][0][3]) + (d[i][1][2] + d[i][1][3]);
        bad |= !isfinite(tot[i][0]) || !isfinite(tot[i][1]);
    }
    if (__any_sync(0xffffffffu, bad)) {   // x outside f16 (or inf/NaN somewhere): this warp's k-blocks again in fp32
        float f[T][2];
#pragma unroll
        for (int i = 0; i < T; i++) f[i][0] = f[i][1] = 0.f;
        for (int kb = warp; kb < nkb; kb += W) {
            const calm_f4* xp = (const calm_f4*)(x + (long long)kb * 64 + 16 * t);
            const calm_f4 xs[4] = { xp[0], xp[1], xp[2], xp[3] };
#pragma unroll
            for (int i = 0; i < T; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) f[i][h] += dot16_fp8(ldg_u4_stream(rp[i][h] + 4 * kb), xs);
        }
#pragma unroll
        for (int i = 0; i < T; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) tot[i][h] = FOLD == MQ_FOLD_CONSUMER ? mq_quad_sum(f[i][h]) * xr : mq_quad_sum(f[i][h]);
    }
    mq_tc_store<T, MODE, W, FOLD>(tot, red, S, y, bias, row0, n, accumulate, rope, fold);
#endif
}

// int4: P [rows, G*16] (G = cols/32, a multiple of 4), D [rows, G] f16. k-block kb = groups 4kb .. 4kb+3 (128
// columns); lane (g, t) loads group 4kb + t of its rows g and g+8 (16 bytes, 32 nibbles). Its word q (columns 8q ..
// 8q+7 of the group) feeds two mmas, h = 0, 1: a0a1 = (e_2h, e_2h+4), a4a5 = (e_2h+1, e_2h+5) (mq_int4x8_f16's pairs).
// The groups have their own scales, so B keeps them apart: column n holds the x of group-lane n % 4 only (hi for
// n < 4, lo for n >= 4; zero elsewhere), so d0 / d1 of lane t are the sums of groups 2(t%2) and 2(t%2)+1 for row g
// (d2 / d3 for row g+8), scaled in fp32 and added up over the quad at the end.
// Per-warp x buffer: [U][m = 2q + h][slot][2] u32, slot 2t + part for group-lane t, slot 8 zero. Loads as fp8.
template <int T, int U, int MODE, int W, int FOLD, bool EARLY = true>
__device__ __forceinline__ void matvec_int4_tc_impl(const unsigned char* P, const u16* D, const float* x, float* y, const float* bias,
                                                    int n, int cols, int accumulate, const MqRope& rope, const MqFold& fold, int tiled) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ float red[W][T * 16];
    __shared__ __align__(16) u32 xb[W][U][8][9][2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * (T * 16);   // plain: the block's first row
    constexpr bool early = EARLY && MQ_EARLY_WAIT;
    if (!early) PDL_ENTER();
    if (MODE == MQ_PLAIN && row0 >= n) return;   // (early: before pdl_wait, it touches nothing)
    const int G = cols >> 5;
    // In either order the 16 bytes of group q of row r (one 16-byte unit of P) and its scale (one element of D) have
    // the same index: row-major r G + q; tile order (r / 8) 8 G + (q / 4) 32 + (r % 8) 4 + q % 4 (quant_tile_off of
    // byte 16 q over 16, quant_scale_idx). So one 32-bit index per row locates both: vi = lane t's unit of k-block 0
    // (group t), its scale pair (groups 2(t%2), 2(t%2)+1) at vi - t + 2(t%2), and k-block kb kbs units further on.
    // (Two 64-bit pointers per row instead made ptxas spill in the register-capped t2b.)
    const calm_u4* const P16 = (const calm_u4*)P;
    u32 vi[T][2];
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
            vi[i][h] = (u32)quant_scale_idx(tiled, mq_tc_row<MODE>(T, row0, i, g, h, n, rope.Hd), t, G);
    const int nkb = cols >> 7, kbs = tiled ? 32 : 4, sp = 2 * (t & 1) - t;
    // staging: lane L = (t' = L/8, q' = (L/2)%4, h' = L%2) packs (x[2h'], x[2h'+4]) and (x[2h'+1], x[2h'+5]) of word q' of group-lane t'
    const int st = lane >> 3, sq = (lane >> 1) & 3, sh = lane & 1;
    const int bslot = t == (g & 3) ? 2 * t + (g >> 2) : 8;
    if (lane < 8 * U) xb[warp][lane >> 3][lane & 7][8][0] = xb[warp][lane >> 3][lane & 7][8][1] = 0u;
    float acc[T][2];
#pragma unroll
    for (int i = 0; i < T; i++) acc[i][0] = acc[i][1] = 0.f;
    MqPdl<FOLD, early> pdl(fold, cols);
    const float& xr = pdl.xr;   // a consumer's 1/rms of the folded norm
    for (int kb0 = warp; kb0 < nkb; kb0 += W * U) {
        calm_u4 w[U][T][2];
        u32 sc[U][T][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
#pragma unroll
                for (int i = 0; i < T; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const u32 e = vi[i][h] + kbs * kb;
                        w[u][i][h] = ldg_u4_stream_l2(P16 + e);
                        sc[u][i][h] = ldg_u32_l2((const u32*)(D + (u32)(e + sp)));
                    }
            }
        }
        pdl.after_loads(fold, cols);
        __syncwarp();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
                const float* xp = x + (long long)kb * 128 + 32 * st + 8 * sq + 2 * sh;
                const mq_f2 a = *(const mq_f2*)xp, b = *(const mq_f2*)(xp + 4);
                mq_u2 hi, lo;
                if (FOLD == MQ_FOLD_CONSUMER) {
                    split_f16x2(a.x * xr, b.x * xr, hi.x, lo.x);
                    split_f16x2(a.y * xr, b.y * xr, hi.y, lo.y);
                } else {
                    split_f16x2(a.x, b.x, hi.x, lo.x);
                    split_f16x2(a.y, b.y, hi.y, lo.y);
                }
                *(mq_u2*)&xb[warp][u][2 * sq + sh][2 * st][0] = hi;
                *(mq_u2*)&xb[warp][u][2 * sq + sh][2 * st + 1][0] = lo;
            }
        }
        __syncwarp();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int kb = kb0 + u * W;
            if (kb < nkb) {
                mq_u2 b[8];
#pragma unroll
                for (int m = 0; m < 8; m++) b[m] = *(const mq_u2*)&xb[warp][u][m][bslot][0];
#pragma unroll
                for (int i = 0; i < T; i++) {
                    float d[2][4] = { { 0.f, 0.f, 0.f, 0.f }, { 0.f, 0.f, 0.f, 0.f } };
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        u32 pg[4], ph[4];
                        mq_int4x8_f16(mq_word(w[u][i][0], q), pg);
                        mq_int4x8_f16(mq_word(w[u][i][1], q), ph);
                        const u32 a0[4] = { pg[0], ph[0], pg[1], ph[1] }, a1[4] = { pg[2], ph[2], pg[3], ph[3] };
                        mma_16816(d[q & 1], a0, b[2 * q].x, b[2 * q].y);
                        mma_16816(d[q & 1], a1, b[2 * q + 1].x, b[2 * q + 1].y);
                    }
                    float s0, s1, s2, s3;
                    unpack2<CALM_F16>(sc[u][i][0], s0, s1);
                    unpack2<CALM_F16>(sc[u][i][1], s2, s3);
                    acc[i][0] = fmaf(s0, d[0][0] + d[1][0], fmaf(s1, d[0][1] + d[1][1], acc[i][0]));
                    acc[i][1] = fmaf(s2, d[0][2] + d[1][2], fmaf(s3, d[0][3] + d[1][3], acc[i][1]));
                }
            }
        }
    }
    pdl.end(fold, cols);
    float tot[T][2];
    bool bad = false;
#pragma unroll
    for (int i = 0; i < T; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) { tot[i][h] = mq_quad_sum(acc[i][h]); bad |= !isfinite(tot[i][h]); }
    if (__any_sync(0xffffffffu, bad)) {   // x outside f16 (or inf/NaN somewhere): this warp's k-blocks again in fp32
        float f[T][2];
#pragma unroll
        for (int i = 0; i < T; i++) f[i][0] = f[i][1] = 0.f;
        for (int kb = warp; kb < nkb; kb += W) {
            const calm_f4* xp = (const calm_f4*)(x + (long long)kb * 128 + 32 * t);
#pragma unroll
            for (int i = 0; i < T; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const u32 e = vi[i][h] + kbs * kb;   // group 4 kb + t: its values and its scale
                    const calm_u4 v = ldg_u4_stream(P16 + e);
                    const float sum = dot8_int4(v.x, xp[0], xp[1]) + dot8_int4(v.y, xp[2], xp[3]) + dot8_int4(v.z, xp[4], xp[5]) + dot8_int4(v.w, xp[6], xp[7]);
                    f[i][h] = fmaf(f16_to_f32(D[e]), sum, f[i][h]);
                }
        }
#pragma unroll
        for (int i = 0; i < T; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) tot[i][h] = FOLD == MQ_FOLD_CONSUMER ? mq_quad_sum(f[i][h]) * xr : mq_quad_sum(f[i][h]);
    }
    mq_tc_store<T, MODE, W, FOLD>(tot, red, (const float*)0, y, bias, row0, n, accumulate, rope, fold);
#endif
}

// ---- entry points ------------------------------------------------------------------------------------------------
// _rR: R rows per warp (each x chunk read from L1 serves R rows; int4 reads 8 bytes of x per weight byte, so R = 1 would
// need as much L1 bandwidth as the SM has), 8 16-byte weight loads in flight per lane for R >= 2.
// Launch: 256 threads, ceil(rows / (8 R)) blocks. R = 1, 2, 4 or 8.
// One format's pair of kernels: matvec_NAME_rR and its MoE twin. ST: the scales' element type (fp8 f32, int4 f16).
/* MoE: blockIdx.y = slot s; expert e = expertIdx[s]; values/scales: device tables of E pointers;
   x [slots, xStride] (xStride 0: one shared input), y [slots, rows]. */
#define MQ_KERNELS(NAME, IMPL, ST, R, U, SUF)                                                                     \
extern "C" __global__ void matvec_##NAME##SUF(const unsigned char* Q, const ST* S, const float* x, float* y, const float* bias, \
                                              int rows, int cols, int accumulate) {                                      \
    IMPL<R, U>(Q, S, x, y, bias, rows, cols, accumulate);                                                                \
}                                                                                                                        \
extern "C" __global__ void moe_matvec_##NAME##SUF(const void* const* values, const void* const* scales, const int* expertIdx, \
                                                  const float* x, int xStride, float* y, int rows, int cols) {          \
    pdl_wait();   /* the expert ids come from moe_route */                                                               \
    int s = blockIdx.y, e = expertIdx[s];                                                                                \
    IMPL<R, U>((const unsigned char*)values[e], (const ST*)scales[e], x + (long long)s * xStride,                        \
               y + (long long)s * rows, (const float*)0, rows, cols, 0);                                                 \
}
#define MQ_ENTRIES(R, U, SUF) MQ_KERNELS(fp8, matvec_fp8_impl, float, R, U, SUF) MQ_KERNELS(int4, matvec_int4_impl, u16, R, U, SUF)

MQ_ENTRIES(1, 4, _r1)
MQ_ENTRIES(2, 4, _r2)
MQ_ENTRIES(4, 2, _r4)
// 8 rows per warp, one load per row in flight (still 8 per lane): halves the x traffic from L1 per weight byte again
// (int4 candidate; selectable with rowsPerWarp 8, not chosen automatically until measured).
MQ_ENTRIES(8, 1, _r8)

// Tensor cores (sm_80+): _tT = T tiles of 16 rows per block of 8 warps, _t1w one tile per block of 16 warps; launch
// ceil(rows / (16 T)) blocks (GLU: ceil(F / (8 T))) of 256 threads (_t1w: 512).
// Entry points of one variant: T tiles per block of W warps, U k-blocks per stage; LB: a __launch_bounds__ or
// nothing. The 8-warp variants have none: on the H200 with NVRTC 13 the fp8 kernels with __launch_bounds__(256, 4)
// or (256, 2) ran the Llama-3-8B projections in 0.71 / 0.61 ms against 0.51 ms without (bench/RESULTS.md; the PTX
// of the plain kernels is the same with and without, so the bounds act in ptxas); the 16-warp variant needs (512, 1)
// so that its registers always allow a 512-thread launch.
// Plain: y = W x as matvec_fp8 / matvec_int4 (same arguments). GLU: gate_up fused with the activation, W [2F, cols]
// (gate over up), h [F] = act(gate) * up. MoE twins: per slot s, expert expertIdx[s], x + s*xStride, output + s*rows (F).
// Every tensor-core kernel takes `tiled` last (before a fold role's arguments): the int4 values' order (1: the tile
// order, quant.cuh; 0: row-major); the fp8 kernels ignore it (row-major only). Folded RMSNorm (MqFold): _fc kernels (plain, GLU, QKV) are consumers, with (ssIn, nIn,
// eps) after the usual arguments; _fp (plain) producers, with (g, xg, ssOut, addOne).
#define MQ_TC_ONE(NAME, IMPL, ST, T, U, W, SUF, LB)                                                                       \
MQ_TC_PLAIN(NAME, IMPL, ST, T, U, W, SUF, LB)                                                                            \
MQ_TC_GLU_QKV(NAME, IMPL, ST, T, U, W, SUF, LB, , MQ_FOLD_NONE, , MqFold())                                              \
MQ_TC_GLU_QKV(NAME, IMPL, ST, T, U, W, SUF, LB, _fc, MQ_FOLD_CONSUMER, MQ_FC_PARAMS, MQ_FC_FOLD)                         \
extern "C" __global__ void LB moe_matvec_##NAME##_tc_glu##SUF(const void* const* values, const void* const* scales, \
                                                 const int* expertIdx, const float* x, int xStride, float* h, int F, int cols, int act, \
                                                 int tiled) {                                                            \
    pdl_wait();                                                                                                          \
    int s = blockIdx.y, e = expertIdx[s];                                                                                \
    IMPL<T, U, MQ_GLU, W, MQ_FOLD_NONE, false>((const unsigned char*)values[e], (const ST*)scales[e], x + (long long)s * xStride, \
                          h + (long long)s * F, (const float*)0, F, cols, act, MqRope(), MqFold(), tiled);               \
}
#define MQ_FC_PARAMS , const float* ssIn, int nIn, float eps
#define MQ_FC_FOLD { ssIn, nIn, eps, 0, 0, 0, 0 }
#define MQ_FP_PARAMS , const float* g, float* xg, float* ssOut, int addOne
#define MQ_FP_FOLD { 0, 0, 0.f, g, xg, ssOut, addOne }
// GLU and QKV with one fold role: FS the name's suffix, FOLD the role, FPARAMS its extra parameters, FINIT its MqFold
#define MQ_TC_GLU_QKV(NAME, IMPL, ST, T, U, W, SUF, LB, FS, FOLD, FPARAMS, FINIT)                                         \
extern "C" __global__ void LB matvec_##NAME##_tc_glu##FS##SUF(const unsigned char* Q, const ST* S, const float* x,     \
        float* h, const float* bias, int F, int cols, int act, int tiled FPARAMS) {                                      \
    const MqFold fold = FINIT;                                                                                           \
    IMPL<T, U, MQ_GLU, W, FOLD>(Q, S, x, h, bias, F, cols, act, MqRope(), fold, tiled);                                  \
}                                                                                                                        \
extern "C" __global__ void LB matvec_##NAME##_tc_qkv##FS##SUF(const unsigned char* Q, const ST* S, const float* x,     \
        float* qkv, const float* bias, int cols, const float* cosT, const float* sinT, u16* kCache, u16* vCache,        \
        int maxCtx, int H, int K, int Hd, const StepParams* sp, int tiled FPARAMS) {                                     \
    const MqRope rope = { cosT, sinT, kCache, vCache, sp, maxCtx, H, K, Hd };                                           \
    const MqFold fold = FINIT;                                                                                           \
    IMPL<T, U, MQ_QKV, W, FOLD>(Q, S, x, qkv, bias, (H + 2 * K) * (Hd >> 1), cols, 0, rope, fold, tiled);                \
}
// the plain kernels: unfolded, consumer, producer, and the MoE twin
#define MQ_TC_PLAIN_ONE(NAME, IMPL, ST, T, U, W, SUF, LB, FS, FOLD, FPARAMS, FINIT)                                       \
extern "C" __global__ void LB matvec_##NAME##_tc##FS##SUF(const unsigned char* Q, const ST* S, const float* x, float* y, \
        const float* bias, int rows, int cols, int accumulate, int tiled FPARAMS) {                                      \
    const MqFold fold = FINIT;                                                                                           \
    IMPL<T, U, MQ_PLAIN, W, FOLD>(Q, S, x, y, bias, rows, cols, accumulate, MqRope(), fold, tiled);                      \
}
#define MQ_TC_PLAIN(NAME, IMPL, ST, T, U, W, SUF, LB)                                                                     \
MQ_TC_PLAIN_ONE(NAME, IMPL, ST, T, U, W, SUF, LB, , MQ_FOLD_NONE, , MqFold())                                            \
MQ_TC_PLAIN_ONE(NAME, IMPL, ST, T, U, W, SUF, LB, _fc, MQ_FOLD_CONSUMER, MQ_FC_PARAMS, MQ_FC_FOLD)                       \
MQ_TC_PLAIN_ONE(NAME, IMPL, ST, T, U, W, SUF, LB, _fp, MQ_FOLD_PRODUCER, MQ_FP_PARAMS, MQ_FP_FOLD)                       \
extern "C" __global__ void LB moe_matvec_##NAME##_tc##SUF(const void* const* values, const void* const* scales, \
                                                 const int* expertIdx, const float* x, int xStride, float* y, int rows, int cols, \
                                                 int tiled) {                                                            \
    pdl_wait();   /* the expert ids come from moe_route */                                                               \
    int s = blockIdx.y, e = expertIdx[s];                                                                                \
    IMPL<T, U, MQ_PLAIN, W, MQ_FOLD_NONE, false>((const unsigned char*)values[e], (const ST*)scales[e], x + (long long)s * xStride, \
                            y + (long long)s * rows, (const float*)0, rows, cols, 0, MqRope(), MqFold(), tiled);         \
}
#define MQ_TC_ENTRIES(T, U, W, SUF, LB) MQ_TC_ONE(fp8, matvec_fp8_tc_impl, float, T, U, W, SUF, LB) MQ_TC_ONE(int4, matvec_int4_tc_impl, u16, T, U, W, SUF, LB)

MQ_TC_ENTRIES(1, 4, 8, _t1, )
MQ_TC_ENTRIES(2, 2, 8, _t2, )
MQ_TC_ENTRIES(4, 1, 8, _t4, )
MQ_TC_ENTRIES(1, 4, 16, _t1w, __launch_bounds__(512, 1))   // 16 warps per block: twice the loads in flight per tile for short matrices
// More warps per SM (candidates, measured before they are chosen): registers capped so that 4 / 3 / 2 blocks fit
MQ_TC_ENTRIES(1, 2, 8, _t1b, __launch_bounds__(256, 4))
MQ_TC_ENTRIES(2, 1, 8, _t2b, __launch_bounds__(256, 3))
MQ_TC_ENTRIES(4, 1, 8, _t4b, __launch_bounds__(256, 2))

// int4 with x staged in shared memory (matvec_int4_xs_impl); launch as above with ceil(cols/32)*MQ_XS_STRIDE*4 bytes
// of dynamic shared memory.
#define MQ_XS_ENTRIES(R, U, SUF) MQ_KERNELS(int4_xs, matvec_int4_xs_impl, u16, R, U, SUF) MQ_KERNELS(fp8_xs, matvec_fp8_xs_impl, float, R, U, SUF)

MQ_XS_ENTRIES(1, 4, _r1)
MQ_XS_ENTRIES(2, 4, _r2)
MQ_XS_ENTRIES(4, 2, _r4)
MQ_XS_ENTRIES(8, 1, _r8)

// src [rows, rowBytes] row-major -> dst [ceil(rows / 8) * 8 rows] in the tile order (quant.cuh quant_tile_off;
// rowBytes % 64 == 0), the padding rows of the last 8-row block zero. One thread per 16 bytes of dst (writes
// coalesced; a warp reads 8 rows x 64 bytes). Launch: any grid of 256 threads (grid-stride).
extern "C" __global__ void quant_tile(const calm_u4* src, calm_u4* dst, long long rows, int rowBytes) {
    const long long per = rowBytes >> 4, n = ((rows + 7) >> 3) * 8 * per;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long o = i / (8 * per), rem = i - o * 8 * per;
        const int k = (int)(rem >> 5), g = (int)((rem >> 2) & 7), t = (int)(rem & 3);
        const long long r = 8 * o + g;
        calm_u4 v = { 0u, 0u, 0u, 0u };
        if (r < rows) v = src[r * per + 4 * k + t];
        dst[i] = v;
    }
}

// The int4 scales' tile order (quant.cuh quant_scale_idx): src [rows, rowBytes] row-major -> dst [ceil(rows / 8) * 8
// rows], 8-byte pieces (rowBytes % 8 == 0), the padding rows zero. One thread per 8 bytes of dst; any grid of 256 threads.
extern "C" __global__ void quant_tile_scales(const mq_u2* src, mq_u2* dst, long long rows, int rowBytes) {
    const long long per = rowBytes >> 3, n = ((rows + 7) >> 3) * 8 * per;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const long long o = i / (8 * per), rem = i - o * 8 * per;
        const long long r = 8 * o + (rem & 7);
        mq_u2 v = { 0u, 0u };
        if (r < rows) v = src[r * per + (rem >> 3)];
        dst[i] = v;
    }
}

// Reports which e4m3 conversion this image was compiled with (1: cvt.rn.f16x2.e4m3x2, 0: bit fallback); out [1] int.
extern "C" __global__ void matvec_quant_info(int* out) { out[0] = CALM_FP8_CVT; }

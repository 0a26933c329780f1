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


// ---- entry points ------------------------------------------------------------------------------------------------
// _rR: R rows per warp (each x chunk read from L1 serves R rows; int4 reads 8 bytes of x per weight byte, so R = 1 would
// need as much L1 bandwidth as the SM has), 8 16-byte weight loads in flight per lane for R >= 2.
// Launch: 256 threads, ceil(rows / (8 R)) blocks. R = 1, 2, 4 or 8.
// One format's pair of kernels: matvec_NAME_rR and its MoE twin. ST: the scales' element type (fp8 f32, int4 f16).
/* MoE: blockIdx.y = slot s; expert e = expertIdx[s]; values/scales: device tables of E pointers;
   x [slots, xStride] (xStride 0: one shared input), y [slots, rows]. */
#define MQ_KERNELS(NAME, IMPL, ST, R, U, SUF)                                                                            \
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

// int4 with x staged in shared memory (matvec_int4_xs_impl); launch as above with ceil(cols/32)*MQ_XS_STRIDE*4 bytes
// of dynamic shared memory.
#define MQ_XS_ENTRIES(R, U, SUF) MQ_KERNELS(int4_xs, matvec_int4_xs_impl, u16, R, U, SUF) MQ_KERNELS(fp8_xs, matvec_fp8_xs_impl, float, R, U, SUF)

MQ_XS_ENTRIES(1, 4, _r1)
MQ_XS_ENTRIES(2, 4, _r2)
MQ_XS_ENTRIES(4, 2, _r4)
MQ_XS_ENTRIES(8, 1, _r8)

// Reports which e4m3 conversion this image was compiled with (1: cvt.rn.f16x2.e4m3x2, 0: bit fallback); out [1] int.
extern "C" __global__ void matvec_quant_info(int* out) { out[0] = CALM_FP8_CVT; }

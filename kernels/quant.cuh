// quant.cuh: fp8 (e4m3) and int4 dot-product helpers shared by the quantized matvec (matvec_quant.cu) and the
// persistent decode kernel (decode_persistent.cu). Layouts: src/Calm.Engine/Quant/QuantFormats.cs.
#pragma once
#include "common.cuh"

// ---- e4m3 conversions (CALM_FP8_CVT, e4m3x2_to_f16x2, e4m3_to_f32): fp8.cuh, shared with the fp8 KV cache ------
#include "fp8.cuh"

// 16 e4m3 weights (one 16-byte vector) . 16 fp32 inputs held in registers (xs[0..3], element order)
__device__ __forceinline__ float dot16_fp8(const calm_u4 w, const calm_f4* xs) {
    const u32 words[4] = { w.x, w.y, w.z, w.w };
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float w0, w1, w2, w3;
        unpack2<CALM_F16>(e4m3x2_to_f16x2(words[k] & 0xffffu), w0, w1);
        unpack2<CALM_F16>(e4m3x2_to_f16x2(words[k] >> 16), w2, w3);
        s = fmaf(w0, xs[k].x, s); s = fmaf(w1, xs[k].y, s); s = fmaf(w2, xs[k].z, s); s = fmaf(w3, xs[k].w, s);
    }
    return s;
}

// ---- int4 ------------------------------------------------------------------------------------------------------
// The float with bits 0x4B0000uu is exactly 2^23 + uu, so (that) - (2^23 + 8) = u - 8 with no int->float conversion;
// prmt builds it in one instruction: byte 0 from the packed word, bytes 1..3 from 0x4B000000.
#define MQ_MAGIC 0x4B000000u
#define MQ_MAGIC_BIAS 8388616.f
__device__ __forceinline__ float nib_byte(u32 w, u32 sel) { return __uint_as_float(__byte_perm(w, MQ_MAGIC, sel)) - MQ_MAGIC_BIAS; }

// Four packed bytes (8 weights in element order b0.lo, b0.hi, b1.lo, ...) . 8 fp32 inputs (a, b), unscaled.
__device__ __forceinline__ float dot8_int4(u32 w, calm_f4 a, calm_f4 b) {
    u32 lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
    float s = nib_byte(lo, 0x7540) * a.x;
    s = fmaf(nib_byte(hi, 0x7540), a.y, s);
    s = fmaf(nib_byte(lo, 0x7541), a.z, s);
    s = fmaf(nib_byte(hi, 0x7541), a.w, s);
    s = fmaf(nib_byte(lo, 0x7542), b.x, s);
    s = fmaf(nib_byte(hi, 0x7542), b.y, s);
    s = fmaf(nib_byte(lo, 0x7543), b.z, s);
    s = fmaf(nib_byte(hi, 0x7543), b.w, s);
    return s;
}


// ---- the tile order of the tensor-core kernels' matrices ---------------------------------------------------------
// A device copy of fp8/int4 values whose rows are a multiple of 64 bytes may be stored in 8-row blocks (CudaBackend
// does so for the int4 matrices the tensor-core matvecs read, their scales too: quant_scale_idx; fp8 stays row-major,
// QuantTileOrder.cs): block o (rows 8o .. 8o+7) at
// o * 8 * rowBytes, inside it the rows' 64-byte pieces k (bytes 64k .. 64k+63 of each row) at k * 512, row r % 8 of a
// piece at (r % 8) * 64. A warp whose lane (g, t) loads bytes 64k + 16t .. +15 of row 8o + g (the tensor-core
// fragment pattern) then reads 512 contiguous bytes in one instruction instead of 8 rows x 64 bytes (on the H200
// 2.5-3.0 TB/s for the latter against 4.3-4.5 for contiguous bytes: tools/probe/stream_modes.cu, bench/RESULTS.md).
// Byte b of row r:
__device__ __forceinline__ long long quant_tile_off(long long r, long long b, long long rowBytes) {
    return (r >> 3) * 8 * rowBytes + (b >> 6) * 512 + (r & 7) * 64 + (b & 63);
}
// byte b of row r of a matrix in the tile order (tiled != 0) or row-major
__device__ __forceinline__ long long quant_off(int tiled, long long r, long long b, long long rowBytes) {
    return tiled ? quant_tile_off(r, b, rowBytes) : r * rowBytes + b;
}
// The int4 scales [rows, G] f16 (G = cols / 32, a multiple of 4 where the values are tiled) follow their values: in
// the tile order the same 8-row blocks hold each row's 8-byte pieces (the 4 scales of one 128-column k-block) side by
// side, so the tensor-core kernels' scale load of a warp (8 rows x 8 bytes of one k-block) is 64 contiguous bytes
// instead of 8 rows 2G bytes apart. Scale g of row r (an element index):
__device__ __forceinline__ long long quant_scale_idx(int tiled, long long r, long long g, long long G) {
    return tiled ? (r >> 3) * 8 * G + (g >> 2) * 32 + (r & 7) * 4 + (g & 3) : r * G + g;
}

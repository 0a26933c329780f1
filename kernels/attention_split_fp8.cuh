// attention_split_fp8.cuh: the split (flash-decoding) decode attention over an fp8 (e4m3) KV cache with the dot
// products on the tensor cores ("wide" fp8 kernels attention_split_g{4,8}_fp8w_hd{64,128,256}; CudaKernels chooses
// them with AttentionFp8Wide / CALM_ATT_FP8_WIDE), and the same over an fp16 cache (KVT CALM_KV_F16: the
// attention_split_g{4,8}_f16w_hd{64,128} kernels, AttentionF16Wide / CALM_ATT_F16_WIDE; the differences are at FW_ES).
// Grid, chunks, workspace and the merge of the chunks are those of attention_split_impl (attention_split.cuh); the
// kernels take the same arguments as attention_split_g*_fp8 (the f16 ones those of attention_split_g*).
//
// Why: the 8-elements-per-lane fp8 kernel does the fp16 kernel's per-row work (fp32 FMAs for every query head,
// a shuffle tree per row, the online softmax per row-stream, fp8 -> f32 conversions) on half the bytes per row, so it
// moves half the bytes per instruction (1130 GB/s against 2525 for fp16 at context 32768 on the H200). Here a warp
// takes 16 positions at a time (a tile: 2 KB of K and 2 KB of V, 16-byte loads of 16 e4m3) and
//   S[16 positions, 8] = K[16, HD] . Qs[HD, 8]    (HD/16 mma.sync m16n8k16, f16 in, f32 accumulate)
//   O^T[HD, 8]        += V^T[HD, 16] . P[16, 8]   (HD/16 mma.sync)
// where the 8 columns are 4 query heads x (f16 hi, f16 lo): q (and p) are split as x = hi + lo (two f16 that carry
// ~22 bits), e4m3 values are exact in f16 and the products are exact, so the scores and the output keep fp32-level
// accuracy while q and p take no extra instruction per position (g8 kernels: two n8 blocks). Per lane and tile there
// are 8 conversions per 16 bytes of K (cvt.rn.f16x2.e4m3x2), a byte permute and two conversions per 4 bytes of V,
// 2 * HD/16 mma, the softmax of 2 positions x 1 head, and 3 + 4 shuffles: roughly 10 instructions per position for
// Llama-3-8B's shape against ~80 for the old kernel (counted from the source, not measured), plus HD/4 multiplies per
// lane to rescale the accumulators on the tiles that bring a new maximum.
// Scales: q * scale * log2(e) of each head is multiplied by 2^e (its largest |value| in [2^14, 2^15)) before the
// split, so its f16 lo part stays normal; the score is then (hi + lo column sums) * kScale[j] * 2^-e. p * vScale[j]
// (p <= 1) is multiplied by R = 2^r with (largest vScale so far) * R in [2^14, 2^15) before its split; R only
// shrinks (when a larger vScale arrives, with the accumulator rescaled exactly like on a new softmax max) and the
// output is divided by R at the end. Everything else (log2-domain online softmax, deterministic merges) as the fp16
// kernel.
// Layout of a tile starting at position p0 (lane = 4 * gq + tq, mma fragments per the PTX ISA):
//   scores: mma row m = gq -> position p0 + 2 gq, m = gq + 8 -> p0 + 2 gq + 1 (the lane loads these two K rows, bytes
//     [64 h + 16 tq, +16) of each for h < HD/64); k16 chunk c takes word c of them, whose dims are kdim(c, tq) + 0..3;
//     result columns 2 tq, 2 tq + 1: head tq (hi, lo) -> the lane holds the scores of head tq at its two positions.
//   output: mma k = 2 tq, 2 tq + 1, 2 tq + 8, 2 tq + 9 -> positions p0 + 4 tq + 0..3 (the lane loads these V rows, dims
//     [HD/8 gq, +HD/8)); tile i has rows m = gq -> dim HD/8 gq + 2 i, m = gq + 8 -> dim HD/8 gq + 2 i + 1; P's column
//     gq is head gq/2 (hi or lo), fetched by shuffles from the lanes that hold its scores. The accumulator of lane
//     (gq, tq) is head tq (hi, lo) at dims HD/8 gq + 0 .. HD/8 - 1.
// Needs sm_80 (mma.sync m16n8k16, cvt.rn.f16x2.f32); the e4m3 conversion is the hardware one from sm_89.
#pragma once
#include "attention_split.cuh"

// 2^e for -126 <= e <= 127
__device__ __forceinline__ float fw_pow2(int e) { return __int_as_float((e + 127) << 23); }
// floor(log2 x) of a positive normal x (-127 for a subnormal)
__device__ __forceinline__ int fw_ilog2(float x) { return (int)((__float_as_uint(x) >> 23) & 0xffu) - 127; }
// fp16 caches (KVT CALM_KV_F16, kernels attention_split_g*_f16w_hd*): the same tiles with 2-byte elements. FW_ES: bytes
// per element; a lane holds FW_KW words of each of its two K rows and FW_VW words of each of its four V rows. K: the
// lane's 16-byte loads of a row are bytes [64 h + 16 tq, +16), 16 e4m3 or 8 f16 dims each; a k16 chunk takes one word
// (4 e4m3, converted) or two (2 f16 each, as they are) of each row. V: its slice of a row is dims [HD/8 gq, +HD/8),
// tile i takes dims 2i, 2i+1 of it (fp8: bytes 2i, 2i+1, converted; f16: word i's halves, paired across rows by a
// byte permute). There are no row scales: the kernel uses 1 where fp8 has kScale / vScale, so p is scaled by R = 2^14.
#define FW_ES(KVT) ((KVT) == CALM_KV_FP8 ? 1 : 2)
#define FW_KW(HD, KVT) ((HD) * FW_ES(KVT) / 16)
#define FW_VW(HD, KVT) ((HD) * FW_ES(KVT) / 32)
// first dim of k16 chunk c of lane tq's slice of a K row (dims kdim .. kdim + 3: the first two in B's register 0)
template <int KVT>
__device__ __forceinline__ int fw_kdim(int c, int tq) {
    return KVT == CALM_KV_FP8 ? 64 * (c >> 2) + 16 * tq + 4 * (c & 3) : 32 * (c >> 1) + 8 * tq + 4 * (c & 1);
}
// the 16 bytes at p as 4 words, or zeros
// (K rows: 8 rows x 64 bytes per load instruction, so with the L2 prefetch-size hint, common.cuh ldg_u4_l2; V rows are
// read 4 rows x 128 bytes per instruction, whole lines)
template <bool L2 = false>
__device__ __forceinline__ void fw_ld16(u32* w, const unsigned char* p, bool ok) {
    calm_u4 v;
    if (ok) v = L2 ? ldg_u4_l2(p) : ldg_u4(p);
    else v.x = v.y = v.z = v.w = 0u;
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
}
__device__ __forceinline__ void fw_ld8(u32* w, const unsigned char* p, bool ok) {
    u32 x = 0u, y = 0u;
    if (ok) asm volatile("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(x), "=r"(y) : "l"(p));
    w[0] = x; w[1] = y;
}

// One tile's loads for lane (gq, tq): K rows p0 + 2gq (kA) and p0 + 2gq + 1 (kB), bytes [64h + 16tq, +16) of each;
// V rows p0 + 4tq + 0..3, bytes [HD/8 gq, +HD/8); the two K/V scales of the K rows. Rows from c1 on, and row skip
// (-1: none; fw_load_pos reads it later), read as zero.
template <int HD, int KVT = CALM_KV_FP8>
__device__ __forceinline__ void fw_load_tile(int p0, int c1, int gq, int tq, const unsigned char* kb, const unsigned char* vb,
                                             const float* ksb, const float* vsb, u32 (&kA)[FW_KW(HD, KVT)], u32 (&kB)[FW_KW(HD, KVT)],
                                             u32 (&vw)[4][FW_VW(HD, KVT)], float& ksA, float& ksB, float& vsA, float& vsB, int skip = -1) {
    const int RB = HD * FW_ES(KVT);   // row bytes
    const int jA = p0 + 2 * gq, jB = jA + 1;
    const bool okA = jA < c1 && jA != skip, okB = jB < c1 && jB != skip;
#pragma unroll
    for (int h = 0; h < RB / 64; h++) {
        fw_ld16<true>(kA + 4 * h, kb + (long long)jA * RB + 64 * h, okA);
        fw_ld16<true>(kB + 4 * h, kb + (long long)jB * RB + 64 * h, okB);
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
        const int j = p0 + 4 * tq + u;
        const unsigned char* pv = vb + (long long)j * RB;
        if (RB == 64) fw_ld8(vw[u], pv, j < c1 && j != skip);
        else {
#pragma unroll
            for (int h = 0; h < RB / 128; h++) fw_ld16(vw[u] + 4 * h, pv + 16 * h, j < c1 && j != skip);
        }
    }
    if (KVT == CALM_KV_FP8) {
        ksA = okA ? ksb[jA] : 0.f; ksB = okB ? ksb[jB] : 0.f;
        vsA = okA ? vsb[jA] : 0.f; vsB = okB ? vsb[jB] : 0.f;
    } else ksA = ksB = vsA = vsB = 1.f;   // rows past c1 get a -inf score (p = 0) either way
}
// a lane's slice of K row p (bytes [64h, +16) for h < row bytes / 64 from kp = its slice's start) through L2
template <int HD, int KVT>
__device__ __forceinline__ void fw_ld_k_cg(u32 (&k)[FW_KW(HD, KVT)], const unsigned char* kp) {
#pragma unroll
    for (int h = 0; h < HD * FW_ES(KVT) / 64; h++) {
        calm_u4 v;
        fd_load_cg(v, (const char*)(kp + 64 * h));
        k[4 * h] = v.x; k[4 * h + 1] = v.y; k[4 * h + 2] = v.z; k[4 * h + 3] = v.w;
    }
}
// ... and row pos of that tile, after pdl_wait, through L2 (fd_load_cg: a line it shares with the rows read before
// may sit in L1). Static register indices only (a runtime-chosen array would go to local memory).
template <int HD, int KVT = CALM_KV_FP8>
__device__ __forceinline__ void fw_load_pos(int p0, int c1, int gq, int tq, const unsigned char* kb, const unsigned char* vb,
                                            const float* ksb, const float* vsb, u32 (&kA)[FW_KW(HD, KVT)], u32 (&kB)[FW_KW(HD, KVT)],
                                            u32 (&vw)[4][FW_VW(HD, KVT)], float& ksA, float& ksB, float& vsA, float& vsB, int pos) {
    if (pos >= c1) return;
    const int RB = HD * FW_ES(KVT);
    const bool f8 = KVT == CALM_KV_FP8;
    const int jA = p0 + 2 * gq, jB = jA + 1;
    if (jA == pos) { fw_ld_k_cg<HD, KVT>(kA, kb + (long long)pos * RB); ksA = f8 ? ld_cg_f32(ksb + pos) : 1.f; vsA = f8 ? ld_cg_f32(vsb + pos) : 1.f; }
    if (jB == pos) { fw_ld_k_cg<HD, KVT>(kB, kb + (long long)pos * RB); ksB = f8 ? ld_cg_f32(ksb + pos) : 1.f; vsB = f8 ? ld_cg_f32(vsb + pos) : 1.f; }
#pragma unroll
    for (int u = 0; u < 4; u++) {
        if (p0 + 4 * tq + u == pos) {
            const char* pv = (const char*)(vb + (long long)pos * RB);
            if (RB == 64) { calm_u2 v; fd_load_cg(v, pv); vw[u][0] = v.x; vw[u][1] = v.y; }
            else {
#pragma unroll
                for (int h = 0; h < RB / 128; h++) {
                    calm_u4 v; fd_load_cg(v, pv + 16 * h);
                    vw[u][4 * h] = v.x; vw[u][4 * h + 1] = v.y; vw[u][4 * h + 2] = v.z; vw[u][4 * h + 3] = v.w;
                }
            }
        }
    }
}

// L2 prefetch of the tile at positions [p, p + 16) (rows from c1 on skipped): its K and V bytes and row scales, the
// warp's lanes taking 128-byte lines in turn. A hint that keeps more of the cache in flight than the registers can:
// the tile's own loads come pf tiles later and find it in L2 (kh/vh: this kv head's rows; CudaKernels.AttentionPrefetch).
template <int HD, int KVT>
__device__ __forceinline__ void fw_prefetch_tile(int p, int c1, const unsigned char* kh, const unsigned char* vh,
                                                 const float* ksb, const float* vsb, int lane) {
    if (p >= c1) return;
    const int RB = HD * FW_ES(KVT);
    const long long bytes = (long long)min(16, c1 - p) * RB;
    prefetch_l2_warp(kh + (long long)p * RB, bytes, lane);
    prefetch_l2_warp(vh + (long long)p * RB, bytes, lane);
    if (KVT == CALM_KV_FP8) prefetch_l2_warp(lane < 16 ? (const void*)(ksb + p) : (const void*)(vsb + p), 4, lane & 15);
}

// kCache/vCache: this layer's [K, maxCtx, HD] e4m3 bytes; kScale/vScale: its row scales [K, maxCtx] f32 (KVT
// CALM_KV_F16: fp16 rows, no scales).
// MAXG 4 (G <= 4: one n8 block) or 8 (two); HD 64, 128 or 256.
// EARLY: as attention_split_impl's (the first tile's rows before pos are requested before pdl_wait).
template <int MAXG, int HD, bool EARLY = false, int KVT = CALM_KV_FP8>
__device__ __forceinline__ void attention_split_fp8w_impl(const float* q, const unsigned char* kCache, const unsigned char* vCache,
                                                          float* out, float* ws, int H, int K, int maxCtx, int window, float scale,
                                                          int S, const StepParams* sp, int kh, int split, int z, int Z,
                                                          const float* kScale, const float* vScale, int pf = 0,
                                                          const char* nextW = 0, long long nextBytes = 0) {
    static_assert(MAXG == 4 || MAXG == 8, "4 query heads per n8 block");
    static_assert(HD == 64 || HD == 128 || HD == 256, "head_dim 64, 128 or 256");
    const int NB = MAXG / 4;   // n8 blocks: 4 query heads x (hi, lo)
    const int KC = HD / 16;    // k16 chunks of the scores
    const int KW = FW_KW(HD, KVT);   // words of a K row per lane (fp8: one per chunk, f16: two)
    const int NT = HD / 16;    // m16 tiles of the output dims
    const int VW = FW_VW(HD, KVT);   // words of a V row per lane (HD/8 dims)
    const int RB = HD * FW_ES(KVT);  // bytes per cache row
    __shared__ float s_m[FD_WARPS][MAXG];
    __shared__ float s_l[MAXG];
    __shared__ float s_acc[MAXG][FD_ACC_STRIDE];
    __shared__ float s_wbuf[MAXG][FD_MAX_SPLITS];
    __shared__ float s_lw[MAXG][FD_MAX_SPLITS];
    __shared__ calm_f4 s_red[FD_THREADS];
    __shared__ int s_last;
    const int G = H / K;
    const int g0 = z * MAXG;
    const int ng = min(MAXG, G - g0);
    // as attention_split_impl (the launcher's S and workspace are shared); the position is host-written: readable
    // before pdl_wait
    const FdRange rg = fd_range(sp->pos, window, S);
    const int pos = rg.pos, start = rg.start, n = rg.n, chunk = rg.chunk, nsplit = rg.nsplit;
    if (split >= nsplit) { fd_prefetch_next(nextW, nextBytes, K, S, nsplit, kh, split, z, Z); return; }
    const int c0 = start + split * chunk;
    const int c1 = min(c0 + chunk, pos + 1);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = lane >> 2, tq = lane & 3;
    const float sl = scale * 1.4426950408889634f;   // scores in log2 units

    const long long hbase = (long long)kh * maxCtx;
    const unsigned char* kb = kCache + hbase * RB + 16 * tq;
    const unsigned char* vb = vCache + hbase * RB + (RB / 8) * gq;
    const float* ksb = kScale + hbase;
    const float* vsb = vScale + hbase;
    // the warp's first tile is requested before q is read (the two memory latencies overlap)
    int p0 = c0 + warp * 16;
    u32 kA[KW], kB[KW], vw[4][VW];
    float ksA, ksB, vsA, vsB;
    fw_load_tile<HD, KVT>(p0, c1, gq, tq, kb, vb, ksb, vsb, kA, kB, vw, ksA, ksB, vsA, vsB, EARLY ? pos : -1);
    if (EARLY) {
        pdl_wait();
        pdl_trigger();
        fw_load_pos<HD, KVT>(p0, c1, gq, tq, kb, vb, ksb, vsb, kA, kB, vw, ksA, ksB, vsA, vsB, pos);
    }
    FD_STAMP(1);
    // tiles 1 .. pf-1 of the warp into L2 now, tile i + pf at the start of tile i's step
    const unsigned char* kh0 = kCache + hbase * RB;
    const unsigned char* vh0 = vCache + hbase * RB;
    for (int t = 1; t < pf; t++) fw_prefetch_tile<HD, KVT>(p0 + t * FD_WARPS * 16, c1, kh0, vh0, ksb, vsb, lane);

    // B fragments of the scores: column gq is head 4b + gq/2, its hi (gq even) or lo (odd) part of q * sl * 2^e;
    // rows 2tq, 2tq+1 / 2tq+8, 2tq+9 of chunk c are the dims kdim(c, tq) + 0, 1 / 2, 3
    // f16 rows take twice the registers per tile, so there the fragments live in shared memory: with one n8 block a
    // copy per warp, each thread reading back its own (no barrier; 2 KB per warp at head_dim 128), with two (static
    // shared memory would pass 48 KB) one copy that warp 0 writes before a barrier
    const bool QSM = KVT != CALM_KV_FP8, QPW = QSM && NB == 1;
    __shared__ __align__(8) u32 s_qf[QPW ? FD_WARPS : 1][QSM ? NB * KC : 1][32][2];
    const int qw = QPW ? warp : 0;
    u32 qf[QSM ? 1 : NB][QSM ? 1 : KC][2];
    // q of the block's ng heads (contiguous, ng * HD floats) comes from L2 once per block, one 16-byte load per
    // thread (.cg as attention_split_impl), into shared memory, and the lanes take their pieces from there: each lane
    // reading its own KC pieces from L2 made 16 times the requests, and q arrived later (at 4095 positions 5.3 -> 4.8
    // us after the wait in the f16 kernel, 3.2 -> 2.3 in the fp8 one; bench/RESULTS.md, twelfth session)
    __shared__ __align__(16) float s_q[MAXG][HD];
    {
        const float* qb = q + (long long)(kh * G + g0) * HD;
        for (int i = threadIdx.x; i < ng * (HD / 4); i += FD_THREADS) *(calm_f4*)(&s_q[0][0] + 4 * i) = ld_cg_f4(qb + 4 * i);
        __syncthreads();
    }
    float qinv[NB];   // 2^-e of head 4b + tq (the head of this lane's scores)
#pragma unroll
    for (int b = 0; b < NB; b++) {
        const int hb = 4 * b + (gq >> 1);
        const bool use = hb < ng;
        const float* qh = &s_q[use ? hb : 0][0];   // row 0 is always written (a row past ng is not)
        const float f = use ? sl : 0.f;
        float qv[KC][4];
        float amax = 0.f;
#pragma unroll
        for (int c = 0; c < KC; c++) {
            calm_f4 v = *(const calm_f4*)(qh + fw_kdim<KVT>(c, tq));
            qv[c][0] = v.x * f; qv[c][1] = v.y * f; qv[c][2] = v.z * f; qv[c][3] = v.w * f;
            amax = fmaxf(amax, fmaxf(fmaxf(fabsf(qv[c][0]), fabsf(qv[c][1])), fmaxf(fabsf(qv[c][2]), fabsf(qv[c][3]))));
        }
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));   // the 4 lanes of a column hold the whole head
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
        const int e = amax > 0.f ? min(max(fw_ilog2(amax), -100), 127) : 0;
        const float up = fw_pow2(14 - e);
#pragma unroll
        for (int c = 0; c < KC; c++) {
            u32 h0, l0, h1, l1;
            split_f16x2(qv[c][0] * up, qv[c][1] * up, h0, l0);
            split_f16x2(qv[c][2] * up, qv[c][3] * up, h1, l1);
            const u32 f0 = (gq & 1) ? l0 : h0, f1 = (gq & 1) ? l1 : h1;
            if (QSM) { if (QPW || warp == 0) { s_qf[qw][b * KC + c][lane][0] = f0; s_qf[qw][b * KC + c][lane][1] = f1; } }
            else { qf[b][c][0] = f0; qf[b][c][1] = f1; }
        }
        qinv[b] = __shfl_sync(0xffffffffu, fw_pow2(e - 14), 8 * tq);   // lane 8 tq: column 2 tq = head 4b + tq
    }
    if (QSM && !QPW) __syncthreads();   // s_qf written
    FD_STAMP_V(6, qinv[0]);

    float m[NB], mref[NB], l[NB], acc[NB][NT][4];
#pragma unroll
    for (int b = 0; b < NB; b++) {
        m[b] = -CALM_INF; mref[b] = 0.f; l[b] = 0.f;
#pragma unroll
        for (int i = 0; i < NT; i++) acc[b][i][0] = acc[b][i][1] = acc[b][i][2] = acc[b][i][3] = 0.f;
    }
    // p * vScale is scaled by R = 2^r before its split; a vScale above vlim needs a smaller R (f16: no scales, R = 2^14)
    const bool F8 = KVT == CALM_KV_FP8;
    int r = F8 ? 0 : 14;
    float R = F8 ? 1.f : 16384.f, vlim = F8 ? 0.f : CALM_INF;
    const int src0 = 8 * tq + (gq >> 1), src1 = src0 + 4;   // the score lanes of P's rows 2tq.. / 2tq+8.. in column gq

    // tiles p0 = c0 + 16 (warp + 8 i); each tile's loads are issued when the previous one is done (the first's above)
    for (; p0 < c1;) {
        if (pf > 0) fw_prefetch_tile<HD, KVT>(p0 + pf * FD_WARPS * 16, c1, kh0, vh0, ksb, vsb, lane);
        const int jA = p0 + 2 * gq, jB = jA + 1;
        const bool okA = jA < c1, okB = jB < c1;

        // scores of head 4b + tq at positions jA (sc 0, 1: hi, lo) and jB (sc 2, 3)
        float sc[NB][4];
#pragma unroll
        for (int b = 0; b < NB; b++) sc[b][0] = sc[b][1] = sc[b][2] = sc[b][3] = 0.f;
#pragma unroll
        for (int c = 0; c < KC; c++) {
            u32 a[4];
            if (KVT == CALM_KV_FP8) {
                e4m3x4_to_f16x2x2(kA[c], a[0], a[2]);   // row jA: k 2tq, 2tq+1 | 2tq+8, 2tq+9
                e4m3x4_to_f16x2x2(kB[c], a[1], a[3]);   // row jB
            } else { a[0] = kA[2 * c]; a[2] = kA[2 * c + 1]; a[1] = kB[2 * c]; a[3] = kB[2 * c + 1]; }
#pragma unroll
            for (int b = 0; b < NB; b++) {
                if (QSM) {
                    const uint2 f = *(const uint2*)&s_qf[qw][b * KC + c][lane][0];
                    mma_16816(sc[b], a, f.x, f.y);
                } else mma_16816(sc[b], a, qf[b][c][0], qf[b][c][1]);
            }
        }
        float s[NB][2], mt[NB];
        bool need = false;
#pragma unroll
        for (int b = 0; b < NB; b++) {
            s[b][0] = okA ? (sc[b][0] + sc[b][1]) * (ksA * qinv[b]) : -CALM_INF;
            s[b][1] = okB ? (sc[b][2] + sc[b][3]) * (ksB * qinv[b]) : -CALM_INF;
            float mx = fmaxf(s[b][0], s[b][1]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));   // over the 16 positions (lanes of the same tq)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            mt[b] = fmaxf(m[b], mx);
            need |= mt[b] > m[b];
        }
        const float vmx = fmaxf(vsA, vsB);
        need |= vmx > vlim;
        if (__any_sync(0xffffffffu, need)) {   // a new max for some head, or a larger V scale: rescale (warp-uniform)
            float vm = vmx;
            vm = fmaxf(vm, __shfl_xor_sync(0xffffffffu, vm, 4));
            vm = fmaxf(vm, __shfl_xor_sync(0xffffffffu, vm, 8));
            vm = fmaxf(vm, __shfl_xor_sync(0xffffffffu, vm, 16));
            float fr = 1.f;
            if (vm > vlim) {
                const int e = min(max(fw_ilog2(vm), -100), 127);
                const int rn = 14 - e;
                fr = fw_pow2(max(rn - r, -126));
                r = rn; R = fw_pow2(rn);
                vlim = e >= 127 ? CALM_INF : fw_pow2(e + 1);
            }
#pragma unroll
            for (int b = 0; b < NB; b++) {
                const float mr = mt[b] == -CALM_INF ? 0.f : mt[b];
                float corr = exp2f(m[b] - mr);
                l[b] *= corr;
                corr *= fr;
#pragma unroll
                for (int i = 0; i < NT; i++) { acc[b][i][0] *= corr; acc[b][i][1] *= corr; acc[b][i][2] *= corr; acc[b][i][3] *= corr; }
                m[b] = mt[b]; mref[b] = mr;
            }
        }
        // P (times vScale * R) of this lane's two positions, split hi/lo, then P's B fragments by shuffles
        const float vA = vsA * R, vB = vsB * R;
        u32 pb[NB][2];
#pragma unroll
        for (int b = 0; b < NB; b++) {
            const float pA = exp2f(s[b][0] - mref[b]), pB = exp2f(s[b][1] - mref[b]);
            l[b] += pA + pB;
            u32 ph, pl;
            split_f16x2(pA * vA, pB * vB, ph, pl);
            const u32 h0 = __shfl_sync(0xffffffffu, ph, src0), l0 = __shfl_sync(0xffffffffu, pl, src0);
            const u32 h1 = __shfl_sync(0xffffffffu, ph, src1), l1 = __shfl_sync(0xffffffffu, pl, src1);
            pb[b][0] = (gq & 1) ? l0 : h0;
            pb[b][1] = (gq & 1) ? l1 : h1;
        }
        // O^T += V^T . P: tile i takes bytes 2i, 2i+1 of each V row slice (dims HD/8 gq + 2i, + 2i + 1)
#pragma unroll
        for (int i = 0; i < NT; i++) {
            u32 a[4];
            if (KVT == CALM_KV_FP8) {
                const u32 sel = (i & 1) ? 0x7362u : 0x5140u;
                e4m3x4_to_f16x2x2(__byte_perm(vw[0][i >> 1], vw[1][i >> 1], sel), a[0], a[1]);   // positions 4tq, 4tq+1
                e4m3x4_to_f16x2x2(__byte_perm(vw[2][i >> 1], vw[3][i >> 1], sel), a[2], a[3]);   // 4tq+2, 4tq+3
            } else {   // word i of each row: dims 2i (low half), 2i + 1 (high half)
                a[0] = __byte_perm(vw[0][i], vw[1][i], 0x5410u); a[1] = __byte_perm(vw[0][i], vw[1][i], 0x7632u);
                a[2] = __byte_perm(vw[2][i], vw[3][i], 0x5410u); a[3] = __byte_perm(vw[2][i], vw[3][i], 0x7632u);
            }
#pragma unroll
            for (int b = 0; b < NB; b++) mma_16816(acc[b][i], a, pb[b][0], pb[b][1]);
        }
        p0 += FD_WARPS * 16;
        if (p0 < c1) fw_load_tile<HD, KVT>(p0, c1, gq, tq, kb, vb, ksb, vsb, kA, kB, vw, ksA, ksB, vsA, vsB);
    }

    FD_STAMP_V(2, l[0] + acc[0][0][0]);
    // the warp's sum per head (every lane summed its own positions; m is the same in the lanes of a head)
#pragma unroll
    for (int b = 0; b < NB; b++) {
        l[b] += __shfl_xor_sync(0xffffffffu, l[b], 4);
        l[b] += __shfl_xor_sync(0xffffffffu, l[b], 8);
        l[b] += __shfl_xor_sync(0xffffffffu, l[b], 16);
    }
    // merge the warps: block max per head, then rescaled sums, warps in a fixed order (deterministic)
    if (gq == 0) {
#pragma unroll
        for (int b = 0; b < NB; b++) s_m[warp][4 * b + tq] = m[b];
    }
    for (int i = threadIdx.x; i < MAXG * FD_ACC_STRIDE; i += FD_THREADS) (&s_acc[0][0])[i] = 0.f;
    if (threadIdx.x < MAXG) s_l[threadIdx.x] = 0.f;
    __syncthreads();
    FD_STAMP(7);
    float f[NB];
#pragma unroll
    for (int b = 0; b < NB; b++) {
        float M = -CALM_INF;
        for (int w = 0; w < FD_WARPS; w++) M = fmaxf(M, s_m[w][4 * b + tq]);
        f[b] = (m[b] == -CALM_INF) ? 0.f : exp2f(m[b] - M);
    }
    const float rinv = 1.f / R;   // a power of two: exact
    for (int w = 0; w < FD_WARPS; w++) {
        if (warp == w) {
#pragma unroll
            for (int b = 0; b < NB; b++) {
                const int h = 4 * b + tq;
                if (h < ng) {
                    const float fs = f[b] * rinv;
                    float* o = &s_acc[h][0];
                    float cur[NT][2];   // every read before any write (as in attention_split_impl's merge)
#pragma unroll
                    for (int i = 0; i < NT; i++) {
                        const int d = fd_acc_idx((HD / 8) * gq + 2 * i);   // d and d + 1 share a 32-block (d even)
                        cur[i][0] = o[d]; cur[i][1] = o[d + 1];
                    }
#pragma unroll
                    for (int i = 0; i < NT; i++) {
                        const int d = fd_acc_idx((HD / 8) * gq + 2 * i);
                        o[d] = fmaf(acc[b][i][0] + acc[b][i][1], fs, cur[i][0]);
                        o[d + 1] = fmaf(acc[b][i][2] + acc[b][i][3], fs, cur[i][1]);
                    }
                    if (gq == 0) s_l[h] += l[b] * f[b];
                }
            }
        }
        __syncthreads();
    }
    FD_STAMP(3);
    fd_finish<MAXG>(s_m, s_l, s_acc, s_wbuf, s_lw, s_red, s_last, out, ws, H, HD, S, kh, split, z, Z, kh * G + g0, ng, nsplit);
}

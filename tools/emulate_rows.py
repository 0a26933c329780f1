#!/usr/bin/env python3
"""Host emulation of the prefill row kernels, from the kernel sources themselves: rmsnorm_rows_v4 against rmsnorm_rows
(kernels/gemm.cu) and the warp-per-head qkv_rope_rows_hd* / qkv_rope_rows_fp8_hd* against qkv_rope_rows(_fp8)
(kernels/prefill_attention.cu), at the block sizes and grids CudaPrefillKernels launches them with.

Builds common.cuh, fp8.cuh and the row-kernel parts of gemm.cu / prefill_attention.cu as host C++ (g++ -std=c++20,
no FMA contraction): every thread of a block is an OS thread, warp shuffles go through per-warp barriers,
__syncthreads through a block barrier, f16 conversions use _Float16, the fp8 conversions take fp8.cuh's bit
fallbacks. Without the q/k norm both qkv kernels do the same f32 operations per element, so q, the caches and the fp8
scales must agree bit for bit; with it (and in rmsnorm) the sum of squares is added in another order, so they are
compared against a float64 reference instead (the GPU tests' bounds) and the differing output halves / bytes counted.
It checks the index math (lanes, partner lanes, vector widths, stores) without a GPU, not the GPU's rounding.
Usage: python3 tools/emulate_rows.py   (exit code: the number of failed cases)
"""
import os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import emulate_host  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = r'''
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <thread>
#include <barrier>
#include <vector>
#include <random>
#include <memory>
#include <functional>
#include <algorithm>
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)
#define CALM_FP8_CVT 0
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned i; memcpy(&i, &f, 4); return i; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
struct EmuWarp { std::unique_ptr<std::barrier<>> bar; uint64_t x[32]; };
static EmuWarp g_warp[32];
static std::unique_ptr<std::barrier<>> g_block;
static inline EmuWarp& emu_w() { return g_warp[threadIdx.x >> 5]; }
''' + emulate_host.SHFL + r'''static inline void __syncthreads() { g_block->arrive_and_wait(); }
static inline float emu_h2f(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short emu_f2h(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }
'''

REPL = {
    'f16_to_f32': 'static inline float f16_to_f32(u16 h) { return emu_h2f(h); }',
    'f32_to_f16': 'static inline u16 f32_to_f16(float f) { return emu_f2h(f); }',
    'ldg_u4': 'static inline calm_u4 ldg_u4(const void* p) { calm_u4 r; memcpy(&r, p, 16); return r; }',
    'ldg_u4_stream': 'static inline calm_u4 ldg_u4_stream(const void* p) { calm_u4 r; memcpy(&r, p, 16); return r; }',
    'prefetch_l2': 'static inline void prefetch_l2(const void*) {}',
    'e4m3x2_to_f16x2': 'static inline u32 e4m3x2_to_f16x2(u32) { return 0; }',   # not used by the row kernels
    'qr_store': 'template <int N> static inline void qr_store(float* p, const float (&v)[N]) { for (int i = 0; i < N; i++) p[i] = v[i]; }',
}
def hostify(src):
    return emulate_host.hostify(src, REPL)

def section(path, begin, end):
    s = open(os.path.join(ROOT, 'kernels', path)).read()
    i = s.index(begin)
    j = s.index(end, i) if end else len(s)
    return s[i:j]

MAIN = r'''
// grid (gx, gy) of `threads` threads, blocks in order
static void launch(int gx, int gy, int threads, const std::function<void()>& body) {
    blockDim = {(unsigned)threads, 1, 1}; gridDim = {(unsigned)gx, (unsigned)gy, 1};
    for (unsigned y = 0; y < (unsigned)gy; y++)
        for (unsigned x = 0; x < (unsigned)gx; x++) {
            g_block.reset(new std::barrier<>(threads));
            for (int w = 0; w < threads / 32; w++) g_warp[w].bar.reset(new std::barrier<>(32));
            std::vector<std::thread> th;
            for (int t = 0; t < threads; t++)
                th.emplace_back([=, &body] { threadIdx.x = t; blockIdx.x = x; blockIdx.y = y; body(); });
            for (auto& t : th) t.join();
        }
}
static int g_fail = 0;
static double rel_l2(const std::vector<float>& got, const std::vector<double>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); i++) {
        if (!std::isfinite(got[i])) return INFINITY;
        double d = got[i] - want[i]; num += d * d; den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}
static float bf16f(u16 b) { return __uint_as_float((u32)b << 16); }

// CudaPrefillKernels.RmsNormRowsV4Threads (aligned buffers)
static int v4_threads(int n) {
    if (n <= 0 || n % 4 != 0 || n / 4 > RN_V4 * 1024) return 0;
    return 32 * ((n / 4 + 32 * RN_V4 - 1) / (32 * RN_V4));
}

static void rms_case(int T, int n, int addOne, int odt, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> U(-1.0, 1.0);
    std::vector<float> x((size_t)T * n), w(n);
    for (auto& v : x) v = (float)(U(rng) * 3);
    for (auto& v : w) v = (float)U(rng);
    w[0] = -0.f;
    std::vector<u16> o1((size_t)T * n, 0xdead), o2((size_t)T * n, 0xbeef);
    launch(T, 1, 256, [&] { rmsnorm_rows(x.data(), w.data(), o1.data(), n, 1e-5f, addOne, odt); });
    int th = v4_threads(n);
    if (th == 0) { std::printf("skip  rmsnorm n %d: not the v4 kernel's shape\n", n); return; }
    launch(T, 1, th, [&] { rmsnorm_rows_v4(x.data(), w.data(), o2.data(), n, 1e-5f, addOne, odt); });
    std::vector<double> want((size_t)T * n);
    std::vector<float> got((size_t)T * n);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)x[(size_t)t * n + i] * x[(size_t)t * n + i];
        double r = 1 / std::sqrt(ss / n + 1e-5);
        for (int i = 0; i < n; i++) want[(size_t)t * n + i] = x[(size_t)t * n + i] * r * (w[i] + addOne);
    }
    int diff = 0;
    for (size_t i = 0; i < o1.size(); i++) {
        diff += o1[i] != o2[i];
        got[i] = odt == CALM_BF16 ? bf16f(o2[i]) : emu_h2f(o2[i]);
    }
    double e = rel_l2(got, want), bound = odt == CALM_BF16 ? 3e-3 : 5e-4;
    bool ok = e <= bound && diff <= (int)(o1.size() / 100) + 1;
    if (!ok) g_fail++;
    std::printf("%-5s rmsnorm T %3d n %5d addOne %d %s threads %4d: relL2 %.2e vs f64, %d of %zu halves differ from rmsnorm_rows\n",
                ok ? "ok" : "FAIL", T, n, addOne, odt == CALM_BF16 ? "bf16" : "f16 ", th, e, diff, o1.size());
}

template <int HD>
static void qkv_case(int H, int K, int rot, int qkNorm, int addOne, int T, int start, bool fp8, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> U(-1.0, 1.0);
    const int nh = H + 2 * K, ld = nh * HD, maxCtx = start + T + 2, half = rot / 2;
    if (half % (HD / 32) != 0) { std::printf("skip  hd %d rot %d: not the warp kernel's shape\n", HD, rot); return; }
    std::vector<float> qkv((size_t)T * ld), qn(HD), kn(HD), cs((size_t)maxCtx * std::max(half, 1)), sn(cs.size());
    for (auto& v : qkv) v = (float)(U(rng) * 2);
    for (int d = 0; d < HD; d++) qkv[(size_t)(H + K) * HD + d] = 0.f;   // row 0, v head 0: all zero (fp8 scale 0)
    for (auto& v : qn) v = (float)U(rng);
    for (auto& v : kn) v = (float)U(rng);
    for (auto& v : cs) v = (float)U(rng);
    for (auto& v : sn) v = (float)U(rng);
    std::vector<float> q1 = qkv, q2 = qkv;
    const size_t rows = (size_t)K * maxCtx, es = fp8 ? 1 : 2;
    std::vector<unsigned char> k1(rows * HD * es, 0x5a), v1(rows * HD * es, 0x5a), k2 = k1, v2 = v1;
    std::vector<float> ks1(rows, -1.f), vs1(rows, -1.f), ks2 = ks1, vs2 = vs1;
    launch(nh, T, 128, [&] {
        if (fp8) qkv_rope_rows_fp8(q1.data(), ld, qn.data(), kn.data(), qkNorm, 1e-6f, addOne, cs.data(), sn.data(), rot,
                                   k1.data(), v1.data(), maxCtx, H, K, HD, start, ks1.data(), vs1.data());
        else qkv_rope_rows(q1.data(), ld, qn.data(), kn.data(), qkNorm, 1e-6f, addOne, cs.data(), sn.data(), rot,
                           (u16*)k1.data(), (u16*)v1.data(), maxCtx, H, K, HD, start);
    });
    launch((nh + 3) / 4, T, 128, [&] {
        if (fp8) qkv_rope_rows_warp_impl<CALM_KV_FP8, HD / 32>(q2.data(), ld, qn.data(), kn.data(), qkNorm, 1e-6f, addOne, cs.data(), sn.data(), rot,
                                                               k2.data(), v2.data(), maxCtx, H, K, start, ks2.data(), vs2.data());
        else qkv_rope_rows_warp_impl<CALM_KV_F16, HD / 32>(q2.data(), ld, qn.data(), kn.data(), qkNorm, 1e-6f, addOne, cs.data(), sn.data(), rot,
                                                           k2.data(), v2.data(), maxCtx, H, K, start, nullptr, nullptr);
    });
    bool ok;
    char what[200];
    if (!qkNorm) {   // the same f32 operations per element: bit for bit
        ok = !memcmp(q1.data(), q2.data(), q1.size() * 4) && k1 == k2 && v1 == v2 && !memcmp(ks1.data(), ks2.data(), rows * 4)
             && !memcmp(vs1.data(), vs2.data(), rows * 4);
        std::snprintf(what, sizeof what, "q, caches%s bit for bit", fp8 ? ", scales" : "");
    } else {         // q against the general kernel (both f32), caches: v exactly, k bytes / halves mostly
        std::vector<double> want(q1.begin(), q1.end());
        double e = rel_l2(q2, want);
        int kd = 0;
        for (size_t i = 0; i < k1.size(); i++) kd += k1[i] != k2[i];
        double sd = 0;
        for (size_t i = 0; i < rows; i++) sd = std::max(sd, (double)std::fabs(ks1[i] - ks2[i]) / std::max(1e-30, (double)std::fabs(ks1[i])));
        ok = e <= 1e-6 && v1 == v2 && !memcmp(vs1.data(), vs2.data(), rows * 4) && kd <= (int)(K * T * HD / 100) + 1 && sd <= 1e-6;
        std::snprintf(what, sizeof what, "q relL2 %.1e, v bit for bit, %d k bytes differ, k scales within %.1e", e, kd, sd);
    }
    // the untouched cache rows stay untouched (0x5a), the written ones are not all 0x5a
    for (int h = 0; h < K; h++)
        for (int p = 0; p < maxCtx; p++) {
            bool written = p >= start && p < start + T;
            size_t o = ((size_t)h * maxCtx + p) * HD * es;
            bool clean = std::all_of(k2.begin() + o, k2.begin() + o + HD * es, [](unsigned char c) { return c == 0x5a; });
            if (written == clean) ok = false;
        }
    if (!ok) g_fail++;
    std::printf("%-5s qkv %-4s HD %3d H %2d K %d rot %3d qkNorm %d addOne %d T %2d start %2d: %s\n", ok ? "ok" : "FAIL", fp8 ? "fp8" : "f16",
                HD, H, K, rot, qkNorm, addOne, T, start, what);
}

int main() {
    rms_case(3, 4096, 0, CALM_F16, 1);
    rms_case(2, 4096, 1, CALM_BF16, 2);
    rms_case(5, 64, 0, CALM_BF16, 3);
    rms_case(4, 1000, 1, CALM_F16, 4);       // 250 float4s: 64 threads, the last ones partly empty
    rms_case(3, 4100, 0, CALM_F16, 5);       // 1025 float4s: 288 threads
    rms_case(2, 16384, 0, CALM_BF16, 6);     // 1024 threads
    rms_case(7, 8, 0, CALM_F16, 7);
    rms_case(2, 5120, 1, CALM_F16, 8);
    for (int fp8 = 0; fp8 < 2; fp8++) {
        qkv_case<128>(8, 2, 128, 0, 0, 3, 5, fp8, 11);     // Llama-3 head dim, full rotary
        qkv_case<128>(4, 4, 64, 1, 0, 4, 0, fp8, 12);      // partial rotary, qk-norm
        qkv_case<128>(4, 4, 96, 1, 1, 2, 7, fp8, 13);      // partner 12 lanes away, gemma (1 + w)
        qkv_case<128>(5, 1, 40, 0, 0, 2, 1, fp8, 14);      // 5 lanes per half; 7 heads: the last block's warps partly idle
        qkv_case<128>(4, 2, 0, 1, 0, 2, 3, fp8, 15);       // no rotary
        qkv_case<64>(8, 2, 64, 0, 0, 3, 3, fp8, 16);
        qkv_case<64>(8, 2, 32, 1, 0, 2, 0, fp8, 17);
        qkv_case<32>(4, 2, 32, 1, 0, 3, 2, fp8, 18);
        qkv_case<32>(4, 2, 16, 0, 0, 3, 2, fp8, 19);
        qkv_case<96>(6, 3, 96, 0, 0, 2, 4, fp8, 20);       // 3 per lane, scalar loads
        qkv_case<96>(6, 3, 48, 1, 0, 2, 4, fp8, 21);
        qkv_case<256>(4, 2, 256, 1, 0, 2, 9, fp8, 22);
        qkv_case<256>(4, 2, 128, 0, 1, 2, 9, fp8, 23);
        qkv_case<256>(4, 1, 64, 0, 0, 2, 0, fp8, 24);
    }
    return g_fail;
}
'''

def main():
    gemm = section('gemm_common.cuh', 'struct __align__(8) gemm_f2', '// act(g) * u rounded') + section('gemm.cu', '// ---- row-wise helpers', None)
    pa = section('qkv_rope.cuh', '#define QKV_MAX_HD', None) + section('prefill_attention.cu', '// qkv [T, H*Hd', '// ---- causal prefill attention')
    src = PRELUDE + '\n'.join(hostify(open(os.path.join(ROOT, 'kernels', f)).read()) for f in ['common.cuh', 'fp8.cuh']) \
        + hostify(gemm) + hostify(pa) + MAIN
    d = tempfile.mkdtemp(prefix='calm-rows-')
    cpp, exe = os.path.join(d, 'emu.cpp'), os.path.join(d, 'emu')
    open(cpp, 'w').write(src)
    subprocess.run(['g++', '-std=c++20', '-O2', '-pthread', '-w', '-o', exe, cpp], check=True)
    r = subprocess.run([exe])
    sys.exit(r.returncode)

if __name__ == '__main__':
    main()

// att_trace.cu: a standalone probe (nvcc, on the GPU machine) that asks where the split decode attention's time goes.
// It runs the engine's own kernels (kernels/matvec.cu, kernels/attention.cu, included as they are) as the bf16 decode
// step chains them around attention: qkv + RoPE (paired rows), split attention, o projection (folded-norm producer),
// 32 layers over 4 layers' distinct weights, one CUDA graph with programmatic dependent launch. The attention kernels
// are compiled with phase stamps (FD_STAMP, kernels/attention_split.cuh: %globaltimer per block at entry, after
// pdl_wait, keys read, warps merged, partial published, last block's merge written), and the step is timed with and
// without the attention kernel, for an fp16 KV cache (attention_split_g4, and attention_split_g4_f16w_hd128 on the tensor
// cores) and an fp8 one (attention_split_g4_fp8w_hd128),
// at positions 31 .. 32767.
// The launch arguments mirror CudaKernels' launchers at the time of writing (as tools/probe/engine_chain.cu).
// Build and run:  nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/att_trace tools/probe/att_trace.cu && /tmp/att_trace
#include <string>
#include <cmath>
#include "probe.cuh"

__device__ unsigned long long* g_trace;   // [layer][block][8] ns
__device__ const float* g_att0;           // layer l's attention output is g_att0 + l * 4096
__device__ __forceinline__ void fd_stamp(const float* out, int ph) {
    if (threadIdx.x != 0) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    const long long layer = (out - g_att0) / 4096;
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    g_trace[(layer * 1024 + b) * 8 + ph] = t;
}
// a stamp once v is known: v goes to memory first (a volatile store the timer read may not pass)
__device__ float g_sink;
__device__ __forceinline__ void fd_stamp_v(const float* out, int ph, float v) {
    if (threadIdx.x != 0) return;
    *(volatile float*)&g_sink = v;
    fd_stamp(out, ph);
}
#define FD_STAMP(i) fd_stamp(out, i)
#define FD_STAMP_V(i, v) fd_stamp_v(out, i, v)
#include "../../kernels/matvec.cu"
#include "../../kernels/attention.cu"
#include "probe_engine.cuh"

__global__ void fill_e4m3(unsigned char* p, long long n, u32 seed) {   // finite e4m3 bytes (bit 3 and the sign clear: no NaN)
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 2654435761u ^ seed; h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = (unsigned char)((h & 0x77u) | ((h >> 8) & 0x80u));
    }
}
__global__ void timer_res(unsigned long long* out) {
    unsigned long long prev, t, best = ~0ull;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(prev));
    for (int i = 0; i < 100000; i++) {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t != prev) { if (t - prev < best) best = t - prev; prev = t; }
    }
    *out = best;
}

static double med(std::vector<double> v) { if (v.empty()) return 0; std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

int main(int argc, char** argv) {
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    const int sms = p.multiProcessorCount;
    const int D = 4096, H = 32, K = 8, Hd = 128, QKV = (H + 2 * K) * Hd, NL = 4, L = 32, maxCtx = 32768 + 64;
    const float eps = 1e-5f;
    cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    unsigned long long* res; CK(cudaMalloc(&res, 8)); timer_res<<<1, 1>>>(res); unsigned long long hres; CK(cudaMemcpy(&hres, res, 8, cudaMemcpyDeviceToHost));
    std::vector<u16*> Wq(NL), Wo(NL);
    auto mat = [&](long long rows, long long cols, u32 seed) { u16* w; CK(cudaMalloc(&w, rows * cols * 2)); fill_u16<<<1024, 256, 0, s>>>(w, rows * cols, sqrtf(3.f / cols), seed, 1); return w; };
    for (int l = 0; l < NL; l++) { Wq[l] = mat(QKV, D, 10 * l + 1); Wo[l] = mat(D, H * Hd, 10 * l + 2); }
    float *x, *xn, *qkv, *att, *ss, *gain, *cosT, *sinT, *ws, *ksc, *vsc;
    u16 *kc, *vc; unsigned char *k8, *v8;
    const int S = std::min(256, std::max(1, (2 * sms + K - 1) / K));
    const long long wsBytes = 4LL * ((long long)H * S * (Hd + 2) + K);
    const long long cacheElems = (long long)NL * K * maxCtx * Hd;
    CK(cudaMalloc(&x, D * 4)); CK(cudaMalloc(&xn, D * 4)); CK(cudaMalloc(&qkv, QKV * 4)); CK(cudaMalloc(&att, (long long)L * H * Hd * 4));
    CK(cudaMalloc(&ss, 4096 * 4)); CK(cudaMalloc(&gain, D * 4));
    CK(cudaMalloc(&cosT, (long long)maxCtx * Hd / 2 * 4)); CK(cudaMalloc(&sinT, (long long)maxCtx * Hd / 2 * 4)); CK(cudaMalloc(&ws, wsBytes)); CK(cudaMemset(ws, 0, wsBytes));
    CK(cudaMalloc(&kc, cacheElems * 2)); CK(cudaMalloc(&vc, cacheElems * 2)); CK(cudaMalloc(&k8, cacheElems)); CK(cudaMalloc(&v8, cacheElems));
    CK(cudaMalloc(&ksc, (long long)NL * K * maxCtx * 4)); CK(cudaMalloc(&vsc, (long long)NL * K * maxCtx * 4));
    fill_u16<<<1024, 256, 0, s>>>(kc, cacheElems, 1.f, 7, 0); fill_u16<<<1024, 256, 0, s>>>(vc, cacheElems, 1.f, 8, 0);
    fill_e4m3<<<1024, 256, 0, s>>>(k8, cacheElems, 9); fill_e4m3<<<1024, 256, 0, s>>>(v8, cacheElems, 10);
    fill_f32v<<<256, 256, 0, s>>>(ksc, (long long)NL * K * maxCtx, 0.01f, 0.02f, 11); fill_f32v<<<256, 256, 0, s>>>(vsc, (long long)NL * K * maxCtx, 0.01f, 0.02f, 12);
    fill_f32v<<<16, 256, 0, s>>>(x, D, -1.f, 1.f, 1); fill_f32v<<<16, 256, 0, s>>>(xn, D, -1.f, 1.f, 2);
    fill_f32v<<<16, 256, 0, s>>>(ss, 4096, 0.5f, 1.5f, 3); fill_f32v<<<16, 256, 0, s>>>(gain, D, 0.5f, 1.5f, 4);
    fill_f32v<<<256, 256, 0, s>>>(cosT, (long long)maxCtx * Hd / 2, -1.f, 1.f, 5); fill_f32v<<<256, 256, 0, s>>>(sinT, (long long)maxCtx * Hd / 2, -1.f, 1.f, 6);
    StepParams* sp; CK(cudaMalloc(&sp, sizeof(StepParams)));
    const long long traceN = (long long)L * 1024 * 8;
    unsigned long long* trace; CK(cudaMalloc(&trace, traceN * 8));
    CK(cudaMemcpyToSymbol(g_trace, &trace, sizeof trace)); const float* att0 = att; CK(cudaMemcpyToSymbol(g_att0, &att0, sizeof att0));
    CK(cudaStreamSynchronize(s));
    printf("%s, %d SMs; globaltimer step %llu ns; bf16 qkv+RoPE -> split attention -> o (folded-norm producer), %d layers over %d, S=%d\n",
           p.name, sms, hres, L, NL, S);
    const long long layerBytes = 2LL * ((long long)QKV * D + (long long)D * H * Hd);
    std::vector<int> positions = {31, 255, 1023, 4095, 16383, 32767};
    std::vector<unsigned long long> tr(traceN);
    const char* kern[3] = {"attention_split_g4", "attention_split_g4_fp8w_hd128", "attention_split_g4_f16w_hd128"};
    for (int kv8 = 0; kv8 < 3; kv8++) {   // 0 fp16 register kernel, 1 fp8 tensor cores, 2 fp16 tensor cores
        printf("\n== %s KV cache (%s)\n", kv8 == 1 ? "fp8" : "fp16", kern[kv8]);
        printf("%6s | %9s %9s %7s | %7s %7s %7s %7s %7s %7s %7s %7s %7s | %6s\n", "pos", "step ms", "no-att ms", "att us",
               "lead", "q", "keys0", "keys", "keysMax", "merge", "publish", "final", "span", "active");
        for (int pos : positions) {
            StepParams hsp = {1, pos}; CK(cudaMemcpy(sp, &hsp, sizeof hsp, cudaMemcpyHostToDevice));
            double ms[2];
            for (int withAtt = 1; withAtt >= 0; withAtt--) {
                cudaGraph_t g; cudaGraphExec_t ge;
                CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
                for (int l = 0; l < L; l++) {
                    const int wl = l % NL;
                    u16* kl = kc + (long long)wl * K * maxCtx * Hd; u16* vl = vc + (long long)wl * K * maxCtx * Hd;
                    const unsigned char* kl8 = k8 + (long long)wl * K * maxCtx * Hd; const unsigned char* vl8 = v8 + (long long)wl * K * maxCtx * Hd;
                    const float* ks = ksc + (long long)wl * K * maxCtx; const float* vs = vsc + (long long)wl * K * maxCtx;
                    float* attl = att + (long long)l * H * Hd;
                    const float* nullf = nullptr; const char* nullc = nullptr; long long zero64 = 0;
                    int Hh = H, Kk = K, Hdd = Hd, Dd = D, mc = maxCtx, early = 1, zero = 0, one = 1, nIn = 512, Ss = S, rows = D, cols = H * Hd;
                    float sc = 1.f / sqrtf((float)Hd);
                    launch((const void*)matvec_qkv_rope_bf16, dim3((QKV / 2 + 7) / 8), 256, s, (const u16*)Wq[wl], (const float*)xn, qkv, nullf, Hh, Kk, Hdd, Dd,
                           (const float*)cosT, (const float*)sinT, kl, vl, mc, (const StepParams*)sp, early, (const float*)ss, nIn, eps);
                    if (withAtt && !kv8)
                        launch((const void*)attention_split_g4, dim3(K, S, 1), 256, s, (const float*)qkv, (const u16*)kl, (const u16*)vl, attl, ws, Hh, Kk, Hdd, mc, zero, sc, Ss,
                               (const StepParams*)sp, zero, nullc, zero64);
                    if (withAtt && kv8 == 2)
                        launch((const void*)attention_split_g4_f16w_hd128, dim3(K, S, 1), 256, s, (const float*)qkv, (const u16*)kl, (const u16*)vl, attl, ws, Hh, Kk, Hdd, mc, zero, sc, Ss,
                               (const StepParams*)sp, zero, nullc, zero64);
                    if (withAtt && kv8 == 1)
                        launch((const void*)attention_split_g4_fp8w_hd128, dim3(K, S, 1), 256, s, (const float*)qkv, kl8, vl8, attl, ws, Hh, Kk, Hdd, mc, zero, sc, Ss,
                               (const StepParams*)sp, ks, vs, zero, nullc, zero64);
                    launch((const void*)matvec_bf16_deep16, dim3(D / 8), 256, s, (const u16*)Wo[wl], (const float*)(withAtt ? attl : qkv), x, nullf, rows, cols, one, zero, early,
                           (const float*)gain, xn, ss, nullf, zero, eps, zero);
                }
                CK(cudaStreamEndCapture(s, &g));
                CK(cudaGraphInstantiate(&ge, g, 0));
                for (int w = 0; w < 3; w++) CK(cudaGraphLaunch(ge, s));
                CK(cudaStreamSynchronize(s));
                std::vector<float> t = graph_ms(ge, s, 4, 9);
                ms[withAtt] = t[t.size() / 2];
                if (withAtt) {   // one more launch, traced
                    CK(cudaMemset(trace, 0, traceN * 8));
                    CK(cudaGraphLaunch(ge, s)); CK(cudaStreamSynchronize(s));
                    CK(cudaMemcpy(tr.data(), trace, traceN * 8, cudaMemcpyDeviceToHost));
                }
                CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
            }
            // per layer (1..L-1), µs from the first wait release t1 (the previous kernel's end): lead = t1 - first entry;
            // q, keys0 (warp 0's keys done), keys (every warp's: after the block's first barrier; keysMax the slowest
            // block's) as medians over the blocks with a chunk; merge = warps merged - keys, publish = partial
            // published - merged, final = the last block's merge; span = last stamp - t1
            std::vector<double> lead, qd, keys0, keys, keysMax, merge, publish, fin, span; int active = 0;
            for (int l = 1; l < L; l++) {
                unsigned long long t0 = ~0ull, t1 = ~0ull, end = 0;
                for (int b = 0; b < K * S; b++) {
                    const unsigned long long* st = &tr[((long long)l * 1024 + b) * 8];
                    if (st[0]) t0 = std::min(t0, st[0]);
                    if (st[1]) t1 = std::min(t1, st[1]);
                    for (int i = 0; i < 8; i++) end = std::max(end, st[i]);
                }
                std::vector<double> q1, k0, k1, m1, p1; double kmax = 0; int act = 0;
                for (int b = 0; b < K * S; b++) {
                    const unsigned long long* st = &tr[((long long)l * 1024 + b) * 8];
                    if (!st[7]) continue;
                    act++;
                    if (st[6]) q1.push_back((double)(st[6] - t1));
                    if (st[2]) k0.push_back((double)(st[2] - t1));
                    k1.push_back((double)(st[7] - t1)); kmax = std::max(kmax, (double)(st[7] - t1));
                    if (st[3]) m1.push_back((double)(st[3] - st[7]));
                    if (st[4] && st[3]) p1.push_back((double)(st[4] - st[3]));
                    if (st[5] && st[4]) fin.push_back((double)(st[5] - st[4]));
                }
                active = act;
                lead.push_back((double)(t1 - t0)); qd.push_back(med(q1)); keys0.push_back(med(k0)); keys.push_back(med(k1)); keysMax.push_back(kmax);
                merge.push_back(med(m1)); publish.push_back(med(p1));
                span.push_back((double)(end - t1));
            }
            printf("%6d | %9.4f %9.4f %7.2f | %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f %7.2f | %6d\n", pos, ms[1], ms[0], (ms[1] - ms[0]) * 1e3 / L,
                   med(lead) / 1e3, med(qd) / 1e3, med(keys0) / 1e3, med(keys) / 1e3, med(keysMax) / 1e3, med(merge) / 1e3, med(publish) / 1e3,
                   med(fin) / 1e3, med(span) / 1e3, active);
        }
    }
    printf("(µs unless marked; medians over layers 1..31; step bytes of weights %.1f MB per layer)\ndone\n", layerBytes / 1e6);
    return 0;
}

// engine_chain.cu: a standalone probe (nvcc, on the GPU machine) that runs the engine's own bf16 decode kernels
// (kernels/matvec.cu, kernels/attention.cu, included as they are) in the order and with the launch shapes of
// CudaBackend.EnqueueStep for a Llama-3-8B layer (qkv + RoPE, split attention, o with the folded norm's producer,
// gate_up + SiLU as its consumer, down), 32 layers over 8 layers' distinct weights, captured in a CUDA graph with
// programmatic dependent launch. It times the step with parts switched on and off (early weight loads, the folded
// norm, the attention kernel) to find which of them costs the matvec chain its overlap (tools/probe/mv_chain.cu
// measures the bare chain).
// The launch arguments mirror CudaKernels' launchers at the time of writing: a kernel signature change must be made
// here too (it fails to compile or runs wrong only on the GPU machine).
// Build and run:  nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/engine_chain tools/probe/engine_chain.cu && /tmp/engine_chain
#include <string>
#include <cmath>
#include "probe.cuh"
#include "../../kernels/matvec.cu"
#include "../../kernels/attention.cu"
#include "probe_engine.cuh"

int main() {
    cudaDeviceProp p; CK(cudaGetDeviceProperties(&p, 0));
    int sms = p.multiProcessorCount;
    const int D = 4096, H = 32, K = 8, Hd = 128, F = 14336, QKV = (H + 2 * K) * Hd, NL = 8, L = 32, maxCtx = 64, pos = 31;
    const float eps = 1e-5f;
    cudaStream_t s; CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<u16*> Wq(NL), Wo(NL), Wgu(NL), Wd(NL);
    auto mat = [&](long long rows, long long cols, u32 seed) { u16* w; CK(cudaMalloc(&w, rows * cols * 2)); fill_u16<<<1024, 256, 0, s>>>(w, rows * cols, sqrtf(3.f / cols), seed, 1); return w; };
    for (int l = 0; l < NL; l++) { Wq[l] = mat(QKV, D, 10 * l + 1); Wo[l] = mat(D, H * Hd, 10 * l + 2); Wgu[l] = mat(2 * F, D, 10 * l + 3); Wd[l] = mat(D, F, 10 * l + 4); }
    long long stepBytes = (long long)L * 2 * ((long long)QKV * D + (long long)D * H * Hd + 2LL * F * D + (long long)D * F);
    float *x, *xn, *qkv, *att, *h, *ss, *gain, *cosT, *sinT, *ws;
    u16 *kc, *vc;
    int S = std::min(256, std::max(1, (2 * sms + K - 1) / K));
    long long wsBytes = 4LL * ((long long)H * S * (Hd + 2) + K);
    CK(cudaMalloc(&x, D * 4)); CK(cudaMalloc(&xn, D * 4)); CK(cudaMalloc(&qkv, QKV * 4)); CK(cudaMalloc(&att, H * Hd * 4));
    CK(cudaMalloc(&h, F * 4)); CK(cudaMalloc(&ss, 4096 * 4)); CK(cudaMalloc(&gain, D * 4));
    CK(cudaMalloc(&cosT, maxCtx * Hd / 2 * 4)); CK(cudaMalloc(&sinT, maxCtx * Hd / 2 * 4)); CK(cudaMalloc(&ws, wsBytes)); CK(cudaMemset(ws, 0, wsBytes));
    CK(cudaMalloc(&kc, (long long)NL * K * maxCtx * Hd * 2)); CK(cudaMalloc(&vc, (long long)NL * K * maxCtx * Hd * 2));
    fill_u16<<<256, 256, 0, s>>>(kc, (long long)NL * K * maxCtx * Hd, 1.f, 7, 0);
    fill_u16<<<256, 256, 0, s>>>(vc, (long long)NL * K * maxCtx * Hd, 1.f, 8, 0);
    fill_f32v<<<16, 256, 0, s>>>(x, D, -1.f, 1.f, 1); fill_f32v<<<16, 256, 0, s>>>(xn, D, -1.f, 1.f, 2);
    fill_f32v<<<16, 256, 0, s>>>(ss, 4096, 0.5f, 1.5f, 3); fill_f32v<<<16, 256, 0, s>>>(gain, D, 0.5f, 1.5f, 4);
    fill_f32v<<<16, 256, 0, s>>>(cosT, maxCtx * Hd / 2, -1.f, 1.f, 5); fill_f32v<<<16, 256, 0, s>>>(sinT, maxCtx * Hd / 2, -1.f, 1.f, 6);
    StepParams hsp = {1, pos}; StepParams* sp; CK(cudaMalloc(&sp, sizeof(StepParams))); CK(cudaMemcpy(sp, &hsp, sizeof hsp, cudaMemcpyHostToDevice));
    CK(cudaStreamSynchronize(s));
    printf("%s, %d SMs; engine kernels, Llama-3-8B bf16 layer x %d, %.2f GB of weights per step, position %d, split attention S=%d\n",
           p.name, sms, L, stepBytes / 1e9, pos, S);

    struct V { const char* name; int early, fold, attn, pairs; };
    std::vector<V> vars = {
        {"early 0 (fold, attention, pairs: the step)", 0, 1, 1, 1},
        {"early 1 (the engine's default)", 1, 1, 1, 1},
        {"early 0, no fold", 0, 0, 1, 1},
        {"early 1, no fold", 1, 0, 1, 1},
        {"early 0, no attention kernel", 0, 1, 0, 1},
        {"early 1, no attention kernel", 1, 1, 0, 1},
        {"early 0, no fold, no attention", 0, 0, 0, 1},
        {"early 1, no fold, no attention", 1, 0, 0, 1},
        {"early 0, plain deep16 for qkv/gate_up", 0, 1, 1, 0},
        {"early 1, plain deep16 for qkv/gate_up", 1, 1, 1, 0},
        {"early 0, again", 0, 1, 1, 1},
        {"early 1, again", 1, 1, 1, 1},
    };
    float* gu; CK(cudaMalloc(&gu, 2 * F * 4));
    for (auto& v : vars) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int l = 0; l < L; l++) {
            int wl = l % NL;
            u16* kl = kc + (long long)wl * K * maxCtx * Hd; u16* vl = vc + (long long)wl * K * maxCtx * Hd;
            const float* ssIn = v.fold ? ss : nullptr; int nIn = 512;
            const float* fg = v.fold ? gain : nullptr; float* xg = v.fold ? xn : nullptr; float* ssOut = v.fold ? ss : nullptr;
            const float* nullf = nullptr; float* nullw = nullptr; const char* nullc = nullptr; long long zero64 = 0;
            int Hh = H, Kk = K, Hdd = Hd, Dd = D, mc = maxCtx, early = v.early, zero = 0, one = 1, rows, cols, Fi = F, act = CALM_ACT_SILU, Ss = S;
            float sc = 1.f / sqrtf((float)Hd);
            if (v.pairs)
                launch((const void*)matvec_qkv_rope_bf16, dim3((QKV / 2 + 7) / 8), 256, s, (const u16*)Wq[wl], (const float*)xn, qkv, nullf, Hh, Kk, Hdd, Dd,
                       (const float*)cosT, (const float*)sinT, kl, vl, mc, (const StepParams*)sp, early, ssIn, nIn, eps);
            else {
                rows = QKV; cols = D;
                launch((const void*)matvec_bf16_deep16, dim3((QKV + 7) / 8), 256, s, (const u16*)Wq[wl], (const float*)xn, qkv, nullf, rows, cols, zero, zero, early,
                       nullf, nullw, nullw, ssIn, nIn, eps, zero);
            }
            if (v.attn)
                launch((const void*)attention_split_g4, dim3(K, S, 1), 256, s, (const float*)qkv, (const u16*)kl, (const u16*)vl, att, ws, Hh, Kk, Hdd, mc, zero, sc, Ss,
                       (const StepParams*)sp, zero, nullc, zero64);
            rows = D; cols = H * Hd;
            launch((const void*)matvec_bf16_deep16, dim3(D / 8), 256, s, (const u16*)Wo[wl], (const float*)(v.attn ? att : qkv), x, nullf, rows, cols, one, zero, early,
                   fg, xg, ssOut, nullf, zero, eps, zero);
            if (v.pairs)
                launch((const void*)matvec_glu_bf16, dim3(F / 8), 256, s, (const u16*)Wgu[wl], (const float*)xn, h, nullf, Fi, Dd, act, early, ssIn, nIn, eps);
            else {
                rows = 2 * F; cols = D;
                launch((const void*)matvec_bf16_deep16, dim3(2 * F / 8), 256, s, (const u16*)Wgu[wl], (const float*)xn, gu, nullf, rows, cols, zero, zero, early,
                       nullf, nullw, nullw, ssIn, nIn, eps, zero);
            }
            rows = D; cols = F;
            launch((const void*)matvec_bf16_deep16, dim3(D / 8), 256, s, (const u16*)Wd[wl], (const float*)(v.pairs ? h : gu), x, nullf, rows, cols, one, zero, early,
                   fg, xg, ssOut, nullf, zero, eps, zero);
        }
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        for (int w = 0; w < 3; w++) CK(cudaGraphLaunch(ge, s));
        CK(cudaStreamSynchronize(s));
        std::vector<float> t = graph_ms(ge, s, 4);
        float ms = t[t.size() / 2];
        printf("%-52s %.4f ms/step (min %.4f max %.4f)  %7.1f GB/s\n", v.name, ms, t.front(), t.back(), stepBytes / (ms * 1e6));
        CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
    }
    printf("done\n");
    return 0;
}

// probe.cuh: host helpers shared by the nvcc probes in tools/probe (not part of the engine).
#pragma once
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s at %s:%d: %s\n", cudaGetErrorName(e_), __FILE__, __LINE__, #x); exit(1); } } while (0)

// Milliseconds per launch of a graph: reps timings (CUDA events) of per back-to-back launches each, sorted ascending
// (median at size() / 2). Warm the graph up first.
static std::vector<float> graph_ms(cudaGraphExec_t ge, cudaStream_t s, int per, int reps = 15) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    std::vector<float> t;
    for (int rep = 0; rep < reps; rep++) {
        CK(cudaEventRecord(e0, s));
        for (int k = 0; k < per; k++) CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(e1, s)); CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1)); t.push_back(ms / per);
    }
    CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
    std::sort(t.begin(), t.end());
    return t;
}

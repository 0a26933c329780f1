#!/usr/bin/env python3
"""Prints the wgmma.mma_async m64nNk16 f32 += f16 x f16 wrappers (N = 128, 192, 256) that kernels/gemm_wgmma.cu
holds between its GENERATED markers (one operand per accumulator register: inline asm cannot take an array).
Usage: python3 tools/gen_wgmma.py > /tmp/w.txt, then paste between the markers."""
for n in (128, 192, 256):
    r = n // 2
    print(f"__device__ __forceinline__ void wgmma_f16_n{n}(float (&d)[{r}], u64 da, u64 db) {{")
    print("#if defined(__CUDA_ARCH_FEAT_SM90_ALL)")
    print("    asm volatile(")
    print(f'        "{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{r + 2}, 0;\\n"')
    print(f'        "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 {{"')
    parts = [", ".join(f"%{i}" for i in range(j, min(j + 16, r))) for j in range(0, r, 16)]
    for k, p in enumerate(parts):
        print(f'        "{p}{", " if k < len(parts) - 1 else ""}"')
    print(f'        "}}, %{r}, %{r + 1}, p, 1, 1, 0, 0;\\n}}\\n"')
    items = [f'"+f"(d[{i}])' for i in range(r)]
    lines = [", ".join(items[j:j + 8]) for j in range(0, r, 8)]
    print("        : " + ",\n          ".join(lines))
    print('        : "l"(da), "l"(db), "r"(1));')
    print("#endif")
    print("}")

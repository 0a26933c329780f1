"""Shared by the host emulators (tools/emulate_rows.py, tools/emulate_attention_fp8w.py): turns kernel source into
host C++ by dropping the includes and replacing named __device__ __forceinline__ functions with host versions."""
import re

# the warp shuffles on the emulated warp (each script's prelude defines EmuWarp with a barrier `bar` and `x[32]`,
# and emu_w(), the calling thread's warp): every lane posts its value, waits, reads its source lane's, waits again
SHFL = r'''template <class T> static inline T emu_shfl(T v, int src) {
    EmuWarp& w = emu_w(); int l = threadIdx.x & 31;
    uint64_t u = 0; memcpy(&u, &v, sizeof(T)); w.x[l] = u;
    w.bar->arrive_and_wait();
    uint64_t r = w.x[src & 31];
    w.bar->arrive_and_wait();
    T o; memcpy(&o, &r, sizeof(T)); return o;
}
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int o) { return emu_shfl(v, (int)(threadIdx.x & 31) ^ o); }
template <class T> static inline T __shfl_sync(unsigned, T v, int src) { return emu_shfl(v, src); }
'''

# a device function's header up to its name and the opening parenthesis (templates included)
FN = re.compile(r'(?:template\s*<[^>]*>\s*)?__device__ __forceinline__ [\w:<>, ]+?\b(\w+)\s*\(')


def hostify(src, repl):
    """src without '#pragma once' / '#include' lines, each device function named in repl replaced by repl[name]
    (overloads of one name: all of them by the first replacement, the others dropped)."""
    src = re.sub(r'(?m)^#pragma once\s*$', '', src)
    src = re.sub(r'(?m)^#include ".*"\s*$', '', src)
    out, pos, done = [], 0, set()
    for m in FN.finditer(src):
        if m.start() < pos or m.group(1) not in repl:
            continue
        i = src.index('{', m.end())
        depth, j = 0, i
        while True:
            if src[j] == '{': depth += 1
            elif src[j] == '}':
                depth -= 1
                if depth == 0: break
            j += 1
        out.append(src[pos:m.start()])
        out.append('' if m.group(1) in done else repl[m.group(1)])
        done.add(m.group(1))
        pos = j + 1
    out.append(src[pos:])
    return ''.join(out)

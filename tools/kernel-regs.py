#!/usr/bin/env python3
"""Registers and stack frame (spills) of every kernel in NVRTC cubins, from the ELF's .nv.info attributes
(EIATTR_REGCOUNT 0x2f, EIATTR_FRAME_SIZE 0x11): what `-Xptxas -v` would print, without the CUDA toolkit.
Usage: tools/kernel-regs.sh [arch] (compiles kernels/*.cu through the engine's KernelCompiler, no GPU needed), or
       python3 tools/kernel-regs.py file.cubin ...      A nonzero frame means local memory: spills or a stack array."""
import struct, sys

def kernels(path):
    b = open(path, 'rb').read()
    if b[:4] != b'\x7fELF':
        raise SystemExit(f'{path}: not an ELF cubin (PTX fallback?)')
    shoff = struct.unpack_from('<Q', b, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', b, 0x3a)
    secs = [struct.unpack_from('<IIQQQQIIQQ', b, shoff + i * shentsize) for i in range(shnum)]
    def cstr(base, n):
        s = b[base + n:]
        return s[:s.index(b'\0')].decode()
    names = [cstr(secs[shstrndx][4], s[0]) for s in secs]
    symtab = next(s for s, n in zip(secs, names) if n == '.symtab')
    strtab = secs[symtab[6]]
    syms = [cstr(strtab[4], struct.unpack_from('<I', b, symtab[4] + i * 24)[0]) for i in range(symtab[5] // 24)]
    res = {}
    for s, n in zip(secs, names):
        if not n.startswith('.nv.info'):
            continue
        d, p = b[s[4]:s[4] + s[5]], 0
        while p + 4 <= len(d):
            fmt, attr = d[p], d[p + 1]
            if fmt == 4:   # EIFMT_SVAL: u16 size, then the value
                sz = struct.unpack_from('<H', d, p + 2)[0]
                if attr in (0x2f, 0x11) and sz == 8:
                    si, v = struct.unpack_from('<II', d, p + 4)
                    res.setdefault(syms[si], {})['regs' if attr == 0x2f else 'frame'] = v
                p += 4 + sz
            else:
                p += 4
    return {k: v for k, v in res.items() if 'regs' in v}

if __name__ == '__main__':
    for path in sys.argv[1:]:
        for k, v in sorted(kernels(path).items()):
            print(f"{path.split('/')[-1]:32} {k:40} regs {v['regs']:4} frame {v.get('frame', 0)}")

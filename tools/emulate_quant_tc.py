#!/usr/bin/env python3
"""Emulates the lane/fragment index maps of the tensor-core quantized matvecs (kernels/matvec_quant.cu,
matvec_fp8_tc_impl and matvec_int4_tc_impl) for one warp and one 16-row tile in plain Python, using the PTX definitions of
the mma.sync m16n8k16 A/B/C fragments, and checks the result against a plain dot product. No GPU needed: it catches
a wrong k permutation, slot or scale assignment before device time is spent. Usage: python3 tools/emulate_quant_tc.py"""
import random
import struct

rng = random.Random(1)

def f16(v):
    return struct.unpack('<e', struct.pack('<e', v))[0]

def f32(v):
    return struct.unpack('<f', struct.pack('<f', v))[0]

def mma(A_frag, B_frag):
    """A_frag[lane] = 8 values a0..a7, B_frag[lane] = 4 values b0..b3 -> C_frag[lane] = c0..c3 (fp32 of exact products)."""
    A = [[0.0] * 16 for _ in range(16)]; B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        a = A_frag[lane]
        for i in range(8):
            row = g if (i < 2 or 4 <= i < 6) else g + 8
            col = 2 * t + (i & 1) + (8 if i >= 4 else 0)
            A[row][col] = a[i]
        b = B_frag[lane]
        for i in range(4):
            B[2 * t + (i & 1) + (8 if i >= 2 else 0)][g] = b[i]
    D = [[sum(A[r][k] * B[k][n] for k in range(16)) for n in range(8)] for r in range(16)]
    return [[D[l >> 2][2 * (l & 3)], D[l >> 2][2 * (l & 3) + 1], D[(l >> 2) + 8][2 * (l & 3)], D[(l >> 2) + 8][2 * (l & 3) + 1]] for l in range(32)]

def split(v):
    hi = f16(v); lo = f16(f32(v - hi))
    return hi, lo

def fp8_tile(W, x):
    """W [16, cols] (already dequantized values), x [cols]; one warp doing every k-block."""
    cols = len(W[0])
    d = [[0.0] * 4 for _ in range(32)]
    for kb in range(cols // 64):
        # staging: lane L converts the pair x[64kb + 2L, +1] -> xb[j'][2t' + part][which]
        xb = [[[[0.0, 0.0], [0.0, 0.0]] for _ in range(8)] for _ in range(4)]   # [j][slot][b01 or b23][2 halves]
        for L in range(32):
            st, sj, sw = L >> 3, (L >> 1) & 3, L & 1
            a, b = x[kb * 64 + 2 * L], x[kb * 64 + 2 * L + 1]
            (ha, la), (hb, lb) = split(a), split(b)
            xb[sj][2 * st][sw] = [ha, hb]; xb[sj][2 * st + 1][sw] = [la, lb]
        for j in range(4):
            A_frag, B_frag = [], []
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                base = kb * 64 + 16 * t + 4 * j   # word j of the lane's 16 bytes
                rg, rh = W[g], W[g + 8]
                # a0a1 = bytes 0,1 of word j (row g), a2a3 = same (row g+8), a4a5 = bytes 2,3 (row g), a6a7 (row g+8)
                A_frag.append([rg[base], rg[base + 1], rh[base], rh[base + 1], rg[base + 2], rg[base + 3], rh[base + 2], rh[base + 3]])
                slot = 2 * t + (g & 1)
                B_frag.append([xb[j][slot][0][0], xb[j][slot][0][1], xb[j][slot][1][0], xb[j][slot][1][1]])
            D = mma(A_frag, B_frag)
            for l in range(32):
                for e in range(4): d[l][e] += D[l][e]
    tot = [0.0] * 16
    for lane in range(32):
        g = lane >> 2
        r0, r1 = d[lane][0] + d[lane][1], d[lane][2] + d[lane][3]
        if lane & 3 == 0: tot[g], tot[g + 8] = r0, r1
        else: assert abs(tot[g] - r0) < 1e-9 and abs(tot[g + 8] - r1) < 1e-9, "lanes of a quad disagree"
    return tot

def int4_pairs(n8):
    """nibbles e0..e7 of a word -> pairs as mq_int4x8_f16: (e0,e4), (e1,e5), (e2,e6), (e3,e7), values n - 8."""
    return [(n8[0] - 8, n8[4] - 8), (n8[1] - 8, n8[5] - 8), (n8[2] - 8, n8[6] - 8), (n8[3] - 8, n8[7] - 8)]

def int4_tile(N, Dsc, x):
    """N [16, cols] nibbles 0..15, Dsc [16, cols/32] scales, x [cols]."""
    cols = len(N[0])
    acc = [[0.0, 0.0] for _ in range(32)]
    for kb in range(cols // 128):
        xb = [[[[0.0, 0.0], [0.0, 0.0]] for _ in range(9)] for _ in range(8)]   # [m][slot][b01/b23][halves]; slot 8 zero
        for L in range(32):
            st, sq, sh = L >> 3, (L >> 1) & 3, L & 1
            c = kb * 128 + 32 * st + 8 * sq + 2 * sh
            a = (x[c], x[c + 1]); b = (x[c + 4], x[c + 5])
            (h0, l0), (h4, l4) = split(a[0]), split(b[0])
            (h1, l1), (h5, l5) = split(a[1]), split(b[1])
            m = 2 * sq + sh
            xb[m][2 * st] = [[h0, h4], [h1, h5]]
            xb[m][2 * st + 1] = [[l0, l4], [l1, l5]]
        d = [[0.0] * 4 for _ in range(32)]
        for q in range(4):
            for h in range(2):
                A_frag, B_frag = [], []
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    c0 = kb * 128 + 32 * t + 8 * q
                    pg = int4_pairs(N[g][c0:c0 + 8]); ph = int4_pairs(N[g + 8][c0:c0 + 8])
                    A_frag.append([*pg[2 * h], *ph[2 * h], *pg[2 * h + 1], *ph[2 * h + 1]])
                    slot = 2 * t + (g >> 2) if t == (g & 3) else 8
                    bb = xb[2 * q + h][slot]
                    B_frag.append([bb[0][0], bb[0][1], bb[1][0], bb[1][1]])
                D = mma(A_frag, B_frag)
                for l in range(32):
                    for e in range(4): d[l][e] += D[l][e]
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            g0 = kb * 4 + 2 * (t & 1)
            acc[lane][0] += Dsc[g][g0] * d[lane][0] + Dsc[g][g0 + 1] * d[lane][1]
            acc[lane][1] += Dsc[g + 8][g0] * d[lane][2] + Dsc[g + 8][g0 + 1] * d[lane][3]
    tot = [0.0] * 16
    for g in range(8):
        tot[g] = sum(acc[4 * g + t][0] for t in range(4))
        tot[g + 8] = sum(acc[4 * g + t][1] for t in range(4))
    return tot

cols = 256
W = [[rng.randint(-16, 15) / 8 for _ in range(cols)] for _ in range(16)]
x = [f32(rng.gauss(0, 1)) for _ in range(cols)]
got = fp8_tile(W, x)
want = [sum(W[r][c] * x[c] for c in range(cols)) for r in range(16)]
err = max(abs(a - b) for a, b in zip(got, want)) / max(abs(b) for b in want)
print("fp8 tile: max rel err", err)
assert err < 1e-6

N = [[rng.randint(0, 15) for _ in range(cols)] for _ in range(16)]
Dsc = [[rng.uniform(0.5, 2.0) for _ in range(cols // 32)] for _ in range(16)]
got = int4_tile(N, Dsc, x)
want = [sum(Dsc[r][c // 32] * (N[r][c] - 8) * x[c] for c in range(cols)) for r in range(16)]
err = max(abs(a - b) for a, b in zip(got, want)) / max(abs(b) for b in want)
print("int4 tile: max rel err", err)
assert err < 1e-6
print("ok")

# mq_int4x8_f16 at the bit level: the or'ed f16 halves and the fma constants give the pairs int4_pairs() assumes
def half_bits(h):
    return struct.unpack('<e', struct.pack('<H', h))[0]

def int4x8_f16(w):
    w8 = w >> 8
    out = []
    for src, mask, mul, add in ((w, 0x000F000F, 0x3C00, 0xE408), (w, 0x00F000F0, 0x2C00, 0xD480),
                                (w8, 0x000F000F, 0x3C00, 0xE408), (w8, 0x00F000F0, 0x2C00, 0xD480)):
        v = (src & mask) | 0x64006400
        lo, hi = half_bits(v & 0xFFFF), half_bits(v >> 16)
        m, a = half_bits(mul), half_bits(add)
        out.append((f16(lo * m + a), f16(hi * m + a)))
    return out

for _ in range(2000):
    n8 = [rng.randint(0, 15) for _ in range(8)]
    w = sum((n8[2 * b] | (n8[2 * b + 1] << 4)) << (8 * b) for b in range(4))   # byte b: low nibble e_2b, high e_2b+1
    assert int4x8_f16(w) == [tuple(float(v) for v in p) for p in int4_pairs(n8)], (n8, int4x8_f16(w))
print("int4 bit conversion ok")

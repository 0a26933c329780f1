# CPU emulation of attention_prefill_tc (fragment/ldmatrix index math) vs a direct reference
# Kept as a check of kernels/prefill_attention.cu attention_prefill_tc: ldmatrix (plain and .trans) and mma.m16n8k16
# fragments per the PTX ISA, f16 hi/lo splits via struct "e"; expect relL2 ~1e-7 and 0 missing. python3 tools/emulate_attention_tc.py
import struct, math, random
def f16(x):
    x = max(-65504.0, min(65504.0, x))
    return struct.unpack('e', struct.pack('e', x))[0]
def split(a): h = f16(a); return h, f16(a - h)
def mma(c, A, B):  # c: per-lane [4], A: per-lane [4] of pairs, B: per-lane [2] of pairs
    Am = [[0]*16 for _ in range(16)]; Bm = [[0]*8 for _ in range(16)]
    for l in range(32):
        g, t = l >> 2, l & 3
        for r, (row, col) in enumerate([(g, 2*t), (g+8, 2*t), (g, 2*t+8), (g+8, 2*t+8)]):
            Am[row][col], Am[row][col+1] = A[l][r]
        for r, k in enumerate([2*t, 2*t+8]):
            Bm[k][g], Bm[k+1][g] = B[l][r]
    for l in range(32):
        g, t = l >> 2, l & 3
        for e, (row, col) in enumerate([(g, 2*t), (g, 2*t+1), (g+8, 2*t), (g+8, 2*t+1)]):
            c[l][e] += sum(Am[row][k] * Bm[k][col] for k in range(16))
def ldsm(smem, addrs, trans):  # addrs[lane] = half index of a row start; returns regs[lane][4] pairs
    out = [[None]*4 for _ in range(32)]
    for i in range(4):
        mat = [[smem[addrs[8*i + r] + c] for c in range(8)] for r in range(8)]
        for l in range(32):
            g, t = l >> 2, l & 3
            out[l][i] = (mat[2*t][g], mat[2*t+1][g]) if trans else (mat[g][2*t], mat[g][2*t+1])
    return out
def run(H, K, HD, T, start, window, seed):
    rnd = random.Random(seed); maxCtx = start + T + 3; ld = (H + 2*K) * HD
    q = [rnd.uniform(-2, 2) for _ in range(T * ld)]
    kc = [f16(rnd.uniform(-1.5, 1.5)) for _ in range(K * maxCtx * HD)]
    vc = [f16(rnd.uniform(-1, 1)) for _ in range(K * maxCtx * HD)]
    scale = 1 / math.sqrt(HD); QT = 64; KC = 32 if HD >= 128 else 64; ROW = HD + 8
    out = {}
    nq = (T + QT - 1) // QT
    for h in range(H):
        kh = h // (H // K)
        for bx in range(nq):
            t0 = (nq - 1 - bx) * QT
            tLast = min(t0 + QT, T) - 1; pFirst = start + t0; pLast = start + tLast
            kBegin = max(0, pFirst - window + 1) if window > 0 else 0
            nChunks = (pLast - kBegin) // KC + 1
            for warp in range(4):
                tw = t0 + warp * 16
                pWarpLast = start + min(tw + 15, T - 1)
                qs = scale * 1.4426950408889634
                qh = [[[None]*4 for _ in range(32)] for _ in range(HD // 16)]; ql = [[[None]*4 for _ in range(32)] for _ in range(HD // 16)]
                for ks in range(HD // 16):
                    for l in range(32):
                        g, t4 = l >> 2, l & 3
                        for e in range(4):
                            row = tw + g + (e & 1) * 8; col = ks*16 + (e >> 1)*8 + 2*t4
                            a = b = 0.0
                            if row < T:
                                a = q[row*ld + h*HD + col] * qs; b = q[row*ld + h*HD + col + 1] * qs
                            (ha, la), (hb, lb) = split(a), split(b)
                            qh[ks][l][e] = (ha, hb); ql[ks][l][e] = (la, lb)
                o = [[[0.0]*4 for _ in range(32)] for _ in range(HD // 8)]
                m = [[-math.inf]*2 for _ in range(32)]; lsum = [[0.0]*2 for _ in range(32)]
                for ci in range(nChunks):
                    c0 = kBegin + ci * KC
                    smK = [0.0] * (KC * ROW); smV = [0.0] * (KC * ROW)
                    for r in range(KC):
                        j = c0 + r
                        if j <= pLast:
                            for d in range(HD):
                                smK[r*ROW + d] = kc[(kh*maxCtx + j)*HD + d]; smV[r*ROW + d] = vc[(kh*maxCtx + j)*HD + d]
                    if tw >= T or c0 > pWarpLast or (window > 0 and c0 + KC - 1 <= start + tw - window): continue
                    SN = KC // 8
                    sc = [[[0.0]*4 for _ in range(32)] for _ in range(SN)]
                    for ks in range(HD // 16):
                        for jj in range(SN // 2):
                            addrs = [(jj*16 + (l & 7) + ((l >> 4) << 3))*ROW + ks*16 + ((l >> 3) & 1)*8 for l in range(32)]
                            R = ldsm(smK, addrs, False)
                            B01 = [[R[l][0], R[l][1]] for l in range(32)]; B23 = [[R[l][2], R[l][3]] for l in range(32)]
                            mma(sc[2*jj], qh[ks], B01); mma(sc[2*jj], ql[ks], B01); mma(sc[2*jj+1], qh[ks], B23); mma(sc[2*jj+1], ql[ks], B23)
                    mx = [[-math.inf]*2 for _ in range(32)]
                    for l in range(32):
                        g, t4 = l >> 2, l & 3; p0 = start + tw + g; p1 = p0 + 8
                        for n in range(SN):
                            for e in range(4):
                                key = c0 + n*8 + 2*t4 + (e & 1); p = p0 if e < 2 else p1
                                ok = key <= p and key <= pLast and (window <= 0 or key > p - window)
                                if not ok: sc[n][l][e] = -math.inf
                                mx[l][e >> 1] = max(mx[l][e >> 1], sc[n][l][e])
                    for l in range(32):  # quad reduce
                        base = l & ~3
                        for u in range(2): mx[l][u] = max(mx[base + i][u] for i in range(4)) if True else 0
                    mu = [[0.0]*2 for _ in range(32)]
                    for l in range(32):
                        for u in range(2):
                            mn = max(m[l][u], mx[l][u]); mu[l][u] = 0.0 if mn == -math.inf else mn
                            corr = 2 ** (m[l][u] - mu[l][u]) if m[l][u] != -math.inf else 0.0
                            m[l][u] = mn; lsum[l][u] *= corr
                            for n in range(HD // 8):
                                o[n][l][2*u] *= corr; o[n][l][2*u+1] *= corr
                    for kk in range(KC // 16):
                        ah = [None]*32; al = [None]*32
                        for l in range(32):
                            pa = [[(2 ** (sc[2*kk+u][l][e] - mu[l][e >> 1]) if sc[2*kk+u][l][e] != -math.inf else 0.0) for e in range(4)] for u in range(2)]
                            lsum[l][0] += pa[0][0] + pa[0][1] + pa[1][0] + pa[1][1]; lsum[l][1] += pa[0][2] + pa[0][3] + pa[1][2] + pa[1][3]
                            hs = []; ls = []
                            for (x, y) in [(pa[0][0], pa[0][1]), (pa[0][2], pa[0][3]), (pa[1][0], pa[1][1]), (pa[1][2], pa[1][3])]:
                                (hx, lx), (hy, ly) = split(x), split(y); hs.append((hx, hy)); ls.append((lx, ly))
                            ah[l] = hs; al[l] = ls
                        for dn in range(HD // 16):
                            addrs = [(kk*16 + (l & 7) + (((l >> 3) & 1) << 3))*ROW + dn*16 + (l >> 4)*8 for l in range(32)]
                            R = ldsm(smV, addrs, True)
                            B01 = [[R[l][0], R[l][1]] for l in range(32)]; B23 = [[R[l][2], R[l][3]] for l in range(32)]
                            mma(o[2*dn], ah, B01); mma(o[2*dn], al, B01); mma(o[2*dn+1], ah, B23); mma(o[2*dn+1], al, B23)
                for l in range(32):
                    g, t4 = l >> 2, l & 3; base = l & ~3
                    for u in range(2):
                        row = tw + g + u*8
                        if row >= T: continue
                        L = sum(lsum[base + i][u] for i in range(4))
                        for n in range(HD // 8):
                            out[(row, h, n*8 + 2*t4)] = o[n][l][2*u] / L; out[(row, h, n*8 + 2*t4 + 1)] = o[n][l][2*u+1] / L
    # reference
    num = den = 0.0; missing = 0
    for t in range(T):
        p = start + t
        for h in range(H):
            kh = h // (H // K)
            js = [j for j in range(0, p + 1) if window <= 0 or j > p - window]
            s = [scale * sum(q[t*ld + h*HD + d] * kc[(kh*maxCtx + j)*HD + d] for d in range(HD)) for j in js]
            mx = max(s); w = [math.exp(x - mx) for x in s]; Z = sum(w)
            for d in range(HD):
                want = sum(wi * vc[(kh*maxCtx + j)*HD + d] for wi, j in zip(w, js)) / Z
                got = out.get((t, h, d))
                if got is None: missing += 1; continue
                num += (got - want) ** 2; den += want ** 2
    print(f"H{H} K{K} HD{HD} T{T} start{start} window{window}: missing {missing}, relL2 {math.sqrt(num / den):.3e}")
run(2, 1, 64, 37, 5, 0, 1)
run(2, 2, 64, 70, 13, 7, 2)
run(1, 1, 128, 40, 45, 0, 3)
run(2, 1, 128, 20, 100, 40, 4)

"""The Hopper forward's launch order against L2 (issue 18: why strided is the weakest ratio
to FlexAttention on the H100). CPU only; no package import.

Replays the forward's grid (x = batch x head, y = rank in `order`: longest line first, ties
ascending; partial entries first, then full ones ascending, as attention_metadata.py and
benchmarks/attention_harness.cu build the lists) on 132 SMs, one CTA each, greedy (the
hardware starts the next CTA in launch order on the first free SM), a CTA costing
a + t x (its key tiles), and feeds the K/V tile reads in time order to an LRU cache of
the L2's size: misses are DRAM reads. Orders: one section of all columns (the default),
sections of N columns (JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=N; "l2" is 6 at this shape), and
near-equal sections (..._HEAD_SECTIONS_EVEN=1).

    python3 benchmarks/head_sections_model.py [--masks DIR] [--l2-mb 50]

DIR holds mask_<name>.txt files (benchmarks/attention_harness.cu's format); without it the
five masks are rebuilt here from the layouts' rules (B 2, H 16, S 8192, block 128).
"""
import argparse
import heapq
import os
from collections import OrderedDict

import numpy as np

N, COLUMNS, SMS = 64, 32, 132  # blocks per side, batch x heads, H100 SMs


def builtin_masks():
    r = np.arange(N)[:, None]
    c = r.T
    d = r - c
    local = (d >= 0) & (d <= 8)  # local(8192, 128, 1024)
    strided = local | ((d >= 0) & (d % 8 == 0))  # strided(8192, 128, 1024)
    fixed = ((r // 4 == c // 4) | (c % 4 == 3)) & (c <= r)  # fixed(8192, 128, 512)
    return {"local": (local, True), "strided": (strided, True), "fixed": (fixed, True),
            "causal": (d >= 0, True)}


def file_masks(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("mask_") and name.endswith(".txt"):
            lines = open(os.path.join(folder, name)).read().split("\n")
            rq = int(lines[0].split()[0])
            m = np.array([[ch == "1" for ch in ln] for ln in lines[1:rq + 1]])
            causal = lines[0].strip().endswith("causal")
            out[name[5:-4]] = (m & np.tril(np.ones_like(m)) if causal else m, causal)
    return out


def lines_of(mask, causal):
    rows = []
    for r in range(mask.shape[0]):
        cols = np.nonzero(mask[r])[0].tolist()
        rows.append([c for c in cols if causal and c == r] +
                    [c for c in cols if not (causal and c == r)])
    return rows


def items(rows, widths):
    order = sorted(range(len(rows)), key=lambda r: (-len(rows[r]), r))
    out, first = [], 0
    for w in widths:
        out += [(x, order[k]) for k in range(len(rows)) for x in range(first, first + w)]
        first += w
    return out


def widths(n, even):
    if n <= 0 or n >= COLUMNS:
        return [COLUMNS]
    if not even:
        return [n] * (COLUMNS // n) + ([COLUMNS % n] if COLUMNS % n else [])
    count = -(-COLUMNS // n)
    q, r = divmod(COLUMNS, count)
    return [q + 1] * r + [q] * (count - r)


def replay(rows, work, l2_bytes, a=3.0, t=1.8, unit=64 * 1024):
    free = [(0.0, s) for s in range(SMS)]
    reads = []
    for bh, r in work:
        start, sm = heapq.heappop(free)
        reads += [(start + a + j * t, (bh, col)) for j, col in enumerate(rows[r])]
        heapq.heappush(free, (start + a + t * len(rows[r]), sm))
    span = max(end for end, _ in free)
    reads.sort()
    cache, cap, misses = OrderedDict(), l2_bytes // unit, []
    for when, key in reads:
        if key in cache:
            cache.move_to_end(key)
        else:
            misses.append(when)
            cache[key] = 1
            if len(cache) > cap:
                cache.popitem(last=False)
    window = 20.0  # us
    rate = np.bincount((np.array(misses) // window).astype(int)) * unit / (window * 1e-6) / 1e12
    return len(reads), len(misses), len(misses) * unit / 1e9, span, np.percentile(rate, 90)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--masks")
    p.add_argument("--l2-mb", type=float, default=50)
    args = p.parse_args()
    masks = file_masks(args.masks) if args.masks else builtin_masks()
    print("mask      order     K/V tiles  L2 miss  DRAM GB  span us  DRAM TB/s p90 (20 us)")
    for name, (mask, causal) in masks.items():
        rows = lines_of(mask, causal)
        for label, n, even in [("all", 0, False), ("sect 6", 6, False), ("even 6", 6, True),
                               ("sect 8", 8, False), ("sect 1", 1, False)]:
            tiles, miss, gb, span, p90 = replay(rows, items(rows, widths(n, even)),
                                                int(args.l2_mb * 1e6))
            print(f"{name:9s} {label:8s} {tiles:9d} {miss / tiles:8.3f} {gb:8.3f} {span:8.0f}"
                  f" {p90:8.2f}")


if __name__ == "__main__":
    main()

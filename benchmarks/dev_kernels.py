"""Developer check of the CUDA matmul kernels: correctness sweep, determinism, timings.

Run on a GPU machine after `pip install .`:

    python3 benchmarks/dev_kernels.py [--quick] [--no-time] [--no-check]

Correctness: every op (sdd, dsd, dds), transposition combination, dtype (bf16, f16,
f32 default = TF32, f32 precision=HIGHEST) and block size against a float64 numpy
reference on fresh random inputs (relative Frobenius error), with odd shapes (tails,
misaligned leading dimensions), layouts with empty block rows and columns, a single block,
all blocks, no blocks, batched operands (both or one of them), and bitwise determinism over
two runs. Timing: dds, its dx (ddsT: trans_w), dsd and sdd at 8192^3 with density 0.1 in bf16 next
to the dense matmul; --compare adds the same with the Hopper wgmma path off (mma.sync).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

import jax_blocksparse as jbs
from jax_blocksparse import Layout

TOL = {"bf16": 1e-2, "f16": 2e-3, "f32": 2e-3, "f32hi": 1e-5}
DT = {"bf16": jnp.bfloat16, "f16": jnp.float16, "f32": jnp.float32, "f32hi": jnp.float32}


def op_np(x, t):
    return np.swapaxes(x, -1, -2) if t else x


def dense_of(blocks, mask, bs):
    """[..., nnz, bs, bs] -> [..., R*bs, C*bs] (float64)."""
    r, c = mask.shape
    out = np.zeros(blocks.shape[:-3] + (r * bs, c * bs), np.float64)
    for e, (i, j) in enumerate(np.argwhere(mask)):
        out[..., i * bs:(i + 1) * bs, j * bs:(j + 1) * bs] = blocks[..., e, :, :]
    return out


def rand(rng, shape, dtype):
    x = jnp.asarray(rng.standard_normal(shape).astype(np.float32)).astype(dtype)
    return x, np.asarray(x.astype(jnp.float32)).astype(np.float64)


def random_mask(rng, r, c, density=0.45, empty=True):
    mask = rng.random((r, c)) < density
    if empty and r > 1 and c > 1:
        mask[rng.integers(r), :] = False
        mask[:, rng.integers(c)] = False
    return mask


def relerr(out, ref):
    num = np.linalg.norm((out - ref).ravel())
    den = np.linalg.norm(ref.ravel())
    return num / den if den > 0 else num


# ------------------------------------------------------------------------- cases
def make_case(rng, op, bs, ta, tb, dt, mask, dims, ga=None, gb=None):
    """Build inputs, the jitted op and the float64 reference. ga/gb: batch sizes (None: none)."""
    dtype = DT[dt]
    prec = jax.lax.Precision.HIGHEST if dt == "f32hi" else None
    layout = Layout(mask, bs)
    nnz = layout.nnz
    P, Q = layout.shape
    lead = lambda g: () if g is None else (g,)
    if op == "sdd":
        K = dims
        sa = (K, P) if ta else (P, K)
        sb = (Q, K) if tb else (K, Q)
        a, a64 = rand(rng, lead(ga) + sa, dtype)
        b, b64 = rand(rng, lead(gb) + sb, dtype)
        full = op_np(a64, ta) @ op_np(b64, tb)
        coords = np.argwhere(mask)
        ref = np.stack([full[..., i * bs:(i + 1) * bs, j * bs:(j + 1) * bs] for i, j in coords],
                       axis=-3) if nnz else np.zeros(full.shape[:-2] + (0, bs, bs))
        fn = jax.jit(lambda a, b: jbs.sdd(a, b, layout, trans_a=ta, trans_b=tb, precision=prec))
    elif op == "dsd":
        N = dims
        Kd = P if ta else Q  # ta means trans_s here
        sb = (N, Kd) if tb else (Kd, N)
        a, a64 = rand(rng, lead(ga) + (nnz, bs, bs), dtype)
        b, b64 = rand(rng, lead(gb) + sb, dtype)
        ref = op_np(dense_of(a64, mask, bs), ta) @ op_np(b64, tb)
        fn = jax.jit(lambda s, b: jbs.dsd(s, b, layout, trans_s=ta, trans_b=tb, precision=prec))
    else:
        M = dims
        Kd = Q if tb else P  # tb means trans_w
        sa = (Kd, M) if ta else (M, Kd)
        a, a64 = rand(rng, lead(ga) + sa, dtype)
        b, b64 = rand(rng, lead(gb) + (nnz, bs, bs), dtype)
        ref = op_np(a64, ta) @ op_np(dense_of(b64, mask, bs), tb)
        fn = jax.jit(lambda a, w: jbs.dds(a, w, layout, trans_a=ta, trans_w=tb, precision=prec))
    return fn, (a, b), ref


def check(rng, results, name, op, bs, ta, tb, dt, mask, dims, ga=None, gb=None):
    try:
        fn, args, ref = make_case(rng, op, bs, ta, tb, dt, mask, dims, ga, gb)
        o1 = np.asarray(jax.block_until_ready(fn(*args)).astype(jnp.float32)).astype(np.float64)
        o2 = np.asarray(jax.block_until_ready(fn(*args)).astype(jnp.float32)).astype(np.float64)
        if o1.shape != ref.shape:
            raise AssertionError(f"shape {o1.shape} != {ref.shape}")
        err = relerr(o1, ref)
        zeros_ok = bool(np.all(o1[ref == 0] == 0))
        det = bool(np.array_equal(o1, o2, equal_nan=True))
        ok = bool(np.isfinite(err)) and err < TOL[dt] and zeros_ok and det
        results.append(dict(name=name, op=op, dt=dt, bs=bs, err=err, ok=ok, det=det,
                            zeros=zeros_ok))
        if not ok:
            print(f"FAIL {name}: err={err:.3g} zeros_ok={zeros_ok} det={det}", flush=True)
    except Exception as e:  # noqa: BLE001
        results.append(dict(name=name, op=op, dt=dt, bs=bs, err=float("nan"), ok=False,
                            det=False, zeros=False))
        print(f"ERROR {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)


def correctness(quick):
    rng = np.random.default_rng(0)
    results = []
    ops = ("sdd", "dsd", "dds")
    tr = list(itertools.product((False, True), repeat=2))
    dts = ("bf16", "f16", "f32", "f32hi")
    sizes = (16, 32, 64, 128)
    # odd dims: (aligned-with-tail, misaligned leading dimension)
    odd = {"sdd": (200, 77), "dsd": (136, 50), "dds": (200, 37)}
    t0 = time.time()
    for op, (ta, tb), dt, bs in itertools.product(ops, tr, dts, sizes):
        for d in odd[op][: 1 if quick else 2]:
            r, c = (5, 3) if bs <= 64 else (3, 4)
            mask = random_mask(rng, r, c)
            check(rng, results, f"{op} ta={ta:d} tb={tb:d} {dt} bs={bs} d={d}", op, bs, ta, tb,
                  dt, mask, d)
    print(f"main sweep: {len(results)} cases in {time.time() - t0:.0f}s", flush=True)
    # batched operands: both, first only, second only
    for op, (ta, tb), bs, (ga, gb) in itertools.product(
            ops, tr, (16, 64), ((3, 3), (3, None), (None, 3))):
        mask = random_mask(rng, 4, 3)
        check(rng, results, f"{op} ta={ta:d} tb={tb:d} bf16 bs={bs} batch={ga},{gb}", op, bs,
              ta, tb, "bf16", mask, odd[op][0], ga, gb)
    for dt in ("f32", "f32hi", "f16"):
        for op in ops:
            mask = random_mask(rng, 4, 3)
            check(rng, results, f"{op} ta=1 tb=0 {dt} bs=32 batch=2,2", op, 32, True, False,
                  dt, mask, odd[op][1], 2, 2)
    # special layouts
    for op, bs, (ta, tb), kind in itertools.product(
            ops, (32, 128), ((False, False), (True, True), (False, True)),
            ("single", "all", "none")):
        r, c = 3, 2
        mask = np.zeros((r, c), bool)
        if kind == "single":
            mask[1, 1] = True
        elif kind == "all":
            mask[:] = True
        check(rng, results, f"{op} ta={ta:d} tb={tb:d} bf16 bs={bs} {kind}", op, bs, ta, tb,
              "bf16", mask, odd[op][0])
    # large-ish, to cover many row tiles / long lines
    for op, dt in itertools.product(ops, ("bf16", "f32")):
        mask = random_mask(rng, 12, 10, 0.6)
        check(rng, results, f"{op} ta=0 tb=0 {dt} bs=64 big", op, 64, False, False, dt, mask,
              1000)
    # large, both 16-bit types, every transposition: several row tiles with a tail, long
    # lines / a long K with a tail, aligned rows (the Hopper wgmma path at block sizes 64/128)
    for op, (ta, tb), dt, bs in itertools.product(ops, tr, ("bf16", "f16"),
                                                  (64, 128)):
        mask = random_mask(rng, 10, 9, 0.5)
        check(rng, results, f"{op} ta={ta:d} tb={tb:d} {dt} bs={bs} big-aligned", op, bs, ta,
              tb, dt, mask, 1000)
    # zero-size dense dims
    for op in ("dds", "dsd", "sdd"):
        mask = random_mask(rng, 3, 2)
        check(rng, results, f"{op} bf16 bs=16 zero-dim", op, 16, False, False, "bf16", mask, 0)
    return results


def summary(results):
    print("\n== correctness (max relative error / cases passed) ==")
    print(f"{'op':4} {'dtype':6} " + " ".join(f"{'bs=' + str(b):>16}" for b in (16, 32, 64, 128)))
    for op in ("sdd", "dsd", "dds"):
        for dt in ("bf16", "f16", "f32", "f32hi"):
            cells = []
            for bs in (16, 32, 64, 128):
                rs = [r for r in results if r["op"] == op and r["dt"] == dt and r["bs"] == bs]
                if not rs:
                    cells.append(f"{'-':>16}")
                    continue
                errs = [r["err"] for r in rs]
                mx = max(errs) if not any(np.isnan(errs)) else float("nan")
                cells.append(f"{mx:9.2e} {sum(r['ok'] for r in rs):2d}/{len(rs):<2d}")
            print(f"{op:4} {dt:6} " + " ".join(cells))
    bad = [r for r in results if not r["ok"]]
    print(f"TOTAL {len(results) - len(bad)}/{len(results)} passed; "
          f"nondeterministic: {sum(not r['det'] for r in results)}")


# ------------------------------------------------------------------------- timing
def bench(fn, args, reps=20, rounds=5):
    if reps * rounds > 1:  # warm up (not in --profile mode: one launch per op for ncu)
        jax.block_until_ready(fn(*args))
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        ts.append((time.perf_counter() - t) / reps)
    return float(np.median(ts))


def timing(sizes=(32, 64, 128), n=8192, ops=("dds", "ddsT", "dsd", "sdd"), reps=20, rounds=5):
    rng = np.random.default_rng(1)
    dtype = jnp.bfloat16
    x = jnp.asarray(rng.standard_normal((n, n)).astype(np.float32)).astype(dtype)
    y = jnp.asarray(rng.standard_normal((n, n)).astype(np.float32)).astype(dtype)
    dense = jax.jit(lambda a, b: jnp.matmul(a, b))
    td = bench(dense, (x, y), reps, rounds)
    print(f"\n== timing bf16, {n}^3, density 0.1 (useful TFLOP/s = 2*M*nnz*bs^2/t) ==")
    print(f"dense jnp.matmul: {td * 1e3:8.3f} ms  {2 * n ** 3 / td / 1e12:7.1f} TFLOP/s")
    for op in ops:
        for bs in sizes:
            mask = rng.random((n // bs, n // bs)) < 0.1
            layout = Layout(mask, bs)
            w = jnp.asarray(rng.standard_normal((layout.nnz, bs, bs)).astype(np.float32)
                            ).astype(dtype)
            if op == "dds":
                fn, args = jax.jit(lambda a, w: jbs.dds(a, w, layout)), (x, w)
            elif op == "ddsT":  # the dx of dds: dy @ W^T
                fn, args = jax.jit(lambda a, w: jbs.dds(a, w, layout, trans_w=True)), (x, w)
            elif op == "dsd":
                fn, args = jax.jit(lambda s, b: jbs.dsd(s, b, layout)), (w, y)
            else:
                fn, args = jax.jit(lambda a, b: jbs.sdd(a, b, layout)), (x, y)
            t = bench(fn, args, reps, rounds)
            flops = 2 * n * layout.nnz * bs * bs
            print(f"{op:4} bs={bs:3d} nnz={layout.nnz:6d}: {t * 1e3:8.3f} ms "
                  f"{flops / t / 1e12:7.1f} TFLOP/s  ({flops / t / 1e12 / (2 * n ** 3 / td / 1e12) * 100:5.1f}% of dense rate, "
                  f"{td / t:5.2f}x faster than dense)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--naive", action="store_true",
                    help="time the simple kernels (run in a subprocess with the env switch)")
    ap.add_argument("--sizes", default="32,64,128")
    ap.add_argument("--ops", default="dds,ddsT,dsd,sdd")
    ap.add_argument("--time-only", action="store_true",
                    help="only the timing table (sizes/ops as given), e.g. in a subprocess")
    ap.add_argument("--compare", action="store_true",
                    help="also time the ops at bs 64/128 with the Hopper wgmma path off "
                         "(JAX_BLOCKSPARSE_NO_WGMMA=1: the mma.sync kernels)")
    ap.add_argument("--no-naive", action="store_true", help="skip the simple-kernel timing")
    ap.add_argument("--profile", action="store_true",
                    help="one call of each op at 8192^3 (bs from --sizes), for ncu")
    args = ap.parse_args()
    if args.profile:
        timing(tuple(int(s) for s in args.sizes.split(",")), ops=tuple(args.ops.split(",")),
               reps=1, rounds=1)
        return
    print(jax.devices(), "cuda kernels:", jbs.cuda_available(), flush=True)
    if args.naive:
        timing(tuple(int(s) for s in args.sizes.split(",")), ops=tuple(args.ops.split(",")),
               reps=2, rounds=3)
        return
    if args.time_only:
        timing(tuple(int(s) for s in args.sizes.split(",")), ops=tuple(args.ops.split(",")))
        return
    results = [] if args.no_check else correctness(args.quick)
    if results:
        summary(results)
    if not args.no_time:
        timing(tuple(int(s) for s in args.sizes.split(",")), ops=tuple(args.ops.split(",")))
        if args.compare:
            env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
                       JAX_BLOCKSPARSE_NO_WGMMA="1")
            print("\n-- mma.sync kernels (wgmma off): JAX_BLOCKSPARSE_NO_WGMMA=1 --", flush=True)
            subprocess.run([sys.executable, __file__, "--time-only", "--sizes", "64,128"],
                           env=env, check=False)
        if not args.no_naive:
            env = dict(os.environ, JAX_BLOCKSPARSE_SIMPLE_KERNELS="1",
                       XLA_PYTHON_CLIENT_PREALLOCATE="false")
            print("\n-- simple (naive) kernels, for comparison --", flush=True)
            subprocess.run([sys.executable, __file__, "--naive", "--sizes", "64", "--ops",
                            "dds"], env=env, check=False)


if __name__ == "__main__":
    main()

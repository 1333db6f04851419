"""Developer timing of the CUDA matmul kernels (A/B of the kernel variants).

Run on a GPU machine after `pip install .`:

    python3 benchmarks/dev_kernels.py [--compare] [--no-naive] [--sizes 32,64,128]

dds, its dx (ddsT: trans_w), dsd and sdd at 8192^3 with density 0.1 in bf16 next to the
dense matmul; --compare adds the same with the Hopper wgmma path off (mma.sync), and the
simple kernels are timed unless --no-naive.

    python3 benchmarks/dev_kernels.py --small-wgmma [--sizes 16,32] [--ops dds,ddsT,dsd]
    python3 benchmarks/dev_kernels.py --sdd-runs [--sizes 16,32]
    python3 benchmarks/dev_kernels.py --group-wgmma [--sizes 16,32] [--ops dds,ddsT,dsd]
    python3 benchmarks/dev_kernels.py --small-records [--sizes 16,32] [--ops dds,ddsT,dsd]

times the ops at block sizes 16/32 under JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 (mma.sync)
and =1 (the default on Hopper: cuda/matmul/wgmma_small.cuh), a child
process each (with JAX_BLOCKSPARSE_DEBUG=1: its distinct launch lines, which name the
kernels, follow its table); --sdd-runs likewise sdd and x^T dy (sddT) under
JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 and =1 (cuda/matmul/mma_sync.cuh SddRuns16/32);
--group-wgmma the ops of --small-wgmma under JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=0 (the
default: wgmma_small.cuh), =1 and =128 (cuda/matmul/wgmma_group.cuh, 256 and 128 columns); --small-records likewise
under JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 and =1 (wgmma_small.cuh merging the lists in
every thread, or reading the host-merged group records). The correctness sweep that lived here is in
the test suite: tests/test_gpu_kernels.py (run with `pytest -m gpu`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

import jax_blocksparse as jbs
from jax_blocksparse import Layout


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
            elif op == "sddT":  # the weight gradient of dds: x^T dy
                fn, args = jax.jit(lambda a, b: jbs.sdd(a, b, layout, trans_a=True)), (x, y)
            else:
                fn, args = jax.jit(lambda a, b: jbs.sdd(a, b, layout)), (x, y)
            t = bench(fn, args, reps, rounds)
            flops = 2 * n * layout.nnz * bs * bs
            print(f"{op:4} bs={bs:3d} nnz={layout.nnz:6d}: {t * 1e3:8.3f} ms "
                  f"{flops / t / 1e12:7.1f} TFLOP/s  ({flops / t / 1e12 / (2 * n ** 3 / td / 1e12) * 100:5.1f}% of dense rate, "
                  f"{td / t:5.2f}x faster than dense)", flush=True)


def compare_switch(switch, sizes, ops, values=("0", "1")):
    """--small-wgmma, --sdd-runs, --group-wgmma, --small-records: the timing under each value ("0", "1") of the switch
    JAX_BLOCKSPARSE_<switch>, in a child process each."""
    for value in values:
        print(f"\n-- JAX_BLOCKSPARSE_{switch}={value} --", flush=True)
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", JAX_BLOCKSPARSE_DEBUG="1",
                   **{f"JAX_BLOCKSPARSE_{switch}": value})
        child = subprocess.run([sys.executable, __file__, "--time-only", "--sizes", sizes,
                                "--ops", ops], env=env, stderr=subprocess.PIPE, text=True,
                               check=False)
        seen = dict.fromkeys(line for line in child.stderr.splitlines()
                             if line.startswith("[jax_blocksparse]"))
        print("kernels:", *seen, sep="\n  ", flush=True)
        if child.returncode:
            print(child.stderr[-3000:], flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--naive", action="store_true",
                    help="time the simple kernels (run in a subprocess with the env switch)")
    ap.add_argument("--sizes", default="32,64,128")
    ap.add_argument("--ops", default="dds,ddsT,dsd,sdd", help="of dds, ddsT, dsd, sdd, sddT")
    ap.add_argument("--time-only", action="store_true",
                    help="only the timing table (sizes/ops as given), e.g. in a subprocess")
    ap.add_argument("--compare", action="store_true",
                    help="also time the ops at bs 64/128 with the Hopper wgmma path off "
                         "(JAX_BLOCKSPARSE_NO_WGMMA=1: the mma.sync kernels)")
    ap.add_argument("--small-wgmma", action="store_true",
                    help="time --ops (default dds,ddsT,dsd) at --sizes (default 16,32) under "
                         "JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 and =1, a child process each")
    ap.add_argument("--sdd-runs", action="store_true",
                    help="time sdd and sddT (x^T dy) at --sizes (default 16,32) under "
                         "JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 and =1, a child process each")
    ap.add_argument("--group-wgmma", action="store_true",
                    help="as --small-wgmma, under JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=0, =1, =128")
    ap.add_argument("--small-records", action="store_true",
                    help="as --small-wgmma, under JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 and =1")
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
    sizes = args.sizes if args.sizes != "32,64,128" else "16,32"
    if args.small_wgmma or args.group_wgmma or args.small_records:
        switch = ("MATMUL_GROUP_WGMMA" if args.group_wgmma else
                  "MATMUL_SMALL_RECORDS" if args.small_records else "MATMUL_SMALL_WGMMA")
        compare_switch(switch, sizes,
                       args.ops if args.ops != "dds,ddsT,dsd,sdd" else "dds,ddsT,dsd",
                       ("0", "1", "128") if args.group_wgmma else ("0", "1"))
        return
    if args.sdd_runs:
        compare_switch("MATMUL_SDD_RUNS", sizes, "sdd,sddT")
        return
    if args.time_only:
        timing(tuple(int(s) for s in args.sizes.split(",")), ops=tuple(args.ops.split(",")))
        return
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

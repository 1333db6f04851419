"""Benchmark of the block-sparse matmul: forward (`x @ W`), dx and dW, against dense XLA.

For each shape `x [M, C] @ W [C, K]`, dtype, block size and density: the median time of
the forward `dds(x, W)`, the input gradient `dds(dy, W, trans_w=True)` and the weight
gradient `sdd(x, dy, trans_a=True)`; useful TFLOP/s (`2 * M * nnz * bs^2`, the work on
nonzero blocks only); and the speedup over the dense XLA product of the same shape
(`x @ W`, `dy @ W.T`, `x.T @ dy`) measured in the same run.

    python benchmarks/matmul.py            # bf16, the headline grid (a few minutes on a GPU)
    python benchmarks/matmul.py --full     # every dtype, block size and density, two shapes
    python benchmarks/matmul.py --layout barabasi_albert   # load balance: power-law rows

Timing: each op is jit-compiled, warmed up, then called `--reps` times back to back (no
synchronization between calls) and the total divided; the median of 5 such runs is kept.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs

SHAPES = {"8192": (8192, 8192, 8192), "4096x1024": (4096, 1024, 4096)}


def median_ms(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - start) / reps * 1e3)
    return float(np.median(runs))


def make_layout(kind, c, k, bs, density, seed):
    if kind == "random":
        return jbs.layouts.random(c, k, bs, density, seed=seed)
    return getattr(jbs.layouts, kind)(c, k, bs, density, seed=seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--dtypes", default=None, help="comma list, e.g. bfloat16,float16")
    parser.add_argument("--block-sizes", default=None)
    parser.add_argument("--densities", default=None)
    parser.add_argument("--shapes", default=None, help=f"comma list of {list(SHAPES)}")
    parser.add_argument("--layout", default="random",
                        choices=["random", "barabasi_albert", "watts_strogatz"])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()

    full = args.full
    dtypes = (args.dtypes or ("bfloat16,float16,float32" if full else "bfloat16")).split(",")
    block_sizes = [int(b) for b in (args.block_sizes or "16,32,64,128").split(",")]
    densities = [float(d) for d in
                 (args.densities or ("0.02,0.05,0.1,0.25,0.5" if full else "0.1")).split(",")]
    shapes = (args.shapes or ("8192,4096x1024" if full else "8192")).split(",")

    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; CUDA kernels: "
          f"{jbs.cuda_available()}; layout {args.layout}")
    header = (f"{'shape':>10} {'dtype':>8} {'bs':>4} {'dens':>5} {'pass':>4} {'ms':>9} "
              f"{'TFLOP/s':>8} {'dense ms':>9} {'dense TF':>8} {'speedup':>7}")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape in shapes:
        m, c, k = SHAPES[shape]
        for dtype_name in dtypes:
            dtype = jnp.dtype(dtype_name)
            x = jnp.asarray(rng.standard_normal((m, c), np.float32), dtype)
            dy = jnp.asarray(rng.standard_normal((m, k), np.float32), dtype)
            w_dense = jnp.asarray(rng.standard_normal((c, k), np.float32), dtype)
            dense = {
                "fwd": (jax.jit(lambda x, w: x @ w), (x, w_dense)),
                "dx": (jax.jit(lambda dy, w: dy @ w.T), (dy, w_dense)),
                "dW": (jax.jit(lambda x, dy: x.T @ dy), (x, dy)),
            }
            dense_ms = {p: median_ms(f, *a, reps=args.reps) for p, (f, a) in dense.items()}
            dense_flops = 2 * m * c * k
            del w_dense
            for bs in block_sizes:
                for density in densities:
                    layout = make_layout(args.layout, c, k, bs, density, seed=bs)
                    w = jnp.asarray(rng.standard_normal((layout.nnz, bs, bs), np.float32),
                                    dtype)
                    passes = {
                        "fwd": (jax.jit(lambda x, w: jbs.dds(x, w, layout)), (x, w)),
                        "dx": (jax.jit(lambda dy, w: jbs.dds(dy, w, layout, trans_w=True)),
                               (dy, w)),
                        "dW": (jax.jit(lambda x, dy: jbs.sdd(x, dy, layout, trans_a=True)),
                               (x, dy)),
                    }
                    useful = 2 * m * layout.nnz * bs * bs
                    for name, (fn, fargs) in passes.items():
                        ms = median_ms(fn, *fargs, reps=args.reps)
                        print(f"{shape:>10} {dtype_name:>8} {bs:>4} {layout.density:5.3f} "
                              f"{name:>4} {ms:9.3f} {useful / ms / 1e9:8.1f} "
                              f"{dense_ms[name]:9.3f} {dense_flops / dense_ms[name] / 1e9:8.1f} "
                              f"{dense_ms[name] / ms:7.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark of the block-sparse matmul: forward (`x @ W`), dx and dW, against dense XLA.

For each shape `x [M, C] @ W [C, K]`, dtype, block size and density: the median time of
the forward `dds(x, W)`, the input gradient `dds(dy, W, trans_w=True)` and the weight
gradient `sdd(x, dy, trans_a=True)`; useful TFLOP/s (`2 * M * nnz * bs^2`, the work on
nonzero blocks only); and the speedup over the dense XLA product of the same shape
(`x @ W`, `dy @ W.T`, `x.T @ dy`) measured in the same run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from .timing import median_ms

SHAPES = {"8192": (8192, 8192, 8192), "4096x1024": (4096, 1024, 4096),
          "1024": (1024, 1024, 1024)}
QUICK = dict(dtypes=["bfloat16"], block_sizes=[16, 32, 64, 128], densities=[0.1],
             shapes=["8192"])
# Without a GPU (the pure-JAX path on the CPU): small enough to finish in seconds.
QUICK_CPU = dict(dtypes=["float32"], block_sizes=[32, 64], densities=[0.1], shapes=["1024"],
                 reps=1)
FULL = dict(dtypes=["bfloat16", "float16", "float32"], block_sizes=[16, 32, 64, 128],
            densities=[0.02, 0.05, 0.1, 0.25, 0.5], shapes=["8192", "4096x1024"])
HEADER = (f"{'shape':>10} {'dtype':>8} {'bs':>4} {'dens':>5} {'pass':>4} {'ms':>9} "
          f"{'TFLOP/s':>8} {'dense ms':>9} {'dense TF':>8} {'speedup':>7}")


def make_layout(kind, c, k, bs, density, seed):
    return getattr(jbs.layouts, kind)(c, k, bs, density, seed=seed)


def run(dtypes, block_sizes, densities, shapes, layout_kind="random", reps=10):
    """Time the forward, dx and dW passes for every (shape name in `SHAPES`, dtype name,
    block size, density); print one row per measurement and return the rows as dicts
    (`shape, dtype, bs, density, layout, op, ms, tflops, dense_ms, dense_tflops, speedup`).
    `reps` calls are timed back to back (see `median_ms`)."""
    print(f"matmul: jax {jax.__version__} on {jax.devices()[0].device_kind}; CUDA kernels: "
          f"{jbs.cuda_available()}; layout {layout_kind}")
    print(HEADER)
    print("-" * len(HEADER))
    rng = np.random.default_rng(0)
    rows = []
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
            dense_ms = {p: median_ms(f, *a, reps=reps) for p, (f, a) in dense.items()}
            dense_flops = 2 * m * c * k
            del w_dense
            for bs in block_sizes:
                for density in densities:
                    layout = make_layout(layout_kind, c, k, bs, density, seed=bs)
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
                        ms = median_ms(fn, *fargs, reps=reps)
                        row = dict(shape=shape, dtype=dtype_name, bs=bs, density=layout.density,
                                   layout=layout_kind, op=name, ms=ms,
                                   tflops=useful / ms / 1e9, dense_ms=dense_ms[name],
                                   dense_tflops=dense_flops / dense_ms[name] / 1e9,
                                   speedup=dense_ms[name] / ms)
                        rows.append(row)
                        print(f"{shape:>10} {dtype_name:>8} {bs:>4} {row['density']:5.3f} "
                              f"{name:>4} {ms:9.3f} {row['tflops']:8.3g} {row['dense_ms']:9.3f} "
                              f"{row['dense_tflops']:8.3g} {row['speedup']:7.2f}", flush=True)
    return rows

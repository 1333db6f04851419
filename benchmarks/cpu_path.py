"""The pure-JAX path (CPU, or any platform without the kernels) against the dense product.

    python benchmarks/cpu_path.py      # x [2048, 2048] @ W [2048, 2048], float32, density 0.05

Prints the time of `matmul`, `dsd` and `sdd` at each block size next to the dense
`jnp.matmul` of the same shape, measured in the same process: the cost of the pure-JAX
path grows with the nonzero blocks (gathers, a batched product over the blocks, a segment
sum), not with the dense size.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse.bench.timing import median_ms

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", type=int, default=2048)
parser.add_argument("--density", type=float, default=0.05)
args = parser.parse_args()
n = args.size
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
dense_ms = median_ms(jax.jit(jnp.matmul), x, x, reps=2, runs=3)
print(f"{jax.default_backend()} | {n}^3 float32, density {args.density} | "
      f"dense jnp.matmul {dense_ms:.1f} ms")
print(f"{'block':>5} {'matmul ms':>10} {'dsd ms':>8} {'sdd ms':>8} {'matmul vs dense':>16}")
for bs in (16, 32, 64, 128):
    layout = jbs.layouts.random(n, n, bs, args.density, seed=0)
    w = jnp.asarray(rng.standard_normal((layout.nnz, bs, bs)), jnp.float32)
    times = [median_ms(jax.jit(f), *a, reps=2, runs=3) for f, a in [
        (lambda x, w: jbs.matmul(x, w, layout), (x, w)),
        (lambda w, x: jbs.dsd(w, x, layout), (w, x)),
        (lambda x, y: jbs.sdd(x, y, layout), (x, x))]]
    print(f"{bs:>5} {times[0]:>10.1f} {times[1]:>8.1f} {times[2]:>8.1f} "
          f"{dense_ms / times[0]:>15.1f}x")

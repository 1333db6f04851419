"""One pattern of `attention_patterns.py`, called a fixed number of times, for a profiler.

    ncu --kernel-name regex:FwdKernel --launch-skip 2 --launch-count 1 --set full \
        python3 benchmarks/dev_profile.py packed [--calls 3] [--backward]

The pattern's forward (or forward + backward) is jitted, compiled, then called `--calls`
times with a block on each result, so `--launch-skip` counts whole calls. B=2, H=16, bf16,
block 128, S 8192, D 128 (the issue's configuration).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_patterns import patterns  # noqa: E402

import jax_blocksparse as jbs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pattern", help="local, strided, fixed, bigbird, causal or packed")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    args = parser.parse_args()
    rows = {name: row for name, *row in patterns(quick=False, extended=False)}
    s, d, layout, causal, docs = rows[args.pattern]
    rng = np.random.default_rng(7)
    q, k, v = (jnp.asarray(rng.standard_normal((args.batch, s, args.heads, d)), jnp.bfloat16)
               for _ in range(3))
    ids = None if docs is None else jnp.broadcast_to(jnp.asarray(docs), (args.batch, s))
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, q_segment_ids=ids)
    if args.backward:
        cot = jnp.asarray(rng.standard_normal(q.shape), q.dtype)
        step = jax.jit(lambda q, k, v: jax.vjp(f, q, k, v)[1](cot))
    else:
        step = jax.jit(f)
    step = step.lower(q, k, v).compile()
    for _ in range(args.calls):
        jax.block_until_ready(step(q, k, v))
    print(f"{args.pattern}: {args.calls} calls of S={s} D={d}", flush=True)


if __name__ == "__main__":
    main()

"""Developer A/B: the decode kernel's split count (`_cuda.decode_splits`, through
`_cuda.DECODE["target_ctas"]` and `["min_blocks_per_split"]`) on the issue's decode case
(bf16, B=8, Hq=64, Hkv=8, D=128, T=32768, block 128), dense causal and local 4096 layouts.
Prints ms and TB/s of the K/V bytes read for each setting. GPU only.

    python benchmarks/dev_decode_splits.py
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse import _cuda
from jax_blocksparse.bench.timing import median_ms


def main():
    b, hq, hkv, d, t, bs = 8, 64, 8, 128, 32768, 128
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (b, 1, hq, d), jnp.bfloat16)
    k = jax.random.normal(kk, (b, t, hkv, d), jnp.bfloat16)
    v = jax.random.normal(kv, (b, t, hkv, d), jnp.bfloat16)
    n = jnp.full((b,), t, jnp.int32)
    token = 2 * hkv * d * 2
    layouts = {"dense": (jbs.layouts.causal(t, bs), b * t * token),
               "local4096": (jbs.layouts.local(t, bs, 4096), b * 33 * bs * token)}
    print(f"{'target CTAs':>12} {'min blocks':>10} " + " ".join(f"{name:>20}" for name in layouts))
    for target, least in itertools.product((132, 264, 396, 528, 792), (1, 4, 8, 16)):
        _cuda.DECODE["target_ctas"] = target
        _cuda.DECODE["min_blocks_per_split"] = least
        cells = []
        for layout, nbytes in layouts.values():
            f = jax.jit(lambda q, k, v, n, layout=layout: jbs.attention(
                q, k, v, layout, causal=True, q_offset=n - 1, kv_lengths=n))
            ms = median_ms(f, q, k, v, n, reps=20)
            cells.append(f"{ms:9.4f} ms {nbytes / ms / 1e9:5.2f} TB/s")
        print(f"{target:12d} {least:10d} " + " ".join(f"{c:>20}" for c in cells), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark of block-sparse attention against `jax.nn.dot_product_attention` (cuDNN on a
GPU, dense and causal) and dense XLA attention with the layout as a mask.

Useful TFLOP/s count `4 * B * Hq * D` per allowed (query, key) pair in the forward (x3.5
for forward + backward); executed TFLOP/s count every pair of every visited block. Speedup
is the wall time of the baseline on the same shape and pass over ours: cuDNN's attention
(causal when ours is), or where there is no cuDNN (no GPU) dense XLA attention with the
layout as a mask (column `vs`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse.attention_metadata import attention_metadata
from .timing import median_ms

QUICK = dict(seq_lens=[8192], head_dims=[128], layouts=["local", "causal"], batch=2, heads=16)
# Without a GPU (the pure-JAX path on the CPU): small enough to finish in seconds.
QUICK_CPU = dict(seq_lens=[2048], head_dims=[64], layouts=["local", "causal"], batch=1,
                 heads=1, reps=1, dtype="float32")
FULL = dict(seq_lens=[1024, 2048, 4096, 8192, 16384], head_dims=[64, 128],
            layouts=["local", "strided", "bigbird", "causal"], batch=2, heads=16)
HEADER = (f"{'layout':>8} {'S':>6} {'D':>4} {'dens':>5} {'pass':>8} {'ms':>9} {'useful TF':>9} "
          f"{'exec TF':>8} {'base ms':>9} {'speedup':>7} {'vs':>5}")


def make_layout(kind, seq_len, bs):
    """The benchmark's layouts (block 128) and whether they are causal."""
    return {
        "local": (lambda: jbs.layouts.local(seq_len, bs, 1024), True),
        "strided": (lambda: jbs.layouts.strided(seq_len, bs, 1024), True),
        "bigbird": (lambda: jbs.layouts.bigbird(seq_len, bs), False),
        "causal": (lambda: jbs.layouts.causal(seq_len, bs), True),
    }[kind]


def pair_counts(layout, causal, seq_len):
    """(allowed (i, j) pairs, pairs in visited blocks) of one head."""
    meta = attention_metadata(layout, causal, seq_len, seq_len)
    bs = layout.block_size
    kind = meta.kind[0]
    executed = int((kind > 0).sum()) * bs * bs
    allowed = int((kind == 2).sum()) * bs * bs
    if causal:
        i = np.arange(bs)[:, None]
        for r, c in np.argwhere(kind == 1):
            allowed += int(((c * bs + i.T) <= (r * bs + i)).sum())
    else:
        allowed += int((kind == 1).sum()) * bs * bs
    return allowed, executed


def _fwd_bwd(f):
    return jax.jit(jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(),
                            argnums=(0, 1, 2)))


def _xla_masked(q, k, v, layout, causal, allowed, reps):
    """Dense XLA attention with the layout as an element mask (forward, and forward +
    backward): what a JAX user writes today for a sparse pattern (it computes every
    score). Returns its rows."""
    b, s, h, d = q.shape
    bs = layout.block_size
    mask = np.kron(layout.mask, np.ones((bs, bs), bool))
    if causal:
        mask &= np.tri(s, dtype=bool)
    mask = jnp.asarray(mask)[None, None]
    f = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    rows = []
    for op, fn in (("fwd", jax.jit(f)), ("fwd+bwd", _fwd_bwd(f))):
        try:
            ms = median_ms(fn, q, k, v, reps=reps)
        except Exception as e:  # out of memory at long sequences
            print(f"{'xla masked':>15} {s:>6} {d:>4} {op} failed: {type(e).__name__}")
            break
        tflops = 4 * b * h * d * allowed * (3.5 if op == "fwd+bwd" else 1) / ms / 1e9
        print(f"{'xla masked':>15} {s:>6} {d:>4} {allowed / s / s:5.3f} {op:>8} {ms:9.3f} "
              f"{tflops:9.3g}")
        rows.append(dict(layout="xla_masked", seq_len=s, head_dim=d, density=allowed / s / s,
                         op=op, ms=ms, tflops=tflops))
    return rows


def run(seq_lens, head_dims, layouts, batch, heads, reps=5, block_size=128,
        dtype="bfloat16"):
    """Time forward and forward+backward of `attention` (`q, k, v [batch, S, heads, D]`
    of `dtype`) for every (sequence length S, head dim D, layout kind of `make_layout`),
    next to cuDNN (where available) and dense XLA attention with the layout as a mask;
    print one row per measurement and return the rows as dicts (`layout, seq_len,
    head_dim, density, op, ms, tflops`, and for ours `executed_tflops, speedup` and
    `baseline`: "cudnn", "xla", or None where neither was measured)."""
    print(f"attention: jax {jax.__version__} on {jax.devices()[0].device_kind}; CUDA kernels: "
          f"{jbs.cuda_available()}; B={batch} H={heads} {dtype} block {block_size}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    rng = np.random.default_rng(0)
    for s in seq_lens:
        for d in head_dims:
            q, k, v = (jnp.asarray(rng.standard_normal((batch, s, heads, d), np.float32),
                                   dtype) for _ in range(3))

            cudnn = {}
            for causal in (False, True) if jax.default_backend() == "gpu" else ():
                try:
                    f = lambda q, k, v, c=causal: jax.nn.dot_product_attention(
                        q, k, v, is_causal=c, implementation="cudnn")
                    cudnn[causal, "fwd"] = median_ms(jax.jit(f), q, k, v, reps=reps)
                    cudnn[causal, "fwd+bwd"] = median_ms(_fwd_bwd(f), q, k, v, reps=reps)
                except Exception as e:  # an unsupported shape
                    print(f"cuDNN attention unavailable: {type(e).__name__}: {str(e)[:80]}")
                    break
            if not cudnn and s == seq_lens[0] and d == head_dims[0]:
                print("no cuDNN attention here: speedups are over dense XLA attention with "
                      "the layout as a mask")
            full_pairs = s * s
            for name, ms in cudnn.items():
                pairs = full_pairs if not name[0] else s * (s + 1) // 2
                flops = 4 * batch * heads * d * pairs * (3.5 if name[1] == "fwd+bwd" else 1)
                print(f"{'cuDNN' + (' causal' if name[0] else ''):>15} {s:>6} {d:>4} "
                      f"{pairs / full_pairs:5.3f} {name[1]:>8} {ms:9.3f} "
                      f"{flops / ms / 1e9:9.3g}")
                rows.append(dict(layout="cudnn" + ("_causal" if name[0] else ""), seq_len=s,
                                 head_dim=d, density=pairs / full_pairs, op=name[1], ms=ms,
                                 tflops=flops / ms / 1e9))
            for kind in layouts:
                make, causal = make_layout(kind, s, block_size)
                layout = make()
                allowed, executed = pair_counts(layout, causal, s)
                f = lambda q, k, v, lay=layout, c=causal: jbs.attention(q, k, v, lay, causal=c)
                xla = _xla_masked(q, k, v, layout, causal, allowed, reps)
                rows += xla
                xla = {r["op"]: r["ms"] for r in xla}
                for op, fn in (("fwd", jax.jit(f)), ("fwd+bwd", _fwd_bwd(f))):
                    ms = median_ms(fn, q, k, v, reps=reps)
                    mult = 4 * batch * heads * d * (3.5 if op == "fwd+bwd" else 1)
                    baseline = ("cudnn" if (causal, op) in cudnn else "xla" if op in xla
                                else None)
                    base = cudnn.get((causal, op), xla.get(op))
                    row = dict(layout=kind, seq_len=s, head_dim=d,
                               density=allowed / full_pairs, op=op, ms=ms,
                               tflops=mult * allowed / ms / 1e9,
                               executed_tflops=mult * executed / ms / 1e9,
                               speedup=(base / ms) if base else None, baseline=baseline)
                    rows.append(row)
                    compared = (f"{base:9.3f} {row['speedup']:7.2f} "
                                f"{'cuDNN' if baseline == 'cudnn' else 'XLA':>5}"
                                if base else f"{'-':>9} {'-':>7}")
                    print(f"{kind:>8} {s:>6} {d:>4} {row['density']:5.3f} {op:>8} {ms:9.3f} "
                          f"{row['tflops']:9.3g} {row['executed_tflops']:8.3g} {compared}",
                          flush=True)
    return rows

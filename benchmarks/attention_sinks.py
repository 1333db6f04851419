"""The cost of attention sinks and logit soft-capping (issue 21): forward, forward+backward
and decode with neither, `sinks=`, `logits_soft_cap=` and both, in the same process.

Each row prints the median time of a call (`jax_blocksparse/bench/timing.py`) and its
overhead over the row without either option. Sinks run inside the prefill forward kernels
(each row's online softmax starts from the sink: no pass over o) and after the decode
kernel (one elementwise pass: `attention_primitives.with_sinks`); a soft cap runs the
default forward and backward (the FA3-design ones on an sm_90 GPU: the cap's cost is the
tanh and, in the backward, the derivative's factor), so every row runs the same kernels;
under JAX_BLOCKSPARSE_ATTN_BWD_VARIANT=0 the FA2 ones, for comparison:

    bash benchmarks/device.sh attention_sinks   # both, on the GPU machine
    python benchmarks/attention_sinks.py --quick   # tiny sizes, seconds (no GPU needed)
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse.bench.timing import median_ms

OPTIONS = {"plain": {}, "sinks": {"sinks": True}, "softcap": {"logits_soft_cap": 30.0},
           "both": {"sinks": True, "logits_soft_cap": 30.0}}


def prefill_rows(b, h, s, d, bs, window, reps, options=OPTIONS):
    """Forward and forward+backward on a local causal layout (the rows of `options`)."""
    layout = jbs.layouts.local(s, bs, window)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.bfloat16) for _ in range(3))
    sinks = jnp.asarray(rng.standard_normal(h), jnp.float32)
    base = {}
    for name, opts in options.items():
        kw = dict(opts, sinks=sinks if opts.get("sinks") else None)
        fwd = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True, **kw))
        grad = jax.jit(jax.grad(lambda q, k, v: jbs.attention(
            q, k, v, layout, causal=True, **kw).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
        for phase, fn in (("fwd", fwd), ("fwd+bwd", grad)):
            ms = median_ms(fn, q, k, v, reps=reps)
            base.setdefault(phase, ms)
            print(f"prefill {phase:8s} {name:8s} B={b} H={h} S={s} D={d} bs={bs} W={window}: "
                  f"{ms:9.3f} ms  ({(ms / base[phase] - 1) * 100:+6.1f}%)", flush=True)


def decode_rows(b, hq, hkv, d, t, bs, reps):
    """One query per sequence against a full-length cache (the decode kernel)."""
    layout = jbs.layouts.causal(t, bs)
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((b, 1, hq, d)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((b, t, hkv, d)), jnp.bfloat16) for _ in range(2))
    sinks = jnp.asarray(rng.standard_normal(hq), jnp.float32)
    lengths = jnp.full((b,), t, jnp.int32)
    base = None
    for name, opts in OPTIONS.items():
        kw = dict(opts, sinks=sinks if opts.get("sinks") else None)
        fn = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=True,
                                                   q_offset=lengths - 1, kv_lengths=lengths,
                                                   **kw))
        ms = median_ms(fn, q, k, v, reps=reps)
        base = base or ms
        print(f"decode           {name:8s} B={b} Hq={hq} Hkv={hkv} D={d} T={t} bs={bs}: "
              f"{ms:9.3f} ms  ({(ms / base - 1) * 100:+6.1f}%)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (any machine)")
    parser.add_argument("--profile", choices=sorted(OPTIONS),
                        help="only the first prefill shape's row of this option, 2 reps (for "
                        "Nsight Compute: device.sh attention_softcap_profile)")
    args = parser.parse_args()
    quick = args.quick or jax.default_backend() == "cpu"
    variant = os.environ.get("JAX_BLOCKSPARSE_ATTN_FWD_VARIANT", "") or "default"
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, CUDA kernels "
          f"{'on' if jbs.cuda_available() else 'OFF'}, forward variant {variant}", flush=True)
    if args.profile:
        shape = (1, 2, 256, 64, 64, 128) if quick else (2, 16, 8192, 128, 128, 1024)
        prefill_rows(*shape, 2, {args.profile: OPTIONS[args.profile]})
    elif quick:
        prefill_rows(1, 2, 256, 64, 64, 128, reps=2)
        decode_rows(2, 4, 2, 64, 512, 64, reps=2)
    else:
        prefill_rows(2, 16, 8192, 128, 128, 1024, reps=10)
        prefill_rows(2, 16, 8192, 64, 64, 1024, reps=10)
        decode_rows(8, 64, 8, 128, 32768, 128, reps=20)


if __name__ == "__main__":
    main()

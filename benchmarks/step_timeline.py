"""The GPU timeline of one pattern's attention step as `attention_patterns.py` times it
(back-to-back jitted calls, B 2, H 16, bf16, block 128): every kernel of the process (ours
and XLA's) from CUPTI through `torch.profiler`, with its start, its duration and the gap
before it (negative: overlapped, e.g. a launch with programmatic dependent launch), then
the span per step. What a benchmark's per-step time holds beyond the kernels (RESULTS
2026-12-07 seventh session: the causal fwd+bwd step, 3.70 ms of back-to-back kernels with
1-4 us gaps, against 4.06 ms in the patterns table).

    python3 benchmarks/step_timeline.py [--pattern causal] [--forward] [--steps 6]
"""
import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_patterns  # noqa: E402  (the rows and inputs of the patterns table)
import jax_blocksparse as jbs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="causal", help="a row of attention_patterns.py")
    parser.add_argument("--forward", action="store_true", help="the forward alone")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    (name, s, d, layout, causal, docs), = attention_patterns.patterns(False, False,
                                                                      [args.pattern])
    q, k, v = attention_patterns.qkv(2, s, 16, d)
    ids = None if docs is None else jnp.broadcast_to(jnp.asarray(docs), (2, s))
    f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, q_segment_ids=ids)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), q.dtype)
    step = jax.jit(f if args.forward else lambda q, k, v: jax.vjp(f, q, k, v)[1](cot))
    jax.block_until_ready(step(q, k, v))
    torch.zeros(1, device="cuda")  # torch's context before the profiler starts
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            out = step(q, k, v)
        jax.block_until_ready(out)
    with tempfile.NamedTemporaryFile(suffix=".json") as fh:
        prof.export_chrome_trace(fh.name)
        events = json.load(open(fh.name))["traceEvents"]
    kinds = ("kernel", "gpu_memset", "gpu_memcpy")
    gpu = sorted((e["ts"], e["dur"], e["name"]) for e in events
                 if e.get("ph") == "X" and e.get("cat") in kinds)
    print(f"{name} S {s} D {d} {'fwd' if args.forward else 'fwd+bwd'}: {len(gpu)} GPU "
          f"activities in {args.steps} steps")
    t0, end = gpu[0][0], None
    for ts, dur, kernel in gpu:
        gap = "" if end is None else f"gap {ts - end:8.1f} us"
        print(f"{ts - t0:10.1f} us {dur:9.1f} us {gap:>17}  {kernel[:100]}")
        end = ts + dur
    print(f"span {(end - t0) / args.steps:.1f} us per step")


if __name__ == "__main__":
    main()

"""Timing helper shared by the benchmarks."""

import time

import jax
import numpy as np


def median_ms(fn, *args, reps: int = 10, runs: int = 5) -> float:
    """Median over `runs` of the mean time of `reps` back-to-back calls of a jitted `fn`
    (no synchronization between calls, so launch gaps are hidden), in milliseconds.
    Warms up (compiles) first."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / reps * 1e3)
    return float(np.median(times))


def chain(fn, reps: int):
    """`fn` called `reps` times in a row (for one jitted program): each call's first argument
    is perturbed by zero times the sum of one element of each of the previous call's
    outputs, so no call is merged with or hoisted above another and none of its outputs is
    dropped as unused (one small elementwise kernel per call; the product taken in float32,
    which XLA does not fold to 0 as it would an integer one: the lists of attention metadata
    are int32). Returns the last call's output."""

    def chained(x, *rest):
        out = None
        for _ in range(reps):
            out = fn(x, *rest)
            probe = sum(leaf.reshape(-1)[0].astype(np.float32) for leaf in jax.tree.leaves(out))
            x = x + (probe * 0).astype(x.dtype)
        return out

    return chained


def chained_ms(fn, *args, reps: int = 10, runs: int = 5) -> float:
    """Per-call time of `fn` with its `reps` calls inside one jitted program (`chain`), in
    milliseconds: no host dispatch between calls, for kernels shorter than a dispatch, where
    `median_ms` times the host."""
    return median_ms(jax.jit(chain(fn, reps)), *args, reps=1, runs=runs) / reps

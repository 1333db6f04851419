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

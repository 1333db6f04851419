"""dds and dsd at block sizes 64/128 on short lines (issue 20: low densities; opt-in:
JAX_BLOCKSPARSE_MATMUL_SHORT_LINES=1, cuda/matmul/wgmma_lines.cuh Wg64Short / Wg128Short:
128-row wgmma CTAs, two per SM, for calls of fewer than 4 blocks per line on
average). Against the float64 reference (values and both gradients, relative error, exact
zeros where no block contributes, bitwise equal over two runs), bf16 and f16, every
transposition, aligned and odd free sizes (the latter: mma.sync), each case in a fresh
process whose launch log (JAX_BLOCKSPARSE_DEBUG=1) must name the kernel; calls of longer
lines keep the 256-row kernel.
"""

import jax
import numpy as np
import pytest

import jax_blocksparse as jbs
from test_gpu_kernels import ALIGNED, UNALIGNED, is_mma_sync, launched, rows_aligned
from test_matmul import LAYOUT_KINDS, TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_SHORT_LINES": "1"}
OPS = ("dds", "dsd")  # the DS-mode ops
SHORT = "wgmma(short lines)"


def hopper():
    return jax.devices("gpu")[0].compute_capability == "9.0"


@pytest.mark.parametrize("bs", (64, 128))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_every_transposition(variant, bs):
    """odd_layout (4 x 5 blocks, an empty block row and column: at most 3 blocks a line),
    every transposition, an aligned and an odd free size."""
    cases = [(op, trans, variant, bs, free[op]) for op in OPS for trans in TRANSPOSES
             for free in (ALIGNED, UNALIGNED)]
    for case, kernels in launched(cases, **SWITCH).items():
        op, trans, _, _, free = case
        short = hopper() and rows_aligned(op, trans, free)
        assert all(k == SHORT if short else is_mma_sync(k) for k in kernels), (case, kernels)


@pytest.mark.parametrize("bs", (64, 128))
def test_layouts_and_gradients(bs):
    """Values and both gradients (the gradients' DS-mode launches on short lines too) on a
    single block, all blocks (2 x 3), one block, no blocks and odd_layout, free sizes 200
    (a tail in the last 128-row tile) and 8 (one short tile)."""
    cases = [(op, trans, "bf16", bs, free, kind, True) for op in OPS for kind in LAYOUT_KINDS
             for trans in ((False, False), (True, True)) for free in (200, 8)]
    runner = "test_gpu_matmul_small_wgmma.run_layout_cases"  # (its checks, any kernel)
    for case, kernels in launched(cases, runner=runner,
                                  none_ok=lambda case: case[5] == "empty", **SWITCH).items():
        kernels = [k for k in kernels if "none" not in k]
        assert all(k == SHORT if hopper() else is_mma_sync(k) for k in kernels), (
            case, kernels)


def run_long_lines(cases):
    """Cases (op, trans, variant, bs, free) on an 8 x 8 layout of every block (8 a line)."""
    from reference import mark_case
    from test_gpu_kernels import check
    for i, (op, trans, variant, bs, free) in enumerate(cases):
        mark_case(repr((op, trans, variant, bs, free)))
        check(op, trans, variant, jbs.Layout(np.ones((8, 8), bool), bs),
              np.random.default_rng(i), free, grads=False, platform=jax.devices()[0].platform)


def test_long_lines_and_the_default():
    """Lines of 8 blocks keep the 256-row kernel under the switch; without it short lines do
    too."""
    long = [(op, (False, False), "bf16", bs, ALIGNED[op]) for op in OPS for bs in (64, 128)]
    runner = "test_gpu_matmul_short_lines.run_long_lines"
    for case, kernels in launched(long, runner=runner, **SWITCH).items():
        assert all(k == "wgmma" if hopper() else is_mma_sync(k) for k in kernels), (
            case, kernels)
    for case, kernels in launched(long).items():  # odd_layout, no switch
        assert all(k == "wgmma" if hopper() else is_mma_sync(k) for k in kernels), (
            case, kernels)

"""The persistent TMA kernel of dds/dsd at block sizes 64 and 128 (cuda/matmul/wgmma_tma.cuh,
the default at both, at 64 alone under JAX_BLOCKSPARSE_MATMUL_TMA=64, at neither under =0;
clusters of two CTAs multicasting the blocks, the output stored by TMA from a swizzled
staging tile), through
the checks of tests/test_gpu_matmul_small_wgmma.py: the float64 reference by relative error
(values and, on aligned sizes, both gradients), bf16 and f16, every transposition, free sizes
below one 256-row tile, of an odd number of tiles (the second tile of the last cluster's pair
lies past the output) and with a tail, one block, all blocks, no blocks, empty block rows and
columns, several lines per cluster and batched operands (one shared by the batch); each case
in a fresh process whose launch log names the kernel (each case runs twice: bitwise equal).
Unaligned operand or output rows, and GPUs other than sm_90, run the other kernels.
"""

import jax
import numpy as np
import pytest

import jax_blocksparse as jbs
import test_gpu_matmul_small_wgmma as small
from reference import mark_case
from test_gpu_kernels import ALIGNED, UNALIGNED, check, launched, rows_aligned
from test_matmul import TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_TMA": "1"}
OPS = small.OPS
# 200: one row tile (its pair's second is past the output); 600: three (odd: the last pair
# half empty) with a tail; 1000: four with a tail
FREES = (200, 600, 1000)


def many_lines_layout(bs, seed=5):
    """11 x 150 blocks at density 0.2: 150 lines over the clusters (several items each;
    some lines empty)."""
    return jbs.Layout(np.random.default_rng(seed).random((11, 150)) < 0.2, bs)


LAYOUTS = dict(small.LAYOUTS, many=many_lines_layout)


def run_layout_cases(cases):
    """small.run_layout_cases with LAYOUTS above."""
    small.run_layout_cases(cases, LAYOUTS)


def is_tma(kernel):
    return "wgmma-tma" in kernel


def tma_aligned(op, trans, free):
    """`rows_aligned`, and the output's rows too (the kernel stores through a tensor map):
    dsd's output rows are `free` long (dds's are the layout's columns, a multiple of bs)."""
    return rows_aligned(op, trans, free) and (op != "dsd" or free % 8 == 0)


def expect(kernels, case, tma):
    assert all(is_tma(k) == tma for k in kernels), (case, kernels)


@pytest.mark.parametrize("bs", (64, 128))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_every_transposition(variant, bs):
    cases = [(op, trans, variant, bs, free[op]) for op in OPS for trans in TRANSPOSES
             for free in (ALIGNED, UNALIGNED)]
    for case, kernels in launched(cases, **SWITCH).items():
        op, trans, _, _, free = case
        expect(kernels, case, small.hopper() and tma_aligned(op, trans, free))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bs", (64, 128))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_layouts_and_gradients(variant, bs, op):
    """Values and both gradients: every layout kind at free sizes 200 and 600 (K-major and
    M-major operands), the random and many-lines layouts at 1000; values alone for the
    mixed transpositions. One op a test (all three in one took up to 139 s on the H100:
    xdist runs them side by side)."""
    cases = [(op, trans, variant, bs, free, kind, True)
             for kind in LAYOUTS for trans in ((False, False), (True, True))
             for free in ((200, 600) if kind not in ("sparse", "many") else (1000,))]
    cases += [(op, trans, variant, bs, 600, kind, False)
              for trans in ((False, True), (True, False)) for kind in ("sparse", "many")]
    for case, kernels in launched(cases, runner="test_gpu_matmul_tma.run_layout_cases",
                                  **SWITCH).items():
        # no blocks: no tensor map of the blocks (an extent 0), the default kernel's zeros
        expect(kernels, case, small.hopper() and case[5] != "empty")


def test_batched_operands():
    """Both operands batched, or one shared by the batch (batch stride 0: the tensor map's
    third extent 1)."""
    cases = [(op, (False, False), "bf16", bs, free, shared)
             for op in OPS for bs in (64, 128) for free in (200, 600) for shared in (None, 0, 1)]
    for case, kernels in launched(cases, runner="test_gpu_matmul_tma.run_batched",
                                  **SWITCH).items():
        expect(kernels, case, small.hopper())


def run_batched(cases):
    for i, (op, trans, variant, bs, free, shared) in enumerate(cases):
        mark_case(repr(cases[i]))
        check(op, trans, variant, many_lines_layout(bs), np.random.default_rng(i), free,
              lead=(3,), shared=shared, platform=jax.devices()[0].platform)


@pytest.mark.parametrize("setting, tma_sizes",
                         ((None, (64, 128)), ("0", ()), ("64", (64,)), ("1", (64, 128))))
def test_switch_picks_the_block_sizes(setting, tma_sizes):
    """Unset and "1": both block sizes; "64": that one alone; "0": neither."""
    env = {} if setting is None else {"JAX_BLOCKSPARSE_MATMUL_TMA": setting}
    cases = [(op, (False, False), "bf16", bs, ALIGNED[op]) for op in OPS for bs in (64, 128)]
    for case, kernels in launched(cases, **env).items():
        expect(kernels, case, small.hopper() and case[3] in tma_sizes)


def test_no_wgmma_overrides_the_switch():
    cases = [(op, (False, False), "bf16", bs, ALIGNED[op]) for op in OPS for bs in (64, 128)]
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_NO_WGMMA="1", **SWITCH).items():
        expect(kernels, case, False)


@pytest.mark.parametrize("free", FREES)
def test_sdd_keeps_its_kernel(free):
    """sdd (the weight gradient's op) is not this switch's: with its few blocks (the odd
    layout) it keeps its kernel (its own TMA kernel: test_gpu_matmul_sdd_tma.py)."""
    cases = [("sdd", (False, False), "bf16", bs, free) for bs in (64, 128)]
    for case, kernels in launched(cases, **SWITCH).items():
        expect(kernels, case, False)

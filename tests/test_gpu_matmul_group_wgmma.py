"""The Hopper kernel of dds/dsd at block sizes 16 and 32 with one accumulator tile per line
(cuda/matmul/wgmma_group.cuh; opt-in: JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA=1 for its
256-column form, =128 for the 128-column one; each test runs both), through the
checks of tests/test_gpu_matmul_small_wgmma.py: the float64 reference by relative error
(values and, on aligned sizes, both gradients), bf16 and f16, every transposition, odd
sizes, partial last groups of lines, one block, all blocks, no blocks, and a layout of
several groups with many steps each; each case in a fresh process whose launch log names
the kernel (each case runs twice: bitwise equal). Unaligned rows, and GPUs other than
sm_90, fall back to mma.sync.
"""

import jax
import numpy as np
import pytest

import jax_blocksparse as jbs
import test_gpu_matmul_small_wgmma as small
from reference import mark_case, run_python
from test_gpu_kernels import ALIGNED, UNALIGNED, check, is_mma_sync, launched, rows_aligned
from test_matmul import TRANSPOSES

pytestmark = pytest.mark.gpu

OPS = small.OPS
WIDTHS = ("256", "128")  # the kernel's columns per CTA, by the switch's value ("1": 256)


def switch(width):
    return {"JAX_BLOCKSPARSE_MATMUL_GROUP_WGMMA": "1" if width == "256" else width}


def many_steps_layout(bs, seed=3):
    """37 x 41 blocks at density 0.35: 41 lines (at 256 columns 3 groups at bs 16, the last
    of 9 lines, 6 at bs 32; at 128 columns twice as many), about 36 union rows per group
    (9-18 steps), several blocks a step."""
    return jbs.Layout(np.random.default_rng(seed).random((37, 41)) < 0.35, bs)


LAYOUTS = dict(small.LAYOUTS, many=many_steps_layout)


def run_layout_cases(cases):
    """small.run_layout_cases with LAYOUTS above."""
    small.run_layout_cases(cases, LAYOUTS)


def expect(kernels, case, group, width):
    want = (lambda k: f"wgmma-group(128x{width})" in k) if group else is_mma_sync
    assert all(map(want, kernels)), (case, kernels)


@pytest.mark.parametrize("width", WIDTHS)
def test_launch_log_names_the_records(width):
    """The calls carry records of the switch's width, and the launch log says so."""
    cases = [(op, (False, False), "bf16", bs, 200, "many", False) for op in OPS
             for bs in (16, 32)]
    stderr = run_python(f"import test_gpu_matmul_group_wgmma as t; t.run_layout_cases("
                        f"{cases!r})", JAX_BLOCKSPARSE_DEBUG="1", **switch(width)).stderr
    lines = [ln for ln in stderr.splitlines() if "kernel=wgmma-group" in ln]
    assert len(lines) >= len(cases) or not small.hopper(), stderr[-2000:]
    assert all(f" records={width} " in ln for ln in lines), lines


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("bs", (16, 32))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_every_transposition(variant, bs, width):
    cases = [(op, trans, variant, bs, free[op]) for op in OPS for trans in TRANSPOSES
             for free in (ALIGNED, UNALIGNED)]
    for case, kernels in launched(cases, **switch(width)).items():
        op, trans, _, _, free = case
        expect(kernels, case, small.hopper() and rows_aligned(op, trans, free), width)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("bs", (16, 32))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_layouts_and_gradients(variant, bs, width):
    """Values and both gradients on aligned sizes: every layout kind of
    test_gpu_matmul_small_wgmma.py and `many_steps_layout`; free sizes 200 and 8, 1000 on
    the random layouts (a tail in the last 128-row tile)."""
    cases = [(op, trans, variant, bs, free, kind, True)
             for op in OPS for kind in LAYOUTS for trans in ((False, False), (True, True))
             for free in ((200, 8) if kind not in ("sparse", "many") else (1000,))]
    cases += [(op, trans, variant, bs, 200, kind, False) for op in OPS
              for trans in ((False, True), (True, False)) for kind in ("sparse", "many")]
    for case, kernels in launched(cases, runner="test_gpu_matmul_group_wgmma.run_layout_cases",
                                  **switch(width)).items():
        if case[5] == "empty":  # no blocks: zeros, from the kernel or with nothing launched
            kernels = [k for k in kernels if "none" not in k]
        expect(kernels, case, small.hopper(), width)


def test_no_wgmma_overrides_the_switch():
    cases = [(op, (False, False), "bf16", bs, ALIGNED[op]) for op in OPS for bs in (16, 32)]
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_NO_WGMMA="1", **switch("256")).items():
        expect(kernels, case, False, "256")


@pytest.mark.parametrize("width", WIDTHS)
def test_batched_operands(width):
    """Both operands batched, or one shared by the batch (batch stride 0): the records
    serve every batch entry."""
    cases = [(op, (False, False), "bf16", bs, ALIGNED[op], shared)
             for op in OPS for bs in (16, 32) for shared in (None, 0, 1)]
    for case, kernels in launched(cases, runner="test_gpu_matmul_group_wgmma.run_batched",
                                  **switch(width)).items():
        expect(kernels, case, small.hopper(), width)


def run_batched(cases):
    for i, (op, trans, variant, bs, free, shared) in enumerate(cases):
        mark_case(repr(cases[i]))
        check(op, trans, variant, many_steps_layout(bs), np.random.default_rng(i), free,
              lead=(3,), shared=shared, platform=jax.devices()[0].platform)

"""The Hopper kernel of dds/dsd at block sizes 16 and 32 (cuda/matmul/wgmma_small.cuh, the
default there; JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 switches it off): against the
float64 reference (values and, on aligned sizes, both gradients; relative error; exact zeros
where no block contributes; bitwise equal over two runs), bf16 and f16, every transposition,
odd sizes (a free size that is not a multiple of the 128-row tile, empty block rows and
columns, a partial last group of lines, a single block, all blocks, no blocks), each case in
a fresh process whose launch log (JAX_BLOCKSPARSE_DEBUG=1) must name the kernel. On a GPU
other than sm_90, or with rows that are not 16-byte aligned, the switch falls back to the
mma.sync kernels, which the same checks then cover (and under the switch's "0").
"""

import jax
import numpy as np
import pytest

import jax_blocksparse as jbs
from reference import mark_case, run_python
from test_gpu_kernels import (ALIGNED, UNALIGNED, check, is_mma_sync, launched,
                              rows_aligned)
from test_matmul import LAYOUT_KINDS, TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA": "1"}  # the default, also spelled out
OPS = ("dds", "dsd")  # the DS-mode ops (dsd runs as a transposed dds)


def sparse_layout(bs, seed=0):
    """24 x 21 blocks at density 0.1 (random, like the benchmark's), block row 5 and column 7
    empty: 21 lines, so the last group of lines is partial at block sizes 16 (4 lines per
    group) and 32 (2 per group)."""
    mask = np.random.default_rng(seed).random((24, 21)) < 0.1
    mask[5, :] = mask[:, 7] = False
    mask[0, 0] = True
    return jbs.Layout(mask, bs)


LAYOUTS = dict(LAYOUT_KINDS, sparse=sparse_layout,
               wide=lambda bs: jbs.Layout(np.ones((3, 9), bool), bs))  # 9 lines: a tail group


def hopper():
    return jax.devices("gpu")[0].compute_capability == "9.0"


def is_small(kernel):
    return "wgmma-small" in kernel


def run_layout_cases(cases, layouts=LAYOUTS):
    """Runs each case (op, trans, variant, bs, free, layout kind, grads) after a `mark_case`
    line on stderr; checks values (and gradients with `grads`). `layouts`: the kinds."""
    for i, (op, trans, variant, bs, free, kind, grads) in enumerate(cases):
        mark_case(repr((op, trans, variant, bs, free, kind, grads)))
        layout = layouts[kind](bs)
        check(op, trans, variant, layout, np.random.default_rng(i), free, grads=grads,
              platform=jax.devices()[0].platform)


def expect(kernels, case, small):
    want = is_small if small else is_mma_sync
    assert all(map(want, kernels)), (case, kernels)


@pytest.mark.parametrize("bs", (16, 32))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_every_transposition(variant, bs):
    """Values on odd_layout (empty block row and column, 5 lines), every transposition, an
    aligned free size (not a multiple of 128) and an unaligned one (mma.sync)."""
    cases = [(op, trans, variant, bs, free[op]) for op in OPS for trans in TRANSPOSES
             for free in (ALIGNED, UNALIGNED)]
    for case, kernels in launched(cases, **SWITCH).items():
        op, trans, _, _, free = case
        expect(kernels, case, hopper() and rows_aligned(op, trans, free))


@pytest.mark.parametrize("bs", (16, 32))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_layouts_and_gradients(variant, bs):
    """Values and both gradients on aligned sizes (every launch of the op, the gradient's
    included, is then the small wgmma kernel on Hopper): a random sparse layout with an
    empty block row and column, a single block, all blocks, one block, no blocks, 9 lines;
    free sizes 200 and 1000 (a tail in the last 128-row tile) and 8 (one short tile)."""
    cases = [(op, trans, variant, bs, free, kind, True)
             for op in OPS for kind in LAYOUTS for trans in ((False, False), (True, True))
             for free in ((200, 8) if kind != "sparse" else (1000,))]
    cases += [(op, trans, variant, bs, 200, "sparse", False) for op in OPS
              for trans in ((False, True), (True, False))]
    for case, kernels in launched(cases, runner="test_gpu_matmul_small_wgmma.run_layout_cases",
                                  **SWITCH).items():
        if case[5] == "empty":  # no blocks: zeros, from the kernel or with nothing launched
            kernels = [k for k in kernels if "none" not in k]
        expect(kernels, case, hopper())


@pytest.mark.parametrize("records", ("", "0"))
@pytest.mark.parametrize("bs", (16, 32))
def test_host_merged_records(bs, records):
    """By default the calls carry the layout's 64-column group records (test_gpu_lowering
    checks the lowering) and the kernel takes its union rows and blocks from them; under
    JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=0 they carry none and every thread merges the
    lists itself: values and both gradients against float64 on every layout kind, bf16 and
    f16, and values under the mixed transpositions, either way."""
    cases = [(op, trans, variant, bs, free, kind, True) for op in OPS for kind in LAYOUTS
             for variant in ("bf16", "f16") for trans in ((False, False), (True, True))
             for free in ((200,) if kind != "sparse" else (1000,))]
    cases += [(op, trans, "bf16", bs, 200, "sparse", False) for op in OPS
              for trans in ((False, True), (True, False))]
    for case, kernels in launched(cases, runner="test_gpu_matmul_small_wgmma.run_layout_cases",
                                  JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=records, **SWITCH).items():
        if case[5] == "empty":
            kernels = [k for k in kernels if "none" not in k]
        expect(kernels, case, hopper())
    # the launch log names the records each call carried: those of the kernel's width (the
    # kernel reads them; a buffer that does not fit them is an error, not a silent merge),
    # or none
    stderr = run_python(f"import test_gpu_matmul_small_wgmma as t; t.run_layout_cases("
                        f"{cases[:4]!r})", JAX_BLOCKSPARSE_DEBUG="1",
                        JAX_BLOCKSPARSE_MATMUL_SMALL_RECORDS=records, **SWITCH).stderr
    lines = [ln for ln in stderr.splitlines() if "kernel=wgmma-small" in ln]
    assert lines or not hopper(), stderr[-2000:]
    assert all((" records=64 " in ln) == (records != "0") for ln in lines), lines


def test_no_wgmma_overrides_the_switch():
    cases = [(op, (False, False), "bf16", bs, ALIGNED[op]) for op in OPS for bs in (16, 32)]
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_NO_WGMMA="1", **SWITCH).items():
        expect(kernels, case, False)


def test_default_and_opt_out():
    """Without the switch the aligned bs 16/32 calls run the small kernel on Hopper; with
    JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA=0 they run mma.sync (values checked either way)."""
    cases = [(op, (False, False), variant, bs, ALIGNED[op]) for op in OPS for bs in (16, 32)
             for variant in ("bf16", "f16")]
    for case, kernels in launched(cases).items():
        expect(kernels, case, hopper())
    for case, kernels in launched(cases, JAX_BLOCKSPARSE_MATMUL_SMALL_WGMMA="0").items():
        expect(kernels, case, False)

"""sdd (the weight gradient's op) at block sizes 64 and 128 on the persistent TMA kernel with
block-row runs (cuda/matmul/wgmma_sdd_tma.cuh; JAX_BLOCKSPARSE_MATMUL_SDD_TMA=1 here; the
default takes only bs-128 calls that fill the card): chunks of 4 (2) sorted blocks, one
pass per block row they touch, the A panel loaded once per pass. Against the float64
reference (values, relative error, bitwise equal over two runs: `check`), bf16
and f16, every transposition, K with a tail (1000 = 15 x 64 + 40; 77: one full step and a
tail; 40: the tail alone) and of whole steps (128), layouts of one block, all blocks, no
blocks, empty rows and columns, rows of about 30 blocks (chunks that cross row ends, passes
of 1 to 4 blocks), batched and shared operands; each case in a fresh process whose launch
log (JAX_BLOCKSPARSE_DEBUG=1) names the kernel. The weight gradient of dds under the switch
too. Unaligned rows, block sizes 16/32 and GPUs other than sm_90 run the other kernels.
"""

import jax
import numpy as np
import pytest

import jax_blocksparse as jbs
from reference import kernels_by_case, mark_case, run_python
from test_gpu_kernels import check, launched, rows_aligned
from test_gpu_matmul_small_wgmma import LAYOUTS, hopper
from test_matmul import TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_SDD_TMA": "1"}
RUNNER = "test_gpu_matmul_sdd_tma.run_layout_cases"  # (op, trans, variant, bs, free,
                                                      #  layout kind, grads)


def long_rows_layout(bs, seed=3):
    """7 x 150 blocks at density 0.2 (about 30 per block row; one row empty, one full): the
    chunks of 4 cross row ends at every offset."""
    mask = np.random.default_rng(seed).random((7, 150)) < 0.2
    mask[2, :] = False
    mask[4, :] = True
    return jbs.Layout(mask, bs)


KINDS = dict(LAYOUTS, long=long_rows_layout)


def run_layout_cases(cases):
    """Each case (op, trans, variant, bs, free, layout kind, grads) checked after its
    `mark_case` line."""
    platform = jax.devices()[0].platform
    for i, (op, trans, variant, bs, free, kind, grads) in enumerate(cases):
        mark_case(repr(cases[i]))
        check(op, trans, variant, KINDS[kind](bs), np.random.default_rng(200 + i), free,
              grads=grads, platform=platform)


def is_sdd_tma(kernel):
    return "wgmma-tma sdd" in kernel


def expect(case, kernels):
    """The TMA kernel where it applies: Hopper, block size 64 or 128, aligned rows, blocks."""
    _, trans, _, bs, free, kind, _ = case
    want = hopper() and bs in (64, 128) and rows_aligned("sdd", trans, free) and kind != "empty"
    assert all(is_sdd_tma(k) == want for k in kernels if "none" not in k), (case, kernels)


@pytest.mark.parametrize("bs", (64, 128))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_every_transposition_and_layout(variant, bs):
    cases = [("sdd", trans, variant, bs, free, kind, False) for trans in TRANSPOSES
             for kind in ("long", "odd") for free in (1000, 77)]
    cases += [("sdd", (True, False), variant, bs, free, kind, False)
              for kind in KINDS if kind not in ("long", "odd") for free in (1000, 128, 40)]
    for case, kernels in launched(cases, runner=RUNNER, none_ok=lambda c: c[5] == "empty",
                                  **SWITCH).items():
        expect(case, kernels)


def test_default_takes_calls_that_fill_the_card():
    """Unset, the switch picks the TMA kernel at block size 128 for a call with an item (2
    blocks) for every SM: the `long` layout's 299 blocks give 150, more than any sm_90
    part has SMs (132 at most); the `odd` layout's few blocks and block size 64 keep
    the other kernels."""
    cases = [("sdd", (False, False), "bf16", bs, 1000, kind, False) for bs in (64, 128)
             for kind in ("long", "odd")]
    for case, kernels in launched(cases, runner=RUNNER).items():
        _, _, _, bs, _, kind, _ = case
        want = hopper() and bs == 128 and kind == "long"
        assert all(is_sdd_tma(k) == want for k in kernels), (case, kernels)


def test_small_block_sizes_keep_their_kernels():
    cases = [("sdd", (False, False), "bf16", bs, 1000, "long", False) for bs in (16, 32)]
    for case, kernels in launched(cases, runner=RUNNER, **SWITCH).items():
        expect(case, kernels)


def run_gradient_cases(cases):
    """Each case (op, trans, variant, bs, free, layout kind, lead) checked after its
    `mark_case` line: dds with both gradients (dW: sdd of x^T and dy), or a batched op
    (`shared`: None, or the operand shared by the batch)."""
    platform = jax.devices()[0].platform
    for i, (op, trans, variant, bs, free, kind, lead, shared) in enumerate(cases):
        mark_case(repr(cases[i]))
        check(op, trans, variant, KINDS[kind](bs), np.random.default_rng(300 + i), free,
              lead=lead, shared=shared, grads=not lead, platform=platform)


@pytest.mark.parametrize("bs", (64, 128))
def test_weight_gradient_and_batch(bs):
    """dds's weight gradient (its sdd launches) and batched sdd (both operands batched, or
    one shared by the batch: a tensor map's third extent 1) under the switch."""
    cases = [("dds", (False, False), "bf16", bs, 1000, kind, (), None)
             for kind in ("long", "sparse")]
    cases += [("sdd", (False, False), "bf16", bs, 600, "long", (3,), shared)
              for shared in (None, 0, 1)]
    stderr = run_python(f"import test_gpu_matmul_sdd_tma as t; t.run_gradient_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", **SWITCH).stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        sdd = [kernel for op, kernel in logs.get(repr(case), []) if op == "sdd"]
        assert sdd, (case, stderr[-3000:])
        assert all(is_sdd_tma(k) == hopper() for k in sdd), (case, sdd)


def test_no_wgmma_overrides_the_switch():
    cases = [("sdd", (False, False), "bf16", bs, 1000, "long", False) for bs in (64, 128)]
    for case, kernels in launched(cases, runner=RUNNER, JAX_BLOCKSPARSE_NO_WGMMA="1",
                                  **SWITCH).items():
        assert not any(map(is_sdd_tma, kernels)), (case, kernels)

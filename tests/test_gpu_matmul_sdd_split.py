"""sdd (the weight gradient's op) at block sizes 64 and 128 split over K in clusters of CTAs
(cuda/matmul/wgmma_lines.cuh, SplitEpilogue; opt-in: JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT=1):
each output block's K in 2 or 4 shares whose float32 partials are summed in rank order
through distributed shared memory, where `wg::SddSplits` models it to end sooner (few
blocks against the resident CTAs). Against the float64 reference (values, relative error,
bitwise equal over two runs: `check`), bf16 and f16, every transposition, a K with a tail
(1000 = 15 x 64 + 40), one of 3 steps (160: clusters of 4 whose rank 0 has no step) and
one of 2 (77: no split pays), layouts of 1 to about 50
blocks (a cluster of 4 or 2 per block), no blocks, batched operands; each case in a fresh
process whose launch log (JAX_BLOCKSPARSE_DEBUG=1) names the kernel and the split chosen
(" sdd-split=S"). The weight gradient of dds (sdd of x^T and dy) under the switch too.
"""

import re

import jax
import numpy as np
import pytest

from reference import mark_case
from test_gpu_kernels import check, launched, rows_aligned
from test_gpu_matmul_small_wgmma import LAYOUTS, hopper
from test_matmul import TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_SDD_SPLIT": "1"}
RUNNER = "test_gpu_matmul_small_wgmma.run_layout_cases"  # (op, trans, variant, bs, free,
                                                          #  layout kind, grads)
SMALL = ("odd", "all", "single", "one_by_one")  # at most 20 blocks: clusters of 4 at K 1000


def split_of(kernel):
    """The CTAs per block the launch log names (None: the split path did not run)."""
    found = re.search(r"sdd-split=(\d)", kernel)
    return int(found.group(1)) if found else None


def kernels_of(case, kernels):
    return [k for k in kernels if "none" not in k] if case[5] == "empty" else kernels


@pytest.mark.parametrize("bs", (64, 128))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_split_every_transposition_and_layout(variant, bs):
    cases = [("sdd", trans, variant, bs, 1000, kind, False) for trans in TRANSPOSES
             for kind in ("sparse", "odd")]
    cases += [("sdd", (True, False), variant, bs, free, kind, False)
              for kind in LAYOUTS if kind not in ("sparse", "odd") for free in (1000, 160, 77)]
    for case, kernels in launched(cases, runner=RUNNER, none_ok=lambda c: c[5] == "empty",
                                  **SWITCH).items():
        _, trans, _, _, free, kind, _ = case
        splits = [split_of(k) for k in kernels_of(case, kernels)]
        if not (hopper() and rows_aligned("sdd", trans, free)):
            assert all(s is None for s in splits), (case, kernels)
        elif free == 77:  # two K steps: a split never ends sooner
            assert all(s == 1 for s in splits), (case, kernels)
        elif kind in SMALL:  # a round of clusters of 4 (or 2)
            assert all(s in (2, 4) for s in splits), (case, kernels)
        else:
            assert all(s in (1, 2, 4) for s in splits), (case, kernels)


def run_gradient_cases(cases):
    """Each case (op, trans, variant, bs, free, layout kind, lead) checked after its
    `mark_case` line: dds with both gradients (dW: sdd of x^T and dy), or a batched op."""
    platform = jax.devices()[0].platform
    for i, (op, trans, variant, bs, free, kind, lead) in enumerate(cases):
        mark_case(repr(cases[i]))
        check(op, trans, variant, LAYOUTS[kind](bs), np.random.default_rng(100 + i), free,
              lead=lead, grads=not lead, platform=platform)


@pytest.mark.parametrize("bs", (64, 128))
def test_split_weight_gradient_and_batch(bs):
    """dds's weight gradient (its sdd launches) and a batched sdd (blocks x batch against
    the resident clusters) under the switch: values, gradients, the split logged."""
    from reference import kernels_by_case, run_python
    cases = [("dds", (False, False), "bf16", bs, 1000, kind, ()) for kind in ("odd", "sparse")]
    cases += [("sdd", (True, False), "bf16", bs, 1000, "odd", (3,))]
    stderr = run_python(f"import test_gpu_matmul_sdd_split as t; t.run_gradient_cases({cases!r})",
                        JAX_BLOCKSPARSE_DEBUG="1", **SWITCH).stderr
    logs = kernels_by_case(stderr)
    for case in cases:
        sdd = [kernel for op, kernel in logs.get(repr(case), []) if op == "sdd"]
        assert sdd, (case, stderr[-3000:])
        if hopper():
            assert all(split_of(k) in (1, 2, 4) for k in sdd), (case, sdd)
        if hopper() and case[5] == "odd":  # at most 20 blocks (x 3): clusters of 2 or 4
            assert all(split_of(k) in (2, 4) for k in sdd), (case, sdd)


@pytest.mark.parametrize("bs", (64, 128))
def test_split_tf32(bs):
    """float32 at default precision on TF32 wgmma (JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1; its
    steps are 32 of K) split the same way: values against float64 at TF32's tolerance."""
    cases = [("sdd", trans, "f32", bs, free, kind, False) for trans in ((True, False),
                                                                        (False, True))
             for kind in ("odd", "sparse") for free in (1000, 160)]
    for case, kernels in launched(cases, runner=RUNNER, JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA="1",
                                  **SWITCH).items():
        if hopper():
            assert all("tf32" in k and split_of(k) in (1, 2, 4) for k in kernels), (case, kernels)
            if case[5] == "odd":
                assert all(split_of(k) in (2, 4) for k in kernels), (case, kernels)

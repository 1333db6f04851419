"""The SDD-mode tile kernel in block-row runs (cuda/matmul/mma_sync.cuh SddRuns16/32, the default;
JAX_BLOCKSPARSE_MATMUL_SDD_RUNS=0 switches it off; issue 20): sdd at block sizes 16 and 32, up to 128 / bs
output blocks of one block row per CTA. Against the float64 reference (values, relative
error, bitwise equal over two runs: `check`), bf16 and f16, every transposition, aligned and
unaligned rows, layouts whose chunks of entries cross block rows (the random sparse one:
0-4 blocks a row, an empty row and column), a single block, all blocks, no blocks; each
case in a fresh process whose launch log (JAX_BLOCKSPARSE_DEBUG=1) must name the kernel.
With the switch at 0 sdd runs the one-block kernel.
"""

import pytest

from test_gpu_kernels import ALIGNED, UNALIGNED, is_mma_sync, launched
from test_gpu_matmul_small_wgmma import LAYOUTS
from test_matmul import TRANSPOSES

pytestmark = pytest.mark.gpu

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_SDD_RUNS": "1"}
RUNNER = "test_gpu_matmul_small_wgmma.run_layout_cases"  # (op, trans, variant, bs, free,
                                                          #  layout kind, grads)


def is_runs(kernel):
    return "block-row runs" in kernel


def is_empty(case):
    return case[5] == "empty"


def kernels_of(case, kernels):
    """The case's launches of sdd (none for a layout without blocks: zeros, nothing run)."""
    return [k for k in kernels if "none" not in k] if is_empty(case) else kernels


@pytest.mark.parametrize("bs", (16, 32))
@pytest.mark.parametrize("variant", ("bf16", "f16"))
def test_runs_every_transposition_and_layout(variant, bs):
    """Every transposition on the sparse and odd layouts, aligned and unaligned K; the other
    layouts with x transposed (the weight gradient's sdd: x^T dy)."""
    cases = [("sdd", trans, variant, bs, free, kind, False) for trans in TRANSPOSES
             for kind in ("sparse", "odd") for free in (ALIGNED["sdd"], UNALIGNED["sdd"])]
    cases += [("sdd", (True, False), variant, bs, ALIGNED["sdd"], kind, False)
              for kind in LAYOUTS if kind not in ("sparse", "odd")]
    for case, kernels in launched(cases, runner=RUNNER, none_ok=is_empty, **SWITCH).items():
        assert all(map(is_runs, kernels_of(case, kernels))), (case, kernels)


def test_default_runs_block_rows_and_the_switch_turns_it_off():
    cases = [("sdd", (True, False), "bf16", bs, ALIGNED["sdd"], "sparse", False)
             for bs in (16, 32)]
    for case, kernels in launched(cases, runner=RUNNER).items():
        assert all(map(is_runs, kernels)), (case, kernels)
    for case, kernels in launched(cases, runner=RUNNER,
                                  JAX_BLOCKSPARSE_MATMUL_SDD_RUNS="0").items():
        assert all(is_mma_sync(k) and not is_runs(k) for k in kernels), (case, kernels)

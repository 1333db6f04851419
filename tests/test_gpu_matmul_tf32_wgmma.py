"""float32 matmuls on the Hopper wgmma kernel with tf32 products (issue 20 item 3; opt-in:
JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA=1, cuda/matmul/wgmma_lines.cuh). wgmma reads 32-bit
operands K-major only, so the lowering passes every call K-major operands (`_cuda._tf32_wgmma`:
a dense operand transposed by XLA, a sparse operand's blocks each transposed with the flag
that reads them back, the block lists of the call's own orientation).

On the CPU: the lowering for "cuda" passes those transposes and flags, only for float32 at
default precision at block sizes 64 / 128 under the switch. On a GPU (`gpu`): values and both
gradients against the float64 reference, every op and transposition, block sizes 64 and 128,
aligned free sizes (the kernel's launches named) and odd ones (rows that are not 16-byte
aligned: mma.sync's kernel on the same K-major operands), exact zeros where no block
contributes, bitwise equal over two runs; each case in a fresh process whose launch log
(JAX_BLOCKSPARSE_DEBUG=1) must name the kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda, _jax_internals as jint, _partitioning
from reference import mark_case
from test_gpu_kernels import ALIGNED, UNALIGNED, check, is_mma_sync, launched
from test_matmul import LAYOUT_KINDS, TRANSPOSES

SWITCH = {"JAX_BLOCKSPARSE_MATMUL_TF32_WGMMA": "1"}
OPS = ("sdd", "dsd", "dds")
# each op's transpose flags, as the custom call names them (first operand, second)
FLAGS = {"sdd": ("trans_a", "trans_b"), "dsd": ("trans_s", "trans_b"),
         "dds": ("trans_a", "trans_w")}


def call(op, trans, dtype, bs, precision=None):
    """(function of the two operands, the operands) of one call of `op` on a 3 x 2 layout."""
    layout = jbs.Layout(np.array([[1, 0], [1, 1], [0, 1]], bool), bs)
    p, q = layout.shape
    t1, t2 = trans
    dense = lambda rows, cols, t: jnp.ones((cols, rows) if t else (rows, cols), dtype)
    blocks = jnp.ones((layout.nnz, bs, bs), dtype)
    fn, args = {
        "sdd": (jbs.sdd, (dense(p, 96, t1), dense(96, q, t2))),
        "dsd": (jbs.dsd, (blocks, dense(p if t1 else q, 96, t2))),
        "dds": (jbs.dds, (dense(96, q if t2 else p, t1), blocks))}[op]
    names = FLAGS[op]
    return (lambda x, y: fn(x, y, layout=layout, precision=precision,
                            **{names[0]: t1, names[1]: t2})), args


@pytest.fixture
def cuda_lowering(monkeypatch):
    """The matmul lowerings registered for "cuda" (on a machine without the extension too),
    the switch on and the device taken for an sm_90a one."""
    if not jbs.cuda_built():
        for prim, rule in _cuda.MATMUL_LOWERINGS:
            jint.register_lowering_rule(_partitioning.LOCAL[prim],
                                        _cuda._matmul_lowering(prim, rule), "cuda")
    monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(matmul_tf32_wgmma=True,
                                                                    no_wgmma=False))
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)


def lowered(op, trans, dtype, bs, precision=None):
    """(the custom call's line, the number of transposes) of the call lowered for cuda."""
    fn, args = call(op, trans, dtype, bs, precision)
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    (line,) = [ln for ln in text.splitlines() if f"@jax_blocksparse_{op}(" in ln]
    return line, text.count("stablehlo.transpose")


@pytest.mark.parametrize("op", OPS)
def test_lowering_passes_k_major_operands(cuda_lowering, op):
    """Under the switch a float32 call at block size 64 / 128 reaches the kernel with the
    first operand's flag false and the second's true, one transpose per operand that was
    stored the other way; bfloat16, precision=HIGHEST and block size 32 keep their flags."""
    first, second = FLAGS[op]
    for trans in TRANSPOSES:
        for bs in (64, 128):
            line, transposes = lowered(op, trans, jnp.float32, bs)
            assert f"{first} = false" in line and f"{second} = true" in line, (trans, line)
            assert transposes == int(trans[0]) + int(not trans[1]), (trans, transposes)
        for dtype, bs, precision in ((jnp.bfloat16, 64, None), (jnp.float32, 32, None),
                                     (jnp.float32, 128, "highest")):
            line, transposes = lowered(op, trans, dtype, bs, precision)
            flags = [f"{name} = {str(t).lower()}" for name, t in zip(FLAGS[op], trans)]
            assert all(f in line for f in flags) and transposes == 0, (dtype, bs, line)


def run_layout_cases(cases):
    """Runs each case (op, trans, variant, bs, free, layout kind) after a `mark_case` line
    on stderr; checks values and both gradients."""
    for i, (op, trans, variant, bs, free, kind) in enumerate(cases):
        mark_case(repr((op, trans, variant, bs, free, kind)))
        check(op, trans, variant, LAYOUT_KINDS[kind](bs), np.random.default_rng(i), free,
              platform=jax.devices()[0].platform)


def hopper():
    return jax.devices("gpu")[0].compute_capability == "9.0"


def k_major_rows_aligned(op, free):
    """Whether the K-major dense operands' rows are 16-byte aligned (float32): their length
    is K, the free size for sdd, a multiple of the block size for dsd and dds."""
    return op != "sdd" or free % 4 == 0


@pytest.mark.gpu
@pytest.mark.parametrize("bs", (64, 128))
def test_every_transposition(bs):
    """odd_layout (an empty block row and column), every op and transposition, an aligned
    and an odd free size: the tf32 kernel on Hopper where the K-major operands' rows are
    16-byte aligned, mma.sync elsewhere (sdd at the odd size)."""
    cases = [(op, trans, "f32", bs, free[op]) for op in OPS for trans in TRANSPOSES
             for free in (ALIGNED, UNALIGNED)]
    for case, kernels in launched(cases, **SWITCH).items():
        tf32 = hopper() and k_major_rows_aligned(case[0], case[4])
        assert all(k == "wgmma(tf32)" if tf32 else is_mma_sync(k) for k in kernels), (
            case, kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("bs", (64, 128))
def test_layouts_and_gradients(bs):
    """Values and both gradients (each gradient's launch on the same kernel) on a single
    block, all blocks, one block, no blocks and odd_layout, free size 200 (a tail in the last
    row tile) and 8 (one short tile)."""
    cases = [(op, trans, "f32", bs, free, kind) for op in OPS for kind in LAYOUT_KINDS
             for trans in ((False, False), (True, True)) for free in (200, 8)]
    runner = "test_gpu_matmul_tf32_wgmma.run_layout_cases"
    for case, kernels in launched(cases, runner=runner,
                                  none_ok=lambda case: case[5] == "empty", **SWITCH).items():
        kernels = [k for k in kernels if "none" not in k]
        assert all(k == "wgmma(tf32)" if hopper() else is_mma_sync(k) for k in kernels), (
            case, kernels)


@pytest.mark.gpu
def test_off_by_default_and_under_no_wgmma():
    cases = [(op, (False, False), "f32", bs, ALIGNED[op]) for op in OPS for bs in (64, 128)]
    for env in ({}, dict(SWITCH, JAX_BLOCKSPARSE_NO_WGMMA="1")):
        for case, kernels in launched(cases, **env).items():
            assert all(map(is_mma_sync, kernels)), (env, case, kernels)


"""Shared fixtures: the `gpu` marker skips without a GPU and the compiled kernels; the
Python subprocesses that tests start (the examples, checks under other kernel switches)
share a persistent XLA compilation cache for the session, so a program compiled by one of
them is not compiled again by the next (the same model run again, resumed, on the CPU and
the GPU)."""

import os
import shutil
import tempfile

import jax
import pytest

import jax_blocksparse as jbs

# Each pytest-xdist worker (the README runs two) and each subprocess allocates GPU memory as
# it goes, not 75% of the card up front (read when jax first initializes its backends).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Read by the jax of each subprocess when it is imported (this process's jax is already
# imported: its in-memory cache serves it). Every program is cached (no minimum compile time).
_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="jax-blocksparse-tests-xla-cache-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE_DIR,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:  # made by this process (not inherited from a controller)
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def _has_gpu():
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu() and jbs.cuda_available():
        return
    why = "needs an NVIDIA GPU and the compiled CUDA kernels"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


def attention_kernel_rows(d256=None):
    """The rows of the C++ attention dispatch table (cuda/attention/dispatch.cu,
    kAttentionKernels), as the extension reports them (`_cuda.ATTENTION_KERNELS`), for the
    tests that lower for "cuda" or route calls where the extension is not built
    (`attention_kernels`); tests/test_build.py checks them against the extension's where
    it is. `d256`: with the
    head-dim-256 Hopper backward rows, which the extension reports unless
    JAX_BLOCKSPARSE_ATTN_BWD_D256=0 (None: as this process's environment says)."""
    from jax_blocksparse._cuda import AttentionKernel as Row
    if d256 is None:
        d256 = os.environ.get("JAX_BLOCKSPARSE_ATTN_BWD_D256") != "0"  # as OnUnlessZero
    rows = []
    fa2_fwd = {(64, 0): "fa2_forward(64-row CTA)", (64, 1): "fa2_forward(64-row CTA)",
               (128, 0): "fa2_forward(64-row CTA)", (128, 1): "fa2_forward(128-row CTA)"}
    fa3_fwd = {(128, 2): "fa3_forward(wgmma, tma, ws, pingpong)",
               (128, 3): "fa3_forward(wgmma, tma, ws)",
               (64, 2): "fa3_forward(wgmma, tma, ws, 64-row CTA)",
               (64, 3): "fa3_forward(wgmma, tma, ws, 64-row CTA)"}
    fa2_bwd = "fa2_backward(delta, dq 64-row, dk/dv per kv head)"
    fa3_bwd = {2: "fa3_backward(wgmma, tma, ws, overlap)", 3: "fa3_backward(wgmma, tma, ws)"}
    onepass = "fa3_backward(one pass, deterministic dq)"
    pairs = lambda dims: [(t, d) for t in ("bfloat16", "float16") for d in dims]
    for t, d in pairs((64, 128)):  # JBS_FWD_ROWS
        rows += [Row(t, d, bs, False, v, name, False, False, False, True)
                 for (bs, v), name in fa2_fwd.items()]
    for t, d in pairs((64, 128)) + [("bfloat16", 96), ("bfloat16", 256), ("float16", 96),
                                    ("float16", 256)]:  # JBS_FWD_SM90_ROWS
        rows += [Row(t, d, bs, False, v, name[:-1] + ", persistent)" if persistent else name,
                     True, False, persistent, True)
                 for persistent in (False, True) for (bs, v), name in fa3_fwd.items()]
    for t, d in pairs((64, 128)):  # JBS_BWD_ROWS
        rows += [Row(t, d, bs, True, 0, fa2_bwd, False, False, False, True) for bs in (64, 128)]
    for t, d in pairs((64, 128)):  # JBS_BWD_SM90_ROWS
        rows += [Row(t, d, 128, True, v, name, True, False, False, True)
                 for v, name in fa3_bwd.items()]
    for t in ("bfloat16", "float16") if d256 else ():  # JBS_BWD_SM90_D256_ROWS
        rows += [Row(t, 256, 128, True, v, name[:-1] + ", d256 64-row CTAs)", True, False,
                     False, True) for v, name in fa3_bwd.items()]
    for t, d in pairs((64, 128)):  # JBS_BWD_SM90_ONEPASS_ROWS
        rows.append(Row(t, d, 128, True, 4, onepass, True, True, False, True))
    return tuple(rows)


def decode_kernel_rows():
    """The rows of the C++ decode dispatch table (cuda/attention/decode.cu,
    kAttentionDecodeKernels), as the extension reports them (`_cuda.DECODE_KERNELS`), for
    the tests that lower for "cuda" or route decode calls where the extension is not built
    (`decode_kernels`); tests/test_build.py checks them against the extension's."""
    from jax_blocksparse._cuda import DecodeKernel as Row
    caches = ((None, ""), ("float8_e4m3fn", ", fp8 e4m3 cache"),
              ("float8_e5m2", ", fp8 e5m2 cache"))  # None: k and v in q's dtype
    rows = []
    for t in ("bfloat16", "float16"):  # JBS_DECODE_DTYPE
        for kv, suffix in caches:  # JBS_DECODE_ROWS
            rows += [Row(t, kv or t, d, f"decode(split-kv, 16-key warp tiles{suffix})")
                     for d in (64, 96, 128, 256)]
    return tuple(rows)


@pytest.fixture
def decode_kernels(monkeypatch):
    """`_cuda.DECODE_KERNELS` as the extension reports them: its own where it is built,
    else `decode_kernel_rows()`."""
    from jax_blocksparse import _cuda
    if _cuda._ext is None:
        monkeypatch.setattr(_cuda, "DECODE_KERNELS", decode_kernel_rows())
    return _cuda.DECODE_KERNELS


@pytest.fixture
def attention_kernels(monkeypatch):
    """`_cuda.ATTENTION_KERNELS` as the extension reports them: its own where it is built,
    else `attention_kernel_rows()`."""
    from jax_blocksparse import _cuda
    if _cuda._ext is None:
        monkeypatch.setattr(_cuda, "ATTENTION_KERNELS", attention_kernel_rows())
    return _cuda.ATTENTION_KERNELS

"""The package's build: where nvcc exists, the CUDA extension must have been compiled."""

import os
import shutil

import jax
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: pure-JAX build")
@pytest.mark.skipif(os.environ.get("JAX_BLOCKSPARSE_DISABLE_CUDA", "0") != "0",
                    reason="CUDA path disabled by the environment")
def test_cuda_extension_is_built_and_registered():
    assert _cuda._ext is not None, "nvcc is present but the CUDA extension was not built"
    assert jbs.cuda_built()
    targets = set(_cuda._ext.registrations())
    assert {"jax_blocksparse_sdd", "jax_blocksparse_dsd", "jax_blocksparse_dds"} <= targets


def test_cuda_available_means_the_kernels_can_run_here():
    """`cuda_available()`: built (and enabled) *and* a CUDA device visible."""
    try:
        has_cuda_device = bool(jax.devices("cuda"))
    except RuntimeError:
        has_cuda_device = False
    assert jbs.cuda_available() == (jbs.cuda_built() and has_cuda_device)
    if not has_cuda_device:
        assert not jbs.cuda_available()

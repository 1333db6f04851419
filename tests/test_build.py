"""The package's build: where nvcc exists, the CUDA extension must have been compiled."""

import os
import shutil

import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: pure-JAX build")
@pytest.mark.skipif(os.environ.get("JAX_BLOCKSPARSE_DISABLE_CUDA", "0") != "0",
                    reason="CUDA path disabled by the environment")
def test_cuda_extension_is_built_and_registered():
    assert _cuda._ext is not None, "nvcc is present but the CUDA extension was not built"
    assert jbs.cuda_available()
    targets = set(_cuda._ext.registrations())
    assert {"jax_blocksparse_sdd", "jax_blocksparse_dsd", "jax_blocksparse_dds"} <= targets

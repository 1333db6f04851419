"""The package's build: where nvcc exists, the CUDA extension must have been compiled."""

import os
import re
import shutil
import subprocess

import jax
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: pure-JAX build")
@pytest.mark.skipif(os.environ.get("JAX_BLOCKSPARSE_CUDA_ARCHS") == "",
                    reason="built without CUDA: JAX_BLOCKSPARSE_CUDA_ARCHS is empty")
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


def _cmake():
    """A `cmake` that can configure this project (3.26 or newer), or None."""
    path = shutil.which("cmake")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    return path if found and tuple(map(int, found.groups())) >= (3, 26) else None


@pytest.mark.skipif(_cmake() is None, reason="no cmake >= 3.26")
def test_empty_cuda_archs_builds_no_cuda_code(tmp_path):
    """`JAX_BLOCKSPARSE_CUDA_ARCHS=` (empty) configures without CUDA even where nvcc is
    installed: nothing for the GPU is compiled (the README's fast install on a CPU)."""
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_BLOCKSPARSE_CUDA_ARCHS="")
    result = subprocess.run([_cmake(), "-S", source, "-B", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "building without CUDA kernels" in result.stdout
    assert "CMAKE_CUDA_COMPILER" not in (tmp_path / "CMakeCache.txt").read_text()

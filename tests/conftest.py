"""Shared fixtures: the `gpu` marker skips without a GPU and the compiled kernels."""

import jax
import pytest

import jax_blocksparse as jbs


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

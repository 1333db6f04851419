"""jax_blocksparse: block-sparse matmul and attention for JAX, with CUDA kernels.

On an NVIDIA GPU (with the compiled extension) the ops run this package's CUDA kernels
through XLA FFI custom calls; on every other platform, the same functions run as pure JAX.

The Flax modules, `jax_blocksparse.nn` (linen) and `jax_blocksparse.nnx`, load on first
use (`jbs.nn.BlockSparseDense`), so that importing this package does not import flax.
"""

import importlib

from . import layouts, tensor_parallel
from ._cuda import cuda_available, cuda_built
from .attention import attention
from .block_mask import BlockMask
from .conversions import from_dense, to_dense
from .layout import Layout
from .matmul import BLOCK_SIZES, DTYPES, dds, dsd, matmul, sdd
from .softmax import softmax

__version__ = "0.1.0"

__all__ = ["Layout", "BlockMask", "layouts", "tensor_parallel", "to_dense", "from_dense", "matmul", "sdd", "dsd",
           "dds", "attention", "softmax", "cuda_available", "cuda_built", "BLOCK_SIZES", "DTYPES"]

_LAZY_SUBMODULES = ("nn", "nnx", "bench")


def __getattr__(name):
    """Import the submodules that need optional dependencies (flax) on first access."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))

"""jax_blocksparse: block-sparse matmul and attention for JAX, with CUDA kernels.

On an NVIDIA GPU (with the compiled extension) the ops run this package's CUDA kernels
through XLA FFI custom calls; on every other platform, the same functions run as pure JAX.
"""

from . import layouts
from ._cuda import cuda_available
from .attention import attention
from .conversions import from_dense, to_dense
from .layout import Layout
from .matmul import BLOCK_SIZES, DTYPES, dds, dsd, matmul, sdd
from .softmax import softmax

__version__ = "0.1.0"

__all__ = ["Layout", "layouts", "to_dense", "from_dense", "matmul", "sdd", "dsd", "dds",
           "attention", "softmax", "cuda_available", "BLOCK_SIZES", "DTYPES"]

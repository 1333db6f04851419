"""Registers the installed CUDA module's FFI handlers with XLA's CPU backend: registration
checks, there as on a GPU, that XLA accepts the FFI API version the handlers were built
against (a handler built against newer headers than this jax's is refused). Nothing runs.

    python .ci/ffi_version_check.py   # with the jax to check installed
"""

import glob
import importlib.machinery
import importlib.util
import os
import sysconfig

import jax

# The module alone, by its path: the package's Python side is not what this checks.
(path,) = glob.glob(os.path.join(sysconfig.get_paths()["platlib"], "jax_blocksparse",
                                 "_jax_blocksparse_cuda*.so"))
loader = importlib.machinery.ExtensionFileLoader("jax_blocksparse._jax_blocksparse_cuda", path)
module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
loader.exec_module(module)

jax.devices()  # the CPU backend exists, so registration is not deferred
for name, capsule in module.registrations().items():
    jax.ffi.register_ffi_target(f"ffi_version_check_{name}", capsule, platform="cpu")
print(f"jax {jax.__version__}: {len(module.registrations())} handlers of {path} registered")

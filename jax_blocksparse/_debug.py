"""`JAX_BLOCKSPARSE_DEBUG`: which implementation each primitive runs, and why.

Read once when the package loads. When set (any value but "" or "0"), every primitive that
lowers to its pure-JAX implementation prints one line on stderr as the program is compiled,
on every platform: `[jax_blocksparse] <op> <operand shapes>: pure-JAX path (<reason>)`.
The CUDA kernels print their own line per launch (`src/debug.h`; `=2` also times it).
"""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp


def _level() -> int:
    value = os.environ.get("JAX_BLOCKSPARSE_DEBUG", "0").strip() or "0"
    return int(value) if value.isdigit() else 1


LEVEL = _level()


def call(prim_name: str, avals) -> str:
    """A primitive's call as the lines name it: `blocksparse_dds_local` on its float
    operands' `avals` -> `dds float32[8, 64] float32[4, 32, 32]` (not the metadata)."""
    op = prim_name.removeprefix("blocksparse_").removesuffix("_local")
    return " ".join([op] + [f"{a.dtype}{list(a.shape)}" for a in avals
                            if jnp.issubdtype(a.dtype, jnp.floating)])


def pure_path(what: str, why: str) -> None:
    """Under the switch, say that the call `what` runs the pure-JAX path, and why."""
    if LEVEL:
        print(f"[jax_blocksparse] {what}: pure-JAX path ({why})", file=sys.stderr, flush=True)


def default_reason(ctx) -> str:
    """Why a primitive took its default (pure-JAX) lowering on the platform of `ctx`."""
    platforms = ", ".join(ctx.module_context.platforms)
    if "cuda" in platforms:
        return ("no CUDA lowering registered: the extension is not built, or "
                "JAX_BLOCKSPARSE_DISABLE_CUDA is set")
    return f"platform {platforms}: the CUDA kernels run on NVIDIA GPUs only"

"""Every use of jax's unstable extension APIs, in one place.

`jax.extend` and `jax.interpreters.*` change between releases; keeping them behind this
module makes a jax upgrade one file's change. Supported: jax 0.6 through 0.11.
"""

from __future__ import annotations

from functools import partial

import jax
from jax.interpreters import ad, batching, mlir

try:
    from jax.extend.core import Primitive
except ImportError:  # pragma: no cover - very old jax
    from jax.core import Primitive

from jax._src import dispatch

Zero = ad.Zero
is_undefined_primal = ad.is_undefined_primal
not_mapped = None  # batching.not_mapped: an operand without the mapped axis


def instantiate(tangent):
    """A tangent as an array (symbolic zeros made concrete)."""
    return ad.instantiate_zeros(tangent)


def define_primitive(name: str, *, multiple_results: bool = False) -> Primitive:
    """A new primitive whose eager calls run through its compiled lowering."""
    prim = Primitive(name)
    prim.multiple_results = multiple_results
    prim.def_impl(partial(dispatch.apply_primitive, prim))
    return prim


def lower_fun(impl, *, multiple_results: bool = False):
    """A lowering rule `(ctx, *args, **params)` that traces the pure-JAX function `impl`."""
    return mlir.lower_fun(impl, multiple_results=multiple_results)


def register_lowering_rule(prim, rule, platform: str | None) -> None:
    """Lower `prim` on `platform` (e.g. "cuda"; None: every platform) with
    `rule(ctx, *args, **params)`."""
    mlir.register_lowering(prim, rule, platform=platform)


def reshape(ctx, value, aval_out):
    """Reshape the MLIR `value` to `aval_out`'s shape (inside a lowering rule)."""
    from jax._src.interpreters import mlir as mlir_internal
    return mlir_internal.reshape(ctx, value, aval_out)


def ir_constant(array):
    """An MLIR constant holding the numpy `array` (inside a lowering rule)."""
    return mlir.ir_constant(array)


def register_jvp(prim, rule) -> None:
    """`rule(primals, tangents, **params) -> (primal_out, tangent_out)`."""
    ad.primitive_jvps[prim] = rule


def register_transpose(prim, rule) -> None:
    """`rule(cotangent, *operands, **params) -> per-operand cotangents (None if defined)`."""
    ad.primitive_transposes[prim] = rule


def register_batching(prim, rule) -> None:
    """`rule(args, dims, **params) -> (out, out_dim)`."""
    batching.primitive_batchers[prim] = rule


def match_varying_axes(*args):
    """Inside `shard_map`, give all operands the union of their varying manual axes (jax's
    own binary primitives do this), so that the transpose of an operand that was
    replicated sums its cotangent over the axes. Outside `shard_map`, returns `args`."""
    from jax._src import core

    for name in ("auto_insert_reshard", "standard_insert_pvary"):  # jax >= 0.10, < 0.10
        insert = getattr(core, name, None)
        if insert is not None:
            return tuple(insert(*args))
    return args


def varying_over(x, axis_name):
    """`x` typed as varying over the manual mesh axis `axis_name` inside `shard_map`
    (`jax.lax.pcast`, `pvary` before it); as is where it varies already, and where the jax
    tracks no varying axes (outside `shard_map` too: no axis there, no type to change)."""
    aval = jax.typeof(x) if hasattr(jax, "typeof") else None
    varying = getattr(aval, "vma", None)  # jax < 0.10
    if varying is None:
        varying = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    if varying is None or axis_name in varying:
        return x
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, (axis_name,), to="varying")
    return jax.lax.pvary(x, (axis_name,)) if hasattr(jax.lax, "pvary") else x


def register_ffi_target(name: str, capsule, platform: str = "CUDA") -> None:
    jax.ffi.register_ffi_target(name, capsule, platform=platform)


def partitioned_lowering(ctx) -> bool:
    """Whether this lowering runs under SPMD partitioning over several devices (a `jit`
    with shardings over a mesh), rather than on one device or inside a `shard_map`. Inside
    a `shard_map` manual over only some axes this is False too: `custom_partitioning`
    there fails in XLA's partitioners (Shardy and GSPMD) or in jax, so the primitives
    lower whole and XLA partitions them over the automatic axes as it can."""
    from jax._src import sharding_impls
    context = ctx.module_context.axis_context
    if isinstance(context, sharding_impls.ShardingContext):
        return context.num_devices > 1
    if isinstance(context, sharding_impls.SPMDAxisContext):
        return not context.manual_axes and context.mesh.size > 1
    return False


def require_devices_during_lowering(prim) -> None:
    """Lower `prim` with the device assignment known (its lowering may partition through
    `custom_partitioning`, which needs it)."""
    from jax._src import dispatch
    registry = getattr(dispatch, "prim_requires_devices_during_lowering", None)
    if registry is not None:  # (jax 0.10, 0.11)
        registry.add(prim)


def explicit_axes(mesh) -> tuple:
    """The names of `mesh`'s axes of type Explicit (JAX's explicit sharding mode)."""
    from jax.sharding import AxisType
    return tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)


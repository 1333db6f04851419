"""SPMD partitioning of the primitives (jit over a `Mesh` with shardings).

Each primitive `p` lowers, on every platform, through `jax.experimental.custom_partitioning`
around a *local* primitive that carries `p`'s platform lowerings (the pure-JAX reference,
the CUDA custom calls). The partitioner then runs the local primitive on each device's
shards instead of gathering the operands (the custom calls alone would be replicated by
XLA). `p` keeps its JVP, transpose and batching rules: differentiation and `vmap` happen
before lowering. Inside `shard_map` and on one device the local primitive is lowered
directly: on each device's shards when every mesh axis is manual; whole over the automatic
axes of a partially manual one (XLA rejects `custom_partitioning` there), which the
tensor-parallel layers therefore avoid (`_layers.parallel_dense`).

A primitive describes its dimensions by *factors* (`Factors`): each operand and result
dimension is a tuple of factor names (a compound dimension lists its factors, major
first, e.g. query heads `(kv_head, group)`). A factor is sharded alike wherever it appears;
only the `shardable` ones may be sharded at all (batch entries, rows of a dense operand,
heads), the others stay replicated (layout dimensions, positions, the head dim). A
shardable factor of the operands that no result has (a contraction: `sdd`'s inner
dimension) is summed over its mesh axes (`psum`) after the local products. The same
factors give the Shardy sharding rule and GSPMD's callbacks.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from . import _debug
from . import _jax_internals as jint

class Factors(NamedTuple):
    operands: list  # per operand: a tuple of factor-name tuples, one per dimension
    results: list  # the same per result
    shardable: frozenset  # factor names that may be sharded
    sizes: dict  # factor name -> size


def factors_of(operand_dims, result_dims, shardable, avals_in, avals_out) -> Factors:
    """`Factors` of a primitive from one description per operand and result (a dimension
    is a factor name, or a tuple of names for a compound one, major first) and the avals.
    A factor's size comes from a dimension where it stands alone; a compound dimension
    with one factor of unknown size gives it (its size divided by the others'). Factors of
    size 1 are dropped from compound dimensions (Shardy refuses them there)."""
    norm = lambda dims: tuple((d,) if isinstance(d, str) else tuple(d) for d in dims)
    operands = [norm(d) for d in operand_dims]
    results = [norm(d) for d in result_dims]
    sizes = {}
    for dims_list, avals in ((operands, avals_in), (results, avals_out)):
        for dims, aval in zip(dims_list, avals):
            assert len(dims) == len(aval.shape), (dims, aval.shape)
            for names, n in zip(dims, aval.shape):
                if len(names) == 1:
                    sizes.setdefault(names[0], n)
    for dims_list, avals in ((operands, avals_in), (results, avals_out)):
        for dims, aval in zip(dims_list, avals):
            for names, n in zip(dims, aval.shape):
                known = [sizes[f] for f in names if f in sizes]
                missing = [f for f in names if f not in sizes]
                if len(missing) == 1:
                    sizes[missing[0]] = n // max(math.prod(known), 1)

    def squeeze(dims):  # a compound dimension keeps its factors of size > 1 (Shardy's rule)
        return tuple(tuple(n for n in names if sizes[n] > 1) or names[:1]
                     if len(names) > 1 else names for names in dims)
    return Factors([squeeze(d) for d in operands], [squeeze(d) for d in results],
                   frozenset(shardable), sizes)


def _axes_of(entry):
    """The mesh axes of one PartitionSpec entry, as a tuple."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _assign(f: Factors, mesh, specs) -> dict:
    """factor -> mesh axes, from the operands' PartitionSpecs: the first operand dimension
    that shards a shardable factor (its major one) decides, if the factor's size divides
    evenly and no other factor has taken those axes."""
    assigned, used = {}, set()
    for dims, spec in zip(f.operands, specs):
        spec = tuple(spec) + (None,) * (len(dims) - len(tuple(spec)))
        for names, entry in zip(dims, spec):
            axes = _axes_of(entry)
            factor = names[0]
            if not axes or factor in assigned or factor not in f.shardable:
                continue
            ways = math.prod(mesh.shape[a] for a in axes)
            if set(axes) & used or f.sizes[factor] % ways:
                continue
            assigned[factor] = axes
            used.update(axes)
    return assigned


def _spec(dims, assigned) -> PartitionSpec:
    entries = []
    for names in dims:
        axes = assigned.get(names[0], ())
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)


def _specs_of(shapes):
    return [s.sharding.spec if isinstance(s.sharding, NamedSharding) else PartitionSpec()
            for s in shapes]


def _rule(f: Factors) -> tuple[str, dict]:
    """The Shardy rule string and its keyword arguments."""
    def array(dims):
        return " ".join(n[0] if len(n) == 1 else "(" + " ".join(n) + ")" for n in dims)
    text = ", ".join(array(d) for d in f.operands) + " -> " + ", ".join(
        array(d) for d in f.results)
    in_results = {n for dims in f.results for names in dims for n in names}
    ordered = list(dict.fromkeys(  # factors in order of first appearance (Shardy's indices)
        n for dims in f.operands + f.results for names in dims for n in names))
    alone = {names[0] for dims in f.operands + f.results for names in dims if len(names) == 1}
    kwargs = {
        "reduction_factors": tuple(n for n in ordered
                                   if n not in in_results and n in f.shardable),
        "need_replication_factors": tuple(n for n in ordered if n not in f.shardable),
    }
    kwargs.update({n: f.sizes[n] for n in ordered if n not in alone})  # compound-only
    return text, kwargs


def partitioned_call(local, f: Factors, params: dict, multiple_results: bool) -> Callable:
    """A function of the operands that binds `local` under `custom_partitioning` with the
    sharding rules of `f`."""
    def call(*args):
        out = local.bind(*args, **params)
        return tuple(out) if multiple_results else out

    cp = custom_partitioning(call)
    text, kwargs = _rule(f)

    def shardings(mesh, arg_shapes):
        assigned = _assign(f, mesh, _specs_of(arg_shapes))
        args = tuple(NamedSharding(mesh, _spec(d, assigned)) for d in f.operands)
        results = [NamedSharding(mesh, _spec(d, assigned)) for d in f.results]
        return assigned, args, (tuple(results) if multiple_results else results[0])

    def infer(mesh, arg_shapes, result_shape):
        return shardings(mesh, arg_shapes)[2]

    def partition(mesh, arg_shapes, result_shape):
        assigned, args, results = shardings(mesh, arg_shapes)
        reduce_axes = tuple(a for n in kwargs["reduction_factors"]
                            for a in assigned.get(n, ()))

        def lower(*shards):
            out = call(*shards)
            if reduce_axes:
                out = jax.tree.map(lambda x: jax.lax.psum(x, reduce_axes), out)
            return out
        return mesh, lower, results, args

    cp.def_partition(partition, infer_sharding_from_operands=infer,
                     propagate_user_sharding=None, sharding_rule=text, **kwargs)
    return cp


def result_aval(like, shape, dtype):
    """An aval of `shape` and `dtype` on `like`'s mesh, not sharded (`with_shardings` then
    shards it as the operands imply)."""
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return like.update(shape=shape, dtype=dtype, weak_type=False,
                           sharding=NamedSharding(sharding.mesh, PartitionSpec()))
    return like.update(shape=shape, dtype=dtype, weak_type=False)


def with_shardings(factors: Callable, avals_in, avals_out, **params) -> list:
    """`avals_out` with the shardings that explicitly sharded operands imply (JAX's
    explicit sharding mode: a mesh with `AxisType.Explicit` axes, whose avals name their
    axes), by the same factors as the partitioning; unchanged when no operand names one."""
    specs = [getattr(getattr(a, "sharding", None), "spec", None) or PartitionSpec()
             for a in avals_in]
    named = [a for a, spec in zip(avals_in, specs) if any(e is not None for e in spec)]
    if not named:
        return list(avals_out)
    mesh = named[0].sharding.mesh
    f = factors(avals_in, avals_out, **params)
    assigned = _assign(f, mesh, specs)
    return [aval.update(sharding=NamedSharding(mesh, _spec(dims, assigned)))
            for aval, dims in zip(avals_out, f.results)]


def like_primal(x, aval):
    """The cotangent `x` with the sharding of its primal's `aval` in JAX's explicit
    sharding mode, where transposition requires it (the rules' own outputs are sharded
    only on the factors they partition: e.g. a weight's gradient comes replicated, the
    weight sharded on its block axis); `x` itself otherwise."""
    want = getattr(aval, "sharding", None)
    if not isinstance(want, NamedSharding) or not jint.explicit_axes(want.mesh):
        return x
    if jax.typeof(x).sharding.is_equivalent_to(want, len(aval.shape)):
        return x
    return jax.sharding.reshard(x, want)


def auto_mode(fn, like):
    """`fn` run with the mesh's Explicit axes made Auto (XLA then places its intermediates:
    pure-JAX code that indexes or contracts sharded arrays, e.g. the references, which
    explicit mode refuses without an output sharding for each), its results resharded as
    the arrays `like` (a pytree of the results' structure; a leaf may be a sharding);
    `fn` itself outside explicit mode."""
    shardings = jax.tree.map(
        lambda x: x if isinstance(x, jax.sharding.Sharding) else jax.typeof(x).sharding, like)
    if not any(isinstance(s, NamedSharding) and jint.explicit_axes(s.mesh)
               for s in jax.tree.leaves(shardings)):
        return fn
    return jax.sharding.auto_axes(fn, out_sharding=shardings)


def unsharded(x, dims):
    """`x`'s sharding as a NamedSharding but replicated along `dims` (an int or a tuple),
    or None."""
    sharding = jax.typeof(x).sharding
    if not isinstance(sharding, NamedSharding):
        return None
    spec = list(sharding.spec) + [None] * (x.ndim - len(sharding.spec))
    for dim in (dims,) if isinstance(dims, int) else dims:
        spec[dim] = None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


LOCAL = {}  # primitive -> its local twin, which carries the platform lowerings


def define_partitioned(prim, abstract_eval, reference, factors: Callable) -> None:
    """Give `prim` its abstract eval and a local twin (`LOCAL[prim]`: the same abstract
    eval, the pure-JAX `reference` as its default lowering; `_cuda.py` adds the CUDA
    lowerings to it). `prim` lowers, on every platform, through `partitioned_call(local,
    ...)` with the factors `factors(avals_in, avals_out, **params)` when the program is
    partitioned over several devices, and as its twin otherwise."""
    prim.def_abstract_eval(abstract_eval)
    local = jint.define_primitive(prim.name + "_local",
                                  multiple_results=prim.multiple_results)
    local.def_abstract_eval(abstract_eval)
    pure = jint.lower_fun(reference, multiple_results=prim.multiple_results)

    def default(ctx, *args, **params):  # every platform without a kernel lowering
        _debug.pure_path(_debug.call(prim.name, ctx.avals_in), _debug.default_reason(ctx))
        return pure(ctx, *args, **params)
    jint.register_lowering_rule(local, default, None)
    LOCAL[prim] = local
    direct = jint.lower_fun(lambda *args, **params: local.bind(*args, **params),
                            multiple_results=prim.multiple_results)

    def rule(ctx, *args, **params):
        if not jint.partitioned_lowering(ctx):
            return direct(ctx, *args, **params)
        f = factors(ctx.avals_in, ctx.avals_out, **params)
        cp = partitioned_call(local, f, params, prim.multiple_results)
        lowered = jint.lower_fun(cp, multiple_results=prim.multiple_results)
        return lowered(ctx, *args)
    jint.register_lowering_rule(prim, rule, None)
    jint.require_devices_during_lowering(prim)

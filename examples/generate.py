"""Greedy generation from the model trained by `sparse_transformer_lm.py`, with a KV cache.

Restores the parameters from the orbax checkpoints in `--ckpt-dir` (without one, it says so
and generates from freshly initialized parameters), prefills the prompt with one forward
pass of the model that also returns each layer's keys and values, then decodes one byte
per step: each layer runs on the new token only, writes its key and value into the cache
and attends over the cache with `jbs.attention(..., q_offset=lengths - 1,
kv_lengths=lengths)` under the training layout of the whole sequence. Generation stops at
`--seq-len` (the learned positions end there). Pass the model flags you trained with:

    python examples/sparse_transformer_lm.py --steps 400
    python examples/generate.py --prompt "def " --tokens 200
    python examples/generate.py --seq-len 8192 --block-size 64 --stride 512 --d-model 1024 \
        --heads 8 --layers 6 --dtype bfloat16 --prompt "import " --tokens 1000

The model flags, their defaults and choices are those of `sparse_transformer_lm.py`
(read from its parser). `--attention moba` chooses its blocks from the whole sequence, so
it has no KV cache here: each step reruns the model over the (padded) window.

`--kv-dtype fp8` keeps the cache in float8_e4m3fn (half the bytes of bfloat16): after the
prefill each layer's keys and values are quantized with one scale per kv head, the max
abs over the prompt / 448 (e4m3's largest value; later tokens beyond it saturate), and
every step attends with `jbs.attention(..., k_scale=, v_scale=)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import sparse_transformer_lm as lm  # noqa: E402  (the training script: model and flags)

# the training flags that fix the architecture (and --seed, for fresh parameters)
MODEL_FLAGS = ("seq_len", "block_size", "stride", "d_model", "heads", "layers", "attention",
               "moba_top_k", "dtype", "mlp_density", "dense", "sinks", "softcap", "seed")


# --------------------------------------------------------------------------- flags
def build_parser() -> argparse.ArgumentParser:
    """generate.py's flags: the training script's model flags (same defaults and choices)
    and `--prompt`, `--tokens`, `--ckpt-dir`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    training = {action.dest: action for action in lm.build_parser()._actions}
    for dest in MODEL_FLAGS:
        action = training[dest]
        if isinstance(action, argparse._StoreTrueAction):
            p.add_argument(*action.option_strings, action="store_true", help=action.help)
        else:
            p.add_argument(*action.option_strings, type=action.type, default=action.default,
                           choices=action.choices, help=action.help or (
                               "initializes the parameters when there is no checkpoint"
                               if dest == "seed" else None))
    p.add_argument("--ckpt-dir", default=training["ckpt_dir"].default,
                   help="the training run's checkpoints (the latest is restored)")
    p.add_argument("--prompt", default="def ", help="the text to continue (UTF-8 bytes)")
    p.add_argument("--tokens", type=int, default=200,
                   help="bytes to generate (fewer when the sequence reaches --seq-len)")
    p.add_argument("--kv-dtype", choices=("model", "fp8"), default="model",
                   help="the KV cache's dtype: the model's, or fp8 (float8_e4m3fn with a "
                        "scale per kv head)")
    return p


# ---------------------------------------------------------------------- parameters
def load_params(model, c, ckpt_dir: str):
    """`(params, step)`: the parameters of the latest checkpoint in `ckpt_dir` and its step,
    or freshly initialized ones and None (saying so) when there is no checkpoint."""
    # the checkpoints hold `(params, opt_state, step)` with the training optimizer's state
    # (its structure, not its numbers, matters: only the parameters are used)
    optimizer = lm.make_optimizer(argparse.Namespace(lr=1e-3, steps=2))
    state = lm.init_state(model, optimizer, c)
    path = os.path.abspath(ckpt_dir)
    step = None
    if os.path.isdir(path):
        import orbax.checkpoint as ocp
        manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
            create=False))
        step = manager.latest_step()
    if step is None:
        print(f"no checkpoint in {path}: generating from freshly initialized (untrained) "
              f"parameters (train with examples/sparse_transformer_lm.py first)")
        return state[0], None
    try:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=x.sharding), state)
        state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # shapes or structure differ: other model flags
        raise SystemExit(f"cannot restore step {step} of {path} into this model: pass the "
                         f"model flags it was trained with ({type(error).__name__}: "
                         f"{str(error)[:800]})")
    print(f"restored the parameters of step {int(state[2])} from {path}")
    return state[0], int(state[2])


# ------------------------------------------------------------------ prefill, decode
def _is_kv(module, method_name):
    return method_name == "__call__" and module.name in ("key", "value")


def _captured(tree, name):
    """The output of the submodule `name` captured somewhere under `tree`."""
    if name in tree:
        return tree[name]["__call__"][0]
    found = [_captured(sub, name) for sub in tree.values() if isinstance(sub, dict)]
    found = [x for x in found if x is not None]
    return found[0] if found else None


def prefill(model, params, tokens, lengths):
    """One forward pass of `model` over the prompts.

    tokens `[B, seq_len]` int (entries at or past `lengths[b]` are ignored: set to 0),
    lengths `[B]` int >= 1, the prompt lengths. Returns `(logits, cache)`: `logits [B, 256]`
    float32, the prediction for position `lengths[b]` (the model's output at position
    `lengths[b] - 1`), and `cache`, per layer `(k, v)`, each `[B, seq_len, Hkv, D]` in the
    model's dtype, the layer's keys and values, zero at positions `>= lengths[b]`.
    """
    t = tokens.shape[1]
    valid = jnp.arange(t) < lengths[:, None]  # [B, T]
    tokens = jnp.where(valid, tokens, 0)
    logits, state = model.apply({"params": params}, tokens, capture_intermediates=_is_kv,
                                mutable=["intermediates"])
    captured = state["intermediates"]
    cache = []
    for i in range(model.config.layers):
        k, v = (_captured(captured[f"Block_{i}"], name) for name in ("key", "value"))
        cache.append(tuple(jnp.where(valid[:, :, None, None], x, 0) for x in (k, v)))
    rows = jnp.arange(tokens.shape[0])
    return logits[rows, lengths - 1], tuple(cache)


def _layer_norm(p, x, dtype, eps=1e-6):
    """flax.linen.LayerNorm: statistics in float32 (mean of squares minus squared mean),
    the result in `dtype`."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = x.mean(-1, keepdims=True)
    var = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    return ((x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]).astype(dtype)


def _dense(p, x, dtype, spec="bf,fk->bk"):
    """flax.linen.Dense / DenseGeneral in `dtype`: `einsum(spec, x, kernel) + bias`."""
    return (jnp.einsum(spec, x.astype(dtype), p["kernel"].astype(dtype))
            + p["bias"].astype(dtype))


def _write(cache, x, position, scale=None):
    """cache `[B, T, H, D]` with `x [B, H, D]` written at `position[b]` of each entry;
    for an fp8 cache `x / scale[h]` (`scale [H]`), saturated to the fp8 range."""
    if scale is not None:
        x = _quantize(x, scale, cache.dtype)
    return jax.vmap(lambda c, row, p: jax.lax.dynamic_update_slice(c, row[None], (p, 0, 0)))(
        cache, x.astype(cache.dtype), position)


FP8 = jnp.float8_e4m3fn


def _quantize(x, scale, dtype=FP8):
    """`x [..., H, D] / scale[h]` in float32, clipped to the range of `dtype` (fp8 has no
    inf: out-of-range values would become NaN), in `dtype`."""
    big = float(jnp.finfo(dtype).max)
    y = x.astype(jnp.float32) / scale[:, None]
    return jnp.clip(y, -big, big).astype(dtype)


def quantize_cache(cache, dtype=FP8):
    """A cache as `prefill` returns it, per layer `(k, v)`, in fp8: per layer
    `(k8, v8, k_scale, v_scale)`, the scales float32 `[Hkv]`: the max abs of each kv
    head's keys (values) / the largest fp8 value (1.0 for an all-zero head)."""
    big = float(jnp.finfo(dtype).max)
    out = []
    for k, v in cache:
        scales = [jnp.abs(x.astype(jnp.float32)).max(axis=(0, 1, 3)) / big for x in (k, v)]
        scales = [jnp.where(s > 0, s, 1.0) for s in scales]
        out.append((_quantize(k, scales[0], dtype), _quantize(v, scales[1], dtype), *scales))
    return tuple(out)


def attention_layout(model) -> jbs.Layout:
    """The attention layout over the whole `seq_len` the model was trained with; for the
    dense model (`--dense`), every block (with `causal`, full causal attention)."""
    if model.attention_layout is not None:
        return model.attention_layout
    c = model.config
    rows = -(-c.seq_len // c.block_size)
    return jbs.Layout(np.ones((rows, rows), bool), c.block_size)


def decode_step(model, params, cache, tokens, lengths):
    """One token per sequence through every layer, with the KV cache.

    tokens `[B]` int: the newest token of each sequence, at position `lengths[b] - 1`;
    lengths `[B]` int: the sequence lengths including it (at most `seq_len`); cache as
    `prefill` returns it (or `quantize_cache` of it: per layer `(k8, v8, k_scale,
    v_scale)`, fp8), valid below `lengths[b] - 1`. Each layer writes the token's key
    and value at position `lengths[b] - 1` and attends over the cache through the training
    layout (`q_offset=lengths - 1, kv_lengths=lengths`). The linen modules' parameters
    applied explicitly: LayerNorm, the attention's `query`/`key`/`value` (DenseGeneral
    `[features, heads, head_dim]`) and `out` (`[heads, head_dim, features]`), the
    BlockSparseDense MLP (`jbs.matmul` over its layouts), the attention's learned sinks and
    soft cap (`--sinks`, `--softcap`), the learned positions, the final
    LayerNorm and Dense. Returns `(logits [B, 256] float32, the prediction for position
    lengths[b]; the updated cache)`. Not for `--attention moba` (no cache).
    """
    c = model.config
    if model.moba_top_k:
        raise ValueError("--attention moba chooses its blocks from the whole sequence: "
                         "no KV-cache decoding")
    dtype = jnp.dtype(c.dtype)
    position = lengths - 1
    layout = attention_layout(model)
    x = (params["Embed_0"]["embedding"][tokens].astype(dtype)
         + params["positions"][position].astype(dtype))  # [B, F]
    new_cache = []
    for i, (k_cache, v_cache, *scales) in enumerate(cache):
        k_scale, v_scale = scales or (None, None)
        block = params[f"Block_{i}"]
        attn = block.get("BlockSparseMultiHeadAttention_0", block)  # dense: in the Block
        h = _layer_norm(block["LayerNorm_0"], x, dtype)
        q, k, v = (_dense(attn[name], h, dtype, "bf,fhd->bhd")
                   for name in ("query", "key", "value"))
        k_cache = _write(k_cache, k, position, k_scale)
        v_cache = _write(v_cache, v, position, v_scale)
        a = jbs.attention(q[:, None], k_cache, v_cache, layout, causal=True,
                          q_offset=position, kv_lengths=lengths, sinks=attn.get("sinks"),
                          logits_soft_cap=c.softcap, k_scale=k_scale,
                          v_scale=v_scale)[:, 0]  # [B, H, D]
        x = x + _dense(attn["out"], a, dtype, "bhd,hdf->bf")
        h = _layer_norm(block["LayerNorm_1"], x, dtype)
        if model.mlp_layouts is None:
            h = _dense(block["Dense_1"], jax.nn.gelu(_dense(block["Dense_0"], h, dtype)), dtype)
        else:
            up, down = model.mlp_layouts
            h = jbs.matmul(h, block["BlockSparseDense_0"]["kernel"].astype(dtype), up)
            h = jax.nn.gelu(h + block["BlockSparseDense_0"]["bias"].astype(dtype))
            h = jbs.matmul(h, block["BlockSparseDense_1"]["kernel"].astype(dtype), down)
            h = h + block["BlockSparseDense_1"]["bias"].astype(dtype)
        x = x + h
        new_cache.append((k_cache, v_cache, *scales))
    x = _layer_norm(params["LayerNorm_0"], x, jnp.promote_types(dtype, jnp.float32))
    return _dense(params["Dense_0"], x, jnp.float32), tuple(new_cache)


def _greedy_prefill(model, params, window, lengths, kv_dtype="model"):
    logits, cache = prefill(model, params, window, lengths)
    if kv_dtype == "fp8":
        cache = quantize_cache(cache)
    return jnp.argmax(logits, -1).astype(jnp.int32), cache


def _greedy_cached(model, params, cache, tokens, lengths):
    logits, cache = decode_step(model, params, cache, tokens, lengths)
    return jnp.argmax(logits, -1).astype(jnp.int32), cache


def _greedy_full(model, params, window, lengths):
    """MoBA (no cache): the model over the whole window `[B, seq_len]` (zero past
    `lengths`), its argmax at `lengths - 1`, and the window with it written at `lengths`."""
    valid = jnp.arange(window.shape[1]) < lengths[:, None]
    logits = model.apply({"params": params}, jnp.where(valid, window, 0))
    rows = jnp.arange(window.shape[0])
    token = jnp.argmax(logits[rows, lengths - 1], -1).astype(jnp.int32)
    window = window.at[rows, jnp.minimum(lengths, window.shape[1] - 1)].set(token)
    return token, window


def generate(model, params, prompt: bytes, tokens: int, kv_dtype: str = "model"):
    """Greedy continuation of `prompt` (bytes; its last `seq_len - 1` when longer, a
    newline when empty): at most `tokens` bytes, fewer when the sequence reaches `seq_len`.
    Returns `(generated bytes, stats)`: stats has `prompt` (the prompt length used),
    `prefill_s`, `decode_steps` and `decode_s` (the steps after a warm-up step, so
    compilation excluded). The prefill and the decode step are each compiled once.
    `kv_dtype`: "model" (the cache in the model's dtype) or "fp8" (`quantize_cache`)."""
    t = model.config.seq_len
    prompt_tokens = np.frombuffer(prompt or b"\n", np.uint8)[-(t - 1):].astype(np.int32)
    n_prompt = len(prompt_tokens)
    tokens = max(0, min(tokens, t - n_prompt))
    stats = dict(prompt=n_prompt, prefill_s=0.0, decode_steps=max(tokens - 1, 0), decode_s=0.0)
    if tokens == 0:
        return b"", stats
    window = np.zeros((1, t), np.int32)
    window[0, :n_prompt] = prompt_tokens
    window, lengths = jnp.asarray(window), jnp.array([n_prompt], jnp.int32)

    if model.moba_top_k:  # no cache: the state is the window, rerun whole every step
        full = jax.jit(partial(_greedy_full, model))
        begin = lambda: full(params, window, lengths)
        advance = lambda state, lengths, last: full(params, state, lengths)
    else:  # the state is the KV cache
        first = jax.jit(partial(_greedy_prefill, model, kv_dtype=kv_dtype))
        step = jax.jit(partial(_greedy_cached, model))
        begin = lambda: first(params, window, lengths)
        advance = lambda state, lengths, last: step(params, state, last, lengths)

    begin()[0].block_until_ready()  # compile
    start = time.perf_counter()
    token, state = begin()
    out = [int(token[0])]
    stats["prefill_s"] = time.perf_counter() - start
    if tokens > 1:
        lengths = lengths + 1  # the sequence now ends with `token`
        advance(state, lengths, token)[0].block_until_ready()  # warm-up (result discarded)
        start = time.perf_counter()
        for _ in range(tokens - 1):
            token, state = advance(state, lengths, token)
            out.append(int(token[0]))
            lengths = lengths + 1
        stats["decode_s"] = time.perf_counter() - start
    return bytes(out), stats


def main(argv=None):
    p = build_parser()
    c = p.parse_args(argv)
    lm.check_model_flags(p, c)
    if c.tokens < 0:
        p.error(f"--tokens must be >= 0; got {c.tokens}")
    if c.kv_dtype == "fp8" and c.attention == "moba" and not c.dense:
        p.error("--kv-dtype fp8 needs a KV cache; --attention moba keeps none (it reruns "
                "the window each step)")
    model = lm.build_model(c, c.dense)
    kind = ("dense attention" if c.dense else
            "MoBA attention (no KV cache: each step reruns the window)" if model.moba_top_k
            else f"attention layout {model.attention_layout}")
    print(f"model: {kind}; seq-len {c.seq_len}, {c.layers} layers, d-model {c.d_model}, "
          f"{c.heads} heads, {c.dtype}; backend {jax.default_backend()}")
    params, _ = load_params(model, c, c.ckpt_dir)
    prompt = c.prompt.encode()
    if c.kv_dtype == "fp8":
        print("KV cache: float8_e4m3fn, a scale per kv head (from the prompt's max abs)")
    text, stats = generate(model, params, prompt, c.tokens, c.kv_dtype)
    used = prompt[-stats["prompt"]:] if prompt else b"\n"
    if stats["prompt"] < len(prompt):
        print(f"the prompt is longer than seq-len - 1: using its last {stats['prompt']} bytes")
    if len(text) < c.tokens:
        print(f"stopped at seq-len {c.seq_len}: {len(text)} of {c.tokens} tokens generated")
    print("-" * 72)
    print((used + text).decode("utf-8", errors="replace"))
    print("-" * 72)
    steps = stats["decode_steps"]
    rate = (f"{steps / stats['decode_s']:.1f} tokens/s ({steps} decode steps after a warm-up "
            f"step, compilation excluded)" if steps else "tokens/s: n/a (no decode step)")
    print(f"generated {len(text)} tokens greedily; prefill {stats['prefill_s'] * 1e3:.1f} ms "
          f"({stats['prompt']} prompt tokens); decode {rate}")


if __name__ == "__main__":
    main()

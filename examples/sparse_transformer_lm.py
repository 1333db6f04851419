"""A byte-level Sparse Transformer language model, trained by a jit-compiled optax loop.

Block-sparse attention (the Sparse Transformer `fixed` or `strided` layout, Child et al.
2019) and block-sparse MLPs, from `jax_blocksparse.nn`. `--dense` trains the same model
with dense layers and `jax.nn.dot_product_attention` (cuDNN on a GPU) instead.

Data: `--data FILE` (any text, e.g. enwik8); by default a corpus built offline from the
installed Python standard library's `.py` sources, split 90/10 into train and validation.
Prints a progress bar with loss and bits per byte, validates every `--eval-every` steps,
keeps orbax checkpoints in `--ckpt-dir`, and writes a loss-curve PNG at the end. Each run
starts afresh (replacing the checkpoints of an earlier run in `--ckpt-dir`); `--resume`
continues from the latest checkpoint instead (raise `--steps` to train further).

    python examples/sparse_transformer_lm.py                 # small CPU configuration
    python examples/sparse_transformer_lm.py --resume --steps 400   # 200 steps more
    python examples/sparse_transformer_lm.py --compare       # step time, sparse vs dense
    python examples/sparse_transformer_lm.py --packed        # attention within each document
    python examples/sparse_transformer_lm.py --attention moba   # blocks chosen from the data
    python examples/sparse_transformer_lm.py --sinks --softcap 30   # gpt-oss / Gemma 2 style
    # GPU, sequence length 8192; the fixed layout skips 90.6% of the score matrix (README):
    python examples/sparse_transformer_lm.py --seq-len 8192 --block-size 64 --stride 512 \
        --d-model 1024 --heads 8 --layers 6 --batch 4 --dtype bfloat16 --steps 2000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
import time
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_blocksparse as jbs
from jax_blocksparse import nn as bnn


# ---------------------------------------------------------------------------- data
def load_corpus(path: str | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 bytes of `path`, or of the standard library's .py files (sorted, deterministic),
    and the offsets at which its documents start (each file is one; `path` is one)."""
    if path:
        with open(path, "rb") as f:
            return np.frombuffer(f.read(limit), np.uint8), np.zeros(1, np.int64)
    root = sysconfig.get_paths()["stdlib"]
    chunks, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests"))
        for name in sorted(filenames):
            if name.endswith(".py") and total < limit:
                with open(os.path.join(dirpath, name), "rb") as f:
                    chunks.append(f.read())
                total += len(chunks[-1])
    starts = np.cumsum([0] + [len(chunk) for chunk in chunks[:-1]])
    return np.frombuffer(b"".join(chunks)[:limit], np.uint8), starts


def batches(data: np.ndarray, doc_starts: np.ndarray, batch: int, seq_len: int, seed: int,
            packed: bool = False):
    """Endless `(tokens, segment ids)`: random windows `[batch, seq_len + 1]` of the byte
    stream, several documents packed in each. With `packed`, the ids `[batch, seq_len + 1]`
    number the documents within each window, so that attention stays inside a document;
    otherwise the ids are None (attention crosses document boundaries)."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch)
        positions = starts[:, None] + np.arange(seq_len + 1)
        tokens = data[positions].astype(np.int32)
        if not packed:
            yield tokens, None
            continue
        docs = np.searchsorted(doc_starts, positions, side="right")
        yield tokens, (docs - docs[:, :1]).astype(np.int32)


# --------------------------------------------------------------------------- model
def moba_block_mask(q, k, block_size: int, top_k: int):
    """MoBA-style data-dependent block selection (Lu et al. 2025): each query block keeps
    the `top_k` earlier key blocks whose mean-pooled keys score highest against its queries,
    and always its own block. q `[B, T, H, D]`, k `[B, T, Hkv, D]` -> bool `[B, H, R, R]`.
    The selection is discrete: no gradient flows through it."""
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    b, t, h, d = q.shape
    r = t // block_size
    pooled = k.reshape(b, r, block_size, k.shape[2], d).mean(2)
    pooled = jnp.repeat(pooled, h // k.shape[2], axis=2)  # [B, R, H, D]
    gate = jnp.einsum("bthd,bchd->bhtc", q.astype(jnp.float32), pooled.astype(jnp.float32))
    gate = gate.reshape(b, h, r, block_size, r).mean(3)  # [B, H, R, R]
    earlier = np.tril(np.ones((r, r), bool), -1)
    gate = jnp.where(earlier, gate, -jnp.inf)
    _, chosen = jax.lax.top_k(gate, min(top_k, r))  # [B, H, R, top_k]
    picked = jax.nn.one_hot(chosen, r, dtype=bool).any(-2)
    return (picked & earlier) | np.eye(r, dtype=bool)


def dense_attention(q, k, v, mask, sinks, cap):
    """Dense causal attention in plain jnp, for the dense model with `--sinks` or
    `--softcap` (`jax.nn.dot_product_attention` has neither): the scores soft-capped
    (`cap * tanh(s / cap)`), a sink logit per head joining each row's softmax."""
    s = jnp.einsum("bihd,bjhd->bhij", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
    if cap:
        s = cap * jnp.tanh(s / cap)
    t = q.shape[1]
    allowed = jnp.tril(jnp.ones((t, t), bool)) if mask is None else mask & jnp.tril(
        jnp.ones((t, t), bool))
    s = jnp.where(allowed, s, -jnp.inf)
    if sinks is not None:  # one more column: the sink, dropped after the softmax
        sink = jnp.broadcast_to(sinks.astype(jnp.float32)[None, :, None, None],
                                s.shape[:-1] + (1,))
        p = jax.nn.softmax(jnp.concatenate([sink, s], axis=-1), axis=-1)[..., 1:]
    else:
        p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhij,bjhd->bihd", p.astype(v.dtype), v)


class Block(nn.Module):
    config: argparse.Namespace
    attention_layout: jbs.Layout | None
    mlp_layouts: tuple | None
    moba_top_k: int = 0  # > 0: MoBA-style blocks chosen from the data in each step
    mesh: Mesh | None = None  # tensor parallel over its "model" axis (the sparse MLP)

    @nn.compact
    def __call__(self, x, segment_ids=None):
        c = self.config
        h = nn.LayerNorm(dtype=x.dtype)(x)
        if self.moba_top_k:  # the block mask is computed from this step's queries and keys
            q, k, v = (nn.DenseGeneral((c.heads, c.d_model // c.heads), dtype=x.dtype,
                                       name=n)(h) for n in ("query", "key", "value"))
            mask = jbs.BlockMask.from_mask(moba_block_mask(q, k, c.block_size, self.moba_top_k),
                                           c.block_size, max_blocks=self.moba_top_k + 1)
            a = jbs.attention(q, k, v, mask, causal=True, q_segment_ids=segment_ids,
                              sinks=self.sinks(), logits_soft_cap=c.softcap)
            h = nn.DenseGeneral(c.d_model, axis=(-2, -1), dtype=x.dtype, name="out")(a)
        elif self.attention_layout is None:  # dense: cuDNN / XLA attention
            q, k, v = (nn.DenseGeneral((c.heads, c.d_model // c.heads), dtype=x.dtype,
                                       name=n)(h) for n in ("query", "key", "value"))
            mask = (None if segment_ids is None else
                    segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
            if c.sinks or c.softcap:
                a = dense_attention(q, k, v, mask, self.sinks(), c.softcap)
            else:
                a = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True)
            h = nn.DenseGeneral(c.d_model, axis=(-2, -1), dtype=x.dtype, name="out")(a)
        else:
            h = bnn.BlockSparseMultiHeadAttention(
                c.heads, self.attention_layout, causal=True, dtype=x.dtype,
                use_sinks=c.sinks, logits_soft_cap=c.softcap)(h, segment_ids=segment_ids)
        x = x + h
        h = nn.LayerNorm(dtype=x.dtype)(x)
        if self.mlp_layouts is None:
            h = nn.Dense(4 * c.d_model, dtype=x.dtype)(h)
            h = nn.Dense(c.d_model, dtype=x.dtype)(nn.gelu(h))
        else:
            up, down = self.mlp_layouts
            tp = self.mesh is not None
            split = dict(mesh=self.mesh, axis="model") if tp else {}
            h = bnn.BlockSparseDense(up, dtype=x.dtype, parallel="columns" if tp else None,
                                     **split)(h)
            h = bnn.BlockSparseDense(down, dtype=x.dtype, parallel="rows" if tp else None,
                                     **split)(nn.gelu(h))
        return x + h

    def sinks(self):
        """With `--sinks`, the layer's learned sink logits `[heads]` (zeros at init)."""
        if not self.config.sinks:
            return None
        return self.param("sinks", nn.initializers.zeros, (self.config.heads,))


class LanguageModel(nn.Module):
    config: argparse.Namespace
    attention_layout: jbs.Layout | None
    mlp_layouts: tuple | None
    moba_top_k: int = 0
    mesh: Mesh | None = None

    @nn.compact
    def __call__(self, tokens, segment_ids=None):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        x = nn.Embed(256, c.d_model)(tokens).astype(dtype)
        x = x + self.param("positions", nn.initializers.normal(0.02),
                           (c.seq_len, c.d_model)).astype(dtype)
        for _ in range(c.layers):
            x = Block(c, self.attention_layout, self.mlp_layouts, self.moba_top_k,
                      self.mesh)(x, segment_ids)
        return nn.Dense(256, dtype=jnp.float32)(nn.LayerNorm()(x))


def build_model(c, dense: bool, mesh=None):
    """The sparse (or dense) model; with a `mesh`, its sparse MLPs are tensor parallel
    over the mesh's "model" axis (Megatron's column-then-row split)."""
    if dense:
        return LanguageModel(c, None, None)
    mlp_bs = mlp_block_size(c)
    up = jbs.layouts.random(c.d_model, 4 * c.d_model, mlp_bs, c.mlp_density, seed=1)
    down = jbs.layouts.random(4 * c.d_model, c.d_model, mlp_bs, c.mlp_density, seed=2)
    if c.attention == "moba":
        return LanguageModel(c, None, (up, down), moba_top_k=c.moba_top_k, mesh=mesh)
    attention = getattr(jbs.layouts, c.attention)(c.seq_len, c.block_size, c.stride)
    return LanguageModel(c, attention, (up, down), mesh=mesh)


def mlp_block_size(c) -> int:
    """The MLP layouts' block size: the largest of 64, 32, 16 that is at most `--block-size`
    and `--d-model` / 4 and divides `--d-model` (so also 4 `--d-model`); 0 if none does."""
    cap = min(c.block_size, c.d_model // 4)
    return next((bs for bs in (64, 32, 16) if bs <= cap and c.d_model % bs == 0), 0)


def require_positive(p: argparse.ArgumentParser, c, flags) -> None:
    """`p.error` naming the first of the int `flags` (argparse dests) below 1."""
    for flag in flags:
        if getattr(c, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(c, flag)}")


def check_model_flags(p: argparse.ArgumentParser, c) -> None:
    """`p.error` (a usage message, exit 2) for model flags the model cannot take (also
    generate.py's)."""
    require_positive(p, c, ("seq_len", "d_model", "heads", "layers", "moba_top_k", "stride"))
    if c.block_size not in (16, 32, 64, 128):
        p.error(f"--block-size must be 16, 32, 64 or 128; got {c.block_size}")
    if c.seq_len % c.block_size:
        p.error(f"--seq-len {c.seq_len} must be a multiple of --block-size {c.block_size}")
    if not mlp_block_size(c):
        p.error(f"--d-model must be a multiple of 16 and at least 64 (the MLP layouts' "
                f"blocks, 16 or more, at most a quarter of it); got {c.d_model}")
    if c.d_model % c.heads:
        p.error(f"--d-model {c.d_model} must be a multiple of --heads {c.heads}")
    if not 0 < c.mlp_density <= 1:
        p.error(f"--mlp-density must be in (0, 1]; got {c.mlp_density}")
    if c.softcap is not None and not c.softcap > 0:
        p.error(f"--softcap must be > 0; got {c.softcap}")


def make_mesh(spec: str | None) -> Mesh | None:
    """`--mesh DxT`: D-way data parallel ("data") times T-way tensor parallel ("model")."""
    if spec is None:
        return None
    data, model = mesh_shape(spec)
    devices = jax.devices()
    if data * model > len(devices):
        raise SystemExit(f"--mesh {spec} needs {data * model} devices; jax sees {len(devices)}")
    return Mesh(np.array(devices[:data * model]).reshape(data, model), ("data", "model"))


def mesh_shape(spec: str) -> tuple[int, int] | None:
    """`(D, T)` of a `--mesh DxT` value (positive ints), else None."""
    parts = spec.lower().split("x")
    if len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts):
        return None
    return int(parts[0]), int(parts[1])


def place(tree, mesh):
    """Data parallel: arrays with a leading batch axis sharded over "data"."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, P("data")))


def place_state(state, mesh):
    """Parameters and optimizer state replicated, but the tensor-parallel slabs
    `[T, max_nnz, bs, bs]` of the sparse MLPs, sharded over "model"."""
    if mesh is None:
        return state
    t = mesh.shape["model"]
    spec = lambda x: P("model") if x.ndim == 4 and x.shape[0] == t and t > 1 else P()
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), state)


# ------------------------------------------------------------------------ training
def make_functions(model, optimizer):
    def loss_fn(params, batch):
        tokens, ids = batch
        logits = model.apply({"params": params}, tokens[:, :-1],
                             None if ids is None else ids[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def train_step(state, batch):
        params, opt_state, step = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, step + 1), loss

    return train_step, jax.jit(loss_fn)


def make_optimizer(c):
    """Gradient clipping, then AdamW on a warm-up + cosine schedule (`c.lr`, `c.steps`)."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, c.lr, min(100, c.steps // 10 + 1), c.steps),
        weight_decay=0.01))


def init_state(model, optimizer, c):
    params = model.init(jax.random.key(c.seed), jnp.zeros((1, c.seq_len), jnp.int32))["params"]
    return params, optimizer.init(params), jnp.zeros((), jnp.int32)


def time_steps(train_step, state, data, doc_starts, c, steps=5):
    stream = batches(data, doc_starts, c.batch, c.seq_len, c.seed, c.packed)
    state, loss = train_step(state, next(stream))
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(steps):
        state, loss = train_step(state, next(stream))
    loss.block_until_ready()
    return (time.perf_counter() - start) / steps


def progress(step, total, loss, rate, width=30):
    done = int(width * step / total)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} loss {loss:.4f} "
                     f"bpb {loss / math.log(2):.3f} {rate:.1f} step/s ")
    sys.stderr.flush()


def plot_curves(path, train, val):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[examples]'): no loss curve")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"loss curve: {path}")


def open_checkpoints(c):
    """An orbax CheckpointManager on `c.ckpt_dir`. Unless `c.resume`, the checkpoints of an
    earlier run there are deleted (saying so), so that this run starts afresh."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(c.ckpt_dir)
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    steps = manager.all_steps()
    if steps and not c.resume:
        print(f"starting afresh: deleting the checkpoints of an earlier run in {path} "
              f"(steps {', '.join(map(str, sorted(steps)))}; use --resume to continue it)")
        for step in steps:
            manager.delete(step)
    elif not c.resume:
        print(f"starting afresh; checkpoints go to {path}")
    return manager


def resume(manager, state, c):
    """`state` restored from the latest checkpoint of `manager`, or `state` itself (saying
    so) when there is none."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        print(f"--resume: no checkpoint in {os.path.abspath(c.ckpt_dir)}; starting afresh")
        return state
    state = manager.restore(step, args=ocp.args.StandardRestore(state))
    print(f"resumed from step {int(state[2])} of {os.path.abspath(c.ckpt_dir)}")
    return state


def build_parser() -> argparse.ArgumentParser:
    """The example's command-line flags (also read by `examples/generate.py`)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a text file (default: stdlib sources)")
    p.add_argument("--data-limit", type=int, default=4_000_000, help="bytes to read")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--attention", choices=["fixed", "strided", "moba"], default="fixed",
                   help="a Sparse Transformer layout, or MoBA: blocks chosen from the data")
    p.add_argument("--moba-top-k", type=int, default=2,
                   help="--attention moba: earlier key blocks each query block keeps")
    p.add_argument("--stride", type=int, default=128,
                   help="the fixed/strided layout's stride, in tokens (not used by moba)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--mlp-density", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--ckpt-dir", default="runs/sparse_transformer_lm")
    p.add_argument("--no-checkpoint", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --ckpt-dir (default: start "
                        "afresh, replacing its checkpoints)")
    p.add_argument("--plot", default=None, help="loss-curve PNG (default in --ckpt-dir)")
    p.add_argument("--dense", action="store_true", help="dense layers, cuDNN/XLA attention")
    p.add_argument("--compare", action="store_true", help="time a step, sparse vs dense")
    p.add_argument("--packed", action="store_true",
                   help="attention stays inside each document of the packed windows "
                        "(segment ids; the dense model gets the same mask)")
    p.add_argument("--sinks", action="store_true",
                   help="a learned attention sink per head and layer (gpt-oss, StreamingLLM)")
    p.add_argument("--softcap", type=float, default=None, metavar="CAP",
                   help="soft-cap the attention scores: CAP * tanh(s / CAP) (Gemma 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default=None, metavar="DxT",
                   help="data x tensor parallel over D*T devices, e.g. 4x2 (on a CPU: "
                        "XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    return p


def main():
    p = build_parser()
    c = p.parse_args()
    check_model_flags(p, c)
    if c.resume and c.no_checkpoint:
        p.error("--resume needs the checkpoints: drop --no-checkpoint")
    require_positive(p, c, ("data_limit", "batch", "steps", "eval_every", "eval_batches"))
    if not c.lr > 0:
        p.error(f"--lr must be > 0; got {c.lr}")
    if c.mesh is not None:
        shape = mesh_shape(c.mesh)
        if shape is None:
            p.error(f"--mesh must be DxT with positive ints, e.g. 4x2; got {c.mesh!r}")
        if c.compare:
            p.error("--compare times one device: drop --mesh")
        if c.dense and shape[1] > 1:
            p.error("--dense has no block-sparse MLPs to split over T: use --mesh Dx1")

    data, doc_starts = load_corpus(c.data, c.data_limit)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    train_starts = doc_starts[doc_starts < split]
    val_starts = np.concatenate([[0], doc_starts[doc_starts > split] - split])
    kernels = ("CUDA kernels" if jbs.cuda_available() else
               "pure-JAX path (no CUDA kernels: no CUDA device or extension)")
    packing = ", packed: attention within each" if c.packed else ""
    print(f"data: {len(train_data):,} train / {len(val_data):,} validation bytes "
          f"({len(doc_starts):,} documents{packing}); "
          f"backend {jax.default_backend()}; block-sparse ops run on the {kernels}")
    optimizer = make_optimizer(c)

    if c.compare:
        for dense in (False, True):
            model = build_model(c, dense)
            train_step, _ = make_functions(model, optimizer)
            seconds = time_steps(train_step, init_state(model, optimizer, c), train_data,
                                 train_starts, c)
            print(f"{'dense ' if dense else 'sparse'} step: {seconds * 1e3:9.2f} ms")
        return

    mesh = make_mesh(c.mesh)
    model = build_model(c, c.dense, mesh)
    if mesh is not None:
        print(f"mesh: {dict(mesh.shape)} (batch over 'data', the sparse MLPs over 'model')")
    if model.moba_top_k:
        print(f"attention: MoBA, each query block attends its own and its top "
              f"{model.moba_top_k} earlier key blocks, chosen every step from the data")
    elif not c.dense:
        print(f"attention layout: {model.attention_layout}")
    if c.sinks or c.softcap:
        print("attention: " + ", ".join(
            (["a learned sink per head"] if c.sinks else []) +
            ([f"scores soft-capped at {c.softcap:g}"] if c.softcap else [])))
    train_step, eval_loss = make_functions(model, optimizer)
    state = place_state(init_state(model, optimizer, c), mesh)
    n_params = sum(x.size for x in jax.tree.leaves(state[0]))
    print(f"model: {n_params:,} parameters")

    manager = None if c.no_checkpoint else open_checkpoints(c)
    if manager is not None and c.resume:
        state = resume(manager, state, c)
        if int(state[2]) >= c.steps:
            print(f"nothing to train: the checkpoint is at step {int(state[2])} and --steps is "
                  f"{c.steps} (raise --steps to train further, or drop --resume to start "
                  f"afresh)")
            return
        print(f"training from step {int(state[2])} to step {c.steps}")

    val_stream = batches(val_data, val_starts, c.batch, c.seq_len, 12345, c.packed)
    val_set = [next(val_stream) for _ in range(c.eval_batches)]
    stream = batches(train_data, train_starts, c.batch, c.seq_len, c.seed + int(state[2]),
                     c.packed)
    train_curve, val_curve = [], []
    start, first_step = time.perf_counter(), int(state[2])
    for step in range(first_step + 1, c.steps + 1):
        state, loss = train_step(state, place(next(stream), mesh))
        if step % 10 == 0 or step == c.steps:
            loss = float(loss)
            train_curve.append((step, loss / math.log(2)))
            progress(step, c.steps, loss, (step - first_step) / (time.perf_counter() - start))
        if step % c.eval_every == 0 or step == c.steps:
            val = float(np.mean([eval_loss(state[0], place(b, mesh))
                                 for b in val_set])) / math.log(2)
            val_curve.append((step, val))
            sys.stderr.write("\n")
            print(f"step {step}: validation {val:.3f} bits per byte")
            if manager is not None:
                import orbax.checkpoint as ocp
                manager.save(step, args=ocp.args.StandardSave(state))
    if manager is not None:
        manager.wait_until_finished()
    if train_curve:
        os.makedirs(c.ckpt_dir, exist_ok=True)
        plot_curves(c.plot or os.path.join(c.ckpt_dir, "loss.png"), train_curve, val_curve)


if __name__ == "__main__":
    main()

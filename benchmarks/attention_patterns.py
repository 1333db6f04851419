"""Attention on the six patterns of the Hopper attention issues, beside FlexAttention on
identical masks and cuDNN's causal attention, in one run.

    python benchmarks/attention_patterns.py --peers _device/peers.py [--backward]
        [--variants 0,2] [--bwd-variants 2,4] [--extended] [--quick] [--metadata]
        [--metadata-only] [--only causal@256]

Patterns (B=2, H=16, bf16, block 128, our layout generators): local(1024), strided(1024),
fixed(512) causal, bigbird, causal, and packed documents (the causal layout plus segment
ids: documents of 512-4096 tokens) at S 8192 and D 128; with `--extended`, local and packed
also at S 16384 and 32768, causal also at D 64, 96 and 256 (96 and 256: the fused forward on
Hopper, the pure-JAX backward). Useful TFLOP/s count `4·B·H·D` per allowed (i, j)
pair, counted exactly on the host (the same count for every system), ×3.5 for forward +
backward. The block masks (with `NAME_docs` document ids) are written to one npz per head
dim and `peers.py masks FILE.npz` runs FlexAttention on them in a subprocess; cuDNN is
`jax.nn.dot_product_attention(..., is_causal=True, implementation="cudnn")` on the same
tensors (it ignores the sparsity and the documents: for the packed rows compare wall time).
`--variants 0,2` times our forward once per value of `JAX_BLOCKSPARSE_ATTN_FWD_VARIANT`
(a fresh process each: the switch is read once); a value ending in `p` (`--variants 2,2p`)
sets JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1 too (the persistent Hopper forward), the others
=0, and one with `e` (`2e`) JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0 (the eager rescale);
`--bwd-variants 2,4` the same for `JAX_BLOCKSPARSE_ATTN_BWD_VARIANT` (columns `b2`, `b4`;
a value ending in `t`, `2t`, sets JAX_BLOCKSPARSE_ATTN_BWD_TILED64=1 too: block 64
on the Hopper backward's 128 x 128 tiles; `r`, `2r`, sets it to 0: the FA2 backward's
block-64 rows; neither: unset, the layout's tile fill decides; `k`, `4k`, sets
JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST=0: variant 4's steps with dK issued first, not
in FlashAttention-3's order, the default; `g` and a number, `4g4`, sets
JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP to it: variant 4's launch order in groups of that
many (batch, kv head) pairs; `c`, `4c`, JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT=0:
dQ's conversion after the kernel, not the default's early launch on the tiles' semaphores;
`p`, `4p`, JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT=0: variant 4 one CTA per work
item, not the default's persistent grid; `o` with it, `4po`,
JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA=0: dK, dV stored from the registers, not
through TMA stores; `w`, `4w`, JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS=4: 4 dQ slots, a
long query line's adds in 3 chains; `x`, `4x`, ..._DQ_SLOTS=8: 8 slots, 7 chains; `y`,
`4y`, ..._DQ_SLOTS=2: 2 dQ slots, the default's choice for every mask but sparse ones
with global query rows; `u`, `du`, JAX_BLOCKSPARSE_ATTN_DELTA_TILES=0: the backward's
delta = rowsum(dO * O) a warp a row, not the default's 32-row tiles; `d` alone: every
switch unset, the defaults).
`--block-size 64` runs the patterns at block 64 (without FlexAttention: `peers.py masks`
reads masks of 128-blocks only).
Calls without a fused kernel run the pure-JAX path; those longer than `--max-pure-seq` are
skipped (said in the table).
`--metadata` adds a table of the metadata cost: each pattern's forward with the same block
mask as a traced `BlockMask` (an argument of the jitted call, its lists built on the device,
`max_blocks` the layout's longest row) beside the static `Layout`, the construction of
those lists (with the packed row's document refinement) alone (both directions; device
time: ten constructions chained in one program, `bench.timing.chained_ms`), and the
forward with the default `max_blocks` (`Rk`: no row can overflow, so no NaN pass over the output).
Where `nvidia-smi` runs, each timed pass of ours and of cuDNN also records the card's SM
clock (mean and least, MHz) and power draw (mean, W), sampled every 50 ms while it runs
(`card_samples`; printed in the `ours ...` and `cuDNN ...` lines): the same kernels ran
8-10% slower inside this table's run than alone (RESULTS 2026-12-07 seventh session).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import contextlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jax_blocksparse as jbs
from jax_blocksparse import _cuda
from jax_blocksparse.attention import _context
from jax_blocksparse.bench.timing import chained_ms, median_ms

BS = 128
KV_HEADS = None  # k and v heads (--kv-heads; None: as many as q heads)
FLEX_BLOCK = 128  # the block of the masks `peers.py masks` reads (FlexAttention's default)


def documents(seq_len, seed=0):
    """int32 `[S]` document ids of packed sequences: lengths uniform in [512, 4096]."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < seq_len:
        lengths.append(int(rng.integers(512, 4097)))
    return np.repeat(np.arange(len(lengths)), lengths)[:seq_len].astype(np.int32)


def patterns(quick, extended, only=None):
    """(name, S, D, layout, causal, document ids or None) of every row; `only`: the rows
    named there ("causal" every causal row, "causal@256" its head dim 256 rows)."""
    s0 = 1024 if quick else 8192
    make = {
        "local": lambda s: (jbs.layouts.local(s, BS, 1024), True),
        "strided": lambda s: (jbs.layouts.strided(s, BS, 1024), True),
        "fixed": lambda s: (jbs.layouts.fixed(s, BS, 512), True),
        "bigbird": lambda s: (jbs.layouts.bigbird(s, BS, seed=1), False),
        "causal": lambda s: (jbs.layouts.causal(s, BS), True),
        "packed": lambda s: (jbs.layouts.causal(s, BS), True),
    }
    rows = [(name, s0, 128) for name in make]
    if extended and not quick:
        rows += [(name, s, 128) for s in (16384, 32768) for name in ("local", "packed")]
        rows += [("causal", s0, d) for d in (64, 96, 256)]
    if only:
        rows = [(name, s, d) for name, s, d in rows if {name, f"{name}@{d}"} & set(only)]
    return [(name, s, d, *make[name](s), documents(s) if name == "packed" else None)
            for name, s, d in rows]


def allowed_pairs(layout, causal, docs):
    """Allowed (i, j) pairs of one head, counted on the host in 1024-row chunks."""
    mask, s = layout.mask, layout.shape[0]
    j = np.arange(s)[None]
    pairs = 0
    for r0 in range(0, s, 1024):
        i = np.arange(r0, min(r0 + 1024, s))[:, None]
        ok = mask[i // BS, j // BS]
        if causal:
            ok &= j <= i
        if docs is not None:
            ok &= docs[i] == docs[j]
        pairs += int(ok.sum())
    return pairs


def key(name, s, d):
    return f"{name}_S{s}_D{d}"


@contextlib.contextmanager
def card_samples(into, label):
    """While the block runs, `nvidia-smi` samples the SM clock and power draw every 50 ms;
    after it, `into[label + " MHz"]` holds (mean, least) SM clock and `into[label + " W"]`
    the mean power. Nothing where `nvidia-smi` is missing or gives no sample."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        yield
        return
    proc = subprocess.Popen([smi, "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,"
                             "nounits", "-i", "0", "-lms", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        yield
    finally:
        proc.terminate()
        samples = []
        for line in proc.communicate()[0].splitlines():
            try:
                samples.append([float(x) for x in line.split(",")])
            except ValueError:  # "[N/A]", a cut line
                continue
        if samples:
            clocks, watts = np.array(samples).T
            into[label + " MHz"] = (round(float(clocks.mean())), int(clocks.min()))
            into[label + " W"] = round(float(watts.mean()))


def time_pass(f, q, k, v, backward, samples=None):
    """Median ms of the forward, or of forward + backward (a vjp with a fixed cotangent);
    `samples`: a dict that gets the card's clock and power while the timed calls run
    (`card_samples`, after the compilation)."""
    label = "fwd+bwd" if backward else "fwd"
    if not backward:
        step = jax.jit(f)
    else:
        cot = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), q.dtype)
        step = jax.jit(lambda q, k, v: jax.vjp(f, q, k, v)[1](cot))
    jax.block_until_ready(step(q, k, v))  # compiled outside the samples
    with card_samples({} if samples is None else samples, label):
        return median_ms(step, q, k, v)


def qkv(batch, s, heads, d):
    """Random bf16 q [B, S, H, D] and k, v [B, S, KV_HEADS (or H), D]: GQA with --kv-heads."""
    rng = np.random.default_rng(s + d)
    hkv = KV_HEADS or heads
    return [jnp.asarray(rng.standard_normal((batch, s, h, d)), jnp.bfloat16)
            for h in (heads, hkv, hkv)]


def measure_ours(rows, batch, heads, backward, max_pure_seq):
    """{key: {"fwd": ms, "fwd+bwd": ms} or {"skipped": why}} of our attention."""
    out = {}
    for name, s, d, layout, causal, docs in rows:
        why = _cuda.fused_attention_unsupported(jnp.bfloat16, d, BS, s, s, docs is not None,
                                                False, 1)  # the backward's
        why_fwd = _cuda.fused_attention_unsupported(jnp.bfloat16, d, BS, s, s,
                                                    docs is not None, False, 1, forward=True)
        if not jbs.cuda_available():
            why = why or "no GPU"
            why_fwd = why_fwd or "no GPU"
        if why_fwd and s > max_pure_seq:
            out[key(name, s, d)] = {"skipped": f"pure-JAX path ({why}) above {max_pure_seq}"}
            continue
        q, k, v = qkv(batch, s, heads, d)
        ids = None if docs is None else jnp.broadcast_to(jnp.asarray(docs), (batch, s))
        f = lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal, q_segment_ids=ids)
        entry = {"path": why_fwd and f"pure-JAX ({why_fwd})" or
                 (f"fused forward, pure-JAX backward ({why})" if why else "fused")}
        for passes in ((False, True) if backward else (False,)):
            if passes and why and s > max_pure_seq:  # the backward would run pure-JAX
                entry["fwd+bwd"] = None
                continue
            try:
                entry["fwd+bwd" if passes else "fwd"] = time_pass(f, q, k, v, passes, entry)
            except Exception as e:  # out of memory on the pure-JAX path
                entry["fwd+bwd" if passes else "fwd"] = None
                entry["error"] = f"{type(e).__name__}: {str(e)[:60]}"
        out[key(name, s, d)] = entry
        print(f"  ours {key(name, s, d)}: {entry}", file=sys.stderr, flush=True)
    return out


def metadata_forwards(row, batch, heads):
    """A pattern's random q, k, v, its document ids (or None), its block mask as a device
    array, and its jitted forward with the static `Layout` and with the mask as a traced
    `BlockMask` of the default `max_blocks` (`Rk`: no row can overflow, so no NaN pass
    over the output; the second takes the mask as its last argument)."""
    _, s, d, layout, causal, docs = row
    ids = None if docs is None else jnp.broadcast_to(jnp.asarray(docs), (batch, s))
    static = jax.jit(lambda q, k, v: jbs.attention(q, k, v, layout, causal=causal,
                                                   q_segment_ids=ids))
    roomy = jax.jit(lambda q, k, v, m: jbs.attention(
        q, k, v, jbs.BlockMask.from_mask(m, BS), causal=causal, q_segment_ids=ids))
    return qkv(batch, s, heads, d), ids, jnp.asarray(layout.mask), static, roomy


def measure_metadata(rows, batch, heads):
    """Print, per pattern, the forward with a static `Layout` and with the same mask as a
    traced `BlockMask`, and the traced lists' construction alone (median ms)."""
    print(f"{'pattern':>8} {'S':>6} {'Layout ms':>10} {'BlockMask ms':>13} {'ratio':>6} "
          f"{'lists ms':>9} {'lists share':>11} {'max_blocks=Rk ms':>17} {'ratio':>6}")
    for row in rows:
        name, s, _, layout, causal, _ = row
        (q, k, v), ids, mask, static, roomy = metadata_forwards(row, batch, heads)
        width = int(layout.mask.sum(-1).max())
        traced = lambda m: jbs.BlockMask.from_mask(m, BS, max_blocks=width)
        dynamic = jax.jit(lambda q, k, v, m: jbs.attention(q, k, v, traced(m), causal=causal,
                                                           q_segment_ids=ids))
        lists = lambda m: _context(traced(m), causal, s, s,
                                   documents=None if ids is None else (ids, ids))[0]
        t_static = median_ms(static, q, k, v)
        t_dynamic = median_ms(dynamic, q, k, v, mask)
        t_lists = chained_ms(lists, mask)  # device time: one call is shorter than a dispatch
        t_roomy = median_ms(roomy, q, k, v, mask)
        print(f"{name:>8} {s:>6} {t_static:10.3f} {t_dynamic:13.3f} "
              f"{t_dynamic / t_static:6.3f} {t_lists:9.3f} {t_lists / t_dynamic:10.1%} "
              f"{t_roomy:17.3f} {t_roomy / t_static:6.3f}", flush=True)


def trace_metadata(rows, name, batch, heads, calls=5):
    """Runs pattern `name`'s forward `calls` times with the static `Layout`, then with the
    same mask as a traced `BlockMask` (default `max_blocks`): under Nsight Compute's
    per-kernel summary (device.sh metadata_profile) the kernels the BlockMask adds, and
    their device time, stand beside the attention kernel both run."""
    qkv, _, mask, static, traced = metadata_forwards(
        next(r for r in rows if r[0] == name), batch, heads)
    for label, fn, args in (("Layout", static, qkv), ("BlockMask", traced, (*qkv, mask))):
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        print(f"{name}: {calls} forward calls with the {label}", flush=True)


def measure_cudnn(rows, batch, heads, backward):
    """{(S, D): {"fwd": ms, "fwd+bwd": ms}} of cuDNN's dense causal attention."""
    out = {}
    for s, d in sorted({(s, d) for _, s, d, *_ in rows}):
        q, k, v = qkv(batch, s, heads, d)
        f = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                         implementation="cudnn")
        entry = {}
        for passes in ((False, True) if backward else (False,)):
            try:
                entry["fwd+bwd" if passes else "fwd"] = time_pass(f, q, k, v, passes, entry)
            except Exception as e:  # no cuDNN here (a CPU)
                entry["error"] = f"{type(e).__name__}"
        out[(s, d)] = entry
        print(f"  cuDNN S{s}_D{d}: {entry}", file=sys.stderr, flush=True)
    return out


FLEX_LINE = re.compile(r"^torch FlexAttention \(compiled\)\s+(\S+) B\d+ H\d+ Tq\d+ Tk\d+ D\d+ "
                       r"(fwd\+bwd|fwd)\s+([\d.]+) ms")


def measure_flex(rows, peers, batch, heads, folder):
    """{key: {"fwd": ms, "fwd+bwd": ms}} of FlexAttention on the same block masks."""
    out = {}
    for d in sorted({d for _, _, d, *_ in rows}):
        masks = {"B": np.int32(batch), "H": np.int32(heads), "D": np.int32(d)}
        for name, s, dd, layout, causal, docs in rows:
            if dd != d:
                continue
            label = key(name, s, d) + ("_causal" if causal else "")
            masks[label] = layout.mask
            if docs is not None:
                masks[label + "_docs"] = docs
        path = os.path.join(folder, f"attention_masks_D{d}.npz")
        np.savez(path, **masks)
        run = subprocess.run([sys.executable, peers, "masks", path], capture_output=True,
                             text=True)
        sys.stderr.write(run.stdout[-4000:] + run.stderr[-2000:])
        for line in run.stdout.splitlines():
            m = FLEX_LINE.match(line)
            if m:
                out.setdefault(m.group(1).removesuffix("_causal"), {})[m.group(2)] = \
                    float(m.group(3))
    return out


def ours_per_variant(args, rows):
    """{label: ours} with each forward variant (`--variants`) and each backward variant
    (`--bwd-variants`) in a fresh process (the switches are read once), or this process."""
    def sections(letters):  # h: heads outer (sections of one column), s: sections of L2,
        # a: one section of all; none: unset (None), each forward call's choice
        # (_cuda.forward_head_sections; the backward: one section)
        return ("1" if "h" in letters else "l2" if "s" in letters or "q" in letters else
                "0" if "a" in letters else None)
    # q: sections of L2 of near-equal widths (JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN)
    def even(letters):
        return "1" if "q" in letters else "0"
    def forward_switches(v):  # "2", "2p", "2h", "2s", "2q", "2a", "2e": the variant, letters
        letters = v.lstrip("0123456789")
        return {"JAX_BLOCKSPARSE_ATTN_FWD_VARIANT": v[:len(v) - len(letters)],
                "JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT": "1" if "p" in letters else "0",
                "JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE": "0" if "e" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS": sections(letters),
                "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS_EVEN": even(letters)}
    runs = [(forward_switches(v), f"v{v} ") for v in (args.variants or "").split(",") if v]
    def backward_switches(v):  # "2", "2t", "2r", "4k", "2n", "2h", "2s": the variant, letters
        letters = v.lstrip("0123456789")
        return {"JAX_BLOCKSPARSE_ATTN_BWD_VARIANT": v[:len(v) - len(letters)],
                "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS": sections(letters),
                "JAX_BLOCKSPARSE_ATTN_BWD_TILED64": ("1" if "t" in letters else
                                                     "0" if "r" in letters else ""),
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_FIRST": "0" if "k" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_GROUP": (
                    group.group(1) if (group := re.search(r"g(\d+)", letters)) else ""),
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_EARLY_CONVERT": "0" if "c" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_PERSISTENT": "0" if "p" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_STORE_TMA": "0" if "o" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_BWD_ONEPASS_DQ_SLOTS": ("4" if "w" in letters else
                                                             "2" if "y" in letters else
                                                             "8" if "x" in letters else ""),
                "JAX_BLOCKSPARSE_ATTN_DELTA_TILES": "0" if "u" in letters else "",
                "JAX_BLOCKSPARSE_ATTN_BWD_D256": "0" if "n" in letters else ""}
    runs += [(backward_switches(v), f"b{v} ")
             for v in (args.bwd_variants or "").split(",") if v]
    if not runs:
        return {"": measure_ours(rows, args.batch, args.heads, args.backward,
                                 args.max_pure_seq)}
    result = {}
    for switches, label in runs:
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            cmd = [sys.executable, __file__, "--ours-json", fh.name,
                   *(["--backward"] if args.backward else []),
                   *(["--quick"] if args.quick else []),
                   *(["--extended"] if args.extended else []),
                   *(["--only", args.only] if args.only else []),
                   "--batch", str(args.batch), "--heads", str(args.heads),
                   *(["--kv-heads", str(args.kv_heads)] if args.kv_heads else []),
                   "--block-size", str(args.block_size),
                   "--max-pure-seq", str(args.max_pure_seq)]
            env = {name: value for name, value in dict(os.environ, **switches).items()
                   if value is not None}
            subprocess.run(cmd, env=env, check=True)
            result[label] = json.load(open(fh.name))
    return result


def table(rows, ours, flex, cudnn, batch, heads, backward):
    passes = ("fwd", "fwd+bwd") if backward else ("fwd",)
    tf = lambda ms, flops: f"{flops / ms / 1e9:7.1f}" if ms else "      -"
    head = f"{'pattern':>8} {'S':>6} {'D':>4} {'pairs':>6} {'pass':>7} "
    head += "".join(f"{v + 'ours TF':>12} {'x flex':>7} " for v in ours)
    print(head + f"{'flex TF':>8} {'cuDNN TF':>9} {'ours/cuDNN time':>15}")
    for name, s, d, layout, causal, docs in rows:
        pairs = allowed_pairs(layout, causal, docs)
        k = key(name, s, d)
        for p in passes:
            useful = 4 * batch * heads * d * pairs * (3.5 if p == "fwd+bwd" else 1)
            fl = flex.get(k, {}).get(p)
            cu = cudnn.get((s, d), {}).get(p)
            line = f"{name:>8} {s:>6} {d:>4} {pairs / s / s:6.3f} {p:>7} "
            first = None
            for mine in ours.values():
                e = mine.get(k, {})
                ms = e.get(p)
                first = first or ms
                ratio = f"{fl / ms:7.2f}" if ms and fl else "      -"
                line += f"{tf(ms, useful):>12} {ratio} "
            line += f"{tf(fl, useful):>8} {tf(cu, useful):>9} "
            line += f"{cu / first:15.2f}" if cu and first else f"{'-':>15}"
            notes = [e.get("skipped") or e.get("error") for e in
                     (m.get(k, {}) for m in ours.values())]
            print(line + "".join(f"  {n}" for n in notes if n))


def main():
    global BS, KV_HEADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", help="peers.py (FlexAttention on the same masks)")
    parser.add_argument("--backward", action="store_true", help="also forward + backward")
    parser.add_argument("--variants", help="e.g. 0,2: JAX_BLOCKSPARSE_ATTN_FWD_VARIANT values "
                        "(letters after one: p JAX_BLOCKSPARSE_ATTN_FWD_PERSISTENT=1, e "
                        "JAX_BLOCKSPARSE_ATTN_FWD_LAZY_RESCALE=0, h / s / a "
                        "JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=1 / l2 / 0, which the backward "
                        "takes too; none: unset, each forward call's choice)")
    parser.add_argument("--bwd-variants",
                        help="e.g. 2,4: JAX_BLOCKSPARSE_ATTN_BWD_VARIANT values; letters "
                        "after one: t / r JAX_BLOCKSPARSE_ATTN_BWD_TILED64=1 / 0, k "
                        "..._ONEPASS_DQ_FIRST=0, n ..._D256=0, gN ..._ONEPASS_GROUP=N, c "
                        "..._ONEPASS_EARLY_CONVERT=0, p ..._ONEPASS_PERSISTENT=0, o (with p) "
                        "..._ONEPASS_STORE_TMA=0, w / x / y ..._ONEPASS_DQ_SLOTS=4 / 8 / 2, "
                        "h / s / a JAX_BLOCKSPARSE_ATTN_HEAD_SECTIONS=1 / l2 / 0 (the forward "
                        "too)")
    parser.add_argument("--extended", action="store_true",
                        help="also S 16384 and 32768 (local, packed), D 64, 96, 256 (causal)")
    parser.add_argument("--quick", action="store_true", help="S 1024 only (a CPU check)")
    parser.add_argument("--only", help="rows to run, e.g. causal@128,causal@256 (with "
                        "--extended for the head dims other than 128) or local,packed")
    parser.add_argument("--metadata", action="store_true",
                        help="also the traced BlockMask against the Layout, and list building")
    parser.add_argument("--metadata-only", action="store_true",
                        help="only the --metadata table (no peers, no cuDNN)")
    parser.add_argument("--metadata-trace", metavar="PATTERN",
                        choices=["local", "strided", "fixed", "bigbird", "causal", "packed"],
                        help="only PATTERN's forward, 5 calls with the Layout, then 5 with a "
                        "BlockMask (for Nsight Compute: device.sh metadata_profile)")
    parser.add_argument("--block-size", type=int, default=BS,
                        help="the patterns' block size (64: the Hopper forward's block-64 "
                        "rows; the backward on FA2's, or on 128 x 128 tiles: mask sources, "
                        "layouts that fill them, JAX_BLOCKSPARSE_ATTN_BWD_TILED64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int,
                        help="k and v heads (GQA; default: --heads); FlexAttention skipped")
    parser.add_argument("--max-pure-seq", type=int, default=8192)
    parser.add_argument("--ours-json", help=argparse.SUPPRESS)  # a variant's child process
    args = parser.parse_args()
    BS = args.block_size
    KV_HEADS = args.kv_heads
    rows = patterns(args.quick, args.extended, args.only.split(",") if args.only else None)
    if not rows:
        parser.error(f"--only {args.only}: no such row (head dims other than 128 and S "
                     "16384 / 32768 are rows of --extended without --quick)")
    if args.ours_json:
        ours = measure_ours(rows, args.batch, args.heads, args.backward, args.max_pure_seq)
        json.dump(ours, open(args.ours_json, "w"))
        return
    print(f"devices: {jax.devices()}; B={args.batch} H={args.heads} bf16 block {BS}")
    if args.metadata_only:
        measure_metadata(rows, args.batch, args.heads)
        return
    if args.metadata_trace:
        trace_metadata(rows, args.metadata_trace, args.batch, args.heads)
        return
    ours = ours_per_variant(args, rows)
    cudnn = measure_cudnn(rows, args.batch, args.heads, args.backward)
    flex = {}
    if args.peers and BS != FLEX_BLOCK:
        print(f"FlexAttention skipped: peers.py masks reads block masks of {FLEX_BLOCK} only")
    elif args.peers and KV_HEADS and KV_HEADS != args.heads:
        print("FlexAttention skipped: peers.py masks runs as many k, v heads as q heads")
    elif args.peers:
        flex = measure_flex(rows, args.peers, args.batch, args.heads,
                            os.environ.get("OUT") or tempfile.mkdtemp())
    table(rows, ours, flex, cudnn, args.batch, args.heads, args.backward)
    if args.metadata:
        measure_metadata(rows, args.batch, args.heads)


if __name__ == "__main__":
    main()

"""The examples run (a few steps, tiny configurations); the LM starts afresh when run again
and resumes from its checkpoint with --resume."""

import os
import subprocess
import sys

import numpy as np

import jax_blocksparse as jbs

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TINY = ["--seq-len", "128", "--d-model", "64", "--heads", "1", "--layers", "1", "--batch", "2",
        "--eval-batches", "1", "--data-limit", "200000"]


def launch(script, *args, cwd, env=None):
    """The completed `python examples/<script> args`, run in `cwd` with this jax_blocksparse
    (and the environment variables `env`)."""
    root = os.path.dirname(os.path.dirname(jbs.__file__))
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def run(script, *args, cwd, env=None):
    """stdout of a successful `launch`."""
    result = launch(script, *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart(tmp_path):
    out = run("quickstart.py", "--features", "128", "--steps", "20", cwd=tmp_path)
    assert "relative weight error" in out


def test_language_model_trains_checkpoints_and_resumes(tmp_path):
    ckpt = str(tmp_path / "run")
    args = (*TINY, "--eval-every", "2", "--ckpt-dir", ckpt)
    out = run("sparse_transformer_lm.py", *args, "--steps", "2", cwd=tmp_path)
    assert "step 2: validation" in out and "attention layout" in out
    assert "starting afresh; checkpoints go to" in out and "pure-JAX path" in out
    assert (tmp_path / "run" / "loss.png").exists()
    os.remove(tmp_path / "run" / "loss.png")
    # the same command again trains again, from scratch, and says so
    out = run("sparse_transformer_lm.py", *args, "--steps", "2", cwd=tmp_path)
    assert "starting afresh: deleting the checkpoints of an earlier run" in out
    assert "use --resume" in out and "step 2: validation" in out
    assert (tmp_path / "run" / "loss.png").exists()
    out = run("sparse_transformer_lm.py", *args, "--steps", "2", "--resume", cwd=tmp_path)
    assert "resumed from step 2" in out and "nothing to train" in out
    out = run("sparse_transformer_lm.py", *args, "--steps", "4", "--resume", cwd=tmp_path)
    assert "resumed from step 2" in out and "training from step 2 to step 4" in out
    assert "step 2: validation" not in out and "step 4: validation" in out


def test_language_model_compare_dense(tmp_path):
    out = run("sparse_transformer_lm.py", *TINY, "--compare", cwd=tmp_path)
    assert "sparse step" in out and "dense  step" in out


def test_language_model_packed_documents(tmp_path):
    """--packed: segment ids keep attention inside each document (sparse and dense)."""
    out = run("sparse_transformer_lm.py", *TINY, "--packed", "--steps", "2", "--eval-every",
              "2", "--no-checkpoint", cwd=tmp_path)
    assert "packed: attention within each" in out and "step 2: validation" in out
    out = run("sparse_transformer_lm.py", *TINY, "--packed", "--compare", cwd=tmp_path)
    assert "sparse step" in out and "dense  step" in out


def test_language_model_data_and_tensor_parallel_mesh(tmp_path):
    """--mesh 4x2, 2x1 and 1x2 on 8 CPU devices (batch over "data", the sparse MLPs split
    over "model", packed documents): the same losses as one device, and the sharded
    checkpoint saves."""
    args = (*TINY, "--batch", "8", "--heads", "2", "--packed", "--steps", "3",
            "--eval-every", "3")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    one = run("sparse_transformer_lm.py", *args, "--no-checkpoint", cwd=tmp_path, env=env)
    validation = [line for line in one.splitlines() if "step 3: validation" in line]
    assert validation
    for shape in ("4x2", "2x1", "1x2"):
        data, model = shape.split("x")
        keep = ("--ckpt-dir", str(tmp_path / "run")) if shape == "4x2" else ("--no-checkpoint",)
        mesh = run("sparse_transformer_lm.py", *args, "--mesh", shape, *keep, cwd=tmp_path,
                   env=env)
        assert f"mesh: {{'data': {data}, 'model': {model}}}" in mesh
        assert validation[0] in mesh, shape  # 3 decimals: equal to one device
    assert (tmp_path / "run" / "3").exists()


def test_language_model_resume_needs_checkpoints(tmp_path):
    result = launch("sparse_transformer_lm.py", "--resume", "--no-checkpoint", cwd=tmp_path)
    assert result.returncode == 2 and "--resume needs the checkpoints" in result.stderr


def test_examples_refuse_bad_flags_by_name(tmp_path):
    """Flag values the examples cannot run end in a usage error naming the flag (exit 2),
    not a traceback, a NaN loss or a silently dropped flag."""
    for script, args, message in (
            ("sparse_transformer_lm.py", ["--d-model", "32"], "--d-model must be a multiple"),
            ("sparse_transformer_lm.py", ["--mesh", "0x1"], "--mesh must be DxT"),
            ("sparse_transformer_lm.py", ["--compare", "--mesh", "1x1"], "drop --mesh"),
            ("sparse_transformer_lm.py", ["--steps", "0"], "--steps must be >= 1"),
            ("generate.py", ["--attention", "moba", "--kv-dtype", "fp8"], "needs a KV cache"),
            ("quickstart.py", ["--batch", "0"], "--batch must be >= 1")):
        result = launch(script, *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_packed_batches_number_the_documents_of_each_window():
    sys.path.insert(0, EXAMPLES)
    try:
        import sparse_transformer_lm as lm
    finally:
        sys.path.remove(EXAMPLES)
    data = np.arange(100, dtype=np.uint8)
    starts = np.array([0, 10, 35, 70])
    tokens, ids = next(lm.batches(data, starts, 4, 30, seed=3, packed=True))
    for row_tokens, row_ids in zip(tokens, ids):
        want = np.searchsorted(starts, row_tokens, side="right")  # tokens are positions
        np.testing.assert_array_equal(row_ids, want - want[0])
    assert next(lm.batches(data, starts, 4, 30, seed=3))[1] is None


def test_language_model_moba_blocks_chosen_from_the_data(tmp_path):
    """--attention moba: a BlockMask computed from each step's queries and keys, trained."""
    out = run("sparse_transformer_lm.py", *TINY, "--attention", "moba", "--block-size", "32",
              "--steps", "2", "--eval-every", "2", "--no-checkpoint", cwd=tmp_path)
    assert "attention: MoBA" in out and "step 2: validation" in out


def test_moba_block_mask_selects_top_k_earlier_blocks():
    sys.path.insert(0, EXAMPLES)
    try:
        import sparse_transformer_lm as lm
    finally:
        sys.path.remove(EXAMPLES)
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 128, 4, 8)).astype(np.float32)
    k = rng.standard_normal((2, 128, 2, 8)).astype(np.float32)
    mask = np.asarray(lm.moba_block_mask(q, k, 16, 3))  # [2, 4, 8, 8]
    r = 8
    for b in range(2):
        for h in range(4):
            for i in range(r):
                row = mask[b, h, i]
                assert row[i] and not row[i + 1:].any()  # own block, nothing later
                assert row[:i].sum() == min(3, i)  # exactly top_k earlier ones
                pooled = k[b].reshape(r, 16, 2, 8).mean(1)[:, h // 2]  # [R, D]
                gate = (q[b, i * 16:(i + 1) * 16, h] @ pooled.T).mean(0)[:i]
                if i > 3:
                    assert set(np.flatnonzero(row[:i])) == set(np.argsort(gate)[-3:])


# ---------------------------------------------------------------- examples/generate.py
GENERATE_TINY = ["--seq-len", "128", "--d-model", "64", "--heads", "1", "--layers", "1",
                 "--block-size", "32", "--stride", "64"]


def _import_generate():
    sys.path.insert(0, EXAMPLES)
    try:
        import generate
    finally:
        sys.path.remove(EXAMPLES)
    return generate


def test_generate_kv_cache_decode_equals_the_full_model():
    """prefill + decode_step (the KV-cache path: q_offset, kv_lengths, the cache written
    at each position) give the logits of the full model (model.apply) at the same
    positions: prompts of different lengths per batch entry, across block boundaries and
    the layout's stride, two layers, two heads; and the sparse and the dense model, with
    and without attention sinks and a soft cap."""
    import jax
    import jax.numpy as jnp

    generate = _import_generate()
    with jax.default_matmul_precision("highest"):  # no TF32 on a GPU: compare float32
        _check_decode_equals_full_model(generate, jax, jnp)


def _check_decode_equals_full_model(generate, jax, jnp):
    sinks_cap = ["--sinks", "--softcap", "3"]  # learned sinks (perturbed: not zero), a cap
    for extra in ([], ["--dense"], sinks_cap, ["--dense", *sinks_cap]):
        c = generate.build_parser().parse_args(
            ["--seq-len", "128", "--d-model", "64", "--heads", "2", "--layers", "2",
             "--block-size", "32", "--stride", "64", "--dtype", "float32", *extra])
        model = generate.lm.build_model(c, c.dense)
        params = model.init(jax.random.key(0), jnp.zeros((1, 128), jnp.int32))["params"]
        leaves, tree = jax.tree.flatten(params)  # nonzero biases, larger weights
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                           for x, k in zip(leaves, keys)])
        tokens = jax.random.randint(jax.random.key(2), (2, 128), 0, 256, jnp.int32)
        want = model.apply({"params": params}, tokens)  # [2, 128, 256]
        lengths = jnp.array([30, 62], jnp.int32)  # decode crosses rows 32 and 64
        logits, cache = jax.jit(lambda p, t, n: generate.prefill(model, p, t, n))(
            params, tokens, lengths)
        assert len(cache) == 2 and cache[0][0].shape == (2, 128, 2, 32)
        rows = jnp.arange(2)
        np.testing.assert_allclose(logits, want[rows, lengths - 1], rtol=1e-4, atol=1e-4)
        step = jax.jit(lambda p, kv, t, n: generate.decode_step(model, p, kv, t, n))
        for t in range(4):  # the token at position lengths + t, then its logits
            logits, cache = step(params, cache, tokens[rows, lengths + t], lengths + t + 1)
            np.testing.assert_allclose(logits, want[rows, lengths + t], rtol=1e-4, atol=1e-4)


def test_generate_without_checkpoint_says_so_and_runs(tmp_path):
    out = run("generate.py", *GENERATE_TINY, "--tokens", "5", "--prompt", "def f",
              "--ckpt-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert "no checkpoint in" in out and "freshly initialized" in out
    assert "generated 5 tokens" in out and "tokens/s" in out
    assert not (tmp_path / "none").exists()


def test_generate_greedy_loop_equals_greedy_over_the_full_model():
    """generate() (prefill, then one cached step per token) continues a prompt with the
    tokens that repeated argmax over model.apply on the growing sequence picks."""
    import jax
    import jax.numpy as jnp

    generate = _import_generate()
    c = generate.build_parser().parse_args(GENERATE_TINY)
    model = generate.lm.build_model(c, c.dense)
    params = model.init(jax.random.key(3), jnp.zeros((1, 128), jnp.int32))["params"]
    params = jax.tree.map(lambda x: x * 3.0 + 0.01, params)  # spread the logits
    with jax.default_matmul_precision("highest"):
        out, stats = generate.generate(model, params, b"x" * 60 + b"def f(", 8)
        apply = jax.jit(lambda t: model.apply({"params": params}, t))
        seq = list(b"x" * 60 + b"def f(")
        for _ in range(8):
            window = np.zeros((1, 128), np.int32)
            window[0, :len(seq)] = seq
            seq.append(int(np.argmax(apply(window)[0, len(seq) - 1])))
    assert list(out) == seq[66:] and stats["decode_steps"] == 7 and stats["prompt"] == 66
    assert len(generate.generate(model, params, b"y" * 126, 5)[0]) == 2  # stops at seq-len


def test_generate_restores_the_trained_checkpoint(tmp_path):
    ckpt = str(tmp_path / "run")
    run("sparse_transformer_lm.py", *TINY, "--steps", "2", "--eval-every", "2", "--ckpt-dir",
        ckpt, cwd=tmp_path)
    out = run("generate.py", *TINY[:8], "--tokens", "3", "--ckpt-dir", ckpt, cwd=tmp_path)
    assert "restored the parameters of step 2" in out and "generated 3 tokens" in out


def test_language_model_sinks_and_softcap(tmp_path):
    """--sinks --softcap CAP: learned sinks and capped scores, sparse (layout and MoBA) and
    dense (--compare)."""
    opts = ("--sinks", "--softcap", "5", "--no-checkpoint", "--eval-every", "2")
    out = run("sparse_transformer_lm.py", *TINY, *opts, "--steps", "2", cwd=tmp_path)
    assert "a learned sink per head, scores soft-capped at 5" in out
    assert "step 2: validation" in out
    out = run("sparse_transformer_lm.py", *TINY, *opts, "--attention", "moba", "--steps", "2",
              cwd=tmp_path)
    assert "step 2: validation" in out
    out = run("sparse_transformer_lm.py", *TINY, "--sinks", "--softcap", "5", "--compare",
              cwd=tmp_path)
    assert "sparse step" in out and "dense  step" in out


def test_generate_fp8_kv_cache():
    """--kv-dtype fp8: the cache quantized to float8_e4m3fn with a scale per kv head
    (`quantize_cache`); the cached steps' logits stay close to the full model's (fp8 has
    3 mantissa bits), and the script runs with the flag."""
    import jax
    import jax.numpy as jnp

    generate = _import_generate()
    c = generate.build_parser().parse_args(
        ["--seq-len", "128", "--d-model", "64", "--heads", "2", "--layers", "2",
         "--block-size", "32", "--stride", "64", "--dtype", "float32", "--kv-dtype", "fp8"])
    model = generate.lm.build_model(c, c.dense)
    params = model.init(jax.random.key(0), jnp.zeros((1, 128), jnp.int32))["params"]
    tokens = jax.random.randint(jax.random.key(2), (2, 128), 0, 256, jnp.int32)
    with jax.default_matmul_precision("highest"):
        want = model.apply({"params": params}, tokens)
        lengths = jnp.array([30, 62], jnp.int32)
        _, cache = generate.prefill(model, params, tokens, lengths)
        cache = generate.quantize_cache(cache)
        k8, v8, ks, vs = cache[0]
        assert k8.dtype == jnp.float8_e4m3fn and ks.shape == vs.shape == (2,)
        assert bool((ks > 0).all()) and bool((vs > 0).all())
        step = jax.jit(lambda p, kv, t, n: generate.decode_step(model, p, kv, t, n))
        rows = jnp.arange(2)
        for t in range(3):
            logits, cache = step(params, cache, tokens[rows, lengths + t], lengths + t + 1)
            assert cache[0][0].dtype == jnp.float8_e4m3fn
            w = want[rows, lengths + t]
            err = float(jnp.abs(logits - w).max())
            assert err < 0.05 * float(jnp.abs(w).max()) + 1e-3, err


def test_generate_fp8_flag_runs(tmp_path):
    out = run("generate.py", *GENERATE_TINY, "--tokens", "4", "--kv-dtype", "fp8",
              "--ckpt-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert "float8_e4m3fn" in out and "generated 4 tokens" in out

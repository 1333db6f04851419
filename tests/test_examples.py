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


def launch(script, *args, cwd):
    """The completed `python examples/<script> args`, run in `cwd` with this jax_blocksparse."""
    root = os.path.dirname(os.path.dirname(jbs.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def run(script, *args, cwd):
    """stdout of a successful `launch`."""
    result = launch(script, *args, cwd=cwd)
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


def test_language_model_resume_needs_checkpoints(tmp_path):
    result = launch("sparse_transformer_lm.py", "--resume", "--no-checkpoint", cwd=tmp_path)
    assert result.returncode == 2 and "--resume needs the checkpoints" in result.stderr


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

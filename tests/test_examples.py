"""The examples run (a few steps, tiny configurations); the LM starts afresh when run again
and resumes from its checkpoint with --resume."""

import os
import subprocess
import sys

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


def test_language_model_resume_needs_checkpoints(tmp_path):
    result = launch("sparse_transformer_lm.py", "--resume", "--no-checkpoint", cwd=tmp_path)
    assert result.returncode == 2 and "--resume needs the checkpoints" in result.stderr

"""The examples run (a few steps, tiny configurations), and the LM resumes from its checkpoint."""

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
TINY = ["--seq-len", "128", "--d-model", "64", "--heads", "1", "--layers", "1", "--batch", "2",
        "--eval-batches", "1", "--data-limit", "200000"]


def run(script, *args, cwd):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart(tmp_path):
    out = run("quickstart.py", "--features", "128", "--steps", "20", cwd=tmp_path)
    assert "relative weight error" in out


def test_language_model_trains_checkpoints_and_resumes(tmp_path):
    ckpt = str(tmp_path / "run")
    out = run("sparse_transformer_lm.py", *TINY, "--steps", "4", "--eval-every", "2",
              "--ckpt-dir", ckpt, cwd=tmp_path)
    assert "step 4: validation" in out and "attention layout" in out
    out = run("sparse_transformer_lm.py", *TINY, "--steps", "6", "--eval-every", "2",
              "--ckpt-dir", ckpt, cwd=tmp_path)
    assert "resumed from step 4" in out and "step 6: validation" in out


def test_language_model_compare_dense(tmp_path):
    out = run("sparse_transformer_lm.py", *TINY, "--compare", cwd=tmp_path)
    assert "sparse step" in out and "dense  step" in out

"""The benchmark command's pieces run end to end on tiny grids and write a chart."""

import json
import subprocess
import sys

from jax_blocksparse.bench import attention, matmul
from jax_blocksparse.bench.chart import write_chart


def test_benchmarks_on_tiny_grids(tmp_path, monkeypatch):
    monkeypatch.setitem(matmul.SHAPES, "tiny", (64, 128, 128))
    rows = {"matmul": matmul.run(["float32"], [32], [0.25], ["tiny"], reps=1),
            "attention": attention.run([256], [64], ["local", "bigbird"], 1, 2, reps=1,
                                       block_size=64)}
    assert {r["op"] for r in rows["matmul"]} == {"fwd", "dx", "dW"}
    assert all(r["tflops"] > 0 for r in rows["matmul"] + rows["attention"])
    write_chart(tmp_path / "chart.png", rows)
    json.dumps(rows)


def test_pair_counts():
    import jax_blocksparse as jbs
    allowed, executed = attention.pair_counts(jbs.layouts.causal(256, 64), True, 256)
    assert allowed == 256 * 257 // 2 and executed == 10 * 64 * 64


def test_command_line_help():
    out = subprocess.run([sys.executable, "-m", "jax_blocksparse.bench", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--full" in out.stdout

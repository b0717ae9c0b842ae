"""The inference benchmark must keep running against the library it times: a tiny configuration
of ``bench/infer.py`` (it calls the jitted stylize function directly, so a changed signature
shows up here as a skipped configuration, not only when someone next benchmarks)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "infer.py"


def test_infer_bench_runs_a_tiny_configuration(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_infer", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    assert mod.main(["--widths", "0.25", "--sizes", "32", "--batches", "1", "--backends", "jax",
                     "--no-peer", "--no-pipeline", "--min-time", "0.05", "--max-reps", "3",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["skipped"] == [], result["skipped"]
    (run,) = result["ours"][0]["runs"]
    assert run["ms_per_image"] > 0 and run["reps"] >= 1

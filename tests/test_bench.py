"""The benchmarks must keep running against the library they time: tiny configurations of
``bench/infer.py`` (it calls the jitted stylize function directly, so a changed signature shows
up here as a skipped configuration, not only when someone next benchmarks), ``bench/data.py``
and ``bench/train.py`` (both loader modes)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "infer.py"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH.parent / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_infer_bench_runs_a_tiny_configuration(tmp_path):
    mod = _load("infer")
    out = tmp_path / "bench.json"
    assert mod.main(["--widths", "0.25", "--sizes", "32", "--batches", "1", "--backends", "jax",
                     "--no-peer", "--no-pipeline", "--min-time", "0.05", "--max-reps", "3",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["skipped"] == [], result["skipped"]
    (run,) = result["ours"][0]["runs"]
    assert run["ms_per_image"] > 0 and run["reps"] >= 1


def test_data_bench_measures_both_loader_modes(tmp_path, monkeypatch):
    # No training data (as on a fresh machine): the synthetic source only.
    monkeypatch.setenv("ARBITRARY_NST_DATA", str(tmp_path / "no_data"))
    mod = _load("data")
    out = tmp_path / "data.json"
    assert mod.main(["--batches", "2", "--batch-size", "2", "--workers", "1", "--prefetch", "1",
                     "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert sorted(r["mode"] for r in runs) == ["device", "host"]
    assert all(r["source"] == "synthetic" and r["images_per_s"] > 0 for r in runs)


def test_train_bench_runs_the_smoke_config_with_each_loader_mode(tmp_path):
    mod = _load("train")
    for extra, device_augment in (([], True), (["--host-augment"], False)):
        out = tmp_path / f"train{len(extra)}.json"
        assert mod.main(["--configs", "smoke", "--steps", "1", "--warmup", "0", "--no-loop",
                         "--loader-batches", "2", "--data", "synthetic", "--json", str(out),
                         *extra]) == 0
        (row,) = json.loads(out.read_text())["results"]
        assert row["step"]["steps_per_s"] > 0
        assert row["loader"]["device_augment"] is device_augment
        assert row["loader"]["batches_per_s"] > 0

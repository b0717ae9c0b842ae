"""The training data loader's own throughput (no model): images/s with 1 and 2 worker threads.

    python bench/data.py [--batches 30] [--batch-size 8] [--workers 1 2] [--json PATH] [--overwrite]

Each batch is 8 content crops (256, random resize + crop) and 8 style crops (256, Magenta's
brightness/saturation/hue jitter, flips, random resize to [258, 456) and crop), in two modes:
``host`` (``data.device_augment = False``: float32 in [0, 1], the jitter done by the loader) and
``device`` (the default: uint8 crops + jitter parameters, the conversion and jitter left to the
jitted step, :mod:`arbitrary_nst.device_augment`). ``images/s``
counts content + style images. Sources: ``synthetic`` (procedural, includes generating the
image) and, when the training data folder exists, the prepared TFDS folders (``folder``; the
folders are prepared first if needed) and an :func:`export_arrays` subset of them in a temporary
``.npz`` (``npz``: what a machine without TFDS reads). Also reports the
single-thread cost of each stage on the real data. ``--json`` (default the committed
``bench/results/data_cpu.json``) is refused up front if it exists, unless ``--overwrite``.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import data  # noqa: E402
from arbitrary_nst.errors import UsageParser  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

DATA_ROOT = Path(os.environ.get("ARBITRARY_NST_DATA", "").strip()  # (empty: unset, not ".")
                 or Path(__file__).resolve().parents[2] / "shared" / "data")
CONTENT = ["content/bsds500", "content/imagenet_samples", "content/coco2014_sample"]
STYLE = ["style/peopleart_wikiart", "style/chinese_painting", "style/bob_ross", "style/nst_examples", "texture/dtd10"]


def measure(cfg, sources, workers: int, batches: int, batch_size: int, prefetch: int,
            device_augment: bool) -> dict:
    cfg = dict(cfg, device_augment=device_augment)
    loader = data.make_loader(cfg, batch_size=batch_size, seed=0, num_workers=workers, prefetch=prefetch,
                              sources=sources)
    try:
        for _ in range(2):  # warm-up: thread start, first epoch permutation, page cache
            next(loader)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        dt = time.perf_counter() - t0
    finally:
        loader.close()
    n = 2 * batch_size * batches
    return {"mode": "device" if device_augment else "host", "workers": workers, "batches": batches, "images": n, "seconds": round(dt, 3),
            "images_per_s": round(n / dt, 1), "batches_per_s": round(batches / dt, 2)}


def stage_costs(sources, n: int = 100) -> dict:
    """Single-thread ms per image: decode only, content augmentation, style augmentation."""
    c, s = sources["content"], sources["style"]
    rng = np.random.default_rng(0)
    ci = rng.integers(0, len(c), n)
    si = rng.integers(0, len(s), n)
    out = {}
    t0 = time.perf_counter()
    for i in si:
        s.get(int(i))
    out["decode_style_ms"] = 1e3 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for k, i in enumerate(ci):
        data.augment_content(c.open(int(i)), np.random.default_rng(k), 256)
    out["content_256_ms"] = 1e3 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for k, i in enumerate(si):
        data.augment_style(s.open(int(i)), np.random.default_rng(k), 256)
    out["style_256_ms"] = 1e3 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()  # data.device_augment: uint8, no float copy, no jitter
    for k, i in enumerate(ci):
        data.augment_content(c.open(int(i)), np.random.default_rng(k), 256, as_uint8=True)
    out["content_256_uint8_ms"] = 1e3 * (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for k, i in enumerate(si):
        data.augment_style(s.open(int(i)), np.random.default_rng(k), 256, defer_jitter=True)
    out["style_256_deferred_jitter_ms"] = 1e3 * (time.perf_counter() - t0) / n
    x = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    t0 = time.perf_counter()
    for _ in range(n):
        data.color_jitter(x, 0.1, 1.2, 0.1)
    out["color_jitter_256_ms"] = 1e3 * (time.perf_counter() - t0) / n
    return {k: round(v, 2) for k, v in out.items()}


def main(argv=None) -> int:
    ap = UsageParser(prog="bench/data.py", description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--modes", nargs="+", choices=["host", "device"], default=["host", "device"],
                    help="host: float32 + jitter on the host; device: uint8 + jitter parameters")
    ap.add_argument("--data-dir", default=None, help="prepared TFDS data (default ~/.cache/arbitrary_nst/tfds)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "data_cpu.json"))
    add_overwrite(ap)
    a = ap.parse_args(argv)
    out = check_options(a, {"batches": 1, "batch_size": 1, "workers": 1, "prefetch": 1}, a.json)

    results: dict = {
        "meta": run_meta(__file__, argv),  # (device: None, the loader does not use JAX)
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "load_avg_1min_at_start": round(os.getloadavg()[0], 2)},
        "batch_size": a.batch_size, "image_size": 256, "style_size": 256, "style_resize_range": [258, 456],
        "augment_strength": 1.0, "runs": [],
    }
    setups = [("synthetic", {"source": "synthetic"})]
    if DATA_ROOT.is_dir():
        cfg = {"source": "folder", "content_dirs": [str(DATA_ROOT / d) for d in CONTENT],
               "style_dirs": [str(DATA_ROOT / d) for d in STYLE]}
        if a.data_dir:
            cfg["data_dir"] = a.data_dir
        setups.append(("folder", cfg))
        setups.append(("npz", cfg))  # the export_arrays subset (what a machine without TFDS reads)
    else:
        print(f"{DATA_ROOT} not found: synthetic source only")

    print(f"{'source':10} {'mode':>6} {'workers':>7} {'images/s':>9} {'batches/s':>10}")
    tmp = tempfile.TemporaryDirectory(prefix="nst_bench_")  # never inside the repository
    for name, cfg in setups:
        t0 = time.perf_counter()
        sources = data.prepare(cfg)
        prep_s = time.perf_counter() - t0
        if name == "npz":
            npz = os.path.join(tmp.name, "subset.npz")
            s = data.export_arrays(cfg, npz, 800, 1200, sources=sources)
            results["npz_export"] = {"n_content": s["n_content"], "n_style": s["n_style"], "megabytes": s["megabytes"]}
            cfg = {"source": f"npz:{npz}"}
            sources = data.prepare(cfg)
        if name == "folder":
            results["prepare"] = {"seconds_incl_reuse_check": round(prep_s, 2),
                                  "datasets": [{k: r[k] for k in ("role", "name", "num_prepared", "num_skipped", "reused")}
                                               for r in data.reports(sources)]}
            results["stage_costs_single_thread"] = stage_costs(sources)
        for mode in a.modes:
            for w in a.workers:
                r = measure(cfg, sources, w, a.batches, a.batch_size, a.prefetch, mode == "device")
                r["source"] = name
                results["runs"].append(r)
                print(f"{name:10} {mode:>6} {w:7d} {r['images_per_s']:9.1f} {r['batches_per_s']:10.2f}")
    tmp.cleanup()
    results["machine"]["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(f"load average (1 min) {results['machine']['load_avg_1min_at_start']} -> "
          f"{results['machine']['load_avg_1min_at_end']} on {os.cpu_count()} CPUs (other processes compete)")
    if "stage_costs_single_thread" in results:
        print("single-thread ms/image (real data):", results["stage_costs_single_thread"])
    write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)

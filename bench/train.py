"""Training throughput: the jitted train step alone, the data loader alone, and both together.

    python bench/train.py [--configs smoke cpu_small default] [--steps 5] [--json PATH]
                          [--overwrite]

For each config (``configs/<name>.py``; the default config at its own settings: 256x256 content
and style, batch 8, width 1.0):

* **step**: the jitted, donated, data-parallel train step of :mod:`arbitrary_nst.training` on
  fixed random batches already on the device(s), i.e. pure compute: steps/s, images/s
  (content images per second), XLA's FLOP count of one step (``cost_analysis``), the achieved
  TFLOP/s and, on a GPU with a known peak, the fraction of peak (the dense peak of the step's
  compute dtype: :data:`GPU_PEAK`);
* **loader**: ``data.make_loader`` alone at the config's batch size and sizes (``--data`` picks
  the source: the config's own, or ``synthetic``), batches/s and content images/s
  (``content_images_per_s``; each batch also holds as many style images, which
  ``bench/data.py``'s images/s and this JSON's ``images_per_s`` before it counted too);
* **train loop**: ``training.train`` end to end (loader + step + logging) for a few steps after a
  warm-up interval, steps/s.

``train.dtype = "auto"`` is used (float32 on CPU, bfloat16 on GPU) unless ``--dtype`` says
otherwise. Every config (with ``--dtype``, ``--data`` and ``--host-augment`` applied) is loaded
and checked before the first measurement. Results go to ``--json`` (default
``bench/results/train_{cpu,gpu}.json``, committed: an existing file is refused before anything
is measured unless ``--overwrite``).
"""
from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from arbitrary_nst import training  # noqa: E402
from arbitrary_nst.losses import LossConfig  # noqa: E402
from arbitrary_nst.models import param_count  # noqa: E402
from arbitrary_nst.errors import ConfigError, UsageParser  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

#: Dense peak FLOP/s by the step's compute dtype and GPU name fragment (the first fragment found
#: in ``device_kind`` counts), from NVIDIA's datasheets, *without* sparsity (the datasheets'
#: headline figures are the 2:4-sparse ones, twice these). "H100" is the **SXM** part (an
#: "H100 PCIe" has its own, lower entry; other H100 variants would match "H100" and be
#: overstated: pass --peak-tflops), "H200" the SXM part too (the same tensor cores as the H100
#: SXM). float32: the TF32 tensor-core peak, because XLA on GPU runs float32 convolutions and
#: matmuls at JAX's default precision, which uses TF32 on Ampere and later (the plain FP32 CUDA
#: core peak is ~67 TFLOP/s on an H100 SXM). (The fraction was always taken of the bf16 peak,
#: also for --dtype float32.)
GPU_PEAK = {
    "bfloat16": {"H100 PCIe": 756e12, "H200": 989e12, "H100": 989e12, "A100": 312e12,
                 "L4": 121e12},
    "float32": {"H100 PCIe": 378e12, "H200": 495e12, "H100": 495e12, "A100": 156e12,
                "L4": 60e12},
}


def device_info() -> dict:
    d = jax.devices()[0]
    info = {"backend": jax.default_backend(), "device_kind": d.device_kind,
            "device_count": jax.device_count(), "cpus": os.cpu_count(),
            "processor": platform.machine(), "python": platform.python_version(),
            "jax": jax.__version__}
    if hasattr(os, "getloadavg"):
        info["load_avg_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


def peak_flops(override: float | None, dtype: str = "bfloat16") -> float | None:
    """``--peak-tflops`` (any dtype), else the :data:`GPU_PEAK` entry for ``dtype`` ("bfloat16"
    or "float32") of this GPU; None on a CPU or an unknown GPU."""
    if override:
        return override * 1e12
    if jax.default_backend() != "gpu":
        return None
    kind = jax.devices()[0].device_kind
    return next((v for k, v in GPU_PEAK.get(dtype, {}).items() if k in kind), None)


def _flops(lowered, compiled) -> float | None:
    """FLOPs of one step from XLA's cost analysis of the lowered (not yet optimized) program:
    backend independent. The compiled program's count is backend specific: on GPU it leaves out
    convolutions that became cuDNN custom calls (measured on an H200: 59.7 GFLOP per default step
    against the lowered program's 1613), so it is only the fallback."""
    for stage in (lowered, compiled):
        try:
            ca = stage.cost_analysis()
        except Exception:  # noqa: BLE001 - not every backend implements it
            continue
        if isinstance(ca, (list, tuple)):
            ca = ca[0] if ca else {}
        f = (ca or {}).get("flops")
        if f:
            return float(f)
    return None


def bench_step(cfg, steps: int, warmup: int) -> dict:
    """The jitted train step on fixed random batches (device-resident)."""
    model = training.build_model(cfg)
    graphdef, _, frozen = nnx.split(model, nnx.Param, ...)
    tx, schedule = training.make_optimizer(cfg.optim, int(cfg.train.num_steps))
    mesh = training.make_mesh()
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    dtype = training.compute_dtype(cfg.train.dtype)
    step = training.make_train_step(graphdef, LossConfig.from_config(cfg.loss), tx, schedule,
                                    mesh, dtype=dtype,
                                    cache_key=training.step_cache_key(cfg, graphdef, mesh))
    state = jax.device_put(training.init_state(model, tx, int(cfg.seed)), repl)
    frozen = jax.device_put(frozen, repl)
    b, hw, s = int(cfg.train.batch_size), int(cfg.data.image_size), int(cfg.data.style_size)
    rng = np.random.default_rng(0)
    if bool(cfg.data.get("device_augment", False)):  # what the loader gives: uint8 + jitter
        host = {"content": rng.integers(0, 256, (b, hw, hw, 3), np.uint8),
                "style": rng.integers(0, 256, (b, s, s, 3), np.uint8),
                "style_jitter": np.tile(np.float32([0.1, 1.2, 0.05]), (b, 1))}
    else:
        host = {"content": rng.random((b, hw, hw, 3), np.float32),
                "style": rng.random((b, s, s, 3), np.float32)}
    batch = {k: jax.device_put(v, data) for k, v in host.items()}
    t0 = time.perf_counter()
    lowered = step.lower(state, frozen, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(lowered, compiled)
    for _ in range(warmup):
        state, metrics = step(state, frozen, batch)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    dt = time.perf_counter() - t0
    out = {"steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt, 3),
           "images_per_s": round(b * steps / dt, 2), "compile_s": round(compile_s, 1),
           "params": param_count(model), "dtype": str(np.dtype(dtype or jnp.float32))}
    if flops:
        out["gflops_per_step"] = round(flops / 1e9, 1)
        out["achieved_tflops"] = round(flops * steps / dt / 1e12, 4)
    return out


def bench_loader(cfg, batches: int) -> dict:
    from arbitrary_nst import data

    loader = data.make_loader(cfg.data, batch_size=int(cfg.train.batch_size), seed=0)
    try:
        for _ in range(2):
            next(loader)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        dt = time.perf_counter() - t0
    finally:
        loader.close()
    return {"source": str(cfg.data.source), "device_augment": bool(loader.device_augment),
            "batches": batches, "seconds": round(dt, 3),
            "batches_per_s": round(batches / dt, 2),
            # content images per second, as the step's figure (each batch also holds as
            # many style images): a key of its own, since the JSONs before it counted both
            # under "images_per_s" here (bench/data.py's images/s still does) and content
            # only for the step
            "content_images_per_s": round(int(cfg.train.batch_size) * batches / dt, 1)}


class _ExpectedStop(logging.Filter):
    """Drops the one warning :func:`bench_loop`'s own SIGINT causes ("received SIGINT: saved a
    checkpoint at step N in WORKDIR; run again to resume", printed on every run); any other
    record, another step's or another folder's included, passes."""

    def __init__(self, step: int, workdir: str):
        super().__init__()
        self.prefix = f"received SIGINT: saved a checkpoint at step {step} in {workdir};"

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def bench_loop(cfg, steps: int) -> dict:
    """``training.train`` end to end (loader, step, logging), same config (so the same compiled
    step): ``steps`` warm-up steps (compilation), then ``steps`` timed ones; a SIGINT sent to
    ourselves after step ``2 * steps`` stops the run the way Ctrl-C does (its "saved a checkpoint
    ... run again to resume" warning, expected here, is filtered out), and the rate of the last
    log interval (which ends with a host sync) is the result."""
    import signal

    cfg = cfg.copy_and_resolve_references()
    cfg.train.log_every = steps
    cfg.train.num_steps = max(int(cfg.train.num_steps), 2 * steps)
    cfg.train.checkpoint_every = 0
    cfg.train.sample_every = 0

    def stop(step, state):
        if step == 2 * steps:
            os.kill(os.getpid(), signal.SIGINT)

    with tempfile.TemporaryDirectory() as wd:
        quiet = _ExpectedStop(2 * steps, wd)
        training.log.addFilter(quiet)
        try:
            r = training.train(cfg, wd, progress=False, export_path="", step_callback=stop)
        finally:
            training.log.removeFilter(quiet)
    assert r.step == 2 * steps, r.step
    rate = r.history[-1]["steps_per_sec"]
    return {"steps": steps, "steps_per_s": round(rate, 3),
            "images_per_s": round(rate * int(cfg.train.batch_size), 2)}


def _check_data_source(value: str) -> None:
    """``--data``'s form (a typo was only a loader error row after the step's measurement)."""
    if value in ("config", "synthetic", "folder") or value.startswith("tfds:"):
        return
    if value.startswith("npz:"):
        if not Path(value[4:]).is_file():
            raise ConfigError(f"--data {value}: no such file")
        return
    raise ConfigError(f"--data must be 'config', 'synthetic', 'folder', 'tfds:NAME' or "
                      f"'npz:PATH', got {value!r}")


def resolve_configs(args) -> list[tuple[str, object]]:
    """Every ``--configs`` entry loaded with ``--dtype``, ``--data`` and ``--host-augment``
    applied and validated, before anything is measured: ``--configs smoke nosuch`` measured
    smoke for 14 s and then failed, losing it; ``--dtype foo`` likewise."""
    _check_data_source(args.data)
    try:
        training.compute_dtype(args.dtype)
    except ConfigError as e:
        raise ConfigError(f"--dtype: {e}") from None
    out = []
    for name in args.configs:
        cfg = training.load_config(ROOT / "configs" / f"{name}.py", [f"train.dtype={args.dtype!r}"])
        if args.data != "config":
            cfg.data.source = args.data
        if args.host_augment:
            cfg.data.device_augment = False
        try:
            training.validate_config(cfg)  # (train.dtype among the rest)
        except ConfigError as e:
            raise ConfigError(f"--configs {name}: {e}") from None
        out.append((name, cfg))
    return out


def main(argv=None) -> int:
    p = UsageParser(prog="bench/train.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["smoke", "cpu_small", "default"])
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per config (default: 20 on GPU; on CPU 10 for smoke, "
                        "5 for cpu_small, 2 for default)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--loader-batches", type=int, default=40,
                   help="timed batches (>> the loader prefetch depth of 4)")
    p.add_argument("--data", default="config",
                   help="loader source: 'config' (the config's own data), 'synthetic' (generated "
                        "images: their generation dominates) or any data.source, e.g. "
                        "'npz:workdirs/carry/train.npz' (the real images a GPU run reads)")
    p.add_argument("--host-augment", action="store_true",
                   help="data.device_augment = False: float batches, colour jitter on the host")
    p.add_argument("--dtype", default="auto", help="train.dtype for every config")
    p.add_argument("--no-loop", action="store_true", help="skip the end-to-end train loop")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for the fraction-of-peak column (GPU: known by name)")
    p.add_argument("--json", default=None,
                   help="JSON output (default bench/results/train_{cpu,gpu}.json)")
    add_overwrite(p)
    args = p.parse_args(argv)

    info = device_info()
    gpu = jax.default_backend() == "gpu"
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    out = check_options(args, {"steps": 1, "warmup": 0, "loader_batches": 1}, args.json or (
        ROOT / "bench" / "results" / f"train_{'gpu' if gpu else 'cpu'}.json"))
    configs = resolve_configs(args)  # (all of them before the first measurement)
    default_steps = {"smoke": 10, "cpu_small": 5, "default": 2}
    results = []
    peaks = {}
    for name, cfg in configs:
        steps = args.steps or (20 if gpu else default_steps.get(name, 3))
        row = {"config": name, "batch_size": int(cfg.train.batch_size),
               "image_size": int(cfg.data.image_size), "style_size": int(cfg.data.style_size),
               "width": float(cfg.model.width)}
        print(f"[{name}] step ...", file=sys.stderr, flush=True)
        row["step"] = bench_step(cfg, steps, args.warmup)
        peak = peaks[row["step"]["dtype"]] = peak_flops(args.peak_tflops, row["step"]["dtype"])
        if peak and "achieved_tflops" in row["step"]:
            row["step"]["peak_flops"] = peak  # (of the step's dtype; it was always bf16's)
            row["step"]["fraction_of_peak"] = round(row["step"]["achieved_tflops"] * 1e12 / peak, 4)
        print(f"[{name}] loader ...", file=sys.stderr, flush=True)
        try:
            row["loader"] = bench_loader(cfg, args.loader_batches)
        except Exception as e:  # noqa: BLE001 - e.g. no training data on this machine
            row["loader"] = {"error": " ".join(str(e).split())[:200]}
        if not args.no_loop and "error" not in row["loader"]:
            print(f"[{name}] train loop ...", file=sys.stderr, flush=True)
            row["loop"] = bench_loop(cfg, max(2, steps))
        results.append(row)

    if hasattr(os, "getloadavg"):
        info["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    header = (f"{'config':<10} {'batch':>5} {'size':>5} {'width':>5} {'step/s':>8} {'img/s':>8} "
              f"{'GFLOP/step':>10} {'TFLOP/s':>8} {'%peak':>6} {'loader b/s':>10} "
              f"{'loop step/s':>11}")
    print(f"device: {info['device_kind']} x{info['device_count']} ({info['backend']}), "
          f"load {info.get('load_avg_1min_at_start', '?')}")
    print(header)
    print("-" * len(header))
    for r in results:
        s, ld, lp = r["step"], r["loader"], r.get("loop", {})
        frac = f"{100 * s['fraction_of_peak']:.1f}" if "fraction_of_peak" in s else "-"
        print(f"{r['config']:<10} {r['batch_size']:>5} {r['image_size']:>5} {r['width']:>5} "
              f"{s['steps_per_s']:>8.3f} {s['images_per_s']:>8.2f} "
              f"{s.get('gflops_per_step', float('nan')):>10.1f} "
              f"{s.get('achieved_tflops', float('nan')):>8.4f} {frac:>6} "
              f"{ld.get('batches_per_s', float('nan')):>10.2f} "
              f"{lp.get('steps_per_s', float('nan')):>11.3f}")
    for r in results:  # (the table showed nan, the reason was only in the JSON)
        if "error" in r["loader"]:
            print(f"{r['config']}: no loader figures: {r['loader']['error']}")
    write_json(out, {"meta": run_meta(__file__, argv), "machine": info,
                     "peak_flops": peaks, "results": results})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)

"""Benchmark of the jitted, batched Gatys optimizer against a PyTorch eager L-BFGS reference.

    python bench/gatys.py --overwrite           # CPU: 256^2 x B=1,4,8 and 512^2 x B=1,4
    python bench/gatys.py --configs 128x1,128x2 --iters 10 --out /tmp/g.json   # a quick look

For every (size, batch) it measures, each in a fresh subprocess (so peak memory is clean):

* **JAX** (:func:`arbitrary_nst.gatys.run`, default config: content relu4_2, style
  relu1_1..relu5_1 Gram, L-BFGS memory 10): a warm-up run compiles, then ``iters`` L-BFGS
  iterations are timed (the compiled chunk loop, no compilation); it reports iterations/s,
  value-and-gradient evaluations/s (the Wolfe line search sometimes needs more than one per
  iteration), the final loss, peak RSS of the process and XLA's buffer sizes of the compiled
  chunk (``memory_analysis``); on GPU ``peak_bytes_in_use``.
* **PyTorch** (``bench/torch_gatys.py``: same VGG16 weights, loss, pixel parameterization and
  start, ``torch.optim.LBFGS`` eager with its strong-Wolfe line search): a warm-up iteration,
  then ``iters`` timed iterations; same numbers. Only for ``--torch-configs`` (eager torch
  takes 1.04-2.01x the JAX loop's time per iteration on this CPU, ``gatys_cpu.json``, so the
  big batches would take hours).
  Skipped if torch is not importable. Torch is not a project requirement:
  ``pip install torch==2.13.0`` (CPU wheel).

The table shows the speed ratio JAX/torch (iterations/s) and the final-loss ratio after the same
number of iterations from the same start, and the batch efficiency: example loss evaluations/s
of a batch of B relative to B=1 (> 1 means B pairs cost less than B runs of one pair). Results go to
``--out`` (default ``bench/results/gatys_<platform>.json``, committed: an existing file is refused
before anything is measured unless ``--overwrite``). Memory columns are MiB (2^20 bytes; the JSON's
``*_mb`` fields too).

Images: the built-in sample photos (astronaut, chelsea, coffee, rocket, motorcycle, cycled over
the batch) centre-cropped to squares, and the generated 'strokes' style; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from arbitrary_nst.errors import UsageParser  # noqa: E402


def _images(size: int, batch: int):
    from arbitrary_nst import images, samples

    contents = []
    for i in range(batch):
        name = samples.CONTENT_NAMES[i % len(samples.CONTENT_NAMES)]
        c = images.center_crop_square(samples.content_image(name))
        contents.append(images.resize(c, (size, size)))
    style = samples.style_image("strokes", size)
    return np.stack(contents).astype(np.float32), style.astype(np.float32)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------------------------
# children


def child_jax(size: int, batch: int, iters: int, warmup: int, reps: int = 1) -> dict:
    import jax
    import jax.numpy as jnp

    from arbitrary_nst import gatys

    content, style = _images(size, batch)
    cfg = gatys.GatysConfig(iterations=iters, chunk_size=iters)
    params = jax.tree.map(jnp.asarray, gatys.load_params(cfg))
    t0 = time.perf_counter()
    gatys.run(content, style, config=cfg.replace(iterations=warmup), progress=False,
              vgg_params=params)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):  # identical runs (deterministic); the fastest is the least disturbed
        res = gatys.run(content, style, config=cfg, progress=False, vgg_params=params)
        times.append(res.seconds[0])
    seconds = min(times)
    total = res.history[0]["total"][-1]
    out = {"framework": "jax", "size": size, "batch": batch, "iterations": iters,
           "evaluations": int(res.evaluations[0]), "seconds": seconds,
           "it_per_s": iters / seconds, "evals_per_s": res.evaluations[0] / seconds,
           "final_loss_mean": float(np.mean(total)), "final_loss": total.tolist(),
           "warmup_s_incl_compile": warm_s, "peak_rss_mb": _peak_rss_mb(),
           "all_seconds": times, "device": str(jax.devices()[0]), "images": res.images}
    out.update(_xla_memory(params, content, style, cfg))
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        out["peak_device_mb"] = stats.get("peak_bytes_in_use", 0) / 2 ** 20
    return out


def _xla_memory(params, content, style, cfg) -> dict:
    """Buffer sizes XLA reports for the compiled chunk (arguments, outputs, temporaries)."""
    import jax.numpy as jnp

    from arbitrary_nst import gatys

    try:
        lcfg = cfg.loss_config()
        struct = gatys._struct_key(lcfg)
        fn = gatys._chunk_fn(cfg.optimizer, struct, cfg.pooling, cfg.chunk_size,
                             cfg.lbfgs_memory, cfg.max_linesearch_steps)
        per = gatys._per_example_styles(style, None, content.shape[0])
        cf, st = gatys._stage_targets(params, content, per, cfg, lcfg, True, True)
        z = gatys.from_image(content, cfg.parameterization)
        state = gatys._lbfgs_init_state(z, cfg.lbfgs_memory, gatys._term_names(struct, True, True))
        w = gatys.loss_weights(cfg, content.shape[0])
        ma = fn.lower(params, state, cf, st, w, jnp.asarray(1, jnp.int32)).compile() \
            .memory_analysis()
        mb = lambda v: float(v) / 2 ** 20  # noqa: E731
        return {"xla_temp_mb": mb(ma.temp_size_in_bytes),
                "xla_argument_mb": mb(ma.argument_size_in_bytes),
                "xla_output_mb": mb(ma.output_size_in_bytes)}
    except Exception as e:  # memory_analysis is best effort (not on every backend/version)
        return {"xla_memory_error": f"{type(e).__name__}: {e}"}


def child_torch(size: int, batch: int, iters: int, warmup: int, reps: int = 1) -> dict:
    import torch
    from torch_gatys import TorchGatys

    from arbitrary_nst import gatys

    device = "cuda" if torch.cuda.is_available() else "cpu"
    content, style = _images(size, batch)
    cfg = gatys.GatysConfig(iterations=iters)
    ref = TorchGatys(cfg, content, style[None], device=device)
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:
        # torch's OpenMP threads spin at barriers: when another process holds a core (a shared
        # machine), 2 threads can be several times slower than 1. Use whichever is faster now.
        probe = {}
        for n in (threads, 1):
            torch.set_num_threads(n)
            ref.optimize(1)
            t = time.perf_counter()
            ref.optimize(1)
            probe[n] = time.perf_counter() - t
        threads = min(probe, key=probe.get)
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    ref.optimize(warmup)
    warm_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = [ref.optimize(iters) for _ in range(reps)]
    r = min(runs, key=lambda v: v["seconds"])
    out = {"framework": "torch", "size": size, "batch": batch, "iterations": r["iterations"],
           "evaluations": r["evaluations"], "seconds": r["seconds"],
           "it_per_s": r["iterations"] / r["seconds"],
           "evals_per_s": r["evaluations"] / r["seconds"],
           "final_loss_mean": float(np.mean(r["final"]["total"])),
           "final_loss": r["final"]["total"].tolist(), "warmup_s": warm_s,
           "peak_rss_mb": _peak_rss_mb(), "device": device, "threads": threads,
           "all_seconds": [v["seconds"] for v in runs],
           "torch_version": torch.__version__,
           # the same loss on the same images in JAX vs torch (start point), a parity check
           "loss_at_content_torch": ref.loss_of_images(content).tolist()}
    if device == "cuda":
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def _parity(size: int) -> dict:
    """Total loss of the content images under JAX, to compare with the torch child's."""
    import jax
    import jax.numpy as jnp

    from arbitrary_nst import gatys

    content, style = _images(size, 1)
    cfg = gatys.GatysConfig(iterations=0)
    params = jax.tree.map(jnp.asarray, gatys.load_params(cfg))
    lcfg = cfg.loss_config()
    cf, st = gatys._stage_targets(params, content, gatys._per_example_styles(style, None, 1),
                                  cfg, lcfg, True, True)
    from arbitrary_nst import losses, vgg

    ff = lambda x, t: vgg.features(params, x, t)  # noqa: E731
    total, _ = losses.perceptual_loss(ff, jnp.asarray(content), lcfg, content_feats=cf,
                                      style_targets=st)
    return {"loss_at_content_jax": np.asarray(total).tolist()}


# ----------------------------------------------------------------------------------------------
# parent


def _run_child(framework: str, size: int, batch: int, iters: int, warmup: int,
               timeout: float, reps: int) -> dict:
    cmd = [sys.executable, __file__, "--child", framework, "--size", str(size), "--batch",
           str(batch), "--iters", str(iters), "--warmup", str(warmup), "--reps", str(reps)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:  # (a traceback that lost the other measurements)
        return {"framework": framework, "size": size, "batch": batch,
                "error": f"timed out after {timeout:g} s (--timeout)"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"framework": framework, "size": size, "batch": batch,
                "error": " | ".join(tail)}
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    out["wall_s"] = time.perf_counter() - t0
    out["loadavg_1min_before_after"] = [load0, os.getloadavg()[0]]
    return out


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def _fmt_table(rows: list[dict]) -> str:
    by: dict = {}
    for r in rows:
        by.setdefault((r["size"], r["batch"]), {})[r["framework"]] = r
    single = {size: d["jax"] for (size, batch), d in by.items()
              if batch == 1 and "it_per_s" in d.get("jax", {})}
    head = ("| size | B | JAX it/s | evals/it | torch it/s | JAX/torch speed | final loss "
            "JAX/torch | example-evals/s vs B=1 | end-to-end vs B runs | JAX peak RSS MiB "
            "(XLA temp) | torch peak RSS MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (size, batch), d in sorted(by.items()):
        j, t = d.get("jax", {}), d.get("torch", {})
        ok_j, ok_t = "it_per_s" in j, "it_per_s" in t
        f = lambda v, spec: format(v, spec)  # noqa: E731
        speed = f"{j['it_per_s'] / t['it_per_s']:.2f}x" if ok_j and ok_t else "-"
        loss = (f"{j['final_loss_mean'] / t['final_loss_mean']:.3f}" if ok_j and ok_t else "-")
        eff = e2e = "-"
        if ok_j and size in single:
            s1 = single[size]
            eff = f(j["evals_per_s"] * batch / s1["evals_per_s"], ".2f")
            t1 = s1["warmup_s_incl_compile"] + s1["seconds"]
            tb = j["warmup_s_incl_compile"] + j["seconds"]
            e2e = f(batch * t1 / tb, ".2f") + "x"
        mem = (f"{j['peak_rss_mb']:.0f} ({j.get('xla_temp_mb', float('nan')):.0f})" if ok_j
               else ("error" if "error" in j else "-"))
        lines.append(
            f"| {size}² | {batch} | {f(j['it_per_s'], '.3f') if ok_j else '-'} | "
            f"{f(j['evaluations'] / j['iterations'], '.2f') if ok_j else '-'} | "
            f"{f(t['it_per_s'], '.3f') if ok_t else ('error' if 'error' in t else '-')} | "
            f"{speed} | {loss} | {eff} | {e2e} | {mem} | "
            f"{f(t['peak_rss_mb'], '.0f') if ok_t else '-'} |")
    return "\n".join(lines)


def _pairs(text: str, option: str) -> list[tuple[int, int]]:
    """``"256x1,512x4"`` -> ``[(256, 1), (512, 4)]``; a ConfigError naming ``option`` for
    anything else (``64`` and ``0x1`` were tracebacks, ``64x0`` a row of errors)."""
    from arbitrary_nst.errors import ConfigError

    out = []
    for item in (c.strip() for c in text.split(",")):
        size, _, batch = item.partition("x")
        if not (size.isdigit() and batch.isdigit() and int(size) >= 32 and int(batch) >= 1):
            raise ConfigError(f"{option}: {item!r} is not SIZExBATCH with SIZE >= 32 and "
                              "BATCH >= 1 (e.g. 256x4)")
        out.append((int(size), int(batch)))
    return out


def main(argv=None) -> int:
    from arbitrary_nst.errors import ConfigError
    from bench.bench_cli import UNITS_NOTE, add_overwrite, check_options, write_json
    from bench.bench_cli import meta as run_meta

    ap = UsageParser(prog="bench/gatys.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", default="256x1,256x4,256x8,512x1,512x4",
                    help="SIZExBATCH measurements (square images)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per measurement (default: 20 at <=256, 8 above)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up iterations (compiles)")
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions, the fastest counts (default: 2 for B=1, else 1)")
    ap.add_argument("--torch-configs", default="all",
                    help="SIZExBATCH pairs measured with torch too, or 'all'")
    ap.add_argument("--out", default=None, help="JSON output (default bench/results/...)")
    add_overwrite(ap, "--out")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = child_jax if args.child == "jax" else child_torch
        out = fn(args.size, args.batch, args.iters, args.warmup, args.reps or 1)
        out.pop("images", None)
        print(json.dumps(out))
        return 0

    import jax

    # Options are checked before the (long) measurements: bad ones were tracebacks, or ran and
    # replaced the committed results with rows of errors; --iters 0 ran 20 iterations.
    configs = _pairs(args.configs, "--configs")
    torch_set = None if args.torch_configs == "all" else set(_pairs(args.torch_configs,
                                                                    "--torch-configs"))
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {args.timeout}")
    plat = jax.devices()[0].platform
    out = check_options(args, {"iters": 1, "warmup": 0, "reps": 1},
                        args.out or ROOT / "bench" / "results" / f"gatys_{plat}.json", "--out")
    sizes = sorted({s for s, _ in configs})
    use_torch = not args.no_torch and _torch_available()
    iters_for = lambda s: args.iters if args.iters is not None else (20 if s <= 256 else 8)  # noqa: E731
    with_torch = lambda s, b: use_torch and (torch_set is None or (s, b) in torch_set)  # noqa: E731
    # rough estimate per 256^2 value-and-gradient on one busy core: JAX ~0.5 s, torch ~0.6 s
    est = sum((iters_for(s) * 1.3 * (args.reps or (2 if b == 1 else 1)) + args.warmup * 2 + 3)
              * b * (s / 256) ** 2 * (0.5 + (0.6 if with_torch(s, b) else 0.0)) + 30
              for s, b in configs)
    print(f"platform {plat}; torch {'yes' if use_torch else 'no'}; "
          f"estimated time on a 2-core CPU: ~{est / 60:.0f} min", flush=True)
    rows = []
    parity = {}
    for size in sizes:
        parity[size] = _parity(size)
        for batch in sorted(b for s, b in configs if s == size):
            n = iters_for(size)
            for fw in (("jax", "torch") if with_torch(size, batch) else ("jax",)):
                warm = args.warmup if fw == "jax" else 1  # torch has nothing to compile
                reps = args.reps or (2 if batch == 1 else 1)
                r = _run_child(fw, size, batch, n, warm, args.timeout, reps)
                rows.append(r)
                msg = (f"{fw:5s} {size}^2 B={batch}: " +
                       (f"{r['it_per_s']:.3f} it/s, loss {r['final_loss_mean']:.4g}, "
                        f"peak RSS {r['peak_rss_mb']:.0f} MiB" if "it_per_s" in r
                        else f"ERROR {r.get('error')}"))
                print(msg, flush=True)
    table = _fmt_table(rows)
    for size in sizes:  # same loss in both frameworks at the same images?
        t = [r for r in rows if r["framework"] == "torch" and r["size"] == size
             and "loss_at_content_torch" in r]
        if t:
            lj, lt = parity[size]["loss_at_content_jax"][0], t[0]["loss_at_content_torch"][0]
            parity[size]["loss_at_content_torch"] = lt
            table += (f"\n\nLoss parity at {size}²: the same content image under JAX "
                      f"{lj:.6g}, torch {lt:.6g} (relative difference {abs(lj - lt) / lj:.1e}).")
    print()
    print(table)
    if not any("it_per_s" in r for r in rows):  # (else the results file is replaced by errors)
        raise ConfigError(f"every measurement failed (first: {rows[0].get('error')}); "
                          f"{out} was not written")
    meta = {**run_meta(__file__, argv), "platform": plat, "cpus": os.cpu_count(),
            "python": platform.python_version(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "parity": parity}
    write_json(out, {"meta": meta, "units": UNITS_NOTE, "rows": rows, "table": table}, indent=1)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    from bench.bench_cli import run_main

    run_main(main)

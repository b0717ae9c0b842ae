"""Inference speed of the arbitrary-style network vs the Magenta-lite peer (not a timed test).

    python bench/infer.py --overwrite   # CPU: widths 0.25 and 1.0, 256/512/1024, batch 1 and 8
    python bench/infer.py --widths 1.0 --sizes 512 --batches 32 --dtype bfloat16 --json g.json  # GPU
    python bench/infer.py --model model.safetensors --json m.json   # time a trained export instead

What is timed, per (width, size, batch): one device call of the jitted stylize function on a
batch of ``size x size`` uint8 images with precomputed style embeddings (strength 1, the CLI's
file path: uint8 in, uint8 out), **including** the host->device copy of the batch and the
device->host copy of the result; decode/encode are not included (see ``pipeline`` below).
``ms/image`` = median call time / batch. Compile time (``jit(...).lower().compile()``) and the
style embedding (256 x 256 style, batch 1: VGG16 to relu4_3 + MLP) are reported separately.
Peak memory: XLA's buffer assignment for the compiled call (arguments + outputs + temporaries,
``compiled.memory_analysis()``), the device's ``peak_bytes_in_use`` where it reports one (GPU),
and the process' peak RSS at the end.

Speed does not depend on the weights, so with no ``--model`` each width runs an **untrained**
random model of that width (labelled ``untrained``). The peer (``arbitrary_nst.peers.MagentaLite``,
Magenta's distilled MobileNet predictor + width-0.25 transformer as ONNX on onnxruntime, 2
threads) runs its two graphs, int8 as shipped and Q/DQ-stripped float32, at the same sizes (its
graphs take batch 1: a batch of B is B calls); its ``transfer`` is timed the same way (embedding
precomputed), and its ``embed`` (the predictor at 256) separately.

The CPU run keeps to a time budget (``--budget-s``): each configuration runs at least once and is
repeated until ``--min-time`` seconds or ``--max-reps`` runs; a configuration whose estimated time
(from FLOPs and the speed measured so far) does not fit in what is left of the budget is skipped
and reported with its estimate.

Backends (``--backends``, default both on CPU): ``jax`` is the jitted XLA call above;
``onnxruntime`` runs the same model's exported transfer graph (``arbitrary_nst.onnx_export``,
the :class:`~arbitrary_nst.inference.Stylizer`'s ``backend="onnxruntime"``) on onnxruntime with
the peer's thread count, uint8 in and out likewise (its "compile" column is the first run's
extra time: onnxruntime plans kernels per input shape). Only the backends asked for are timed;
the head-to-head alternates them with the peer. The style embedding is the JAX predictor's
whichever backend runs the transfer (the onnxruntime backend embeds with JAX too), so it is
measured and reported once per width.

Also measured (``--pipeline``, with the ``jax`` backend): the file pipeline
(``Stylizer.stylize_files``: decode, bucket, batch, compute, PNG encode, write) on generated
512 x 512 JPEGs at width 0.25, against the pure compute time, to show how much of decode/encode
the prefetch overlaps.

Results: a table on stdout and JSON (``--json``, default ``bench/results/infer_<platform>.json``,
committed: an existing file is refused before anything is measured unless ``--overwrite``).
Memory figures are MiB (2^20 bytes; the JSON's ``*_mb`` fields too). Options are checked first;
the exit status is 1, and nothing is written, when every configuration was skipped or failed.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from arbitrary_nst import color, images, inference  # noqa: E402
from arbitrary_nst.errors import ConfigError, UsageParser  # noqa: E402
from bench.bench_cli import UNITS_NOTE, add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

#: the smallest values of the numeric options (checked before anything is measured)
MINIMUMS = {"widths": 1 / 32, "sizes": 32, "batches": 1, "min_time": 0, "max_reps": 1,
            "budget_s": 1, "max_memory_gb": 0, "peer_threads": 1, "pipeline_images": 1,
            "pipeline_batch": 1, "workers": 1}


def transfer_flops_per_pixel(width: float) -> float:
    """Multiply-adds x 2 of the transfer network per output pixel (convs only)."""
    c1, c2, c3 = int(32 * width), int(64 * width), int(128 * width)
    convs = [(9, 3, c1, 1), (3, c1, c2, 4), (3, c2, c3, 16)]
    convs += [(3, c3, c3, 16)] * 10
    convs += [(3, c3, c2, 4), (3, c2, c1, 1), (9, c1, 3, 1)]
    return sum(2 * k * k * ci * co / area for k, ci, co, area in convs)


def random_stylizer(width: float, vgg, dtype, batch: int):
    """A Stylizer around an untrained (freshly initialized) model of ``width`` (speed only)."""
    from flax import nnx

    from arbitrary_nst.models import ArbitraryStyleModel

    model = ArbitraryStyleModel(vgg, width=width, dtype=dtype, rngs=nnx.Rngs(0))
    return inference.Stylizer(model, source=f"untrained width {width}")


def _peak_device_bytes() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _timed_reps(fn, *, min_time: float, max_reps: int, per_rep_cap: float,
                warmup: int = 1) -> list[float]:
    """Wall times of calls of ``fn`` after ``warmup`` untimed ones (the first run of a compiled
    program allocates and warms up: 81 ms/image where the warm figure was 11.8, and with a
    short --min-time that cold call was the only rep)."""
    for _ in range(warmup):
        fn()
    times = []
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        total = sum(times)
        if len(times) >= max_reps or total >= min_time or times[-1] > per_rep_cap:
            return times


def bench_ours(st, size: int, batch: int, args, out_call=None) -> dict:
    out_call = out_call if out_call is not None else [None]
    d = st.embedding_dim
    rng = np.random.default_rng(size + batch)
    b = st.padded_batch(batch, cap=batch)  # a multiple of the device count (padding counts as cost)
    x_host = rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)
    e_host = rng.normal(size=(b, d)).astype(np.float32)
    strength = jax.device_put(np.float32(1.0), st._repl)
    put = lambda a: jax.device_put(a, st._data)  # noqa: E731
    x0, e0 = put(x_host), put(e_host)
    # The model's palette is part of what users run (the built-in model's is 0.5): align to the
    # colour moments of a random style, measured over the whole (unpadded) image.
    align = st.model.palette > 0
    palette = jax.device_put(np.float32(st.model.palette), st._repl)
    m_host = np.repeat(np.asarray(color.color_moments(rng.random((32, 32, 3))), np.float32)[None],
                       b, 0)
    hw_host = np.full((b, 2), size, np.int32)
    # (a bucketed Stylizer gives the network the image sizes, as users' calls do)
    masked = st.buckets is not None
    moments = put(m_host) if align else None
    hw = put(hw_host) if align or masked else None
    t0 = time.perf_counter()
    lowered = inference._stylize_jit.lower(st._graphdef, st._state, x0, e0, None, None, None,
                                           None, None, strength, moments, palette, hw,
                                           use_content=False,
                                           luminance=False, align=align, out_uint8=True,
                                           masked=masked)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                        + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    if xla_bytes is not None and xla_bytes > args.max_memory_gb * 2**30:
        return {"skipped": f"XLA buffers {xla_bytes / 2**30:.1f} GiB > --max-memory-gb "
                           f"{args.max_memory_gb}", "compile_s": round(compile_s, 3)}

    def call():
        y = compiled(st._state, put(x_host), put(e_host), None, None, None, None, None, strength,
                     None if moments is None else put(m_host), palette,
                     None if hw is None else put(hw_host))
        return np.asarray(y)

    times = _timed_reps(call, min_time=args.min_time, max_reps=args.max_reps,
                        per_rep_cap=args.min_time / 2)
    med = float(np.median(times))
    out_call[0] = call
    return {"compile_s": round(compile_s, 3), "reps": len(times),
            "ms_per_image_min": round(1e3 * min(times) / batch, 3),
            "ms_per_image": round(1e3 * med / batch, 3), "images_per_s": round(batch / med, 3),
            "batch_s": round(med, 4), "xla_memory_mb": None if xla_bytes is None else
            round(xla_bytes / 2**20, 1), "device_peak_mb": None if _peak_device_bytes() is None
            else round(_peak_device_bytes() / 2**20, 1)}


def bench_ours_onnx(st, ot, size: int, batch: int, args, out_call=None) -> dict:
    """The same call on the ``onnxruntime`` backend (``arbitrary_nst.onnx_export``): uint8 in,
    float conversion, the exported transfer graph, uint8 out; embeddings precomputed."""
    out_call = out_call if out_call is not None else [None]
    rng = np.random.default_rng(size + batch)
    x_host = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    e_host = rng.normal(size=(batch, st.embedding_dim)).astype(np.float32)

    def call():
        return images.to_uint8(ot.transfer(x_host, e_host))  # uint8 in: OnnxTransfer scales

    t0 = time.perf_counter()
    call()  # onnxruntime plans its kernels per input shape on the first run
    first_s = time.perf_counter() - t0
    times = _timed_reps(call, min_time=args.min_time, max_reps=args.max_reps,
                        per_rep_cap=args.min_time / 2, warmup=0)  # (warmed: the call above)
    med = float(np.median(times))
    out_call[0] = call
    return {"compile_s": round(max(0.0, first_s - med), 3), "reps": len(times),
            "ms_per_image_min": round(1e3 * min(times) / batch, 3),
            "ms_per_image": round(1e3 * med / batch, 3), "images_per_s": round(batch / med, 3),
            "batch_s": round(med, 4), "xla_memory_mb": None, "device_peak_mb": None}


def bench_embed(st, args) -> dict:
    style = np.random.default_rng(1).random((256, 256, 3)).astype(np.float32)
    batch = np.repeat(style[None], st.padded_batch(1), 0)  # batch 1 (padded to the devices)
    t0 = time.perf_counter()
    compiled = inference._embed_jit.lower(st._graphdef, st._state,
                                          jax.device_put(batch, st._data)).compile()
    compile_s = time.perf_counter() - t0
    times = _timed_reps(lambda: jax.block_until_ready(compiled(st._state,
                                                               jax.device_put(batch, st._data))),
                        min_time=min(args.min_time, 2.0), max_reps=10, per_rep_cap=1.0)
    return {"style_size": 256, "compile_s": round(compile_s, 3),
            "ms": round(1e3 * float(np.median(times)), 2), "reps": len(times),
            "predictor": "jax"}


def bench_peer(variant: str, sizes, batches, args, budget) -> dict:
    from arbitrary_nst.peers import MagentaLite

    peer = MagentaLite(variant, threads=args.peer_threads)
    style = np.random.default_rng(1).random((256, 256, 3)).astype(np.float32)
    peer.embed(style)
    t = _timed_reps(lambda: peer.embed(style), min_time=1.0, max_reps=10, per_rep_cap=0.5,
                    warmup=0)
    out = {"variant": variant, "threads": args.peer_threads,
           "embed_ms": round(1e3 * float(np.median(t)), 2), "runs": []}
    vec = peer.embed(style)
    for size in sizes:
        img = np.random.default_rng(size).random((size, size, 3)).astype(np.float32)
        peer.transfer(img, vec)  # warm-up (onnxruntime plans per shape)
        t = _timed_reps(lambda: peer.transfer(img, vec), min_time=args.min_time / 2,
                        max_reps=args.max_reps, per_rep_cap=args.min_time / 4, warmup=0)
        per_image = float(np.median(t))
        for batch in batches:  # batch 1 graphs: a batch of B is B calls
            out["runs"].append({"size": size, "batch": batch,
                                "ms_per_image": round(1e3 * per_image, 3),
                                "ms_per_image_min": round(1e3 * min(t), 3),
                                "images_per_s": round(1.0 / per_image, 3), "reps": len(t)})
        if budget.left() < 0:
            break
    return out


def head_to_head(st, args, ot=None, size: int = 512, rounds: int = 7,
                 jax_call: bool = True) -> dict:
    """Our width-0.25 call (JAX when ``jax_call``, the onnxruntime backend when ``ot`` is given)
    vs the peer's float32 transfer at ``size``^2, batch 1, run *alternately* so that all see the
    same machine load (this CPU is shared); min and median."""
    from arbitrary_nst.peers import MagentaLite

    quick = argparse.Namespace(min_time=0.0, max_reps=1, max_memory_gb=1e9)
    calls = {}
    holder = [None]
    if jax_call:
        bench_ours(st, size, 1, quick, holder)
        calls["ours"] = holder[0]
    if ot is not None:
        bench_ours_onnx(st, ot, size, 1, quick, holder)
        calls["ours_onnxruntime"] = holder[0]
    peer = MagentaLite("fp32", threads=args.peer_threads)
    img = np.random.default_rng(size).random((size, size, 3)).astype(np.float32)
    vec = peer.embed(img)
    peer.transfer(img, vec)
    calls["peer_fp32"] = lambda: peer.transfer(img, vec)
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    out = {"size": size, "batch": 1, "rounds": rounds}
    for k, t in times.items():
        out[f"{k}_ms_min"] = round(1e3 * min(t), 2)
        out[f"{k}_ms_median"] = round(1e3 * float(np.median(t)), 2)
    for k in [k for k in calls if k.startswith("ours")]:
        suffix = k[len("ours"):]
        out[f"ratio{suffix}_min"] = round(min(times[k]) / min(times["peer_fp32"]), 3)
        out[f"ratio{suffix}_median"] = round(float(np.median(times[k]))
                                             / float(np.median(times["peer_fp32"])), 3)
    return out


class Budget:
    def __init__(self, seconds: float):
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def bench_pipeline(st, args) -> dict:
    """stylize_files on generated JPEGs vs the compute alone (width of ``st``)."""
    from PIL import Image

    n, size = args.pipeline_images, 512
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        base = rng.random((8, 8, 3))
        for i in range(n):
            img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((size, size),
                             Image.Resampling.BICUBIC), np.float32)
            img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
            p = Path(d) / f"c{i:03d}.jpg"
            Image.fromarray(img).save(p, quality=90)
            paths.append(p)
        style = rng.random((256, 256, 3)).astype(np.float32)
        out = Path(d) / "out"
        bs = args.pipeline_batch or st.batch_size
        run = lambda tag: list(st.stylize_files(  # noqa: E731
            paths, style, output=lambda p: out / tag / f"{p.stem}.png",
            batch_size=bs, workers=args.workers))
        run("warm")  # compile + warm caches
        t0 = time.perf_counter()
        res = run("timed")
        dt = time.perf_counter() - t0
        assert all(r.ok for r in res)
    return {"images": n, "size": size, "batch": bs,
            "workers": args.workers or min(4, os.cpu_count() or 1),
            "seconds": round(dt, 3), "images_per_s": round(n / dt, 3)}


def main(argv=None) -> int:
    p = UsageParser(prog="bench/infer.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--model", help="time this export (its width) instead of untrained models")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of reps per config")
    p.add_argument("--max-reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=540.0, help="total time budget")
    p.add_argument("--max-memory-gb", type=float, default=6.0,
                   help="skip configurations whose XLA buffers exceed this (GiB)")
    p.add_argument("--backends", nargs="+", choices=("jax", "onnxruntime"), default=None,
                   help="inference backends to time (default: both on CPU, jax elsewhere)")
    p.add_argument("--no-peer", action="store_true")
    p.add_argument("--peer-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--pipeline-images", type=int, default=16)
    p.add_argument("--pipeline-batch", type=int, default=None,
                   help="batch size of the file pipeline (default: the Stylizer's, 1 on CPU)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--json", default=None,
                   help="JSON output (default bench/results/infer_<platform>.json)")
    add_overwrite(p)
    args = p.parse_args(argv)

    backend = jax.default_backend()
    # Options and the output are checked before anything is measured: --sizes 0 was a failed
    # row and exit status 0, --batches 0 a ZeroDivisionError recorded as skipped, --json DIR a
    # traceback after the whole measurement, and the committed results were replaced silently.
    out_json = check_options(args, MINIMUMS, args.json or Path(__file__).resolve().parent
                             / "results" / f"infer_{backend}.json")
    budget = Budget(args.budget_s)
    from arbitrary_nst.vgg import load_vgg16

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    vgg = load_vgg16()
    devs = jax.devices()
    backends = args.backends or (["jax", "onnxruntime"] if backend == "cpu" else ["jax"])
    meta = {**run_meta(__file__, argv), "backend": backend, "devices": [str(d) for d in devs],
            "device_kind": devs[0].device_kind, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "processor": platform.processor(),
            "jax": jax.__version__, "dtype": args.dtype, "python": platform.python_version(),
            "backends": backends,
            "timed": "one jitted call incl. host->device and device->host copies (uint8 in/out), "
                     "embeddings precomputed, strength 1; median over reps"}
    results = {"meta": meta, "units": UNITS_NOTE, "ours": [], "peer": [], "skipped": []}
    print(f"# backend {backend}, {len(devs)} x {devs[0].device_kind}, {os.cpu_count()} CPUs, "
          f"dtype {args.dtype}, backends {' '.join(backends)}, budget {args.budget_s:.0f} s",
          flush=True)

    def skip(width, size, batch, why):
        results["skipped"].append({"width": width, "size": size, "batch": batch, "reason": why})

    rate_flops = None  # measured FLOP/s of the transfer network so far (for estimates)
    pipeline_st = pipeline_ot = None
    for width in args.widths:
        if args.model:
            st = inference.Stylizer.load(args.model, vgg=vgg, dtype=dtype)
            label = f"{Path(args.model).name} (width {st.model.width})"
            width = st.model.width
        else:
            st = random_stylizer(width, vgg, dtype, max(args.batches))
            label = f"width {width} (untrained)"
        # the JAX predictor: what both backends embed styles with (measured once per width)
        emb = bench_embed(st, args)
        print(f"{label}: embed 256^2 (JAX predictor) {emb.get('ms', '?')} ms (compile "
              f"{emb.get('compile_s')} s)", flush=True)
        entry = ot = entry_ort = None
        if "jax" in backends:
            entry = {"width": width, "label": label, "backend": "jax", "embed": emb, "runs": []}
            results["ours"].append(entry)
        if "onnxruntime" in backends:
            from arbitrary_nst.onnx_export import OnnxTransfer

            ot = OnnxTransfer(st.model, threads=args.peer_threads)
            entry_ort = {"width": width, "label": f"{label}, onnxruntime",
                         "backend": "onnxruntime", "embed": emb, "runs": []}
            results["ours"].append(entry_ort)
        if width == 0.25:
            pipeline_st, pipeline_ot = st, ot
        for size in args.sizes:
            for batch in args.batches:
                flops = transfer_flops_per_pixel(width) * size * size * batch
                gflop = round(transfer_flops_per_pixel(width) * size * size / 1e9, 2)
                est = None
                if rate_flops:
                    est = flops / rate_flops
                    reps = 1 if est > args.min_time / 2 else max(1, int(args.min_time / est))
                    est_total = est * (reps + 1) + 5
                    if est_total > budget.left() - 30:
                        why = (f"estimated {est:.1f} s per batch ({est_total:.0f} s with compile)"
                               f" > budget left {budget.left():.0f} s")
                        print(f"  skip {size}^2 b{batch}: {why}", flush=True)
                        skip(width, size, batch, why)
                        continue
                    print(f"  {size}^2 b{batch}: estimated {est:.2f} s per batch", flush=True)
                r = None
                if entry is not None:
                    try:
                        r = bench_ours(st, size, batch, args)
                    except Exception as e:  # noqa: BLE001 - OOM on a small machine: record, go on
                        why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                        print(f"  {size}^2 b{batch}: failed: {why}", flush=True)
                        skip(width, size, batch, why)
                        continue
                    if "skipped" in r:
                        print(f"  {size}^2 b{batch}: skipped: {r['skipped']}", flush=True)
                        skip(width, size, batch, r["skipped"])
                        continue
                    rate_flops = flops / r["batch_s"] if rate_flops is None else max(
                        rate_flops * 0.5, min(rate_flops * 2, flops / r["batch_s"]))
                    r.update(size=size, batch=batch, gflop_per_image=gflop)
                    entry["runs"].append(r)
                    print(f"  {size}^2 b{batch}: {r['ms_per_image']:.1f} ms/image, "
                          f"{r['images_per_s']:.2f} images/s, compile {r['compile_s']:.1f} s, "
                          f"XLA memory {r['xla_memory_mb']} MiB ({r['reps']} reps)", flush=True)
                if ot is None:
                    continue
                need = (2 * r["batch_s"] * (r["reps"] + 1) if r is not None
                        else 2 * (est or 0) * 2)
                if budget.left() <= 60 + need:
                    why = f"onnxruntime row: budget left {budget.left():.0f} s"
                    print(f"  skip {size}^2 b{batch} {why}", flush=True)
                    skip(f"{width}, onnxruntime", size, batch, why)
                    continue
                try:
                    ro = bench_ours_onnx(st, ot, size, batch, args)
                except Exception as e:  # noqa: BLE001 - as above: record, go on
                    why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                    print(f"  {size}^2 b{batch} onnxruntime: failed: {why}", flush=True)
                    skip(f"{width}, onnxruntime", size, batch, why)
                    continue
                if r is None:  # (onnxruntime only: its speed makes the estimates)
                    rate_flops = flops / ro["batch_s"] if rate_flops is None else max(
                        rate_flops * 0.5, min(rate_flops * 2, flops / ro["batch_s"]))
                ro.update(size=size, batch=batch, gflop_per_image=gflop)
                entry_ort["runs"].append(ro)
                print(f"  {size}^2 b{batch} onnxruntime: {ro['ms_per_image']:.1f} ms/image, "
                      f"{ro['images_per_s']:.2f} images/s ({ro['reps']} reps)", flush=True)
        if args.model:
            break

    if not args.no_peer:
        for variant in ("fp32", "int8"):
            try:
                pr = bench_peer(variant, args.sizes, args.batches, args, budget)
            except Exception as e:  # noqa: BLE001 - peer not installed
                print(f"peer {variant}: unavailable ({e})", flush=True)
                continue
            results["peer"].append(pr)
            for r in pr["runs"]:
                if r["batch"] == args.batches[0]:
                    print(f"peer {variant} {r['size']}^2: {r['ms_per_image']:.1f} ms/image",
                          flush=True)

    pipeline_st = pipeline_st or st
    if not args.no_peer and pipeline_st.model.width == 0.25 and 512 in args.sizes:
        try:
            results["head_to_head"] = hh = head_to_head(pipeline_st, args, pipeline_ot,
                                                        jax_call="jax" in backends)
            if "ratio_min" in hh:
                print(f"head to head 512^2 b1 (alternating): ours {hh['ours_ms_min']} ms, peer "
                      f"fp32 {hh['peer_fp32_ms_min']} ms (min); ratio {hh['ratio_min']} (min), "
                      f"{hh['ratio_median']} (median)", flush=True)
            if "ratio_onnxruntime_min" in hh:
                print(f"  ours on onnxruntime {hh['ours_onnxruntime_ms_min']} ms (min); ratio "
                      f"{hh['ratio_onnxruntime_min']} (min), {hh['ratio_onnxruntime_median']} "
                      "(median)", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"head to head: failed ({e})", flush=True)
    if args.pipeline and "jax" not in backends:
        print("pipeline: not measured (it times the JAX Stylizer; --backends has no jax)",
              flush=True)
    elif args.pipeline and budget.left() > 30:
        try:
            results["pipeline"] = bench_pipeline(pipeline_st, args)
            pl = results["pipeline"]
            ref = next((o for o in results["ours"] if o["width"] == pipeline_st.model.width
                        and o["backend"] == "jax"), None)
            ref = ref and _find(ref["runs"], pl["size"], pl["batch"])
            pl["compute_only_images_per_s"] = ref["images_per_s"] if ref else None
            print(f"pipeline ({pipeline_st.source}): {pl['images']} JPEG {pl['size']}^2 -> PNG, "
                  f"batch {pl['batch']}: {pl['images_per_s']:.2f} images/s", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"pipeline: failed ({e})", flush=True)

    results["meta"]["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["meta"]["wall_s"] = round(time.perf_counter() - budget.t0, 1)
    results["targets"] = targets(results)
    table = format_table(results)
    print()
    print(table)
    if not any(o["runs"] for o in results["ours"]):  # (it wrote a table of skips, exit 0)
        first = results["skipped"][0]["reason"] if results["skipped"] else "none ran"
        raise ConfigError(f"every configuration was skipped or failed (first: {first}); "
                          f"{out_json} was not written")
    write_json(out_json, results)
    print(f"\nwrote {out_json}")
    return 0


def _find(runs, size, batch):
    return next((r for r in runs if r["size"] == size and r["batch"] == batch), None)


def targets(results) -> dict:
    out = {}
    hh = results.get("head_to_head")
    if hh and "ratio_min" in hh:
        out["cpu_w025_vs_peer_fp32_512_b1_alternating"] = {
            "ratio_min": hh["ratio_min"], "ratio_median": hh["ratio_median"], "target": "<= 1.0",
            "met": hh["ratio_min"] <= 1.0}
    if hh and "ratio_onnxruntime_min" in hh:
        out["cpu_w025_onnxruntime_vs_peer_fp32_512_b1_alternating"] = {
            "ratio_min": hh["ratio_onnxruntime_min"],
            "ratio_median": hh["ratio_onnxruntime_median"], "target": "<= 1.0",
            "met": hh["ratio_onnxruntime_min"] <= 1.0}
    peer = next((p for p in results["peer"] if p["variant"] == "fp32"), None)
    for ours in [o for o in results["ours"] if o["width"] == 0.25 and peer]:
        tag = "" if ours.get("backend", "jax") == "jax" else f"_{ours['backend']}"
        for batch in (1, 8):
            a, b = _find(ours["runs"], 512, batch), _find(peer["runs"], 512, batch)
            if a and b:
                ratio = a["ms_per_image"] / b["ms_per_image"]
                out[f"cpu_w025{tag}_vs_peer_fp32_512_b{batch}"] = {
                    "ratio": round(ratio, 3), "target": "<= 1.0", "met": ratio <= 1.0}
    w1 = next((o for o in results["ours"] if o["width"] == 1.0
               and o.get("backend", "jax") == "jax"), None)
    if w1 and results["meta"]["backend"] == "gpu":
        r = _find(w1["runs"], 512, 32)
        if r:
            out["gpu_w1_512_b32_images_per_s"] = {"value": r["images_per_s"], "target": ">= 1000",
                                                  "met": r["images_per_s"] >= 1000}
    return out


def format_table(results) -> str:
    meta = results["meta"]
    lines = [f"backend {meta['backend']} ({meta['device_kind']}, {meta['cpu_count']} CPUs), "
             f"dtype {meta['dtype']}; ms/image = one jitted call incl. copies / batch (rows "
             "marked onnxruntime: the exported transfer graph, uint8 in/out likewise)",
             "",
             "| model | size | batch | ms/image (median) | ms/image (min) | images/s | compile s "
             "| XLA memory MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in results["ours"]:
        for r in o["runs"]:
            lines.append(f"| {o['label']} | {r['size']}^2 | {r['batch']} | {r['ms_per_image']:.1f}"
                         f" | {r.get('ms_per_image_min', r['ms_per_image']):.1f} | "
                         f"{r['images_per_s']:.2f} | {r['compile_s']:.1f} | "
                         f"{'-' if r['xla_memory_mb'] is None else r['xla_memory_mb']} |")
    for s in results["skipped"]:
        lines.append(f"| width {s['width']} | {s['size']}^2 | {s['batch']} | skipped | | | | |")
    for pr in results["peer"]:
        for r in pr["runs"]:
            if r["batch"] != min(x["batch"] for x in pr["runs"]):
                continue  # batch-1 graphs: a batch of B is B calls, same ms/image
            lines.append(f"| Magenta-lite {pr['variant']} (onnxruntime, {pr['threads']} threads)"
                         f" | {r['size']}^2 | any | {r['ms_per_image']:.1f} | "
                         f"{r.get('ms_per_image_min', r['ms_per_image']):.1f} | "
                         f"{r['images_per_s']:.2f} | - | - |")
    lines.append("")
    # One figure per width: the JAX predictor embeds styles for both backends (it was repeated
    # on the onnxruntime rows as if it were theirs).
    per_width: dict = {}
    for o in results["ours"]:
        per_width.setdefault(o["width"], o)
    emb = [f"{o['label'].removesuffix(', onnxruntime')}: {o['embed'].get('ms', '?')} ms (compile "
           f"{o['embed'].get('compile_s')} s)" for o in per_width.values()]
    emb += [f"Magenta-lite {p['variant']}: {p['embed_ms']} ms" for p in results["peer"]]
    lines.append("Style embedding (256^2, batch 1; ours: the JAX predictor, which the jax and "
                 "onnxruntime backends both use): " + "; ".join(emb))
    if "pipeline" in results:
        pl = results["pipeline"]
        alone = pl.get("compute_only_images_per_s")  # (None: that size/batch was not timed)
        alone = (f"{alone} images/s" if alone is not None else
                 f"not measured: add --sizes {pl['size']} --batches {pl['batch']}")
        lines.append(f"File pipeline (stylize_files, {pl['images']} JPEG {pl['size']}^2 -> PNG, "
                     f"batch {pl['batch']}, {pl['workers']} workers): {pl['images_per_s']:.2f} "
                     f"images/s (compute alone: {alone})")
    hh = results.get("head_to_head")
    if hh and "ratio_min" not in hh and "ratio_onnxruntime_min" in hh:
        lines.append(f"Head to head, 512^2 batch 1, alternating runs ({hh['rounds']} rounds): width "
                     f"0.25 on onnxruntime {hh['ours_onnxruntime_ms_min']} ms vs Magenta-lite fp32 "
                     f"{hh['peer_fp32_ms_min']} ms (min; ratio {hh['ratio_onnxruntime_min']}), "
                     f"medians {hh['ours_onnxruntime_ms_median']} vs {hh['peer_fp32_ms_median']} "
                     f"ms (ratio {hh['ratio_onnxruntime_median']})")
    elif hh and "ratio_min" in hh:
        lines.append(f"Head to head, 512^2 batch 1, alternating runs ({hh['rounds']} rounds): width "
                     f"0.25 {hh['ours_ms_min']} ms vs Magenta-lite fp32 {hh['peer_fp32_ms_min']} ms"
                     f" (min; ratio {hh['ratio_min']}), medians {hh['ours_ms_median']} vs "
                     f"{hh['peer_fp32_ms_median']} ms (ratio {hh['ratio_median']})"
                     + (f"; on onnxruntime {hh['ours_onnxruntime_ms_min']} ms (min; ratio "
                        f"{hh['ratio_onnxruntime_min']}), median "
                        f"{hh['ours_onnxruntime_ms_median']} ms (ratio "
                        f"{hh['ratio_onnxruntime_median']})" if "ratio_onnxruntime_min" in hh
                        else ""))
    for k, v in results.get("targets", {}).items():
        lines.append(f"Target {k}: {v}")
    lines.append(f"Peak RSS {meta.get('peak_rss_mb')} MiB; wall {meta.get('wall_s')} s")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)

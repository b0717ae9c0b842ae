"""Folder jobs as a user runs them, once per inference backend.

    python bench/backends.py [--content DIR] [--style S] [--max-size 512] [--repeats 3]
                             [--backends jax onnxruntime auto] [--json PATH] [--overwrite]

Each run is ``infer.py --content DIR --style S --out-dir O --backend B`` in a fresh process (model
load, compilation, decoding, stylization, encoding: what a user waits for), the backends taking
turns so a busy machine slows them alike. The default content is 16 photos of 16 different sizes
cut from the built-in sample photos (scikit-image's), as a folder of someone's photos has them;
the style is the built-in generated "strokes" painting. Prints a table (median over the repeats)
each run's peak memory (the process' maximum resident set, MiB) and how far each backend's
images are from the JAX backend's (uint8 levels), and writes JSON
(default the committed ``bench/results/backends_cpu.json`` on a CPU, refused if it exists unless
``--overwrite``).

Why it exists: the JAX backend compiles once per padded shape, so a folder of mixed sizes pays
compilation per bucket; the onnxruntime backend compiles nothing and its convolutions are faster
on a CPU. ``--backend auto``, the CLI's default, picks onnxruntime on a CPU; this measures what
that default buys.
"""
from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import images, samples  # noqa: E402
from arbitrary_nst.errors import ConfigError, UsageParser  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("jax", "onnxruntime", "auto")
#: (longer side, aspect) of the generated photos: 16 sizes between 320 and 695 px, landscape
#: and portrait, so that at --max-size 512 they fall into several of the Stylizer's buckets.
SHAPES = [(320 + 25 * i, (1.5, 1.33, 0.75, 1.0)[i % 4]) for i in range(16)]
SUMMARY = re.compile(r"done (\d+), skipped (\d+), ([0-9.]+) s")


def make_photos(folder: Path, count: int, scale: float = 1.0) -> list[Path]:
    """``count`` JPEGs of different sizes (:data:`SHAPES`, sides times ``scale``), crops of the
    sample photos (quality 90)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = samples.CONTENT_NAMES
    paths = []
    for i in range(count):
        side, aspect = SHAPES[i % len(SHAPES)]
        side = round(scale * (side + 4 * (i // len(SHAPES))))  # (beyond 16: still all different)
        h, w = (round(side / aspect), side) if aspect >= 1 else (side, round(side * aspect))
        photo = samples.content_image(names[i % len(names)])
        cover = max(h / photo.shape[0], w / photo.shape[1])  # (cover h x w, then crop)
        photo = images.resize(photo, (max(h, round(photo.shape[0] * cover)),
                                      max(w, round(photo.shape[1] * cover))))
        top, left = (photo.shape[0] - h) // 2, (photo.shape[1] - w) // 2
        p = folder / f"photo{i:02d}.jpg"
        images.save_image(p, photo[top:top + h, left:left + w], quality=90)
        paths.append(p)
    return paths


def run_job(content: str, style: Path, out_dir: Path, backend: str, max_size: int,
            timeout: float) -> dict:
    """One ``infer.py`` folder job in a fresh process: wall time, and the job's own time and
    counts from its summary line."""
    cmd = [sys.executable, str(ROOT / "infer.py"), "--content", content, "--style", str(style),
           "--out-dir", str(out_dir), "--max-size", str(max_size), "--backend", backend,
           "--no-progress", "--overwrite"]
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:  # (wait4: this child's own peak RSS)
            _, status, usage = _wait4(p.pid, timeout)
        except TimeoutError:
            p.kill()
            p.wait()
            raise ConfigError(f"infer.py --backend {backend} ran over --timeout {timeout} s")
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read().decode(errors="replace")
    m = SUMMARY.search(text)
    if p.returncode != 0 or m is None:
        last = (text.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"infer.py --backend {backend} failed (exit {p.returncode}): {last}")
    return {"wall_s": wall, "job_s": float(m.group(3)), "done": int(m.group(1)),
            "skipped": int(m.group(2)), "peak_rss_mb": usage.ru_maxrss / 1024}


def _wait4(pid: int, timeout: float):
    """``os.wait4`` with a timeout (polled): ``(pid, status, rusage)``."""
    end = time.monotonic() + timeout
    while True:
        got = os.wait4(pid, os.WNOHANG)
        if got[0] == pid:
            return got
        if time.monotonic() > end:
            raise TimeoutError
        time.sleep(0.02)


def differences(a: Path, b: Path) -> dict:
    """Largest difference (uint8 levels) and share of differing values between the PNGs of two
    output folders, matched by name."""
    worst, diff, total = 0, 0, 0
    for pa in sorted(a.glob("*.png")):
        x = np.asarray(images.load_image(pa)) * 255.0
        y = np.asarray(images.load_image(b / pa.name)) * 255.0
        d = np.abs(np.rint(x) - np.rint(y))
        worst, diff, total = max(worst, int(d.max())), diff + int((d > 0).sum()), total + d.size
    return {"max_levels": worst, "share_differing": diff / max(total, 1)}


def main(argv=None) -> int:
    import jax

    from arbitrary_nst.inference import resolve_backend

    cpu = jax.default_backend() == "cpu"
    p = UsageParser(prog="bench/backends.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--content", default=None,
                   help="folder (or glob) of photos (default: --photos generated ones)")
    p.add_argument("--style", default=None,
                   help="style image or fitted style (.npz) (default: the generated 'strokes')")
    p.add_argument("--photos", type=int, default=16,
                   help="how many photos to generate without --content (default 16)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="generated photos' sides times this (default 1: 320-695 px)")
    p.add_argument("--max-size", type=int, default=512, help="infer.py --max-size (default 512)")
    p.add_argument("--repeats", type=int, default=3, help="runs per backend (default 3)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run (default 1800)")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "backends_cpu.json")
                   if cpu else None, help="output JSON (default on a CPU: the committed "
                                          "bench/results/backends_cpu.json)")
    add_overwrite(p)
    args = p.parse_args(argv)
    out = check_options(args, {"photos": 1, "scale": 0.05, "max_size": 8, "repeats": 1,
                               "timeout": 1},
                        args.json)
    backends = list(dict.fromkeys(args.backends))
    resolved = {b: resolve_backend(b, jax.local_devices()) for b in backends}
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        tmp = Path(tmp)
        if args.content is None:
            make_photos(tmp / "photos", args.photos, args.scale)
            content = str(tmp / "photos")
        else:
            content = args.content
        if args.style is None:
            style = tmp / "strokes.png"
            images.save_image(style, samples.style_image("strokes", size=512))
        else:
            style = Path(args.style)
        runs: dict[str, list[dict]] = {b: [] for b in backends}
        for r in range(args.repeats):
            for b in backends:  # (taking turns)
                res = run_job(content, style, tmp / f"out_{b}", b, args.max_size, args.timeout)
                runs[b].append(res)
                print(f"run {r + 1}/{args.repeats} {b}: {res['wall_s']:.1f} s in all, job "
                      f"{res['job_s']:.1f} s, {res['done']} images", flush=True)
        base = next((b for b in backends if resolved[b] == "jax"), None)
        rows = []
        for b in backends:
            rs = runs[b]
            wall = statistics.median(x["wall_s"] for x in rs)
            job = statistics.median(x["job_s"] for x in rs)
            n = rs[0]["done"]
            rows.append({"backend": b, "resolved": resolved[b], "images": n,
                         "wall_s_median": round(wall, 3), "job_s_median": round(job, 3),
                         "peak_rss_mb_max": round(max(x["peak_rss_mb"] for x in rs), 1),
                         "images_per_s_job": round(n / job, 3) if job > 0 else None,
                         "runs": rs,
                         "vs_jax": (differences(tmp / f"out_{base}", tmp / f"out_{b}")
                                    if base is not None and b != base else None)})
    ref = next((r for r in rows if r["backend"] == base), None)
    print(f"\nfolder job: {rows[0]['images']} photos at --max-size {args.max_size}, "
          f"median of {args.repeats} (a fresh infer.py process each)\n")
    print("| backend | runs as | s in all | s in the job | images/s (job) | x JAX (in all) "
          "| peak RSS MiB | vs JAX: largest difference (levels) | values differing |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r["vs_jax"]
        share = f"{100 * v['share_differing']:.3f}%" if v else "-"
        speed = f"{ref['wall_s_median'] / r['wall_s_median']:.2f}x" if ref else "-"
        print(f"| {r['backend']} | {r['resolved']} | {r['wall_s_median']:.1f} | "
              f"{r['job_s_median']:.1f} | {r['images_per_s_job']} | {speed} | "
              f"{r['peak_rss_mb_max']:.0f} | "
              f"{v['max_levels'] if v else '-'} | "
              f"{share} |")
    if out is not None:
        write_json(out, {"meta": run_meta(__file__, argv), "max_size": args.max_size,
                         "content": args.content or f"{args.photos} generated photos at "
                                                    f"scale {args.scale}",
                         "style": args.style or "generated strokes",
                         "repeats": args.repeats, "rows": rows}, indent=1)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)

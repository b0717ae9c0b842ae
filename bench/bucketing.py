"""Check that shape bucketing does not change the built-in model's outputs (not a timed test).

    python bench/bucketing.py --overwrite   # ~1-2 min on a 2-core CPU; bench/results/bucketing.json

The :class:`~arbitrary_nst.inference.Stylizer` reflect-pads content at the bottom/right up to a
bucket of its shape ladder (few compiles for folders of mixed sizes) and crops the output back;
``Stylizer(buckets=None)`` pads to a multiple of 4 only (at least 8), which is the network's own
result. The network is told each image's unpadded size, so the padding takes no part in the
instance-norm statistics and the convolutions read the image's own reflection beyond its edge
(before that, the padding changed every pixel: mean 0.012-0.032, single pixels up to 0.9, and
with the statistics masked but not the convolutions, mean 0.004-0.008). For the built-in photos at
several shapes (their sizes off the ladder, so they are padded) and the four generated styles,
this prints per shape the padding and the absolute difference between the two outputs on the
0..1 scale: the mean and 99th percentile over the whole image, the mean over the *interior*
(more than ``--edge`` px from the padded bottom and right edges) and over that edge band, and
the maximum. Each measured shape and timed call prints a progress line (stderr) as it finishes.
The JSON (``--json``, default the committed ``bench/results/bucketing.json``) is refused up front
if it exists, unless ``--overwrite``; options are checked before anything is measured.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import samples  # noqa: E402
from arbitrary_nst.errors import NSTError, UsageParser  # noqa: E402
from arbitrary_nst.inference import Stylizer  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

#: (content, longer side): the built-in photos at sizes between the ladder's rungs
DEFAULT_CASES = (("chelsea", 451), ("astronaut", 300), ("coffee", 333), ("rocket", 520),
                 ("motorcycle", 700))


def _progress(msg: str) -> None:
    """One line per measured item as it finishes (the run printed nothing for 40-80 s)."""
    print(msg, file=sys.stderr, flush=True)


def measure(cases=DEFAULT_CASES, styles=samples.GENERATED_STYLE_NAMES, edge: int = 64,
            model: str | None = None, progress=_progress) -> list[dict]:
    bucketed = Stylizer.load(model)
    exact = Stylizer.load(model, buckets=None)
    rows = []
    t0 = time.perf_counter()
    for i, (name, side) in enumerate(cases):
        x = samples.content_image(name, max_side=side)
        h, w = x.shape[:2]
        ph, pw = bucketed.padded_shape(h, w)
        diffs = []
        for s in styles:
            style = samples.style_image(s, 256)
            d = np.abs(bucketed.stylize(x, style) - exact.stylize(x, style)).mean(-1)
            diffs.append(d)
        d = np.stack(diffs)
        interior = d[:, : max(h - edge, 0), : max(w - edge, 0)]
        band = np.ones((h, w), bool)
        band[: max(h - edge, 0), : max(w - edge, 0)] = False
        rows.append({
            "content": name, "h": h, "w": w, "bucket_h": ph, "bucket_w": pw,
            "padded_pixels_pct": round(100 * (ph * pw / (h * w) - 1), 1),
            "mean": float(d.mean()), "p99": float(np.percentile(d, 99)),
            "interior_mean": float(interior.mean()) if interior.size else None,
            "edge_band_mean": float(d[:, band].mean()) if band.any() else None,
            "max": float(d.max()), "styles": list(styles)})
        progress(f"[{i + 1}/{len(cases)}] {name} {w}x{h} (bucket {pw}x{ph}), {len(styles)} "
                 f"styles: max |bucketed - exact| {rows[-1]['max']:.1e} "
                 f"({time.perf_counter() - t0:.0f} s)")
    return rows


def cost(model: str | None = None, side: int = 512, repeats: int = 5, progress=_progress) -> dict:
    """Seconds per ``stylize`` call of a ``side``-square photo (on a rung: no padding) through
    the bucketed path (the network gets the image sizes) and ``buckets=None`` (it does not):
    the price of passing the sizes; medians of ``repeats`` interleaved calls after the first
    call, whose time (compilation included) is reported too."""
    x = samples.content_image("astronaut", max_side=side)
    style = samples.style_image("waves", 256)
    runs = {"bucketed_s": Stylizer.load(model, buckets=(side,)),
            "exact_s": Stylizer.load(model, buckets=None)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    first = {}
    for k, st in runs.items():
        st.embed(style)  # (the predictor compiles once for both)
    for k, st in runs.items():  # the first call compiles its transfer function
        t = time.perf_counter()
        st.stylize(x, style)
        first[k.replace("_s", "_first_call_s")] = round(time.perf_counter() - t, 3)
        first_s = first[k.replace("_s", "_first_call_s")]
        progress(f"cost: first {k[:-2]} call (compile) {first_s:.2f} s")
    for r in range(repeats):
        for k, st in runs.items():
            t = time.perf_counter()
            st.stylize(x, style)
            times[k].append(time.perf_counter() - t)
        progress(f"cost: [{r + 1}/{repeats}] " + ", ".join(f"{k[:-2]} {v[-1]:.3f} s"
                                                          for k, v in times.items()))
    out = {k: round(float(np.median(v)), 4) for k, v in times.items()}
    return {"shape": list(x.shape[:2]), "repeats": repeats, **out,
            "ratio": round(out["bucketed_s"] / out["exact_s"], 3), **first}


def main(argv=None) -> int:
    p = UsageParser(prog="bench/bucketing.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model export or workdir (default: built-in)")
    p.add_argument("--edge", type=int, default=64,
                   help="width of the bottom/right band reported apart (px)")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results"
                                          / "bucketing.json"))
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls per path for the cost line (0: skip it)")
    add_overwrite(p)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:  # (before anything is measured: --json DIR was a traceback after the whole run)
        out_json = check_options(args, {"edge": 0, "repeats": 0}, args.json)
        rows = measure(edge=args.edge, model=args.model)
        timing = cost(args.model, repeats=args.repeats) if args.repeats > 0 else None
    except NSTError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"{'content':11} {'size':>9} {'bucket':>9} {'pad %':>6} {'mean':>7} {'p99':>7} "
          f"{'interior':>8} {'edge':>7} {'max':>7}   (|bucketed - exact|, 0..1 scale)")
    def e(v, width):  # (a band wider than the image has no interior: None)
        return f"{'-':>{width}}" if v is None else f"{v:{width}.1e}"

    for r in rows:
        print(f"{r['content']:11} {r['w']:>4}x{r['h']:<4} {r['bucket_w']:>4}x{r['bucket_h']:<4} "
              f"{r['padded_pixels_pct']:6.1f} {r['mean']:7.1e} {r['p99']:7.1e} "
              f"{e(r['interior_mean'], 8)} {e(r['edge_band_mean'], 7)} {r['max']:7.1e}")
    if timing:
        print(f"cost at {timing['shape'][0]}x{timing['shape'][1]} (on a rung): bucketed "
              f"{timing['bucketed_s']:.3f} s, buckets=None {timing['exact_s']:.3f} s "
              f"(x{timing['ratio']:.3f}, median of {timing['repeats']}); first call (compile): "
              f"{timing['bucketed_first_call_s']:.2f} s vs {timing['exact_first_call_s']:.2f} s")
    out = {"meta": {**run_meta(__file__, argv), "model": args.model or "builtin",
                    "edge_px": args.edge, "repeats": args.repeats,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "platform": platform.platform()},
           "rows": rows, "cost": timing}
    try:
        write_json(out_json, out, indent=1)
    except NSTError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

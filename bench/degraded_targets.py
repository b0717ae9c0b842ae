"""Do a method's outputs match the paintings as the eval scores them, or blurred copies of them?

    python bench/degraded_targets.py --eval-out out/eval_peer_12 --style ../shared/data/eval/style \
        [--size 256] [--json PATH] [--overwrite]

The training paintings of ``../shared/data`` are stored at a shorter side of 224 px as JPEG
quality 78, and the training recipes resize them to 256 px or more before the crop: every
style target the model learned from is upscaled and carries JPEG loss. The eval's paintings are
sharp (up to 512 px, quality 92, scored at ``--size`` on the longer side). If a model learned
the blurred texture, its outputs are closer to a painting *degraded like a training painting*
than to the painting itself.

Input: an ``evaluate`` output folder (``--eval-out``: its ``images/<method>/<content>__<style>.png``
and ``settings.json``'s size) and the style folder it was run on. For each painting scored, the
painting at ``--size`` (as ``evaluate`` loads it) and degraded copies of it: downscaled by a
factor (Lanczos), saved as JPEG (quality 78, the training data's), then upscaled back (bicubic).
Printed and written: the Gram style loss (``evaluate``'s measure, per layer) of each painting's
degraded copies against itself, and of each method's outputs against the painting and against
each copy; a ratio below 1 in the last column means the outputs are closer to the blurred
painting than to the real one. The last copy is a degraded one sharpened back (an unsharp
mask): its row says how much of the degradation sharpening the style targets could undo.

Options and the output file are checked before anything is computed; errors are one line (exit
status 1).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import evaluate, images  # noqa: E402
from arbitrary_nst.errors import ConfigError, UsageParser  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, run_main, write_json  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

#: (name, downscale factor, JPEG quality or None, unsharp mask (radius px, percent) or None):
#: the training data's 224 -> 256 upscale with and without its JPEG loss, the JPEG loss alone,
#: a stronger blur, and a training painting sharpened back (the mildest mask that undid the
#: most of it in session 35's sweep over radius 0.5-2 px and 25-150%: how much of the loss
#: sharpening the style targets could recover)
VARIANTS = (("jpeg78", 1.0, 78, None), ("down1.14", 1.14, None, None),
            ("down1.14+jpeg78", 1.14, 78, None), ("down1.3", 1.3, None, None),
            ("down1.14+jpeg78+usm0.75/50", 1.14, 78, (0.75, 50)))


def degrade(x: np.ndarray, factor: float, quality: int | None,
            unsharp: tuple[float, int] | None = None) -> np.ndarray:
    """``x`` (float HWC in [0, 1]) downscaled by ``factor``, JPEG-coded at ``quality``,
    brought back to its size, and then sharpened by an ``unsharp`` mask (PIL's, threshold 0)."""
    h, w = x.shape[:2]
    im = Image.fromarray(images.to_uint8(x))
    if factor != 1.0:
        im = im.resize((max(1, round(w / factor)), max(1, round(h / factor))),
                       Image.Resampling.LANCZOS)
    if quality is not None:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    if unsharp is not None:
        im = im.filter(ImageFilter.UnsharpMask(radius=unsharp[0], percent=unsharp[1],
                                               threshold=0))
    return np.asarray(im, np.float32) / np.float32(255.0)


def gram_losses(stats, target) -> dict[str, float]:
    """``evaluate``'s style loss terms (weighted, per layer) of one image's statistics."""
    return {t: evaluate.STYLE_LAYER_WEIGHT * v
            for t, v in evaluate.Metrics.gram_terms(stats, target).items()}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    out = {t: float(np.mean([r[t] for r in rows])) for t in evaluate.STYLE_LAYERS}
    out["total"] = float(sum(out.values()))
    return out


def measure(eval_out: Path, style_dir: Path, size: int, metrics=None) -> dict:
    """Mean Gram losses: ``{"self": {variant: ...}, "methods": {method: {"painting": ...,
    variant: ...}}, "pairs": {method: n}, "paintings": n}``."""
    img_root = eval_out / "images"
    methods = sorted(p.name for p in img_root.iterdir() if p.is_dir()) if img_root.is_dir() else []
    if not methods:
        raise ConfigError(f"{eval_out}: no images/<method> folders (an evaluate --out folder?)")
    # the images of the pairs the evaluation scored, by exact name (a glob on "*__candy.png"
    # took another painting's "x__fast-neural-style__candy.png" too, read "[1] wave" as a
    # pattern, and took an earlier run's leftover images of other photos or another size)
    try:
        rows = json.loads((eval_out / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{eval_out}: no readable results.json (an evaluate --out folder?)") \
            from None
    metrics = metrics or evaluate.Metrics()
    styles = images.list_images(style_dir)
    selfs: dict[str, list] = {v[0]: [] for v in VARIANTS}
    per: dict[str, dict[str, list]] = {m: {k: [] for k in ("painting", *selfs)} for m in methods}
    used = 0
    for sp in styles:
        outputs = {m: sorted({img_root / m / evaluate.pair_file_name(r["content"], sp.stem)
                              for r in rows
                              if r.get("method") == m and r.get("style") == sp.stem})
                   for m in methods}
        outputs = {m: [f for f in fs if f.is_file()] for m, fs in outputs.items()}
        if not any(outputs.values()):
            continue
        used += 1
        painting = evaluate._resized_to(images.load_image(sp), size)
        target = metrics.style_stats(metrics.features(painting[None]))
        copies = {name: metrics.style_stats(metrics.features(degrade(painting, *how)[None]))
                  for name, *how in VARIANTS}
        for name, st in copies.items():
            selfs[name].append(gram_losses(st, target))
        for m, files in outputs.items():
            for f in files:
                st = metrics.style_stats(metrics.features(images.load_image(f)[None]))
                per[m]["painting"].append(gram_losses(st, target))
                for name, cst in copies.items():
                    per[m][name].append(gram_losses(st, cst))
    if not used:
        raise ConfigError(f"{style_dir}: none of its images has outputs in {img_root} (the "
                          "style folder the evaluation ran on?)")
    scored = [m for m in methods if per[m]["painting"]]  # (a method with none of these styles)
    return {"paintings": used,
            "self": {k: _mean(v) for k, v in selfs.items()},
            "pairs": {m: len(per[m]["painting"]) for m in scored},
            "methods": {m: {k: _mean(v) for k, v in per[m].items()} for m in scored}}


def table(r: dict) -> str:
    layers = evaluate.STYLE_LAYERS
    lines = ["| image | against | Gram style loss | " + " | ".join(layers) + " | vs the painting |",
             "|---|---|---|" + "---|" * len(layers) + "---|"]
    for name, v in r["self"].items():
        lines.append(f"| the painting, {name} | the painting | {v['total']:.3e} | "
                     + " | ".join(f"{v[t]:.2e}" for t in layers) + " | |")
    for m, d in r["methods"].items():
        base = d["painting"]["total"]
        for k, v in d.items():
            lines.append(f"| {m} ({r['pairs'][m]} outputs) | {'the painting' if k == 'painting' else k} | "
                         f"{v['total']:.3e} | " + " | ".join(f"{v[t]:.2e}" for t in layers)
                         + (f" | {v['total'] / base:.2f}x |" if base > 0 else " | - |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = UsageParser(prog="bench/degraded_targets.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-out", required=True, type=Path,
                    help="an evaluate --out folder (its images/<method> are scored)")
    ap.add_argument("--style", required=True, type=Path, help="the style folder it ran on")
    ap.add_argument("--size", type=int, default=None,
                    help="the paintings' longer side (default: the evaluation's, from its "
                         "settings.json)")
    ap.add_argument("--json", default=None, help="write the numbers here")
    add_overwrite(ap)
    a = ap.parse_args(argv)
    out_json = check_options(a, {"size": 32}, a.json)
    if not a.eval_out.is_dir():
        raise ConfigError(f"{a.eval_out}: no such folder (--eval-out)")
    if not a.style.is_dir():
        raise ConfigError(f"{a.style}: no such folder (--style)")
    size = a.size
    if size is None:
        try:  # (per method; one evaluation scores all of them at one size)
            sizes = {int(v["size"]) for v in json.loads(
                (a.eval_out / "settings.json").read_text())["methods"].values()}
            (size,) = sizes
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{a.eval_out}: no readable settings.json with one size; give "
                              "--size") from None
    r = measure(a.eval_out, a.style, size)
    print(table(r))
    if out_json is not None:
        write_json(out_json, {"meta": run_meta(__file__, argv), "size": size, **r})
        print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    run_main(main)

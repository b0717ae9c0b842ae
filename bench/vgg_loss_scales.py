"""Per-layer loss magnitudes with and without the normalized VGG16 (Gatys et al. 2016), and
with average pooling (Magenta's loss network).

    python bench/vgg_loss_scales.py [--size 256] [--json PATH] [--overwrite]

For a built-in content photo and a built-in (generated) style image, prints, for each ReLU tap, the
content loss (feature MSE between the two images) and the Gram style loss, once with the plain
ImageNet weights and once with filters rescaled to mean activation 1 over the built-in images.
The normalized network makes the layers' losses comparable, so equal per-layer weights mean
roughly equal contributions; with the plain weights, deep layers dominate by orders of magnitude.
The plain weights with *average* pooling are Magenta's loss network (``LossConfig``'s defaults,
``model.vgg_pooling="avg"``): the last lines give how much larger max pooling makes the Gram
terms of Magenta's style layers (relu1_2, relu2_2, relu3_3, relu4_3).
``--json`` (default the committed ``bench/results/vgg_loss_scales.json``) is refused up front if it
exists, unless ``--overwrite``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import images, losses, samples  # noqa: E402
from arbitrary_nst import vgg as vgg_lib  # noqa: E402
from arbitrary_nst.errors import UsageParser  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

TAPS = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_3", "relu4_1", "relu4_2",
        "relu4_3", "relu5_1", "relu5_3")


def layer_losses(net: vgg_lib.VGG16, content: jnp.ndarray, style: jnp.ndarray) -> dict:
    fc, fs = net(content, TAPS), net(style, TAPS)
    out = {}
    for tap in TAPS:
        out[tap] = {
            "content": float(losses.content_loss(fc[tap], fs[tap])[0]),
            "style": float(losses.style_loss(fc[tap], losses.style_statistic(fs[tap]))[0]),
        }
    return out


def main(argv=None) -> int:
    parser = UsageParser(prog="bench/vgg_loss_scales.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="working size (default 256)")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" /
                                              "vgg_loss_scales.json"))
    add_overwrite(parser)
    args = parser.parse_args(argv)
    out = check_options(args, {"size": 32}, args.json)  # (VGG16's smallest input)
    content = images.resize(samples.content_image("astronaut"), (args.size, args.size))[None]
    style = samples.style_image("strokes", size=args.size)[None]
    plain = layer_losses(vgg_lib.load_vgg16(), jnp.asarray(content), jnp.asarray(style))
    norm = layer_losses(vgg_lib.load_vgg16(normalized=True), jnp.asarray(content), jnp.asarray(style))
    avg = layer_losses(vgg_lib.load_vgg16(pooling="avg"), jnp.asarray(content), jnp.asarray(style))
    print("| tap | content (plain) | content (normalized) | style (plain) | style (normalized) |")
    print("|---|---:|---:|---:|---:|")
    for tap in TAPS:
        print(f"| {tap} | {plain[tap]['content']:.3e} | {norm[tap]['content']:.3e} | "
              f"{plain[tap]['style']:.3e} | {norm[tap]['style']:.3e} |")
    gatys_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    for name, table in (("plain", plain), ("normalized", norm)):
        st = [table[t]["style"] for t in TAPS]
        sg = [table[t]["style"] for t in gatys_layers]
        print(f"{name}: style-loss spread (max/min) over all taps {max(st) / min(st):.3g}x, "
              f"over Gatys' relu1_1..relu5_1 {max(sg) / min(sg):.3g}x")
    magenta = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    ratio = {t: plain[t]["style"] / avg[t]["style"] for t in magenta}
    print("style loss with max pooling / with average pooling (Magenta's style layers): "
          + ", ".join(f"{t} {r:.3g}x" for t, r in ratio.items()))
    write_json(out, {"meta": run_meta(__file__, argv), "size": args.size, "plain": plain,
                     "normalized": norm, "avg_pooling": avg, "max_over_avg_style": ratio},
               indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)

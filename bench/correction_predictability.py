"""How much of the fitted-style correction could a predictor see in other style statistics?

    python bench/correction_predictability.py --oracle workdirs/r2/oracle \
        --model workdirs/gpuA/model.safetensors [--json PATH] [--overwrite]

Input: a conditioning oracle written by ``python -m arbitrary_nst.distill --target conditioning``
(per training painting: the predictor's gamma/beta ``c0`` and the gamma/beta ``c`` fitted to it,
plus the predictor's 1920 pooled statistics ``x``) and the model it was fitted from. The
paintings are re-read from the distill config's data section (the oracle stores their indices;
the recomputed statistics are checked against the stored ``x``).

For each feature set, kernel ridge (linear kernel; each block standardized on the training folds
and scaled to equal total variance) predicts the correction ``c - c0``; k-fold cross-validation
gives the share of the held-out correction's squared error it removes (0 = the predictor as it
is, 1 = the fits themselves; the intercept alone is the shared offset). The feature sets: the
predictor's own mean/std statistics, Gram matrices (signed square root of Gram / HW, upper
triangle) of each style tap, and their unions. If a richer statistic predicted the correction
much better, the predictor should pool it (issue #7: "which style statistics the predictor
pools"); if not, what is left is specific to each painting at this sample size.

Options, the oracle's files and ``--json`` (an existing file only with ``--overwrite``) are checked
before the features are computed; errors are one line (exit status 1).
"""
from __future__ import annotations

import glob
import json
import math
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arbitrary_nst import data, distill, export, losses, training  # noqa: E402
from arbitrary_nst.errors import ConfigError, UsageParser  # noqa: E402
from arbitrary_nst.models.predictor import pooled_statistics  # noqa: E402
from bench.bench_cli import add_overwrite, check_options, write_json, run_main  # noqa: E402
from bench.bench_cli import meta as run_meta  # noqa: E402

RIDGES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def load_oracle(oracle_dir: Path) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(str(oracle_dir / "chunk_*.npz")))
    if not files:
        raise ConfigError(f"{oracle_dir}: no chunk_*.npz (run `python -m arbitrary_nst.distill "
                          f"--target conditioning` first)")
    chunks = [dict(np.load(f)) for f in files]
    if "c" not in chunks[0]:
        raise ConfigError(f"{oracle_dir}: an embedding oracle; this needs --target conditioning")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def load_oracle_meta(oracle_dir: Path) -> dict:
    """The oracle's ``oracle.json`` (a missing one was a FileNotFoundError traceback)."""
    path = oracle_dir / "oracle.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (an oracle folder written by `python -m "
                          f"arbitrary_nst.distill --target conditioning` has it)") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
    if not isinstance(meta, dict) or "style_size" not in meta:
        raise ConfigError(f"{path}: no style_size (not a distill oracle's oracle.json?)")
    return meta


def style_statistics(model, src, indices, size: int, batch: int = 8):
    """The predictor's pooled statistics and the signed-sqrt Gram blocks of each style tap."""
    p = model.predictor
    stats, grams = [], {t: [] for t in p.taps}
    for s in range(0, len(indices), batch):
        feats = p.style_features(jnp.asarray(distill.style_images(src, indices[s:s + batch], size)))
        stats.append(np.asarray(pooled_statistics(feats, p.taps, norm=p.feature_norm)))
        for t in p.taps:
            g = np.asarray(losses.gram_matrix(feats[t]), np.float64)  # the style loss's Gram / HW
            iu = np.triu_indices(g.shape[-1])
            g = g[:, iu[0], iu[1]]
            grams[t].append(np.sign(g) * np.sqrt(np.abs(g)))
    return np.concatenate(stats), {t: np.concatenate(v) for t, v in grams.items()}


def cross_validated(blocks: list[np.ndarray], delta: np.ndarray, ridges=RIDGES, folds: int = 8,
                    seed: int = 0) -> dict[float, float]:
    """Held-out share explained per ridge (kernel ridge with intercept, ``folds``-fold CV)."""
    n = len(delta)
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, folds)
    sse = {lam: 0.0 for lam in ridges}
    base = 0.0
    for va in parts:
        tr = np.setdiff1d(perm, va)
        k_tr = np.zeros((len(tr), len(tr)))
        k_va = np.zeros((len(va), len(tr)))
        for x in blocks:
            mu, sd = x[tr].mean(0), np.maximum(x[tr].std(0), 1e-6)
            z = (x - mu) / sd / np.sqrt(x.shape[1])
            k_tr += z[tr] @ z[tr].T
            k_va += z[va] @ z[tr].T
        off = delta[tr].mean(0)
        base += float(np.sum(delta[va] ** 2))
        for lam in ridges:
            if not blocks:  # the shared offset alone
                pred = np.broadcast_to(off, delta[va].shape)
            else:
                a = np.linalg.solve(k_tr + lam * np.eye(len(tr)), delta[tr] - off)
                pred = off + k_va @ a
            sse[lam] += float(np.sum((delta[va] - pred) ** 2))
    return {lam: 1.0 - sse[lam] / base for lam in ridges}


def main(argv=None) -> int:
    ap = UsageParser(prog="bench/correction_predictability.py",
                     description=__doc__.split("\n\n")[0])
    ap.add_argument("--oracle", required=True, help="distill --target conditioning oracle folder")
    ap.add_argument("--model", required=True, help="the export the oracle was fitted from")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "cpu_small.py"),
                    help="config whose data section names the training images (distill's default)")
    ap.add_argument("--folds", type=int, default=8)
    ap.add_argument("--json", default=None)
    add_overwrite(ap)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    # (--folds 0 was a ValueError after the loading, --folds 1 all-NaN scores written as NaN)
    out_json = check_options(a, {"folds": 2}, a.json)
    oracle_dir = Path(a.oracle)
    meta = load_oracle_meta(oracle_dir)
    r = load_oracle(oracle_dir)
    if a.folds > len(r["c"]):
        raise ConfigError(f"--folds {a.folds}: more folds than the oracle's {len(r['c'])} styles")
    src = data.prepare(training.load_config(a.config).data)["style"]
    model = export.load_exported(a.model)
    stats, grams = style_statistics(model, src, r["index"], int(meta["style_size"]))
    mismatch = float(np.abs(stats - r["x"]).max())
    if mismatch > 1e-3:
        raise ConfigError(f"{a.oracle}: recomputed statistics differ from the oracle's by "
                          f"{mismatch:.3g} (another model or data set than the oracle was made "
                          "with?)")
    delta = (r["c"] - r["c0"]).astype(np.float64)
    taps = list(grams)
    sets = {"shared offset only": [], "pooled mean/std (the predictor's 1920)": [stats]}
    sets.update({f"Gram {t}": [grams[t]] for t in taps})
    sets["Gram, all taps"] = [grams[t] for t in taps]
    sets["mean/std + Gram relu2_2, relu3_3"] = [stats, grams["relu2_2"], grams["relu3_3"]]
    sets["mean/std + Gram, all taps"] = [stats] + [grams[t] for t in taps]
    rows = []
    print(f"{len(delta)} fitted styles, {a.folds}-fold CV; held-out correction explained")
    print(f"{'features':42s} {'best ridge':>10s} {'explained':>9s}")
    for name, blocks in sets.items():
        res = cross_validated(blocks, delta, folds=a.folds)
        if not all(math.isfinite(v) for v in res.values()):  # (NaN was written to the JSON)
            raise ConfigError(f"{name}: non-finite held-out scores {res} (a correction of all "
                              "zeros?); nothing was written")
        best = max(res, key=res.get)
        rows.append({"features": name, "dims": int(sum(b.shape[1] for b in blocks)),
                     "best_ridge": best, "explained": res[best],
                     "by_ridge": {str(k): v for k, v in res.items()}})
        print(f"{name:42s} {best:10g} {res[best]:9.1%}", flush=True)
    out = {"meta": run_meta(__file__, argv), "oracle": str(a.oracle), "model": str(a.model),
           "styles": int(len(delta)), "folds": a.folds, "stats_mismatch": mismatch, "rows": rows,
           "seconds": time.perf_counter() - t0}
    if out_json is not None:
        write_json(out_json, out, indent=1)
        print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    run_main(main)

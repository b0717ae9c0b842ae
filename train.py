#!/usr/bin/env python3
"""Train the arbitrary style transfer model.

    python train.py --config configs/cpu_small.py --workdir workdirs/cpu_small
    python train.py --config configs/default.py --workdir DIR --set train.batch_size=16 \\
        --set optim.learning_rate=5e-4 --export models/my_model.safetensors

Re-running with the same ``--workdir`` resumes from its latest checkpoint (exactly: same
parameters, optimizer state and data order as an uninterrupted run). Ctrl-C / SIGTERM finish the
current step, save a checkpoint and exit cleanly. At the end the inference weights are exported
to ``--export`` (default ``WORKDIR/model.safetensors``). See ``arbitrary_nst/training.py``.
"""
from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", required=True, help="Python file with get_config() (configs/*.py)")
    p.add_argument("--workdir", required=True, help="checkpoints, logs, samples and export")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.num_steps=1000 (repeatable)")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="where to write the inference weights at the end "
                        "(default WORKDIR/model.safetensors; '' = none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from arbitrary_nst.errors import NSTError
    from arbitrary_nst import training

    try:
        config = training.load_config(args.config, args.overrides)
        if args.print_config:
            print(config)
            return 0
        result = training.train(config, args.workdir, export_path=args.export,
                                progress=False if args.no_progress else None)
    except NSTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else "done"
    terms = " ".join(f"{k}={last[k]:.4g}" for k in ("loss", "content", "style", "tv") if k in last)
    print(f"{status}: step {result.step} {terms}".rstrip())
    if result.export_path is not None:
        print(f"exported inference weights to {result.export_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

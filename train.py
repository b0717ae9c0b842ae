#!/usr/bin/env python3
"""Train the arbitrary style transfer model.

    python train.py --config configs/cpu_small.py --workdir workdirs/cpu_small
    python train.py --config configs/default.py --workdir DIR --set train.batch_size=16 \\
        --set optim.learning_rate=5e-4 --export models/my_model.safetensors

Re-running with the same ``--workdir`` resumes from its latest checkpoint (exactly: same
parameters, optimizer state and data order as an uninterrupted run). Ctrl-C / SIGTERM / SIGHUP (a
closed terminal) finish the current step, save a checkpoint and the export, then die of that
signal (exit status 130 / 143 / 129), so a script running several stages stops too. At the end the inference weights are exported
to ``--export`` (default ``WORKDIR/model.safetensors``). See ``arbitrary_nst/training.py``.

    python train.py --config configs/cpu_small.py --objective builtin workdirs/run1 [...]

prints the training loss of each model on the same fixed batches of the config's data (did a
run lower the objective it was trained on?) instead of training.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from arbitrary_nst.errors import UsageParser  # (light: no JAX before the arguments parse)

    p = UsageParser(prog="train.py", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", required=True, help="Python file with get_config() (configs/*.py)")
    p.add_argument("--workdir", help="checkpoints, logs, samples and export (required to train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.num_steps=1000 (repeatable)")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="where to write the inference weights at the end "
                        "(default WORKDIR/model.safetensors; '' = none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    p.add_argument("--objective", nargs="+", action="extend", metavar="MODEL", default=None,
                   help="don't train: print the training loss of these models (exports, "
                        "workdirs or 'builtin') on the same fixed batches of the config's data")
    p.add_argument("--objective-batches", type=int, default=12, metavar="N",
                   help="batches of train.batch_size pairs for --objective (default 12)")
    p.add_argument("--objective-seed", type=int, default=1234, metavar="S",
                   help="seed that draws the --objective batches (default 1234)")
    args = p.parse_args(argv)
    if args.workdir is None and not args.print_config and args.objective is None:
        p.error("--workdir is required to train")
    if args.workdir is not None and not args.workdir.strip():  # ('' was the current folder)
        p.error(f"--workdir is an empty folder name ({args.workdir!r}) - is a shell variable "
                "unset?")
    if args.objective is not None and (args.workdir is not None or args.export is not None):
        p.error("--objective does not train: --workdir and --export do not apply")  # (ignored)
    if args.objective_batches < 1:  # (it said "num_batches must be >= 1")
        p.error(f"--objective-batches must be >= 1, got {args.objective_batches}")
    return args


def _saved_so_far(workdir: str | None) -> str:
    """``; the checkpoints saved so far stay in W`` when W/checkpoints holds a checkpoint (an
    interruption at start-up, before any save, named a folder that may not even exist)."""
    try:
        saved = bool(workdir) and any(
            e.name.isdigit() and e.is_dir() for e in os.scandir(os.path.join(
                workdir, "checkpoints")))  # (training.CHECKPOINT_DIR: not imported yet)
    except OSError:
        saved = False
    return f"; the checkpoints saved so far stay in {workdir}" if saved else ""


# What Orbax logs (with a traceback) on the way to the failed save that train.py then reports in
# its one line: these records are dropped. (Orbax 0.12: futures/future.py, async_checkpointer.py,
# checkpoint_manager.py wait_until_finished / _finalize_checkpoint.)
_SAVE_FAILURE_LOGS = ("_SignalingThread.run() raised", "Handler Commit operations",
                      "[wait_until_finished]", "Checkpointer failed")


def _not_an_orbax_traceback(record: logging.LogRecord) -> bool:
    """Drop Orbax's logged save failures (said again in train.py's one error line); any other
    Orbax error with a traceback (e.g. "Failed to remove checkpoint": Orbax does not raise it,
    so it is the only word of checkpoints piling up) keeps its line, without the traceback.
    (absl's records name absl's own file as their pathname: the frames say who logged.)"""
    import traceback

    if not record.exc_info or record.exc_info[2] is None:
        return True
    frames = traceback.extract_tb(record.exc_info[2])
    if not any("/orbax/" in f.filename.replace(os.sep, "/") for f in frames):
        return True
    if any(text in str(record.msg) for text in _SAVE_FAILURE_LOGS):
        return False
    record.exc_info, record.exc_text = None, None
    return True


def _not_a_lost_asyncio_exception(record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in str(record.msg)


def _unraisable_hook(unraisable) -> None:
    if (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        return
    (_unraisable_hook.previous or sys.__unraisablehook__)(unraisable)


_unraisable_hook.previous = None  # (the hook it replaced)


def _quiet_checkpoint_failures() -> None:
    """A failed checkpoint write (a full disk, a file size limit) is said in one line (the
    ``error:`` of :func:`main`); silence what Orbax and tensorstore print about it on the way
    (~800 lines): Orbax's logged tracebacks (absl ``logging.exception``), the ``RuntimeError:
    Event loop is closed`` of tensorstore callbacks that run after Orbax closed its event loop
    (unraisable, no object), and asyncio's "exception was never retrieved" of its abandoned
    tasks. Only these: any other log record or unraisable exception is printed as before.
    Installed by :func:`main` only (importing the package changes no hooks)."""
    for name in ("absl", "orbax"):
        logging.getLogger(name).addFilter(_not_an_orbax_traceback)  # (once: the same filter)
    logging.getLogger("asyncio").addFilter(_not_a_lost_asyncio_exception)
    if sys.unraisablehook is not _unraisable_hook:
        _unraisable_hook.previous = sys.unraisablehook
        sys.unraisablehook = _unraisable_hook


def main(argv=None) -> int:
    from arbitrary_nst.errors import printable_stdout

    printable_stdout()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _quiet_checkpoint_failures()
    from arbitrary_nst.errors import NSTError, one_line  # (light: caught below even during
    # the import)

    try:
        from arbitrary_nst import training  # (JAX: seconds, during which Ctrl-C is one line)
        from arbitrary_nst.errors import check_jax_backend

        config = training.load_config(args.config, args.overrides)
        distributed = config.get("distributed", None)
        if not (distributed is not None and distributed.get("initialize", False)):
            check_jax_backend()  # (a distributed run starts JAX's backend only after
            # jax.distributed.initialize: asking for the devices first stopped it)
        training.refuse_unread_folders(config, args.overrides, args.config)
        if args.print_config:
            print(config)
            # (a config training refuses was printed as if it were fine, exit 0)
            training.validate_config(config)
            return 0
        if args.objective is not None:
            rows = training.training_objective(config, args.objective,
                                               num_batches=args.objective_batches,
                                               seed=args.objective_seed,
                                               progress=not args.no_progress)
            n = args.objective_batches * int(config.train.batch_size)
            print(f"training objective on {n} fixed pairs ({args.objective_batches} batches, "
                  f"seed {args.objective_seed}) of {config.name}'s data and loss:")
            print("| model | loss | content | style | tv |\n|---|---|---|---|---|")
            for name, r in zip(args.objective, rows):
                print(f"| {name} | {r['loss']:.4g} | {r['content']:.4g} | {r['style']:.4g} | "
                      f"{r['tv']:.4g} |")
            return 0
        result = training.train(config, args.workdir, export_path=args.export,
                                progress=False if args.no_progress else None)
    except NSTError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - only out-of-memory is a user error; else re-raised
        from arbitrary_nst.errors import out_of_memory

        if (oom := out_of_memory(e)) is None:
            raise
        print(f"error: {oom}: lower train.batch_size, data.image_size / data.style_size or "
              f"model.width{_saved_so_far(args.workdir)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (start-up, a second Ctrl-C)
        print(f"error: interrupted{_saved_so_far(args.workdir)}", file=sys.stderr)
        return 128 + signal.SIGINT
    last = result.history[-1] if result.history else {}
    status = "interrupted" if result.interrupted else "done"
    terms = " ".join(f"{k}={last[k]:.4g}" for k in ("loss", "content", "style", "tv") if k in last)
    try:  # (after SIGHUP the terminal may be gone: EIO; all is saved, the status says how)
        print(f"{status}: step {result.step} {terms}".rstrip())
        if result.export_path is not None:
            print(f"exported inference weights to {result.export_path}")
    except OSError:
        pass
    # Stopped by a signal: checkpoint and export are saved, but the run is not done: 128 + the
    # signal (130 for Ctrl-C), and as a script the process then dies of that signal (below);
    # also for a signal during the last step (the run is done, but a script must stop too).
    return 128 + result.signal if result.signal else 0


def exit_as_signalled(status: int) -> None:
    """Exit with ``status``; 130 / 143 / 129 (stopped by SIGINT / SIGTERM / SIGHUP, everything
    saved) by dying of that signal instead, so that a multi-stage shell script stops: bash ends
    a script whose child was *killed* by SIGINT, while an exit status of 130 goes on to the
    next stage, which would start from a half-trained model. (The signals of
    ``training.STOP_SIGNALS``, named here without importing JAX.)"""
    signum = status - 128
    if signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
        for stream in (sys.stdout, sys.stderr):
            try:  # (after SIGHUP the terminal is gone: EIO)
                stream.flush()
            except OSError:
                pass
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(status)


if __name__ == "__main__":
    from arbitrary_nst.errors import run_command  # (a Ctrl-C while JAX loads was lost)

    exit_as_signalled(run_command(main))

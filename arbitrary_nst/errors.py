"""Typed errors that users can cause.

Every error a user can trigger with bad input (a file, a config value, a weights file) is one of
these. Their ``str()`` is a single line naming the offending thing and the reason, so the CLIs
can print it as-is and exit non-zero instead of showing a traceback. :func:`check_count` is the
one check of user-given sizes and counts.
"""
from __future__ import annotations

import _thread
import argparse
import contextlib
import gc
import math
import numbers
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping


class NSTError(Exception):
    """Base class of all user-facing errors of arbitrary_nst."""


class ImageError(NSTError):
    """An image file (or output destination) that cannot be used: ``path: reason``."""

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class WeightsError(NSTError):
    """VGG16 or model weights that cannot be found, read or trusted."""


class ConfigError(NSTError):
    """An option or config value that is out of range or inconsistent."""


class ModelError(NSTError):
    """A model/export/checkpoint file that cannot be loaded."""


class OutOfMemory(ConfigError):
    """The device ran out of memory: ``what`` (:func:`out_of_memory`'s one line) and the
    library's hint of what to lower; a command gives its own options' hint instead."""

    def __init__(self, what: str, hint: str):
        self.what = what
        super().__init__(f"{what}: {hint}")


def _int_range(minimum: int, maximum: int | None) -> str:
    return f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"


#: The largest seed any option takes (numpy generator seeds are non-negative; 32 bits).
MAX_SEED = 2**32 - 1


def check_count(value, what: str, minimum: int = 1, maximum: int | None = None, *,
                optional: bool = True) -> int | None:
    """``value`` as an int in [``minimum``, ``maximum``] (None stays None if ``optional``);
    ConfigError naming ``what`` for anything else (NaN, 3.7, "100", True, 0): sizes and counts
    are never silently rounded."""
    if value is None and optional:
        return None
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if isinstance(value, numbers.Real) and not integral and not isinstance(value, bool):
        integral = math.isfinite(value) and float(value).is_integer()  # 512.0 is fine
    if (not integral or int(value) < minimum
            or (maximum is not None and int(value) > maximum)):
        raise ConfigError(f"{what} must be an integer {_int_range(minimum, maximum)}, got "
                          f"{value!r}")
    return int(value)


def check_weight(value, what: str) -> float:
    """``value`` as a float if it is a finite real number >= 0 (a loss or layer weight);
    ConfigError naming ``what`` otherwise: NaN passed ``< 0`` (a NaN tv_weight trained a
    step), a string was a TypeError inside the loss, ``True`` is no weight."""
    import math
    import numbers

    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ConfigError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def not_a_number(value) -> bool:
    """A string, bytes or bool given where a number is expected (``float()`` would take
    ``"0.5"`` and ``True``); numbers, numpy scalars and 0-d arrays are numbers."""
    import numpy as np

    return isinstance(value, (str, bytes, bool, np.bool_)) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "bUSO")


class _StoreOnce(argparse._StoreAction):
    """argparse's ``store`` for options that take one value, refusing a second occurrence:
    argparse keeps the last value without a word, so ``--content a --content b`` stylized b
    only (exit 0) and ``--strength 0.5 ... --strength 1`` ran at 1, while the options that take
    several values add up (``action="extend"``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:
            seen = parser.__dict__.setdefault("_options_given", set())
            if self.dest in seen:
                raise argparse.ArgumentError(
                    self, "given more than once (only the last would count); give it once")
            seen.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class UsageParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage error is one line, ``error: ... (see PROG --help)``,
    exit status 2 (argparse's usage status), instead of the whole usage block: the same for
    every command of the project (``infer.py``, ``train.py``, ``python -m arbitrary_nst.*``).
    Sub-commands: ``add_subparsers(parser_class=UsageParser)``. An option that takes one value
    given twice is a usage error (:class:`_StoreOnce`)."""

    help_hint: str | None = None  # e.g. the sub-command's help, for errors found at the top

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        self._options_given = set()  # (per parse: a parser may be used more than once)
        return super().parse_known_args(args, namespace)

    def given(self, dest: str) -> bool:
        """Whether the last parse met the option of ``dest`` (an option that takes one value)
        on the command line, even at its default value: options that apply to one mode only
        are refused in the other whatever their value."""
        return dest in self._options_given

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.help_hint or self.prog} --help`)\n")


@contextlib.contextmanager
def options_named(option_of: Mapping[str, str], otherwise: str = ""):
    """A ConfigError from the library whose message starts with one of ``option_of``'s names
    (``"strength must be in [0, 1]"``, ``"style_layers: ..."``) is said with the command's
    option instead (``"--strength must be in [0, 1]"``): the library's names are not what the
    user typed. Other ConfigErrors get ``otherwise`` in front."""
    try:
        yield
    except ConfigError as e:
        msg = str(e)
        for name, option in option_of.items():
            if msg.startswith((name + " ", name + ":")):
                raise ConfigError(option + msg[len(name):]) from None
        if otherwise:
            raise ConfigError(otherwise + msg) from None
        raise


def check_named(value: str | None, option: str, what: str) -> None:
    """An output option given as an empty name (an unset ``$OUT``) is a one-line ConfigError:
    ``Path("")`` is ``.``, and the results went into the current folder."""
    if value is not None and not str(value).strip():
        raise ConfigError(f"{option} is empty; give {what}")


def count_arg(minimum: int = 1, maximum: int | None = None):
    """An argparse ``type=`` with :func:`check_count`'s rule: a bad value is a usage error."""
    def parse(text: str) -> int:
        try:
            return check_count(int(text), "value", minimum, maximum)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(
                f"must be an integer {_int_range(minimum, maximum)}, got {text!r}") from None
    return parse


def positive_float_arg(text: str) -> float:
    """An argparse ``type=`` for a finite number > 0 (a NaN cap compared false with everything:
    ``--max-mb nan`` turned the cap off)."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


class _BestEffortStream:
    """A text stream whose writes that fail (a full disk, a closed pipe, an I/O error) are
    dropped: stderr carries progress and diagnostics, and `2>/dev/full` (or a log on a full
    disk) stopped a whole batch at its first progress line, with nothing said. Everything else
    is the wrapped stream's."""

    #: the errors of a write or flush that are dropped (ValueError: a closed file)
    DROPPED: tuple[type[Exception], ...] = (OSError, ValueError)

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> int:
        try:
            return self._stream.write(s)
        except self.DROPPED:
            self._dropped()
            return len(s)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except self.DROPPED:
            self._dropped()

    def _dropped(self) -> None:
        """Called after a dropped write or flush."""

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class _ReaderMayLeaveStream(_BestEffortStream):
    """stdout whose reader may go away: a closed pipe (`| head -1`, a pager quit early) drops
    the lines written after it. stdout carries summaries of work whose results are files, and
    the summary's failed write was "error: Broken pipe", exit status 1, after every output had
    been written (or, mid-batch, stopped the batch). The file descriptor is pointed at
    /dev/null then, so the text still buffered does not fail again when Python exits
    ("Exception ignored ... BrokenPipeError"). Other write errors (`>/dev/full`) still raise:
    the user asked for that output to be kept."""

    DROPPED = (BrokenPipeError,)

    def _dropped(self) -> None:
        _point_at_devnull(self._stream)


def _point_at_devnull(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: what is still buffered then goes
    nowhere instead of failing again when Python flushes it at exit."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # (no file descriptor: a test's stream)
        pass


def printable_stdout() -> None:
    """Let the CLIs print any file name: a name whose bytes are not valid in stdout's encoding
    (non-UTF-8 bytes decode to surrogates) is printed with backslash escapes instead of raising
    UnicodeEncodeError after the work is done (stderr already does this). And stderr is best
    effort: a closed one (`2>&-`) or one that cannot be written (`2>/dev/full`) stopped every
    batch job at its first progress or "skipped" line; their lines are dropped instead. stdout
    whose reader closed the pipe drops its lines too (:class:`_ReaderMayLeaveStream`)."""
    import os
    import sys

    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # a closed or unusual stream: leave it
            pass
    if sys.stdout is not None and not isinstance(sys.stdout, _BestEffortStream):
        sys.stdout = _ReaderMayLeaveStream(sys.stdout)
    if sys.stderr is None:  # (2>&-: each use was an AttributeError)
        sys.stderr = _BestEffortStream(open(os.devnull, "w"))
    elif not isinstance(sys.stderr, _BestEffortStream):
        sys.stderr = _BestEffortStream(sys.stderr)


def check_jax_backend() -> None:
    """``JAX_PLATFORMS`` naming a backend this machine cannot start (a CUDA image on a host
    without a GPU, a copied CI environment) was a traceback from the first array: a one-line
    ConfigError instead. Nothing to check (and JAX not imported) when it is not set."""
    import os

    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if not platforms:
        return
    import jax

    try:
        jax.devices()
    except Exception as e:  # noqa: BLE001 - JAX raises RuntimeError, or a bare AssertionError
        why = one_line(e)
        raise ConfigError(f"JAX_PLATFORMS={platforms}: JAX cannot start that backend here "
                          f"({why if len(why) <= 160 else why[:157] + '...'}); unset "
                          "JAX_PLATFORMS or set it to cpu") from None


def one_line(e: object) -> str:
    """``str(e)`` on one line (every run of whitespace one space), or the type's name if empty,
    with any other control character written as an escape (a file name holding ESC [31m coloured
    the terminal): how messages from other libraries, and file names, enter ours."""
    text = " ".join(str(e).split()) or type(e).__name__
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


#: What an allocation failure says: XLA's status, onnxruntime's CPU allocator (its ``Fail``
#: "Failed to allocate memory for requested buffer of size ..."), C++'s std::bad_alloc.
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Failed to allocate memory", "std::bad_alloc",
                "bad allocation")


def out_of_memory(e: BaseException) -> str | None:
    """``"out of memory (...)"`` if ``e`` is an allocation failure (XLA's RESOURCE_EXHAUSTED,
    onnxruntime's, Python's MemoryError: a size or batch too large for the device or the
    machine), else None: the CLIs print it as one line and say what to lower."""
    if isinstance(e, OSError):  # (a file error whose path holds a marker is a file error)
        return None
    text = " ".join(str(e).split())  # (empty for a bare MemoryError: its name below)
    at = min((i for i in (text.find(m) for m in _OOM_MARKERS) if i >= 0), default=None)
    if not isinstance(e, MemoryError) and at is None:
        return None
    if at is not None and at > 120:  # (onnxruntime's says it after a long source path)
        text = f"{text[:60]} ... {text[at:]}"
    return f"out of memory ({text[:160] or type(e).__name__})"


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``kill``, a closed terminal or ssh session) as an interruption.

    A ``KeyboardInterrupt``, so that every command's Ctrl-C path runs for it too: a batch says
    how many outputs are on disk and how to finish, half-written files are removed, the
    command exits ``128 + signum``. Before, either signal killed the process on the spot,
    without a word (a batch's progress bar stood at "0/12" with 7 outputs written)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(signal.Signals(signum).name)


#: Signals that stop a command like Ctrl-C does (Windows has no SIGHUP).
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, n))


class _Received:
    """The last stop signal a command received (``None``: none)."""

    signum: int | None = None


@contextlib.contextmanager
def interrupts_outside_gc_callbacks() -> Iterator[_Received]:
    """Ctrl-C (SIGINT) as ``KeyboardInterrupt`` and SIGTERM / SIGHUP as :class:`Terminated`,
    but never raised inside a garbage-collector callback, for the commands' ``__main__``
    blocks. Yields what was received.

    Why: JAX registers a ``gc.callbacks`` function; Python raises a Ctrl-C's
    ``KeyboardInterrupt`` in whatever Python code runs when the signal is handled, and one
    raised inside a gc callback is discarded ("Exception ignored in: <function
    _xla_gc_callback>"), as it is inside the weakref callbacks a collection runs: a Ctrl-C
    half a second into ``train.py`` (importing JAX runs many collections) was lost and the
    whole job ran. Such a signal is delivered again a moment later, outside the collection.
    Only in the main thread, and only over Python's own handlers (Python's SIGINT handler,
    the default action of SIGTERM / SIGHUP); one the application or the shell set (``nohup``
    ignores SIGHUP) is left alone; restored on exit."""
    received = _Received()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    ours = [s for s in STOP_SIGNALS
            if signal.getsignal(s) is (signal.default_int_handler if s == signal.SIGINT
                                       else signal.SIG_DFL)]
    if not ours:
        yield received
        return

    main_id = threading.main_thread().ident
    collecting = [False]  # (a collection also runs weakref callbacks, which discard it too)

    def track(phase, info) -> None:
        collecting[0] = phase == "start"

    def again(signum: int) -> None:  # a real signal: it also ends a wait (a sleep, a lock)
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(main_id, signum)
        elif signum == signal.SIGINT:
            _thread.interrupt_main()

    def handler(signum, frame):
        # during a collection (its weakref callbacks: e.g. a WeakKeyDictionary's), or inside a
        # gc callback (JAX's runs at the end too, after ``track`` said the collection is over)
        callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks} - {None}
        f = frame
        while f is not None and not collecting[0]:
            if f.f_code in callbacks:
                break
            f = f.f_back
        if collecting[0] or f is not None:  # (again once the collection is over)
            threading.Timer(0.02, again, (signum,)).start()
            return
        received.signum = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    gc.callbacks.insert(0, track)  # (first: its "start" is seen before the others run)
    for s in ours:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s in ours:
            if signal.getsignal(s) is handler:
                signal.signal(s, signal.default_int_handler if s == signal.SIGINT
                              else signal.SIG_DFL)
        if track in gc.callbacks:
            gc.callbacks.remove(track)


def _flush_stdout() -> str | None:
    """Flush stdout; why it failed, or None. A stdout that cannot be written (`>/dev/full`)
    kept the summary in its buffer, and Python's own flush at exit printed a traceback
    ("Exception ignored", status 120); after a failure the descriptor points at /dev/null."""
    if sys.stdout is None:
        return None
    try:
        sys.stdout.flush()
    except OSError as e:
        _point_at_devnull(sys.stdout)
        return e.strerror or one_line(e)
    return None


def run_command(main: Callable[..., int], *args, **kwargs) -> int:
    """``main(*args, **kwargs)`` under :func:`interrupts_outside_gc_callbacks`: what every
    command's ``__main__`` block runs. Stopped by SIGTERM / SIGHUP, the status is 143 / 129
    (the commands say 130 for any interruption), as the shell reports a process killed by
    it."""
    with interrupts_outside_gc_callbacks() as received:
        try:
            status = main(*args, **kwargs)
            if (why := _flush_stdout()) is not None and received.signum is None:
                print(f"error: cannot write the output (stdout: {why})", file=sys.stderr)
                status = status or 1
        except OSError:  # after SIGHUP the terminal is gone: printing what was kept fails (EIO)
            if received.signum in (None, signal.SIGINT):
                raise
            return 128 + received.signum
    if received.signum is not None and status == 128 + signal.SIGINT:
        return 128 + received.signum
    return status

"""Progress bars that suit where they are written.

A terminal (or a notebook) gets tqdm's live bar. A file or pipe (``infer.py ... 2> log``, a CI
log, ``nohup``) used to get the same bar: a ``\\r``-joined redraw every 0.1 s, all on one line
of the log (an hour's batch job, ~36,000 of them). There the bar is drawn at most every
:data:`LOG_INTERVAL_S` seconds (and at the start and end, and when a caller refreshes it to show
news, such as the style ``evaluate`` fits now), each time on a line of its own.
"""
from __future__ import annotations

import re
import sys
from typing import Any, TextIO

#: Seconds between two bar lines written to a file or pipe
LOG_INTERVAL_S = 30.0

#: tqdm's ``[elapsed<remaining, rate`` (a postfix follows as ``, ...]``)
_TIMES = re.compile(r"\[[^<\]]*<[^,\]]*, [^,\]]*")


#: ANSI control sequences (CSI: ESC [ ... letter), e.g. tqdm's cursor-up for nested bars
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Lines:
    """A text stream for tqdm that writes each redraw as a line. tqdm writes ``"\\r" + bar``
    (padded with spaces over the last one) and, when a bar that stays is closed, the final
    redraw and ``"\\n"``: carriage returns, padding and empty redraws (a cleared bar) go, and so
    does a redraw that differs from the last line only in its times and rate (close's redraw of
    the state just written). ASCII bars: tqdm draws Unicode blocks only for a stream with a
    UTF encoding, which this one does not declare."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._last = ""

    def write(self, s: str) -> int:
        # (and the cursor moves of nested bars, "\x1b[A" before an inner bar's redraw: they
        # were written into the log as they were)
        line = _CURSOR_MOVES.sub("", s.replace("\r", "").replace("\n", "")).rstrip()
        state = _TIMES.sub("[", line)
        if line and state != self._last:
            self.stream.write(line + "\n")
            self._last = state
        return len(s)

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def writes_to_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a stream without ``isatty`` is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # (ValueError: a closed file)
        return False


def _notebook_bar(cls: type) -> bool:
    nb = sys.modules.get("tqdm.notebook")  # (imported by tqdm.auto only inside a notebook)
    return nb is not None and issubclass(cls, nb.tqdm)


def bar(*, file: TextIO | None = None, **kwargs: Any):
    """``tqdm.auto.tqdm(**kwargs)`` writing to ``file`` (default: ``sys.stderr``, looked up at
    the call: pytest's and a caller's redirections count); line by line every
    :data:`LOG_INTERVAL_S` s where that is not a terminal. ``disable=True`` gives tqdm's silent
    bar, so callers keep one code path."""
    from tqdm.auto import tqdm

    stream = sys.stderr if file is None else file
    if kwargs.get("disable") or _notebook_bar(tqdm) or writes_to_terminal(stream):
        return tqdm(file=stream, **kwargs)
    kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), LOG_INTERVAL_S)
    kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 10.0)), LOG_INTERVAL_S)
    # no terminal to measure: tqdm's 10-character bar, and a line as long as its text (a
    # fixed width cut a long postfix, such as a status, short)
    kwargs["dynamic_ncols"] = False
    return tqdm(file=_Lines(stream), **kwargs)

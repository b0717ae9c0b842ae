"""Progress bars: tqdm's live bar on a terminal, lines at an interval in a file or pipe."""
import io
import subprocess
import sys
from pathlib import Path

import numpy as np

from arbitrary_nst import images, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    """tqdm's clock (``timer``), moved by hand."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _run(stream, n=100, step_s=1.0, postfix_every=0, **kw):
    clock = Clock()
    bar = progress.bar(total=n, desc="job", unit="img", file=stream, dynamic_ncols=True, **kw)
    bar._time = clock  # (tqdm reads its clock through this attribute)
    bar.start_t = bar.last_print_t = clock.t
    for i in range(n):
        clock.t += step_s
        bar.update(1)
        if postfix_every and i % postfix_every == 0:
            bar.set_postfix(loss=i, refresh=False)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_one_line_per_interval_and_the_final_state(monkeypatch):
    """100 updates a second apart with a 30 s interval: the start, about every 30th update,
    and the end, each on its own line without carriage returns (the bar wrote 100 redraws
    joined by "\\r" on one line before)."""
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 30.0)
    out = _run(io.StringIO(), postfix_every=10)
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0].startswith("job:   0%") and "0/100" in lines[0], lines
    assert "100/100" in lines[-1] and "loss=90" in lines[-1], lines
    assert 4 <= len(lines) <= 6, lines  # (0, ~30, ~60, ~90, 100)
    assert len(set(lines)) == len(lines)  # (close's redraw of the same state is dropped)


def test_a_terminal_gets_tqdms_live_bar():
    out = _run(Terminal(), n=5, step_s=1.0)
    assert out.count("\r") >= 5 and "5/5" in out.split("\r")[-1]


def test_a_disabled_bar_writes_nothing():
    for stream in (io.StringIO(), Terminal()):
        assert _run(stream, n=5, disable=True) == ""


def test_an_explicit_refresh_is_written_at_once(monkeypatch):
    """A caller's news (evaluate's "fitting <style>") is not held back by the interval."""
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 1e6)
    out = io.StringIO()
    bar = progress.bar(total=2, desc="model_fit", file=out)
    bar.set_postfix_str("fitting a (style 1/2)")
    bar.update(2)
    bar.set_postfix_str("")
    bar.close()
    lines = out.getvalue().splitlines()
    assert sum("fitting a (style 1/2)" in line for line in lines) == 1, lines
    assert lines[-1].startswith("model_fit: 100%") and "fitting" not in lines[-1], lines
    assert sum("2/2" in line for line in lines) == 1, lines  # (not close's redraw again)


def test_nested_bars_in_a_log_write_no_cursor_moves():
    """An inner bar (Gatys' per-image bar under the batch's, ``--method gatys``) made tqdm
    write a cursor-up escape (ESC [ A) into the log before each of its lines."""
    out = io.StringIO()
    outer = progress.bar(total=2, desc="batch", file=out)
    for _ in range(2):
        inner = progress.bar(total=3, desc="gatys", file=out, leave=False)
        inner.update(3)
        inner.close()
        outer.update(1)
    outer.close()
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text, repr(text)
    assert any(line.startswith("gatys:") for line in text.splitlines()), text
    assert text.splitlines()[-1].startswith("batch: 100%"), text


def test_streams_without_isatty_or_closed_are_not_terminals():
    f = io.StringIO()
    f.close()
    assert not progress.writes_to_terminal(f)
    assert not progress.writes_to_terminal(object())
    assert progress.writes_to_terminal(Terminal())


def test_a_batch_job_with_stderr_to_a_file_logs_lines(tmp_path):
    """As a user runs it: ``infer.py stylize`` over a folder, stderr redirected to a file."""
    contents = tmp_path / "photos"
    contents.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        images.save_image(contents / f"p{i}.png", rng.random((40, 48, 3)).astype(np.float32))
    style = tmp_path / "style.png"
    images.save_image(style, rng.random((48, 48, 3)).astype(np.float32))
    log = tmp_path / "log.txt"
    root = Path(__file__).resolve().parents[1]
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, str(root / "infer.py"), "stylize", "--content",
                            str(contents), "--style", str(style), "--out-dir",
                            str(tmp_path / "out"), "--max-size", "48", "--batch-size", "2"],
                           stdout=subprocess.PIPE, stderr=f, text=True, cwd=tmp_path)
    assert r.returncode == 0, log.read_text()
    err = log.read_bytes().decode()  # (read_text would turn "\r" into "\n")
    assert "\r" not in err, repr(err)
    assert "stylize: 100%" in err and "3/3" in err.splitlines()[-1], err

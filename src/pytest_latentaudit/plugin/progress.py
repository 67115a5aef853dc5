"""The live status of a running latent test on a terminal.

One status, drawn at the end of the terminal's current line (after pytest's ``test_x.py ..``
or, with ``-v``, after the node id) and erased with backspaces before pytest writes the
outcome, so pytest's own line and its width bookkeeping are left as they were:

    test_faces.py .. [test_pose: audit bab, 12/16 seeds decided, 3.1/60 s]

Pure Python, no torch: the engines report through a plain callback
(``Ladder(progress=fn)``, ``audit(progress=fn)``), the test runner adds its stage, and this
module decides when to redraw (at most ``MAX_RATE`` times a second, the first time only once
a test has run ``DELAY_S``, so quick tests do not flicker).

When it shows (``--latent-progress`` / ini ``latent_progress``): ``auto`` (default) on a
terminal (a tty), not under ``-q``, never in an xdist worker; ``on`` also when the output is
not a tty or under ``-q`` (still never in an xdist worker: a worker has no terminal); ``off``
never.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

PROGRESS_MODES = ("auto", "on", "off")
#: redraws per second at most
MAX_RATE = 10.0
#: a test shows its status only once it has run this long
DELAY_S = 0.3
#: narrower than this, there is no room for a useful status
MIN_ROOM = 16


def case_verbosity(config) -> int:
    """The verbosity pytest writes test lines with (``-v``: > 0, one line per test with its word)."""
    try:  # pytest >= 8: ``verbosity_test_cases`` may differ from -v/-q
        return int(config.get_verbosity(config.VERBOSITY_TEST_CASES))
    except AttributeError:  # pytest 7
        return int(getattr(config.option, "verbose", 0) or 0)


def progress_enabled(config, mode: str) -> bool:
    """Whether this process draws progress lines for ``mode`` (``auto``/``on``/``off``)."""
    if mode == "off" or hasattr(config, "workerinput"):  # an xdist worker has no terminal
        return False
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or getattr(getattr(tr, "_tw", None), "_file", None) is None:
        return False
    if mode == "on":
        return True
    return bool(tr.isatty) and int(getattr(config.option, "verbose", 0) or 0) >= 0  # not -q


def status_text(name: Optional[str], stage: str, rung: str, decided: Optional[int], total: Optional[int],
                elapsed: float, budget: Optional[float], what: str = "decided") -> str:
    """``[name: stage rung, d/n seeds decided, 3.1/60 s]`` (no name: ``-v`` shows the node id)."""
    parts = [f"{stage} {rung}" if rung else stage]
    if total:
        parts.append(f"{decided}/{total} seeds {what}")
    parts.append(f"{elapsed:.1f}/{budget:g} s" if budget is not None else f"{elapsed:.1f} s")
    return "[" + (f"{name}: " if name else "") + ", ".join(parts) + "]"


class StatusLine:
    """Draws and erases one status text after the cursor of a terminal ``file``.

    ``room()``: columns free on the current line (the text is cut to fit, so it never wraps);
    ``around``: a context manager factory every write runs inside (pytest's capture manager
    suspends output capturing there)."""

    def __init__(self, file, room: Callable[[], int], around=None, clock=time.monotonic,
                 max_rate: float = MAX_RATE, delay: float = DELAY_S):
        self.file, self.room, self.around, self.clock = file, room, around, clock
        self.min_gap = 1.0 / max_rate
        self.delay = delay
        self.shown = 0  # characters of the status now on screen, before the cursor
        self.last_draw: Optional[float] = None
        self.started = clock()
        self.draws = 0

    def due(self) -> bool:
        now = self.clock()
        if now - self.started < self.delay:
            return False
        return self.last_draw is None or now - self.last_draw >= self.min_gap

    def draw(self, text: str) -> None:
        """Replace what is shown with ``text`` (cut to the room left on the line)."""
        room = self.room() - 1  # the terminal writer does not count what this line drew
        if room < MIN_ROOM:
            text = ""
        elif len(text) + 1 > room:
            text = text[:room - 4] + "..."
        text = (" " + text) if text else ""
        old = self.shown
        out = "\b" * old + text.ljust(old) + "\b" * max(0, old - len(text))
        self._write(out)
        self.shown = len(text)
        self.last_draw = self.clock()
        self.draws += 1

    def clear(self) -> None:
        if self.shown:
            n = self.shown
            self._write("\b" * n + " " * n + "\b" * n)
            self.shown = 0

    def _write(self, s: str) -> None:
        if not s:
            return
        if self.around is not None:
            with self.around():
                self.file.write(s)
                self.file.flush()
        else:
            self.file.write(s)
            self.file.flush()


class TestProgress:
    """The status of one latent test: ``stage(...)`` from the runner, ``rung(...)`` from the
    proof ladder's callback; both redraw when due. Errors while drawing switch it off, never
    fail the test."""

    __test__ = False

    def __init__(self, line: StatusLine, name: Optional[str], budget: Optional[float], clock=time.perf_counter,
                 t0: Optional[float] = None):
        self.line, self.name, self.budget, self.clock = line, name, budget, clock
        self.t0 = clock() if t0 is None else t0
        self._stage, self._rung = "setup", ""
        self._decided: Optional[int] = None
        self._total: Optional[int] = None
        self._what = "decided"
        self.broken = False

    def text(self) -> str:
        return status_text(self.name, self._stage, self._rung, self._decided, self._total,
                           self.clock() - self.t0, self.budget, self._what)

    def stage(self, stage: str, total: Optional[int] = None, decided: Optional[int] = None,
              what: str = "decided") -> None:
        self._stage, self._rung = stage, ""
        self._total, self._decided, self._what = total, decided, what
        self._maybe_draw()

    def rung(self, rung: str, decided: int, total: int) -> None:
        """The ladder's callback: ``fn(rung, decided, total)``."""
        rung = "" if rung in ("start", "done") else rung
        self._rung, self._decided, self._total, self._what = rung, decided, total, "decided"
        self._maybe_draw()

    __call__ = rung

    def _maybe_draw(self) -> None:
        if self.broken or not self.line.due():
            return
        try:
            self.line.draw(self.text())
        except Exception:  # noqa: BLE001 - a status line must never fail a test
            self.broken = True

    def close(self) -> None:
        try:
            self.line.clear()
        except Exception:  # noqa: BLE001
            self.broken = True


def for_test(config, mode: str, nodeid: str, budget: Optional[float],
             t0: Optional[float] = None) -> Optional[TestProgress]:
    """A ``TestProgress`` drawing on pytest's terminal, or None when progress is off here."""
    if not progress_enabled(config, mode):
        return None
    tw = config.pluginmanager.get_plugin("terminalreporter")._tw
    capman = config.pluginmanager.get_plugin("capturemanager")
    around = capman.global_and_fixture_disabled if capman is not None else None
    line = StatusLine(tw._file, room=lambda: tw.fullwidth - tw.width_of_current_line, around=around,
                      clock=time.perf_counter)
    name = None if case_verbosity(config) > 0 else nodeid.split("::")[-1]  # -v: the line shows the node id
    return TestProgress(line, name, budget, t0=t0)

"""Live progress of running latent tests (``--latent-progress``), the verdict beside the outcome
under ``-v``, and the summary table's outcome column.

One run uses a real pseudo-terminal from the standard library (``pty``), so ``auto`` is tested
as a user meets it (pytest sees a tty) without adding pexpect to the dev extras (pexpect's
``spawn_pytest`` does the same on top of ``pty``); the cheaper in-process runs then check the
rules (``-q``, ``off``, ``on`` without a terminal) with the terminal reporter told it has a
tty, and the xdist run forces ``on`` to show that workers never draw even when asked to.
"""
from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import LEAN_ADDOPTS, write_project

from pytest_latentaudit.plugin import progress as P

# ------------------------------------------------------------------ the status line, unit level


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def screen(raw: str) -> list:
    """What a terminal shows for ``raw``: ``\\b`` moves left, ``\\r`` to column 0, other
    characters overwrite; one string per line, trailing blanks dropped."""
    lines = []
    for text in raw.replace("\r\n", "\n").split("\n"):
        buf, col = [], 0
        for ch in text:
            if ch == "\b":
                col = max(0, col - 1)
            elif ch == "\r":
                col = 0
            else:
                if col == len(buf):
                    buf.append(ch)
                else:
                    buf[col] = ch
                col += 1
        lines.append("".join(buf).rstrip())
    return lines


def make_line(width=80, prefix="test_x.py ..", **kw):
    f = io.StringIO()
    f.write(prefix)
    clock = FakeClock()
    line = P.StatusLine(f, room=lambda: width - len(prefix), clock=clock, **kw)
    return f, clock, line


def test_status_line_draws_after_the_delay_at_most_max_rate_and_erases_cleanly():
    f, clock, line = make_line(delay=0.3, max_rate=10)
    prog = P.TestProgress(line, "test_pose", 60.0, clock=clock, t0=clock())
    prog.stage("audit")
    assert line.draws == 0  # before the delay: quick tests never flicker
    clock.t += 0.31
    prog("ibp", 0, 16)
    assert line.draws == 1
    assert screen(f.getvalue()) == ["test_x.py .. [test_pose: audit ibp, 0/16 seeds decided, 0.3/60 s]"]
    for _ in range(50):  # 50 events within 0.05 s: no redraw
        clock.t += 0.001
        prog("linear", 3, 16)
    assert line.draws == 1
    clock.t += 0.06
    prog("bab", 12, 16)
    assert line.draws == 2
    assert screen(f.getvalue()) == ["test_x.py .. [test_pose: audit bab, 12/16 seeds decided, 0.4/60 s]"]
    prog.stage("certified radius", total=16, decided=4, what="searched")
    clock.t += 0.15
    prog.stage("certified radius", total=16, decided=8, what="searched")
    assert screen(f.getvalue()) == ["test_x.py .. [test_pose: certified radius, 8/16 seeds searched, 0.6/60 s]"]
    prog.close()
    assert screen(f.getvalue()) == ["test_x.py .."]  # pytest's line as it was
    f.write(".")  # pytest goes on where it left off
    assert screen(f.getvalue()) == ["test_x.py ..."]


def test_status_line_fits_the_room_left_and_never_wraps():
    f, clock, line = make_line(width=40, delay=0)
    line.draw("[a very long status text that cannot fit in what is left of the line]")
    (shown,) = screen(f.getvalue())
    assert len(shown) <= 39 and shown.startswith("test_x.py .. [a very") and shown.endswith("...")
    line.clear()
    f2, _, narrow = make_line(width=20, delay=0)  # no useful room: nothing drawn
    narrow.draw("[status]")
    assert f2.getvalue() == "test_x.py .." and narrow.shown == 0


def test_a_broken_terminal_switches_progress_off_without_failing():
    class Broken(io.StringIO):
        def write(self, s):
            raise OSError("terminal gone")

    line = P.StatusLine(Broken(), room=lambda: 80, delay=0)
    prog = P.TestProgress(line, "t", None)
    prog("ibp", 0, 2)
    prog.close()
    assert prog.broken


def test_the_ladder_reports_rungs_and_decided_seeds_without_changing_the_result():
    torch = pytest.importorskip("torch")
    from pytest_latentaudit import Accuracy, Direction, audit

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    z = torch.randn(12, 3)
    labels = head(z).argmax(1)
    events = []
    kw = dict(direction=Direction.axis(0), eps=0.3, spec=Accuracy(0.5), engine="linear", device="cpu", budget_s=20,
              seed=3)
    with_cb = audit(head, (z, labels), progress=lambda *a: events.append(a), **kw)
    without = audit(head, (z, labels), **kw)
    assert (with_cb.status, with_cb.verdict) == (without.status, without.verdict)
    rungs = [r for r, _, _ in events]
    assert rungs[0] == "start" and "ibp" in rungs and rungs[-1] == "done", rungs
    assert all(total == 12 for _, _, total in events)
    decided = [d for _, d, _ in events]
    assert decided == sorted(decided) and decided[0] == 0
    assert decided[-1] == sum(s != "unknown" for s in with_cb.status) > 0


# ------------------------------------------------------------------ real runs

PROJECT = {"test_p.py": '''
    import time
    import pytest
    from torch import nn
    from pytest_latentaudit import Accuracy


    class Slow(nn.Module):
        """The head, 0.1 s per forward pass: the audit runs long enough to show its status."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            time.sleep(0.1)
            return self.inner(z)


    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), radius=False, validity=False)
    def test_slow_proved(latent_audit, head, seeds):
        latent_audit(Slow(head), seeds)


    @pytest.mark.xfail(strict=True, reason="the nominal head is not robust at eps=2.5")
    @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(), radius=False, validity=False)
    def test_expected_violation(latent_audit, head, seeds):
        latent_audit(head, seeds)
'''}

STATUS = re.compile(r"\[(?:test_slow_proved: )?audit(?: \w+)?, \d/4 seeds decided, \d+\.\d/60 s\]")
BADGES = {"test_slow_proved": "PASSED [proved: 4/4 verified]",
          "test_expected_violation": "XFAIL [violated: 0/4 verified, 4 falsified]"}


def run_in_pty(cwd, *args, timeout=240):
    """``python -m pytest *args`` with its terminal a pseudo-terminal: ``(exit code, raw output)``."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="120", LINES="40", PYTEST_ADDOPTS=LEAN_ADDOPTS)
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", *args],
                            cwd=str(cwd), stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            pytest.fail("pytest in a pty ran past the timeout")
        return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    finally:
        os.close(master)


def summary_rows(lines):
    start = next(i for i, line in enumerate(lines) if "latent audit summary" in line)
    return {m.group(1): m.group(2) for line in lines[start:]
            if (m := re.match(r"^test_p\.py::(\w+)\s+(\w+)\s+pose\s", line))}


def test_progress_on_a_real_terminal_and_never_in_xdist_workers(pytester):
    write_project(pytester.path, PROJECT)

    # a pseudo-terminal, -v: the status line shows while the slow test runs and is erased
    # before the outcome, which carries the verdict and counts; the table has outcomes, node ids
    code, raw = run_in_pty(pytester.path, "-v")
    assert code == 0, raw
    assert STATUS.search(raw), raw
    shown = screen(raw)
    for name, badge in BADGES.items():
        row = next(line for line in shown if line.startswith(f"test_p.py::{name} "))
        assert re.fullmatch(rf"test_p\.py::{name} +{re.escape(badge)}.*\[ *\d+%\]", row), row
        assert "seeds decided" not in row
    assert summary_rows(shown) == {"test_slow_proved": "passed", "test_expected_violation": "xfailed"}
    assert "1 passed, 1 xfailed" in raw

    # xdist, progress forced on: workers have no terminal, so nothing is drawn; -v shows verdicts
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "2", "-v", "--latent-progress", "on")
    assert result.ret == 0
    result.assert_outcomes(passed=1, xfailed=1)
    out = result.stdout.str()
    assert "seeds decided" not in out and "\b" not in out, out
    for name, badge in BADGES.items():
        result.stdout.fnmatch_lines([f"[[]gw?[]] [[]*%[]] {badge.replace('[', '[[]')} test_p.py::{name}*"])
    assert summary_rows(result.outlines) == {"test_slow_proved": "passed", "test_expected_violation": "xfailed"}


class Yes:
    """Like pytest's ``isatty``: true as a bool and when called."""

    def __bool__(self):
        return True

    def __call__(self):
        return True


class FakeTty:
    """Tells the in-process run's terminal reporter that its output is a terminal (the real
    terminal is the pty test above; these runs check the rules on top of it, cheaply)."""

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config):
        config.pluginmanager.get_plugin("terminalreporter").isatty = Yes()


def test_progress_auto_q_on_off_and_bad_values(pytester):
    write_project(pytester.path, PROJECT)

    def run(*args, tty=True):
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "slow", *args,
                                              plugins=[FakeTty()] if tty else [])
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=1, deselected=1)
        return result.stdout.str()

    line = re.compile(r"test_p\.py +\[test_slow_proved: audit(?: \w+)?, \d/4 seeds decided, \d+\.\d/60 s\]")
    assert line.search(run()), "auto on a terminal: shown (named: the line shows only the file)"
    for args in (["-q"], ["--latent-progress", "off"]):
        out = run(*args)
        assert "seeds decided" not in out and "\b" not in out, (args, out)
    assert "seeds decided" not in run(tty=False), "auto without a terminal: nothing"
    assert re.search(r"\[test_slow_proved: audit(?: \w+)?, \d/4 seeds decided", run("-q", "--latent-progress", "on",
                                                                            tty=False))
    bad = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-progress", "sometimes")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown progress mode 'sometimes'; choose auto, on or off" in bad.stderr.str()

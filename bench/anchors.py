"""Where the comparison systems ("anchors") live and how the bench scripts start them.

The anchors are never dependencies of the project and never part of this repository:
they are installed separately (see ANCHORS.md in the team's shared notes) under
``$LATENTAUDIT_ANCHORS`` (default ``/work/anchors``):

    venv/                         python with torch 2.13 CPU and auto_LiRPA 0.7.1 (editable)
    abcrown/complete_verifier/    alpha-beta-CROWN (its auto_LiRPA submodule removed)
    stubs/                        empty onnx2pytorch / torchvision modules

A bench script runs an anchor by re-running *itself* under the anchor venv in a worker
mode (``--worker ...``), with this project's ``src`` (the copy the parent process
imported) and ``bench/`` on ``PYTHONPATH``; inputs and outputs travel as ``torch.save``
files in a temporary directory. When the anchors are absent, the scripts say so and
skip those columns.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
ROOT = Path(os.environ.get("LATENTAUDIT_ANCHORS", "/work/anchors"))


def anchor_python() -> Optional[Path]:
    p = ROOT / "venv" / "bin" / "python"
    return p if p.exists() else None


def abcrown_dir() -> Optional[Path]:
    p = ROOT / "abcrown" / "complete_verifier"
    return p if (p / "api.py").exists() else None


def missing_message(what: str) -> str:
    return (f"[skip] {what}: no anchor install under {ROOT} (set LATENTAUDIT_ANCHORS; "
            f"see ANCHORS.md in the shared notes)")


def project_src() -> str:
    """The ``src`` directory of the pytest_latentaudit this process imported (so a worker
    sees the very same project code, e.g. a checkout other than the installed one)."""
    import pytest_latentaudit

    return str(Path(pytest_latentaudit.__file__).resolve().parent.parent)


def run_worker(script: Path, args: List[str], *, abcrown: bool = False, log: Optional[Path] = None,
               timeout: Optional[float] = None) -> int:
    """Run ``script args`` under the anchor venv; returns the exit code (prints the log tail
    on failure). One thread: every timing in these benchmarks is single-threaded."""
    py = anchor_python()
    if py is None:
        raise FileNotFoundError(missing_message("anchor venv"))
    paths = [project_src(), str(HERE)]
    cwd = None
    if abcrown:
        ab = abcrown_dir()
        if ab is None:
            raise FileNotFoundError(missing_message("alpha-beta-CROWN"))
        paths = [str(ab), str(ROOT / "stubs")] + paths
        cwd = str(ab)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    with open(log or os.devnull, "w") as fh:
        try:
            rc = subprocess.call([str(py), str(script), *args], env=env, cwd=cwd, stdout=fh,
                                 stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = -9
    if rc != 0:
        print(f"[anchor] worker {script.name} {' '.join(args[:2])} failed (rc={rc}) after "
              f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
        if log is not None and log.exists():
            print("".join(log.read_text(errors="replace").splitlines(True)[-25:]), file=sys.stderr)
    return rc

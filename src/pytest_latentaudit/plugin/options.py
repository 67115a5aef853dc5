"""Settings: CLI flags and ini keys, normalised once in ``pytest_configure``.

Precedence: marker kwargs > CLI > ini > default. No torch here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .progress import PROGRESS_MODES
from ..core.vocab import (DEVICES, ENGINES, ESTIMATED_ACTIONS, LIRPA_METHODS, LIRPA_PREFIX, PRECISIONS, UNPROVEN_ACTIONS,
                          parse_budget)

ENGINE_CHOICES = ENGINES

# name: (ini help, default)
OPTIONS = {
    "engine": (f"proof engine: {', '.join(ENGINES)} or {LIRPA_PREFIX}:<method>", "auto"),
    "device": ("device for bounds and attacks: auto (CUDA when present), cpu or cuda", "auto"),
    "budget": ("seconds per latent test, shared by its audit, radius sweep, certified-radius search and validity "
               "checks (the whole test call ends within about 10% of it; what the budget cut short is recorded)",
               "60"),
    "spec_sheet": ("write the spec sheet JSON to this path", ""),
    "unproven": (f"what an unproven verdict does: {', '.join(UNPROVEN_ACTIONS)}", "fail"),
    "estimated": ("what an estimated verdict (sampling evidence only, with a confidence interval) does: "
                  f"{', '.join(ESTIMATED_ACTIONS)}", "fail"),
    "seed": ("random seed for attacks and sampling (per test: derived from this and the node id)", "0"),
    "artifacts": ("directory for counterexample images (default: next to the spec sheet)", ""),
    "precision": ("bound arithmetic: float32 (with a safety margin) or float64", "float32"),
    "report": ("write a static HTML report of the spec sheet to this path", ""),
    "coverage_fail_under": ("fail the run when less than this percentage of the latent directions is proved", ""),
    "compare": ("compare the run with this earlier spec sheet and fail on regressions", ""),
    "progress": ("live status line of each running latent test (stage, proof rung, seeds decided, elapsed / "
                 "budget): auto (on a terminal, not with -q, never in xdist workers), on (also without a "
                 "terminal or with -q), off", "auto"),
    "threads": ("torch threads while a latent test runs (restored after it): auto (in a pytest-xdist worker, "
                "its share of the cores when torch would take more and OMP_NUM_THREADS is not set; else "
                "unchanged), keep (never changed), or a number", "auto"),
}


#: the keyword arguments of ``@pytest.mark.latent`` (and of ``latent_audit(model, seeds, **overrides)``)
MARKER_KEYWORDS = ("direction", "eps", "spec", "engine", "budget", "device", "unproven", "estimated", "precision",
                   "attack", "sweep", "radius", "validity")


class UsageError(ValueError):
    pass


def check_device_available(device: str) -> None:
    """A usage error at start for ``cuda`` / ``cuda:N`` on a machine without that device
    (imports torch only when CUDA was asked for)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--latent-device {device}: CUDA is not available on this machine "
                         f"(use --latent-device auto or cpu)")
    index = device.partition(":")[2]
    if index:
        if not index.isdigit():
            raise UsageError(f"--latent-device {device}: expected cuda or cuda:<index>")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise UsageError(f"--latent-device {device}: this machine has {count} CUDA device(s) "
                             f"(cuda:0 .. cuda:{count - 1})")


def valid_engine(value: str, extra=()) -> str:
    """``extra``: engine names registered through the ``pytest_latentaudit_engines`` hook."""
    v = str(value).strip().lower()
    if v in ENGINE_CHOICES or str(value).strip() in extra:
        return str(value).strip() if str(value).strip() in extra else v
    if v.startswith(LIRPA_PREFIX):
        method = v.partition(":")[2] or "crown"
        if method not in LIRPA_METHODS:
            raise UsageError(f"unknown auto_LiRPA method {method!r}; choose one of {', '.join(LIRPA_METHODS)}")
        return f"{LIRPA_PREFIX}:{method}"
    more = f", {', '.join(sorted(extra))}" if extra else ""
    raise UsageError(f"unknown engine {value!r}; choose one of {', '.join(ENGINE_CHOICES)}{more} "
                     f"or auto_lirpa:<{'|'.join(LIRPA_METHODS)}>")


def valid_device(value: str) -> str:
    v = str(value).strip().lower()
    if v not in DEVICES and not v.startswith("cuda:"):
        raise UsageError(f"unknown device {value!r}; choose auto, cpu or cuda")
    return v


def valid_budget(value) -> Optional[float]:
    try:
        return parse_budget(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def valid_unproven(value: str) -> str:
    v = str(value).strip().lower()
    if v not in UNPROVEN_ACTIONS:
        raise UsageError(f"unknown action for unproven verdicts {value!r}; choose fail, xfail or skip")
    return v


def valid_estimated(value: str) -> str:
    v = str(value).strip().lower()
    if v not in ESTIMATED_ACTIONS:
        raise UsageError(f"unknown action for estimated verdicts {value!r}; choose pass, fail, xfail or skip")
    return v


def valid_seed(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"seed must be an integer, got {value!r}") from None


def valid_precision(value) -> str:
    v = str(value).strip().lower()
    if v not in PRECISIONS:
        raise UsageError(f"precision must be float32 or float64, got {value!r}")
    return v


def valid_progress(value) -> str:
    v = str(value).strip().lower()
    if v not in PROGRESS_MODES:
        raise UsageError(f"unknown progress mode {value!r}; choose auto, on or off")
    return v


def valid_percent(value) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"coverage threshold must be a percentage, got {value!r}") from None
    if math.isnan(p) or not 0 <= p <= 100:
        raise UsageError(f"coverage threshold must be between 0 and 100, got {value!r}")
    return p


THREAD_MODES = ("auto", "keep")


def valid_threads(value):
    """``auto``, ``keep`` or a positive thread count (an int)."""
    v = str(value).strip().lower()
    if v in THREAD_MODES:
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"threads must be auto, keep or a positive number, got {value!r}")
    return n


VALIDATORS = {"engine": valid_engine, "device": valid_device, "budget": valid_budget,
              "unproven": valid_unproven, "estimated": valid_estimated, "seed": valid_seed, "precision": valid_precision,
              "coverage_fail_under": valid_percent, "progress": valid_progress, "threads": valid_threads}


@dataclass(frozen=True)
class Settings:
    engine: str = "auto"
    device: str = "auto"
    budget: Optional[float] = 60.0
    spec_sheet: Optional[Path] = None
    unproven: str = "fail"
    estimated: str = "fail"
    seed: int = 0
    artifacts: Optional[Path] = None
    precision: str = "float32"
    report: Optional[Path] = None
    coverage_fail_under: Optional[float] = None
    compare: Optional[Path] = None
    progress: str = "auto"
    threads: Union[str, int] = "auto"
    junit_properties: bool = False
    latent_space_fixture: str = "latent_space"

    def header(self) -> str:
        budget = "none" if self.budget is None else f"{self.budget:g}s"
        parts = [f"engine={self.engine}", f"device={self.device}", f"budget={budget}",
                 f"unproven={self.unproven}", f"estimated={self.estimated}", f"seed={self.seed}", f"precision={self.precision}"]
        if self.threads != "auto":
            parts.append(f"threads={self.threads}")
        if self.spec_sheet:
            parts.append(f"spec-sheet={self.spec_sheet}")
        return "latentaudit: " + " ".join(parts)

    def artifact_dir(self) -> Optional[Path]:
        if self.artifacts:
            return self.artifacts
        if self.spec_sheet:
            return self.spec_sheet.parent / (self.spec_sheet.stem + "-counterexamples")
        return None

    def override(self, marker_kwargs: Dict[str, Any], extra_engines=()) -> "Settings":
        """Apply a marker's engine/budget/device/unproven/estimated/precision keyword arguments."""
        changes = {}
        for key in ("engine", "device", "budget", "unproven", "estimated", "precision"):
            if key in marker_kwargs and marker_kwargs[key] is not None:
                val = marker_kwargs[key]
                changes[key] = valid_engine(val, extra_engines) if key == "engine" else VALIDATORS[key](val)
        return replace(self, **changes) if changes else self


PATH_OPTIONS = ("spec_sheet", "artifacts", "report", "compare")


def from_config(config, extra_engines=()) -> Settings:
    """Read flags and ini keys; raise UsageError with a clear message on bad values.

    Paths: a command-line path is relative to the invocation directory (as with
    ``--junitxml``); an ini path is relative to the rootdir (where the ini file lives), so
    ``latent_spec_sheet = out/sheet.json`` means the same file wherever pytest is started."""
    sources = {}

    def get(name):
        cli = config.getoption(f"latent_{name}", None)
        if cli not in (None, ""):
            sources[name] = Path(config.invocation_params.dir)
            return cli
        ini = config.getini(f"latent_{name}")
        if ini not in (None, ""):
            sources[name] = Path(str(config.rootpath))
            return ini
        return OPTIONS[name][1]

    values = {}
    for name in OPTIONS:
        raw = get(name)
        if name == "engine":
            values[name] = valid_engine(raw, extra_engines)
        elif name in VALIDATORS:
            values[name] = VALIDATORS[name](raw)
        else:
            values[name] = Path(raw) if raw else None
    for key in PATH_OPTIONS:
        if values[key] is not None and not values[key].is_absolute():
            values[key] = sources[key] / values[key]
    return Settings(junit_properties=bool(config.getoption("latent_junit_properties", False)),
                    latent_space_fixture=config.getini("latent_space_fixture") or "latent_space", **values)

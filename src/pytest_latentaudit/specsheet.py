"""The spec sheet: the verified operating range of a model, per semantic direction.

Plain JSON, written atomically (temp file + rename) so an interrupted run leaves the old
sheet intact. No torch at import: the CLI and the xdist controller use it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from .images import write_atomic

SCHEMA_VERSION = 1


def machine_info() -> Dict[str, str]:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")  # only report torch if a test already imported it
    if torch is not None:
        info["torch"] = torch.__version__
        info["cuda"] = bool(torch.cuda.is_available())
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def commit_info(cwd: Optional[Path] = None) -> Dict[str, object]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        return {"id": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()), "branch": branch.stdout.strip()}
    except (OSError, subprocess.SubprocessError):
        return {}


class SpecSheet:
    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def build(cls, records: List[dict], *, tool_version: str, rootdir: Optional[Path] = None,
              settings: Optional[dict] = None) -> "SpecSheet":
        records = sorted(records, key=lambda r: r["nodeid"])
        models = sorted({r["model_fingerprint"] for r in records if r.get("model_fingerprint")})
        data = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "pytest-latentaudit", "version": tool_version},
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "commit": commit_info(rootdir),
            "settings": settings or {},
            "models": models,
            "summary": summarize(records),
            "tests": records,
        }
        from .coverage import coverage_summary
        from .deploy import directions_section

        declared = sorted({d for r in records for d in r.get("declared_directions") or []})
        data["directions"] = directions_section(records, declared=declared)
        data["coverage"] = coverage_summary(data)
        return cls(data)

    def in_spec(self, z, directions=None, **kw):
        """Deployment guard: which latent codes ``z`` lie in the verified operating range
        (``pytest_latentaudit.deploy.in_spec``): ``{direction: bool [N], ..., "all": bool [N]}``."""
        from .deploy import in_spec

        return in_spec(self.data, z, directions, **kw)

    @property
    def tests(self) -> List[dict]:
        return self.data.get("tests", [])

    def save(self, path) -> Path:
        path = Path(path)
        text = json.dumps(_finite(self.data), indent=2, sort_keys=False, allow_nan=False)
        write_atomic(path, (text + "\n").encode())
        return path

    @classmethod
    def load(cls, path) -> "SpecSheet":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or "schema_version" not in data or "tests" not in data:
            raise ValueError(f"{path} is not a latentaudit spec sheet")
        if data["schema_version"] > SCHEMA_VERSION:
            raise ValueError(f"{path} has schema version {data['schema_version']}; this tool reads up to "
                             f"{SCHEMA_VERSION}: upgrade pytest-latentaudit")
        return cls(data)

    def directions(self) -> Dict[str, dict]:
        """Per direction: the largest eps with a proved test, and the verdicts seen."""
        out: Dict[str, dict] = {}
        for t in self.tests:
            d = out.setdefault(t["direction"], {"proved_eps": None, "tests": 0, "verdicts": {}})
            d["tests"] += 1
            d["verdicts"][t["verdict"]] = d["verdicts"].get(t["verdict"], 0) + 1
            if t["verdict"] == "proved" and (d["proved_eps"] is None or t["eps"] > d["proved_eps"]):
                d["proved_eps"] = t["eps"]
        return out


def _finite(obj):
    """Strict JSON: non-finite floats (an infinite bound, say) become null."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def summarize(records: List[dict]) -> dict:
    verdicts: Dict[str, int] = {}
    for r in records:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    return {"tests": len(records), "verdicts": verdicts,
            "seeds": {k: sum(r["counts"][k] for r in records) for k in ("verified", "falsified", "unknown")}}

"""The session object kept on ``config``: runs audits for the fixture, turns results into
records, collects records from reports (so xdist workers need no extra channel) and
writes the spec sheet at the end."""
from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .options import Settings
from .specsheet import SpecSheet

MAX_COUNTEREXAMPLES = 20


def derive_seed(global_seed: int, nodeid: str) -> int:
    """Per-test seed: stable across runs and workers, different per test."""
    return (int(global_seed) * 1_000_003 + zlib.crc32(nodeid.encode())) & 0x7FFF_FFFF


def model_fingerprint(model) -> Optional[str]:
    """sha256 over parameter names, shapes and bytes (None for plain callables)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else
                 t.detach().float().cpu().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _segment_summary(result) -> Optional[dict]:
    """Quantitative certification from the exact engine: fraction of each segment that holds."""
    fr = [f for f in (result.segment_fraction or []) if f is not None]
    if not fr:
        return None
    return {"seeds": len(fr), "mean_fraction": sum(fr) / len(fr), "min_fraction": min(fr),
            "exact": True}


def _estimate_json(est: Optional[dict]) -> Optional[dict]:
    if not est:
        return None
    keys = ("verdict", "fraction", "lower", "upper", "confidence", "samples", "samples_per_seed",
            "seed_lower", "violation_mass")
    return {k: est[k] for k in keys if k in est}


def evidence(result) -> str:
    """How strong the test's evidence is: exact (every seed decided by exact segments),
    proved, violated, or unproven."""
    if result.verdict == "proved" and result.segment_fraction is not None and result.counts["unknown"] == 0:
        return "exact"
    return result.verdict


def radius_summary(radii: List[float], eps_max: float, bins: int = 10) -> dict:
    srt = sorted(radii)
    n = len(srt)

    def q(p):
        return srt[min(n - 1, int(round(p * (n - 1))))] if n else 0.0

    edges = [eps_max * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for r in srt:
        counts[min(bins - 1, int(r / eps_max * bins)) if eps_max > 0 else 0] += 1
    return {"eps_max": eps_max, "mean": sum(srt) / n if n else 0.0,
            "quantiles": {"min": q(0), "p10": q(0.1), "p25": q(0.25), "median": q(0.5), "p75": q(0.75),
                          "p90": q(0.9), "max": q(1.0)},
            "histogram": {"edges": edges, "counts": counts}}


def _params(module):
    """Parameters of a decoder if it is a module (to decode on its device)."""
    return iter(module.parameters()) if hasattr(module, "parameters") else iter(())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120]


def _deployment_fields(seeds, labels, direction, latent_space, eps) -> dict:
    """AuditAI's latent range of this test's seeds along its direction, and their fingerprint."""
    from .deploy import DeployError, data_fingerprint, latent_ranges

    if isinstance(seeds, tuple) and len(seeds) == 2:
        seeds, pair_labels = seeds
        labels = labels if labels is not None else pair_labels
    if isinstance(direction, str) and latent_space is not None:
        direction = latent_space.directions.get(direction, direction)
    try:
        return {"latent_range": latent_ranges(seeds, eps, direction, with_basis=True),
                "data_fingerprint": data_fingerprint(seeds, labels)}
    except (DeployError, TypeError, ValueError):
        return {}


class LatentSession:
    def __init__(self, settings: Settings, rootdir: Path, config=None):
        self.settings = settings
        self.config = config  # only for the pytest_latentaudit_sheet / _export hooks
        self.rootdir = rootdir
        self.records: List[dict] = []
        self.written: Optional[Path] = None
        self._validity_cache: Dict[tuple, tuple] = {}
        self.sheet: Optional[SpecSheet] = None
        self.messages: List[tuple] = []  # (line, is_failure) for the terminal summary
        self._baseline: Optional[dict] = None

    # ------------------------------------------------------------------ fixture side
    def run(self, nodeid: str, marker: Dict[str, Any], latent_space, model, seeds, labels=None,
            overrides: Optional[Dict[str, Any]] = None, cache=None, engines=None, falsifiers=None) -> tuple:
        """Run the audit of one test; returns ``(AuditResult, record)``."""
        from .api import audit
        from .latent import LatentAuditError
        from .specs import as_spec

        kw = dict(marker)
        kw.update(overrides or {})
        missing = [k for k in ("direction", "eps", "spec") if kw.get(k) is None]
        if missing:
            raise LatentAuditError(f"@pytest.mark.latent needs {', '.join(missing)} "
                                   f"(e.g. @pytest.mark.latent(direction='pose', eps=0.1, spec=Accuracy(0.95)))")
        engines, falsifiers = engines or {}, falsifiers or {}
        settings = self.settings.override(kw, extra_engines=tuple(engines))
        attack = kw.get("attack") or "sign"
        if attack not in ("sign", "adam", "blackbox") and attack not in falsifiers:
            raise LatentAuditError(f"unknown attack {attack!r}; use sign, adam, blackbox"
                                   + "".join(f", {n}" for n in sorted(falsifiers)))
        spec = as_spec(kw["spec"])
        seed = derive_seed(settings.seed, nodeid)
        key = f"latentaudit/counterexamples/{nodeid}"
        stored = cache.get(key, []) if cache is not None else []
        replay = [(c["seed_index"], c["offset"]) for c in stored if isinstance(c, dict) and "offset" in c]
        result = audit(model, seeds, labels, direction=kw["direction"], eps=kw["eps"], spec=spec,
                       latent_space=latent_space, engine=settings.engine, device=settings.device,
                       budget_s=settings.budget, seed=seed, precision=settings.precision, replay=replay,
                       attack=attack, bound_factory=engines.get(settings.engine), falsifier=falsifiers.get(attack))
        if cache is not None:
            cache.set(key, [{"seed_index": c.seed_index, "offset": c.offset} for c in result.counterexamples])
        record = self.make_record(nodeid, result, spec, settings, seed, model, latent_space, kw["direction"])
        record.update(_deployment_fields(seeds, labels, kw["direction"], latent_space, result.eps))
        if kw.get("validity", True) and getattr(latent_space, "decoder", None) is not None \
                and isinstance(kw["direction"], str) and result.eps > 0:
            record["validity"] = self._validity(latent_space, kw["direction"], result.eps, seeds)
        extra_budget = None if settings.budget is None else settings.budget * 0.5
        sweep = kw.get("sweep")
        if sweep:
            record["sweep"] = self._sweep(sweep, model, seeds, labels, kw, spec, latent_space, settings, seed,
                                          extra_budget)
        if kw.get("radius", True) and result.eps > 0:
            eps_max = max([2 * result.eps] + [float(r) for r in (sweep or [])])
            record["certified_radius"] = self._radius(model, seeds, labels, kw, spec, latent_space, settings,
                                                      eps_max, extra_budget)
        return result, record, settings

    def _validity(self, latent_space, direction: str, eps: float, seeds) -> Optional[dict]:
        """Continuity and realism of the direction at this eps (once per session and
        direction/eps); problems are also emitted as DirectionValidityWarning in the test."""
        import warnings

        from .validity import validity_report

        key = (id(latent_space), direction, eps)
        if key not in self._validity_cache:
            data = getattr(latent_space, "data_latents", None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    rep = validity_report(latent_space, direction, eps, seeds, data_latents=data, warn=True)
                except Exception as exc:  # a check must never break the test it describes
                    rep = {"direction": direction, "eps": eps, "ok": None, "error": str(exc)}
            self._validity_cache[key] = (rep, [(w.message, w.category) for w in caught])
        rep, warns = self._validity_cache[key]
        for message, category in warns:  # re-emitted in every test that uses this direction
            warnings.warn(message, category, stacklevel=3)
        return rep

    def _sweep(self, radii, model, seeds, labels, kw, spec, latent_space, settings, seed, budget):
        """Extra radii recorded for the verified-fraction curve; they never change pass/fail."""
        from .api import audit, check_eps

        radii = sorted({check_eps(r) for r in radii})
        out = []
        for r in radii:
            res = audit(model, seeds, labels, direction=kw["direction"], eps=r, spec=spec,
                        latent_space=latent_space, engine=settings.engine, device=settings.device,
                        budget_s=None if budget is None else budget / len(radii), seed=seed,
                        precision=settings.precision)
            out.append({"eps": r, "verdict": res.verdict, "evidence": evidence(res), "counts": res.counts,
                        "verified_fraction": res.verified_fraction, "seconds": round(res.seconds, 4)})
        return out

    def _radius(self, model, seeds, labels, kw, spec, latent_space, settings, eps_max, budget):
        """Distribution of the largest certified radius per seed (bisection, linear bounds)."""
        from .api import certified_radius

        if settings.engine.startswith("auto_lirpa") or settings.engine == "falsify":
            return None
        r = certified_radius(model, seeds, labels, direction=kw["direction"], spec=spec, eps_max=eps_max,
                             latent_space=latent_space, device=settings.device, precision=settings.precision,
                             budget_s=None if budget is None else budget * 0.5)
        return radius_summary(r.tolist(), eps_max)

    def make_record(self, nodeid, result, spec, settings: Settings, seed, model, latent_space, direction) -> dict:
        cexs = sorted(result.counterexamples, key=lambda c: -c.margin)[:MAX_COUNTEREXAMPLES]
        cex_json = [c.to_json() for c in cexs]
        img_dir = settings.artifact_dir()
        if img_dir is not None and latent_space is not None and getattr(latent_space, "decoder", None) and cexs:
            for c, cj in zip(cexs[:5], cex_json):
                cj["image"] = str(self._save_image(img_dir, nodeid, c, latent_space))
        dinfo = None
        if latent_space is not None and isinstance(direction, str) and direction in latent_space.directions:
            dinfo = latent_space.directions[direction].to_json()
        return {
            "nodeid": nodeid,
            "direction": result.direction,
            "direction_info": dinfo,
            "eps": result.eps,
            "spec": spec.to_json(),
            "spec_text": result.spec,
            "verdict": result.verdict,
            "evidence": evidence(result),
            "n_seeds": result.n,
            "counts": result.counts,
            "verified_fraction": result.verified_fraction,
            "at_least": result.at_least,
            "engine": result.engine,
            "rungs": result.rungs(),
            "seconds": round(result.seconds, 4),
            "budget": settings.budget,
            "device": settings.device,
            "precision": settings.precision,
            "seed": seed,
            "model_fingerprint": model_fingerprint(model),
            "failing_bound": result.failing_bound(),
            "counterexamples": cex_json,
            "notes": result.notes,
            "segment": _segment_summary(result),
            "estimate": _estimate_json(result.estimate),
            "spec_sheet": str(settings.spec_sheet) if settings.spec_sheet else None,
            "declared_directions": sorted(latent_space.directions) if latent_space is not None else [],
        }

    def _save_image(self, img_dir: Path, nodeid: str, cex, latent_space, frames: int = 6) -> Path:
        """A strip along the direction: the nominal decoding first, the counterexample last."""
        import torch

        from .images import save_strip

        alphas = torch.linspace(0, 1, frames)[:, None]
        path_z = cex.z0[None] + alphas * (cex.z - cex.z0)[None]
        with torch.no_grad():
            imgs = latent_space.decode(path_z.to(next(_params(latent_space.decoder), cex.z).device))
        imgs = imgs.detach().float().cpu().numpy()
        path = img_dir / f"{_safe(nodeid)}-seed{cex.seed_index}.png"
        return save_strip(path, list(imgs))

    # ----------------------------------------------------------------- controller side
    def add(self, record: dict) -> None:
        self.records.append(record)

    def write_sheet(self) -> Optional[Path]:
        s = self.settings
        if s.compare is not None:  # read the baseline first: it may be the file about to be overwritten
            try:
                self._baseline = SpecSheet.load(s.compare).data
            except (OSError, ValueError) as exc:
                self.messages.append((f"latent compare: no baseline ({exc}); nothing compared", False))
        self.sheet = SpecSheet.build(self.records, tool_version=__version__, rootdir=self.rootdir,
                                     settings={"engine": s.engine, "device": s.device, "budget": s.budget,
                                               "seed": s.seed, "unproven": s.unproven, "estimated": s.estimated,
                                          "precision": s.precision})
        hook = None if self.config is None else self.config.hook
        if hook is not None:
            hook.pytest_latentaudit_sheet(sheet=self.sheet.data, config=self.config)
        path = None if s.spec_sheet is None else self.sheet.save(s.spec_sheet)
        if hook is not None:
            hook.pytest_latentaudit_export(sheet=self.sheet.data, path=path, config=self.config)
        return path

    def finish(self) -> bool:
        """HTML report, coverage gate, comparison with the baseline; True when the run must fail."""
        s, failed = self.settings, False
        data = self.sheet.data if self.sheet is not None else {"tests": self.records}
        if s.report is not None:
            from .html_report import render_html

            base = s.spec_sheet.parent if s.spec_sheet else None
            self.messages.append((f"latent report: {render_html(data, s.report, base_dir=base)}", False))
        if s.coverage_fail_under is not None:
            from .coverage import coverage_gate, coverage_summary

            ok, msg = coverage_gate(data.get("coverage") or coverage_summary(data), s.coverage_fail_under)
            self.messages.append((msg, not ok))
            failed = failed or not ok
        if self._baseline is not None:
            from .coverage import compare_sheets, regressions_gate

            ok, lines = regressions_gate(compare_sheets(self._baseline, data))
            self.messages += [(line, not ok) for line in lines]
            failed = failed or not ok
        return failed

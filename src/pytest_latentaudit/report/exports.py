"""Export a spec sheet to model-card formats.

* ``to_model_card(sheet)``: a Model Card Toolkit (MCT) card, schema v0.0.2
  (``schema/model_card.v0.0.2.schema.json``, vendored): one
  ``quantitative_analysis.performance_metrics`` entry per test and radius, with
  ``type`` (``"verified accuracy"``, ``"verified invariance"``, ``"verified fraction (<spec>)"``),
  ``value``, ``slice`` = ``"<direction>@<eps>"`` and ``confidence_interval``. MCT v0.0.2 types
  ``value`` and the bounds as *strings*, so they are written as decimal strings.
  The interval is the certified bracket ``[verified/n, (n - falsified)/n]`` of the fraction
  of seeds on which the spec holds (sound, not statistical); an ``estimated`` result adds an
  ``"estimated accuracy"`` (...) metric with the sampling estimate and its confidence interval. Per direction with a certified-radius summary,
  a ``"median certified radius"`` metric (slice: the direction). Violated and unproven tests
  become ``considerations.limitations``; the verified latent ranges ``considerations.use_cases``.
* ``to_model_index(sheet, ..., task_type=...)``: Hugging Face model-card metadata (the README's
  YAML front matter) ``{"model-index": [{"name", "results": [{"task", "dataset", "metrics"}]}]}``
  with one result per direction; ``verified: false`` on every metric (on the Hub, ``verified``
  means "evaluated by Hugging Face"). ``task_type`` (the Hub's task id of *your* model, e.g.
  ``image-classification``, ``tabular-classification``) has no default: a spec sheet does not
  say what the model's inputs are, and a guessed task files the results under the wrong one.
  ``model_index_yaml`` renders it as YAML (PyYAML when installed, a small built-in emitter
  otherwise); ``write_model_index`` writes JSON, YAML or README front matter by the suffix.

No torch, no network.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..sheet.records import Point, TestRecord, radius_stat, spec_kind
from ..core.vocab import ESTIMATED, UNPROVEN, VIOLATED

__all__ = ["to_model_card", "to_model_index", "to_yaml", "model_index_yaml", "write_model_card",
           "write_model_index", "metric_type", "MCT_SCHEMA_VERSION"]

MCT_SCHEMA_VERSION = "0.0.2"


def _sheet(sheet):
    """The one sheet loader (``specsheet.read_sheet``): a dict, a SpecSheet or a path."""
    from ..sheet.specsheet import read_sheet

    return read_sheet(sheet)


def metric_type(rec: Union[TestRecord, Mapping], estimated: bool = False) -> str:
    """Human metric name of a record's verified fraction (``estimated``: of its sampling
    estimate, which is no verified number)."""
    kind = rec.spec_kind if isinstance(rec, TestRecord) else spec_kind(rec.get("spec"))
    word = "estimated" if estimated else "verified"
    if kind == "accuracy":
        return f"{word} accuracy"
    if kind == "invariance":
        return f"{word} invariance"
    return f"{word} fraction ({kind})"


def _num(x: float) -> str:
    return f"{float(x):.6g}"


def _point_metrics(p: Point):
    """THE numbers a point exports: ``[(estimated, value, lower, upper)]``. First the certified
    bracket of the fraction of seeds on which the spec holds, ``[verified/n, (n - falsified)/n]``
    (the ``verified ...`` metric: sound, whatever the evidence); then, when sampling is the
    evidence, the estimate and its confidence interval as an ``estimated ...`` metric (the
    fraction of sampled points where the spec held, ``stats.DEFINITION``: never called verified)."""
    n = p.n_seeds if p.n_seeds else p.counts.total
    vf = p.verified_fraction
    upper = (n - p.counts.falsified) / n if n else 1.0
    out = [(False, vf, vf, upper)]
    est = p.estimate
    if est and (p.verdict == ESTIMATED or p.evidence == ESTIMATED):
        out.append((True, float(est["fraction"]), float(est["lower"]), float(est["upper"])))
    return out


def _radii(directions: Mapping[str, Mapping]):
    """``(direction, median certified radius, summary)`` for directions that record one
    (``records.radius_stat``)."""
    for name, entry in sorted(directions.items()):
        cr = (entry or {}).get("certified_radius") or {}
        stat, med = radius_stat(cr)
        if stat == "median":
            yield name, float(med), cr


def _slice(direction: str, eps: float) -> str:
    return f"{direction}@{float(eps):g}"


def _model_name(data: Mapping, name: Optional[str]) -> str:
    if name:
        return name
    models = data.get("models") or []
    return f"model {models[0]}" if len(models) == 1 else "model under latent audit"


# ------------------------------------------------------------------------ Model Card Toolkit
def to_model_card(sheet, *, name: Optional[str] = None, overview: Optional[str] = None,
                  version: Optional[str] = None) -> dict:
    """The sheet as a Model Card Toolkit card (dict) valid against MCT schema v0.0.2."""
    sh = _sheet(sheet)
    data = sh.data
    tests = sorted(sh.records, key=lambda r: (r.direction, r.eps, r.nodeid))
    metrics: List[dict] = []
    limitations: List[dict] = []
    for r in tests:
        if r.stale is not None:  # the records rule: proved for an older model, nothing about this one
            limitations.append({"description": (
                f"{r.spec_text or r.spec_kind} along {r.direction!r} at eps={r.eps:g} was recorded for an older "
                f"model ({r.model_fingerprint}) and not re-run: it says nothing about this model ({r.nodeid}).")})
            continue
        for p in r.points():
            for estimated, value, lo, hi in _point_metrics(p):
                metrics.append({"type": metric_type(r, estimated), "value": _num(value),
                                "slice": _slice(r.direction, p.eps),
                                "confidence_interval": {"lower_bound": _num(lo), "upper_bound": _num(hi)}})
        if r.verdict in (VIOLATED, UNPROVEN):
            c = r.counts
            limitations.append({"description": (
                f"{r.spec_text or r.spec_kind} along {r.direction!r} at eps={r.eps:g} is "
                f"{r.verdict}: {c.verified}/{r.n_seeds} seeds verified, "
                f"{c.falsified} falsified, {c.unknown} undecided ({r.nodeid}).")})
    directions = sh.direction_entries()
    for dname, med, cr in _radii(directions):
        metrics.append({"type": "median certified radius", "value": _num(med), "slice": dname})
    use_cases = []
    for dname, entry in sorted(directions.items()):
        models = (entry or {}).get("models") or {}
        # one operating range per model when the direction's tests ran on several
        per = ([(f" of model {k}", m.get("latent_range"), f"in_spec(..., model={k!r})") for k, m in models.items()]
               if len(models) > 1 else [("", (entry or {}).get("latent_range"), "in_spec")])
        for of, rng, call in per:
            if not rng:
                continue
            coords = ", ".join(f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(rng["lower"], rng["upper"]))
            use_cases.append({"description": (
                f"Inputs whose latent coordinate(s) along {dname!r} lie in {coords} (the verified operating "
                f"range{of}: mean of the seeds +/- (eps + std), eps={float(rng.get('eps', 0)):g}"
                + (f", for {rng['spec_text']}" if rng.get("spec_text") else "") + "); check with "
                f"pytest_latentaudit.sheet.deploy.{call}.")})
    tool = data.get("tool") or {}
    commit = data.get("commit") or {}
    summary = data.get("summary") or {}
    verdicts = summary.get("verdicts") or {}
    default_overview = (f"Semantic unit tests along latent directions: {summary.get('tests', len(tests))} test(s), "
                        + ", ".join(f"{v} {k}" for k, v in sorted(verdicts.items())) + ".")
    details: Dict[str, Any] = {
        "name": _model_name(data, name),
        "overview": overview or default_overview,
        "documentation": (f"Generated from a {tool.get('name', 'pytest-latentaudit')} "
                          f"{tool.get('version', '')} spec sheet created {data.get('created', '')}. Each metric "
                          "is the fraction of seeds on which the spec is proved to hold for every variation of at "
                          "most eps along the named latent direction (slice 'direction@eps'); the interval "
                          "brackets the true fraction between proved and not-falsified seeds."),
    }
    ver = version or commit.get("id") or ((data.get("models") or [None])[0])
    if ver:
        details["version"] = {"name": str(ver)}
        if commit.get("dirty"):
            details["version"]["diff"] = "uncommitted changes in the working tree"
    card: Dict[str, Any] = {
        "schema_version": MCT_SCHEMA_VERSION,
        "model_details": details,
        "quantitative_analysis": {"performance_metrics": metrics},
    }
    considerations = {}
    if limitations:
        considerations["limitations"] = limitations
    if use_cases:
        considerations["use_cases"] = use_cases
    if considerations:
        card["considerations"] = considerations
    return card


# ------------------------------------------------------------------------ Hugging Face model-index
def _metric_id(rec: TestRecord, estimated: bool = False) -> str:
    return re.sub(r"[^a-z0-9]+", "_", metric_type(rec, estimated).lower()).strip("_")


#: Hugging Face task ids a latent audit's classifier often has (for messages; any id is accepted)
HF_TASK_EXAMPLES = ("image-classification", "tabular-classification", "audio-classification",
                    "text-classification")


def _task_type(task_type: Optional[str]) -> str:
    if not task_type or not str(task_type).strip():
        raise ValueError("the Hugging Face model-index needs the model's task type (task_type=..., on the command "
                         "line --task ...), e.g. " + ", ".join(HF_TASK_EXAMPLES) + ": a spec sheet does not say "
                         "what the model's inputs are")
    return str(task_type).strip()


def to_model_index(sheet, model_name: Optional[str] = None, *, task_type: Optional[str] = None,
                   task_name: Optional[str] = None, dataset_name: str = "latent audit seeds",
                   dataset_type: str = "latentaudit") -> dict:
    """Hugging Face ``model-index`` metadata: ``{"model-index": [{"name", "results": [...]}]}``.

    ``task_type`` is required: the Hub's task id of the model (``"image-classification"``, ...).

    One result per direction (``dataset.name`` = ``"<dataset_name> (direction: <d>)"``), one
    metric per test and radius: ``{"type": "verified_accuracy", "value", "name", "verified":
    false, "args": {"direction", "eps", "spec", "verdict"}}``, and ``median_certified_radius``
    where the sheet records certified radii."""
    task_type = _task_type(task_type)
    sh = _sheet(sheet)
    data = sh.data
    by_dir: Dict[str, List[dict]] = {}
    for r in sorted(sh.records, key=lambda r: (r.direction, r.eps, r.nodeid)):
        if r.stale is not None:  # proved for an older model: no metric of this one
            continue
        for p in r.points():
            for estimated, value, _, _ in _point_metrics(p):
                by_dir.setdefault(r.direction, []).append({
                    "type": _metric_id(r, estimated),
                    "value": round(value, 6),
                    "name": f"{metric_type(r, estimated)} along {r.direction} at eps={p.eps:g}",
                    "verified": False,
                    "args": {"direction": r.direction, "eps": p.eps,
                             "spec": str(r.spec_text or r.spec_kind), "verdict": p.verdict},
                })
    for dname, med, cr in _radii(sh.direction_entries()):
        by_dir.setdefault(dname, []).append({
            "type": "median_certified_radius", "value": round(med, 6),
            "name": f"median certified radius along {dname} (latent units)", "verified": False,
            "args": {"direction": dname, "eps_max": cr.get("eps_max"), "test": str(cr.get("nodeid", ""))}})
    task = {"type": task_type}
    if task_name:
        task["name"] = task_name
    results = [{"task": dict(task), "dataset": {"name": f"{dataset_name} (direction: {d})", "type": dataset_type},
                "metrics": ms} for d, ms in sorted(by_dir.items())]
    return {"model-index": [{"name": _model_name(data, model_name), "results": results}]}


# ------------------------------------------------------------------------ YAML
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        s = repr(v)
        if "e" in s and "." not in s:  # YAML 1.1 floats need a dot: 1e-05 -> 1.0e-05
            mant, _, exp = s.partition("e")
            s = f"{mant}.0e{exp if exp[0] in '+-' else '+' + exp}"
        return s
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def _key(k) -> str:
    k = str(k)
    return k if _PLAIN_KEY.match(k) and k.lower() not in _RESERVED else json.dumps(k)


def _emit(obj, indent: int) -> List[str]:
    pad = " " * indent
    lines: List[str] = []
    if isinstance(obj, Mapping):
        if not obj:
            return [pad + "{}"]
        for k, v in obj.items():
            if isinstance(v, Mapping) and v:
                lines.append(f"{pad}{_key(k)}:")
                lines += _emit(v, indent + 2)
            elif isinstance(v, (list, tuple)) and v:
                lines.append(f"{pad}{_key(k)}:")
                lines += _emit(v, indent)
            else:
                lines.append(f"{pad}{_key(k)}: {_inline(v)}")
        return lines
    if isinstance(obj, (list, tuple)):
        if not obj:
            return [pad + "[]"]
        for item in obj:
            if isinstance(item, (Mapping, list, tuple)) and item:
                sub = _emit(item, indent + 2)
                sub[0] = pad + "- " + sub[0][indent + 2:]
                lines += sub
            else:
                lines.append(f"{pad}- {_inline(item)}")
        return lines
    return [pad + _scalar(obj)]


def _inline(v) -> str:
    if isinstance(v, Mapping):
        return "{}"
    if isinstance(v, (list, tuple)):
        return "[]"
    return _scalar(v)


def to_yaml(obj, *, use_pyyaml: bool = True) -> str:
    """Block-style YAML for plain data (PyYAML's ``safe_dump`` when installed)."""
    if use_pyyaml:
        try:
            import yaml
        except ImportError:
            pass
        else:
            return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "\n".join(_emit(obj, 0)) + "\n"


def model_index_yaml(sheet, model_name: Optional[str] = None, *, front_matter: bool = True,
                     use_pyyaml: bool = True, **kw) -> str:
    """``to_model_index`` as YAML; with ``front_matter`` fenced by ``---`` lines, ready to be the
    top of a Hugging Face README.md."""
    text = to_yaml(to_model_index(sheet, model_name, **kw), use_pyyaml=use_pyyaml)
    return f"---\n{text}---\n" if front_matter else text


# ------------------------------------------------------------------------ files
def write_model_card(sheet, path, **kw) -> Path:
    """Write ``to_model_card`` as JSON (atomically)."""
    from ..core.files import write_atomic

    path = Path(path)
    write_atomic(path, (json.dumps(to_model_card(sheet, **kw), indent=2) + "\n").encode())
    return path


#: what ``write_model_index`` writes, by the file's suffix
MODEL_INDEX_SUFFIXES = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".md": "README front matter",
                        ".markdown": "README front matter"}


def write_model_index(sheet, path, model_name: Optional[str] = None, **kw) -> Path:
    """Write the model-index (atomically) in the format its name says: JSON for ``.json``, bare
    YAML for ``.yaml``/``.yml``, YAML fenced by ``---`` (the top of a Hugging Face README.md)
    for ``.md``/``.markdown``; any other suffix is a ``ValueError``, before anything is written."""
    from ..core.files import write_atomic

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_INDEX_SUFFIXES:
        raise ValueError(f"{path}: say the format by the file name: "
                         + ", ".join(f"{k} ({v})" for k, v in MODEL_INDEX_SUFFIXES.items()))
    if suffix == ".json":
        text = json.dumps(to_model_index(sheet, model_name, **kw), indent=2) + "\n"
    else:
        text = model_index_yaml(sheet, model_name, front_matter=suffix in (".md", ".markdown"), **kw)
    write_atomic(path, text.encode())
    return path

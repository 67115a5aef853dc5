"""The deployment guard: the runtime companion of the latent tests.

A latent test proves a spec for seeds moved by at most ``eps`` along a direction. At
deployment AuditAI (Bharadhwaj et al., ICLR 2022, section 2.4) turns the per-seed boxes into
one *global latent range* per direction,

    [mean(c) - eps - std(c),  mean(c) + eps + std(c)]

where ``c`` are the seeds' coordinates along the direction (for an axis: coordinate ``i``;
for a vector or a subspace with orthonormal basis ``V``: the projection coefficients
``V^T z``, one range per basis vector) and ``std`` is the population standard deviation.
An input is *in spec* for a direction when its latent code's coordinates lie in that range.

    ranges = latent_ranges(z_seeds, eps=0.5, V=Direction.axis(3))    # at test time
    ok = in_spec(sheet, encoder(x_batch))                            # at deployment
    ok["pose"], ok["all"]                                            # bool arrays [N]

Only numpy is needed: torch tensors are accepted (and answered with torch tensors) but torch
is never imported here, so a serving process that only has numpy can use the guard.

The range is a heuristic about where the *data* lies, not a proof: the proof covers each
seed's box. Codes outside the range are where the model's verified behaviour says nothing.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import LatentAuditError
from ..core.vocab import PROVED
from .specsheet import directions_section, range_model, read_sheet  # noqa: F401  (directions_section: re-exported)

__all__ = ["latent_ranges", "in_spec", "range_score", "project", "basis_json", "directions_section", "data_fingerprint",
           "model_fingerprint", "certified_radius_summary", "DeployError"]


class DeployError(LatentAuditError):
    """The sheet or the input cannot answer the in-spec question; the message says why."""


# ------------------------------------------------------------------------ arrays
def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _to_numpy(x) -> np.ndarray:
    """numpy view of a numpy array, list or torch tensor (torch is not imported)."""
    if _is_torch(x):
        t = x.detach().cpu()
        if "bfloat16" in str(t.dtype) or "float16" in str(t.dtype):
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def _as_codes(z) -> Tuple[np.ndarray, bool]:
    """``[N, d]`` float64 codes (``[N, *shape]`` is flattened) and whether ``z`` was one code."""
    a = _to_numpy(z)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise DeployError(f"latent codes must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.ndim == 0:
        raise DeployError("latent codes must be shaped [N, latent_dim] (or [latent_dim] for one code)")
    single = a.ndim == 1
    a = a.reshape(1, -1) if single else a.reshape(a.shape[0], int(np.prod(a.shape[1:])))
    return a, single


# ------------------------------------------------------------------------ bases
def _direction_parts(V) -> Tuple[str, Any]:
    """``("axis", i)`` or ``("vector"|"subspace", array)`` from an int, a Direction or an array."""
    kind = getattr(V, "kind", None)
    if kind in ("axis", "vector", "subspace") and hasattr(V, "data"):  # a latent.Direction
        return kind, V.data
    if isinstance(V, (int, np.integer)) and not isinstance(V, bool):
        return "axis", int(V)
    a = _to_numpy(V)
    if a.ndim == 0 and np.issubdtype(a.dtype, np.integer):
        return "axis", int(a)
    if a.ndim == 1:
        return "vector", a
    if a.ndim == 2:
        return "subspace", a
    raise DeployError(f"a direction is an axis index, a [d] vector or a [d, k] basis; got shape {a.shape}")


def _orthonormal(kind: str, data, dim: int) -> np.ndarray:
    """The ``[dim, k]`` orthonormal basis, oriented like ``latent.Direction.basis``."""
    a = _to_numpy(data).astype(np.float64)
    if kind == "vector":
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[0] != dim:
        raise DeployError(f"direction basis has shape {a.shape}; expected [{dim}] or [{dim}, k] "
                          f"for {dim}-d latent codes")
    if not np.isfinite(a).all():
        raise DeployError("direction basis contains NaN or inf")
    if a.shape[1] == 0 or a.shape[1] > dim:
        raise DeployError(f"direction basis needs 1..{dim} columns, got {a.shape[1]}")
    Q, R = np.linalg.qr(a)
    d = np.diagonal(R)
    if (np.abs(d) < 1e-8 * max(1.0, float(np.abs(R).max()))).any():
        raise DeployError("direction basis vectors are linearly dependent (or zero)")
    return Q * np.sign(d)[None]


def _basis(V, dim: int) -> Tuple[str, Optional[int], Optional[np.ndarray]]:
    kind, data = _direction_parts(V)
    if kind == "axis":
        if not 0 <= data < dim:
            raise DeployError(f"axis {data} is out of range for {dim}-d latent codes")
        return kind, int(data), None
    return kind, None, _orthonormal(kind, data, dim)


def project(z, V) -> np.ndarray:
    """Coordinates of codes ``z`` ``[N, d]`` along direction ``V``: ``[N, k]`` (numpy float64).

    ``V``: an axis index, a ``Direction``, a ``[d]`` vector or a ``[d, k]`` basis (orthonormalised
    the way ``Direction.basis`` does, so a vector is normalised and keeps its orientation)."""
    a, _ = _as_codes(z)
    kind, axis, B = _basis(V, a.shape[1])
    return a[:, [axis]] if kind == "axis" else a @ B


def basis_json(V, dim: int) -> dict:
    """What the sheet stores so that it alone can project codes: ``{"kind", "k", "axis"}`` or
    ``{"kind", "k", "basis": [[...] * k] * d]}``."""
    kind, axis, B = _basis(V, dim)
    if kind == "axis":
        return {"kind": kind, "k": 1, "axis": axis}
    return {"kind": kind, "k": int(B.shape[1]), "basis": B.tolist()}


# ------------------------------------------------------------------------ ranges
def _floats(a) -> List[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def latent_ranges(z_seeds, eps: float, V, *, with_basis: bool = False) -> dict:
    """AuditAI's global latent range along direction ``V`` for seeds ``z_seeds`` ``[N, d]``.

    Returns ``{"lower": [k], "upper": [k], "mean": [k], "std": [k], "eps", "n_seeds"}`` with
    ``lower = mean - eps - std`` and ``upper = mean + eps + std`` per basis coordinate (``std``
    with ``ddof=0``). ``with_basis=True`` adds ``kind``/``k`` and ``axis`` or ``basis`` (what
    ``in_spec`` needs to project deployment codes without the LatentSpace)."""
    e = float(eps)
    if math.isnan(e) or math.isinf(e) or e < 0:
        raise DeployError(f"eps must be a finite number >= 0, got {eps!r}")
    a, _ = _as_codes(z_seeds)
    if a.shape[0] == 0:
        raise DeployError("latent_ranges needs at least one seed")
    c = project(a, V)
    mean, std = c.mean(axis=0), c.std(axis=0)
    out = {"lower": _floats(mean - e - std), "upper": _floats(mean + e + std), "mean": _floats(mean),
           "std": _floats(std), "eps": e, "n_seeds": int(a.shape[0])}
    if with_basis:
        out.update(basis_json(V, a.shape[1]))
    return out


# ------------------------------------------------------------------------ the guard
def _sheet_directions(sheet) -> Dict[str, dict]:
    """The sheet's ``directions`` section (``specsheet.read_sheet`` loads and checks the sheet;
    ``SpecSheet.direction_entries`` rebuilds a missing section from the records)."""
    return read_sheet(sheet).direction_entries()


def _model_selector(model) -> Optional[str]:
    """``model=`` of the guard: None, a fingerprint or name (str), or the model itself (its
    ``model_fingerprint``; torch is imported only by the caller who has a module)."""
    if model is None or isinstance(model, str):
        return model
    fp = model_fingerprint(model)
    if fp is None:
        raise DeployError(f"model=: cannot fingerprint a {type(model).__name__} (only torch.nn.Module); pass the "
                          f"model's fingerprint or name as a string")
    return fp


def _entry_models(entry: Mapping) -> Mapping:
    """A direction entry's ``models`` (empty for a sheet written before them)."""
    models = entry.get("models")
    return models if isinstance(models, Mapping) else {}


def _model_label(models: Mapping, key: str) -> str:
    names = models[key].get("names") or []
    return f"{key} ({', '.join(names)})" if names else key


def _model_key(models: Mapping, model: str) -> Optional[str]:
    """The key in a direction's ``models`` that ``model`` (a fingerprint or a name) selects."""
    if model in models:
        return model
    keys = [k for k in models if model in (models[k].get("names") or [])]
    if len(keys) > 1:
        raise DeployError(f"model={model!r} names {len(keys)} models of the sheet "
                          f"({'; '.join(_model_label(models, k) for k in keys)}): pass the fingerprint")
    return keys[0] if keys else None


def _model_ranges(name: str, entry: Mapping, model: Optional[str]) -> Tuple[List[Mapping], Optional[Mapping]]:
    """The direction's ranges and operating range **of the model asked for**: a range proved
    for one model is no verified range of another (``directions_section`` keeps them apart
    in ``models``). ``model``: ``_model_selector``'s answer, None for "the one model tested"."""
    ranges = list(entry.get("ranges") or [])
    models = _entry_models(entry)
    if not models:  # a sheet written before ``models``
        return ranges, entry.get("latent_range")
    if model is None:
        if len(models) > 1:
            raise DeployError(f"direction {name!r} has ranges of {len(models)} models "
                              f"({'; '.join(_model_label(models, k) for k in models)}): pass model= (the nn.Module "
                              f"you deploy, its fingerprint or its name; latentaudit guard --model)")
        key = next(iter(models))
    else:
        key = _model_key(models, model)
        if key is None:
            raise DeployError(f"direction {name!r}: model={model!r} is none of the models its tests ran on "
                              f"({'; '.join(_model_label(models, k) for k in models)}): nothing is proved for it "
                              f"(retrained or edited since? re-run the tests)")
    return [g for g in ranges if range_model(g) == key], models[key].get("latent_range")


def _tested_on(entry: Mapping, model: str) -> bool:
    models = _entry_models(entry)
    if not models:
        return True  # an older sheet: cannot tell, so check (and let _model_ranges answer)
    return _model_key(models, model) is not None


def _pick_range(name: str, entry: Mapping, eps: Optional[float], model: Optional[str] = None) -> Mapping:
    ranges, latent_range = _model_ranges(name, entry, model)
    if eps is None:
        rng = latent_range
        if not rng:
            why = ""
            every = entry.get("ranges") or []  # stale ones are of an older fingerprint: not in ``ranges``
            if any(g.get("stale") and g.get("verdict") == PROVED for g in every):
                why = " (its proved records are stale: proved for an older model; re-run them)"
            elif any(g.get("vacuous") and g.get("verdict") == PROVED for g in ranges):
                why = " (its proved records hold vacuously)"
            raise DeployError(f"direction {name!r} has no proved test with a recorded latent range{why}, so no "
                              f"verified operating range to check against")
        return rng
    matches = [g for g in ranges if abs(float(g.get("eps", -1)) - float(eps)) <= 1e-12]
    if not matches:
        have = sorted({float(g.get("eps", 0)) for g in ranges})
        raise DeployError(f"direction {name!r} has no latent range recorded at eps={eps:g} "
                          f"(recorded: {', '.join(f'{e:g}' for e in have) or 'none'})")
    # ``proves``: the records rule (``TestRecord.claimed``), written by ``directions_section``;
    # ``direction_entries`` rebuilds a section written without it
    proved = [g for g in matches if g.get("proves") is True]
    if not proved:  # a range nothing proved is no verified operating range: never "in spec"
        verdicts = ", ".join(sorted({str(g.get("verdict")) + (" (stale: proved for an older model)" if g.get("stale")
                                                              else " (vacuous)" if g.get("vacuous") else "")
                                     for g in matches}))
        raise DeployError(f"direction {name!r}: nothing is proved at eps={eps:g} of the current model (recorded: "
                          f"{verdicts}), so there is no verified operating range there")
    return proved[0]


def _model_ranges_any(entry: Mapping) -> bool:
    return any(m.get("latent_range") for m in _entry_models(entry).values())


def _direction_names(dirs: Mapping[str, dict], directions: Optional[Sequence[str]], eps: Optional[float],
                     model: Optional[str] = None) -> List[str]:
    if directions is None:
        if model is not None:  # the directions this model was tested along
            dirs = {n: e for n, e in dirs.items() if _tested_on(e, model)}
        names = [n for n, e in dirs.items()
                 if (e.get("ranges") if eps is not None else (e.get("latent_range") or _model_ranges_any(e)))]
        if not names:
            raise DeployError("the spec sheet records no verified latent range for any direction "
                              "(no proved test with a latent_range)")
        return names
    names = list(directions)
    unknown = [n for n in names if n not in dirs]
    if unknown:
        raise DeployError(f"direction(s) {', '.join(map(repr, unknown))} not in the spec sheet "
                          f"(it has: {', '.join(dirs) or 'none'})")
    return names


def _coordinates(sheet, a: np.ndarray, directions, bases, eps, model=None):
    """Per checked direction: ``(name, coordinates [N, k], lower [k], upper [k])``."""
    dirs = _sheet_directions(sheet)
    model = _model_selector(model)
    names = _direction_names(dirs, directions, eps, model)
    bases = dict(bases or {})
    out = []
    for name in names:
        entry = dirs[name]
        rng = _pick_range(name, entry, eps, model)
        stored = _range_basis(entry, rng)
        if name in bases:
            V = bases[name]
            if stored is not None and not _same_projection(V, stored, a.shape[1]):
                raise DeployError(f"direction {name!r}: bases={{{name!r}: ...}} is another direction than the basis "
                                  f"its range was computed along ({_basis_text(stored)}, stored in the spec sheet): "
                                  f"the range says nothing about codes projected on another basis")
        elif stored is not None:
            V = stored
        else:
            raise DeployError(f"direction {name!r} ({entry.get('kind', 'unknown kind')}) has no stored basis "
                              f"in the spec sheet: pass bases={{{name!r}: V}} (or use LatentSpace.in_spec)")
        c = project(a, V)
        lo = np.asarray(rng["lower"], dtype=np.float64)
        hi = np.asarray(rng["upper"], dtype=np.float64)
        if lo.shape != (c.shape[1],) or hi.shape != (c.shape[1],):
            raise DeployError(f"direction {name!r}: the range has {lo.size} coordinate(s) but the basis gives "
                              f"{c.shape[1]}")
        out.append((name, c, lo, hi))
    return out


def _range_basis(entry: Mapping, rng: Mapping):
    """THE coordinates a range is read in: the basis its record was tested along. A range that
    carries its own (``specsheet._place_bases``: its record's direction differs from the
    direction entry's) has it; else the entry's. An axis index or a ``[d, k]`` array; None when
    the sheet stores neither (a vector or subspace direction of an older sheet)."""
    src = rng if any(k in rng for k in ("kind", "axis", "basis")) else entry
    if src.get("axis") is not None:
        return int(src["axis"])
    if src.get("basis") is not None:
        return np.asarray(src["basis"], dtype=np.float64)
    return None


def _basis_text(V) -> str:
    return f"axis {V}" if isinstance(V, int) else f"a [{V.shape[0]}, {V.shape[1] if V.ndim > 1 else 1}] basis"


def _same_projection(V, stored, dim: int, tol: float = 1e-6) -> bool:
    """Does direction ``V`` give the coordinates of ``stored`` (same vectors, same orientation)?"""
    _, axis_a, A = _basis(V, dim)
    _, axis_b, B = _basis(stored, dim)
    eye = np.eye(dim)
    A = eye[:, [axis_a]] if A is None else A
    B = eye[:, [axis_b]] if B is None else B
    return A.shape == B.shape and bool(np.allclose(A, B, rtol=0.0, atol=tol))


def in_spec(sheet, z, directions: Optional[Sequence[str]] = None, *, bases: Optional[Mapping[str, Any]] = None,
            eps: Optional[float] = None, model=None) -> Dict[str, Any]:
    """Which latent codes lie in the spec sheet's verified operating range.

    ``sheet``: a spec-sheet dict, a ``SpecSheet`` or a path. ``z``: codes ``[N, d]`` (numpy or
    torch; ``[d]`` for one code). ``directions``: names to check (default: every direction with
    a recorded range). ``bases``: ``{name: axis | vector | [d, k] | Direction}`` overriding or
    supplying the basis (sheets without a stored basis for a vector/subspace direction).
    ``eps``: check against the proved range recorded at this radius instead of the largest proved one
    (``DeployError`` when nothing is proved there). ``model``: which model's ranges (the
    ``nn.Module`` you deploy, its ``model_fingerprint`` or a name the sheet gives it, e.g. its
    fixture's): needed when the sheet holds ranges of several models along a direction, and a
    check otherwise (a module whose fingerprint the proofs are not of is a ``DeployError``).

    Returns ``{name: bool array [N], ..., "all": bool array [N]}``; numpy arrays for numpy input,
    torch bool tensors (same device) for torch input; scalars for a single code.
    """
    a, single = _as_codes(z)
    out: Dict[str, Any] = {}
    for name, c, lo, hi in _coordinates(sheet, a, directions, bases, eps, model):
        out[name] = ((c >= lo) & (c <= hi)).all(axis=1)
    names = list(out)
    out["all"] = np.logical_and.reduce([out[n] for n in names]) if names else np.ones(a.shape[0], bool)
    return {k: _like(v, z, single) for k, v in out.items()}


def range_score(sheet, z, directions: Optional[Sequence[str]] = None, *, bases: Optional[Mapping[str, Any]] = None,
                eps: Optional[float] = None, model=None) -> Dict[str, np.ndarray]:
    """How far inside or outside the verified range each code lies: per direction, the largest
    ``|c - mid| / half_width`` over its coordinates (``mid``, ``half_width`` of ``[lower, upper]``),
    so ``<= 1`` is in spec (the same decision as ``in_spec``, up to float rounding at the edge)
    and larger is further out. ``"all"`` is the maximum over the directions: a continuous score
    for ROC curves. NaN codes score ``inf``. Same arguments as ``in_spec``; numpy float64 arrays
    ``[N]``."""
    a, _ = _as_codes(z)
    out: Dict[str, np.ndarray] = {}
    for name, c, lo, hi in _coordinates(sheet, a, directions, bases, eps, model):
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.abs(c - mid) / np.where(half > 0, half, np.nan)
        # a zero-width range: 0 on it, inf off it
        r = np.where(half > 0, r, np.where(c == mid, 0.0, np.inf))
        r = np.where(np.isnan(c), np.inf, r)
        out[name] = r.max(axis=1)
    names = list(out)
    out["all"] = np.maximum.reduce([out[n] for n in names]) if names else np.zeros(a.shape[0])
    return out


def _like(mask: np.ndarray, z, single: bool):
    if single:
        mask = mask[0]
    if _is_torch(z):
        import sys

        torch = sys.modules["torch"]
        return torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=z.device)
    return mask


# ------------------------------------------------------------------------ helpers for the sheet
def model_fingerprint(model) -> Optional[str]:
    """sha256 over parameter and buffer names, shapes and bytes, and over the program around
    them (``engines.graph.program_digest``: modules, hooks, the forwards' code and the plain
    values it reads), so that an edited forward is another model; None for plain callables."""
    import torch

    from ..engines.graph import program_digest

    if not isinstance(model, torch.nn.Module):
        return None
    h = hashlib.sha256()
    try:
        program = program_digest(model)
    except Exception as exc:  # noqa: BLE001 - an odd model must not fail the test run: the weights still count
        program = f"unreadable ({type(exc).__name__})"
    h.update(b"program " + program.encode())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else
                 t.detach().float().cpu().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def data_fingerprint(z, labels=None) -> str:
    """``sha256:...`` over the seeds' shape and float32 bytes (and the labels'), to tell
    whether two sheets were computed on the same seeds."""
    h = hashlib.sha256()
    a = np.ascontiguousarray(_to_numpy(z), dtype=np.float32)
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    if labels is not None:
        b = np.ascontiguousarray(_to_numpy(labels), dtype=np.int64)
        h.update(b"labels" + str(b.shape).encode())
        h.update(b.tobytes())
    return "sha256:" + h.hexdigest()[:32]


def certified_radius_summary(radii, eps_max: Optional[float] = None, *, bins: int = 10) -> dict:
    """Statistics of per-seed certified radii (latent units), in the shape the plugin records per
    test: ``{"n", "eps_max", "mean", "quantiles": {"min", "p10", "p25", "median", "p75", "p90",
    "max"}, "histogram": {"edges", "counts"}}``. The histogram spans ``[0, eps_max]`` (default:
    the largest radius); radii beyond it (inf: certified on the whole searched range) count in
    the last bin and are clipped to ``eps_max`` for the statistics; NaN radii are dropped."""
    r = _to_numpy(radii).astype(np.float64).reshape(-1)
    r = r[~np.isnan(r)]
    finite = r[np.isfinite(r)]
    top = float(eps_max) if eps_max is not None else (float(finite.max()) if finite.size else 0.0)
    r = np.clip(r, 0.0, top) if top > 0 else np.zeros_like(r)
    bins = max(1, int(bins))
    edges = [top * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for v in r:
        counts[min(bins - 1, int(v / top * bins)) if top > 0 else 0] += 1
    names = (("min", 0.0), ("p10", 0.1), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p90", 0.9), ("max", 1.0))
    qs = {k: (float(np.quantile(r, q)) if r.size else None) for k, q in names}
    return {"n": int(r.size), "eps_max": top, "mean": float(r.mean()) if r.size else None, "quantiles": qs,
            "histogram": {"edges": edges, "counts": counts}}

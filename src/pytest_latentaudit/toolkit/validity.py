"""Is a direction fit to be tested along? Validity checks for semantic directions.

A semantic unit test "for every variation of at most eps along *pose*" means what it says
only when (GCert; AuditAI section 4):

* **continuity**: the generator changes smoothly along the direction (bounded Jacobian),
  so a small step in latent space is a small change of the image and the decoded path
  is a gradual morph rather than a jump to something else;
* **independence**: moving along the direction changes *its* attribute, not the others
  (a "pose" direction that also changes "eyeglasses" tests something else);
* **realism**: the moved latent codes still decode to in-distribution data; beyond some
  eps the samples leave the data manifold, and a spec sheet must not claim verified
  ranges there.

Every check returns a plain, JSON-serialisable ``dict`` (for the spec sheet) with an
``"ok"`` flag and ``"problems"``, and emits a ``DirectionValidityWarning`` per problem
(``warn=False`` to silence). The thresholds are heuristics with documented defaults.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, Mapping, Optional, Union

import torch

from .directions import _as_latents as _latents  # one reader of [N, latent_dim] codes
from ..core.errors import LatentAuditError
from ..core.latent import Direction
from ..core.errors import DirectionValidityWarning  # its torch-free home; re-exported here

__all__ = [
    "DirectionValidityWarning", "check_continuity", "check_independence", "realism_limit", "check_realism",
    "validity_report",
]


def _basis(direction, dim: int, dtype=torch.float32) -> torch.Tensor:
    if isinstance(direction, Direction):
        return direction.basis(dim, dtype=dtype)
    t = torch.as_tensor(direction, dtype=torch.float64)
    return Direction.subspace(t if t.dim() == 2 else t.reshape(-1, 1)).basis(dim, dtype=dtype)


def _name(direction, default="direction") -> str:
    return getattr(direction, "name", None) or default


def _decode(decoder, z, chunk=1024):
    with torch.no_grad():
        outs = [decoder(z[i:i + chunk]) for i in range(0, z.shape[0], chunk)]
    outs = [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
    return torch.cat(outs).reshape(z.shape[0], -1).float()


def _emit(report: dict, warn: bool):
    if warn:
        for p in report["problems"]:
            warnings.warn(DirectionValidityWarning(f"direction {report['direction']!r}: {p}"), stacklevel=3)
    return report


def _f(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else (float("inf") if x > 0 else float("nan"))


# -------------------------------------------------------------------------- continuity
def check_continuity(decoder: Callable, seeds, direction, eps: float, *, n_steps: int = 32,
                     max_jump_ratio: float = 8.0, max_deviation: float = 0.5,
                     max_lipschitz: Optional[float] = None, warn: bool = True) -> dict:
    """Finite-difference continuity of ``decoder`` along ``direction`` on ``[-eps, eps]``.

    For each seed and basis vector ``v`` the path ``g(z0 + t v)`` is decoded at
    ``n_steps + 1`` evenly spaced ``t``. Reported:

    * ``lipschitz``: the largest finite-difference slope ``|g(t_{i+1}) - g(t_i)| / dt``
      (L2 over the output; a lower estimate of the Lipschitz constant along the path);
    * ``jump_ratio``: per path, largest slope over median slope, then its maximum over
      seeds: a jump (discontinuity, or a very steep part) makes it large even when the
      overall scale is unknown; flagged above ``max_jump_ratio`` (default 8);
    * ``deviation``: per path, the largest distance between ``g(t)`` and the straight
      line from ``g(-eps)`` to ``g(eps)``, relative to that line's length; its median over
      seeds is flagged above ``max_deviation`` (default 0.5: the path bends away from the
      pixel-space interpolation by more than half the endpoint distance, so it passes
      through something that is neither endpoint).
    * ``max_lipschitz``: optional absolute bound on ``lipschitz``.
    """
    z = _latents(seeds)
    if eps <= 0 or not math.isfinite(eps):
        raise LatentAuditError(f"eps must be a finite number > 0, got {eps!r}")
    V = _basis(direction, z.shape[1], z.dtype)
    ts = torch.linspace(-eps, eps, n_steps + 1, dtype=z.dtype)
    dt = float(ts[1] - ts[0])
    slopes_max, ratios, devs, total = [], [], [], []
    per_column = []
    for j in range(V.shape[1]):
        pts = z[:, None, :] + ts[None, :, None] * V[:, j][None, None, :]
        x = _decode(decoder, pts.reshape(-1, z.shape[1])).reshape(z.shape[0], n_steps + 1, -1)
        steps = (x[:, 1:] - x[:, :-1]).norm(dim=2) / dt  # [N, n_steps]
        med = steps.median(1).values
        ratio = steps.amax(1) / med.clamp(min=1e-12 * float(steps.amax().clamp(min=1e-30)))
        ratio = torch.where(steps.amax(1) <= 1e-12, torch.ones_like(ratio), ratio)
        alpha = ((ts - ts[0]) / (ts[-1] - ts[0]))[None, :, None]
        line = x[:, :1] * (1 - alpha) + x[:, -1:] * alpha
        span = (x[:, -1] - x[:, 0]).norm(dim=1)
        dev = (x - line).norm(dim=2).amax(1) / span.clamp(min=1e-12)
        dev = torch.where(span <= 1e-12, torch.zeros_like(dev), dev)
        slopes_max.append(steps.amax(1))
        ratios.append(ratio)
        devs.append(dev)
        total.append(steps.sum(1) * dt)
        per_column.append({"lipschitz": _f(steps.amax()), "median_slope": _f(steps.median()),
                           "jump_ratio": _f(ratio.max()), "deviation_median": _f(dev.median())})
    slope = torch.stack(slopes_max).amax(0)
    ratio = torch.stack(ratios).amax(0)
    dev = torch.stack(devs).amax(0)
    report = {
        "check": "continuity", "direction": _name(direction), "eps": float(eps), "n_seeds": int(z.shape[0]),
        "n_steps": int(n_steps), "lipschitz": _f(slope.max()), "lipschitz_median": _f(slope.median()),
        "jump_ratio": _f(ratio.max()), "jump_ratio_median": _f(ratio.median()),
        "deviation_median": _f(dev.median()), "deviation_max": _f(dev.max()),
        "path_length_median": _f(torch.stack(total).sum(0).median()),
        "thresholds": {"max_jump_ratio": max_jump_ratio, "max_deviation": max_deviation,
                       "max_lipschitz": max_lipschitz},
        "columns": per_column, "problems": [],
    }
    worst = int(ratio.argmax())
    if report["jump_ratio"] > max_jump_ratio:
        report["problems"].append(
            f"decoder output jumps along the direction: the steepest step is {report['jump_ratio']:.1f}x the "
            f"median step (seed {worst}; threshold {max_jump_ratio:g})")
    if report["deviation_median"] > max_deviation:
        report["problems"].append(
            f"decoded path strays from the interpolation between its endpoints by "
            f"{report['deviation_median']:.2f} of their distance (median over seeds; threshold {max_deviation:g})")
    if max_lipschitz is not None and report["lipschitz"] > max_lipschitz:
        report["problems"].append(f"finite-difference Lipschitz estimate {report['lipschitz']:.3g} exceeds "
                                  f"{max_lipschitz:g}")
    report["ok"] = not report["problems"]
    return _emit(report, warn)


# ------------------------------------------------------------------------ independence
def _probe_fn(probe, decoder, dim):
    """(callable on latents, linear normal or None)."""
    if isinstance(probe, Direction) or torch.is_tensor(probe) or isinstance(probe, (list, tuple)):
        w = _basis(probe, dim, torch.float32)[:, 0]
        return (lambda z: z.float() @ w), w
    weight = getattr(probe, "weight", None)
    if callable(probe) and torch.is_tensor(weight) and weight.dim() == 1 and weight.numel() == dim \
            and hasattr(probe, "bias") and not isinstance(probe, torch.nn.Module):
        return (lambda z: probe(z)), weight.float() / weight.float().norm()  # a directions.LinearProbe
    if not callable(probe):
        raise LatentAuditError(f"a probe must be a callable, a Direction or a latent vector; got {type(probe).__name__}")
    if decoder is not None:
        def on_images(z):
            with torch.no_grad():
                x = decoder(z)
                x = x[0] if isinstance(x, (tuple, list)) else x
                return torch.as_tensor(probe(x)).reshape(z.shape[0], -1)[:, 0].float()
        return on_images, None

    def on_latents(z):
        with torch.no_grad():
            return torch.as_tensor(probe(z)).reshape(z.shape[0], -1)[:, 0].float()
    return on_latents, None


def check_independence(seeds, direction, eps: float, probes: Mapping[str, object], *,
                       decoder: Optional[Callable] = None, target: Optional[str] = None,
                       max_effect: float = 0.5, max_relative: float = 0.5, warn: bool = True) -> dict:
    """How much moving along ``direction`` by ``+-eps`` changes *other* attributes.

    ``probes``: ``{name: probe}``; a probe is a linear latent probe (a ``Direction`` or a
    ``[d]`` vector: the score is the projection ``v . z``; or a ``directions.LinearProbe``)
    or a callable returning one score per sample, applied to the decoded images when
    ``decoder`` is given (e.g. ``ink_mass``) and to the latent codes otherwise.
    ``target``: the name of the direction's own probe (it is expected to change).

    Per probe: ``effect`` = mean over seeds of ``|p(z0 + eps v) - p(z0 - eps v)| / 2``
    divided by the probe's standard deviation over the seeds (attribute change in units of
    its natural spread), and ``relative`` = that effect over the target probe's effect
    (when a target is given); for linear probes also ``cosine`` between the direction and
    the probe normal. A non-target probe is flagged when ``effect > max_effect`` (default
    0.5 std) or, with a target, ``relative > max_relative`` (default 0.5). For a subspace
    the largest effect over its basis vectors is reported.
    """
    z = _latents(seeds)
    if eps <= 0 or not math.isfinite(eps):
        raise LatentAuditError(f"eps must be a finite number > 0, got {eps!r}")
    if not probes:
        raise LatentAuditError("check_independence needs at least one probe")
    if target is not None and target not in probes:
        raise LatentAuditError(f"target {target!r} is not one of the probes {list(probes)}")
    V = _basis(direction, z.shape[1], z.dtype)
    results: Dict[str, dict] = {}
    for name, probe in probes.items():
        fn, normal = _probe_fn(probe, decoder, z.shape[1])
        base = fn(z)
        spread = float(base.std()) if base.numel() > 1 else 0.0
        change = 0.0
        for j in range(V.shape[1]):
            up, down = fn(z + eps * V[:, j]), fn(z - eps * V[:, j])
            change = max(change, float(((up - down).abs() / 2).mean()))
        r = {"change": _f(change), "spread": _f(spread),
             "effect": _f(change / spread) if spread > 0 else (0.0 if change == 0 else float("inf"))}
        if normal is not None:
            r["cosine"] = _f(torch.linalg.vector_norm(V.T @ normal.to(V)))
        results[name] = r
    if target is not None:  # in units of each attribute's spread, so units cancel
        t_effect = results[target]["effect"]
        for name, r in results.items():
            r["relative"] = _f(r["effect"] / t_effect) if t_effect > 0 else float("inf")
    problems = []
    for name, r in results.items():
        if name == target:
            continue
        if r["effect"] > max_effect:
            problems.append(f"moving +-{eps:g} along it changes {name!r} by {r['effect']:.2f} of that attribute's "
                            f"spread (threshold {max_effect:g})")
        elif target is not None and r.get("relative", 0.0) > max_relative:
            problems.append(f"it changes {name!r} {r['relative']:.2f}x as much as its own attribute {target!r} "
                            f"(threshold {max_relative:g})")
    entangled = [n for n in results if n != target and (results[n]["effect"] > max_effect or
                                                       (target is not None and results[n].get("relative", 0.0) >
                                                        max_relative))]
    if target is not None and results[target]["effect"] < 1e-6:
        problems.append(f"it does not change its own attribute {target!r}")
    report = {"check": "independence", "direction": _name(direction), "eps": float(eps),
              "n_seeds": int(z.shape[0]), "target": target, "probes": results, "entangled": entangled,
              "thresholds": {"max_effect": max_effect, "max_relative": max_relative}, "problems": problems,
              "ok": not problems}
    return _emit(report, warn)


# ----------------------------------------------------------------------------- realism
def _knn_dist(q: torch.Tensor, ref: torch.Tensor, k: int, exclude_self: bool = False, chunk: int = 2048):
    out = []
    for i in range(0, q.shape[0], chunk):
        d = torch.cdist(q[i:i + chunk].float(), ref.float())
        kk = k + 1 if exclude_self else k
        out.append(d.topk(kk, dim=1, largest=False).values[:, kk - 1])
    return torch.cat(out).double()


def _scores(method, data, pts, *, k, decoder, encoder, fit):
    """Out-of-distribution score of ``pts`` (larger = less typical); ``fit`` caches."""
    if method == "gaussian":
        if "mu" not in fit:
            X = data.double()
            mu = X.mean(0)
            cov = torch.cov(X.T).reshape(X.shape[1], X.shape[1])
            cov = cov + 1e-6 * cov.diagonal().mean() * torch.eye(X.shape[1], dtype=X.dtype)
            fit["mu"], fit["L"] = mu, torch.linalg.cholesky(cov)
        y = torch.linalg.solve_triangular(fit["L"], (pts.double() - fit["mu"]).T, upper=False)
        return y.pow(2).sum(0).sqrt()
    if method == "knn":
        return _knn_dist(pts, data, k)
    if method == "reconstruction":
        if decoder is None or encoder is None:
            raise LatentAuditError("method='reconstruction' needs both encoder and decoder")
        out = []
        with torch.no_grad():
            for i in range(0, pts.shape[0], 1024):
                x = decoder(pts[i:i + 1024])
                x = x[0] if isinstance(x, (tuple, list)) else x
                z2 = encoder(x)
                z2 = z2[0] if isinstance(z2, (tuple, list)) else z2
                x2 = decoder(z2)
                x2 = x2[0] if isinstance(x2, (tuple, list)) else x2
                out.append((x2 - x).reshape(x.shape[0], -1).norm(dim=1).double())
        return torch.cat(out)
    raise LatentAuditError(f"method must be 'knn', 'gaussian' or 'reconstruction', got {method!r}")


def realism_limit(data_latents, direction, seeds=None, *, method: str = "knn", quantile: float = 0.99,
                  max_outside: float = 0.1, eps_max: Optional[float] = None, n_eps: int = 33, n_along: int = 9,
                  k: int = 5, decoder: Optional[Callable] = None, encoder: Optional[Callable] = None,
                  max_seeds: int = 256, eps: Optional[float] = None, warn: bool = True) -> dict:
    """The largest eps for which latent boxes along ``direction`` stay realistic.

    An out-of-distribution score is calibrated on ``data_latents`` (the encoded data):
    ``"knn"`` (default): distance to the k-th nearest data code (leave-one-out on the data);
    ``"gaussian"``: Mahalanobis distance under the data's mean and covariance;
    ``"reconstruction"``: ``|g(e(g(z))) - g(z)|``, how far decoding, re-encoding and decoding
    again moves the sample (needs ``encoder`` and ``decoder``; off-manifold codes decode to
    images the encoder does not map back). The threshold is its ``quantile`` over the data
    codes (so ~1% of the data itself counts as "outside" at the default 0.99; for
    ``"reconstruction"`` at least 1e-3 of the typical decoded norm, so float noise of a
    near-perfect autoencoder does not define the manifold).

    For each ``eps`` on a grid up to ``eps_max`` (default: 4 times the data's standard
    deviation along the direction), the seeds' boxes ``z0 + V t`` are sampled (``n_along``
    points per basis vector, corners for subspaces) and ``outside(eps)`` is the fraction
    of seeds with any sample over the threshold. The limit is the largest grid eps with
    ``outside <= max(max_outside, outside(0) + 0.02)`` such that every smaller grid eps
    passes too. Returns ``{"eps": limit, "curve": [[eps, outside], ...], ...}``; with ``eps=``
    given, warns (``DirectionValidityWarning``) when it exceeds the limit.
    """
    data = _latents(data_latents)
    z = data if seeds is None else _latents(seeds)
    if z.shape[0] > max_seeds:
        idx = torch.linspace(0, z.shape[0] - 1, max_seeds).round().long()
        z = z[idx]
    if not 0 < quantile < 1:
        raise LatentAuditError(f"quantile must be in (0, 1), got {quantile!r}")
    V = _basis(direction, data.shape[1], data.dtype)
    kdim = V.shape[1]
    if method == "knn":
        # the k-th neighbour of a data code among the *others*: at most N - 1 of them (with 4
        # seeds and the default k=5 there is no 5th neighbour: use the farthest there is)
        if data.shape[0] < 2:
            raise LatentAuditError(f"realism (knn) needs at least 2 data latent codes, got {data.shape[0]}: "
                                   f"give the LatentSpace data_latents, or more seeds")
        k = max(1, min(int(k), data.shape[0] - 1))
    if eps_max is None:
        eps_max = 4.0 * float((data @ V).std(0).max())
    fit: dict = {}
    if method == "knn":
        ref = _knn_dist(data, data, k, exclude_self=True)
    elif method == "reconstruction":
        sub = data if data.shape[0] <= 2048 else data[torch.linspace(0, data.shape[0] - 1, 2048).round().long()]
        ref = _scores(method, data, sub, k=k, decoder=decoder, encoder=encoder, fit=fit)
    else:
        ref = _scores(method, data, data, k=k, decoder=decoder, encoder=encoder, fit=fit)
    thr = float(torch.quantile(ref.double(), quantile))
    if method == "reconstruction":
        # a near-perfect autoencoder has round-trip errors at float-noise level: do not let
        # noise define the data manifold (floor: 1e-3 of the typical decoded norm)
        scale = float(_decode(decoder, data[:256]).norm(dim=1).median())
        thr = max(thr, 1e-3 * scale)
    # offsets (in units of eps) sampled per box: the segment grid per basis vector + corners
    offs = []
    line = torch.linspace(-1, 1, n_along, dtype=data.dtype)
    for j in range(kdim):
        o = torch.zeros(n_along, kdim, dtype=data.dtype)
        o[:, j] = line
        offs.append(o)
    if kdim > 1:
        corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=data.dtype)] * kdim).reshape(-1, kdim)
        offs.append(corners)
    offs = torch.cat(offs)  # [P, k]
    grid = torch.linspace(0.0, float(eps_max), n_eps)
    curve = []
    for e in grid.tolist():
        pts = z[:, None, :] + e * (offs @ V.T)[None]
        s = _scores(method, data, pts.reshape(-1, data.shape[1]), k=k, decoder=decoder, encoder=encoder, fit=fit)
        out = (s.reshape(z.shape[0], -1) > thr).any(1).double().mean()
        curve.append([e, float(out)])
    allowed = max(max_outside, curve[0][1] + 0.02)
    limit = 0.0
    for e, frac in curve:
        if frac > allowed:
            break
        limit = e
    saturated = limit >= float(eps_max) - 1e-12
    report = {"check": "realism", "direction": _name(direction), "method": method, "eps": float(limit),
              "eps_max": float(eps_max), "saturated": bool(saturated), "threshold": thr, "quantile": quantile,
              "max_outside": max_outside, "allowed_outside": allowed, "outside_at_zero": curve[0][1],
              "n_seeds": int(z.shape[0]), "curve": curve, "problems": []}
    if method == "knn":
        report["k"] = int(k)
    if eps is not None and float(eps) > limit and not saturated:
        frac = _outside_at(curve, float(eps))
        report["problems"].append(f"eps={float(eps):g} is beyond its realism limit {limit:.3g} ({method}): "
                                  f"about {frac:.0%} of the boxes reach latent codes unlike the data")
    report["ok"] = not report["problems"]
    return _emit(report, warn)


def _outside_at(curve, eps):
    for e, frac in curve:
        if e >= eps:
            return frac
    return curve[-1][1]


def check_realism(data_latents, direction, eps: float, seeds=None, **kwargs) -> dict:
    """``realism_limit`` with ``eps`` given: flags (and warns) when eps is beyond the limit."""
    return realism_limit(data_latents, direction, seeds, eps=eps, **kwargs)


def validity_report(latent_space, direction: Union[str, Direction], eps: float, seeds, *,
                    data_latents=None, probes: Optional[Mapping[str, object]] = None, target: Optional[str] = None,
                    warn: bool = True, **kwargs) -> dict:
    """All three checks for one direction of a ``LatentSpace`` (continuity and the
    reconstruction-free realism limit need its decoder / the data latents; independence
    runs when ``probes`` are given). Returns ``{"direction", "eps", "ok", "continuity",
    "independence", "realism"}`` (absent checks are ``None``)."""
    d = latent_space.direction(direction) if isinstance(direction, str) else direction
    z = _latents(seeds[0] if isinstance(seeds, tuple) else seeds)
    cont = check_continuity(latent_space.decoder, z, d, eps, warn=warn) if latent_space.decoder is not None else None
    ind = check_independence(z, d, eps, probes, decoder=latent_space.decoder, target=target, warn=warn) \
        if probes else None
    real = realism_limit(data_latents if data_latents is not None else z, d, z, eps=eps, warn=warn, **kwargs)
    checks = [c for c in (cont, ind, real) if c is not None]
    return {"direction": _name(d, str(direction)), "eps": float(eps), "ok": all(c["ok"] for c in checks),
            "continuity": cont, "independence": ind, "realism": real}

"""The auto_LiRPA backend behind the ladder's engine interface (``auto_lirpa:<method>``).

Each box ``x0 + V t`` is handed to auto_LiRPA as the input-space box ``c +- sum_j |G_j|``:
exact for axis-aligned directions (``Direction.axis``, ``verify_box``), the sound bounding
box of the segment/parallelotope otherwise.
"""
from __future__ import annotations

from typing import List

import torch


def make_bound_fn(model, problem, engine: str, notes: List[str], graph=None):
    """Return ``(idx, tl, tu, C, d) -> upper [n, m]``, or None (with a note) when
    auto_LiRPA is missing or cannot handle the model: the ladder then only falsifies.

    auto_LiRPA bounds the exact real function of the weights (in its own arithmetic); the
    model as it runs rounds every op. So auto_LiRPA computes in float64 on a private copy,
    and each bound gets ``|C| . D`` added, ``D`` the native bound on how far the model's
    float evaluation can be from the exact function over the box (``segment.spec_deviation``
    over ``graph``, the checked native lowering). Without ``graph`` (a model the native engine
    cannot lower) there is no such bound, and so no proof."""
    method = engine.partition(":")[2] or "crown"
    try:
        from .lirpa import LirpaUnsupported, lirpa_spec_bounds
        from .lirpa_compat import import_auto_lirpa

        import_auto_lirpa()
    except ImportError as exc:
        notes.append(f"auto_LiRPA unavailable ({exc}); falling back to falsification only")
        return None
    if not isinstance(model, torch.nn.Module):
        notes.append("auto_LiRPA needs an nn.Module; falling back to falsification only")
        return None
    from . import lirpa as _lirpa
    from .graph import untraceable
    from .ops import UnsupportedLayer
    from .segment import spec_deviation

    if graph is None:
        notes.append("auto_LiRPA bounds the exact function, not the model's float rounding, and the native engine "
                     "could not lower the model to bound that rounding; falling back to falsification only")
        return None

    # auto_LiRPA traces the model once (jit.trace) and bounds that trace: a model whose
    # forward branches in Python on the input's values is baked in for the example only
    why = untraceable(model, problem.x0[:2].to(problem.x_dtype))
    if why is not None:
        notes.append(f"auto_LiRPA cannot bound this model: {why}; falling back to falsification only")
        return None
    # and no BoundedModule built by an earlier call: it copied the model as it was then
    # (a Python attribute read in forward, a swapped slope are not in its fingerprint)
    with _lirpa._LOCK:
        _lirpa._CACHE.pop(model, None)
    V = problem.V.reshape(problem.V.shape[0], problem.k, -1)
    if not bool(((V != 0).sum(-1) <= 1).all()):
        notes.append("auto_LiRPA bounds the input-space bounding box of a non-axis direction (looser)")
    state = {"failed": False}

    def bound_fn(idx, tl, tu, C, d):
        c, G = problem.center_gens(idx, tl, tu)
        rad = G.abs().sum(1)
        if state["failed"]:
            return torch.full(C.shape[:2], torch.inf, dtype=c.dtype, device=c.device)
        try:
            # the float64 box itself (float64 arithmetic: auto_LiRPA's own rounding is ~1e-16
            # relative, far inside the ladder's final margin)
            _, ub = lirpa_spec_bounds(model, c - rad, c + rad, C.double(), method=method, dtype=torch.float64)
            gd = graph.dtype or c.dtype
            # the model's rounding, per row (CROWN intermediate bounds: auto_LiRPA's class of bound)
            slack = spec_deviation(graph, c.to(gd), G.to(gd), C.to(gd), crown=True).to(c.dtype)
            if gd != torch.float64:  # |C| rounded to the graph's dtype: at most u relative
                slack = slack * (1 + 2.0 ** -21)
        except (LirpaUnsupported, UnsupportedLayer) as exc:
            notes.append(f"auto_LiRPA: {exc}; falling back to falsification only")
            state["failed"] = True
            return torch.full(C.shape[:2], torch.inf, dtype=c.dtype, device=c.device)
        out = ub.to(c.dtype) + d.to(c.dtype) + slack
        return torch.nan_to_num(out, nan=torch.inf)

    return bound_fn

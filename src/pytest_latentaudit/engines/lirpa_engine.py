"""The auto_LiRPA backend behind the ladder's engine interface (``auto_lirpa:<method>``).

Each box ``x0 + V t`` is handed to auto_LiRPA as the input-space box ``c +- sum_j |G_j|``:
exact for axis-aligned directions (``Direction.axis``, ``verify_box``), the sound bounding
box of the segment/parallelotope otherwise.
"""
from __future__ import annotations

from typing import List

import torch


def make_bound_fn(model, problem, engine: str, notes: List[str]):
    """Return ``(idx, tl, tu, C, d) -> upper [n, m]``, or None (with a note) when
    auto_LiRPA is missing or cannot handle the model: the ladder then only falsifies."""
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
            lo64, hi64 = c - rad, c + rad
            lo, hi = lo64.float(), hi64.float()  # rounded outward: the float32 box covers the float64 one
            lo = torch.where(lo.double() > lo64, torch.nextafter(lo, torch.full_like(lo, -torch.inf)), lo)
            hi = torch.where(hi.double() < hi64, torch.nextafter(hi, torch.full_like(hi, torch.inf)), hi)
            _, ub = lirpa_spec_bounds(model, lo, hi, C.float(), method=method)
        except LirpaUnsupported as exc:
            notes.append(f"auto_LiRPA: {exc}; falling back to falsification only")
            state["failed"] = True
            return torch.full(C.shape[:2], torch.inf, dtype=c.dtype, device=c.device)
        return ub.to(c.dtype) + d.to(c.dtype)

    return bound_fn

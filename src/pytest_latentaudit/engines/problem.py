"""A batch of verification queries: one box per seed, ``x = x0 + sum_j t_j V_j`` with
``t in [tl, tu]``, and the per-box spec."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .memory import on_halves


class Problem:
    def __init__(self, model: Callable, x0: torch.Tensor, V: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor,
                 spec, labels: Optional[torch.Tensor] = None, clamp_lower: Optional[torch.Tensor] = None,
                 clamp_upper: Optional[torch.Tensor] = None, x_dtype: Optional[torch.dtype] = None):
        """``x0`` ``[N, *S]``; ``V`` ``[N or 1, k, *S]``; ``tl, tu`` ``[N, k]`` (float64, so the
        box is the one the user asked for, not a float32 rounding of it). ``clamp_*`` (for
        ``verify_box``) keep rounding from pushing points outside the user's box;
        ``x_dtype`` is the dtype the model is fed (x0's by default)."""
        self.model = model
        self.x_dtype = x_dtype or x0.dtype
        tl, tu = tl.to(torch.float64), tu.to(torch.float64)
        self.x0, self.V, self.tl, self.tu = x0, V, tl, tu
        self.spec, self.labels = spec, labels
        self.clamp_lower, self.clamp_upper = clamp_lower, clamp_upper
        self.n, self.k = tl.shape

    @property
    def input_shape(self):
        return tuple(self.x0.shape[1:])

    def _V(self, idx):
        return self.V if self.V.shape[0] == 1 else self.V[idx]

    def point(self, idx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model input at offsets ``t``: computed in float64, fed in ``x_dtype``."""
        dt = torch.float64
        V = self._V(idx).to(dt)
        t = t.to(dt)
        x0 = self.x0[idx].to(dt)
        if V.shape[0] == 1:
            x = x0 + torch.einsum("nk,kd->nd", t, V[0].reshape(self.k, -1)).reshape(-1, *self.input_shape)
        else:
            x = x0 + torch.einsum("nk,nkd->nd", t, V.reshape(V.shape[0], self.k, -1)).reshape(
                -1, *self.input_shape)
        x = x.to(self.x_dtype)
        if self.clamp_lower is not None:
            x = torch.maximum(torch.minimum(x, self.clamp_upper[idx]), self.clamp_lower[idx])
        return x

    def center_gens(self, idx: torch.Tensor, tl: torch.Tensor, tu: torch.Tensor):
        """Centre and generators (float64) of sub-boxes ``[tl, tu]`` of seeds ``idx``, for
        the bound engines. Unclamped: the box is ``x0 + V t``; the few float64 ulps of
        rounding here are covered by the input slack in bounds.py."""
        n = idx.numel()
        dt = torch.float64
        V = self._expand_V(idx).to(dt)
        tl, tu = tl.to(dt), tu.to(dt)
        c = self.x0[idx].reshape(n, -1).to(dt) + torch.einsum("nk,nkd->nd", (tl + tu) / 2, V)
        G = V * ((tu - tl) / 2)[:, :, None]
        return c.reshape(n, *self.input_shape), G.reshape(n, self.k, *self.input_shape)

    def _expand_V(self, idx):
        V = self._V(idx).reshape(-1, self.k, int(self.x0[0].numel()))
        return V.expand(idx.numel(), -1, -1)

    def model_forward(self, x):
        """The model's outputs on ``x``, flattened per item; a batch that does not fit in
        memory runs in halves (``memory.on_halves``)."""
        return on_halves(lambda sl: self._forward(x[sl]), x.shape[0], torch.cat)

    def _forward(self, x):
        y = self.model(x.clone())  # a forward may write into its input: not into our points
        if isinstance(y, (tuple, list)) and y:
            y = y[0]
        if not torch.is_tensor(y):
            from ..core.errors import LatentAuditError

            raise LatentAuditError(f"the model returned a {type(y).__name__}; it must return a tensor of outputs "
                                   f"(or a tuple or list whose first item is that tensor)")
        return y.reshape(y.shape[0], -1)

    def _labels(self, idx):
        return None if self.labels is None else self.labels[idx]

    def margin(self, y, idx):
        return self.spec.margin(y, self._labels(idx)).to(self.tl.dtype)

    def holds(self, y, idx):
        return self.spec.holds(y, self._labels(idx))

    def rows(self, y_center, idx):
        return self.spec.rows(y_center, self._labels(idx))

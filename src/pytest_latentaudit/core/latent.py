"""Latent spaces and semantic directions.

A direction is a named variation in Z: one axis, a unit vector, or a k-dimensional
subspace. A test perturbs a seed ``z0`` only along it, so the input set is the box
``z0 + V t`` with ``t in [-eps, eps]^k`` and ``V`` the ``[d, k]`` basis. Keeping k small
(1..4) is what makes proofs cheap.

torch is imported lazily: conftest files build these objects at import time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

from .errors import LatentAuditError


@dataclass
class Direction:
    kind: str  # "axis" | "vector" | "subspace"
    data: Any
    name: Optional[str] = None

    @classmethod
    def axis(cls, index: int, name: Optional[str] = None) -> "Direction":
        if int(index) != index or index < 0:
            raise LatentAuditError(f"Direction.axis needs a non-negative integer, got {index!r}")
        return cls("axis", int(index), name)

    @classmethod
    def vector(cls, v, name: Optional[str] = None) -> "Direction":
        return cls("vector", v, name)

    @classmethod
    def subspace(cls, V, name: Optional[str] = None) -> "Direction":
        """``V`` is ``[d, k]`` (columns span the subspace); it is orthonormalised."""
        return cls("subspace", V, name)

    @property
    def label(self) -> str:
        """The name a direction is recorded under (``direction_label``)."""
        return direction_label(self)

    @property
    def k(self) -> int:
        if self.kind == "subspace":
            import torch

            return int(torch.as_tensor(self.data).shape[1])
        return 1

    def basis(self, dim: int, dtype=None, device=None):
        """The ``[dim, k]`` orthonormal basis of this direction in a ``dim``-d latent space."""
        import torch

        dtype = dtype or torch.float32
        label = f"direction {self.name!r}" if self.name else "direction"
        if self.kind == "axis":
            if self.data >= dim:
                raise LatentAuditError(f"{label}: axis {self.data} is out of range for a {dim}-d latent space")
            V = torch.zeros(dim, 1, dtype=dtype, device=device)
            V[self.data, 0] = 1.0
            return V
        V = torch.as_tensor(self.data, dtype=torch.float64).detach().cpu()
        if self.kind == "vector":
            V = V.reshape(-1, 1)
        if V.dim() != 2 or V.shape[0] != dim:
            raise LatentAuditError(
                f"{label}: expected shape [{dim}] (vector) or [{dim}, k] (subspace), got {tuple(V.shape)}")
        if not torch.isfinite(V).all():
            raise LatentAuditError(f"{label}: contains NaN or inf")
        if V.shape[1] > V.shape[0] or V.shape[1] == 0:
            raise LatentAuditError(f"{label}: needs 1..{dim} columns, got {V.shape[1]}")
        Q, R = torch.linalg.qr(V)
        if (R.diagonal().abs() < 1e-8 * max(1.0, float(R.abs().max()))).any():
            raise LatentAuditError(f"{label}: its vectors are linearly dependent (or zero)")
        # keep the user's orientation for vectors: t > 0 moves along v
        Q = Q * torch.sign(R.diagonal())[None]
        return Q.to(dtype=dtype, device=device)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "k": self.k}
        if self.kind == "axis":
            d["axis"] = self.data
        return d


def direction_label(direction) -> str:
    """THE name a test's direction is recorded under (spec sheet, JUnit properties, reports): a
    string names itself; a ``Direction`` its ``name``, else ``axis<i>`` for an unnamed axis (every
    unnamed axis was recorded as ``"axis"``, so records of different axes mixed under one name)
    or its kind (``"vector"``, ``"subspace"``); a plain tensor ``"custom"``."""
    if isinstance(direction, str):
        return direction
    if isinstance(direction, Direction):
        if direction.name:
            return direction.name
        return f"axis{int(direction.data)}" if direction.kind == "axis" else direction.kind
    return "custom"


class LatentSpace:
    """An encoder ``e: X -> Z``, an optional decoder ``g: Z -> X`` and named directions."""

    def __init__(self, encoder: Optional[Callable] = None, decoder: Optional[Callable] = None,
                 directions: Optional[Mapping[str, Direction]] = None, name: str = "latent",
                 data_latents=None):
        """``data_latents``: encoded data ``[M, d]`` that calibrates the realism check of
        each direction (without it, the test's seeds are used)."""
        self.encoder = encoder
        self.decoder = decoder
        self.data_latents = data_latents
        self.name = name
        self.directions: Dict[str, Direction] = {}
        for key, d in (directions or {}).items():
            if not isinstance(d, Direction):
                raise LatentAuditError(
                    f"directions[{key!r}] must be a Direction (Direction.axis / vector / subspace), "
                    f"got {type(d).__name__}")
            if d.name is None:
                d.name = key
            self.directions[key] = d

    def direction(self, name_or_direction) -> Direction:
        if isinstance(name_or_direction, Direction):
            return name_or_direction
        try:
            return self.directions[name_or_direction]
        except KeyError:
            known = ", ".join(sorted(self.directions)) or "none declared"
            raise LatentAuditError(
                f"unknown direction {name_or_direction!r}; the latent space declares: {known}") from None

    def encode(self, x):
        if self.encoder is None:
            raise LatentAuditError("this LatentSpace has no encoder")
        import torch

        with torch.no_grad():
            z = self.encoder(x)
        if isinstance(z, (tuple, list)):  # VAEs often return (mu, logvar)
            z = z[0]
        return z

    def decode(self, z):
        if self.decoder is None:
            raise LatentAuditError("this LatentSpace has no decoder")
        import torch

        with torch.no_grad():
            return self.decoder(z)

    def in_spec(self, x, sheet, directions=None, *, eps=None, encoded: bool = False, model=None):
        """Deployment guard: encode ``x`` (or take latent codes with ``encoded=True``) and check
        them against the spec sheet's verified latent ranges, projecting with this space's
        directions; ``model``: whose ranges (``deploy.in_spec``). Returns ``{direction: bool [N],
        ..., "all": bool [N]}``."""
        from ..sheet.deploy import in_spec

        z = x if encoded else self.encode(x)
        return in_spec(sheet, z, directions, bases=dict(self.directions), eps=eps, model=model)

    def seeds(self, x, labels=None):
        """Encode inputs into seeds ``(z, labels)`` for ``latent_audit``."""
        return self.encode(x), labels

    def __repr__(self) -> str:
        return f"LatentSpace({self.name!r}, directions={list(self.directions)})"

"""hypothesis strategies over latent boxes.

* :func:`latent_points` draws points of a test's input set: a seed, then an offset ``t``
  in ``[-eps, eps]^k`` along the direction, and returns a :class:`LatentPoint` with the
  latent code ``z = z0 + V t``. It shrinks towards the seed (``t -> 0``) and towards seed 0,
  so a failing property test reports the smallest offset it could find.
* :func:`latent_boxes` draws whole boxes (seed, orthonormal basis, radius) for property
  tests of engines: "a verified box has no failing sample", "a counterexample lies in its
  box".

Example (a user's property test; ``head`` and ``SEEDS`` built at import time)::

    from hypothesis import given, settings
    from pytest_latentaudit import Direction
    from pytest_latentaudit.toolkit.strategies import latent_points

    @settings(max_examples=200, deadline=None)
    @given(p=latent_points(None, Direction.axis(3), eps=0.5, seeds=(SEEDS, LABELS)))
    def test_pose_keeps_label(p):
        assert int(head(p.z[None]).argmax()) == p.label

When seeds or the latent space come from pytest fixtures, draw inside the test with
``st.data()``: ``p = data.draw(latent_points(latent_space, "pose", 0.5, face_seeds))``.

hypothesis and torch are imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from ..core.errors import LatentAuditError

from ..core.latent import Direction, LatentSpace


@dataclass(frozen=True)
class LatentPoint:
    """One drawn point: ``z = z0 + V t`` for seed ``seed_index``; ``label`` when the seeds
    came with labels. Unpacks as ``seed_index, t, z``."""

    seed_index: int
    t: Tuple[float, ...]
    z: Any = field(repr=False)  # torch.Tensor [*latent_shape]
    label: Optional[int] = None
    z0: Any = field(default=None, repr=False)

    def __iter__(self):
        return iter((self.seed_index, self.t, self.z))

    @property
    def batch(self):
        """``z`` with a batch dimension, ready for ``model(p.batch)``."""
        return self.z[None]


@dataclass(frozen=True)
class LatentBox:
    """A drawn box ``z0 + V t``, ``t in [-eps, eps]^k``. ``axes`` is set when ``V`` is made
    of coordinate axes (then :meth:`bounds` is the box exactly)."""

    z0: Any = field(repr=False)  # torch.Tensor [dim]
    V: Any = field(repr=False)  # torch.Tensor [dim, k], orthonormal columns
    eps: float = 0.0
    axes: Optional[Tuple[int, ...]] = None

    @property
    def k(self) -> int:
        return int(self.V.shape[1])

    @property
    def direction(self) -> Direction:
        if self.axes is not None and len(self.axes) == 1:
            return Direction.axis(self.axes[0])
        return Direction.subspace(self.V.double())

    def point(self, t):
        import torch

        t = torch.as_tensor(t, dtype=self.V.dtype)
        return self.z0.to(self.V.dtype) + t @ self.V.T

    def sample(self, n: int, generator=None):
        """``n`` uniform points of the box, ``[n, dim]`` (and their offsets ``[n, k]``)."""
        import torch

        t = (torch.rand(n, self.k, generator=generator, dtype=self.V.dtype) * 2 - 1) * self.eps
        return self.point(t), t

    def bounds(self):
        """The smallest axis-aligned box containing this box: ``(lower, upper)`` ``[dim]``."""
        rad = self.V.abs().sum(1) * self.eps
        return self.z0 - rad, self.z0 + rad

    def __repr__(self) -> str:
        return f"LatentBox(z0={[round(float(v), 4) for v in self.z0]}, axes={self.axes}, eps={self.eps!r}, k={self.k})"


def _as_seeds(seeds):
    import torch

    labels = None
    if isinstance(seeds, tuple) and len(seeds) == 2:
        seeds, labels = seeds
    z = torch.as_tensor(seeds)
    if not z.is_floating_point():
        z = z.float()
    if z.dim() < 2 or z.shape[0] == 0:
        raise LatentAuditError(f"seeds must be latent codes shaped [N, latent_dim] with N >= 1; got {tuple(z.shape)}")
    if labels is not None:
        labels = torch.as_tensor(labels).long().reshape(-1)
        if labels.numel() != z.shape[0]:
            raise LatentAuditError(f"got {z.shape[0]} seeds but {labels.numel()} labels")
    return z.detach(), labels


def _basis(space: Optional[LatentSpace], direction, dim: int, dtype):
    import torch

    if isinstance(direction, str):
        if space is None:
            raise LatentAuditError(f"direction {direction!r} is a name; pass the LatentSpace that declares it")
        direction = space.direction(direction)
    if not isinstance(direction, Direction):
        V = torch.as_tensor(direction, dtype=torch.float64)
        direction = Direction.subspace(V if V.dim() == 2 else V.reshape(-1, 1))
    return direction.basis(dim, dtype=dtype)


def latent_points(space: Optional[LatentSpace], direction, eps: float, seeds, *, resolution: int = 2 ** 24):
    """Strategy of :class:`LatentPoint` in a test's input set.

    ``space``: a :class:`LatentSpace` (needed when ``direction`` is a name) or ``None``;
    ``direction``: a :class:`Direction`, a name, or a ``[d]``/``[d, k]`` tensor;
    ``eps``: the radius; ``seeds``: ``[N, d]`` latent codes or a ``(z, labels)`` pair.

    The seed index is drawn first, then integers ``i_j in [-resolution, resolution]`` and
    ``t_j = eps * (i_j / resolution)`` (rounding is monotone, so ``|t_j| <= eps`` holds
    exactly in floating point). Integers shrink towards 0 by magnitude, so a failing
    example shrinks towards the seed and stops at the smallest failing offset it finds
    (hypothesis's float strategy would shrink to "simple" values such as the corners).
    """
    import torch
    from hypothesis import strategies as st

    eps = float(eps)
    if not (eps >= 0 and eps != float("inf")):
        raise LatentAuditError(f"eps must be a finite number >= 0, got {eps!r}")
    z, labels = _as_seeds(seeds)
    n = z.shape[0]
    shape = tuple(z.shape[1:])
    V = _basis(space, direction, int(z[0].numel()), z.dtype)  # [d, k]
    k = V.shape[1]
    R = int(resolution)
    if R < 1:
        raise LatentAuditError(f"resolution must be >= 1, got {resolution!r}")
    unit = st.integers(-R, R)

    def build(args):
        i, u = args
        t = tuple(float(eps * (v / R)) for v in u)
        tt = torch.tensor(t, dtype=V.dtype)
        zi = z[i] + (V @ tt).reshape(shape)
        return LatentPoint(seed_index=i, t=t, z=zi, label=None if labels is None else int(labels[i]), z0=z[i])

    return st.tuples(st.integers(0, n - 1), st.tuples(*([unit] * k))).map(build)


def latent_boxes(dim: int, k: int = 1, max_eps: float = 1.0, *, min_eps: float = 0.0, scale: float = 3.0,
                 axes_only: bool = False):
    """Strategy of :class:`LatentBox` in a ``dim``-d latent space with ``k`` directions.

    ``z0`` has coordinates in ``[-scale, scale]``; ``eps`` in ``[min_eps, max_eps]``; the
    basis is either ``k`` distinct coordinate axes or (unless ``axes_only``) ``k``
    orthonormalised random vectors. Everything shrinks towards ``z0 = 0``, the first axes
    and ``eps = min_eps`` (``eps`` is drawn on a grid of ``2^24`` steps for that reason).
    """
    import torch
    from hypothesis import strategies as st

    if not 1 <= k <= dim:
        raise LatentAuditError(f"latent_boxes needs 1 <= k <= dim, got k={k}, dim={dim}")
    if not 0 <= min_eps <= max_eps:
        raise LatentAuditError(f"latent_boxes needs 0 <= min_eps <= max_eps, got {min_eps}, {max_eps}")
    coord = st.floats(-scale, scale, allow_nan=False, allow_infinity=False)
    z0s = st.lists(coord, min_size=dim, max_size=dim)
    R = 2 ** 24
    epss = st.integers(0, R).map(lambda i: min(max_eps, min_eps + (max_eps - min_eps) * (i / R)))
    axes = st.lists(st.integers(0, dim - 1), min_size=k, max_size=k, unique=True).map(tuple)

    def from_axes(a):
        V = torch.zeros(dim, k)
        V[list(a), list(range(k))] = 1.0
        return V, a

    def from_vectors(cols):
        A = torch.tensor(cols, dtype=torch.float64).T  # [dim, k]
        V = Direction.subspace(A).basis(dim)  # raises LatentAuditError when degenerate
        return V, None

    def independent(cols):
        A = torch.tensor(cols, dtype=torch.float64).T
        s = torch.linalg.svdvals(A)
        return bool(s.min() > 1e-3 * max(1.0, float(s.max())))

    bases = axes.map(from_axes)
    if not axes_only:
        vecs = st.lists(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=dim, max_size=dim),
                        min_size=k, max_size=k).filter(independent).map(from_vectors)
        bases = bases | vecs

    def build(args):
        z0, (V, a), eps = args
        return LatentBox(z0=torch.tensor(z0, dtype=torch.float32), V=V, eps=float(eps), axes=a)

    return st.tuples(z0s, bases, epss).map(build)

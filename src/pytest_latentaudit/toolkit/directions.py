"""Finding semantic directions in a latent space; every function returns ``Direction`` objects.

* **From labelled attributes** (InterFaceGAN style): fit a linear probe on latent codes,
  ``attribute ~ w . z + b`` (ridge regression for a continuous attribute, logistic
  regression for a binary one), and take its unit normal ``w / |w|``: moving along it
  changes the attribute fastest per latent unit. ``groups=`` (e.g. the class labels) fits
  the probe *within* groups (each group's mean removed first), so the direction changes
  the attribute without moving towards another group: "thicker strokes, same digit".
* **From the decoder**: the top right-singular vectors of the decoder's Jacobian at a set
  of latents (the directions that change the output most), averaged over the points
  through ``mean_i J_i^T J_i``; or principal components of the data's latent codes.
* ``axis`` and ``orthogonalise`` (Gram-Schmidt in the given order) so that the directions
  of a suite are independent.

torch only (no scikit-learn needed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

import torch

from ..core.errors import LatentAuditError

from ..core.latent import Direction

__all__ = [
    "LinearProbe", "fit_probe", "from_attribute", "from_decoder_jacobian", "jacobian_directions", "from_pca",
    "pca_directions", "axis", "orthogonalise", "orthogonalize", "basis_of", "cosine_matrix",
]


def _as_latents(z) -> torch.Tensor:
    z = torch.as_tensor(z).detach()
    if not z.is_floating_point():
        z = z.float()
    if z.dim() != 2:
        raise LatentAuditError(f"latent codes must be [N, latent_dim]; got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise LatentAuditError("latent codes contain NaN or inf")
    return z


def _orient(v: torch.Tensor) -> torch.Tensor:
    """Deterministic sign for sign-ambiguous vectors: largest-magnitude entry positive."""
    i = int(v.abs().argmax())
    return v if v[i] >= 0 else -v


def _group_center(z: torch.Tensor, y: torch.Tensor, groups) -> tuple:
    if groups is None:
        return z - z.mean(0), y - y.mean()
    g = torch.as_tensor(groups).reshape(-1)
    if g.numel() != z.shape[0]:
        raise LatentAuditError(f"groups has {g.numel()} entries for {z.shape[0]} latent codes")
    zc, yc = z.clone(), y.clone()
    for v in torch.unique(g):
        m = g == v
        zc[m] = z[m] - z[m].mean(0)
        yc[m] = y[m] - y[m].mean()
    return zc, yc


# ------------------------------------------------------------------------------ probes
@dataclass
class LinearProbe:
    """``score(z) = weight . z + bias``: a linear attribute predictor on latent codes.

    ``kind`` is ``"linear"`` (regression; ``fit`` is R^2 on the fitting data) or
    ``"logistic"`` (``score`` is a logit; ``fit`` is the accuracy). Callable on ``[N, d]``.
    """

    weight: torch.Tensor
    bias: float
    kind: str = "linear"
    fit: float = float("nan")
    name: Optional[str] = None
    info: dict = field(default_factory=dict)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = torch.as_tensor(z)
        return z.to(self.weight) @ self.weight + self.bias

    @property
    def normal(self) -> torch.Tensor:
        return self.weight / self.weight.norm()

    @property
    def gain(self) -> float:
        """Attribute change per latent unit along ``normal`` (``|weight|``)."""
        return float(self.weight.norm())

    def direction(self, name: Optional[str] = None) -> Direction:
        return Direction.vector(self.normal.clone(), name=name or self.name)


def fit_probe(z, values, *, method: str = "linear", groups=None, alpha: float = 1e-3,
              name: Optional[str] = None, max_iter: int = 50) -> LinearProbe:
    """Fit ``values ~ w . z + b`` on latent codes ``z`` ``[N, d]``.

    ``method="linear"``: ridge regression (``alpha`` times the mean squared latent norm as
    the ridge, so it is scale free) for continuous attributes. ``method="logistic"``:
    L2-regularised logistic regression (Newton's method; ``alpha`` per sample on the
    standardised coefficients) for binary labels (0/1 or bool; InterFaceGAN uses a
    linear SVM, whose normal is close). ``groups``: fit within groups (each group's mean of
    ``z`` and ``values`` removed; for ``"logistic"`` the group means of ``z`` are removed)
    so the probe ignores between-group differences, e.g. the digit identity.
    """
    z = _as_latents(z).double()
    y = torch.as_tensor(values).double().reshape(-1)
    if y.numel() != z.shape[0]:
        raise LatentAuditError(f"got {z.shape[0]} latent codes but {y.numel()} attribute values")
    if not torch.isfinite(y).all():
        raise LatentAuditError("attribute values contain NaN or inf")
    n, d = z.shape
    if method == "linear":
        zc, yc = _group_center(z, y, groups)
        ridge = alpha * float((zc ** 2).sum(1).mean()) + 1e-12
        w = torch.linalg.solve(zc.T @ zc / n + ridge / n * torch.eye(d, dtype=z.dtype), zc.T @ yc / n)
        resid = yc - zc @ w
        r2 = 1.0 - float((resid ** 2).sum() / (yc ** 2).sum().clamp(min=1e-30))
        b = float(y.mean() - z.mean(0) @ w)
        if float(w.norm()) == 0:
            raise LatentAuditError("the attribute does not vary linearly with the latent code (zero probe)")
        return LinearProbe(w.float(), b, "linear", r2, name, {"n": n, "within_groups": groups is not None})
    if method == "logistic":
        uniq = torch.unique(y)
        if not set(uniq.tolist()) <= {0.0, 1.0} or uniq.numel() != 2:
            raise LatentAuditError("method='logistic' needs binary labels (0/1) with both values present")
        zc = z - z.mean(0) if groups is None else _group_center(z, y, groups)[0]
        mu, sd = zc.mean(0), zc.std(0).clamp(min=1e-12)
        x = torch.cat([(zc - mu) / sd, torch.ones(n, 1, dtype=z.dtype)], 1)
        theta = torch.zeros(d + 1, dtype=z.dtype)
        reg = torch.full((d + 1,), 2.0 * alpha * n, dtype=z.dtype)
        reg[-1] = 0.0  # no penalty on the bias
        def objective(th):
            return float(torch.nn.functional.binary_cross_entropy_with_logits(x @ th, y, reduction="sum")
                         + 0.5 * (reg * th * th).sum())

        f = objective(theta)
        for _ in range(max_iter):  # damped Newton's method on the penalised log-likelihood
            p = torch.sigmoid(x @ theta)
            grad = x.T @ (p - y) + reg * theta
            hess = (x * (p * (1 - p))[:, None]).T @ x + torch.diag(reg) + 1e-9 * torch.eye(d + 1, dtype=z.dtype)
            step = torch.linalg.solve(hess, grad)
            lr = 1.0
            while lr > 1e-4 and objective(theta - lr * step) > f:
                lr /= 2
            theta = theta - lr * step
            f = objective(theta)
            if float((lr * step).abs().max()) < 1e-10:
                break
        w, b = theta[:d], theta[d]
        w_raw = w / sd  # back to (centred) latent coordinates
        b_raw = float(b - (mu / sd) @ w)
        # the probe acts on raw z: score = w_raw . (z - mean) + b_raw
        bias = b_raw - float(z.mean(0) @ w_raw) if groups is None else b_raw
        acc = float((((zc @ w_raw + b_raw) > 0).double() == y).double().mean())
        if float(w_raw.norm()) == 0:
            raise LatentAuditError("the labels are not linearly predictable from the latent code (zero probe)")
        return LinearProbe(w_raw.float().detach(), bias, "logistic", acc, name,
                           {"n": n, "within_groups": groups is not None})
    raise LatentAuditError(f"method must be 'linear' or 'logistic', got {method!r}")


def from_attribute(z, values, *, method: str = "linear", groups=None, alpha: float = 1e-3,
                   name: Optional[str] = None) -> Direction:
    """The unit normal of a linear probe of ``values`` on ``z`` (see ``fit_probe``), as a
    ``Direction.vector`` oriented so that ``t > 0`` increases the attribute."""
    return fit_probe(z, values, method=method, groups=groups, alpha=alpha, name=name).direction()


# ----------------------------------------------------------------------------- decoder
def _jacobians(decoder: Callable, z: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``[N, D, d]`` Jacobians of the flattened decoder output at each latent code."""

    def f(zi):
        return decoder(zi[None]).reshape(-1)

    out = []
    try:
        jac = torch.func.vmap(torch.func.jacrev(f))
        for i in range(0, z.shape[0], chunk):
            out.append(jac(z[i:i + chunk]))
        return torch.cat(out)
    except Exception:  # noqa: BLE001 - decoders that vmap / forward-AD cannot handle
        out = []
        for zi in z:
            out.append(torch.autograd.functional.jacobian(f, zi))
        return torch.stack(out)


def jacobian_directions(decoder: Callable, z, k: int = 1, *, normalize: bool = True):
    """Top-``k`` right-singular vectors of the decoder's Jacobian, averaged over ``z``.

    Returns ``(V [d, k], singular values [k])``: the eigenvectors of ``mean_i J_i^T J_i``
    (each ``J_i`` scaled to unit Frobenius norm when ``normalize``, so every point counts
    the same) and the square roots of its eigenvalues. For a linear decoder ``J`` is
    constant and ``V`` holds exactly its top right-singular vectors.
    """
    z = _as_latents(z)
    d = z.shape[1]
    if not 1 <= k <= d:
        raise LatentAuditError(f"k must be in 1..{d}, got {k}")
    was = getattr(decoder, "training", None)
    if was:
        decoder.eval()
    try:
        with torch.enable_grad():
            J = _jacobians(decoder, z).detach().double()
    finally:
        if was:
            decoder.train(True)
    J = J.reshape(z.shape[0], -1, d)
    if normalize:
        J = J / J.flatten(1).norm(dim=1).clamp(min=1e-30)[:, None, None]
    M = torch.einsum("nod,noe->de", J, J) / z.shape[0]
    evals, evecs = torch.linalg.eigh(M)
    order = torch.argsort(evals, descending=True)[:k]
    V = torch.stack([_orient(evecs[:, i]) for i in order.tolist()], 1)
    return V.float(), evals[order].clamp(min=0).sqrt().float()


def from_decoder_jacobian(decoder: Callable, z, k: int = 1, *, index: int = 0, normalize: bool = True,
                          name: Optional[str] = None) -> Direction:
    """The decoder's most sensitive direction(s): ``k == 1`` gives the ``index``-th right-
    singular vector (a ``Direction.vector``); ``k > 1`` the top-k subspace."""
    if k == 1:
        V, _ = jacobian_directions(decoder, z, index + 1, normalize=normalize)
        return Direction.vector(V[:, index].clone(), name=name)
    V, _ = jacobian_directions(decoder, z, k, normalize=normalize)
    return Direction.subspace(V, name=name)


def pca_directions(z, k: int = 2, prefix: str = "pc") -> Dict[str, Direction]:
    """The top-k principal components of the latent codes, ``{"pc0": ..., "pc1": ...}``."""
    z = _as_latents(z).double()
    if not 1 <= k <= z.shape[1]:
        raise LatentAuditError(f"k must be in 1..{z.shape[1]}, got {k}")
    zc = z - z.mean(0)
    _, S, Vh = torch.linalg.svd(zc, full_matrices=False)
    return {f"{prefix}{i}": Direction.vector(_orient(Vh[i]).float(), name=f"{prefix}{i}") for i in range(k)}


def from_pca(z, index: int = 0, name: Optional[str] = None) -> Direction:
    """The ``index``-th principal component of the latent codes."""
    d = pca_directions(z, index + 1)[f"pc{index}"]
    d.name = name or d.name
    return d


def axis(index: int, name: Optional[str] = None) -> Direction:
    """One latent coordinate (``Direction.axis``)."""
    return Direction.axis(index, name=name)


# ------------------------------------------------------------------------- combining
def basis_of(direction: Direction, dim: Optional[int] = None) -> torch.Tensor:
    """The ``[dim, k]`` orthonormal basis of a direction (``dim`` needed for an axis)."""
    if not isinstance(direction, Direction):
        t = torch.as_tensor(direction, dtype=torch.float64)
        direction = Direction.subspace(t if t.dim() == 2 else t.reshape(-1, 1))
    if dim is None:
        if direction.kind == "axis":
            raise LatentAuditError("an axis direction needs the latent dimension (dim=...)")
        dim = int(torch.as_tensor(direction.data).reshape(torch.as_tensor(direction.data).shape[0], -1).shape[0])
    return direction.basis(dim, dtype=torch.float64)


def _infer_dim(directions: Mapping[str, Direction], dim: Optional[int]) -> int:
    if dim is not None:
        return int(dim)
    for d in directions.values():
        if isinstance(d, Direction) and d.kind != "axis":
            return int(torch.as_tensor(d.data).shape[0])
        if not isinstance(d, Direction):
            return int(torch.as_tensor(d).shape[0])
    raise LatentAuditError("only axis directions given: pass dim= (the latent dimension)")


def orthogonalise(directions: Mapping[str, Direction], dim: Optional[int] = None,
                  tol: float = 1e-6) -> Dict[str, Direction]:
    """Gram-Schmidt in the given order: each direction loses its components along all the
    earlier ones. Returns new ``Direction`` objects with the same names (vectors, or
    subspaces for k > 1); the first keeps its span. Raises ``LatentAuditError`` when a
    direction lies (almost) inside the span of the earlier ones."""
    if not isinstance(directions, Mapping):
        directions = {getattr(d, "name", None) or str(i): d for i, d in enumerate(directions)}
    dim = _infer_dim(directions, dim)
    done = torch.zeros(dim, 0, dtype=torch.float64)
    out: Dict[str, Direction] = {}
    for key, d in directions.items():
        B = basis_of(d, dim)
        cols = []
        for j in range(B.shape[1]):
            v = B[:, j].clone()
            for _ in range(2):  # twice is enough for numerical orthogonality
                v = v - done @ (done.T @ v)
            nrm = float(v.norm())
            if nrm < tol:
                raise LatentAuditError(f"direction {key!r} lies in the span of the directions before it; "
                                       f"reorder or drop it")
            v = v / nrm
            cols.append(v)
            done = torch.cat([done, v[:, None]], 1)
        V = torch.stack(cols, 1).float()
        out[key] = Direction.vector(V[:, 0].clone(), name=key) if V.shape[1] == 1 else \
            Direction.subspace(V, name=key)
    return out


orthogonalize = orthogonalise


def cosine_matrix(directions: Mapping[str, Direction], dim: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Pairwise ``|cos|`` of the principal angle between directions (1 = same line, 0 =
    orthogonal); for subspaces the largest canonical correlation."""
    dim = _infer_dim(directions, dim)
    bases = {k: basis_of(d, dim) for k, d in directions.items()}
    out: Dict[str, Dict[str, float]] = {}
    for a, A in bases.items():
        out[a] = {}
        for b, B in bases.items():
            out[a][b] = float(torch.linalg.svdvals(A.T @ B).max())
    return out

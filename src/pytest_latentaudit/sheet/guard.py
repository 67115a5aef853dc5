"""The Deep Validation guard: is this input one the proofs cover?

The spec sheet proves a spec near the seeds; the range guard (``deploy.in_spec``, AuditAI
section 2.4) checks that a deployment input's latent code lies in the verified range along
each direction. This module adds the second question, from Deep Validation (Wu, CUHK thesis
2021, ch. 3): does the input's representation, at every hidden layer, lie where the
correctly classified training representations *of the predicted class* lie?

* one one-class SVM (Schölkopf et al.; RBF kernel, scikit-learn's ``OneClassSVM``) per
  (layer, predicted class), fitted on the correctly classified training samples;
* discrepancy at a layer = minus the SVM's decision value; joint discrepancy = the sum over
  the layers; an input is *in distribution* when the joint discrepancy is at most a threshold
  chosen for a target false-alarm rate on held-out clean data.

Layers: the latent code ``z`` itself, the head's hidden layers (forward hooks; by default the
output of every activation module) and, when the encoder is an ``nn.Module`` (or a bound
method of one), the encoder's.

    g = fit_guard(head, z_train, y_train, target_false_alarm=0.05, held_out=0.2)
    g = fit_guard_from_space(latent_space, head, x_train, y_train)   # encodes x, hooks the encoder
    g.save("out/spec-sheet.guard.json")                              # + spec-sheet.guard.npz
    g = DeepValidationGuard.load("out/spec-sheet.guard.json")        # JSON + npz, never unpickles
    feats, pred = guard_features(g, head, x=x_batch, encoder=enc)    # torch: the model's activations
    g.score(feats, pred)["in_distribution"]                          # numpy only

Scoring is numpy only: the stored support vectors, dual coefficients, intercepts and RBF
``gamma`` give the decision function ``sum_i a_i exp(-gamma |x - s_i|^2) + b`` (the same
number as scikit-learn's ``decision_function``); neither torch nor scikit-learn is imported
to score stored features. Fitting needs scikit-learn; extracting features needs the model.

``guard_report`` (and ``latentaudit guard SHEET DATA``) puts both guards side by side on a
deployment batch: AuditAI's table 3 (fraction in range, accuracy inside vs outside) and Deep
Validation's evaluation (fraction in distribution, accuracy inside vs outside, ROC-AUC of the
discrepancy for the batch's errors). ``pixel_crosscheck`` is AuditAI section 4.5: how many
latent-proved seeds are still attackable in pixel space.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..report.terminal import pct
from ..core.vocab import VERIFIED

from .deploy import DeployError, _to_numpy, in_spec, model_fingerprint, range_score

__all__ = ["GuardError", "DeepValidationGuard", "fit_guard", "fit_guard_from_space", "guard_features",
           "write_guard_data", "load_guard_data", "guard_path_for", "load_guard", "guard_report",
           "format_guard_report", "guard_html_section", "combined_score", "pixel_crosscheck", "PixelCheck",
           "rbf_decision",
           "roc_auc", "FORMAT", "FORMAT_VERSION", "run_guard_command"]

FORMAT = "latentaudit-guard"
FORMAT_VERSION = 1
LATENT = "z"
FEATURE_PREFIX = "feature:"

#: module classes whose outputs are the default hidden layers
ACTIVATIONS = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh",
               "Sigmoid", "Softplus", "Hardtanh", "Hardswish", "Hardsigmoid")
_LAYERS = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


class GuardError(DeployError):
    """The guard, its file or the input cannot answer the in-distribution question; the message
    says why."""


# ------------------------------------------------------------------------ numpy scoring
def rbf_decision(X, support_vectors, dual_coef, intercept: float, gamma: float, *, chunk: int = 8192) -> np.ndarray:
    """The one-class SVM decision function with an RBF kernel, vectorised over ``X`` ``[N, d]``:
    ``sum_i dual_coef[i] * exp(-gamma * |x - sv_i|^2) + intercept`` (float64, ``[N]``)."""
    X = np.asarray(X, dtype=np.float64)
    S = np.asarray(support_vectors, dtype=np.float64)
    a = np.asarray(dual_coef, dtype=np.float64).reshape(-1)
    ss = np.einsum("ij,ij->i", S, S)
    out = np.empty(X.shape[0], dtype=np.float64)
    for i in range(0, X.shape[0], chunk):
        x = X[i:i + chunk]
        d2 = np.einsum("ij,ij->i", x, x)[:, None] + ss[None, :] - 2.0 * (x @ S.T)
        np.maximum(d2, 0.0, out=d2)
        out[i:i + chunk] = np.exp(-gamma * d2) @ a + intercept
    return out


def roc_auc(scores, positive) -> Optional[float]:
    """ROC-AUC of ``scores`` for telling ``positive`` (bool) from the rest (higher = more
    positive; ties count one half: the Mann-Whitney statistic); None without both classes.
    numpy only (equals ``sklearn.metrics.roc_auc_score``)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(positive, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise GuardError(f"roc_auc: {s.size} scores for {y.size} labels")
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    s = np.where(np.isnan(s), np.inf, s)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _threshold_for(d: np.ndarray, target: float) -> float:
    """Smallest observed value t with ``mean(d > t) <= target`` (unscorable inputs are inf)."""
    d = np.sort(np.where(np.isnan(d), np.inf, d))
    n = len(d)
    k = max(1, int(math.ceil(n * (1.0 - target) - 1e-9)))
    t = float(d[min(k, n) - 1])
    if not math.isfinite(t):
        raise GuardError(f"more than {100 * target:g}% of the held-out inputs cannot be scored (NaN features or "
                         f"predicted classes without an SVM): no threshold reaches the target false alarm")
    return t


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------ the guard
class DeepValidationGuard:
    """One-class SVMs per (layer, predicted class), a joint-discrepancy threshold, and how they
    were fitted. Built by ``fit_guard``; stored as JSON + npz (``save`` / ``load``).

    ``layers``: ``[{"name", "width", "mean" [w], "scale" [w]}]`` (features are standardised
    with ``mean``/``scale`` before the SVM); ``classes``: the class ids with an SVM;
    ``svms[(layer_name, class)] = {"support_vectors" [m, w], "dual_coef" [m], "intercept",
    "gamma", "n_train"}``; ``threshold`` on the joint discrepancy; ``info``: fit settings and
    the held-out calibration (``target_false_alarm``, ``held_out_false_alarm``, ``n_held_out``)."""

    def __init__(self, layers: List[dict], classes: Sequence[int], svms: Dict[Tuple[str, int], dict],
                 threshold: float, info: Optional[dict] = None):
        self.layers = layers
        self.classes = [int(c) for c in classes]
        self.svms = svms
        self.threshold = float(threshold)
        self.info = dict(info or {})

    # ---------------------------------------------------------------- basics
    @property
    def layer_names(self) -> List[str]:
        return [L["name"] for L in self.layers]

    @property
    def target_false_alarm(self) -> Optional[float]:
        return self.info.get("target_false_alarm")

    def __repr__(self) -> str:
        return (f"DeepValidationGuard(layers={self.layer_names}, classes={self.classes}, "
                f"threshold={self.threshold:.4g}, target_false_alarm={self.target_false_alarm})")

    # ---------------------------------------------------------------- scoring
    def _check_inputs(self, features: Mapping[str, Any], pred, strict: bool):
        p = _to_numpy(pred)
        if p.ndim != 1:
            raise GuardError(f"predicted classes must be shaped [N], got shape {p.shape}")
        if p.size and not np.issubdtype(p.dtype, np.integer):
            if not np.issubdtype(p.dtype, np.floating) or not np.all(np.isfinite(p)) or np.any(p != np.round(p)):
                raise GuardError(f"predicted classes must be integer class ids, got dtype {p.dtype}")
        p = p.astype(np.int64)
        n = p.shape[0]
        missing = [L["name"] for L in self.layers if L["name"] not in features]
        if missing:
            raise GuardError(f"features missing for guard layer(s) {', '.join(map(repr, missing))} "
                             f"(the guard uses: {', '.join(self.layer_names)})")
        bad_rows = np.zeros(n, dtype=bool)
        X: Dict[str, np.ndarray] = {}
        for L in self.layers:
            a = _to_numpy(features[L["name"]])
            if a.dtype == object or not np.issubdtype(a.dtype, np.number):
                raise GuardError(f"features of layer {L['name']!r} must be numeric, got dtype {a.dtype}")
            a = a.astype(np.float64, copy=False)
            if a.ndim < 1 or a.shape[0] != n:
                raise GuardError(f"layer {L['name']!r}: {a.shape[0] if a.ndim else 0} rows of features for "
                                 f"{n} predictions")
            a = a.reshape(n, -1)
            if a.shape[1] != L["width"]:
                raise GuardError(f"layer {L['name']!r}: features have width {a.shape[1]}, the guard was fitted on "
                                 f"width {L['width']} (a different model or layer?)")
            nonfinite = ~np.isfinite(a).all(axis=1)
            if nonfinite.any():
                if strict:
                    rows = np.flatnonzero(nonfinite)
                    raise GuardError(f"layer {L['name']!r}: NaN or inf in the features of {len(rows)} input(s) "
                                     f"(rows {', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''}); "
                                     f"pass strict=False to flag them out of distribution")
                bad_rows |= nonfinite
            X[L["name"]] = a
        unknown = ~np.isin(p, np.asarray(self.classes, dtype=np.int64))
        if unknown.any():
            if strict:
                raise GuardError(f"predicted class(es) {sorted(set(p[unknown].tolist()))[:10]} have no one-class "
                                 f"SVM (the guard knows classes {self.classes}: no correctly classified training "
                                 f"samples of the others); pass strict=False to flag them out of distribution")
            bad_rows |= unknown
        return X, p, bad_rows

    def score(self, features: Mapping[str, Any], pred, *, strict: bool = True) -> Dict[str, Any]:
        """Discrepancies of a batch: ``features`` ``{layer name: [N, width]}`` (numpy or torch;
        ``"z"`` is the latent code), ``pred`` the predicted classes ``[N]``.

        Returns ``{"joint": [N], "layers": {name: [N]}, "in_distribution": bool [N],
        "threshold"}``. ``strict=True`` raises ``GuardError`` on NaN/inf features and on
        predicted classes without an SVM; ``strict=False`` scores them ``inf`` (flagged)."""
        X, p, bad = self._check_inputs(features, pred, strict)
        n = p.shape[0]
        per = {L["name"]: np.zeros(n, dtype=np.float64) for L in self.layers}
        for c in self.classes:
            rows = np.flatnonzero((p == c) & ~bad)
            if rows.size == 0:
                continue
            for L in self.layers:
                m = self.svms[(L["name"], c)]
                x = (X[L["name"]][rows] - L["mean"]) / L["scale"]
                per[L["name"]][rows] = -rbf_decision(x, m["support_vectors"], m["dual_coef"], m["intercept"],
                                                     m["gamma"])
        for v in per.values():
            v[bad] = np.inf
        joint = np.sum([per[name] for name in self.layer_names], axis=0) if per else np.zeros(n)
        return {"joint": joint, "layers": per, "in_distribution": joint <= self.threshold,
                "threshold": self.threshold}

    def discrepancy(self, features: Mapping[str, Any], pred, *, strict: bool = True) -> np.ndarray:
        """Joint discrepancy ``[N]`` (sum over layers of minus the SVM decision value)."""
        return self.score(features, pred, strict=strict)["joint"]

    def in_distribution(self, features: Mapping[str, Any], pred, *, strict: bool = True) -> np.ndarray:
        """``joint discrepancy <= threshold`` per input (bool ``[N]``)."""
        return self.score(features, pred, strict=strict)["in_distribution"]

    def with_threshold(self, threshold: float) -> "DeepValidationGuard":
        info = dict(self.info, threshold_source="set by hand")
        return DeepValidationGuard(self.layers, self.classes, self.svms, threshold, info)

    # ---------------------------------------------------------------- storage
    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays: Dict[str, np.ndarray] = {}
        for li, L in enumerate(self.layers):
            arrays[f"layer{li}.mean"] = np.asarray(L["mean"], dtype=np.float64)
            arrays[f"layer{li}.scale"] = np.asarray(L["scale"], dtype=np.float64)
            for c in self.classes:
                m = self.svms[(L["name"], c)]
                arrays[f"layer{li}.class{c}.support_vectors"] = np.asarray(m["support_vectors"], dtype=np.float64)
                arrays[f"layer{li}.class{c}.dual_coef"] = np.asarray(m["dual_coef"], dtype=np.float64).reshape(-1)
        return arrays

    def to_json(self, arrays_file: str, arrays_sha256: str) -> dict:
        svm_meta = {}
        for L in self.layers:
            svm_meta[L["name"]] = {str(c): {"intercept": float(self.svms[(L["name"], c)]["intercept"]),
                                            "gamma": float(self.svms[(L["name"], c)]["gamma"]),
                                            "n_support": int(len(self.svms[(L["name"], c)]["dual_coef"])),
                                            "n_train": int(self.svms[(L["name"], c)].get("n_train", 0))}
                                   for c in self.classes}
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "deep_validation",
                "threshold": self.threshold,
                "layers": [{"name": L["name"], "width": int(L["width"])} for L in self.layers],
                "classes": self.classes, "svms": svm_meta, "info": _jsonable(self.info),
                "arrays": {"file": arrays_file, "sha256": arrays_sha256}}

    def save(self, path) -> Path:
        """Write ``path`` (JSON: layers, classes, intercepts, gammas, threshold, fit info) and the
        arrays beside it (``path`` with suffix ``.npz``: standardisation, support vectors, dual
        coefficients), both atomically. The JSON records the npz's sha256, checked on load."""
        from ..core.files import write_atomic

        path = Path(path)
        if path.suffix != ".json":
            raise GuardError(f"a guard is saved as JSON + npz; give a .json path, got {path}")
        npz = path.with_suffix(".npz")
        buf = io.BytesIO()
        np.savez(buf, **self._arrays())
        data = buf.getvalue()
        write_atomic(npz, data)
        text = json.dumps(self.to_json(npz.name, _sha256(data)), indent=1, allow_nan=False)
        write_atomic(path, (text + "\n").encode())
        return path

    @classmethod
    def load(cls, path) -> "DeepValidationGuard":
        """Read a guard written by ``save``: JSON with ``json``, arrays with ``np.load(...,
        allow_pickle=False)`` after checking their sha256. Nothing is unpickled or executed."""
        path = Path(path)
        if not path.is_file():
            raise GuardError(f"no guard file at {path}")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GuardError(f"{path} is not a latentaudit guard (not JSON: {exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise GuardError(f"{path} is not a latentaudit guard (format is not {FORMAT!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise GuardError(f"{path} has guard format version {meta.get('format_version')}; this tool reads up "
                             f"to {FORMAT_VERSION}: upgrade pytest-latentaudit")
        try:
            arrays_meta = meta["arrays"]
            npz = path.parent / Path(str(arrays_meta["file"])).name  # never outside the guard's folder
            blob = npz.read_bytes()
        except KeyError as exc:
            raise GuardError(f"{path}: missing field {exc} (a damaged guard file)") from None
        except OSError as exc:
            raise GuardError(f"{path}: cannot read its arrays file ({exc})") from None
        if _sha256(blob) != arrays_meta.get("sha256"):
            raise GuardError(f"{npz} does not match the checksum recorded in {path}: the arrays were changed "
                             f"or belong to another guard; refit and save the guard again")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (ValueError, OSError) as exc:
            raise GuardError(f"{npz}: not a plain numpy archive ({exc})") from None
        try:
            return cls._from_parts(meta, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GuardError):
                raise
            raise GuardError(f"{path}: inconsistent guard ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_parts(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> "DeepValidationGuard":
        classes = [int(c) for c in meta["classes"]]
        layers, svms = [], {}
        for li, Lm in enumerate(meta["layers"]):
            name, width = str(Lm["name"]), int(Lm["width"])
            mean = np.asarray(arrays[f"layer{li}.mean"], dtype=np.float64)
            scale = np.asarray(arrays[f"layer{li}.scale"], dtype=np.float64)
            bad_scale = not (np.isfinite(scale).all() and (scale > 0).all())
            if mean.shape != (width,) or scale.shape != (width,) or bad_scale:
                raise GuardError(f"guard layer {name!r}: standardisation arrays do not match width {width}")
            layers.append({"name": name, "width": width, "mean": mean, "scale": scale})
            for c in classes:
                sm = meta["svms"][name][str(c)]
                sv = np.asarray(arrays[f"layer{li}.class{c}.support_vectors"], dtype=np.float64)
                a = np.asarray(arrays[f"layer{li}.class{c}.dual_coef"], dtype=np.float64)
                if sv.ndim != 2 or sv.shape[1] != width or a.shape != (sv.shape[0],):
                    raise GuardError(f"guard layer {name!r}, class {c}: support vectors {sv.shape} and dual "
                                     f"coefficients {a.shape} do not fit width {width}")
                gamma, b = float(sm["gamma"]), float(sm["intercept"])
                if not (np.isfinite(sv).all() and np.isfinite(a).all() and math.isfinite(gamma) and gamma > 0
                        and math.isfinite(b)):
                    raise GuardError(f"guard layer {name!r}, class {c}: non-finite SVM parameters")
                svms[(name, c)] = {"support_vectors": sv, "dual_coef": a, "intercept": b, "gamma": gamma,
                                   "n_train": int(sm.get("n_train", 0))}
        threshold = float(meta["threshold"])
        if not math.isfinite(threshold):
            raise GuardError("the guard's threshold is not a finite number")
        return cls(layers, classes, svms, threshold, meta.get("info") or {})

    def sheet_entry(self, path=None) -> dict:
        """What a spec sheet can record about this guard (top-level key ``"guard"``)."""
        out = {"kind": "deep_validation", "format": FORMAT, "format_version": FORMAT_VERSION,
               "threshold": self.threshold, "layers": [{"name": L["name"], "width": L["width"]} for L in self.layers],
               "classes": self.classes}
        for k in ("target_false_alarm", "held_out_false_alarm", "n_held_out", "nu", "gamma", "created",
                  "head_fingerprint", "encoder_fingerprint", "n_train"):
            if k in self.info:
                out[k] = self.info[k]
        if path is not None:
            path = Path(path)
            out["path"] = path.name
            meta = json.loads(path.read_text(encoding="utf-8"))
            out["sha256"] = _sha256(path.read_bytes())
            out["arrays_sha256"] = meta["arrays"]["sha256"]
        return _jsonable(out)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# ------------------------------------------------------------------------ features (torch)
def _module_owner(fn):
    """The nn.Module behind ``fn`` (the module itself, or the owner of a bound method)."""
    import torch

    if isinstance(fn, torch.nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _default_modules(root) -> List[str]:
    mods = [(n, m) for n, m in root.named_modules() if n]
    acts = [n for n, m in mods if type(m).__name__ in ACTIVATIONS]
    if acts:
        return acts
    leaves = [n for n, m in mods if type(m).__name__ in _LAYERS]
    return leaves[:-1]


def _select(root, names: Optional[Sequence[str]], prefix: str) -> List[Tuple[str, Any]]:
    mods = dict(root.named_modules())
    if names is None:
        chosen = _default_modules(root)
    else:
        chosen = []
        for n in names:
            n = str(n)
            key = n if (n in mods and n) else (n[len(prefix) + 1:] if n.startswith(prefix + ".") else n)
            if key not in mods or not key:
                avail = ", ".join(k for k in mods if k) or "none"
                raise GuardError(f"{prefix} has no module named {n!r} (its modules: {avail})")
            chosen.append(key)
    return [(f"{prefix}.{n}", mods[n]) for n in chosen]


def _reduce(out, spatial: str):
    import torch

    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise GuardError(f"a hooked module returned {type(out).__name__}, not a tensor")
    out = out.detach()
    if out.dim() > 2 and spatial == "mean":
        out = out.flatten(2).mean(2)
    return out.reshape(out.shape[0], -1).float().cpu().numpy().astype(np.float64)


class _Hooks:
    def __init__(self, pairs: List[Tuple[str, Any]], spatial: str):
        self.pairs, self.spatial, self.captured, self.handles = pairs, spatial, {}, []

    def __enter__(self):
        for key, mod in self.pairs:
            self.handles.append(mod.register_forward_hook(
                lambda m, i, o, key=key: self.captured.__setitem__(key, _reduce(o, self.spatial))))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return False


def _device_dtype(module):
    import torch

    for p in module.parameters():
        return p.device, (p.dtype if p.dtype.is_floating_point else torch.float32)
    return torch.device("cpu"), torch.float32


def _extract(head, z=None, *, x=None, encoder=None, head_layers=None, encoder_layers=None, include_latent=True,
             spatial="mean", batch_size=1024):
    """Features ``{name: [N, w]}``, predictions ``[N]`` and latent codes for a batch."""
    import torch

    if spatial not in ("mean", "flatten"):
        raise GuardError(f"spatial must be 'mean' or 'flatten', got {spatial!r}")
    if not isinstance(head, torch.nn.Module):
        raise GuardError("the Deep Validation guard hooks the head's layers: the head must be a torch.nn.Module")
    if z is None and (x is None or encoder is None):
        raise GuardError("give latent codes z, or inputs x together with an encoder")
    head_pairs = _select(head, head_layers, "head")
    optional = {k for k, _ in head_pairs} if head_layers is None else set()
    enc_owner = _module_owner(encoder) if (encoder is not None and x is not None) else None
    enc_pairs: List[Tuple[str, Any]] = []
    if encoder_layers and enc_owner is None:
        raise GuardError("encoder layers were requested, but the encoder is not an nn.Module (or a method of "
                         "one) and inputs x were not given")
    if enc_owner is not None and encoder_layers != ():
        enc_pairs = _select(enc_owner, encoder_layers, "encoder")
        if encoder_layers is None:  # a bound method's owner may hold modules that do not run (a decoder)
            optional |= {k for k, _ in enc_pairs}
    device, dtype = _device_dtype(head)
    n = None
    if x is not None:
        xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        n = xt.shape[0]
    if z is not None:
        zt = z if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z, dtype=np.float64))
        if n is not None and zt.shape[0] != n:
            raise GuardError(f"{zt.shape[0]} latent codes for {n} inputs")
        n = zt.shape[0]
    feats: Dict[str, List[np.ndarray]] = {}
    preds: List[np.ndarray] = []
    pairs = enc_pairs + head_pairs
    with _Hooks(pairs, spatial) as hooks, torch.no_grad():
        for i in range(0, n, batch_size):
            hooks.captured.clear()
            if x is not None and encoder is not None and (z is None or enc_pairs):
                xb = xt[i:i + batch_size]
                edev, edt = _device_dtype(enc_owner) if enc_owner is not None else (device, dtype)
                zb = encoder(xb.to(device=edev, dtype=edt if xb.is_floating_point() else xb.dtype))
                if isinstance(zb, (tuple, list)):
                    zb = zb[0]
                if z is not None:
                    zb = zt[i:i + batch_size]
            else:
                zb = zt[i:i + batch_size]
            zb = zb.to(device=device, dtype=dtype)
            logits = head(zb)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            preds.append(logits.argmax(1).cpu().numpy().astype(np.int64))
            if include_latent:
                feats.setdefault(LATENT, []).append(zb.reshape(zb.shape[0], -1).double().cpu().numpy())
            for key, _ in pairs:
                if key in hooks.captured:
                    feats.setdefault(key, []).append(hooks.captured[key])
                elif key not in optional:
                    raise GuardError(f"layer {key!r} did not run in the forward pass (is it part of the model?)")
    out = {k: np.concatenate(v) for k, v in feats.items()}
    order = ([LATENT] if include_latent else []) + [k for k, _ in pairs if k in out]
    order = [k for k in order if out[k].shape[0] == n]
    return {k: out[k] for k in order}, (np.concatenate(preds) if preds else np.zeros(0, np.int64))


def guard_features(guard: DeepValidationGuard, head, z=None, *, x=None, encoder=None, batch_size: int = 1024):
    """The features ``guard`` scores and the head's predictions for a batch: ``(features, pred)``.
    Give latent codes ``z``, or inputs ``x`` and the ``encoder`` (needed when the guard uses
    encoder layers). Uses the model (torch)."""
    names = guard.layer_names
    head_layers = [n for n in names if n.startswith("head.")]
    enc_layers = [n for n in names if n.startswith("encoder.")]
    if enc_layers and (x is None or encoder is None):
        raise GuardError(f"the guard uses encoder layers ({', '.join(enc_layers)}): pass x= and encoder=")
    feats, pred = _extract(head, z, x=x, encoder=encoder, head_layers=head_layers,
                           encoder_layers=enc_layers if enc_layers else (), include_latent=LATENT in names,
                           spatial=guard.info.get("spatial", "mean"), batch_size=batch_size)
    return feats, pred


# ------------------------------------------------------------------------ fitting
def _labels(labels, n: int) -> np.ndarray:
    y = _to_numpy(labels).reshape(-1)
    if y.shape[0] != n:
        raise GuardError(f"{y.shape[0]} labels for {n} samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise GuardError("labels must be integer class ids")
    return y.astype(np.int64)


def _fit_svms(feats: Dict[str, np.ndarray], pred: np.ndarray, y: np.ndarray, *, nu: float, gamma, max_per_class,
              min_per_class: int, seed: int):
    try:
        from sklearn.svm import OneClassSVM
    except ImportError:  # pragma: no cover - dev extras install it
        raise GuardError("fitting the Deep Validation guard needs scikit-learn: pip install scikit-learn") from None
    rng = np.random.default_rng(seed)
    correct = pred == y
    classes, skipped = [], {}
    for c in np.unique(y):
        k = int((correct & (y == c)).sum())
        if k >= min_per_class:
            classes.append(int(c))
        else:
            skipped[int(c)] = k
    if not classes:
        raise GuardError(f"no class has {min_per_class} or more correctly classified training samples")
    layers = []
    svms: Dict[Tuple[str, int], dict] = {}
    for name, F in feats.items():
        base = F[correct]
        mean = base.mean(0)
        std = base.std(0)
        scale = np.where(std > 1e-8 * max(1.0, float(std.max(initial=0.0))), std, 1.0)
        layers.append({"name": name, "width": int(F.shape[1]), "mean": mean, "scale": scale})
    for c in classes:
        idx = np.flatnonzero(correct & (y == c))
        if max_per_class and len(idx) > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        for L in layers:
            X = (feats[L["name"]][idx] - L["mean"]) / L["scale"]
            if gamma == "scale":
                var = float(X.var())
                g = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
            elif gamma == "auto":
                g = 1.0 / X.shape[1]
            else:
                g = float(gamma)
            m = OneClassSVM(kernel="rbf", nu=nu, gamma=g).fit(X)
            svms[(L["name"], c)] = {"support_vectors": np.asarray(m.support_vectors_, dtype=np.float64),
                                    "dual_coef": np.asarray(m.dual_coef_, dtype=np.float64).reshape(-1),
                                    "intercept": float(np.asarray(m.intercept_).reshape(-1)[0]), "gamma": g,
                                    "n_train": int(len(idx))}
    return layers, classes, svms, skipped


def _split(n: int, frac: float, y: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hold = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * frac))
        hold.extend(idx[:k].tolist())
    hold = np.zeros(n, dtype=bool) | np.isin(np.arange(n), hold)
    if hold.all() or not hold.any():
        raise GuardError(f"held_out={frac} leaves no data to fit or to calibrate on ({n} samples)")
    return np.flatnonzero(~hold), np.flatnonzero(hold)


def _fingerprint(m) -> Optional[str]:
    try:
        return model_fingerprint(m)
    except Exception:  # pragma: no cover - only informative
        return None


def fit_guard(head, z, labels, *, layers: Optional[Sequence[str]] = None, encoder=None, x=None,
              encoder_layers: Optional[Sequence[str]] = None, include_latent: bool = True,
              target_false_alarm: float = 0.05, held_out: Union[float, tuple] = 0.2, nu: float = 0.1,
              gamma: Union[str, float] = "scale", max_per_class: Optional[int] = 1000, min_per_class: int = 5,
              spatial: str = "mean", seed: int = 0, batch_size: int = 1024) -> DeepValidationGuard:
    """Fit a Deep Validation guard on training data and calibrate its threshold.

    ``head``: the latent head (``nn.Module``). ``z``: training latent codes ``[N, d]`` (or None
    with ``x`` and ``encoder``), ``labels``: ``[N]``. ``layers``: module names of the head to
    hook (default: every activation module's output; without any, every Linear/Conv but the
    last). ``encoder`` + ``x``: also hook the encoder's layers (``encoder_layers``, default
    its activation modules that run) when the encoder is an ``nn.Module`` or a bound method of
    one; ``encoder_layers=()`` turns that off. ``include_latent``: the code ``z`` is a layer.

    One ``OneClassSVM(kernel="rbf", nu=nu, gamma=...)`` per (layer, class) on the correctly
    classified samples of the class (at most ``max_per_class``, subsampled with ``seed``),
    features standardised per layer; ``gamma="scale"`` is ``1 / (width * var)`` of each fit set.
    Classes with fewer than ``min_per_class`` correct samples get no SVM (listed in
    ``info["skipped_classes"]``; predictions of them are errors, or flagged with
    ``strict=False``).

    ``held_out``: a fraction of the data (stratified, not used for the SVMs) or a tuple
    ``(z, labels)`` / ``(z, labels, x)`` of separate clean data; the threshold is the smallest
    joint discrepancy with at most ``target_false_alarm`` of the held-out inputs above it.
    """
    if not 0.0 < float(target_false_alarm) < 1.0:
        raise GuardError(f"target_false_alarm must be in (0, 1), got {target_false_alarm}")
    if not 0.0 < float(nu) <= 1.0:
        raise GuardError(f"nu must be in (0, 1], got {nu}")
    use_x = x is not None and encoder is not None
    feats, pred = _extract(head, z, x=x if use_x else None, encoder=encoder if use_x else None, head_layers=layers,
                           encoder_layers=encoder_layers, include_latent=include_latent, spatial=spatial,
                           batch_size=batch_size)
    if not feats:
        raise GuardError("no layers to fit: include_latent=False and no hidden layers selected")
    n = pred.shape[0]
    y = _labels(labels, n)
    for name, F in feats.items():
        if not np.isfinite(F).all():
            raise GuardError(f"training features of layer {name!r} contain NaN or inf")
    if isinstance(held_out, (tuple, list)):
        if len(held_out) not in (2, 3):
            raise GuardError("held_out is a fraction or a tuple (z, labels) / (z, labels, x)")
        zh, yh = held_out[0], held_out[1]
        xh = held_out[2] if len(held_out) == 3 else None
        names = list(feats)
        head_layers = [k for k in names if k.startswith("head.")]
        enc_layers = [k for k in names if k.startswith("encoder.")]
        if enc_layers and (xh is None or not use_x):
            raise GuardError("the guard uses encoder layers: held_out needs inputs (z, labels, x)")
        fh, ph = _extract(head, zh, x=xh if enc_layers or zh is None else None, encoder=encoder,
                          head_layers=head_layers, encoder_layers=enc_layers if enc_layers else (),
                          include_latent=include_latent, spatial=spatial, batch_size=batch_size)
        yh = _labels(yh, ph.shape[0])
        fit_idx = np.arange(n)
    else:
        frac = float(held_out)
        if not 0.0 < frac < 1.0:
            raise GuardError(f"held_out must be a fraction in (0, 1) or a tuple of clean data, got {held_out!r}")
        fit_idx, ho_idx = _split(n, frac, y, seed)
        fh = {k: v[ho_idx] for k, v in feats.items()}
        ph, yh = pred[ho_idx], y[ho_idx]
    ftrain = {k: v[fit_idx] for k, v in feats.items()}
    layers_, classes, svms, skipped = _fit_svms(ftrain, pred[fit_idx], y[fit_idx], nu=nu, gamma=gamma,
                                                max_per_class=max_per_class, min_per_class=min_per_class, seed=seed)
    g = DeepValidationGuard(layers_, classes, svms, threshold=0.0)
    cal = g.score(fh, ph, strict=False)["joint"]
    if not np.isfinite(cal).any():
        raise GuardError("no held-out input could be scored (all of them NaN or of classes without an SVM)")
    t = _threshold_for(cal, float(target_false_alarm))
    g.threshold = t
    correct_h = ph == yh
    g.info = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "method": "Deep Validation (Wu 2021, ch. 3): OneClassSVM per (layer, predicted class)",
              "nu": float(nu), "gamma": gamma if isinstance(gamma, str) else float(gamma), "spatial": spatial,
              "max_per_class": max_per_class, "min_per_class": min_per_class, "seed": int(seed),
              "n_train": int(len(fit_idx)), "n_train_correct": int((pred[fit_idx] == y[fit_idx]).sum()),
              "skipped_classes": {str(k): v for k, v in skipped.items()},
              "target_false_alarm": float(target_false_alarm), "threshold_source": "held-out quantile",
              "n_held_out": int(len(cal)), "held_out_false_alarm": float(np.mean(cal > t)),
              "held_out_median": float(np.median(cal)),
              "held_out_false_alarm_correct": (float(np.mean(cal[correct_h] > t)) if correct_h.any() else None),
              "held_out_accuracy": float(np.mean(correct_h)) if len(correct_h) else None,
              "head_fingerprint": _fingerprint(head),
              "encoder_fingerprint": _fingerprint(_module_owner(encoder)) if any(
                  k.startswith("encoder.") for k in feats) else None}
    return g


def fit_guard_from_space(latent_space, head, x, labels, **kw) -> DeepValidationGuard:
    """``fit_guard`` for a ``LatentSpace``: encodes ``x`` with its encoder and hooks the encoder's
    layers when the encoder is an ``nn.Module`` (or a bound method of one). ``held_out`` may be
    a fraction or ``(x_held_out, labels_held_out)``. Other keywords as ``fit_guard``."""
    enc = latent_space.encoder
    if enc is None:
        raise GuardError("this LatentSpace has no encoder; use fit_guard(head, z, labels)")
    held = kw.pop("held_out", 0.2)
    is_module = _module_owner(enc) is not None and kw.get("encoder_layers", None) != ()
    if isinstance(held, (tuple, list)):
        if len(held) != 2:
            raise GuardError("held_out for fit_guard_from_space is a fraction or (x, labels)")
        xh, yh = held
        held = (latent_space.encode(xh), yh, xh) if is_module else (latent_space.encode(xh), yh)
    z = latent_space.encode(x)
    if is_module:
        return fit_guard(head, z, labels, encoder=enc, x=x, held_out=held, **kw)
    kw.pop("encoder_layers", None)
    return fit_guard(head, z, labels, held_out=held, **kw)


# ------------------------------------------------------------------------ data files and sheets
def write_guard_data(path, guard: DeepValidationGuard, head, z=None, *, x=None, encoder=None, labels=None) -> Path:
    """Write a deployment batch for ``latentaudit guard``: an ``.npz`` with ``z``, ``pred``, one
    ``feature:<layer>`` array per guard layer (``z`` itself is not repeated) and ``labels`` if
    given. Uses the model to compute the features."""
    from ..core.files import write_atomic

    feats, pred = guard_features(guard, head, z, x=x, encoder=encoder)
    zz = feats.get(LATENT)
    if zz is None:
        if z is None:
            raise GuardError("write_guard_data needs the latent codes z (the range guard reads them)")
        zz = np.asarray(_to_numpy(z), dtype=np.float64)
    arrays = {"z": np.asarray(zz, dtype=np.float64), "pred": pred}
    for k, v in feats.items():
        if k != LATENT:
            arrays[FEATURE_PREFIX + k] = v
    if labels is not None:
        arrays["labels"] = _labels(labels, pred.shape[0])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(Path(path), buf.getvalue())
    return Path(path)


def load_guard_data(path) -> Dict[str, np.ndarray]:
    """A deployment batch from an ``.npz`` (``allow_pickle=False``): ``z`` ``[N, d]`` (required),
    optional ``labels`` ``[N]``, ``pred`` ``[N]`` (the model's predictions: needed for the Deep
    Validation guard and for accuracy) and ``feature:<layer>`` ``[N, width]`` per guard layer."""
    path = Path(path)
    if not path.is_file():
        raise GuardError(f"no data file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError) as exc:
        raise GuardError(f"{path}: not a plain numpy .npz archive ({exc})") from None
    if "z" not in data:
        raise GuardError(f"{path} has no array 'z' (the latent codes; it has: {', '.join(data) or 'nothing'})")
    n = data["z"].shape[0] if data["z"].ndim else 0
    for k in ("labels", "pred"):
        if k in data and (data[k].ndim != 1 or data[k].shape[0] != n):
            raise GuardError(f"{path}: {k!r} has shape {data[k].shape}; expected [{n}] like z")
    return data


def guard_path_for(sheet_path) -> Path:
    """Where the guard of a sheet lives: ``out/spec-sheet.json`` -> ``out/spec-sheet.guard.json``."""
    p = Path(sheet_path)
    return p.with_name(p.stem + ".guard.json")


def load_guard(sheet_or_guard_path) -> DeepValidationGuard:
    """The guard stored beside a spec sheet (``guard_path_for``), or at a ``*.guard.json`` path."""
    p = Path(sheet_or_guard_path)
    gp = p if p.name.endswith(".guard.json") else guard_path_for(p)
    if not gp.is_file():
        raise GuardError(f"no Deep Validation guard beside {p} (looked for {gp}); fit one with "
                         f"pytest_latentaudit.sheet.guard.fit_guard(...) and save it there")
    return DeepValidationGuard.load(gp)


# ------------------------------------------------------------------------ the report
def _acc(correct: np.ndarray, mask: np.ndarray) -> dict:
    k = int(mask.sum())
    return {"n": k, "accuracy": (float(correct[mask].mean()) if k else None)}


def guard_report(sheet, data, *, guard: Optional[DeepValidationGuard] = None, labels=None, pred=None,
                 eps: Optional[float] = None, strict: bool = True, model=None) -> dict:
    """Both guards on one deployment batch.

    ``sheet``: spec sheet (dict, ``SpecSheet`` or path) for the range guard, or None.
    ``data``: a path to an ``.npz`` (``load_guard_data``) or a mapping with ``z`` and optionally
    ``labels``, ``pred``, ``feature:<layer>`` arrays. ``guard``: a ``DeepValidationGuard`` (or a
    path to one), or None for the range guard alone. ``labels`` / ``pred`` override the data's.
    ``model``: whose verified ranges (``deploy.in_spec``'s ``model=``; needed when the sheet's
    tests ran on several models).

    Returns ``{"n", "range": {...} | None, "distribution": {...} | None, "both": {...} | None,
    "accuracy": {...} | None, "notes": [...]}`` (see docs/guard.md), JSON-ready."""
    if not isinstance(data, Mapping):
        data = load_guard_data(data)
    if "z" not in data:
        raise GuardError("the deployment data needs the latent codes 'z'")
    z = np.asarray(_to_numpy(data["z"]), dtype=np.float64)
    if z.ndim != 2:
        raise GuardError(f"'z' must be shaped [N, latent_dim], got {z.shape}")
    n = z.shape[0]
    y = labels if labels is not None else data.get("labels")
    p = pred if pred is not None else data.get("pred")
    y = None if y is None else _labels(y, n)
    p = None if p is None else _labels(p, n)
    notes: List[str] = []
    rep: Dict[str, Any] = {"n": n, "range": None, "distribution": None, "both": None, "accuracy": None,
                           "notes": notes}
    masks: Dict[str, np.ndarray] = {}
    scores: Dict[str, np.ndarray] = {}
    if sheet is not None:
        try:
            ok = in_spec(sheet, z, eps=eps, model=model)
            rs = range_score(sheet, z, eps=eps, model=model)
        except DeployError as exc:
            notes.append(f"range guard: {exc}")
        else:
            masks["range"] = np.asarray(ok["all"], dtype=bool)
            scores["range"] = rs["all"]
            rep["range"] = {"directions": {k: {"n_in": int(np.sum(v)), "fraction_in": float(np.mean(v)) if n else None}
                                           for k, v in ok.items() if k != "all"},
                            "n_in": int(masks["range"].sum()),
                            "fraction_in": float(masks["range"].mean()) if n else None}
    else:
        notes.append("range guard: no spec sheet given")
    if isinstance(guard, (str, Path)):
        guard = DeepValidationGuard.load(guard)
    if guard is not None:
        if p is None:
            raise GuardError("the Deep Validation guard needs the model's predicted classes ('pred' in the data)")
        feats = {}
        for name in guard.layer_names:
            key = "z" if name == LATENT else FEATURE_PREFIX + name
            if key not in data:
                raise GuardError(f"the data has no {key!r} array, which the guard's layer {name!r} needs "
                                 f"(write the batch with pytest_latentaudit.sheet.guard.write_guard_data)")
            feats[name] = data[key]
        sc = guard.score(feats, p, strict=strict)
        masks["distribution"] = sc["in_distribution"]
        scores["distribution"] = sc["joint"]
        j = sc["joint"]
        fin = j[np.isfinite(j)]
        rep["distribution"] = {"n_in": int(sc["in_distribution"].sum()),
                               "fraction_in": float(sc["in_distribution"].mean()) if n else None,
                               "threshold": guard.threshold, "target_false_alarm": guard.target_false_alarm,
                               "held_out_false_alarm": guard.info.get("held_out_false_alarm"),
                               "layers": guard.layer_names,
                               "joint_discrepancy": {"min": float(fin.min()) if fin.size else None,
                                                     "median": float(np.median(fin)) if fin.size else None,
                                                     "max": float(fin.max()) if fin.size else None,
                                                     "n_nonfinite": int((~np.isfinite(j)).sum())}}
    else:
        notes.append("distribution guard: no Deep Validation guard given")
    if "range" in masks and "distribution" in masks:
        both = masks["range"] & masks["distribution"]
        masks["both"] = both
        scores["both"] = combined_score(scores["range"], scores["distribution"], guard)
        rep["both"] = {"n_in": int(both.sum()), "fraction_in": float(both.mean()) if n else None}
    if not masks:
        raise GuardError("neither guard could run: " + "; ".join(notes))
    if y is not None and p is not None:
        correct = p == y
        acc: Dict[str, Any] = {"overall": float(correct.mean()) if n else None, "n_errors": int((~correct).sum())}
        for k, m in masks.items():
            acc[k] = {"inside": _acc(correct, m), "outside": _acc(correct, ~m)}
            acc[k]["auc_errors"] = roc_auc(scores[k], ~correct) if k in scores else None
            acc[k]["errors_flagged"] = float(np.mean(~m[~correct])) if (~correct).any() else None
        rep["accuracy"] = acc
    elif y is not None:
        notes.append("accuracy: the data has labels but no predictions ('pred')")
    return _jsonable(rep)


def combined_score(range_scores, joint, guard: DeepValidationGuard) -> np.ndarray:
    """One score for "range or distribution": ``max(range score, (d - m) / (threshold - m))``
    with ``m`` the median joint discrepancy of the held-out clean data, so 1 is each guard's own
    boundary (above 1: flagged by that guard) and 0 is a typical clean input."""
    m = guard.info.get("held_out_median")
    m = float(m) if m is not None else 0.0
    span = guard.threshold - m
    span = span if span > 1e-12 else max(abs(guard.threshold), 1.0)
    return np.maximum(np.asarray(range_scores, dtype=np.float64), (np.asarray(joint, dtype=np.float64) - m) / span)


def _pct(v) -> str:
    return pct(v, missing="-")  # one percentage format (report.pct)


def format_guard_report(rep: Mapping) -> List[str]:
    """The report as text lines (what ``latentaudit guard`` prints)."""
    lines = [f"deployment batch: {rep['n']} input(s)"]
    r, d, b = rep.get("range"), rep.get("distribution"), rep.get("both")
    if r:
        lines.append("in verified range (AuditAI), per direction:")
        w = max([len(k) for k in r["directions"]] + [5])
        for k, v in r["directions"].items():
            lines.append(f"  {k:<{w}}  {_pct(v['fraction_in']):>7}  ({v['n_in']}/{rep['n']})")
        lines.append(f"  {'all':<{w}}  {_pct(r['fraction_in']):>7}  ({r['n_in']}/{rep['n']})")
    if d:
        lines.append(f"in distribution (Deep Validation, {len(d['layers'])} layer(s), threshold {d['threshold']:.4g}, "
                     f"target false alarm {_pct(d['target_false_alarm'])}): {_pct(d['fraction_in'])} "
                     f"({d['n_in']}/{rep['n']})")
    if b:
        lines.append(f"in range and in distribution: {_pct(b['fraction_in'])} ({b['n_in']}/{rep['n']})")
    acc = rep.get("accuracy")
    if acc:
        lines.append(f"accuracy: {_pct(acc['overall'])} overall ({acc['n_errors']} error(s))")
        head = f"  {'guard':<13} {'inside':>16} {'outside':>16} {'errors flagged':>15} {'AUC (errors)':>13}"
        lines.append(head)
        for k, label in (("range", "range"), ("distribution", "distribution"), ("both", "both")):
            if k not in acc:
                continue
            a = acc[k]
            ins = f"{_pct(a['inside']['accuracy'])} (n={a['inside']['n']})"
            out = f"{_pct(a['outside']['accuracy'])} (n={a['outside']['n']})"
            auc = a.get("auc_errors")
            lines.append(f"  {label:<13} {ins:>16} {out:>16} {_pct(a.get('errors_flagged')):>15} "
                         f"{'-' if auc is None else f'{auc:.3f}':>13}")
    for note in rep.get("notes") or []:
        lines.append(f"note: {note}")
    return lines


def guard_html_section(rep: Optional[Mapping] = None, *, sheet_entry: Optional[Mapping] = None,
                       pixel: Optional[Mapping] = None) -> str:
    """An HTML ``<section id="deployment-guard">`` (plain ``<table>``s, no scripts, no styles,
    no external resources; every value escaped) for the report page: the guard's calibration (``sheet_entry``: the
    sheet's ``"guard"`` dict), a deployment-batch report (``guard_report``'s dict) and the
    pixel-space cross-check (the sheet's ``"pixel_crosscheck"`` dict). Any part may be None."""
    e = html.escape
    out = ['<section id="deployment-guard">', "<h2>Deployment guard</h2>"]
    if sheet_entry:
        out.append("<p>Deep Validation guard: one one-class SVM per (layer, predicted class); "
                   f"{len(sheet_entry.get('layers') or [])} layer(s) "
                   f"({e(', '.join(str(L.get('name')) for L in sheet_entry.get('layers') or []))}), "
                   f"threshold {float(sheet_entry.get('threshold', float('nan'))):.4g} on the joint discrepancy, "
                   f"target false alarm {_pct(sheet_entry.get('target_false_alarm'))}, measured on "
                   f"{e(str(sheet_entry.get('n_held_out', '?')))} held-out inputs: "
                   f"{_pct(sheet_entry.get('held_out_false_alarm'))}.</p>")
    if rep:
        out.append(f"<p>Deployment batch: {int(rep['n'])} input(s).</p>")
        rows = []
        r = rep.get("range")
        if r:
            for k, v in r["directions"].items():
                rows.append((f"in range: {k}", _pct(v["fraction_in"]), f"{v['n_in']}/{rep['n']}"))
            rows.append(("in range: all directions", _pct(r["fraction_in"]), f"{r['n_in']}/{rep['n']}"))
        d = rep.get("distribution")
        if d:
            rows.append(("in distribution", _pct(d["fraction_in"]), f"{d['n_in']}/{rep['n']}"))
        b = rep.get("both")
        if b:
            rows.append(("in range and in distribution", _pct(b["fraction_in"]), f"{b['n_in']}/{rep['n']}"))
        out.append("<table><thead><tr><th>check</th><th>fraction</th><th>inputs</th></tr></thead><tbody>")
        out += [f"<tr><td>{e(a)}</td><td>{e(f)}</td><td>{e(c)}</td></tr>" for a, f, c in rows]
        out.append("</tbody></table>")
        acc = rep.get("accuracy")
        if acc:
            out.append(f"<p>Accuracy {_pct(acc['overall'])} overall ({int(acc['n_errors'])} errors).</p>")
            out.append("<table><thead><tr><th>guard</th><th>accuracy inside</th><th>accuracy outside</th>"
                       "<th>errors flagged</th><th>ROC-AUC for errors</th></tr></thead><tbody>")
            for k in ("range", "distribution", "both"):
                if k in acc:
                    a = acc[k]
                    auc = a.get("auc_errors")
                    out.append(f"<tr><td>{e(k)}</td><td>{_pct(a['inside']['accuracy'])} (n={a['inside']['n']})</td>"
                               f"<td>{_pct(a['outside']['accuracy'])} (n={a['outside']['n']})</td>"
                               f"<td>{_pct(a.get('errors_flagged'))}</td>"
                               f"<td>{'-' if auc is None else f'{auc:.3f}'}</td></tr>")
            out.append("</tbody></table>")
        for note in rep.get("notes") or []:
            out.append(f"<p class=\"note\">{e(str(note))}</p>")
    checks = pixel if isinstance(pixel, (list, tuple)) else ([pixel] if pixel else [])
    if checks:
        out.append("<h3>Pixel-space cross-check</h3>")
        out.append("<table><thead><tr><th>seeds</th><th>L-inf budget</th><th>latent-proved seeds</th>"
                   "<th>attackable in pixel space</th></tr></thead><tbody>")
        for pc in checks:
            what = " ".join(str(pc[k]) for k in ("direction", "nodeid") if pc.get(k)) or "all"
            out.append(f"<tr><td>{e(what)}</td><td>{float(pc['eps']):g}</td><td>{int(pc['n_proved'])}</td>"
                       f"<td>{int(pc['n_attackable'])} ({_pct(pc.get('fraction_attackable'))})</td></tr>")
        out.append("</tbody></table>")
    out.append("</section>")
    return "\n".join(out)


# ------------------------------------------------------------------------ pixel-space cross-check
class PixelCheck:
    """Result of ``pixel_crosscheck``: ``fraction_attackable`` (of the latent-proved seeds),
    ``attackable`` (bool ``[N]`` over all seeds; False where not proved), ``counterexamples``
    (``[{"seed", "label", "predicted", "linf", "margin", "x"}]``, ``x`` the adversarial image as
    a numpy array) and ``to_dict()`` (JSON for the sheet, without images)."""

    def __init__(self, info: dict, attackable: np.ndarray, counterexamples: List[dict]):
        self.info = info
        self.attackable = attackable
        self.counterexamples = counterexamples

    @property
    def fraction_attackable(self) -> Optional[float]:
        return self.info["fraction_attackable"]

    def to_dict(self, max_counterexamples: int = 20) -> dict:
        cx = [{k: v for k, v in c.items() if k != "x"} for c in self.counterexamples[:max_counterexamples]]
        return _jsonable(dict(self.info, counterexamples=cx))

    def __repr__(self) -> str:
        return (f"PixelCheck(eps={self.info['eps']}, proved={self.info['n_proved']}, "
                f"attackable={self.info['n_attackable']})")


def pixel_crosscheck(classifier, decoder, z, labels=None, *, eps: float, proved=None, steps: int = 40,
                     step_size: Optional[float] = None, restarts: int = 1,
                     clip: Optional[Tuple[float, float]] = (0.0, 1.0),
                     seed: int = 0, batch_size: int = 512, direction: Optional[str] = None,
                     latent_eps: Optional[float] = None, nodeid: Optional[str] = None) -> PixelCheck:
    """AuditAI section 4.5: of the seeds proved in latent space, how many can still be attacked
    in pixel space? For each proved seed, PGD (sign steps on the margin ``max_{j != y} f_j -
    f_y``, L-inf ball of radius ``eps`` around ``x0 = decoder(z)``, clipped to ``clip``) on
    ``classifier(x)``; one start at ``x0`` and ``restarts`` random starts. ``y`` is ``labels``
    (an Accuracy spec) or, without labels, ``classifier(x0)``'s prediction (Invariance). A seed
    counts as attackable only when a plain forward pass of the found point misclassifies it
    (decoded seeds already misclassified at ``x0`` count, with ``at_nominal``).

    ``proved``: bool mask ``[N]``, an ``AuditResult`` (its ``"verified"`` seeds) or None (all).
    """
    import torch

    from ..engines.memory import is_oom

    if not (eps >= 0 and math.isfinite(eps)):
        raise GuardError(f"eps must be a finite number >= 0, got {eps}")
    zt = z if isinstance(z, torch.Tensor) else torch.as_tensor(np.asarray(z, dtype=np.float32))
    n = zt.shape[0]
    if proved is None:
        mask = np.ones(n, dtype=bool)
    elif hasattr(proved, "status"):
        mask = np.asarray([s == VERIFIED for s in proved.status], dtype=bool)
    else:
        mask = np.asarray(_to_numpy(proved), dtype=bool).reshape(-1)
    if mask.shape[0] != n:
        raise GuardError(f"proved has {mask.shape[0]} entries for {n} seeds")
    idx = np.flatnonzero(mask)
    gen = torch.Generator().manual_seed(int(seed))
    steps = int(steps)
    alpha = float(step_size) if step_size is not None else (2.5 * eps / max(steps, 1))
    attackable = np.zeros(n, dtype=bool)
    cxs: List[dict] = []
    at_nominal = 0
    differentiable = True
    lo, hi = (clip if clip is not None else (-math.inf, math.inf))
    for s in range(0, len(idx), batch_size):
        bi = idx[s:s + batch_size]
        with torch.no_grad():
            x0 = decoder(zt[bi]).detach()
            logits0 = classifier(x0)
        if labels is None:
            y = logits0.argmax(1)
        else:
            y = torch.as_tensor(_labels(labels, n)[bi], device=logits0.device)
        best = x0.clone()
        best_margin = _margin(logits0, y)
        for r in range(1 + max(0, int(restarts))):
            if r == 0:
                xa = x0.clone()
            else:
                noise = (torch.rand(x0.shape, generator=gen) * 2 - 1).to(x0) * eps
                xa = (x0 + noise).clamp(lo, hi)
            for _ in range(steps):
                xa.requires_grad_(differentiable)
                m = _margin(classifier(xa), y)
                g = None
                if differentiable and m.requires_grad:
                    try:
                        g, = torch.autograd.grad(m.sum(), xa)
                    except RuntimeError as exc:
                        # a classifier that runs but has no backward (an in-place op on a tensor
                        # autograd saved): random sign steps, as the latent attack does
                        if is_oom(exc):
                            raise
                        differentiable = False
                if g is None:
                    g = torch.rand(xa.shape, generator=gen).to(xa) - 0.5
                xa = xa.detach()
                with torch.no_grad():
                    xa = xa + alpha * g.sign()
                    xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(lo, hi)
                    mm = _margin(classifier(xa), y)
                    better = mm > best_margin
                    best[better] = xa[better]
                    best_margin = torch.where(better, mm, best_margin)
            xa = xa.detach()
        with torch.no_grad():  # re-check: plain forward pass, inside the ball and the clip box
            out = classifier(best)
            pred = out.argmax(1)
            linf = (best - x0).flatten(1).abs().max(1).values
            ok = (pred != y) & (linf <= eps * (1 + 1e-6) + 1e-7)
            nominal_wrong = logits0.argmax(1) != y
        for j in range(len(bi)):
            if bool(ok[j]):
                attackable[bi[j]] = True
                at_nominal += int(nominal_wrong[j])
                cxs.append({"seed": int(bi[j]), "label": int(y[j]), "predicted": int(pred[j]),
                            "linf": float(linf[j]), "margin": float(_margin(out[j:j + 1], y[j:j + 1])[0]),
                            "at_nominal": bool(nominal_wrong[j]), "x": best[j].detach().cpu().numpy()})
    k = int(len(idx))
    info = {"kind": "pixel_crosscheck", "attack": "pgd", "norm": "linf", "eps": float(eps), "steps": steps,
            "step_size": alpha, "restarts": int(restarts), "seed": int(seed),
            "clip": list(clip) if clip is not None else None, "n_seeds": int(n), "n_proved": k,
            "n_attackable": int(attackable.sum()), "n_attackable_at_nominal": int(at_nominal),
            "fraction_attackable": (float(attackable.sum()) / k if k else None),
            "label_source": "labels" if labels is not None else "prediction on the decoded seed"}
    for key, v in (("direction", direction), ("latent_eps", latent_eps), ("nodeid", nodeid)):
        if v is not None:
            info[key] = v
    cxs.sort(key=lambda c: -c["margin"])
    return PixelCheck(info, attackable, cxs)


def _margin(logits, y):
    import torch

    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y.view(-1, 1), -torch.inf)
    return other.max(1).values - true


# ------------------------------------------------------------------------ the command line
def run_guard_command(args) -> int:
    """``latentaudit guard SHEET DATA``: both guards on a deployment batch (0: report printed)."""
    from .specsheet import SpecSheet

    sheet = SpecSheet.load(args.sheet)
    guard = None
    if not args.range_only:
        if args.guard:
            guard = DeepValidationGuard.load(args.guard)
        elif guard_path_for(args.sheet).is_file():
            guard = DeepValidationGuard.load(guard_path_for(args.sheet))
    rep = guard_report(sheet, load_guard_data(args.data), guard=guard, eps=args.eps,
                       model=getattr(args, "model", None))
    if guard is None:
        rep["notes"] = [n for n in rep["notes"] if not n.startswith("distribution guard:")]
        if not args.range_only:
            rep["notes"].append(f"distribution guard: no Deep Validation guard beside the sheet (looked for "
                                f"{guard_path_for(args.sheet)}); pass --guard PATH")
    if args.json:
        print(json.dumps(rep, indent=2, allow_nan=False))
    else:
        for line in format_guard_report(rep):
            print(line)
    return 0

"""The proof ladder: decide each box as cheaply as possible, stopping per box once decided.

concrete check and quick attack -> interval bounds (IBP) -> linear bounds -> branch and
bound over the latent box (with attacks at the leaves) -> a longer attack on what is left.

Soundness rules kept here:
* a box is ``verified`` only when a sound upper bound of every spec row is below
  ``-tol``; in branch and bound only when *every* sub-box is (sub-boxes are removed only
  when verified, or when their seed is falsified);
* a box is ``falsified`` only by a point confirmed with a plain forward pass (falsify.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from . import blackbox, falsify
from .bounds import spec_upper_bound
from .forms import tolerance
from .graph import BoundGraph
from .problem import Problem

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"

ENGINES = ("auto", "ibp", "linear", "bab", "exact", "falsify")


@dataclass
class Outcome:
    """Per-box results of one ladder run (engine-level; see api.BoxResult for users)."""

    status: List[str]
    rung: List[str]
    bound: torch.Tensor  # best proven upper bound of max_row(C y + d) at the root box (inf if none)
    cex_t: torch.Tensor  # offsets of counterexamples (nan where none)
    cex_x: List[Optional[torch.Tensor]]
    cex_margin: torch.Tensor
    #: exact fraction of the segment where the spec holds (exact engine; nan elsewhere)
    fraction: Optional[torch.Tensor] = None
    bad_intervals: Optional[List[list]] = None
    bab_boxes: int = 0
    #: uniform samples per seed that satisfied the spec (None: seed verified, not sampled)
    sample_holds: Optional[List[Optional[int]]] = None
    sample_n: int = 0
    notes: List[str] = field(default_factory=list)


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Ladder:
    def __init__(self, problem: Problem, graph: Optional[BoundGraph], *, engine: str = "auto",
                 deadline: float = float("inf"), generator: Optional[torch.Generator] = None,
                 precision: str = "float32", batch_size: int = 1024, max_boxes: int = 2_000_000,
                 bound_fn=None, replay=None, attack_method: str = "sign", attack_fn=None):
        if engine not in ENGINES and bound_fn is None and engine != "falsify":
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.p = problem
        self.graph = graph
        self.engine = engine
        self.deadline = deadline
        self.gen = generator
        self.dtype = torch.float64 if precision == "float64" else torch.float32
        if graph is not None and self.dtype == torch.float64:
            self.graph = graph = graph.as_dtype(torch.float64)
        self.batch_size = batch_size
        self.max_boxes = max_boxes
        self.bound_fn = bound_fn  # external engine (auto_LiRPA): (idx, tl, tu, C, d) -> upper [n, m]
        self.replay = replay or []  # [(seed index, t)] counterexamples of an earlier run, tried first
        self.attack_method = attack_method
        self.attack_fn = attack_fn  # a falsifier registered through the hooks
        n = problem.n
        dev, dt = problem.tl.device, problem.tl.dtype
        self.status = [UNKNOWN] * n
        self.rung = [""] * n
        self.bound = torch.full((n,), torch.inf, dtype=dt, device=dev)
        self.cex_t = torch.full((n, problem.k), torch.nan, dtype=dt, device=dev)
        self.cex_x: List[Optional[torch.Tensor]] = [None] * n
        self.cex_margin = torch.full((n,), torch.nan, dtype=dt, device=dev)
        self.notes: List[str] = []
        self.bab_boxes = 0
        self.fraction = torch.full((n,), torch.nan, dtype=torch.float64)
        self.sample_holds: Optional[List[Optional[int]]] = None
        self.sample_n = 0
        self.bad_intervals: List[list] = [[] for _ in range(n)]

    # ----------------------------------------------------------------------- helpers
    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def unknown_mask(self) -> torch.Tensor:
        return torch.tensor([s == UNKNOWN for s in self.status], dtype=torch.bool, device=self.p.tl.device)

    def undecided(self) -> torch.Tensor:
        return torch.nonzero(self.unknown_mask()).reshape(-1)

    def falsifier(self):
        """The attack every attack rung uses: a registered one, the black-box search, or PGD."""
        return self.attack_fn or (blackbox.attack if self.attack_method == "blackbox" else falsify.attack)

    def _mark_falsified(self, idx, found: falsify.Found, rung: str):
        for j in torch.nonzero(found.mask).reshape(-1).tolist():
            i = int(idx[j])
            if self.status[i] != UNKNOWN:
                continue
            self.status[i], self.rung[i] = FALSIFIED, rung
            self.cex_t[i] = found.t[j]
            self.cex_x[i] = found.x[j].detach()
            self.cex_margin[i] = found.margin[j]

    def upper(self, idx, tl, tu, method):
        """Proven upper bound of ``max_row(C y + d)`` and the tolerance to beat, per box."""
        p = self.p
        c, G = p.center_gens(idx, tl, tu)
        rel, abs_ = tolerance(self.dtype)
        with torch.no_grad():
            y_c = p.model_forward(c)
            tol = rel * 10 * (1 + y_c.abs().amax(1)) + abs_
            C, d = p.rows(y_c, idx)
            if self.bound_fn is not None:
                ub = self.bound_fn(idx, tl, tu, C, d)
            else:
                ub = spec_upper_bound(self.graph, c.to(self.dtype), G.to(self.dtype), C.to(self.dtype),
                                      d.to(self.dtype), method=method, threshold=-tol.to(self.dtype)).to(tl.dtype)
        return ub.amax(1), tol, y_c

    def chunked_upper(self, idx, tl, tu, method):
        """``upper`` over chunks; on out-of-memory halve the chunk and go on."""
        outs, tols = [], []
        start, size = 0, self.batch_size
        while start < idx.numel():
            if start and self.out_of_time():
                # out of budget: the rest stays unbounded (+inf), i.e. open, never verified
                rest = idx.numel() - start
                outs.append(torch.full((rest,), torch.inf, dtype=tl.dtype, device=tl.device))
                tols.append(torch.zeros(rest, dtype=tl.dtype, device=tl.device))
                break
            sl = slice(start, start + size)
            try:
                u, t, _ = self.upper(idx[sl], tl[sl], tu[sl], method)
            except RuntimeError as exc:
                if not _oom(exc) or size == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                self.batch_size = size
                continue
            outs.append(u)
            tols.append(t)
            start += size
        return torch.cat(outs), torch.cat(tols)

    # ------------------------------------------------------------------------ rungs
    def run_replay(self):
        """Try stored counterexamples first (like hypothesis's example database): a
        regression is caught at once; points that no longer fail cost one forward pass."""
        pts = [(int(i), t) for i, t in self.replay if 0 <= int(i) < self.p.n and len(t) == self.p.k]
        if not pts:
            return
        p = self.p
        idx = torch.tensor([i for i, _ in pts], dtype=torch.long, device=p.tl.device)
        t = torch.tensor([list(map(float, t)) for _, t in pts], dtype=p.tl.dtype, device=p.tl.device)
        ok, x, margin, t = falsify.confirm(p, idx, t, p.tl[idx], p.tu[idx])
        self._mark_falsified(idx, falsify.Found(ok, t, x, margin), "replay")

    def run_attack(self, steps=20, restarts=4, rung="attack"):
        idx = self.undecided()
        if idx.numel() == 0:
            return
        found = self.falsifier()(self.p, idx, self.p.tl[idx], self.p.tu[idx], steps=steps, restarts=restarts,
                   deadline=self.deadline, generator=self.gen, method=self.attack_method)
        self._mark_falsified(idx, found, rung)

    def run_bound(self, method, rung):
        idx = self.undecided()
        if idx.numel() == 0 or self.out_of_time():
            return
        ub, tol = self.chunked_upper(idx, self.p.tl[idx], self.p.tu[idx], method)
        self.bound[idx] = torch.minimum(self.bound[idx], ub)
        for i, ok in zip(idx.tolist(), (ub < -tol).tolist()):
            if ok:
                self.status[i], self.rung[i] = VERIFIED, rung

    def run_bab(self, method="linear"):
        """Branch and bound over the latent box. Boxes leave the queue only when verified
        or when their seed is falsified, so a seed with any box left stays unknown."""
        p = self.p
        idx = self.undecided()
        if idx.numel() == 0:
            return
        q_idx, q_tl, q_tu = idx, p.tl[idx].clone(), p.tu[idx].clone()
        it = 0
        while q_idx.numel() and not self.out_of_time():
            it += 1
            # split every queued box along its widest coordinate (relative to the seed's box)
            width = (q_tu - q_tl) / (p.tu[q_idx] - p.tl[q_idx]).clamp(min=1e-30)
            dim = width.argmax(1)
            mid = ((q_tl + q_tu) / 2).gather(1, dim[:, None])[:, 0]
            left_tu, right_tl = q_tu.clone(), q_tl.clone()
            ar = torch.arange(q_idx.numel(), device=q_idx.device)
            left_tu[ar, dim] = mid
            right_tl[ar, dim] = mid
            c_idx = torch.cat([q_idx, q_idx])
            c_tl, c_tu = torch.cat([q_tl, right_tl]), torch.cat([left_tu, q_tu])
            self.bab_boxes += c_idx.numel()

            ub, tol = self.chunked_upper(c_idx, c_tl, c_tu, method)
            open_ = ~(ub < -tol)
            c_idx, c_tl, c_tu, ub = c_idx[open_], c_tl[open_], c_tu[open_], ub[open_]
            if c_idx.numel() == 0:
                q_idx = c_idx
                break
            # attack at the leaves: the worst open sub-box of each seed (first on ties), a few steps
            worst = torch.full((p.n,), -torch.inf, dtype=ub.dtype, device=ub.device).scatter_reduce(
                0, c_idx, ub, "amax")
            rows = torch.nonzero(ub == worst[c_idx]).reshape(-1)
            first = torch.full((p.n,), rows.numel(), dtype=torch.long, device=ub.device).scatter_reduce(
                0, c_idx[rows], torch.arange(rows.numel(), device=ub.device), "amin")
            w = rows[first[first < rows.numel()]]
            found = self.falsifier()(p, c_idx[w], c_tl[w], c_tu[w], steps=5 if it % 4 else 15, restarts=1,
                                     deadline=self.deadline, generator=self.gen, method=self.attack_method)
            self._mark_falsified(c_idx[w], found, "bab-attack")
            alive = self.unknown_mask()[c_idx]
            q_idx, q_tl, q_tu = c_idx[alive], c_tl[alive], c_tu[alive]
            if q_idx.numel() > self.max_boxes:
                self.notes.append(f"branch and bound stopped at {self.max_boxes} open sub-boxes")
                break
        # verified: every sub-box of the seed left the queue proved (none dropped otherwise)
        remaining = set(q_idx.tolist())
        for i in idx.tolist():
            if self.status[i] == UNKNOWN and i not in remaining:
                self.status[i], self.rung[i] = VERIFIED, "bab"

    def can_run_exact(self) -> bool:
        from .segment import NotPiecewiseLinear, check_piecewise_linear

        if self.graph is None or self.p.k != 1:
            return False
        try:
            check_piecewise_linear(self.graph)
        except NotPiecewiseLinear as exc:
            if self.engine == "exact":
                self.notes.append(f"exact segments need a piecewise-linear network: {exc}")
            return False
        return True

    def run_exact(self):
        """Exact 1-D certification: decides every seed of a piecewise-linear network."""
        from .segment import NotPiecewiseLinear, certify

        p = self.p
        if self.undecided().numel() == 0:
            return
        # all seeds, decided ones too: the exact fraction per seed goes into the spec sheet
        idx = torch.arange(p.n, device=p.tl.device)
        V = p.V if p.V.shape[0] == 1 else p.V[idx]
        v = V[:, 0].expand(idx.numel(), *p.input_shape)
        labels = None if p.labels is None else p.labels[idx]
        try:
            res = certify(self.graph, p.x0[idx], v, p.tl[idx, 0], p.tu[idx, 0], p.spec, labels)
        except NotPiecewiseLinear as exc:
            self.notes.append(str(exc))
            return
        with torch.no_grad():
            c, _ = p.center_gens(idx, p.tl[idx], p.tu[idx])
            y_c = p.model_forward(c)
        rel, abs_ = tolerance(torch.float32)
        tol = (rel * 10 * (1 + y_c.abs().amax(1)) + abs_).cpu().double()
        cand_t = res.worst_t.clone()
        for j, iv in enumerate(res.bad_intervals):
            if iv:  # the middle of the longest failing sub-interval is a robust candidate
                lo, hi = max(iv, key=lambda ab: ab[1] - ab[0])
                cand_t[j] = (lo + hi) / 2
        ok, x, margin, t = falsify.confirm(p, idx, cand_t.to(p.tl)[:, None], p.tl[idx], p.tu[idx])
        self._mark_falsified(idx, falsify.Found(ok, t, x, margin), "exact")
        for j, i in enumerate(idx.tolist()):
            self.fraction[i] = float(res.fraction[j])
            self.bad_intervals[i] = res.bad_intervals[j]
            if self.status[i] == UNKNOWN and bool(res.max_margin[j] < -tol[j]):
                self.status[i], self.rung[i] = VERIFIED, "exact"
                self.bound[i] = min(float(self.bound[i]), float(res.max_margin[j]))

    def run_sampling(self, n_samples=256, confidence=0.99):
        """Uniform samples of every seed not verified (falsified ones too, so the estimate
        of the holding fraction is unbiased): finds counterexamples and gives the
        statistical evidence behind an ``estimated`` verdict."""
        from .. import stats

        p = self.p
        idx = torch.tensor([i for i, s in enumerate(self.status) if s != VERIFIED], dtype=torch.long,
                           device=p.tl.device)
        if idx.numel() == 0:
            return
        est = stats.estimate_box_fraction(p, idx, n_samples, confidence, self.gen)
        v = torch.as_tensor(est.violated, device=idx.device)
        if bool(v.any()):
            ok, x, m, t = falsify.confirm(p, idx[v], est.cex_t[v], p.tl[idx[v]], p.tu[idx[v]])
            self._mark_falsified(idx[v], falsify.Found(ok, t, x, m), "sampling")
        self.sample_holds, self.sample_n = est.holds_by_seed(p.n), n_samples

    # -------------------------------------------------------------------------- run
    def run(self) -> Outcome:
        e = self.engine
        self.run_replay()
        # concrete check of the seed and the box corners: free compared with any bound
        self.run_attack(steps=0, restarts=1, rung="attack")
        if self.bound_fn is not None:
            self.run_bound(None, e)
        elif self.graph is not None and e != "falsify":
            if e != "exact":
                self.run_bound("ibp", "ibp")
            if e in ("auto", "linear", "bab"):
                self.run_bound("linear", "linear")
            # what the cheap bounds left: attack before spending the budget on splitting
            self.run_attack(steps=10, restarts=2, rung="attack")
            if e in ("auto", "exact") and self.can_run_exact():
                self.run_exact()
            elif e in ("auto", "bab"):
                self.run_bab()
        if not self.out_of_time():
            self.run_attack(steps=30, restarts=4, rung="attack")
        if self.graph is None and self.bound_fn is None and self.attack_method != "blackbox" \
                and not self.out_of_time():
            # no bounds and maybe no gradients (a wrapped callable): a gradient-free search too
            idx = self.undecided()
            if idx.numel():
                found = blackbox.attack(self.p, idx, self.p.tl[idx], self.p.tu[idx], deadline=self.deadline,
                                        generator=self.gen)
                self._mark_falsified(idx, found, "blackbox")
        if not self.out_of_time():
            self.run_sampling()
        return Outcome(self.status, self.rung, self.bound, self.cex_t, self.cex_x, self.cex_margin,
                       fraction=self.fraction, bad_intervals=self.bad_intervals, bab_boxes=self.bab_boxes,
                       sample_holds=self.sample_holds, sample_n=self.sample_n, notes=self.notes)

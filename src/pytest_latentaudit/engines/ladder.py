"""The proof ladder: decide each box as cheaply as possible, stopping per box once decided.

concrete check and quick attack -> interval bounds (IBP) -> linear bounds -> short attack ->
CROWN intermediate bounds (float32 coefficients, then float64 for the near misses) -> attack
-> branch and bound over the latent box (with attacks at the leaves) -> a longer attack on
what is left.

Soundness rules kept here:
* a box is ``verified`` only when a sound upper bound of every spec row is below
  ``-tol``; in branch and bound only when *every* sub-box is (sub-boxes are removed only
  when verified, or when their seed is falsified);
* a box is ``falsified`` only by a point confirmed with a plain forward pass (falsify.py).

Progress: ``Ladder(progress=fn)`` calls ``fn(rung, decided, total)`` (plain Python, no pytest)
when a rung starts, between the chunks of long rungs (bound chunks, branch-and-bound
rounds, sampling chunks) and once at the end (rung ``"done"``), so a caller can show a live status; it never changes the work done.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from . import blackbox, falsify, memory
from .bounds import StageCount, spec_upper_bound
from .forms import tolerance
from .graph import BoundGraph
from .problem import Problem
from ..core.vocab import ENGINES, FALSIFIED, UNKNOWN, VERIFIED  # noqa: F401  (the names live in vocab)

#: share of the remaining budget the CROWN rung may use before branch and bound: with
#: k <= 2 perturbed dims splitting pays sooner, with more dims CROWN's tightness does
CROWN_SHARE_SMALL_K = 0.6
CROWN_SHARE_LARGE_K = 0.9
#: the bound branch and bound puts on each sub-box: "crown" (cheap stages first, CROWN
#: intermediate bounds only for sub-boxes they leave open) or "linear" (cheap stages only)
BAB_METHOD = "crown"
#: a rung run with ``probe`` goes on past its first PROBE_BOXES boxes only if it verified
#: at least PROBE_SHARE of them (IBP costs about a fifth of the linear bound)
PROBE_BOXES = 16
PROBE_SHARE = 0.25
#: gradient steps of the attack between the linear and the CROWN rungs
SHORT_ATTACK_STEPS = 5
#: the bound method of the CROWN rung's second pass: CROWN with float64 coefficients on a
#: float32 graph (``bounds.backward_bound``'s ``precise``)
PRECISE_CROWN = "crown64"


#: a bound call's chunk may take this many times its fixed cost (``_pace_model``), even
#: past the 2% of the budget a chunk is otherwise held to
PACE_OVERHEAD_FACTOR = 3.0
#: chunk timings per method that the pace model is fitted to
PACE_HISTORY = 8


def _pace_model(obs, fit: bool = True):
    """``(a, b)``: seconds of a bound call on ``s`` boxes ~ ``a + b s``, fitted (least squares)
    to the last timings ``[(s, seconds)]``; with one chunk size seen, or a fit with no positive
    slope or a negative fixed cost, ``a = 0`` and ``b`` the last chunk's seconds per box (the
    old pace). None without timings. Only where chunks end and how they group the boxes
    depends on it, never a box's bound."""
    if not obs:
        return None
    s_last, t_last = obs[-1]
    plain = (0.0, t_last / max(s_last, 1))
    sizes = {s for s, _ in obs}
    if len(sizes) < 2 or not fit:
        return plain
    m = len(obs)
    ms = sum(s for s, _ in obs) / m
    mt = sum(t for _, t in obs) / m
    var = sum((s - ms) ** 2 for s, _ in obs)
    b = sum((s - ms) * (t - mt) for s, t in obs) / var
    a = mt - b * ms
    return plain if b <= 0 or a < 0 else (a, b)


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
    #: the budget stopped the ladder (a rung cut, or the deadline passed) before it ran out of work
    cut: bool = False


def _on_halves(attack_fn):
    """``attack_fn`` that, when its batch of boxes does not fit in memory (the attack holds
    every start's autograd graph at once), attacks each half of the boxes in turn."""

    def run(problem, idx, tl, tu, **kw):
        return memory.on_halves(lambda sl: attack_fn(problem, idx[sl], tl[sl], tu[sl], **kw), idx.numel(),
                                falsify.Found.cat)

    return run


def _checked(attack_fn):
    """A registered falsifier (hookspecs: "its points are re-checked with a plain forward pass
    like any counterexample") as the built-in ones run: only its offsets ``t`` are taken, each
    clamped into its box and re-checked by ``falsify.confirm`` (batch, autograd on, alone);
    its mask says only which rows to try, and its points and margins are replaced by the
    re-check's. A point it claims that does not violate, or lies outside the box, falsifies
    nothing."""
    def attack(problem, idx, tl, tu, **kw):
        found = attack_fn(problem, idx, tl, tu, **kw)
        n, k = idx.numel(), tl.shape[1]
        mask = torch.as_tensor(found.mask, device=tl.device).reshape(-1).to(torch.bool)
        t = torch.as_tensor(found.t, device=tl.device).to(tl.dtype)
        if mask.numel() != n or t.shape != (n, k):
            raise ValueError(f"a registered falsifier returned a mask of {mask.numel()} rows and offsets "
                             f"shaped {tuple(t.shape)} for {n} boxes of {k} dimensions")
        ok, x, margin, t = falsify.confirm(problem, idx, t, tl, tu)  # a non-finite offset is no point there
        return falsify.Found(mask & ok, t, x, margin)

    return attack


class Ladder:
    def __init__(self, problem: Problem, graph: Optional[BoundGraph], *, engine: str = "auto",
                 deadline: float = float("inf"), generator: Optional[torch.Generator] = None,
                 precision: str = "float32", batch_size: int = 1024, max_boxes: int = 2_000_000,
                 bound_fn=None, replay=None, attack_method: str = "sign", attack_fn=None, progress=None):
        if engine not in ENGINES and bound_fn is None and engine != "falsify":
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.p = problem
        self.graph = graph
        self.engine = engine
        self.deadline = deadline
        self.gen = generator
        # bounds are always float64 with the model's rounding counted (docs/engines.md);
        # ``precision`` is kept for compatibility and no longer changes soundness
        self.precision = precision
        self.batch_size = batch_size
        self.max_boxes = max_boxes
        self.bound_fn = bound_fn  # external engine (auto_LiRPA): (idx, tl, tu, C, d) -> upper [n, m]
        self.replay = replay or []  # [(seed index, t)] counterexamples of an earlier run, tried first
        self.attack_method = attack_method
        self.attack_fn = attack_fn  # a falsifier registered through the hooks
        self.progress = progress  # fn(rung, decided, total) or None (see the module docstring)
        self._rung_now = ""
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
        #: root boxes bounded with CROWN intermediate bounds (the crown rung reached them)
        self.crowned = torch.zeros(n, dtype=torch.bool, device=dev)
        #: boxes that reached the costly CROWN stage of a bound (branch and bound's work units)
        self.stage_count = StageCount()
        self.fraction = torch.full((n,), torch.nan, dtype=torch.float64)
        self.sample_holds: Optional[List[Optional[int]]] = None
        self.sample_n = 0
        self.bad_intervals: List[list] = [[] for _ in range(n)]

    # ----------------------------------------------------------------------- helpers
    def tick(self, rung: Optional[str] = None) -> None:
        """Report progress: the rung now running and how many boxes are decided."""
        if self.progress is None:
            return
        if rung is not None:
            self._rung_now = rung
        self.progress(self._rung_now, self.p.n - self.status.count(UNKNOWN), self.p.n)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def unknown_mask(self) -> torch.Tensor:
        return torch.tensor([s == UNKNOWN for s in self.status], dtype=torch.bool, device=self.p.tl.device)

    def undecided(self) -> torch.Tensor:
        return torch.nonzero(self.unknown_mask()).reshape(-1)

    def falsifier(self):
        """The attack every attack rung uses: a registered one, the black-box search, or PGD.
        A registered one's points are re-checked like every counterexample (``_checked``)."""
        if self.attack_fn is not None:
            return _on_halves(_checked(self.attack_fn))
        return _on_halves(blackbox.attack if self.attack_method == "blackbox" else falsify.attack)

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
        c, G = p.center_gens(idx, tl, tu)  # float64: the box itself, not a rounding of it
        rel, abs_ = tolerance(torch.float32)
        with torch.no_grad():
            y_c = p.model_forward(c.to(p.x_dtype)).to(torch.float64)
            tol = rel * 10 * (1 + y_c.abs().amax(1)) + abs_
            C, d = p.rows(y_c, idx)
            if self.bound_fn is not None:
                ub = self.bound_fn(idx, tl, tu, C, d)
            else:
                precise = method == PRECISE_CROWN
                ub = spec_upper_bound(self.graph, c, G, C, d, method="crown" if precise else method,
                                      threshold=-tol, count=self.stage_count, precise=precise)
        return ub.amax(1).to(tl.dtype), tol.to(tl.dtype), y_c

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
            except (RuntimeError, MemoryError) as exc:
                if not memory.is_oom(exc) or size == 1:
                    raise
                u = None
            if u is None:  # retried outside the except clause, once the failed call's tensors are freed
                memory.free_cached()
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
        self.tick("replay")
        idx = torch.tensor([i for i, _ in pts], dtype=torch.long, device=p.tl.device)
        t = torch.tensor([list(map(float, t)) for _, t in pts], dtype=p.tl.dtype, device=p.tl.device)
        ok, x, margin, t = falsify.confirm(p, idx, t, p.tl[idx], p.tu[idx])
        self._mark_falsified(idx, falsify.Found(ok, t, x, margin), "replay")

    def run_centres(self):
        idx = self.undecided()
        if idx.numel() == 0:
            return
        p = self.p
        ok, x, margin, t = falsify.confirm(p, idx, (p.tl[idx] + p.tu[idx]) / 2, p.tl[idx], p.tu[idx])
        self._mark_falsified(idx, falsify.Found(ok, t, x, margin), "attack")

    def run_attack(self, steps=20, restarts=4, rung="attack"):
        idx = self.undecided()
        if idx.numel() == 0:
            return
        self.tick(rung)
        found = self.falsifier()(self.p, idx, self.p.tl[idx], self.p.tu[idx], steps=steps, restarts=restarts,
                   deadline=self.deadline, generator=self.gen, method=self.attack_method)
        self._mark_falsified(idx, found, rung)

    def paced_upper(self, idx, tl, tu, method, fit: bool = False):
        """``chunked_upper`` in chunks sized to the budget: a chunk is a power of two up to
        ``batch_size`` boxes, as many as the pace of the last chunk (per ``method``) says
        take at most 2% of the budget (at least 50 ms); a chunk starts only if it would end
        less than half a chunk past the deadline. Returns ``(ub, tol, done, cut)``: boxes from
        ``done`` on were not bounded (``+inf``, open), and ``cut`` says the budget stopped it.

        The order of the boxes is fixed; the clock chooses only where the sequence stops and
        how it is grouped into calls (a box's bound does not depend on its neighbours)."""
        pace = self.__dict__.setdefault("_pace", {})  # method -> [(chunk size, seconds)], the last few
        n = idx.numel()
        ub = torch.full((n,), torch.inf, dtype=tl.dtype, device=tl.device)
        tol = torch.zeros(n, dtype=tl.dtype, device=tl.device)
        t_start = getattr(self, "_t_start", None)  # set by run(); without it, no pacing
        budget = self.deadline - t_start if t_start is not None else float("inf")
        target = max(0.02 * budget, 0.05) if budget != float("inf") else float("inf")
        start, cut = 0, False
        key = (method, fit)  # the rungs' fitted pace and branch and bound's plain one apart
        while start < n:
            size = min(self.batch_size, n - start)
            # branch and bound's first chunk takes the rung's last pace (as one record did before)
            est = _pace_model(pace.get(key) or pace.get((method, not fit)), fit)
            if est is None and budget != float("inf"):
                size = min(size, 16)  # first calls of a method: measure its pace on a few boxes
            elif est is not None:
                a, b = est
                # a chunk costs a fixed a (per-op overhead of every pass) plus b per box: never so
                # small that the fixed part dominates (2 boxes of a LayerNorm network's CROWN stage
                # cost 7x a batch of 64 per box, and a pace taken from them shrank the next chunk)
                tgt = max(target, PACE_OVERHEAD_FACTOR * a)
                if a + b * size > tgt:
                    room = int((tgt - a) / b) if b > 0 else size
                    size = min(size, 1 << max(0, room.bit_length() - 1))
            now = time.perf_counter()
            if fit and est is not None:  # near the deadline, a chunk that fits in what is left
                while size > 1 and est[0] + est[1] * size > self.deadline - now:
                    size //= 2
            if now > self.deadline or (est is not None and now + 0.5 * (est[0] + est[1] * size) > self.deadline):
                cut = True
                break
            sl = slice(start, start + size)
            ub[sl], tol[sl] = self.chunked_upper(idx[sl], tl[sl], tu[sl], method)
            pace[key] = (pace.get(key) or [])[-(PACE_HISTORY - 1):] + [(size, time.perf_counter() - now)]
            start = sl.stop
            self.tick()
        return torch.nan_to_num(ub, nan=torch.inf), tol, start, cut

    def run_crown(self, share: float = 0.35):
        """CROWN intermediate bounds on the root boxes still open: tight where forward mode
        loses (many perturbed dims), costly per box, so not inside branch and bound. Held
        to ``share`` of the remaining budget (branch and bound gets the rest); stopping at
        that share is not a budget cut."""
        full, was_cut = self.deadline, getattr(self, "_cut", False)
        if full != float("inf"):
            self.deadline = time.perf_counter() + share * max(full - time.perf_counter(), 0.0)
        try:
            self.run_bound("crown", "crown", order=self.likely_first)
            self.run_crown_precise()
        finally:
            self.deadline, self._cut = full, was_cut

    def run_crown_precise(self):
        """CROWN again, in float64 coefficients, on the root boxes the CROWN rung bounded and
        left open, likeliest first, ``PROBE_BOXES`` at a time: on a float32 graph our own
        rounding of the backward products is counted as large as the model's, and through the
        intermediate bounds it compounds, so that it alone keeps boxes a little above their
        threshold open, and branch and bound cannot close them (the rounding does not shrink
        with the sub-box). A chunk that verifies fewer than ``PROBE_SHARE`` of its boxes ends
        the rung: the rest lie further from a proof, where splitting pays more. Which boxes go
        depends on the boxes and their bounds, never on the clock."""
        g = self.graph
        if g is None or g.dtype != torch.float32 or g.reduced_float32 or self._time_up():
            return  # float64 coefficients already (a float64 graph, or TF32 products)
        idx = self.undecided()
        idx = idx[self.crowned[idx]]
        if idx.numel() == 0:
            return
        idx = self.likely_first(idx)
        for s in range(0, idx.numel(), PROBE_BOXES):
            if self._time_up():
                return
            chunk = idx[s:s + PROBE_BOXES]
            self._bound_boxes(chunk, PRECISE_CROWN, "crown")
            if not self._paid(chunk):
                return

    def _paid(self, idx) -> bool:
        """Whether at least ``PROBE_SHARE`` of the boxes ``idx`` are verified (a probe paid)."""
        return sum(self.status[i] == VERIFIED for i in idx.tolist()) >= PROBE_SHARE * idx.numel()

    def likely_first(self, idx):
        """``idx`` ordered by how close the bound so far came to a proof, relative to the
        margin at the box centre (``bound / |margin|``, smallest first): when the budget
        stops a costly rung part-way, the boxes it reached were the likeliest to close.
        A function of the boxes and bounds only, never of the clock."""
        p = self.p
        with torch.no_grad():
            c, _ = p.center_gens(idx, p.tl[idx], p.tu[idx])
            m = p.margin(p.model_forward(c.to(p.x_dtype)), idx).to(torch.float64)
        score = self.bound[idx].to(torch.float64) / m.abs().clamp(min=1e-12)
        return idx[torch.argsort(torch.nan_to_num(score, nan=torch.inf), stable=True)]

    def run_bound(self, method, rung, probe=False, order=None):
        """Bound the undecided boxes with ``method``. With ``probe`` (a cheap rung that a
        later one subsumes), the first ``PROBE_BOXES`` boxes are bounded first, and the
        rest only if at least ``PROBE_SHARE`` of those were verified: otherwise the later
        rung does the work anyway. The decision depends on the boxes, not on the clock.
        ``order`` (a function of the undecided indices) sets the order the boxes go in."""
        idx = self.undecided()
        if idx.numel() == 0 or self._time_up():
            return
        self.tick(rung)
        if order is not None:
            idx = order(idx)
        if probe and idx.numel() > PROBE_BOXES:
            head = idx[:PROBE_BOXES]
            self._bound_boxes(head, method, rung)
            if not self._paid(head):
                return
            idx = self.undecided()
            if idx.numel() == 0 or self._time_up():
                return
        self._bound_boxes(idx, method, rung)

    def _bound_boxes(self, idx, method, rung):
        # a rung's chunks are alike (root boxes, one method), so its pace is fitted with a fixed
        # cost per call; branch and bound's mix cheap and CROWN-stage boxes, and keep the plain pace
        ub, tol, done, cut = self.paced_upper(idx, self.p.tl[idx], self.p.tu[idx], method, fit=True)
        self._cut = getattr(self, "_cut", False) or cut
        if method in ("crown", PRECISE_CROWN):
            self.crowned[idx[:done]] = True
        self.bound[idx] = torch.minimum(self.bound[idx], ub)
        for i, ok in zip(idx.tolist(), (ub < -tol).tolist()):
            if ok:
                self.status[i], self.rung[i] = VERIFIED, rung

    def run_bab(self, method="linear", split="auto"):
        """Branch and bound over the latent box, seed by seed (see bab.py). Boxes leave the
        pool only when verified or when their seed is falsified, so a seed with any box
        left stays unknown; the order of work is fixed, the deadline only truncates it."""
        from .bab import run_bab

        return run_bab(self, method=method, split=split)

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
        self.tick("exact")
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
            y_c = p.model_forward(c.to(p.x_dtype))
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
            worst = float(res.max_margin[j] + res.float_slack[j])
            if self.status[i] == UNKNOWN and worst < -float(tol[j]):
                self.status[i], self.rung[i] = VERIFIED, "exact"
                self.bound[i] = min(float(self.bound[i]), worst)

    def run_sampling(self, n_samples=256, confidence=0.99, chunk_rows=65536):
        """Uniform samples of every seed not verified (falsified ones too, so the estimate
        of the holding fraction is unbiased): finds counterexamples and gives the
        statistical evidence behind an ``estimated`` verdict.

        Within the budget: it starts only if a timed forward pass says it fits, and runs in
        chunks of samples (the same random stream as one call) with the deadline checked
        between them; cut short, its counterexamples count but no estimate is given."""
        p = self.p
        idx = torch.tensor([i for i, s in enumerate(self.status) if s != VERIFIED], dtype=torch.long,
                           device=p.tl.device)
        if idx.numel() == 0:
            return
        n = idx.numel()
        self.tick("sampling")
        if not self._sampling_fits(idx, n * n_samples):
            self.notes.append(f"sampling skipped: {n * n_samples} forward passes do not fit in the budget left")
            return
        from . import stats

        per = max(1, chunk_rows // n)
        holds = torch.zeros(n, dtype=torch.long, device=idx.device)
        best_m = torch.full((n,), -torch.inf, dtype=p.tl.dtype, device=idx.device)
        best_t = torch.full((n, p.k), torch.nan, dtype=p.tl.dtype, device=idx.device)
        done = 0
        while done < n_samples:
            if done and self.out_of_time():
                break
            r = min(per, n_samples - done)
            est = stats.estimate_box_fraction(p, idx, r, confidence, self.gen, chunk_rows=chunk_rows)
            holds += est.holds.to(holds.device)
            m = est.cex_margin.to(best_m)
            better = (est.holds.to(holds.device) < r) & ((m > best_m) | torch.isinf(best_m))
            best_m = torch.where(better, m, best_m)
            best_t = torch.where(better[:, None], est.cex_t.to(best_t), best_t)
            done += r
            self.tick()
        v = holds < done
        if bool(v.any()):
            ok, x, m, t = falsify.confirm(p, idx[v], best_t[v], p.tl[idx[v]], p.tu[idx[v]])
            self._mark_falsified(idx[v], falsify.Found(ok, t, x, m), "sampling")
        if done < n_samples:
            self.notes.append(f"sampling stopped at {done} of {n_samples} samples per seed (budget)")
            return
        out: List[Optional[int]] = [None] * p.n
        for i, h in zip(idx.tolist(), holds.tolist()):
            out[int(i)] = int(h)
        self.sample_holds, self.sample_n = out, n_samples

    def _sampling_fits(self, idx, rows) -> bool:
        """Whether ``rows`` plain forward passes fit before the deadline (plus 2% of the
        budget), judged by timing up to 256 of them at the boxes' centres."""
        if self.deadline == float("inf"):
            return True
        p = self.p
        m = min(rows, 256)
        rep = idx.repeat((m + idx.numel() - 1) // idx.numel())[:m]
        t0 = time.perf_counter()
        with torch.no_grad():
            y = p.model_forward(p.point(rep, (p.tl[rep] + p.tu[rep]) / 2))
            p.holds(y, rep)
        if y.is_cuda:
            torch.cuda.synchronize()
        per_row = (time.perf_counter() - t0) / m
        slack = 0.02 * max(self.deadline - getattr(self, "_t_start", self.deadline), 0.0)
        return time.perf_counter() + per_row * rows <= self.deadline + slack

    # -------------------------------------------------------------------------- run
    def _time_up(self) -> bool:
        """Out of budget, or a rung stopped for the budget (then later rungs stay off, so
        a larger budget runs a longer prefix of the same work, never different work)."""
        return getattr(self, "_cut", False) or self.out_of_time()

    def run(self) -> Outcome:
        e = self.engine
        self._t_start = time.perf_counter()
        self._cut = False
        self.tick("start")
        self.run_replay()
        # a concrete check of every box centre (the seed, for a fresh box): one forward pass,
        # so a misclassified seed is falsified whatever the budget; the corners come with the
        # first attack, after the cheap bounds, on the boxes they left open
        self.run_centres()
        if self.bound_fn is not None:
            self.run_bound(None, e)
        elif self.graph is not None and e != "falsify":
            if e != "exact":
                # IBP is subsumed by the linear bound: worth running first only where it
                # verifies a fair share of the boxes on its own
                self.run_bound("ibp", "ibp", probe=e in ("auto", "linear", "bab"))
            if e in ("auto", "linear", "bab"):
                self.run_bound("linear", "linear")
            if e in ("auto", "linear") and not self._time_up():
                # what the cheap bounds left: a short attack first, as a falsified box needs
                # no CROWN (costly per box) and no splitting; short, as on a box that CROWN
                # proves it costs about half a CROWN bound (the full attack comes later)
                self.run_attack(steps=SHORT_ATTACK_STEPS, restarts=2, rung="attack")
                # few perturbed dims: splitting with cheap bounds pays more than CROWN per box
                self.run_crown(share=CROWN_SHARE_SMALL_K if self.p.k <= 2 else CROWN_SHARE_LARGE_K)
            # what the bounds left: attack before spending the budget on splitting (after the
            # short attack before CROWN too: the boxes CROWN left are few, and worth 10 steps)
            if not self._time_up():
                self.run_attack(steps=10, restarts=2, rung="attack")
            exact = e in ("auto", "exact") and self.can_run_exact() and not self._time_up()
            if exact:
                self.run_exact()
            # branch and bound on what is left: after exact segments too, whose float32
            # deviation bound can be too loose to close a seed the exact margin clears
            if (e == "bab" or (e == "auto" and (not exact or self.undecided().numel()))) and not self._time_up():
                bb = self.run_bab(method=BAB_METHOD)
                self._cut = bool(bb is not None and bb.cut)
        if not self._time_up():
            self.run_attack(steps=30, restarts=4, rung="attack")
        if self.graph is None and self.bound_fn is None and self.attack_method != "blackbox" \
                and not self._time_up():
            # no bounds and maybe no gradients (a wrapped callable): a gradient-free search too
            idx = self.undecided()
            if idx.numel():
                self.tick("blackbox")
                found = blackbox.attack(self.p, idx, self.p.tl[idx], self.p.tu[idx], deadline=self.deadline,
                                        generator=self.gen)
                self._mark_falsified(idx, found, "blackbox")
        if not self._time_up():
            self.run_sampling()
        if (self.graph is not None or self.bound_fn is not None) and e != "falsify" and self._time_up() \
                and self.undecided().numel() and not bool(torch.isfinite(self.bound).any()):
            # an "unknown" that says why: no bound ran at all, not a bound that failed
            self.notes.append("the budget ran out before any box was bounded (lowering the model and checking its "
                              "trace count against it): pass a larger budget_s")
        self.tick("done")
        return Outcome(self.status, self.rung, self.bound, self.cex_t, self.cex_x, self.cex_margin,
                       fraction=self.fraction, bad_intervals=self.bad_intervals, bab_boxes=self.bab_boxes,
                       sample_holds=self.sample_holds, sample_n=self.sample_n, notes=self.notes,
                       cut=self._time_up())

"""Branch and bound over latent boxes that makes progress seed by seed (issue 10).

Every undecided seed starts with its root box in a pool of open sub-boxes. Each round
takes one batch of open boxes, splits each in two and bounds all children in batched
calls; a child whose sound upper bound is below ``-tol`` closes, the others go back to
the pool. A seed is ``verified`` when it has no open box left. Boxes leave the pool only
when proved or when their seed is falsified, so no sub-box is ever dropped.

The order of work is deterministic: the clock only decides where the sequence stops
(between chunks of bounds, ``Ladder.paced_upper``; a chunk that would end well past the
deadline is not started) and how children are grouped into calls, so a larger budget runs
a longer prefix of the same work and the decided count never falls as the budget grows.
When the budget stops the search, the ladder's later rungs stay off for the same reason.

Which boxes a round takes:

* seeds in a fixed order, easiest first (the root bound relative to the margin at the
  centre); a round fills its batch with the open boxes of the first seeds in that order,
  so seeds finish one after another (a ramp, not a cliff at the end of the budget);
* a seed that used up its quota of work moves on to its next pass, and its quota grows
  fourfold; the seed's pass ``p`` is scheduled at key ``(rank + SEED_OFFSET) * 4**p``: seed
  ``r``'s work is about ``1 / (r + 1)`` of the easiest seed's (a harmonic schedule, within a
  log factor of the best order for any budget when the easiest-first order is right), so
  the easiest seeds go deeper before the last ones start, and what a budget covers is a
  few seeds decided, not every seed a little further and none done;
* at most ``cap`` boxes of one seed per tier among seeds of one key: a seed whose boxes
  multiply cannot fill the batch;
* within a seed, the worst (largest) bound first.

Work is counted in units: a bounded child is one, plus ``CROWN_UNITS`` if its bound needed
the CROWN stage. Quotas are in units, and a round's size follows the units per child of
the round before (starting at ``FIRST_ROUND`` parents and at most doubling), so where every
sub-box needs CROWN (tens of milliseconds each) a round is a few boxes, not a thousand, and
seeds close while the budget lasts. Units count work done, so the order stays a function
of the boxes and bounds, never of the clock.

The split dimension (``split="probe"``, the default): a root box is split along every
dimension and the best split is kept (fewest open children, then the least violation);
how much each dimension's split improved the bound there sets the seed's scale, and every
later box splits ``argmax(scale_j * relative width_j)``. Equal improvements give the widest
side, so isotropic problems split as the widest-side rule does, and anisotropic ones split
the dimension that matters (``"widest"`` and ``"best"``, every box probed, for comparison).

Attacks at the leaves: the worst open box of a seed is attacked when its count of bounded
children passes 16, 64, 256, ... (gathered over a few rounds into one call, a few gradient
steps), and harder when the seed is deferred, so attacks stay a small share of the work.
"""
from __future__ import annotations

import time
import torch

from ..core.vocab import FALSIFIED, UNKNOWN, VERIFIED

#: work units (below) one seed may use before it is deferred to its next pass (x4 per pass)
QUOTA0 = 1024
#: a bounded child is one work unit, plus this many if it needed the CROWN stage (about
#: the cost ratio of that stage to the cheap ones on a 5x512 head): rounds and quotas are
#: sized in units, which count the work done, never the clock
CROWN_UNITS = 32
#: a seed's pass p is scheduled at key ``(rank + SEED_OFFSET) * 4**p`` (rank: its place in
#: the easiest-first order): the first passes of the ``3 * SEED_OFFSET`` easiest seeds come
#: before any seed's second pass, and with many seeds the easiest get their deeper passes
#: before the last get a first one, so a budget that covers a few seeds decides a few
#: (a seed whose boxes multiply without end still takes under half the work before the
#: others are done: tests/test_bab.py)
SEED_OFFSET = 1
#: parents of the first round; each later round may double it, up to the batch size
FIRST_ROUND = 16
#: the first leaf attack of a seed after this many bounded children (x4 after each)
ATTACK0 = 16
#: leaf attacks wait for this many seeds, or at most this many rounds
ATTACK_BATCH = 32
ATTACK_EVERY = 8
#: root boxes are probed along every dimension up to this many dimensions (else: widest side)
PROBE_MAX_K = 8
#: exponent and floor of the split scale a root probe sets (see ``_probe_scale``)
PROBE_POWER = 0.5
PROBE_FLOOR = 0.05


def _group_rank(keys: torch.Tensor) -> torch.Tensor:
    """Position of each element within its run of equal ``keys`` (``keys`` sorted)."""
    n = keys.numel()
    ar = torch.arange(n, device=keys.device)
    if n == 0:
        return ar
    new = torch.ones(n, dtype=torch.bool, device=keys.device)
    new[1:] = keys[1:] != keys[:-1]
    start = torch.where(new, ar, torch.zeros_like(ar)).cummax(0).values
    return ar - start


def _first_per_group(seed: torch.Tensor, value: torch.Tensor, n: int):
    """Index of the largest ``value`` per seed (first on ties); returns (rows, seeds)."""
    worst = torch.full((n,), -torch.inf, dtype=value.dtype, device=value.device).scatter_reduce(
        0, seed, value, "amax")
    rows = torch.nonzero(value == worst[seed]).reshape(-1)
    # value may be nan only if a bound engine returned nan: such rows are never "worst"
    first = torch.full((n,), rows.numel(), dtype=torch.long, device=value.device).scatter_reduce(
        0, seed[rows], torch.arange(rows.numel(), device=value.device), "amin")
    pick = rows[first[first < rows.numel()]]
    return pick, seed[pick]


class BranchAndBound:
    def __init__(self, ladder, method: str = "linear", split: str = "auto"):
        self.L = ladder
        self.p = ladder.p
        self.method = method
        if split == "auto":
            split = "probe"
        if split not in ("probe", "widest", "best"):
            raise ValueError(f"unknown split rule {split!r}")
        self.split = split
        #: seconds spent bounding and attacking (for reports and benchmarks)
        self.t_bound = 0.0
        self.t_attack = 0.0
        self.rounds = 0
        #: the budget ended the search (not an empty pool): later rungs must not run, so that
        #: a larger budget only ever does more of the same work
        self.cut = False

    # ------------------------------------------------------------------- helpers
    def _bound(self, idx, tl, tu):
        """Bound the children (``Ladder.paced_upper``: chunks sized to the budget, none
        started that would end well past the deadline). Unbounded children get ``+inf``
        (open, never proved)."""
        L = self.L
        t0 = time.perf_counter()
        ub, tol, done, cut = L.paced_upper(idx, tl, tu, self.method)
        self.t_bound += time.perf_counter() - t0
        self.cut = self.cut or cut
        L.bab_boxes += done
        return ub, tol, done

    @staticmethod
    def _split_one(tl, tu, dim):
        """Halves of each box along ``dim``: ``[P, 2, k]`` (left, right)."""
        ar = torch.arange(tl.shape[0], device=tl.device)
        mid = ((tl + tu) / 2)[ar, dim]
        left_tu, right_tl = tu.clone(), tl.clone()
        left_tu[ar, dim] = mid
        right_tl[ar, dim] = mid
        return torch.stack([tl, right_tl], 1), torch.stack([left_tu, tu], 1)

    @staticmethod
    def _split_all(tl, tu):
        """Halves of each box along every dimension: ``[P, k, 2, k]``."""
        P, k = tl.shape
        c_tl = tl[:, None, None, :].expand(P, k, 2, k).clone()
        c_tu = tu[:, None, None, :].expand(P, k, 2, k).clone()
        eye = torch.eye(k, dtype=torch.bool, device=tl.device)[None]
        m_ = ((tl + tu) / 2)[:, None, :].expand(P, k, k)
        c_tu[:, :, 0] = torch.where(eye, m_, c_tu[:, :, 0])
        c_tl[:, :, 1] = torch.where(eye, m_, c_tl[:, :, 1])
        return c_tl, c_tu

    def _best_dim(self, ub, tol, rel):
        """The best of every dimension's split (``ub``, ``tol``: ``[P, k, 2]``): fewest open
        children, then the least violation; zero-width dimensions never. With
        ``split="probe"`` the improvement per dimension also sets the seed's split scale."""
        dt = ub.dtype
        closed = ub < -tol
        gap = torch.where(closed, torch.zeros_like(ub), (ub + tol).clamp(min=0)).sum(2)
        frac = torch.nan_to_num(gap / (1 + gap), nan=1.0)  # monotone in the violation, in [0, 1]
        cost = (~closed).sum(2).to(dt) + frac
        cost = torch.where(rel > 0, cost, torch.full_like(cost, torch.inf))
        # no bounded child at all (the deadline struck): the widest side
        unb = ~torch.isfinite(ub).reshape(ub.shape[0], -1).any(1)
        return torch.where(unb, rel.argmax(1), cost.argmin(1))

    @staticmethod
    def _probe_scale(ub, parent_ub, rel):
        """Split scale per dimension from one probe of every split of a root box: with a
        gap that shrinks like ``c_j w_j**2`` along dimension ``j``, the improvement of
        halving ``j`` estimates ``c_j``; a box then splits ``argmax sqrt(c_j) w_j``. Equal
        improvements give the widest side. Floored, so no dimension is never split."""
        worse = ub.amax(2)  # [P, k]: the worse child of each dimension's split
        fin = torch.isfinite(worse)
        ref = torch.where(torch.isfinite(parent_ub), parent_ub,
                          torch.where(fin, worse, torch.full_like(worse, -torch.inf)).amax(1))
        gain = torch.where(fin, ref[:, None] - worse, torch.zeros_like(worse)).clamp(min=0)
        gain = torch.where(rel > 0, gain, torch.zeros_like(gain))
        top = gain.amax(1, keepdim=True)
        sc = (gain / top.clamp(min=1e-30)) ** PROBE_POWER
        sc = torch.where((top > 0) & torch.isfinite(top), sc.clamp(min=PROBE_FLOOR), torch.ones_like(sc))
        return sc

    def _attack(self, rows, steps, restarts):
        L = self.L
        if rows.numel() == 0 or L.out_of_time():
            return
        t0 = time.perf_counter()
        idx = self.o_seed[rows]
        found = L.falsifier()(self.p, idx, self.o_tl[rows], self.o_tu[rows], steps=steps, restarts=restarts,
                              deadline=L.deadline, generator=L.gen, method=L.attack_method)
        L._mark_falsified(idx, found, "bab-attack")
        self.t_attack += time.perf_counter() - t0

    # ----------------------------------------------------------------------- run
    def run(self):
        L, p = self.L, self.p
        idx = L.undecided()
        if idx.numel() == 0 or L.out_of_time():
            return
        dev, dt = p.tl.device, p.tl.dtype
        n, k = p.n, p.k
        root_w = (p.tu - p.tl).clamp(min=0)
        #: per seed, how much splitting each dimension is worth relative to the others
        self.scale = torch.ones(n, k, dtype=dt, device=dev)

        # the pool of open boxes; a root's bound is the one the earlier rungs proved
        self.o_seed = idx.clone()
        self.o_tl, self.o_tu = p.tl[idx].clone(), p.tu[idx].clone()
        self.o_ub = torch.nan_to_num(L.bound[idx].to(dt), nan=torch.inf)
        self.o_depth = torch.zeros(idx.numel(), dtype=torch.long, device=dev)
        # a root the CROWN rung did not reach (its budget share ran out) is bounded whole with
        # this method's CROWN stage before it is split: where the cheap bounds prove little
        # (a LayerNorm network), splitting it first costs 2k CROWN bounds for what one gives
        fresh_ok = self.method == "crown" and L.bound_fn is None and L.graph is not None
        self.o_fresh = ~L.crowned[idx] if fresh_ok else torch.zeros(idx.numel(), dtype=torch.bool, device=dev)

        # seed order: easiest first, i.e. the smallest root bound relative to the margin at
        # the centre (how much of the way the bound has to come down); ties by index
        with torch.no_grad():
            m_c = p.margin(p.model_forward(p.point(idx, (p.tl[idx] + p.tu[idx]) / 2)), idx).to(dt)
        score = torch.where(m_c < 0, self.o_ub / (-m_c).clamp(min=1e-30), torch.full_like(m_c, torch.inf))
        score = torch.nan_to_num(score, nan=torch.inf)
        order = idx[torch.sort(score, stable=True).indices]
        prio = torch.full((n,), n, dtype=torch.long, device=dev)
        prio[order] = torch.arange(order.numel(), device=dev)

        spent = torch.zeros(n, dtype=torch.long, device=dev)  # bounded children (for the attacks)
        work = torch.zeros(n, dtype=torch.float64, device=dev)  # units (for the quotas)
        passno = torch.zeros(n, dtype=torch.long, device=dev)
        next_attack = torch.full((n,), ATTACK0, dtype=torch.long, device=dev)
        closed_max = torch.full((n,), -torch.inf, dtype=dt, device=dev)
        pending = torch.zeros(n, dtype=torch.bool, device=dev)

        most = max(1, L.batch_size // (2 * k if self.split == "best" else 2))  # parents per round
        per_round = min(FIRST_ROUND, most)

        L.tick("bab")
        while True:
            if L.out_of_time():
                self.cut = True
                break
            alive = L.unknown_mask()
            keep = alive[self.o_seed]
            if not bool(keep.all()):  # boxes of falsified seeds leave with their seed
                self.o_seed, self.o_tl, self.o_tu, self.o_ub, self.o_depth, self.o_fresh = (
                    self.o_seed[keep], self.o_tl[keep], self.o_tu[keep], self.o_ub[keep], self.o_depth[keep],
                    self.o_fresh[keep])
            B = self.o_seed.numel()
            if B == 0:
                break
            if B > L.max_boxes:
                L.notes.append(f"branch and bound stopped at {L.max_boxes} open sub-boxes")
                break
            self.rounds += 1

            # ---- choose the batch: (key, tier, seed order, worst bound first), sorting only
            # the boxes of the seeds whose keys the batch reaches (the others are not touched)
            s = self.o_seed
            cap = max(1, per_round // 4)  # a seed's boxes per tier
            skey = (prio + SEED_OFFSET) * torch.pow(4, passno.clamp(max=12))
            by_key = torch.sort(skey, stable=True).indices
            cum = torch.bincount(s, minlength=n)[by_key].cumsum(0)
            hit = torch.nonzero(cum >= per_round).reshape(-1)
            bk = skey[s]
            cand = torch.arange(B, device=dev) if not hit.numel() else \
                torch.nonzero(bk <= skey[by_key[int(hit[0])]]).reshape(-1)
            o1 = cand[torch.sort(-self.o_ub[cand], stable=True).indices]
            o1 = o1[torch.sort(prio[s[o1]], stable=True).indices]
            tier = _group_rank(s[o1]) // cap
            krank = torch.unique(bk[o1], return_inverse=True)[1]  # small ints: no overflow below
            o2 = o1[torch.sort(krank * (B + 1) + tier, stable=True).indices]
            sel = o2[:per_round]
            rest = torch.ones(B, dtype=torch.bool, device=dev)
            rest[sel] = False

            P = sel.numel()
            q_seed, q_tl, q_tu, q_ub, q_depth = s[sel], self.o_tl[sel], self.o_tu[sel], self.o_ub[sel], \
                self.o_depth[sel]
            fresh = self.o_fresh[sel]  # bounded whole, not split (see above)
            rel = (q_tu - q_tl) / root_w[q_seed].clamp(min=1e-30)

            # ---- split and bound
            if self.split == "best":
                probe = torch.ones(P, dtype=torch.bool, device=dev)
            elif self.split == "probe" and 1 < k <= PROBE_MAX_K:
                probe = q_depth == 0
            else:
                probe = torch.zeros(P, dtype=torch.bool, device=dev)
            probe = probe & ~fresh
            pr, nr = torch.nonzero(probe).reshape(-1), torch.nonzero(~probe & ~fresh).reshape(-1)
            fr = torch.nonzero(fresh).reshape(-1)
            dim = (rel * self.scale[q_seed]).argmax(1)  # scale 1: the widest side
            # every dimension's split of the probed parents, [Pp, k, 2, k] (left, right), then
            # the chosen split of the others, [Pn, 2, k]
            a_tl, a_tu = self._split_all(q_tl[pr], q_tu[pr])
            n_tl, n_tu = self._split_one(q_tl[nr], q_tu[nr], dim[nr])
            b_seed = torch.cat([q_seed[pr].repeat_interleave(2 * k), q_seed[nr].repeat_interleave(2), q_seed[fr]])
            crown0 = L.stage_count.crown
            b_ub, b_tol, done = self._bound(b_seed, torch.cat([a_tl.reshape(-1, k), n_tl.reshape(-1, k), q_tl[fr]]),
                                            torch.cat([a_tu.reshape(-1, k), n_tu.reshape(-1, k), q_tu[fr]]))
            na, nb = pr.numel() * 2 * k, pr.numel() * 2 * k + nr.numel() * 2
            f_ub, f_tol = b_ub[nb:], b_tol[nb:]
            ch_tl = torch.zeros(P, 2, k, dtype=dt, device=dev)
            ch_tu, ch_ub, ch_tol = torch.zeros_like(ch_tl), torch.full((P, 2), torch.inf, dtype=dt, device=dev), \
                torch.zeros(P, 2, dtype=dt, device=dev)
            ch_tl[nr], ch_tu[nr] = n_tl, n_tu
            ch_ub[nr], ch_tol[nr] = b_ub[na:nb].reshape(-1, 2), b_tol[na:nb].reshape(-1, 2)
            if pr.numel():
                ub, tol = b_ub[:na].reshape(-1, k, 2), b_tol[:na].reshape(-1, k, 2)
                best = self._best_dim(ub, tol, rel[pr])
                if self.split == "probe":
                    self.scale[q_seed[pr]] = self._probe_scale(ub, q_ub[pr], rel[pr])
                ap = torch.arange(pr.numel(), device=dev)
                ch_tl[pr], ch_tu[pr] = a_tl[ap, best], a_tu[ap, best]
                ch_ub[pr], ch_tol[pr] = ub[ap, best], tol[ap, best]
            ch_tl, ch_tu = ch_tl.reshape(-1, k), ch_tu.reshape(-1, k)
            ch_ub, ch_tol = ch_ub.reshape(-1), ch_tol.reshape(-1)
            kids = torch.where(fresh, 1, torch.where(probe, 2 * k, 2))
            spent.scatter_add_(0, q_seed, kids)
            # units per child of this round (the CROWN stage's boxes spread over its children)
            per_kid = 1.0 + CROWN_UNITS * (L.stage_count.crown - crown0) / max(done, 1)
            work.scatter_add_(0, q_seed, kids.to(torch.float64) * per_kid)
            per_round = max(1, min(2 * per_round, most, int(most / per_kid)))
            ch_seed = q_seed.repeat_interleave(2)
            real = (~fresh).repeat_interleave(2)  # a fresh parent has no children
            ch_closed = (ch_ub < -ch_tol) & real
            if bool(ch_closed.any()):
                closed_max.scatter_reduce_(0, ch_seed[ch_closed], ch_ub[ch_closed], "amax")
            # a child is inside its parent: the parent's bound holds for it too
            ch_ub = torch.minimum(ch_ub, q_ub.repeat_interleave(2))
            op = ~ch_closed & real
            # a fresh parent that stays open goes back whole, with its new bound, to be split
            f_closed = f_ub < -f_tol
            if bool(f_closed.any()):
                closed_max.scatter_reduce_(0, q_seed[fr][f_closed], f_ub[f_closed], "amax")
            fo = fr[~f_closed]
            f_keep = torch.minimum(q_ub[fo], f_ub[~f_closed])
            self.o_seed = torch.cat([s[rest], ch_seed[op], q_seed[fo]])
            self.o_tl = torch.cat([self.o_tl[rest], ch_tl[op], q_tl[fo]])
            self.o_tu = torch.cat([self.o_tu[rest], ch_tu[op], q_tu[fo]])
            self.o_ub = torch.cat([self.o_ub[rest], ch_ub[op], f_keep])
            self.o_depth = torch.cat([self.o_depth[rest], (q_depth + 1).repeat_interleave(2)[op], q_depth[fo]])
            self.o_fresh = torch.cat([self.o_fresh[rest], torch.zeros(int(op.sum()) + fo.numel(), dtype=torch.bool,
                                                                      device=dev)])

            # ---- seeds with no open box left are verified
            count = torch.zeros(n, dtype=torch.long, device=dev).scatter_add_(
                0, self.o_seed, torch.ones_like(self.o_seed))
            touched = torch.zeros(n, dtype=torch.bool, device=dev)
            touched[q_seed] = True
            for i in torch.nonzero(touched & (count == 0)).reshape(-1).tolist():
                if L.status[i] == UNKNOWN:
                    L.status[i], L.rung[i] = VERIFIED, "bab"
            L.tick()
            if self.cut or L.out_of_time():
                self.cut = True
                break

            # ---- attacks at the leaves, and deferral of seeds past their quota; attacks are
            # gathered over a few rounds so that each call has many boxes
            live = touched & (count > 0)
            quota = QUOTA0 * torch.pow(4, passno.clamp(max=12))
            defer = live & (work >= quota)
            due = live & (spent >= next_attack)
            while bool((due & (spent >= next_attack)).any()):
                next_attack = torch.where(due & (spent >= next_attack), next_attack * 4, next_attack)
            pending = (pending | due) & ~defer & (count > 0)
            go = int(pending.sum()) >= ATTACK_BATCH or (self.rounds % ATTACK_EVERY == 0)
            if bool(defer.any()) or (go and bool(pending.any())):
                alive = L.unknown_mask()
                rows, seeds = _first_per_group(self.o_seed, self.o_ub, n)
                if go:
                    self._attack(rows[(pending & alive)[seeds]], steps=5, restarts=1)
                    pending[:] = False
                self._attack(rows[(defer & alive)[seeds]], steps=15, restarts=2)
                if L.out_of_time():
                    self.cut = True
            passno = passno + defer.long()

        self._finish(idx, closed_max)

    def _finish(self, idx, closed_max):
        """The best root bound branch and bound proved: the worst bound over the partition."""
        L, p = self.L, self.p
        n = p.n
        open_max = torch.full((n,), -torch.inf, dtype=closed_max.dtype, device=closed_max.device)
        if self.o_seed.numel():
            open_max.scatter_reduce_(0, self.o_seed, self.o_ub, "amax")
        part = torch.maximum(open_max, closed_max)
        for i in idx.tolist():
            if L.status[i] == FALSIFIED or not bool(torch.isfinite(part[i])):
                continue
            L.bound[i] = torch.minimum(L.bound[i], part[i].to(L.bound.dtype))


def run_bab(ladder, method: str = "linear", split: str = "auto") -> BranchAndBound:
    bb = BranchAndBound(ladder, method=method, split=split)
    bb.run()
    return bb

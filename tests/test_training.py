"""Certified training (training.py): the differentiable bounds are sound and agree with the
verification engines, and training with them makes heads provably robust along a direction."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_latentaudit import Accuracy, Direction, LatentAuditError, audit
from pytest_latentaudit.engines import bounds as EB
from pytest_latentaudit.engines.graph import trace
from pytest_latentaudit.engines.ops import UnsupportedLayer
from pytest_latentaudit.training import (
    EpsSchedule, bound_gap, box, certified_loss, interval_bounds, layers_of, logit_bounds, margin_bounds,
    margin_matrix, margin_upper_bounds, spec_loss, verified_fraction,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add overhead, and on a busy machine spinning
    threads make them many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ACTS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_head(act="relu", d=6, h=16, out=4, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    a = ACTS[act]
    return nn.Sequential(nn.Linear(d, h), a(), nn.Linear(h, h), a(), nn.Linear(h, out)).to(dtype)


def problem(n=24, d=6, k=1, out=4, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, out, (n,), generator=g)
    V, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return z, labels, V.to(dtype)


# -------------------------------------------------------------------- agreement
@pytest.mark.parametrize("act", list(ACTS))
def test_bounds_match_the_engines(act):
    head = make_head(act, dtype=torch.float64)
    z, labels, V = problem(k=2, dtype=torch.float64)
    eps = 0.6
    graph = trace(head, (6,), dtype=torch.float64).to(dtype=torch.float64)
    c, G = box(z, V, eps)
    C = margin_matrix(labels, 4, torch.float64)
    d = torch.zeros(C.shape[:2], dtype=torch.float64)
    for method in ("ibp", "linear"):
        mine = margin_upper_bounds(head, z, labels, Direction.subspace(V), eps, method)
        ref = EB.spec_upper_bound(graph, c, G, C, d, method=method)
        assert torch.allclose(mine, ref, atol=1e-5, rtol=0), method
    # CROWN-IBP = the engine's backward pass on IBP intermediate bounds
    mine = margin_upper_bounds(head, z, labels, Direction.subspace(V), eps, "crown-ibp")
    ref = EB.backward_upper(graph, EB.ibp_bounds(graph, c, G, pad=False), c, G, C, d)
    assert torch.allclose(mine, ref, atol=1e-5, rtol=0)
    for (lo, hi), (rlo, rhi) in zip(interval_bounds(head, c, G), EB.ibp_bounds(graph, c, G, pad=False)):
        assert torch.allclose(lo, rlo, atol=1e-5) and torch.allclose(hi, rhi, atol=1e-5)
    lo, hi = logit_bounds(head, z, Direction.subspace(V), eps, "linear")
    rlo, rhi = EB.output_bounds(graph, c, G, method="linear")
    assert torch.allclose(lo, rlo, atol=1e-5) and torch.allclose(hi, rhi, atol=1e-5)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("k", [1, 3])
def test_bounds_are_sound(act, k):
    head = make_head(act)
    z, labels, V = problem(k=k)
    eps = 0.8
    g = torch.Generator().manual_seed(2)
    t = (torch.rand(z.shape[0], 256, k, generator=g) * 2 - 1) * eps
    t[:, :2 ** k] = torch.cartesian_prod(*[torch.tensor([-eps, eps])] * k).reshape(-1, k) if k > 1 else \
        torch.tensor([[-eps], [eps]])
    pts = z[:, None, :] + t @ V.T
    with torch.no_grad():
        y = head(pts.reshape(-1, 6)).reshape(z.shape[0], 256, 4)
    true = y.gather(2, labels[:, None, None].expand(-1, 256, 1))
    margins = (y - true)  # y_j - y_label, the label's own column is 0
    keep = torch.ones(z.shape[0], 4, dtype=torch.bool)
    keep[torch.arange(z.shape[0]), labels] = False
    margins = margins.permute(0, 2, 1)[keep].reshape(z.shape[0], 3, 256)
    direction = Direction.subspace(V) if k > 1 else Direction.vector(V[:, 0])
    slack = 1e-4
    for method in ("ibp", "crown-ibp", "linear"):
        with torch.no_grad():
            lo, hi = margin_bounds(head, z, labels, direction, eps, method)
            llo, lhi = logit_bounds(head, z, direction, eps, method)
        assert (margins <= hi[:, :, None] + slack).all(), method
        assert (margins >= lo[:, :, None] - slack).all(), method
        assert (y <= lhi[:, None] + slack).all() and (y >= llo[:, None] - slack).all(), method
    # tighter methods are tighter
    ub = {m: margin_upper_bounds(head, z, labels, direction, eps, m) for m in ("ibp", "crown-ibp", "linear")}
    assert (ub["linear"] <= ub["ibp"] + 1e-5).all() and (ub["linear"] <= ub["crown-ibp"] + 1e-5).all()


def test_bounds_are_differentiable():
    head = make_head("relu")
    z, labels, V = problem()
    z = z.clone().requires_grad_(True)
    for method in ("ibp", "crown-ibp", "linear"):
        head.zero_grad()
        z.grad = None
        spec_loss(head, z, labels, V[:, 0], 0.5, method).backward()
        for name, p in head.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (method, name)
        assert z.grad is not None and z.grad.abs().sum() > 0  # encoders can be trained through it too


def test_loss_forms_and_eps_zero():
    head = make_head("relu")
    z, labels, V = problem()
    d = Direction.vector(V[:, 0])
    clean = F.cross_entropy(head(z), labels)
    assert torch.allclose(spec_loss(head, z, labels, d, 0.0), clean)
    assert torch.allclose(certified_loss(head, z, labels, d, 0.0), clean)  # warm-up: the task loss only
    margin = spec_loss(head, z, labels, d, 0.5, "ibp").detach()
    logits = spec_loss(head, z, labels, d, 0.5, "ibp", form="logits").detach()
    clean = clean.detach()
    assert float(margin) >= float(clean) - 1e-6
    assert float(logits) >= float(margin) - 1e-5  # AuditAI's worst-case logits are looser than margins
    total, parts = certified_loss(head, z, labels, d, 0.5, gamma=2.0, method="ibp", return_parts=True)
    assert abs(float(total.detach()) - (parts["task"] + 2.0 * parts["spec"])) < 1e-4
    mixed = certified_loss(head, z, labels, d, 0.5, kappa=0.25, method="ibp")
    assert abs(float(mixed.detach()) - (0.25 * parts["task"] + 0.75 * parts["spec"])) < 1e-4
    # several directions, one eps each
    two = spec_loss(head, z, labels, {"a": d, "b": Direction.axis(2)}, {"a": 0.5, "b": 0.0}, "ibp")
    assert abs(float(two.detach()) - (float(margin) + float(clean)) / 2) < 1e-5
    with pytest.raises(LatentAuditError, match="eps"):
        spec_loss(head, z, labels, {"a": d, "b": Direction.axis(2)}, {"a": 0.5}, "ibp")
    with pytest.raises(LatentAuditError, match="method"):
        spec_loss(head, z, labels, d, 0.5, "nope")


def test_layers_of_custom_and_unsupported_modules():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, z):
            return self.b(F.leaky_relu(self.a(z), 0.2))

    torch.manual_seed(0)
    head = Head()
    assert [type(x).__name__ for x in layers_of(head)] == ["_Linear", "_Act", "_Linear"]
    z, labels, V = problem(out=3)
    ub = margin_upper_bounds(head, z, labels, V[:, 0], 0.3, "linear")
    seq = nn.Sequential(head.a, nn.LeakyReLU(0.2), head.b)
    assert torch.allclose(ub, margin_upper_bounds(seq, z, labels, V[:, 0], 0.3, "linear"), atol=1e-6)
    with pytest.raises(UnsupportedLayer, match="1"):
        layers_of(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))


def test_eps_schedule_warmup_then_linear_ramp():
    s = EpsSchedule(eps=1.0, warmup_epochs=5, ramp_epochs=4, kappa_end=0.2)
    assert [s(e) for e in range(5)] == [0.0] * 5
    assert [s(e) for e in range(5, 10)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert s(5, 0.5) == pytest.approx(0.375)
    assert s.kappa_at(0) == 1.0 and s.kappa_at(20) == pytest.approx(0.2)
    assert s.kappa_at(6) == pytest.approx(1.0 - 0.8 * 0.5)
    assert EpsSchedule(eps=0.3, warmup_epochs=0, ramp_epochs=0)(0) == pytest.approx(0.3)
    with pytest.raises(LatentAuditError):
        EpsSchedule(eps=-1.0)


# ---------------------------------------------------------------------- training
def spurious_data(n, seed):
    """The label is the sign of z0; z1 is a nuisance that training data ties to the label
    (an easy shortcut). Robustness along z1 is what the semantic test asks for."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    y = (z[:, 0] > 0).long()
    z[:, 1] = (2 * y - 1) + 0.3 * torch.randn(n, generator=g)
    return z, y


def train(head, z, y, mode, eps, epochs=30, direction=Direction.axis(1, "nuisance")):
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    sched = EpsSchedule(eps=eps, warmup_epochs=2, ramp_epochs=10)
    gen = torch.Generator().manual_seed(0)
    for ep in range(epochs):
        perm = torch.randperm(z.shape[0], generator=gen)
        for i in range(0, z.shape[0], 128):
            idx = perm[i:i + 128]
            if mode == "nominal":
                loss = F.cross_entropy(head(z[idx]), y[idx])
            else:
                p = i / z.shape[0]
                loss = certified_loss(head, z[idx], y[idx], direction, sched(ep, p), method=mode,
                                      kappa=sched.kappa_at(ep, p))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_certified_training_shrinks_the_bound_gap(method):
    # After a plain warm-up (as in AuditAI / CROWN-IBP), a few certified steps shrink the
    # gap between upper and lower bounds of the margins; plain steps widen it.
    head = make_head("relu", d=4, h=32, out=2, seed=3)
    z, y = spurious_data(256, 0)
    d, eps = Direction.axis(1), 1.0
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    for _ in range(40):
        loss = F.cross_entropy(head(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    warm = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        before = float(bound_gap(head, z, y, d, eps, method))
    after = {}
    for mode in ("nominal", "certified"):
        head.load_state_dict(warm)
        opt = torch.optim.Adam(head.parameters(), lr=5e-3)
        for _ in range(20):
            loss = F.cross_entropy(head(z), y) if mode == "nominal" else \
                certified_loss(head, z, y, d, eps, method=method, kappa=0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after[mode] = float(bound_gap(head, z, y, d, eps, method))
    assert after["certified"] < 0.75 * before, (before, after)
    assert after["certified"] < 0.5 * after["nominal"], (before, after)


def test_certified_head_verifies_more_than_nominal():
    z, y = spurious_data(512, 0)
    zt, yt = spurious_data(200, 1)
    d, eps = Direction.axis(1, "nuisance"), 1.5
    nominal = train(make_head("relu", d=4, h=32, out=2, seed=0), z, y, "nominal", eps)
    certified = train(make_head("relu", d=4, h=32, out=2, seed=0), z, y, "crown-ibp", eps)
    with torch.no_grad():
        acc_n = float((nominal(zt).argmax(1) == yt).float().mean())
        acc_c = float((certified(zt).argmax(1) == yt).float().mean())
    assert acc_n > 0.95 and acc_c > 0.95  # both solve the task
    res_n = audit(nominal, (zt, yt), direction=d, eps=eps, spec=Accuracy(at_least=0.95), budget_s=20)
    res_c = audit(certified, (zt, yt), direction=d, eps=eps, spec=Accuracy(at_least=0.95), budget_s=20)
    assert res_c.verified_fraction > res_n.verified_fraction + 0.05, (res_c.counts, res_n.counts)
    assert res_c.verdict == "proved" and res_n.verdict == "violated"
    # the training-time monitor is a lower estimate of what the audit proves
    assert verified_fraction(certified, zt, yt, d, eps) <= res_c.verified_fraction


@pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA not installed")
def test_auto_lirpa_crown_ibp_matches_the_native_pass():
    head = make_head("relu")
    z, labels, V = problem()
    d = Direction.vector(V[:, 0])
    for method in ("ibp", "crown-ibp"):
        ours = margin_upper_bounds(head, z, labels, d, 0.4, method)
        theirs = margin_upper_bounds(head, z, labels, d, 0.4, "auto_lirpa:" + method)
        assert torch.allclose(ours, theirs, atol=1e-4), method
    head.zero_grad()
    spec_loss(head, z, labels, d, 0.4, "auto_lirpa:crown-ibp").backward()
    g1 = head[0].weight.grad.clone()
    head.zero_grad()
    spec_loss(head, z, labels, d, 0.4, "crown-ibp").backward()
    assert torch.allclose(g1, head[0].weight.grad, atol=1e-5)

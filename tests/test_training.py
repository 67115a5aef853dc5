"""Certified training (training.py): its bounds are the verification engine's (``engines.bounds``
on the head's lowered graph, bound to the live parameters with autograd), sound and
differentiable, and training with them makes heads provably robust along a direction."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_latentaudit import Accuracy, Direction, LatentAuditError, Prediction, audit
from pytest_latentaudit.engines import bounds as EB
from pytest_latentaudit.engines.graph import get_graph
from pytest_latentaudit.engines.ops import UnsupportedLayer
from pytest_latentaudit.toolkit.training import (
    EpsSchedule, bound_gap, bound_graph, box, certified_loss, interval_bounds, layers_of, logit_bounds,
    margin_bounds, margin_matrix, margin_upper_bounds, spec_loss, verified_fraction,
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


def sample_margins(head, z, labels, V, eps, n=256, seed=2):
    """Head outputs ``[N, n, out]`` and margins ``y_j - y_label`` ``[N, out - 1, n]`` at the
    corners and random points of every box ``z + V t``, ``|t| <= eps``."""
    k = V.shape[1]
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(z.shape[0], n, k, generator=g, dtype=z.dtype) * 2 - 1) * eps
    t[:, :2 ** k] = torch.cartesian_prod(*[torch.tensor([-eps, eps], dtype=z.dtype)] * k).reshape(-1, k) \
        if k > 1 else torch.tensor([[-eps], [eps]], dtype=z.dtype)
    pts = z[:, None, :] + t @ V.T
    with torch.no_grad():
        y = head(pts.reshape(-1, z.shape[1])).reshape(z.shape[0], n, -1)
    out = y.shape[2]
    true = y.gather(2, labels[:, None, None].expand(-1, n, 1))
    keep = torch.ones(z.shape[0], out, dtype=torch.bool)
    keep[torch.arange(z.shape[0]), labels] = False
    margins = (y - true).permute(0, 2, 1)[keep].reshape(z.shape[0], out - 1, n)
    return y, margins


# -------------------------------------------------------------------- agreement
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", list(ACTS))
def test_bounds_match_the_engines(act, dtype):
    # training bounds through the verifier's own graph and bound functions, exactly
    head = make_head(act, dtype=dtype)
    z, labels, V = problem(k=2, dtype=dtype)
    eps = 0.6
    direction = Direction.subspace(V)
    graph = bound_graph(head, z)  # the graph training bounds on: the head's, bound to its live parameters
    assert graph.dtype == dtype and graph is bound_graph(head, z)  # lowered once, bound per call
    Vb = direction.basis(6, dtype=dtype)
    c, G = box(z, Vb, eps)
    C = margin_matrix(labels, 4, dtype)
    with torch.no_grad():
        assert torch.equal(C, Prediction(labels).rows(head(z))[0])  # the rows audits prove
    d = torch.zeros(C.shape[:2], dtype=dtype)
    ibp = EB.ibp_bounds(graph, c, G)
    ref = {"ibp": EB.spec_upper_bound(graph, c, G, C, d, method="ibp"),
           "linear": EB.spec_upper_bound(graph, c, G, C, d, method="linear", crown=False),
           "crown-ibp": EB.backward_upper(graph, ibp, c, G, C, d)}  # CROWN-IBP: backward pass over IBP
    for method, r in ref.items():
        mine = margin_upper_bounds(head, z, labels, direction, eps, method)
        assert mine.dtype == dtype and torch.equal(mine, r.to(dtype)), method
    # and the graph an audit lowers for itself (detached) gives the same numbers
    audit_graph = get_graph(head, (6,))
    for method in ("ibp", "linear"):
        r = EB.spec_upper_bound(audit_graph, c, G, C, d, method=method, crown=False)
        assert torch.equal(ref[method], r), method
    mixed = margin_upper_bounds(head, z, labels, direction, eps, "crown-ibp", beta=0.25)
    cr = ref["crown-ibp"]
    assert torch.equal(mixed, (0.25 * cr + 0.75 * ref["ibp"].to(cr.dtype)).to(dtype))
    for (lo, hi), (rlo, rhi) in zip(interval_bounds(head, c, G), ibp):
        assert torch.equal(lo, rlo) and torch.equal(hi, rhi)
    eye = torch.eye(4, dtype=dtype)
    CL = torch.cat([eye, -eye])[None].expand(z.shape[0], -1, -1)
    ub = EB.spec_upper_bound(graph, c, G, CL, torch.zeros(CL.shape[:2], dtype=dtype), method="linear",
                             crown=False).to(dtype)
    lo, hi = logit_bounds(head, z, direction, eps, "linear")
    assert torch.equal(hi, ub[:, :4]) and torch.equal(lo, -ub[:, 4:])
    lo, hi = logit_bounds(head, z, direction, eps, "ibp")
    assert torch.equal(lo, ibp[-1][0].to(dtype)) and torch.equal(hi, ibp[-1][1].to(dtype))
    # sampled outputs lie within the bounds (no slack: the engine's radii cover the model's rounding)
    y, margins = sample_margins(head, z, labels, Vb, eps)
    for method in ref:
        with torch.no_grad():
            mlo, mhi = margin_bounds(head, z, labels, direction, eps, method)
            llo, lhi = logit_bounds(head, z, direction, eps, method)
        assert (margins <= mhi[:, :, None]).all() and (margins >= mlo[:, :, None]).all(), method
        assert (y <= lhi[:, None]).all() and (y >= llo[:, None]).all(), method
    # gradients reach every parameter, and are autograd's through the engine itself
    params = list(head.parameters())
    for method, r in ref.items():
        head.zero_grad()
        spec_loss(head, z, labels, direction, eps, method).backward()
        zhat = torch.cat([torch.zeros_like(r[:, :1]), r], 1).to(dtype)
        ce = F.cross_entropy(zhat, torch.zeros_like(labels))
        grads = torch.autograd.grad(ce, params, retain_graph=True)
        for p, g in zip(params, grads):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, method
            assert torch.equal(p.grad, g), method


def test_graph_is_the_live_head():
    # hooks are part of the head; swapping a module or a parameter lowers again; in-place
    # updates (optimizer steps) are read at every call from the live parameters
    head = make_head("relu")
    z, labels, V = problem()
    d = Direction.vector(V[:, 0])
    plain = margin_upper_bounds(head, z, labels, d, 0.5, "linear").detach()
    h = head[2].register_forward_hook(lambda m, i, o: 0.5 * o + 1.0)
    hooked = margin_upper_bounds(head, z, labels, d, 0.5, "linear").detach()
    assert not torch.allclose(plain, hooked)
    _, margins = sample_margins(head, z, labels, V[:, :1], 0.5)
    assert (margins <= hooked[:, :, None]).all()
    h.remove()
    assert torch.equal(margin_upper_bounds(head, z, labels, d, 0.5, "linear").detach(), plain)
    g = bound_graph(head, z)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    certified_loss(head, z, labels, d, 0.5, method="crown-ibp").backward()
    opt.step()
    assert bound_graph(head, z) is g  # same graph, new values
    stepped = margin_upper_bounds(head, z, labels, d, 0.5, "linear").detach()
    assert not torch.allclose(stepped, plain)
    _, margins = sample_margins(head, z, labels, V[:, :1], 0.5)
    assert (margins <= stepped[:, :, None]).all()
    head[1] = nn.Tanh()
    assert bound_graph(head, z) is not g and isinstance(layers_of(head)[1], type(layers_of(make_head("tanh"))[1]))
    g = bound_graph(head, z)
    head[0].weight = nn.Parameter(head[0].weight.detach() * 2)
    assert bound_graph(head, z) is not g


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
    assert [type(x).__name__ for x in layers_of(head)] == ["DenseOp", "LeakyReLUOp", "DenseOp"]
    z, labels, V = problem(out=3)
    ub = margin_upper_bounds(head, z, labels, V[:, 0], 0.3, "linear")
    seq = nn.Sequential(head.a, nn.LeakyReLU(0.2), head.b)
    assert torch.allclose(ub, margin_upper_bounds(seq, z, labels, V[:, 0], 0.3, "linear"), atol=1e-6)
    with pytest.raises(UnsupportedLayer, match=r"'1 \(Hardshrink\)'"):
        layers_of(nn.Sequential(nn.Linear(6, 4), nn.Hardshrink(), nn.Linear(4, 2)))


def test_bounds_are_of_the_eval_mode_head():
    # as in audits: batch norm on its running statistics, dropout off, whatever the mode
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
    assert [type(x).__name__ for x in layers_of(head)][:2] == ["DenseOp", "ChannelAffineOp"]
    z, labels, V = problem()
    d = Direction.vector(V[:, 0])
    head.train()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        certified_loss(head, z, labels, d, 0.5, method="crown-ibp").backward()
        assert head[1].weight.grad.abs().sum() > 0
        opt.step()
    assert head.training and head[1].training  # modes are restored
    ub = margin_upper_bounds(head, z, labels, d, 0.5, "crown-ibp").detach()
    head.eval()
    _, margins = sample_margins(head, z, labels, V[:, :1], 0.5)
    assert (margins <= ub[:, :, None]).all()


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

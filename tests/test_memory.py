"""Out of memory is a property of the machine: the work is split and goes on (engines/memory.py).

A GPU that cannot hold a batch of boxes (or a CPU allocator that refuses one) must not turn a
run into a crash or into fewer decided seeds; only a single item that does not fit is an error."""
import pytest
import torch
from torch import nn

from pytest_latentaudit import Prediction, verify_box
from pytest_latentaudit.engines import falsify, ladder, memory

# the CPU allocator's message (torch 2.x), as raised for an allocation the machine refuses
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
           "you tried to allocate 140737488355328 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError(CPU_OOM), MemoryError()])
def test_out_of_memory_errors_are_recognised(exc):
    assert memory.is_oom(exc)


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"),
                                 ValueError("out of memory"), KeyError("x")])
def test_other_errors_are_not_out_of_memory(exc):
    assert not memory.is_oom(exc)


def test_on_halves_splits_until_the_slices_fit_and_joins_in_order():
    calls = []

    def call(sl):
        calls.append((sl.start, sl.stop))
        if sl.stop - sl.start > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return list(range(sl.start, sl.stop))

    out = memory.on_halves(call, 13, lambda parts: [v for p in parts for v in p])
    assert out == list(range(13))
    assert max(b - a for a, b in calls if b - a <= 3) <= 3 and (0, 13) in calls


def test_on_halves_raises_for_a_single_item_and_for_other_errors():
    def oom(sl):
        raise RuntimeError(CPU_OOM)

    with pytest.raises(RuntimeError, match="can't allocate memory"):
        memory.on_halves(oom, 4, list)

    def bug(sl):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        memory.on_halves(bug, 4, list)


class _Small(nn.Module):
    """A 2 -> 16 -> 3 ReLU net; class 0 wins near the origin, class 1 along +x."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def _limited(fn, limit, exc=lambda: torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB")):
    def run(x):
        if x.shape[0] > limit:
            raise exc()
        return fn(x)

    return run


def test_a_callable_model_that_fits_only_small_batches_gets_the_same_verdicts():
    """Falsification only (a plain callable): every forward pass of the ladder (centres,
    attacks with all their starts, sampling, the re-checks) must split the batch. Before the
    split, the first forward pass of 64 boxes crashed the call."""
    model = _Small().eval()
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    labels = model(x).argmax(1)
    lo, hi = x - 0.4, x + 0.4

    def plain(v):
        return model(v)

    full = verify_box(plain, lo, hi, Prediction(labels), budget_s=20, seed=1)
    small = verify_box(_limited(plain, 8), lo, hi, Prediction(labels), budget_s=20, seed=1)
    assert full.counts()["falsified"] > 0  # the planted case: some boxes cross a decision boundary
    assert small.status == full.status
    for i, s in enumerate(small.status):
        if s == "falsified":  # a counterexample in the box, re-checked on the model
            t = small.counterexamples[i]
            assert bool((t >= lo[i] - 1e-6).all() and (t <= hi[i] + 1e-6).all())
            assert int(model(t[None]).argmax(1)) != int(labels[i])


def test_bounds_that_run_out_of_cpu_memory_are_retried_on_half_batches(monkeypatch):
    """The CPU allocator's error (not CUDA's) halves the bound batch too; before, only
    messages with "out of memory" did, and this one crashed the call."""
    model = _Small().eval()
    torch.manual_seed(0)
    x = torch.randn(48, 2)
    labels = model(x).argmax(1)
    lo, hi = x - 1e-3, x + 1e-3
    want = verify_box(model, lo, hi, Prediction(labels), budget_s=20)
    assert want.counts()["verified"] == 48
    real = ladder.spec_upper_bound

    def tight(graph, c, G, C, d, **kw):
        if c.shape[0] > 5:
            raise RuntimeError(CPU_OOM)
        return real(graph, c, G, C, d, **kw)

    monkeypatch.setattr(ladder, "spec_upper_bound", tight)
    got = verify_box(model, lo, hi, Prediction(labels), budget_s=20)
    assert got.status == want.status


def test_an_attack_that_does_not_fit_attacks_half_the_boxes_at_a_time():
    """The attack keeps every start's autograd graph at once: the ladder's attack splits its
    boxes on out of memory (``ladder._on_halves``) and joins what the halves found."""
    seen = []

    def attack(problem, idx, tl, tu, **kw):
        seen.append(idx.numel())
        if idx.numel() > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        n = idx.numel()
        return falsify.Found(idx % 2 == 0, tl.clone(), tl.clone(), idx.to(torch.float64))

    idx = torch.arange(10)
    tl = torch.arange(10, dtype=torch.float64)[:, None]
    found = ladder._on_halves(attack)(None, idx, tl, tl + 1)
    assert found.mask.tolist() == [i % 2 == 0 for i in range(10)]
    assert found.t[:, 0].tolist() == list(range(10)) and found.margin.tolist() == list(range(10))
    assert seen[0] == 10 and max(s for s in seen[1:]) <= 5


def test_an_audit_of_a_model_that_fits_only_small_batches_gets_the_same_result():
    """The audit path (the seeds' first forward pass, the ladder, the counterexamples'
    re-check) on a callable whose batches above 8 run out of memory."""
    from pytest_latentaudit import Accuracy, Direction, audit

    model = _Small().eval()
    torch.manual_seed(1)
    z = torch.randn(40, 2)
    labels = model(z).argmax(1)

    def plain(v):
        return model(v)

    kw = dict(direction=Direction.axis(0), eps=0.5, spec=Accuracy(0.9), budget_s=20, seed=2)
    full = audit(plain, (z, labels), **kw)
    small = audit(_limited(plain, 8), (z, labels), **kw)
    assert full.counts == small.counts and full.verdict == small.verdict
    assert full.counts["falsified"] > 0
    assert [c.seed_index for c in small.counterexamples] == [c.seed_index for c in full.counterexamples]

"""The Deep Validation guard (guard.py): numpy scoring equals scikit-learn, safe storage,
calibration, the ``latentaudit guard`` report, bad inputs, and the pixel-space cross-check."""
from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from pytest_latentaudit import cli
from pytest_latentaudit.sheet import deploy
from pytest_latentaudit.sheet import guard as G
from pytest_latentaudit.sheet.guard import DeepValidationGuard, GuardError, fit_guard


sklearn = pytest.importorskip("sklearn")
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.svm import OneClassSVM  # noqa: E402

CENTERS = np.array([[2.0, 0, 0, 0], [-2.0, 0, 0, 0], [0, 2.5, 0, 0]])


def blobs(n_per, seed, spread=0.6):
    rng = np.random.default_rng(seed)
    z = np.concatenate([c + spread * rng.standard_normal((n_per, 4)) for c in CENTERS])
    y = np.repeat(np.arange(len(CENTERS)), n_per)
    return z.astype(np.float32), y


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    h = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    z, y = blobs(100, 1)
    opt = torch.optim.Adam(h.parameters(), lr=0.02)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(h(zt), yt).backward()
        opt.step()
    return h.eval()


@pytest.fixture(scope="module")
def fitted(head):
    z, y = blobs(120, 2)
    zc, yc = blobs(300, 3)
    g = fit_guard(head, z, y, held_out=(zc, yc), target_false_alarm=0.1, max_per_class=None)
    return g, z, y


def _pred(head, z):
    with torch.no_grad():
        return head(torch.as_tensor(z)).argmax(1).numpy()


# ------------------------------------------------------------------------ numpy == sklearn
@pytest.mark.parametrize("d,gamma", [(3, 0.5), (16, "scale"), (40, 0.01)])
def test_rbf_decision_equals_sklearn(d, gamma):
    rng = np.random.default_rng(d)
    X = rng.standard_normal((150, d))
    m = OneClassSVM(kernel="rbf", nu=0.2, gamma=gamma).fit(X)
    g = 1.0 / (d * X.var()) if gamma == "scale" else gamma
    Q = np.concatenate([rng.standard_normal((60, d)), 4 + rng.standard_normal((20, d))])
    ours = G.rbf_decision(Q, m.support_vectors_, m.dual_coef_[0], float(m.intercept_[0]), g, chunk=7)
    np.testing.assert_allclose(ours, m.decision_function(Q), atol=1e-6, rtol=0)


def test_guard_layer_discrepancy_is_minus_sklearn_decision(head, fitted):
    g, z, y = fitted
    feats, pred = G._extract(head, z, head_layers=[n.split(".", 1)[1] for n in g.layer_names if n != "z"])
    q, _ = blobs(40, 9, spread=1.2)
    fq, pq = G._extract(head, q, head_layers=[n.split(".", 1)[1] for n in g.layer_names if n != "z"])
    sc = g.score(fq, pq)
    for li, L in enumerate(g.layers):
        for c in g.classes:
            fit_rows = (pred == y) & (y == c)
            X = (feats[L["name"]][fit_rows] - L["mean"]) / L["scale"]
            m = OneClassSVM(kernel="rbf", nu=g.info["nu"], gamma=g.svms[(L["name"], c)]["gamma"]).fit(X)
            rows = pq == c
            if rows.any():
                ref = -m.decision_function((fq[L["name"]][rows] - L["mean"]) / L["scale"])
                np.testing.assert_allclose(sc["layers"][L["name"]][rows], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(sc["joint"], sum(sc["layers"].values()), atol=1e-12)


def test_roc_auc_equals_sklearn():
    rng = np.random.default_rng(0)
    s = np.round(rng.standard_normal(300), 1)  # ties
    y = rng.random(300) < 0.3
    assert G.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert G.roc_auc(s, np.zeros(300, bool)) is None


# ------------------------------------------------------------------------ fitting and calibration
def test_default_layers_are_the_hidden_activations(fitted):
    g, _, _ = fitted
    assert g.layer_names == ["z", "head.1", "head.3"]
    assert g.classes == [0, 1, 2] and [L["width"] for L in g.layers] == [4, 16, 16]


def test_planted_out_of_distribution_batch_scores_higher(head, fitted):
    g, _, _ = fitted
    clean, _ = blobs(100, 11)
    rng = np.random.default_rng(12)
    ood = (np.array([0.0, -3.0, 3.0, 3.0]) + 0.5 * rng.standard_normal((100, 4))).astype(np.float32)
    dc = g.discrepancy(*G.guard_features(g, head, clean))
    do = g.discrepancy(*G.guard_features(g, head, ood))
    assert np.median(do) > np.quantile(dc, 0.95)
    assert G.roc_auc(np.r_[dc, do], np.r_[np.zeros(len(dc), bool), np.ones(len(do), bool)]) > 0.97
    assert (~g.in_distribution(*G.guard_features(g, head, ood))).mean() > 0.9


def test_threshold_meets_target_false_alarm_on_fresh_clean_data(head, fitted):
    g, _, _ = fitted
    assert g.info["target_false_alarm"] == 0.1 and g.info["n_held_out"] == 900
    assert g.info["held_out_false_alarm"] <= 0.1 and g.info["held_out_false_alarm"] >= 0.09
    fresh, _ = blobs(400, 21)
    fa = (~g.in_distribution(*G.guard_features(g, head, fresh))).mean()
    assert 0.05 <= fa <= 0.16, fa


def test_held_out_fraction_split(head):
    z, y = blobs(80, 4)
    g = fit_guard(head, z, y, held_out=0.25, target_false_alarm=0.2, layers=["3"])
    assert g.layer_names == ["z", "head.3"]
    assert g.info["n_held_out"] == 60 and g.info["n_train"] == 180
    assert g.info["held_out_false_alarm"] <= 0.2


def test_fit_from_latent_space_hooks_an_encoder_module(head):
    from pytest_latentaudit import LatentSpace

    torch.manual_seed(1)
    enc = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    x = torch.randn(240, 6)
    with torch.no_grad():
        y = head(enc(x)).argmax(1)
    space = LatentSpace(encoder=enc)
    g = G.fit_guard_from_space(space, head, x, y, held_out=0.3)
    assert g.layer_names == ["z", "encoder.1", "head.1", "head.3"]
    f, p = G.guard_features(g, head, x=x[:10], encoder=enc)
    assert f["encoder.1"].shape == (10, 12) and p.tolist() == y[:10].tolist()
    with pytest.raises(GuardError, match="encoder layers"):
        G.guard_features(g, head, enc(x[:10]).detach())
    plain = LatentSpace(encoder=lambda t: enc(t))  # not a module: latent + head only
    g2 = G.fit_guard_from_space(plain, head, x, y, held_out=0.3)
    assert g2.layer_names == ["z", "head.1", "head.3"]


# ------------------------------------------------------------------------ storage
def test_save_load_round_trip_without_pickle(tmp_path, monkeypatch, head, fitted):
    g, _, _ = fitted
    path = g.save(tmp_path / "sheet.guard.json")
    assert path.with_suffix(".npz").is_file()
    meta = json.loads(path.read_text())
    assert meta["format"] == G.FORMAT and meta["threshold"] == g.threshold

    def no_pickle(*a, **k):
        raise AssertionError("the guard must never unpickle")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    seen = []
    real_load = np.load

    def spy(*a, **k):
        seen.append(k.get("allow_pickle"))
        return real_load(*a, **k)

    monkeypatch.setattr(np, "load", spy)
    g2 = DeepValidationGuard.load(path)
    assert seen == [False]
    with real_load(path.with_suffix(".npz"), allow_pickle=False) as f:  # plain arrays only
        assert all(f[k].dtype != object for k in f.files)
    q, _ = blobs(30, 5, spread=1.5)
    a, b = g.score(*G.guard_features(g, head, q)), g2.score(*G.guard_features(g2, head, q))
    np.testing.assert_array_equal(a["joint"], b["joint"])
    assert g2.threshold == g.threshold and g2.layer_names == g.layer_names and g2.info == json.loads(
        json.dumps(g.info))
    entry = g2.sheet_entry(path)
    assert entry["threshold"] == g.threshold and entry["target_false_alarm"] == 0.1 and entry["path"] == path.name
    json.dumps(entry, allow_nan=False)


def test_tampered_files_give_clear_errors(tmp_path, fitted):
    g, _, _ = fitted
    path = g.save(tmp_path / "g.guard.json")
    npz = path.with_suffix(".npz")
    good = npz.read_bytes()
    arrays = dict(np.load(npz, allow_pickle=False))
    arrays["layer0.mean"] = arrays["layer0.mean"] + 1.0
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    npz.write_bytes(buf.getvalue())
    with pytest.raises(GuardError, match="checksum"):
        DeepValidationGuard.load(path)
    # an object array (would need pickle), with a matching checksum: still refused
    buf = io.BytesIO()
    np.savez(buf, **dict(arrays, **{"layer0.mean": np.array([{"a": 1}], dtype=object)}))
    npz.write_bytes(buf.getvalue())
    meta = json.loads(path.read_text())
    meta["arrays"]["sha256"] = G._sha256(buf.getvalue())
    path.write_text(json.dumps(meta))
    with pytest.raises(GuardError, match="plain numpy archive"):
        DeepValidationGuard.load(path)
    # a width that does not match the arrays
    npz.write_bytes(good)
    meta["arrays"]["sha256"] = G._sha256(good)
    meta["layers"][1]["width"] = 99
    path.write_text(json.dumps(meta))
    with pytest.raises(GuardError, match="width 99"):
        DeepValidationGuard.load(path)
    path.write_text("{not json")
    with pytest.raises(GuardError, match="not JSON"):
        DeepValidationGuard.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(GuardError, match="not a latentaudit guard"):
        DeepValidationGuard.load(path)
    with pytest.raises(GuardError, match="no guard file"):
        DeepValidationGuard.load(tmp_path / "missing.guard.json")
    with pytest.raises(GuardError, match="no Deep Validation guard beside"):
        G.load_guard(tmp_path / "sheet-without-guard.json")
    with pytest.raises(GuardError, match=r"\.json path"):
        g.save(tmp_path / "g.npz")


# ------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors(head, fitted):
    g, _, _ = fitted
    q, _ = blobs(2, 6)  # 6 codes
    f, p = G.guard_features(g, head, q)
    with pytest.raises(GuardError, match="width 5.*width 4"):
        g.score(dict(f, z=np.zeros((6, 5))), p)
    with pytest.raises(GuardError, match="missing for guard layer"):
        g.score({k: v for k, v in f.items() if k != "head.3"}, p)
    with pytest.raises(GuardError, match="rows of features"):
        g.score(f, p[:3])
    bad = dict(f, z=f["z"].copy())
    bad["z"][2, 1] = np.nan
    with pytest.raises(GuardError, match="NaN"):
        g.score(bad, p)
    s = g.score(bad, p, strict=False)
    assert np.isinf(s["joint"][2]) and not s["in_distribution"][2] and np.isfinite(s["joint"][[0, 1, 3, 4, 5]]).all()
    with pytest.raises(GuardError, match="no one-class SVM"):
        g.score(f, np.array([0, 1, 7, 2, 0, 1]))
    assert not g.score(f, np.array([0, 1, 7, 2, 0, 1]), strict=False)["in_distribution"][2]
    with pytest.raises(GuardError, match="integer class"):
        g.score(f, p + 0.5)
    with pytest.raises(GuardError, match="target_false_alarm"):
        fit_guard(head, q, p, target_false_alarm=1.5)
    with pytest.raises(GuardError, match="no module named"):
        fit_guard(head, q, p, layers=["nope"])
    with pytest.raises(GuardError, match="labels"):
        fit_guard(head, q, p[:2])


# ------------------------------------------------------------------------ report and CLI
def _sheet(tmp_path):
    sheet = {"schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0"}, "tests": [],
             "directions": {"pose": {"kind": "axis", "k": 1, "axis": 0, "latent_range": {
                 "lower": [-3.0], "upper": [3.0], "mean": [0.0], "std": [1.0], "eps": 2.0, "n_seeds": 3,
                 "verdict": "proved"}}}}
    path = tmp_path / "sheet.json"
    path.write_text(json.dumps(sheet))
    return path


def test_range_score_agrees_with_in_spec(tmp_path):
    sheet = json.loads(_sheet(tmp_path).read_text())
    z = np.array([[0.0, 1], [2.9, 0], [-3.5, 0], [np.nan, 0]])
    r = deploy.range_score(sheet, z)
    assert r["pose"][:3] == pytest.approx([0.0, 2.9 / 3, 3.5 / 3]) and np.isinf(r["all"][3])
    assert ((r["all"] <= 1) == deploy.in_spec(sheet, z)["all"]).all()


@pytest.fixture
def deployed(tmp_path, head, fitted):
    g, _, _ = fitted
    sheet = _sheet(tmp_path)
    g.save(G.guard_path_for(sheet))
    clean, yc = blobs(14, 31)  # 42 clean codes
    rng = np.random.default_rng(32)
    ood = (np.array([0.0, -3.0, 3.0, 3.0]) + 0.5 * rng.standard_normal((18, 4))).astype(np.float32)
    z = np.concatenate([clean, ood])
    y = np.r_[yc, np.zeros(18, np.int64)]
    data = G.write_guard_data(tmp_path / "batch.npz", g, head, z, labels=y)
    return sheet, data, g


def test_cli_guard_prints_the_table(deployed, capsys):
    sheet, data, g = deployed
    assert cli.main(["guard", str(sheet), str(data)]) == 0
    out = capsys.readouterr().out
    assert "deployment batch: 60 input(s)" in out
    assert "in verified range (AuditAI), per direction:" in out and "pose" in out
    assert "in distribution (Deep Validation, 3 layer(s)" in out
    for row in ("range", "distribution", "both"):
        assert any(line.strip().startswith(row) for line in out.splitlines())
    assert cli.main(["guard", str(sheet), str(data), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 60 and rep["distribution"]["threshold"] == g.threshold
    assert rep["distribution"]["fraction_in"] < 0.75  # the 18 planted codes are flagged
    acc = rep["accuracy"]
    assert set(acc) >= {"overall", "range", "distribution", "both"}
    assert acc["distribution"]["inside"]["n"] + acc["distribution"]["outside"]["n"] == 60
    assert cli.main(["guard", str(sheet), str(data), "--range-only", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["distribution"] is None and rep["range"]["directions"]["pose"]["n_in"] >= 40


def test_cli_guard_errors(deployed, tmp_path, capsys):
    sheet, data, g = deployed
    assert cli.main(["guard", str(sheet), str(tmp_path / "nothing.npz")]) == 2
    assert "no data file" in capsys.readouterr().err
    z_only = tmp_path / "z.npz"
    np.savez(z_only, z=np.zeros((3, 4)))
    assert cli.main(["guard", str(sheet), str(z_only)]) == 2
    assert "predicted classes" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    with np.load(data) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["feature:head.1"] = arrays["feature:head.1"][:, :8]
    np.savez(wrong, **arrays)
    assert cli.main(["guard", str(sheet), str(wrong)]) == 2
    assert "width 8" in capsys.readouterr().err
    nan = tmp_path / "nan.npz"
    arrays = {k: f for k, f in np.load(data).items()}
    arrays["z"] = arrays["z"].copy()
    arrays["z"][0, 0] = np.nan
    np.savez(nan, **arrays)
    assert cli.main(["guard", str(sheet), str(nan)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert cli.main(["guard", str(sheet), str(data), "--guard", str(tmp_path / "none.guard.json")]) == 2
    assert "no guard file" in capsys.readouterr().err
    G.guard_path_for(sheet).unlink()  # a sheet without a guard: the range report and a note
    assert cli.main(["guard", str(sheet), str(data)]) == 0
    assert "no Deep Validation guard beside the sheet" in capsys.readouterr().out
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, z=np.array([None, 1], dtype=object))
    assert cli.main(["guard", str(sheet), str(pickled)]) == 2
    assert "not a plain numpy" in capsys.readouterr().err


def test_guard_html_section(deployed):
    sheet, data, g = deployed
    rep = G.guard_report(sheet, data, guard=g)
    rep["notes"].append("<script>alert(1)</script>")
    page = G.guard_html_section(rep, sheet_entry=g.sheet_entry(),
                                pixel={"eps": 0.05, "n_proved": 10, "n_attackable": 2, "fraction_attackable": 0.2,
                                       "direction": "pose"})
    assert page.startswith('<section id="deployment-guard">') and page.endswith("</section>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "in distribution" in page and "Pixel-space cross-check" in page and "2 (20.0%)" in page


# ------------------------------------------------------------------------ pixel-space cross-check
def test_pixel_crosscheck():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid()).eval()
    w = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, -0.5, 0.0]])
    classifier = nn.Linear(4, 2, bias=False).eval()
    with torch.no_grad():
        classifier.weight.copy_(w)
    z = torch.randn(50, 2) * 2
    with torch.no_grad():
        x0 = decoder(z)
        y = classifier(x0).argmax(1)
        margin = (classifier(x0)[torch.arange(50), y] - classifier(x0)[torch.arange(50), 1 - y])
    proved = np.ones(50, bool)
    proved[:5] = False
    r0 = G.pixel_crosscheck(classifier, decoder, z, y, eps=0.0, proved=proved)
    assert r0.fraction_attackable == 0.0 and r0.info["n_proved"] == 45
    big = G.pixel_crosscheck(classifier, decoder, z, y, eps=1.0, proved=proved)
    assert big.fraction_attackable == 1.0 and not big.attackable[:5].any()
    # a linear classifier, no clip box: the L-inf attack succeeds exactly when margin < eps * |w0 - w1|_1
    e = 0.05
    r = G.pixel_crosscheck(classifier, decoder, z, y, eps=e, steps=30, clip=None)
    need = margin.numpy() / 5.0  # |w0 - w1|_1 = 2 + 2 + 1 + 0
    assert (need < 0.99 * e).any() and (need > 1.01 * e).any()
    assert r.attackable[need < 0.99 * e].all() and not r.attackable[need > 1.01 * e].any()
    r = G.pixel_crosscheck(classifier, decoder, z, y, eps=e, steps=30)  # clipped to [0, 1]
    for c in r.counterexamples:
        assert c["predicted"] != c["label"] and c["linf"] <= e + 1e-6
        assert c["x"].min() >= 0 and c["x"].max() <= 1
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["kind"] == "pixel_crosscheck" and d["norm"] == "linf" and "x" not in (d["counterexamples"] or [{}])[0]


class _NoBackward(nn.Module):
    """A classifier every plain call runs but autograd cannot differentiate: an in-place op
    on a tensor autograd saved for the backward of sigmoid."""

    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return torch.sigmoid(self.lin(x)).mul_(2)


def test_pixel_crosscheck_of_a_classifier_without_a_backward_gives_an_answer_not_a_crash():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid()).eval()
    lin = nn.Linear(4, 2).eval()
    classifier = _NoBackward(lin).eval()
    z = torch.randn(20, 2)
    with pytest.raises(RuntimeError):  # the model as it is: no backward
        x = decoder(z).requires_grad_(True)
        torch.autograd.grad(classifier(x).sum(), x)
    r = G.pixel_crosscheck(classifier, decoder, z, eps=2.0, steps=10, clip=None)
    assert r.info["n_proved"] == 20
    for c in r.counterexamples:  # whatever it found was re-checked by a plain forward pass
        assert c["predicted"] != c["label"] and c["linf"] <= 2.0 + 1e-6


def test_serving_needs_neither_torch_nor_sklearn(deployed):
    import subprocess
    import sys

    sheet, data, g = deployed
    code = f'''
import sys, numpy as np
from pytest_latentaudit.sheet import guard
g = guard.load_guard({str(sheet)!r})
d = guard.load_guard_data({str(data)!r})
feats = {{n: (d["z"] if n == "z" else d["feature:" + n]) for n in g.layer_names}}
s = g.score(feats, d["pred"])
rep = guard.guard_report({str(sheet)!r}, d, guard=g)
assert rep["n"] == len(s["joint"]) == 60
heavy = [m for m in ("torch", "sklearn", "scipy") if m in sys.modules]
assert not heavy, heavy
print("ok", int(s["in_distribution"].sum()))
'''
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", str(int(g.in_distribution(
        {n: (np.load(data)["z"] if n == "z" else np.load(data)["feature:" + n]) for n in g.layer_names},
        np.load(data)["pred"]).sum()))]


def test_guard_and_pixel_crosscheck_in_the_sheet(tmp_path, fitted):
    """What the guard writes for a sheet (its ``sheet_entry`` at the top level, a cross-check per
    proved test and at the top level) is carried by the typed records and valid under the schema."""
    pytest.importorskip("jsonschema")
    from pytest_latentaudit.sheet import schema
    from pytest_latentaudit.sheet.records import SheetFormatError, TestRecord
    from pytest_latentaudit.sheet.specsheet import SpecSheet, read_sheet

    g, _, _ = fitted
    gpath = g.save(tmp_path / "sheet.guard.json")
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid()).eval()
    classifier = nn.Linear(4, 2).eval()
    z = torch.randn(12, 2)
    pc = G.pixel_crosscheck(classifier, decoder, z, None, eps=0.05, steps=5, direction="pose", latent_eps=0.3,
                            nodeid="t.py::test_pose")
    rec = TestRecord(nodeid="t.py::test_pose", direction="pose", eps=0.3, verdict="proved",
                     pixel_crosscheck=pc.to_dict())
    sheet = SpecSheet.build([rec.to_json()], tool_version="0", guard=g.sheet_entry(gpath), pixel_crosscheck=[pc])
    schema.validate(sheet.data)
    path = sheet.save(tmp_path / "sheet.json")
    back = read_sheet(path)
    assert back.guard.threshold == g.threshold and back.guard.path == "sheet.guard.json"
    assert [p.n_proved for p in back.pixel_crosschecks] == [12, 12]
    assert back.records[0].pixel_crosscheck.fraction_attackable == pc.fraction_attackable
    # structurally wrong entries: the records layer and the schema both reject them
    bad = json.loads(path.read_text())
    bad["tests"][0]["pixel_crosscheck"]["n_attackable"] = 99
    with pytest.raises(SheetFormatError, match="n_attackable"):
        read_sheet(bad)
    bad = json.loads(path.read_text())
    del bad["guard"]["threshold"]
    with pytest.raises(SheetFormatError, match="guard: missing 'threshold'"):
        read_sheet(bad)
    with pytest.raises(schema.SheetValidationError, match="threshold"):
        schema.validate(bad)
    # latentaudit merge keeps them: the guard (its path re-anchored to the output), each check once
    from pytest_latentaudit import cli

    (tmp_path / "merged").mkdir()
    out = tmp_path / "merged" / "sheet.json"
    assert cli.main(["merge", str(path), str(path), "-o", str(out)]) == 0
    merged = read_sheet(out)
    schema.validate(merged.data)
    assert merged.guard.path == "../sheet.guard.json" and merged.guard.threshold == g.threshold
    assert len(merged.data["pixel_crosscheck"]) == 1 and len(merged.pixel_crosschecks) == 2

"""The deployment guard: AuditAI's latent ranges and the vectorised in-spec check."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from pytest_latentaudit.sheet import deploy
from pytest_latentaudit.sheet.deploy import DeployError, certified_radius_summary, directions_section, in_spec, latent_ranges
from pytest_latentaudit.core.latent import Direction


# ------------------------------------------------------------------------ latent_ranges
def test_axis_range_by_hand():
    # coordinate 1 of the seeds is 0, 2, 4, 6: mean 3, population std sqrt(5)
    z = np.array([[9.0, 0.0], [9.0, 2.0], [9.0, 4.0], [9.0, 6.0]])
    r = latent_ranges(z, eps=1.0, V=1)
    s5 = math.sqrt(5.0)
    assert r["mean"] == [3.0] and r["std"] == pytest.approx([s5])
    assert r["lower"] == pytest.approx([3.0 - 1.0 - s5])
    assert r["upper"] == pytest.approx([3.0 + 1.0 + s5])
    assert r["eps"] == 1.0 and r["n_seeds"] == 4
    assert "axis" not in r and "basis" not in r
    rb = latent_ranges(z, 1.0, Direction.axis(1), with_basis=True)
    assert rb["kind"] == "axis" and rb["axis"] == 1 and rb["k"] == 1 and rb["lower"] == r["lower"]


def test_vector_range_uses_the_normalised_direction():
    # v = (3, 4, 0) / 5: projections 0.6 and 0.8 -> mean 0.7, std 0.1
    z = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    r = latent_ranges(z, eps=0.2, V=[3.0, 4.0, 0.0], with_basis=True)
    assert r["mean"] == pytest.approx([0.7]) and r["std"] == pytest.approx([0.1])
    assert r["lower"] == pytest.approx([0.4]) and r["upper"] == pytest.approx([1.0])
    assert r["kind"] == "vector" and np.allclose(np.asarray(r["basis"]).ravel(), [0.6, 0.8, 0.0])
    # the orientation is the user's: -v flips the projections
    r2 = latent_ranges(z, eps=0.2, V=[-3.0, -4.0, 0.0])
    assert r2["mean"] == pytest.approx([-0.7])


def test_subspace_range_per_coordinate():
    V = [[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]  # spans e0, e2 (positive orientation kept)
    z = np.array([[1.0, 5.0, 10.0], [3.0, -5.0, 20.0]])
    r = latent_ranges(z, eps=0.5, V=V, with_basis=True)
    assert r["kind"] == "subspace" and r["k"] == 2
    assert r["mean"] == pytest.approx([2.0, 15.0]) and r["std"] == pytest.approx([1.0, 5.0])
    assert r["lower"] == pytest.approx([0.5, 9.5]) and r["upper"] == pytest.approx([3.5, 20.5])


def test_eps_zero_and_single_seed():
    r = latent_ranges([[2.0, 1.0]], eps=0.0, V=0)
    assert r["lower"] == [2.0] and r["upper"] == [2.0] and r["std"] == [0.0]


@pytest.mark.parametrize("bad", [
    dict(z=[[1.0, 2.0]], eps=-1.0, V=0),
    dict(z=[[1.0, 2.0]], eps=float("nan"), V=0),
    dict(z=[[1.0, 2.0]], eps=0.1, V=5),
    dict(z=[[1.0, 2.0]], eps=0.1, V=[1.0, 0.0, 0.0]),
    dict(z=[[1.0, 2.0]], eps=0.1, V=[[1.0, 2.0], [2.0, 4.0]]),
    dict(z=np.zeros((0, 2)), eps=0.1, V=0),
])
def test_bad_inputs_are_clear_errors(bad):
    with pytest.raises(DeployError):
        latent_ranges(bad["z"], bad["eps"], bad["V"])


def test_projection_matches_direction_basis():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(0)
    z = g.normal(size=(7, 5))
    for d in (Direction.axis(3), Direction.vector(g.normal(size=5)), Direction.subspace(g.normal(size=(5, 3)))):
        B = d.basis(5, dtype=torch.float64).numpy()
        assert np.allclose(deploy.project(z, d), z @ B)


# ------------------------------------------------------------------------ in_spec
def _record(name, eps, verdict, z, V):
    return {"nodeid": f"test_x.py::test_{name}_{eps}", "direction": name, "eps": eps, "verdict": verdict,
            "latent_range": latent_ranges(z, eps, V, with_basis=True)}


@pytest.fixture
def sheet():
    seeds = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])  # axis 0: mean 1, std 1
    records = [
        _record("pose", 0.5, "proved", seeds, 0),            # range [-0.5, 2.5]
        _record("pose", 1.5, "violated", seeds, 0),          # range [-1.5, 3.5], not proved
        _record("light", 0.25, "proved", seeds, [0.0, 1.0, 1.0]),
        _record("style", 0.0, "proved", seeds, [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
        _record("hue", 1.0, "violated", seeds, 2),           # nothing proved along hue
    ]
    return {"schema_version": 1, "tests": records, "directions": directions_section(records)}


def test_directions_section(sheet):
    d = sheet["directions"]
    assert d["pose"]["proved_eps"] == 0.5 and d["pose"]["latent_range"]["eps"] == 0.5
    assert d["pose"]["latent_range"]["lower"] == [-0.5] and d["pose"]["latent_range"]["upper"] == [2.5]
    assert [g["eps"] for g in d["pose"]["ranges"]] == [0.5, 1.5]
    assert d["pose"]["axis"] == 0 and d["light"]["kind"] == "vector" and len(d["light"]["basis"]) == 3
    assert d["hue"]["latent_range"] is None and d["hue"]["proved_eps"] is None
    assert directions_section([], declared=["tilt"]) == {"tilt": {"proved_eps": None, "latent_range": None,
                                                                  "ranges": []}}


def test_in_spec_axis_boundaries(sheet):
    z = np.array([[-0.5, 0.0, 0.0], [2.5, 0.0, 0.0], [-0.5000001, 0.0, 0.0], [2.5000001, 0, 0], [np.nan, 0, 0]])
    out = in_spec(sheet, z, directions=["pose"])
    assert out["pose"].tolist() == [True, True, False, False, False]
    assert out["all"].tolist() == out["pose"].tolist()
    assert set(out) == {"pose", "all"}


def test_in_spec_every_recorded_direction(sheet):
    z = np.array([[1.0, 0.5, 0.5], [1.0, 50.0, 0.5]])
    out = in_spec(sheet, z)
    assert set(out) == {"pose", "light", "style", "all"}  # hue has no proved range
    assert out["pose"].tolist() == [True, True]
    assert out["light"].tolist() == [True, False]
    assert out["style"].tolist() == [True, False]
    assert out["all"].tolist() == [True, False]
    assert out["all"].dtype == bool


def test_in_spec_at_a_recorded_eps(sheet):
    z = np.array([[3.0, 0.0, 0.0]])
    assert in_spec(sheet, z, ["pose"])["pose"].tolist() == [False]
    assert in_spec(sheet, z, ["pose"], eps=0.5)["pose"].tolist() == [False]
    # the test at eps=1.5 is violated: its range is no verified operating range, so no code is
    # "in spec" there (the old answer was True for this code)
    with pytest.raises(DeployError, match="nothing is proved at eps=1.5"):
        in_spec(sheet, z, ["pose"], eps=1.5)
    with pytest.raises(DeployError, match="nothing is proved at eps=1.5"):
        deploy.range_score(sheet, z, ["pose"], eps=1.5)
    with pytest.raises(DeployError, match="eps=0.7"):
        in_spec(sheet, z, ["pose"], eps=0.7)


def test_in_spec_single_code_and_sources(sheet, tmp_path):
    from pytest_latentaudit.sheet.specsheet import SpecSheet

    path = tmp_path / "sheet.json"
    path.write_text(json.dumps(sheet))
    for source in (sheet, str(path), path, SpecSheet(sheet)):
        out = in_spec(source, [1.0, 0.0, 0.0], ["pose"])
        assert out["pose"].shape == () and bool(out["pose"]) and bool(out["all"])
    # a sheet without the directions section: rebuilt from the test records
    bare = {"tests": sheet["tests"]}
    assert in_spec(bare, [[1.0, 0.0, 0.0]], ["pose"])["pose"].tolist() == [True]


def test_in_spec_errors(sheet):
    with pytest.raises(DeployError, match="not in the spec sheet"):
        in_spec(sheet, np.zeros((1, 3)), ["nope"])
    with pytest.raises(DeployError, match="no proved test"):
        in_spec(sheet, np.zeros((1, 3)), ["hue"])
    with pytest.raises(DeployError, match="no verified latent range"):
        in_spec({"tests": []}, np.zeros((1, 3)))
    no_basis = json.loads(json.dumps(sheet))
    for key in ("basis",):
        no_basis["directions"]["light"].pop(key)
        no_basis["directions"]["light"]["latent_range"].pop(key, None)
    with pytest.raises(DeployError, match="bases="):
        in_spec(no_basis, np.zeros((1, 3)), ["light"])
    # ... which the caller can supply (e.g. from the LatentSpace)
    ok = in_spec(no_basis, np.array([[0.0, 0.5, 0.5]]), ["light"], bases={"light": Direction.vector([0, 1.0, 1.0])})
    assert ok["light"].tolist() == [True]
    with pytest.raises(DeployError, match="numeric"):
        in_spec(sheet, np.array([["a", "b", "c"]]), ["pose"])


def test_in_spec_torch_in_torch_out(sheet):
    torch = pytest.importorskip("torch")
    z = torch.tensor([[1.0, 0.5, 0.5], [9.0, 0.0, 0.0]])
    out = in_spec(sheet, z)
    assert isinstance(out["all"], torch.Tensor) and out["all"].dtype == torch.bool
    assert out["all"].tolist() == [True, False]
    assert in_spec(sheet, z.numpy())["all"].tolist() == [True, False]
    # [N, *shape] codes are flattened like audit() does
    assert in_spec(sheet, z.reshape(2, 3, 1))["all"].tolist() == [True, False]


def test_numpy_path_does_not_import_torch():
    code = ("import sys, numpy as np\n"
            "from pytest_latentaudit.sheet import deploy\n"
            "r = [{'nodeid': 'a', 'direction': 'p', 'eps': 0.1, 'verdict': 'proved',\n"
            "      'latent_range': deploy.latent_ranges(np.eye(3), 0.1, [1.0, 1.0, 0.0], with_basis=True)}]\n"
            "out = deploy.in_spec({'tests': r}, np.eye(3))\n"
            "assert out['all'].tolist() == [True, True, False], out\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------ helpers
def test_data_fingerprint():
    z = np.arange(6, dtype=np.float64).reshape(2, 3)
    fp = deploy.data_fingerprint(z)
    assert fp.startswith("sha256:") and fp == deploy.data_fingerprint(z.astype(np.float32))
    assert fp != deploy.data_fingerprint(z, labels=[0, 1])
    assert fp != deploy.data_fingerprint(z.reshape(3, 2))
    torch = pytest.importorskip("torch")
    assert fp == deploy.data_fingerprint(torch.tensor(z))


def test_certified_radius_summary():
    s = certified_radius_summary([1.0, 2.0, 3.0, 4.0, float("inf"), float("nan")], bins=4)
    assert s["n"] == 5 and s["eps_max"] == 4.0 and s["mean"] == pytest.approx(2.8)
    assert s["quantiles"]["min"] == 1.0 and s["quantiles"]["median"] == 3.0 and s["quantiles"]["max"] == 4.0
    assert s["histogram"] == {"edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [0, 1, 1, 3]}
    capped = certified_radius_summary([1.0, 3.0], eps_max=2.0, bins=2)
    assert capped["quantiles"]["max"] == 2.0 and capped["histogram"]["counts"] == [0, 2]
    assert certified_radius_summary([])["n"] == 0


def test_directions_section_radius_and_sweep_ranges():
    seeds = np.array([[0.0], [2.0]])  # mean 1, std 1
    small = _record("pose", 0.5, "proved", seeds, 0)
    small["sweep"] = [{"eps": 0.25, "verdict": "proved"}, {"eps": 0.75, "verdict": "proved"},
                      {"eps": 2.0, "verdict": "violated"}]
    small["certified_radius"] = certified_radius_summary([0.8, 0.9], eps_max=1.0)
    big = _record("pose", 3.0, "violated", seeds, 0)
    big["certified_radius"] = certified_radius_summary([0.8, 0.9], eps_max=6.0)
    d = directions_section([big, small])["pose"]
    assert d["proved_eps"] == 0.75
    assert d["latent_range"]["eps"] == 0.75 and d["latent_range"]["lower"] == [-0.75]
    assert d["latent_range"]["upper"] == [2.75]
    assert [(g["eps"], g["verdict"]) for g in d["ranges"]] == [(0.25, "proved"), (0.5, "proved"), (0.75, "proved"),
                                                             (2.0, "violated"), (3.0, "violated")]
    assert d["certified_radius"]["eps_max"] == 6.0 and d["certified_radius"]["nodeid"] == big["nodeid"]


# ------------------------------------------------------------------------ one range per model
def _model_record(name, eps, verdict, z, V, fp, key, **extra):
    r = _record(name, eps, verdict, z, V)
    r.update(nodeid=f"test_x.py::test_{name}_{key}_{eps}", model_fingerprint=fp, model_key=f"fixture:{key}", **extra)
    return r


A, B = "sha256:" + "a" * 32, "sha256:" + "b" * 32


@pytest.fixture
def two_models():
    """Along ``pose``: model A proved at eps 0.5 on seeds with coordinate mean 1, std 1 (range
    [-0.5, 2.5]); model B proved at eps 1.0 on seeds with mean 10, std 0 (range [9, 11]).
    Along ``light``: only B."""
    sa = np.array([[0.0, 0.0], [2.0, 0.0]])
    sb = np.array([[10.0, 0.0], [10.0, 0.0]])
    recs = [_model_record("pose", 0.5, "proved", sa, 0, A, "head_a"),
            _model_record("pose", 1.0, "proved", sb, 0, B, "head_b"),
            _model_record("light", 0.5, "proved", sb, 1, B, "head_b")]
    return {"schema_version": 1, "tests": recs, "directions": directions_section(recs)}


def test_a_range_proved_for_one_model_is_not_offered_for_another(two_models):
    pose = two_models["directions"]["pose"]
    # no direction-wide range: B's [9, 11] (the largest eps) would be offered to A's inputs
    assert pose["latent_range"] is None
    assert set(pose["models"]) == {A, B}
    assert pose["models"][A]["names"] == ["head_a"] and pose["models"][A]["proved_eps"] == 0.5
    assert pose["models"][A]["latent_range"]["lower"] == [-0.5] and pose["models"][A]["latent_range"]["upper"] == [2.5]
    assert pose["models"][B]["latent_range"]["lower"] == [9.0] and pose["models"][B]["latent_range"]["upper"] == [11.0]
    assert {g["model"] for g in pose["ranges"]} == {A, B}
    light = two_models["directions"]["light"]
    assert set(light["models"]) == {B} and light["latent_range"]["eps"] == 0.5  # one model: as before


def test_coverage_says_which_model_a_direction_is_proved_for(two_models):
    from pytest_latentaudit.sheet.coverage import coverage_summary

    two_models["tests"].append(_model_record("light", 0.5, "violated", np.zeros((2, 2)), 1, A, "head_a"))
    cov = coverage_summary(two_models)
    # direction-wide: pose proved (both models), light violated (A), pose's radius the larger
    assert cov["per_direction"]["pose"]["status"] == "proved" and cov["per_direction"]["pose"]["proved_eps"] == 1.0
    assert cov["per_direction"]["light"]["status"] == "violated"
    a, b = cov["models"][A], cov["models"][B]
    assert a["names"] == ["head_a"] and b["names"] == ["head_b"]
    assert a["per_direction"]["pose"] == {"status": "proved", "proved_eps": 0.5, "tests": 1}
    assert a["per_direction"]["light"]["status"] == "violated" and a["directions_proved"] == ["pose"]
    assert b["per_direction"]["pose"]["proved_eps"] == 1.0 and b["directions_proved"] == ["light", "pose"]
    assert a["percent_proved"] == 50.0 and b["percent_proved"] == 100.0


def test_in_spec_asks_which_model_when_the_sheet_has_several(two_models):
    z = np.array([[1.0, 0.0], [10.0, 0.0]])
    with pytest.raises(DeployError, match=r"ranges of 2 models .*head_a.*pass model="):
        in_spec(two_models, z, directions=["pose"])
    with pytest.raises(DeployError, match="pass model="):
        deploy.range_score(two_models, z, directions=["pose"])
    for sel in (A, "head_a"):
        assert in_spec(two_models, z, directions=["pose"], model=sel)["pose"].tolist() == [True, False]
    assert in_spec(two_models, z, directions=["pose"], model="head_b")["pose"].tolist() == [False, True]
    assert deploy.range_score(two_models, z, directions=["pose"], model=A)["pose"].tolist() == [0.0, 6.0]
    with pytest.raises(DeployError, match="none of the models"):
        in_spec(two_models, z, directions=["pose"], model="sha256:" + "c" * 32)
    with pytest.raises(DeployError, match=r"no latent range recorded at eps=1"):
        in_spec(two_models, z, directions=["pose"], eps=1.0, model=A)  # 1.0 is B's
    assert in_spec(two_models, z, directions=["pose"], eps=1.0, model=B)["pose"].tolist() == [False, True]


def test_in_spec_with_a_model_checks_the_directions_it_was_tested_along(two_models):
    z = np.array([[1.0, 0.0], [10.0, 0.0]])
    out = in_spec(two_models, z, model=A)  # light was tested on B only: not A's to check
    assert set(out) == {"pose", "all"} and out["all"].tolist() == [True, False]
    assert set(in_spec(two_models, z, model=B)) == {"pose", "light", "all"}
    with pytest.raises(DeployError, match="none of the models"):
        in_spec(two_models, z, directions=["light"], model=A)  # asked for by name: a clear no


def test_in_spec_refuses_a_model_the_proofs_are_not_of(two_models):
    """One model along a direction: passing another one's fingerprint (a retrained model
    checked against the old sheet) is an error, not a silent yes."""
    z = np.array([[10.0, 0.0]])
    assert in_spec(two_models, z, directions=["light"])["light"].tolist() == [True]
    with pytest.raises(DeployError, match="none of the models"):
        in_spec(two_models, z, directions=["light"], model="sha256:" + "c" * 32)


def test_in_spec_takes_the_module_itself():
    torch = pytest.importorskip("torch")
    ma, mb = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        mb.weight.add_(1.0)
    fa, fb = deploy.model_fingerprint(ma), deploy.model_fingerprint(mb)
    sa, sb = np.array([[0.0, 0.0], [2.0, 0.0]]), np.array([[10.0, 0.0], [10.0, 0.0]])
    recs = [_model_record("pose", 0.5, "proved", sa, 0, fa, "a"), _model_record("pose", 1.0, "proved", sb, 0, fb, "b")]
    sheet = {"schema_version": 1, "tests": recs}
    z = torch.tensor([[1.0, 0.0], [10.0, 0.0]])
    assert in_spec(sheet, z, model=ma)["pose"].tolist() == [True, False]
    assert in_spec(sheet, z, model=mb)["pose"].tolist() == [False, True]
    with pytest.raises(DeployError, match="cannot fingerprint"):
        in_spec(sheet, z, model=lambda x: x)


def test_a_section_written_before_per_model_ranges_is_rebuilt(two_models):
    """An older sheet's stored section offers one mixed range: the reader rebuilds it."""
    pose = two_models["directions"]["pose"]
    old = {k: v for k, v in pose.items() if k != "models"}
    old["latent_range"] = pose["models"][B]["latent_range"]  # what the old rule offered: B's, the widest
    sheet = dict(two_models, directions=dict(two_models["directions"], pose=old))
    with pytest.raises(DeployError, match="pass model="):
        in_spec(sheet, np.array([[10.0, 0.0]]), directions=["pose"])


def test_a_stale_record_of_an_older_fingerprint_is_not_another_model():
    seeds = np.array([[0.0], [2.0]])
    fresh = _model_record("pose", 0.5, "proved", seeds, 0, B, "head")
    old = _model_record("pose", 1.0, "proved", seeds, 0, A, "head", carried_over={"from": "earlier.json"})
    old["nodeid"] = "test_x.py::test_wide"
    d = directions_section([fresh, old])["pose"]
    assert set(d["models"]) == {B} and d["latent_range"]["eps"] == 0.5  # not the stale 1.0
    assert in_spec({"schema_version": 1, "tests": [fresh, old]}, np.array([[2.5], [2.6]]))["pose"].tolist() == [True,
                                                                                                               False]


# ------------------------------------------------------------- the same, as users run it
TWO_MODELS = {"test_two_models.py": '''
    import pytest
    from pytest_latentaudit import Accuracy
    from conftest import make_head


    @pytest.fixture
    def wide_head():
        import torch

        m = make_head()
        with torch.no_grad():
            m[2].weight.mul_(2.0)  # the same decision rule, other weights: another fingerprint
        return m


    @pytest.fixture
    def far_seeds():
        import torch

        return torch.tensor([[5.0, 0.0, 0.0], [6.0, 0.0, 0.0]]), torch.tensor([0, 0])


    @pytest.mark.latent(direction="pose", eps=0.3, spec=Accuracy(at_least=1.0))
    def test_head(latent_audit, head, seeds):
        latent_audit(head, seeds)


    @pytest.mark.latent(direction="pose", eps=0.3, spec=Accuracy(at_least=1.0))
    def test_wide_head(latent_audit, wide_head, far_seeds):
        latent_audit(wide_head, far_seeds)
'''}


@pytest.mark.parametrize("mode", ["serial", "xdist"])
def test_a_run_on_two_models_keeps_their_ranges_apart(pytester, mode, capsys):
    from conftest import load_sheet, mode_args, write_project
    from pytest_latentaudit import SpecSheet, cli

    write_project(pytester.path, TWO_MODELS)
    res = pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), "--latent-spec-sheet", "s.json")
    assert res.ret == 0, res.outlines
    res.assert_outcomes(passed=2)
    path = pytester.path / "s.json"
    pose = load_sheet(path)["directions"]["pose"]
    assert pose["latent_range"] is None
    by_name = {m["names"][0]: m for m in pose["models"].values()}
    assert set(by_name) == {"head", "wide_head"}
    # head's seeds: coordinate 0 mean -0.125, std 1.43; far seeds: mean 5.5, std 0.5
    assert by_name["head"]["latent_range"]["upper"][0] < 2.0 < by_name["wide_head"]["latent_range"]["lower"][0] + 3
    cov_models = load_sheet(path)["coverage"]["models"]
    assert sorted(m["names"][0] for m in cov_models.values()) == ["head", "wide_head"]
    assert all(m["per_direction"]["pose"]["status"] == "proved" for m in cov_models.values())
    z = np.array([[0.0, 0.0, 0.0], [5.5, 0.0, 0.0]])
    sheet = SpecSheet.load(path)
    with pytest.raises(DeployError, match="pass model="):
        sheet.in_spec(z)
    assert sheet.in_spec(z, model="head")["all"].tolist() == [True, False]
    assert sheet.in_spec(z, model="wide_head")["all"].tolist() == [False, True]
    capsys.readouterr()
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(head): proved up to eps=0.3" in out and "(wide_head): proved up to eps=0.3" in out
    assert cli.main(["coverage", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(head): proved (1 tests, proved up to eps=0.3)" in out
    assert "(wide_head): proved (1 tests, proved up to eps=0.3)" in out
    np.savez(pytester.path / "batch.npz", z=z)
    assert cli.main(["guard", str(path), str(pytester.path / "batch.npz"), "--range-only", "--json",
                     "--model", "wide_head"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["range"]["n_in"] == 1 and rep["range"]["directions"]["pose"]["n_in"] == 1
    assert cli.main(["guard", str(path), str(pytester.path / "batch.npz"), "--range-only", "--json"]) == 2
    assert "ranges of 2 models" in capsys.readouterr().err  # a clear error, not a silent "in range"


# the fingerprint covers the program around the weights (engines.graph.program_digest)
FP_SCALE = {"s": 2.0}
FP_LOG = __import__("logging").getLogger("latentaudit.test.fp")
FP_NAMES = dict.fromkeys({"alpha", "beta", "gamma", "delta"}, 1.0)  # its order varies with the hash seed
FP_CYCLE = __import__("itertools").cycle([1.0, 2.0])


def _fp_net():
    torch = pytest.importorskip("torch")
    return _FpNet(torch)


class _FpNetBase:
    pass


def _make_fp_class(torch):
    class FpNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.act = torch.nn.Linear(3, 4), torch.nn.LeakyReLU(0.1)
            self.c, self.offs, self.t = 3.0, [1.0, 2.0], torch.tensor(2.0)
            self.a.register_forward_hook(lambda mod, i, o: o + 0.0)

        def forward(self, x):
            FP_LOG.debug("forward %s", len(FP_NAMES))
            return (self.act(self.a(x)) * self.c * FP_SCALE["s"] + self.offs[0]) * self.t

    return FpNet


def _FpNet(torch):
    global _FP_CLASS
    if "_FP_CLASS" not in globals():
        _FP_CLASS = _make_fp_class(torch)
    return _FP_CLASS()


def test_the_fingerprint_changes_with_the_forward_not_only_the_weights():
    import copy

    torch = pytest.importorskip("torch")
    m = _fp_net()
    f0 = deploy.model_fingerprint(m)
    assert deploy.model_fingerprint(copy.deepcopy(m)) == f0 == deploy.model_fingerprint(_fp_net())
    m(torch.zeros(2, 3))  # a call (it logs) changes nothing
    __import__("logging").getLogger("latentaudit.test.another")
    assert deploy.model_fingerprint(m) == f0

    def changed(edit, undo):
        edit()
        try:
            return deploy.model_fingerprint(m) != f0
        finally:
            undo()

    assert changed(lambda: setattr(m.act, "negative_slope", 0.2), lambda: setattr(m.act, "negative_slope", 0.1))
    assert changed(lambda: setattr(m, "c", 4.0), lambda: setattr(m, "c", 3.0))  # a plain attribute
    assert changed(lambda: m.offs.__setitem__(0, 5.0), lambda: m.offs.__setitem__(0, 1.0))  # a list attribute
    assert changed(lambda: m.t.fill_(3.0), lambda: m.t.fill_(2.0))  # a tensor held as an attribute
    assert changed(lambda: FP_SCALE.__setitem__("s", 3.0), lambda: FP_SCALE.__setitem__("s", 2.0))  # a global
    hooks = []
    assert changed(lambda: hooks.append(m.a.register_forward_hook(lambda mod, i, o: o * 2)),
                   lambda: hooks.pop().remove())
    assert changed(lambda: hooks.append(torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: o)),
                   lambda: hooks.pop().remove())
    act = m.act
    assert changed(lambda: setattr(m, "act", torch.nn.ReLU()), lambda: setattr(m, "act", act))  # swapped
    m.eval()  # the mode is not the program: a proof holds for the deterministic forward
    assert deploy.model_fingerprint(m) == f0


def test_the_fingerprint_of_odd_values_is_computed_not_raised():
    torch = pytest.importorskip("torch")
    m = _fp_net()
    if hasattr(torch, "float8_e4m3fn"):
        m.odd = torch.zeros(3).to(torch.float8_e4m3fn)  # no NumPy dtype
    m.sparse = torch.eye(3).to_sparse()
    m.cyc = FP_CYCLE
    assert deploy.model_fingerprint(m).startswith("sha256:")


def test_the_fingerprint_is_the_same_in_every_process():
    """Other hash seeds (dict and set orders), other imports (a logger's registry), a call of the
    model in between (its logger's cache): one fingerprint."""
    import os
    import subprocess
    import sys

    pytest.importorskip("torch")
    here = str(__import__("pathlib").Path(__file__).parent)
    code = ("import sys; sys.path.insert(0, %r); import test_deploy as t, torch; %s "
            "print(t.deploy.model_fingerprint(t._fp_net()))")
    pre = ["", "import logging, json, email; logging.getLogger('x.y'); t._fp_net()(torch.zeros(1, 3));"]
    outs = {subprocess.run([sys.executable, "-c", code % (here, p)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
            for seed, p in ((1, pre[0]), (2, pre[1]), (3, pre[0]), (4, pre[1]))}
    assert len(outs) == 1 and next(iter(outs)).startswith("sha256:")


FP_LIB = '''
SCALE = 2.0


class Cfg:
    k = 1.0

    @staticmethod
    def f(x):
        return x * Cfg.k


def act(x):
    return x * SCALE
'''

FP_MODEL = '''
import torch
import fp_lib
from fp_lib import Cfg


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = torch.nn.Linear(2, 2)

    def forward(self, x):
        return Cfg.f(fp_lib.act(self.l(x)))
'''


def test_the_fingerprint_follows_helpers_in_the_users_modules_and_classes(tmp_path, monkeypatch):
    """``helpers.fn(x)`` and ``helpers.SCALE`` (a module of the user's code named in the forward)
    and ``Cfg.f`` (a class named as a global): their code and values are part of the program."""
    import importlib
    import sys

    pytest.importorskip("torch")
    (tmp_path / "fp_lib.py").write_text(FP_LIB)
    (tmp_path / "fp_model.py").write_text(FP_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fp_lib", "fp_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    lib, mod = importlib.import_module("fp_lib"), importlib.import_module("fp_model")
    m = mod.Net()
    f0 = deploy.model_fingerprint(m)
    m(__import__("torch").zeros(1, 2))
    assert deploy.model_fingerprint(m) == f0 == deploy.model_fingerprint(mod.Net())

    def changed(obj, name, value):
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            return deploy.model_fingerprint(m) != f0
        finally:
            setattr(obj, name, old)

    assert changed(lib, "SCALE", 3.0)  # a module constant
    assert changed(lib, "act", lambda x: x * 5)  # a module function's code
    assert changed(lib.Cfg, "k", 3.0)  # a class attribute
    assert changed(lib.Cfg, "f", staticmethod(lambda x: x))  # a class's method

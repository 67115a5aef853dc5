"""The pytest plugin, end to end: real test files run through pytest (with and without
``-n 2``), checked through their outcomes, terminal output, spec sheet and JUnit XML."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import JUNIT_XSD, MODES, load_sheet, mode_args, records_by_test, shared_run, write_project

# In-process pytester runs restore sys.modules afterwards; modules first imported during a
# run would be re-imported by the next one while the package caches the old classes
# (``from pytest_latentaudit import LatentSpace``). Import them here so every run shares them.
import pytest_latentaudit.api  # noqa: E402,F401
import pytest_latentaudit.core.latent  # noqa: E402,F401
import pytest_latentaudit.plugin.session  # noqa: E402,F401
import pytest_latentaudit.core.specs  # noqa: E402,F401

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

# --------------------------------------------------------------- the main project
MAIN_FILES = {
    "test_main.py": '''
        import pytest
        import torch
        from torch import nn

        from pytest_latentaudit import Accuracy, Invariance


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(at_least=1.0))
        def test_proved_pose(latent_audit, head, seeds):
            result = latent_audit(head, seeds)
            assert result.verdict == "proved"


        @pytest.mark.latent(direction="light", eps=3.0, spec=Accuracy())
        def test_proved_light(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="style", eps=1.0, spec=Invariance())
        def test_proved_style(latent_audit, head, seeds):
            latent_audit(head, seeds[0])


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), engine="ibp")
        def test_marker_engine(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy())
        def test_violated_pose(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy(), engine="falsify")
        def test_unproven_falsify_only(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), unproven="xfail")
        def test_unsupported_atan(latent_audit, head, seeds):
            latent_audit(AtanHead(head), seeds)


        class AtanHead(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, z):
                return torch.atan(self.inner(z))  # monotone: the prediction is kept


        class SortHead(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, z):
                y = self.inner(z)
                s = torch.sort(y, dim=1).values
                return y + 0.0 * s


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), unproven="xfail")
        def test_unsupported_sort(latent_audit, head, seeds):
            latent_audit(SortHead(head), seeds)


        def test_plain():
            assert sum([1, 2]) == 3
    ''',
    "test_bad_inputs.py": '''
        import pytest
        import torch

        from pytest_latentaudit import Accuracy


        @pytest.mark.latent(direction="nope", eps=0.1, spec=Accuracy())
        def test_bad_unknown_direction(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=-0.1, spec=Accuracy())
        def test_bad_negative_eps(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_nan_seeds(latent_audit, head, seeds):
            z, y = seeds
            z = z.clone()
            z[1, 2] = float("nan")
            latent_audit(head, (z, y))


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_nan_weights(latent_audit, head, seeds):
            with torch.no_grad():
                head[2].weight[0, 1] = float("nan")
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_inference_weights(latent_audit, seeds):
            with torch.inference_mode():
                m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
            latent_audit(m, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_seed_dim(latent_audit, head, seeds):
            latent_audit(head, (torch.zeros(4, 5), seeds[1]))


        @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy(), device="cuda")
        def test_bad_cuda_device(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec="accuracy")
        def test_bad_spec_type(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose")
        def test_bad_missing_marker_args(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy(), engine="nope")
        def test_bad_marker_engine(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent("pose", 0.1, Accuracy())
        def test_bad_positional_marker(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_label_out_of_range(latent_audit, head, seeds):
            latent_audit(head, (seeds[0], torch.tensor([0, 1, 0, 7])))


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_negative_label(latent_audit, head, seeds):
            latent_audit(head, (seeds[0], torch.tensor([-1, 1, 0, 1])))


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_no_seeds(latent_audit, head, seeds):
            latent_audit(head, (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy(), budjet=5)
        def test_bad_marker_keyword(latent_audit, head, seeds):
            latent_audit(head, seeds)


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_override_keyword(latent_audit, head, seeds):
            latent_audit(head, seeds, sweeps=[0.2], colour="red")
    ''',
    "test_wrong_space.py": '''
        import pytest

        from pytest_latentaudit import Accuracy


        @pytest.fixture
        def latent_space():
            return 42


        @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy())
        def test_bad_space_type(latent_audit, head, seeds):
            latent_audit(head, seeds)
    ''',
    "test_state.py": '''
        import warnings

        import pytest
        import torch
        from torch import nn

        from pytest_latentaudit import Accuracy


        def snapshot(model):
            return {
                "filters": list(warnings.filters),
                "dtype": torch.get_default_dtype(),
                "grad": torch.is_grad_enabled(),
                "threads": torch.get_num_threads(),
                "deterministic": torch.are_deterministic_algorithms_enabled(),
                "anomaly": torch.is_anomaly_enabled(),
                "rng": torch.random.get_rng_state().clone(),
                "training": [m.training for m in model.modules()],
                "state": {k: v.clone() for k, v in model.state_dict().items()},
            }


        def assert_same(before, after):
            for key in ("filters", "dtype", "grad", "threads", "deterministic", "anomaly", "training"):
                assert before[key] == after[key], key
            assert torch.equal(before["rng"], after["rng"]), "global RNG state changed"
            assert before["state"].keys() == after["state"].keys()
            for k in before["state"]:
                assert torch.equal(before["state"][k], after["state"][k]), f"model state {k} changed"


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), engine="bab")
        def test_state_after_proof(latent_audit, head, seeds):
            model = head.train()
            before = snapshot(model)
            result = latent_audit(model, seeds)
            assert result.verdict == "proved"
            assert_same(before, snapshot(model))


        @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy())
        def test_train_mode_batchnorm(latent_audit, head, seeds):
            # a model handed over in training mode is audited in eval mode and given back as it was
            model = nn.Sequential(head, nn.BatchNorm1d(2)).train()
            before = snapshot(model)
            result = latent_audit(model, seeds)
            assert result.verdict == "proved"
            assert_same(before, snapshot(model))


        @pytest.mark.latent(direction="pose", eps=2.5, spec=Accuracy(), engine="falsify")
        def test_state_after_violation(latent_audit, head, seeds):
            model = nn.Sequential(head, nn.BatchNorm1d(2)).train()
            with torch.no_grad():
                before = snapshot(model)
                with pytest.raises(pytest.fail.Exception, match="VIOLATED"):
                    latent_audit(model, seeds)
                assert_same(before, snapshot(model))
    ''',
}

PROVED = ["test_proved_pose", "test_proved_light", "test_proved_style", "test_marker_engine", "test_state_after_proof",
          "test_train_mode_batchnorm"]
AUDITED = {  # test name -> verdict recorded in the spec sheet
    **{name: "proved" for name in PROVED},
    "test_violated_pose": "violated", "test_unproven_falsify_only": "unproven",
    "test_unsupported_atan": "unproven", "test_unsupported_sort": "unproven",
    "test_state_after_violation": "violated",
}
# bad input inside a test: a failed test whose failure names the problem
BAD_INPUTS = {
    "test_bad_unknown_direction": r"unknown direction 'nope'; the latent space declares: light, pose, style, tilt",
    "test_bad_negative_eps": r"eps must be a finite number >= 0, got -0\.1",
    "test_bad_nan_seeds": r"seeds contains NaN or inf",
    "test_bad_nan_weights": r"model parameter '2\.weight' contains NaN or inf",
    "test_bad_inference_weights": r"model parameter '0\.weight' was created under torch\.inference_mode\(\)",
    "test_bad_seed_dim": r"(shape|size|dim).*\b5\b|\b5\b.*(shape|size|dim)",
    "test_bad_spec_type": r"spec must be one of Accuracy",
    "test_bad_missing_marker_args": r"@pytest\.mark\.latent needs eps, spec",
    "test_bad_marker_engine": r"unknown engine 'nope'",
    "test_bad_positional_marker": r"@pytest\.mark\.latent takes keyword arguments only",
    "test_bad_label_out_of_range": r"label.* for a model with 2 outputs",
    "test_bad_negative_label": r"label.* for a model with 2 outputs",
    "test_bad_space_type": r"fixture 'latent_space' returned int, not a LatentSpace",
    "test_bad_no_seeds": r"latent_audit: .*seed",
    "test_bad_marker_keyword": r"@pytest\.mark\.latent got unknown keyword argument\(s\) 'budjet' \(did you mean "
                               r"'budget'\?\); valid keywords: direction, eps, spec, engine, budget, device, unproven, "
                               r"estimated, precision, attack, sweep, radius, validity",
    "test_bad_override_keyword": r"unknown keyword argument\(s\) 'colour', 'sweeps' \(did you mean 'sweep'\?\)",
}
if not HAS_CUDA:
    BAD_INPUTS["test_bad_cuda_device"] = r"CUDA is not available"

EXPECTED_OUTCOME = {
    **{name: "PASSED" for name in PROVED + ["test_plain", "test_state_after_violation"]},
    "test_violated_pose": "FAILED", "test_unproven_falsify_only": "FAILED",
    "test_unsupported_atan": "XFAIL", "test_unsupported_sort": "XFAIL",
    **{name: "FAILED" for name in BAD_INPUTS},
}
if HAS_CUDA:
    EXPECTED_OUTCOME["test_bad_cuda_device"] = "SKIPPED"


MAIN_ARGS = ["-rA", "--latent-engine", "linear", "--latent-spec-sheet", "out/sheet.json", "--junitxml", "out/junit.xml"]


@pytest.fixture(scope="module")
def _main_runs(tmp_path_factory):
    cache = {}

    def get(mode):
        if mode not in cache:  # once per session, whichever worker asks first
            cache[mode] = shared_run(tmp_path_factory, f"plugin-main-{mode}", MAIN_FILES, *MAIN_ARGS, *mode_args(mode))
        return cache[mode]

    return get


@pytest.fixture(scope="module", params=MODES)
def main_run(request, _main_runs):
    """``(RunResult, project root)`` of the main project, once per mode."""
    return _main_runs(request.param)


def failure_section(result, name):
    """The text of one test's entry in the FAILURES section."""
    lines = result.outlines
    head = re.compile(r"^_{3,} (?:Test\w+\.)?" + re.escape(name) + r" _{3,}$")
    start = next((i for i, line in enumerate(lines) if head.match(line)), None)
    assert start is not None, f"no failure section for {name}:\n" + "\n".join(lines)
    end = start + 1
    while end < len(lines) and not re.match(r"^(_{3,} \S+ _{3,}|={3,}|-{3,} generated xml)", lines[end]):
        end += 1
    return "\n".join(lines[start + 1:end])


def outcomes_by_test(result):
    """Test name -> PASSED/FAILED/XFAIL/SKIPPED from the ``-rA`` short summary."""
    out = {}
    for line in result.outlines:
        m = re.match(r"^(PASSED|FAILED|XFAIL|XPASS|ERROR|SKIPPED) \S+::(\w+)", line)
        if m:
            out[m.group(2)] = m.group(1)
        m = re.match(r"^SKIPPED \[\d+\] (\S+):\d+:", line)
        if m and "test_bad_inputs" in m.group(1):
            out["test_bad_cuda_device"] = "SKIPPED"
    return out


def test_run_summary_and_exit_code(main_run):
    result, _ = main_run
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "INTERNALERROR" not in result.stderr.str()
    outcomes = result.parseoutcomes()
    assert sum(outcomes.get(k, 0) for k in ("passed", "failed", "xfailed", "skipped")) == len(EXPECTED_OUTCOME)
    assert outcomes.get("errors", 0) == 0 and outcomes.get("xpassed", 0) == 0
    assert outcomes["failed"] >= len(BAD_INPUTS) + 2
    assert set(outcomes_by_test(result)) == set(EXPECTED_OUTCOME)


@pytest.mark.parametrize("name, expected", [(n, o) for n, o in sorted(EXPECTED_OUTCOME.items())])
def test_outcome(main_run, name, expected):
    result, _ = main_run
    assert outcomes_by_test(result).get(name) == expected


def test_violated_test_fails_with_a_useful_message(main_run):
    result, root = main_run
    text = failure_section(result, "test_violated_pose")
    assert "latent spec VIOLATED: Accuracy(at_least=1) along 'pose', eps=2.5" in text
    assert "verified 0/4 (0.0%), falsified 4, unknown 0; needs 100.0% verified" in text
    m = re.search(r"worst counterexample: seed (\d+), offset \(([-+.\deE]+)\)[^\n]*?along 'pose'[^\n]*?"
                  r"predicted (\d+), expected (\d+)", text)
    assert m, text
    seed, offset, predicted, expected = m.groups()
    assert predicted != expected and int(seed) in range(4)
    assert abs(float(offset)) <= 2.5 + 1e-6
    img = re.search(r"counterexample image: (\S+\.png)", text)
    assert img and Path(img.group(1)).is_file()
    assert "Traceback" not in text


def test_unproven_fails_by_default(main_run):
    result, _ = main_run
    text = failure_section(result, "test_unproven_falsify_only")
    assert "latent spec UNPROVEN" in text and "unknown 4" in text and "engine falsify" in text


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_failed_test_with_clear_message(main_run, name):
    result, _ = main_run
    assert re.search(rf"^FAILED \S+::{name}\b", result.stdout.str(), re.M), f"{name} did not fail"
    text = failure_section(result, name)
    assert re.search(BAD_INPUTS[name], text), text


def test_bad_input_message_printed_once(main_run):
    result, _ = main_run
    text = failure_section(result, "test_bad_negative_eps")
    assert "During handling of the above exception" not in text
    assert text.count("eps must be a finite number") == 1


@pytest.mark.parametrize("name, layer", [("test_unsupported_atan", "AtanHead"),
                                         ("test_unsupported_sort", None)])
def test_unsupported_layer_falls_back_to_falsification(main_run, name, layer):
    """Never a crash, never a proof: a note names the layer and the verdict is unproven."""
    result, root = main_run
    recs = records_by_test(load_sheet(root / "out" / "sheet.json"))
    assert name in recs, f"{name} has no spec-sheet record (did it crash?)"
    rec = recs[name]
    assert rec["verdict"] == "unproven" and rec["counts"]["verified"] == 0
    assert any("falling back to falsification" in n and (layer is None or layer in n) for n in rec["notes"]), \
        rec["notes"]
    assert outcomes_by_test(result)[name] == "XFAIL"  # unproven + marker unproven="xfail"


def test_unsupported_function_is_named():
    import torch
    from torch import nn

    from pytest_latentaudit import Direction, Invariance, audit

    class SortHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, z):
            y = self.lin(z)
            return y + 0.0 * torch.sort(y, dim=1).values

    r = audit(SortHead(), torch.randn(3, 2), direction=Direction.axis(0), eps=0.1, spec=Invariance(), budget_s=5)
    assert r.verdict != "proved"
    assert any("sort" in n for n in r.notes), r.notes


def test_header_and_summary(main_run):
    result, root = main_run
    out = result.stdout.str()
    header = [line for line in result.outlines if line.startswith("latentaudit: ")]
    assert len(header) == 1
    for part in ("latentaudit: engine=linear ", " device=auto ", " budget=60s ", " unproven=fail ", " seed=0 ",
                 " precision=float32"):
        assert part in header[0], header[0]
    assert re.search(r" spec-sheet=\S+sheet\.json\b", header[0]), header[0]
    assert re.search(r"^=+ latent audit summary =+$", out, re.M)
    summary = out.split("latent audit summary", 1)[1]
    recorded = records_by_test(load_sheet(root / "out" / "sheet.json"))
    assert set(AUDITED) <= set(recorded)
    for name, verdict in AUDITED.items():
        if name not in recorded:
            continue
        # node ids, not bare names; the pytest outcome beside the verdict (xfail included)
        row = re.search(rf"^test_\w+\.py::{name}\s.*$", summary, re.M)
        assert row and re.search(rf"\s{verdict}\s", row.group(0)), name
        outcome = {"PASSED": "passed", "FAILED": "failed", "XFAIL": "xfailed"}[EXPECTED_OUTCOME[name]]
        assert re.match(rf"\S+\s+{outcome}\s", row.group(0)), row.group(0)
        assert re.search(rf"\s{recorded[name]['direction']}\s", row.group(0)), row.group(0)
    for name in list(BAD_INPUTS) + ["test_plain"]:
        assert not re.search(rf"^test_\w+\.py::{name}\s", summary, re.M)
    assert f"spec sheet: {root / 'out' / 'sheet.json'}" in out


def test_spec_sheet_content(main_run):
    _, root = main_run
    sheet = load_sheet(root / "out" / "sheet.json")
    import pytest_latentaudit

    assert sheet["schema_version"] == 1
    assert sheet["tool"] == {"name": "pytest-latentaudit", "version": pytest_latentaudit.__version__}
    assert {"python", "platform", "machine", "torch"} <= set(sheet["machine"])
    # the torch that ran the tests, also under xdist, where the controller never imports torch
    # (the project's conftest imports it lazily) and the workers report it
    import torch

    assert sheet["machine"]["torch"] == torch.__version__ and sheet["machine"]["cuda"] is torch.cuda.is_available()
    assert "commit" in sheet and isinstance(sheet["commit"], dict)
    assert sheet["settings"]["engine"] == "linear"
    recs = records_by_test(sheet)
    # one record per latent test that reached a verdict (tests broken by bad input have none)
    assert set(AUDITED) <= set(recs) <= set(AUDITED)
    assert len(sheet["tests"]) == len(recs)
    assert sheet["summary"]["tests"] == len(recs)
    assert sheet["summary"]["verdicts"] == {v: list(r["verdict"] for r in recs.values()).count(v)
                                            for v in {r["verdict"] for r in recs.values()}}
    for name, r in recs.items():
        assert r["verdict"] == AUDITED[name]
        assert r["nodeid"].endswith("::" + name)
        assert r["n_seeds"] == 4 and sum(r["counts"].values()) == 4
        assert isinstance(r["seconds"], float) and r["seconds"] >= 0
        assert r["spec"]["kind"] in ("accuracy", "invariance")
        for key in ("direction", "eps", "engine", "counterexamples"):
            assert key in r
    assert recs["test_proved_style"]["direction"] == "style"
    assert recs["test_proved_style"]["direction_info"] == {"kind": "subspace", "k": 2}
    assert recs["test_proved_light"]["eps"] == 3.0
    assert recs["test_proved_pose"]["counts"] == {"verified": 4, "falsified": 0, "unknown": 0}
    assert recs["test_unproven_falsify_only"]["counts"] == {"verified": 0, "falsified": 0, "unknown": 4}
    assert recs["test_violated_pose"]["counts"] == {"verified": 0, "falsified": 4, "unknown": 0}
    assert recs["test_violated_pose"]["outcome"] == "failed"
    assert recs["test_proved_pose"]["outcome"] == "passed"
    assert recs["test_state_after_violation"]["outcome"] == "passed"  # the test caught the failure itself


def test_marker_overrides_cli_engine(main_run):
    _, root = main_run
    recs = records_by_test(load_sheet(root / "out" / "sheet.json"))
    assert recs["test_marker_engine"]["engine"] == "ibp"
    assert recs["test_state_after_proof"]["engine"] == "bab"
    assert recs["test_unproven_falsify_only"]["engine"] == "falsify"
    assert recs["test_proved_pose"]["engine"] == "linear"  # from the CLI


def test_counterexamples_recorded_with_images(main_run):
    _, root = main_run
    rec = records_by_test(load_sheet(root / "out" / "sheet.json"))["test_violated_pose"]
    cexs = rec["counterexamples"]
    assert sorted(c["seed_index"] for c in cexs) == [0, 1, 2, 3]
    labels = [0, 1, 0, 1]
    for c in cexs:
        assert abs(c["offset"][0]) <= 2.5 + 1e-6
        assert c["expected"] == labels[c["seed_index"]] and c["predicted"] != c["expected"]
        assert c["margin"] > 0
        assert not Path(c["image"]).is_absolute()  # relative to the sheet: a downloaded artifact keeps its pictures
        img = root / "out" / c["image"]
        assert img.is_file() and img.parent == root / "out" / "sheet-counterexamples"
        data = img.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(img) as im:
            im.verify()
    # counterexamples are ordered worst first
    margins = [c["margin"] for c in cexs]
    assert margins == sorted(margins, reverse=True)


def _normalised_records(sheet):
    out = []
    for r in sheet["tests"]:
        r = {k: v for k, v in r.items() if k not in ("seconds", "spec_sheet")}
        r["counterexamples"] = [{k: v for k, v in c.items() if k != "image"} for c in r["counterexamples"]]
        out.append(r)
    return out


def test_spec_sheet_identical_with_and_without_xdist(_main_runs):
    (serial, root_s), (xdist, root_x) = _main_runs("serial"), _main_runs("xdist")
    a, b = load_sheet(root_s / "out" / "sheet.json"), load_sheet(root_x / "out" / "sheet.json")
    assert [r["nodeid"] for r in a["tests"]] == [r["nodeid"] for r in b["tests"]]
    assert _normalised_records(a) == _normalised_records(b)
    assert a["summary"] == b["summary"] and a["models"] == b["models"]
    assert "gw0" in xdist.stdout.str() or "bringing up nodes" in xdist.stdout.str()


def test_junit_xml_valid_and_carries_verdicts(main_run):
    lxml_etree = pytest.importorskip("lxml.etree")
    _, root = main_run
    schema = lxml_etree.XMLSchema(lxml_etree.parse(str(JUNIT_XSD)))
    doc = lxml_etree.parse(str(root / "out" / "junit.xml"))
    assert schema.validate(doc), schema.error_log
    cases = {tc.get("name"): tc for tc in doc.iter("testcase")}
    failure = cases["test_violated_pose"].find("failure")
    assert failure is not None and "latent spec VIOLATED" in failure.get("message")
    assert "worst counterexample" in failure.get("message")
    failure = cases["test_unproven_falsify_only"].find("failure")
    assert failure is not None and "latent spec UNPROVEN" in failure.get("message")
    assert cases["test_proved_pose"].find("failure") is None
    props = {p.get("name"): p.get("value") for p in doc.getroot().iter("property")}
    summary = load_sheet(root / "out" / "sheet.json")["summary"]
    assert props["latentaudit_tests"] == str(summary["tests"])
    for verdict in ("proved", "violated", "unproven"):
        assert props[f"latentaudit_{verdict}"] == str(summary["verdicts"].get(verdict, 0))
    assert props["latentaudit_violated"] == "2" and int(props["latentaudit_proved"]) >= 5
    key = next(k for k in props if k.startswith("latentaudit:") and k.endswith("::test_violated_pose"))
    assert props[key] == "violated direction=pose eps=2.5 verified=0 falsified=4 unknown=0"
    # without --latent-junit-properties there are no per-testcase properties
    assert all(tc.find("properties") is None for tc in cases.values())


# --------------------------------------------------------------- smaller projects
SMALL_TEST = """
    import pytest
    from pytest_latentaudit import Accuracy


    @pytest.mark.latent(direction="tilt", eps=0.5, spec=Accuracy())
    def test_robust(latent_audit, head, seeds):
        latent_audit(head, seeds)


    @pytest.mark.latent(direction="pose", eps=0.5, spec=Accuracy(), engine="linear", budget=20)
    def test_marker_linear(latent_audit, head, seeds):
        latent_audit(head, seeds)
"""

OPTIONS_TEST = """
    import pytest
    from pytest_latentaudit import Accuracy


    @pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(), unproven="skip")
    def test_marker_skip(latent_audit, head, seeds):
        latent_audit(head, seeds)
"""


def small_project(root, ini=None, extra=None):
    files = {"test_small.py": SMALL_TEST, **(extra or {})}
    if ini is not None:
        files["tox.ini"] = ini
    write_project(root, files)


def run(pytester, mode, *args):
    """In-process run (torch is already imported here; xdist workers are subprocesses)."""
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), *args)


@pytest.mark.parametrize("mode", MODES)
def test_options_cli_over_ini_marker_over_cli(pytester, mode):
    """One run exercising the option plumbing, with and without xdist:

    * ini ``latent_engine = ibp``, CLI ``--latent-engine falsify``: CLI wins, no proof is
      attempted, so the robust model is ``unproven`` and CLI ``--latent-unproven xfail``
      makes it xfail;
    * marker ``engine="linear"`` beats the CLI: proved, passes;
    * marker ``unproven="skip"`` beats the CLI's xfail: skipped;
    * ini ``latent_budget = 30`` beats the default; marker ``budget=20`` beats the ini;
    * ``--latent-junit-properties`` adds per-testcase properties.
    """
    small_project(pytester.path, ini="[pytest]\nlatent_engine = ibp\nlatent_budget = 30\n",
                  extra={"test_options.py": OPTIONS_TEST})
    result = run(pytester, mode, "--latent-engine", "falsify", "--latent-unproven", "xfail", "-rsx",
                 "--latent-spec-sheet", "sheet.json", "--junitxml", "j.xml", "--latent-junit-properties")
    result.assert_outcomes(passed=1, xfailed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    header = next(line for line in result.outlines if line.startswith("latentaudit: "))
    assert "engine=falsify " in header and " budget=30s " in header and " unproven=xfail " in header
    assert out.count("latent spec UNPROVEN") >= 2  # xfail and skip reasons (-rsx)
    recs = records_by_test(load_sheet(pytester.path / "sheet.json"))
    assert set(recs) == {"test_robust", "test_marker_linear", "test_marker_skip"}
    robust, linear, skip = recs["test_robust"], recs["test_marker_linear"], recs["test_marker_skip"]
    assert (robust["engine"], robust["verdict"], robust["outcome"], robust["budget"]) == \
        ("falsify", "unproven", "xfailed", 30.0)
    assert (linear["engine"], linear["verdict"], linear["outcome"], linear["budget"]) == \
        ("linear", "proved", "passed", 20.0)
    assert (skip["engine"], skip["verdict"], skip["outcome"]) == ("falsify", "unproven", "skipped")

    from xml.etree import ElementTree

    cases = {tc.get("name"): tc for tc in ElementTree.parse(pytester.path / "j.xml").iter("testcase")}
    assert set(cases) == set(recs)
    for name, rec in recs.items():
        props = {p.get("name"): p.get("value") for p in cases[name].find("properties").iter("property")}
        assert props["latent_verdict"] == rec["verdict"]
        assert props["latent_direction"] == rec["direction"] and float(props["latent_eps"]) == 0.5
        for key in ("verified", "falsified", "unknown"):
            assert props[f"latent_{key}"] == str(rec["counts"][key])


def test_ini_over_default(pytester):
    small_project(pytester.path, ini="[pytest]\nlatent_engine = ibp\n")
    result = run(pytester, "serial", "--latent-spec-sheet", "ini.json")
    result.assert_outcomes(passed=2)
    header = next(line for line in result.outlines if line.startswith("latentaudit: "))
    assert "engine=ibp " in header and " budget=60s " in header
    recs = records_by_test(load_sheet(pytester.path / "ini.json"))
    assert recs["test_robust"]["engine"] == "ibp" and recs["test_robust"]["budget"] == 60.0
    assert recs["test_marker_linear"]["engine"] == "linear"


@pytest.mark.parametrize("action, outcome", [("xfail", "xfailed"), ("skip", "skipped"), ("fail", "failed")])
def test_unproven_option(pytester, action, outcome):
    """``--latent-engine falsify`` attempts no proof, so a robust model is unproven."""
    small_project(pytester.path)
    result = run(pytester, "serial", "--latent-engine", "falsify", "--latent-unproven", action,
                 "--latent-spec-sheet", "sheet.json", "-rsx")
    counts = {"passed": 1, "failed": 0, "xfailed": 0, "skipped": 0}
    counts[outcome] += 1
    result.assert_outcomes(**counts)
    assert result.ret == (pytest.ExitCode.TESTS_FAILED if action == "fail" else pytest.ExitCode.OK)
    out = result.stdout.str()
    assert f"unproven={action}" in out and "latent spec UNPROVEN" in out
    recs = records_by_test(load_sheet(pytester.path / "sheet.json"))
    assert recs["test_robust"]["verdict"] == "unproven" and recs["test_robust"]["outcome"] == outcome


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("args, message", [
    (["--latent-device", "gpu"], "unknown device 'gpu'"),
    (["--latent-budget", "-1"], "budget must be a positive number of seconds"),
    (["--latent-engine", "nope"], "unknown engine 'nope'"),
    (["--latent-unproven", "maybe"], "unknown action for unproven verdicts 'maybe'"),
    (["--latent-seed", "x"], "seed must be an integer"),
    (["--latent-precision", "float16"], "precision must be float32 or float64"),
    (["--latent-threads", "0"], "threads must be auto, keep or a positive number"),
])
def test_bad_option_values_are_usage_errors(pytester, mode, args, message):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *mode_args(mode), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"pytest-latentaudit: {message}" in err
    assert "Traceback" not in err and "INTERNALERROR" not in err + result.stdout.str()


def test_bad_ini_value_is_usage_error(pytester):
    pytester.makeini("[pytest]\nlatent_engine = warp\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "pytest-latentaudit: unknown engine 'warp'" in result.stderr.str()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cli_cuda_device_without_cuda_is_one_usage_error(pytester, mode, device):
    """One usage error at start, not a failure per latent test (the marker's device="cuda" is
    checked per test: see the main project)."""
    small_project(pytester.path)
    result = run(pytester, mode, "--latent-device", device)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert err.count(f"pytest-latentaudit: --latent-device {device}: CUDA is not available on this machine") == 1
    assert "Traceback" not in err and "INTERNALERROR" not in err + result.stdout.str()
    assert "passed" not in result.stdout.str() and "failed" not in result.stdout.str()


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cli_cuda_device_index_out_of_range(pytester):
    import torch

    small_project(pytester.path)
    result = run(pytester, "serial", "--latent-device", f"cuda:{torch.cuda.device_count()}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "CUDA device(s)" in result.stderr.str()


def test_markers_documented(pytester):
    result = pytester.runpytest_inprocess("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.latent(direction, eps, spec*"])


def test_header_without_latent_tests(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-budget", "none")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["latentaudit: engine=auto *budget=none *unproven=fail*"])
    assert "latent audit summary" not in result.stdout.str()


@pytest.mark.parametrize("mode", ["explicit-plugin", "xdist"])
def test_missing_space_fixture_and_no_torch_import(pytester, monkeypatch, mode):
    """A suite without latent tests never imports torch; a latent test without a
    ``latent_space`` fixture fails with a message naming it (also without importing torch).

    ``explicit-plugin``: entry points off, the plugin loaded with ``-p pytest_latentaudit.plugin``
    (with autoload on, pytest refuses a module registered twice under two names: that is
    pytest's behaviour for any plugin, e.g. ``-p xdist.plugin``). ``xdist``: autoloaded, ``-n 2``.
    """
    pytester.makepyfile(test_a_plain='''
        import sys

        def test_plain_no_torch():
            assert "torch" not in sys.modules
            assert "numpy" not in sys.modules
            assert "auto_LiRPA" not in sys.modules
    ''', test_b_missing='''
        import sys
        import pytest


        @pytest.mark.latent(direction="pose", eps=0.1, spec=None)
        def test_missing_space(latent_audit):
            latent_audit(lambda z: z, [[0.0, 1.0]])


        def test_still_no_torch():
            assert "torch" not in sys.modules and "numpy" not in sys.modules
    ''')
    if mode == "explicit-plugin":
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        args = ["-p", "pytest_latentaudit.plugin"]
    else:
        args = ["-n", "2"]
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*latent_audit needs a fixture named 'latent_space'*"])
    if mode == "explicit-plugin":
        assert "latentaudit: engine=auto" in result.stdout.str()  # the plugin really was loaded


def test_import_plugin_does_not_import_torch_or_numpy():
    code = textwrap.dedent('''
        import sys
        import pytest_latentaudit.plugin
        import pytest_latentaudit.plugin.options, pytest_latentaudit.report.terminal, pytest_latentaudit.sheet.specsheet
        import pytest_latentaudit.plugin.session, pytest_latentaudit.cli, pytest_latentaudit.sheet.coverage
        import pytest_latentaudit.sheet.records, pytest_latentaudit.core.vocab, pytest_latentaudit.plugin.hookspecs
        from pytest_latentaudit import __version__
        bad = [m for m in ("torch", "numpy", "auto_LiRPA") if m in sys.modules]
        print("IMPORTED", bad)
        sys.exit(1 if bad else 0)
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help_lists_the_latent_options(pytester):
    """``pytest --help`` works (a '%' in a help text crashed argparse) and shows the choices."""
    result = pytester.runpytest_inprocess("--help")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*--latent-device=auto|cpu|cuda*", "*--latent-budget=SECONDS*",
                                 "*--latent-unproven=fail|xfail|skip*", "*--latent-estimated=pass|fail|xfail|skip*"])
    assert "10%" in result.stdout.str()

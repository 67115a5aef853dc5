"""Model Card Toolkit and Hugging Face model-index exports of a spec sheet."""
from __future__ import annotations

import json
import sys

import pytest

from pytest_latentaudit.report import exports
from pytest_latentaudit.sheet import schema


yaml = pytest.importorskip("yaml")


def rec(nodeid, direction, eps, verdict, kind="accuracy", v=4, f=0, u=0, **extra):
    n = v + f + u
    spec_text = {"accuracy": "Accuracy(at_least=0.75)", "invariance": "Invariance(at_least=1)"}.get(kind, kind)
    return {"nodeid": nodeid, "direction": direction, "eps": eps, "verdict": verdict, "spec": {"kind": kind},
            "spec_text": spec_text, "n_seeds": n, "counts": {"verified": v, "falsified": f, "unknown": u},
            "verified_fraction": v / n, "at_least": 0.75, **extra}


@pytest.fixture
def sheet():
    return {
        "schema_version": 1, "tool": {"name": "pytest-latentaudit", "version": "0.1.0"},
        "created": "2026-01-01T00:00:00+00:00", "commit": {"id": "abc123def456", "dirty": True, "branch": "main"},
        "models": ["sha256:00ff"], "summary": {"tests": 4, "verdicts": {"proved": 2, "violated": 1, "estimated": 1}},
        "tests": [
            rec("t.py::test_pose", "pose", 0.5, "proved", v=3, u=1,
                sweep=[{"eps": 0.25, "verdict": "proved", "counts": {"verified": 4, "falsified": 0, "unknown": 0},
                        "verified_fraction": 1.0, "evidence": "proved"},
                       {"eps": 0.5, "verdict": "proved", "counts": {"verified": 3, "falsified": 0, "unknown": 1},
                        "verified_fraction": 0.75}]),
            rec("t.py::test_pose_big", "pose", 2.0, "violated", v=1, f=2, u=1),
            rec("t.py::test_light", "light", 0.3, "proved", kind="invariance"),
            rec("t.py::test_hue", "hue", 1.0, "estimated", kind="output_range", v=0, u=4, evidence="estimated",
                estimate={"fraction": 0.9, "lower": 0.8, "upper": 0.95, "confidence": 0.95, "samples": 400}),
        ],
        "directions": {"pose": {"kind": "axis", "k": 1, "axis": 0, "proved_eps": 0.5,
                                "latent_range": {"lower": [-1.5], "upper": [2.25], "eps": 0.5}}},
    }


# ------------------------------------------------------------------------ Model Card Toolkit
def test_model_card_validates_against_the_vendored_mct_schema(sheet):
    pytest.importorskip("jsonschema")
    card = exports.to_model_card(sheet, name="glasses head")
    schema.validate_model_card(card)
    assert card["schema_version"] == "0.0.2"
    assert card["model_details"]["name"] == "glasses head"
    assert card["model_details"]["version"] == {"name": "abc123def456",
                                                "diff": "uncommitted changes in the working tree"}


def test_performance_metrics(sheet):
    metrics = exports.to_model_card(sheet)["quantitative_analysis"]["performance_metrics"]
    by_slice = {(m["type"], m["slice"]): m for m in metrics}
    assert list(by_slice) == [("verified fraction (output_range)", "hue@1"), ("estimated fraction (output_range)", "hue@1"),
                              ("verified invariance", "light@0.3"),
                              ("verified accuracy", "pose@0.25"), ("verified accuracy", "pose@0.5"),
                              ("verified accuracy", "pose@2")]
    # certified bracket: [verified / n, (n - falsified) / n]
    assert by_slice[("verified accuracy", "pose@2")]["value"] == "0.25"
    assert by_slice[("verified accuracy", "pose@2")]["confidence_interval"] == {"lower_bound": "0.25",
                                                                                "upper_bound": "0.5"}
    assert by_slice[("verified accuracy", "pose@0.5")]["confidence_interval"] == {"lower_bound": "0.75",
                                                                                 "upper_bound": "1"}
    # an estimated result: its certified bracket as the verified metric (0 of 4 seeds verified), and
    # the sampling estimate with its interval as a metric of its own, never called verified
    hue = by_slice[("verified fraction (output_range)", "hue@1")]
    assert hue["value"] == "0" and hue["confidence_interval"] == {"lower_bound": "0", "upper_bound": "1"}
    hue = by_slice[("estimated fraction (output_range)", "hue@1")]
    assert hue["value"] == "0.9" and hue["confidence_interval"] == {"lower_bound": "0.8", "upper_bound": "0.95"}
    assert all(isinstance(m["value"], str) for m in metrics)  # MCT v0.0.2 types value as a string


def test_limitations_and_use_cases(sheet):
    card = exports.to_model_card(sheet)
    lim = card["considerations"]["limitations"]
    assert len(lim) == 1 and "along 'pose' at eps=2 is violated: 1/4 seeds verified, 2 falsified" in \
        lim[0]["description"]
    uses = card["considerations"]["use_cases"]
    assert len(uses) == 1 and "[-1.5, 2.25]" in uses[0]["description"]


def test_the_vendored_schema_really_checks(sheet):
    pytest.importorskip("jsonschema")
    card = exports.to_model_card(sheet)
    card["quantitative_analysis"]["performance_metrics"][0]["value"] = 0.5  # v0.0.2 wants a string
    with pytest.raises(schema.SheetValidationError, match="is not of type 'string'"):
        schema.validate_model_card(card)
    card = exports.to_model_card(sheet)
    card["unknown_section"] = {}
    with pytest.raises(schema.SheetValidationError, match="Additional properties"):
        schema.validate_model_card(card)


def test_write_model_card(sheet, tmp_path):
    path = exports.write_model_card(sheet, tmp_path / "cards" / "card.json", name="m")
    assert json.loads(path.read_text()) == exports.to_model_card(sheet, name="m")
    # a sheet on disk works the same
    src = tmp_path / "sheet.json"
    src.write_text(json.dumps(sheet))
    assert exports.to_model_card(src) == exports.to_model_card(sheet)


# ------------------------------------------------------------------------ Hugging Face model-index
def test_model_index(sheet):
    idx = exports.to_model_index(sheet, "org/glasses-head", task_type="image-classification",
                                 dataset_name="faces", dataset_type="org/faces")
    (entry,) = idx["model-index"]
    assert entry["name"] == "org/glasses-head"
    assert [r["dataset"]["name"] for r in entry["results"]] == ["faces (direction: hue)", "faces (direction: light)",
                                                              "faces (direction: pose)"]
    for r in entry["results"]:
        assert r["task"] == {"type": "image-classification"} and r["dataset"]["type"] == "org/faces"
        for m in r["metrics"]:
            assert set(m) == {"type", "value", "name", "verified", "args"} and m["verified"] is False
    pose = entry["results"][2]["metrics"]
    assert [(m["type"], m["value"], m["args"]["eps"]) for m in pose] == [
        ("verified_accuracy", 1.0, 0.25), ("verified_accuracy", 0.75, 0.5), ("verified_accuracy", 0.25, 2.0)]
    assert pose[2]["name"] == "verified accuracy along pose at eps=2" and pose[2]["args"]["verdict"] == "violated"


@pytest.mark.parametrize("use_pyyaml", [True, False])
def test_model_index_yaml_round_trips(sheet, use_pyyaml):
    text = exports.model_index_yaml(sheet, "m", use_pyyaml=use_pyyaml, task_type="tabular-classification")
    assert text.startswith("---\nmodel-index:\n") and text.endswith("---\n")
    assert yaml.safe_load(text.split("---\n")[1]) == exports.to_model_index(sheet, "m", task_type="tabular-classification")
    bare = exports.model_index_yaml(sheet, "m", front_matter=False, use_pyyaml=use_pyyaml,
                                   task_type="tabular-classification")
    assert yaml.safe_load(bare) == exports.to_model_index(sheet, "m", task_type="tabular-classification")


def test_hand_written_yaml_handles_awkward_values(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML absent: the built-in emitter is used
    data = {"plain": "text", "quote": 'say "hi": now', "colon: key": "x", "yes": "no", "newline": "a\nb",
            "unicode": "\u00e9\u2713", "empty_list": [], "empty_map": {}, "none": None, "flag": True,
            "floats": [0.5, 1e-05, 1e20, -2.0, float("inf")], "ints": [0, -3], "nested": [[1, 2], {"a": [{}]}],
            "num_string": "1.5", "true_string": "true"}
    text = exports.to_yaml(data)
    monkeypatch.undo()
    import yaml as real_yaml

    assert real_yaml.safe_load(text) == data


def test_write_model_index(sheet, tmp_path):
    task = dict(task_type="tabular-classification")
    expected = exports.to_model_index(sheet, "m", **task)
    md = exports.write_model_index(sheet, tmp_path / "README.md", "m", **task)
    assert md.read_text().startswith("---\nmodel-index:")
    assert yaml.safe_load(md.read_text().split("---\n")[1]) == expected
    y = exports.write_model_index(sheet, tmp_path / "index.yaml", "m", **task)
    assert yaml.safe_load(y.read_text()) == expected
    j = exports.write_model_index(sheet, tmp_path / "index.json", "m", **task)  # JSON in a .json name
    assert json.loads(j.read_text()) == expected
    with pytest.raises(ValueError, match=r"say the format by the file name: \.json \(JSON\)"):
        exports.write_model_index(sheet, tmp_path / "index.txt", "m", **task)
    assert not (tmp_path / "index.txt").exists()


def test_model_index_needs_a_task_type(sheet, tmp_path):
    """No guessed task (it used to be image-classification for every model)."""
    for call in (lambda: exports.to_model_index(sheet, "m"), lambda: exports.model_index_yaml(sheet, "m"),
                 lambda: exports.write_model_index(sheet, tmp_path / "README.md", "m")):
        with pytest.raises(ValueError, match="needs the model's task type"):
            call()
    assert not (tmp_path / "README.md").exists()
    tasks = {r["task"]["type"] for r in exports.to_model_index(sheet, task_type="audio-classification")
             ["model-index"][0]["results"]}
    assert tasks == {"audio-classification"}


def test_certified_radius_metrics(sheet):
    del sheet["directions"]  # rebuilt from the records, which carry their certified-radius summaries
    sheet["tests"][0]["certified_radius"] = {"eps_max": 1.0, "mean": 0.7, "histogram": {"edges": [0, 1], "counts": [4]},
                                             "quantiles": {"min": 0.5, "median": 0.75, "max": 0.9}}
    metrics = exports.to_model_card(sheet)["quantitative_analysis"]["performance_metrics"]
    assert metrics[-1] == {"type": "median certified radius", "value": "0.75", "slice": "pose"}
    if pytest.importorskip("jsonschema"):
        schema.validate_model_card(exports.to_model_card(sheet))
    pose = exports.to_model_index(sheet, "m", task_type="tabular-classification")["model-index"][0]["results"][2]
    assert pose["metrics"][-1]["type"] == "median_certified_radius" and pose["metrics"][-1]["value"] == 0.75
    assert pose["metrics"][-1]["args"] == {"direction": "pose", "eps_max": 1.0, "test": "t.py::test_pose"}

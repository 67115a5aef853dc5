"""The plugin's own hooks: a conftest registers an engine and a falsifier by name, adds
fields to records and to the sheet, and exports another format; with and without xdist."""
import json
import textwrap

import pytest

from conftest import MODES, PROJECT_CONFTEST, mode_args, write_project

HOOKS = textwrap.dedent('''

    import json as _json
    from pytest_latentaudit.engines import falsify as _falsify
    from pytest_latentaudit.engines.bounds import spec_upper_bound as _sub
    from pytest_latentaudit.engines.graph import trace as _trace


    def _interval_engine(model, problem, notes):
        """A custom engine: plain interval bounds through the native graph (sound)."""
        graph = _trace(model, problem.input_shape)

        def bound_fn(idx, tl, tu, C, d):
            c, G = problem.center_gens(idx, tl, tu)
            return _sub(graph, c, G, C, d, method="ibp")
        notes.append("custom interval engine")
        return bound_fn


    def _corner_falsifier(problem, idx, tl, tu, **kw):
        """A custom falsifier: the box corners only (k = 1), re-checked like any other."""
        found = _falsify.attack(problem, idx, tl, tu, steps=0, restarts=1)
        return found


    def pytest_latentaudit_engines():
        return {"intervals": _interval_engine}


    def pytest_latentaudit_falsifiers():
        return {"corners": _corner_falsifier}


    def pytest_latentaudit_record(record, item):
        record["owner"] = "team-vision:" + item.name


    def pytest_latentaudit_sheet(sheet, config):
        sheet["model_card_url"] = "https://example.invalid/card"


    def pytest_latentaudit_export(sheet, path, config):
        out = config.rootpath / "export.txt"
        out.write_text("\\n".join(f"{t['nodeid']} {t['verdict']}" for t in sheet["tests"]))
''')

TESTS = textwrap.dedent('''
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="light", eps=0.5, spec=Accuracy(), engine="intervals")
    def test_custom_engine(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="pose", eps=3.0, spec=Accuracy(at_least=0.5), engine="falsify",
                        attack="corners")
    def test_custom_falsifier(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="pose", eps=0.1, spec=Accuracy(), engine="nope")
    def test_unknown_engine(latent_audit, head, seeds):
        latent_audit(head, seeds)
''')


@pytest.mark.parametrize("mode", MODES)
def test_hooks_register_engines_falsifiers_fields_and_exporters(pytester, mode):
    write_project(pytester.path, {"test_hooks_use.py": TESTS}, conftest=PROJECT_CONFTEST + HOOKS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-spec-sheet", "sheet.json",
                                          *mode_args(mode))
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "unknown engine 'nope'" in out and "intervals" in out  # registered names are offered
    sheet = json.loads((pytester.path / "sheet.json").read_text())
    assert sheet["model_card_url"] == "https://example.invalid/card"
    recs = {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}
    eng = recs["test_custom_engine"]
    assert eng["engine"] == "intervals" and eng["verdict"] == "proved"
    assert eng["rungs"] == {"intervals": eng["n_seeds"]}
    assert "custom interval engine" in eng["notes"]
    assert eng["owner"] == "team-vision:test_custom_engine"
    fal = recs["test_custom_falsifier"]
    assert fal["verdict"] == "violated" and fal["counts"]["falsified"] > 0
    export = (pytester.path / "export.txt").read_text().splitlines()
    assert sorted(line.split()[1] for line in export) == ["proved", "violated"]


def test_cli_engine_may_name_a_registered_engine(pytester):
    write_project(pytester.path, {"test_hooks_use.py": TESTS}, conftest=PROJECT_CONFTEST + HOOKS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-engine", "intervals",
                                          "-k", "custom_falsifier")
    result.assert_outcomes(failed=1)  # violated whatever the engine
    assert "engine=intervals" in result.stdout.str()

"""Direction validity in the spec sheet: continuity and realism are recorded per test,
problems warn, and the deployable range never goes beyond the realism limit."""
import json
import re
import textwrap

import pytest

from conftest import MODES, mode_args

CONFTEST = textwrap.dedent('''
    import pytest, torch
    from torch import nn
    from pytest_latentaudit import Direction, LatentSpace

    @pytest.fixture(scope="session")
    def latent_space():
        torch.manual_seed(0)
        dec = nn.Sequential(nn.Linear(2, 16), nn.Sigmoid(), nn.Unflatten(1, (1, 4, 4))).eval()
        data = torch.randn(400, 2) * 0.3          # the data lives in a small blob
        return LatentSpace(decoder=dec, directions={"a": Direction.axis(0)}, data_latents=data)

    @pytest.fixture
    def head():
        lin = nn.Linear(2, 2)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))  # class = sign of z1 only
            lin.bias.zero_()
        return lin

    @pytest.fixture
    def seeds():
        z = torch.tensor([[0.0, 0.3], [0.1, -0.3], [-0.1, 0.25], [0.05, -0.2]])
        return z, (z[:, 1] < 0).long()
''')

TESTS = textwrap.dedent('''
    import pytest
    from pytest_latentaudit import Accuracy

    @pytest.mark.latent(direction="a", eps=0.1, spec=Accuracy())
    def test_small(latent_audit, head, seeds):
        latent_audit(head, seeds)

    @pytest.mark.latent(direction="a", eps=5.0, spec=Accuracy())
    def test_unrealistic(latent_audit, head, seeds):
        latent_audit(head, seeds)
''')


@pytest.mark.parametrize("mode", MODES)
def test_validity_is_recorded_and_caps_the_deployable_range(pytester, mode):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_v=TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-spec-sheet", "sheet.json",
                                          "-W", "always", *mode_args(mode))
    result.assert_outcomes(passed=2)  # both proved: the head ignores direction "a"
    out = result.stdout.str()
    assert "DirectionValidityWarning" in out and "beyond its realism limit" in out
    # attributed to the user's test (the latent_audit call), not to the plugin's code
    located = [line for line in result.outlines if "DirectionValidityWarning:" in line]
    assert located and all(re.search(r"test_v\.py:\d+: DirectionValidityWarning", line) for line in located), located
    sheet = json.loads((pytester.path / "sheet.json").read_text())
    recs = {r["nodeid"].split("::")[-1]: r for r in sheet["tests"]}
    assert recs["test_small"]["validity"]["ok"] is True
    assert recs["test_unrealistic"]["validity"]["ok"] is False
    real = recs["test_unrealistic"]["validity"]["realism"]
    assert 0.1 <= real["eps"] < 5.0
    d = sheet["directions"]["a"]
    assert d["realism_limit"] == pytest.approx(real["eps"])
    assert d["proved_eps"] == 5.0  # the proof stands ...
    assert d["latent_range"]["eps"] == 0.1  # ... but the deployable range stops where data ends
    assert any(g.get("beyond_realism") for g in d["ranges"] if g["eps"] == 5.0)


def test_show_reports_the_realism_cap(pytester, capsys):
    from pytest_latentaudit.cli import main

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_v=TESTS)
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-spec-sheet", "sheet.json")
    capsys.readouterr()  # only what `show` prints below
    assert main(["show", str(pytester.path / "sheet.json")]) == 0
    out = capsys.readouterr().out
    assert "a: proved up to eps=5" in out and "deployable range up to eps=0.1" in out


def test_direction_validity_warning_is_exported_without_torch():
    import subprocess
    import sys

    import pytest_latentaudit
    from pytest_latentaudit.toolkit import validity

    assert pytest_latentaudit.DirectionValidityWarning is validity.DirectionValidityWarning
    assert "DirectionValidityWarning" in pytest_latentaudit.__all__
    code = ("import sys; from pytest_latentaudit import DirectionValidityWarning, LatentAuditWarning; "
            "assert issubclass(DirectionValidityWarning, UserWarning); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_validity_of_a_test_is_measured_on_its_own_seeds(pytester):
    """Two tests along one direction and eps with other seeds: the second must not record the
    first's checks (the realism limit is measured around the seeds), or what it records would
    depend on which test a process ran first: a serial run and an xdist run would differ."""
    from conftest import PROJECT_CONFTEST, write_project

    write_project(pytester.path, {"test_v.py": '''
        import pytest, torch
        from pytest_latentaudit import Invariance

        @pytest.mark.latent(direction="light", eps=0.5, spec=Invariance(), radius=False)
        def test_a(latent_audit, head, seeds):
            latent_audit(head, seeds)

        @pytest.mark.latent(direction="light", eps=0.5, spec=Invariance(), radius=False)
        def test_b(latent_audit, head):
            latent_audit(head, torch.tensor([[1.0, 5.0, 0.0], [1.2, 6.0, 0.3], [1.5, 7.0, 0.1], [1.1, 8.0, 0.1]]))
    '''}, PROJECT_CONFTEST)

    def validity_of_b(*args):
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--latent-spec-sheet", "sheet.json", *args)
        assert result.ret == 0, result.stdout.str()
        recs = {r["nodeid"].split("::")[-1]: r for r in json.loads((pytester.path / "sheet.json").read_text())["tests"]}
        return recs["test_b"]["validity"]

    together, alone = validity_of_b(), validity_of_b("-k", "test_b")
    assert together == alone

"""Hooks for conftest.py files and plugins (pluggy hookspecs, registered by the plugin).

Extension points, each with the same soundness rules as the built-in parts:

* engines: ``pytest_latentaudit_engines() -> {name: factory}``; ``factory(model, problem,
  notes)`` returns ``bound_fn(idx, tl, tu, C, d) -> upper [n, m]`` (a sound upper bound of
  every spec row ``C y + d`` on each sub-box ``x0[idx] + V t``, ``t in [tl, tu]``; see
  ``engines/lirpa_engine.py`` for a complete example) or None to fall back to falsification.
  The ladder still decides: a box is verified only when the bound is below the float
  margin, and falsification runs as for every engine. Use it with ``--latent-engine name``
  or ``@pytest.mark.latent(engine="name")``.
* falsifiers: ``pytest_latentaudit_falsifiers() -> {name: attack}`` with the signature of
  ``engines.falsify.attack``; its points are re-checked with a plain forward pass like
  any counterexample. Use it with ``@pytest.mark.latent(attack="name")``.
* ``pytest_latentaudit_record(record, item)``: add fields to one test's spec-sheet record
  (runs where the test runs: on the xdist worker; keep values JSON-serialisable). ``record``
  is a copy of the JSON form of a ``records.TestRecord``: added fields are kept
  (``TestRecord.extra``), notes may be appended and a ``pixel_crosscheck`` set; changing any
  other record field (the verdict, the counts, the range, ...: what the audit found) fails the
  test with a message naming the fields, and the sheet keeps the audit's own record.
* ``pytest_latentaudit_sheet(sheet, config)``: add fields to the whole sheet before it is
  written.
* ``pytest_latentaudit_export(sheet, path, config)``: write other formats after the sheet
  is written (``path`` is None when no ``--latent-spec-sheet`` was given).
"""
import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_latentaudit_engines():
    """Return ``{name: factory}`` of extra bound engines."""


@hookspec
def pytest_latentaudit_falsifiers():
    """Return ``{name: attack}`` of extra falsifiers."""


@hookspec
def pytest_latentaudit_record(record, item):
    """Add fields to the spec-sheet record of ``item`` (a dict; change it in place)."""


@hookspec
def pytest_latentaudit_sheet(sheet, config):
    """Add fields to the spec sheet (a dict; change it in place) before it is written."""


@hookspec
def pytest_latentaudit_export(sheet, path, config):
    """Export the finished spec sheet (a dict) in another format."""

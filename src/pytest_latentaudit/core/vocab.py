"""The project's vocabulary as constants: verdicts, per-seed statuses, evidence kinds, engine,
attack and device names, the one verdict ranking every comparison uses, and the one test-verdict
rule (``decide_verdict``, through ``reaches``: a fraction of seeds against ``at_least``).

Pure Python (no torch, no numpy): the plugin, the xdist controller, the CLI and the report
all import it, and so do ``api.py``, ``engines/stats.py``, ``sheet/guard.py`` and the engines (``engines/ladder.py``
re-exports ``ENGINES`` and the statuses under their old names); no other module spells them.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Iterable, Optional

# ------------------------------------------------------------------ test verdicts
PROVED, VIOLATED, UNPROVEN, ESTIMATED = "proved", "violated", "unproven", "estimated"
#: every test verdict, best first
VERDICTS = (PROVED, ESTIMATED, UNPROVEN, VIOLATED)
#: worse verdicts rank lower: violated < unproven < estimated < proved
VERDICT_RANK = {VIOLATED: 0, UNPROVEN: 1, ESTIMATED: 2, PROVED: 3}
#: a direction / coverage cell without tests (never a test's verdict)
UNTESTED = "untested"

# ------------------------------------------------------------------ per-seed statuses
VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"
STATUSES = (VERIFIED, FALSIFIED, UNKNOWN)

# ------------------------------------------------------------------ evidence of a verdict
EXACT = "exact"
EVIDENCE = (PROVED, EXACT, ESTIMATED, VIOLATED, UNPROVEN)

# ------------------------------------------------------------------ names users pass
ENGINES = ("auto", "ibp", "linear", "bab", "exact", "falsify")
LIRPA_PREFIX = "auto_lirpa"
LIRPA_METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")
#: engines the certified-radius search cannot use (it needs our own ibp/linear bounds)
NO_RADIUS_ENGINES = ("falsify",)
ATTACKS = ("sign", "adam", "blackbox")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "float64")
UNPROVEN_ACTIONS = ("fail", "xfail", "skip")
ESTIMATED_ACTIONS = ("pass",) + UNPROVEN_ACTIONS
#: pytest outcomes a record may carry
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")


def verdict_rank(verdict: Optional[str]) -> int:
    """Rank of a verdict (higher is better); an unknown string ranks as ``unproven``."""
    return VERDICT_RANK.get(verdict, VERDICT_RANK[UNPROVEN])  # type: ignore[arg-type]


def is_worse(new: Optional[str], old: Optional[str]) -> bool:
    """True when verdict ``new`` is a regression from ``old``."""
    return verdict_rank(new) < verdict_rank(old)


def worst(verdicts: Iterable[str]) -> Optional[str]:
    """The worst of ``verdicts`` (None for none)."""
    vs = list(verdicts)
    return min(vs, key=verdict_rank) if vs else None


# ------------------------------------------------------------------ the test verdict
#: how many units in the last place of ``at_least`` a fraction may fall short of it and still
#: reach it: the threshold as the user computed it (``1 - 1/3`` is 1 ulp above ``2/3``)
AT_LEAST_ULPS = 4


def reaches(count: int, n: int, at_least: float) -> bool:
    """THE threshold comparison: ``count / n >= at_least``, exact (in rationals), with
    ``at_least`` read to within ``AT_LEAST_ULPS`` units in its last place. Never a float
    tolerance wider than that: a fraction below the threshold by more is below it."""
    q = float(at_least)
    if n <= 0:
        return True
    return Fraction(int(count), int(n)) >= Fraction(q) - AT_LEAST_ULPS * Fraction(math.ulp(q))


def decide_verdict(n: int, verified: int, falsified: int, at_least: float) -> str:
    """The test verdict over ``n`` seeds: ``proved`` if the verified fraction reaches
    ``at_least``; ``violated`` if even with every unknown seed fine the falsified ones push the
    fraction below it; else ``unproven`` (``reaches`` is the comparison). No seeds: ``proved``."""
    if n == 0 or reaches(verified, n, at_least):
        return PROVED
    if not reaches(n - falsified, n, at_least):
        return VIOLATED
    return UNPROVEN


# ------------------------------------------------------------------ values users pass
def parse_budget(value) -> Optional[float]:
    """A time budget as seconds (a finite number > 0), or None for no limit (``None``, ``""``,
    ``"none"``, ``"inf"``, infinity); ``ValueError`` naming what was given otherwise. The
    plugin's option, the marker keyword and the API's ``budget_s`` all read it here."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "inf")):
        return None
    try:
        b = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"budget must be a number of seconds, got {value!r}") from None
    if b == float("inf"):
        return None
    if not b > 0:  # NaN too
        raise ValueError(f"budget must be a positive number of seconds, got {value!r}")
    return b

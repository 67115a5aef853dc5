"""The project's one error base class and its warning classes (no torch, no numpy).

Kept apart so that ``filterwarnings = error::pytest_latentaudit.DirectionValidityWarning`` and
``except pytest_latentaudit.LatentAuditError`` resolve without importing torch.
"""


class LatentAuditError(ValueError):
    """A usage error: the message says what to change."""


class LatentAuditWarning(UserWarning):
    """Something the plugin could not do, that does not change a verdict."""


class CounterexampleImageWarning(LatentAuditWarning):
    """A counterexample picture could not be saved (the test's verdict stands)."""


class CacheWarning(LatentAuditWarning):
    """A replay-cache entry was malformed (dropped) or could not be stored."""


class DirectionValidityWarning(UserWarning):
    """A direction failed a validity check: tests along it may not mean what they say.

    Defined here (no torch) so ``filterwarnings = error::pytest_latentaudit.DirectionValidityWarning``
    resolves without importing torch; ``pytest_latentaudit.toolkit.validity`` re-exports it."""

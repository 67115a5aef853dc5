"""pytest-latentaudit: semantic unit tests for neural networks.

Names are loaded lazily so that importing the package (and loading the pytest plugin)
does not import torch.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "verify_box": "api", "audit": "api", "BoxResult": "api", "AuditResult": "api", "Counterexample": "api",
    "LatentSpace": "core.latent", "Direction": "core.latent", "LatentAuditError": "core.errors",
    "Accuracy": "core.specs", "Invariance": "core.specs", "Prediction": "core.specs", "PredictionNotIn": "core.specs",
    "OutputRange": "core.specs", "Linear": "core.specs", "Spec": "core.specs", "ConfidentTargeted": "core.specs",
    "SpecSheet": "sheet.specsheet",
    # warnings (torch-free, for filterwarnings): what the plugin could not do, and direction validity
    "LatentAuditWarning": "core.errors", "CounterexampleImageWarning": "core.errors", "CacheWarning": "core.errors",
    "DirectionValidityWarning": "core.errors", "VacuousSpecWarning": "sheet.records",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'pytest_latentaudit' has no attribute {name!r}")
    # not cached in globals(): pytester's in-process runs drop submodules from sys.modules,
    # and a cached class would then differ from the one the plugin imports afresh
    return getattr(import_module(f"{__name__}.{mod}"), name)


def __dir__():
    return __all__

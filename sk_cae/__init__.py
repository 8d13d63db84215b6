"""Contrastive autoencoders that find one kind of outlier, the defect."""

from ._detector import ContrastiveAEDetector
from ._loss import ContrastiveLoss
from ._module import AutoEncoder
from ._net import ContrastiveAENet, NonFiniteLossError
from .metrics import defect_average_precision, defect_roc_auc

__version__ = "0.1.0"

# Submodules whose optional dependencies load only on first use, so that
# ``import sk_cae`` stays light while ``sk_cae.io.save`` still works.
_LAZY_SUBMODULES = ("datasets", "distributed", "io", "plotting")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AutoEncoder",
    "ContrastiveAEDetector",
    "ContrastiveAENet",
    "ContrastiveLoss",
    "NonFiniteLossError",
    "__version__",
    "defect_average_precision",
    "defect_roc_auc",
]

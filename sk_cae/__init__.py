"""Contrastive autoencoders that find one kind of outlier, the defect."""

from ._detector import ContrastiveAEDetector
from ._loss import ContrastiveLoss
from ._module import AutoEncoder
from ._net import ContrastiveAENet, NonFiniteLossError
from .metrics import defect_average_precision, defect_roc_auc

__version__ = "0.1.0"

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

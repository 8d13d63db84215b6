"""Row scores of a fitted autoencoder: reconstruction, latent and combined.

Every function here returns *anomaly* scores (higher = more defect-like); the
estimator negates them for scikit-learn's ``score_samples``.
"""

import numpy as np
import torch
from sklearn.neighbors import KDTree

from ._module import as_tensor

SCORE_METHODS = ("reconstruction", "latent", "combined")


def encode_rows(module, X, *, device="cpu", chunk_size=65536):
    """Return the per-row reconstruction error and the latent code of ``X``.

    ``X`` is read ``chunk_size`` rows at a time under ``torch.inference_mode``,
    so memory holds at most one chunk of intermediate tensors besides the
    outputs.

    Returns
    -------
    error : ndarray of shape (n_samples,), float64
        Mean squared reconstruction error of each row.
    latent : ndarray of shape (n_samples, latent_dim), float32
    """
    n_samples = X.shape[0]
    error = np.empty(n_samples, dtype=np.float64)
    latent = None
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n_samples, chunk_size):
                stop = min(start + chunk_size, n_samples)
                rows = as_tensor(X[start:stop]).to(device)
                reconstruction, code = module(rows)
                error[start:stop] = (
                    ((reconstruction - rows) ** 2).mean(dim=1).double().cpu().numpy()
                )
                if latent is None:
                    latent = np.empty((n_samples, code.shape[1]), dtype=np.float32)
                latent[start:stop] = code.float().cpu().numpy()
    finally:
        module.train(was_training)
    if latent is None:
        latent = np.empty((0, 0), dtype=np.float32)
    return error, latent


class LatentScorer:
    """Score latent codes by their position relative to main rows and defects.

    With labeled defects, the score of a row is ``d_main / (d_main +
    d_defect)``, where ``d_main`` is the mean distance to its ``n_neighbors``
    nearest main-group training rows and ``d_defect`` the distance to the
    nearest labeled defect. It lies in [0, 1]: near 0 inside the main group,
    near 1 next to a labeled defect, and about 0.5 for a row far from both,
    such as an outlier of another kind. Without labeled defects the score is
    ``d_main`` alone.

    Parameters
    ----------
    n_neighbors : int
        Number of main-group neighbours averaged in ``d_main``.
    """

    def __init__(self, n_neighbors):
        self.n_neighbors = n_neighbors

    def fit(self, latent_main, latent_defects):
        self.main_tree_ = KDTree(latent_main)
        self.n_main_ = len(latent_main)
        self.defect_tree_ = KDTree(latent_defects) if len(latent_defects) else None
        self.n_defects_ = len(latent_defects)
        return self

    def _main_distance(self, latent, exclude_self):
        skip = int(exclude_self and self.n_main_ > 1)
        k = min(self.n_neighbors, self.n_main_ - skip)
        distances, _ = self.main_tree_.query(latent, k=k + skip)
        return distances[:, skip:].mean(axis=1)

    def _defect_distance(self, latent, exclude_self):
        skip = int(exclude_self and self.n_defects_ > 1)
        distances, _ = self.defect_tree_.query(latent, k=1 + skip)
        return distances[:, skip]

    def score(self, latent, *, in_main=False, in_defects=False):
        """Return the latent anomaly score of every row of ``latent``.

        ``in_main`` (``in_defects``) says that the rows are the main-group
        (defect) reference rows themselves, so each row's own entry is left
        out of its neighbours.
        """
        d_main = self._main_distance(latent, exclude_self=in_main)
        if self.defect_tree_ is None:
            return d_main
        d_defect = self._defect_distance(latent, exclude_self=in_defects)
        return d_main / np.maximum(d_main + d_defect, np.finfo(np.float64).tiny)


class RobustScale:
    """Center by the median and divide by the interquartile range."""

    def fit(self, values):
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        self.center_ = median
        self.scale_ = q3 - q1 if q3 > q1 else 1.0
        return self

    def transform(self, values):
        return (values - self.center_) / self.scale_

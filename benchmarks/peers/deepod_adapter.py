"""Deep SAD and DevNet from deepod 0.4.1, wrapped as scikit-learn estimators.

deepod's detectors have no ``get_params`` or ``__sklearn_tags__``, so they
cannot be the last step of a scikit-learn ``Pipeline``. :class:`DeepODDetector`
stores the parameters, builds the deepod model in ``fit`` and follows
scikit-learn's outlier convention for ``score_samples``: higher means more
normal.

deepod 0.4.1's DevNet has a shape bug in its training step, which
:class:`FixedDevNet` repairs. Deep SAD is used as deepod ships it.
"""

import numpy as np
from deepod.models.tabular import DeepSAD, DevNet
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data


class FixedDevNet(DevNet):
    """deepod's DevNet with the deviation loss computed row by row.

    In deepod 0.4.1 the network returns predictions of shape ``(B, 1)`` while
    the labels have shape ``(B,)``, so ``(1 - y) * inlier_loss`` broadcasts to
    a ``(B, B)`` matrix. Its mean gives every row the same mix of the inlier
    and outlier loss, whatever that row's own label is, so the labeled
    anomalies pull no harder than the unlabeled rows. Flattening the
    predictions to ``(B,)`` restores the loss of Pang et al. (KDD 2019):
    ``|dev|`` for unlabeled rows and ``max(0, margin - dev)`` for labeled
    anomalies.
    """

    def training_forward(self, batch_x, net, criterion):
        features, labels = batch_x
        features = features.float().to(self.device)
        labels = labels.float().to(self.device)
        predictions = net(features).view(-1)
        return criterion(labels, predictions)


MODELS = {"deepsad": DeepSAD, "devnet": FixedDevNet}


class DeepODDetector(BaseEstimator):
    """Semi-supervised deepod detector with scikit-learn's estimator API.

    Parameters
    ----------
    model : {"deepsad", "devnet"}, default="deepsad"
        ``"deepsad"`` is deepod's ``DeepSAD`` and ``"devnet"`` is
        :class:`FixedDevNet`.
    epochs : int, default=100
        Number of training epochs; 100 is deepod's default.
    batch_size : int, default=64
        Mini-batch size; 64 is deepod's default.
    lr : float, default=1e-3
        Adam learning rate; 1e-3 is deepod's default.
    device : str, default="cpu"
        torch device. deepod's own default is ``"cuda"``.
    random_state : int, RandomState instance or None, default=None
        Seed for deepod. deepod seeds the global ``random``, NumPy and torch
        generators with it when the model is built in ``fit``.

    Attributes
    ----------
    model_ : deepod.core.base_model.BaseDeepAD
        The fitted deepod detector.
    """

    def __init__(
        self,
        model="deepsad",
        *,
        epochs=100,
        batch_size=64,
        lr=1e-3,
        device="cpu",
        random_state=None,
    ):
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.random_state = random_state

    def fit(self, X, y):
        """Fit the deepod model; ``y == 1`` marks the labeled anomalies."""
        if self.model not in MODELS:
            raise ValueError(
                f"model={self.model!r} is not supported; expected one of "
                f"{sorted(MODELS)}."
            )
        if y is None:
            raise ValueError(
                f"{self.model} is semi-supervised and needs y, with 1 for the "
                "labeled anomalies and 0 for every other row."
            )
        X, y = validate_data(self, X, y, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        n_labeled = int(np.sum(y == 1))
        if n_labeled == 0 or n_labeled == len(y):
            raise ValueError(
                f"y has {n_labeled} labeled anomalies in {len(y)} rows; "
                f"{self.model} needs at least one row with y == 1 and one with "
                "y == 0."
            )

        if isinstance(self.random_state, (int, np.integer)):
            seed = int(self.random_state)
        else:
            seed = int(check_random_state(self.random_state).randint(2**31 - 1))

        self.model_ = MODELS[self.model](
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            device=self.device,
            verbose=0,
            random_state=seed,
        )
        self.model_.fit(X, y)
        return self

    def score_samples(self, X):
        """Return the negated deepod anomaly score: higher means more normal."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return -np.asarray(self.model_.decision_function(X), dtype=np.float64)

"""``ContrastiveAEDetector``: the scikit-learn estimator."""

import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.metrics import average_precision_score
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import EarlyStopping
from skorch.dataset import ValidSplit

from ._defect_probability import DefectForest, DefectProbability
from ._explain import anomaly_contributions, check_baseline
from ._loss import ContrastiveLoss
from ._module import ACTIVATIONS, AutoEncoder
from ._net import ContrastiveAENet
from ._scores import (
    SCORE_METHODS,
    LatentScorer,
    RobustScale,
    encode_rows,
    score_rows,
)
from ._thresholds import (
    check_target,
    choose_threshold,
    contamination_threshold,
    defect_rows,
    label_vector,
)
from ._validation import (
    check_finite_scores,
    check_training_settings,
    check_X,
    count_missing_labels,
    restore_state_on_error,
    sorted_labels,
)

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

# Main-group rows kept as latent neighbours for the latent score; more rows
# cost memory and query time without changing the score much.
MAX_REFERENCE_ROWS = 10_000


def _denormals_flushed():
    """Return True if float32 denormals are currently flushed to zero."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    return bool((tiny * 1.0)[0] == 0)


@contextmanager
def flush_denormals():
    """Flush float32 denormals to zero inside the block.

    A saturated ``tanh`` latent produces denormal gradients, which are
    30-60 times slower to compute on x86 CPUs. The caller's setting is
    restored on exit.
    """
    was_flushed = _denormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not was_flushed:
            torch.set_flush_denormal(False)


class ContrastiveAEDetector(OutlierMixin, BaseEstimator):
    """Autoencoder detector that ranks one kind of outlier, the defect, first.

    The detector trains a fully connected autoencoder with a contrastive loss:
    the reconstruction error of the main group (every row not labeled as a
    defect), minus a bounded distance between main-group rows and labeled
    defects, plus the spread of the main group, both measured in the latent
    space. The autoencoder thus learns the normal data, is shown what it must
    not learn, and places the defects apart from the main group. Rows are
    then scored by where their latent code lies relative to the main group and
    to the labeled defects, so that unseen defects rank above other, harmless
    outliers, which a plain autoencoder cannot tell apart.

    With ``y=None`` (or no row equal to ``defect_label``) the detector is a
    plain autoencoder scored by reconstruction error.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(64, 32)
        Widths of the encoder's hidden layers, from the input inwards. The
        decoder mirrors them.

    latent_dim : int, default=8
        Width of the latent code.

    activation : {"relu", "leaky_relu", "elu", "gelu", "tanh"}, default="relu"
        Non-linearity after each hidden layer.

    dropout : float, default=0.0
        Dropout probability after each hidden layer, in [0, 1).

    contrast : {"hinge", "squared"}, default="hinge"
        Form of the repulsion between main group and defects. ``"hinge"``
        pushes every defect at least ``margin`` away from every main-group
        row and then stops. ``"squared"`` is the literal negative mean squared
        distance, made bounded by a ``tanh`` latent and a cap of ``4 *
        margin**2``. See :class:`ContrastiveLoss`.

    contrast_space : {"latent", "output"}, default="latent"
        Where the repulsion and compactness distances are measured: on the
        latent code, so that reorganising it costs no reconstruction quality,
        or on the reconstruction.

    repulsion_weight : float, default=0.1
        Weight of the repulsion term, >= 0.

    compactness_weight : float, default=0.1
        Weight of the compactness term (the mean squared distance between two
        main-group rows), >= 0.

    margin : float, default=1.0
        Hinge margin in root mean squared distance per latent coordinate, > 0.

    score_method : {"auto", "reconstruction", "latent", "combined", "hybrid", \
"hybrid_logistic"}, default="auto"
        How rows are scored. ``"reconstruction"``: mean squared reconstruction
        error. ``"latent"``: ``d_main / (d_main + d_defect)``, with ``d_main``
        the mean latent distance to the ``n_neighbors`` nearest main-group
        training rows and ``d_defect`` the distance to the nearest labeled
        defect (``d_main`` alone without defects). ``"combined"``: the sum of
        the reconstruction and latent scores after each is centered on the
        median and divided by the interquartile range of the main group's
        training scores. ``"hybrid"``: the mean of the latent score and the
        same ratio computed on the input rows themselves, which keeps the
        neighbourhoods that the encoder may have merged.
        ``"hybrid_logistic"``: the mean of two parts. One is the hybrid score,
        with ``d_main`` in both spaces multiplied by ``min(1, s_typical /
        s_local)``, where ``s_local`` is the spacing of the main-group input
        rows around the row and ``s_typical`` their median spacing (the idea
        of the local outlier factor). Unlabeled outliers of another kind form
        sparse groups of their own among the training rows, and new rows
        inside such a group then do not look like defects. The other part is
        a defect probability from the input rows: the mean of a logistic
        regression's and a random forest's, both fitted on the labeled
        defects against the main group. The forest finds defects that differ
        from normal rows in a few features at once. ``"auto"`` is
        ``"hybrid_logistic"`` when defects are labeled and
        ``"reconstruction"`` otherwise; the benchmark notes give the
        measurements behind it.

    n_neighbors : int, default=5
        Number of main-group neighbours of the neighbour scores, in the
        latent space and, for the hybrid scores, in the input space.

    contamination : "auto" or float, default="auto"
        Sets ``offset_``, the threshold of :meth:`predict`. A float in
        (0, 0.5] flags that fraction of the training rows, each scored
        without itself as a neighbour, and so about that fraction of new rows
        like them. ``predict`` on the training rows themselves flags fewer
        with the neighbour scores, because there each row is its own nearest
        neighbour. ``"auto"`` puts the
        threshold at the 99th percentile of the main group's training
        anomaly scores or, when the median anomaly score of the labeled
        defects is higher, halfway between the two. Training rows are scored
        without themselves as neighbours. Above 10,000 main-group rows, these
        percentiles are estimated from the random sample of 10,000 that the
        neighbour scores keep. :meth:`set_threshold` moves the threshold after
        fitting.

    defect_label : int, float, str or bool, default=1
        Value of ``y`` that marks a labeled defect. Every other value marks
        the main group (normal or unlabeled rows).

    max_epochs : int, default=100
        Number of passes over the main group.

    batch_size : int, default=128
        Main-group rows per optimisation step. Each step also sees
        ``min(n_defects, batch_size)`` labeled defects.

    lr : float, default=1e-3
        Learning rate.

    optimizer : {"adam", "adamw", "sgd"} or torch optimizer class, \
default="adam"
        Optimizer.

    weight_decay : float, default=0.0
        L2 penalty passed to the optimizer.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the rows, stratified by the defect
        labels, and stop when the validation loss has not improved for
        ``n_iter_no_change`` epochs, keeping the best weights.

    validation_fraction : float, default=0.1
        Share of rows held out when ``early_stopping=True``, in (0, 1).

    n_iter_no_change : int, default=10
        Patience of early stopping, in epochs.

    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks, as ``(name, callback)`` pairs or callbacks.
        skorch's ``Checkpoint`` and ``LoadInitState`` make a long fit
        resumable after the process dies.

    on_interrupt : {"raise", "keep"}, default="raise"
        What :meth:`fit` does when a ``KeyboardInterrupt`` (Ctrl-C, or a
        callback other than skorch's ``EarlyStopping`` raising it) ends
        training. ``"raise"`` re-raises it and leaves the detector as it was
        before ``fit``, so an interrupted fit never passes for a finished one.
        ``"keep"`` warns and finishes ``fit`` with the partially trained
        autoencoder, as skorch's ``NeuralNet.fit`` does.

    device : str, default="cpu"
        Torch device, such as ``"cpu"`` or ``"cuda"``.

    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, batch order, dropout and the validation
        split. The caller's global NumPy and torch random states are left
        unchanged.

    verbose : int, default=0
        With ``verbose > 0``, skorch prints one line per epoch with every loss
        component.

    Attributes
    ----------
    net_ : ContrastiveAENet
        The fitted skorch net. ``net_.module_`` is the autoencoder and
        ``net_.history`` records the loss and its components per epoch.

    offset_ : float
        Threshold subtracted from :meth:`score_samples` by
        :meth:`decision_function`.

    n_defects_ : int
        Number of labeled defects used in training.

    score_method_ : str
        The scoring rule in use, with ``"auto"`` resolved.

    n_features_in_ : int
        Number of features seen during :meth:`fit`.

    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Names of features seen during :meth:`fit`, when ``X`` has string
        column names.

    See Also
    --------
    ContrastiveLoss : The training criterion, usable in any skorch net.
    sklearn.ensemble.IsolationForest : Unsupervised detector with the same
        interface.

    Notes
    -----
    Scale the input (for example with ``StandardScaler`` in a ``Pipeline``):
    the reconstruction error weighs every feature equally and an unscaled
    feature can make training diverge.

    The loss is bounded below in every form and no sum over pairs costs more
    than O(batch_size * min(n_defects, batch_size)) per step. Training flushes
    float32 denormals to zero, restoring the caller's setting afterwards.

    A defect kind with no labeled example is scored only through ``d_main``
    (it lies far from the main group but also far from the labeled defects),
    so it ranks with the other outliers rather than above them.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_cae import ContrastiveAEDetector
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(size=(200, 4)), rng.normal(4, 1, size=(10, 4))])
    >>> y = np.r_[np.zeros(200), np.ones(10)]
    >>> detector = ContrastiveAEDetector(max_epochs=5, random_state=0).fit(X, y)
    >>> detector.predict([[4.0, 4.0, 4.0, 4.0]])
    array([-1])
    """

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like"],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "contrast": [StrOptions({"hinge", "squared"})],
        "contrast_space": [StrOptions({"latent", "output"})],
        "repulsion_weight": [Interval(Real, 0, None, closed="left")],
        "compactness_weight": [Interval(Real, 0, None, closed="left")],
        "margin": [Interval(Real, 0, None, closed="neither")],
        "score_method": [StrOptions({"auto", *SCORE_METHODS})],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "contamination": [
            StrOptions({"auto"}),
            Interval(Real, 0, 0.5, closed="right"),
        ],
        "defect_label": [Integral, Real, str, "boolean"],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "callbacks": [list, None],
        "on_interrupt": [StrOptions({"raise", "keep"})],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        hidden_layer_sizes=(64, 32),
        latent_dim=8,
        activation="relu",
        dropout=0.0,
        contrast="hinge",
        contrast_space="latent",
        repulsion_weight=0.1,
        compactness_weight=0.1,
        margin=1.0,
        score_method="auto",
        n_neighbors=5,
        contamination="auto",
        defect_label=1,
        max_epochs=100,
        batch_size=128,
        lr=1e-3,
        optimizer="adam",
        weight_decay=0.0,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        callbacks=None,
        on_interrupt="raise",
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.latent_dim = latent_dim
        self.activation = activation
        self.dropout = dropout
        self.contrast = contrast
        self.contrast_space = contrast_space
        self.repulsion_weight = repulsion_weight
        self.compactness_weight = compactness_weight
        self.margin = margin
        self.score_method = score_method
        self.n_neighbors = n_neighbors
        self.contamination = contamination
        self.defect_label = defect_label
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.callbacks = callbacks
        self.on_interrupt = on_interrupt
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Sparse X is densified, up to a size limit (see fit).
        tags.input_tags.sparse = True
        return tags

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    @restore_state_on_error
    def fit(self, X, y=None):
        """Train the autoencoder and set the threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows, numeric and finite. Absolute values above about
            1.8e19 (the square root of the largest float32) are rejected;
            values far below that can still overflow inside the network
            (1e18 does at the first step, raising ``NonFiniteLossError``), so
            scale X to a few units, for example with ``StandardScaler``. pandas
            DataFrames are accepted and their column names recorded. A
            sparse matrix is densified if the dense float32 copy takes at
            most 1 GiB.

        y : array-like of shape (n_samples,), default=None
            Defect labels: rows equal to ``defect_label`` are known defects,
            every other row belongs to the main group. ``None`` trains a
            plain autoencoder.

        Returns
        -------
        self : ContrastiveAEDetector
            The fitted detector.

        Raises
        ------
        KeyboardInterrupt
            When training is interrupted and ``on_interrupt="raise"``. Any
            exception leaves the detector as it was before the call.
        """
        X = check_X(self, X, fitting=True)
        is_defect = self._defect_mask(y, n_samples=X.shape[0])
        hidden_layer_sizes = self._check_hidden_layer_sizes()
        check_training_settings(self, X.shape[0], int(is_defect.sum()))

        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        net = self._build_net(X.shape[1], hidden_layer_sizes, is_defect, seed)
        with self._seeded(seed), flush_denormals():
            net.fit(X, is_defect.astype(np.float32))
        if net.interrupted_:
            self._on_interrupted_training(net)
        # Scoring runs in eval mode. Leaving the module there keeps concurrent
        # score_samples calls from switching dropout back on for each other.
        net.module_.eval()

        # Only the reference rows and the labeled defects are encoded: the
        # neighbour scores measure distances to them, and the threshold is
        # estimated from their scores.
        reference = self._reference_rows(is_defect, seed)
        rows = np.concatenate([reference, np.flatnonzero(is_defect)])
        X_rows = X[rows]
        error, latent = encode_rows(net.module_, X_rows, device=net.device)
        is_defect_row = np.arange(len(rows)) >= len(reference)
        main_weight = (X.shape[0] - is_defect.sum()) / max(len(reference), 1)
        self._reference_index = reference
        self._fit_scores(X_rows, error, latent, is_defect_row, main_weight, seed)
        # The default starting row of the integrated gradients in
        # feature_contributions: a typical main-group row.
        self._feature_baseline = np.median(X_rows[~is_defect_row], axis=0)

        self.net_ = net
        self.n_defects_ = int(is_defect.sum())
        self.offset_ = self._offset(
            X_rows, error, latent, is_defect_row, main_weight, seed
        )
        return self

    def _check_hidden_layer_sizes(self):
        sizes = np.asarray(self.hidden_layer_sizes)
        is_valid = sizes.ndim <= 1 and sizes.dtype.kind in "iu" and (sizes >= 1).all()
        if sizes.size and not is_valid:
            raise ValueError(
                "hidden_layer_sizes must contain positive integers, got "
                f"{self.hidden_layer_sizes!r}; pass a flat sequence such as (64, 32)."
            )
        return tuple(int(size) for size in sizes.reshape(-1))

    def _defect_mask(self, y, n_samples):
        """Turn ``y`` into a boolean defect mask, with checks and warnings.

        The warnings use ``stacklevel=5`` to point at the caller of ``fit``,
        past ``fit`` and its two wrappers.
        """
        if y is None:
            return np.zeros(n_samples, dtype=bool)
        y = label_vector(y, n_samples)
        if y.dtype.kind == "f" and np.isnan(y).any():
            raise ValueError(
                f"y contains {int(np.isnan(y).sum())} NaN values; label every "
                f"row, with defect_label={self.defect_label!r} for known "
                "defects and any other value for the rest."
            )
        n_missing = count_missing_labels(y)
        if n_missing:
            raise ValueError(
                f"y contains {n_missing} missing labels (None, NaN or pandas.NA); "
                f"label every row, with defect_label={self.defect_label!r} for "
                "known defects and any other value for the rest."
            )
        is_defect = y == self.defect_label
        n_defects = int(is_defect.sum())
        labels = sorted_labels(y)

        if n_defects == n_samples:
            raise ValueError(
                f"Every row of y equals defect_label={self.defect_label!r}, so "
                "there is no main group to learn. Label at least the normal "
                "rows with another value."
            )
        if n_defects == 0:
            warnings.warn(
                f"y contains no row equal to defect_label={self.defect_label!r} "
                f"(labels found: {labels.tolist()[:10]}); training a plain "
                "autoencoder without contrast.",
                UserWarning,
                stacklevel=5,
            )
        elif set(labels.tolist()) == {-1, 1} and self.defect_label == 1:
            warnings.warn(
                "y contains only -1 and 1. With defect_label=1 the rows labeled "
                "1 are the defects; if y follows scikit-learn's outlier "
                "convention (-1 = outlier), pass defect_label=-1.",
                UserWarning,
                stacklevel=5,
            )
        elif n_defects > n_samples / 2:
            warnings.warn(
                f"{n_defects} of {n_samples} rows equal "
                f"defect_label={self.defect_label!r}, so the labeled defects are "
                "the majority; check that defect_label marks the defects.",
                UserWarning,
                stacklevel=5,
            )
        return is_defect

    def _build_net(self, n_features, hidden_layer_sizes, is_defect, seed):
        n_defects = int(is_defect.sum())
        callbacks = list(self.callbacks or [])
        train_split = None
        if self.early_stopping:
            stratified = n_defects >= 2 and (len(is_defect) - n_defects) >= 2
            train_split = ValidSplit(
                self.validation_fraction, stratified=stratified, random_state=seed
            )
            callbacks.append(
                (
                    "early_stopping",
                    EarlyStopping(patience=self.n_iter_no_change, load_best=True),
                )
            )
        optimizer = self.optimizer
        if isinstance(optimizer, str):
            optimizer = OPTIMIZERS[optimizer]
        return ContrastiveAENet(
            AutoEncoder,
            module__n_features=n_features,
            module__hidden_layer_sizes=hidden_layer_sizes,
            module__latent_dim=self.latent_dim,
            module__activation=self.activation,
            module__dropout=self.dropout,
            module__bounded_latent=self.contrast == "squared",
            criterion=ContrastiveLoss,
            criterion__contrast=self.contrast,
            criterion__space=self.contrast_space,
            criterion__repulsion_weight=self.repulsion_weight,
            criterion__compactness_weight=self.compactness_weight,
            criterion__margin=self.margin,
            optimizer=optimizer,
            optimizer__weight_decay=self.weight_decay,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            train_split=train_split,
            callbacks=callbacks,
            device=self.device,
            verbose=self.verbose,
        )

    @contextmanager
    def _seeded(self, seed):
        """Seed torch inside the block and restore the caller's torch state."""
        devices = []
        if torch.device(self.device).type == "cuda" and torch.cuda.is_available():
            devices = list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def _on_interrupted_training(self, net):
        """Re-raise or report a ``KeyboardInterrupt`` that skorch caught."""
        stopped = (
            f"Training was interrupted during epoch {len(net.history)} of "
            f"{net.max_epochs}"
        )
        if self.on_interrupt == "raise":
            raise KeyboardInterrupt(
                f"{stopped}; the detector is left as it was before fit. Pass "
                "on_interrupt='keep' to keep a partially trained model."
            )
        warnings.warn(
            f"{stopped}; keeping the partially trained model, as "
            "on_interrupt='keep' requests.",
            UserWarning,
            stacklevel=5,
        )

    # --------------------------------------------------------------- scores

    def _reference_rows(self, is_defect, seed):
        """Return the sorted indices of the main-group rows kept as neighbours:
        all of them, or a random sample of ``MAX_REFERENCE_ROWS``."""
        main_index = np.flatnonzero(~is_defect)
        if len(main_index) <= MAX_REFERENCE_ROWS:
            return main_index
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(main_index, MAX_REFERENCE_ROWS, replace=False))

    def _fit_scores(self, X, error, latent, is_defect, main_weight, seed):
        """Fit the neighbour scorers, the defect probability and the scales of
        the combined score on the reference rows and the labeled defects
        (``is_defect``). ``main_weight`` is the number of training rows that
        each reference row stands for, and ``seed`` seeds the forest."""
        self.score_method_ = self.score_method
        if self.score_method == "auto":
            self.score_method_ = (
                "hybrid_logistic" if is_defect.any() else "reconstruction"
            )

        is_main = ~is_defect
        self._latent_scorer = LatentScorer(self.n_neighbors).fit(
            latent[is_main], latent[is_defect]
        )
        # The hybrid scores repeat the neighbour ratio on the input rows, so
        # they keep the reference rows' input values as well.
        self._input_scorer = None
        self._defect_probability = None
        self._defect_forest = None
        if self.score_method_ in ("hybrid", "hybrid_logistic"):
            self._input_scorer = LatentScorer(
                self.n_neighbors, local_scale=self.score_method_ == "hybrid_logistic"
            ).fit(X[is_main], X[is_defect])
        if self.score_method_ == "hybrid_logistic" and is_defect.any():
            self._defect_probability = DefectProbability().fit(
                X[is_main], X[is_defect], main_weight=main_weight
            )
            self._defect_forest = DefectForest(seed).fit(X[is_main], X[is_defect])
        latent_main = self._latent_scorer.score(latent[is_main], in_main=True)
        self._error_scale = RobustScale().fit(error[is_main])
        self._latent_scale = RobustScale().fit(latent_main)

    def _anomaly(
        self,
        error,
        latent,
        X=None,
        *,
        in_main=False,
        in_defects=False,
        probability=None,
    ):
        """Combine reconstruction error, latent code and, for the hybrid
        scores, the input rows ``X`` into anomaly scores. ``probability``
        replaces the defect probabilities of ``X`` where given."""
        if self.score_method_ == "reconstruction":
            return error
        if self.score_method_ in ("hybrid", "hybrid_logistic"):
            # With hybrid_logistic, the input rows' local factor also
            # forgives the latent distance: the training compacts the main
            # group in the latent space, which hides its sparse parts there.
            input_score, factor = self._input_scorer.score(
                X, in_main=in_main, in_defects=in_defects, return_factor=True
            )
            latent_score = self._latent_scorer.score(
                latent, in_main=in_main, in_defects=in_defects, local_factor=factor
            )
            anomaly = (latent_score + input_score) / 2
        else:
            latent_score = self._latent_scorer.score(
                latent, in_main=in_main, in_defects=in_defects
            )
            if self.score_method_ == "latent":
                return latent_score
            return self._error_scale.transform(error) + self._latent_scale.transform(
                latent_score
            )
        if self._defect_probability is None:
            return anomaly
        if probability is None:
            probability = self._defect_probabilities(X)
        return (anomaly + probability) / 2

    def _defect_probabilities(self, X):
        """Return the defect probability of the rows ``X`` in the
        ``"hybrid_logistic"`` score: the mean of the logistic regression's
        and the random forest's."""
        probability = self._defect_probability.probability(X)
        if self._defect_forest is None:
            return probability
        return (probability + self._defect_forest.probability(X)) / 2

    def _training_anomaly(self, X, error, latent, is_defect, main_weight, seed):
        """Score the reference rows and the labeled defects, each without
        itself as a neighbour and with a defect probability from a model
        that did not see it."""
        probability = None
        if self._defect_probability is not None:
            parts = [
                self._defect_probability.out_of_fold(
                    X[~is_defect], X[is_defect], main_weight=main_weight, seed=seed
                )
            ]
            if self._defect_forest is not None:
                parts.append(
                    self._defect_forest.out_of_bag(X[~is_defect], X[is_defect])
                )
            probability = np.empty(len(error))
            probability[~is_defect] = np.mean([main for main, _ in parts], axis=0)
            probability[is_defect] = np.mean([defect for _, defect in parts], axis=0)

        anomaly = np.empty(len(error), dtype=np.float64)
        for rows, in_main in ((~is_defect, True), (is_defect, False)):
            if rows.any():
                anomaly[rows] = self._anomaly(
                    error[rows],
                    latent[rows],
                    X[rows],
                    in_main=in_main,
                    in_defects=not in_main,
                    probability=None if probability is None else probability[rows],
                )
        return anomaly

    def _offset(self, X, error, latent, is_defect, main_weight, seed):
        anomaly = self._training_anomaly(X, error, latent, is_defect, main_weight, seed)
        return -contamination_threshold(
            anomaly, is_defect, self.contamination, main_weight=main_weight
        )

    def score_samples(self, X):
        """Return the normality score of each row: higher is more normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            The negated anomaly score of the ``score_method_`` rule.
        """
        check_is_fitted(self)
        X = check_X(self, X, fitting=False)
        with flush_denormals():
            scores = -score_rows(
                self.net_.module_, X, self._anomaly, device=self.net_.device
            )
        check_finite_scores(scores, X)
        return scores

    def decision_function(self, X):
        """Return ``score_samples(X) - offset_``: negative means defect.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """Return -1 for rows flagged as defects and +1 for the others.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        decision = self.decision_function(X)
        labels = np.ones(len(decision), dtype=int)
        labels[decision < 0] = -1
        return labels

    def fit_predict(self, X, y=None):
        """Fit on ``X`` with the defect labels ``y`` and return
        :meth:`predict` of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Defect labels, as in :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            -1 for rows flagged as defects, +1 for the others.
        """
        return self.fit(X, y).predict(X)

    def score(self, X, y):
        """Return the average precision of finding the rows with
        ``y == defect_label``, ranked by :meth:`score_samples` (lowest first).

        This makes ``GridSearchCV(detector, grid)`` tune for defect detection
        without a ``scoring`` argument.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels, with ``defect_label`` marking defects.

        Returns
        -------
        score : float
        """
        if y is None:
            raise ValueError(
                "score needs the labels y to compute the defect average "
                "precision; got y=None."
            )
        is_defect = np.asarray(y).reshape(-1) == self.defect_label
        if not is_defect.any():
            raise ValueError(
                f"y contains no row equal to defect_label={self.defect_label!r}, "
                "so the defect average precision is undefined. In "
                "cross-validation, use StratifiedKFold on the defect labels so "
                "that every test fold holds defects."
            )
        return float(average_precision_score(is_defect, -self.score_samples(X)))

    def set_threshold(
        self, X, y=None, *, recall=None, false_alarm_rate=None, contamination=None
    ):
        """Move the threshold ``offset_`` to meet one target on trusted rows.

        The model is not refitted: the rows of ``X`` are scored by
        :meth:`score_samples` and ``offset_`` is set from their scores, so
        :meth:`decision_function` and :meth:`predict` follow the new
        threshold. Give exactly one target:

        - ``recall``: flag at least this fraction of the rows with
          ``y == defect_label``, with the highest threshold that does so
          (the fewest alarms);
        - ``false_alarm_rate``: flag at most this fraction of the normal rows
          (every row when ``y`` is None, otherwise the rows with
          ``y != defect_label``), with the lowest threshold that does so
          (the most sensitive);
        - ``contamination``: the rule of the ``contamination`` parameter
          applied to these rows. A float flags that fraction of all rows.
          ``"auto"`` takes the 99th percentile of the normal rows' anomaly
          scores or, when the median anomaly score of the labeled defects is
          higher, the point halfway between the two.

        For ``recall`` and ``false_alarm_rate`` the threshold lies halfway
        between the last flagged score and the next unflagged one, so any
        threshold in between flags the same rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows not used in training, such as a validation set. Training
            rows are scored here as new rows, with themselves among their
            latent neighbours, so they look more normal than they did in fit.
        y : array-like of shape (n_samples,), default=None
            Defect labels as in :meth:`fit`; needed for ``recall``.
        recall : float in (0, 1], default=None
            Smallest share of the labeled defects to flag.
        false_alarm_rate : float in [0, 1), default=None
            Largest share of the normal rows to flag.
        contamination : "auto" or float in (0, 0.5], default=None
            As the ``contamination`` parameter, on the rows of ``X``.

        Returns
        -------
        self : ContrastiveAEDetector
            The detector, with the new ``offset_``.
        """
        check_is_fitted(self)
        name, value = check_target(recall, false_alarm_rate, contamination)
        anomaly = -self.score_samples(X)
        is_defect = defect_rows(y, len(anomaly), self.defect_label)
        threshold = choose_threshold(
            anomaly, is_defect, y is not None, name, value, self.defect_label
        )
        self.offset_ = -threshold
        return self

    def feature_contributions(self, X, *, baseline=None, n_steps=50):
        """Split the anomaly score of each row among the features.

        The anomaly score is ``-score_samples(X)``. With
        ``score_method_="reconstruction"`` the contribution of a feature is
        its squared reconstruction error divided by ``n_features_in_``, so a
        row's contributions sum to its anomaly score. With the other scores
        they are the integrated gradients of the score, through the encoder,
        from ``baseline`` to the row, and sum to the row's anomaly score minus
        the baseline's. A positive contribution means
        that the feature moves the row towards the labeled defects (or,
        without labeled defects, away from the main group). The random
        forest of ``"hybrid_logistic"`` has no gradient: its part is split by
        moving the features from the baseline to the row one at a time, in
        16 random orders, and crediting each move with the change it causes
        (sampled Shapley values). With
        ``"hybrid_logistic"`` the sum is approximate: the local factor of
        ``d_main`` steps from one value to the next where a row's nearest
        main input rows change along the path, and the gradients do not see
        those steps (in the tests, the sums stayed
        within 20% of the largest score difference, and half of them within
        10%).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        baseline : array-like of shape (n_features,) or (n_samples, \
n_features), default=None
            Start of the integrated gradients' path, for one row or for each.
            None uses the per-feature median of the main-group training rows.
            Not used by the reconstruction score.

        n_steps : int, default=50
            Points of the midpoint rule along each path. More points bring the
            sum of a row's contributions closer to its score difference.

        Returns
        -------
        contributions : ndarray of shape (n_samples, n_features)
            For named columns: ``pandas.DataFrame(contributions,
            columns=detector.feature_names_in_)``.
        """
        check_is_fitted(self)
        X = check_X(self, X, fitting=False).astype(np.float32, copy=False)
        if (
            not isinstance(n_steps, Integral)
            or isinstance(n_steps, bool)
            or n_steps < 1
        ):
            raise ValueError(f"n_steps must be an integer >= 1; got {n_steps!r}.")
        baseline = check_baseline(baseline, self._feature_baseline, *X.shape)
        with flush_denormals():
            return anomaly_contributions(
                self.net_.module_,
                X,
                baseline,
                score_method=self.score_method_,
                latent_scorer=self._latent_scorer,
                error_scale=self._error_scale,
                latent_scale=self._latent_scale,
                n_steps=int(n_steps),
                input_scorer=self._input_scorer,
                defect_probability=self._defect_probability,
                defect_forest=self._defect_forest,
                device=self.net_.device,
            )

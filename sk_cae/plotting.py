"""Figures of a fitted detector, as scikit-learn-style display objects.

Each display is built with ``from_estimator``, from a fitted detector or a
``Pipeline`` that ends in one, or from precomputed values. It draws on the
``ax`` it is given or on a new figure, and keeps the ``figure_``, the ``ax_``
and the artists it drew, so a figure can be restyled after the fact.

matplotlib is an optional dependency: install it with
``pip install "sk-cae[plot]"``. It is imported when a figure is drawn, not
when this module is imported.

Scores are shown on the *anomaly* scale, ``-score_samples(X)``, where higher
means more defect-like, and the alarm threshold sits at ``-offset_``: rows to
the right of it are flagged by ``predict``.
"""

import os

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.utils.validation import check_is_fitted, validate_data

from ._scores import encode_rows

# Colours of the roles of sk_cae.datasets, kept the same in every figure. Other
# group names take the colours of OTHER_COLORS in turn, repeating after five.
ROLE_COLORS = {"normal": "tab:blue", "other": "tab:orange", "defect": "tab:red"}
OTHER_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")

LOSS_TERMS = ("loss", "reconstruction", "repulsion", "compactness")
TERM_COLORS = dict(
    zip(LOSS_TERMS, ("black", "tab:blue", "tab:red", "tab:green"), strict=True)
)


def _check_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "sk_cae.plotting needs matplotlib, which is not installed. Install "
            'it with: pip install "sk-cae[plot]"'
        ) from error


def _figure_and_axes(ax):
    """Return ``(figure, ax)``, creating both with pyplot when ``ax`` is None."""
    if ax is not None:
        return ax.figure, ax
    _check_matplotlib()
    import matplotlib.pyplot as plt

    return plt.subplots()


def _split_pipeline(estimator):
    """Return the final detector of ``estimator`` and the steps before it.

    The steps are returned as a function that transforms ``X`` as the
    pipeline does before passing it to the detector.
    """
    if hasattr(estimator, "steps"):
        detector = estimator.steps[-1][1]
        return detector, estimator[:-1].transform
    return estimator, lambda X: X


def _fitted_autoencoder(estimator, display):
    """Return the fitted ``ContrastiveAEDetector`` that ``estimator`` ends in."""
    detector, transform = _split_pipeline(estimator)
    check_is_fitted(detector)
    if not hasattr(detector, "net_"):
        raise TypeError(
            f"{display} needs a fitted ContrastiveAEDetector or a Pipeline "
            f"ending in one; got {type(detector).__name__}."
        )
    return detector, transform


def _group_order(groups):
    """Return the distinct groups: the dataset roles first, in the order
    normal, other, defect, then the rest in sorted order."""
    present = np.unique(groups).tolist()
    roles = [role for role in ROLE_COLORS if role in present]
    return roles + sorted(value for value in present if value not in roles)


def _group_colors(order):
    extra = iter(OTHER_COLORS * (1 + len(order) // len(OTHER_COLORS)))
    return {
        group: ROLE_COLORS[group] if group in ROLE_COLORS else next(extra)
        for group in order
    }


def _check_groups(groups, n_samples):
    """Return ``groups`` as an array of strings, one per row."""
    if groups is None:
        return np.full(n_samples, "all rows", dtype=object)
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != n_samples:
        raise ValueError(
            f"groups has {len(groups)} entries but there are {n_samples} rows; "
            "pass one group name per row."
        )
    return groups.astype(str).astype(object)


class TrainingHistoryDisplay:
    """Loss and loss terms per training epoch.

    Draws the training loss and each of its terms (reconstruction, repulsion,
    compactness) as recorded in ``net_.history``, as solid lines for the
    training rows and dashed lines for the validation rows when
    ``early_stopping=True`` held some out. The terms are drawn unweighted, as
    recorded, and the loss is their weighted sum.

    Parameters
    ----------
    curves : dict of str to ndarray
        History key (such as ``"train_reconstruction"``) to its value per
        epoch.
    weights : dict of str to float, default=None
        Weight of each term in the loss, shown in the legend.

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        The line of each history key.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, curves, weights=None):
        self.curves = curves
        self.weights = weights

    @classmethod
    def from_estimator(cls, estimator, *, ax=None):
        """Plot the training history of a fitted detector.

        Parameters
        ----------
        estimator : ContrastiveAEDetector or Pipeline ending in one
        ax : matplotlib Axes, default=None
            Axes to draw on. None creates a new figure.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        detector, _ = _fitted_autoencoder(estimator, cls.__name__)
        return cls.from_history(
            detector.net_.history,
            weights={
                "repulsion": detector.repulsion_weight,
                "compactness": detector.compactness_weight,
            },
            ax=ax,
        )

    @classmethod
    def from_history(cls, history, *, weights=None, ax=None):
        """Plot a skorch ``History``, or a list of per-epoch dicts.

        Parameters
        ----------
        history : skorch History or list of dict
            One dict per epoch, with keys such as ``"train_loss"`` and
            ``"valid_reconstruction"``. Missing keys are skipped.
        weights : dict of str to float, default=None
            Weight of each term in the loss, shown in the legend.
        ax : matplotlib Axes, default=None
            Axes to draw on. None creates a new figure.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        history = list(history)
        if not history:
            raise ValueError("history is empty; fit the detector first.")
        curves = {}
        for prefix in ("train", "valid"):
            for term in LOSS_TERMS:
                key = f"{prefix}_{term}"
                values = [epoch.get(key, np.nan) for epoch in history]
                values = np.asarray(values, dtype=float)
                if np.isfinite(values).any():
                    curves[key] = values
        return cls(curves=curves, weights=weights).plot(ax=ax)

    def plot(self, ax=None):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on. None creates a new figure.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        self.figure_, self.ax_ = _figure_and_axes(ax)
        weights = self.weights or {}
        self.lines_ = {}
        for key, values in self.curves.items():
            prefix, term = key.split("_", 1)
            label = f"{prefix} {term}"
            if term in weights:
                label += f" (weight {weights[term]:g})"
            epochs = np.arange(1, len(values) + 1)
            (self.lines_[key],) = self.ax_.plot(
                epochs,
                values,
                color=TERM_COLORS.get(term),
                linestyle="-" if prefix == "train" else "--",
                label=label,
            )
        self.ax_.set_xlabel("epoch")
        self.ax_.set_ylabel("mean over the epoch's batches")
        self.ax_.legend(fontsize="small")
        return self


class ScoreDistributionDisplay:
    """Histograms of the anomaly scores of groups of rows, with the threshold.

    Each group (for example the roles ``"normal"``, ``"other"`` and
    ``"defect"``) gets one filled step histogram of the share of its rows in
    each bin, so that a group of ten rows is as visible as one of thousands.
    A dashed vertical line marks the threshold: rows to its right are
    flagged.

    Parameters
    ----------
    anomaly_scores : ndarray of shape (n_samples,)
        ``-score_samples(X)``: higher is more defect-like.
    groups : ndarray of shape (n_samples,), default=None
        Group name of each row. None puts every row in one group.
    threshold : float, default=None
        The alarm threshold on the same scale, ``-offset_``.

    Attributes
    ----------
    bin_edges_ : ndarray
        Edges of the bins shared by every group.
    patches_ : dict of str to matplotlib StepPatch
        The histogram of each group.
    threshold_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, anomaly_scores, groups=None, threshold=None):
        self.anomaly_scores = anomaly_scores
        self.groups = groups
        self.threshold = threshold

    @classmethod
    def from_estimator(
        cls, estimator, X, groups=None, *, bins=30, log_scale=False, ax=None
    ):
        """Plot the anomaly scores of ``X`` and the estimator's threshold.

        Works with any fitted outlier detector that has ``score_samples`` and
        ``offset_``, such as ``IsolationForest``, or a Pipeline ending in one.

        Parameters
        ----------
        estimator : fitted outlier detector or Pipeline
        X : array-like of shape (n_samples, n_features)
        groups : array-like of shape (n_samples,), default=None
            Group name of each row, such as ``ScenarioSplit.role_test``, or
            ``np.where(y == 1, "defect", "normal")``.
        bins : int or sequence, default=30
            Number of bins shared by every group, or their edges.
        log_scale : bool, default=False
            Draw the scores on a logarithmic axis with logarithmically spaced
            bins, for heavy-tailed scores such as reconstruction errors. Every
            score must then be positive.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : ScoreDistributionDisplay
        """
        detector, _ = _split_pipeline(estimator)
        check_is_fitted(detector)
        return cls.from_predictions(
            -estimator.score_samples(X),
            groups,
            threshold=-detector.offset_,
            bins=bins,
            log_scale=log_scale,
            ax=ax,
        )

    @classmethod
    def from_predictions(
        cls,
        anomaly_scores,
        groups=None,
        *,
        threshold=None,
        bins=30,
        log_scale=False,
        ax=None,
    ):
        """Plot precomputed anomaly scores (``-score_samples``).

        Parameters
        ----------
        anomaly_scores : array-like of shape (n_samples,)
            Higher is more defect-like.
        groups : array-like of shape (n_samples,), default=None
            Group name of each row. None puts every row in one group.
        threshold : float, default=None
            Alarm threshold on the same scale, drawn as a dashed line.
        bins, log_scale, ax
            As in :meth:`from_estimator`.

        Returns
        -------
        display : ScoreDistributionDisplay
        """
        anomaly_scores = np.asarray(anomaly_scores, dtype=float).reshape(-1)
        groups = _check_groups(groups, len(anomaly_scores))
        display = cls(anomaly_scores=anomaly_scores, groups=groups, threshold=threshold)
        return display.plot(ax=ax, bins=bins, log_scale=log_scale)

    def plot(self, ax=None, *, bins=30, log_scale=False):
        """Draw the histograms and the threshold line.

        Parameters
        ----------
        ax, bins, log_scale
            As in :meth:`from_estimator`.

        Returns
        -------
        display : ScoreDistributionDisplay
        """
        scores = np.asarray(self.anomaly_scores, dtype=float)
        groups = _check_groups(self.groups, len(scores))
        if log_scale and not (scores > 0).all():
            raise ValueError(
                f"log_scale=True needs positive anomaly scores; the lowest is "
                f"{scores.min():g}. Use log_scale=False."
            )
        if log_scale and np.ndim(bins) == 0:
            low, high = scores.min(), scores.max()
            if low == high:
                low, high = low / 1.5, high * 1.5
            edges = np.geomspace(low, high, int(bins) + 1)
        else:
            edges = np.histogram_bin_edges(scores, bins=bins)
        self.bin_edges_ = edges
        self.figure_, self.ax_ = _figure_and_axes(ax)
        order = _group_order(groups)
        colors = _group_colors(order)
        self.patches_ = {}
        for group in order:
            values = scores[groups == group]
            counts, _ = np.histogram(values, bins=edges)
            self.patches_[group] = self.ax_.stairs(
                counts / max(len(values), 1),
                edges,
                fill=True,
                alpha=0.45,
                color=colors[group],
                label=f"{group} ({len(values)})",
            )
        self.threshold_line_ = None
        if self.threshold is not None:
            self.threshold_line_ = self.ax_.axvline(
                self.threshold, color="black", linestyle="--", label="threshold"
            )
        if log_scale:
            self.ax_.set_xscale("log")
        self.ax_.set_xlabel("anomaly score (-score_samples)")
        self.ax_.set_ylabel("share of the group's rows")
        self.ax_.legend(fontsize="small")
        return self


class LatentSpaceDisplay:
    """The rows' latent codes in two dimensions, coloured by group.

    With ``latent_dim == 2`` the codes are drawn as they are. A wider latent
    space is drawn through its first two principal components, from a PCA
    fitted on the rows drawn, and a 1-D one as the code against zero. After
    contrastive training the labeled defects, and unseen defects like them,
    lie apart from the main group, while other outliers do not follow them.

    Parameters
    ----------
    embedding : ndarray of shape (n_samples, 2)
        Coordinates of the points.
    groups : ndarray of shape (n_samples,), default=None
        Group name of each row.
    axis_labels : tuple of str, default=("latent 1", "latent 2")

    Attributes
    ----------
    collections_ : dict of str to matplotlib PathCollection
        The points of each group.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, embedding, groups=None, axis_labels=("latent 1", "latent 2")):
        self.embedding = embedding
        self.groups = groups
        self.axis_labels = axis_labels

    @classmethod
    def from_estimator(cls, estimator, X, groups=None, *, ax=None):
        """Encode ``X`` with a fitted detector and plot the codes.

        Parameters
        ----------
        estimator : ContrastiveAEDetector or Pipeline ending in one
        X : array-like of shape (n_samples, n_features)
            Rows before the pipeline's preprocessing, if any.
        groups : array-like of shape (n_samples,), default=None
            Group name of each row.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : LatentSpaceDisplay
        """
        detector, transform = _fitted_autoencoder(estimator, cls.__name__)
        rows = validate_data(detector, transform(X), dtype=np.float32, reset=False)
        _, latent = encode_rows(
            detector.net_.module_, rows, device=detector.net_.device
        )
        latent = latent.astype(np.float64)
        if latent.shape[1] == 2:
            embedding, labels = latent, ("latent 1", "latent 2")
        elif latent.shape[1] == 1:
            embedding = np.column_stack([latent[:, 0], np.zeros(len(latent))])
            labels = ("latent 1", "")
        else:
            pca = PCA(n_components=2).fit(latent)
            embedding = pca.transform(latent)
            share = 100 * pca.explained_variance_ratio_
            labels = tuple(
                f"latent PC {i + 1} ({share[i]:.0f}% of variance)" for i in range(2)
            )
        groups = _check_groups(groups, len(embedding))
        display = cls(embedding=embedding, groups=groups, axis_labels=labels)
        return display.plot(ax=ax)

    def plot(self, ax=None, *, marker_size=12, alpha=0.7):
        """Draw one scatter per group, the normal rows first.

        Returns
        -------
        display : LatentSpaceDisplay
        """
        self.figure_, self.ax_ = _figure_and_axes(ax)
        embedding = np.asarray(self.embedding, dtype=float)
        groups = _check_groups(self.groups, len(embedding))
        order = _group_order(groups)
        colors = _group_colors(order)
        self.collections_ = {}
        for group in order:
            points = embedding[groups == group]
            self.collections_[group] = self.ax_.scatter(
                points[:, 0],
                points[:, 1],
                s=marker_size,
                alpha=alpha,
                color=colors[group],
                label=f"{group} ({len(points)})",
            )
        self.ax_.set_xlabel(self.axis_labels[0])
        self.ax_.set_ylabel(self.axis_labels[1])
        self.ax_.legend(fontsize="small")
        return self


class DefectPrecisionRecallDisplay:
    """Precision-recall curve of finding the defects, with the threshold's point.

    The defects (``y == defect_label``) are the positive class and the rows
    are ranked by their anomaly score ``-score_samples``. scikit-learn's
    ``PrecisionRecallDisplay.from_estimator`` would rank an outlier detector
    by ``decision_function``, which is low for defects. A marker shows the
    precision and recall of the current threshold on these rows.

    Parameters
    ----------
    precision, recall : ndarray
        As returned by ``sklearn.metrics.precision_recall_curve``.
    average_precision : float, default=None
    name : str, default=None
        Name of the curve in the legend.
    threshold_point : tuple of float, default=None
        ``(recall, precision)`` at the alarm threshold.

    Attributes
    ----------
    line_ : matplotlib Line2D
    threshold_point_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(
        self,
        *,
        precision,
        recall,
        average_precision=None,
        name=None,
        threshold_point=None,
    ):
        self.precision = precision
        self.recall = recall
        self.average_precision = average_precision
        self.name = name
        self.threshold_point = threshold_point

    @classmethod
    def from_estimator(cls, estimator, X, y, *, defect_label=None, name=None, ax=None):
        """Plot the defect precision-recall curve of a fitted detector on ``X``.

        Parameters
        ----------
        estimator : fitted outlier detector or Pipeline ending in one
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Labels, with ``defect_label`` marking the defects.
        defect_label : int, float, str or bool, default=None
            None takes the detector's ``defect_label``, or 1.
        name : str, default=None
            Legend name. None uses the detector's class name.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : DefectPrecisionRecallDisplay
        """
        detector, _ = _split_pipeline(estimator)
        check_is_fitted(detector)
        if defect_label is None:
            defect_label = getattr(detector, "defect_label", 1)
        return cls.from_predictions(
            y,
            -estimator.score_samples(X),
            defect_label=defect_label,
            threshold=-detector.offset_,
            name=name or type(detector).__name__,
            ax=ax,
        )

    @classmethod
    def from_predictions(
        cls, y, anomaly_scores, *, defect_label=1, threshold=None, name=None, ax=None
    ):
        """Plot the curve from labels and precomputed anomaly scores.

        Parameters
        ----------
        y : array-like of shape (n_samples,)
            Labels, with ``defect_label`` marking the defects.
        anomaly_scores : array-like of shape (n_samples,)
            Higher is more defect-like.
        defect_label : int, float, str or bool, default=1
        threshold : float, default=None
            Alarm threshold on the anomaly scale (``-offset_``). Rows scored
            above it count as flagged for the marker. With no row flagged the
            marker is at recall 0 and precision 1, where
            ``precision_recall_curve`` starts the curve.
        name : str, default=None
            Legend name.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : DefectPrecisionRecallDisplay
        """
        is_defect = np.asarray(y).reshape(-1) == defect_label
        anomaly_scores = np.asarray(anomaly_scores, dtype=float).reshape(-1)
        if len(is_defect) != len(anomaly_scores):
            raise ValueError(
                f"y has {len(is_defect)} rows but anomaly_scores has "
                f"{len(anomaly_scores)}; pass one label per score."
            )
        if not is_defect.any():
            raise ValueError(
                f"y contains no row equal to defect_label={defect_label!r}, so "
                "there is no defect to find; pass labels that mark the defects."
            )
        precision, recall, _ = precision_recall_curve(is_defect, anomaly_scores)
        point = None
        if threshold is not None:
            flagged = anomaly_scores > threshold
            found = int((flagged & is_defect).sum())
            precision_at = found / flagged.sum() if flagged.any() else 1.0
            point = (found / is_defect.sum(), precision_at)
        display = cls(
            precision=precision,
            recall=recall,
            average_precision=average_precision_score(is_defect, anomaly_scores),
            name=name,
            threshold_point=point,
        )
        return display.plot(ax=ax)

    def plot(self, ax=None, **kwargs):
        """Draw the curve, passing extra keywords to ``Axes.plot``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on. None creates a new figure.
        **kwargs
            Passed to ``Axes.plot`` for the curve.

        Returns
        -------
        display : DefectPrecisionRecallDisplay
        """
        self.figure_, self.ax_ = _figure_and_axes(ax)
        label = self.name or "detector"
        if self.average_precision is not None:
            label += f" (AP = {self.average_precision:.3f})"
        (self.line_,) = self.ax_.plot(
            self.recall, self.precision, drawstyle="steps-post", label=label, **kwargs
        )
        self.threshold_point_ = None
        if self.threshold_point is not None:
            (self.threshold_point_,) = self.ax_.plot(
                *self.threshold_point,
                marker="o",
                linestyle="",
                color=self.line_.get_color(),
                label=f"{self.name or 'detector'} threshold",
            )
        self.ax_.set_xlabel("recall (share of defects flagged)")
        self.ax_.set_ylabel("precision (share of flags that are defects)")
        self.ax_.set_xlim(-0.01, 1.01)
        self.ax_.set_ylim(-0.01, 1.01)
        self.ax_.legend(fontsize="small")
        return self


def _draw_scores(estimator, X, groups, ax):
    """Draw the score histograms, on a log axis when the scores are positive
    and span more than two orders of magnitude, as reconstruction errors do."""
    detector, _ = _split_pipeline(estimator)
    anomaly = -estimator.score_samples(X)
    log_scale = anomaly.min() > 0 and anomaly.max() > 100 * anomaly.min()
    return ScoreDistributionDisplay.from_predictions(
        anomaly,
        groups,
        threshold=-detector.offset_,
        log_scale=bool(log_scale),
        ax=ax,
    )


def save_comparison_figures(detectors, X, groups, directory, *, defect_group="defect"):
    """Write four PNG files that compare fitted detectors on the same rows.

    ``history.png``, ``scores.png`` and ``latent.png`` contain one panel per
    detector, side by side, and ``precision_recall.png`` draws every
    detector's curve on one axes.

    Parameters
    ----------
    detectors : dict of str to estimator
        Title of each fitted ``ContrastiveAEDetector`` (or Pipeline ending in
        one), in the order of the panels.
    X : array-like of shape (n_samples, n_features)
        Rows to score and encode, such as a test set.
    groups : array-like of shape (n_samples,)
        Group name of each row. Rows equal to ``defect_group`` are the
        positive class of the precision-recall curves.
    directory : str or path-like
        Folder to write to, created if missing.
    defect_group : str, default="defect"

    Returns
    -------
    paths : dict of str to str
        Path of each written file, by figure name.
    """
    _check_matplotlib()
    from matplotlib.figure import Figure

    os.makedirs(directory, exist_ok=True)
    n_panels = len(detectors)
    panels = {
        "history": TrainingHistoryDisplay.from_estimator,
        "scores": lambda est, ax: _draw_scores(est, X, groups, ax),
        "latent": lambda est, ax: LatentSpaceDisplay.from_estimator(
            est, X, groups, ax=ax
        ),
    }
    paths = {}
    for figure_name, draw in panels.items():
        figure = Figure(figsize=(5.5 * n_panels, 4.2), layout="constrained")
        axes = np.atleast_1d(figure.subplots(1, n_panels))
        for ax, (title, estimator) in zip(axes, detectors.items(), strict=True):
            draw(estimator, ax=ax)
            ax.set_title(title)
        paths[figure_name] = os.path.join(directory, f"{figure_name}.png")
        figure.savefig(paths[figure_name], dpi=100)

    figure = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = figure.subplots()
    y = np.asarray(groups).astype(str) == defect_group
    for title, estimator in detectors.items():
        DefectPrecisionRecallDisplay.from_estimator(
            estimator, X, y, defect_label=True, name=title, ax=ax
        )
    ax.set_title("finding the defects")
    paths["precision_recall"] = os.path.join(directory, "precision_recall.png")
    figure.savefig(paths["precision_recall"], dpi=100)
    return paths

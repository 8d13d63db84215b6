"""Alarm thresholds chosen from anomaly scores (plain NumPy).

Every threshold here is on the *anomaly* scale (higher = more defect-like):
a row is flagged when its anomaly score is strictly above the threshold. The
estimator stores the negated threshold as ``offset_``.
"""

import math
from numbers import Real

import numpy as np

# Percentile of the main group's anomaly scores that bounds the threshold of
# contamination="auto".
AUTO_MAIN_PERCENTILE = 99.0

# Slack for the products ``target * n_rows``, so that 0.7 * 10 counts as 7
# rows and not as 7.000000000000001.
_COUNT_TOLERANCE = 1e-9

TARGETS = ("recall", "false_alarm_rate", "contamination")


def contamination_threshold(anomaly, is_defect, contamination, *, main_weight=1.0):
    """Return the threshold that a ``contamination`` setting puts on ``anomaly``.

    A float flags that fraction of all rows: the threshold is the
    ``100 * (1 - contamination)`` percentile of ``anomaly``. When the
    main-group rows (``~is_defect``) are a sample, each stands for
    ``main_weight`` rows of the full set, and the percentile is taken with
    those weights. ``"auto"`` takes the ``AUTO_MAIN_PERCENTILE`` percentile
    of the main-group rows or, when the median anomaly score of the defect
    rows is higher, the point halfway between the two.
    """
    if contamination != "auto":
        if main_weight == 1.0:
            return float(np.percentile(anomaly, 100.0 * (1 - contamination)))
        weights = np.where(is_defect, 1.0, main_weight)
        return _weighted_quantile(anomaly, weights, 1 - contamination)
    threshold = np.percentile(anomaly[~is_defect], AUTO_MAIN_PERCENTILE)
    if is_defect.any():
        defect_median = np.median(anomaly[is_defect])
        threshold = max(threshold, (threshold + defect_median) / 2)
    return float(threshold)


def _weighted_quantile(values, weights, quantile):
    """Return the smallest value at or below which lies at least ``quantile``
    of the total weight."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    position = np.searchsorted(cumulative, quantile * cumulative[-1], side="left")
    return float(values[order[min(position, len(values) - 1)]])


def _between(low, high):
    """Return a value ``t`` with ``low <= t < high``, halfway where possible."""
    middle = low + (high - low) / 2
    return float(middle) if low <= middle < high else float(low)


def recall_threshold(anomaly, is_defect, recall):
    """Return the highest threshold that flags ``recall`` of the defect rows.

    With ``n`` defect rows, the threshold flags the ``ceil(recall * n)``
    defects of highest anomaly score, and every row scored at least as high.
    It lies halfway between the lowest of those defect scores and the next
    lower score among all rows, so every threshold in between flags the same
    rows.
    """
    defect_scores = np.sort(anomaly[is_defect])[::-1]
    n_needed = math.ceil(recall * len(defect_scores) - _COUNT_TOLERANCE)
    lowest_flagged = defect_scores[max(n_needed, 1) - 1]
    lower = anomaly[anomaly < lowest_flagged]
    if lower.size == 0:
        return float(np.nextafter(lowest_flagged, -np.inf))
    return _between(lower.max(), lowest_flagged)


def false_alarm_threshold(anomaly, is_normal, false_alarm_rate):
    """Return the lowest threshold that flags at most ``false_alarm_rate`` of the
    normal rows.

    With ``n`` normal rows, at most ``floor(false_alarm_rate * n)`` of them
    score above the threshold. It lies halfway between the highest normal
    score that stays unflagged and the next higher score among all rows.
    """
    normal_scores = np.sort(anomaly[is_normal])[::-1]
    n_allowed = math.floor(false_alarm_rate * len(normal_scores) + _COUNT_TOLERANCE)
    highest_unflagged = normal_scores[n_allowed]
    higher = anomaly[anomaly > highest_unflagged]
    if higher.size == 0:
        return float(highest_unflagged)
    return _between(highest_unflagged, higher.min())


def _check_number(name, value, interval, contains):
    """Raise a ValueError unless ``value`` is a finite number that ``contains``
    accepts. ``interval`` describes the accepted range in the message."""
    is_number = isinstance(value, Real) and not isinstance(value, bool)
    if not (is_number and np.isfinite(value) and contains(value)):
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}.")


def check_target(recall, false_alarm_rate, contamination):
    """Return the name and value of the one target given, checking its range."""
    given = {
        name: value
        for name, value in zip(
            TARGETS, (recall, false_alarm_rate, contamination), strict=True
        )
        if value is not None
    }
    if len(given) != 1:
        received = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(
            "set_threshold takes exactly one of recall, false_alarm_rate or "
            f"contamination; got {received or 'none of them'}."
        )
    ((name, value),) = given.items()
    if name == "recall":
        _check_number(name, value, "(0, 1]", lambda v: 0 < v <= 1)
    elif name == "false_alarm_rate":
        _check_number(name, value, "[0, 1)", lambda v: 0 <= v < 1)
    elif isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"contamination must be 'auto' or a number in (0, 0.5]; got {value!r}."
            )
    else:
        _check_number(name, value, "(0, 0.5]", lambda v: 0 < v <= 0.5)
    return name, value


def choose_threshold(anomaly, is_defect, labeled, name, value, defect_label):
    """Return the anomaly threshold that meets one target on the given rows.

    Parameters
    ----------
    anomaly : ndarray of shape (n_samples,)
        Anomaly scores, higher = more defect-like.
    is_defect : ndarray of bool, shape (n_samples,)
        Rows labeled as defects; all False when no labels were given.
    labeled : bool
        Whether defect labels were given at all.
    name, value
        The target, as returned by :func:`check_target`.
    defect_label
        The estimator's defect label, quoted in error messages.
    """
    n_defects = int(is_defect.sum())
    n_normal = len(anomaly) - n_defects
    if name == "recall":
        if not labeled:
            raise ValueError(
                "recall needs defect labels: pass y with "
                f"defect_label={defect_label!r} on the known defects; got y=None."
            )
        if n_defects == 0:
            raise ValueError(
                f"recall needs defect labels, but y contains no row equal to "
                f"defect_label={defect_label!r}. Use false_alarm_rate to set "
                "the threshold from normal rows alone."
            )
        return recall_threshold(anomaly, is_defect, value)

    if n_normal == 0:
        raise ValueError(
            f"{name} needs rows known to be normal, but every row of y equals "
            f"defect_label={defect_label!r}. Pass rows with another label, or "
            "use recall."
        )
    if name == "false_alarm_rate":
        return false_alarm_threshold(anomaly, ~is_defect, value)
    return contamination_threshold(anomaly, is_defect, value)


def label_vector(y, n_samples):
    """Return ``y`` as a 1-D array with one label per row of X, or raise."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-dimensional with one label per row; got an array of "
            f"shape {y.shape}."
        )
    if len(y) != n_samples:
        raise ValueError(
            f"y has {len(y)} rows but X has {n_samples}; pass one label per row of X."
        )
    return y


def defect_rows(y, n_samples, defect_label):
    """Return the boolean mask of rows with ``y == defect_label``, all False
    when ``y`` is None."""
    if y is None:
        return np.zeros(n_samples, dtype=bool)
    y = label_vector(y, n_samples)
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(
            f"y contains {int(np.isnan(y).sum())} NaN values; label every row, "
            f"with defect_label={defect_label!r} for known defects and any other "
            "value for normal rows."
        )
    return y == defect_label

"""Scorers for defect detection, for ``GridSearchCV`` and ``cross_val_score``.

scikit-learn's built-in ``"roc_auc"`` and ``"average_precision"`` scorers
rank rows by ``decision_function``, where an outlier detector gives *low*
values to defects. With ``y = 1`` for defects they therefore measure the
reverse ranking (a perfect detector gets a ROC AUC of 0). The scorers here
rank by ``-score_samples`` and treat ``y == defect_label`` as the positive
class, so higher is better, as ``GridSearchCV`` expects.
"""

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _defect_truth_and_scores(estimator, X, y):
    """Return the defect mask of ``y`` and anomaly scores of ``X``."""
    defect_label = getattr(estimator, "defect_label", None)
    if defect_label is None and hasattr(estimator, "steps"):
        defect_label = getattr(estimator.steps[-1][1], "defect_label", 1)
    if defect_label is None:
        defect_label = 1
    is_defect = np.asarray(y).reshape(-1) == defect_label
    if not is_defect.any():
        raise ValueError(
            f"y contains no row equal to defect_label={defect_label!r}, so the "
            "defect score is undefined. In cross-validation, use StratifiedKFold "
            "on the defect labels so that every test fold holds defects."
        )
    return is_defect, -estimator.score_samples(X)


def defect_average_precision(estimator, X, y):
    """Return the average precision of finding the defects in ``X``.

    A scorer with the ``scoring=`` signature ``(estimator, X, y)``: rows with
    ``y == defect_label`` (the estimator's, or the last pipeline step's) are
    positive and rows are ranked by ``-estimator.score_samples(X)``.
    """
    is_defect, anomaly = _defect_truth_and_scores(estimator, X, y)
    return float(average_precision_score(is_defect, anomaly))


def defect_roc_auc(estimator, X, y):
    """Return the ROC AUC of ranking the defects in ``X`` above the other rows.

    Same conventions as :func:`defect_average_precision`.
    """
    is_defect, anomaly = _defect_truth_and_scores(estimator, X, y)
    return float(roc_auc_score(is_defect, anomaly))

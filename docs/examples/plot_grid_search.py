"""
Tuning with GridSearchCV
========================

The detector's ``score(X, y)`` is the defect average precision, so
``GridSearchCV`` tunes for finding the defects without a ``scoring``
argument. This example searches over the latent width and the repulsion
weight on the digits scenario, with folds stratified on the defect labels.
"""

# %%
# The data
# --------
# Digits 0-6 are normal, 9 is the defect (10 labeled in training) and 7 and 8
# are other outliers. Pixel values run from 0 to 16.
from sk_cae.datasets import load_digits_scenario

split = load_digits_scenario(n_labeled=10, seed=0)
print(f"{len(split.y_train)} training rows, {split.y_train.sum()} labeled defects")

# %%
# The search
# ----------
# ``StratifiedKFold`` keeps about the same number of labeled defects in every
# fold. A plain ``KFold`` could leave a fold with none, where the average
# precision is undefined. With 10 labeled defects, 3 folds get 3 or 4 each.
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sk_cae import ContrastiveAEDetector, defect_average_precision, defect_roc_auc

model = make_pipeline(
    MinMaxScaler(), ContrastiveAEDetector(max_epochs=15, random_state=0)
)
search = GridSearchCV(
    model,
    {
        "contrastiveaedetector__latent_dim": [4, 8],
        "contrastiveaedetector__repulsion_weight": [0.0, 0.1, 1.0],
    },
    cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
)
search.fit(split.X_train, split.y_train)
print("best parameters:", search.best_params_)
print(f"best mean defect average precision: {search.best_score_:.3f}")

# %%
# ``cv_results_`` contains the fold scores of every candidate.
import pandas as pd

results = pd.DataFrame(search.cv_results_)
results[
    [
        "param_contrastiveaedetector__latent_dim",
        "param_contrastiveaedetector__repulsion_weight",
        "mean_test_score",
        "std_test_score",
        "rank_test_score",
    ]
].sort_values("rank_test_score")

# %%
# With 3 or 4 labeled defects per validation fold, one defect more or less
# among the top rows moves the average precision a lot: read the standard
# deviations before trusting small differences.
#
# Several metrics
# ---------------
# For ``scoring=``, use the scorers of ``sk_cae``: scikit-learn's
# ``"average_precision"`` and ``"roc_auc"`` rank rows by
# ``decision_function``, which is low for defects, and so measure the
# reverse ranking. With several metrics, ``refit`` names the one that picks
# the final model.
search = GridSearchCV(
    model,
    {"contrastiveaedetector__repulsion_weight": [0.0, 1.0]},
    scoring={
        "average_precision": defect_average_precision,
        "roc_auc": defect_roc_auc,
    },
    refit="average_precision",
    cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
)
search.fit(split.X_train, split.y_train)
pd.DataFrame(search.cv_results_)[
    [
        "param_contrastiveaedetector__repulsion_weight",
        "mean_test_average_precision",
        "mean_test_roc_auc",
    ]
]

# %%
# The test rows
# -------------
# The refitted best model, on rows that played no part in the search:
best = search.best_estimator_
print(f"test defect average precision: {best.score(split.X_test, split.y_test):.3f}")
print(f"test defect ROC AUC: {defect_roc_auc(best, split.X_test, split.y_test):.3f}")

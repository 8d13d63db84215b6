"""The bundled demo scenario and the benchmark's train/test split.

A *scenario* gives every row a role: ``"normal"``, ``"defect"`` (the outlier
kind the user cares about) or ``"other"`` (outliers of other kinds that should
not be reported as defects). :func:`split_scenario` turns the roles into a
training set with a few labeled defects and a test set, and
:func:`load_digits_scenario` builds the demo scenario from scikit-learn's
bundled digits, with no download.
"""

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

ROLES = ("normal", "defect", "other")


@dataclass(frozen=True)
class ScenarioSplit:
    """Training and test rows of one repetition of a scenario.

    Attributes
    ----------
    X_train : ndarray of shape (n_train, n_features)
    y_train : ndarray of shape (n_train,)
        1 for the labeled defects, 0 for every other training row (normal
        rows, other outliers and the unlabeled defects).
    role_train : ndarray of shape (n_train,)
        The true role of every training row.
    X_test : ndarray of shape (n_test, n_features)
    role_test : ndarray of shape (n_test,)
        The true role of every test row.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    role_train: np.ndarray
    X_test: np.ndarray
    role_test: np.ndarray

    @property
    def y_test(self):
        """1 for the test defects, 0 for every other test row."""
        return (self.role_test == "defect").astype(np.int64)


def split_scenario(
    X,
    role,
    *,
    n_labeled=10,
    seed=0,
    train_other_frac=0.05,
    train_unlabeled_defect_frac=0.01,
    test_other_frac=0.05,
    test_defect_frac=0.02,
    min_test_defects=5,
):
    """Split a scenario into training and test rows.

    Each role's rows are shuffled with ``numpy.random.default_rng(seed)`` and
    cut in half into a training pool and a test pool. The training set takes
    every normal row of its pool, at most ``train_other_frac * n_normal``
    other outliers and at most ``n_labeled + train_unlabeled_defect_frac *
    n_normal`` defects, of which exactly the first ``n_labeled`` get
    ``y_train = 1``. The test set takes every normal row of its pool, at most
    ``test_other_frac * n_normal`` other outliers and at most
    ``test_defect_frac * n_normal`` defects, but at least ``min_test_defects``
    where the pool has them. The same generator then shuffles the rows of
    each set.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        All rows of the scenario.
    role : array-like of shape (n_samples,)
        ``"normal"``, ``"defect"`` or ``"other"`` for every row.
    n_labeled : int, default=10
        Number of training defects that are labeled.
    seed : int, default=0
        Seed of the shuffle; one value per repetition.
    train_other_frac, train_unlabeled_defect_frac, test_other_frac, \
test_defect_frac : float
        Caps, as fractions of the number of normal rows of the set.
    min_test_defects : int, default=5
        Lower bound on the number of test defects, where the pool has them.

    Returns
    -------
    split : ScenarioSplit
    """
    X = np.asarray(X)
    role = np.asarray(role)
    unknown = sorted(set(np.unique(role).tolist()) - set(ROLES))
    if unknown:
        raise ValueError(f"role contains {unknown}; expected only {list(ROLES)}.")
    if len(role) != len(X):
        raise ValueError(f"role has {len(role)} rows but X has {len(X)}.")

    rng = np.random.default_rng(seed)
    train_pool, test_pool = {}, {}
    for name in ROLES:
        index = np.flatnonzero(role == name)
        index = index[rng.permutation(len(index))]
        half = len(index) // 2
        train_pool[name], test_pool[name] = index[:half], index[half:]

    n_normal_train = len(train_pool["normal"])
    n_other = int(train_other_frac * n_normal_train)
    n_defect = n_labeled + int(train_unlabeled_defect_frac * n_normal_train)
    train_defects = train_pool["defect"][:n_defect]
    if len(train_defects) < n_labeled:
        raise ValueError(
            f"The training pool has {len(train_defects)} defects but "
            f"n_labeled={n_labeled}."
        )
    train_index = np.concatenate(
        [train_pool["normal"], train_pool["other"][:n_other], train_defects]
    )

    n_normal_test = len(test_pool["normal"])
    n_other = int(test_other_frac * n_normal_test)
    n_defect = max(int(test_defect_frac * n_normal_test), min_test_defects)
    test_index = np.concatenate(
        [
            test_pool["normal"],
            test_pool["other"][:n_other],
            test_pool["defect"][:n_defect],
        ]
    )
    # Shuffle within each set too, so that no fold or batch sees the rows
    # ordered by role.
    train_index = train_index[rng.permutation(len(train_index))]
    test_index = test_index[rng.permutation(len(test_index))]
    y_train = np.isin(train_index, train_defects[:n_labeled]).astype(np.int64)
    return ScenarioSplit(
        X_train=X[train_index],
        y_train=y_train,
        role_train=role[train_index],
        X_test=X[test_index],
        role_test=role[test_index],
    )


def digits_roles(target, normal=(0, 1, 2, 3, 4, 5, 6), defect=(9,), other=(7, 8)):
    """Map digit classes to the roles of the ``digits-9`` scenario."""
    target = np.asarray(target)
    role = np.full(len(target), "normal", dtype=object)
    role[np.isin(target, defect)] = "defect"
    role[np.isin(target, other)] = "other"
    keep = np.isin(target, (*normal, *defect, *other))
    return role[keep].astype(str), keep


def load_digits_scenario(*, n_labeled=10, seed=0):
    """Split scikit-learn's digits into the ``digits-9`` scenario.

    Digits 0-6 are normal, 9 is the defect and 7 and 8 are other outliers,
    split by :func:`split_scenario` with its default caps.

    Parameters
    ----------
    n_labeled : int, default=10
        Number of labeled training defects.
    seed : int, default=0
        Seed of the split.

    Returns
    -------
    split : ScenarioSplit
    """
    digits = load_digits()
    role, keep = digits_roles(digits.target)
    return split_scenario(
        digits.data[keep].astype(np.float32), role, n_labeled=n_labeled, seed=seed
    )

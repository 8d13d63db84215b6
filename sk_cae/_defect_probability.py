"""Defect probabilities from the input rows: a logistic regression and a
random forest of the labeled defects against the main group, which the
``"hybrid_logistic"`` score averages with its neighbour ratios.
"""

import warnings

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ._scores import ENCODE_CHUNK_SIZE

# Folds of the out-of-fold defect probabilities of the training rows.
PROBABILITY_FOLDS = 5

# Trees of the random forest in the defect probability (DefectForest).
FOREST_TREES = 100

# Iteration cap of the logistic regression. Standardized rows converge long
# before it.
LOGISTIC_MAX_ITER = 2000

# Inverse strength of the logistic regression's L2 penalty. With a handful of
# labeled defects and tens or hundreds of features, scikit-learn's default of
# 1 fits the labeled defects too closely. On the benchmark scenarios, 0.1
# ranked defects above other outliers better at 5, 10 and 25 labels, with
# about the same average precision at 5 and a higher one at 10 and 25. 0.01
# lost average precision (benchmarks/NOTES.md, Run 6).
LOGISTIC_C = 0.1


class DefectProbability:
    """Probability that a row is a labeled defect, by logistic regression.

    A scikit-learn ``LogisticRegression`` with an L2 penalty of inverse
    strength ``LOGISTIC_C`` is fitted on the standardized rows, labeled
    defects against main-group rows. The standardization is then folded
    into the coefficients, so a probability is ``expit(X @ coef_ +
    intercept_)`` on the rows as given.

    Where the main-group rows are a sample, ``main_weight`` makes each count
    for the rows it stands for, so the balance between the two groups is
    that of the full training set.
    """

    def fit(self, X_main, X_defects, *, main_weight=1.0):
        self.coef_, self.intercept_ = self._fit_linear(X_main, X_defects, main_weight)
        return self

    @staticmethod
    def _fit_linear(X_main, X_defects, main_weight):
        X = np.vstack([X_main, X_defects]).astype(np.float64)
        y = np.r_[np.zeros(len(X_main)), np.ones(len(X_defects))]
        weight = np.r_[
            np.full(len(X_main), float(main_weight)), np.ones(len(X_defects))
        ]
        mean = np.average(X, axis=0, weights=weight)
        std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=weight))
        std[std == 0] = 1.0
        model = LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER)
        model.fit((X - mean) / std, y, sample_weight=weight)
        coef = model.coef_[0] / std
        return coef, float(model.intercept_[0] - coef @ mean)

    def out_of_fold(self, X_main, X_defects, *, main_weight=1.0, seed=0):
        """Return the probabilities of the main rows and of the defects, each
        from a model fitted without it: up to ``PROBABILITY_FOLDS`` folds
        stratified by group.

        The probability of a row from the model that saw it flatters the
        labeled defects above all, which would move the threshold. With a
        single labeled defect or a single main row there is no fold to leave
        it out of, and the fitted model scores every row.
        """
        n_main, n_defects = len(X_main), len(X_defects)
        X = np.vstack([X_main, X_defects])
        n_splits = min(PROBABILITY_FOLDS, n_defects, n_main)
        if n_splits < 2:
            return self.probability(X[:n_main]), self.probability(X[n_main:])
        is_defect = np.arange(len(X)) >= n_main
        folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        probability = np.empty(len(X))
        for fitted_on, left_out in folds.split(X, is_defect):
            coef, intercept = self._fit_linear(
                X[fitted_on][~is_defect[fitted_on]],
                X[fitted_on][is_defect[fitted_on]],
                main_weight,
            )
            probability[left_out] = expit(X[left_out] @ coef + intercept)
        return probability[:n_main], probability[n_main:]

    def probability(self, X):
        """Return the defect probability of every row of ``X``, rounded to
        float32 first like the rows that the network receives."""
        rows = np.asarray(X, dtype=np.float32).astype(np.float64)
        return expit(rows @ self.coef_ + self.intercept_)

    def probability_tensor(self, rows):
        """Return the defect probabilities of ``rows`` as a differentiable tensor."""
        options = {"device": rows.device, "dtype": rows.dtype}
        coef = torch.as_tensor(self.coef_, **options)
        return torch.sigmoid(rows @ coef + self.intercept_)


class DefectForest:
    """Probability that a row is a labeled defect, by a random forest.

    A scikit-learn ``RandomForestClassifier`` of ``FOREST_TREES`` trees, with
    the two groups weighted equally in each tree's bootstrap sample
    (``class_weight="balanced_subsample"``), is fitted on the rows as given,
    labeled defects against main-group rows. Its trees find defects that
    differ from the main group in a few features at once, where a distance
    over all features and a single hyperplane both blur the difference.

    Besides the fitted forest, the trees are kept as plain arrays
    (``trees_``), which model files and the ONNX graph store. A forest
    rebuilt from the arrays alone (:meth:`from_arrays`) walks them in numpy:
    same probabilities, more slowly.

    Parameters
    ----------
    random_state : int
        Seed of the bootstrap samples and of the features tried at each split.
    """

    def __init__(self, random_state=0):
        self.random_state = random_state

    def fit(self, X_main, X_defects):
        X = np.vstack([X_main, X_defects]).astype(np.float32)
        y = np.r_[np.zeros(len(X_main)), np.ones(len(X_defects))]
        self.forest_ = RandomForestClassifier(
            n_estimators=FOREST_TREES,
            class_weight="balanced_subsample",
            oob_score=True,
            random_state=self.random_state,
            n_jobs=1,
        )
        with warnings.catch_warnings():
            # Rows that every tree drew get no out-of-bag probability, so
            # out_of_bag() scores them with the whole forest.
            warnings.filterwarnings("ignore", "Some inputs do not have OOB")
            warnings.filterwarnings("ignore", "invalid value encountered")
            self.forest_.fit(X, y)
        self.trees_ = forest_arrays(self.forest_)
        return self

    @classmethod
    def from_arrays(cls, trees, n_features):
        """Return a forest that scores with the tree arrays ``trees`` (as
        made by :func:`forest_arrays`), after :func:`check_forest_arrays`.

        Raises ``ValueError`` naming the first inconsistency found.
        """
        forest = cls()
        forest._depths = check_forest_arrays(trees, n_features)
        forest.trees_ = trees
        return forest

    def out_of_bag(self, X_main, X_defects):
        """Return the probabilities of the main rows and of the defects that
        the forest was fitted on, each from the trees whose bootstrap sample
        left it out (about a third of them).

        Like out-of-fold probabilities, they do not flatter the labeled
        defects, and they cost no further fit. A row that every tree drew
        gets the whole forest's probability.
        """
        column = list(self.forest_.classes_).index(1.0)
        probability = self.forest_.oob_decision_function_[:, column].astype(np.float64)
        missing = ~np.isfinite(probability)
        if missing.any():
            rows = np.vstack([X_main, X_defects])
            probability[missing] = self.probability(rows[missing])
        n_main = len(X_main)
        return probability[:n_main], probability[n_main:]

    def probability(self, X):
        """Return the defect probability of every row of ``X`` (as float32)."""
        rows = np.asarray(X, dtype=np.float32)
        if not hasattr(self, "forest_"):
            return forest_probability(self.trees_, rows, depths=self._depths)
        column = list(self.forest_.classes_).index(1.0)
        return self.forest_.predict_proba(rows)[:, column].astype(np.float64)


# The arrays of a forest: the nodes of all trees in one sequence, tree after
# tree, each tree's nodes in scikit-learn's order, which puts children after
# their parent. A leaf has feature 0, threshold +inf and itself as both
# children, so that walking on from a leaf stays there. A leaf's value is the
# fraction of defects among its training rows, and an inner node's is 0.
FOREST_ARRAYS = ("feature", "threshold", "left", "right", "value", "roots", "depth")


def forest_arrays(forest):
    """Return the trees of a fitted ``RandomForestClassifier`` of labels 0
    and 1 as plain arrays (see ``FOREST_ARRAYS``). ``value`` is a leaf's
    fraction of defects (label 1), and ``depth`` the deepest tree's depth."""
    column = list(forest.classes_).index(1.0)
    parts = {name: [] for name in FOREST_ARRAYS[:-1]}
    offset = 0
    for tree in (estimator.tree_ for estimator in forest.estimators_):
        nodes = np.arange(tree.node_count)
        leaf = tree.children_left < 0
        counts = tree.value[:, 0, :]
        fraction = counts[:, column] / counts.sum(axis=1)
        parts["feature"].append(np.where(leaf, 0, tree.feature))
        parts["threshold"].append(np.where(leaf, np.inf, tree.threshold))
        parts["left"].append(np.where(leaf, nodes, tree.children_left) + offset)
        parts["right"].append(np.where(leaf, nodes, tree.children_right) + offset)
        parts["value"].append(np.where(leaf, fraction, 0.0))
        parts["roots"].append([offset])
        offset += tree.node_count
    trees = {name: np.concatenate(values) for name, values in parts.items()}
    for name in ("feature", "left", "right", "roots"):
        trees[name] = trees[name].astype(np.int64)
    trees["threshold"] = trees["threshold"].astype(np.float64)
    trees["value"] = trees["value"].astype(np.float64)
    trees["depth"] = np.array(
        [max(estimator.tree_.max_depth for estimator in forest.estimators_)]
    )
    return trees


def check_forest_arrays(trees, n_features):
    """Return the depth of each tree of the forest arrays ``trees`` after
    checking that they form proper trees over rows of ``n_features``
    features, whatever file they came from.

    Each tree's nodes must follow its root up to the next root, every inner
    node must have two different children later in its own tree, and every
    node but the roots must have exactly one parent. Walking the arrays then
    cannot loop or leave them, and takes at most as many steps per row as
    there are nodes. Raises ``ValueError`` naming the first problem found.
    """
    missing = [name for name in FOREST_ARRAYS if name not in trees]
    if missing:
        raise ValueError(f"the forest lacks the arrays {missing}.")
    feature, threshold = trees["feature"], trees["threshold"]
    left, right, roots = trees["left"], trees["right"], trees["roots"]
    n_nodes = len(feature)
    for name in ("feature", "threshold", "left", "right", "value"):
        if trees[name].shape != (n_nodes,) or n_nodes == 0:
            raise ValueError(
                f"the forest's {name!r} array has the shape {trees[name].shape}; "
                f"expected ({n_nodes},) like its 'feature' array, with at least "
                "one node."
            )
    if (
        roots.ndim != 1
        or len(roots) == 0
        or roots[0] != 0
        or np.any(np.diff(roots) <= 0)
        or roots[-1] >= n_nodes
    ):
        raise ValueError(
            f"the forest's roots {roots[:10].tolist()} (showing at most 10) must "
            f"start at node 0 and increase strictly, below its {n_nodes} nodes."
        )
    nodes = np.arange(n_nodes)
    ends = np.r_[roots[1:], n_nodes][np.searchsorted(roots, nodes, side="right") - 1]
    leaf = (left == nodes) & (right == nodes)
    proper = (nodes < left) & (left < ends) & (nodes < right) & (right < ends)
    bad = ~leaf & ~(proper & (left != right))
    if bad.any():
        node = int(np.argmax(bad))
        raise ValueError(
            f"node {node} of the forest has the children {left[node]} and "
            f"{right[node]}; an inner node needs two different children after "
            f"it in its own tree, which ends before node {ends[node]}, and a "
            "leaf names itself twice."
        )
    inner = ~leaf
    parents = np.bincount(np.r_[left[inner], right[inner]], minlength=n_nodes)
    expected = np.ones(n_nodes, dtype=np.int64)
    expected[roots] = 0
    if np.any(parents != expected):
        node = int(np.argmax(parents != expected))
        raise ValueError(
            f"node {node} of the forest is a child of {parents[node]} nodes; "
            f"expected {expected[node]}."
        )
    checks = [
        (inner & ((feature < 0) | (feature >= n_features)), "feature", feature),
        (inner & ~np.isfinite(threshold), "threshold", threshold),
        (
            leaf & ~((trees["value"] >= 0) & (trees["value"] <= 1)),
            "value",
            trees["value"],
        ),
    ]
    for wrong, name, values in checks:
        if wrong.any():
            node = int(np.argmax(wrong))
            raise ValueError(
                f"node {node} of the forest has the {name} {values[node]}; "
                "expected a feature index from 0 to "
                f"{n_features - 1}, a finite threshold and leaf values in [0, 1]."
            )
    depth = _tree_depths(left, right, roots, leaf)
    if trees["depth"].shape != (1,) or trees["depth"][0] != depth.max():
        raise ValueError(
            f"the forest's 'depth' is {trees['depth'].tolist()}; its trees are "
            f"[{int(depth.max())}] deep."
        )
    return depth


def _tree_depths(left, right, roots, leaf):
    """Return the depth of each tree, level by level from the roots."""
    node_depth = np.zeros(len(left), dtype=np.int64)
    level, frontier = 0, roots
    while frontier.size:
        inner = frontier[~leaf[frontier]]
        frontier = np.r_[left[inner], right[inner]]
        level += 1
        node_depth[frontier] = level
    return np.maximum.reduceat(node_depth, roots)


def forest_probability(trees, X, *, depths=None, chunk_size=ENCODE_CHUNK_SIZE):
    """Return the mean leaf value of the rows of ``X`` over the trees of the
    forest arrays ``trees``, as scikit-learn's ``predict_proba`` computes it:
    a float32 row goes left where its value is at most the threshold.
    ``depths``, the depth of each tree, is worked out where not given."""
    rows = np.asarray(X, dtype=np.float32)
    nodes = np.arange(len(trees["left"]))
    leaf = (trees["left"] == nodes) & (trees["right"] == nodes)
    if depths is None:
        depths = _tree_depths(trees["left"], trees["right"], trees["roots"], leaf)
    # Deepest trees first: step s walks only the trees deeper than s.
    order = np.argsort(-depths, kind="stable")
    roots, depths = trees["roots"][order], depths[order]
    probability = np.empty(len(rows))
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size].astype(np.float64)
        node = np.repeat(roots[None, :], len(chunk), axis=0)
        positions = np.arange(len(chunk))[:, None]
        for step in range(int(depths[0]) if len(depths) else 0):
            walking = node[:, : int(np.sum(depths > step))]
            values = chunk[positions, trees["feature"][walking]]
            goes_left = values <= trees["threshold"][walking]
            node[:, : walking.shape[1]] = np.where(
                goes_left, trees["left"][walking], trees["right"][walking]
            )
        probability[start : start + chunk_size] = trees["value"][node].mean(axis=1)
    return probability

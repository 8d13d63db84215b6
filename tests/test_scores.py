"""Tests of the parts of the hybrid_logistic score: neighbour positions, the
local spacing of the main group and the defect probability."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sk_cae import ContrastiveAEDetector
from sk_cae._defect_probability import LOGISTIC_C, DefectForest, DefectProbability
from sk_cae._scores import BruteForceKNN, LatentScorer


def test_knn_returns_neighbour_positions():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(300, 5))
    queries = rng.normal(size=(40, 5))
    distances, index = BruteForceKNN(reference).query(queries, 4, return_index=True)
    measured = np.linalg.norm(reference[index] - queries[:, None, :], axis=2)
    np.testing.assert_allclose(measured, distances, rtol=1e-6)
    expected = np.argsort(
        np.linalg.norm(reference[None] - queries[:, None], axis=2), axis=1
    )[:, :4]
    np.testing.assert_array_equal(index, expected)


def _two_densities(rng):
    """Two copies of a dense cluster, and a third copy ten times as spread
    out, all far apart: the typical spacing is that of the dense rows."""
    dense = rng.normal(0.0, 0.1, size=(400, 2))
    return np.vstack([dense, dense + 20.0, dense * 10 + 50.0])


def test_local_scale_forgives_only_sparse_parts():
    """A row off the sparse cluster gets a d_main several times smaller with
    the local scale. A row off a dense cluster keeps its plain d_main, and no
    row gets a larger one."""
    rng = np.random.default_rng(1)
    main = _two_densities(rng)
    plain = LatentScorer(5).fit(main, np.empty((0, 2)))
    local = LatentScorer(5, local_scale=True).fit(main, np.empty((0, 2)))
    # Near the middle of a dense cluster, where its spacing is below typical.
    off_dense = np.array([[0.03, 0.01]])
    off_sparse = off_dense * 10 + 50.0

    assert local.score(off_dense)[0] == plain.score(off_dense)[0]
    assert plain.score(off_sparse)[0] == pytest.approx(
        10 * plain.score(off_dense)[0], rel=1e-4
    )
    assert local.score(off_sparse)[0] < plain.score(off_sparse)[0] / 3
    rows = rng.uniform(-5.0, 60.0, size=(500, 2))
    assert (local.score(rows) <= plain.score(rows)).all()


def test_local_factor_can_come_from_another_scorer():
    """A factor handed to score() multiplies d_main in place of the scorer's
    own, and return_factor gives back the factor used."""
    rng = np.random.default_rng(4)
    main = _two_densities(rng)
    defects = rng.normal(30.0, 1.0, size=(5, 2))
    plain = LatentScorer(5).fit(main, defects)
    local = LatentScorer(5, local_scale=True).fit(main, defects)
    rows = rng.uniform(-5.0, 60.0, size=(50, 2))
    local_score, factor = local.score(rows, return_factor=True)
    np.testing.assert_array_equal(plain.score(rows, local_factor=factor), local_score)
    assert (factor <= 1.0).all()
    assert (factor < 1.0).any()


def test_local_scale_is_off_for_identical_rows():
    main = np.ones((20, 3))
    scorer = LatentScorer(5, local_scale=True).fit(main, np.zeros((2, 3)))
    assert scorer.main_spacing_ is None
    assert np.isfinite(scorer.score(np.full((3, 3), 2.0))).all()


def test_local_scale_tensor_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    main = _two_densities(rng).astype(np.float32)
    defects = rng.normal(25.0, 1.0, size=(6, 2)).astype(np.float32)
    scorer = LatentScorer(5, local_scale=True).fit(main, defects)
    queries = rng.normal(25.0, 20.0, size=(50, 2)).astype(np.float32)
    tensor = scorer.score_tensor(torch.as_tensor(queries, dtype=torch.float64))
    np.testing.assert_allclose(tensor.numpy(), scorer.score(queries), rtol=1e-5)


def test_defect_probability_matches_scaled_logistic_regression():
    """Folding the standardization into the coefficients changes nothing."""
    rng = np.random.default_rng(3)
    X_main = rng.normal(size=(300, 4)) * [1.0, 10.0, 0.1, 3.0]
    X_defects = rng.normal(1.0, 1.0, size=(12, 4)) * [1.0, 10.0, 0.1, 3.0]
    X = np.vstack([X_main, X_defects]).astype(np.float32)
    y = np.r_[np.zeros(300), np.ones(12)]
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=2000)
    )
    expected = reference.fit(X, y).predict_proba(X)[:, 1]

    model = DefectProbability().fit(X[:300], X[300:])
    np.testing.assert_allclose(model.probability(X), expected, rtol=1e-4, atol=1e-7)


def test_main_weight_counts_like_repeated_rows():
    rng = np.random.default_rng(4)
    X_main = rng.normal(size=(100, 3))
    X_defects = rng.normal(1.5, 1.0, size=(8, 3))
    weighted = DefectProbability().fit(X_main, X_defects, main_weight=3.0)
    repeated = DefectProbability().fit(np.repeat(X_main, 3, axis=0), X_defects)
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, rtol=1e-3)
    assert weighted.intercept_ == pytest.approx(repeated.intercept_, rel=1e-3)


def test_out_of_fold_defects_score_lower():
    """Each defect is scored by a model that did not see it, so it scores
    lower than by the model fitted on every row."""
    rng = np.random.default_rng(5)
    X_main = rng.normal(size=(400, 6))
    X_defects = rng.normal(0.8, 1.0, size=(10, 6))
    model = DefectProbability().fit(X_main, X_defects)
    _, held_out = model.out_of_fold(X_main, X_defects, seed=0)
    assert held_out.shape == (10,)
    assert held_out.mean() < model.probability(X_defects).mean()


def test_single_defect_uses_fitted_model_for_training_rows():
    rng = np.random.default_rng(6)
    X_main, X_defect = rng.normal(size=(50, 2)), np.array([[3.0, 3.0]])
    model = DefectProbability().fit(X_main, X_defect)
    main, defect = model.out_of_fold(X_main, X_defect, seed=0)
    np.testing.assert_allclose(defect, model.probability(X_defect))
    np.testing.assert_allclose(main, model.probability(X_main))


def _with_other_outliers(rng, n_main, n_other, n_defects):
    """Main rows near the origin, a sparse group of other outliers out on
    the first axis, and defects just off the main group on the last."""
    main = rng.normal(size=(n_main, 6))
    other = rng.normal(size=(n_other, 6)) * 2.0 + [6.0, 0, 0, 0, 0, 0]
    defects = rng.normal(size=(n_defects, 6)) + [0, 0, 0, 0, 0, 3.0]
    return main, other, defects


def test_default_score_ranks_defects_above_other_outliers():
    """Unlabeled outliers of another kind in the training rows score below
    new defects with the default score, clearly more often than with the
    plain hybrid score."""
    rng = np.random.default_rng(7)
    main, other, defects = _with_other_outliers(rng, 600, 30, 10)
    X = np.vstack([main, other, defects]).astype(np.float32)
    y = np.r_[np.zeros(630, int), np.ones(10, int)]
    _, other_test, defects_test = _with_other_outliers(rng, 0, 40, 40)
    X_test = np.vstack([other_test, defects_test])
    is_defect = np.r_[np.zeros(40), np.ones(40)]

    auc = {}
    for score_method in ("auto", "hybrid"):
        detector = ContrastiveAEDetector(
            score_method=score_method, max_epochs=20, random_state=0
        ).fit(X, y)
        auc[detector.score_method_] = roc_auc_score(
            is_defect, -detector.score_samples(X_test)
        )
    assert auc["hybrid_logistic"] > 0.95
    assert auc["hybrid_logistic"] > auc["hybrid"] + 0.05


def test_duplicates_keep_scores_finite():
    """A row next to a group of identical main rows gets a finite score with
    the local scale, no larger than without it."""
    rng = np.random.default_rng(8)
    main = np.vstack([rng.normal(size=(100, 4)), np.full((20, 4), 3.0)])
    defects = rng.normal(-4.0, 1.0, size=(10, 4))
    plain = LatentScorer(5).fit(main, defects)
    local = LatentScorer(5, local_scale=True).fit(main, defects)
    rows = np.array([[3.001, 3.0, 3.0, 3.0], [6.0, 6.0, 6.0, 6.0]])
    scores = local.score(rows)
    assert np.isfinite(scores).all()
    d_plain = plain._main_distance(rows, exclude_self=False)
    d_local = local._main_distance(rows, exclude_self=False)
    assert (d_local <= d_plain).all()
    assert d_local[0] == d_plain[0]


def test_single_main_row_fits_with_several_defects():
    X = np.array([[0.0, 0.0], [3.0, 3.0], [3.5, 2.5], [2.5, 3.5]], dtype=np.float32)
    detector = ContrastiveAEDetector(max_epochs=1, random_state=0)
    with pytest.warns(UserWarning, match="labeled defects are the majority"):
        detector.fit(X, [0, 1, 1, 1])
    assert np.isfinite(detector.offset_)


def test_wide_rows_are_searched_in_small_chunks():
    """Wide rows, searched in chunks sized by their width, find their neighbours."""
    reference = np.random.default_rng(9).normal(size=(50, 3000))
    knn = BruteForceKNN(reference)
    queries = reference[:40] + 0.01
    distances, index = knn.query(queries, 1, return_index=True)
    np.testing.assert_array_equal(index[:, 0], np.arange(40))
    assert distances.shape == (40, 1)


def _forest_data(seed):
    rng = np.random.default_rng(seed)
    X_main = rng.normal(size=(500, 6))
    # Defects differ in two features at once, which a tree finds.
    X_defects = rng.normal(size=(12, 6)) + [2.5, -2.5, 0, 0, 0, 0]
    return rng, X_main, X_defects


def test_forest_arrays_give_scikit_learn_probabilities():
    """Walking the stored arrays gives the fitted forest's probabilities,
    including for rows that sit exactly on a threshold."""
    rng, X_main, X_defects = _forest_data(10)
    forest = DefectForest(0).fit(X_main, X_defects)
    rows = rng.normal(size=(300, 6)).astype(np.float32) * 2
    split = forest.trees_["left"] != np.arange(len(forest.trees_["left"]))
    features = forest.trees_["feature"][split][:20]
    rows[np.arange(20), features] = forest.trees_["threshold"][split][:20]
    expected = forest.forest_.predict_proba(rows)[:, 1]
    rebuilt = DefectForest.from_arrays(forest.trees_, n_features=6)
    np.testing.assert_array_equal(forest.probability(rows), expected)
    np.testing.assert_array_equal(rebuilt.probability(rows), expected)
    assert 0.0 < expected.max() <= 1.0


def _share_child(trees):
    """Point the root's left child at the node its right child points to."""
    trees["left"][0] = trees["right"][0]


def _second_parent(trees):
    """Give a grandchild a second parent by swapping in another subtree."""
    inner = np.flatnonzero(trees["left"] != np.arange(len(trees["left"])))
    trees["left"][inner[1]] = trees["right"][inner[2]]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t["left"].__setitem__(0, 0),
            "node 0 of the forest has the children",
        ),
        (_share_child, "two different children"),
        (_second_parent, r"is a child of \d nodes; expected 1"),
        (lambda t: t["feature"].__setitem__(0, 6), "has the feature 6"),
        (lambda t: t["right"].__setitem__(0, 10**6), "has the children"),
        (lambda t: t["value"].__setitem__(-1, 2.0), "has the value 2.0"),
        (lambda t: t["depth"].__setitem__(0, 0), "'depth' is \\[0\\]"),
        (lambda t: t.__setitem__("roots", t["roots"][::-1].copy()), "must start at"),
        (lambda t: t.__setitem__("roots", t["roots"][1:].copy()), "must start at"),
        (lambda t: t.pop("roots"), "lacks the arrays"),
    ],
)
def test_inconsistent_forest_arrays_are_rejected(change, message):
    _, X_main, X_defects = _forest_data(11)
    trees = {
        name: value.copy()
        for name, value in DefectForest(0).fit(X_main, X_defects).trees_.items()
    }
    change(trees)
    with pytest.raises(ValueError, match=message):
        DefectForest.from_arrays(trees, n_features=6)


def test_default_probability_is_mean_of_regression_and_forest():
    rng, X_main, X_defects = _forest_data(12)
    X = np.vstack([X_main, X_defects]).astype(np.float32)
    y = np.r_[np.zeros(len(X_main)), np.ones(len(X_defects))]
    detector = ContrastiveAEDetector(max_epochs=2, random_state=0).fit(X, y)
    rows = rng.normal(size=(50, 6)).astype(np.float32)
    expected = (
        detector._defect_probability.probability(rows)
        + detector._defect_forest.probability(rows)
    ) / 2
    np.testing.assert_array_equal(detector._defect_probabilities(rows), expected)


def test_forest_out_of_bag_defects_score_lower():
    """Each training row's out-of-bag probability comes from trees that did
    not draw it, so the labeled defects score lower than by the whole forest."""
    _, X_main, X_defects = _forest_data(13)
    forest = DefectForest(0).fit(X_main, X_defects)
    main, defects = forest.out_of_bag(X_main, X_defects)
    assert main.shape == (len(X_main),)
    assert defects.shape == (len(X_defects),)
    assert np.isfinite(main).all()
    assert np.isfinite(defects).all()
    assert defects.mean() < forest.probability(X_defects).mean() - 0.1
    assert defects.mean() > main.mean() + 0.3

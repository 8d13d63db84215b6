"""Tests of ContrastiveAEDetector.feature_contributions on planted defects."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sk_cae import ContrastiveAEDetector
from sk_cae._scores import LatentScorer

SHIFTED = 2
SHIFT = 4.0


def _manifold_rows(rng, n_rows, weights):
    """Rows on a 2-D plane in 6-D space plus a little noise, each feature of
    unit scale, so that an autoencoder reconstructs them well."""
    rows = rng.normal(size=(n_rows, 2)) @ weights
    rows += 0.1 * rng.normal(size=rows.shape)
    return rows.astype(np.float32)


def _shift(rows):
    shifted = rows.copy()
    shifted[:, SHIFTED] += SHIFT
    return shifted


@pytest.fixture(scope="module")
def data():
    """Training rows with 12 labeled defects made by shifting one feature, and
    20 unseen test rows with the same fault."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(2, 6))
    weights /= np.linalg.norm(weights, axis=0)
    X_main = _manifold_rows(rng, 400, weights)
    X = np.vstack([X_main, _shift(X_main[:12])])
    y = np.r_[np.zeros(400), np.ones(12)].astype(int)
    X_test = _shift(_manifold_rows(rng, 20, weights))
    return X, y, X_test


@pytest.fixture(scope="module")
def fitted(data):
    X, y, _ = data
    detectors = {
        score_method: ContrastiveAEDetector(
            score_method=score_method, max_epochs=30, random_state=0
        ).fit(X, y)
        for score_method in ("latent", "combined", "hybrid", "hybrid_logistic")
    }
    detectors["reconstruction"] = ContrastiveAEDetector(
        latent_dim=2, max_epochs=30, random_state=0
    ).fit(X)
    return detectors


@pytest.mark.parametrize(
    "score_method",
    ["latent", "reconstruction", "combined", "hybrid", "hybrid_logistic"],
)
def test_shifted_feature_explains_the_score(fitted, data, score_method):
    """A defect made by shifting one feature is explained by that feature."""
    _, _, X_test = data
    detector = fitted[score_method]
    assert detector.score_method_ == score_method
    contributions = detector.feature_contributions(X_test)
    assert contributions.shape == X_test.shape
    top_feature = contributions.argmax(axis=1)
    assert (top_feature == SHIFTED).mean() >= 0.9


def test_reconstruction_contributions_sum_to_score(fitted, data):
    _, _, X_test = data
    detector = fitted["reconstruction"]
    contributions = detector.feature_contributions(X_test)
    assert (contributions >= 0).all()
    assert np.allclose(
        contributions.sum(axis=1), -detector.score_samples(X_test), rtol=1e-5
    )


def test_latent_contributions_sum_to_score_difference(fitted, data):
    """Integrated gradients add up to the score minus the baseline's score."""
    _, _, X_test = data
    detector = fitted["latent"]
    baseline = np.median(X_test, axis=0) - 1.0
    contributions = detector.feature_contributions(
        X_test, baseline=baseline, n_steps=400
    )
    gap = -detector.score_samples(X_test) + detector.score_samples(baseline[None])
    assert np.abs(contributions.sum(axis=1) - gap).max() < 0.02


@pytest.mark.parametrize("score_method", ["combined", "hybrid", "hybrid_logistic"])
def test_contributions_sum_to_score_difference(fitted, data, score_method):
    """The sums match the score gaps up to the midpoint rule's error. The
    local factor of "hybrid_logistic" jumps where a row's neighbours change
    along the path, which the gradients miss, so its sums are looser."""
    X, y, X_test = data
    detector = fitted[score_method]
    contributions = detector.feature_contributions(X_test, n_steps=400)
    baseline = np.median(X[y == 0], axis=0)
    gap = -detector.score_samples(X_test) + detector.score_samples(baseline[None])
    spread = np.ptp(-detector.score_samples(X_test))
    error = np.abs(contributions.sum(axis=1) - gap)
    if score_method == "hybrid_logistic":
        assert error.max() < 0.2 * np.abs(gap).max()
        assert np.median(error) < 0.1 * np.abs(gap).max()
    else:
        assert error.max() < 0.02 * spread


def test_per_row_baseline_equal_to_rows_gives_zero(fitted, data):
    _, _, X_test = data
    contributions = fitted["latent"].feature_contributions(X_test, baseline=X_test)
    assert np.array_equal(contributions, np.zeros_like(contributions))


def test_default_baseline_is_main_group_median(fitted, data):
    X, y, X_test = data
    detector = fitted["latent"]
    default = detector.feature_contributions(X_test)
    explicit = detector.feature_contributions(
        X_test, baseline=np.median(X[y == 0], axis=0)
    )
    assert np.allclose(default, explicit)


def test_differentiable_latent_score_matches_kdtree_score():
    rng = np.random.default_rng(0)
    main = rng.normal(size=(50, 3)).astype(np.float32)
    defects = rng.normal(3, 1, size=(5, 3)).astype(np.float32)
    rows = rng.normal(1, 2, size=(20, 3)).astype(np.float32)
    for reference_defects in (defects, defects[:0]):
        scorer = LatentScorer(n_neighbors=4).fit(main, reference_defects)
        tensor_score = scorer.score_tensor(torch.as_tensor(rows, dtype=torch.float64))
        assert np.allclose(tensor_score.numpy(), scorer.score(rows), rtol=1e-6)


def test_dataframe_columns_keep_their_names(data):
    pd = pytest.importorskip("pandas")
    X, y, X_test = data
    names = [f"sensor_{i}" for i in range(X.shape[1])]
    detector = ContrastiveAEDetector(max_epochs=2, random_state=0).fit(
        pd.DataFrame(X, columns=names), y
    )
    frame = pd.DataFrame(
        detector.feature_contributions(pd.DataFrame(X_test, columns=names)),
        columns=detector.feature_names_in_,
    )
    assert list(frame.columns) == names
    assert frame.shape == X_test.shape


def test_inputs_are_not_modified(fitted, data):
    _, _, X_test = data
    X_copy = X_test.copy()
    baseline = np.zeros(X_test.shape[1], dtype=np.float32)
    fitted["latent"].feature_contributions(X_test, baseline=baseline)
    assert np.array_equal(X_test, X_copy)
    assert np.array_equal(baseline, np.zeros(X_test.shape[1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_steps": 0}, "n_steps must be an integer >= 1; got 0"),
        ({"n_steps": 2.5}, "n_steps must be an integer >= 1; got 2.5"),
        ({"n_steps": True}, "n_steps must be an integer >= 1; got True"),
        ({"baseline": np.zeros(5)}, r"baseline must have shape \(6,\) or \(20, 6\)"),
        ({"baseline": np.zeros((3, 6))}, r"got shape \(3, 6\)"),
        ({"baseline": np.full(6, np.nan)}, "baseline contains 6 NaN or infinite"),
    ],
)
def test_invalid_arguments_raise(fitted, data, kwargs, match):
    _, _, X_test = data
    with pytest.raises(ValueError, match=match):
        fitted["latent"].feature_contributions(X_test, **kwargs)


def test_wrong_number_of_features_raises(fitted, data):
    _, _, X_test = data
    with pytest.raises(ValueError, match="features"):
        fitted["latent"].feature_contributions(X_test[:, :4])


def test_unfitted_detector_raises(data):
    _, _, X_test = data
    with pytest.raises(NotFittedError):
        ContrastiveAEDetector().feature_contributions(X_test)


def test_forest_contributions_sum_exactly_to_its_change(fitted, data):
    """The forest's shares sum to its change in probability from the
    baseline to each row, and only features its trees split on get one."""
    from sk_cae._explain import forest_contributions

    X, y, X_test = data
    forest = fitted["hybrid_logistic"]._defect_forest
    baseline = np.broadcast_to(np.median(X[y == 0], axis=0), X_test.shape)
    shares = forest_contributions(forest, X_test, baseline)
    change = forest.probability(X_test) - forest.probability(baseline)
    np.testing.assert_allclose(shares.sum(axis=1), change, atol=1e-12)
    assert np.abs(change).max() > 0.5
    trees = forest.trees_
    split = trees["left"] != np.arange(len(trees["left"]))
    unused = np.setdiff1d(np.arange(X.shape[1]), trees["feature"][split])
    assert (shares[:, unused] == 0).all()
    # The planted fault is in one feature, which gets the largest share.
    assert (shares.mean(axis=0).argmax()) == SHIFTED

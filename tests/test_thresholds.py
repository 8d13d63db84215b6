"""Tests of ContrastiveAEDetector.set_threshold: targets, predict, errors."""

import copy
import math

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from sk_cae import ContrastiveAEDetector


def _rows(rng, n_main, n_defects):
    """Main rows around the origin and defects spread from 1.5 to 4 away."""
    X_main = rng.normal(size=(n_main, 4))
    X_defect = (
        rng.normal(size=(n_defects, 4)) * 0.5
        + np.linspace(1.5, 4.0, n_defects)[:, None]
    )
    X = np.vstack([X_main, X_defect]).astype(np.float32)
    y = np.r_[np.zeros(n_main), np.ones(n_defects)].astype(int)
    return X, y


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X, y = _rows(rng, 300, 12)
    detector = ContrastiveAEDetector(max_epochs=10, random_state=0).fit(X, y)
    X_valid, y_valid = _rows(rng, 200, 20)
    return detector, X_valid, y_valid


@pytest.fixture
def detector(fitted):
    """A fresh copy of the fitted detector, so that tests can move its threshold."""
    return copy.deepcopy(fitted[0])


@pytest.fixture
def valid(fitted):
    return fitted[1], fitted[2]


@pytest.mark.parametrize("recall", [0.5, 0.7, 0.85, 1.0])
def test_recall_target_met(detector, valid, recall):
    X, y = valid
    detector.set_threshold(X, y, recall=recall)
    flagged = detector.predict(X) == -1
    achieved = flagged[y == 1].mean()
    assert achieved >= recall
    assert flagged[y == 1].sum() == math.ceil(recall * (y == 1).sum() - 1e-9)


@pytest.mark.parametrize("recall", [0.5, 0.85, 1.0])
def test_recall_threshold_is_highest_that_meets_target(detector, valid, recall):
    """Raising the threshold to the lowest flagged defect misses the target."""
    X, y = valid
    detector.set_threshold(X, y, recall=recall)
    anomaly = -detector.score_samples(X)
    flagged = detector.predict(X) == -1
    lowest_flagged_defect = anomaly[flagged & (y == 1)].min()
    assert (anomaly[y == 1] > lowest_flagged_defect).mean() < recall
    # No row between the threshold and that defect: every row scored at least
    # as high is flagged, every lower row is not.
    assert np.array_equal(flagged, anomaly >= lowest_flagged_defect)


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.25])
def test_false_alarm_rate_on_rows_without_defects(detector, valid, rate):
    X, y = valid
    X_normal = X[y == 0]
    detector.set_threshold(X_normal, false_alarm_rate=rate)
    anomaly = -detector.score_samples(X_normal)
    flagged = detector.predict(X_normal) == -1
    assert flagged.mean() <= rate
    assert flagged.sum() == math.floor(rate * len(X_normal) + 1e-9)
    # The threshold is the lowest that meets the target: flagging the highest
    # unflagged row as well would exceed it.
    highest_unflagged = anomaly[~flagged].max()
    assert (anomaly >= highest_unflagged).mean() > rate


def test_false_alarm_rate_counts_only_normal_rows(detector, valid):
    X, y = valid
    detector.set_threshold(X, y, false_alarm_rate=0.05)
    flagged = detector.predict(X) == -1
    assert flagged[y == 0].sum() == math.floor(0.05 * (y == 0).sum())
    assert flagged[y == 1].sum() > 0


@pytest.mark.parametrize("contamination", [0.05, 0.2, 0.5])
def test_contamination_flags_that_fraction(detector, valid, contamination):
    X, y = valid
    detector.set_threshold(X, contamination=contamination)
    anomaly = -detector.score_samples(X)
    assert detector.offset_ == pytest.approx(
        -np.percentile(anomaly, 100 * (1 - contamination))
    )
    flagged = detector.predict(X) == -1
    assert flagged.mean() == pytest.approx(contamination, abs=1 / len(X))


def test_contamination_auto_follows_documented_rule(detector, valid):
    """99th percentile of normal rows, or halfway to the defects' median."""
    X, y = valid
    detector.set_threshold(X, y, contamination="auto")
    anomaly = -detector.score_samples(X)
    main_percentile = np.percentile(anomaly[y == 0], 99)
    defect_median = np.median(anomaly[y == 1])
    expected = max(main_percentile, (main_percentile + defect_median) / 2)
    assert detector.offset_ == pytest.approx(-expected)


def test_contamination_auto_without_labels_uses_percentile(detector, valid):
    X, y = valid
    detector.set_threshold(X[y == 0], contamination="auto")
    anomaly = -detector.score_samples(X[y == 0])
    assert detector.offset_ == pytest.approx(-np.percentile(anomaly, 99))


def test_predict_and_decision_follow_new_threshold(detector, valid):
    X, y = valid
    before = detector.predict(X)
    returned = detector.set_threshold(X, y, recall=1.0)
    assert returned is detector
    decision = detector.decision_function(X)
    assert np.allclose(decision, detector.score_samples(X) - detector.offset_)
    assert np.array_equal(detector.predict(X) == -1, decision < 0)
    assert (detector.predict(X) == -1).sum() >= (before == -1).sum()


def test_set_threshold_keeps_model_and_inputs(detector, valid):
    X, y = valid
    X_copy, y_copy = X.copy(), y.copy()
    scores = detector.score_samples(X)
    detector.set_threshold(X, y, recall=0.9)
    assert np.array_equal(detector.score_samples(X), scores)
    assert np.array_equal(X, X_copy)
    assert np.array_equal(y, y_copy)


def test_defect_label_is_respected(valid):
    X, y = valid
    labels = np.where(y == 1, "scratch", "ok")
    detector = ContrastiveAEDetector(
        max_epochs=3, defect_label="scratch", random_state=0
    ).fit(X, labels)
    detector.set_threshold(X, labels, recall=1.0)
    assert (detector.predict(X)[labels == "scratch"] == -1).all()


@pytest.mark.parametrize(
    "targets, match",
    [
        ({}, "exactly one of recall, false_alarm_rate or contamination; got none"),
        (
            {"recall": 0.9, "contamination": 0.1},
            "exactly one .* got recall=0.9, contamination=0.1",
        ),
        ({"recall": 0.0}, r"recall must be a number in \(0, 1\]; got 0.0"),
        ({"recall": 1.5}, r"recall must be a number in \(0, 1\]; got 1.5"),
        ({"recall": True}, r"recall must be a number in \(0, 1\]; got True"),
        ({"recall": float("nan")}, r"recall must be a number in \(0, 1\]; got nan"),
        (
            {"false_alarm_rate": 1.0},
            r"false_alarm_rate must be a number in \[0, 1\); got 1.0",
        ),
        (
            {"false_alarm_rate": -0.1},
            r"false_alarm_rate must be a number in \[0, 1\); got -0.1",
        ),
        (
            {"contamination": 0.7},
            r"contamination must be a number in \(0, 0.5\]; got 0.7",
        ),
        (
            {"contamination": "high"},
            r"contamination must be 'auto' or a number in \(0, 0.5\]; got 'high'",
        ),
    ],
)
def test_invalid_targets_raise(detector, valid, targets, match):
    X, y = valid
    offset = detector.offset_
    with pytest.raises(ValueError, match=match):
        detector.set_threshold(X, y, **targets)
    assert detector.offset_ == offset


def test_recall_without_labels_raises(detector, valid):
    X, _ = valid
    with pytest.raises(ValueError, match="recall needs defect labels.*got y=None"):
        detector.set_threshold(X, recall=0.9)


def test_recall_without_defect_rows_raises(detector, valid):
    X, y = valid
    with pytest.raises(ValueError, match="y contains no row equal to defect_label=1"):
        detector.set_threshold(X[y == 0], y[y == 0], recall=0.9)


def test_false_alarm_rate_with_only_defects_raises(detector, valid):
    X, y = valid
    with pytest.raises(ValueError, match="needs rows known to be normal"):
        detector.set_threshold(X[y == 1], y[y == 1], false_alarm_rate=0.1)


def test_y_of_wrong_length_raises(detector, valid):
    X, y = valid
    with pytest.raises(ValueError, match=f"y has {len(y) - 1} rows but X has"):
        detector.set_threshold(X, y[1:], recall=0.9)


def test_y_with_nan_raises(detector, valid):
    X, y = valid
    y = y.astype(float)
    y[0] = np.nan
    with pytest.raises(ValueError, match="y contains 1 NaN values"):
        detector.set_threshold(X, y, recall=0.9)


def test_unfitted_detector_raises(valid):
    X, y = valid
    with pytest.raises(NotFittedError):
        ContrastiveAEDetector().set_threshold(X, y, recall=0.9)


def test_wrong_number_of_features_raises(detector, valid):
    X, y = valid
    with pytest.raises(ValueError, match="features"):
        detector.set_threshold(X[:, :3], y, recall=0.9)


def test_sampled_main_rows_count_with_their_weight():
    """A sample of main rows weighted by 3 sets the threshold that the rows
    repeated three times would."""
    from sk_cae._thresholds import contamination_threshold

    rng = np.random.default_rng(0)
    main, defects = rng.normal(size=200), rng.normal(3.0, 1.0, size=40)
    anomaly = np.r_[main, defects]
    is_defect = np.r_[np.zeros(200, bool), np.ones(40, bool)]
    repeated = np.r_[np.repeat(main, 3), defects]
    for contamination in (0.01, 0.1, 0.3):
        weighted = contamination_threshold(
            anomaly, is_defect, contamination, main_weight=3.0
        )
        expected = np.percentile(
            repeated, 100 * (1 - contamination), method="inverted_cdf"
        )
        assert weighted == pytest.approx(expected)
    # Unweighted, the 40 defects would take most of the top 10 percent.
    assert contamination_threshold(anomaly, is_defect, 0.1) > weighted


def test_threshold_from_reference_sample_flags_contamination(monkeypatch):
    """With more main rows than the reference sample holds, a float
    contamination still flags about that fraction of the training rows."""
    monkeypatch.setattr("sk_cae._detector.MAX_REFERENCE_ROWS", 150)
    rng = np.random.default_rng(1)
    X, y = _rows(rng, 1500, 10)
    detector = ContrastiveAEDetector(
        max_epochs=3, contamination=0.1, random_state=0
    ).fit(X, y)
    assert len(detector._reference_index) == 150
    assert detector._latent_scorer.n_main_ == 150
    flagged = np.mean(detector.predict(X) == -1)
    assert 0.06 < flagged < 0.14

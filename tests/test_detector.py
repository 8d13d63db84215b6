"""Tests of ContrastiveAEDetector: the outlier contract, training and errors."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sk_cae import (
    ContrastiveAEDetector,
    NonFiniteLossError,
    defect_average_precision,
    defect_roc_auc,
)
from sk_cae._detector import _denormals_flushed
from sk_cae.datasets import load_digits_scenario

FAST = {"max_epochs": 5, "random_state": 0}


def test_outlier_contract_signs_agree(blobs):
    """score_samples, decision_function and predict agree on the sign."""
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    scores = detector.score_samples(X)
    decision = detector.decision_function(X)
    assert np.allclose(decision, scores - detector.offset_)
    predicted = detector.predict(X)
    assert set(np.unique(predicted)) <= {-1, 1}
    assert np.array_equal(predicted == -1, decision < 0)


def test_defects_score_lower_than_main_group(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(max_epochs=20, random_state=0).fit(X, y)
    scores = detector.score_samples(X)
    assert roc_auc_score(y, -scores) > 0.95


def test_fit_predict_matches_fit_then_predict(blobs):
    X, y = blobs
    labels = ContrastiveAEDetector(**FAST).fit_predict(X, y)
    expected = ContrastiveAEDetector(**FAST).fit(X, y).predict(X)
    assert np.array_equal(labels, expected)


def test_fitted_attributes(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    assert detector.n_features_in_ == 4
    assert detector.n_defects_ == 12
    assert detector.score_method_ == "hybrid_logistic"
    assert len(detector.net_.history) == 5
    assert np.isfinite(detector.offset_)


def test_history_records_each_loss_component(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    for name in (
        "train_loss",
        "train_reconstruction",
        "train_repulsion",
        "train_compactness",
    ):
        values = detector.net_.history[:, name]
        assert len(values) == 5
        assert np.isfinite(values).all()
    assert (
        detector.net_.history[-1, "train_reconstruction"]
        < (detector.net_.history[0, "train_reconstruction"])
    )


def test_every_step_sees_defects(blobs):
    """With 300 main rows, 2 defects and batches of 32, every batch holds both."""
    X, y = blobs
    y = y.copy()
    y[np.flatnonzero(y)[2:]] = 0
    detector = ContrastiveAEDetector(
        contrast="squared", max_epochs=2, batch_size=32, random_state=0
    )
    detector.fit(X, y)
    batches = detector.net_.history[-1, "batches"]
    assert len(batches) == -(-(len(X) - 2) // 32)
    # Batch sizes count the main rows plus the two defects of each step.
    sizes = [batch["train_batch_size"] for batch in batches]
    assert sizes[:-1] == [34] * (len(sizes) - 1)
    # The squared repulsion is negative whenever a batch holds defects.
    assert all(batch["train_repulsion"] < 0 for batch in batches)


def test_pipeline_with_feature_names(blobs):
    pd = pytest.importorskip("pandas")
    X, y = blobs
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    pipeline = make_pipeline(StandardScaler(), ContrastiveAEDetector(**FAST))
    pipeline.fit(frame, y)
    assert pipeline.predict(frame).shape == (len(X),)
    detector = ContrastiveAEDetector(**FAST).fit(frame, y)
    assert list(detector.feature_names_in_) == ["a", "b", "c", "d"]


def test_grid_search_uses_defect_average_precision(blobs):
    X, y = blobs
    search = GridSearchCV(
        ContrastiveAEDetector(max_epochs=3, random_state=0),
        {"latent_dim": [2, 4]},
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    search.fit(X, y)
    assert search.best_params_["latent_dim"] in (2, 4)
    best = search.best_estimator_
    assert search.best_score_ == pytest.approx(
        np.mean(
            [
                search.cv_results_[f"split{i}_test_score"][search.best_index_]
                for i in range(3)
            ]
        )
    )
    assert 0.0 <= best.score(X, y) <= 1.0


@pytest.mark.parametrize("scorer", [defect_average_precision, defect_roc_auc])
def test_shipped_scorers_in_grid_search(blobs, scorer):
    X, y = blobs
    search = GridSearchCV(
        make_pipeline(StandardScaler(), ContrastiveAEDetector(**FAST)),
        {"contrastiveaedetector__margin": [0.5, 1.0]},
        scoring=scorer,
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    search.fit(X, y)
    assert search.best_score_ > 0.8


def test_scorers_use_defect_label():
    X = np.r_[np.zeros((50, 2)), np.full((5, 2), 5.0)].astype(np.float32)
    X += np.random.default_rng(0).normal(scale=0.1, size=X.shape)
    y = np.r_[np.ones(50), -np.ones(5)]
    detector = ContrastiveAEDetector(defect_label=-1, **FAST).fit(X, y)
    assert defect_roc_auc(detector, X, y) == pytest.approx(1.0)
    assert defect_average_precision(detector, X, y) == pytest.approx(1.0)
    assert detector.score(X, y) == pytest.approx(1.0)


def test_plain_autoencoder_without_labels(blobs):
    X, _ = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X)
    assert detector.n_defects_ == 0
    assert detector.score_method_ == "reconstruction"
    assert detector.net_.history[-1, "train_repulsion"] == 0.0
    # "auto" flags about 1 % of the training rows without labels.
    assert np.mean(detector.predict(X) == -1) == pytest.approx(0.01, abs=0.005)


@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_float_contamination_flags_that_fraction_of_new_rows(contamination):
    """The threshold comes from training rows scored without themselves as
    neighbours, so it flags about that fraction of new rows of the same kind."""

    def sample(seed, n_main):
        rng = np.random.default_rng(seed)
        n_defect = n_main // 25
        X = np.vstack(
            [rng.normal(size=(n_main, 4)), rng.normal(4.0, 0.5, size=(n_defect, 4))]
        )
        return X, np.r_[np.zeros(n_main), np.ones(n_defect)]

    X, y = sample(0, 500)
    detector = ContrastiveAEDetector(contamination=contamination, **FAST).fit(X, y)
    X_new, _ = sample(1, 5000)
    flagged = np.mean(detector.predict(X_new) == -1)
    assert flagged == pytest.approx(contamination, abs=0.03)


@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_float_contamination_flags_that_fraction_of_training_rows(blobs, contamination):
    """With the reconstruction score no row is its own neighbour, so exactly
    that fraction of the training rows is flagged."""
    X, y = blobs
    detector = ContrastiveAEDetector(
        contamination=contamination, score_method="reconstruction", **FAST
    ).fit(X, y)
    flagged = np.mean(detector.predict(X) == -1)
    assert flagged == pytest.approx(contamination, abs=1 / len(X))


@pytest.mark.parametrize(
    "score_method", ["reconstruction", "latent", "combined", "hybrid"]
)
@pytest.mark.parametrize("contrast", ["hinge", "squared"])
def test_forms_and_score_methods_train(blobs, score_method, contrast):
    X, y = blobs
    detector = ContrastiveAEDetector(
        contrast=contrast, score_method=score_method, **FAST
    ).fit(X, y)
    scores = detector.score_samples(X)
    assert np.isfinite(scores).all()
    assert detector.score_method_ == score_method


def test_squared_form_uses_bounded_latent(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(contrast="squared", **FAST).fit(X, y)
    latent = detector.net_.module_.encode(torch.as_tensor(X * 100))
    assert latent.abs().max() <= 1.0


def test_output_space_contrast_trains(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(
        contrast_space="output", max_epochs=20, random_state=0
    ).fit(X, y)
    assert roc_auc_score(y, -detector.score_samples(X)) > 0.9


def test_early_stopping_keeps_defects_in_validation(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(
        early_stopping=True, n_iter_no_change=2, max_epochs=200, random_state=0
    ).fit(X, y)
    history = detector.net_.history
    assert len(history) < 200
    assert all(np.isfinite(history[:, "valid_loss"]))
    # A stratified split leaves defects in the validation set, so the
    # validation repulsion is measured.
    assert history[0, "valid_repulsion"] > 0


def test_same_random_state_gives_identical_scores(blobs):
    X, y = blobs
    first = ContrastiveAEDetector(**FAST).fit(X, y).score_samples(X)
    second = ContrastiveAEDetector(**FAST).fit(X, y).score_samples(X)
    assert np.array_equal(first, second)
    other = ContrastiveAEDetector(max_epochs=5, random_state=1).fit(X, y)
    assert not np.array_equal(first, other.score_samples(X))


def test_fit_leaves_global_random_state_alone(blobs):
    X, y = blobs
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.random.get_rng_state().clone()
    ContrastiveAEDetector(**FAST).fit(X, y)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)


def test_fit_restores_flush_denormal_setting(blobs):
    X, y = blobs
    assert not _denormals_flushed()
    ContrastiveAEDetector(contrast="squared", **FAST).fit(X, y)
    assert not _denormals_flushed()


def test_pickle_round_trip_gives_identical_scores(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    restored = pickle.loads(pickle.dumps(detector))
    assert np.array_equal(restored.score_samples(X), detector.score_samples(X))
    assert restored.offset_ == detector.offset_


def test_clone_keeps_parameters():
    detector = ContrastiveAEDetector(
        hidden_layer_sizes=(16,), margin=2.0, random_state=3
    )
    cloned = clone(detector)
    assert cloned.get_params() == detector.get_params()
    assert cloned.hidden_layer_sizes == (16,)


def test_fit_does_not_modify_input(blobs):
    X, y = blobs
    X_before, y_before = X.copy(), y.copy()
    ContrastiveAEDetector(**FAST).fit(X, y)
    assert np.array_equal(X, X_before)
    assert np.array_equal(y, y_before)


def test_contrast_separates_defects_from_other_outliers_on_digits():
    """On digits (9 = defect, 7 and 8 = other outliers) the contrastive model
    ranks defects above other outliers where a plain autoencoder does not."""
    split = load_digits_scenario(seed=0)
    outlier = split.role_test != "normal"
    is_defect = split.role_test[outlier] == "defect"
    auc = {}
    for name, labels in (("plain", None), ("contrastive", split.y_train)):
        model = make_pipeline(
            StandardScaler(), ContrastiveAEDetector(max_epochs=60, random_state=0)
        ).fit(split.X_train, labels)
        anomaly = -model.score_samples(split.X_test[outlier])
        auc[name] = roc_auc_score(is_defect, anomaly)
    assert auc["contrastive"] > 0.8
    assert auc["contrastive"] > auc["plain"] + 0.2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises_at_fit(blobs, value):
    X, y = blobs
    X = X.copy()
    X[3, 1] = value
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        ContrastiveAEDetector(**FAST).fit(X, y)


def test_non_finite_input_raises_at_score(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    X = X.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        detector.score_samples(X)


def test_wrong_number_of_features_at_predict(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but .* expecting 4"):
        detector.predict(X[:, :3])


def test_y_of_wrong_length_raises(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="y has 311 rows but X has 312"):
        ContrastiveAEDetector(**FAST).fit(X, y[:-1])


def test_two_dimensional_y_raises(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match=r"y must be 1-dimensional.*\(312, 2\)"):
        ContrastiveAEDetector(**FAST).fit(X, np.c_[y, y])


def test_y_with_nan_raises(blobs):
    X, y = blobs
    y = y.astype(float)
    y[5] = np.nan
    with pytest.raises(ValueError, match="y contains 1 NaN values"):
        ContrastiveAEDetector(**FAST).fit(X, y)


def test_no_defects_in_y_warns_and_trains_plain(blobs):
    X, _ = blobs
    y = np.zeros(len(X))
    with pytest.warns(UserWarning, match=r"no row equal to defect_label=1.*\[0\.0\]"):
        detector = ContrastiveAEDetector(**FAST).fit(X, y)
    assert detector.n_defects_ == 0
    assert detector.score_method_ == "reconstruction"


def test_majority_of_defects_warns(blobs):
    X, y = blobs
    with pytest.warns(UserWarning, match="labeled defects are the majority"):
        ContrastiveAEDetector(**FAST).fit(X, 1 - y + 2 * y)


def test_plus_minus_one_labels_warn(blobs):
    X, y = blobs
    with pytest.warns(UserWarning, match="pass defect_label=-1"):
        ContrastiveAEDetector(**FAST).fit(X, np.where(y == 1, -1, 1))


def test_all_defects_raises(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="Every row of y equals defect_label=1"):
        ContrastiveAEDetector(**FAST).fit(X, np.ones(len(X)))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"margin": 0}, "'margin' parameter .* must be a float in the range"),
        ({"latent_dim": -2}, "'latent_dim' parameter"),
        ({"contrast": "cubic"}, "'contrast' parameter"),
        ({"score_method": "magic"}, "'score_method' parameter"),
        ({"contamination": 0.7}, "'contamination' parameter"),
        (
            {"hidden_layer_sizes": (8, -1)},
            r"hidden_layer_sizes must contain "
            r"positive integers, got \(8, -1\)",
        ),
    ],
)
def test_invalid_parameters_raise(blobs, params, match):
    X, y = blobs
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**params).fit(X, y)


def test_score_without_labels_raises(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="score needs the labels y"):
        detector.score(X, None)


def test_diverging_loss_stops_with_clear_error(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(
        lr=1e12, optimizer="sgd", max_epochs=5, random_state=0
    )
    with pytest.raises(NonFiniteLossError, match=r"epoch 1.*lr=1e\+12.*standardize"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector.fit(X * 1e3, y)
    assert not hasattr(detector, "net_")
    assert not hasattr(detector, "offset_")


def test_score_without_defects_in_y_raises(blobs):
    X, y = blobs
    detector = ContrastiveAEDetector(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="use StratifiedKFold"):
        detector.score(X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="defect score is undefined"):
        defect_roc_auc(detector, X, np.zeros(len(X)))

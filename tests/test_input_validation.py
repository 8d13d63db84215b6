"""Hostile and unusual input: every bad value raises an error that names it,
every odd but valid one is handled, and nothing passed in is modified."""

import warnings

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sk_cae._validation
from sk_cae import ContrastiveAEDetector

SMALL = {
    "hidden_layer_sizes": (8,),
    "latent_dim": 2,
    "max_epochs": 2,
    "batch_size": 32,
    "random_state": 0,
}


def _data(n_main=54, n_defects=6, n_features=4, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack(
        [
            rng.normal(size=(n_main, n_features)),
            rng.normal(3.0, 0.5, size=(n_defects, n_features)),
        ]
    )
    y = np.r_[np.zeros(n_main, dtype=int), np.ones(n_defects, dtype=int)]
    return X, y


@pytest.fixture(scope="module")
def fitted():
    """One small detector fitted on float64 data, shared by score-time tests."""
    X, y = _data()
    return ContrastiveAEDetector(**SMALL).fit(X, y), X


@pytest.fixture(scope="module")
def fitted_on_frame():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=["width", "height", "depth", "mass"])
    return ContrastiveAEDetector(**SMALL).fit(frame, y), frame


# ------------------------------------------------------------- shape of X


@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (5, 0)])
def test_too_small_X_raises_at_fit(shape):
    match = r"Found array with \d+ (sample|feature)\(s\) \(shape=\(\d+, \d+\)\)"
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(np.zeros(shape))


def test_empty_X_raises_at_score(fitted):
    detector, _ = fitted
    with pytest.raises(ValueError, match=r"0 sample\(s\) \(shape=\(0, 4\)\)"):
        detector.score_samples(np.zeros((0, 4)))


def test_single_row_scores(fitted):
    detector, X = fitted
    scores = detector.score_samples(X[:1])
    assert scores.shape == (1,)
    assert np.isfinite(scores).all()


def test_two_rows_train():
    """Two rows, the minimum, train and score."""
    X, _ = _data()
    detector = ContrastiveAEDetector(**SMALL).fit(X[:2])
    assert np.isfinite(detector.score_samples(X)).all()


def test_fewer_rows_than_batch_size_give_one_batch():
    X, y = _data(n_main=9, n_defects=2)
    detector = ContrastiveAEDetector(**{**SMALL, "batch_size": 128}).fit(X, y)
    batches = detector.net_.history[-1, "batches"]
    assert len(batches) == 1
    assert batches[0]["train_batch_size"] == 11
    assert np.isfinite(detector.score_samples(X)).all()


def test_single_feature_trains():
    X, y = _data(n_features=1)
    detector = ContrastiveAEDetector(**SMALL).fit(X, y)
    scores = detector.score_samples(X)
    assert detector.n_features_in_ == 1
    assert np.isfinite(scores).all()


def test_constant_feature_is_harmless():
    """A constant column trains and scores like any other and does not warn."""
    X, y = _data()
    X[:, 2] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = ContrastiveAEDetector(**SMALL).fit(X, y)
    scores = detector.score_samples(X)
    assert np.isfinite(scores).all()
    assert np.ptp(scores) > 0


def test_constant_X_warns():
    X = np.full((20, 3), 2.5)
    with pytest.warns(UserWarning, match="all 20 rows are identical"):
        detector = ContrastiveAEDetector(**SMALL).fit(X)
    scores = detector.score_samples(X)
    assert np.ptp(scores) == 0


# ------------------------------------------------------------- values of X


def test_huge_values_raise_at_fit():
    """1e30 fits in float32, but its square in the reconstruction error does
    not."""
    X, y = _data()
    X[2, 1] = 1e30
    match = (
        r"X has 1 entry beyond ±1\.84e\+19; the largest is 1e\+30 at row 2, "
        r"column 1\. Training squares every input value in float32"
    )
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(X, y)


@pytest.mark.parametrize("method", ["fit", "score_samples"])
def test_values_beyond_float32_raise(fitted, method):
    """Values that the cast to float32 would turn into inf are named."""
    detector, X = fitted
    X = X.copy()
    X[3, 0] = -1e39
    match = (
        r"largest is -1e\+39 at row 3, column 0\. .*become infinite when X is "
        r"cast to float32"
    )
    with pytest.raises(ValueError, match=match):
        if method == "fit":
            ContrastiveAEDetector(**SMALL).fit(X)
        else:
            detector.score_samples(X)


def test_overflowing_score_raises():
    """A row whose reconstruction error overflows float32 gets no silent inf."""
    X, y = _data()
    detector = ContrastiveAEDetector(score_method="reconstruction", **SMALL)
    detector.fit(X, y)
    X[2, 1] = 1e30
    match = r"1 of 60 rows of X got a non-finite score \(first at row 2\)"
    with pytest.raises(ValueError, match=match):
        detector.score_samples(X)


def test_tiny_values_train_and_scale():
    """Data at the scale of 1e-30 trains; scaled in a Pipeline it scores like
    the same data at unit scale."""
    X, y = _data()
    tiny = ContrastiveAEDetector(**SMALL).fit(X * 1e-30, y)
    assert np.isfinite(tiny.score_samples(X * 1e-30)).all()

    def scaled_scores(factor):
        model = make_pipeline(StandardScaler(), ContrastiveAEDetector(**SMALL))
        return model.fit(X * factor, y).score_samples(X * factor)

    np.testing.assert_allclose(scaled_scores(1e-30), scaled_scores(1.0), rtol=1e-4)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise_at_score(fitted, value):
    detector, X = fitted
    X = X.copy()
    X[4, 2] = value
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        detector.score_samples(X)


# -------------------------------------------------------------- types of X


def test_strings_raise_with_position():
    X, _ = _data()
    X = X.astype(object)
    X[3, 1] = "broken"
    match = r"X column 1 contains 'broken' at row 3, which is not a number"
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(X)


def test_text_column_in_frame_raises_with_name():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    frame["kind"] = np.where(y == 1, "bad", "good")
    match = r"X column 'kind' contains 'good' at row 0.*OneHotEncoder"
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(frame, y)


def test_non_numeric_objects_raise_type_error():
    X, _ = _data()
    X = X.astype(object)
    X[0, 3] = {"a": 1}
    with pytest.raises(TypeError, match=r"X column 3 contains \{'a': 1\} at row 0"):
        ContrastiveAEDetector(**SMALL).fit(X)


def test_complex_array_raises():
    X, _ = _data()
    with pytest.raises(ValueError, match="complex dtype complex128.*X.real"):
        ContrastiveAEDetector(**SMALL).fit(X + 1j)


def test_complex_value_in_object_column_raises(fitted):
    detector, X = fitted
    X = X.astype(object)
    X[5, 2] = 1 + 2j
    match = r"X column 2 contains the complex number \(1\+2j\) at row 5"
    with pytest.raises(ValueError, match=match):
        detector.score_samples(X)


def test_small_sparse_matrix_is_densified():
    """Sparse X gives exactly the model and scores of its dense form."""
    X, y = _data()
    X[np.abs(X) < 0.8] = 0.0
    dense = ContrastiveAEDetector(**SMALL).fit(X, y)
    from_sparse = ContrastiveAEDetector(**SMALL).fit(sparse.csr_matrix(X), y)
    expected = dense.score_samples(X)
    np.testing.assert_array_equal(from_sparse.score_samples(X), expected)
    np.testing.assert_array_equal(dense.score_samples(sparse.csc_array(X)), expected)


def test_large_sparse_matrix_raises_at_fit():
    """Densifying 200000 x 2000 float32 values would take 1.5 GiB."""
    X = sparse.csr_matrix(([1.0, 2.0], ([0, 7], [3, 5])), shape=(200_000, 2_000))
    match = r"densifying X would take 1\.5 GiB, above the limit of 1 GiB.*TruncatedSVD"
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(X)


def test_large_sparse_matrix_raises_at_score(fitted, monkeypatch):
    detector, X = fitted
    monkeypatch.setattr(sk_cae._validation, "MAX_SPARSE_DENSE_BYTES", 256)
    with pytest.raises(ValueError, match="score X in chunks of at most 16 rows"):
        detector.score_samples(sparse.csr_matrix(X))
    scores = detector.score_samples(sparse.csr_matrix(X[:16]))
    np.testing.assert_array_equal(scores, detector.score_samples(X[:16]))


def test_fortran_order_gives_same_scores(fitted):
    detector, X = fitted
    np.testing.assert_array_equal(
        detector.score_samples(np.asfortranarray(X)), detector.score_samples(X)
    )


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.int8, np.uint8, bool])
def test_other_dtypes_train_like_float32(dtype):
    """float16, integer and boolean X give the model of their float32 cast."""
    X, y = _data()
    X = X > 0 if dtype is bool else (X * 4).astype(dtype)
    native = ContrastiveAEDetector(**SMALL).fit(X, y)
    cast = ContrastiveAEDetector(**SMALL).fit(X.astype(np.float32), y)
    np.testing.assert_array_equal(native.score_samples(X), cast.score_samples(X))


def test_memmap_gives_same_scores(tmp_path):
    X, y = _data()
    X = X.astype(np.float32)
    path = tmp_path / "X.dat"
    mapped = np.memmap(path, dtype=np.float32, mode="w+", shape=X.shape)
    mapped[:] = X
    mapped.flush()
    read_only = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)
    from_memmap = ContrastiveAEDetector(**SMALL).fit(read_only, y)
    in_memory = ContrastiveAEDetector(**SMALL).fit(X, y)
    np.testing.assert_array_equal(
        from_memmap.score_samples(read_only), in_memory.score_samples(X)
    )


# ---------------------------------------------------------- feature checks


def test_renamed_columns_raise(fitted_on_frame):
    detector, frame = fitted_on_frame
    renamed = frame.rename(columns={"mass": "weight"})
    with pytest.raises(ValueError, match=r"unseen at fit time:\n- weight"):
        detector.score_samples(renamed)


def test_reordered_columns_raise(fitted_on_frame):
    detector, frame = fitted_on_frame
    reordered = frame[["height", "width", "depth", "mass"]]
    with pytest.raises(ValueError, match="must be in the same order"):
        detector.predict(reordered)


def test_array_after_frame_warns(fitted_on_frame):
    detector, frame = fitted_on_frame
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        scores = detector.score_samples(frame.to_numpy())
    np.testing.assert_array_equal(scores, detector.score_samples(frame))


@pytest.mark.parametrize("method", ["score_samples", "decision_function"])
def test_extra_feature_at_score_raises(fitted, method):
    detector, X = fitted
    with pytest.raises(ValueError, match="X has 5 features, but .* expecting 4"):
        getattr(detector, method)(np.c_[X, X[:, 0]])


# --------------------------------------------------------------------- y


def test_missing_labels_in_object_y_raise():
    X, y = _data()
    y = y.astype(object)
    y[[3, 8]] = None
    with pytest.raises(ValueError, match=r"y contains 2 missing labels \(None"):
        ContrastiveAEDetector(**SMALL).fit(X, y)


def test_pandas_na_in_y_raises():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    labels = pd.Series(y, dtype="Int64")
    labels[4] = pd.NA
    with pytest.raises(ValueError, match="y contains 1 (NaN values|missing labels)"):
        ContrastiveAEDetector(**SMALL).fit(X, labels)


def test_mixed_type_labels_are_compared_not_sorted():
    """Labels that cannot be sorted, such as 0 and "defect", still work."""
    X, y = _data()
    labels = np.array([0 if label == 0 else "defect" for label in y], dtype=object)
    detector = ContrastiveAEDetector(defect_label="defect", **SMALL).fit(X, labels)
    assert detector.n_defects_ == 6
    with pytest.warns(UserWarning, match=r"labels found: \['defect', 0\]"):
        ContrastiveAEDetector(defect_label="scratch", **SMALL).fit(X, labels)


def test_string_labels_with_default_defect_label_warn():
    X, y = _data()
    labels = np.where(y == 1, "bad", "ok")
    with pytest.warns(UserWarning, match=r"defect_label=1 \(labels found: \['bad'"):
        detector = ContrastiveAEDetector(**SMALL).fit(X, labels)
    assert detector.n_defects_ == 0


def test_column_vector_y_is_accepted():
    X, y = _data()
    detector = ContrastiveAEDetector(**SMALL).fit(X, y.reshape(-1, 1))
    assert detector.n_defects_ == 6


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (1, r"got an array of shape \(\)"),
        (np.zeros((2, 30, 1)), r"got an array of shape \(2, 30, 1\)"),
    ],
)
def test_y_of_wrong_shape_raises(y, match):
    X, _ = _data()
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**SMALL).fit(X, y)


# -------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"batch_size": -1}, "'batch_size' parameter .* Got -1"),
        ({"batch_size": 0}, "'batch_size' parameter .* Got 0"),
        ({"max_epochs": 0}, "'max_epochs' parameter .* Got 0"),
        ({"margin": -1.0}, "'margin' parameter .* Got -1.0"),
        ({"margin": float("nan")}, "'margin' parameter .* Got nan"),
        ({"n_neighbors": 0}, "'n_neighbors' parameter"),
        ({"dropout": 1.0}, "'dropout' parameter"),
        ({"lr": 0.0}, "'lr' parameter"),
        ({"activation": "swish"}, "'activation' parameter .* Got 'swish'"),
        ({"optimizer": "lbfgs"}, "'optimizer' parameter .* Got 'lbfgs'"),
        ({"on_interrupt": "ignore"}, "'on_interrupt' parameter .* Got 'ignore'"),
        ({"callbacks": ()}, r"'callbacks' parameter .* 'list' or None. Got \(\)"),
    ],
)
def test_invalid_parameter_values_raise(params, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**{**SMALL, **params}).fit(X, y)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (
            {"optimizer": torch.nn.Linear},
            "subclass of torch.optim.Optimizer; got <class 'torch.nn",
        ),
        ({"optimizer": int}, "subclass of torch.optim.Optimizer; got <class 'int'>"),
        ({"callbacks": [1]}, r"callbacks\[0\] must be a skorch callback .* got 1\."),
        ({"callbacks": [("name", "x")]}, r"callbacks\[0\] .* got \('name', 'x'\)"),
        ({"device": "tpu"}, "device='tpu' is not a torch device"),
        ({"hidden_layer_sizes": [[8, 4]]}, r"got \[\[8, 4\]\]; pass a flat sequence"),
        ({"hidden_layer_sizes": (True,)}, r"positive integers, got \(True,\)"),
    ],
)
def test_invalid_settings_raise(params, match):
    X, y = _data()
    with pytest.raises(ValueError, match=match):
        ContrastiveAEDetector(**{**SMALL, **params}).fit(X, y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda_raises():
    X, y = _data()
    with pytest.raises(ValueError, match="device='cuda' needs CUDA"):
        ContrastiveAEDetector(device="cuda", **SMALL).fit(X, y)


@pytest.mark.parametrize(
    ("n_main", "n_defects", "fraction", "match"),
    [
        (9, 2, 0.05, "into 10 for training and 1 for validation"),
        (38, 2, 0.01, "into 39 for training and 1 for validation"),
        (38, 2, 0.99, "into 0 for training and 40 for validation"),
        (1, 1, 0.5, "needs at least 2 main-group rows, .* got 1"),
        (2, 1, 0.4, "each side needs at least 2 rows"),
    ],
)
def test_early_stopping_split_too_small_raises(n_main, n_defects, fraction, match):
    X, y = _data(n_main=n_main, n_defects=n_defects)
    detector = ContrastiveAEDetector(
        early_stopping=True, validation_fraction=fraction, **SMALL
    )
    with pytest.raises(ValueError, match=match):
        detector.fit(X, y)


def test_early_stopping_smallest_split_trains():
    """Two rows on each side of a stratified split are enough."""
    X, y = _data(n_main=8, n_defects=2)
    detector = ContrastiveAEDetector(
        early_stopping=True, validation_fraction=0.4, **SMALL
    ).fit(X, y)
    assert np.isfinite(detector.net_.history[-1, "valid_loss"])


# ------------------------------------------------------ nothing is modified


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_inputs_are_not_written(dtype):
    """Read-only X and y would raise on any write, at fit and at score.
    float32 X reaches torch without a copy."""
    X, y = _data()
    X = X.astype(dtype)
    before = X.copy()
    X.flags.writeable = False
    y.flags.writeable = False
    detector = ContrastiveAEDetector(**SMALL).fit(X, y)
    detector.score_samples(X)
    detector.predict(X)
    detector.score(X, y)
    np.testing.assert_array_equal(X, before)


def test_frame_and_series_are_unchanged():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X.astype(np.float32), columns=["a", "b", "c", "d"])
    labels = pd.Series(y, name="is_defect")
    frame_before, labels_before = frame.copy(), labels.copy()
    detector = ContrastiveAEDetector(**SMALL).fit(frame, labels)
    detector.score_samples(frame)
    pd.testing.assert_frame_equal(frame, frame_before)
    pd.testing.assert_series_equal(labels, labels_before)


def test_float64_rows_are_scored_without_a_float32_copy(fitted):
    """float64 rows to score pass validation uncopied, are converted one
    chunk at a time, and score exactly as their float32 version does."""
    from sk_cae._validation import check_X

    detector, X = fitted
    X = np.ascontiguousarray(X, dtype=np.float64)
    assert np.shares_memory(check_X(detector, X, fitting=False), X)
    np.testing.assert_array_equal(
        detector.score_samples(X), detector.score_samples(X.astype(np.float32))
    )

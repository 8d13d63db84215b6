"""Scoring Dask collections and running a grid search on a Dask cluster."""

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sk_cae import ContrastiveAEDetector
from sk_cae.datasets import load_digits_scenario
from sk_cae.distributed import score_dask

da = pytest.importorskip("dask.array", reason="needs the dask extra")
dd = pytest.importorskip("dask.dataframe", reason="needs the dask extra")
distributed = pytest.importorskip("distributed", reason="needs the dask extra")
pd = pytest.importorskip("pandas")

METHODS = ("decision_function", "score_samples", "predict")


@pytest.fixture(scope="module")
def client():
    """A two-worker cluster of separate processes on the loopback interface.

    Worker processes, not threads: the detector seeds torch's global
    generator while it trains, so two fits in threads of one process would
    draw from the same generator and stop being reproducible.
    """
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def digits():
    return load_digits_scenario(n_labeled=10, seed=0)


@pytest.fixture(scope="module")
def detector(digits):
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=3, random_state=0)
    )
    return model.fit(digits.X_train, digits.y_train)


@pytest.mark.parametrize("method", METHODS)
def test_array_scores_on_cluster_match_local(client, detector, digits, method):
    """Scores computed by the workers equal the in-memory scores."""
    X = digits.X_test
    scores = score_dask(detector, da.from_array(X, chunks=(100, 64)), method=method)
    expected = getattr(detector, method)(X)

    assert scores.shape == (len(X),)
    assert scores.chunks == ((100,) * 6 + (len(X) - 600,),)
    computed = client.compute(scores).result()
    assert computed.dtype == scores.dtype
    np.testing.assert_allclose(computed, expected, rtol=1e-5, atol=1e-6)


def test_dataframe_scores_on_cluster_keep_index(client, detector, digits):
    columns = [f"pixel_{i}" for i in range(64)]
    frame = pd.DataFrame(digits.X_test, columns=columns)
    frame.index = frame.index + 1000
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=3, random_state=0)
    ).fit(pd.DataFrame(digits.X_train, columns=columns), digits.y_train)

    scores = score_dask(model, dd.from_pandas(frame, npartitions=4))
    computed = client.compute(scores).result()

    assert scores.npartitions == 4
    assert computed.name == "decision_function"
    assert computed.dtype == np.float64
    pd.testing.assert_index_equal(computed.index, frame.index)
    np.testing.assert_allclose(
        computed.to_numpy(), model.decision_function(frame), rtol=1e-5, atol=1e-6
    )


def test_array_chunked_by_columns_is_rechunked(detector, digits):
    X = digits.X_test[:120]
    scores = score_dask(detector, da.from_array(X, chunks=(50, 16)))

    assert scores.chunks == ((50, 50, 20),)
    computed = scores.compute(scheduler="synchronous")
    np.testing.assert_allclose(
        computed, detector.decision_function(X), rtol=1e-5, atol=1e-6
    )


def test_empty_partition_gives_empty_scores(detector, digits):
    X = da.from_array(digits.X_test[:60], chunks=(30, 64))
    kept = X[da.from_array(np.r_[np.ones(30, bool), np.zeros(30, bool)], chunks=30)]

    computed = score_dask(detector, kept, method="predict").compute(
        scheduler="synchronous"
    )

    assert computed.dtype == np.int64
    np.testing.assert_array_equal(computed, detector.predict(digits.X_test[:30]))


def test_rejects_unfitted_estimator():
    X = da.zeros((10, 4), chunks=5)
    with pytest.raises(NotFittedError):
        score_dask(ContrastiveAEDetector(), X)


def test_rejects_unknown_method(detector):
    X = da.zeros((10, 64), chunks=5)
    with pytest.raises(ValueError, match="method='transform' is not supported"):
        score_dask(detector, X, method="transform")


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((10, 64)), "got numpy.ndarray. Data in memory needs no Dask"),
        (da.zeros(10, chunks=5), r"must be a 2-D dask array .*; got 1 dimensions"),
    ],
)
def test_rejects_non_tabular_input(detector, X, match):
    with pytest.raises(TypeError, match=match):
        score_dask(detector, X)


def test_rejects_dask_series(detector):
    series = dd.from_pandas(pd.Series(np.zeros(10)), npartitions=2)
    with pytest.raises(TypeError, match=r"\.to_frame\(\)"):
        score_dask(detector, series)


def test_rejects_wrong_number_of_features(detector):
    with pytest.raises(ValueError, match="X has 3 features, but .* 64 features"):
        score_dask(detector, da.zeros((10, 3), chunks=5))


def test_grid_search_on_cluster_matches_local(client, digits):
    """The workers' search picks the same parameters with the same scores."""
    search = GridSearchCV(
        make_pipeline(
            StandardScaler(), ContrastiveAEDetector(max_epochs=3, random_state=0)
        ),
        {
            "contrastiveaedetector__latent_dim": [2, 8],
            "contrastiveaedetector__repulsion_weight": [0.0, 1.0],
        },
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    )
    local = search.fit(digits.X_train, digits.y_train)
    local_scores = local.cv_results_["mean_test_score"]
    local_best = local.best_params_

    with distributed.get_task_stream(client) as tasks:
        with joblib.parallel_backend("dask"):
            on_cluster = GridSearchCV(**search.get_params(deep=False))
            on_cluster.fit(digits.X_train, digits.y_train)

    assert len(tasks.data) > 0
    assert on_cluster.best_params_ == local_best
    np.testing.assert_allclose(
        on_cluster.cv_results_["mean_test_score"], local_scores, rtol=1e-4
    )
    assert len(set(np.round(local_scores, 3))) > 1

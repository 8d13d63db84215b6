"""Score Dask collections with a fitted detector, one partition at a time.

Dask is an optional dependency (``pip install "sk-cae[dask]"``) and is
imported only when a function here is called.

Hyper-parameter searches need no helper: scikit-learn's ``GridSearchCV`` runs
its fits on a ``dask.distributed`` cluster inside
``joblib.parallel_backend("dask")``.
"""

import math

import numpy as np
from sklearn.utils.validation import check_is_fitted

# Output dtype of each supported method. Every block's result is cast to it,
# so that the lazy result's declared dtype is the computed one.
SCORE_DTYPES = {
    "decision_function": np.dtype(np.float64),
    "score_samples": np.dtype(np.float64),
    "predict": np.dtype(np.int64),
}


def _import_dask():
    try:
        import dask
        import dask.array
    except ImportError as error:
        raise ImportError(
            "sk_cae.distributed needs dask; install it with "
            '`pip install "sk-cae[dask]"`.'
        ) from error
    return dask


def _is_dask_dataframe(X, kind):
    """Return True if ``X`` is a dask ``DataFrame`` (kind="DataFrame") or
    ``Series`` (kind="Series"), without importing dask.dataframe otherwise."""
    if not type(X).__module__.startswith("dask."):
        return False
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(X, getattr(dd, kind))


def _score_block(block, estimator, method, dtype):
    """Score one block of rows; an empty block gives an empty result."""
    if block.shape[0] == 0:
        return np.empty(0, dtype=dtype)
    return np.asarray(getattr(estimator, method)(block)).astype(dtype, copy=False)


def _score_partition(partition, estimator, method, dtype):
    """Score one pandas partition, keeping its index."""
    import pandas as pd

    values = _score_block(partition, estimator, method, dtype)
    return pd.Series(values, index=partition.index, name=method)


def _check_n_features(estimator, n_features):
    """Compare the width of ``X``, when known, with the fitted width."""
    expected = getattr(estimator, "n_features_in_", None)
    if expected is None or math.isnan(n_features):
        return
    if n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but the estimator was fitted with "
            f"{expected} features."
        )


def score_dask(estimator, X, method="decision_function"):
    """Score a Dask array or DataFrame partition by partition, lazily.

    Each partition is scored with ``getattr(estimator, method)`` by whichever
    Dask scheduler computes the result, so rows are never gathered in one
    place: a dataset larger than memory is scored in pieces, on a
    ``dask.distributed`` cluster when a ``Client`` is active. The fitted
    estimator enters the task graph once, as a single task, so it is sent to
    each worker once rather than with every partition.

    Parameters
    ----------
    estimator : estimator
        A fitted estimator with the method ``method``, such as a
        :class:`~sk_cae.ContrastiveAEDetector` or a ``Pipeline`` ending in
        one.

    X : dask.array.Array of shape (n_samples, n_features) or \
dask.dataframe.DataFrame
        Rows to score. An array chunked along its columns is rechunked so
        that each block holds whole rows. A DataFrame's partitions are passed
        to the estimator as pandas DataFrames, so column names are checked
        as in a direct call.

    method : {"decision_function", "score_samples", "predict"}, \
default="decision_function"
        The estimator method to apply to each partition.

    Returns
    -------
    scores : dask.array.Array of shape (n_samples,) or dask.dataframe.Series
        Lazy scores: float64 for ``"decision_function"`` and
        ``"score_samples"``, int64 for ``"predict"``. An array result has one
        chunk per row chunk of ``X``. A Series result keeps the index and
        partitions of ``X`` and is named after ``method``. Call
        ``.compute()``, or write it out with Dask (for example
        ``to_parquet`` or ``to_zarr``), to run the scoring.

    Raises
    ------
    ImportError
        If dask is not installed.
    TypeError
        If ``X`` is not a 2-D Dask array or a Dask DataFrame.
    sklearn.exceptions.NotFittedError
        If ``estimator`` is not fitted.

    Notes
    -----
    A row's score does not depend on the other rows of its partition, so the
    scores equal those of calling the method on all rows at once. They can
    differ in the last float32 digits, because the network's arithmetic can
    round differently for batches of different sizes.

    Each worker runs the network with the torch threads it has. On a
    ``dask.distributed`` cluster started with ``processes=True``, the nanny
    sets ``OMP_NUM_THREADS=1`` by default, so give each worker several
    threads or size its torch threads with ``torch.set_num_threads``.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from sk_cae import ContrastiveAEDetector
    >>> from sk_cae.distributed import score_dask
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4)).astype(np.float32)
    >>> detector = ContrastiveAEDetector(max_epochs=2, random_state=0).fit(X)
    >>> scores = score_dask(detector, da.from_array(X, chunks=(50, 4)))
    >>> scores.chunks
    ((50, 50, 50, 50),)
    >>> bool(np.allclose(scores.compute(), detector.decision_function(X)))
    True
    """
    dask = _import_dask()
    if method not in SCORE_DTYPES:
        raise ValueError(
            f"method={method!r} is not supported; expected one of {list(SCORE_DTYPES)}."
        )
    if not hasattr(estimator, method):
        raise TypeError(
            f"{type(estimator).__name__} has no method {method!r}; pass an "
            "estimator that implements it."
        )
    check_is_fitted(estimator)
    dtype = SCORE_DTYPES[method]
    # A Delayed estimator is one task of the graph that every partition
    # depends on. Passed plainly, it would be copied into each partition's task.
    fitted = dask.delayed(estimator, pure=False)

    if isinstance(X, dask.array.Array):
        if X.ndim != 2:
            raise TypeError(
                f"X must be a 2-D dask array of shape (n_samples, n_features); "
                f"got {X.ndim} dimensions with shape {X.shape}."
            )
        _check_n_features(estimator, X.shape[1])
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})
        return X.map_blocks(
            _score_block,
            fitted,
            method,
            dtype,
            drop_axis=1,
            dtype=dtype,
            meta=np.empty((0,), dtype=dtype),
        )

    if _is_dask_dataframe(X, "DataFrame"):
        import pandas as pd

        _check_n_features(estimator, len(X.columns))
        return X.map_partitions(
            _score_partition,
            fitted,
            method,
            dtype,
            meta=pd.Series(np.empty(0, dtype=dtype), name=method),
        )

    hint = ""
    if _is_dask_dataframe(X, "Series"):
        hint = " Turn a single-feature Series into a DataFrame with .to_frame()."
    elif isinstance(X, np.ndarray) or hasattr(X, "iloc"):
        hint = f" Data in memory needs no Dask: call estimator.{method}(X)."
    raise TypeError(
        "X must be a dask.array.Array or a dask.dataframe.DataFrame; got "
        f"{type(X).__module__}.{type(X).__qualname__}.{hint}"
    )

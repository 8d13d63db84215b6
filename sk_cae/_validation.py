"""Checks of the detector's input data and settings, with messages that name
what was received and how to fix it."""

import functools
import math
import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.utils._missing import is_pandas_na, is_scalar_nan
from sklearn.utils.validation import validate_data
from skorch.callbacks import Callback

from ._scores import FilePageRelease, read_only_mapping

# Largest dense float32 copy of a sparse X that fit and score_samples make on
# their own (1 GiB). Sparse input usually means very wide data, whose dense
# form can be many times larger than the sparse one, so anything bigger is
# rejected with advice rather than risking running out of memory.
MAX_SPARSE_DENSE_BYTES = 2**30

FLOAT32_MAX = float(np.finfo(np.float32).max)

# Largest absolute input value whose square is finite in float32. Training
# squares every input value in the reconstruction error, so larger values
# make the loss infinite at the first step.
MAX_ABS_TRAINING_VALUE = math.sqrt(FLOAT32_MAX)

# Bytes of a memory-mapped X checked at a time for non-finite values.
MAPPED_CHECK_BYTES = 8 * 2**20

# Maximum length of the repr of a rejected value quoted in an error message.
MAX_QUOTED_LENGTH = 60

SCALING_ADVICE = (
    "Scale X, for example with sklearn.preprocessing.StandardScaler in a "
    "Pipeline, or clip or remove the extreme rows."
)


def restore_state_on_error(fit):
    """Wrap ``fit`` so that an exception leaves the estimator as it was before.

    A failed first fit leaves the estimator unfitted and a failed refit keeps
    the previous fitted state whole, instead of new ``n_features_in_`` next to
    an old ``net_``. ``BaseException`` is caught, so ``KeyboardInterrupt``
    restores the state too. The copy is shallow: ``fit`` builds new objects
    rather than changing the fitted ones in place.
    """

    @functools.wraps(fit)
    def wrapper(estimator, *args, **kwargs):
        state = vars(estimator).copy()
        try:
            return fit(estimator, *args, **kwargs)
        except BaseException:
            vars(estimator).clear()
            vars(estimator).update(state)
            raise

    return wrapper


# ----------------------------------------------------------------------- X


def check_X(estimator, X, *, fitting):
    """Validate ``X`` like ``validate_data`` and return it dense and C-ordered.

    Training rows come back as float32, the dtype of the network. Rows to
    score keep float32 or float64: the scorers convert float64 one chunk at a
    time, which spares a float32 copy of all of ``X``.

    Beyond scikit-learn's checks, the error for text or complex values names
    their column and row, and a sparse ``X`` is densified up to
    ``MAX_SPARSE_DENSE_BYTES``. Values beyond the float32 range, or beyond
    ``MAX_ABS_TRAINING_VALUE`` when ``fitting``, raise instead of turning into
    infinities. A constant ``X`` at fit warns.

    Rows to score from a read-only ``numpy.memmap``, or from an array that
    views one, are checked chunk by chunk. The pages of each checked chunk
    are released, as the scorers do, because a check of the whole file at
    once would make all of it resident.
    """
    mapped = (
        not fitting and isinstance(X, np.ndarray) and read_only_mapping(X) is not None
    )
    try:
        checked = validate_data(
            estimator,
            X,
            reset=fitting,
            accept_sparse=True,
            dtype=[np.float32, np.float64],
            ensure_min_samples=2 if fitting else 1,
            ensure_all_finite=not mapped,
        )
    except (TypeError, ValueError) as exc:
        explained = explain_conversion_error(X, exc)
        if explained is None:
            raise
        raise explained from exc

    if sparse.issparse(checked):
        checked = densify(checked)
    if mapped:
        check_mapped_rows(checked)
    # Finite float32 values lie within the float32 range by definition, and
    # scikit-learn has rejected the infinite ones.
    elif fitting or checked.dtype != np.float32:
        check_value_range(checked, fitting=fitting)
    if fitting:
        warn_if_constant(checked)
    # C order, because float32 matrix products round differently for
    # Fortran-ordered rows, such as those of a densified CSC matrix.
    return np.ascontiguousarray(checked, dtype=np.float32 if fitting else None)


def explain_conversion_error(X, error):
    """Return an exception naming the first value of ``X`` that is not a real
    number, or None when there is none.

    ``error`` is the exception that converting ``X`` raised. Complex values
    give a ValueError that starts like scikit-learn's ("Complex data not
    supported"), without its print of the whole array. Other values give an
    exception of the type of ``error``, as scikit-learn's estimator checks
    expect, quoting the first line of its message.
    """
    dtype = getattr(X, "dtype", None)
    if dtype is not None and dtype.kind in "biuf":
        return None
    if dtype is not None and dtype.kind == "c":
        return ValueError(
            f"Complex data not supported: X has the complex dtype {dtype}, but "
            "the detector needs real numbers. Pass X.real, np.abs(X), or the "
            "real and imaginary parts as separate columns."
        )
    try:
        values = np.asarray(X, dtype=object)
    except (TypeError, ValueError):
        return None
    if values.ndim != 2:
        return None

    names = getattr(X, "columns", None)
    for column in range(values.shape[1]):
        row = _first_non_real(values[:, column])
        if row is None:
            continue
        value = values[row, column]
        name = repr(names[column]) if names is not None else str(column)
        quoted = repr(value)
        if len(quoted) > MAX_QUOTED_LENGTH:
            quoted = quoted[:MAX_QUOTED_LENGTH] + "..."
        if isinstance(value, complex):
            return ValueError(
                f"Complex data not supported: X column {name} contains the "
                f"complex number {quoted} at row {row}, but the detector needs "
                "real numbers. Pass the real and imaginary parts as separate "
                "columns."
            )
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        return type(error)(
            f"X column {name} contains {quoted} at row {row}, which is not a "
            f"number ({cause}). The detector needs numeric features: encode "
            "text and categorical columns first, for example with "
            "sklearn.preprocessing.OneHotEncoder in a "
            "sklearn.compose.ColumnTransformer."
        )
    return None


def _first_non_real(column):
    """Return the index of the first entry of an object array that does not
    convert to a real float, or None."""
    with warnings.catch_warnings():
        # numpy casts complex numbers to float with a warning, not an error.
        warnings.simplefilter("error")
        try:
            column.astype(np.float64)
            return None
        except (TypeError, ValueError, Warning):
            pass
    for row, value in enumerate(column):
        if isinstance(value, complex):
            return row
        try:
            float(value)
        except (TypeError, ValueError):
            return row
    return None


def densify(X):
    """Return a sparse ``X`` as a dense array, up to ``MAX_SPARSE_DENSE_BYTES``."""
    n_rows, n_columns = X.shape
    dense_bytes = n_rows * n_columns * np.dtype(np.float32).itemsize
    if dense_bytes <= MAX_SPARSE_DENSE_BYTES:
        return X.toarray()
    max_rows = max(MAX_SPARSE_DENSE_BYTES // (n_columns * 4), 1)
    raise ValueError(
        f"X is a sparse matrix of shape {X.shape}. The network needs dense "
        f"rows, and densifying X would take {dense_bytes / 2**30:.1f} GiB, "
        f"above the limit of {MAX_SPARSE_DENSE_BYTES / 2**30:g} GiB for "
        "automatic densifying. Reduce the number of features first, for "
        "example with sklearn.decomposition.TruncatedSVD, pass X.toarray() "
        "if the memory is there, or score X in chunks of at most "
        f"{max_rows} rows."
    )


def check_mapped_rows(X):
    """Check the rows to score of a memory-mapped ``X`` one chunk at a time:
    raise a ValueError for a NaN or infinite value or for a value beyond the
    float32 range, and release the pages of each chunk once checked."""
    release = FilePageRelease(X)
    largest = 0.0
    chunk_rows = max(1, MAPPED_CHECK_BYTES // max(X[:1].nbytes, 1))
    for start in range(0, X.shape[0], chunk_rows):
        rows = X[start : start + chunk_rows]
        not_finite = ~np.isfinite(rows)
        if not_finite.any():
            row, column = np.argwhere(not_finite)[0]
            value = rows[row, column]
            advice = (
                "Impute missing values first, for example with "
                "sklearn.impute.SimpleImputer in a Pipeline."
                if np.isnan(value)
                else "Replace or remove the infinite values first."
            )
            raise ValueError(
                f"Input X contains {'NaN' if np.isnan(value) else value} at row "
                f"{start + row}, column {column}; the detector scores finite "
                f"values only. {advice}"
            )
        if rows.dtype != np.float32 and rows.size:
            largest = max(largest, float(rows.max()), -float(rows.min()))
        release(rows)
    if largest > FLOAT32_MAX:
        check_value_range(X, fitting=False)


def check_value_range(X, *, fitting):
    """Raise a ValueError when ``X`` contains values too large for float32."""
    if X.size == 0:
        return
    largest = max(float(X.max()), -float(X.min()))
    limit = MAX_ABS_TRAINING_VALUE if fitting else FLOAT32_MAX
    if largest <= limit:
        return

    magnitude = np.abs(X)
    row, column = np.unravel_index(np.argmax(magnitude), X.shape)
    n_over = int(np.count_nonzero(magnitude > limit))
    entries = "entry" if n_over == 1 else "entries"
    found = (
        f"X has {n_over} {entries} beyond ±{limit:.3g}; the largest is "
        f"{X[row, column]:.3g} at row {row}, column {column}."
    )
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"{found} The network computes in float32, whose range ends at "
            f"±{FLOAT32_MAX:.3g}, so such values become infinite when X is "
            f"cast to float32. {SCALING_ADVICE}"
        )
    raise ValueError(
        f"{found} Training squares every input value in float32 for the "
        "reconstruction error, and the square of a value beyond "
        f"±{MAX_ABS_TRAINING_VALUE:.3g} overflows to infinity. {SCALING_ADVICE}"
    )


def warn_if_constant(X):
    """Warn when every row of the training data is the same."""
    if len(X) > 1 and np.array_equal(X.max(axis=0), X.min(axis=0)):
        warnings.warn(
            f"Every column of X is constant: all {len(X)} rows are identical, "
            "so the detector cannot tell them apart and gives every row the "
            "same score.",
            UserWarning,
            # check_X, fit, restore_state_on_error and _fit_context sit
            # between this function and the caller of fit.
            stacklevel=6,
        )


def check_finite_scores(scores, X):
    """Raise a ValueError when a score overflowed to infinity or NaN."""
    finite = np.isfinite(scores)
    if finite.all():
        return
    rows = np.flatnonzero(~finite)
    largest = float(np.abs(X[rows]).max())
    raise ValueError(
        f"{len(rows)} of {len(scores)} rows of X got a non-finite score (first "
        f"at row {rows[0]}); the largest absolute value in those rows is "
        f"{largest:.3g}. The float32 computation of the network or of the "
        f"squared reconstruction error overflowed for them. {SCALING_ADVICE}"
    )


# ----------------------------------------------------------------------- y


def count_missing_labels(y):
    """Return the number of NaN, None and pandas.NA entries of ``y``."""
    if y.dtype.kind == "f":
        return int(np.isnan(y).sum())
    if y.dtype.kind != "O":
        return 0
    return sum(
        value is None or is_scalar_nan(value) or is_pandas_na(value)
        for value in y.tolist()
    )


def sorted_labels(y):
    """Return the distinct values of ``y``, sorted where they can be compared."""
    try:
        return np.unique(y)
    except TypeError:
        # Labels of mixed types, such as 0 and "defect", have no order.
        return np.array(sorted(set(y.tolist()), key=repr), dtype=object)


# ---------------------------------------------------------------- settings


def check_training_settings(estimator, n_samples, n_defects):
    """Check the settings that scikit-learn's parameter constraints cannot
    express: the optimizer class, the callbacks, the device and the size of
    the early-stopping split for this data."""
    optimizer = estimator.optimizer
    if not isinstance(optimizer, str) and not (
        isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)
    ):
        raise ValueError(
            "optimizer must be 'adam', 'adamw', 'sgd' or a subclass of "
            f"torch.optim.Optimizer; got {optimizer!r}."
        )
    _check_callbacks(estimator.callbacks)
    _check_device(estimator.device)
    if estimator.early_stopping:
        _check_validation_split(estimator.validation_fraction, n_samples, n_defects)


def _check_callbacks(callbacks):
    for index, entry in enumerate(callbacks or []):
        callback = entry
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            callback = entry[1]
        is_instance = isinstance(callback, Callback)
        is_class = isinstance(callback, type) and issubclass(callback, Callback)
        if not (is_instance or is_class):
            raise ValueError(
                f"callbacks[{index}] must be a skorch callback or a "
                f"(name, callback) pair; got {entry!r}."
            )


def _check_device(device):
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a torch device; expected a device such "
            "as 'cpu', 'cuda' or 'cuda:0'."
        ) from exc
    if resolved.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} needs CUDA, but torch.cuda.is_available() is "
            f"False with torch {torch.__version__}. Pass device='cpu', or "
            "install a build of torch with CUDA on a machine with a GPU."
        )
    n_devices = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= n_devices:
        raise ValueError(
            f"device={device!r} names GPU {resolved.index}, but torch sees "
            f"{n_devices} GPU(s), numbered from 0."
        )


def _check_validation_split(validation_fraction, n_samples, n_defects):
    """Check that both sides of the early-stopping split get main-group rows.

    The sizes follow skorch's ``ValidSplit`` with a float fraction: the
    validation side gets ``ceil(validation_fraction * n_samples)`` rows. The
    split is stratified on the defect labels when both groups have at least
    two rows, as in the detector's ``_build_net``.
    """
    n_main = n_samples - n_defects
    if n_main < 2:
        raise ValueError(
            "early_stopping=True needs at least 2 main-group rows, one for "
            f"training and one for validation; got {n_main}. Set "
            "early_stopping=False or supply more rows."
        )
    n_valid = math.ceil(validation_fraction * n_samples)
    n_train = n_samples - n_valid
    stratified = n_defects >= 2
    # A stratified split needs a row of each group on each side. An
    # unstratified one may draw every defect into one side, which then
    # needs one row more to hold a main-group row for certain.
    minimum = 2 if stratified else 1 + n_defects
    if min(n_valid, n_train) >= minimum:
        return
    raise ValueError(
        f"early_stopping=True with validation_fraction={validation_fraction} "
        f"splits the {n_samples} rows into {n_train} for training and "
        f"{n_valid} for validation, but each side needs at least {minimum} "
        "rows so that it holds main-group rows. Change validation_fraction, "
        "supply more rows, or set early_stopping=False."
    )

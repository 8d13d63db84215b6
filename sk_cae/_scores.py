"""Row scores of a fitted autoencoder: reconstruction, latent and combined.

Every function here returns *anomaly* scores (higher = more defect-like); the
estimator negates them for scikit-learn's ``score_samples``.
"""

import mmap
import warnings

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ._module import as_tensor

SCORE_METHODS = ("reconstruction", "latent", "combined", "hybrid", "hybrid_logistic")

# Folds of the out-of-fold defect probabilities of the training rows.
PROBABILITY_FOLDS = 5

# Trees of the random forest in the defect probability (DefectForest).
FOREST_TREES = 100

# Iteration cap of the logistic regression; standardized rows converge long
# before it.
LOGISTIC_MAX_ITER = 2000

# Inverse strength of the logistic regression's L2 penalty. With a handful of
# labeled defects and tens or hundreds of features, scikit-learn's default of
# 1 fits the labeled defects too closely. On the benchmark scenarios, 0.1
# ranked unseen defects better at 5, 10 and 25 labels, and 0.01 worse
# (benchmarks/NOTES.md, Run 6).
LOGISTIC_C = 0.1

# Rows encoded per forward pass when scoring. Smaller chunks keep the
# intermediate tensors in the CPU caches. With one torch thread on an AMD EPYC
# core, a forward pass of the default network over 1M rows took 0.33 s in
# chunks of 8192 rows and 0.43 s in chunks of 65536.
ENCODE_CHUNK_SIZE = 8192

# Entries of the query-by-reference distance matrix that the neighbour search
# holds at a time: 2**20 float32 values take 4 MiB.
DISTANCE_CHUNK_ENTRIES = 2**20

# Reference rows per block of the neighbour search.
NEIGHBOR_BLOCK_SIZE = 64

# Candidates re-measured exactly beyond the k nearest ones, so that rounding
# in the float32 distance expansion does not drop a true neighbour.
EXTRA_CANDIDATES = 2


def read_only_mapping(X):
    """Return the read-only ``mmap`` under ``X`` and its start address, or
    None when ``X`` does not lie in one.

    ``X`` lies in one when it is, or views, a ``numpy.memmap`` opened with
    ``mode="r"``, as ``numpy.load(..., mmap_mode="r")`` returns.
    """
    if getattr(mmap, "MADV_DONTNEED", None) is None:
        return None
    array = X
    while isinstance(array, np.ndarray):
        if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap):
            if array.mode != "r":
                return None
            mapping = array.base
            try:
                start = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
            except (TypeError, ValueError):
                return None
            return mapping, start
        array = array.base
    return None


class FilePageRelease:
    """Give back the pages of a read-only memory-mapped file once read.

    The kernel keeps the pages of a file mapping that a process has read in
    its resident memory until memory runs short, so scoring a memmap chunk by
    chunk would let the resident size grow to the whole file. Pages of a
    read-only mapping contain nothing that is not in the file. Telling the
    kernel that the rows of a scored chunk are no longer needed
    (``MADV_DONTNEED``) is therefore safe, and a later read maps them again
    from the page cache or the file. Does nothing for other arrays, or where
    ``madvise`` is missing.
    """

    def __init__(self, X):
        found = read_only_mapping(X) if X.flags.c_contiguous else None
        self.mapping, self.map_start = found if found else (None, 0)
        self.row_bytes = X.strides[0] if X.ndim == 2 else 0

    def __call__(self, rows):
        """Release the whole pages that the C-contiguous ``rows`` lie on."""
        if self.mapping is None or rows.size == 0:
            return
        first = rows.ctypes.data - self.map_start
        end = first + rows.shape[0] * self.row_bytes
        first -= first % mmap.PAGESIZE
        end = min(end - end % mmap.PAGESIZE, len(self.mapping))
        if 0 <= first < end:
            self.mapping.madvise(mmap.MADV_DONTNEED, first, end - first)


def _encoded_chunks(module, X, device, chunk_size):
    """Yield ``(start, stop, error, latent)`` for consecutive row chunks of ``X``.

    ``error`` (float64) and ``latent`` (float32) are NumPy arrays of the
    chunk. A float32 chunk on the CPU is passed to the module without a copy;
    other dtypes are converted one chunk at a time. Once the caller is done
    with a chunk, the pages of a read-only memmap that held it are released
    (see :class:`FilePageRelease`).
    """
    was_training = module.training
    module.eval()
    release = FilePageRelease(X)
    try:
        with torch.inference_mode():
            for start in range(0, X.shape[0], chunk_size):
                stop = min(start + chunk_size, X.shape[0])
                rows = as_tensor(X[start:stop]).to(device=device, dtype=torch.float32)
                reconstruction, code = module(rows)
                error = (reconstruction - rows).square_().mean(dim=1)
                yield (
                    start,
                    stop,
                    error.cpu().numpy().astype(np.float64),
                    code.float().cpu().numpy(),
                )
                release(X[start:stop])
    finally:
        module.train(was_training)


def encode_rows(module, X, *, device="cpu", chunk_size=ENCODE_CHUNK_SIZE):
    """Return the per-row reconstruction error and the latent code of ``X``.

    ``X`` is read ``chunk_size`` rows at a time under ``torch.inference_mode``,
    so memory holds at most one chunk of intermediate tensors besides the
    outputs. :func:`score_rows` does not keep the outputs either.

    Returns
    -------
    error : ndarray of shape (n_samples,), float64
        Mean squared reconstruction error of each row.
    latent : ndarray of shape (n_samples, latent_dim), float32
    """
    n_samples = X.shape[0]
    error = np.empty(n_samples, dtype=np.float64)
    latent = None
    for start, stop, chunk_error, chunk_latent in _encoded_chunks(
        module, X, device, chunk_size
    ):
        if latent is None:
            latent = np.empty((n_samples, chunk_latent.shape[1]), dtype=np.float32)
        error[start:stop] = chunk_error
        latent[start:stop] = chunk_latent
    if latent is None:
        latent = np.empty((0, 0), dtype=np.float32)
    return error, latent


def score_rows(module, X, score_chunk, *, device="cpu", chunk_size=ENCODE_CHUNK_SIZE):
    """Return ``score_chunk(error, latent, rows)`` for every row of ``X``.

    Unlike :func:`encode_rows`, the errors and latent codes of one chunk are
    scored and dropped before the next chunk is encoded. Besides the float64
    output, memory then contains one chunk's intermediate values, however
    many rows ``X`` has (a NumPy memmap, for example).

    Parameters
    ----------
    module : torch.nn.Module
        Returns ``(reconstruction, latent)``, as ``AutoEncoder`` does.
    X : ndarray of shape (n_samples, n_features)
    score_chunk : callable
        Takes the float64 errors, the float32 latent codes and the input rows
        of a chunk and returns one score per row.
    """
    scores = np.empty(X.shape[0], dtype=np.float64)
    for start, stop, error, latent in _encoded_chunks(module, X, device, chunk_size):
        scores[start:stop] = score_chunk(error, latent, X[start:stop])
    return scores


class BruteForceKNN:
    """Exact distances to the nearest reference rows, by chunked brute force.

    The search runs in torch on the CPU, one chunk of query rows at a time:

    1. one matrix product gives ``|r|^2 - 2 q.r`` for every reference row
       ``r``, the squared distance less the constant ``|q|^2``, in float32 on
       rows centered on the reference mean;
    2. the reference rows are grouped in blocks of ``NEIGHBOR_BLOCK_SIZE``.
       The ``m`` smallest entries of a row of that matrix lie in the ``m``
       blocks with the smallest minima, so only those blocks are searched;
    3. the ``k + EXTRA_CANDIDATES`` best candidates are re-measured by direct
       subtraction in float64 and sorted.

    Its cost is linear in both the number of queries and of reference rows,
    and memory holds ``DISTANCE_CHUNK_ENTRIES`` distances at a time.

    Parameters
    ----------
    reference : array-like of shape (n_reference, n_dims)
        At least one row.
    """

    def __init__(self, reference):
        reference = torch.as_tensor(np.asarray(reference, dtype=np.float32))
        n_reference, n_dims = reference.shape
        self.n_reference = n_reference
        self.center = reference.mean(dim=0)
        self.block_size = min(NEIGHBOR_BLOCK_SIZE, n_reference)
        self.n_blocks = -(-n_reference // self.block_size)

        # Padding rows get an infinite squared norm, so they are never chosen.
        n_padded = self.n_blocks * self.block_size
        self.reference = reference.new_zeros((n_padded, n_dims))
        self.reference[:n_reference] = reference - self.center
        self.reference_t = self.reference.T.contiguous()
        self.sq_norms = (self.reference * self.reference).sum(dim=1)
        self.sq_norms[n_reference:] = float("inf")
        self.exact_reference = self.reference.double()
        self.exact_reference[:n_reference] = reference.double()
        self.n_dims = n_dims
        self.chunk_rows = max(1, DISTANCE_CHUNK_ENTRIES // n_padded)

    def query(self, queries, k, *, return_index=False):
        """Return the distances to the ``k`` nearest reference rows.

        The distances are measured in float64. A true neighbour is missed only
        if float32 rounding in step 1 ranks more than ``EXTRA_CANDIDATES``
        other rows ahead of it. That needs distances equal to about seven
        significant digits, so the distance returned in its place differs by
        as little.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_dims)
        k : int
            Between 1 and the number of reference rows.

        return_index : bool, default=False
            Whether to return the positions of the neighbours as well.

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float64
            Sorted in increasing order along each row.
        index : ndarray of shape (n_queries, k), int64
            Positions of those neighbours among the reference rows; only
            with ``return_index=True``.
        """
        queries = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        distances = np.empty((queries.shape[0], k), dtype=np.float64)
        index = np.empty((queries.shape[0], k), dtype=np.int64)
        # The exact re-measure keeps (k + EXTRA_CANDIDATES) candidate rows of
        # every query, which for wide rows outgrows the distance matrix.
        n_candidates = min(k + EXTRA_CANDIDATES, self.n_reference)
        chunk_rows = min(
            self.chunk_rows,
            max(1, DISTANCE_CHUNK_ENTRIES // (n_candidates * self.n_dims)),
        )
        # One buffer for every chunk: a fresh allocation of this size each
        # time costs page faults that took longer than the matrix product.
        buffer = torch.empty((min(chunk_rows, queries.shape[0]), len(self.sq_norms)))
        with torch.inference_mode():
            for start in range(0, queries.shape[0], chunk_rows):
                rows = queries[start : start + chunk_rows]
                partial = buffer[: len(rows)]
                stop = start + len(rows)
                distances[start:stop], index[start:stop] = self._query_chunk(
                    rows, k, partial
                )
        return (distances, index) if return_index else distances

    def _query_chunk(self, rows, k, partial):
        """Return the ``k`` smallest distances of ``rows`` and the positions
        of their reference rows, using the ``(len(rows), n_padded)`` tensor
        ``partial`` as scratch space."""
        n_candidates = min(k + EXTRA_CANDIDATES, self.n_reference)
        n_searched_blocks = min(n_candidates, self.n_blocks)

        centered = rows - self.center
        torch.addmm(self.sq_norms, centered, self.reference_t, alpha=-2, out=partial)
        block_minima = partial.view(len(rows), self.n_blocks, -1).amin(dim=2)
        blocks = block_minima.topk(
            n_searched_blocks, dim=1, largest=False, sorted=False
        ).indices
        offsets = torch.arange(self.block_size)
        searched = (blocks[:, :, None] * self.block_size + offsets).flatten(1)
        best = partial.gather(1, searched).topk(
            n_candidates, dim=1, largest=False, sorted=False
        )

        positions = searched.gather(1, best.indices)
        candidates = self.exact_reference[positions]
        squared = (candidates - rows.double()[:, None, :]).square_().sum(dim=2)
        nearest = squared.sort(dim=1)
        return (
            nearest.values[:, :k].sqrt_().numpy(),
            positions.gather(1, nearest.indices[:, :k]).numpy(),
        )


class LatentScorer:
    """Score latent codes by their position relative to main rows and defects.

    With labeled defects, the score of a row is ``d_main / (d_main +
    d_defect)``, where ``d_main`` is the mean distance to its ``n_neighbors``
    nearest main-group training rows and ``d_defect`` the distance to the
    nearest labeled defect. It lies in [0, 1]: near 0 inside the main group,
    near 1 next to a labeled defect, and about 0.5 for a row far from both,
    such as an outlier of another kind. Without labeled defects the score is
    ``d_main`` alone.

    With ``local_scale=True``, ``d_main`` is forgiven in sparse parts of the
    main group, as the local outlier factor does: it is multiplied by
    ``min(1, s_typical / s_local)``, where ``s_local`` is the mean spacing of
    the row's main-group neighbours (each one's own ``d_main`` among the
    other main rows) and ``s_typical`` the median spacing of all main rows.
    A row inside a sparse group of training rows, such as unlabeled outliers
    of another kind, then scores as close to the main group as a row inside
    its dense part, while rows in dense parts keep their plain distance. The
    factor of a row can also be handed to another scorer (``local_factor``
    in :meth:`score`), so that the latent score is forgiven by the spacing of
    the input rows, which the training does not compact. When most main rows
    are duplicates (a typical spacing of zero) the factor is 1.

    Where several main rows lie at exactly the same distance from a row,
    which of them count among its ``n_neighbors`` nearest is arbitrary, and
    with the local scale their spacings enter the score. On data with many
    exact ties, such as small integer features, the score then depends on
    that choice, and the ONNX graph may choose differently.

    Parameters
    ----------
    n_neighbors : int
        Number of main-group neighbours averaged in ``d_main``.
    local_scale : bool, default=False
        Whether ``d_main`` is multiplied by the local factor, as above.
    """

    def __init__(self, n_neighbors, *, local_scale=False):
        self.n_neighbors = n_neighbors
        self.local_scale = local_scale

    def fit(self, latent_main, latent_defects):
        # The codes are kept besides the neighbour searches for score_tensor,
        # which needs distances that torch can differentiate.
        self.latent_main_ = np.asarray(latent_main)
        self.latent_defects_ = np.asarray(latent_defects)
        self.n_main_ = len(latent_main)
        self.n_defects_ = len(latent_defects)
        self._main_knn = BruteForceKNN(latent_main)
        self._defect_knn = BruteForceKNN(latent_defects) if self.n_defects_ else None
        self.main_spacing_ = None
        if self.local_scale and self.n_main_ > 1:
            spacing, _ = self._main_neighbors(self.latent_main_, exclude_self=True)
            typical = float(np.median(spacing))
            if typical > 0:
                self.main_spacing_ = spacing
                self.typical_spacing_ = typical
        return self

    def _main_neighbors(self, latent, exclude_self):
        """Return the mean distance to the nearest main rows and their positions."""
        skip = int(exclude_self and self.n_main_ > 1)
        k = min(self.n_neighbors, self.n_main_ - skip)
        distances, index = self._main_knn.query(latent, k + skip, return_index=True)
        return distances[:, skip:].mean(axis=1), index[:, skip:]

    def local_factor(self, index):
        """Return ``min(1, s_typical / s_local)`` for rows whose nearest main
        rows are at the positions ``index``; ones without a local scale."""
        if self.main_spacing_ is None:
            return np.ones(len(index))
        local = self.main_spacing_[index].mean(axis=1)
        tiny = np.finfo(np.float64).tiny
        return np.minimum(1.0, self.typical_spacing_ / np.maximum(local, tiny))

    def _main_distance(self, latent, exclude_self):
        d_main, index = self._main_neighbors(latent, exclude_self)
        return d_main * self.local_factor(index)

    def _defect_distance(self, latent, exclude_self):
        skip = int(exclude_self and self.n_defects_ > 1)
        distances = self._defect_knn.query(latent, 1 + skip)
        return distances[:, skip]

    def score(
        self,
        latent,
        *,
        in_main=False,
        in_defects=False,
        local_factor=None,
        return_factor=False,
    ):
        """Return the latent anomaly score of every row of ``latent``.

        ``in_main`` (``in_defects``) marks the rows as the main-group
        (defect) reference rows themselves, so each row's own entry is left
        out of its neighbours. ``local_factor`` replaces this scorer's own
        factors of ``d_main`` (see the class description), and with
        ``return_factor=True`` the factors used are returned as well.
        """
        d_main, index = self._main_neighbors(latent, exclude_self=in_main)
        if local_factor is None:
            local_factor = self.local_factor(index)
        d_main = d_main * local_factor
        if self._defect_knn is None:
            anomaly = d_main
        else:
            d_defect = self._defect_distance(latent, exclude_self=in_defects)
            anomaly = d_main / np.maximum(d_main + d_defect, np.finfo(np.float64).tiny)
        return (anomaly, local_factor) if return_factor else anomaly

    def score_tensor(self, latent, *, local_factor=None, return_factor=False):
        """Return the latent anomaly score of new rows as a differentiable tensor.

        Same score as :meth:`score` for rows that are not reference rows, but
        computed in torch from the stored codes, so that gradients flow back to
        ``latent``. The local factors change in steps and carry no gradient.
        Its memory use is a ``(len(latent), n_reference_rows)`` distance
        matrix.
        """
        options = {"device": latent.device, "dtype": latent.dtype}
        main = torch.as_tensor(self.latent_main_, **options)
        k = min(self.n_neighbors, self.n_main_)
        distances, index = self._nearest_distances(latent, main, k)
        if local_factor is None:
            local_factor = torch.as_tensor(
                self.local_factor(index.cpu().numpy()), **options
            )
        d_main = distances.mean(dim=1) * local_factor
        if self.n_defects_ == 0:
            anomaly = d_main
        else:
            defects = torch.as_tensor(self.latent_defects_, **options)
            d_defect = self._nearest_distances(latent, defects, 1)[0][:, 0]
            tiny = torch.finfo(latent.dtype).tiny
            anomaly = d_main / (d_main + d_defect).clamp_min(tiny)
        return (anomaly, local_factor) if return_factor else anomaly

    @staticmethod
    def _nearest_distances(latent, reference, k):
        """Return the distances from each row to its ``k`` nearest reference
        rows, and the positions of those rows.

        The neighbours are searched without gradients, and only the ``k``
        chosen distances are recomputed with them: back-propagating through
        the whole distance matrix costs several times more.
        """
        with torch.no_grad():
            index = torch.cdist(latent, reference).topk(k, largest=False).indices
        distances = torch.linalg.vector_norm(
            latent[:, None, :] - reference[index], dim=2
        )
        return distances, index


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
        """Return the probabilities of the training rows from models fitted
        without them; see :func:`out_of_fold`."""

        def fit_predict(X_main, X_defects, rows):
            coef, intercept = self._fit_linear(X_main, X_defects, main_weight)
            return expit(rows @ coef + intercept)

        return out_of_fold(self, fit_predict, X_main, X_defects, seed)

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


def out_of_fold(model, fit_predict, X_main, X_defects, seed):
    """Return the defect probabilities of the main rows and of the defects,
    each from a model fitted without it: up to ``PROBABILITY_FOLDS`` folds
    stratified by group, with ``fit_predict(X_main, X_defects, rows)``
    fitting on the first two and returning the probabilities of ``rows``.

    The probability of a row from the model that saw it flatters the labeled
    defects above all, which would move the threshold. With a single labeled
    defect or a single main row there is no fold to leave it out of, and the
    fitted ``model`` scores every row.
    """
    n_main, n_defects = len(X_main), len(X_defects)
    X = np.vstack([X_main, X_defects])
    n_splits = min(PROBABILITY_FOLDS, n_defects, n_main)
    if n_splits < 2:
        return model.probability(X[:n_main]), model.probability(X[n_main:])
    is_defect = np.arange(len(X)) >= n_main
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    probability = np.empty(len(X))
    for fitted_on, left_out in folds.split(X, is_defect):
        probability[left_out] = fit_predict(
            X[fitted_on][~is_defect[fitted_on]],
            X[fitted_on][is_defect[fitted_on]],
            X[left_out],
        )
    return probability[:n_main], probability[n_main:]


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
            # Rows that every tree drew get no out-of-bag probability; they
            # are handled in out_of_bag().
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


class RobustScale:
    """Center by the median and divide by the interquartile range."""

    def fit(self, values):
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        self.center_ = median
        self.scale_ = q3 - q1 if q3 > q1 else 1.0
        return self

    def transform(self, values):
        return (values - self.center_) / self.scale_

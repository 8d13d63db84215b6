"""Row scores of a fitted autoencoder: reconstruction, latent and combined.

Every function here returns *anomaly* scores (higher = more defect-like); the
estimator negates them for scikit-learn's ``score_samples``.
"""

import mmap

import numpy as np
import torch

from ._module import as_tensor

SCORE_METHODS = ("reconstruction", "latent", "combined", "hybrid", "hybrid_logistic")

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
        rows are at the positions ``index``, or ones without a local scale."""
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


class RobustScale:
    """Center by the median and divide by the interquartile range."""

    def fit(self, values):
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        self.center_ = median
        self.scale_ = q3 - q1 if q3 > q1 else 1.0
        return self

    def transform(self, values):
        return (values - self.center_) / self.scale_

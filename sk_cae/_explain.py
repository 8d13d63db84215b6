"""Per-feature contributions to the anomaly score of each row.

The reconstruction score splits exactly into per-feature squared errors. The
latent and combined scores depend on the input through the encoder, so they
are split by integrated gradients (Sundararajan, Taly and Yan, "Axiomatic
Attribution for Deep Networks", ICML 2017). The gradient of the score with
respect to the input is averaged along the straight path from a baseline row
to the row, and multiplied by the row's difference from the baseline. The
contributions of a row then sum to its score minus the baseline's score, up
to the error of the ``n_steps``-point midpoint rule. Each feature's
contribution is how much moving that feature from its baseline value to the
row's value raised the score. The random forest in the ``"hybrid_logistic"``
score has no gradient, so its part is split by sampling Shapley values over
random feature orders, which also sum exactly to its change.
"""

import numpy as np
import torch

from ._module import as_tensor
from ._scores import SCORE_METHODS

# Rows per forward pass when computing reconstruction errors.
CHUNK_SIZE = 65536

# Upper bound on the number of entries of the distance matrices between path
# points and reference codes held in memory at once.
MAX_DISTANCES = 2**23

# Feature orders averaged in the contributions of the random forest.
FOREST_PERMUTATIONS = 16

# Upper bound on the number of values of the path points that the forest
# scores at once: 2**22 float32 values take 16 MiB.
MAX_PATH_ENTRIES = 2**22


def reconstruction_contributions(module, X, *, device="cpu"):
    """Return each feature's squared reconstruction error divided by the
    number of features, so that every row sums to its mean squared error.

    Returns
    -------
    contributions : ndarray of shape (n_samples, n_features), float64
    """
    n_samples, n_features = X.shape
    contributions = np.empty((n_samples, n_features), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, n_samples, CHUNK_SIZE):
            rows = as_tensor(X[start : start + CHUNK_SIZE]).to(device)
            reconstruction, _ = module(rows)
            error = ((reconstruction - rows) ** 2).double() / n_features
            contributions[start : start + len(rows)] = error.cpu().numpy()
    return contributions


def integrated_gradients(score, X, baseline, *, n_steps, n_reference, device="cpu"):
    """Return the integrated gradients of ``score`` from ``baseline`` to ``X``.

    Parameters
    ----------
    score : callable
        Maps a float32 tensor of rows of shape (m, n_features) to a tensor of
        m scores that torch can differentiate.
    X : ndarray of shape (n_samples, n_features), float32
    baseline : ndarray of shape (n_samples, n_features), float32
        The starting point of each row's path.
    n_steps : int
        Points of the midpoint rule along each path.
    n_reference : int
        Number of reference codes that ``score`` measures distances to, used
        to bound the memory of one chunk of rows.

    Returns
    -------
    contributions : ndarray of shape (n_samples, n_features), float64
    """
    n_samples, n_features = X.shape
    contributions = np.empty((n_samples, n_features), dtype=np.float64)
    fractions = (torch.arange(n_steps, dtype=torch.float32, device=device) + 0.5) / (
        n_steps
    )
    chunk_size = max(1, MAX_DISTANCES // (n_steps * max(n_reference, n_features)))
    with torch.enable_grad():
        for start in range(0, n_samples, chunk_size):
            stop = min(start + chunk_size, n_samples)
            rows = as_tensor(X[start:stop]).to(device)
            origin = torch.from_numpy(np.array(baseline[start:stop])).to(device)
            step = rows - origin
            path = origin[:, None, :] + fractions[None, :, None] * step[:, None, :]
            path = path.reshape(-1, n_features).requires_grad_(True)
            (gradient,) = torch.autograd.grad(score(path).sum(), path)
            mean_gradient = gradient.reshape(stop - start, n_steps, n_features).mean(1)
            contributions[start:stop] = (step * mean_gradient).double().cpu().numpy()
    return contributions


def forest_contributions(forest, X, baseline, *, n_permutations=FOREST_PERMUTATIONS):
    """Return each feature's share of the change in a ``DefectForest``'s
    probability from ``baseline`` to ``X``.

    A forest has no gradient, so its change is split by sampling Shapley
    values over feature orders. For each of ``n_permutations`` random
    feature orders, the features of each row move from the baseline to the
    row one at a time in that order, and each move is credited with the
    change in probability it causes. The shares of one order sum exactly to
    the total change, and so does their mean over the orders. Features that
    no tree splits on get no share. All the points of one order's paths are
    scored in one call per chunk of rows.

    Returns
    -------
    contributions : ndarray of shape (n_samples, n_features), float64
    """
    n_samples, n_features = X.shape
    trees = forest.trees_
    is_split = trees["left"] != np.arange(len(trees["left"]))
    used = np.unique(trees["feature"][is_split])
    n_points = len(used) + 1
    chunk_size = max(1, MAX_PATH_ENTRIES // (n_points * n_features))
    contributions = np.zeros((n_samples, n_features))
    # A fixed seed keeps the contributions of a fitted detector reproducible.
    rng = np.random.default_rng(0)
    for _ in range(n_permutations):
        order = rng.permutation(used)
        rank = np.full(n_features, n_points)
        rank[order] = np.arange(len(order))
        # moved[k, f]: after k moves, feature f has its value in the row.
        moved = np.arange(n_points)[:, None] > rank[None, :]
        for start in range(0, n_samples, chunk_size):
            rows = np.asarray(X[start : start + chunk_size], dtype=np.float32)
            origin = np.asarray(baseline[start : start + chunk_size], dtype=np.float32)
            path = np.where(moved[None], rows[:, None, :], origin[:, None, :])
            probability = forest.probability(path.reshape(-1, n_features))
            steps = np.diff(probability.reshape(len(rows), n_points), axis=1)
            contributions[start : start + len(rows), order] += steps
    return contributions / n_permutations


def anomaly_contributions(
    module,
    X,
    baseline,
    *,
    score_method,
    latent_scorer,
    error_scale,
    latent_scale,
    n_steps,
    input_scorer=None,
    defect_probability=None,
    defect_forest=None,
    device="cpu",
):
    """Return each feature's contribution to the anomaly score of each row.

    ``"reconstruction"`` gives the per-feature squared errors. The other
    scores give the integrated gradients of the score from ``baseline``. The
    combined score is not split into squared errors because a contrastive
    encoder sends defects away from the main group, so their reconstruction
    is poor in every feature, not only in the features that make them
    defects. ``input_scorer`` is the neighbour scorer on the input rows that
    the hybrid scores average with the latent one, and
    ``defect_probability`` and ``defect_forest`` the logistic regression
    and the random forest whose mean ``"hybrid_logistic"`` averages with
    both.
    """
    if score_method not in SCORE_METHODS:
        raise ValueError(
            f"score_method={score_method!r} has no feature contributions; "
            f"expected one of {list(SCORE_METHODS)}."
        )
    n_reference = latent_scorer.n_main_ + latent_scorer.n_defects_

    def score(rows):
        reconstruction, latent = module(rows)
        if score_method in ("hybrid", "hybrid_logistic"):
            input_score, factor = input_scorer.score_tensor(rows, return_factor=True)
            latent_score = latent_scorer.score_tensor(latent, local_factor=factor)
            anomaly = (latent_score + input_score) / 2
            if defect_probability is None:
                return anomaly
            probability = defect_probability.probability_tensor(rows)
            if defect_forest is not None:
                # The forest's half of the probability is added afterwards.
                probability = probability / 2
            return (anomaly + probability) / 2
        latent_score = latent_scorer.score_tensor(latent)
        if score_method == "latent":
            return latent_score
        # The centers of the robust scaling are constants and drop out of the
        # gradients.
        error = ((reconstruction - rows) ** 2).mean(dim=1)
        return error / error_scale.scale_ + latent_score / latent_scale.scale_

    was_training = module.training
    module.eval()
    try:
        if score_method == "reconstruction":
            return reconstruction_contributions(module, X, device=device)
        contributions = integrated_gradients(
            score, X, baseline, n_steps=n_steps, n_reference=n_reference, device=device
        )
        if defect_forest is not None and defect_probability is not None:
            # The score contains the forest's probability with a weight of 1/4.
            contributions += forest_contributions(defect_forest, X, baseline) / 4
        return contributions
    finally:
        module.train(was_training)


def check_baseline(baseline, default, n_samples, n_features):
    """Return the baseline as a float32 array of shape (n_samples, n_features).

    ``None`` takes ``default``, and a single row is repeated for every row.
    """
    if baseline is None:
        baseline = default
    baseline = np.asarray(baseline, dtype=np.float32)
    if baseline.shape not in ((n_features,), (n_samples, n_features)):
        raise ValueError(
            f"baseline must have shape ({n_features},) or ({n_samples}, "
            f"{n_features}) to match X; got shape {baseline.shape}."
        )
    if not np.isfinite(baseline).all():
        raise ValueError(
            f"baseline contains {int((~np.isfinite(baseline)).sum())} NaN or "
            "infinite values; pass finite numbers."
        )
    return np.broadcast_to(baseline, (n_samples, n_features))

"""Property-based tests of the loss and the scores, with hypothesis.

The scores come from detectors fitted once per module, so no example trains.
Scores of the same row computed in batches of different sizes are compared
with a tolerance. torch's float32 matrix products block the rows differently
for different batch sizes, which changes the rounding of a row's latent code
and reconstruction at about 1e-7 relative. For the same reason,
test_common.py expects check_methods_subset_invariance to fail.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sk_cae import ContrastiveAEDetector, ContrastiveLoss
from sk_cae._scores import SCORE_METHODS

SETTINGS = settings(max_examples=25, deadline=None)

# The loss squares differences in float32 and sums the squares, so inputs
# are bounded well below the 1.8e19 at which a single square overflows.
# A power of two, because hypothesis needs bounds exact in float32.
LOSS_INPUT_BOUND = 2.0**50

# Relative and absolute tolerance for scores of the same rows computed in
# different batches (see the module docstring).
SCORE_RTOL = 1e-4
SCORE_ATOL = 1e-6


def _floats(bound):
    return st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def loss_batches(draw, bound=LOSS_INPUT_BOUND):
    """A batch of (reconstruction, latent), defect flags and input rows, with
    a permutation of its rows."""
    n_main = draw(st.integers(1, 12))
    n_defects = draw(st.integers(0, 6))
    n_features = draw(st.integers(1, 5))
    width = draw(st.integers(1, 4))
    n_rows = n_main + n_defects
    values = _floats(bound)
    X = draw(arrays(np.float32, (n_rows, n_features), elements=values))
    reconstruction = draw(arrays(np.float32, (n_rows, n_features), elements=values))
    latent = draw(arrays(np.float32, (n_rows, width), elements=values))
    is_defect = np.r_[np.zeros(n_main), np.ones(n_defects)].astype(np.float32)
    order = np.array(draw(st.permutations(range(n_rows))))
    return X, reconstruction, latent, is_defect, order


LOSS_FORMS = [
    {"contrast": "hinge", "space": "latent"},
    {"contrast": "squared", "space": "latent"},
    {"contrast": "hinge", "space": "output"},
]


def _components(loss, X, reconstruction, latent, is_defect):
    y_pred = (torch.as_tensor(reconstruction), torch.as_tensor(latent))
    parts = loss.components(y_pred, torch.as_tensor(is_defect), torch.as_tensor(X))
    return {name: float(value) for name, value in parts.items()}


@pytest.mark.parametrize("form", LOSS_FORMS)
@SETTINGS
@given(batch=loss_batches())
def test_loss_and_gradient_are_finite(form, batch):
    X, reconstruction, latent, is_defect, _ = batch
    loss = ContrastiveLoss(**form, margin=2.0)
    reconstruction = torch.tensor(reconstruction, requires_grad=True)
    latent = torch.tensor(latent, requires_grad=True)
    value = loss((reconstruction, latent), torch.as_tensor(is_defect), torch.tensor(X))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(reconstruction.grad).all()
    # The output-space form never reads the latent code.
    if form["space"] == "latent":
        assert torch.isfinite(latent.grad).all()


@pytest.mark.parametrize("form", LOSS_FORMS)
@SETTINGS
@given(batch=loss_batches(bound=1e3))
def test_loss_ignores_row_order(form, batch):
    """Every term is a mean over rows or pairs, so only the float32 summation
    order changes. The closed-form terms subtract sums of squares, so their
    rounding error scales with the squared size of the rows."""
    X, reconstruction, latent, is_defect, order = batch
    loss = ContrastiveLoss(**form)
    original = _components(loss, X, reconstruction, latent, is_defect)
    permuted = _components(
        loss, X[order], reconstruction[order], latent[order], is_defect[order]
    )
    scale = 1.0 + max(
        float(np.square(values, dtype=np.float64).sum(axis=1).max())
        for values in (X, reconstruction, latent)
    )
    for name, value in original.items():
        assert permuted[name] == pytest.approx(value, rel=1e-5, abs=1e-6 * scale), name


def test_compactness_is_accurate_far_from_origin():
    """Rows 1e4 from the origin and 0.01 apart: the centered closed form
    matches the float64 pairwise mean."""
    generator = torch.Generator().manual_seed(0)
    latent = 1e4 + 0.01 * torch.randn(8, 3, generator=generator)
    parts = ContrastiveLoss().components(
        (torch.zeros(8, 2), latent), torch.zeros(8), torch.zeros(8, 2)
    )
    codes = latent.double()
    expected = (codes[:, None, :] - codes[None, :, :]).pow(2).sum(-1).mean() / 3
    assert float(parts["compactness"]) == pytest.approx(float(expected), rel=1e-2)


# ------------------------------------------------------------------ scores


@pytest.fixture(scope="module", params=SCORE_METHODS)
def detector(request):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(150, 4)), rng.normal(3.0, 0.5, (12, 4))])
    y = np.r_[np.zeros(150), np.ones(12)]
    return ContrastiveAEDetector(
        hidden_layer_sizes=(16,),
        latent_dim=3,
        max_epochs=5,
        score_method=request.param,
        random_state=0,
    ).fit(X, y)


def rows(bound=20.0, max_rows=40):
    return st.integers(1, max_rows).flatmap(
        lambda n_rows: arrays(
            np.float64,
            (n_rows, 4),
            elements=st.floats(-bound, bound, allow_nan=False, allow_infinity=False),
        )
    )


@SETTINGS
@given(X=rows(bound=1e15))
def test_scores_are_finite(detector, X):
    scores = detector.score_samples(X)
    assert scores.shape == (len(X),)
    assert np.isfinite(scores).all()


@SETTINGS
@given(X=rows(), data=st.data())
def test_scores_follow_row_order(detector, X, data):
    order = np.array(data.draw(st.permutations(range(len(X)))))
    np.testing.assert_allclose(
        detector.score_samples(X[order]),
        detector.score_samples(X)[order],
        rtol=SCORE_RTOL,
        atol=SCORE_ATOL,
    )


@SETTINGS
@given(X=rows(), data=st.data())
def test_scores_do_not_depend_on_chunking(detector, X, data):
    """Scoring in chunks of any sizes gives the scores of one call."""
    cuts = []
    if len(X) > 1:
        cuts = data.draw(st.lists(st.integers(1, len(X) - 1), max_size=5))
    chunks = np.split(X, sorted(set(cuts)))
    chunked = np.concatenate([detector.score_samples(chunk) for chunk in chunks])
    np.testing.assert_allclose(
        chunked, detector.score_samples(X), rtol=SCORE_RTOL, atol=SCORE_ATOL
    )


@SETTINGS
@given(X=rows(), data=st.data())
def test_scores_of_a_subset_match(detector, X, data):
    subset = data.draw(
        st.lists(st.integers(0, len(X) - 1), min_size=1, max_size=len(X))
    )
    np.testing.assert_allclose(
        detector.score_samples(X[subset]),
        detector.score_samples(X)[subset],
        rtol=SCORE_RTOL,
        atol=SCORE_ATOL,
    )

"""Tests of ContrastiveLoss and its closed-form distance sums."""

import pytest
import torch

from sk_cae import ContrastiveLoss
from sk_cae._loss import mean_cross_sq_dist, mean_pairwise_sq_dist


def _naive_pairwise(Z):
    return torch.stack([((a - b) ** 2).sum() for a in Z for b in Z]).mean()


def _naive_cross(A, B):
    return torch.stack([((a - b) ** 2).sum() for a in A for b in B]).mean()


def _batch(n_main=20, n_defect=4, width=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n_main + n_defect, 5, generator=generator)
    reconstruction = torch.randn(n_main + n_defect, 5, generator=generator)
    latent = torch.randn(n_main + n_defect, width, generator=generator)
    is_defect = torch.zeros(n_main + n_defect)
    is_defect[n_main:] = 1
    return (reconstruction, latent), is_defect, X


def test_pairwise_closed_form_equals_naive_sum():
    Z = torch.randn(17, 6, dtype=torch.float64)
    assert torch.allclose(mean_pairwise_sq_dist(Z), _naive_pairwise(Z))


def test_cross_closed_form_equals_naive_sum():
    A = torch.randn(13, 4, dtype=torch.float64)
    B = torch.randn(5, 4, dtype=torch.float64) + 2
    assert torch.allclose(mean_cross_sq_dist(A, B), _naive_cross(A, B))


def test_hinge_repulsion_equals_naive_pair_sum():
    y_pred, is_defect, X = _batch()
    loss = ContrastiveLoss(contrast="hinge", margin=1.5)
    parts = loss.components(y_pred, is_defect, X)
    latent = y_pred[1]
    main, defects = latent[:20], latent[20:]
    width = latent.shape[1]
    expected = torch.stack(
        [
            torch.relu(1.5 - ((a - b) ** 2).sum().sqrt() / width**0.5) ** 2
            for a in main
            for b in defects
        ]
    ).mean()
    assert torch.allclose(parts["repulsion"], expected, atol=1e-6)


def test_reconstruction_ignores_defect_rows():
    (reconstruction, latent), is_defect, X = _batch()
    loss = ContrastiveLoss()
    before = loss.components((reconstruction, latent), is_defect, X)
    reconstruction = reconstruction.clone()
    reconstruction[is_defect.bool()] += 100.0
    after = loss.components((reconstruction, latent), is_defect, X)
    assert torch.equal(before["reconstruction"], after["reconstruction"])
    expected = ((reconstruction[:20] - X[:20]) ** 2).mean()
    assert torch.allclose(after["reconstruction"], expected)


@pytest.mark.parametrize("contrast", ["hinge", "squared"])
def test_loss_bounded_below_when_defects_run_away(contrast):
    (reconstruction, latent), is_defect, X = _batch()
    loss = ContrastiveLoss(contrast=contrast, repulsion_weight=1.0, margin=1.0)
    far = latent.clone()
    far[is_defect.bool()] += 1e6
    value = loss((X, far), is_defect, X)
    assert torch.isfinite(value)
    assert value >= -4.0


@pytest.mark.parametrize("contrast", ["hinge", "squared"])
def test_repulsion_gradient_pushes_defects_away(contrast):
    (reconstruction, latent), is_defect, X = _batch()
    latent = (latent * 0.1).requires_grad_(True)
    loss = ContrastiveLoss(
        contrast=contrast, repulsion_weight=1.0, compactness_weight=0.0, margin=2.0
    )
    loss((reconstruction, latent), is_defect, X).backward()
    defects = latent[20:].detach()
    away = defects - latent[:20].detach().mean(dim=0)
    # A gradient step moves each defect along -grad; it must point away
    # from the main group's centre.
    step = -latent.grad[20:]
    assert ((step * away).sum(dim=1) > 0).all()


def test_compactness_gradient_pulls_main_rows_together():
    (reconstruction, latent), is_defect, X = _batch()
    latent = latent.requires_grad_(True)
    loss = ContrastiveLoss(repulsion_weight=0.0, compactness_weight=1.0)
    loss((reconstruction, latent), is_defect, X).backward()
    main = latent[:20].detach()
    towards_centre = main.mean(dim=0) - main
    step = -latent.grad[:20]
    assert ((step * towards_centre).sum(dim=1) > 0).all()


def test_batch_without_defects_has_zero_repulsion():
    (reconstruction, latent), _, X = _batch()
    is_defect = torch.zeros(len(X))
    for contrast in ("hinge", "squared"):
        parts = ContrastiveLoss(contrast=contrast).components(
            (reconstruction, latent), is_defect, X
        )
        assert parts["repulsion"].item() == 0.0


def test_output_space_uses_reconstruction_distances():
    (reconstruction, latent), is_defect, X = _batch()
    loss = ContrastiveLoss(space="output", compactness_weight=1.0)
    parts = loss.components((reconstruction, latent), is_defect, X)
    expected = mean_pairwise_sq_dist(reconstruction[:20]) / reconstruction.shape[1]
    assert torch.allclose(parts["compactness"], expected)


def test_coinciding_rows_give_finite_gradient():
    X = torch.zeros(4, 3)
    latent = torch.zeros(4, 2, requires_grad=True)
    is_defect = torch.tensor([0.0, 0.0, 1.0, 1.0])
    ContrastiveLoss()((X, latent), is_defect, X).backward()
    assert torch.isfinite(latent.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"contrast": "cubic"}, "contrast='cubic' is not supported"),
        ({"space": "input"}, "space='input' is not supported"),
        ({"margin": 0.0}, "margin must be > 0, got 0.0"),
    ],
)
def test_invalid_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveLoss(**kwargs)


@pytest.mark.parametrize("contrast", ["hinge", "squared"])
def test_row_order_does_not_change_loss(contrast):
    """Defects last (sliced) and shuffled rows (masked) give the same terms."""
    (reconstruction, latent), is_defect, X = _batch()
    loss = ContrastiveLoss(contrast=contrast)
    ordered = loss.components((reconstruction, latent), is_defect, X)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(1))
    shuffled = loss.components(
        (reconstruction[order], latent[order]), is_defect[order], X[order]
    )
    assert is_defect[order][-1] == 0  # the shuffled batch takes the masked path
    for name, value in ordered.items():
        assert torch.allclose(value, shuffled[name], rtol=1e-5), name

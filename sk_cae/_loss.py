"""``ContrastiveLoss``: reconstruction, repulsion and compactness (plain torch)."""

import torch
from torch import nn

CONTRASTS = ("hinge", "squared")
SPACES = ("latent", "output")


def mean_pairwise_sq_dist(Z):
    """Mean squared distance over all ordered pairs of rows of ``Z``.

    Uses ``sum_ij ||z_i - z_j||^2 = 2 m sum_i ||z_i - z_bar||^2``, which costs
    O(m) instead of O(m^2). Centering on the mean ``z_bar`` before squaring
    avoids the cancellation of the textbook form ``m sum ||z||^2 - ||sum z||^2``
    for rows far from the origin.
    """
    if Z.shape[0] == 0:
        return Z.new_zeros(())
    centered = Z - Z.mean(dim=0)
    return 2.0 * (centered * centered).sum(dim=1).mean()


def mean_cross_sq_dist(A, B):
    """Mean squared distance between every row of ``A`` and every row of ``B``.

    Uses ``mean_ik ||a_i - b_k||^2 = mean ||a - a_bar||^2 + mean ||b - b_bar||^2
    + ||a_bar - b_bar||^2``, which costs O(len(A) + len(B)) instead of
    O(len(A) * len(B)) and, centered, does not cancel far from the origin.
    """
    if A.shape[0] == 0 or B.shape[0] == 0:
        return A.new_zeros(())
    a_mean, b_mean = A.mean(dim=0), B.mean(dim=0)
    a_spread = ((A - a_mean) ** 2).sum(dim=1).mean()
    b_spread = ((B - b_mean) ** 2).sum(dim=1).mean()
    return a_spread + b_spread + ((a_mean - b_mean) ** 2).sum()


def _pairwise_dist(A, B, eps=1e-12):
    """Euclidean distances between the rows of ``A`` and of ``B``.

    The small ``eps`` under the square root keeps the gradient finite where
    two rows coincide, which ``torch.cdist`` does not guarantee.
    """
    sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return torch.sqrt(sq.clamp_min(0.0) + eps)


def _group_rows(is_defect):
    """Return the row selectors of the main group and of the defects.

    They are slices when the defects are the last rows of the batch, as
    :class:`sk_cae.ContrastiveAENet` builds its batches: slicing makes views,
    where boolean masks copy the rows forward and scatter their gradients
    backward. Boolean masks otherwise.
    """
    n_rows = is_defect.shape[0]
    n_main = n_rows - int(is_defect.sum())
    if bool(is_defect[n_main:].all()):
        return slice(0, n_main), slice(n_main, n_rows)
    return ~is_defect, is_defect


class ContrastiveLoss(nn.Module):
    """Contrastive autoencoder loss for a main group and labeled defects.

    The loss of a batch with main-group rows ``M`` and defect rows ``D`` is::

        reconstruction(M)
        + repulsion_weight * repulsion(M, D)
        + compactness_weight * compactness(M)

    * ``reconstruction`` is the mean squared error of the main-group rows
      only, so the autoencoder never learns to reconstruct the defects.
    * ``repulsion`` moves defects away from the main group. With
      ``contrast="hinge"`` it is ``mean_ik max(0, margin - ||m_i - d_k||)^2``
      over every main/defect pair (``O(|M| |D|)`` per batch), which is zero once
      every defect is at least ``margin`` away from every main row. With
      ``contrast="squared"`` it is ``-min(mean_ik ||m_i - d_k||^2,
      4 * margin^2)``, the literal negative squared distance computed in closed
      form (``O(|M| + |D|)``) and clipped so it cannot run to minus infinity.
    * ``compactness`` is the mean squared distance between two main-group
      rows, computed in closed form (``O(|M|)``).

    Both distance terms are divided by the width of the space they are
    computed in, so the weights mean the same for any latent size.

    Parameters
    ----------
    contrast : {"hinge", "squared"}, default="hinge"
        Form of the repulsion term, see above.

    space : {"latent", "output"}, default="latent"
        Where distances are measured: on the encoder's output (the latent
        code), so that reorganising the latent space does not cost
        reconstruction quality, or on the reconstruction.

    repulsion_weight : float, default=1.0
        Weight of the repulsion term.

    compactness_weight : float, default=1.0
        Weight of the compactness term.

    margin : float, default=1.0
        Hinge margin, in units of root mean squared distance per coordinate,
        and the cap of the squared form's mean distance (``4 * margin^2``).

    Notes
    -----
    ``forward(y_pred, is_defect, X)`` takes ``y_pred = (reconstruction,
    latent)`` as returned by :class:`~sk_cae._module.AutoEncoder`, a 0/1 or
    boolean ``is_defect`` tensor with one entry per row, and the input rows
    ``X``. Every form is bounded below: the reconstruction, the hinge and the
    compactness terms are non-negative, and the squared repulsion is at least
    ``-4 * margin^2 * repulsion_weight``.

    A batch with no defect rows contributes no repulsion: feed defects to every
    batch (as :class:`sk_cae.ContrastiveAENet` does) so the contrast never
    vanishes.
    """

    def __init__(
        self,
        contrast="hinge",
        space="latent",
        repulsion_weight=1.0,
        compactness_weight=1.0,
        margin=1.0,
    ):
        super().__init__()
        if contrast not in CONTRASTS:
            raise ValueError(
                f"contrast={contrast!r} is not supported; expected one of "
                f"{list(CONTRASTS)}."
            )
        if space not in SPACES:
            raise ValueError(
                f"space={space!r} is not supported; expected one of {list(SPACES)}."
            )
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin!r}.")
        self.contrast = contrast
        self.space = space
        self.repulsion_weight = repulsion_weight
        self.compactness_weight = compactness_weight
        self.margin = margin

    def components(self, y_pred, is_defect, X):
        """Return the unweighted loss terms as a dict of scalar tensors.

        Keys: ``"reconstruction"``, ``"repulsion"`` and ``"compactness"``.
        """
        reconstruction, latent = y_pred
        main_rows, defect_rows = _group_rows(is_defect.reshape(-1).to(torch.bool))

        reconstructed_main = reconstruction[main_rows]
        if reconstructed_main.shape[0]:
            error = (reconstructed_main - X[main_rows]) ** 2
            reconstruction_term = error.mean()
        else:
            reconstruction_term = reconstruction.new_zeros(())

        codes = latent if self.space == "latent" else reconstruction
        width = codes.shape[1]
        main = codes[main_rows]
        defects = codes[defect_rows]
        compactness = mean_pairwise_sq_dist(main) / width
        if self.contrast == "squared":
            cross = mean_cross_sq_dist(main, defects) / width
            repulsion = -torch.clamp(cross, max=4.0 * self.margin**2)
        elif main.shape[0] and defects.shape[0]:
            distances = _pairwise_dist(main, defects) / width**0.5
            repulsion = torch.relu(self.margin - distances).pow(2).mean()
        else:
            repulsion = codes.new_zeros(())
        return {
            "reconstruction": reconstruction_term,
            "repulsion": repulsion,
            "compactness": compactness,
        }

    def combine(self, components):
        """Return the weighted sum of the terms returned by :meth:`components`."""
        return (
            components["reconstruction"]
            + self.repulsion_weight * components["repulsion"]
            + self.compactness_weight * components["compactness"]
        )

    def forward(self, y_pred, is_defect, X):
        return self.combine(self.components(y_pred, is_defect, X))

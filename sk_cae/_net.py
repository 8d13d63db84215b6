"""The skorch ``NeuralNet`` that trains the autoencoder with the contrastive loss."""

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, PassthroughScoring
from skorch.dataset import Dataset
from skorch.utils import to_tensor

from ._loss import ContrastiveLoss
from ._module import as_tensor

LOSS_COMPONENTS = ("reconstruction", "repulsion", "compactness")


class DefectBatchIterator:
    """Batches of main-group rows, each followed by labeled defect rows.

    Every batch holds up to ``batch_size`` main-group rows and then
    ``min(n_defects, rows in the batch)`` defect rows, so the contrastive term
    sees defects at every step however few there are, while the cost of a
    step stays linear in the batch size. When there are more defects than
    that, consecutive batches take consecutive slices of a shuffled defect
    order, so every defect is used once before any is used twice.

    Batches are ``(X_batch, is_defect)`` pairs of float32 tensors.
    """

    def __init__(self, X, is_defect, batch_size, shuffle):
        self.X = X
        self.main_index = torch.nonzero(~is_defect).reshape(-1)
        self.defect_index = torch.nonzero(is_defect).reshape(-1)
        n_main = len(self.main_index)
        self.batch_size = n_main if batch_size in (-1, None) else int(batch_size)
        self.batch_size = max(self.batch_size, 1)
        self.shuffle = shuffle

    def __len__(self):
        return -(-len(self.main_index) // self.batch_size)

    def __iter__(self):
        main, defects = self.main_index, self.defect_index
        if self.shuffle:
            main = main[torch.randperm(len(main))]
            defects = defects[torch.randperm(len(defects))]
        n_defects = len(defects)
        cursor = 0
        for start in range(0, len(main), self.batch_size):
            batch = main[start : start + self.batch_size]
            n_take = min(n_defects, len(batch))
            if n_take == n_defects:
                taken = defects
            else:
                positions = torch.arange(cursor, cursor + n_take) % n_defects
                taken = defects[positions]
                cursor = (cursor + n_take) % n_defects
            rows = torch.cat([batch, taken])
            is_defect = torch.zeros(len(rows), dtype=torch.float32)
            is_defect[len(batch) :] = 1.0
            yield self.X[rows], is_defect


def _dataset_arrays(dataset):
    """Return ``(X, y)`` tensors of a skorch ``Dataset`` or a ``Subset`` of one,
    or ``None`` when the dataset is of another kind."""
    indices = None
    if isinstance(dataset, torch.utils.data.Subset):
        indices = np.asarray(dataset.indices)
        dataset = dataset.dataset
    if type(dataset) is not Dataset or dataset.y is None:
        return None
    X, y = dataset.X, dataset.y
    if not isinstance(X, np.ndarray | torch.Tensor):
        return None
    X = as_tensor(X)
    y = torch.as_tensor(np.asarray(y)).reshape(-1)
    if indices is not None:
        index = torch.as_tensor(indices, dtype=torch.long)
        X, y = X[index], y[index]
    return X, y != 0


class NonFiniteLossError(FloatingPointError):
    """Raised when a training or validation loss is NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stop training with a clear error as soon as a batch loss is not finite."""

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        key = "train_loss" if training else "valid_loss"
        loss = net.history[-1, "batches", -1, key]
        if np.isfinite(loss):
            return
        raise NonFiniteLossError(
            f"The {key.replace('_', ' ')} became {loss} at epoch "
            f"{len(net.history)}. The usual causes are a learning rate that is "
            f"too high (lr={net.lr:g}) or input features that are not scaled: "
            "standardize X, for example with sklearn.preprocessing.StandardScaler "
            "in a Pipeline, or lower lr."
        )


class ContrastiveAENet(NeuralNet):
    """skorch ``NeuralNet`` for contrastive autoencoder training.

    ``fit(X, y)`` takes the input rows ``X`` and the defect flags ``y``
    (1 for a labeled defect, 0 for every other row). The module must return
    ``(reconstruction, latent)``, as :class:`sk_cae._module.AutoEncoder` does,
    and the criterion defaults to :class:`sk_cae.ContrastiveLoss`.

    Two things differ from a plain ``NeuralNet``:

    * the training and validation iterators append labeled defects to every
      batch of main-group rows (see :class:`DefectBatchIterator`), so the
      contrast never vanishes for lack of defects in a batch. A validation
      split made by ``skorch.dataset.ValidSplit(..., stratified=True)`` keeps
      defects on both sides;
    * each loss component is recorded per batch and averaged per epoch in
      ``history`` as ``train_reconstruction``, ``train_repulsion``,
      ``train_compactness`` (and ``valid_*`` with a validation split).

    Training stops with :class:`NonFiniteLossError` if a loss becomes NaN or
    infinite.
    """

    def __init__(self, module, *args, criterion=ContrastiveLoss, **kwargs):
        super().__init__(module, *args, criterion=criterion, **kwargs)

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        print_log = callbacks.pop()
        for prefix in ("train", "valid"):
            for name in LOSS_COMPONENTS:
                key = f"{prefix}_{name}"
                callbacks.append(
                    (key, PassthroughScoring(name=key, on_train=prefix == "train"))
                )
        callbacks.append(("stop_on_non_finite_loss", StopOnNonFiniteLoss()))
        callbacks.append(print_log)
        return callbacks

    def get_iterator(self, dataset, training=False):
        arrays = _dataset_arrays(dataset)
        if arrays is None:
            return super().get_iterator(dataset, training=training)
        X, is_defect = arrays
        if training:
            batch_size = self.get_params_for("iterator_train").get(
                "batch_size", self.batch_size
            )
        else:
            batch_size = self.get_params_for("iterator_valid").get(
                "batch_size", self.batch_size
            )
        return DefectBatchIterator(X, is_defect, batch_size, shuffle=training)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = to_tensor(y_true, device=self.device)
        X = to_tensor(X, device=self.device)
        if not hasattr(self.criterion_, "components"):
            return self.criterion_(y_pred, y_true, X)
        parts = self.criterion_.components(y_pred, y_true, X)
        prefix = "train" if training else "valid"
        for name, value in parts.items():
            self.history.record_batch(f"{prefix}_{name}", value.item())
        return self.criterion_.combine(parts)

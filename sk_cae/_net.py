"""The skorch ``NeuralNet`` that trains the autoencoder with the contrastive loss."""

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, PassthroughScoring
from skorch.dataset import Dataset
from skorch.utils import to_tensor

from ._loss import ContrastiveLoss
from ._module import as_tensor

LOSS_COMPONENTS = ("reconstruction", "repulsion", "compactness")

# Optimizers that the net creates with ``fused=True`` unless the optimizer
# arguments choose another implementation. One kernel then updates every
# parameter, which on a CPU halves the optimizer's share of a training step of
# the default network. Subclasses are left alone, since they may change
# ``step``.
FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)

# Optimizer arguments that choose the implementation; when one is given, the
# net does not add ``fused=True``.
IMPLEMENTATION_ARGUMENTS = ("fused", "foreach", "differentiable", "capturable")


def _fused_optimizer_supported(device):
    """Return True if torch's fused Adam runs on ``device``.

    CUDA has it in every torch version that sk_cae supports (2.1 and later),
    the CPU from torch 2.4 on.
    """
    device_type = torch.device(device).type
    if device_type == "cuda":
        return True
    version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    return device_type == "cpu" and version >= (2, 4)


class DefectBatchIterator:
    """Batches of main-group rows, each followed by labeled defect rows.

    Every batch holds up to ``batch_size`` main-group rows and then
    ``min(n_defects, rows in the batch)`` defect rows, so the contrastive term
    sees defects at every step however few there are, while the cost of a
    step stays linear in the batch size. When there are more defects than
    that, consecutive batches take consecutive slices of a shuffled defect
    order, so every defect is used once before any is used twice.

    Batches are ``(X_batch, is_defect)`` pairs of float32 tensors on
    ``device``. ``X`` is moved there once, when the iterator is made, so an
    accelerator receives the rows in one transfer per epoch instead of one
    per batch. The row order is drawn on the CPU, so a seed gives the same
    batches on every device.
    """

    def __init__(self, X, is_defect, batch_size, shuffle, device="cpu"):
        self.X = X.to(device)
        self.main_index = torch.nonzero(~is_defect).reshape(-1)
        self.defect_index = torch.nonzero(is_defect).reshape(-1)
        n_main = len(self.main_index)
        self.batch_size = n_main if batch_size in (-1, None) else int(batch_size)
        self.batch_size = max(self.batch_size, 1)
        self.shuffle = shuffle
        self._flags = {}

    def _defect_flags(self, n_main, n_defects):
        """Return the ``is_defect`` tensor of a batch, made once per shape.

        Batches share it: the loss only reads it.
        """
        key = (n_main, n_defects)
        if key not in self._flags:
            flags = torch.zeros(n_main + n_defects, dtype=torch.float32)
            flags[n_main:] = 1.0
            self._flags[key] = flags.to(self.X.device)
        return self._flags[key]

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
            rows = torch.cat([batch, taken]).to(self.X.device)
            yield self.X[rows], self._defect_flags(len(batch), n_take)


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


def _early_stopping_fired(net):
    """Return True if an ``EarlyStopping`` callback of ``net`` has just
    raised its ``KeyboardInterrupt``, which it does once its patience is used."""
    return any(
        isinstance(callback, EarlyStopping)
        and getattr(callback, "misses_", 0) >= callback.patience
        for _, callback in net.callbacks_
    )


class NonFiniteLossError(FloatingPointError):
    """Raised when a training or validation loss is NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stop training with a clear error as soon as a batch loss is not finite."""

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        key = "train_loss" if training else "valid_loss"
        # Plain indexing: History's tuple keys cost a few microseconds a batch.
        loss = net.history[-1]["batches"][-1][key]
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
    infinite. After ``fit``, ``interrupted_`` is True when a
    ``KeyboardInterrupt`` other than ``EarlyStopping``'s ended training:
    skorch's ``partial_fit`` catches both kinds and returns normally.
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

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        self.interrupted_ = False
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            self.interrupted_ = not _early_stopping_fired(self)
            raise

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
        return DefectBatchIterator(
            X, is_defect, batch_size, shuffle=training, device=self.device
        )

    def _set_training(self, training=True):
        # skorch calls this before every batch, and nn.Module.train walks every
        # submodule: tens of microseconds for the default network, a few
        # percent of a CPU training step. Modules whose own flag already has
        # the requested mode are skipped, so a submodule switched by hand
        # keeps its mode.
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, torch.nn.Module) and module.training != training:
                module.train(training)

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if (
            getattr(self, prefix, None) in FUSED_OPTIMIZERS
            and not any(name in kwargs for name in IMPLEMENTATION_ARGUMENTS)
            and _fused_optimizer_supported(self.device)
        ):
            kwargs["fused"] = True
        return args, kwargs

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

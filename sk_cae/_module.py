"""The autoencoder ``nn.Module`` trained by the detector (plain torch)."""

import warnings
from itertools import pairwise

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def _stack(sizes, activation, dropout):
    """Build linear layers between consecutive ``sizes``, each followed by
    ``activation`` and, when ``dropout > 0``, a dropout layer."""
    layers = []
    for n_in, n_out in pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers


class AutoEncoder(nn.Module):
    """Fully connected autoencoder whose decoder mirrors its encoder.

    ``forward`` returns ``(reconstruction, latent)`` so that a loss can use
    both the output and the encoder's code.

    Parameters
    ----------
    n_features : int
        Width of the input and of the reconstruction.

    hidden_layer_sizes : tuple of int, default=(64, 32)
        Widths of the encoder's hidden layers, from the input inwards. The
        decoder uses the same widths in reverse order.

    latent_dim : int, default=8
        Width of the latent code.

    activation : {"relu", "leaky_relu", "elu", "gelu", "tanh"}, default="relu"
        Non-linearity after every hidden layer.

    dropout : float, default=0.0
        Dropout probability after every hidden layer.

    bounded_latent : bool, default=False
        If True, the latent code goes through ``tanh``, so every coordinate
        lies in (-1, 1) and squared latent distances are bounded by
        ``4 * latent_dim``.
    """

    def __init__(
        self,
        n_features,
        hidden_layer_sizes=(64, 32),
        latent_dim=8,
        activation="relu",
        dropout=0.0,
        bounded_latent=False,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is not supported; expected one of "
                f"{sorted(ACTIVATIONS)}."
            )
        widths = [int(n_features), *map(int, hidden_layer_sizes)]
        encoder = _stack(widths, activation, dropout)
        encoder.append(nn.Linear(widths[-1], int(latent_dim)))
        if bounded_latent:
            encoder.append(nn.Tanh())
        decoder = _stack([int(latent_dim), *widths[:0:-1]], activation, dropout)
        decoder.append(
            nn.Linear(widths[1] if len(widths) > 1 else latent_dim, widths[0])
        )
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, X):
        latent = self.encoder(X)
        return self.decoder(latent), latent

    @torch.no_grad()
    def encode(self, X):
        """Return the latent code of ``X`` without tracking gradients."""
        return self.encoder(X)


def as_tensor(array):
    """Return a tensor that shares memory with ``array`` where possible.

    Read-only arrays (memmaps, pandas buffers) are shared too, without
    torch's warning: the library never writes to its input tensors.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.as_tensor(array)

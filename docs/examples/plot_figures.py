"""
Figures of a fitted detector
============================

``sk_cae.plotting`` draws what a detector learned: the loss terms per epoch,
the anomaly scores of each group of rows with the alarm threshold, and the
latent codes. Here a plain autoencoder (fitted without labels) and a
contrastive one (fitted with 10 labeled defects) are drawn side by side on
the test rows of the digits scenario. The figures need the ``plot`` extra
(matplotlib).
"""

# %%
# Two models
# ----------
import matplotlib.pyplot as plt
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler

from sk_cae import ContrastiveAEDetector
from sk_cae.datasets import load_digits_scenario
from sk_cae.plotting import (
    LatentSpaceDisplay,
    ScoreDistributionDisplay,
    TrainingHistoryDisplay,
)

split = load_digits_scenario(n_labeled=10, seed=0)
model = make_pipeline(
    MinMaxScaler(), ContrastiveAEDetector(max_epochs=30, random_state=0)
)
models = {
    "plain autoencoder": clone(model).fit(split.X_train),
    "contrastive autoencoder": clone(model).fit(split.X_train, split.y_train),
}

# %%
# Training history
# ----------------
# Each loss term, unweighted, per epoch, on a logarithmic axis. Without
# labels there are no defects to repel: the repulsion is zero, which a
# logarithmic axis does not draw.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for ax, (name, fitted) in zip(axes, models.items(), strict=True):
    TrainingHistoryDisplay.from_estimator(fitted, ax=ax)
    ax.set_title(name)
    ax.set_yscale("log")

# %%
# Scores and threshold
# --------------------
# Shares of each role's test rows per anomaly score, with the threshold as a
# dashed line. The plain autoencoder scores by reconstruction error, and there
# the other outliers overlap the defects. The contrastive one scores by latent
# position, which moves the defects to the right of the other outliers.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for ax, (name, fitted) in zip(axes, models.items(), strict=True):
    ScoreDistributionDisplay.from_estimator(
        fitted, split.X_test, split.role_test, ax=ax
    )
    ax.set_title(name)

# %%
# Latent space
# ------------
# The first two principal components of the latent codes of the test rows.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for ax, (name, fitted) in zip(axes, models.items(), strict=True):
    LatentSpaceDisplay.from_estimator(fitted, split.X_test, split.role_test, ax=ax)
    ax.set_title(name)
plt.show()

# %%
# From the command line, ``sk-cae demo --plots DIR`` writes the same kind of
# figures for the demo's two models as PNG files.

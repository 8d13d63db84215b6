"""
Categorical columns in a pipeline
=================================

The detector needs numeric, scaled input. Real tables also hold text columns,
such as the machine a part came from. A ``ColumnTransformer`` one-hot encodes
those and scales the numeric ones, and the detector is the last step of the
``Pipeline``, so that new rows go through the same preprocessing.
"""

# %%
# A table of parts
# ----------------
# Normal parts have two correlated measurements. Some parts come from a rare
# supplier and are merely unusual: they are the *other* outliers. The defect
# has a low pressure for its temperature and appears mostly on machine ``C``.
import numpy as np
import pandas as pd

rng = np.random.default_rng(0)


def make_parts(n_normal, n_other, n_defect):
    temperature = rng.normal(70, 5, n_normal + n_other + n_defect)
    pressure = 2.0 * temperature + rng.normal(0, 3, len(temperature))
    role = np.repeat(["normal", "other", "defect"], [n_normal, n_other, n_defect])
    supplier = np.where(
        role == "other", "rare", rng.choice(["north", "south"], len(role))
    )
    other = role == "other"
    temperature[other] += rng.normal(25, 5, other.sum())
    pressure[other] += 2.0 * 25
    defect = role == "defect"
    pressure[defect] -= rng.normal(25, 4, defect.sum())
    machine = rng.choice(["A", "B", "C"], len(role))
    machine[defect] = rng.choice(["B", "C"], defect.sum(), p=[0.2, 0.8])
    return pd.DataFrame(
        {
            "temperature": temperature,
            "pressure": pressure,
            "machine": machine,
            "supplier": supplier,
            "role": role,
        }
    )


train = make_parts(n_normal=600, n_other=30, n_defect=30)
test = make_parts(n_normal=600, n_other=30, n_defect=15)
train.head()

# %%
# Only some defects are labeled: ``y`` is 1 for 12 of the 30 training defects
# and 0 for every other row, other outliers and unlabeled defects included.
defect_rows = np.flatnonzero(train["role"] == "defect")
y_train = np.zeros(len(train), dtype=int)
y_train[defect_rows[:12]] = 1
X_train = train.drop(columns="role")
X_test = test.drop(columns="role")

# %%
# The pipeline
# ------------
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sk_cae import ContrastiveAEDetector

preprocess = ColumnTransformer(
    [
        ("numeric", StandardScaler(), ["temperature", "pressure"]),
        (
            "categorical",
            OneHotEncoder(handle_unknown="ignore", sparse_output=False),
            ["machine", "supplier"],
        ),
    ]
)
model = make_pipeline(
    preprocess,
    ContrastiveAEDetector(
        hidden_layer_sizes=(16,), latent_dim=4, max_epochs=40, random_state=0
    ),
)
model.fit(X_train, y_train)

# %%
# ``handle_unknown="ignore"`` encodes a category never seen in training as all
# zeros rather than failing. The network trains on dense arrays: the detector
# would densify a sparse matrix itself (up to 1 GiB), and
# ``sparse_output=False`` makes the encoder's output dense from the start.
#
# Ranking the test parts
# ----------------------
# The anomaly score is ``-score_samples``; the plain autoencoder is the same
# pipeline fitted without labels, for comparison.
from sklearn.base import clone
from sklearn.metrics import average_precision_score

plain = clone(model).fit(X_train)
is_defect = test["role"] == "defect"
for name, fitted in [("plain autoencoder", plain), ("contrastive", model)]:
    anomaly = -fitted.score_samples(X_test)
    top = test["role"].to_numpy()[np.argsort(-anomaly)[:15]]
    print(
        f"{name:>18}: defect AP {average_precision_score(is_defect, anomaly):.3f}, "
        f"15 highest scores: {(top == 'defect').sum()} defects, "
        f"{(top == 'other').sum()} other outliers"
    )

# %%
# ``predict`` flags rows with ``-1``. Its threshold comes from the training
# rows (``contamination="auto"``); :doc:`plot_thresholds` shows how to set it
# from a target instead.
pd.crosstab(test["role"], model.predict(X_test), colnames=["predict"])

"""
The command line
================

Installing sk_cae adds the ``sk-cae`` command (also available as
``python -m sk_cae``). It trains a model on a CSV or Parquet file, scores new
files with it and evaluates it on labeled rows, with no Python to write. This
example runs the commands and prints their output, so what is shown below is
the output of the installed version.
"""

# %%
# Running the commands
# --------------------
# Each command runs as its own process, as it would from a shell.
import subprocess
import sys
import tempfile
from pathlib import Path


def sk_cae(*arguments):
    """Run ``sk-cae`` with ``arguments``, print the command and its output."""
    print("$ sk-cae", " ".join(arguments))
    completed = subprocess.run(
        [sys.executable, "-m", "sk_cae", *arguments],
        capture_output=True,
        text=True,
        check=True,
    )
    print(completed.stdout)


sk_cae("--help")

# %%
# ``sk-cae COMMAND --help`` describes each command and its options.
#
# The demo
# --------
# ``sk-cae demo`` fits a plain and a contrastive autoencoder on the digits
# scenario and prints how well each finds the defects. It takes about a
# minute on 2 CPU cores, so this page shows only its options.
sk_cae("demo", "--help")

# %%
# Data files
# ----------
# Two CSV files from the digits scenario: a training file where the column
# ``status`` is ``defect`` for the 10 labeled defects and empty for every
# other row, and a test file where ``status`` gives the truth. Each row has an
# identifier, ``part``, that is not a feature.
import pandas as pd

from sk_cae.datasets import load_digits_scenario

split = load_digits_scenario(n_labeled=10, seed=0)
folder = Path(tempfile.mkdtemp())
columns = [f"pixel_{i}" for i in range(split.X_train.shape[1])]

train = pd.DataFrame(split.X_train, columns=columns)
train.insert(0, "part", [f"T{i:04d}" for i in range(len(train))])
train["status"] = ["defect" if flag else "" for flag in split.y_train]
train.to_csv(folder / "train.csv", index=False)

test = pd.DataFrame(split.X_test, columns=columns)
test.insert(0, "part", [f"N{i:04d}" for i in range(len(test))])
test["status"] = split.role_test
test.to_csv(folder / "test.csv", index=False)

# %%
# Training
# --------
# ``fit`` trains on every column other than the label and the id, and saves
# the model with its preprocessing to one file. 15 epochs keep this page
# fast; the default is 100.
model_file = str(folder / "digits.skcae")
sk_cae(
    "fit",
    str(folder / "train.csv"),
    "--label-column",
    "status",
    "--defect-value",
    "defect",
    "--id-column",
    "part",
    "--max-epochs",
    "15",
    "--model",
    model_file,
)

# %%
# Scoring
# -------
# ``score`` writes one row per input row: the id, the score (negative means
# flagged) and the flag.
sk_cae(
    "score",
    model_file,
    str(folder / "test.csv"),
    "--id-column",
    "part",
    "--out",
    str(folder / "scores.csv"),
)
scores = pd.read_csv(folder / "scores.csv")
scores.sort_values("score").head()

# %%
# Evaluating
# ----------
# ``evaluate`` compares the model's ranking and flags with the labels of the
# test file, where only ``defect`` marks a defect.
sk_cae(
    "evaluate",
    model_file,
    str(folder / "test.csv"),
    "--label-column",
    "status",
    "--defect-value",
    "defect",
)

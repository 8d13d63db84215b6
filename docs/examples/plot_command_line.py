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
# The ``sk-cae`` script calls ``sk_cae.cli.main`` with its arguments. This
# page calls that function directly, in a scratch folder, and prints each
# command line before its output.
import os
import tempfile
from pathlib import Path

from sk_cae.cli import main

scratch = Path(tempfile.mkdtemp())


def sk_cae(*arguments):
    """Print the command line, then run it in ``scratch`` as ``sk-cae`` would."""
    print("$ sk-cae", " ".join(arguments))
    previous = os.getcwd()
    os.chdir(scratch)
    try:
        status = main(list(arguments))
    except SystemExit as stop:  # --help prints and exits with status 0
        status = stop.code
    finally:
        os.chdir(previous)
    assert status in (0, None), f"sk-cae {arguments[0]} failed with {status}"


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
# Two CSV files from the digits scenario, in the scratch folder: a training
# file where the column ``status`` is ``defect`` for the 10 labeled defects
# and empty for every other row, and a test file where ``status`` gives the
# truth. Each row has an identifier, ``part``, that is not a feature.
import pandas as pd

from sk_cae.datasets import load_digits_scenario

split = load_digits_scenario(n_labeled=10, seed=0)
columns = [f"pixel_{i}" for i in range(split.X_train.shape[1])]

train = pd.DataFrame(split.X_train, columns=columns)
train.insert(0, "part", [f"T{i:04d}" for i in range(len(train))])
train["status"] = ["defect" if flag else "" for flag in split.y_train]
train.to_csv(scratch / "train.csv", index=False)

test = pd.DataFrame(split.X_test, columns=columns)
test.insert(0, "part", [f"N{i:04d}" for i in range(len(test))])
test["status"] = split.role_test
test.to_csv(scratch / "test.csv", index=False)

# %%
# Training
# --------
# ``fit`` trains on every column other than the label and the id, and saves
# the model with its preprocessing to one file. 15 epochs keep this page
# fast; the default is 100.
model_file = "digits.skcae"
sk_cae(
    "fit",
    "train.csv",
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
    "test.csv",
    "--id-column",
    "part",
    "--out",
    "scores.csv",
)
scores = pd.read_csv(scratch / "scores.csv")
scores.sort_values("score").head()

# %%
# Evaluating
# ----------
# ``evaluate`` compares the model's ranking and flags with the labels of the
# test file, where only ``defect`` marks a defect.
sk_cae(
    "evaluate",
    model_file,
    "test.csv",
    "--label-column",
    "status",
    "--defect-value",
    "defect",
)

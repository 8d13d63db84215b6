"""Tests of the scenario split and the bundled digits scenario."""

import numpy as np
import pytest

from sk_cae.datasets import load_digits_scenario, split_scenario


def _roles(n_normal=400, n_defect=60, n_other=80):
    role = np.array(["normal"] * n_normal + ["defect"] * n_defect + ["other"] * n_other)
    X = np.arange(len(role), dtype=float)[:, None]
    return X, role


def test_split_applies_caps_and_labels():
    X, role = _roles()
    split = split_scenario(X, role, n_labeled=10, seed=0)
    assert (split.role_train == "normal").sum() == 200
    assert (split.role_train == "other").sum() == int(0.05 * 200)
    assert (split.role_train == "defect").sum() == 10 + int(0.01 * 200)
    assert split.y_train.sum() == 10
    assert set(split.role_train[split.y_train == 1]) == {"defect"}
    assert (split.role_test == "normal").sum() == 200
    assert (split.role_test == "other").sum() == 10
    assert (split.role_test == "defect").sum() == max(int(0.02 * 200), 5)


def test_split_train_and_test_are_disjoint():
    X, role = _roles()
    split = split_scenario(X, role, seed=3)
    assert not set(split.X_train[:, 0]) & set(split.X_test[:, 0])


def test_split_depends_on_seed_only():
    X, role = _roles()
    first = split_scenario(X, role, seed=1)
    again = split_scenario(X, role, seed=1)
    other = split_scenario(X, role, seed=2)
    assert np.array_equal(first.X_train, again.X_train)
    assert not np.array_equal(first.X_train, other.X_train)


def test_split_rejects_too_few_defects():
    X, role = _roles(n_defect=8)
    with pytest.raises(
        ValueError, match="training pool has 4 defects but n_labeled=10"
    ):
        split_scenario(X, role, n_labeled=10)


def test_split_rejects_unknown_roles():
    X, role = _roles()
    role[0] = "weird"
    with pytest.raises(ValueError, match=r"role contains \['weird'\]"):
        split_scenario(X, role)


def test_digits_scenario_roles():
    split = load_digits_scenario(n_labeled=5, seed=0)
    assert split.X_train.shape[1] == 64
    assert split.y_train.sum() == 5
    assert set(split.role_test) == {"normal", "defect", "other"}
    assert split.y_test.sum() == (split.role_test == "defect").sum()

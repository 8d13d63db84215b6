import numpy as np
import pytest
import torch

# The test models are tiny, so one thread is as fast as several, and it keeps
# the suite from slowing down many times over when other jobs share the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed NumPy and torch so that tests do not depend on their order."""
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def blobs():
    """A main group around the origin and 12 defects around (4, 4, 4, 4)."""
    rng = np.random.default_rng(0)
    X_main = rng.normal(size=(300, 4)).astype(np.float32)
    X_defect = rng.normal(4.0, 0.5, size=(12, 4)).astype(np.float32)
    X = np.vstack([X_main, X_defect])
    y = np.r_[np.zeros(len(X_main)), np.ones(len(X_defect))].astype(int)
    return X, y

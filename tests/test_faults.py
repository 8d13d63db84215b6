"""Faults during fit and scoring: diverging losses, interrupts, killed
processes, concurrent scoring and determinism across processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback, EarlyStopping

from sk_cae import ContrastiveAEDetector, NonFiniteLossError

SMALL = {
    "hidden_layer_sizes": (8,),
    "latent_dim": 2,
    "max_epochs": 4,
    "batch_size": 32,
    "random_state": 0,
}

# Seconds a subprocess may take to import torch and fit a tiny model on a
# loaded machine.
SUBPROCESS_TIMEOUT = 300


def _data(n_features=4, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack(
        [rng.normal(size=(90, n_features)), rng.normal(3.0, 0.5, (10, n_features))]
    )
    y = np.r_[np.zeros(90, dtype=int), np.ones(10, dtype=int)]
    return X, y


class InterruptAtEpoch(Callback):
    """Raise KeyboardInterrupt at the start of one epoch, as Ctrl-C would."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


class PoisonWeightsAtEpoch(Callback):
    """Set every weight to NaN at the start of one epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            with torch.no_grad():
                for parameter in net.module_.parameters():
                    parameter.fill_(float("nan"))


def _fitted_state(detector):
    """Return the fitted attributes and the scores of a fixed set of rows."""
    X, _ = _data()
    return {
        "attributes": {
            name: value
            for name, value in vars(detector).items()
            if name.endswith("_") or name.startswith("_")
        },
        "scores": detector.score_samples(X),
    }


def _assert_unchanged(detector, state):
    after = _fitted_state(detector)
    assert after["attributes"].keys() == state["attributes"].keys()
    for name, value in state["attributes"].items():
        assert after["attributes"][name] is value, name
    np.testing.assert_array_equal(after["scores"], state["scores"])


def _assert_unfitted(detector):
    with pytest.raises(NotFittedError):
        check_is_fitted(detector)
    assert not hasattr(detector, "n_features_in_")
    assert not hasattr(detector, "net_")


# ------------------------------------------------------ non-finite losses


def test_loss_becoming_nan_names_the_epoch():
    X, y = _data()
    detector = ContrastiveAEDetector(
        **{**SMALL, "callbacks": [PoisonWeightsAtEpoch(3)]}
    )
    with pytest.raises(NonFiniteLossError, match="train loss became nan at epoch 3"):
        detector.fit(X, y)
    _assert_unfitted(detector)


def test_failed_refit_keeps_previous_model():
    """A refit that diverges on data of another width leaves the old model
    whole, not its new n_features_in_ next to its old net_."""
    X, y = _data()
    detector = ContrastiveAEDetector(**SMALL).fit(X, y)
    state = _fitted_state(detector)
    X_wide, _ = _data(n_features=6)
    detector.set_params(callbacks=[PoisonWeightsAtEpoch(2)])
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        detector.fit(X_wide, y)
    assert detector.n_features_in_ == 4
    _assert_unchanged(detector, state)


def test_refit_with_bad_input_keeps_feature_names():
    """validate_data drops feature_names_in_ before it finds the NaN; the
    detector puts it back."""
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    detector = ContrastiveAEDetector(**SMALL).fit(frame, y)
    X_bad = X.copy()
    X_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        detector.fit(X_bad, y)
    assert list(detector.feature_names_in_) == ["a", "b", "c", "d"]
    detector.score_samples(frame)


# ------------------------------------------------------------- interrupts


def test_interrupt_leaves_detector_unfitted():
    X, y = _data()
    detector = ContrastiveAEDetector(**{**SMALL, "callbacks": [InterruptAtEpoch(2)]})
    with pytest.raises(KeyboardInterrupt, match="during epoch 2 of 4; .* as it was"):
        detector.fit(X, y)
    _assert_unfitted(detector)


def test_interrupted_refit_keeps_previous_model():
    X, y = _data()
    detector = ContrastiveAEDetector(**SMALL).fit(X, y)
    state = _fitted_state(detector)
    detector.set_params(callbacks=[InterruptAtEpoch(3)], latent_dim=3)
    with pytest.raises(KeyboardInterrupt):
        detector.fit(X, y)
    _assert_unchanged(detector, state)


def test_interrupt_keeps_partial_model_on_request():
    X, y = _data()
    detector = ContrastiveAEDetector(
        **{**SMALL, "callbacks": [InterruptAtEpoch(3)]}, on_interrupt="keep"
    )
    with pytest.warns(UserWarning, match="during epoch 3 of 4; keeping the parti"):
        detector.fit(X, y)
    history = detector.net_.history
    assert len(history) == 3
    assert "train_loss" in history[1]
    assert "train_loss" not in history[2]
    assert np.isfinite(detector.score_samples(X)).all()
    assert np.isfinite(detector.offset_)


def test_early_stopping_is_not_an_interrupt():
    """skorch's EarlyStopping stops by raising KeyboardInterrupt too; passed
    as a callback it still ends fit normally."""
    X, y = _data()
    stopper = EarlyStopping(monitor="train_loss", patience=2, threshold=10.0)
    detector = ContrastiveAEDetector(
        **{**SMALL, "max_epochs": 50, "callbacks": [stopper]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector.fit(X, y)
    assert len(detector.net_.history) == 3
    assert detector.net_.interrupted_ is False


# -------------------------------------------------------------- threads


def test_concurrent_scoring_matches_serial_scoring():
    """Scores from eight threads at once equal those of one thread. Dropout
    makes a module left in training mode visible."""
    X, y = _data()
    detector = ContrastiveAEDetector(**SMALL, dropout=0.3, score_method="combined").fit(
        X, y
    )
    assert detector.net_.module_.training is False
    chunks = [X[start : start + 7] for start in range(0, len(X), 7)] * 4
    serial = [detector.score_samples(chunk) for chunk in chunks]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(detector.score_samples, chunks))
    # Same rows in batches of the same size, so the float32 arithmetic is the
    # same; the tolerance only absorbs thread-dependent summation order.
    for expected, got in zip(serial, concurrent, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------- subprocesses


def _run_python(code, *args, env=None):
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def _finish(process):
    stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert process.returncode == 0, stderr
    return json.loads(stdout)


FIT_AND_SCORE = textwrap.dedent(
    """
    import json
    import numpy as np
    from sk_cae import ContrastiveAEDetector

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(90, 4)), rng.normal(3.0, 0.5, (10, 4))])
    y = np.r_[np.zeros(90), np.ones(10)]
    detector = ContrastiveAEDetector(max_epochs=3, dropout=0.1, random_state=7)
    scores = detector.fit(X, y).score_samples(X)
    print(json.dumps({"scores": scores.tolist(), "offset": detector.offset_}))
    """
)


@pytest.mark.slow
def test_same_random_state_gives_same_scores_across_processes():
    """Two processes, with different hash seeds, give bit-identical scores."""
    first = _run_python(FIT_AND_SCORE, env={"PYTHONHASHSEED": "1"})
    second = _run_python(FIT_AND_SCORE, env={"PYTHONHASHSEED": "2"})
    first, second = _finish(first), _finish(second)
    assert first["scores"] == second["scores"]
    assert first["offset"] == second["offset"]


CHECKPOINTED_FIT = textwrap.dedent(
    """
    import json
    import sys
    import time

    import numpy as np
    from skorch.callbacks import Callback, Checkpoint, LoadInitState

    from sk_cae import ContrastiveAEDetector


    class PauseAtEpochEnd(Callback):
        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_end(self, net, **kwargs):
            if len(net.history) == self.epoch:
                time.sleep(600)


    directory, pause_epoch = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(90, 4)), rng.normal(3.0, 0.5, (10, 4))])
    y = np.r_[np.zeros(90), np.ones(10)]
    checkpoint = Checkpoint(monitor=None, dirname=directory)
    callbacks = [checkpoint, LoadInitState(checkpoint)]
    if pause_epoch:
        callbacks.append(PauseAtEpochEnd(pause_epoch))
    detector = ContrastiveAEDetector(max_epochs=3, random_state=0, callbacks=callbacks)
    history = detector.fit(X, y).net_.history
    print(json.dumps({
        "epochs": history[:, "epoch"],
        "train_loss": [float(loss) for loss in history[:, "train_loss"]],
    }))
    """
)


def _read_history(path, deadline, process):
    """Wait for ``path`` to hold a complete history and return it."""
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            with open(path) as file:
                return json.load(file)
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise AssertionError(f"no checkpoint appeared at {path}")


def _wait_for_epochs(path, n_epochs, process):
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while True:
        history = _read_history(path, deadline, process)
        if len(history) >= n_epochs:
            return history
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX only")
def test_killed_fit_resumes_from_checkpoint(tmp_path):
    """A fit killed after its epoch-2 checkpoint resumes in a new process
    from epoch 3 instead of starting over."""
    directory = tmp_path / "checkpoint"
    first = _run_python(CHECKPOINTED_FIT, directory, 2)
    try:
        saved = _wait_for_epochs(directory / "history.json", 2, first)
        # The child now sleeps after writing every file of epoch 2.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert len(saved) == 2

    resumed = _finish(_run_python(CHECKPOINTED_FIT, directory, 0))
    # Two saved epochs plus max_epochs=3 new ones: training continued.
    assert resumed["epochs"] == [1, 2, 3, 4, 5]
    assert resumed["train_loss"][:2] == [epoch["train_loss"] for epoch in saved]
    assert resumed["train_loss"][2] < resumed["train_loss"][0]

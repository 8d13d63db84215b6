"""Tests of the display objects in sk_cae.plotting, drawn with the Agg backend."""

import sys

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from sk_cae import ContrastiveAEDetector  # noqa: E402
from sk_cae._scores import encode_rows  # noqa: E402
from sk_cae.plotting import (  # noqa: E402
    DefectPrecisionRecallDisplay,
    LatentSpaceDisplay,
    ScoreDistributionDisplay,
    TrainingHistoryDisplay,
    save_comparison_figures,
)

ROLES = ("normal", "other", "defect")


def _scenario(rng, n_normal, n_other, n_defect):
    """Normal rows at the origin, other outliers along the first axis and
    defects along the second, in 5 features."""
    X = rng.normal(size=(n_normal + n_other + n_defect, 5))
    X[n_normal : n_normal + n_other, 0] += 4.0
    X[n_normal + n_other :, 1] += 4.0
    role = np.repeat(ROLES, (n_normal, n_other, n_defect))
    return X.astype(np.float32), role


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X_train, role_train = _scenario(rng, 300, 15, 12)
    X_test, role_test = _scenario(rng, 150, 10, 8)
    return X_train, (role_train == "defect").astype(int), X_test, role_test


@pytest.fixture(scope="module")
def model_2d(data):
    """A pipeline with a 2-D latent space and a validation split."""
    X, y, _, _ = data
    detector = ContrastiveAEDetector(
        latent_dim=2,
        max_epochs=6,
        early_stopping=True,
        validation_fraction=0.2,
        random_state=0,
    )
    return make_pipeline(StandardScaler(), detector).fit(X, y)


@pytest.fixture(scope="module")
def model_4d(data):
    X, y, _, _ = data
    return ContrastiveAEDetector(latent_dim=4, max_epochs=4, random_state=0).fit(X, y)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _assert_drawn_png(path):
    """The file is a PNG of reasonable size with a visible share of ink."""
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 200
    assert image.shape[1] >= 200
    ink = (image[..., :3] < 0.9).any(axis=-1).mean()
    assert ink > 0.02


def _legend_labels(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_history_draws_train_and_valid_terms(model_2d, tmp_path):
    display = TrainingHistoryDisplay.from_estimator(model_2d)
    history = model_2d[-1].net_.history
    expected = [
        f"{prefix}_{term}"
        for prefix in ("train", "valid")
        for term in ("loss", "reconstruction", "repulsion", "compactness")
    ]
    assert list(display.lines_) == expected
    assert len(display.ax_.get_lines()) == 8
    for key, line in display.lines_.items():
        assert np.allclose(line.get_ydata(), history[:, key])
        assert np.array_equal(line.get_xdata(), np.arange(1, len(history) + 1))
        assert line.get_linestyle() == ("-" if key.startswith("train") else "--")
    assert "train repulsion (weight 0.1)" in _legend_labels(display.ax_)
    assert "valid loss" in _legend_labels(display.ax_)
    display.figure_.savefig(tmp_path / "history.png")
    _assert_drawn_png(tmp_path / "history.png")


def test_history_without_validation_has_train_lines_only(model_4d):
    display = TrainingHistoryDisplay.from_estimator(model_4d)
    assert list(display.lines_) == [
        "train_loss",
        "train_reconstruction",
        "train_repulsion",
        "train_compactness",
    ]


def test_history_from_list_of_epochs():
    history = [{"train_loss": 1.0}, {"train_loss": 0.5}, {"train_loss": 0.25}]
    display = TrainingHistoryDisplay.from_history(history)
    assert list(display.lines_) == ["train_loss"]
    assert np.array_equal(display.lines_["train_loss"].get_ydata(), [1, 0.5, 0.25])


def test_history_of_other_estimator_raises(data):
    X, _, _, _ = data
    forest = IsolationForest(random_state=0).fit(X)
    with pytest.raises(TypeError, match="needs a fitted ContrastiveAEDetector.*"):
        TrainingHistoryDisplay.from_estimator(forest)


def test_history_of_unfitted_detector_raises():
    with pytest.raises(NotFittedError):
        TrainingHistoryDisplay.from_estimator(ContrastiveAEDetector())


def test_scores_histograms_and_threshold(model_2d, data, tmp_path):
    _, _, X_test, role_test = data
    display = ScoreDistributionDisplay.from_estimator(model_2d, X_test, role_test)
    assert list(display.patches_) == ["normal", "other", "defect"]
    assert len(display.ax_.patches) == 3
    anomaly = -model_2d.score_samples(X_test)
    for role, patch in display.patches_.items():
        shares = patch.get_data().values
        assert shares.sum() == pytest.approx(1.0)
        counts, _ = np.histogram(anomaly[role_test == role], display.bin_edges_)
        assert np.allclose(shares, counts / counts.sum())
    threshold_x = display.threshold_line_.get_xdata()
    assert threshold_x[0] == pytest.approx(-model_2d[-1].offset_)
    assert _legend_labels(display.ax_) == [
        "normal (150)",
        "other (10)",
        "defect (8)",
        "threshold",
    ]
    display.figure_.savefig(tmp_path / "scores.png")
    _assert_drawn_png(tmp_path / "scores.png")


def test_scores_of_isolation_forest(data):
    X, _, X_test, role_test = data
    forest = IsolationForest(random_state=0).fit(X)
    display = ScoreDistributionDisplay.from_estimator(forest, X_test, role_test)
    assert display.threshold_line_.get_xdata()[0] == pytest.approx(-forest.offset_)


def test_scores_from_predictions_without_groups_or_threshold():
    scores = np.array([0.1, 0.2, 0.2, 0.4, 5.0])
    display = ScoreDistributionDisplay.from_predictions(scores, bins=4)
    assert list(display.patches_) == ["all rows"]
    assert display.threshold_line_ is None
    assert len(display.bin_edges_) == 5


def test_scores_on_log_scale(model_2d, data):
    _, _, X_test, role_test = data
    display = ScoreDistributionDisplay.from_estimator(
        model_2d, X_test, role_test, bins=10, log_scale=True
    )
    edges = display.bin_edges_
    assert display.ax_.get_xscale() == "log"
    assert np.allclose(edges[1:] / edges[:-1], edges[1] / edges[0])


def test_scores_log_scale_with_negative_scores_raises():
    with pytest.raises(ValueError, match="log_scale=True needs positive .* -1"):
        ScoreDistributionDisplay.from_predictions([-1.0, 2.0], log_scale=True)


def test_scores_groups_of_wrong_length_raise():
    with pytest.raises(ValueError, match="groups has 2 entries but there are 3"):
        ScoreDistributionDisplay.from_predictions([1.0, 2.0, 3.0], ["a", "b"])


def test_latent_2d_draws_the_codes(model_2d, data, tmp_path):
    _, _, X_test, role_test = data
    fig, ax = plt.subplots()
    display = LatentSpaceDisplay.from_estimator(model_2d, X_test, role_test, ax=ax)
    assert display.ax_ is ax
    assert display.figure_ is fig
    detector = model_2d[-1]
    _, latent = encode_rows(detector.net_.module_, model_2d[0].transform(X_test))
    assert len(ax.collections) == 3
    for role, collection in display.collections_.items():
        points = collection.get_offsets()
        assert np.allclose(points, latent[role_test == role], atol=1e-6)
    assert ax.get_xlabel() == "latent 1"
    assert _legend_labels(ax) == ["normal (150)", "other (10)", "defect (8)"]
    fig.savefig(tmp_path / "latent.png")
    _assert_drawn_png(tmp_path / "latent.png")


def test_latent_wider_than_2_uses_pca(model_4d, data):
    _, _, X_test, role_test = data
    display = LatentSpaceDisplay.from_estimator(model_4d, X_test, role_test)
    assert display.ax_.get_xlabel().startswith("latent PC 1 (")
    assert display.ax_.get_ylabel().startswith("latent PC 2 (")
    sizes = {role: len(c.get_offsets()) for role, c in display.collections_.items()}
    assert sizes == {"normal": 150, "other": 10, "defect": 8}


def test_precision_recall_curve_and_threshold_point(model_2d, data, tmp_path):
    _, _, X_test, role_test = data
    y = (role_test == "defect").astype(int)
    display = DefectPrecisionRecallDisplay.from_estimator(model_2d, X_test, y)
    anomaly = -model_2d.score_samples(X_test)
    precision, recall, _ = precision_recall_curve(y, anomaly)
    assert np.allclose(display.line_.get_xdata(), recall)
    assert np.allclose(display.line_.get_ydata(), precision)
    ap = average_precision_score(y, anomaly)
    assert display.average_precision == pytest.approx(ap)
    assert _legend_labels(display.ax_)[0] == f"ContrastiveAEDetector (AP = {ap:.3f})"
    flagged = model_2d.predict(X_test) == -1
    found = (flagged & (y == 1)).sum()
    point_x, point_y = display.threshold_point_.get_data()
    assert point_x[0] == pytest.approx(found / y.sum())
    assert point_y[0] == pytest.approx(found / flagged.sum())
    display.figure_.savefig(tmp_path / "pr.png")
    _assert_drawn_png(tmp_path / "pr.png")


def test_precision_recall_uses_defect_label(model_2d, data):
    _, _, X_test, role_test = data
    display = DefectPrecisionRecallDisplay.from_estimator(
        model_2d, X_test, role_test, defect_label="defect", name="cae"
    )
    assert _legend_labels(display.ax_)[0].startswith("cae (AP = ")


def test_precision_recall_point_with_nothing_flagged():
    display = DefectPrecisionRecallDisplay.from_predictions(
        [0, 1, 0, 1], [0.1, 0.4, 0.2, 0.3], threshold=0.5
    )
    point_x, point_y = display.threshold_point_.get_data()
    assert point_x[0] == 0.0
    assert point_y[0] == 1.0


def test_precision_recall_without_defects_raises():
    with pytest.raises(ValueError, match="no row equal to defect_label=1"):
        DefectPrecisionRecallDisplay.from_predictions([0, 0, 0], [0.1, 0.2, 0.3])


def test_comparison_figures_are_written(model_2d, model_4d, data, tmp_path):
    _, _, X_test, role_test = data
    paths = save_comparison_figures(
        {"two": model_2d, "four": model_4d}, X_test, role_test, tmp_path / "figs"
    )
    assert list(paths) == ["history", "scores", "latent", "precision_recall"]
    for path in paths.values():
        _assert_drawn_png(path)
    side_by_side = matplotlib.image.imread(paths["scores"])
    single = matplotlib.image.imread(paths["precision_recall"])
    assert side_by_side.shape[1] == 2 * single.shape[1]


def test_missing_matplotlib_raises_with_extra_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "sk-cae\[plot\]"'):
        ScoreDistributionDisplay.from_predictions([0.1, 0.2])


def test_demo_plots_without_matplotlib_fail_early(monkeypatch, tmp_path, capsys):
    from sk_cae.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--plots", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert (
        '--plots needs matplotlib; install it with: pip install "sk-cae[plot]"' in error
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_writes_figures(tmp_path, capsys):
    from sk_cae.cli import main

    assert main(["demo", "--plots", str(tmp_path)]) == 0
    assert "Figures of the test rows written to" in capsys.readouterr().out
    for name in ("history", "scores", "latent", "precision_recall"):
        _assert_drawn_png(tmp_path / f"{name}.png")

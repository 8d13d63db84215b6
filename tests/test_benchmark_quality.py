"""Tests of the defect-detection benchmark in benchmarks/quality.py."""

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # The benchmarks folder is not installed with the package.
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import quality  # noqa: E402
from benchmarks.peers.methods import Method, method_unavailable_reason  # noqa: E402

DATA_DIR = quality.DEFAULT_DATA_DIR
needs_data = pytest.mark.skipif(
    not (DATA_DIR / quality.SCENARIOS_FILE).is_file(),
    reason=f"benchmark data not found: {DATA_DIR / quality.SCENARIOS_FILE} is missing",
)

DIGITS_SPEC = {
    "name": "digits-9",
    "source": "sklearn:load_digits",
    "normal": [0, 1, 2, 3, 4, 5, 6],
    "defect": [9],
    "other": [7, 8],
}
DEFAULT_FRACTIONS = {
    "train_other_frac": 0.05,
    "train_unlabeled_defect_frac": 0.01,
    "test_other_frac": 0.05,
    "test_defect_frac": 0.02,
}
REDUCED_SCENARIOS = ("digits-9", "thyroid-hyper")
REDUCED_METHODS = ("cae", "ae", "iforest", "hgb")


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_library():
    """Run torch, OpenMP and BLAS on one thread each, restoring them afterwards.

    On a busy two-core machine, more threads than free cores slow the neural
    methods and HistGradientBoostingClassifier down several times.
    """
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    if torch is not None:
        torch.set_num_threads(torch_threads)


def make_scenario(n_normal, n_defect, n_other, n_features=3):
    """Build a scenario whose first column is the row number, to trace rows."""
    n_rows = n_normal + n_defect + n_other
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, n_features))
    X[:, 0] = np.arange(n_rows)
    role = np.array(["normal"] * n_normal + ["defect"] * n_defect + ["other"] * n_other)
    return quality.Scenario("synthetic", X, role)


def count_roles(role):
    return {name: int(np.sum(role == name)) for name in quality.ROLES}


# Split ------------------------------------------------------------------------


def test_split_follows_protocol_on_digits(tmp_path):
    """Class counts, labels, caps and disjointness follow the protocol."""
    scenario = quality.load_scenario(DIGITS_SPEC, tmp_path)
    totals = count_roles(scenario.role)
    split = quality.split_repetition(scenario, 0, n_labeled=10, **DEFAULT_FRACTIONS)

    n_normal_train = totals["normal"] // 2
    n_normal_test = totals["normal"] - n_normal_train
    expected_train = {
        "normal": n_normal_train,
        "other": min(totals["other"] // 2, math.floor(0.05 * n_normal_train)),
        "defect": min(totals["defect"] // 2, 10 + math.floor(0.01 * n_normal_train)),
    }
    expected_test = {
        "normal": n_normal_test,
        "other": min(
            totals["other"] - totals["other"] // 2, math.floor(0.05 * n_normal_test)
        ),
        "defect": min(
            totals["defect"] - totals["defect"] // 2,
            max(5, math.floor(0.02 * n_normal_test)),
        ),
    }
    assert count_roles(split.role_train) == expected_train
    assert count_roles(split.role_test) == expected_test

    assert split.y_train.sum() == 10
    assert set(split.role_train[split.y_train == 1]) == {"defect"}
    n_unlabeled_defects = np.sum((split.role_train == "defect") & (split.y_train == 0))
    assert n_unlabeled_defects == expected_train["defect"] - 10

    assert np.intersect1d(split.train_index, split.test_index).size == 0
    assert len(np.unique(split.train_index)) == len(split.train_index)
    assert len(np.unique(split.test_index)) == len(split.test_index)
    np.testing.assert_array_equal(split.X_train, scenario.X[split.train_index])
    np.testing.assert_array_equal(split.X_test, scenario.X[split.test_index])
    np.testing.assert_array_equal(split.role_train, scenario.role[split.train_index])
    np.testing.assert_array_equal(split.role_test, scenario.role[split.test_index])


def test_split_caps_rows_by_pool_size():
    """Caps are rounded down and never take more rows than a pool has."""
    scenario = make_scenario(n_normal=400, n_defect=30, n_other=8)
    split = quality.split_repetition(scenario, 3, n_labeled=10, **DEFAULT_FRACTIONS)

    # Train: 200 normal; other cap floor(10.0) but the pool has 4; defect cap
    # 10 + floor(2.0) = 12 of a pool of 15. Test: other pool 4; defect cap
    # max(floor(4.0), 5) = 5 of a pool of 15.
    assert count_roles(split.role_train) == {"normal": 200, "defect": 12, "other": 4}
    assert count_roles(split.role_test) == {"normal": 200, "defect": 5, "other": 4}


def test_split_small_defect_pool():
    """The minimum of 5 test defects applies only where the pool has them."""
    scenario = make_scenario(n_normal=100, n_defect=7, n_other=0)
    split = quality.split_repetition(scenario, 0, n_labeled=2, **DEFAULT_FRACTIONS)

    assert count_roles(split.role_test) == {"normal": 50, "defect": 4, "other": 0}
    assert count_roles(split.role_train) == {"normal": 50, "defect": 2, "other": 0}
    assert split.y_train.sum() == 2


def test_split_rejects_too_few_defects():
    """A training pool with fewer defects than n_labeled raises ValueError."""
    scenario = make_scenario(n_normal=100, n_defect=9, n_other=0)
    with pytest.raises(ValueError, match="4 defects but n_labeled=10"):
        quality.split_repetition(scenario, 0, n_labeled=10, **DEFAULT_FRACTIONS)


def test_split_is_reproducible_per_repetition():
    """The same repetition gives the same rows and another one different rows."""
    scenario = make_scenario(n_normal=300, n_defect=40, n_other=30)
    first = quality.split_repetition(scenario, 1, **DEFAULT_FRACTIONS)
    again = quality.split_repetition(scenario, 1, **DEFAULT_FRACTIONS)
    other = quality.split_repetition(scenario, 2, **DEFAULT_FRACTIONS)

    np.testing.assert_array_equal(first.train_index, again.train_index)
    np.testing.assert_array_equal(first.y_train, again.y_train)
    assert set(first.train_index) != set(other.train_index)


def test_split_shuffles_rows_of_each_set():
    """Training rows are not ordered by role, so no method sees defects last."""
    scenario = make_scenario(n_normal=300, n_defect=40, n_other=30)
    split = quality.split_repetition(scenario, 0, **DEFAULT_FRACTIONS)

    role_codes = np.searchsorted(
        np.array(["defect", "normal", "other"]), split.role_train
    )
    assert np.any(np.diff(role_codes) < 0)
    assert np.any(np.diff(role_codes) > 0)


def test_split_matches_library_split(tmp_path):
    """The benchmark picks the same rows as sk_cae.datasets.split_scenario."""
    datasets = pytest.importorskip("sk_cae.datasets")
    scenario = quality.load_scenario(DIGITS_SPEC, tmp_path)
    ours = quality.split_repetition(scenario, 4, n_labeled=10, **DEFAULT_FRACTIONS)
    theirs = datasets.split_scenario(scenario.X, scenario.role, n_labeled=10, seed=4)

    def sorted_rows(X):
        return X[np.lexsort(X.T[::-1])]

    np.testing.assert_array_equal(
        sorted_rows(ours.X_train), sorted_rows(theirs.X_train)
    )
    np.testing.assert_array_equal(sorted_rows(ours.X_test), sorted_rows(theirs.X_test))
    np.testing.assert_array_equal(
        sorted_rows(ours.X_train[ours.y_train == 1]),
        sorted_rows(theirs.X_train[theirs.y_train == 1]),
    )


# Loading ----------------------------------------------------------------------


def test_load_scenario_rejects_unknown_class(tmp_path):
    """A class name that the data lacks raises ValueError naming it."""
    spec = {**DIGITS_SPEC, "defect": [10]}
    with pytest.raises(ValueError, match=r"defect classes \[10\]"):
        quality.load_scenario(spec, tmp_path)


@needs_data
def test_load_scenario_appends_other_source():
    """An npz scenario with other_source gets that file's normal rows as others."""
    config = quality.load_config(DATA_DIR)
    spec = next(s for s in config["scenarios"] if s["name"] == "mvtec-bottle-vs-cable")
    scenario = quality.load_scenario(spec, DATA_DIR)

    with np.load(DATA_DIR / spec["source"]) as data:
        y = data["y"]
    with np.load(DATA_DIR / spec["other_source"]) as data:
        n_other = int(np.sum(data["y"] == 0))
    assert count_roles(scenario.role) == {
        "normal": int(np.sum(y == 0)),
        "defect": int(np.sum(y == 1)),
        "other": n_other,
    }


@needs_data
def test_load_scenario_reads_csv_labels():
    """A csv scenario keeps only the rows of the named classes."""
    config = quality.load_config(DATA_DIR)
    spec = next(s for s in config["scenarios"] if s["name"] == "thyroid-hyper")
    scenario = quality.load_scenario(spec, DATA_DIR)

    labels = pd.read_csv(DATA_DIR / spec["source"])["label"]
    counts = labels.value_counts()
    assert count_roles(scenario.role) == {
        "normal": counts["normal"],
        "defect": counts["hyperfunction"],
        "other": counts["subnormal"],
    }
    assert scenario.X.shape == (len(labels), 21)


# Metrics ----------------------------------------------------------------------


def test_evaluate_known_values():
    """ap, auc and auc_vs_other match values worked out by hand."""
    role = np.array(["defect", "normal", "other", "defect"])
    metrics = quality.evaluate(role, [4.0, 3.0, 2.0, 1.0])

    # Defects at ranks 1 and 4: precision 1 and 2/4.
    assert metrics["ap"] == pytest.approx(0.75)
    # Defect 4 beats both negatives, defect 1 beats none: 2 of 4 pairs.
    assert metrics["auc"] == pytest.approx(0.5)
    assert metrics["auc_vs_other"] == pytest.approx(0.5)


def test_evaluate_perfect_and_reversed_ranking():
    """A perfect ranking scores 1 and a reversed one scores 0 AUC."""
    role = np.array(["normal", "other", "defect", "defect"])
    perfect_ranking = quality.evaluate(role, [0.0, 1.0, 2.0, 3.0])
    reversed_ranking = quality.evaluate(role, [3.0, 2.0, 1.0, 0.0])

    assert perfect_ranking == {"ap": 1.0, "auc": 1.0, "auc_vs_other": 1.0}
    assert reversed_ranking["auc"] == 0.0
    assert reversed_ranking["auc_vs_other"] == 0.0


def test_evaluate_without_other_outliers():
    """auc_vs_other is NaN when the test set has no other outliers."""
    metrics = quality.evaluate(np.array(["normal", "defect"]), [0.0, 1.0])
    assert math.isnan(metrics["auc_vs_other"])
    assert metrics["auc"] == 1.0


def test_evaluate_rejects_nan_scores():
    """NaN anomaly scores raise ValueError instead of a misleading metric."""
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        quality.evaluate(np.array(["normal", "defect"]), [np.nan, 1.0])


# Methods and command line -----------------------------------------------------


def test_unavailable_method_names_missing_module():
    """A method whose package is missing is disabled with an install hint."""
    method = Method(
        "fake",
        ("no_such_module_for_sk_cae_tests",),
        "pip install fake",
        False,
        "",
        None,
        None,
    )
    reason = method_unavailable_reason(method)
    assert "no_such_module_for_sk_cae_tests" in reason
    assert "pip install fake" in reason


def test_main_rejects_unknown_method(capsys):
    """An unknown --methods name exits with a message listing valid names."""
    with pytest.raises(SystemExit) as excinfo:
        quality.main(["--methods", "iforest,nope", "--data-dir", str(DATA_DIR)])
    assert excinfo.value.code == 2
    assert "unknown methods ['nope']" in capsys.readouterr().err


def test_main_rejects_missing_data_dir(tmp_path, capsys):
    """A data directory without scenarios.json exits with a clear message."""
    with pytest.raises(SystemExit):
        quality.main(["--data-dir", str(tmp_path / "absent")])
    assert "pass --data-dir" in capsys.readouterr().err


# Reduced run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    """Run two scenarios once with cheap methods and return the output folder."""
    pytest.importorskip("torch")
    pytest.importorskip("sk_cae")
    if not (DATA_DIR / quality.SCENARIOS_FILE).is_file():
        pytest.skip(f"benchmark data not found: {DATA_DIR / quality.SCENARIOS_FILE}")
    out = tmp_path_factory.mktemp("quality")
    argv = [
        "--scenarios",
        ",".join(REDUCED_SCENARIOS),
        "--methods",
        ",".join(REDUCED_METHODS),
        "--repetitions",
        "1",
        "--max-epochs",
        "2",
        "--out",
        str(out),
    ]
    assert quality.main(argv) == 0
    return out


def test_reduced_run_writes_results_csv(reduced_run):
    """results.csv has one row per scenario and method with finite metrics."""
    results = pd.read_csv(reduced_run / "results.csv", keep_default_na=False)

    assert tuple(results.columns) == quality.RESULT_COLUMNS
    assert len(results) == len(REDUCED_SCENARIOS) * len(REDUCED_METHODS)
    assert set(results["scenario"]) == set(REDUCED_SCENARIOS)
    assert set(results["method"]) == set(REDUCED_METHODS)
    assert (results["error"] == "").all(), results["error"].tolist()
    assert (results["n_train_labeled"] == 10).all()
    for metric in quality.METRICS:
        values = results[metric].astype(float)
        assert np.isfinite(values).all(), metric
        assert values.between(0, 1).all(), metric
    assert (results["fit_seconds"].astype(float) > 0).all()
    assert (results["score_seconds"].astype(float) > 0).all()


def test_reduced_run_report_lists_methods_and_scenarios(reduced_run):
    """report.md names every method and scenario and records the setup."""
    report = (reduced_run / "report.md").read_text(encoding="utf-8")

    for name in (*REDUCED_METHODS, *REDUCED_SCENARIOS):
        assert f"| {name} |" in report, name
    assert "python benchmarks/quality.py --scenarios digits-9,thyroid-hyper" in report
    assert "mean rank (ap)" in report
    assert "logical cores" in report
    for package in ("python", "numpy", "scikit-learn", "torch", "skorch", "pyod"):
        assert f"{package} " in report, package


def test_reduced_run_draws_ap_plot(reduced_run):
    """ap.png is a readable size and not blank."""
    from matplotlib.image import imread

    image = imread(reduced_run / "ap.png")
    height, width = image.shape[:2]
    assert width >= 800
    assert height >= 200
    rgb = image[..., :3]
    non_white = np.any(rgb < 0.95, axis=-1)
    assert non_white.mean() > 0.02
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20


def test_merge_keeps_rows_of_other_methods(reduced_run, tmp_path):
    """--merge replaces rerun scenario and method pairs and keeps the rest."""
    out = tmp_path / "merged"
    shutil.copytree(reduced_run, out)
    before = pd.read_csv(out / "results.csv", keep_default_na=False)
    argv = ["--scenarios", "digits-9", "--methods", "iforest", "--repetitions", "1"]
    assert quality.main([*argv, "--out", str(out), "--merge"]) == 0
    after = pd.read_csv(out / "results.csv", keep_default_na=False)

    assert len(after) == len(before)
    rerun = (after["scenario"] == "digits-9") & (after["method"] == "iforest")
    assert rerun.sum() == 1
    assert "--merge" in after.loc[rerun, "command"].iloc[0]
    assert not after.loc[~rerun, "command"].str.contains("--merge").any()


# deepod peers -----------------------------------------------------------------


def test_deepod_devnet_loss_broadcasts_unfixed():
    """deepod's own DevNet loss broadcasts (B,) labels against (B, 1) outputs."""
    pytest.importorskip("deepod")
    import torch
    from deepod.models.tabular.devnet import DevLoss

    labels = torch.tensor([0, 0, 1])
    predictions = torch.zeros(3, 1)
    assert DevLoss(reduction="none")(labels, predictions).shape == (3, 3)


def test_fixed_devnet_loss_is_per_row():
    """FixedDevNet gives each row the deviation loss of its own label."""
    pytest.importorskip("deepod")
    import torch
    from deepod.core.networks.base_networks import MLPnet
    from deepod.models.tabular.devnet import DevLoss

    from benchmarks.peers.deepod_adapter import FixedDevNet

    net = MLPnet(n_features=3, n_hidden="8", n_output=1, activation="ReLU", bias=False)
    model = FixedDevNet(device="cpu", verbose=0, random_state=0)
    features = torch.randn(6, 3)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])

    torch.manual_seed(1)
    loss = model.training_forward((features, labels), net, DevLoss(reduction="none"))
    torch.manual_seed(1)
    reference = torch.randn(5000)
    with torch.no_grad():
        deviation = (net(features).view(-1) - reference.mean()) / reference.std()
    expected = torch.where(
        labels == 1, torch.clamp(5.0 - deviation, min=0), deviation.abs()
    )

    assert loss.shape == (6,)
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("model", ["deepsad", "devnet"])
def test_deepod_detector_ranks_toy_defects(model):
    """Deep SAD and DevNet score a labeled kind of defect above normal rows."""
    pytest.importorskip("deepod")
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from benchmarks.peers.deepod_adapter import DeepODDetector

    rng = np.random.default_rng(0)
    X_train = np.vstack([rng.normal(size=(600, 5)), rng.normal(3.0, 0.5, size=(10, 5))])
    y_train = np.r_[np.zeros(600), np.ones(10)].astype(int)
    X_test = np.vstack([rng.normal(size=(200, 5)), rng.normal(3.0, 0.5, size=(20, 5))])
    is_defect = np.r_[np.zeros(200), np.ones(20)]

    detector = DeepODDetector(model, epochs=10, random_state=0)
    pipeline = make_pipeline(StandardScaler(), detector).fit(X_train, y_train)
    anomaly_score = -pipeline.score_samples(X_test)

    assert roc_auc_score(is_defect, anomaly_score) > 0.95
    assert anomaly_score[is_defect == 1].min() > np.median(
        anomaly_score[is_defect == 0]
    )


def test_deepod_detector_requires_labels():
    """The semi-supervised deepod detectors reject y=None."""
    pytest.importorskip("deepod")
    from benchmarks.peers.deepod_adapter import DeepODDetector

    with pytest.raises(ValueError, match="needs y"):
        DeepODDetector("devnet").fit(np.zeros((5, 2)), None)

"""Defect-detection benchmark: rank unseen defects above normal rows and other outliers.

Each scenario has normal rows, one defect class and, in some scenarios, other
outliers that should not be reported as defects. Every repetition splits the
scenario into a training set with a few labeled defects and a test set. Each
method is fitted in ``Pipeline(StandardScaler(), method)`` on the training set.
Its test-set anomaly scores are rated by average precision (``ap``), ROC AUC
(``auc``) and, where the scenario has other outliers, ROC AUC of defects
against those outliers (``auc_vs_other``).

Usage, from the repository root::

    python benchmarks/quality.py --scenarios digits-9,thyroid-hyper \\
        --methods iforest,hgb --repetitions 2

The data directory (``--data-dir``, by default the ``shared`` folder beside the
repository) contains ``benchmark/scenarios.json`` and the data files it names.
The output folder receives ``results.csv`` (one row per scenario, method and
repetition), ``report.md`` and ``ap.png``.

Environment in which every method runs (Python 3.11, CPU only)::

    python3 -m venv .venv-bench
    . .venv-bench/bin/activate
    pip install torch==2.13.0    # pin it: a bare "torch" pulls the CUDA build
    pip install -e ".[benchmark]"  # sk_cae with pyod, matplotlib and pandas
    pip install --no-deps deepod==0.4.1

With these packages, deepod 0.4.1's tabular models import and run; only its
time-series models would also need ``einops``. ``--no-deps`` keeps deepod's
own requirements from replacing the installed torch.
"""

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"
SCENARIOS_FILE = Path("benchmark") / "scenarios.json"

if __package__ in (None, ""):
    # Run as a script: make ``benchmarks.peers`` and the working tree's
    # ``sk_cae`` importable without installing either.
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.peers.methods import METHODS, method_unavailable_reason  # noqa: E402

logger = logging.getLogger("benchmarks.quality")

ROLES = ("normal", "defect", "other")
METRICS = ("ap", "auc", "auc_vs_other")
RESULT_COLUMNS = (
    "scenario",
    "method",
    "repetition",
    "n_train",
    "n_train_labeled",
    "n_test",
    "n_test_defect",
    "n_test_other",
    "ap",
    "auc",
    "auc_vs_other",
    "fit_seconds",
    "score_seconds",
    "error",
    "command",
)
SPLIT_SETTINGS = (
    "n_labeled",
    "train_other_frac",
    "train_unlabeled_defect_frac",
    "test_other_frac",
    "test_defect_frac",
)
MIN_TEST_DEFECTS = 5
REPORTED_PACKAGES = (
    "numpy",
    "scikit-learn",
    "pandas",
    "torch",
    "skorch",
    "pyod",
    "deepod",
    "matplotlib",
    "sk_cae",
)


# Scenarios and splits ------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """All rows of one scenario with the role of each row.

    ``role`` contains ``"normal"``, ``"defect"`` or ``"other"`` for every row
    of ``X``. Rows of the source whose class has no role are not included.
    """

    name: str
    X: np.ndarray
    role: np.ndarray


@dataclass(frozen=True)
class Split:
    """Training and test rows of one repetition of a scenario.

    ``train_index`` and ``test_index`` are row numbers in the scenario's
    ``X``. ``y_train`` is 1 for the labeled defects and 0 for every other
    training row, the unlabeled defects included.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    role_train: np.ndarray
    train_index: np.ndarray
    X_test: np.ndarray
    role_test: np.ndarray
    test_index: np.ndarray


def load_config(data_dir):
    """Read ``benchmark/scenarios.json`` from the data directory."""
    path = Path(data_dir) / SCENARIOS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Scenario list {path} not found; pass --data-dir pointing at the "
            f"folder that contains {SCENARIOS_FILE}."
        )
    with path.open(encoding="utf-8") as file:
        return json.load(file)


def scenario_settings(config, spec):
    """Return the split settings of one scenario: its own values over the defaults."""
    defaults = config["defaults"]
    return {
        key: spec.get(key, defaults[key]) for key in (*SPLIT_SETTINGS, "repetitions")
    }


def load_scenario(spec, data_dir):
    """Load the rows of one scenario from its entry in ``scenarios.json``.

    ``source`` is ``sklearn:load_digits``, a ``.csv.gz`` file with a ``label``
    column, or an ``.npz`` file with ``X`` and ``y`` (0 normal, 1 defect).
    For ``.npz`` scenarios, the normal rows (``y == 0``) of ``other_source``
    are appended as other outliers.
    """
    source = spec["source"]
    if source == "sklearn:load_digits":
        from sklearn.datasets import load_digits

        X, labels = load_digits(return_X_y=True)
        return _scenario_from_labels(spec, X, labels)

    path = Path(data_dir) / source
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file {path} of scenario {spec['name']!r} not found; check "
            "--data-dir."
        )
    if path.name.endswith(".csv.gz") or path.suffix == ".csv":
        frame = pd.read_csv(path)
        if "label" not in frame.columns:
            raise ValueError(f"{path} has no 'label' column.")
        X = frame.drop(columns="label").to_numpy(dtype=np.float64)
        return _scenario_from_labels(spec, X, frame["label"].to_numpy())
    if path.suffix == ".npz":
        return _scenario_from_npz(spec, path, data_dir)
    raise ValueError(
        f"Source {source!r} of scenario {spec['name']!r} is not supported; "
        "expected sklearn:load_digits, a .csv.gz file or an .npz file."
    )


def _scenario_from_labels(spec, X, labels):
    role = np.full(len(labels), "", dtype=object)
    found = set(np.unique(labels).tolist())
    for role_name in ROLES:
        classes = spec.get(role_name, [])
        missing = [label for label in classes if label not in found]
        if missing:
            raise ValueError(
                f"Scenario {spec['name']!r} names {role_name} classes {missing} "
                f"that are not in the data; the data has {sorted(map(str, found))}."
            )
        role[np.isin(labels, classes)] = role_name

    keep = role != ""
    return Scenario(
        spec["name"], np.asarray(X, dtype=np.float64)[keep], role[keep].astype(str)
    )


def _scenario_from_npz(spec, path, data_dir):
    with np.load(path) as data:
        X = data["X"].astype(np.float64)
        y = data["y"].astype(np.int64)
    role = np.where(y == 1, "defect", "normal")

    other_source = spec.get("other_source")
    if other_source is not None:
        with np.load(Path(data_dir) / other_source) as data:
            X_other = data["X"][data["y"] == 0].astype(np.float64)
        if X_other.shape[1] != X.shape[1]:
            raise ValueError(
                f"Scenario {spec['name']!r}: {other_source} has "
                f"{X_other.shape[1]} features but {spec['source']} has {X.shape[1]}."
            )
        X = np.vstack([X, X_other])
        role = np.concatenate([role, np.full(len(X_other), "other")])
    return Scenario(spec["name"], X, role)


def split_repetition(
    scenario,
    repetition,
    *,
    n_labeled=10,
    train_other_frac=0.05,
    train_unlabeled_defect_frac=0.01,
    test_other_frac=0.05,
    test_defect_frac=0.02,
    min_test_defects=MIN_TEST_DEFECTS,
):
    """Split a scenario into the training and test sets of one repetition.

    ``numpy.random.default_rng(repetition)`` shuffles the rows of each role
    (normal, defect, other, in that order) and the first ``n // 2`` of each
    role form the training pool, the rest the test pool. The training set
    takes every normal row of its pool, at most ``train_other_frac *
    n_normal_train`` other outliers and at most ``n_labeled +
    train_unlabeled_defect_frac * n_normal_train`` defects, of which the
    first ``n_labeled`` get ``y_train = 1``. The test set takes every normal
    row of its pool, at most ``test_other_frac * n_normal_test`` other
    outliers and at most ``test_defect_frac * n_normal_test`` defects, but at
    least ``min_test_defects`` where the pool has them. Caps are rounded down.
    The same generator then shuffles the rows of each set, so that no method
    sees them ordered by role.

    Raises ValueError when the training pool has fewer than ``n_labeled``
    defects.
    """
    rng = np.random.default_rng(repetition)
    train_pool, test_pool = {}, {}
    for role_name in ROLES:
        index = np.flatnonzero(scenario.role == role_name)
        index = index[rng.permutation(len(index))]
        half = len(index) // 2
        train_pool[role_name], test_pool[role_name] = index[:half], index[half:]

    n_normal_train = len(train_pool["normal"])
    n_other_train = math.floor(train_other_frac * n_normal_train)
    n_defect_train = n_labeled + math.floor(
        train_unlabeled_defect_frac * n_normal_train
    )
    train_defects = train_pool["defect"][:n_defect_train]
    if len(train_defects) < n_labeled:
        raise ValueError(
            f"Scenario {scenario.name!r}: the training pool has "
            f"{len(train_defects)} defects but n_labeled={n_labeled}; lower "
            "--n-labeled."
        )
    labeled = train_defects[:n_labeled]
    train_index = np.concatenate(
        [train_pool["normal"], train_pool["other"][:n_other_train], train_defects]
    )

    n_normal_test = len(test_pool["normal"])
    n_other_test = math.floor(test_other_frac * n_normal_test)
    n_defect_test = max(math.floor(test_defect_frac * n_normal_test), min_test_defects)
    test_index = np.concatenate(
        [
            test_pool["normal"],
            test_pool["other"][:n_other_test],
            test_pool["defect"][:n_defect_test],
        ]
    )

    train_index = train_index[rng.permutation(len(train_index))]
    test_index = test_index[rng.permutation(len(test_index))]
    return Split(
        X_train=scenario.X[train_index],
        y_train=np.isin(train_index, labeled).astype(np.int64),
        role_train=scenario.role[train_index],
        train_index=train_index,
        X_test=scenario.X[test_index],
        role_test=scenario.role[test_index],
        test_index=test_index,
    )


def evaluate(role_test, anomaly_score):
    """Compute ``ap``, ``auc`` and ``auc_vs_other`` of anomaly scores on a test set.

    Defects are the positive class and every other row is negative; higher
    scores must mean more defect-like. ``auc_vs_other`` uses only the defect
    and other-outlier rows and is NaN when the test set has no other
    outliers. Raises ValueError for non-finite scores.
    """
    role_test = np.asarray(role_test)
    anomaly_score = np.asarray(anomaly_score, dtype=np.float64).ravel()
    if anomaly_score.shape != role_test.shape:
        raise ValueError(
            f"anomaly_score has {anomaly_score.shape[0]} values but the test set "
            f"has {role_test.shape[0]} rows."
        )
    n_bad = int(np.sum(~np.isfinite(anomaly_score)))
    if n_bad:
        raise ValueError(f"anomaly_score contains {n_bad} NaN or infinite values.")

    is_defect = role_test == "defect"
    metrics = {
        "ap": average_precision_score(is_defect, anomaly_score),
        "auc": roc_auc_score(is_defect, anomaly_score),
        "auc_vs_other": math.nan,
    }
    defect_or_other = is_defect | (role_test == "other")
    if np.any(role_test == "other"):
        metrics["auc_vs_other"] = roc_auc_score(
            is_defect[defect_or_other], anomaly_score[defect_or_other]
        )
    return metrics


# Runs ----------------------------------------------------------------------


def run_method(method, split, repetition, *, max_epochs=None, device="cpu"):
    """Fit one method on a split and return its metrics and timings."""
    estimator = method.build(repetition, max_epochs, device)
    pipeline = make_pipeline(StandardScaler(), estimator)
    y_train = split.y_train if method.uses_labels else None

    start = time.perf_counter()
    pipeline.fit(split.X_train, y_train)
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    anomaly_score = method.score(pipeline, split.X_test)
    score_seconds = time.perf_counter() - start

    metrics = evaluate(split.role_test, anomaly_score)
    return {**metrics, "fit_seconds": fit_seconds, "score_seconds": score_seconds}


def run_scenario(
    scenario, settings, methods, *, repetitions, max_epochs, device, command
):
    """Run every method on every repetition of one scenario; return result rows.

    A method that raises is logged and recorded with NaN metrics and the
    error message, so one failure does not end a long run.
    """
    rows = []
    split_settings = {key: settings[key] for key in SPLIT_SETTINGS}
    for repetition in range(repetitions):
        split = split_repetition(scenario, repetition, **split_settings)
        sizes = {
            "n_train": len(split.y_train),
            "n_train_labeled": int(split.y_train.sum()),
            "n_test": len(split.role_test),
            "n_test_defect": int(np.sum(split.role_test == "defect")),
            "n_test_other": int(np.sum(split.role_test == "other")),
        }
        for method in methods:
            row = {
                "scenario": scenario.name,
                "method": method.name,
                "repetition": repetition,
                **sizes,
                "error": "",
                "command": command,
            }
            try:
                row.update(
                    run_method(
                        method, split, repetition, max_epochs=max_epochs, device=device
                    )
                )
            except Exception as error:  # one failure must not end a long run
                logger.exception(
                    "%s, repetition %d, %s failed",
                    scenario.name,
                    repetition,
                    method.name,
                )
                row.update(dict.fromkeys(METRICS, math.nan))
                row.update(fit_seconds=math.nan, score_seconds=math.nan)
                row["error"] = f"{type(error).__name__}: {error}"
            else:
                logger.info(
                    "%s, repetition %d, %s: ap=%.3f auc=%.3f fit %.1f s, score %.2f s",
                    scenario.name,
                    repetition,
                    method.name,
                    row["ap"],
                    row["auc"],
                    row["fit_seconds"],
                    row["score_seconds"],
                )
            rows.append(row)
    return rows


# Report --------------------------------------------------------------------


def summarize(results):
    """Return the mean and std over repetitions per scenario and method.

    Columns are ``{metric}_mean`` and ``{metric}_std`` for every metric and
    for ``fit_seconds`` and ``score_seconds``, plus ``n_errors``. Rows keep
    the order in which scenarios and methods first appear in ``results``.
    """
    columns = [*METRICS, "fit_seconds", "score_seconds"]
    grouped = results.groupby(["scenario", "method"], sort=False)
    summary = grouped[columns].agg(["mean", "std"])
    summary.columns = [f"{name}_{stat}" for name, stat in summary.columns]
    summary["n_errors"] = grouped["error"].apply(
        lambda errors: int((errors != "").sum())
    )
    return summary


def mean_rank_by_ap(summary):
    """Return each method's mean rank by mean ``ap`` and the scenarios ranked.

    Rank 1 is the highest ``ap`` in a scenario and ties share the average
    rank. Only scenarios where every method has a finite mean ``ap`` are
    ranked, so that every method is ranked on the same scenarios.
    """
    ap = summary["ap_mean"].unstack("method")
    complete = ap.dropna()
    ranks = complete.rank(axis=1, ascending=False, method="average")
    return ranks.mean(), list(complete.index)


def _format_mean_std(mean, std, digits=3):
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _markdown_table(header, rows):
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_table(summary, scenarios, methods, column, digits=3):
    rows = []
    for scenario in scenarios:
        cells = [scenario]
        for method in methods:
            if (scenario, method) in summary.index:
                values = summary.loc[(scenario, method)]
                cells.append(
                    _format_mean_std(
                        values[f"{column}_mean"], values[f"{column}_std"], digits
                    )
                )
            else:
                cells.append("not run")
        rows.append(cells)
    return _markdown_table(["scenario", *methods], rows)


def cpu_name():
    """Return the CPU model from /proc/cpuinfo, or what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description():
    """Describe the CPU, the core count and the torch thread count."""
    cpu = cpu_name()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    parts = [cpu, f"{os.cpu_count()} logical cores"]
    if usable is not None:
        parts.append(f"{usable} usable by this process")
    if "torch" in sys.modules:
        parts.append(f"torch threads {sys.modules['torch'].get_num_threads()}")
    return ", ".join(parts)


def package_versions():
    """Return the installed version of each reported package."""
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_report(results, path, *, run_info):
    """Write the markdown report of a results table.

    ``run_info`` has ``settings`` (repetitions, n_labeled, max_epochs,
    device), ``unavailable`` (method name to reason) and ``scenario_order``.
    """
    summary = summarize(results)
    known_order = {name: i for i, name in enumerate(run_info["scenario_order"])}
    scenarios = sorted(
        results["scenario"].unique(),
        key=lambda name: known_order.get(name, len(known_order)),
    )
    methods = [name for name in METHODS if name in set(results["method"])]
    mean_ranks, ranked_scenarios = mean_rank_by_ap(summary)

    lines = ["# Defect-detection benchmark", ""]
    lines += _report_setup(results, run_info)
    lines += ["## Methods", ""]
    lines += [f"- `{name}`: {METHODS[name].description}" for name in methods]
    for name, reason in run_info["unavailable"].items():
        lines.append(f"- `{name}`: not run, because {reason}")
    lines.append("")

    lines += _report_summary(summary, scenarios, methods, mean_ranks, ranked_scenarios)

    titles = {
        "ap": "Average precision (`ap`)",
        "auc": "ROC AUC (`auc`)",
        "auc_vs_other": "ROC AUC of defects against other outliers (`auc_vs_other`)",
    }
    for metric in METRICS:
        lines += [f"## {titles[metric]}", "", "Mean ± std over repetitions.", ""]
        lines += [_metric_table(summary, scenarios, methods, metric), ""]

    lines += ["## Fit seconds", "", "Mean ± std per repetition.", ""]
    lines += [_metric_table(summary, scenarios, methods, "fit_seconds", digits=2), ""]
    lines += ["## Score seconds", "", "Mean ± std per repetition, whole test set.", ""]
    lines += [_metric_table(summary, scenarios, methods, "score_seconds", digits=3), ""]

    failures = results[results["error"] != ""]
    if len(failures):
        lines += ["## Failures", ""]
        for row in failures.itertuples():
            where = f"{row.scenario}, repetition {row.repetition}, {row.method}"
            lines.append(f"- {where}: {row.error}")
        lines.append("")

    Path(path).write_text("\n".join(lines), encoding="utf-8")


def _report_setup(results, run_info):
    settings = run_info["settings"]
    lines = ["Command lines that produced these results:", ""]
    lines += [f"    {command}" for command in results["command"].unique()]
    lines += [
        "",
        f"- Machine: {machine_description()}",
        f"- Repetitions: {settings['repetitions']}, labeled defects per training "
        f"set: {settings['n_labeled']}, device: {settings['device']}, threads: "
        f"{settings['threads'] or 'library defaults'}, epochs of the "
        "neural methods: "
        + (
            "each library's default"
            if settings["max_epochs"] is None
            else f"{settings['max_epochs']} (override)"
        ),
        "- Split: the rows of each role are shuffled with "
        "`numpy.random.default_rng(repetition)` and halved into training and test "
        "pools; every method sees the same rows and is fitted in "
        "`Pipeline(StandardScaler(), method)` with `random_state=repetition`.",
        "- Versions: "
        + ", ".join(
            f"{name} {version}" for name, version in package_versions().items()
        ),
        "",
    ]
    return lines


def _report_summary(summary, scenarios, methods, mean_ranks, ranked_scenarios):
    lines = ["## Summary", ""]
    lines.append(
        f"Means over the {len(ranked_scenarios)} scenarios in which every method "
        "has results (`auc_vs_other`: only those of them with other outliers). "
        "Mean rank by `ap`: 1 is best, ties share the average rank. Seconds are "
        "the per-repetition means summed over all scenarios that the method ran "
        "on. They are wall-clock times, so other processes on the machine "
        "inflate them."
    )
    lines.append("")
    rows = []
    for method in methods:
        per_scenario = summary.xs(method, level="method").reindex(ranked_scenarios)
        cells = [method]
        for metric in METRICS:
            values = per_scenario[f"{metric}_mean"].dropna()
            cells.append(f"{values.mean():.3f}" if len(values) else "n/a")
        cells.append(f"{mean_ranks.get(method, math.nan):.2f}")
        all_scenarios = summary.xs(method, level="method").reindex(scenarios)
        cells.append(f"{all_scenarios['fit_seconds_mean'].sum():.1f}")
        cells.append(f"{all_scenarios['score_seconds_mean'].sum():.2f}")
        rows.append(cells)
    header = ["method", *METRICS, "mean rank (ap)", "fit s", "score s"]
    lines += [_markdown_table(header, rows), ""]
    return lines


def plot_ap(results, path, *, scenario_order):
    """Draw mean average precision per scenario and method as a dot plot.

    Each scenario is a row; each method is a marker with a horizontal bar of
    one standard deviation over repetitions.
    """
    from matplotlib.figure import Figure

    summary = summarize(results)
    known_order = {name: i for i, name in enumerate(scenario_order)}
    scenarios = sorted(
        results["scenario"].unique(),
        key=lambda name: known_order.get(name, len(known_order)),
    )
    methods = [name for name in METHODS if name in set(results["method"])]
    n_repetitions = results["repetition"].nunique()

    figure = Figure(figsize=(9, 1.6 + 0.38 * len(scenarios)), layout="constrained")
    axes = figure.add_subplot()
    markers = ["o", "s", "D", "^", "v", "P", "X", "*"]
    step = 0.8 / max(len(methods), 1)
    for row in range(0, len(scenarios), 2):
        axes.axhspan(row - 0.5, row + 0.5, color="0.94", zorder=0)

    for i, method in enumerate(methods):
        offset = (i - (len(methods) - 1) / 2) * step
        mean = summary["ap_mean"].unstack("method").reindex(scenarios)[method]
        std = summary["ap_std"].unstack("method").reindex(scenarios)[method].fillna(0)
        axes.errorbar(
            mean.to_numpy(),
            np.arange(len(scenarios)) + offset,
            xerr=std.to_numpy(),
            fmt=markers[i % len(markers)],
            color=f"C{i}",
            markersize=5,
            elinewidth=1,
            capsize=0,
            label=f"{method} (mean AP {mean.mean():.2f})",
            zorder=3,
        )

    axes.set_yticks(np.arange(len(scenarios)), scenarios)
    axes.set_ylim(len(scenarios) - 0.5, -0.5)
    axes.set_xlim(0, 1.02)
    axes.set_xlabel("average precision on the test set (defect = positive class)")
    axes.grid(axis="x", color="0.8", linewidth=0.5)
    figure.suptitle(
        f"Average precision per scenario, mean ± std over {n_repetitions} "
        f"repetition{'s' if n_repetitions != 1 else ''}"
    )
    figure.legend(
        loc="outside lower center",
        ncol=min(len(methods), 4),
        frameon=False,
        fontsize="small",
    )
    figure.savefig(path, dpi=120)


# Command line --------------------------------------------------------------


def parse_args(argv):
    """Parse the command-line options."""
    parser = argparse.ArgumentParser(
        description="Run the defect-detection benchmark and write results.csv, "
        "report.md and ap.png."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"folder that contains {SCENARIOS_FILE} and the data files it names "
        f"(default: {DEFAULT_DATA_DIR})",
    )

    parser.add_argument(
        "--scenarios", help="comma-separated scenario names (default: all)"
    )
    parser.add_argument(
        "--methods",
        help=f"comma-separated method names out of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        help="number of repetitions, seeds 0 to N-1 (default: from scenarios.json)",
    )
    parser.add_argument(
        "--n-labeled",
        type=int,
        help="labeled defects per training set (default: from scenarios.json)",
    )

    parser.add_argument(
        "--max-epochs",
        type=int,
        help="training epochs of every neural method, for quick runs "
        "(default: each library's own default)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device of the neural methods (default: cpu)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="threads of torch and of the OpenMP and BLAS pools that scikit-learn "
        "uses (default: each library's own choice)",
    )

    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"output folder (default: {DEFAULT_OUT_DIR})",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an existing results.csv in --out for the scenario "
        "and method pairs that this run does not repeat, and report on all rows",
    )

    args = parser.parse_args(argv)
    for name in ("repetitions", "n_labeled", "max_epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args, parser


def _select(requested, available, kind, parser):
    if requested is None:
        return list(available)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in names if name not in available]
    if unknown:
        parser.error(
            f"unknown {kind} {unknown}; expected names out of {list(available)}"
        )
    return names


def main(argv=None):
    """Run the benchmark from the command line; return the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    args, parser = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = shlex.join(["python", "benchmarks/quality.py", *argv])

    try:
        config = load_config(args.data_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    specs = {spec["name"]: spec for spec in config["scenarios"]}
    scenario_names = _select(args.scenarios, specs, "scenarios", parser)
    method_names = _select(args.methods, METHODS, "methods", parser)

    unavailable = {}
    methods = []
    for name in method_names:
        reason = method_unavailable_reason(METHODS[name])
        if reason is None:
            methods.append(METHODS[name])
        else:
            unavailable[name] = reason
            logger.warning("Method %s is disabled: %s", name, reason)
    if not methods:
        parser.error(
            "none of the requested methods can run here; see the messages above"
        )

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.csv"
    kept = (
        _previous_rows(results_path, scenario_names, method_names) if args.merge else []
    )

    rows = []
    repetitions = args.repetitions or config["defaults"]["repetitions"]
    n_labeled = args.n_labeled or config["defaults"]["n_labeled"]
    for name in scenario_names:
        start = time.perf_counter()
        settings = scenario_settings(config, specs[name])
        settings["n_labeled"] = n_labeled
        scenario = load_scenario(specs[name], args.data_dir)
        with threadpool_limits(limits=args.threads):
            rows += run_scenario(
                scenario,
                settings,
                methods,
                repetitions=args.repetitions or settings["repetitions"],
                max_epochs=args.max_epochs,
                device=args.device,
                command=command,
            )
        _write_results(kept, rows, results_path)
        logger.info("%s finished in %.1f s", name, time.perf_counter() - start)

    results = _write_results(kept, rows, results_path)
    run_info = {
        "settings": {
            "repetitions": repetitions,
            "n_labeled": n_labeled,
            "max_epochs": args.max_epochs,
            "device": args.device,
            "threads": args.threads,
        },
        "unavailable": unavailable,
        "scenario_order": list(specs),
    }
    write_report(results, args.out / "report.md", run_info=run_info)
    plot_ap(results, args.out / "ap.png", scenario_order=list(specs))
    logger.info("Wrote %s, report.md and ap.png", results_path)
    return 0


def _previous_rows(path, scenario_names, method_names):
    if not path.is_file():
        return []
    previous = pd.read_csv(
        path,
        keep_default_na=False,
        na_values={
            column: [""] for column in (*METRICS, "fit_seconds", "score_seconds")
        },
        dtype={"error": str, "command": str},
    )
    rerun = previous["scenario"].isin(scenario_names) & previous["method"].isin(
        method_names
    )
    return previous[~rerun].to_dict("records")


def _write_results(kept, rows, path):
    results = pd.DataFrame([*kept, *rows], columns=list(RESULT_COLUMNS))
    results.to_csv(path, index=False)
    return results


if __name__ == "__main__":
    sys.exit(main())

"""Soak benchmark: fit and score repeatedly for a fixed time, then report the
growth of resident memory and every failure as Markdown.

Each round fits a detector on fresh data and scores it in one call, in chunks
and from four threads at once. It round-trips the detector through pickle and
refits it. It also drives the error paths that must leave a fitted detector
unchanged: NaN input, a loss that becomes NaN, and a KeyboardInterrupt during
training. A failure is any unexpected exception, a missing expected one, a
non-finite score, or scores that differ where they must agree. Resident memory
(RSS) is read after a garbage collection at the end of every round.

Usage, from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/soak.py --seconds 300 \\
        --output benchmarks/results/soak.md

The report goes to standard output and, with ``--output``, to that file.
"""

import argparse
import gc
import os
import pickle
import platform
import shlex
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Callback

from sk_cae import ContrastiveAEDetector, NonFiniteLossError

# Rounds before the memory baseline is taken: the first fits load libraries,
# fill allocator pools and compile kernels.
MIN_WARMUP_ROUNDS = 5

# Rows of the memory table; rounds in between are left out of the table.
MAX_TABLE_ROWS = 25

MIB = 2**20


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


class RoundFailure(AssertionError):
    """A check of one soak round did not hold."""


def resident_memory_bytes():
    """Return the resident set size of this process in bytes, or None."""
    try:
        with open("/proc/self/statm") as file:
            resident_pages = int(file.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def make_data(seed, n_main, n_defects, n_features):
    rng = np.random.default_rng(seed)
    X = np.vstack(
        [
            rng.normal(size=(n_main, n_features)),
            rng.normal(3.0, 0.5, size=(n_defects, n_features)),
        ]
    )
    y = np.r_[np.zeros(n_main, dtype=int), np.ones(n_defects, dtype=int)]
    order = rng.permutation(len(X))
    return X[order], y[order]


def check(condition, message):
    if not condition:
        raise RoundFailure(message)


def expect_unchanged(detector, X, scores, error_type, action):
    """Run ``action``, which must raise ``error_type``, and check that the
    detector still gives ``scores``."""
    try:
        action()
    except error_type:
        pass
    else:
        raise RoundFailure(f"{error_type.__name__} was not raised")
    check(
        np.array_equal(detector.score_samples(X), scores),
        f"scores changed after a failed fit raising {error_type.__name__}",
    )


def run_round(index, args):
    """Run every step of one round; raise on the first failure."""
    X, y = make_data(index, args.rows, args.defects, args.features)
    params = {
        "hidden_layer_sizes": (32, 16),
        "latent_dim": 4,
        "max_epochs": args.epochs,
        "random_state": index,
        "score_method": ("latent", "combined", "reconstruction")[index % 3],
    }
    detector = ContrastiveAEDetector(**params).fit(X, y)

    scores = detector.score_samples(X)
    check(np.isfinite(scores).all(), "non-finite score")
    labels = detector.predict(X)
    check(set(np.unique(labels)) <= {-1, 1}, f"predict returned {np.unique(labels)}")
    chunked = np.concatenate(
        [detector.score_samples(part) for part in np.array_split(X, 4)]
    )
    check(
        np.allclose(chunked, scores, rtol=1e-4, atol=1e-6),
        "scores in chunks differ from scores in one call",
    )
    parts = np.array_split(X, 8)
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(detector.score_samples, parts))
    for part, got in zip(parts, threaded, strict=True):
        check(
            np.array_equal(got, detector.score_samples(part)),
            "scores from threads differ from serial scores",
        )
    restored = pickle.loads(pickle.dumps(detector))
    check(
        np.array_equal(restored.score_samples(X), scores),
        "scores changed after a pickle round trip",
    )

    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    expect_unchanged(detector, X, scores, ValueError, lambda: detector.fit(X_nan, y))
    detector.set_params(callbacks=[PoisonWeightsAtEpoch(2)])
    expect_unchanged(
        detector, X, scores, NonFiniteLossError, lambda: detector.fit(X, y)
    )
    detector.set_params(callbacks=[InterruptAtEpoch(2)])
    expect_unchanged(detector, X, scores, KeyboardInterrupt, lambda: detector.fit(X, y))

    detector.set_params(callbacks=None)
    refitted = detector.fit(X, y).score_samples(X)
    check(np.array_equal(refitted, scores), "refit with the same seed differs")


def linear_slope(x, y):
    """Return the least-squares slope of ``y`` against ``x``."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def soak(args):
    """Run rounds until ``args.seconds`` have passed or Ctrl-C is pressed."""
    samples = []
    failures = []
    start = time.monotonic()
    index = 0
    while time.monotonic() - start < args.seconds:
        try:
            run_round(index, args)
        except KeyboardInterrupt:
            # The interrupts under test are caught inside run_round, so this
            # one comes from the user: stop and report what was measured.
            break
        except Exception as exc:
            failures.append(
                (index, "".join(traceback.format_exception_only(exc)).strip())
            )
        gc.collect()
        samples.append((index, time.monotonic() - start, resident_memory_bytes()))
        index += 1
    return samples, failures


def memory_summary(samples):
    """Return the baseline, last and peak RSS after warm-up, the growth and
    the slope per 100 rounds, all in MiB, or None without RSS readings."""
    if samples[0][2] is None:
        return None
    warmup = max(MIN_WARMUP_ROUNDS, len(samples) // 10)
    measured = samples[warmup:] if len(samples) > warmup + 1 else samples
    rss = np.array([sample[2] for sample in measured], dtype=float) / MIB
    quarter = max(len(rss) // 4, 1)
    baseline = float(np.median(rss[:quarter]))
    final = float(np.median(rss[-quarter:]))
    rounds = [sample[0] for sample in measured]
    return {
        "warmup_rounds": warmup,
        "first_rss": samples[0][2] / MIB,
        "baseline": baseline,
        "final": final,
        "peak": float(rss.max()),
        "growth": final - baseline,
        "slope_per_100": 100 * linear_slope(rounds, rss),
    }


def versions():
    names = ("sk-cae", "torch", "skorch", "scikit-learn", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except Exception:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def report(args, samples, failures, argv):
    elapsed = samples[-1][1] if samples else 0.0
    lines = [
        "## Soak run",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/soak.py', *argv])}` "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"torch threads {torch.get_num_threads()})",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; {versions()}.",
        "",
        f"Data per round: {args.rows} main-group rows, {args.defects} defects, "
        f"{args.features} features; {args.epochs} epochs per fit.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| duration | {elapsed:.0f} s |",
        f"| rounds | {len(samples)} |",
        "| fits per round | 5 (1 fit, 3 failing refits, 1 refit) |",
        f"| failures | {len(failures)} |",
    ]
    summary = memory_summary(samples) if samples else None
    if summary is None:
        lines.append("| resident memory | not measurable on this platform |")
    else:
        lines += [
            f"| RSS after round 0 | {summary['first_rss']:.1f} MiB |",
            f"| RSS baseline (median of the first quarter after "
            f"{summary['warmup_rounds']} warm-up rounds) | "
            f"{summary['baseline']:.1f} MiB |",
            f"| RSS at the end (median of the last quarter) | "
            f"{summary['final']:.1f} MiB |",
            f"| RSS peak after warm-up | {summary['peak']:.1f} MiB |",
            f"| growth, end minus baseline | {summary['growth']:+.1f} MiB |",
            f"| least-squares slope | {summary['slope_per_100']:+.2f} MiB per "
            "100 rounds |",
        ]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- round {index}: `{message}`" for index, message in failures]
    if summary is not None:
        step = max(len(samples) // MAX_TABLE_ROWS, 1)
        lines += ["", "| round | elapsed (s) | RSS (MiB) |", "| --- | --- | --- |"]
        table_rows = samples[::step]
        if table_rows[-1] is not samples[-1]:
            table_rows.append(samples[-1])
        lines += [
            f"| {index} | {elapsed:.0f} | {rss / MIB:.1f} |"
            for index, elapsed, rss in table_rows
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="how long to run, in seconds"
    )
    parser.add_argument("--rows", type=int, default=400, help="main-group rows")
    parser.add_argument("--defects", type=int, default=20, help="labeled defects")
    parser.add_argument("--features", type=int, default=8, help="columns of X")
    parser.add_argument("--epochs", type=int, default=3, help="max_epochs per fit")
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the report here"
    )
    args = parser.parse_args(argv)

    samples, failures = soak(args)
    text = report(args, samples, failures, argv)
    print(text, end="")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``sk-cae`` command line."""

import argparse
import sys
import time

from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import ContrastiveAEDetector, __version__
from .datasets import load_digits_scenario


def _defect_metrics(split, anomaly):
    """Return defect AP, defect ROC AUC and ROC AUC of defects vs other outliers."""
    is_defect = split.role_test == "defect"
    outlier = split.role_test != "normal"
    return (
        average_precision_score(is_defect, anomaly),
        roc_auc_score(is_defect, anomaly),
        roc_auc_score(is_defect[outlier], anomaly[outlier]),
    )


def run_demo(args):
    """Fit a plain and a contrastive autoencoder on the digits scenario and
    print how well each finds the defects."""
    split = load_digits_scenario(n_labeled=args.n_labeled, seed=args.seed)
    n_normal = int((split.role_train == "normal").sum())
    n_other = int((split.role_train == "other").sum())
    print(
        "Digits scenario: 0-6 normal, 9 the defect, 7 and 8 other outliers.\n"
        f"Training rows: {len(split.y_train)} ({n_normal} normal, {n_other} other "
        f"outliers, {int(split.y_train.sum())} labeled defects, "
        f"{int((split.role_train == 'defect').sum() - split.y_train.sum())} "
        f"unlabeled defects); test rows: {len(split.role_test)} "
        f"({int((split.role_test == 'defect').sum())} defects, "
        f"{int((split.role_test == 'other').sum())} other outliers).\n"
    )
    rows = []
    for name, labels in (
        ("plain autoencoder (no labels)", None),
        ("contrastive autoencoder", split.y_train),
    ):
        detector = make_pipeline(
            StandardScaler(),
            ContrastiveAEDetector(random_state=args.seed, verbose=args.verbose),
        )
        start = time.perf_counter()
        detector.fit(split.X_train, labels)
        seconds = time.perf_counter() - start
        anomaly = -detector.score_samples(split.X_test)
        rows.append((name, *_defect_metrics(split, anomaly), seconds))

    header = (
        f"{'model':<31} {'defect AP':>9} {'defect AUC':>10} "
        f"{'AUC vs other':>12} {'fit s':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, ap, auc, auc_other, seconds in rows:
        print(f"{name:<31} {ap:>9.3f} {auc:>10.3f} {auc_other:>12.3f} {seconds:>6.1f}")
    print(
        "\nAP: average precision of finding the defects among all test rows. "
        "AUC vs other: ROC AUC of defects against the other outliers only "
        "(0.5 = cannot tell them apart)."
    )
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sk-cae",
        description="Find one kind of outlier, the defect, with a contrastive "
        "autoencoder.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="compare a plain and a contrastive autoencoder on scikit-learn's digits",
        description="Fit a plain autoencoder and a contrastive one on the digits "
        "scenario (0-6 normal, 9 the defect, 7 and 8 other outliers) and print "
        "defect average precision and ROC AUC for each.",
        epilog="example: sk-cae demo --n-labeled 5",
    )
    demo.add_argument(
        "--n-labeled", type=int, default=10, help="labeled defects (default: 10)"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the split and training"
    )
    demo.add_argument(
        "--verbose", type=int, default=0, help="1 prints one line per epoch"
    )
    demo.set_defaults(handler=run_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``sk-cae`` command line."""

import argparse
import os
import sys
import time
import warnings
from contextlib import contextmanager

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from skorch.callbacks import Callback

from . import ContrastiveAEDetector, __version__
from ._cli_tables import (
    CommandError,
    ScoreWriter,
    categorical_columns,
    check_readable,
    columns_of,
    defect_mask,
    import_pandas,
    label_values,
    model_columns,
    prepare_features,
    read_chunks,
    read_table,
    require_columns,
    split_feature_columns,
)
from .datasets import load_digits_scenario
from .io import ModelFileError, load, save


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
    if args.plots:
        # Checked before training, so that a missing matplotlib fails at once.
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise CommandError(
                '--plots needs matplotlib; install it with: pip install "sk-cae[plot]"'
            ) from error
        from .plotting import save_comparison_figures
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
    detectors = {}
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
        detectors[name] = detector

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
    if args.plots:
        try:
            paths = save_comparison_figures(
                detectors, split.X_test, split.role_test, args.plots
            )
        except OSError as error:
            raise CommandError(
                f"Could not write the figures to {args.plots}: {error}"
            ) from error
        print(f"\nFigures of the test rows written to: {', '.join(paths.values())}")
    return 0


# ------------------------------------------------------ fit, score, evaluate

# Rows that score and evaluate read from a data file at a time.
CHUNK_ROWS = 50_000

# fit prints a note for a text column with more distinct values than this,
# since every value becomes a feature of its own.
MANY_CATEGORIES = 100


@contextmanager
def _plain_warnings():
    """Print warnings as one ``sk-cae: warning:`` line each, without the
    source line that Python's default format adds."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"sk-cae: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _check_defects(path, n_defects, n_rows, label_values, args):
    if n_defects == 0:
        raise CommandError(
            f"{path} has no defect rows: no value of the column "
            f"{args.label_column!r} equals --defect-value {args.defect_value!r} "
            f"(values found: {label_values}). Pass the value that marks a defect "
            "with --defect-value."
        )
    if n_defects == n_rows:
        raise CommandError(
            f"Every row of {path} is a defect: the column {args.label_column!r} "
            f"equals {args.defect_value!r} in all {n_rows} rows, and the model "
            "also needs rows that are not defects."
        )


def _hidden_layer_sizes(text):
    """Parse ``--hidden-layer-sizes``, such as "64,32" (empty for none)."""
    try:
        sizes = tuple(int(size) for size in text.split(",") if size.strip())
    except ValueError:
        sizes = (0,)
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, such as 64,32; "
            f"got {text!r}"
        )
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _contamination(text):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 0.5:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or a number in (0, 0.5]; got {text!r}"
        )
    return value


class EpochProgressBar(Callback):
    """skorch callback that shows a tqdm progress bar over the epochs on
    stderr, with the latest training loss."""

    def __init__(self, max_epochs):
        self.max_epochs = max_epochs

    def on_train_begin(self, net, **kwargs):
        from tqdm import tqdm

        self.bar_ = tqdm(
            total=self.max_epochs,
            desc="training",
            unit="epoch",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def on_epoch_end(self, net, **kwargs):
        loss = net.history[-1, "train_loss"]
        self.bar_.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self.bar_.update()

    def on_train_end(self, net, **kwargs):
        self.bar_.close()


def _build_model(numeric, categorical, args):
    """Return the unfitted pipeline of ``fit``: median imputation and
    standard scaling of the numeric columns, one-hot encoding of the text
    columns, then the detector."""
    transformers = []
    if numeric:
        numeric_steps = make_pipeline(
            SimpleImputer(strategy="median"), StandardScaler()
        )
        transformers.append(("numeric", numeric_steps, numeric))
    if categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
        transformers.append(("categorical", encoder, categorical))
    callbacks = [EpochProgressBar(args.max_epochs)] if sys.stderr.isatty() else None
    detector = ContrastiveAEDetector(
        hidden_layer_sizes=args.hidden_layer_sizes,
        latent_dim=args.latent_dim,
        score_method=args.score_method,
        contamination=args.contamination,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        early_stopping=args.early_stopping,
        callbacks=callbacks,
        random_state=args.random_state,
    )
    return Pipeline(
        [
            ("columns", ColumnTransformer(transformers, sparse_threshold=0)),
            ("detector", detector),
        ]
    )


def _training_summary(history):
    """Return "final training loss L (part p, ...)" from a skorch history."""
    last = history[-1]
    parts = [
        f"{key.removeprefix('train_')} {last[key]:.4g}"
        for key in last
        if key.startswith("train_")
        and not key.endswith("_best")
        and key not in ("train_loss", "train_batch_count")
    ]
    summary = f"final training loss {last['train_loss']:.4g}"
    return summary + (f" ({', '.join(parts)})" if parts else "")


def run_fit(args):
    """Train a model on a labeled data file and save it."""
    with _plain_warnings():
        pandas = import_pandas()
        columns = columns_of(args.data)
        excluded = {args.label_column: "the label column"}
        if args.id_column:
            excluded[args.id_column] = "the id column"
        for name in args.ignore_column:
            excluded[name] = "an ignored column"
        require_columns(args.data, columns, excluded)
        model_directory = os.path.dirname(os.path.abspath(args.model))
        if not os.path.isdir(model_directory):
            raise CommandError(
                f"{args.model}: the directory {model_directory} does not exist."
            )

        text_columns = [args.label_column] + (
            [args.id_column] if args.id_column else []
        )
        frame = read_table(args.data, text_columns)
        labels = frame[args.label_column]
        is_defect = defect_mask(labels, args.defect_value)
        n_defects = int(is_defect.sum())
        _check_defects(
            args.data, n_defects, len(frame), label_values(labels.dropna()), args
        )
        features = frame.drop(columns=list(excluded))
        if features.shape[1] == 0:
            raise CommandError(
                f"{args.data} has no feature columns besides "
                f"{', '.join(map(repr, excluded))}."
            )
        numeric, categorical = split_feature_columns(pandas, features, args.data)
        for name in categorical:
            n_values = features[name].nunique()
            if n_values > MANY_CATEGORIES:
                print(
                    f"sk-cae: note: the text column {name!r} has {n_values} "
                    "distinct values, each of which becomes a feature; if it "
                    f"identifies rows, pass --id-column {name!r} or "
                    f"--ignore-column {name!r}.",
                    file=sys.stderr,
                )
        features = prepare_features(
            pandas, features, list(features.columns), categorical, args.data, 0
        )

        model = _build_model(numeric, categorical, args)
        start = time.perf_counter()
        try:
            model.fit(features, is_defect.astype(int))
        except (ValueError, FloatingPointError) as error:
            raise CommandError(f"Training failed: {error}") from error
        seconds = time.perf_counter() - start

        detector = model[-1]
        # The progress bar belongs to this run, not to the saved model.
        detector.set_params(callbacks=None)
        try:
            save(model, args.model)
        except ImportError as error:
            raise CommandError(str(error)) from error
        history = detector.net_.history
        print(
            f"Trained on {len(frame)} rows ({n_defects} labeled defects; "
            f"{features.shape[1]} columns, {detector.n_features_in_} features "
            f"after encoding) for {len(history)} epochs in {seconds:.1f} s; "
            f"{_training_summary(history)}. Model written to {args.model}."
        )
    return 0


def _load_model(path):
    check_readable(path, "model file")
    try:
        return load(path)
    except (ModelFileError, ImportError) as error:
        raise CommandError(str(error)) from error


def _decisions(model, args, extra_columns):
    """Yield ``(chunk, decision)`` for each chunk of the data file, where
    ``chunk`` contains ``extra_columns`` and ``decision`` the model's decision
    function of its rows."""
    pandas = import_pandas()
    available = columns_of(args.data)
    require_columns(args.data, available, extra_columns)
    columns = model_columns(model, args.data, available, list(extra_columns))
    categorical = categorical_columns(model)
    wanted = list(dict.fromkeys([*columns, *extra_columns]))
    first_row = 0
    for chunk in read_chunks(
        args.data, wanted, [*categorical, *extra_columns], args.chunk_rows
    ):
        if chunk.empty:
            continue
        features = prepare_features(
            pandas, chunk, columns, categorical, args.data, first_row
        )
        try:
            decision = model.decision_function(features)
        except (ValueError, FloatingPointError) as error:
            raise CommandError(
                f"Data rows {first_row + 1} to {first_row + len(chunk)} of "
                f"{args.data} cannot be scored: {error}"
            ) from error
        yield chunk[list(extra_columns)], decision
        first_row += len(chunk)
    if first_row == 0:
        raise CommandError(
            f"{args.data} has no data rows, so there is nothing to score."
        )


def run_score(args):
    """Write the score and flag of every row of a data file."""
    with _plain_warnings():
        pandas = import_pandas()
        columns_of(args.data)
        if args.out not in (None, "-"):
            if os.path.abspath(args.out) == os.path.abspath(args.data):
                raise CommandError(
                    f"--out {args.out} is the input file; choose another file name."
                )
            directory = os.path.dirname(os.path.abspath(args.out))
            if not os.path.isdir(directory):
                raise CommandError(
                    f"{args.out}: the directory {directory} does not exist."
                )
        writer = ScoreWriter(args.out, args.id_column)
        model = _load_model(args.model)
        extra = {args.id_column: "the id column"} if args.id_column else {}

        n_rows = n_flagged = 0
        try:
            for chunk, decision in _decisions(model, args, extra):
                table = pandas.DataFrame(index=chunk.index)
                if args.id_column:
                    ids = chunk[args.id_column]
                    table[args.id_column] = ids.astype(str).where(ids.notna(), None)
                table["score"] = decision
                table["flag"] = (decision < 0).astype("int8")
                writer.write(table)
                n_rows += len(table)
                n_flagged += int((decision < 0).sum())
            writer.finish(pandas)
        except BaseException:
            writer.abandon()
            raise

    share = f" ({100 * n_flagged / n_rows:.1f}%)" if n_rows else ""
    destination = "stdout" if writer.to_stdout else args.out
    print(
        f"Scored {n_rows} rows of {args.data}: {n_flagged} flagged as defects"
        f"{share}. Scores written to {destination}.",
        file=sys.stderr,
    )
    return 0


def _ratio(numerator, denominator, empty):
    return f"{numerator / denominator:.3f}" if denominator else empty


def run_evaluate(args):
    """Print how well a model finds the labeled defects of a data file."""
    with _plain_warnings():
        import_pandas()
        columns_of(args.data)
        model = _load_model(args.model)
        masks, decisions, seen = [], [], set()
        extra = {args.label_column: "the label column"}
        for chunk, decision in _decisions(model, args, extra):
            labels = chunk[args.label_column]
            masks.append(defect_mask(labels, args.defect_value))
            decisions.append(decision)
            if len(seen) <= 1000:
                seen.update(str(value) for value in labels.dropna().unique())
        if not decisions:
            raise CommandError(f"{args.data} has no data rows.")
        is_defect = np.concatenate(masks)
        decision = np.concatenate(decisions)
        n_defects = int(is_defect.sum())
        _check_defects(args.data, n_defects, len(decision), label_values(seen), args)

    flagged = decision < 0
    average_precision = average_precision_score(is_defect, -decision)
    auc = roc_auc_score(is_defect, -decision)
    true_positives = int((flagged & is_defect).sum())
    false_positives = int((flagged & ~is_defect).sum())
    false_negatives = n_defects - true_positives
    true_negatives = len(decision) - n_defects - false_positives
    precision = _ratio(true_positives, true_positives + false_positives, "n/a")
    recall = _ratio(true_positives, n_defects, "n/a")
    print(
        f"Rows: {len(decision)} ({n_defects} defects, "
        f"{len(decision) - n_defects} other rows)\n"
        f"Defect average precision: {average_precision:.3f}\n"
        f"Defect ROC AUC:           {auc:.3f}\n"
        f"At the model's threshold: precision {precision}, recall {recall}"
        f"{' (no row flagged)' if not flagged.any() else ''}\n"
        "Confusion counts:\n"
        f"{'':<14}{'flagged':>9}{'not flagged':>13}\n"
        f"{'defect':<14}{true_positives:>9}{false_negatives:>13}\n"
        f"{'not defect':<14}{false_positives:>9}{true_negatives:>13}"
    )
    return 0


FIT_EPILOG = """\
examples:
  sk-cae fit parts.csv --label-column status --defect-value cracked \\
      --model parts.skcae
  sk-cae fit parts.parquet --label-column is_defect --id-column serial \\
      --max-epochs 50 --model parts.skcae

Every column other than the label, the id and the ignored ones is a feature.
Numeric columns are filled with their median where empty and standardized,
and text columns are one-hot encoded. Rows whose label is empty or differs from
--defect-value are the main group (normal or unlabeled rows).
"""

SCORE_EPILOG = """\
examples:
  sk-cae score parts.skcae new_parts.csv --id-column serial --out scores.csv
  sk-cae score parts.skcae new_parts.parquet --out scores.parquet

The output has one row per input row, in the same order: the id (with
--id-column), "score" (negative means flagged as a defect; the lower, the more
defect-like) and "flag" (1 = flagged as a defect, 0 = not flagged).
"""

EVALUATE_EPILOG = """\
example:
  sk-cae evaluate parts.skcae test_parts.csv --label-column status \\
      --defect-value cracked

Average precision and ROC AUC rank the rows by score, so they do not depend on
the threshold. Precision, recall and the confusion counts use the model's
threshold (score < 0 means flagged). Rows whose label is empty or differs from
--defect-value count as rows that are not defects.
"""


def _add_data_arguments(command, label_required):
    command.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=CHUNK_ROWS,
        metavar="N",
        help=f"rows read from DATA at a time (default: {CHUNK_ROWS})",
    )
    if label_required:
        command.add_argument(
            "--label-column", required=True, metavar="COL", help="column of labels"
        )
        command.add_argument(
            "--defect-value",
            default="1",
            metavar="V",
            help="label value that marks a defect (default: 1)",
        )


def _add_model_commands(commands):
    """Add the fit, score and evaluate subcommands to ``commands``."""
    formatter = argparse.RawDescriptionHelpFormatter
    fit = commands.add_parser(
        "fit",
        help="train a model on a labeled CSV or Parquet file",
        description="Train a contrastive autoencoder on DATA, with the rows whose "
        "label equals --defect-value as the known defects, and save the model "
        "with its preprocessing.",
        epilog=FIT_EPILOG,
        formatter_class=formatter,
    )
    fit.add_argument("data", metavar="DATA", help="a .csv or .parquet file")
    fit.add_argument(
        "--label-column", required=True, metavar="COL", help="column of labels"
    )
    fit.add_argument(
        "--defect-value",
        default="1",
        metavar="V",
        help="label value that marks a defect (default: 1)",
    )
    fit.add_argument(
        "--model", required=True, metavar="OUT", help="model file to write"
    )
    fit.add_argument(
        "--id-column", metavar="COL", help="column that identifies rows, not a feature"
    )
    fit.add_argument(
        "--ignore-column",
        action="append",
        default=[],
        metavar="COL",
        help="column to leave out of the features; repeat for several",
    )
    detector = fit.add_argument_group("model options")
    detector.add_argument(
        "--max-epochs",
        metavar="N",
        type=int,
        default=100,
        help="passes over the data (default: 100)",
    )
    detector.add_argument(
        "--batch-size",
        type=int,
        default=128,
        metavar="N",
        help="rows per step (default: 128)",
    )
    detector.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        metavar="RATE",
        help="learning rate (default: 0.001)",
    )
    detector.add_argument(
        "--hidden-layer-sizes",
        type=_hidden_layer_sizes,
        default=(64, 32),
        metavar="SIZES",
        help="widths of the encoder's hidden layers (default: 64,32)",
    )
    detector.add_argument(
        "--latent-dim",
        metavar="N",
        type=int,
        default=8,
        help="width of the latent code (default: 8)",
    )
    detector.add_argument(
        "--score-method",
        default="auto",
        metavar="METHOD",
        help="how rows are scored: auto, latent, reconstruction, combined, "
        "hybrid or hybrid_logistic, as the detector's score_method (default: "
        "auto)",
    )
    detector.add_argument(
        "--contamination",
        metavar="SHARE",
        type=_contamination,
        default="auto",
        help="share of training rows to flag, in (0, 0.5], or auto (default: auto)",
    )
    detector.add_argument(
        "--early-stopping",
        action="store_true",
        help="hold out 10%% of the rows and stop when their loss stops improving",
    )
    detector.add_argument(
        "--random-state",
        metavar="SEED",
        type=int,
        default=0,
        help="seed, so that two runs give the same model (default: 0)",
    )
    fit.set_defaults(handler=run_fit)

    score = commands.add_parser(
        "score",
        help="write the score and flag of every row of a data file",
        description="Score every row of DATA with a model written by 'sk-cae fit' "
        "(or sk_cae.io.save), reading the file in chunks.",
        epilog=SCORE_EPILOG,
        formatter_class=formatter,
    )
    score.add_argument("model", metavar="MODEL", help="model file")
    score.add_argument("data", metavar="DATA", help="a .csv or .parquet file")
    score.add_argument(
        "--out",
        metavar="FILE",
        help="output .csv or .parquet file (default: CSV on standard output)",
    )
    score.add_argument(
        "--id-column", metavar="COL", help="column of DATA to copy into the output"
    )
    _add_data_arguments(score, label_required=False)
    score.set_defaults(handler=run_score)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure how well a model finds the labeled defects of a data file",
        description="Score DATA with a model and compare the flags with the "
        "labels: defect average precision, ROC AUC, precision and recall at the "
        "model's threshold, and the confusion counts.",
        epilog=EVALUATE_EPILOG,
        formatter_class=formatter,
    )
    evaluate.add_argument("model", metavar="MODEL", help="model file")
    evaluate.add_argument("data", metavar="DATA", help="a .csv or .parquet file")
    _add_data_arguments(evaluate, label_required=True)
    evaluate.set_defaults(handler=run_evaluate)


def _int_in_range(low, high):
    """Return an argparse type that accepts integers from low to high."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {high}, got {value}"
            )
        return value

    return parse


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
        "--n-labeled",
        type=_int_in_range(1, 80),
        default=10,
        metavar="N",
        help="labeled defects, 1 to 80 (default: 10)",
    )
    demo.add_argument(
        "--seed",
        type=_int_in_range(0, 2**32 - 1),
        default=0,
        metavar="N",
        help="seed of the split and training, >= 0 (default: 0)",
    )
    demo.add_argument(
        "--verbose",
        type=_int_in_range(0, 10),
        default=0,
        metavar="N",
        help="1 prints one line per epoch (default: 0)",
    )
    demo.add_argument(
        "--plots",
        metavar="DIR",
        default=None,
        help="also write PNG figures comparing the two models to DIR "
        '(needs matplotlib: pip install "sk-cae[plot]")',
    )
    demo.set_defaults(handler=run_demo)
    _add_model_commands(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"sk-cae {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

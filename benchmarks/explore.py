"""Compare variants of ContrastiveAEDetector's parameters on the benchmark.

Each variant is a set of keyword arguments for the detector; every variant
runs on the same splits as ``quality.py``. Used to choose the defaults; the
findings are in ``NOTES.md``.

Example::

    python benchmarks/explore.py --scenarios digits-9,cardio \\
        --variant base= --variant unit='{"repulsion_weight": 1, \\
        "compactness_weight": 1}'
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import (  # noqa: E402
    DEFAULT_DATA_DIR,
    evaluate,
    load_config,
    load_scenario,
    scenario_settings,
    split_repetition,
)

from sk_cae import ContrastiveAEDetector  # noqa: E402


def parse_variant(text):
    name, _, params = text.partition("=")
    return name, json.loads(params) if params.strip() else {}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--scenarios", default=None, help="comma-separated names")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--n-labeled", type=int, default=10)
    parser.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        required=True,
        help='NAME=JSON keyword arguments, e.g. combined=\'{"score_method": '
        '"combined"}\'',
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    config = load_config(args.data_dir)
    specs = config["scenarios"]
    if args.scenarios:
        wanted = args.scenarios.split(",")
        specs = [spec for spec in specs if spec["name"] in wanted]
    rows = []
    for spec in specs:
        scenario = load_scenario(spec, args.data_dir)
        settings = scenario_settings(config, spec)
        settings.pop("repetitions")
        settings["n_labeled"] = args.n_labeled
        for repetition in range(args.repetitions):
            split = split_repetition(scenario, repetition, **settings)
            for name, params in args.variant:
                detector = ContrastiveAEDetector(random_state=repetition, **params)
                model = make_pipeline(StandardScaler(), detector)
                start = time.perf_counter()
                model.fit(split.X_train, split.y_train)
                seconds = time.perf_counter() - start
                metrics = evaluate(split.role_test, -model.score_samples(split.X_test))
                rows.append(
                    {
                        "scenario": spec["name"],
                        "variant": name,
                        "repetition": repetition,
                        **metrics,
                        "fit_seconds": seconds,
                    }
                )
                print(
                    f"{spec['name']:<26} {name:<14} ap={metrics['ap']:.3f} "
                    f"auc={metrics['auc']:.3f} "
                    f"vs_other={metrics['auc_vs_other']:.3f} {seconds:.1f}s",
                    flush=True,
                )
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    frame.to_csv(args.out / f"explore-{stamp}.csv", index=False)
    summary = frame.groupby("variant")[["ap", "auc", "auc_vs_other"]].mean()
    summary["rank_ap"] = (
        frame.groupby(["scenario", "repetition"])["ap"]
        .rank(ascending=False)
        .groupby(frame["variant"])
        .mean()
    )
    print(summary.sort_values("ap", ascending=False).round(3).to_string())
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

"""Compare score rules computed from one fit of ContrastiveAEDetector.

For each scenario and repetition, one detector with the default training
settings and ``score_method="hybrid"`` is fitted in
``make_pipeline(StandardScaler(), ContrastiveAEDetector(random_state=rep))`` on
the splits of ``quality.py``. Every candidate rule is then computed from the
fitted parts (scaled rows, latent codes, reference rows, labeled defects) and
evaluated on the same test rows. ``NOTES.md`` (Run 4) reports the results.

Each test row is scored on its own: neighbour searches use training rows only,
classifiers are fitted on training rows only, and empirical CDFs are built
from out-of-fold or leave-one-out scores of the training reference rows.

Usage, from the repository root (``--summary`` then prints each candidate's
mean over scenarios of the per-scenario means, from one or more CSV files)::

    OMP_NUM_THREADS=1 python benchmarks/score_rules.py --n-labeled 10 \
        --repetitions 3 --classifiers hgb_X,hgbb_X,lr_X,lrb_X,lr_XZ,lrb_XZ \
        --out benchmarks/results/score_rules_n10.csv
    python benchmarks/score_rules.py --summary benchmarks/results/score_rules_n10.csv \
        --candidates "hybrid;mean[hybrid_lof_x,lr_X]"
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
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
from sk_cae._scores import encode_rows  # noqa: E402

K = 5  # the detector's default n_neighbors


def knn(reference, queries, k, exclude_self=False):
    """Return the sorted distances (float64) from each query to its k nearest
    reference rows, and their positions."""
    reference = np.asarray(reference, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    skip = int(exclude_self)
    k_eff = min(k + skip, len(reference))
    nn = NearestNeighbors(n_neighbors=k_eff, algorithm="brute").fit(reference)
    dist, index = nn.kneighbors(queries)
    return dist[:, skip:], index[:, skip:]


def ratio(d_main, d_defect):
    return d_main / np.maximum(d_main + d_defect, np.finfo(np.float64).tiny)


def space_parts(ref, defects, test):
    """Return the neighbour quantities of one space for the test rows and for
    the reference rows (those leave-one-out)."""
    out = {}
    tiny = np.finfo(np.float64).tiny
    d_ref_loo, i_ref_loo = knn(ref, ref, K, exclude_self=True)
    r = d_ref_loo.mean(axis=1)  # LOO d_main of each reference row
    r_global = np.median(r)
    d_test, i_test = knn(ref, test, K)
    out["dm"] = d_test.mean(axis=1)
    out["dm_ref"] = r
    # LOF-like: d_main divided by the mean LOO d_main of its k main neighbours,
    # brought back to distance units by the median LOO d_main.
    s_test = r[i_test].mean(axis=1)
    s_ref = r[i_ref_loo].mean(axis=1)
    out["dm_lof"] = out["dm"] * r_global / np.maximum(s_test, tiny)
    out["dm_lof_ref"] = r * r_global / np.maximum(s_ref, tiny)
    # The same factor capped at 1: rows in sparse parts of the main group get
    # a smaller d_main, rows in its dense parts keep theirs.
    out["factor_min"] = np.minimum(1.0, r_global / np.maximum(s_test, tiny))
    out["factor_min_ref"] = np.minimum(1.0, r_global / np.maximum(s_ref, tiny))
    out["dm_lofmin"] = out["dm"] * out["factor_min"]
    out["dm_lofmin_ref"] = r * out["factor_min_ref"]
    # Dimensionless d_main (no global rescaling), for the two-sided rule.
    out["dm_rel"] = out["dm"] / np.maximum(s_test, tiny)
    out["dm_rel_ref"] = r / np.maximum(s_ref, tiny)
    n_def = len(defects)
    dd_test, idd_test = knn(defects, test, min(3, n_def))
    dd_ref, idd_ref = knn(defects, ref, min(3, n_def))
    out["dd1"], out["dd1_ref"] = dd_test[:, 0], dd_ref[:, 0]
    out["dd3"], out["dd3_ref"] = dd_test.mean(axis=1), dd_ref.mean(axis=1)
    # Two-sided: d_defect divided by the LOO nearest-defect distance of the
    # nearest labeled defect (the local spacing of the defects there).
    if n_def > 1:
        s_def = knn(defects, defects, 1, exclude_self=True)[0][:, 0]
    else:
        s_def = np.ones(1)
    out["dd_rel"] = out["dd1"] / np.maximum(s_def[idd_test[:, 0]], tiny)
    out["dd_rel_ref"] = out["dd1_ref"] / np.maximum(s_def[idd_ref[:, 0]], tiny)
    return out


def ecdf(train_values):
    sorted_values = np.sort(train_values)
    n = len(sorted_values)

    def transform(values):
        return np.searchsorted(sorted_values, values, side="right") / n

    return transform


def classifier_factories(rep):
    return {
        "hgb": lambda: HistGradientBoostingClassifier(random_state=rep),
        "hgbb": lambda: HistGradientBoostingClassifier(
            random_state=rep, class_weight="balanced"
        ),
        "rfb": lambda: RandomForestClassifier(
            class_weight="balanced_subsample", random_state=rep, n_jobs=1
        ),
        "lr": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=2000)
        ),
        "lr01": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)
        ),
        "lr001": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)
        ),
        "lrb": lambda: make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=2000, class_weight="balanced"),
        ),
    }


def candidate_scores(det, Xs_train, y_train, Xs_test, rep, timings, keys):
    """Return a dict of the test rows' anomaly scores under every candidate."""
    module = det.net_.module_
    dtype = det._input_scorer.latent_main_.dtype
    Xs_train = Xs_train.astype(dtype)
    Xs_test = Xs_test.astype(dtype)
    _, Z_train = encode_rows(module, Xs_train)
    _, Z_test = encode_rows(module, Xs_test)
    is_def = y_train == 1
    ref_idx = det._reference_index

    t0 = time.perf_counter()
    parts = {}
    for space, (tr, te) in {"z": (Z_train, Z_test), "x": (Xs_train, Xs_test)}.items():
        parts[space] = space_parts(tr[ref_idx], tr[is_def], te)
    timings["neighbours"] = time.perf_counter() - t0

    def rule(dm, dd, suffix="", spaces="zx"):
        return [ratio(parts[sp][dm + suffix], parts[sp][dd + suffix]) for sp in spaces]

    scores, ref_scores = {}, {}
    for name, dm, dd in [
        ("hybrid", "dm", "dd1"),
        ("hybrid_def3", "dm", "dd3"),
        ("hybrid_lof", "dm_lof", "dd1"),
        ("hybrid_lof_def3", "dm_lof", "dd3"),
        ("hybrid_lof2", "dm_rel", "dd_rel"),
    ]:
        z, x = rule(dm, dd)
        scores[name] = (z + x) / 2
        zr, xr = rule(dm, dd, "_ref")
        ref_scores[name] = (zr + xr) / 2
        if name == "hybrid":
            scores["latent_only"], scores["input_only"] = z, x
            z_plain, x_plain, zr_plain, xr_plain = z, x, zr, xr
        if name == "hybrid_lof":
            # LOF on one space only, plain ratio on the other.
            scores["hybrid_lof_x"] = (z_plain + x) / 2
            ref_scores["hybrid_lof_x"] = (zr_plain + xr) / 2
            scores["hybrid_lof_z"] = (z + x_plain) / 2
            ref_scores["hybrid_lof_z"] = (zr + xr_plain) / 2
    scores["mean[hybrid,hybrid_lof]"] = (scores["hybrid"] + scores["hybrid_lof"]) / 2
    # Capped factor of the input space, on the input ratio only or on both.
    x, z = parts["x"], parts["z"]
    x_min = ratio(x["dm_lofmin"], x["dd1"])
    x_min_ref = ratio(x["dm_lofmin_ref"], x["dd1_ref"])
    scores["hybrid_lofmin_x"] = (z_plain + x_min) / 2
    ref_scores["hybrid_lofmin_x"] = (zr_plain + x_min_ref) / 2
    scores["hybrid_shared"] = (ratio(z["dm"] * x["factor_min"], z["dd1"]) + x_min) / 2
    ref_scores["hybrid_shared"] = (
        ratio(z["dm_ref"] * x["factor_min_ref"], z["dd1_ref"]) + x_min_ref
    ) / 2

    # Discriminative components: labeled defects vs every unlabeled row.
    feats = {
        "X": (Xs_train, Xs_test),
        "Z": (Z_train, Z_test),
        "XZ": (np.hstack([Xs_train, Z_train]), np.hstack([Xs_test, Z_test])),
    }
    n_def = int(is_def.sum())
    cv = StratifiedKFold(n_splits=min(5, n_def), shuffle=True, random_state=rep)
    bases = [
        "hybrid",
        "hybrid_def3",
        "hybrid_lof",
        "hybrid_lof_x",
        "hybrid_lof2",
        "hybrid_lofmin_x",
        "hybrid_shared",
    ]
    t0 = time.perf_counter()
    for cname, make in classifier_factories(rep).items():
        for fname, (ftr, fte) in feats.items():
            key = f"{cname}_{fname}"
            if keys and key not in keys:
                continue
            clf = make().fit(ftr, is_def)
            p = clf.predict_proba(fte)[:, 1]
            p_oof = cross_val_predict(
                make(), ftr, is_def, cv=cv, method="predict_proba"
            )[:, 1]
            F_p = ecdf(p_oof[ref_idx])
            scores[key] = p
            for base in bases:
                h, h_ref = scores[base], ref_scores[base]
                scores[f"mean[{base},{key}]"] = (h + p) / 2
                # Mean of training-CDF ranks; the raw mean only breaks ties.
                scores[f"cdf[{base},{key}]"] = (ecdf(h_ref)(h) + F_p(p)) / 2 + 1e-9 * (
                    h + p
                )
            h = scores["hybrid"]
            scores[f"geo[hybrid,{key}]"] = np.sqrt(h * p)
            scores[f"max[hybrid,{key}]"] = np.maximum(h, p)
            scores[f"mean3[hybrid,hybrid_lof,{key}]"] = (
                h + scores["hybrid_lof"] + p
            ) / 3
    # Two classifiers averaged into one probability, the library's default
    # with "lr01_X" and "rfb_X".
    for first, second in [("lr01_X", "rfb_X"), ("lr01_X", "hgbb_X")]:
        if first in scores and second in scores:
            pair = (scores[first] + scores[second]) / 2
            for base in bases:
                scores[f"mean[{base},{first}+{second}]"] = (scores[base] + pair) / 2
    timings["classifiers"] = time.perf_counter() - t0
    return scores


def summarize(paths, candidates):
    """Print the mean ap and auc_vs_other of each candidate per label count."""
    frame = pd.concat([pd.read_csv(path) for path in paths])
    if candidates:
        frame = frame[frame["candidate"].isin(candidates)]
    per_scenario = frame.groupby(["n_labeled", "candidate", "scenario"])[
        ["ap", "auc_vs_other"]
    ].mean()
    table = per_scenario.groupby(["n_labeled", "candidate"]).mean().unstack(0)
    table.columns = [f"{metric}, {n} labels" for metric, n in table.columns]
    print(table.sort_values(table.columns[0], ascending=False).round(3).to_markdown())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--n-labeled", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--scenarios", default=None)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summary", type=Path, nargs="+")
    parser.add_argument(
        "--candidates",
        default="",
        help="candidate names for --summary, separated by semicolons, since the "
        "names contain commas",
    )
    parser.add_argument("--classifiers", default="", help="e.g. hgb_X,lr_XZ")
    args = parser.parse_args(argv)
    if args.summary:
        summarize(args.summary, [c for c in args.candidates.split(";") if c])
        return 0
    if args.out is None:
        parser.error("--out is required unless --summary is given.")
    torch.set_num_threads(1)

    config = load_config(args.data_dir)
    specs = config["scenarios"]
    if args.scenarios:
        wanted = args.scenarios.split(",")
        specs = [s for s in specs if s["name"] in wanted]
    rows, skipped = [], []
    start_all = time.perf_counter()
    for spec in specs:
        scenario = load_scenario(spec, args.data_dir)
        settings = scenario_settings(config, spec)
        settings.pop("repetitions")
        settings["n_labeled"] = args.n_labeled
        for rep in range(args.repetitions):
            try:
                split = split_repetition(scenario, rep, **settings)
            except ValueError as error:
                skipped.append((spec["name"], rep, str(error)))
                print("SKIP", spec["name"], rep, error, flush=True)
                continue
            pipe = make_pipeline(
                StandardScaler(),
                ContrastiveAEDetector(score_method="hybrid", random_state=rep),
            )
            t0 = time.perf_counter()
            pipe.fit(split.X_train, split.y_train)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            library = -pipe.score_samples(split.X_test)
            score_s = time.perf_counter() - t0
            det = pipe[-1]
            timings = {}
            scores = candidate_scores(
                det,
                pipe[0].transform(split.X_train),
                split.y_train,
                pipe[0].transform(split.X_test),
                rep,
                timings,
                [k for k in args.classifiers.split(",") if k],
            )
            diff = float(np.max(np.abs(scores["hybrid"] - library)))
            if diff > 1e-5:
                print(f"WARNING hybrid mismatch {spec['name']} {rep}: {diff:.2e}")
            scores["library"] = library
            for name, s in scores.items():
                m = evaluate(split.role_test, s)
                rows.append(
                    {
                        "scenario": spec["name"],
                        "repetition": rep,
                        "n_labeled": args.n_labeled,
                        "candidate": name,
                        **m,
                    }
                )
            hybrid_ap = evaluate(split.role_test, scores["hybrid"])["ap"]
            print(
                f"{spec['name']:<26} rep={rep} fit={fit_s:.1f}s "
                f"score={score_s:.2f}s nbr={timings['neighbours']:.1f}s "
                f"clf={timings['classifiers']:.1f}s max|hybrid-lib|={diff:.1e} "
                f"hybrid ap={hybrid_ap:.3f} t={time.perf_counter() - start_all:.0f}s",
                flush=True,
            )
            pd.DataFrame(rows).to_csv(args.out, index=False)
    for s in skipped:
        print("skipped:", s)
    print(f"total {time.perf_counter() - start_all:.0f}s")


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())

"""Speed and memory of ContrastiveAEDetector against raw PyTorch and peers.

Every measurement runs in one process, side by side, on synthetic float32
data with 32 features and 10 labeled defects unless stated otherwise:

1. training overhead: ``fit`` against a hand-written PyTorch loop with the same
   network, loss, batches, epochs and data;
2. peers: time per epoch of PyOD's ``AutoEncoder`` and deepod's Deep SAD;
3. scoring throughput: ``decision_function`` against a raw forward pass under
   ``torch.inference_mode``, for the reconstruction and the latent score;
4. scaling: time per epoch against the number of rows, and time per step
   against the number of labeled defects;
5. memory: peak resident memory of a child process that scores rows read
   from a NumPy memmap, against a child that only loads the model;
6. threads: an epoch and scoring with one torch thread and with one thread
   per core, while other processes keep the other cores busy.

Usage, from the repository root::

    python benchmarks/speed.py           # full sizes
    python benchmarks/speed.py --quick   # small sizes, about a minute

The report goes to ``benchmarks/results/speed.md`` with the figure
``speed.png``. PyOD and deepod are optional: without them the peer section
says so. Install them as ``pip install pyod`` and
``pip install --no-deps deepod==0.4.1``.
"""

import argparse
import gc
import importlib.metadata
import json
import math
import os
import pickle
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "benchmarks" / "results"

if __package__ in (None, ""):
    # Run as a script: make ``benchmarks.peers`` and the working tree's
    # ``sk_cae`` importable without installing either.
    sys.path.insert(0, str(REPO_ROOT))

from sk_cae import AutoEncoder, ContrastiveAEDetector, ContrastiveLoss  # noqa: E402
from sk_cae._scores import ENCODE_CHUNK_SIZE  # noqa: E402

N_FEATURES = 32
N_DEFECTS = 10
BATCH_SIZE = 128
REPORTED_PACKAGES = ("torch", "skorch", "scikit-learn", "numpy", "pyod", "deepod")

# The detector's defaults, repeated here for the hand-written loop.
HIDDEN_LAYER_SIZES = (64, 32)
LATENT_DIM = 8
LOSS_PARAMS = {
    "contrast": "hinge",
    "space": "latent",
    "repulsion_weight": 0.1,
    "compactness_weight": 0.1,
    "margin": 1.0,
}
LEARNING_RATE = 1e-3

# Goals of each ratio; the report marks each one as met or missed.
TRAINING_RATIO_GOAL = 1.15
SCORING_RATIO_GOAL = 1.10
MEMORY_GOAL_MB = 300


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run."""

    train_rows: int
    train_epochs: int
    repetitions: int
    peer_rows: int
    score_rows: int
    scaling_rows: tuple
    defect_main_rows: int
    defect_counts: tuple
    memmap_rows: int
    contention_rows: int


FULL = Sizes(
    train_rows=100_000,
    train_epochs=10,
    repetitions=3,
    peer_rows=100_000,
    score_rows=1_000_000,
    scaling_rows=(10_000, 100_000, 1_000_000),
    defect_main_rows=20_000,
    defect_counts=(10, 100, 1_000, 10_000),
    memmap_rows=5_000_000,
    contention_rows=20_000,
)
QUICK = Sizes(
    train_rows=20_000,
    train_epochs=2,
    repetitions=2,
    peer_rows=20_000,
    score_rows=100_000,
    scaling_rows=(5_000, 20_000, 80_000),
    defect_main_rows=5_000,
    defect_counts=(10, 100, 1_000),
    memmap_rows=500_000,
    contention_rows=5_000,
)


# ----------------------------------------------------------------- data


def make_rows(n_rows, seed):
    """Return ``n_rows`` float32 rows near an 8-dimensional subspace."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(LATENT_DIM, N_FEATURES)) / math.sqrt(LATENT_DIM)
    rows = rng.normal(size=(n_rows, LATENT_DIM)) @ mixing
    rows += 0.3 * rng.normal(size=(n_rows, N_FEATURES))
    return rows.astype(np.float32)


def make_data(n_main, n_defects=N_DEFECTS, seed=0):
    """Return ``(X, y)``: main rows then shifted defect rows, ``y = 1`` for defects.

    The defects sit at random positions among the rows, so batches are built
    from the labels rather than from the order.
    """
    rng = np.random.default_rng(seed + 1)
    X = make_rows(n_main + n_defects, seed)
    y = np.zeros(n_main + n_defects, dtype=np.int64)
    defects = rng.choice(len(X), n_defects, replace=False)
    y[defects] = 1
    X[defects] += 2.0
    return X, y


def warm_up_rows(X, y, n_main):
    """Return the first ``n_main`` main-group rows and every defect."""
    index = np.r_[np.flatnonzero(y != 1)[:n_main], np.flatnonzero(y == 1)]
    return X[index], y[index]


# ----------------------------------------------------------- measurement


def load_average():
    """Return the 1-minute load average, or NaN where it is not available."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def timed(function, *args, **kwargs):
    """Return ``(seconds, result)`` of one call, measured by the wall clock."""
    gc.collect()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def raw_training_loop(X, y, epochs, seed=0, fused=False):
    """Train the detector's network with a minimal PyTorch loop; return the module.

    The same as the detector's training: ``AutoEncoder`` with the default
    sizes, ``ContrastiveLoss`` with the default weights, Adam, and batches of
    ``BATCH_SIZE`` shuffled main-group rows each followed by
    ``min(n_defects, rows in the batch)`` labeled defects, taken from a
    shuffled defect order in turn. Denormals are flushed as ``fit`` does.
    ``fused=True`` runs Adam's fused kernel, as the detector does.
    """
    torch.manual_seed(seed)
    module = AutoEncoder(N_FEATURES, HIDDEN_LAYER_SIZES, LATENT_DIM)
    criterion = ContrastiveLoss(**LOSS_PARAMS)
    options = {"fused": True} if fused else {}
    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE, **options)
    rows = torch.from_numpy(X)
    main = torch.from_numpy(np.flatnonzero(y != 1))
    defects = torch.from_numpy(np.flatnonzero(y == 1))
    n_defects = len(defects)

    was_flushed = torch.set_flush_denormal(True)
    module.train()
    for _ in range(epochs):
        main_order = main[torch.randperm(len(main))]
        defect_order = defects[torch.randperm(n_defects)]
        cursor = 0
        for start in range(0, len(main_order), BATCH_SIZE):
            batch = main_order[start : start + BATCH_SIZE]
            n_taken = min(n_defects, len(batch))
            positions = torch.arange(cursor, cursor + n_taken) % n_defects
            cursor = (cursor + n_taken) % n_defects
            index = torch.cat([batch, defect_order[positions]])
            is_defect = torch.zeros(len(index))
            is_defect[len(batch) :] = 1.0
            X_batch = rows[index]

            optimizer.zero_grad()
            loss = criterion(module(X_batch), is_defect, X_batch)
            loss.backward()
            optimizer.step()
    torch.set_flush_denormal(was_flushed)
    return module


def build_detector(**params):
    """Return a detector with the benchmark's batch size and a fixed seed."""
    settings = {"batch_size": BATCH_SIZE, "random_state": 0}
    settings.update(params)
    return ContrastiveAEDetector(**settings)


def epoch_seconds(detector):
    """Return the duration of each training epoch from the detector's history."""
    return [float(epoch["dur"]) for epoch in detector.net_.history]


def median(values):
    return float(np.median(values))


# ------------------------------------------------------------- sections


def measure_training_overhead(sizes, log):
    """Time ``fit`` against the raw loop, alternating the two."""
    X, y = make_data(sizes.train_rows)
    epochs = sizes.train_epochs
    load_before = load_average()

    # One short run of each first, so that imports and allocator warm-up are
    # not charged to either side.
    X_small, y_small = warm_up_rows(X, y, 2_000)
    raw_training_loop(X_small, y_small, 1)
    raw_training_loop(X_small, y_small, 1, fused=True)
    build_detector(max_epochs=1).fit(X_small, y_small)

    raw, raw_fused, fit, loop = [], [], [], []
    for repetition in range(sizes.repetitions):
        raw.append(timed(raw_training_loop, X, y, epochs)[0])
        raw_fused.append(timed(raw_training_loop, X, y, epochs, fused=True)[0])
        seconds, detector = timed(build_detector(max_epochs=epochs).fit, X, y)
        fit.append(seconds)
        loop.append(sum(epoch_seconds(detector)))
        log(
            f"training overhead, repetition {repetition + 1}: raw {raw[-1]:.2f} s, "
            f"raw with fused Adam {raw_fused[-1]:.2f} s, fit {fit[-1]:.2f} s "
            f"(epochs {loop[-1]:.2f} s)"
        )
    return {
        "rows": len(X),
        "epochs": epochs,
        "repetitions": sizes.repetitions,
        "raw_s": median(raw),
        "raw_fused_s": median(raw_fused),
        "fit_s": median(fit),
        "epochs_s": median(loop),
        "fit_ratio": median(fit) / median(raw),
        "loop_ratio": median(loop) / median(raw),
        "fused_fit_ratio": median(fit) / median(raw_fused),
        "fused_loop_ratio": median(loop) / median(raw_fused),
        "load": (load_before, load_average()),
    }


def _fit_cae(X, y, epochs):
    return build_detector(max_epochs=epochs).fit(X, y)


def _fit_pyod(X, y, epochs, batch_size=None):
    from pyod.models.auto_encoder import AutoEncoder as PyODAutoEncoder

    params = {"epoch_num": epochs, "device": "cpu", "verbose": 0, "random_state": 0}
    if batch_size is not None:
        params["batch_size"] = batch_size
    return PyODAutoEncoder(**params).fit(X)


def _fit_deepsad(X, y, epochs, batch_size=None):
    from benchmarks.peers.deepod_adapter import DeepODDetector

    params = {"epochs": epochs, "device": "cpu", "random_state": 0}
    if batch_size is not None:
        params["batch_size"] = batch_size
    return DeepODDetector("deepsad", **params).fit(X, y)


PEER_LABELS = {
    "sk_cae ContrastiveAEDetector": "sk_cae",
    "PyOD AutoEncoder": "PyOD\nAutoEncoder",
    "deepod DeepSAD": "deepod\nDeep SAD",
}
PEERS = {
    "sk_cae ContrastiveAEDetector": (_fit_cae, "sk_cae", BATCH_SIZE),
    "PyOD AutoEncoder": (_fit_pyod, "pyod", 32),
    "deepod DeepSAD": (_fit_deepsad, "deepod", 64),
}


def _peer_unavailable(package):
    if package == "sk_cae":
        return None
    try:
        if package == "pyod":
            import pyod.models.auto_encoder  # noqa: F401
        else:
            import benchmarks.peers.deepod_adapter  # noqa: F401
    except ImportError as error:
        return f"{package} cannot be imported ({error})"
    return None


def _per_epoch(fit, X, y, batch_size, repetitions=2):
    """Return ``(seconds per epoch, fixed seconds)`` from fits of 1 and 3 epochs.

    Each fit runs ``repetitions`` times and the fastest run counts, since
    other processes on the machine only ever slow a run down.
    """
    one = three = math.inf
    for _ in range(repetitions):
        one = min(one, timed(fit, X, y, 1, **batch_size)[0])
        three = min(three, timed(fit, X, y, 3, **batch_size)[0])
    per_epoch = (three - one) / 2
    return per_epoch, one - per_epoch


def measure_peers(sizes, log):
    """Time per epoch of each library, with its own and with a shared batch size."""
    X, y = make_data(sizes.peer_rows)
    load_before = load_average()
    results = {}
    for name, (fit, package, default_batch) in PEERS.items():
        reason = _peer_unavailable(package)
        if reason is not None:
            results[name] = {"unavailable": reason}
            log(f"peers: {name} skipped, {reason}")
            continue
        # Warm-up: the first fit of a library pays for its imports.
        fit(*warm_up_rows(X, y, 1_000), 1)
        row = {"default_batch": default_batch}
        per_epoch, fixed = _per_epoch(fit, X, y, {})
        row.update(default_epoch_s=per_epoch, default_fixed_s=fixed)
        if default_batch == BATCH_SIZE:
            row.update(shared_epoch_s=per_epoch, shared_fixed_s=fixed)
        else:
            per_epoch, fixed = _per_epoch(fit, X, y, {"batch_size": BATCH_SIZE})
            row.update(shared_epoch_s=per_epoch, shared_fixed_s=fixed)
        results[name] = row
        log(
            f"peers: {name}: {row['default_epoch_s']:.2f} s per epoch at batch "
            f"size {default_batch}, {row['shared_epoch_s']:.2f} s at {BATCH_SIZE}"
        )
    return {"rows": len(X), "peers": results, "load": (load_before, load_average())}


def raw_forward_scores(module, X, chunk_size=None):
    """Return the reconstruction error of each row from a raw forward pass."""
    rows = torch.from_numpy(X)
    with torch.inference_mode():
        if chunk_size is None:
            reconstruction, _ = module(rows)
            return ((reconstruction - rows) ** 2).mean(dim=1).numpy()
        errors = np.empty(len(X), dtype=np.float32)
        for start in range(0, len(X), chunk_size):
            chunk = rows[start : start + chunk_size]
            reconstruction, _ = module(chunk)
            errors[start : start + chunk_size] = (
                ((reconstruction - chunk) ** 2).mean(dim=1).numpy()
            )
        return errors


def _kdtree_ratio(scorer, codes):
    """Return ``d_main / (d_main + d_defect)`` of ``scorer`` with KDTree queries."""
    from sklearn.neighbors import KDTree

    d_main = KDTree(scorer.latent_main_).query(codes, k=scorer.n_neighbors)[0]
    d_main = d_main.mean(axis=1)
    d_defect = KDTree(scorer.latent_defects_).query(codes, k=1)[0][:, 0]
    return d_main / np.maximum(d_main + d_defect, np.finfo(np.float64).tiny)


def kdtree_scores(detector, X):
    """Return the neighbour score of ``detector`` computed with KDTree queries.

    scikit-learn's KDTree did the neighbour search before the torch search,
    so this measures the speed of the earlier implementation. It reads the
    detector's private reference rows and handles the ``"latent"`` and
    ``"hybrid"`` score methods.
    """
    from sk_cae._scores import encode_rows

    _, latent = encode_rows(detector.net_.module_, X)
    score = _kdtree_ratio(detector._latent_scorer, latent)
    if detector.score_method_ == "hybrid":
        score = (score + _kdtree_ratio(detector._input_scorer, X)) / 2
    return score


def measure_scoring(sizes, log):
    """Rows per second of ``decision_function`` against a raw forward pass."""
    X_fit, y_fit = make_data(sizes.train_rows)
    X = make_rows(sizes.score_rows, seed=1)
    load_before = load_average()
    detectors = {
        method: build_detector(max_epochs=2, score_method=method).fit(X_fit, y_fit)
        for method in ("reconstruction", "latent", "hybrid", "auto")
    }
    default_method = detectors["auto"].score_method_
    module = detectors["reconstruction"].net_.module_.eval()
    raw_whole = "raw forward, all rows at once"
    raw_chunked = f"raw forward, chunks of {ENCODE_CHUNK_SIZE} rows"

    # Warm-up on a slice, then the best of a few repetitions for the fast
    # paths and one run for the neighbour scores.
    fast_repetitions = 2 * sizes.repetitions
    raw_forward_scores(module, X[:20_000])
    for detector in detectors.values():
        detector.decision_function(X[:20_000])
    runs = {
        raw_whole: (lambda: raw_forward_scores(module, X), fast_repetitions),
        raw_chunked: (
            lambda: raw_forward_scores(module, X, ENCODE_CHUNK_SIZE),
            fast_repetitions,
        ),
        "decision_function, reconstruction score": (
            lambda: detectors["reconstruction"].decision_function(X),
            fast_repetitions,
        ),
        "decision_function, latent score": (
            lambda: detectors["latent"].decision_function(X),
            1,
        ),
        "decision_function, hybrid score": (
            lambda: detectors["hybrid"].decision_function(X),
            1,
        ),
        f"decision_function, default score ({default_method})": (
            lambda: detectors["auto"].decision_function(X),
            1,
        ),
    }
    seconds = {}
    for name, (function, repetitions) in runs.items():
        seconds[name] = min(timed(function)[0] for _ in range(repetitions))
        log(f"scoring: {name}: {seconds[name]:.3f} s")

    # KDTree queries in the 32-dimensional input space take hundreds of
    # microseconds per row, so the earlier implementation is timed on a slice
    # and scaled.
    n_kdtree = min(len(X), 20_000)
    for method in ("latent", "hybrid"):
        detector = detectors[method]
        elapsed = timed(kdtree_scores, detector, X[:n_kdtree])[0]
        name = f"{detector.score_method_} score with KDTree (earlier implementation)"
        seconds[name] = elapsed * len(X) / n_kdtree
        log(f"scoring: {name}: {elapsed:.3f} s for {n_kdtree} rows")

    raw_best = min(seconds[raw_whole], seconds[raw_chunked])
    return {
        "rows": len(X),
        "seconds": seconds,
        "kdtree_rows": n_kdtree,
        "fast_repetitions": fast_repetitions,
        "default_method": default_method,
        "reconstruction_ratio": (
            seconds["decision_function, reconstruction score"] / raw_best
        ),
        "latent_ratio": seconds["decision_function, latent score"] / raw_best,
        "default_ratio": (
            seconds[f"decision_function, default score ({default_method})"] / raw_best
        ),
        "load": (load_before, load_average()),
    }


def measure_scaling(sizes, log):
    """Time per epoch against rows, and time per step against labeled defects."""
    load_before = load_average()
    by_rows = []
    for n_rows in sizes.scaling_rows:
        X, y = make_data(n_rows)
        fit_seconds, detector = timed(build_detector(max_epochs=1).fit, X, y)
        epoch = epoch_seconds(detector)[0]
        by_rows.append({"rows": n_rows, "epoch_s": epoch, "fit_s": fit_seconds})
        log(f"scaling: {n_rows} rows, epoch {epoch:.2f} s, fit {fit_seconds:.2f} s")

    by_defects = []
    n_steps = math.ceil(sizes.defect_main_rows / BATCH_SIZE)
    for n_defects in sizes.defect_counts:
        X, y = make_data(sizes.defect_main_rows, n_defects=n_defects)
        fit_seconds, detector = timed(build_detector(max_epochs=3).fit, X, y)
        # The faster of epochs 2 and 3: the first one also warms up the
        # allocator, and other processes on the machine only ever slow a run.
        step = min(epoch_seconds(detector)[1:]) / n_steps
        by_defects.append(
            {"defects": n_defects, "step_ms": 1e3 * step, "fit_s": fit_seconds}
        )
        log(
            f"scaling: {n_defects} defects, step {1e3 * step:.3f} ms, "
            f"fit {fit_seconds:.2f} s"
        )
    return {
        "by_rows": by_rows,
        "by_defects": by_defects,
        "defect_main_rows": sizes.defect_main_rows,
        "load": (load_before, load_average()),
    }


def measure_contention(sizes, log):
    """Time an epoch and scoring with one thread and with one per core, while
    other processes keep every core but one busy."""
    load_before = load_average()
    n_cores = os.cpu_count() or 1
    X, y = make_data(sizes.contention_rows)
    X_score = make_rows(sizes.contention_rows, seed=2)
    build_detector(max_epochs=1).fit(*warm_up_rows(X, y, 1_000))

    original_threads = torch.get_num_threads()
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(n_cores - 1)
    ]
    rows = []
    try:
        for threads in sorted({1, n_cores}):
            torch.set_num_threads(threads)
            detector = build_detector(max_epochs=1).fit(X, y)
            epoch = epoch_seconds(detector)[0]
            scoring = timed(detector.decision_function, X_score)[0]
            rows.append({"threads": threads, "epoch_s": epoch, "score_s": scoring})
            log(
                f"contention: {threads} threads, epoch {epoch:.2f} s, scoring "
                f"{scoring:.2f} s"
            )
    finally:
        for process in busy:
            process.kill()
            process.wait()
        torch.set_num_threads(original_threads)
    return {
        "rows": len(X),
        "busy_processes": len(busy),
        "by_threads": rows,
        "load": (load_before, load_average()),
    }


# ---------------------------------------------------------------- memory


def _process_status():
    """Return the memory fields of ``/proc/self/status`` in MB (Linux only)."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) / 1024
    return values


class PeakSampler(threading.Thread):
    """Record the largest anonymous and file-backed resident memory every 10 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.peak_anon = self.peak_file = 0.0

    def run(self):
        while not self.stop_event.is_set():
            status = _process_status()
            self.peak_anon = max(self.peak_anon, status["RssAnon"])
            self.peak_file = max(self.peak_file, status["RssFile"])
            self.stop_event.wait(0.01)

    def stop(self):
        self.stop_event.set()
        self.join()


def memory_child(model_path, memmap_path, n_rows, mode, threads):
    """Run in a child process: load the model, score, print memory as JSON.

    ``mode="baseline"`` scores 100 rows only. Its memory is that of a process
    with the libraries imported and the model loaded. ``mode="score"`` scores
    every row of the memmap.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    with open(model_path, "rb") as file:
        detector = pickle.load(file)
    X = np.memmap(memmap_path, dtype=np.float32, mode="r", shape=(n_rows, N_FEATURES))
    detector.decision_function(np.array(X[:100]))
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    if mode == "score":
        scores = detector.decision_function(X)
        assert scores.shape == (n_rows,)
    seconds = time.perf_counter() - start
    sampler.stop()
    # VmHWM is the peak RSS of this program. getrusage's ru_maxrss is not
    # used: Linux carries it over from the parent through fork and exec, so
    # it reports the benchmark's own peak.
    print(
        json.dumps(
            {
                "max_rss_mb": _process_status()["VmHWM"],
                "peak_anon_mb": sampler.peak_anon,
                "peak_file_mb": sampler.peak_file,
                "seconds": seconds,
            }
        )
    )


def _run_memory_child(model_path, memmap_path, n_rows, mode, threads):
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        str(model_path),
        str(memmap_path),
        str(n_rows),
        mode,
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure_memory(sizes, log, threads):
    """Peak memory of scoring a memmap in a child process, against a baseline."""
    load_before = load_average()
    X_fit, y_fit = make_data(20_000)
    detector = build_detector(max_epochs=2).fit(X_fit, y_fit)
    with tempfile.TemporaryDirectory() as folder:
        model_path = Path(folder) / "model.pkl"
        memmap_path = Path(folder) / "rows.f32"
        with open(model_path, "wb") as file:
            pickle.dump(detector, file)
        # Written chunk by chunk, so this process never has the whole array
        # in memory.
        with open(memmap_path, "wb") as file:
            for start in range(0, sizes.memmap_rows, 500_000):
                n_chunk = min(500_000, sizes.memmap_rows - start)
                file.write(make_rows(n_chunk, seed=start).tobytes())
        baseline = _run_memory_child(
            model_path, memmap_path, sizes.memmap_rows, "baseline", threads
        )
        scoring = _run_memory_child(
            model_path, memmap_path, sizes.memmap_rows, "score", threads
        )
    gigabytes = sizes.memmap_rows * N_FEATURES * 4 / 2**30
    log(
        f"memory: baseline {baseline['max_rss_mb']:.0f} MB, scoring "
        f"{scoring['max_rss_mb']:.0f} MB peak RSS ({scoring['peak_anon_mb']:.0f} MB "
        f"anonymous) for a {gigabytes:.2f} GiB memmap"
    )
    return {
        "rows": sizes.memmap_rows,
        "file_gib": gigabytes,
        "baseline": baseline,
        "scoring": scoring,
        "load": (load_before, load_average()),
    }


# ---------------------------------------------------------------- report


def machine_description():
    """Describe the CPU, the cores, the torch threads and the accelerator."""
    from benchmarks.quality import cpu_name

    cpu = cpu_name()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}, {gpu}"
    )


def package_versions():
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _goal(value, goal):
    return "met" if value <= goal else "missed"


def _load(section):
    before, after = section["load"]
    return f"1-minute load average {before:.2f} before, {after:.2f} after."


def _training_markdown(training):
    rows = [
        ["raw PyTorch loop, default Adam", f"{training['raw_s']:.2f}", "1.000", ""],
        [
            "raw PyTorch loop, fused Adam",
            f"{training['raw_fused_s']:.2f}",
            f"{training['raw_fused_s'] / training['raw_s']:.3f}",
            "1.000",
        ],
        [
            "`ContrastiveAEDetector.fit`, whole",
            f"{training['fit_s']:.2f}",
            f"{training['fit_ratio']:.3f}",
            f"{training['fused_fit_ratio']:.3f}",
        ],
        [
            "`ContrastiveAEDetector.fit`, training epochs only",
            f"{training['epochs_s']:.2f}",
            f"{training['loop_ratio']:.3f}",
            f"{training['fused_loop_ratio']:.3f}",
        ],
    ]
    return "\n\n".join(
        [
            "## 1. Training overhead",
            f"{training['rows']} rows, {training['epochs']} epochs, batch size "
            f"{BATCH_SIZE}, median of {training['repetitions']} alternating "
            f"repetitions. The whole `fit` also validates the input, then encodes a "
            "sample of at most 10,000 main-group rows and the labeled defects "
            "and computes their scores for the threshold. "
            f"Goal: ratio of the whole fit <= {TRAINING_RATIO_GOAL} "
            f"({_goal(training['fit_ratio'], TRAINING_RATIO_GOAL)}).",
            _table(
                ["run", "seconds", "ratio to raw", "ratio to raw with fused Adam"],
                rows,
            ),
            _fixed_cost_markdown(training),
            "The detector runs Adam with `fused=True`, so the last column compares "
            "like with like; the ratio to the plain loop also counts the fused "
            "kernel's gain.",
            _load(training),
        ]
    )


def _fixed_cost_markdown(training):
    """Describe the part of ``fit`` that does not grow with the epochs."""
    fixed = training["fit_s"] - training["epochs_s"]
    raw_epoch = training["raw_s"] / training["epochs"]
    epoch = training["epochs_s"] / training["epochs"]
    at_100 = (100 * epoch + fixed) / (100 * raw_epoch)
    return (
        f"Outside the epochs, `fit` spent {fixed:.2f} s "
        f"({1e6 * fixed / training['rows']:.1f} µs per training row), mostly on "
        "encoding the reference sample and the labeled defects, on their "
        "neighbour scores, which set the threshold, and on the defect "
        "probability of the default score: six fits of its logistic "
        "regression (one final, five for out-of-fold probabilities) and one "
        "of its random forest. "
        "This part does not depend on the number of epochs: extrapolated to "
        f"the default `max_epochs=100`, the whole-fit ratio would be {at_100:.2f}."
    )


def _peers_markdown(peers):
    rows = []
    for name, row in peers["peers"].items():
        if "unavailable" in row:
            rows.append([name, "not run: " + row["unavailable"], "", ""])
            continue
        rows.append(
            [
                name,
                f"{row['default_epoch_s']:.2f} (batch size {row['default_batch']})",
                f"{row['shared_epoch_s']:.2f}",
                f"{row['default_fixed_s']:.2f}",
            ]
        )
    return "\n\n".join(
        [
            "## 2. Against peers",
            f"{peers['rows']} rows, each library with its other defaults. Seconds "
            "per epoch are the difference between fits of 3 epochs and of 1 "
            "epoch (each the faster of two runs), halved; the fixed part is the "
            "rest of the 1-epoch fit (for sk_cae: the neighbour scores of the "
            "reference sample for the threshold; for PyOD: its standardization "
            "and training scores; for Deep SAD: the hypersphere centre). PyOD's "
            "AutoEncoder has the widths of sk_cae's default network (64, 32) plus "
            "batch normalization and dropout. Deep SAD's network (100, 50, 128, "
            "no bias terms) is wider, but has three layers instead of six and a "
            "simpler loss.",
            _table(
                [
                    "library",
                    "s per epoch, own batch size",
                    f"s per epoch, batch size {BATCH_SIZE}",
                    "fixed s",
                ],
                rows,
            ),
            _load(peers),
        ]
    )


def _scoring_markdown(scoring):
    rows = [
        [name, f"{seconds:.3f}", f"{scoring['rows'] / seconds:,.0f}"]
        for name, seconds in scoring["seconds"].items()
    ]
    ratio = scoring["reconstruction_ratio"]
    return "\n\n".join(
        [
            "## 3. Scoring throughput",
            f"{scoring['rows']:,} rows of float32, best of "
            f"{scoring['fast_repetitions']} runs for the raw passes and the "
            "reconstruction score, one run for the "
            "neighbour scores. The KDTree rows are measured on "
            f"{scoring['kdtree_rows']:,} rows and scaled. Ratios are to the "
            "faster raw forward pass.",
            f"- reconstruction score: ratio {ratio:.3f} (goal <= "
            f"{SCORING_RATIO_GOAL}: {_goal(ratio, SCORING_RATIO_GOAL)})",
            f"- latent score: ratio {scoring['latent_ratio']:.1f}",
            f"- default score with labels ({scoring['default_method']}): ratio "
            f"{scoring['default_ratio']:.1f}",
            "The neighbour scores search, for every row, the nearest of up to "
            "10,000 main-group training rows and of the labeled defects: in the "
            "latent space for the latent score, and in the input space as well "
            "for the hybrid scores. That costs more than the forward pass itself.",
            _table(["run", "seconds", "rows per second"], rows),
            _load(scoring),
        ]
    )


def _scaling_markdown(scaling):
    rows = [
        [
            f"{row['rows']:,}",
            f"{row['epoch_s']:.3f}",
            f"{1e6 * row['epoch_s'] / row['rows']:.2f}",
            f"{row['fit_s']:.2f}",
        ]
        for row in scaling["by_rows"]
    ]
    defect_rows = [
        [f"{row['defects']:,}", f"{row['step_ms']:.3f}", f"{row['fit_s']:.2f}"]
        for row in scaling["by_defects"]
    ]
    return "\n\n".join(
        [
            "## 4. Scaling",
            "Time of one epoch against the number of rows (one-epoch fits; the fit "
            "time includes the neighbour scores of the reference sample for the "
            "threshold):",
            _table(["rows", "s per epoch", "µs per row", "fit s"], rows),
            f"Time per step against the number of labeled defects, with "
            f"{scaling['defect_main_rows']:,} main-group rows (the faster of "
            "epochs 2 and 3 of a three-epoch fit). Each step sees at most "
            f"{BATCH_SIZE} defects, so the time per step stops growing there:",
            _table(["labeled defects", "ms per step", "fit s"], defect_rows),
            _load(scaling),
        ]
    )


def _contention_markdown(contention):
    rows = [
        [row["threads"], f"{row['epoch_s']:.2f}", f"{row['score_s']:.2f}"]
        for row in contention["by_threads"]
    ]
    return "\n\n".join(
        [
            "## 6. Threads when the cores are shared",
            f"{contention['busy_processes']} other process(es) each keep one core "
            "busy, as a second job on the machine would. Training epoch and "
            f"default scoring of {contention['rows']:,} rows, with one torch "
            "thread and with one thread per core:",
            _table(["torch threads", "s per epoch", "s to score"], rows),
            _load(contention),
        ]
    )


def _memory_markdown(memory):
    baseline, scoring = memory["baseline"], memory["scoring"]
    extra_rss = scoring["max_rss_mb"] - baseline["max_rss_mb"]
    extra_anon = scoring["peak_anon_mb"] - baseline["peak_anon_mb"]
    rows = [
        [
            "model loaded, 100 rows scored",
            f"{baseline['max_rss_mb']:.0f}",
            f"{baseline['peak_anon_mb']:.0f}",
            f"{baseline['peak_file_mb']:.0f}",
        ],
        [
            f"{memory['rows']:,} memmap rows scored ({scoring['seconds']:.1f} s)",
            f"{scoring['max_rss_mb']:.0f}",
            f"{scoring['peak_anon_mb']:.0f}",
            f"{scoring['peak_file_mb']:.0f}",
        ],
    ]
    return "\n\n".join(
        [
            "## 5. Memory",
            f"`decision_function` of a default detector on a float32 memmap of "
            f"{memory['rows']:,} x {N_FEATURES} ({memory['file_gib']:.2f} GiB), in "
            "a child process, against a child that loads the same model and "
            "scores 100 rows. Anonymous memory is what the process allocates; "
            "file-backed memory is the memmap's pages that the process has read, "
            "which the kernel counts as resident. The detector releases the "
            "pages of each scored chunk of a read-only memmap, so they do not "
            "pile up to the size of the file.",
            _table(
                ["process", "peak RSS MB", "peak anonymous MB", "peak file MB"],
                rows,
            ),
            f"Scoring adds {extra_anon:.0f} MB of anonymous memory (goal "
            f"<= {MEMORY_GOAL_MB} MB: {_goal(extra_anon, MEMORY_GOAL_MB)}) and "
            f"{extra_rss:.0f} MB of peak RSS, file pages included "
            f"({_goal(extra_rss, MEMORY_GOAL_MB)}). The output alone takes "
            f"{memory['rows'] * 8 / 2**20:.0f} MB (float64 per row).",
            _load(memory),
        ]
    )


def write_report(results, out_dir, figure_name, command, seconds):
    versions = package_versions().items()
    versions = ", ".join(f"{name} {value}" for name, value in versions)
    parts = [
        "# Speed and memory benchmark",
        f"Command: `{command}`",
        f"Machine: {machine_description()}.",
        f"Packages: {versions}.",
        f"Total time: {seconds / 60:.1f} minutes.",
        f"![timings]({figure_name})",
        _training_markdown(results["training"]),
        _peers_markdown(results["peers"]),
        _scoring_markdown(results["scoring"]),
        _scaling_markdown(results["scaling"]),
        _memory_markdown(results["memory"]),
        _contention_markdown(results["contention"]),
    ]
    path = out_dir / "speed.md"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def plot(results, path):
    """Draw scaling, throughput and peer timings in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5))

    by_rows = results["scaling"]["by_rows"]
    rows = np.array([row["rows"] for row in by_rows], dtype=float)
    epoch = np.array([row["epoch_s"] for row in by_rows])
    axis = axes[0, 0]
    axis.loglog(rows, epoch, "o-", label="measured")
    axis.loglog(rows, epoch[0] * rows / rows[0], "--", label="linear from the first")
    axis.set(xlabel="training rows", ylabel="seconds per epoch")
    axis.set_title("Epoch time against rows")
    axis.legend()

    by_defects = results["scaling"]["by_defects"]
    axis = axes[0, 1]
    axis.semilogx(
        [row["defects"] for row in by_defects],
        [row["step_ms"] for row in by_defects],
        "o-",
    )
    axis.axvline(BATCH_SIZE, color="grey", linestyle=":", label="batch size")
    axis.set(xlabel="labeled defects", ylabel="ms per step", ylim=(0, None))
    axis.set_title("Step time against labeled defects")
    axis.legend()

    scoring = results["scoring"]
    names = list(scoring["seconds"])
    throughput = [scoring["rows"] / scoring["seconds"][name] for name in names]
    axis = axes[1, 0]
    axis.barh(range(len(names)), throughput)
    labels = [name.replace(", ", "\n").replace(" (", "\n(") for name in names]
    axis.set_yticks(range(len(names)), labels)
    axis.set_xscale("log")
    axis.set(xlabel="rows per second (log scale)")
    axis.set_title(f"Scoring {scoring['rows']:,} rows")
    axis.invert_yaxis()

    peers = {
        name: row
        for name, row in results["peers"]["peers"].items()
        if "unavailable" not in row
    }
    axis = axes[1, 1]
    positions = np.arange(len(peers))
    axis.bar(
        positions - 0.2,
        [row["default_epoch_s"] for row in peers.values()],
        0.4,
        label="own batch size",
    )
    axis.bar(
        positions + 0.2,
        [row["shared_epoch_s"] for row in peers.values()],
        0.4,
        label=f"batch size {BATCH_SIZE}",
    )
    axis.set_xticks(positions, [PEER_LABELS.get(name, name) for name in peers])
    axis.set(ylabel="seconds per epoch")
    axis.set_title(f"Training, {results['peers']['rows']:,} rows")
    axis.legend()

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, about a minute"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="folder of speed.md and speed.png (default: benchmarks/results)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of this process and of the memory child processes "
        "(default: torch's own default, one per core)",
    )
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    args = parse_args(argv)
    if args.memory_child:
        model_path, memmap_path, n_rows, mode = args.memory_child
        memory_child(model_path, memmap_path, int(n_rows), mode, args.threads)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    sizes = QUICK if args.quick else FULL
    command = shlex.join(["python", "benchmarks/speed.py", *argv])
    started = time.perf_counter()

    def log(message):
        elapsed = time.perf_counter() - started
        print(f"[{elapsed:6.0f} s] {message}", flush=True)

    log(f"machine: {machine_description()}; load {load_average():.2f}")
    results = {
        "training": measure_training_overhead(sizes, log),
        "peers": measure_peers(sizes, log),
        "scoring": measure_scoring(sizes, log),
        "scaling": measure_scaling(sizes, log),
        "memory": measure_memory(sizes, log, args.threads),
        "contention": measure_contention(sizes, log),
    }

    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "speed.png")
    report = write_report(
        results, args.out, "speed.png", command, time.perf_counter() - started
    )
    (args.out / "speed.json").write_text(json.dumps(results, indent=1))
    log(f"wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Functional checks of the fast paths: chunked scoring, the torch neighbour
search, the training iterator and the optimizer settings. No timings."""

import sys

import numpy as np
import pytest
import torch
from sklearn.neighbors import KDTree
from skorch.callbacks import Callback

from sk_cae import ContrastiveAEDetector
from sk_cae._module import AutoEncoder
from sk_cae._net import ContrastiveAENet, DefectBatchIterator
from sk_cae._scores import (
    ENCODE_CHUNK_SIZE,
    BruteForceKNN,
    LatentScorer,
    encode_rows,
    score_rows,
)
from sk_cae._validation import check_X


@pytest.mark.parametrize(
    "n_reference, n_dims, k",
    [(1, 3, 1), (2, 8, 2), (10, 8, 10), (63, 4, 5), (65, 4, 6), (700, 8, 5)],
)
def test_knn_matches_kdtree(n_reference, n_dims, k):
    """The brute-force search returns KDTree's distances, sorted."""
    rng = np.random.default_rng(0)
    reference = (rng.normal(size=(n_reference, n_dims)) * 3 + 5).astype(np.float32)
    queries = (rng.normal(size=(300, n_dims)) * 3 + 5).astype(np.float32)

    expected, _ = KDTree(reference).query(queries, k=k)
    distances = BruteForceKNN(reference).query(queries, k)

    assert distances.shape == (300, k)
    assert distances.dtype == np.float64
    np.testing.assert_allclose(distances, expected, rtol=1e-12, atol=1e-12)


def test_knn_finds_reference_rows_at_zero():
    """A query equal to a reference row has that row at distance 0, also when
    duplicates and rows far from the origin are present."""
    rng = np.random.default_rng(1)
    reference = rng.normal(1000.0, 1.0, size=(500, 8)).astype(np.float32)
    reference[1] = reference[0]

    distances = BruteForceKNN(reference).query(reference, 2)

    assert (distances[:, 0] == 0).all()
    assert distances[0, 1] == 0
    assert (distances[2:, 1] > 0).all()


def test_knn_spans_several_chunks(monkeypatch):
    """Queries split over many chunks give the same distances as one chunk."""
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(200, 4)).astype(np.float32)
    queries = rng.normal(size=(1000, 4)).astype(np.float32)
    whole = BruteForceKNN(reference).query(queries, 3)

    monkeypatch.setattr("sk_cae._scores.DISTANCE_CHUNK_ENTRIES", 3 * 256)
    chunked = BruteForceKNN(reference)

    assert chunked.chunk_rows == 3
    np.testing.assert_array_equal(chunked.query(queries, 3), whole)


def test_latent_scorer_skips_own_row():
    """Reference rows scored with ``in_main`` or ``in_defects`` skip their own
    entry, as a KDTree query of one more neighbour does."""
    rng = np.random.default_rng(3)
    main = rng.normal(size=(300, 8)).astype(np.float32)
    defects = rng.normal(3.0, 1.0, size=(6, 8)).astype(np.float32)
    scorer = LatentScorer(n_neighbors=5).fit(main, defects)

    d_main = KDTree(main).query(main, k=6)[0][:, 1:].mean(axis=1)
    d_defect = KDTree(defects).query(main, k=1)[0][:, 0]
    np.testing.assert_allclose(
        scorer.score(main, in_main=True), d_main / (d_main + d_defect), rtol=1e-12
    )

    d_main = KDTree(main).query(defects, k=5)[0].mean(axis=1)
    d_defect = KDTree(defects).query(defects, k=2)[0][:, 1]
    np.testing.assert_allclose(
        scorer.score(defects, in_defects=True),
        d_main / (d_main + d_defect),
        rtol=1e-12,
    )


def _module(n_features=5):
    torch.manual_seed(0)
    return AutoEncoder(n_features, (6,), 3)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_score_rows_matches_encode_rows(chunk_size):
    """Scoring chunk by chunk gives the errors and codes of ``encode_rows``,
    with no chunk longer than ``chunk_size``."""
    X = np.random.default_rng(4).normal(size=(50, 5)).astype(np.float32)
    module = _module()
    error, latent = encode_rows(module, X)
    lengths = []

    def score_chunk(chunk_error, chunk_latent, rows):
        lengths.append(len(chunk_error))
        assert chunk_latent.shape == (len(chunk_error), 3)
        assert rows.shape == (len(chunk_error), 5)
        return chunk_error + chunk_latent.sum(axis=1)

    scores = score_rows(module, X, score_chunk, chunk_size=chunk_size)

    assert max(lengths) == min(chunk_size, 50)
    assert sum(lengths) == 50
    np.testing.assert_allclose(scores, error + latent.sum(axis=1), rtol=1e-5)


def test_score_rows_converts_float64_chunks():
    """float64 rows are converted chunk by chunk and score like float32 rows."""
    X = np.random.default_rng(5).normal(size=(40, 5))
    module = _module()

    scores = score_rows(module, X, lambda error, *_: error, chunk_size=16)
    expected = score_rows(module, X.astype(np.float32), lambda error, *_: error)

    np.testing.assert_array_equal(scores, expected)


def test_score_rows_keeps_module_mode():
    """The module is scored in eval mode and left in the mode it had."""
    module = _module()
    module.train()
    X = np.zeros((4, 5), dtype=np.float32)
    modes = []

    score_rows(module, X, lambda error, *_: modes.append(module.training) or error)

    assert modes == [False]
    assert module.training


@pytest.fixture
def fitted(blobs):
    X, y = blobs
    return ContrastiveAEDetector(max_epochs=3, random_state=0).fit(X, y)


def test_score_samples_scores_in_chunks(fitted, monkeypatch):
    """score_samples hands at most ``ENCODE_CHUNK_SIZE`` rows at a time to the
    scoring rule and returns the same scores as scoring every row at once."""
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2 * ENCODE_CHUNK_SIZE + 5, 4)).astype(np.float32)
    error, latent = encode_rows(fitted.net_.module_, X)
    expected = -fitted._anomaly(error, latent, X)
    lengths = []
    anomaly = fitted._anomaly

    def recording_anomaly(chunk_error, chunk_latent, *args, **kwargs):
        lengths.append(len(chunk_error))
        return anomaly(chunk_error, chunk_latent, *args, **kwargs)

    monkeypatch.setattr(fitted, "_anomaly", recording_anomaly)
    scores = fitted.score_samples(X)

    assert lengths == [ENCODE_CHUNK_SIZE, ENCODE_CHUNK_SIZE, 5]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_score_samples_reads_memmap(fitted, tmp_path):
    """A read-only memmap scores like the same rows in memory."""
    X = np.random.default_rng(7).normal(size=(300, 4)).astype(np.float32)
    path = tmp_path / "rows.f32"
    X.tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=X.shape)

    np.testing.assert_array_equal(
        fitted.decision_function(mapped), fitted.decision_function(X)
    )


def _file_rss_kib():
    """Resident memory of this process that maps files (Linux only)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("/proc/self/status has no RssFile line")


@pytest.fixture
def plain(blobs):
    """A detector without labels, whose reconstruction score is fast."""
    return ContrastiveAEDetector(max_epochs=1, random_state=0).fit(blobs[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")
def test_scored_memmap_pages_leave_resident_memory(plain, tmp_path):
    """Scoring a 32 MiB read-only memmap chunk by chunk keeps far less than
    the file resident, and offset and strided views score correctly."""
    n_rows = 2**21
    path = tmp_path / "rows.f32"
    rng = np.random.default_rng(9)
    with open(path, "wb") as file:
        for _ in range(8):
            rng.normal(size=(n_rows // 8, 4)).astype(np.float32).tofile(file)
    mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, 4))
    plain.score_samples(mapped[:10])

    before = _file_rss_kib()
    check_X(plain, mapped[1000:], fitting=False)
    check_X(plain, np.asarray(mapped[1000:]), fitting=False)
    after_check = (_file_rss_kib() - before) / 1024
    scores = plain.score_samples(mapped[1000:])
    after_score = (_file_rss_kib() - before) / 1024

    for phase, added_mib in [("check", after_check), ("score", after_score)]:
        assert added_mib < 8, f"{phase}: {added_mib:.1f} MiB of 32 MiB resident"
    part = np.asarray(mapped[1000 : 1000 + ENCODE_CHUNK_SIZE + 7])
    np.testing.assert_array_equal(scores[: len(part)], plain.score_samples(part))
    np.testing.assert_array_equal(
        plain.score_samples(mapped[::3][:500]),
        plain.score_samples(np.asarray(mapped[::3][:500])),
    )


@pytest.mark.parametrize(
    "value, match",
    [
        (np.nan, "contains NaN at row 66000, column 2"),
        (-np.inf, "contains -inf at row 66000, column 2"),
        (1e39, "the largest is 1e\\+39 at row 66000, column 2"),
    ],
)
def test_bad_memmap_value_is_located(plain, tmp_path, value, match):
    rows = np.zeros((70_000, 4), dtype=np.float64)
    rows[66_000, 2] = value
    path = tmp_path / "rows.f64"
    rows.tofile(path)
    mapped = np.memmap(path, dtype=np.float64, mode="r", shape=rows.shape)
    with pytest.raises(ValueError, match=match):
        plain.score_samples(mapped)


def test_copy_on_write_memmap_pages_are_kept(plain, tmp_path):
    """A private (mode "c") mapping may hold the caller's changes, which
    releasing its pages would drop."""
    path = tmp_path / "rows.f32"
    np.zeros((100, 4), dtype=np.float32).tofile(path)
    mapped = np.memmap(path, dtype=np.float32, mode="c", shape=(100, 4))
    mapped[:] = 1.0
    plain.score_samples(mapped)
    np.testing.assert_array_equal(mapped, np.ones((100, 4), dtype=np.float32))


def test_score_samples_leaves_input_unchanged(fitted):
    X = np.random.default_rng(8).normal(size=(50, 4))
    original = X.copy()

    fitted.score_samples(X)
    fitted.score_samples(X.astype(np.float32))

    np.testing.assert_array_equal(X, original)


def test_iterator_appends_defects_to_every_batch():
    """Each batch is main rows then ``min(n_defects, batch rows)`` defects, and
    the defects are taken in turn."""
    X = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    is_defect = torch.zeros(10, dtype=torch.bool)
    is_defect[[2, 5, 9]] = True
    torch.manual_seed(0)

    batches = list(DefectBatchIterator(X, is_defect, batch_size=2, shuffle=True))

    assert len(batches) == 4
    seen_defects = []
    for rows, flags in batches:
        n_main = int((flags == 0).sum())
        assert flags.tolist() == [0.0] * n_main + [1.0] * (len(flags) - n_main)
        assert len(flags) - n_main == min(3, n_main)
        seen_defects += (rows[n_main:, 0] / 3).long().tolist()
    assert sorted(seen_defects[:3]) == [2, 5, 9]
    assert sorted(seen_defects[3:6]) == [2, 5, 9]


class RecordTrainingMode(Callback):
    """Record the module's mode after each batch's gradient."""

    def initialize(self):
        self.modes = []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.modes.append(net.module_.training)


def test_training_batches_run_in_train_mode(blobs):
    """Training batches run in train mode (dropout on) after every validation
    pass has switched the module to eval mode."""
    X, y = blobs
    recorder = RecordTrainingMode()
    detector = ContrastiveAEDetector(
        max_epochs=3,
        dropout=0.2,
        early_stopping=True,
        callbacks=[recorder],
        random_state=0,
    ).fit(X, y)

    n_train_batches = sum(
        "train_loss" in batch
        for epoch in detector.net_.history
        for batch in epoch["batches"]
    )
    assert len(recorder.modes) == n_train_batches
    assert all(recorder.modes)
    assert not detector.net_.module_.training


@pytest.mark.parametrize(
    "optimizer, fused", [("adam", True), ("adamw", True), ("sgd", False)]
)
def test_optimizer_fused_for_adam_only(blobs, optimizer, fused):
    X, y = blobs
    detector = ContrastiveAEDetector(max_epochs=1, optimizer=optimizer, random_state=0)
    detector.fit(X, y)

    assert bool(detector.net_.optimizer_.defaults.get("fused")) is fused


def test_explicit_optimizer_implementation_is_kept():
    """An implementation argument given to the net keeps fused off."""
    net = ContrastiveAENet(
        AutoEncoder,
        module__n_features=4,
        optimizer=torch.optim.Adam,
        optimizer__foreach=False,
    ).initialize()

    assert not net.optimizer_.defaults["fused"]
    assert net.optimizer_.defaults["foreach"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_and_scores_match_cpu(blobs):
    """Training and scoring run on CUDA, and scores agree loosely with the CPU."""
    X, y = blobs
    params = {"max_epochs": 20, "random_state": 0}
    cpu = ContrastiveAEDetector(**params).fit(X, y)
    cuda = ContrastiveAEDetector(device="cuda", **params).fit(X, y)

    assert next(cuda.net_.module_.parameters()).is_cuda
    scores_cpu = cpu.score_samples(X)
    scores_cuda = cuda.score_samples(X)
    assert scores_cuda.dtype == np.float64
    assert np.isfinite(scores_cuda).all()
    assert np.corrcoef(scores_cpu, scores_cuda)[0, 1] > 0.9
    assert (cuda.predict(X) == cpu.predict(X)).mean() > 0.95

"""Tests of the model files written by ``sk_cae.io``."""

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sk_cae import ContrastiveAEDetector
from sk_cae.io import (
    FORMAT_VERSION,
    ModelFileError,
    ModelVersionWarning,
    load,
    read_manifest,
    save,
)

pytest.importorskip("safetensors")


def _data():
    rng = np.random.default_rng(0)
    X = np.vstack(
        [rng.normal(size=(200, 4)), rng.normal(4.0, 0.5, size=(10, 4))]
    ).astype(np.float32)
    y = np.r_[np.zeros(200), np.ones(10)].astype(int)
    return X, y


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def detector(data):
    X, y = data
    return ContrastiveAEDetector(max_epochs=2, random_state=0).fit(X, y)


@pytest.fixture
def model_file(detector, tmp_path):
    path = tmp_path / "model.skcae"
    save(detector, path)
    return path


def _rewrite_member(path, name, transform):
    """Rewrite the zip at ``path`` with ``transform`` applied to ``name``."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[name] = transform(members[name])
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def _edit_manifest(path, edit):
    def transform(data):
        manifest = json.loads(data)
        edit(manifest)
        return json.dumps(manifest).encode()

    _rewrite_member(path, "manifest.json", transform)


def _set_digest(path, name, payload):
    """Record ``payload``'s SHA-256 digest for the member ``name``, as a
    crafted file would, so that the loader reads the member."""

    def same_digest(manifest):
        manifest["sha256"][name] = hashlib.sha256(payload).hexdigest()

    _edit_manifest(path, same_digest)


class _WritesMarker:
    """Unpickling this object writes a marker file: a stand-in for any code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "code from the file ran"))


@pytest.fixture
def malicious_pickle(tmp_path):
    """Return ``(payload, marker)``: a pickle that creates ``marker`` when
    unpickled, checked once on a separate marker so that the payload is live."""
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_WritesMarker(probe)))
    assert probe.exists()
    marker = tmp_path / "marker"
    return pickle.dumps(_WritesMarker(marker)), marker


# ------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "score_method", ["latent", "reconstruction", "combined", "hybrid"]
)
def test_round_trip_gives_identical_scores(data, tmp_path, score_method):
    X, y = data
    detector = ContrastiveAEDetector(
        max_epochs=2, score_method=score_method, random_state=0
    ).fit(X, y)
    save(detector, tmp_path / "model.skcae")
    loaded = load(tmp_path / "model.skcae")

    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )
    np.testing.assert_array_equal(loaded.predict(X), detector.predict(X))
    assert loaded.offset_ == detector.offset_
    assert loaded.score_method_ == score_method
    assert loaded.get_params() == detector.get_params()


def test_round_trip_restores_every_fitted_attribute(detector, model_file):
    loaded = load(model_file)
    assert sorted(vars(loaded)) == sorted(vars(detector))
    assert loaded.n_defects_ == detector.n_defects_
    assert loaded.n_features_in_ == detector.n_features_in_
    np.testing.assert_array_equal(loaded._reference_index, detector._reference_index)


def test_round_trip_keeps_feature_contributions(data, detector, model_file):
    X, _ = data
    loaded = load(model_file)
    np.testing.assert_allclose(
        loaded.feature_contributions(X[:5], n_steps=4),
        detector.feature_contributions(X[:5], n_steps=4),
        rtol=1e-6,
        atol=1e-7,
    )


def test_round_trip_without_defects(data, tmp_path):
    X, _ = data
    detector = ContrastiveAEDetector(
        max_epochs=2, score_method="latent", random_state=0
    ).fit(X)
    save(detector, tmp_path / "model.skcae")
    loaded = load(tmp_path / "model.skcae")
    assert loaded.n_defects_ == 0
    np.testing.assert_array_equal(loaded.score_samples(X), detector.score_samples(X))


def test_round_trip_keeps_epoch_history(detector, model_file):
    loaded = load(model_file)
    assert len(loaded.net_.history) == len(detector.net_.history) == 2
    assert loaded.net_.history[-1, "train_loss"] == pytest.approx(
        detector.net_.history[-1, "train_loss"]
    )
    assert loaded.net_.history[-1, "train_reconstruction"] == pytest.approx(
        detector.net_.history[-1, "train_reconstruction"]
    )


def test_round_trip_pipeline_with_column_transformer(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("skops")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "pressure": rng.normal(size=120),
            "temperature": rng.normal(size=120),
            "line": rng.choice(["north", "south", "east"], size=120),
        }
    )
    y = (rng.random(120) < 0.1).astype(int)
    columns = ColumnTransformer(
        [
            ("numeric", "passthrough", ["pressure", "temperature"]),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), ["line"]),
        ],
        sparse_threshold=0,
    )
    model = Pipeline(
        [
            ("columns", columns),
            ("scale", StandardScaler()),
            ("detector", ContrastiveAEDetector(max_epochs=2, random_state=0)),
        ]
    ).fit(frame, y)
    save(model, tmp_path / "pipeline.skcae")
    loaded = load(tmp_path / "pipeline.skcae")

    assert [name for name, _ in loaded.steps] == ["columns", "scale", "detector"]
    np.testing.assert_array_equal(
        loaded.decision_function(frame), model.decision_function(frame)
    )
    unseen = frame.assign(line="west")
    np.testing.assert_array_equal(
        loaded.decision_function(unseen), model.decision_function(unseen)
    )
    assert read_manifest(tmp_path / "pipeline.skcae")["estimator"] == "Pipeline"


def test_save_leaves_the_pipeline_unchanged(data, tmp_path):
    pytest.importorskip("skops")
    X, y = data
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=2, random_state=0)
    ).fit(X, y)
    detector = model.steps[-1][1]
    save(model, tmp_path / "pipeline.skcae")
    assert model.steps[-1][1] is detector
    loaded = load(tmp_path / "pipeline.skcae")
    np.testing.assert_array_equal(
        loaded.decision_function(X), model.decision_function(X)
    )


@pytest.mark.parametrize("library", ["pickle", "joblib"])
def test_pickle_and_joblib_round_trip(data, detector, tmp_path, library):
    X, _ = data
    path = tmp_path / "model.bin"
    if library == "pickle":
        path.write_bytes(pickle.dumps(detector))
        loaded = pickle.loads(path.read_bytes())
    else:
        joblib.dump(detector, path)
        loaded = joblib.load(path)
    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )


def test_save_and_load_file_objects(data, detector):
    X, _ = data
    buffer = io.BytesIO()
    save(detector, buffer)
    buffer.seek(0)
    loaded = load(buffer)
    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )


def test_load_keeps_global_torch_random_state(model_file):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    load(model_file)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_read_manifest_names_versions(model_file):
    manifest = read_manifest(model_file)
    assert manifest["format"] == "sk-cae-model"
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["created_by"]["sk_cae"]
    assert manifest["detector"]["params"]["max_epochs"] == 2
    assert manifest["detector"]["module"]["n_features"] == 4


# ------------------------------------------------------------- parameters


def test_save_stores_torch_optimizer_class(data, tmp_path):
    X, y = data
    detector = ContrastiveAEDetector(
        max_epochs=1, optimizer=torch.optim.RMSprop, random_state=0
    ).fit(X, y)
    save(detector, tmp_path / "model.skcae")
    assert load(tmp_path / "model.skcae").optimizer is torch.optim.RMSprop


def test_save_replaces_callbacks_with_warning(data, tmp_path):
    from skorch.callbacks import Callback

    X, y = data
    detector = ContrastiveAEDetector(
        max_epochs=1, callbacks=[Callback()], random_state=np.random.RandomState(0)
    ).fit(X, y)
    with pytest.warns(
        UserWarning, match="callbacks=.*stores callbacks=None, random_state=None"
    ):
        save(detector, tmp_path / "model.skcae")
    loaded = load(tmp_path / "model.skcae")
    assert loaded.callbacks is None
    assert loaded.random_state is None
    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )


@pytest.mark.parametrize(
    "model, message",
    [
        (StandardScaler(), "got StandardScaler"),
        (make_pipeline(StandardScaler()), "ends with StandardScaler"),
    ],
)
def test_save_rejects_other_estimators(model, message, tmp_path):
    with pytest.raises(TypeError, match=message):
        save(model, tmp_path / "model.skcae")
    assert not (tmp_path / "model.skcae").exists()


def test_save_rejects_unfitted_detector(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save(ContrastiveAEDetector(), tmp_path / "model.skcae")


def test_interrupted_save_keeps_previous_file(detector, model_file, monkeypatch):
    previous = model_file.read_bytes()

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("sk_cae.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save(detector, model_file)
    assert model_file.read_bytes() == previous
    assert sorted(p.name for p in model_file.parent.iterdir()) == ["model.skcae"]


# ------------------------------------------------------- rejected files


def test_load_rejects_pickle_without_running_it(malicious_pickle, tmp_path):
    payload, marker = malicious_pickle
    path = tmp_path / "model.skcae"
    path.write_bytes(payload)
    with pytest.raises(ModelFileError, match="not an sk_cae model file"):
        load(path)
    assert not marker.exists()


def test_load_rejects_torch_save_file(malicious_pickle, tmp_path):
    payload, marker = malicious_pickle
    path = tmp_path / "model.pt"
    # torch.save writes a zip archive whose data.pkl member is a pickle.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    with pytest.raises(ModelFileError, match="'manifest.json' is missing"):
        load(path)
    assert not marker.exists()


def test_load_rejects_pickled_arrays(malicious_pickle, model_file, tmp_path):
    payload, marker = malicious_pickle
    _rewrite_member(model_file, "detector.safetensors", lambda data: payload)
    with pytest.raises(ModelFileError, match="damaged or was modified"):
        load(model_file)

    _set_digest(model_file, "detector.safetensors", payload)
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load(model_file)
    assert not marker.exists()


def test_load_rejects_pickled_pipeline(malicious_pickle, data, tmp_path):
    pytest.importorskip("skops")
    payload, marker = malicious_pickle
    X, y = data
    path = tmp_path / "pipeline.skcae"
    save(
        make_pipeline(
            StandardScaler(), ContrastiveAEDetector(max_epochs=1, random_state=0)
        ).fit(X, y),
        path,
    )
    _rewrite_member(path, "pipeline.skops", lambda data: payload)
    _set_digest(path, "pipeline.skops", payload)
    with pytest.raises(ModelFileError, match="pipeline.skops cannot be read"):
        load(path)
    assert not marker.exists()


class _Doubler(TransformerMixin, BaseEstimator):
    """A custom transformer, which skops does not trust by default."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return 2 * np.asarray(X)


def test_load_rejects_untrusted_pipeline_step(data, tmp_path):
    pytest.importorskip("skops")
    X, y = data
    model = make_pipeline(
        _Doubler(), ContrastiveAEDetector(max_epochs=1, random_state=0)
    ).fit(X, y)
    path = tmp_path / "pipeline.skcae"
    save(model, path)
    with pytest.raises(ModelFileError, match="not trusted: .*_Doubler"):
        load(path)

    type_name = f"{_Doubler.__module__}._Doubler"
    loaded = load(path, trusted=[type_name])
    np.testing.assert_array_equal(
        loaded.decision_function(X), model.decision_function(X)
    )


def test_load_rejects_truncated_file(model_file):
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load(model_file)


def test_load_rejects_flipped_byte(model_file):
    def flip(data):
        data = bytearray(data)
        data[len(data) // 2] ^= 0xFF
        return bytes(data)

    _rewrite_member(model_file, "detector.safetensors", flip)
    with pytest.raises(ModelFileError, match="damaged or was modified"):
        load(model_file)


def test_load_rejects_foreign_zip(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "something"}))
    with pytest.raises(ModelFileError, match="does not declare format"):
        load(path)


def test_load_rejects_newer_format_naming_version(model_file):
    def newer(manifest):
        manifest["format_version"] = FORMAT_VERSION + 1
        manifest["created_by"]["sk_cae"] = "9.1.0"

    _edit_manifest(model_file, newer)
    with pytest.raises(ModelFileError, match="written by sk_cae 9.1.0 in model-file"):
        load(model_file)


def test_load_warns_for_other_library_version(data, detector, model_file):
    X, _ = data
    _edit_manifest(
        model_file, lambda manifest: manifest["created_by"].update(sk_cae="0.0.1")
    )
    with pytest.warns(ModelVersionWarning, match="sk_cae 0.0.1"):
        loaded = load(model_file)
    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m["detector"]["params"].update(new_option=1),
            r"parameters that this version does not have: \['new_option'\]",
        ),
        (
            lambda m: m["detector"]["fitted"].update(offset_="0"),
            "'offset_' is '0'; expected int or float",
        ),
        (
            lambda m: m["detector"]["fitted"].update(score_method_="magic"),
            "score_method_ is 'magic'",
        ),
        (
            lambda m: m["detector"]["params"].update(latent_dim=3),
            "does not match the one that the stored parameters build",
        ),
        (
            lambda m: m["detector"]["params"].update(optimizer={"torch.optim": "os"}),
            "is not a torch.optim optimizer",
        ),
    ],
)
def test_load_rejects_edited_manifest(model_file, edit, message):
    _edit_manifest(model_file, edit)
    with pytest.raises(ModelFileError, match=message) as error:
        load(model_file)
    assert "written by sk_cae" in str(error.value)


def test_load_falls_back_to_cpu_without_cuda(data, detector, model_file):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available, so no fallback happens")
    X, _ = data
    _edit_manifest(
        model_file,
        lambda manifest: manifest["detector"]["params"].update(device="cuda"),
    )
    with pytest.warns(UserWarning, match="loaded on the CPU"):
        loaded = load(model_file)
    assert loaded.device == "cpu"
    np.testing.assert_array_equal(
        loaded.decision_function(X), detector.decision_function(X)
    )


def test_missing_safetensors_names_extra(detector, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install 'sk-cae\[io\]'"):
        save(detector, tmp_path / "model.skcae")


def test_file_without_hybrid_logistic_entries_loads(data, tmp_path):
    """A hybrid model written before the local scale and the defect
    probability existed has neither entry, and loads as it was."""
    X, y = data
    hybrid = ContrastiveAEDetector(
        score_method="hybrid", max_epochs=2, random_state=0
    ).fit(X, y)
    path = tmp_path / "hybrid.skcae"
    save(hybrid, path)

    def older(manifest):
        del manifest["detector"]["defect_probability"]
        for entry in manifest["detector"]["neighbor_scorers"].values():
            del entry["local_scale"]

    _edit_manifest(path, older)
    loaded = load(path)
    assert loaded._defect_probability is None
    np.testing.assert_array_equal(
        loaded.decision_function(X), hybrid.decision_function(X)
    )


def test_default_model_keeps_defect_probability(data, detector, model_file):
    X, _ = data
    loaded = load(model_file)
    assert loaded.score_method_ == "hybrid_logistic"
    np.testing.assert_array_equal(
        loaded._defect_probability.coef_, detector._defect_probability.coef_
    )
    np.testing.assert_allclose(
        loaded.decision_function(X), detector.decision_function(X), rtol=1e-12
    )


def test_uncapped_local_scale_file_is_rejected(detector, model_file):
    """A file with a local scale but no local_factor entry comes from a build
    whose score differed, and loading it raises an error instead of scoring
    anew."""

    def uncapped(manifest):
        del manifest["detector"]["neighbor_scorers"]["input_scorer"]["local_factor"]

    _edit_manifest(model_file, uncapped)
    with pytest.raises(
        ModelFileError, match="'local_factor': 'capped'.*fit the detector"
    ):
        load(model_file)


def test_crafted_forest_arrays_are_rejected(model_file):
    """A file whose digests match but whose forest has a child before its
    parent, which could make the walk loop, is rejected on load."""
    from safetensors.numpy import load as load_arrays
    from safetensors.numpy import save as save_arrays

    with zipfile.ZipFile(model_file) as archive:
        arrays = load_arrays(archive.read("detector.safetensors"))
    arrays["defect_forest.left"][0] = 0
    payload = save_arrays(arrays)
    _rewrite_member(model_file, "detector.safetensors", lambda data: payload)
    _set_digest(model_file, "detector.safetensors", payload)
    with pytest.raises(ModelFileError, match="node 0 of the forest has the children"):
        load(model_file)

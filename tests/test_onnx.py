"""Tests of the ONNX export of the decision function."""

import io
import json
import sys

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from sk_cae import ContrastiveAEDetector
from sk_cae.io import export_onnx

# The float32 forward passes of torch and ONNX Runtime round differently, so
# the scores differ by more than float64 rounding.
RELATIVE_TOLERANCE = 1e-5


def _data():
    rng = np.random.default_rng(0)
    X = np.vstack(
        [rng.normal(2.0, 3.0, size=(200, 5)), rng.normal(12.0, 1.0, size=(10, 5))]
    ).astype(np.float32)
    y = np.r_[np.zeros(200), np.ones(10)].astype(int)
    X_new = rng.normal(2.0, 5.0, size=(300, 5)).astype(np.float32)
    return X, y, X_new


@pytest.fixture(scope="module")
def data():
    return _data()


def _run(model_bytes, X):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(
        model_bytes, providers=["CPUExecutionProvider"]
    )
    decision, label = session.run(None, {"X": X})
    return decision, label


def _export(model, **kwargs):
    pytest.importorskip("onnx")
    buffer = io.BytesIO()
    export_onnx(model, buffer, **kwargs)
    return buffer.getvalue()


def _assert_matches(model, model_bytes, X):
    decision, label = _run(model_bytes, X)
    expected = model.decision_function(X)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(
        decision, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale
    )
    np.testing.assert_array_equal(label, model.predict(X))


@pytest.mark.parametrize(
    "score_method", ["latent", "reconstruction", "combined", "hybrid"]
)
@pytest.mark.parametrize("with_scaler", [True, False])
def test_onnx_matches_decision_function(data, score_method, with_scaler):
    X, y, X_new = data
    detector = ContrastiveAEDetector(
        max_epochs=3, score_method=score_method, random_state=0
    )
    model = make_pipeline(StandardScaler(), detector) if with_scaler else detector
    model.fit(X if with_scaler else X / 4, y)
    X_new = X_new if with_scaler else X_new / 4
    _assert_matches(model, _export(model), X_new)


@pytest.mark.parametrize(
    "params",
    [
        {"activation": "gelu", "dropout": 0.2},
        {"activation": "elu", "hidden_layer_sizes": ()},
        {"activation": "leaky_relu", "hidden_layer_sizes": (16,)},
        {"activation": "tanh", "contrast": "squared"},
    ],
)
@pytest.mark.parametrize("opset", [13, 20])
def test_onnx_matches_every_architecture(data, params, opset):
    X, y, X_new = data
    model = make_pipeline(
        StandardScaler(),
        ContrastiveAEDetector(max_epochs=2, random_state=0, **params),
    ).fit(X, y)
    _assert_matches(model, _export(model, opset=opset), X_new)


def test_onnx_without_labeled_defects(data):
    X, _, X_new = data
    model = make_pipeline(
        StandardScaler(),
        ContrastiveAEDetector(max_epochs=2, score_method="latent", random_state=0),
    ).fit(X)
    _assert_matches(model, _export(model), X_new)


@pytest.mark.parametrize("n_rows", [1, 2000])
def test_onnx_accepts_any_batch_size(data, n_rows):
    X, y, _ = data
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=2, random_state=0)
    ).fit(X, y)
    X_new = np.random.default_rng(1).normal(size=(n_rows, 5)).astype(np.float32)
    _assert_matches(model, _export(model), X_new)


def test_onnx_of_loaded_model_matches(data, tmp_path):
    pytest.importorskip("safetensors")
    from sk_cae.io import load, save

    X, y, X_new = data
    detector = ContrastiveAEDetector(max_epochs=2, random_state=0).fit(X / 4, y)
    save(detector, tmp_path / "model.skcae")
    _assert_matches(detector, _export(load(tmp_path / "model.skcae")), X_new / 4)


def test_onnx_writes_file_with_metadata(data, tmp_path):
    onnx = pytest.importorskip("onnx")
    pd = pytest.importorskip("pandas")
    X, y, _ = data
    frame = pd.DataFrame(X, columns=[f"sensor_{i}" for i in range(5)])
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=2, random_state=0)
    ).fit(frame, y)
    export_onnx(model, tmp_path / "model.onnx")

    proto = onnx.load(tmp_path / "model.onnx")
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert json.loads(metadata["feature_names"]) == list(frame.columns)
    assert metadata["score_method"] == model[-1].score_method_
    assert float(metadata["offset"]) == model[-1].offset_
    assert [value.name for value in proto.graph.input] == ["X"]
    assert [value.name for value in proto.graph.output] == ["decision", "label"]


@pytest.mark.parametrize(
    "model, error, message",
    [
        (
            make_pipeline(MinMaxScaler(), ContrastiveAEDetector()),
            ValueError,
            r"this Pipeline has the steps \['MinMaxScaler'",
        ),
        (
            make_pipeline(
                ColumnTransformer([("keep", "passthrough", [0])]),
                ContrastiveAEDetector(),
            ),
            ValueError,
            "alone or after one StandardScaler",
        ),
        (StandardScaler(), TypeError, "got StandardScaler"),
        (ContrastiveAEDetector(), NotFittedError, "not fitted"),
    ],
)
def test_onnx_rejects_unsupported_models(model, error, message):
    pytest.importorskip("onnx")
    with pytest.raises(error, match=message):
        export_onnx(model, io.BytesIO())


@pytest.mark.parametrize("opset", [12, 999, "17"])
def test_onnx_rejects_bad_opset(opset):
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        export_onnx(ContrastiveAEDetector(), io.BytesIO(), opset=opset)


def test_missing_onnx_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'sk-cae\[onnx\]'"):
        export_onnx(ContrastiveAEDetector(), io.BytesIO())


def test_onnx_forest_branches_match_in_pipeline():
    """Raw float32 values within 64 float32 steps of the scaled forest
    thresholds take the same branch in the graph as in the Pipeline, whose
    StandardScaler computes in float32."""
    rng = np.random.default_rng(7)
    X = np.vstack(
        [rng.normal(size=(300, 5)), rng.normal(size=(12, 5)) + [2, -2, 0, 0, 0]]
    )
    X = (X * 3 + 10).astype(np.float32)
    y = np.r_[np.zeros(300), np.ones(12)]
    model = make_pipeline(
        StandardScaler(), ContrastiveAEDetector(max_epochs=2, random_state=0)
    ).fit(X, y)
    scaler, trees = model[0], model[-1]._defect_forest.trees_
    split = np.flatnonzero(trees["left"] != np.arange(len(trees["left"])))
    rows = []
    for node in split:
        feature = trees["feature"][node]
        centre = np.float32(
            trees["threshold"][node] * scaler.scale_[feature] + scaler.mean_[feature]
        )
        for raw in centre + np.arange(-64, 65) * np.spacing(centre):
            row = np.median(X, axis=0)
            row[feature] = raw
            rows.append(row)
    rows = np.asarray(rows, dtype=np.float32)
    decision, _ = _run(_export(model), rows)
    np.testing.assert_allclose(
        decision, model.decision_function(rows), rtol=0, atol=1e-6
    )

"""ONNX graph of a fitted detector's decision function.

The graph is written operator by operator with ``onnx.helper`` rather than
traced by ``torch.onnx.export``: in torch 2.13 the default exporter needs the
``onnxscript`` package and takes seconds for this small model, and the
TorchScript exporter (``dynamo=False``) is deprecated. The autoencoder is a
stack of ``Linear`` layers and element-wise activations, which map one to one
onto ONNX operators. A layer of any other type raises a ValueError.

``onnx`` is imported inside the functions, so importing this module is cheap.
"""

import json

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._detector import ContrastiveAEDetector
from ._model_state import scorer_reference

# Reduce* operators take their axes as an input instead of an attribute from
# these operator set versions on.
AXES_AS_INPUT = {"ReduceSum": 13, "ReduceMean": 18, "ReduceMin": 18}
MIN_OPSET = 13
# The domain of the tree ensemble operator, and its operator set version.
ONNX_ML = "ai.onnx.ml"
ONNX_ML_OPSET = 3
# The first operator set with a Gelu operator. Earlier ones get GELU spelled
# out as 0.5 x (1 + erf(x / sqrt(2))).
GELU_OPSET = 20


def _import_onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "Exporting to ONNX needs the onnx package: pip install 'sk-cae[onnx]'."
        ) from error
    return onnx


def _split_model(model):
    """Return ``(scaler or None, detector)`` of a model that can be exported."""
    if isinstance(model, ContrastiveAEDetector):
        return None, model
    if isinstance(model, Pipeline):
        steps = [step for _, step in model.steps if step != "passthrough"]
        if (
            len(steps) == 2
            and isinstance(steps[0], StandardScaler)
            and isinstance(steps[1], ContrastiveAEDetector)
        ):
            return steps[0], steps[1]
        if len(steps) == 1 and isinstance(steps[0], ContrastiveAEDetector):
            return None, steps[0]
        names = [type(step).__name__ for step in steps]
        raise ValueError(
            "export_onnx supports a ContrastiveAEDetector alone or after one "
            f"StandardScaler; this Pipeline has the steps {names}."
        )
    raise TypeError(
        "export_onnx takes a fitted ContrastiveAEDetector or a Pipeline of a "
        f"StandardScaler and one; got {type(model).__name__}."
    )


class _GraphBuilder:
    """Collects the nodes and constants of one ONNX graph."""

    def __init__(self, onnx, opset):
        self.onnx = onnx
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self.domains = set()
        self._count = 0

    def _name(self, hint):
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, array, hint="const"):
        name = self._name(hint)
        self.initializers.append(
            self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
        )
        return name

    def op(self, op_type, *inputs, hint=None, n_outputs=1, **attributes):
        outputs = [self._name(hint or op_type.lower()) for _ in range(n_outputs)]
        self.nodes.append(
            self.onnx.helper.make_node(op_type, list(inputs), outputs, **attributes)
        )
        return outputs[0] if n_outputs == 1 else outputs

    def reduce(self, op_type, value, axis, keepdims):
        if self.opset >= AXES_AS_INPUT[op_type]:
            axes = self.constant(np.array([axis], dtype=np.int64), "axes")
            return self.op(op_type, value, axes, keepdims=keepdims)
        return self.op(op_type, value, axes=[axis], keepdims=keepdims)

    def cast(self, value, dtype):
        to = self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        return self.op("Cast", value, to=to)


def _layer(graph, layer, value):
    """Append the operators of one autoencoder layer and return its output."""
    if isinstance(layer, nn.Linear):
        weight = layer.weight.detach().cpu().numpy().astype(np.float32)
        inputs = [value, graph.constant(weight, "weight")]
        if layer.bias is not None:
            bias = layer.bias.detach().cpu().numpy().astype(np.float32)
            inputs.append(graph.constant(bias, "bias"))
        return graph.op("Gemm", *inputs, transB=1)
    if isinstance(layer, nn.Dropout):
        return value
    if isinstance(layer, nn.ReLU):
        return graph.op("Relu", value)
    if isinstance(layer, nn.Tanh):
        return graph.op("Tanh", value)
    if isinstance(layer, nn.LeakyReLU):
        return graph.op("LeakyRelu", value, alpha=float(layer.negative_slope))
    if isinstance(layer, nn.ELU):
        return graph.op("Elu", value, alpha=float(layer.alpha))
    if isinstance(layer, nn.GELU):
        return _gelu(graph, layer, value)
    raise ValueError(
        f"export_onnx cannot write the autoencoder layer {layer!r}; supported "
        "layers are Linear, Dropout, ReLU, LeakyReLU, ELU, GELU and Tanh."
    )


def _gelu(graph, layer, value):
    if graph.opset >= GELU_OPSET:
        return graph.op("Gelu", value, approximate=layer.approximate)
    half = graph.constant(np.array(0.5, dtype=np.float32))
    one = graph.constant(np.array(1.0, dtype=np.float32))
    if layer.approximate == "tanh":
        # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as torch's GELU.
        cube = graph.op("Mul", value, graph.op("Mul", value, value))
        coefficient = graph.constant(np.array(0.044715, dtype=np.float32))
        inner = graph.op("Add", value, graph.op("Mul", cube, coefficient))
        factor = graph.constant(np.array(np.sqrt(2 / np.pi), dtype=np.float32))
        gate = graph.op("Tanh", graph.op("Mul", inner, factor))
    else:
        root_two = graph.constant(np.array(np.sqrt(2.0), dtype=np.float32))
        gate = graph.op("Erf", graph.op("Div", value, root_two))
    return graph.op("Mul", graph.op("Mul", value, half), graph.op("Add", gate, one))


def _sequential(graph, stack, value):
    for layer in stack:
        value = _layer(graph, layer, value)
    return value


def _squared_distances(graph, codes, reference):
    """Squared Euclidean distances, float64, from every code to every
    reference row: ``|z|^2 + |r|^2 - 2 z . r``, clipped at 0."""
    reference = np.asarray(reference, dtype=np.float64)
    code_norms = graph.reduce("ReduceSum", graph.op("Mul", codes, codes), 1, 1)
    reference_norms = graph.constant((reference**2).sum(axis=1)[None, :], "norms")
    cross = graph.op("MatMul", codes, graph.constant(reference.T, "reference"))
    two = graph.constant(np.array(2.0))
    squared = graph.op(
        "Sub",
        graph.op("Add", code_norms, reference_norms),
        graph.op("Mul", cross, two),
    )
    return graph.op("Max", squared, graph.constant(np.array(0.0)))


def _neighbor_score(graph, scorer, rows, local_factor=None):
    """Append the score of a fitted ``LatentScorer`` for float32 ``rows``:
    ``d_main / (d_main + d_defect)``, or ``d_main`` without labeled defects.
    ``d_main`` is multiplied by ``local_factor`` where given, or else by the
    scorer's own local factor where it has one. Return the score and the
    factor used (None for none)."""
    main, defects = scorer_reference(scorer)
    codes = graph.cast(rows, np.float64)

    k = min(int(scorer.n_neighbors), len(main))
    nearest, positions = graph.op(
        "TopK",
        _squared_distances(graph, codes, main),
        graph.constant(np.array([k], dtype=np.int64), "k"),
        n_outputs=2,
        axis=1,
        largest=0,
        sorted=1,
    )
    d_main = graph.reduce("ReduceMean", graph.op("Sqrt", nearest), 1, 0)
    tiny = graph.constant(np.array(np.finfo(np.float64).tiny))
    if local_factor is None and scorer.main_spacing_ is not None:
        spacing = graph.constant(np.asarray(scorer.main_spacing_), "spacing")
        local = graph.reduce(
            "ReduceMean", graph.op("Gather", spacing, positions, axis=0), 1, 0
        )
        typical = graph.constant(np.array(float(scorer.typical_spacing_)))
        local_factor = graph.op(
            "Min",
            graph.op("Div", typical, graph.op("Max", local, tiny)),
            graph.constant(np.array(1.0)),
        )
    if local_factor is not None:
        d_main = graph.op("Mul", d_main, local_factor)
    if len(defects) == 0:
        return d_main, local_factor

    squared = graph.reduce("ReduceMin", _squared_distances(graph, codes, defects), 1, 0)
    d_defect = graph.op("Sqrt", squared)
    total = graph.op("Max", graph.op("Add", d_main, d_defect), tiny)
    return graph.op("Div", d_main, total), local_factor


def _defect_probability(graph, model, rows):
    """Append ``expit(rows @ coef + intercept)`` in float64 for float32 ``rows``."""
    coef = graph.constant(np.asarray(model.coef_, dtype=np.float64), "coef")
    intercept = graph.constant(np.array(float(model.intercept_)), "intercept")
    logit = graph.op(
        "Add", graph.op("MatMul", graph.cast(rows, np.float64), coef), intercept
    )
    return graph.op("Sigmoid", logit)


def _forest_probability(graph, forest, rows):
    """Append the mean leaf value of a ``DefectForest`` over its trees, in
    float64, for float32 ``rows``: one ``TreeEnsembleRegressor`` of the
    ``ai.onnx.ml`` domain.

    The operator compares float32 values with float32 thresholds. A float32
    row is at most a float64 threshold exactly when it is at most the
    largest float32 not above that threshold, so the thresholds are rounded
    down, and every row takes the same branch as in scikit-learn.
    """
    trees = forest.trees_
    roots = trees["roots"]
    ends = np.r_[roots[1:], len(trees["feature"])]
    tree_of = np.repeat(np.arange(len(roots)), ends - roots)
    local = np.arange(len(tree_of)) - roots[tree_of]
    is_leaf = trees["left"] == np.arange(len(tree_of))
    threshold = trees["threshold"].astype(np.float32)
    above = threshold.astype(np.float64) > trees["threshold"]
    threshold[above] = np.nextafter(threshold[above], np.float32(-np.inf))
    threshold[is_leaf] = 0.0
    graph.domains.add(ONNX_ML)
    output = graph.op(
        "TreeEnsembleRegressor",
        rows,
        domain=ONNX_ML,
        n_targets=1,
        aggregate_function="AVERAGE",
        post_transform="NONE",
        nodes_treeids=tree_of.tolist(),
        nodes_nodeids=local.tolist(),
        nodes_featureids=np.where(is_leaf, 0, trees["feature"]).tolist(),
        nodes_values=threshold.tolist(),
        nodes_modes=["LEAF" if leaf else "BRANCH_LEQ" for leaf in is_leaf],
        nodes_truenodeids=np.where(is_leaf, 0, trees["left"] - roots[tree_of]).tolist(),
        nodes_falsenodeids=np.where(
            is_leaf, 0, trees["right"] - roots[tree_of]
        ).tolist(),
        nodes_missing_value_tracks_true=[0] * len(tree_of),
        target_treeids=tree_of[is_leaf].tolist(),
        target_nodeids=local[is_leaf].tolist(),
        target_ids=[0] * int(is_leaf.sum()),
        target_weights=trees["value"][is_leaf].astype(np.float32).tolist(),
    )
    flat = graph.op("Reshape", output, graph.constant(np.array([-1], dtype=np.int64)))
    return graph.cast(flat, np.float64)


def _robust_scale(graph, value, scale):
    center = graph.constant(np.array(float(scale.center_)))
    width = graph.constant(np.array(float(scale.scale_)))
    return graph.op("Div", graph.op("Sub", value, center), width)


def _scaled_input(graph, scaler, value):
    """Apply a fitted StandardScaler to the float32 rows in float32, as
    scikit-learn does for float32 input: it casts ``mean_`` and ``scale_`` to
    the rows' type first. The scaled rows are then the same to the last bit,
    which the random forest's thresholds need."""
    if scaler is None or not (scaler.with_mean or scaler.with_std):
        return value
    if scaler.with_mean:
        mean = graph.constant(np.asarray(scaler.mean_, dtype=np.float32), "mean")
        value = graph.op("Sub", value, mean)
    if scaler.with_std:
        std = graph.constant(np.asarray(scaler.scale_, dtype=np.float32), "scale")
        value = graph.op("Div", value, std)
    return value


def _build_graph(onnx, scaler, detector, opset):
    graph = _GraphBuilder(onnx, opset)
    module = detector.net_.module_
    rows = _scaled_input(graph, scaler, "X")
    latent = _sequential(graph, module.encoder, rows)
    reconstruction = _sequential(graph, module.decoder, latent)

    residual = graph.op("Sub", reconstruction, rows)
    error = graph.reduce("ReduceMean", graph.op("Mul", residual, residual), 1, 0)
    error = graph.cast(error, np.float64)
    method = detector.score_method_
    if method == "reconstruction":
        anomaly = error
    elif method == "latent":
        anomaly, _ = _neighbor_score(graph, detector._latent_scorer, latent)
    elif method in ("hybrid", "hybrid_logistic"):
        half = graph.constant(np.array(0.5))
        input_score, factor = _neighbor_score(graph, detector._input_scorer, rows)
        latent_score, _ = _neighbor_score(
            graph, detector._latent_scorer, latent, local_factor=factor
        )
        total = graph.op("Add", latent_score, input_score)
        anomaly = graph.op("Mul", total, half)
        if detector._defect_probability is not None:
            probability = _defect_probability(graph, detector._defect_probability, rows)
            if detector._defect_forest is not None:
                forest = _forest_probability(graph, detector._defect_forest, rows)
                probability = graph.op(
                    "Mul", graph.op("Add", probability, forest), half
                )
            anomaly = graph.op("Mul", graph.op("Add", anomaly, probability), half)
    elif method == "combined":
        anomaly = graph.op(
            "Add",
            _robust_scale(graph, error, detector._error_scale),
            _robust_scale(
                graph,
                _neighbor_score(graph, detector._latent_scorer, latent)[0],
                detector._latent_scale,
            ),
        )
    else:
        raise ValueError(f"export_onnx does not support score_method_={method!r}.")

    offset = graph.constant(np.array(float(detector.offset_)), "offset")
    graph.nodes.append(
        onnx.helper.make_node("Sub", [graph.op("Neg", anomaly), offset], ["decision"])
    )
    is_flagged = graph.op("Less", "decision", graph.constant(np.array(0.0)))
    graph.nodes.append(
        onnx.helper.make_node(
            "Where",
            [
                is_flagged,
                graph.constant(np.array(-1, dtype=np.int64)),
                graph.constant(np.array(1, dtype=np.int64)),
            ],
            ["label"],
        )
    )
    return graph


def export_decision_function(model, path, *, opset=17):
    """Write the ONNX graph of ``model.decision_function``; see
    :func:`sk_cae.io.export_onnx`."""
    onnx = _import_onnx()
    max_opset = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(
            f"opset must be an integer from {MIN_OPSET} to {max_opset} (the "
            f"newest that the installed onnx {onnx.__version__} knows); got "
            f"{opset!r}."
        )
    scaler, detector = _split_model(model)
    check_is_fitted(detector)
    if scaler is not None:
        check_is_fitted(scaler)
        if scaler.n_features_in_ != detector.n_features_in_:
            raise ValueError(
                f"The StandardScaler has {scaler.n_features_in_} features but "
                f"the detector has {detector.n_features_in_}."
            )

    graph = _build_graph(onnx, scaler, detector, opset)
    n_features = int(detector.n_features_in_)
    tensor = onnx.helper.make_tensor_value_info
    graph_proto = onnx.helper.make_graph(
        graph.nodes,
        "sk_cae_decision_function",
        [tensor("X", onnx.TensorProto.FLOAT, ["n_samples", n_features])],
        [
            tensor("decision", onnx.TensorProto.DOUBLE, ["n_samples"]),
            tensor("label", onnx.TensorProto.INT64, ["n_samples"]),
        ],
        initializer=graph.initializers,
    )
    model_proto = onnx.helper.make_model_gen_version(
        graph_proto,
        opset_imports=[onnx.helper.make_opsetid("", opset)]
        + [
            onnx.helper.make_opsetid(domain, ONNX_ML_OPSET)
            for domain in sorted(graph.domains)
        ],
        producer_name="sk_cae",
        doc_string=(
            "decision: decision_function of an sk_cae ContrastiveAEDetector "
            "(negative = defect); label: predict (-1 = defect, +1 = not flagged)."
        ),
    )
    _add_metadata(onnx, model_proto, scaler, detector)
    onnx.checker.check_model(model_proto)
    onnx.save_model(model_proto, path)
    return model_proto


def _add_metadata(onnx, model_proto, scaler, detector):
    from . import __version__

    names = getattr(scaler, "feature_names_in_", None)
    if names is None:
        names = getattr(detector, "feature_names_in_", None)
    metadata = {
        "sk_cae_version": __version__,
        "score_method": detector.score_method_,
        "offset": repr(float(detector.offset_)),
        "n_features": str(int(detector.n_features_in_)),
        "feature_names": json.dumps(None if names is None else list(map(str, names))),
        "includes_standard_scaler": json.dumps(scaler is not None),
    }
    onnx.helper.set_model_props(model_proto, metadata)

"""The fitted state of a ``ContrastiveAEDetector`` as JSON and arrays.

:func:`detector_state` splits a fitted detector into a JSON description and a
dictionary of NumPy arrays, and :func:`build_detector` rebuilds the detector
from them, checking every entry. ``sk_cae.io`` writes both into model files.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from ._defect_probability import FOREST_ARRAYS, DefectForest, DefectProbability
from ._detector import ContrastiveAEDetector
from ._scores import (
    SCORE_METHODS,
    LatentScorer,
    RobustScale,
)

# Name of the safetensors member of a model file, named in error messages.
ARRAYS = "detector.safetensors"

# Fitted attributes of the detector besides net_ and feature_names_in_,
# grouped by how they are written. A loaded detector has exactly these.
FITTED_SCALARS = {
    "offset_": (int, float),
    "n_defects_": int,
    "score_method_": str,
    "n_features_in_": int,
}
FITTED_SCALES = ("_error_scale", "_latent_scale")
# Neighbour scorers (LatentScorer instances, or None where the score method
# does not use one), each rebuilt from the reference rows it was fitted on.
NEIGHBOR_SCORERS = {"_latent_scorer": "latent_scorer", "_input_scorer": "input_scorer"}
# The rule of a scorer with a local scale: d_main is multiplied by min(1,
# typical / local spacing), and the input scorer's factor also applies to the
# latent scorer.
LOCAL_FACTOR_RULE = "capped"
# The logistic regression of the "hybrid_logistic" score, stored as its
# coefficients and intercept.
DEFECT_PROBABILITY = "defect_probability"
# The random forest that "hybrid_logistic" averages with the logistic
# regression, stored as the arrays of its trees (see _defect_probability.FOREST_ARRAYS).
DEFECT_FOREST = "defect_forest"
FITTED_ARRAYS = {
    "_reference_index": "reference_index",
    "_feature_baseline": "feature_baseline",
}
SCALE_ATTRIBUTES = ("center_", "scale_")
# Parameters that shape only training. When their value cannot be written
# safely (a callback object, an optimizer class outside torch.optim, a
# RandomState instance), the file stores the default instead: scores do not
# change, and a refit uses the default.
TRAINING_ONLY_PARAMS = ("callbacks", "optimizer", "random_state")


class ModelFileError(ValueError):
    """Raised when a file is not a readable sk_cae model file."""


def python_scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def _is_torch_optimizer(value):
    return (
        isinstance(value, type)
        and issubclass(value, torch.optim.Optimizer)
        and getattr(torch.optim, value.__name__, None) is value
    )


def _param_to_json(name, value):
    """Return the JSON form of one detector parameter.

    Raises TypeError for a value that JSON cannot describe safely.
    """
    value = python_scalar(value)
    if name == "hidden_layer_sizes":
        return [int(size) for size in np.asarray(value).reshape(-1)]
    if name == "device":
        return str(value)
    if name == "optimizer" and _is_torch_optimizer(value):
        return {"torch.optim": value.__name__}
    if name == "callbacks" and not value:
        return None
    if name != "callbacks" and (
        value is None or isinstance(value, str | bool | Integral | Real)
    ):
        return value
    raise TypeError(
        f"The detector parameter {name}={value!r} cannot be written to a model "
        "file; expected a number, a string, a boolean or None."
    )


def params_to_json(detector):
    """Return the detector's parameters in JSON form, and the training-only
    ones that were replaced by their defaults."""
    defaults = ContrastiveAEDetector().get_params()
    params, replaced = {}, {}
    for name, value in detector.get_params(deep=False).items():
        try:
            params[name] = _param_to_json(name, value)
        except TypeError:
            if name not in TRAINING_ONLY_PARAMS:
                raise
            params[name] = _param_to_json(name, defaults[name])
            replaced[name] = value
    return params, replaced


def _history_to_json(history):
    """Return the epoch entries of a skorch history without their batches."""
    epochs = []
    for entry in history:
        row = {}
        for key, value in entry.items():
            value = python_scalar(value)
            if key == "batches" or not isinstance(value, str | bool | Real | None):
                continue
            if isinstance(value, float) and not np.isfinite(value):
                value = None
            row[key] = value
        epochs.append(row)
    return epochs


def scorer_reference(scorer):
    """Return the main-group and defect rows that a ``LatentScorer``
    measures distances to."""
    main = np.asarray(scorer.latent_main_)
    defects = np.asarray(scorer.latent_defects_).reshape(-1, main.shape[1])
    return main, defects


def _module_params(net):
    """Return the autoencoder's constructor arguments in JSON form."""
    params = {
        key: python_scalar(value) for key, value in net.get_params_for("module").items()
    }
    params["hidden_layer_sizes"] = [int(size) for size in params["hidden_layer_sizes"]]
    return params


def detector_state(detector):
    """Return the JSON description and the arrays of a fitted detector."""
    check_is_fitted(detector)
    params, replaced = params_to_json(detector)
    fitted = {name: python_scalar(getattr(detector, name)) for name in FITTED_SCALARS}
    fitted["offset_"] = float(fitted["offset_"])
    if hasattr(detector, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(n) for n in detector.feature_names_in_]
    scales = {
        name: {
            key: float(getattr(getattr(detector, name), key))
            for key in SCALE_ATTRIBUTES
        }
        for name in FITTED_SCALES
    }
    net = detector.net_
    arrays = {
        f"module.{key}": tensor.detach().cpu().numpy()
        for key, tensor in net.module_.state_dict().items()
    }
    scorers = {}
    for attribute, key in NEIGHBOR_SCORERS.items():
        scorer = getattr(detector, attribute)
        scorers[key] = None
        if scorer is not None:
            main, defects = scorer_reference(scorer)
            arrays[f"{key}.main"] = main
            arrays[f"{key}.defects"] = defects
            scorers[key] = {
                "n_neighbors": int(scorer.n_neighbors),
                "local_scale": bool(scorer.local_scale),
            }
            if scorer.local_scale:
                scorers[key]["local_factor"] = LOCAL_FACTOR_RULE
    probability = detector._defect_probability
    if probability is not None:
        arrays[f"{DEFECT_PROBABILITY}.coef"] = np.asarray(probability.coef_)
        arrays[f"{DEFECT_PROBABILITY}.intercept"] = np.array([probability.intercept_])
    forest = detector._defect_forest
    if forest is not None:
        for name in FOREST_ARRAYS:
            arrays[f"{DEFECT_FOREST}.{name}"] = forest.trees_[name]
    for attribute, key in FITTED_ARRAYS.items():
        arrays[key] = np.asarray(getattr(detector, attribute))
    arrays = {key: np.ascontiguousarray(value) for key, value in arrays.items()}

    description = {
        "class": type(detector).__name__,
        "params": params,
        "fitted": fitted,
        "scales": scales,
        "neighbor_scorers": scorers,
        DEFECT_PROBABILITY: probability is not None,
        DEFECT_FOREST: forest is not None,
        "module": _module_params(net),
        "history": _history_to_json(net.history),
    }
    return description, arrays, replaced


def expect(mapping, key, types, where):
    """Return ``mapping[key]`` after checking that it exists and has a type
    of ``types`` (a bool passes only when ``bool`` is listed)."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(mapping, dict) or key not in mapping:
        raise ModelFileError(f"{where} has no entry {key!r}.")
    value = mapping[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        expected = " or ".join(t.__name__ for t in types)
        raise ModelFileError(f"{where}: {key!r} is {value!r}; expected {expected}.")
    return value


def _params_from_json(params):
    """Return detector parameters from their JSON form, checking each type."""
    defaults = ContrastiveAEDetector().get_params()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ModelFileError(
            "the file sets detector parameters that this version does not have: "
            f"{unknown}."
        )
    params = dict(params)
    sizes = params.get("hidden_layer_sizes", ())
    if not isinstance(sizes, list) or not all(
        isinstance(size, int) and not isinstance(size, bool) for size in sizes
    ):
        raise ModelFileError(
            f"hidden_layer_sizes is {sizes!r}; expected a list of integers."
        )
    params["hidden_layer_sizes"] = tuple(sizes)

    optimizer = params.get("optimizer")
    if isinstance(optimizer, dict):
        name = str(optimizer.get("torch.optim"))
        candidate = getattr(torch.optim, name, None)
        if not (
            isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer)
        ):
            raise ModelFileError(
                f"the optimizer {optimizer!r} is not a torch.optim optimizer."
            )
        params["optimizer"] = candidate

    for name, value in params.items():
        if name in ("hidden_layer_sizes", "optimizer") and not isinstance(
            value, dict | list
        ):
            continue
        if value is not None and not isinstance(value, str | bool | Integral | Real):
            raise ModelFileError(
                f"the detector parameter {name}={value!r} is not a number, a "
                "string, a boolean or null."
            )
    return params


def _resolve_device(params, device):
    if device is not None:
        return str(device)
    stored = str(params.get("device", "cpu"))
    if torch.device(stored).type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"The model was saved with device={stored!r}, but CUDA is not "
            "available here; it is loaded on the CPU.",
            UserWarning,
            stacklevel=4,
        )
        return "cpu"
    return stored


def build_detector(description, arrays, device):
    """Rebuild a fitted detector from its manifest entry and arrays."""
    where = "the detector entry of the manifest"
    if description.get("class") != ContrastiveAEDetector.__name__:
        raise ModelFileError(f"{where} describes {description.get('class')!r}.")
    params = _params_from_json(expect(description, "params", dict, where))
    params["device"] = _resolve_device(params, device)
    detector = ContrastiveAEDetector(**params)

    fitted = expect(description, "fitted", dict, where)
    for name, types in FITTED_SCALARS.items():
        setattr(detector, name, expect(fitted, name, types, where))
    detector.offset_ = float(detector.offset_)
    if detector.score_method_ not in SCORE_METHODS:
        raise ModelFileError(
            f"{where}: score_method_ is {detector.score_method_!r}; expected one "
            f"of {list(SCORE_METHODS)}."
        )
    if "feature_names_in_" in fitted:
        names = expect(fitted, "feature_names_in_", list, where)
        if len(names) != detector.n_features_in_ or not all(
            isinstance(name, str) for name in names
        ):
            raise ModelFileError(
                f"{where}: feature_names_in_ must hold n_features_in_="
                f"{detector.n_features_in_} strings; got {len(names)} entries."
            )
        detector.feature_names_in_ = np.asarray(names, dtype=object)

    scales = expect(description, "scales", dict, where)
    for name in FITTED_SCALES:
        entry = expect(scales, name, dict, where)
        scale = RobustScale()
        for key in SCALE_ATTRIBUTES:
            setattr(scale, key, float(expect(entry, key, (int, float), where)))
        setattr(detector, name, scale)

    scorers = expect(description, "neighbor_scorers", dict, where)
    for attribute, key in NEIGHBOR_SCORERS.items():
        setattr(detector, attribute, _rebuild_scorer(scorers, key, arrays, where))
    # Files written before the hybrid_logistic score, or before its forest,
    # have no such entry.
    stored = {
        key: key in description and expect(description, key, bool, where)
        for key in (DEFECT_PROBABILITY, DEFECT_FOREST)
    }
    n_features = detector.n_features_in_
    detector._defect_probability = _rebuild_probability(
        stored[DEFECT_PROBABILITY], arrays, n_features, where
    )
    detector._defect_forest = _rebuild_forest(
        stored[DEFECT_FOREST], arrays, n_features, where
    )
    missing = sorted(set(FITTED_ARRAYS.values()) - set(arrays))
    if missing:
        raise ModelFileError(f"{ARRAYS} lacks the arrays {missing}.")
    for attribute, key in FITTED_ARRAYS.items():
        setattr(detector, attribute, np.array(arrays[key]))

    detector.net_ = _rebuild_net(detector, description, arrays)
    return detector


def _rebuild_scorer(scorers, key, arrays, where):
    """Return the LatentScorer stored under ``key``, or None."""
    entry = expect(scorers, key, (dict, type(None)), where)
    if entry is None:
        return None
    n_neighbors = expect(entry, "n_neighbors", int, where)
    # Files written before the local scale existed have no such entry.
    local_scale = "local_scale" in entry and expect(entry, "local_scale", bool, where)
    if local_scale and entry.get("local_factor") != LOCAL_FACTOR_RULE:
        raise ModelFileError(
            f"{where}: {key!r} uses a local scale but has no entry "
            f"'local_factor': {LOCAL_FACTOR_RULE!r}. Development builds before "
            "0.1.0 wrote such files with an uncapped local scale, which scores "
            "differently; fit the detector again and save it."
        )
    names = [f"{key}.main", f"{key}.defects"]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelFileError(f"{ARRAYS} lacks the arrays {missing}.")
    main, defects = (np.array(arrays[name]) for name in names)
    if main.ndim != 2 or len(main) == 0 or defects.ndim != 2:
        raise ModelFileError(
            f"{where}: the reference rows of {key} have the shapes {main.shape} "
            f"and {defects.shape}; expected two 2-dimensional arrays with at "
            "least one main-group row."
        )
    return LatentScorer(n_neighbors, local_scale=local_scale).fit(main, defects)


def _rebuild_probability(stored, arrays, n_features, where):
    """Return the stored DefectProbability, or None when ``stored`` is False."""
    if not stored:
        return None
    names = [f"{DEFECT_PROBABILITY}.coef", f"{DEFECT_PROBABILITY}.intercept"]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelFileError(f"{ARRAYS} lacks the arrays {missing}.")
    coef, intercept = (np.array(arrays[name], dtype=np.float64) for name in names)
    if coef.shape != (n_features,) or intercept.shape != (1,):
        raise ModelFileError(
            f"{where}: the defect probability has coefficients of shape "
            f"{coef.shape} and an intercept of shape {intercept.shape}; expected "
            f"({n_features},) and (1,)."
        )
    probability = DefectProbability()
    probability.coef_, probability.intercept_ = coef, float(intercept[0])
    return probability


def _rebuild_forest(stored, arrays, n_features, where):
    """Return the stored DefectForest, or None when ``stored`` is False."""
    if not stored:
        return None
    names = [f"{DEFECT_FOREST}.{name}" for name in FOREST_ARRAYS]
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ModelFileError(f"{ARRAYS} lacks the arrays {missing}.")
    trees = {}
    for name in FOREST_ARRAYS:
        value = np.array(arrays[f"{DEFECT_FOREST}.{name}"])
        kind = "f" if name in ("threshold", "value") else "i"
        if value.dtype.kind != kind or value.ndim != 1:
            raise ModelFileError(
                f"{where}: the forest array {name!r} has the type {value.dtype} "
                f"and {value.ndim} dimensions; expected a 1-dimensional "
                f"{'float' if kind == 'f' else 'integer'} array."
            )
        trees[name] = value.astype(np.float64 if kind == "f" else np.int64)
    try:
        return DefectForest.from_arrays(trees, n_features)
    except ValueError as error:
        raise ModelFileError(f"{where}: {error}") from error


def _rebuild_net(detector, description, arrays):
    """Rebuild the skorch net with the stored weights and epoch history."""
    where = "the detector entry of the manifest"
    n_defects = int(detector.n_defects_)
    # Only the count of labeled defects matters to _build_net: it decides
    # whether an early-stopping split would be stratified in a refit.
    is_defect = np.arange(n_defects + 2) < n_defects
    net = detector._build_net(
        detector.n_features_in_,
        detector._check_hidden_layer_sizes(),
        is_defect,
        0,
    )
    # initialize() draws random weights, which must not move the caller's
    # torch random state.
    with torch.random.fork_rng(devices=[]):
        net.initialize()

    stored_module = expect(description, "module", dict, where)
    built_module = _module_params(net)
    if stored_module != built_module:
        raise ModelFileError(
            f"the stored autoencoder {stored_module} does not match the one that "
            f"the stored parameters build, {built_module}."
        )

    state = {
        key.removeprefix("module."): torch.from_numpy(np.array(value))
        for key, value in arrays.items()
        if key.startswith("module.")
    }
    try:
        net.module_.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(
            f"the stored weights do not fit the autoencoder: {error}"
        ) from error

    history = expect(description, "history", list, where)
    if not all(isinstance(entry, dict) for entry in history):
        raise ModelFileError(f"{where}: every history entry must be an object.")
    net.history = History([dict(entry, batches=[]) for entry in history])
    return net

"""Model files that load without unpickling: :func:`save` and :func:`load`.

A model file is a zip archive with three kinds of members:

``manifest.json``
    The format name and version, the versions of the packages that wrote the
    file, the detector's parameters and fitted scalars, its training history
    (one entry per epoch) and the SHA-256 digest of every other member.

``detector.safetensors``
    Every array of the detector in the safetensors format: the autoencoder's
    weights (``module.<name>``), the latent codes that the latent score
    measures distances to (``latent_scorer.main`` and
    ``latent_scorer.defects``; ``input_scorer.*`` likewise for the input rows
    of the hybrid scores), the logistic regression of the
    ``"hybrid_logistic"`` score (``defect_probability.coef`` and
    ``.intercept``), and private arrays such as ``reference_index``.

``pipeline.skops``
    Only for a ``Pipeline``: the pipeline with the detector's step replaced by
    ``"passthrough"``, written by ``skops.io``. The detector is put back on
    loading.

Loading parses JSON, safetensors and skops data only, so a file cannot run
code, and skops rebuilds only the types it trusts (scikit-learn's estimators
by default). See ``docs/deployment.md`` for the full description.
"""

import copy
import hashlib
import json
import os
import platform
import secrets
import warnings
import zipfile

import numpy as np
import sklearn
import skorch
import torch
from sklearn.pipeline import Pipeline

from ._detector import ContrastiveAEDetector
from ._model_state import (
    ARRAYS,
    ModelFileError,
    build_detector,
    detector_state,
    expect,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileError",
    "ModelVersionWarning",
    "export_onnx",
    "load",
    "read_manifest",
    "save",
]

FORMAT_NAME = "sk-cae-model"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
PIPELINE = "pipeline.skops"

# Upper bound of a manifest's size. save() writes far smaller ones, and the
# cap keeps a crafted archive from exhausting memory before it is rejected.
MAX_MANIFEST_BYTES = 64 * 2**20

# Types that skops does not trust by default but that fitted scikit-learn
# preprocessing contains, such as OneHotEncoder's dtype parameter.
SKOPS_TRUSTED_TYPES = ("numpy.dtype",)


class ModelVersionWarning(UserWarning):
    """Warning that a model file was written by other package versions."""


# ---------------------------------------------------------------- helpers


def _import_safetensors():
    try:
        from safetensors import numpy as safetensors_numpy
    except ImportError as error:
        raise ImportError(
            "sk_cae model files store arrays in the safetensors format, which "
            "needs the safetensors package: pip install 'sk-cae[io]'."
        ) from error
    return safetensors_numpy


def _import_skops():
    try:
        import skops.io as skops_io
    except ImportError as error:
        raise ImportError(
            "Saving or loading a Pipeline needs the skops package for its "
            "scikit-learn steps: pip install 'sk-cae[io]'."
        ) from error
    return skops_io


def _package_versions(with_skops):
    import safetensors

    from . import __version__

    versions = {
        "sk_cae": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }
    if with_skops:
        import skops

        versions["skops"] = skops.__version__
    return versions


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _split_model(model):
    """Return ``(detector, pipeline, step_name)`` of what :func:`save` accepts."""
    if isinstance(model, ContrastiveAEDetector):
        return model, None, None
    if isinstance(model, Pipeline) and len(model.steps) > 0:
        name, last = model.steps[-1]
        if isinstance(last, ContrastiveAEDetector):
            return last, model, name
    if isinstance(model, Pipeline):
        last = type(model.steps[-1][1]).__name__ if model.steps else "nothing"
        raise TypeError(
            "save writes a Pipeline only when its last step is a "
            f"ContrastiveAEDetector; this Pipeline ends with {last}."
        )
    hint = ""
    if hasattr(model, "best_estimator_"):
        hint = " For a search object, save its best_estimator_."
    raise TypeError(
        "save writes a fitted ContrastiveAEDetector or a Pipeline ending in one; "
        f"got {type(model).__name__}.{hint}"
    )


# ------------------------------------------------------------------- save


def save(model, path):
    """Write a fitted detector, or a Pipeline ending in one, to a model file.

    The file is a zip archive of JSON, safetensors and (for a Pipeline) skops
    members, described in the module docstring; :func:`load` reads it back
    without unpickling anything. Parameters that shape only training and
    cannot be written safely (callback objects, an optimizer class outside
    ``torch.optim``, a ``RandomState`` instance) are stored as their defaults,
    with a warning.

    Parameters
    ----------
    model : ContrastiveAEDetector or Pipeline
        A fitted detector, or a fitted ``Pipeline`` whose last step is one.
        The other steps are written with ``skops.io``.

    path : str, path-like or binary file object
        Where to write. A path is written to a temporary file first and then
        renamed, so an interrupted save never leaves a truncated model file.

    Returns
    -------
    manifest : dict
        The manifest written to the file.
    """
    safetensors_numpy = _import_safetensors()
    detector, pipeline, step_name = _split_model(model)
    description, arrays, replaced = detector_state(detector)
    if replaced:
        original = ", ".join(f"{name}={value!r}" for name, value in replaced.items())
        stored = ", ".join(
            f"{name}={description['params'][name]!r}" for name in replaced
        )
        warnings.warn(
            f"{original} cannot be written to a model file, which stores {stored} "
            "instead. Scores are unchanged; set these parameters again before "
            "refitting the loaded detector.",
            UserWarning,
            stacklevel=2,
        )

    members = {ARRAYS: safetensors_numpy.save(arrays)}
    if pipeline is not None:
        skops_io = _import_skops()
        outer = copy.copy(pipeline)
        outer.steps = [
            (name, "passthrough" if name == step_name else step)
            for name, step in pipeline.steps
        ]
        members[PIPELINE] = skops_io.dumps(outer)

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": _package_versions(with_skops=pipeline is not None),
        "estimator": "Pipeline" if pipeline is not None else "ContrastiveAEDetector",
        "pipeline": None
        if pipeline is None
        else {"file": PIPELINE, "detector_step": step_name},
        "detector": description,
        "arrays": ARRAYS,
        "sha256": {name: _sha256(data) for name, data in members.items()},
    }
    members[MANIFEST] = json.dumps(manifest, indent=1, allow_nan=False).encode()
    _write_archive(members, path)
    return manifest


def _zip_members(file, members):
    with zipfile.ZipFile(file, "w") as archive:
        for name, data in members.items():
            # A fixed date and ordinary permissions, so that extracting the
            # archive by hand gives readable files.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)


def _write_archive(members, path):
    if not isinstance(path, str | os.PathLike):
        _zip_members(path, members)
        return
    path = os.fspath(path)
    # The temporary file is created with open() rather than mkstemp(), so that
    # the model file gets the permissions of the process's umask.
    temporary = f"{path}.{secrets.token_hex(6)}.partial"
    try:
        with open(temporary, "xb") as file:
            _zip_members(file, members)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


# ------------------------------------------------------------------- load


def _describe(path):
    if isinstance(path, str | os.PathLike):
        return repr(os.fspath(path))
    return "the file object"


def _open_archive(path):
    try:
        return zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelFileError(
            f"{_describe(path)} is not an sk_cae model file: it is not a zip "
            f"archive, or it is truncated ({error})."
        ) from error


def _read_member(archive, name, path, max_bytes=None):
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(
            f"{_describe(path)} is not a complete sk_cae model file: the member "
            f"{name!r} is missing (members: {archive.namelist()[:10]})."
        ) from None
    if max_bytes is not None and info.file_size > max_bytes:
        raise ModelFileError(
            f"{_describe(path)} is not an sk_cae model file: {name!r} has "
            f"{info.file_size} bytes, more than the {max_bytes} expected at most."
        )
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ModelFileError(
            f"{_describe(path)} is damaged: reading {name!r} failed ({error})."
        ) from error


def _manifest_from_archive(archive, path):
    data = _read_member(archive, MANIFEST, path, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            f"{_describe(path)} is damaged: {MANIFEST} is not valid JSON ({error})."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{_describe(path)} is not an sk_cae model file: its {MANIFEST} does "
            f"not declare format {FORMAT_NAME!r}."
        )
    return manifest


def _written_by(manifest):
    created_by = manifest.get("created_by")
    if isinstance(created_by, dict):
        return str(created_by.get("sk_cae", "an unknown version"))
    return "an unknown version"


def read_manifest(path):
    """Return the manifest of a model file without loading the model.

    Parameters
    ----------
    path : str, path-like or binary file object

    Returns
    -------
    manifest : dict
        Format version, versions of the packages that wrote the file,
        parameters, fitted scalars and training history.
    """
    with _open_archive(path) as archive:
        return _manifest_from_archive(archive, path)


def _load_pipeline(archive, manifest, path, detector, trusted):
    skops_io = _import_skops()
    entry = expect(manifest, "pipeline", dict, "the manifest")
    step_name = expect(entry, "detector_step", str, "the pipeline entry")
    data = _read_member(archive, PIPELINE, path)
    _check_digest(manifest, PIPELINE, data, path)

    allowed = [*SKOPS_TRUSTED_TYPES, *(trusted or [])]
    try:
        untrusted = skops_io.get_untrusted_types(data=data)
    except Exception as error:
        raise ModelFileError(
            f"{_describe(path)} is damaged: {PIPELINE} cannot be read ({error})."
        ) from error
    rejected = sorted(set(untrusted) - set(allowed))
    if rejected:
        raise ModelFileError(
            f"{_describe(path)} contains types that are not trusted: {rejected}. "
            "If you trust the file, pass them to load(..., trusted=[...])."
        )
    try:
        pipeline = skops_io.loads(data, trusted=allowed)
    except Exception as error:
        raise ModelFileError(
            f"{_describe(path)}: the pipeline in {PIPELINE} cannot be rebuilt "
            f"({type(error).__name__}: {error})."
        ) from error

    if not isinstance(pipeline, Pipeline):
        raise ModelFileError(
            f"{PIPELINE} contains a {type(pipeline).__name__}, not a Pipeline."
        )
    names = [name for name, _ in pipeline.steps]
    if step_name not in names or names.index(step_name) != len(names) - 1:
        raise ModelFileError(
            f"{PIPELINE} has no last step named {step_name!r} (steps: {names})."
        )
    pipeline.steps[-1] = (step_name, detector)
    return pipeline


def _check_digest(manifest, name, data, path):
    digests = expect(manifest, "sha256", dict, "the manifest")
    if digests.get(name) != _sha256(data):
        raise ModelFileError(
            f"{_describe(path)} is damaged or was modified: the SHA-256 digest of "
            f"{name!r} does not match the one in {MANIFEST}."
        )


def _check_versions(manifest, path):
    written_by = _written_by(manifest)
    from . import __version__

    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{_describe(path)} was written by sk_cae {written_by} in model-file "
            f"format {version!r}; sk_cae {__version__} reads format "
            f"{FORMAT_VERSION}. Load it with sk_cae {written_by}, or fit the "
            "model again with this version."
        )
    created_by = manifest.get("created_by") or {}
    differ = [
        f"{package} {created_by[package]} (here {installed})"
        for package, installed in (
            ("sk_cae", __version__),
            ("scikit-learn", sklearn.__version__),
        )
        if package in created_by and created_by[package] != installed
    ]
    if differ:
        warnings.warn(
            f"{_describe(path)} was written with {', '.join(differ)}. It loads, "
            "but scores can differ from those of the version that wrote it.",
            ModelVersionWarning,
            stacklevel=3,
        )


def load(path, *, device=None, trusted=None):
    """Read a model file written by :func:`save`.

    Nothing in the file is unpickled or executed: the manifest is JSON, the
    arrays are safetensors, and a Pipeline's scikit-learn steps are rebuilt by
    ``skops.io``, which accepts only trusted types.

    Parameters
    ----------
    path : str, path-like or binary file object
        The model file.

    device : str, default=None
        Torch device to load the autoencoder on. None uses the device the
        model was saved with, or the CPU when that was a CUDA device and CUDA
        is not available here.

    trusted : list of str, default=None
        Further type names (as ``"module.Class"``) that skops may rebuild in a
        Pipeline's steps, for custom transformers you trust.

    Returns
    -------
    model : ContrastiveAEDetector or Pipeline
        The fitted model, which gives the same scores as the one saved.

    Raises
    ------
    ModelFileError
        If the file is not an sk_cae model file, is truncated or modified, or
        was written in another model-file format version. The message names
        the sk_cae version that wrote the file.
    """
    safetensors_numpy = _import_safetensors()
    with _open_archive(path) as archive:
        manifest = _manifest_from_archive(archive, path)
        _check_versions(manifest, path)
        try:
            data = _read_member(archive, ARRAYS, path)
            _check_digest(manifest, ARRAYS, data, path)
            try:
                arrays = safetensors_numpy.load(data)
            except Exception as error:
                raise ModelFileError(
                    f"{ARRAYS} is not a valid safetensors file ({error})."
                ) from error
            description = expect(manifest, "detector", dict, "the manifest")
            detector = build_detector(description, arrays, device)
            if manifest.get("pipeline") is None:
                return detector
            return _load_pipeline(archive, manifest, path, detector, trusted)
        except ModelFileError as error:
            message = str(error)
            if not message.startswith(_describe(path)):
                message = f"{_describe(path)} cannot be loaded: {message}"
            raise ModelFileError(
                f"{message} (The file was written by sk_cae {_written_by(manifest)}.)"
            ) from error


# ------------------------------------------------------------------- onnx


def export_onnx(model, path, *, opset=17):
    """Write the decision function of a fitted detector as an ONNX graph.

    The graph takes ``X``, a float32 tensor of shape ``(n_samples,
    n_features)``, and returns ``decision`` (float64, equal to
    ``decision_function(X)``) and ``label`` (int64, equal to ``predict(X)``).
    It needs only an ONNX runtime: neither Python nor torch. The
    ``onnx`` package builds it (``pip install 'sk-cae[onnx]'``).

    Parameters
    ----------
    model : ContrastiveAEDetector or Pipeline
        A fitted detector, or a ``Pipeline`` of a fitted ``StandardScaler``
        followed by one. Other preprocessing steps are not supported.

    path : str, path-like or binary file object
        Where to write the ``.onnx`` file.

    opset : int, default=17
        ONNX operator set version of the graph, at least 13.

    Returns
    -------
    model_proto : onnx.ModelProto
        The graph that was written.
    """
    from ._onnx import export_decision_function

    return export_decision_function(model, path, opset=opset)

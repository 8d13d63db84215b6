"""The detectors that the quality benchmark compares, built lazily.

Each :class:`Method` imports its package only when it is built, so a missing
optional package disables only the methods that need it;
:func:`method_unavailable_reason` says which package is missing and how to
install it.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One detector of the benchmark.

    ``requires`` lists ``module`` or ``module:attribute`` names that must be
    importable. ``build(random_state, max_epochs, device)`` returns the
    unfitted last step of the pipeline; ``max_epochs=None`` keeps the
    library's default. ``score(pipeline, X)`` returns anomaly scores, higher
    for more defect-like rows.
    """

    name: str
    requires: tuple
    install_hint: str
    uses_labels: bool
    description: str
    build: Callable
    score: Callable


def _negated_score_samples(pipeline, X):
    return -pipeline.score_samples(X)


def _defect_probability(pipeline, X):
    return pipeline.predict_proba(X)[:, 1]


def _pyod_decision_function(pipeline, X):
    # PyOD's decision_function is already higher for more anomalous rows.
    return pipeline.decision_function(X)


def _build_cae(random_state, max_epochs, device):
    from sk_cae import ContrastiveAEDetector

    params = {"random_state": random_state, "device": device}
    if max_epochs is not None:
        params["max_epochs"] = max_epochs
    return ContrastiveAEDetector(**params)


def _build_iforest(random_state, max_epochs, device):
    from sklearn.ensemble import IsolationForest

    return IsolationForest(random_state=random_state)


def _build_hgb(random_state, max_epochs, device):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(random_state=random_state)


def _deepod_builder(model):
    def build(random_state, max_epochs, device):
        from .deepod_adapter import DeepODDetector

        params = {"random_state": random_state, "device": device}
        if max_epochs is not None:
            params["epochs"] = max_epochs
        return DeepODDetector(model, **params)

    return build


def _build_pyod_ae(random_state, max_epochs, device):
    from pyod.models.auto_encoder import AutoEncoder

    params = {"random_state": random_state, "device": device, "verbose": 0}
    if max_epochs is not None:
        params["epoch_num"] = max_epochs
    return AutoEncoder(**params)


SK_CAE_HINT = "pip install -e . --no-deps (from the repository root)"
DEEPOD_HINT = "pip install --no-deps deepod==0.4.1"
DEEPOD_DESCRIPTION = (
    "deepod 0.4.1 `{cls}` through `benchmarks/peers/deepod_adapter.py`, with "
    "deepod's defaults: MLP with hidden layers 100 and 50 and no bias terms, "
    "100 epochs, batch size 64, Adam with lr 1e-3 and weight decay 1e-5, and "
    "mini-batches drawn by a sampler that balances the labeled defects "
    "against the unlabeled rows. "
)
METHODS = {
    method.name: method
    for method in (
        Method(
            "cae",
            ("torch", "sk_cae:ContrastiveAEDetector"),
            SK_CAE_HINT,
            True,
            "`sk_cae.ContrastiveAEDetector` with the library's defaults, fitted "
            "with the labeled defects; anomaly score `-score_samples`.",
            _build_cae,
            _negated_score_samples,
        ),
        Method(
            "ae",
            ("torch", "sk_cae:ContrastiveAEDetector"),
            SK_CAE_HINT,
            False,
            "The same `ContrastiveAEDetector`, fitted with `y=None`: a plain "
            "autoencoder without defect labels; anomaly score `-score_samples`.",
            _build_cae,
            _negated_score_samples,
        ),
        Method(
            "iforest",
            ("sklearn.ensemble:IsolationForest",),
            "pip install scikit-learn",
            False,
            "scikit-learn `IsolationForest` with its defaults, no labels; "
            "anomaly score `-score_samples`.",
            _build_iforest,
            _negated_score_samples,
        ),
        Method(
            "hgb",
            ("sklearn.ensemble:HistGradientBoostingClassifier",),
            "pip install scikit-learn",
            True,
            "scikit-learn `HistGradientBoostingClassifier` with its defaults, "
            "trained on the labeled defects (y=1) against every other training "
            "row; anomaly score `predict_proba[:, 1]`.",
            _build_hgb,
            _defect_probability,
        ),
        Method(
            "deepsad",
            ("torch", "benchmarks.peers.deepod_adapter:DeepODDetector"),
            DEEPOD_HINT,
            True,
            DEEPOD_DESCRIPTION.format(cls="DeepSAD")
            + "Representation size 128. Unlike the reference implementation "
            "of Ruff et al. (ICLR 2020), deepod does not initialise the network "
            "from a pretrained autoencoder. Anomaly score: squared distance to "
            "the hypersphere centre.",
            _deepod_builder("deepsad"),
            _negated_score_samples,
        ),
        Method(
            "devnet",
            ("torch", "benchmarks.peers.deepod_adapter:DeepODDetector"),
            DEEPOD_HINT,
            True,
            DEEPOD_DESCRIPTION.format(cls="DevNet")
            + "Margin 5, 5000 reference scores from N(0, 1). **Fixed:** deepod "
            "0.4.1 multiplies labels of shape (B,) with predictions of shape "
            "(B, 1), so the deviation loss broadcasts to a (B, B) matrix whose "
            "mean gives every row the same blend of inlier and outlier loss, "
            "whatever its label. The subclass `FixedDevNet` flattens the "
            "predictions, so each row gets the loss of its own label. Anomaly "
            "score: the network's output.",
            _deepod_builder("devnet"),
            _negated_score_samples,
        ),
        Method(
            "pyod_ae",
            ("torch", "pyod.models.auto_encoder:AutoEncoder"),
            "pip install pyod",
            False,
            "PyOD `AutoEncoder` with its defaults (hidden layers 64 and 32, "
            "batch norm, dropout 0.2, 10 epochs, batch size 32, its own "
            "standardization after the pipeline's), no labels; anomaly score "
            "`decision_function`, the reconstruction distance.",
            _build_pyod_ae,
            _pyod_decision_function,
        ),
    )
}


def method_unavailable_reason(method):
    """Return why a method cannot run here, or None when it can."""
    for requirement in method.requires:
        module_name, _, attribute = requirement.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            return f"{module_name} cannot be imported ({error}); {method.install_hint}"
        if attribute and not hasattr(module, attribute):
            return f"{module_name} has no {attribute}; {method.install_hint}"
    return None

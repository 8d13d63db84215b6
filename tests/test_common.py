"""scikit-learn's own estimator checks, as the outside judge of API compliance."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sk_cae import ContrastiveAEDetector

EXPECTED_FAILED_CHECKS = {
    "check_methods_subset_invariance": (
        "float32 matrix products in torch round differently for different "
        "numbers of rows, so scores of the same row computed in batches of "
        "different sizes differ in the 7th significant digit"
    ),
}


@parametrize_with_checks(
    [ContrastiveAEDetector(max_epochs=3, random_state=0)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)

"""Build the documentation site with warnings as errors and run its samples.

The HTML build executes the examples of ``docs/examples``. The doctest build
runs every ``>>>`` sample of the pages and of the docstrings that the API
reference includes. Both build a copy of ``docs/`` in a temporary folder, so
the checkout is left unchanged.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"

# Imported by the Sphinx configuration or by the executed samples.
REQUIRED_MODULES = (
    "sphinx",
    "numpydoc",
    "sphinx_gallery",
    "myst_parser",
    "pydata_sphinx_theme",
    "matplotlib",
    "pandas",
    "dask.dataframe",
    "distributed",
)

BUILD_TIMEOUT_S = 600

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build_root(tmp_path_factory):
    """A copy of ``docs/`` without build outputs, and a folder for the builds."""
    for module in REQUIRED_MODULES:
        pytest.importorskip(
            module, reason='needs the docs extra: pip install ".[docs]"'
        )
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(
        DOCS,
        root / "source",
        ignore=shutil.ignore_patterns("_build", "auto_examples"),
    )
    return root


def run_sphinx(root, builder):
    """Run one Sphinx builder with warnings as errors and return the process."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-q",
        "-b",
        builder,
        "-d",
        str(root / "doctrees"),
        str(root / "source"),
        str(root / builder),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )


def test_html_builds_without_warnings(build_root):
    """Every page, example and docstring renders without a Sphinx warning."""
    result = run_sphinx(build_root, "html")

    assert result.returncode == 0, result.stderr[-5000:]
    html = build_root / "html"
    for page in ("index", "getting_started", "user_guide", "scaling", "api"):
        assert (html / f"{page}.html").is_file(), page
    api = (html / "api.html").read_text(encoding="utf-8")
    for name in ("ContrastiveAEDetector", "ContrastiveLoss", "score_dask"):
        assert name in api
    examples = sorted(p.stem for p in (DOCS / "examples").glob("*.py"))
    assert examples
    for example in examples:
        assert (html / "auto_examples" / f"{example}.html").is_file(), example


def test_code_samples_pass(build_root):
    """Every doctest of the pages and of the API docstrings passes."""
    result = run_sphinx(build_root, "doctest")
    report = build_root / "doctest" / "output.txt"

    summary = report.read_text(encoding="utf-8") if report.is_file() else ""
    assert result.returncode == 0, (summary or result.stderr)[-5000:]
    assert " 0 failures in tests" in summary
    assert "Document: getting_started" in summary
    assert "Document: scaling" in summary

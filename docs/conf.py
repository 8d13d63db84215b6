"""Sphinx configuration of the sk_cae documentation.

Build the site with ``python -m sphinx -W -b html docs docs/_build/html`` and
run every code sample of the pages and docstrings with
``python -m sphinx -W -b doctest docs docs/_build/doctest``.
``tests/test_docs.py`` runs both.
"""

import os
from pathlib import Path

# Examples and doctests train small networks, for which one torch thread per
# process is fastest: more threads than free cores slow training down many
# times over. Set before torch is imported; a value in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import sk_cae  # noqa: E402

project = "sk_cae"
author = "sk_cae developers"
copyright = "sk_cae developers"
version = release = sk_cae.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "sg_execution_times.rst", "examples/*"]

# Markdown pages: $...$ math, ::: fences for admonitions, anchors on headings
# down to level 3 so that pages can link to sections.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference lists members with autodoc; numpydoc's own member tables
# would need a generated page per method.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"

doctest_global_setup = """
import numpy as np
"""

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    # Execute every example, not only those named plot_*.
    "filename_pattern": r"\.py$",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": False,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = f"sk_cae {release}"
# The top-level pages have no sub-pages, so their left sidebar would be empty.
html_sidebars = {page.stem: [] for page in Path(__file__).parent.glob("*.md")}
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}

"""Sphinx configuration of the tidepool documentation (``make docs``).

Pages are MyST Markdown. ``make docs`` builds them twice with warnings as errors: once as
HTML (furo theme), once with the doctest builder, which runs every ``{doctest}`` block
against the library in this checkout.
"""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

# Document (and doctest) the library of this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import tidepool

project = "tidepool"
author = "the tidepool authors"
copyright = "the tidepool authors, MIT License"
release = tidepool.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: anchors for headings down to ###, so that [text](#a-heading) and
# [text](page.md#a-heading) resolve; ::: fences for admonitions; definition lists.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# The API reference: Google-style docstrings (Args:, Raises:, Attributes:).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes: sections become fields of the class, not separate attribute entries that
# would duplicate the dataclass fields autodoc already knows.
napoleon_use_ivar = True

# Doctests: exception messages are part of what the pages promise, so they are compared
# (the default flags of sphinx.ext.doctest ignore them).
doctest_default_flags = (
    doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1
)
doctest_global_setup = """
import asyncio
import logging
import tidepool

# The library configures no logging handler; without one, Python prints its WARNING
# records (a refused connect being retried, ...) to stderr, which is noise in a doctest run.
_tidepool_log = logging.getLogger("tidepool")
if not any(isinstance(h, logging.NullHandler) for h in _tidepool_log.handlers):
    _tidepool_log.addHandler(logging.NullHandler())
"""

html_theme = "furo"
html_title = f"tidepool {release}"
html_short_title = "tidepool"

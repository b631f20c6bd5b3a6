"""Sphinx configuration: the reference of logitnorm-plugin (``tox -e docs``, warnings are errors)."""

import logitnorm_plugin

project = "logitnorm-plugin"
author = "logitnorm-plugin developers"
release = version = logitnorm_plugin.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
# the docstrings use Sphinx's :param: fields and ``.. math::`` like pytorch-ood's
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# `info` is the host's metadata record; its docstring links pytorch-ood's own pages
autodoc_default_options = {"members": True, "exclude-members": "info"}
# no network when the docs are built: cross-references to other projects stay plain text
intersphinx_mapping = {}
html_theme = "alabaster"
# the pages link files of the repository (CONTRIBUTING.md, benchmarks/...) as GitHub shows them;
# Sphinx cannot resolve those, and they are not errors of the reference
suppress_warnings = ["myst.xref_missing"]

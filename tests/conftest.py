"""Shared test settings. Fixture *writers* for on-disk datasets live in the package
(``logitnorm_plugin.data.fake``) so that tests and users share them."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Entry points are cached; tests that change sys.path must not leak into others."""
    from logitnorm_plugin import registry

    registry.refresh()
    yield
    registry.refresh()

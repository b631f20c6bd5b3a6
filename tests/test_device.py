"""One device rule for every command."""

import pytest
import torch

from logitnorm_plugin.device import resolve_device
from logitnorm_plugin.errors import UserError


def test_auto_and_none_pick_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_unknown_device_is_a_clear_error():
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")

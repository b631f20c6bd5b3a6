"""One device rule for every command."""

import os

import pytest
import torch

from logitnorm_plugin._core.device import resolve_device, resolve_threads, torch_threads
from logitnorm_plugin._core.errors import UserError


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


def test_threads_auto_is_one_for_the_digits_on_the_cpu_only():
    assert resolve_threads("auto", "cpu", "digits") == 1
    assert resolve_threads("auto", torch.device("cpu"), "Digits") == 1
    assert resolve_threads("auto", "cpu", "cifar10") is None  # torch's default
    assert resolve_threads(None, "cpu", "digits") is None  # leave torch alone
    cores = os.cpu_count()
    assert resolve_threads(cores, "cpu", "cifar10") == cores
    assert resolve_threads("2", "cpu", "digits") == 2
    for bad in (0, -1, "many", 1.5, cores + 1, 100000):
        with pytest.raises(UserError, match="threads"):
            resolve_threads(bad, "cpu", "digits")


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("device", ["meta", "mps", "xpu"])
def test_a_device_this_machine_cannot_run_on_is_a_clear_error(device):
    if torch.accelerator.current_accelerator(check_available=True) == torch.device(device):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(UserError, match=f"device '{device}' cannot run models here"):
        resolve_device(device)


def test_a_cuda_index_beyond_the_devices_is_a_clear_error():
    count = torch.cuda.device_count()
    with pytest.raises(UserError, match="CUDA is not available|cuda:0 to"):
        resolve_device(f"cuda:{count}")

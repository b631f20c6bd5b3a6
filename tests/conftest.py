"""Shared test settings. Fixture writers for on-disk datasets live in ``fake_data.py``; the
readers under test are the package's own, unchanged."""

import hashlib

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every test runs torch on one CPU thread: the CI machine has 2 cores shared by several
    jobs, where tiny models run many times slower on two threads, and one thread gives the
    same numbers on every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Entry points are cached; tests that change sys.path must not leak into others."""
    from logitnorm_plugin.registry import entry_points as registry

    registry.refresh()
    yield
    registry.refresh()


@pytest.fixture(autouse=True)
def _fixture_checksums(monkeypatch):
    """torchvision checks the published MD5 of every CIFAR/SVHN file before reading it. The
    fixtures of ``fake_data`` cannot match those sums; here the check also accepts a file whose
    content is exactly one that ``fake_data`` wrote in this session (a changed byte fails)."""
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.svhn as svhn
    import torchvision.datasets.utils as utils
    from fake_data import WRITTEN_MD5

    def check(original):
        def check_integrity(fpath, md5=None):
            try:
                with open(fpath, "rb") as f:
                    digest = hashlib.md5(f.read()).hexdigest()
            except OSError:
                return False
            return digest in WRITTEN_MD5 or original(fpath, md5)

        return check_integrity

    monkeypatch.setattr(cifar, "check_integrity", check(cifar.check_integrity))
    monkeypatch.setattr(svhn, "check_integrity", check(svhn.check_integrity))
    # download_url checks a present file before it downloads (SVHN with download=True)
    monkeypatch.setattr(utils, "check_integrity", check(utils.check_integrity))
    yield


@pytest.fixture
def offline(monkeypatch):
    """No network: every URL that torchvision's downloaders or torch.hub open raises
    ``urllib.error.URLError``, as on a machine without network access. Yields the list of the
    URLs that were tried, so a test can check that a download was really attempted."""
    import urllib.error
    import urllib.request

    import torch.hub

    tried = []

    def urlopen(request, *args, **kwargs):
        tried.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    yield tried


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run folder (digits, LogitNorm, seed 0): one epoch in large batches, since the
    weights only need to be real, not good. Module-scoped: tests that change it copy it."""
    from logitnorm_plugin.training.loop import train

    out = tmp_path_factory.mktemp("runs") / "digits-logitnorm-s0"
    train(dataset="digits", loss="logitnorm", epochs=1, batch_size=256, seed=0, out=out,
          progress=False, device="cpu")
    return out

"""Every declared benchmark, built offline from tiny real-format fixtures in tmp_path."""

import importlib.metadata as md
import os

import pytest
import torch
from fake_data import (
    write_cifar,
    write_openood,
    write_paper_ood_sets,
)

from logitnorm_plugin._core.errors import MissingDataError
from logitnorm_plugin.data import ImageTensors
from logitnorm_plugin.data import benchmarks as B

OURS = {
    ep.name: ep
    for ep in md.entry_points(group="pytorch_ood.benchmarks")
    if ep.value.startswith("logitnorm_plugin.data.benchmarks:")
}

# name -> (writer of the fixture under root, expected num_classes, expected image shape)
N_OOD = 6


def _paper(which):
    def write(root):
        write_cifar(root, which, n_train=40, n_test=20)
        write_paper_ood_sets(root, N_OOD)

    return write


def _openood(which, size=(32, 32)):
    def write(root):
        import torch.hub

        sub = "images_largescale" if which == "imagenet200" else "images_classic"
        lists = os.path.join(torch.hub.get_dir(), "openood_benchmark_imglist")
        write_openood(root / sub, lists, which, n=3, size=size)

    return write


FIXTURES = {
    "digits": (lambda root: None, 10, (1, 8, 8)),
    "cifar10": (_paper("cifar10"), 10, (3, 32, 32)),
    "cifar100": (_paper("cifar100"), 100, (3, 32, 32)),
    "cifar10_openood": (_openood("cifar10"), 10, (3, 32, 32)),
    "cifar100_openood": (_openood("cifar100"), 100, (3, 32, 32)),
    "imagenet200_openood": (_openood("imagenet200", (30, 40)), 200, (3, 224, 224)),
}


@pytest.fixture(autouse=True)
def _private_torch_home(tmp_path, monkeypatch):
    # pytorch-ood looks for OpenOOD's image lists under torch.hub.get_dir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _build(name, root, **kwargs):
    return OURS[name].load()(root=root, **kwargs)


def test_every_declared_benchmark_has_a_fixture():
    assert set(OURS) == set(FIXTURES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_info_is_the_classes_own(name):
    cls = OURS[name].load()
    assert "info" in vars(cls)
    url = cls.info.paper.url
    if name.endswith("openood"):
        assert url == "https://arxiv.org/abs/2306.09301"
    else:
        assert url == "https://arxiv.org/abs/2205.09310"
        assert cls.info.paper.code == "https://github.com/hongxin001/logitnorm_ood"
    assert cls.name == name


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_benchmark_from_fixture(name, tmp_path):
    write, num_classes, shape = FIXTURES[name]
    write(tmp_path)
    bench = _build(name, tmp_path)
    assert bench.num_classes == num_classes
    assert bench.preprocessing["size"] == shape[1:]
    assert len(bench.ood_names) == len(set(bench.ood_names)) >= 4
    assert all(n == n.lower() for n in bench.ood_names)
    for group in bench.ood_groups.values():
        assert set(group) <= set(bench.ood_names)
    if bench.ood_groups:
        grouped = [n for g in bench.ood_groups.values() for n in g]
        assert sorted(grouped) == sorted(bench.ood_names)  # each set in exactly one group

    test = bench.id_test_set()
    assert isinstance(test, ImageTensors) and test.shape == shape
    assert test.labels.min() >= 0 and test.labels.max() < num_classes
    oods = bench.ood_sets()
    assert [d.name for d in oods] == bench.ood_names
    for d in oods:
        assert d.shape == shape and len(d) > 0 and (d.labels == -1).all()
        assert d.images.dtype == torch.uint8 and d.mean == bench.preprocessing["mean"]

    pairs = bench.test_sets()
    assert len(pairs) == len(bench.ood_names)
    for pair, d in zip(pairs, oods):
        assert len(pair) == len(test) + len(d)
        x, y = pair[len(pair) - 1]
        assert x.shape == shape and y == -1 and isinstance(y, int)
    assert len(bench.test_sets(known=True, unknown=False)) == 1
    assert len(bench.test_sets(known=False, unknown=True)) == len(oods)
    with pytest.raises(ValueError):
        bench.test_sets(known=False, unknown=False)

    train = bench.train_set()
    x, y = train[0]
    assert x.shape == shape and 0 <= y < num_classes
    assert len(bench.val_set()) > 0 and (bench.val_ood_set()[0][1] == -1)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_with_preprocessing_shares_pixels(name, tmp_path):
    FIXTURES[name][0](tmp_path)
    bench = _build(name, tmp_path)
    c = FIXTURES[name][2][0]
    other = bench.with_preprocessing((0.5,) * c, (0.25,) * c)
    assert other.preprocessing["mean"] == (0.5,) * c and bench.preprocessing["mean"] != (0.5,) * c
    a, b = bench.ood_sets()[0], other.ood_sets()[0]
    assert a.images.data_ptr() == b.images.data_ptr()
    torch.testing.assert_close(b[0][0], b.images[0].float() / 255 * 4 - 2)


def test_digits_groups_and_sizes():
    bench = B.DigitsBenchmark()
    assert bench.ood_groups == {"near": ["rotated"], "far": ["patches", "gaussian", "uniform"]}
    assert [len(d) for d in bench.ood_sets()] == [486, 540, 540, 540]
    assert len(bench.id_test_set()) == 540 and len(bench.train_set()) == 1257
    assert len(bench.train_set("train")) + len(bench.val_set()) == 1257
    # validation noise is not the test noise
    val = bench.val_ood_set()
    assert not torch.equal(val.images[:10], bench.ood_set("gaussian").images[:10])
    assert B.DigitsBenchmark(seed=1).ood_set("gaussian").images.ne(
        bench.ood_set("gaussian").images).any()


def test_host_evaluate_runs_on_digits():
    # pytorch-ood's own evaluation loop accepts our sets (uniform int labels, tensors)
    from pytorch_ood.detector import MaxSoftmax

    from logitnorm_plugin.registry.architectures import build_model

    torch.manual_seed(0)
    bench = B.DigitsBenchmark()
    model = build_model("digits-cnn", 10, in_channels=1, width=4).eval()
    rows = bench.evaluate(MaxSoftmax(model), loader_kwargs={"batch_size": 256})
    assert [r["Dataset"] for r in rows] == bench.ood_names
    assert all(0.0 <= r["AUROC"] <= 1.0 for r in rows)


def test_paper_subsamples(tmp_path):
    FIXTURES["cifar10"][0](tmp_path)
    bench = _build("cifar10", tmp_path)
    subs = bench.ood_subsamples(repeats=3)
    assert set(subs) == set(bench.ood_names)
    assert all(len(d) == 3 and all(len(i) == 4 for i in d) for d in subs.values())  # 20 // 5
    assert all((a == b).all() for a, b in zip(subs["isun"], bench.ood_subsamples(3)["isun"]))


# -- missing data ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_missing_id_data_says_where_and_how(name, tmp_path):
    with pytest.raises(MissingDataError) as err:
        _build(name, tmp_path)
    msg = str(err.value)
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert f"'{name}'" in msg and str(tmp_path / folder) in msg
    assert "download=True" in msg and "https://www.cs.toronto.edu/~kriz/" in msg


@pytest.mark.parametrize(
    "ood, path, hint",
    [
        ("isun", "iSUN", "iSUN.tar.gz"),
        ("textures", "dtd/images", "pytorch_ood.dataset.img.Textures"),
        ("lsun_crop", "LSUN", "pytorch_ood.dataset.img.LSUNCrop"),
        ("lsun_resize", "LSUN_resize", "pytorch_ood.dataset.img.LSUNResize"),
        ("places365", "places365", "pytorch_ood.dataset.img.Places365"),
        ("svhn", "svhn/test_32x32.mat", "torchvision.datasets.SVHN"),
    ],
)
def test_missing_ood_set_says_where_and_how(ood, path, hint, tmp_path):
    import shutil

    FIXTURES["cifar10"][0](tmp_path)
    shutil.rmtree(tmp_path / path.split("/")[0])
    with pytest.raises(MissingDataError) as err:
        _build("cifar10", tmp_path)
    msg = str(err.value)
    assert f"'{ood}'" in msg and str(tmp_path / path) in msg
    assert "download=True" in msg and hint in msg


@pytest.mark.parametrize("name", ["cifar10_openood", "cifar100_openood", "imagenet200_openood"])
def test_missing_openood_data_says_where_and_how(name, tmp_path):
    with pytest.raises(MissingDataError) as err:
        _build(name, tmp_path)
    msg = str(err.value)
    assert name in msg and "openood_benchmark_imglist" in msg
    assert "gdown" in msg and "download=True" in msg
    # image lists present, images absent: names the missing folders
    FIXTURES[name][0](tmp_path)
    sub = "images_largescale" if name.startswith("imagenet") else "images_classic"
    import shutil

    victim = sorted(p for p in (tmp_path / sub).iterdir())[0]
    shutil.rmtree(victim)
    with pytest.raises(MissingDataError) as err:
        _build(name, tmp_path)
    assert str(victim) in str(err.value) and "OpenOOD" in str(err.value)


def test_openood_download_without_gdown_is_a_clear_error(tmp_path):
    try:
        import gdown  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDataError, match="gdown"):
            _build("cifar10_openood", tmp_path, download=True)
    else:  # pragma: no cover - gdown installed: downloading would need the network
        pytest.skip("gdown is installed; the download path needs the network")


def test_unexpected_arguments_are_rejected():
    with pytest.raises(TypeError):
        B.DigitsBenchmark(batch=3)


# -- downloads that fail (issue 10): say so, name the URL and where to put the file by hand ---


def _no_download_hint(msg):
    """The message must not tell a user who passed --download to pass --download."""
    return "pass download=True" not in msg and "pass --download" not in msg


def test_failed_cifar_download_names_the_url_and_where_to_extract(tmp_path, offline):
    with pytest.raises(MissingDataError) as err:
        _build("cifar10", tmp_path, download=True)
    msg = str(err.value)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert offline and offline[0] == url  # the real downloader ran, and met no network
    assert msg.startswith(f"Downloading dataset 'cifar10' from {url} into {tmp_path} failed")
    assert "Temporary failure in name resolution" in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert _no_download_hint(msg), msg


@pytest.mark.parametrize(
    "ood, path, url",
    [
        ("isun", "iSUN", "https://www.dropbox.com/s/raw/ssz7qxfqae0cca5/iSUN.tar.gz"),
        ("textures", "dtd/images",
         "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"),
        ("lsun_crop", "LSUN", "https://www.dropbox.com/s/raw/fhtsw1m3qxlwj6h/LSUN.tar.gz"),
        ("lsun_resize", "LSUN_resize",
         "https://www.dropbox.com/s/raw/moqh2wh8696c3yl/LSUN_resize.tar.gz"),
        ("places365", "places365", "https://drive.google.com/uc?id="),
        ("svhn", "svhn/test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"),
    ],
)
def test_failed_ood_download_names_the_url_and_where_to_put_it(ood, path, url, tmp_path,
                                                               offline):
    import shutil

    FIXTURES["cifar10"][0](tmp_path)
    shutil.rmtree(tmp_path / path.split("/")[0])
    with pytest.raises(MissingDataError) as err:
        _build("cifar10", tmp_path, download=True)
    msg = str(err.value)
    assert msg.startswith(f"Downloading OOD set '{ood}' from {url}" if ood != "svhn"
                          else f"Downloading SVHN from {url}"), msg
    assert "failed" in msg and str(tmp_path / path) in msg and "by hand" in msg
    assert _no_download_hint(msg), msg
    if ood != "places365":  # Places365 comes through gdown, which is not installed here
        assert offline, "the downloader never tried the network"


def test_failed_openood_download_names_the_drive_files_and_folders(tmp_path, offline,
                                                                   monkeypatch):
    import sys
    import types
    import urllib.request

    gdown = types.ModuleType("gdown")  # stands in for the optional gdown, offline

    def download(id=None, output=None, **kwargs):
        urllib.request.urlopen(f"https://drive.google.com/uc?id={id}")

    gdown.download = download
    monkeypatch.setitem(sys.modules, "gdown", gdown)
    with pytest.raises(MissingDataError) as err:
        _build("cifar10_openood", tmp_path, download=True)
    msg = str(err.value)
    assert offline
    assert msg.startswith("Downloading the OpenOOD benchmark 'cifar10_openood' failed (URLError")
    assert "image lists: https://drive.google.com/uc?id=" in msg and "cifar10: https://" in msg
    assert str(tmp_path / "images_classic") in msg and "openood_benchmark_imglist" in msg
    assert _no_download_hint(msg), msg

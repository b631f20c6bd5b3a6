"""Issue 22 point 8: an image-folder dataset never follows links out of its folder or back into
it, and never counts one image twice; a real ImageFolder tree on disk with a real symlink loop
(which, followed, silently multiplied the test set)."""

import os
import threading

import pytest
from fake_data import write_image_folder

from logitnorm_plugin._core.errors import StorageError, UntrustedFileError, UserError
from logitnorm_plugin.data import load_split
from logitnorm_plugin.data.images import list_images


def image_folder_dataset(root):
    """``<root>/{train,test}/{a,b}/img_*.png``: 2 classes, 6 test images each (12)."""
    write_image_folder(root / "train", ["a", "b"], 6, (16, 16), "png", seed=1)
    write_image_folder(root / "test", ["a", "b"], 6, (16, 16), "png", seed=2)
    return root


def test_the_clean_dataset_and_a_dataset_kept_behind_a_link(tmp_path):
    root = image_folder_dataset(tmp_path / "ds")
    assert len(load_split(str(root), "test")) == 12
    os.symlink(root, tmp_path / "elsewhere")  # the dataset folder itself may be a link
    assert len(load_split(str(tmp_path / "elsewhere"), "test")) == 12


@pytest.mark.parametrize("hostile", ["loop", "out", "class", "split"])
def test_links_inside_the_dataset_are_refused(tmp_path, hostile):
    root = image_folder_dataset(tmp_path / "ds")
    outside = write_image_folder(tmp_path / "outside", None, 5, (16, 16), "png", seed=3)
    link = {"loop": root / "test" / "a" / "again",      # back into the root: a loop
            "out": root / "test" / "b" / "more",        # out of the root
            "class": root / "test" / "c",               # a class folder that is a link
            "split": root / "test"}[hostile]
    if hostile == "split":
        os.rename(root / "test", tmp_path / "real_test")
    target = {"loop": root / "test", "out": outside, "class": root / "test" / "a",
              "split": tmp_path / "real_test"}[hostile]
    if hostile == "class":
        write_image_folder(root / "train", ["c"], 2, (16, 16), "png", seed=4)
    os.symlink(target, link)
    with pytest.raises(UntrustedFileError) as info:
        load_split(str(root), "test")
    text = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in text
    assert str(link) in text and "link" in text and "cp -rL" in text


def test_one_image_under_two_names_is_an_error(tmp_path):
    root = image_folder_dataset(tmp_path / "ds")
    first = root / "test" / "a" / "img_0000.png"
    os.link(first, root / "test" / "b" / "img_9999.png")  # counted once in each class
    with pytest.raises(UntrustedFileError, match="twice") as info:
        load_split(str(root), "test")
    assert str(first) in str(info.value) and "img_9999.png" in str(info.value)


def test_an_ood_folder_with_a_link_loop(tmp_path):
    folder = write_image_folder(tmp_path / "LSUN" / "test", None, 4, (16, 16), "png")
    os.symlink(folder, folder / "loop")
    with pytest.raises(UntrustedFileError, match="loop"):
        list_images(folder)


def test_a_fifo_named_like_an_image_fails_at_once(tmp_path):
    """A FIFO would block the image decoder forever: refused in one line, naming it."""
    root = image_folder_dataset(tmp_path / "ds")
    fifo = root / "test" / "b" / "img_9999.png"
    os.mkfifo(fifo)
    outcome = {}

    def load():
        try:
            load_split(str(root), "test")
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = exc

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=30)
    error = outcome.get("error")
    assert isinstance(error, StorageError), error  # None: it hung
    assert "FIFO" in str(error) and str(fifo) in str(error)

"""How often the data walk reads and resolves a name: ``canonical_name`` calls with the
benchmark's / dataset's name, and decodes of an image-folder dataset, on the ``bench`` and
``train`` paths (issue 17: each name read and resolved once).

Counts, not timings: it wraps :func:`logitnorm_plugin._core.conventions.canonical_name`
(every module's binding of it) and the image-folder decoders, then runs

- ``bench``: the digits benchmark, one loss, one seed, one epoch, one detector;
- ``train``: one epoch on a tiny image-folder dataset it writes (2 classes x 6 images);

and prints one JSON line per path. ``python benchmarks/data_walk.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import logitnorm_plugin  # noqa: F401  (loads the package before the wrappers go in)
from logitnorm_plugin._core import conventions
from logitnorm_plugin.data import images


class Counter:
    """Counts ``canonical_name`` calls by argument and image-folder decodes by folder."""

    def __init__(self):
        self.names = collections.Counter()
        self.sites = collections.defaultdict(collections.Counter)
        self.decoded_images = collections.Counter()
        self.decode_calls = collections.Counter()
        self._patched = []

    def _wrap_canonical(self):
        original = conventions.canonical_name

        def counted(name, *args, **kwargs):
            self.names[str(name)] += 1
            caller = sys._getframe(1).f_code
            self.sites[str(name)][f"{Path(caller.co_filename).name}:{caller.co_name}"] += 1
            return original(name, *args, **kwargs)

        for module in list(sys.modules.values()):
            if (getattr(module, "__name__", "") or "").startswith("logitnorm_plugin") and \
                    getattr(module, "canonical_name", None) is original:
                self._patched.append((module, "canonical_name", original))
                module.canonical_name = counted

    def _wrap_decoders(self):
        decode_image, decode_folder = images.decode_image, images.decode_folder

        def counted_image(path, *args, **kwargs):
            self.decoded_images[Path(path).parent.parent.name] += 1
            return decode_image(path, *args, **kwargs)

        def counted_folder(folder, *args, **kwargs):
            self.decode_calls[Path(folder).name] += 1
            return decode_folder(folder, *args, **kwargs)

        self._patched += [(images, "decode_image", decode_image),
                          (images, "decode_folder", decode_folder)]
        images.decode_image, images.decode_folder = counted_image, counted_folder

    def __enter__(self):
        self._wrap_canonical()
        self._wrap_decoders()
        return self

    def __exit__(self, *exc):
        for module, attr, value in reversed(self._patched):
            setattr(module, attr, value)


def write_folder_dataset(root: Path) -> Path:
    """``root/shapes/{train,test}/{a,b}/*.png``: 6 train and 2 test images per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            folder = root / "shapes" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "shapes"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--sites", action="store_true", help="list the call sites")
    args = parser.parse_args(argv)
    from logitnorm_plugin.training.loop import train
    from logitnorm_plugin.workflows import bench

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        with Counter() as counted:
            bench.run(benchmark="digits", losses=("cross_entropy",), seeds=(0,), epochs=1,
                      detectors=("msp",), out=work / "bench", progress=False, plots=False)
        print(json.dumps({"path": "bench digits",
                          "canonical_name('digits') calls": counted.names["digits"],
                          "call sites": len(counted.sites["digits"])}))
        if args.sites:
            print(dict(sorted(counted.sites["digits"].items())))
        dataset = write_folder_dataset(work / "data")
        with Counter() as counted:
            train(str(dataset), loss="cross_entropy", epochs=1, batch_size=4,
                  out=work / "run", progress=False)
        print(json.dumps({
            "path": "train image folder",
            "canonical_name(dataset) calls": counted.names[str(dataset)],
            "call sites": len(counted.sites[str(dataset)]),
            "decode_folder(train)": counted.decode_calls["train"],
            "decode_folder(test)": counted.decode_calls["test"],
            "images decoded (train split, 12 files)": counted.decoded_images["train"],
        }))
        if args.sites:
            print(dict(sorted(counted.sites[str(dataset)].items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

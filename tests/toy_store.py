"""A tiny real result store for the trust tests (``test_store_trust``, ``test_sealed_records``),
and the check that a command answered with one line. Test code (a plain helper module, as
``fake_data.py`` is: test files do not import each other).
"""

from __future__ import annotations

from pathlib import Path

import torch

from logitnorm_plugin._core import provenance
from logitnorm_plugin._core.conventions import ID_DATASET
from logitnorm_plugin.cli import main
from logitnorm_plugin.store.results import ResultStore

#: the toy benchmark's OOD sets
DATASETS = ("svhn", "textures")
#: per-sample scores of each set (the ID test set first), for stores that keep them
SCORES = {name: torch.linspace(0, 1, 7) + i for i, name in enumerate((ID_DATASET, *DATASETS))}


def write_store(path: Path, groups: dict | None = None, run_config: dict | None = None,
                scores: bool = False) -> Path:
    """A real result store at ``path``: two seeds of one loss, msp on the two OOD sets
    (AUROC 0.4692 + 0.1 per set + 0.01 per seed), the run's provenance (with ``run_config``),
    and with ``scores`` the per-sample scores of each set."""
    with ResultStore(path) as store:
        store.register_config("cfg", {"benchmark": "toy", "protocol": "full",
                                      "ood_names": list(DATASETS), "groups": groups or {}})
        run = store.start_run(provenance.collect(device="cpu", config=run_config))
        for seed in (0, 1):
            for i, dataset in enumerate(DATASETS):
                store.put({"Model": f"ln/s{seed}", "Loss": "logitnorm", "Seed": seed,
                           "Detector": "msp", "Dataset": dataset, "Benchmark": "toy",
                           "Protocol": "full", "AUROC": 0.4692 + i / 10 + seed / 100,
                           "FPR95TPR": 0.5, "ACC": 0.9, "ECE": 0.02},
                          model_id=f"w{seed}", config_id="cfg", detector_id="msp",
                          run_id=run)
            if scores:
                for name, values in SCORES.items():
                    store.put_scores(f"w{seed}", "cfg", "msp", name, values)
    return path


def one_line(capsys, argv, *words) -> str:
    """Run ``logitnorm-ood ARGV`` in this process: it must end with status 2 and exactly one
    error line (holding each of ``words``), no traceback; returns that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"logitnorm-ood {argv[0]}:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]

"""Test helpers shared by the detector tests: pytorch-ood's detectors built by hand (the
reference the package's split and engine are compared with), a briefly trained digits model and
a dataset that counts reads."""

import importlib.util
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from logitnorm_plugin.data import load_split


def _eval_throughput():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_throughput.py"
    spec = importlib.util.spec_from_file_location("eval_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ``by_hand(cls, model)``: the host class built by hand, the reference of the detector tests;
#: the benchmark's own builder, so that both compare against one reference
by_hand = _eval_throughput().by_hand


def briefly_trained(model):
    """``model`` (a narrow DigitsCNN) after 3 epochs of Adam on the digits training split, in
    eval mode: every class is predicted right at least once (SHE needs that)."""
    torch.manual_seed(0)
    train = load_split("digits", "train")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


class Reads(Dataset):
    """Samples ``x, y`` that count how often they are read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]

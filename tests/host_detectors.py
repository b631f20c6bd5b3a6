"""Test helpers shared by the detector tests: pytorch-ood's detectors built by hand (the
reference the package's split and engine are compared with), a briefly trained digits model and
a dataset that counts reads."""

import inspect

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from logitnorm_plugin.data import load_split
from logitnorm_plugin.split import published_defaults


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


def by_hand(cls, model):
    """``cls`` built by hand from DigitsCNN's own methods with the published defaults, as
    pytorch-ood's documentation builds them; logits detectors just get the model. Written
    without the package's split, on purpose: it is what the split is checked against."""
    params, defaults = inspect.signature(cls).parameters, published_defaults(cls)
    if not {"encoder", "backbone"} & set(params):
        return cls(model)
    kwargs = {k: v(model.fc.in_features) if callable(v) else v
              for k, v in defaults.items() if k in params}
    if "backbone" in params and defaults.get("layer", "penultimate") == "penultimate":
        kwargs["backbone"] = lambda x: model.features(x)[:, :, None, None]
        kwargs["head"] = lambda z: model.fc(z.flatten(1))
    elif "backbone" in params:
        kwargs["backbone"], kwargs["head"] = model.feature_maps, model.forward_feature_maps
    else:
        own = {"encoder": model.features, "head": model.fc, "w": model.fc.weight,
               "b": model.fc.bias}
        kwargs.update({k: v for k, v in own.items() if k in params})
    return cls(**kwargs)


class Reads(Dataset):
    """Samples ``x, y`` that count how often they are read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]

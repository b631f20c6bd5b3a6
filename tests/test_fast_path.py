"""Every part of the GPU fast path that a CPU can run: bf16 autocast + ``torch.compile``
(inductor) + channels_last training, augmentation and data on the device (the CPU here), and a
training step with no host synchronisation (one graph under ``torch.compile(fullgraph=True)``).
Gradients keep their parameters' layout, as DDP's bucket views expect."""

import math

import pytest
import torch
import torch._dynamo
from pytorch_ood.loss import CrossEntropyLoss

from logitnorm_plugin.data import ImageTensors, load_split
from logitnorm_plugin.loss import LogitNormLoss, logit_norm_loss
from logitnorm_plugin.registry.architectures import build_model
from logitnorm_plugin.training.augment import DeviceAugment, in_memory_format
from logitnorm_plugin.training.loop import train
from logitnorm_plugin.training.runs import load_trained, read_metrics
from logitnorm_plugin.training.step import TrainStep, _sync_free_loss


def _step(model, channels_last=False, augment=True, loss=None, channels=1):
    data = ImageTensors(torch.zeros(1, channels, 8, 8, dtype=torch.uint8), torch.zeros(1).long(),
                        (0.5,) * channels, (0.25,) * channels)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return TrainStep(
        model, loss or LogitNormLoss(t=0.1), torch.optim.SGD(model.parameters(), lr=0.01),
        normalize=data.normalize,
        augment=DeviceAugment(1, True, "cpu", seed=0, memory_format=fmt) if augment else None,
        channels_last=channels_last,
    )


def _batch(n=16, channels=1, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def test_training_with_bf16_compile_and_channels_last_on_the_cpu(tmp_path):
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # drop_last: one batch shape, one compilation (inductor writes and compiles C++ here)
    result = train(dataset="digits", arch_kwargs={"width": 8}, epochs=1, device="cpu",
                   amp=True, compile=True, channels_last=True, drop_last=True, progress=False,
                   out=tmp_path / "run")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it compiled
    runtime = result.card["runtime"]
    assert runtime["compile_mode"] == "default" and runtime["channels_last"] is True
    assert result.card["config"]["amp"] == "bf16" and result.card["config"]["drop_last"] is True
    (record,) = read_metrics(tmp_path / "run")
    for key in ("train_loss", "train_accuracy", "test_accuracy", "logit_norm_mean"):
        assert math.isfinite(record[key]), (key, record)
    assert record["train_accuracy"] > 0.1 and record["steps"] == 1257 // 64
    model = load_trained(tmp_path / "run")  # fp32 weights, plain layout back on disk
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_augmentation_and_data_on_the_device_path():
    train_set = load_split("digits", "train_full").to("cpu")
    assert train_set.images.device.type == "cpu" and train_set.images.dtype == torch.uint8
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:32]
    images = train_set.images.index_select(0, idx)  # how the trainer gathers a batch
    labels = train_set.labels.index_select(0, idx)
    torch.manual_seed(0)
    model = build_model("digits-cnn", num_classes=10, in_channels=1, width=8)
    step = TrainStep(model, LogitNormLoss(t=0.1), torch.optim.SGD(model.parameters(), lr=0.05),
                     normalize=train_set.normalize,
                     augment=DeviceAugment(1, False, "cpu", seed=3))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        step(images, labels)
    stats = step.collect()
    assert stats["count"] == 96 and math.isfinite(stats["loss"])
    assert step.first_bad_step() is None
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # the augmentation ran where the batch is, reproducibly from its seed
    again = DeviceAugment(1, False, "cpu", seed=3)
    assert torch.equal(again(images), DeviceAugment(1, False, "cpu", seed=3)(images))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_keep_their_parameters_layout(channels, channels_last):
    """A one-channel batch is contiguous and channels_last at once; the step must still feed
    the network the exact layout, or the first convolution's weight gradient comes out in the
    other one (DDP: 'Grad strides do not match bucket view strides', and a copy per step)."""
    torch.manual_seed(0)
    model = build_model("digits-cnn", num_classes=10, in_channels=channels, width=8)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = _step(model, channels_last=channels_last, channels=channels)
    step(*_batch(channels=channels))
    for name, p in model.named_parameters():
        assert p.grad.stride() == p.stride(), (name, p.grad.stride(), p.stride())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = in_memory_format(torch.zeros(4, 8, 8, 1).permute(0, 3, 1, 2), fmt)
    assert x.stride() == torch.empty(4, 1, 8, 8, memory_format=fmt).stride()


def _breaks(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


def test_logitnorm_loss_is_one_graph_with_no_host_sync():
    logits = torch.randn(8, 10, requires_grad=True)
    target = torch.tensor([0, 1, -1, 3, 4, -1, 6, 7])  # OOD rows are masked, not dropped
    explained = _breaks(LogitNormLoss(t=0.04), logits, target)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(logit_norm_loss, fullgraph=True, backend="eager")
    assert torch.allclose(compiled(logits, target, 0.04), logit_norm_loss(logits, target, 0.04))
    # the check has teeth: pytorch-ood's CrossEntropyLoss asks the device a question each call
    host = _breaks(CrossEntropyLoss(), logits, target.clamp(min=0))
    assert host.graph_break_count > 0
    # ... which is why the step calls the equivalent sync-free cross-entropy instead
    ce = _sync_free_loss(CrossEntropyLoss())
    assert _breaks(ce, logits, target.clamp(min=0)).graph_break_count == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_train_step_forward_loss_and_sums_are_one_graph(channels_last):
    torch.manual_seed(0)
    model = build_model("digits-cnn", num_classes=10, in_channels=1, width=8)
    step = _step(model, channels_last=channels_last, augment=False)
    images, labels = _batch()
    explained = _breaks(step.forward_loss, images, labels)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    loss, logits = step.forward_loss(images, labels)
    explained = _breaks(step.accumulate, loss.detach(), logits.detach(), labels)
    assert explained.graph_break_count == 0, explained.break_reasons
    # and compiled whole, the forward and the loss give the eager values
    compiled = torch.compile(step.forward_loss, fullgraph=True, backend="eager")
    loss_c, logits_c = compiled(images, labels)
    assert torch.allclose(loss_c, loss) and torch.allclose(logits_c, logits)

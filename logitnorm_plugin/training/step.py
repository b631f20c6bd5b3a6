"""The training step of the fast path, and the switches that configure it.

:class:`TrainStep` is what :func:`logitnorm_plugin.train` calls for every batch, and what
``benchmarks/train_throughput.py`` and ``benchmarks/gpu_suite.py`` time: the same code on every
device.

- the batch is a uint8 tensor already on the device, augmented
(:mod:`logitnorm_plugin.training.augment`)
  and normalised there, no DataLoader;
- bf16 autocast on CUDA with the loss in fp32; ``channels_last``; ``torch.compile``
  (``mode="reduce-overhead"``, i.e. CUDA graphs, on one GPU);
- no host synchronisation inside the step: loss and accuracy are summed on the device and read
  once per epoch, and a non-finite loss is noticed from a device-side "first bad step" index;
- objectives trained with auxiliary outliers get the step's outlier batch appended to the ID
  batch (augmented and normalised with it, one forward pass) and the mixed-batch loss of
  :mod:`logitnorm_plugin.objectives`; without outliers the step is what it always was.

:func:`fast_path_defaults` says which of these are on for a device (off on CPU, where they do
not pay: see ``benchmarks/train_throughput.py``); :func:`lr_factor` is the learning-rate
schedule in closed form.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict

import torch
from torch import Tensor, nn

from logitnorm_plugin._core.errors import UserError
from logitnorm_plugin.objectives import mixed_batch_loss
from logitnorm_plugin.training import distributed
from logitnorm_plugin.training.augment import in_memory_format

__all__ = ["TrainStep", "amp_dtype", "amp_name", "compile_mode", "epoch_statistics",
           "fast_path_defaults", "lr_factor"]

# "no non-finite loss seen yet" for the device-side first-bad-step index
_NO_BAD_STEP = 2**62


def _sync_free_loss(loss_fn: Callable) -> Callable:
    """The loss to call in the hot loop.

    pytorch-ood's ``CrossEntropyLoss`` asks ``is_unknown(targets).any()`` on every call, which
    makes the host wait for the GPU each step. Training labels are all ID (the trainer checks
    them once before training), so plain ``F.cross_entropy`` with the same reduction gives the
    same value without the wait. Every other loss is called as it is.
    """
    try:
        from pytorch_ood.loss import CrossEntropyLoss
    except ImportError:  # pragma: no cover - pytorch-ood is a dependency
        return loss_fn
    if type(loss_fn) is CrossEntropyLoss:
        reduction = loss_fn.reduction or "none"

        def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
            return nn.functional.cross_entropy(logits, target, reduction=reduction)

        return cross_entropy
    return loss_fn


class TrainStep:
    """One optimisation step of the fast path, callable on a uint8 batch already on the device.

    augment (optional) -> normalise -> forward under autocast -> loss in fp32 -> backward ->
    optimizer (through the grad scaler) -> per-iteration scheduler step. Loss sum, correct
    predictions and the index of the first step with a non-finite loss accumulate in device
    tensors; :meth:`collect` reads them (the only synchronisation, once per epoch) and
    :meth:`first_bad_step` checks for divergence when asked.

    :param model: the network (already on the device, in the wanted memory format)
    :param loss_fn: ``loss_fn(logits, target)`` returning a scalar (any other shape is averaged)
    :param optimizer: the optimizer of ``model``'s parameters
    :param normalize: uint8 ``B x C x H x W`` -> normalised float32 (e.g.
        :meth:`ImageTensors.normalize <logitnorm_plugin.data.ImageTensors.normalize>`)
    :param augment: callable on uint8 batches (e.g. :class:`~logitnorm_plugin.training.augment.
        DeviceAugment`), or ``None``
    :param amp_dtype: autocast dtype (``torch.bfloat16`` / ``torch.float16``) or ``None``
    :param channels_last: feed the network ``channels_last`` batches
    :param compile_mode: ``None`` (eager) or a ``torch.compile`` mode for the forward pass
    :param scaler: a ``torch.amp.GradScaler`` (needed for fp16 autocast), or ``None``
    :param scheduler: a learning-rate scheduler stepped after every optimizer step, or ``None``
    :param forward_module: what to call for the forward pass (a DDP wrapper of ``model``);
        default ``model``
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        normalize: Callable[[Tensor], Tensor],
        augment: Callable[[Tensor], Tensor] | None = None,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile_mode: str | None = None,
        scaler=None,
        scheduler=None,
        forward_module: nn.Module | None = None,
    ):
        self.model = model
        self.loss_fn = _sync_free_loss(loss_fn)
        self.mixed_loss = mixed_batch_loss(loss_fn)  # used only for batches with outliers
        self.optimizer = optimizer
        self.normalize = normalize
        self.augment = augment
        self.amp_dtype = amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scaler = scaler
        self.scheduler = scheduler
        self.device = next(model.parameters()).device
        eager = forward_module if forward_module is not None else model
        self._eager = eager
        self.compile_mode = compile_mode
        self._forward = eager
        if compile_mode is not None:
            self._forward = torch.compile(eager, mode=compile_mode, dynamic=False)
        # CUDA-graph trees want to know where an iteration starts
        self._mark_step = compile_mode in ("reduce-overhead", "max-autotune") and (
            self.device.type == "cuda"
        )
        self._compiled_ok = compile_mode is None
        self.reset()

    def reset(self) -> None:
        """Zero the running sums (start of an epoch)."""
        self._sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss*n, correct
        self._count = 0
        self._steps = torch.zeros((), dtype=torch.int64, device=self.device)
        self._first_bad = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=self.device)
        self.steps = 0

    def _call_forward(self, x: Tensor) -> Tensor:
        if self._compiled_ok:
            return self._forward(x)
        try:  # first call of a compiled forward: compilation happens here
            out = self._forward(x)
            self._compiled_ok = True
            return out
        except Exception as exc:  # a backend that cannot compile this model here
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {exc}); training eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
            self._forward, self._mark_step, self._compiled_ok = self._eager, False, True
            self.compile_mode = None
            return self._forward(x)

    def __call__(self, images: Tensor, labels: Tensor, outliers: Tensor | None = None) -> None:
        """Train on one batch.

        :param images: ``B x C x H x W`` uint8 on the device
        :param labels: ``B`` int64 on the device, all in ``0 .. C-1``
        :param outliers: ``M x C x H x W`` uint8 auxiliary outliers on the device (label
            ``-1``), or ``None``; loss and accuracy are counted over the ``B`` ID images
        """
        if self._mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        if outliers is not None:
            images = torch.cat([images, outliers])
        if self.augment is not None:
            images = self.augment(images)
        loss, logits = self.forward_loss(images, labels, mixed=outliers is not None)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.accumulate(loss.detach(), logits, labels)
        self._count += labels.shape[0]
        self.steps += 1

    def forward_loss(self, images: Tensor, labels: Tensor,
                     mixed: bool = False) -> tuple[Tensor, Tensor]:
        """Normalise, forward under autocast, loss in fp32: ``(loss, logits of the ID images)``.

        With ``mixed``, ``images`` holds the ``B`` ID images followed by the outlier batch and
        the objective's mixed-batch loss (:mod:`logitnorm_plugin.objectives`) is used. Nothing here
        reads a value back to the host, so it traces as one graph
        (``torch.compile(fullgraph=True)``; tested) and a CUDA graph can capture it.
        """
        # exact strides of the format (a one-channel batch is ambiguous otherwise): gradients
        # then match their parameters' layout, as DDP's bucket views expect
        x = self.normalize(in_memory_format(images, self.memory_format))
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            logits = self._call_forward(x)
        logits = logits.float()
        if mixed:
            loss = self.mixed_loss(logits, labels)
            logits = logits[: labels.shape[0]]
        else:
            loss = self.loss_fn(logits, labels)
        if loss.dim() != 0:
            loss = loss.mean()
        return loss, logits

    @torch.no_grad()
    def accumulate(self, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Add one step's loss, correct predictions and divergence check to the device-side
        sums (no host synchronisation; traces as one graph)."""
        n = labels.shape[0]
        self._steps += 1
        self._sums[0] += loss.double() * n
        self._sums[1] += (logits.argmax(dim=1) == labels).sum()
        bad = ~torch.isfinite(loss) & (self._first_bad == _NO_BAD_STEP)
        self._first_bad = torch.where(bad, self._steps, self._first_bad)

    def first_bad_step(self, ctx: distributed.DistContext | None = None) -> int | None:
        """1-based step (since :meth:`reset`) whose loss was first non-finite on any process,
        or ``None``. Synchronises."""
        bad = self._first_bad.clone()
        if ctx is not None:
            ctx.all_reduce_min(bad)
        value = int(bad.item())
        return None if value >= _NO_BAD_STEP else value

    def collect(self, ctx: distributed.DistContext | None = None) -> Dict[str, float]:
        """Loss and accuracy over the steps since :meth:`reset`, summed over processes."""
        sums = torch.cat(
            [self._sums, torch.tensor([float(self._count)], dtype=torch.float64).to(self.device)]
        )
        if ctx is not None:
            ctx.all_reduce_sum([sums])
        loss_sum, correct, count = sums.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "accuracy": correct / count, "count": int(count)}



def amp_dtype(amp, device: torch.device) -> torch.dtype | None:
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if amp is True:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16}
    if str(amp).lower() not in names:
        raise UserError(f"amp must be true, false, 'bf16' or 'fp16', got {amp!r}")
    return names[str(amp).lower()]


def amp_name(dtype: torch.dtype | None) -> str | None:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: None}[dtype]


def fast_path_defaults(device, world_size: int = 1, deterministic: bool = False,
                       amp=None, compile=None, channels_last=None) -> Dict[str, Any]:
    """The fast-path settings :func:`train` uses on ``device`` for the given switches
    (``None``: the device default): ``amp_dtype``, ``channels_last``, ``compile_mode``.

    Defaults: bf16 autocast, channels_last and ``torch.compile`` on CUDA (CUDA graphs on one
    GPU); all off on CPU, where they do not pay (measured by
    ``benchmarks/train_throughput.py``); compile off in deterministic mode.
    """
    device = torch.device(device)
    return {
        "amp_dtype": amp_dtype(amp, device),
        "channels_last": bool(device.type == "cuda" if channels_last is None else channels_last),
        "compile_mode": compile_mode(compile, device, world_size, deterministic),
    }


def compile_mode(compile_, device: torch.device, world_size: int, deterministic: bool):
    if compile_ is None:
        compile_ = device.type == "cuda" and not deterministic
    if compile_ is False:
        return None
    if isinstance(compile_, str):
        return compile_
    # CUDA graphs on one GPU; DDP's gradient hooks run between graph segments, so keep the
    # default mode there
    return "reduce-overhead" if device.type == "cuda" and world_size == 1 else "default"


def lr_factor(config: Dict[str, Any], steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate factor after ``step`` optimizer steps (closed form, no drift).

    :param config: the run's configuration as ``config.json`` holds it (``TrainConfig.to_dict``)
    """
    schedule = config["schedule"]
    warmup = float(config.get("warmup_epochs", 0.0)) * steps_per_epoch
    if schedule == "multistep":
        milestones = sorted(int(m) for m in config["milestones"])
        gamma = float(config["gamma"])

        def base(step: int) -> float:
            epoch = step // steps_per_epoch  # MultiStepLR stepped once per epoch
            return gamma ** sum(1 for m in milestones if epoch >= m)

    elif schedule == "cosine":
        total = max(1, int(config["epochs"]) * steps_per_epoch)
        floor = float(config["lr_min"]) / float(config["lr"])

        def base(step: int) -> float:
            progress = min(step, total) / total
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    else:

        def base(step: int) -> float:
            return 1.0

    if warmup <= 0:
        return base

    def factor(step: int) -> float:
        return base(step) * min(1.0, (step + 1) / warmup)

    return factor




@torch.no_grad()
def epoch_statistics(
    model: nn.Module,
    data,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
    ctx: distributed.DistContext,
) -> Dict[str, float]:
    """Accuracy and logit-norm statistics of ``model`` on ``data`` (this process's shard),
    combined over processes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct, n, sum|z|, sum|z|^2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, y in data.batches(batch_size, device=device):
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(x.contiguous(memory_format=fmt))
        logits = logits.float()
        norms = torch.linalg.vector_norm(logits, dim=1).double()
        sums[0] += (logits.argmax(dim=1) == y).sum()
        sums[1] += y.shape[0]
        sums[2] += norms.sum()
        sums[3] += (norms * norms).sum()
    ctx.all_reduce_sum([sums])
    correct, n, s1, s2 = sums.tolist()
    model.train(was_training)
    n = max(n, 1.0)
    mean = s1 / n
    return {
        "accuracy": correct / n,
        "logit_norm_mean": mean,
        "logit_norm_std": math.sqrt(max(s2 / n - mean * mean, 0.0)),
    }
